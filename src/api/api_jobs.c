/* Job routes: submit, list, read, cancel, logs (plain and live SSE). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/api_int.h"
#include "err.h"
#include "log.h"
#include "util.h"

#define JOBS_DEFAULT_LIMIT 100
#define JOBS_MAX_LIMIT 10000
#define CHUNKS_MAX 4096       /* > (head + tail cap) / smallest batch */
#define FOLLOW_LINE_MAX 65536 /* a longer partial line is flushed as is */

/* A live log stream: the job's output from `offset` on, as one SSE event
 * per line ("id: <offset after the line>"), then "event: end". */
struct api_follower
{
    struct api *api;
    struct http_stream *st; /* valid until stream_closed_cb */
    int ended;              /* http_stream_end called */
    uint64_t job;
    uint64_t offset; /* raw output offset sent so far (incl. partial) */
    char *partial;   /* bytes of an unfinished line; owned */
    size_t partial_len;
    struct api_follower *next;
};

static void follower_unlink(struct api *a, struct api_follower *f)
{
    struct api_follower **pp = &a->followers;
    while (*pp != NULL) {
        if (*pp == f) {
            *pp = f->next;
            return;
        }
        pp = &(*pp)->next;
    }
}

static void follower_free(struct api_follower *f)
{
    free(f->partial);
    free(f);
}

static void stream_closed_cb(struct http_stream *st, void *data)
{
    struct api_follower *f = data;
    UNUSED(st);
    follower_unlink(f->api, f);
    follower_free(f);
}

/* Send one complete line (without its newline) as an event. */
static int send_line(struct api_follower *f,
                     const char *line,
                     size_t len,
                     uint64_t end_offset)
{
    if (len > 0 && line[len - 1] == '\r') {
        len--;
    }
    /* A bare CR inside a line would end the SSE line early. */
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '\r') {
            ((char *)line)[i] = ' ';
        }
    }
    return http_stream_printf(f->st, "id: %llu\ndata: %.*s\n\n",
                              (unsigned long long)end_offset, (int)len, line);
}

static int feed(struct api_follower *f,
                const char *data,
                size_t len,
                uint64_t start_offset)
{
    size_t i = 0;
    int rv;
    while (i < len) {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t take = nl != NULL ? (size_t)(nl - (data + i)) : len - i;
        if (f->partial_len + take > FOLLOW_LINE_MAX) {
            take = FOLLOW_LINE_MAX - f->partial_len;
            nl = NULL;
        }
        if (nl == NULL) {
            char *np = realloc(f->partial, f->partial_len + take + 1);
            if (np == NULL) {
                return ERR_NOMEM;
            }
            f->partial = np;
            memcpy(f->partial + f->partial_len, data + i, take);
            f->partial_len += take;
            i += take;
            if (f->partial_len >= FOLLOW_LINE_MAX) {
                rv = send_line(f, f->partial, f->partial_len, start_offset + i);
                f->partial_len = 0;
                if (rv != 0) {
                    return rv;
                }
            }
            continue;
        }
        if (f->partial_len > 0) {
            char *np = realloc(f->partial, f->partial_len + take + 1);
            if (np == NULL) {
                return ERR_NOMEM;
            }
            f->partial = np;
            memcpy(f->partial + f->partial_len, data + i, take);
            f->partial_len += take;
            rv = send_line(f, f->partial, f->partial_len,
                           start_offset + i + take + 1);
            f->partial_len = 0;
        } else {
            rv = send_line(f, data + i, take, start_offset + i + take + 1);
        }
        if (rv != 0) {
            return rv;
        }
        i += take + 1;
    }
    return 0;
}

/* Push everything new of the follower's job; end the stream once the job
 * finished and all its output was sent. */
