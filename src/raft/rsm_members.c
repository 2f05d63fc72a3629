/* Voter management: the leader adds alive nodes and keeps 3 (or 5) voters,
 * one membership change at a time, each after a barrier (RISKS rows 3, 5,
 * 7; STACK pitfall 15). See docs/raft.md. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "raft/rsm_int.h"
#include "util.h"

#define MOD "rsm"

/* A voter dead (per gossip) longer than this is replaced. */
#define DEAD_GRACE_MS 10000
/* After a failed change attempt, wait this long before the next. */
#define FAIL_BACKOFF_MS 1000

enum { PHASE_IDLE = 0, PHASE_BARRIER, PHASE_READY, PHASE_CHANGE };

/* One membership operation: a barrier, then one change. */
struct member_op
{
    struct raft_barrier barrier;
    struct raft_change change;
    struct rsm *r;
};

void rsm__members_init(struct rsm__members *m)
{
    memset(m, 0, sizeof *m);
    m->grace_ms = DEAD_GRACE_MS;
}

void rsm__members_free(struct rsm__members *m)
{
    free(m->peers);
    m->peers = NULL;
    m->n = m->cap = 0;
}

static struct rsm__peer *find_peer(const struct rsm__members *m, uint64_t id)
{
    unsigned i;
    for (i = 0; i < m->n; i++) {
        if (m->peers[i].id == id) {
            return &m->peers[i];
        }
    }
    return NULL;
}

bool rsm__members_seen(struct rsm__members *m,
                       uint64_t id,
                       const char *raft_addr,
                       bool alive,
                       uint64_t now_ms)
{
    struct rsm__peer *p = find_peer(m, id);
    bool changed = false;

    if (id == 0) {
        return false;
    }
    if (p == NULL) {
        if (m->n == m->cap) {
            unsigned cap = m->cap ? m->cap * 2 : 8;
            struct rsm__peer *np = realloc(m->peers, cap * sizeof *np);
            if (np == NULL) {
                LOGW(MOD, "members: out of memory, node %" PRIu64 " ignored",
                     id);
                return false;
            }
            m->peers = np;
            m->cap = cap;
        }
        p = &m->peers[m->n++];
        memset(p, 0, sizeof *p);
        p->id = id;
        p->alive = !alive; /* force the transition below */
        changed = true;
    }
    if (raft_addr != NULL && raft_addr[0] != '\0' &&
        strcmp(p->raft, raft_addr) != 0) {
        str_copy(p->raft, sizeof p->raft, raft_addr);
        changed = true;
    }
    if (p->alive != alive) {
        p->alive = alive;
        p->dead_since = alive ? 0 : (now_ms ? now_ms : 1);
        changed = true;
    }
    return changed;
}

/* Liveness of a configured server: unknown to gossip counts as alive (no
 * evidence of death), the leader itself is always alive. */
static bool is_alive(const struct rsm__members *m, uint64_t id, uint64_t self)
{
    const struct rsm__peer *p;
    if (id == self) {
        return true;
    }
    p = find_peer(m, id);
    return p == NULL || p->alive;
}

static bool dead_long(const struct rsm__members *m,
                      uint64_t id,
                      uint64_t self,
                      uint64_t now)
{
    const struct rsm__peer *p;
    if (id == self) {
        return false;
    }
    p = find_peer(m, id);
    return p != NULL && !p->alive && now - p->dead_since >= m->grace_ms;
}

static bool in_conf(const struct raft_configuration *c, uint64_t id)
{
    unsigned i;
    for (i = 0; i < c->n; i++) {
        if (c->servers[i].id == id) {
            return true;
        }
    }
    return false;
}

bool rsm__members_plan(const struct rsm__members *m,
                       const struct raft_configuration *conf,
                       uint64_t self,
                       uint64_t now,
                       struct rsm__step *step)
{
    unsigned n_alive = 0, alive_voters = 0, target, i;
    const struct raft_server *best = NULL;
    const struct rsm__peer *add = NULL;

    memset(step, 0, sizeof *step);

