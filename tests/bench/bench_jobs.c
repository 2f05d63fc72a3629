/* Benchmark: jobs on 3 nodes: throughput of /bin/true jobs versus the bare
 * posix_spawn rate, failover after kill -9 of the holder (lease 3000 and
 * 1500 ms), live tail latency over SSE from another node, and RSS with a
 * large finished-job history. */
#include <curl/curl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/common.h"
#include "util.h"

extern char **environ;

static char ticker_path[PATH_MAX + 32];

/* --- bare spawn baseline ------------------------------------------- */

static void *spawner(void *arg)
{
    int n = *(int *)arg;
    char *const av[] = {(char *)"/bin/true", NULL};
    for (int i = 0; i < n; i++) {
        pid_t pid;
        int st;
        if (posix_spawn(&pid, "/bin/true", NULL, NULL, av, environ) == 0) {
            waitpid(pid, &st, 0);
        }
    }
    return NULL;
}

static double spawn_rate(int per_thread)
{
    pthread_t t[2];
    uint64_t t0 = bn_mono_us();
    for (int i = 0; i < 2; i++) {
        pthread_create(&t[i], NULL, spawner, &per_thread);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    return 2.0 * per_thread / ((double)(bn_mono_us() - t0) / 1e6);
}

/* --- submits ------------------------------------------------------- */

struct submits
{
    struct bn *c;
    uint64_t n; /* 0: unbounded */
};

static bool submit_next(void *ud,
                        uint64_t i,
                        const char **method,
                        char *url,
                        size_t url_size,
                        char *body,
                        size_t body_size)
{
    struct submits *s = ud;
    if (s->n > 0 && i >= s->n) {
        return false;
    }
    *method = "POST";
    snprintf(url, url_size, "http://%s/v1/jobs",
             s->c->a[i % (uint64_t)s->c->n].api_addr);
    snprintf(body, body_size, "{\"command\":[\"/bin/true\"]}");
    return true;
}

static int64_t finished_jobs(struct bn *c)
{
    for (int i = 0; i < c->n; i++) {
        json_t *s = bn_status(c, i);
        if (s != NULL) {
            int64_t v = bn_jint(s, "jobs.by_state.succeeded") +
                        bn_jint(s, "jobs.by_state.failed") +
                        bn_jint(s, "jobs.by_state.cancelled");
            json_decref(s);
            return v;
        }
    }
    return -1;
}

/* Jobs not finished yet (retention caps the finished count at 100,000, so
 * "finished == submitted" cannot end a fill beyond it). */
static int64_t active_jobs(struct bn *c)
{
    json_t *s = bn_status(c, 0);
    int64_t v;
    if (s == NULL) {
        return -1;
    }
    v = bn_jint(s, "jobs.by_state.pending") +
        bn_jint(s, "jobs.by_state.claimed") +
        bn_jint(s, "jobs.by_state.running") +
        bn_jint(s, "jobs.by_state.retry_wait");
    json_decref(s);
    return v;
}

static int64_t last_seq(struct bn *c)
{
    json_t *s = bn_status(c, 0);
    int64_t v = bn_jint(s, "jobs.last_seq");
    json_decref(s);
    return v;
}

/* KILN_BENCH_STAGES=1: per-job stage times of the last n jobs from the
 * replicated timestamps (FSM clock = leader wall time of the apply):
 * created -> started (claim commit + spawn + START commit) and started ->
 * finished (process + exit report + FINISH commit). */
static void stages(struct bn *c, uint64_t n)
{
    int64_t last = last_seq(c);
    double *q = calloc(n, sizeof *q);
    double *r = calloc(n, sizeof *r);
    int k = 0;
    int per_node[8] = {0};
    for (int64_t seq = last - (int64_t)n + 1;
         seq <= last && q != NULL && r != NULL; seq++) {
        char url[96];
        json_t *j;
        int64_t cr = 0;
        int64_t st = 0;
        int64_t fi = 0;
        snprintf(url, sizeof url, "http://%s/v1/jobs/j%lld", c->a[0].api_addr,
                 (long long)seq);
        j = th_get_json(url);
        if (j != NULL && json_is_string(json_object_get(j, "started_at")) &&
            time_parse_ms(json_string_value(json_object_get(j, "created_at")),
                          &cr) == 0 &&
            time_parse_ms(json_string_value(json_object_get(j, "started_at")),
                          &st) == 0 &&
            time_parse_ms(json_string_value(json_object_get(j, "finished_at")),
                          &fi) == 0) {
            const char *nd = json_string_value(json_object_get(j, "node"));
            for (int i = 0; nd != NULL && i < c->n && i < 8; i++) {
                if (strcmp(nd, c->a[i].name) == 0) {
                    per_node[i]++;
                }
            }
            q[k] = (double)(st - cr);
            r[k] = (double)(fi - st);
            k++;
        }
        json_decref(j);
    }
    printf(
        "  stages over %d jobs: created->started p50 %.0f p90 %.0f ms; "
        "started->finished p50 %.0f p90 %.0f p99 %.0f ms\n",
        k, bn_median(q, k), bn_pct(q, k, 90), bn_median(r, k), bn_pct(r, k, 90),
        bn_pct(r, k, 99));
    printf("  jobs per node:");
    for (int i = 0; i < c->n && i < 8; i++) {
        printf(" %s %d", c->a[i].name, per_node[i]);
    }
    printf("\n");
    for (int i = 0; i < c->n && i < 8; i++) {
        if (k > 100 && per_node[i] < k / 10) {
            char cmd[PATH_MAX + 64];
            printf("  %s ran few jobs; the end of its log:\n", c->a[i].name);
            snprintf(cmd, sizeof cmd, "tail -n 30 '%s'", c->a[i].log_path);
            if (system(cmd) != 0) {
                printf("  (no log)\n");
            }
        }
    }
    free(q);
    free(r);
}

/* Before measuring: rounds of 30 /bin/true jobs until every node ran one
 * (at most 15 s). A node whose member record or first lease is not yet
 * committed right after the cluster formed claims nothing; once the
 * measured phase took ~1 s, such a late node skewed it. */
static void warm_up(struct bn *c)
{
    uint64_t end = th_now_ms() + 15000;
    while (th_now_ms() < end) {
        bool seen[8] = {false};
        bool all = true;
        int64_t last;
        struct submits s = {c, 30};
        struct bn_load ld;
        bn_run_load(8, 0, submit_next, NULL, &s, &ld);
        last = last_seq(c);
        while (th_now_ms() < end && finished_jobs(c) < last) {
            usleep(20000);
        }
        for (int64_t seq = last - 29; seq <= last; seq++) {
            char url[96];
            json_t *j;
            const char *nd;
            snprintf(url, sizeof url, "http://%s/v1/jobs/j%lld",
                     c->a[0].api_addr, (long long)seq);
            j = th_get_json(url);
            nd = json_string_value(json_object_get(j, "node"));
            for (int i = 0; nd != NULL && i < c->n && i < 8; i++) {
                if (strcmp(nd, c->a[i].name) == 0) {
                    seen[i] = true;
                }
            }
            json_decref(j);
        }
        for (int i = 0; i < c->n && i < 8; i++) {
            all = all && seen[i];
        }
        if (all) {
            return;
        }
    }
    printf("  warm-up: not every node ran a job within 15 s\n");
}

/* Submit n /bin/true jobs (16 in flight over all nodes) and wait until
 * they all finished; returns jobs/s from the first submit. */
static double throughput(struct bn *c, uint64_t n, double *submit_rate)
{
    struct submits s = {c, n};
    struct bn_load ld;
    int64_t base;
    uint64_t t0;
    warm_up(c);
    base = finished_jobs(c);
    t0 = bn_mono_us();
    uint64_t deadline;
    bn_run_load(16, 0, submit_next, NULL, &s, &ld);
    *submit_rate = (double)ld.ok / ld.elapsed_s;
    deadline = bn_mono_us() + 300000000u;
    while (bn_mono_us() < deadline) {
        if (finished_jobs(c) - base >= (int64_t)ld.ok) {
            break;
        }
        usleep(20000);
    }
    printf(
        "  %llu submitted (%llu failed) in %.2f s, all finished after "
        "%.2f s\n",
        (unsigned long long)ld.ok, (unsigned long long)ld.failed, ld.elapsed_s,
        (double)(bn_mono_us() - t0) / 1e6);
    if (getenv("KILN_BENCH_STAGES") != NULL) {
        stages(c, ld.ok);
    }
    return (double)ld.ok / ((double)(bn_mono_us() - t0) / 1e6);
}

/* --- one job helpers ------------------------------------------------ */

static bool submit_one(struct bn *c, int via, const char *body, char *id)
{
    char url[80];
    char *resp = NULL;
    json_t *j;
    long code;
    snprintf(url, sizeof url, "http://%s/v1/jobs", c->a[via].api_addr);
    code = th_http("POST", url, body, NULL, &resp);
    j = json_loads(resp != NULL ? resp : "", 0, NULL);
    id[0] = '\0';
    if (json_is_string(json_object_get(j, "id"))) {
        snprintf(id, 24, "%s", json_string_value(json_object_get(j, "id")));
    }
    json_decref(j);
    free(resp);
    return code == 201 && id[0] != '\0';
}

/* state and node of a job as seen by agent via */
static void job_where(struct bn *c, int via, const char *id, char *st, char *nd)
{
    char url[96];
    json_t *j;
    snprintf(url, sizeof url, "http://%s/v1/jobs/%s", c->a[via].api_addr, id);
    j = th_get_json(url);
    snprintf(st, 24, "%s",
             json_is_string(json_object_get(j, "state"))
                 ? json_string_value(json_object_get(j, "state"))
                 : "");
    snprintf(nd, 24, "%s",
             json_is_string(json_object_get(j, "node"))
                 ? json_string_value(json_object_get(j, "node"))
                 : "");
    json_decref(j);
}

static int index_of(struct bn *c, const char *name)
{
    for (int i = 0; i < c->n; i++) {
        if (strcmp(c->a[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

static int wait_running(struct bn *c, const char *id, unsigned ms)
{
    uint64_t end = th_now_ms() + ms;
    while (th_now_ms() < end) {
        char st[24];
        char nd[24];
        job_where(c, 0, id, st, nd);
        if (strcmp(st, "running") == 0) {
            return index_of(c, nd);
        }
        usleep(10000);
    }
    return -1;
}

/* --- failover ------------------------------------------------------- */

static double failover_trial(struct bn *c, int t, const char *const *extra)
{
    char id[24];
    int holder;
    int via;
    uint64_t t0;
    double ms = -1;
    char url[96];

    if (!submit_one(c, t % c->n,
                    "{\"command\":[\"/bin/sleep\",\"60\"],\"retries\":3}",
                    id) ||
        (holder = wait_running(c, id, 20000)) < 0) {
        fprintf(stderr, "failover trial %d: job never ran\n", t);
        return -1;
    }
    via = (holder + 1) % c->n;
    t0 = bn_mono_us();
    th_agent_kill(&c->a[holder]);
    while (bn_mono_us() - t0 < 60000000u) {
        char st[24];
        char nd[24];
        job_where(c, via, id, st, nd);
        if (strcmp(st, "running") == 0 && nd[0] != '\0' &&
            strcmp(nd, c->a[holder].name) != 0) {
            ms = (double)(bn_mono_us() - t0) / 1000.0;
            break;
        }
        usleep(5000);
    }
    printf("  failover trial %d: killed %s, running elsewhere after %.1f ms\n",
           t, c->a[holder].name, ms);
    snprintf(url, sizeof url, "http://%s/v1/jobs/%s/cancel", c->a[via].api_addr,
             id);
    th_http("POST", url, "", NULL, NULL);
    if (!bn_restart_wait(c, holder, 20000)) {
        printf("  restart of %s failed: fresh cluster\n", c->a[holder].name);
        bn_stop(c);
        if (!bn_start(c, 3, "bench-jobs", extra)) {
            fprintf(stderr, "cluster did not form\n");
            exit(1);
        }
    }
    return ms;
}

static void failover(struct bn *c,
                     int trials,
                     const char *lease,
                     const char *const *extra)
{
    double v[64];
    int ok = 0;
    char note[160];
    char metric[64];
    for (int t = 0; t < trials; t++) {
        double ms = failover_trial(c, t, extra);
        if (ms >= 0) {
            v[ok++] = ms;
        }
    }
    snprintf(note, sizeof note,
             "median of %d/%d kill -9 of the holder, --lease-ms %s", ok, trials,
             lease);
    snprintf(metric, sizeof metric, "failover_lease%s_median", lease);
    bn_result("jobs", metric, bn_median(v, ok), "ms", note);
    snprintf(metric, sizeof metric, "failover_lease%s_p90", lease);
    bn_result("jobs", metric, bn_pct(v, ok, 90), "ms", "");
}

/* --- live tail ------------------------------------------------------- */

struct tail
{
    char line[256];
    size_t len;
    double lat_ms[4096];
    int n;
    int64_t connected_ns;
};

static size_t tail_cb(char *p, size_t sz, size_t nm, void *ud)
{
    struct tail *t = ud;
    size_t n = sz * nm;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n') {
            if (t->len + 1 < sizeof t->line) {
                t->line[t->len++] = p[i];
            }
            continue;
        }
        t->line[t->len] = '\0';
        {
            long long ns;
            if (sscanf(t->line, "data: T %lld", &ns) == 1 &&
                ns >= t->connected_ns && t->n < 4096) {
                t->lat_ms[t->n++] = (double)(bn_real_us() * 1000 - ns) / 1e6;
            }
        }
        t->len = 0;
    }
    return n;
}

static void tail_latency(struct bn *c, int lines)
{
    char id[24];
    char body[PATH_MAX + 128];
    char url[128];
    struct tail *t = calloc(1, sizeof *t);
    int holder;
    int via;
    CURL *h;
    char note[160];
    snprintf(body, sizeof body, "{\"command\":[\"%s\",\"1500\",\"10\",\"%d\"]}",
             ticker_path, lines);
    if (!submit_one(c, 0, body, id) ||
        (holder = wait_running(c, id, 20000)) < 0) {
        fprintf(stderr, "tail: job never ran\n");
        free(t);
        return;
    }
    via = (holder + 1) % c->n;
    snprintf(url, sizeof url, "http://%s/v1/jobs/%s/logs?follow=true",
             c->a[via].api_addr, id);
    h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, tail_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 120000L);
    t->connected_ns = bn_real_us() * 1000;
    curl_easy_perform(h);
    curl_easy_cleanup(h);
    printf("  tail: job on %s, follower on %s, %d lines\n", c->a[holder].name,
           c->a[via].name, t->n);
    snprintf(note, sizeof note,
             "%d lines every 10 ms, SSE follower on another node", t->n);
    bn_result("jobs", "tail_latency_p50", bn_median(t->lat_ms, t->n), "ms",
              note);
    bn_result("jobs", "tail_latency_p99", bn_pct(t->lat_ms, t->n, 99), "ms",
              "");
    free(t);
}

/* --- memory with history ------------------------------------------- */

/* Submit n jobs and wait until every job finished; max RSS over nodes. */
static double fill(struct bn *c, uint64_t n, int64_t *finished)
{
    struct submits s = {c, n};
    struct bn_load ld;
    uint64_t end;
    double rss = 0;
    bn_run_load(16, 0, submit_next, NULL, &s, &ld);
    end = th_now_ms() + 180000;
    while (th_now_ms() < end && active_jobs(c) != 0) {
        usleep(200000);
    }
    usleep(1000000);
    for (int i = 0; i < c->n; i++) {
        json_t *st = bn_status(c, i);
        double r = (double)bn_jint(st, "rss_kib") / 1024.0;
        printf("  %s: %lld jobs stored, RSS %.1f MiB\n", c->a[i].name,
               (long long)bn_jint(st, "jobs.stored"), r);
        rss = r > rss ? r : rss;
        json_decref(st);
    }
    *finished = finished_jobs(c);
    return rss;
}

/* Two fills of `total`/2 jobs each: RSS at the end, and the slope between
 * the two points as the per-job cost. The full run fills 100,000 jobs (the
 * goal's point, measured, not extrapolated); --quick about 10 s of jobs. */
static void memory(struct bn *c, uint64_t total)
{
    uint64_t half = total / 2 + 1;
    int64_t j1;
    int64_t j2;
    double r1 = fill(c, half, &j1);
    double r2 = fill(c, half, &j2);
    char note[200];
    snprintf(note, sizeof note, "max over nodes with %lld finished jobs",
             (long long)j2);
    bn_result("jobs", "rss_with_history", r2, "MiB", note);
    if (j2 > j1) {
        double per = (r2 - r1) * 1048576.0 / (double)(j2 - j1);
        snprintf(note, sizeof note,
                 "RSS slope between %lld and %lld finished jobs", (long long)j1,
                 (long long)j2);
        bn_result("jobs", "rss_per_finished_job", per, "B", note);
        if (j2 < 100000) {
            snprintf(note, sizeof note, "%.1f MiB + %lld more jobs x %.0f B",
                     r2, (long long)(100000 - j2), per);
            bn_result("jobs", "rss_100k_extrapolated",
                      r2 + (double)(100000 - j2) * per / 1048576.0, "MiB",
                      note);
        }
    }
    if (j2 >= 100000) {
        snprintf(note, sizeof note,
                 "max over nodes, %lld finished jobs in history (measured)",
                 (long long)j2);
        bn_result("jobs", "rss_100k", r2, "MiB", note);
    }
}

int main(int argc, char **argv)
{
    struct bn_opts o;
    struct bn c;
    int trials;
    uint64_t n_jobs;
    double spawn;
    double rate;
    double submit_rate;
    char note[200];
    static const char *const lease1500[] = {"--lease-ms", "1500", NULL};
    char self[PATH_MAX];
    char *slash;
    bool only_tp;
    bool only_mem;

    bn_parse_args(argc, argv, &o);
    trials = o.trials > 0 ? o.trials : (o.quick ? 3 : 10);
    n_jobs = o.quick ? 1000 : 5000;
    if (realpath(argv[0], self) == NULL) {
        snprintf(self, sizeof self, "%s", argv[0]);
    }
    slash = strrchr(self, '/');
    if (slash != NULL) {
        *slash = '\0';
    }
    snprintf(ticker_path, sizeof ticker_path, "%s/bench_ticker", self);

    if (!bn_start(&c, 3, "bench-jobs", NULL)) {
        fprintf(stderr, "cluster did not form\n");
        bn_stop(&c);
        return 1;
    }
    /* (a) throughput vs bare spawn, same run */
    spawn = spawn_rate(o.quick ? 300 : 1000);
    rate = throughput(&c, n_jobs, &submit_rate);
    snprintf(note, sizeof note, "%llu /bin/true jobs, 16 submits in flight",
             (unsigned long long)n_jobs);
    bn_result("jobs", "throughput", rate, "jobs/s", note);
    bn_result("jobs", "submit_rate", submit_rate, "jobs/s", "201 replies/s");
    bn_result("jobs", "bare_spawn_rate", spawn, "spawn/s",
              "posix_spawn+waitpid /bin/true, 2 threads");
    bn_result("jobs", "throughput_vs_spawn", 100.0 * rate / spawn, "%", "");

    /* KILN_BENCH_ONLY=throughput: the two throughput runs alone (quick
     * iterations while tuning the job path) */
    only_tp = getenv("KILN_BENCH_ONLY") != NULL &&
              strcmp(getenv("KILN_BENCH_ONLY"), "throughput") == 0;
    if (only_tp) {
        bn_stop(&c);
        goto slots16;
    }
    /* KILN_BENCH_ONLY=memory: (a) then the history fill alone */
    only_mem = getenv("KILN_BENCH_ONLY") != NULL &&
               strcmp(getenv("KILN_BENCH_ONLY"), "memory") == 0;
    if (only_mem) {
        memory(&c, o.quick ? (uint64_t)(rate * 10) : 100000);
        bn_stop(&c);
        return 0;
    }

    /* (c) live tail latency */
    tail_latency(&c, o.quick ? 300 : 600);

    /* (b) failover, default lease */
    failover(&c, trials, "3000", NULL);

    /* (d) memory with history */
    memory(&c, o.quick ? (uint64_t)(rate * 10) : 100000);
    bn_stop(&c);

    /* (b) failover with --lease-ms 1500 */
    if (!bn_start(&c, 3, "bench-jobs", lease1500)) {
        fprintf(stderr, "cluster did not form\n");
        bn_stop(&c);
        return 1;
    }
    failover(&c, trials, "1500", lease1500);
    bn_stop(&c);

    /* (a') the same throughput with 16 slots per node: /bin/true spends
     * its slot waiting for three Raft commits (claim, start, finish), not
     * on a CPU, so concurrency above the CPU count is what such jobs get */
slots16 : {
    static const char *const slots16[] = {"--slots", "16", NULL};
    double rate16;
    if (!bn_start(&c, 3, "bench-jobs", slots16)) {
        fprintf(stderr, "cluster did not form\n");
        bn_stop(&c);
        return 1;
    }
    spawn = spawn_rate(o.quick ? 300 : 1000);
    rate16 = throughput(&c, n_jobs, &submit_rate);
    bn_result("jobs", "throughput_slots16", rate16, "jobs/s",
              "--slots 16 on each of 3 nodes");
    bn_result("jobs", "bare_spawn_rate_2", spawn, "spawn/s",
              "measured again beside it");
    bn_result("jobs", "throughput_slots16_vs_spawn", 100.0 * rate16 / spawn,
              "%", "");
    bn_stop(&c);
}
    return 0;
}
