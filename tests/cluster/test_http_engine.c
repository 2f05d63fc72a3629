/* HTTP engine + httpc on one libuv loop: routes, async replies, errors,
 * limits, streams, disconnects, server close and garbage input. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/http.h"
#include "httpc.h"
#include "lib/harness.h"
#include "util.h"

struct got
{
    int done;
    long status;
    char *body;
    size_t len;
    char ct[128];
    char err[256];
};

struct fx
{
    uv_loop_t loop;
    struct http_server srv;
    struct httpc cli;
    uv_timer_t pulse;
    char base[64];
    uint16_t port;
    int srv_closed;
    int cli_closed;
    int pulse_closed;
    /* parked requests */
    struct http_req *parked[4];
    int nparked;
    int aborts;
    /* streams */
    struct http_stream *stream;
    int stream_closed;
    int stream_lines;
    uv_timer_t stream_timer;
    int stream_timer_on;
    int sse_open;
};

static void pulse_cb(uv_timer_t *t)
{
    UNUSED(t);
}

static void got_cb(struct httpc_resp *resp, void *data)
{
    struct got *g = data;
    g->status = resp->status;
    g->body = malloc(resp->len + 1);
    memcpy(g->body, resp->body, resp->len);
    g->body[resp->len] = '\0';
    g->len = resp->len;
    str_copy(g->ct, sizeof g->ct, resp->content_type ? resp->content_type : "");
    str_copy(g->err, sizeof g->err, resp->error);
    g->done = 1;
}

static void got_free(struct got *g)
{
    free(g->body);
    memset(g, 0, sizeof *g);
}

/* Run the loop until *flag becomes non-zero or ms pass. */
static int run_until(struct fx *f, const int *flag, unsigned ms)
{
    uint64_t deadline = th_now_ms() + ms;
    while (!*flag && th_now_ms() < deadline) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    return *flag;
}

static void request(struct fx *f,
                    const char *method,
                    const char *path,
                    const char *body,
                    const char *const *headers,
                    struct got *g)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", f->base, path);
    memset(g, 0, sizeof *g);
    cr_assert_eq(
        httpc_request(&f->cli, method, url, body, body ? strlen(body) : 0,
                      headers, 5000, got_cb, g),
        0);
}

static void fetch(struct fx *f,
                  const char *method,
                  const char *path,
                  const char *body,
                  const char *const *headers,
                  struct got *g)
{
    request(f, method, path, body, headers, g);
    cr_assert(run_until(f, &g->done, 8000), "%s %s: no answer", method, path);
}

static json_t *body_json(const struct got *g)
{
    json_t *j = json_loads(g->body, 0, NULL);
    cr_assert_not_null(j, "not JSON: %s", g->body);
    return j;
}

static void assert_error(const struct got *g, long status, const char *code)
{
    json_t *j;
    cr_assert_eq(g->status, status, "status %ld != %ld (%s) [%s]", g->status,
                 status, g->body, g->err);
    j = body_json(g);
    cr_assert_str_eq(
        json_string_value(json_object_get(json_object_get(j, "error"), "code")),
        code);
    cr_assert_not_null(json_string_value(
        json_object_get(json_object_get(j, "error"), "message")));
    json_decref(j);
}

/* ---- handlers ---------------------------------------------------------- */

static void h_echo(struct http_req *r, void *data)
{
    const char *q = http_req_query(r, "q");
    const char *flag = http_req_query(r, "flag");
    const char *hdr = http_req_header(r, "x-test");
    UNUSED(data);
    http_reply_json(
        r, 200,
        json_pack("{s:s,s:s,s:s?,s:b,s:s?,s:s}", "id", http_req_param(r, "id"),
                  "name", http_req_param(r, "name"), "q", q, "flag",
                  flag != NULL, "hdr", hdr, "method", http_req_method(r)));
}

static void h_json(struct http_req *r, void *data)
{
    json_t *j = http_req_json_or_reply(r);
    UNUSED(data);
    if (j == NULL) {
        return;
    }
    json_incref(j);
    http_reply_json(r, 201, json_pack("{s:o}", "got", j));
}

