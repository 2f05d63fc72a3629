/* The runs HTTP routes over a real single-node rsm, the API server and the
 * firing loop on one uv loop (client: httpc on the same loop). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "err.h"
#include "httpc.h"
#include "lib/harness.h"
#include "raft/rsm.h"
#include "sched/fire.h"
#include "util.h"

TestSuite(fire_api, .timeout = 60);

static uv_loop_t loop;
static uv_timer_t pulse;
static char root[512];
static struct rsm *node;
static struct fire fire;
static struct http_server srv;
static struct httpc cli;
static struct api api;
static char base[64];
static bool fire_on;
static bool done_flag[4];

static void applied_cb(struct rsm *r,
                       const struct rsm_cmd *cmd,
                       const struct rsm_result *res,
                       void *ud)
{
    (void)r;
    (void)ud;
    if (fire_on) {
        fire_on_applied(&fire, cmd, res);
        api_on_applied(&api, cmd, res);
    }
}

static void role_cb(struct rsm *r, void *ud)
{
    (void)r;
    (void)ud;
    if (fire_on) {
        fire_on_role(&fire);
    }
}

static int forward(struct rsm *r,
                   uint64_t leader_id,
                   const void *buf,
                   size_t len,
                   rsm_forward_done done,
                   void *req,
                   void *ud)
{
    (void)r;
    (void)leader_id;
    (void)buf;
    (void)len;
    (void)done;
    (void)req;
    (void)ud;
    return ERR_UNAVAILABLE;
}

static bool run_until(bool (*cond)(void *), void *arg, unsigned timeout_ms)
{
    uint64_t end = th_now_ms() + timeout_ms;
    while (th_now_ms() < end) {
        if (cond(arg)) {
            return true;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    return cond(arg);
}

static bool is_leader(void *arg)
{
    (void)arg;
    return rsm_is_leader(node);
}

static bool flag(void *arg)
{
    return *(bool *)arg;
}

static void pulse_cb(uv_timer_t *t)
{
    (void)t;
}

static void setup(void)
{
    struct rsm_config cfg;
    struct rsm_server self;
    struct http_server_config hc;
    struct api_deps deps;
    char errmsg[ERRMSG_SIZE] = "";
    uint16_t ports[2];

    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &pulse);
    uv_timer_start(&pulse, pulse_cb, 5, 5);
    th_tmpdir(root, sizeof root, "fireapi");
    th_free_ports(ports, 2);

    rsm_config_defaults(&cfg);
    cfg.id = 1;
    str_copy(cfg.name, sizeof cfg.name, "n1");
    str_copy(cfg.raft.host, sizeof cfg.raft.host, "127.0.0.1");
    cfg.raft.port = ports[0];
    snprintf(cfg.dir, sizeof cfg.dir, "%s/n1", root);
    cfg.election_ms = 150;
    cfg.heartbeat_ms = 15;
    cfg.forward = forward;
    cfg.on_applied = applied_cb;
    cfg.on_role = role_cb;
    node = rsm_create(&loop, &cfg, errmsg);
    cr_assert_not_null(node, "%s", errmsg);
    cr_assert_eq(rsm_start(node, errmsg), 0, "%s", errmsg);
    self.id = 1;
    snprintf(self.raft, sizeof self.raft, "127.0.0.1:%u", ports[0]);
    cr_assert_eq(rsm_bootstrap(node, &self, 1), 0);
    cr_assert(run_until(is_leader, NULL, 5000), "no leader");

    http_server_config_defaults(&hc);
    hc.bind.port = ports[1];
    cr_assert_eq(http_server_init(&srv, &loop, &hc), 0);
    memset(&deps, 0, sizeof deps);
    deps.http = &srv;
    deps.rsm = node;
    deps.node_name = "n1";
    deps.node_id = 1;
    cr_assert_eq(api_init(&api, &deps), 0);
    cr_assert_eq(http_server_start(&srv, errmsg), 0, "%s", errmsg);
    snprintf(base, sizeof base, "http://127.0.0.1:%u", ports[1]);
    cr_assert_eq(httpc_init(&cli, &loop), 0);
    cr_assert_eq(fire_init(&fire, &loop, node), 0);
    fire_on = true;
}

static void fire_closed_cb(struct fire *f)
{
    (void)f;
    done_flag[0] = true;
}

static void srv_closed_cb(struct http_server *s)
{
    (void)s;
    done_flag[1] = true;
}

static void cli_closed_cb(struct httpc *c)
{
    (void)c;
    done_flag[2] = true;
}

static void rsm_closed_cb(struct rsm *r, void *data)
{
    (void)r;
    (void)data;
    done_flag[3] = true;
}

static void teardown(void)
{
    memset(done_flag, 0, sizeof done_flag);
    fire_on = false;
    fire_close(&fire, fire_closed_cb);
    api_shutdown(&api);
    http_server_close(&srv, srv_closed_cb);
    httpc_close(&cli, cli_closed_cb);
    cr_assert(run_until(flag, &done_flag[0], 5000));
    cr_assert(run_until(flag, &done_flag[1], 5000));
    cr_assert(run_until(flag, &done_flag[2], 5000));
    rsm_close(node, rsm_closed_cb, NULL);
    cr_assert(run_until(flag, &done_flag[3], 5000));
    uv_close((uv_handle_t *)&pulse, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "leaked handles");
    th_rmrf(root);
}

/* --- HTTP helper ------------------------------------------------------- */

