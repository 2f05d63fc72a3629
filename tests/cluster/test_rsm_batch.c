/* The leader's write path on three real rsm instances sharing one uv loop
 * (in-process forwarding): forwarded batches and local proposals merged
 * into one entry answer every proposer with its own result, and a
 * follower's forwarded write completes without waiting for a heartbeat
 * (the commit push); every raft TCP stream has TCP_NODELAY. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "err.h"
#include "lib/cluster.h"
#include "lib/harness.h"
#include "raft/rsm.h"
#include "raft/rsm_int.h"

TestSuite(rsm_batch, .timeout = 60);

#define N 3
#define PER_NODE 60

static uv_loop_t loop;
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

static bool has_leader(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < N; i++) {
        if (nodes[i] != NULL && rsm_is_leader(nodes[i])) {
            return true;
        }
    }
    return false;
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

/* Three voters; no ticker: the loop blocks until raft or a proposal has
 * something to do, as in the agent. */
static void start_cluster(unsigned election_ms, unsigned heartbeat_ms)
{
    struct rsm_server servers[N];

    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(uv_loop_init(&loop), 0);
    th_tmpdir(root, sizeof root, "rsmb");
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
        cfg.election_ms = election_ms;
        cfg.heartbeat_ms = heartbeat_ms;
        cfg.segment_kib = 256;
        cfg.forward_timeout_ms = 5000;
        cfg.forward = forward;
        nodes[i] = rsm_create(&loop, &cfg, errmsg);
        cr_assert_not_null(nodes[i], "%s", errmsg);
        cr_assert_eq(rsm_start(nodes[i], errmsg), 0, "%s", errmsg);
        cr_assert_eq(rsm_bootstrap(nodes[i], servers, N), 0);
    }
    cr_assert(run_until(has_leader, NULL, 10000), "no leader elected");
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

