/* Unit tests: the FSM command codec (round trips, padding, strict
 * rejection of bad input, fuzzing). */
#include <criterion/criterion.h>
#include <lz4.h>
#include <raft.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "raft/rsm_fsm.h"
#include "raft/rsm_int.h"
#include "util.h"

TestSuite(rsm_cmd, .timeout = 60);

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    cr_assert_not_null(d);
    return d;
}

static void strv_set(struct rsm_strv *v, unsigned n, const char *const *s)
{
    v->v = calloc(n + 1, sizeof *v->v);
    cr_assert_not_null(v->v);
    for (unsigned i = 0; i < n; i++) {
        v->v[i] = xstrdup(s[i]);
    }
    v->n = n;
}

/* A spec with every field set to a non-default value. */
static void full_spec(struct rsm_pipeline_spec *s, const char *name)
{
    static const char *const argv[] = {"/bin/sh", "-c", "echo hi", ""};
    static const char *const after[] = {"up-1", "up.2"};
    static const char *const targets[] = {"node-a", "role=db"};
    memset(s, 0, sizeof *s);
    str_copy(s->name, sizeof s->name, name);
    strv_set(&s->command, 4, argv);
    str_copy(s->schedule, sizeof s->schedule, "*/5 * * * *");
    str_copy(s->timezone, sizeof s->timezone, "Europe/Paris");
    strv_set(&s->after, 2, after);
    s->retries_max = 3;
    s->backoff_s = 10;
    s->timeout_s = 3600;
    s->overlap = RSM_OVERLAP_REPLACE;
    s->catchup = RSM_CATCHUP_ALL;
    s->kind = RSM_KIND_SERVICE;
    s->paused = true;
    strv_set(&s->targets, 2, targets);
    s->n_tags = 2;
    s->tags = calloc(2, sizeof *s->tags);
    s->tags[0].key = xstrdup("zone");
    s->tags[0].value = xstrdup("eu-1");
    s->tags[1].key = xstrdup("disk");
    s->tags[1].value = xstrdup("");
    s->n_env = 1;
    s->env = calloc(1, sizeof *s->env);
    s->env[0].key = xstrdup("HOME_DIR");
    s->env[0].value = xstrdup("/tmp/x y");
}

static void assert_strv_eq(const struct rsm_strv *a, const struct rsm_strv *b)
{
    cr_assert_eq(a->n, b->n);
    for (unsigned i = 0; i < a->n; i++) {
        cr_assert_str_eq(a->v[i], b->v[i]);
    }
    cr_assert_null(a->v[a->n]);
}

static void assert_kvs_eq(const struct rsm_kv *a,
                          unsigned na,
                          const struct rsm_kv *b,
                          unsigned nb)
{
    cr_assert_eq(na, nb);
    for (unsigned i = 0; i < na; i++) {
        cr_assert_str_eq(a[i].key, b[i].key);
        cr_assert_str_eq(a[i].value, b[i].value);
    }
}

static void assert_spec_eq(const struct rsm_pipeline_spec *a,
                           const struct rsm_pipeline_spec *b)
{
    cr_assert_str_eq(a->name, b->name);
    assert_strv_eq(&a->command, &b->command);
    cr_assert_str_eq(a->schedule, b->schedule);
    cr_assert_str_eq(a->timezone, b->timezone);
    assert_strv_eq(&a->after, &b->after);
    cr_assert_eq(a->retries_max, b->retries_max);
    cr_assert_eq(a->backoff_s, b->backoff_s);
    cr_assert_eq(a->timeout_s, b->timeout_s);
    cr_assert_eq(a->overlap, b->overlap);
    cr_assert_eq(a->catchup, b->catchup);
    cr_assert_eq(a->kind, b->kind);
    cr_assert_eq(a->paused, b->paused);
    assert_strv_eq(&a->targets, &b->targets);
    assert_kvs_eq(a->tags, a->n_tags, b->tags, b->n_tags);
    assert_kvs_eq(a->env, a->n_env, b->env, b->n_env);
}

static void assert_member_eq(const struct rsm_member *a,
                             const struct rsm_member *b)
{
    cr_assert_eq(a->id, b->id);
    cr_assert_str_eq(a->name, b->name);
    cr_assert_str_eq(a->api, b->api);
    cr_assert_str_eq(a->raft, b->raft);
    cr_assert_str_eq(a->gossip, b->gossip);
    cr_assert_eq(a->lease_until_ms, b->lease_until_ms);
    cr_assert_eq(a->draining, b->draining);
}

