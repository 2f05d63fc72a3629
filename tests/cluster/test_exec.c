/* The execution layer against the real helper process (the kiln binary),
 * driven from a libuv loop in the test process. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "err.h"
#include "exec/exec.h"
#include "lib/harness.h"

extern char **environ;

#define MAX_JOBS 2100
#define KEEP_BYTES (256 * 1024) /* output kept per stream for checks */

struct tjob
{
    char id[EXEC_JOB_ID_SIZE];
    char *out[3]; /* kept output per stream (1, 2) */
    size_t kept[3];
    size_t total[3]; /* all bytes seen per stream */
    size_t max_chunk;
    bool done;
    unsigned exits; /* on_exit calls (must end up 1) */
    struct exec_result res;
};

struct tctx
{
    uv_loop_t loop;
    struct exec x;
    struct exec_config cfg;
    char dir[512];
    struct tjob jobs[MAX_JOBS];
    unsigned n;
    unsigned done;
    bool closed;
    unsigned refill_to; /* bench: keep spawning /bin/true up to this id */
    unsigned next_id;
};

static int spawn(struct tctx *c,
                 const char *id,
                 unsigned timeout_s,
                 char **argv);

static struct tctx *C;

static struct tjob *tjob_find(struct tctx *c, const char *id)
{
    for (unsigned i = 0; i < c->n; i++) {
        if (strcmp(c->jobs[i].id, id) == 0) {
            return &c->jobs[i];
        }
    }
    return NULL;
}

static void output_cb(struct exec *x,
                      const char *job_id,
                      uint64_t epoch,
                      int stream,
                      const char *data,
                      size_t len,
                      void *ud)
{
    struct tctx *c = ud;
    struct tjob *j = tjob_find(c, job_id);
    (void)x;
    (void)epoch;
    cr_assert(j != NULL, "output for unknown job %s", job_id);
    cr_assert(stream == 1 || stream == 2);
    cr_assert(!j->done, "output after exit for %s", job_id);
    if (len > j->max_chunk) {
        j->max_chunk = len;
    }
    j->total[stream] += len;
    if (j->kept[stream] + len <= KEEP_BYTES) {
        j->out[stream] = realloc(j->out[stream], j->kept[stream] + len + 1);
        memcpy(j->out[stream] + j->kept[stream], data, len);
        j->kept[stream] += len;
        j->out[stream][j->kept[stream]] = '\0';
    }
}

static void exit_cb(struct exec *x,
                    const char *job_id,
                    uint64_t epoch,
                    const struct exec_result *res,
                    void *ud)
{
    struct tctx *c = ud;
    struct tjob *j = tjob_find(c, job_id);
    (void)x;
    (void)epoch;
    cr_assert(j != NULL, "exit for unknown job %s", job_id);
    j->exits++;
    j->done = true;
    j->res = *res;
    c->done++;
    if (c->next_id < c->refill_to) {
        /* Spawning from inside on_exit must work. */
        char *argv[] = {"/bin/true", NULL};
        char nid[16];
        snprintf(nid, sizeof nid, "r%u", c->next_id++);
        cr_assert_eq(spawn(c, nid, 0, argv), 0);
    }
}

