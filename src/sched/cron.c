/* Cron expression parser and fire-time evaluator (local wall time, DST). */
#include "sched/cron.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

/* One cron field: its name in messages, accepted values, names, and the
 * range that "*" stands for. */
struct field_def
{
    const char *name;
    unsigned lo;
    unsigned hi;      /* highest value accepted in the text */
    unsigned star_hi; /* upper end of '*' and of "a/n" (dow: 6, not 7) */
    const char *const *names;
    unsigned name_base; /* value of names[0] */
    unsigned nnames;
    bool question; /* '?' accepted */
};

static const char *const month_names[] = {"JAN", "FEB", "MAR", "APR",
                                          "MAY", "JUN", "JUL", "AUG",
                                          "SEP", "OCT", "NOV", "DEC"};
static const char *const dow_names[] = {"SUN", "MON", "TUE", "WED",
                                        "THU", "FRI", "SAT"};

enum { F_SEC, F_MIN, F_HOUR, F_DOM, F_MON, F_DOW, F_COUNT };

static const struct field_def fields[F_COUNT] = {
    {"second", 0, 59, 59, NULL, 0, 0, false},
    {"minute", 0, 59, 59, NULL, 0, 0, false},
    {"hour", 0, 23, 23, NULL, 0, 0, false},
    {"day-of-month", 1, 31, 31, NULL, 0, 0, true},
    {"month", 1, 12, 12, month_names, 1, 12, false},
    {"day-of-week", 0, 7, 6, dow_names, 0, 7, true},
};

/* Longest token echoed back in an error message. */
#define SHOW_MAX 16

/* ---- errors ------------------------------------------------------------ */

static int perr(char *errmsg,
                size_t pos,
                const char *field,
                const char *fmt,
                ...) __attribute__((format(printf, 4, 5)));

/* "schedule: position P (field "F"): REASON"; pos is 0-based here. */
static int perr(char *errmsg,
                size_t pos,
                const char *field,
                const char *fmt,
                ...)
{
    char reason[ERRMSG_SIZE];
    va_list ap;

    if (errmsg == NULL) {
        return ERR_INVALID;
    }
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (field != NULL) {
        errmsg_printf(errmsg, "schedule: position %zu (field \"%s\"): %s",
                      pos + 1, field, reason);
    } else {
        errmsg_printf(errmsg, "schedule: position %zu: %s", pos + 1, reason);
    }
    return ERR_INVALID;
}

/* Copy up to SHOW_MAX bytes of s[0..n) for display, escaping the rest. */
static void show(char *out, size_t outsz, const char *s, size_t n)
{
    size_t k = 0;
    size_t i;
    for (i = 0; i < n && i < SHOW_MAX && k + 5 < outsz; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x21 && c < 0x7f) {
            out[k++] = (char)c;
        } else {
            k += (size_t)snprintf(out + k, outsz - k, "\\x%02x", c);
        }
    }
    if (i < n && k + 4 < outsz) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

static int unexpected(char *errmsg,
                      const char *s,
                      size_t pos,
                      const char *field)
{
    char buf[8];
    show(buf, sizeof buf, s + pos, 1);
    return perr(errmsg, pos, field, "unexpected character '%s'", buf);
}

/* ---- field parsing ----------------------------------------------------- */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

static char upper(char c)
{
    return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
}

/* Parse one number or name in s[*p..end) for field f. */
static int parse_value(const char *s,
                       size_t *p,
                       size_t end,
                       const struct field_def *f,
                       unsigned *out,
                       char *errmsg)
{
    size_t start = *p;
    size_t i = start;
    char buf[SHOW_MAX * 4 + 8];

    if (i < end && is_digit(s[i])) {
        unsigned v = 0;
        while (i < end && is_digit(s[i])) {
            if (v < 100000) {
                v = v * 10 + (unsigned)(s[i] - '0');
            }
            i++;
        }
        if (v < f->lo || v > f->hi) {
            show(buf, sizeof buf, s + start, i - start);
            return perr(errmsg, start, f->name, "value %s out of range %u-%u",
                        buf, f->lo, f->hi);
        }
        *out = v;
        *p = i;
        return 0;
    }
    if (i < end && is_alpha(s[i])) {
        unsigned k;
        while (i < end && is_alpha(s[i])) {
            i++;
        }
        show(buf, sizeof buf, s + start, i - start);
        if (f->names == NULL) {
            return perr(errmsg, start, f->name,
                        "names are not allowed here, got '%s'", buf);
        }
        for (k = 0; k < f->nnames && i - start == 3; k++) {
            const char *n = f->names[k];
            if (upper(s[start]) == n[0] && upper(s[start + 1]) == n[1] &&
                upper(s[start + 2]) == n[2]) {
                *out = f->name_base + k;
                *p = i;
                return 0;
            }
        }
        return perr(errmsg, start, f->name, "unknown name '%s'", buf);
    }
    if (i >= end) {
        return perr(errmsg, i, f->name, "expected a value");
    }
    return unexpected(errmsg, s, i, f->name);
}