static void assert_cmd_eq(const struct rsm_cmd *a, const struct rsm_cmd *b)
{
    cr_assert_eq(a->type, b->type);
    cr_assert_eq(a->leader_time_ms, b->leader_time_ms);
    cr_assert_str_eq(a->idem_key, b->idem_key);
    switch (a->type) {
        case RSM_CMD_MEMBER_PUT:
            assert_member_eq(&a->u.member_put, &b->u.member_put);
            break;
        case RSM_CMD_PIPELINE_CREATE:
            assert_spec_eq(&a->u.pipeline_create, &b->u.pipeline_create);
            break;
        case RSM_CMD_PIPELINE_UPDATE:
            assert_spec_eq(&a->u.pipeline_update.spec,
                           &b->u.pipeline_update.spec);
            cr_assert_eq(a->u.pipeline_update.expect_version,
                         b->u.pipeline_update.expect_version);
            break;
        case RSM_CMD_PIPELINE_DELETE:
            cr_assert_str_eq(a->u.pipeline_delete.name,
                             b->u.pipeline_delete.name);
            break;
        case RSM_CMD_JOB_SUBMIT: {
            const struct rsm_job_spec *x = &a->u.job_submit;
            const struct rsm_job_spec *y = &b->u.job_submit;
            assert_strv_eq(&x->argv, &y->argv);
            assert_kvs_eq(x->env, x->n_env, y->env, y->n_env);
            assert_kvs_eq(x->tags, x->n_tags, y->tags, y->n_tags);
            cr_assert_eq(x->retries_max, y->retries_max);
            cr_assert_eq(x->backoff_s, y->backoff_s);
            cr_assert_eq(x->timeout_s, y->timeout_s);
            cr_assert_eq(x->kind, y->kind);
            cr_assert_eq(x->run, y->run);
            cr_assert_str_eq(x->pipeline, y->pipeline);
            cr_assert_str_eq(x->target, y->target);
            cr_assert_eq(x->scheduled_for_ms, y->scheduled_for_ms);
            break;
        }
        case RSM_CMD_JOB_OUTPUT:
            cr_assert_eq(a->u.job_output.job, b->u.job_output.job);
            cr_assert_eq(a->u.job_output.epoch, b->u.job_output.epoch);
            cr_assert_eq(a->u.job_output.seq, b->u.job_output.seq);
            cr_assert_eq(a->u.job_output.stream, b->u.job_output.stream);
            cr_assert_eq(a->u.job_output.raw_len, b->u.job_output.raw_len);
            cr_assert_eq(a->u.job_output.len, b->u.job_output.len);
            cr_assert_eq(memcmp(a->u.job_output.data, b->u.job_output.data,
                                a->u.job_output.len),
                         0);
            break;
        default: /* the other job and lease commands: plain integers */
            cr_assert_eq(memcmp(&a->u, &b->u, sizeof a->u), 0, "%s",
                         rsm_cmd_name(a->type));
            break;
    }
}

