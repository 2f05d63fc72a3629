/* Small root utilities shared by every module: addresses, PRNG, time
 * formatting, files. */
#ifndef KILN_UTIL_H_
#define KILN_UTIL_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define UNUSED(x) (void)(x)

/* An IPv4 "a.b.c.d:port" endpoint. libraft 0.15 accepts IPv4 literals only,
 * so kiln uses them everywhere. */
#define ADDR_STRLEN 22 /* "255.255.255.255:65535" + NUL */
struct addr
{
    char host[16]; /* dotted quad */
    uint16_t port;
};

/* Parse "HOST:PORT" where HOST is an IPv4 literal or "localhost". Returns 0
 * or ERR_INVALID with a reason in errmsg (ERRMSG_SIZE bytes, may be NULL). */
int addr_parse(const char *s, struct addr *out, char *errmsg);

/* Format as "host:port" into buf (ADDR_STRLEN bytes). */
void addr_format(const struct addr *a, char *buf);

/* Deterministic PRNG (xorshift64*), for pure cores and simulations. */
struct prng
{
    uint64_t s;
};
void prng_seed(struct prng *p, uint64_t seed);
uint64_t prng_next(struct prng *p);
/* Uniform in [0, n); n > 0. */
uint64_t prng_below(struct prng *p, uint64_t n);

/* 64-bit FNV-1a, for stable hashing of names and ids. */
uint64_t hash64(const void *data, size_t len, uint64_t seed);

/* Wall clock in milliseconds since the Unix epoch, and monotonic ms. */
int64_t time_wall_ms(void);
uint64_t time_mono_ms(void);

/* RFC 3339 UTC with milliseconds: "2026-11-23T19:50:33.123Z" (25 bytes). */
#define TIME_STRLEN 32
void time_format_ms(int64_t ms, char *buf);
/* Parse the same format (also without milliseconds). Returns 0 or
 * ERR_INVALID. */
int time_parse_ms(const char *s, int64_t *out);

/* Create a directory and its parents (mode 0755). Returns 0 or ERR_IO. */
int fs_mkdir_p(const char *path);

/* Write a file atomically (temp file + fsync + rename). Returns 0 or ERR_IO. */
int fs_write_atomic(const char *path, const void *data, size_t len);

/* Read a whole file (at most max bytes) into a malloc'd NUL-terminated
 * buffer. Returns 0, ERR_NOTFOUND, ERR_TOOBIG or ERR_IO. */
int fs_read_all(const char *path, size_t max, char **out, size_t *len);

/* Parse a non-negative decimal integer that must fit max. */
int parse_u64(const char *s, uint64_t max, uint64_t *out);

/* Safe bounded string copy; always NUL-terminates. Returns false if cut. */
bool str_copy(char *dst, size_t size, const char *src);

#endif /* KILN_UTIL_H_ */