/* Parse the field text s[start..end) into mask. */
static int parse_field(const char *s,
                       size_t start,
                       size_t end,
                       const struct field_def *f,
                       uint64_t *mask,
                       char *errmsg)
{
    size_t p = start;
    int rv;

    *mask = 0;
    for (;;) {
        size_t elem = p;
        unsigned lo;
        unsigned hi;
        unsigned step = 1;
        unsigned v;
        bool single = false;

        if (p < end && (s[p] == '*' || s[p] == '?')) {
            if (s[p] == '?' && !f->question) {
                return perr(errmsg, p, f->name,
                            "'?' is only allowed in day-of-month and "
                            "day-of-week");
            }
            lo = f->lo;
            hi = f->star_hi;
            p++;
        } else if (p < end && s[p] == ',') {
            return perr(errmsg, p, f->name, "empty list element");
        } else {
            rv = parse_value(s, &p, end, f, &lo, errmsg);
            if (rv != 0) {
                return rv;
            }
            hi = lo;
            single = true;
            if (p < end && s[p] == '-') {
                p++;
                rv = parse_value(s, &p, end, f, &hi, errmsg);
                if (rv != 0) {
                    return rv;
                }
                if (lo > hi) {
                    return perr(errmsg, elem, f->name,
                                "range %u-%u: start is greater than end", lo,
                                hi);
                }
                single = false;
            }
        }
        if (p < end && s[p] == '/') {
            size_t sp = ++p;
            unsigned span = f->hi - f->lo + 1;
            char buf[SHOW_MAX * 4 + 8];
            step = 0;
            if (p >= end || !is_digit(s[p])) {
                if (p >= end) {
                    return perr(errmsg, p, f->name, "expected a step number");
                }
                return unexpected(errmsg, s, p, f->name);
            }
            while (p < end && is_digit(s[p])) {
                if (step < 100000) {
                    step = step * 10 + (unsigned)(s[p] - '0');
                }
                p++;
            }
            if (f == &fields[F_DOW]) {
                span = 7;
            }
            if (step < 1 || step > span) {
                show(buf, sizeof buf, s + sp, p - sp);
                return perr(errmsg, sp, f->name, "step %s out of range 1-%u",
                            buf, span);
            }
            if (single) {
                /* "a/n" means a through the end of the field. */
                hi = lo > f->star_hi ? lo : f->star_hi;
            }
        }
        for (v = lo; v <= hi; v += step) {
            unsigned bit = (f == &fields[F_DOW] && v == 7) ? 0 : v;
            *mask |= (uint64_t)1 << bit;
        }
        if (p >= end) {
            return 0;
        }
        if (s[p] != ',') {
            return unexpected(errmsg, s, p, f->name);
        }
        p++;
        if (p >= end) {
            return perr(errmsg, p, f->name, "empty list element");
        }
    }
}

/* ---- macros ------------------------------------------------------------ */

struct macro
{
    const char *name;
    const char *fields;
};

