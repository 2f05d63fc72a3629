/* The per-node executor/fence helper process: spawns, watches, kills and
 * reaps jobs for the agent, streams their output back, and kills every job
 * group when the fence deadline passes or the agent goes away
 * (docs/exec.md). Plain poll/clone/exec/waitpid, no libuv. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "exec/exec_int.h"
#include "log.h"
#include "util.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define HMOD "exec-helper"

/* The spawned child runs on this stack until its execve (the helper is
 * suspended meanwhile, so one stack serves every spawn). */

#define SPARE_DIRS_MAX 32 /* finished jobs' work dirs kept for reuse */
#define CHILD_STACK_SIZE (256 * 1024)

struct hstream
{
    int fd;               /* read end of the job's pipe, -1 after EOF */
    struct exec__buf buf; /* unsent output, at most EXEC__BATCH_MAX */
    uint64_t first_ms;    /* arrival of the oldest unsent byte */
};

struct hjob
{
    char job_id[EXEC_JOB_ID_SIZE];
    uint64_t epoch;
    pid_t pid;             /* leader and process group id */
    bool reaped;           /* leader waited for */
    int status;            /* its wait status */
    struct hstream out[2]; /* stdout, stderr */
    int st_fd;             /* exec status pipe, -1 after EOF */
    int exec_errno;        /* errno of a failed exec, 0 if none */
    size_t st_got;         /* bytes of exec_errno read */
    uint64_t timeout_at;   /* SIGTERM due, 0 = none */
    uint64_t kill_at;      /* SIGKILL due after the grace, 0 = none */
    uint64_t eof_deadline; /* after reaping: give up waiting for EOF */
    int why;               /* enum exec_end we killed it for, -1 none */
    bool escaped;          /* output force-closed after exit: some process
                            * of the job may still be alive */
};

struct helper
{
    int fd;                /* socket to the agent */
    bool agent_gone;       /* EOF/error on it */
    struct exec_rx rx;     /* frames from the agent */
    struct exec__buf outq; /* frames to the agent */
    size_t outq_pos;       /* bytes of outq already written */
    struct hjob **jobs;    /* owned */
    unsigned n_jobs;
    unsigned cap_jobs;
    unsigned grace_ms;
    char work_root[PATH_MAX];
    uint64_t fence_deadline; /* 0 = none */
    uint64_t fence_seq;      /* last FENCE/FENCE_NOW seen */
    bool fenced;             /* spawns refused */
    bool shutting_down;
    pid_t self;
    struct rlimit nofile; /* RLIMIT_NOFILE as inherited, for jobs */
    /* Work directories of finished jobs, reused (renamed) for new jobs
     * when still empty: creating a directory allocates an inode, which
     * cost more CPU than a short job (docs/exec.md). */
    char spare[SPARE_DIRS_MAX][EXEC_JOB_ID_SIZE];
    unsigned n_spare;
    void *child_stack; /* for clone(CLONE_VM | CLONE_VFORK); NULL:
                          not mapped yet (or mapping failed: fork) */
    uint8_t scratch[EXEC__BATCH_MAX];
};

static volatile sig_atomic_t got_chld;
static volatile sig_atomic_t got_term;

static void on_signal_cb(int sig)
{
    if (sig == SIGCHLD) {
        got_chld = 1;
    } else {
        got_term = 1;
    }
}

/* ---- output to the agent ---- */

static size_t outq_pending(const struct helper *h)
{
    return h->outq.len - h->outq_pos;
}

static void send_msg(struct helper *h, const struct exec__msg *m)
{
    int rv;
    if (h->agent_gone) {
        return;
    }
    rv = exec__msg_encode(m, &h->outq);
    if (rv != 0) {
        LOGE(HMOD, "cannot encode message type %u: %s", m->type, err_str(rv));
    }
}

static void send_output(struct helper *h,
                        const char *job_id,
                        uint64_t epoch,
                        int stream,
                        const void *data,
                        size_t len)
{
    struct exec__msg m;
    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_OUTPUT;
    str_copy(m.job_id, sizeof m.job_id, job_id);
    m.epoch = epoch;
    m.stream = (uint8_t)stream;
    m.data = data;
    m.len = len;
    send_msg(h, &m);
}

static void send_exit(struct helper *h,
                      const char *job_id,
                      uint64_t epoch,
                      enum exec_end end,
                      int code,
                      int sig)
{
    struct exec__msg m;
    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_EXIT;
    str_copy(m.job_id, sizeof m.job_id, job_id);
    m.epoch = epoch;
    m.end = (uint8_t)end;
    m.exit_code = code;
    m.signal = sig;
    send_msg(h, &m);
}

/* Write as much of the queue as the socket takes. */
static void flush_outq(struct helper *h)
{
    while (!h->agent_gone && outq_pending(h) > 0) {
        ssize_t n = write(h->fd, h->outq.data + h->outq_pos, outq_pending(h));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN) {
                LOGW(HMOD, "write to agent: %s", strerror(errno));
                h->agent_gone = true;
            }
            break;
        }
        h->outq_pos += (size_t)n;
    }
    if (h->outq_pos == h->outq.len || h->agent_gone) {
        h->outq.len = 0;
        h->outq_pos = 0;
    } else if (h->outq_pos > h->outq.len / 2) {
        exec__buf_consume(&h->outq, h->outq_pos);
        h->outq_pos = 0;
    }
}