    /* 1. Alive nodes outside the configuration join as spares first (the
     * promotion to voter then runs catch-up rounds). Lowest id first. */
    for (i = 0; i < m->n; i++) {
        const struct rsm__peer *p = &m->peers[i];
        if (p->alive && p->raft[0] != '\0' && !in_conf(conf, p->id) &&
            (add == NULL || p->id < add->id)) {
            add = p;
        }
    }
    if (add != NULL) {
        step->kind = RSM__STEP_ADD;
        step->id = add->id;
        str_copy(step->raft, sizeof step->raft, add->raft);
        return true;
    }

    /* A node dead for less than the grace still counts (gossip may flap):
     * nothing is promoted or demoted because of a short suspicion. */
    for (i = 0; i < conf->n; i++) {
        const struct raft_server *s = &conf->servers[i];
        if (!dead_long(m, s->id, self, now)) {
            n_alive++;
            if (s->role == RAFT_VOTER) {
                alive_voters++;
            }
        }
    }
    /* 5 voters with 5+ live nodes, else 3, or all when fewer than 3. */
    target = n_alive >= 5 ? 5 : (n_alive >= 3 ? 3 : n_alive);

    /* 2. Too few alive voters: promote an alive standby (else spare). */
    if (alive_voters < target) {
        for (i = 0; i < conf->n; i++) {
            const struct raft_server *s = &conf->servers[i];
            if (s->role == RAFT_VOTER || !is_alive(m, s->id, self)) {
                continue;
            }
            if (best == NULL ||
                (s->role == RAFT_STANDBY && best->role != RAFT_STANDBY) ||
                (s->role == best->role && s->id < best->id)) {
                best = s;
            }
        }
        if (best != NULL) {
            step->kind = RSM__STEP_ASSIGN;
            step->id = best->id;
            step->role = RAFT_VOTER;
            return true;
        }
    }

    /* 3. A voter dead past the grace is demoted to spare once enough alive
     * voters carry the quorum (its replacement was promoted above). Never
     * removed: operators remove dead nodes explicitly. */
    if (alive_voters >= target && alive_voters >= 3) {
        for (i = 0; i < conf->n; i++) {
            const struct raft_server *s = &conf->servers[i];
            if (s->role == RAFT_VOTER && dead_long(m, s->id, self, now)) {
                step->kind = RSM__STEP_ASSIGN;
                step->id = s->id;
                step->role = RAFT_SPARE;
                return true;
            }
        }
    }

    /* 4. More alive voters than the target (e.g. 4 after a demotion): the
     * highest-id non-leader voter becomes a standby. */
    if (alive_voters > target) {
        best = NULL;
        for (i = 0; i < conf->n; i++) {
            const struct raft_server *s = &conf->servers[i];
            if (s->role == RAFT_VOTER && s->id != self &&
                is_alive(m, s->id, self) &&
                (best == NULL || s->id > best->id)) {
                best = s;
            }
        }
        if (best != NULL) {
            step->kind = RSM__STEP_ASSIGN;
            step->id = best->id;
            step->role = RAFT_STANDBY;
            return true;
        }
    }

    /* 5. Alive spares hold a full replica as standbys. */
    for (i = 0; i < conf->n; i++) {
        const struct raft_server *s = &conf->servers[i];
        if (s->role == RAFT_SPARE && is_alive(m, s->id, self) &&
            !dead_long(m, s->id, self, now)) {
            step->kind = RSM__STEP_ASSIGN;
            step->id = s->id;
            step->role = RAFT_STANDBY;
            return true;
        }
    }
    return false;
}

static const char *role_text(int role)
{
    switch (role) {
        case RAFT_VOTER:
            return "voter";
        case RAFT_STANDBY:
            return "standby";
        default:
            return "spare";
    }
}

static bool fatal_status(int status)
{
    return status == RAFT_IOERR || status == RAFT_NOSPACE ||
           status == RAFT_CORRUPT;
}

