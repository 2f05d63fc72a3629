/* The scheduler runtime on one uv loop with a real single-node rsm and the
 * real executor/fence helper (KILN_BIN): jobs are submitted straight
 * through rsm_propose and checked through the FSM accessors. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "lib/harness.h"
#include "raft/rsm.h"
#include "sched/sched.h"
#include "util.h"

#ifndef KILN_BIN
#error "KILN_BIN must point at the built kiln binary"
#endif

#define SELF 1

static uv_loop_t loop;
static char root[512];
static struct rsm *rsm;
static struct sched sched;
static bool sched_ready;
static bool sched_closed;
static bool rsm_closed;
static uint16_t port;

/* Knobs a test may change before start(). */
static unsigned lease_ms = 3000;
static unsigned slots = 8;
static unsigned margin_ms = 500;
/* Report every grant to this node twice, as rsm does when a claim applies
 * again under the same idempotency key (a forward retried after its answer
 * was lost): the observer gets the stored result once more. */
static bool dup_grants;
static unsigned dup_seen;

/* ---- plumbing ---- */

static int forward(struct rsm *r,
                   uint64_t leader_id,
                   const void *buf,
                   size_t len,
                   rsm_forward_done done,
                   void *req,
                   void *ud)
{
    (void)r;
    (void)leader_id;
    (void)buf;
    (void)len;
    (void)done;
    (void)req;
    (void)ud;
    return ERR_UNAVAILABLE; /* single node: never needed */
}

static void applied_cb(struct rsm *r,
                       const struct rsm_cmd *cmd,
                       const struct rsm_result *res,
                       void *ud)
{
    (void)r;
    (void)ud;
    if (sched_ready) {
        sched_on_applied(&sched, cmd, res);
        if (dup_grants && cmd->type == RSM_CMD_JOB_CLAIM && res->code == 0 &&
            cmd->u.job_claim.node == SELF) {
            /* A duplicate (same key, stored result) applied in a later
             * entry, before the START: a duplicate changes nothing, so the
             * FSM then looks exactly as it does now. */
            dup_seen++;
            sched_on_applied(&sched, cmd, res);
        }
    }
}

