/* Agent side of the execution layer: starts and restarts the helper
 * process, sends it requests over a socketpair and turns its reports into
 * callbacks (docs/exec.md). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "exec/exec_int.h"
#include "log.h"
#include "util.h"

#define XMOD "exec"
#define EOF_WAIT_MS 2000    /* helper exited: wait for its pipe EOF */
#define RESTART_MIN_MS 100  /* first restart delay */
#define RESTART_MAX_MS 5000 /* restart backoff cap */
#define CLOSE_EXTRA_MS 5000 /* close watchdog beyond the grace */
#define READ_CHUNK (64u * 1024u)

struct exec_job
{
    char job_id[EXEC_JOB_ID_SIZE];
    uint64_t epoch;
    pid_t pgid; /* from STARTED; 0 until then */
};

struct wreq
{
    uv_write_t req;
    struct exec__buf buf; /* owned; freed in write_cb */
};

static void helper_gone(struct exec *x);
static int helper_spawn(struct exec *x, char *errmsg);
static void timer_cb(uv_timer_t *t);

const char *exec_end_str(enum exec_end end)
{
    switch (end) {
        case EXEC_EXITED:
            return "exited";
        case EXEC_SIGNALED:
            return "signaled";
        case EXEC_TIMEOUT:
            return "timeout";
        case EXEC_CANCELLED:
            return "cancelled";
        case EXEC_FENCED:
            return "fenced";
        case EXEC_SPAWN_FAILED:
            return "spawn-failed";
        case EXEC_LOST:
            return "lost";
    }
    return "unknown";
}

void exec_config_defaults(struct exec_config *c)
{
    memset(c, 0, sizeof *c);
    str_copy(c->helper_path, sizeof c->helper_path, "/proc/self/exe");
    c->grace_ms = 5000;
    c->fence_armed_at_start = 0;
}

/* ---- job table ---- */

static struct exec_job *find_job(struct exec *x, const char *job_id)
{
    for (unsigned i = 0; i < x->n_jobs; i++) {
        if (strcmp(x->jobs[i].job_id, job_id) == 0) {
            return &x->jobs[i];
        }
    }
    return NULL;
}

static void remove_job(struct exec *x, struct exec_job *j)
{
    *j = x->jobs[--x->n_jobs];
}

/* ---- sending ---- */

static void write_cb(uv_write_t *req, int status)
{
    struct wreq *w = req->data;
    UNUSED(status); /* a dead helper is noticed through EOF / exit */
    exec__buf_free(&w->buf);
    free(w);
}

static int send_msg(struct exec *x, const struct exec__msg *m)
{
    struct wreq *w;
    uv_buf_t b;
    int rv;

    if (x->state != EXEC__S_RUNNING && x->state != EXEC__S_CLOSING) {
        return ERR_UNAVAILABLE;
    }
    if (x->pipe_eof || x->open == 0) {
        return ERR_UNAVAILABLE;
    }
    w = calloc(1, sizeof *w);
    if (w == NULL) {
        return ERR_NOMEM;
    }
    rv = exec__msg_encode(m, &w->buf);
    if (rv != 0) {
        free(w);
        return rv;
    }
    w->req.data = w;
    b = uv_buf_init((char *)w->buf.data, (unsigned)w->buf.len);
    rv = uv_write(&w->req, (uv_stream_t *)&x->pipe, &b, 1, write_cb);
    if (rv != 0) {
        LOGW(XMOD, "write to helper: %s", uv_strerror(rv));
        exec__buf_free(&w->buf);
        free(w);
        return ERR_UNAVAILABLE;
    }
    return 0;
}

/* ---- receiving ---- */

