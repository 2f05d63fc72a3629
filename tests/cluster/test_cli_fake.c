/* Cluster tests: the real kiln binary as a client against a tiny fake
 * HTTP server (a forked child with canned routes): log streaming with
 * exit codes and reconnects, error bodies, idempotent submit retries. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/harness.h"

struct fake
{
    pid_t pid;
    uint16_t port;
    char addr[32];
    char dir[512];
    char log[600]; /* one line per request the server saw */
};

/* Per-child route state. */
struct fake_state
{
    int jobs_posts;
    int j2_follows;
};

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) {
                continue;
            }
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void reply(int fd, int status, const char *ctype, const char *body)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d X\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, ctype, strlen(body));
    write_all(fd, head, (size_t)n);
    write_all(fd, body, strlen(body));
}

static void json_reply(int fd, int status, const char *body)
{
    reply(fd, status, "application/json", body);
}

/* An event stream sent in small pieces; close-delimited. */
static void sse(int fd, const char *const *pieces)
{
    const char *head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        "Cache-Control: no-cache\r\nConnection: close\r\n\r\n";
    write_all(fd, head, strlen(head));
    for (int i = 0; pieces[i] != NULL; i++) {
        write_all(fd, pieces[i], strlen(pieces[i]));
        usleep(2000); /* let the pieces arrive as separate reads */
    }
}

/* Header value (case-insensitive name) copied into out, or "". */
static void header(const char *req, const char *name, char *out, size_t size)
{
    size_t n = strlen(name);
    const char *p = strstr(req, "\r\n");
    out[0] = '\0';
    while (p != NULL && p[2] != '\r') {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            const char *e = strstr(v, "\r\n");
            while (*v == ' ') {
                v++;
            }
            snprintf(out, size, "%.*s", (int)(e - v), v);
            return;
        }
        p = strstr(p, "\r\n");
    }
}