/* ---- jobs ---- */

static struct hjob *find_job(struct helper *h, const char *job_id)
{
    for (unsigned i = 0; i < h->n_jobs; i++) {
        if (strcmp(h->jobs[i]->job_id, job_id) == 0) {
            return h->jobs[i];
        }
    }
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void free_job(struct hjob *j)
{
    for (int s = 0; s < 2; s++) {
        close_fd(&j->out[s].fd);
        exec__buf_free(&j->out[s].buf);
    }
    close_fd(&j->st_fd);
    free(j);
}

/* Send a signal to the job's whole process group. The leader is not reaped
 * yet (or was reaped this very moment by reap_children before this), so the
 * group id cannot have been reused. */
static void signal_job(struct hjob *j, enum exec_end why, int sig)
{
    if (j->why < 0 || why == EXEC_FENCED) {
        j->why = (int)why;
    }
    if (!j->reaped && j->pid > 0) {
        kill(-j->pid, sig);
    }
}

/* SIGTERM now, SIGKILL after the grace period. */
static void terminate_job(struct helper *h, struct hjob *j, enum exec_end why)
{
    if (j->reaped) {
        return;
    }
    signal_job(j, why, SIGTERM);
    if (j->kill_at == 0) {
        j->kill_at = time_mono_ms() + h->grace_ms;
    }
    j->timeout_at = 0;
}

static void fence_all(struct helper *h, const char *what)
{
    struct exec__msg m;
    uint64_t killed = 0;
    for (unsigned i = 0; i < h->n_jobs; i++) {
        struct hjob *j = h->jobs[i];
        if (!j->reaped) {
            signal_job(j, EXEC_FENCED, SIGKILL);
            killed++;
        }
    }
    h->fenced = true;
    h->fence_deadline = 0;
    LOGW(HMOD, "fenced (%s): killed %llu job group(s)", what,
         (unsigned long long)killed);
    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_FENCED;
    m.seq = h->fence_seq;
    m.killed = killed;
    send_msg(h, &m);
}

/* Flush one stream's batch: up to its last newline unless force or no
 * newline at all. */
static void flush_stream(struct helper *h, struct hjob *j, int s, bool force)
{
    struct hstream *st = &j->out[s];
    size_t n = st->buf.len;
    if (n == 0) {
        return;
    }
    if (!force) {
        const uint8_t *nl = memrchr(st->buf.data, '\n', n);
        if (nl != NULL) {
            n = (size_t)(nl - st->buf.data) + 1;
        }
    }
    send_output(h, j->job_id, j->epoch, s + 1, st->buf.data, n);
    exec__buf_consume(&st->buf, n);
    st->first_ms = st->buf.len > 0 ? time_mono_ms() : 0;
}

static bool may_flush(const struct helper *h)
{
    return h->agent_gone || outq_pending(h) < EXEC__OUTQ_SOFT;
}

static void read_stream(struct helper *h, struct hjob *j, int s)
{
    struct hstream *st = &j->out[s];
    size_t room = EXEC__BATCH_MAX - st->buf.len;
    ssize_t n;

    if (room == 0) {
        return;
    }
    n = read(st->fd, h->scratch, room);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) {
            return;
        }
        n = 0; /* treat errors as EOF */
    }
    if (n == 0) {
        close_fd(&st->fd);
        if (may_flush(h)) {
            flush_stream(h, j, s, true);
        }
        return;
    }
    if (st->buf.len == 0) {
        st->first_ms = time_mono_ms();
    }
    if (exec__buf_append(&st->buf, h->scratch, (size_t)n) != 0) {
        LOGE(HMOD, "out of memory: dropping output of %s", j->job_id);
        return;
    }
    if (st->buf.len >= EXEC__BATCH_MAX && may_flush(h)) {
        flush_stream(h, j, s, false);
    }
}

static void read_status(struct hjob *j)
{
    uint8_t *p = (uint8_t *)&j->exec_errno;
    ssize_t n;
    if (j->st_got >= sizeof j->exec_errno) {
        close_fd(&j->st_fd);
        return;
    }
    n = read(j->st_fd, p + j->st_got, sizeof j->exec_errno - j->st_got);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return;
    }
    if (n <= 0) {
        close_fd(&j->st_fd);
        return;
    }
    j->st_got += (size_t)n;
}

