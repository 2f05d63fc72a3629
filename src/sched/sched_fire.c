/* The leader's cron firing loop: the pure planner (fire_plan) and the libuv
 * glue that proposes PIPELINE_FIRE commands at the right instants. */
#include "sched/fire.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "util.h"

#define MOD "fire"

/* ------------------------------------------------------------ planner */

/* The latest tick t with lo < t <= x. Precondition: cron_next(e, lo) <= x.
 * Gallops back from x, then bisects on "some tick lies in (a, x]". */
static int64_t latest_in(const struct cron_expr *e, int64_t lo, int64_t x)
{
    int64_t good = lo; /* a tick lies in (good, x] */
    int64_t bad = x;   /* no tick lies in (bad, x] */
    int64_t d = 1000;

    while (d < x - lo) {
        int64_t a = x - d;
        if (cron_next(e, a) <= x) {
            good = a;
            break;
        }
        bad = a;
        if (d > INT64_MAX / 4) {
            break;
        }
        d *= 2;
    }
    while (bad - good > 1) {
        int64_t mid = good + (bad - good) / 2;
        if (cron_next(e, mid) <= x) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    return cron_next(e, good);
}

struct plan_out
{
    struct fire_action *out;
    unsigned max;
    unsigned n;
    bool truncated;
};

static bool push(struct plan_out *po, int64_t t, bool skip)
{
    if (po->n >= po->max) {
        po->truncated = true;
        return false;
    }
    po->out[po->n].scheduled_for_ms = t;
    po->out[po->n].skip = skip;
    po->n++;
    return true;
}

/* catchup=all: every due tick in (floor, now] in order, bounded by the
 * window (FIRE_WINDOW_MS, FIRE_WINDOW_TICKS); older ticks are consumed by
 * one leading skip. last is the most recent due tick. */
static void plan_all(const struct cron_expr *e,
                     int64_t floor,
                     int64_t now_ms,
                     int64_t last,
                     struct plan_out *po)
{
    int64_t wfloor = floor;
    int64_t from;
    int64_t skip_to = INT64_MIN;
    int64_t t;
    unsigned count = 0;

    if (now_ms - FIRE_WINDOW_MS > wfloor) {
        wfloor = now_ms - FIRE_WINDOW_MS;
        if (cron_next(e, floor) <= wfloor) {
            skip_to = latest_in(e, floor, wfloor);
        }
    }
    from = wfloor;
    /* Count the ticks in (wfloor, now], stopping past the bound. */
    t = wfloor;
    while (count <= FIRE_WINDOW_TICKS) {
        t = cron_next(e, t);
        if (t > now_ms) {
            break;
        }
        count++;
    }
    if (count > FIRE_WINDOW_TICKS) {
        /* Keep the latest FIRE_WINDOW_TICKS: walk back that many ticks from
         * last to the one before them, which the skip consumes. */
        t = last;
        for (unsigned i = 0; i < FIRE_WINDOW_TICKS; i++) {
            t = latest_in(e, wfloor, t - 1);
        }
        skip_to = t;
        from = t;
    }
    if (skip_to != INT64_MIN && !push(po, skip_to, true)) {
        return;
    }
    t = from;
    for (;;) {
        t = cron_next(e, t);
        if (t > now_ms || !push(po, t, false)) {
            return;
        }
    }
}

int fire_plan(const struct rsm_pipeline *p,
              const struct cron_expr *e,
              int64_t now_ms,
              struct fire_action *out,
              unsigned max,
              unsigned *n,
              int64_t *next_wake_ms)
{
    struct plan_out po = {out, max, 0, false};
    int64_t floor;
    int64_t first;
    int64_t last;

    if (p == NULL || out == NULL || n == NULL || next_wake_ms == NULL ||
        max == 0) {
        return ERR_INVALID;
    }
    *n = 0;
    *next_wake_ms = INT64_MAX;
    if (e == NULL || p->spec.schedule[0] == '\0' || p->spec.paused ||
        now_ms < CRON_MIN_MS || now_ms > CRON_MAX_MS) {
        return 0;
    }
    floor = p->fire_cursor_ms;
    if (p->updated_ms - FIRE_TOLERANCE_MS > floor) {
        floor = p->updated_ms - FIRE_TOLERANCE_MS;
    }
    if (floor < CRON_MIN_MS) {
        floor = CRON_MIN_MS;
    }
    first = cron_next(e, floor);
    if (first > now_ms) {
        *next_wake_ms = first;
        return 0;
    }
    last = latest_in(e, floor, now_ms);
    switch (p->spec.catchup) {
        case RSM_CATCHUP_LATEST:
            push(&po, last, false);
            break;
        case RSM_CATCHUP_ALL:
            plan_all(e, floor, now_ms, last, &po);
            break;
        default: /* none */
            if (now_ms - last > FIRE_TOLERANCE_MS) {
                push(&po, last, true);
            } else {
                if (first < last) {
                    push(&po, latest_in(e, floor, last - 1), true);
                }
                push(&po, last, false);
            }
            break;
    }
    *n = po.n;
    *next_wake_ms = po.truncated ? now_ms : cron_next(e, now_ms);
    return 0;
}

/* --------------------------------------------------------------- loop */

#define HEAP_NONE SIZE_MAX

/* What the loop remembers per scheduled pipeline (on the leader). A pass
 * plans only the pipelines on the dirty list (touched by an applied
 * command, answered FIRE batches, or all of them once per leadership) and
 * those whose wake-up time has come (a min-heap on wake_ms), so its cost
 * does not depend on the number of pipelines. */
struct fire_pipe
{
    char name[RSM_NAME_MAX + 1];
    uint64_t version; /* of the cached expression; 0 = none */
    char schedule[RSM_SCHEDULE_MAX + 1]; /* ... and its source: a pipeline */
    char timezone[RSM_TZ_MAX + 1];       /* deleted and created again has
                                          * version 1 again */
    bool has_expr;                       /* schedule parsed on this node */
    struct cron_expr expr;               /* valid when has_expr */
    bool inflight;                /* a FIRE batch is proposed, not answered */
    bool queued;                  /* on the dirty list */
    struct fire_pipe *next_dirty; /* dirty list link */
    int64_t wake_ms;              /* plan again at; INT64_MAX = not timed */
    size_t heap_pos;              /* index in f->heap or HEAP_NONE */
    uint64_t gen;                 /* last full scan that saw the pipeline */
};

/* One batch of FIRE proposals for one pipeline. */
struct fire_req
{
    struct fire *f; /* NULL once detached by fire_close */
    struct fire_req *next;
    struct fire_req *prev;
    char name[RSM_NAME_MAX + 1];
    unsigned left;  /* completions still expected */
    bool failed;    /* some proposal failed (rv != 0) */
    bool rejected;  /* some FIRE was rejected by the FSM */
    bool proposing; /* inside the proposing loop: do not finish yet */
};

static void kick(struct fire *f, uint64_t delay_ms);
static void rearm(struct fire *f);

/* ----------------------------------------------------- wake-up heap */

static void heap_place(struct fire *f, size_t i, struct fire_pipe *pp)
{
    f->heap[i] = pp;
    pp->heap_pos = i;
}

static void heap_up(struct fire *f, size_t i)
{
    struct fire_pipe *pp = f->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (f->heap[parent]->wake_ms <= pp->wake_ms) {
            break;
        }
        heap_place(f, i, f->heap[parent]);
        i = parent;
    }
    heap_place(f, i, pp);
}