static void dispatch(struct exec *x, const uint8_t *frame, size_t len)
{
    char errmsg[ERRMSG_SIZE];
    struct exec__msg m;
    struct exec_job *j;
    struct exec_result res;
    int rv;

    rv = exec__msg_decode(frame, len, &m, errmsg);
    if (rv != 0) {
        LOGW(XMOD, "dropped frame from helper: %s", errmsg);
        return;
    }
    switch (m.type) {
        case EXEC__MSG_STARTED:
            j = find_job(x, m.job_id);
            if (j != NULL && j->epoch == m.epoch) {
                j->pgid = (pid_t)m.pid;
            }
            break;
        case EXEC__MSG_OUTPUT:
            j = find_job(x, m.job_id);
            if (j == NULL || j->epoch != m.epoch) {
                LOGD(XMOD, "output of unknown job %s dropped", m.job_id);
                break;
            }
            x->on_output(x, m.job_id, m.epoch, m.stream, m.data, m.len, x->ud);
            break;
        case EXEC__MSG_EXIT:
            j = find_job(x, m.job_id);
            if (j == NULL || j->epoch != m.epoch) {
                LOGW(XMOD, "exit of unknown job %s dropped", m.job_id);
                break;
            }
            remove_job(x, j);
            res.end = (enum exec_end)m.end;
            res.exit_code = m.exit_code;
            res.signal = m.signal;
            x->on_exit(x, m.job_id, m.epoch, &res, x->ud);
            break;
        case EXEC__MSG_FENCED:
            if (m.seq == x->fence_seq && !x->fenced) {
                LOGW(XMOD, "helper fenced the node: %llu job(s) killed",
                     (unsigned long long)m.killed);
                x->fenced = true;
                x->fence_deadline = 0;
            }
            break;
        default:
            LOGW(XMOD, "dropped frame of type %u from helper", m.type);
            break;
    }
    exec__msg_free(&m);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    UNUSED(h);
    UNUSED(suggested);
    buf->base = malloc(READ_CHUNK);
    buf->len = buf->base == NULL ? 0 : READ_CHUNK;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct exec *x = s->data;
    const uint8_t *frame;
    size_t len;
    int rv;

    if (nread > 0) {
        rv = exec__rx_feed(&x->rx, buf->base, (size_t)nread);
        free(buf->base);
        if (rv != 0) {
            LOGE(XMOD, "out of memory reading from helper");
            return;
        }
        /* Callbacks may close us; stop once the pipe is no longer ours. */
        while (!x->pipe_eof && x->open > 0) {
            rv = exec__rx_next(&x->rx, &frame, &len);
            if (rv != 0) {
                LOGW(XMOD, "dropped frame from helper: %s", err_str(rv));
                continue;
            }
            if (len == 0) {
                break;
            }
            dispatch(x, frame, len);
        }
        return;
    }
    free(buf->base);
    if (nread == 0) {
        return;
    }
    if (nread != UV_EOF) {
        LOGW(XMOD, "read from helper: %s", uv_strerror((int)nread));
    }
    uv_read_stop(s);
    x->pipe_eof = true;
    if (x->proc_exited) {
        helper_gone(x);
    } else {
        /* The helper closed its end: it is exiting. Make sure it does. */
        uv_timer_start(&x->timer, timer_cb, EOF_WAIT_MS, 0);
    }
}

/* ---- helper lifecycle ---- */

static void kill_known_groups(struct exec *x)
{
    for (unsigned i = 0; i < x->n_jobs; i++) {
        if (x->jobs[i].pgid > 0) {
            kill(-x->jobs[i].pgid, SIGKILL);
        }
    }
}

static void timer_closed_cb(uv_handle_t *h)
{
    struct exec *x = h->data;
    exec__rx_free(&x->rx);
    free(x->jobs);
    x->jobs = NULL;
    x->n_jobs = 0;
    x->cap_jobs = 0;
    x->state = EXEC__S_CLOSED;
    if (x->close_cb != NULL) {
        x->close_cb(x);
    }
}

static void finish_close(struct exec *x)
{
    uv_timer_stop(&x->timer);
    uv_close((uv_handle_t *)&x->timer, timer_closed_cb);
}

static void helper_handle_closed_cb(uv_handle_t *h)
{
    struct exec *x = h->data;
    x->open--;
    if (x->open > 0) {
        return;
    }
    if (x->state == EXEC__S_CLOSING) {
        finish_close(x);
    } else if (x->state == EXEC__S_RESTARTING) {
        uv_timer_start(&x->timer, timer_cb, x->backoff_ms, 0);
    }
}

/* The helper process exited and its pipe is drained (or given up on):
 * kill what it left, report its jobs as lost, close its handles. */
static void helper_gone(struct exec *x)
{
    if (x->open == 0 || uv_is_closing((uv_handle_t *)&x->pipe)) {
        return;
    }
    uv_timer_stop(&x->timer);
    if (x->state == EXEC__S_RUNNING) {
        x->state = EXEC__S_RESTARTING;
    }
    kill_known_groups(x);
    x->helper_pid = 0;
    x->rx.len = 0;
    x->rx.pos = 0;
    x->rx.skip = 0;
    uv_close((uv_handle_t *)&x->pipe, helper_handle_closed_cb);
    uv_close((uv_handle_t *)&x->proc, helper_handle_closed_cb);
    while (x->n_jobs > 0) {
        struct exec_job j = x->jobs[x->n_jobs - 1];
        struct exec_result res = {EXEC_LOST, -1, SIGKILL};
        x->n_jobs--;
        x->on_exit(x, j.job_id, j.epoch, &res, x->ud);
    }
}

