/* Internal declarations shared by the files of src/raft/ (rsm_ prefix,
 * double underscore: not for use outside this directory). */
#ifndef KILN_RSM_INT_H_
#define KILN_RSM_INT_H_

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "map.h"
#include "raft/rsm.h"
#include "raft/rsm_fsm.h"

/* ======================================================================
 * Section: FSM core (rsm_fsm.c, rsm_cmd.c, rsm_snap.c) -- branch rsmfsm
 * ====================================================================== */

/* Idempotency table bounds (docs/state-machine.md). */
#define RSM_IDEM_KEEP 10000                     /* at most this many keys */
#define RSM_IDEM_TTL_MS (24LL * 60 * 60 * 1000) /* pruned when older */

/* Bound on the uncompressed snapshot size accepted by restore. */
#define RSM_SNAPSHOT_MAX ((size_t)1 << 30)

/* One stored idempotency key: the result of the command that first used it. */
struct rsm__idem
{
    char key[RSM_IDEM_MAX + 1];
    uint8_t type;    /* command type that stored it */
    int64_t time_ms; /* FSM clock when applied */
    struct rsm_result result;
};

/* A job as stored: the public view plus its output chunks. The chunk array
 * holds the head chunks in [0, n_head) and the tail chunks in
 * [tail_start, n_chunk); the slots between are dropped chunks (a gap that
 * is compacted when it grows). */
struct rsm__job
{
    struct rsm_job job; /* first member: &rec->job is the public pointer */
    struct rsm_chunk *chunks;
    unsigned n_chunk; /* used slots, including the gap */
    unsigned cap_chunk;
    unsigned n_head;     /* chunks with offset < RSM_OUTPUT_HEAD_CAP */
    unsigned tail_start; /* first live tail chunk */
    uint64_t tail_bytes; /* raw bytes of the live tail chunks */
    unsigned pos_all;    /* index in rsm_fsm.jobs_all */
    unsigned pos_active; /* index in rsm_fsm.jobs_active while unfinished */
};

/* A growable vector of pointers kept sorted by the owner's order. */
struct rsm__vec
{
    void **v;
    unsigned n;
    unsigned cap;
};

/* The replicated state. Every table has a map for lookups and, where the
 * order is observable (listings, snapshots), a sorted vector. The maps'
 * iteration order is never used for output. */
struct rsm_fsm
{
    int64_t clock;       /* max of every applied leader_time_ms */
    uint64_t last_index; /* raft index of the last applied entry */

    struct map members; /* id -> struct rsm_member * (owned) */
    struct rsm__vec members_by_id;
    struct map pipelines; /* name -> struct rsm_pipeline * (owned) */
    struct rsm__vec pipelines_by_name;
    struct map idem;            /* key -> struct rsm__idem * (owned) */
    struct rsm__vec idem_order; /* sorted by (time_ms, key): oldest first */
    unsigned idem_head;         /* idem_order.v[0..idem_head) are gone */

    /* Jobs (rsm_jobs.c). Seqs only grow, so both seq-ordered vectors
     * append at the end; removals leave NULL holes that are compacted
     * (updating rsm__job.pos_*) once they are half the vector. */
    uint64_t job_seq;         /* last assigned j<N> */
    struct map jobs;          /* seq -> struct rsm__job * (owned) */
    struct rsm__vec jobs_all; /* every job by seq, with holes */
    unsigned jobs_all_holes;
    struct rsm__vec jobs_active; /* unfinished jobs by seq, with holes */
    unsigned jobs_active_holes;
    struct rsm__vec jobs_finished; /* by (finished_ms, seq): oldest first */
    unsigned jobs_finished_head;   /* jobs_finished.v[0..head) are gone */
    /* Retention bounds: RSM_JOBS_MAX_* unless a test lowered them with
     * rsm__fsm_set_job_retention. Configuration, not replicated state. */
    unsigned jobs_max_finished;
    int64_t jobs_max_age_ms;

