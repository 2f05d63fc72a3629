/* Asynchronous HTTP client: libcurl multi driven by the node's libuv loop
 * (one uv_poll_t per socket, one uv_timer_t). Single-threaded. */
#ifndef KILN_HTTPC_H_
#define KILN_HTTPC_H_

#include <stddef.h>

#include <uv.h>

#include "err.h"

#define HTTPC_MAX_BODY (16u * 1024u * 1024u) /* response body cap */
#define HTTPC_DEFAULT_TIMEOUT_MS 30000u

struct httpc_req;
struct httpc_sock;

/* Result of one request, valid only during the callback. */
struct httpc_resp
{
    long status;              /* HTTP status; 0 = transport failure */
    const char *error;        /* "" on success; else why (e.g. "shutdown") */
    const char *body;         /* NUL-terminated, owned by the engine */
    size_t len;               /* body length */
    const char *content_type; /* NULL if none */
};

typedef void (*httpc_cb)(struct httpc_resp *resp, void *data);

/* Caller-allocated; fields are private. */
struct httpc
{
    uv_loop_t *loop;          /* borrowed, outlives us */
    void *multi;              /* CURLM *, owned */
    uv_timer_t timer;         /* curl's timeout */
    struct httpc_req *reqs;   /* owned list of in-flight requests */
    struct httpc_sock *socks; /* owned list of watched sockets */
    int closing;              /* close called */
    int in_cb;                /* inside a completion pass */
    int pending_closes;       /* uv handles still closing */
    int nsocks;               /* live socket contexts */
    size_t max_body;          /* response cap (HTTPC_MAX_BODY) */
    void (*close_cb)(struct httpc *c);
};

/* Initialise on loop. Returns 0, ERR_NOMEM or ERR_IO (curl). After success
 * httpc_close must be called. */
int httpc_init(struct httpc *c, uv_loop_t *loop);

/* Start a request. method: "GET", "POST", "PUT", "DELETE", "HEAD", ...;
 * url: "http://127.0.0.1:PORT/path"; body/len copied (may be NULL/0);
 * headers: NULL-terminated "K: V" strings (copied; may be NULL);
 * timeout_ms: whole request (0 = HTTPC_DEFAULT_TIMEOUT_MS).
 * cb runs exactly once, later, on the loop (never inside this call), with
 * status 0 and an error text on transport failure, timeout, a response
 * body over the cap, or shutdown. Returns 0, ERR_SHUTDOWN (closing),
 * ERR_INVALID or ERR_NOMEM; on error cb is not called. */
int httpc_request(struct httpc *c,
                  const char *method,
                  const char *url,
                  const void *body,
                  size_t len,
                  const char *const *headers,
                  unsigned timeout_ms,
                  httpc_cb cb,
                  void *data);

/* Number of requests in flight. */
int httpc_inflight(const struct httpc *c);

/* Fail every in-flight request with status 0 "shutdown" (callbacks run
 * inside this call), free curl, close handles; cb runs after the last
 * uv_close. Idempotent. */
void httpc_close(struct httpc *c, void (*cb)(struct httpc *c));

#endif /* KILN_HTTPC_H_ */
