/* Canonical snapshots of the FSM: sorted msgpack, LZ4 frame compressed,
 * and a validating restore that swaps state only on success. */
#include <lz4frame.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "raft/rsm_int.h"
#include "util.h"

/* version, clock, last_index, members, pipelines, idem, job_seq, jobs,
 * run_seq, run_groups, runs[, digest] */
#define SNAP_FIELDS_DIGEST 12 /* what rsm_fsm_snapshot writes */
#define SNAP_FIELDS 11        /* canonical state without the digest field */
#define DIGEST_FIELDS 4       /* chain, last_index, last_chain, last_state */
#define SNAP_FIELDS_NO_RUNS 8 /* written before runs existed: no runs */
#define SNAP_FIELDS_NO_JOBS 6 /* written before jobs existed: no jobs */
#define PIPELINE_FIELDS 5     /* spec, version, created, updated, fire_cursor */
#define IDEM_FIELDS 7         /* key, type, time, code, message, value, index */

static int pack_pipeline(const struct rsm_pipeline *p, msgpack_packer *pk)
{
    if (msgpack_pack_array(pk, PIPELINE_FIELDS) != 0 ||
        rsm__spec_pack(&p->spec, pk) != 0 ||
        msgpack_pack_uint64(pk, p->version) != 0 ||
        msgpack_pack_int64(pk, p->created_ms) != 0 ||
        msgpack_pack_int64(pk, p->updated_ms) != 0 ||
        msgpack_pack_int64(pk, p->fire_cursor_ms) != 0) {
        return ERR_NOMEM;
    }
    return 0;
}

static int pack_idem(const struct rsm__idem *e, msgpack_packer *pk)
{
    if (msgpack_pack_array(pk, IDEM_FIELDS) != 0 ||
        rsm__pack_str(pk, e->key) != 0 ||
        msgpack_pack_uint8(pk, e->type) != 0 ||
        msgpack_pack_int64(pk, e->time_ms) != 0 ||
        msgpack_pack_uint32(pk, (uint32_t)e->result.code) != 0 ||
        rsm__pack_str(pk, e->result.message) != 0 ||
        msgpack_pack_uint64(pk, e->result.value) != 0 ||
        msgpack_pack_uint64(pk, e->result.index) != 0) {
        return ERR_NOMEM;
    }
    return 0;
}

int rsm__snap_pack(const struct rsm_fsm *f, msgpack_sbuffer *sbuf)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sbuf, msgpack_sbuffer_write);
    return rsm__snap_pack_pk(f, &pk, false);
}

int rsm__snap_pack_pk(const struct rsm_fsm *f,
                      msgpack_packer *pkp,
                      bool with_digest)
{
    msgpack_packer pk = *pkp; /* a packer is {data, callback}: no state */
    unsigned n_idem = f->idem_order.n - f->idem_head;
    int rv;
    if (msgpack_pack_array(
            &pk, with_digest ? SNAP_FIELDS_DIGEST : SNAP_FIELDS) != 0 ||
        msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION) != 0 ||
        msgpack_pack_int64(&pk, f->clock) != 0 ||
        msgpack_pack_uint64(&pk, f->last_index) != 0) {
        return ERR_NOMEM;
    }
    /* Every table in its sorted order; never a map's iteration order. */
    if (msgpack_pack_array(&pk, f->members_by_id.n) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < f->members_by_id.n; i++) {
        if (rsm__member_pack(f->members_by_id.v[i], &pk) != 0) {
            return ERR_NOMEM;
        }
    }
    if (msgpack_pack_array(&pk, f->pipelines_by_name.n) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < f->pipelines_by_name.n; i++) {
        if (pack_pipeline(f->pipelines_by_name.v[i], &pk) != 0) {
            return ERR_NOMEM;
        }
    }
    if (msgpack_pack_array(&pk, n_idem) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = f->idem_head; i < f->idem_order.n; i++) {
        if (pack_idem(f->idem_order.v[i], &pk) != 0) {
            return ERR_NOMEM;
        }
    }
    if (rsm__jobs_pack(f, &pk) != 0) { /* job counter, jobs sorted by seq */
        return ERR_NOMEM;
    }
    rv = rsm__runs_pack(f, &pk); /* run counter, groups, runs by seq */
    if (rv != 0 || !with_digest) {
        return rv;
    }
    /* Appended last, so that the prefix is the canonical state. */
    if (msgpack_pack_array(&pk, DIGEST_FIELDS) != 0 ||
        msgpack_pack_uint64(&pk, f->chain) != 0 ||
        msgpack_pack_uint64(&pk, f->digest_last.index) != 0 ||
        msgpack_pack_uint64(&pk, f->digest_last.chain) != 0 ||
        msgpack_pack_uint64(&pk, f->digest_last.state) != 0) {
        return ERR_NOMEM;
    }
    return 0;
}

