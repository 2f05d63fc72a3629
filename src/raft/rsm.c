/* The replicated core's runtime: libraft 0.15 lifecycle over raft_uv,
 * role polling, batched proposals, forwarding to the leader, barriers and
 * the crash-stop policy. See docs/raft.md. */
#include "raft/rsm.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "raft/rsm_int.h"

#define MOD "rsm"

/* Backoff between two forward attempts while no leader answers. */
#define RETRY_MS 25
/* Period of the voter-management reconcile timer. */
#define MEMBERS_PERIOD_MS 500

/* One queued proposal, waiting for the next flush. */
struct prop
{
    struct rsm_cmd cmd; /* owned */
    rsm_propose_cb cb;
    void *data;
    struct prop *next;
};

/* Who waits for one command of a local group. */
struct waiter
{
    rsm_propose_cb cb;
    void *data;
};

enum group_kind {
    GROUP_LOCAL = 0, /* proposals of this node (rsm_propose) */
    GROUP_REMOTE,    /* leader side of a forwarded batch */
    GROUP_BARRIER,   /* rsm_barrier of this node */
    GROUP_RBARRIER   /* leader side of a forwarded barrier (empty batch) */
};

enum group_state {
    GS_NEW = 0,
    GS_APPLYING,    /* raft_apply / raft_barrier in flight on the leader */
    GS_FWD_PENDING, /* waiting for a leader / backoff before (re)forward */
    GS_FWD_INFLIGHT,
    GS_WAITING /* result known, waiting for local last_applied */
};

/* A batch of commands that travels as one raft entry or one forward. */
struct group
{
    struct rsm *r; /* NULL once detached by rsm_close */
    enum group_kind kind;
    enum group_state state;
    struct rsm_cmd *cmds; /* owned, n entries */
    unsigned n;
    struct waiter *who; /* owned, n entries (LOCAL) */
    rsm_barrier_cb bcb; /* BARRIER */
    void *bdata;
    rsm_forward_done done; /* REMOTE, RBARRIER */
    void *req;
    void *fwd_buf; /* raft_malloc'd encoded batch for forwarding */
    size_t fwd_len;
    struct raft_apply apply;
    struct raft_barrier barrier;
    struct rsm_result *results; /* owned, n entries (or 1 for barriers) */
    uint64_t deadline;          /* monotonic ms: forwarding gives up */
    uint64_t retry_at;
    uint64_t wait_index;
    struct group *prev, *next;
};

/* The barrier a new leader commits before serving (RISKS row 4). */
struct leader_barrier
{
    struct raft_barrier req;
    struct rsm *r;
    raft_term term;
};

struct rsm
{
    uv_loop_t *loop; /* borrowed */
    struct rsm_config cfg;
    char addr[ADDR_STRLEN];
    struct rsm_fsm *core; /* owned */
    struct rsm__adapter adapter;
    struct raft_uv_transport transport;
    struct raft_io io;
    struct raft raft;
    bool raft_inited, raft_started, disk_state;

    uv_check_t check;
    uv_prepare_t prepare;
    uv_timer_t retry_timer;
    uv_timer_t members_timer;
    unsigned handles_open;

    /* Role tracking (polled). */
    int last_state;
    uint64_t last_leader;
    bool last_ready;
    bool was_leader;
    raft_term leader_term;
    bool ready;             /* leader and its barrier applied */
    bool need_lbarrier;     /* issue the leader barrier on next check */
    bool lbarrier_inflight; /* one at a time */

    /* Proposals. */
    struct prop *q_head, *q_tail;
    unsigned q_len;
    struct group groups; /* sentinel of a circular list */
    unsigned inflight;   /* raft_apply / raft_barrier in flight */
    int64_t last_stamp;
    uint64_t boot_ms;
    uint64_t idem_counter;

    struct rsm__members members;

    bool closing, raft_closed;
    rsm_close_cb close_cb;
    void *close_data;
};

/* ---------------------------------------------------------------------- */
/* FSM adapter (shared with tests/lib/cluster.c)                          */
/* ---------------------------------------------------------------------- */

static int adapter_apply(struct raft_fsm *fsm,
                         const struct raft_buffer *buf,
                         void **result)
{
    struct rsm__adapter *a = fsm->data;
    uint64_t index = a->raft->last_applied + 1;
    unsigned n = 0;
    unsigned i;
    int rv;

    rv = rsm_fsm_apply(a->core, index, buf->base, buf->len, a->results,
                       RSM__MAX_BATCH, &n);
    if (rv != 0) {
        /* libraft retries the same entry forever: the node stops applying
         * (the FSM contract: a newer format or no memory). */
        if (!a->stuck) {
            LOGE(MOD,
                 "apply of entry %" PRIu64
                 " refused: %s; this node "
                 "stops applying",
                 index, err_str(rv));
            a->stuck = true;
        }
        return rv == ERR_NOMEM ? RAFT_NOMEM : RAFT_INVALID;
    }
    a->stuck = false;
    for (i = 0; i < n; i++) {
        a->results[i].index = index;
    }
    a->n_results = n;
    a->index = index;
    if (a->after_apply != NULL) {
        a->after_apply(a, buf->base, buf->len);
    }
    *result = a;
    return 0;
}

static int adapter_snapshot(struct raft_fsm *fsm,
                            struct raft_buffer *bufs[],
                            unsigned *n_bufs)
{
    struct rsm__adapter *a = fsm->data;
    void *data = NULL;
    size_t len = 0;
    struct raft_buffer *b;
    int rv;

    rv = rsm_fsm_snapshot(a->core, &data, &len);
    if (rv != 0) {
        LOGW(MOD, "snapshot: %s", err_str(rv));
        return RAFT_NOMEM;
    }
    b = raft_malloc(sizeof *b);
    if (b == NULL) {
        free(data);
        return RAFT_NOMEM;
    }
    /* raft frees with raft_free: copy out of the malloc'd buffer. */
    b->len = len;
    b->base = raft_malloc(len > 0 ? len : 1);
    if (b->base == NULL) {
        raft_free(b);
        free(data);
        return RAFT_NOMEM;
    }
    if (len > 0) {
        memcpy(b->base, data, len);
    }
    free(data);
    *bufs = b;
    *n_bufs = 1;
    return 0;
}

