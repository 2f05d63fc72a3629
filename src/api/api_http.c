/* HTTP server engine: libmicrohttpd (external epoll mode) driven by libuv. */
#include "api/http.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <microhttpd.h>

#include "log.h"

#define HTTP_MAX_PARAMS 8
#define HTTP_MAX_SEGS 32
#define HTTP_TICK_MS 250
#define HTTP_SWALLOW_MAX                                 \
    (64u * 1024u * 1024u) /* body bytes ignored past 413 \
                           */

/* One registered route; the pattern is split into segments. */
struct http_route
{
    struct http_route *next;
    char method[16];
    int nseg;
    char *segs[HTTP_MAX_SEGS]; /* owned; ":name" = param */
    http_handler handler;
    void *data;
};

struct http_hdr
{
    struct http_hdr *next;
    char *name;  /* owned */
    char *value; /* owned */
};

/* Every open connection (MHD_OPTION_NOTIFY_CONNECTION), to catch peers
 * that closed while MHD was not looking (see tick_cb). */
struct http_conn
{
    struct http_conn *next, *prev;
    struct MHD_Connection *conn; /* borrowed from MHD */
    struct http_req *req;        /* current request, or NULL */
    int fd;
    int nudges; /* suspend/resume kicks given */
};

enum req_state {
    REQ_RECV = 0, /* receiving headers/body */
    REQ_HANDLING, /* inside the handler */
    REQ_PARKED,   /* handler returned without replying: suspended */
    REQ_READY,    /* reply built while parked, connection resumed */
    REQ_QUEUED,   /* response handed to MHD */
};

struct http_req
{
    struct http_req *next, *prev;
    struct http_server *s;       /* borrowed */
    struct MHD_Connection *conn; /* borrowed from MHD */
    struct http_conn *hc;        /* borrowed, may be NULL */
    enum req_state state;
    int suspended;      /* MHD_suspend_connection active */
    int too_large;      /* body over max_body */
    int aborted;        /* client gone */
    int abort_notified; /* abort_cb ran */
    char method[16];
    char *path;                     /* owned */
    const struct http_route *route; /* matched route */
    char *params[HTTP_MAX_PARAMS];  /* owned values, by route param order */
    const char *param_names[HTTP_MAX_PARAMS]; /* borrowed from route */
    int nparams;
    char *body; /* owned, NUL-terminated */
    size_t body_len, body_cap;
    uint64_t swallowed;        /* ignored upload bytes */
    json_t *json;              /* owned, parsed body cache */
    struct MHD_Response *resp; /* owned until queued */
    unsigned status;
    struct http_hdr *hdrs;      /* owned, extra response headers */
    struct http_stream *stream; /* ref held while both live */
    http_abort_cb abort_cb;
    void *abort_data;
    void *user;
};

struct http_stream
{
    struct http_stream *next, *prev;
    struct http_server *s; /* borrowed */
    struct http_req *req;  /* NULL once the request is freed */
    char *buf;             /* owned */
    size_t off, len, cap;
    int refs;         /* request + MHD response */
    int ended;        /* http_stream_end called */
    int dead;         /* client gone / server closing */
    int closed;       /* close_cb ran */
    int suspended;    /* reader suspended the connection */
    unsigned ka_ms;   /* keepalive interval, 0 = off */
    char *ka_text;    /* owned */
    uint64_t last_ms; /* last queued byte (loop time) */
    http_stream_close_cb close_cb;
    void *close_data;
};

static void kick(struct http_server *s);
static void kick_soon(struct http_server *s);

/* ---- small helpers ---------------------------------------------------- */

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n + 1);
    }
    return p;
}

static void list_unlink_req(struct http_server *s, struct http_req *r)
{
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        s->reqs = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    r->next = r->prev = NULL;
}

static void list_unlink_stream(struct http_server *s, struct http_stream *st)
{
    if (st->prev != NULL) {
        st->prev->next = st->next;
    } else {
        s->streams = st->next;
    }
    if (st->next != NULL) {
        st->next->prev = st->prev;
    }
    st->next = st->prev = NULL;
}

/* Whether the peer of a socket has closed (with nothing unread) or reset. */
static int fd_peer_gone(int fd)
{
    char c;
    ssize_t n;

    n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) {
        return 1;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return 1;
    }
    return 0;
}

static int conn_peer_gone(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci;

    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci != NULL && fd_peer_gone(ci->connect_fd);
}

/* ---- config, init ----------------------------------------------------- */

