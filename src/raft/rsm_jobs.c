/* Jobs in the replicated state machine: submit, claim, start, output,
 * finish, cancel, leases, retention, the snapshot section and accessors.
 * Pure and deterministic (STYLE.md 8.6); the rules are docs/jobs.md. */
#include <lz4.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "raft/rsm_int.h"
#include "util.h"

#define JOB_FIELDS 20
#define CHUNK_FIELDS 5   /* seq, offset, stream, raw_len, data */
#define COMPACT_MIN 64   /* holes tolerated before compacting a vector */
#define CHUNK_GAP_MIN 32 /* dropped chunk slots tolerated in a job */

/* ------------------------------------------------------------------ names */

static const char *const state_names[RSM_JOB__STATES] = {
    "pending", "claimed",   "running", "retry_wait",
    "paused",  "succeeded", "failed",  "cancelled"};

static const char *const end_names[RSM_END__COUNT] = {
    "none", "exited",       "signaled", "timeout", "cancelled",
    "lost", "spawn_failed", "fenced",   "released"};

const char *rsm_job_state_name(unsigned state)
{
    return state < RSM_JOB__STATES ? state_names[state] : "unknown";
}

bool rsm_job_state_is_finished(unsigned state)
{
    return state == RSM_JOB_SUCCEEDED || state == RSM_JOB_FAILED ||
           state == RSM_JOB_CANCELLED;
}

const char *rsm_job_end_name(unsigned end)
{
    return end < RSM_END__COUNT ? end_names[end] : "unknown";
}

int rsm_job_id_parse(const char *id, uint64_t *seq)
{
    return rsm__id_parse('j', id, seq);
}

void rsm_job_id_format(uint64_t seq, char *buf)
{
    snprintf(buf, RSM_JOB_ID_MAX, "j%llu", (unsigned long long)seq);
}

/* ------------------------------------------------------------- results */

#define reject rsm__reject

/* ------------------------------------------------------------ storage */

static void chunk_free(struct rsm_chunk *c)
{
    free((void *)(uintptr_t)c->data);
    c->data = NULL;
}

static void job_free(struct rsm__job *r)
{
    if (r == NULL) {
        return;
    }
    for (unsigned i = 0; i < r->n_head; i++) {
        chunk_free(&r->chunks[i]);
    }
    for (unsigned i = r->tail_start; i < r->n_chunk; i++) {
        chunk_free(&r->chunks[i]);
    }
    free(r->chunks);
    rsm_job_spec_clear(&r->job.spec);
    free(r);
}

#define vec_reserve rsm__vec_reserve

/* Squeeze the NULL holes out of a seq-ordered vector, renumbering. */
static void compact(struct rsm__vec *v, unsigned *holes, bool active)
{
    unsigned j = 0;
    for (unsigned i = 0; i < v->n; i++) {
        struct rsm__job *r = v->v[i];
        if (r == NULL) {
            continue;
        }
        v->v[j] = r;
        if (active) {
            r->pos_active = j;
        } else {
            r->pos_all = j;
        }
        j++;
    }
    v->n = j;
    *holes = 0;
}

static void maybe_compact(struct rsm__vec *v, unsigned *holes, bool active)
{
    if (*holes >= COMPACT_MIN && *holes * 2 >= v->n) {
        compact(v, holes, active);
    }
}

static unsigned finished_live(const struct rsm_fsm *f)
{
    return f->jobs_finished.n - f->jobs_finished_head;
}

static bool finished_before(const struct rsm_job *a, const struct rsm_job *b)
{
    return a->finished_ms < b->finished_ms ||
           (a->finished_ms == b->finished_ms && a->seq < b->seq);
}

/* Insert into the (finished_ms, seq) queue; room was reserved. Finish
 * times never decrease, so this walks back over equal times only. */
static void finished_push(struct rsm_fsm *f, struct rsm__job *r)
{
    struct rsm__vec *v = &f->jobs_finished;
    unsigned pos = v->n;
    while (pos > f->jobs_finished_head &&
           finished_before(&r->job, &((struct rsm__job *)v->v[pos - 1])->job)) {
        pos--;
    }
    memmove(&v->v[pos + 1], &v->v[pos], (size_t)(v->n - pos) * sizeof *v->v);
    v->v[pos] = r;
    v->n++;
}

/* Reserve room so that n jobs can reach a terminal state without failing
 * half-way (all or nothing). */
static int reserve_finish(struct rsm_fsm *f, unsigned n)
{
    return vec_reserve(&f->jobs_finished, n);
}

/* Move a job to a terminal state (room reserved by reserve_finish). */
static void to_terminal(struct rsm_fsm *f, struct rsm__job *r, uint8_t state)
{
    r->job.state = state;
    r->job.node = 0;
    r->job.cancel_requested = false;
    r->job.not_before_ms = 0;
    r->job.finished_ms = f->clock;
    f->jobs_active.v[r->pos_active] = NULL;
    f->jobs_active_holes++;
    finished_push(f, r);
    if (r->job.spec.run != 0) {
        rsm__runs_job_done(f, &r->job); /* never allocates */
    }
}

static void job_delete(struct rsm_fsm *f, struct rsm__job *r)
{
    map_del_u64(&f->jobs, r->job.seq);
    f->jobs_all.v[r->pos_all] = NULL;
    f->jobs_all_holes++;
    job_free(r);
}

