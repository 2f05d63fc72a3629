/* Local attempts of the scheduler runtime: spawning granted jobs, their
 * output flow control, finishing them, killing stale ones
 * (docs/sched.md). */
#include <inttypes.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sched/sched_int.h"
#include "util.h"

#define MOD "sched"

#define ENV_MAX (8 + RSM_ENV_MAX + 8)

/* ---------------------------------------------------------------------- */
/* Runs                                                                   */
/* ---------------------------------------------------------------------- */

struct sched_run *sched__run_get(const struct sched *s, uint64_t job)
{
    return map_get_u64(&s->runs, job);
}

static void run_drop_queue(struct sched_run *r)
{
    struct sched_chunk *c = r->q_head;
    while (c != NULL) {
        struct sched_chunk *next = c->next;
        free(c->data);
        free(c);
        c = next;
    }
    r->q_head = r->q_tail = NULL;
    r->q_bytes = 0;
    r->dropped = 0;
}

/* The attempt's process is gone: its slot is free for the next claim even
 * though its output and FINISH may still be on their way through Raft (a
 * slot is capacity for processes, and waiting for the commit would idle
 * it for several round trips per job). */
void sched__run_exited(struct sched *s, struct sched_run *r)
{
    if (!r->exited) {
        r->exited = true;
        if (map_get_u64(&s->runs, r->job) == r) {
            s->n_exited++;
        }
    }
}

/* The attempt leaves the queue of granted jobs waiting for a slot
 * (spawned, or over without a process). */
static void run_leave_waiting(struct sched *s, struct sched_run *r)
{
    if (r->waiting) {
        r->waiting = false;
        if (map_get_u64(&s->runs, r->job) == r) {
            s->n_waiting--;
        }
    }
}

void sched__run_free(struct sched *s, struct sched_run *r)
{
    if (map_get_u64(&s->runs, r->job) == r) {
        map_del_u64(&s->runs, r->job);
        s->n_runs--;
        if (r->exited) {
            s->n_exited--;
        }
        if (r->waiting) {
            s->n_waiting--;
        }
    }
    run_drop_queue(r);
    free(r);
}

static void maybe_finish(struct sched *s, struct sched_run *r);

/* Free the run once nothing more can happen to it. */
static void run_maybe_free(struct sched *s, struct sched_run *r)
{
    if (r->spawned && !r->exited) {
        return; /* the exit callback is still due */
    }
    if (r->stale) {
        sched__run_free(s, r);
    }
}

/* Mark the run stale: kill its process (if any) and never propose for it
 * again. */
static void run_make_stale(struct sched *s,
                           struct sched_run *r,
                           const char *why)
{
    if (r->stale) {
        return;
    }
    r->stale = true;
    run_leave_waiting(s, r);
    run_drop_queue(r);
    if (r->spawned && !r->exited && !r->kill_sent) {
        LOGW(MOD, "%s epoch %" PRIu64 ": %s; killing", r->job_id, r->epoch,
             why);
        r->kill_sent = true;
        exec_kill(&s->exec, r->job_id, EXEC_CANCELLED);
    }
    run_maybe_free(s, r);
}

/* Compare a run with the replicated job: stale runs are killed, cancel
 * requests are honoured. May free r. */
static void run_validate(struct sched *s, struct sched_run *r)
{
    const struct rsm_job *j = rsm_fsm_job(sched__fsm(s), r->job);
    if (r->stale) {
        return;
    }
    if (j == NULL || j->epoch != r->epoch || j->node != s->cfg.node_id ||
        (j->state != RSM_JOB_CLAIMED && j->state != RSM_JOB_RUNNING)) {
        run_make_stale(s, r, "no longer held by this node at this epoch");
        return;
    }
    if (j->cancel_requested && r->waiting) {
        /* Cancelled before it got a slot: over without a process. */
        LOGI(MOD, "%s: cancelled while waiting for a slot", r->job_id);
        run_leave_waiting(s, r);
        sched__run_exited(s, r);
        r->end = RSM_END_CANCELLED;
        r->exit_code = 0;
        r->signal = 0;
        maybe_finish(s, r);
        return;
    }
    if (j->cancel_requested && r->spawned && !r->exited && !r->kill_sent) {
        LOGI(MOD, "%s: cancel requested; killing", r->job_id);
        r->kill_sent = true;
        exec_kill(&s->exec, r->job_id, EXEC_CANCELLED);
    }
}

