/* HTTP server engine: libmicrohttpd in external epoll mode on the node's
 * libuv loop, with a tiny router, JSON replies, async replies and chunked
 * streams. Internal to the api module (used by the route code). See
 * docs/http-engine.md for the threading, suspend/resume and lifetime rules. */
#ifndef KILN_API_HTTP_H_
#define KILN_API_HTTP_H_

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "err.h"
#include "util.h"

struct MHD_Daemon;
struct http_req;
struct http_stream;
struct http_route;
struct http_conn;
struct http_server;

/* Defaults (http_server_config_defaults). */
#define HTTP_DEFAULT_MAX_BODY (1024u * 1024u)        /* 1 MiB */
#define HTTP_DEFAULT_MAX_HEADER (32u * 1024u)        /* per connection */
#define HTTP_DEFAULT_MAX_CONNS 512u                  /* concurrent */
#define HTTP_DEFAULT_TIMEOUT_S 60u                   /* idle connection */
#define HTTP_DEFAULT_STREAM_MAX (4u * 1024u * 1024u) /* per stream buffer */
#define HTTP_SSE_PING_MS 5000u                       /* SSE keepalive */

struct http_server_config
{
    struct addr bind; /* IPv4 address and port (0 = any free port) */
    size_t max_body;  /* request body cap; larger -> 413 too_large */
    unsigned
        max_conns; /* concurrent connections (MHD_OPTION_CONNECTION_LIMIT) */
    unsigned timeout_s; /* idle connection timeout; 0 = never */
    size_t max_header;  /* per-connection memory: request line + headers */
    size_t stream_max;  /* bytes buffered per stream before ERR_TOOBIG */
    unsigned tick_ms;   /* abort/keepalive/EOF checks (default 250) */
};

/* Caller-allocated; treat every field as private. */
struct http_server
{
    uv_loop_t *loop;               /* borrowed, outlives us */
    struct http_server_config cfg; /* copy */
    struct MHD_Daemon *mhd;        /* owned; NULL before start/after close */
    int listen_fd;                 /* owned until MHD takes it */
    uint16_t port;                 /* bound port (after start) */
    uv_poll_t poll;                /* watches MHD's epoll fd */
    uv_timer_t timer;              /* MHD_get_timeout / kick soon */
    uv_timer_t tick;               /* 250 ms: keepalives, abort checks */
    int poll_inited;               /* poll was uv_poll_init'ed */
    int started;                   /* start succeeded */
    int closing;                   /* close called */
    int in_run;                    /* inside MHD_run */
    int kick_pending;              /* resumed during MHD_run */
    int pending_closes;            /* handles still closing */
    void (*close_cb)(struct http_server *s);
    struct http_route *routes;   /* owned list */
    struct http_req *reqs;       /* owned list of live requests */
    struct http_stream *streams; /* owned list of live streams */
    struct http_conn *conns;     /* owned list of open connections */
    char errmsg[ERRMSG_SIZE];
};

/* Fill c with the defaults above and bind 127.0.0.1:0. */
void http_server_config_defaults(struct http_server_config *c);

/* Initialise the server on loop (no socket yet). Returns 0 or ERR_INVALID
 * (zero limits). Afterwards http_server_close must be called. */
int http_server_init(struct http_server *s,
                     uv_loop_t *loop,
                     const struct http_server_config *cfg);

/* Bind, listen and start MHD. Returns 0, ERR_INUSE ("api: bind
 * 127.0.0.1:7070: address already in use" in errmsg, ERRMSG_SIZE bytes),
 * ERR_IO or ERR_NOMEM. On error the caller still calls http_server_close. */
int http_server_start(struct http_server *s, char *errmsg);

/* The bound port (useful with port 0); 0 before a successful start. */
uint16_t http_server_port(const struct http_server *s);

/* Handlers run on the loop thread, inside MHD_run. They must not block. */
typedef void (*http_handler)(struct http_req *req, void *data);

/* Register a route. method: "GET", "POST", ... ; pattern: "/v1/jobs/:id/logs"
 * where ":name" matches one non-empty path segment (at most 8 params).
 * First registered match wins. Returns 0, ERR_INVALID (bad pattern) or
 * ERR_NOMEM. Call before start (or any time on the loop thread). */
int http_route(struct http_server *s,
               const char *method,
               const char *pattern,
               http_handler h,
               void *data);

/* Request accessors. Strings are owned by the request and valid until it is
 * replied to (and, for async replies, until the reply call returns). */
