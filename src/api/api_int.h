/* Internal header of the api module: JSON conversion of replicated objects
 * and route helpers shared by the api_*.c files. */
#ifndef KILN_API_INT_H_
#define KILN_API_INT_H_

#include <jansson.h>
#include <stdbool.h>

#include "raft/rsm_fsm.h"

/* Validation hook for schedules (the cron parser lives in sched; api
 * receives it at init so that this file stays testable alone). Returns 0 or
 * ERR_INVALID with a reason naming the position. */
typedef int (*api_schedule_check_fn)(const char *schedule,
                                     const char *tz,
                                     char *errmsg);

/* Build a pipeline spec from a POST/PUT body. name_from_path is the NAME of
 * PUT /v1/pipelines/NAME (NULL for POST); a body "name" must match it.
 * Unknown fields are rejected. On error returns ERR_INVALID with a message
 * that names the field (ERRMSG_SIZE); out is left cleared. */
int api__pipeline_from_json(json_t *body,
                            const char *name_from_path,
                            api_schedule_check_fn check,
                            struct rsm_pipeline_spec *out,
                            char *errmsg);

/* Render a stored pipeline (CONTRACT.md shape plus version and times). */
json_t *api__pipeline_to_json(const struct rsm_pipeline *p);

struct api;
struct http_req;

/* Operations a parked request waits for. */
enum api_op {
    OP_PIPELINE_CREATE,
    OP_PIPELINE_UPDATE,
    OP_PIPELINE_DELETE,
    OP_READ_PIPELINES,
    OP_READ_PIPELINE,
    OP_FORWARD,
    OP_JOB_SUBMIT,
    OP_JOB_CANCEL,
    OP_READ_JOBS,
    OP_READ_JOB
};

/* A request parked on a proposal or a barrier. req becomes NULL if the
 * server closed meanwhile (then nobody replies). */
/* Renders a read once a consistent-read barrier is done. */
typedef void (*api_read_fn)(struct api *a,
                            struct http_req *req,
                            int op,
                            const char *name);

struct pending
{
    api_read_fn reader; /* consistent reads: renders the answer */
    struct api *api;
    struct http_req *req;
    int op;                      /* enum api_op */
    char name[RSM_NAME_MAX + 1]; /* object the reply renders */
};

struct pending *api__pending_new(struct api *a,
                                 struct http_req *req,
                                 int op,
                                 const char *name);
void api__pending_free(struct pending *p);

/* Propose cmd (ownership taken) and reply when applied: pipeline ops are
 * rendered by api.c, job ops by api__jobs_proposed. */
void api__propose(struct api *a,
                  struct http_req *req,
                  struct rsm_cmd *cmd,
                  int op,
                  const char *name);
/* ?consistent=true: park behind a barrier through the leader, then call
 * reader to render the answer. Returns false if the query is absent (the
 * caller answers from the local replica). */
bool api__maybe_consistent(struct api *a,
                           struct http_req *req,
                           int op,
                           const char *name,
                           api_read_fn reader);
int api__idem_from_header(struct http_req *req, struct rsm_cmd *cmd);
void api__reply_err(struct http_req *req, int err, const char *msg);

/* api_jobs.c */
int api__jobs_init(struct api *a);
void api__jobs_shutdown(struct api *a);
void api__jobs_proposed(struct api *a,
                        struct pending *p,
                        const struct rsm_result *res);
void api__jobs_read(struct api *a,
                    struct http_req *req,
                    int op,
                    const char *name);
int api__job_spec_from_json(json_t *body,
                            struct rsm_job_spec *out,
                            char *errmsg);
json_t *api__job_to_json(const struct rsm_fsm *f, const struct rsm_job *j);

/* api_runs.c: register the run routes. */
int api__runs_init(struct api *a);

/* api_status.c: GET /v1/status and the benchmark route. */
int api__status_init(struct api *a);

/* Map an ERR_* result code to (HTTP status, error code word). */
void api__status_for(int err, unsigned *status, const char **code);

#endif /* KILN_API_INT_H_ */
