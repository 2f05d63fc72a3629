/* Test harness for multi-process tests. */
#define _GNU_SOURCE /* setns, CLONE_NEWNET */
#include "lib/harness.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void th_tmpdir(char *out, size_t size, const char *tag)
{
    const char *base = getenv("TMPDIR");
    if (base == NULL || *base == '\0') {
        base = "/tmp";
    }
    snprintf(out, size, "%s/kiln-test-%s-XXXXXX", base, tag);
    if (mkdtemp(out) == NULL) {
        perror("mkdtemp");
        abort();
    }
}

void th_rmrf(const char *path)
{
    char cmd[1200];
    if (path == NULL || strlen(path) < 8 ||
        strstr(path, "kiln-test-") == NULL) {
        return; /* refuse to remove anything that is not ours */
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) {
        fprintf(stderr, "th_rmrf: %s failed\n", cmd);
    }
}

static int port_free(uint16_t port)
{
    struct sockaddr_in sa;
    int ok = 1;
    int types[2] = {SOCK_STREAM, SOCK_DGRAM};
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < 2 && ok; i++) {
        int fd = socket(AF_INET, types[i], 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            ok = 0;
        }
        if (fd >= 0) {
            close(fd);
        }
    }
    return ok;
}

/* Cross-process reservation: test binaries run in parallel (ctest -j) and
 * a port freed by a killed agent must not be handed to another test before
 * that agent restarts on it. A reservation is a file named after the port,
 * holding the reserving pid; it is stale once that process is gone. */
#define PORT_DIR "/tmp/kiln-test-ports"

static int port_reserve(uint16_t port)
{
    char path[64], buf[32];
    int fd;
    mkdir(PORT_DIR, 0777);
    snprintf(path, sizeof path, PORT_DIR "/%u", port);
    for (int tries = 0; tries < 2; tries++) {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) {
            int len = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
            if (write(fd, buf, (size_t)len) != len) {
                /* best effort */
            }
            close(fd);
            return 1;
        }
        fd = open(path, O_RDONLY);
        if (fd >= 0) {
            ssize_t r = read(fd, buf, sizeof buf - 1);
            long owner = 0;
            close(fd);
            if (r > 0) {
                buf[r] = '\0';
                owner = strtol(buf, NULL, 10);
            }
            if (owner > 0 && (kill((pid_t)owner, 0) == 0 || errno != ESRCH)) {
                return 0; /* held by a live test process */
            }
        }
        unlink(path); /* stale: take it over */
    }
    return 0;
}

/* Test ports come from outside the kernel's ephemeral range: a port in it
 * can be taken by any outgoing connection (curl, Raft, another test) while
 * its agent is down for a kill -9 and restart, which then fails to bind. */
static void port_window(uint32_t *lo, uint32_t *hi)
{
    unsigned elo = 32768, ehi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f != NULL) {
        if (fscanf(f, "%u %u", &elo, &ehi) != 2) {
            elo = 32768;
            ehi = 60999;
        }
        fclose(f);
    }
    if (elo >= 12000) {
        *lo = 10000;
        *hi = elo; /* exclusive */
    } else {
        *lo = ehi + 1;
        *hi = 65535;
    }
}

void th_free_ports(uint16_t *ports, int n)
{
    /* Spread processes over the window by pid so that parallel test
     * binaries rarely probe the same ports, then walk forward. */
    static uint32_t next = 0, lo, hi;
    if (next == 0) {
        port_window(&lo, &hi);
        next = lo + (uint32_t)((getpid() * 7919u) % (hi - lo));
    }
    for (int i = 0; i < n; i++) {
        for (;;) {
            uint16_t p = (uint16_t)next;
            next++;
            if (next >= hi) {
                next = lo;
            }
            if (port_free(p) && port_reserve(p)) {
                ports[i] = p;
                break;
            }
        }
    }
}

bool th_wait(bool (*cond)(void *arg), void *arg, unsigned timeout_ms)
{
    uint64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        if (cond(arg)) {
            return true;
        }
        if (th_now_ms() >= deadline) {
            return false;
        }
        usleep(20 * 1000);
    }
}

