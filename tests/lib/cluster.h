/* In-process raft clusters on libraft's raft_fixture (simulated time and
 * network) running the real FSM through rsm's adapter. The ONLY file of
 * kiln that calls raft_fixture_*. */
#ifndef KILN_TEST_CLUSTER_H_
#define KILN_TEST_CLUSTER_H_

#include <raft.h>
#include <raft/fixture.h>
#include <stdbool.h>
#include <stdint.h>

#include "raft/rsm_int.h"

#define CL_MAX 5

struct cl_node
{
    struct rsm_fsm *core; /* owned */
    struct rsm__adapter ad;
};

struct cl
{
    struct raft_fixture f; /* zeroed before raft_fixture_initialize */
    unsigned n;
    struct cl_node nodes[CL_MAX];
    int64_t clock; /* leader_time_ms stamped into entries */
};

/* A proposal through the fixture leader (one entry, many commands). */
struct cl_req
{
    struct raft_apply apply;
    bool done;
    int status; /* RAFT_* from the apply cb */
    struct rsm_result results[RSM__MAX_BATCH];
    unsigned n_results;
    uint64_t index;
};

/* Allocate a cluster of n servers (n_voters voters, the rest standbys),
 * bootstrapped, with the given snapshot threshold/trailing (0: defaults),
 * started. Aborts the test on failure. Free with cl_destroy. */
struct cl *cl_create(unsigned n,
                     unsigned n_voters,
                     unsigned snap_threshold,
                     unsigned snap_trailing);
void cl_destroy(struct cl *c);

struct raft *cl_raft(struct cl *c, unsigned i);
/* Step until a leader exists; returns its index or -1. */
int cl_elect(struct cl *c, unsigned max_ms);
/* Index of the current fixture leader or -1. */
int cl_leader(struct cl *c);

/* Build a pipeline_create command named name (argv {"/bin/true"}). */
void cl_cmd_pipeline(struct rsm_cmd *cmd, const char *name);

/* raft_apply the commands as one entry on server i (normally the leader).
 * Returns the raft_apply rv (RAFT_NOTLEADER on a follower). The commands
 * stay owned by the caller. */
int cl_propose(struct cl *c,
               unsigned i,
               const struct rsm_cmd *cmds,
               unsigned n,
               struct cl_req *req);
/* Convenience: one pipeline_create named name through the current leader,
 * stepped until applied on every alive server. Returns the raft index or
 * 0 on failure. */
uint64_t cl_create_pipeline(struct cl *c, const char *name, unsigned max_ms);

bool cl_step_until_done(struct cl *c, struct cl_req *req, unsigned max_ms);
/* Step until every alive server applied index. */
bool cl_step_until_applied(struct cl *c, uint64_t index, unsigned max_ms);
void cl_step_ms(struct cl *c, unsigned ms);

uint64_t cl_digest(struct cl *c, unsigned i);
const struct rsm_fsm *cl_fsm(struct cl *c, unsigned i);

void cl_kill(struct cl *c, unsigned i);
void cl_revive(struct cl *c, unsigned i);
/* Cut server i from every other server in both directions, and heal. */
void cl_isolate(struct cl *c, unsigned i);
void cl_heal(struct cl *c, unsigned i);

#endif /* KILN_TEST_CLUSTER_H_ */
