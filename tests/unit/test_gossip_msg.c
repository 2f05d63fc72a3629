/* Gossip codec: round trips of every message type and rejection of
 * truncated, oversized, garbage and wrong-version input. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "gossip/gossip_int.h"
#include "util.h"

TestSuite(gossip_msg, .timeout = 60);

static uint64_t test_seed(void)
{
    const char *s = getenv("TEST_SEED");
    uint64_t seed = s != NULL ? strtoull(s, NULL, 0) : time_mono_ms();
    fprintf(stderr, "gossip_msg: TEST_SEED=%llu\n", (unsigned long long)seed);
    return seed;
}

static void full_member(struct gossip_member *mb)
{
    memset(mb, 0, sizeof *mb);
    strcpy(mb->name, "node-1");
    mb->id = 0x1122334455667788ull;
    mb->incarnation = 1763927000;
    strcpy(mb->api, "127.0.0.1:7070");
    strcpy(mb->raft, "127.0.0.1:7071");
    strcpy(mb->gossip, "127.0.0.1:7072");
    mb->n_tags = 2;
    strcpy(mb->tags[0].key, "zone");
    strcpy(mb->tags[0].value, "eu-1");
    strcpy(mb->tags[1].key, "gpu");
    strcpy(mb->tags[1].value, "");
    mb->meta = GOSSIP_META_IN_CLUSTER | GOSSIP_META_DRAINING;
    mb->meta_version = 77;
    mb->load.running = 3;
    mb->load.slots = 8;
    mb->load.queued = 1;
    mb->load.load1_milli = 1250;
    mb->load.mem_free_kib = 1ull << 40;
}

/* One message of each type. */
static unsigned sample_msgs(struct gossip__msg *m)
{
    unsigned n = 0;
    memset(m, 0, 9 * sizeof *m);
    m[n].type = GOSSIP__PING;
    m[n].seq = 4000000000u;
    m[n].id = 5;
    m[n++].from = UINT64_MAX;
    m[n].type = GOSSIP__PING_REQ;
    m[n].seq = 9;
    m[n].id = 5;
    strcpy(m[n].addr, "127.0.0.5:40000");
    m[n++].from = 6;
    m[n].type = GOSSIP__ACK;
    m[n].seq = 10;
    m[n++].id = 7;
    m[n].type = GOSSIP__NACK;
    m[n].seq = 11;
    m[n++].id = 8;
    m[n].type = GOSSIP__ALIVE;
    full_member(&m[n].member);
    m[n].id = m[n].member.id;
    m[n].incarnation = m[n].member.incarnation;
    n++;
    m[n].type = GOSSIP__SUSPECT;
    m[n].id = 12;
    m[n].incarnation = 13;
    m[n++].from = 14;
    m[n].type = GOSSIP__DEAD;
    m[n].id = 15;
    m[n].incarnation = 16;
    m[n++].from = 17;
    m[n].type = GOSSIP__LEFT;
    m[n].id = 18;
    m[n++].incarnation = 19;
    m[n].type = GOSSIP__LOAD;
    m[n].id = 20;
    m[n].incarnation = 21;
    m[n].meta_version = 22;
    m[n].meta = 1;
    m[n].load.running = 1;
    m[n].load.slots = 2;
    m[n].load.queued = 3;
    m[n].load.load1_milli = 4;
    m[n++].load.mem_free_kib = 5;
    return n;
}

static size_t build(const struct gossip__msg *m,
                    unsigned n,
                    uint8_t *out,
                    size_t cap)
{
    static uint8_t enc[16][GOSSIP__MAX_RECORD];
    const uint8_t *chunks[16];
    size_t lens[16];
    for (unsigned i = 0; i < n; i++) {
        lens[i] = gossip__msg_encode(&m[i], false, enc[i], sizeof enc[i]);
        cr_assert(lens[i] > 0, "encode type %u", m[i].type);
        chunks[i] = enc[i];
    }
    return gossip__packet_build(out, cap, chunks, lens, n);
}

