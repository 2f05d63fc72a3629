/* Run routes: manual run, list, read, retry (CONTRACT.md "runs"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/api_int.h"
#include "config.h"
#include "err.h"
#include "log.h"
#include "util.h"

#define RUNS_DEFAULT_LIMIT 100
#define RUNS_MAX_LIMIT 10000

/* What a parked run request replies once its proposal or barrier is done
 * (struct pending's op; private to this file, so outside enum api_op). */
enum {
    RUNS_OP_MANUAL = 100, /* 201 with the new run (result value) */
    RUNS_OP_RETRY,        /* 201 with the new run (result value) */
    RUNS_OP_READ_LIST,    /* consistent GET /v1/runs */
    RUNS_OP_READ_ONE      /* consistent GET /v1/runs/:id */
};

static json_t *time_json(int64_t ms)
{
    char buf[TIME_STRLEN];
    if (ms == 0) {
        return json_null();
    }
    time_format_ms(ms, buf);
    return json_string(buf);
}

/* The CONTRACT run shape plus created_at, finished_at and retry_of. */
static json_t *run_to_json(const struct rsm_run *r)
{
    char id[RSM_RUN_ID_MAX];
    json_t *o = json_object();
    json_t *jobs = json_array();

    rsm_run_id_format(r->seq, id);
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "pipeline", json_string(r->pipeline));
    json_object_set_new(o, "state", json_string(rsm_run_state_name(r->state)));
    json_object_set_new(o, "trigger",
                        json_string(rsm_trigger_name(r->trigger)));
    json_object_set_new(o, "scheduled_for", time_json(r->scheduled_for_ms));
    for (unsigned i = 0; i < r->n_jobs; i++) {
        char jid[RSM_JOB_ID_MAX];
        rsm_job_id_format(r->jobs[i], jid);
        json_array_append_new(jobs, json_string(jid));
    }
    json_object_set_new(o, "jobs", jobs);
    json_object_set_new(o, "created_at", time_json(r->created_ms));
    json_object_set_new(o, "finished_at", time_json(r->finished_ms));
    if (r->retry_of != 0) {
        rsm_run_id_format(r->retry_of, id);
        json_object_set_new(o, "retry_of", json_string(id));
    }
    return o;
}

static void reply_run(struct api *a,
                      struct http_req *req,
                      uint64_t seq,
                      unsigned status)
{
    const struct rsm_run *r = rsm_fsm_run(rsm_state(a->deps.rsm), seq);
    char id[RSM_RUN_ID_MAX];
    if (r == NULL) {
        rsm_run_id_format(seq, id);
        http_reply_error(req, 404, "not_found", "run %s not found", id);
        return;
    }
    http_reply_json(req, status, run_to_json(r));
}

