/* Client commands: the command table, dispatch and one handler per
 * command, talking HTTP to a node (--addr, $KILN_ADDR). */
#include "cli.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

#include "cli_int.h"
#include "util.h"

#define DEFAULT_ADDR "127.0.0.1:7070"
#define BACKOFF_MS 200u

/* ------------------------------------------------------------------ */
/* Request helpers. Each returns the process exit status it implies.   */

static void print_json(struct cli_ctx *ctx, json_t *v)
{
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s != NULL) {
        fprintf(ctx->out, "%s\n", s);
        free(s);
    }
}

/* Send a request; on a 2xx answer parse its JSON into *out (NULL when
 * the body is empty and @allow_empty). Prints "kiln: ..." and returns 1
 * on any failure. */
static int call(struct cli_ctx *ctx,
                const char *method,
                const char *path,
                const char *body,
                const char *idem_key,
                bool allow_empty,
                json_t **out)
{
    char errmsg[ERRMSG_SIZE];
    struct cli_resp resp;
    json_error_t jerr;
    int rv;

    *out = NULL;
    rv = cli__http(ctx, method, path, body, idem_key, &resp, errmsg);
    if (rv != 0) {
        fprintf(ctx->err, "kiln: %s\n", errmsg);
        return 1;
    }
    if (resp.status < 200 || resp.status > 299) {
        char msg[512];
        cli__error_message(&resp, msg, sizeof msg);
        fprintf(ctx->err, "kiln: %s\n", msg);
        free(resp.body);
        return 1;
    }
    if (resp.len == 0 && allow_empty) {
        free(resp.body);
        return 0;
    }
    *out = json_loadb(resp.body != NULL ? resp.body : "", resp.len, 0, &jerr);
    free(resp.body);
    if (*out == NULL) {
        fprintf(ctx->err,
                "kiln: unexpected response from server: not JSON (%s)\n",
                jerr.text);
        return 1;
    }
    return 0;
}

/* "prefix/ESCAPED(name)suffix" into buf. Returns 0 or 1 (printed). */
static int path_with(struct cli_ctx *ctx,
                     char *buf,
                     size_t size,
                     const char *prefix,
                     const char *name,
                     const char *suffix)
{
    char *esc = curl_easy_escape(NULL, name, 0);
    int n;

    if (esc == NULL) {
        fprintf(ctx->err, "kiln: out of memory\n");
        return 1;
    }
    n = snprintf(buf, size, "%s/%s%s", prefix, esc, suffix);
    curl_free(esc);
    if (n < 0 || (size_t)n >= size) {
        fprintf(ctx->err, "kiln: argument too long\n");
        return 1;
    }
    return 0;
}

/* Append "&key=ESCAPED(value)" (or "?..." first) when value is set. */
static int add_query(char *buf, size_t size, const char *key, const char *value)
{
    char *esc;
    size_t used = strlen(buf);
    int n;

    if (value == NULL) {
        return 0;
    }
    esc = curl_easy_escape(NULL, value, 0);
    if (esc == NULL) {
        return ERR_NOMEM;
    }
    n = snprintf(buf + used, size - used, "%c%s=%s",
                 strchr(buf, '?') != NULL ? '&' : '?', key, esc);
    curl_free(esc);
    return n < 0 || (size_t)n >= size - used ? ERR_TOOBIG : 0;
}

/* GET @path and show it as JSON, a key/value list or a table. */
static int show(struct cli_ctx *ctx,
                const char *path,
                int (*render)(json_t *, FILE *, char *))
{
    char errmsg[ERRMSG_SIZE];
    json_t *root;
    int status = call(ctx, "GET", path, NULL, NULL, false, &root);

    if (status != 0) {
        return status;
    }
    if (ctx->json) {
        print_json(ctx, root);
    } else if (render(root, ctx->out, errmsg) != 0) {
        fprintf(ctx->err, "kiln: %s\n", errmsg);
        status = 1;
    }
    json_decref(root);
    return status;
}

/* Print the string field @key of a response (or the JSON with --json);
 * @fallback when the field is missing. */
static int print_field(struct cli_ctx *ctx,
                       json_t *root,
                       const char *key,
                       const char *fallback)
{
    const char *v;

    if (ctx->json) {
        if (root != NULL) {
            print_json(ctx, root);
        }
        return 0;
    }
    v = json_string_value(json_object_get(root, key));
    if (v == NULL && json_is_integer(json_object_get(root, key))) {
        fprintf(ctx->out, "%lld\n",
                (long long)json_integer_value(json_object_get(root, key)));
        return 0;
    }
    if (v == NULL) {
        v = fallback;
    }
    if (v == NULL) {
        fprintf(ctx->err,
                "kiln: unexpected response from server: no "
                "'%s'\n",
                key);
        return 1;
    }
    fprintf(ctx->out, "%s\n", v);
    return 0;
}

