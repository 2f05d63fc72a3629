/* Pure SWIM + Lifeguard state machine: events in (packets, ticks, local
 * updates), packets and member changes out. No I/O, no clock reads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "gossip/gossip_int.h"

#define OUT_MAX 64              /* queued outgoing packets */
#define CHANGE_MAX 4096         /* queued change notifications */
#define RELAY_MAX 64            /* pending indirect probes for others */
#define SUSP_FROM_MAX 8         /* remembered suspicion confirmers */
#define GOSSIP_TO_DEAD_MS 30000 /* keep gossiping to the recently dead */
#define PRIM_MAX 4              /* primary messages in one packet */
#define BUDDY_PING_MS 200       /* re-ping period of a member we suspect */
#define SELF_BOOST 2            /* retransmit factor for news about ourselves */
#define RECENT_MS 2000          /* spent news still piggybacked on pings/acks */
/* A reconnect push-pull every RECONNECT_PERIODS probe periods, with a
 * member dead for less than RECONNECT_WINDOW_MS. */
#define RECONNECT_WINDOW_MS (10 * 60 * 1000)
#define RECONNECT_PERIODS 4
#define SPENT_PER_PACKET 2 /* at most this many of them per packet */
#define LOSS_GAIN 10       /* suspicion stretch per unit of loss rate */
#define UNKNOWN_PP_MS 1000 /* min gap of push-pulls with unknown senders */

struct node
{
    struct gossip_member m;
    struct addr ga; /* parsed m.gossip */
    /* Lifeguard suspicion (suspicion.go design): timer from susp_start,
     * shrinking from max to min as confirmations arrive. */
    bool susp;
    uint64_t susp_start, susp_min, susp_max;
    unsigned susp_k, susp_n;
    uint64_t susp_from[SUSP_FROM_MAX];
    unsigned n_from;
    uint64_t susp_ping; /* next buddy ping while we suspect it */
};

struct bcast
{
    uint64_t subject; /* member id */
    int cls;          /* CLS_MEMBER or CLS_LOAD */
    uint64_t seq;     /* insertion order: newer first on ties */
    unsigned transmits;
    bool spent; /* sent retransmit-limit times: only piggybacked on
                 * pings/acks now, until spent_at + RECENT_MS */
    uint64_t spent_at;
    size_t len;
    uint8_t *buf;
};

enum { CLS_MEMBER, CLS_LOAD };

struct relay
{
    uint32_t seq;      /* our ping to the target */
    uint32_t orig_seq; /* the requester's probe */
    struct addr requester;
    uint64_t deadline;
};

struct gossip__state
{
    struct gossip__params p;
    uint64_t now; /* time of the event being handled */
    struct prng rng;
    struct node **nodes; /* nodes[0] is self */
    unsigned n, cap;

    uint64_t *order; /* probe order (ids), shuffled per round */
    unsigned n_order, order_idx;

    /* Current probe (SWIM section 3.1). */
    bool probing, acked, indirect;
    uint64_t target;
    uint32_t probe_seq;
    uint64_t probe_start, probe_end;
    unsigned nacks_expected, nacks;

    uint64_t next_probe, next_gossip, next_pushpull, next_reconnect;
    uint32_t seq;
    unsigned health;  /* Lifeguard local health multiplier - 1 */
    unsigned loss_pm; /* EWMA, per mille, of probes of live members whose
                       * direct ping went unanswered (network loss) */
    uint64_t last_unknown_pp; /* last push-pull with an unknown sender */

    struct relay relays[RELAY_MAX];
    unsigned n_relays;

    struct bcast **bq;
    unsigned n_bq, cap_bq;
    uint64_t bseq;

    struct gossip__out *out;
    unsigned out_head, out_n;
    struct gossip__change *ch;
    unsigned ch_head, ch_n;

    bool load_dirty;
    uint64_t last_load_bcast;
    bool left, leave_pending;

    struct gossip__msg *scratch; /* GOSSIP__MAX_MSGS decoded messages */
    struct gossip__counters c;
};

/* ------------------------------------------------------------------ */
/* Helpers. */

static struct node *self_node(struct gossip__state *st)
{
    return st->nodes[0];
}

static int find_idx(const struct gossip__state *st, uint64_t id)
{
    for (unsigned i = 0; i < st->n; i++) {
        if (st->nodes[i]->m.id == id) {
            return (int)i;
        }
    }
    return -1;
}

static struct node *find_node(struct gossip__state *st, uint64_t id)
{
    int i = find_idx(st, id);
    return i < 0 ? NULL : st->nodes[i];
}

