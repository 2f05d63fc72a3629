/* Unit tests: string- and uint64-keyed hash maps. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "map.h"
#include "util.h"

TestSuite(map, .timeout = 30);

Test(map, str_put_get_del)
{
    struct map m;
    int a = 1, b = 2;
    void *old = (void *)&a;
    map_init(&m, MAP_STR);
    cr_assert_null(map_get_str(&m, "x"));
    cr_assert_null(map_del_str(&m, "x"));
    cr_assert_eq(map_put_str(&m, "x", &a, &old), 0);
    cr_assert_null(old);
    cr_assert_eq(map_get_str(&m, "x"), &a);
    cr_assert_eq(map_put_str(&m, "x", &b, &old), 0);
    cr_assert_eq(old, &a);
    cr_assert_eq(map_count(&m), 1);
    cr_assert_eq(map_get_str(&m, "x"), &b);
    cr_assert_eq(map_del_str(&m, "x"), &b);
    cr_assert_eq(map_count(&m), 0);
    cr_assert_null(map_get_str(&m, "x"));
    map_close(&m);
}

Test(map, key_is_copied)
{
    struct map m;
    int a = 1;
    char key[8] = "abc";
    map_init(&m, MAP_STR);
    cr_assert_eq(map_put_str(&m, key, &a, NULL), 0);
    strcpy(key, "zzz");
    cr_assert_eq(map_get_str(&m, "abc"), &a);
    cr_assert_null(map_get_str(&m, "zzz"));
    map_close(&m);
}

Test(map, rejects_null_and_wrong_kind)
{
    struct map s;
    struct map u;
    int a = 1;
    map_init(&s, MAP_STR);
    map_init(&u, MAP_U64);
    cr_assert_eq(map_put_str(&s, "k", NULL, NULL), ERR_INVALID);
    cr_assert_eq(map_put_u64(&s, 1, &a, NULL), ERR_INVALID);
    cr_assert_eq(map_put_str(&u, "k", &a, NULL), ERR_INVALID);
    cr_assert_null(map_get_u64(&s, 1));
    cr_assert_null(map_get_str(&u, "k"));
    cr_assert_eq(map_count(&s), 0);
    cr_assert_eq(map_count(&u), 0);
    map_close(&s);
    map_close(&u);
}

/* Random operations against a reference array, many keys (growth and
 * backward-shift deletion across wrap-around). */
static void model_check(enum map_kind kind, uint64_t seed)
{
    enum { N = 3000 };
    static int vals[N];
    bool present[N] = {false};
    struct map m;
    struct prng p;
    char key[32];
    size_t n = 0;
    map_init(&m, kind);
    prng_seed(&p, seed);
    for (int step = 0; step < 40000; step++) {
        unsigned k = (unsigned)prng_below(&p, N);
        uint64_t uk = (uint64_t)k * 0x9e3779b97f4a7c15ULL; /* sparse ids */
        unsigned op = (unsigned)prng_below(&p, 3);
        void *got;
        snprintf(key, sizeof key, "key-%u", k);
        if (op == 0) {
            int rv = kind == MAP_STR ? map_put_str(&m, key, &vals[k], NULL)
                                     : map_put_u64(&m, uk, &vals[k], NULL);
            cr_assert_eq(rv, 0);
            if (!present[k]) {
                n++;
            }
            present[k] = true;
        } else if (op == 1) {
            got = kind == MAP_STR ? map_del_str(&m, key) : map_del_u64(&m, uk);
            cr_assert_eq(got, present[k] ? &vals[k] : NULL);
            if (present[k]) {
                n--;
            }
            present[k] = false;
        } else {
            got = kind == MAP_STR ? map_get_str(&m, key) : map_get_u64(&m, uk);
            cr_assert_eq(got, present[k] ? &vals[k] : NULL, "step %d key %u",
                         step, k);
        }
        cr_assert_eq(map_count(&m), n);
    }
    /* Every present key is found; iteration visits each exactly once. */
    {
        struct map_iter it;
        const char *sk;
        uint64_t ukey;
        void *v;
        size_t seen = 0;
        map_iter_init(&it, &m);
        while (map_iter_next(&it, &sk, &ukey, &v)) {
            unsigned k = (unsigned)((int *)v - vals);
            cr_assert_lt(k, N);
            cr_assert(present[k]);
            if (kind == MAP_STR) {
                snprintf(key, sizeof key, "key-%u", k);
                cr_assert_str_eq(sk, key);
            } else {
                cr_assert_eq(ukey, (uint64_t)k * 0x9e3779b97f4a7c15ULL);
            }
            seen++;
        }
        cr_assert_eq(seen, n);
    }
    map_close(&m);
    cr_assert_eq(map_count(&m), 0);
    /* Usable again after close. */
    cr_assert_eq(kind == MAP_STR ? map_put_str(&m, "a", vals, NULL)
                                 : map_put_u64(&m, 7, vals, NULL),
                 0);
    map_close(&m);
}

Test(map, str_model)
{
    model_check(MAP_STR, 1);
    model_check(MAP_STR, 99);
}

Test(map, u64_model)
{
    model_check(MAP_U64, 2);
    model_check(MAP_U64, 77);
}

Test(map, u64_zero_and_max_keys)
{
    struct map m;
    int a = 1, b = 2;
    map_init(&m, MAP_U64);
    cr_assert_eq(map_put_u64(&m, 0, &a, NULL), 0);
    cr_assert_eq(map_put_u64(&m, UINT64_MAX, &b, NULL), 0);
    cr_assert_eq(map_get_u64(&m, 0), &a);
    cr_assert_eq(map_get_u64(&m, UINT64_MAX), &b);
    cr_assert_eq(map_del_u64(&m, 0), &a);
    cr_assert_eq(map_get_u64(&m, UINT64_MAX), &b);
    map_close(&m);
}
