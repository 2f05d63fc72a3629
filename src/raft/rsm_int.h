/* Internal interface shared by the files of src/raft/ (not for other
 * modules). Sections are owned by different files; keep them apart. */
#ifndef KILN_RSM_INT_H_
#define KILN_RSM_INT_H_

#include <raft.h>
#include <raft/uv.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "raft/rsm.h"
#include "raft/rsm_fsm.h"

/* ===================================================================== */
/* Runtime section (rsm.c, rsm_members.c)                                */
/* ===================================================================== */

/* Most commands in one raft entry (and in one forwarded batch). */
#define RSM__MAX_BATCH 256
/* Largest encoded entry we hand to raft_apply (RISKS row 9). */
#define RSM__MAX_ENTRY (1024 * 1024)
/* Most raft_apply batches in flight on the leader (RISKS row 9). */
#define RSM__MAX_INFLIGHT 64

/* Bridges libraft's struct raft_fsm (version 1) to the pure core. Used by
 * rsm.c and by the raft_fixture tests (tests/lib/cluster.c), so that both
 * run the very same apply/snapshot/restore glue. */
struct rsm__adapter
{
    struct raft_fsm fsm;  /* handed to raft_init; fsm.data == this */
    struct rsm_fsm *core; /* borrowed, outlives us */
    struct raft *raft;    /* borrowed: the index of an applied entry is
                             raft->last_applied + 1 (0.15 updates
                             last_applied after fsm->apply returns) */
    /* Results of the entry applied last: raft hands a pointer to this
     * adapter to the leader's raft_apply cb, which copies them at once
     * (the cb runs synchronously right after fsm->apply). Never malloc'd
     * per entry: raft leaks the result on followers. */
    struct rsm_result results[RSM__MAX_BATCH];
    unsigned n_results;
    uint64_t index;
    bool stuck; /* apply refused (newer format / no memory): logged once */
    /* Optional observer, called right after each entry applied. */
    void (*after_apply)(struct rsm__adapter *a, const void *buf, size_t len);
    void *owner;
};

/* Fill a->fsm; a->raft must be set before the first apply. */
void rsm__adapter_init(struct rsm__adapter *a, struct rsm_fsm *core);

/* Voter management (rsm_members.c). */
struct rsm__peer
{
    uint64_t id;
    char raft[24];
    bool alive;
    uint64_t dead_since; /* monotonic ms; 0 while alive */
};

struct rsm__members
{
    struct rsm__peer *peers; /* owned */
    unsigned n, cap;
    bool changing;       /* a barrier or membership change is in flight */
    int phase;           /* idle, barrier, ready (barrier done), change */
    uint64_t ready_term; /* term in which the barrier applied */
    uint64_t not_before; /* no change before this monotonic ms */
    unsigned grace_ms;   /* a voter dead longer than this is replaced */
};

/* Plan the next membership step from the configuration and the peer table
 * (pure: no raft calls). Returns true and fills the step when there is
 * something to do. */
enum rsm__step_kind { RSM__STEP_ADD = 1, RSM__STEP_ASSIGN };
struct rsm__step
{
    enum rsm__step_kind kind;
    uint64_t id;
    char raft[24];
    int role; /* RAFT_VOTER/STANDBY/SPARE for ASSIGN */
};
bool rsm__members_plan(const struct rsm__members *m,
                       const struct raft_configuration *conf,
                       uint64_t self_id,
                       uint64_t now_ms,
                       struct rsm__step *step);

void rsm__members_init(struct rsm__members *m);
void rsm__members_free(struct rsm__members *m);
/* Returns true if the table changed. */
bool rsm__members_seen(struct rsm__members *m,
                       uint64_t id,
                       const char *raft_addr,
                       bool alive,
                       uint64_t now_ms);
/* Leader-only driver: barrier, then one change, then re-plan. Called from
 * the reconcile timer in rsm.c. */
void rsm__members_reconcile(struct rsm *r);
/* Accessors rsm_members.c needs from rsm.c. */
struct raft *rsm__raft(struct rsm *r);
struct rsm__members *rsm__members(struct rsm *r);
bool rsm__ready(const struct rsm *r); /* leader, barrier done, not closing */
void rsm__kick_members(struct rsm *r, unsigned delay_ms);
uint64_t rsm__self_id(const struct rsm *r);

/* ===================================================================== */
/* FSM section (rsm_fsm.c, rsm_cmd.c, rsm_snap.c) — owned by the FSM side */
/* ===================================================================== */

#endif /* KILN_RSM_INT_H_ */