/* A request whose answer is an object carrying @key (an id or name). */
static int act(struct cli_ctx *ctx,
               const char *method,
               const char *path,
               const char *body,
               const char *idem_key,
               const char *key,
               const char *fallback)
{
    json_t *root;
    int status =
        call(ctx, method, path, body, idem_key, fallback != NULL, &root);
    if (status == 0) {
        status = print_field(ctx, root, key, fallback);
    }
    json_decref(root);
    return status;
}

/* ------------------------------------------------------------------ */
/* Commands.                                                           */

static int cmd_health(struct cli_ctx *ctx, const struct cli_args *a)
{
    UNUSED(a);
    return show(ctx, "/v1/health", cli__render_kv);
}

static int cmd_nodes(struct cli_ctx *ctx, const struct cli_args *a)
{
    UNUSED(a);
    return show(ctx, "/v1/cluster", cli__render_nodes);
}

static int cmd_pipelines(struct cli_ctx *ctx, const struct cli_args *a)
{
    UNUSED(a);
    return show(ctx, "/v1/pipelines", cli__render_pipelines);
}

static int with_idem(struct cli_ctx *ctx,
                     const char *path,
                     const char *body,
                     const char *key,
                     const char *fallback)
{
    char idem[33];
    if (cli__idem_key(idem) != 0) {
        fprintf(ctx->err, "kiln: getrandom failed\n");
        return 1;
    }
    return act(ctx, "POST", path, body, idem, key, fallback);
}

static int cmd_pipeline_create(struct cli_ctx *ctx, const struct cli_args *a)
{
    char errmsg[ERRMSG_SIZE];
    char *body;
    int status;

    if (cli__pipeline_body(a, &body, errmsg) != 0) {
        fprintf(ctx->err, "kiln: %s\n", errmsg);
        return 2;
    }
    status = with_idem(ctx, "/v1/pipelines", body, "name", a->pos[0]);
    free(body);
    return status;
}

static int cmd_pipeline_show(struct cli_ctx *ctx, const struct cli_args *a)
{
    char path[1024];
    if (path_with(ctx, path, sizeof path, "/v1/pipelines", a->pos[0], "")) {
        return 1;
    }
    return show(ctx, path, cli__render_kv);
}

static int cmd_pipeline_delete(struct cli_ctx *ctx, const struct cli_args *a)
{
    char path[1024];
    if (path_with(ctx, path, sizeof path, "/v1/pipelines", a->pos[0], "")) {
        return 1;
    }
    return act(ctx, "DELETE", path, NULL, NULL, "name", a->pos[0]);
}

static int cmd_pipeline_run(struct cli_ctx *ctx, const struct cli_args *a)
{
    char path[1024];
    if (path_with(ctx, path, sizeof path, "/v1/pipelines", a->pos[0],
                  "/runs")) {
        return 1;
    }
    return act(ctx, "POST", path, NULL, NULL, "id", NULL);
}

/* Pause/resume = read the pipeline, flip "paused", PUT it back. A
 * concurrent edit between the two requests can be lost (the API has no
 * conditional PUT yet). */
static int set_paused(struct cli_ctx *ctx,
                      const struct cli_args *a,
                      bool paused)
{
    char errmsg[ERRMSG_SIZE];
    char path[1024];
    json_t *cur;
    char *body;
    int status;

    if (path_with(ctx, path, sizeof path, "/v1/pipelines", a->pos[0], "")) {
        return 1;
    }
    status = call(ctx, "GET", path, NULL, NULL, false, &cur);
    if (status != 0) {
        return status;
    }
    if (cli__pause_body(cur, paused, &body, errmsg) != 0) {
        fprintf(ctx->err, "kiln: %s\n", errmsg);
        json_decref(cur);
        return 1;
    }
    json_decref(cur);
    status = act(ctx, "PUT", path, body, NULL, "name", a->pos[0]);
    free(body);
    return status;
}

static int cmd_pipeline_pause(struct cli_ctx *ctx, const struct cli_args *a)
{
    return set_paused(ctx, a, true);
}

static int cmd_pipeline_resume(struct cli_ctx *ctx, const struct cli_args *a)
{
    return set_paused(ctx, a, false);
}

