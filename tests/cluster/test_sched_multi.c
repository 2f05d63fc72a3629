/* Three nodes (real rsm over TCP + sched + executor helper each) on one uv
 * loop in the test process: claim contention, at-most-once, and lease
 * expiry of a node whose proposals stop reaching the leader. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "lib/harness.h"
#include "raft/rsm.h"
#include "sched/sched.h"
#include "util.h"

#ifndef KILN_BIN
#error "KILN_BIN must point at the built kiln binary"
#endif

#define N 3

static uv_loop_t loop;
static char root[512];
static uint16_t ports[N];
static struct rsm *nodes[N];
static struct sched scheds[N];
static bool ready[N];
static bool sclosed[N];
static bool rclosed[N];
static bool cut_off[N]; /* the node's proposals never reach the leader */

static int forward(struct rsm *r,
                   uint64_t leader_id,
                   const void *buf,
                   size_t len,
                   rsm_forward_done done,
                   void *req,
                   void *ud)
{
    unsigned from = (unsigned)(uintptr_t)ud;
    (void)r;
    if (cut_off[from] || leader_id == 0 || leader_id > N ||
        nodes[leader_id - 1] == NULL) {
        return ERR_UNAVAILABLE;
    }
    return rsm_propose_encoded(nodes[leader_id - 1], buf, len, done, req);
}

static void applied_cb(struct rsm *r,
                       const struct rsm_cmd *cmd,
                       const struct rsm_result *res,
                       void *ud)
{
    unsigned i = (unsigned)(uintptr_t)ud;
    (void)r;
    if (ready[i]) {
        sched_on_applied(&scheds[i], cmd, res);
    }
}

static unsigned peers_fn(void *ud, struct sched_peer *out, unsigned max)
{
    unsigned n = 0;
    (void)ud;
    for (unsigned i = 0; i < N && n < max; i++) {
        if (!ready[i]) {
            continue;
        }
        memset(&out[n], 0, sizeof out[n]);
        out[n].id = i + 1;
        out[n].slots = scheds[i].cfg.slots;
        out[n].running = sched_running(&scheds[i]);
        out[n].alive = true;
        n++;
    }
    return n;
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

static int leader(void)
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
    return leader() >= 0;
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

static uint64_t propose_wait(unsigned i, struct rsm_cmd *cmd)
{
    struct outcome o;
    memset(&o, 0, sizeof o);
    cr_assert_eq(rsm_propose(nodes[i], cmd, proposed_cb, &o), 0);
    cr_assert(run_until(fired, &o, 8000), "proposal never completed");
    cr_assert_eq(o.rv, 0, "proposal: %s", err_str(o.rv));
    cr_assert_eq(o.res.code, 0, "rejected: %s", o.res.message);
    return o.res.value;
}

static bool all_unfenced(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < N; i++) {
        if (sched_is_fenced(&scheds[i])) {
            return false;
        }
    }
    return true;
}

