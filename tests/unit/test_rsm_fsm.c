/* Unit tests: FSM apply rules, idempotency, determinism, snapshots. */
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

TestSuite(rsm_fsm, .timeout = 60, .init = quiet);

/* ----------------------------------------------------------------- helpers */

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    cr_assert_not_null(d);
    return d;
}

/* after: NULL-terminated list. */
static void spec_init(struct rsm_pipeline_spec *s,
                      const char *name,
                      const char *const *after)
{
    unsigned n = 0;
    memset(s, 0, sizeof *s);
    str_copy(s->name, sizeof s->name, name);
    s->command.v = calloc(3, sizeof *s->command.v);
    s->command.v[0] = xstrdup("/bin/echo");
    s->command.v[1] = xstrdup(name);
    s->command.n = 2;
    while (after != NULL && after[n] != NULL) {
        n++;
    }
    s->after.v = calloc(n + 1, sizeof *s->after.v);
    for (unsigned i = 0; i < n; i++) {
        s->after.v[i] = xstrdup(after[i]);
    }
    s->after.n = n;
}

static struct rsm_cmd mk_create(const char *name, const char *const *after)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_PIPELINE_CREATE);
    spec_init(&c.u.pipeline_create, name, after);
    return c;
}

static struct rsm_cmd mk_update(const char *name,
                                const char *const *after,
                                uint64_t expect)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_PIPELINE_UPDATE);
    spec_init(&c.u.pipeline_update.spec, name, after);
    c.u.pipeline_update.expect_version = expect;
    return c;
}

static struct rsm_cmd mk_delete(const char *name)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_PIPELINE_DELETE);
    str_copy(c.u.pipeline_delete.name, RSM_NAME_MAX + 1, name);
    return c;
}

static struct rsm_cmd mk_member(uint64_t id, const char *name)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_MEMBER_PUT);
    c.u.member_put.id = id;
    str_copy(c.u.member_put.name, RSM_NAME_MAX + 1, name);
    snprintf(c.u.member_put.raft, sizeof c.u.member_put.raft, "127.0.0.1:%u",
             9000 + (unsigned)(id % 1000));
    return c;
}

/* Encode cmds (consumed) as one entry at index and apply it. */
static void apply_n(struct rsm_fsm *f,
                    uint64_t index,
                    int64_t time,
                    struct rsm_cmd *cmds,
                    unsigned n,
                    struct rsm_result *res)
{
    void *buf;
    size_t len;
    unsigned n_res = 0;
    cr_assert_eq(rsm_entry_encode(cmds, n, time, &buf, &len), 0);
    cr_assert_eq(rsm_fsm_apply(f, index, buf, len, res, n, &n_res), 0);
    cr_assert_eq(n_res, n);
    cr_assert_eq(rsm_fsm_last_index(f), index);
    raft_free(buf);
    for (unsigned i = 0; i < n; i++) {
        cr_assert_eq(res[i].index, index);
        rsm_cmd_clear(&cmds[i]);
    }
}

/* Apply one command; returns its result. */
static struct rsm_result apply1(struct rsm_fsm *f,
                                uint64_t index,
                                int64_t time,
                                struct rsm_cmd c)
{
    struct rsm_result res;
    void *buf;
    size_t len;
    unsigned n_res = 0;
    cr_assert_eq(rsm_entry_encode(&c, 1, time, &buf, &len), 0);
    cr_assert_eq(rsm_fsm_apply(f, index, buf, len, &res, 1, &n_res), 0);
    cr_assert_eq(n_res, 1);
    cr_assert_eq(rsm_fsm_last_index(f), index);
    raft_free(buf);
    rsm_cmd_clear(&c);
    return res;
}

static struct rsm_fsm *fsm_new(void)
{
    struct rsm_fsm *f;
    cr_assert_eq(rsm_fsm_create(&f), 0);
    return f;
}

static void snap(const struct rsm_fsm *f, void **buf, size_t *len)
{
    cr_assert_eq(rsm_fsm_snapshot(f, buf, len), 0);
    cr_assert_gt(*len, 4);
    /* LZ4 frame magic, as raft expects of snapshots. */
    cr_assert_eq(memcmp(*buf, "\x04\x22\x4d\x18", 4), 0);
}

/* ------------------------------------------------------------------- rules */