/* One command of every type, all fields set. */
static void sample_cmds(struct rsm_cmd c[RSM_CMD__COUNT])
{
    for (unsigned t = 0; t < RSM_CMD__COUNT; t++) {
        rsm_cmd_init(&c[t], (uint8_t)t);
        c[t].leader_time_ms = 1700000000000LL;
        snprintf(c[t].idem_key, sizeof c[t].idem_key, "key-%u", t);
    }
    c[RSM_CMD_MEMBER_PUT].u.member_put = (struct rsm_member){
        .id = 0xfeedface12345678ULL,
        .name = "node-1",
        .api = "127.0.0.1:7070",
        .raft = "127.0.0.2:7071",
        .gossip = "",
        .lease_until_ms = 1700000003000LL,
        .draining = true,
    };
    full_spec(&c[RSM_CMD_PIPELINE_CREATE].u.pipeline_create, "build");
    full_spec(&c[RSM_CMD_PIPELINE_UPDATE].u.pipeline_update.spec, "deploy_2");
    c[RSM_CMD_PIPELINE_UPDATE].u.pipeline_update.expect_version = 42;
    str_copy(c[RSM_CMD_PIPELINE_DELETE].u.pipeline_delete.name,
             RSM_NAME_MAX + 1, "old.one");
    /* Job and lease commands (branch jobs). */
    {
        static const char *const jargv[] = {"/bin/echo", "hi", ""};
        static const char raw[] = "hello, hello, hello, hello\n";
        struct rsm_job_spec *js = &c[RSM_CMD_JOB_SUBMIT].u.job_submit;
        int bound = LZ4_compressBound((int)sizeof raw);
        char *z = malloc((size_t)bound);
        strv_set(&js->argv, 3, jargv);
        js->n_env = 1;
        js->env = calloc(1, sizeof *js->env);
        js->env[0].key = xstrdup("A_B");
        js->env[0].value = xstrdup("1");
        js->n_tags = 1;
        js->tags = calloc(1, sizeof *js->tags);
        js->tags[0].key = xstrdup("zone");
        js->tags[0].value = xstrdup("eu-1");
        js->retries_max = 2;
        js->backoff_s = 5;
        js->timeout_s = 60;
        js->kind = RSM_KIND_SERVICE;
        js->run = 77;
        str_copy(js->pipeline, sizeof js->pipeline, "nightly");
        str_copy(js->target, sizeof js->target, "db-1");
        js->scheduled_for_ms = 1700000000000LL;
        c[RSM_CMD_JOB_CLAIM].u.job_claim.job = 3;
        c[RSM_CMD_JOB_CLAIM].u.job_claim.node = 0xfeedface12345678ULL;
        c[RSM_CMD_JOB_CLAIM].u.job_claim.attempt = 2;
        c[RSM_CMD_JOB_START].u.job_start.job = 3;
        c[RSM_CMD_JOB_START].u.job_start.epoch = 9;
        c[RSM_CMD_JOB_OUTPUT].u.job_output.job = 3;
        c[RSM_CMD_JOB_OUTPUT].u.job_output.epoch = 9;
        c[RSM_CMD_JOB_OUTPUT].u.job_output.seq = 4;
        c[RSM_CMD_JOB_OUTPUT].u.job_output.stream = RSM_STREAM_STDERR;
        c[RSM_CMD_JOB_OUTPUT].u.job_output.raw_len = (uint32_t)sizeof raw;
        c[RSM_CMD_JOB_OUTPUT].u.job_output.len =
            (uint32_t)LZ4_compress_default(raw, z, (int)sizeof raw, bound);
        c[RSM_CMD_JOB_OUTPUT].u.job_output.data = z;
        c[RSM_CMD_JOB_FINISH].u.job_finish.job = 3;
        c[RSM_CMD_JOB_FINISH].u.job_finish.epoch = 9;
        c[RSM_CMD_JOB_FINISH].u.job_finish.end = RSM_END_SIGNALED;
        c[RSM_CMD_JOB_FINISH].u.job_finish.exit_code = 0;
        c[RSM_CMD_JOB_FINISH].u.job_finish.signal = 9;
        c[RSM_CMD_JOB_CANCEL].u.job_cancel.job = 3;
        c[RSM_CMD_NODE_RENEW].u.node_renew.node = 5;
        c[RSM_CMD_NODE_RENEW].u.node_renew.lease_ms = 3000;
        c[RSM_CMD_NODE_EXPIRE].u.node_expire.node = 5;
    }
    /* Run commands (branch runs). */
    str_copy(c[RSM_CMD_PIPELINE_FIRE].u.pipeline_fire.pipeline,
             RSM_NAME_MAX + 1, "nightly");
    c[RSM_CMD_PIPELINE_FIRE].u.pipeline_fire.scheduled_for_ms = 1700000000000LL;
    c[RSM_CMD_PIPELINE_FIRE].u.pipeline_fire.skip = true;
    str_copy(c[RSM_CMD_RUN_MANUAL].u.run_manual.pipeline, RSM_NAME_MAX + 1,
             "nightly");
    c[RSM_CMD_RUN_RETRY].u.run_retry.run = 12;
}

static void clear_cmds(struct rsm_cmd *c, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        rsm_cmd_clear(&c[i]);
    }
}

Test(rsm_cmd, names)
{
    cr_assert_str_eq(rsm_cmd_name(RSM_CMD_NOOP), "noop");
    cr_assert_str_eq(rsm_cmd_name(RSM_CMD_PIPELINE_DELETE), "pipeline_delete");
    cr_assert_str_eq(rsm_cmd_name(200), "unknown");
}

Test(rsm_cmd, pack_unpack_round_trip_every_type)
{
    struct rsm_cmd in[RSM_CMD__COUNT];
    char errmsg[ERRMSG_SIZE];
    sample_cmds(in);
    for (unsigned t = 0; t < RSM_CMD__COUNT; t++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_unpacked u;
        struct rsm_cmd out;
        cr_assert_eq(rsm_cmd_validate(&in[t], errmsg), 0, "%s", errmsg);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        cr_assert_eq(rsm_cmd_pack(&in[t], &pk), 0);
        msgpack_unpacked_init(&u);
        cr_assert_eq(rsm__mp_unpack(sb.data, sb.size, &u, errmsg), 0);
        /* The decoded command owns copies: destroy the buffers first. */
        cr_assert_eq(rsm_cmd_unpack(&u.data, &out, errmsg), 0, "%s", errmsg);
        memset(sb.data, 0xff, sb.size);
        msgpack_unpacked_destroy(&u);
        msgpack_sbuffer_destroy(&sb);
        assert_cmd_eq(&in[t], &out);
        rsm_cmd_clear(&out);
    }
    clear_cmds(in, RSM_CMD__COUNT);
}