/* Report the job if it is completely over; returns true if removed. */
static bool maybe_finish(struct helper *h, unsigned idx)
{
    struct hjob *j = h->jobs[idx];
    enum exec_end end;
    int code = -1;
    int sig = 0;

    if (!j->reaped || j->st_fd >= 0) {
        return false;
    }
    for (int s = 0; s < 2; s++) {
        if (j->out[s].fd >= 0) {
            return false;
        }
    }
    for (int s = 0; s < 2; s++) {
        if (j->out[s].buf.len > 0) {
            if (!may_flush(h)) {
                return false;
            }
            flush_stream(h, j, s, true);
        }
    }
    if (WIFEXITED(j->status)) {
        code = WEXITSTATUS(j->status);
    } else if (WIFSIGNALED(j->status)) {
        sig = WTERMSIG(j->status);
    }
    if (j->st_got == sizeof j->exec_errno && j->exec_errno != 0) {
        end = EXEC_SPAWN_FAILED;
    } else if (j->why >= 0) {
        end = (enum exec_end)j->why;
    } else if (sig != 0) {
        end = EXEC_SIGNALED;
    } else {
        end = EXEC_EXITED;
    }
    LOGD(HMOD, "job %s pid %d over: %s code %d signal %d", j->job_id,
         (int)j->pid, exec_end_str(end), code, sig);
    send_exit(h, j->job_id, j->epoch, end, code, sig);
    /* Offered for reuse only when no process of the job can be left: not
     * after its output had to be force-closed (an escaped process still
     * held it) nor after a kill (timeout, cancel, fence). */
    if (h->work_root[0] != '\0' && h->n_spare < SPARE_DIRS_MAX && !j->escaped &&
        j->why < 0) {
        str_copy(h->spare[h->n_spare++], EXEC_JOB_ID_SIZE, j->job_id);
    }
    h->jobs[idx] = h->jobs[--h->n_jobs];
    free_job(j);
    return true;
}

static void reap_children(struct helper *h)
{
    for (;;) {
        siginfo_t si;
        int status;
        pid_t pid;
        memset(&si, 0, sizeof si);
        /* Peek first: while the exited leader is a zombie its pid (the
         * group id) cannot be reused, so the group kill below is safe. */
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 ||
            si.si_pid == 0) {
            return;
        }
        pid = si.si_pid;
        /* Whatever the leader left behind in its group dies with it. */
        kill(-pid, SIGKILL);
        if (waitpid(pid, &status, 0) != pid) {
            return;
        }
        for (unsigned i = 0; i < h->n_jobs; i++) {
            struct hjob *j = h->jobs[i];
            if (j->pid == pid && !j->reaped) {
                j->reaped = true;
                j->status = status;
                j->eof_deadline = time_mono_ms() + EXEC__EOF_WAIT_MS;
                break;
            }
        }
    }
}

/* ---- spawning ---- */

static const char *env_get(char **env, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; env[i] != NULL; i++) {
        if (strncmp(env[i], name, n) == 0 && env[i][n] == '=') {
            return env[i] + n + 1;
        }
    }
    return NULL;
}

/* execve argv[0], searching PATH from the job's own environment. Returns
 * only on failure, with the errno to report. */
static int exec_search(char **argv, char **env)
{
    const char *path;
    const char *p;
    char buf[PATH_MAX];
    size_t alen = strlen(argv[0]);
    int err = ENOENT;
    bool eacces = false;

    if (strchr(argv[0], '/') != NULL) {
        execve(argv[0], argv, env);
        return errno;
    }
    path = env_get(env, "PATH");
    if (path == NULL) {
        path = "/usr/local/bin:/usr/bin:/bin";
    }
    for (p = path;; p++) {
        const char *end = strchrnul(p, ':');
        size_t dlen = (size_t)(end - p);
        if (dlen + 1 + alen + 1 <= sizeof buf) {
            if (dlen == 0) {
                buf[0] = '.';
                dlen = 1;
            } else {
                memcpy(buf, p, dlen);
            }
            buf[dlen] = '/';
            memcpy(buf + dlen + 1, argv[0], alen + 1);
            execve(buf, argv, env);
            err = errno;
            if (err == EACCES) {
                eacces = true;
            } else if (err != ENOENT && err != ENOTDIR && err != ELOOP &&
                       err != ENAMETOOLONG && err != ESTALE && err != ENODEV &&
                       err != ETIMEDOUT) {
                return err;
            }
        }
        p = end;
        if (*p == '\0') {
            break;
        }
    }
    return eacces ? EACCES : ENOENT;
}

/* errno text without locale lookups or allocation (the child shares the
 * helper's memory until it execs). */
static const char *errdesc(int err)
{
    const char *d = strerrordesc_np(err);
    return d != NULL ? d : "unknown error";
}

/* In the child (sharing the helper's memory until execve, the helper
 * suspended: only stack variables are written): become the job. Never
 * returns. */