void http_server_config_defaults(struct http_server_config *c)
{
    memset(c, 0, sizeof *c);
    str_copy(c->bind.host, sizeof c->bind.host, "127.0.0.1");
    c->bind.port = 0;
    c->max_body = HTTP_DEFAULT_MAX_BODY;
    c->max_conns = HTTP_DEFAULT_MAX_CONNS;
    c->timeout_s = HTTP_DEFAULT_TIMEOUT_S;
    c->max_header = HTTP_DEFAULT_MAX_HEADER;
    c->stream_max = HTTP_DEFAULT_STREAM_MAX;
    c->tick_ms = HTTP_TICK_MS;
}

int http_server_init(struct http_server *s,
                     uv_loop_t *loop,
                     const struct http_server_config *cfg)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->cfg = *cfg;
    s->listen_fd = -1;
    if (s->cfg.max_header == 0) {
        s->cfg.max_header = HTTP_DEFAULT_MAX_HEADER;
    }
    if (s->cfg.tick_ms == 0) {
        s->cfg.tick_ms = HTTP_TICK_MS;
    }
    if (s->cfg.stream_max == 0) {
        s->cfg.stream_max = HTTP_DEFAULT_STREAM_MAX;
    }
    if (s->cfg.max_body == 0 || s->cfg.max_conns == 0) {
        errmsg_printf(s->errmsg, "api: max_body and max_conns must be > 0");
        /* still initialise the handles so that close works */
    }
    if (s->cfg.max_header < 2048) {
        s->cfg.max_header = 2048;
    }
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uv_timer_init(loop, &s->tick);
    s->tick.data = s;
    if (s->cfg.max_body == 0 || s->cfg.max_conns == 0) {
        return ERR_INVALID;
    }
    return 0;
}

uint16_t http_server_port(const struct http_server *s)
{
    return s->started ? s->port : 0;
}

/* ---- routing ----------------------------------------------------------- */

int http_route(struct http_server *s,
               const char *method,
               const char *pattern,
               http_handler h,
               void *data)
{
    struct http_route *rt;
    struct http_route **tail;
    const char *p;
    int nparams = 0;

    if (method == NULL || pattern == NULL || h == NULL || pattern[0] != '/' ||
        strlen(method) >= sizeof rt->method) {
        return ERR_INVALID;
    }
    rt = calloc(1, sizeof *rt);
    if (rt == NULL) {
        return ERR_NOMEM;
    }
    str_copy(rt->method, sizeof rt->method, method);
    rt->handler = h;
    rt->data = data;
    p = pattern + 1;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash != NULL ? (size_t)(slash - p) : strlen(p);
        char *seg;
        if (rt->nseg == HTTP_MAX_SEGS) {
            goto err_invalid;
        }
        seg = malloc(n + 1);
        if (seg == NULL) {
            goto err_nomem;
        }
        memcpy(seg, p, n);
        seg[n] = '\0';
        rt->segs[rt->nseg++] = seg;
        if (seg[0] == ':') {
            if (seg[1] == '\0' || ++nparams > HTTP_MAX_PARAMS) {
                goto err_invalid;
            }
        }
        if (slash == NULL) {
            break;
        }
        p = slash + 1;
    }
    for (tail = &s->routes; *tail != NULL; tail = &(*tail)->next) {
    }
    *tail = rt;
    return 0;

err_invalid:
    for (int i = 0; i < rt->nseg; i++) {
        free(rt->segs[i]);
    }
    free(rt);
    return ERR_INVALID;
err_nomem:
    for (int i = 0; i < rt->nseg; i++) {
        free(rt->segs[i]);
    }
    free(rt);
    return ERR_NOMEM;
}

/* Split path ("/a/b") into segments in place; returns count or -1. */
static int split_path(char *path, char **segs)
{
    int n = 0;
    char *p;

    if (path[0] != '/') {
        return -1;
    }
    p = path + 1;
    for (;;) {
        char *slash = strchr(p, '/');
        if (n == HTTP_MAX_SEGS) {
            return -1;
        }
        segs[n++] = p;
        if (slash == NULL) {
            break;
        }
        *slash = '\0';
        p = slash + 1;
    }
    return n;
}

static int route_match(const struct http_route *rt, char **segs, int nseg)
{
    if (rt->nseg != nseg) {
        return 0;
    }
    for (int i = 0; i < nseg; i++) {
        if (rt->segs[i][0] == ':') {
            if (segs[i][0] == '\0') {
                return 0;
            }
        } else if (strcmp(rt->segs[i], segs[i]) != 0) {
            return 0;
        }
    }
    return 1;
}

/* ---- request lifecycle ----------------------------------------------------
 */

static struct http_req *req_new(struct http_server *s,
                                struct MHD_Connection *conn,
                                const char *method,
                                const char *url)
{
    struct http_req *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return NULL;
    }
    r->s = s;
    r->conn = conn;
    str_copy(r->method, sizeof r->method, method);
    r->path = dup_str(url);
    if (r->path == NULL) {
        free(r);
        return NULL;
    }
    {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        if (ci != NULL && ci->socket_context != NULL) {
            r->hc = ci->socket_context;
            r->hc->req = r;
        }
    }
    r->next = s->reqs;
    if (s->reqs != NULL) {
        s->reqs->prev = r;
    }
    s->reqs = r;
    return r;
}