static int adapter_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct rsm__adapter *a = fsm->data;
    char errmsg[ERRMSG_SIZE] = "";
    int rv;

    rv = rsm_fsm_restore(a->core, buf->base, buf->len, errmsg);
    if (rv != 0) {
        LOGE(MOD, "snapshot restore failed: %s", errmsg);
        return RAFT_CORRUPT; /* raft keeps the buffer */
    }
    raft_free(buf->base); /* ours on success (STACK pitfall 5) */
    return 0;
}

void rsm__adapter_init(struct rsm__adapter *a, struct rsm_fsm *core)
{
    memset(a, 0, sizeof *a);
    a->core = core;
    a->fsm.version = 1;
    a->fsm.data = a;
    a->fsm.apply = adapter_apply;
    a->fsm.snapshot = adapter_snapshot;
    a->fsm.restore = adapter_restore;
}

/* ---------------------------------------------------------------------- */
/* Small helpers                                                          */
/* ---------------------------------------------------------------------- */

const char *rsm_role_name(enum rsm_role role)
{
    switch (role) {
        case RSM_ROLE_VOTER:
            return "voter";
        case RSM_ROLE_STANDBY:
            return "standby";
        case RSM_ROLE_SPARE:
            return "spare";
        case RSM_ROLE_NONE:
        default:
            return "none";
    }
}

void rsm_config_defaults(struct rsm_config *c)
{
    memset(c, 0, sizeof *c);
    c->election_ms = 1000;
    c->heartbeat_ms = 100;
    c->segment_kib = 8192;
    c->snapshot_threshold = 1024;
    c->snapshot_trailing = 2048;
    c->forward_timeout_ms = 5000;
}

/* Crash-stop (RISKS row 2): the one place kiln aborts outside main.c. A
 * raft request failing with anything but NOTLEADER/LEADERSHIPLOST/SHUTDOWN
 * (typically RAFT_IOERR after a failed disk write) leaves 0.15 in a state
 * where later callbacks may carry other entries' results; stop the process
 * and let the supervisor restart it from disk. */
static void crash_stop(const char *what, int status)
{
    LOGE(MOD, "%s failed with %s (%d): crash-stop", what, raft_strerror(status),
         status);
    abort();
}

static bool retryable_raft(int status)
{
    return status == RAFT_LEADERSHIPLOST || status == RAFT_NOTLEADER;
}

static bool is_leader_now(const struct rsm *r)
{
    return r->raft_started && !r->closing &&
           raft_state((struct raft *)&r->raft) == RAFT_LEADER;
}

static uint64_t leader_of(const struct rsm *r)
{
    raft_id id = 0;
    const char *addr = NULL;
    if (!r->raft_started) {
        return 0;
    }
    raft_leader((struct raft *)&r->raft, &id, &addr);
    return id;
}

static int64_t stamp_now(struct rsm *r)
{
    int64_t t = time_wall_ms();
    int64_t clock = rsm_fsm_clock(r->core);
    if (t < clock) {
        t = clock;
    }
    if (t < r->last_stamp) {
        t = r->last_stamp;
    }
    r->last_stamp = t;
    return t;
}

static void list_insert(struct rsm *r, struct group *g)
{
    g->next = &r->groups;
    g->prev = r->groups.prev;
    r->groups.prev->next = g;
    r->groups.prev = g;
}

static void list_remove(struct group *g)
{
    if (g->next != NULL) {
        g->prev->next = g->next;
        g->next->prev = g->prev;
    }
    g->next = g->prev = NULL;
}

static void group_free(struct group *g)
{
    list_remove(g);
    if (g->cmds != NULL) {
        rsm_cmds_free(g->cmds, g->n);
    }
    free(g->who);
    free(g->results);
    if (g->fwd_buf != NULL) {
        raft_free(g->fwd_buf);
    }
    free(g);
}

/* Deliver a failure to everyone waiting on g (does not free g). */
static void group_fail_waiters(struct group *g, int rv)
{
    unsigned i;
    switch (g->kind) {
        case GROUP_LOCAL:
            for (i = 0; i < g->n; i++) {
                if (g->who[i].cb != NULL) {
                    g->who[i].cb(g->who[i].data, rv, NULL);
                    g->who[i].cb = NULL;
                }
            }
            break;
        case GROUP_BARRIER:
            if (g->bcb != NULL) {
                g->bcb(g->bdata, rv);
                g->bcb = NULL;
            }
            break;
        case GROUP_REMOTE:
        case GROUP_RBARRIER:
            if (g->done != NULL) {
                g->done(g->req, rv, NULL, 0);
                g->done = NULL;
            }
            break;
    }
}

static void group_fail(struct group *g, int rv)
{
    group_fail_waiters(g, rv);
    group_free(g);
}

/* Everything applied locally: answer and free. */
static void group_complete(struct group *g)
{
    unsigned i;
    switch (g->kind) {
        case GROUP_LOCAL:
            for (i = 0; i < g->n; i++) {
                if (g->who[i].cb != NULL) {
                    g->who[i].cb(g->who[i].data, 0, &g->results[i]);
                    g->who[i].cb = NULL;
                }
            }
            break;
        case GROUP_BARRIER:
            if (g->bcb != NULL) {
                g->bcb(g->bdata, 0);
                g->bcb = NULL;
            }
            break;
        case GROUP_REMOTE:
            if (g->done != NULL) {
                g->done(g->req, 0, g->results, g->n);
                g->done = NULL;
            }
            break;
        case GROUP_RBARRIER:
            if (g->done != NULL) {
                g->done(g->req, 0, g->results, 1);
                g->done = NULL;
            }
            break;
    }
    group_free(g);
}

