/* Benchmark: scheduled firing. P pipelines "@every 1s" on 3 nodes for a
 * window: lateness from scheduled_for to process start (the job stamps its
 * own start), missed and duplicate fires; then the same with the leader
 * killed twice. */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/common.h"
#include "util.h"

static char ticker_path[PATH_MAX + 32];

struct pl
{
    struct bn *c;
    int count;
    const char *stamp_file;
};

static bool create_next(void *ud,
                        uint64_t i,
                        const char **method,
                        char *url,
                        size_t url_size,
                        char *body,
                        size_t body_size)
{
    struct pl *p = ud;
    if (i >= (uint64_t)p->count) {
        return false;
    }
    *method = "POST";
    snprintf(url, url_size, "http://%s/v1/pipelines",
             p->c->a[i % (uint64_t)p->c->n].api_addr);
    snprintf(body, body_size,
             "{\"name\":\"p%03llu\",\"schedule\":\"@every 1s\","
             "\"command\":[\"%s\",\"stamp\",\"%s\"]}",
             (unsigned long long)i, ticker_path, p->stamp_file);
    return true;
}

struct fire
{
    int pipeline;
    int64_t sched_ms;
    int64_t start_us;
    char run[32]; /* KILN_RUN_ID: a second start of the same run is a
                   * re-run attempt (its node died), not a duplicate fire */
};