static void stream_unref(struct http_stream *st);

static void stream_notify_close(struct http_stream *st)
{
    if (st->closed) {
        return;
    }
    st->closed = 1;
    if (st->close_cb != NULL) {
        st->close_cb(st, st->close_data);
    }
}

static void req_free(struct http_req *r)
{
    struct http_hdr *h;

    list_unlink_req(r->s, r);
    if (r->hc != NULL && r->hc->req == r) {
        r->hc->req = NULL;
    }
    if (r->stream != NULL) {
        struct http_stream *st = r->stream;
        r->stream = NULL;
        st->req = NULL;
        st->dead = 1;
        stream_notify_close(st);
        stream_unref(st);
    }
    if (r->resp != NULL) {
        MHD_destroy_response(r->resp);
    }
    while ((h = r->hdrs) != NULL) {
        r->hdrs = h->next;
        free(h->name);
        free(h->value);
        free(h);
    }
    for (int i = 0; i < r->nparams; i++) {
        free(r->params[i]);
    }
    json_decref(r->json);
    free(r->body);
    free(r->path);
    free(r);
}

static void req_resume(struct http_req *r)
{
    if (r->suspended) {
        r->suspended = 0;
        MHD_resume_connection(r->conn);
        /* MHD 0.9.75 in external mode: resume wakes nothing. */
        kick_soon(r->s);
    }
}

/* Queue the built response; returns the MHD result for the handler. */
static enum MHD_Result req_queue(struct http_req *r)
{
    enum MHD_Result ret;

    ret = MHD_queue_response(r->conn, r->status, r->resp);
    MHD_destroy_response(r->resp);
    r->resp = NULL;
    r->state = REQ_QUEUED;
    return ret;
}

/* Common tail of every reply: attach headers, park the response. */
static void req_set_response(struct http_req *r,
                             unsigned status,
                             struct MHD_Response *resp)
{
    struct http_hdr *h;

    if (r->resp != NULL || r->state == REQ_QUEUED || r->state == REQ_READY) {
        LOGW("api", "http: second reply to %s %s ignored", r->method, r->path);
        MHD_destroy_response(resp);
        return;
    }
    for (h = r->hdrs; h != NULL; h = h->next) {
        MHD_add_response_header(resp, h->name, h->value);
    }
    r->resp = resp;
    r->status = status;
    if (r->state == REQ_PARKED) {
        r->state = REQ_READY;
        req_resume(r);
    }
}

void http_reply_raw(struct http_req *r,
                    unsigned status,
                    const char *content_type,
                    const void *data,
                    size_t len)
{
    struct MHD_Response *resp;

    resp = MHD_create_response_from_buffer(len, (void *)(uintptr_t)data,
                                           MHD_RESPMEM_MUST_COPY);
    if (resp == NULL) {
        LOGE("api", "http: out of memory building a response");
        /* leave the request parked; server close releases it */
        return;
    }
    if (content_type != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                content_type);
    }
    req_set_response(r, status, resp);
}

void http_reply_json(struct http_req *r, unsigned status, json_t *body)
{
    char *text;

    text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL) {
        const char *empty = "{}";
        http_reply_raw(r, status, "application/json", empty, strlen(empty));
        return;
    }
    http_reply_raw(r, status, "application/json", text, strlen(text));
    free(text);
}

void http_reply_verror(struct http_req *r,
                       unsigned status,
                       const char *code,
                       const char *fmt,
                       va_list ap)
{
    char msg[512];
    json_t *body;

    vsnprintf(msg, sizeof msg, fmt, ap);
    body = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    http_reply_json(r, status, body);
}

void http_reply_error(struct http_req *r,
                      unsigned status,
                      const char *code,
                      const char *fmt,
                      ...)
{
    va_list ap;
    va_start(ap, fmt);
    http_reply_verror(r, status, code, fmt, ap);
    va_end(ap);
}

void http_reply_header(struct http_req *r, const char *name, const char *value)
{
    struct http_hdr *h = calloc(1, sizeof *h);
    if (h == NULL) {
        return;
    }
    h->name = dup_str(name);
    h->value = dup_str(value);
    if (h->name == NULL || h->value == NULL) {
        free(h->name);
        free(h->value);
        free(h);
        return;
    }
    h->next = r->hdrs;
    r->hdrs = h;
}

/* ---- accessors ----------------------------------------------------------- */

const char *http_req_method(const struct http_req *r)
{
    return r->method;
}

const char *http_req_path(const struct http_req *r)
{
    return r->path;
}