static void change_cb(struct raft_change *req, int status)
{
    struct member_op *op = req->data;
    struct rsm *r = op->r;
    struct rsm__members *m = rsm__members(r);
    struct raft *raft = rsm__raft(r);

    free(op);
    m->changing = false;
    m->phase = PHASE_IDLE;
    if (status == RAFT_SHUTDOWN) {
        return;
    }
    if (fatal_status(status)) {
        LOGE(MOD, "membership change failed with %s: crash-stop",
             raft_strerror(status));
        abort(); /* RISKS row 2: see crash_stop in rsm.c */
    }
    if (status != 0) {
        LOGW(MOD, "membership change failed: %s", raft_strerror(status));
        m->not_before = time_mono_ms() + FAIL_BACKOFF_MS;
        rsm__kick_members(r, FAIL_BACKOFF_MS);
        return;
    }
    /* Let the new configuration settle for a few heartbeats (row 3). */
    m->not_before = time_mono_ms() + 3 * raft->heartbeat_timeout;
    rsm__kick_members(r, 3 * raft->heartbeat_timeout);
}

/* The barrier before a change: only flags progress; the change itself is
 * issued from the timer (never chained inside a raft cb, RISKS row 14). */
static void barrier_cb(struct raft_barrier *req, int status)
{
    struct member_op *op = req->data;
    struct rsm *r = op->r;
    struct rsm__members *m = rsm__members(r);

    free(op);
    if (status == 0 && rsm__ready(r)) {
        m->ready_term = rsm__raft(r)->current_term;
        m->phase = PHASE_READY;
        rsm__kick_members(r, 0);
        return;
    }
    m->phase = PHASE_IDLE;
    m->changing = false;
    if (fatal_status(status)) {
        LOGE(MOD, "membership barrier failed with %s: crash-stop",
             raft_strerror(status));
        abort();
    }
}

void rsm__members_reconcile(struct rsm *r)
{
    struct rsm__members *m = rsm__members(r);
    struct raft *raft = rsm__raft(r);
    uint64_t now = time_mono_ms();
    struct rsm__step step;
    struct member_op *op;
    int rv;

    if (!rsm__ready(r)) {
        m->phase = PHASE_IDLE;
        return;
    }
    if (m->phase == PHASE_BARRIER || m->phase == PHASE_CHANGE ||
        (m->changing && m->phase != PHASE_READY)) {
        return;
    }
    /* Never during a transfer or while a change is uncommitted. */
    if (raft->transfer != NULL || raft->configuration_uncommitted_index != 0 ||
        now < m->not_before) {
        return;
    }
    if (!rsm__members_plan(m, &raft->configuration, rsm__self_id(r), now,
                           &step)) {
        m->phase = PHASE_IDLE;
        m->changing = false;
        return;
    }
    op = calloc(1, sizeof *op);
    if (op == NULL) {
        return;
    }
    op->r = r;
    if (m->phase != PHASE_READY || m->ready_term != raft->current_term) {
        /* Barrier first: everything before the change is applied. */
        op->barrier.data = op;
        rv = raft_barrier(raft, &op->barrier, barrier_cb);
        if (rv != 0) {
            free(op);
            m->phase = PHASE_IDLE;
            return;
        }
        m->phase = PHASE_BARRIER;
        m->changing = true;
        return;
    }
    op->change.data = op;
    if (step.kind == RSM__STEP_ADD) {
        LOGI(MOD, "members: adding %" PRIu64 " (%s) as spare", step.id,
             step.raft);
        rv = raft_add(raft, &op->change, step.id, step.raft, change_cb);
    } else {
        LOGI(MOD, "members: assigning %" PRIu64 " as %s", step.id,
             role_text(step.role));
        rv = raft_assign(raft, &op->change, step.id, step.role, change_cb);
    }
    m->phase = PHASE_IDLE;
    if (rv != 0) {
        free(op);
        m->changing = false;
        LOGW(MOD, "members: change refused: %s", raft_strerror(rv));
        m->not_before = now + FAIL_BACKOFF_MS;
        return;
    }
    m->changing = true;
    m->phase = PHASE_CHANGE;
}