static unsigned peers_fn(void *ud, struct sched_peer *out, unsigned max)
{
    (void)ud;
    if (max < 1) {
        return 0;
    }
    memset(&out[0], 0, sizeof out[0]);
    out[0].id = SELF;
    out[0].slots = slots;
    out[0].running = sched_running(&sched);
    out[0].alive = true;
    return 1;
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

static bool is_leader(void *arg)
{
    (void)arg;
    return rsm_is_leader(rsm);
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

/* Propose and wait for the apply; returns the result value. */
static uint64_t propose_wait(struct rsm_cmd *cmd)
{
    struct outcome o;
    memset(&o, 0, sizeof o);
    cr_assert_eq(rsm_propose(rsm, cmd, proposed_cb, &o), 0);
    cr_assert(run_until(fired, &o, 5000), "proposal never completed");
    cr_assert_eq(o.rv, 0, "proposal: %s", err_str(o.rv));
    cr_assert_eq(o.res.code, 0, "proposal rejected: %s", o.res.message);
    return o.res.value;
}

static bool unfenced(void *arg)
{
    (void)arg;
    return !sched_is_fenced(&sched);
}

static void start(void)
{
    struct rsm_config rc;
    struct rsm_server srv;
    struct sched_config sc;
    struct rsm_cmd cmd;
    char errmsg[ERRMSG_SIZE] = "";

    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(uv_loop_init(&loop), 0);
    th_tmpdir(root, sizeof root, "sched");
    th_free_ports(&port, 1);

    rsm_config_defaults(&rc);
    rc.id = SELF;
    str_copy(rc.name, sizeof rc.name, "n1");
    str_copy(rc.raft.host, sizeof rc.raft.host, "127.0.0.1");
    rc.raft.port = port;
    snprintf(rc.dir, sizeof rc.dir, "%s/raft", root);
    rc.election_ms = 150;
    rc.heartbeat_ms = 15;
    rc.forward_timeout_ms = 2000;
    rc.forward = forward;
    rc.on_applied = applied_cb;
    rsm = rsm_create(&loop, &rc, errmsg);
    cr_assert_not_null(rsm, "%s", errmsg);
    cr_assert_eq(rsm_start(rsm, errmsg), 0, "%s", errmsg);
    srv.id = SELF;
    snprintf(srv.raft, sizeof srv.raft, "127.0.0.1:%u", (unsigned)port);
    cr_assert_eq(rsm_bootstrap(rsm, &srv, 1), 0);
    cr_assert(run_until(is_leader, NULL, 5000), "no leader");

    rsm_cmd_init(&cmd, RSM_CMD_MEMBER_PUT);
    cmd.u.member_put.id = SELF;
    str_copy(cmd.u.member_put.name, sizeof cmd.u.member_put.name, "n1");
    snprintf(cmd.u.member_put.raft, sizeof cmd.u.member_put.raft,
             "127.0.0.1:%u", (unsigned)port);
    str_copy(cmd.u.member_put.api, sizeof cmd.u.member_put.api, "127.0.0.1:1");
    str_copy(cmd.u.member_put.gossip, sizeof cmd.u.member_put.gossip,
             "127.0.0.1:2");
    propose_wait(&cmd);

    sched_config_defaults(&sc);
    sc.node_id = SELF;
    str_copy(sc.node_name, sizeof sc.node_name, "n1");
    sc.slots = slots;
    sc.lease_ms = lease_ms;
    sc.fence_margin_ms = margin_ms;
    sc.grace_ms = 300;
    snprintf(sc.work_root, sizeof sc.work_root, "%s/work", root);
    str_copy(sc.helper_path, sizeof sc.helper_path, KILN_BIN);
    sc.peers = peers_fn;
    cr_assert_eq(sched_init(&sched, &loop, &sc, rsm, errmsg), 0, "%s", errmsg);
    sched_ready = true;
    cr_assert_eq(sched_start(&sched, errmsg), 0, "%s", errmsg);
    cr_assert(run_until(unfenced, NULL, 5000),
              "the first renewal never "
              "committed");
}

static void on_sched_closed(struct sched *s)
{
    (void)s;
    sched_closed = true;
}

static void on_rsm_closed(struct rsm *r, void *data)
{
    (void)r;
    (void)data;
    rsm_closed = true;
}

static bool flag(void *arg)
{
    return *(bool *)arg;
}

static void stop(void)
{
    if (sched_ready) {
        sched_close(&sched, on_sched_closed);
        cr_assert(run_until(flag, &sched_closed, 15000), "sched_close hung");
        sched_ready = false;
    }
    rsm_close(rsm, on_rsm_closed, NULL);
    cr_assert(run_until(flag, &rsm_closed, 5000), "rsm_close hung");
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "leaked handles");
    th_rmrf(root);
}

/* ---- job helpers ---- */

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    cr_assert_not_null(d);
    return d;
}

struct jobopts
{
    uint32_t retries;
    uint32_t timeout_s;
    const char *env_key;
    const char *env_value;
};

/* Submit "sh -c script"; returns the job seq. */
static uint64_t submit(const char *script, const struct jobopts *o)
{
    struct rsm_cmd cmd;
    struct rsm_job_spec *sp;

    rsm_cmd_init(&cmd, RSM_CMD_JOB_SUBMIT);
    sp = &cmd.u.job_submit;
    sp->argv.v = calloc(4, sizeof(char *));
    cr_assert_not_null(sp->argv.v);
    sp->argv.v[0] = xstrdup("/bin/sh");
    sp->argv.v[1] = xstrdup("-c");
    sp->argv.v[2] = xstrdup(script);
    sp->argv.n = 3;
    if (o != NULL) {
        sp->retries_max = o->retries;
        sp->timeout_s = o->timeout_s;
        if (o->env_key != NULL) {
            sp->env = calloc(1, sizeof *sp->env);
            cr_assert_not_null(sp->env);
            sp->env[0].key = xstrdup(o->env_key);
            sp->env[0].value = xstrdup(o->env_value);
            sp->n_env = 1;
        }
    }
    return propose_wait(&cmd);
}