static void follower_pump(struct api_follower *f)
{
    const struct rsm_fsm *fsm = rsm_state(f->api->deps.rsm);
    const struct rsm_job *j = rsm_fsm_job(fsm, f->job);
    const struct rsm_chunk **chunks;
    unsigned n;
    int rv = 0;

    if (f->ended) {
        return;
    }
    if (j == NULL) {
        f->ended = 1;
        http_stream_printf(f->st,
                           "event: end\ndata: {\"state\":\"unknown\"}"
                           "\n\n");
        http_stream_end(f->st);
        return;
    }
    chunks = malloc(CHUNKS_MAX * sizeof *chunks);
    if (chunks == NULL) {
        return;
    }
    n = rsm_fsm_job_chunks(fsm, f->job, chunks, CHUNKS_MAX);
    if (n > CHUNKS_MAX) {
        n = CHUNKS_MAX;
    }
    for (unsigned i = 0; i < n && rv == 0; i++) {
        const struct rsm_chunk *c = chunks[i];
        uint64_t end = c->offset + c->raw_len;
        char *raw;
        uint64_t skip;
        if (end <= f->offset) {
            continue;
        }
        if (c->offset > f->offset) {
            char marker[96];
            int len = snprintf(marker, sizeof marker,
                               "[kiln: %llu bytes of output cut]\n",
                               (unsigned long long)(c->offset - f->offset));
            if (f->partial_len > 0) {
                rv = send_line(f, f->partial, f->partial_len, f->offset);
                f->partial_len = 0;
            }
            if (rv == 0) {
                rv = feed(f, marker, (size_t)len, c->offset);
            }
            f->offset = c->offset;
        }
        raw = malloc(c->raw_len + 1);
        if (raw == NULL || rsm_chunk_decode(c, raw) != 0) {
            free(raw);
            break;
        }
        skip = f->offset - c->offset;
        if (rv == 0) {
            rv = feed(f, raw + skip, c->raw_len - skip, f->offset);
        }
        free(raw);
        f->offset = end;
    }
    free(chunks);
    if (rv == ERR_TOOBIG || rv == ERR_NOMEM) {
        /* The client reads slower than the job writes: end the stream; the
         * client resumes with Last-Event-ID. */
        f->ended = 1;
        http_stream_end(f->st);
        return;
    }
    if (rv == 0 && rsm_job_state_is_finished(j->state) &&
        f->offset >= j->out_bytes) {
        json_t *end =
            json_pack("{s:s,s:s}", "state", rsm_job_state_name(j->state), "end",
                      rsm_job_end_name(j->end));
        char *text;
        if (j->end == RSM_END_EXITED) {
            json_object_set_new(end, "exit_code", json_integer(j->exit_code));
        }
        if (j->end == RSM_END_SIGNALED) {
            json_object_set_new(end, "signal", json_integer(j->signal));
        }
        if (f->partial_len > 0) {
            send_line(f, f->partial, f->partial_len, f->offset);
            f->partial_len = 0;
        }
        text = json_dumps(end, JSON_COMPACT);
        http_stream_printf(f->st, "event: end\ndata: %s\n\n",
                           text != NULL ? text : "{}");
        free(text);
        json_decref(end);
        f->ended = 1;
        http_stream_end(f->st);
    }
}

void api_on_applied(struct api *a,
                    const struct rsm_cmd *cmd,
                    const struct rsm_result *res)
{
    uint64_t job;
    UNUSED(res);
    switch (cmd->type) {
        case RSM_CMD_JOB_OUTPUT:
            job = cmd->u.job_output.job;
            break;
        case RSM_CMD_JOB_FINISH:
            job = cmd->u.job_finish.job;
            break;
        case RSM_CMD_JOB_CANCEL:
            job = cmd->u.job_cancel.job;
            break;
        case RSM_CMD_NODE_EXPIRE:
            job = 0; /* any job may have changed */
            break;
        default:
            return;
    }
    for (struct api_follower *f = a->followers, *next; f != NULL; f = next) {
        next = f->next;
        if (job == 0 || f->job == job) {
            follower_pump(f);
        }
    }
}

/* --- routes -------------------------------------------------------------- */

static bool job_from_path(struct api *a,
                          struct http_req *req,
                          const struct rsm_job **out,
                          uint64_t *seq)
{
    const char *id = http_req_param(req, "id");
    if (rsm_job_id_parse(id, seq) != 0) {
        http_reply_error(req, 404, "not_found",
                         "job '%.40s' not found (ids look like j42)", id);
        return false;
    }
    *out = rsm_fsm_job(rsm_state(a->deps.rsm), *seq);
    if (*out == NULL) {
        http_reply_error(req, 404, "not_found", "job '%.40s' not found", id);
        return false;
    }
    return true;
}