/* Fixed preferences: same input, same bytes (for a given liblz4). */
static void lz4_prefs(LZ4F_preferences_t *prefs, size_t size)
{
    memset(prefs, 0, sizeof *prefs);
    prefs->frameInfo.blockSizeID = LZ4F_max1MB;
    prefs->frameInfo.blockMode = LZ4F_blockLinked;
    prefs->frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
    prefs->frameInfo.frameType = LZ4F_frame;
    prefs->frameInfo.contentSize = size;
    prefs->compressionLevel = 0;
    prefs->autoFlush = 0;
}

int rsm_fsm_snapshot(const struct rsm_fsm *f, void **buf, size_t *len)
{
    msgpack_sbuffer sbuf;
    LZ4F_preferences_t prefs;
    size_t bound;
    size_t n;
    int rv = 0;
    *buf = NULL;
    *len = 0;
    msgpack_sbuffer_init(&sbuf);
    {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
        rv = rsm__snap_pack_pk(f, &pk, true);
    }
    if (rv != 0) {
        goto out;
    }
    lz4_prefs(&prefs, sbuf.size);
    bound = LZ4F_compressFrameBound(sbuf.size, &prefs);
    *buf = malloc(bound);
    if (*buf == NULL) {
        rv = ERR_NOMEM;
        goto out;
    }
    n = LZ4F_compressFrame(*buf, bound, sbuf.data, sbuf.size, &prefs);
    if (LZ4F_isError(n)) {
        free(*buf);
        *buf = NULL;
        rv = ERR_NOMEM;
        goto out;
    }
    *len = n;
out:
    msgpack_sbuffer_destroy(&sbuf);
    return rv;
}

/* Decompress a whole LZ4 frame (content size required) into *out. */
static int decompress(const void *buf,
                      size_t len,
                      char **out,
                      size_t *out_len,
                      char *errmsg)
{
    LZ4F_dctx *dctx = NULL;
    LZ4F_frameInfo_t info;
    size_t src_len = len;
    size_t hint;
    size_t size;
    size_t dst_off = 0;
    size_t src_off;
    char *dst = NULL;
    int rv = ERR_MALFORMED;
    *out = NULL;
    if (LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION))) {
        return ERR_NOMEM;
    }
    memset(&info, 0, sizeof info);
    hint = LZ4F_getFrameInfo(dctx, &info, buf, &src_len);
    if (LZ4F_isError(hint)) {
        errmsg_printf(errmsg, "snapshot: not an LZ4 frame: %s",
                      LZ4F_getErrorName(hint));
        goto out;
    }
    if (info.contentSize == 0 || info.contentSize > RSM_SNAPSHOT_MAX) {
        errmsg_printf(errmsg, "snapshot: bad content size %llu",
                      (unsigned long long)info.contentSize);
        goto out;
    }
    size = (size_t)info.contentSize;
    dst = malloc(size);
    if (dst == NULL) {
        rv = ERR_NOMEM;
        goto out;
    }
    src_off = src_len;
    while (hint != 0) {
        size_t d = size - dst_off;
        size_t s = len - src_off;
        if (s == 0) {
            errmsg_printf(errmsg, "snapshot: truncated LZ4 frame");
            goto out;
        }
        hint = LZ4F_decompress(dctx, dst + dst_off, &d,
                               (const char *)buf + src_off, &s, NULL);
        if (LZ4F_isError(hint)) {
            errmsg_printf(errmsg, "snapshot: %s", LZ4F_getErrorName(hint));
            goto out;
        }
        dst_off += d;
        src_off += s;
        if (d == 0 && s == 0) {
            errmsg_printf(errmsg, "snapshot: LZ4 frame does not progress");
            goto out;
        }
    }
    if (dst_off != size || src_off != len) {
        errmsg_printf(errmsg, "snapshot: size mismatch or trailing bytes");
        goto out;
    }
    *out = dst;
    *out_len = size;
    dst = NULL;
    rv = 0;
