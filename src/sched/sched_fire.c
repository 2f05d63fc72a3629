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

/* What the loop remembers per pipeline (on the leader). */
struct fire_pipe
{
    uint64_t version;      /* of the cached expression; 0 = none yet */
    bool has_expr;         /* schedule parsed on this node */
    struct cron_expr expr; /* valid when has_expr */
    bool inflight;         /* a FIRE batch is proposed, not answered */
    bool dirty;            /* plan at the next pass */
    int64_t wake_ms;       /* plan again at; INT64_MAX = on change only */
    uint64_t gen;          /* last pass that saw the pipeline */
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
                pp->wake_ms = time_wall_ms() + FIRE_RETRY_MS;
            } else {
                pp->dirty = true;
            }
        }
        if (!f->closing) {
            kick(f, 0);
        }
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
                            const char *name,
                            struct fire_pipe *pp,
                            const struct fire_action *acts,
                            unsigned n)
{
    struct fire_req *q = calloc(1, sizeof *q);
    struct rsm_cmd cmd;
    int rv;

    if (q == NULL) {
        LOGW(MOD, "FIRE %s: out of memory", name);
        pp->wake_ms = time_wall_ms() + FIRE_RETRY_MS;
        return;
    }
    q->f = f;
    str_copy(q->name, sizeof q->name, name);
    q->proposing = true;
    q->next = f->reqs;
    if (f->reqs != NULL) {
        f->reqs->prev = q;
    }
    f->reqs = q;
    pp->inflight = true;
    for (unsigned i = 0; i < n; i++) {
        rsm_cmd_init(&cmd, RSM_CMD_PIPELINE_FIRE);
        str_copy(cmd.u.pipeline_fire.pipeline,
                 sizeof cmd.u.pipeline_fire.pipeline, name);
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
            LOGD(MOD, "FIRE %s: propose: %s", name, err_str(rv));
            break;
        }
        f->proposed++;
        if (acts[i].skip) {
            f->skipped++;
        }
        LOGD(MOD, "FIRE %s at %" PRId64 "%s", name, acts[i].scheduled_for_ms,
             acts[i].skip ? " (skip)" : "");
    }
    q->proposing = false;
    if (q->left == 0) {
        req_finish(q);
    }
}

/* Refresh the cached expression when the pipeline's version changed. */
static void pipe_refresh(struct fire_pipe *pp, const struct rsm_pipeline *p)
{
    char errmsg[ERRMSG_SIZE] = "";

    if (pp->version == p->version) {
        return;
    }
    pp->version = p->version;
    pp->dirty = true;
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
    pp->wake_ms = INT64_MAX;
    if (map_put_str(&f->pipes, name, pp, NULL) != 0) {
        free(pp);
        return NULL;
    }
    return pp;
}

/* Forget pipelines the FSM no longer has. */
static void pipes_sweep(struct fire *f)
{
    struct map_iter it;
    const char *key;
    void *value;
    char(*gone)[RSM_NAME_MAX + 1] = NULL;
    size_t n_gone = 0;
    size_t cap = 0;

    map_iter_init(&it, &f->pipes);
    while (map_iter_next(&it, &key, NULL, &value)) {
        struct fire_pipe *pp = value;
        if (pp->gen == f->gen) {
            continue;
        }
        if (n_gone == cap) {
            size_t ncap = cap == 0 ? 8 : cap * 2;
            void *ng = realloc(gone, ncap * sizeof *gone);
            if (ng == NULL) {
                break; /* swept at a later pass */
            }
            gone = ng;
            cap = ncap;
        }
        str_copy(gone[n_gone++], sizeof gone[0], key);
    }
    for (size_t i = 0; i < n_gone; i++) {
        free(map_del_str(&f->pipes, gone[i]));
    }
    free(gone);
}

/* One pass over every pipeline: plan the dirty and due ones, then arm the
 * timer for the earliest wake-up. Only on the ready leader. */
