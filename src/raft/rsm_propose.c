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

/* One raft entry carrying the commands of one or more groups, in order
 * (leader only). Owned by raft until carrier_cb. */
struct rsm__carrier
{
    struct raft_apply apply;
    struct rsm *r;
    unsigned n_parts;
    struct rsm__group *parts[]; /* n_parts, APPLYING */
};

/* Results [off, off + g->n) of the entry are g's. */
static void copy_results(struct rsm__group *g,
                         const struct rsm__adapter *a,
                         unsigned off,
                         uint64_t index)
{
    unsigned i;
    for (i = 0; i < g->n; i++) {
        if (a != NULL && off + i < a->n_results) {
            g->results[i] = a->results[off + i];
        } else {
            memset(&g->results[i], 0, sizeof g->results[i]);
            g->results[i].code = ERR_MALFORMED;
            snprintf(g->results[i].message, sizeof g->results[i].message,
                     "no result for command %u", i);
            g->results[i].index = index;
        }
    }
}

/* A part of an entry that did not apply (status != 0). */
static void part_failed(struct rsm__group *g, int status)
{
    struct rsm *r = g->r;

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

static void carrier_cb(struct raft_apply *req, int status, void *result)
{
    struct rsm__carrier *c = req->data;
    struct rsm *r = c->r;
    unsigned off = 0;

    r->inflight--;
    /* Every part's results first: a completion callback must not be able
     * to overwrite the adapter's results before a later part copied its
     * slice. */
    if (status == 0) {
        for (unsigned i = 0; i < c->n_parts; i++) {
            copy_results(c->parts[i], result, off, req->index);
            off += c->parts[i]->n;
        }
    }
    for (unsigned i = 0; i < c->n_parts; i++) {
        struct rsm__group *g = c->parts[i];
        if (status != 0) {
            part_failed(g, status);
            continue;
        }
        if (g->kind == RSM__GROUP_REMOTE && req->index > r->push_index) {
            r->push_index = req->index;
        }
        group_complete(g);
    }
    free(c);
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

static int map_raft_rv(int rv)
{
    if (rv == RAFT_NOTLEADER || rv == RAFT_LEADERSHIPLOST) {
        return ERR_NOTLEADER;
    }
    if (rv == RAFT_NOMEM) {
        return ERR_NOMEM;
    }
    LOGW(MOD, "raft request refused: %s", raft_strerror(rv));
    return ERR_IO;
}

/* raft_apply/raft_barrier sent the new entry to every follower in pipeline
 * mode, with the current commit index. */
static void applying(struct rsm *r)
{
    r->inflight++;
    r->sent_commit = r->raft.commit_index;
}

/* Append the commands of parts[0..n) (LOCAL or REMOTE groups) as ONE entry
 * on this (ready) leader. Returns 0 (every part is APPLYING and owned by
 * the entry), or ERR_NOTLEADER when raft refused synchronously (e.g. a
 * transfer is running), ERR_TOOBIG, ERR_NOMEM, ERR_IO; then the parts are
 * untouched. */
static int carrier_apply(struct rsm *r, struct rsm__group **parts, unsigned n)
{
    struct rsm__carrier *c;
    struct rsm_cmd *cmds = parts[0]->cmds;
    struct raft_buffer buf = {NULL, 0};
    unsigned total = 0;
    int rv;

    for (unsigned i = 0; i < n; i++) {
        total += parts[i]->n;
    }
    c = malloc(sizeof *c + n * sizeof c->parts[0]);
    if (c == NULL) {
        return ERR_NOMEM;
    }
    if (n > 1) {
        /* Shallow copies, for encoding only: the parts keep ownership. */
        unsigned k = 0;
        cmds = malloc(total * sizeof *cmds);
        if (cmds == NULL) {
            free(c);
            return ERR_NOMEM;
        }
        for (unsigned i = 0; i < n; i++) {
            memcpy(cmds + k, parts[i]->cmds, parts[i]->n * sizeof *cmds);
            k += parts[i]->n;
        }
    }
    rv = rsm_entry_encode(cmds, total, stamp_now(r), &buf.base, &buf.len);
    if (n > 1) {
        free(cmds);
    }
    if (rv != 0) {
        free(c);
        return rv;
    }
    if (buf.len > RSM__MAX_ENTRY) {
        raft_free(buf.base);
        free(c);
        return ERR_TOOBIG;
    }
    c->r = r;
    c->n_parts = n;
    memcpy(c->parts, parts, n * sizeof c->parts[0]);
    c->apply.data = c;
    rv = raft_apply(&r->raft, &c->apply, &buf, 1, carrier_cb);
    if (rv != 0) {
        raft_free(buf.base); /* still ours on error */
        free(c);
        return map_raft_rv(rv);
    }
    for (unsigned i = 0; i < n; i++) {
        parts[i]->state = RSM__GS_APPLYING;
    }
    if (n > 1) {
        r->merged++;
    }
    applying(r);
    return 0;
}

/* Append g alone on this (ready) leader. Returns 0, or ERR_NOTLEADER when
 * raft refused synchronously (e.g. a transfer is running), or another
 * ERR_*. */
static int group_apply(struct rsm__group *g)
{
    struct rsm *r = g->r;
    int rv;

    if (g->kind == RSM__GROUP_BARRIER || g->kind == RSM__GROUP_RBARRIER) {
        g->barrier.data = g;
        rv = raft_barrier(&r->raft, &g->barrier, barrier_cb);
        if (rv != 0) {
            return map_raft_rv(rv);
        }
        g->state = RSM__GS_APPLYING;
        applying(r);
        return 0;
    }
    return carrier_apply(r, &g, 1);
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

/* Move up to max (<= RSM__MAX_BATCH) queued proposals into one group. */
static struct rsm__group *take_batch(struct rsm *r, unsigned max)
{
    unsigned n = r->q_len < max ? r->q_len : max;
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

    if (g->fwd_buf == NULL) {
        rv = rsm_entry_encode(g->cmds, g->n, 0, &g->fwd_buf, &g->fwd_len);
        if (rv != 0) {
            g->fwd_buf = NULL;
            group_fail(g, rv);
            return;
        }
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

static struct rsm__group *rq_pop(struct rsm *r)
{
    struct rsm__group *g = r->rq_head;
    if (g != NULL) {
        r->rq_head = g->rq_next;
        if (r->rq_head == NULL) {
            r->rq_tail = NULL;
        }
        g->rq_next = NULL;
    }
    return g;
}

/* Fail the forwarded batches still queued (not the leader any more, or too
 * busy): the follower retries. */
static void rq_fail(struct rsm *r, int rv)
{
    struct rsm__group *g;
    while ((g = rq_pop(r)) != NULL) {
        group_fail(g, rv);
    }
}

/* Encoded size of a part, for the entry size bound. A local batch that
 * does not fit alone is split by start_sized (returns 0: not mergeable). */
static size_t part_len(struct rsm__group *g)
{
    if (g->kind == RSM__GROUP_LOCAL && g->fwd_buf == NULL) {
        if (rsm_entry_encode(g->cmds, g->n, 0, &g->fwd_buf, &g->fwd_len) != 0) {
            g->fwd_buf = NULL;
            return 0;
        }
    }
    return g->fwd_len;
}

/* The ready leader's flush: the forwarded batches accepted this iteration
 * and the local proposals become as few entries as possible (each at most
 * RSM__MAX_BATCH commands and about RSM__MAX_ENTRY bytes), forwarded ones
 * first (they already waited for a round trip). */
static void flush_leader(struct rsm *r)
{
    size_t limit = RSM__MAX_ENTRY - 16 * RSM__MAX_BATCH;
    struct rsm__group *parts[RSM__MAX_BATCH];

    while ((r->rq_head != NULL || r->q_len > 0) && !r->closing) {
        unsigned n_parts = 0;
        unsigned total = 0;
        size_t len = 0;
        int rv;

        if (r->inflight >= RSM__MAX_INFLIGHT) {
            rq_fail(r, ERR_BUSY); /* the followers retry */
            break; /* local ones: started below, they retry with backoff */
        }
        while (r->rq_head != NULL && total + r->rq_head->n <= RSM__MAX_BATCH &&
               (n_parts == 0 || len + r->rq_head->fwd_len <= limit)) {
            struct rsm__group *g = rq_pop(r);
            total += g->n;
            len += g->fwd_len;
            parts[n_parts++] = g;
        }
        if (r->q_len > 0 && total < RSM__MAX_BATCH) {
            struct rsm__group *g = take_batch(r, RSM__MAX_BATCH - total);
            size_t glen;
            if (g == NULL) {
                LOGE(MOD, "out of memory batching proposals");
                fail_queue(r, ERR_NOMEM);
            } else if ((glen = part_len(g)) == 0 || glen > limit ||
                       (n_parts > 0 && len + glen > limit)) {
                start_sized(g); /* alone (split if too big) */
            } else {
                total += g->n;
                len += glen;
                parts[n_parts++] = g;
            }
        }
        if (n_parts == 0) {
            continue;
        }
        /* start_sized above may have taken the last in-flight slot */
        rv = r->inflight >= RSM__MAX_INFLIGHT
                 ? ERR_BUSY
                 : carrier_apply(r, parts, n_parts);
        if (rv == 0) {
            continue;
        }
        for (unsigned i = 0; i < n_parts; i++) {
            struct rsm__group *g = parts[i];
            if ((rv == ERR_NOTLEADER || rv == ERR_BUSY) &&
                g->kind == RSM__GROUP_LOCAL) {
                schedule_retry(g, false);
            } else {
                group_fail(g, rv);
            }
        }
        if (rv == ERR_NOTLEADER) {
            rq_fail(r, ERR_NOTLEADER);
        }
    }
}

/* uv_prepare: once per loop iteration, flush the queue, then push the
 * commit index to the followers if no new entry did. */
void rsm__prepare_cb(uv_prepare_t *h)
{
    struct rsm *r = h->data;

    if (!r->closing && rsm_is_leader(r)) {
        flush_leader(r);
    } else {
        rq_fail(r, ERR_NOTLEADER);
    }
    while (r->q_len > 0 && !r->closing) {
        struct rsm__group *g = take_batch(r, RSM__MAX_BATCH);
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
    /* A digest carries the proposing leader's own record: only this node,
     * as leader, may propose one. A forwarded one (a former leader's,
     * retried after it lost leadership, or forged) is refused, so that it
     * can never make the replicas flag themselves diverged. */
    for (unsigned i = 0; i < n; i++) {
        if (cmds[i].type == RSM_CMD_DIGEST) {
            LOGW(MOD, "forwarded batch rejected: it carries a digest");
            rsm_cmds_free(cmds, n);
            return ERR_INVALID;
        }
    }
    g = group_new(r, n == 0 ? RSM__GROUP_RBARRIER : RSM__GROUP_REMOTE, n);
    if (g == NULL) {
        rsm_cmds_free(cmds, n);
        return ERR_NOMEM;
    }
    g->cmds = cmds;
    g->done = done;
    g->req = req;
    if (n > 0) {
        /* Applied by the next flush, in one entry with the other batches
         * of this loop iteration. */
        g->fwd_len = len;
        if (r->rq_tail != NULL) {
            r->rq_tail->rq_next = g;
        } else {
            r->rq_head = g;
        }
        r->rq_tail = g;
        /* Called after this iteration's flush (e.g. from another prepare
         * handle): do not let the loop block before the next one. */
        if (!uv_is_active((uv_handle_t *)&r->retry_timer)) {
            uv_timer_start(&r->retry_timer, retry_timer_cb, 0, RETRY_MS);
        }
        return 0;
    }
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
    rq_fail(r, ERR_SHUTDOWN);
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
    r->rq_head = r->rq_tail = NULL;
    while ((g = r->groups.next) != &r->groups) {
        group_fail(g, ERR_SHUTDOWN);
    }
}