void rsm__jobs_retain(struct rsm_fsm *f)
{
    while (finished_live(f) > 0) {
        struct rsm__job *r = f->jobs_finished.v[f->jobs_finished_head];
        if (finished_live(f) <= f->jobs_max_finished &&
            f->clock - r->job.finished_ms <= f->jobs_max_age_ms) {
            break;
        }
        f->jobs_finished_head++;
        job_delete(f, r);
    }
    if (f->jobs_finished_head > 0 &&
        (f->jobs_finished_head == f->jobs_finished.n ||
         (f->jobs_finished_head >= 1024 &&
          f->jobs_finished_head * 2 >= f->jobs_finished.n))) {
        memmove(f->jobs_finished.v, &f->jobs_finished.v[f->jobs_finished_head],
                (size_t)finished_live(f) * sizeof *f->jobs_finished.v);
        f->jobs_finished.n -= f->jobs_finished_head;
        f->jobs_finished_head = 0;
    }
    maybe_compact(&f->jobs_all, &f->jobs_all_holes, false);
    maybe_compact(&f->jobs_active, &f->jobs_active_holes, true);
}

void rsm__jobs_clear(struct rsm_fsm *f)
{
    for (unsigned i = 0; i < f->jobs_all.n; i++) {
        job_free(f->jobs_all.v[i]);
    }
    map_close(&f->jobs);
    rsm__vec_free(&f->jobs_all);
    rsm__vec_free(&f->jobs_active);
    rsm__vec_free(&f->jobs_finished);
    f->jobs_all_holes = 0;
    f->jobs_active_holes = 0;
    f->jobs_finished_head = 0;
    f->job_seq = 0;
}

void rsm__fsm_set_job_retention(struct rsm_fsm *f,
                                unsigned max_finished,
                                int64_t max_age_ms)
{
    f->jobs_max_finished = max_finished;
    f->jobs_max_age_ms = max_age_ms;
}

/* Add a job record to the tables (submit and restore). On failure the
 * tables are unchanged and the record is still the caller's. */
static int job_insert(struct rsm_fsm *f, struct rsm__job *r)
{
    bool active = !rsm_job_state_is_finished(r->job.state);
    int rv = vec_reserve(&f->jobs_all, 1);
    if (rv == 0 && active) {
        rv = vec_reserve(&f->jobs_active, 1);
    }
    if (rv == 0) {
        rv = map_put_u64(&f->jobs, r->job.seq, r, NULL);
    }
    if (rv != 0) {
        return rv;
    }
    r->pos_all = f->jobs_all.n;
    f->jobs_all.v[f->jobs_all.n++] = r;
    if (active) {
        r->pos_active = f->jobs_active.n;
        f->jobs_active.v[f->jobs_active.n++] = r;
    }
    return 0;
}

int rsm__jobs_add(struct rsm_fsm *f,
                  struct rsm_job_spec *specs,
                  unsigned n,
                  uint64_t *seqs)
{
    struct rsm__job **recs;
    unsigned put = 0;
    int rv;
    if (n == 0) {
        return 0;
    }
    recs = calloc(n, sizeof *recs);
    if (recs == NULL) {
        return ERR_NOMEM;
    }
    rv = vec_reserve(&f->jobs_all, n);
    if (rv == 0) {
        rv = vec_reserve(&f->jobs_active, n);
    }
    for (unsigned i = 0; rv == 0 && i < n; i++) {
        recs[i] = calloc(1, sizeof *recs[i]);
        if (recs[i] == NULL) {
            rv = ERR_NOMEM;
        }
    }
    for (; rv == 0 && put < n; put++) {
        recs[put]->job.seq = f->job_seq + 1 + put;
        rv = map_put_u64(&f->jobs, recs[put]->job.seq, recs[put], NULL);
        if (rv != 0) {
            break;
        }
    }
    if (rv != 0) {
        for (unsigned i = 0; i < put; i++) {
            map_del_u64(&f->jobs, recs[i]->job.seq);
        }
        for (unsigned i = 0; i < n; i++) {
            free(recs[i]);
        }
        free(recs);
        return rv;
    }
    for (unsigned i = 0; i < n; i++) {
        struct rsm__job *r = recs[i];
        r->job.spec = specs[i]; /* steal */
        memset(&specs[i], 0, sizeof specs[i]);
        r->job.state = RSM_JOB_PENDING;
        r->job.attempt = 1;
        r->job.created_ms = f->clock;
        r->job.next_chunk = 1;
        r->pos_all = f->jobs_all.n;
        f->jobs_all.v[f->jobs_all.n++] = r;
        r->pos_active = f->jobs_active.n;
        f->jobs_active.v[f->jobs_active.n++] = r;
        seqs[i] = r->job.seq;
    }
    f->job_seq += n;
    free(recs);
    return 0;
}

int rsm__jobs_reserve_finish(struct rsm_fsm *f, unsigned n)
{
    return vec_reserve(&f->jobs_finished, n);
}

/* --------------------------------------------------------------- apply */

static struct rsm__job *find(const struct rsm_fsm *f,
                             uint64_t seq,
                             struct rsm_result *res)
{
    struct rsm__job *r = map_get_u64(&f->jobs, seq);
    if (r == NULL) {
        reject(res, ERR_NOTFOUND, "job j%llu not found",
               (unsigned long long)seq);
    }
    return r;
}

