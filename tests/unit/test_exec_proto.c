/* Agent<->helper frame codec: round trips and rejection of truncated,
 * oversized and garbage frames. */
#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "exec/exec_int.h"

TestSuite(exec_proto, .timeout = 30);

static struct exec__buf enc(const struct exec__msg *m)
{
    struct exec__buf b = {0};
    int rv = exec__msg_encode(m, &b);
    cr_assert_eq(rv, 0, "encode: %s", err_str(rv));
    return b;
}

static void dec_ok(const struct exec__buf *b, struct exec__msg *out)
{
    char errmsg[ERRMSG_SIZE] = "";
    size_t n;
    cr_assert_eq(exec__frame_peek(b->data, b->len, &n), 0);
    cr_assert_eq(n, b->len);
    cr_assert_eq(exec__msg_decode(b->data, b->len, out, errmsg), 0, "%s",
                 errmsg);
}

Test(exec_proto, spawn_round_trip)
{
    char *argv[] = {"/bin/sh", "-c", "echo hi", NULL};
    char *env[] = {"KILN_JOB_ID=j1", "A=", NULL};
    struct exec__msg m = {0}, d;
    struct exec__buf b;
    m.type = EXEC__MSG_SPAWN;
    strcpy(m.job_id, "run-1.web:0@2+x_y");
    m.epoch = UINT64_MAX;
    m.timeout_ms = 1234;
    m.argv = argv;
    m.env = env;
    m.limits[0] = 64;
    m.limits[1] = 1ull << 40;
    m.limits[2] = 9;
    b = enc(&m);
    dec_ok(&b, &d);
    cr_assert_eq(d.type, EXEC__MSG_SPAWN);
    cr_assert_str_eq(d.job_id, m.job_id);
    cr_assert_eq(d.epoch, UINT64_MAX);
    cr_assert_eq(d.timeout_ms, 1234);
    for (int i = 0; i < 3; i++) {
        cr_assert_str_eq(d.argv[i], argv[i]);
    }
    cr_assert_null(d.argv[3]);
    cr_assert_str_eq(d.env[0], env[0]);
    cr_assert_str_eq(d.env[1], env[1]);
    cr_assert_null(d.env[2]);
    cr_assert_eq(d.limits[1], 1ull << 40);
    exec__msg_free(&d);
    exec__buf_free(&b);
}

Test(exec_proto, spawn_without_env)
{
    char *argv[] = {"true", NULL};
    struct exec__msg m = {0}, d;
    struct exec__buf b;
    m.type = EXEC__MSG_SPAWN;
    strcpy(m.job_id, "j");
    m.argv = argv;
    b = enc(&m);
    dec_ok(&b, &d);
    cr_assert_not_null(d.env);
    cr_assert_null(d.env[0]);
    exec__msg_free(&d);
    exec__buf_free(&b);
}

Test(exec_proto, small_messages_round_trip)
{
    struct exec__msg m, d;
    struct exec__buf b;
    static const char bin[] = {'a', 0, 'b', '\n'};

    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_OUTPUT;
    strcpy(m.job_id, "job");
    m.epoch = 5;
    m.stream = 2;
    m.data = bin;
    m.len = sizeof bin;
    b = enc(&m);
    dec_ok(&b, &d);
    cr_assert_eq(d.stream, 2);
    cr_assert_eq(d.len, sizeof bin);
    cr_assert(memcmp(d.data, bin, sizeof bin) == 0);
    cr_assert((const uint8_t *)d.data > b.data &&
              (const uint8_t *)d.data < b.data + b.len);
    exec__buf_free(&b);

    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_EXIT;
    strcpy(m.job_id, "job");
    m.end = EXEC_TIMEOUT;
    m.exit_code = -1;
    m.signal = 15;
    b = enc(&m);
    dec_ok(&b, &d);
    cr_assert_eq(d.end, EXEC_TIMEOUT);
    cr_assert_eq(d.exit_code, -1);
    cr_assert_eq(d.signal, 15);
    exec__buf_free(&b);

    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_FENCE;
    m.seq = 77;
    m.ms = 3000;
    m.at = 123456789012ull;
    b = enc(&m);
    dec_ok(&b, &d);
    cr_assert_eq(d.seq, 77);
    cr_assert_eq(d.ms, 3000);
    cr_assert_eq(d.at, 123456789012ull);
    exec__buf_free(&b);

    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_KILL;
    strcpy(m.job_id, "k");
    m.why = EXEC_CANCELLED;
    b = enc(&m);
    dec_ok(&b, &d);
    cr_assert_eq(d.why, EXEC_CANCELLED);
    cr_assert_str_eq(d.job_id, "k");
    exec__buf_free(&b);

    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_STARTED;
    strcpy(m.job_id, "s");
    m.pid = 4242;
    b = enc(&m);
    dec_ok(&b, &d);
    cr_assert_eq(d.pid, 4242);
    exec__buf_free(&b);

    int types[] = {EXEC__MSG_FENCE_NOW, EXEC__MSG_SHUTDOWN, EXEC__MSG_FENCED};
    for (size_t i = 0; i < 3; i++) {
        memset(&m, 0, sizeof m);
        m.type = (uint8_t)types[i];
        m.seq = 3;
        m.killed = 2;
        b = enc(&m);
        dec_ok(&b, &d);
        cr_assert_eq(d.type, types[i]);
        exec__buf_free(&b);
    }
}