static const struct rsm_job *job(uint64_t seq)
{
    return rsm_fsm_job(rsm_state(rsm), seq);
}

static bool job_finished(void *arg)
{
    const struct rsm_job *j = job(*(uint64_t *)arg);
    return j != NULL && rsm_job_state_is_finished(j->state);
}

static const struct rsm_job *wait_finished(uint64_t seq, unsigned ms)
{
    const struct rsm_job *j;
    cr_assert(run_until(job_finished, &seq, ms), "j%llu did not finish",
              (unsigned long long)seq);
    j = job(seq);
    cr_assert_not_null(j);
    return j;
}

/* All stored output of a job for the given stream (-1: all), decoded and
 * concatenated; malloc'd, NUL-terminated. */
static char *output(uint64_t seq, int stream, size_t *len_out)
{
    const struct rsm_chunk *chunks[4096];
    unsigned n = rsm_fsm_job_chunks(rsm_state(rsm), seq, chunks, 4096);
    size_t total = 0;
    char *buf;

    cr_assert(n <= 4096);
    for (unsigned i = 0; i < n; i++) {
        if (stream < 0 || chunks[i]->stream == stream) {
            total += chunks[i]->raw_len;
        }
    }
    buf = malloc(total + 1);
    cr_assert_not_null(buf);
    total = 0;
    for (unsigned i = 0; i < n; i++) {
        if (stream < 0 || chunks[i]->stream == stream) {
            cr_assert_eq(rsm_chunk_decode(chunks[i], buf + total), 0);
            total += chunks[i]->raw_len;
        }
    }
    buf[total] = '\0';
    if (len_out != NULL) {
        *len_out = total;
    }
    return buf;
}

static bool file_exists(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) == 0 && st.st_size > 0;
}

static pid_t read_pid(const char *path)
{
    char *data = NULL;
    size_t len = 0;
    uint64_t v = 0;
    cr_assert_eq(fs_read_all(path, 64, &data, &len), 0);
    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == ' ')) {
        data[--len] = '\0';
    }
    cr_assert_eq(parse_u64(data, 1u << 30, &v), 0, "pid file: '%s'", data);
    free(data);
    return (pid_t)v;
}

static bool pid_gone(void *arg)
{
    pid_t pid = *(pid_t *)arg;
    return kill(pid, 0) != 0 && errno == ESRCH;
}

/* Gone, or dead and not reaped yet (its parent, the helper, is stopped). */
static bool pid_dead(void *arg)
{
    pid_t pid = *(pid_t *)arg;
    char path[64], buf[256];
    const char *p;
    FILE *f;
    size_t n;
    if (pid_gone(arg)) {
        return true;
    }
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return true;
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')');
    return p != NULL && p[1] == ' ' && p[2] == 'Z';
}

/* ---- tests ---- */

TestSuite(sched_loop, .timeout = 90);

Test(sched_loop, job_succeeds_with_its_output)
{
    const struct rsm_job *j;
    uint64_t seq;
    char *out;
    char want[256];

    start();
    seq = submit(
        "echo hello; echo world; echo oops >&2; "
        "echo \"$KILN_JOB_ID $KILN_ATTEMPT $KILN_EPOCH $MYVAR\"",
        &(struct jobopts){.env_key = "MYVAR", .env_value = "v1"});
    j = wait_finished(seq, 10000);
    cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "state %s end %s",
                 rsm_job_state_name(j->state), rsm_job_end_name(j->end));
    cr_assert_eq(j->exit_code, 0);
    cr_assert_eq(j->attempt, 1);
    cr_assert_eq(j->node, 0);
    out = output(seq, RSM_STREAM_STDOUT, NULL);
    snprintf(want, sizeof want, "hello\nworld\nj%llu 1 %llu v1\n",
             (unsigned long long)seq, (unsigned long long)j->epoch);
    cr_assert_str_eq(out, want);
    free(out);
    out = output(seq, RSM_STREAM_STDERR, NULL);
    cr_assert_str_eq(out, "oops\n");
    free(out);
    cr_assert_eq(sched_running(&sched), 0);
    stop();
}