static void closed_cb(struct exec *x)
{
    (void)x;
    C->closed = true;
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

static bool run_until(struct tctx *c,
                      bool (*cond)(struct tctx *, void *),
                      void *arg,
                      unsigned ms)
{
    uv_timer_t t;
    uint64_t end = th_now_ms() + ms;
    bool ok;
    uv_timer_init(&c->loop, &t);
    uv_timer_start(&t, tick_cb, 10, 10);
    while (!(ok = cond(c, arg)) && th_now_ms() < end) {
        uv_run(&c->loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&c->loop, UV_RUN_NOWAIT);
    return ok;
}

static bool job_done_cond(struct tctx *c, void *arg)
{
    struct tjob *j = tjob_find(c, arg);
    return j != NULL && j->done;
}

static bool all_done_cond(struct tctx *c, void *arg)
{
    (void)arg;
    return c->done == c->n;
}

static bool closed_cond(struct tctx *c, void *arg)
{
    (void)arg;
    return c->closed;
}

static void ctx_setup(struct tctx *c, unsigned grace_ms, int armed)
{
    char errmsg[ERRMSG_SIZE];
    memset(c, 0, sizeof *c);
    C = c;
    th_tmpdir(c->dir, sizeof c->dir, "exec");
    cr_assert(uv_loop_init(&c->loop) == 0);
    exec_config_defaults(&c->cfg);
    snprintf(c->cfg.helper_path, sizeof c->cfg.helper_path, "%s", KILN_BIN);
    snprintf(c->cfg.work_root, sizeof c->cfg.work_root, "%s/work", c->dir);
    c->cfg.grace_ms = grace_ms;
    c->cfg.fence_armed_at_start = armed;
    cr_assert(
        exec_init(&c->x, &c->loop, &c->cfg, output_cb, exit_cb, c, errmsg) == 0,
        "%s", errmsg);
    cr_assert(exec_start(&c->x, errmsg) == 0, "%s", errmsg);
}

static void ctx_teardown(struct tctx *c)
{
    exec_close(&c->x, closed_cb);
    cr_assert(run_until(c, closed_cond, NULL, 15000), "exec_close hangs");
    cr_assert(uv_loop_close(&c->loop) == 0, "handles leaked");
    for (unsigned i = 0; i < c->n; i++) {
        cr_assert(c->jobs[i].exits <= 1, "job %s reported %u times",
                  c->jobs[i].id, c->jobs[i].exits);
        for (int s = 0; s < 3; s++) {
            free(c->jobs[i].out[s]);
        }
    }
    th_rmrf(c->dir);
}

/* Spawn argv as job id; returns exec_spawn's result. */
static int spawn(struct tctx *c,
                 const char *id,
                 unsigned timeout_s,
                 char **argv)
{
    static char *env[] = {"PATH=/usr/bin:/bin", "KILN_JOB_ID=set-by-test",
                          "HELLO=world", NULL};
    struct exec_spec spec;
    struct tjob *j;
    int rv;
    memset(&spec, 0, sizeof spec);
    snprintf(spec.job_id, sizeof spec.job_id, "%s", id);
    spec.epoch = 7;
    spec.argv = argv;
    spec.env = env;
    spec.timeout_s = timeout_s;
    rv = exec_spawn(&c->x, &spec);
    if (rv == 0) {
        j = tjob_find(c, id);
        if (j == NULL) {
            cr_assert(c->n < MAX_JOBS);
            j = &c->jobs[c->n++];
        } else {
            c->done--; /* id reused after its previous run */
            for (int k = 0; k < 3; k++) {
                free(j->out[k]);
            }
        }
        memset(j, 0, sizeof *j);
        snprintf(j->id, sizeof j->id, "%s", id);
    }
    return rv;
}

static int spawn_sh(struct tctx *c,
                    const char *id,
                    unsigned timeout_s,
                    const char *script)
{
    char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
    return spawn(c, id, timeout_s, argv);
}

static void wait_job(struct tctx *c, const char *id, unsigned ms)
{
    cr_assert(run_until(c, job_done_cond, (void *)id, ms),
              "job %s did not finish in %u ms", id, ms);
}

/* A pid counts as gone once it no longer exists or is a zombie. */
static bool pid_gone(pid_t pid)
{
    char path[64];
    char buf[512];
    FILE *f;
    char *p;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return true;
    }
    p = fgets(buf, sizeof buf, f);
    fclose(f);
    if (p == NULL) {
        return true;
    }
    p = strrchr(buf, ')');
    return p != NULL && (p[2] == 'Z' || p[2] == 'X');
}

static bool pid_gone_cond(void *arg)
{
    return pid_gone(*(pid_t *)arg);
}

static pid_t read_pid(const char *path)
{
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (f == NULL) {
        return 0;
    }
    if (fscanf(f, "%d", &pid) != 1) {
        pid = 0;
    }
    fclose(f);
    return (pid_t)pid;
}

struct pidfile_arg
{
    struct tctx *c;
    char path[700];
};

static bool pidfile_cond(struct tctx *c, void *arg)
{
    (void)c;
    return read_pid(arg) > 0;
}

TestSuite(exec, .timeout = 60);

Test(exec, output_in_order_per_stream_and_exit_code)
{
    struct tctx c;
    ctx_setup(&c, 500, 0);
    cr_assert(spawn_sh(&c, "order", 0,
                       "echo one; echo two >&2; echo three; "
                       "printf 'no newline'; exit 3") == 0);
    wait_job(&c, "order", 5000);
    struct tjob *j = tjob_find(&c, "order");
    cr_assert_eq(j->res.end, EXEC_EXITED);
    cr_assert_eq(j->res.exit_code, 3);
    cr_assert_eq(j->res.signal, 0);
    cr_assert_str_eq(j->out[1], "one\nthree\nno newline");
    cr_assert_str_eq(j->out[2], "two\n");
    ctx_teardown(&c);
}

Test(exec, env_and_work_directory)
{
    struct tctx c;
    char want[1200];
    ctx_setup(&c, 500, 0);
    cr_assert(spawn_sh(&c, "envjob", 0,
                       "echo $KILN_JOB_ID $HELLO; pwd; "
                       "test -z \"$HOME\" && echo nohome; "
                       "ls /proc/self/fd | wc -l") == 0);
    wait_job(&c, "envjob", 5000);
    struct tjob *j = tjob_find(&c, "envjob");
    cr_assert_eq(j->res.end, EXEC_EXITED);
    cr_assert_eq(j->res.exit_code, 0);
    /* fds of ls: 0 1 2 and the one it opened for the listing */
    snprintf(want, sizeof want,
             "set-by-test world\n%s/work/envjob\nnohome\n4\n", c.dir);
    cr_assert_str_eq(j->out[1], want);
    ctx_teardown(&c);
}

Test(exec, missing_command_fails_with_reason_and_127)
{
    struct tctx c;
    char *argv[] = {"nosuchcmd-kiln", "x", NULL};
    ctx_setup(&c, 500, 0);
    cr_assert(spawn(&c, "nocmd", 0, argv) == 0);
    wait_job(&c, "nocmd", 5000);
    struct tjob *j = tjob_find(&c, "nocmd");
    cr_assert_eq(j->res.end, EXEC_SPAWN_FAILED);
    cr_assert_eq(j->res.exit_code, 127);
    cr_assert_str_eq(j->out[2],
                     "kiln: cannot execute 'nosuchcmd-kiln': No "
                     "such file or directory\n");
    ctx_teardown(&c);
}

Test(exec, timeout_kills_job_and_grandchild)
{
    struct tctx c;
    char path[700];
    pid_t gc;
    uint64_t t0;
    ctx_setup(&c, 500, 0);
    t0 = th_now_ms();
    cr_assert(spawn_sh(&c, "slow", 1,
                       "sleep 100 & echo $! > gc.pid; sleep 100") == 0);
    wait_job(&c, "slow", 8000);
    struct tjob *j = tjob_find(&c, "slow");
    cr_assert_eq(j->res.end, EXEC_TIMEOUT);
    cr_assert_eq(j->res.signal, SIGTERM);
    cr_assert(th_now_ms() - t0 >= 1000);
    snprintf(path, sizeof path, "%s/work/slow/gc.pid", c.dir);
    gc = read_pid(path);
    cr_assert(gc > 0);
    cr_assert(th_wait(pid_gone_cond, &gc, 3000), "grandchild %d survived",
              (int)gc);
    ctx_teardown(&c);
}

Test(exec, cancel_kills_job_and_grandchild)
{
    struct tctx c;
    char path[700];
    pid_t gc;
    ctx_setup(&c, 500, 0);
    cr_assert(spawn_sh(&c, "victim", 0,
                       "sleep 100 & echo $! > gc.pid; sleep 100") == 0);
    snprintf(path, sizeof path, "%s/work/victim/gc.pid", c.dir);
    cr_assert(run_until(&c, pidfile_cond, path, 5000));
    gc = read_pid(path);
    cr_assert_eq(exec_kill(&c.x, "victim", EXEC_CANCELLED), 0);
    cr_assert_eq(exec_kill(&c.x, "nosuch", EXEC_CANCELLED), ERR_NOTFOUND);
    wait_job(&c, "victim", 5000);
    struct tjob *j = tjob_find(&c, "victim");
    cr_assert_eq(j->res.end, EXEC_CANCELLED);
    cr_assert(th_wait(pid_gone_cond, &gc, 3000), "grandchild %d survived",
              (int)gc);
    ctx_teardown(&c);
}

Test(exec, cancel_escalates_to_sigkill_after_grace)
{
    struct tctx c;
    char path[700];
    uint64_t t0;
    ctx_setup(&c, 300, 0);
    cr_assert(spawn_sh(&c, "stubborn", 0,
                       "trap '' TERM; echo $$ > me.pid; sleep 100") == 0);
    snprintf(path, sizeof path, "%s/work/stubborn/me.pid", c.dir);
    cr_assert(run_until(&c, pidfile_cond, path, 5000));
    t0 = th_now_ms();
    cr_assert_eq(exec_kill(&c.x, "stubborn", EXEC_CANCELLED), 0);
    wait_job(&c, "stubborn", 5000);
    struct tjob *j = tjob_find(&c, "stubborn");
    cr_assert_eq(j->res.end, EXEC_CANCELLED);
    cr_assert_eq(j->res.signal, SIGKILL);
    cr_assert(th_now_ms() - t0 >= 250, "killed before the grace period");
    ctx_teardown(&c);
}

Test(exec, five_mib_of_output_arrives_complete)
{
    struct tctx c;
    ctx_setup(&c, 500, 0);
    cr_assert(spawn_sh(&c, "big", 0,
                       "head -c 5000000 /dev/zero | tr '\\0' 'x'; "
                       "head -c 300000 /dev/zero | tr '\\0' 'y' >&2") == 0);
    wait_job(&c, "big", 20000);
    struct tjob *j = tjob_find(&c, "big");
    cr_assert_eq(j->res.end, EXEC_EXITED);
    cr_assert_eq(j->res.exit_code, 0);
    cr_assert_eq(j->total[1], 5000000);
    cr_assert_eq(j->total[2], 300000);
    cr_assert_leq(j->max_chunk, 64 * 1024);
    for (size_t i = 0; i < j->kept[1]; i++) {
        cr_assert_eq(j->out[1][i], 'x');
    }
    ctx_teardown(&c);
}

Test(exec, line_batches_split_at_newlines)
{
    struct tctx c;
    ctx_setup(&c, 500, 0);
    /* 3000 numbered lines: every batch but possibly 64 KiB-full ones ends
     * at a newline, and the concatenation is exact. */
    cr_assert(spawn_sh(&c, "lines", 0,
                       "i=0; while [ $i -lt 3000 ]; do echo line $i; "
                       "i=$((i+1)); done") == 0);
    wait_job(&c, "lines", 10000);
    struct tjob *j = tjob_find(&c, "lines");
    cr_assert_eq(j->res.exit_code, 0);
    char *p = j->out[1];
    for (int i = 0; i < 3000; i++) {
        char want[32];
        int n = snprintf(want, sizeof want, "line %d\n", i);
        cr_assert(strncmp(p, want, (size_t)n) == 0, "line %d", i);
        p += n;
    }
    cr_assert_eq(*p, '\0');
    ctx_teardown(&c);
}

Test(exec, fence_deadline_kills_and_refuses_until_extended)
{
    struct tctx c;
    char *argv[] = {"/bin/true", NULL};
    uint64_t t0;
    ctx_setup(&c, 500, 0);
    cr_assert(!exec_is_fenced(&c.x));
    cr_assert(spawn_sh(&c, "leased", 0, "sleep 100") == 0);
    t0 = th_now_ms();
    exec_fence_extend(&c.x, 300);
    wait_job(&c, "leased", 5000);
    struct tjob *j = tjob_find(&c, "leased");
    cr_assert_eq(j->res.end, EXEC_FENCED);
    cr_assert_eq(j->res.signal, SIGKILL);
    cr_assert(th_now_ms() - t0 >= 280, "fenced too early");
    cr_assert(exec_is_fenced(&c.x));
    cr_assert_eq(spawn(&c, "refused", 0, argv), ERR_BUSY);
    exec_fence_extend(&c.x, 10000);
    cr_assert(!exec_is_fenced(&c.x));
    cr_assert_eq(spawn(&c, "after", 0, argv), 0);
    wait_job(&c, "after", 5000);
    cr_assert_eq(tjob_find(&c, "after")->res.end, EXEC_EXITED);
    /* Disarm: no deadline at all. */
    exec_fence_extend(&c.x, 0);
    cr_assert(!exec_is_fenced(&c.x));
    ctx_teardown(&c);
}

Test(exec, armed_at_start_and_fence_now)
{
    struct tctx c;
    char *argv[] = {"/bin/true", NULL};
    ctx_setup(&c, 500, 1);
    cr_assert(exec_is_fenced(&c.x));
    cr_assert_eq(spawn(&c, "early", 0, argv), ERR_BUSY);
    exec_fence_extend(&c.x, 30000);
    cr_assert(spawn_sh(&c, "victim", 0, "sleep 100") == 0);
    cr_assert(spawn_sh(&c, "victim2", 0, "sleep 100") == 0);
    exec_fence_now(&c.x);
    cr_assert(exec_is_fenced(&c.x));
    cr_assert(run_until(&c, all_done_cond, NULL, 5000));
    cr_assert_eq(tjob_find(&c, "victim")->res.end, EXEC_FENCED);
    cr_assert_eq(tjob_find(&c, "victim2")->res.end, EXEC_FENCED);
    cr_assert_eq(spawn(&c, "late", 0, argv), ERR_BUSY);
    ctx_teardown(&c);
}

Test(exec, bad_specs_rejected)
{
    struct tctx c;
    char *argv[] = {"/bin/true", NULL};
    char *empty[] = {NULL};
    ctx_setup(&c, 500, 0);
    cr_assert_eq(spawn(&c, "../etc", 0, argv), ERR_INVALID);
    cr_assert_eq(spawn(&c, "a/b", 0, argv), ERR_INVALID);
    cr_assert_eq(spawn(&c, "", 0, argv), ERR_INVALID);
    cr_assert_eq(spawn(&c, "ok", 0, empty), ERR_INVALID);
    cr_assert(spawn_sh(&c, "dup", 0, "sleep 100") == 0);
    cr_assert_eq(spawn_sh(&c, "dup", 0, "true"), ERR_CONFLICT);
    cr_assert_eq(exec_kill(&c.x, "dup", EXEC_EXITED), ERR_INVALID);
    cr_assert_eq(exec_running(&c.x), 1);
    /* Closing with a running job cancels it. */
    ctx_teardown(&c);
    cr_assert_eq(c.jobs[0].res.end, EXEC_CANCELLED);
}

Test(exec, many_short_jobs)
{
    struct tctx c;
    char *argv[] = {"/bin/true", NULL};
    ctx_setup(&c, 500, 0);
    for (int i = 0; i < 200; i++) {
        char id[16];
        snprintf(id, sizeof id, "t%d", i);
        cr_assert_eq(spawn(&c, id, 0, argv), 0);
    }
    cr_assert_eq(exec_running(&c.x), 200);
    cr_assert(run_until(&c, all_done_cond, NULL, 30000), "%u of 200 done",
              c.done);
    for (unsigned i = 0; i < c.n; i++) {
        cr_assert_eq(c.jobs[i].res.end, EXEC_EXITED, "%s", c.jobs[i].id);
        cr_assert_eq(c.jobs[i].res.exit_code, 0, "%s", c.jobs[i].id);
    }
    cr_assert_eq(exec_running(&c.x), 0);
    ctx_teardown(&c);
}

static bool helper_back_cond(struct tctx *c, void *arg)
{
    return c->x.helper_pid != 0 && c->x.helper_pid != *(pid_t *)arg;
}

Test(exec, helper_death_reports_lost_and_restarts)
{
    struct tctx c;
    char path[700];
    pid_t old;
    pid_t job;
    char *argv[] = {"/bin/true", NULL};
    ctx_setup(&c, 500, 0);
    cr_assert(spawn_sh(&c, "orphan", 0, "echo $$ > me.pid; sleep 100") == 0);
    snprintf(path, sizeof path, "%s/work/orphan/me.pid", c.dir);
    cr_assert(run_until(&c, pidfile_cond, path, 5000));
    job = read_pid(path);
    old = c.x.helper_pid;
    cr_assert(old > 0);
    kill(old, SIGKILL);
    wait_job(&c, "orphan", 5000);
    cr_assert_eq(tjob_find(&c, "orphan")->res.end, EXEC_LOST);
    cr_assert(th_wait(pid_gone_cond, &job, 3000), "job %d survived", (int)job);
    cr_assert(run_until(&c, helper_back_cond, &old, 5000), "no restart");
    cr_assert_eq(spawn(&c, "again", 0, argv), 0);
    wait_job(&c, "again", 5000);
    cr_assert_eq(tjob_find(&c, "again")->res.end, EXEC_EXITED);
    ctx_teardown(&c);
}

/* The "agent" is a forked child owning an exec instance; kill -9 it and
 * the helper must kill the job group and exit. */
static void agent_child(const char *dir)
{
    static struct tctx c; /* fresh state in the child */
    char errmsg[ERRMSG_SIZE];
    char path[700];
    FILE *f;
    memset(&c, 0, sizeof c);
    C = &c;
    uv_loop_init(&c.loop);
    exec_config_defaults(&c.cfg);
    snprintf(c.cfg.helper_path, sizeof c.cfg.helper_path, "%s", KILN_BIN);
    snprintf(c.cfg.work_root, sizeof c.cfg.work_root, "%s/work", dir);
    if (exec_init(&c.x, &c.loop, &c.cfg, output_cb, exit_cb, &c, errmsg) != 0 ||
        exec_start(&c.x, errmsg) != 0) {
        _exit(3);
    }
    snprintf(path, sizeof path, "%s/helper.pid", dir);
    f = fopen(path, "w");
    fprintf(f, "%d\n", (int)c.x.helper_pid);
    fclose(f);
    if (spawn_sh(&c, "survivor", 0,
                 "sleep 100 & echo $! > gc.pid; echo $$ > me.pid; wait") != 0) {
        _exit(4);
    }
    uv_run(&c.loop, UV_RUN_DEFAULT);
    _exit(5);
}

static bool file_pid_cond(void *arg)
{
    return read_pid(arg) > 0;
}

Test(exec, agent_kill9_makes_helper_kill_jobs_and_exit)
{
    char dir[512];
    char p_helper[700], p_me[700], p_gc[700];
    pid_t agent, helper, me, gc;
    th_tmpdir(dir, sizeof dir, "exec-agent");
    agent = fork();
    cr_assert(agent >= 0);
    if (agent == 0) {
        agent_child(dir);
    }
    snprintf(p_helper, sizeof p_helper, "%s/helper.pid", dir);
    snprintf(p_me, sizeof p_me, "%s/work/survivor/me.pid", dir);
    snprintf(p_gc, sizeof p_gc, "%s/work/survivor/gc.pid", dir);
    cr_assert(th_wait(file_pid_cond, p_me, 5000), "job did not start");
    cr_assert(th_wait(file_pid_cond, p_gc, 5000), "job did not start");
    helper = read_pid(p_helper);
    me = read_pid(p_me);
    gc = read_pid(p_gc);
    cr_assert(!pid_gone(me) && !pid_gone(gc) && !pid_gone(helper));
    kill(agent, SIGKILL);
    waitpid(agent, NULL, 0);
    cr_assert(th_wait(pid_gone_cond, &me, 3000), "job %d survived", (int)me);
    cr_assert(th_wait(pid_gone_cond, &gc, 3000), "grandchild %d survived",
              (int)gc);
    cr_assert(th_wait(pid_gone_cond, &helper, 3000), "helper %d survived",
              (int)helper);
    th_rmrf(dir);
}

Test(exec, agent_sigstop_does_not_stop_the_fence)
{
    char dir[512];
    char p_me[700];
    pid_t agent, me;
    th_tmpdir(dir, sizeof dir, "exec-stop");
    agent = fork();
    cr_assert(agent >= 0);
    if (agent == 0) {
        /* Same as agent_child but with a 1.5 s fence deadline. */
        static struct tctx c;
        char errmsg[ERRMSG_SIZE];
        memset(&c, 0, sizeof c);
        C = &c;
        uv_loop_init(&c.loop);
        exec_config_defaults(&c.cfg);
        snprintf(c.cfg.helper_path, sizeof c.cfg.helper_path, "%s", KILN_BIN);
        snprintf(c.cfg.work_root, sizeof c.cfg.work_root, "%s/work", dir);
        if (exec_init(&c.x, &c.loop, &c.cfg, output_cb, exit_cb, &c, errmsg) !=
                0 ||
            exec_start(&c.x, errmsg) != 0) {
            _exit(3);
        }
        exec_fence_extend(&c.x, 1500);
        if (spawn_sh(&c, "frozen", 0, "echo $$ > me.pid; sleep 100") != 0) {
            _exit(4);
        }
        uv_run(&c.loop, UV_RUN_DEFAULT);
        _exit(5);
    }
    snprintf(p_me, sizeof p_me, "%s/work/frozen/me.pid", dir);
    cr_assert(th_wait(file_pid_cond, p_me, 5000), "job did not start");
    me = read_pid(p_me);
    kill(agent, SIGSTOP);
    cr_assert(th_wait(pid_gone_cond, &me, 5000),
              "job %d survived a frozen agent's fence deadline", (int)me);
    kill(agent, SIGKILL);
    waitpid(agent, NULL, 0);
    th_rmrf(dir);
}

/* Throughput: 1000 /bin/true through the helper versus bare posix_spawn
 * from this process. Reported, loosely checked. */
Test(exec, spawn_rate)
{
    struct tctx c;
    char *argv[] = {"/bin/true", NULL};
    uint64_t t0, t_burst, t_helper, t_bare;
    ctx_setup(&c, 500, 0);
    /* 1000 at once. */
    t0 = th_now_ms();
    for (int i = 0; i < 1000; i++) {
        char id[16];
        snprintf(id, sizeof id, "b%d", i);
        cr_assert_eq(spawn(&c, id, 0, argv), 0);
    }
    cr_assert(run_until(&c, all_done_cond, NULL, 60000), "%u of 1000 done",
              c.done);
    t_burst = th_now_ms() - t0;
    /* 16 in flight, refilled from on_exit. */
    t0 = th_now_ms();
    c.refill_to = 1000;
    for (c.next_id = 0; c.next_id < 16;) {
        char id[16];
        snprintf(id, sizeof id, "r%u", c.next_id++);
        cr_assert_eq(spawn(&c, id, 0, argv), 0);
    }
    cr_assert(run_until(&c, all_done_cond, NULL, 60000), "%u done", c.done);
    t_helper = th_now_ms() - t0;
    cr_assert_eq(c.n, 2000);
    for (unsigned i = 0; i < c.n; i++) {
        cr_assert_eq(c.jobs[i].res.exit_code, 0);
    }
    ctx_teardown(&c);

    t0 = th_now_ms();
    for (int i = 0; i < 1000; i++) {
        pid_t pid;
        int st;
        cr_assert(posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) ==
                  0);
        if (i >= 16) {
            wait(&st);
        }
    }
    while (wait(NULL) > 0) {
    }
    t_bare = th_now_ms() - t0;
    fprintf(stderr,
            "spawn_rate: 1000 /bin/true via helper: burst %llu ms (%.0f/s), "
            "16 in flight %llu ms (%.0f/s); bare posix_spawn 16 in flight "
            "%llu ms (%.0f/s)\n",
            (unsigned long long)t_burst, 1000.0 * 1000 / (t_burst + 1),
            (unsigned long long)t_helper, 1000.0 * 1000 / (t_helper + 1),
            (unsigned long long)t_bare, 1000.0 * 1000 / (t_bare + 1));
}

