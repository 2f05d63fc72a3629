/* Gossip wire codec: versioned msgpack packets and push-pull frames, with
 * bounded validation of everything received (docs/gossip.md). */
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "err.h"
#include "gossip/gossip_int.h"
#include "mpcheck.h"

#define CHECK_MAX_DEPTH 8
#define PUSHPULL_MAX_ENTRIES 4096

/* ------------------------------------------------------------------ */
/* Structural pre-check (src/mpcheck.h): a packet is exactly one object. */

int gossip__msgpack_check(const uint8_t *p, size_t len)
{
    size_t objlen = 0;
    int rv = mp_check(p, len, CHECK_MAX_DEPTH, &objlen);
    if (rv != 0) {
        return rv;
    }
    return objlen == len ? 0 : ERR_MALFORMED;
}

/* ------------------------------------------------------------------ */
/* Encoding into a bounded buffer (no allocation). */

struct bwriter
{
    uint8_t *buf;
    size_t cap, len;
    bool overflow;
};

static int bwriter_write(void *data, const char *buf, size_t len)
{
    struct bwriter *w = data;
    if (w->overflow || w->cap - w->len < len) {
        w->overflow = true;
        return -1;
    }
    memcpy(w->buf + w->len, buf, len);
    w->len += len;
    return 0;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_load(msgpack_packer *pk, const struct gossip_load *l)
{
    msgpack_pack_array(pk, 5);
    msgpack_pack_uint32(pk, l->running);
    msgpack_pack_uint32(pk, l->slots);
    msgpack_pack_uint32(pk, l->queued);
    msgpack_pack_uint32(pk, l->load1_milli);
    msgpack_pack_uint64(pk, l->mem_free_kib);
}

static void pack_msg(msgpack_packer *pk,
                     const struct gossip__msg *m,
                     bool with_state)
{
    const struct gossip_member *mb = &m->member;
    switch (m->type) {
        case GOSSIP__PING:
            msgpack_pack_array(pk, 4);
            msgpack_pack_uint32(pk, m->type);
            msgpack_pack_uint32(pk, m->seq);
            msgpack_pack_uint64(pk, m->id);
            msgpack_pack_uint64(pk, m->from);
            break;
        case GOSSIP__PING_REQ:
            msgpack_pack_array(pk, 5);
            msgpack_pack_uint32(pk, m->type);
            msgpack_pack_uint32(pk, m->seq);
            msgpack_pack_uint64(pk, m->id);
            pack_str(pk, m->addr);
            msgpack_pack_uint64(pk, m->from);
            break;
        case GOSSIP__ACK:
        case GOSSIP__NACK:
            msgpack_pack_array(pk, 3);
            msgpack_pack_uint32(pk, m->type);
            msgpack_pack_uint32(pk, m->seq);
            msgpack_pack_uint64(pk, m->id);
            break;
        case GOSSIP__ALIVE:
            msgpack_pack_array(pk, with_state ? 12 : 11);
            msgpack_pack_uint32(pk, m->type);
            pack_str(pk, mb->name);
            msgpack_pack_uint64(pk, mb->id);
            msgpack_pack_uint64(pk, mb->incarnation);
            pack_str(pk, mb->api);
            pack_str(pk, mb->raft);
            pack_str(pk, mb->gossip);
            msgpack_pack_map(pk, mb->n_tags);
            for (unsigned i = 0; i < mb->n_tags; i++) {
                pack_str(pk, mb->tags[i].key);
                pack_str(pk, mb->tags[i].value);
            }
            msgpack_pack_uint32(pk, mb->meta);
            msgpack_pack_uint64(pk, mb->meta_version);
            pack_load(pk, &mb->load);
            if (with_state) {
                msgpack_pack_uint32(pk, (uint32_t)mb->state);
            }
            break;
        case GOSSIP__SUSPECT:
        case GOSSIP__DEAD:
            msgpack_pack_array(pk, 4);
            msgpack_pack_uint32(pk, m->type);
            msgpack_pack_uint64(pk, m->id);
            msgpack_pack_uint64(pk, m->incarnation);
            msgpack_pack_uint64(pk, m->from);
            break;
        case GOSSIP__LEFT:
            msgpack_pack_array(pk, 3);
            msgpack_pack_uint32(pk, m->type);
            msgpack_pack_uint64(pk, m->id);
            msgpack_pack_uint64(pk, m->incarnation);
            break;
        case GOSSIP__LOAD:
            msgpack_pack_array(pk, 6);
            msgpack_pack_uint32(pk, m->type);
            msgpack_pack_uint64(pk, m->id);
            msgpack_pack_uint64(pk, m->incarnation);
            msgpack_pack_uint64(pk, m->meta_version);
            msgpack_pack_uint32(pk, m->meta);
            pack_load(pk, &m->load);
            break;
        default:
            msgpack_pack_nil(pk);
            break;
    }
}

size_t gossip__msg_encode(const struct gossip__msg *m,
                          bool with_state,
                          uint8_t *buf,
                          size_t cap)
{
    struct bwriter w = {buf, cap, 0, false};
    msgpack_packer pk;
    if (m->type < GOSSIP__PING || m->type > GOSSIP__TYPE_MAX) {
        return 0;
    }
    msgpack_packer_init(&pk, &w, bwriter_write);
    pack_msg(&pk, m, with_state);
    return w.overflow ? 0 : w.len;
}

size_t gossip__packet_build(uint8_t *out,
                            size_t cap,
                            const uint8_t *const *chunks,
                            const size_t *lens,
                            unsigned n)
{
    struct bwriter w = {out, cap, 0, false};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w, bwriter_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint32(&pk, GOSSIP__VERSION);
    msgpack_pack_array(&pk, n);
    for (unsigned i = 0; i < n; i++) {
        bwriter_write(&w, (const char *)chunks[i], lens[i]);
    }
    return w.overflow ? 0 : w.len;
}

/* ------------------------------------------------------------------ */
/* Decoding from a msgpack object tree (already bounds-checked). */

static int get_u64(const msgpack_object *o, uint64_t max, uint64_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > max) {
        return ERR_MALFORMED;
    }
    *out = o->via.u64;
    return 0;
}

