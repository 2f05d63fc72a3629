/* Cost of the divergence digest (docs/state-machine.md "Digests") at a
 * large state: N finished-size jobs and M pipelines built through
 * rsm_fsm_apply, then the time of the state hash (rsm_fsm_digest), of a
 * full snapshot (for comparison) and of the per-entry chain step.
 * Pure FSM, no cluster: build-bench/bench_digest [--jobs N] [--pipelines M]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "err.h"
#include "log.h"
#include "raft/rsm_fsm.h"
#include "raft/rsm_int.h"
#include "util.h"

#define BATCH 256

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (d == NULL) {
        abort();
    }
    return d;
}

static void submit(struct rsm_cmd *c, unsigned i)
{
    char arg[32];
    rsm_cmd_init(c, RSM_CMD_JOB_SUBMIT);
    c->u.job_submit.argv.v = calloc(4, sizeof(char *));
    c->u.job_submit.argv.v[0] = xstrdup("/bin/sh");
    c->u.job_submit.argv.v[1] = xstrdup("-c");
    snprintf(arg, sizeof arg, "echo job %u", i);
    c->u.job_submit.argv.v[2] = xstrdup(arg);
    c->u.job_submit.argv.n = 3;
    snprintf(c->idem_key, sizeof c->idem_key, "bench-%u", i);
}

static void pipeline(struct rsm_cmd *c, unsigned i)
{
    rsm_cmd_init(c, RSM_CMD_PIPELINE_CREATE);
    snprintf(c->u.pipeline_create.name, sizeof c->u.pipeline_create.name,
             "pipeline-%06u", i);
    str_copy(c->u.pipeline_create.schedule,
             sizeof c->u.pipeline_create.schedule, "*/5 * * * *");
    c->u.pipeline_create.command.v = calloc(4, sizeof(char *));
    c->u.pipeline_create.command.v[0] = xstrdup("/usr/bin/env");
    c->u.pipeline_create.command.v[1] = xstrdup("run-etl");
    c->u.pipeline_create.command.v[2] = xstrdup("--full");
    c->u.pipeline_create.command.n = 3;
}

static uint64_t index_;
static uint64_t chain_ns, chain_bytes;

static void apply_batch(struct rsm_fsm *f, struct rsm_cmd *cmds, unsigned n)
{
    static struct rsm_result res[BATCH];
    void *buf;
    size_t len;
    unsigned nres;
    uint64_t t0;
    if (rsm_entry_encode(cmds, n, 1700000000000 + (int64_t)index_, &buf,
                         &len) != 0) {
        abort();
    }
    if (rsm_fsm_apply(f, ++index_, buf, len, res, BATCH, &nres) != 0) {
        abort();
    }
    t0 = bn_mono_us();
    for (int k = 0; k < 10; k++) {
        volatile uint64_t h = rsm_chain_step(1, buf, len);
        (void)h;
    }
    chain_ns += (bn_mono_us() - t0) * 100; /* per step, ns */
    chain_bytes += len;
    raft_free(buf);
    for (unsigned i = 0; i < n; i++) {
        rsm_cmd_clear(&cmds[i]);
    }
}

int main(int argc, char **argv)
{
    unsigned n_jobs = 100000;
    unsigned n_pipes = 40000;
    static struct rsm_cmd cmds[BATCH];
    struct rsm_fsm *f;
    unsigned n = 0;
    uint64_t t0, best_hash = UINT64_MAX, best_snap = UINT64_MAX;
    uint64_t h = 0;
    void *snap = NULL;
    size_t snap_len = 0;
    msgpack_sbuffer sb;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--jobs") == 0) {
            n_jobs = (unsigned)strtoul(argv[i + 1], NULL, 10);
        } else if (strcmp(argv[i], "--pipelines") == 0) {
            n_pipes = (unsigned)strtoul(argv[i + 1], NULL, 10);
        }
    }
    log_set_level(LOG_ERROR);
    if (rsm_fsm_create(&f) != 0) {
        return 1;
    }
    for (unsigned i = 0; i < n_pipes; i++) {
        pipeline(&cmds[n++], i);
        if (n == BATCH) {
            apply_batch(f, cmds, n);
            n = 0;
        }
    }
    for (unsigned i = 0; i < n_jobs; i++) {
        submit(&cmds[n++], i);
        if (n == BATCH) {
            apply_batch(f, cmds, n);
            n = 0;
        }
    }
    if (n > 0) {
        apply_batch(f, cmds, n);
    }
    msgpack_sbuffer_init(&sb);
    rsm__snap_pack(f, &sb);
    for (int k = 0; k < 5; k++) {
        t0 = bn_mono_us();
        h = rsm_fsm_digest(f);
        t0 = bn_mono_us() - t0;
        best_hash = t0 < best_hash ? t0 : best_hash;
        t0 = bn_mono_us();
        if (rsm_fsm_snapshot(f, &snap, &snap_len) != 0) {
            return 1;
        }
        t0 = bn_mono_us() - t0;
        best_snap = t0 < best_snap ? t0 : best_snap;
        free(snap);
    }
    printf("state: %u jobs, %u pipelines, %u idem keys, %llu entries\n",
           rsm_fsm_job_count(f), rsm_fsm_pipeline_count(f),
           (unsigned)map_count(&f->idem), (unsigned long long)index_);
    printf("canonical state encoding: %zu bytes (LZ4 snapshot %zu bytes)\n",
           sb.size, snap_len);
    printf(
        "state hash (rsm_fsm_digest, streamed): %.1f ms (best of 5), "
        "%016llx == hash64 %s\n",
        (double)best_hash / 1000.0, (unsigned long long)h,
        h == hash64(sb.data, sb.size, 0) ? "yes" : "NO");
    printf(
        "full snapshot (pack + LZ4, for comparison): %.1f ms (best of "
        "5)\n",
        (double)best_snap / 1000.0);
    printf(
        "chain step: %.0f ns per entry on average, %.2f GB/s (%llu "
        "bytes in %llu entries)\n",
        (double)chain_ns / (double)index_,
        (double)chain_bytes / ((double)chain_ns / 1e9) / 1e9,
        (unsigned long long)chain_bytes, (unsigned long long)index_);
    msgpack_sbuffer_destroy(&sb);
    rsm_fsm_destroy(f);
    return h == 0;
}