static int apply_submit(struct rsm_fsm *f,
                        struct rsm_cmd *c,
                        struct rsm_result *res)
{
    struct rsm__job *r = calloc(1, sizeof *r);
    int rv;
    if (r == NULL) {
        return ERR_NOMEM;
    }
    r->job.seq = f->job_seq + 1;
    r->job.spec = c->u.job_submit; /* steal; cleared below */
    r->job.state = RSM_JOB_PENDING;
    r->job.attempt = 1;
    r->job.created_ms = f->clock;
    r->job.next_chunk = 1;
    rv = job_insert(f, r);
    if (rv != 0) {
        free(r); /* the spec still belongs to the command */
        return rv;
    }
    memset(&c->u.job_submit, 0, sizeof c->u.job_submit);
    f->job_seq = r->job.seq;
    res->value = r->job.seq;
    return 0;
}

static int apply_claim(struct rsm_fsm *f,
                       const struct rsm_cmd *c,
                       struct rsm_result *res)
{
    struct rsm__job *r = find(f, c->u.job_claim.job, res);
    const struct rsm_member *m;
    struct rsm_job *j;
    if (r == NULL) {
        return 0;
    }
    j = &r->job;
    if (c->u.job_claim.attempt != j->attempt) {
        reject(res, ERR_STALE, "job j%llu is at attempt %u, not %u",
               (unsigned long long)j->seq, j->attempt, c->u.job_claim.attempt);
        return 0;
    }
    if (j->state != RSM_JOB_PENDING && j->state != RSM_JOB_RETRY_WAIT) {
        reject(res, ERR_CONFLICT, "job j%llu is %s", (unsigned long long)j->seq,
               rsm_job_state_name(j->state));
        return 0;
    }
    if (j->state == RSM_JOB_RETRY_WAIT && j->not_before_ms > f->clock) {
        reject(res, ERR_CONFLICT, "job j%llu waits for its retry until %lld",
               (unsigned long long)j->seq, (long long)j->not_before_ms);
        return 0;
    }
    m = map_get_u64(&f->members, c->u.job_claim.node);
    if (m == NULL) {
        reject(res, ERR_NOTFOUND, "node %llu unknown",
               (unsigned long long)c->u.job_claim.node);
        return 0;
    }
    if (m->lease_until_ms == 0 || m->lease_until_ms < f->clock) {
        reject(res, ERR_BUSY, "node %llu has no valid lease",
               (unsigned long long)m->id);
        return 0;
    }
    if (m->draining) {
        reject(res, ERR_BUSY, "node %llu is draining",
               (unsigned long long)m->id);
        return 0;
    }
    j->state = RSM_JOB_CLAIMED;
    j->node = m->id;
    j->last_node = m->id;
    j->epoch++;
    j->claimed_ms = f->clock;
    j->started_ms = 0;
    j->not_before_ms = 0;
    j->end = RSM_END_NONE;
    j->exit_code = 0;
    j->signal = 0;
    res->value = j->epoch;
    return 0;
}

/* The job, if epoch is its current one; else a rejection. */
static struct rsm__job *find_epoch(const struct rsm_fsm *f,
                                   uint64_t seq,
                                   uint64_t epoch,
                                   struct rsm_result *res)
{
    struct rsm__job *r = find(f, seq, res);
    if (r != NULL && r->job.epoch != epoch) {
        reject(res, ERR_STALE, "job j%llu is at epoch %llu, not %llu",
               (unsigned long long)seq, (unsigned long long)r->job.epoch,
               (unsigned long long)epoch);
        return NULL;
    }
    return r;
}

static int apply_start(struct rsm_fsm *f,
                       const struct rsm_cmd *c,
                       struct rsm_result *res)
{
    struct rsm__job *r =
        find_epoch(f, c->u.job_start.job, c->u.job_start.epoch, res);
    if (r == NULL) {
        return 0;
    }
    res->value = r->job.epoch;
    if (r->job.state == RSM_JOB_RUNNING) {
        return 0; /* duplicate START of this attempt */
    }
    if (r->job.state != RSM_JOB_CLAIMED) {
        reject(res, ERR_STALE, "job j%llu: the attempt is over (%s)",
               (unsigned long long)r->job.seq,
               rsm_job_state_name(r->job.state));
        return 0;
    }
    r->job.state = RSM_JOB_RUNNING;
    r->job.started_ms = f->clock;
    return 0;
}