const char *http_req_param(const struct http_req *r, const char *name)
{
    for (int i = 0; i < r->nparams; i++) {
        if (strcmp(r->param_names[i], name) == 0) {
            return r->params[i];
        }
    }
    return NULL;
}

const char *http_req_query(const struct http_req *r, const char *key)
{
    const char *value = NULL;
    size_t vlen = 0;

    if (r->conn == NULL) {
        return NULL;
    }
    if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, key,
                                      strlen(key), &value, &vlen) != MHD_YES) {
        return NULL;
    }
    return value != NULL ? value : "";
}

const char *http_req_header(const struct http_req *r, const char *name)
{
    if (r->conn == NULL) {
        return NULL;
    }
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *http_req_body(const struct http_req *r, size_t *len)
{
    if (len != NULL) {
        *len = r->body_len;
    }
    return r->body != NULL ? r->body : "";
}

json_t *http_req_json(struct http_req *r, char *errmsg)
{
    json_error_t jerr;
    json_t *j;

    if (r->json != NULL) {
        return r->json;
    }
    if (r->body_len == 0) {
        errmsg_printf(errmsg, "empty body: a JSON object is required");
        return NULL;
    }
    j = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL) {
        errmsg_printf(errmsg, "malformed JSON at line %d column %d: %s",
                      jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        errmsg_printf(errmsg, "body is not a JSON object");
        return NULL;
    }
    r->json = j;
    return j;
}

json_t *http_req_json_or_reply(struct http_req *r)
{
    char errmsg[ERRMSG_SIZE];
    json_t *j = http_req_json(r, errmsg);
    if (j == NULL) {
        http_reply_error(r, 400, "bad_request", "%s", errmsg);
    }
    return j;
}

void http_req_set_data(struct http_req *r, void *data)
{
    r->user = data;
}

void *http_req_data(const struct http_req *r)
{
    return r->user;
}

void http_req_on_abort(struct http_req *r, http_abort_cb cb, void *data)
{
    r->abort_cb = cb;
    r->abort_data = data;
}

int http_req_is_aborted(const struct http_req *r)
{
    return r->aborted;
}

static void req_notify_abort(struct http_req *r)
{
    r->aborted = 1;
    if (r->abort_notified) {
        return;
    }
    r->abort_notified = 1;
    if (r->abort_cb != NULL) {
        r->abort_cb(r, r->abort_data);
    }
}

/* ---- dispatch ------------------------------------------------------------ */

static void dispatch(struct http_req *r)
{
    struct http_server *s = r->s;
    char *copy;
    char *segs[HTTP_MAX_SEGS];
    int nseg;
    const struct http_route *rt;
    char allow[128];
    size_t allow_len = 0;

    allow[0] = '\0';
    copy = dup_str(r->path);
    if (copy == NULL) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    nseg = split_path(copy, segs);
    if (nseg < 0) {
        free(copy);
        http_reply_error(r, 404, "not_found", "no route for %s %s", r->method,
                         r->path);
        return;
    }
    for (rt = s->routes; rt != NULL; rt = rt->next) {
        if (!route_match(rt, segs, nseg)) {
            continue;
        }
        if (strcmp(rt->method, r->method) == 0) {
            break;
        }
        if (strstr(allow, rt->method) == NULL &&
            allow_len + strlen(rt->method) + 3 < sizeof allow) {
            allow_len +=
                (size_t)snprintf(allow + allow_len, sizeof allow - allow_len,
                                 "%s%s", allow_len > 0 ? ", " : "", rt->method);
        }
    }
    if (rt == NULL) {
        free(copy);
        if (allow_len > 0) {
            http_reply_header(r, "Allow", allow);
            http_reply_error(r, 405, "method_not_allowed",
                             "method %s not allowed on %s (allowed: %s)",
                             r->method, r->path, allow);
        } else {
            http_reply_error(r, 404, "not_found", "no route for %s %s",
                             r->method, r->path);
        }
        return;
    }
    r->route = rt;
    for (int i = 0; i < nseg; i++) {
        if (rt->segs[i][0] != ':') {
            continue;
        }
        r->params[r->nparams] = dup_str(segs[i]);
        if (r->params[r->nparams] == NULL) {
            free(copy);
            http_reply_error(r, 500, "internal", "out of memory");
            return;
        }
        r->param_names[r->nparams] = rt->segs[i] + 1;
        r->nparams++;
    }
    free(copy);
    if (r->too_large) {
        http_reply_error(r, 413, "too_large", "request body exceeds %zu bytes",
                         s->cfg.max_body);
        return;
    }
    r->state = REQ_HANDLING;
    rt->handler(r, rt->data);
}

static int body_append(struct http_req *r, const char *data, size_t n)
{
    size_t max = r->s->cfg.max_body;

    if (n > max || r->body_len > max - n) {
        return ERR_TOOBIG;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        char *nb;
        while (cap < r->body_len + n + 1) {
            cap *= 2;
        }
        if (cap > max + 1) {
            cap = max + 1;
        }
        nb = realloc(r->body, cap);
        if (nb == NULL) {
            return ERR_NOMEM;
        }
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

static enum MHD_Result access_cb(void *cls,
                                 struct MHD_Connection *conn,
                                 const char *url,
                                 const char *method,
                                 const char *version,
                                 const char *upload,
                                 size_t *upload_size,
                                 void **con_cls)
{
    struct http_server *s = cls;
    struct http_req *r = *con_cls;
    UNUSED(version);

    if (r == NULL) {
        const char *cl;
        const char *expect;
        uint64_t v;
        if (s->closing) {
            return MHD_NO;
        }
        r = req_new(s, conn, method, url);
        if (r == NULL) {
            return MHD_NO;
        }
        *con_cls = r;
        cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                         MHD_HTTP_HEADER_CONTENT_LENGTH);
        expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                             MHD_HTTP_HEADER_EXPECT);
        if (cl != NULL && parse_u64(cl, UINT64_MAX, &v) == 0 &&
            v > s->cfg.max_body) {
            r->too_large = 1;
            if (expect != NULL || v > HTTP_SWALLOW_MAX) {
                /* Early 413: the client waits for "100 Continue" (or the
                 * body is absurd): answer now, MHD closes afterwards.
                 * Otherwise the body is read and dropped, and 413 comes
                 * after it: closing while the client still sends would
                 * make the kernel reset the connection and lose the 413. */
                http_reply_error(r, 413, "too_large",
                                 "request body exceeds %zu bytes",
                                 s->cfg.max_body);
                if (r->resp == NULL) {
                    return MHD_NO;
                }
                return req_queue(r);
            }
        }
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (r->state != REQ_RECV || r->too_large) {
            r->swallowed += *upload_size;
            *upload_size = 0;
            return r->swallowed > HTTP_SWALLOW_MAX ? MHD_NO : MHD_YES;
        }
        if (body_append(r, upload, *upload_size) != 0) {
            r->too_large = 1;
            free(r->body);
            r->body = NULL;
            r->body_len = r->body_cap = 0;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    switch (r->state) {
        case REQ_RECV:
            dispatch(r);
            if (r->resp != NULL) {
                return req_queue(r);
            }
            if (r->state == REQ_QUEUED) {
                return MHD_YES;
            }
            /* No reply yet: park until http_reply_* resumes us. */
            r->state = REQ_PARKED;
            r->suspended = 1;
            MHD_suspend_connection(conn);
            return MHD_YES;
        case REQ_READY:
            if (r->resp != NULL) {
                return req_queue(r);
            }
            return MHD_NO;
        case REQ_QUEUED:
            return MHD_YES;
        case REQ_HANDLING:
        case REQ_PARKED:
        default:
            /* Resumed without a reply (server closing): drop the connection. */
            return MHD_NO;
    }
}

static void completed_cb(void *cls,
                         struct MHD_Connection *conn,
                         void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_req *r = *con_cls;
    UNUSED(cls);
    UNUSED(conn);

    if (r == NULL) {
        return;
    }
    *con_cls = NULL;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        r->aborted = 1;
    }
    req_free(r);
}

/* ---- streams ------------------------------------------------------------- */

static void stream_unref(struct http_stream *st)
{
    if (--st->refs > 0) {
        return;
    }
    list_unlink_stream(st->s, st);
    free(st->buf);
    free(st->ka_text);
    free(st);
}

static void stream_wake(struct http_stream *st)
{
    if (st->suspended && st->req != NULL) {
        st->suspended = 0;
        st->req->suspended = 0;
        MHD_resume_connection(st->req->conn);
        kick_soon(st->s);
    }
}

static ssize_t stream_reader_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct http_stream *st = cls;
    size_t pending = st->len - st->off;
    UNUSED(pos);

    if (st->dead) {
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (pending > 0) {
        size_t n = pending < max ? pending : max;
        memcpy(buf, st->buf + st->off, n);
        st->off += n;
        if (st->off == st->len) {
            st->off = st->len = 0;
        }
        return (ssize_t)n;
    }
    if (st->ended) {
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    if (st->req == NULL) {
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    /* Nothing to send: suspend; http_stream_write/end resumes. */
    st->suspended = 1;
    st->req->suspended = 1;
    MHD_suspend_connection(st->req->conn);
    return 0;
}

static void stream_free_cb(void *cls)
{
    struct http_stream *st = cls;
    /* MHD dropped the response: the stream is over either way. */
    st->dead = 1;
    stream_notify_close(st);
    stream_unref(st);
}

struct http_stream *http_reply_stream(struct http_req *r,
                                      const char *content_type)
{
    struct http_server *s = r->s;
    struct http_stream *st;
    struct MHD_Response *resp;

    if (r->resp != NULL || r->stream != NULL || r->state == REQ_QUEUED ||
        r->state == REQ_READY) {
        LOGW("api", "http: stream on an already answered request ignored");
        return NULL;
    }
    st = calloc(1, sizeof *st);
    if (st == NULL) {
        http_reply_error(r, 500, "internal", "out of memory");
        return NULL;
    }
    st->s = s;
    st->req = r;
    st->refs = 2; /* request + MHD response */
    st->last_ms = uv_now(s->loop);
    resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader_cb, st, stream_free_cb);
    if (resp == NULL) {
        free(st);
        http_reply_error(r, 500, "internal", "out of memory");
        return NULL;
    }
    st->next = s->streams;
    if (s->streams != NULL) {
        s->streams->prev = st;
    }
    s->streams = st;
    r->stream = st;
    if (content_type != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                content_type);
        if (strncmp(content_type, "text/event-stream", 17) == 0) {
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL,
                                    "no-cache");
            st->ka_ms = HTTP_SSE_PING_MS;
            st->ka_text = dup_str(": ping\n\n");
            if (st->ka_text == NULL) {
                st->ka_ms = 0;
            }
        }
    }
    req_set_response(r, 200, resp);
    return st;
}

int http_stream_write(struct http_stream *st, const void *data, size_t len)
{
    size_t pending;

    if (st->ended || st->dead || st->req == NULL) {
        return ERR_SHUTDOWN;
    }
    if (len == 0) {
        return 0;
    }
    pending = st->len - st->off;
    if (len > st->s->cfg.stream_max || pending > st->s->cfg.stream_max - len) {
        return ERR_TOOBIG;
    }
    if (st->off > 0 && st->len + len > st->cap) {
        memmove(st->buf, st->buf + st->off, pending);
        st->off = 0;
        st->len = pending;
    }
    if (st->len + len > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        char *nb;
        while (cap < st->len + len) {
            cap *= 2;
        }
        nb = realloc(st->buf, cap);
        if (nb == NULL) {
            return ERR_NOMEM;
        }
        st->buf = nb;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, data, len);
    st->len += len;
    st->last_ms = uv_now(st->s->loop);
    stream_wake(st);
    return 0;
}

int http_stream_printf(struct http_stream *st, const char *fmt, ...)
{
    va_list ap;
    char small[512];
    char *big = NULL;
    int n;
    int rv;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return ERR_INVALID;
    }
    if ((size_t)n < sizeof small) {
        return http_stream_write(st, small, (size_t)n);
    }
    big = malloc((size_t)n + 1);
    if (big == NULL) {
        return ERR_NOMEM;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    rv = http_stream_write(st, big, (size_t)n);
    free(big);
    return rv;
}

void http_stream_end(struct http_stream *st)
{
    if (st->ended) {
        return;
    }
    st->ended = 1;
    stream_wake(st);
}

void http_stream_keepalive(struct http_stream *st,
                           unsigned interval_ms,
                           const char *text)
{
    char *t = NULL;

    if (interval_ms > 0 && text != NULL && text[0] != '\0') {
        t = dup_str(text);
        if (t == NULL) {
            return;
        }
    }
    free(st->ka_text);
    st->ka_text = t;
    st->ka_ms = t != NULL ? interval_ms : 0;
}

void http_stream_on_close(struct http_stream *st,
                          http_stream_close_cb cb,
                          void *data)
{
    st->close_cb = cb;
    st->close_data = data;
}

size_t http_stream_pending(const struct http_stream *st)
{
    return st->len - st->off;
}

/* ---- loop glue ----------------------------------------------------------- */

static void timer_cb(uv_timer_t *t)
{
    kick(t->data);
}

static void kick(struct http_server *s)
{
    MHD_UNSIGNED_LONG_LONG to;

    if (s->mhd == NULL || s->closing) {
        return;
    }
    s->in_run++;
    MHD_run(s->mhd);
    s->in_run--;
    if (s->mhd == NULL || s->closing) {
        return;
    }
    if (s->kick_pending) {
        /* something was resumed during the run */
        s->kick_pending = 0;
        uv_timer_start(&s->timer, timer_cb, 0, 0);
    } else if (MHD_get_timeout(s->mhd, &to) == MHD_YES) {
        if (to > 3600000) {
            to = 3600000;
        }
        uv_timer_start(&s->timer, timer_cb, (uint64_t)to, 0);
    } else {
        uv_timer_stop(&s->timer);
    }
}

/* Run MHD in the next loop iteration; used after every resume (MHD 0.9.75
 * in external mode wakes nothing on resume). Inside MHD_run, kick() arms
 * the 0 ms timer after the run instead. */
static void kick_soon(struct http_server *s)
{
    if (s->mhd == NULL || s->closing) {
        return;
    }
    if (s->in_run > 0) {
        s->kick_pending = 1;
        return;
    }
    uv_timer_start(&s->timer, timer_cb, 0, 0);
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
    UNUSED(status);
    UNUSED(events);
    kick(p->data);
}

static void tick_cb(uv_timer_t *t)
{
    struct http_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    struct http_stream *st;
    struct http_req *r, *next;
    struct http_conn *hc;

    for (st = s->streams; st != NULL; st = st->next) {
        if (st->dead || st->ended || st->req == NULL) {
            continue;
        }
        if (st->suspended && conn_peer_gone(st->req->conn)) {
            st->dead = 1;
            stream_wake(st);
            continue;
        }
        if (st->ka_ms > 0 && now - st->last_ms >= st->ka_ms &&
            st->len == st->off) {
            http_stream_write(st, st->ka_text, strlen(st->ka_text));
        }
    }
    for (r = s->reqs; r != NULL; r = next) {
        next = r->next;
        if (r->state == REQ_PARKED && !r->abort_notified &&
            conn_peer_gone(r->conn)) {
            req_notify_abort(r);
        }
    }
    /* MHD 0.9.75's edge-triggered epoll misses a FIN that arrives together
     * with the last bytes of a partial request: the connection would linger
     * until the idle timeout. A suspend/resume marks it ready again (MHD
     * re-reads resumed connections), so MHD sees the EOF and closes it. */
    for (hc = s->conns; hc != NULL; hc = hc->next) {
        if ((hc->req != NULL && hc->req->suspended) || hc->nudges >= 3 ||
            hc->fd < 0) {
            continue;
        }
        if (fd_peer_gone(hc->fd)) {
            hc->nudges++;
            MHD_suspend_connection(hc->conn);
            MHD_resume_connection(hc->conn);
            kick_soon(s);
        }
    }
}

static void conn_notify_cb(void *cls,
                           struct MHD_Connection *conn,
                           void **socket_context,
                           enum MHD_ConnectionNotificationCode toe)
{
    struct http_server *s = cls;
    struct http_conn *hc = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci;
        hc = calloc(1, sizeof *hc);
        if (hc == NULL) {
            return; /* not tracked: only the idle timeout reaps it */
        }
        hc->conn = conn;
        ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        hc->fd = ci != NULL ? ci->connect_fd : -1;
        hc->next = s->conns;
        if (s->conns != NULL) {
            s->conns->prev = hc;
        }
        s->conns = hc;
        *socket_context = hc;
        return;
    }
    if (hc == NULL) {
        return;
    }
    *socket_context = NULL;
    if (hc->req != NULL) {
        hc->req->hc = NULL;
    }
    if (hc->prev != NULL) {
        hc->prev->next = hc->next;
    } else {
        s->conns = hc->next;
    }
    if (hc->next != NULL) {
        hc->next->prev = hc->prev;
    }
    free(hc);
}

