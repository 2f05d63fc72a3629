/* Exactly-once firing across a leader change: three real rsm nodes (raft_uv
 * on 127.0.0.1) on one uv loop, each with its own firing loop; the leader
 * is closed mid-schedule and the new one continues without a gap or a
 * duplicate. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "lib/cluster.h"
#include "lib/harness.h"
#include "raft/rsm.h"
#include "sched/fire.h"
#include "util.h"

TestSuite(fire_failover, .timeout = 60);

#define N 3

static uv_loop_t loop;
static uv_timer_t pulse;
static char root[512];
static uint16_t ports[N];
static struct rsm *nodes[N];
static struct fire fires[N];
static bool fire_on[N];
static bool closed;

static void applied_cb(struct rsm *r,
                       const struct rsm_cmd *cmd,
                       const struct rsm_result *res,
                       void *ud)
{
    uintptr_t i = (uintptr_t)ud;
    (void)r;
    if (fire_on[i]) {
        fire_on_applied(&fires[i], cmd, res);
    }
}

static void role_cb(struct rsm *r, void *ud)
{
    uintptr_t i = (uintptr_t)ud;
    (void)r;
    if (fire_on[i]) {
        fire_on_role(&fires[i]);
    }
}

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

static bool run_until(bool (*cond)(void *), void *arg, unsigned timeout_ms)
{
    uint64_t end = th_now_ms() + timeout_ms;
    while (th_now_ms() < end) {
        if (cond != NULL && cond(arg)) {
            return true;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    return cond != NULL && cond(arg);
}

static int leader_index(void)
{
    for (unsigned i = 0; i < N; i++) {
        if (nodes[i] != NULL && rsm_is_leader(nodes[i])) {
            return (int)i;
        }
    }
    return -1;
}

static bool has_leader(void *arg)
{
    (void)arg;
    return leader_index() >= 0;
}

static void pulse_cb(uv_timer_t *t)
{
    (void)t;
}

static void fire_closed_cb(struct fire *f)
{
    (void)f;
}

static void rsm_closed_cb(struct rsm *r, void *data)
{
    (void)r;
    (void)data;
    closed = true;
}

static bool is_closed(void *arg)
{
    (void)arg;
    return closed;
}

static void close_node(unsigned i)
{
    if (fire_on[i]) {
        fire_on[i] = false;
        fire_close(&fires[i], fire_closed_cb);
    }
    closed = false;
    rsm_close(nodes[i], rsm_closed_cb, NULL);
    nodes[i] = NULL;
    cr_assert(run_until(is_closed, NULL, 5000));
}

static void setup(void)
{
    struct rsm_server servers[N];
    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &pulse);
    uv_timer_start(&pulse, pulse_cb, 5, 5);
    th_tmpdir(root, sizeof root, "firefo");
    th_free_ports(ports, N);
    for (unsigned i = 0; i < N; i++) {
        servers[i].id = i + 1;
        snprintf(servers[i].raft, sizeof servers[i].raft, "127.0.0.1:%u",
                 ports[i]);
    }
    for (unsigned i = 0; i < N; i++) {
        struct rsm_config cfg;
        char errmsg[ERRMSG_SIZE] = "";
        rsm_config_defaults(&cfg);
        cfg.id = i + 1;
        snprintf(cfg.name, sizeof cfg.name, "n%u", i + 1);
        str_copy(cfg.raft.host, sizeof cfg.raft.host, "127.0.0.1");
        cfg.raft.port = ports[i];
        snprintf(cfg.dir, sizeof cfg.dir, "%s/n%u", root, i + 1);
        cfg.election_ms = 150;
        cfg.heartbeat_ms = 15;
        cfg.forward_timeout_ms = 3000;
        cfg.forward = forward;
        cfg.on_applied = applied_cb;
        cfg.on_role = role_cb;
        cfg.ud = (void *)(uintptr_t)i;
        nodes[i] = rsm_create(&loop, &cfg, errmsg);
        cr_assert_not_null(nodes[i], "%s", errmsg);
        cr_assert_eq(rsm_start(nodes[i], errmsg), 0, "%s", errmsg);
        cr_assert_eq(rsm_bootstrap(nodes[i], servers, N), 0);
    }
    cr_assert(run_until(has_leader, NULL, 5000), "no leader");
}

static void teardown(void)
{
    for (unsigned i = 0; i < N; i++) {
        if (nodes[i] != NULL) {
            close_node(i);
        }
    }
    uv_close((uv_handle_t *)&pulse, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "leaked handles");
    th_rmrf(root);
}

struct outcome
{
    bool fired;
    int rv;
    struct rsm_result res;
};

static void proposed_cb(void *data, int rv, const struct rsm_result *res)
{
    struct outcome *o = data;
    o->fired = true;
    o->rv = rv;
    if (res != NULL) {
        o->res = *res;
    }
}

static bool outcome_fired(void *arg)
{
    return ((struct outcome *)arg)->fired;
}

static bool replicas_agree(void *arg)
{
    uint64_t d = 0;
    bool first = true;
    (void)arg;
    for (unsigned i = 0; i < N; i++) {
        if (nodes[i] == NULL) {
            continue;
        }
        if (!first && rsm_fsm_digest(rsm_state(nodes[i])) != d) {
            return false;
        }
        d = rsm_fsm_digest(rsm_state(nodes[i]));
        first = false;
    }
    return true;
}

Test(fire_failover,
     leader_change_no_gap_no_duplicate,
     .init = setup,
     .fini = teardown)
{
    struct rsm_cmd cmd;
    struct outcome o;
    const struct rsm_run *runs[64];
    int leader, survivor = -1;
    unsigned n, before;

    memset(&o, 0, sizeof o);
    cl_cmd_pipeline(&cmd, "tick");
    str_copy(cmd.u.pipeline_create.schedule,
             sizeof cmd.u.pipeline_create.schedule, "@every 1s");
    cmd.u.pipeline_create.catchup = RSM_CATCHUP_ALL;
    leader = leader_index();
    cr_assert_eq(rsm_propose(nodes[leader], &cmd, proposed_cb, &o), 0);
    cr_assert(run_until(outcome_fired, &o, 5000));
    cr_assert_eq(o.rv, 0);
    cr_assert_eq(o.res.code, 0, "%s", o.res.message);

    /* Every node runs a firing loop; only the leader fires. */
    for (unsigned i = 0; i < N; i++) {
        cr_assert_eq(fire_init(&fires[i], &loop, nodes[i]), 0);
        fire_on[i] = true;
    }
    run_until(NULL, NULL, 2500);
    for (unsigned i = 0; i < N; i++) {
        if ((int)i != leader) {
            cr_assert_eq(fires[i].proposed, 0, "follower n%u fired", i + 1);
            survivor = (int)i;
        }
    }
    before = rsm_fsm_runs(rsm_state(nodes[survivor]), "tick", runs, 64);
    cr_assert_geq(before, 1);

    /* The leader goes away; a new leader takes over the schedule. */
    close_node((unsigned)leader);
    cr_assert(run_until(has_leader, NULL, 5000), "no new leader");
    run_until(NULL, NULL, 2500);

    n = rsm_fsm_runs(rsm_state(nodes[survivor]), "tick", runs, 64);
    cr_assert_leq(n, 64);
    cr_assert_geq(n, before + 2, "firing did not resume: %u -> %u", before, n);
    /* Newest first: strictly consecutive seconds, no gap, no duplicate. */
    for (unsigned i = 1; i < n; i++) {
        cr_assert_eq(runs[i - 1]->scheduled_for_ms,
                     runs[i]->scheduled_for_ms + 1000,
                     "runs %u and %u: %lld after %lld", i - 1, i,
                     (long long)runs[i - 1]->scheduled_for_ms,
                     (long long)runs[i]->scheduled_for_ms);
        cr_assert_eq(runs[i]->trigger, RSM_TRIGGER_SCHEDULE);
    }
    /* Both surviving replicas converge to the same state. */
    cr_assert(run_until(replicas_agree, NULL, 3000), "replicas differ");
}