static void retry_timer_cb(uv_timer_t *h);

static void schedule_retry(struct group *g, bool reset_deadline)
{
    struct rsm *r = g->r;
    uint64_t now = time_mono_ms();
    g->state = GS_FWD_PENDING;
    g->retry_at = now + RETRY_MS;
    if (reset_deadline) {
        g->deadline = now + r->cfg.forward_timeout_ms;
    }
    if (!uv_is_active((uv_handle_t *)&r->retry_timer)) {
        uv_timer_start(&r->retry_timer, retry_timer_cb, RETRY_MS, RETRY_MS);
    }
}

/* ---------------------------------------------------------------------- */
/* Leader path                                                            */
/* ---------------------------------------------------------------------- */

static void copy_results(struct group *g, const struct rsm__adapter *a)
{
    unsigned i;
    for (i = 0; i < g->n; i++) {
        if (a != NULL && i < a->n_results) {
            g->results[i] = a->results[i];
        } else {
            memset(&g->results[i], 0, sizeof g->results[i]);
            g->results[i].code = ERR_MALFORMED;
            snprintf(g->results[i].message, sizeof g->results[i].message,
                     "no result for command %u", i);
            g->results[i].index = g->apply.index;
        }
    }
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    struct group *g = req->data;
    struct rsm *r = g->r;

    r->inflight--;
    if (status == 0) {
        copy_results(g, result);
        group_complete(g);
        return;
    }
    if (r->closing || status == RAFT_SHUTDOWN) {
        group_fail(g, ERR_SHUTDOWN);
        return;
    }
    if (retryable_raft(status)) {
        /* Outcome unknown: the entry may still commit. Every command
         * carries an idempotency key, so a retry through the new leader
         * applies at most once. */
        if (g->kind == GROUP_LOCAL) {
            LOGI(MOD,
                 "leadership lost during apply of %u commands: "
                 "retrying through the new leader",
                 g->n);
            schedule_retry(g, true);
        } else {
            group_fail(g, ERR_NOTLEADER);
        }
        return;
    }
    crash_stop("raft_apply", status);
}

static void barrier_cb(struct raft_barrier *req, int status)
{
    struct group *g = req->data;
    struct rsm *r = g->r;

    r->inflight--;
    if (status == 0) {
        g->results[0].index = req->index;
        group_complete(g);
        return;
    }
    if (r->closing || status == RAFT_SHUTDOWN) {
        group_fail(g, ERR_SHUTDOWN);
        return;
    }
    if (retryable_raft(status)) {
        if (g->kind == GROUP_BARRIER) {
            schedule_retry(g, true);
        } else {
            group_fail(g, ERR_NOTLEADER);
        }
        return;
    }
    crash_stop("raft_barrier", status);
}

/* Append g on this (ready) leader. Returns 0, or ERR_NOTLEADER when raft
 * refused synchronously (e.g. a transfer is running), or another ERR_*. */