void th_agent_prepare(struct th_agent *a, const char *root, const char *name)
{
    uint16_t ports[3];
    memset(a, 0, sizeof *a);
    snprintf(a->name, sizeof a->name, "%s", name);
    snprintf(a->dir, sizeof a->dir, "%s/%s", root, name);
    snprintf(a->log_path, sizeof a->log_path, "%s/%s.log", root, name);
    th_free_ports(ports, 3);
    a->api = ports[0];
    a->raft = ports[1];
    a->gossip = ports[2];
    snprintf(a->api_addr, sizeof a->api_addr, "127.0.0.1:%u", a->api);
    snprintf(a->gossip_addr, sizeof a->gossip_addr, "127.0.0.1:%u", a->gossip);
}

void th_agent_set_netns(struct th_agent *a, const char *netns, const char *host)
{
    if (netns != NULL) {
        snprintf(a->netns, sizeof a->netns, "%s", netns);
    }
    if (host != NULL) {
        snprintf(a->host, sizeof a->host, "%s", host);
    }
    if (a->host[0] != '\0') {
        snprintf(a->api_addr, sizeof a->api_addr, "%s:%u", a->host, a->api);
        snprintf(a->gossip_addr, sizeof a->gossip_addr, "%s:%u", a->host,
                 a->gossip);
    }
}

/* In the child before exec: enter the agent's network namespace. */
static void enter_netns(const char *name)
{
    char path[128];
    int fd;
    snprintf(path, sizeof path, "/run/netns/%s", name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
        fprintf(stderr, "th_agent_start: cannot enter netns %s: %s\n", name,
                strerror(errno));
        _exit(126);
    }
    close(fd);
}

pid_t th_agent_start(struct th_agent *a, const char *const *extra)
{
    char api[64], raft[64], gossip[64];
    const char *host = a->host[0] != '\0' ? a->host : "127.0.0.1";
    const char *argv[64];
    int n = 0;
    pid_t pid;

    snprintf(api, sizeof api, "%s:%u", host, a->api);
    snprintf(raft, sizeof raft, "%s:%u", host, a->raft);
    snprintf(gossip, sizeof gossip, "%s:%u", host, a->gossip);
    argv[n++] = KILN_BIN;
    argv[n++] = "agent";
    argv[n++] = "--name";
    argv[n++] = a->name;
    argv[n++] = "--data-dir";
    argv[n++] = a->dir;
    argv[n++] = "--api";
    argv[n++] = api;
    argv[n++] = "--raft";
    argv[n++] = raft;
    argv[n++] = "--gossip";
    argv[n++] = gossip;
    for (int i = 0; extra != NULL && extra[i] != NULL && n < 62; i++) {
        argv[n++] = extra[i];
    }
    argv[n] = NULL;

    pid = fork();
    if (pid == 0) {
        int fd = open(a->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        setpgid(0, 0);
        /* A test that dies (failed assertion, timeout) takes its agents
         * with it instead of leaking them. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (a->netns[0] != '\0') {
            enter_netns(a->netns);
        }
        execv(KILN_BIN, (char *const *)argv);
        _exit(127);
    }
    a->pid = pid;
    return pid;
}

static int wait_pid(pid_t pid, unsigned timeout_ms)
{
    uint64_t deadline = th_now_ms() + timeout_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(status)) {
                return WEXITSTATUS(status);
            }
            return 128 + WTERMSIG(status);
        }
        if (r < 0 || th_now_ms() >= deadline) {
            return -1;
        }
        usleep(10 * 1000);
    }
}

int th_agent_wait_exit(struct th_agent *a, unsigned timeout_ms)
{
    int st;
    if (a->pid <= 0) {
        return -1;
    }
    st = wait_pid(a->pid, timeout_ms);
    if (st >= 0) {
        a->pid = 0;
    }
    return st;
}

int th_agent_stop(struct th_agent *a, unsigned timeout_ms)
{
    int st;
    if (a->pid <= 0) {
        return -1;
    }
    kill(a->pid, SIGTERM);
    st = wait_pid(a->pid, timeout_ms);
    if (st < 0) {
        kill(a->pid, SIGKILL);
        wait_pid(a->pid, 5000);
    }
    a->pid = 0;
    return st;
}

void th_agent_kill(struct th_agent *a)
{
    if (a->pid <= 0) {
        return;
    }
    kill(a->pid, SIGKILL);
    wait_pid(a->pid, 5000);
    a->pid = 0;
}

int th_run_kiln(const char *const *argv,
                char *out,
                size_t out_size,
                char *err,
                size_t err_size,
                unsigned timeout_ms)
{
    int outp[2], errp[2];
    const char *args[64];
    int n = 0;
    pid_t pid;
    size_t olen = 0, elen = 0;
    uint64_t deadline = th_now_ms() + timeout_ms;
    int status = -1;

    args[n++] = KILN_BIN;
    for (int i = 0; argv[i] != NULL && n < 63; i++) {
        args[n++] = argv[i];
    }
    args[n] = NULL;
    if (pipe(outp) != 0 || pipe(errp) != 0) {
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        dup2(outp[1], 1);
        dup2(errp[1], 2);
        close(outp[0]);
        close(errp[0]);
        execv(KILN_BIN, (char *const *)args);
        _exit(127);
    }
    close(outp[1]);
    close(errp[1]);
    fcntl(outp[0], F_SETFL, O_NONBLOCK);
    fcntl(errp[0], F_SETFL, O_NONBLOCK);
    for (;;) {
        char buf[4096];
        ssize_t r;
        int done = 0;
        while ((r = read(outp[0], buf, sizeof buf)) > 0) {
            if (out != NULL && olen + 1 < out_size) {
                size_t c = (size_t)r < out_size - olen - 1
                               ? (size_t)r
                               : out_size - olen - 1;
                memcpy(out + olen, buf, c);
                olen += c;
            }
        }
        while ((r = read(errp[0], buf, sizeof buf)) > 0) {
            if (err != NULL && elen + 1 < err_size) {
                size_t c = (size_t)r < err_size - elen - 1
                               ? (size_t)r
                               : err_size - elen - 1;
                memcpy(err + elen, buf, c);
                elen += c;
            }
        }
        {
            int st;
            pid_t w = waitpid(pid, &st, WNOHANG);
            if (w == pid) {
                status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                done = 1;
            }
        }
        if (done) {
            /* drain what is left */
            while ((r = read(outp[0], buf, sizeof buf)) > 0) {
                if (out != NULL && olen + 1 < out_size) {
                    size_t c = (size_t)r < out_size - olen - 1
                                   ? (size_t)r
                                   : out_size - olen - 1;
                    memcpy(out + olen, buf, c);
                    olen += c;
                }
            }
            while ((r = read(errp[0], buf, sizeof buf)) > 0) {
                if (err != NULL && elen + 1 < err_size) {
                    size_t c = (size_t)r < err_size - elen - 1
                                   ? (size_t)r
                                   : err_size - elen - 1;
                    memcpy(err + elen, buf, c);
                    elen += c;
                }
            }
            break;
        }
        if (th_now_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            status = -1;
            break;
        }
        usleep(5 * 1000);
    }
    close(outp[0]);
    close(errp[0]);
    if (out != NULL && out_size > 0) {
        out[olen] = '\0';
    }
    if (err != NULL && err_size > 0) {
        err[elen] = '\0';
    }
    return status;
}

