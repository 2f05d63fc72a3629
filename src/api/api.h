/* The HTTP API (CONTRACT.md): routes over the node's modules. Every node
 * serves every route from its own replica; writes go through rsm_propose,
 * which forwards to the leader when needed. */
#ifndef KILN_API_H_
#define KILN_API_H_

#include <stdint.h>

#include "api/http.h"
#include "gossip/gossip.h"
#include "raft/rsm.h"

struct api_deps {
    struct http_server *http; /* borrowed: routes are registered on it */
    struct rsm *rsm;          /* borrowed */
    struct gossip *gossip;    /* borrowed */
    const char *node_name;    /* borrowed */
    uint64_t node_id;
    /* Schedule validation (cron + time zone); NULL accepts any string. */
    int (*check_schedule)(const char *schedule, const char *tz,
                          char *errmsg);
};

struct api {
    struct api_deps deps;
    uint64_t requests;     /* served, for stats */
    unsigned inflight;     /* requests parked on a proposal */
};

/* Register every route. Returns 0 or ERR_NOMEM. */
int api_init(struct api *a, const struct api_deps *deps);

#endif /* KILN_API_H_ */