static void serve(int fd, struct fake_state *st, const char *log_path)
{
    char req[65536];
    size_t len = 0;
    char method[16], target[1024], idem[128], lei[128], clen[32];
    char *end = NULL;
    const char *body;
    size_t want;
    FILE *logf;

    while (len + 1 < sizeof req) {
        ssize_t r = read(fd, req + len, sizeof req - 1 - len);
        if (r <= 0) {
            return;
        }
        len += (size_t)r;
        req[len] = '\0';
        end = strstr(req, "\r\n\r\n");
        if (end != NULL) {
            break;
        }
    }
    if (end == NULL || sscanf(req, "%15s %1023s", method, target) != 2) {
        return;
    }
    header(req, "Content-Length", clen, sizeof clen);
    want = (size_t)atol(clen);
    body = end + 4;
    while ((size_t)(req + len - body) < want && len + 1 < sizeof req) {
        ssize_t r = read(fd, req + len, sizeof req - 1 - len);
        if (r <= 0) {
            break;
        }
        len += (size_t)r;
        req[len] = '\0';
    }
    header(req, "Idempotency-Key", idem, sizeof idem);
    header(req, "Last-Event-ID", lei, sizeof lei);
    logf = fopen(log_path, "a");
    if (logf != NULL) {
        fprintf(logf, "%s %s key=%s lei=%s body=%s\n", method, target, idem,
                lei, body);
        fclose(logf);
    }

    if (strcmp(target, "/v1/health") == 0) {
        json_reply(fd, 200, "{\"status\":\"ok\",\"node\":\"fake\"}");
    } else if (strcmp(target, "/v1/cluster") == 0) {
        json_reply(fd, 200,
                   "{\"leader\":\"b\",\"nodes\":[{\"name\":\"a\",\"state\":"
                   "\"alive\",\"role\":\"voter\",\"api\":\"127.0.0.1:1\","
                   "\"running\":0,\"slots\":2},{\"name\":\"b\",\"state\":"
                   "\"alive\",\"role\":\"voter\",\"api\":\"127.0.0.1:2\","
                   "\"running\":1,\"slots\":2}]}");
    } else if (strcmp(method, "POST") == 0 && strcmp(target, "/v1/jobs") == 0) {
        if (st->jobs_posts++ == 0) {
            json_reply(fd, 503,
                       "{\"error\":{\"code\":\"unavailable\",\"message\":"
                       "\"no leader\"}}");
        } else {
            json_reply(fd, 201, "{\"id\":\"j-42\",\"state\":\"pending\"}");
        }
    } else if (strcmp(target, "/v1/jobs") == 0) {
        reply(fd, 200, "application/json", "this is not json");
    } else if (strcmp(target, "/v1/jobs?state=running&limit=2") == 0) {
        json_reply(fd, 200,
                   "{\"jobs\":[{\"id\":\"j-1\",\"state\":"
                   "\"running\",\"node\":\"a\",\"attempt\":1}]}");
    } else if (strcmp(target, "/v1/jobs/missing") == 0 ||
               strcmp(target, "/v1/jobs/missing/logs?follow=true") == 0) {
        json_reply(fd, 404,
                   "{\"error\":{\"code\":\"not_found\",\"message\":\"job "
                   "missing not found\"}}");
    } else if (strcmp(target, "/v1/jobs/weird") == 0) {
        json_reply(fd, 200, "{\"id\":5,\"state\":[1],\"node\":{}}");
    } else if (strcmp(target, "/v1/jobs/j1/logs") == 0) {
        reply(fd, 200, "text/plain", "line one\nline two\n");
    } else if (strcmp(target, "/v1/jobs/j1/logs?follow=true") == 0) {
        const char *pieces[] = {": ping\n\n",
                                "da",
                                "ta: hello\r",
                                "\n\r\n",
                                "data: multi\ndata:",
                                " line\n\n",
                                "data:\n\n",
                                "event: e",
                                "nd\ndata: {\"state\":",
                                "\"failed\",\"exit_code\":3}\n\n",
                                NULL};
        sse(fd, pieces);
    } else if (strcmp(target, "/v1/jobs/j2/logs?follow=true") == 0) {
        if (st->j2_follows++ == 0) {
            const char *pieces[] = {"id: 1\ndata: first\n\n", "data: cut",
                                    NULL};
            sse(fd, pieces);
        } else {
            const char *pieces[] = {"id: 2\ndata: second\n\n",
                                    "event: end\ndata: {\"state\":"
                                    "\"succeeded\",\"exit_code\":0}\n\n",
                                    NULL};
            sse(fd, pieces);
        }
    } else if (strcmp(target, "/v1/jobs/j3/logs?follow=true") == 0) {
        const char *pieces[] = {": ping\n\n", NULL};
        sse(fd, pieces);
    } else if (strcmp(target, "/v1/jobs/j4/logs?follow=true") == 0) {
        const char *pieces[] = {
            "event: end\ndata: {\"state\":\"cancelled\","
            "\"signal\":\"SIGTERM\"}\n\n",
            NULL};
        sse(fd, pieces);
    } else if (strcmp(target, "/v1/jobs/j5/logs?follow=true") == 0) {
        const char *pieces[] = {"data: x\n\nevent: end\ndata: nope\n\n", NULL};
        sse(fd, pieces);
    } else if (strcmp(method, "POST") == 0 &&
               strcmp(target, "/v1/pipelines") == 0) {
        json_reply(fd, 201, "{\"name\":\"etl\",\"version\":1}");
    } else if (strcmp(method, "GET") == 0 &&
               strcmp(target, "/v1/pipelines/etl") == 0) {
        json_reply(fd, 200,
                   "{\"name\":\"etl\",\"command\":[\"make\"],\"paused\":"
                   "false,\"version\":3,\"created_at\":\"t1\","
                   "\"updated_at\":\"t2\"}");
    } else if (strcmp(method, "PUT") == 0 &&
               strcmp(target, "/v1/pipelines/etl") == 0) {
        json_reply(fd, 200, "{\"name\":\"etl\",\"version\":4}");
    } else if (strcmp(method, "POST") == 0 &&
               strcmp(target, "/v1/pipelines/etl/runs") == 0) {
        json_reply(fd, 201, "{\"id\":\"r-7\",\"pipeline\":\"etl\"}");
    } else if (strcmp(method, "POST") == 0 &&
               strcmp(target, "/v1/jobs/j1/cancel") == 0) {
        reply(fd, 202, "application/json", "");
    } else {
        json_reply(fd, 404,
                   "{\"error\":{\"code\":\"not_found\",\"message\":\"no "
                   "route\"}}");
    }
}

