/* Multi-process job tests on 127.0.0.1: claiming across nodes, live logs
 * from another node, failover after kill -9 and SIGSTOP without two
 * attempts overlapping, timeout and cancel of whole process trees, output
 * caps. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/harness.h"
#include "lib/procs.h"

TestSuite(jobs, .timeout = 240);

/* Short leases so failover is quick: fence at 1 s, expiry at 2.5 s. */
static const char *const job_flags[] = {"--lease-ms", "1500", NULL};

static void start3(struct cl *c, const char *tag)
{
    struct view_arg alive = {c, NULL, "alive", -1};
    cl_start_with(c, 3, tag, job_flags);
    cr_assert(th_wait(cl_all_see, &alive, 20000), "members never all alive");
    cr_assert(th_wait(cl_same_leader, c, 20000), "no common leader");
}

/* POST /v1/jobs with a JSON body; returns the job id in id (or ""). */
static long submit(const struct th_agent *a, const char *body, char *id)
{
    char url[80];
    char *resp = NULL;
    long code;
    json_t *j;
    snprintf(url, sizeof url, "http://%s/v1/jobs", a->api_addr);
    code = th_http("POST", url, body, NULL, &resp);
    id[0] = '\0';
    j = json_loads(resp != NULL ? resp : "", 0, NULL);
    if (json_is_string(json_object_get(j, "id"))) {
        snprintf(id, 24, "%s", json_string_value(json_object_get(j, "id")));
    }
    json_decref(j);
    free(resp);
    return code;
}

static json_t *get_job(const struct th_agent *a, const char *id)
{
    char url[96];
    snprintf(url, sizeof url, "http://%s/v1/jobs/%s", a->api_addr, id);
    return th_get_json(url);
}

/* The job's field as a string ("" if absent or null). */
static void job_field(const struct th_agent *a,
                      const char *id,
                      const char *field,
                      char *out,
                      size_t size)
{
    json_t *j = get_job(a, id);
    json_t *v = json_object_get(j, field);
    out[0] = '\0';
    if (json_is_string(v)) {
        snprintf(out, size, "%s", json_string_value(v));
    } else if (json_is_integer(v)) {
        snprintf(out, size, "%lld", (long long)json_integer_value(v));
    }
    json_decref(j);
}

struct job_arg
{
    struct cl *c;
    const char *id;
    const char *state;
};

static const struct th_agent *any_alive(struct cl *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->a[i].pid != 0) {
            return &c->a[i];
        }
    }
    return NULL;
}

static bool job_in_state(void *p)
{
    struct job_arg *a = p;
    char st[32];
    job_field(any_alive(a->c), a->id, "state", st, sizeof st);
    return strcmp(st, a->state) == 0;
}

static int agent_named(struct cl *c, const char *name)
{
    return cl_index_of(c, name);
}

Test(jobs, hundred_jobs_spread_over_all_nodes)
{
    struct cl c;
    char ids[100][24];
    int ran[3] = {0, 0, 0};
    start3(&c, "hundred");
    for (int i = 0; i < 100; i++) {
        long code =
            submit(&c.a[i % 3], "{\"command\":[\"sh\",\"-c\",\"sleep 0.05\"]}",
                   ids[i]);
        cr_assert_eq(code, 201, "submit %d: %ld", i, code);
    }
    for (int i = 0; i < 100; i++) {
        struct job_arg ja = {&c, ids[i], "succeeded"};
        char node[32];
        int k;
        cr_assert(th_wait(job_in_state, &ja, 60000), "%s never succeeded",
                  ids[i]);
        job_field(&c.a[0], ids[i], "node", node, sizeof node);
        k = agent_named(&c, node);
        cr_assert(k >= 0, "%s ran on unknown node '%s'", ids[i], node);
        ran[k]++;
    }
    cr_log_info("jobs per node: %d %d %d", ran[0], ran[1], ran[2]);
    for (int k = 0; k < 3; k++) {
        cr_expect_gt(ran[k], 0, "node %d ran nothing", k + 1);
    }
    cl_stop(&c, true);
}

struct claimed_arg
{
    struct cl *c;
    const char *id;
    char node[32];
};

