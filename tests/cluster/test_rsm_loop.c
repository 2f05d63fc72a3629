/* Real struct rsm instances (raft_uv over TCP on 127.0.0.1) sharing one uv
 * loop in the test process; forwarding is done in-process. Suite
 * rsm_digest_loop: the leader proposes DIGESTs on its cadence, every node
 * agrees, and a follower whose FSM is corrupted on purpose (test hook)
 * flags itself diverged while the others do not. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "lib/cluster.h"
#include "lib/harness.h"
#include "raft/rsm.h"

TestSuite(rsm_loop, .timeout = 60);
TestSuite(rsm_digest_loop, .timeout = 60);

#define N 3
#define NMAX 5

static uv_loop_t loop;
static uv_timer_t ticker;
static struct rsm *nodes[NMAX];
static bool closed[NMAX];
static char root[512];
static uint16_t ports[NMAX];
static unsigned fwd_timeout_ms = 3000;
static unsigned digest_entries = 0; /* 0: the default cadence */

/* The forward hook: hand the batch to the leader's instance directly. */
static int forward(struct rsm *r,
                   uint64_t leader_id,
                   const void *buf,
                   size_t len,
                   rsm_forward_done done,
                   void *req,
                   void *ud)
{
    (void)r;
    (void)ud;
    if (leader_id == 0 || leader_id > NMAX || nodes[leader_id - 1] == NULL) {
        return ERR_UNAVAILABLE;
    }
    return rsm_propose_encoded(nodes[leader_id - 1], buf, len, done, req);
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

static void loop_setup(void)
{
    /* Like main: a write to a closed peer must not kill the process
     * (STACK pitfall 2). */
    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, tick_cb, 5, 5);
    th_tmpdir(root, sizeof root, "rsm");
}

static void loop_teardown(void)
{
    uv_close((uv_handle_t *)&ticker, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "leaked handles");
    th_rmrf(root);
}