Test(rsm_fsm, create_update_delete)
{
    struct rsm_fsm *f = fsm_new();
    struct rsm_result r;
    const struct rsm_pipeline *p;
    r = apply1(f, 1, 1000, mk_create("a", NULL));
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.value, 1);
    p = rsm_fsm_pipeline(f, "a");
    cr_assert_not_null(p);
    cr_assert_eq(p->version, 1);
    cr_assert_eq(p->created_ms, 1000);
    cr_assert_str_eq(p->spec.command.v[1], "a");

    r = apply1(f, 2, 1000, mk_create("a", NULL));
    cr_assert_eq(r.code, ERR_CONFLICT);
    cr_assert_str_eq(r.message, "pipeline 'a' already exists");

    r = apply1(f, 3, 2000, mk_update("a", NULL, 0));
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.value, 2);
    p = rsm_fsm_pipeline(f, "a");
    cr_assert_eq(p->version, 2);
    cr_assert_eq(p->created_ms, 1000);
    cr_assert_eq(p->updated_ms, 2000);

    r = apply1(f, 4, 2000, mk_update("a", NULL, 1));
    cr_assert_eq(r.code, ERR_CONFLICT);
    cr_assert(strstr(r.message, "version 2") != NULL, "%s", r.message);
    cr_assert_eq(rsm_fsm_pipeline(f, "a")->version, 2);
    r = apply1(f, 5, 2000, mk_update("a", NULL, 2));
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.value, 3);

    r = apply1(f, 6, 2000, mk_update("zz", NULL, 0));
    cr_assert_eq(r.code, ERR_NOTFOUND);
    cr_assert_str_eq(r.message, "pipeline 'zz' not found");

    r = apply1(f, 7, 2000, mk_delete("a"));
    cr_assert_eq(r.code, 0);
    cr_assert_null(rsm_fsm_pipeline(f, "a"));
    cr_assert_eq(rsm_fsm_pipeline_count(f), 0);
    r = apply1(f, 8, 2000, mk_delete("a"));
    cr_assert_eq(r.code, ERR_NOTFOUND);
    rsm_fsm_destroy(f);
}

Test(rsm_fsm, listing_is_sorted)
{
    static const char *const names[] = {"m", "b", "z", "a", "k"};
    struct rsm_fsm *f = fsm_new();
    const struct rsm_pipeline *out[8];
    for (unsigned i = 0; i < ARRAY_SIZE(names); i++) {
        cr_assert_eq(apply1(f, i + 1, 1, mk_create(names[i], NULL)).code, 0);
    }
    cr_assert_eq(rsm_fsm_pipelines(f, out, 3), 5);
    cr_assert_str_eq(out[0]->spec.name, "a");
    cr_assert_str_eq(out[2]->spec.name, "k");
    cr_assert_eq(rsm_fsm_pipelines(f, out, 8), 5);
    cr_assert_str_eq(out[4]->spec.name, "z");
    rsm_fsm_destroy(f);
}

Test(rsm_fsm, after_unknown_and_cycles)
{
    static const char *const self[] = {"a", NULL};
    static const char *const on_a[] = {"a", NULL};
    static const char *const on_b[] = {"b", NULL};
    static const char *const on_c[] = {"c", NULL};
    static const char *const on_y[] = {"y", NULL};
    struct rsm_fsm *f = fsm_new();
    struct rsm_result r;
    uint64_t digest;

    r = apply1(f, 1, 1, mk_create("a", self));
    cr_assert_eq(r.code, ERR_INVALID);
    cr_assert_str_eq(r.message, "after: cycle a -> a");
    cr_assert_null(rsm_fsm_pipeline(f, "a"));

    r = apply1(f, 2, 1, mk_create("a", on_y));
    cr_assert_eq(r.code, ERR_INVALID);
    cr_assert_str_eq(r.message, "after: unknown pipeline 'y'");

    cr_assert_eq(apply1(f, 3, 1, mk_create("a", NULL)).code, 0);
    cr_assert_eq(apply1(f, 4, 1, mk_create("b", on_a)).code, 0);
    cr_assert_eq(apply1(f, 5, 1, mk_create("c", on_b)).code, 0);

    digest = rsm_fsm_digest(f);
    r = apply1(f, 6, 1, mk_update("a", on_b, 0));
    cr_assert_eq(r.code, ERR_INVALID);
    cr_assert_str_eq(r.message, "after: cycle a -> b -> a");
    r = apply1(f, 7, 1, mk_update("a", on_c, 0));
    cr_assert_eq(r.code, ERR_INVALID);
    cr_assert_str_eq(r.message, "after: cycle a -> c -> b -> a");
    r = apply1(f, 8, 1, mk_update("b", on_b, 0));
    cr_assert_eq(r.code, ERR_INVALID);
    cr_assert_str_eq(r.message, "after: cycle b -> b");
    /* Rejections change nothing but the index. */
    cr_assert_eq(rsm_fsm_pipeline(f, "a")->version, 1);
    cr_assert_eq(rsm_fsm_pipeline(f, "a")->spec.after.n, 0);
    {
        /* Only the index moved: rewinding it restores the digest. */
        cr_assert_neq(rsm_fsm_digest(f), digest);
        f->last_index = 5;
        cr_assert_eq(rsm_fsm_digest(f), digest);
        f->last_index = 8;
    }
    /* A legal re-wiring is accepted: c after a (drops the b edge). */
    r = apply1(f, 9, 1, mk_update("c", on_a, 0));
    cr_assert_eq(r.code, 0, "%s", r.message);
    rsm_fsm_destroy(f);
}