static int get_u32(const msgpack_object *o, uint32_t *out)
{
    uint64_t v;
    if (get_u64(o, UINT32_MAX, &v) != 0) {
        return ERR_MALFORMED;
    }
    *out = (uint32_t)v;
    return 0;
}

/* Printable ASCII only, 1..cap-1 bytes (0 allowed if allow_empty). */
static int get_str(const msgpack_object *o,
                   char *buf,
                   size_t cap,
                   bool allow_empty)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= cap ||
        (!allow_empty && o->via.str.size == 0)) {
        return ERR_MALFORMED;
    }
    for (uint32_t i = 0; i < o->via.str.size; i++) {
        unsigned char c = (unsigned char)o->via.str.ptr[i];
        if (c < 0x20 || c > 0x7e) {
            return ERR_MALFORMED;
        }
    }
    memcpy(buf, o->via.str.ptr, o->via.str.size);
    buf[o->via.str.size] = '\0';
    return 0;
}

static int get_addr(const msgpack_object *o, char *buf, bool allow_empty)
{
    struct addr a;
    if (get_str(o, buf, ADDR_STRLEN, allow_empty) != 0) {
        return ERR_MALFORMED;
    }
    if (buf[0] != '\0' && addr_parse(buf, &a, NULL) != 0) {
        return ERR_MALFORMED;
    }
    return 0;
}

static int get_id(const msgpack_object *o, uint64_t *out)
{
    if (get_u64(o, UINT64_MAX, out) != 0 || *out == 0) {
        return ERR_MALFORMED;
    }
    return 0;
}

static int get_load(const msgpack_object *o, struct gossip_load *l)
{
    const msgpack_object *f;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 5) {
        return ERR_MALFORMED;
    }
    f = o->via.array.ptr;
    if (get_u32(&f[0], &l->running) != 0 || get_u32(&f[1], &l->slots) != 0 ||
        get_u32(&f[2], &l->queued) != 0 ||
        get_u32(&f[3], &l->load1_milli) != 0 ||
        get_u64(&f[4], UINT64_MAX, &l->mem_free_kib) != 0) {
        return ERR_MALFORMED;
    }
    return 0;
}

static int get_tags(const msgpack_object *o, struct gossip_member *m)
{
    if (o->type != MSGPACK_OBJECT_MAP || o->via.map.size > GOSSIP_MAX_TAGS) {
        return ERR_MALFORMED;
    }
    m->n_tags = o->via.map.size;
    for (unsigned i = 0; i < m->n_tags; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        if (get_str(&kv->key, m->tags[i].key, sizeof m->tags[i].key, false) !=
                0 ||
            get_str(&kv->val, m->tags[i].value, sizeof m->tags[i].value,
                    true) != 0) {
            return ERR_MALFORMED;
        }
    }
    return 0;
}

