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

    /* Room for the next issues: runs (by id), jobs (by id, u64 map per
     * STACK.md pitfall 10), claims, output chunks. Add a map + sorted vector
     * per table, its snapshot section after the idempotency keys, and its
     * commands to RSM_CMD_MAP. */
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

/* ====================== end of section FSM core ======================= */

#endif /* KILN_RSM_INT_H_ */
