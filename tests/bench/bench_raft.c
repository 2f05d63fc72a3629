/* Benchmark: raft commit throughput on 3 nodes (raw NOOP proposals on the
 * leader, HTTP writes from 16 clients), RSS with 10,000 pipelines, and
 * leader failover (kill -9 -> first acknowledged write). */
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/common.h"

#define LAT_MAX (1u << 20)

struct writes
{
    struct bn *c;
    int run;
    int leader;       /* index of the leader at the start */
    uint64_t *issued; /* [i]: bn_mono_us when request i was issued */
    double *lat[2];   /* latencies in ms: [0] to a follower, [1] leader */
    int n_lat[2];
    FILE *dump; /* KILN_BENCH_LATFILE: "run i node issued_ms latency_ms" */
};

static bool write_next(void *ud,
                       uint64_t i,
                       const char **method,
                       char *url,
                       size_t url_size,
                       char *body,
                       size_t body_size)
{
    struct writes *w = ud;
    const struct th_agent *a = &w->c->a[i % (uint64_t)w->c->n];
    if (i < LAT_MAX) {
        w->issued[i] = bn_mono_us();
    }
    *method = "POST";
    snprintf(url, url_size, "http://%s/v1/pipelines", a->api_addr);
    snprintf(body, body_size,
             "{\"name\":\"w%d-%llu\",\"command\":[\"/bin/true\"]}", w->run,
             (unsigned long long)i);
    return true;
}

/* Diagnostics: the reply names the pipeline "w<run>-<i>", which gives the
 * request's issue time and target. */
static void write_done(void *ud, long code, const char *body, size_t len)
{
    struct writes *w = ud;
    const char *q = strstr(body, "\"name\":\"w");
    int run;
    unsigned long long i;
    int k;

    (void)len;
    if (code != 201 || q == NULL ||
        sscanf(q, "\"name\":\"w%d-%llu", &run, &i) != 2 || run != w->run ||
        i >= LAT_MAX) {
        return;
    }
    k = (int)(i % (uint64_t)w->c->n) == w->leader ? 1 : 0;
    if (w->dump != NULL) {
        fprintf(w->dump, "%d %llu %d %.3f %.3f\n", run, i,
                (int)(i % (uint64_t)w->c->n), (double)w->issued[i] / 1000.0,
                (double)(bn_mono_us() - w->issued[i]) / 1000.0);
    }
    if (w->n_lat[k] < (int)LAT_MAX) {
        w->lat[k][w->n_lat[k]++] =
            (double)(bn_mono_us() - w->issued[i]) / 1000.0;
    }
}

struct topup
{
    struct bn *c;
    uint64_t want;
};

static bool topup_next(void *ud,
                       uint64_t i,
                       const char **method,
                       char *url,
                       size_t url_size,
                       char *body,
                       size_t body_size)
{
    struct topup *t = ud;
    if (i >= t->want) {
        return false;
    }
    *method = "POST";
    snprintf(url, url_size, "http://%s/v1/pipelines",
             t->c->a[i % (uint64_t)t->c->n].api_addr);
    snprintf(body, body_size,
             "{\"name\":\"fill-%llu\",\"command\":[\"/bin/true\"],"
             "\"timeout_s\":60}",
             (unsigned long long)i);
    return true;
}

/* CPU time (user + system) of process pid in microseconds; 0 if gone. */
static uint64_t cpu_us(pid_t pid)
{
    char path[64];
    char buf[1024];
    const char *q;
    unsigned long long ut = 0;
    unsigned long long st = 0;
    FILE *fp;
    size_t n;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    fp = fopen(path, "r");
    if (fp == NULL) {
        return 0;
    }
    n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    q = strrchr(buf, ')'); /* the name may hold spaces */
    if (q == NULL ||
        sscanf(q + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2) {
        return 0;
    }
    return (ut + st) * 1000000ull / (unsigned long long)sysconf(_SC_CLK_TCK);
}

static int leader_index(struct bn *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->a[i].pid != 0) {
            int l = bn_leader(c, i);
            if (l >= 0) {
                return l;
            }
        }
    }
    return -1;
}

