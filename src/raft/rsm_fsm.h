/* The replicated state machine's pure core: command codec, tables, apply,
 * canonical snapshots. No I/O, no clocks, no randomness (STYLE.md 8.6).
 *
 * Internal to src/raft/ (rsm_fsm.c, rsm_cmd.c, rsm_snap.c); the runtime
 * (rsm.c) drives it from libraft's FSM callbacks, and the public accessors in
 * rsm.h expose read-only views to other modules. */
#ifndef KILN_RSM_FSM_H_
#define KILN_RSM_FSM_H_

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Format version of commands, entries and snapshots. A node that meets a
 * newer version refuses to apply it (logs and stops applying) rather than
 * guessing: see docs/state-machine.md. */
#define RSM_FORMAT_VERSION 1

#define RSM_NAME_MAX 63  /* pipeline and node names */
#define RSM_IDEM_MAX 64  /* idempotency key length */
#define RSM_ARGV_MAX 256 /* command arguments */
#define RSM_ARG_MAX 4096 /* bytes per argument */
#define RSM_SCHEDULE_MAX 255
#define RSM_TZ_MAX 63
#define RSM_AFTER_MAX 16
#define RSM_TARGETS_MAX 64
#define RSM_TAGS_MAX 16
#define RSM_ENV_MAX 64
#define RSM_MSG_MAX 160 /* result message */

/* Command types. Codes are stable on disk and on the wire: append only. */
#define RSM_CMD_MAP(X)                               \
    X(RSM_CMD_NOOP, 0, "noop")                       \
    X(RSM_CMD_MEMBER_PUT, 1, "member_put")           \
    X(RSM_CMD_PIPELINE_CREATE, 2, "pipeline_create") \
    X(RSM_CMD_PIPELINE_UPDATE, 3, "pipeline_update") \
    X(RSM_CMD_PIPELINE_DELETE, 4, "pipeline_delete") \
    X(RSM_CMD_JOB_SUBMIT, 5, "job_submit")           \
    X(RSM_CMD_JOB_CLAIM, 6, "job_claim")             \
    X(RSM_CMD_JOB_START, 7, "job_start")             \
    X(RSM_CMD_JOB_OUTPUT, 8, "job_output")           \
    X(RSM_CMD_JOB_FINISH, 9, "job_finish")           \
    X(RSM_CMD_JOB_CANCEL, 10, "job_cancel")          \
    X(RSM_CMD_NODE_RENEW, 11, "node_renew")          \
    X(RSM_CMD_NODE_EXPIRE, 12, "node_expire")        \
    X(RSM_CMD_PIPELINE_FIRE, 13, "pipeline_fire")    \
    X(RSM_CMD_RUN_MANUAL, 14, "run_manual")          \
    X(RSM_CMD_RUN_RETRY, 15, "run_retry")            \
    X(RSM_CMD_DIGEST, 16, "digest")

enum rsm_cmd_type {
#define RSM__CMD_ENUM(name, code, text) name = code,
    RSM_CMD_MAP(RSM__CMD_ENUM)
#undef RSM__CMD_ENUM
        RSM_CMD__COUNT
};

const char *rsm_cmd_name(unsigned type);

enum rsm_overlap {
    RSM_OVERLAP_ALLOW = 0,
    RSM_OVERLAP_FORBID,
    RSM_OVERLAP_REPLACE
};
enum rsm_catchup { RSM_CATCHUP_NONE = 0, RSM_CATCHUP_LATEST, RSM_CATCHUP_ALL };
enum rsm_kind { RSM_KIND_BATCH = 0, RSM_KIND_SERVICE };

/* A NULL-terminated owned string vector. */
struct rsm_strv
{
    char **v; /* owned; v[n] == NULL */
    unsigned n;
};

struct rsm_kv
{
    char *key;   /* owned */
    char *value; /* owned */
};

