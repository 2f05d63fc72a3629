/* Unit tests: divergence digests (docs/state-machine.md "Digests"): the
 * DIGEST codec, the entry chain, records across replicas, snapshots, and
 * the runtime's observer (rsm__digest_observe). */
#include <criterion/criterion.h>
#include <lz4frame.h>
#include <raft.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "raft/rsm_fsm.h"
#include "raft/rsm_int.h"
#include "util.h"

static void quiet(void)
{
    log_set_level(LOG_OFF);
}

TestSuite(rsm_digest, .timeout = 60, .init = quiet);

/* ----------------------------------------------------------------- helpers */

static struct rsm_fsm *fsm_new(void)
{
    struct rsm_fsm *f;
    cr_assert_eq(rsm_fsm_create(&f), 0);
    return f;
}

static struct rsm_cmd mk_digest(struct rsm_digest prev)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_DIGEST);
    c.u.digest.prev_index = prev.index;
    c.u.digest.prev_chain = prev.chain;
    c.u.digest.prev_state = prev.state;
    return c;
}

static struct rsm_cmd mk_create(const char *name)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_PIPELINE_CREATE);
    str_copy(c.u.pipeline_create.name, sizeof c.u.pipeline_create.name, name);
    c.u.pipeline_create.command.v = calloc(2, sizeof(char *));
    c.u.pipeline_create.command.v[0] = strdup("/bin/true");
    c.u.pipeline_create.command.n = 1;
    return c;
}

/* A log of entries: every 7th entry is a DIGEST carrying the record the
 * replica that generates the log (the "leader") had, like rsm.c does. */
#define LOG_MAX 200
struct tlog
{
    void *buf[LOG_MAX];
    size_t len[LOG_MAX];
    unsigned n;
};

static void entry(struct tlog *l, struct rsm_cmd *c, int64_t t)
{
    cr_assert_lt(l->n, LOG_MAX);
    cr_assert_eq(rsm_entry_encode(c, 1, t, &l->buf[l->n], &l->len[l->n]), 0);
    cr_assert_eq(l->len[l->n] % 8, 0);
    rsm_cmd_clear(c);
    l->n++;
}

static void apply_entry(struct rsm_fsm *f,
                        uint64_t index,
                        const void *buf,
                        size_t len,
                        struct rsm_result *res)
{
    unsigned n = 0;
    cr_assert_eq(rsm_fsm_apply(f, index, buf, len, res, 1, &n), 0);
}

/* Build n entries, applying them to the leader FSM as they are made. */
static void gen_log(struct tlog *l, struct rsm_fsm *leader, unsigned n)
{
    struct rsm_result res;
    memset(l, 0, sizeof *l);
    for (unsigned i = 0; i < n; i++) {
        struct rsm_cmd c;
        char name[32];
        if (i % 7 == 6) {
            c = mk_digest(rsm_fsm_digest_last(leader));
        } else {
            snprintf(name, sizeof name, "p%u", i);
            c = mk_create(name);
        }
        entry(l, &c, 1000 + i);
        apply_entry(leader, i + 1, l->buf[i], l->len[i], &res);
    }
}

static void free_log(struct tlog *l)
{
    for (unsigned i = 0; i < l->n; i++) {
        raft_free(l->buf[i]);
    }
}

/* Feed a log to f, recording every DIGEST's record and the observer's
 * verdict. */
static void replay(struct rsm_fsm *f,
                   const struct tlog *l,
                   unsigned from,
                   unsigned to,
                   struct rsm__digest_obs *o)
{
    struct rsm_result res;
    for (unsigned i = from; i < to; i++) {
        apply_entry(f, i + 1, l->buf[i], l->len[i], &res);
        if (o != NULL) {
            rsm__digest_observe(o, f, i + 1);
        }
    }
}

/* ------------------------------------------------------------------ codec */