static void h_thing(struct http_req *r, void *data)
{
    UNUSED(data);
    http_reply_raw(r, 200, "text/plain", "thing\n", 6);
}

struct async_ctx
{
    uv_timer_t t;
    struct http_req *r;
};

static void async_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

static void async_fire_cb(uv_timer_t *t)
{
    struct async_ctx *a = t->data;
    http_reply_json(a->r, 202, json_pack("{s:b}", "async", 1));
    uv_close((uv_handle_t *)&a->t, async_closed_cb);
}

static void h_async(struct http_req *r, void *data)
{
    struct fx *f = data;
    struct async_ctx *a = calloc(1, sizeof *a);
    a->r = r;
    uv_timer_init(&f->loop, &a->t);
    a->t.data = a;
    uv_timer_start(&a->t, async_fire_cb, 50, 0);
}

static void park_abort_cb(struct http_req *r, void *data)
{
    struct fx *f = data;
    f->aborts++;
    /* Recommended owner pattern: reply (any reply) and drop the pointer. */
    for (int i = 0; i < f->nparked; i++) {
        if (f->parked[i] == r) {
            f->parked[i] = NULL;
        }
    }
    http_reply_error(r, 503, "gone", "client went away");
}

static void h_park(struct http_req *r, void *data)
{
    struct fx *f = data;
    if (f->nparked < 4) {
        f->parked[f->nparked++] = r;
    }
    http_req_on_abort(r, park_abort_cb, f);
}

static void stream_close_cb(struct http_stream *st, void *data)
{
    struct fx *f = data;
    cr_assert_eq(st, f->stream);
    f->stream = NULL;
    f->stream_closed = 1;
}

static void stream_timer_cb(uv_timer_t *t)
{
    struct fx *f = t->data;
    if (f->stream == NULL) {
        uv_timer_stop(t);
        return;
    }
    if (f->stream_lines == 5) {
        http_stream_end(f->stream);
        uv_timer_stop(t);
        return;
    }
    cr_assert_eq(http_stream_printf(f->stream, "line %d\n", f->stream_lines),
                 0);
    f->stream_lines++;
}

static void h_stream(struct http_req *r, void *data)
{
    struct fx *f = data;
    f->stream = http_reply_stream(r, "text/plain");
    cr_assert_not_null(f->stream);
    http_stream_on_close(f->stream, stream_close_cb, f);
    uv_timer_start(&f->stream_timer, stream_timer_cb, 20, 20);
}

static void h_sse(struct http_req *r, void *data)
{
    struct fx *f = data;
    f->stream = http_reply_stream(r, "text/event-stream");
    cr_assert_not_null(f->stream);
    http_stream_on_close(f->stream, stream_close_cb, f);
    http_stream_keepalive(f->stream, 100, ": ping\n\n");
    http_stream_write(f->stream, "data: hello\n\n", 13);
    if (f->srv.cfg.stream_max == 1024) {
        char big[2000];
        memset(big, 'x', sizeof big);
        cr_assert_eq(http_stream_write(f->stream, big, sizeof big), ERR_TOOBIG);
    }
    f->sse_open = 1;
}

static void h_quit(struct http_req *r, void *data)
{
    struct fx *f = data;
    http_server_close(&f->srv, NULL);
    http_reply_json(r, 200, json_pack("{s:b}", "bye", 1));
}

/* ---- fixture ----------------------------------------------------------- */

