/* TZif (RFC 8536) reader, POSIX TZ footer rules and the zone cache. */
#include "sched/tz.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

/* Instants beyond +-2^45 s (about 1.1 million years) are clamped before any
 * calendar arithmetic, so nothing can overflow. */
#define TZ_CLAMP_S ((int64_t)1 << 45)

/* Transition times beyond +-2^62 s are rejected, so offset arithmetic on
 * them cannot overflow (real files stay within -2^59). */
#define TZ_TRANS_LIMIT ((int64_t)1 << 62)

/* RFC 8536 bounds on a UT offset. */
#define TZ_OFF_MIN (-89999)
#define TZ_OFF_MAX 93599

/* Longest POSIX TZ footer accepted. */
#define TZ_FOOTER_MAX 128

/* One rule date of a POSIX TZ string: "Jn", "n" or "Mm.w.d". */
struct tz_date
{
    char kind;    /* 'J' (1..365, no Feb 29), 'N' (0..365), 'M' */
    unsigned n;   /* day for 'J' and 'N' */
    unsigned m;   /* month 1..12 for 'M' */
    unsigned w;   /* week 1..5 (5 = last) for 'M' */
    unsigned d;   /* weekday 0..6 (0 = Sunday) for 'M' */
    int32_t time; /* local time of day in seconds, -167h..167h */
};

/* The POSIX TZ footer: standard offset and an optional DST rule. */
struct tz_rule
{
    int32_t std_off; /* seconds east of UTC */
    int32_t dst_off;
    bool has_dst;
    struct tz_date start; /* DST starts, given in standard local time */
    struct tz_date end;   /* DST ends, given in daylight local time */
};

struct tz
{
    struct tz *next; /* cache chain; owned by the cache */
    char name[TZ_NAME_MAX + 1];
    uint32_t ntrans;
    uint32_t ntypes;
    int64_t *trans;     /* owned (inside the same block), ntrans, ascending */
    int32_t *type_off;  /* ntypes offsets in seconds east of UTC */
    uint8_t *trans_idx; /* ntrans indices into type_off */
    bool has_rule;      /* footer present and non-empty */
    struct tz_rule rule;
};

static int32_t utc_off[1] = {0}; /* never written */

static const struct tz tz_utc = {
    .next = NULL,
    .name = "UTC",
    .ntrans = 0,
    .ntypes = 1,
    .trans = NULL,
    .type_off = utc_off,
    .trans_idx = NULL,
    .has_rule = false,
};

/* Process-wide cache of loaded zones: immutable once published. */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tz *cache_head; /* protected by cache_lock */

/* ---- calendar ---------------------------------------------------------- */

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

int64_t tz_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    /* Shift the year to start in March so Feb 29 is the last day. */
    int64_t era;
    int64_t yoe;
    int64_t doy;
    int64_t doe;
    int64_t mp = m > 2 ? (int64_t)m - 3 : (int64_t)m + 9;

    y -= m <= 2 ? 1 : 0;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * mp + 2) / 5 + (int64_t)d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

void tz_civil_from_days(int64_t days, int64_t *y, unsigned *m, unsigned *d)
{
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t mm = mp < 10 ? mp + 3 : mp - 9;

    *d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    *m = (unsigned)mm;
    *y = yoe + era * 400 + (mm <= 2 ? 1 : 0);
}

unsigned tz_days_in_month(int64_t y, unsigned m)
{
    static const unsigned char len[12] = {31, 28, 31, 30, 31, 30,
                                          31, 31, 30, 31, 30, 31};
    if (m < 1 || m > 12) {
        return 0;
    }
    if (m == 2 && is_leap(y)) {
        return 29;
    }
    return len[m - 1];
}

unsigned tz_weekday(int64_t days)
{
    /* 1970-01-01 was a Thursday (4). */
    int64_t w = (days + 4) % 7;
    return (unsigned)(w < 0 ? w + 7 : w);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) {
        q--;
    }
    return q;
}