struct membuf
{
    char *p;
    size_t n;
};

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct membuf *m = ud;
    size_t add = size * nmemb;
    char *np = realloc(m->p, m->n + add + 1);
    if (np == NULL) {
        return 0;
    }
    m->p = np;
    memcpy(m->p + m->n, ptr, add);
    m->n += add;
    m->p[m->n] = '\0';
    return add;
}

long th_http(const char *method,
             const char *url,
             const char *body,
             const char *const *headers,
             char **body_out)
{
    CURL *c = curl_easy_init();
    struct curl_slist *hl = NULL;
    struct membuf m = {NULL, 0};
    long code = 0;

    if (c == NULL) {
        return 0;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &m);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        hl = curl_slist_append(hl, "Content-Type: application/json");
    }
    for (int i = 0; headers != NULL && headers[i] != NULL; i++) {
        hl = curl_slist_append(hl, headers[i]);
    }
    hl = curl_slist_append(hl, "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (curl_easy_perform(c) == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    }
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    if (body_out != NULL) {
        *body_out = m.p;
    } else {
        free(m.p);
    }
    return code;
}

json_t *th_get_json(const char *url)
{
    char *body = NULL;
    long code = th_http("GET", url, NULL, NULL, &body);
    json_t *j = NULL;
    if (code == 200 && body != NULL) {
        j = json_loads(body, 0, NULL);
    }
    free(body);
    return j;
}

void th_dump_log(const struct th_agent *a)
{
    char cmd[700];
    fprintf(stderr, "---- log of %s (%s) ----\n", a->name, a->log_path);
    snprintf(cmd, sizeof cmd, "tail -n 60 '%s' >&2", a->log_path);
    if (system(cmd) != 0) {
        fprintf(stderr, "(no log)\n");
    }
}