static void assert_same(const struct gossip__msg *a,
                        const struct gossip__msg *b)
{
    cr_assert_eq(a->type, b->type);
    switch (a->type) {
        case GOSSIP__ALIVE:
            cr_assert_str_eq(a->member.name, b->member.name);
            cr_assert_eq(a->member.id, b->member.id);
            cr_assert_eq(a->member.incarnation, b->member.incarnation);
            cr_assert_str_eq(a->member.api, b->member.api);
            cr_assert_str_eq(a->member.raft, b->member.raft);
            cr_assert_str_eq(a->member.gossip, b->member.gossip);
            cr_assert_eq(a->member.n_tags, b->member.n_tags);
            for (unsigned i = 0; i < a->member.n_tags; i++) {
                cr_assert_str_eq(a->member.tags[i].key, b->member.tags[i].key);
                cr_assert_str_eq(a->member.tags[i].value,
                                 b->member.tags[i].value);
            }
            cr_assert_eq(a->member.meta, b->member.meta);
            cr_assert_eq(a->member.meta_version, b->member.meta_version);
            cr_assert(memcmp(&a->member.load, &b->member.load,
                             sizeof a->member.load) == 0);
            cr_assert_eq(a->member.state, b->member.state);
            break;
        default:
            cr_assert_eq(a->seq, b->seq);
            cr_assert_eq(a->id, b->id);
            cr_assert_eq(a->from, b->from);
            cr_assert_eq(a->incarnation, b->incarnation);
            cr_assert_str_eq(a->addr, b->addr);
            cr_assert_eq(a->meta_version, b->meta_version);
            cr_assert_eq(a->meta, b->meta);
            cr_assert(memcmp(&a->load, &b->load, sizeof a->load) == 0);
            break;
    }
}

Test(gossip_msg, every_type_round_trips)
{
    struct gossip__msg in[9], out[GOSSIP__MAX_MSGS];
    uint8_t pkt[GOSSIP__MAX_UDP];
    unsigned n = sample_msgs(in), got;

    /* One per packet, then all in one packet. */
    for (unsigned i = 0; i < n; i++) {
        size_t len = build(&in[i], 1, pkt, sizeof pkt);
        cr_assert(len > 0);
        cr_assert_eq(
            gossip__packet_decode(pkt, len, out, GOSSIP__MAX_MSGS, &got), 0,
            "type %u", in[i].type);
        cr_assert_eq(got, 1);
        assert_same(&in[i], &out[0]);
    }
    {
        size_t len = build(in, n, pkt, sizeof pkt);
        cr_assert(len > 0 && len <= GOSSIP__MAX_UDP);
        cr_assert_eq(
            gossip__packet_decode(pkt, len, out, GOSSIP__MAX_MSGS, &got), 0);
        cr_assert_eq(got, n);
        for (unsigned i = 0; i < n; i++) {
            assert_same(&in[i], &out[i]);
        }
    }
}

struct pp_ctx
{
    struct gossip_member got[8];
    unsigned n;
};

static void pp_cb(const struct gossip_member *m, void *arg)
{
    struct pp_ctx *c = arg;
    cr_assert(c->n < 8);
    c->got[c->n++] = *m;
}

Test(gossip_msg, pushpull_round_trips_and_rejects)
{
    struct gossip_member a, b;
    const struct gossip_member *list[2] = {&a, &b};
    struct pp_ctx ctx = {.n = 0};
    uint8_t *buf;
    size_t len;
    bool join = false;

    full_member(&a);
    full_member(&b);
    b.id = 99;
    strcpy(b.name, "node-2");
    b.state = GOSSIP_LEFT;
    b.n_tags = 0;
    cr_assert_eq(gossip__pushpull_encode(list, 2, true, &buf, &len), 0);
    cr_assert_eq(gossip__pushpull_decode(buf, len, &join, pp_cb, &ctx), 0);
    cr_assert(join);
    cr_assert_eq(ctx.n, 2);
    cr_assert_str_eq(ctx.got[0].name, "node-1");
    cr_assert_eq(ctx.got[0].state, GOSSIP_ALIVE);
    cr_assert_eq(ctx.got[1].id, 99);
    cr_assert_eq(ctx.got[1].state, GOSSIP_LEFT);
    cr_assert_eq(ctx.got[1].load.mem_free_kib, 1ull << 40);

    /* Every truncation is rejected and reports nothing. */
    for (size_t l = 0; l < len; l++) {
        ctx.n = 0;
        cr_assert_eq(gossip__pushpull_decode(buf, l, &join, pp_cb, &ctx),
                     ERR_MALFORMED, "prefix %zu", l);
        cr_assert_eq(ctx.n, 0);
    }
    /* Wrong version. */
    buf[1] = 2;
    cr_assert_eq(gossip__pushpull_decode(buf, len, &join, pp_cb, &ctx),
                 ERR_VERSION);
    free(buf);
}

