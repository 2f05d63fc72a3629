/* Blocking HTTP for the client (libcurl easy interface): requests with
 * idempotent retries, error bodies, and the followed log stream. */
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "cli_int.h"
#include "util.h"

#define MAX_BODY (64u << 20) /* largest response body kept */
#define CONNECT_TIMEOUT_S 5L
#define REQUEST_TIMEOUT_S 120L
#define IDEM_RETRIES 3      /* retries after the first attempt */
#define FOLLOW_RECONNECTS 5 /* reconnects without progress */

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

int cli__idem_key(char *buf)
{
    unsigned char raw[16];
    size_t got = 0;

    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n <= 0) {
            return ERR_IO;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof raw; i++) {
        snprintf(buf + 2 * i, 3, "%02x", raw[i]);
    }
    return 0;
}

struct body_buf
{
    char *data; /* owned */
    size_t len, cap;
    bool too_big;
};

static size_t body_write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct body_buf *b = ud;
    size_t n = size * nmemb;

    if (b->len + n > MAX_BODY) {
        b->too_big = true;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap == 0 ? 4096 : b->cap;
        char *p;
        while (ncap < b->len + n + 1) {
            ncap *= 2;
        }
        p = realloc(b->data, ncap);
        if (p == NULL) {
            return 0;
        }
        b->data = p;
        b->cap = ncap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* Common options: no proxies (kiln talks to a node directly), no
 * signals, bounded connect time. */
static CURL *easy_new(const char *url,
                      char *curl_err,
                      struct curl_slist *headers)
{
    CURL *c = curl_easy_init();
    if (c == NULL) {
        return NULL;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "kiln/" KILN_VERSION);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
    return c;
}

static struct curl_slist *add_header(struct curl_slist *list,
                                     const char *h,
                                     bool *failed)
{
    struct curl_slist *n = curl_slist_append(list, h);
    if (n == NULL) {
        *failed = true;
        return list;
    }
    return n;
}

/* One attempt. Returns 0 (resp filled), ERR_UNAVAILABLE (no response,
 * errmsg set), ERR_TOOBIG or ERR_NOMEM. */
static int attempt(struct cli_ctx *ctx,
                   const char *method,
                   const char *url,
                   const char *body,
                   const char *idem_key,
                   struct cli_resp *resp,
                   char *errmsg)
{
    char curl_err[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    struct body_buf b = {0};
    bool failed = false;
    char idem_hdr[80];
    CURL *c;
    CURLcode cc;
    int rv = 0;

    headers = add_header(headers, "Accept: application/json", &failed);
    if (body != NULL) {
        headers =
            add_header(headers, "Content-Type: application/json", &failed);
    }
    if (idem_key != NULL) {
        snprintf(idem_hdr, sizeof idem_hdr, "Idempotency-Key: %s", idem_key);
        headers = add_header(headers, idem_hdr, &failed);
    }
    c = failed ? NULL : easy_new(url, curl_err, headers);
    if (c == NULL) {
        curl_slist_free_all(headers);
        errmsg_printf(errmsg, "out of memory");
        return ERR_NOMEM;
    }
    curl_easy_setopt(c, CURLOPT_TIMEOUT, REQUEST_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, body_write_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    if (strcmp(method, "GET") != 0) {
        if (strcmp(method, "POST") == 0) {
            curl_easy_setopt(c, CURLOPT_POST, 1L);
        } else {
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        }
        if (body != NULL || strcmp(method, "DELETE") != 0) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body != NULL ? body : "");
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE,
                             (long)(body != NULL ? strlen(body) : 0));
        }
    }
    cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        if (b.too_big) {
            errmsg_printf(errmsg, "response from %s too large", ctx->addr);
            rv = ERR_TOOBIG;
        } else {
            errmsg_printf(
                errmsg, "cannot reach kiln at %s: %s", ctx->addr,
                curl_err[0] != '\0' ? curl_err : curl_easy_strerror(cc));
            rv = ERR_UNAVAILABLE;
        }
        free(b.data);
    } else {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
        resp->body = b.data;
        resp->len = b.len;
    }
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);
    return rv;
}