Test(rsm_cmd, entry_round_trip_stamps_time)
{
    struct rsm_cmd in[RSM_CMD__COUNT];
    struct rsm_cmd *out = NULL;
    unsigned n = 0;
    void *buf;
    size_t len;
    char errmsg[ERRMSG_SIZE];
    sample_cmds(in);
    cr_assert_eq(rsm_entry_encode(in, RSM_CMD__COUNT, 123456, &buf, &len), 0);
    cr_assert_eq(len % 8, 0);
    cr_assert_eq(rsm_entry_decode(buf, len, &out, &n, errmsg), 0, "%s", errmsg);
    raft_free(buf);
    cr_assert_eq(n, RSM_CMD__COUNT);
    for (unsigned t = 0; t < n; t++) {
        cr_assert_eq(out[t].leader_time_ms, 123456);
        out[t].leader_time_ms = in[t].leader_time_ms;
        assert_cmd_eq(&in[t], &out[t]);
    }
    rsm_cmds_free(out, n);
    clear_cmds(in, RSM_CMD__COUNT);
}

Test(rsm_cmd, empty_entry)
{
    struct rsm_cmd *out = NULL;
    unsigned n = 7;
    void *buf;
    size_t len;
    char errmsg[ERRMSG_SIZE];
    cr_assert_eq(rsm_entry_encode(NULL, 0, 5, &buf, &len), 0);
    cr_assert_eq(len % 8, 0);
    cr_assert_eq(rsm_entry_decode(buf, len, &out, &n, errmsg), 0);
    cr_assert_eq(n, 0);
    raft_free(buf);
    rsm_cmds_free(out, n);
}

Test(rsm_cmd, entries_padded_to_8_for_many_sizes)
{
    char arg[300];
    for (unsigned size = 0; size < 200; size++) {
        struct rsm_cmd c;
        struct rsm_cmd *out = NULL;
        unsigned n = 0;
        void *buf;
        size_t len;
        char errmsg[ERRMSG_SIZE];
        const char *argv[2] = {"/bin/true", arg};
        memset(arg, 'a', size);
        arg[size] = '\0';
        rsm_cmd_init(&c, RSM_CMD_PIPELINE_CREATE);
        full_spec(&c.u.pipeline_create, "p");
        rsm_spec_clear(&c.u.pipeline_create);
        str_copy(c.u.pipeline_create.name, RSM_NAME_MAX + 1, "p");
        strv_set(&c.u.pipeline_create.command, 2, argv);
        cr_assert_eq(rsm_entry_encode(&c, 1, size, &buf, &len), 0);
        cr_assert_eq(len % 8, 0, "size %u: len %zu", size, len);
        cr_assert_geq(len, 8);
        cr_assert_eq(rsm_entry_decode(buf, len, &out, &n, errmsg), 0, "%s",
                     errmsg);
        cr_assert_eq(n, 1);
        cr_assert_str_eq(out[0].u.pipeline_create.command.v[1], arg);
        /* The padding is zero bytes and less than 8 of them. */
        {
            msgpack_sbuffer sb;
            msgpack_packer pk;
            msgpack_sbuffer_init(&sb);
            msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
            msgpack_pack_array(&pk, 3);
            msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
            msgpack_pack_int64(&pk, size);
            msgpack_pack_array(&pk, 1);
            c.leader_time_ms = size;
            cr_assert_eq(rsm_cmd_pack(&c, &pk), 0);
            cr_assert_lt(len - sb.size, 8);
            cr_assert_eq(memcmp(buf, sb.data, sb.size), 0);
            for (size_t i = sb.size; i < len; i++) {
                cr_assert_eq(((unsigned char *)buf)[i], 0);
            }
            msgpack_sbuffer_destroy(&sb);
        }
        raft_free(buf);
        rsm_cmds_free(out, n);
        rsm_cmd_clear(&c);
    }
}

/* Unpadded entry bytes for the sample commands. */
static void raw_entry(msgpack_sbuffer *sb, unsigned version)
{
    struct rsm_cmd in[RSM_CMD__COUNT];
    msgpack_packer pk;
    sample_cmds(in);
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint32(&pk, version);
    msgpack_pack_int64(&pk, 99);
    msgpack_pack_array(&pk, RSM_CMD__COUNT);
    for (unsigned t = 0; t < RSM_CMD__COUNT; t++) {
        cr_assert_eq(rsm_cmd_pack(&in[t], &pk), 0);
    }
    clear_cmds(in, RSM_CMD__COUNT);
}

