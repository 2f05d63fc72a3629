/* The claim (steal) policy: which node should claim a pending job first,
 * and how long the others wait before stealing it. Pure: no I/O, no clock,
 * no randomness beyond stable hashes, so every node that sees the same
 * gossip view computes the same ranking (DESIGN.md section 6). */
#ifndef KILN_SCHED_POLICY_H_
#define KILN_SCHED_POLICY_H_

#include <stdbool.h>
#include <stdint.h>

/* One candidate node as this node sees it (from gossip + replicated
 * state). */
struct sched_candidate
{
    uint64_t id;      /* node id */
    uint32_t slots;   /* configured capacity */
    uint32_t running; /* jobs it runs or has claimed */
    bool eligible;    /* alive, lease valid, not draining, tags match */
};

/* Free capacity of a candidate, 0 if not eligible or full. */
uint32_t sched_free_slots(const struct sched_candidate *c);

/* Weighted rendezvous score of (job, node): higher is preferred. The weight
 * is the node's free capacity, so idle nodes attract more work while the
 * job-to-node mapping stays stable as nodes come and go. Returns 0 for a
 * candidate without free slots. */
double sched_score(uint64_t job_hash, const struct sched_candidate *c);

/* Rank of node `self` for the job among cands[0..n): 0 = first choice.
 * Returns -1 if self is not among the candidates with free slots. Ties are
 * broken by node id so the ranking is total. */
int sched_rank(uint64_t job_hash,
               const struct sched_candidate *cands,
               unsigned n,
               uint64_t self);

/* How long a node of rank `rank` waits before claiming: 0 for rank 0, then
 * step_ms per rank, capped at max_ms. Lower-ranked nodes thus only steal
 * work the better-placed nodes left alone. */
uint32_t sched_claim_delay_ms(int rank, uint32_t step_ms, uint32_t max_ms);

/* Stable hash of a job id string (the input of sched_score). */
uint64_t sched_job_hash(const char *job_id);

#endif /* KILN_SCHED_POLICY_H_ */
