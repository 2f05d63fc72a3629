/* Multi-process network partitions: three agents, each in its own network
 * namespace wired to a bridge in a hub namespace, cut apart with nftables
 * rules inside a node's namespace (docs/testing.md, "Partition tests"). */
#define _GNU_SOURCE /* setns, unshare, CLONE_NEWNET */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/harness.h"
#include "lib/procs.h"

TestSuite(partition, .timeout = 90);

/* Everything lives in namespaces this test creates: the subnet is never
 * routed anywhere else. Node i (0-based) is SUBNET (i + 1), the hub .254. */
#define SUBNET "10.213.77."
#define HUB_IP SUBNET "254"
#define NNODES 3
#define NS_PREFIX "kp"

/* Bounds asserted below (generous for a loaded 2-core CI machine; the
 * measured values are logged). */
#define ELECT_BOUND_MS 5000
#define STEPDOWN_BOUND_MS 5000
/* A member held dead rejoins the gossip views at the next push-pull
 * reconnect, every 30 s (docs/gossip.md). */
#define GOSSIP_HEAL_BOUND_MS 15000

/* The one topology of this test process (Criterion runs each test in its
 * own process, so names carry that pid). */
struct net
{
    char hub[48];
    char node[NNODES][48];
    int orig_fd; /* our own network namespace, restored in teardown */
    bool entered;
};

static struct net g_net = {.orig_fd = -1};
static struct cl g_cl;
static bool g_started; /* agents were started: stop them in teardown */
static bool g_ok;      /* the test body reached its end */

/* Run a shell command (printf-style); output goes to out. Returns the exit
 * status, or -1. */