static void heap_down(struct fire *f, size_t i)
{
    struct fire_pipe *pp = f->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= f->heap_n) {
            break;
        }
        if (c + 1 < f->heap_n &&
            f->heap[c + 1]->wake_ms < f->heap[c]->wake_ms) {
            c++;
        }
        if (pp->wake_ms <= f->heap[c]->wake_ms) {
            break;
        }
        heap_place(f, i, f->heap[c]);
        i = c;
    }
    heap_place(f, i, pp);
}

static void heap_remove(struct fire *f, struct fire_pipe *pp)
{
    size_t i = pp->heap_pos;
    struct fire_pipe *last;

    if (i == HEAP_NONE) {
        return;
    }
    pp->heap_pos = HEAP_NONE;
    last = f->heap[--f->heap_n];
    if (last == pp) {
        return;
    }
    heap_place(f, i, last);
    heap_up(f, i);
    heap_down(f, last->heap_pos);
}

/* Set pp's wake-up time (INT64_MAX: none) and its place in the heap. On
 * out of memory the pipeline is left untimed and a full scan is due. */
static void heap_set(struct fire *f, struct fire_pipe *pp, int64_t wake_ms)
{
    pp->wake_ms = wake_ms;
    if (wake_ms == INT64_MAX) {
        heap_remove(f, pp);
        return;
    }
    if (pp->heap_pos != HEAP_NONE) {
        heap_up(f, pp->heap_pos);
        heap_down(f, pp->heap_pos);
        return;
    }
    if (f->heap_n == f->heap_cap) {
        size_t ncap = f->heap_cap == 0 ? 64 : f->heap_cap * 2;
        struct fire_pipe **nh = realloc(f->heap, ncap * sizeof *nh);
        if (nh == NULL) {
            LOGW(MOD, "pipeline %s: out of memory; rescanning later", pp->name);
            pp->wake_ms = INT64_MAX;
            f->need_scan = true;
            return;
        }
        f->heap = nh;
        f->heap_cap = ncap;
    }
    heap_place(f, f->heap_n++, pp);
    heap_up(f, pp->heap_pos);
}