static bool wait_healthy(struct bn *c, unsigned ms)
{
    uint64_t end = th_now_ms() + ms;
    while (th_now_ms() < end) {
        bool ok = true;
        int l = leader_index(c);
        for (int i = 0; i < c->n && ok; i++) {
            ok = bn_all_see(c, c->a[i].name, "alive", -1) &&
                 bn_leader(c, i) == l && l >= 0;
        }
        if (ok) {
            return true;
        }
        usleep(50000);
    }
    return false;
}

static size_t discard_cb(char *p, size_t s, size_t n, void *u)
{
    (void)p;
    (void)u;
    return s * n;
}

/* Kill -9 the leader; probe a write through the survivors every 5 ms;
 * return ms from the kill to the first 2xx reply (-1 on timeout). */
static double failover_trial(struct bn *c, int trial, int *rebuilt)
{
    int l = leader_index(c);
    CURLM *m = curl_multi_init();
    CURL *hs[4096];
    char bodies[64];
    struct curl_slist *hdr =
        curl_slist_append(NULL, "Content-Type: application/json");
    int nh = 0;
    uint64_t t0;
    uint64_t next_probe;
    double result = -1;

    if (l < 0) {
        return -1;
    }
    t0 = bn_mono_us();
    th_agent_kill(&c->a[l]);
    next_probe = t0;
    while (bn_mono_us() - t0 < 30000000u && result < 0) {
        int running;
        int left;
        CURLMsg *msg;
        if (bn_mono_us() >= next_probe && nh < (int)(sizeof hs / sizeof *hs)) {
            int target = (l + 1 + nh % (c->n - 1)) % c->n;
            char url[96];
            CURL *h = curl_easy_init();
            snprintf(url, sizeof url, "http://%s/v1/pipelines",
                     c->a[target].api_addr);
            snprintf(bodies, sizeof bodies,
                     "{\"name\":\"fo%d-%d\",\"command\":[\"/bin/true\"]}",
                     trial, nh);
            curl_easy_setopt(h, CURLOPT_URL, url);
            curl_easy_setopt(h, CURLOPT_COPYPOSTFIELDS, bodies);
            curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
            curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 20000L);
            curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
            curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_cb);
            curl_multi_add_handle(m, h);
            hs[nh++] = h;
            next_probe += 5000;
        }
        curl_multi_perform(m, &running);
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            long code = 0;
            if (msg->msg != CURLMSG_DONE || msg->data.result != CURLE_OK) {
                continue;
            }
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
            if (code >= 200 && code < 300 && result < 0) {
                result = (double)(bn_mono_us() - t0) / 1000.0;
            }
        }
        curl_multi_poll(m, NULL, 0, 1, NULL);
    }
    for (int i = 0; i < nh; i++) {
        curl_multi_remove_handle(m, hs[i]);
        curl_easy_cleanup(hs[i]);
    }
    curl_multi_cleanup(m);
    curl_slist_free_all(hdr);
    printf(
        "  failover trial %d: killed n%d, first write after %.1f ms "
        "(%d probes)\n",
        trial, l + 1, result, nh);
    if (!bn_restart_wait(c, l, 15000) || !wait_healthy(c, 30000)) {
        /* Known core bug (docs/benchmarks.md): a restart after the first
         * snapshot fails in raft_start. Continue on a fresh cluster. */
        printf("  restart of n%d failed: fresh cluster for the next trial\n",
               l + 1);
        (*rebuilt)++;
        bn_stop(c);
        if (!bn_start(c, 3, "bench-raft", NULL)) {
            fprintf(stderr, "cluster did not form\n");
            exit(1);
        }
    }
    return result;
}