static int run(char *out, size_t size, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    FILE *p;
    size_t len = 0;
    int st;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
    p = popen(cmd, "r");
    if (p == NULL) {
        return -1;
    }
    if (out != NULL && size > 0) {
        out[0] = '\0';
    }
    for (;;) {
        char buf[512];
        size_t r = fread(buf, 1, sizeof buf, p);
        if (r == 0) {
            break;
        }
        if (out != NULL && len + 1 < size) {
            size_t c = r < size - len - 1 ? r : size - len - 1;
            memcpy(out + len, buf, c);
            len += c;
            out[len] = '\0';
        }
    }
    st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static uint64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* Namespaces named NS_PREFIX<pid>h or NS_PREFIX<pid>n<digit> are ours;
 * remove those of a creator that is gone (a crashed or timed-out run). */
static void remove_stale_namespaces(void)
{
    DIR *d = opendir("/run/netns");
    struct dirent *e;
    if (d == NULL) {
        return;
    }
    while ((e = readdir(d)) != NULL) {
        long pid = 0;
        int used = 0;
        const char *rest;
        if (sscanf(e->d_name, NS_PREFIX "%ld%n", &pid, &used) != 1 ||
            pid <= 0 || strncmp(e->d_name, NS_PREFIX, 2) != 0) {
            continue;
        }
        rest = e->d_name + used;
        if (!(strcmp(rest, "h") == 0 || (rest[0] == 'n' && rest[1] >= '1' &&
                                         rest[1] <= '9' && rest[2] == '\0'))) {
            continue;
        }
        if (pid == (long)getpid() ||
            !(kill((pid_t)pid, 0) != 0 && errno == ESRCH)) {
            continue; /* ours or a live run's */
        }
        cr_log_info("removing stale namespace %s (pid %ld is gone)", e->d_name,
                    pid);
        run(NULL, 0, "ip netns del '%s'", e->d_name);
    }
    closedir(d);
}

/* Why this machine cannot run the test, or NULL. */
static const char *cannot_run(char *why, size_t size)
{
    pid_t pid;
    int st = 0;
    if (run(NULL, 0, "command -v ip && command -v nft") != 0) {
        snprintf(why, size,
                 "the ip (iproute2) and nft (nftables) commands are needed "
                 "(deploy/install-deps.sh installs them)");
        return why;
    }
    pid = fork();
    if (pid == 0) {
        _exit(unshare(CLONE_NEWNET) == 0 ? 0 : (errno & 0x7f));
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
        WEXITSTATUS(st) != 0) {
        snprintf(why, size,
                 "network namespaces are not permitted here "
                 "(unshare(CLONE_NEWNET): %s); run as root with "
                 "CAP_SYS_ADMIN and CAP_NET_ADMIN",
                 pid > 0 && WIFEXITED(st) ? strerror(WEXITSTATUS(st))
                                          : "fork failed");
        return why;
    }
    return NULL;
}

/* Build hub + bridge + NNODES node namespaces and enter the hub. Skips the
 * test when namespaces are not available. */
static void net_up(void)
{
    char why[512], out[2048], script[4096];
    size_t len = 0;
    int fd;

    /* ip and nft live in /usr/sbin, which a non-login PATH may lack */
    {
        const char *path = getenv("PATH");
        char np[2048];
        snprintf(np, sizeof np, "%s:/usr/sbin:/sbin",
                 path != NULL ? path : "/usr/bin:/bin");
        setenv("PATH", np, 1);
    }
    if (cannot_run(why, sizeof why) != NULL) {
        fprintf(stderr, "SKIPPED partition tests: %s\n", why);
        cr_skip_test("SKIPPED: %s", why);
    }
    remove_stale_namespaces();
    /* a second thread makes HTTP calls: initialise libcurl up front */
    curl_global_init(CURL_GLOBAL_ALL);
    snprintf(g_net.hub, sizeof g_net.hub, NS_PREFIX "%ldh", (long)getpid());
    for (int i = 0; i < NNODES; i++) {
        snprintf(g_net.node[i], sizeof g_net.node[i], NS_PREFIX "%ldn%d",
                 (long)getpid(), i + 1);
    }
    if (run(out, sizeof out, "ip netns add %s", g_net.hub) != 0) {
        fprintf(stderr, "SKIPPED partition tests: ip netns add: %s\n", out);
        g_net.hub[0] = '\0';
        cr_skip_test("SKIPPED: cannot create a network namespace: %s", out);
    }
    len +=
        (size_t)snprintf(script + len, sizeof script - len,
                         "set -e; H=%s; ip -n $H link set lo up; "
                         "ip -n $H link add br0 type bridge forward_delay 0; "
                         "ip -n $H addr add " HUB_IP
                         "/24 dev br0; "
                         "ip -n $H link set br0 up; ",
                         g_net.hub);
    for (int i = 0; i < NNODES; i++) {
        len += (size_t)snprintf(
            script + len, sizeof script - len,
            "N=%s; ip netns add $N; ip -n $N link set lo up; "
            "ip -n $H link add v%d type veth peer name eth0 netns $N; "
            "ip -n $H link set v%d master br0; ip -n $H link set v%d up; "
            "ip -n $N addr add " SUBNET
            "%d/24 dev eth0; "
            "ip -n $N link set eth0 up; ",
            g_net.node[i], i + 1, i + 1, i + 1, i + 1);
    }
    cr_assert_eq(run(out, sizeof out, "sh -c '%s'", script), 0,
                 "building the namespaces failed: %s", out);
    g_net.orig_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(g_net.orig_fd, 0);
    {
        char path[128];
        snprintf(path, sizeof path, "/run/netns/%s", g_net.hub);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
        cr_assert_eq(setns(fd, CLONE_NEWNET), 0, "setns hub: %s",
                     strerror(errno));
        close(fd);
        g_net.entered = true;
    }
}

static void net_down(void)
{
    if (g_net.entered) {
        if (setns(g_net.orig_fd, CLONE_NEWNET) != 0) {
            fprintf(stderr, "partition: cannot leave the hub: %s\n",
                    strerror(errno));
        }
        g_net.entered = false;
    }
    if (g_net.orig_fd >= 0) {
        close(g_net.orig_fd);
        g_net.orig_fd = -1;
    }
    for (int i = 0; i < NNODES; i++) {
        if (g_net.node[i][0] != '\0') {
            run(NULL, 0, "ip netns del %s", g_net.node[i]);
            g_net.node[i][0] = '\0';
        }
    }
    if (g_net.hub[0] != '\0') {
        run(NULL, 0, "ip netns del %s", g_net.hub);
        g_net.hub[0] = '\0';
    }
}

/* Registered as .fini: runs after a failed assertion too. */
static void teardown(void)
{
    if (g_started) {
        cl_stop(&g_cl, g_ok);
        if (!g_ok) {
            fprintf(stderr, "partition: test files kept in %s\n", g_cl.root);
        }
        g_started = false;
    }
    net_down();
}

/* Cut node x off from the other nodes: both directions, or only what it
 * receives. The hub (the test process) still reaches every node. */
static void cut(int x, bool inbound_only)
{
    char path[400], others[128] = "", out[1024];
    FILE *f;
    for (int i = 0; i < NNODES; i++) {
        if (i != x) {
            size_t l = strlen(others);
            snprintf(others + l, sizeof others - l, "%s" SUBNET "%d",
                     l > 0 ? ", " : "", i + 1);
        }
    }
    snprintf(path, sizeof path, "%s/cut-n%d.nft", g_cl.root, x + 1);
    f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "table inet kpart {\n"
            "  chain in {\n"
            "    type filter hook input priority 0; policy accept;\n"
            "    ip saddr { %s } drop\n"
            "  }\n",
            others);
    if (!inbound_only) {
        fprintf(f,
                "  chain out {\n"
                "    type filter hook output priority 0; policy accept;\n"
                "    ip daddr { %s } drop\n"
                "  }\n",
                others);
    }
    fprintf(f, "}\n");
    fclose(f);
    cr_assert_eq(
        run(out, sizeof out, "ip netns exec %s nft -f %s", g_net.node[x], path),
        0, "nft: %s", out);
}