static void fx_start_cfg(struct fx *f, struct http_server_config *cfg)
{
    char errmsg[ERRMSG_SIZE];
    uint16_t port;

    memset(f, 0, sizeof *f);
    cr_assert_eq(uv_loop_init(&f->loop), 0);
    th_free_ports(&port, 1);
    cfg->bind.port = port;
    cr_assert_eq(http_server_init(&f->srv, &f->loop, cfg), 0);
    cr_assert_eq(http_route(&f->srv, "GET", "/v1/echo/:id/x/:name", h_echo, f),
                 0);
    cr_assert_eq(http_route(&f->srv, "POST", "/v1/json", h_json, f), 0);
    cr_assert_eq(http_route(&f->srv, "GET", "/v1/thing", h_thing, f), 0);
    cr_assert_eq(http_route(&f->srv, "PUT", "/v1/thing", h_thing, f), 0);
    cr_assert_eq(http_route(&f->srv, "GET", "/v1/async", h_async, f), 0);
    cr_assert_eq(http_route(&f->srv, "GET", "/v1/park", h_park, f), 0);
    cr_assert_eq(http_route(&f->srv, "GET", "/v1/stream", h_stream, f), 0);
    cr_assert_eq(http_route(&f->srv, "GET", "/v1/sse", h_sse, f), 0);
    cr_assert_eq(http_route(&f->srv, "POST", "/v1/quit", h_quit, f), 0);
    cr_assert_eq(http_route(&f->srv, "GET", "bad", h_sse, f), ERR_INVALID);
    cr_assert_eq(http_route(&f->srv, "GET", "/a/:", h_sse, f), ERR_INVALID);
    cr_assert_eq(http_server_start(&f->srv, errmsg), 0, "%s", errmsg);
    f->port = http_server_port(&f->srv);
    cr_assert_eq(f->port, port);
    snprintf(f->base, sizeof f->base, "http://127.0.0.1:%u", f->port);
    cr_assert_eq(httpc_init(&f->cli, &f->loop), 0);
    uv_timer_init(&f->loop, &f->pulse);
    uv_timer_start(&f->pulse, pulse_cb, 10, 10);
    uv_timer_init(&f->loop, &f->stream_timer);
    f->stream_timer.data = f;
}

static void fx_start(struct fx *f)
{
    struct http_server_config cfg;
    http_server_config_defaults(&cfg);
    fx_start_cfg(f, &cfg);
}

static void srv_closed_cb(struct http_server *s)
{
    struct fx *f = (struct fx *)((char *)s - offsetof(struct fx, srv));
    f->srv_closed = 1;
}

static void cli_closed_cb(struct httpc *c)
{
    struct fx *f = (struct fx *)((char *)c - offsetof(struct fx, cli));
    f->cli_closed = 1;
}

static void pulse_closed_cb(uv_handle_t *h)
{
    UNUSED(h);
}

static void fx_stop(struct fx *f)
{
    http_server_close(&f->srv, srv_closed_cb);
    httpc_close(&f->cli, cli_closed_cb);
    cr_assert(run_until(f, &f->srv_closed, 5000), "server close");
    cr_assert(run_until(f, &f->cli_closed, 5000), "client close");
    uv_close((uv_handle_t *)&f->pulse, pulse_closed_cb);
    uv_close((uv_handle_t *)&f->stream_timer, pulse_closed_cb);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&f->loop), 0, "handles left on the loop");
}

TestSuite(http_engine, .timeout = 60);

static int count_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++) {
        if (fcntl(fd, F_GETFD) != -1) {
            n++;
        }
    }
    return n;
}

/* ---- tests ------------------------------------------------------------- */

