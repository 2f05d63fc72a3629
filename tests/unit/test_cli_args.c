/* Unit tests: client argument parsing for every command, the JSON bodies
 * of submit and pipeline create, and table rendering from canned JSON. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "cli_int.h"

/* Parse "kiln WORDS..." (NULL-terminated, without "kiln"). Returns the
 * cli__parse code, or -1 when no command matches. */
static int parse_words(const char **words,
                       struct cli_args *a,
                       const struct cli_cmd **cmd_out)
{
    static char *argv[64];
    static char prog[] = "kiln";
    char errmsg[ERRMSG_SIZE];
    const struct cli_cmd *cmd;
    int argc = 1;
    int consumed = 0;

    argv[0] = prog;
    for (int i = 0; words[i] != NULL; i++) {
        argv[argc++] = (char *)words[i];
    }
    argv[argc] = NULL;
    cmd = cli__find(argc, argv, &consumed);
    if (cmd_out != NULL) {
        *cmd_out = cmd;
    }
    if (cmd == NULL) {
        return -1;
    }
    return cli__parse(cmd, argc - 1 - consumed, argv + 1 + consumed, a, errmsg);
}

#define OK(...)                                                         \
    do {                                                                \
        const char *w_[] = {__VA_ARGS__, NULL};                         \
        cr_assert_eq(parse_words(w_, &a, &cmd), 0, "%s", #__VA_ARGS__); \
    } while (0)

#define BAD(...)                                                          \
    do {                                                                  \
        const char *w_[] = {__VA_ARGS__, NULL};                           \
        struct cli_args b_;                                               \
        cr_assert_neq(parse_words(w_, &b_, NULL), 0, "%s", #__VA_ARGS__); \
    } while (0)

TestSuite(cli_args, .timeout = 30);

Test(cli_args, every_command_is_found)
{
    static const char *const cmds[][2] = {
        {"nodes", NULL},       {"pipelines", NULL},    {"pipeline", "create"},
        {"pipeline", "show"},  {"pipeline", "delete"}, {"pipeline", "run"},
        {"pipeline", "pause"}, {"pipeline", "resume"}, {"runs", NULL},
        {"run", NULL},         {"run", "retry"},       {"submit", NULL},
        {"jobs", NULL},        {"job", NULL},          {"cancel", NULL},
        {"logs", NULL},        {"health", NULL},       {"version", NULL},
        {"help", NULL},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char *argv[4] = {"kiln", (char *)cmds[i][0], (char *)cmds[i][1], NULL};
        int consumed = 0;
        const struct cli_cmd *c =
            cli__find(cmds[i][1] != NULL ? 3 : 2, argv, &consumed);
        cr_assert_not_null(c, "%s", cmds[i][0]);
        cr_assert_str_eq(c->verb, cmds[i][0]);
        if (cmds[i][1] != NULL) {
            cr_assert_str_eq(c->sub, cmds[i][1]);
            cr_assert_eq(consumed, 2);
        } else {
            cr_assert_null(c->sub);
            cr_assert_eq(consumed, 1);
        }
        cr_assert_not_null(c->run);
        cr_assert_not_null(c->usage);
    }
}

Test(cli_args, unknown_commands)
{
    char *argv1[] = {"kiln", "frobnicate", NULL};
    char *argv2[] = {"kiln", "pipeline", "explode", NULL};
    char *argv3[] = {"kiln", "pipeline", NULL};
    int consumed;
    cr_assert_null(cli__find(2, argv1, &consumed));
    cr_assert_null(cli__find(3, argv2, &consumed));
    cr_assert_null(cli__find(2, argv3, &consumed));
}

Test(cli_args, common_flags_everywhere)
{
    struct cli_args a;
    const struct cli_cmd *cmd;

    OK("nodes", "--addr", "127.0.0.1:9000", "--json");
    cr_assert_str_eq(a.addr, "127.0.0.1:9000");
    cr_assert(a.json);
    OK("jobs", "--json", "--addr=localhost:7");
    cr_assert_str_eq(a.addr, "localhost:7");
    OK("health");
    cr_assert_null(a.addr);
    cr_assert(!a.json);
    OK("job", "--help");
    cr_assert(a.help);
    OK("pipeline", "create", "-h");
    cr_assert(a.help);
    BAD("nodes", "--addr");
    BAD("nodes", "--addr", "nonsense");
    BAD("nodes", "--addr", "127.0.0.1:99999");
    BAD("nodes", "extra");
    BAD("nodes", "--bogus");
    BAD("health", "--state", "running");
}

Test(cli_args, submit)
{
    struct cli_args a;
    const struct cli_cmd *cmd;

    OK("submit", "--retries", "2", "--timeout=30", "--tag", "team=a", "--env",
       "X=1=2", "--", "sh", "-c", "echo --x");
    cr_assert_str_eq(cmd->verb, "submit");
    cr_assert(a.has_retries);
    cr_assert_eq(a.retries, 2);
    cr_assert_eq(a.timeout_s, 30);
    cr_assert_eq(a.ntags, 1);
    cr_assert_eq(a.nenv, 1);
    cr_assert_eq(a.env[0].key_len, 1);
    cr_assert_str_eq(a.env[0].val, "1=2");
    cr_assert_eq(a.ncmd, 3);
    cr_assert_str_eq(a.cmd[2], "echo --x");

    OK("submit", "--", "true");
    cr_assert(!a.has_retries && !a.has_timeout);
    BAD("submit");
    BAD("submit", "--");
    BAD("submit", "true");
    BAD("submit", "--retries", "-1", "--", "true");
    BAD("submit", "--retries", "x", "--", "true");
    BAD("submit", "--retries", "--", "true");
    BAD("submit", "--retries");
    BAD("submit", "--timeout", "1.5", "--", "true");
    BAD("submit", "--tag", "novalue", "--", "true");
    BAD("submit", "--tag", "=v", "--", "true");
    BAD("submit", "--env", "", "--", "true");
    BAD("submit", "--schedule", "* * * * *", "--", "true");
}

Test(cli_args, jobs_job_cancel_logs)
{
    struct cli_args a;
    const struct cli_cmd *cmd;

    OK("jobs", "--state", "running", "--limit", "5");
    cr_assert_str_eq(a.state, "running");
    cr_assert_eq(a.limit, 5);
    OK("jobs", "--state=retry_wait");
    BAD("jobs", "--state", "sleepy");
    BAD("jobs", "--limit", "0");
    BAD("jobs", "--limit", "ten");
    BAD("jobs", "x");

    OK("job", "j-1");
    cr_assert_str_eq(a.pos[0], "j-1");
    BAD("job");
    BAD("job", "a", "b");
    BAD("job", "--", "x");

    OK("cancel", "j-2");
    BAD("cancel");

    OK("logs", "j-3");
    cr_assert(!a.follow);
    OK("logs", "-f", "j-3");
    cr_assert(a.follow);
    cr_assert_str_eq(a.pos[0], "j-3");
    OK("logs", "j-3", "--follow");
    cr_assert(a.follow);
    BAD("logs", "-f");
    BAD("logs", "--follow=yes", "j");
    BAD("logs", "-x", "j");
}

Test(cli_args, pipelines_and_runs)
{
    struct cli_args a;
    const struct cli_cmd *cmd;

    OK("pipelines");
    BAD("pipelines", "x");
    OK("pipeline", "show", "etl");
    cr_assert_str_eq(cmd->sub, "show");
    cr_assert_str_eq(a.pos[0], "etl");
    OK("pipeline", "delete", "etl");
    OK("pipeline", "run", "etl", "--json");
    OK("pipeline", "pause", "etl");
    OK("pipeline", "resume", "etl");
    BAD("pipeline", "show");
    BAD("pipeline", "run", "a", "b");
    BAD("pipeline", "bogus", "x");

    OK("runs", "--pipeline", "etl", "--limit", "3");
    cr_assert_str_eq(a.pipeline, "etl");
    cr_assert_eq(a.limit, 3);
    OK("run", "r-1");
    cr_assert_null(cmd->sub);
    OK("run", "retry", "r-1");
    cr_assert_str_eq(cmd->sub, "retry");
    cr_assert_str_eq(a.pos[0], "r-1");
    BAD("run");
    BAD("run", "retry");
    BAD("runs", "--pipeline");
}

Test(cli_args, pipeline_create)
{
    struct cli_args a;
    const struct cli_cmd *cmd;

    OK("pipeline", "create", "etl", "--schedule", "*/5 * * * *", "--timezone",
       "Europe/Paris", "--after", "a,b", "--retries", "3", "--backoff", "20",
       "--timeout", "60", "--overlap", "forbid", "--catchup", "latest",
       "--targets", "gpu,ssd", "--paused", "--", "make", "etl");
    cr_assert_str_eq(a.pos[0], "etl");
    cr_assert_str_eq(a.schedule, "*/5 * * * *");
    cr_assert_str_eq(a.after, "a,b");
    cr_assert(a.paused);
    cr_assert_eq(a.ncmd, 2);
    OK("pipeline", "create", "x", "--", "true");
    BAD("pipeline", "create", "--", "true");
    BAD("pipeline", "create", "x");
    BAD("pipeline", "create", "x", "--overlap", "sometimes", "--", "t");
    BAD("pipeline", "create", "x", "--catchup", "most", "--", "t");
    BAD("pipeline", "create", "x", "--after", "a,,b", "--", "t");
    BAD("pipeline", "create", "x", "--after", ",a", "--", "t");
    BAD("pipeline", "create", "x", "--targets", "a,", "--", "t");
    BAD("pipeline", "create", "x", "--backoff", "5", "--", "t");
    BAD("pipeline", "create", "x", "--schedule", "", "--", "t");
    BAD("pipeline", "create", "x", "--paused=yes", "--", "t");
    BAD("pipeline", "create", "x", "--tag", "a=b", "--", "t");
}

/* ------------------------------------------------------------------ */

static char *body_for(const char **words, bool pipeline)
{
    struct cli_args a;
    char errmsg[ERRMSG_SIZE];
    char *out = NULL;
    cr_assert_eq(parse_words(words, &a, NULL), 0);
    if (pipeline) {
        cr_assert_eq(cli__pipeline_body(&a, &out, errmsg), 0);
    } else {
        cr_assert_eq(cli__submit_body(&a, &out, errmsg), 0);
    }
    return out;
}

Test(cli_args, submit_body_exact)
{
    const char *w1[] = {"submit", "--", "echo", "hi \"there\"", NULL};
    const char *w2[] = {"submit", "--env",  "B=2",       "--retries", "2",
                        "--tag",  "k=v",    "--timeout", "30",        "--tag",
                        "x=",     "--env",  "A=1",       "--",        "sh",
                        "-c",     "exit 3", NULL};
    char *b = body_for(w1, false);
    cr_assert_str_eq(b, "{\"command\":[\"echo\",\"hi \\\"there\\\"\"]}");
    free(b);
    b = body_for(w2, false);
    cr_assert_str_eq(b,
                     "{\"command\":[\"sh\",\"-c\",\"exit 3\"],"
                     "\"retries\":2,\"timeout_s\":30,"
                     "\"tags\":{\"k\":\"v\",\"x\":\"\"},"
                     "\"env\":{\"B\":\"2\",\"A\":\"1\"}}");
    free(b);
}

Test(cli_args, submit_body_rejects_bad_utf8)
{
    const char *w[] = {"submit", "--", "\xff\xfe", NULL};
    struct cli_args a;
    char errmsg[ERRMSG_SIZE];
    char *out = NULL;
    cr_assert_eq(parse_words(w, &a, NULL), 0);
    cr_assert_neq(cli__submit_body(&a, &out, errmsg), 0);
    cr_assert_null(out);
}

Test(cli_args, pipeline_body_exact)
{
    const char *w1[] = {"pipeline", "create", "etl", "--", "make", NULL};
    const char *w2[] = {
        "pipeline",   "create",    "etl",       "--paused", "--targets",  "gpu",
        "--catchup",  "all",       "--overlap", "replace",  "--timeout",  "60",
        "--retries",  "3",         "--after",   "a,b",      "--timezone", "UTC",
        "--schedule", "0 * * * *", "--",        "make",     "etl",        NULL};
    const char *w3[] = {"pipeline",  "create", "p",  "--retries", "1",
                        "--backoff", "0",      "--", "t",         NULL};
    char *b = body_for(w1, true);
    cr_assert_str_eq(b, "{\"name\":\"etl\",\"command\":[\"make\"]}");
    free(b);
    b = body_for(w2, true);
    cr_assert_str_eq(b,
                     "{\"name\":\"etl\",\"command\":[\"make\",\"etl\"],"
                     "\"schedule\":\"0 * * * *\",\"timezone\":\"UTC\","
                     "\"after\":[\"a\",\"b\"],"
                     "\"retries\":{\"max\":3,\"backoff_s\":10},"
                     "\"timeout_s\":60,\"overlap\":\"replace\","
                     "\"catchup\":\"all\",\"targets\":[\"gpu\"],"
                     "\"paused\":true}");
    free(b);
    b = body_for(w3, true);
    cr_assert_str_eq(b,
                     "{\"name\":\"p\",\"command\":[\"t\"],"
                     "\"retries\":{\"max\":1,\"backoff_s\":0}}");
    free(b);
}

Test(cli_args, pause_body_strips_server_fields)
{
    char errmsg[ERRMSG_SIZE];
    char *out = NULL;
    json_t *p = json_loads(
        "{\"name\":\"etl\",\"command\":[\"x\"],"
        "\"version\":4,\"created_at\":\"t\","
        "\"updated_at\":\"u\",\"paused\":false}",
        0, NULL);
    cr_assert_not_null(p);
    cr_assert_eq(cli__pause_body(p, true, &out, errmsg), 0);
    cr_assert_str_eq(out,
                     "{\"name\":\"etl\",\"command\":[\"x\"],"
                     "\"paused\":true}");
    free(out);
    json_decref(p);
    p = json_string("x");
    cr_assert_eq(cli__pause_body(p, true, &out, errmsg), ERR_MALFORMED);
    json_decref(p);
}

/* ------------------------------------------------------------------ */
/* Rendering.                                                          */

typedef int (*render_fn)(json_t *, FILE *, char *);

/* Render canned JSON; returns the rv and the output in *text. */
static int render(render_fn fn, const char *json, char **text)
{
    char errmsg[ERRMSG_SIZE];
    size_t len = 0;
    FILE *f = open_memstream(text, &len);
    json_t *root = json_loads(json, JSON_DECODE_ANY, NULL);
    int rv;

    cr_assert_not_null(f);
    cr_assert_not_null(root, "bad test JSON: %s", json);
    rv = fn(root, f, errmsg);
    fclose(f);
    json_decref(root);
    return rv;
}

static void expect(render_fn fn, const char *json, const char *want)
{
    char *text = NULL;
    cr_assert_eq(render(fn, json, &text), 0);
    cr_assert_str_eq(text, want);
    free(text);
}

Test(cli_args, nodes_table)
{
    expect(cli__render_nodes,
           "{\"leader\":\"n2\",\"nodes\":["
           "{\"name\":\"n1\",\"state\":\"alive\",\"role\":\"voter\","
           "\"api\":\"127.0.0.1:7070\",\"running\":1,\"slots\":4},"
           "{\"name\":\"n2\",\"state\":\"suspect\",\"role\":\"standby\","
           "\"api\":\"127.0.0.1:17070\",\"running\":12,\"slots\":16},"
           "{\"name\":\"node-three\",\"state\":null}]}",
           "NAME        STATE    ROLE     API              RUNNING/SLOTS\n"
           "n1          alive    voter    127.0.0.1:7070   1/4\n"
           "n2*         suspect  standby  127.0.0.1:17070  12/16\n"
           "node-three  -        -        -                -/-\n");
}

Test(cli_args, nodes_table_draining_no_leader_odd_types)
{
    expect(cli__render_nodes,
           "{\"leader\":null,\"nodes\":[{\"name\":\"n1\",\"state\":"
           "\"alive\",\"draining\":true,\"role\":\"voter\",\"api\":7,"
           "\"running\":\"x\",\"slots\":8}, 42]}",
           "NAME  STATE           ROLE   API  RUNNING/SLOTS\n"
           "n1    alive,draining  voter  7    x/8\n"
           "-     -               -      -    -/-\n");
    expect(cli__render_nodes, "{\"nodes\":[]}",
           "NAME  STATE  ROLE  API  RUNNING/SLOTS\n");
}

Test(cli_args, pipelines_table)
{
    expect(cli__render_pipelines,
           "{\"pipelines\":["
           "{\"name\":\"etl\",\"schedule\":\"*/5 * * * *\",\"paused\":false,"
           "\"version\":3,\"command\":[\"make\"]},"
           "{\"name\":\"report\",\"after\":[\"etl\",\"load\"],"
           "\"paused\":true,\"version\":null},"
           "{}]}",
           "NAME    SCHEDULE     AFTER     PAUSED  VERSION\n"
           "etl     */5 * * * *  -         no      3\n"
           "report  -            etl,load  yes     -\n"
           "-       -            -         -       -\n");
}

Test(cli_args, jobs_table)
{
    expect(cli__render_jobs,
           "{\"jobs\":["
           "{\"id\":\"j-10\",\"state\":\"succeeded\",\"node\":\"n1\","
           "\"attempt\":1,\"exit_code\":0,"
           "\"created_at\":\"2026-01-01T00:00:00.000Z\"},"
           "{\"id\":\"j-9\",\"state\":\"running\",\"node\":\"n2\","
           "\"attempt\":2,\"exit_code\":null},"
           "{\"id\":\"j-8\",\"state\":\"pending\",\"node\":null}]}",
           "ID    STATE      NODE  ATTEMPT  EXIT  CREATED\n"
           "j-10  succeeded  n1    1        0     2026-01-01T00:00:00.000Z\n"
           "j-9   running    n2    2        -     -\n"
           "j-8   pending    -     -        -     -\n");
}

Test(cli_args, runs_table)
{
    expect(cli__render_runs,
           "{\"runs\":["
           "{\"id\":\"r-2\",\"pipeline\":\"etl\",\"state\":\"running\","
           "\"trigger\":\"manual\",\"jobs\":[\"j-1\",\"j-2\"]},"
           "{\"id\":\"r-1\",\"pipeline\":\"etl\",\"state\":\"succeeded\","
           "\"trigger\":\"schedule\","
           "\"scheduled_for\":\"2026-01-01T00:00:00.000Z\",\"jobs\":[]}]}",
           "ID   PIPELINE  STATE      TRIGGER   SCHEDULED                 "
           "JOBS\n"
           "r-2  etl       running    manual    -                         "
           "j-1,j-2\n"
           "r-1  etl       succeeded  schedule  2026-01-01T00:00:00.000Z  "
           "-\n");
}

Test(cli_args, control_bytes_are_neutralised)
{
    expect(cli__render_jobs,
           "{\"jobs\":[{\"id\":\"a\\u001b[31mb\",\"state\":\"x\\ny\"}]}",
           "ID       STATE  NODE  ATTEMPT  EXIT  CREATED\n"
           "a?[31mb  x?y    -     -        -     -\n");
}

Test(cli_args, wrong_top_level_shapes_are_errors)
{
    static const char *const bad[] = {"[]",   "{}",       "{\"jobs\":{}}",
                                      "null", "\"jobs\"", "{\"jobs\":7}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *text = NULL;
        cr_assert_eq(render(cli__render_jobs, bad[i], &text), ERR_MALFORMED,
                     "%s", bad[i]);
        free(text);
        text = NULL;
        cr_assert_eq(render(cli__render_nodes, bad[i], &text), ERR_MALFORMED);
        free(text);
        text = NULL;
        cr_assert_eq(render(cli__render_pipelines, bad[i], &text),
                     ERR_MALFORMED);
        free(text);
        text = NULL;
        cr_assert_eq(render(cli__render_runs, bad[i], &text), ERR_MALFORMED);
        free(text);
    }
}

Test(cli_args, key_value_lines)
{
    expect(cli__render_kv,
           "{\"id\":\"j-1\",\"state\":\"failed\",\"exit_code\":3,"
           "\"node\":null,\"command\":[\"sh\",\"-c\",\"exit 3\"],"
           "\"retries\":{\"max\":2,\"backoff_s\":10},\"paused\":false,"
           "\"after\":[\"a\",\"b\"]}",
           "id:        j-1\n"
           "state:     failed\n"
           "exit_code: 3\n"
           "node:      -\n"
           "command:   sh -c exit 3\n"
           "retries:   {\"max\":2,\"backoff_s\":10}\n"
           "paused:    no\n"
           "after:     a,b\n");
    {
        char *text = NULL;
        cr_assert_eq(render(cli__render_kv, "[1,2]", &text), ERR_MALFORMED);
        free(text);
    }
}

Test(cli_args, cell_formats)
{
    char buf[16];
    json_t *v = json_loads("[\"aaaaaaaa\",\"bbbbbbbb\",\"cccc\"]", 0, NULL);
    cli__cell(v, ",", buf, sizeof buf); /* truncated, still terminated */
    cr_assert_str_eq(buf, "aaaaaaaa,bbbbbb");
    json_decref(v);
    v = json_real(1.5);
    cli__cell(v, ",", buf, sizeof buf);
    cr_assert_str_eq(buf, "1.5");
    json_decref(v);
    cli__cell(NULL, ",", buf, sizeof buf);
    cr_assert_str_eq(buf, "-");
}