int main(int argc, char **argv)
{
    struct bn_opts o;
    struct bn c;
    int runs;
    int trials;
    uint64_t n_prop;
    double v[32];
    char note[160];
    int l;
    /* KILN_BENCH_ONLY=writes: run only (b), for profiling the write path. */
    const char *only = getenv("KILN_BENCH_ONLY");
    bool writes_only = only != NULL && strcmp(only, "writes") == 0;
    /* KILN_BENCH_CLIENTS=N: diagnostics only (the goal is with 16). */
    const char *env_clients = getenv("KILN_BENCH_CLIENTS");
    int clients = env_clients != NULL ? atoi(env_clients) : 16;

    bn_parse_args(argc, argv, &o);
    if (clients < 1 || clients > 1024) {
        clients = 16;
    }
    if (clients != 16) {
        printf("  NOTE: %d clients (KILN_BENCH_CLIENTS), not the goal's 16\n",
               clients);
    }
    runs = o.quick ? 1 : 3;
    trials = o.trials > 0 ? o.trials : (o.quick ? 3 : 10);
    n_prop = o.quick ? 20000 : 100000;

    if (!bn_start(&c, 3, "bench-raft", NULL)) {
        fprintf(stderr, "cluster did not form\n");
        bn_stop(&c);
        return 1;
    }

    /* (a) raw NOOP proposals on the leader */
    for (int r = 0; r < runs && !writes_only; r++) {
        char url[128];
        char *resp = NULL;
        json_t *j;
        long code;
        l = leader_index(&c);
        snprintf(url, sizeof url, "http://%s/internal/v1/bench/propose?n=%llu",
                 c.a[l].api_addr, (unsigned long long)n_prop);
        code = th_http("POST", url, "", NULL, &resp);
        j = json_loads(resp != NULL ? resp : "", 0, NULL);
        v[r] = json_real_value(json_object_get(j, "per_sec"));
        printf("  propose run %d: HTTP %ld %s\n", r, code,
               resp != NULL ? resp : "");
        json_decref(j);
        free(resp);
    }
    if (!writes_only) {
        snprintf(note, sizeof note, "median of %d runs, N=%llu NOOPs on leader",
                 runs, (unsigned long long)n_prop);
        bn_result("raft", "raw_commit_rate", bn_median(v, runs), "cmd/s", note);
    }

    /* (b) HTTP writes: 16 clients over all nodes */
    for (int r = 0; r < runs; r++) {
        struct writes w = {&c,     r,   leader_index(&c), NULL, {NULL, NULL},
                           {0, 0}, NULL};
        struct bn_load ld;
        uint64_t cpu0[3];
        double loadavg[1] = {0};
        int wl = leader_index(&c);
        int64_t idx0 = -1;
        json_t *st = wl >= 0 ? bn_status(&c, wl) : NULL;
        if (st != NULL) {
            idx0 = bn_jint(st, "raft.last_applied");
            json_decref(st);
        }
        for (int i = 0; i < 3; i++) {
            cpu0[i] = cpu_us(c.a[i].pid);
        }
        if (getenv("KILN_BENCH_LATFILE") != NULL) {
            w.dump = fopen(getenv("KILN_BENCH_LATFILE"), r == 0 ? "w" : "a");
        }
        w.issued = calloc(LAT_MAX, sizeof *w.issued);
        w.lat[0] = calloc(LAT_MAX, sizeof *w.lat[0]);
        w.lat[1] = calloc(LAT_MAX, sizeof *w.lat[1]);
        if (w.issued == NULL || w.lat[0] == NULL || w.lat[1] == NULL) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        bn_run_load(clients, o.quick ? 2000 : 5000, write_next, write_done, &w,
                    &ld);
        v[r] = (double)ld.ok / ld.elapsed_s;
        printf("  writes run %d: %llu ok, %llu failed in %.2f s\n", r,
               (unsigned long long)ld.ok, (unsigned long long)ld.failed,
               ld.elapsed_s);
        /* Diagnostics: CPU per write of each agent (robust to a busy
         * host, unlike the rate) and the host's load. */
        getloadavg(loadavg, 1);
        printf("    cpu us/write:");
        for (int i = 0; i < 3; i++) {
            printf(" n%d%s %.0f", i + 1, i == wl ? "(leader)" : "",
                   ld.ok > 0
                       ? (double)(cpu_us(c.a[i].pid) - cpu0[i]) / (double)ld.ok
                       : 0.0);
        }
        printf("; loadavg %.2f\n", loadavg[0]);
        st = wl >= 0 ? bn_status(&c, wl) : NULL;
        if (st != NULL && idx0 >= 0 && ld.ok > 0) {
            printf("    raft entries: %lld (%.2f writes/entry)\n",
                   (long long)(bn_jint(st, "raft.last_applied") - idx0),
                   (double)ld.ok /
                       (double)(bn_jint(st, "raft.last_applied") - idx0));
        }
        json_decref(st);
        for (int k = 1; k >= 0; k--) {
            printf("    latency ms via %s (%d): p50 %.2f p90 %.2f p99 %.2f\n",
                   k == 1 ? "leader  " : "follower", w.n_lat[k],
                   bn_pct(w.lat[k], w.n_lat[k], 50),
                   bn_pct(w.lat[k], w.n_lat[k], 90),
                   bn_pct(w.lat[k], w.n_lat[k], 99));
        }
        if (w.dump != NULL) {
            fclose(w.dump);
        }
        free(w.issued);
        free(w.lat[0]);
        free(w.lat[1]);
    }
    snprintf(note, sizeof note,
             "median of %d runs, %d clients, POST /v1/pipelines, %s s", runs,
             clients, o.quick ? "2" : "5");
    bn_result("raft", "http_write_rate", bn_median(v, runs), "writes/s", note);
    if (writes_only) {
        bn_stop(&c);
        return 0;
    }

    /* (d) RSS with 10,000 pipelines */
    {
        json_t *s = bn_status(&c, 0);
        int64_t have = bn_jint(s, "fsm.pipelines");
        uint64_t want = o.quick ? 2000 : 10000;
        struct topup t = {
            &c, have >= 0 && (uint64_t)have < want ? want - (uint64_t)have : 0};
        struct bn_load ld;
        double rss[3];
        json_decref(s);
        if (t.want > 0) {
            bn_run_load(16, 0, topup_next, NULL, &t, &ld);
        }
        usleep(500000);
        for (int i = 0; i < 3; i++) {
            s = bn_status(&c, i);
            rss[i] = (double)bn_jint(s, "rss_kib") / 1024.0;
            printf("  n%d: %lld pipelines, RSS %.1f MiB\n", i + 1,
                   (long long)bn_jint(s, "fsm.pipelines"), rss[i]);
            json_decref(s);
        }
        s = bn_status(&c, 0);
        snprintf(note, sizeof note,
                 "max of 3 nodes with %lld pipelines (goal point: %llu)",
                 (long long)bn_jint(s, "fsm.pipelines"),
                 (unsigned long long)want);
        json_decref(s);
        bn_result("raft", "rss_with_pipelines", bn_pct(rss, 3, 100), "MiB",
                  note);
    }

    /* (c) leader failover */
    {
        int ok = 0;
        int rebuilt = 0;
        for (int t = 0; t < trials; t++) {
            double ms = failover_trial(&c, t, &rebuilt);
            if (ms >= 0) {
                v[ok++] = ms;
            }
        }
        snprintf(note, sizeof note,
                 "median of %d/%d kill -9 of the leader, probe every 5 ms; "
                 "%d restarts failed (fresh cluster)",
                 ok, trials, rebuilt);
        bn_result("raft", "leader_failover_median", bn_median(v, ok), "ms",
                  note);
        bn_result("raft", "leader_failover_p90", bn_pct(v, ok, 90), "ms", "");
    }
    bn_stop(&c);
    return 0;
}