__attribute__((format(printf, 2, 0))) static void mhd_log_cb(void *cls,
                                                             const char *fmt,
                                                             va_list ap)
{
    char line[512];
    size_t n;
    UNUSED(cls);

    vsnprintf(line, sizeof line, fmt, ap);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
        line[--n] = '\0';
    }
    LOGD("api", "mhd: %s", line);
}

/* ---- start / close --------------------------------------------------- */

static int open_listener(struct http_server *s, char *errmsg)
{
    struct sockaddr_in sin;
    socklen_t slen = sizeof sin;
    char name[ADDR_STRLEN];
    int one = 1;
    int fd;

    addr_format(&s->cfg.bind, name);
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(s->cfg.bind.port);
    if (inet_pton(AF_INET, s->cfg.bind.host, &sin.sin_addr) != 1) {
        errmsg_printf(errmsg, "api: bind %s: not an IPv4 address", name);
        return ERR_INVALID;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        errmsg_printf(errmsg, "api: socket: %s",
                      uv_strerror(uv_translate_sys_error(errno)));
        return ERR_IO;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0) {
        int e = errno;
        close(fd);
        errmsg_printf(errmsg, "api: bind %s: %s", name,
                      uv_strerror(uv_translate_sys_error(e)));
        return e == EADDRINUSE ? ERR_INUSE : ERR_IO;
    }
    if (listen(fd, 128) != 0) {
        int e = errno;
        close(fd);
        errmsg_printf(errmsg, "api: listen %s: %s", name,
                      uv_strerror(uv_translate_sys_error(e)));
        return e == EADDRINUSE ? ERR_INUSE : ERR_IO;
    }
    if (getsockname(fd, (struct sockaddr *)&sin, &slen) == 0) {
        s->port = ntohs(sin.sin_port);
    }
    s->listen_fd = fd;
    return 0;
}

