/* A bounds check of msgpack bytes before msgpack-c parses them. */
#include "mpcheck.h"

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

static bool rd(const unsigned char *p,
               size_t len,
               size_t *off,
               unsigned n,
               uint64_t *out)
{
    uint64_t v = 0;
    if (len - *off < n) {
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        v = (v << 8) | p[*off + i];
    }
    *off += n;
    *out = v;
    return true;
}

int mp_check(const void *buf, size_t len, unsigned max_depth, size_t *objlen)
{
    if (max_depth > MP_CHECK_DEPTH_MAX) {
        max_depth = MP_CHECK_DEPTH_MAX;
    }
    const unsigned char *p = buf;
    size_t off = 0;
    uint64_t stack[MP_CHECK_DEPTH_MAX + 1]; /* objects left per open
                                             * container */
    unsigned depth = 0;
    uint64_t pending = 1; /* objects still to read, all depths */
    stack[0] = 1;
    while (depth > 0 || stack[0] > 0) {
        unsigned char b;
        uint64_t skip = 0; /* payload bytes to skip */
        uint64_t children = 0;
        uint64_t v;
        if (stack[depth] == 0) {
            depth--;
            continue;
        }
        if (off >= len) {
            return ERR_MALFORMED;
        }
        stack[depth]--;
        pending--;
        b = p[off++];
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool */
        } else if (b <= 0x8f) {
            children = 2ULL * (b & 0x0f);
        } else if (b <= 0x9f) {
            children = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
                case 0xc4:
                case 0xd9: /* bin8, str8 */
                    if (!rd(p, len, &off, 1, &skip)) {
                        return ERR_MALFORMED;
                    }
                    break;
                case 0xc5:
                case 0xda:
                    if (!rd(p, len, &off, 2, &skip)) {
                        return ERR_MALFORMED;
                    }
                    break;
                case 0xc6:
                case 0xdb:
                    if (!rd(p, len, &off, 4, &skip)) {
                        return ERR_MALFORMED;
                    }
                    break;
                case 0xc7:
                case 0xc8:
                case 0xc9: /* ext8/16/32 */
                    if (!rd(p, len, &off,
                            b == 0xc7   ? 1
                            : b == 0xc8 ? 2
                                        : 4,
                            &skip)) {
                        return ERR_MALFORMED;
                    }
                    skip += 1;
                    break;
                case 0xca:
                    skip = 4;
                    break;
                case 0xcb:
                    skip = 8;
                    break;
                case 0xcc:
                case 0xd0:
                    skip = 1;
                    break;
                case 0xcd:
                case 0xd1:
                    skip = 2;
                    break;
                case 0xce:
                case 0xd2:
                    skip = 4;
                    break;
                case 0xcf:
                case 0xd3:
                    skip = 8;
                    break;
                case 0xd4:
                    skip = 2;
                    break;
                case 0xd5:
                    skip = 3;
                    break;
                case 0xd6:
                    skip = 5;
                    break;
                case 0xd7:
                    skip = 9;
                    break;
                case 0xd8:
                    skip = 17;
                    break;
                case 0xdc:
                    if (!rd(p, len, &off, 2, &children)) {
                        return ERR_MALFORMED;
                    }
                    break;
                case 0xdd:
                    if (!rd(p, len, &off, 4, &children)) {
                        return ERR_MALFORMED;
                    }
                    break;
                case 0xde:
                    if (!rd(p, len, &off, 2, &v)) {
                        return ERR_MALFORMED;
                    }
                    children = 2 * v;
                    break;
                case 0xdf:
                    if (!rd(p, len, &off, 4, &v)) {
                        return ERR_MALFORMED;
                    }
                    children = 2 * v;
                    break;
                default: /* 0xc1 is never used */
                    return ERR_MALFORMED;
            }
        }
        if (skip > len - off) {
            return ERR_MALFORMED;
        }
        off += skip;
        if (children > 0) {
            /* Each pending object needs at least one byte. */
            pending += children;
            if (pending > len - off || depth >= max_depth) {
                return ERR_MALFORMED;
            }
            stack[++depth] = children;
        }
    }
    *objlen = off;
    return 0;
}
