/* Gossip simulation: N pure state machines on a simulated lossy network and
 * clock (convergence, failure detection bound, refutation, loss, leave,
 * load propagation, restart, name conflicts). TEST_SEED replays a run. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "gossip/gossip_int.h"
#include "util.h"

TestSuite(gossip_sim, .timeout = 120);

#define SIM_MAX 64
#define STEP_MS 10
#define BASE_PORT 20000

struct pkt
{
    uint64_t at;
    unsigned to;
    struct addr from;
    size_t len;
    uint8_t buf[GOSSIP__MAX_UDP];
};

struct simnode
{
    struct gossip__state *st;
    struct gossip_member self;
    bool up;   /* ticks and receives */
    bool deaf; /* drops everything it receives */
    int side;  /* partition side; packets cross only if equal */
};

struct sim
{
    unsigned n;
    struct simnode nodes[SIM_MAX];
    struct pkt **q;
    unsigned nq, capq;
    struct addr pp_from[256];
    unsigned pp_src[256], npp;
    uint64_t now;
    unsigned loss_pct;
    struct prng rng;
    struct gossip__params p;
    uint64_t udp_bytes, udp_packets;
};

static uint64_t seed_base(void)
{
    static uint64_t seed;
    if (seed == 0) {
        const char *s = getenv("TEST_SEED");
        seed = s != NULL ? strtoull(s, NULL, 0) : time_mono_ms();
        if (seed == 0) {
            seed = 1;
        }
    }
    return seed;
}

static void default_params(struct gossip__params *p)
{
    struct gossip_config c;
    gossip_config_defaults(&c);
    gossip__params_from_config(p, &c);
}

static struct sim *sim_new(const char *test)
{
    struct sim *s = calloc(1, sizeof *s);
    uint64_t seed = seed_base() ^ hash64(test, strlen(test), 0);
    fprintf(stderr, "gossip_sim %s: TEST_SEED=%llu\n", test,
            (unsigned long long)seed_base());
    prng_seed(&s->rng, seed);
    default_params(&s->p);
    s->now = 1000000;
    return s;
}

static void sim_free(struct sim *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        gossip__state_free(s->nodes[i].st);
    }
    for (unsigned i = 0; i < s->nq; i++) {
        free(s->q[i]);
    }
    free(s->q);
    free(s);
}

static int node_of(const struct sim *s, const struct addr *a)
{
    int i = (int)a->port - BASE_PORT;
    if (strcmp(a->host, "127.0.0.1") != 0 || i < 0 || i >= (int)s->n) {
        return -1;
    }
    return i;
}

static void sim_drain(struct sim *s, unsigned i)
{
    struct simnode *nd = &s->nodes[i];
    static struct gossip__out o;
    struct gossip__change c;
    while (gossip__state_pop_out(nd->st, &o)) {
        if (o.kind == GOSSIP__OUT_PUSHPULL) {
            if (s->npp < ARRAY_SIZE(s->pp_src)) {
                s->pp_src[s->npp] = i;
                s->pp_from[s->npp++] = o.to;
            }
            continue;
        }
        s->udp_packets++;
        s->udp_bytes += o.len;
        cr_assert(o.len <= GOSSIP__MAX_UDP);
        if (prng_below(&s->rng, 100) < s->loss_pct) {
            continue;
        }
        {
            int to = node_of(s, &o.to);
            struct pkt *p;
            if (to < 0 || s->nodes[to].side != nd->side) {
                continue;
            }
            if (s->nq == s->capq) {
                s->capq = s->capq ? 2 * s->capq : 256;
                s->q = realloc(s->q, s->capq * sizeof *s->q);
            }
            p = malloc(sizeof *p);
            p->at = s->now + 1 + prng_below(&s->rng, 5);
            p->to = (unsigned)to;
            addr_parse(nd->self.gossip, &p->from, NULL);
            p->len = o.len;
            memcpy(p->buf, o.buf, o.len);
            s->q[s->nq++] = p;
        }
    }
    while (gossip__state_pop_change(nd->st, &c)) {
    }
}