/* ------------------------------------------------------ pipelines */

static void mark_dirty(struct fire *f, struct fire_pipe *pp)
{
    if (pp->queued) {
        return;
    }
    pp->queued = true;
    pp->next_dirty = NULL;
    if (f->dirty_tail != NULL) {
        f->dirty_tail->next_dirty = pp;
    } else {
        f->dirty_head = pp;
    }
    f->dirty_tail = pp;
}

static struct fire_pipe *pipe_get(struct fire *f, const char *name)
{
    struct fire_pipe *pp = map_get_str(&f->pipes, name);
    if (pp != NULL) {
        return pp;
    }
    pp = calloc(1, sizeof *pp);
    if (pp == NULL) {
        return NULL;
    }
    str_copy(pp->name, sizeof pp->name, name);
    pp->wake_ms = INT64_MAX;
    pp->heap_pos = HEAP_NONE;
    if (map_put_str(&f->pipes, name, pp, NULL) != 0) {
        free(pp);
        return NULL;
    }
    return pp;
}

/* Forget pp. Precondition: not on the dirty list. */
static void pipe_drop(struct fire *f, struct fire_pipe *pp)
{
    heap_remove(f, pp);
    map_del_str(&f->pipes, pp->name);
    free(pp);
}

/* Refresh the cached expression when the pipeline's version, schedule
 * or time zone changed (a pipeline deleted and created again under the
 * same name before a pass starts at version 1 again). */
static void pipe_refresh(struct fire_pipe *pp, const struct rsm_pipeline *p)
{
    char errmsg[ERRMSG_SIZE] = "";

    if (pp->version == p->version &&
        strcmp(pp->schedule, p->spec.schedule) == 0 &&
        strcmp(pp->timezone, p->spec.timezone) == 0) {
        return;
    }
    pp->version = p->version;
    str_copy(pp->schedule, sizeof pp->schedule, p->spec.schedule);
    str_copy(pp->timezone, sizeof pp->timezone, p->spec.timezone);
    pp->has_expr = false;
    if (p->spec.schedule[0] == '\0') {
        return;
    }
    if (cron_parse(&pp->expr, p->spec.schedule, p->spec.timezone, errmsg) !=
        0) {
        LOGW(MOD, "pipeline %s v%" PRIu64 ": %s: not firing", p->spec.name,
             p->version, errmsg);
        return;
    }
    pp->has_expr = true;
}

/* ------------------------------------------------------ proposals */

static void req_unlink(struct fire *f, struct fire_req *q)
{
    if (q->prev != NULL) {
        q->prev->next = q->next;
    } else {
        f->reqs = q->next;
    }
    if (q->next != NULL) {
        q->next->prev = q->prev;
    }
    q->next = q->prev = NULL;
}

/* All proposals of a batch answered: let the pipeline plan again. */
static void req_finish(struct fire_req *q)
{
    struct fire *f = q->f;
    struct fire_pipe *pp;

    if (f != NULL) {
        req_unlink(f, q);
        pp = map_get_str(&f->pipes, q->name);
        if (pp != NULL) {
            pp->inflight = false;
            if (q->failed || q->rejected) {
                /* No busy loop on a persistent failure or disagreement
                 * with the FSM: back off before planning again. */
                heap_set(f, pp, time_wall_ms() + FIRE_RETRY_MS);
            } else {
                mark_dirty(f, pp);
            }
        }
        rearm(f);
    }
    free(q);
}