static int64_t clamp_s(int64_t t)
{
    if (t > TZ_CLAMP_S) {
        return TZ_CLAMP_S;
    }
    if (t < -TZ_CLAMP_S) {
        return -TZ_CLAMP_S;
    }
    return t;
}

/* ---- POSIX TZ footer rules --------------------------------------------- */

/* Day count (since the epoch) of a rule date in year y. */
static int64_t rule_day(const struct tz_date *dt, int64_t y)
{
    int64_t jan1 = tz_days_from_civil(y, 1, 1);
    if (dt->kind == 'J') {
        /* 1..365, February 29 is never counted. */
        int64_t n = (int64_t)dt->n - 1;
        if (is_leap(y) && dt->n >= 60) {
            n++;
        }
        return jan1 + n;
    }
    if (dt->kind == 'N') {
        return jan1 + (int64_t)dt->n;
    }
    {
        int64_t first = tz_days_from_civil(y, dt->m, 1);
        unsigned wd = tz_weekday(first);
        unsigned mdays = tz_days_in_month(y, dt->m);
        unsigned day = 1 + (dt->d + 7 - wd) % 7 + (dt->w - 1) * 7;
        while (day > mdays) {
            day -= 7;
        }
        return first + (int64_t)day - 1;
    }
}

/* UTC instants at which DST starts and ends in year y. */
static void rule_instants(const struct tz_rule *r,
                          int64_t y,
                          int64_t *start,
                          int64_t *end)
{
    *start = rule_day(&r->start, y) * 86400 + r->start.time - r->std_off;
    *end = rule_day(&r->end, y) * 86400 + r->end.time - r->dst_off;
}

static int64_t rule_year(const struct tz_rule *r, int64_t t)
{
    int64_t y;
    unsigned m;
    unsigned d;
    tz_civil_from_days(floor_div(t + r->std_off, 86400), &y, &m, &d);
    return y;
}

static int32_t rule_offset(const struct tz_rule *r, int64_t t)
{
    int64_t start;
    int64_t end;
    bool dst;

    if (!r->has_dst) {
        return r->std_off;
    }
    t = clamp_s(t);
    rule_instants(r, rule_year(r, t), &start, &end);
    if (start < end) {
        dst = t >= start && t < end;
    } else {
        dst = !(t >= end && t < start);
    }
    return dst ? r->dst_off : r->std_off;
}

/* Parse "[+-]hh[:mm[:ss]]" with hh <= max_h into seconds. */
static bool parse_hms(const char **pp,
                      const char *end,
                      unsigned max_h,
                      int32_t *out)
{
    const char *p = *pp;
    int sign = 1;
    unsigned part[3] = {0, 0, 0};
    unsigned i;

    if (p < end && (*p == '+' || *p == '-')) {
        sign = *p == '-' ? -1 : 1;
        p++;
    }
    for (i = 0; i < 3; i++) {
        unsigned v = 0;
        unsigned nd = 0;
        if (i > 0) {
            if (p >= end || *p != ':') {
                break;
            }
            p++;
        }
        while (p < end && *p >= '0' && *p <= '9' && nd < 3) {
            v = v * 10 + (unsigned)(*p - '0');
            p++;
            nd++;
        }
        if (nd == 0 || (i > 0 && (nd != 2 || v > 59))) {
            return false;
        }
        part[i] = v;
    }
    if (part[0] > max_h) {
        return false;
    }
    *out = sign * (int32_t)(part[0] * 3600 + part[1] * 60 + part[2]);
    *pp = p;
    return true;
}

static bool parse_zone_abbr(const char **pp, const char *end)
{
    const char *p = *pp;
    unsigned n = 0;
    if (p < end && *p == '<') {
        p++;
        while (p < end && *p != '>') {
            char c = *p;
            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                  (c >= '0' && c <= '9') || c == '+' || c == '-')) {
                return false;
            }
            p++;
            n++;
        }
        if (p >= end || n < 3) {
            return false;
        }
        *pp = p + 1;
        return true;
    }
    while (p < end && ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))) {
        p++;
        n++;
    }
    if (n < 3) {
        return false;
    }
    *pp = p;
    return true;
}