static void child_run(struct helper *h,
                      const struct exec__msg *m,
                      const char *cwd,
                      int outw,
                      int errw,
                      int stw)
{
    static const int res[3] = {RLIMIT_NOFILE, RLIMIT_AS, RLIMIT_CPU};
    sigset_t none;
    int err;
    int devnull;

    setpgid(0, 0);
    for (int s = 1; s < NSIG; s++) {
        signal(s, SIG_DFL); /* fails harmlessly for KILL, STOP, RT32/33 */
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != h->self) {
        _exit(127); /* the helper died before prctl took effect */
    }
    devnull = open("/dev/null", O_RDONLY);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(outw, 1) < 0 ||
        dup2(errw, 2) < 0) {
        err = errno;
        goto fail;
    }
    if (cwd[0] != '\0' && chdir(cwd) != 0) {
        err = errno;
        dprintf(2, "kiln: cannot enter work directory '%s': %s\n", cwd,
                errdesc(err));
        goto report;
    }
    setrlimit(RLIMIT_NOFILE, &h->nofile);
    for (int i = 0; i < 3; i++) {
        if (m->limits[i] != 0) {
            struct rlimit rl = {(rlim_t)m->limits[i], (rlim_t)m->limits[i]};
            if (setrlimit(res[i], &rl) != 0) {
                err = errno;
                dprintf(2, "kiln: cannot set rlimit %d: %s\n", res[i],
                        errdesc(err));
                goto report;
            }
        }
    }
    /* Every inherited descriptor above stderr closes at exec; the status
     * pipe stays usable until then. */
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        for (int fd = 3; fd < 65536; fd++) {
            fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
    }
    err = exec_search(m->argv, m->env);
fail:
    dprintf(2, "kiln: cannot execute '%s': %s\n", m->argv[0], errdesc(err));
report:
    if (write(stw, &err, sizeof err) < 0) {
        /* nothing left to tell */
    }
    _exit(127);
}

struct child_args
{
    struct helper *h;
    const struct exec__msg *m;
    const char *cwd;
    int outw;
    int errw;
    int stw;
};

static int child_entry_cb(void *arg)
{
    struct child_args *a = arg;
    child_run(a->h, a->m, a->cwd, a->outw, a->errw, a->stw);
    return 127; /* not reached */
}

/* Start the child like posix_spawn does: clone(CLONE_VM | CLONE_VFORK)
 * on a separate stack, so no page tables are copied and no copy-on-write
 * faults follow (fork of the helper cost more CPU than the job: measured
 * 29-34% of the bare spawn rate with fork against 40-53% with this). The
 * helper is suspended until the child execs: a child stuck before exec
 * (a hung NFS or FUSE PATH entry) would stop it from enforcing the fence,
 * so the agent kills the job groups itself if they outlive the fence
 * deadline (exec_fence_backstop, docs/exec.md). Every
 * signal is blocked around it: the child resets all dispositions (its
 * handler table is its own copy) before it unblocks. Falls back to fork
 * if the stack cannot be mapped. Returns the pid or -1 (errno set). */
static pid_t spawn_child(struct helper *h,
                         const struct exec__msg *m,
                         const char *cwd,
                         int outw,
                         int errw,
                         int stw)
{
    struct child_args a = {h, m, cwd, outw, errw, stw};
    sigset_t all;
    sigset_t old;
    pid_t pid;
    int err;

#if defined(__SANITIZE_ADDRESS__)
    /* AddressSanitizer does not know the clone stack (it warns into the
     * job's stderr on _exit): sanitizer builds fork. */
    h->child_stack = NULL;
#else
    if (h->child_stack == NULL) {
        void *st = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        h->child_stack = st == MAP_FAILED ? NULL : st;
    }
#endif
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    if (h->child_stack != NULL) {
        pid = clone(child_entry_cb, (char *)h->child_stack + CHILD_STACK_SIZE,
                    CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
    } else {
        pid = fork();
        if (pid == 0) {
            child_run(h, m, cwd, outw, errw, stw);
        }
    }
    err = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return pid;
}

/* A spawn that never ran: its reason goes to the job's stderr output, then
 * its exit report. */
static void refuse_spawn(struct helper *h,
                         const struct exec__msg *m,
                         enum exec_end end,
                         const char *fmt,
                         ...) __attribute__((format(printf, 4, 5)));

static void refuse_spawn(struct helper *h,
                         const struct exec__msg *m,
                         enum exec_end end,
                         const char *fmt,
                         ...)
{
    char text[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(text, sizeof text - 1, fmt, ap);
    va_end(ap);
    if (n < 0) {
        n = 0;
    }
    if ((size_t)n > sizeof text - 2) {
        n = (int)sizeof text - 2;
    }
    text[n++] = '\n';
    LOGW(HMOD, "job %s: %.*s", m->job_id, n - 1, text);
    send_output(h, m->job_id, m->epoch, 2, text, (size_t)n);
    send_exit(h, m->job_id, m->epoch, end, end == EXEC_SPAWN_FAILED ? 127 : -1,
              0);
}

/* Whether the directory at path exists and has no entries. */
static bool dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    bool empty = true;
    if (d == NULL) {
        return false;
    }
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            empty = false;
            break;
        }
    }
    closedir(d);
    return empty;
}

/* Create the work directory cwd of job_id: rename an empty one left by a
 * finished job if there is one, else mkdir -p. Returns 0 or -1 (errno). */