Test(rsm_digest, codec_round_trip)
{
    struct rsm_digest prev = {1234, 0x0123456789abcdefULL, UINT64_MAX};
    struct rsm_cmd c = mk_digest(prev);
    struct rsm_cmd *out = NULL;
    unsigned n = 0;
    void *buf;
    size_t len;
    char errmsg[ERRMSG_SIZE];
    char err2[ERRMSG_SIZE];

    cr_assert_eq(rsm_cmd_validate(&c, errmsg), 0, "%s", errmsg);
    cr_assert_str_eq(rsm_cmd_name(RSM_CMD_DIGEST), "digest");
    cr_assert_eq(RSM_CMD_DIGEST, 16);
    cr_assert_eq(rsm_entry_encode(&c, 1, 99, &buf, &len), 0);
    cr_assert_eq(len % 8, 0);
    cr_assert_eq(rsm_entry_decode(buf, len, &out, &n, errmsg), 0, "%s", errmsg);
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0].type, RSM_CMD_DIGEST);
    cr_assert_eq(out[0].u.digest.prev_index, 1234);
    cr_assert_eq(out[0].u.digest.prev_chain, 0x0123456789abcdefULL);
    cr_assert_eq(out[0].u.digest.prev_state, UINT64_MAX);
    rsm_cmds_free(out, n);

    /* Every truncation of the entry is refused, never misread. */
    for (size_t cut = 0; cut < len; cut++) {
        struct rsm_cmd *o2 = NULL;
        unsigned n2 = 0;
        int rv = rsm_entry_decode(buf, cut, &o2, &n2, err2);
        if (rv == 0) {
            /* Only zero padding may go. */
            cr_assert_eq(n2, 1);
            cr_assert_eq(o2[0].u.digest.prev_state, UINT64_MAX);
            rsm_cmds_free(o2, n2);
        } else {
            cr_assert_eq(rv, ERR_MALFORMED, "cut %zu: %d", cut, rv);
        }
    }
    raft_free(buf);
}

/* Hand-made envelopes: wrong field count or type are malformed. */
static int unpack_bytes(const msgpack_sbuffer *sb, struct rsm_cmd *c)
{
    msgpack_unpacked u;
    char errmsg[ERRMSG_SIZE];
    int rv;
    msgpack_unpacked_init(&u);
    cr_assert_eq(rsm__mp_unpack(sb->data, sb->size, &u, errmsg), 0);
    rv = rsm_cmd_unpack(&u.data, c, errmsg);
    msgpack_unpacked_destroy(&u);
    return rv;
}

Test(rsm_digest, codec_rejects_bad_shapes)
{
    for (unsigned v = 0; v < 5; v++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        struct rsm_cmd c;
        unsigned fields = v == 0 ? 3 : v == 1 ? 2 : v == 2 ? 4 : 3;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 4 + fields);
        msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
        msgpack_pack_uint8(&pk, RSM_CMD_DIGEST);
        msgpack_pack_int64(&pk, 5);
        msgpack_pack_str(&pk, 0);
        for (unsigned i = 0; i < fields; i++) {
            if (v == 3 && i == 1) {
                msgpack_pack_int64(&pk, -1); /* negative */
            } else if (v == 4 && i == 2) {
                msgpack_pack_str(&pk, 1);
                msgpack_pack_str_body(&pk, "x", 1);
            } else {
                msgpack_pack_uint64(&pk, 7 + i);
            }
        }
        if (v == 0) {
            cr_assert_eq(unpack_bytes(&sb, &c), 0);
            cr_assert_eq(c.u.digest.prev_index, 7);
            cr_assert_eq(c.u.digest.prev_state, 9);
            rsm_cmd_clear(&c);
        } else {
            cr_assert_eq(unpack_bytes(&sb, &c), ERR_MALFORMED, "variant %u", v);
        }
        msgpack_sbuffer_destroy(&sb);
    }
}

/* ------------------------------------------------------------------ chain */