static void fire_pass(struct fire *f)
{
    const struct rsm_fsm *fsm = rsm_state(f->rsm);
    unsigned count = rsm_fsm_pipeline_count(fsm);
    const struct rsm_pipeline **all;
    struct fire_action acts[FIRE_BATCH_MAX];
    int64_t now;
    int64_t earliest = INT64_MAX;
    unsigned n;

    f->leader = rsm_is_leader(f->rsm);
    if (!f->leader || f->closing) {
        uv_timer_stop(&f->timer);
        return;
    }
    f->last_pass_ms = uv_now(f->loop);
    all = calloc(count + 1, sizeof *all);
    if (all == NULL) {
        LOGW(MOD, "pass: out of memory; retrying");
        kick(f, FIRE_RETRY_MS);
        return;
    }
    n = rsm_fsm_pipelines(fsm, all, count);
    if (n > count) {
        n = count;
    }
    f->gen++;
    now = time_wall_ms();
    for (unsigned i = 0; i < n; i++) {
        const struct rsm_pipeline *p = all[i];
        struct fire_pipe *pp = pipe_get(f, p->spec.name);
        unsigned k = 0;
        int64_t wake = INT64_MAX;

        if (pp == NULL) {
            earliest = now + FIRE_RETRY_MS; /* out of memory: later */
            continue;
        }
        pp->gen = f->gen;
        pipe_refresh(pp, p);
        if (pp->inflight) {
            continue; /* re-planned when the batch is answered */
        }
        if (pp->dirty || pp->wake_ms <= now) {
            pp->dirty = false;
            fire_plan(p, pp->has_expr ? &pp->expr : NULL, now, acts,
                      FIRE_BATCH_MAX, &k, &wake);
            pp->wake_ms = wake;
            if (k > 0) {
                /* p may be invalidated by applies from here on (never
                 * synchronously, but stay safe): copy what we need. */
                char name[RSM_NAME_MAX + 1];
                str_copy(name, sizeof name, p->spec.name);
                propose_actions(f, name, pp, acts, k);
                if (pp->inflight) {
                    continue; /* re-planned when the batch is answered */
                }
                /* Failed at once: its retry time counts below. */
                if (pp->dirty) {
                    pp->wake_ms = now;
                }
            }
        }
        if (pp->wake_ms < earliest) {
            earliest = pp->wake_ms;
        }
    }
    free(all);
    pipes_sweep(f);
    if (earliest == INT64_MAX) {
        uv_timer_stop(&f->timer);
        return;
    }
    uv_update_time(f->loop);
    now = time_wall_ms();
    kick(f, earliest <= now ? 0 : (uint64_t)(earliest - now));
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
    struct fire_pipe *pp;

    UNUSED(res);
    if (f->closing || !f->leader) {
        return;
    }
    switch (cmd->type) {
        case RSM_CMD_PIPELINE_CREATE:
            name = cmd->u.pipeline_create.name;
            break;
        case RSM_CMD_PIPELINE_UPDATE:
            name = cmd->u.pipeline_update.spec.name;
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
    pp = map_get_str(&f->pipes, name);
    if (pp != NULL) {
        pp->dirty = true;
    }
    /* A new pipeline is picked up by the pass itself (version differs).
     * A pass walks every pipeline, so passes caused by applies are spaced
     * FIRE_COALESCE_MS apart (a burst of pipeline writes would otherwise
     * cost O(pipelines) per loop iteration); the timer of a due tick is
     * never pushed back. */
    {
        uint64_t now = uv_now(f->loop);
        uint64_t delay = f->last_pass_ms + FIRE_COALESCE_MS > now
                             ? f->last_pass_ms + FIRE_COALESCE_MS - now
                             : 0;
        if (uv_is_active((uv_handle_t *)&f->timer) &&
            uv_timer_get_due_in(&f->timer) <= delay) {
            return;
        }
        kick(f, delay);
    }
}

void fire_on_role(struct fire *f)
{
    bool leader;
    struct map_iter it;
    void *value;

    if (f->closing) {
        return;
    }
    leader = rsm_is_leader(f->rsm);
    if (leader && !f->leader) {
        /* New leadership: the cursors may have moved under another
         * leader, so plan everything afresh. */
        map_iter_init(&it, &f->pipes);
        while (map_iter_next(&it, NULL, NULL, &value)) {
            ((struct fire_pipe *)value)->dirty = true;
        }
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
    uv_close((uv_handle_t *)&f->timer, fire_timer_closed_cb);
}