/* Fields a message type needs (extra trailing fields are ignored). */
static const unsigned min_fields[GOSSIP__TYPE_MAX + 1] = {
    0, 4, 5, 3, 3, 11, 4, 4, 3, 6,
};

/* Convert one message; *known is false for an unknown type (skipped). */
static int decode_msg(const msgpack_object *o,
                      struct gossip__msg *m,
                      bool *known)
{
    const msgpack_object *f;
    uint64_t type;
    unsigned n;

    *known = false;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 1) {
        return ERR_MALFORMED;
    }
    f = o->via.array.ptr;
    n = o->via.array.size;
    if (get_u64(&f[0], UINT32_MAX, &type) != 0) {
        return ERR_MALFORMED;
    }
    if (type < GOSSIP__PING || type > GOSSIP__TYPE_MAX) {
        return 0; /* a newer peer's message type: skip it */
    }
    if (n < min_fields[type]) {
        return ERR_MALFORMED;
    }
    memset(m, 0, sizeof *m);
    m->type = (unsigned)type;
    *known = true;
    switch (m->type) {
        case GOSSIP__PING:
            if (get_u32(&f[1], &m->seq) != 0 || get_id(&f[2], &m->id) != 0 ||
                get_id(&f[3], &m->from) != 0) {
                return ERR_MALFORMED;
            }
            return 0;
        case GOSSIP__PING_REQ:
            if (get_u32(&f[1], &m->seq) != 0 || get_id(&f[2], &m->id) != 0 ||
                get_addr(&f[3], m->addr, false) != 0 ||
                get_id(&f[4], &m->from) != 0) {
                return ERR_MALFORMED;
            }
            return 0;
        case GOSSIP__ACK:
        case GOSSIP__NACK:
            if (get_u32(&f[1], &m->seq) != 0 || get_id(&f[2], &m->id) != 0) {
                return ERR_MALFORMED;
            }
            return 0;
        case GOSSIP__ALIVE: {
            struct gossip_member *mb = &m->member;
            uint64_t st = GOSSIP_ALIVE;
            if (get_str(&f[1], mb->name, sizeof mb->name, false) != 0 ||
                get_id(&f[2], &mb->id) != 0 ||
                get_u64(&f[3], UINT64_MAX, &mb->incarnation) != 0 ||
                get_addr(&f[4], mb->api, true) != 0 ||
                get_addr(&f[5], mb->raft, true) != 0 ||
                get_addr(&f[6], mb->gossip, false) != 0 ||
                get_tags(&f[7], mb) != 0 || get_u32(&f[8], &mb->meta) != 0 ||
                get_u64(&f[9], UINT64_MAX, &mb->meta_version) != 0 ||
                get_load(&f[10], &mb->load) != 0) {
                return ERR_MALFORMED;
            }
            if (n > 11 && get_u64(&f[11], GOSSIP_LEFT, &st) != 0) {
                return ERR_MALFORMED;
            }
            mb->state = (enum gossip_state)st;
            m->id = mb->id;
            m->incarnation = mb->incarnation;
            return 0;
        }
        case GOSSIP__SUSPECT:
        case GOSSIP__DEAD:
            if (get_id(&f[1], &m->id) != 0 ||
                get_u64(&f[2], UINT64_MAX, &m->incarnation) != 0 ||
                get_id(&f[3], &m->from) != 0) {
                return ERR_MALFORMED;
            }
            return 0;
        case GOSSIP__LEFT:
            if (get_id(&f[1], &m->id) != 0 ||
                get_u64(&f[2], UINT64_MAX, &m->incarnation) != 0) {
                return ERR_MALFORMED;
            }
            return 0;
        case GOSSIP__LOAD:
            if (get_id(&f[1], &m->id) != 0 ||
                get_u64(&f[2], UINT64_MAX, &m->incarnation) != 0 ||
                get_u64(&f[3], UINT64_MAX, &m->meta_version) != 0 ||
                get_u32(&f[4], &m->meta) != 0 ||
                get_load(&f[5], &m->load) != 0) {
                return ERR_MALFORMED;
            }
            return 0;
        default:
            return ERR_MALFORMED;
    }
}