static int find_name_idx(const struct gossip__state *st, const char *name)
{
    for (unsigned i = 0; i < st->n; i++) {
        if (strcmp(st->nodes[i]->m.name, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static bool is_live(enum gossip_state s)
{
    return s == GOSSIP_ALIVE || s == GOSSIP_SUSPECT;
}

/* Members believed alive or suspect, self included (memberlist
 * estNumNodes). */
static unsigned est_n(const struct gossip__state *st)
{
    unsigned n = 0;
    for (unsigned i = 0; i < st->n; i++) {
        if (is_live(st->nodes[i]->m.state)) {
            n++;
        }
    }
    return n;
}

/* retransmit_mult * ceil(log10(N + 1)) (memberlist util.go). */
static unsigned retransmit_limit(const struct gossip__state *st)
{
    double n = (double)est_n(st);
    unsigned l = (unsigned)ceil(log10(n + 1.0));
    if (l < 2) {
        l = 2; /* small clusters: a lost packet costs a lot */
    }
    return st->p.retransmit_mult * l;
}

static unsigned scale(const struct gossip__state *st, unsigned ms)
{
    return ms * (st->health + 1);
}

static void health_delta(struct gossip__state *st, int d)
{
    int h = (int)st->health + d;
    int max = (int)st->p.awareness_max - 1;
    if (h < 0) {
        h = 0;
    }
    if (h > max) {
        h = max;
    }
    st->health = (unsigned)h;
}

static void notify(struct gossip__state *st, uint64_t id, enum gossip_state old)
{
    unsigned slot;
    if (st->ch_n == CHANGE_MAX) {
        return;
    }
    slot = (st->ch_head + st->ch_n) % CHANGE_MAX;
    st->ch[slot].id = id;
    st->ch[slot].old_state = old;
    st->ch_n++;
}

static struct gossip__out *out_push(struct gossip__state *st)
{
    struct gossip__out *o;
    if (st->out_n == OUT_MAX) {
        st->c.dropped_out++;
        return NULL;
    }
    o = &st->out[(st->out_head + st->out_n) % OUT_MAX];
    st->out_n++;
    memset(o, 0, offsetof(struct gossip__out, buf));
    return o;
}

/* ------------------------------------------------------------------ */
/* Broadcast queue (memberlist TransmitLimitedQueue design). */

static void bcast_free(struct bcast *b)
{
    free(b->buf);
    free(b);
}

static void bq_remove(struct gossip__state *st, unsigned i)
{
    struct bcast *b = st->bq[i];
    bcast_free(b);
    st->bq[i] = st->bq[st->n_bq - 1];
    st->n_bq--;
}

static void queue_bcast(struct gossip__state *st,
                        uint64_t subject,
                        const struct gossip__msg *m)
{
    uint8_t tmp[GOSSIP__MAX_RECORD + 256];
    struct bcast *b;
    size_t len;
    int cls = m->type == GOSSIP__LOAD ? CLS_LOAD : CLS_MEMBER;

    len = gossip__msg_encode(m, false, tmp, sizeof tmp);
    if (len == 0 || len > GOSSIP__MAX_RECORD) {
        return;
    }
    /* A newer message about the same member supersedes the older one; an
     * ALIVE also carries the load. */
    for (unsigned i = 0; i < st->n_bq;) {
        struct bcast *o = st->bq[i];
        if (o->subject == subject &&
            (o->cls == cls || (m->type == GOSSIP__ALIVE))) {
            bq_remove(st, i);
            continue;
        }
        i++;
    }
    if (st->n_bq == st->cap_bq) {
        /* Full: drop the most transmitted (oldest on ties). */
        unsigned worst = 0;
        for (unsigned i = 1; i < st->n_bq; i++) {
            if (st->bq[i]->transmits > st->bq[worst]->transmits ||
                (st->bq[i]->transmits == st->bq[worst]->transmits &&
                 st->bq[i]->seq < st->bq[worst]->seq)) {
                worst = i;
            }
        }
        bq_remove(st, worst);
    }
    b = malloc(sizeof *b);
    if (b == NULL) {
        return;
    }
    b->buf = malloc(len);
    if (b->buf == NULL) {
        free(b);
        return;
    }
    memcpy(b->buf, tmp, len);
    b->len = len;
    b->subject = subject;
    b->cls = cls;
    b->seq = ++st->bseq;
    b->transmits = 0;
    b->spent = false;
    b->spent_at = 0;
    st->bq[st->n_bq++] = b;
}

static int bcast_cmp(const void *a, const void *b)
{
    const struct bcast *x = *(const struct bcast *const *)a;
    const struct bcast *y = *(const struct bcast *const *)b;
    if (x->spent != y->spent) {
        return x->spent ? 1 : -1;
    }
    if (!x->spent && x->transmits != y->transmits) {
        return x->transmits < y->transmits ? -1 : 1;
    }
    return x->seq > y->seq ? -1 : (x->seq < y->seq ? 1 : 0);
}

/* ------------------------------------------------------------------ */
/* Packet assembly. */

static void self_load_msg(struct gossip__state *st, struct gossip__msg *m)
{
    struct gossip_member *s = &self_node(st)->m;
    memset(m, 0, sizeof *m);
    m->type = GOSSIP__LOAD;
    m->id = s->id;
    m->incarnation = s->incarnation;
    m->meta_version = s->meta_version;
    m->meta = s->meta;
    m->load = s->load;
}

/* Send prim[0..nprim) to addr, plus (with_self) our LOAD summary and as
 * many queued broadcasts as fit. Returns false if nothing was sent. */
static bool send_packet(struct gossip__state *st,
                        const struct addr *to,
                        const struct gossip__msg *prim,
                        unsigned nprim,
                        bool with_self)
{
    uint8_t pbuf[PRIM_MAX + 1][128];
    const uint8_t *chunks[GOSSIP__MAX_MSGS];
    size_t lens[GOSSIP__MAX_MSGS];
    struct bcast *taken[GOSSIP__MAX_MSGS];
    unsigned n = 0, ntaken = 0, nspent = 0, limit;
    size_t budget = GOSSIP__MAX_UDP - 8;
    struct gossip__out *o;

    for (unsigned i = 0; i < nprim && i < PRIM_MAX; i++) {
        size_t l = gossip__msg_encode(&prim[i], false, pbuf[n], 128);
        if (l == 0) {
            continue;
        }
        chunks[n] = pbuf[n];
        lens[n++] = l;
        budget -= l;
    }
    if (with_self) {
        struct gossip__msg sm;
        size_t l;
        self_load_msg(st, &sm);
        l = gossip__msg_encode(&sm, false, pbuf[n], 128);
        if (l != 0) {
            chunks[n] = pbuf[n];
            lens[n++] = l;
            budget -= l;
        }
    }
    if (st->n_bq > 0) {
        qsort(st->bq, st->n_bq, sizeof st->bq[0], bcast_cmp);
        for (unsigned i = 0; i < st->n_bq && n < GOSSIP__MAX_MSGS; i++) {
            struct bcast *b = st->bq[i];
            if (b->spent && (nprim == 0 || nspent == SPENT_PER_PACKET)) {
                break; /* gossip rounds carry fresh news only */
            }
            nspent += b->spent;
            if (b->len > budget) {
                continue;
            }
            chunks[n] = b->buf;
            lens[n++] = b->len;
            budget -= b->len;
            taken[ntaken++] = b;
            if (budget < 16) {
                break;
            }
        }
    }
    if (n == 0) {
        return false;
    }
    o = out_push(st);
    if (o == NULL) {
        return false;
    }
    o->kind = GOSSIP__OUT_UDP;
    o->to = *to;
    o->len = gossip__packet_build(o->buf, sizeof o->buf, chunks, lens, n);
    if (o->len == 0) {
        st->out_n--; /* cannot happen: the budget keeps us below the max */
        return false;
    }
    limit = retransmit_limit(st);
    for (unsigned i = 0; i < ntaken; i++) {
        struct bcast *b = taken[i];
        /* Our own news (load, meta, refutation, leave) has no other
         * source yet: send it more often to cut the epidemic's tail. */
        unsigned lim =
            b->subject == self_node(st)->m.id ? limit * SELF_BOOST : limit;
        b->transmits++;
        if (!b->spent && b->transmits >= lim) {
            /* Push phase over. Keep riding on pings and acks for a while:
             * a member the epidemic missed is pinged by, or acks to, one
             * that has the news within about a probe interval. */
            b->spent = true;
            b->spent_at = st->now;
            if (st->left && b->subject == self_node(st)->m.id &&
                b->cls == CLS_MEMBER) {
                st->leave_pending = false;
            }
        }
    }
    return true;
}

static void alive_msg(const struct gossip_member *mb, struct gossip__msg *m)
{
    memset(m, 0, sizeof *m);
    m->type = GOSSIP__ALIVE;
    m->member = *mb;
    m->member.state = GOSSIP_ALIVE;
    m->id = mb->id;
    m->incarnation = mb->incarnation;
}

static void state_msg(unsigned type,
                      uint64_t id,
                      uint64_t inc,
                      uint64_t from,
                      struct gossip__msg *m)
{
    memset(m, 0, sizeof *m);
    m->type = type;
    m->id = id;
    m->incarnation = inc;
    m->from = from;
}

/* ------------------------------------------------------------------ */
/* Membership rules (SWIM section 4.2, memberlist state.go). */

static void refute(struct gossip__state *st, uint64_t inc)
{
    struct node *s = self_node(st);
    struct gossip__msg m;
    if (inc >= s->m.incarnation) {
        s->m.incarnation = inc + 1;
    } else {
        s->m.incarnation++;
    }
    st->c.refutations++;
    health_delta(st, 1);
    alive_msg(&s->m, &m);
    queue_bcast(st, s->m.id, &m);
}

static bool same_identity(const struct gossip_member *a,
                          const struct gossip_member *b)
{
    if (strcmp(a->name, b->name) != 0 || strcmp(a->api, b->api) != 0 ||
        strcmp(a->raft, b->raft) != 0 || strcmp(a->gossip, b->gossip) != 0 ||
        a->n_tags != b->n_tags) {
        return false;
    }
    for (unsigned i = 0; i < a->n_tags; i++) {
        if (strcmp(a->tags[i].key, b->tags[i].key) != 0 ||
            strcmp(a->tags[i].value, b->tags[i].value) != 0) {
            return false;
        }
    }
    return true;
}

static void remove_node(struct gossip__state *st, unsigned i)
{
    free(st->nodes[i]);
    memmove(&st->nodes[i], &st->nodes[i + 1],
            (st->n - i - 1) * sizeof st->nodes[0]);
    st->n--;
}

static void order_insert(struct gossip__state *st, uint64_t id)
{
    unsigned pos;
    if (st->n_order >= st->p.max_members) {
        return;
    }
    pos = (unsigned)prng_below(&st->rng, (uint64_t)st->n_order + 1);
    memmove(&st->order[pos + 1], &st->order[pos],
            (st->n_order - pos) * sizeof st->order[0]);
    st->order[pos] = id;
    st->n_order++;
    if (pos < st->order_idx) {
        st->order_idx++;
    }
}

/* Add a member unknown so far; NULL if refused. */
static struct node *add_node(struct gossip__state *st,
                             uint64_t now,
                             const struct gossip_member *rec)
{
    struct node *nd;
    int j = find_name_idx(st, rec->name);
    if (j >= 0) {
        struct node *holder = st->nodes[j];
        /* Name conflict: a live holder (or self) keeps the name; a dead or
         * left holder is replaced (a wiped node coming back). */
        if (j == 0 || is_live(holder->m.state)) {
            st->c.name_conflicts++;
            str_copy(st->c.conflict_name, sizeof st->c.conflict_name,
                     rec->name);
            st->c.conflict_id = rec->id;
            st->c.conflict_holder = holder->m.id;
            return NULL;
        }
        remove_node(st, (unsigned)j);
    }
    if (st->n >= st->p.max_members) {
        st->c.table_full++;
        return NULL;
    }
    nd = calloc(1, sizeof *nd);
    if (nd == NULL) {
        return NULL;
    }
    nd->m = *rec;
    nd->m.state_since_ms = now;
    if (addr_parse(nd->m.gossip, &nd->ga, NULL) != 0) {
        free(nd);
        return NULL;
    }
    st->nodes[st->n++] = nd;
    order_insert(st, rec->id);
    return nd;
}

static void alive_node(struct gossip__state *st,
                       uint64_t now,
                       const struct gossip_member *rec)
{
    struct node *nd;
    struct gossip__msg m;
    enum gossip_state old;
    bool changed;

    if (rec->id == self_node(st)->m.id) {
        struct gossip_member *s = &self_node(st)->m;
        if (st->left) {
            return;
        }
        if (rec->incarnation > s->incarnation ||
            (rec->incarnation == s->incarnation && !same_identity(rec, s))) {
            refute(st, rec->incarnation);
        }
        return;
    }
    nd = find_node(st, rec->id);
    if (nd == NULL) {
        struct gossip_member r = *rec;
        r.state = GOSSIP_ALIVE;
        nd = add_node(st, now, &r);
        if (nd == NULL) {
            return;
        }
        alive_msg(&nd->m, &m);
        queue_bcast(st, nd->m.id, &m);
        notify(st, nd->m.id, GOSSIP_ALIVE);
        return;
    }
    if (rec->incarnation <= nd->m.incarnation) {
        /* Same incarnation: only a newer load/meta record is taken. */
        if (rec->incarnation == nd->m.incarnation &&
            rec->meta_version > nd->m.meta_version) {
            bool meta_changed = rec->meta != nd->m.meta;
            nd->m.meta = rec->meta;
            nd->m.meta_version = rec->meta_version;
            nd->m.load = rec->load;
            if (meta_changed) {
                notify(st, nd->m.id, nd->m.state);
            }
        }
        return;
    }
    if (strcmp(rec->name, nd->m.name) != 0) {
        int j = find_name_idx(st, rec->name);
        if (j >= 0 && is_live(st->nodes[j]->m.state)) {
            st->c.name_conflicts++;
            return;
        }
    }
    old = nd->m.state;
    changed = !same_identity(rec, &nd->m) || rec->meta != nd->m.meta;
    {
        uint64_t since = nd->m.state_since_ms;
        struct addr ga;
        if (addr_parse(rec->gossip, &ga, NULL) != 0) {
            return;
        }
        nd->m = *rec;
        nd->ga = ga;
        nd->m.state = GOSSIP_ALIVE;
        nd->m.state_since_ms = old == GOSSIP_ALIVE ? since : now;
    }
    nd->susp = false;
    alive_msg(&nd->m, &m);
    queue_bcast(st, nd->m.id, &m);
    if (old != GOSSIP_ALIVE || changed) {
        notify(st, nd->m.id, old);
    }
}

static uint64_t susp_timeout(const struct node *nd)
{
    double frac, t;
    if (nd->susp_k == 0 || nd->susp_n >= nd->susp_k) {
        return nd->susp_min;
    }
    frac = log((double)nd->susp_n + 1.0) / log((double)nd->susp_k + 1.0);
    t = (double)nd->susp_max - frac * (double)(nd->susp_max - nd->susp_min);
    if (t < (double)nd->susp_min) {
        return nd->susp_min;
    }
    return (uint64_t)t;
}

static void suspect_node(struct gossip__state *st,
                         uint64_t now,
                         uint64_t id,
                         uint64_t inc,
                         uint64_t from)
{
    struct node *nd = find_node(st, id);
    struct gossip__msg m;
    enum gossip_state old;
    unsigned n;
    double mn;

    if (nd == NULL) {
        return;
    }
    if (nd == self_node(st)) {
        if (!st->left && inc >= nd->m.incarnation) {
            refute(st, inc);
        }
        return;
    }
    if (inc < nd->m.incarnation) {
        return;
    }
    if (nd->susp) {
        /* Lifeguard: an independent confirmation shortens the timer and is
         * re-gossiped so that others count it too. */
        bool seen = from == 0;
        for (unsigned i = 0; i < nd->n_from && !seen; i++) {
            seen = nd->susp_from[i] == from;
        }
        if (!seen && nd->susp_n < nd->susp_k) {
            if (nd->n_from < SUSP_FROM_MAX) {
                nd->susp_from[nd->n_from++] = from;
            }
            nd->susp_n++;
            state_msg(GOSSIP__SUSPECT, id, nd->m.incarnation, from, &m);
            queue_bcast(st, id, &m);
        }
        return;
    }
    if (nd->m.state != GOSSIP_ALIVE) {
        return;
    }
    old = nd->m.state;
    nd->m.incarnation = inc;
    nd->m.state = GOSSIP_SUSPECT;
    nd->m.state_since_ms = now;
    n = est_n(st);
    nd->susp = true;
    nd->susp_start = now;
    nd->susp_k = st->p.suspicion_confirm;
    if (n < 2 || n - 2 < nd->susp_k) {
        nd->susp_k = 0;
    }
    mn = (double)st->p.suspicion_min_ms;
    if (n > 10) {
        mn *= log10((double)n);
    }
    /* Loss awareness: when this node sees its direct probes of live
     * members go unanswered, the network is lossy; stretch the timer so
     * that refutations have time to get through (docs/gossip.md). */
    {
        double sc = 1.0 + (double)st->loss_pm * LOSS_GAIN / 1000.0;
        if (sc > (double)st->p.awareness_max) {
            sc = (double)st->p.awareness_max;
        }
        mn *= sc;
    }
    nd->susp_min = (uint64_t)mn;
    nd->susp_ping = now + BUDDY_PING_MS;
    nd->susp_max = nd->susp_min * st->p.suspicion_max_mult;
    nd->susp_n = 0;
    nd->n_from = 0;
    if (from != 0) {
        nd->susp_from[nd->n_from++] = from;
    }
    st->c.suspicions++;
    state_msg(GOSSIP__SUSPECT, id, inc, from, &m);
    queue_bcast(st, id, &m);
    if (from == self_node(st)->m.id) {
        /* Tell the suspect at once so that it can refute (Lifeguard's
         * buddy system, also applied on every later probe). */
        send_packet(st, &nd->ga, &m, 1, true);
    }
    notify(st, id, old);
}

static void dead_node(struct gossip__state *st,
                      uint64_t now,
                      uint64_t id,
                      uint64_t inc,
                      uint64_t from,
                      bool left)
{
    struct node *nd = find_node(st, id);
    struct gossip__msg m;
    enum gossip_state old;

    if (nd == NULL) {
        return;
    }
    if (nd == self_node(st)) {
        if (!st->left && inc >= nd->m.incarnation) {
            refute(st, inc);
        }
        return;
    }
    if (inc < nd->m.incarnation || nd->m.state == GOSSIP_LEFT ||
        (nd->m.state == GOSSIP_DEAD && !left)) {
        return;
    }
    old = nd->m.state;
    nd->m.incarnation = inc;
    nd->m.state = left ? GOSSIP_LEFT : GOSSIP_DEAD;
    nd->m.state_since_ms = now;
    nd->susp = false;
    state_msg(left ? GOSSIP__LEFT : GOSSIP__DEAD, id, inc, from, &m);
    queue_bcast(st, id, &m);
    notify(st, id, old);
}

static void load_node(struct gossip__state *st,
                      uint64_t now,
                      const struct gossip__msg *msg)
{
    struct node *nd = find_node(st, msg->id);
    enum gossip_state old;
    bool meta_changed;

    if (nd == NULL || nd == self_node(st)) {
        return;
    }
    old = nd->m.state;
    if (msg->incarnation > nd->m.incarnation) {
        /* Only the member itself originates LOAD: a newer incarnation is
         * first-hand proof that it is alive (a refutation). */
        nd->m.incarnation = msg->incarnation;
        nd->m.state = GOSSIP_ALIVE;
        nd->susp = false;
        if (old != GOSSIP_ALIVE) {
            nd->m.state_since_ms = now;
        }
    } else if (msg->incarnation < nd->m.incarnation ||
               msg->meta_version <= nd->m.meta_version) {
        return;
    }
    meta_changed = msg->meta != nd->m.meta;
    nd->m.meta = msg->meta;
    nd->m.meta_version = msg->meta_version;
    nd->m.load = msg->load;
    queue_bcast(st, msg->id, msg);
    if (old != nd->m.state || meta_changed) {
        notify(st, msg->id, old);
    }
}

/* ------------------------------------------------------------------ */
/* Probing (SWIM section 3.1 with indirect probes, Lifeguard nacks). */

static void reshuffle(struct gossip__state *st)
{
    st->n_order = 0;
    for (unsigned i = 1; i < st->n; i++) {
        st->order[st->n_order++] = st->nodes[i]->m.id;
    }
    for (unsigned i = st->n_order; i > 1; i--) {
        unsigned j = (unsigned)prng_below(&st->rng, i);
        uint64_t t = st->order[i - 1];
        st->order[i - 1] = st->order[j];
        st->order[j] = t;
    }
    st->order_idx = 0;
}

static struct node *next_target(struct gossip__state *st)
{
    for (unsigned tries = 0; tries < 2 * st->n_order + 2; tries++) {
        struct node *nd;
        if (st->order_idx >= st->n_order) {
            reshuffle(st);
            if (st->n_order == 0) {
                return NULL;
            }
        }
        nd = find_node(st, st->order[st->order_idx++]);
        if (nd != NULL && nd != self_node(st) && is_live(nd->m.state)) {
            return nd;
        }
    }
    return NULL;
}

static void start_probe(struct gossip__state *st, uint64_t now)
{
    struct gossip__msg m[2];
    unsigned nm = 1;
    struct node *nd = next_target(st);

    st->probing = false;
    st->next_probe = now + scale(st, st->p.probe_interval_ms);
    if (nd == NULL) {
        return;
    }
    st->probing = true;
    st->acked = false;
    st->indirect = false;
    st->target = nd->m.id;
    st->probe_seq = ++st->seq;
    st->probe_start = now;
    st->probe_end = st->next_probe;
    st->nacks_expected = 0;
    st->nacks = 0;
    st->c.probes++;
    memset(&m[0], 0, sizeof m[0]);
    m[0].type = GOSSIP__PING;
    m[0].seq = st->probe_seq;
    m[0].id = nd->m.id;
    m[0].from = self_node(st)->m.id;
    if (nd->m.state == GOSSIP_SUSPECT) {
        state_msg(GOSSIP__SUSPECT, nd->m.id, nd->m.incarnation,
                  self_node(st)->m.id, &m[1]);
        nm = 2;
    }
    send_packet(st, &nd->ga, m, nm, true);
}

static void send_indirect(struct gossip__state *st)
{
    struct node *t = find_node(st, st->target);
    struct node *cand[GOSSIP_MAX_MEMBERS];
    unsigned nc = 0, k;
    struct gossip__msg m;

    st->indirect = true;
    if (t == NULL) {
        return;
    }
    for (unsigned i = 1; i < st->n; i++) {
        struct node *nd = st->nodes[i];
        if (nd != t && nd->m.state == GOSSIP_ALIVE && nc < ARRAY_SIZE(cand)) {
            cand[nc++] = nd;
        }
    }
    memset(&m, 0, sizeof m);
    m.type = GOSSIP__PING_REQ;
    m.seq = st->probe_seq;
    m.id = t->m.id;
    m.from = self_node(st)->m.id;
    str_copy(m.addr, sizeof m.addr, t->m.gossip);
    for (k = 0; k < st->p.indirect_checks && nc > 0; k++) {
        unsigned j = (unsigned)prng_below(&st->rng, nc);
        if (send_packet(st, &cand[j]->ga, &m, 1, true)) {
            st->nacks_expected++;
        }
        cand[j] = cand[--nc];
    }
}

static void finish_probe(struct gossip__state *st, uint64_t now)
{
    struct node *nd;
    st->probing = false;
    if (st->acked) {
        unsigned sample = st->indirect ? 1000 : 0;
        st->loss_pm = (st->loss_pm * 15 + sample) / 16;
        health_delta(st, -1);
        return;
    }
    st->c.probes_failed++;
    if (st->nacks_expected > 0) {
        if (st->nacks < st->nacks_expected) {
            health_delta(st, (int)(st->nacks_expected - st->nacks));
        }
    } else {
        health_delta(st, 1);
    }
    nd = find_node(st, st->target);
    if (nd != NULL && is_live(nd->m.state)) {
        suspect_node(st, now, nd->m.id, nd->m.incarnation, self_node(st)->m.id);
    }
}

/* ------------------------------------------------------------------ */
/* Receiving. */

static void handle_primary(struct gossip__state *st,
                           uint64_t now,
                           const struct addr *from,
                           const struct gossip__msg *msg)
{
    struct gossip__msg r;
    struct node *self = self_node(st);
    (void)now;

    switch (msg->type) {
        case GOSSIP__PING:
            if (msg->id != self->m.id) {
                return; /* meant for a previous owner of this address */
            }
            memset(&r, 0, sizeof r);
            r.type = GOSSIP__ACK;
            r.seq = msg->seq;
            r.id = self->m.id;
            {
                /* A member we hold dead is talking to us: tell it, so that
                 * it refutes instead of waiting for a push-pull. */
                struct node *snd = find_node(st, msg->from);
                if (snd != NULL && snd != self && snd->m.state == GOSSIP_DEAD) {
                    struct gossip__msg two[2];
                    two[0] = r;
                    state_msg(GOSSIP__DEAD, snd->m.id, snd->m.incarnation,
                              self->m.id, &two[1]);
                    send_packet(st, from, two, 2, true);
                    return;
                }
            }
            send_packet(st, from, &r, 1, true);
            return;
        case GOSSIP__PING_REQ: {
            struct addr ta;
            struct relay *rl;
            struct node *t;
            if (st->n_relays == RELAY_MAX ||
                addr_parse(msg->addr, &ta, NULL) != 0) {
                return;
            }
            rl = &st->relays[st->n_relays++];
            rl->seq = ++st->seq;
            rl->orig_seq = msg->seq;
            rl->requester = *from;
            rl->deadline = now + st->p.probe_timeout_ms;
            memset(&r, 0, sizeof r);
            r.type = GOSSIP__PING;
            r.seq = rl->seq;
            r.id = msg->id;
            r.from = self->m.id;
            t = find_node(st, msg->id);
            if (t != NULL && t->m.state == GOSSIP_SUSPECT) {
                struct gossip__msg two[2];
                two[0] = r;
                state_msg(GOSSIP__SUSPECT, t->m.id, t->m.incarnation,
                          self->m.id, &two[1]);
                send_packet(st, &ta, two, 2, true);
            } else {
                send_packet(st, &ta, &r, 1, true);
            }
            return;
        }
        case GOSSIP__ACK:
            if (st->probing && msg->seq == st->probe_seq) {
                st->acked = true;
                return;
            }
            for (unsigned i = 0; i < st->n_relays; i++) {
                if (st->relays[i].seq == msg->seq) {
                    memset(&r, 0, sizeof r);
                    r.type = GOSSIP__ACK;
                    r.seq = st->relays[i].orig_seq;
                    r.id = msg->id;
                    send_packet(st, &st->relays[i].requester, &r, 1, true);
                    st->relays[i] = st->relays[--st->n_relays];
                    return;
                }
            }
            return;
        case GOSSIP__NACK:
            if (st->probing && msg->seq == st->probe_seq) {
                st->nacks++;
            }
            return;
        default:
            return;
    }
}

static void handle_member_msg(struct gossip__state *st,
                              uint64_t now,
                              const struct gossip__msg *msg)
{
    switch (msg->type) {
        case GOSSIP__ALIVE:
            alive_node(st, now, &msg->member);
            return;
        case GOSSIP__SUSPECT:
            suspect_node(st, now, msg->id, msg->incarnation, msg->from);
            return;
        case GOSSIP__DEAD:
            dead_node(st, now, msg->id, msg->incarnation, msg->from, false);
            return;
        case GOSSIP__LEFT:
            dead_node(st, now, msg->id, msg->incarnation, msg->id, true);
            return;
        case GOSSIP__LOAD:
            load_node(st, now, msg);
            return;
        default:
            return;
    }
}

void gossip__state_recv(struct gossip__state *st,
                        uint64_t now_ms,
                        const struct addr *from,
                        const void *buf,
                        size_t len)
{
    unsigned n;
    int rv = gossip__packet_decode(buf, len, st->scratch, GOSSIP__MAX_MSGS, &n);
    st->now = now_ms;
    if (rv == ERR_VERSION) {
        st->c.dropped_version++;
        return;
    }
    if (rv != 0) {
        st->c.dropped_malformed++;
        return;
    }
    /* Membership news first, so that a reply carries what it taught us
     * (for example a refutation triggered by a piggybacked suspicion). */
    for (unsigned i = 0; i < n; i++) {
        const struct gossip__msg *m = &st->scratch[i];
        /* A LOAD summary is only ever attached by its sender: an unknown
         * one means the sender knows us and we miss it. Anti-entropy with
         * it closes the gap at once instead of at the next push-pull. */
        if (m->type == GOSSIP__LOAD && find_idx(st, m->id) < 0 &&
            now_ms >= st->last_unknown_pp + UNKNOWN_PP_MS && !st->left) {
            st->last_unknown_pp = now_ms;
            gossip__state_request_pushpull(st, from);
        }
        handle_member_msg(st, now_ms, m);
    }
    for (unsigned i = 0; i < n; i++) {
        handle_primary(st, now_ms, from, &st->scratch[i]);
    }
}

/* ------------------------------------------------------------------ */
/* Ticks. */

static bool has_fresh(const struct gossip__state *st)
{
    for (unsigned i = 0; i < st->n_bq; i++) {
        if (!st->bq[i]->spent) {
            return true;
        }
    }
    return false;
}

static void gossip_round(struct gossip__state *st, uint64_t now)
{
    struct node *cand[GOSSIP_MAX_MEMBERS];
    unsigned nc = 0;
    for (unsigned i = 1; i < st->n; i++) {
        struct node *nd = st->nodes[i];
        if (is_live(nd->m.state) ||
            (nd->m.state == GOSSIP_DEAD &&
             now - nd->m.state_since_ms < GOSSIP_TO_DEAD_MS)) {
            cand[nc++] = nd;
        }
    }
    for (unsigned k = 0; k < st->p.gossip_nodes && nc > 0 && has_fresh(st);
         k++) {
        unsigned j = (unsigned)prng_below(&st->rng, nc);
        send_packet(st, &cand[j]->ga, NULL, 0, false);
        cand[j] = cand[--nc];
    }
}

static void pushpull_round(struct gossip__state *st)
{
    struct node *cand[GOSSIP_MAX_MEMBERS];
    struct node *dead[GOSSIP_MAX_MEMBERS];
    unsigned nc = 0, nd = 0;
    for (unsigned i = 1; i < st->n; i++) {
        if (st->nodes[i]->m.state == GOSSIP_ALIVE) {
            cand[nc++] = st->nodes[i];
        } else if (st->nodes[i]->m.state == GOSSIP_DEAD) {
            dead[nd++] = st->nodes[i];
        }
    }
    if (nc > 0) {
        gossip__state_request_pushpull(st, &cand[prng_below(&st->rng, nc)]->ga);
    }
    /* Reconnect: also try one member we hold dead. After a partition that
     * outlived gossip-to-the-dead, this is what merges the two sides. */
    if (nd > 0) {
        gossip__state_request_pushpull(st, &dead[prng_below(&st->rng, nd)]->ga);
    }
}

/* Heal: push-pull with one member that died recently. Both sides of a
 * short partition hold each other dead and gossip no longer reaches the
 * dead once its news is spent, so without this they would only merge at
 * the next push-pull round (pushpull_interval_ms, 30 s). A push-pull
 * tells the other side it was declared dead, it refutes, and both views
 * are whole again within a few probe periods. A connect to a really dead
 * node fails at once or times out: one attempt per RECONNECT_PERIODS. */
static void reconnect_round(struct gossip__state *st, uint64_t now)
{
    struct node *dead[GOSSIP_MAX_MEMBERS];
    unsigned nd = 0;
    for (unsigned i = 1; i < st->n; i++) {
        const struct node *nd_ = st->nodes[i];
        if (nd_->m.state == GOSSIP_DEAD &&
            now - nd_->m.state_since_ms < RECONNECT_WINDOW_MS) {
            dead[nd++] = st->nodes[i];
        }
    }
    if (nd > 0) {
        gossip__state_request_pushpull(st, &dead[prng_below(&st->rng, nd)]->ga);
    }
}

void gossip__state_tick(struct gossip__state *st, uint64_t now)
{
    st->now = now;
    for (unsigned i = 0; i < st->n_bq;) {
        if (st->bq[i]->spent && now - st->bq[i]->spent_at >= RECENT_MS) {
            bq_remove(st, i);
            continue;
        }
        i++;
    }
    /* Relays whose target stayed silent answer with a nack. */
    for (unsigned i = 0; i < st->n_relays;) {
        if (now >= st->relays[i].deadline) {
            struct gossip__msg r;
            memset(&r, 0, sizeof r);
            r.type = GOSSIP__NACK;
            r.seq = st->relays[i].orig_seq;
            r.id = self_node(st)->m.id;
            send_packet(st, &st->relays[i].requester, &r, 1, false);
            st->relays[i] = st->relays[--st->n_relays];
            continue;
        }
        i++;
    }

    /* Suspicion timers; meanwhile keep pinging the suspect with the
     * suspicion attached, so that it learns of it and its ack (carrying
     * its LOAD summary) brings the refutation back. */
    for (unsigned i = 1; i < st->n; i++) {
        struct node *nd = st->nodes[i];
        if (nd->susp && nd->m.state == GOSSIP_SUSPECT && !st->left &&
            now >= nd->susp_ping) {
            struct gossip__msg two[2];
            memset(&two[0], 0, sizeof two[0]);
            two[0].type = GOSSIP__PING;
            two[0].seq = ++st->seq;
            two[0].id = nd->m.id;
            two[0].from = self_node(st)->m.id;
            state_msg(GOSSIP__SUSPECT, nd->m.id, nd->m.incarnation,
                      self_node(st)->m.id, &two[1]);
            send_packet(st, &nd->ga, two, 2, true);
            nd->susp_ping = now + BUDDY_PING_MS;
        }
        if (nd->susp && nd->m.state == GOSSIP_SUSPECT &&
            now - nd->susp_start >= susp_timeout(nd)) {
            dead_node(st, now, nd->m.id, nd->m.incarnation, self_node(st)->m.id,
                      false);
        }
    }

    if (!st->left) {
        if (st->probing && !st->acked && !st->indirect &&
            now >= st->probe_start + scale(st, st->p.probe_timeout_ms)) {
            send_indirect(st);
        }
        if (st->probing && now >= st->probe_end) {
            finish_probe(st, now);
        }
        if (!st->probing && now >= st->next_probe) {
            start_probe(st, now);
        }
        if (st->load_dirty &&
            now >= st->last_load_bcast + st->p.load_interval_ms) {
            struct gossip__msg m;
            struct gossip_member *s = &self_node(st)->m;
            s->meta_version++;
            self_load_msg(st, &m);
            queue_bcast(st, s->id, &m);
            st->load_dirty = false;
            st->last_load_bcast = now;
        }
        if (now >= st->next_pushpull) {
            unsigned n = est_n(st);
            uint64_t iv = st->p.pushpull_interval_ms;
            if (n > 32) { /* memberlist pushPullScale */
                iv *= (uint64_t)ceil(log2((double)n) - log2(32.0)) + 1;
            }
            st->next_pushpull = now + iv;
            pushpull_round(st);
        }
        if (now >= st->next_reconnect) {
            st->next_reconnect =
                now + (uint64_t)st->p.probe_interval_ms * RECONNECT_PERIODS;
            reconnect_round(st, now);
        }
    }
    if (now >= st->next_gossip) {
        st->next_gossip = now + st->p.gossip_interval_ms;
        gossip_round(st, now);
    }

    /* Reap long-dead members. */
    for (unsigned i = 1; i < st->n;) {
        struct node *nd = st->nodes[i];
        if (!is_live(nd->m.state) &&
            now - nd->m.state_since_ms >= st->p.reap_ms) {
            remove_node(st, i);
            continue;
        }
        i++;
    }
}

/* ------------------------------------------------------------------ */
/* Local updates. */

void gossip__state_set_load(struct gossip__state *st,
                            uint64_t now_ms,
                            const struct gossip_load *load)
{
    struct gossip_member *s = &self_node(st)->m;
    st->now = now_ms;
    if (memcmp(&s->load, load, sizeof *load) == 0) {
        return;
    }
    s->load = *load;
    st->load_dirty = true;
}

void gossip__state_set_meta(struct gossip__state *st,
                            uint64_t now_ms,
                            uint32_t meta)
{
    struct gossip_member *s = &self_node(st)->m;
    struct gossip__msg m;
    st->now = now_ms;
    if (s->meta == meta) {
        return;
    }
    s->meta = meta;
    s->meta_version++;
    self_load_msg(st, &m);
    queue_bcast(st, s->id, &m);
    st->load_dirty = false;
    st->last_load_bcast = now_ms;
}

void gossip__state_leave(struct gossip__state *st, uint64_t now_ms)
{
    struct node *s = self_node(st);
    struct gossip__msg m;
    st->now = now_ms;
    if (st->left) {
        return;
    }
    st->left = true;
    st->probing = false;
    s->m.state = GOSSIP_LEFT;
    s->m.state_since_ms = now_ms;
    state_msg(GOSSIP__LEFT, s->m.id, s->m.incarnation, s->m.id, &m);
    queue_bcast(st, s->m.id, &m);
    st->leave_pending = true;
    st->next_gossip = now_ms; /* send at the next tick */
}

bool gossip__state_leave_done(const struct gossip__state *st)
{
    return st->left && !st->leave_pending;
}

void gossip__state_request_pushpull(struct gossip__state *st,
                                    const struct addr *to)
{
    struct gossip__out *o = out_push(st);
    if (o != NULL) {
        o->kind = GOSSIP__OUT_PUSHPULL;
        o->to = *to;
    }
}

/* ------------------------------------------------------------------ */
/* Push-pull (memberlist mergeState rules). */

int gossip__state_pushpull_encode(struct gossip__state *st,
                                  bool join,
                                  uint8_t **out,
                                  size_t *len)
{
    const struct gossip_member **list = malloc(st->n * sizeof *list);
    int rv;
    if (list == NULL) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < st->n; i++) {
        list[i] = &st->nodes[i]->m;
    }
    rv = gossip__pushpull_encode(list, st->n, join, out, len);
    free(list);
    return rv;
}

struct merge_ctx
{
    struct gossip__state *st;
    uint64_t now;
};

static void merge_cb(const struct gossip_member *m, void *arg)
{
    struct merge_ctx *c = arg;
    struct gossip__state *st = c->st;
    struct node *nd = find_node(st, m->id);

    switch (m->state) {
        case GOSSIP_ALIVE:
            alive_node(st, c->now, m);
            return;
        case GOSSIP_SUSPECT:
            if (nd == NULL) {
                alive_node(st, c->now, m);
            }
            suspect_node(st, c->now, m->id, m->incarnation, 0);
            return;
        case GOSSIP_DEAD:
        case GOSSIP_LEFT:
            if (nd == NULL && m->id != self_node(st)->m.id) {
                /* Learn the dead as dead (listed for /v1/cluster). */
                struct gossip_member r = *m;
                if (add_node(st, c->now, &r) != NULL) {
                    notify(st, m->id, m->state);
                }
                return;
            }
            if (m->state == GOSSIP_LEFT) {
                dead_node(st, c->now, m->id, m->incarnation, m->id, true);
            } else {
                /* Prefer suspicion to an instant death on hearsay. */
                suspect_node(st, c->now, m->id, m->incarnation, 0);
            }
            return;
    }
}

int gossip__state_pushpull_merge(struct gossip__state *st,
                                 uint64_t now_ms,
                                 const void *buf,
                                 size_t len,
                                 bool *join)
{
    struct merge_ctx c = {st, now_ms};
    st->now = now_ms;
    int rv = gossip__pushpull_decode(buf, len, join, merge_cb, &c);
    if (rv == ERR_VERSION) {
        st->c.dropped_version++;
    } else if (rv != 0) {
        st->c.dropped_malformed++;
    }
    return rv;
}

/* ------------------------------------------------------------------ */
/* Lifecycle and views. */

void gossip__params_from_config(struct gossip__params *p,
                                const struct gossip_config *c)
{
    p->probe_interval_ms = c->probe_interval_ms;
    p->probe_timeout_ms = c->probe_timeout_ms;
    p->indirect_checks = c->indirect_checks;
    p->suspicion_min_ms = c->suspicion_min_ms;
    p->suspicion_max_mult = c->suspicion_max_mult;
    p->suspicion_confirm = c->suspicion_confirm;
    p->retransmit_mult = c->retransmit_mult;
    p->gossip_interval_ms = c->gossip_interval_ms;
    p->gossip_nodes = c->gossip_nodes;
    p->pushpull_interval_ms = c->pushpull_interval_ms;
    p->awareness_max = c->awareness_max;
    p->load_interval_ms = c->load_interval_ms;
    p->reap_ms = c->reap_ms;
    p->max_members = GOSSIP_MAX_MEMBERS;
}

struct gossip__state *gossip__state_new(const struct gossip__params *p,
                                        const struct gossip_member *self,
                                        uint64_t seed,
                                        uint64_t now_ms)
{
    struct gossip__state *st = calloc(1, sizeof *st);
    struct gossip__msg m;
    if (st == NULL) {
        return NULL;
    }
    st->p = *p;
    if (st->p.max_members == 0 || st->p.max_members > GOSSIP_MAX_MEMBERS) {
        st->p.max_members = GOSSIP_MAX_MEMBERS;
    }
    if (st->p.awareness_max == 0) {
        st->p.awareness_max = 1;
    }
    prng_seed(&st->rng, seed);
    st->now = now_ms;
    st->cap = st->p.max_members;
    st->cap_bq = 2 * st->p.max_members + 16;
    st->nodes = calloc(st->cap, sizeof *st->nodes);
    st->order = calloc(st->cap, sizeof *st->order);
    st->bq = calloc(st->cap_bq, sizeof *st->bq);
    st->out = calloc(OUT_MAX, sizeof *st->out);
    st->ch = calloc(CHANGE_MAX, sizeof *st->ch);
    st->scratch = calloc(GOSSIP__MAX_MSGS, sizeof *st->scratch);
    if (st->nodes == NULL || st->order == NULL || st->bq == NULL ||
        st->out == NULL || st->ch == NULL || st->scratch == NULL) {
        goto err;
    }
    st->nodes[0] = calloc(1, sizeof *st->nodes[0]);
    if (st->nodes[0] == NULL) {
        goto err;
    }
    st->n = 1;
    st->nodes[0]->m = *self;
    st->nodes[0]->m.state = GOSSIP_ALIVE;
    st->nodes[0]->m.state_since_ms = now_ms;
    if (addr_parse(self->gossip, &st->nodes[0]->ga, NULL) != 0) {
        goto err;
    }
    /* Spread the first probe so that nodes started together do not probe
     * in lockstep. */
    st->next_probe =
        now_ms + prng_below(&st->rng, (uint64_t)p->probe_interval_ms + 1);
    st->next_gossip = now_ms + p->gossip_interval_ms;
    st->next_pushpull =
        now_ms + p->pushpull_interval_ms / 2 +
        prng_below(&st->rng, (uint64_t)p->pushpull_interval_ms / 2 + 1);
    alive_msg(&st->nodes[0]->m, &m);
    queue_bcast(st, self->id, &m);
    return st;
err:
    gossip__state_free(st);
    return NULL;
}

void gossip__state_free(struct gossip__state *st)
{
    if (st == NULL) {
        return;
    }
    for (unsigned i = 0; st->nodes != NULL && i < st->n; i++) {
        free(st->nodes[i]);
    }
    for (unsigned i = 0; st->bq != NULL && i < st->n_bq; i++) {
        bcast_free(st->bq[i]);
    }
    free(st->nodes);
    free(st->order);
    free(st->bq);
    free(st->out);
    free(st->ch);
    free(st->scratch);
    free(st);
}

bool gossip__state_pop_out(struct gossip__state *st, struct gossip__out *out)
{
    struct gossip__out *o;
    if (st->out_n == 0) {
        return false;
    }
    o = &st->out[st->out_head];
    memcpy(out, o, offsetof(struct gossip__out, buf) + o->len);
    st->out_head = (st->out_head + 1) % OUT_MAX;
    st->out_n--;
    return true;
}

bool gossip__state_pop_change(struct gossip__state *st,
                              struct gossip__change *c)
{
    if (st->ch_n == 0) {
        return false;
    }
    *c = st->ch[st->ch_head];
    st->ch_head = (st->ch_head + 1) % CHANGE_MAX;
    st->ch_n--;
    return true;
}

unsigned gossip__state_count(const struct gossip__state *st)
{
    return st->n;
}

const struct gossip_member *gossip__state_at(const struct gossip__state *st,
                                             unsigned i)
{
    return i < st->n ? &st->nodes[i]->m : NULL;
}

const struct gossip_member *gossip__state_find(const struct gossip__state *st,
                                               const char *name)
{
    int i = find_name_idx(st, name);
    return i < 0 ? NULL : &st->nodes[i]->m;
}

const struct gossip_member *gossip__state_find_id(
    const struct gossip__state *st,
    uint64_t id)
{
    int i = find_idx(st, id);
    return i < 0 ? NULL : &st->nodes[i]->m;
}

unsigned gossip__state_health(const struct gossip__state *st)
{
    return st->health;
}

void gossip__state_counters(const struct gossip__state *st,
                            struct gossip__counters *out)
{
    *out = st->c;
}