Test(sched_loop, exit_code_fails_without_retries)
{
    const struct rsm_job *j;
    uint64_t seq;

    start();
    seq = submit("exit 3", NULL);
    j = wait_finished(seq, 10000);
    cr_assert_eq(j->state, RSM_JOB_FAILED, "state %s",
                 rsm_job_state_name(j->state));
    cr_assert_eq(j->end, RSM_END_EXITED);
    cr_assert_eq(j->exit_code, 3);
    cr_assert_eq(j->attempt, 1);
    stop();
}

Test(sched_loop, retries_until_success)
{
    const struct rsm_job *j;
    uint64_t seq;
    char script[1024];

    start();
    snprintf(script, sizeof script,
             "f=%s/count; n=$(cat $f 2>/dev/null || echo 0); n=$((n+1)); "
             "echo $n > $f; echo attempt $n; [ $n -ge 3 ]",
             root);
    seq = submit(script, &(struct jobopts){.retries = 2});
    j = wait_finished(seq, 15000);
    cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "state %s end %s exit %d",
                 rsm_job_state_name(j->state), rsm_job_end_name(j->end),
                 j->exit_code);
    cr_assert_eq(j->attempt, 3);
    cr_assert_geq(j->epoch, 3);
    stop();
}

Test(sched_loop, timeout_kills)
{
    const struct rsm_job *j;
    uint64_t seq;
    uint64_t t0;

    start();
    t0 = th_now_ms();
    seq = submit("echo start; sleep 30", &(struct jobopts){.timeout_s = 1});
    j = wait_finished(seq, 10000);
    cr_assert_eq(j->state, RSM_JOB_FAILED, "state %s",
                 rsm_job_state_name(j->state));
    cr_assert_eq(j->end, RSM_END_TIMEOUT, "end %s", rsm_job_end_name(j->end));
    cr_assert_lt(th_now_ms() - t0, 8000);
    stop();
}

Test(sched_loop, cancel_while_running)
{
    const struct rsm_job *j;
    struct rsm_cmd cmd;
    uint64_t seq;
    char pidfile[600];
    char script[2048];
    pid_t pid;

    start();
    snprintf(pidfile, sizeof pidfile, "%s/pid", root);
    snprintf(script, sizeof script,
             "echo $$ > %s.tmp; mv %s.tmp %s; "
             "exec sleep 30",
             pidfile, pidfile, pidfile);
    seq = submit(script, NULL);
    cr_assert(run_until(file_exists, pidfile, 10000), "never started");
    pid = read_pid(pidfile);
    cr_assert(kill(pid, 0) == 0);
    rsm_cmd_init(&cmd, RSM_CMD_JOB_CANCEL);
    cmd.u.job_cancel.job = seq;
    propose_wait(&cmd);
    j = wait_finished(seq, 10000);
    cr_assert_eq(j->state, RSM_JOB_CANCELLED, "state %s",
                 rsm_job_state_name(j->state));
    cr_assert(run_until(pid_gone, &pid, 5000), "process %d still there",
              (int)pid);
    stop();
}

struct many
{
    uint64_t seq[50];
};

static bool all_finished(void *arg)
{
    struct many *m = arg;
    for (unsigned i = 0; i < 50; i++) {
        if (!job_finished(&m->seq[i])) {
            return false;
        }
    }
    return true;
}

Test(sched_loop, fifty_short_jobs)
{
    struct many m;
    char script[64];

    start();
    for (unsigned i = 0; i < 50; i++) {
        snprintf(script, sizeof script, "echo job %u", i);
        m.seq[i] = submit(script, NULL);
    }
    cr_assert(run_until(all_finished, &m, 60000), "not all finished");
    for (unsigned i = 0; i < 50; i++) {
        const struct rsm_job *j = job(m.seq[i]);
        char want[64];
        char *out = output(m.seq[i], RSM_STREAM_STDOUT, NULL);
        cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "j%llu: %s",
                     (unsigned long long)m.seq[i],
                     rsm_job_state_name(j->state));
        snprintf(want, sizeof want, "job %u\n", i);
        cr_assert_str_eq(out, want);
        free(out);
    }
    cr_assert_eq(sched_running(&sched), 0);
    stop();
}

