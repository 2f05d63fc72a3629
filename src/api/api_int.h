/* Internal header of the api module: JSON conversion of replicated objects
 * and route helpers shared by the api_*.c files. */
#ifndef KILN_API_INT_H_
#define KILN_API_INT_H_

#include <jansson.h>

#include "raft/rsm_fsm.h"

/* Validation hook for schedules (the cron parser lives in sched; api
 * receives it at init so that this file stays testable alone). Returns 0 or
 * ERR_INVALID with a reason naming the position. */
typedef int (*api_schedule_check_fn)(const char *schedule, const char *tz,
                                     char *errmsg);

/* Build a pipeline spec from a POST/PUT body. name_from_path is the NAME of
 * PUT /v1/pipelines/NAME (NULL for POST); a body "name" must match it.
 * Unknown fields are rejected. On error returns ERR_INVALID with a message
 * that names the field (ERRMSG_SIZE); out is left cleared. */
int api__pipeline_from_json(json_t *body, const char *name_from_path,
                            api_schedule_check_fn check,
                            struct rsm_pipeline_spec *out, char *errmsg);

/* Render a stored pipeline (CONTRACT.md shape plus version and times). */
json_t *api__pipeline_to_json(const struct rsm_pipeline *p);

/* Map an ERR_* result code to (HTTP status, error code word). */
void api__status_for(int err, unsigned *status, const char **code);

#endif /* KILN_API_INT_H_ */