/* ------------------------------------------------------------------ jobs
 * docs/jobs.md is the design; docs/state-machine.md the exact rules. */

/* Leases and expiry (docs/jobs.md "Leases and self-fencing"). */
#define RSM_LEASE_GRACE_MS 1000 /* EXPIRE needs clock > until + grace */
#define RSM_LEASE_MIN_MS 100    /* NODE_RENEW lease_ms bounds */
#define RSM_LEASE_MAX_MS (10 * 60 * 1000)

/* Output cap per job: chunks starting in the first HEAD_CAP raw bytes are
 * kept; of the rest, the oldest are dropped while they exceed TAIL_CAP. */
#define RSM_OUTPUT_HEAD_CAP (1u << 20)
#define RSM_OUTPUT_TAIL_CAP (4u << 20)
#define RSM_CHUNK_RAW_MAX (68u * 1024) /* 64 KiB batches + a line */

/* Retention of finished jobs (deleted oldest by (finished_ms, seq)). */
#define RSM_JOBS_MAX_FINISHED 100000u
#define RSM_JOBS_MAX_AGE_MS (7LL * 24 * 60 * 60 * 1000)

#define RSM_RETRY_BACKOFF_CAP_S 3600 /* cap of the exponential backoff */
/* Attempts a job may get beyond retries.max when they end lost (its node
 * died or fenced): a node failure reruns the job even with retries 0. */
#define RSM_LOST_EXTRA_ATTEMPTS 3
#define RSM_JOB_ID_MAX 24 /* buffer size for "j<N>" */

enum rsm_job_state {
    RSM_JOB_PENDING = 0,
    RSM_JOB_CLAIMED,
    RSM_JOB_RUNNING,
    RSM_JOB_RETRY_WAIT,
    RSM_JOB_PAUSED,
    RSM_JOB_SUCCEEDED,
    RSM_JOB_FAILED,
    RSM_JOB_CANCELLED,
    RSM_JOB__STATES
};

/* "pending", "claimed", ...; "unknown" out of range. */
const char *rsm_job_state_name(unsigned state);

/* True for succeeded, failed and cancelled (terminal states). */
bool rsm_job_state_is_finished(unsigned state);

/* Outcome of the last attempt. */
enum rsm_job_end {
    RSM_END_NONE = 0,
    RSM_END_EXITED,       /* exit_code valid */
    RSM_END_SIGNALED,     /* signal valid */
    RSM_END_TIMEOUT,      /* killed at timeout_s */
    RSM_END_CANCELLED,    /* killed on cancel_requested */
    RSM_END_LOST,         /* lease expired (NODE_EXPIRE) */
    RSM_END_SPAWN_FAILED, /* never started */
    RSM_END_FENCED,       /* killed by the node's own fence */
    RSM_END_RELEASED,     /* handed back by its holder before it started */
    RSM_END__COUNT
};

/* "none", "exited", ...; "unknown" out of range. */
const char *rsm_job_end_name(unsigned end);

/* Output streams of a chunk. */
enum rsm_stream { RSM_STREAM_STDOUT = 0, RSM_STREAM_STDERR, RSM_STREAM_KILN };

/* What to run. Owned pointers are released by rsm_job_spec_clear. */
struct rsm_job_spec
{
    struct rsm_strv argv; /* 1..RSM_ARGV_MAX, argv[0] non-empty */
    struct rsm_kv *env;   /* extra environment; owned */
    unsigned n_env;
    struct rsm_kv *tags; /* placement constraints; owned */
    unsigned n_tags;
    uint32_t retries_max; /* retries after the first attempt */
    uint32_t backoff_s;   /* base of the exponential backoff; 0 = none */
    uint32_t timeout_s;   /* 0 = none (enforced by the executor) */
    uint8_t kind;         /* enum rsm_kind */
    /* Pipeline jobs (next issue); 0 / "" for ad-hoc jobs. */
    uint64_t run;                    /* N of r<N> */
    char pipeline[RSM_NAME_MAX + 1]; /* "" or a valid name */
    char target[RSM_NAME_MAX + 1];   /* "" or printable (KILN_TARGET) */
    int64_t scheduled_for_ms;        /* 0 = none */
};