    /* Runs (rsm_runs.c). Seqs only grow: runs_all appends at the end and
     * lookups bisect it. Per-pipeline bookkeeping lives in run groups,
     * keyed by pipeline name (a group may outlive its pipeline while it
     * has running runs). */
    uint64_t run_seq;         /* last assigned r<N> */
    struct rsm__vec runs_all; /* struct rsm__run * by seq */
    struct map run_groups;    /* name -> struct rsm__pruns * (owned) */
    struct rsm__vec run_groups_by_name;
    /* Work left for rsm__runs_settle after the current command (intrusive
     * lists, empty between commands). */
    struct rsm__run *settle_head, *settle_tail;
    struct rsm__pruns *trim_head;

    /* Digests (docs/state-machine.md "Digests"). chain and digest_last
     * are replicated state (in snapshots, not in rsm_fsm_digest); the
     * carried records are scratch of the last rsm_fsm_apply. */
    uint64_t chain;                /* RSM_CHAIN_SEED, then per entry */
    uint64_t chain_before;         /* chain at the start of this entry */
    struct rsm_digest digest_last; /* last DIGEST applied */
    struct rsm_digest carried[RSM_DIGEST_CARRIED_MAX];
    unsigned n_carried;
};

/* A run as stored (rsm_runs.c). */
struct rsm__run
{
    struct rsm_run run; /* first member: &rec->run is the public pointer */
    char **targets;     /* owned: run.n_jobs target names ("" = none) */
    uint8_t *job_state; /* owned: run.n_jobs terminal job states, or
                           RSM_JOB_PENDING while the job is unfinished */
    struct rsm__pruns *group; /* borrowed: the group of run.pipeline */
    struct rsm__run *settle_next;
    bool settling; /* queued for rsm__runs_settle */
};

/* Per-pipeline run bookkeeping. done and fired hold scheduled_for values
 * oldest first, at most RSM_RUNS_DONE_KEEP each. */
struct rsm__pruns
{
    char name[RSM_NAME_MAX + 1];
    struct rsm__vec runs; /* struct rsm__run * by seq */
    unsigned n_active;    /* runs in state running */
    unsigned n_finished;
    int64_t done[RSM_RUNS_DONE_KEEP]; /* scheduled_for of succeeded runs */
    unsigned n_done;
    int64_t fired[RSM_RUNS_DONE_KEEP]; /* scheduled_for triggered by after */
    unsigned n_fired;
    struct rsm__pruns *trim_next;
    bool trimming; /* queued for the retention pass */
};

void rsm__fsm_init(struct rsm_fsm *f);
void rsm__fsm_clear(struct rsm_fsm *f); /* frees every table; f reusable */

/* Sorted vector helpers. */
int rsm__vec_insert(struct rsm__vec *v, unsigned pos, void *p);
void rsm__vec_remove(struct rsm__vec *v, unsigned pos);
void rsm__vec_free(struct rsm__vec *v);

/* Insert into the fsm tables (restore and apply share them). Ownership of
 * the object passes to the fsm on success only. */
int rsm__fsm_put_member(struct rsm_fsm *f, struct rsm_member *m);
int rsm__fsm_put_pipeline(struct rsm_fsm *f, struct rsm_pipeline *p);
int rsm__fsm_push_idem(struct rsm_fsm *f, struct rsm__idem *e);

/* Canonical (uncompressed) snapshot bytes into sbuf, WITHOUT the digest
 * field (the 11-field form that rsm_fsm_digest hashes). */
int rsm__snap_pack(const struct rsm_fsm *f, msgpack_sbuffer *sbuf);

/* The same encoding into any packer; with_digest appends the digest field
 * (what rsm_fsm_snapshot writes). */
int rsm__snap_pack_pk(const struct rsm_fsm *f,
                      msgpack_packer *pk,
                      bool with_digest);

/* Test hook: make this replica diverge on purpose, as a lost or corrupted
 * entry would: xor into the chain, add to the job counter (a lasting
 * state difference). Never called by kiln itself. */
void rsm__fsm_test_perturb(struct rsm_fsm *f,
                           uint64_t chain_xor,
                           uint64_t job_seq_add);

/* Validation used by the codec (rsm_cmd.c) and restore. */
bool rsm__valid_name(const char *s);
bool rsm__valid_idem(const char *s);
bool rsm__valid_addr(const char *s);

/* Check that buf holds one well-formed msgpack object whose containers
 * never claim more elements than bytes remain (so that msgpack-c never
 * allocates more than O(len)). Sets *objlen to its size. Returns 0 or
 * ERR_MALFORMED. */
