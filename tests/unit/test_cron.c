/* Unit tests: cron parsing, next-fire tables, DST rules, errors, fuzzing. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "lib/harness.h"
#include "sched/cron.h"
#include "util.h"

TestSuite(cron, .timeout = 60);

static int64_t ms_of(const char *rfc3339)
{
    int64_t ms = 0;
    cr_assert_eq(time_parse_ms(rfc3339, &ms), 0, "bad time %s", rfc3339);
    return ms;
}

static const char *fmt(int64_t ms, char *buf)
{
    if (ms == INT64_MAX) {
        return "never";
    }
    time_format_ms(ms, buf);
    return buf;
}

static void parse_ok(struct cron_expr *e, const char *expr, const char *tz)
{
    char errmsg[ERRMSG_SIZE] = "";
    int rv = cron_parse(e, expr, tz, errmsg);
    cr_assert_eq(rv, 0, "cron_parse('%s', %s): %s", expr, tz ? tz : "NULL",
                 errmsg);
}

struct next_case
{
    const char *expr;
    const char *tz;
    const char *after;
    const char *want; /* NULL = INT64_MAX */
};

static void run_next_table(const struct next_case *c, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        struct cron_expr e;
        char b1[TIME_STRLEN];
        char b2[TIME_STRLEN];
        int64_t want = c[i].want ? ms_of(c[i].want) : INT64_MAX;
        int64_t got;
        parse_ok(&e, c[i].expr, c[i].tz);
        got = cron_next(&e, ms_of(c[i].after));
        cr_expect_eq(got, want, "'%s' [%s] after %s: got %s want %s", c[i].expr,
                     c[i].tz ? c[i].tz : "UTC", c[i].after, fmt(got, b1),
                     fmt(want, b2));
    }
}