void sched__validate_runs(struct sched *s)
{
    size_t cap = map_count(&s->runs);
    uint64_t *keys;
    struct map_iter it;
    uint64_t key;
    void *v;
    size_t n = 0;

    if (cap == 0) {
        return;
    }
    /* Collect the keys first: validation may free runs (modifying the
     * map). Every run is visited once, however many a node holds. */
    keys = malloc(cap * sizeof *keys);
    if (keys == NULL) {
        LOGW(MOD, "out of memory validating runs; next apply retries");
        return;
    }
    map_iter_init(&it, &s->runs);
    while (n < cap && map_iter_next(&it, NULL, &key, &v)) {
        const struct sched_run *r = v;
        if (!r->stale) {
            keys[n++] = key;
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct sched_run *r = map_get_u64(&s->runs, keys[i]);
        if (r != NULL && !r->stale) {
            run_validate(s, r);
        }
    }
    free(keys);
}

/* ---------------------------------------------------------------------- */
/* Output                                                                 */
/* ---------------------------------------------------------------------- */

static int queue_append(struct sched_run *r,
                        uint8_t stream,
                        const char *data,
                        size_t len)
{
    struct sched_chunk *t = r->q_tail;
    /* Coalesce with the tail unless it is in flight (the head while a
     * proposal is out) or the stream differs. */
    if (t != NULL && t->stream == stream &&
        t->len + len <= SCHED_OUTPUT_CHUNK &&
        !(r->out_inflight && t == r->q_head)) {
        char *d = realloc(t->data, t->len + len);
        if (d == NULL) {
            return ERR_NOMEM;
        }
        memcpy(d + t->len, data, len);
        t->data = d;
        t->len += len;
        r->q_bytes += len;
        return 0;
    }
    t = calloc(1, sizeof *t);
    if (t == NULL) {
        return ERR_NOMEM;
    }
    t->data = malloc(len);
    if (t->data == NULL) {
        free(t);
        return ERR_NOMEM;
    }
    memcpy(t->data, data, len);
    t->len = len;
    t->stream = stream;
    if (r->q_tail != NULL) {
        r->q_tail->next = t;
    } else {
        r->q_head = t;
    }
    r->q_tail = t;
    r->q_bytes += len;
    return 0;
}

/* Make room for `need` more queued bytes by dropping the OLDEST queued
 * output (never the chunk whose proposal is in flight), so that what
 * survives a burst is the job's first output (already committed) and its
 * most recent output: the same head-and-tail rule as the stored cap. A
 * marker stands where bytes were dropped. Returns false if no room can be
 * made (a single chunk larger than the bound). */
static bool make_room(struct sched_run *r, size_t need)
{
    /* The head stays if its proposal is in flight or was ever sent: its
     * outcome may be applied already, under its sequence number. */
    struct sched_chunk *keep =
        r->q_head != NULL && (r->out_inflight || r->q_head->idem[0] != '\0')
            ? r->q_head
            : NULL;
    struct sched_chunk *first = keep != NULL ? keep->next : r->q_head;
    struct sched_chunk *marker = NULL;
    uint64_t dropped = 0;
    char msg[96];
    int n;

    if (r->q_bytes + need <= SCHED_OUTPUT_QUEUE_MAX) {
        return true;
    }
    /* An earlier marker right at the drop point absorbs the new count. */
    if (first != NULL && first->stream == RSM_STREAM_KILN) {
        marker = first;
        first = first->next;
    }
    while (first != NULL &&
           r->q_bytes + need + sizeof msg > SCHED_OUTPUT_QUEUE_MAX) {
        struct sched_chunk *c = first;
        first = c->next;
        r->q_bytes -= c->len;
        dropped += c->len;
        free(c->data);
        free(c);
    }
    if (marker != NULL) {
        unsigned long long before = 0;
        sscanf(marker->data, "[kiln: %llu", &before);
        dropped += before;
        r->q_bytes -= marker->len;
        free(marker->data);
        free(marker);
    }
    /* Relink: keep -> [new marker] -> first ... tail */
    if (keep != NULL) {
        keep->next = first;
    } else {
        r->q_head = first;
    }
    if (first == NULL) {
        r->q_tail = keep;
    }
    if (dropped > 0) {
        struct sched_chunk *m = calloc(1, sizeof *m);
        n = snprintf(msg, sizeof msg,
                     "[kiln: %llu bytes dropped: output too fast]\n",
                     (unsigned long long)dropped);
        if (m != NULL && (m->data = malloc((size_t)n)) != NULL) {
            memcpy(m->data, msg, (size_t)n);
            m->len = (size_t)n;
            m->stream = RSM_STREAM_KILN;
            m->next = first;
            if (keep != NULL) {
                keep->next = m;
            } else {
                r->q_head = m;
            }
            if (first == NULL) {
                r->q_tail = m;
            }
            r->q_bytes += m->len;
        } else {
            free(m);
            r->dropped += dropped; /* reported by flush_dropped later */
        }
    }
    return r->q_bytes + need <= SCHED_OUTPUT_QUEUE_MAX;
}

/* Queue the marker of bytes dropped without a queue (out of memory). */
static void flush_dropped(struct sched_run *r)
{
    char msg[96];
    int n;
    if (r->dropped == 0 || r->q_bytes + sizeof msg > SCHED_OUTPUT_QUEUE_MAX) {
        return;
    }
    n = snprintf(msg, sizeof msg,
                 "[kiln: %" PRIu64 " bytes dropped: output too fast]\n",
                 r->dropped);
    if (queue_append(r, RSM_STREAM_KILN, msg, (size_t)n) == 0) {
        r->dropped = 0;
    }
}

/* Queue output; beyond the per-job bound the oldest queued output gives
 * way (make_room). */
static void enqueue_output(struct sched_run *r,
                           uint8_t stream,
                           const char *data,
                           size_t len)
{
    while (len > 0) {
        size_t n = len > SCHED_OUTPUT_CHUNK ? SCHED_OUTPUT_CHUNK : len;
        flush_dropped(r);
        if (!make_room(r, n) || queue_append(r, stream, data, n) != 0) {
            r->dropped += n;
        }
        data += n;
        len -= n;
    }
}

void sched__pump_output(struct sched *s, struct sched_run *r)
{
    struct sched_chunk *c;
    struct sched_prop *p;
    struct rsm_cmd cmd;
    int bound;
    int clen;
    char *buf;

    if (r->stale || r->out_inflight || s->closing) {
        return;
    }
    flush_dropped(r);
    c = r->q_head;
    if (c == NULL) {
        return;
    }
    bound = LZ4_compressBound((int)c->len);
    buf = malloc((size_t)bound);
    if (buf == NULL) {
        LOGW(MOD, "%s: out of memory compressing output", r->job_id);
        return; /* retried on the next output or scan */
    }
    clen = LZ4_compress_default(c->data, buf, (int)c->len, bound);
    if (clen <= 0) {
        free(buf);
        LOGE(MOD, "%s: LZ4 compression failed", r->job_id);
        return;
    }
    p = sched__prop_new(PROP_OUTPUT);
    if (p == NULL) {
        free(buf);
        return;
    }
    if (c->idem[0] == '\0') {
        sched__next_idem(s, c->idem);
    }
    str_copy(p->idem, sizeof p->idem, c->idem);
    p->job = r->job;
    p->epoch = r->epoch;
    rsm_cmd_init(&cmd, RSM_CMD_JOB_OUTPUT);
    cmd.u.job_output.job = r->job;
    cmd.u.job_output.epoch = r->epoch;
    cmd.u.job_output.seq = r->next_seq;
    cmd.u.job_output.stream = c->stream;
    cmd.u.job_output.raw_len = (uint32_t)c->len;
    cmd.u.job_output.len = (uint32_t)clen;
    cmd.u.job_output.data = buf; /* owned by cmd now */
    if (sched__propose(s, &cmd, p, false) == 0) {
        r->out_inflight = true;
    }
}

void sched__output_done(struct sched *s,
                        struct sched_prop *p,
                        int rv,
                        const struct rsm_result *res)
{
    struct sched_run *r = sched__run_get(s, p->job);
    struct sched_chunk *c;
    const struct rsm_job *j;
    bool pop = false;

    if (r == NULL || r->epoch != p->epoch) {
        return;
    }
    r->out_inflight = false;
    if (r->stale || rv == ERR_SHUTDOWN) {
        return;
    }
    if (rv != 0) {
        LOGW(MOD, "%s: output chunk %" PRIu64 ": %s; retrying", r->job_id,
             r->next_seq, err_str(rv));
    } else if (res->code == 0) {
        /* Stored, or a duplicate of a chunk stored before (a retry after
         * an unknown outcome): value is the job's next expected seq. */
        pop = true;
        r->next_seq = res->value > r->next_seq ? res->value : r->next_seq + 1;
    } else {
        j = rsm_fsm_job(sched__fsm(s), r->job);
        if (j == NULL || j->epoch != r->epoch || j->node != s->cfg.node_id) {
            run_make_stale(s, r, "output rejected");
            return;
        }
        LOGW(MOD, "%s: output chunk %" PRIu64 " rejected: %s (%s)", r->job_id,
             r->next_seq, err_str(res->code), res->message);
        if (j->next_chunk < r->next_seq) {
            r->next_seq = j->next_chunk; /* resend under the right seq */
        } else {
            pop = true; /* stored already, or unacceptable: skip it */
            r->next_seq = j->next_chunk;
        }
    }
    if (pop && r->q_head != NULL) {
        c = r->q_head;
        r->q_head = c->next;
        if (r->q_head == NULL) {
            r->q_tail = NULL;
        }
        r->q_bytes -= c->len;
        free(c->data);
        free(c);
    }
    sched__pump_output(s, r);
    maybe_finish(s, r);
}

/* ---------------------------------------------------------------------- */
/* Finish and start                                                       */
/* ---------------------------------------------------------------------- */

void sched__propose_finish(struct sched *s,
                           uint64_t job,
                           uint64_t epoch,
                           uint8_t end,
                           int32_t exit_code,
                           int32_t sig,
                           const char *idem,
                           bool orphan)
{
    struct rsm_cmd cmd;
    struct sched_prop *p = sched__prop_new(PROP_FINISH);
    if (p != NULL) {
        p->job = job;
        p->epoch = epoch;
        if (idem != NULL) {
            str_copy(p->idem, sizeof p->idem, idem);
        }
    }
    /* The FSM takes 0..255 (an exit code only counts with end exited). */
    exit_code = exit_code < 0 ? 0 : exit_code > 255 ? 255 : exit_code;
    sig = sig < 0 || sig > 255 ? 0 : sig;
    rsm_cmd_init(&cmd, RSM_CMD_JOB_FINISH);
    cmd.u.job_finish.job = job;
    cmd.u.job_finish.epoch = epoch;
    cmd.u.job_finish.end = end;
    cmd.u.job_finish.exit_code = exit_code;
    cmd.u.job_finish.signal = sig;
    sched__propose(s, &cmd, p, orphan);
}

/* FINISH once the process is over and all output committed. */
static void maybe_finish(struct sched *s, struct sched_run *r)
{
    if (r->stale || !r->exited || r->finish_sent || s->closing) {
        return;
    }
    flush_dropped(r);
    if (r->out_inflight || r->q_head != NULL || r->dropped > 0) {
        sched__pump_output(s, r);
        return;
    }
    r->finish_sent = true;
    if (r->finish_idem[0] == '\0') {
        sched__next_idem(s, r->finish_idem);
    }
    sched__propose_finish(s, r->job, r->epoch, r->end, r->exit_code, r->signal,
                          r->finish_idem, false);
}

void sched__finish_done(struct sched *s,
                        struct sched_prop *p,
                        int rv,
                        const struct rsm_result *res)
{
    struct sched_run *r = sched__run_get(s, p->job);
    if (r == NULL || r->epoch != p->epoch || r->stale) {
        return;
    }
    if (rv == ERR_SHUTDOWN) {
        return;
    }
    if (rv != 0) {
        LOGW(MOD, "%s: finish: %s; retrying", r->job_id, err_str(rv));
        r->finish_sent = false;
        maybe_finish(s, r);
        return;
    }
    if (res->code != 0) {
        LOGW(MOD, "%s: finish rejected: %s (%s)", r->job_id, err_str(res->code),
             res->message);
    }
    /* Committed (or moot): the attempt is over for us. */
    r->stale = true;
    run_maybe_free(s, r);
}

static void propose_start(struct sched *s, struct sched_run *r)
{
    struct rsm_cmd cmd;
    struct sched_prop *p = sched__prop_new(PROP_START);
    if (p != NULL) {
        p->job = r->job;
        p->epoch = r->epoch;
    }
    rsm_cmd_init(&cmd, RSM_CMD_JOB_START);
    cmd.u.job_start.job = r->job;
    cmd.u.job_start.epoch = r->epoch;
    sched__propose(s, &cmd, p, false);
}

void sched__start_done(struct sched *s, struct sched_prop *p, int rv)
{
    struct sched_run *r = sched__run_get(s, p->job);
    if (r == NULL || r->epoch != p->epoch || r->stale || r->finish_sent) {
        return;
    }
    if (rv != 0 && rv != ERR_SHUTDOWN && !r->start_retried) {
        r->start_retried = true;
        propose_start(s, r);
    }
}

/* ---------------------------------------------------------------------- */
/* Spawning                                                               */
/* ---------------------------------------------------------------------- */

struct envb
{
    char *v[ENV_MAX + 1];
    unsigned n;
};

static void envb_free(struct envb *e)
{
    for (unsigned i = 0; i < e->n; i++) {
        free(e->v[i]);
    }
    e->n = 0;
    e->v[0] = NULL;
}

/* Set K=V, replacing an earlier K. */
static int envb_set(struct envb *e, const char *k, const char *v)
{
    size_t kl = strlen(k);
    size_t vl = strlen(v);
    char *kv;
    unsigned i;

    if (kl == 0 || memchr(k, '=', kl) != NULL) {
        return ERR_INVALID;
    }
    kv = malloc(kl + vl + 2);
    if (kv == NULL) {
        return ERR_NOMEM;
    }
    memcpy(kv, k, kl);
    kv[kl] = '=';
    memcpy(kv + kl + 1, v, vl + 1);
    for (i = 0; i < e->n; i++) {
        if (strncmp(e->v[i], k, kl) == 0 && e->v[i][kl] == '=') {
            free(e->v[i]);
            e->v[i] = kv;
            return 0;
        }
    }
    if (e->n >= ENV_MAX) {
        free(kv);
        return ERR_TOOBIG;
    }
    e->v[e->n++] = kv;
    e->v[e->n] = NULL;
    return 0;
}

static int build_env(struct envb *e, const struct rsm_job *j, uint64_t epoch)
{
    static const char *const base[] = {"PATH", "HOME", "LANG", "TZ"};
    char buf[64];
    char ts[TIME_STRLEN];
    int rv = 0;

    e->n = 0;
    e->v[0] = NULL;
    for (unsigned i = 0; i < ARRAY_SIZE(base) && rv == 0; i++) {
        const char *v = getenv(base[i]);
        if (v != NULL) {
            rv = envb_set(e, base[i], v);
        }
    }
    for (unsigned i = 0; i < j->spec.n_env && rv == 0; i++) {
        rv = envb_set(e, j->spec.env[i].key, j->spec.env[i].value);
    }
    if (rv == 0) {
        rsm_job_id_format(j->seq, buf);
        rv = envb_set(e, "KILN_JOB_ID", buf);
    }
    if (rv == 0) {
        buf[0] = '\0';
        if (j->spec.run != 0) {
            snprintf(buf, sizeof buf, "r%" PRIu64, j->spec.run);
        }
        rv = envb_set(e, "KILN_RUN_ID", buf);
    }
    if (rv == 0) {
        rv = envb_set(e, "KILN_PIPELINE", j->spec.pipeline);
    }
    if (rv == 0) {
        snprintf(buf, sizeof buf, "%" PRIu32, j->attempt);
        rv = envb_set(e, "KILN_ATTEMPT", buf);
    }
    if (rv == 0) {
        snprintf(buf, sizeof buf, "%" PRIu64, epoch);
        rv = envb_set(e, "KILN_EPOCH", buf);
    }
    if (rv == 0) {
        rv = envb_set(e, "KILN_TARGET", j->spec.target);
    }
    if (rv == 0) {
        ts[0] = '\0';
        if (j->spec.scheduled_for_ms != 0) {
            time_format_ms(j->spec.scheduled_for_ms, ts);
        }
        rv = envb_set(e, "KILN_SCHEDULED_TIME", ts);
    }
    if (rv != 0) {
        envb_free(e);
    }
    return rv;
}

/* Spawn the granted attempt r (not waiting any more), re-reading its job:
 * the grant may have been overtaken while it waited for a slot. */
static void spawn_run(struct sched *s, struct sched_run *r)
{
    const struct rsm_job *j = rsm_fsm_job(sched__fsm(s), r->job);
    struct exec_spec spec;
    struct envb env;
    char reason[ERRMSG_SIZE];
    int rv;

    run_leave_waiting(s, r);
    if (j == NULL || j->epoch != r->epoch || j->node != s->cfg.node_id ||
        j->state != RSM_JOB_CLAIMED) {
        run_make_stale(s, r, "overtaken before it started");
        return;
    }
    if (j->cancel_requested) {
        sched__run_exited(s, r);
        r->end = RSM_END_CANCELLED;
        r->exit_code = 0;
        r->signal = 0;
        maybe_finish(s, r);
        return;
    }
    rv = build_env(&env, j, r->epoch);
    if (rv == 0) {
        memset(&spec, 0, sizeof spec);
        str_copy(spec.job_id, sizeof spec.job_id, r->job_id);
        spec.epoch = r->epoch;
        spec.argv = j->spec.argv.v;
        spec.env = env.v;
        spec.timeout_s = j->spec.timeout_s;
        rv = exec_spawn(&s->exec, &spec);
        envb_free(&env);
        if (rv != 0) {
            snprintf(reason, sizeof reason, "kiln: cannot start job: %s\n",
                     rv == ERR_BUSY ? "node is fenced" : err_str(rv));
        }
    } else {
        snprintf(reason, sizeof reason, "kiln: cannot build environment: %s\n",
                 err_str(rv));
    }
    if (rv != 0) {
        LOGW(MOD, "%s epoch %" PRIu64 ": %s", r->job_id, r->epoch, reason);
        sched__run_exited(s, r);
        r->end = rv == ERR_BUSY ? RSM_END_FENCED : RSM_END_SPAWN_FAILED;
        r->exit_code = 127;
        r->signal = 0;
        enqueue_output(r, RSM_STREAM_KILN, reason, strlen(reason));
        maybe_finish(s, r);
        return;
    }
    r->spawned = true;
    LOGD(MOD, "%s attempt %" PRIu32 " epoch %" PRIu64 " started", r->job_id,
         r->attempt, r->epoch);
    propose_start(s, r);
}

/* A granted job may start now. Not while the executor helper is being
 * restarted: the job keeps waiting (a spawn would fail it as
 * spawn_failed); the scan timer dispatches once the helper is back. */
static bool slot_free(const struct sched *s)
{
    return sched_processes(s) < s->cfg.slots && !sched_is_fenced(s) &&
           !s->closing && exec_ready(&s->exec);
}

void sched__dispatch(struct sched *s)
{
    while (s->n_waiting > 0 && slot_free(s)) {
        struct sched_run *oldest = NULL;
        struct map_iter it;
        uint64_t key;
        void *v;
        map_iter_init(&it, &s->runs);
        while (map_iter_next(&it, NULL, &key, &v)) {
            struct sched_run *r = v;
            if (r->waiting && (oldest == NULL || r->job < oldest->job)) {
                oldest = r;
            }
        }
        if (oldest == NULL) {
            LOGE(MOD, "%u waiting attempts counted, none found", s->n_waiting);
            s->n_waiting = 0;
            return;
        }
        spawn_run(s, oldest);
    }
}

/* The claim granted this node the job at epoch: record the attempt and
 * start it now if a slot is free, else when one frees (claim-ahead). */
static void start_run(struct sched *s, const struct rsm_job *j, uint64_t epoch)
{
    struct sched_run *r;

    r = calloc(1, sizeof *r);
    if (r == NULL) {
        LOGE(MOD, "j%" PRIu64 ": out of memory; reporting lost", j->seq);
        sched__propose_finish(s, j->seq, epoch, RSM_END_LOST, 0, 0, NULL,
                              false);
        return;
    }
    r->job = j->seq;
    r->epoch = epoch;
    r->attempt = j->attempt;
    r->next_seq = j->next_chunk;
    rsm_job_id_format(j->seq, r->job_id);
    if (map_put_u64(&s->runs, r->job, r, NULL) != 0) {
        free(r);
        sched__propose_finish(s, j->seq, epoch, RSM_END_LOST, 0, 0, NULL,
                              false);
        return;
    }
    s->n_runs++;
    r->waiting = true;
    s->n_waiting++;
    if (slot_free(s) || sched_is_fenced(s)) {
        /* Fenced: spawn now, so exec refuses it and the attempt ends as
         * fenced at once, as without claim-ahead. */
        spawn_run(s, r);
    } else {
        LOGD(MOD, "%s epoch %" PRIu64 ": granted; waiting for a slot",
             r->job_id, epoch);
    }
}

/* A JOB_CLAIM applied that granted this node the job. */
void sched__on_grant(struct sched *s,
                     const struct rsm_cmd *cmd,
                     const struct rsm_result *res)
{
    uint64_t seq = cmd->u.job_claim.job;
    uint64_t epoch = res->value;
    struct sched_prop *p = map_get_u64(&s->claims, seq);
    const struct rsm_job *j;
    const struct sched_run *r;

    if (p != NULL && strcmp(p->idem, cmd->idem_key) == 0) {
        map_del_u64(&s->claims, seq);
        s->claims_inflight--;
        p->granted = true;
    }
    if (!sched__idem_is_mine(s, cmd->idem_key)) {
        /* Replayed from an earlier incarnation: its process died with it;
         * restart recovery reports the attempt lost. */
        return;
    }
    if (s->closing || !s->started) {
        sched__propose_finish(s, seq, epoch, RSM_END_RELEASED, 0, 0, NULL,
                              true);
        return;
    }
    r = sched__run_get(s, seq);
    if (r != NULL && r->epoch == epoch) {
        /* The same grant reported again: a claim that applied twice under
         * its idempotency key (a forward retried after a lost answer)
         * yields the stored result once more. This attempt is ours and
         * already running; ending it as lost would let a new attempt start
         * while its process lives. */
        return;
    }
    j = rsm_fsm_job(sched__fsm(s), seq);
    if (j == NULL || j->epoch != epoch || j->node != s->cfg.node_id ||
        j->state != RSM_JOB_CLAIMED) {
        return; /* the same entry already moved the job on */
    }
    if (j->cancel_requested) {
        sched__propose_finish(s, seq, epoch, RSM_END_CANCELLED, 0, 0, NULL,
                              false);
        return;
    }
    if (r != NULL) {
        /* An older attempt's process is still here (being killed): never
         * two at once. */
        sched__propose_finish(s, seq, epoch, RSM_END_LOST, 0, 0, NULL, false);
        return;
    }
    start_run(s, j, epoch);
}

/* ---------------------------------------------------------------------- */
/* exec callbacks                                                         */
/* ---------------------------------------------------------------------- */

static struct sched_run *run_of(struct sched *s,
                                const char *job_id,
                                uint64_t epoch)
{
    uint64_t seq;
    struct sched_run *r;
    if (rsm_job_id_parse(job_id, &seq) != 0) {
        return NULL;
    }
    r = sched__run_get(s, seq);
    if (r == NULL || r->epoch != epoch) {
        return NULL;
    }
    return r;
}

void sched__exec_output_cb(struct exec *x,
                           const char *job_id,
                           uint64_t epoch,
                           int stream,
                           const char *data,
                           size_t len,
                           void *ud)
{
    struct sched *s = ud;
    struct sched_run *r = run_of(s, job_id, epoch);
    (void)x;
    if (r == NULL || r->stale || s->closing || len == 0) {
        return;
    }
    enqueue_output(r, stream == 2 ? RSM_STREAM_STDERR : RSM_STREAM_STDOUT, data,
                   len);
    sched__pump_output(s, r);
}

static uint8_t end_of(enum exec_end e)
{
    switch (e) {
        case EXEC_EXITED:
            return RSM_END_EXITED;
        case EXEC_SIGNALED:
            return RSM_END_SIGNALED;
        case EXEC_TIMEOUT:
            return RSM_END_TIMEOUT;
        case EXEC_CANCELLED:
            return RSM_END_CANCELLED;
        case EXEC_FENCED:
            return RSM_END_FENCED;
        case EXEC_SPAWN_FAILED:
            return RSM_END_SPAWN_FAILED;
        case EXEC_LOST:
            return RSM_END_LOST;
    }
    return RSM_END_LOST;
}

void sched__exec_exit_cb(struct exec *x,
                         const char *job_id,
                         uint64_t epoch,
                         const struct exec_result *res,
                         void *ud)
{
    struct sched *s = ud;
    struct sched_run *r = run_of(s, job_id, epoch);
    (void)x;
    if (r == NULL) {
        return;
    }
    sched__run_exited(s, r);
    r->end = end_of(res->end);
    r->exit_code = res->exit_code;
    r->signal = res->signal < 0 || res->signal > 255 ? 0 : res->signal;
    LOGD(MOD, "%s epoch %" PRIu64 " ended: %s exit %d signal %d", job_id, epoch,
         exec_end_str(res->end), res->exit_code, res->signal);
    if (s->closing) {
        /* Shutdown killed it: the process is dead now, so the attempt can
         * be released at once instead of waiting for lease expiry. */
        if (!r->stale && !r->finish_sent) {
            sched__propose_finish(s, r->job, r->epoch, RSM_END_LOST, 0, 0, NULL,
                                  true);
        }
        r->stale = true;
        run_maybe_free(s, r);
        return;
    }
    if (r->stale) {
        run_maybe_free(s, r);
    } else {
        maybe_finish(s, r);
    }
    sched__dispatch(s);
}