Test(rsm_digest, replicas_agree_on_chain_and_records)
{
    static struct tlog l;
    struct rsm_fsm *leader = fsm_new();
    struct rsm_fsm *f[3];
    struct rsm__digest_obs o[3];
    gen_log(&l, leader, 100);
    memset(o, 0, sizeof o);
    for (int i = 0; i < 3; i++) {
        f[i] = fsm_new();
        replay(f[i], &l, 0, l.n, &o[i]);
    }
    cr_assert_neq(rsm_fsm_chain(leader), RSM_CHAIN_SEED);
    cr_assert_eq(rsm_fsm_digest_last(leader).index, 98); /* 7k-1 <= 100 */
    for (int i = 0; i < 3; i++) {
        struct rsm_digest a = rsm_fsm_digest_last(f[i]);
        struct rsm_digest b = rsm_fsm_digest_last(leader);
        cr_assert_eq(rsm_fsm_chain(f[i]), rsm_fsm_chain(leader));
        cr_assert_eq(a.index, b.index);
        cr_assert_eq(a.chain, b.chain);
        cr_assert_eq(a.state, b.state);
        cr_assert_eq(rsm_fsm_digest(f[i]), rsm_fsm_digest(leader));
        /* 14 DIGESTs, the first carried no record: 13 comparisons. */
        cr_assert_eq(o[i].checks, 13);
        cr_assert(!o[i].diverged);
        cr_assert_eq(o[i].checked_index, 91);
        cr_assert_eq(o[i].since, 2);
    }
    /* The chain is the running hash of the entry bytes. */
    {
        uint64_t h = RSM_CHAIN_SEED;
        for (unsigned i = 0; i < l.n; i++) {
            h = rsm_chain_step(h, l.buf[i], l.len[i]);
        }
        cr_assert_eq(h, rsm_fsm_chain(f[0]));
    }
    for (int i = 0; i < 3; i++) {
        rsm_fsm_destroy(f[i]);
    }
    rsm_fsm_destroy(leader);
    free_log(&l);
}

/* One entry differing only in its zero padding decodes to the same state
 * but a different chain: the chain sees what the state hash cannot (a
 * damaged entry, RISKS row 1), and the observer flags it. */
Test(rsm_digest, one_differing_entry_changes_the_chain)
{
    static struct tlog l;
    struct rsm_fsm *leader = fsm_new();
    struct rsm_fsm *good = fsm_new();
    struct rsm_fsm *bad = fsm_new();
    struct rsm__digest_obs og, ob;
    unsigned k = 10; /* a pipeline_create entry, before the DIGEST at 14 */
    unsigned char *b;
    gen_log(&l, leader, 30);
    memset(&og, 0, sizeof og);
    memset(&ob, 0, sizeof ob);
    b = l.buf[k];
    cr_assert_eq(b[l.len[k] - 1], 0, "entry %u has no padding", k);
    replay(good, &l, 0, l.n, &og);
    b[l.len[k] - 1] = 0x5a;
    replay(bad, &l, 0, l.n, &ob);
    cr_assert_eq(rsm_fsm_digest(bad), rsm_fsm_digest(good));
    cr_assert_neq(rsm_fsm_chain(bad), rsm_fsm_chain(good));
    cr_assert(!og.diverged);
    cr_assert(ob.diverged);
    /* The DIGEST at 21 carries the leader's record for 14, whose chain
     * (before entry 14) already includes the damaged entry 11. */
    cr_assert_eq(ob.detected_at, 21);
    cr_assert_eq(ob.bad_own.index, 14);
    cr_assert_eq(ob.bad_carried.index, 14);
    cr_assert_neq(ob.bad_own.chain, ob.bad_carried.chain);
    cr_assert_eq(ob.bad_own.state, ob.bad_carried.state);
    rsm_fsm_destroy(leader);
    rsm_fsm_destroy(good);
    rsm_fsm_destroy(bad);
    free_log(&l);
}

/* A replica whose state drifted (the test hook) records a different state
 * hash at the next DIGEST and sees the leader's record differ at the one
 * after. */