int http_server_start(struct http_server *s, char *errmsg)
{
    const union MHD_DaemonInfo *info;
    char name[ADDR_STRLEN];
    int rv;

    if (s->started || s->closing) {
        errmsg_printf(errmsg, "api: server already started or closing");
        return ERR_INVALID;
    }
    rv = open_listener(s, errmsg);
    if (rv != 0) {
        goto err;
    }
    addr_format(&s->cfg.bind, name);
    s->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL,
        NULL, access_cb, s, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)s->listen_fd,
        MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s,
        MHD_OPTION_NOTIFY_CONNECTION, conn_notify_cb, s,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)s->cfg.timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)s->cfg.max_conns,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)s->cfg.max_header,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log_cb, s, MHD_OPTION_END);
    if (s->mhd == NULL) {
        errmsg_printf(errmsg, "api: %s: cannot start libmicrohttpd", name);
        rv = ERR_IO;
        goto err_after_listen;
    }
    /* MHD owns the listening socket from now on (it closes it at stop). */
    s->listen_fd = -1;
    info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL || info->epoll_fd < 0) {
        errmsg_printf(errmsg, "api: %s: no epoll fd from libmicrohttpd", name);
        rv = ERR_IO;
        goto err_after_mhd;
    }
    rv = uv_poll_init(s->loop, &s->poll, info->epoll_fd);
    if (rv != 0) {
        errmsg_printf(errmsg, "api: %s: uv_poll_init: %s", name,
                      uv_strerror(rv));
        rv = ERR_IO;
        goto err_after_mhd;
    }
    s->poll_inited = 1;
    s->poll.data = s;
    uv_poll_start(&s->poll, UV_READABLE, poll_cb);
    uv_timer_start(&s->tick, tick_cb, s->cfg.tick_ms, s->cfg.tick_ms);
    s->started = 1;
    LOGI("api", "http: listening on %s:%u", s->cfg.bind.host,
         (unsigned)s->port);
    kick_soon(s);
    return 0;