struct resp
{
    bool done;
    long status;
    json_t *body;
};

static void resp_cb(struct httpc_resp *r, void *data)
{
    struct resp *out = data;
    out->done = true;
    out->status = r->status;
    out->body = r->len > 0 ? json_loadb(r->body, r->len, 0, NULL) : NULL;
}

static bool resp_done(void *arg)
{
    return ((struct resp *)arg)->done;
}

/* Perform one request; returns the status and (owned) JSON body in *body
 * (NULL if none). */
static long req(const char *method,
                const char *path,
                const char *json,
                json_t **body)
{
    struct resp r;
    char url[512];
    static const char *const hdrs[] = {"Content-Type: application/json", NULL};
    memset(&r, 0, sizeof r);
    snprintf(url, sizeof url, "%s%s", base, path);
    cr_assert_eq(
        httpc_request(&cli, method, url, json, json != NULL ? strlen(json) : 0,
                      hdrs, 5000, resp_cb, &r),
        0);
    cr_assert(run_until(resp_done, &r, 6000), "%s %s: no answer", method, path);
    if (body != NULL) {
        *body = r.body;
    } else {
        json_decref(r.body);
    }
    return r.status;
}

static const char *str_of(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_string(v), "field %s missing", key);
    return json_string_value(v);
}

/* --- proposals (to fail a run's job) ------------------------------------ */

struct outcome
{
    bool fired;
    int rv;
    struct rsm_result res;
};

static void proposed_cb(void *data, int rv, const struct rsm_result *res)
{
    struct outcome *o = data;
    o->fired = true;
    o->rv = rv;
    if (res != NULL) {
        o->res = *res;
    }
}

static bool outcome_fired(void *arg)
{
    return ((struct outcome *)arg)->fired;
}

static uint64_t propose_ok(struct rsm_cmd *cmd)
{
    struct outcome o;
    memset(&o, 0, sizeof o);
    cr_assert_eq(rsm_propose(node, cmd, proposed_cb, &o), 0);
    cr_assert(run_until(outcome_fired, &o, 5000));
    cr_assert_eq(o.rv, 0, "%s", err_str(o.rv));
    cr_assert_eq(o.res.code, 0, "%s", o.res.message);
    return o.res.value;
}