static void fire_proposed_cb(void *data, int rv, const struct rsm_result *res)
{
    struct fire_req *q = data;
    struct fire *f = q->f;

    if (rv != 0) {
        q->failed = true;
        if (f != NULL) {
            f->failed++;
        }
        if (rv != ERR_SHUTDOWN) {
            LOGD(MOD, "FIRE %s: %s", q->name, err_str(rv));
        }
    } else if (res != NULL && res->code != 0) {
        /* ERR_STALE (a duplicate: the cursor is already there) is
         * harmless and cannot repeat; anything else backs off. */
        q->rejected = q->rejected || res->code != ERR_STALE;
        if (f != NULL) {
            f->rejected++;
        }
        LOGD(MOD, "FIRE %s rejected: %s", q->name, res->message);
    } else if (f != NULL) {
        f->applied++;
    }
    q->left--;
    if (q->left == 0 && !q->proposing) {
        req_finish(q);
    }
}

/* Propose the planned actions of one pipeline as one batch. */
static void propose_actions(struct fire *f,
                            struct fire_pipe *pp,
                            const struct fire_action *acts,
                            unsigned n)
{
    struct fire_req *q = calloc(1, sizeof *q);
    struct rsm_cmd cmd;
    int rv;

    if (q == NULL) {
        LOGW(MOD, "FIRE %s: out of memory", pp->name);
        heap_set(f, pp, time_wall_ms() + FIRE_RETRY_MS);
        return;
    }
    q->f = f;
    str_copy(q->name, sizeof q->name, pp->name);
    q->proposing = true;
    q->next = f->reqs;
    if (f->reqs != NULL) {
        f->reqs->prev = q;
    }
    f->reqs = q;
    pp->inflight = true;
    heap_set(f, pp, INT64_MAX); /* re-planned when the batch is answered */
    for (unsigned i = 0; i < n; i++) {
        rsm_cmd_init(&cmd, RSM_CMD_PIPELINE_FIRE);
        str_copy(cmd.u.pipeline_fire.pipeline,
                 sizeof cmd.u.pipeline_fire.pipeline, pp->name);
        cmd.u.pipeline_fire.scheduled_for_ms = acts[i].scheduled_for_ms;
        cmd.u.pipeline_fire.skip = acts[i].skip;
        q->left++;
        rv = rsm_propose(f->rsm, &cmd, fire_proposed_cb, q);
        if (rv != 0) {
            /* Not queued: the callback will not run for it. */
            q->left--;
            q->failed = true;
            f->failed++;
            rsm_cmd_clear(&cmd);
            LOGD(MOD, "FIRE %s: propose: %s", pp->name, err_str(rv));
            break;
        }
        f->proposed++;
        if (acts[i].skip) {
            f->skipped++;
        }
        LOGD(MOD, "FIRE %s at %" PRId64 "%s", pp->name,
             acts[i].scheduled_for_ms, acts[i].skip ? " (skip)" : "");
    }
    q->proposing = false;
    if (q->left == 0) {
        req_finish(q); /* all failed at once: backs off */
    }
}

/* ------------------------------------------------------------ passes */

/* Plan one pipeline taken off the dirty list: propose its due FIREs and
 * time its next wake-up; forget it when the FSM no longer has it or it has
 * no schedule. */
static void plan_one(struct fire *f, struct fire_pipe *pp, int64_t now)
{
    const struct rsm_pipeline *p =
        rsm_fsm_pipeline(rsm_state(f->rsm), pp->name);
    struct fire_action acts[FIRE_BATCH_MAX];
    unsigned k = 0;
    int64_t wake = INT64_MAX;

    if (p == NULL || p->spec.schedule[0] == '\0') {
        if (!pp->inflight) {
            pipe_drop(f, pp);
        }
        return; /* else looked at again when the batch is answered */
    }
    pipe_refresh(pp, p);
    if (pp->inflight) {
        return; /* re-planned when the batch is answered */
    }
    f->planned++;
    fire_plan(p, pp->has_expr ? &pp->expr : NULL, now, acts, FIRE_BATCH_MAX, &k,
              &wake);
    if (k > 0) {
        propose_actions(f, pp, acts, k);
        return;
    }
    heap_set(f, pp, wake);
}