static void heal(int x)
{
    char out[1024];
    cr_assert_eq(run(out, sizeof out,
                     "ip netns exec %s nft delete table inet "
                     "kpart",
                     g_net.node[x]),
                 0, "nft: %s", out);
}

/* Start NNODES agents n1..n3, one per namespace, bootstrap-expect 3, each
 * tagged node=nI, with extra flags; wait for membership and a leader. */
static void boot(const char *tag, const char *const *extra)
{
    struct view_arg alive = {&g_cl, NULL, "alive", -1};
    memset(&g_cl, 0, sizeof g_cl);
    th_tmpdir(g_cl.root, sizeof g_cl.root, tag);
    g_cl.n = NNODES;
    for (int i = 0; i < NNODES; i++) {
        char name[16], ip[32];
        snprintf(name, sizeof name, "n%d", i + 1);
        snprintf(ip, sizeof ip, SUBNET "%d", i + 1);
        th_agent_prepare(&g_cl.a[i], g_cl.root, name);
        th_agent_set_netns(&g_cl.a[i], g_net.node[i], ip);
    }
    g_started = true;
    for (int i = 0; i < NNODES; i++) {
        const char *argv[48];
        char tags[32];
        int k = 0;
        for (int j = 0; cl_fast_flags[j] != NULL; j++) {
            argv[k++] = cl_fast_flags[j];
        }
        if (i > 0) {
            argv[k++] = "--join";
            argv[k++] = g_cl.a[0].gossip_addr;
        }
        argv[k++] = "--bootstrap-expect";
        argv[k++] = "3";
        snprintf(tags, sizeof tags, "node=n%d", i + 1);
        argv[k++] = "--tags";
        argv[k++] = tags;
        for (int j = 0; extra != NULL && extra[j] != NULL && k < 46; j++) {
            argv[k++] = extra[j];
        }
        argv[k] = NULL;
        th_agent_start(&g_cl.a[i], argv);
    }
    cr_assert(th_wait(cl_all_see, &alive, 20000), "members never all alive");
    cr_assert(th_wait(cl_same_leader, &g_cl, 20000), "no common leader");
}

/* ---- writes and their verification ---- */

static long post_pipeline(const struct th_agent *a, const char *name)
{
    char url[96], body[256], hdr[128];
    const char *headers[2] = {hdr, NULL};
    snprintf(url, sizeof url, "http://%s/v1/pipelines", a->api_addr);
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"command\":[\"true\"]}",
             name);
    /* a retry after a 503 must not apply twice */
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", name);
    return th_http("POST", url, body, headers, NULL);
}