static void sim_add(struct sim *s, unsigned i, uint64_t inc)
{
    struct simnode *nd = &s->nodes[i];
    memset(&nd->self, 0, sizeof nd->self);
    snprintf(nd->self.name, sizeof nd->self.name, "n%02u", i);
    nd->self.id = 1000 + i;
    nd->self.incarnation = inc;
    snprintf(nd->self.gossip, sizeof nd->self.gossip, "127.0.0.1:%u",
             BASE_PORT + i);
    snprintf(nd->self.api, sizeof nd->self.api, "127.0.0.1:%u",
             BASE_PORT + 1000 + i);
    nd->self.load.slots = 4;
    nd->st = gossip__state_new(&s->p, &nd->self, prng_next(&s->rng), s->now);
    cr_assert_not_null(nd->st);
    nd->up = true;
    nd->deaf = false;
    if (i >= s->n) {
        s->n = i + 1;
    }
}

/* Push-pull: reliable (TCP) unless the peer is down. */
static bool sim_pushpull(struct sim *s, unsigned from, const struct addr *to)
{
    int t = node_of(s, to);
    uint8_t *a, *b;
    size_t la, lb;
    bool join;
    if (t < 0 || !s->nodes[t].up || !s->nodes[from].up ||
        s->nodes[t].side != s->nodes[from].side) {
        return false;
    }
    cr_assert_eq(
        gossip__state_pushpull_encode(s->nodes[from].st, true, &a, &la), 0);
    cr_assert_eq(
        gossip__state_pushpull_merge(s->nodes[t].st, s->now, a, la, &join), 0);
    cr_assert_eq(gossip__state_pushpull_encode(s->nodes[t].st, false, &b, &lb),
                 0);
    cr_assert_eq(
        gossip__state_pushpull_merge(s->nodes[from].st, s->now, b, lb, &join),
        0);
    free(a);
    free(b);
    sim_drain(s, (unsigned)t);
    sim_drain(s, from);
    return true;
}

static void sim_step(struct sim *s)
{
    unsigned k = 0;
    s->now += STEP_MS;
    /* Deliver due packets in queue order. */
    for (unsigned i = 0; i < s->nq; i++) {
        struct pkt *p = s->q[i];
        if (p->at > s->now) {
            s->q[k++] = p;
            continue;
        }
        if (s->nodes[p->to].up && !s->nodes[p->to].deaf) {
            gossip__state_recv(s->nodes[p->to].st, s->now, &p->from, p->buf,
                               p->len);
            sim_drain(s, p->to);
        }
        free(p);
    }
    /* Packets queued during delivery were appended and visited by the
     * same loop (they are not due yet), so q[0..k) is the new queue. */
    s->nq = k;
    for (unsigned i = 0; i < s->n; i++) {
        if (s->nodes[i].up) {
            gossip__state_tick(s->nodes[i].st, s->now);
            sim_drain(s, i);
        }
    }
    for (unsigned i = 0; i < s->npp; i++) {
        sim_pushpull(s, s->pp_src[i], &s->pp_from[i]);
    }
    s->npp = 0;
}

static enum gossip_state view(struct sim *s, unsigned obs, unsigned subj)
{
    const struct gossip_member *m =
        gossip__state_find_id(s->nodes[obs].st, 1000 + subj);
    return m == NULL ? (enum gossip_state) - 1 : m->state;
}

/* Every up node sees every up node alive (and n members). */
static bool converged(struct sim *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        if (!s->nodes[i].up) {
            continue;
        }
        for (unsigned j = 0; j < s->n; j++) {
            if (s->nodes[j].up && view(s, i, j) != GOSSIP_ALIVE) {
                return false;
            }
        }
    }
    return true;
}

/* Start n nodes, all joining through node 0, and converge. Returns the
 * simulated ms it took. */
static uint64_t sim_start(struct sim *s, unsigned n, uint64_t bound_ms)
{
    uint64_t t0 = s->now;
    for (unsigned i = 0; i < n; i++) {
        sim_add(s, i, 1);
    }
    for (unsigned i = 1; i < n; i++) {
        struct addr a;
        addr_parse(s->nodes[0].self.gossip, &a, NULL);
        cr_assert(sim_pushpull(s, i, &a));
    }
    while (!converged(s)) {
        if (s->now - t0 > bound_ms) {
            for (unsigned i = 0; i < n; i++) {
                unsigned a = 0;
                for (unsigned j = 0; j < n; j++) {
                    a += view(s, i, j) == GOSSIP_ALIVE;
                }
                fprintf(stderr, "n%02u sees %u alive of %u known\n", i, a,
                        gossip__state_count(s->nodes[i].st));
            }
        }
        cr_assert(s->now - t0 <= bound_ms,
                  "%u nodes did not converge within %llu ms", n,
                  (unsigned long long)bound_ms);
        sim_step(s);
    }
    return s->now - t0;
}

