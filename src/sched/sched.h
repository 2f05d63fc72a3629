/* The per-node scheduler runtime: claims (steals) pending jobs, runs them
 * through the executor, streams their output into the log, finishes them,
 * keeps the node's lease and self-fences (docs/sched.md, docs/jobs.md). */
#ifndef KILN_SCHED_H_
#define KILN_SCHED_H_

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "err.h"
#include "exec/exec.h"
#include "map.h"
#include "raft/rsm.h"

#define SCHED_TAGS_MAX 16
#define SCHED_PEERS_MAX 256            /* peers considered per scan */
#define SCHED_SCAN_JOBS_MAX 1000       /* claimable jobs walked per scan */
#define SCHED_OUTPUT_CHUNK (64 * 1024) /* raw bytes per chunk */
#define SCHED_OUTPUT_QUEUE_MAX (8 * 1024 * 1024) /* queued raw bytes/job */
#define SCHED_RENEW_INFLIGHT_MAX 8
#define SCHED_CLAIM_AHEAD_AUTO UINT_MAX /* claim_ahead = slots */

/* A node as the gossip layer sees it (node.c fills these). */
struct sched_peer
{
    uint64_t id;
    uint32_t slots;   /* configured capacity */
    uint32_t running; /* its published sched_running() */
    bool alive;
    bool draining;
    struct
    {
        char key[32];
        char value[64];
    } tags[SCHED_TAGS_MAX];
    unsigned n_tags;
};

/* Fill out[0..max) with the current peers, INCLUDING this node; return the
 * count. Called on the loop thread during scans. */
typedef unsigned (*sched_peers_fn)(void *ud,
                                   struct sched_peer *out,
                                   unsigned max);

struct sched_config
{
    uint64_t node_id;
    char node_name[64];
    unsigned slots; /* concurrent jobs on this node; 0 = never claim */
    struct
    {
        char key[32];
        char value[64];
    } tags[SCHED_TAGS_MAX];
    unsigned n_tags;
    unsigned lease_ms;           /* 3000 */
    unsigned fence_margin_ms;    /* 500 */
    unsigned claim_step_ms;      /* 50 */
    unsigned claim_max_delay_ms; /* 1000 */
    unsigned scan_ms;            /* 100: periodic claim scan, in addition
                                    to the scans after applies */
    char work_root[PATH_MAX];    /* <data_dir>/work */
    char helper_path[PATH_MAX];  /* "" = /proc/self/exe (exec default) */
    unsigned grace_ms;           /* TERM -> KILL grace; 0 = exec default */
    unsigned claim_ahead;        /* granted jobs that may wait for a slot
                                    (claimed while all slots run, started
                                    the moment one frees); default
                                    SCHED_CLAIM_AHEAD_AUTO = slots */
    sched_peers_fn peers;        /* required */
    void *peers_ud;
};

/* Fill c with the defaults above (slots 4, claim_ahead auto, no tags, no
 * peers fn). */
void sched_config_defaults(struct sched_config *c);

struct sched;
struct sched_run;         /* a local attempt (sched.c) */
struct sched_prop;        /* an in-flight proposal (sched.c) */
struct sched_expired_set; /* leader expiry bookkeeping (sched.c) */
struct sched_candidate;   /* sched_policy.h */

typedef void (*sched_close_cb)(struct sched *s);

/* Caller-allocated; every field is private to sched.c. */
struct sched
{
    uv_loop_t *loop; /* borrowed, outlives us */
    struct rsm *rsm; /* borrowed, outlives us (closed after sched) */
    struct sched_config cfg;
    struct exec exec; /* owned */

    uv_timer_t scan_timer;   /* periodic claim scan + run validation */
    uv_timer_t renew_timer;  /* NODE_RENEW every lease/3 */
    uv_timer_t expire_timer; /* leader: NODE_EXPIRE checks; recovery */
    uv_idle_t idle;          /* coalesced scan once per loop iteration */
    unsigned open_handles;   /* handles not yet closed */
    bool started;
    bool closing;
    bool exec_closed;
    sched_close_cb close_cb;