err_after_mhd:
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    goto err;
err_after_listen:
    close(s->listen_fd);
    s->listen_fd = -1;
err:
    str_copy(s->errmsg, sizeof s->errmsg, errmsg);
    return rv;
}

static void handle_closed_cb(uv_handle_t *h)
{
    struct http_server *s = h->data;
    if (--s->pending_closes == 0 && s->close_cb != NULL) {
        s->close_cb(s);
    }
}

static void close_step_cb(uv_timer_t *t)
{
    struct http_server *s = t->data;
    struct http_req *r, *rnext;
    struct http_stream *st, *snext;
    struct http_route *rt;

    uv_timer_stop(&s->tick);
    if (s->poll_inited) {
        uv_poll_stop(&s->poll);
    }
    /* Parked requests: tell the owner (it must drop the pointer), then let
     * MHD see them again so that MHD_stop_daemon can close them. */
    for (r = s->reqs; r != NULL; r = rnext) {
        rnext = r->next;
        if (r->state == REQ_PARKED) {
            r->abort_notified = 0;
            req_notify_abort(r);
        }
        if (r->suspended && r->stream == NULL) {
            r->suspended = 0;
            MHD_resume_connection(r->conn);
        }
    }
    for (st = s->streams; st != NULL; st = snext) {
        snext = st->next;
        st->dead = 1;
        stream_notify_close(st);
        if (st->suspended && st->req != NULL) {
            st->suspended = 0;
            st->req->suspended = 0;
            MHD_resume_connection(st->req->conn);
        }
    }
    if (s->mhd != NULL) {
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
    }
    if (s->reqs != NULL || s->streams != NULL) {
        LOGW("api", "http: requests or streams left after MHD stop");
    }
    while ((rt = s->routes) != NULL) {
        s->routes = rt->next;
        for (int i = 0; i < rt->nseg; i++) {
            free(rt->segs[i]);
        }
        free(rt);
    }
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        s->listen_fd = -1;
    }
    s->pending_closes = 2;
    uv_close((uv_handle_t *)&s->timer, handle_closed_cb);
    uv_close((uv_handle_t *)&s->tick, handle_closed_cb);
    if (s->poll_inited) {
        s->pending_closes++;
        uv_close((uv_handle_t *)&s->poll, handle_closed_cb);
    }
}

void http_server_close(struct http_server *s, http_close_cb cb)
{
    if (s->closing) {
        return;
    }
    s->closing = 1;
    s->close_cb = cb;
    s->poll.data = s;
    /* Deferred: this may be called from inside a handler (MHD_run). */
    uv_timer_start(&s->timer, close_step_cb, 0, 0);
}
