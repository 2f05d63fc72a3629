/* Cron schedules: parse 5/6-field expressions and macros, compute fire times
 * in an IANA time zone. Pure and deterministic (see docs/cron.md). */
#ifndef KILN_SCHED_CRON_H_
#define KILN_SCHED_CRON_H_

#include <stdbool.h>
#include <stdint.h>

#include "sched/tz.h"

/* Longest accepted expression, in bytes (excluding the NUL). */
#define CRON_EXPR_MAX 256

/* cron_next looks this many years of local calendar ahead before giving up
 * (8 covers Feb 29 across a non-leap century year, e.g. 2096 -> 2104). */
#define CRON_HORIZON_YEARS 8

/* Bounds of @every durations, in seconds. */
#define CRON_EVERY_MIN_S 1
#define CRON_EVERY_MAX_S (366 * 86400)

/* Instants handled: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z, in ms.
 * cron_next treats an earlier after_ms as CRON_MIN_MS and returns INT64_MAX
 * past CRON_MAX_MS. */
#define CRON_MIN_MS (-62135596800000LL)
#define CRON_MAX_MS (253402300799000LL)

/* struct cron_expr flags. */
#define CRON_F_DOM_STAR 0x01 /* day-of-month field starts with '*' or '?' */
#define CRON_F_DOW_STAR 0x02 /* day-of-week field starts with '*' or '?' */
#define CRON_F_EVERY 0x04    /* @every: fixed period from the epoch */
#define CRON_F_SECONDS 0x08  /* 6-field expression */

/* A parsed schedule. Caller-allocated, plain data: it may be copied with
 * memcpy and needs no cleanup. */
struct cron_expr
{
    uint64_t sec;                  /* bit s set: second s (0..59) matches */
    uint64_t min;                  /* bit m: minute 0..59 */
    uint32_t hour;                 /* bit h: hour 0..23 */
    uint32_t dom;                  /* bit d: day of month 1..31 */
    uint16_t month;                /* bit m: month 1..12 */
    uint8_t dow;                   /* bit d: weekday 0..6, 0 = Sunday */
    uint8_t flags;                 /* CRON_F_* */
    int64_t every_ms;              /* period for CRON_F_EVERY */
    const struct tz *tz;           /* borrowed from the tz cache (see tz_load):
                                      valid until tz_cache_clear() */
    char tz_name[TZ_NAME_MAX + 1]; /* "UTC" when none was given */
};

/* Parse expr in time zone tz (an IANA name; NULL or "" = "UTC").
 * Syntax (docs/cron.md): "[sec] min hour dom month dow" with lists, ranges,
 * steps, '*', '?' (day fields), JAN-DEC and SUN-SAT names, or one of
 * @yearly @annually @monthly @weekly @daily @midnight @hourly
 * "@every DURATION" (units d h m s, e.g. "1h30m").
 * On success fills *e and returns 0. On failure returns ERR_INVALID with a
 * message in errmsg (ERRMSG_SIZE bytes, may be NULL), e.g.
 *   schedule: position 9 (field "hour"): value 25 out of range 0-23
 * or a tz_load error for the zone (ERR_INVALID "timezone: unknown zone
 * 'Mars/Base'", ERR_MALFORMED, ERR_IO, ERR_NOMEM). Loading a zone the first
 * time reads one small file; everything else is pure. */
int cron_parse(struct cron_expr *e,
               const char *expr,
               const char *tz,
               char *errmsg);

/* The first fire time strictly after after_ms (Unix ms, UTC), as whole
 * seconds in ms. Returns INT64_MAX when there is none within
 * CRON_HORIZON_YEARS of local calendar (e.g. "0 0 30 2 *"). Runs in time
 * proportional to the number of calendar fields skipped, never a
 * minute-by-minute scan. DST: a local time skipped by a transition fires once
 * at the transition instant; a repeated local time fires once, at its first
 * occurrence. */
int64_t cron_next(const struct cron_expr *e, int64_t after_ms);

/* Fire times in (from_ms, to_ms], ascending, at most max of them written to
 * out. Returns the number written (== max means there may be more). */
unsigned cron_between(const struct cron_expr *e,
                      int64_t from_ms,
                      int64_t to_ms,
                      int64_t *out,
                      unsigned max);

#endif /* KILN_SCHED_CRON_H_ */