int cli__http(struct cli_ctx *ctx,
              const char *method,
              const char *path,
              const char *body,
              const char *idem_key,
              struct cli_resp *resp,
              char *errmsg)
{
    char url[2048];
    unsigned delay = ctx->backoff_ms;
    int rv;

    memset(resp, 0, sizeof *resp);
    if ((size_t)snprintf(url, sizeof url, "%s%s", ctx->base, path) >=
        sizeof url) {
        errmsg_printf(errmsg, "request path too long");
        return ERR_INVALID;
    }
    for (int i = 0;; i++) {
        rv = attempt(ctx, method, url, body, idem_key, resp, errmsg);
        if (idem_key == NULL || i >= IDEM_RETRIES) {
            break;
        }
        if (rv == 0 && resp->status != 503) {
            break;
        }
        if (rv != 0 && rv != ERR_UNAVAILABLE) {
            break;
        }
        /* Same key on every attempt: the server applies the request at
         * most once even if an earlier attempt did reach it. */
        free(resp->body);
        memset(resp, 0, sizeof *resp);
        sleep_ms(delay);
        delay *= 2;
    }
    return rv;
}

void cli__error_message(const struct cli_resp *resp, char *buf, size_t size)
{
    json_t *root = NULL;
    json_t *err;
    const char *msg = NULL;

    if (resp->body != NULL) {
        root = json_loadb(resp->body, resp->len, 0, NULL);
    }
    err = json_object_get(root, "error");
    if (json_is_object(err)) {
        msg = json_string_value(json_object_get(err, "message"));
        if (msg == NULL) {
            msg = json_string_value(json_object_get(err, "code"));
        }
    } else if (json_is_string(err)) {
        msg = json_string_value(err);
    }
    if (msg != NULL && msg[0] != '\0') {
        snprintf(buf, size, "%s", msg);
    } else {
        /* Not our error shape: show the status and the start of the
         * body's first line. */
        char snippet[120] = "";
        size_t n = 0;
        for (size_t i = 0; resp->body != NULL && i < resp->len &&
                           n + 1 < sizeof snippet && resp->body[i] != '\n';
             i++) {
            unsigned char ch = (unsigned char)resp->body[i];
            snippet[n++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        }
        snippet[n] = '\0';
        snprintf(buf, size, "HTTP %ld%s%s", resp->status, n > 0 ? ": " : "",
                 snippet);
    }
    for (char *p = buf; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20) {
            *p = ' ';
        }
    }
    json_decref(root);
}

/* ------------------------------------------------------------------ */
/* kiln logs -f                                                          */

struct follow
{
    struct cli_ctx *ctx;           /* borrowed */
    struct cli_sse sse;            /* parser for the current connection */
    char last_id[CLI_SSE_ID_SIZE]; /* last id seen on any connection */
    uint64_t printed;              /* data events printed so far */
    uint64_t skip; /* events to drop after an id-less reconnect */
    bool progress; /* this connection delivered an event */
    bool ended;    /* saw "event: end" */
    int status;    /* exit status from the end event */
    int rv;        /* parse error */
    char errmsg[ERRMSG_SIZE];
    long http_status;         /* status of the current response */
    struct body_buf err_body; /* body of a non-200 response */
};

static int event_cb(void *arg,
                    const char *event,
                    const char *data,
                    size_t len,
                    const char *id)
{
    struct follow *f = arg;

    str_copy(f->last_id, sizeof f->last_id, id);
    f->progress = true;
    if (strcmp(event, "end") == 0) {
        int rv = cli__end_status(data, len, &f->status, f->errmsg);
        if (rv != 0) {
            return rv;
        }
        f->ended = true;
        return 1; /* stop: the job is over */
    }
    if (strcmp(event, "message") != 0) {
        return 0; /* unknown event types are for newer clients */
    }
    if (f->skip > 0) {
        f->skip--;
        return 0;
    }
    fwrite(data, 1, len, f->ctx->out);
    fputc('\n', f->ctx->out);
    if (fflush(f->ctx->out) != 0) {
        /* The reader went away (kiln logs -f | head): stop quietly. */
        errmsg_printf(f->errmsg, "cannot write the output");
        return ERR_IO;
    }
    f->printed++;
    return 0;
}

static size_t follow_write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct follow *f = ud;
    size_t n = size * nmemb;
    int rv;

    if (f->http_status != 200) {
        return body_write_cb(ptr, size, nmemb, &f->err_body);
    }
    rv = cli_sse_feed(&f->sse, ptr, n, event_cb, f);
    if (rv == 1 && f->ended) {
        return 0; /* abort the transfer: we have what we need */
    }
    if (rv != 0) {
        f->rv = rv;
        if (f->errmsg[0] == '\0') {
            errmsg_printf(f->errmsg, "malformed event stream: %s", err_str(rv));
        }
        return 0;
    }
    return n;
}

