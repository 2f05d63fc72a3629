/* The per-node scheduler runtime: lease renewal and self-fencing, the claim
 * scan, running granted jobs through exec, output and finish proposals,
 * leader-side lease expiry and restart recovery (docs/sched.md). */
#include "sched/sched.h"

#include <inttypes.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "sched/sched_policy.h"
#include "util.h"

#define MOD "sched"

#define EXPIRE_TICK_MS 250 /* leader expiry checks */
#define ENV_MAX (8 + RSM_ENV_MAX + 8)
#define EXPIRED_MAX 1024  /* remembered (node, lease_until) expiries */
#define CLAIM_HOLD_MS 250 /* after a rejected claim of a job */

extern char **environ;

enum prop_kind {
    PROP_RENEW = 0,
    PROP_EXPIRE,
    PROP_CLAIM,
    PROP_START,
    PROP_OUTPUT,
    PROP_FINISH
};

/* An in-flight proposal. Allocated by the proposer, freed in prop_cb. On
 * sched_close every context is orphaned (s = NULL): rsm still calls back
 * (at the latest with ERR_SHUTDOWN in rsm_close) and the callback only
 * frees it. */
struct sched_prop
{
    struct sched_prop *prev, *next; /* s->props list while s != NULL */
    struct sched *s;                /* borrowed; NULL once orphaned */
    enum prop_kind kind;
    uint64_t job;   /* job seq (claim/start/output/finish) */
    uint64_t epoch; /* start/output/finish */
    uint64_t node;  /* expire */
    uint32_t attempt;
    int64_t lease_until; /* expire: the value that was expired */
    uint64_t t_sent;     /* renew: time_mono_ms() when proposed */
    bool granted;        /* claim: the grant was seen in on_applied */
    char idem[RSM_IDEM_MAX + 1];
};

/* One queued output chunk (raw bytes). */
struct sched_chunk
{
    struct sched_chunk *next;
    uint8_t stream; /* enum rsm_stream */
    size_t len;
    char idem[RSM_IDEM_MAX + 1]; /* set at the first proposal, reused */
    char *data;                  /* owned */
};

/* A local attempt: from the grant until its finish committed (or it turned
 * stale and its process is gone). */
struct sched_run
{
    uint64_t job; /* seq */
    uint64_t epoch;
    uint32_t attempt;
    char job_id[RSM_JOB_ID_MAX];
    bool spawned;     /* exec accepted it: one exit callback pending */
    bool exited;      /* exit seen (or never spawned) */
    bool stale;       /* the FSM moved on: propose nothing more */
    bool kill_sent;   /* exec_kill issued */
    bool finish_sent; /* FINISH proposed (maybe retried) */
    bool start_retried;
    uint8_t end; /* enum rsm_job_end for FINISH */
    int32_t exit_code;
    int32_t signal;
    char finish_idem[RSM_IDEM_MAX + 1];
    /* Output flow control: one chunk in flight, the head of the queue. */
    struct sched_chunk *q_head, *q_tail;
    size_t q_bytes;
    uint64_t dropped; /* raw bytes dropped, marker not yet queued */
    bool out_inflight;
    uint64_t next_seq; /* seq of the queue head */
};

struct sched_seen
{
    uint64_t first_ms;   /* time_mono_ms when first seen claimable */
    uint64_t gen;        /* scan generation that last saw it */
    uint64_t hold_until; /* no claim before (after a rejected claim) */
};

struct sched_expired
{
    uint64_t node;
    int64_t until;
};

/* ---------------------------------------------------------------------- */
/* Small helpers                                                          */
/* ---------------------------------------------------------------------- */

static const struct rsm_fsm *fsm(const struct sched *s)
{
    return rsm_state(s->rsm);
}

static void next_idem(struct sched *s, char *out)
{
    snprintf(out, RSM_IDEM_MAX + 1, "%s%" PRIu64, s->idem_prefix,
             ++s->idem_counter);
}

static bool idem_is_mine(const struct sched *s, const char *key)
{
    size_t n = strlen(s->idem_prefix);
    return strncmp(key, s->idem_prefix, n) == 0;
}

static void prop_link(struct sched *s, struct sched_prop *p)
{
    p->s = s;
    p->prev = NULL;
    p->next = s->props;
    if (s->props != NULL) {
        s->props->prev = p;
    }
    s->props = p;
}

static void prop_unlink(struct sched *s, struct sched_prop *p)
{
    if (p->prev != NULL) {
        p->prev->next = p->next;
    } else {
        s->props = p->next;
    }
    if (p->next != NULL) {
        p->next->prev = p->prev;
    }
    p->prev = p->next = NULL;
}

static struct sched_prop *prop_new(enum prop_kind kind)
{
    struct sched_prop *p = calloc(1, sizeof *p);
    if (p != NULL) {
        p->kind = kind;
    }
    return p;
}

static void prop_cb(void *data, int rv, const struct rsm_result *res);

/* Propose cmd with context p (linked to s unless orphan). The command's
 * idempotency key is p->idem (generated if empty). Takes ownership of cmd
 * and p in every case. */
