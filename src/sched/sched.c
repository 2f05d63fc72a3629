/* The per-node scheduler runtime: lease renewal and self-fencing, the claim
 * scan, running granted jobs through exec, output and finish proposals,
 * leader-side lease expiry and restart recovery (docs/sched.md). */
#include "sched/sched.h"
#include "sched/sched_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "sched/sched_policy.h"
#include "util.h"

#define MOD "sched"

#define EXPIRE_TICK_MS 50     /* leader expiry checks (O(members), cheap) */
#define EXPIRED_MAX 1024      /* remembered (node, lease_until) expiries */
#define CLAIM_HOLD_MS 250     /* after a rejected claim of a job */
#define FENCE_BACKSTOP_MS 500 /* agent kills jobs this long past the fence */

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

const struct rsm_fsm *sched__fsm(const struct sched *s)
{
    return rsm_state(s->rsm);
}

void sched__next_idem(struct sched *s, char *out)
{
    snprintf(out, RSM_IDEM_MAX + 1, "%s%" PRIu64, s->idem_prefix,
             ++s->idem_counter);
}

bool sched__idem_is_mine(const struct sched *s, const char *key)
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

struct sched_prop *sched__prop_new(enum sched_prop_kind kind)
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
int sched__propose(struct sched *s,
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
        sched__next_idem(s, p->idem);
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
/* Lease and fence                                                        */
/* ---------------------------------------------------------------------- */

static void propose_renew(struct sched *s)
{
    struct rsm_cmd cmd;
    struct sched_prop *p;

    if (s->renew_inflight >= SCHED_RENEW_INFLIGHT_MAX || s->hold_renewals) {
        return; /* earlier ones are still waiting for a leader */
    }
    p = sched__prop_new(PROP_RENEW);
    if (p == NULL) {
        return;
    }
    p->t_sent = time_mono_ms();
    rsm_cmd_init(&cmd, RSM_CMD_NODE_RENEW);
    cmd.u.node_renew.node = s->cfg.node_id;
    cmd.u.node_renew.lease_ms = s->cfg.lease_ms;
    if (sched__propose(s, &cmd, p, false) == 0) {
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
    const struct rsm_job *few[64];
    const struct rsm_job **jobs = few;
    unsigned n;
    unsigned i;
    const struct sched_prop *p;

    s->recovered = true;
    s->last_recovery = time_mono_ms();
    n = rsm_fsm_jobs_of_node(sched__fsm(s), s->cfg.node_id, few,
                             ARRAY_SIZE(few));
    if (n > ARRAY_SIZE(few)) {
        /* Every held job, however many: a fixed prefix would leave the
         * same orphans unrecovered on every pass. */
        jobs = malloc(n * sizeof *jobs);
        if (jobs == NULL) {
            LOGW(MOD, "out of memory in recovery; next pass retries");
            return;
        }
        n = rsm_fsm_jobs_of_node(sched__fsm(s), s->cfg.node_id, jobs, n);
    }
    for (i = 0; i < n; i++) {
        const struct rsm_job *j = jobs[i];
        const struct sched_run *r = sched__run_get(s, j->seq);
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
        sched__propose_finish(s, j->seq, j->epoch, RSM_END_LOST, 0, 0, NULL,
                              false);
    }
    if (jobs != few) {
        free(jobs);
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

    n = rsm_fsm_members(sched__fsm(s), ms, ARRAY_SIZE(ms));
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
        p = sched__prop_new(PROP_EXPIRE);
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
        if (sched__propose(s, &cmd, p, false) == 0) {
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
    struct sched_prop *p = sched__prop_new(PROP_CLAIM);
    if (p == NULL) {
        return;
    }
    p->job = j->seq;
    p->attempt = j->attempt;
    sched__next_idem(s, p->idem);
    if (map_put_u64(&s->claims, j->seq, p, NULL) != 0) {
        free(p);
        return;
    }
    rsm_cmd_init(&cmd, RSM_CMD_JOB_CLAIM);
    cmd.u.job_claim.job = j->seq;
    cmd.u.job_claim.node = s->cfg.node_id;
    cmd.u.job_claim.attempt = j->attempt;
    /* sched__propose() frees p on failure: drop the map entry first. */
    s->claims_inflight++;
    if (sched__propose(s, &cmd, p, false) != 0) {
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

/* Room left in this node's claim window. */
static unsigned free_slots(const struct sched *s)
{
    unsigned used = sched_running(s);
    unsigned window = sched_window(s, s->cfg.slots);
    return used >= window ? 0 : window - used;
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
    const struct rsm_fsm *f = sched__fsm(s);
    const struct rsm_member *me;
    unsigned n_peers;
    unsigned n_jobs;
    int64_t now_wall = time_wall_ms();
    uint64_t now = time_mono_ms();
    bool self_listed = false;
    bool may_claim;
    bool complete = true;

    if (!s->started || s->closing) {
        return;
    }
    sched__validate_runs(s);
    sched__dispatch(s);
    if (sched_is_fenced(s) || !s->recovered || s->cfg.slots == 0) {
        return;
    }
    me = rsm_fsm_member(f, s->cfg.node_id);
    may_claim = me != NULL && !me->draining && me->lease_until_ms >= now_wall;
    if (!may_claim || free_slots(s) == 0) {
        /* Nothing to claim: skip the walk (under a backlog it would rank
         * up to 1000 jobs on every apply). First-seen times stay as they
         * are; jobs that arrived meanwhile start their rank delay when
         * this node has room again. */
        return;
    }

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
        if (free_slots(s) == 0) {
            complete = false; /* the window is full: the rest can wait */
            break;
        }
        if (now < seen->hold_until || map_get_u64(&s->claims, j->seq) != NULL ||
            sched__run_get(s, j->seq) != NULL) {
            continue;
        }
        for (unsigned k = 0; k < n_peers; k++) {
            const struct sched_peer *pe = &s->peers[k];
            bool self = pe->id == s->cfg.node_id;
            s->cands[k].id = pe->id;
            s->cands[k].slots = sched_window(s, pe->slots);
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
    if (complete || (s->scan_gen & 63) == 0) {
        /* A cut walk does not know what is gone: prune after full walks,
         * and every 64th walk regardless (bounding the map under a long
         * backlog; jobs beyond the cut then restart their rank delay). */
        prune_seen(s);
    }
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
    /* Fence backstop: the helper kills every job at the fence deadline on
     * its own clock. If jobs are still reported running well after it, the
     * helper is stalled (suspended in a spawn whose child hangs before
     * exec): kill their groups from here, still ~1 s before the leader may
     * expire this node's lease (lease + grace vs lease - margin). */
    if (s->fence_deadline != 0 &&
        time_mono_ms() >= s->fence_deadline + FENCE_BACKSTOP_MS) {
        exec_fence_backstop(&s->exec);
    }
    /* Output that could not be proposed (memory) gets another chance. */
    map_iter_init(&it, &s->runs);
    while (map_iter_next(&it, NULL, &key, &v)) {
        sched__pump_output(s, v);
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
            sched__start_done(s, p, rv);
            break;
        case PROP_OUTPUT:
            sched__output_done(s, p, rv, res);
            break;
        case PROP_FINISH:
            sched__finish_done(s, p, rv, res);
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
    c->claim_ahead = SCHED_CLAIM_AHEAD_AUTO;
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
    rv = exec_init(&s->exec, loop, &xc, sched__exec_output_cb,
                   sched__exec_exit_cb, s, errmsg);
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
                sched__on_grant(s, cmd, res);
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
        sched__validate_runs(s);
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
    /* Attempts whose process still runs or waits for a slot, plus claims
     * on their way: exited attempts waiting for their FINISH commit do not
     * count. */
    return s->n_runs - s->n_exited + s->claims_inflight;
}

unsigned sched_window(const struct sched *s, unsigned slots)
{
    unsigned ahead = s->cfg.claim_ahead == SCHED_CLAIM_AHEAD_AUTO
                         ? slots
                         : s->cfg.claim_ahead;
    if (slots == 0) {
        return 0;
    }
    return slots + ahead < slots ? UINT_MAX : slots + ahead;
}

unsigned sched_processes(const struct sched *s)
{
    return s->n_runs - s->n_exited - s->n_waiting;
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
        sched__run_free(s, v);
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
    /* The claim contexts are now freed by rsm alone: forget them here so a
     * grant applied during the close never looks at a freed context. */
    map_close(&s->claims);
    map_init(&s->claims, MAP_U64);
    s->claims_inflight = 0;
    /* Granted attempts still waiting for a slot never ran: release them at
     * once (fire-and-forget) instead of after lease expiry. */
    {
        struct map_iter it;
        uint64_t key;
        void *v;
        map_iter_init(&it, &s->runs);
        while (map_iter_next(&it, NULL, &key, &v)) {
            struct sched_run *r = v;
            if (r->waiting && !r->stale) {
                r->waiting = false;
                s->n_waiting--;
                r->stale = true;
                sched__propose_finish(s, r->job, r->epoch, RSM_END_RELEASED, 0,
                                      0, NULL, true);
            }
        }
    }
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