static void reply_job(struct api *a,
                      struct http_req *req,
                      uint64_t seq,
                      unsigned status)
{
    const struct rsm_fsm *f = rsm_state(a->deps.rsm);
    const struct rsm_job *j = rsm_fsm_job(f, seq);
    if (j == NULL) {
        http_reply_error(req, 404, "not_found", "job j%llu not found",
                         (unsigned long long)seq);
        return;
    }
    http_reply_json(req, status, api__job_to_json(f, j));
}

static void reply_jobs(struct api *a, struct http_req *req)
{
    const struct rsm_fsm *f = rsm_state(a->deps.rsm);
    const char *state = http_req_query(req, "state");
    const char *limit_s = http_req_query(req, "limit");
    uint64_t limit = JOBS_DEFAULT_LIMIT;
    int st = -1;
    const struct rsm_job **jobs;
    unsigned n;
    json_t *arr;

    if (state != NULL && state[0] != '\0') {
        for (int i = 0; i < RSM_JOB__STATES; i++) {
            if (strcmp(state, rsm_job_state_name((unsigned)i)) == 0) {
                st = i;
            }
        }
        if (st < 0) {
            http_reply_error(req, 400, "bad_request",
                             "state: unknown job state '%.32s'", state);
            return;
        }
    }
    if (limit_s != NULL &&
        (parse_u64(limit_s, JOBS_MAX_LIMIT, &limit) != 0 || limit == 0)) {
        http_reply_error(req, 400, "bad_request",
                         "limit: must be an integer in [1, %d]",
                         JOBS_MAX_LIMIT);
        return;
    }
    jobs = malloc(limit * sizeof *jobs);
    if (jobs == NULL) {
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    n = rsm_fsm_jobs(f, st, jobs, (unsigned)limit);
    if (n > limit) {
        n = (unsigned)limit;
    }
    arr = json_array();
    for (unsigned i = 0; i < n; i++) {
        json_array_append_new(arr, api__job_to_json(f, jobs[i]));
    }
    free(jobs);
    http_reply_json(req, 200, json_pack("{s:o}", "jobs", arr));
}

void api__jobs_read(struct api *a,
                    struct http_req *req,
                    int op,
                    const char *name)
{
    uint64_t seq;
    if (op == OP_READ_JOBS) {
        reply_jobs(a, req);
    } else if (rsm_job_id_parse(name, &seq) == 0) {
        reply_job(a, req, seq, 200);
    } else {
        http_reply_error(req, 404, "not_found", "job not found");
    }
}

void api__jobs_proposed(struct api *a,
                        struct pending *p,
                        const struct rsm_result *res)
{
    uint64_t seq;
    switch (p->op) {
        case OP_JOB_SUBMIT:
            reply_job(a, p->req, res->value, 201);
            break;
        case OP_JOB_CANCEL:
            if (rsm_job_id_parse(p->name, &seq) == 0) {
                reply_job(a, p->req, seq, 202);
            } else {
                http_reply_error(p->req, 404, "not_found", "job not found");
            }
            break;
        default:
            http_reply_error(p->req, 500, "internal", "bad pending op");
            break;
    }
}

static void jobs_submit_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    char errmsg[ERRMSG_SIZE];
    struct rsm_cmd cmd;
    json_t *body = http_req_json(req, errmsg);
    int rv;

    if (body == NULL) {
        http_reply_error(req, 400, "bad_request", "%s", errmsg);
        return;
    }
    rsm_cmd_init(&cmd, RSM_CMD_JOB_SUBMIT);
    if (api__idem_from_header(req, &cmd) != 0) {
        rsm_cmd_clear(&cmd);
        return;
    }
    rv = api__job_spec_from_json(body, &cmd.u.job_submit, errmsg);
    if (rv != 0) {
        rsm_cmd_clear(&cmd);
        api__reply_err(req, rv, errmsg);
        return;
    }
    api__propose(a, req, &cmd, OP_JOB_SUBMIT, NULL);
}

static void jobs_list_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    if (api__maybe_consistent(a, req, OP_READ_JOBS, NULL, api__jobs_read)) {
        return;
    }
    reply_jobs(a, req);
}

