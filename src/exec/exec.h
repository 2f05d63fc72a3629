/* Execution layer: runs jobs through one per-node executor/fence helper
 * process and reports their output and exit (docs/exec.md). */
#ifndef KILN_EXEC_H_
#define KILN_EXEC_H_

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "err.h"

#define EXEC_JOB_ID_SIZE 40 /* job ids are 1..39 bytes */

struct exec_config
{
    char helper_path[PATH_MAX]; /* binary run as "<path> exec-helper ...";
                                   default /proc/self/exe */
    char work_root[PATH_MAX];   /* per-job cwd is <work_root>/<job_id>,
                                   created by the helper; "" = no chdir */
    unsigned grace_ms;          /* SIGTERM -> SIGKILL grace, default 5000 */
    int fence_armed_at_start;   /* 1: the helper starts fenced and refuses
                                   spawns until exec_fence_extend; 0: starts
                                   disarmed (no fencing), default 0 */
};

/* Fill c with the defaults above. */
void exec_config_defaults(struct exec_config *c);

struct exec_spec
{
    char job_id[EXEC_JOB_ID_SIZE]; /* [A-Za-z0-9._:@+-], not starting
                                      with '.', unique among running jobs */
    uint64_t epoch;                /* echoed back in callbacks */
    char **argv;        /* borrowed; NULL-terminated, argv[0] searched in the
                           PATH of env (or /usr/local/bin:/usr/bin:/bin) */
    char **env;         /* borrowed; "K=V", NULL-terminated (may be NULL):
                           the full environment of the child */
    unsigned timeout_s; /* 0 = none; then SIGTERM, grace, SIGKILL */
    /* Optional rlimits for the job (0 = inherit). */
    uint64_t rlimit_nofile;   /* RLIMIT_NOFILE */
    uint64_t rlimit_as_bytes; /* RLIMIT_AS */
    uint64_t rlimit_cpu_s;    /* RLIMIT_CPU */
};

enum exec_end {
    EXEC_EXITED,       /* exited by itself: exit_code valid */
    EXEC_SIGNALED,     /* killed by a signal nobody in kiln sent: signal */
    EXEC_TIMEOUT,      /* timeout_s elapsed (or exec_kill with it) */
    EXEC_CANCELLED,    /* exec_kill(EXEC_CANCELLED) or exec_close */
    EXEC_FENCED,       /* the fence deadline passed or exec_fence_now */
    EXEC_SPAWN_FAILED, /* could not start: reason is in the job's stderr
                          output, exit_code 127 */
    EXEC_LOST          /* the helper died; the job's group was SIGKILLed */
};

/* Name of an end reason ("exited", "timeout", ...); never NULL. */
const char *exec_end_str(enum exec_end end);

struct exec_result
{
    enum exec_end end;
    int exit_code; /* exit status if the process exited, else -1 */
    int signal;    /* terminating signal if killed by one, else 0 */
};

struct exec;

/* Output of a job, in order per stream (batched: usually whole lines, at
 * most 64 KiB per call). data is only valid during the call. */
typedef void (*exec_output_cb)(struct exec *x,
                               const char *job_id,
                               uint64_t epoch,
                               int stream /* 1 stdout, 2 stderr */,
                               const char *data,
                               size_t len,
                               void *ud);

/* The job is over. Called exactly once per accepted exec_spawn, after all
 * its output. The job is no longer counted by exec_running() and its id may
 * be reused from inside the callback. */
typedef void (*exec_exit_cb)(struct exec *x,
                             const char *job_id,
                             uint64_t epoch,
                             const struct exec_result *res,
                             void *ud);

typedef void (*exec_close_cb)(struct exec *x);

struct exec_job; /* internal: one running job as seen by the agent */

/* Internal: reassembly of length-prefixed frames from a byte stream. */
struct exec_rx
{
    uint8_t *data; /* owned */
    size_t len;    /* bytes held */
    size_t cap;
    size_t pos;    /* start of the first unconsumed frame */
    uint64_t skip; /* bytes of an oversized frame still to discard */
};

struct exec
{
    uv_loop_t *loop; /* borrowed, outlives us */
    struct exec_config cfg;
    exec_output_cb on_output;
    exec_exit_cb on_exit;
    void *ud;
    exec_close_cb close_cb;