/* Write until acknowledged (2xx) or timeout; returns the last status. */
static long write_until_acked(const struct th_agent *a,
                              const char *name,
                              unsigned timeout_ms)
{
    uint64_t deadline = th_now_ms() + timeout_ms;
    long code;
    for (;;) {
        code = post_pipeline(a, name);
        if ((code >= 200 && code < 300) || th_now_ms() >= deadline) {
            return code;
        }
        usleep(50 * 1000);
    }
}

/* ",a,b,c," of a node's local replica (sorted by the API), or "" */
static void names_of(const struct th_agent *a, char *out, size_t size)
{
    char url[96];
    json_t *j, *p;
    size_t i;
    snprintf(url, sizeof url, "http://%s/v1/pipelines", a->api_addr);
    j = th_get_json(url);
    out[0] = '\0';
    if (j == NULL) {
        return;
    }
    snprintf(out, size, ",");
    json_array_foreach(json_object_get(j, "pipelines"), i, p)
    {
        const char *n = json_string_value(json_object_get(p, "name"));
        size_t l = strlen(out);
        snprintf(out + l, size - l, "%s,", n != NULL ? n : "?");
    }
    json_decref(j);
}

#define MAXW 32

struct acked
{
    char name[MAXW][24];
    int n;
};

static bool has_name(const char *set, const char *name)
{
    char pat[40];
    snprintf(pat, sizeof pat, ",%s,", name);
    return strstr(set, pat) != NULL;
}

struct converge_arg
{
    const struct acked *w;
    char sets[NNODES][2048];
};

/* every node holds every acked write, and all nodes hold the same set */
static bool converged(void *p)
{
    struct converge_arg *c = p;
    for (int i = 0; i < NNODES; i++) {
        names_of(&g_cl.a[i], c->sets[i], sizeof c->sets[i]);
        if (c->sets[i][0] == '\0' || strcmp(c->sets[i], c->sets[0]) != 0) {
            return false;
        }
        for (int k = 0; k < c->w->n; k++) {
            if (!has_name(c->sets[i], c->w->name[k])) {
                return false;
            }
        }
    }
    return true;
}

/* /v1/status raft.leader of a node: 1, 0, or -1 when unreadable */
static int is_leader(const struct th_agent *a)
{
    char url[96];
    json_t *j, *v;
    int r = -1;
    snprintf(url, sizeof url, "http://%s/v1/status", a->api_addr);
    j = th_get_json(url);
    v = json_object_get(json_object_get(j, "raft"), "leader");
    if (json_is_boolean(v)) {
        r = json_is_true(v) ? 1 : 0;
    }
    json_decref(j);
    return r;
}

struct majority_arg
{
    int x; /* the cut-off node */
    char leader[16];
};

/* the nodes other than x agree on one leader that is not x */
static bool majority_has_leader(void *p)
{
    struct majority_arg *m = p;
    char first[16] = "";
    for (int i = 0; i < NNODES; i++) {
        char l[16];
        if (i == m->x) {
            continue;
        }
        cl_leader_of(&g_cl.a[i], l);
        if (l[0] == '\0' || strcmp(l, g_cl.a[m->x].name) == 0 ||
            (first[0] != '\0' && strcmp(first, l) != 0)) {
            return false;
        }
        snprintf(first, sizeof first, "%s", l);
    }
    snprintf(m->leader, sizeof m->leader, "%s", first);
    return true;
}

static bool not_leader(void *p)
{
    return is_leader(p) == 0;
}

/* A write sent to the cut-off node from a second thread (the thread is
 * created in the hub namespace, so it reaches the node). */
struct iso_write
{
    const struct th_agent *a;
    char name[24];
    long code;
    uint64_t took_ms;
};

static void *iso_write_thread(void *p)
{
    struct iso_write *w = p;
    uint64_t t = th_now_ms();
    w->code = post_pipeline(w->a, w->name);
    w->took_ms = th_now_ms() - t;
    return NULL;
}

