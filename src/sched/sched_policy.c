/* Claim policy: weighted rendezvous hashing over free capacity. */
#include "sched/sched_policy.h"

#include <math.h>
#include <string.h>

#include "util.h"

uint32_t sched_free_slots(const struct sched_candidate *c)
{
    if (!c->eligible || c->running >= c->slots) {
        return 0;
    }
    return c->slots - c->running;
}

uint64_t sched_job_hash(const char *job_id)
{
    return hash64(job_id, strlen(job_id), 0x6b696c6eULL /* "kiln" */);
}

double sched_score(uint64_t job_hash, const struct sched_candidate *c)
{
    uint32_t w = sched_free_slots(c);
    uint64_t h;
    double u;
    if (w == 0) {
        return 0.0;
    }
    h = hash64(&c->id, sizeof c->id, job_hash);
    /* u in (0, 1): 53 random bits, never 0 or 1. */
    u = ((double)(h >> 11) + 0.5) / 9007199254740992.0;
    /* Weighted rendezvous (Schindelhauer & Schomaker): w / -ln(u). */
    return (double)w / -log(u);
}

static bool better(double sa, uint64_t ida, double sb, uint64_t idb)
{
    if (sa != sb) {
        return sa > sb;
    }
    return ida < idb;
}

int sched_rank(uint64_t job_hash,
               const struct sched_candidate *cands,
               unsigned n,
               uint64_t self)
{
    const struct sched_candidate *me = NULL;
    double my_score;
    int rank = 0;

    for (unsigned i = 0; i < n; i++) {
        if (cands[i].id == self) {
            me = &cands[i];
            break;
        }
    }
    if (me == NULL || sched_free_slots(me) == 0) {
        return -1;
    }
    my_score = sched_score(job_hash, me);
    for (unsigned i = 0; i < n; i++) {
        double s;
        if (cands[i].id == self || sched_free_slots(&cands[i]) == 0) {
            continue;
        }
        s = sched_score(job_hash, &cands[i]);
        if (better(s, cands[i].id, my_score, self)) {
            rank++;
        }
    }
    return rank;
}

uint32_t sched_claim_delay_ms(int rank, uint32_t step_ms, uint32_t max_ms)
{
    uint64_t d;
    if (rank <= 0) {
        return 0;
    }
    d = (uint64_t)rank * step_ms;
    return d > max_ms ? max_ms : (uint32_t)d;
}