static int group_apply(struct group *g)
{
    struct rsm *r = g->r;
    struct raft_buffer buf;
    int rv;

    if (g->kind == GROUP_BARRIER || g->kind == GROUP_RBARRIER) {
        g->barrier.data = g;
        rv = raft_barrier(&r->raft, &g->barrier, barrier_cb);
    } else {
        buf.base = NULL;
        buf.len = 0;
        rv = rsm_entry_encode(g->cmds, g->n, stamp_now(r), &buf.base, &buf.len);
        if (rv != 0) {
            return rv;
        }
        if (buf.len > RSM__MAX_ENTRY) {
            raft_free(buf.base);
            return ERR_TOOBIG;
        }
        g->apply.data = g;
        rv = raft_apply(&r->raft, &g->apply, &buf, 1, apply_cb);
        if (rv != 0) {
            raft_free(buf.base); /* still ours on error */
        }
    }
    if (rv == RAFT_NOTLEADER || rv == RAFT_LEADERSHIPLOST) {
        return ERR_NOTLEADER;
    }
    if (rv == RAFT_NOMEM) {
        return ERR_NOMEM;
    }
    if (rv != 0) {
        LOGW(MOD, "raft request refused: %s", raft_strerror(rv));
        return ERR_IO;
    }
    g->state = GS_APPLYING;
    r->inflight++;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Follower path                                                          */
/* ---------------------------------------------------------------------- */

static void forward_done_cb(void *req,
                            int rv,
                            const struct rsm_result *results,
                            unsigned n)
{
    struct group *g = req;
    struct rsm *r = g->r;
    uint64_t max_index = 0;
    unsigned want;
    unsigned i;

    if (r == NULL) { /* detached by rsm_close */
        group_free(g);
        return;
    }
    if (g->state != GS_FWD_INFLIGHT) {
        LOGW(MOD, "forward answered twice: ignored");
        return;
    }
    if (rv == ERR_NOTLEADER || rv == ERR_UNAVAILABLE || rv == ERR_SHUTDOWN ||
        rv == ERR_IO || rv == ERR_TIMEOUT || rv == ERR_BUSY) {
        schedule_retry(g, false);
        return;
    }
    if (rv != 0) {
        group_fail(g, rv);
        return;
    }
    want = g->kind == GROUP_BARRIER ? 1 : g->n;
    if (n != want || results == NULL) {
        LOGW(MOD, "forward: leader answered %u results for %u", n, want);
        group_fail(g, ERR_MALFORMED);
        return;
    }
    for (i = 0; i < n; i++) {
        g->results[i] = results[i];
        if (results[i].index > max_index) {
            max_index = results[i].index;
        }
    }
    g->wait_index = max_index;
    g->state = GS_WAITING; /* completed from the check handle */
    /* A node cut off after the leader answered never catches up: give up
     * (outcome known to the leader, unknown here; retry is idempotent). */
    g->deadline = time_mono_ms() + r->cfg.forward_timeout_ms;
}

static void group_forward(struct group *g)
{
    struct rsm *r = g->r;
    uint64_t leader = leader_of(r);
    int rv;

    if (leader == 0 || leader == r->cfg.id || r->cfg.forward == NULL) {
        schedule_retry(g, false); /* no leader yet, or we are it */
        return;
    }
    if (g->fwd_buf == NULL) {
        rv = rsm_entry_encode(g->cmds, g->n, 0, &g->fwd_buf, &g->fwd_len);
        if (rv != 0) {
            g->fwd_buf = NULL;
            group_fail(g, rv);
            return;
        }
    }
    g->state = GS_FWD_INFLIGHT;
    rv = r->cfg.forward(r, leader, g->fwd_buf, g->fwd_len, forward_done_cb, g,
                        r->cfg.ud);
    if (rv != 0) {
        /* done is not called when the hook fails to start. */
        schedule_retry(g, false);
    }
}

/* Send g on its way: apply on a ready leader, forward otherwise. */
static void group_start(struct group *g)
{
    struct rsm *r = g->r;
    int rv;

    if (r->closing) {
        group_fail(g, ERR_SHUTDOWN);
        return;
    }
    if (rsm_is_leader(r)) {
        if (r->inflight >= RSM__MAX_INFLIGHT) {
            schedule_retry(g, false);
            return;
        }
        rv = group_apply(g);
        if (rv == 0) {
            return;
        }
        if (rv != ERR_NOTLEADER) {
            group_fail(g, rv);
            return;
        }
        schedule_retry(g, false);
        return;
    }
    if (g->kind == GROUP_REMOTE || g->kind == GROUP_RBARRIER) {
        group_fail(g, ERR_NOTLEADER);
        return;
    }
    if (is_leader_now(r)) {
        schedule_retry(g, false); /* leader barrier still pending */
        return;
    }
    group_forward(g);
}

static struct group *group_new(struct rsm *r, enum group_kind kind, unsigned n)
{
    struct group *g = calloc(1, sizeof *g);
    unsigned nres = n > 0 ? n : 1;
    if (g == NULL) {
        return NULL;
    }
    g->r = r;
    g->kind = kind;
    g->n = n;
    g->results = calloc(nres, sizeof *g->results);
    if (g->results == NULL) {
        free(g);
        return NULL;
    }
    if (kind == GROUP_LOCAL) {
        g->who = calloc(nres, sizeof *g->who);
        if (g->who == NULL) {
            free(g->results);
            free(g);
            return NULL;
        }
    }
    g->deadline = time_mono_ms() + r->cfg.forward_timeout_ms;
    list_insert(r, g);
    return g;
}

/* Move up to RSM__MAX_BATCH queued proposals into one group. */
static struct group *take_batch(struct rsm *r)
{
    unsigned n = r->q_len < RSM__MAX_BATCH ? r->q_len : RSM__MAX_BATCH;
    struct group *g;
    unsigned i;

    g = group_new(r, GROUP_LOCAL, n);
    if (g == NULL) {
        return NULL;
    }
    g->cmds = calloc(n, sizeof *g->cmds);
    if (g->cmds == NULL) {
        group_free(g);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        struct prop *p = r->q_head;
        r->q_head = p->next;
        r->q_len--;
        g->cmds[i] = p->cmd; /* moves the owned pointers */
        g->who[i].cb = p->cb;
        g->who[i].data = p->data;
        free(p);
    }
    if (r->q_head == NULL) {
        r->q_tail = NULL;
    }
    return g;
}

static void fail_queue(struct rsm *r, int rv)
{
    while (r->q_head != NULL) {
        struct prop *p = r->q_head;
        r->q_head = p->next;
        rsm_cmd_clear(&p->cmd);
        if (p->cb != NULL) {
            p->cb(p->data, rv, NULL);
        }
        free(p);
    }
    r->q_tail = NULL;
    r->q_len = 0;
}

/* Move the second half of g's commands into a new group. */
static struct group *group_split(struct group *g)
{
    unsigned keep = g->n / 2;
    unsigned move = g->n - keep;
    struct group *g2 = group_new(g->r, GROUP_LOCAL, move);
    if (g2 == NULL) {
        return NULL;
    }
    g2->cmds = calloc(move, sizeof *g2->cmds);
    if (g2->cmds == NULL) {
        group_free(g2);
        return NULL;
    }
    memcpy(g2->cmds, g->cmds + keep, move * sizeof *g2->cmds);
    memcpy(g2->who, g->who + keep, move * sizeof *g2->who);
    g2->deadline = g->deadline;
    g->n = keep; /* the moved commands now belong to g2 */
    return g2;
}

/* Keep every entry (and forward) under RSM__MAX_ENTRY (RISKS row 9):
 * encode once (this is also the forwarding buffer), halve while too big;
 * a single command that is too big fails with ERR_TOOBIG. The margin
 * covers the leader's time stamp, re-encoded per command. */
static void start_sized(struct group *g)
{
    size_t limit = RSM__MAX_ENTRY - 16 * RSM__MAX_BATCH;
    struct group *g2;
    int rv;

    rv = rsm_entry_encode(g->cmds, g->n, 0, &g->fwd_buf, &g->fwd_len);
    if (rv != 0) {
        g->fwd_buf = NULL;
        group_fail(g, rv);
        return;
    }
    if (g->fwd_len <= limit) {
        group_start(g);
        return;
    }
    raft_free(g->fwd_buf);
    g->fwd_buf = NULL;
    if (g->n == 1) {
        group_fail(g, ERR_TOOBIG);
        return;
    }
    g2 = group_split(g);
    if (g2 == NULL) {
        group_fail(g, ERR_NOMEM);
        return;
    }
    start_sized(g);
    start_sized(g2);
}

/* uv_prepare: once per loop iteration, flush the queue. */
static void prepare_cb(uv_prepare_t *h)
{
    struct rsm *r = h->data;
    while (r->q_len > 0 && !r->closing) {
        struct group *g = take_batch(r);
        if (g == NULL) {
            LOGE(MOD, "out of memory batching proposals");
            fail_queue(r, ERR_NOMEM);
            return;
        }
        start_sized(g);
    }
}

/* ---------------------------------------------------------------------- */
/* Role polling                                                           */
/* ---------------------------------------------------------------------- */

static void lbarrier_cb(struct raft_barrier *req, int status)
{
    struct leader_barrier *lb = req->data;
    struct rsm *r = lb->r;

    r->lbarrier_inflight = false;
    if (status == 0) {
        if (!r->closing && raft_state(&r->raft) == RAFT_LEADER &&
            r->raft.current_term == lb->term) {
            r->ready = true;
            LOGI(MOD, "leader ready (term %" PRIu64 ")", (uint64_t)lb->term);
            rsm__kick_members(r, 0);
        }
    } else if (!(r->closing || status == RAFT_SHUTDOWN ||
                 retryable_raft(status))) {
        crash_stop("leader barrier", status);
    }
    free(lb);
}

static void issue_lbarrier(struct rsm *r)
{
    struct leader_barrier *lb;
    int rv;

    if (r->lbarrier_inflight) {
        return;
    }
    lb = calloc(1, sizeof *lb);
    if (lb == NULL) {
        return; /* retried on the next check */
    }
    lb->r = r;
    lb->term = r->raft.current_term;
    lb->req.data = lb;
    rv = raft_barrier(&r->raft, &lb->req, lbarrier_cb);
    if (rv != 0) {
        free(lb);
        return; /* e.g. NOTLEADER during a transfer: retry next check */
    }
    r->lbarrier_inflight = true;
    r->need_lbarrier = false;
}

static void poll_role(struct rsm *r)
{
    int state = raft_state(&r->raft);
    uint64_t leader = leader_of(r);

    if (state == RAFT_LEADER) {
        if (!r->was_leader || r->leader_term != r->raft.current_term) {
            r->was_leader = true;
            r->leader_term = r->raft.current_term;
            r->ready = false;
            r->need_lbarrier = true;
        }
        if (r->need_lbarrier && !r->ready) {
            issue_lbarrier(r);
        }
    } else {
        r->was_leader = false;
        r->ready = false;
        r->need_lbarrier = false;
    }
    if (state != r->last_state || leader != r->last_leader ||
        r->ready != r->last_ready) {
        LOGD(MOD, "role: state=%d leader=%" PRIu64 " ready=%d", state, leader,
             (int)r->ready);
        r->last_state = state;
        r->last_leader = leader;
        r->last_ready = r->ready;
        if (r->cfg.on_role != NULL) {
            r->cfg.on_role(r, r->cfg.ud);
        }
    }
}

/* Waiters, forward retries and deadlines. */
static void service_groups(struct rsm *r)
{
    uint64_t now = time_mono_ms();
    uint64_t applied = rsm_last_applied(r);
    bool pending = false;
    struct group *g = r->groups.next;

    while (g != &r->groups && !r->closing) {
        struct group *next = g->next;
        switch (g->state) {
            case GS_WAITING:
                if (applied >= g->wait_index) {
                    group_complete(g);
                } else if (now >= g->deadline) {
                    LOGW(MOD,
                         "index %" PRIu64
                         " not applied locally within "
                         "%u ms",
                         g->wait_index, r->cfg.forward_timeout_ms);
                    group_fail(g, ERR_UNAVAILABLE);
                }
                break;
            case GS_FWD_PENDING:
                if (now >= g->deadline) {
                    LOGW(MOD, "no leader answered within %u ms",
                         r->cfg.forward_timeout_ms);
                    group_fail(g, ERR_UNAVAILABLE);
                } else if (now >= g->retry_at) {
                    group_start(g);
                    pending = pending || g->state == GS_FWD_PENDING;
                } else {
                    pending = true;
                }
                break;
            default:
                break;
        }
        /* group_start may have freed g or queued new groups at the tail:
         * continue from the saved successor. */
        g = next;
    }
    if (!pending) {
        /* Re-check: a group may have been rescheduled by a callback. */
        for (g = r->groups.next; g != &r->groups; g = g->next) {
            if (g->state == GS_FWD_PENDING) {
                pending = true;
                break;
            }
        }
    }
    if (!pending && uv_is_active((uv_handle_t *)&r->retry_timer)) {
        uv_timer_stop(&r->retry_timer);
    }
}

static void check_cb(uv_check_t *h)
{
    struct rsm *r = h->data;
    if (r->closing) {
        return;
    }
    if (r->raft_started) {
        poll_role(r);
    }
    service_groups(r);
}

static void retry_timer_cb(uv_timer_t *h)
{
    UNUSED(h); /* only wakes the loop; the check handle does the work */
}

static void members_timer_cb(uv_timer_t *h)
{
    struct rsm *r = h->data;
    if (r->raft_started && !r->closing) {
        rsm__members_reconcile(r);
    }
}

/* ---------------------------------------------------------------------- */
/* Adapter observer                                                        */
/* ---------------------------------------------------------------------- */

static void after_apply(struct rsm__adapter *a, const void *buf, size_t len)
{
    struct rsm *r = a->owner;
    struct rsm_cmd *cmds = NULL;
    unsigned n = 0;
    unsigned i;
    char errmsg[ERRMSG_SIZE];

    if (r->cfg.on_applied == NULL) {
        return;
    }
    if (rsm_entry_decode(buf, len, &cmds, &n, errmsg) != 0) {
        return; /* applied as a rejection; nothing to observe */
    }
    for (i = 0; i < n && i < a->n_results; i++) {
        r->cfg.on_applied(r, &cmds[i], &a->results[i], r->cfg.ud);
    }
    rsm_cmds_free(cmds, n);
}

/* ---------------------------------------------------------------------- */
/* Lifecycle                                                              */
/* ---------------------------------------------------------------------- */

struct rsm *rsm_create(uv_loop_t *loop,
                       const struct rsm_config *cfg,
                       char *errmsg)
{
    struct rsm *r;
    int rv;

    if (cfg->id == 0 || cfg->dir[0] == '\0' || cfg->raft.port == 0) {
        errmsg_printf(errmsg, "rsm: id, dir and raft address are required");
        return NULL;
    }
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        errmsg_printf(errmsg, "rsm: out of memory");
        return NULL;
    }
    r->loop = loop;
    r->cfg = *cfg;
    if (r->cfg.election_ms == 0) {
        r->cfg.election_ms = 1000;
    }
    if (r->cfg.heartbeat_ms == 0) {
        r->cfg.heartbeat_ms =
            r->cfg.election_ms / 10 ? r->cfg.election_ms / 10 : 1;
    }
    if (r->cfg.segment_kib == 0) {
        r->cfg.segment_kib = 8192;
    }
    if (r->cfg.snapshot_threshold == 0) {
        r->cfg.snapshot_threshold = 1024;
    }
    /* RISKS row 11: trailing >= threshold. */
    if (r->cfg.snapshot_trailing < r->cfg.snapshot_threshold) {
        r->cfg.snapshot_trailing = r->cfg.snapshot_threshold;
    }
    if (r->cfg.forward_timeout_ms == 0) {
        r->cfg.forward_timeout_ms = 5000;
    }
    addr_format(&r->cfg.raft, r->addr);
    rv = rsm_fsm_create(&r->core);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: fsm: %s", err_str(rv));
        free(r);
        return NULL;
    }
    rsm__adapter_init(&r->adapter, r->core);
    r->adapter.raft = &r->raft;
    r->adapter.owner = r;
    r->adapter.after_apply = after_apply;
    r->groups.next = r->groups.prev = &r->groups;
    r->last_state = -1;
    r->boot_ms = (uint64_t)time_wall_ms();
    rsm__members_init(&r->members);

    uv_check_init(loop, &r->check);
    uv_prepare_init(loop, &r->prepare);
    uv_timer_init(loop, &r->retry_timer);
    uv_timer_init(loop, &r->members_timer);
    r->check.data = r;
    r->prepare.data = r;
    r->retry_timer.data = r;
    r->members_timer.data = r;
    r->handles_open = 4;
    return r;
}