/* The documented bound (docs/gossip.md): detection by every member within
 * 3 probe intervals + the maximum suspicion timeout + 1 s of
 * dissemination. */
static uint64_t detect_bound(const struct gossip__params *p, unsigned n)
{
    double min =
        (double)p->suspicion_min_ms * (n > 10 ? log10((double)n) : 1.0);
    double max =
        n - 2 < p->suspicion_confirm ? min : min * p->suspicion_max_mult;
    return 3 * p->probe_interval_ms + (uint64_t)max + 1000;
}

/* Stop node x; return ms until every other up node lists it dead, after
 * checking that it was suspected first by someone. */
static uint64_t kill_and_measure(struct sim *s, unsigned x, uint64_t bound)
{
    uint64_t t0 = s->now;
    bool suspected = false;
    s->nodes[x].up = false;
    for (;;) {
        bool all = true;
        sim_step(s);
        for (unsigned i = 0; i < s->n; i++) {
            enum gossip_state v;
            if (i == x || !s->nodes[i].up) {
                continue;
            }
            v = view(s, i, x);
            if (v == GOSSIP_SUSPECT) {
                suspected = true;
            }
            if (v != GOSSIP_DEAD) {
                all = false;
            }
        }
        if (all) {
            break;
        }
        cr_assert(s->now - t0 <= bound,
                  "node %u not dead everywhere within %llu ms", x,
                  (unsigned long long)bound);
    }
    cr_assert(suspected, "node %u was never seen suspect before dead", x);
    return s->now - t0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

Test(gossip_sim, fifty_converge_and_detect)
{
    struct sim *s = sim_new("fifty");
    uint64_t conv = sim_start(s, 50, 20000);
    uint64_t bound = detect_bound(&s->p, 50), t;
    fprintf(stderr, "gossip_sim: 50 nodes converged in %llu ms\n",
            (unsigned long long)conv);
    t = kill_and_measure(s, 17, bound);
    fprintf(stderr,
            "gossip_sim: 50 nodes: dead everywhere after %llu ms "
            "(bound %llu)\n",
            (unsigned long long)t, (unsigned long long)bound);
    sim_free(s);
}

/* Detection time distribution at 3 and 20 members (fresh cluster each
 * trial, 1-5 ms latency, no loss). */
static void detect_trials(unsigned n, unsigned trials, uint64_t median_max)
{
    struct gossip__params p;
    uint64_t *ts = calloc(trials, sizeof *ts);
    char name[32];
    default_params(&p);
    for (unsigned k = 0; k < trials; k++) {
        struct sim *s;
        snprintf(name, sizeof name, "detect%u-%u", n, k);
        s = sim_new(name);
        sim_start(s, n, 20000);
        /* Let the startup broadcasts drain and phases spread. */
        for (unsigned w = 0; w < 300 + prng_below(&s->rng, 100); w++) {
            sim_step(s);
        }
        ts[k] = kill_and_measure(s, 1 + (unsigned)prng_below(&s->rng, n - 1),
                                 detect_bound(&s->p, n));
        sim_free(s);
    }
    qsort(ts, trials, sizeof *ts, cmp_u64);
    fprintf(stderr,
            "gossip_sim: %u nodes, %u kills: detection min %llu median %llu "
            "p90 %llu max %llu ms (bound %llu)\n",
            n, trials, (unsigned long long)ts[0],
            (unsigned long long)ts[trials / 2],
            (unsigned long long)ts[trials * 9 / 10],
            (unsigned long long)ts[trials - 1],
            (unsigned long long)detect_bound(&p, n));
    cr_assert(ts[trials / 2] <= median_max, "median %llu > %llu",
              (unsigned long long)ts[trials / 2],
              (unsigned long long)median_max);
    free(ts);
}

Test(gossip_sim, detect_three)
{
    detect_trials(3, 30, 2000);
}

Test(gossip_sim, detect_twenty)
{
    detect_trials(20, 20, 3500);
}

Test(gossip_sim, suspected_member_refutes)
{
    struct sim *s = sim_new("refute");
    const unsigned x = 4;
    uint64_t inc0, t0;
    bool suspected = false;
    sim_start(s, 10, 20000);
    inc0 = gossip__state_find_id(s->nodes[x].st, 1000 + x)->incarnation;
    /* x goes deaf until someone suspects it, then hears again. */
    s->nodes[x].deaf = true;
    t0 = s->now;
    while (!suspected) {
        sim_step(s);
        for (unsigned i = 0; i < s->n; i++) {
            if (i != x && view(s, i, x) == GOSSIP_SUSPECT) {
                suspected = true;
            }
        }
        cr_assert(s->now - t0 < 30000, "never suspected");
    }
    s->nodes[x].deaf = false;
    /* For 20 s nobody may declare it dead, and all must see it alive with
     * a higher incarnation. */
    t0 = s->now;
    while (s->now - t0 < 20000) {
        sim_step(s);
        for (unsigned i = 0; i < s->n; i++) {
            cr_assert(view(s, i, x) != GOSSIP_DEAD,
                      "n%02u declared the refuting n%02u dead", i, x);
        }
    }
    cr_assert(converged(s));
    for (unsigned i = 0; i < s->n; i++) {
        cr_assert_gt(
            gossip__state_find_id(s->nodes[i].st, 1000 + x)->incarnation, inc0);
    }
    sim_free(s);
}

static void loss_run(unsigned n, uint64_t ms)
{
    char name[32];
    struct sim *s;
    uint64_t t0, susp = 0, deaths = 0, first = 0;
    const char *env = getenv("GOSSIP_SIM_LOSS_MS");
    if (env != NULL) {
        ms = strtoull(env, NULL, 0);
    }
    snprintf(name, sizeof name, "loss%u", n);
    s = sim_new(name);
    sim_start(s, n, 20000);
    s->loss_pct = 20;
    if (getenv("GOSSIP_SIM_LOSS_PCT") != NULL) {
        s->loss_pct = (unsigned)atoi(getenv("GOSSIP_SIM_LOSS_PCT"));
    }
    t0 = s->now;
    while (s->now - t0 < ms) {
        sim_step(s);
        for (unsigned i = 0; i < s->n; i++) {
            for (unsigned j = 0; j < s->n; j++) {
                if (view(s, i, j) == GOSSIP_DEAD) {
                    if (deaths == 0) {
                        first = s->now - t0;
                    }
                    deaths++;
                    /* Count each once: revive by refutation happens. */
                }
            }
        }
    }
    for (unsigned i = 0; i < s->n; i++) {
        struct gossip__counters c;
        gossip__state_counters(s->nodes[i].st, &c);
        susp += c.suspicions;
    }
    fprintf(stderr,
            "gossip_sim: %u nodes, %u%% loss for %llu s: %llu dead-steps "
            "(first at +%llu ms), %llu suspicions\n",
            n, s->loss_pct, (unsigned long long)(ms / 1000),
            (unsigned long long)deaths, (unsigned long long)first,
            (unsigned long long)susp);
    cr_assert_eq(deaths, 0, "false deaths with 20%% loss");
    sim_free(s);
}

Test(gossip_sim, loss_20pct_no_false_deaths_3)
{
    loss_run(3, 600000);
}

Test(gossip_sim, loss_20pct_no_false_deaths_20)
{
    loss_run(20, 300000);
}

Test(gossip_sim, left_member_is_seen_left)
{
    struct sim *s = sim_new("left");
    const unsigned x = 3;
    uint64_t t0;
    sim_start(s, 10, 20000);
    gossip__state_leave(s->nodes[x].st, s->now);
    t0 = s->now;
    while (!gossip__state_leave_done(s->nodes[x].st)) {
        sim_step(s);
        cr_assert(s->now - t0 < 1000, "leave broadcast not done in 1 s");
    }
    s->nodes[x].up = false;
    for (;;) {
        bool all = true;
        for (unsigned i = 0; i < s->n; i++) {
            if (i != x && view(s, i, x) != GOSSIP_LEFT) {
                all = false;
            }
        }
        if (all) {
            break;
        }
        cr_assert(s->now - t0 < 3000, "left not seen by all in 3 s");
        sim_step(s);
    }
    /* It stays left (never dead) afterwards. */
    t0 = s->now;
    while (s->now - t0 < 10000) {
        sim_step(s);
    }
    for (unsigned i = 0; i < s->n; i++) {
        if (i != x) {
            cr_assert_eq(view(s, i, x), GOSSIP_LEFT);
        }
    }
    sim_free(s);
}

Test(gossip_sim, load_and_meta_propagate)
{
    struct sim *s = sim_new("load");
    const unsigned x = 5, n = 20;
    struct gossip_load l = {.running = 5,
                            .slots = 8,
                            .queued = 2,
                            .load1_milli = 1500,
                            .mem_free_kib = 123456};
    uint64_t t0;
    sim_start(s, n, 20000);
    for (unsigned w = 0; w < 300; w++) {
        sim_step(s);
    }
    gossip__state_set_load(s->nodes[x].st, s->now, &l);
    gossip__state_set_meta(s->nodes[x].st, s->now, GOSSIP_META_IN_CLUSTER);
    t0 = s->now;
    for (;;) {
        bool all = true;
        sim_step(s);
        for (unsigned i = 0; i < n; i++) {
            const struct gossip_member *m =
                gossip__state_find_id(s->nodes[i].st, 1000 + x);
            if (m->load.running != 5 || m->load.mem_free_kib != 123456 ||
                m->meta != GOSSIP_META_IN_CLUSTER) {
                all = false;
            }
        }
        if (all) {
            break;
        }
        cr_assert(s->now - t0 <= 2 * s->p.probe_interval_ms,
                  "load not everywhere within 2 probe intervals");
    }
    fprintf(stderr, "gossip_sim: load+meta reached %u nodes in %llu ms\n", n,
            (unsigned long long)(s->now - t0));
    /* A second update supersedes the first. */
    l.running = 6;
    gossip__state_set_load(s->nodes[x].st, s->now, &l);
    t0 = s->now;
    for (;;) {
        bool all = true;
        sim_step(s);
        for (unsigned i = 0; i < n; i++) {
            if (gossip__state_find_id(s->nodes[i].st, 1000 + x)->load.running !=
                6) {
                all = false;
            }
        }
        if (all) {
            break;
        }
        cr_assert(s->now - t0 <= 2 * s->p.probe_interval_ms);
    }
    sim_free(s);
}

Test(gossip_sim, restarted_node_is_alive_again)
{
    struct sim *s = sim_new("restart");
    const unsigned x = 2, n = 10;
    struct addr seed;
    uint64_t t0;
    sim_start(s, n, 20000);
    kill_and_measure(s, x, detect_bound(&s->p, n));
    /* Same name and id, new process, larger incarnation (wall seconds). */
    gossip__state_free(s->nodes[x].st);
    sim_add(s, x, 1000);
    addr_parse(s->nodes[0].self.gossip, &seed, NULL);
    cr_assert(sim_pushpull(s, x, &seed));
    t0 = s->now;
    while (!converged(s)) {
        sim_step(s);
        cr_assert(s->now - t0 < 3000, "restarted node not alive in 3 s");
    }
    fprintf(stderr, "gossip_sim: restarted node alive everywhere in %llu ms\n",
            (unsigned long long)(s->now - t0));
    /* Restart with a *smaller* incarnation: refutes on hearing itself
     * dead/older. */
    kill_and_measure(s, x, detect_bound(&s->p, n));
    gossip__state_free(s->nodes[x].st);
    sim_add(s, x, 5);
    cr_assert(sim_pushpull(s, x, &seed));
    t0 = s->now;
    while (!converged(s)) {
        sim_step(s);
        cr_assert(s->now - t0 < 3000, "refuting restart not alive in 3 s");
    }
    sim_free(s);
}

Test(gossip_sim, name_conflict_keeps_current_holder)
{
    struct sim *s = sim_new("conflict");
    struct gossip_member imp;
    struct gossip__state *st;
    struct gossip__counters c;
    uint8_t *buf;
    size_t len;
    bool join;
    sim_start(s, 5, 20000);
    /* An impostor: same name as n01, another id. */
    imp = s->nodes[1].self;
    imp.id = 9999;
    strcpy(imp.gossip, "127.0.0.1:29999");
    st = gossip__state_new(&s->p, &imp, 1, s->now);
    cr_assert_eq(gossip__state_pushpull_encode(st, true, &buf, &len), 0);
    cr_assert_eq(
        gossip__state_pushpull_merge(s->nodes[0].st, s->now, buf, len, &join),
        0);
    free(buf);
    gossip__state_free(st);
    cr_assert_eq(gossip__state_find(s->nodes[0].st, "n01")->id, 1001);
    cr_assert_null(gossip__state_find_id(s->nodes[0].st, 9999));
    gossip__state_counters(s->nodes[0].st, &c);
    cr_assert_eq(c.name_conflicts, 1);
    sim_free(s);
}

Test(gossip_sim, bytes_per_node_idle)
{
    struct sim *s = sim_new("bytes");
    const unsigned n = 20;
    uint64_t b0, t0;
    sim_start(s, n, 20000);
    for (unsigned w = 0; w < 500; w++) {
        sim_step(s);
    }
    b0 = s->udp_bytes;
    t0 = s->now;
    while (s->now - t0 < 60000) {
        sim_step(s);
    }
    fprintf(stderr,
            "gossip_sim: idle UDP payload per node: %llu B/s (20 nodes, "
            "push-pull TCP not counted)\n",
            (unsigned long long)((s->udp_bytes - b0) / n / 60));
    cr_assert((s->udp_bytes - b0) / n / 60 < 600);
    sim_free(s);
}

Test(gossip_sim, garbage_is_counted_not_trusted)
{
    struct sim *s = sim_new("garbage");
    struct gossip__counters c;
    uint8_t junk[200];
    struct addr from;
    sim_start(s, 3, 20000);
    addr_parse("127.0.0.1:1", &from, NULL);
    for (unsigned i = 0; i < 1000; i++) {
        size_t l = 1 + prng_below(&s->rng, sizeof junk);
        for (size_t j = 0; j < l; j++) {
            junk[j] = (uint8_t)prng_next(&s->rng);
        }
        gossip__state_recv(s->nodes[0].st, s->now, &from, junk, l);
        sim_drain(s, 0);
    }
    gossip__state_counters(s->nodes[0].st, &c);
    cr_assert_geq(c.dropped_malformed + c.dropped_version, 990);
    cr_assert(converged(s));
    sim_free(s);
}

Test(gossip_sim, long_partition_heals)
{
    struct sim *s = sim_new("partition");
    const unsigned n = 10;
    uint64_t t0;
    sim_start(s, n, 20000);
    for (unsigned i = n / 2; i < n; i++) {
        s->nodes[i].side = 1;
    }
    /* Longer than gossip-to-the-dead (30 s): only reconnect push-pulls
     * can merge the sides again. */
    t0 = s->now;
    while (s->now - t0 < 60000) {
        sim_step(s);
    }
    cr_assert_eq(view(s, 0, n - 1), GOSSIP_DEAD);
    cr_assert_eq(view(s, n - 1, 0), GOSSIP_DEAD);
    for (unsigned i = 0; i < n; i++) {
        s->nodes[i].side = 0;
    }
    t0 = s->now;
    while (!converged(s)) {
        sim_step(s);
        cr_assert(s->now - t0 < 35000, "partition not healed in 35 s");
    }
    fprintf(stderr, "gossip_sim: 60 s partition healed in %llu ms\n",
            (unsigned long long)(s->now - t0));
    sim_free(s);
}

/* A partition a little longer than detection (both sides declare the
 * other dead) but far shorter than the push-pull period: the reconnect
 * push-pulls merge the views within a few probe periods of the heal, not
 * at the next 30 s anti-entropy round. */
Test(gossip_sim, short_partition_heals_within_seconds)
{
    struct sim *s = sim_new("short-partition");
    const unsigned n = 3;
    uint64_t t0, bound;
    sim_start(s, n, 20000);
    s->nodes[0].side = 1;
    t0 = s->now;
    while (view(s, 0, 1) != GOSSIP_DEAD || view(s, 1, 0) != GOSSIP_DEAD ||
           view(s, 2, 0) != GOSSIP_DEAD || view(s, 0, 2) != GOSSIP_DEAD) {
        sim_step(s);
        cr_assert(s->now - t0 < 20000, "partition never detected");
    }
    /* ... and lasts until the news of the deaths is spent */
    t0 = s->now;
    while (s->now - t0 < 10000) {
        sim_step(s);
    }
    for (unsigned i = 0; i < n; i++) {
        s->nodes[i].side = 0;
    }
    /* reconnect period + a push-pull + a refutation's dissemination */
    bound = (uint64_t)s->p.probe_interval_ms * 4 * 3;
    t0 = s->now;
    while (!converged(s)) {
        sim_step(s);
        cr_assert(s->now - t0 < bound, "short partition not healed in %llu ms",
                  (unsigned long long)bound);
    }
    fprintf(stderr, "gossip_sim: short partition healed in %llu ms\n",
            (unsigned long long)(s->now - t0));
    sim_free(s);
}