static void leader_case(const char *tag, bool inbound_only)
{
    struct acked w = {.n = 0};
    struct majority_arg m;
    struct converge_arg conv;
    struct iso_write iw;
    pthread_t th;
    char leader[16];
    int x;
    uint64_t t0, t_elect, t_down, t_heal, t_conv;

    net_up();
    boot(tag, NULL);
    /* acknowledged before the cut, through every node */
    for (int i = 0; i < 6; i++) {
        long code;
        snprintf(w.name[w.n], sizeof w.name[w.n], "pre-%d", i);
        code = write_until_acked(&g_cl.a[i % NNODES], w.name[w.n], 10000);
        cr_assert(code >= 200 && code < 300, "pre-cut write %d: %ld", i, code);
        w.n++;
    }
    cl_leader_of(&g_cl.a[0], leader);
    x = cl_index_of(&g_cl, leader);
    cr_assert_geq(x, 0, "unknown leader '%s'", leader);
    cr_log_info("%s: cutting off leader %s (%s)", tag, leader,
                inbound_only ? "inbound only" : "both directions");

    cut(x, inbound_only);
    t0 = th_now_ms();
    /* a write to the old leader at once, while it may still think it leads */
    iw.a = &g_cl.a[x];
    snprintf(iw.name, sizeof iw.name, "iso-%s", tag);
    iw.code = -1;
    cr_assert_eq(pthread_create(&th, NULL, iso_write_thread, &iw), 0);

    m.x = x;
    if (!th_wait(majority_has_leader, &m, 15000)) {
        pthread_join(th, NULL);
        cr_assert_fail("the majority never elected a new leader");
    }
    t_elect = th_now_ms() - t0;

    /* the majority acknowledges writes */
    for (int i = 0; i < 10; i++) {
        int via = (x + 1 + i % (NNODES - 1)) % NNODES;
        long code;
        snprintf(w.name[w.n], sizeof w.name[w.n], "maj-%d", i);
        code = write_until_acked(&g_cl.a[via], w.name[w.n], 10000);
        if (!(code >= 200 && code < 300)) {
            pthread_join(th, NULL);
            cr_assert_fail("majority write %d through %s: %ld", i,
                           g_cl.a[via].name, code);
        }
        w.n++;
    }
    /* the old leader steps down while cut off */
    if (!th_wait(not_leader, &g_cl.a[x], STEPDOWN_BOUND_MS)) {
        pthread_join(th, NULL);
        cr_assert_fail("the cut-off old leader %s still says it leads", leader);
    }
    t_down = th_now_ms() - t0;
    pthread_join(th, NULL);
    cr_log_info("%s: write to the cut-off leader: %ld after %llu ms", tag,
                iw.code, (unsigned long long)iw.took_ms);
    cr_assert(!(iw.code >= 200 && iw.code < 300),
              "the cut-off old leader acknowledged a write (%ld)", iw.code);

    heal(x);
    t_heal = th_now_ms();
    cr_assert(th_wait(cl_same_leader, &g_cl, 15000),
              "no common leader after healing");
    conv.w = &w;
    if (!th_wait(converged, &conv, 15000)) {
        for (int i = 0; i < NNODES; i++) {
            fprintf(stderr, "%s holds %s\n", g_cl.a[i].name, conv.sets[i]);
            for (int k = 0; k < w.n; k++) {
                cr_expect(has_name(conv.sets[i], w.name[k]),
                          "acked write %s missing on %s", w.name[k],
                          g_cl.a[i].name);
            }
        }
        cr_assert_fail("the nodes never converged on the acked writes");
    }
    t_conv = th_now_ms() - t_heal;
    cr_log_info(
        "%s: new leader %s in %llu ms, old leader down at %llu ms, "
        "converged %llu ms after healing; unacked write %s",
        tag, m.leader, (unsigned long long)t_elect, (unsigned long long)t_down,
        (unsigned long long)t_conv,
        has_name(conv.sets[0], iw.name) ? "present" : "absent");
    cr_expect_lt(t_elect, ELECT_BOUND_MS, "election took %llu ms",
                 (unsigned long long)t_elect);

    /* the 503 told the client to retry with the same Idempotency-Key:
     * through the healed old leader that retry is acknowledged, whether
     * or not the first attempt committed, and applies once */
    {
        long code = write_until_acked(&g_cl.a[x], iw.name, 10000);
        cr_assert(code >= 200 && code < 300,
                  "retry of the unacknowledged write through %s: %ld",
                  g_cl.a[x].name, code);
        snprintf(w.name[w.n], sizeof w.name[w.n], "%s", iw.name);
        w.n++;
        cr_assert(th_wait(converged, &conv, 15000),
                  "the retried write did not reach every node");
    }
    g_ok = true;
}