Test(rsm_fsm, delete_with_dependents)
{
    static const char *const on_a[] = {"a", NULL};
    struct rsm_fsm *f = fsm_new();
    struct rsm_result r;
    cr_assert_eq(apply1(f, 1, 1, mk_create("a", NULL)).code, 0);
    cr_assert_eq(apply1(f, 2, 1, mk_create("c", on_a)).code, 0);
    cr_assert_eq(apply1(f, 3, 1, mk_create("b", on_a)).code, 0);
    r = apply1(f, 4, 1, mk_delete("a"));
    cr_assert_eq(r.code, ERR_CONFLICT);
    cr_assert_str_eq(r.message, "pipeline 'a' is needed by: b, c");
    cr_assert_not_null(rsm_fsm_pipeline(f, "a"));
    cr_assert_eq(apply1(f, 5, 1, mk_delete("b")).code, 0);
    cr_assert_eq(apply1(f, 6, 1, mk_delete("c")).code, 0);
    cr_assert_eq(apply1(f, 7, 1, mk_delete("a")).code, 0);
    rsm_fsm_destroy(f);
}

Test(rsm_fsm, members)
{
    struct rsm_fsm *f = fsm_new();
    struct rsm_result r;
    const struct rsm_member *out[4];
    struct rsm_cmd c;
    r = apply1(f, 1, 1, mk_member(30, "n3"));
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.value, 1);
    cr_assert_eq(apply1(f, 2, 1, mk_member(10, "n1")).code, 0);
    r = apply1(f, 3, 1, mk_member(20, "n1"));
    cr_assert_eq(r.code, ERR_CONFLICT);
    cr_assert_str_eq(r.message, "node name 'n1' is taken by node 10");
    c = mk_member(10, "n1-renamed");
    c.u.member_put.draining = true;
    r = apply1(f, 4, 1, c);
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.value, 0);
    cr_assert_str_eq(rsm_fsm_member(f, 10)->name, "n1-renamed");
    cr_assert(rsm_fsm_member(f, 10)->draining);
    cr_assert_null(rsm_fsm_member(f, 20));
    cr_assert_eq(rsm_fsm_members(f, out, 4), 2);
    cr_assert_eq(out[0]->id, 10);
    cr_assert_eq(out[1]->id, 30);
    rsm_fsm_destroy(f);
}

Test(rsm_fsm, clock_is_monotonic)
{
    struct rsm_fsm *f = fsm_new();
    struct rsm_cmd c;
    cr_assert_eq(rsm_fsm_clock(f), 0);
    apply1(f, 1, 5000, mk_create("a", NULL));
    cr_assert_eq(rsm_fsm_clock(f), 5000);
    /* An older leader time (a new leader with a slower clock). */
    apply1(f, 2, 3000, mk_create("b", NULL));
    cr_assert_eq(rsm_fsm_clock(f), 5000);
    cr_assert_eq(rsm_fsm_pipeline(f, "b")->created_ms, 5000);
    rsm_cmd_init(&c, RSM_CMD_NOOP);
    apply1(f, 3, 7000, c);
    cr_assert_eq(rsm_fsm_clock(f), 7000);
    rsm_fsm_destroy(f);
}

/* ------------------------------------------------------------- idempotency */

Test(rsm_fsm, idempotent_retry_returns_stored_result)
{
    struct rsm_fsm *f = fsm_new();
    struct rsm_result r1, r2, r3;
    struct rsm_cmd c;
    c = mk_create("a", NULL);
    str_copy(c.idem_key, sizeof c.idem_key, "req-1");
    r1 = apply1(f, 10, 100, c);
    cr_assert_eq(r1.code, 0);
    cr_assert_eq(r1.index, 10);
    c = mk_create("a", NULL);
    str_copy(c.idem_key, sizeof c.idem_key, "req-1");
    r2 = apply1(f, 11, 200, c);
    cr_assert_eq(r2.code, 0, "%s", r2.message); /* not "already exists" */
    cr_assert_eq(r2.index, 10);
    cr_assert_eq(r2.value, r1.value);
    cr_assert_eq(rsm_fsm_pipeline_count(f), 1);
    cr_assert_eq(rsm_fsm_pipeline(f, "a")->version, 1);
    cr_assert_eq(rsm_fsm_last_index(f), 11);

    /* A stored rejection is returned as is. */
    c = mk_delete("nope");
    str_copy(c.idem_key, sizeof c.idem_key, "req-2");
    r1 = apply1(f, 12, 300, c);
    cr_assert_eq(r1.code, ERR_NOTFOUND);
    cr_assert_eq(apply1(f, 13, 300, mk_create("nope", NULL)).code, 0);
    c = mk_delete("nope");
    str_copy(c.idem_key, sizeof c.idem_key, "req-2");
    r2 = apply1(f, 14, 300, c);
    cr_assert_eq(r2.code, ERR_NOTFOUND);
    cr_assert_eq(r2.index, 12);
    cr_assert_not_null(rsm_fsm_pipeline(f, "nope"));

    /* The same key on another command type is a conflict. */
    c = mk_delete("a");
    str_copy(c.idem_key, sizeof c.idem_key, "req-1");
    r3 = apply1(f, 15, 300, c);
    cr_assert_eq(r3.code, ERR_CONFLICT);
    cr_assert_not_null(rsm_fsm_pipeline(f, "a"));

    /* Two identical commands in one entry apply once. */
    {
        struct rsm_cmd two[2];
        struct rsm_result res[2];
        two[0] = mk_create("dup", NULL);
        two[1] = mk_create("dup", NULL);
        str_copy(two[0].idem_key, sizeof two[0].idem_key, "k");
        str_copy(two[1].idem_key, sizeof two[1].idem_key, "k");
        apply_n(f, 16, 400, two, 2, res);
        cr_assert_eq(res[0].code, 0);
        cr_assert_eq(res[1].code, 0);
    }
    rsm_fsm_destroy(f);
}

