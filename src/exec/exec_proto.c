/* Agent<->helper frame codec: length-prefixed, versioned msgpack frames,
 * validated strictly in both directions. */
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "exec/exec_int.h"
#include "mpcheck.h"

void exec__buf_free(struct exec__buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void exec__buf_consume(struct exec__buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

int exec__buf_append(struct exec__buf *b, const void *data, size_t len)
{
    if (len > b->cap - b->len) {
        size_t cap = b->cap == 0 ? 256 : b->cap;
        uint8_t *p;
        while (cap - b->len < len) {
            cap *= 2;
        }
        p = realloc(b->data, cap);
        if (p == NULL) {
            return ERR_NOMEM;
        }
        b->data = p;
        b->cap = cap;
    }
    if (len > 0) {
        memcpy(b->data + b->len, data, len);
    }
    b->len += len;
    return 0;
}

bool exec__job_id_valid(const char *s)
{
    size_t n = 0;
    if (s == NULL || s[0] == '\0' || s[0] == '.') {
        return false;
    }
    for (; s[n] != '\0'; n++) {
        char c = s[n];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' ||
                  c == ':' || c == '@' || c == '+';
        if (!ok || n + 1 >= EXEC_JOB_ID_SIZE) {
            return false;
        }
    }
    return true;
}

/* ---- encoding ---- */

struct enc
{
    struct exec__buf *out;
    int rv;
};

static int enc_write_cb(void *data, const char *buf, size_t len)
{
    struct enc *e = data;
    if (e->rv != 0) {
        return -1;
    }
    e->rv = exec__buf_append(e->out, buf, len);
    return e->rv == 0 ? 0 : -1;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static size_t count_strv(char **v)
{
    size_t n = 0;
    while (v != NULL && v[n] != NULL) {
        n++;
    }
    return n;
}

static int encode_body(const struct exec__msg *m, msgpack_packer *pk)
{
    size_t n;
    switch (m->type) {
        case EXEC__MSG_SPAWN:
            if (!exec__job_id_valid(m->job_id) || m->argv == NULL ||
                m->argv[0] == NULL) {
                return ERR_INVALID;
            }
            msgpack_pack_array(pk, 6);
            pack_str(pk, m->job_id);
            msgpack_pack_uint64(pk, m->epoch);
            msgpack_pack_uint64(pk, m->timeout_ms);
            n = count_strv(m->argv);
            if (n > EXEC__ARGS_MAX) {
                return ERR_TOOBIG;
            }
            msgpack_pack_array(pk, n);
            for (size_t i = 0; i < n; i++) {
                pack_str(pk, m->argv[i]);
            }
            n = count_strv(m->env);
            if (n > EXEC__ARGS_MAX) {
                return ERR_TOOBIG;
            }
            msgpack_pack_array(pk, n);
            for (size_t i = 0; i < n; i++) {
                pack_str(pk, m->env[i]);
            }
            msgpack_pack_array(pk, 3);
            for (size_t i = 0; i < 3; i++) {
                msgpack_pack_uint64(pk, m->limits[i]);
            }
            return 0;
        case EXEC__MSG_KILL:
            if (!exec__job_id_valid(m->job_id)) {
                return ERR_INVALID;
            }
            msgpack_pack_array(pk, 2);
            pack_str(pk, m->job_id);
            msgpack_pack_uint64(pk, m->why);
            return 0;
        case EXEC__MSG_FENCE:
            msgpack_pack_array(pk, 3);
            msgpack_pack_uint64(pk, m->seq);
            msgpack_pack_uint64(pk, m->ms);
            msgpack_pack_uint64(pk, m->at);
            return 0;
        case EXEC__MSG_FENCE_NOW:
            msgpack_pack_array(pk, 1);
            msgpack_pack_uint64(pk, m->seq);
            return 0;
        case EXEC__MSG_SHUTDOWN:
            msgpack_pack_array(pk, 0);
            return 0;
        case EXEC__MSG_STARTED:
            msgpack_pack_array(pk, 3);
            pack_str(pk, m->job_id);
            msgpack_pack_uint64(pk, m->epoch);
            msgpack_pack_uint64(pk, m->pid);
            return 0;
        case EXEC__MSG_OUTPUT:
            if (m->stream != 1 && m->stream != 2) {
                return ERR_INVALID;
            }
            if (m->len > EXEC__BATCH_MAX) {
                return ERR_TOOBIG;
            }
            msgpack_pack_array(pk, 4);
            pack_str(pk, m->job_id);
            msgpack_pack_uint64(pk, m->epoch);
            msgpack_pack_uint64(pk, m->stream);
            msgpack_pack_bin(pk, m->len);
            msgpack_pack_bin_body(pk, m->data, m->len);
            return 0;
        case EXEC__MSG_EXIT:
            msgpack_pack_array(pk, 5);
            pack_str(pk, m->job_id);
            msgpack_pack_uint64(pk, m->epoch);
            msgpack_pack_uint64(pk, m->end);
            msgpack_pack_int32(pk, m->exit_code);
            msgpack_pack_int32(pk, m->signal);
            return 0;
        case EXEC__MSG_FENCED:
            msgpack_pack_array(pk, 2);
            msgpack_pack_uint64(pk, m->seq);
            msgpack_pack_uint64(pk, m->killed);
            return 0;
        default:
            return ERR_INVALID;
    }
}

int exec__msg_encode(const struct exec__msg *m, struct exec__buf *out)
{
    struct enc e = {out, 0};
    msgpack_packer pk;
    size_t start = out->len;
    uint8_t hdr[EXEC__HDR_SIZE] = {0};
    size_t body;
    int rv;

    hdr[4] = EXEC__PROTO_VERSION;
    hdr[5] = m->type;
    rv = exec__buf_append(out, hdr, sizeof hdr);
    if (rv != 0) {
        return rv;
    }
    msgpack_packer_init(&pk, &e, enc_write_cb);
    rv = encode_body(m, &pk);
    if (rv == 0) {
        rv = e.rv;
    }
    if (rv != 0) {
        goto err;
    }
    body = out->len - start - 4;
    if (body > EXEC__FRAME_MAX) {
        rv = ERR_TOOBIG;
        goto err;
    }
    out->data[start] = (uint8_t)(body >> 24);
    out->data[start + 1] = (uint8_t)(body >> 16);
    out->data[start + 2] = (uint8_t)(body >> 8);
    out->data[start + 3] = (uint8_t)body;
    return 0;

err:
    out->len = start;
    return rv;
}

/* ---- decoding ---- */

int exec__frame_peek(const uint8_t *buf, size_t len, size_t *frame_len)
{
    uint32_t n;
    *frame_len = 0;
    if (len < 4) {
        return 0;
    }
    n = ((uint32_t)buf[0] << 24) | ((uint32_t)buf[1] << 16) |
        ((uint32_t)buf[2] << 8) | (uint32_t)buf[3];
    if (n > EXEC__FRAME_MAX) {
        return ERR_TOOBIG;
    }
    if (n < EXEC__HDR_SIZE - 4) {
        return ERR_MALFORMED;
    }
    if (len - 4 < n) {
        return 0;
    }
    *frame_len = 4 + (size_t)n;
    return 0;
}

/* Walk one msgpack object without building it, checking that every length
 * fits in the bytes present and that the object count is small.
 * msgpack_unpack_next sizes its zone from the declared container counts
 * before it looks at the data, so a 10-byte frame claiming a 2^32-element
 * array would otherwise ask for 100 GiB. */
static bool msgpack_sane(const uint8_t *p, size_t len)
{
    size_t objlen = 0;
    return mp_check(p, len, 8, &objlen) == 0 && objlen == len;
}

static bool get_u64(const msgpack_object *o, uint64_t max, uint64_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > max) {
        return false;
    }
    *out = o->via.u64;
    return true;
}

static bool get_i32(const msgpack_object *o, int32_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT32_MAX) {
        *out = (int32_t)o->via.u64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 >= INT32_MIN) {
        *out = (int32_t)o->via.i64;
        return true;
    }
    return false;
}

/* A str without embedded NULs, copied into dst (size bytes incl. NUL). */
static bool get_str(const msgpack_object *o, char *dst, size_t size)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= size ||
        memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL) {
        return false;
    }
    memcpy(dst, o->via.str.ptr, o->via.str.size);
    dst[o->via.str.size] = '\0';
    return true;
}