/* Does the data dir hold persisted raft state? raft_uv keeps its term and
 * vote in "metadata1"/"metadata2" (little-endian u64 format, version, term,
 * voted_for). A dir where neither holds a term > 0 was never bootstrapped
 * nor contacted by a leader. */
static bool probe_disk_state(const char *dir)
{
    static const char *names[] = {"metadata1", "metadata2"};
    unsigned i;
    for (i = 0; i < ARRAY_SIZE(names); i++) {
        char path[PATH_MAX + 16];
        unsigned char b[32];
        uint64_t term = 0;
        ssize_t got;
        int fd;
        int k;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        got = read(fd, b, sizeof b);
        close(fd);
        if (got != (ssize_t)sizeof b) {
            continue;
        }
        for (k = 7; k >= 0; k--) {
            term = (term << 8) | b[16 + k];
        }
        if (term > 0) {
            return true;
        }
    }
    return false;
}

static int start_raft(struct rsm *r, char *errmsg)
{
    int rv = raft_start(&r->raft);
    if (rv != 0) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "rsm: raft_start: %s", raft_errmsg(&r->raft));
        }
        LOGE(MOD, "raft_start: %s", raft_errmsg(&r->raft));
        return ERR_IO;
    }
    r->raft_started = true;
    uv_timer_start(&r->members_timer, members_timer_cb, MEMBERS_PERIOD_MS,
                   MEMBERS_PERIOD_MS);
    return 0;
}