static const struct macro macros[] = {
    {"@yearly", "0 0 1 1 *"},  {"@annually", "0 0 1 1 *"},
    {"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
    {"@daily", "0 0 * * *"},   {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

static bool word_eq(const char *s, size_t n, const char *word)
{
    size_t i;
    if (strlen(word) != n) {
        return false;
    }
    for (i = 0; i < n; i++) {
        char a = s[i];
        if (a >= 'A' && a <= 'Z') {
            a = (char)(a - 'A' + 'a');
        }
        if (a != word[i]) {
            return false;
        }
    }
    return true;
}

/* Parse the DURATION of "@every DURATION" in s[p..end) into ms. */
static int parse_every(const char *s,
                       size_t p,
                       size_t end,
                       int64_t *out,
                       char *errmsg)
{
    static const char *const f = "every";
    int64_t total = 0;
    size_t start = p;
    char buf[SHOW_MAX * 4 + 8];

    if (p >= end) {
        return perr(errmsg, p, f, "expected a duration such as 30s or 1h30m");
    }
    while (p < end) {
        size_t np = p;
        int64_t n = 0;
        int64_t unit;
        if (!is_digit(s[p])) {
            if (is_space(s[p])) {
                return perr(errmsg, p, f, "unexpected text after duration");
            }
            return unexpected(errmsg, s, p, f);
        }
        while (p < end && is_digit(s[p])) {
            if (n < 100000000) {
                n = n * 10 + (s[p] - '0');
            }
            p++;
        }
        if (p >= end || is_space(s[p])) {
            show(buf, sizeof buf, s + np, p - np);
            return perr(errmsg, p, f,
                        "missing unit after %s (use s, m, h or d)", buf);
        }
        switch (s[p]) {
            case 's':
            case 'S':
                unit = 1;
                break;
            case 'm':
            case 'M':
                unit = 60;
                break;
            case 'h':
            case 'H':
                unit = 3600;
                break;
            case 'd':
            case 'D':
                unit = 86400;
                break;
            default:
                show(buf, sizeof buf, s + p, 1);
                return perr(errmsg, p, f,
                            "unknown unit '%s' (use s, m, h or d)", buf);
        }
        p++;
        total += n * unit;
        if (total > CRON_EVERY_MAX_S) {
            return perr(errmsg, start, f, "duration above the maximum of %dd",
                        CRON_EVERY_MAX_S / 86400);
        }
    }
    if (total < CRON_EVERY_MIN_S) {
        return perr(errmsg, start, f, "duration below the minimum of 1s");
    }
    *out = total * 1000;
    return 0;
}

/* ---- parse ------------------------------------------------------------- */

static int parse_fields(struct cron_expr *e,
                        const char *s,
                        size_t off,
                        size_t len,
                        char *errmsg)
{
    size_t fstart[F_COUNT + 1];
    size_t fend[F_COUNT + 1];
    unsigned n = 0;
    unsigned first;
    size_t p = off;
    unsigned i;
    int rv;

    while (p < len) {
        while (p < len && is_space(s[p])) {
            p++;
        }
        if (p >= len) {
            break;
        }
        if (n < F_COUNT) {
            fstart[n] = p;
        }
        while (p < len && !is_space(s[p])) {
            p++;
        }
        if (n < F_COUNT) {
            fend[n] = p;
        }
        n++;
    }
    if (n != 5 && n != 6) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "schedule: expected 5 or 6 fields, got %u",
                          n);
        }
        return ERR_INVALID;
    }
    first = n == 6 ? F_SEC : F_MIN;
    e->sec = 1; /* second 0 for 5-field expressions */
    for (i = 0; i < n; i++) {
        unsigned fi = first + i;
        uint64_t mask;
        rv = parse_field(s, fstart[i], fend[i], &fields[fi], &mask, errmsg);
        if (rv != 0) {
            return rv;
        }
        switch (fi) {
            case F_SEC:
                e->sec = mask;
                break;
            case F_MIN:
                e->min = mask;
                break;
            case F_HOUR:
                e->hour = (uint32_t)mask;
                break;
            case F_DOM:
                e->dom = (uint32_t)mask;
                if (s[fstart[i]] == '*' || s[fstart[i]] == '?') {
                    e->flags |= CRON_F_DOM_STAR;
                }
                break;
            case F_MON:
                e->month = (uint16_t)mask;
                break;
            default:
                e->dow = (uint8_t)mask;
                if (s[fstart[i]] == '*' || s[fstart[i]] == '?') {
                    e->flags |= CRON_F_DOW_STAR;
                }
                break;
        }
    }
    if (n == 6) {
        e->flags |= CRON_F_SECONDS;
    }
    return 0;
}

static int parse_macro(struct cron_expr *e,
                       const char *s,
                       size_t off,
                       size_t len,
                       char *errmsg)
{
    size_t p = off;
    size_t wend;
    size_t k;
    char buf[SHOW_MAX * 4 + 8];

    while (p < len && !is_space(s[p])) {
        p++;
    }
    wend = p;
    while (p < len && is_space(s[p])) {
        p++;
    }
    if (word_eq(s + off, wend - off, "@every")) {
        int rv;
        size_t dend = p;
        while (dend < len && !is_space(s[dend])) {
            dend++;
        }
        k = dend;
        while (k < len && is_space(s[k])) {
            k++;
        }
        if (k < len) {
            return perr(errmsg, k, "every", "unexpected text after duration");
        }
        rv = parse_every(s, p, dend, &e->every_ms, errmsg);
        if (rv != 0) {
            return rv;
        }
        e->flags |= CRON_F_EVERY;
        return 0;
    }
    for (k = 0; k < sizeof macros / sizeof macros[0]; k++) {
        if (word_eq(s + off, wend - off, macros[k].name)) {
            if (p < len) {
                show(buf, sizeof buf, s + off, wend - off);
                return perr(errmsg, p, NULL, "unexpected text after %s", buf);
            }
            return parse_fields(e, macros[k].fields, 0,
                                strlen(macros[k].fields), errmsg);
        }
    }
    show(buf, sizeof buf, s + off, wend - off);
    return perr(errmsg, off, NULL, "unknown macro '%s'", buf);
}