out:
    free(dst);
    LZ4F_freeDecompressionContext(dctx);
    return rv;
}

static int load_members(struct rsm_fsm *f,
                        const msgpack_object *o,
                        char *errmsg)
{
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        errmsg_printf(errmsg, "members: expected an array");
        return ERR_MALFORMED;
    }
    for (unsigned i = 0; i < o->via.array.size; i++) {
        struct rsm_member tmp;
        struct rsm_member *m;
        int rv = rsm__member_unpack(&o->via.array.ptr[i], &tmp, errmsg);
        if (rv != 0) {
            errmsg_wrapf(errmsg, "members[%u]", i);
            return rv;
        }
        if (f->members_by_id.n > 0 &&
            ((const struct rsm_member *)
                 f->members_by_id.v[f->members_by_id.n - 1])
                    ->id >= tmp.id) {
            errmsg_printf(errmsg, "members[%u]: not sorted by id", i);
            return ERR_MALFORMED;
        }
        for (unsigned j = 0; j < f->members_by_id.n; j++) {
            if (strcmp(((const struct rsm_member *)f->members_by_id.v[j])->name,
                       tmp.name) == 0) {
                errmsg_printf(errmsg, "members[%u]: duplicate name", i);
                return ERR_MALFORMED;
            }
        }
        m = malloc(sizeof *m);
        if (m == NULL) {
            return ERR_NOMEM;
        }
        *m = tmp;
        rv = rsm__fsm_put_member(f, m);
        if (rv != 0) {
            free(m);
            return rv == ERR_NOMEM ? rv : ERR_MALFORMED;
        }
    }
    return 0;
}

static int load_pipelines(struct rsm_fsm *f,
                          const msgpack_object *o,
                          char *errmsg)
{
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        errmsg_printf(errmsg, "pipelines: expected an array");
        return ERR_MALFORMED;
    }
    for (unsigned i = 0; i < o->via.array.size; i++) {
        const msgpack_object *po = &o->via.array.ptr[i];
        const msgpack_object *pf;
        struct rsm_pipeline *p;
        int rv;
        if (po->type != MSGPACK_OBJECT_ARRAY ||
            po->via.array.size != PIPELINE_FIELDS) {
            errmsg_printf(errmsg, "pipelines[%u]: expected %d fields", i,
                          PIPELINE_FIELDS);
            return ERR_MALFORMED;
        }
        pf = po->via.array.ptr;
        p = calloc(1, sizeof *p);
        if (p == NULL) {
            return ERR_NOMEM;
        }
        rv = rsm__spec_unpack(&pf[0], &p->spec, errmsg);
        if (rv == 0 &&
            (!rsm__get_u64(&pf[1], UINT64_MAX, &p->version) ||
             p->version == 0 || !rsm__get_i64(&pf[2], &p->created_ms) ||
             !rsm__get_i64(&pf[3], &p->updated_ms) ||
             !rsm__get_i64(&pf[4], &p->fire_cursor_ms))) {
            errmsg_printf(errmsg, "bad bookkeeping field");
            rv = ERR_MALFORMED;
        }
        if (rv == 0 && f->pipelines_by_name.n > 0 &&
            strcmp(((const struct rsm_pipeline *)
                        f->pipelines_by_name.v[f->pipelines_by_name.n - 1])
                       ->spec.name,
                   p->spec.name) >= 0) {
            errmsg_printf(errmsg, "not sorted by name");
            rv = ERR_MALFORMED;
        }
        if (rv == 0) {
            rv = rsm__fsm_put_pipeline(f, p);
        }
        if (rv != 0) {
            rsm_spec_clear(&p->spec);
            free(p);
            if (rv != ERR_NOMEM) {
                errmsg_wrapf(errmsg, "pipelines[%u]", i);
                rv = ERR_MALFORMED;
            }
            return rv;
        }
    }
    /* Every dependency must exist. (Cycles cannot be checked cheaply here
     * without the apply-time search; an acyclic graph is an apply invariant
     * and the snapshot came from an apply.) */
    for (unsigned i = 0; i < f->pipelines_by_name.n; i++) {
        const struct rsm_pipeline *p = f->pipelines_by_name.v[i];
        for (unsigned j = 0; j < p->spec.after.n; j++) {
            if (map_get_str(&f->pipelines, p->spec.after.v[j]) == NULL ||
                strcmp(p->spec.after.v[j], p->spec.name) == 0) {
                errmsg_printf(errmsg, "pipelines: '%s' has a bad dependency",
                              p->spec.name);
                return ERR_MALFORMED;
            }
        }
    }
    return 0;
}