static int propose(struct sched *s,
                   struct rsm_cmd *cmd,
                   struct sched_prop *p,
                   bool orphan)
{
    int rv;
    if (p == NULL) {
        rsm_cmd_clear(cmd);
        return ERR_NOMEM;
    }
    if (p->idem[0] == '\0') {
        next_idem(s, p->idem);
    }
    str_copy(cmd->idem_key, sizeof cmd->idem_key, p->idem);
    if (orphan) {
        p->s = NULL;
    } else {
        prop_link(s, p);
    }
    rv = rsm_propose(s->rsm, cmd, prop_cb, p);
    if (rv != 0) {
        if (!orphan) {
            prop_unlink(s, p);
        }
        free(p);
        LOGW(MOD, "propose: %s", err_str(rv));
    }
    return rv;
}

static void idle_cb(uv_idle_t *h);

/* Scan once in this loop iteration's idle phase: it runs before rsm's
 * prepare handle flushes the proposal queue, so claims leave at once, and
 * any number of applies in one iteration cost one scan. */
static void request_scan(struct sched *s)
{
    if (s->started && !s->closing && !uv_is_active((uv_handle_t *)&s->idle)) {
        uv_idle_start(&s->idle, idle_cb);
    }
}

/* ---------------------------------------------------------------------- */
/* Runs                                                                   */
/* ---------------------------------------------------------------------- */

static struct sched_run *run_get(const struct sched *s, uint64_t job)
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

static void run_free(struct sched *s, struct sched_run *r)
{
    if (map_get_u64(&s->runs, r->job) == r) {
        map_del_u64(&s->runs, r->job);
        s->n_runs--;
    }
    run_drop_queue(r);
    free(r);
}