static int cmd_runs(struct cli_ctx *ctx, const struct cli_args *a)
{
    char path[1024] = "/v1/runs";
    char limit[32];

    snprintf(limit, sizeof limit, "%llu", (unsigned long long)a->limit);
    if (add_query(path, sizeof path, "pipeline", a->pipeline) != 0 ||
        add_query(path, sizeof path, "limit", a->has_limit ? limit : NULL) !=
            0) {
        fprintf(ctx->err, "kiln: argument too long\n");
        return 1;
    }
    return show(ctx, path, cli__render_runs);
}

static int cmd_run(struct cli_ctx *ctx, const struct cli_args *a)
{
    char path[1024];
    if (path_with(ctx, path, sizeof path, "/v1/runs", a->pos[0], "")) {
        return 1;
    }
    return show(ctx, path, cli__render_kv);
}

static int cmd_run_retry(struct cli_ctx *ctx, const struct cli_args *a)
{
    char path[1024];
    if (path_with(ctx, path, sizeof path, "/v1/runs", a->pos[0], "/retry")) {
        return 1;
    }
    return act(ctx, "POST", path, NULL, NULL, "id", NULL);
}

static int cmd_submit(struct cli_ctx *ctx, const struct cli_args *a)
{
    char errmsg[ERRMSG_SIZE];
    char *body;
    int status;

    if (cli__submit_body(a, &body, errmsg) != 0) {
        fprintf(ctx->err, "kiln: %s\n", errmsg);
        return 2;
    }
    status = with_idem(ctx, "/v1/jobs", body, "id", NULL);
    free(body);
    return status;
}

static int cmd_jobs(struct cli_ctx *ctx, const struct cli_args *a)
{
    char path[1024] = "/v1/jobs";
    char limit[32];

    snprintf(limit, sizeof limit, "%llu", (unsigned long long)a->limit);
    if (add_query(path, sizeof path, "state", a->state) != 0 ||
        add_query(path, sizeof path, "limit", a->has_limit ? limit : NULL) !=
            0) {
        fprintf(ctx->err, "kiln: argument too long\n");
        return 1;
    }
    return show(ctx, path, cli__render_jobs);
}

static int cmd_job(struct cli_ctx *ctx, const struct cli_args *a)
{
    char path[1024];
    if (path_with(ctx, path, sizeof path, "/v1/jobs", a->pos[0], "")) {
        return 1;
    }
    return show(ctx, path, cli__render_kv);
}

static int cmd_cancel(struct cli_ctx *ctx, const struct cli_args *a)
{
    char path[1024];
    if (path_with(ctx, path, sizeof path, "/v1/jobs", a->pos[0], "/cancel")) {
        return 1;
    }
    return act(ctx, "POST", path, NULL, NULL, "id", a->pos[0]);
}

static int cmd_logs(struct cli_ctx *ctx, const struct cli_args *a)
{
    char errmsg[ERRMSG_SIZE];
    char path[1024];
    struct cli_resp resp;
    int rv;

    if (a->follow) {
        return cli__follow_logs(ctx, a->pos[0]);
    }
    if (path_with(ctx, path, sizeof path, "/v1/jobs", a->pos[0], "/logs")) {
        return 1;
    }
    rv = cli__http(ctx, "GET", path, NULL, NULL, &resp, errmsg);
    if (rv != 0) {
        fprintf(ctx->err, "kiln: %s\n", errmsg);
        return 1;
    }
    if (resp.status < 200 || resp.status > 299) {
        char msg[512];
        cli__error_message(&resp, msg, sizeof msg);
        fprintf(ctx->err, "kiln: %s\n", msg);
        free(resp.body);
        return 1;
    }
    if (resp.len > 0) {
        fwrite(resp.body, 1, resp.len, ctx->out);
    }
    free(resp.body);
    return 0;
}

static int cmd_version(struct cli_ctx *ctx, const struct cli_args *a)
{
    if (a->json) {
        fprintf(ctx->out, "{\n  \"version\": \"%s\"\n}\n", KILN_VERSION);
    } else {
        fprintf(ctx->out, "kiln %s\n", KILN_VERSION);
    }
    return 0;
}

static int cmd_help(struct cli_ctx *ctx, const struct cli_args *a);

#define F_PIPELINE_CREATE                                            \
    (CLI_F_SCHEDULE | CLI_F_TIMEZONE | CLI_F_AFTER | CLI_F_RETRIES | \
     CLI_F_BACKOFF | CLI_F_TIMEOUT | CLI_F_OVERLAP | CLI_F_CATCHUP | \
     CLI_F_TARGETS | CLI_F_PAUSED)