Test(exec_proto, encode_rejects_bad_fields)
{
    struct exec__buf b = {0};
    struct exec__msg m = {0};
    char big[EXEC__BATCH_MAX + 1];
    char *argv[] = {"x", NULL};

    m.type = 99;
    cr_assert_eq(exec__msg_encode(&m, &b), ERR_INVALID);
    m.type = EXEC__MSG_SPAWN;
    strcpy(m.job_id, "../x");
    m.argv = argv;
    cr_assert_eq(exec__msg_encode(&m, &b), ERR_INVALID);
    strcpy(m.job_id, "ok");
    m.argv = NULL;
    cr_assert_eq(exec__msg_encode(&m, &b), ERR_INVALID);
    memset(&m, 0, sizeof m);
    m.type = EXEC__MSG_OUTPUT;
    strcpy(m.job_id, "ok");
    m.stream = 1;
    m.data = big;
    m.len = sizeof big;
    cr_assert_eq(exec__msg_encode(&m, &b), ERR_TOOBIG);
    m.len = 1;
    m.stream = 3;
    cr_assert_eq(exec__msg_encode(&m, &b), ERR_INVALID);
    cr_assert_eq(b.len, 0, "failed encodes must not leave bytes");
    exec__buf_free(&b);
}

Test(exec_proto, spawn_above_frame_limit_is_toobig)
{
    struct exec__buf b = {0};
    struct exec__msg m = {0};
    char *huge = malloc(EXEC__FRAME_MAX + 10);
    char *argv[] = {huge, NULL};
    memset(huge, 'a', EXEC__FRAME_MAX + 9);
    huge[EXEC__FRAME_MAX + 9] = '\0';
    m.type = EXEC__MSG_SPAWN;
    strcpy(m.job_id, "j");
    m.argv = argv;
    cr_assert_eq(exec__msg_encode(&m, &b), ERR_TOOBIG);
    cr_assert_eq(b.len, 0);
    exec__buf_free(&b);
    free(huge);
}

Test(exec_proto, truncated_frames_need_more_bytes_and_do_not_decode)
{
    char *argv[] = {"/bin/echo", "hello", NULL};
    struct exec__msg m = {0}, d;
    struct exec__buf b;
    size_t n;
    m.type = EXEC__MSG_SPAWN;
    strcpy(m.job_id, "trunc");
    m.argv = argv;
    b = enc(&m);
    for (size_t len = 0; len < b.len; len++) {
        cr_assert_eq(exec__frame_peek(b.data, len, &n), 0);
        cr_assert_eq(n, 0, "prefix of %zu bytes looked complete", len);
        cr_assert_neq(exec__msg_decode(b.data, len, &d, NULL), 0);
    }
    /* A frame whose declared length is shorter than its body. */
    for (size_t cut = 2; cut < b.len - 4; cut++) {
        uint8_t *p = malloc(b.len);
        memcpy(p, b.data, b.len);
        p[0] = (uint8_t)(cut >> 24);
        p[1] = (uint8_t)(cut >> 16);
        p[2] = (uint8_t)(cut >> 8);
        p[3] = (uint8_t)cut;
        cr_assert_neq(exec__msg_decode(p, 4 + cut, &d, NULL), 0,
                      "cut body of %zu decoded", cut);
        free(p);
    }
    exec__buf_free(&b);
}

