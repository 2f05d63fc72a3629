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
    X(RSM_CMD_PIPELINE_DELETE, 4, "pipeline_delete")

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

/* Read access (borrowed pointers, valid until the next apply/restore). */
int64_t rsm_fsm_clock(const struct rsm_fsm *f);
uint64_t rsm_fsm_last_index(const struct rsm_fsm *f);
uint64_t rsm_fsm_digest(const struct rsm_fsm *f); /* hash of canonical state */
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

#endif /* KILN_RSM_FSM_H_ */
