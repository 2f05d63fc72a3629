/* The replicated core: one Raft group per cluster (libraft 0.15 over
 * raft_uv + TCP), the state machine, proposals from any node (forwarded to
 * the leader), role tracking and voter management. Prefix rsm_ (STYLE.md
 * 8.1 rule 6: a raft.h of ours would shadow libraft's). */
#ifndef KILN_RSM_H_
#define KILN_RSM_H_

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "raft/rsm_fsm.h"
#include "util.h"

struct rsm;

enum rsm_role {
    RSM_ROLE_NONE = 0, /* not in the configuration (yet) */
    RSM_ROLE_VOTER,
    RSM_ROLE_STANDBY,
    RSM_ROLE_SPARE
};
const char *rsm_role_name(
    enum rsm_role r); /* "voter","standby","spare","none" */

/* A server of the initial configuration (bootstrap). */
struct rsm_server
{
    uint64_t id;
    char raft[24]; /* "a.b.c.d:port" */
};

/* Forwarding hook: deliver an encoded batch (rsm_entry_encode format) to
 * the leader and call done with its results. Implemented by node.c over
 * HTTP (internal route); rsm itself has no HTTP client. buf stays valid
 * until done is called. Return 0 and call done exactly once (also after
 * rsm_close: rsm then just frees its request), or return non-zero without
 * calling done (rsm retries). done's rv: 0 with the leader's results, or
 * the leader's rsm_propose_encoded error; ERR_NOTLEADER, ERR_UNAVAILABLE,
 * ERR_IO, ERR_TIMEOUT, ERR_BUSY and ERR_SHUTDOWN are retried (with a
 * small backoff, against the current leader) until forward_timeout_ms;
 * any other code fails the proposals with it. An empty batch is a
 * barrier (see rsm_propose_encoded). */
typedef void (*rsm_forward_done)(void *req,
                                 int rv,
                                 const struct rsm_result *results,
                                 unsigned n);
typedef int (*rsm_forward_fn)(struct rsm *r,
                              uint64_t leader_id,
                              const void *buf,
                              size_t len,
                              rsm_forward_done done,
                              void *req,
                              void *ud);

/* Observer of applied commands (all nodes), fired on the loop thread right
 * after the entry applied. Side effects (spawn, wake SSE, answer HTTP)
 * belong here, never inside apply. */
typedef void (*rsm_applied_cb)(struct rsm *r,
                               const struct rsm_cmd *cmd,
                               const struct rsm_result *res,
                               void *ud);

/* Role / leader changes seen by polling (0.15 has no state callback). */
typedef void (*rsm_role_cb)(struct rsm *r, void *ud);

struct rsm_config
{
    uint64_t id; /* node id, used as the raft server id */
    char name[RSM_NAME_MAX + 1];
    struct addr raft;            /* listen + advertised raft address */
    char dir[PATH_MAX];          /* raft data directory (created) */
    unsigned election_ms;        /* default 1000 */
    unsigned heartbeat_ms;       /* default 100 */
    unsigned segment_kib;        /* default 8192 */
    unsigned snapshot_threshold; /* entries; default 4096 */
    unsigned snapshot_trailing;  /* entries; default 4096 */
    unsigned forward_timeout_ms; /* no leader answer within: ERR_UNAVAILABLE
                                    (503); default 5000 */
    rsm_forward_fn forward;      /* required for followers' proposals */
    rsm_applied_cb on_applied;   /* optional */
    rsm_role_cb on_role;         /* optional */
    void *ud;
    unsigned digest_entries;   /* leader proposes a DIGEST after this many
                                  applied entries; default 4096 */
    unsigned digest_period_ms; /* ... or after this long if any entry
                                  applied meanwhile; default 60000 */
};
void rsm_config_defaults(struct rsm_config *c);

/* Completion of a proposal: rv 0 and the command's result once the entry is
 * applied on THIS node (so a read on this node after the reply sees it);
 * rv ERR_UNAVAILABLE if no leader answered in time, ERR_SHUTDOWN on close.
 * For ERR_UNAVAILABLE the outcome is unknown: retry with the same
 * idempotency key. */
typedef void (*rsm_propose_cb)(void *data,
                               int rv,
                               const struct rsm_result *res);

struct rsm *rsm_create(uv_loop_t *loop,
                       const struct rsm_config *cfg,
                       char *errmsg);

/* Open the data dir (created), raft_init, and probe it for persisted state
 * (raft_uv's metadata files with a term > 0). A node WITH state starts raft
 * at once (loads snapshot + log, resumes). A node WITHOUT state does not
 * start raft yet, because libraft 0.15 can only bootstrap before
 * raft_start: the caller then calls rsm_bootstrap (new cluster) or
 * rsm_join (wait to be added by a leader). errmsg says why on failure;
 * call rsm_close after a failed rsm_start too. */