Test(exec_proto, oversized_and_short_lengths_rejected)
{
    uint8_t hdr[8] = {0x00, 0x10, 0x00, 0x01, 1, 1, 0x90, 0};
    size_t n;
    struct exec__msg d;
    cr_assert_eq(exec__frame_peek(hdr, sizeof hdr, &n), ERR_TOOBIG);
    hdr[0] = 0xff;
    cr_assert_eq(exec__frame_peek(hdr, sizeof hdr, &n), ERR_TOOBIG);
    memset(hdr, 0, 4);
    hdr[3] = 1; /* shorter than version + type */
    cr_assert_eq(exec__frame_peek(hdr, sizeof hdr, &n), ERR_MALFORMED);
    cr_assert_neq(exec__msg_decode(hdr, 5, &d, NULL), 0);
}

Test(exec_proto, wrong_version_and_garbage_rejected)
{
    struct exec__msg m = {0}, d;
    struct exec__buf b;
    char errmsg[ERRMSG_SIZE];
    m.type = EXEC__MSG_FENCE;
    m.seq = 1;
    m.ms = 5;
    b = enc(&m);
    b.data[4] = 2;
    cr_assert_eq(exec__msg_decode(b.data, b.len, &d, errmsg), ERR_VERSION);
    b.data[4] = EXEC__PROTO_VERSION;
    b.data[5] = 200; /* unknown type */
    cr_assert_eq(exec__msg_decode(b.data, b.len, &d, errmsg), ERR_MALFORMED);
    b.data[5] = EXEC__MSG_KILL; /* right envelope, wrong fields */
    cr_assert_eq(exec__msg_decode(b.data, b.len, &d, errmsg), ERR_MALFORMED);
    b.data[5] = EXEC__MSG_FENCE;
    cr_assert_eq(exec__msg_decode(b.data, b.len, &d, errmsg), 0);
    exec__buf_free(&b);

    /* Random garbage bodies never crash and never decode as SPAWN with
     * bad data. */
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int iter = 0; iter < 20000; iter++) {
        uint8_t f[200];
        size_t len = 6 + (size_t)(iter % 194);
        for (size_t i = 0; i < len; i++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            f[i] = (uint8_t)s;
        }
        f[0] = f[1] = f[2] = 0;
        f[3] = (uint8_t)(len - 4);
        f[4] = EXEC__PROTO_VERSION;
        f[5] = (uint8_t)(1 + iter % 19);
        if (exec__msg_decode(f, len, &d, NULL) == 0) {
            exec__msg_free(&d);
        }
    }
}

static void pack_frame(struct exec__buf *b,
                       uint8_t type,
                       void (*body)(msgpack_packer *))
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint8_t hdr[6];
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    body(&pk);
    size_t n = sb.size + 2;
    hdr[0] = (uint8_t)(n >> 24);
    hdr[1] = (uint8_t)(n >> 16);
    hdr[2] = (uint8_t)(n >> 8);
    hdr[3] = (uint8_t)n;
    hdr[4] = EXEC__PROTO_VERSION;
    hdr[5] = type;
    exec__buf_append(b, hdr, 6);
    exec__buf_append(b, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void body_spawn_nul(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 6);
    msgpack_pack_str(pk, 1);
    msgpack_pack_str_body(pk, "j", 1);
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_array(pk, 1);
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "a\0b", 3); /* embedded NUL */
    msgpack_pack_array(pk, 0);
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_uint64(pk, 0);
}

static void body_spawn_noargv(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 6);
    msgpack_pack_str(pk, 1);
    msgpack_pack_str_body(pk, "j", 1);
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_array(pk, 0); /* empty argv */
    msgpack_pack_array(pk, 0);
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_uint64(pk, 0);
}

static void body_trailing(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 0);
    msgpack_pack_nil(pk); /* bytes after the array */
}

static void body_badid(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    msgpack_pack_str(pk, 2);
    msgpack_pack_str_body(pk, "..", 2);
    msgpack_pack_uint64(pk, EXEC_CANCELLED);
}

static void body_negative_pid(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_str(pk, 1);
    msgpack_pack_str_body(pk, "j", 1);
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_int64(pk, -5);
}