static bool parse_uint(const char **pp,
                       const char *end,
                       unsigned max,
                       unsigned *out)
{
    const char *p = *pp;
    unsigned v = 0;
    unsigned nd = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (nd >= 3) {
            return false;
        }
        v = v * 10 + (unsigned)(*p - '0');
        p++;
        nd++;
    }
    if (nd == 0 || v > max) {
        return false;
    }
    *out = v;
    *pp = p;
    return true;
}

static bool parse_rule_date(const char **pp,
                            const char *end,
                            struct tz_date *dt)
{
    const char *p = *pp;
    memset(dt, 0, sizeof *dt);
    dt->time = 2 * 3600;
    if (p < end && *p == 'J') {
        p++;
        dt->kind = 'J';
        if (!parse_uint(&p, end, 365, &dt->n) || dt->n < 1) {
            return false;
        }
    } else if (p < end && *p == 'M') {
        p++;
        dt->kind = 'M';
        if (!parse_uint(&p, end, 12, &dt->m) || dt->m < 1) {
            return false;
        }
        if (p >= end || *p != '.') {
            return false;
        }
        p++;
        if (!parse_uint(&p, end, 5, &dt->w) || dt->w < 1) {
            return false;
        }
        if (p >= end || *p != '.') {
            return false;
        }
        p++;
        if (!parse_uint(&p, end, 6, &dt->d)) {
            return false;
        }
    } else {
        dt->kind = 'N';
        if (!parse_uint(&p, end, 365, &dt->n)) {
            return false;
        }
    }
    if (p < end && *p == '/') {
        p++;
        /* RFC 8536 extends the time to -167..167 hours. */
        if (!parse_hms(&p, end, 167, &dt->time)) {
            return false;
        }
    }
    *pp = p;
    return true;
}

/* Parse a POSIX TZ string such as "CET-1CEST,M3.5.0,M10.5.0/3". */
static bool parse_rule(const char *s, const char *end, struct tz_rule *r)
{
    const char *p = s;
    int32_t v;

    memset(r, 0, sizeof *r);
    if (!parse_zone_abbr(&p, end) || !parse_hms(&p, end, 24, &v)) {
        return false;
    }
    r->std_off = -v;
    r->dst_off = r->std_off;
    if (p == end) {
        return true;
    }
    if (!parse_zone_abbr(&p, end)) {
        return false;
    }
    r->has_dst = true;
    r->dst_off = r->std_off + 3600;
    if (p < end && *p != ',') {
        if (!parse_hms(&p, end, 24, &v)) {
            return false;
        }
        r->dst_off = -v;
    }
    if (p == end) {
        /* POSIX leaves the default rule to the implementation; use the
         * current US rule as glibc does. */
        r->start = (struct tz_date){'M', 0, 3, 2, 0, 2 * 3600};
        r->end = (struct tz_date){'M', 0, 11, 1, 0, 2 * 3600};
        return true;
    }
    if (*p != ',') {
        return false;
    }
    p++;
    if (!parse_rule_date(&p, end, &r->start)) {
        return false;
    }
    if (p >= end || *p != ',') {
        return false;
    }
    p++;
    if (!parse_rule_date(&p, end, &r->end)) {
        return false;
    }
    if (p != end) {
        return false;
    }
    if (r->std_off < TZ_OFF_MIN || r->std_off > TZ_OFF_MAX ||
        r->dst_off < TZ_OFF_MIN || r->dst_off > TZ_OFF_MAX) {
        return false;
    }
    return true;
}

/* ---- TZif parsing ------------------------------------------------------ */

struct tzif_hdr
{
    char version;
    uint32_t isutcnt;
    uint32_t isstdcnt;
    uint32_t leapcnt;
    uint32_t timecnt;
    uint32_t typecnt;
    uint32_t charcnt;
};

static uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static int64_t be64s(const unsigned char *p)
{
    uint64_t v = ((uint64_t)be32(p) << 32) | be32(p + 4);
    return (int64_t)v;
}

static int64_t be32s(const unsigned char *p)
{
    return (int64_t)(int32_t)be32(p);
}