static bool get_job_id(const msgpack_object *o, char *dst)
{
    return get_str(o, dst, EXEC_JOB_ID_SIZE) && exec__job_id_valid(dst);
}

/* Validate an array of strings; add its byte needs to *bytes. */
static bool check_strv(const msgpack_object *o, bool nonempty, size_t *bytes)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > EXEC__ARGS_MAX ||
        (nonempty && o->via.array.size == 0)) {
        return false;
    }
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *s = &o->via.array.ptr[i];
        if (s->type != MSGPACK_OBJECT_STR ||
            memchr(s->via.str.ptr, '\0', s->via.str.size) != NULL) {
            return false;
        }
        *bytes += sizeof(char *) + s->via.str.size + 1;
    }
    *bytes += sizeof(char *);
    return true;
}

/* Copy an array of strings into a NULL-terminated vector carved from *mem
 * (pointers) and *chars (text). */
static char **copy_strv(const msgpack_object *o, char ***ptrs, char **chars)
{
    char **v = *ptrs;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *s = &o->via.array.ptr[i];
        memcpy(*chars, s->via.str.ptr, s->via.str.size);
        (*chars)[s->via.str.size] = '\0';
        v[i] = *chars;
        *chars += s->via.str.size + 1;
    }
    v[o->via.array.size] = NULL;
    *ptrs += o->via.array.size + 1;
    return v;
}

