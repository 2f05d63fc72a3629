/* GET /v1/status (node-local operational view) and the raft throughput
 * benchmark route POST /internal/v1/bench/propose (docs/benchmarks.md). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/api_int.h"
#include "err.h"
#include "log.h"
#include "util.h"

/* Most NOOPs one benchmark request may propose. */
#define BENCH_MAX_N 10000000u
/* Proposals kept outstanding: each completion proposes the next one, so
 * every loop iteration flushes a few thousand commands as full batches. */
#define BENCH_WINDOW 8192u

static uint64_t started_mono_ms; /* first api__status_init of the process */

/* VmRSS of this process in KiB from /proc/self/status; 0 if unknown. */
static uint64_t rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t kib = 0;
    if (f == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long long v;
        if (sscanf(line, "VmRSS: %llu kB", &v) == 1) {
            kib = v;
            break;
        }
    }
    fclose(f);
    return kib;
}

static json_t *gossip_json(const struct gossip *g)
{
    struct gossip_stats s;
    gossip_stats(g, &s);
    return json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,"
        "s:I,s:i,s:i}",
        "udp_in_packets", (json_int_t)s.udp_in_packets, "udp_in_bytes",
        (json_int_t)s.udp_in_bytes, "udp_out_packets",
        (json_int_t)s.udp_out_packets, "udp_out_bytes",
        (json_int_t)s.udp_out_bytes, "tcp_in_bytes", (json_int_t)s.tcp_in_bytes,
        "tcp_out_bytes", (json_int_t)s.tcp_out_bytes, "pushpull_ok",
        (json_int_t)s.pushpull_ok, "pushpull_failed",
        (json_int_t)s.pushpull_failed, "dropped_malformed",
        (json_int_t)s.dropped_malformed, "dropped_version",
        (json_int_t)s.dropped_version, "dropped_filter",
        (json_int_t)s.dropped_filter, "dropped_send",
        (json_int_t)s.dropped_send, "probes", (json_int_t)s.probes,
        "probes_failed", (json_int_t)s.probes_failed, "suspicions",
        (json_int_t)s.suspicions, "refutations", (json_int_t)s.refutations,
        "name_conflicts", (json_int_t)s.name_conflicts, "health", (int)s.health,
        "members", (int)gossip_count(g));
}

static json_t *jobs_json(const struct api *a, const struct rsm_fsm *f)
{
    json_t *by_state = json_object();
    json_t *o;
    for (unsigned st = 0; st < RSM_JOB__STATES; st++) {
        unsigned n = rsm_fsm_jobs(f, (int)st, NULL, 0);
        json_object_set_new(by_state, rsm_job_state_name(st),
                            json_integer((json_int_t)n));
    }
    o = json_pack("{s:I,s:I,s:o}", "stored", (json_int_t)rsm_fsm_job_count(f),
                  "last_seq", (json_int_t)rsm_fsm_job_seq(f), "by_state",
                  by_state);
    if (a->deps.sched != NULL) {
        json_object_set_new(
            o, "running_here",
            json_integer((json_int_t)sched_running(a->deps.sched)));
    } else {
        json_object_set_new(o, "running_here", json_null());
    }
    return o;
}

/* raft.digest: this node's newest DIGEST record and the divergence flag
 * (docs/raft.md "Divergence detection"); hashes as 16 hex digits. */
static json_t *digest_json(const struct rsm *r)
{
    struct rsm_digest_status d;
    char chain[20], state[20], now[20];
    json_t *o;
    rsm_digest_status(r, &d);
    snprintf(chain, sizeof chain, "%016" PRIx64, d.last.chain);
    snprintf(state, sizeof state, "%016" PRIx64, d.last.state);
    snprintf(now, sizeof now, "%016" PRIx64, d.chain);
    o = json_pack("{s:I,s:s,s:s,s:b,s:s,s:I,s:I}", "index",
                  (json_int_t)d.last.index, "chain", chain, "state", state,
                  "diverged", d.diverged, "chain_now", now, "checks",
                  (json_int_t)d.checks, "checked_index",
                  (json_int_t)d.checked_index);
    if (o != NULL && d.diverged) {
        char oc[20], os[20], lc[20], ls[20];
        snprintf(oc, sizeof oc, "%016" PRIx64, d.own.chain);
        snprintf(os, sizeof os, "%016" PRIx64, d.own.state);
        snprintf(lc, sizeof lc, "%016" PRIx64, d.leader.chain);
        snprintf(ls, sizeof ls, "%016" PRIx64, d.leader.state);
        json_object_set_new(
            o, "mismatch",
            json_pack("{s:I,s:I,s:{s:s,s:s},s:{s:s,s:s}}", "detected_at",
                      (json_int_t)d.detected_at, "index",
                      (json_int_t)d.own.index, "own", "chain", oc, "state", os,
                      "leader", "chain", lc, "state", ls));
    }
    return o;
}