/* A FENCE extension that reaches the helper late (queued behind a big
 * SPAWN in the agent's write queue, or written by an agent frozen right
 * after computing it) must not extend the fence from its arrival: the
 * helper counts from the agent's clock reading. Otherwise a SPAWN queued
 * behind it starts after the deadline the agent pushed, when the cluster
 * may already have handed the job to another node. The queue is built up
 * here by stopping the helper. */
Test(exec, late_fence_extension_does_not_restart_spawns)
{
    struct tctx c;
    static char big[8][110 * 1024];
    char *argv[10];
    char path[600];
    char script[700];
    pid_t helper;
    uint64_t until;

    ctx_setup(&c, 300, 0);
    exec_fence_extend(&c.x, 200);
    cr_assert(!run_until(&c, closed_cond, NULL, 50)); /* deliver it */
    helper = c.x.helper_pid;
    cr_assert(helper > 0);
    cr_assert_eq(kill(helper, SIGSTOP), 0);

    /* ~880 KB of argv: more than the socket buffer, the rest queues. */
    argv[0] = "/bin/true";
    for (int i = 0; i < 8; i++) {
        memset(big[i], 'x', sizeof big[i] - 1);
        big[i][sizeof big[i] - 1] = '\0';
        argv[1 + i] = big[i];
    }
    argv[9] = NULL;
    cr_assert_eq(spawn(&c, "big", 0, argv), 0);
    cr_assert(uv_stream_get_write_queue_size((uv_stream_t *)&c.x.pipe) > 0,
              "the write queue did not build up");
    exec_fence_extend(&c.x, 250);
    snprintf(path, sizeof path, "%s/ran", c.dir);
    snprintf(script, sizeof script, "touch '%s'", path);
    cr_assert_eq(spawn_sh(&c, "late", 0, script), 0);

    /* Well past both deadlines, then let the helper read everything. */
    until = th_now_ms() + 700;
    while (th_now_ms() < until) {
        run_until(&c, closed_cond, NULL, 50);
    }
    cr_assert(exec_is_fenced(&c.x));
    cr_assert_eq(kill(helper, SIGCONT), 0);
    wait_job(&c, "late", 5000);
    wait_job(&c, "big", 5000);
    cr_assert_eq(tjob_find(&c, "late")->res.end, EXEC_FENCED, "end %s",
                 exec_end_str(tjob_find(&c, "late")->res.end));
    cr_assert(access(path, F_OK) != 0, "the late spawn ran");
    ctx_teardown(&c);
}