Test(http_engine, routes_params_query_headers)
{
    struct fx f;
    struct got g;
    json_t *j;
    const char *hdrs[] = {"X-Test: yes", NULL};
    int fds;

    /* a first cycle, so that one-time global fds (libuv, curl) exist */
    fx_start(&f);
    fetch(&f, "GET", "/v1/thing", NULL, NULL, &g);
    got_free(&g);
    fx_stop(&f);
    fds = count_fds();
    fx_start(&f);
    fetch(&f, "GET", "/v1/echo/42/x/bob?q=a%20b&flag", NULL, hdrs, &g);
    cr_assert_eq(g.status, 200, "%s", g.body);
    cr_assert_str_eq(g.ct, "application/json");
    j = body_json(&g);
    cr_assert_str_eq(json_string_value(json_object_get(j, "id")), "42");
    cr_assert_str_eq(json_string_value(json_object_get(j, "name")), "bob");
    cr_assert_str_eq(json_string_value(json_object_get(j, "q")), "a b");
    cr_assert(json_is_true(json_object_get(j, "flag")));
    cr_assert_str_eq(json_string_value(json_object_get(j, "hdr")), "yes");
    json_decref(j);
    got_free(&g);

    /* no query, no header */
    fetch(&f, "GET", "/v1/echo/1/x/2", NULL, NULL, &g);
    j = body_json(&g);
    cr_assert(json_is_null(json_object_get(j, "q")));
    cr_assert(json_is_false(json_object_get(j, "flag")));
    json_decref(j);
    got_free(&g);

    /* empty param segment does not match */
    fetch(&f, "GET", "/v1/echo//x/2", NULL, NULL, &g);
    assert_error(&g, 404, "not_found");
    got_free(&g);
    fetch(&f, "GET", "/nope", NULL, NULL, &g);
    assert_error(&g, 404, "not_found");
    got_free(&g);
    fetch(&f, "GET", "/v1/thing/", NULL, NULL, &g);
    assert_error(&g, 404, "not_found");
    got_free(&g);
    fetch(&f, "POST", "/v1/thing", "x", NULL, &g);
    assert_error(&g, 405, "method_not_allowed");
    cr_assert(strstr(g.body, "GET, PUT") != NULL, "%s", g.body);
    got_free(&g);
    fetch(&f, "PUT", "/v1/thing", "x", NULL, &g);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.body, "thing\n");
    got_free(&g);
    fx_stop(&f);
    cr_assert_eq(count_fds(), fds, "file descriptors leaked %d -> %d", fds,
                 count_fds());
}

Test(http_engine, json_bodies)
{
    struct fx f;
    struct got g;
    json_t *j;

    fx_start(&f);
    fetch(&f, "POST", "/v1/json", "{\"a\":[1,2]}", NULL, &g);
    cr_assert_eq(g.status, 201, "%s", g.body);
    j = body_json(&g);
    cr_assert_eq(
        json_array_size(json_object_get(json_object_get(j, "got"), "a")), 2);
    json_decref(j);
    got_free(&g);

    fetch(&f, "POST", "/v1/json", "{\"a\":\n  [1,", NULL, &g);
    assert_error(&g, 400, "bad_request");
    cr_assert(strstr(g.body, "line 2 column") != NULL, "%s", g.body);
    got_free(&g);

    fetch(&f, "POST", "/v1/json", "[1]", NULL, &g);
    assert_error(&g, 400, "bad_request");
    cr_assert(strstr(g.body, "not a JSON object") != NULL, "%s", g.body);
    got_free(&g);

    fetch(&f, "POST", "/v1/json", "", NULL, &g);
    assert_error(&g, 400, "bad_request");
    got_free(&g);
    fx_stop(&f);
}

Test(http_engine, body_and_header_limits)
{
    struct fx f;
    struct got g;
    struct http_server_config cfg;
    char *big;
    char *hdr;
    const char *hdrs[2] = {NULL, NULL};
    const char *chunked[] = {"Transfer-Encoding: chunked", NULL};
    const char *expect[] = {"Expect: 100-continue", NULL};

    http_server_config_defaults(&cfg);
    cfg.max_body = 1024;
    cfg.max_header = 8192;
    fx_start_cfg(&f, &cfg);

    big = malloc(5000);
    memset(big, 'x', 4999);
    big[4999] = '\0';
    /* Content-Length over the cap: early 413 */
    fetch(&f, "POST", "/v1/json", big, NULL, &g);
    assert_error(&g, 413, "too_large");
    got_free(&g);
    /* client waiting for 100-continue: early 413, body never sent */
    fetch(&f, "POST", "/v1/json", big, expect, &g);
    assert_error(&g, 413, "too_large");
    got_free(&g);
    /* chunked upload over the cap: 413 after the body */
    fetch(&f, "POST", "/v1/json", big, chunked, &g);
    assert_error(&g, 413, "too_large");
    got_free(&g);
    /* exactly at the cap is fine (then bad JSON) */
    big[1024] = '\0';
    fetch(&f, "POST", "/v1/json", big, NULL, &g);
    assert_error(&g, 400, "bad_request");
    got_free(&g);
    free(big);

    hdr = malloc(20000);
    strcpy(hdr, "X-Big: ");
    memset(hdr + 7, 'a', 19000);
    hdr[19007] = '\0';
    hdrs[0] = hdr;
    fetch(&f, "GET", "/v1/thing", NULL, hdrs, &g);
    cr_assert(g.status >= 400 || g.status == 0, "huge header got %ld",
              g.status);
    got_free(&g);
    free(hdr);
    /* still serving */
    fetch(&f, "GET", "/v1/thing", NULL, NULL, &g);
    cr_assert_eq(g.status, 200);
    got_free(&g);
    fx_stop(&f);
}