static int make_work_dir(struct helper *h, const char *job_id, const char *cwd)
{
    char old[PATH_MAX];
    /* Never hand this job's own directory (a retry) to anyone else. */
    for (unsigned i = 0; i < h->n_spare; i++) {
        if (strcmp(h->spare[i], job_id) == 0) {
            h->spare[i][0] = '\0';
        }
    }
    while (h->n_spare > 0) {
        const char *id = h->spare[--h->n_spare];
        int n;
        if (id[0] == '\0') {
            continue;
        }
        n = snprintf(old, sizeof old, "%s/%s", h->work_root, id);
        if (n <= 0 || (size_t)n >= sizeof old || !dir_is_empty(old)) {
            continue; /* gone or used again: not a spare any more */
        }
        if (rename(old, cwd) == 0) {
            return 0;
        }
        h->n_spare++; /* cwd exists and is not empty (a retry): keep it */
        break;
    }
    return fs_mkdir_p(cwd) == 0 ? 0 : -1;
}

static void handle_spawn(struct helper *h, const struct exec__msg *m)
{
    char cwd[PATH_MAX] = "";
    int outp[2] = {-1, -1};
    int errp[2] = {-1, -1};
    int stp[2] = {-1, -1};
    struct hjob *j;
    pid_t pid;
    int err;

    if (h->shutting_down) {
        refuse_spawn(h, m, EXEC_CANCELLED,
                     "kiln: executor shutting down; spawn refused");
        return;
    }
    if (h->fence_deadline != 0 && !h->fenced &&
        time_mono_ms() >= h->fence_deadline) {
        /* The deadline passed while we were busy reading requests. */
        fence_all(h, "deadline passed");
    }
    if (h->fenced) {
        refuse_spawn(h, m, EXEC_FENCED, "kiln: node is fenced; spawn refused");
        return;
    }
    if (find_job(h, m->job_id) != NULL) {
        LOGW(HMOD, "spawn of %s: already running; dropped", m->job_id);
        return;
    }
    if (h->work_root[0] != '\0') {
        int n = snprintf(cwd, sizeof cwd, "%s/%s", h->work_root, m->job_id);
        if (n < 0 || (size_t)n >= sizeof cwd ||
            make_work_dir(h, m->job_id, cwd) != 0) {
            refuse_spawn(h, m, EXEC_SPAWN_FAILED,
                         "kiln: cannot create work directory '%s': %s", cwd,
                         strerror(errno));
            return;
        }
    }
    if (h->n_jobs == h->cap_jobs) {
        unsigned cap = h->cap_jobs == 0 ? 16 : h->cap_jobs * 2;
        struct hjob **v = realloc(h->jobs, cap * sizeof *v);
        if (v == NULL) {
            refuse_spawn(h, m, EXEC_SPAWN_FAILED, "kiln: out of memory");
            return;
        }
        h->jobs = v;
        h->cap_jobs = cap;
    }
    j = calloc(1, sizeof *j);
    if (j == NULL) {
        refuse_spawn(h, m, EXEC_SPAWN_FAILED, "kiln: out of memory");
        return;
    }
    if (pipe2(outp, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0 ||
        pipe2(stp, O_CLOEXEC) != 0) {
        err = errno;
        goto fail;
    }
    pid = spawn_child(h, m, cwd, outp[1], errp[1], stp[1]);
    if (pid < 0) {
        err = errno;
        goto fail;
    }
    /* Also from the parent, so the group exists before we can signal it. */
    setpgid(pid, pid);
    close(outp[1]);
    close(errp[1]);
    close(stp[1]);
    str_copy(j->job_id, sizeof j->job_id, m->job_id);
    j->epoch = m->epoch;
    j->pid = pid;
    j->out[0].fd = outp[0];
    j->out[1].fd = errp[0];
    j->st_fd = stp[0];
    j->why = -1;
    for (int s = 0; s < 2; s++) {
        fcntl(j->out[s].fd, F_SETFL, O_NONBLOCK);
    }
    fcntl(j->st_fd, F_SETFL, O_NONBLOCK);
    if (m->timeout_ms > 0) {
        j->timeout_at = time_mono_ms() + m->timeout_ms;
    }
    h->jobs[h->n_jobs++] = j;
    LOGD(HMOD, "job %s started: pid %d", j->job_id, (int)pid);
    {
        struct exec__msg r;
        memset(&r, 0, sizeof r);
        r.type = EXEC__MSG_STARTED;
        str_copy(r.job_id, sizeof r.job_id, j->job_id);
        r.epoch = j->epoch;
        r.pid = (uint64_t)pid;
        send_msg(h, &r);
    }
    return;

fail:
    for (int i = 0; i < 2; i++) {
        close_fd(&outp[i]);
        close_fd(&errp[i]);
        close_fd(&stp[i]);
    }
    free(j);
    refuse_spawn(h, m, EXEC_SPAWN_FAILED, "kiln: cannot spawn '%s': %s",
                 m->argv[0], strerror(err));
}

static void start_shutdown(struct helper *h, const char *why)
{
    if (h->shutting_down) {
        return;
    }
    LOGD(HMOD, "shutting down (%s): %u job(s) to stop", why, h->n_jobs);
    h->shutting_down = true;
    for (unsigned i = 0; i < h->n_jobs; i++) {
        terminate_job(h, h->jobs[i], EXEC_CANCELLED);
    }
}

/* FENCE{seq, ms, at}: the new deadline is at + ms on CLOCK_MONOTONIC
 * (same machine, same clock as the agent's), not arrival + ms, so a frame
 * that was delayed (queued behind a big SPAWN, or written by an agent that
 * was frozen after computing it) never extends the fence beyond what the
 * agent intended. A deadline already due fires first: it is the contract,
 * even if this frame was only read late. */
static void handle_fence(struct helper *h, const struct exec__msg *m)
{
    uint64_t now = time_mono_ms();
    if (h->fence_deadline != 0 && !h->fenced && now >= h->fence_deadline) {
        fence_all(h, "deadline passed");
    }
    h->fence_seq = m->seq;
    h->fenced = false;
    if (m->ms == 0) {
        h->fence_deadline = 0;
        return;
    }
    h->fence_deadline = (m->at != 0 && m->at <= now ? m->at : now) + m->ms;
    if (now >= h->fence_deadline) {
        fence_all(h, "extension arrived after its deadline");
    }
}

static void handle_frame(struct helper *h, const uint8_t *frame, size_t len)
{
    char errmsg[ERRMSG_SIZE];
    struct exec__msg m;
    struct hjob *j;
    int rv;

    rv = exec__msg_decode(frame, len, &m, errmsg);
    if (rv != 0) {
        LOGW(HMOD, "dropped frame from agent: %s", errmsg);
        return;
    }
    switch (m.type) {
        case EXEC__MSG_SPAWN:
            handle_spawn(h, &m);
            break;
        case EXEC__MSG_KILL:
            j = find_job(h, m.job_id);
            if (j != NULL) {
                terminate_job(
                    h, j,
                    m.why == EXEC_TIMEOUT ? EXEC_TIMEOUT : EXEC_CANCELLED);
            }
            break;
        case EXEC__MSG_FENCE:
            handle_fence(h, &m);
            break;
        case EXEC__MSG_FENCE_NOW:
            h->fence_seq = m.seq;
            fence_all(h, "requested");
            break;
        case EXEC__MSG_SHUTDOWN:
            start_shutdown(h, "requested");
            break;
        default:
            LOGW(HMOD, "dropped frame of type %u from agent", m.type);
            break;
    }
    exec__msg_free(&m);
}

static void read_agent(struct helper *h)
{
    for (int round = 0; round < 16 && !h->agent_gone; round++) {
        ssize_t n = read(h->fd, h->scratch, sizeof h->scratch);
        const uint8_t *frame;
        size_t len;
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                return;
            }
        }
        if (n <= 0) {
            LOGD(HMOD, "agent gone (%s)", n == 0 ? "EOF" : strerror(errno));
            h->agent_gone = true;
            return;
        }
        if (exec__rx_feed(&h->rx, h->scratch, (size_t)n) != 0) {
            LOGE(HMOD, "out of memory reading from agent");
            h->agent_gone = true;
            return;
        }
        for (;;) {
            int rv = exec__rx_next(&h->rx, &frame, &len);
            if (rv != 0) {
                LOGW(HMOD, "dropped frame from agent: %s", err_str(rv));
                continue;
            }
            if (len == 0) {
                break;
            }
            handle_frame(h, frame, len);
        }
    }
}

