/* Unit tests: TZif reader, POSIX footer rules, zone names, cache. */
#define _GNU_SOURCE /* nftw */
#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "lib/harness.h"
#include "sched/tz.h"
#include "util.h"

TestSuite(tz, .timeout = 60);

static int64_t at(const char *rfc3339)
{
    int64_t ms = 0;
    cr_assert_eq(time_parse_ms(rfc3339, &ms), 0, "bad time %s", rfc3339);
    return ms / 1000;
}

static const struct tz *zone(const char *name)
{
    const struct tz *z = NULL;
    char errmsg[ERRMSG_SIZE] = "";
    int rv = tz_load(name, &z, errmsg);
    cr_assert_eq(rv, 0, "tz_load(%s): %s", name, errmsg);
    cr_assert_not_null(z);
    return z;
}

static void expect_off(const char *name, const char *when, int64_t off)
{
    int64_t got = tz_utc_offset_s(zone(name), at(when));
    cr_expect_eq(got, off, "%s at %s: offset %lld, want %lld", name, when,
                 (long long)got, (long long)off);
}

Test(tz, offsets_table)
{
    expect_off("UTC", "2026-07-01T12:00:00Z", 0);
    expect_off(NULL, "2026-07-01T12:00:00Z", 0);
    expect_off("", "1970-01-01T00:00:00Z", 0);
    expect_off("Etc/UTC", "2026-07-01T12:00:00Z", 0);
    expect_off("Europe/Berlin", "2026-07-01T12:00:00Z", 7200);
    expect_off("Europe/Berlin", "2026-01-15T12:00:00Z", 3600);
    expect_off("America/New_York", "2026-07-04T12:00:00Z", -4 * 3600);
    expect_off("America/New_York", "2026-12-25T12:00:00Z", -5 * 3600);
    expect_off("Asia/Kolkata", "2026-07-01T00:00:00Z", 19800);
    expect_off("Asia/Kolkata", "2026-01-01T00:00:00Z", 19800);
    /* Lord Howe: +10:30 standard, +11:00 in (southern) summer. */
    expect_off("Australia/Lord_Howe", "2026-07-01T00:00:00Z", 37800);
    expect_off("Australia/Lord_Howe", "2026-01-15T00:00:00Z", 39600);
    expect_off("Australia/Sydney", "2026-01-15T00:00:00Z", 11 * 3600);
    expect_off("Australia/Sydney", "2026-07-15T00:00:00Z", 10 * 3600);
}

Test(tz, transition_edges_2026)
{
    /* Berlin: 2026-03-29 01:00Z spring forward, 2026-10-25 01:00Z back. */
    expect_off("Europe/Berlin", "2026-03-29T00:59:59Z", 3600);
    expect_off("Europe/Berlin", "2026-03-29T01:00:00Z", 7200);
    expect_off("Europe/Berlin", "2026-10-25T00:59:59Z", 7200);
    expect_off("Europe/Berlin", "2026-10-25T01:00:00Z", 3600);
    /* New York: 2026-03-08 07:00Z and 2026-11-01 06:00Z. */
    expect_off("America/New_York", "2026-03-08T06:59:59Z", -5 * 3600);
    expect_off("America/New_York", "2026-03-08T07:00:00Z", -4 * 3600);
    expect_off("America/New_York", "2026-11-01T05:59:59Z", -4 * 3600);
    expect_off("America/New_York", "2026-11-01T06:00:00Z", -5 * 3600);
}

Test(tz, far_future_uses_footer)
{
    /* 2100-03-28 is the last Sunday of March 2100. */
    expect_off("Europe/Berlin", "2100-03-28T00:59:59Z", 3600);
    expect_off("Europe/Berlin", "2100-03-28T01:00:00Z", 7200);
    expect_off("Europe/Berlin", "2100-07-01T00:00:00Z", 7200);
    expect_off("Europe/Berlin", "2100-12-01T00:00:00Z", 3600);
    expect_off("America/New_York", "2500-07-04T12:00:00Z", -4 * 3600);
    expect_off("America/New_York", "2500-01-04T12:00:00Z", -5 * 3600);
    expect_off("Asia/Kolkata", "3000-01-01T00:00:00Z", 19800);
    expect_off("Australia/Lord_Howe", "2200-01-15T00:00:00Z", 39600);
    expect_off("Australia/Lord_Howe", "2200-07-15T00:00:00Z", 37800);
}

