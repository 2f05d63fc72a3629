/* Unit tests: the msgpack structural check shared by every decoder. */
#include <criterion/criterion.h>
#include <msgpack.h>
#include <string.h>

#include "err.h"
#include "mpcheck.h"
#include "util.h"

Test(mpcheck, accepts_one_object_and_reports_its_length)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t objlen = 0;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, 1ULL << 40);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str(&pk, 3);
    msgpack_pack_str_body(&pk, "key", 3);
    msgpack_pack_bin(&pk, 4);
    msgpack_pack_bin_body(&pk, "\0\1\2\3", 4);
    msgpack_pack_double(&pk, 1.5);
    msgpack_sbuffer_write(&sb, "\0\0\0", 3); /* padding after the object */
    cr_assert_eq(mp_check(sb.data, sb.size, 8, &objlen), 0);
    cr_assert_eq(objlen, sb.size - 3);
    /* every strict prefix is refused */
    for (size_t n = 0; n < sb.size - 3; n++) {
        cr_assert_eq(mp_check(sb.data, n, 8, &objlen), ERR_MALFORMED,
                     "prefix %zu accepted", n);
    }
    msgpack_sbuffer_destroy(&sb);
}

Test(mpcheck, refuses_hostile_headers_and_depth)
{
    static const unsigned char huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    static const unsigned char huge_map[] = {0xdf, 0x7f, 0xff, 0xff, 0xff, 1};
    static const unsigned char huge_str[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'};
    static const unsigned char never_used[] = {0xc1};
    unsigned char deep[64];
    size_t objlen;
    cr_assert_eq(mp_check(huge_array, sizeof huge_array, 8, &objlen),
                 ERR_MALFORMED);
    cr_assert_eq(mp_check(huge_map, sizeof huge_map, 8, &objlen),
                 ERR_MALFORMED);
    cr_assert_eq(mp_check(huge_str, sizeof huge_str, 8, &objlen),
                 ERR_MALFORMED);
    cr_assert_eq(mp_check(never_used, sizeof never_used, 8, &objlen),
                 ERR_MALFORMED);
    memset(deep, 0x91, sizeof deep); /* [[[[...]]]] */
    deep[sizeof deep - 1] = 0x00;
    cr_assert_eq(mp_check(deep, sizeof deep, 8, &objlen), ERR_MALFORMED);
    cr_assert_eq(mp_check(deep, 9, 8, &objlen), ERR_MALFORMED);
}

Test(mpcheck, random_bytes_never_crash)
{
    struct prng r;
    unsigned char buf[256];
    prng_seed(&r, 42);
    for (int i = 0; i < 100000; i++) {
        size_t n = (size_t)prng_below(&r, sizeof buf);
        size_t objlen = 0;
        for (size_t k = 0; k < n; k++) {
            buf[k] = (unsigned char)prng_next(&r);
        }
        if (mp_check(buf, n, 16, &objlen) == 0) {
            cr_assert_leq(objlen, n);
        }
    }
}
