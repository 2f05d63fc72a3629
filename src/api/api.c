/* Routes: health, cluster, pipelines, and the internal forwarding route. */
#include "api/api.h"

#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "config.h"
#include "err.h"
#include "log.h"
#include "util.h"

static void pending_abort_cb(struct http_req *req, void *data)
{
    struct pending *p = data;
    UNUSED(req);
    /* During server close the engine frees the request right after this
     * callback; otherwise it stays valid until our (late) reply. */
    if (p->api->closing) {
        p->req = NULL;
    }
}

struct pending *api__pending_new(struct api *a,
                                 struct http_req *req,
                                 int op,
                                 const char *name)
{
    struct pending *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    p->api = a;
    p->req = req;
    p->op = op;
    str_copy(p->name, sizeof p->name, name != NULL ? name : "");
    http_req_on_abort(req, pending_abort_cb, p);
    a->inflight++;
    return p;
}

void api__pending_free(struct pending *p)
{
    p->api->inflight--;
    free(p);
}

void api__reply_err(struct http_req *req, int err, const char *msg)
{
    unsigned status;
    const char *code;
    api__status_for(err, &status, &code);
    http_reply_error(req, status, code, "%s", msg);
}

/* --- health and cluster -------------------------------------------- */

/* Still 200 and "status":"ok" when diverged (CONTRACT.md fixes that
 * body; the flag is an extension): the flag says this replica disagrees with
 * the leader's, and when the LEADER is the odd one it is the followers that
 * raise it, so failing their health checks would steer traffic to the
 * wrong node. Monitoring alerts on "diverged" (docs/http-api.md). */
static void health_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    bool diverged = rsm_diverged(a->deps.rsm);
    http_reply_json(req, 200,
                    json_pack("{s:s,s:s,s:b}", "status", "ok", "node",
                              a->deps.node_name, "diverged", diverged));
}

static void cluster_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const struct gossip *g = a->deps.gossip;
    uint64_t leader = rsm_leader_id(a->deps.rsm);
    json_t *nodes = json_array();
    json_t *leader_name = json_null();
    unsigned n = gossip_count(g);

    for (unsigned i = 0; i < n; i++) {
        const struct gossip_member *m = gossip_member_at(g, i);
        enum rsm_role role = rsm_role_of(a->deps.rsm, m->id);
        json_t *o = json_pack(
            "{s:s,s:s,s:s,s:s,s:I,s:I,s:b,s:s,s:s}", "name", m->name, "state",
            gossip_state_name(m->state), "role", rsm_role_name(role), "api",
            m->api, "running", (json_int_t)m->load.running, "slots",
            (json_int_t)m->load.slots, "draining", (m->meta & 2u) != 0, "raft",
            m->raft, "gossip", m->gossip);
        if (m->id == leader) {
            json_decref(leader_name);
            leader_name = json_string(m->name);
        }
        json_array_append_new(nodes, o);
    }
    if (json_is_null(leader_name) && leader != 0) {
        const struct rsm_member *rm =
            rsm_fsm_member(rsm_state(a->deps.rsm), leader);
        if (rm != NULL) {
            json_decref(leader_name);
            leader_name = json_string(rm->name);
        }
    }
    http_reply_json(
        req, 200,
        json_pack("{s:o,s:o}", "leader", leader_name, "nodes", nodes));
}

/* --- pipelines ------------------------------------------------------ */

static void reply_pipeline(struct http_req *req,
                           struct api *a,
                           const char *name,
                           unsigned status)
{
    const struct rsm_pipeline *p =
        rsm_fsm_pipeline(rsm_state(a->deps.rsm), name);
    if (p == NULL) {
        http_reply_error(req, 404, "not_found", "pipeline '%s' not found",
                         name);
        return;
    }
    http_reply_json(req, status, api__pipeline_to_json(p));
}