static int cmp_fire(const void *a, const void *b)
{
    const struct fire *x = a;
    const struct fire *y = b;
    if (x->pipeline != y->pipeline) {
        return x->pipeline - y->pipeline;
    }
    return (x->sched_ms > y->sched_ms) - (x->sched_ms < y->sched_ms);
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

/* One phase: fresh cluster, count pipelines, window_s seconds, kills
 * leader kills spread over the window. */
static void phase(int count, int window_s, int kills, const char *tag)
{
    struct bn c;
    char file[600];
    struct pl p;
    struct bn_load ld;
    int64_t w0;
    int64_t w1;
    FILE *f;
    struct fire *fires;
    int nf = 0;
    int cap = count * (window_s + 30) * 2;
    double *late;
    int nl = 0;
    int missed = 0;
    int dups = 0;
    int reruns = 0;
    char line[256];
    char note[200];
    char metric[64];

    const char *slots = getenv("KILN_BENCH_SLOTS");
    const char *const extra[] = {"--slots", slots, NULL};

    if (!bn_start(&c, 3, "bench-pipelines", slots != NULL ? extra : NULL)) {
        fprintf(stderr, "cluster did not form\n");
        bn_stop(&c);
        exit(1);
    }
    snprintf(file, sizeof file, "%s/stamps", c.root);
    p.c = &c;
    p.count = count;
    p.stamp_file = file;
    bn_run_load(8, 0, create_next, NULL, &p, &ld);
    printf("  %s: %llu pipelines created\n", tag, (unsigned long long)ld.ok);
    sleep(3); /* warm-up: the first fires */
    w0 = bn_real_us() / 1000;
    for (int k = 0; k < kills; k++) {
        int l;
        sleep((unsigned)(window_s / (kills + 1)));
        l = leader_index(&c);
        if (l >= 0) {
            printf("  %s: kill -9 of leader %s\n", tag, c.a[l].name);
            th_agent_kill(&c.a[l]);
            sleep(2);
            if (!bn_restart_wait(&c, l, 20000)) {
                printf("  %s: restart of %s failed\n", tag, c.a[l].name);
            }
        }
    }
    {
        int64_t left = w0 + window_s * 1000 - bn_real_us() / 1000;
        if (left > 0) {
            usleep((useconds_t)(left * 1000));
        }
    }
    w1 = bn_real_us() / 1000;
    sleep(5); /* fires scheduled inside the window may still start */
    for (int i = 0; i < c.n; i++) {
        json_t *s = bn_status(&c, i);
        if (s != NULL) {
            char *d = json_dumps(json_object_get(s, "jobs"), JSON_COMPACT);
            printf("  %s: n%d jobs %s\n", tag, i + 1, d != NULL ? d : "");
            free(d);
            json_decref(s);
            break;
        }
    }

    fires = calloc((size_t)cap, sizeof *fires);
    late = calloc((size_t)cap, sizeof *late);
    f = fopen(file, "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL && nf < cap) {
        char name[64];
        char ts[64];
        char run[32] = "-";
        long long ns;
        int64_t ms;
        if (sscanf(line, "p%63s %63s %lld %31s", name, ts, &ns, run) < 3 ||
            time_parse_ms(ts, &ms) != 0) {
            continue;
        }
        snprintf(fires[nf].run, sizeof fires[nf].run, "%s", run);
        if (ms < w0 || ms >= w1) {
            continue;
        }
        fires[nf].pipeline = atoi(name);
        fires[nf].sched_ms = ms;
        fires[nf].start_us = ns / 1000;
        late[nl++] = (double)(fires[nf].start_us - ms * 1000) / 1000.0;
        nf++;
    }
    if (f != NULL) {
        fclose(f);
    }
    qsort(fires, (size_t)nf, sizeof *fires, cmp_fire);
    for (int pi = 0; pi < count; pi++) {
        int64_t first = -1;
        int64_t prev = -1;
        const char *prev_run = "-";
        int seen = 0;
        for (int i = 0; i < nf; i++) {
            if (fires[i].pipeline != pi) {
                continue;
            }
            if (prev >= 0 && fires[i].sched_ms == prev) {
                if (strcmp(fires[i].run, prev_run) == 0 &&
                    strcmp(prev_run, "-") != 0) {
                    reruns++;
                } else {
                    dups++;
                }
                continue;
            }
            prev_run = fires[i].run;
            if (prev >= 0 && fires[i].sched_ms - prev > 1500) {
                missed += (int)((fires[i].sched_ms - prev + 500) / 1000) - 1;
            }
            if (first < 0) {
                first = fires[i].sched_ms;
                /* fires missing at the start of the window */
                missed += (int)((first - w0) / 1000);
            }
            prev = fires[i].sched_ms;
            seen++;
        }
        if (seen == 0) {
            missed += window_s;
        } else {
            missed += (int)((w1 - 1 - prev) / 1000);
        }
    }
    printf("  %s: %d process starts for fires in a %d s window\n", tag, nf,
           window_s);
    printf("  %s: lateness p1 %.1f p10 %.1f p50 %.1f p90 %.1f p99 %.1f ms\n",
           tag, bn_pct(late, nl, 1), bn_pct(late, nl, 10), bn_median(late, nl),
           bn_pct(late, nl, 90), bn_pct(late, nl, 99));
    snprintf(note, sizeof note,
             "%d pipelines @every 1s, %d s, %d leader kills, %d starts", count,
             window_s, kills, nf);
    snprintf(metric, sizeof metric, "%s_lateness_p50", tag);
    bn_result("pipelines", metric, bn_median(late, nl), "ms", note);
    snprintf(metric, sizeof metric, "%s_lateness_p99", tag);
    bn_result("pipelines", metric, bn_pct(late, nl, 99), "ms", "");
    snprintf(metric, sizeof metric, "%s_missed", tag);
    bn_result("pipelines", metric, missed, "fires", "");
    snprintf(metric, sizeof metric, "%s_duplicates", tag);
    bn_result("pipelines", metric, dups, "fires",
              "two runs for one scheduled time");
    snprintf(metric, sizeof metric, "%s_reruns", tag);
    bn_result("pipelines", metric, reruns, "attempts",
              "a run's job started again after its node was killed");
    free(fires);
    free(late);
    bn_stop(&c);
}

int main(int argc, char **argv)
{
    struct bn_opts o;
    char self[PATH_MAX];
    char *slash;
    int count;
    int window;

    bn_parse_args(argc, argv, &o);
    if (realpath(argv[0], self) == NULL) {
        snprintf(self, sizeof self, "%s", argv[0]);
    }
    slash = strrchr(self, '/');
    if (slash != NULL) {
        *slash = '\0';
    }
    snprintf(ticker_path, sizeof ticker_path, "%s/bench_ticker", self);
    count = o.quick ? 50 : 200;
    window = o.quick ? 20 : 60;
    /* Tuning knobs: KILN_BENCH_COUNT=N pipelines, KILN_BENCH_WINDOW=S
     * seconds, KILN_BENCH_ONLY=steady skips the leader kills. */
    if (getenv("KILN_BENCH_COUNT") != NULL) {
        count = atoi(getenv("KILN_BENCH_COUNT"));
    }
    if (getenv("KILN_BENCH_WINDOW") != NULL) {
        window = atoi(getenv("KILN_BENCH_WINDOW"));
    }
    phase(count, window, 0, "steady");
    if (getenv("KILN_BENCH_ONLY") == NULL ||
        strcmp(getenv("KILN_BENCH_ONLY"), "steady") != 0) {
        phase(count, window, 2, "leader_kills");
    }
    return 0;
}