static void status_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const struct rsm *r = a->deps.rsm;
    const struct rsm_fsm *f = rsm_state(r);
    uint64_t leader = rsm_leader_id(r);
    char id[24];
    char leader_s[24];
    json_t *raft;
    json_t *body;

    snprintf(id, sizeof id, "%016" PRIx64, a->deps.node_id);
    snprintf(leader_s, sizeof leader_s, "%016" PRIx64, leader);
    raft = json_pack("{s:s,s:b,s:o,s:I,s:I,s:I}", "role",
                     rsm_role_name(rsm_role_of(r, a->deps.node_id)), "leader",
                     rsm_is_leader(r), "leader_id",
                     leader != 0 ? json_string(leader_s) : json_null(), "term",
                     (json_int_t)rsm_term(r), "commit_index",
                     (json_int_t)rsm_commit_index(r), "last_applied",
                     (json_int_t)rsm_last_applied(r));
    if (raft != NULL) {
        json_object_set_new(raft, "digest", digest_json(r));
    }
    body = json_pack("{s:s,s:s,s:I,s:I,s:o,s:o,s:{s:I,s:I,s:I},s:o}", "node",
                     a->deps.node_name, "id", id, "uptime_ms",
                     (json_int_t)(time_mono_ms() - started_mono_ms), "rss_kib",
                     (json_int_t)rss_kib(), "raft", raft, "gossip",
                     gossip_json(a->deps.gossip), "fsm", "pipelines",
                     (json_int_t)rsm_fsm_pipeline_count(f), "jobs",
                     (json_int_t)rsm_fsm_job_count(f), "runs",
                     (json_int_t)rsm_fsm_run_count(f), "jobs", jobs_json(a, f));
    if (body == NULL) {
        http_reply_error(req, 500, "internal", "status: out of memory");
        return;
    }
    http_reply_json(req, 200, body);
}

/* --- POST /internal/v1/bench/propose?n=N ---------------------------- */

struct bench
{
    struct api *api;
    struct http_req *req; /* NULL once the client or the server went away */
    uint64_t n, sent, done, failed;
    int first_err;
    uint64_t t0_ms;
};

static void bench_abort_cb(struct http_req *req, void *data)
{
    struct bench *b = data;
    UNUSED(req);
    if (b->api->closing) {
        b->req = NULL;
    }
}

static void bench_propose_one(struct bench *b);

static void bench_finish(struct bench *b)
{
    if (b->req != NULL && !b->api->closing) {
        uint64_t ms = time_mono_ms() - b->t0_ms;
        if (b->failed > 0) {
            api__reply_err(b->req, b->first_err, "benchmark proposals failed");
        } else {
            http_reply_json(
                b->req, 200,
                json_pack("{s:I,s:I,s:f}", "n", (json_int_t)b->n, "elapsed_ms",
                          (json_int_t)ms, "per_sec",
                          ms > 0 ? (double)b->n * 1000.0 / (double)ms : 0.0));
        }
    }
    b->api->inflight--;
    free(b);
}

static void bench_done_cb(void *data, int rv, const struct rsm_result *res)
{
    struct bench *b = data;
    UNUSED(res);
    b->done++;
    if (rv != 0) {
        if (b->failed++ == 0) {
            b->first_err = rv;
        }
    }
    if (b->failed == 0 && b->sent < b->n && !b->api->closing) {
        bench_propose_one(b);
    }
    if (b->done == b->sent &&
        (b->sent == b->n || b->failed > 0 || b->api->closing)) {
        bench_finish(b);
    }
}

static void bench_propose_one(struct bench *b)
{
    struct rsm_cmd cmd;
    int rv;
    rsm_cmd_init(&cmd, RSM_CMD_NOOP);
    b->sent++;
    rv = rsm_propose(b->api->deps.rsm, &cmd, bench_done_cb, b);
    if (rv != 0) {
        /* Not queued: account it as a failed completion (no callback). */
        b->sent--;
        if (b->failed++ == 0) {
            b->first_err = rv;
        }
    }
}

static void bench_propose_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const char *n_s = http_req_query(req, "n");
    uint64_t n = 0;
    struct bench *b;
    if (n_s == NULL || parse_u64(n_s, BENCH_MAX_N, &n) != 0 || n == 0) {
        http_reply_error(req, 400, "invalid",
                         "n: must be an integer in [1, %u]", BENCH_MAX_N);
        return;
    }
    if (!rsm_is_leader(a->deps.rsm)) {
        http_reply_error(req, 409, "not_leader",
                         "benchmark proposals run on the leader only");
        return;
    }
    b = calloc(1, sizeof *b);
    if (b == NULL) {
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    b->api = a;
    b->req = req;
    b->n = n;
    b->t0_ms = time_mono_ms();
    a->inflight++;
    http_req_on_abort(req, bench_abort_cb, b);
    LOGI("api", "bench: proposing %" PRIu64 " noop commands", n);
    for (uint64_t i = 0; i < n && i < BENCH_WINDOW && b->failed == 0; i++) {
        bench_propose_one(b);
    }
    if (b->sent == 0) {
        bench_finish(b);
    }
}

int api__status_init(struct api *a)
{
    int rv;
    if (started_mono_ms == 0) {
        started_mono_ms = time_mono_ms();
    }
    rv = http_route(a->deps.http, "GET", "/v1/status", status_cb, a);
    if (rv != 0) {
        return rv;
    }
    return http_route(a->deps.http, "POST", "/internal/v1/bench/propose",
                      bench_propose_cb, a);
}