Test(cron, next_basic_fields)
{
    static const struct next_case c[] = {
        {"* * * * *", NULL, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"},
        {"* * * * *", "", "2026-01-01T00:00:30.500Z", "2026-01-01T00:01:00Z"},
        {"* * * * *", "UTC", "2026-01-01T00:00:59.999Z",
         "2026-01-01T00:01:00Z"},
        {"*/15 * * * *", NULL, "2026-01-01T00:16:00Z", "2026-01-01T00:30:00Z"},
        {"*/15 * * * *", NULL, "2026-01-01T23:45:00Z", "2026-01-02T00:00:00Z"},
        {"5-10/2 * * * *", NULL, "2026-01-01T00:07:00Z",
         "2026-01-01T00:09:00Z"},
        {"5-10/2 * * * *", NULL, "2026-01-01T00:09:00Z",
         "2026-01-01T01:05:00Z"},
        {"5/20 * * * *", NULL, "2026-01-01T00:26:00Z", "2026-01-01T00:45:00Z"},
        {"5/20 * * * *", NULL, "2026-01-01T00:46:00Z", "2026-01-01T01:05:00Z"},
        {"0 9-17 * * *", NULL, "2026-01-01T17:00:00Z", "2026-01-02T09:00:00Z"},
        {"0 9-17 * * *", NULL, "2026-01-01T09:00:00Z", "2026-01-01T10:00:00Z"},
        {"0 0 1,15 * *", NULL, "2026-01-02T00:00:00Z", "2026-01-15T00:00:00Z"},
        {"0 0 1,15 * *", NULL, "2026-01-15T00:00:00Z", "2026-02-01T00:00:00Z"},
        {"0,30 8,20 * * *", NULL, "2026-01-01T08:30:00Z",
         "2026-01-01T20:00:00Z"},
        {"0 0 * JAN,jul *", NULL, "2026-02-01T00:00:00Z",
         "2026-07-01T00:00:00Z"},
        {"0 0 1 Mar-may/2 *", NULL, "2026-03-01T00:00:00Z",
         "2026-05-01T00:00:00Z"},
        {"0 0 * * MON-FRI", NULL, "2026-01-02T12:00:00Z",
         "2026-01-05T00:00:00Z"},
        {"0 0 * * 7", NULL, "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
        {"0 0 * * 0", NULL, "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
        {"0 0 * * sun", NULL, "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
        {"0 0 * * 5-7", NULL, "2026-01-03T12:00:00Z", "2026-01-04T00:00:00Z"},
        {"0 0 * * 1/2", NULL, "2026-01-02T00:00:00Z", "2026-01-05T00:00:00Z"},
        {"0 0 */2 * */2", NULL, "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"},
        {"0 12 * * ?", NULL, "2026-01-01T12:00:00Z", "2026-01-02T12:00:00Z"},
        {"59 23 31 12 *", NULL, "2026-01-01T00:00:00Z", "2026-12-31T23:59:00Z"},
        /* Pre-epoch instants work too. */
        {"0 0 1 1 *", NULL, "1969-06-01T00:00:00Z", "1970-01-01T00:00:00Z"},
    };
    run_next_table(c, ARRAY_SIZE(c));
}

Test(cron, next_calendar_edges)
{
    static const struct next_case c[] = {
        /* Leap years. */
        {"0 0 29 2 *", NULL, "2025-01-01T00:00:00Z", "2028-02-29T00:00:00Z"},
        {"0 0 29 2 *", NULL, "2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"},
        {"0 0 29 2 *", NULL, "2097-01-01T00:00:00Z", "2104-02-29T00:00:00Z"},
        /* Month ends: the 31st skips short months. */
        {"0 0 31 * *", NULL, "2026-04-01T00:00:00Z", "2026-05-31T00:00:00Z"},
        {"0 0 31 * *", NULL, "2026-05-31T00:00:00Z", "2026-07-31T00:00:00Z"},
        {"0 0 30 * *", NULL, "2026-01-30T00:00:00Z", "2026-03-30T00:00:00Z"},
        /* No match within the horizon. */
        {"0 0 30 2 *", NULL, "2026-01-01T00:00:00Z", NULL},
        {"0 0 31 4,6,9,11 *", NULL, "2026-01-01T00:00:00Z", NULL},
        {"0 0 30 2 *", "Europe/Berlin", "2026-01-01T00:00:00Z", NULL},
        /* Year rollover. */
        {"0 0 1 1 *", NULL, "2026-12-31T23:59:59Z", "2027-01-01T00:00:00Z"},
        {"* * * * *", NULL, "9999-12-31T23:59:00Z", NULL},
    };
    run_next_table(c, ARRAY_SIZE(c));
}

Test(cron, next_dom_dow_or_rule)
{
    /* 2026-01-01 is a Thursday. */
    static const struct next_case c[] = {
        /* Both restricted: the 13th OR any Friday. */
        {"0 0 13 * FRI", NULL, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
        {"0 0 13 * FRI", NULL, "2026-01-09T00:00:00Z", "2026-01-13T00:00:00Z"},
        {"0 0 13 * FRI", NULL, "2026-01-13T00:00:00Z", "2026-01-16T00:00:00Z"},
        /* Feb 30 never exists, but Mondays of February do. */
        {"0 0 30 2 MON", NULL, "2026-01-01T00:00:00Z", "2026-02-02T00:00:00Z"},
        /* One side '*' or '?': both must match (AND). */
        {"0 0 * * FRI", NULL, "2026-01-09T00:00:00Z", "2026-01-16T00:00:00Z"},
        {"0 0 ? * MON", NULL, "2026-01-01T00:00:00Z", "2026-01-05T00:00:00Z"},
        {"0 0 13 * *", NULL, "2026-01-01T00:00:00Z", "2026-01-13T00:00:00Z"},
        {"0 0 13 * ?", NULL, "2026-01-01T00:00:00Z", "2026-01-13T00:00:00Z"},
        /* Vixie: a field starting with '*' counts as unrestricted, so
         * "*\/2" in dom is ANDed with dow: odd-numbered Mondays. */
        {"0 0 */2 * MON", NULL, "2026-01-01T00:00:00Z", "2026-01-05T00:00:00Z"},
        {"0 0 */2 * MON", NULL, "2026-01-05T00:00:00Z", "2026-01-19T00:00:00Z"},
        /* Friday the 13th requires both: not expressible, OR applies. */
        {"0 0 1-7 * MON", NULL, "2026-01-08T00:00:00Z", "2026-01-12T00:00:00Z"},
    };
    run_next_table(c, ARRAY_SIZE(c));
}

Test(cron, next_seconds_and_macros)
{
    static const struct next_case c[] = {
        {"*/10 * * * * *", NULL, "2026-01-01T00:00:05Z",
         "2026-01-01T00:00:10Z"},
        {"*/10 * * * * *", NULL, "2026-01-01T00:00:50Z",
         "2026-01-01T00:01:00Z"},
        {"30 0 0 1 1 *", NULL, "2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z"},
        {"30 0 0 1 1 *", NULL, "2026-01-01T00:00:30Z", "2027-01-01T00:00:30Z"},
        {"15,45 * * * * ?", NULL, "2026-01-01T00:00:15.001Z",
         "2026-01-01T00:00:45Z"},
        {"* * * * * *", NULL, "2026-01-01T00:00:00.999Z",
         "2026-01-01T00:00:01Z"},
        {"@yearly", NULL, "2026-03-01T00:00:00Z", "2027-01-01T00:00:00Z"},
        {"@annually", NULL, "2026-03-01T00:00:00Z", "2027-01-01T00:00:00Z"},
        {"@monthly", NULL, "2026-01-31T00:00:00Z", "2026-02-01T00:00:00Z"},
        {"@weekly", NULL, "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
        {"@daily", NULL, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
        {"@midnight", NULL, "2026-01-01T05:00:00Z", "2026-01-02T00:00:00Z"},
        {"@hourly", NULL, "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"},
        {"  @HOURLY  ", NULL, "2026-01-01T00:10:00Z", "2026-01-01T01:00:00Z"},
        {"@daily", "Asia/Kolkata", "2026-01-01T00:00:00Z",
         "2026-01-01T18:30:00Z"},
        /* @every: multiples of the period counted from the Unix epoch. */
        {"@every 30s", NULL, "2026-01-01T00:00:10Z", "2026-01-01T00:00:30Z"},
        {"@every 30s", NULL, "2026-01-01T00:00:30Z", "2026-01-01T00:01:00Z"},
        {"@every 90m", NULL, "2026-01-01T00:00:00Z", "2026-01-01T01:30:00Z"},
        {"@every 90m", NULL, "2026-01-01T01:31:00Z", "2026-01-01T03:00:00Z"},
        {"@every 1h30m", NULL, "2026-01-01T01:31:00Z", "2026-01-01T03:00:00Z"},
        {"@every 11m", NULL, "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"},
        {"@every 1d", NULL, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
        /* @every ignores the zone: epoch-aligned everywhere. */
        {"@every 1d", "Asia/Kolkata", "2026-01-01T00:00:00Z",
         "2026-01-02T00:00:00Z"},
        {"@every 7s", NULL, "1969-12-31T23:59:55Z", "1970-01-01T00:00:00Z"},
    };
    run_next_table(c, ARRAY_SIZE(c));
}

Test(cron, next_time_zones_and_dst)
{
    static const struct next_case c[] = {
        {"0 9 * * *", "Asia/Kolkata", "2026-01-01T00:00:00Z",
         "2026-01-01T03:30:00Z"},
        /* Berlin spring forward 2026-03-29 02:00 CET -> 03:00 CEST
         * (01:00Z): 02:30 does not exist, fires once at the transition. */
        {"30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z",
         "2026-03-28T01:30:00Z"},
        {"30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z",
         "2026-03-29T01:00:00Z"},
        {"30 2 * * *", "Europe/Berlin", "2026-03-29T01:00:00Z",
         "2026-03-30T00:30:00Z"},
        /* Asked from the last instant before the transition. */
        {"30 2 * * *", "Europe/Berlin", "2026-03-29T00:59:59.999Z",
         "2026-03-29T01:00:00Z"},
        {"30 2 * * *", "Europe/Berlin", "2026-03-29T00:59:59Z",
         "2026-03-29T01:00:00Z"},
        {"0 30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z",
         "2026-03-29T01:00:00Z"},
        /* Many matches inside the gap still fire once. */
        {"*/15 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z",
         "2026-03-29T01:00:00Z"},
        {"*/15 2 * * *", "Europe/Berlin", "2026-03-29T01:00:00Z",
         "2026-03-30T00:00:00Z"},
        /* Berlin fall back 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z):
         * 02:30 fires on its first occurrence only. */
        {"30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z",
         "2026-10-25T00:30:00Z"},
        {"30 2 * * *", "Europe/Berlin", "2026-10-25T00:30:00Z",
         "2026-10-26T01:30:00Z"},
        {"30 2 * * *", "Europe/Berlin", "2026-10-25T01:10:00Z",
         "2026-10-26T01:30:00Z"},
        /* New York spring forward 2026-03-08 02:00 EST -> 03:00 EDT
         * (07:00Z). */
        {"30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z",
         "2026-03-08T07:00:00Z"},
        {"30 2 * * *", "America/New_York", "2026-03-08T07:00:00Z",
         "2026-03-09T06:30:00Z"},
        {"0 3 * * *", "America/New_York", "2026-03-07T12:00:00Z",
         "2026-03-08T07:00:00Z"},
        /* New York fall back 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z):
         * 01:30 happens twice and fires at the first (EDT) one. */
        {"30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z",
         "2026-11-01T05:30:00Z"},
        {"30 1 * * *", "America/New_York", "2026-11-01T05:30:00Z",
         "2026-11-02T06:30:00Z"},
        {"30 1 * * *", "America/New_York", "2026-11-01T06:10:00Z",
         "2026-11-02T06:30:00Z"},
        {"30 1 * * *", "America/New_York", "2026-11-01T05:45:00Z",
         "2026-11-02T06:30:00Z"},
        /* Lord Howe: 30-minute DST. 2026-10-04 02:00 (+10:30) -> 02:30
         * (+11) at 2026-10-03T15:30Z; 2026-04-05 02:00 (+11) -> 01:30
         * (+10:30) at 2026-04-04T15:00Z. */
        {"15 2 * * *", "Australia/Lord_Howe", "2026-10-03T00:00:00Z",
         "2026-10-03T15:30:00Z"},
        {"45 2 * * *", "Australia/Lord_Howe", "2026-10-03T00:00:00Z",
         "2026-10-03T15:45:00Z"},
        {"45 1 * * *", "Australia/Lord_Howe", "2026-04-04T00:00:00Z",
         "2026-04-04T14:45:00Z"},
        {"45 1 * * *", "Australia/Lord_Howe", "2026-04-04T14:45:00Z",
         "2026-04-05T15:15:00Z"},
        /* Far future: DST from the POSIX footer (2100-03-28). */
        {"30 2 * * *", "Europe/Berlin", "2100-03-27T12:00:00Z",
         "2100-03-28T01:00:00Z"},
    };
    run_next_table(c, ARRAY_SIZE(c));
}

static void expect_between(const char *expr,
                           const char *tz,
                           const char *from,
                           const char *to,
                           const char *const *want,
                           unsigned nwant)
{
    struct cron_expr e;
    int64_t out[64];
    unsigned n;
    unsigned i;
    char b1[TIME_STRLEN];
    char b2[TIME_STRLEN];

    parse_ok(&e, expr, tz);
    n = cron_between(&e, ms_of(from), ms_of(to), out, ARRAY_SIZE(out));
    for (i = 0; i < n && i < nwant; i++) {
        cr_expect_eq(out[i], ms_of(want[i]), "'%s' [%s] #%u: got %s want %s",
                     expr, tz, i, fmt(out[i], b1), fmt(ms_of(want[i]), b2));
    }
    cr_expect_eq(n, nwant, "'%s' [%s]: %u fires, want %u (last %s)", expr, tz,
                 n, nwant, n > 0 ? fmt(out[n - 1], b1) : "-");
}

Test(cron, hourly_across_transitions)
{
    static const char *const berlin_spring[] = {
        "2026-03-28T23:00:00Z", "2026-03-29T00:00:00Z",
        "2026-03-29T01:00:00Z", /* 03:00 CEST (02:00 skipped, same instant) */
        "2026-03-29T02:00:00Z", "2026-03-29T03:00:00Z",
    };
    static const char *const berlin_fall[] = {
        "2026-10-24T23:00:00Z", /* 01:00 CEST */
        "2026-10-25T00:00:00Z", /* 02:00 CEST, first 02:00 */
        /* 01:00Z = 02:00 CET, the repeated one: no fire */
        "2026-10-25T02:00:00Z", /* 03:00 CET */
        "2026-10-25T03:00:00Z",
    };
    static const char *const ny_spring[] = {
        "2026-03-08T06:00:00Z", /* 01:00 EST */
        "2026-03-08T07:00:00Z", /* 03:00 EDT (02:00 skipped) */
        "2026-03-08T08:00:00Z",
        "2026-03-08T09:00:00Z",
    };
    static const char *const ny_fall[] = {
        "2026-11-01T05:00:00Z", /* 01:00 EDT */
        /* 06:00Z = 01:00 EST repeated: no fire */
        "2026-11-01T07:00:00Z", /* 02:00 EST */
        "2026-11-01T08:00:00Z",
    };
    static const char *const ny_fall_half[] = {
        "2026-11-01T04:30:00Z", "2026-11-01T05:00:00Z", "2026-11-01T05:30:00Z",
        "2026-11-01T07:00:00Z", "2026-11-01T07:30:00Z", "2026-11-01T08:00:00Z",
    };
    expect_between("0 * * * *", "Europe/Berlin", "2026-03-28T22:00:00Z",
                   "2026-03-29T03:00:00Z", berlin_spring,
                   ARRAY_SIZE(berlin_spring));
    expect_between("0 * * * *", "Europe/Berlin", "2026-10-24T22:00:00Z",
                   "2026-10-25T03:00:00Z", berlin_fall,
                   ARRAY_SIZE(berlin_fall));
    expect_between("0 * * * *", "America/New_York", "2026-03-08T05:00:00Z",
                   "2026-03-08T09:00:00Z", ny_spring, ARRAY_SIZE(ny_spring));
    expect_between("0 * * * *", "America/New_York", "2026-11-01T04:00:00Z",
                   "2026-11-01T08:00:00Z", ny_fall, ARRAY_SIZE(ny_fall));
    expect_between("*/30 * * * *", "America/New_York", "2026-11-01T04:00:00Z",
                   "2026-11-01T08:00:00Z", ny_fall_half,
                   ARRAY_SIZE(ny_fall_half));
}

static unsigned count_between(const char *expr,
                              const char *tz,
                              const char *from,
                              const char *to,
                              unsigned max)
{
    struct cron_expr e;
    unsigned n;
    int64_t *out = malloc(sizeof *out * (max ? max : 1));
    cr_assert_not_null(out);
    parse_ok(&e, expr, tz);
    n = cron_between(&e, ms_of(from), ms_of(to), out, max);
    free(out);
    return n;
}

Test(cron, between_counts)
{
    cr_expect_eq(count_between("*/5 * * * *", NULL, "2026-01-01T00:00:00Z",
                               "2026-01-01T01:00:00Z", 100),
                 12);
    cr_expect_eq(count_between("*/5 * * * *", NULL, "2026-01-01T00:00:00Z",
                               "2026-01-01T01:00:00Z", 5),
                 5);
    cr_expect_eq(count_between("*/5 * * * *", NULL, "2026-01-01T00:00:00Z",
                               "2026-01-01T01:00:00Z", 0),
                 0);
    cr_expect_eq(count_between("*/5 * * * *", NULL, "2026-01-01T01:00:00Z",
                               "2026-01-01T00:00:00Z", 10),
                 0);
    cr_expect_eq(count_between("@every 30s", NULL, "2026-01-01T00:00:00Z",
                               "2026-01-02T00:00:00Z", 10000),
                 2880);
    cr_expect_eq(count_between("0 0 * * *", NULL, "2026-01-01T00:00:00Z",
                               "2027-01-01T00:00:00Z", 1000),
                 365);
    cr_expect_eq(count_between("@daily", NULL, "2028-01-01T00:00:00Z",
                               "2029-01-01T00:00:00Z", 1000),
                 366);
    cr_expect_eq(count_between("0 0 13 * FRI", NULL, "2026-01-01T00:00:00Z",
                               "2026-12-31T23:59:59Z", 1000),
                 52 + 12 - 3); /* 3 of the 13ths in 2026 are Fridays */
    /* A local year in Berlin: 8760 wall hours, the repeated 02:00 fires
     * once and the skipped 02:00 coincides with 03:00. */
    cr_expect_eq(
        count_between("0 * * * *", "Europe/Berlin", "2025-12-31T23:00:00Z",
                      "2026-12-31T23:00:00Z", 10000),
        8759);
    cr_expect_eq(
        count_between("30 2 * * *", "Europe/Berlin", "2025-12-31T23:00:00Z",
                      "2026-12-31T23:00:00Z", 1000),
        365);
    cr_expect_eq(
        count_between("30 1 * * *", "America/New_York", "2026-01-01T05:00:00Z",
                      "2027-01-01T05:00:00Z", 1000),
        365);
}

struct err_case
{
    const char *expr;
    const char *msg;
};

Test(cron, parse_errors)
{
    static const struct err_case c[] = {
        {"", "schedule: empty expression"},
        {"   ", "schedule: empty expression"},
        {"* * * *", "schedule: expected 5 or 6 fields, got 4"},
        {"* * * * * * *", "schedule: expected 5 or 6 fields, got 7"},
        {"0 0 0,5,25 * * *",
         "schedule: position 9 (field \"hour\"): value 25 out of range 0-23"},
        {"60 * * * *",
         "schedule: position 1 (field \"minute\"): value 60 out of range "
         "0-59"},
        {"* 24 * * *",
         "schedule: position 3 (field \"hour\"): value 24 out of range 0-23"},
        {"* * 0 * *",
         "schedule: position 5 (field \"day-of-month\"): value 0 out of "
         "range 1-31"},
        {"* * 32 * *",
         "schedule: position 5 (field \"day-of-month\"): value 32 out of "
         "range 1-31"},
        {"* * * 13 *",
         "schedule: position 7 (field \"month\"): value 13 out of range "
         "1-12"},
        {"* * * * 8",
         "schedule: position 9 (field \"day-of-week\"): value 8 out of range "
         "0-7"},
        {"60 * * * * *",
         "schedule: position 1 (field \"second\"): value 60 out of range "
         "0-59"},
        {"99999999999 * * * *",
         "schedule: position 1 (field \"minute\"): value 99999999999 out of "
         "range 0-59"},
        {"5-3 * * * *",
         "schedule: position 1 (field \"minute\"): range 5-3: start is "
         "greater than end"},
        {"* * * * FRI-MON",
         "schedule: position 9 (field \"day-of-week\"): range 5-1: start is "
         "greater than end"},
        {"*/0 * * * *",
         "schedule: position 3 (field \"minute\"): step 0 out of range 1-60"},
        {"*/61 * * * *",
         "schedule: position 3 (field \"minute\"): step 61 out of range "
         "1-60"},
        {"* * * * */8",
         "schedule: position 11 (field \"day-of-week\"): step 8 out of range "
         "1-7"},
        {"1,,2 * * * *",
         "schedule: position 3 (field \"minute\"): empty list element"},
        {"1, * * * *",
         "schedule: position 3 (field \"minute\"): empty list element"},
        {",1 * * * *",
         "schedule: position 1 (field \"minute\"): empty list element"},
        {"a * * * *",
         "schedule: position 1 (field \"minute\"): names are not allowed "
         "here, got 'a'"},
        {"* * * FOO *",
         "schedule: position 7 (field \"month\"): unknown name 'FOO'"},
        {"* * * * MONDAY",
         "schedule: position 9 (field \"day-of-week\"): unknown name "
         "'MONDAY'"},
        {"? * * * *",
         "schedule: position 1 (field \"minute\"): '?' is only allowed in "
         "day-of-month and day-of-week"},
        {"1-2-3 * * * *",
         "schedule: position 4 (field \"minute\"): unexpected character "
         "'-'"},
        {"*/ * * * *",
         "schedule: position 3 (field \"minute\"): expected a step number"},
        {"*/x * * * *",
         "schedule: position 3 (field \"minute\"): unexpected character "
         "'x'"},
        {"1- * * * *",
         "schedule: position 3 (field \"minute\"): expected a value"},
        {"*5 * * * *",
         "schedule: position 2 (field \"minute\"): unexpected character "
         "'5'"},
        {"0 0 * * * \x01",
         "schedule: position 11 (field \"day-of-week\"): unexpected "
         "character '\\x01'"},
        {"0 0 * * L",
         "schedule: position 9 (field \"day-of-week\"): unknown name 'L'"},
        {"@foo", "schedule: position 1: unknown macro '@foo'"},
        {"@reboot", "schedule: position 1: unknown macro '@reboot'"},
        {"@daily x", "schedule: position 8: unexpected text after @daily"},
        {"@every",
         "schedule: position 7 (field \"every\"): expected a duration such "
         "as 30s or 1h30m"},
        {"@every 0s",
         "schedule: position 8 (field \"every\"): duration below the "
         "minimum of 1s"},
        {"@every 10",
         "schedule: position 10 (field \"every\"): missing unit after 10 "
         "(use s, m, h or d)"},
        {"@every 5x",
         "schedule: position 9 (field \"every\"): unknown unit 'x' (use s, "
         "m, h or d)"},
        {"@every 1ms",
         "schedule: position 10 (field \"every\"): unexpected character "
         "'s'"},
        {"@every 400d",
         "schedule: position 8 (field \"every\"): duration above the "
         "maximum of 366d"},
        {"@every 30s x",
         "schedule: position 12 (field \"every\"): unexpected text after "
         "duration"},
        {"@every -5s",
         "schedule: position 8 (field \"every\"): unexpected character "
         "'-'"},
    };
    size_t i;
    for (i = 0; i < ARRAY_SIZE(c); i++) {
        struct cron_expr e;
        char errmsg[ERRMSG_SIZE] = "";
        memset(&e, 0xab, sizeof e);
        cr_expect_eq(cron_parse(&e, c[i].expr, NULL, errmsg), ERR_INVALID,
                     "'%s' accepted", c[i].expr);
        cr_expect_str_eq(errmsg, c[i].msg, "'%s'", c[i].expr);
        /* The output is untouched on failure. */
        cr_expect_eq(e.flags, 0xab);
    }
}

Test(cron, parse_limits_and_zones)
{
    struct cron_expr e;
    char errmsg[ERRMSG_SIZE] = "";
    char big[400];

    memset(big, ' ', sizeof big);
    memcpy(big, "* * * * *", 9);
    big[CRON_EXPR_MAX] = '\0'; /* exactly the limit: fine */
    parse_ok(&e, big, NULL);
    big[CRON_EXPR_MAX] = ' ';
    big[CRON_EXPR_MAX + 1] = '\0';
    cr_expect_eq(cron_parse(&e, big, NULL, errmsg), ERR_INVALID);
    cr_expect_str_eq(errmsg,
                     "schedule: expression longer than 256 "
                     "characters");
    cr_expect_eq(cron_parse(&e, NULL, NULL, errmsg), ERR_INVALID);
    cr_expect_str_eq(errmsg, "schedule: empty expression");

    cr_expect_eq(cron_parse(&e, "* * * * *", "Mars/Base", errmsg), ERR_INVALID);
    cr_expect_str_eq(errmsg, "timezone: unknown zone 'Mars/Base'");
    cr_expect_eq(cron_parse(&e, "* * * * *", "../etc/passwd", errmsg),
                 ERR_INVALID);

    parse_ok(&e, "0\t0  *\t* *", "Europe/Berlin");
    cr_expect_str_eq(e.tz_name, "Europe/Berlin");
    parse_ok(&e, "0 0 * * *", NULL);
    cr_expect_str_eq(e.tz_name, "UTC");
    parse_ok(&e, "0 0 * * *", "");
    cr_expect_str_eq(e.tz_name, "UTC");
    /* errmsg may be NULL. */
    cr_expect_eq(cron_parse(&e, "bad", NULL, NULL), ERR_INVALID);
    cr_expect_eq(cron_parse(&e, "@every 1s", NULL, NULL), 0);
    cr_expect_eq(e.every_ms, 1000);
    cr_expect_eq(cron_parse(&e, "@every 366d", NULL, NULL), 0);
    cr_expect_eq(cron_parse(&e, "@every 2h2h", NULL, NULL), 0);
    cr_expect_eq(e.every_ms, 4 * 3600 * 1000);
    /* Masks. */
    parse_ok(&e, "0 0 * * 0,7", NULL);
    cr_expect_eq(e.dow, 1);
    parse_ok(&e, "0 0 * * *", NULL);
    cr_expect_eq(e.dow, 0x7f);
    cr_expect_eq(e.sec, 1);
}

Test(cron, out_of_range_instants)
{
    struct cron_expr e;
    parse_ok(&e, "* * * * *", "Europe/Berlin");
    cr_expect_eq(cron_next(&e, INT64_MAX), INT64_MAX);
    cr_expect_eq(cron_next(&e, CRON_MAX_MS), INT64_MAX);
    cr_expect_gt(cron_next(&e, INT64_MIN), CRON_MIN_MS);
    parse_ok(&e, "@every 1s", NULL);
    cr_expect_eq(cron_next(&e, INT64_MAX), INT64_MAX);
    cr_expect_eq(cron_next(&e, INT64_MAX - 1), INT64_MAX);
    cr_expect_gt(cron_next(&e, INT64_MIN), INT64_MIN);
}

/* ---- brute-force cross-checks ------------------------------------------ */

/* Does wall time w (local seconds, counted like Unix time) match e? */
static bool ref_match(const struct cron_expr *e, int64_t w)
{
    time_t tt = (time_t)w;
    struct tm tm;
    bool dom;
    bool dow;
    gmtime_r(&tt, &tm);
    if (!((e->sec >> tm.tm_sec) & 1) || !((e->min >> tm.tm_min) & 1) ||
        !((e->hour >> tm.tm_hour) & 1) ||
        !((e->month >> (tm.tm_mon + 1)) & 1)) {
        return false;
    }
    dom = (e->dom >> tm.tm_mday) & 1;
    dow = (e->dow >> tm.tm_wday) & 1;
    if (e->flags & (CRON_F_DOM_STAR | CRON_F_DOW_STAR)) {
        return dom && dow;
    }
    return dom || dow;
}

static void random_field(struct prng *r,
                         char *out,
                         size_t size,
                         unsigned lo,
                         unsigned hi,
                         unsigned star_pct)
{
    unsigned kind = (unsigned)prng_below(r, 100);
    unsigned span = hi - lo + 1;
    unsigned a = lo + (unsigned)prng_below(r, span);
    unsigned b = lo + (unsigned)prng_below(r, span);
    unsigned s = 1 + (unsigned)prng_below(r, span / 2 + 1);
    if (a > b) {
        unsigned t = a;
        a = b;
        b = t;
    }
    if (kind < star_pct) {
        snprintf(out, size, "*");
    } else if (kind < star_pct + 10) {
        snprintf(out, size, "*/%u", s);
    } else if (kind < star_pct + 30) {
        snprintf(out, size, "%u-%u", a, b);
    } else if (kind < star_pct + 45) {
        snprintf(out, size, "%u-%u/%u", a, b, s);
    } else if (kind < star_pct + 60) {
        snprintf(out, size, "%u,%u", a, b);
    } else {
        snprintf(out, size, "%u", a);
    }
}

/* Random 5-field expressions in UTC: every result matches, nothing between
 * two consecutive results matches (checked minute by minute). */
Test(cron, random_expressions_match_bruteforce_utc)
{
    struct prng r;
    unsigned i;
    prng_seed(&r, 20260101);
    for (i = 0; i < 300; i++) {
        char f[5][32];
        char expr[200];
        struct cron_expr e;
        int64_t t = ms_of("2026-01-01T00:00:00Z") +
                    (int64_t)prng_below(&r, 86400ULL * 365 * 4) * 1000;
        unsigned k;
        random_field(&r, f[0], sizeof f[0], 0, 59, 30);
        random_field(&r, f[1], sizeof f[1], 0, 23, 40);
        random_field(&r, f[2], sizeof f[2], 1, 31, 60);
        random_field(&r, f[3], sizeof f[3], 1, 12, 60);
        random_field(&r, f[4], sizeof f[4], 0, 6, 60);
        snprintf(expr, sizeof expr, "%s %s %s %s %s", f[0], f[1], f[2], f[3],
                 f[4]);
        parse_ok(&e, expr, NULL);
        for (k = 0; k < 5; k++) {
            int64_t n = cron_next(&e, t);
            int64_t m;
            if (n == INT64_MAX) {
                break;
            }
            cr_assert_gt(n, t, "%s", expr);
            cr_assert_eq(n % 60000, 0, "%s", expr);
            cr_assert(ref_match(&e, n / 1000), "%s: %lld does not match", expr,
                      (long long)n);
            /* Minute scan of the gap, capped at 3 days. */
            for (m = (t / 60000 + 1) * 60000; m < n && m - t < 86400000LL * 3;
                 m += 60000) {
                cr_assert_not(ref_match(&e, m / 1000),
                              "%s: skipped %lld before %lld", expr,
                              (long long)m, (long long)n);
            }
            t = n;
        }
    }
}

/* Reference DST semantics, minute by minute in UTC: fire at u when the wall
 * time at u matches and had not occurred before, or when u is a
 * spring-forward transition and a matching wall time lies in the gap. */
static bool ref_fires(const struct cron_expr *e, const struct tz *z, int64_t u)
{
    int64_t off = tz_utc_offset_s(z, u);
    int64_t prev = tz_utc_offset_s(z, u - 60);
    int64_t w = u + off;
    int64_t v;
    if (prev < off) {
        for (v = u + prev; v < w; v += 60) {
            if (ref_match(e, v)) {
                return true;
            }
        }
    }
    if (!ref_match(e, w)) {
        return false;
    }
    for (v = u - 4 * 3600; v < u; v += 60) {
        if (v + tz_utc_offset_s(z, v) == w) {
            return false; /* a repeat */
        }
    }
    return true;
}

Test(cron, random_expressions_match_reference_dst)
{
    static const char *const zones[] = {"Europe/Berlin", "America/New_York",
                                        "Australia/Lord_Howe"};
    static const char *const windows[] = {
        "2026-03-28T12:00:00Z", "2026-10-24T12:00:00Z", "2026-03-07T12:00:00Z",
        "2026-10-31T12:00:00Z", "2026-04-03T12:00:00Z", "2026-10-02T12:00:00Z",
    };
    struct prng r;
    unsigned i;
    prng_seed(&r, 99);
    for (i = 0; i < 120; i++) {
        const char *zn = zones[i % 3];
        const struct tz *z;
        char f[2][32];
        char expr[100];
        struct cron_expr e;
        int64_t from = ms_of(windows[(i % 3) * 2 + prng_below(&r, 2)]);
        int64_t to = from + 2 * 86400 * 1000LL;
        int64_t out[4000];
        unsigned n;
        unsigned k = 0;
        int64_t u;
        char b[TIME_STRLEN];

        random_field(&r, f[0], sizeof f[0], 0, 59, 20);
        random_field(&r, f[1], sizeof f[1], 0, 4, 20);
        snprintf(expr, sizeof expr, "%s %s * * *", f[0], f[1]);
        parse_ok(&e, expr, zn);
        cr_assert_eq(tz_load(zn, &z, NULL), 0);
        n = cron_between(&e, from, to, out, ARRAY_SIZE(out));
        for (u = from / 1000 + 60; u <= to / 1000; u += 60) {
            if (ref_fires(&e, z, u)) {
                cr_assert_lt(k, n, "%s [%s]: missing fire at %s", expr, zn,
                             fmt(u * 1000, b));
                cr_assert_eq(out[k], u * 1000, "%s [%s]: got %s, want %s", expr,
                             zn, fmt(out[k], b), fmt(u * 1000, b));
                k++;
            }
        }
        cr_assert_eq(k, n, "%s [%s]: extra fires", expr, zn);
    }
}

/* ---- fuzzing ----------------------------------------------------------- */

Test(cron, fuzz_random_strings_never_crash)
{
    static const char alphabet[] =
        "0123456789*/,-? \t@JANFEBMONSUNjanmon"
        "everyhmsdx?LW#";
    static const char *const zones[] = {NULL, "Europe/Berlin",
                                        "America/New_York",
                                        "Australia/Lord_Howe", "Asia/Kolkata"};
    static const char *const tokens[] = {
        "*",     "?",       "*/5",    "0",       "59",      "60",  "1-5",
        "5-1",   "1,2,3",   "JAN",    "jan-mar", "MON-FRI", "sun", "7",
        "0-7/2", "3/4",     "@daily", "@every",  "1h30m",   "30s", "0s",
        "31",    "2",       "29",     "*/0",     ",",       "-",   "/",
        "1-",    "@hourly", "L",      "12",      "23",      "24",  "1/1",
    };
    struct prng r;
    unsigned i;
    unsigned ok = 0;

    prng_seed(&r, 12345);
    for (i = 0; i < 30000; i++) {
        char s[320];
        size_t len;
        size_t k;
        struct cron_expr e;
        char errmsg[ERRMSG_SIZE];
        int rv;

        if (i % 3 == 0) {
            /* Arbitrary bytes, sometimes past the length limit. */
            len = (size_t)prng_below(&r, 300);
            for (k = 0; k < len; k++) {
                s[k] = (char)(1 + prng_below(&r, 255));
            }
        } else if (i % 3 == 1) {
            len = (size_t)prng_below(&r, 40);
            for (k = 0; k < len; k++) {
                s[k] = alphabet[prng_below(&r, sizeof alphabet - 1)];
            }
        } else {
            /* Plausible tokens, 1..7 of them. */
            unsigned ntok = 1 + (unsigned)prng_below(&r, 7);
            len = 0;
            for (k = 0; k < ntok; k++) {
                const char *tok = tokens[prng_below(&r, ARRAY_SIZE(tokens))];
                size_t tl = strlen(tok);
                if (len + tl + 1 >= sizeof s) {
                    break;
                }
                memcpy(s + len, tok, tl);
                len += tl;
                s[len++] = ' ';
            }
        }
        s[len] = '\0';
        errmsg[0] = '\0';
        rv = cron_parse(&e, s, zones[i % ARRAY_SIZE(zones)], errmsg);
        if (rv != 0) {
            cr_assert_eq(rv, ERR_INVALID);
            cr_assert_neq(errmsg[0], '\0', "no message for '%s'", s);
            continue;
        }
        ok++;
        {
            int64_t after = (int64_t)prng_below(&r, 4102444800000ULL);
            int64_t n = cron_next(&e, after);
            int64_t out[8];
            cr_assert(n == INT64_MAX || (n > after && n % 1000 == 0),
                      "'%s': %lld after %lld", s, (long long)n,
                      (long long)after);
            (void)cron_between(&e, after, after + 86400000LL * 30, out, 8);
        }
    }
    /* The alphabet is rich enough that some inputs parse. */
    cr_expect_gt(ok, 50, "only %u inputs parsed", ok);
}

/* Structured fuzz: random but well-formed expressions around DST changes;
 * results are strictly increasing whole seconds. */
Test(cron, fuzz_valid_expressions_monotonic)
{
    static const char *const zones[] = {"Europe/Berlin", "America/New_York",
                                        "Australia/Lord_Howe", "Pacific/Apia",
                                        "America/Santiago"};
    struct prng r;
    unsigned i;
    prng_seed(&r, 4242);
    for (i = 0; i < 500; i++) {
        char f[6][32];
        char expr[200];
        struct cron_expr e;
        int64_t t = ms_of("2025-01-01T00:00:00Z") +
                    (int64_t)prng_below(&r, 86400ULL * 365 * 3) * 1000;
        int64_t out[50];
        unsigned n;
        unsigned k;
        random_field(&r, f[0], sizeof f[0], 0, 59, 40);
        random_field(&r, f[1], sizeof f[1], 0, 59, 30);
        random_field(&r, f[2], sizeof f[2], 0, 23, 40);
        random_field(&r, f[3], sizeof f[3], 1, 31, 60);
        random_field(&r, f[4], sizeof f[4], 1, 12, 60);
        random_field(&r, f[5], sizeof f[5], 0, 7, 60);
        snprintf(expr, sizeof expr, "%s %s %s %s %s %s", f[0], f[1], f[2], f[3],
                 f[4], f[5]);
        parse_ok(&e, expr, zones[i % ARRAY_SIZE(zones)]);
        n = cron_between(&e, t, t + 86400000LL * 400, out, ARRAY_SIZE(out));
        for (k = 0; k < n; k++) {
            cr_assert_eq(out[k] % 1000, 0);
            cr_assert_gt(out[k], k == 0 ? t : out[k - 1], "%s", expr);
            /* cron_next from just before a fire returns that fire. */
            cr_assert_eq(cron_next(&e, out[k] - 1), out[k], "%s", expr);
        }
    }
}

/* Sparse and impossible expressions are answered by skipping fields, not by
 * scanning: 2,000 calls over DST zones stay far below the deadline even
 * under sanitizers (a minute scan over 8 years would take seconds each). */
Test(cron, sparse_expressions_are_fast)
{
    static const char *const exprs[] = {
        "0 0 30 2 *",         "0 0 29 2 *",   "0 0 31 4,6,9,11 *",
        "59 59 23 31 12 * *", "0 0 29 2 MON", "*/7 * * * * *",
        "0 0 13 * FRI",
    };
    struct cron_expr e;
    uint64_t start = th_now_ms();
    unsigned i;
    unsigned k;
    int64_t t = ms_of("2026-01-01T00:00:00Z");
    for (i = 0; i < ARRAY_SIZE(exprs); i++) {
        char errmsg[ERRMSG_SIZE];
        if (cron_parse(&e, exprs[i], "America/New_York", errmsg) != 0) {
            continue; /* the 7-field entry is rejected, by design */
        }
        for (k = 0; k < 300; k++) {
            (void)cron_next(&e, t + (int64_t)k * 86400000LL * 7);
        }
    }
    cr_expect_lt(th_now_ms() - start, 5000);
}
