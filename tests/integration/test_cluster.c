/* Multi-process tests on 127.0.0.1: gossip membership, Raft replication
 * and failover, the pipeline store, bad HTTP input. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/harness.h"
#include "lib/procs.h"

TestSuite(cluster, .timeout = 180);

static long create_pipeline(const struct th_agent *a,
                            const char *name,
                            const char *idem)
{
    char url[64], body[256], hdr[128];
    const char *headers[2] = {NULL, NULL};
    snprintf(url, sizeof url, "http://%s/v1/pipelines", a->api_addr);
    snprintf(body, sizeof body,
             "{\"name\":\"%s\",\"command\":[\"echo\",\"%s\"]}", name, name);
    if (idem != NULL) {
        snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", idem);
        headers[0] = hdr;
    }
    return th_http("POST", url, body, headers, NULL);
}

static bool has_pipeline(const struct th_agent *a, const char *name)
{
    char url[128];
    snprintf(url, sizeof url, "http://%s/v1/pipelines/%s", a->api_addr, name);
    return th_http("GET", url, NULL, NULL, NULL) == 200;
}

Test(cluster, three_nodes_meet_elect_and_replicate)
{
    struct cl c;
    struct view_arg v = {&c, NULL, "alive", -1};
    char leader[16];
    int li, fi;
    bool ok = false;

    cl_start(&c, 3, "meet");
    cr_assert(th_wait(cl_all_see, &v, 15000), "members never all alive");
    cr_assert(th_wait(cl_same_leader, &c, 15000), "no common leader");
    cl_leader_of(&c.a[0], leader);
    li = cl_index_of(&c, leader);
    fi = (li + 1) % 3;
    /* a pipeline created through a follower is readable everywhere */
    cr_assert_eq(create_pipeline(&c.a[fi], "p-follower", NULL), 201);
    for (int i = 0; i < 3; i++) {
        struct
        {
            const struct th_agent *a;
        } x = {&c.a[i]};
        (void)x;
        uint64_t deadline = th_now_ms() + 5000;
        while (!has_pipeline(&c.a[i], "p-follower") && th_now_ms() < deadline) {
            usleep(20000);
        }
        cr_assert(has_pipeline(&c.a[i], "p-follower"), "missing on %s",
                  c.a[i].name);
    }
    ok = true;
    cl_stop(&c, ok);
}

static int count_state(const struct th_agent *obs, const char *state)
{
    json_t *j = cl_cluster_of(obs);
    size_t i;
    json_t *m;
    int n = 0;
    if (j == NULL) {
        return -1;
    }
    json_array_foreach(json_object_get(j, "nodes"), i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "state")), state) ==
            0) {
            n++;
        }
    }
    json_decref(j);
    return n;
}

Test(cluster, kill9_detected_dead_then_restart_alive)
{
    struct cl c;
    struct view_arg alive = {&c, NULL, "alive", -1};
    struct view_arg dead = {&c, "n3", "dead", 2};
    struct view_arg back = {&c, "n3", "alive", -1};
    uint64_t t0, dt;

    cl_start(&c, 3, "kill9");
    cr_assert(th_wait(cl_all_see, &alive, 15000), "members never all alive");
    t0 = th_now_ms();
    th_agent_kill(&c.a[2]);
    cr_assert(th_wait(cl_all_see, &dead, 10000), "n3 not declared dead");
    dt = th_now_ms() - t0;
    cr_log_info("kill -9 detected dead by all in %llu ms",
                (unsigned long long)dt);
    /* docs/gossip.md bound for 3 nodes at a 200 ms probe interval */
    cr_expect_lt(dt, 5000);
    cl_start_one(&c, 2, c.a[0].gossip_addr, 3);
    cr_assert(th_wait(cl_all_see, &back, 15000), "n3 not alive after restart");
    cr_assert_eq(count_state(&c.a[0], "alive"), 3);
    cl_stop(&c, true);
}

struct join_arg
{
    struct cl *c;
    int n;
};

