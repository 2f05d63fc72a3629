/* Composition root: owns the loop's modules, starts them in a fixed order
 * and closes them in reverse through an explicit async chain
 * (docs/architecture.md). */
#ifndef KILN_NODE_H_
#define KILN_NODE_H_

#include <stdint.h>
#include <uv.h>

#include "api/api.h"
#include "api/http.h"
#include "config.h"
#include "err.h"
#include "gossip/gossip.h"
#include "httpc.h"
#include "raft/rsm.h"
#include "sched/fire.h"
#include "sched/sched.h"

struct node;
typedef void (*node_close_cb)(struct node *n);

struct node
{
    uv_loop_t *loop;                /* borrowed, outlives us */
    struct config cfg;              /* copy of the parsed flags */
    char name[CONFIG_NAME_MAX + 1]; /* persisted identity */
    uint64_t id;                    /* persisted, random, never 0 */
    int lock_fd;                    /* flock'd data_dir/LOCK */

    struct rsm *rsm;         /* owned */
    struct http_server http; /* API server */
    struct httpc httpc;      /* forwarding client */
    struct gossip gossip;    /* membership */
    struct api api;          /* routes */
    struct sched sched;      /* claims, leases, execution */
    struct fire fire;        /* cron firing (leader only) */
    uv_timer_t tick;         /* bootstrap, registration, load */
    uv_signal_t sigint;      /* graceful shutdown */
    uv_signal_t sigterm;     /* graceful shutdown */

    unsigned started;         /* bitmask of started modules (NODE_M_*) */
    int closing;              /* node_close called */
    int pending_closes;       /* handles still closing at the last step */
    int exit_status;          /* for main: 0 clean */
    int raft_running;         /* bootstrapped or joined this run */
    int registered;           /* our MEMBER_PUT is applied */
    int registering;          /* a MEMBER_PUT is in flight */
    uint64_t forward_seq;     /* forwards sent */
    node_close_cb close_cb;   /* called when everything is closed */
    char errmsg[ERRMSG_SIZE]; /* why init/start failed */
};

/* Lock the data dir, load or create the identity. Returns 0 or an ERR_* code
 * with n->errmsg set to a one-line reason. */
int node_init(struct node *n, uv_loop_t *loop, const struct config *cfg);

/* Start every module (binds ports). On error n->errmsg says why; the caller
 * must still call node_close. */
int node_start(struct node *n);

/* Stop every module in reverse order; cb runs once all handles are closed.
 * Idempotent. */
void node_close(struct node *n, node_close_cb cb);

/* Helpers exposed for tests. */
int node_lock_data_dir(const char *dir, int *fd_out, char *errmsg);
int node_load_identity(const char *dir,
                       const char *want_name,
                       char *name,
                       uint64_t *id,
                       char *errmsg);

#endif /* KILN_NODE_H_ */