/* A job as stored (docs/jobs.md "Job record"). Borrowed from the FSM. */
struct rsm_job
{
    uint64_t seq; /* N of j<N> */
    struct rsm_job_spec spec;
    uint8_t state;         /* enum rsm_job_state */
    uint32_t attempt;      /* 1-based, current or last attempt */
    uint64_t epoch;        /* fencing token; +1 per granted claim; 0 = never */
    uint64_t node;         /* claim holder, 0 = none */
    uint64_t last_node;    /* node granted the last attempt, 0 = never */
    int64_t not_before_ms; /* FSM time before which no claim (retry_wait) */
    bool cancel_requested; /* set by CANCEL while claimed/running */
    uint8_t end;           /* enum rsm_job_end of the last attempt */
    int32_t exit_code;     /* 0..255, when end == exited */
    int32_t signal;        /* 0..255, when end == signaled */
    int64_t created_ms;    /* FSM clock values; 0 = not yet */
    int64_t claimed_ms;    /* last grant */
    int64_t started_ms;    /* last START */
    int64_t finished_ms;   /* terminal state reached */
    /* Output bookkeeping (all attempts share one stream). */
    uint64_t out_bytes;  /* raw bytes received (offset of the next chunk) */
    uint64_t out_cut;    /* raw bytes dropped by the cap */
    uint32_t out_chunks; /* chunks stored */
    uint64_t next_chunk; /* seq the next JOB_OUTPUT must carry (from 1) */
};

/* One stored output chunk. data is an LZ4 block (LZ4_compress_default
 * format) of raw_len bytes; borrowed from the FSM. */
struct rsm_chunk
{
    uint64_t seq;
    uint64_t offset; /* raw offset of the chunk's first byte */
    uint32_t raw_len;
    uint32_t comp_len;
    uint8_t stream; /* enum rsm_stream */
    const void *data;
};

/* ------------------------------------------------------------------ runs
 * One firing of a pipeline: one job per target. docs/state-machine.md
 * "Runs" has the exact rules, docs/scheduling.md the overview. */

#define RSM_RUN_ID_MAX 24          /* buffer size for "r<N>" */
#define RSM_RUNS_KEEP_FINISHED 200 /* finished runs kept per pipeline */
#define RSM_RUNS_DONE_KEEP 256     /* per-pipeline succeeded/triggered S */

enum rsm_run_state {
    RSM_RUN_RUNNING = 0,
    RSM_RUN_SUCCEEDED,
    RSM_RUN_FAILED,
    RSM_RUN_CANCELLED,
    RSM_RUN_SKIPPED,
    RSM_RUN__STATES
};

/* "running", "succeeded", "failed", "cancelled", "skipped"; "unknown" out
 * of range. */
const char *rsm_run_state_name(unsigned state);

/* True for every state but running. */
bool rsm_run_state_is_finished(unsigned state);

enum rsm_trigger {
    RSM_TRIGGER_SCHEDULE = 0,
    RSM_TRIGGER_AFTER,
    RSM_TRIGGER_MANUAL,
    RSM_TRIGGER_RETRY,
    RSM_TRIGGER__COUNT
};

/* "schedule", "after", "manual", "retry"; "unknown" out of range. */
const char *rsm_trigger_name(unsigned trigger);