static int apply_output(struct rsm_fsm *f,
                        struct rsm_cmd *c,
                        struct rsm_result *res)
{
    struct rsm__job *r =
        find_epoch(f, c->u.job_output.job, c->u.job_output.epoch, res);
    struct rsm_job *j;
    struct rsm_chunk *ch;
    if (r == NULL) {
        return 0;
    }
    j = &r->job;
    if (c->u.job_output.seq < j->next_chunk) {
        res->value = j->next_chunk; /* duplicate: already stored */
        return 0;
    }
    if (c->u.job_output.seq > j->next_chunk) {
        reject(res, ERR_STALE, "job j%llu expects output chunk %llu, not %llu",
               (unsigned long long)j->seq, (unsigned long long)j->next_chunk,
               (unsigned long long)c->u.job_output.seq);
        return 0;
    }
    if (r->n_chunk == r->cap_chunk) {
        unsigned cap = r->cap_chunk == 0 ? 4 : r->cap_chunk * 2;
        struct rsm_chunk *nc;
        if (cap < r->cap_chunk) {
            return ERR_NOMEM;
        }
        nc = realloc(r->chunks, (size_t)cap * sizeof *nc);
        if (nc == NULL) {
            return ERR_NOMEM;
        }
        r->chunks = nc;
        r->cap_chunk = cap;
    }
    ch = &r->chunks[r->n_chunk++];
    ch->seq = c->u.job_output.seq;
    ch->offset = j->out_bytes;
    ch->raw_len = c->u.job_output.raw_len;
    ch->comp_len = c->u.job_output.len;
    ch->stream = c->u.job_output.stream;
    ch->data = c->u.job_output.data; /* steal */
    c->u.job_output.data = NULL;
    c->u.job_output.len = 0;
    j->out_bytes += ch->raw_len;
    j->next_chunk++;
    if (ch->offset < RSM_OUTPUT_HEAD_CAP) {
        /* Head chunks come before any tail chunk (offsets only grow). */
        r->n_head++;
        r->tail_start = r->n_chunk;
    } else {
        r->tail_bytes += ch->raw_len;
        while (r->tail_bytes > RSM_OUTPUT_TAIL_CAP) {
            struct rsm_chunk *old = &r->chunks[r->tail_start++];
            j->out_cut += old->raw_len;
            r->tail_bytes -= old->raw_len;
            chunk_free(old);
        }
        if (r->tail_start - r->n_head >= CHUNK_GAP_MIN &&
            r->tail_start - r->n_head >= r->n_chunk - r->tail_start) {
            unsigned live = r->n_chunk - r->tail_start;
            memmove(&r->chunks[r->n_head], &r->chunks[r->tail_start],
                    (size_t)live * sizeof *r->chunks);
            r->n_chunk = r->n_head + live;
            r->tail_start = r->n_head;
        }
    }
    j->out_chunks = r->n_head + (r->n_chunk - r->tail_start);
    res->value = j->next_chunk;
    return 0;
}

/* Retry delay after attempt `attempt` failed (docs/jobs.md "Retry
 * policy"): min(cap, backoff_s * 2^(attempt-1)) s, plus a jitter of
 * hash64(seq, attempt) mod (delay_ms / 5). */
static int64_t retry_delay_ms(const struct rsm_job *j, uint32_t attempt)
{
    uint64_t d = j->spec.backoff_s;
    uint32_t shift = attempt - 1;
    unsigned char key[16];
    uint64_t ms;
    if (d == 0) {
        return 0;
    }
    if (shift >= 32 || (d << shift) > RSM_RETRY_BACKOFF_CAP_S) {
        d = RSM_RETRY_BACKOFF_CAP_S;
    } else {
        d <<= shift;
    }
    ms = d * 1000;
    for (unsigned i = 0; i < 8; i++) {
        key[i] = (unsigned char)(j->seq >> (8 * i));
        key[8 + i] = (unsigned char)((uint64_t)attempt >> (8 * i));
    }
    if (ms / 5 > 0) {
        ms += hash64(key, sizeof key, 0) % (ms / 5);
    }
    return (int64_t)ms;
}

/* The end of an attempt that did not succeed: cancelled if requested,
 * retry if attempts are left, else failed. lost = the attempt ended with
 * its node (lease expiry, the holder's fence, or a restart that found it
 * orphaned), not by the job's own doing: it runs again at once, without
 * backoff and even beyond `retries` (up to RSM_LOST_EXTRA_ATTEMPTS more
 * attempts, so that a job that keeps killing its nodes still ends); it
 * counts as an attempt. Room in jobs_finished was reserved. */
static void attempt_failed(struct rsm_fsm *f, struct rsm__job *r, bool lost)
{
    struct rsm_job *j = &r->job;
    uint64_t budget =
        (uint64_t)j->spec.retries_max + (lost ? RSM_LOST_EXTRA_ATTEMPTS : 0);
    if (j->cancel_requested) {
        to_terminal(f, r, RSM_JOB_CANCELLED);
    } else if (j->attempt <= budget && j->attempt < UINT32_MAX) {
        j->node = 0;
        if (!lost) {
            j->state = RSM_JOB_RETRY_WAIT;
            j->not_before_ms = f->clock + retry_delay_ms(j, j->attempt);
        } else {
            j->state = RSM_JOB_PENDING;
            j->not_before_ms = 0;
        }
        j->attempt++;
    } else {
        to_terminal(f, r, RSM_JOB_FAILED);
    }
}

static int apply_finish(struct rsm_fsm *f,
                        const struct rsm_cmd *c,
                        struct rsm_result *res)
{
    struct rsm__job *r =
        find_epoch(f, c->u.job_finish.job, c->u.job_finish.epoch, res);
    struct rsm_job *j;
    int rv;
    if (r == NULL) {
        return 0;
    }
    j = &r->job;
    if (j->state != RSM_JOB_CLAIMED && j->state != RSM_JOB_RUNNING) {
        reject(res, ERR_STALE, "job j%llu: the attempt is over (%s)",
               (unsigned long long)j->seq, rsm_job_state_name(j->state));
        return 0;
    }
    rv = reserve_finish(f, 1);
    if (rv != 0) {
        return rv;
    }
    j->end = c->u.job_finish.end;
    j->exit_code = c->u.job_finish.exit_code;
    j->signal = c->u.job_finish.signal;
    if (j->end == RSM_END_EXITED && j->exit_code == 0) {
        to_terminal(f, r, RSM_JOB_SUCCEEDED);
    } else if (j->end == RSM_END_RELEASED && j->state == RSM_JOB_CLAIMED &&
               !j->cancel_requested) {
        /* Its holder hands back a grant it never started (shutdown, or an
         * older attempt still dying there): pending again at once, and not
         * an attempt, so that a rolling restart cannot use up a job's
         * retries before it ever ran. An attempt that STARTed and is then
         * "released" counts as lost (below). */
        j->state = RSM_JOB_PENDING;
        j->node = 0;
        j->not_before_ms = 0;
    } else {
        attempt_failed(f, r,
                       j->end == RSM_END_LOST || j->end == RSM_END_FENCED ||
                           j->end == RSM_END_RELEASED);
    }
    res->value = j->state;
    return 0;
}