static bool run_until(bool (*cond)(void *), void *arg, unsigned timeout_ms)
{
    uint64_t end = th_now_ms() + timeout_ms;
    while (th_now_ms() < end) {
        if (cond(arg)) {
            return true;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    return cond(arg);
}

static struct rsm *make_node(unsigned i, unsigned n_ports)
{
    struct rsm_config cfg;
    char errmsg[ERRMSG_SIZE] = "";
    struct rsm *r;

    (void)n_ports;
    rsm_config_defaults(&cfg);
    cfg.id = i + 1;
    snprintf(cfg.name, sizeof cfg.name, "n%u", i + 1);
    str_copy(cfg.raft.host, sizeof cfg.raft.host, "127.0.0.1");
    cfg.raft.port = ports[i];
    snprintf(cfg.dir, sizeof cfg.dir, "%s/n%u", root, i + 1);
    cfg.election_ms = 150;
    cfg.heartbeat_ms = 15;
    cfg.segment_kib = 256;
    cfg.snapshot_threshold = 64;
    cfg.snapshot_trailing = 64;
    cfg.forward_timeout_ms = fwd_timeout_ms;
    cfg.forward = forward;
    if (digest_entries != 0) {
        cfg.digest_entries = digest_entries;
    }
    r = rsm_create(&loop, &cfg, errmsg);
    cr_assert_not_null(r, "%s", errmsg);
    cr_assert_eq(rsm_start(r, errmsg), 0, "%s", errmsg);
    return r;
}

static void closed_cb(struct rsm *r, void *data)
{
    (void)r;
    closed[(uintptr_t)data] = true;
}

static bool is_closed(void *arg)
{
    return closed[(uintptr_t)arg];
}

static void close_node(unsigned i)
{
    closed[i] = false;
    rsm_close(nodes[i], closed_cb, (void *)(uintptr_t)i);
    nodes[i] = NULL;
    cr_assert(run_until(is_closed, (void *)(uintptr_t)i, 5000));
}

static bool has_leader(void *arg)
{
    unsigned i;
    (void)arg;
    for (i = 0; i < NMAX; i++) {
        if (nodes[i] != NULL && rsm_is_leader(nodes[i])) {
            return true;
        }
    }
    return false;
}

static int leader_index(void)
{
    unsigned i;
    for (i = 0; i < NMAX; i++) {
        if (nodes[i] != NULL && rsm_is_leader(nodes[i])) {
            return (int)i;
        }
    }
    return -1;
}

struct outcome
{
    bool fired;
    int rv;
    struct rsm_result res;
    struct rsm *on;       /* the proposer */
    bool visible_locally; /* the pipeline was there when the cb fired */
    char name[32];
};

static void proposed_cb(void *data, int rv, const struct rsm_result *res)
{
    struct outcome *o = data;
    o->fired = true;
    o->rv = rv;
    if (res != NULL) {
        o->res = *res;
    }
    o->visible_locally = rsm_fsm_pipeline(rsm_state(o->on), o->name) != NULL;
}

static bool fired(void *arg)
{
    return ((struct outcome *)arg)->fired;
}

static void propose_pipeline(struct rsm *r, const char *name, struct outcome *o)
{
    struct rsm_cmd cmd;
    memset(o, 0, sizeof *o);
    o->on = r;
    str_copy(o->name, sizeof o->name, name);
    cl_cmd_pipeline(&cmd, name);
    cr_assert_eq(rsm_propose(r, &cmd, proposed_cb, o), 0);
    cr_assert(run_until(fired, o, 5000), "proposal %s never completed", name);
    cr_assert_eq(o->rv, 0, "proposal %s: %s", name, err_str(o->rv));
    cr_assert_eq(o->res.code, 0, "%s", o->res.message);
    cr_assert(o->visible_locally, "%s not applied on the proposer", name);
}

struct count_arg
{
    unsigned want;
};

static bool all_have(void *arg)
{
    struct count_arg *a = arg;
    unsigned i;
    for (i = 0; i < NMAX; i++) {
        if (nodes[i] != NULL &&
            rsm_fsm_pipeline_count(rsm_state(nodes[i])) != a->want) {
            return false;
        }
    }
    return true;
}

static void barrier_cb(void *data, int rv)
{
    int *out = data;
    *out = rv;
}

static bool barrier_done(void *arg)
{
    return *(int *)arg != -1;
}

Test(rsm_loop,
     three_nodes_forward_failover_close,
     .init = loop_setup,
     .fini = loop_teardown)
{
    struct rsm_server servers[N];
    struct outcome o;
    struct count_arg ca;
    int leader, follower, brv;
    unsigned i;

    th_free_ports(ports, N);
    for (i = 0; i < N; i++) {
        servers[i].id = i + 1;
        snprintf(servers[i].raft, sizeof servers[i].raft, "127.0.0.1:%u",
                 ports[i]);
    }
    for (i = 0; i < N; i++) {
        nodes[i] = make_node(i, N);
        cr_assert(!rsm_has_state(nodes[i]));
        cr_assert_eq(rsm_bootstrap(nodes[i], servers, N), 0);
        cr_assert(rsm_has_state(nodes[i]));
    }
    cr_assert(run_until(has_leader, NULL, 5000), "no leader elected");
    leader = leader_index();
    follower = (leader + 1) % N;
    for (i = 0; i < N; i++) {
        cr_assert_eq(rsm_role_of(nodes[i], i + 1), RSM_ROLE_VOTER);
    }

    /* A follower's proposal is forwarded and applied everywhere. */
    propose_pipeline(nodes[follower], "from-follower", &o);
    ca.want = 1;
    cr_assert(run_until(all_have, &ca, 5000));
    /* And a leader's. */
    propose_pipeline(nodes[leader], "from-leader", &o);
    ca.want = 2;
    cr_assert(run_until(all_have, &ca, 5000));

    /* Barrier from a follower. */
    brv = -1;
    cr_assert_eq(rsm_barrier(nodes[follower], barrier_cb, &brv), 0);
    cr_assert(run_until(barrier_done, &brv, 5000));
    cr_assert_eq(brv, 0);

    /* Close the leader: a new one is elected and proposals continue. */
    close_node((unsigned)leader);
    cr_assert(run_until(has_leader, NULL, 5000), "no new leader");
    cr_assert_neq(leader_index(), leader);
    follower = -1;
    for (i = 0; i < N; i++) {
        if (nodes[i] != NULL && !rsm_is_leader(nodes[i])) {
            follower = (int)i;
        }
    }
    cr_assert_geq(follower, 0);
    propose_pipeline(nodes[follower], "after-failover", &o);
    ca.want = 3;
    cr_assert(run_until(all_have, &ca, 5000));

    for (i = 0; i < N; i++) {
        if (nodes[i] != NULL) {
            close_node(i);
        }
    }
}

Test(rsm_loop,
     single_node_bootstrap_and_restart,
     .init = loop_setup,
     .fini = loop_teardown)
{
    struct rsm_server self;
    struct outcome o;
    int brv;

    th_free_ports(ports, 1);
    self.id = 1;
    snprintf(self.raft, sizeof self.raft, "127.0.0.1:%u", ports[0]);

    /* Started but never bootstrapped: closes cleanly, leaves no state. */
    nodes[0] = make_node(0, 1);
    cr_assert(!rsm_has_state(nodes[0]));
    cr_assert_eq(rsm_last_applied(nodes[0]), 0);
    close_node(0);

    nodes[0] = make_node(0, 1);
    cr_assert(!rsm_has_state(nodes[0]));
    cr_assert_eq(rsm_bootstrap(nodes[0], &self, 1), 0);
    cr_assert(run_until(has_leader, NULL, 5000));
    propose_pipeline(nodes[0], "kept", &o);
    cr_assert_gt(o.res.index, 0);
    brv = -1;
    cr_assert_eq(rsm_barrier(nodes[0], barrier_cb, &brv), 0);
    cr_assert(run_until(barrier_done, &brv, 5000));
    cr_assert_eq(brv, 0);
    close_node(0);

    /* Restart on the same dir: state resumes, no bootstrap needed. */
    nodes[0] = make_node(0, 1);
    cr_assert(rsm_has_state(nodes[0]));
    cr_assert_eq(rsm_bootstrap(nodes[0], &self, 1), 0); /* no-op */
    cr_assert(run_until(has_leader, NULL, 5000));
    cr_assert_not_null(rsm_fsm_pipeline(rsm_state(nodes[0]), "kept"));
    propose_pipeline(nodes[0], "second", &o);
    cr_assert_eq(rsm_fsm_pipeline_count(rsm_state(nodes[0])), 2);
    close_node(0);
}

struct roles_arg
{
    unsigned n;               /* nodes 1..n */
    enum rsm_role want[NMAX]; /* role of node i+1 */
};

/* Every live node's configuration shows the wanted roles. */
static bool roles_are(void *arg)
{
    struct roles_arg *a = arg;
    unsigned i, j;
    for (i = 0; i < a->n; i++) {
        if (nodes[i] == NULL || !rsm_has_state(nodes[i])) {
            return false;
        }
        for (j = 0; j < a->n; j++) {
            if (rsm_role_of(nodes[i], j + 1) != a->want[j]) {
                return false;
            }
        }
    }
    return true;
}

static void seen_all(unsigned n)
{
    unsigned i, j;
    char addr[32];
    for (i = 0; i < n; i++) {
        for (j = 0; j < n; j++) {
            snprintf(addr, sizeof addr, "127.0.0.1:%u", ports[j]);
            if (nodes[i] != NULL) {
                rsm_member_seen(nodes[i], j + 1, addr, true);
            }
        }
    }
}

Test(rsm_loop,
     joiners_become_standby_then_voters,
     .init = loop_setup,
     .fini = loop_teardown)
{
    struct rsm_server servers[N];
    struct roles_arg ra;
    struct outcome o;
    struct count_arg ca;
    unsigned i;

    th_free_ports(ports, NMAX);
    for (i = 0; i < N; i++) {
        servers[i].id = i + 1;
        snprintf(servers[i].raft, sizeof servers[i].raft, "127.0.0.1:%u",
                 ports[i]);
    }
    for (i = 0; i < N; i++) {
        nodes[i] = make_node(i, NMAX);
        cr_assert_eq(rsm_bootstrap(nodes[i], servers, N), 0);
    }
    cr_assert(run_until(has_leader, NULL, 5000), "no leader elected");
    propose_pipeline(nodes[leader_index()], "early", &o);

    /* A 4th node joins: 4 alive nodes keep 3 voters, it becomes standby. */
    nodes[3] = make_node(3, NMAX);
    cr_assert(!rsm_has_state(nodes[3]));
    cr_assert_eq(rsm_join(nodes[3]), 0);
    seen_all(4);
    memset(&ra, 0, sizeof ra);
    ra.n = 4;
    ra.want[0] = ra.want[1] = ra.want[2] = RSM_ROLE_VOTER;
    ra.want[3] = RSM_ROLE_STANDBY;
    cr_assert(run_until(roles_are, &ra, 8000), "node 4 not standby");

    /* A 5th: 5 alive nodes, 5 voters. */
    nodes[4] = make_node(4, NMAX);
    cr_assert_eq(rsm_join(nodes[4]), 0);
    seen_all(5);
    ra.n = 5;
    for (i = 0; i < 5; i++) {
        ra.want[i] = RSM_ROLE_VOTER;
    }
    cr_assert(run_until(roles_are, &ra, 10000), "not 5 voters");
    /* The joiners hold the replicated state and can propose. */
    propose_pipeline(nodes[4], "from-joiner", &o);
    ca.want = 2;
    cr_assert(run_until(all_have, &ca, 5000));

    for (i = 0; i < NMAX; i++) {
        if (nodes[i] != NULL) {
            close_node(i);
        }
    }
}

Test(rsm_loop,
     no_quorum_unavailable_then_shutdown,
     .init = loop_setup,
     .fini = loop_teardown)
{
    struct rsm_server servers[N];
    struct outcome o, o2;
    struct rsm_cmd cmd;
    unsigned i;
    uint64_t t0;

    th_free_ports(ports, N);
    for (i = 0; i < N; i++) {
        servers[i].id = i + 1;
        snprintf(servers[i].raft, sizeof servers[i].raft, "127.0.0.1:%u",
                 ports[i]);
    }
    /* Only node 1 of a 3-voter cluster runs: no leader can be elected. */
    fwd_timeout_ms = 300;
    nodes[0] = make_node(0, N);
    fwd_timeout_ms = 3000;
    cr_assert_eq(rsm_bootstrap(nodes[0], servers, N), 0);

    memset(&o, 0, sizeof o);
    o.on = nodes[0];
    str_copy(o.name, sizeof o.name, "nobody");
    cl_cmd_pipeline(&cmd, "nobody");
    t0 = th_now_ms();
    cr_assert_eq(rsm_propose(nodes[0], &cmd, proposed_cb, &o), 0);
    cr_assert(run_until(fired, &o, 5000));
    cr_assert_eq(o.rv, ERR_UNAVAILABLE, "%s", err_str(o.rv));
    cr_assert_geq(th_now_ms() - t0, 250);

    /* Pending work fails with ERR_SHUTDOWN on close. */
    memset(&o2, 0, sizeof o2);
    o2.on = nodes[0];
    cl_cmd_pipeline(&cmd, "closing");
    cr_assert_eq(rsm_propose(nodes[0], &cmd, proposed_cb, &o2), 0);
    uv_run(&loop, UV_RUN_NOWAIT); /* flushed into a pending forward */
    close_node(0);
    cr_assert(o2.fired);
    cr_assert_eq(o2.rv, ERR_SHUTDOWN);
}

struct many
{
    unsigned done, ok;
    uint64_t min_index, max_index;
};

static void many_cb(void *data, int rv, const struct rsm_result *res)
{
    struct many *m = data;
    m->done++;
    if (rv == 0 && res != NULL && res->code == 0) {
        m->ok++;
        if (m->min_index == 0 || res->index < m->min_index) {
            m->min_index = res->index;
        }
        if (res->index > m->max_index) {
            m->max_index = res->index;
        }
    }
}

static bool many_done(void *arg)
{
    return ((struct many *)arg)->done == 40;
}

Test(rsm_loop,
     oversized_batch_is_split,
     .init = loop_setup,
     .fini = loop_teardown)
{
    struct rsm_server self;
    struct many m = {0, 0, 0, 0};
    char name[32];
    unsigned i, k;

    th_free_ports(ports, 1);
    self.id = 1;
    snprintf(self.raft, sizeof self.raft, "127.0.0.1:%u", ports[0]);
    nodes[0] = make_node(0, 1);
    cr_assert_eq(rsm_bootstrap(nodes[0], &self, 1), 0);
    cr_assert(run_until(has_leader, NULL, 5000));
    /* 40 commands of ~32 KiB proposed in one loop iteration: more than
     * one 1 MiB entry, so the batch must be split, and all apply. */
    for (i = 0; i < 40; i++) {
        struct rsm_cmd cmd;
        struct rsm_strv *v;
        snprintf(name, sizeof name, "big-%u", i);
        cl_cmd_pipeline(&cmd, name);
        v = &cmd.u.pipeline_create.command;
        free(v->v[0]);
        free(v->v);
        v->v = calloc(9, sizeof(char *));
        cr_assert_not_null(v->v);
        for (k = 0; k < 8; k++) {
            v->v[k] = malloc(4001);
            cr_assert_not_null(v->v[k]);
            memset(v->v[k], 'a' + (char)k, 4000);
            v->v[k][4000] = '\0';
        }
        v->n = 8;
        cr_assert_eq(rsm_propose(nodes[0], &cmd, many_cb, &m), 0);
    }
    cr_assert(run_until(many_done, &m, 10000));
    cr_assert_eq(m.ok, 40);
    cr_assert_gt(m.max_index, m.min_index, "batch was not split");
    cr_assert_eq(rsm_fsm_pipeline_count(rsm_state(nodes[0])), 40);
    close_node(0);
}

Test(rsm_loop,
     leader_losing_quorum_fails_pending_apply_unavailable,
     .init = loop_setup,
     .fini = loop_teardown)
{
    struct rsm_server servers[N];
    struct outcome o;
    struct rsm_cmd cmd;
    int leader;
    unsigned i;

    th_free_ports(ports, N);
    for (i = 0; i < N; i++) {
        servers[i].id = i + 1;
        snprintf(servers[i].raft, sizeof servers[i].raft, "127.0.0.1:%u",
                 ports[i]);
    }
    fwd_timeout_ms = 400;
    for (i = 0; i < N; i++) {
        nodes[i] = make_node(i, N);
        cr_assert_eq(rsm_bootstrap(nodes[i], servers, N), 0);
    }
    fwd_timeout_ms = 3000;
    cr_assert(run_until(has_leader, NULL, 5000));
    leader = leader_index();
    /* Both followers go away: the leader's apply cannot commit; it steps
     * down (LEADERSHIPLOST), rsm retries through a new leader, none
     * appears, the proposer gets ERR_UNAVAILABLE. */
    for (i = 0; i < N; i++) {
        if ((int)i != leader) {
            close_node(i);
        }
    }
    memset(&o, 0, sizeof o);
    o.on = nodes[leader];
    str_copy(o.name, sizeof o.name, "orphan");
    cl_cmd_pipeline(&cmd, "orphan");
    cr_assert_eq(rsm_propose(nodes[leader], &cmd, proposed_cb, &o), 0);
    cr_assert(run_until(fired, &o, 5000));
    cr_assert_eq(o.rv, ERR_UNAVAILABLE, "%s", err_str(o.rv));
    cr_assert_not(rsm_is_leader(nodes[leader]));
    close_node((unsigned)leader);
}

/* --- divergence detection (suite rsm_digest_loop) ------------------- */

/* One pipeline per proposal, waited for: one entry each. */
static void write_n(unsigned leader, unsigned from, unsigned n)
{
    for (unsigned k = from; k < from + n; k++) {
        struct outcome o;
        char name[32];
        snprintf(name, sizeof name, "p%u", k);
        propose_pipeline(nodes[leader], name, &o);
    }
}

/* Every node applied the same index and holds the same record, and the
 * followers compared at least min_checks leader records. */
struct agree_arg
{
    uint64_t min_index;
    uint64_t min_checks;
};

static bool all_agree(void *arg)
{
    struct agree_arg *a = arg;
    struct rsm_digest_status d0;
    rsm_digest_status(nodes[0], &d0);
    if (d0.last.index < a->min_index) {
        return false;
    }
    for (unsigned i = 0; i < N; i++) {
        struct rsm_digest_status d;
        rsm_digest_status(nodes[i], &d);
        if (rsm_last_applied(nodes[i]) != rsm_last_applied(nodes[0]) ||
            d.last.index != d0.last.index || d.last.chain != d0.last.chain ||
            d.last.state != d0.last.state || d.chain != d0.chain ||
            d.checks < a->min_checks) {
            return false;
        }
    }
    return true;
}

static bool is_diverged(void *arg)
{
    return rsm_diverged(nodes[(uintptr_t)arg]);
}

Test(rsm_digest_loop,
     digests_agree_then_a_corrupted_follower_is_flagged,
     .init = loop_setup,
     .fini = loop_teardown)
{
    struct rsm_server servers[N];
    struct agree_arg aa;
    struct rsm_digest_status d;
    int leader;
    unsigned bad, good;

    digest_entries = 8; /* a DIGEST every 8 applied entries */
    th_free_ports(ports, N);
    for (unsigned i = 0; i < N; i++) {
        servers[i].id = i + 1;
        snprintf(servers[i].raft, sizeof servers[i].raft, "127.0.0.1:%u",
                 ports[i]);
    }
    for (unsigned i = 0; i < N; i++) {
        nodes[i] = make_node(i, N);
        cr_assert_eq(rsm_bootstrap(nodes[i], servers, N), 0);
    }
    cr_assert(run_until(has_leader, NULL, 5000), "no leader elected");
    leader = leader_index();

    /* 40 entries: the leader proposes a DIGEST after each 8, and every
     * node checks the leader's records against its own. */
    write_n((unsigned)leader, 0, 40);
    aa.min_index = 20;
    aa.min_checks = 2;
    cr_assert(run_until(all_agree, &aa, 5000),
              "nodes do not agree on the digest records");
    for (unsigned i = 0; i < N; i++) {
        cr_assert(!rsm_diverged(nodes[i]));
    }
    rsm_digest_status(nodes[leader], &d);
    cr_assert_neq(d.last.state, 0);
    cr_assert_gt(d.checked_index, 0);

    /* Corrupt one follower's state (a lasting difference, as a lost or
     * garbled entry would leave): it is flagged within two DIGESTs. */
    bad = (unsigned)(leader + 1) % N;
    good = (unsigned)(leader + 2) % N;
    rsm__fsm_test_perturb(rsm__core(nodes[bad]), 0, 1);
    write_n((unsigned)leader, 100, 40);
    cr_assert(run_until(is_diverged, (void *)(uintptr_t)bad, 5000),
              "the corrupted follower was not flagged");
    rsm_digest_status(nodes[bad], &d);
    cr_assert(d.diverged);
    cr_assert_gt(d.detected_at, d.own.index);
    cr_assert_eq(d.own.index, d.leader.index);
    cr_assert_neq(d.own.state, d.leader.state);
    cr_assert_eq(d.own.chain, d.leader.chain); /* the log itself is fine */
    /* The leader and the healthy follower are not flagged. */
    aa.min_index = 0;
    aa.min_checks = 0;
    cr_assert(!rsm_diverged(nodes[leader]));
    cr_assert(!rsm_diverged(nodes[good]));

    for (unsigned i = 0; i < N; i++) {
        closed[i] = false;
        rsm_close(nodes[i], closed_cb, (void *)(uintptr_t)i);
        cr_assert(run_until(is_closed, (void *)(uintptr_t)i, 5000));
        nodes[i] = NULL;
    }
}
