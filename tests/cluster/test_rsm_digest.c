/* Divergence detection on real struct rsm instances (raft_uv over TCP on
 * 127.0.0.1, one uv loop): the leader proposes DIGESTs on its cadence,
 * every node agrees, and a follower whose FSM is corrupted on purpose
 * (test hook) flags itself diverged while the others do not. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "lib/cluster.h"
#include "lib/harness.h"
#include "log.h"
#include "raft/rsm.h"

TestSuite(rsm_digest_loop, .timeout = 60);

#define N 3

static uv_loop_t loop;
static uv_timer_t ticker;
static struct rsm *nodes[N];
static bool closed[N];
static char root[512];
static uint16_t ports[N];

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
    if (leader_id == 0 || leader_id > N || nodes[leader_id - 1] == NULL) {
        return ERR_UNAVAILABLE;
    }
    return rsm_propose_encoded(nodes[leader_id - 1], buf, len, done, req);
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_OFF);
    cr_assert_eq(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, tick_cb, 5, 5);
    th_tmpdir(root, sizeof root, "rsmdg");
}

static void teardown(void)
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

static struct rsm *make_node(unsigned i)
{
    struct rsm_config cfg;
    char errmsg[ERRMSG_SIZE] = "";
    struct rsm *r;

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
    cfg.forward = forward;
    cfg.digest_entries = 8; /* a DIGEST every 8 applied entries */
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

static bool has_leader(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < N; i++) {
        if (rsm_is_leader(nodes[i])) {
            return true;
        }
    }
    return false;
}

static int leader_index(void)
{
    for (unsigned i = 0; i < N; i++) {
        if (rsm_is_leader(nodes[i])) {
            return (int)i;
        }
    }
    return -1;
}

struct outcome
{
    bool fired;
    int rv;
};

static void proposed_cb(void *data, int rv, const struct rsm_result *res)
{
    struct outcome *o = data;
    (void)res;
    o->fired = true;
    o->rv = rv;
}

static bool fired(void *arg)
{
    return ((struct outcome *)arg)->fired;
}

/* One pipeline per proposal, waited for: one entry each. */
static void write_n(unsigned leader, unsigned from, unsigned n)
{
    for (unsigned k = from; k < from + n; k++) {
        struct rsm_cmd cmd;
        struct outcome o = {false, -1};
        char name[32];
        snprintf(name, sizeof name, "p%u", k);
        cl_cmd_pipeline(&cmd, name);
        cr_assert_eq(rsm_propose(nodes[leader], &cmd, proposed_cb, &o), 0);
        cr_assert(run_until(fired, &o, 5000), "write %s never completed", name);
        cr_assert_eq(o.rv, 0, "write %s: %s", name, err_str(o.rv));
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
     .init = setup,
     .fini = teardown)
{
    struct rsm_server servers[N];
    struct agree_arg aa;
    struct rsm_digest_status d;
    int leader;
    unsigned bad, good;

    th_free_ports(ports, N);
    for (unsigned i = 0; i < N; i++) {
        servers[i].id = i + 1;
        snprintf(servers[i].raft, sizeof servers[i].raft, "127.0.0.1:%u",
                 ports[i]);
    }
    for (unsigned i = 0; i < N; i++) {
        nodes[i] = make_node(i);
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