/* A run as stored. Borrowed from the FSM. */
struct rsm_run
{
    uint64_t seq;                    /* N of r<N> */
    char pipeline[RSM_NAME_MAX + 1]; /* may no longer exist */
    uint64_t pipeline_version;       /* pipeline version at creation */
    uint8_t trigger;                 /* enum rsm_trigger */
    uint8_t state;                   /* enum rsm_run_state */
    int64_t scheduled_for_ms;        /* the tick (or FSM clock for manual) */
    uint64_t *jobs;                  /* owned: job seqs, in target order */
    unsigned n_jobs;                 /* 0 for skipped runs */
    uint64_t retry_of;               /* run seq retried, 0 = none */
    int64_t created_ms;              /* FSM clock */
    int64_t finished_ms;             /* 0 while running */
};

void rsm_job_spec_clear(struct rsm_job_spec *s);
int rsm_job_spec_copy(struct rsm_job_spec *dst, const struct rsm_job_spec *src);

/* The user-visible pipeline spec (CONTRACT.md POST /v1/pipelines). */
struct rsm_pipeline_spec
{
    char name[RSM_NAME_MAX + 1];
    struct rsm_strv command;             /* argv, n >= 1 */
    char schedule[RSM_SCHEDULE_MAX + 1]; /* "" = none */
    char timezone[RSM_TZ_MAX + 1];       /* "" = UTC */
    struct rsm_strv after;               /* upstream pipeline names */
    uint32_t retries_max;
    uint32_t backoff_s;
    uint32_t timeout_s; /* 0 = none */
    uint8_t overlap;    /* enum rsm_overlap */
    uint8_t catchup;    /* enum rsm_catchup */
    uint8_t kind;       /* enum rsm_kind */
    bool paused;
    struct rsm_strv targets; /* empty: one job */
    struct rsm_kv *tags;     /* placement constraints; owned */
    unsigned n_tags;
    struct rsm_kv *env; /* extra environment; owned */
    unsigned n_env;
};

/* A pipeline as stored: spec plus replicated bookkeeping. */
struct rsm_pipeline
{
    struct rsm_pipeline_spec spec;
    uint64_t version;       /* 1 on create, +1 per update */
    int64_t created_ms;     /* FSM clock at create */
    int64_t updated_ms;     /* FSM clock at last update */
    int64_t fire_cursor_ms; /* last scheduled_for fired (issue: pipelines) */
};

/* A node known to the replicated state (CONTRACT /v1/cluster, leases). */
struct rsm_member
{
    uint64_t id; /* node id == raft id */
    char name[RSM_NAME_MAX + 1];
    char api[24]; /* "a.b.c.d:port" */
    char raft[24];
    char gossip[24];
    int64_t lease_until_ms; /* FSM clock; 0 = no lease yet */
    bool draining;
};

/* One decoded command. Owned pointers are released by rsm_cmd_clear. */
struct rsm_cmd
{
    uint8_t type;                    /* enum rsm_cmd_type */
    int64_t leader_time_ms;          /* stamped by the leader when appended */
    char idem_key[RSM_IDEM_MAX + 1]; /* "" = none */
    union {
        struct rsm_member member_put;
        struct rsm_pipeline_spec pipeline_create;
        struct
        {
            struct rsm_pipeline_spec spec;
            uint64_t expect_version; /* 0 = any */
        } pipeline_update;
        struct
        {
            char name[RSM_NAME_MAX + 1];
        } pipeline_delete;
        struct rsm_job_spec job_submit;
        struct
        {
            uint64_t job; /* seq */
            uint64_t node;
            uint32_t attempt; /* must equal the job's attempt */
        } job_claim;
        struct
        {
            uint64_t job;
            uint64_t epoch;
        } job_start;
        struct
        {
            uint64_t job;
            uint64_t epoch;
            uint64_t seq; /* >= 1; must be the job's next_chunk */
            uint8_t stream;
            uint32_t raw_len; /* 1..RSM_CHUNK_RAW_MAX */
            uint32_t len;     /* 1..LZ4_compressBound(RSM_CHUNK_RAW_MAX) */
            void *data;       /* LZ4 block; owned (malloc) */
        } job_output;
        struct
        {
            uint64_t job;
            uint64_t epoch;
            uint8_t end;       /* enum rsm_job_end, not none */
            int32_t exit_code; /* 0..255 */
            int32_t signal;    /* 0..255 */
        } job_finish;
        struct
        {
            uint64_t job;
        } job_cancel;
        struct
        {
            uint64_t node;
            uint32_t lease_ms; /* RSM_LEASE_MIN_MS..RSM_LEASE_MAX_MS */
        } node_renew;
        struct
        {
            uint64_t node;
        } node_expire;
        struct
        {
            char pipeline[RSM_NAME_MAX + 1];
            int64_t scheduled_for_ms; /* must be > the fire cursor */
            bool skip; /* advance the cursor only (catchup none/latest) */
        } pipeline_fire;
        struct
        {
            char pipeline[RSM_NAME_MAX + 1];
        } run_manual;
        struct
        {
            uint64_t run; /* seq of a failed run */
        } run_retry;
        struct
        {
            /* The proposer's own record of an earlier DIGEST (struct
             * rsm_digest; prev_index 0 = none): compared by every node's
             * runtime with its own record, outside the FSM. */
            uint64_t prev_index;
            uint64_t prev_chain;
            uint64_t prev_state;
        } digest;
    } u;
};