static bool all_count_alive(void *p)
{
    struct join_arg *j = p;
    for (int i = 0; i < j->c->n; i++) {
        if (j->c->a[i].pid != 0 && count_state(&j->c->a[i], "alive") != j->n) {
            return false;
        }
    }
    return true;
}

static int count_role(const struct th_agent *obs, const char *role)
{
    json_t *j = cl_cluster_of(obs);
    size_t i;
    json_t *m;
    int n = 0;
    if (j == NULL) {
        return -1;
    }
    json_array_foreach(json_object_get(j, "nodes"), i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "role")), role) == 0) {
            n++;
        }
    }
    json_decref(j);
    return n;
}

struct role_arg
{
    struct cl *c;
    const char *role;
    int want;
};

static bool role_count_is(void *p)
{
    struct role_arg *r = p;
    char l[16];
    cl_leader_of(&r->c->a[0], l);
    int li = cl_index_of(r->c, l);
    return li >= 0 && count_role(&r->c->a[li], r->role) == r->want;
}

Test(cluster, joiners_through_any_member_and_five_voters)
{
    struct cl c;
    struct view_arg alive = {&c, NULL, "alive", -1};
    struct join_arg j4 = {&c, 4};
    struct join_arg j5 = {&c, 5};
    struct role_arg v5 = {&c, "voter", 5};

    cl_start(&c, 3, "join");
    cr_assert(th_wait(cl_all_see, &alive, 15000));
    cr_assert(th_wait(cl_same_leader, &c, 15000));
    /* the 4th joins through n2, the 5th through n3 */
    th_agent_prepare(&c.a[3], c.root, "n4");
    th_agent_prepare(&c.a[4], c.root, "n5");
    c.n = 5;
    cl_start_one(&c, 3, c.a[1].gossip_addr, 0);
    cr_assert(th_wait(all_count_alive, &j4, 15000), "n4 not seen by all");
    cl_start_one(&c, 4, c.a[2].gossip_addr, 0);
    cr_assert(th_wait(all_count_alive, &j5, 15000), "n5 not seen by all");
    cr_assert(th_wait(role_count_is, &v5, 30000), "voter count never 5");
    cr_assert_eq(create_pipeline(&c.a[4], "from-n5", NULL), 201);
    cl_stop(&c, true);
}

static bool pipeline_everywhere(struct cl *c, const char *name)
{
    for (int i = 0; i < c->n; i++) {
        if (c->a[i].pid != 0 && !has_pipeline(&c->a[i], name)) {
            return false;
        }
    }
    return true;
}

struct pe_arg
{
    struct cl *c;
    const char *name;
};

static bool pe_cond(void *p)
{
    struct pe_arg *a = p;
    return pipeline_everywhere(a->c, a->name);
}

Test(cluster, leader_kill9_failover_and_catch_up)
{
    struct cl c;
    struct view_arg alive = {&c, NULL, "alive", -1};
    char leader[16];
    int li, other;
    uint64_t t0, dt = 0;
    long code = 0;
    struct pe_arg pa = {&c, "before-kill"};
    struct pe_arg pb = {&c, "after-kill"};

    cl_start(&c, 3, "failover");
    cr_assert(th_wait(cl_all_see, &alive, 15000));
    cr_assert(th_wait(cl_same_leader, &c, 15000));
    cr_assert_eq(create_pipeline(&c.a[0], "before-kill", NULL), 201);
    cl_leader_of(&c.a[0], leader);
    li = cl_index_of(&c, leader);
    other = (li + 1) % 3;
    t0 = th_now_ms();
    th_agent_kill(&c.a[li]);
    /* a new leader serves writes within 3 s */
    while (th_now_ms() - t0 < 10000) {
        code = create_pipeline(&c.a[other], "after-kill", "k-after");
        if (code == 201) {
            dt = th_now_ms() - t0;
            break;
        }
        usleep(20000);
    }
    cr_assert_eq(code, 201, "no write accepted after leader kill");
    cr_log_info("failover: first write acknowledged %llu ms after kill -9",
                (unsigned long long)dt);
    cr_expect_lt(dt, 3000);
    cr_assert(has_pipeline(&c.a[other], "before-kill"),
              "acknowledged write lost");
    /* the killed node restarts from its data dir and catches up */
    cl_start_one(&c, li, c.a[other].gossip_addr, 3);
    cr_assert(th_wait(pe_cond, &pa, 15000));
    cr_assert(th_wait(pe_cond, &pb, 15000));
    cl_stop(&c, true);
}

