/* IANA time zones: a TZif (v1/v2/v3) reader with POSIX TZ footer rules and
 * a process-wide cache. Never touches TZ, tzset() or localtime(). */
#ifndef KILN_SCHED_TZ_H_
#define KILN_SCHED_TZ_H_

#include <stdbool.h>
#include <stdint.h>

/* Directory holding the system zone database (Debian package tzdata). */
#define TZ_DIR "/usr/share/zoneinfo"

/* Longest accepted zone name, in bytes, excluding the NUL. */
#define TZ_NAME_MAX 63

/* Largest TZif file accepted, in bytes. */
#define TZ_FILE_MAX (256 * 1024)

/* A loaded, immutable zone. Opaque. */
struct tz;

/* Check a zone name's syntax without touching the disk: 1..TZ_NAME_MAX
 * bytes of [A-Za-z0-9/_+-], no leading '/', no empty or "." / ".."
 * components. Returns 0 or ERR_INVALID with a reason in errmsg
 * (ERRMSG_SIZE bytes, may be NULL). */
int tz_validate_name(const char *name, char *errmsg);

/* Look up a zone by IANA name ("Europe/Berlin"). NULL or "" means "UTC".
 * "UTC" is built in and needs no zone file; every other name is read from
 * TZ_DIR/<name> on first use (a small blocking read) and then cached for the
 * life of the process.
 * On success *out points into the cache: it is borrowed, immutable, safe to
 * share between threads, and valid until tz_cache_clear().
 * "localtime" (a link to the node's own /etc/localtime) is refused, so a
 * zone means the same on every node.
 * Errors (message in errmsg, ERRMSG_SIZE bytes, may be NULL):
 *   ERR_INVALID   bad name or no such zone: "timezone: unknown zone 'X'",
 *                 or a leap-second ("right/...") zone
 *   ERR_MALFORMED the zone file exists but is not valid TZif
 *   ERR_IO        the zone file could not be read
 *   ERR_NOMEM */
int tz_load(const char *name, const struct tz **out, char *errmsg);

/* Test and tool hook: parse the TZif file at path into a new, uncached zone
 * called name. The caller owns *out and frees it with tz_free(). Errors as
 * for tz_load (ERR_INVALID when the file does not exist). */
int tz_load_file(const char *path,
                 const char *name,
                 struct tz **out,
                 char *errmsg);

/* Parse TZif bytes already in memory (same contract as tz_load_file). */
int tz_load_bytes(const void *data,
                  uint64_t len,
                  const char *name,
                  struct tz **out,
                  char *errmsg);

/* Free a zone from tz_load_file/tz_load_bytes; NULL is fine. Never call it on
 * a cached zone from tz_load. */
void tz_free(struct tz *z);

/* Drop every cached zone. Every pointer returned by tz_load (and every
 * cron_expr holding one) becomes invalid. For tests and shutdown only. */
void tz_cache_clear(void);

/* The zone's name as given at load time. */
const char *tz_name(const struct tz *z);

/* Offset of local time from UTC, in seconds (east positive), at the instant
 * utc_s (Unix seconds). Uses the transition table, then the POSIX footer rule
 * for instants after the last transition, and the first time type before the
 * first transition (RFC 8536). */
int64_t tz_utc_offset_s(const struct tz *z, int64_t utc_s);

/* The first instant strictly after utc_s at which the zone's offset (or its
 * type) changes. Returns false when there is none. */
bool tz_next_transition(const struct tz *z, int64_t utc_s, int64_t *at);

/* The last transition instant at or before utc_s. Returns false when there is
 * none. */
bool tz_prev_transition(const struct tz *z, int64_t utc_s, int64_t *at);

/* Proleptic Gregorian calendar helpers (pure arithmetic, any int64 year that
 * keeps the day count in range; callers stay within +-1e6 years). */

/* Days since 1970-01-01 of y-m-d (m 1..12, d 1..31). */
int64_t tz_days_from_civil(int64_t y, unsigned m, unsigned d);

/* Inverse of tz_days_from_civil. */
void tz_civil_from_days(int64_t days, int64_t *y, unsigned *m, unsigned *d);

/* Number of days in month m (1..12) of year y. */
unsigned tz_days_in_month(int64_t y, unsigned m);

/* Day of the week of a day count from tz_days_from_civil: 0 = Sunday. */
unsigned tz_weekday(int64_t days);

#endif /* KILN_SCHED_TZ_H_ */