/* Status line seen: remember the code so the body is routed right. */
static size_t follow_header_cb(char *buf, size_t size, size_t nitems, void *ud)
{
    struct follow *f = ud;
    size_t n = size * nitems;
    int code;

    if (n > 9 && strncmp(buf, "HTTP/", 5) == 0) {
        const char *sp = memchr(buf, ' ', n);
        if (sp != NULL && sscanf(sp + 1, "%3d", &code) == 1) {
            f->http_status = code;
        }
    }
    return n;
}

int cli__follow_logs(struct cli_ctx *ctx, const char *job_id)
{
    struct follow f;
    char url[2048];
    char *esc;
    unsigned delay = ctx->backoff_ms;
    int failures = 0;
    int status = 1;
    bool connected = false;
    CURLcode cc = CURLE_OK;
    char curl_err[CURL_ERROR_SIZE];

    memset(&f, 0, sizeof f);
    f.ctx = ctx;
    esc = curl_easy_escape(NULL, job_id, 0);
    if (esc == NULL) {
        fprintf(ctx->err, "kiln: out of memory\n");
        return 1;
    }
    snprintf(url, sizeof url, "%s/v1/jobs/%s/logs?follow=true", ctx->base, esc);
    curl_free(esc);

    for (;;) {
        struct curl_slist *headers = NULL;
        bool failed = false;
        char id_hdr[CLI_SSE_ID_SIZE + 32];
        CURL *c;

        headers = add_header(headers, "Accept: text/event-stream", &failed);
        if (f.last_id[0] != '\0') {
            snprintf(id_hdr, sizeof id_hdr, "Last-Event-ID: %s", f.last_id);
            headers = add_header(headers, id_hdr, &failed);
            f.skip = 0;
        } else {
            /* Without ids the server replays from the start: drop what
             * was already printed. */
            f.skip = f.printed;
        }
        curl_err[0] = '\0';
        c = failed ? NULL : easy_new(url, curl_err, headers);
        if (c == NULL) {
            curl_slist_free_all(headers);
            fprintf(ctx->err, "kiln: out of memory\n");
            return 1;
        }
        cli_sse_init(&f.sse);
        f.progress = false;
        f.http_status = 0;
        f.rv = 0;
        /* The server pings every few seconds; a silent minute is a dead
         * connection. */
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, follow_header_cb);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &f);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, follow_write_cb);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &f);
        cc = curl_easy_perform(c);
        if (f.http_status == 0 && cc == CURLE_OK) {
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f.http_status);
        }
        curl_easy_cleanup(c);
        curl_slist_free_all(headers);
        cli_sse_close(&f.sse);

        if (f.ended) {
            status = f.status;
            break;
        }
        if (f.rv != 0) {
            fprintf(ctx->err, "kiln: %s\n", f.errmsg);
            break;
        }
        if (f.http_status != 0 && f.http_status != 200 &&
            f.http_status != 503) {
            char msg[512];
            struct cli_resp r = {.status = f.http_status,
                                 .body = f.err_body.data,
                                 .len = f.err_body.len};
            cli__error_message(&r, msg, sizeof msg);
            fprintf(ctx->err, "kiln: %s\n", msg);
            break;
        }
        free(f.err_body.data);
        memset(&f.err_body, 0, sizeof f.err_body);
        if (f.http_status != 0) {
            connected = true;
        } else if (!connected) {
            /* Never reached the node at all: fail like other commands. */
            fprintf(ctx->err, "kiln: cannot reach kiln at %s: %s\n", ctx->addr,
                    curl_err[0] != '\0' ? curl_err : curl_easy_strerror(cc));
            break;
        }
        /* Dropped (or 503): reconnect with backoff; progress resets the
         * budget so a long job survives many blips. */
        if (f.progress) {
            failures = 0;
            delay = ctx->backoff_ms;
        }
        if (++failures > FOLLOW_RECONNECTS) {
            if (f.http_status == 503) {
                fprintf(ctx->err,
                        "kiln: log stream of job %s unavailable (HTTP "
                        "503) after %d attempts\n",
                        job_id, FOLLOW_RECONNECTS + 1);
            } else if (f.http_status == 0) {
                fprintf(
                    ctx->err, "kiln: cannot reach kiln at %s: %s\n", ctx->addr,
                    curl_err[0] != '\0' ? curl_err : curl_easy_strerror(cc));
            } else {
                fprintf(ctx->err,
                        "kiln: log stream of job %s ended before the job "
                        "finished; gave up after %d reconnects\n",
                        job_id, FOLLOW_RECONNECTS);
            }
            break;
        }
        sleep_ms(delay);
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
    free(f.err_body.data);
    return status;
}