Test(rsm_cmd, truncated_at_every_prefix)
{
    msgpack_sbuffer sb;
    raw_entry(&sb, RSM_FORMAT_VERSION);
    for (size_t cut = 0; cut < sb.size; cut++) {
        struct rsm_cmd *out = NULL;
        unsigned n = 0;
        char errmsg[ERRMSG_SIZE] = "";
        /* A heap copy of exactly cut bytes: ASan catches any over-read. */
        char *copy = malloc(cut + 1);
        memcpy(copy, sb.data, cut);
        cr_assert_eq(rsm_entry_decode(cut ? copy : NULL, cut, &out, &n, errmsg),
                     ERR_MALFORMED, "cut %zu", cut);
        cr_assert_neq(errmsg[0], '\0');
        cr_assert_null(out);
        cr_assert_eq(n, 0);
        free(copy);
    }
    msgpack_sbuffer_destroy(&sb);
}

Test(rsm_cmd, newer_version_rejected)
{
    msgpack_sbuffer sb;
    struct rsm_cmd *out = NULL;
    unsigned n = 0;
    char errmsg[ERRMSG_SIZE] = "";
    struct rsm_cmd c;
    msgpack_unpacked u;
    msgpack_packer pk;
    raw_entry(&sb, RSM_FORMAT_VERSION + 1);
    cr_assert_eq(rsm_entry_decode(sb.data, sb.size, &out, &n, errmsg),
                 ERR_VERSION);
    cr_assert(strstr(errmsg, "newer") != NULL, "%s", errmsg);
    msgpack_sbuffer_destroy(&sb);

    /* A newer command inside a current entry. */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION + 1);
    msgpack_pack_uint8(&pk, RSM_CMD_NOOP);
    msgpack_pack_int64(&pk, 0);
    msgpack_pack_str(&pk, 0);
    msgpack_unpacked_init(&u);
    cr_assert_eq(rsm__mp_unpack(sb.data, sb.size, &u, errmsg), 0);
    cr_assert_eq(rsm_cmd_unpack(&u.data, &c, errmsg), ERR_VERSION);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);

    /* Version 0 is malformed, not "newer". */
    raw_entry(&sb, 0);
    cr_assert_eq(rsm_entry_decode(sb.data, sb.size, &out, &n, errmsg),
                 ERR_MALFORMED);
    msgpack_sbuffer_destroy(&sb);
}

/* Decode one command from packed bytes. */
static int unpack_bytes(const msgpack_sbuffer *sb, char *errmsg)
{
    msgpack_unpacked u;
    struct rsm_cmd c;
    int rv;
    msgpack_unpacked_init(&u);
    rv = rsm__mp_unpack(sb->data, sb->size, &u, errmsg);
    if (rv == 0) {
        rv = rsm_cmd_unpack(&u.data, &c, errmsg);
        if (rv == 0) {
            rsm_cmd_clear(&c);
        }
    }
    msgpack_unpacked_destroy(&u);
    return rv;
}