static void fake_start(struct fake *f)
{
    struct sockaddr_in sa;
    int one = 1;
    int lfd = -1;

    memset(f, 0, sizeof *f);
    th_tmpdir(f->dir, sizeof f->dir, "cli");
    snprintf(f->log, sizeof f->log, "%s/requests.log", f->dir);
    /* Bind in the parent so the port is ready before kiln runs. */
    for (int tries = 0; tries < 20 && lfd < 0; tries++) {
        th_free_ports(&f->port, 1);
        lfd = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert(lfd >= 0);
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons(f->port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
            listen(lfd, 16) != 0) {
            close(lfd);
            lfd = -1;
        }
    }
    cr_assert(lfd >= 0, "no free port");
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%u", f->port);
    f->pid = fork();
    cr_assert(f->pid >= 0);
    if (f->pid == 0) {
        struct fake_state st = {0};
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        alarm(60);
        signal(SIGPIPE, SIG_IGN);
        for (;;) {
            int fd = accept(lfd, NULL, NULL);
            if (fd < 0) {
                continue;
            }
            serve(fd, &st, f->log);
            shutdown(fd, SHUT_WR);
            close(fd);
        }
    }
    close(lfd);
}

static void fake_stop(struct fake *f)
{
    kill(f->pid, SIGKILL);
    waitpid(f->pid, NULL, 0);
    th_rmrf(f->dir);
}

/* The request log as a malloc'd string. */
static char *fake_log(struct fake *f)
{
    FILE *fp = fopen(f->log, "r");
    char *buf = calloc(1, 65536);
    size_t n;
    cr_assert_not_null(buf);
    if (fp != NULL) {
        n = fread(buf, 1, 65535, fp);
        buf[n] = '\0';
        fclose(fp);
    }
    return buf;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p != NULL;
         p = strstr(p + 1, needle)) {
        n++;
    }
    return n;
}

static char out[65536], err[65536];

#define RUN(...)                                                           \
    th_run_kiln((const char *const[]){__VA_ARGS__, NULL}, out, sizeof out, \
                err, sizeof err, 20000)

static void init_suite(void)
{
    setenv("KILN_CLI_BACKOFF_MS", "20", 1);
    unsetenv("KILN_ADDR");
}

TestSuite(cli_fake, .timeout = 60, .init = init_suite);

Test(cli_fake, logs_follow_prints_lines_and_exits_with_job_code)
{
    struct fake f;
    fake_start(&f);
    int st = RUN("logs", "-f", "j1", "--addr", f.addr);
    cr_assert_eq(st, 3, "status %d, stderr: %s", st, err);
    cr_assert_str_eq(out, "hello\nmulti\nline\n\n");
    fake_stop(&f);
}

Test(cli_fake, logs_follow_reconnects_with_last_event_id)
{
    struct fake f;
    char *log;
    fake_start(&f);
    int st = RUN("logs", "--addr", f.addr, "--follow", "j2");
    cr_assert_eq(st, 0, "status %d, stderr: %s", st, err);
    cr_assert_str_eq(out, "first\nsecond\n");
    log = fake_log(&f);
    cr_assert_eq(count(log, "GET /v1/jobs/j2/logs?follow=true"), 2, "%s", log);
    cr_assert_eq(count(log, "lei=1 "), 1, "%s", log);
    free(log);
    fake_stop(&f);
}

