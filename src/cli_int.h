/* Internal interface shared by the client command files (src/cli*.c) and
 * their unit tests: argument parsing, JSON bodies, tables, SSE, HTTP. */
#ifndef KILN_CLI_INT_H_
#define KILN_CLI_INT_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "err.h"

/* ------------------------------------------------------------------ */
/* Server-Sent Events parser (pure, cli_sse.c).                        */

#define CLI_SSE_MAX_LINE (1u << 20) /* longest accepted line */
#define CLI_SSE_MAX_DATA (4u << 20) /* largest accepted event data */
#define CLI_SSE_ID_SIZE 128         /* longest kept event id + NUL */
#define CLI_SSE_EVENT_SIZE 64       /* longest kept event type + NUL */

/* Called once per dispatched event. @event is the event type ("message"
 * when the stream gave none), @data the event's data lines joined by '\n'
 * (NUL-terminated, @len bytes, without a trailing newline), @id the last
 * event id seen so far ("" when none). All pointers are borrowed for the
 * call only. A non-zero return stops cli_sse_feed, which returns it. */
typedef int (*cli_sse_event_cb)(void *arg,
                                const char *event,
                                const char *data,
                                size_t len,
                                const char *id);

struct cli_sse
{
    char *line;                     /* owned: current partial line */
    size_t line_len, line_cap;      /* bytes used / allocated */
    char *data;                     /* owned: data buffer of the event */
    size_t data_len, data_cap;      /* bytes used / allocated */
    char event[CLI_SSE_EVENT_SIZE]; /* event type of the pending event */
    char last_id[CLI_SSE_ID_SIZE];  /* last event id field seen */
    bool saw_cr;                    /* previous byte was CR (CRLF pair) */
    bool started;                   /* past the optional leading BOM */
    size_t bom_len;                 /* BOM bytes matched so far */
    bool has_data;                  /* at least one data field seen */
    uint64_t retry_ms;              /* last "retry:" value, 0 if none */
};

/* Initialise an empty parser. Never fails. */
void cli_sse_init(struct cli_sse *s);

/* Release the parser's buffers. The parser may be re-initialised. */
void cli_sse_close(struct cli_sse *s);

/* Feed @len bytes of the stream; the bytes may split lines, CRLF pairs or
 * fields anywhere. Complete events are passed to @cb in order. Returns 0,
 * the callback's non-zero value, ERR_TOOBIG when a line or an event's data
 * exceeds the limits above, or ERR_NOMEM. After an error the parser must
 * be closed. */
int cli_sse_feed(struct cli_sse *s,
                 const char *buf,
                 size_t len,
                 cli_sse_event_cb cb,
                 void *arg);

/* What a final "end" event means for the exit status: exit_code when it is
 * an integer, 128+signal when "signal" is given (a number or a name such
 * as "SIGKILL"), 0 for "succeeded" and 1 otherwise. Returns 0 and sets
 * *status, or ERR_MALFORMED with errmsg when @data is not a JSON object. */
int cli__end_status(const char *data, size_t len, int *status, char *errmsg);

/* ------------------------------------------------------------------ */
/* Arguments (cli_args.c).                                             */

#define CLI_MAX_POS 2 /* positional arguments a command takes at most */
#define CLI_MAX_KV 64 /* --tag / --env pairs at most */

/* Flags a command accepts (bit set in struct cli_cmd.flags). --addr,
 * --json and --help are accepted by every command. */
enum {
    CLI_F_RETRIES = 1u << 0,
    CLI_F_TIMEOUT = 1u << 1,
    CLI_F_TAG = 1u << 2,
    CLI_F_ENV = 1u << 3,
    CLI_F_STATE = 1u << 4,
    CLI_F_LIMIT = 1u << 5,
    CLI_F_FOLLOW = 1u << 6,
    CLI_F_PIPELINE = 1u << 7,
    CLI_F_SCHEDULE = 1u << 8,
    CLI_F_TIMEZONE = 1u << 9,
    CLI_F_AFTER = 1u << 10,
    CLI_F_BACKOFF = 1u << 11,
    CLI_F_OVERLAP = 1u << 12,
    CLI_F_CATCHUP = 1u << 13,
    CLI_F_TARGETS = 1u << 14,
    CLI_F_PAUSED = 1u << 15,
    CLI_F_NODE = 1u << 16,
    CLI_F_DEADLINE = 1u << 17
};

struct cli_kv
{
    const char *key; /* borrowed from argv: start of "K=V" */
    size_t key_len;  /* bytes before '=' */
    const char *val; /* borrowed from argv: after '=' */
};

/* Everything a command line can carry. Strings are borrowed from argv. */
struct cli_args
{
    const char *addr;             /* --addr, NULL when not given */
    bool json;                    /* --json */
    bool help;                    /* --help / -h: print usage, exit 0 */
    bool follow;                  /* -f / --follow */
    bool paused;                  /* --paused */
    const char *pos[CLI_MAX_POS]; /* positional arguments */
    int npos;
    bool has_retries, has_timeout, has_limit, has_backoff, has_deadline;
    uint64_t retries, timeout_s, limit, backoff_s, deadline_s;
    const char *state, *pipeline, *schedule, *timezone, *after, *overlap,
        *catchup, *targets, *node;
    struct cli_kv tags[CLI_MAX_KV];
    int ntags;
    struct cli_kv env[CLI_MAX_KV];
    int nenv;
    char **cmd; /* borrowed: words after "--" */
    int ncmd;
};

struct cli_ctx;

/* One client command: "verb" or "verb sub". Adding a command is one entry
 * in the table of cli.c. */