Test(cluster, idempotency_key_across_nodes_creates_one)
{
    struct cl c;
    struct view_arg alive = {&c, NULL, "alive", -1};
    char url[128];
    char *body = NULL;
    json_t *j;

    cl_start(&c, 3, "idem");
    cr_assert(th_wait(cl_all_see, &alive, 15000));
    cr_assert(th_wait(cl_same_leader, &c, 15000));
    for (int i = 0; i < 3; i++) {
        long code = create_pipeline(&c.a[i], "idem-p", "same-key-1");
        cr_assert_eq(code, 201, "attempt %d through %s: %ld", i, c.a[i].name,
                     code);
    }
    /* a different key for the same name is a conflict */
    cr_assert_eq(create_pipeline(&c.a[1], "idem-p", "other-key"), 409);
    snprintf(url, sizeof url, "http://%s/v1/pipelines?consistent=true",
             c.a[2].api_addr);
    cr_assert_eq(th_http("GET", url, NULL, NULL, &body), 200);
    j = json_loads(body, 0, NULL);
    cr_assert_eq(json_array_size(json_object_get(j, "pipelines")), 1);
    json_decref(j);
    free(body);
    cl_stop(&c, true);
}

Test(cluster, malformed_http_gets_4xx_json_and_node_keeps_serving)
{
    struct cl c;
    char url[128];
    char *body = NULL;
    char *big;
    struct
    {
        const char *method;
        const char *path;
        const char *body;
        long want;
    } cases[] = {
        {"POST", "/v1/pipelines", "{not json", 400},
        {"POST", "/v1/pipelines", "[1,2]", 400},
        {"POST", "/v1/pipelines", "{\"name\":\"x\",\"command\":\"ls\"}", 400},
        {"GET", "/v1/nope", NULL, 404},
        {"DELETE", "/v1/health", NULL, 405},
        {"GET", "/v1/pipelines/missing", NULL, 404},
        {"PUT", "/v1/pipelines/a%2Fb", "{}", 404},
        {"PUT", "/v1/pipelines/-bad", "{\"command\":[\"x\"]}", 400},
    };

    cl_start(&c, 1, "badhttp");
    {
        struct view_arg alive = {&c, NULL, "alive", -1};
        cr_assert(th_wait(cl_all_see, &alive, 15000));
        cr_assert(th_wait(cl_same_leader, &c, 15000));
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j;
        snprintf(url, sizeof url, "http://%s%s", c.a[0].api_addr,
                 cases[i].path);
        long code = th_http(cases[i].method, url, cases[i].body, NULL, &body);
        cr_assert_eq(code, cases[i].want, "%s %s -> %ld (%s)", cases[i].method,
                     cases[i].path, code, body != NULL ? body : "");
        j = json_loads(body != NULL ? body : "", 0, NULL);
        cr_assert(json_is_string(
                      json_object_get(json_object_get(j, "error"), "message")),
                  "no JSON error body: %s", body);
        json_decref(j);
        free(body);
        body = NULL;
    }
    /* a 2 MiB body is refused with 413 */
    big = malloc(2 << 20);
    memset(big, 'x', 2 << 20);
    big[(2 << 20) - 1] = '\0';
    snprintf(url, sizeof url, "http://%s/v1/pipelines", c.a[0].api_addr);
    cr_assert_eq(th_http("POST", url, big, NULL, NULL), 413);
    free(big);
    snprintf(url, sizeof url, "http://%s/v1/health", c.a[0].api_addr);
    cr_assert_eq(th_http("GET", url, NULL, NULL, NULL), 200);
    cl_stop(&c, true);
}

struct count_arg
{
    struct cl *c;
    size_t want;
};