static void helper_exit_cb(uv_process_t *p, int64_t status, int sig)
{
    struct exec *x = p->data;
    x->proc_exited = true;
    if (x->state == EXEC__S_RUNNING) {
        LOGW(XMOD,
             "helper pid %d died (status %lld, signal %d); %u job(s) "
             "lost; restarting",
             (int)x->helper_pid, (long long)status, sig, x->n_jobs);
    } else {
        LOGD(XMOD, "helper exited (status %lld, signal %d)", (long long)status,
             sig);
    }
    if (x->pipe_eof) {
        helper_gone(x);
    } else {
        uv_timer_start(&x->timer, timer_cb, EOF_WAIT_MS, 0);
    }
}

static void timer_cb(uv_timer_t *t)
{
    struct exec *x = t->data;
    char errmsg[ERRMSG_SIZE];

    if (x->open > 0) {
        if (x->proc_exited) {
            /* Exited but its pipe never reached EOF: stop waiting. */
            uv_read_stop((uv_stream_t *)&x->pipe);
            x->pipe_eof = true;
            helper_gone(x);
        } else {
            /* EOF without exit, or close watchdog: force it. */
            LOGW(XMOD, "helper pid %d not exiting; killing it",
                 (int)x->helper_pid);
            kill_known_groups(x);
            uv_process_kill(&x->proc, SIGKILL);
            uv_timer_start(&x->timer, timer_cb, EOF_WAIT_MS, 0);
        }
        return;
    }
    if (x->state != EXEC__S_RESTARTING) {
        return;
    }
    if (helper_spawn(x, errmsg) != 0) {
        /* Its handles are closing; helper_handle_closed_cb re-arms us. */
        x->backoff_ms = x->backoff_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS
                                                           : x->backoff_ms * 2;
        LOGE(XMOD, "%s; retrying in %u ms", errmsg, x->backoff_ms);
        return;
    }
    x->restarts++;
    LOGI(XMOD, "helper restarted: pid %d", (int)x->helper_pid);
}

static const char *level_name(enum log_level l)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    return l <= LOG_OFF ? names[l] : "info";
}

static int helper_spawn(struct exec *x, char *errmsg)
{
    uv_process_options_t opts;
    uv_stdio_container_t stdio[4];
    char grace[24];
    char fence[24];
    char seq[24];
    char *args[16];
    int n = 0;
    int rv;

    if (x->fenced) {
        str_copy(fence, sizeof fence, "fenced");
    } else if (x->fence_deadline != 0) {
        uint64_t now = time_mono_ms();
        if (now >= x->fence_deadline) {
            x->fenced = true;
            x->fence_deadline = 0;
            str_copy(fence, sizeof fence, "fenced");
        } else {
            snprintf(fence, sizeof fence, "%llu",
                     (unsigned long long)(x->fence_deadline - now));
        }
    } else {
        str_copy(fence, sizeof fence, "disarmed");
    }
    snprintf(grace, sizeof grace, "%u", x->cfg.grace_ms);
    snprintf(seq, sizeof seq, "%llu", (unsigned long long)x->fence_seq);
    args[n++] = x->cfg.helper_path;
    args[n++] = (char *)"exec-helper";
    args[n++] = (char *)"--fd";
    args[n++] = (char *)"3";
    args[n++] = (char *)"--grace-ms";
    args[n++] = grace;
    args[n++] = (char *)"--fence";
    args[n++] = fence;
    args[n++] = (char *)"--fence-seq";
    args[n++] = seq;
    args[n++] = (char *)"--log-level";
    args[n++] = (char *)level_name(log_get_level());
    if (x->cfg.work_root[0] != '\0') {
        args[n++] = (char *)"--work-root";
        args[n++] = x->cfg.work_root;
    }
    args[n] = NULL;

    rv = uv_pipe_init(x->loop, &x->pipe, 0);
    if (rv != 0) {
        errmsg_printf(errmsg, "exec: pipe: %s", uv_strerror(rv));
        return ERR_IO;
    }
    x->pipe.data = x;
    memset(stdio, 0, sizeof stdio);
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_IGNORE;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    stdio[3].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
    stdio[3].data.stream = (uv_stream_t *)&x->pipe;
    memset(&opts, 0, sizeof opts);
    opts.file = x->cfg.helper_path;
    opts.args = args;
    opts.exit_cb = helper_exit_cb;
    opts.flags = UV_PROCESS_DETACHED; /* setsid: own group, no Ctrl-C */
    opts.stdio = stdio;
    opts.stdio_count = 4;
    x->proc.data = x;
    x->proc_exited = false;
    x->pipe_eof = false;
    x->open = 2;
    rv = uv_spawn(x->loop, &x->proc, &opts);
    if (rv != 0) {
        errmsg_printf(errmsg, "exec: spawn helper '%s': %s", x->cfg.helper_path,
                      uv_strerror(rv));
        /* Both handles are initialised and must be closed; their close
         * callbacks drive the restart (or finish a close). */
        x->pipe_eof = true;
        x->proc_exited = true;
        uv_close((uv_handle_t *)&x->pipe, helper_handle_closed_cb);
        uv_close((uv_handle_t *)&x->proc, helper_handle_closed_cb);
        return ERR_IO;
    }
    rv = uv_read_start((uv_stream_t *)&x->pipe, alloc_cb, read_cb);
    if (rv != 0) {
        /* Unexpected; treat as a dead helper so it gets restarted. */
        LOGE(XMOD, "read from helper: %s", uv_strerror(rv));
        uv_process_kill(&x->proc, SIGKILL);
        x->pipe_eof = true;
    }
    x->helper_pid = x->proc.pid;
    x->state = EXEC__S_RUNNING;
    x->backoff_ms = RESTART_MIN_MS;
    return 0;
}