Test(gossip_msg, every_truncation_is_rejected)
{
    struct gossip__msg in[9], out[GOSSIP__MAX_MSGS];
    uint8_t pkt[GOSSIP__MAX_UDP];
    unsigned n = sample_msgs(in), got;
    size_t len = build(in, n, pkt, sizeof pkt);
    for (size_t l = 0; l < len; l++) {
        int rv = gossip__packet_decode(pkt, l, out, GOSSIP__MAX_MSGS, &got);
        cr_assert_eq(rv, ERR_MALFORMED, "prefix %zu of %zu: rv %d", l, len, rv);
        cr_assert_eq(got, 0);
    }
    /* Trailing garbage too. */
    pkt[len] = 0;
    cr_assert_eq(
        gossip__packet_decode(pkt, len + 1, out, GOSSIP__MAX_MSGS, &got),
        ERR_MALFORMED);
}

Test(gossip_msg, oversized_and_wrong_version_are_rejected)
{
    uint8_t big[GOSSIP__MAX_UDP + 100];
    struct gossip__msg in[9], out[GOSSIP__MAX_MSGS];
    unsigned got, n = sample_msgs(in);
    size_t len;

    /* A well-formed packet that is too large: [1, [ping, ping, ...]]. */
    memset(big, 0, sizeof big);
    len = build(in, 1, big, sizeof big);
    cr_assert(len > 0);
    cr_assert_eq(gossip__packet_decode(big, GOSSIP__MAX_UDP + 1, out,
                                       GOSSIP__MAX_MSGS, &got),
                 ERR_MALFORMED);
    /* Too many messages for the caller's array. */
    len = build(in, n, big, sizeof big);
    cr_assert_eq(gossip__packet_decode(big, len, out, 2, &got), ERR_MALFORMED);
    /* Version 2 and version 0. */
    len = build(in, 1, big, sizeof big);
    big[1] = 2;
    cr_assert_eq(gossip__packet_decode(big, len, out, GOSSIP__MAX_MSGS, &got),
                 ERR_VERSION);
    big[1] = 0;
    cr_assert_eq(gossip__packet_decode(big, len, out, GOSSIP__MAX_MSGS, &got),
                 ERR_VERSION);
    /* Not an array at all / version not an integer. */
    {
        const uint8_t s1[] = {0xa3, 'a', 'b', 'c'};
        const uint8_t s2[] = {0x92, 0xa1, '1', 0x90};
        const uint8_t s3[] = {0x91, 0x01}; /* no message list */
        const uint8_t s4[] = {0x92, 0x01, 0x91, 0x91, 0x63}; /* type 99 */
        cr_assert_eq(
            gossip__packet_decode(s1, sizeof s1, out, GOSSIP__MAX_MSGS, &got),
            ERR_MALFORMED);
        cr_assert_eq(
            gossip__packet_decode(s2, sizeof s2, out, GOSSIP__MAX_MSGS, &got),
            ERR_MALFORMED);
        cr_assert_eq(
            gossip__packet_decode(s3, sizeof s3, out, GOSSIP__MAX_MSGS, &got),
            ERR_MALFORMED);
        /* An unknown message type is skipped, not an error. */
        cr_assert_eq(
            gossip__packet_decode(s4, sizeof s4, out, GOSSIP__MAX_MSGS, &got),
            0);
        cr_assert_eq(got, 0);
    }
}