/* A finished job's empty work directory is renamed for the next job (no
 * new inode); one with files in it is kept; a retry of the same job id
 * keeps its own directory. */
Test(exec, empty_work_dirs_are_reused)
{
    struct tctx c;
    char path[1200];
    struct stat st;
    ino_t ino;
    ctx_setup(&c, 500, 0);
    cr_assert(spawn_sh(&c, "first", 0, "true") == 0);
    wait_job(&c, "first", 5000);
    snprintf(path, sizeof path, "%s/work/first", c.dir);
    cr_assert_eq(stat(path, &st), 0);
    ino = st.st_ino;
    cr_assert(spawn_sh(&c, "second", 0, "pwd; echo data > kept.txt") == 0);
    wait_job(&c, "second", 5000);
    cr_assert(stat(path, &st) != 0, "the empty dir was not reused");
    snprintf(path, sizeof path, "%s/work/second", c.dir);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_ino, ino, "second did not get first's directory");
    snprintf(path, sizeof path, "%s/work/second\n", c.dir);
    cr_assert_str_eq(tjob_find(&c, "second")->out[1], path);

    /* second's dir holds a file: never handed on */
    cr_assert(spawn_sh(&c, "third", 0, "ls") == 0);
    wait_job(&c, "third", 5000);
    snprintf(path, sizeof path, "%s/work/second/kept.txt", c.dir);
    cr_assert_eq(stat(path, &st), 0, "second's file is gone");
    cr_assert_null(tjob_find(&c, "third")->out[1], "third saw: %s",
                   tjob_find(&c, "third")->out[1]);

    /* a retry of "second" runs in its own directory with its file */
    cr_assert(spawn_sh(&c, "second", 0, "cat kept.txt") == 0);
    wait_job(&c, "second", 5000);
    cr_assert_str_eq(tjob_find(&c, "second")->out[1], "data\n");
    ctx_teardown(&c);
}