Test(sched_loop, big_output_keeps_head_and_tail)
{
    const struct rsm_job *j;
    uint64_t seq;
    size_t len = 0;
    char *out;

    start();
    /* ~5.9 MiB of numbered lines (6,188,895 bytes). */
    seq = submit("seq 1 900000", NULL);
    j = wait_finished(seq, 60000);
    cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "state %s",
                 rsm_job_state_name(j->state));
    out = output(seq, -1, &len);
    cr_assert_eq(j->out_bytes, 6188895, "out_bytes %llu",
                 (unsigned long long)j->out_bytes);
    cr_assert_leq(
        len, RSM_OUTPUT_HEAD_CAP + RSM_OUTPUT_TAIL_CAP + 2 * RSM_CHUNK_RAW_MAX);
    cr_assert_gt(j->out_cut, 0);
    cr_assert_eq(strncmp(out, "1\n2\n3\n", 6), 0);
    cr_assert(len > 8 && strcmp(out + len - 7, "900000\n") == 0, "tail: '%s'",
              len > 20 ? out + len - 20 : out);
    free(out);
    stop();
}

/* The node's renewals stop (held by the test hook), so no renewal commits
 * any more: the helper must kill the running job by lease - margin after
 * the last committed renewal was sent, on its own. */
struct attempt_arg
{
    uint64_t seq;
    uint32_t attempt;
    enum rsm_job_state state;
};

static bool job_at(void *arg)
{
    const struct attempt_arg *a = arg;
    const struct rsm_job *j = job(a->seq);
    return j != NULL && j->attempt == a->attempt && j->state == a->state;
}

static bool sched_fenced(void *arg)
{
    (void)arg;
    return sched_is_fenced(&sched);
}

Test(sched_loop, fence_kills_when_renewals_stop)
{
    const struct rsm_job *j;
    uint64_t seq;
    char pidfile[600];
    char script[2048];
    uint64_t t_stop;
    pid_t pid;

    lease_ms = 1500;
    margin_ms = 300;
    start();
    snprintf(pidfile, sizeof pidfile, "%s/pid", root);
    snprintf(script, sizeof script,
             "echo $$ > %s.tmp; mv %s.tmp %s; "
             "exec sleep 60",
             pidfile, pidfile, pidfile);
    seq = submit(script, NULL);
    cr_assert(run_until(file_exists, pidfile, 10000), "never started");
    pid = read_pid(pidfile);
    t_stop = th_now_ms();
    sched_test_hold_renewals(&sched, true);
    /* The last committed renewal was sent before t_stop, so the deadline
     * is at most lease - margin after t_stop. */
    cr_assert(run_until(pid_gone, &pid, lease_ms + 2000),
              "job not killed by the fence");
    cr_assert_leq(th_now_ms() - t_stop, lease_ms - margin_ms + 500);
    cr_assert(sched_fenced(NULL));
    /* The attempt ended with its node, not by the job's doing: even with
     * retries 0 the job is pending again (docs/jobs.md). */
    {
        struct attempt_arg a = {seq, 2, RSM_JOB_PENDING};
        cr_assert(run_until(job_at, &a, 5000),
                  "the fenced attempt never "
                  "ended");
    }
    j = job(seq);
    cr_assert_eq(j->end, RSM_END_FENCED, "end %s", rsm_job_end_name(j->end));
    /* Renewals resume: the fence lifts and jobs run again, the fenced one
     * included (a new attempt, a new process). */
    sched_test_hold_renewals(&sched, false);
    cr_assert(run_until(unfenced, NULL, 5000), "fence never lifted");
    {
        struct attempt_arg a = {seq, 2, RSM_JOB_RUNNING};
        cr_assert(run_until(job_at, &a, 10000), "the job never ran again");
    }
    {
        struct rsm_cmd cmd;
        rsm_cmd_init(&cmd, RSM_CMD_JOB_CANCEL);
        cmd.u.job_cancel.job = seq;
        propose_wait(&cmd);
    }
    j = wait_finished(seq, 10000);
    cr_assert_eq(j->state, RSM_JOB_CANCELLED);
    seq = submit("echo again", NULL);
    j = wait_finished(seq, 10000);
    cr_assert_eq(j->state, RSM_JOB_SUCCEEDED);
    stop();
}