Test(rsm_digest, state_drift_is_flagged)
{
    static struct tlog l;
    struct rsm_fsm *leader = fsm_new();
    struct rsm_fsm *f = fsm_new();
    struct rsm__digest_obs o;
    gen_log(&l, leader, 40);
    memset(&o, 0, sizeof o);
    replay(f, &l, 0, 16, &o);
    cr_assert(!o.diverged);
    rsm__fsm_test_perturb(f, 0, 1);
    replay(f, &l, 16, l.n, &o);
    cr_assert(o.diverged);
    cr_assert_eq(o.detected_at, 28); /* carries the record of 21 */
    cr_assert_eq(o.bad_own.index, 21);
    cr_assert_eq(o.bad_own.chain, o.bad_carried.chain);
    cr_assert_neq(o.bad_own.state, o.bad_carried.state);
    rsm_fsm_destroy(leader);
    rsm_fsm_destroy(f);
    free_log(&l);
}

/* -------------------------------------------------------------- snapshots */

Test(rsm_digest, snapshot_carries_chain_and_record)
{
    static struct tlog l;
    struct rsm_fsm *leader = fsm_new();
    struct rsm_fsm *g = fsm_new();
    struct rsm__digest_obs o;
    char errmsg[ERRMSG_SIZE];
    void *b;
    size_t len;
    gen_log(&l, leader, 60);
    {
        struct rsm_fsm *h = fsm_new();
        replay(h, &l, 0, 30, NULL);
        cr_assert_eq(rsm_fsm_snapshot(h, &b, &len), 0);
        cr_assert_eq(rsm_fsm_restore(g, b, len, errmsg), 0, "%s", errmsg);
        cr_assert_eq(rsm_fsm_chain(g), rsm_fsm_chain(h));
        cr_assert_eq(rsm_fsm_digest_last(g).index, 28);
        cr_assert_eq(rsm_fsm_digest_last(g).state,
                     rsm_fsm_digest_last(h).state);
        cr_assert_eq(rsm_fsm_digest_last(g).chain,
                     rsm_fsm_digest_last(h).chain);
        free(b);
        rsm_fsm_destroy(h);
    }
    /* The restored replica continues the chain and, seeded with the
     * restored record, checks the very next DIGEST (35 carries 28). */
    memset(&o, 0, sizeof o);
    replay(g, &l, 30, l.n, &o);
    cr_assert_eq(rsm_fsm_chain(g), rsm_fsm_chain(leader));
    cr_assert_eq(rsm_fsm_digest(g), rsm_fsm_digest(leader));
    cr_assert_eq(o.checks, 4); /* 35, 42, 49, 56 */
    cr_assert(!o.diverged);
    /* A damaged digest field is refused. */
    {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_unpacked u;
        LZ4F_preferences_t prefs;
        struct rsm_fsm *x = fsm_new();
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        cr_assert_eq(rsm__snap_pack_pk(leader, &pk, true), 0);
        msgpack_unpacked_init(&u);
        cr_assert_eq(rsm__mp_unpack(sb.data, sb.size, &u, errmsg), 0);
        cr_assert_eq(u.data.via.array.size, 12);
        /* a record index past the snapshot's last index */
        u.data.via.array.ptr[11].via.array.ptr[1].via.u64 = 1000;
        msgpack_sbuffer_clear(&sb);
        msgpack_pack_object(&pk, u.data);
        memset(&prefs, 0, sizeof prefs);
        len = LZ4F_compressFrameBound(sb.size, &prefs);
        b = malloc(len);
        prefs.frameInfo.contentSize = sb.size;
        len = LZ4F_compressFrame(b, len, sb.data, sb.size, &prefs);
        cr_assert(!LZ4F_isError(len));
        cr_assert_eq(rsm_fsm_restore(x, b, len, errmsg), ERR_MALFORMED);
        cr_assert_eq(rsm_fsm_chain(x), RSM_CHAIN_SEED);
        free(b);
        msgpack_unpacked_destroy(&u);
        msgpack_sbuffer_destroy(&sb);
        rsm_fsm_destroy(x);
    }
    rsm_fsm_destroy(leader);
    rsm_fsm_destroy(g);
    free_log(&l);
}