static bool read_hdr(const unsigned char *p, uint64_t len, struct tzif_hdr *h)
{
    if (len < 44 || memcmp(p, "TZif", 4) != 0) {
        return false;
    }
    h->version = (char)p[4];
    h->isutcnt = be32(p + 20);
    h->isstdcnt = be32(p + 24);
    h->leapcnt = be32(p + 28);
    h->timecnt = be32(p + 32);
    h->typecnt = be32(p + 36);
    h->charcnt = be32(p + 40);
    return true;
}

/* Size of the data block after a header, for 4- or 8-byte times. */
static uint64_t block_size(const struct tzif_hdr *h, unsigned tsize)
{
    return (uint64_t)h->timecnt * tsize + h->timecnt +
           (uint64_t)h->typecnt * 6 + h->charcnt +
           (uint64_t)h->leapcnt * (tsize + 4) + h->isstdcnt + h->isutcnt;
}

static int malformed(char *errmsg, const char *name, const char *why)
{
    if (errmsg != NULL) {
        errmsg_printf(errmsg, "timezone: zone '%s': malformed TZif data: %s",
                      name, why);
    }
    return ERR_MALFORMED;
}

static int parse_block(const unsigned char *p,
                       const struct tzif_hdr *h,
                       unsigned tsize,
                       const char *name,
                       struct tz *z,
                       char *errmsg)
{
    const unsigned char *times = p;
    const unsigned char *idx = times + (uint64_t)h->timecnt * tsize;
    const unsigned char *types = idx + h->timecnt;
    uint32_t i;

    for (i = 0; i < h->timecnt; i++) {
        int64_t t = tsize == 8 ? be64s(times + (uint64_t)i * 8)
                               : be32s(times + (uint64_t)i * 4);
        if (t > TZ_TRANS_LIMIT || t < -TZ_TRANS_LIMIT) {
            return malformed(errmsg, name, "transition time out of range");
        }
        if (i > 0 && t <= z->trans[i - 1]) {
            return malformed(errmsg, name, "transition times not ascending");
        }
        if (idx[i] >= h->typecnt) {
            return malformed(errmsg, name, "transition type out of range");
        }
        z->trans[i] = t;
        z->trans_idx[i] = idx[i];
    }
    for (i = 0; i < h->typecnt; i++) {
        const unsigned char *tt = types + (uint64_t)i * 6;
        int64_t off = be32s(tt);
        if (off < TZ_OFF_MIN || off > TZ_OFF_MAX) {
            return malformed(errmsg, name, "UT offset out of range");
        }
        if (tt[4] > 1) {
            return malformed(errmsg, name, "bad isdst flag");
        }
        if (tt[5] >= h->charcnt) {
            return malformed(errmsg, name, "designation index out of range");
        }
        z->type_off[i] = (int32_t)off;
    }
    z->ntrans = h->timecnt;
    z->ntypes = h->typecnt;
    return 0;
}

static int check_hdr(const struct tzif_hdr *h, const char *name, char *errmsg)
{
    if (h->typecnt == 0 || h->typecnt > 256) {
        return malformed(errmsg, name, "bad type count");
    }
    if (h->charcnt == 0 || h->charcnt > 65536) {
        return malformed(errmsg, name, "bad designation count");
    }
    if (h->timecnt > 1000000) {
        return malformed(errmsg, name, "too many transitions");
    }
    if ((h->isstdcnt != 0 && h->isstdcnt != h->typecnt) ||
        (h->isutcnt != 0 && h->isutcnt != h->typecnt)) {
        return malformed(errmsg, name, "bad indicator count");
    }
    if (h->leapcnt != 0) {
        /* "right/..." zones count leap seconds; Unix time does not. */
        if (errmsg != NULL) {
            errmsg_printf(errmsg,
                          "timezone: zone '%s': leap-second zones are not "
                          "supported",
                          name);
        }
        return ERR_INVALID;
    }
    return 0;
}