Test(rsm_fsm, idem_table_is_bounded)
{
    enum { BATCH = 500, TOTAL = RSM_IDEM_KEEP + 1500 };
    struct rsm_fsm *f = fsm_new();
    static struct rsm_cmd cmds[BATCH];
    static struct rsm_result res[BATCH];
    uint64_t index = 0;
    struct rsm_cmd c;
    struct rsm_result r;
    for (unsigned k = 0; k < TOTAL; k += BATCH) {
        for (unsigned i = 0; i < BATCH; i++) {
            rsm_cmd_init(&cmds[i], RSM_CMD_NOOP);
            snprintf(cmds[i].idem_key, sizeof cmds[i].idem_key, "k%06u", k + i);
        }
        index++;
        apply_n(f, index, 1000 + (int64_t)index, cmds, BATCH, res);
        cr_assert_leq(map_count(&f->idem), RSM_IDEM_KEEP);
    }
    cr_assert_eq(map_count(&f->idem), RSM_IDEM_KEEP);
    /* The oldest 1500 keys are gone, the rest kept. */
    cr_assert_null(map_get_str(&f->idem, "k000000"));
    cr_assert_null(map_get_str(&f->idem, "k001499"));
    cr_assert_not_null(map_get_str(&f->idem, "k001500"));
    cr_assert_not_null(map_get_str(&f->idem, "k011499"));

    /* A key older than 24 h by the FSM clock is pruned on the next insert;
     * a pruned key applies again. */
    c = mk_create("p", NULL);
    str_copy(c.idem_key, sizeof c.idem_key, "old");
    cr_assert_eq(apply1(f, ++index, 2000000, c).code, 0);
    c = mk_delete("p");
    cr_assert_eq(apply1(f, ++index, 2000000, c).code, 0);
    rsm_cmd_init(&c, RSM_CMD_NOOP);
    str_copy(c.idem_key, sizeof c.idem_key, "later");
    apply1(f, ++index, 2000000 + RSM_IDEM_TTL_MS + 1, c);
    cr_assert_null(map_get_str(&f->idem, "old"));
    cr_assert_eq(map_count(&f->idem), 1);
    c = mk_create("p", NULL);
    str_copy(c.idem_key, sizeof c.idem_key, "old");
    r = apply1(f, ++index, 2000000 + RSM_IDEM_TTL_MS + 2, c);
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.index, index);
    cr_assert_not_null(rsm_fsm_pipeline(f, "p"));
    rsm_fsm_destroy(f);
}

/* -------------------------------------------------------- malformed input */