int rsm__mp_check(const void *buf, size_t len, size_t *objlen);

/* Parse one msgpack object from buf after rsm__mp_check. */
int rsm__mp_unpack(const void *buf,
                   size_t len,
                   msgpack_unpacked *out,
                   char *errmsg);

/* Pieces of the codec reused by snapshots. */
int rsm__spec_pack(const struct rsm_pipeline_spec *s, msgpack_packer *pk);
int rsm__spec_unpack(const msgpack_object *o,
                     struct rsm_pipeline_spec *s,
                     char *errmsg);
int rsm__member_pack(const struct rsm_member *m, msgpack_packer *pk);
int rsm__member_unpack(const msgpack_object *o,
                       struct rsm_member *m,
                       char *errmsg);
int rsm__pack_str(msgpack_packer *pk, const char *s);
bool rsm__get_u64(const msgpack_object *o, uint64_t max, uint64_t *out);
bool rsm__get_i64(const msgpack_object *o, int64_t *out); /* >= 0 */
bool rsm__get_str(const msgpack_object *o, size_t max, char *dst);

/* Parse an entry: version, leader time and the command objects (borrowed
 * from *u). Returns 0, ERR_MALFORMED or ERR_VERSION. */
int rsm__entry_parse(const void *buf,
                     size_t len,
                     msgpack_unpacked *u,
                     int64_t *leader_time_ms,
                     const msgpack_object **cmds,
                     unsigned *n,
                     char *errmsg);

/* ---------------------------------------------------------------- jobs */

/* Apply the job and lease commands (rsm_jobs.c). Same contract as the
 * other handlers: 0 with a result (possibly a rejection) or ERR_NOMEM. */
int rsm__apply_job(struct rsm_fsm *f,
                   struct rsm_cmd *c,
                   struct rsm_result *res);

/* Delete finished jobs beyond the retention bounds (after each command). */
void rsm__jobs_retain(struct rsm_fsm *f);

/* Free every job (fsm clear). */
void rsm__jobs_clear(struct rsm_fsm *f);

/* Test hook: lower the retention bounds (every replica must use the same
 * values: they shape the replicated state). Survives restore. */
void rsm__fsm_set_job_retention(struct rsm_fsm *f,
                                unsigned max_finished,
                                int64_t max_age_ms);

/* Snapshot section: [job_seq, [job...]] pieces (rsm_jobs.c). */
int rsm__jobs_pack(const struct rsm_fsm *f, msgpack_packer *pk);
int rsm__jobs_load(struct rsm_fsm *f,
                   const msgpack_object *seq,
                   const msgpack_object *jobs,
                   char *errmsg);

/* Job spec codec pieces (rsm_cmd.c). */
int rsm__job_spec_pack(const struct rsm_job_spec *s, msgpack_packer *pk);
int rsm__job_spec_unpack(const msgpack_object *o,
                         struct rsm_job_spec *s,
                         char *errmsg);
bool rsm__get_i32(const msgpack_object *o, int32_t *out); /* 0..INT32_MAX */

/* Check an LZ4 block decompresses to exactly raw_len bytes (deterministic;
 * uses a scratch buffer). Returns 0, ERR_MALFORMED or ERR_NOMEM. */
int rsm__chunk_check(const void *data, uint32_t len, uint32_t raw_len);

/* ---------------------------------------------------------------- runs */

/* Apply PIPELINE_FIRE, RUN_MANUAL, RUN_RETRY (rsm_runs.c). 0 with a result
 * (possibly a rejection) or ERR_NOMEM (state unchanged). */
int rsm__apply_run(struct rsm_fsm *f,
                   struct rsm_cmd *c,
                   struct rsm_result *res);

/* Hook: job j (with spec.run != 0) just reached a terminal state. Never
 * allocates; updates its run and queues the follow-up work. */
void rsm__runs_job_done(struct rsm_fsm *f, const struct rsm_job *j);

/* After every command: fire dependents of runs that succeeded in it and
 * apply the run retention. Returns 0 or ERR_NOMEM. */
int rsm__runs_settle(struct rsm_fsm *f);

