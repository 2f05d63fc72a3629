/* Server-Sent Events parser for "kiln logs -f": pure, incremental, any
 * chunking (WHATWG HTML "Parsing an event stream"). */
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli_int.h"
#include "util.h"

void cli_sse_init(struct cli_sse *s)
{
    memset(s, 0, sizeof *s);
}

void cli_sse_close(struct cli_sse *s)
{
    free(s->line);
    s->line = NULL;
    free(s->data);
    s->data = NULL;
    s->line_len = s->line_cap = 0;
    s->data_len = s->data_cap = 0;
}

/* Make room for @extra more bytes plus a NUL in a growable buffer. */
static int reserve(char **buf,
                   size_t *cap,
                   size_t len,
                   size_t extra,
                   size_t max)
{
    size_t want = len + extra + 1;
    size_t ncap;
    char *p;

    if (len + extra > max) {
        return ERR_TOOBIG;
    }
    if (want <= *cap) {
        return 0;
    }
    ncap = *cap == 0 ? 256 : *cap;
    while (ncap < want) {
        ncap *= 2;
    }
    p = realloc(*buf, ncap);
    if (p == NULL) {
        return ERR_NOMEM;
    }
    *buf = p;
    *cap = ncap;
    return 0;
}

static int dispatch(struct cli_sse *s, cli_sse_event_cb cb, void *arg)
{
    int rv = 0;

    if (s->has_data) {
        /* The data buffer holds each value followed by '\n': drop the
         * last one. */
        if (s->data_len > 0) {
            s->data_len--;
        }
        s->data[s->data_len] = '\0';
        rv = cb(arg, s->event[0] != '\0' ? s->event : "message", s->data,
                s->data_len, s->last_id);
    }
    s->data_len = 0;
    s->has_data = false;
    s->event[0] = '\0';
    return rv;
}

/* One complete line (without its terminator) in s->line. */
static int process_line(struct cli_sse *s, cli_sse_event_cb cb, void *arg)
{
    const char *line = s->line;
    size_t len = s->line_len;
    const char *colon;
    size_t name_len;
    const char *value;
    size_t value_len;
    int rv;

    if (len == 0) {
        return dispatch(s, cb, arg);
    }
    if (line[0] == ':') {
        return 0; /* comment, e.g. ": ping" */
    }
    colon = memchr(line, ':', len);
    if (colon != NULL) {
        name_len = (size_t)(colon - line);
        value = colon + 1;
        value_len = len - name_len - 1;
        if (value_len > 0 && value[0] == ' ') {
            value++;
            value_len--;
        }
    } else {
        name_len = len;
        value = line + len;
        value_len = 0;
    }

    if (name_len == 4 && memcmp(line, "data", 4) == 0) {
        rv = reserve(&s->data, &s->data_cap, s->data_len, value_len + 1,
                     CLI_SSE_MAX_DATA);
        if (rv != 0) {
            return rv;
        }
        memcpy(s->data + s->data_len, value, value_len);
        s->data_len += value_len;
        s->data[s->data_len++] = '\n';
        s->data[s->data_len] = '\0';
        s->has_data = true;
    } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
        size_t n =
            value_len < sizeof s->event - 1 ? value_len : sizeof s->event - 1;
        memcpy(s->event, value, n);
        s->event[n] = '\0';
    } else if (name_len == 2 && memcmp(line, "id", 2) == 0) {
        /* An id containing NUL is ignored; an over-long one too (it
         * could not be sent back faithfully). */
        if (memchr(value, '\0', value_len) == NULL &&
            value_len < sizeof s->last_id) {
            memcpy(s->last_id, value, value_len);
            s->last_id[value_len] = '\0';
        }
    } else if (name_len == 5 && memcmp(line, "retry", 5) == 0) {
        uint64_t ms = 0;
        size_t i;
        for (i = 0; i < value_len; i++) {
            if (value[i] < '0' || value[i] > '9' || ms > UINT64_MAX / 10) {
                break;
            }
            ms = ms * 10 + (uint64_t)(value[i] - '0');
        }
        if (value_len > 0 && i == value_len) {
            s->retry_ms = ms;
        }
    }
    /* Any other field is ignored, as the specification says. */
    return 0;
}