Test(rsm_fsm, malformed_entries_are_noops)
{
    struct rsm_fsm *f = fsm_new();
    struct rsm_result res[4];
    unsigned n = 9;
    static const unsigned char junk[16] = {0xc1, 1, 2, 3};
    uint64_t d;
    cr_assert_eq(apply1(f, 1, 10, mk_create("a", NULL)).code, 0);
    d = rsm_fsm_digest(f);
    cr_assert_eq(rsm_fsm_apply(f, 2, junk, sizeof junk, res, 4, &n), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(res[0].code, ERR_MALFORMED);
    cr_assert_eq(res[0].index, 2);
    cr_assert_neq(res[0].message[0], '\0');
    cr_assert_eq(rsm_fsm_last_index(f), 2);
    cr_assert_neq(rsm_fsm_digest(f), d);
    cr_assert_eq(rsm_fsm_apply(f, 3, NULL, 0, res, 4, &n), 0);
    cr_assert_eq(rsm_fsm_last_index(f), 3);
    cr_assert_eq(rsm_fsm_apply(f, 4, junk, sizeof junk, res, 0, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(rsm_fsm_last_index(f), 4);

    /* One bad command among good ones: only it is rejected. */
    {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        struct rsm_cmd c1 = mk_create("x", NULL);
        struct rsm_cmd c2 = mk_create("y", NULL);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 3);
        msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
        msgpack_pack_int64(&pk, 50);
        msgpack_pack_array(&pk, 3);
        rsm_cmd_pack(&c1, &pk);
        msgpack_pack_str(&pk, 3);
        msgpack_pack_str_body(&pk, "bad", 3);
        rsm_cmd_pack(&c2, &pk);
        cr_assert_eq(rsm_fsm_apply(f, 5, sb.data, sb.size, res, 4, &n), 0);
        cr_assert_eq(n, 3);
        cr_assert_eq(res[0].code, 0);
        cr_assert_eq(res[1].code, ERR_MALFORMED);
        cr_assert_eq(res[2].code, 0);
        cr_assert_not_null(rsm_fsm_pipeline(f, "x"));
        cr_assert_not_null(rsm_fsm_pipeline(f, "y"));
        msgpack_sbuffer_destroy(&sb);
        rsm_cmd_clear(&c1);
        rsm_cmd_clear(&c2);
    }
    rsm_fsm_destroy(f);
}

Test(rsm_fsm, newer_version_stops_without_advancing)
{
    struct rsm_fsm *f = fsm_new();
    struct rsm_result res[2];
    unsigned n = 0;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct rsm_cmd c = mk_create("x", NULL);
    apply1(f, 1, 1, mk_create("a", NULL));
    /* Newer entry. */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION + 1);
    msgpack_pack_int64(&pk, 50);
    msgpack_pack_array(&pk, 0);
    cr_assert_eq(rsm_fsm_apply(f, 2, sb.data, sb.size, res, 2, &n),
                 ERR_VERSION);
    cr_assert_eq(rsm_fsm_last_index(f), 1);
    msgpack_sbuffer_destroy(&sb);
    /* A current entry holding a good command then a newer one: nothing of
     * it applies. */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
    msgpack_pack_int64(&pk, 50);
    msgpack_pack_array(&pk, 2);
    rsm_cmd_pack(&c, &pk);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION + 1);
    msgpack_pack_uint8(&pk, 77);
    msgpack_pack_int64(&pk, 50);
    msgpack_pack_str(&pk, 0);
    cr_assert_eq(rsm_fsm_apply(f, 2, sb.data, sb.size, res, 2, &n),
                 ERR_VERSION);
    cr_assert_eq(rsm_fsm_last_index(f), 1);
    cr_assert_null(rsm_fsm_pipeline(f, "x"));
    msgpack_sbuffer_destroy(&sb);
    rsm_cmd_clear(&c);
    rsm_fsm_destroy(f);
}

/* ----------------------------------------------------- determinism / logs */

static const char *const pool[] = {"a", "b", "c", "d", "e", "f", "g", "h"};

/* A seeded random log of entries (some garbage, some with older times,
 * repeated idempotency keys). */
struct log
{
    void *buf[400];
    size_t len[400];
    unsigned n;
};

static void gen_log(struct log *l, uint64_t seed, unsigned n)
{
    struct prng p;
    int64_t t = 1000;
    prng_seed(&p, seed);
    l->n = n;
    for (unsigned e = 0; e < n; e++) {
        struct rsm_cmd cmds[6];
        unsigned nc = 1 + (unsigned)prng_below(&p, 6);
        if (prng_below(&p, 25) == 0) {
            unsigned char *junk = raft_malloc(24);
            for (unsigned i = 0; i < 24; i++) {
                junk[i] = (unsigned char)prng_next(&p);
            }
            l->buf[e] = junk;
            l->len[e] = 24;
            continue;
        }
        for (unsigned i = 0; i < nc; i++) {
            const char *name = pool[prng_below(&p, ARRAY_SIZE(pool))];
            const char *after[3] = {NULL, NULL, NULL};
            unsigned na = (unsigned)prng_below(&p, 3);
            for (unsigned k = 0; k < na; k++) {
                after[k] = pool[prng_below(&p, ARRAY_SIZE(pool))];
            }
            if (na == 2 && strcmp(after[0], after[1]) == 0) {
                after[1] = NULL;
            }
            switch (prng_below(&p, 5)) {
                case 0:
                    cmds[i] = mk_create(name, after);
                    break;
                case 1:
                    cmds[i] = mk_update(name, after, prng_below(&p, 3));
                    break;
                case 2:
                    cmds[i] = mk_delete(name);
                    break;
                case 3:
                    cmds[i] = mk_member(1 + prng_below(&p, 5), name);
                    break;
                default:
                    cmds[i] = mk_create(name, NULL);
                    break;
            }
            if (prng_below(&p, 3) == 0) {
                snprintf(cmds[i].idem_key, sizeof cmds[i].idem_key, "key-%u",
                         (unsigned)prng_below(&p, 40));
            }
        }
        /* Times mostly rise, sometimes step back (leader change). */
        t += (int64_t)prng_below(&p, 5000) - 1000;
        if (t < 0) {
            t = 0;
        }
        cr_assert_eq(rsm_entry_encode(cmds, nc, t, &l->buf[e], &l->len[e]), 0);
        for (unsigned i = 0; i < nc; i++) {
            rsm_cmd_clear(&cmds[i]);
        }
    }
}