int rsm_start(struct rsm *r, char *errmsg)
{
    int rv;

    if (r->raft_inited || r->closing) {
        errmsg_printf(errmsg, "rsm: already started");
        return ERR_INVALID;
    }
    if (fs_mkdir_p(r->cfg.dir) != 0) {
        errmsg_printf(errmsg, "rsm: mkdir %s: %s", r->cfg.dir, strerror(errno));
        return ERR_IO;
    }
    rv = raft_uv_tcp_init(&r->transport, r->loop);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: raft_uv_tcp_init: %s", raft_strerror(rv));
        return ERR_IO;
    }
    rv = raft_uv_tcp_set_bind_address(&r->transport, r->addr);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: bind address %s: %s", r->addr,
                      raft_strerror(rv));
        goto err_after_transport;
    }
    rv = raft_uv_init(&r->io, r->loop, r->cfg.dir, &r->transport);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: raft_uv_init %s: %s", r->cfg.dir,
                      r->io.errmsg);
        goto err_after_transport;
    }
    raft_uv_set_segment_size(&r->io, (size_t)r->cfg.segment_kib * 1024);
    /* The FSM snapshot is already an LZ4 frame (rsm_fsm_snapshot). */
    raft_uv_set_snapshot_compression(&r->io, false);
    rv = raft_init(&r->raft, &r->io, &r->adapter.fsm, r->cfg.id, r->addr);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: raft_init: %s", raft_errmsg(&r->raft));
        goto err_after_io;
    }
    r->raft.data = r;
    r->raft_inited = true;
    raft_set_election_timeout(&r->raft, r->cfg.election_ms);
    raft_set_heartbeat_timeout(&r->raft, r->cfg.heartbeat_ms);
    raft_set_pre_vote(&r->raft, true);
    raft_set_snapshot_threshold(&r->raft, r->cfg.snapshot_threshold);
    raft_set_snapshot_trailing(&r->raft, r->cfg.snapshot_trailing);

    uv_check_start(&r->check, check_cb);
    uv_prepare_start(&r->prepare, prepare_cb);

    /* Bootstrap rule: raft_bootstrap must run before raft_start in 0.15.
     * A dir with state starts at once; an empty one waits for
     * rsm_bootstrap (new cluster) or rsm_join (added by a leader). */
    r->disk_state = probe_disk_state(r->cfg.dir);
    if (r->disk_state) {
        rv = start_raft(r, errmsg);
        if (rv != 0) {
            return rv; /* the caller still rsm_close()s */
        }
    }
    return 0;