/* ---- public API ---- */

unsigned exec_fence_backstop(struct exec *x)
{
    uint64_t now = time_mono_ms();
    if (x->n_jobs == 0) {
        return 0;
    }
    if (now >= x->backstop_logged_ms + 1000) {
        x->backstop_logged_ms = now;
        LOGW(XMOD,
             "fence: %u job(s) still running past the fence deadline; "
             "killing their process groups from the agent (helper stalled?)",
             x->n_jobs);
    }
    kill_known_groups(x);
    return x->n_jobs;
}

bool exec_ready(const struct exec *x)
{
    return x->state == EXEC__S_RUNNING && !x->pipe_eof && x->helper_pid != 0;
}

int exec_init(struct exec *x,
              uv_loop_t *loop,
              const struct exec_config *cfg,
              exec_output_cb on_output,
              exec_exit_cb on_exit,
              void *ud,
              char *errmsg)
{
    int rv;
    memset(x, 0, sizeof *x);
    if (loop == NULL || cfg == NULL || on_output == NULL || on_exit == NULL) {
        errmsg_printf(errmsg, "exec: missing loop, config or callback");
        return ERR_INVALID;
    }
    if (cfg->helper_path[0] == '\0' ||
        memchr(cfg->helper_path, '\0', sizeof cfg->helper_path) == NULL ||
        memchr(cfg->work_root, '\0', sizeof cfg->work_root) == NULL) {
        errmsg_printf(errmsg, "exec: bad helper path or work root");
        return ERR_INVALID;
    }
    if (cfg->work_root[0] != '\0' && cfg->work_root[0] != '/') {
        errmsg_printf(errmsg, "exec: work root must be absolute: %s",
                      cfg->work_root);
        return ERR_INVALID;
    }
    x->loop = loop;
    x->cfg = *cfg;
    x->on_output = on_output;
    x->on_exit = on_exit;
    x->ud = ud;
    x->fenced = cfg->fence_armed_at_start != 0;
    x->backoff_ms = RESTART_MIN_MS;
    x->state = EXEC__S_INIT;
    rv = uv_timer_init(loop, &x->timer);
    if (rv != 0) {
        errmsg_printf(errmsg, "exec: timer: %s", uv_strerror(rv));
        return ERR_IO;
    }
    x->timer.data = x;
    return 0;
}

int exec_start(struct exec *x, char *errmsg)
{
    int rv;
    if (x->state != EXEC__S_INIT || x->open > 0) {
        errmsg_printf(errmsg, "exec: already started");
        return ERR_INVALID;
    }
    rv = helper_spawn(x, errmsg);
    if (rv != 0) {
        /* The failed handles are closing; we stay in INIT (no restart). */
        x->state = EXEC__S_INIT;
        return rv;
    }
    return 0;
}

bool exec_is_fenced(const struct exec *x)
{
    return x->fenced ||
           (x->fence_deadline != 0 && time_mono_ms() >= x->fence_deadline);
}