static void free_log(struct log *l)
{
    for (unsigned e = 0; e < l->n; e++) {
        raft_free(l->buf[e]);
    }
}

static void replay(struct rsm_fsm *f,
                   const struct log *l,
                   unsigned from,
                   unsigned to)
{
    struct rsm_result res[8];
    for (unsigned e = from; e < to; e++) {
        unsigned n;
        cr_assert_eq(rsm_fsm_apply(f, e + 1, l->buf[e], l->len[e], res, 8, &n),
                     0);
    }
}

Test(rsm_fsm, three_replicas_identical_snapshots)
{
    static struct log l;
    struct rsm_fsm *f[3];
    void *b[3];
    size_t len[3];
    gen_log(&l, 42, 300);
    for (int i = 0; i < 3; i++) {
        f[i] = fsm_new();
        replay(f[i], &l, 0, l.n);
        snap(f[i], &b[i], &len[i]);
    }
    cr_assert_gt(rsm_fsm_pipeline_count(f[0]), 0);
    cr_assert_gt(map_count(&f[0]->idem), 0);
    for (int i = 1; i < 3; i++) {
        cr_assert_eq(len[i], len[0]);
        cr_assert_eq(memcmp(b[i], b[0], len[0]), 0);
        cr_assert_eq(rsm_fsm_digest(f[i]), rsm_fsm_digest(f[0]));
    }
    /* A fourth replica that restores a mid-log snapshot and applies the
     * rest ends identical too. */
    {
        struct rsm_fsm *g = fsm_new();
        struct rsm_fsm *h = fsm_new();
        void *mid;
        size_t mid_len;
        void *end;
        size_t end_len;
        char errmsg[ERRMSG_SIZE];
        replay(h, &l, 0, 150);
        snap(h, &mid, &mid_len);
        cr_assert_eq(rsm_fsm_restore(g, mid, mid_len, errmsg), 0, "%s", errmsg);
        cr_assert_eq(rsm_fsm_last_index(g), 150);
        replay(g, &l, 150, l.n);
        snap(g, &end, &end_len);
        cr_assert_eq(end_len, len[0]);
        cr_assert_eq(memcmp(end, b[0], len[0]), 0);
        free(mid);
        free(end);
        rsm_fsm_destroy(g);
        rsm_fsm_destroy(h);
    }
    /* A different log gives a different digest. */
    {
        static struct log l2;
        struct rsm_fsm *g = fsm_new();
        gen_log(&l2, 43, 300);
        replay(g, &l2, 0, l2.n);
        cr_assert_neq(rsm_fsm_digest(g), rsm_fsm_digest(f[0]));
        rsm_fsm_destroy(g);
        free_log(&l2);
    }
    for (int i = 0; i < 3; i++) {
        free(b[i]);
        rsm_fsm_destroy(f[i]);
    }
    free_log(&l);
}

/* --------------------------------------------------------------- snapshots */

static struct rsm_fsm *populated(void)
{
    static struct log l;
    struct rsm_fsm *f = fsm_new();
    struct rsm_cmd c = mk_member(7, "node-7");
    gen_log(&l, 7, 120);
    replay(f, &l, 0, l.n);
    free_log(&l);
    apply1(f, 500, 999999, c);
    return f;
}

Test(rsm_fsm, snapshot_restore_round_trip)
{
    struct rsm_fsm *f = populated();
    struct rsm_fsm *g = fsm_new();
    void *b1, *b2;
    size_t l1, l2;
    char errmsg[ERRMSG_SIZE];
    const struct rsm_pipeline *pf[16], *pg[16];
    unsigned n;
    snap(f, &b1, &l1);
    /* Restore over a non-empty state replaces it entirely. */
    apply1(g, 1, 1, mk_create("zzz-only-in-g", NULL));
    cr_assert_eq(rsm_fsm_restore(g, b1, l1, errmsg), 0, "%s", errmsg);
    cr_assert_null(rsm_fsm_pipeline(g, "zzz-only-in-g"));
    snap(g, &b2, &l2);
    cr_assert_eq(l1, l2);
    cr_assert_eq(memcmp(b1, b2, l1), 0);
    cr_assert_eq(rsm_fsm_digest(f), rsm_fsm_digest(g));
    cr_assert_eq(rsm_fsm_clock(f), rsm_fsm_clock(g));
    cr_assert_eq(rsm_fsm_last_index(g), 500);
    n = rsm_fsm_pipelines(f, pf, 16);
    cr_assert_eq(rsm_fsm_pipelines(g, pg, 16), n);
    for (unsigned i = 0; i < n && i < 16; i++) {
        cr_assert_str_eq(pf[i]->spec.name, pg[i]->spec.name);
        cr_assert_eq(pf[i]->version, pg[i]->version);
        cr_assert_eq(pf[i]->created_ms, pg[i]->created_ms);
        cr_assert_eq(pf[i]->spec.after.n, pg[i]->spec.after.n);
    }
    cr_assert_str_eq(rsm_fsm_member(g, 7)->name, "node-7");
    /* Idempotency keys survive: the same retry answers the same. */
    cr_assert_eq(map_count(&f->idem), map_count(&g->idem));
    free(b1);
    free(b2);
    rsm_fsm_destroy(f);
    rsm_fsm_destroy(g);
}