static void kill_all(struct helper *h)
{
    for (unsigned i = 0; i < h->n_jobs; i++) {
        signal_job(h->jobs[i], EXEC_LOST, SIGKILL);
    }
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Timers: fence, timeouts, grace periods, EOF waits, output batches.
 * Returns the next time something is due (UINT64_MAX if nothing). */
static uint64_t run_timers(struct helper *h)
{
    uint64_t now = time_mono_ms();
    uint64_t wake = UINT64_MAX;

    if (h->fence_deadline != 0 && !h->fenced) {
        if (now >= h->fence_deadline) {
            fence_all(h, "deadline passed");
        } else {
            wake = h->fence_deadline;
        }
    }
    for (unsigned i = 0; i < h->n_jobs; i++) {
        struct hjob *j = h->jobs[i];
        if (j->timeout_at != 0) {
            if (now >= j->timeout_at) {
                LOGD(HMOD, "job %s timed out", j->job_id);
                terminate_job(h, j, EXEC_TIMEOUT);
            } else {
                wake = min_u64(wake, j->timeout_at);
            }
        }
        if (j->kill_at != 0 && !j->reaped) {
            if (now >= j->kill_at) {
                kill(-j->pid, SIGKILL);
                j->kill_at = 0;
            } else {
                wake = min_u64(wake, j->kill_at);
            }
        }
        if (j->reaped &&
            (j->out[0].fd >= 0 || j->out[1].fd >= 0 || j->st_fd >= 0)) {
            if (now >= j->eof_deadline) {
                LOGW(HMOD,
                     "job %s: output still open after exit "
                     "(escaped process?); closing",
                     j->job_id);
                j->escaped = true;
                close_fd(&j->out[0].fd);
                close_fd(&j->out[1].fd);
                close_fd(&j->st_fd);
            } else {
                wake = min_u64(wake, j->eof_deadline);
            }
        }
        for (int s = 0; s < 2; s++) {
            struct hstream *st = &j->out[s];
            if (st->buf.len == 0 || !may_flush(h)) {
                continue;
            }
            if (now >= st->first_ms + EXEC__BATCH_MS) {
                flush_stream(h, j, s, false);
            }
            if (st->buf.len > 0) {
                wake = min_u64(wake, st->first_ms + EXEC__BATCH_MS);
            }
        }
    }
    return wake;
}

struct pref
{
    struct hjob *j; /* NULL for the agent socket */
    int which;      /* 0 stdout, 1 stderr, 2 status */
};

static int helper_run(struct helper *h, const sigset_t *waitmask)
{
    struct pollfd *pfds = NULL;
    struct pref *refs = NULL;
    size_t pcap = 0;
    uint64_t shutdown_deadline = 0;
    int rv = 0;

    for (;;) {
        uint64_t wake;
        uint64_t now;
        struct timespec ts;
        bool reading;
        size_t n = 0;
        int rc;

        if (got_chld) {
            got_chld = 0;
            reap_children(h);
        }
        if (got_term) {
            got_term = 0;
            start_shutdown(h, "signal");
        }
        if (h->agent_gone) {
            /* The agent died (or closed us): nobody may keep running. */
            LOGD(HMOD, "agent gone: killing %u job group(s)", h->n_jobs);
            kill_all(h);
            break;
        }
        wake = run_timers(h);
        for (unsigned i = 0; i < h->n_jobs;) {
            if (!maybe_finish(h, i)) {
                i++;
            }
        }
        flush_outq(h);
        if (h->agent_gone) {
            continue;
        }
        now = time_mono_ms();
        if (h->shutting_down) {
            if (h->n_jobs == 0 && outq_pending(h) == 0) {
                break;
            }
            if (shutdown_deadline == 0) {
                shutdown_deadline = now + h->grace_ms + 5000;
            }
            if (now >= shutdown_deadline) {
                LOGW(HMOD, "shutdown: agent not draining; exiting");
                kill_all(h);
                break;
            }
            wake = min_u64(wake, shutdown_deadline);
        }

        if (pcap < 1 + 3 * (size_t)h->n_jobs) {
            size_t cap = 1 + 3 * (size_t)h->cap_jobs + 16;
            struct pollfd *np = realloc(pfds, cap * sizeof *np);
            struct pref *nr;
            if (np == NULL) {
                rv = ERR_NOMEM;
                kill_all(h);
                break;
            }
            pfds = np;
            nr = realloc(refs, cap * sizeof *nr);
            if (nr == NULL) {
                rv = ERR_NOMEM;
                kill_all(h);
                break;
            }
            refs = nr;
            pcap = cap;
        }
        pfds[n].fd = h->fd;
        pfds[n].events = POLLIN | (outq_pending(h) > 0 ? POLLOUT : 0);
        refs[n].j = NULL;
        n++;
        reading = outq_pending(h) < EXEC__OUTQ_SOFT;
        for (unsigned i = 0; i < h->n_jobs; i++) {
            struct hjob *j = h->jobs[i];
            for (int s = 0; s < 2; s++) {
                if (reading && j->out[s].fd >= 0 &&
                    j->out[s].buf.len < EXEC__BATCH_MAX) {
                    pfds[n].fd = j->out[s].fd;
                    pfds[n].events = POLLIN;
                    refs[n].j = j;
                    refs[n].which = s;
                    n++;
                }
            }
            if (j->st_fd >= 0) {
                pfds[n].fd = j->st_fd;
                pfds[n].events = POLLIN;
                refs[n].j = j;
                refs[n].which = 2;
                n++;
            }
        }
        if (wake != UINT64_MAX) {
            uint64_t d = wake > now ? wake - now : 0;
            ts.tv_sec = (time_t)(d / 1000);
            ts.tv_nsec = (long)(d % 1000) * 1000000L;
        }
        rc = ppoll(pfds, (nfds_t)n, wake == UINT64_MAX ? NULL : &ts, waitmask);
        if (rc < 0) {
            if (errno == EINTR) {
                continue;
            }
            LOGE(HMOD, "ppoll: %s", strerror(errno));
            rv = ERR_IO;
            kill_all(h);
            break;
        }
        for (size_t i = 0; i < n && rc > 0; i++) {
            short re = pfds[i].revents;
            if (re == 0) {
                continue;
            }
            if (refs[i].j == NULL) {
                if (re & (POLLIN | POLLHUP | POLLERR)) {
                    read_agent(h);
                }
                if (re & POLLOUT) {
                    flush_outq(h);
                }
            } else if (refs[i].which == 2) {
                read_status(refs[i].j);
            } else {
                read_stream(h, refs[i].j, refs[i].which);
            }
        }
    }
    free(pfds);
    free(refs);
    return rv;
}

static const char helper_usage[] =
    "usage: kiln exec-helper --fd N [--work-root DIR] [--grace-ms N]\n"
    "                        [--fence disarmed|fenced|MS] "
    "[--log-level LEVEL]\n"
    "Internal: started by the agent (docs/exec.md).\n";

static int parse_args(struct helper *h, int argc, char **argv)
{
    uint64_t v;
    h->fd = -1;
    h->grace_ms = 5000;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (val == NULL) {
            return ERR_INVALID;
        }
        i++;
        if (strcmp(a, "--fd") == 0) {
            if (parse_u64(val, INT_MAX, &v) != 0 || v < 3) {
                return ERR_INVALID;
            }
            h->fd = (int)v;
        } else if (strcmp(a, "--work-root") == 0) {
            if (!str_copy(h->work_root, sizeof h->work_root, val)) {
                return ERR_INVALID;
            }
        } else if (strcmp(a, "--grace-ms") == 0) {
            if (parse_u64(val, UINT32_MAX, &v) != 0) {
                return ERR_INVALID;
            }
            h->grace_ms = (unsigned)v;
        } else if (strcmp(a, "--fence") == 0) {
            if (strcmp(val, "disarmed") == 0) {
                h->fence_deadline = 0;
            } else if (strcmp(val, "fenced") == 0) {
                h->fenced = true;
            } else if (parse_u64(val, UINT32_MAX, &v) == 0 && v > 0) {
                h->fence_deadline = time_mono_ms() + v;
            } else {
                return ERR_INVALID;
            }
        } else if (strcmp(a, "--fence-seq") == 0) {
            if (parse_u64(val, UINT64_MAX, &h->fence_seq) != 0) {
                return ERR_INVALID;
            }
        } else if (strcmp(a, "--log-level") == 0) {
            enum log_level lvl;
            if (log_parse_level(val, &lvl) != 0) {
                return ERR_INVALID;
            }
            log_set_level(lvl);
        } else {
            return ERR_INVALID;
        }
    }
    return h->fd >= 0 ? 0 : ERR_INVALID;
}