    /* Lease and fence (monotonic ms). */
    uint64_t fence_deadline; /* newest committed t + lease - margin; 0 =
                                no committed renewal yet */
    unsigned renew_inflight; /* renewals proposed, not yet answered */
    bool recovered;          /* restart recovery has run once */
    bool hold_renewals;      /* test hook */
    uint64_t last_recovery;  /* mono ms of the last recovery pass */

    /* Local attempts, keyed by job seq. */
    struct map runs;    /* u64 job seq -> struct sched_run */
    unsigned n_runs;    /* == map_count(&runs) */
    unsigned n_exited;  /* of which the process has exited */
    unsigned n_waiting; /* of which granted, waiting for a slot */
    unsigned claims_inflight;
    struct map claims;     /* u64 job seq -> struct sched_prop (claim) */
    struct map first_seen; /* u64 job seq -> struct sched_seen */
    uint64_t scan_gen;     /* generation for pruning first_seen */

    /* Leader expiry bookkeeping: (node, lease_until) already expired. */
    struct sched_expired_set *expired_set; /* owned */

    struct sched_prop *props; /* every in-flight proposal (doubly linked) */
    struct sched_peer *peers; /* owned scratch, SCHED_PEERS_MAX+1 */
    bool *peer_ok;            /* owned scratch: base eligibility */
    struct sched_candidate *cands; /* owned scratch */
    const struct rsm_job **jobs;   /* owned scratch, SCHED_SCAN_JOBS_MAX */

    char idem_prefix[24]; /* "~s<boot nonce>." unique per incarnation */
    uint64_t idem_counter;
    char errmsg[ERRMSG_SIZE];
};

/* Prepare s (caller-allocated): copies cfg, initialises the owned exec (its
 * fence armed at start: no spawn before the first committed renewal), the
 * timers and maps. Nothing runs yet. rsm is borrowed and must outlive s
 * (close s before rsm). Returns 0 or ERR_INVALID (bad config: node_id 0,
 * lease <= margin, no peers fn), ERR_NOMEM, with errmsg set. On error
 * nothing needs closing. */
int sched_init(struct sched *s,
               uv_loop_t *loop,
               const struct sched_config *cfg,
               struct rsm *rsm,
               char *errmsg);

/* Start the exec helper and the timers, and propose the first renewal.
 * Returns 0 or ERR_IO (helper could not be spawned) with errmsg set; call
 * sched_close afterwards in either case. */
int sched_start(struct sched *s, char *errmsg);

/* Feed an applied command (node.c calls this from rsm's on_applied
 * observer, on every node; valid from sched_init until the close callback,
 * never after it). Spawns jobs granted to this node by claims
 * this incarnation proposed, kills local attempts that became stale or
 * cancelled, and schedules a claim scan. Never blocks. */
void sched_on_applied(struct sched *s,
                      const struct rsm_cmd *cmd,
                      const struct rsm_result *res);

/* Local attempts whose process runs or waits for a slot (granted, not yet
 * spawned), plus claims in flight: the load published through gossip.
 * Attempts whose process exited and whose FINISH is on its way do not
 * count. At most sched_window(slots) (claims stop there). */
unsigned sched_running(const struct sched *s);

/* The claim window of a node with `slots` slots and this node's
 * claim_ahead setting: how many jobs it holds at most (running + granted
 * and waiting + claims in flight). Ranking uses it as every node's
 * capacity. */
unsigned sched_window(const struct sched *s, unsigned slots);

/* Processes running on this node now (at most slots). */
unsigned sched_processes(const struct sched *s);

/* True if this node may not start jobs now: no renewal committed within
 * lease - margin, or the executor reported the fence. */
bool sched_is_fenced(const struct sched *s);

/* Test hook: while hold is true no renewal is proposed (as if none could
 * commit), so the fence deadline runs out; false resumes at once. */
void sched_test_hold_renewals(struct sched *s, bool hold);

/* Stop claiming and renewing, close the executor (it kills the running
 * jobs; each one is reported as lost once its process is dead), close the
 * timers, then call cb after the last uv_close. Proposals still in flight
 * are orphaned (rsm frees their contexts), so rsm must be closed after cb.
 * s may be freed in cb. */
void sched_close(struct sched *s, sched_close_cb cb);

#endif /* KILN_SCHED_H_ */