static size_t pipeline_count(const struct th_agent *a)
{
    char url[80];
    json_t *j;
    size_t n;
    snprintf(url, sizeof url, "http://%s/v1/pipelines", a->api_addr);
    j = th_get_json(url);
    n = j != NULL ? json_array_size(json_object_get(j, "pipelines")) : 0;
    json_decref(j);
    return n;
}

static bool all_have_count(void *p)
{
    struct count_arg *a = p;
    for (int i = 0; i < a->c->n; i++) {
        if (a->c->a[i].pid != 0 && pipeline_count(&a->c->a[i]) != a->want) {
            return false;
        }
    }
    return true;
}

/* On failure: each node's count, its Raft view and the first names it
 * lacks, so that a CI log tells a slow catch-up from a lost write. */
static void report_counts(struct cl *c, int want)
{
    for (int i = 0; i < c->n; i++) {
        char url[96];
        json_t *j, *st;
        char *dump;
        int shown = 0;
        if (c->a[i].pid == 0) {
            continue;
        }
        snprintf(url, sizeof url, "http://%s/v1/pipelines", c->a[i].api_addr);
        j = th_get_json(url);
        fprintf(stderr, "n%d holds %zu pipelines; missing:", i + 1,
                j != NULL ? json_array_size(json_object_get(j, "pipelines"))
                          : (size_t)0);
        for (int w = 0; w < want && j != NULL && shown < 10; w++) {
            char name[16];
            size_t k;
            json_t *p;
            bool found = false;
            snprintf(name, sizeof name, "w%d", w);
            json_array_foreach(json_object_get(j, "pipelines"), k, p)
            {
                if (strcmp(json_string_value(json_object_get(p, "name")) != NULL
                               ? json_string_value(json_object_get(p, "name"))
                               : "",
                           name) == 0) {
                    found = true;
                    break;
                }
            }
            if (!found) {
                fprintf(stderr, " %s", name);
                shown++;
            }
        }
        fprintf(stderr, "\n");
        json_decref(j);
        snprintf(url, sizeof url, "http://%s/v1/status", c->a[i].api_addr);
        st = th_get_json(url);
        dump = st != NULL ? json_dumps(st, JSON_COMPACT) : NULL;
        fprintf(stderr, "n%d status: %s\n", i + 1, dump != NULL ? dump : "-");
        free(dump);
        json_decref(st);
    }
}

Test(cluster, thousand_writes_survive_a_leader_kill)
{
    struct cl c;
    struct view_arg alive = {&c, NULL, "alive", -1};
    int acked = 0;
    int killed = -1;
    struct count_arg ca = {&c, 1000};

    cl_start(&c, 3, "thousand");
    cr_assert(th_wait(cl_all_see, &alive, 15000));
    cr_assert(th_wait(cl_same_leader, &c, 15000));
    for (int i = 0; i < 1000; i++) {
        char name[16], key[24];
        uint64_t deadline = th_now_ms() + 15000;
        long code = 0;
        snprintf(name, sizeof name, "w%d", i);
        snprintf(key, sizeof key, "key-w%d", i);
        if (i == 300) {
            char leader[16];
            cl_leader_of(&c.a[0], leader);
            killed = cl_index_of(&c, leader);
            th_agent_kill(&c.a[killed]);
        }
        for (int attempt = 0; th_now_ms() < deadline; attempt++) {
            int k = (i + attempt) % 3;
            if (c.a[k].pid == 0) {
                continue;
            }
            code = create_pipeline(&c.a[k], name, key);
            if (code == 201) {
                break;
            }
            usleep(10000);
        }
        cr_assert_eq(code, 201, "write %d never acknowledged", i);
        acked++;
    }
    cr_assert_eq(acked, 1000);
    cl_start_one(&c, killed, c.a[(killed + 1) % 3].gossip_addr, 3);
    if (!th_wait(all_have_count, &ca, 20000)) {
        report_counts(&c, 1000);
        cl_stop(&c, false);
        cr_assert_fail(
            "not every node holds all 1000 acknowledged writes "
            "(killed leader was n%d)",
            killed + 1);
    }
    cl_stop(&c, true);
}