Test(http_engine, async_reply_and_concurrency)
{
    struct fx f;
    struct got g[8];
    int all = 0;

    fx_start(&f);
    for (int i = 0; i < 8; i++) {
        request(&f, "GET", i % 2 ? "/v1/async" : "/v1/echo/1/x/2", NULL, NULL,
                &g[i]);
    }
    for (int i = 0; i < 8; i++) {
        cr_assert(run_until(&f, &g[i].done, 5000));
    }
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(g[i].status, i % 2 ? 202 : 200, "%d: %ld %s", i,
                     g[i].status, g[i].body);
        if (i % 2) {
            cr_assert_str_eq(g[i].body, "{\"async\":true}");
        }
        got_free(&g[i]);
    }
    all = 1;
    cr_assert(all);
    fx_stop(&f);
}

Test(http_engine, streaming_response)
{
    struct fx f;
    struct got g;

    fx_start(&f);
    fetch(&f, "GET", "/v1/stream", NULL, NULL, &g);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.ct, "text/plain");
    cr_assert_str_eq(g.body, "line 0\nline 1\nline 2\nline 3\nline 4\n");
    got_free(&g);
    cr_assert(run_until(&f, &f.stream_closed, 2000), "stream close cb");
    cr_assert_null(f.stream);
    /* keep-alive connection still usable after a chunked stream */
    fetch(&f, "GET", "/v1/thing", NULL, NULL, &g);
    cr_assert_eq(g.status, 200);
    got_free(&g);
    fx_stop(&f);
}

/* ---- raw uv TCP client, to disconnect at will ---------------------------- */

struct rawc
{
    uv_tcp_t tcp;
    uv_connect_t conn;
    uv_write_t w;
    uv_buf_t out;
    char in[65536];
    size_t got;
    int connected;
    int closed;
};

static void rawc_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct rawc *c = h->data;
    UNUSED(hint);
    if (c->got >= sizeof c->in - 1) {
        c->got = 0;
    }
    buf->base = c->in + c->got;
    buf->len = sizeof c->in - 1 - c->got;
}

static void rawc_closed_cb(uv_handle_t *h)
{
    struct rawc *c = h->data;
    c->closed = 1;
}

static void rawc_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct rawc *c = s->data;
    UNUSED(buf);
    if (n > 0) {
        c->got += (size_t)n;
        c->in[c->got] = '\0';
    } else if (n < 0 && !uv_is_closing((uv_handle_t *)s)) {
        uv_close((uv_handle_t *)s, rawc_closed_cb);
    }
}

static void rawc_write_cb(uv_write_t *w, int status)
{
    UNUSED(w);
    UNUSED(status);
}

static void rawc_connect_cb(uv_connect_t *req, int status)
{
    struct rawc *c = req->data;
    cr_assert_eq(status, 0);
    c->connected = 1;
    uv_read_start((uv_stream_t *)&c->tcp, rawc_alloc_cb, rawc_read_cb);
    uv_write(&c->w, (uv_stream_t *)&c->tcp, &c->out, 1, rawc_write_cb);
}

static void rawc_open(struct fx *f, struct rawc *c, const char *text)
{
    struct sockaddr_in sin;
    memset(c, 0, sizeof *c);
    uv_tcp_init(&f->loop, &c->tcp);
    c->tcp.data = c;
    c->conn.data = c;
    c->out = uv_buf_init((char *)(uintptr_t)text, (unsigned)strlen(text));
    uv_ip4_addr("127.0.0.1", f->port, &sin);
    cr_assert_eq(uv_tcp_connect(&c->conn, &c->tcp, (struct sockaddr *)&sin,
                                rawc_connect_cb),
                 0);
}