/* Mark every scheduled pipeline of the FSM dirty and forget the ones it no
 * longer has: on new leadership (the cursors may have moved under another
 * leader) and after running out of memory. O(pipelines). */
static void full_scan(struct fire *f)
{
    const struct rsm_fsm *fsm = rsm_state(f->rsm);
    unsigned count = rsm_fsm_pipeline_count(fsm);
    const struct rsm_pipeline **all = calloc(count + 1, sizeof *all);
    struct map_iter it;
    const char *key;
    void *value;
    unsigned n;
    bool ok = true;
    struct fire_pipe *gone = NULL;

    if (all == NULL) {
        LOGW(MOD, "scan: out of memory; retrying");
        return; /* need_scan stays set */
    }
    n = rsm_fsm_pipelines(fsm, all, count);
    if (n > count) {
        n = count;
    }
    f->gen++;
    f->scans++;
    for (unsigned i = 0; i < n; i++) {
        const struct rsm_pipeline *p = all[i];
        struct fire_pipe *pp;
        if (p->spec.schedule[0] == '\0' &&
            map_get_str(&f->pipes, p->spec.name) == NULL) {
            continue;
        }
        pp = pipe_get(f, p->spec.name);
        if (pp == NULL) {
            ok = false;
            continue;
        }
        pp->gen = f->gen;
        mark_dirty(f, pp);
    }
    free(all);
    /* Not seen: gone from the FSM (queued ones are dropped when planned).
     * Chain them through next_dirty (unused while not queued). */
    map_iter_init(&it, &f->pipes);
    while (map_iter_next(&it, &key, NULL, &value)) {
        struct fire_pipe *pp = value;
        if (pp->gen != f->gen && !pp->queued) {
            pp->next_dirty = gone;
            gone = pp;
        }
    }
    while (gone != NULL) {
        struct fire_pipe *pp = gone;
        gone = pp->next_dirty;
        pipe_drop(f, pp);
    }
    f->need_scan = !ok;
}

/* One pass: plan the dirty pipelines and the due ones, then arm the timer
 * for the earliest wake-up. Only on the ready leader. */
static void fire_pass(struct fire *f)
{
    struct fire_pipe *list;
    int64_t now;

    f->leader = rsm_is_leader(f->rsm);
    if (!f->leader || f->closing) {
        uv_timer_stop(&f->timer);
        return;
    }
    f->passes++;
    if (f->need_scan) {
        full_scan(f);
    }
    now = time_wall_ms();
    while (f->heap_n > 0 && f->heap[0]->wake_ms <= now) {
        struct fire_pipe *pp = f->heap[0];
        heap_set(f, pp, INT64_MAX);
        mark_dirty(f, pp);
    }
    /* Detach the list: pipelines marked while planning (never
     * synchronously by a proposal, but stay safe) wait for the next
     * pass. */
    list = f->dirty_head;
    f->dirty_head = f->dirty_tail = NULL;
    while (list != NULL) {
        struct fire_pipe *pp = list;
        list = pp->next_dirty;
        pp->next_dirty = NULL;
        pp->queued = false;
        plan_one(f, pp, now);
    }
    rearm(f);
}

static void fire_timer_cb(uv_timer_t *t)
{
    fire_pass(t->data);
}

/* (Re-)arm the one timer: the pass runs after delay_ms. */
static void kick(struct fire *f, uint64_t delay_ms)
{
    if (f->closing) {
        return;
    }
    uv_timer_start(&f->timer, fire_timer_cb, delay_ms, 0);
}

/* Arm the timer for what is pending: at once for dirty pipelines, else the
 * earliest wake-up (a pending full scan retries within FIRE_RETRY_MS). */
static void rearm(struct fire *f)
{
    int64_t delay = INT64_MAX;

    if (f->closing || !f->leader) {
        uv_timer_stop(&f->timer);
        return;
    }
    if (f->dirty_head != NULL) {
        delay = 0;
    } else if (f->heap_n > 0) {
        int64_t now;
        uv_update_time(f->loop);
        now = time_wall_ms();
        delay = f->heap[0]->wake_ms <= now ? 0 : f->heap[0]->wake_ms - now;
    }
    if (f->need_scan && delay > FIRE_RETRY_MS) {
        delay = FIRE_RETRY_MS;
    }
    if (delay == INT64_MAX) {
        uv_timer_stop(&f->timer);
        return;
    }
    kick(f, (uint64_t)delay);
}