static void reply_runs(struct api *a, struct http_req *req)
{
    const struct rsm_fsm *f = rsm_state(a->deps.rsm);
    const char *pipeline = http_req_query(req, "pipeline");
    const char *limit_s = http_req_query(req, "limit");
    uint64_t limit = RUNS_DEFAULT_LIMIT;
    const struct rsm_run **runs;
    unsigned n;
    json_t *arr;

    if (pipeline != NULL && pipeline[0] == '\0') {
        pipeline = NULL;
    }
    if (pipeline != NULL && !config_valid_name(pipeline)) {
        http_reply_error(req, 400, "bad_request",
                         "pipeline: '%.64s' is not a valid pipeline name",
                         pipeline);
        return;
    }
    if (limit_s != NULL &&
        (parse_u64(limit_s, RUNS_MAX_LIMIT, &limit) != 0 || limit == 0)) {
        http_reply_error(req, 400, "bad_request",
                         "limit: must be an integer in [1, %d]",
                         RUNS_MAX_LIMIT);
        return;
    }
    runs = malloc(limit * sizeof *runs);
    if (runs == NULL) {
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    n = rsm_fsm_runs(f, pipeline, runs, (unsigned)limit);
    if (n > limit) {
        n = (unsigned)limit;
    }
    arr = json_array();
    for (unsigned i = 0; i < n; i++) {
        json_array_append_new(arr, run_to_json(runs[i]));
    }
    free(runs);
    http_reply_json(req, 200, json_pack("{s:o}", "runs", arr));
}

/* --- parked requests ------------------------------------------------- */

static void runs_proposed_cb(void *data, int rv, const struct rsm_result *res)
{
    struct pending *p = data;

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
    /* Both MANUAL and RETRY report the new run's number. */
    reply_run(p->api, p->req, res->value, 201);
done:
    api__pending_free(p);
}

static void runs_propose(struct api *a,
                         struct http_req *req,
                         struct rsm_cmd *cmd,
                         int op)
{
    struct pending *p = api__pending_new(a, req, op, NULL);
    int rv;
    if (p == NULL) {
        rsm_cmd_clear(cmd);
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    rv = rsm_propose(a->deps.rsm, cmd, runs_proposed_cb, p);
    if (rv != 0) {
        api__pending_free(p);
        api__reply_err(req, rv, err_str(rv));
    }
}

/* Renders a consistent read after its barrier (api__maybe_consistent). */
static void runs_read(struct api *a,
                      struct http_req *req,
                      int op,
                      const char *id)
{
    uint64_t seq;
    if (op == RUNS_OP_READ_LIST) {
        reply_runs(a, req);
    } else if (rsm_run_id_parse(id, &seq) == 0) {
        reply_run(a, req, seq, 200);
    } else {
        http_reply_error(req, 404, "not_found", "run not found");
    }
}

/* --- routes ---------------------------------------------------------- */

static void pipeline_run_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const char *name = http_req_param(req, "name");
    struct rsm_cmd cmd;

    if (!config_valid_name(name)) {
        http_reply_error(req, 404, "not_found", "pipeline '%.64s' not found",
                         name);
        return;
    }
    rsm_cmd_init(&cmd, RSM_CMD_RUN_MANUAL);
    if (api__idem_from_header(req, &cmd) != 0) {
        rsm_cmd_clear(&cmd);
        return;
    }
    str_copy(cmd.u.run_manual.pipeline, sizeof cmd.u.run_manual.pipeline, name);
    /* An unknown pipeline is the FSM's call (this replica may lag): its
     * ERR_NOTFOUND rejection becomes a 404. */
    runs_propose(a, req, &cmd, RUNS_OP_MANUAL);
}

static void runs_list_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    if (api__maybe_consistent(a, req, RUNS_OP_READ_LIST, NULL, runs_read)) {
        return;
    }
    reply_runs(a, req);
}

static void run_get_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const char *id = http_req_param(req, "id");
    uint64_t seq;
    if (rsm_run_id_parse(id, &seq) != 0) {
        http_reply_error(req, 404, "not_found",
                         "run '%.40s' not found (ids look like r42)", id);
        return;
    }
    if (api__maybe_consistent(a, req, RUNS_OP_READ_ONE, id, runs_read)) {
        return;
    }
    reply_run(a, req, seq, 200);
}

static void run_retry_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const char *id = http_req_param(req, "id");
    const struct rsm_run *r;
    struct rsm_cmd cmd;
    uint64_t seq;

    if (rsm_run_id_parse(id, &seq) != 0) {
        http_reply_error(req, 404, "not_found",
                         "run '%.40s' not found (ids look like r42)", id);
        return;
    }
    r = rsm_fsm_run(rsm_state(a->deps.rsm), seq);
    if (r == NULL) {
        http_reply_error(req, 404, "not_found", "run '%.40s' not found", id);
        return;
    }
    if (r->state != RSM_RUN_FAILED) {
        http_reply_error(req, 409, "conflict",
                         "run %.40s is %s: only a failed run can be retried",
                         id, rsm_run_state_name(r->state));
        return;
    }
    rsm_cmd_init(&cmd, RSM_CMD_RUN_RETRY);
    if (api__idem_from_header(req, &cmd) != 0) {
        rsm_cmd_clear(&cmd);
        return;
    }
    cmd.u.run_retry.run = seq;
    runs_propose(a, req, &cmd, RUNS_OP_RETRY);
}

int api__runs_init(struct api *a)
{
    struct
    {
        const char *method;
        const char *pattern;
        http_handler h;
    } routes[] = {
        {"POST", "/v1/pipelines/:name/runs", pipeline_run_cb},
        {"GET", "/v1/runs", runs_list_cb},
        {"GET", "/v1/runs/:id", run_get_cb},
        {"POST", "/v1/runs/:id/retry", run_retry_cb},
    };
    for (size_t i = 0; i < ARRAY_SIZE(routes); i++) {
        int rv = http_route(a->deps.http, routes[i].method, routes[i].pattern,
                            routes[i].h, a);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}