/* The outcome of applying one command (a rejection is a successful apply). */
struct rsm_result
{
    int code; /* 0 or ERR_* (ERR_NOTFOUND, ERR_CONFLICT, ...) */
    char message[RSM_MSG_MAX]; /* human-readable reason when code != 0 */
    uint64_t value;            /* command-specific (e.g. new version) */
    uint64_t index;            /* raft index of the entry */
};

void rsm_cmd_init(struct rsm_cmd *c, uint8_t type);
void rsm_cmd_clear(struct rsm_cmd *c);
void rsm_spec_clear(struct rsm_pipeline_spec *s);
int rsm_spec_copy(struct rsm_pipeline_spec *dst,
                  const struct rsm_pipeline_spec *src);

/* Check a command the way the decoder does (names, lengths, counts, enum
 * ranges): proposers call it before proposing so that a bad command fails
 * at the API instead of applying as a rejection. Returns 0 or ERR_INVALID
 * with a reason in errmsg (ERRMSG_SIZE). */
int rsm_cmd_validate(const struct rsm_cmd *c, char *errmsg);

/* Encode one command as its msgpack envelope
 * [format_version, type, leader_time_ms, idem_key, ...fields]. */
int rsm_cmd_pack(const struct rsm_cmd *c, msgpack_packer *pk);

/* Decode and validate one command object. On error returns ERR_MALFORMED or
 * ERR_VERSION with a reason in errmsg (ERRMSG_SIZE); c is left cleared. */
int rsm_cmd_unpack(const msgpack_object *o, struct rsm_cmd *c, char *errmsg);

/* Encode a batch of commands into ONE raft entry, stamping every command
 * with leader_time_ms. *buf is raft_malloc'd, *len is a multiple of 8
 * (STACK.md pitfall 1); the true length is recoverable from the content. */
int rsm_entry_encode(const struct rsm_cmd *cmds,
                     unsigned n,
                     int64_t leader_time_ms,
                     void **buf,
                     size_t *len);

/* Decode a raw forwarded batch (same format as an entry, time ignored). */
int rsm_entry_decode(const void *buf,
                     size_t len,
                     struct rsm_cmd **cmds,
                     unsigned *n,
                     char *errmsg);
void rsm_cmds_free(struct rsm_cmd *cmds, unsigned n);

struct rsm_fsm; /* defined in rsm_fsm.c */

int rsm_fsm_create(struct rsm_fsm **out);
void rsm_fsm_destroy(struct rsm_fsm *f);

/* Apply one committed entry. Fills results[0..*n_results) (at most max),
 * one per command in the entry. Returns 0 even for malformed entries (they
 * apply as rejections, recorded in the results); non-zero only for ERR_NOMEM
 * or ERR_VERSION (a newer format: the node must stop, not guess). */