Test(exec_proto, huge_declared_containers_rejected_without_allocating)
{
    /* array32 of 2^32-1 items, map32, str32 and bin32 claiming 4 GiB: a
     * naive msgpack_unpack_next would size its zone from these. */
    static const uint8_t bodies[][5] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff}, {0xdf, 0xff, 0xff, 0xff, 0xff},
        {0xdb, 0xff, 0xff, 0xff, 0xff}, {0xc6, 0xff, 0xff, 0xff, 0xff},
        {0xdc, 0xff, 0xff, 0x90, 0x90},
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        uint8_t f[6 + 5] = {0, 0, 0, 7, EXEC__PROTO_VERSION, EXEC__MSG_SPAWN};
        struct exec__msg d;
        memcpy(f + 6, bodies[i], 5);
        cr_assert_eq(exec__msg_decode(f, sizeof f, &d, NULL), ERR_MALFORMED,
                     "case %zu", i);
    }
    /* A legitimate big array (1 MiB frame of nils) is bounded too. */
    {
        size_t n = 200000;
        uint8_t *f = malloc(6 + 5 + n);
        struct exec__msg d;
        size_t body = 2 + 5 + n;
        f[0] = (uint8_t)(body >> 24);
        f[1] = (uint8_t)(body >> 16);
        f[2] = (uint8_t)(body >> 8);
        f[3] = (uint8_t)body;
        f[4] = EXEC__PROTO_VERSION;
        f[5] = EXEC__MSG_SPAWN;
        f[6] = 0xdd;
        f[7] = (uint8_t)(n >> 24);
        f[8] = (uint8_t)(n >> 16);
        f[9] = (uint8_t)(n >> 8);
        f[10] = (uint8_t)n;
        memset(f + 11, 0xc0, n);
        cr_assert_eq(exec__msg_decode(f, 11 + n, &d, NULL), ERR_MALFORMED);
        free(f);
    }
}

Test(exec_proto, semantic_garbage_rejected)
{
    struct
    {
        uint8_t type;
        void (*body)(msgpack_packer *);
    } cases[] = {
        {EXEC__MSG_SPAWN, body_spawn_nul},
        {EXEC__MSG_SPAWN, body_spawn_noargv},
        {EXEC__MSG_SHUTDOWN, body_trailing},
        {EXEC__MSG_KILL, body_badid},
        {EXEC__MSG_STARTED, body_negative_pid},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct exec__buf b = {0};
        struct exec__msg d;
        pack_frame(&b, cases[i].type, cases[i].body);
        cr_assert_eq(exec__msg_decode(b.data, b.len, &d, NULL), ERR_MALFORMED,
                     "case %zu decoded", i);
        exec__buf_free(&b);
    }
}

Test(exec_proto, reassembly_byte_by_byte_and_skipping_oversized)
{
    struct exec_rx rx = {0};
    struct exec__buf stream = {0};
    struct exec__msg m = {0}, d;
    const uint8_t *f;
    size_t len;
    int got = 0, dropped = 0;
    uint8_t bad[4] = {0x7f, 0, 0, 0}; /* declares ~2 GiB */

    m.type = EXEC__MSG_FENCE;
    for (int i = 0; i < 3; i++) {
        m.seq = (uint64_t)i;
        cr_assert_eq(exec__msg_encode(&m, &stream), 0);
    }
    /* an oversized frame in the middle: header then some of its body */
    exec__buf_append(&stream, bad, 4);
    {
        uint8_t junk[100];
        memset(junk, 0xc1, sizeof junk);
        exec__buf_append(&stream, junk, sizeof junk);
    }
    for (size_t i = 0; i < stream.len; i++) {
        cr_assert_eq(exec__rx_feed(&rx, stream.data + i, 1), 0);
        for (;;) {
            int rv = exec__rx_next(&rx, &f, &len);
            if (rv != 0) {
                cr_assert_eq(rv, ERR_TOOBIG);
                dropped++;
                continue;
            }
            if (len == 0) {
                break;
            }
            cr_assert_eq(exec__msg_decode(f, len, &d, NULL), 0);
            cr_assert_eq(d.seq, (uint64_t)got);
            got++;
        }
    }
    cr_assert_eq(got, 3);
    cr_assert_eq(dropped, 1);
    cr_assert(rx.skip > 0, "rest of the oversized frame must be skipped");
    exec__rx_free(&rx);
    exec__buf_free(&stream);
}

Test(exec_proto, job_ids)
{
    cr_assert(exec__job_id_valid("a"));
    cr_assert(exec__job_id_valid("run-12.web_1:3@x+y"));
    cr_assert(!exec__job_id_valid(""));
    cr_assert(!exec__job_id_valid("."));
    cr_assert(!exec__job_id_valid(".."));
    cr_assert(!exec__job_id_valid(".hidden"));
    cr_assert(!exec__job_id_valid("a/b"));
    cr_assert(!exec__job_id_valid("a b"));
    cr_assert(!exec__job_id_valid("0123456789012345678901234567890123456789"));
    cr_assert(exec__job_id_valid("012345678901234567890123456789012345678"));
}