static void job_get_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const struct rsm_job *j;
    uint64_t seq;
    const char *id = http_req_param(req, "id");
    if (rsm_job_id_parse(id, &seq) == 0 &&
        api__maybe_consistent(a, req, OP_READ_JOB, id, api__jobs_read)) {
        return;
    }
    if (!job_from_path(a, req, &j, &seq)) {
        return;
    }
    reply_job(a, req, seq, 200);
}

static void job_cancel_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const struct rsm_job *j;
    uint64_t seq;
    struct rsm_cmd cmd;
    char id[RSM_JOB_ID_MAX];

    if (!job_from_path(a, req, &j, &seq)) {
        return;
    }
    if (rsm_job_state_is_finished(j->state)) {
        http_reply_error(req, 409, "conflict", "job j%llu already %s",
                         (unsigned long long)seq, rsm_job_state_name(j->state));
        return;
    }
    rsm_cmd_init(&cmd, RSM_CMD_JOB_CANCEL);
    cmd.u.job_cancel.job = seq;
    rsm_job_id_format(seq, id);
    api__propose(a, req, &cmd, OP_JOB_CANCEL, id);
}

/* Plain text: everything stored, with a marker where the cap cut. */
static void reply_logs_plain(struct api *a, struct http_req *req, uint64_t seq)
{
    const struct rsm_fsm *fsm = rsm_state(a->deps.rsm);
    const struct rsm_chunk **chunks = malloc(CHUNKS_MAX * sizeof *chunks);
    unsigned n;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    uint64_t offset = 0;

    if (chunks == NULL) {
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    n = rsm_fsm_job_chunks(fsm, seq, chunks, CHUNKS_MAX);
    if (n > CHUNKS_MAX) {
        n = CHUNKS_MAX;
    }
    for (unsigned i = 0; i < n; i++) {
        const struct rsm_chunk *c = chunks[i];
        size_t need = len + c->raw_len + 96;
        if (need > cap) {
            char *nb = realloc(buf, need * 2);
            if (nb == NULL) {
                break;
            }
            buf = nb;
            cap = need * 2;
        }
        if (c->offset > offset) {
            len += (size_t)snprintf(buf + len, 96,
                                    "\n[kiln: %llu bytes of output cut]\n",
                                    (unsigned long long)(c->offset - offset));
        }
        if (rsm_chunk_decode(c, buf + len) != 0) {
            break;
        }
        len += c->raw_len;
        offset = c->offset + c->raw_len;
    }
    free(chunks);
    http_reply_raw(req, 200, "text/plain; charset=utf-8",
                   buf != NULL ? buf : "", len);
    free(buf);
}

static void job_logs_cb(struct http_req *req, void *data)
{
    struct api *a = data;
    const struct rsm_job *j;
    uint64_t seq;
    const char *follow = http_req_query(req, "follow");
    const char *last = http_req_header(req, "Last-Event-ID");
    struct api_follower *f;

    if (!job_from_path(a, req, &j, &seq)) {
        return;
    }
    if (follow == NULL ||
        (strcmp(follow, "true") != 0 && strcmp(follow, "1") != 0)) {
        reply_logs_plain(a, req, seq);
        return;
    }
    f = calloc(1, sizeof *f);
    if (f == NULL) {
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    f->api = a;
    f->job = seq;
    if (last != NULL && parse_u64(last, UINT64_MAX, &f->offset) != 0) {
        f->offset = 0;
    }
    f->st = http_reply_stream(req, "text/event-stream");
    if (f->st == NULL) {
        free(f);
        return;
    }
    http_stream_on_close(f->st, stream_closed_cb, f);
    f->next = a->followers;
    a->followers = f;
    follower_pump(f);
}

int api__jobs_init(struct api *a)
{
    struct
    {
        const char *method;
        const char *pattern;
        http_handler h;
    } routes[] = {
        {"POST", "/v1/jobs", jobs_submit_cb},
        {"GET", "/v1/jobs", jobs_list_cb},
        {"GET", "/v1/jobs/:id", job_get_cb},
        {"POST", "/v1/jobs/:id/cancel", job_cancel_cb},
        {"GET", "/v1/jobs/:id/logs", job_logs_cb},
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

void api__jobs_shutdown(struct api *a)
{
    /* Streams end with the server: their close callbacks free the
     * followers. Nothing else to do here. */
    UNUSED(a);
}