Test(cli_fake, logs_follow_gives_up_after_repeated_drops)
{
    struct fake f;
    fake_start(&f);
    int st = RUN("logs", "-f", "j3", "--addr", f.addr);
    cr_assert_eq(st, 1);
    cr_assert_str_eq(out, "");
    cr_assert(strstr(err, "kiln: log stream of job j3 ended") == err, "%s",
              err);
    fake_stop(&f);
}

Test(cli_fake, logs_follow_signal_and_404)
{
    struct fake f;
    fake_start(&f);
    cr_assert_eq(RUN("logs", "-f", "j4", "--addr", f.addr), 143);
    cr_assert_eq(RUN("logs", "-f", "j5", "--addr", f.addr), 1);
    cr_assert_str_eq(out, "x\n");
    cr_assert_str_eq(err, "kiln: malformed end event from server\n");
    cr_assert_eq(RUN("logs", "-f", "missing", "--addr", f.addr), 1);
    cr_assert_str_eq(err, "kiln: job missing not found\n");
    fake_stop(&f);
}

Test(cli_fake, logs_plain)
{
    struct fake f;
    fake_start(&f);
    cr_assert_eq(RUN("logs", "j1", "--addr", f.addr), 0, "%s", err);
    cr_assert_str_eq(out, "line one\nline two\n");
    fake_stop(&f);
}

Test(cli_fake, error_body_goes_to_stderr)
{
    struct fake f;
    fake_start(&f);
    cr_assert_eq(RUN("job", "missing", "--addr", f.addr), 1);
    cr_assert_str_eq(err, "kiln: job missing not found\n");
    cr_assert_str_eq(out, "");
    fake_stop(&f);
}

Test(cli_fake, malformed_responses_do_not_crash)
{
    struct fake f;
    fake_start(&f);
    cr_assert_eq(RUN("jobs", "--addr", f.addr), 1);
    cr_assert(strstr(err, "kiln: unexpected response from server") == err, "%s",
              err);
    cr_assert_eq(RUN("job", "weird", "--addr", f.addr), 0, "%s", err);
    cr_assert(strstr(out, "state: 1\n") != NULL, "%s", out);
    fake_stop(&f);
}

Test(cli_fake, submit_retries_503_with_the_same_key)
{
    struct fake f;
    char *log;
    char k1[64], k2[64];
    const char *p;
    fake_start(&f);
    int st = RUN("submit", "--addr", f.addr, "--tag", "a=b", "--", "sh", "-c",
                 "exit 3");
    cr_assert_eq(st, 0, "status %d, stderr: %s", st, err);
    cr_assert_str_eq(out, "j-42\n");
    log = fake_log(&f);
    cr_assert_eq(count(log, "POST /v1/jobs "), 2, "%s", log);
    p = strstr(log, "key=");
    cr_assert_not_null(p);
    cr_assert_eq(sscanf(p, "key=%63s", k1), 1);
    p = strstr(p + 1, "key=");
    cr_assert_not_null(p);
    cr_assert_eq(sscanf(p, "key=%63s", k2), 1);
    cr_assert_eq(strlen(k1), 32, "%s", k1);
    cr_assert_str_eq(k1, k2);
    cr_assert(strstr(log,
                     "body={\"command\":[\"sh\",\"-c\",\"exit 3\"],"
                     "\"tags\":{\"a\":\"b\"}}") != NULL,
              "%s", log);
    free(log);
    fake_stop(&f);
}