int tz_load_bytes(const void *data,
                  uint64_t len,
                  const char *name,
                  struct tz **out,
                  char *errmsg)
{
    const unsigned char *p = data;
    const unsigned char *blk;
    struct tzif_hdr h;
    struct tz *z;
    uint64_t pos;
    uint64_t size;
    unsigned tsize = 4;
    int rv;

    if (name == NULL || strlen(name) > TZ_NAME_MAX) {
        name = "?";
    }
    if (p == NULL || !read_hdr(p, len, &h)) {
        return malformed(errmsg, name, "bad header");
    }
    if (h.version != 0 && h.version < '2') {
        return malformed(errmsg, name, "unknown version");
    }
    rv = check_hdr(&h, name, errmsg);
    if (rv != 0) {
        return rv;
    }
    size = block_size(&h, 4);
    if (len - 44 < size) {
        return malformed(errmsg, name, "truncated");
    }
    pos = 44;
    if (h.version >= '2') {
        pos += size;
        /* Skip the 32-bit block; use the 64-bit one and the footer. */
        if (!read_hdr(p + pos, len - pos, &h)) {
            return malformed(errmsg, name, "bad second header");
        }
        rv = check_hdr(&h, name, errmsg);
        if (rv != 0) {
            return rv;
        }
        pos += 44;
        tsize = 8;
        size = block_size(&h, 8);
        if (len - pos < size) {
            return malformed(errmsg, name, "truncated");
        }
    }
    blk = p + pos;
    pos += size;

    z = calloc(1,
               sizeof *z + (uint64_t)h.timecnt * 9 + (uint64_t)h.typecnt * 4);
    if (z == NULL) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "timezone: zone '%s': out of memory", name);
        }
        return ERR_NOMEM;
    }
    z->trans = (int64_t *)(void *)(z + 1);
    z->type_off = (int32_t *)(void *)(z->trans + h.timecnt);
    z->trans_idx = (uint8_t *)(z->type_off + h.typecnt);
    {
        size_t n = strlen(name);
        memcpy(z->name, name, n + 1);
    }
    rv = parse_block(blk, &h, tsize, name, z, errmsg);
    if (rv != 0) {
        goto err_after_alloc;
    }
    if (tsize == 8) {
        const unsigned char *f;
        const unsigned char *nl;
        if (pos >= len || p[pos] != '\n') {
            rv = malformed(errmsg, name, "missing footer");
            goto err_after_alloc;
        }
        f = p + pos + 1;
        nl = memchr(f, '\n', len - pos - 1);
        if (nl == NULL || nl - f > TZ_FOOTER_MAX) {
            rv = malformed(errmsg, name, "bad footer");
            goto err_after_alloc;
        }
        if (nl > f) {
            if (!parse_rule((const char *)f, (const char *)nl, &z->rule)) {
                rv = malformed(errmsg, name, "bad footer TZ string");
                goto err_after_alloc;
            }
            z->has_rule = true;
        }
    }
    *out = z;
    return 0;

err_after_alloc:
    free(z);
    return rv;
}

static int read_file(const char *path,
                     const char *name,
                     unsigned char **out,
                     uint64_t *len,
                     char *errmsg)
{
    struct stat st;
    unsigned char *buf;
    uint64_t used = 0;
    int fd;
    int rv;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP ||
            errno == ENAMETOOLONG) {
            goto unknown;
        }
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "timezone: zone '%s': open %s: %s", name,
                          path, strerror(errno));
        }
        return ERR_IO;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        goto unknown;
    }
    if (st.st_size > TZ_FILE_MAX) {
        close(fd);
        return malformed(errmsg, name, "file too large");
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return ERR_NOMEM;
    }
    while (used < (uint64_t)st.st_size) {
        ssize_t n = read(fd, buf + used, (size_t)st.st_size - used);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            if (errmsg != NULL) {
                errmsg_printf(errmsg, "timezone: zone '%s': read %s: %s", name,
                              path, strerror(errno));
            }
            rv = ERR_IO;
            goto err_after_buf;
        }
        if (n == 0) {
            break;
        }
        used += (uint64_t)n;
    }
    close(fd);
    *out = buf;
    *len = used;
    return 0;