Test(tz, transitions_next_prev)
{
    const struct tz *b = zone("Europe/Berlin");
    const struct tz *k = zone("Asia/Kolkata");
    int64_t t = 0;

    cr_assert(tz_next_transition(b, at("2026-01-01T00:00:00Z"), &t));
    cr_expect_eq(t, at("2026-03-29T01:00:00Z"));
    cr_assert(tz_next_transition(b, t, &t));
    cr_expect_eq(t, at("2026-10-25T01:00:00Z"));
    cr_assert(tz_prev_transition(b, t, &t));
    cr_expect_eq(t, at("2026-10-25T01:00:00Z"));
    cr_assert(tz_prev_transition(b, t - 1, &t));
    cr_expect_eq(t, at("2026-03-29T01:00:00Z"));
    /* Footer-computed transitions. */
    cr_assert(tz_next_transition(b, at("2100-01-01T00:00:00Z"), &t));
    cr_expect_eq(t, at("2100-03-28T01:00:00Z"));
    cr_assert(tz_next_transition(b, t, &t));
    cr_expect_eq(t, at("2100-10-31T01:00:00Z"));
    cr_assert(tz_prev_transition(b, at("2100-06-01T00:00:00Z"), &t));
    cr_expect_eq(t, at("2100-03-28T01:00:00Z"));
    /* No DST anywhere after 1945 in Kolkata. */
    cr_expect_not(tz_next_transition(k, at("2026-01-01T00:00:00Z"), &t));
    cr_expect_not(tz_next_transition(zone("UTC"), 0, &t));
}

/* Cross-check against glibc (only in this test process: the library itself
 * never touches TZ). */
Test(tz, matches_glibc_localtime)
{
    static const char *const names[] = {
        "Europe/Berlin",       "America/New_York",  "Asia/Kolkata",
        "Australia/Lord_Howe", "America/Sao_Paulo", "Pacific/Chatham",
        "Africa/Casablanca",   "America/St_Johns",  "Europe/Dublin",
        "Asia/Tehran",         "Pacific/Apia",      "America/Santiago",
    };
    struct prng r;
    unsigned i;
    unsigned k;

    prng_seed(&r, 42);
    for (i = 0; i < ARRAY_SIZE(names); i++) {
        const struct tz *z = zone(names[i]);
        char env[96];
        snprintf(env, sizeof env, ":%s", names[i]);
        setenv("TZ", env, 1);
        tzset();
        for (k = 0; k < 3000; k++) {
            /* 1970 .. 2200 */
            int64_t t = (int64_t)prng_below(&r, 7258118400ULL);
            time_t tt = (time_t)t;
            struct tm tm;
            cr_assert_not_null(localtime_r(&tt, &tm));
            cr_assert_eq(tz_utc_offset_s(z, t), tm.tm_gmtoff,
                         "%s at %lld: ours %lld glibc %ld", names[i],
                         (long long)t, (long long)tz_utc_offset_s(z, t),
                         tm.tm_gmtoff);
        }
    }
}

static struct prng walk_rng;
static unsigned walk_zones;

static int walk_cb(const char *path,
                   const struct stat *st,
                   int type,
                   struct FTW *ftw)
{
    const char *name = path + strlen(TZ_DIR) + 1;
    const struct tz *z = NULL;
    char errmsg[ERRMSG_SIZE];
    char env[128];
    unsigned k;
    (void)st;
    (void)ftw;
    if (type != FTW_F || strncmp(name, "right/", 6) == 0 ||
        strcmp(name, "localtime") == 0 || tz_validate_name(name, NULL) != 0) {
        return 0;
    }
    {
        /* Skip the database's non-zone files (leapseconds, ...). */
        char magic[4] = {0};
        FILE *f = fopen(path, "rb");
        cr_assert_not_null(f);
        if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "TZif", 4) != 0) {
            fclose(f);
            cr_expect_eq(tz_load(name, &z, NULL), ERR_INVALID, "%s", name);
            return 0;
        }
        fclose(f);
    }
    cr_assert_eq(tz_load(name, &z, errmsg), 0, "%s: %s", name, errmsg);
    snprintf(env, sizeof env, ":%s", name);
    setenv("TZ", env, 1);
    tzset();
    for (k = 0; k < 100; k++) {
        /* 1900 .. 2400 */
        int64_t t =
            -2208988800LL + (int64_t)prng_below(&walk_rng, 15778800000ULL);
        time_t tt = (time_t)t;
        struct tm tm;
        cr_assert_not_null(localtime_r(&tt, &tm));
        cr_assert_eq(tz_utc_offset_s(z, t), tm.tm_gmtoff,
                     "%s at %lld: ours %lld glibc %ld", name, (long long)t,
                     (long long)tz_utc_offset_s(z, t), tm.tm_gmtoff);
    }
    walk_zones++;
    return 0;
}