/* A snapshot written before digests (11 fields) still restores; its
 * chain is unknown (0) and stays so, chain comparisons are skipped but
 * state comparisons still run. */
Test(rsm_digest, old_snapshot_restores_with_unknown_chain)
{
    static struct tlog l;
    struct rsm_fsm *leader = fsm_new();
    struct rsm_fsm *h = fsm_new();
    struct rsm_fsm *g = fsm_new();
    struct rsm__digest_obs o;
    msgpack_sbuffer sb;
    char errmsg[ERRMSG_SIZE];
    gen_log(&l, leader, 60);
    replay(h, &l, 0, 30, NULL);
    msgpack_sbuffer_init(&sb);
    cr_assert_eq(rsm__snap_pack(h, &sb), 0); /* the 11-field form */
    cr_assert_eq(rsm_fsm_restore(g, sb.data, sb.size, errmsg), 0, "%s", errmsg);
    cr_assert_eq(rsm_fsm_chain(g), 0);
    cr_assert_eq(rsm_fsm_digest_last(g).index, 0);
    cr_assert_eq(rsm_fsm_digest(g), rsm_fsm_digest(h));
    memset(&o, 0, sizeof o);
    replay(g, &l, 30, l.n, &o);
    cr_assert_eq(rsm_fsm_chain(g), 0);
    cr_assert_eq(rsm_fsm_digest(g), rsm_fsm_digest(leader));
    /* 35 carries 28 (unknown here); 42, 49, 56 are checked. */
    cr_assert_eq(o.checks, 3);
    cr_assert(!o.diverged);
    /* ... and a state drift is still caught. */
    rsm__fsm_test_perturb(g, 0, 1);
    {
        struct rsm_cmd c = mk_digest(rsm_fsm_digest_last(leader));
        struct rsm_cmd d;
        struct tlog l2;
        struct rsm_result res;
        memset(&l2, 0, sizeof l2);
        entry(&l2, &c, 5000);
        apply_entry(leader, 61, l2.buf[0], l2.len[0], &res);
        apply_entry(g, 61, l2.buf[0], l2.len[0], &res);
        rsm__digest_observe(&o, g, 61);
        cr_assert(!o.diverged); /* 56 was recorded before the drift */
        d = mk_digest(rsm_fsm_digest_last(leader));
        entry(&l2, &d, 5001);
        apply_entry(g, 62, l2.buf[1], l2.len[1], &res);
        rsm__digest_observe(&o, g, 62);
        cr_assert(o.diverged);
        cr_assert_eq(o.bad_own.chain, 0);
        free_log(&l2);
    }
    msgpack_sbuffer_destroy(&sb);
    rsm_fsm_destroy(leader);
    rsm_fsm_destroy(h);
    rsm_fsm_destroy(g);
    free_log(&l);
}

/* ---------------------------------------------------------------- observer */

Test(rsm_digest, observer_skips_unknown_records)
{
    struct rsm_fsm *f = fsm_new();
    struct rsm__digest_obs o;
    struct rsm_result res;
    struct tlog l;
    /* A DIGEST carrying a record this node never made (index 3, before
     * its history): unchecked, not diverged. */
    struct rsm_cmd c = mk_digest((struct rsm_digest){3, 1, 2});
    memset(&o, 0, sizeof o);
    memset(&l, 0, sizeof l);
    entry(&l, &c, 10);
    apply_entry(f, 9, l.buf[0], l.len[0], &res);
    cr_assert_eq(res.value, rsm_fsm_digest_last(f).state);
    rsm__digest_observe(&o, f, 9);
    cr_assert_eq(o.checks, 0);
    cr_assert(!o.diverged);
    cr_assert_eq(o.since, 0);
    cr_assert_eq(o.n, 1);
    cr_assert_eq(o.ring[0].index, 9);
    cr_assert_eq(o.ring[0].chain, RSM_CHAIN_SEED);
    free_log(&l);
    rsm_fsm_destroy(f);
}