Test(rsm_fsm, empty_snapshot_round_trip)
{
    struct rsm_fsm *f = fsm_new();
    struct rsm_fsm *g = fsm_new();
    void *b;
    size_t l;
    char errmsg[ERRMSG_SIZE];
    snap(f, &b, &l);
    cr_assert_eq(rsm_fsm_restore(g, b, l, errmsg), 0, "%s", errmsg);
    cr_assert_eq(rsm_fsm_digest(f), rsm_fsm_digest(g));
    free(b);
    rsm_fsm_destroy(f);
    rsm_fsm_destroy(g);
}

static void assert_restore_fails(struct rsm_fsm *g,
                                 const void *buf,
                                 size_t len,
                                 uint64_t digest,
                                 int expect)
{
    char errmsg[ERRMSG_SIZE] = "";
    int rv = rsm_fsm_restore(g, buf, len, errmsg);
    if (expect != 0) {
        cr_assert_eq(rv, expect, "len %zu: %s", len, errmsg);
    } else {
        cr_assert(rv == ERR_MALFORMED || rv == ERR_VERSION, "rv %d", rv);
    }
    cr_assert_neq(errmsg[0], '\0');
    cr_assert_eq(rsm_fsm_digest(g), digest);
}

Test(rsm_fsm, corrupt_snapshots_leave_state_intact)
{
    struct rsm_fsm *f = populated();
    struct rsm_fsm *g = fsm_new();
    void *b;
    size_t l;
    uint64_t d;
    struct prng p;
    apply1(g, 1, 1, mk_create("keep-me", NULL));
    d = rsm_fsm_digest(g);
    snap(f, &b, &l);
    /* Every truncation. */
    for (size_t cut = 0; cut < l; cut++) {
        void *copy = malloc(cut + 1);
        memcpy(copy, b, cut);
        assert_restore_fails(g, cut ? copy : NULL, cut, d, 0);
        free(copy);
    }
    /* Random corruptions (the LZ4 content checksum or the validator). */
    prng_seed(&p, 3);
    for (int i = 0; i < 2000; i++) {
        unsigned char *copy = malloc(l);
        memcpy(copy, b, l);
        copy[prng_below(&p, l)] ^= (unsigned char)(1 + prng_below(&p, 255));
        {
            /* A flipped LZ4 match offset can point at identical bytes and
             * decompress to the very same state: that is no corruption. */
            struct rsm_fsm *h = fsm_new();
            char em[ERRMSG_SIZE];
            bool same = rsm_fsm_restore(h, copy, l, em) == 0 &&
                        rsm_fsm_digest(h) == rsm_fsm_digest(f);
            rsm_fsm_destroy(h);
            if (same) {
                free(copy);
                continue;
            }
        }
        assert_restore_fails(g, copy, l, d, 0);
        free(copy);
    }
    /* Trailing garbage after the frame. */
    {
        unsigned char *copy = malloc(l + 3);
        memcpy(copy, b, l);
        memset(copy + l, 0, 3);
        assert_restore_fails(g, copy, l + 3, d, 0);
        free(copy);
    }
    cr_assert_not_null(rsm_fsm_pipeline(g, "keep-me"));
    free(b);
    rsm_fsm_destroy(f);
    rsm_fsm_destroy(g);
}

/* LZ4-frame raw msgpack the way a snapshot would be. */
static void compress(const msgpack_sbuffer *sb, void **out, size_t *len)
{
    LZ4F_preferences_t prefs;
    size_t bound;
    memset(&prefs, 0, sizeof prefs);
    prefs.frameInfo.contentSize = sb->size;
    bound = LZ4F_compressFrameBound(sb->size, &prefs);
    *out = malloc(bound);
    *len = LZ4F_compressFrame(*out, bound, sb->data, sb->size, &prefs);
    cr_assert(!LZ4F_isError(*len));
}