static void rawc_close(struct rawc *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
        uv_close((uv_handle_t *)&c->tcp, rawc_closed_cb);
    }
}

Test(http_engine, disconnect_parked_request)
{
    struct fx f;
    struct rawc c;
    struct got g;

    fx_start(&f);
    rawc_open(&f, &c, "GET /v1/park HTTP/1.1\r\nHost: x\r\n\r\n");
    cr_assert(run_until(&f, &f.nparked, 3000), "handler not called");
    cr_assert_not_null(f.parked[0]);
    rawc_close(&c);
    cr_assert(run_until(&f, &c.closed, 1000));
    /* the engine notices (peek every 250 ms) and tells the owner, who
     * replies from the abort callback: nothing crashes */
    cr_assert(run_until(&f, &f.aborts, 3000), "abort not detected");
    cr_assert_null(f.parked[0]);
    fetch(&f, "GET", "/v1/thing", NULL, NULL, &g);
    cr_assert_eq(g.status, 200);
    got_free(&g);

    /* a second parked request replied to late, after the disconnect, by an
     * owner without an abort callback: also safe */
    rawc_open(&f, &c, "GET /v1/park HTTP/1.1\r\nHost: x\r\n\r\n");
    {
        uint64_t dl = th_now_ms() + 3000;
        while (f.nparked < 2 && th_now_ms() < dl) {
            uv_run(&f.loop, UV_RUN_ONCE);
        }
    }
    cr_assert_eq(f.nparked, 2);
    http_req_on_abort(f.parked[1], NULL, NULL);
    rawc_close(&c);
    cr_assert(run_until(&f, &c.closed, 1000));
    {
        uint64_t dl = th_now_ms() + 600;
        while (th_now_ms() < dl) {
            uv_run(&f.loop, UV_RUN_ONCE);
        }
    }
    cr_assert(http_req_is_aborted(f.parked[1]));
    http_reply_error(f.parked[1], 500, "late", "late reply");
    f.parked[1] = NULL;
    fetch(&f, "GET", "/v1/thing", NULL, NULL, &g);
    cr_assert_eq(g.status, 200);
    got_free(&g);
    fx_stop(&f);
}

Test(http_engine, disconnect_stream)
{
    struct fx f;
    struct rawc c;
    struct got g;
    struct http_server_config cfg;

    http_server_config_defaults(&cfg);
    cfg.stream_max = 1024;
    fx_start_cfg(&f, &cfg);
    rawc_open(&f, &c, "GET /v1/sse HTTP/1.1\r\nHost: x\r\n\r\n");
    cr_assert(run_until(&f, &f.sse_open, 3000));
    {
        uint64_t dl = th_now_ms() + 3000;
        while (strstr(c.in, ": ping") == NULL && th_now_ms() < dl) {
            uv_run(&f.loop, UV_RUN_ONCE);
        }
    }
    cr_assert(strstr(c.in, "text/event-stream") != NULL, "%s", c.in);
    cr_assert(strstr(c.in, "data: hello") != NULL, "%s", c.in);
    cr_assert(strstr(c.in, ": ping") != NULL, "no keepalive: %s", c.in);
    rawc_close(&c);
    cr_assert(run_until(&f, &f.stream_closed, 3000), "stream not closed");
    cr_assert_null(f.stream);
    fetch(&f, "GET", "/v1/thing", NULL, NULL, &g);
    cr_assert_eq(g.status, 200);
    got_free(&g);
    fx_stop(&f);
}

static void close_order_srv_cb(struct http_server *s)
{
    struct fx *f = (struct fx *)((char *)s - offsetof(struct fx, srv));
    f->srv_closed = 1;
}