Test(rsm_cmd, unknown_type_and_bad_envelopes)
{
    static const unsigned types[] = {RSM_CMD__COUNT, 99, 255, 256, 100000};
    char errmsg[ERRMSG_SIZE];
    for (unsigned i = 0; i < ARRAY_SIZE(types); i++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 4);
        msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
        msgpack_pack_uint32(&pk, types[i]);
        msgpack_pack_int64(&pk, 0);
        msgpack_pack_str(&pk, 0);
        errmsg[0] = '\0';
        cr_assert_eq(unpack_bytes(&sb, errmsg), ERR_MALFORMED);
        cr_assert(strstr(errmsg, "unknown type") != NULL, "%s", errmsg);
        msgpack_sbuffer_destroy(&sb);
    }
    /* Envelope shapes: a map, a short array, an extra field, negative time,
     * a bad idempotency key. */
    for (unsigned v = 0; v < 6; v++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (v == 0) {
            msgpack_pack_map(&pk, 0);
        } else if (v == 1) {
            msgpack_pack_array(&pk, 1);
            msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
        } else {
            msgpack_pack_array(&pk, v == 2 ? 5 : 4);
            msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
            msgpack_pack_uint8(&pk, RSM_CMD_NOOP);
            msgpack_pack_int64(&pk, v == 3 ? -5 : 0);
            if (v == 4) {
                msgpack_pack_str(&pk, 3);
                msgpack_pack_str_body(&pk, "a b", 3);
            } else if (v == 5) {
                msgpack_pack_str(&pk, RSM_IDEM_MAX + 1);
                for (int i = 0; i < RSM_IDEM_MAX + 1; i++) {
                    msgpack_pack_str_body(&pk, "k", 1);
                }
            } else {
                msgpack_pack_str(&pk, 0);
            }
            if (v == 2) {
                msgpack_pack_nil(&pk);
            }
        }
        errmsg[0] = '\0';
        cr_assert_eq(unpack_bytes(&sb, errmsg), ERR_MALFORMED, "variant %u", v);
        cr_assert_neq(errmsg[0], '\0');
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Replace one field of a decoded msgpack tree with a wrong-typed object and
 * check that the command is rejected. Objects in the zone are mutable. */
static const msgpack_object bad_objects[] = {
    {.type = MSGPACK_OBJECT_NIL},
    {.type = MSGPACK_OBJECT_BOOLEAN, .via.boolean = true},
    {.type = MSGPACK_OBJECT_NEGATIVE_INTEGER, .via.i64 = -1},
    {.type = MSGPACK_OBJECT_FLOAT64, .via.f64 = 1.5},
    {.type = MSGPACK_OBJECT_MAP},
    {.type = MSGPACK_OBJECT_BIN},
};

static void mutate_fields(unsigned type, bool in_spec)
{
    struct rsm_cmd in[RSM_CMD__COUNT];
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked u;
    char errmsg[ERRMSG_SIZE];
    msgpack_object *fields;
    unsigned n_fields;
    sample_cmds(in);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    cr_assert_eq(rsm_cmd_pack(&in[type], &pk), 0);
    msgpack_unpacked_init(&u);
    cr_assert_eq(rsm__mp_unpack(sb.data, sb.size, &u, errmsg), 0);
    fields = u.data.via.array.ptr;
    n_fields = u.data.via.array.size;
    if (in_spec) {
        fields = u.data.via.array.ptr[4].via.array.ptr;
        n_fields = u.data.via.array.ptr[4].via.array.size;
    }
    for (unsigned i = 0; i < n_fields; i++) {
        msgpack_object saved = fields[i];
        for (unsigned b = 0; b < ARRAY_SIZE(bad_objects); b++) {
            struct rsm_cmd out;
            int rv;
            if (bad_objects[b].type == saved.type) {
                continue; /* same type: not a wrong-type case */
            }
            fields[i] = bad_objects[b];
            errmsg[0] = '\0';
            rv = rsm_cmd_unpack(&u.data, &out, errmsg);
            cr_assert_eq(rv, ERR_MALFORMED, "%s field %u bad %u",
                         rsm_cmd_name(type), i, b);
            cr_assert_neq(errmsg[0], '\0');
        }
        fields[i] = saved;
    }
    {
        struct rsm_cmd out;
        cr_assert_eq(rsm_cmd_unpack(&u.data, &out, errmsg), 0);
        rsm_cmd_clear(&out);
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    clear_cmds(in, RSM_CMD__COUNT);
}

Test(rsm_cmd, wrong_field_types)
{
    for (unsigned t = 0; t < RSM_CMD__COUNT; t++) {
        mutate_fields(t, false);
    }
    mutate_fields(RSM_CMD_PIPELINE_CREATE, true);
    mutate_fields(RSM_CMD_PIPELINE_UPDATE, true);
    mutate_fields(RSM_CMD_MEMBER_PUT, true); /* member fields */
}

/* Encode a create with a spec altered by fn; expect a rejection. */
static void expect_bad_spec(void (*fn)(struct rsm_pipeline_spec *s),
                            const char *what)
{
    struct rsm_cmd c;
    struct rsm_cmd *out = NULL;
    unsigned n = 0;
    void *buf;
    size_t len;
    char errmsg[ERRMSG_SIZE] = "";
    rsm_cmd_init(&c, RSM_CMD_PIPELINE_CREATE);
    full_spec(&c.u.pipeline_create, "ok");
    fn(&c.u.pipeline_create);
    cr_assert_eq(rsm_cmd_validate(&c, errmsg), ERR_INVALID, "%s", what);
    cr_assert_eq(rsm_entry_encode(&c, 1, 1, &buf, &len), 0);
    errmsg[0] = '\0';
    cr_assert_eq(rsm_entry_decode(buf, len, &out, &n, errmsg), ERR_MALFORMED,
                 "%s", what);
    cr_assert_neq(errmsg[0], '\0');
    raft_free(buf);
    rsm_cmd_clear(&c);
}

static void bad_name_chars(struct rsm_pipeline_spec *s)
{
    str_copy(s->name, sizeof s->name, "a b");
}
static void bad_name_dot(struct rsm_pipeline_spec *s)
{
    str_copy(s->name, sizeof s->name, ".hidden");
}
static void bad_name_empty(struct rsm_pipeline_spec *s)
{
    s->name[0] = '\0';
}
static void bad_argv_none(struct rsm_pipeline_spec *s)
{
    for (unsigned i = 0; i < s->command.n; i++) {
        free(s->command.v[i]);
        s->command.v[i] = NULL;
    }
    s->command.n = 0;
}
static void bad_argv_too_many(struct rsm_pipeline_spec *s)
{
    struct rsm_strv v;
    const char **a = calloc(RSM_ARGV_MAX + 1, sizeof *a);
    for (unsigned i = 0; i < RSM_ARGV_MAX + 1; i++) {
        a[i] = "x";
    }
    strv_set(&v, RSM_ARGV_MAX + 1, a);
    free(a);
    for (unsigned i = 0; i < s->command.n; i++) {
        free(s->command.v[i]);
    }
    free(s->command.v);
    s->command = v;
}
static void bad_arg_too_long(struct rsm_pipeline_spec *s)
{
    free(s->command.v[1]);
    s->command.v[1] = malloc(RSM_ARG_MAX + 2);
    memset(s->command.v[1], 'x', RSM_ARG_MAX + 1);
    s->command.v[1][RSM_ARG_MAX + 1] = '\0';
}
static void bad_after_name(struct rsm_pipeline_spec *s)
{
    free(s->after.v[0]);
    s->after.v[0] = xstrdup("no/slash");
}
static void bad_after_dup(struct rsm_pipeline_spec *s)
{
    free(s->after.v[1]);
    s->after.v[1] = xstrdup(s->after.v[0]);
}
static void bad_env_key(struct rsm_pipeline_spec *s)
{
    free(s->env[0].key);
    s->env[0].key = xstrdup("1ABC");
}
static void bad_tag_dup(struct rsm_pipeline_spec *s)
{
    free(s->tags[1].key);
    s->tags[1].key = xstrdup(s->tags[0].key);
}
static void bad_overlap(struct rsm_pipeline_spec *s)
{
    s->overlap = 3;
}
static void bad_kind(struct rsm_pipeline_spec *s)
{
    s->kind = 2;
}
static void bad_schedule_ctl(struct rsm_pipeline_spec *s)
{
    s->schedule[0] = '\n';
}

Test(rsm_cmd, invalid_specs_rejected)
{
    expect_bad_spec(bad_name_chars, "name chars");
    expect_bad_spec(bad_name_dot, "leading dot");
    expect_bad_spec(bad_name_empty, "empty name");
    expect_bad_spec(bad_argv_none, "no argv");
    expect_bad_spec(bad_argv_too_many, "too many argv");
    expect_bad_spec(bad_arg_too_long, "long arg");
    expect_bad_spec(bad_after_name, "after name");
    expect_bad_spec(bad_after_dup, "after dup");
    expect_bad_spec(bad_env_key, "env key");
    expect_bad_spec(bad_tag_dup, "tag dup");
    expect_bad_spec(bad_overlap, "overlap");
    expect_bad_spec(bad_kind, "kind");
    expect_bad_spec(bad_schedule_ctl, "schedule");
}

Test(rsm_cmd, over_long_strings_rejected)
{
    /* A 64-byte name on the wire (the struct cannot hold it). */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char errmsg[ERRMSG_SIZE] = "";
    char name[RSM_NAME_MAX + 2];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
    msgpack_pack_uint8(&pk, RSM_CMD_PIPELINE_DELETE);
    msgpack_pack_int64(&pk, 0);
    msgpack_pack_str(&pk, 0);
    rsm__pack_str(&pk, name);
    cr_assert_eq(unpack_bytes(&sb, errmsg), ERR_MALFORMED);
    cr_assert_neq(errmsg[0], '\0');
    msgpack_sbuffer_destroy(&sb);
    /* One byte shorter is fine. */
    name[RSM_NAME_MAX] = '\0';
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
    msgpack_pack_uint8(&pk, RSM_CMD_PIPELINE_DELETE);
    msgpack_pack_int64(&pk, 0);
    msgpack_pack_str(&pk, 0);
    rsm__pack_str(&pk, name);
    cr_assert_eq(unpack_bytes(&sb, errmsg), 0, "%s", errmsg);
    msgpack_sbuffer_destroy(&sb);
}

Test(rsm_cmd, huge_container_headers_rejected_cheaply)
{
    /* array32 / map32 / str32 claiming 4G elements in a few bytes. */
    static const unsigned char cases[][6] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff, 0x00},
        {0xdf, 0xff, 0xff, 0xff, 0xff, 0x00},
        {0xdb, 0xff, 0xff, 0xff, 0xff, 0x00},
        {0x93, 0x01, 0x00, 0xdd, 0x7f, 0xff},
        {0xc1, 0x00, 0x00, 0x00, 0x00, 0x00},
    };
    for (unsigned i = 0; i < ARRAY_SIZE(cases); i++) {
        struct rsm_cmd *out = NULL;
        unsigned n = 0;
        size_t objlen;
        char errmsg[ERRMSG_SIZE];
        cr_assert_eq(rsm__mp_check(cases[i], sizeof cases[i], &objlen),
                     ERR_MALFORMED);
        cr_assert_eq(
            rsm_entry_decode(cases[i], sizeof cases[i], &out, &n, errmsg),
            ERR_MALFORMED);
    }
    /* Deep nesting. */
    {
        unsigned char deep[64];
        size_t objlen;
        memset(deep, 0x91, sizeof deep);
        deep[63] = 0x00;
        cr_assert_eq(rsm__mp_check(deep, sizeof deep, &objlen), ERR_MALFORMED);
    }
}