int fire_init(struct fire *f, uv_loop_t *loop, struct rsm *rsm)
{
    int rv;
    memset(f, 0, sizeof *f);
    f->loop = loop;
    f->rsm = rsm;
    map_init(&f->pipes, MAP_STR);
    rv = uv_timer_init(loop, &f->timer);
    if (rv != 0) {
        LOGE(MOD, "timer: %s", uv_strerror(rv));
        return ERR_IO;
    }
    f->timer.data = f;
    fire_on_role(f);
    return 0;
}

void fire_on_applied(struct fire *f,
                     const struct rsm_cmd *cmd,
                     const struct rsm_result *res)
{
    const char *name;
    bool scheduled = false; /* the command sets a schedule */
    struct fire_pipe *pp;

    UNUSED(res);
    if (f->closing || !f->leader) {
        return;
    }
    switch (cmd->type) {
        case RSM_CMD_PIPELINE_CREATE:
            name = cmd->u.pipeline_create.name;
            scheduled = cmd->u.pipeline_create.schedule[0] != '\0';
            break;
        case RSM_CMD_PIPELINE_UPDATE:
            name = cmd->u.pipeline_update.spec.name;
            scheduled = cmd->u.pipeline_update.spec.schedule[0] != '\0';
            break;
        case RSM_CMD_PIPELINE_DELETE:
            name = cmd->u.pipeline_delete.name;
            break;
        case RSM_CMD_PIPELINE_FIRE:
            name = cmd->u.pipeline_fire.pipeline;
            break;
        default:
            return;
    }
    /* Every scheduled pipeline has an entry (from the full scan at the
     * start of the leadership, or from its create/update): a pipeline
     * without one and without a new schedule has nothing to fire. */
    pp = map_get_str(&f->pipes, name);
    if (pp == NULL) {
        if (!scheduled) {
            return;
        }
        pp = pipe_get(f, name);
        if (pp == NULL) {
            LOGW(MOD, "pipeline %s: out of memory; rescanning later", name);
            f->need_scan = true;
            kick(f, FIRE_RETRY_MS);
            return;
        }
    }
    mark_dirty(f, pp);
    /* The pass runs in the next loop iteration; it costs O(dirty + due),
     * not O(pipelines). */
    if (!uv_is_active((uv_handle_t *)&f->timer) ||
        uv_timer_get_due_in(&f->timer) > 0) {
        kick(f, 0);
    }
}

void fire_on_role(struct fire *f)
{
    bool leader;

    if (f->closing) {
        return;
    }
    leader = rsm_is_leader(f->rsm);
    if (leader && !f->leader) {
        /* New leadership: the cursors may have moved under another
         * leader, so plan everything afresh. */
        f->need_scan = true;
        LOGI(MOD, "leader: firing schedules");
    } else if (!leader && f->leader) {
        LOGI(MOD, "not leader: firing stops");
    }
    f->leader = leader;
    if (leader) {
        kick(f, 0);
    } else {
        uv_timer_stop(&f->timer);
    }
}

static void fire_timer_closed_cb(uv_handle_t *h)
{
    struct fire *f = h->data;
    if (f->close_cb != NULL) {
        f->close_cb(f);
    }
}

void fire_close(struct fire *f, void (*cb)(struct fire *f))
{
    struct map_iter it;
    void *value;

    f->closing = true;
    f->close_cb = cb;
    uv_timer_stop(&f->timer);
    while (f->reqs != NULL) {
        struct fire_req *q = f->reqs;
        req_unlink(f, q);
        q->f = NULL; /* its last completion frees it */
    }
    map_iter_init(&it, &f->pipes);
    while (map_iter_next(&it, NULL, NULL, &value)) {
        free(value);
    }
    map_close(&f->pipes);
    free(f->heap);
    f->heap = NULL;
    f->heap_n = f->heap_cap = 0;
    f->dirty_head = f->dirty_tail = NULL;
    uv_close((uv_handle_t *)&f->timer, fire_timer_closed_cb);
}