/* A pipeline was deleted: drop its finished runs and its records. */
void rsm__runs_pipeline_deleted(struct rsm_fsm *f, const char *name);

/* Free every run and group (fsm clear). */
void rsm__runs_clear(struct rsm_fsm *f);

/* Snapshot section: run_seq, [group...], [run...] (rsm_runs.c). */
int rsm__runs_pack(const struct rsm_fsm *f, msgpack_packer *pk);
int rsm__runs_load(struct rsm_fsm *f,
                   const msgpack_object *seq,
                   const msgpack_object *groups,
                   const msgpack_object *runs,
                   char *errmsg);

/* Job helpers for runs (rsm_jobs.c). */

/* Submit n jobs at once, all or nothing: on success the specs are stolen
 * (zeroed) and seqs[0..n) are the new job numbers; on ERR_NOMEM nothing
 * changed and the specs are still the caller's. */
int rsm__jobs_add(struct rsm_fsm *f,
                  struct rsm_job_spec *specs,
                  unsigned n,
                  uint64_t *seqs);

/* Reserve room so that n jobs can reach a terminal state without
 * allocating. Returns 0 or ERR_NOMEM. */
int rsm__jobs_reserve_finish(struct rsm_fsm *f, unsigned n);

/* JOB_CANCEL on job seq after rsm__jobs_reserve_finish: waiting jobs are
 * cancelled at once, claimed/running ones get cancel_requested; finished
 * or unknown jobs are left alone. Returns true if the job was unfinished. */
bool rsm__job_cancel_reserved(struct rsm_fsm *f, uint64_t seq);