Test(http_engine, close_with_parked_and_streams)
{
    struct fx f;
    struct got g[3];

    fx_start(&f);
    request(&f, "GET", "/v1/park", NULL, NULL, &g[0]);
    request(&f, "GET", "/v1/park", NULL, NULL, &g[1]);
    request(&f, "GET", "/v1/sse", NULL, NULL, &g[2]);
    {
        uint64_t dl = th_now_ms() + 3000;
        while ((f.nparked < 2 || !f.sse_open) && th_now_ms() < dl) {
            uv_run(&f.loop, UV_RUN_ONCE);
        }
    }
    cr_assert_eq(f.nparked, 2);
    cr_assert(f.sse_open);
    http_server_close(&f.srv, close_order_srv_cb);
    cr_assert(run_until(&f, &f.srv_closed, 3000));
    cr_assert_eq(f.aborts, 2);
    cr_assert_null(f.parked[0]);
    cr_assert_null(f.parked[1]);
    cr_assert(f.stream_closed);
    for (int i = 0; i < 3; i++) {
        cr_assert(run_until(&f, &g[i].done, 3000));
        got_free(&g[i]);
    }
    fx_stop(&f); /* close again: idempotent */
}

Test(http_engine, close_from_handler)
{
    struct fx f;
    struct got g;

    fx_start(&f);
    request(&f, "POST", "/v1/quit", "", NULL, &g);
    cr_assert(run_until(&f, &g.done, 3000));
    got_free(&g);
    /* the server is gone: new requests fail at the transport level */
    fetch(&f, "GET", "/v1/thing", NULL, NULL, &g);
    cr_assert_eq(g.status, 0);
    got_free(&g);
    f.srv_closed = 1;
    fx_stop(&f); /* second close is a no-op; handles are all closed */
}

Test(http_engine, bind_in_use)
{
    struct fx f;
    struct http_server s2;
    struct http_server_config cfg;
    char errmsg[ERRMSG_SIZE];
    char want[128];
    int closed = 0;

    fx_start(&f);
    http_server_config_defaults(&cfg);
    cfg.bind.port = f.port;
    cr_assert_eq(http_server_init(&s2, &f.loop, &cfg), 0);
    cr_assert_eq(http_server_start(&s2, errmsg), ERR_INUSE);
    snprintf(want, sizeof want,
             "api: bind 127.0.0.1:%u: address already in use", f.port);
    cr_assert_str_eq(errmsg, want);
    http_server_close(&s2, NULL);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    closed = 1;
    cr_assert(closed);
    fx_stop(&f);
}

Test(http_engine, httpc_failures)
{
    struct fx f;
    struct got g;
    uint16_t dead;
    char url[128];

    fx_start(&f);
    /* nobody listens */
    th_free_ports(&dead, 1);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", dead);
    memset(&g, 0, sizeof g);
    cr_assert_eq(
        httpc_request(&f.cli, "GET", url, NULL, 0, NULL, 2000, got_cb, &g), 0);
    cr_assert(run_until(&f, &g.done, 5000));
    cr_assert_eq(g.status, 0);
    cr_assert(g.err[0] != '\0');
    got_free(&g);
    /* response over the cap */
    f.cli.max_body = 4;
    fetch(&f, "GET", "/v1/echo/1/x/2", NULL, NULL, &g);
    cr_assert_eq(g.status, 0);
    cr_assert_str_eq(g.err, "response body too large");
    got_free(&g);
    f.cli.max_body = HTTPC_MAX_BODY;
    /* timeout on a parked request */
    memset(&g, 0, sizeof g);
    snprintf(url, sizeof url, "%s/v1/park", f.base);
    cr_assert_eq(
        httpc_request(&f.cli, "GET", url, NULL, 0, NULL, 200, got_cb, &g), 0);
    cr_assert(run_until(&f, &g.done, 3000));
    cr_assert_eq(g.status, 0);
    got_free(&g);
    /* in flight at close: "shutdown" */
    request(&f, "GET", "/v1/park", NULL, NULL, &g);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    httpc_close(&f.cli, cli_closed_cb);
    cr_assert(g.done);
    cr_assert_eq(g.status, 0);
    cr_assert_str_eq(g.err, "shutdown");
    cr_assert_eq(
        httpc_request(&f.cli, "GET", url, NULL, 0, NULL, 200, got_cb, &g),
        ERR_SHUTDOWN);
    got_free(&g);
    fx_stop(&f);
}

/* ---- garbage over raw blocking sockets, from a forked child ---------- */