/* A grant this incarnation did not propose (as replayed from the log of an
 * earlier incarnation of the node) never starts a process: restart
 * recovery reports the attempt lost, and the retry runs normally. */
Test(sched_loop, foreign_grant_is_reported_lost_then_retried)
{
    struct outcome o1, o2;
    struct rsm_cmd sub, claim;
    struct rsm_job_spec *sp;
    const struct rsm_job *j;
    uint64_t seq;
    char *out;

    start();
    seq = rsm_fsm_job_seq(rsm_state(rsm)) + 1;
    rsm_cmd_init(&sub, RSM_CMD_JOB_SUBMIT);
    sp = &sub.u.job_submit;
    sp->argv.v = calloc(4, sizeof(char *));
    cr_assert_not_null(sp->argv.v);
    sp->argv.v[0] = xstrdup("/bin/sh");
    sp->argv.v[1] = xstrdup("-c");
    sp->argv.v[2] = xstrdup("echo \"ran attempt $KILN_ATTEMPT\"");
    sp->argv.n = 3;
    sp->retries_max = 1;
    rsm_cmd_init(&claim, RSM_CMD_JOB_CLAIM);
    str_copy(claim.idem_key, sizeof claim.idem_key, "~s1.1.1"); /* old */
    claim.u.job_claim.job = seq;
    claim.u.job_claim.node = SELF;
    claim.u.job_claim.attempt = 1;
    memset(&o1, 0, sizeof o1);
    memset(&o2, 0, sizeof o2);
    /* One loop iteration: both commands share one entry, so the scheduler
     * never sees the job pending. */
    cr_assert_eq(rsm_propose(rsm, &sub, proposed_cb, &o1), 0);
    cr_assert_eq(rsm_propose(rsm, &claim, proposed_cb, &o2), 0);
    cr_assert(run_until(fired, &o2, 5000));
    cr_assert_eq(o1.res.value, seq);
    cr_assert_eq(o2.res.code, 0, "claim: %s", o2.res.message);
    cr_assert_eq(sched_running(&sched), 0, "the foreign grant was started");
    j = wait_finished(seq, 10000);
    cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "state %s end %s",
                 rsm_job_state_name(j->state), rsm_job_end_name(j->end));
    cr_assert_eq(j->attempt, 2);
    cr_assert_eq(j->epoch, 2);
    out = output(seq, RSM_STREAM_STDOUT, NULL);
    cr_assert_str_eq(out, "ran attempt 2\n");
    free(out);
    stop();
}

/* A claim that applies twice under one idempotency key (a forward retried
 * after its answer was lost) reports the stored grant to the observer
 * again. The second report must not end the attempt that already runs:
 * reporting it lost would hand the job to a new attempt while the first
 * process still lives. */
Test(sched_loop, duplicate_grant_does_not_end_the_running_attempt)
{
    const struct rsm_job *j;
    uint64_t seq;
    char *out;

    dup_grants = true;
    start();
    seq = submit("sleep 0.5; echo \"done $KILN_ATTEMPT $KILN_EPOCH\"", NULL);
    j = wait_finished(seq, 10000);
    cr_assert_eq(dup_seen, 1, "duplicates reported: %u", dup_seen);
    cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "state %s end %s",
                 rsm_job_state_name(j->state), rsm_job_end_name(j->end));
    cr_assert_eq(j->attempt, 1);
    cr_assert_eq(j->epoch, 1);
    out = output(seq, RSM_STREAM_STDOUT, NULL);
    cr_assert_str_eq(out, "done 1 1\n");
    free(out);
    stop();
    dup_grants = false;
}