/* Close every descriptor the agent leaked into us except stdio and the
 * channel: the helper may outlive the agent (to kill jobs), and must not
 * keep the agent's listening sockets bound meanwhile, or a restarted agent
 * could not bind its ports. */
static void close_inherited_fds(int keep)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int self_fd;
    if (d == NULL) {
        for (int fd = 3; fd < 1024; fd++) {
            if (fd != keep) {
                close(fd);
            }
        }
        return;
    }
    self_fd = dirfd(d);
    while ((e = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end != '\0' || fd < 3 || fd == keep || fd == self_fd) {
            continue;
        }
        close((int)fd);
    }
    closedir(d);
}

int exec_helper_main(int argc, char **argv)
{
    struct sigaction sa;
    sigset_t block;
    sigset_t waitmask;
    struct rlimit rl;
    struct helper *h;
    int rv;

    h = calloc(1, sizeof *h);
    if (h == NULL) {
        fputs("kiln exec-helper: out of memory\n", stderr);
        return 1;
    }
    if (parse_args(h, argc, argv) != 0) {
        fputs(helper_usage, stderr);
        free(h);
        return 2;
    }
    h->self = getpid();
    /* Own process group: a terminal's Ctrl-C must not reach us before we
     * have killed the jobs (the agent normally starts us with setsid). */
    if (getpgrp() != h->self) {
        setpgid(0, 0);
    }
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0) {
            int nfd = open("/dev/null", O_RDWR);
            if (nfd >= 0 && nfd != fd) {
                dup2(nfd, fd);
                close(nfd);
            }
        }
    }
    close_inherited_fds(h->fd);
    if (fcntl(h->fd, F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(h->fd, F_SETFL, O_NONBLOCK) != 0) {
        fprintf(stderr, "kiln exec-helper: fd %d: %s\n", h->fd,
                strerror(errno));
        free(h);
        return 2;
    }
    getrlimit(RLIMIT_NOFILE, &h->nofile);
    rl = h->nofile;
    rl.rlim_cur = rl.rlim_max; /* three descriptors per running job */
    setrlimit(RLIMIT_NOFILE, &rl);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal_cb;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&block);
    sigaddset(&block, SIGCHLD);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGCHLD);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGHUP);

    LOGD(HMOD, "pid %d up: fd %d, work root '%s', grace %u ms, %s",
         (int)h->self, h->fd, h->work_root, h->grace_ms,
         h->fenced           ? "fenced"
         : h->fence_deadline ? "armed"
                             : "disarmed");
    rv = helper_run(h, &waitmask);

    for (unsigned i = 0; i < h->n_jobs; i++) {
        free_job(h->jobs[i]);
    }
    free(h->jobs);
    exec__rx_free(&h->rx);
    exec__buf_free(&h->outq);
    close(h->fd);
    free(h);
    return rv == 0 ? 0 : 1;
}
