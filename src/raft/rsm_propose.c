/* The proposal path: batching, leader applies, forwarding to the leader,
 * waiting for local apply, barriers. See docs/raft.md. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "raft/rsm_int.h"

#define MOD "rsm"

/* Backoff between two forward attempts while no leader answers. */
#define RETRY_MS 25

static void retry_timer_cb(uv_timer_t *h);

static bool retryable_raft(int status)
{
    return status == RAFT_LEADERSHIPLOST || status == RAFT_NOTLEADER;
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

static void list_insert(struct rsm *r, struct rsm__group *g)
{
    g->next = &r->groups;
    g->prev = r->groups.prev;
    r->groups.prev->next = g;
    r->groups.prev = g;
}

static void list_remove(struct rsm__group *g)
{
    if (g->next != NULL) {
        g->prev->next = g->next;
        g->next->prev = g->prev;
    }
    g->next = g->prev = NULL;
}

static void group_free(struct rsm__group *g)
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
static void group_fail_waiters(struct rsm__group *g, int rv)
{
    unsigned i;
    switch (g->kind) {
        case RSM__GROUP_LOCAL:
            for (i = 0; i < g->n; i++) {
                if (g->who[i].cb != NULL) {
                    g->who[i].cb(g->who[i].data, rv, NULL);
                    g->who[i].cb = NULL;
                }
            }
            break;
        case RSM__GROUP_BARRIER:
            if (g->bcb != NULL) {
                g->bcb(g->bdata, rv);
                g->bcb = NULL;
            }
            break;
        case RSM__GROUP_REMOTE:
        case RSM__GROUP_RBARRIER:
            if (g->done != NULL) {
                g->done(g->req, rv, NULL, 0);
                g->done = NULL;
            }
            break;
    }
}

static void group_fail(struct rsm__group *g, int rv)
{
    group_fail_waiters(g, rv);
    group_free(g);
}

/* Everything applied locally: answer and free. */
static void group_complete(struct rsm__group *g)
{
    unsigned i;
    switch (g->kind) {
        case RSM__GROUP_LOCAL:
            for (i = 0; i < g->n; i++) {
                if (g->who[i].cb != NULL) {
                    g->who[i].cb(g->who[i].data, 0, &g->results[i]);
                    g->who[i].cb = NULL;
                }
            }
            break;
        case RSM__GROUP_BARRIER:
            if (g->bcb != NULL) {
                g->bcb(g->bdata, 0);
                g->bcb = NULL;
            }
            break;
        case RSM__GROUP_REMOTE:
            if (g->done != NULL) {
                g->done(g->req, 0, g->results, g->n);
                g->done = NULL;
            }
            break;
        case RSM__GROUP_RBARRIER:
            if (g->done != NULL) {
                g->done(g->req, 0, g->results, 1);
                g->done = NULL;
            }
            break;
    }
    group_free(g);
}

static void retry_timer_cb(uv_timer_t *h);

static void schedule_retry(struct rsm__group *g, bool reset_deadline)
{
    struct rsm *r = g->r;
    uint64_t now = time_mono_ms();
    g->state = RSM__GS_FWD_PENDING;
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

static void copy_results(struct rsm__group *g, const struct rsm__adapter *a)
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
    struct rsm__group *g = req->data;
    struct rsm *r = g->r;

    r->inflight--;
    if (status == 0) {
        copy_results(g, result);
        if (g->kind == RSM__GROUP_REMOTE && g->apply.index > r->push_index) {
            r->push_index = g->apply.index;
        }
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
        if (g->kind == RSM__GROUP_LOCAL) {
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
    rsm__crash_stop("raft_apply", status);
}

static void barrier_cb(struct raft_barrier *req, int status)
{
    struct rsm__group *g = req->data;
    struct rsm *r = g->r;

    r->inflight--;
    if (status == 0) {
        g->results[0].index = req->index;
        if (g->kind == RSM__GROUP_RBARRIER && req->index > r->push_index) {
            r->push_index = req->index;
        }
        group_complete(g);
        return;
    }
    if (r->closing || status == RAFT_SHUTDOWN) {
        group_fail(g, ERR_SHUTDOWN);
        return;
    }
    if (retryable_raft(status)) {
        if (g->kind == RSM__GROUP_BARRIER && g->bcb != NULL) {
            schedule_retry(g, true);
        } else {
            group_fail(g, ERR_NOTLEADER);
        }
        return;
    }
    rsm__crash_stop("raft_barrier", status);
}

/* Append g on this (ready) leader. Returns 0, or ERR_NOTLEADER when raft
 * refused synchronously (e.g. a transfer is running), or another ERR_*. */
static int group_apply(struct rsm__group *g)
{
    struct rsm *r = g->r;
    struct raft_buffer buf;
    int rv;

    if (g->kind == RSM__GROUP_BARRIER || g->kind == RSM__GROUP_RBARRIER) {
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
    g->state = RSM__GS_APPLYING;
    r->inflight++;
    /* raft_apply/raft_barrier sent the new entry to every follower in
     * pipeline mode, with the current commit index. */
    r->sent_commit = r->raft.commit_index;
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
    struct rsm__group *g = req;
    struct rsm *r = g->r;
    uint64_t max_index = 0;
    unsigned want;
    unsigned i;

    if (r == NULL) { /* detached by rsm_close */
        group_free(g);
        return;
    }
    if (g->state != RSM__GS_FWD_INFLIGHT) {
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
    want = g->kind == RSM__GROUP_BARRIER ? 1 : g->n;
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
    g->state = RSM__GS_WAITING; /* completed from the check handle */
    /* A node cut off after the leader answered never catches up: give up
     * (outcome known to the leader, unknown here; retry is idempotent). */
    g->deadline = time_mono_ms() + r->cfg.forward_timeout_ms;
}

static void group_forward(struct rsm__group *g)
{
    struct rsm *r = g->r;
    uint64_t leader = rsm_leader_id(r);
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
    g->state = RSM__GS_FWD_INFLIGHT;
    rv = r->cfg.forward(r, leader, g->fwd_buf, g->fwd_len, forward_done_cb, g,
                        r->cfg.ud);
    if (rv != 0) {
        /* done is not called when the hook fails to start. */
        schedule_retry(g, false);
    }
}

/* Send g on its way: apply on a ready leader, forward otherwise. */
static void group_start(struct rsm__group *g)
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
    if (g->kind == RSM__GROUP_REMOTE || g->kind == RSM__GROUP_RBARRIER) {
        group_fail(g, ERR_NOTLEADER);
        return;
    }
    if (rsm__is_leader_now(r)) {
        schedule_retry(g, false); /* leader barrier still pending */
        return;
    }
    group_forward(g);
}

static struct rsm__group *group_new(struct rsm *r,
                                    enum rsm__group_kind kind,
                                    unsigned n)
{
    struct rsm__group *g = calloc(1, sizeof *g);
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
    if (kind == RSM__GROUP_LOCAL) {
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
static struct rsm__group *take_batch(struct rsm *r)
{
    unsigned n = r->q_len < RSM__MAX_BATCH ? r->q_len : RSM__MAX_BATCH;
    struct rsm__group *g;
    unsigned i;

    g = group_new(r, RSM__GROUP_LOCAL, n);
    if (g == NULL) {
        return NULL;
    }
    g->cmds = calloc(n, sizeof *g->cmds);
    if (g->cmds == NULL) {
        group_free(g);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        struct rsm__prop *p = r->q_head;
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
        struct rsm__prop *p = r->q_head;
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
static struct rsm__group *group_split(struct rsm__group *g)
{
    unsigned keep = g->n / 2;
    unsigned move = g->n - keep;
    struct rsm__group *g2 = group_new(g->r, RSM__GROUP_LOCAL, move);
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
static void start_sized(struct rsm__group *g)
{
    size_t limit = RSM__MAX_ENTRY - 16 * RSM__MAX_BATCH;
    struct rsm__group *g2;
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

/* libraft 0.15 tells followers the commit index only in its next
 * AppendEntries (a new entry or a heartbeat, up to 2 heartbeat intervals
 * later), and a follower answers a forwarded write only once it applied it
 * (read-your-writes). When an answered forward's index has not been carried
 * to the followers by any entry appended since it committed, append a
 * barrier: its AppendEntries carries the commit index at once. Under load
 * the next batch does this for free; the barrier only fills the gaps. It is
 * an entry like any other (counts against RSM__MAX_INFLIGHT). */
static void push_commit(struct rsm *r)
{
    struct rsm__group *g;

    if (r->push_index <= r->sent_commit || !rsm_is_leader(r) ||
        r->inflight >= RSM__MAX_INFLIGHT || r->raft.configuration.n < 2) {
        return;
    }
    g = group_new(r, RSM__GROUP_BARRIER, 0); /* no waiter: bcb NULL */
    if (g == NULL) {
        return; /* the next entry or heartbeat carries it */
    }
    if (group_apply(g) != 0) {
        group_free(g);
        return;
    }
    r->pushes++;
}

/* uv_prepare: once per loop iteration, flush the queue, then push the
 * commit index to the followers if no new entry did. */
void rsm__prepare_cb(uv_prepare_t *h)
{
    struct rsm *r = h->data;
    while (r->q_len > 0 && !r->closing) {
        struct rsm__group *g = take_batch(r);
        if (g == NULL) {
            LOGE(MOD, "out of memory batching proposals");
            fail_queue(r, ERR_NOMEM);
            return;
        }
        start_sized(g);
    }
    if (!r->closing) {
        push_commit(r);
    }
}

/* Waiters, forward retries and deadlines. */
void rsm__service_groups(struct rsm *r)
{
    uint64_t now = time_mono_ms();
    uint64_t applied = rsm_last_applied(r);
    bool pending = false;
    struct rsm__group *g = r->groups.next;

    while (g != &r->groups && !r->closing) {
        struct rsm__group *next = g->next;
        switch (g->state) {
            case RSM__GS_WAITING:
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
            case RSM__GS_FWD_PENDING:
                if (now >= g->deadline) {
                    LOGW(MOD, "no leader answered within %u ms",
                         r->cfg.forward_timeout_ms);
                    group_fail(g, ERR_UNAVAILABLE);
                } else if (now >= g->retry_at) {
                    group_start(g);
                    pending = pending || g->state == RSM__GS_FWD_PENDING;
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
            if (g->state == RSM__GS_FWD_PENDING) {
                pending = true;
                break;
            }
        }
    }
    if (!pending && uv_is_active((uv_handle_t *)&r->retry_timer)) {
        uv_timer_stop(&r->retry_timer);
    }
}

static void retry_timer_cb(uv_timer_t *h)
{
    UNUSED(h); /* only wakes the loop; the check handle does the work */
}

/* ---------------------------------------------------------------------- */
/* Proposals                                                              */
/* ---------------------------------------------------------------------- */

int rsm_propose(struct rsm *r,
                struct rsm_cmd *cmd,
                rsm_propose_cb cb,
                void *data)
{
    struct rsm__prop *p;

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
    struct rsm__group *g;
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
    g = group_new(r, n == 0 ? RSM__GROUP_RBARRIER : RSM__GROUP_REMOTE, n);
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
    struct rsm__group *g;

    if (r->closing) {
        return ERR_SHUTDOWN;
    }
    g = group_new(r, RSM__GROUP_BARRIER, 0);
    if (g == NULL) {
        return ERR_NOMEM;
    }
    g->bcb = cb;
    g->bdata = data;
    /* Started from the loop (never inside a raft callback; RISKS 14). */
    g->retry_at = 0;
    g->state = RSM__GS_FWD_PENDING;
    if (!uv_is_active((uv_handle_t *)&r->retry_timer)) {
        uv_timer_start(&r->retry_timer, retry_timer_cb, 0, RETRY_MS);
    }
    return 0;
}

/* rsm_close: fail queued proposals and every group that raft does not own
 * (APPLYING groups fail through raft_close's callbacks). A forward still
 * held by the hook answers its waiters now and is freed when the hook's
 * done arrives. */
void rsm__groups_shutdown(struct rsm *r)
{
    struct rsm__group *g;
    struct rsm__group *next;

    fail_queue(r, ERR_SHUTDOWN);
    for (g = r->groups.next; g != &r->groups; g = next) {
        next = g->next;
        if (g->state == RSM__GS_APPLYING) {
            continue;
        }
        if (g->state == RSM__GS_FWD_INFLIGHT) {
            group_fail_waiters(g, ERR_SHUTDOWN);
            list_remove(g);
            g->r = NULL;
            continue;
        }
        group_fail(g, ERR_SHUTDOWN);
    }
}

void rsm__groups_fail_all(struct rsm *r)
{
    struct rsm__group *g;
    while ((g = r->groups.next) != &r->groups) {
        group_fail(g, ERR_SHUTDOWN);
    }
}