/* Check structure, unpack, and check the [VERSION, ...] envelope. */
static int open_envelope(const void *buf,
                         size_t len,
                         size_t max_len,
                         unsigned min_size,
                         msgpack_unpacked *u)
{
    size_t off = 0;
    const msgpack_object *top;
    uint64_t version;

    if (buf == NULL || len == 0 || len > max_len) {
        return ERR_MALFORMED;
    }
    if (gossip__msgpack_check(buf, len) != 0) {
        return ERR_MALFORMED;
    }
    if (msgpack_unpack_next(u, buf, len, &off) != MSGPACK_UNPACK_SUCCESS ||
        off != len) {
        return ERR_MALFORMED;
    }
    top = &u->data;
    if (top->type != MSGPACK_OBJECT_ARRAY || top->via.array.size < 1 ||
        get_u64(&top->via.array.ptr[0], UINT64_MAX, &version) != 0) {
        return ERR_MALFORMED;
    }
    if (version != GOSSIP__VERSION) {
        return ERR_VERSION;
    }
    if (top->via.array.size < min_size) {
        return ERR_MALFORMED;
    }
    return 0;
}

int gossip__packet_decode(const void *buf,
                          size_t len,
                          struct gossip__msg *msgs,
                          unsigned max,
                          unsigned *n)
{
    msgpack_unpacked u;
    const msgpack_object *list;
    int rv;

    *n = 0;
    msgpack_unpacked_init(&u);
    rv = open_envelope(buf, len, GOSSIP__MAX_UDP, 2, &u);
    if (rv != 0) {
        goto out;
    }
    list = &u.data.via.array.ptr[1];
    if (list->type != MSGPACK_OBJECT_ARRAY || list->via.array.size > max ||
        list->via.array.size > GOSSIP__MAX_MSGS) {
        rv = ERR_MALFORMED;
        goto out;
    }
    for (uint32_t i = 0; i < list->via.array.size; i++) {
        bool known;
        rv = decode_msg(&list->via.array.ptr[i], &msgs[*n], &known);
        if (rv != 0) {
            *n = 0;
            goto out;
        }
        if (known) {
            (*n)++;
        }
    }
out:
    msgpack_unpacked_destroy(&u);
    return rv;
}

int gossip__pushpull_encode(const struct gossip_member *const *members,
                            unsigned n,
                            bool join,
                            uint8_t **out,
                            size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint8_t rec[GOSSIP__MAX_RECORD + 1024];

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint32(&pk, GOSSIP__VERSION);
    if (join) {
        msgpack_pack_true(&pk);
    } else {
        msgpack_pack_false(&pk);
    }
    msgpack_pack_array(&pk, n);
    for (unsigned i = 0; i < n; i++) {
        struct gossip__msg m;
        size_t l;
        memset(&m, 0, sizeof m);
        m.type = GOSSIP__ALIVE;
        m.member = *members[i];
        l = gossip__msg_encode(&m, true, rec, sizeof rec);
        if (l == 0 || msgpack_sbuffer_write(&sb, (const char *)rec, l) != 0) {
            msgpack_sbuffer_destroy(&sb);
            return ERR_NOMEM;
        }
    }
    if (sb.data == NULL) {
        return ERR_NOMEM;
    }
    *out = (uint8_t *)sb.data;
    *len = sb.size;
    return 0;
}

int gossip__pushpull_decode(const void *buf,
                            size_t len,
                            bool *join,
                            gossip__member_cb cb,
                            void *arg)
{
    msgpack_unpacked u;
    const msgpack_object *top, *list;
    struct gossip__msg *m = NULL;
    int rv;

    msgpack_unpacked_init(&u);
    rv = open_envelope(buf, len, SIZE_MAX, 3, &u);
    if (rv != 0) {
        goto out;
    }
    top = &u.data;
    list = &top->via.array.ptr[2];
    if (top->via.array.ptr[1].type != MSGPACK_OBJECT_BOOLEAN ||
        list->type != MSGPACK_OBJECT_ARRAY ||
        list->via.array.size > PUSHPULL_MAX_ENTRIES) {
        rv = ERR_MALFORMED;
        goto out;
    }
    m = malloc(sizeof *m);
    if (m == NULL) {
        rv = ERR_NOMEM;
        goto out;
    }
    /* Pass 1 validates everything, pass 2 reports. */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < list->via.array.size; i++) {
            bool known;
            rv = decode_msg(&list->via.array.ptr[i], m, &known);
            if (rv == 0 && (!known || m->type != GOSSIP__ALIVE)) {
                rv = ERR_MALFORMED;
            }
            if (rv != 0) {
                goto out;
            }
            if (pass == 1 && cb != NULL) {
                cb(&m->member, arg);
            }
        }
    }
    *join = top->via.array.ptr[1].via.boolean;
out:
    free(m);
    msgpack_unpacked_destroy(&u);
    return rv;
}