static void teardown(void)
{
    for (unsigned i = 0; i < N; i++) {
        if (nodes[i] != NULL) {
            closed[i] = false;
            rsm_close(nodes[i], closed_cb, (void *)(uintptr_t)i);
            nodes[i] = NULL;
            cr_assert(run_until(is_closed, (void *)(uintptr_t)i, 5000));
        }
    }
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

static bool fired(void *arg)
{
    return ((struct outcome *)arg)->fired;
}

struct all_arg
{
    struct outcome *o;
    unsigned n;
};

static bool all_fired(void *arg)
{
    struct all_arg *a = arg;
    for (unsigned i = 0; i < a->n; i++) {
        if (!a->o[i].fired) {
            return false;
        }
    }
    return true;
}

static void propose_create(unsigned node, const char *name, struct outcome *o)
{
    struct rsm_cmd cmd;
    memset(o, 0, sizeof *o);
    cl_cmd_pipeline(&cmd, name);
    cr_assert_eq(rsm_propose(nodes[node], &cmd, proposed_cb, o), 0);
}

/* An update of pipeline name expecting version expect: applies (value 2)
 * when expect is 1, is rejected with ERR_CONFLICT otherwise. */
static void propose_update(unsigned node,
                           const char *name,
                           uint64_t expect,
                           struct outcome *o)
{
    struct rsm_cmd create;
    struct rsm_cmd cmd;
    memset(o, 0, sizeof *o);
    cl_cmd_pipeline(&create, name);
    rsm_cmd_init(&cmd, RSM_CMD_PIPELINE_UPDATE);
    cmd.u.pipeline_update.spec = create.u.pipeline_create; /* steal */
    memset(&create.u.pipeline_create, 0, sizeof create.u.pipeline_create);
    rsm_cmd_clear(&create);
    cmd.u.pipeline_update.expect_version = expect;
    cr_assert_eq(rsm_propose(nodes[node], &cmd, proposed_cb, o), 0);
}

Test(rsm_batch, merged_entries_answer_each_proposer, .fini = teardown)
{
    static struct outcome o[N * PER_NODE];
    struct all_arg aa = {o, N * PER_NODE};
    uint64_t merged0;
    uint64_t first;
    uint64_t last;
    int l;

    start_cluster(500, 50);
    l = leader_index();
    /* Pipelines n<node>-<i>, created from every node at once. */
    for (unsigned node = 0; node < N; node++) {
        for (unsigned i = 0; i < PER_NODE; i++) {
            char name[32];
            snprintf(name, sizeof name, "n%u-%u", node, i);
            propose_create(node, name, &o[node * PER_NODE + i]);
        }
    }
    cr_assert(run_until(all_fired, &aa, 10000), "creates never completed");
    for (unsigned k = 0; k < N * PER_NODE; k++) {
        cr_assert_eq(o[k].rv, 0, "create %u: %s", k, err_str(o[k].rv));
        cr_assert_eq(o[k].res.code, 0, "create %u: %s", k, o[k].res.message);
        cr_assert_eq(o[k].res.value, 1);
    }

    /* Updates that alternate between applying and being rejected, from
     * every node in the same iteration: whatever entries they share, each
     * proposer must get the result of its own command. */
    merged0 = nodes[l]->merged;
    for (unsigned node = 0; node < N; node++) {
        for (unsigned i = 0; i < PER_NODE; i++) {
            char name[32];
            snprintf(name, sizeof name, "n%u-%u", node, i);
            propose_update(node, name, (i + node) % 2 == 0 ? 1 : 7,
                           &o[node * PER_NODE + i]);
        }
    }
    cr_assert(run_until(all_fired, &aa, 10000), "updates never completed");
    first = UINT64_MAX;
    last = 0;
    for (unsigned node = 0; node < N; node++) {
        for (unsigned i = 0; i < PER_NODE; i++) {
            const struct outcome *x = &o[node * PER_NODE + i];
            char name[32];
            const struct rsm_pipeline *p;
            snprintf(name, sizeof name, "n%u-%u", node, i);
            cr_assert_eq(x->rv, 0, "%s: %s", name, err_str(x->rv));
            p = rsm_fsm_pipeline(rsm_state(nodes[node]), name);
            cr_assert_not_null(p, "%s not applied on its proposer", name);
            if ((i + node) % 2 == 0) {
                cr_assert_eq(x->res.code, 0, "%s: %s", name, x->res.message);
                cr_assert_eq(x->res.value, 2, "%s", name);
                cr_assert_eq(p->version, 2, "%s", name);
            } else {
                cr_assert_eq(x->res.code, ERR_CONFLICT, "%s: %d %s", name,
                             x->res.code, x->res.message);
                cr_assert_eq(p->version, 1, "%s", name);
            }
            first = x->res.index < first ? x->res.index : first;
            last = x->res.index > last ? x->res.index : last;
        }
    }
    /* 180 commands from three nodes: far fewer entries, and at least one
     * entry carried batches of several proposers. */
    cr_assert_lt(last - first, 12, "entries %llu..%llu",
                 (unsigned long long)first, (unsigned long long)last);
    cr_assert_gt(nodes[l]->merged, merged0, "no merged entry");
}

static uint64_t t_start;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

Test(rsm_batch, follower_write_does_not_wait_for_heartbeat, .fini = teardown)
{
    enum { ROUNDS = 15 };
    uint64_t ms[ROUNDS];
    unsigned follower;
    int l;

    /* Heartbeats every 300 ms: a follower that learned the commit index
     * only from them would answer after ~150-600 ms. */
    start_cluster(3000, 300);
    l = leader_index();
    follower = ((unsigned)l + 1) % N;
    for (unsigned k = 0; k < ROUNDS; k++) {
        struct outcome o;
        char name[32];
        snprintf(name, sizeof name, "f%u", k);
        t_start = th_now_ms();
        propose_create(follower, name, &o);
        cr_assert(run_until(fired, &o, 5000), "%s never completed", name);
        ms[k] = th_now_ms() - t_start;
        cr_assert_eq(o.rv, 0, "%s: %s", name, err_str(o.rv));
        cr_assert_eq(o.res.code, 0, "%s", o.res.message);
        cr_assert_not_null(rsm_fsm_pipeline(rsm_state(nodes[follower]), name),
                           "%s not visible on the follower when answered",
                           name);
    }
    cr_assert_eq(leader_index(), l, "leadership changed during the test");
    qsort(ms, ROUNDS, sizeof ms[0], cmp_u64);
    cr_assert_lt(ms[ROUNDS / 2], 100, "median follower write %llu ms",
                 (unsigned long long)ms[ROUNDS / 2]);
    cr_assert_gt(nodes[l]->pushes, 0);
}

static bool is_raft_port(uint16_t port)
{
    for (unsigned i = 0; i < N; i++) {
        if (ports[i] == port) {
            return true;
        }
    }
    return false;
}

/* Raft streams between the three instances (in this process): accepted
 * and connected ones alike have Nagle off. */
Test(rsm_batch, raft_streams_nodelay, .fini = teardown)
{
    struct outcome o;
    DIR *d;
    struct dirent *e;
    unsigned streams = 0;
    int l;

    start_cluster(500, 50);
    l = leader_index();
    propose_create(((unsigned)l + 1) % N, "x", &o); /* traffic both ways */
    cr_assert(run_until(fired, &o, 5000));
    d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        struct sockaddr_in self;
        struct sockaddr_in peer;
        socklen_t len = sizeof self;
        int on = 0;
        socklen_t olen = sizeof on;
        if (fd <= 2 || fd == dirfd(d) ||
            getsockname(fd, (struct sockaddr *)&self, &len) != 0 ||
            self.sin_family != AF_INET) {
            continue;
        }
        len = sizeof peer;
        if (getpeername(fd, (struct sockaddr *)&peer, &len) != 0) {
            continue; /* listening */
        }
        if (!is_raft_port(ntohs(self.sin_port)) &&
            !is_raft_port(ntohs(peer.sin_port))) {
            continue;
        }
        cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &olen), 0);
        cr_assert_neq(on, 0, "raft stream fd %d (%u -> %u) has Nagle on", fd,
                      ntohs(self.sin_port), ntohs(peer.sin_port));
        streams++;
    }
    closedir(d);
    /* Each instance connects to the two others, and accepts from them. */
    cr_assert_geq(streams, 4, "only %u raft streams found", streams);
}