/* Shared by the table files: id parsing ("j42", "r42") and rejections. */
int rsm__id_parse(char prefix, const char *id, uint64_t *seq);
int rsm__vec_reserve(struct rsm__vec *v, unsigned extra);
void rsm__reject(struct rsm_result *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ====================== end of section FSM core ======================= */

/* ===================================================================== */
/* Section: runtime (rsm.c, rsm_members.c) -- branch rsm                   */
/* ===================================================================== */

/* Most commands in one raft entry (and in one forwarded batch). */
#define RSM__MAX_BATCH 256
/* Largest encoded entry we hand to raft_apply (RISKS row 9). */
#define RSM__MAX_ENTRY (1024 * 1024)
/* Most raft_apply batches in flight on the leader (RISKS row 9). */
#define RSM__MAX_INFLIGHT 64

/* Divergence observer (rsm.c; docs/raft.md "Divergence detection"): this
 * node's own DIGEST records, compared with the records that DIGEST
 * commands carry. Local, never replicated; runs right after each entry
 * applied, outside the FSM. */
#define RSM__DIGEST_RING 8
struct rsm__digest_obs
{
    struct rsm_digest ring[RSM__DIGEST_RING]; /* own records, by index */
    unsigned n;                               /* used slots */
    unsigned next;                            /* slot of the next push */
    uint64_t since;         /* entries applied since the last DIGEST */
    uint64_t checks;        /* carried records compared with our own */
    uint64_t checked_index; /* newest index compared */
    bool diverged;          /* sticky: a comparison failed */
    uint64_t detected_at;   /* index of the DIGEST that showed it */
    struct rsm_digest bad_own, bad_carried; /* the first mismatch */
};

/* Observe the entry just applied at index (after rsm_fsm_apply returned
 * 0): record a new own DIGEST record, compare the carried ones. Logs an
 * ERROR and sets diverged on a mismatch. */
void rsm__digest_observe(struct rsm__digest_obs *o,
                         const struct rsm_fsm *f,
                         uint64_t index);

/* Bridges libraft's struct raft_fsm (version 1) to the pure core. Used by
 * rsm.c and by the raft_fixture tests (tests/lib/cluster.c), so that both
 * run the very same apply/snapshot/restore glue. */
struct rsm__adapter
{
    struct raft_fsm fsm;  /* handed to raft_init; fsm.data == this */
    struct rsm_fsm *core; /* borrowed, outlives us */
    struct raft *raft;    /* borrowed: the index of an applied entry is
                             raft->last_applied + 1 (0.15 updates
                             last_applied after fsm->apply returns) */
    /* Results of the entry applied last: raft hands a pointer to this
     * adapter to the leader's raft_apply cb, which copies them at once
     * (the cb runs synchronously right after fsm->apply). Never malloc'd
     * per entry: raft leaks the result on followers. */
    struct rsm_result results[RSM__MAX_BATCH];
    unsigned n_results;
    uint64_t index;
    bool stuck; /* apply refused (newer format / no memory): logged once */
    struct rsm__digest_obs digest; /* fed by every successful apply */
    /* Optional observer, called right after each entry applied. */
    void (*after_apply)(struct rsm__adapter *a, const void *buf, size_t len);
    void *owner;
};

/* Fill a->fsm; a->raft must be set before the first apply. */
void rsm__adapter_init(struct rsm__adapter *a, struct rsm_fsm *core);

/* Voter management (rsm_members.c). */
struct rsm__peer
{
    uint64_t id;
    char raft[24];
    bool alive;
    uint64_t dead_since; /* monotonic ms; 0 while alive */
};

struct rsm__members
{
    struct rsm__peer *peers; /* owned */
    unsigned n, cap;
    bool changing;       /* a barrier or membership change is in flight */
    int phase;           /* idle, barrier, ready (barrier done), change */
    uint64_t ready_term; /* term in which the barrier applied */
    uint64_t not_before; /* no change before this monotonic ms */
    unsigned grace_ms;   /* a voter dead longer than this is replaced */
};

/* Plan the next membership step from the configuration and the peer table
 * (pure: no raft calls). Returns true and fills the step when there is
 * something to do. */
enum rsm__step_kind { RSM__STEP_ADD = 1, RSM__STEP_ASSIGN };
struct rsm__step
{
    enum rsm__step_kind kind;
    uint64_t id;
    char raft[24];
    int role; /* RAFT_VOTER/STANDBY/SPARE for ASSIGN */
};
bool rsm__members_plan(const struct rsm__members *m,
                       const struct raft_configuration *conf,
                       uint64_t self_id,
                       uint64_t now_ms,
                       struct rsm__step *step);

void rsm__members_init(struct rsm__members *m);
void rsm__members_free(struct rsm__members *m);
/* Returns true if the table changed. */
bool rsm__members_seen(struct rsm__members *m,
                       uint64_t id,
                       const char *raft_addr,
                       bool alive,
                       uint64_t now_ms);
/* Leader-only driver: barrier, then one change, then re-plan. Called from
 * the reconcile timer in rsm.c. */
void rsm__members_reconcile(struct rsm *r);
/* Accessors rsm_members.c needs from rsm.c. */
struct raft *rsm__raft(struct rsm *r);
struct rsm__members *rsm__members(struct rsm *r);
bool rsm__ready(const struct rsm *r); /* leader, barrier done, not closing */
void rsm__kick_members(struct rsm *r, unsigned delay_ms);
uint64_t rsm__self_id(const struct rsm *r);
/* One queued proposal, waiting for the next flush. */
struct rsm__prop
{
    struct rsm_cmd cmd; /* owned */
    rsm_propose_cb cb;
    void *data;
    struct rsm__prop *next;
};

/* Who waits for one command of a local group. */
struct rsm__waiter
{
    rsm_propose_cb cb;
    void *data;
};

enum rsm__group_kind {
    RSM__GROUP_LOCAL = 0, /* proposals of this node (rsm_propose) */
    RSM__GROUP_REMOTE,    /* leader side of a forwarded batch */
    RSM__GROUP_BARRIER,   /* rsm_barrier of this node */
    RSM__GROUP_RBARRIER   /* leader side of a forwarded barrier (empty batch) */
};

enum rsm__group_state {
    RSM__GS_NEW = 0,
    RSM__GS_APPLYING,    /* raft_apply / raft_barrier in flight on the leader */
    RSM__GS_FWD_PENDING, /* waiting for a leader / backoff before (re)forward */
    RSM__GS_FWD_INFLIGHT,
    RSM__GS_WAITING /* result known, waiting for local last_applied */
};

/* A batch of commands that travels as one raft entry or one forward. */
struct rsm__group
{
    struct rsm *r; /* NULL once detached by rsm_close */
    enum rsm__group_kind kind;
    enum rsm__group_state state;
    struct rsm_cmd *cmds; /* owned, n entries */
    unsigned n;
    struct rsm__waiter *who; /* owned, n entries (LOCAL) */
    rsm_barrier_cb bcb;      /* BARRIER */
    void *bdata;
    rsm_forward_done done; /* REMOTE, RBARRIER */
    void *req;
    void *fwd_buf; /* raft_malloc'd encoded batch for forwarding */
    size_t fwd_len;
    struct raft_barrier barrier;
    struct rsm_result *results; /* owned, n entries (or 1 for barriers) */
    uint64_t deadline;          /* monotonic ms: forwarding gives up */
    uint64_t retry_at;
    uint64_t wait_index;
    struct rsm__group *prev, *next;
    struct rsm__group *rq_next; /* REMOTE waiting in rsm.rq for the flush */
};

/* The runtime instance (rsm.c lifecycle and roles, rsm_propose.c
 * proposals, rsm_members.c voters). Loop thread only. */
struct rsm
{
    uv_loop_t *loop; /* borrowed */
    struct rsm_config cfg;
    char addr[ADDR_STRLEN];
    struct rsm_fsm *core; /* owned */
    struct rsm__adapter adapter;
    struct raft_uv_transport transport;
    struct raft_io io;
    struct raft raft;
    bool raft_inited, raft_started, disk_state;

    uv_check_t check;
    uv_prepare_t prepare;
    uv_timer_t retry_timer;
    uv_timer_t members_timer;
    unsigned handles_open;

    /* Role tracking (polled). */
    int last_state;
    uint64_t last_leader;
    bool last_ready;
    bool was_leader;
    raft_term leader_term;
    bool ready;             /* leader and its barrier applied */
    bool need_lbarrier;     /* issue the leader barrier on next check */
    bool lbarrier_inflight; /* one at a time */

    /* Proposals. */
    struct rsm__prop *q_head, *q_tail;
    unsigned q_len;
    struct rsm__group groups; /* sentinel of a circular list */
    unsigned inflight;        /* raft_apply / raft_barrier in flight */
    /* Forwarded batches accepted this iteration: the flush puts them and
     * the local proposals into as few entries as possible. */
    struct rsm__group *rq_head, *rq_tail;
    /* Commit push (rsm_propose.c): followers learn the commit index only
     * from the leader's next AppendEntries. push_index is the highest
     * index a forwarded batch was answered with (its follower waits to
     * apply it); sent_commit is the commit index our last raft_apply /
     * raft_barrier carried to the followers. */
    uint64_t push_index;
    uint64_t sent_commit;
    uint64_t pushes; /* commit-push barriers issued (metrics, tests) */
    uint64_t merged; /* entries that carried several groups (tests) */
    int64_t last_stamp;
    uint64_t boot_ms;
    uint64_t idem_counter;

    struct rsm__members members;

    bool closing, raft_closed;
    rsm_close_cb close_cb;
    void *close_data;

    /* Digest proposals (leader; docs/raft.md "Divergence detection"). */
    bool digest_inflight;
    uint64_t digest_mark_ms; /* monotonic ms of the last DIGEST applied */

    /* raft_io close guard (RISKS row 15), see io_close_wrap. */
    void (*io_close_orig)(struct raft_io *io, raft_io_close_cb cb);
    raft_io_close_cb io_close_raft_cb; /* libraft's own ioCloseCb */
    bool io_fired;
    uint64_t io_last_fire; /* monotonic ms of the last (stray) fire */
};

/* Test hook: the FSM of a running rsm (tests corrupt it on purpose). */
struct rsm_fsm *rsm__core(struct rsm *r);

/* rsm.c, for rsm_propose.c. */
void rsm__crash_stop(const char *what, int status); /* logs, abort() */
bool rsm__is_leader_now(const struct rsm *r);       /* raft state only */

/* rsm_propose.c, for rsm.c. */
void rsm__prepare_cb(uv_prepare_t *h);    /* flush the proposal queue */
void rsm__service_groups(struct rsm *r);  /* waiters, retries, deadlines */
void rsm__groups_shutdown(struct rsm *r); /* rsm_close: fail pending work */
void rsm__groups_fail_all(struct rsm *r); /* after raft_close */

/* ===================== end of section runtime ======================== */

#endif /* KILN_RSM_INT_H_ */
