/* Unit tests: the claim ranking spreads jobs and lets idle nodes steal. */
#include <criterion/criterion.h>
#include <stdio.h>

#include "sched/sched_policy.h"

static void make(struct sched_candidate *c, unsigned n, uint32_t slots)
{
    for (unsigned i = 0; i < n; i++) {
        c[i].id = 1000 + i * 7919;
        c[i].slots = slots;
        c[i].running = 0;
        c[i].eligible = true;
    }
}

Test(sched_policy, exactly_one_first_choice_per_job)
{
    struct sched_candidate c[5];
    make(c, 5, 4);
    for (int j = 0; j < 500; j++) {
        char id[32];
        int firsts = 0;
        int seen[5] = {0};
        snprintf(id, sizeof id, "job-%d", j);
        uint64_t h = sched_job_hash(id);
        for (unsigned i = 0; i < 5; i++) {
            int r = sched_rank(h, c, 5, c[i].id);
            cr_assert(r >= 0 && r < 5);
            cr_assert_eq(seen[r], 0, "two nodes share rank %d", r);
            seen[r] = 1;
            firsts += r == 0;
        }
        cr_assert_eq(firsts, 1);
    }
}

Test(sched_policy, spreads_jobs_evenly_over_equal_nodes)
{
    struct sched_candidate c[3];
    unsigned wins[3] = {0};
    make(c, 3, 4);
    for (int j = 0; j < 3000; j++) {
        char id[32];
        snprintf(id, sizeof id, "%08x-job", j * 2654435761u);
        uint64_t h = sched_job_hash(id);
        for (unsigned i = 0; i < 3; i++) {
            if (sched_rank(h, c, 3, c[i].id) == 0) {
                wins[i]++;
            }
        }
    }
    for (unsigned i = 0; i < 3; i++) {
        /* 1000 expected; allow +-15% */
        cr_assert(wins[i] > 850 && wins[i] < 1150, "node %u won %u", i,
                  wins[i]);
    }
}

Test(sched_policy, idle_node_attracts_more_work)
{
    struct sched_candidate c[2];
    unsigned wins[2] = {0};
    make(c, 2, 8);
    c[0].running = 6; /* 2 free */
    c[1].running = 0; /* 8 free */
    for (int j = 0; j < 2000; j++) {
        char id[32];
        snprintf(id, sizeof id, "j%d", j);
        uint64_t h = sched_job_hash(id);
        for (unsigned i = 0; i < 2; i++) {
            if (sched_rank(h, c, 2, c[i].id) == 0) {
                wins[i]++;
            }
        }
    }
    /* weights 2:8 -> expect about 20%:80% */
    cr_assert(wins[1] > wins[0] * 3, "busy %u idle %u", wins[0], wins[1]);
}

Test(sched_policy, full_node_steps_aside_so_second_steals)
{
    struct sched_candidate c[2];
    make(c, 2, 2);
    uint64_t h = sched_job_hash("job-x");
    int r0 = sched_rank(h, c, 2, c[0].id);
    int first = r0 == 0 ? 0 : 1;
    int second = 1 - first;
    cr_assert_eq(sched_rank(h, c, 2, c[second].id), 1);
    c[first].running = 2; /* full */
    cr_assert_eq(sched_rank(h, c, 2, c[first].id), -1);
    cr_assert_eq(sched_rank(h, c, 2, c[second].id), 0);
    c[second].eligible = false;
    cr_assert_eq(sched_rank(h, c, 2, c[second].id), -1);
}

Test(sched_policy, delay_grows_with_rank_and_is_capped)
{
    cr_assert_eq(sched_claim_delay_ms(0, 100, 1000), 0);
    cr_assert_eq(sched_claim_delay_ms(1, 100, 1000), 100);
    cr_assert_eq(sched_claim_delay_ms(3, 100, 1000), 300);
    cr_assert_eq(sched_claim_delay_ms(50, 100, 1000), 1000);
    cr_assert_eq(sched_claim_delay_ms(-1, 100, 1000), 0);
}