/* JOB_CANCEL on an unfinished job (room reserved): waiting states end
 * at once, claimed/running ones are flagged for their holder, who kills
 * the process and FINISHes. */
static void cancel_reserved(struct rsm_fsm *f, struct rsm__job *r)
{
    switch (r->job.state) {
        case RSM_JOB_PENDING:
        case RSM_JOB_RETRY_WAIT:
        case RSM_JOB_PAUSED:
            to_terminal(f, r, RSM_JOB_CANCELLED);
            break;
        case RSM_JOB_CLAIMED:
        case RSM_JOB_RUNNING:
            r->job.cancel_requested = true;
            break;
        default:
            break;
    }
}

static int apply_cancel(struct rsm_fsm *f,
                        const struct rsm_cmd *c,
                        struct rsm_result *res)
{
    struct rsm__job *r = find(f, c->u.job_cancel.job, res);
    struct rsm_job *j;
    int rv;
    if (r == NULL) {
        return 0;
    }
    j = &r->job;
    if (rsm_job_state_is_finished(j->state)) {
        reject(res, ERR_CONFLICT, "job j%llu is already %s",
               (unsigned long long)j->seq, rsm_job_state_name(j->state));
        return 0;
    }
    rv = reserve_finish(f, 1);
    if (rv != 0) {
        return rv;
    }
    cancel_reserved(f, r);
    res->value = rsm_job_state_is_finished(j->state) ? 0 : 1;
    return 0;
}

bool rsm__job_cancel_reserved(struct rsm_fsm *f, uint64_t seq)
{
    struct rsm__job *r = map_get_u64(&f->jobs, seq);
    if (r == NULL || rsm_job_state_is_finished(r->job.state)) {
        return false;
    }
    cancel_reserved(f, r);
    return true;
}

static int apply_renew(struct rsm_fsm *f,
                       const struct rsm_cmd *c,
                       struct rsm_result *res)
{
    struct rsm_member *m = map_get_u64(&f->members, c->u.node_renew.node);
    if (m == NULL) {
        reject(res, ERR_NOTFOUND, "node %llu unknown",
               (unsigned long long)c->u.node_renew.node);
        return 0;
    }
    m->lease_until_ms = f->clock + (int64_t)c->u.node_renew.lease_ms;
    res->value = (uint64_t)m->lease_until_ms;
    return 0;
}

static int apply_expire(struct rsm_fsm *f,
                        const struct rsm_cmd *c,
                        struct rsm_result *res)
{
    const struct rsm_member *m =
        map_get_u64(&f->members, c->u.node_expire.node);
    unsigned n = 0;
    int rv;
    if (m == NULL) {
        reject(res, ERR_NOTFOUND, "node %llu unknown",
               (unsigned long long)c->u.node_expire.node);
        return 0;
    }
    if (f->clock <= m->lease_until_ms + RSM_LEASE_GRACE_MS) {
        reject(res, ERR_STALE, "node %llu's lease runs until %lld (+%d ms)",
               (unsigned long long)m->id, (long long)m->lease_until_ms,
               RSM_LEASE_GRACE_MS);
        return 0;
    }
    for (unsigned i = 0; i < f->jobs_active.n; i++) {
        const struct rsm__job *r = f->jobs_active.v[i];
        if (r != NULL && r->job.node == m->id) {
            n++;
        }
    }
    rv = reserve_finish(f, n);
    if (rv != 0) {
        return rv;
    }
    /* Holes made by to_terminal keep positions; compaction waits for
     * rsm__jobs_retain, so this walk in seq order is safe. */
    for (unsigned i = 0; i < f->jobs_active.n; i++) {
        struct rsm__job *r = f->jobs_active.v[i];
        if (r == NULL || r->job.node != m->id ||
            (r->job.state != RSM_JOB_CLAIMED &&
             r->job.state != RSM_JOB_RUNNING)) {
            continue;
        }
        r->job.end = RSM_END_LOST;
        r->job.exit_code = 0;
        r->job.signal = 0;
        attempt_failed(f, r, true);
    }
    res->value = n;
    return 0;
}

int rsm__apply_job(struct rsm_fsm *f, struct rsm_cmd *c, struct rsm_result *res)
{
    switch (c->type) {
        case RSM_CMD_JOB_SUBMIT:
            return apply_submit(f, c, res);
        case RSM_CMD_JOB_CLAIM:
            return apply_claim(f, c, res);
        case RSM_CMD_JOB_START:
            return apply_start(f, c, res);
        case RSM_CMD_JOB_OUTPUT:
            return apply_output(f, c, res);
        case RSM_CMD_JOB_FINISH:
            return apply_finish(f, c, res);
        case RSM_CMD_JOB_CANCEL:
            return apply_cancel(f, c, res);
        case RSM_CMD_NODE_RENEW:
            return apply_renew(f, c, res);
        case RSM_CMD_NODE_EXPIRE:
            return apply_expire(f, c, res);
        default:
            reject(res, ERR_MALFORMED, "unknown command type %u",
                   (unsigned)c->type);
            return 0;
    }
}

/* ------------------------------------------------------------ snapshot */