/* Start everything; the leader gets leader_slots (0: it runs nothing). */
static int start(unsigned leader_slots)
{
    struct rsm_server srv[N];
    char errmsg[ERRMSG_SIZE] = "";
    int l;

    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(uv_loop_init(&loop), 0);
    th_tmpdir(root, sizeof root, "schedm");
    th_free_ports(ports, N);
    for (unsigned i = 0; i < N; i++) {
        srv[i].id = i + 1;
        snprintf(srv[i].raft, sizeof srv[i].raft, "127.0.0.1:%u",
                 (unsigned)ports[i]);
    }
    for (unsigned i = 0; i < N; i++) {
        struct rsm_config rc;
        rsm_config_defaults(&rc);
        rc.id = i + 1;
        snprintf(rc.name, sizeof rc.name, "n%u", i + 1);
        str_copy(rc.raft.host, sizeof rc.raft.host, "127.0.0.1");
        rc.raft.port = ports[i];
        snprintf(rc.dir, sizeof rc.dir, "%s/raft%u", root, i + 1);
        rc.election_ms = 300;
        rc.heartbeat_ms = 30;
        rc.forward_timeout_ms = 1000;
        rc.forward = forward;
        rc.on_applied = applied_cb;
        rc.ud = (void *)(uintptr_t)i;
        nodes[i] = rsm_create(&loop, &rc, errmsg);
        cr_assert_not_null(nodes[i], "%s", errmsg);
        cr_assert_eq(rsm_start(nodes[i], errmsg), 0, "%s", errmsg);
        cr_assert_eq(rsm_bootstrap(nodes[i], srv, N), 0);
    }
    cr_assert(run_until(has_leader, NULL, 8000), "no leader");
    l = leader();
    for (unsigned i = 0; i < N; i++) {
        struct rsm_cmd cmd;
        rsm_cmd_init(&cmd, RSM_CMD_MEMBER_PUT);
        cmd.u.member_put.id = i + 1;
        snprintf(cmd.u.member_put.name, sizeof cmd.u.member_put.name, "n%u",
                 i + 1);
        snprintf(cmd.u.member_put.raft, sizeof cmd.u.member_put.raft,
                 "127.0.0.1:%u", (unsigned)ports[i]);
        str_copy(cmd.u.member_put.api, sizeof cmd.u.member_put.api,
                 "127.0.0.1:1");
        str_copy(cmd.u.member_put.gossip, sizeof cmd.u.member_put.gossip,
                 "127.0.0.1:2");
        propose_wait((unsigned)l, &cmd);
    }
    for (unsigned i = 0; i < N; i++) {
        struct sched_config sc;
        sched_config_defaults(&sc);
        sc.node_id = i + 1;
        snprintf(sc.node_name, sizeof sc.node_name, "n%u", i + 1);
        sc.slots = (int)i == l ? leader_slots : 4;
        sc.lease_ms = 1500;
        sc.fence_margin_ms = 300;
        sc.grace_ms = 300;
        snprintf(sc.work_root, sizeof sc.work_root, "%s/work%u", root, i + 1);
        str_copy(sc.helper_path, sizeof sc.helper_path, KILN_BIN);
        sc.peers = peers_fn;
        cr_assert_eq(sched_init(&scheds[i], &loop, &sc, nodes[i], errmsg), 0,
                     "%s", errmsg);
        ready[i] = true;
        cr_assert_eq(sched_start(&scheds[i], errmsg), 0, "%s", errmsg);
    }
    cr_assert(run_until(all_unfenced, NULL, 8000), "renewals never committed");
    return l;
}

static void on_sched_closed(struct sched *s)
{
    sclosed[s - scheds] = true;
}

static void on_rsm_closed(struct rsm *r, void *data)
{
    (void)r;
    rclosed[(uintptr_t)data] = true;
}

static bool all_closed(void *arg)
{
    bool *flags = arg;
    for (unsigned i = 0; i < N; i++) {
        if (!flags[i]) {
            return false;
        }
    }
    return true;
}

static void stop(void)
{
    for (unsigned i = 0; i < N; i++) {
        sched_close(&scheds[i], on_sched_closed);
    }
    cr_assert(run_until(all_closed, sclosed, 15000), "sched_close hung");
    for (unsigned i = 0; i < N; i++) {
        ready[i] = false;
        rsm_close(nodes[i], on_rsm_closed, (void *)(uintptr_t)i);
    }
    cr_assert(run_until(all_closed, rclosed, 8000), "rsm_close hung");
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "leaked handles");
    th_rmrf(root);
}

static uint64_t submit(unsigned via, const char *script, uint32_t retries)
{
    struct rsm_cmd cmd;
    struct rsm_job_spec *sp;
    rsm_cmd_init(&cmd, RSM_CMD_JOB_SUBMIT);
    sp = &cmd.u.job_submit;
    sp->argv.v = calloc(4, sizeof(char *));
    cr_assert_not_null(sp->argv.v);
    sp->argv.v[0] = strdup("/bin/sh");
    sp->argv.v[1] = strdup("-c");
    sp->argv.v[2] = strdup(script);
    sp->argv.n = 3;
    sp->retries_max = retries;
    return propose_wait(via, &cmd);
}

static const struct rsm_job *job_on(unsigned i, uint64_t seq)
{
    return rsm_fsm_job(rsm_state(nodes[i]), seq);
}

struct many
{
    unsigned via;
    unsigned n;
    uint64_t seq[40];
};

static bool all_finished(void *arg)
{
    struct many *m = arg;
    for (unsigned i = 0; i < m->n; i++) {
        const struct rsm_job *j = job_on(m->via, m->seq[i]);
        if (j == NULL || !rsm_job_state_is_finished(j->state)) {
            return false;
        }
    }
    return true;
}

static char *output(unsigned i, uint64_t seq)
{
    const struct rsm_chunk *chunks[64];
    unsigned n = rsm_fsm_job_chunks(rsm_state(nodes[i]), seq, chunks, 64);
    size_t total = 0;
    char *buf;
    cr_assert(n <= 64);
    for (unsigned k = 0; k < n; k++) {
        total += chunks[k]->raw_len;
    }
    buf = malloc(total + 1);
    cr_assert_not_null(buf);
    total = 0;
    for (unsigned k = 0; k < n; k++) {
        cr_assert_eq(rsm_chunk_decode(chunks[k], buf + total), 0);
        total += chunks[k]->raw_len;
    }
    buf[total] = '\0';
    return buf;
}