/* Whether the agent's Raft dir holds a snapshot file. */
static bool has_snapshot(const char *data_dir)
{
    char path[700];
    DIR *d;
    struct dirent *e;
    bool found = false;
    snprintf(path, sizeof path, "%s/raft", data_dir);
    d = opendir(path);
    if (d == NULL) {
        return false;
    }
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "snapshot-", 9) == 0) {
            found = true;
        }
    }
    closedir(d);
    return found;
}

/* Every node restarts from its data dir after snapshots were taken (more
 * entries than the snapshot threshold): the state comes back from the
 * snapshot plus the log tail. */
Test(cluster, whole_cluster_restart_after_snapshots_keeps_everything)
{
    struct cl c;
    struct view_arg alive = {&c, NULL, "alive", -1};
    struct count_arg ca = {&c, 1200};
    static const char *const snap[] = {"--snapshot-entries", "256", NULL};

    cl_start_with(&c, 3, "restart", snap);
    cr_assert(th_wait(cl_all_see, &alive, 15000));
    cr_assert(th_wait(cl_same_leader, &c, 15000));
    for (int i = 0; i < 1200; i++) {
        char name[16];
        long code;
        snprintf(name, sizeof name, "s%d", i);
        code = create_pipeline(&c.a[i % 3], name, NULL);
        cr_assert_eq(code, 201, "write %d: %ld", i, code);
    }
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(th_agent_stop(&c.a[i], 10000), 0, "unclean stop of %s",
                     c.a[i].name);
    }
    for (int i = 0; i < 3; i++) {
        cr_assert(has_snapshot(c.a[i].dir), "%s took no snapshot", c.a[i].name);
    }
    for (int i = 0; i < 3; i++) {
        cl_start_one_with(&c, i, i == 0 ? NULL : c.a[0].gossip_addr, 3, snap);
    }
    cr_assert(th_wait(cl_same_leader, &c, 20000), "no leader after restart");
    cr_assert(th_wait(all_have_count, &ca, 20000),
              "state lost across a whole-cluster restart");
    cl_stop(&c, true);
}

/* Every read route answers 200 from a survivor at every moment of a leader
 * kill; every write route is acknowledged once a new leader is up. */
static void reads_answer(const struct th_agent *a, const char *pipe)
{
    static const char *const routes[] = {
        "/v1/health", "/v1/cluster", "/v1/status", "/v1/pipelines",
        "/v1/jobs",   "/v1/runs",    NULL};
    char url[160];
    for (int i = 0; routes[i] != NULL; i++) {
        snprintf(url, sizeof url, "http://%s%s", a->api_addr, routes[i]);
        cr_assert_eq(th_http("GET", url, NULL, NULL, NULL), 200,
                     "GET %s on %s failed during a leader kill", routes[i],
                     a->name);
    }
    if (pipe == NULL) {
        return;
    }
    snprintf(url, sizeof url, "http://%s/v1/pipelines/%s", a->api_addr, pipe);
    cr_assert_eq(th_http("GET", url, NULL, NULL, NULL), 200,
                 "GET %s on %s failed during a leader kill", url, a->name);
}

/* POST until acknowledged with `want`, spreading over the live nodes;
 * the same Idempotency-Key on every try. Returns the reply body. */
static char *write_until(struct cl *c,
                         const char *path,
                         const char *body,
                         const char *key,
                         long want,
                         const char *pipe)
{
    char url[160], hdr[96];
    const char *headers[] = {hdr, NULL};
    uint64_t deadline = th_now_ms() + 15000;
    long code = 0;
    char *out = NULL;
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", key);
    for (int attempt = 0; th_now_ms() < deadline; attempt++) {
        const struct th_agent *a = &c->a[attempt % c->n];
        if (a->pid == 0) {
            continue;
        }
        snprintf(url, sizeof url, "http://%s%s", a->api_addr, path);
        free(out);
        out = NULL;
        code = th_http("POST", url, body, headers, &out);
        if (code == want) {
            return out;
        }
        reads_answer(a, pipe);
        usleep(10000);
    }
    cr_assert_fail("POST %s never acknowledged (last %ld: %s)", path, code,
                   out != NULL ? out : "");
    return NULL;
}