Test(gossip_msg, hostile_container_counts_are_rejected)
{
    struct gossip__msg out[GOSSIP__MAX_MSGS];
    unsigned got;
    /* [1, array32 of 4G elements] in a few bytes. */
    const uint8_t a[] = {0x92, 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x90};
    /* map32 with 4G pairs. */
    const uint8_t b[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01};
    /* str32 longer than the packet. */
    const uint8_t c[] = {0x92, 0x01, 0xdb, 0x7f, 0xff, 0xff, 0xff, 'x'};
    /* Deep nesting. */
    uint8_t d[64];
    memset(d, 0x91, sizeof d);
    d[sizeof d - 1] = 0x01;
    cr_assert_eq(
        gossip__packet_decode(a, sizeof a, out, GOSSIP__MAX_MSGS, &got),
        ERR_MALFORMED);
    cr_assert_eq(
        gossip__packet_decode(b, sizeof b, out, GOSSIP__MAX_MSGS, &got),
        ERR_MALFORMED);
    cr_assert_eq(
        gossip__packet_decode(c, sizeof c, out, GOSSIP__MAX_MSGS, &got),
        ERR_MALFORMED);
    cr_assert_eq(
        gossip__packet_decode(d, sizeof d, out, GOSSIP__MAX_MSGS, &got),
        ERR_MALFORMED);
}

Test(gossip_msg, bad_fields_are_rejected)
{
    struct gossip__msg in[9], out[GOSSIP__MAX_MSGS];
    uint8_t pkt[GOSSIP__MAX_UDP];
    unsigned got;
    size_t len;

    sample_msgs(in);
    /* id 0 is invalid. */
    in[0].id = 0;
    len = build(&in[0], 1, pkt, sizeof pkt);
    cr_assert_eq(gossip__packet_decode(pkt, len, out, GOSSIP__MAX_MSGS, &got),
                 ERR_MALFORMED);
    /* Bad address in PING_REQ. */
    strcpy(in[1].addr, "no-port");
    len = build(&in[1], 1, pkt, sizeof pkt);
    cr_assert_eq(gossip__packet_decode(pkt, len, out, GOSSIP__MAX_MSGS, &got),
                 ERR_MALFORMED);
    /* Control character in a name. */
    in[4].member.name[2] = '\n';
    len = build(&in[4], 1, pkt, sizeof pkt);
    cr_assert_eq(gossip__packet_decode(pkt, len, out, GOSSIP__MAX_MSGS, &got),
                 ERR_MALFORMED);
}

Test(gossip_msg, random_garbage_never_crashes)
{
    struct gossip__msg in[9];
    struct gossip__msg *out = calloc(GOSSIP__MAX_MSGS, sizeof *out);
    uint8_t pkt[GOSSIP__MAX_UDP], mut[GOSSIP__MAX_UDP];
    unsigned n = sample_msgs(in), got, accepted = 0;
    size_t len = build(in, n, pkt, sizeof pkt);
    struct prng r;
    prng_seed(&r, test_seed());

    for (int i = 0; i < 20000; i++) {
        size_t l = (size_t)prng_below(&r, GOSSIP__MAX_UDP + 1);
        int rv;
        for (size_t j = 0; j < l; j++) {
            mut[j] = (uint8_t)prng_next(&r);
        }
        rv = gossip__packet_decode(mut, l, out, GOSSIP__MAX_MSGS, &got);
        cr_assert(rv == 0 || rv == ERR_MALFORMED || rv == ERR_VERSION);
    }
    /* Mutations of a valid packet: flip 1..4 bytes. */
    for (int i = 0; i < 20000; i++) {
        int rv, flips = 1 + (int)prng_below(&r, 4);
        memcpy(mut, pkt, len);
        for (int f = 0; f < flips; f++) {
            mut[prng_below(&r, len)] = (uint8_t)prng_next(&r);
        }
        rv = gossip__packet_decode(mut, len, out, GOSSIP__MAX_MSGS, &got);
        cr_assert(rv == 0 || rv == ERR_MALFORMED || rv == ERR_VERSION);
        if (rv == 0) {
            accepted++;
            for (unsigned k = 0; k < got; k++) {
                cr_assert(out[k].type >= GOSSIP__PING &&
                          out[k].type <= GOSSIP__TYPE_MAX);
            }
        }
    }
    fprintf(stderr, "gossip_msg: %u of 20000 mutations still valid\n",
            accepted);
    free(out);
}