Test(cli_fake, nodes_jobs_health_json)
{
    struct fake f;
    fake_start(&f);
    cr_assert_eq(RUN("nodes", "--addr", f.addr), 0, "%s", err);
    cr_assert_str_eq(out,
                     "NAME  STATE  ROLE   API          RUNNING/SLOTS\n"
                     "a     alive  voter  127.0.0.1:1  0/2\n"
                     "b*    alive  voter  127.0.0.1:2  1/2\n");
    cr_assert_eq(
        RUN("jobs", "--state", "running", "--limit", "2", "--addr", f.addr), 0,
        "%s", err);
    cr_assert(strstr(out, "j-1  running  a") != NULL, "%s", out);
    cr_assert_eq(RUN("health", "--json", "--addr", f.addr), 0, "%s", err);
    cr_assert_str_eq(out,
                     "{\n  \"status\": \"ok\",\n  \"node\": \"fake\"\n}\n");
    /* $KILN_ADDR is used when --addr is absent. */
    setenv("KILN_ADDR", f.addr, 1);
    cr_assert_eq(RUN("health"), 0, "%s", err);
    cr_assert_str_eq(out, "status: ok\nnode:   fake\n");
    fake_stop(&f);
}

Test(cli_fake, pipelines_create_pause_run)
{
    struct fake f;
    char *log;
    fake_start(&f);
    cr_assert_eq(RUN("pipeline", "create", "etl", "--schedule", "@hourly",
                     "--addr", f.addr, "--", "make"),
                 0, "%s", err);
    cr_assert_str_eq(out, "etl\n");
    cr_assert_eq(RUN("pipeline", "pause", "etl", "--addr", f.addr), 0, "%s",
                 err);
    cr_assert_eq(RUN("pipeline", "run", "etl", "--addr", f.addr), 0, "%s", err);
    cr_assert_str_eq(out, "r-7\n");
    cr_assert_eq(RUN("cancel", "j1", "--addr", f.addr), 0, "%s", err);
    cr_assert_str_eq(out, "j1\n");
    log = fake_log(&f);
    cr_assert(strstr(log, "POST /v1/pipelines key=") != NULL, "%s", log);
    cr_assert(strstr(log,
                     "body={\"name\":\"etl\",\"command\":[\"make\"],"
                     "\"schedule\":\"@hourly\"}") != NULL,
              "%s", log);
    cr_assert(strstr(log,
                     "PUT /v1/pipelines/etl key= lei= body={\"name\":"
                     "\"etl\",\"command\":[\"make\"],\"paused\":true}") != NULL,
              "%s", log);
    free(log);
    fake_stop(&f);
}

Test(cli_fake, connection_refused_and_usage_errors)
{
    uint16_t port;
    char addr[32];
    char want[128];
    th_free_ports(&port, 1);
    snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
    cr_assert_eq(RUN("jobs", "--addr", addr), 1);
    snprintf(want, sizeof want, "kiln: cannot reach kiln at %s: ", addr);
    cr_assert(strncmp(err, want, strlen(want)) == 0, "%s", err);
    /* submit retries, then fails the same way. */
    cr_assert_eq(RUN("submit", "--addr", addr, "--", "true"), 1);
    cr_assert(strncmp(err, want, strlen(want)) == 0, "%s", err);
    cr_assert_eq(RUN("logs", "-f", "j1", "--addr", addr), 1);
    cr_assert(strncmp(err, want, strlen(want)) == 0, "%s", err);
    cr_assert_eq(RUN("jobs", "--bogus"), 2);
    cr_assert(strstr(err, "usage: kiln jobs") != NULL, "%s", err);
    cr_assert_eq(RUN("job"), 2);
    cr_assert_eq(RUN("nosuchcommand"), 2);
    cr_assert_eq(RUN("pipeline"), 2);
    cr_assert_eq(RUN("job", "--help"), 0);
    cr_assert(strstr(out, "usage: kiln job ID") == out, "%s", out);
    setenv("KILN_ADDR", "not-an-address", 1);
    cr_assert_eq(RUN("health"), 2);
    cr_assert(strstr(err, "kiln: bad address 'not-an-address'") == err, "%s",
              err);
    unsetenv("KILN_ADDR");
    cr_assert_eq(RUN("version"), 0);
    cr_assert(strncmp(out, "kiln ", 5) == 0);
}