static int load_idem(struct rsm_fsm *f, const msgpack_object *o, char *errmsg)
{
    const struct rsm__idem *prev = NULL;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > RSM_IDEM_KEEP) {
        errmsg_printf(errmsg, "idem: expected an array of at most %d",
                      RSM_IDEM_KEEP);
        return ERR_MALFORMED;
    }
    for (unsigned i = 0; i < o->via.array.size; i++) {
        const msgpack_object *eo = &o->via.array.ptr[i];
        const msgpack_object *ef;
        struct rsm__idem *e;
        uint64_t type;
        uint64_t code;
        int rv;
        if (eo->type != MSGPACK_OBJECT_ARRAY ||
            eo->via.array.size != IDEM_FIELDS) {
            errmsg_printf(errmsg, "idem[%u]: expected %d fields", i,
                          IDEM_FIELDS);
            return ERR_MALFORMED;
        }
        ef = eo->via.array.ptr;
        e = calloc(1, sizeof *e);
        if (e == NULL) {
            return ERR_NOMEM;
        }
        if (!rsm__get_str(&ef[0], RSM_IDEM_MAX, e->key) || e->key[0] == '\0' ||
            !rsm__valid_idem(e->key) ||
            !rsm__get_u64(&ef[1], RSM_CMD__COUNT - 1, &type) ||
            !rsm__get_i64(&ef[2], &e->time_ms) || e->time_ms > f->clock ||
            !rsm__get_u64(&ef[3], ERR__COUNT - 1, &code) ||
            !rsm__get_str(&ef[4], RSM_MSG_MAX - 1, e->result.message) ||
            !rsm__get_u64(&ef[5], UINT64_MAX, &e->result.value) ||
            !rsm__get_u64(&ef[6], UINT64_MAX, &e->result.index) ||
            (prev != NULL && (prev->time_ms > e->time_ms ||
                              (prev->time_ms == e->time_ms &&
                               strcmp(prev->key, e->key) >= 0)))) {
            free(e);
            errmsg_printf(errmsg, "idem[%u]: bad field or order", i);
            return ERR_MALFORMED;
        }
        e->type = (uint8_t)type;
        e->result.code = (int)code;
        rv = rsm__fsm_push_idem(f, e);
        if (rv != 0) {
            free(e);
            return rv == ERR_NOMEM ? rv : ERR_MALFORMED;
        }
        prev = e;
    }
    return 0;
}

/* [chain, last_index, last_chain, last_state]; absent in snapshots
 * written before digests: the chain is then unknown (0). */
static int load_digest(struct rsm_fsm *f, const msgpack_object *o, char *errmsg)
{
    const msgpack_object *d;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != DIGEST_FIELDS) {
        errmsg_printf(errmsg, "digest: expected %d fields", DIGEST_FIELDS);
        return ERR_MALFORMED;
    }
    d = o->via.array.ptr;
    if (!rsm__get_u64(&d[0], UINT64_MAX, &f->chain) ||
        !rsm__get_u64(&d[1], f->last_index, &f->digest_last.index) ||
        !rsm__get_u64(&d[2], UINT64_MAX, &f->digest_last.chain) ||
        !rsm__get_u64(&d[3], UINT64_MAX, &f->digest_last.state)) {
        errmsg_printf(errmsg, "digest: bad field or index past the snapshot");
        return ERR_MALFORMED;
    }
    return 0;
}