static bool job_has_node(void *p)
{
    struct claimed_arg *a = p;
    char st[32];
    job_field(any_alive(a->c), a->id, "state", st, sizeof st);
    if (strcmp(st, "running") != 0) {
        return false;
    }
    job_field(any_alive(a->c), a->id, "node", a->node, sizeof a->node);
    return a->node[0] != '\0';
}

Test(jobs, logs_follow_from_another_node_ends_with_exit_status)
{
    struct cl c;
    char id[24];
    char out[8192], err[2048];
    struct claimed_arg ca;
    int holder, other, st;
    start3(&c, "follow");
    cr_assert_eq(
        submit(&c.a[0],
               "{\"command\":[\"sh\",\"-c\",\"sleep 0.5; for i in $(seq 1 "
               "20); do echo line $i; sleep 0.05; done; exit 7\"]}",
               id),
        201);
    ca.c = &c;
    ca.id = id;
    cr_assert(th_wait(job_has_node, &ca, 20000), "job never ran");
    holder = agent_named(&c, ca.node);
    other = (holder + 1) % 3;
    {
        const char *argv[] = {"logs", "-f", "--addr", c.a[other].api_addr,
                              id,     NULL};
        st = th_run_kiln(argv, out, sizeof out, err, sizeof err, 30000);
    }
    cr_assert_eq(st, 7, "kiln logs -f exit %d, stderr: %s", st, err);
    {
        char *p = out;
        for (int i = 1; i <= 20; i++) {
            char want[32];
            snprintf(want, sizeof want, "line %d\n", i);
            p = strstr(p, want);
            cr_assert_not_null(p, "missing or out of order: %s in\n%s", want,
                               out);
        }
    }
    cl_stop(&c, true);
}

/* The ledger: every attempt appends "EPOCH i" every 100 ms. Attempts
 * overlap iff a line of an older epoch follows a line of a newer one. */
static int ledger_check(const char *path, int *epochs_seen, int *lines)
{
    FILE *f = fopen(path, "r");
    long e, i;
    long max_e = 0;
    int n = 0, distinct = 0;
    if (f == NULL) {
        return -1;
    }
    while (fscanf(f, "%ld %ld", &e, &i) == 2) {
        if (e < max_e) {
            fclose(f);
            return 1; /* overlap */
        }
        if (e > max_e) {
            distinct++;
            max_e = e;
        }
        n++;
    }
    fclose(f);
    *epochs_seen = distinct;
    *lines = n;
    return 0;
}

static void ledger_job(char *body, size_t size, const char *ledger)
{
    snprintf(body, size,
             "{\"command\":[\"sh\",\"-c\",\"for i in $(seq 1 40); do echo "
             "$KILN_EPOCH $i >> %s; sleep 0.1; done\"],\"retries\":3}",
             ledger);
}

static void failover_case(const char *tag, bool stop_instead_of_kill)
{
    struct cl c;
    char id[24], body[512], ledger[400];
    struct claimed_arg ca;
    struct job_arg done = {&c, NULL, "succeeded"};
    int holder, epochs = 0, lines = 0;
    uint64_t t0;

    start3(&c, tag);
    snprintf(ledger, sizeof ledger, "%s/ledger", c.root);
    ledger_job(body, sizeof body, ledger);
    cr_assert_eq(submit(&c.a[0], body, id), 201);
    ca.c = &c;
    ca.id = id;
    cr_assert(th_wait(job_has_node, &ca, 20000), "job never ran");
    holder = agent_named(&c, ca.node);
    usleep(300 * 1000); /* let the first attempt write a few lines */
    t0 = th_now_ms();
    if (stop_instead_of_kill) {
        kill(c.a[holder].pid, SIGSTOP);
    } else {
        th_agent_kill(&c.a[holder]);
    }
    done.id = id;
    /* read through the survivors only */
    {
        pid_t saved = c.a[holder].pid;
        c.a[holder].pid = 0;
        cr_assert(th_wait(job_in_state, &done, 60000),
                  "job never completed elsewhere");
        c.a[holder].pid = saved;
    }
    cr_log_info("%s: job completed %llu ms after the fault", tag,
                (unsigned long long)(th_now_ms() - t0));
    if (stop_instead_of_kill) {
        kill(c.a[holder].pid, SIGCONT);
        /* give a surviving old process every chance to write */
        usleep(1000 * 1000);
    }
    cr_assert_eq(ledger_check(ledger, &epochs, &lines), 0,
                 "two attempts overlapped (see %s)", ledger);
    cr_assert_geq(epochs, 2, "the job did not run again");
    cr_log_info("%s: ledger %d lines over %d epochs", tag, lines, epochs);
    cl_stop(&c, true);
}