static void reply_pipelines(struct http_req *req, struct api *a)
{
    const struct rsm_fsm *f = rsm_state(a->deps.rsm);
    unsigned n = rsm_fsm_pipeline_count(f);
    const struct rsm_pipeline **all = calloc(n + 1, sizeof *all);
    json_t *arr = json_array();
    if (all == NULL) {
        json_decref(arr);
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    n = rsm_fsm_pipelines(f, all, n);
    for (unsigned i = 0; i < n; i++) {
        json_array_append_new(arr, api__pipeline_to_json(all[i]));
    }
    free(all);
    http_reply_json(req, 200, json_pack("{s:o}", "pipelines", arr));
}

static void proposed_cb(void *data, int rv, const struct rsm_result *res)
{
    struct pending *p = data;
    struct api *a = p->api;

    if (p->req == NULL) {
        goto done;
    }
    if (rv != 0) {
        api__reply_err(p->req, rv,
                       rv == ERR_UNAVAILABLE
                           ? "no leader reachable in time; retry with the same "
                             "Idempotency-Key"
                           : err_str(rv));
        goto done;
    }
    if (res->code != 0) {
        api__reply_err(p->req, res->code, res->message);
        goto done;
    }
    switch (p->op) {
        case OP_PIPELINE_CREATE:
            reply_pipeline(p->req, a, p->name, 201);
            break;
        case OP_PIPELINE_UPDATE:
            reply_pipeline(p->req, a, p->name, 200);
            break;
        case OP_PIPELINE_DELETE:
            http_reply_json(
                p->req, 200,
                json_pack("{s:s,s:b}", "name", p->name, "deleted", 1));
            break;
        default:
            api__jobs_proposed(a, p, res);
            break;
    }
done:
    api__pending_free(p);
}

int api__idem_from_header(struct http_req *req, struct rsm_cmd *cmd)
{
    const char *key = http_req_header(req, "Idempotency-Key");
    if (key == NULL) {
        return 0;
    }
    if (key[0] == '\0' || strlen(key) > RSM_IDEM_MAX) {
        http_reply_error(req, 400, "bad_request",
                         "Idempotency-Key: must be 1-%d characters",
                         RSM_IDEM_MAX);
        return ERR_INVALID;
    }
    /* Namespace client keys so they can never collide with keys the
     * runtime generates for its own retries. */
    str_copy(cmd->idem_key, sizeof cmd->idem_key, key);
    return 0;
}

void api__propose(struct api *a,
                  struct http_req *req,
                  struct rsm_cmd *cmd,
                  int op,
                  const char *name)
{
    struct pending *p = api__pending_new(a, req, op, name);
    int rv;
    if (p == NULL) {
        rsm_cmd_clear(cmd);
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    rv = rsm_propose(a->deps.rsm, cmd, proposed_cb, p);
    if (rv != 0) {
        api__pending_free(p);
        api__reply_err(req, rv, err_str(rv));
    }
}

static void barrier_done_cb(void *data, int rv)
{
    struct pending *p = data;
    if (p->req == NULL) {
        /* server closed meanwhile */
    } else if (rv != 0) {
        api__reply_err(p->req, rv,
                       "consistent read failed: no leader reachable");
    } else {
        p->reader(p->api, p->req, p->op, p->name);
    }
    api__pending_free(p);
}

/* ?consistent=true: answer only after a barrier through the leader. */
bool api__maybe_consistent(struct api *a,
                           struct http_req *req,
                           int op,
                           const char *name,
                           api_read_fn reader)
{
    const char *c = http_req_query(req, "consistent");
    struct pending *p;
    int rv;
    if (c == NULL || (strcmp(c, "true") != 0 && strcmp(c, "1") != 0)) {
        return false;
    }
    p = api__pending_new(a, req, op, name);
    if (p == NULL) {
        http_reply_error(req, 500, "internal", "out of memory");
        return true;
    }
    p->reader = reader;
    rv = rsm_barrier(a->deps.rsm, barrier_done_cb, p);
    if (rv != 0) {
        api__pending_free(p);
        api__reply_err(req, rv, err_str(rv));
    }
    return true;
}

static void pipelines_read(struct api *a,
                           struct http_req *req,
                           int op,
                           const char *name)
{
    if (op == OP_READ_PIPELINES) {
        reply_pipelines(req, a);
    } else {
        reply_pipeline(req, a, name, 200);
    }
}

static void pipelines_list_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    if (api__maybe_consistent(a, req, OP_READ_PIPELINES, NULL,
                              pipelines_read)) {
        return;
    }
    reply_pipelines(req, a);
}

static void pipeline_get_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const char *name = http_req_param(req, "name");
    if (api__maybe_consistent(a, req, OP_READ_PIPELINE, name, pipelines_read)) {
        return;
    }
    reply_pipeline(req, a, name, 200);
}

static void pipeline_write(struct api *a,
                           struct http_req *req,
                           const char *path_name)
{
    char errmsg[ERRMSG_SIZE];
    struct rsm_cmd cmd;
    json_t *body = http_req_json(req, errmsg);
    json_t *ver;
    int rv;

    if (body == NULL) {
        http_reply_error(req, 400, "bad_request", "%s", errmsg);
        return;
    }
    rsm_cmd_init(&cmd, path_name == NULL ? RSM_CMD_PIPELINE_CREATE
                                         : RSM_CMD_PIPELINE_UPDATE);
    if (api__idem_from_header(req, &cmd) != 0) {
        rsm_cmd_clear(&cmd);
        return;
    }
    rv =
        api__pipeline_from_json(body, path_name, a->deps.check_schedule,
                                path_name == NULL ? &cmd.u.pipeline_create
                                                  : &cmd.u.pipeline_update.spec,
                                errmsg);
    if (rv != 0) {
        rsm_cmd_clear(&cmd);
        api__reply_err(req, rv, errmsg);
        return;
    }
    if (path_name != NULL) {
        ver = json_object_get(body, "version");
        if (ver != NULL && !json_is_null(ver)) {
            if (!json_is_integer(ver) || json_integer_value(ver) < 1) {
                rsm_cmd_clear(&cmd);
                http_reply_error(req, 400, "bad_request",
                                 "version: must be a positive integer (the "
                                 "version you read; omit to overwrite)");
                return;
            }
            cmd.u.pipeline_update.expect_version =
                (uint64_t)json_integer_value(ver);
        }
    }
    {
        char name[RSM_NAME_MAX + 1];
        str_copy(name, sizeof name,
                 path_name == NULL ? cmd.u.pipeline_create.name : path_name);
        api__propose(
            a, req, &cmd,
            path_name == NULL ? OP_PIPELINE_CREATE : OP_PIPELINE_UPDATE, name);
    }
}