static int raw_exchange(uint16_t port,
                        const char *data,
                        size_t len,
                        char *out,
                        size_t out_size)
{
    struct sockaddr_in sin;
    struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
    size_t got = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0) {
        close(fd);
        return -1;
    }
    if (len > 0) {
        (void)send(fd, data, len, MSG_NOSIGNAL);
    }
    shutdown(fd, SHUT_WR);
    for (;;) {
        ssize_t n = recv(fd, out + got, out_size - 1 - got, 0);
        if (n == 0) {
            break;
        }
        if (n < 0) {
            close(fd);
            return errno == EAGAIN || errno == EWOULDBLOCK ? -2 : 0;
        }
        got += (size_t)n;
        if (got >= out_size - 1) {
            got = 0;
        }
    }
    out[got] = '\0';
    close(fd);
    return 0;
}

static const char *const seeds[] = {
    "GET /v1/thing HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /v1/json HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
    "POST /v1/json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    "3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
    "GET /v1/echo/%ff/x/%00?q=%zz&&=&a=b HTTP/1.1\r\nHost: x\r\n\r\n",
    "PUT /v1/thing HTTP/1.0\r\nContent-Length: 99999999999999999999\r\n\r\n",
};

static int fuzz_child(uint16_t port)
{
    struct prng p;
    char buf[4096];
    char out[65536];
    int timeouts = 0;

    prng_seed(&p, 0xC0FFEE);
    for (int i = 0; i < 200; i++) {
        size_t len;
        int kind = (int)prng_below(&p, 3);
        const char *seed = seeds[prng_below(&p, ARRAY_SIZE(seeds))];
        if (kind == 0) {
            /* pure random bytes */
            len = (size_t)prng_below(&p, sizeof buf);
            for (size_t k = 0; k < len; k++) {
                buf[k] = (char)prng_next(&p);
            }
        } else {
            /* mutated valid request */
            len = strlen(seed);
            memcpy(buf, seed, len);
            for (int m = (int)prng_below(&p, 8); m >= 0; m--) {
                size_t at = (size_t)prng_below(&p, len);
                switch (prng_below(&p, 3)) {
                    case 0:
                        buf[at] = (char)prng_next(&p);
                        break;
                    case 1:
                        len = at; /* truncate */
                        break;
                    default:
                        if (len + 64 < sizeof buf) {
                            memset(buf + len, (char)prng_next(&p), 64);
                            len += 64;
                        }
                        break;
                }
                if (len == 0) {
                    break;
                }
            }
        }
        int rv = raw_exchange(port, buf, len, out, sizeof out);
        if (rv == -1) {
            return 10; /* server gone */
        }
        if (rv == -2) {
            fprintf(stderr, "fuzz %d: timeout (kind %d, %zu bytes): %.*s\n", i,
                    kind, len, (int)(len < 300 ? len : 300), buf);
            timeouts++;
        }
    }
    if (timeouts > 0) {
        return 11;
    }
    /* allowed header check + still serving */
    const char *req =
        "POST /v1/thing HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n";
    if (raw_exchange(port, req, strlen(req), out, sizeof out) != 0) {
        return 12;
    }
    if (strstr(out, " 405 ") == NULL ||
        strstr(out, "Allow: GET, PUT") == NULL) {
        return 13;
    }
    return 0;
}

Test(http_engine, garbage_requests)
{
    struct fx f;
    struct got g;
    pid_t pid;
    int status = -1;
    int exited = 0;
    struct http_server_config cfg;

    http_server_config_defaults(&cfg);
    cfg.tick_ms = 20; /* partial requests + FIN are reaped by the tick */
    fx_start_cfg(&f, &cfg);
    pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        _exit(fuzz_child(f.port));
    }
    {
        uint64_t dl = th_now_ms() + 50000;
        while (!exited && th_now_ms() < dl) {
            uv_run(&f.loop, UV_RUN_ONCE);
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = 1;
            }
        }
    }
    if (!exited) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    cr_assert(exited, "fuzz child hung");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "fuzz child status %d", status);
    fetch(&f, "GET", "/v1/echo/1/x/2", NULL, NULL, &g);
    cr_assert_eq(g.status, 200);
    got_free(&g);
    fx_stop(&f);
}
