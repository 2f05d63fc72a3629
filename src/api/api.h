/* The HTTP API (CONTRACT.md): routes over the node's modules. Every node
 * serves every route from its own replica; writes go through rsm_propose,
 * which forwards to the leader when needed. */
#ifndef KILN_API_H_
#define KILN_API_H_

#include <stdint.h>

#include "api/http.h"
#include "gossip/gossip.h"
#include "raft/rsm.h"
#include "sched/sched.h"

struct api_deps
{
    struct http_server *http; /* borrowed: routes are registered on it */
    struct rsm *rsm;          /* borrowed */
    struct gossip *gossip;    /* borrowed */
    const char *node_name;    /* borrowed */
    uint64_t node_id;
    struct sched *sched; /* borrowed; NULL: /v1/status reports no jobs */
    /* Schedule validation (cron + time zone); NULL accepts any string. */
    int (*check_schedule)(const char *schedule, const char *tz, char *errmsg);
};

struct api_follower; /* a live log stream (api_jobs.c) */

struct api
{
    struct api_deps deps;
    uint64_t requests;              /* served, for stats */
    unsigned inflight;              /* requests parked on a proposal */
    int closing;                    /* api_shutdown called */
    struct api_follower *followers; /* live log streams; owned */
};

/* Register every route. Returns 0 or ERR_NOMEM. */
int api_init(struct api *a, const struct api_deps *deps);

/* Observer of applied commands (called from rsm's on_applied): wakes log
 * followers of the job. */
void api_on_applied(struct api *a,
                    const struct rsm_cmd *cmd,
                    const struct rsm_result *res);

/* Call before http_server_close: parked requests and streams are dropped
 * without replies from then on. */
void api_shutdown(struct api *a);

#endif /* KILN_API_H_ */