    uv_process_t proc;           /* the helper */
    uv_pipe_t pipe;              /* socketpair to the helper (its fd 3) */
    uv_timer_t timer;            /* restart backoff / close watchdog */
    int state;                   /* EXEC__S_* in exec_int.h */
    uint64_t backstop_logged_ms; /* last fence-backstop warning */
    unsigned open;               /* open helper handles (proc, pipe) */
    bool proc_exited;            /* helper exit_cb seen */
    bool pipe_eof;               /* EOF or error on the helper pipe */
    pid_t helper_pid;            /* pid of the current helper, 0 if none */
    unsigned restarts;           /* helper restarts so far */
    unsigned backoff_ms;         /* next restart delay */

    struct exec_job *jobs; /* owned array of running jobs */
    unsigned n_jobs;
    unsigned cap_jobs;

    struct exec_rx rx; /* frames from the helper being reassembled */

    uint64_t fence_seq;      /* sequence of the last fence message sent */
    uint64_t fence_deadline; /* time_mono_ms() deadline, 0 = disarmed */
    bool fenced;             /* spawns refused until the next extend */
    char errmsg[ERRMSG_SIZE];
};

/* Prepare x (caller-allocated). Does not start anything. cfg is copied.
 * on_output/on_exit must not be NULL. Returns 0 or ERR_INVALID. */
int exec_init(struct exec *x,
              uv_loop_t *loop,
              const struct exec_config *cfg,
              exec_output_cb on_output,
              exec_exit_cb on_exit,
              void *ud,
              char *errmsg);

/* Spawn the helper process. Returns 0, or ERR_IO with errmsg set. Loop
 * thread only; call once after exec_init. */
int exec_start(struct exec *x, char *errmsg);

/* Ask the helper to start a job. The spec is copied; the result arrives
 * through the callbacks (on_exit is called exactly once if this returns 0).
 * Errors: ERR_INVALID (bad spec), ERR_BUSY (fenced), ERR_CONFLICT (job_id
 * already running), ERR_UNAVAILABLE (helper down/restarting), ERR_SHUTDOWN
 * (closing), ERR_TOOBIG (argv+env above the frame limit), ERR_NOMEM. */
int exec_spawn(struct exec *x, const struct exec_spec *spec);

/* Stop a running job: SIGTERM to its process group, grace, SIGKILL. why is
 * reported as the end reason (EXEC_CANCELLED or EXEC_TIMEOUT). Returns 0,
 * ERR_NOTFOUND or ERR_INVALID. */
int exec_kill(struct exec *x, const char *job_id, enum exec_end why);

/* Set the fence deadline to now + ms_from_now (measured by the helper on
 * its own CLOCK_MONOTONIC when the message arrives) and lift a fence.
 * ms_from_now == 0 disarms fencing (no deadline at all). */
void exec_fence_extend(struct exec *x, unsigned ms_from_now);

/* Self-fence: the helper SIGKILLs every job group now (EXEC_FENCED) and
 * refuses spawns until the next exec_fence_extend. */
void exec_fence_now(struct exec *x);

/* Whether spawns are currently refused because of the fence. */
bool exec_is_fenced(const struct exec *x);

/* Number of jobs accepted and not yet reported by on_exit. */
unsigned exec_running(const struct exec *x);

/* The agent's own fence backstop: SIGKILL every job process group exec
 * still knows of. For the agent to call once its fence deadline passed by
 * a margin while jobs are still reported running: the helper enforces the
 * fence itself, so this only acts if the helper is stalled (e.g.
 * suspended in a spawn whose child hangs before exec). Returns how many
 * groups were signalled. */
unsigned exec_fence_backstop(struct exec *x);

/* Whether the helper is up and a spawn can be sent now (false while it is
 * being restarted after dying, and once closing). */
bool exec_ready(const struct exec *x);

/* Shut down: the helper kills every job group (SIGTERM, grace, SIGKILL;
 * reported as EXEC_CANCELLED), exits, and every handle is closed; cb runs
 * after the last uv_close. x may be freed in cb. */
void exec_close(struct exec *x, exec_close_cb cb);

/* Entry point of the helper process ("kiln exec-helper ..."). Returns the
 * process exit status. */
int exec_helper_main(int argc, char **argv);

#endif /* KILN_EXEC_H_ */
