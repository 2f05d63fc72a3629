/* Replication, failover, partitions and snapshot install of the real FSM
 * on libraft's deterministic fixture (simulated time). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "lib/cluster.h"

TestSuite(rsm_fixture, .timeout = 60);

static void assert_same_digest(struct cl *c)
{
    unsigned i;
    for (i = 1; i < c->n; i++) {
        cr_assert_eq(cl_digest(c, i), cl_digest(c, 0),
                     "digest of server %u differs", i);
    }
}

Test(rsm_fixture, replication_batches_identical_digests)
{
    struct cl *c = cl_create(3, 3, 0, 0);
    struct rsm_cmd cmds[5];
    struct cl_req *req = calloc(1, sizeof *req);
    char name[32];
    int leader;
    unsigned b, i;

    leader = cl_elect(c, 10000);
    cr_assert_geq(leader, 0);
    for (b = 0; b < 4; b++) {
        for (i = 0; i < 5; i++) {
            snprintf(name, sizeof name, "p-%u-%u", b, i);
            cl_cmd_pipeline(&cmds[i], name);
        }
        cr_assert_eq(cl_propose(c, (unsigned)leader, cmds, 5, req), 0);
        cr_assert(cl_step_until_done(c, req, 5000));
        cr_assert_eq(req->status, 0);
        cr_assert_eq(req->n_results, 5);
        for (i = 0; i < 5; i++) {
            cr_assert_eq(req->results[i].code, 0, "%s",
                         req->results[i].message);
            cr_assert_eq(req->results[i].index, req->index);
            rsm_cmd_clear(&cmds[i]);
        }
        cr_assert(cl_step_until_applied(c, req->index, 5000));
    }
    /* A follower's raft_apply is refused. */
    cl_cmd_pipeline(&cmds[0], "from-follower");
    cr_assert_eq(cl_propose(c, (unsigned)(leader + 1) % 3, cmds, 1, req),
                 RAFT_NOTLEADER);
    rsm_cmd_clear(&cmds[0]);
    /* A duplicate name is a rejection, applied everywhere alike. */
    cl_cmd_pipeline(&cmds[0], "p-0-0");
    cr_assert_eq(cl_propose(c, (unsigned)leader, cmds, 1, req), 0);
    cr_assert(cl_step_until_done(c, req, 5000));
    cr_assert_eq(req->status, 0);
    cr_assert_neq(req->results[0].code, 0);
    rsm_cmd_clear(&cmds[0]);
    cr_assert(cl_step_until_applied(c, req->index, 5000));
    for (i = 0; i < 3; i++) {
        cr_assert_eq(rsm_fsm_pipeline_count(cl_fsm(c, i)), 20);
        cr_assert_not_null(rsm_fsm_pipeline(cl_fsm(c, i), "p-3-4"));
    }
    assert_same_digest(c);
    free(req);
    cl_destroy(c);
}

Test(rsm_fixture, leader_loss_reelection_writes_continue)
{
    struct cl *c = cl_create(3, 3, 0, 0);
    int leader, leader2;

    leader = cl_elect(c, 10000);
    cr_assert_geq(leader, 0);
    cr_assert_neq(cl_create_pipeline(c, "before", 5000), 0);
    cl_kill(c, (unsigned)leader);
    cr_assert(raft_fixture_step_until_has_no_leader(&c->f, 10000));
    leader2 = cl_elect(c, 10000);
    cr_assert_geq(leader2, 0);
    cr_assert_neq(leader2, leader);
    cr_assert_neq(cl_create_pipeline(c, "after", 5000), 0);
    cl_revive(c, (unsigned)leader);
    cr_assert_neq(cl_create_pipeline(c, "revived", 5000), 0);
    cr_assert(
        cl_step_until_applied(c, raft_last_index(cl_raft(c, leader2)), 5000));
    cr_assert_eq(rsm_fsm_pipeline_count(cl_fsm(c, (unsigned)leader)), 3);
    assert_same_digest(c);
    cl_destroy(c);
}

Test(rsm_fixture, partitioned_leader_steps_down_majority_continues)
{
    struct cl *c = cl_create(3, 3, 0, 0);
    struct cl_req *req = calloc(1, sizeof *req);
    struct rsm_cmd cmd;
    int leader, leader2;

    leader = cl_elect(c, 10000);
    cr_assert_geq(leader, 0);
    cr_assert_neq(cl_create_pipeline(c, "before", 5000), 0);

    cl_isolate(c, (unsigned)leader);
    cl_cmd_pipeline(&cmd, "lost");
    cr_assert_eq(cl_propose(c, (unsigned)leader, &cmd, 1, req), 0);
    rsm_cmd_clear(&cmd);
    /* The cut-off leader steps down; its pending apply fails cleanly. */
    cr_assert(cl_step_until_done(c, req, 10000));
    cr_assert_eq(req->status, RAFT_LEADERSHIPLOST, "status %d", req->status);
    cr_assert_neq(raft_state(cl_raft(c, (unsigned)leader)), RAFT_LEADER);

    /* The majority elects and writes continue. */
    leader2 = -1;
    {
        unsigned t;
        for (t = 0; t < 200 && leader2 < 0; t++) {
            unsigned i;
            cl_step_ms(c, 50);
            for (i = 0; i < 3; i++) {
                if ((int)i != leader &&
                    raft_state(cl_raft(c, i)) == RAFT_LEADER) {
                    leader2 = (int)i;
                }
            }
        }
    }
    cr_assert_geq(leader2, 0);
    cl_cmd_pipeline(&cmd, "majority");
    cr_assert_eq(cl_propose(c, (unsigned)leader2, &cmd, 1, req), 0);
    rsm_cmd_clear(&cmd);
    cr_assert(cl_step_until_done(c, req, 5000));
    cr_assert_eq(req->status, 0);

    /* Heal: the old leader catches up; the lost entry never applied. */
    cl_heal(c, (unsigned)leader);
    cr_assert_neq(cl_create_pipeline(c, "healed", 10000), 0);
    cr_assert(cl_step_until_applied(
        c, raft_last_index(cl_raft(c, (unsigned)leader2)), 10000));
    cr_assert_null(rsm_fsm_pipeline(cl_fsm(c, 0), "lost"));
    cr_assert_not_null(
        rsm_fsm_pipeline(cl_fsm(c, (unsigned)leader), "majority"));
    assert_same_digest(c);
    free(req);
    cl_destroy(c);
}

Test(rsm_fixture, snapshot_install_to_lagging_node)
{
    struct cl *c = cl_create(3, 3, 8, 8);
    char name[32];
    int leader;
    unsigned lag, i;

    leader = cl_elect(c, 10000);
    cr_assert_geq(leader, 0);
    lag = (unsigned)(leader + 1) % 3;
    cr_assert_neq(cl_create_pipeline(c, "first", 5000), 0);
    cl_kill(c, lag);
    for (i = 0; i < 60; i++) {
        snprintf(name, sizeof name, "snap-%u", i);
        cr_assert_neq(cl_create_pipeline(c, name, 5000), 0);
    }
    cr_assert_gt(cl_raft(c, (unsigned)leader)->log.snapshot.last_index, 0);
    cl_revive(c, lag);
    cr_assert(cl_step_until_applied(
        c, raft_last_index(cl_raft(c, (unsigned)leader)), 20000));
    /* The lagging node was brought up by a snapshot, not by entries. */
    cr_assert_gt(cl_raft(c, lag)->log.snapshot.last_index, 0);
    cr_assert_eq(rsm_fsm_pipeline_count(cl_fsm(c, lag)), 61);
    assert_same_digest(c);
    cl_destroy(c);
}