/* Entries with a sub-verb come before the plain verb they refine. */
const struct cli_cmd cli__cmds[] = {
    {"nodes", NULL, 0, 0, 0, 0, "kiln nodes",
     "list the cluster's nodes (* marks the leader)", cmd_nodes},
    {"pipelines", NULL, 0, 0, 0, 0, "kiln pipelines", "list pipelines",
     cmd_pipelines},
    {"pipeline", "create", F_PIPELINE_CREATE, 1, 1, 1,
     "kiln pipeline create NAME [--schedule CRON] [--timezone TZ]\n"
     "                          [--after A,B] [--retries N] "
     "[--backoff SECONDS]\n"
     "                          [--timeout SECONDS] "
     "[--overlap allow|forbid|replace]\n"
     "                          [--catchup none|latest|all] "
     "[--targets T1,T2]\n"
     "                          [--paused] -- CMD [ARG...]",
     "create a pipeline", cmd_pipeline_create},
    {"pipeline", "show", 0, 1, 1, 0, "kiln pipeline show NAME",
     "show a pipeline", cmd_pipeline_show},
    {"pipeline", "delete", 0, 1, 1, 0, "kiln pipeline delete NAME",
     "delete a pipeline", cmd_pipeline_delete},
    {"pipeline", "run", 0, 1, 1, 0, "kiln pipeline run NAME",
     "start a manual run; prints the run id", cmd_pipeline_run},
    {"pipeline", "pause", 0, 1, 1, 0, "kiln pipeline pause NAME",
     "stop scheduling a pipeline", cmd_pipeline_pause},
    {"pipeline", "resume", 0, 1, 1, 0, "kiln pipeline resume NAME",
     "schedule a paused pipeline again", cmd_pipeline_resume},
    {"runs", NULL, CLI_F_PIPELINE | CLI_F_LIMIT, 0, 0, 0,
     "kiln runs [--pipeline NAME] [--limit N]", "list pipeline runs", cmd_runs},
    {"run", "retry", 0, 1, 1, 0, "kiln run retry ID",
     "re-run a finished run's failed jobs; prints the new run id",
     cmd_run_retry},
    {"run", NULL, 0, 1, 1, 0, "kiln run ID", "show a run", cmd_run},
    {"submit", NULL, CLI_F_RETRIES | CLI_F_TIMEOUT | CLI_F_TAG | CLI_F_ENV, 0,
     0, 1,
     "kiln submit [--retries N] [--timeout SECONDS] [--tag K=V]... "
     "[--env K=V]...\n"
     "            -- CMD [ARG...]",
     "submit a job; prints the job id", cmd_submit},
    {"jobs", NULL, CLI_F_STATE | CLI_F_LIMIT, 0, 0, 0,
     "kiln jobs [--state STATE] [--limit N]", "list jobs, newest first",
     cmd_jobs},
    {"job", NULL, 0, 1, 1, 0, "kiln job ID", "show a job", cmd_job},
    {"cancel", NULL, 0, 1, 1, 0, "kiln cancel ID", "cancel a job", cmd_cancel},
    {"logs", NULL, CLI_F_FOLLOW, 1, 1, 0, "kiln logs [-f] ID",
     "print a job's output; -f follows it and exits with the job's status",
     cmd_logs},
    {"health", NULL, 0, 0, 0, 0, "kiln health", "check that a node serves",
     cmd_health},
    {"version", NULL, 0, 0, 0, 0, "kiln version", "print the version",
     cmd_version},
    {"help", NULL, 0, 0, 2, 0, "kiln help [COMMAND]", "show help", cmd_help},
    {NULL, NULL, 0, 0, 0, 0, NULL, NULL, NULL},
};

static const char common_flags[] =
    "common flags: --addr HOST:PORT (default 127.0.0.1:7070 or "
    "$KILN_ADDR), --json, --help\n";

static void print_usage(FILE *f, const struct cli_cmd *cmd)
{
    fprintf(f, "usage: %s\n", cmd->usage);
}

static void print_all(FILE *f)
{
    fputs(
        "usage: kiln <command> [args]\n\n"
        "  kiln agent [flags]    run a node (kiln agent --help)\n",
        f);
    for (const struct cli_cmd *c = cli__cmds; c->verb != NULL; c++) {
        const char *nl = strchr(c->usage, '\n');
        int n = nl != NULL ? (int)(nl - c->usage) : (int)strlen(c->usage);
        fprintf(f, "  %.*s%s\n      %s\n", n, c->usage,
                nl != NULL ? " ..." : "", c->summary);
    }
    fputc('\n', f);
    fputs(common_flags, f);
}