err_after_io:
    raft_uv_close(&r->io);
err_after_transport:
    raft_uv_tcp_close(&r->transport);
    return ERR_IO;
}

bool rsm_has_state(const struct rsm *r)
{
    if (r->disk_state) {
        return true;
    }
    return r->raft_started && r->raft.configuration.n > 0;
}

int rsm_bootstrap(struct rsm *r, const struct rsm_server *servers, unsigned n)
{
    struct raft_configuration conf;
    unsigned i;
    int rv;

    if (r->closing) {
        return ERR_SHUTDOWN;
    }
    if (!r->raft_inited) {
        return ERR_INVALID;
    }
    if (rsm_has_state(r)) {
        return 0;
    }
    if (r->raft_started) {
        LOGW(MOD, "bootstrap refused: raft already started (joined)");
        return ERR_BUSY;
    }
    if (n == 0 || servers == NULL) {
        return ERR_INVALID;
    }
    raft_configuration_init(&conf);
    for (i = 0; i < n; i++) {
        rv = raft_configuration_add(&conf, servers[i].id, servers[i].raft,
                                    RAFT_VOTER);
        if (rv != 0) {
            LOGE(MOD, "bootstrap: server %" PRIu64 " %s: %s", servers[i].id,
                 servers[i].raft, raft_strerror(rv));
            raft_configuration_close(&conf);
            return rv == RAFT_NOMEM ? ERR_NOMEM : ERR_INVALID;
        }
    }
    rv = raft_bootstrap(&r->raft, &conf);
    raft_configuration_close(&conf);
    if (rv == RAFT_CANTBOOTSTRAP) {
        LOGI(MOD, "bootstrap: state already present, resuming it");
    } else if (rv != 0) {
        LOGE(MOD, "raft_bootstrap: %s (%s)", raft_strerror(rv),
             raft_errmsg(&r->raft));
        return ERR_IO;
    } else {
        LOGI(MOD, "bootstrapped a cluster of %u voter(s)", n);
    }
    return start_raft(r, NULL);
}

int rsm_join(struct rsm *r)
{
    if (r->closing) {
        return ERR_SHUTDOWN;
    }
    if (!r->raft_inited) {
        return ERR_INVALID;
    }
    if (r->raft_started) {
        return 0;
    }
    return start_raft(r, NULL);
}

/* ---------------------------------------------------------------------- */
/* Proposals                                                              */
/* ---------------------------------------------------------------------- */

int rsm_propose(struct rsm *r,
                struct rsm_cmd *cmd,
                rsm_propose_cb cb,
                void *data)
{
    struct prop *p;

    if (r->closing) {
        rsm_cmd_clear(cmd);
        return ERR_SHUTDOWN;
    }
    p = calloc(1, sizeof *p);
    if (p == NULL) {
        rsm_cmd_clear(cmd);
        return ERR_NOMEM;
    }
    p->cmd = *cmd;
    memset(cmd, 0, sizeof *cmd); /* ownership moved */
    if (p->cmd.idem_key[0] == '\0') {
        /* Forwarding may retry a command whose first attempt committed
         * (LEADERSHIPLOST: outcome unknown). A unique key per proposal
         * (node id, boot time, counter) lets the FSM apply it once. */
        snprintf(p->cmd.idem_key, sizeof p->cmd.idem_key,
                 "~%" PRIx64 ".%" PRIx64 ".%" PRIu64, r->cfg.id, r->boot_ms,
                 ++r->idem_counter);
    }
    p->cb = cb;
    p->data = data;
    if (r->q_tail != NULL) {
        r->q_tail->next = p;
    } else {
        r->q_head = p;
    }
    r->q_tail = p;
    r->q_len++;
    return 0;
}

int rsm_propose_encoded(struct rsm *r,
                        const void *buf,
                        size_t len,
                        rsm_forward_done done,
                        void *req)
{
    char errmsg[ERRMSG_SIZE] = "";
    struct rsm_cmd *cmds = NULL;
    unsigned n = 0;
    struct group *g;
    int rv;

    if (r->closing) {
        return ERR_SHUTDOWN;
    }
    if (!rsm_is_leader(r)) {
        return ERR_NOTLEADER;
    }
    if (r->inflight >= RSM__MAX_INFLIGHT) {
        return ERR_BUSY;
    }
    if (len > RSM__MAX_ENTRY) {
        return ERR_TOOBIG;
    }
    rv = rsm_entry_decode(buf, len, &cmds, &n, errmsg);
    if (rv != 0) {
        LOGW(MOD, "forwarded batch rejected: %s", errmsg);
        return rv;
    }
    if (n > RSM__MAX_BATCH) {
        rsm_cmds_free(cmds, n);
        return ERR_TOOBIG;
    }
    g = group_new(r, n == 0 ? GROUP_RBARRIER : GROUP_REMOTE, n);
    if (g == NULL) {
        rsm_cmds_free(cmds, n);
        return ERR_NOMEM;
    }
    g->cmds = cmds;
    g->done = done;
    g->req = req;
    rv = group_apply(g);
    if (rv != 0) {
        g->done = NULL; /* refused synchronously: no callback */
        group_free(g);
        return rv;
    }
    return 0;
}