err_after_buf:
    free(buf);
    close(fd);
    return rv;

unknown:
    if (errmsg != NULL) {
        errmsg_printf(errmsg, "timezone: unknown zone '%s'", name);
    }
    return ERR_INVALID;
}

int tz_load_file(const char *path,
                 const char *name,
                 struct tz **out,
                 char *errmsg)
{
    unsigned char *buf;
    uint64_t len;
    int rv;

    if (name == NULL || strlen(name) > TZ_NAME_MAX) {
        name = "?";
    }
    rv = read_file(path, name, &buf, &len, errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = tz_load_bytes(buf, len, name, out, errmsg);
    free(buf);
    return rv;
}

void tz_free(struct tz *z)
{
    if (z == &tz_utc) {
        return;
    }
    free(z);
}

/* ---- names and cache --------------------------------------------------- */

int tz_validate_name(const char *name, char *errmsg)
{
    size_t n;
    size_t i;
    size_t comp = 0; /* start of the current component */
    const char *why = NULL;

    if (name == NULL || name[0] == '\0') {
        why = "empty name";
        goto bad;
    }
    n = strnlen(name, TZ_NAME_MAX + 1);
    if (n > TZ_NAME_MAX) {
        why = "name too long";
        goto bad;
    }
    if (name[0] == '/') {
        why = "leading '/'";
        goto bad;
    }
    for (i = 0; i <= n; i++) {
        char c = name[i];
        if (c == '/' || c == '\0') {
            size_t len = i - comp;
            if (len == 0 || (len == 1 && name[comp] == '.') ||
                (len == 2 && name[comp] == '.' && name[comp + 1] == '.')) {
                why = "empty or relative path component";
                goto bad;
            }
            comp = i + 1;
            continue;
        }
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '+' || c == '-')) {
            why = "character not in [A-Za-z0-9/_+-]";
            goto bad;
        }
    }
    return 0;

bad:
    if (errmsg != NULL) {
        char shown[TZ_NAME_MAX + 1];
        size_t k = 0;
        if (name != NULL) {
            /* Show only printable bytes of a bad name. */
            for (i = 0; name[i] != '\0' && k < TZ_NAME_MAX; i++) {
                unsigned char c = (unsigned char)name[i];
                shown[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
            }
        }
        shown[k] = '\0';
        errmsg_printf(errmsg, "timezone: invalid zone name '%s': %s", shown,
                      why);
    }
    return ERR_INVALID;
}

int tz_load(const char *name, const struct tz **out, char *errmsg)
{
    char path[sizeof TZ_DIR + TZ_NAME_MAX + 2];
    unsigned char *buf;
    uint64_t len;
    struct tz *z;
    int rv;

    if (name == NULL || name[0] == '\0' || strcmp(name, "UTC") == 0) {
        *out = &tz_utc;
        return 0;
    }
    rv = tz_validate_name(name, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (strcmp(name, "localtime") == 0) {
        /* A link to the node's /etc/localtime: not the same on every node. */
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "timezone: unknown zone '%s'", name);
        }
        return ERR_INVALID;
    }
    pthread_mutex_lock(&cache_lock);
    for (z = cache_head; z != NULL; z = z->next) {
        if (strcmp(z->name, name) == 0) {
            *out = z;
            pthread_mutex_unlock(&cache_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&cache_lock);

    memcpy(path, TZ_DIR "/", sizeof TZ_DIR);
    memcpy(path + sizeof TZ_DIR, name, strlen(name) + 1);
    rv = read_file(path, name, &buf, &len, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (len < 4 || memcmp(buf, "TZif", 4) != 0) {
        /* Not a zone at all (zone.tab, leapseconds, ...). */
        free(buf);
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "timezone: unknown zone '%s'", name);
        }
        return ERR_INVALID;
    }
    rv = tz_load_bytes(buf, len, name, &z, errmsg);
    free(buf);
    if (rv != 0) {
        return rv;
    }

    pthread_mutex_lock(&cache_lock);
    {
        /* Another thread may have loaded it meanwhile: keep the first. */
        struct tz *o;
        for (o = cache_head; o != NULL; o = o->next) {
            if (strcmp(o->name, name) == 0) {
                break;
            }
        }
        if (o != NULL) {
            free(z);
            z = o;
        } else {
            z->next = cache_head;
            cache_head = z;
        }
    }
    pthread_mutex_unlock(&cache_lock);
    *out = z;
    return 0;
}