int rsm_fsm_apply(struct rsm_fsm *f,
                  uint64_t index,
                  const void *buf,
                  size_t len,
                  struct rsm_result *results,
                  unsigned max,
                  unsigned *n_results);

/* Canonical snapshot: sorted msgpack, LZ4 frame compressed. Identical bytes
 * on every replica that applied the same log. *buf is malloc'd. */
int rsm_fsm_snapshot(const struct rsm_fsm *f, void **buf, size_t *len);

/* Replace the whole state from snapshot bytes. On error the FSM is
 * unchanged. */
int rsm_fsm_restore(struct rsm_fsm *f,
                    const void *buf,
                    size_t len,
                    char *errmsg);

/* ------------------------------------------------------------- digests
 * Divergence detection (docs/state-machine.md "Digests"). The FSM keeps a
 * running chain hash of every entry buffer it applied, part of the
 * replicated state and of snapshots; a DIGEST command records, at its
 * apply, (its entry's index, the chain before that entry, a hash of the
 * canonical state). Comparing records across nodes is the runtime's job
 * (rsm.c), never the FSM's. */

/* Chain of a fresh FSM (before any entry). 0 means "unknown": a state
 * restored from a snapshot written before chains existed; it stays 0. */
#define RSM_CHAIN_SEED 0x6b696c6e63686e31ULL

/* One node's record of one applied DIGEST command. */
struct rsm_digest
{
    uint64_t index; /* raft index of the DIGEST's entry; 0 = none */
    uint64_t chain; /* chain hash before that entry (0 = unknown) */
    uint64_t state; /* rsm_fsm_digest() when the DIGEST applied */
};

/* chain' = hash64(entry bytes, seed chain), never 0; 0 stays 0. */
uint64_t rsm_chain_step(uint64_t chain, const void *buf, size_t len);

/* The chain after the last applied entry. */
uint64_t rsm_fsm_chain(const struct rsm_fsm *f);

/* The record of the last DIGEST applied (index 0 if none yet); carried in
 * snapshots so that a restarted node still knows it. */
struct rsm_digest rsm_fsm_digest_last(const struct rsm_fsm *f);

/* The records carried by the DIGEST commands of the entry applied last
 * (scratch of the last apply, not replicated state): fills at most max,
 * returns the count. */
#define RSM_DIGEST_CARRIED_MAX 4
unsigned rsm_fsm_digest_carried(const struct rsm_fsm *f,
                                struct rsm_digest *out,
                                unsigned max);

/* Read access (borrowed pointers, valid until the next apply/restore). */
int64_t rsm_fsm_clock(const struct rsm_fsm *f);
uint64_t rsm_fsm_last_index(const struct rsm_fsm *f);
/* Hash of the canonical state (hash64, seed 0, of the snapshot encoding
 * without its digest field, streamed: no buffer). O(state): the cost is
 * in docs/state-machine.md "Digests". */
uint64_t rsm_fsm_digest(const struct rsm_fsm *f);
const struct rsm_pipeline *rsm_fsm_pipeline(const struct rsm_fsm *f,
                                            const char *name);
/* Pipelines sorted by name; returns the count, fills at most max. */
unsigned rsm_fsm_pipelines(const struct rsm_fsm *f,
                           const struct rsm_pipeline **out,
                           unsigned max);
unsigned rsm_fsm_pipeline_count(const struct rsm_fsm *f);
const struct rsm_member *rsm_fsm_member(const struct rsm_fsm *f, uint64_t id);
unsigned rsm_fsm_members(const struct rsm_fsm *f,
                         const struct rsm_member **out,
                         unsigned max);

/* ------------------------------------------------------- job accessors
 * Borrowed pointers, valid until the next apply/restore. Listing functions
 * return the number of matching items (which may exceed max) and fill
 * out[0..min(count, max)). */