int rsm_barrier(struct rsm *r, rsm_barrier_cb cb, void *data)
{
    struct group *g;

    if (r->closing) {
        return ERR_SHUTDOWN;
    }
    g = group_new(r, GROUP_BARRIER, 0);
    if (g == NULL) {
        return ERR_NOMEM;
    }
    g->bcb = cb;
    g->bdata = data;
    /* Started from the loop (never inside a raft callback; RISKS 14). */
    g->retry_at = 0;
    g->state = GS_FWD_PENDING;
    if (!uv_is_active((uv_handle_t *)&r->retry_timer)) {
        uv_timer_start(&r->retry_timer, retry_timer_cb, 0, RETRY_MS);
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Accessors                                                              */
/* ---------------------------------------------------------------------- */

bool rsm_is_leader(const struct rsm *r)
{
    /* Same term as the applied barrier: a leader that stepped down and won
     * again before the next poll is not ready yet. */
    return r->ready && is_leader_now(r) &&
           r->raft.current_term == r->leader_term;
}

uint64_t rsm_leader_id(const struct rsm *r)
{
    return leader_of(r);
}

enum rsm_role rsm_role_of(const struct rsm *r, uint64_t id)
{
    unsigned i;
    if (!r->raft_started) {
        return RSM_ROLE_NONE;
    }
    for (i = 0; i < r->raft.configuration.n; i++) {
        const struct raft_server *s = &r->raft.configuration.servers[i];
        if (s->id == id) {
            switch (s->role) {
                case RAFT_VOTER:
                    return RSM_ROLE_VOTER;
                case RAFT_STANDBY:
                    return RSM_ROLE_STANDBY;
                case RAFT_SPARE:
                    return RSM_ROLE_SPARE;
                default:
                    return RSM_ROLE_NONE;
            }
        }
    }
    return RSM_ROLE_NONE;
}

const struct rsm_fsm *rsm_state(const struct rsm *r)
{
    return r->core;
}

uint64_t rsm_last_applied(const struct rsm *r)
{
    if (!r->raft_started) {
        return 0;
    }
    return raft_last_applied((struct raft *)&r->raft);
}

void rsm_member_seen(struct rsm *r,
                     uint64_t id,
                     const char *raft_addr,
                     bool alive)
{
    if (r->closing) {
        return;
    }
    if (rsm__members_seen(&r->members, id, raft_addr, alive, time_mono_ms()) &&
        rsm_is_leader(r)) {
        rsm__kick_members(r, 0);
    }
}

/* Internal accessors for rsm_members.c. */
struct raft *rsm__raft(struct rsm *r)
{
    return &r->raft;
}

struct rsm__members *rsm__members(struct rsm *r)
{
    return &r->members;
}

bool rsm__ready(const struct rsm *r)
{
    return rsm_is_leader(r);
}

uint64_t rsm__self_id(const struct rsm *r)
{
    return r->cfg.id;
}

void rsm__kick_members(struct rsm *r, unsigned delay_ms)
{
    if (r->closing || !r->raft_started) {
        return;
    }
    uv_timer_start(&r->members_timer, members_timer_cb, delay_ms,
                   MEMBERS_PERIOD_MS);
}

/* ---------------------------------------------------------------------- */
/* Close                                                                  */
/* ---------------------------------------------------------------------- */

static void handle_closed_cb(uv_handle_t *h)
{
    struct rsm *r = h->data;
    if (--r->handles_open > 0) {
        return;
    }
    if (r->close_cb != NULL) {
        r->close_cb(r, r->close_data);
    }
    rsm__members_free(&r->members);
    rsm_fsm_destroy(r->core);
    free(r);
}

static void close_handles(struct rsm *r)
{
    uv_close((uv_handle_t *)&r->check, handle_closed_cb);
    uv_close((uv_handle_t *)&r->prepare, handle_closed_cb);
    uv_close((uv_handle_t *)&r->retry_timer, handle_closed_cb);
    uv_close((uv_handle_t *)&r->members_timer, handle_closed_cb);
}

/* Idempotent: 0.15 may run the close callback twice (RISKS row 15). */
static void raft_closed_cb(struct raft *raft)
{
    struct rsm *r = raft->data;
    struct group *g;

    if (r->raft_closed) {
        return;
    }
    r->raft_closed = true;
    /* raft failed every pending request during raft_close; anything left
     * is failed here (defensive: raft will not call it any more). */
    while ((g = r->groups.next) != &r->groups) {
        group_fail(g, ERR_SHUTDOWN);
    }
    raft_uv_close(&r->io);
    raft_uv_tcp_close(&r->transport);
    close_handles(r);
}

void rsm_close(struct rsm *r, rsm_close_cb cb, void *data)
{
    struct group *g;
    struct group *next;

    if (r->closing) {
        return;
    }
    r->closing = true;
    r->ready = false;
    r->close_cb = cb;
    r->close_data = data;
    fail_queue(r, ERR_SHUTDOWN);
    for (g = r->groups.next; g != &r->groups; g = next) {
        next = g->next;
        if (g->state == GS_APPLYING) {
            continue; /* raft_close fails it through its callback */
        }
        if (g->state == GS_FWD_INFLIGHT) {
            /* The hook still holds g: answer the waiters now and free g
             * when the hook's done arrives. */
            group_fail_waiters(g, ERR_SHUTDOWN);
            list_remove(g);
            g->r = NULL;
            continue;
        }
        group_fail(g, ERR_SHUTDOWN);
    }
    uv_check_stop(&r->check);
    uv_prepare_stop(&r->prepare);
    uv_timer_stop(&r->retry_timer);
    uv_timer_stop(&r->members_timer);
    if (r->raft_inited) {
        raft_close(&r->raft, raft_closed_cb);
    } else {
        close_handles(r);
    }
}
