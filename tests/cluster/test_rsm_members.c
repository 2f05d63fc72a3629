/* The voter-management plan (pure): which single change the leader makes
 * next for a given configuration and gossip view. */
#include <criterion/criterion.h>
#include <stdio.h>

#include "raft/rsm_int.h"

TestSuite(rsm_members, .timeout = 10);

#define SELF 1
#define T0 100000

static void conf_add(struct raft_configuration *c, uint64_t id, int role)
{
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)(9000 + id));
    cr_assert_eq(raft_configuration_add(c, id, addr, role), 0);
}

static void seen(struct rsm__members *m, uint64_t id, bool alive, uint64_t t)
{
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)(9000 + id));
    rsm__members_seen(m, id, addr, alive, t);
}

static void set_role(struct raft_configuration *c, uint64_t id, int role)
{
    unsigned i;
    for (i = 0; i < c->n; i++) {
        if (c->servers[i].id == id) {
            c->servers[i].role = role;
        }
    }
}

Test(rsm_members, dead_voter_replaced_by_standby_then_demoted)
{
    struct raft_configuration c;
    struct rsm__members m;
    struct rsm__step st;

    rsm__members_init(&m);
    raft_configuration_init(&c);
    conf_add(&c, 1, RAFT_VOTER);
    conf_add(&c, 2, RAFT_VOTER);
    conf_add(&c, 3, RAFT_VOTER);
    conf_add(&c, 4, RAFT_STANDBY);
    seen(&m, 2, true, T0);
    seen(&m, 3, true, T0);
    seen(&m, 4, true, T0);
    cr_assert_not(rsm__members_plan(&m, &c, SELF, T0, &st));

    seen(&m, 3, false, T0);
    /* Within the grace nothing happens to the voter... */
    cr_assert_not(rsm__members_plan(&m, &c, SELF, T0 + 5000, &st));
    /* ...after it, 3 live nodes need 3 live voters: standby 4 first. */
    cr_assert(rsm__members_plan(&m, &c, SELF, T0 + 11000, &st));
    cr_assert_eq(st.kind, RSM__STEP_ASSIGN);
    cr_assert_eq(st.id, 4);
    cr_assert_eq(st.role, RAFT_VOTER);
    set_role(&c, 4, RAFT_VOTER);
    /* Then the dead voter is demoted to spare, never removed. */
    cr_assert(rsm__members_plan(&m, &c, SELF, T0 + 11000, &st));
    cr_assert_eq(st.kind, RSM__STEP_ASSIGN);
    cr_assert_eq(st.id, 3);
    cr_assert_eq(st.role, RAFT_SPARE);
    set_role(&c, 3, RAFT_SPARE);
    cr_assert_not(rsm__members_plan(&m, &c, SELF, T0 + 12000, &st));
    /* It comes back: a standby again. */
    seen(&m, 3, true, T0 + 20000);
    cr_assert(rsm__members_plan(&m, &c, SELF, T0 + 20000, &st));
    cr_assert_eq(st.id, 3);
    cr_assert_eq(st.role, RAFT_STANDBY);

    raft_configuration_close(&c);
    rsm__members_free(&m);
}

Test(rsm_members, three_voters_one_dead_no_standby_keeps_config)
{
    struct raft_configuration c;
    struct rsm__members m;
    struct rsm__step st;

    rsm__members_init(&m);
    raft_configuration_init(&c);
    conf_add(&c, 1, RAFT_VOTER);
    conf_add(&c, 2, RAFT_VOTER);
    conf_add(&c, 3, RAFT_VOTER);
    seen(&m, 3, false, T0);
    cr_assert_not(rsm__members_plan(&m, &c, SELF, T0 + 60000, &st));
    raft_configuration_close(&c);
    rsm__members_free(&m);
}

Test(rsm_members, add_then_target_voters)
{
    struct raft_configuration c;
    struct rsm__members m;
    struct rsm__step st;

    rsm__members_init(&m);
    raft_configuration_init(&c);
    conf_add(&c, 1, RAFT_VOTER);
    seen(&m, 7, true, T0);
    seen(&m, 5, true, T0);
    /* Lowest id is added first, as a spare. */
    cr_assert(rsm__members_plan(&m, &c, SELF, T0, &st));
    cr_assert_eq(st.kind, RSM__STEP_ADD);
    cr_assert_eq(st.id, 5);
    cr_assert_str_eq(st.raft, "127.0.0.1:9005");
    conf_add(&c, 5, RAFT_SPARE);
    cr_assert(rsm__members_plan(&m, &c, SELF, T0, &st));
    cr_assert_eq(st.id, 7);
    conf_add(&c, 7, RAFT_SPARE);
    /* 3 alive nodes: both become voters. */
    cr_assert(rsm__members_plan(&m, &c, SELF, T0, &st));
    cr_assert_eq(st.id, 5);
    cr_assert_eq(st.role, RAFT_VOTER);
    set_role(&c, 5, RAFT_VOTER);
    cr_assert(rsm__members_plan(&m, &c, SELF, T0, &st));
    cr_assert_eq(st.id, 7);
    cr_assert_eq(st.role, RAFT_VOTER);
    set_role(&c, 7, RAFT_VOTER);
    cr_assert_not(rsm__members_plan(&m, &c, SELF, T0, &st));
    /* A 4th voter beyond the target (4 alive -> 3) becomes standby. */
    conf_add(&c, 9, RAFT_VOTER);
    cr_assert(rsm__members_plan(&m, &c, SELF, T0, &st));
    cr_assert_eq(st.id, 9);
    cr_assert_eq(st.role, RAFT_STANDBY);
    raft_configuration_close(&c);
    rsm__members_free(&m);
}