/* Well-framed snapshots with bad content: each must be refused. */
Test(rsm_fsm, invalid_snapshot_content_refused)
{
    struct rsm_fsm *g = fsm_new();
    uint64_t d;
    apply1(g, 1, 1, mk_create("keep-me", NULL));
    d = rsm_fsm_digest(g);
    for (unsigned variant = 0; variant < 8; variant++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        struct rsm_pipeline_spec s1, s2;
        static const char *const on_q[] = {"q", NULL};
        void *buf;
        size_t len;
        spec_init(&s1, "b", NULL);
        spec_init(&s2, "a", variant == 5 ? on_q : NULL);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, variant == 1 ? 5 : 6);
        msgpack_pack_uint32(
            &pk, variant == 0 ? RSM_FORMAT_VERSION + 1 : RSM_FORMAT_VERSION);
        msgpack_pack_int64(&pk, 100);
        msgpack_pack_uint64(&pk, 9);
        /* members: variant 2 has them out of order */
        msgpack_pack_array(&pk, 2);
        {
            struct rsm_member m1 = {.id = variant == 2 ? 5 : 1, .name = "x"};
            struct rsm_member m2 = {.id = 3, .name = "y"};
            rsm__member_pack(&m1, &pk);
            rsm__member_pack(&m2, &pk);
        }
        if (variant == 1) {
            /* field missing */
        } else {
            /* pipelines: variant 3 unsorted, variant 5 bad dependency */
            msgpack_pack_array(&pk, 2);
            const struct rsm_pipeline_spec *first = variant == 3 ? &s1 : &s2;
            const struct rsm_pipeline_spec *second = variant == 3 ? &s2 : &s1;
            msgpack_pack_array(&pk, 5);
            rsm__spec_pack(first, &pk);
            msgpack_pack_uint64(&pk, variant == 4 ? 0 : 1);
            msgpack_pack_int64(&pk, 1);
            msgpack_pack_int64(&pk, 1);
            msgpack_pack_int64(&pk, 1);
            msgpack_pack_array(&pk, 5);
            rsm__spec_pack(second, &pk);
            msgpack_pack_uint64(&pk, 1);
            msgpack_pack_int64(&pk, 1);
            msgpack_pack_int64(&pk, 1);
            msgpack_pack_int64(&pk, 1);
            /* idem: variant 6 has a key from the future */
            msgpack_pack_array(&pk, 1);
            msgpack_pack_array(&pk, 7);
            rsm__pack_str(&pk, "k");
            msgpack_pack_uint8(&pk, 0);
            msgpack_pack_int64(&pk, variant == 6 ? 101 : 50);
            msgpack_pack_uint8(&pk, 0);
            rsm__pack_str(&pk, "");
            msgpack_pack_uint8(&pk, 0);
            msgpack_pack_uint8(&pk, 3);
        }
        compress(&sb, &buf, &len);
        if (variant == 7) {
            /* The control: the same construction, valid, restores. */
            struct rsm_fsm *h = fsm_new();
            char errmsg[ERRMSG_SIZE];
            cr_assert_eq(rsm_fsm_restore(h, buf, len, errmsg), 0, "%s", errmsg);
            cr_assert_eq(rsm_fsm_pipeline_count(h), 2);
            cr_assert_eq(rsm_fsm_clock(h), 100);
            cr_assert_eq(rsm_fsm_last_index(h), 9);
            rsm_fsm_destroy(h);
        } else {
            assert_restore_fails(g, buf, len, d,
                                 variant == 0 ? ERR_VERSION : ERR_MALFORMED);
        }
        free(buf);
        msgpack_sbuffer_destroy(&sb);
        rsm_spec_clear(&s1);
        rsm_spec_clear(&s2);
    }
    cr_assert_not_null(rsm_fsm_pipeline(g, "keep-me"));
    rsm_fsm_destroy(g);
}

/* raft_uv decompresses LZ4-frame snapshots itself when it loads one from
 * disk (restart) or sends one to a follower (InstallSnapshot), so restore
 * must accept the decompressed canonical bytes too. */
Test(rsm_fsm, restore_accepts_the_decompressed_form)
{
    struct rsm_fsm *f = populated();
    struct rsm_fsm *g = fsm_new();
    void *b;
    size_t l;
    char errmsg[ERRMSG_SIZE];
    LZ4F_dctx *dctx;
    size_t cap = 1 << 22, out_len = cap, in_len;
    char *raw = malloc(cap);
    snap(f, &b, &l);
    in_len = l;
    cr_assert(
        !LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION)));
    cr_assert(
        !LZ4F_isError(LZ4F_decompress(dctx, raw, &out_len, b, &in_len, NULL)));
    LZ4F_freeDecompressionContext(dctx);
    cr_assert_eq(in_len, l);
    cr_assert_eq(rsm_fsm_restore(g, raw, out_len, errmsg), 0, "%s", errmsg);
    cr_assert_eq(rsm_fsm_digest(f), rsm_fsm_digest(g));
    /* and a truncated raw form is refused */
    cr_assert_neq(rsm_fsm_restore(g, raw, out_len / 2, errmsg), 0);
    cr_assert_eq(rsm_fsm_digest(f), rsm_fsm_digest(g));
    free(raw);
    free(b);
    rsm_fsm_destroy(f);
    rsm_fsm_destroy(g);
}