/* The job j<seq>, or NULL (never submitted, or deleted by retention). */
const struct rsm_job *rsm_fsm_job(const struct rsm_fsm *f, uint64_t seq);

/* "j42" -> 42. Returns 0 or ERR_INVALID (no 'j', no digits, leading zero,
 * trailing bytes, 0, overflow). */
int rsm_job_id_parse(const char *id, uint64_t *seq);
/* 42 -> "j42"; buf holds RSM_JOB_ID_MAX bytes. */
void rsm_job_id_format(uint64_t seq, char *buf);

/* Jobs newest first (descending seq), all of them (state -1) or those in
 * one state. Non-terminal states walk only the unfinished jobs. */
unsigned rsm_fsm_jobs(const struct rsm_fsm *f,
                      int state,
                      const struct rsm_job **out,
                      unsigned max);

/* Jobs a CLAIM could be proposed for, oldest first: state pending, or
 * retry_wait. The FSM grants a retry_wait job only once its not_before_ms
 * <= the FSM clock: the caller compares not_before_ms with its own notion
 * of time (e.g. rsm_fsm_clock or the leader time it expects) and skips the
 * early ones. Cost O(unfinished jobs), independent of finished ones. */
unsigned rsm_fsm_claimable(const struct rsm_fsm *f,
                           const struct rsm_job **out,
                           unsigned max);

/* Claimed and running jobs held by node, by ascending seq. */
unsigned rsm_fsm_jobs_of_node(const struct rsm_fsm *f,
                              uint64_t node,
                              const struct rsm_job **out,
                              unsigned max);

/* The stored output chunks of job seq in order (ascending seq and offset;
 * a gap in offsets is the cut region). 0 for an unknown job. */
unsigned rsm_fsm_job_chunks(const struct rsm_fsm *f,
                            uint64_t seq,
                            const struct rsm_chunk **out,
                            unsigned max);

/* Decompress c into out (c->raw_len bytes). Returns 0 or ERR_MALFORMED. */
int rsm_chunk_decode(const struct rsm_chunk *c, char *out);

/* Number of stored jobs (all states). */
unsigned rsm_fsm_job_count(const struct rsm_fsm *f);

/* Last assigned job number (the next submit gets this + 1). */
uint64_t rsm_fsm_job_seq(const struct rsm_fsm *f);

/* ------------------------------------------------------- run accessors
 * Borrowed pointers, valid until the next apply/restore. Listing functions
 * return the number of matching runs (which may exceed max) and fill
 * out[0..min(count, max)), newest first (descending seq). */

/* The run r<seq>, or NULL (never created, or deleted by retention). */
const struct rsm_run *rsm_fsm_run(const struct rsm_fsm *f, uint64_t seq);

/* "r42" -> 42. Returns 0 or ERR_INVALID (no 'r', no digits, leading zero,
 * trailing bytes, 0, overflow). */
int rsm_run_id_parse(const char *id, uint64_t *seq);
/* 42 -> "r42"; buf holds RSM_RUN_ID_MAX bytes. */
void rsm_run_id_format(uint64_t seq, char *buf);

/* Runs of one pipeline (pipeline != NULL) or of all (NULL). */
unsigned rsm_fsm_runs(const struct rsm_fsm *f,
                      const char *pipeline,
                      const struct rsm_run **out,
                      unsigned max);

/* Runs in state running, of one pipeline or of all (NULL). */
unsigned rsm_fsm_runs_active(const struct rsm_fsm *f,
                             const char *pipeline,
                             const struct rsm_run **out,
                             unsigned max);

/* Number of stored runs; last assigned run number. */
unsigned rsm_fsm_run_count(const struct rsm_fsm *f);
uint64_t rsm_fsm_run_seq(const struct rsm_fsm *f);

#endif /* KILN_RSM_FSM_H_ */