const char *http_req_method(const struct http_req *r);
const char *http_req_path(const struct http_req *r);
/* Path ":name" param, NULL if the route has none of that name. */
const char *http_req_param(const struct http_req *r, const char *name);
/* Query-string value (URL-decoded); "" for "?key"; NULL if absent. */
const char *http_req_query(const struct http_req *r, const char *key);
/* Request header (case-insensitive name), NULL if absent. */
const char *http_req_header(const struct http_req *r, const char *name);
/* Raw body, NUL-terminated; "" with *len = 0 when there is none. len may be
 * NULL. */
const char *http_req_body(const struct http_req *r, size_t *len);
/* Parse the body as a JSON object. Returns a borrowed reference (owned by the
 * request, cached) or NULL with a reason in errmsg (ERRMSG_SIZE bytes):
 * "malformed JSON at line L column C: ..." or "body is not a JSON object". */
json_t *http_req_json(struct http_req *r, char *errmsg);
/* Same, but on failure replies 400 bad_request itself and returns NULL. */
json_t *http_req_json_or_reply(struct http_req *r);
/* User pointer attached to the request (NULL initially). */
void http_req_set_data(struct http_req *r, void *data);
void *http_req_data(const struct http_req *r);

/* Abort notification for requests the handler did not answer at once.
 * Called (at most once) when the engine notices the client has gone away
 * (checked every 250 ms for parked requests) or when the server closes.
 * The request stays valid after the callback: the owner still replies (any
 * reply) to release it, except during http_server_close, where the request
 * is freed right after the callback (the owner must drop its pointer). */
typedef void (*http_abort_cb)(struct http_req *r, void *data);
void http_req_on_abort(struct http_req *r, http_abort_cb cb, void *data);
/* Whether the client is known to have gone away. */
int http_req_is_aborted(const struct http_req *r);

/* Replying: exactly one reply per request, inside the handler or later from
 * any loop callback. After a reply call returns the request pointer is
 * invalid for the caller. A second reply is ignored (logged). */
/* JSON body (reference stolen; NULL -> "{}"). */
void http_reply_json(struct http_req *r, unsigned status, json_t *body);
/* {"error":{"code":code,"message":<formatted>}}. */
void http_reply_error(struct http_req *r,
                      unsigned status,
                      const char *code,
                      const char *fmt,
                      ...) __attribute__((format(printf, 4, 5)));
void http_reply_verror(struct http_req *r,
                       unsigned status,
                       const char *code,
                       const char *fmt,
                       va_list ap) __attribute__((format(printf, 4, 0)));
/* Raw bytes (copied). content_type may be NULL. */
void http_reply_raw(struct http_req *r,
                    unsigned status,
                    const char *content_type,
                    const void *data,
                    size_t len);
/* Add a response header; call before the reply. Copied. */
void http_reply_header(struct http_req *r, const char *name, const char *value);

/* Streaming reply (200, chunked). Returns the stream or NULL (ERR_NOMEM or
 * already replied; then a 500 is sent if possible). text/event-stream gets
 * "Cache-Control: no-cache" and a ": ping\n\n" keepalive every 5 s by
 * default. After this the request pointer is invalid for the caller; the
 * stream pointer is valid until its close callback has run. */
struct http_stream *http_reply_stream(struct http_req *r,
                                      const char *content_type);
/* Queue bytes (copied). Returns 0, ERR_TOOBIG (client too slow: the buffer
 * would exceed stream_max; nothing queued) or ERR_SHUTDOWN (ended or the
 * client is gone). */
int http_stream_write(struct http_stream *st, const void *data, size_t len);
/* printf-style write. */
int http_stream_printf(struct http_stream *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Flush what is buffered, then end the chunked body. Further writes fail
 * with ERR_SHUTDOWN. Idempotent. */
void http_stream_end(struct http_stream *st);
/* Keepalive: when no byte was queued for interval_ms, queue text (copied).
 * interval_ms 0 disables. Write failures on a dead socket close the stream. */
void http_stream_keepalive(struct http_stream *st,
                           unsigned interval_ms,
                           const char *text);
/* Close notification: runs exactly once, when the stream finished (after
 * end and flush), the client went away, or the server closes. The stream
 * is freed right after the callback: the owner must drop its pointer. */
typedef void (*http_stream_close_cb)(struct http_stream *st, void *data);
void http_stream_on_close(struct http_stream *st,
                          http_stream_close_cb cb,
                          void *data);
/* Bytes queued and not yet handed to MHD. */
size_t http_stream_pending(const struct http_stream *st);

/* Stop everything: in the next loop iteration, parked requests get their
 * abort callback and are freed, streams get their close callback, MHD stops,
 * handles close; cb runs after the last uv_close. Safe to call from a handler
 * and without a prior start. Idempotent (the first cb wins). */
typedef void (*http_close_cb)(struct http_server *s);
void http_server_close(struct http_server *s, http_close_cb cb);

#endif /* KILN_API_HTTP_H_ */