/* Drive job seq to failed (exit 1) as a node would. */
static void fail_job(uint64_t seq)
{
    struct rsm_cmd c;
    uint64_t epoch;

    rsm_cmd_init(&c, RSM_CMD_MEMBER_PUT);
    c.u.member_put.id = 1;
    str_copy(c.u.member_put.name, sizeof c.u.member_put.name, "n1");
    str_copy(c.u.member_put.api, sizeof c.u.member_put.api, "127.0.0.1:1");
    str_copy(c.u.member_put.raft, sizeof c.u.member_put.raft, "127.0.0.1:2");
    str_copy(c.u.member_put.gossip, sizeof c.u.member_put.gossip,
             "127.0.0.1:3");
    propose_ok(&c);
    rsm_cmd_init(&c, RSM_CMD_NODE_RENEW);
    c.u.node_renew.node = 1;
    c.u.node_renew.lease_ms = 60000;
    propose_ok(&c);
    rsm_cmd_init(&c, RSM_CMD_JOB_CLAIM);
    c.u.job_claim.job = seq;
    c.u.job_claim.node = 1;
    c.u.job_claim.attempt = 1;
    epoch = propose_ok(&c);
    rsm_cmd_init(&c, RSM_CMD_JOB_START);
    c.u.job_start.job = seq;
    c.u.job_start.epoch = epoch;
    propose_ok(&c);
    rsm_cmd_init(&c, RSM_CMD_JOB_FINISH);
    c.u.job_finish.job = seq;
    c.u.job_finish.epoch = epoch;
    c.u.job_finish.end = RSM_END_EXITED;
    c.u.job_finish.exit_code = 1;
    propose_ok(&c);
}

/* --- tests ------------------------------------------------------------- */

Test(fire_api, manual_list_get_retry, .init = setup, .fini = teardown)
{
    json_t *b = NULL, *runs, *jobs;
    char path[128], run_id[32], retry_id[32];
    uint64_t job_seq;

    cr_assert_eq(req("POST", "/v1/pipelines",
                     "{\"name\":\"build\",\"command\":[\"/bin/false\"]}", NULL),
                 201);

    /* Manual run. */
    cr_assert_eq(req("POST", "/v1/pipelines/build/runs", NULL, &b), 201);
    str_copy(run_id, sizeof run_id, str_of(b, "id"));
    cr_assert_eq(run_id[0], 'r');
    cr_assert_str_eq(str_of(b, "pipeline"), "build");
    cr_assert_str_eq(str_of(b, "state"), "running");
    cr_assert_str_eq(str_of(b, "trigger"), "manual");
    cr_assert(json_is_string(json_object_get(b, "scheduled_for")));
    cr_assert(json_is_string(json_object_get(b, "created_at")));
    cr_assert(json_is_null(json_object_get(b, "finished_at")));
    cr_assert_null(json_object_get(b, "retry_of"));
    jobs = json_object_get(b, "jobs");
    cr_assert_eq(json_array_size(jobs), 1);
    cr_assert_eq(
        rsm_job_id_parse(json_string_value(json_array_get(jobs, 0)), &job_seq),
        0);
    json_decref(b);

    /* Read it back, alone and in lists. */
    snprintf(path, sizeof path, "/v1/runs/%s", run_id);
    cr_assert_eq(req("GET", path, NULL, &b), 200);
    cr_assert_str_eq(str_of(b, "id"), run_id);
    json_decref(b);
    snprintf(path, sizeof path, "/v1/runs/%s?consistent=true", run_id);
    cr_assert_eq(req("GET", path, NULL, &b), 200);
    cr_assert_str_eq(str_of(b, "id"), run_id);
    json_decref(b);
    cr_assert_eq(req("POST", "/v1/pipelines/build/runs", NULL, NULL), 201);
    cr_assert_eq(req("GET", "/v1/runs?pipeline=build", NULL, &b), 200);
    runs = json_object_get(b, "runs");
    cr_assert_eq(json_array_size(runs), 2);
    cr_assert_str_neq(str_of(json_array_get(runs, 0), "id"), run_id,
                      "newest first");
    cr_assert_str_eq(str_of(json_array_get(runs, 1), "id"), run_id);
    json_decref(b);
    cr_assert_eq(req("GET", "/v1/runs?limit=1&consistent=true", NULL, &b), 200);
    cr_assert_eq(json_array_size(json_object_get(b, "runs")), 1);
    json_decref(b);
    cr_assert_eq(req("GET", "/v1/runs?pipeline=other", NULL, &b), 200);
    cr_assert_eq(json_array_size(json_object_get(b, "runs")), 0);
    json_decref(b);

    /* A running run cannot be retried. */
    snprintf(path, sizeof path, "/v1/runs/%s/retry", run_id);
    cr_assert_eq(req("POST", path, NULL, &b), 409);
    cr_assert_str_eq(str_of(json_object_get(b, "error"), "code"), "conflict");
    json_decref(b);

    /* Its job fails: the run fails, and a retry makes a new run. */
    fail_job(job_seq);
    snprintf(path, sizeof path, "/v1/runs/%s", run_id);
    cr_assert_eq(req("GET", path, NULL, &b), 200);
    cr_assert_str_eq(str_of(b, "state"), "failed");
    cr_assert(json_is_string(json_object_get(b, "finished_at")));
    json_decref(b);
    snprintf(path, sizeof path, "/v1/runs/%s/retry", run_id);
    cr_assert_eq(req("POST", path, NULL, &b), 201);
    str_copy(retry_id, sizeof retry_id, str_of(b, "id"));
    cr_assert_str_neq(retry_id, run_id);
    cr_assert_str_eq(str_of(b, "trigger"), "retry");
    cr_assert_str_eq(str_of(b, "retry_of"), run_id);
    cr_assert_eq(json_array_size(json_object_get(b, "jobs")), 1);
    json_decref(b);
}

