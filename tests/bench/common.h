/* Shared helpers of the benchmarks (tests/bench/bench_*.c): clusters of up
 * to BN_MAXN agents with production timings, /v1/status queries, a
 * libcurl-multi load driver, statistics and RESULT lines for bench.sh. */
#ifndef KILN_BENCH_COMMON_H_
#define KILN_BENCH_COMMON_H_

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "lib/harness.h"

#define BN_MAXN 24

struct bn
{
    char root[256];
    struct th_agent a[BN_MAXN];
    int n;
    const char *const *extra; /* flags every agent gets (NULL: none) */
};

/* Command-line options common to every benchmark. */
struct bn_opts
{
    bool quick; /* --quick: fewer trials, smaller sizes */
    int trials; /* --trials N (0: the benchmark's default) */
};
void bn_parse_args(int argc, char **argv, struct bn_opts *o);

/* Wall-clock (CLOCK_REALTIME) and monotonic time in microseconds. */
uint64_t bn_mono_us(void);
int64_t bn_real_us(void);

/* Start n agents with default (production) timings and --log-level warn:
 * n1..n3 bootstrap (--bootstrap-expect min(n,3)), n4.. join and wait to
 * be added. Waits until every agent sees every other alive and they agree
 * on a leader; returns false on timeout. */
bool bn_start(struct bn *c, int n, const char *tag, const char *const *extra);
/* Restart agent i (same data dir and ports) after a kill. */
void bn_restart(struct bn *c, int i);
/* Restart agent i and wait up to ms until every live agent sees it alive.
 * False if it exited (e.g. raft_start failed) or never became alive; then
 * its pid is 0. */
bool bn_restart_wait(struct bn *c, int i, unsigned ms);
/* SIGTERM every agent, remove the directory. */
void bn_stop(struct bn *c);

/* GET /v1/status of agent i (NULL if down). */
json_t *bn_status(const struct bn *c, int i);
/* Integer at a dotted path ("raft.last_applied") of a JSON object; -1. */
int64_t bn_jint(json_t *j, const char *path);
/* Index of the leader as seen by agent `from`'s /v1/cluster; -1. */
int bn_leader(struct bn *c, int from);
/* True if every live agent except skip sees member `name` in state want. */
bool bn_all_see(struct bn *c, const char *name, const char *want, int skip);

/* Statistics over v[0..n) (sorted in place). */
double bn_median(double *v, int n);
double bn_pct(double *v, int n, double pct);

/* Print a result line for bench.sh: "RESULT|bench|metric|value|unit|note". */
void bn_result(const char *bench,
               const char *metric,
               double value,
               const char *unit,
               const char *note);

/* Load driver: keeps `concurrency` requests in flight. next() fills method
 * ("GET"/"POST"/...), url and body (body "" for none) for request number i
 * and returns false when there is nothing more to send. Stops after
 * max_ms (0: no limit) or when next() returns false and all finished.
 * done (may be NULL) sees every completed request. */
struct bn_load
{
    uint64_t sent, ok, failed; /* ok: 2xx */
    double elapsed_s;
};
typedef bool (*bn_next_fn)(void *ud,
                           uint64_t i,
                           const char **method,
                           char *url,
                           size_t url_size,
                           char *body,
                           size_t body_size);
typedef void (*bn_done_fn)(void *ud, long code, const char *body, size_t len);
void bn_run_load(int concurrency,
                 uint64_t max_ms,
                 bn_next_fn next,
                 bn_done_fn done,
                 void *ud,
                 struct bn_load *out);

#endif /* KILN_BENCH_COMMON_H_ */
