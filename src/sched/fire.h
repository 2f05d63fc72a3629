/* The leader's cron firing loop: plans which ticks of which pipelines are
 * due and proposes PIPELINE_FIRE commands for them (docs/scheduling.md,
 * "Firing on the leader"). The planner is pure; the loop is thin libuv
 * glue around it. */
#ifndef KILN_SCHED_FIRE_H_
#define KILN_SCHED_FIRE_H_

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "map.h"
#include "raft/rsm.h"
#include "sched/cron.h"

/* A due tick at most this late (and the most recent due tick) fires
 * normally; every other due tick is "missed" and follows the pipeline's
 * catch-up policy. */
#define FIRE_TOLERANCE_MS 2000

/* catchup=all replays at most this many missed ticks, none older than
 * FIRE_WINDOW_MS; older ones are consumed by one skip FIRE. */
#define FIRE_WINDOW_TICKS 1000u
#define FIRE_WINDOW_MS (24LL * 60 * 60 * 1000)

/* FIRE commands proposed for one pipeline in one round (one raft entry);
 * the next round starts once they applied. */
#define FIRE_BATCH_MAX 64u

/* Wait after a failed or rejected FIRE before planning that pipeline
 * again. */
#define FIRE_RETRY_MS 250

/* One FIRE to propose: the tick and whether it only advances the cursor. */
struct fire_action
{
    int64_t scheduled_for_ms;
    bool skip; /* true: consume the tick(s) up to here without a run */
};

/* Plan the FIRE proposals for pipeline p at now_ms (pure, deterministic).
 * e is p's parsed schedule, or NULL when p has none or it does not parse
 * on this node. Ticks considered are those after
 * max(p->fire_cursor_ms, p->updated_ms - FIRE_TOLERANCE_MS) and <= now_ms
 * (ticks before the last update, e.g. an unpause, are never caught up).
 * Writes at most max actions to out, in proposal order (ascending
 * scheduled_for), sets *n, and sets *next_wake_ms to the time to plan again
 * if no FIRE of p applies meanwhile: the next tick after now, now_ms itself
 * when out was too small, INT64_MAX when there is nothing to wait for
 * (paused, no schedule, no tick within the cron horizon). Catch-up, with
 * `last` the most recent due tick:
 *   none:   last at most FIRE_TOLERANCE_MS late: [skip(tick before last)
 *           if any earlier tick is due, fire(last)]; else [skip(last)].
 *   latest: [fire(last)] (earlier due ticks are consumed by the cursor).
 *   all:    every due tick in order, bounded: ticks older than
 *           FIRE_WINDOW_MS, and all but the latest FIRE_WINDOW_TICKS, are
 *           consumed by one leading skip.
 * Paused pipelines and pipelines without a schedule plan nothing.
 * Returns 0, or ERR_INVALID if p, out, n or next_wake_ms is NULL or max is
 * 0. */
int fire_plan(const struct rsm_pipeline *p,
              const struct cron_expr *e,
              int64_t now_ms,
              struct fire_action *out,
              unsigned max,
              unsigned *n,
              int64_t *next_wake_ms);

struct fire_req;  /* a batch of FIRE proposals in flight (sched_fire.c) */
struct fire_pipe; /* per scheduled pipeline state (sched_fire.c) */

/* The firing loop. Caller-allocated; fields are private to sched_fire.c
 * except the counters, which tests and metrics may read. A pass plans only
 * the pipelines touched since the last one and those whose next tick is
 * due, so its cost does not grow with the number of pipelines; every
 * scheduled pipeline is planned once when the leadership starts. */
struct fire
{
    uv_loop_t *loop;              /* borrowed */
    struct rsm *rsm;              /* borrowed; must outlive fire_close's cb */
    uv_timer_t timer;             /* the one wake-up timer */
    struct map pipes;             /* name -> struct fire_pipe (owned), one
                                     per scheduled pipeline */
    struct fire_pipe **heap;      /* min-heap on the wake-up time (owned) */
    size_t heap_n;                /* used */
    size_t heap_cap;              /* allocated */
    struct fire_pipe *dirty_head; /* to plan at the next pass (FIFO) */
    struct fire_pipe *dirty_tail;
    struct fire_req *reqs; /* proposals in flight (owned, detached on
                              close) */
    uint64_t gen;          /* full scan generation of pipes */
    bool need_scan;        /* plan every pipeline at the next pass */
    bool leader;           /* rsm_is_leader at the last pass */
    bool closing;
    void (*close_cb)(struct fire *f);
    /* Counters since init. */
    uint64_t proposed; /* FIRE commands proposed (incl. skips) */
    uint64_t skipped;  /* of which skip FIREs */
    uint64_t applied;  /* accepted by the FSM (result code 0) */
    uint64_t rejected; /* rejected by the FSM (stale cursor, gone, ...) */
    uint64_t failed;   /* proposals that failed (no leader, shutdown) */
    uint64_t passes;   /* passes run on the leader */
    uint64_t scans;    /* of which walked every pipeline (full scans) */
    uint64_t planned;  /* pipelines planned (fire_plan calls) */
};

/* Initialise the loop on loop over rsm and plan at once if this node
 * leads. The node then forwards applied commands (fire_on_applied) and role
 * changes (fire_on_role). Returns 0 or ERR_NOMEM / ERR_IO (timer). */
int fire_init(struct fire *f, uv_loop_t *loop, struct rsm *rsm);

/* Observer of applied commands (from rsm's on_applied): re-plans (at the
 * next loop iteration) the pipeline touched by a pipeline create/update/
 * delete or a FIRE, if it has or gets a schedule. O(1) for every other
 * command and for pipelines without a schedule. Never proposes
 * synchronously. */
void fire_on_applied(struct fire *f,
                     const struct rsm_cmd *cmd,
                     const struct rsm_result *res);

/* Leadership may have changed (from rsm's on_role): start firing when this
 * node became the ready leader, stop the timer when it is not. */
void fire_on_role(struct fire *f);

/* Stop the timer and close it; FIRE proposals still in flight are detached
 * (their completions are ignored). cb (may be NULL) runs once the timer
 * handle is closed; f's memory is reusable from then on. */
void fire_close(struct fire *f, void (*cb)(struct fire *f));

#endif /* KILN_SCHED_FIRE_H_ */