static int pack_chunk(const struct rsm_chunk *c, msgpack_packer *pk)
{
    if (msgpack_pack_array(pk, CHUNK_FIELDS) != 0 ||
        msgpack_pack_uint64(pk, c->seq) != 0 ||
        msgpack_pack_uint64(pk, c->offset) != 0 ||
        msgpack_pack_uint8(pk, c->stream) != 0 ||
        msgpack_pack_uint32(pk, c->raw_len) != 0 ||
        msgpack_pack_bin(pk, c->comp_len) != 0 ||
        msgpack_pack_bin_body(pk, c->data, c->comp_len) != 0) {
        return ERR_NOMEM;
    }
    return 0;
}

static int pack_job(const struct rsm__job *r, msgpack_packer *pk)
{
    const struct rsm_job *j = &r->job;
    if (msgpack_pack_array(pk, JOB_FIELDS) != 0 ||
        rsm__job_spec_pack(&j->spec, pk) != 0 ||
        msgpack_pack_uint64(pk, j->seq) != 0 ||
        msgpack_pack_uint8(pk, j->state) != 0 ||
        msgpack_pack_uint32(pk, j->attempt) != 0 ||
        msgpack_pack_uint64(pk, j->epoch) != 0 ||
        msgpack_pack_uint64(pk, j->node) != 0 ||
        msgpack_pack_int64(pk, j->not_before_ms) != 0 ||
        (j->cancel_requested ? msgpack_pack_true(pk)
                             : msgpack_pack_false(pk)) != 0 ||
        msgpack_pack_uint8(pk, j->end) != 0 ||
        msgpack_pack_int32(pk, j->exit_code) != 0 ||
        msgpack_pack_int32(pk, j->signal) != 0 ||
        msgpack_pack_int64(pk, j->created_ms) != 0 ||
        msgpack_pack_int64(pk, j->claimed_ms) != 0 ||
        msgpack_pack_int64(pk, j->started_ms) != 0 ||
        msgpack_pack_int64(pk, j->finished_ms) != 0 ||
        msgpack_pack_uint64(pk, j->out_bytes) != 0 ||
        msgpack_pack_uint64(pk, j->out_cut) != 0 ||
        msgpack_pack_uint64(pk, j->next_chunk) != 0 ||
        msgpack_pack_uint64(pk, j->last_node) != 0 ||
        msgpack_pack_array(pk, j->out_chunks) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < r->n_head; i++) {
        if (pack_chunk(&r->chunks[i], pk) != 0) {
            return ERR_NOMEM;
        }
    }
    for (unsigned i = r->tail_start; i < r->n_chunk; i++) {
        if (pack_chunk(&r->chunks[i], pk) != 0) {
            return ERR_NOMEM;
        }
    }
    return 0;
}

int rsm__jobs_pack(const struct rsm_fsm *f, msgpack_packer *pk)
{
    if (msgpack_pack_uint64(pk, f->job_seq) != 0 ||
        msgpack_pack_array(pk, (uint32_t)map_count(&f->jobs)) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < f->jobs_all.n; i++) {
        if (f->jobs_all.v[i] != NULL && pack_job(f->jobs_all.v[i], pk) != 0) {
            return ERR_NOMEM;
        }
    }
    return 0;
}

/* Decode and check the chunks of r (fields already loaded). */
static int load_chunks(struct rsm__job *r,
                       const msgpack_object *o,
                       char *errmsg)
{
    struct rsm_job *j = &r->job;
    uint64_t expect = 0; /* next contiguous offset */
    uint64_t stored = 0;
    uint64_t prev_seq = 0;
    if (o->type != MSGPACK_OBJECT_ARRAY ||
        o->via.array.size > j->next_chunk - 1) {
        errmsg_printf(errmsg, "chunks: expected an array");
        return ERR_MALFORMED;
    }
    if (o->via.array.size > 0) {
        r->chunks = calloc(o->via.array.size, sizeof *r->chunks);
        if (r->chunks == NULL) {
            return ERR_NOMEM;
        }
        r->cap_chunk = o->via.array.size;
    }
    for (unsigned i = 0; i < o->via.array.size; i++) {
        const msgpack_object *co = &o->via.array.ptr[i];
        const msgpack_object *cf;
        struct rsm_chunk *c = &r->chunks[i];
        uint64_t raw;
        uint64_t stream;
        void *data;
        int rv;
        if (co->type != MSGPACK_OBJECT_ARRAY ||
            co->via.array.size != CHUNK_FIELDS) {
            errmsg_printf(errmsg, "chunks[%u]: expected %d fields", i,
                          CHUNK_FIELDS);
            return ERR_MALFORMED;
        }
        cf = co->via.array.ptr;
        if (!rsm__get_u64(&cf[0], j->next_chunk - 1, &c->seq) ||
            c->seq <= prev_seq ||
            !rsm__get_u64(&cf[1], UINT64_MAX, &c->offset) ||
            !rsm__get_u64(&cf[2], RSM_STREAM_KILN, &stream) ||
            !rsm__get_u64(&cf[3], RSM_CHUNK_RAW_MAX, &raw) || raw == 0 ||
            cf[4].type != MSGPACK_OBJECT_BIN || cf[4].via.bin.size == 0 ||
            cf[4].via.bin.size >
                (uint32_t)LZ4_compressBound(RSM_CHUNK_RAW_MAX)) {
            errmsg_printf(errmsg, "chunks[%u]: bad field", i);
            return ERR_MALFORMED;
        }
        prev_seq = c->seq;
        c->stream = (uint8_t)stream;
        c->raw_len = (uint32_t)raw;
        data = malloc(cf[4].via.bin.size);
        if (data == NULL) {
            return ERR_NOMEM;
        }
        memcpy(data, cf[4].via.bin.ptr, cf[4].via.bin.size);
        c->data = data;
        c->comp_len = cf[4].via.bin.size;
        r->n_chunk = i + 1;
        /* A loaded job has no gap: tail_start == n_head throughout, so
         * job_free releases every chunk loaded so far on error. */
        if (c->offset < RSM_OUTPUT_HEAD_CAP) {
            if (r->n_head != i || c->offset != expect) {
                errmsg_printf(errmsg, "chunks[%u]: head not contiguous", i);
                return ERR_MALFORMED;
            }
            r->n_head++;
            r->tail_start = r->n_head;
        } else if (r->tail_bytes > 0 && c->offset != expect) {
            errmsg_printf(errmsg, "chunks[%u]: tail not contiguous", i);
            return ERR_MALFORMED;
        } else {
            r->tail_bytes += c->raw_len;
        }
        expect = c->offset + c->raw_len;
        stored += c->raw_len;
        rv = rsm__chunk_check(c->data, c->comp_len, c->raw_len);
        if (rv != 0) {
            if (rv == ERR_MALFORMED) {
                errmsg_printf(errmsg, "chunks[%u]: bad LZ4 block", i);
            }
            return rv;
        }
    }
    if (expect > j->out_bytes || stored + j->out_cut != j->out_bytes ||
        r->tail_bytes > RSM_OUTPUT_TAIL_CAP ||
        (r->tail_bytes > 0 && expect != j->out_bytes)) {
        errmsg_printf(errmsg, "chunks: byte counts do not add up");
        return ERR_MALFORMED;
    }
    j->out_chunks = r->n_chunk;
    return 0;
}