struct cli_cmd
{
    const char *verb;    /* argv[1] */
    const char *sub;     /* argv[2] or NULL */
    unsigned flags;      /* CLI_F_* accepted */
    int min_pos;         /* positional arguments required */
    int max_pos;         /* positional arguments allowed */
    int cmd_words;       /* 0: no "-- CMD", 1: "-- CMD [ARG...]" required */
    const char *usage;   /* "kiln verb ..." line(s) */
    const char *summary; /* one line for "kiln help" */
    int (*run)(struct cli_ctx *ctx, const struct cli_args *a);
};

/* The command table (cli.c), terminated by an entry with verb NULL. */
extern const struct cli_cmd cli__cmds[];

/* Find the command for argv (argv[1] verb, argv[2] maybe a sub-verb).
 * Sets *consumed to the words used (1 or 2). NULL when unknown. */
const struct cli_cmd *cli__find(int argc, char **argv, int *consumed);

/* Parse the words after the verb (and sub-verb) for @cmd. Returns 0, or
 * ERR_INVALID with a reason in errmsg (the caller prints usage, exit 2).
 * @a borrows strings from argv. */
int cli__parse(const struct cli_cmd *cmd,
               int argc,
               char **argv,
               struct cli_args *a,
               char *errmsg);

/* The JSON body of "kiln submit" as a malloc'd compact string. Returns 0,
 * ERR_NOMEM or ERR_INVALID. */
int cli__submit_body(const struct cli_args *a, char **out, char *errmsg);

/* The JSON body of "kiln pipeline create" (name is a->pos[0]). */
int cli__pipeline_body(const struct cli_args *a, char **out, char *errmsg);

/* The body of a PUT that toggles "paused" on a pipeline read by GET:
 * server-assigned fields (version, created_at, updated_at) are removed.
 * Returns 0, ERR_MALFORMED when @pipeline is not an object, ERR_NOMEM. */
int cli__pause_body(json_t *pipeline, bool paused, char **out, char *errmsg);

/* ------------------------------------------------------------------ */
/* Rendering (cli_render.c). Every renderer tolerates missing, null and
 * mistyped fields (shown as "-"); it returns ERR_MALFORMED with errmsg
 * only when the top-level shape is wrong.                              */

struct cli_table
{
    size_t ncols;               /* columns */
    const char *const *headers; /* borrowed: ncols header strings */
    char **cells;               /* owned: nrows * ncols strings */
    size_t nrows, cap;          /* rows used / allocated */
};

int cli__table_init(struct cli_table *t,
                    const char *const *headers,
                    size_t ncols);
/* Copy one row of ncols cells (NULL cells print as "-"). Control bytes
 * are replaced by '?'. Returns 0 or ERR_NOMEM. */
int cli__table_add(struct cli_table *t, const char *const *row);
/* Left-aligned columns separated by two spaces, no trailing blanks. */
void cli__table_print(const struct cli_table *t, FILE *out);
void cli__table_free(struct cli_table *t);

/* A JSON value as a table cell into buf: strings as-is, integers, reals,
 * true/false as "yes"/"no", null or missing as "-", arrays of scalars
 * joined with @sep, anything else as compact JSON. */
void cli__cell(const json_t *v, const char *sep, char *buf, size_t size);

int cli__render_nodes(json_t *resp, FILE *out, char *errmsg);
int cli__render_pipelines(json_t *resp, FILE *out, char *errmsg);
int cli__render_jobs(json_t *resp, FILE *out, char *errmsg);
int cli__render_runs(json_t *resp, FILE *out, char *errmsg);
/* "key: value" lines for an object, keys aligned. */
int cli__render_kv(json_t *obj, FILE *out, char *errmsg);

/* ------------------------------------------------------------------ */
/* HTTP (cli_http.c): blocking libcurl calls.                          */

struct cli_ctx
{
    char addr[64];       /* HOST:PORT of the node */
    char base[96];       /* "http://HOST:PORT" */
    bool json;           /* --json: print server JSON */
    FILE *out, *err;     /* borrowed: stdout / stderr */
    unsigned backoff_ms; /* first retry delay (doubles per retry) */
};

struct cli_resp
{
    long status; /* HTTP status; 0 when no response */
    char *body;  /* owned, NUL-terminated (may be NULL) */
    size_t len;  /* body bytes */
};

/* Send one request to ctx->base + @path. @body (JSON, may be NULL) is
 * sent with Content-Type application/json; @idem_key (may be NULL) as
 * Idempotency-Key. When @idem_key is set, a 503 or a failed connection is
 * retried up to 3 times with the same key, with doubling backoff.
 * Returns 0 with *resp filled (any status), or ERR_UNAVAILABLE with
 * "cannot reach kiln at ADDR: ..." in errmsg, ERR_TOOBIG, ERR_NOMEM. The
 * caller frees resp->body. */
int cli__http(struct cli_ctx *ctx,
              const char *method,
              const char *path,
              const char *body,
              const char *idem_key,
              struct cli_resp *resp,
              char *errmsg);

/* 32 lowercase hex characters from getrandom (buf: 33 bytes). */
int cli__idem_key(char *buf);

/* The message for a non-2xx response: the server's error.message, or
 * "HTTP <status>" plus a cleaned snippet of the body. */
void cli__error_message(const struct cli_resp *resp, char *buf, size_t size);

/* Follow a job's output (GET .../logs?follow=true), printing each data
 * line to ctx->out, reconnecting after drops. Returns the process exit
 * status to use (the job's), or 1 with a message printed on failure. */
int cli__follow_logs(struct cli_ctx *ctx, const char *job_id);

#endif /* KILN_CLI_INT_H_ */
