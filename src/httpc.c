/* Asynchronous HTTP client: libcurl multi on the libuv loop. */
#include "httpc.h"

#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "log.h"
#include "util.h"

/* One in-flight request. */
struct httpc_req
{
    struct httpc_req *next, *prev;
    struct httpc *c;            /* borrowed */
    CURL *easy;                 /* owned */
    struct curl_slist *headers; /* owned */
    char *send;                 /* owned copy of the request body */
    char *body;                 /* owned response body */
    size_t len, cap;
    int too_large; /* response over the cap */
    httpc_cb cb;
    void *data;
    char errbuf[CURL_ERROR_SIZE];
};

/* One socket curl asked us to watch. */
struct httpc_sock
{
    uv_poll_t poll;
    struct httpc_sock *next, *prev; /* c->socks */
    struct httpc *c;
    curl_socket_t fd;
    int events; /* UV_READABLE/UV_WRITABLE last asked for */
};

static struct httpc_sock **socks_head(struct httpc *c)
{
    return &c->socks;
}

static void check_done(struct httpc *c);
static void close_finish(struct httpc *c);

/* ---- lists --------------------------------------------------------------- */

static void req_unlink(struct httpc *c, struct httpc_req *r)
{
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        c->reqs = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    r->next = r->prev = NULL;
}

static void sock_unlink(struct httpc *c, struct httpc_sock *k)
{
    if (k->prev != NULL) {
        k->prev->next = k->next;
    } else {
        *socks_head(c) = k->next;
    }
    if (k->next != NULL) {
        k->next->prev = k->prev;
    }
    k->next = k->prev = NULL;
}

/* ---- uv handles ---------------------------------------------------------- */

static void handle_closed(struct httpc *c)
{
    if (--c->pending_closes == 0 && c->closing && c->close_cb != NULL) {
        c->close_cb(c);
    }
}

static void sock_closed_cb(uv_handle_t *h)
{
    struct httpc_sock *k = h->data;
    struct httpc *c = k->c;
    free(k);
    handle_closed(c);
}

static void sock_close(struct httpc *c, struct httpc_sock *k)
{
    sock_unlink(c, k);
    uv_poll_stop(&k->poll);
    c->pending_closes++;
    uv_close((uv_handle_t *)&k->poll, sock_closed_cb);
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
    struct httpc_sock *k = p->data;
    struct httpc *c = k->c;
    int flags = 0;
    int running = 0;

    if (status < 0) {
        /* libuv reports POLLERR/POLLHUP as an error and stops the handle.
         * Data (e.g. an early 413) may still be readable: let curl find out
         * by reading and writing, and keep watching. */
        flags = CURL_CSELECT_IN | CURL_CSELECT_OUT;
        uv_poll_start(&k->poll, k->events, poll_cb);
    }
    if (events & UV_READABLE) {
        flags |= CURL_CSELECT_IN;
    }
    if (events & UV_WRITABLE) {
        flags |= CURL_CSELECT_OUT;
    }
    /* k may be closed (REMOVE) during this call: do not touch it after. */
    curl_multi_socket_action(c->multi, k->fd, flags, &running);
    check_done(c);
}

static int socket_cb(CURL *easy,
                     curl_socket_t fd,
                     int what,
                     void *userp,
                     void *socketp)
{
    struct httpc *c = userp;
    struct httpc_sock *k = socketp;
    int events = 0;
    UNUSED(easy);

    if (what == CURL_POLL_REMOVE) {
        if (k != NULL) {
            curl_multi_assign(c->multi, fd, NULL);
            sock_close(c, k);
        }
        return 0;
    }
    if (k == NULL) {
        k = calloc(1, sizeof *k);
        if (k == NULL) {
            LOGE("httpc", "out of memory watching a socket");
            return -1;
        }
        if (uv_poll_init_socket(c->loop, &k->poll, fd) != 0) {
            LOGE("httpc", "uv_poll_init_socket failed for fd %d", (int)fd);
            free(k);
            return -1;
        }
        k->c = c;
        k->fd = fd;
        k->poll.data = k;
        k->next = *socks_head(c);
        if (k->next != NULL) {
            k->next->prev = k;
        }
        *socks_head(c) = k;
        curl_multi_assign(c->multi, fd, k);
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) {
        events |= UV_READABLE;
    }
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) {
        events |= UV_WRITABLE;
    }
    k->events = events;
    uv_poll_start(&k->poll, events, poll_cb);
    return 0;
}

static void timeout_cb(uv_timer_t *t)
{
    struct httpc *c = t->data;
    int running = 0;

    if (c->multi == NULL) {
        return;
    }
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct httpc *c = userp;
    UNUSED(multi);

    if (timeout_ms < 0) {
        uv_timer_stop(&c->timer);
    } else {
        /* 0 means "now": still go through the loop (no re-entrancy). */
        uv_timer_start(&c->timer, timeout_cb, (uint64_t)timeout_ms, 0);
    }
    return 0;
}

/* ---- requests ------------------------------------------------------------ */

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct httpc_req *r = userdata;
    size_t n = size * nmemb;

    if (n > r->c->max_body || r->len > r->c->max_body - n) {
        r->too_large = 1;
        return 0; /* aborts the transfer */
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        char *nb;
        while (cap < r->len + n + 1) {
            cap *= 2;
        }
        nb = realloc(r->body, cap);
        if (nb == NULL) {
            return 0;
        }
        r->body = nb;
        r->cap = cap;
    }
    memcpy(r->body + r->len, ptr, n);
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

static void req_free(struct httpc_req *r)
{
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->send);
    free(r->body);
    free(r);
}