static int load_job(const msgpack_object *o,
                    struct rsm__job *r,
                    int64_t clock,
                    char *errmsg)
{
    const msgpack_object *jf;
    struct rsm_job *j = &r->job;
    uint64_t u;
    bool active;
    int rv;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != JOB_FIELDS) {
        errmsg_printf(errmsg, "expected %d fields", JOB_FIELDS);
        return ERR_MALFORMED;
    }
    jf = o->via.array.ptr;
    rv = rsm__job_spec_unpack(&jf[0], &j->spec, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (!rsm__get_u64(&jf[1], UINT64_MAX, &j->seq) || j->seq == 0 ||
        !rsm__get_u64(&jf[2], RSM_JOB__STATES - 1, &u)) {
        errmsg_printf(errmsg, "bad seq or state");
        return ERR_MALFORMED;
    }
    j->state = (uint8_t)u;
    if (!rsm__get_u64(&jf[3], UINT32_MAX, &u) || u == 0) {
        errmsg_printf(errmsg, "bad attempt");
        return ERR_MALFORMED;
    }
    j->attempt = (uint32_t)u;
    if (!rsm__get_u64(&jf[4], UINT64_MAX, &j->epoch) ||
        !rsm__get_u64(&jf[5], UINT64_MAX, &j->node) ||
        !rsm__get_i64(&jf[6], &j->not_before_ms) ||
        jf[7].type != MSGPACK_OBJECT_BOOLEAN ||
        !rsm__get_u64(&jf[8], RSM_END__COUNT - 1, &u) ||
        !rsm__get_i32(&jf[9], &j->exit_code) ||
        !rsm__get_i32(&jf[10], &j->signal) ||
        !rsm__get_i64(&jf[11], &j->created_ms) ||
        !rsm__get_i64(&jf[12], &j->claimed_ms) ||
        !rsm__get_i64(&jf[13], &j->started_ms) ||
        !rsm__get_i64(&jf[14], &j->finished_ms) ||
        !rsm__get_u64(&jf[15], UINT64_MAX, &j->out_bytes) ||
        !rsm__get_u64(&jf[16], UINT64_MAX, &j->out_cut) ||
        !rsm__get_u64(&jf[17], UINT64_MAX, &j->next_chunk) ||
        !rsm__get_u64(&jf[18], UINT64_MAX, &j->last_node) ||
        j->next_chunk == 0 || j->out_cut > j->out_bytes || j->exit_code > 255 ||
        j->signal > 255) {
        errmsg_printf(errmsg, "bad field");
        return ERR_MALFORMED;
    }
    j->cancel_requested = jf[7].via.boolean;
    j->end = (uint8_t)u;
    active = !rsm_job_state_is_finished(j->state);
    if ((j->state == RSM_JOB_CLAIMED || j->state == RSM_JOB_RUNNING) !=
            (j->node != 0) ||
        (j->node != 0 && j->epoch == 0) ||
        (j->cancel_requested && j->node == 0) || j->created_ms > clock ||
        j->finished_ms > clock || (!active && j->finished_ms < j->created_ms)) {
        errmsg_printf(errmsg, "inconsistent state");
        return ERR_MALFORMED;
    }
    return load_chunks(r, &jf[19], errmsg);
}

static int cmp_finished(const void *a, const void *b)
{
    const struct rsm_job *x = &(*(struct rsm__job *const *)a)->job;
    const struct rsm_job *y = &(*(struct rsm__job *const *)b)->job;
    if (finished_before(x, y)) {
        return -1;
    }
    return finished_before(y, x) ? 1 : 0;
}