static int load(struct rsm_fsm *f, const msgpack_object *o, char *errmsg)
{
    const msgpack_object *fl;
    uint64_t version;
    int rv;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0) {
        errmsg_printf(errmsg, "snapshot: expected an array");
        return ERR_MALFORMED;
    }
    fl = o->via.array.ptr;
    if (!rsm__get_u64(&fl[0], UINT32_MAX, &version) || version == 0) {
        errmsg_printf(errmsg, "snapshot: bad format version");
        return ERR_MALFORMED;
    }
    if (version > RSM_FORMAT_VERSION) {
        errmsg_printf(errmsg,
                      "snapshot: format version %llu is newer than this "
                      "node's %d",
                      (unsigned long long)version, RSM_FORMAT_VERSION);
        return ERR_VERSION;
    }
    if (o->via.array.size != SNAP_FIELDS_DIGEST &&
        o->via.array.size != SNAP_FIELDS &&
        o->via.array.size != SNAP_FIELDS_NO_RUNS &&
        o->via.array.size != SNAP_FIELDS_NO_JOBS) {
        errmsg_printf(errmsg, "snapshot: expected %d fields",
                      SNAP_FIELDS_DIGEST);
        return ERR_MALFORMED;
    }
    if (!rsm__get_i64(&fl[1], &f->clock) ||
        !rsm__get_u64(&fl[2], UINT64_MAX, &f->last_index)) {
        errmsg_printf(errmsg, "snapshot: bad clock or index");
        return ERR_MALFORMED;
    }
    rv = load_members(f, &fl[3], errmsg);
    if (rv == 0) {
        rv = load_pipelines(f, &fl[4], errmsg);
    }
    if (rv == 0) {
        rv = load_idem(f, &fl[5], errmsg);
    }
    if (rv == 0 && o->via.array.size >= SNAP_FIELDS_NO_RUNS) {
        rv = rsm__jobs_load(f, &fl[6], &fl[7], errmsg);
    }
    if (rv == 0 && o->via.array.size >= SNAP_FIELDS) {
        rv = rsm__runs_load(f, &fl[8], &fl[9], &fl[10], errmsg);
    }
    if (rv == 0) {
        if (o->via.array.size == SNAP_FIELDS_DIGEST) {
            rv = load_digest(f, &fl[11], errmsg);
        } else {
            f->chain = 0; /* written before chains: unknown from here on */
        }
    }
    if (rv == ERR_MALFORMED) {
        errmsg_wrapf(errmsg, "snapshot");
    }
    return rv;
}

int rsm_fsm_restore(struct rsm_fsm *f,
                    const void *buf,
                    size_t len,
                    char *errmsg)
{
    struct rsm_fsm tmp;
    msgpack_unpacked u;
    char *raw = NULL;
    size_t raw_len = 0;
    int rv;
    rsm__fsm_init(&tmp);
    rsm__fsm_set_job_retention(&tmp, f->jobs_max_finished, f->jobs_max_age_ms);
    msgpack_unpacked_init(&u);
    if (buf == NULL || len == 0) {
        errmsg_printf(errmsg, "snapshot: empty");
        rv = ERR_MALFORMED;
        goto out;
    }
    /* raft_uv recognises the LZ4 frame magic of the snapshots we hand it
     * and decompresses them itself when it loads one from disk (restart)
     * or sends one to a lagging follower (InstallSnapshot): restore then
     * receives the canonical msgpack directly. Accept both forms. */
    if (len >= 4 && memcmp(buf, "\x04\x22\x4d\x18", 4) == 0) {
        rv = decompress(buf, len, &raw, &raw_len, errmsg);
        if (rv != 0) {
            goto out;
        }
    } else {
        raw = malloc(len);
        if (raw == NULL) {
            rv = ERR_NOMEM;
            goto out;
        }
        memcpy(raw, buf, len);
        raw_len = len;
    }
    rv = rsm__mp_unpack(raw, raw_len, &u, errmsg);
    if (rv != 0) {
        goto out;
    }
    rv = load(&tmp, &u.data, errmsg);
    if (rv != 0) {
        goto out;
    }
    /* Success: swap in the new state, free the old one. */
    rsm__fsm_clear(f);
    *f = tmp;
    rsm__fsm_init(&tmp);
out:
    rsm__fsm_clear(&tmp);
    msgpack_unpacked_destroy(&u);
    free(raw);
    return rv;
}