Test(jobs, kill9_of_the_holder_reruns_elsewhere_without_overlap)
{
    failover_case("kill9", false);
}

Test(jobs, sigstop_of_the_holder_beyond_the_lease_fences_it)
{
    failover_case("sigstop", true);
}

static bool pid_gone(void *p)
{
    pid_t pid = *(pid_t *)p;
    return kill(pid, 0) != 0 && errno == ESRCH;
}

static pid_t read_pid(const char *path)
{
    FILE *f;
    long pid = 0;
    uint64_t deadline = th_now_ms() + 20000;
    while (th_now_ms() < deadline) {
        f = fopen(path, "r");
        if (f != NULL) {
            int ok = fscanf(f, "%ld", &pid) == 1;
            fclose(f);
            if (ok && pid > 0) {
                return (pid_t)pid;
            }
        }
        usleep(20 * 1000);
    }
    return 0;
}

Test(jobs, timeout_and_cancel_kill_grandchildren)
{
    struct cl c;
    char id1[24], id2[24], body[512], pf1[400], pf2[400], url[128];
    struct job_arg t = {&c, NULL, "failed"};
    struct job_arg k = {&c, NULL, "cancelled"};
    pid_t g1, g2;
    char end[32];

    start3(&c, "trees");
    snprintf(pf1, sizeof pf1, "%s/pid1", c.root);
    snprintf(pf2, sizeof pf2, "%s/pid2", c.root);
    snprintf(body, sizeof body,
             "{\"command\":[\"sh\",\"-c\",\"sleep 300 & echo $! > %s; "
             "wait\"],\"timeout_s\":1}",
             pf1);
    cr_assert_eq(submit(&c.a[0], body, id1), 201);
    snprintf(body, sizeof body,
             "{\"command\":[\"sh\",\"-c\",\"sleep 300 & echo $! > %s; "
             "wait\"]}",
             pf2);
    cr_assert_eq(submit(&c.a[1], body, id2), 201);
    g1 = read_pid(pf1);
    g2 = read_pid(pf2);
    cr_assert(g1 > 0 && g2 > 0, "grandchildren never started");
    snprintf(url, sizeof url, "http://%s/v1/jobs/%s/cancel", c.a[2].api_addr,
             id2);
    cr_assert_eq(th_http("POST", url, "", NULL, NULL), 202);
    t.id = id1;
    k.id = id2;
    cr_assert(th_wait(job_in_state, &t, 30000), "timeout never ended it");
    job_field(&c.a[0], id1, "end", end, sizeof end);
    cr_assert_str_eq(end, "timeout");
    cr_assert(th_wait(job_in_state, &k, 30000), "cancel never ended it");
    cr_assert(th_wait(pid_gone, &g1, 10000), "timed-out grandchild alive");
    cr_assert(th_wait(pid_gone, &g2, 10000), "cancelled grandchild alive");
    cl_stop(&c, true);
}

static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    FILE *f;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) {
            break;
        }
    }
    fclose(f);
    return kib;
}