/* Usage for every command of a group ("kiln pipeline" alone). */
static bool print_group(FILE *f, const char *verb)
{
    bool any = false;
    for (const struct cli_cmd *c = cli__cmds; c->verb != NULL; c++) {
        if (strcmp(c->verb, verb) == 0) {
            fprintf(f, "%s %s\n", any ? "      " : "usage:", c->usage);
            any = true;
        }
    }
    return any;
}

static int cmd_help(struct cli_ctx *ctx, const struct cli_args *a)
{
    const struct cli_cmd *c;
    int consumed;
    char prog[] = "kiln";
    char *words[4] = {prog, NULL, NULL, NULL};

    if (a->npos == 0) {
        print_all(ctx->out);
        return 0;
    }
    words[1] = (char *)a->pos[0];
    words[2] = a->npos > 1 ? (char *)a->pos[1] : NULL;
    c = cli__find(a->npos + 1, words, &consumed);
    if (c != NULL && consumed == 2) {
        print_usage(ctx->out, c);
        fputs(common_flags, ctx->out);
        return 0;
    }
    if (print_group(ctx->out, a->pos[0])) {
        return 0;
    }
    fprintf(ctx->err, "kiln: unknown command '%s'\n", a->pos[0]);
    return 2;
}

const struct cli_cmd *cli__find(int argc, char **argv, int *consumed)
{
    const struct cli_cmd *plain = NULL;

    if (argc < 2) {
        return NULL;
    }
    for (const struct cli_cmd *c = cli__cmds; c->verb != NULL; c++) {
        if (strcmp(c->verb, argv[1]) != 0) {
            continue;
        }
        if (c->sub == NULL) {
            plain = plain != NULL ? plain : c;
        } else if (argc > 2 && strcmp(c->sub, argv[2]) == 0) {
            *consumed = 2;
            return c;
        }
    }
    *consumed = 1;
    return plain;
}

static int ctx_init(struct cli_ctx *ctx, const struct cli_args *a)
{
    const char *addr = a->addr;
    struct addr ad;
    char errmsg[ERRMSG_SIZE];

    memset(ctx, 0, sizeof *ctx);
    ctx->out = stdout;
    ctx->err = stderr;
    ctx->json = a->json;
    ctx->backoff_ms = BACKOFF_MS;
    {
        /* Testing knob: shorter retry delays. */
        const char *b = getenv("KILN_CLI_BACKOFF_MS");
        uint64_t ms;
        if (b != NULL && parse_u64(b, 10000, &ms) == 0 && ms > 0) {
            ctx->backoff_ms = (unsigned)ms;
        }
    }
    if (addr == NULL) {
        addr = getenv("KILN_ADDR");
        if (addr != NULL && addr[0] == '\0') {
            addr = NULL;
        }
    }
    if (addr == NULL) {
        addr = DEFAULT_ADDR;
    }
    if (addr_parse(addr, &ad, errmsg) != 0) {
        fprintf(stderr, "kiln: bad address '%s': %s\n", addr, errmsg);
        return 2;
    }
    addr_format(&ad, ctx->addr);
    snprintf(ctx->base, sizeof ctx->base, "http://%s", ctx->addr);
    return 0;
}

int cli_main(int argc, char **argv)
{
    char errmsg[ERRMSG_SIZE];
    const struct cli_cmd *cmd;
    struct cli_args a;
    struct cli_ctx ctx;
    int consumed = 1;
    int status;

    if (argc < 2 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "--help") == 0) {
        print_all(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    cmd = cli__find(argc, argv, &consumed);
    if (cmd == NULL) {
        if (print_group(stderr, argv[1])) {
            if (argc > 2) {
                fprintf(stderr, "kiln: unknown %s command '%s'\n", argv[1],
                        argv[2]);
            }
            return 2;
        }
        fprintf(stderr, "kiln: unknown command '%s' (see 'kiln help')\n",
                argv[1]);
        return 2;
    }
    if (cli__parse(cmd, argc - 1 - consumed, argv + 1 + consumed, &a, errmsg) !=
        0) {
        fprintf(stderr, "kiln: %s\n", errmsg);
        print_usage(stderr, cmd);
        return 2;
    }
    if (a.help) {
        print_usage(stdout, cmd);
        fputs(common_flags, stdout);
        return 0;
    }
    status = ctx_init(&ctx, &a);
    if (status != 0) {
        return status;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        fprintf(stderr, "kiln: cannot initialise libcurl\n");
        return 1;
    }
    status = cmd->run(&ctx, &a);
    fflush(stdout);
    curl_global_cleanup();
    return status;
}