/* Free the run once nothing more can happen to it. */
static void run_maybe_free(struct sched *s, struct sched_run *r)
{
    if (r->spawned && !r->exited) {
        return; /* the exit callback is still due */
    }
    if (r->stale) {
        run_free(s, r);
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
    const struct rsm_job *j = rsm_fsm_job(fsm(s), r->job);
    if (r->stale) {
        return;
    }
    if (j == NULL || j->epoch != r->epoch || j->node != s->cfg.node_id ||
        (j->state != RSM_JOB_CLAIMED && j->state != RSM_JOB_RUNNING)) {
        run_make_stale(s, r, "no longer held by this node at this epoch");
        return;
    }
    if (j->cancel_requested && r->spawned && !r->exited && !r->kill_sent) {
        LOGI(MOD, "%s: cancel requested; killing", r->job_id);
        r->kill_sent = true;
        exec_kill(&s->exec, r->job_id, EXEC_CANCELLED);
    }
}

static void validate_all_runs(struct sched *s)
{
    struct sched_run *list[256];
    struct map_iter it;
    uint64_t key;
    void *v;
    unsigned n;

    /* Collect first: validation may free runs (modifying the map). */
    do {
        n = 0;
        map_iter_init(&it, &s->runs);
        while (n < ARRAY_SIZE(list) && map_iter_next(&it, NULL, &key, &v)) {
            struct sched_run *r = v;
            if (!r->stale) {
                list[n++] = r;
            }
        }
        for (unsigned i = 0; i < n; i++) {
            run_validate(s, list[i]);
        }
    } while (n == ARRAY_SIZE(list));
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

/* Queue the "bytes dropped" marker once there is room again. */
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

/* Queue output; beyond the per-job bound it is dropped and counted. */
static void enqueue_output(struct sched_run *r,
                           uint8_t stream,
                           const char *data,
                           size_t len)
{
    while (len > 0) {
        size_t n = len > SCHED_OUTPUT_CHUNK ? SCHED_OUTPUT_CHUNK : len;
        flush_dropped(r);
        if (r->dropped > 0 || r->q_bytes + n > SCHED_OUTPUT_QUEUE_MAX ||
            queue_append(r, stream, data, n) != 0) {
            r->dropped += n;
        }
        data += n;
        len -= n;
    }
}

static void maybe_finish(struct sched *s, struct sched_run *r);

static void pump_output(struct sched *s, struct sched_run *r)
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
    p = prop_new(PROP_OUTPUT);
    if (p == NULL) {
        free(buf);
        return;
    }
    if (c->idem[0] == '\0') {
        next_idem(s, c->idem);
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
    if (propose(s, &cmd, p, false) == 0) {
        r->out_inflight = true;
    }
}

static void output_done(struct sched *s,
                        struct sched_prop *p,
                        int rv,
                        const struct rsm_result *res)
{
    struct sched_run *r = run_get(s, p->job);
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
        j = rsm_fsm_job(fsm(s), r->job);
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
    pump_output(s, r);
    maybe_finish(s, r);
}

/* ---------------------------------------------------------------------- */
/* Finish and start                                                       */
/* ---------------------------------------------------------------------- */

static void propose_finish_cmd(struct sched *s,
                               uint64_t job,
                               uint64_t epoch,
                               uint8_t end,
                               int32_t exit_code,
                               int32_t sig,
                               const char *idem,
                               bool orphan)
{
    struct rsm_cmd cmd;
    struct sched_prop *p = prop_new(PROP_FINISH);
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
    propose(s, &cmd, p, orphan);
}

/* FINISH once the process is over and all output committed. */
static void maybe_finish(struct sched *s, struct sched_run *r)
{
    if (r->stale || !r->exited || r->finish_sent || s->closing) {
        return;
    }
    flush_dropped(r);
    if (r->out_inflight || r->q_head != NULL || r->dropped > 0) {
        pump_output(s, r);
        return;
    }
    r->finish_sent = true;
    if (r->finish_idem[0] == '\0') {
        next_idem(s, r->finish_idem);
    }
    propose_finish_cmd(s, r->job, r->epoch, r->end, r->exit_code, r->signal,
                       r->finish_idem, false);
}

static void finish_done(struct sched *s,
                        struct sched_prop *p,
                        int rv,
                        const struct rsm_result *res)
{
    struct sched_run *r = run_get(s, p->job);
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
    struct sched_prop *p = prop_new(PROP_START);
    if (p != NULL) {
        p->job = r->job;
        p->epoch = r->epoch;
    }
    rsm_cmd_init(&cmd, RSM_CMD_JOB_START);
    cmd.u.job_start.job = r->job;
    cmd.u.job_start.epoch = r->epoch;
    propose(s, &cmd, p, false);
}

static void start_done(struct sched *s, struct sched_prop *p, int rv)
{
    struct sched_run *r = run_get(s, p->job);
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

/* The claim granted this node the job at epoch: start it. */
static void start_run(struct sched *s, const struct rsm_job *j, uint64_t epoch)
{
    struct sched_run *r;
    struct exec_spec spec;
    struct envb env;
    char reason[ERRMSG_SIZE];
    int rv;

    r = calloc(1, sizeof *r);
    if (r == NULL) {
        LOGE(MOD, "j%" PRIu64 ": out of memory; reporting lost", j->seq);
        propose_finish_cmd(s, j->seq, epoch, RSM_END_LOST, 0, 0, NULL, false);
        return;
    }
    r->job = j->seq;
    r->epoch = epoch;
    r->attempt = j->attempt;
    r->next_seq = j->next_chunk;
    rsm_job_id_format(j->seq, r->job_id);
    if (map_put_u64(&s->runs, r->job, r, NULL) != 0) {
        free(r);
        propose_finish_cmd(s, j->seq, epoch, RSM_END_LOST, 0, 0, NULL, false);
        return;
    }
    s->n_runs++;

    rv = build_env(&env, j, epoch);
    if (rv == 0) {
        memset(&spec, 0, sizeof spec);
        str_copy(spec.job_id, sizeof spec.job_id, r->job_id);
        spec.epoch = epoch;
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
        LOGW(MOD, "%s epoch %" PRIu64 ": %s", r->job_id, epoch, reason);
        r->exited = true;
        r->end = rv == ERR_BUSY ? RSM_END_FENCED : RSM_END_SPAWN_FAILED;
        r->exit_code = 127;
        r->signal = 0;
        enqueue_output(r, RSM_STREAM_KILN, reason, strlen(reason));
        maybe_finish(s, r);
        return;
    }
    r->spawned = true;
    LOGD(MOD, "%s attempt %" PRIu32 " epoch %" PRIu64 " started", r->job_id,
         r->attempt, epoch);
    propose_start(s, r);
}

/* A JOB_CLAIM applied that granted this node the job. */
static void on_grant(struct sched *s,
                     const struct rsm_cmd *cmd,
                     const struct rsm_result *res)
{
    uint64_t seq = cmd->u.job_claim.job;
    uint64_t epoch = res->value;
    struct sched_prop *p = map_get_u64(&s->claims, seq);
    const struct rsm_job *j;

    if (p != NULL && strcmp(p->idem, cmd->idem_key) == 0) {
        map_del_u64(&s->claims, seq);
        s->claims_inflight--;
        p->granted = true;
    }
    if (!idem_is_mine(s, cmd->idem_key)) {
        /* Replayed from an earlier incarnation: its process died with it;
         * restart recovery reports the attempt lost. */
        return;
    }
    if (s->closing || !s->started) {
        propose_finish_cmd(s, seq, epoch, RSM_END_LOST, 0, 0, NULL, true);
        return;
    }
    j = rsm_fsm_job(fsm(s), seq);
    if (j == NULL || j->epoch != epoch || j->node != s->cfg.node_id ||
        j->state != RSM_JOB_CLAIMED) {
        return; /* the same entry already moved the job on */
    }
    if (j->cancel_requested) {
        propose_finish_cmd(s, seq, epoch, RSM_END_CANCELLED, 0, 0, NULL, false);
        return;
    }
    if (run_get(s, seq) != NULL) {
        /* An older attempt's process is still here (being killed): never
         * two at once. */
        propose_finish_cmd(s, seq, epoch, RSM_END_LOST, 0, 0, NULL, false);
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
    r = run_get(s, seq);
    if (r == NULL || r->epoch != epoch) {
        return NULL;
    }
    return r;
}

static void on_exec_output_cb(struct exec *x,
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
    pump_output(s, r);
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

static void on_exec_exit_cb(struct exec *x,
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
    r->exited = true;
    r->end = end_of(res->end);
    r->exit_code = res->exit_code;
    r->signal = res->signal < 0 || res->signal > 255 ? 0 : res->signal;
    LOGD(MOD, "%s epoch %" PRIu64 " ended: %s exit %d signal %d", job_id, epoch,
         exec_end_str(res->end), res->exit_code, res->signal);
    if (s->closing) {
        /* Shutdown killed it: the process is dead now, so the attempt can
         * be released at once instead of waiting for lease expiry. */
        if (!r->stale && !r->finish_sent) {
            propose_finish_cmd(s, r->job, r->epoch, RSM_END_LOST, 0, 0, NULL,
                               true);
        }
        r->stale = true;
        run_maybe_free(s, r);
        return;
    }
    if (r->stale) {
        run_maybe_free(s, r);
        return;
    }
    maybe_finish(s, r);
}

/* ---------------------------------------------------------------------- */
/* Lease and fence                                                        */
/* ---------------------------------------------------------------------- */

static void propose_renew(struct sched *s)
{
    struct rsm_cmd cmd;
    struct sched_prop *p;

    if (s->renew_inflight >= SCHED_RENEW_INFLIGHT_MAX || s->hold_renewals) {
        return; /* earlier ones are still waiting for a leader */
    }
    p = prop_new(PROP_RENEW);
    if (p == NULL) {
        return;
    }
    p->t_sent = time_mono_ms();
    rsm_cmd_init(&cmd, RSM_CMD_NODE_RENEW);
    cmd.u.node_renew.node = s->cfg.node_id;
    cmd.u.node_renew.lease_ms = s->cfg.lease_ms;
    if (propose(s, &cmd, p, false) == 0) {
        s->renew_inflight++;
    }
}

static void recover(struct sched *s);

static void renew_done(struct sched *s,
                       struct sched_prop *p,
                       int rv,
                       const struct rsm_result *res)
{
    uint64_t deadline;
    uint64_t now;

    s->renew_inflight--;
    if (rv != 0) {
        LOGD(MOD, "renewal: %s", err_str(rv));
        return;
    }
    if (res->code != 0) {
        LOGW(MOD, "renewal rejected: %s (%s)", err_str(res->code),
             res->message);
        return;
    }
    deadline = p->t_sent + s->cfg.lease_ms - s->cfg.fence_margin_ms;
    now = time_mono_ms();
    if (deadline > s->fence_deadline) {
        s->fence_deadline = deadline;
        if (deadline > now) {
            exec_fence_extend(&s->exec, (unsigned)(deadline - now));
        } else {
            LOGW(MOD, "renewal committed too late (%" PRIu64 " ms)",
                 now - p->t_sent);
            exec_fence_now(&s->exec);
        }
    }
    if (!s->recovered && !sched_is_fenced(s)) {
        /* The local replica applied this renewal, so it holds every claim
         * an earlier incarnation of this node made. */
        recover(s);
    }
    request_scan(s);
}

/* Every job the FSM shows held by this node that no local attempt runs was
 * started by an earlier incarnation (killed by its fence helper when that
 * agent died): report it lost. */
static void recover(struct sched *s)
{
    const struct rsm_job *jobs[256];
    unsigned n;
    unsigned i;
    const struct sched_prop *p;

    s->recovered = true;
    s->last_recovery = time_mono_ms();
    n = rsm_fsm_jobs_of_node(fsm(s), s->cfg.node_id, jobs, ARRAY_SIZE(jobs));
    if (n > ARRAY_SIZE(jobs)) {
        n = ARRAY_SIZE(jobs); /* the rest next time */
    }
    for (i = 0; i < n; i++) {
        const struct rsm_job *j = jobs[i];
        const struct sched_run *r = run_get(s, j->seq);
        bool pending = false;
        if (r != NULL && r->epoch == j->epoch) {
            continue;
        }
        if (r != NULL && !r->stale) {
            continue; /* being handled by the grant path */
        }
        for (p = s->props; p != NULL; p = p->next) {
            if ((p->kind == PROP_FINISH && p->job == j->seq &&
                 p->epoch == j->epoch) ||
                (p->kind == PROP_CLAIM && p->job == j->seq)) {
                pending = true;
                break;
            }
        }
        if (pending) {
            continue;
        }
        LOGW(MOD,
             "j%" PRIu64 " epoch %" PRIu64
             " is held by this node but not running here: reporting lost",
             j->seq, j->epoch);
        propose_finish_cmd(s, j->seq, j->epoch, RSM_END_LOST, 0, 0, NULL,
                           false);
    }
}

static void renew_timer_cb(uv_timer_t *t)
{
    struct sched *s = t->data;
    if (!s->closing) {
        propose_renew(s);
    }
}

/* ---------------------------------------------------------------------- */
/* Leader expiry                                                          */
/* ---------------------------------------------------------------------- */

struct sched_expired_set
{
    struct sched_expired v[EXPIRED_MAX];
    unsigned n;
};

static struct sched_expired_set *expired_set(struct sched *s)
{
    return s->expired_set;
}

static bool expired_has(struct sched *s, uint64_t node, int64_t until)
{
    struct sched_expired_set *e = expired_set(s);
    for (unsigned i = 0; i < e->n; i++) {
        if (e->v[i].node == node && e->v[i].until == until) {
            return true;
        }
    }
    return false;
}

static void expired_put(struct sched *s, uint64_t node, int64_t until)
{
    struct sched_expired_set *e = expired_set(s);
    for (unsigned i = 0; i < e->n; i++) {
        if (e->v[i].node == node) {
            e->v[i].until = until;
            return;
        }
    }
    if (e->n < EXPIRED_MAX) {
        e->v[e->n].node = node;
        e->v[e->n].until = until;
        e->n++;
    }
}

static void expired_forget(struct sched *s, uint64_t node)
{
    struct sched_expired_set *e = expired_set(s);
    for (unsigned i = 0; i < e->n; i++) {
        if (e->v[i].node == node) {
            e->v[i] = e->v[--e->n];
            return;
        }
    }
}

static void check_expiry(struct sched *s)
{
    const struct rsm_member *ms[256];
    unsigned n;
    int64_t now = time_wall_ms();

    n = rsm_fsm_members(fsm(s), ms, ARRAY_SIZE(ms));
    if (n > ARRAY_SIZE(ms)) {
        n = ARRAY_SIZE(ms);
    }
    for (unsigned i = 0; i < n; i++) {
        const struct rsm_member *m = ms[i];
        struct rsm_cmd cmd;
        struct sched_prop *p;
        if (m->lease_until_ms <= 0 ||
            now <= m->lease_until_ms + RSM_LEASE_GRACE_MS ||
            expired_has(s, m->id, m->lease_until_ms)) {
            continue;
        }
        p = prop_new(PROP_EXPIRE);
        if (p == NULL) {
            return;
        }
        p->node = m->id;
        p->lease_until = m->lease_until_ms;
        LOGI(MOD,
             "expiring the lease of node %" PRIu64 " (until %" PRId64
             ", now %" PRId64 ")",
             m->id, m->lease_until_ms, now);
        rsm_cmd_init(&cmd, RSM_CMD_NODE_EXPIRE);
        cmd.u.node_expire.node = m->id;
        if (propose(s, &cmd, p, false) == 0) {
            expired_put(s, m->id, m->lease_until_ms);
        }
    }
}

static void expire_done(struct sched *s, struct sched_prop *p, int rv)
{
    if (rv != 0) {
        expired_forget(s, p->node); /* try again on the next tick */
    }
}

static void expire_timer_cb(uv_timer_t *t)
{
    struct sched *s = t->data;
    if (s->closing) {
        return;
    }
    if (rsm_is_leader(s->rsm)) {
        check_expiry(s);
    }
    if (s->recovered && !sched_is_fenced(s) &&
        time_mono_ms() - s->last_recovery >= s->cfg.lease_ms) {
        recover(s);
    }
}

/* ---------------------------------------------------------------------- */
/* Claim scan                                                             */
/* ---------------------------------------------------------------------- */

static bool tags_match(const struct rsm_job *j, const struct sched_peer *peer)
{
    for (unsigned i = 0; i < j->spec.n_tags; i++) {
        bool found = false;
        for (unsigned k = 0; k < peer->n_tags && k < SCHED_TAGS_MAX; k++) {
            if (strcmp(peer->tags[k].key, j->spec.tags[i].key) == 0 &&
                strcmp(peer->tags[k].value, j->spec.tags[i].value) == 0) {
                found = true;
                break;
            }
        }
        if (!found) {
            return false;
        }
    }
    return true;
}

static void propose_claim(struct sched *s, const struct rsm_job *j)
{
    struct rsm_cmd cmd;
    struct sched_prop *p = prop_new(PROP_CLAIM);
    if (p == NULL) {
        return;
    }
    p->job = j->seq;
    p->attempt = j->attempt;
    next_idem(s, p->idem);
    if (map_put_u64(&s->claims, j->seq, p, NULL) != 0) {
        free(p);
        return;
    }
    rsm_cmd_init(&cmd, RSM_CMD_JOB_CLAIM);
    cmd.u.job_claim.job = j->seq;
    cmd.u.job_claim.node = s->cfg.node_id;
    cmd.u.job_claim.attempt = j->attempt;
    /* propose() frees p on failure: drop the map entry first. */
    s->claims_inflight++;
    if (propose(s, &cmd, p, false) != 0) {
        map_del_u64(&s->claims, j->seq);
        s->claims_inflight--;
    }
}

static void claim_done(struct sched *s,
                       struct sched_prop *p,
                       int rv,
                       const struct rsm_result *res)
{
    if (!p->granted) {
        if (map_get_u64(&s->claims, p->job) == p) {
            map_del_u64(&s->claims, p->job);
            s->claims_inflight--;
        }
        if (rv == 0 && res->code == 0) {
            LOGW(MOD, "j%" PRIu64 ": claim granted but not observed", p->job);
        } else {
            /* Rejected (taken, stale, no lease) or unknown: do not hammer
             * the log with the same claim. */
            struct sched_seen *seen = map_get_u64(&s->first_seen, p->job);
            if (seen != NULL) {
                seen->hold_until = time_mono_ms() + CLAIM_HOLD_MS;
            }
            LOGD(MOD, "j%" PRIu64 ": claim not granted: %s", p->job,
                 rv != 0 ? err_str(rv) : res->message);
        }
    }
    request_scan(s);
}

static void prune_seen(struct sched *s)
{
    uint64_t keys[256];
    struct map_iter it;
    uint64_t key;
    void *v;
    unsigned n;

    do {
        n = 0;
        map_iter_init(&it, &s->first_seen);
        while (n < ARRAY_SIZE(keys) && map_iter_next(&it, NULL, &key, &v)) {
            if (((struct sched_seen *)v)->gen != s->scan_gen) {
                keys[n++] = key;
            }
        }
        for (unsigned i = 0; i < n; i++) {
            free(map_del_u64(&s->first_seen, keys[i]));
        }
    } while (n == ARRAY_SIZE(keys));
}

static unsigned free_slots(const struct sched *s)
{
    unsigned used = sched_running(s);
    return used >= s->cfg.slots ? 0 : s->cfg.slots - used;
}

static void peer_set_self(const struct sched *s, struct sched_peer *pe)
{
    memset(pe, 0, sizeof *pe);
    pe->id = s->cfg.node_id;
    pe->slots = s->cfg.slots;
    pe->alive = true;
    pe->n_tags = s->cfg.n_tags;
    memcpy(pe->tags, s->cfg.tags, sizeof pe->tags);
}

/* Walk the claimable jobs (oldest first) and propose claims where this node
 * ranks first, or where it has waited its rank's delay. */
static void scan(struct sched *s)
{
    const struct rsm_fsm *f = fsm(s);
    const struct rsm_member *me;
    unsigned n_peers;
    unsigned n_jobs;
    int64_t now_wall = time_wall_ms();
    uint64_t now = time_mono_ms();
    bool self_listed = false;
    bool may_claim;

    if (!s->started || s->closing) {
        return;
    }
    validate_all_runs(s);
    if (sched_is_fenced(s) || !s->recovered || s->cfg.slots == 0) {
        return;
    }
    me = rsm_fsm_member(f, s->cfg.node_id);
    may_claim = me != NULL && !me->draining && me->lease_until_ms >= now_wall;

    /* Peers and their eligibility apart from tags, once per scan. */
    n_peers = s->cfg.peers(s->cfg.peers_ud, s->peers, SCHED_PEERS_MAX);
    if (n_peers > SCHED_PEERS_MAX) {
        n_peers = SCHED_PEERS_MAX;
    }
    for (unsigned i = 0; i < n_peers; i++) {
        struct sched_peer *pe = &s->peers[i];
        const struct rsm_member *m;
        if (pe->id == s->cfg.node_id) {
            /* Self: exact local values win over gossip's copy. */
            self_listed = true;
            peer_set_self(s, pe);
            s->peer_ok[i] = true;
            continue;
        }
        m = rsm_fsm_member(f, pe->id);
        s->peer_ok[i] = pe->alive && !pe->draining && m != NULL &&
                        !m->draining && m->lease_until_ms >= now_wall;
    }
    if (!self_listed) {
        peer_set_self(s, &s->peers[n_peers]);
        s->peer_ok[n_peers] = true;
        n_peers++;
    }

    n_jobs = rsm_fsm_claimable(f, s->jobs, SCHED_SCAN_JOBS_MAX);
    if (n_jobs > SCHED_SCAN_JOBS_MAX) {
        n_jobs = SCHED_SCAN_JOBS_MAX;
    }
    s->scan_gen++;
    for (unsigned i = 0; i < n_jobs; i++) {
        const struct rsm_job *j = s->jobs[i];
        struct sched_seen *seen;
        char id[RSM_JOB_ID_MAX];
        uint32_t delay;
        int rank;

        if (j->not_before_ms > now_wall) {
            continue;
        }
        seen = map_get_u64(&s->first_seen, j->seq);
        if (seen == NULL) {
            seen = calloc(1, sizeof *seen);
            if (seen == NULL ||
                map_put_u64(&s->first_seen, j->seq, seen, NULL) != 0) {
                free(seen);
                continue;
            }
            seen->first_ms = now;
        }
        seen->gen = s->scan_gen;
        if (!may_claim || free_slots(s) == 0 || now < seen->hold_until ||
            map_get_u64(&s->claims, j->seq) != NULL ||
            run_get(s, j->seq) != NULL) {
            continue;
        }
        for (unsigned k = 0; k < n_peers; k++) {
            const struct sched_peer *pe = &s->peers[k];
            bool self = pe->id == s->cfg.node_id;
            s->cands[k].id = pe->id;
            s->cands[k].slots = pe->slots;
            s->cands[k].running = self ? sched_running(s) : pe->running;
            s->cands[k].eligible =
                s->peer_ok[k] && (j->spec.n_tags == 0 || tags_match(j, pe));
        }
        rsm_job_id_format(j->seq, id);
        rank =
            sched_rank(sched_job_hash(id), s->cands, n_peers, s->cfg.node_id);
        if (rank < 0) {
            continue;
        }
        delay = sched_claim_delay_ms(rank, s->cfg.claim_step_ms,
                                     s->cfg.claim_max_delay_ms);
        if (now - seen->first_ms < delay) {
            continue;
        }
        propose_claim(s, j);
    }
    prune_seen(s);
}

static void idle_cb(uv_idle_t *h)
{
    struct sched *s = h->data;
    uv_idle_stop(h);
    scan(s);
}

static void scan_timer_cb(uv_timer_t *t)
{
    struct sched *s = t->data;
    struct map_iter it;
    uint64_t key;
    void *v;

    if (s->closing) {
        return;
    }
    /* Output that could not be proposed (memory) gets another chance. */
    map_iter_init(&it, &s->runs);
    while (map_iter_next(&it, NULL, &key, &v)) {
        pump_output(s, v);
    }
    request_scan(s);
}

/* ---------------------------------------------------------------------- */
/* Proposal completion                                                    */
/* ---------------------------------------------------------------------- */

static void prop_cb(void *data, int rv, const struct rsm_result *res)
{
    struct sched_prop *p = data;
    struct sched *s = p->s;
    static const struct rsm_result none;

    if (s == NULL) {
        free(p); /* orphaned by sched_close, or fire-and-forget */
        return;
    }
    prop_unlink(s, p);
    if (res == NULL) {
        res = &none;
    }
    switch (p->kind) {
        case PROP_RENEW:
            renew_done(s, p, rv, res);
            break;
        case PROP_EXPIRE:
            expire_done(s, p, rv);
            break;
        case PROP_CLAIM:
            claim_done(s, p, rv, res);
            break;
        case PROP_START:
            start_done(s, p, rv);
            break;
        case PROP_OUTPUT:
            output_done(s, p, rv, res);
            break;
        case PROP_FINISH:
            finish_done(s, p, rv, res);
            break;
    }
    free(p);
}

/* ---------------------------------------------------------------------- */
/* Public API                                                             */
/* ---------------------------------------------------------------------- */

void sched_config_defaults(struct sched_config *c)
{
    memset(c, 0, sizeof *c);
    c->slots = 4;
    c->lease_ms = 3000;
    c->fence_margin_ms = 500;
    c->claim_step_ms = 50;
    c->claim_max_delay_ms = 1000;
    c->scan_ms = 100;
}

int sched_init(struct sched *s,
               uv_loop_t *loop,
               const struct sched_config *cfg,
               struct rsm *rsm,
               char *errmsg)
{
    struct exec_config xc;
    int rv;

    memset(s, 0, sizeof *s);
    if (loop == NULL || cfg == NULL || rsm == NULL || cfg->node_id == 0 ||
        cfg->peers == NULL) {
        errmsg_printf(errmsg,
                      "sched: loop, rsm, node id and peers fn are "
                      "required");
        return ERR_INVALID;
    }
    if (cfg->lease_ms < RSM_LEASE_MIN_MS || cfg->lease_ms > RSM_LEASE_MAX_MS ||
        cfg->fence_margin_ms >= cfg->lease_ms || cfg->scan_ms == 0 ||
        cfg->n_tags > SCHED_TAGS_MAX) {
        errmsg_printf(errmsg,
                      "sched: bad lease %u / margin %u / scan %u / "
                      "tags %u",
                      cfg->lease_ms, cfg->fence_margin_ms, cfg->scan_ms,
                      cfg->n_tags);
        return ERR_INVALID;
    }
    s->loop = loop;
    s->rsm = rsm;
    s->cfg = *cfg;
    map_init(&s->runs, MAP_U64);
    map_init(&s->claims, MAP_U64);
    map_init(&s->first_seen, MAP_U64);
    snprintf(s->idem_prefix, sizeof s->idem_prefix, "~s%x.%" PRIx64 ".",
             (unsigned)getpid(), (uint64_t)time_wall_ms());

    s->peers = calloc(SCHED_PEERS_MAX + 1, sizeof *s->peers);
    s->peer_ok = calloc(SCHED_PEERS_MAX + 1, sizeof *s->peer_ok);
    s->cands = calloc(SCHED_PEERS_MAX + 1, sizeof *s->cands);
    s->jobs = calloc(SCHED_SCAN_JOBS_MAX, sizeof *s->jobs);
    s->expired_set = calloc(1, sizeof(struct sched_expired_set));
    if (s->peers == NULL || s->peer_ok == NULL || s->cands == NULL ||
        s->jobs == NULL || s->expired_set == NULL) {
        errmsg_printf(errmsg, "sched: out of memory");
        rv = ERR_NOMEM;
        goto err_after_alloc;
    }

    exec_config_defaults(&xc);
    if (cfg->helper_path[0] != '\0') {
        str_copy(xc.helper_path, sizeof xc.helper_path, cfg->helper_path);
    }
    str_copy(xc.work_root, sizeof xc.work_root, cfg->work_root);
    if (cfg->grace_ms != 0) {
        xc.grace_ms = cfg->grace_ms;
    }
    xc.fence_armed_at_start = 1;
    rv = exec_init(&s->exec, loop, &xc, on_exec_output_cb, on_exec_exit_cb, s,
                   errmsg);
    if (rv != 0) {
        goto err_after_alloc;
    }
    /* Timer/idle init cannot fail on a live loop (libuv: always 0). */
    uv_timer_init(loop, &s->scan_timer);
    uv_timer_init(loop, &s->renew_timer);
    uv_timer_init(loop, &s->expire_timer);
    uv_idle_init(loop, &s->idle);
    s->scan_timer.data = s;
    s->renew_timer.data = s;
    s->expire_timer.data = s;
    s->idle.data = s;
    s->open_handles = 4;
    return 0;

err_after_alloc:
    free(s->peers);
    free(s->peer_ok);
    free(s->cands);
    free(s->jobs);
    free(s->expired_set);
    s->peers = NULL;
    s->peer_ok = NULL;
    s->cands = NULL;
    s->jobs = NULL;
    s->expired_set = NULL;
    return rv;
}

int sched_start(struct sched *s, char *errmsg)
{
    int rv;
    unsigned renew = s->cfg.lease_ms / 3;

    if (s->started || s->closing) {
        errmsg_printf(errmsg, "sched: already started or closing");
        return ERR_INVALID;
    }
    rv = exec_start(&s->exec, errmsg);
    if (rv != 0) {
        return rv;
    }
    s->started = true;
    uv_timer_start(&s->renew_timer, renew_timer_cb, renew ? renew : 1,
                   renew ? renew : 1);
    uv_timer_start(&s->scan_timer, scan_timer_cb, s->cfg.scan_ms,
                   s->cfg.scan_ms);
    uv_timer_start(&s->expire_timer, expire_timer_cb, EXPIRE_TICK_MS,
                   EXPIRE_TICK_MS);
    propose_renew(s);
    return 0;
}

void sched_on_applied(struct sched *s,
                      const struct rsm_cmd *cmd,
                      const struct rsm_result *res)
{
    if (s->exec.loop == NULL) {
        return; /* not initialised */
    }
    switch (cmd->type) {
        case RSM_CMD_JOB_CLAIM:
            if (res->code == 0 && cmd->u.job_claim.node == s->cfg.node_id) {
                on_grant(s, cmd, res);
            }
            break;
        case RSM_CMD_JOB_OUTPUT:
        case RSM_CMD_JOB_START:
            return; /* cannot change claimability or holders */
        default:
            break;
    }
    if (s->closing || !s->started) {
        return;
    }
    if (s->n_runs > 0 &&
        (cmd->type == RSM_CMD_JOB_CLAIM || cmd->type == RSM_CMD_JOB_FINISH ||
         cmd->type == RSM_CMD_JOB_CANCEL || cmd->type == RSM_CMD_NODE_EXPIRE)) {
        validate_all_runs(s);
    }
    request_scan(s);
}

void sched_test_hold_renewals(struct sched *s, bool hold)
{
    s->hold_renewals = hold;
    if (!hold && s->started && !s->closing) {
        propose_renew(s);
    }
}

unsigned sched_running(const struct sched *s)
{
    return s->n_runs + s->claims_inflight;
}

bool sched_is_fenced(const struct sched *s)
{
    return s->fence_deadline == 0 || time_mono_ms() >= s->fence_deadline ||
           exec_is_fenced(&s->exec);
}

static void maybe_closed(struct sched *s)
{
    struct map_iter it;
    uint64_t key;
    void *v;
    sched_close_cb cb;

    if (s->open_handles > 0 || !s->exec_closed) {
        return;
    }
    /* Free what is left (runs whose exit never came, maps, scratch). */
    for (;;) {
        map_iter_init(&it, &s->runs);
        if (!map_iter_next(&it, NULL, &key, &v)) {
            break;
        }
        run_free(s, v);
    }
    map_close(&s->runs);
    map_iter_init(&it, &s->first_seen);
    while (map_iter_next(&it, NULL, &key, &v)) {
        free(v);
    }
    map_close(&s->first_seen);
    map_close(&s->claims); /* values are props, freed by rsm callbacks */
    free(s->peers);
    free(s->peer_ok);
    free(s->cands);
    free(s->jobs);
    free(s->expired_set);
    s->peers = NULL;
    s->peer_ok = NULL;
    s->cands = NULL;
    s->jobs = NULL;
    s->expired_set = NULL;
    cb = s->close_cb;
    if (cb != NULL) {
        cb(s);
    }
}

static void handle_closed_cb(uv_handle_t *h)
{
    struct sched *s = h->data;
    s->open_handles--;
    maybe_closed(s);
}

static void exec_closed_cb(struct exec *x)
{
    struct sched *s = x->ud;
    s->exec_closed = true;
    maybe_closed(s);
}

void sched_close(struct sched *s, sched_close_cb cb)
{
    struct sched_prop *p;

    if (s->closing) {
        return;
    }
    s->closing = true;
    s->close_cb = cb;
    /* Orphan every in-flight proposal: rsm frees them in its callbacks. */
    while ((p = s->props) != NULL) {
        prop_unlink(s, p);
        p->s = NULL;
    }
    s->claims_inflight = 0;
    uv_timer_stop(&s->scan_timer);
    uv_timer_stop(&s->renew_timer);
    uv_timer_stop(&s->expire_timer);
    uv_idle_stop(&s->idle);
    uv_close((uv_handle_t *)&s->scan_timer, handle_closed_cb);
    uv_close((uv_handle_t *)&s->renew_timer, handle_closed_cb);
    uv_close((uv_handle_t *)&s->expire_timer, handle_closed_cb);
    uv_close((uv_handle_t *)&s->idle, handle_closed_cb);
    exec_close(&s->exec, exec_closed_cb);
}