TestSuite(sched_multi, .timeout = 120);

/* Every job runs exactly once, on the nodes that have slots, even though
 * all of them scan the same pending jobs. */
Test(sched_multi, each_job_runs_once)
{
    struct many m;
    char script[1024];
    unsigned per_node[N] = {0};
    unsigned used = 0;
    int l;

    l = start(4);
    memset(&m, 0, sizeof m);
    m.via = (unsigned)(l + 1) % N; /* submit through a follower */
    m.n = 40;
    snprintf(script, sizeof script,
             "echo run >> %s/runs.$KILN_JOB_ID; pwd; sleep 0.05", root);
    for (unsigned i = 0; i < m.n; i++) {
        m.seq[i] = submit(m.via, script, 0);
    }
    cr_assert(run_until(all_finished, &m, 60000), "not all finished");
    for (unsigned i = 0; i < m.n; i++) {
        const struct rsm_job *j = job_on(m.via, m.seq[i]);
        char path[700];
        char *data = NULL;
        size_t len = 0;
        char *out;
        cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "j%llu %s",
                     (unsigned long long)m.seq[i],
                     rsm_job_state_name(j->state));
        cr_assert_eq(j->attempt, 1);
        snprintf(path, sizeof path, "%s/runs.j%llu", root,
                 (unsigned long long)m.seq[i]);
        cr_assert_eq(fs_read_all(path, 4096, &data, &len), 0);
        cr_assert_str_eq(data, "run\n", "j%llu ran more than once",
                         (unsigned long long)m.seq[i]);
        free(data);
        out = output(m.via, m.seq[i]);
        for (unsigned k = 0; k < N; k++) {
            char want[600];
            snprintf(want, sizeof want, "%s/work%u/", root, k + 1);
            if (strncmp(out, want, strlen(want)) == 0) {
                per_node[k]++;
            }
        }
        free(out);
    }
    for (unsigned k = 0; k < N; k++) {
        used += per_node[k] > 0;
    }
    cr_assert_eq(per_node[0] + per_node[1] + per_node[2], m.n);
    cr_assert_geq(used, 2, "all jobs on one node: %u %u %u", per_node[0],
                  per_node[1], per_node[2]);
    stop();
}

static bool file_exists(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) == 0 && st.st_size > 0;
}

struct held
{
    unsigned via;
    uint64_t seq;
};

static bool is_running(void *arg)
{
    struct held *h = arg;
    const struct rsm_job *j = job_on(h->via, h->seq);
    return j != NULL && j->state == RSM_JOB_RUNNING;
}

static bool finished(void *arg)
{
    struct held *h = arg;
    const struct rsm_job *j = job_on(h->via, h->seq);
    return j != NULL && rsm_job_state_is_finished(j->state);
}

/* The node holding a running job can no longer reach the leader: it
 * fences itself (kills the job) by lease - margin, the leader expires its
 * lease after lease + grace, and another node runs the retry, which finds
 * the first attempt's process already dead. */
Test(sched_multi, cut_off_holder_is_fenced_and_job_moves)
{
    struct held h;
    char script[4096];
    char pidfile[600];
    const struct rsm_job *j;
    unsigned holder;
    char *out;
    int l;

    l = start(0);
    h.via = (unsigned)l;
    snprintf(pidfile, sizeof pidfile, "%s/pid1", root);
    snprintf(script, sizeof script,
             "if [ \"$KILN_ATTEMPT\" = 1 ]; then echo $$ > %s.tmp; "
             "mv %s.tmp %s; exec sleep 60; fi; "
             "if kill -0 $(cat %s) 2>/dev/null; then echo old-alive; "
             "else echo old-dead; fi",
             pidfile, pidfile, pidfile, pidfile);
    h.seq = submit(h.via, script, 1);
    cr_assert(run_until(is_running, &h, 10000), "never ran");
    cr_assert(run_until(file_exists, pidfile, 10000), "never started");
    j = job_on(h.via, h.seq);
    holder = (unsigned)(j->node - 1);
    cr_assert_neq((int)holder, l);
    cut_off[holder] = true;
    cr_assert(run_until(finished, &h, 20000), "job never finished");
    j = job_on(h.via, h.seq);
    cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "state %s end %s",
                 rsm_job_state_name(j->state), rsm_job_end_name(j->end));
    cr_assert_eq(j->attempt, 2);
    out = output(h.via, h.seq);
    cr_assert_str_eq(out, "old-dead\n");
    free(out);
    cr_assert(sched_is_fenced(&scheds[holder]));
    cut_off[holder] = false;
    stop();
}