static void pipeline_create_cb(struct http_req *req, void *data)
{
    pipeline_write(data, req, NULL);
}

static void pipeline_put_cb(struct http_req *req, void *data)
{
    const char *name = http_req_param(req, "name");
    if (!config_valid_name(name)) {
        http_reply_error(req, 400, "bad_request",
                         "name: '%.64s' is not a valid pipeline name", name);
        return;
    }
    pipeline_write(data, req, name);
}

static void pipeline_delete_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const char *name = http_req_param(req, "name");
    struct rsm_cmd cmd;
    if (!config_valid_name(name)) {
        http_reply_error(req, 404, "not_found", "pipeline not found");
        return;
    }
    rsm_cmd_init(&cmd, RSM_CMD_PIPELINE_DELETE);
    if (api__idem_from_header(req, &cmd) != 0) {
        rsm_cmd_clear(&cmd);
        return;
    }
    str_copy(cmd.u.pipeline_delete.name, sizeof cmd.u.pipeline_delete.name,
             name);
    api__propose(a, req, &cmd, OP_PIPELINE_DELETE, name);
}

/* --- internal: forwarded proposals ----------------------------------- */

static void forwarded_done(void *data,
                           int rv,
                           const struct rsm_result *res,
                           unsigned n)
{
    struct pending *p = data;
    struct http_req *req = p->req;
    json_t *arr;
    api__pending_free(p);
    if (req == NULL) {
        return;
    }
    if (rv != 0) {
        unsigned status;
        const char *code;
        api__status_for(rv, &status, &code);
        http_reply_error(req, rv == ERR_NOTLEADER ? 421 : status,
                         rv == ERR_NOTLEADER ? "not_leader" : code, "%s",
                         err_str(rv));
        return;
    }
    arr = json_array();
    for (unsigned i = 0; i < n; i++) {
        json_array_append_new(
            arr, json_pack("{s:i,s:s,s:I,s:I}", "code", res[i].code, "message",
                           res[i].message, "value", (json_int_t)res[i].value,
                           "index", (json_int_t)res[i].index));
    }
    http_reply_json(req, 200, json_pack("{s:o}", "results", arr));
}

static void internal_propose_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    size_t len;
    const char *body = http_req_body(req, &len);
    struct pending *p = api__pending_new(a, req, OP_FORWARD, NULL);
    int rv;
    if (p == NULL) {
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    rv = rsm_propose_encoded(a->deps.rsm, body, len, forwarded_done, p);
    if (rv != 0) {
        forwarded_done(p, rv, NULL, 0);
    }
}

int api_init(struct api *a, const struct api_deps *deps)
{
    struct
    {
        const char *method;
        const char *pattern;
        http_handler h;
    } routes[] = {
        {"GET", "/v1/health", health_cb},
        {"GET", "/v1/cluster", cluster_cb},
        {"GET", "/v1/pipelines", pipelines_list_cb},
        {"POST", "/v1/pipelines", pipeline_create_cb},
        {"GET", "/v1/pipelines/:name", pipeline_get_cb},
        {"PUT", "/v1/pipelines/:name", pipeline_put_cb},
        {"DELETE", "/v1/pipelines/:name", pipeline_delete_cb},
        {"POST", "/internal/v1/propose", internal_propose_cb},
    };
    int rv;
    memset(a, 0, sizeof *a);
    a->deps = *deps;
    for (size_t i = 0; i < ARRAY_SIZE(routes); i++) {
        rv = http_route(deps->http, routes[i].method, routes[i].pattern,
                        routes[i].h, a);
        if (rv != 0) {
            return rv;
        }
    }
    rv = api__jobs_init(a);
    if (rv == 0) {
        rv = api__runs_init(a);
    }
    if (rv == 0) {
        rv = api__status_init(a);
    }
    return rv;
}

void api_shutdown(struct api *a)
{
    a->closing = 1;
    api__jobs_shutdown(a);
}