Test(partition, isolated_leader_loses_no_acknowledged_write, .fini = teardown)
{
    leader_case("pleader", false);
}

Test(partition,
     leader_deaf_to_peers_loses_no_acknowledged_write,
     .fini = teardown)
{
    leader_case("pdeaf", true);
}

/* ---- jobs: the ledger ---- */

struct ledger
{
    int lines;
    int starts;
    long start_epoch[16];
    long start_pid[16];
    long long start_ms[16];
    int ends;
    long end_epoch;
    char bad[160]; /* first violation of the order, "" if none */
};

/* Attempts never overlap iff epochs never decrease along the file; every
 * attempt opens with "start E PID MS" and a complete one closes with
 * "end E MS". */
static int ledger_read(const char *path, struct ledger *l)
{
    FILE *f = fopen(path, "r");
    char line[256];
    long max_e = 0;
    memset(l, 0, sizeof *l);
    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        char kind[16];
        long e = 0, a = 0;
        long long ms = 0;
        int n = sscanf(line, "%15s %ld %ld %lld", kind, &e, &a, &ms);
        if (n < 2 || line[strlen(line) - 1] != '\n') {
            continue; /* a line being written */
        }
        l->lines++;
        if (e < max_e && l->bad[0] == '\0') {
            snprintf(l->bad, sizeof l->bad,
                     "line %d: epoch %ld after epoch %ld: %.60s", l->lines, e,
                     max_e, line);
        }
        if (strcmp(kind, "start") == 0) {
            if (e <= max_e && l->bad[0] == '\0') {
                snprintf(l->bad, sizeof l->bad,
                         "line %d: start of epoch %ld after epoch %ld",
                         l->lines, e, max_e);
            }
            if (l->starts < 16) {
                l->start_epoch[l->starts] = e;
                l->start_pid[l->starts] = a;
                l->start_ms[l->starts] = ms;
                l->starts++;
            }
        } else if (strcmp(kind, "end") == 0) {
            l->ends++;
            l->end_epoch = e;
        }
        if (e > max_e) {
            max_e = e;
        }
    }
    fclose(f);
    return 0;
}

/* pid gone or a zombie */
static bool pid_dead(long pid)
{
    char path[64], buf[256];
    FILE *f;
    char *rp;
    bool dead = true;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return true;
    }
    if (fgets(buf, sizeof buf, f) != NULL && (rp = strrchr(buf, ')')) != NULL) {
        dead = rp[1] == ' ' && rp[2] == 'Z';
    }
    fclose(f);
    return dead;
}

static long post_job(const struct th_agent *a, const char *body, char *id)
{
    char url[96];
    char *resp = NULL;
    long code;
    json_t *j;
    snprintf(url, sizeof url, "http://%s/v1/jobs", a->api_addr);
    code = th_http("POST", url, body, NULL, &resp);
    id[0] = '\0';
    j = json_loads(resp != NULL ? resp : "", 0, NULL);
    if (json_is_string(json_object_get(j, "id"))) {
        snprintf(id, 24, "%s", json_string_value(json_object_get(j, "id")));
    }
    json_decref(j);
    free(resp);
    return code;
}

/* a job field read from node a's replica, "" if absent */
static void job_field(const struct th_agent *a,
                      const char *id,
                      const char *field,
                      char *out,
                      size_t size)
{
    char url[128];
    json_t *j, *v;
    snprintf(url, sizeof url, "http://%s/v1/jobs/%s", a->api_addr, id);
    j = th_get_json(url);
    v = json_object_get(j, field);
    out[0] = '\0';
    if (json_is_string(v)) {
        snprintf(out, size, "%s", json_string_value(v));
    } else if (json_is_integer(v)) {
        snprintf(out, size, "%lld", (long long)json_integer_value(v));
    }
    json_decref(j);
}