Test(fire_api, errors, .init = setup, .fini = teardown)
{
    json_t *b = NULL;

    cr_assert_eq(req("POST", "/v1/pipelines/nope/runs", NULL, &b), 404);
    cr_assert_str_eq(str_of(json_object_get(b, "error"), "code"), "not_found");
    json_decref(b);
    cr_assert_eq(req("POST", "/v1/pipelines/bad%20name/runs", NULL, NULL), 404);
    cr_assert_eq(req("GET", "/v1/runs/r999", NULL, NULL), 404);
    cr_assert_eq(req("GET", "/v1/runs/r999?consistent=true", NULL, NULL), 404);
    cr_assert_eq(req("GET", "/v1/runs/j1", NULL, NULL), 404);
    cr_assert_eq(req("GET", "/v1/runs/r01", NULL, NULL), 404);
    cr_assert_eq(req("POST", "/v1/runs/r999/retry", NULL, NULL), 404);
    cr_assert_eq(req("POST", "/v1/runs/xyz/retry", NULL, NULL), 404);
    cr_assert_eq(req("GET", "/v1/runs?limit=0", NULL, &b), 400);
    cr_assert_str_eq(str_of(json_object_get(b, "error"), "code"),
                     "bad_request");
    json_decref(b);
    cr_assert_eq(req("GET", "/v1/runs?limit=abc", NULL, NULL), 400);
    cr_assert_eq(req("GET", "/v1/runs?limit=99999999", NULL, NULL), 400);
    cr_assert_eq(req("GET", "/v1/runs?pipeline=..", NULL, NULL), 400);
    cr_assert_eq(req("DELETE", "/v1/runs/r1", NULL, NULL), 405);
}

struct sched_arg
{
    unsigned want;
};

static bool has_runs(void *arg)
{
    struct sched_arg *a = arg;
    const struct rsm_run *out[8];
    return rsm_fsm_runs(rsm_state(node), "tick", out, 8) >= a->want;
}

/* End to end: a pipeline created over HTTP with a schedule fires, and its
 * runs show up with trigger "schedule" and whole-second scheduled_for. */
Test(fire_api, scheduled_runs_listed, .init = setup, .fini = teardown)
{
    struct sched_arg want = {2};
    json_t *b = NULL, *runs;

    cr_assert_eq(req("POST", "/v1/pipelines",
                     "{\"name\":\"tick\",\"command\":[\"/bin/true\"],"
                     "\"schedule\":\"@every 1s\"}",
                     NULL),
                 201);
    cr_assert(run_until(has_runs, &want, 4000), "no scheduled runs");
    cr_assert_eq(req("GET", "/v1/runs?pipeline=tick", NULL, &b), 200);
    runs = json_object_get(b, "runs");
    cr_assert_geq(json_array_size(runs), 2);
    for (size_t i = 0; i < json_array_size(runs); i++) {
        json_t *r = json_array_get(runs, i);
        const char *sf = str_of(r, "scheduled_for");
        int64_t ms = 0;
        cr_assert_str_eq(str_of(r, "trigger"), "schedule");
        cr_assert_eq(time_parse_ms(sf, &ms), 0);
        cr_assert_eq(ms % 1000, 0, "%s", sf);
    }
    json_decref(b);
}