int cli_sse_feed(struct cli_sse *s,
                 const char *buf,
                 size_t len,
                 cli_sse_event_cb cb,
                 void *arg)
{
    static const unsigned char bom[3] = {0xEF, 0xBB, 0xBF};
    size_t i = 0;
    int rv;

    /* An optional UTF-8 byte order mark at the very start is skipped. */
    while (!s->started && i < len) {
        if ((unsigned char)buf[i] == bom[s->bom_len]) {
            s->bom_len++;
            i++;
            if (s->bom_len == sizeof bom) {
                s->started = true;
            }
            continue;
        }
        s->started = true;
        if (s->bom_len > 0) {
            /* A partial BOM was real data: put it back. */
            rv = reserve(&s->line, &s->line_cap, 0, s->bom_len,
                         CLI_SSE_MAX_LINE);
            if (rv != 0) {
                return rv;
            }
            memcpy(s->line, bom, s->bom_len);
            s->line_len = s->bom_len;
        }
    }

    while (i < len) {
        const char *start = buf + i;
        size_t n = len - i;
        size_t j;

        if (s->saw_cr) {
            s->saw_cr = false;
            if (buf[i] == '\n') {
                i++; /* second half of a CRLF split across chunks */
                continue;
            }
        }
        for (j = 0; j < n && start[j] != '\n' && start[j] != '\r'; j++) {
        }
        rv = reserve(&s->line, &s->line_cap, s->line_len, j, CLI_SSE_MAX_LINE);
        if (rv != 0) {
            return rv;
        }
        memcpy(s->line + s->line_len, start, j);
        s->line_len += j;
        s->line[s->line_len] = '\0';
        i += j;
        if (j == n) {
            break; /* partial line: wait for more */
        }
        if (start[j] == '\r') {
            s->saw_cr = true;
        }
        i++;
        rv = process_line(s, cb, arg);
        s->line_len = 0;
        if (s->line != NULL) {
            s->line[0] = '\0';
        }
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}

static const struct
{
    const char *name;
    int num;
} signals[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"ILL", SIGILL},
    {"TRAP", SIGTRAP}, {"ABRT", SIGABRT}, {"BUS", SIGBUS},   {"FPE", SIGFPE},
    {"KILL", SIGKILL}, {"USR1", SIGUSR1}, {"SEGV", SIGSEGV}, {"USR2", SIGUSR2},
    {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"TERM", SIGTERM}, {"XCPU", SIGXCPU},
    {"XFSZ", SIGXFSZ}, {"SYS", SIGSYS},
};

static int signal_number(const json_t *v)
{
    const char *name;
    uint64_t n;

    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        return i > 0 && i < 128 ? (int)i : 0;
    }
    if (!json_is_string(v)) {
        return 0;
    }
    name = json_string_value(v);
    if (parse_u64(name, 127, &n) == 0) {
        return (int)n;
    }
    if (strncmp(name, "SIG", 3) == 0) {
        name += 3;
    }
    for (size_t k = 0; k < ARRAY_SIZE(signals); k++) {
        if (strcmp(name, signals[k].name) == 0) {
            return signals[k].num;
        }
    }
    return 0;
}

int cli__end_status(const char *data, size_t len, int *status, char *errmsg)
{
    json_error_t jerr;
    json_t *root;
    json_t *code;
    const char *state;
    int sig;

    root = json_loadb(data, len, 0, &jerr);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        errmsg_printf(errmsg, "malformed end event from server");
        return ERR_MALFORMED;
    }
    code = json_object_get(root, "exit_code");
    sig = signal_number(json_object_get(root, "signal"));
    state = json_string_value(json_object_get(root, "state"));
    if (json_is_integer(code)) {
        json_int_t c = json_integer_value(code);
        *status = c >= 0 && c <= 255 ? (int)c : 1;
    } else if (sig > 0) {
        *status = 128 + sig;
    } else if (state != NULL && strcmp(state, "succeeded") == 0) {
        *status = 0;
    } else {
        *status = 1;
    }
    json_decref(root);
    return 0;
}