/* Every zone of the system database loads and agrees with glibc. */
Test(tz, all_system_zones_match_glibc)
{
    prng_seed(&walk_rng, 1);
    walk_zones = 0;
    cr_assert_eq(nftw(TZ_DIR, walk_cb, 16, FTW_PHYS), 0);
    cr_expect_gt(walk_zones, 300, "only %u zones", walk_zones);
    tz_cache_clear();
}

static void expect_bad_name(const char *name, int want_rv, const char *msg)
{
    const struct tz *z = NULL;
    char errmsg[ERRMSG_SIZE] = "";
    int rv = tz_load(name, &z, errmsg);
    cr_expect_eq(rv, want_rv, "name '%s': rv %d", name, rv);
    if (msg != NULL) {
        cr_expect_str_eq(errmsg, msg);
    }
}

Test(tz, bad_names_rejected)
{
    char longname[200];
    expect_bad_name("Mars/Base", ERR_INVALID,
                    "timezone: unknown zone 'Mars/Base'");
    expect_bad_name("Europe", ERR_INVALID, "timezone: unknown zone 'Europe'");
    expect_bad_name("Europe/Berlin/x", ERR_INVALID,
                    "timezone: unknown zone 'Europe/Berlin/x'");
    expect_bad_name("../../etc/passwd", ERR_INVALID,
                    "timezone: invalid zone name '../../etc/passwd': "
                    "character not in [A-Za-z0-9/_+-]");
    expect_bad_name("/etc/passwd", ERR_INVALID,
                    "timezone: invalid zone name '/etc/passwd': leading '/'");
    expect_bad_name("Europe//Berlin", ERR_INVALID,
                    "timezone: invalid zone name 'Europe//Berlin': empty or "
                    "relative path component");
    expect_bad_name("Europe/", ERR_INVALID, NULL);
    expect_bad_name("leapseconds", ERR_INVALID,
                    "timezone: unknown zone 'leapseconds'");
    expect_bad_name("localtime", ERR_INVALID,
                    "timezone: unknown zone 'localtime'");
    expect_bad_name("right/UTC", ERR_INVALID,
                    "timezone: zone 'right/UTC': leap-second zones are not "
                    "supported");
    expect_bad_name("zone.tab", ERR_INVALID, NULL);
    expect_bad_name("Europe/Berlin\n", ERR_INVALID, NULL);
    expect_bad_name("Europe/Ber lin", ERR_INVALID, NULL);
    expect_bad_name("Europe/\xff", ERR_INVALID, NULL);
    memset(longname, 'A', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    expect_bad_name(longname, ERR_INVALID, NULL);
    cr_expect_eq(tz_validate_name("America/Argentina/Buenos_Aires", NULL), 0);
    cr_expect_eq(tz_validate_name("Etc/GMT+5", NULL), 0);
    cr_expect_eq(tz_validate_name("..", NULL), ERR_INVALID);
}

Test(tz, cache_returns_same_zone)
{
    const struct tz *a = zone("Europe/Paris");
    const struct tz *b = zone("Europe/Paris");
    cr_expect_eq(a, b);
    cr_expect_str_eq(tz_name(a), "Europe/Paris");
    cr_expect_eq(zone(NULL), zone("UTC"));
    tz_cache_clear();
    a = zone("Europe/Paris");
    cr_expect_eq(tz_utc_offset_s(a, at("2026-07-01T00:00:00Z")), 7200);
    tz_cache_clear();
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = malloc(TZ_FILE_MAX);
    cr_assert_not_null(f);
    cr_assert_not_null(buf);
    *len = fread(buf, 1, TZ_FILE_MAX, f);
    fclose(f);
    return buf;
}

static void spit(const char *path, const unsigned char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

Test(tz, corrupted_files_rejected)
{
    char dir[256];
    char path[512];
    char errmsg[ERRMSG_SIZE];
    struct tz *z = NULL;
    size_t len;
    size_t cut;
    unsigned char *data = slurp(TZ_DIR "/Europe/Berlin", &len);
    struct prng r;
    unsigned i;

    th_tmpdir(dir, sizeof dir, "tz");
    snprintf(path, sizeof path, "%s/zone", dir);

    /* The intact copy loads and agrees with the system one. */
    spit(path, data, len);
    cr_assert_eq(tz_load_file(path, "Copy", &z, errmsg), 0, "%s", errmsg);
    cr_expect_eq(tz_utc_offset_s(z, at("2026-07-01T00:00:00Z")), 7200);
    tz_free(z);

    /* Every truncation through the file is rejected cleanly. */
    for (cut = 0; cut < len; cut++) {
        z = NULL;
        errmsg[0] = '\0';
        cr_expect_eq(tz_load_bytes(data, cut, "Cut", &z, errmsg), ERR_MALFORMED,
                     "cut at %zu accepted", cut);
        cr_expect_null(z);
        cr_expect_neq(strstr(errmsg, "malformed TZif data"), NULL, "%s",
                      errmsg);
    }
    spit(path, data, len / 2);
    cr_expect_eq(tz_load_file(path, "Half", &z, errmsg), ERR_MALFORMED);
    cr_expect_str_eq(errmsg,
                     "timezone: zone 'Half': malformed TZif data: truncated");
    spit(path, (const unsigned char *)"hello world", 11);
    cr_expect_eq(tz_load_file(path, "Text", &z, errmsg), ERR_MALFORMED);
    cr_expect_str_eq(errmsg,
                     "timezone: zone 'Text': malformed TZif data: bad header");
    snprintf(path, sizeof path, "%s/missing", dir);
    cr_expect_eq(tz_load_file(path, "Gone", &z, errmsg), ERR_INVALID);

    /* Random byte flips: load or reject, never crash; query what loads. */
    prng_seed(&r, 7);
    for (i = 0; i < 3000; i++) {
        unsigned char *copy = malloc(len);
        unsigned flips = 1 + (unsigned)prng_below(&r, 4);
        unsigned k;
        cr_assert_not_null(copy);
        memcpy(copy, data, len);
        for (k = 0; k < flips; k++) {
            copy[prng_below(&r, len)] = (unsigned char)prng_next(&r);
        }
        z = NULL;
        if (tz_load_bytes(copy, len, "Flip", &z, errmsg) == 0) {
            int64_t t = (int64_t)prng_next(&r);
            int64_t tr;
            (void)tz_utc_offset_s(z, t);
            (void)tz_utc_offset_s(z, t >> 20);
            (void)tz_next_transition(z, t >> 20, &tr);
            (void)tz_prev_transition(z, t >> 20, &tr);
            tz_free(z);
        }
        free(copy);
    }
    free(data);
    th_rmrf(dir);
}

/* A hand-built version 1 file: one transition at t=1000 from +1h to +2h. */
Test(tz, version1_file)
{
    unsigned char f[44 + 4 + 1 + 12 + 8];
    struct tz *z = NULL;
    char errmsg[ERRMSG_SIZE];
    unsigned char *p = f;

    memset(f, 0, sizeof f);
    memcpy(p, "TZif", 4);
    p[35] = 1; /* timecnt */
    p[39] = 2; /* typecnt */
    p[43] = 8; /* charcnt */
    p += 44;
    p[2] = 0x03;
    p[3] = 0xe8; /* 1000 */
    p += 4;
    *p++ = 1;
    /* type 0: +3600, type 1: +7200 */
    p[2] = 0x0e;
    p[3] = 0x10;
    p += 6;
    p[2] = 0x1c;
    p[3] = 0x20;
    p[4] = 1;
    p[5] = 4;
    p += 6;
    memcpy(p, "AAA\0BBB\0", 8);
    cr_assert_eq(tz_load_bytes(f, sizeof f, "V1", &z, errmsg), 0, "%s", errmsg);
    cr_expect_eq(tz_utc_offset_s(z, 0), 3600);
    cr_expect_eq(tz_utc_offset_s(z, 999), 3600);
    cr_expect_eq(tz_utc_offset_s(z, 1000), 7200);
    cr_expect_eq(tz_utc_offset_s(z, (int64_t)1 << 40), 7200);
    tz_free(z);

    f[44 + 4] = 2; /* transition type out of range */
    cr_expect_eq(tz_load_bytes(f, sizeof f, "V1", &z, errmsg), ERR_MALFORMED);
    cr_expect_str_eq(errmsg,
                     "timezone: zone 'V1': malformed TZif data: "
                     "transition type out of range");
}

Test(tz, calendar_helpers)
{
    int64_t y;
    unsigned m;
    unsigned d;
    int64_t days;

    cr_expect_eq(tz_days_from_civil(1970, 1, 1), 0);
    cr_expect_eq(tz_days_from_civil(2000, 3, 1), 11017);
    cr_expect_eq(tz_weekday(0), 4);
    cr_expect_eq(tz_weekday(-1), 3);
    cr_expect_eq(tz_days_in_month(2100, 2), 28);
    cr_expect_eq(tz_days_in_month(2000, 2), 29);
    cr_expect_eq(tz_days_in_month(2028, 2), 29);
    for (days = -800000; days < 3000000; days += 997) {
        tz_civil_from_days(days, &y, &m, &d);
        cr_assert_eq(tz_days_from_civil(y, m, d), days);
    }
}