int exec_spawn(struct exec *x, const struct exec_spec *spec)
{
    struct exec__msg m;
    int rv;

    if (x->state == EXEC__S_CLOSING || x->state == EXEC__S_CLOSED) {
        return ERR_SHUTDOWN;
    }
    if (x->state != EXEC__S_RUNNING || x->pipe_eof) {
        return ERR_UNAVAILABLE;
    }
    if (spec == NULL ||
        memchr(spec->job_id, '\0', sizeof spec->job_id) == NULL ||
        !exec__job_id_valid(spec->job_id) || spec->argv == NULL ||
        spec->argv[0] == NULL || spec->argv[0][0] == '\0') {
        return ERR_INVALID;
    }
    if (exec_is_fenced(x)) {
        return ERR_BUSY;
    }
    if (find_job(x, spec->job_id) != NULL) {
        return ERR_CONFLICT;
    }
    if (x->n_jobs == x->cap_jobs) {
        unsigned cap = x->cap_jobs == 0 ? 16 : x->cap_jobs * 2;
        struct exec_job *v = realloc(x->jobs, cap * sizeof *v);
        if (v == NULL) {
            return ERR_NOMEM;
        }
        x->jobs = v;
        x->cap_jobs = cap;
    }
    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_SPAWN;
    str_copy(m.job_id, sizeof m.job_id, spec->job_id);
    m.epoch = spec->epoch;
    m.timeout_ms = (uint64_t)spec->timeout_s * 1000;
    m.argv = spec->argv;
    m.env = spec->env;
    m.limits[0] = spec->rlimit_nofile;
    m.limits[1] = spec->rlimit_as_bytes;
    m.limits[2] = spec->rlimit_cpu_s;
    rv = send_msg(x, &m);
    if (rv != 0) {
        return rv;
    }
    str_copy(x->jobs[x->n_jobs].job_id, EXEC_JOB_ID_SIZE, spec->job_id);
    x->jobs[x->n_jobs].epoch = spec->epoch;
    x->jobs[x->n_jobs].pgid = 0;
    x->n_jobs++;
    return 0;
}

int exec_kill(struct exec *x, const char *job_id, enum exec_end why)
{
    struct exec__msg m;
    if (job_id == NULL || (why != EXEC_CANCELLED && why != EXEC_TIMEOUT)) {
        return ERR_INVALID;
    }
    if (find_job(x, job_id) == NULL) {
        return ERR_NOTFOUND;
    }
    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_KILL;
    str_copy(m.job_id, sizeof m.job_id, job_id);
    m.why = (uint8_t)why;
    return send_msg(x, &m);
}

void exec_fence_extend(struct exec *x, unsigned ms_from_now)
{
    struct exec__msg m;
    uint64_t now = time_mono_ms();
    x->fence_seq++;
    x->fenced = false;
    x->fence_deadline = ms_from_now == 0 ? 0 : now + ms_from_now;
    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_FENCE;
    m.seq = x->fence_seq;
    m.ms = ms_from_now;
    /* The helper counts from `at`, not from the frame's arrival: a frame
     * that waited in the write queue (or in a frozen agent) must not move
     * the deadline past the one computed here. */
    m.at = now;
    send_msg(x, &m); /* if the helper is down, its restart carries it */
}

void exec_fence_now(struct exec *x)
{
    struct exec__msg m;
    x->fence_seq++;
    x->fenced = true;
    x->fence_deadline = 0;
    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_FENCE_NOW;
    m.seq = x->fence_seq;
    if (send_msg(x, &m) != 0) {
        /* No helper to ask: kill what we know ourselves. */
        kill_known_groups(x);
    }
}

unsigned exec_running(const struct exec *x)
{
    return x->n_jobs;
}

void exec_close(struct exec *x, exec_close_cb cb)
{
    int prev = x->state;
    struct exec__msg m;

    if (prev == EXEC__S_CLOSING || prev == EXEC__S_CLOSED) {
        return;
    }
    x->close_cb = cb;
    x->state = EXEC__S_CLOSING;
    uv_timer_stop(&x->timer);
    if (x->open == 0) {
        finish_close(x);
        return;
    }
    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_SHUTDOWN;
    send_msg(x, &m);
    if (!x->proc_exited || !x->pipe_eof) {
        uv_timer_start(&x->timer, timer_cb,
                       (uint64_t)x->cfg.grace_ms + CLOSE_EXTRA_MS, 0);
    }
}