static int decode_spawn(const msgpack_object *f, struct exec__msg *m)
{
    size_t bytes = 0;
    size_t nptr;
    char **ptrs;
    char *chars;
    const msgpack_object *lim = &f[5];

    if (!get_job_id(&f[0], m->job_id) ||
        !get_u64(&f[1], UINT64_MAX, &m->epoch) ||
        !get_u64(&f[2], UINT64_MAX, &m->timeout_ms) ||
        !check_strv(&f[3], true, &bytes) || !check_strv(&f[4], false, &bytes) ||
        lim->type != MSGPACK_OBJECT_ARRAY || lim->via.array.size != 3) {
        return ERR_MALFORMED;
    }
    for (int i = 0; i < 3; i++) {
        if (!get_u64(&lim->via.array.ptr[i], UINT64_MAX, &m->limits[i])) {
            return ERR_MALFORMED;
        }
    }
    ptrs = malloc(bytes);
    if (ptrs == NULL) {
        return ERR_NOMEM;
    }
    nptr = f[3].via.array.size + 1 + f[4].via.array.size + 1;
    chars = (char *)(ptrs + nptr);
    m->argv = copy_strv(&f[3], &ptrs, &chars);
    m->env = copy_strv(&f[4], &ptrs, &chars);
    return 0;
}

static int decode_fields(const msgpack_object *f,
                         uint32_t n,
                         struct exec__msg *m)
{
    uint64_t v;
    switch (m->type) {
        case EXEC__MSG_SPAWN:
            if (n != 6) {
                return ERR_MALFORMED;
            }
            return decode_spawn(f, m);
        case EXEC__MSG_KILL:
            if (n != 2 || !get_job_id(&f[0], m->job_id) ||
                !get_u64(&f[1], EXEC_LOST, &v)) {
                return ERR_MALFORMED;
            }
            m->why = (uint8_t)v;
            return 0;
        case EXEC__MSG_FENCE:
            if (n != 3 || !get_u64(&f[0], UINT64_MAX, &m->seq) ||
                !get_u64(&f[1], UINT32_MAX, &m->ms) ||
                !get_u64(&f[2], UINT64_MAX, &m->at)) {
                return ERR_MALFORMED;
            }
            return 0;
        case EXEC__MSG_FENCE_NOW:
            if (n != 1 || !get_u64(&f[0], UINT64_MAX, &m->seq)) {
                return ERR_MALFORMED;
            }
            return 0;
        case EXEC__MSG_SHUTDOWN:
            return n == 0 ? 0 : ERR_MALFORMED;
        case EXEC__MSG_STARTED:
            if (n != 3 || !get_job_id(&f[0], m->job_id) ||
                !get_u64(&f[1], UINT64_MAX, &m->epoch) ||
                !get_u64(&f[2], INT32_MAX, &m->pid) || m->pid == 0) {
                return ERR_MALFORMED;
            }
            return 0;
        case EXEC__MSG_OUTPUT:
            if (n != 4 || !get_job_id(&f[0], m->job_id) ||
                !get_u64(&f[1], UINT64_MAX, &m->epoch) ||
                !get_u64(&f[2], 2, &v) || v == 0 ||
                f[3].type != MSGPACK_OBJECT_BIN ||
                f[3].via.bin.size > EXEC__BATCH_MAX) {
                return ERR_MALFORMED;
            }
            m->stream = (uint8_t)v;
            m->data = f[3].via.bin.ptr;
            m->len = f[3].via.bin.size;
            return 0;
        case EXEC__MSG_EXIT:
            if (n != 5 || !get_job_id(&f[0], m->job_id) ||
                !get_u64(&f[1], UINT64_MAX, &m->epoch) ||
                !get_u64(&f[2], EXEC_LOST, &v) ||
                !get_i32(&f[3], &m->exit_code) || !get_i32(&f[4], &m->signal)) {
                return ERR_MALFORMED;
            }
            m->end = (uint8_t)v;
            return 0;
        case EXEC__MSG_FENCED:
            if (n != 2 || !get_u64(&f[0], UINT64_MAX, &m->seq) ||
                !get_u64(&f[1], UINT64_MAX, &m->killed)) {
                return ERR_MALFORMED;
            }
            return 0;
        default:
            return ERR_MALFORMED;
    }
}