/* Remove from curl, run the callback, free. */
static void req_finish(struct httpc *c,
                       struct httpc_req *r,
                       CURLcode result,
                       const char *why)
{
    struct httpc_resp resp;
    char *ct = NULL;

    req_unlink(c, r);
    if (c->multi != NULL) {
        curl_multi_remove_handle(c->multi, r->easy);
    }
    memset(&resp, 0, sizeof resp);
    resp.body = r->body != NULL ? r->body : "";
    resp.len = r->len;
    resp.error = "";
    if (why != NULL) {
        resp.error = why;
    } else if (result != CURLE_OK) {
        if (r->too_large) {
            resp.error = "response body too large";
        } else if (r->errbuf[0] != '\0') {
            resp.error = r->errbuf;
        } else {
            resp.error = curl_easy_strerror(result);
        }
    } else {
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &resp.status);
        if (curl_easy_getinfo(r->easy, CURLINFO_CONTENT_TYPE, &ct) ==
            CURLE_OK) {
            resp.content_type = ct;
        }
        if (resp.status == 0) {
            resp.error = "no HTTP status";
        }
    }
    if (resp.status == 0) {
        resp.body = "";
        resp.len = 0;
    }
    c->in_cb++;
    r->cb(&resp, r->data);
    c->in_cb--;
    req_free(r);
}

static void check_done(struct httpc *c)
{
    CURLMsg *msg;
    int left;

    c->in_cb++;
    while (c->multi != NULL && !c->closing &&
           (msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        struct httpc_req *r = NULL;
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        if (r == NULL) {
            continue;
        }
        req_finish(c, r, msg->data.result, NULL);
    }
    c->in_cb--;
    if (c->closing && c->in_cb == 0 && c->multi != NULL) {
        close_finish(c);
    }
}

int httpc_init(struct httpc *c, uv_loop_t *loop)
{
    CURLM *m;

    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->max_body = HTTPC_MAX_BODY;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        return ERR_IO;
    }
    m = curl_multi_init();
    if (m == NULL) {
        return ERR_NOMEM;
    }
    c->multi = m;
    curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(m, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(m, CURLMOPT_TIMERDATA, c);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    return 0;
}

int httpc_request(struct httpc *c,
                  const char *method,
                  const char *url,
                  const void *body,
                  size_t len,
                  const char *const *headers,
                  unsigned timeout_ms,
                  httpc_cb cb,
                  void *data)
{
    struct httpc_req *r;
    int rv;

    if (c->closing || c->multi == NULL) {
        return ERR_SHUTDOWN;
    }
    if (method == NULL || url == NULL || cb == NULL ||
        (body == NULL && len > 0)) {
        return ERR_INVALID;
    }
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        return ERR_NOMEM;
    }
    r->c = c;
    r->cb = cb;
    r->data = data;
    r->easy = curl_easy_init();
    if (r->easy == NULL) {
        rv = ERR_NOMEM;
        goto err_after_alloc;
    }
    r->headers = curl_slist_append(NULL, "Expect:");
    if (r->headers == NULL) {
        rv = ERR_NOMEM;
        goto err_after_easy;
    }
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        struct curl_slist *l = curl_slist_append(r->headers, headers[i]);
        if (l == NULL) {
            rv = ERR_NOMEM;
            goto err_after_easy;
        }
        r->headers = l;
    }
    curl_easy_setopt(r->easy, CURLOPT_URL, url);
    curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
    curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(
        r->easy, CURLOPT_TIMEOUT_MS,
        (long)(timeout_ms ? timeout_ms : HTTPC_DEFAULT_TIMEOUT_MS));
    curl_easy_setopt(r->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    if (strcmp(method, "GET") == 0 && len == 0) {
        curl_easy_setopt(r->easy, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(r->easy, CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(method, "POST") != 0) {
            curl_easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, method);
        }
        if (len > 0 || strcmp(method, "POST") == 0 ||
            strcmp(method, "PUT") == 0) {
            r->send = malloc(len + 1);
            if (r->send == NULL) {
                rv = ERR_NOMEM;
                goto err_after_easy;
            }
            if (len > 0) {
                memcpy(r->send, body, len);
            }
            r->send[len] = '\0';
            curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE,
                             (curl_off_t)len);
            curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->send);
        }
    }
    if (curl_multi_add_handle(c->multi, r->easy) != CURLM_OK) {
        rv = ERR_NOMEM;
        goto err_after_easy;
    }
    r->next = c->reqs;
    if (c->reqs != NULL) {
        c->reqs->prev = r;
    }
    c->reqs = r;
    return 0;

err_after_easy:
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->send);
err_after_alloc:
    free(r);
    return rv;
}

int httpc_inflight(const struct httpc *c)
{
    int n = 0;
    for (const struct httpc_req *r = c->reqs; r != NULL; r = r->next) {
        n++;
    }
    return n;
}

static void timer_closed_cb(uv_handle_t *h)
{
    handle_closed(h->data);
}

/* Free curl and close every handle. Not inside a curl callback. */
static void close_finish(struct httpc *c)
{
    CURLM *m = c->multi;

    c->multi = NULL;
    /* No more callbacks from curl into us while it tears down. */
    curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, NULL);
    curl_multi_cleanup(m);
    while (*socks_head(c) != NULL) {
        sock_close(c, *socks_head(c));
    }
    uv_timer_stop(&c->timer);
    c->pending_closes++;
    uv_close((uv_handle_t *)&c->timer, timer_closed_cb);
}

void httpc_close(struct httpc *c, void (*cb)(struct httpc *c))
{
    struct httpc_req *r;

    if (c->closing) {
        return;
    }
    c->closing = 1;
    c->close_cb = cb;
    while ((r = c->reqs) != NULL) {
        req_finish(c, r, CURLE_OK, "shutdown");
    }
    if (c->in_cb == 0 && c->multi != NULL) {
        close_finish(c);
    }
}