static void fuzz_one(struct rsm_fsm *f,
                     uint64_t *index,
                     const unsigned char *buf,
                     size_t len)
{
    struct rsm_cmd *out = NULL;
    unsigned n = 0;
    char errmsg[ERRMSG_SIZE];
    struct rsm_result res[8];
    unsigned n_res = 0;
    int rv = rsm_entry_decode(buf, len, &out, &n, errmsg);
    cr_assert(rv == 0 || rv == ERR_MALFORMED || rv == ERR_VERSION, "rv %d", rv);
    if (rv == 0) {
        rsm_cmds_free(out, n);
    } else {
        cr_assert_neq(errmsg[0], '\0');
    }
    rv = rsm_fsm_apply(f, *index + 1, buf, len, res, ARRAY_SIZE(res), &n_res);
    cr_assert(rv == 0 || rv == ERR_VERSION, "apply rv %d", rv);
    if (rv == 0) {
        (*index)++;
        cr_assert_eq(rsm_fsm_last_index(f), *index);
    }
}

Test(rsm_cmd, fuzz_random_bytes_and_mutations)
{
    struct prng p;
    struct rsm_fsm *f;
    uint64_t index = 0;
    unsigned char buf[512];
    msgpack_sbuffer sb;
    prng_seed(&p, 0x5eed);
    log_set_level(LOG_OFF);
    cr_assert_eq(rsm_fsm_create(&f), 0);
    /* Pure random bytes, often starting like an entry. */
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = (size_t)prng_below(&p, sizeof buf);
        unsigned char *copy;
        for (size_t i = 0; i < len; i++) {
            buf[i] = (unsigned char)prng_next(&p);
        }
        if (len > 2 && prng_below(&p, 2) == 0) {
            buf[0] = 0x93;
            buf[1] = 0x01;
        }
        copy = malloc(len + 1);
        memcpy(copy, buf, len);
        fuzz_one(f, &index, len ? copy : NULL, len);
        free(copy);
    }
    /* Mutations of a valid entry: flips, overwrites, truncations. */
    raw_entry(&sb, RSM_FORMAT_VERSION);
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = sb.size;
        unsigned char *copy = malloc(len);
        unsigned flips = 1 + (unsigned)prng_below(&p, 4);
        memcpy(copy, sb.data, len);
        for (unsigned k = 0; k < flips; k++) {
            size_t at = (size_t)prng_below(&p, len);
            if (prng_below(&p, 2) == 0) {
                copy[at] ^= (unsigned char)(1u << prng_below(&p, 8));
            } else {
                copy[at] = (unsigned char)prng_next(&p);
            }
        }
        if (prng_below(&p, 4) == 0) {
            len = (size_t)prng_below(&p, len) + 1;
        }
        fuzz_one(f, &index, copy, len);
        free(copy);
    }
    msgpack_sbuffer_destroy(&sb);
    /* The state is still sound: it snapshots and restores. */
    {
        void *snap;
        size_t snap_len;
        char errmsg[ERRMSG_SIZE];
        cr_assert_eq(rsm_fsm_snapshot(f, &snap, &snap_len), 0);
        cr_assert_eq(rsm_fsm_restore(f, snap, snap_len, errmsg), 0, "%s",
                     errmsg);
        free(snap);
    }
    rsm_fsm_destroy(f);
}