int cron_parse(struct cron_expr *e,
               const char *expr,
               const char *tz,
               char *errmsg)
{
    struct cron_expr tmp;
    size_t len;
    size_t off = 0;
    int rv;

    if (expr == NULL || expr[0] == '\0') {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "schedule: empty expression");
        }
        return ERR_INVALID;
    }
    len = strnlen(expr, CRON_EXPR_MAX + 1);
    if (len > CRON_EXPR_MAX) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg,
                          "schedule: expression longer than %d characters",
                          CRON_EXPR_MAX);
        }
        return ERR_INVALID;
    }
    while (off < len && is_space(expr[off])) {
        off++;
    }
    if (off == len) {
        if (errmsg != NULL) {
            errmsg_printf(errmsg, "schedule: empty expression");
        }
        return ERR_INVALID;
    }
    memset(&tmp, 0, sizeof tmp);
    if (expr[off] == '@') {
        rv = parse_macro(&tmp, expr, off, len, errmsg);
    } else {
        rv = parse_fields(&tmp, expr, off, len, errmsg);
    }
    if (rv != 0) {
        return rv;
    }
    rv = tz_load(tz, &tmp.tz, errmsg);
    if (rv != 0) {
        return rv;
    }
    memcpy(tmp.tz_name, tz_name(tmp.tz), strlen(tz_name(tmp.tz)) + 1);
    *e = tmp;
    return 0;
}

/* ---- evaluation -------------------------------------------------------- */

#define NONE INT64_MAX

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) {
        q--;
    }
    return q;
}

/* Lowest set bit of mask at index >= from, or -1. */
static int next_bit(uint64_t mask, unsigned from)
{
    if (from >= 64) {
        return -1;
    }
    mask &= ~(uint64_t)0 << from;
    if (mask == 0) {
        return -1;
    }
    return __builtin_ctzll(mask);
}

static bool day_matches(const struct cron_expr *e,
                        int64_t y,
                        unsigned mo,
                        unsigned d)
{
    bool dom_ok = (e->dom >> d) & 1u;
    bool dow_ok = (e->dow >> tz_weekday(tz_days_from_civil(y, mo, d))) & 1u;
    if ((e->flags & (CRON_F_DOM_STAR | CRON_F_DOW_STAR)) != 0) {
        return dom_ok && dow_ok;
    }
    /* Vixie: both fields restricted, either one may match. */
    return dom_ok || dow_ok;
}

/* First local wall time (seconds on the local calendar counted like Unix
 * time) >= w that matches the fields, or NONE after year ylimit. */
static int64_t next_wall(const struct cron_expr *e, int64_t w, int64_t ylimit)
{
    int64_t days = floor_div(w, 86400);
    int64_t sod = w - days * 86400;
    int64_t y;
    unsigned mo;
    unsigned d;
    unsigned h = (unsigned)(sod / 3600);
    unsigned mi = (unsigned)(sod / 60 % 60);
    unsigned s = (unsigned)(sod % 60);
    int b;

    tz_civil_from_days(days, &y, &mo, &d);
    for (;;) {
        if (s >= 60) {
            s = 0;
            mi++;
        }
        if (mi >= 60) {
            mi = 0;
            h++;
        }
        if (h >= 24) {
            h = 0;
            d++;
        }
        if (d > tz_days_in_month(y, mo)) {
            d = 1;
            mo++;
        }
        if (mo > 12) {
            mo = 1;
            y++;
        }
        if (y > ylimit) {
            return NONE;
        }
        if (((e->month >> mo) & 1u) == 0) {
            b = next_bit(e->month, mo);
            if (b < 0) {
                y++;
                b = next_bit(e->month, 1);
            }
            mo = (unsigned)b;
            d = 1;
            h = mi = s = 0;
            continue;
        }
        if (!day_matches(e, y, mo, d)) {
            if (e->dow == 0x7f && (e->flags & CRON_F_DOW_STAR) != 0) {
                /* Only the day of month matters (and d is not in it): jump
                 * to its next value. */
                b = next_bit(e->dom, d + 1);
                d = b < 0 ? 32 : (unsigned)b;
            } else {
                d++;
            }
            h = mi = s = 0;
            continue;
        }
        if (((e->hour >> h) & 1u) == 0) {
            b = next_bit(e->hour, h);
            h = b < 0 ? 24 : (unsigned)b;
            mi = s = 0;
            continue;
        }
        if (((e->min >> mi) & 1u) == 0) {
            b = next_bit(e->min, mi);
            mi = b < 0 ? 60 : (unsigned)b;
            s = 0;
            continue;
        }
        if (((e->sec >> s) & 1u) == 0) {
            b = next_bit(e->sec, s);
            s = b < 0 ? 60 : (unsigned)b;
            continue;
        }
        return tz_days_from_civil(y, mo, d) * 86400 + (int64_t)h * 3600 +
               (int64_t)mi * 60 + s;
    }
}