static bool never(void *arg)
{
    (void)arg;
    return false;
}

static bool job_claimed(void *arg)
{
    const struct rsm_job *j = job(*(uint64_t *)arg);
    return j != NULL && j->state == RSM_JOB_CLAIMED;
}

/* Claim-ahead: with one slot busy a second job is claimed and waits (no
 * process, no START); cancelling it there ends it without a process; the
 * next one is claimed in its place and starts the moment the slot frees. */
Test(sched_loop, claim_ahead_waits_for_a_slot)
{
    const struct rsm_job *j;
    struct rsm_cmd cmd;
    uint64_t a;
    uint64_t b;
    uint64_t c;
    char pidfile[600];
    char bfile[600];
    char script[2048];
    pid_t pid;

    slots = 1;
    start();
    snprintf(pidfile, sizeof pidfile, "%s/pid", root);
    snprintf(bfile, sizeof bfile, "%s/b-ran", root);
    snprintf(script, sizeof script,
             "echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 30", pidfile, pidfile,
             pidfile);
    a = submit(script, NULL);
    cr_assert(run_until(file_exists, pidfile, 10000), "A never started");
    pid = read_pid(pidfile);

    snprintf(script, sizeof script, "touch %s", bfile);
    b = submit(script, NULL);
    c = submit("echo c", NULL);
    cr_assert(run_until(job_claimed, &b, 5000), "B was not claimed ahead");
    /* Give a wrong spawn time to show up, then check nothing ran. */
    run_until(never, NULL, 300);
    j = job(b);
    cr_assert_eq(j->state, RSM_JOB_CLAIMED, "B %s",
                 rsm_job_state_name(j->state));
    cr_assert_eq(j->started_ms, 0, "B started while the slot was busy");
    cr_assert(access(bfile, F_OK) != 0, "B's process ran");
    cr_assert_eq(job(c)->state, RSM_JOB_PENDING, "C claimed past the window");
    cr_assert_eq(sched_processes(&sched), 1);
    cr_assert_eq(sched_running(&sched), 2);

    rsm_cmd_init(&cmd, RSM_CMD_JOB_CANCEL);
    cmd.u.job_cancel.job = b;
    propose_wait(&cmd);
    j = wait_finished(b, 10000);
    cr_assert_eq(j->state, RSM_JOB_CANCELLED, "B %s",
                 rsm_job_state_name(j->state));
    cr_assert_eq(j->started_ms, 0);
    cr_assert(run_until(job_claimed, &c, 5000), "C not claimed in B's place");
    cr_assert_eq(sched_processes(&sched), 1);

    rsm_cmd_init(&cmd, RSM_CMD_JOB_CANCEL);
    cmd.u.job_cancel.job = a;
    propose_wait(&cmd);
    cr_assert_eq(wait_finished(a, 10000)->state, RSM_JOB_CANCELLED);
    j = wait_finished(c, 10000);
    cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "C %s",
                 rsm_job_state_name(j->state));
    cr_assert(access(bfile, F_OK) != 0, "B's process ran");
    cr_assert(run_until(pid_gone, &pid, 5000));
    cr_assert_eq(sched_running(&sched), 0);
    slots = 8;
    stop();
}

static bool held_at_least(void *arg)
{
    return sched_running(&sched) >= *(unsigned *)arg;
}

/* A node holding more than 256 jobs (running + granted and waiting): the
 * per-apply validation visits each once and the loop keeps serving (it
 * used to restart over the same first 256 forever, inside the apply
 * callback: renewals stopped and the fence killed everything). */
Test(sched_loop, over_256_held_jobs_keep_the_loop_serving)
{
    unsigned want = 260;
    uint64_t t0;
    slots = 140; /* window 280 */
    start();
    for (unsigned i = 0; i < 300; i++) {
        submit("exec sleep 30", NULL);
    }
    cr_assert(run_until(held_at_least, &want, 30000),
              "the window never held %u jobs (%u)", want,
              sched_running(&sched));
    /* two lease periods: renewals must keep committing */
    t0 = th_now_ms();
    run_until(never, NULL, 2 * lease_ms);
    cr_assert_geq(th_now_ms() - t0, 2 * lease_ms - 100);
    cr_assert(!sched_fenced(NULL), "the node fenced itself: the loop stalled");
    slots = 8;
    stop();
}

