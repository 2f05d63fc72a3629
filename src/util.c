/* Small root utilities. */
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "err.h"

int addr_parse(const char *s, struct addr *out, char *errmsg)
{
    const char *colon;
    char host[64];
    uint64_t port;
    struct in_addr ia;
    size_t hlen;

    if (s == NULL || *s == '\0') {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "empty address");
        }
        return ERR_INVALID;
    }
    colon = strrchr(s, ':');
    if (colon == NULL) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "address '%.64s' has no ':PORT'", s);
        }
        return ERR_INVALID;
    }
    hlen = (size_t)(colon - s);
    if (hlen == 0 || hlen >= sizeof host) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "address '%.64s' has a bad host", s);
        }
        return ERR_INVALID;
    }
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    if (strcmp(host, "localhost") == 0) {
        strcpy(host, "127.0.0.1");
    }
    if (inet_pton(AF_INET, host, &ia) != 1) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg,
                          "address '%.64s': host must be an IPv4 literal", s);
        }
        return ERR_INVALID;
    }
    if (parse_u64(colon + 1, 65535, &port) != 0 || port == 0) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "address '%.64s' has a bad port", s);
        }
        return ERR_INVALID;
    }
    inet_ntop(AF_INET, &ia, out->host, sizeof out->host);
    out->port = (uint16_t)port;
    return 0;
}

void addr_format(const struct addr *a, char *buf)
{
    snprintf(buf, ADDR_STRLEN, "%s:%u", a->host, (unsigned)a->port);
}

void prng_seed(struct prng *p, uint64_t seed)
{
    p->s = seed != 0 ? seed : 0x9E3779B97F4A7C15ULL;
}

uint64_t prng_next(struct prng *p)
{
    uint64_t x = p->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    p->s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

uint64_t prng_below(struct prng *p, uint64_t n)
{
    return prng_next(p) % n;
}

uint64_t hash64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *b = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    /* Final avalanche (splitmix64) so that nearby inputs spread well. */
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

int64_t time_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t time_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void time_format_ms(int64_t ms, char *buf)
{
    time_t secs = (time_t)(ms / 1000);
    int frac = (int)(ms % 1000);
    struct tm tm;
    if (frac < 0) {
        frac += 1000;
        secs -= 1;
    }
    gmtime_r(&secs, &tm);
    snprintf(buf, TIME_STRLEN, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, frac);
}

int time_parse_ms(const char *s, int64_t *out)
{
    struct tm tm;
    int ms = 0;
    int n = 0;
    memset(&tm, 0, sizeof tm);
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6) {
        return ERR_INVALID;
    }
    s += n;
    if (*s == '.') {
        int digits = 0;
        s++;
        while (*s >= '0' && *s <= '9') {
            if (digits < 3) {
                ms = ms * 10 + (*s - '0');
            }
            digits++;
            s++;
        }
        if (digits == 0) {
            return ERR_INVALID;
        }
        for (; digits < 3; digits++) {
            ms *= 10;
        }
    }
    if (strcmp(s, "Z") != 0 && strcmp(s, "+00:00") != 0) {
        return ERR_INVALID;
    }
    if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
        tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60) {
        return ERR_INVALID;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *out = (int64_t)timegm(&tm) * 1000 + ms;
    return 0;
}

int fs_mkdir_p(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf) {
        return ERR_INVALID;
    }
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                return ERR_IO;
            }
            *p = '/';
        }
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
        return ERR_IO;
    }
    return 0;
}

int fs_write_atomic(const char *path, const void *data, size_t len)
{
    char tmp[4200];
    int fd;
    const char *p = data;
    size_t left = len;

    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        return ERR_INVALID;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return ERR_IO;
    }
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            goto err_after_open;
        }
        p += n;
        left -= (size_t)n;
    }
    if (fsync(fd) != 0) {
        goto err_after_open;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return ERR_IO;
    }
    return 0;

err_after_open:
    close(fd);
    unlink(tmp);
    return ERR_IO;
}

int fs_read_all(const char *path, size_t max, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *buf;
    size_t used = 0;
    size_t cap = 4096;

    if (fd < 0) {
        return errno == ENOENT ? ERR_NOTFOUND : ERR_IO;
    }
    buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return ERR_NOMEM;
    }
    for (;;) {
        ssize_t n;
        if (used + 1 >= cap) {
            char *nb;
            if (cap > max) {
                free(buf);
                close(fd);
                return ERR_TOOBIG;
            }
            nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                free(buf);
                close(fd);
                return ERR_NOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        n = read(fd, buf + used, cap - used - 1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            free(buf);
            close(fd);
            return ERR_IO;
        }
        if (n == 0) {
            break;
        }
        used += (size_t)n;
        if (used > max) {
            free(buf);
            close(fd);
            return ERR_TOOBIG;
        }
    }
    close(fd);
    buf[used] = '\0';
    *out = buf;
    if (len != NULL) {
        *len = used;
    }
    return 0;
}

int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (s == NULL || *s == '\0') {
        return ERR_INVALID;
    }
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9') {
            return ERR_INVALID;
        }
        uint64_t d = (uint64_t)(*s - '0');
        if (d > max || v > (max - d) / 10) {
            return ERR_INVALID;
        }
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

bool str_copy(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size) {
        memcpy(dst, src, size - 1);
        dst[size - 1] = '\0';
        return false;
    }
    memcpy(dst, src, n + 1);
    return true;
}