int rsm__jobs_load(struct rsm_fsm *f,
                   const msgpack_object *seq,
                   const msgpack_object *jobs,
                   char *errmsg)
{
    uint64_t prev = 0;
    unsigned n_finished = 0;
    int rv;
    if (!rsm__get_u64(seq, UINT64_MAX, &f->job_seq) ||
        jobs->type != MSGPACK_OBJECT_ARRAY) {
        errmsg_printf(errmsg, "jobs: bad counter or table");
        return ERR_MALFORMED;
    }
    for (unsigned i = 0; i < jobs->via.array.size; i++) {
        struct rsm__job *r = calloc(1, sizeof *r);
        if (r == NULL) {
            return ERR_NOMEM;
        }
        rv = load_job(&jobs->via.array.ptr[i], r, f->clock, errmsg);
        if (rv == 0 && (r->job.seq <= prev || r->job.seq > f->job_seq)) {
            errmsg_printf(errmsg, "not sorted by seq or beyond the counter");
            rv = ERR_MALFORMED;
        }
        if (rv == 0) {
            rv = job_insert(f, r);
        }
        if (rv != 0) {
            job_free(r);
            if (rv != ERR_NOMEM) {
                errmsg_wrapf(errmsg, "jobs[%u]", i);
                rv = ERR_MALFORMED;
            }
            return rv;
        }
        prev = r->job.seq;
        n_finished += rsm_job_state_is_finished(r->job.state) ? 1 : 0;
    }
    rv = vec_reserve(&f->jobs_finished, n_finished);
    if (rv != 0) {
        return rv;
    }
    for (unsigned i = 0; i < f->jobs_all.n; i++) {
        struct rsm__job *r = f->jobs_all.v[i];
        if (rsm_job_state_is_finished(r->job.state)) {
            f->jobs_finished.v[f->jobs_finished.n++] = r;
        }
    }
    if (f->jobs_finished.n > 1) {
        qsort(f->jobs_finished.v, f->jobs_finished.n,
              sizeof *f->jobs_finished.v, cmp_finished);
    }
    return 0;
}

/* ----------------------------------------------------------- accessors */

const struct rsm_job *rsm_fsm_job(const struct rsm_fsm *f, uint64_t seq)
{
    const struct rsm__job *r = map_get_u64(&f->jobs, seq);
    return r != NULL ? &r->job : NULL;
}

unsigned rsm_fsm_job_count(const struct rsm_fsm *f)
{
    return (unsigned)map_count(&f->jobs);
}

uint64_t rsm_fsm_job_seq(const struct rsm_fsm *f)
{
    return f->job_seq;
}

unsigned rsm_fsm_jobs(const struct rsm_fsm *f,
                      int state,
                      const struct rsm_job **out,
                      unsigned max)
{
    const struct rsm__vec *v = &f->jobs_all;
    unsigned n = 0;
    if (state >= 0 && !rsm_job_state_is_finished((unsigned)state)) {
        v = &f->jobs_active;
    }
    if (state < 0 && max == 0) {
        return rsm_fsm_job_count(f);
    }
    for (unsigned i = v->n; i > 0; i--) {
        const struct rsm__job *r = v->v[i - 1];
        if (r == NULL || (state >= 0 && r->job.state != (unsigned)state)) {
            continue;
        }
        if (n < max) {
            out[n] = &r->job;
        }
        n++;
    }
    return n;
}

unsigned rsm_fsm_claimable(const struct rsm_fsm *f,
                           const struct rsm_job **out,
                           unsigned max)
{
    unsigned n = 0;
    for (unsigned i = 0; i < f->jobs_active.n; i++) {
        const struct rsm__job *r = f->jobs_active.v[i];
        if (r == NULL || (r->job.state != RSM_JOB_PENDING &&
                          r->job.state != RSM_JOB_RETRY_WAIT)) {
            continue;
        }
        if (n < max) {
            out[n] = &r->job;
        }
        n++;
    }
    return n;
}

unsigned rsm_fsm_jobs_of_node(const struct rsm_fsm *f,
                              uint64_t node,
                              const struct rsm_job **out,
                              unsigned max)
{
    unsigned n = 0;
    for (unsigned i = 0; i < f->jobs_active.n; i++) {
        const struct rsm__job *r = f->jobs_active.v[i];
        if (r == NULL || node == 0 || r->job.node != node) {
            continue;
        }
        if (n < max) {
            out[n] = &r->job;
        }
        n++;
    }
    return n;
}

unsigned rsm_fsm_job_chunks(const struct rsm_fsm *f,
                            uint64_t seq,
                            const struct rsm_chunk **out,
                            unsigned max)
{
    const struct rsm__job *r = map_get_u64(&f->jobs, seq);
    unsigned n = 0;
    if (r == NULL) {
        return 0;
    }
    for (unsigned i = 0; i < r->n_head; i++, n++) {
        if (n < max) {
            out[n] = &r->chunks[i];
        }
    }
    for (unsigned i = r->tail_start; i < r->n_chunk; i++, n++) {
        if (n < max) {
            out[n] = &r->chunks[i];
        }
    }
    return n;
}

int rsm_chunk_decode(const struct rsm_chunk *c, char *out)
{
    int n;
    if (c->data == NULL || c->comp_len == 0 || c->raw_len == 0 ||
        c->raw_len > RSM_CHUNK_RAW_MAX) {
        return ERR_MALFORMED;
    }
    n = LZ4_decompress_safe(c->data, out, (int)c->comp_len, (int)c->raw_len);
    return n == (int)c->raw_len ? 0 : ERR_MALFORMED;
}