struct jobs_done_arg
{
    struct cl *c;
    char ids[5][40];
    int n;
};

static bool all_jobs_succeeded_everywhere(void *p)
{
    struct jobs_done_arg *a = p;
    for (int i = 0; i < a->c->n; i++) {
        for (int k = 0; k < a->n; k++) {
            char url[160];
            json_t *j;
            bool ok;
            snprintf(url, sizeof url, "http://%s/v1/jobs/%s",
                     a->c->a[i].api_addr, a->ids[k]);
            j = th_get_json(url);
            ok = j != NULL &&
                 strcmp(json_string_value(json_object_get(j, "state")) != NULL
                            ? json_string_value(json_object_get(j, "state"))
                            : "",
                        "succeeded") == 0;
            json_decref(j);
            if (!ok) {
                return false;
            }
        }
    }
    return true;
}

Test(cluster, every_route_serves_while_the_leader_is_killed_repeatedly)
{
    struct cl c;
    struct view_arg alive = {&c, NULL, "alive", -1};
    struct jobs_done_arg jd;
    struct count_arg ca = {&c, 0};

    memset(&jd, 0, sizeof jd);
    jd.c = &c;
    cl_start(&c, 3, "repeat");
    cr_assert(th_wait(cl_all_see, &alive, 15000));
    cr_assert(th_wait(cl_same_leader, &c, 15000));
    free(write_until(&c, "/v1/pipelines",
                     "{\"name\":\"p-0\",\"command\":[\"true\"]}", "rk-p-0", 201,
                     NULL));
    ca.want = 1;
    /* reads are served from each replica: wait until p-0 is everywhere */
    cr_assert(th_wait(all_have_count, &ca, 10000));
    for (int round = 1; round <= 5; round++) {
        char leader[16], key[32], body[128];
        char *reply;
        json_t *j;
        int li;

        cl_leader_of(&c.a[0], leader);
        li = cl_index_of(&c, leader);
        cr_assert(li >= 0, "no leader before round %d", round);
        th_agent_kill(&c.a[li]);
        for (int i = 0; i < c.n; i++) {
            if (c.a[i].pid != 0) {
                reads_answer(&c.a[i], "p-0");
            }
        }
        /* writes of each kind through the survivors */
        snprintf(key, sizeof key, "rk-p-%d", round);
        snprintf(body, sizeof body,
                 "{\"name\":\"p-%d\",\"command\":[\"true\"]}", round);
        free(write_until(&c, "/v1/pipelines", body, key, 201, "p-0"));
        snprintf(key, sizeof key, "rk-j-%d", round);
        reply = write_until(&c, "/v1/jobs", "{\"command\":[\"true\"]}", key,
                            201, "p-0");
        j = json_loads(reply, 0, NULL);
        cr_assert(json_is_string(json_object_get(j, "id")), "%s", reply);
        snprintf(jd.ids[jd.n++], sizeof jd.ids[0], "%s",
                 json_string_value(json_object_get(j, "id")));
        json_decref(j);
        free(reply);
        snprintf(key, sizeof key, "rk-r-%d", round);
        free(write_until(&c, "/v1/pipelines/p-0/runs", "{}", key, 201, "p-0"));
        ca.want++;
        /* the killed node comes back on its data dir */
        cl_start_one(&c, li, c.a[(li + 1) % 3].gossip_addr, 3);
        cr_assert(th_wait(cl_all_see, &alive, 20000),
                  "round %d: restarted node never alive", round);
        cr_assert(th_wait(cl_same_leader, &c, 20000),
                  "round %d: no common leader", round);
    }
    cr_assert(th_wait(all_have_count, &ca, 20000),
              "not every node holds the 6 acknowledged pipelines");
    cr_assert(th_wait(all_jobs_succeeded_everywhere, &jd, 30000),
              "the jobs acknowledged during the kills did not all succeed "
              "on every replica");
    cl_stop(&c, true);
}