int exec__msg_decode(const uint8_t *buf,
                     size_t len,
                     struct exec__msg *m,
                     char *errmsg)
{
    msgpack_unpacked und;
    msgpack_unpack_return ur;
    size_t frame_len;
    size_t off = 0;
    int rv;

    memset(m, 0, sizeof *m);
    rv = exec__frame_peek(buf, len, &frame_len);
    if (rv != 0 || frame_len != len) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "exec: bad frame length");
        }
        return rv != 0 ? rv : ERR_MALFORMED;
    }
    if (buf[4] != EXEC__PROTO_VERSION) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "exec: protocol version %u, want %u", buf[4],
                          EXEC__PROTO_VERSION);
        }
        return ERR_VERSION;
    }
    m->type = buf[5];
    if (!msgpack_sane(buf + EXEC__HDR_SIZE, len - EXEC__HDR_SIZE)) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "exec: bad frame (type %u): bad msgpack",
                          m->type);
        }
        return ERR_MALFORMED;
    }
    msgpack_unpacked_init(&und);
    ur = msgpack_unpack_next(&und, (const char *)buf + EXEC__HDR_SIZE,
                             len - EXEC__HDR_SIZE, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len - EXEC__HDR_SIZE ||
        und.data.type != MSGPACK_OBJECT_ARRAY) {
        rv = ur == MSGPACK_UNPACK_NOMEM_ERROR ? ERR_NOMEM : ERR_MALFORMED;
    } else {
        rv = decode_fields(und.data.via.array.ptr, und.data.via.array.size, m);
    }
    if (rv == 0 && m->type == EXEC__MSG_OUTPUT &&
        ((const uint8_t *)m->data < buf ||
         (const uint8_t *)m->data + m->len > buf + len)) {
        /* msgpack_unpack_next references bin bodies in the input buffer;
         * m->data must stay valid after the zone is destroyed. */
        rv = ERR_MALFORMED;
    }
    msgpack_unpacked_destroy(&und);
    if (rv != 0) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "exec: bad frame (type %u): %s", m->type,
                          err_str(rv));
        }
        exec__msg_free(m);
    }
    return rv;
}

void exec__msg_free(struct exec__msg *m)
{
    /* argv and env share one allocation that starts at argv. */
    free(m->argv);
    m->argv = NULL;
    m->env = NULL;
}

/* ---- frame reassembly ---- */

int exec__rx_feed(struct exec_rx *rx, const void *data, size_t len)
{
    const uint8_t *p = data;
    if (rx->skip > 0) {
        size_t n = rx->skip < len ? (size_t)rx->skip : len;
        rx->skip -= n;
        p += n;
        len -= n;
    }
    if (len == 0) {
        return 0;
    }
    if (rx->pos > 0) {
        /* Compact before growing: consumed frames are no longer needed. */
        memmove(rx->data, rx->data + rx->pos, rx->len - rx->pos);
        rx->len -= rx->pos;
        rx->pos = 0;
    }
    if (len > rx->cap - rx->len) {
        size_t cap = rx->cap == 0 ? 4096 : rx->cap;
        uint8_t *np;
        while (cap - rx->len < len) {
            cap *= 2;
        }
        np = realloc(rx->data, cap);
        if (np == NULL) {
            return ERR_NOMEM;
        }
        rx->data = np;
        rx->cap = cap;
    }
    memcpy(rx->data + rx->len, p, len);
    rx->len += len;
    return 0;
}

int exec__rx_next(struct exec_rx *rx, const uint8_t **frame, size_t *len)
{
    const uint8_t *p = rx->data + rx->pos;
    size_t avail = rx->len - rx->pos;
    size_t n;
    int rv;

    *frame = NULL;
    *len = 0;
    rv = exec__frame_peek(p, avail, &n);
    if (rv != 0) {
        /* Drop the whole declared frame: length prefix plus body. */
        uint64_t total = 4 + (((uint64_t)p[0] << 24) | ((uint64_t)p[1] << 16) |
                              ((uint64_t)p[2] << 8) | (uint64_t)p[3]);
        if (total <= avail) {
            rx->pos += (size_t)total;
        } else {
            rx->skip = total - avail;
            rx->pos = rx->len;
        }
        if (rx->pos == rx->len) {
            rx->pos = rx->len = 0;
        }
        return rv;
    }
    if (n == 0) {
        if (avail == 0) {
            rx->pos = rx->len = 0;
        }
        return 0;
    }
    *frame = p;
    *len = n;
    rx->pos += n;
    return 0;
}

void exec__rx_free(struct exec_rx *rx)
{
    free(rx->data);
    memset(rx, 0, sizeof *rx);
}