struct job_arg
{
    const char *id;
    const char *state;
    int node; /* -1: every node's replica */
    char holder[16];
};

static bool job_state_is(void *p)
{
    struct job_arg *ja = p;
    for (int i = 0; i < NNODES; i++) {
        char st[32];
        if (ja->node >= 0 && i != ja->node) {
            continue;
        }
        job_field(&g_cl.a[i], ja->id, "state", st, sizeof st);
        if (strcmp(st, ja->state) != 0) {
            return false;
        }
        job_field(&g_cl.a[i], ja->id, "node", ja->holder, sizeof ja->holder);
    }
    return true;
}

struct first_start
{
    const char *ledger;
    struct ledger l;
};

static bool ledger_started(void *p)
{
    struct first_start *fs = p;
    return ledger_read(fs->ledger, &fs->l) == 0 && fs->l.starts >= 1;
}

static void job_case(const char *tag, bool inbound_only)
{
    static const char *const flags[] = {"--lease-ms", "1500", NULL};
    char ledger[400], body[2048], id[24], epoch[32];
    struct job_arg running = {NULL, "running", -1, ""};
    struct job_arg done = {NULL, "succeeded", -1, ""};
    struct first_start fs;
    struct ledger l;
    struct view_arg back = {&g_cl, NULL, "alive", -1};
    long old_pid;
    int x, y = -1;
    uint64_t t0, t_dead = 0, t_new = 0, dead_wall = 0, t_heal;
    uint64_t t_lead, t_done, t_pinned, t_alive;

    net_up();
    boot(tag, flags);
    snprintf(ledger, sizeof ledger, "%s/ledger", g_cl.root);
    snprintf(body, sizeof body,
             "{\"command\":[\"sh\",\"-c\",\"echo start $KILN_EPOCH $$ "
             "$(date +%%s%%3N) >> %s; for i in $(seq 1 30); do echo tick "
             "$KILN_EPOCH $i >> %s; sleep 0.1; done; echo end $KILN_EPOCH "
             "$(date +%%s%%3N) >> %s\"],\"retries\":3}",
             ledger, ledger, ledger);
    cr_assert_eq(post_job(&g_cl.a[0], body, id), 201);
    running.id = id;
    done.id = id;
    cr_assert(th_wait(job_state_is, &running, 20000), "job never ran");
    fs.ledger = ledger;
    cr_assert(th_wait(ledger_started, &fs, 10000), "no start line");
    x = cl_index_of(&g_cl, running.holder);
    cr_assert_geq(x, 0, "job on unknown node '%s'", running.holder);
    old_pid = fs.l.start_pid[0];
    cr_log_info(
        "%s: job %s epoch %ld (pid %ld) runs on %s: cutting it off "
        "(%s)",
        tag, id, fs.l.start_epoch[0], old_pid, running.holder,
        inbound_only ? "inbound only" : "both directions");

    cut(x, inbound_only);
    t0 = th_now_ms();
    /* until another attempt starts: note when the old one dies */
    for (;;) {
        cr_assert_eq(ledger_read(ledger, &l), 0);
        cr_assert(l.bad[0] == '\0', "attempts overlapped: %s (see %s)", l.bad,
                  ledger);
        if (dead_wall == 0 && pid_dead(old_pid)) {
            dead_wall = wall_ms();
            t_dead = th_now_ms() - t0;
        }
        if (l.starts >= 2) {
            t_new = th_now_ms() - t0;
            break;
        }
        cr_assert_lt(th_now_ms() - t0, 20000,
                     "no new attempt within 20 s of the cut (old attempt %s)",
                     dead_wall != 0 ? "dead" : "alive");
        usleep(20 * 1000);
    }
    cr_assert(dead_wall != 0 || pid_dead(old_pid),
              "the cut-off node's attempt (pid %ld) still ran when epoch "
              "%ld started",
              old_pid, l.start_epoch[1]);
    cr_assert_neq(dead_wall, 0,
                  "old attempt died between two polls as epoch %ld started",
                  l.start_epoch[1]);
    cr_assert_lt((long long)dead_wall, l.start_ms[1],
                 "old attempt seen dead at %llu, new one started at %lld",
                 (unsigned long long)dead_wall, l.start_ms[1]);
    for (int i = 0; i < NNODES; i++) {
        if (i != x) {
            char node[16];
            job_field(&g_cl.a[i], id, "node", node, sizeof node);
            if (node[0] != '\0') {
                y = cl_index_of(&g_cl, node);
                break;
            }
        }
    }
    cr_assert(y >= 0 && y != x, "the new attempt is not on the majority side");
    cr_log_info(
        "%s: old attempt killed %llu ms after the cut, epoch %ld "
        "started on %s %llu ms after the cut (%lld ms after the "
        "kill was seen)",
        tag, (unsigned long long)t_dead, l.start_epoch[1], g_cl.a[y].name,
        (unsigned long long)t_new, l.start_ms[1] - (long long)dead_wall);

    heal(x);
    t_heal = th_now_ms();
    cr_assert(th_wait(cl_same_leader, &g_cl, 15000),
              "no common leader after healing");
    t_lead = th_now_ms() - t_heal;
    cr_assert(th_wait(job_state_is, &done, 30000),
              "the job never succeeded on every replica");
    t_done = th_now_ms() - t_heal;
    cr_assert_eq(ledger_read(ledger, &l), 0);
    cr_assert(l.bad[0] == '\0', "attempts overlapped: %s (see %s)", l.bad,
              ledger);
    cr_assert_eq(l.ends, 1, "%d complete attempts (see %s)", l.ends, ledger);
    cr_assert_eq(l.end_epoch, l.start_epoch[l.starts - 1],
                 "the completed attempt is not the last one");
    job_field(&g_cl.a[x], id, "epoch", epoch, sizeof epoch);
    cr_assert_eq(strtol(epoch, NULL, 10), l.end_epoch,
                 "job epoch %s, ledger's completed epoch %ld", epoch,
                 l.end_epoch);

    /* the rejoined node claims and runs work again (its fence is lifted) */
    {
        char body2[256], id2[24];
        struct job_arg ok2 = {NULL, "succeeded", -1, ""};
        snprintf(body2, sizeof body2,
                 "{\"command\":[\"true\"],\"tags\":{\"node\":\"%s\"}}",
                 g_cl.a[x].name);
        cr_assert_eq(post_job(&g_cl.a[y], body2, id2), 201);
        ok2.id = id2;
        cr_assert(th_wait(job_state_is, &ok2, 20000),
                  "a job pinned to the rejoined %s never succeeded",
                  g_cl.a[x].name);
        cr_assert_str_eq(ok2.holder, g_cl.a[x].name);
    }
    t_pinned = th_now_ms() - t_heal;
    /* the gossip views merge last (push-pull reconnect, docs/gossip.md) */
    cr_assert(th_wait(cl_all_see, &back, GOSSIP_HEAL_BOUND_MS),
              "%s not alive everywhere %d ms after healing", g_cl.a[x].name,
              GOSSIP_HEAL_BOUND_MS);
    t_alive = th_now_ms() - t_heal;
    cr_log_info(
        "%s: after healing: one leader at %llu ms, the job done on "
        "every replica at %llu ms, a job pinned to %s done at %llu "
        "ms, %s alive in every gossip view at %llu ms",
        tag, (unsigned long long)t_lead, (unsigned long long)t_done,
        g_cl.a[x].name, (unsigned long long)t_pinned, g_cl.a[x].name,
        (unsigned long long)t_alive);
    cr_log_info("%s: ledger %d lines, %d attempts, one completed", tag, l.lines,
                l.starts);
    g_ok = true;
}

Test(partition,
     cut_off_job_holder_is_fenced_before_the_job_moves,
     .fini = teardown)
{
    job_case("pjob", false);
}

Test(partition,
     job_holder_deaf_to_peers_is_fenced_before_the_job_moves,
     .fini = teardown)
{
    job_case("pjobdeaf", true);
}