static int64_t local_year(int64_t w)
{
    int64_t y;
    unsigned m;
    unsigned d;
    tz_civil_from_days(floor_div(w, 86400), &y, &m, &d);
    return y;
}

static int64_t next_every(const struct cron_expr *e, int64_t after_ms)
{
    int64_t n = floor_div(after_ms, e->every_ms) + 1;
    if (n > CRON_MAX_MS / e->every_ms) {
        return INT64_MAX;
    }
    return n * e->every_ms;
}

int64_t cron_next(const struct cron_expr *e, int64_t after_ms)
{
    const struct tz *z = e->tz;
    int64_t t;
    int64_t ylimit;
    unsigned iter;

    if (after_ms >= CRON_MAX_MS) {
        return INT64_MAX;
    }
    if (after_ms < CRON_MIN_MS) {
        after_ms = CRON_MIN_MS;
    }
    if ((e->flags & CRON_F_EVERY) != 0) {
        return e->every_ms > 0 ? next_every(e, after_ms) : INT64_MAX;
    }
    if (z == NULL || e->sec == 0 || e->min == 0 || e->hour == 0 ||
        e->dom == 0 || e->month == 0 || e->dow == 0) {
        return INT64_MAX; /* not a parsed expression */
    }
    t = floor_div(after_ms, 1000) + 1;
    ylimit = local_year(t + tz_utc_offset_s(z, t)) + CRON_HORIZON_YEARS;

    /* Each round either returns or moves t to the next transition, so the
     * bound only guards against pathological zone files. */
    for (iter = 0; iter < 4096; iter++) {
        int64_t off = tz_utc_offset_s(z, t);
        int64_t w = t + off;
        int64_t tr;
        int64_t wm;
        int64_t u;
        bool at_gap = false;

        /* Inside the second pass of a repeated (fall-back) hour: the wall
         * times already seen before the transition do not fire again. At a
         * spring-forward transition instant itself, the skipped wall times
         * are still due (they fire at the transition). */
        if (tz_prev_transition(z, t, &tr)) {
            int64_t prev = tz_utc_offset_s(z, tr - 1);
            if (prev > off && t - tr < prev - off && tr + prev > w) {
                w = tr + prev;
            } else if (prev < off && tr == t) {
                w = t + prev;
                at_gap = true;
            }
        }
        wm = next_wall(e, w, ylimit);
        if (wm == NONE) {
            return INT64_MAX;
        }
        if (at_gap && wm < t + off) {
            return t * 1000;
        }
        u = wm - off;
        if (!tz_next_transition(z, t, &tr) || u < tr) {
            return u * 1000 > CRON_MAX_MS ? INT64_MAX : u * 1000;
        }
        /* The offset changes at tr, before u would be reached. */
        if (tz_utc_offset_s(z, tr) > off && wm < tr + tz_utc_offset_s(z, tr)) {
            /* wm lies in the skipped (spring-forward) gap: fire once, at
             * the transition. */
            return tr * 1000;
        }
        t = tr;
    }
    return INT64_MAX;
}

unsigned cron_between(const struct cron_expr *e,
                      int64_t from_ms,
                      int64_t to_ms,
                      int64_t *out,
                      unsigned max)
{
    unsigned n = 0;
    int64_t t = from_ms;

    while (n < max) {
        int64_t next = cron_next(e, t);
        if (next == INT64_MAX || next > to_ms) {
            break;
        }
        out[n++] = next;
        t = next;
    }
    return n;
}