/* The executor helper dies while a granted job waits for a slot: the
 * waiting job stays waiting and runs once the helper is back (it used to
 * be spawned into the dead helper and end spawn_failed); the running one
 * is lost and runs again. */
Test(sched_loop, helper_death_leaves_waiting_jobs_waiting)
{
    uint64_t a, b;
    char pidfile[600];
    char script[2048];
    const struct rsm_job *j;

    slots = 1;
    start();
    snprintf(pidfile, sizeof pidfile, "%s/pid", root);
    snprintf(script, sizeof script,
             "echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 30", pidfile, pidfile,
             pidfile);
    a = submit(script, NULL);
    cr_assert(run_until(file_exists, pidfile, 10000), "A never started");
    b = submit("echo b", NULL);
    cr_assert(run_until(job_claimed, &b, 5000), "B was not claimed ahead");
    cr_assert_gt(sched.exec.helper_pid, 0);
    cr_assert_eq(kill(sched.exec.helper_pid, SIGKILL), 0);
    /* A's attempt is lost and A runs again (retries 0: node failure);
     * B, queued behind it, must not have been failed meanwhile */
    {
        struct attempt_arg again = {a, 2, RSM_JOB_RUNNING};
        cr_assert(run_until(job_at, &again, 15000), "A never ran again");
    }
    j = job(b);
    cr_assert(j->state == RSM_JOB_CLAIMED || j->state == RSM_JOB_RUNNING ||
                  j->state == RSM_JOB_SUCCEEDED,
              "B: %s end %s", rsm_job_state_name(j->state),
              rsm_job_end_name(j->end));
    {
        struct rsm_cmd cmd;
        rsm_cmd_init(&cmd, RSM_CMD_JOB_CANCEL);
        cmd.u.job_cancel.job = a;
        propose_wait(&cmd);
    }
    j = wait_finished(b, 15000);
    cr_assert_eq(j->state, RSM_JOB_SUCCEEDED, "B: %s end %s attempt %u",
                 rsm_job_state_name(j->state), rsm_job_end_name(j->end),
                 j->attempt);
    cr_assert_eq(j->attempt, 1);
    slots = 8;
    stop();
}

/* The helper is stalled (SIGSTOP here; in production: suspended in a
 * spawn whose child hangs before exec) when the fence deadline passes:
 * the agent's backstop kills the job's group itself, still before the
 * leader could expire the lease. */
Test(sched_loop, fence_backstop_kills_when_the_helper_is_stalled)
{
    char pidfile[600];
    char script[2048];
    uint64_t t_stop;
    pid_t pid, helper;

    lease_ms = 1500;
    margin_ms = 300;
    start();
    snprintf(pidfile, sizeof pidfile, "%s/pid", root);
    snprintf(script, sizeof script,
             "echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 60", pidfile, pidfile,
             pidfile);
    submit(script, NULL);
    cr_assert(run_until(file_exists, pidfile, 10000), "never started");
    pid = read_pid(pidfile);
    helper = sched.exec.helper_pid;
    cr_assert_gt(helper, 0);
    cr_assert_eq(kill(helper, SIGSTOP), 0);
    t_stop = th_now_ms();
    sched_test_hold_renewals(&sched, true);
    if (!run_until(pid_dead, &pid, lease_ms + 3000)) {
        kill(helper, SIGCONT);
        cr_assert_fail("job not killed while the helper was stalled");
    }
    /* deadline (<= lease - margin after t_stop) + backstop 500 ms + one
     * scan period, and well before lease + grace */
    cr_assert_leq(th_now_ms() - t_stop, lease_ms - margin_ms + 500 + 400);
    kill(helper, SIGCONT);
    sched_test_hold_renewals(&sched, false);
    cr_assert(run_until(unfenced, NULL, 5000), "fence never lifted");
    stop();
}