Test(jobs, fifty_mib_of_output_keeps_head_and_tail_within_the_cap)
{
    struct cl c;
    char id[24], url[128];
    struct job_arg done = {&c, NULL, "succeeded"};
    char *logs = NULL;
    long code;
    start3(&c, "bigout");
    cr_assert_eq(
        submit(&c.a[0],
               "{\"command\":[\"sh\",\"-c\",\"echo FIRST-LINE; head -c "
               "52428800 /dev/zero | tr '\\\\000' x | fold -w 99; echo; echo "
               "LAST-LINE\"]}",
               id),
        201);
    done.id = id;
    cr_assert(th_wait(job_in_state, &done, 120000), "job never finished");
    snprintf(url, sizeof url, "http://%s/v1/jobs/%s/logs", c.a[1].api_addr, id);
    code = th_http("GET", url, NULL, NULL, &logs);
    cr_assert_eq(code, 200);
    cr_assert_not_null(logs);
    cr_log_info("stored log: %zu bytes", strlen(logs));
    cr_assert(strncmp(logs, "FIRST-LINE\n", 11) == 0, "head lost");
    cr_assert(strstr(logs, "LAST-LINE") != NULL, "tail lost");
    cr_assert(strstr(logs, "[kiln: ") != NULL, "no cut marker");
    cr_assert_lt(strlen(logs), (size_t)6 << 20, "cap not applied");
    free(logs);
    for (int i = 0; i < 3; i++) {
        long kib = rss_kib(c.a[i].pid);
        cr_log_info("%s RSS %ld KiB", c.a[i].name, kib);
        cr_expect_lt(kib, 256 * 1024, "%s uses %ld KiB", c.a[i].name, kib);
    }
    cl_stop(&c, true);
}

/* kill -9 of the holder and an immediate restart on the same data dir: the
 * old attempt's processes die with the old agent (its executor helper sees
 * the pipe close), the restarted node reports the attempt lost, and the job
 * completes without two attempts overlapping. */
Test(jobs, holder_restarted_on_its_data_dir_without_overlap)
{
    struct cl c;
    char id[24], body[512], ledger[400];
    struct claimed_arg ca;
    struct job_arg done = {&c, NULL, "succeeded"};
    int holder, epochs = 0, lines = 0;

    start3(&c, "restart");
    snprintf(ledger, sizeof ledger, "%s/ledger", c.root);
    ledger_job(body, sizeof body, ledger);
    cr_assert_eq(submit(&c.a[0], body, id), 201);
    ca.c = &c;
    ca.id = id;
    cr_assert(th_wait(job_has_node, &ca, 20000), "job never ran");
    holder = agent_named(&c, ca.node);
    usleep(300 * 1000);
    th_agent_kill(&c.a[holder]);
    cl_start_one_with(&c, holder, c.a[(holder + 1) % 3].gossip_addr, 3,
                      job_flags);
    done.id = id;
    cr_assert(th_wait(job_in_state, &done, 60000), "job never completed");
    cr_assert_eq(ledger_check(ledger, &epochs, &lines), 0,
                 "two attempts overlapped (see %s)", ledger);
    cr_assert_geq(epochs, 2, "the job did not run again");
    cl_stop(&c, true);
}

/* SIGSTOP/SIGCONT of whoever holds the job, three times in a row, each
 * pause longer than the lease: every pause fences the holder, the job
 * moves, and the ledger never shows two attempts at once. */
Test(jobs, repeated_pauses_longer_than_the_lease_never_overlap)
{
    struct cl c;
    char id[24], body[512], ledger[400];
    struct job_arg done = {&c, NULL, "succeeded"};
    int epochs = 0, lines = 0;

    start3(&c, "pauses");
    snprintf(ledger, sizeof ledger, "%s/ledger", c.root);
    snprintf(body, sizeof body,
             "{\"command\":[\"sh\",\"-c\",\"for i in $(seq 1 60); do echo "
             "$KILN_EPOCH $i >> %s; sleep 0.1; done\"],\"retries\":10}",
             ledger);
    cr_assert_eq(submit(&c.a[0], body, id), 201);
    for (int round = 0; round < 3; round++) {
        struct claimed_arg ca = {&c, id, ""};
        int holder;
        if (!th_wait(job_has_node, &ca, 30000)) {
            break; /* finished already */
        }
        holder = agent_named(&c, ca.node);
        usleep(200 * 1000);
        kill(c.a[holder].pid, SIGSTOP);
        usleep(3500 * 1000); /* lease 1.5 s + grace 1 s, and some */
        kill(c.a[holder].pid, SIGCONT);
    }
    done.id = id;
    cr_assert(th_wait(job_in_state, &done, 90000), "job never completed");
    cr_assert_eq(ledger_check(ledger, &epochs, &lines), 0,
                 "two attempts overlapped (see %s)", ledger);
    cr_log_info("pauses: %d epochs, %d lines", epochs, lines);
    cr_assert_geq(epochs, 2);
    cl_stop(&c, true);
}