void tz_cache_clear(void)
{
    struct tz *z;
    pthread_mutex_lock(&cache_lock);
    z = cache_head;
    cache_head = NULL;
    pthread_mutex_unlock(&cache_lock);
    while (z != NULL) {
        struct tz *next = z->next;
        free(z);
        z = next;
    }
}

const char *tz_name(const struct tz *z)
{
    return z->name;
}

/* ---- queries ----------------------------------------------------------- */

/* Index of the last transition <= t, or -1. */
static int64_t last_le(const struct tz *z, int64_t t)
{
    int64_t lo = 0;
    int64_t hi = (int64_t)z->ntrans; /* answer in [lo-1, hi-1] */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (z->trans[mid] <= t) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo - 1;
}

/* True when the footer rule governs instant t. */
static bool rule_applies(const struct tz *z, int64_t t)
{
    if (!z->has_rule) {
        return false;
    }
    return z->ntrans == 0 || t >= z->trans[z->ntrans - 1];
}

int64_t tz_utc_offset_s(const struct tz *z, int64_t utc_s)
{
    int64_t i;
    if (rule_applies(z, utc_s)) {
        if (z->ntrans > 0 && utc_s == z->trans[z->ntrans - 1]) {
            return z->type_off[z->trans_idx[z->ntrans - 1]];
        }
        return rule_offset(&z->rule, utc_s);
    }
    i = last_le(z, utc_s);
    if (i < 0) {
        return z->type_off[0];
    }
    return z->type_off[z->trans_idx[i]];
}

bool tz_next_transition(const struct tz *z, int64_t utc_s, int64_t *at)
{
    int64_t i = last_le(z, utc_s) + 1;
    int64_t floor_t;
    int64_t best = INT64_MAX;
    int64_t y;
    int64_t k;

    if (i < (int64_t)z->ntrans) {
        *at = z->trans[i];
        return true;
    }
    if (!z->has_rule || !z->rule.has_dst) {
        return false;
    }
    utc_s = clamp_s(utc_s);
    floor_t = utc_s;
    if (z->ntrans > 0 && z->trans[z->ntrans - 1] > floor_t) {
        floor_t = z->trans[z->ntrans - 1];
    }
    y = rule_year(&z->rule, utc_s);
    for (k = y - 1; k <= y + 1; k++) {
        int64_t s;
        int64_t e;
        rule_instants(&z->rule, k, &s, &e);
        if (s > floor_t && s < best) {
            best = s;
        }
        if (e > floor_t && e < best) {
            best = e;
        }
    }
    if (best == INT64_MAX) {
        return false;
    }
    *at = best;
    return true;
}

bool tz_prev_transition(const struct tz *z, int64_t utc_s, int64_t *at)
{
    int64_t i;
    if (z->has_rule && z->rule.has_dst && rule_applies(z, utc_s)) {
        int64_t last = z->ntrans > 0 ? z->trans[z->ntrans - 1] : INT64_MIN;
        int64_t best = INT64_MIN;
        int64_t t = clamp_s(utc_s);
        int64_t y = rule_year(&z->rule, t);
        int64_t k;
        for (k = y - 1; k <= y + 1; k++) {
            int64_t s;
            int64_t e;
            rule_instants(&z->rule, k, &s, &e);
            if (s <= t && s > last && s > best) {
                best = s;
            }
            if (e <= t && e > last && e > best) {
                best = e;
            }
        }
        if (best != INT64_MIN) {
            *at = best;
            return true;
        }
    }
    i = last_le(z, utc_s);
    if (i < 0) {
        return false;
    }
    *at = z->trans[i];
    return true;
}
