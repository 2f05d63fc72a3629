/* Internal declarations shared by the files of src/raft/ (rsm_ prefix,
 * double underscore: not for use outside this directory). */
#ifndef KILN_RSM_INT_H_
#define KILN_RSM_INT_H_

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "map.h"
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

    /* Room for the next issues: runs (by id). Add a map + sorted vector
     * per table, its snapshot section after the jobs, and its commands to
     * RSM_CMD_MAP. */
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

/* Canonical (uncompressed) snapshot bytes into sbuf. */
int rsm__snap_pack(const struct rsm_fsm *f, msgpack_sbuffer *sbuf);

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

/* ====================== end of section FSM core ======================= */

#endif /* KILN_RSM_INT_H_ */