int rsm_start(struct rsm *r, char *errmsg);

/* True if this node has raft state: the data dir held a term (probed by
 * rsm_start), or raft runs with a non-empty configuration (bootstrapped or
 * added by a leader). Then it must never bootstrap again. */
bool rsm_has_state(const struct rsm *r);

/* Bootstrap a brand-new cluster with these servers (all voters; the caller
 * sorts them so every member bootstraps the same configuration), then start
 * raft. A no-op returning 0 when rsm_has_state(). ERR_BUSY if raft was
 * already started by rsm_join; ERR_IO if raft_bootstrap/raft_start failed
 * (logged). */
int rsm_bootstrap(struct rsm *r, const struct rsm_server *servers, unsigned n);

/* (Added.) Start raft without bootstrapping: a node that joins an existing
 * cluster and waits for the leader to add it (rsm_member_seen on the
 * leader). A no-op returning 0 when raft already runs. */
int rsm_join(struct rsm *r);

/* Propose one command from any node. Takes ownership of cmd's contents
 * (cleared on return). Commands proposed during one loop iteration are
 * batched into one entry (leader) or one forward (follower). */
int rsm_propose(struct rsm *r,
                struct rsm_cmd *cmd,
                rsm_propose_cb cb,
                void *data);

/* Leader side of forwarding: apply a batch that a follower sent (the body
 * of the internal route). Returns 0 and later calls done exactly once
 * (never synchronously) with one result per command once the entry applied
 * on the leader; done(ERR_NOTLEADER) if leadership was lost meanwhile
 * (outcome unknown: the follower retries, idempotency keys dedupe),
 * done(ERR_SHUTDOWN) on close. An EMPTY batch (0 commands) is a barrier:
 * done gets ONE result whose index is the barrier's index. Returns
 * non-zero WITHOUT calling done: ERR_NOTLEADER (not the leader or its
 * barrier not yet applied), ERR_MALFORMED/ERR_VERSION (bad bytes),
 * ERR_TOOBIG, ERR_BUSY (too many batches in flight), ERR_SHUTDOWN. */
int rsm_propose_encoded(struct rsm *r,
                        const void *buf,
                        size_t len,
                        rsm_forward_done done,
                        void *req);

/* Linearizable read barrier (?consistent=true): cb(data, 0) once this node
 * has applied everything the leader had committed when asked. */
typedef void (*rsm_barrier_cb)(void *data, int rv);
int rsm_barrier(struct rsm *r, rsm_barrier_cb cb, void *data);

/* Live membership input (from gossip): the leader adds alive nodes that are
 * not in the configuration and keeps the voter count at 3 (5 with 5+ nodes),
 * the rest standbys. Call on every gossip change; cheap when idle. */
void rsm_member_seen(struct rsm *r,
                     uint64_t id,
                     const char *raft_addr,
                     bool alive);

bool rsm_is_leader(const struct rsm *r);     /* leader and barrier done */
uint64_t rsm_leader_id(const struct rsm *r); /* 0 if unknown */
enum rsm_role rsm_role_of(const struct rsm *r, uint64_t id);
const struct rsm_fsm *rsm_state(const struct rsm *r);
uint64_t rsm_last_applied(const struct rsm *r);
/* (Added, diagnostics for /v1/status.) Raft's current term and commit
 * index as this node knows them; 0 before raft runs. */
uint64_t rsm_term(const struct rsm *r);
uint64_t rsm_commit_index(const struct rsm *r);

/* (Added.) Divergence detection (docs/raft.md): this node's newest
 * DIGEST record and what comparing the leader's records with it found. */
struct rsm_digest_status
{
    struct rsm_digest last; /* this node's newest record (index 0: none) */
    uint64_t chain;         /* chain after the last applied entry */
    uint64_t checks;        /* leader records compared with our own */
    uint64_t checked_index; /* newest index compared */
    bool diverged;          /* sticky until restart */
    uint64_t detected_at;   /* index of the DIGEST that showed it */
    struct rsm_digest own, leader; /* the first mismatch (when diverged) */
};
void rsm_digest_status(const struct rsm *r, struct rsm_digest_status *out);

/* True once this node's state was found to differ from the leader's. */
bool rsm_diverged(const struct rsm *r);

typedef void (*rsm_close_cb)(struct rsm *r, void *data);
/* Fail pending proposals with ERR_SHUTDOWN, raft_close, close handles,
 * then cb. The memory is freed after cb returns. */
void rsm_close(struct rsm *r, rsm_close_cb cb, void *data);

#endif /* KILN_RSM_H_ */
