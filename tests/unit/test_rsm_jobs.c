/* Unit tests: jobs in the FSM (claims, epochs, output cap, retries, cancel,
 * leases, retention, determinism, snapshots, fuzz). */
#include <criterion/criterion.h>
#include <lz4.h>
#include <lz4frame.h>
#include <raft.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "raft/rsm_fsm.h"
#include "raft/rsm_int.h"
#include "util.h"

static void quiet(void)
{
    log_set_level(LOG_OFF);
}

TestSuite(rsm_jobs, .timeout = 120, .init = quiet);

/* ----------------------------------------------------------------- helpers */

struct tfsm
{
    struct rsm_fsm *f;
    uint64_t index;
};

static void t_init(struct tfsm *t)
{
    cr_assert_eq(rsm_fsm_create(&t->f), 0);
    t->index = 0;
}

static void t_fini(struct tfsm *t)
{
    rsm_fsm_destroy(t->f);
}

/* Apply one command as its own entry at leader time `now`; the command is
 * cleared. Returns the result. */
static struct rsm_result t_apply(struct tfsm *t, int64_t now, struct rsm_cmd c)
{
    void *buf;
    size_t len;
    struct rsm_result r[1];
    unsigned n = 0;
    cr_assert_eq(rsm_entry_encode(&c, 1, now, &buf, &len), 0);
    cr_assert_eq(rsm_fsm_apply(t->f, ++t->index, buf, len, r, 1, &n), 0);
    cr_assert_eq(n, 1);
    raft_free(buf);
    rsm_cmd_clear(&c);
    return r[0];
}

static struct rsm_cmd mk_member(uint64_t id, bool draining)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_MEMBER_PUT);
    c.u.member_put.id = id;
    snprintf(c.u.member_put.name, sizeof c.u.member_put.name, "node-%llu",
             (unsigned long long)id);
    c.u.member_put.draining = draining;
    return c;
}

static struct rsm_cmd mk_submit(uint32_t retries, uint32_t backoff_s)
{
    static const char *const argv[] = {"/bin/true", "x"};
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_JOB_SUBMIT);
    c.u.job_submit.argv.v = calloc(3, sizeof(char *));
    for (unsigned i = 0; i < 2; i++) {
        c.u.job_submit.argv.v[i] = strdup(argv[i]);
    }
    c.u.job_submit.argv.n = 2;
    c.u.job_submit.retries_max = retries;
    c.u.job_submit.backoff_s = backoff_s;
    return c;
}

static struct rsm_cmd mk_claim(uint64_t job, uint64_t node, uint32_t attempt)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_JOB_CLAIM);
    c.u.job_claim.job = job;
    c.u.job_claim.node = node;
    c.u.job_claim.attempt = attempt;
    return c;
}

static struct rsm_cmd mk_start(uint64_t job, uint64_t epoch)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_JOB_START);
    c.u.job_start.job = job;
    c.u.job_start.epoch = epoch;
    return c;
}

static struct rsm_cmd mk_output(uint64_t job,
                                uint64_t epoch,
                                uint64_t seq,
                                const char *raw,
                                uint32_t raw_len)
{
    struct rsm_cmd c;
    int bound = LZ4_compressBound((int)raw_len);
    char *z = malloc((size_t)bound);
    int n = LZ4_compress_default(raw, z, (int)raw_len, bound);
    cr_assert_gt(n, 0);
    rsm_cmd_init(&c, RSM_CMD_JOB_OUTPUT);
    c.u.job_output.job = job;
    c.u.job_output.epoch = epoch;
    c.u.job_output.seq = seq;
    c.u.job_output.stream = RSM_STREAM_STDOUT;
    c.u.job_output.raw_len = raw_len;
    c.u.job_output.len = (uint32_t)n;
    c.u.job_output.data = z;
    return c;
}

static struct rsm_cmd mk_finish(uint64_t job,
                                uint64_t epoch,
                                uint8_t end,
                                int32_t code)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_JOB_FINISH);
    c.u.job_finish.job = job;
    c.u.job_finish.epoch = epoch;
    c.u.job_finish.end = end;
    c.u.job_finish.exit_code = end == RSM_END_EXITED ? code : 0;
    c.u.job_finish.signal = end == RSM_END_SIGNALED ? code : 0;
    return c;
}

static struct rsm_cmd mk_cancel(uint64_t job)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_JOB_CANCEL);
    c.u.job_cancel.job = job;
    return c;
}

static struct rsm_cmd mk_renew(uint64_t node, uint32_t lease_ms)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_NODE_RENEW);
    c.u.node_renew.node = node;
    c.u.node_renew.lease_ms = lease_ms;
    return c;
}

static struct rsm_cmd mk_expire(uint64_t node)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_NODE_EXPIRE);
    c.u.node_expire.node = node;
    return c;
}

static struct rsm_cmd mk_noop(void)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_NOOP);
    return c;
}

#define OK(r) cr_assert_eq((r).code, 0, "%d %s", (r).code, (r).message)
#define REJ(r, e) cr_assert_eq((r).code, (e), "%d %s", (r).code, (r).message)

/* Members 1..n with a lease of 10 s from `now`. */
static void nodes(struct tfsm *t, int64_t now, unsigned n)
{
    for (unsigned i = 1; i <= n; i++) {
        OK(t_apply(t, now, mk_member(i, false)));
        OK(t_apply(t, now, mk_renew(i, 10000)));
    }
}

static void snap(const struct rsm_fsm *f, void **b, size_t *l)
{
    cr_assert_eq(rsm_fsm_snapshot(f, b, l), 0);
}

/* ------------------------------------------------------------------- ids */

Test(rsm_jobs, ids_and_names)
{
    uint64_t s = 0;
    char buf[RSM_JOB_ID_MAX];
    cr_assert_eq(rsm_job_id_parse("j42", &s), 0);
    cr_assert_eq(s, 42);
    cr_assert_eq(rsm_job_id_parse("j18446744073709551615", &s), 0);
    cr_assert_eq(s, UINT64_MAX);
    static const char *const bad[] = {"",   "j",   "42",
                                      "j0", "j01", "j4x",
                                      "J4", "j-1", "j18446744073709551616",
                                      "j 1"};
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(rsm_job_id_parse(bad[i], &s), ERR_INVALID, "%s", bad[i]);
    }
    rsm_job_id_format(7, buf);
    cr_assert_str_eq(buf, "j7");
    rsm_job_id_format(UINT64_MAX, buf);
    cr_assert_str_eq(buf, "j18446744073709551615");
    cr_assert_str_eq(rsm_job_state_name(RSM_JOB_RETRY_WAIT), "retry_wait");
    cr_assert_str_eq(rsm_job_state_name(99), "unknown");
    cr_assert_str_eq(rsm_job_end_name(RSM_END_SPAWN_FAILED), "spawn_failed");
    cr_assert_str_eq(rsm_cmd_name(RSM_CMD_NODE_EXPIRE), "node_expire");
}

Test(rsm_jobs, submit_assigns_sequential_ids)
{
    struct tfsm t;
    const struct rsm_job *j;
    const struct rsm_job *list[8];
    struct rsm_result r;
    t_init(&t);
    for (uint64_t i = 1; i <= 3; i++) {
        r = t_apply(&t, 1000 + (int64_t)i, mk_submit(0, 0));
        OK(r);
        cr_assert_eq(r.value, i);
    }
    j = rsm_fsm_job(t.f, 2);
    cr_assert_not_null(j);
    cr_assert_eq(j->state, RSM_JOB_PENDING);
    cr_assert_eq(j->attempt, 1);
    cr_assert_eq(j->epoch, 0);
    cr_assert_eq(j->created_ms, 1002);
    cr_assert_eq(j->next_chunk, 1);
    cr_assert_str_eq(j->spec.argv.v[0], "/bin/true");
    cr_assert_eq(rsm_fsm_job_count(t.f), 3);
    cr_assert_eq(rsm_fsm_jobs(t.f, -1, list, 8), 3);
    cr_assert_eq(list[0]->seq, 3); /* newest first */
    cr_assert_eq(list[2]->seq, 1);
    cr_assert_eq(rsm_fsm_claimable(t.f, list, 8), 3);
    cr_assert_eq(list[0]->seq, 1);                    /* oldest first */
    cr_assert_eq(rsm_fsm_claimable(t.f, list, 1), 3); /* count, fills 1 */
    cr_assert_null(rsm_fsm_job(t.f, 4));
    t_fini(&t);
}

/* ---------------------------------------------------------------- claims */

Test(rsm_jobs, claim_rules)
{
    struct tfsm t;
    struct rsm_result r;
    const struct rsm_job *list[4];
    t_init(&t);
    nodes(&t, 1000, 2);
    OK(t_apply(&t, 1000, mk_member(3, false))); /* no lease */
    OK(t_apply(&t, 1000, mk_member(4, true)));  /* draining */
    OK(t_apply(&t, 1000, mk_renew(4, 10000)));
    OK(t_apply(&t, 1000, mk_submit(0, 0)));
    OK(t_apply(&t, 1000, mk_submit(0, 0)));

    REJ(t_apply(&t, 1001, mk_claim(9, 1, 1)), ERR_NOTFOUND);
    REJ(t_apply(&t, 1001, mk_claim(1, 1, 2)), ERR_STALE);
    REJ(t_apply(&t, 1001, mk_claim(1, 99, 1)), ERR_NOTFOUND);
    REJ(t_apply(&t, 1001, mk_claim(1, 3, 1)), ERR_BUSY);
    REJ(t_apply(&t, 1001, mk_claim(1, 4, 1)), ERR_BUSY);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->state, RSM_JOB_PENDING);

    r = t_apply(&t, 1002, mk_claim(1, 1, 1));
    OK(r);
    cr_assert_eq(r.value, 1);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->state, RSM_JOB_CLAIMED);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->node, 1);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->claimed_ms, 1002);
    /* Double claim, by the same or another node. */
    REJ(t_apply(&t, 1003, mk_claim(1, 2, 1)), ERR_CONFLICT);
    REJ(t_apply(&t, 1003, mk_claim(1, 1, 1)), ERR_CONFLICT);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->epoch, 1);
    cr_assert_eq(rsm_fsm_jobs_of_node(t.f, 1, list, 4), 1);
    cr_assert_eq(list[0]->seq, 1);
    cr_assert_eq(rsm_fsm_jobs_of_node(t.f, 2, list, 4), 0);
    cr_assert_eq(rsm_fsm_claimable(t.f, list, 4), 1);
    cr_assert_eq(list[0]->seq, 2);

    /* A lease that ran out (clock > lease_until) cannot claim. */
    REJ(t_apply(&t, 1000 + 10001, mk_claim(2, 2, 1)), ERR_BUSY);
    OK(t_apply(&t, 1000 + 10001, mk_renew(2, 10000)));
    OK(t_apply(&t, 1000 + 10001, mk_claim(2, 2, 1)));

    /* A finished job cannot be claimed. */
    OK(t_apply(&t, 11002, mk_finish(2, 1, RSM_END_EXITED, 0)));
    cr_assert_eq(rsm_fsm_job(t.f, 2)->state, RSM_JOB_SUCCEEDED);
    REJ(t_apply(&t, 11003, mk_claim(2, 2, 1)), ERR_CONFLICT);
    t_fini(&t);
}

Test(rsm_jobs, epochs_and_stale_commands)
{
    struct tfsm t;
    struct rsm_result r;
    uint64_t last = 0;
    char raw[] = "out\n";
    t_init(&t);
    nodes(&t, 1000, 2);
    OK(t_apply(&t, 1000, mk_submit(5, 0)));
    for (uint32_t a = 1; a <= 4; a++) {
        uint64_t node = 1 + (a % 2);
        r = t_apply(&t, 1000 + a, mk_claim(1, node, a));
        OK(r);
        cr_assert_gt(r.value, last);
        last = r.value;
        if (a > 1) {
            /* The previous holder's epoch is stale now. */
            REJ(t_apply(&t, 1000 + a, mk_start(1, last - 1)), ERR_STALE);
            REJ(t_apply(&t, 1000 + a, mk_output(1, last - 1, 1, raw, 4)),
                ERR_STALE);
            REJ(t_apply(&t, 1000 + a,
                        mk_finish(1, last - 1, RSM_END_EXITED, 0)),
                ERR_STALE);
        }
        REJ(t_apply(&t, 1000 + a, mk_start(1, last + 1)), ERR_STALE);
        OK(t_apply(&t, 1000 + a, mk_start(1, last)));
        OK(t_apply(&t, 1000 + a, mk_start(1, last))); /* duplicate: no-op */
        cr_assert_eq(rsm_fsm_job(t.f, 1)->state, RSM_JOB_RUNNING);
        cr_assert_eq(rsm_fsm_job(t.f, 1)->started_ms, 1000 + a);
        /* backoff 0: retry_wait, claimable at once */
        OK(t_apply(&t, 1000 + a, mk_finish(1, last, RSM_END_EXITED, 3)));
        cr_assert_eq(rsm_fsm_job(t.f, 1)->state, RSM_JOB_RETRY_WAIT);
        cr_assert_eq(rsm_fsm_job(t.f, 1)->attempt, a + 1);
        cr_assert_eq(rsm_fsm_job(t.f, 1)->epoch, last); /* kept */
        cr_assert_eq(rsm_fsm_job(t.f, 1)->node, 0);
        cr_assert_eq(rsm_fsm_job(t.f, 1)->exit_code, 3);
        /* The attempt is over: its START/FINISH are stale. */
        REJ(t_apply(&t, 1000 + a, mk_finish(1, last, RSM_END_EXITED, 0)),
            ERR_STALE);
        REJ(t_apply(&t, 1000 + a, mk_start(1, last)), ERR_STALE);
    }
    t_fini(&t);
}

/* ---------------------------------------------------------------- output */

Test(rsm_jobs, output_chunk_sequence)
{
    struct tfsm t;
    struct rsm_result r;
    const struct rsm_chunk *ch[4];
    char back[16];
    t_init(&t);
    nodes(&t, 1000, 1);
    OK(t_apply(&t, 1000, mk_submit(0, 0)));
    REJ(t_apply(&t, 1000, mk_output(1, 1, 1, "x", 1)),
        ERR_STALE); /* no claim */
    OK(t_apply(&t, 1000, mk_claim(1, 1, 1)));
    r = t_apply(&t, 1001, mk_output(1, 1, 1, "hello ", 6));
    OK(r);
    cr_assert_eq(r.value, 2);
    r = t_apply(&t, 1001, mk_output(1, 1, 1, "hello ", 6)); /* duplicate */
    OK(r);
    cr_assert_eq(r.value, 2);
    REJ(t_apply(&t, 1001, mk_output(1, 1, 3, "gap", 3)), ERR_STALE);
    OK(t_apply(&t, 1001, mk_output(1, 1, 2, "world\n", 6)));
    cr_assert_eq(rsm_fsm_job(t.f, 1)->out_bytes, 12);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->out_chunks, 2);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->next_chunk, 3);
    cr_assert_eq(rsm_fsm_job_chunks(t.f, 1, ch, 4), 2);
    cr_assert_eq(ch[1]->seq, 2);
    cr_assert_eq(ch[1]->offset, 6);
    cr_assert_eq(ch[1]->raw_len, 6);
    cr_assert_eq(rsm_chunk_decode(ch[1], back), 0);
    cr_assert_eq(memcmp(back, "world\n", 6), 0);
    cr_assert_eq(rsm_fsm_job_chunks(t.f, 99, ch, 4), 0);
    /* Late output of the last attempt after FINISH is still accepted. */
    OK(t_apply(&t, 1002, mk_finish(1, 1, RSM_END_EXITED, 0)));
    OK(t_apply(&t, 1002, mk_output(1, 1, 3, "late", 4)));
    t_fini(&t);
}

/* The byte at raw offset o of the test stream. */
static char pattern(uint64_t o)
{
    return (char)('a' + (o * 7 + o / 65536) % 26);
}

Test(rsm_jobs, output_head_and_tail_cap)
{
    const uint32_t chunk = 64 * 1024;
    const unsigned n_chunks = 168; /* 10.5 MiB */
    const uint64_t total = (uint64_t)chunk * n_chunks;
    struct tfsm t;
    char *raw = malloc(chunk);
    char *back = malloc(RSM_CHUNK_RAW_MAX);
    const struct rsm_chunk *ch[256];
    unsigned n;
    const struct rsm_job *j;
    uint64_t head_end;
    t_init(&t);
    nodes(&t, 1000, 1);
    OK(t_apply(&t, 1000, mk_submit(0, 0)));
    OK(t_apply(&t, 1000, mk_claim(1, 1, 1)));
    for (unsigned i = 0; i < n_chunks; i++) {
        for (uint32_t k = 0; k < chunk; k++) {
            raw[k] = pattern((uint64_t)i * chunk + k);
        }
        OK(t_apply(&t, 1001, mk_output(1, 1, i + 1, raw, chunk)));
    }
    j = rsm_fsm_job(t.f, 1);
    cr_assert_eq(j->out_bytes, total);
    cr_assert_eq(j->out_cut, total - RSM_OUTPUT_HEAD_CAP - RSM_OUTPUT_TAIL_CAP);
    n = rsm_fsm_job_chunks(t.f, 1, ch, 256);
    cr_assert_eq(n, (RSM_OUTPUT_HEAD_CAP + RSM_OUTPUT_TAIL_CAP) / chunk);
    cr_assert_eq(j->out_chunks, n);
    /* Head: contiguous from 0 up to HEAD_CAP; tail: the last TAIL_CAP. */
    head_end = 0;
    for (unsigned i = 0; i < n; i++) {
        if (ch[i]->offset < RSM_OUTPUT_HEAD_CAP) {
            cr_assert_eq(ch[i]->offset, head_end);
            head_end += ch[i]->raw_len;
        }
        if (i > 0) {
            cr_assert_gt(ch[i]->seq, ch[i - 1]->seq);
        }
        cr_assert_eq(rsm_chunk_decode(ch[i], back), 0);
        for (uint32_t k = 0; k < ch[i]->raw_len; k++) {
            if (back[k] != pattern(ch[i]->offset + k)) {
                cr_assert_fail("chunk %u byte %u differs", i, k);
            }
        }
    }
    cr_assert_eq(head_end, RSM_OUTPUT_HEAD_CAP);
    cr_assert_eq(ch[RSM_OUTPUT_HEAD_CAP / chunk]->offset,
                 total - RSM_OUTPUT_TAIL_CAP);
    cr_assert_eq(ch[n - 1]->offset + ch[n - 1]->raw_len, total);
    /* The cut region is exactly the gap. */
    cr_assert_eq(ch[RSM_OUTPUT_HEAD_CAP / chunk]->offset - head_end,
                 j->out_cut);
    free(raw);
    free(back);
    t_fini(&t);
}

/* ------------------------------------------------------------- retries */

static int64_t expected_delay(uint64_t seq, uint32_t attempt, uint32_t b)
{
    uint64_t d = (uint64_t)b << (attempt - 1);
    unsigned char key[16];
    uint64_t ms;
    if (d > RSM_RETRY_BACKOFF_CAP_S) {
        d = RSM_RETRY_BACKOFF_CAP_S;
    }
    ms = d * 1000;
    for (unsigned i = 0; i < 8; i++) {
        key[i] = (unsigned char)(seq >> (8 * i));
        key[8 + i] = (unsigned char)((uint64_t)attempt >> (8 * i));
    }
    return (int64_t)(ms + hash64(key, 16, 0) % (ms / 5));
}

Test(rsm_jobs, finish_outcomes_and_backoff)
{
    struct tfsm t;
    struct rsm_result r;
    const struct rsm_job *j;
    int64_t now = 5000;
    int64_t nb;
    t_init(&t);
    nodes(&t, 1000, 1);
    OK(t_apply(&t, 1000, mk_renew(1, RSM_LEASE_MAX_MS)));
    /* j1: succeeds at once. */
    OK(t_apply(&t, now, mk_submit(2, 10)));
    OK(t_apply(&t, now, mk_claim(1, 1, 1)));
    r = t_apply(&t, now, mk_finish(1, 1, RSM_END_EXITED, 0));
    OK(r);
    cr_assert_eq(r.value, RSM_JOB_SUCCEEDED);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->finished_ms, now);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->end, RSM_END_EXITED);
    /* j2: retries 2, backoff 10 s: attempt 1 and 2 fail -> retry_wait. */
    OK(t_apply(&t, now, mk_submit(2, 10)));
    OK(t_apply(&t, now, mk_claim(2, 1, 1)));
    r = t_apply(&t, now, mk_finish(2, 1, RSM_END_SIGNALED, 9));
    OK(r);
    cr_assert_eq(r.value, RSM_JOB_RETRY_WAIT);
    j = rsm_fsm_job(t.f, 2);
    nb = now + expected_delay(2, 1, 10);
    cr_assert_eq(j->not_before_ms, nb);
    cr_assert_geq(j->not_before_ms, now + 10000);
    cr_assert_lt(j->not_before_ms, now + 12000);
    cr_assert_eq(j->signal, 9);
    cr_assert_eq(j->attempt, 2);
    REJ(t_apply(&t, nb - 1, mk_claim(2, 1, 2)), ERR_CONFLICT);
    r = t_apply(&t, nb, mk_claim(2, 1, 2));
    OK(r);
    cr_assert_eq(r.value, 2);
    now = nb;
    OK(t_apply(&t, now, mk_finish(2, 2, RSM_END_TIMEOUT, 0)));
    j = rsm_fsm_job(t.f, 2);
    cr_assert_eq(j->state, RSM_JOB_RETRY_WAIT);
    cr_assert_eq(j->not_before_ms, now + expected_delay(2, 2, 10));
    cr_assert_geq(j->not_before_ms, now + 20000);
    now = j->not_before_ms;
    OK(t_apply(&t, now, mk_claim(2, 1, 3)));
    r = t_apply(&t, now, mk_finish(2, 3, RSM_END_SPAWN_FAILED, 0));
    cr_assert_eq(r.value, RSM_JOB_FAILED);
    cr_assert_eq(rsm_fsm_job(t.f, 2)->attempt, 3);
    cr_assert_eq(rsm_fsm_job(t.f, 2)->end, RSM_END_SPAWN_FAILED);
    /* j3: the cap: backoff 3000 s, attempt 2 -> 6000 s capped at 3600. */
    OK(t_apply(&t, now, mk_submit(5, 3000)));
    OK(t_apply(&t, now, mk_claim(3, 1, 1)));
    OK(t_apply(&t, now, mk_finish(3, 1, RSM_END_EXITED, 1)));
    j = rsm_fsm_job(t.f, 3);
    now = j->not_before_ms;
    OK(t_apply(&t, 1, mk_renew(1, RSM_LEASE_MAX_MS))); /* clock stays */
    OK(t_apply(&t, now, mk_renew(1, RSM_LEASE_MAX_MS)));
    OK(t_apply(&t, now, mk_claim(3, 1, 2)));
    OK(t_apply(&t, now, mk_finish(3, 2, RSM_END_EXITED, 1)));
    j = rsm_fsm_job(t.f, 3);
    cr_assert_eq(j->not_before_ms, now + expected_delay(3, 2, 3000));
    cr_assert_lt(j->not_before_ms, now + 3600000 + 720000);
    /* j4: retries 0: the first failure is final. */
    OK(t_apply(&t, now, mk_submit(0, 10)));
    OK(t_apply(&t, now, mk_claim(4, 1, 1)));
    OK(t_apply(&t, now, mk_finish(4, 1, RSM_END_EXITED, 2)));
    cr_assert_eq(rsm_fsm_job(t.f, 4)->state, RSM_JOB_FAILED);
    /* j5: retries 0, but attempts that end with their node (fenced) run
     * again at once, RSM_LOST_EXTRA_ATTEMPTS times, then the job fails. */
    OK(t_apply(&t, now, mk_submit(0, 10)));
    for (unsigned a = 1; a <= RSM_LOST_EXTRA_ATTEMPTS + 1; a++) {
        OK(t_apply(&t, now, mk_claim(5, 1, a)));
        OK(t_apply(&t, now, mk_finish(5, a, RSM_END_FENCED, 0)));
        j = rsm_fsm_job(t.f, 5);
        cr_assert_eq(j->attempt, a <= RSM_LOST_EXTRA_ATTEMPTS ? a + 1 : a);
        cr_assert_eq(j->state, a <= RSM_LOST_EXTRA_ATTEMPTS ? RSM_JOB_PENDING
                                                            : RSM_JOB_FAILED);
        cr_assert_eq(j->not_before_ms, 0);
    }
    /* j6: retries 1: a lost attempt counts, so a failure after it is
     * final. */
    OK(t_apply(&t, now, mk_submit(1, 10)));
    OK(t_apply(&t, now, mk_claim(6, 1, 1)));
    OK(t_apply(&t, now, mk_finish(6, 1, RSM_END_LOST, 0)));
    cr_assert_eq(rsm_fsm_job(t.f, 6)->state, RSM_JOB_PENDING);
    OK(t_apply(&t, now, mk_claim(6, 1, 2)));
    OK(t_apply(&t, now, mk_finish(6, 2, RSM_END_EXITED, 1)));
    cr_assert_eq(rsm_fsm_job(t.f, 6)->state, RSM_JOB_FAILED);
    t_fini(&t);
}

/* --------------------------------------------------------------- cancel */

Test(rsm_jobs, cancel_in_every_state)
{
    struct tfsm t;
    struct rsm_result r;
    t_init(&t);
    nodes(&t, 1000, 1);
    for (int i = 0; i < 7; i++) {
        OK(t_apply(&t, 1000, mk_submit(3, 0)));
    }
    REJ(t_apply(&t, 1000, mk_cancel(99)), ERR_NOTFOUND);
    /* pending */
    r = t_apply(&t, 1001, mk_cancel(1));
    OK(r);
    cr_assert_eq(r.value, 0);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->state, RSM_JOB_CANCELLED);
    cr_assert_eq(rsm_fsm_job(t.f, 1)->finished_ms, 1001);
    /* cancelled (finished) */
    REJ(t_apply(&t, 1001, mk_cancel(1)), ERR_CONFLICT);
    REJ(t_apply(&t, 1001, mk_claim(1, 1, 1)), ERR_CONFLICT);
    /* claimed: requested; the holder's failed FINISH ends cancelled */
    OK(t_apply(&t, 1001, mk_claim(2, 1, 1)));
    r = t_apply(&t, 1001, mk_cancel(2));
    OK(r);
    cr_assert_eq(r.value, 1);
    cr_assert(rsm_fsm_job(t.f, 2)->cancel_requested);
    OK(t_apply(&t, 1001, mk_cancel(2))); /* again: same answer */
    OK(t_apply(&t, 1002, mk_finish(2, 1, RSM_END_CANCELLED, 0)));
    cr_assert_eq(rsm_fsm_job(t.f, 2)->state, RSM_JOB_CANCELLED);
    cr_assert(!rsm_fsm_job(t.f, 2)->cancel_requested);
    /* running: exit 0 before the kill still counts as success */
    OK(t_apply(&t, 1002, mk_claim(3, 1, 1)));
    OK(t_apply(&t, 1002, mk_start(3, 1)));
    r = t_apply(&t, 1002, mk_cancel(3));
    cr_assert_eq(r.value, 1);
    OK(t_apply(&t, 1003, mk_finish(3, 1, RSM_END_EXITED, 0)));
    cr_assert_eq(rsm_fsm_job(t.f, 3)->state, RSM_JOB_SUCCEEDED);
    REJ(t_apply(&t, 1003, mk_cancel(3)), ERR_CONFLICT);
    /* retry_wait */
    OK(t_apply(&t, 1003, mk_claim(4, 1, 1)));
    OK(t_apply(&t, 1003, mk_finish(4, 1, RSM_END_EXITED, 2)));
    cr_assert_eq(rsm_fsm_job(t.f, 4)->state, RSM_JOB_RETRY_WAIT);
    r = t_apply(&t, 1004, mk_cancel(4));
    cr_assert_eq(r.value, 0);
    cr_assert_eq(rsm_fsm_job(t.f, 4)->state, RSM_JOB_CANCELLED);
    /* failed */
    OK(t_apply(&t, 1004, mk_submit(0, 0)));
    OK(t_apply(&t, 1004, mk_claim(8, 1, 1)));
    OK(t_apply(&t, 1004, mk_finish(8, 1, RSM_END_EXITED, 2)));
    cr_assert_eq(rsm_fsm_job(t.f, 8)->state, RSM_JOB_FAILED);
    REJ(t_apply(&t, 1004, mk_cancel(8)), ERR_CONFLICT);
    /* cancel requested, then the node is lost: cancelled, no retry */
    OK(t_apply(&t, 1004, mk_claim(5, 1, 1)));
    OK(t_apply(&t, 1004, mk_cancel(5)));
    OK(t_apply(&t, 1000 + 10000 + RSM_LEASE_GRACE_MS + 1, mk_expire(1)));
    cr_assert_eq(rsm_fsm_job(t.f, 5)->state, RSM_JOB_CANCELLED);
    cr_assert_eq(rsm_fsm_job(t.f, 5)->end, RSM_END_LOST);
    t_fini(&t);
}

/* -------------------------------------------------------------- leases */

Test(rsm_jobs, renew_and_expire)
{
    struct tfsm t;
    struct rsm_result r;
    const struct rsm_job *list[4];
    const struct rsm_job *j;
    t_init(&t);
    REJ(t_apply(&t, 1000, mk_renew(1, 3000)), ERR_NOTFOUND);
    REJ(t_apply(&t, 1000, mk_expire(1)), ERR_NOTFOUND);
    OK(t_apply(&t, 1000, mk_member(1, false)));
    OK(t_apply(&t, 1000, mk_member(2, false)));
    r = t_apply(&t, 1000, mk_renew(1, 3000));
    OK(r);
    cr_assert_eq(r.value, 4000);
    cr_assert_eq(rsm_fsm_member(t.f, 1)->lease_until_ms, 4000);
    OK(t_apply(&t, 1000, mk_renew(2, 600000)));
    OK(t_apply(&t, 1000, mk_submit(1, 100))); /* j1: one retry */
    OK(t_apply(&t, 1000, mk_submit(0, 100))); /* j2: none */
    OK(t_apply(&t, 1000, mk_submit(1, 100))); /* j3: on node 2 */
    OK(t_apply(&t, 1000, mk_claim(1, 1, 1)));
    OK(t_apply(&t, 1000, mk_start(1, 1)));
    OK(t_apply(&t, 1000, mk_claim(2, 1, 1)));
    OK(t_apply(&t, 1000, mk_claim(3, 2, 1)));
    /* Not before lease_until + grace. */
    REJ(t_apply(&t, 3000, mk_expire(1)), ERR_STALE);
    REJ(t_apply(&t, 4000 + RSM_LEASE_GRACE_MS, mk_expire(1)), ERR_STALE);
    cr_assert_eq(rsm_fsm_jobs_of_node(t.f, 1, list, 4), 2);
    r = t_apply(&t, 4000 + RSM_LEASE_GRACE_MS + 1, mk_expire(1));
    OK(r);
    cr_assert_eq(r.value, 2);
    cr_assert_eq(rsm_fsm_member(t.f, 1)->lease_until_ms, 4000);
    j = rsm_fsm_job(t.f, 1);
    cr_assert_eq(j->state, RSM_JOB_PENDING); /* no backoff */
    cr_assert_eq(j->attempt, 2);
    cr_assert_eq(j->end, RSM_END_LOST);
    cr_assert_eq(j->node, 0);
    cr_assert_eq(j->epoch, 1);
    /* retries 0, but the node died, not the job: it runs again */
    j = rsm_fsm_job(t.f, 2);
    cr_assert_eq(j->state, RSM_JOB_PENDING);
    cr_assert_eq(j->attempt, 2);
    cr_assert_eq(j->end, RSM_END_LOST);
    cr_assert_eq(rsm_fsm_jobs_of_node(t.f, 1, list, 4), 0);
    cr_assert_eq(rsm_fsm_job(t.f, 3)->state, RSM_JOB_CLAIMED); /* node 2 */
    /* The old holder's late commands are stale; node 2 takes over. */
    REJ(t_apply(&t, 5002, mk_finish(1, 1, RSM_END_EXITED, 0)), ERR_STALE);
    REJ(t_apply(&t, 5002, mk_claim(1, 1, 2)), ERR_BUSY);
    r = t_apply(&t, 5002, mk_claim(1, 2, 2));
    OK(r);
    cr_assert_eq(r.value, 2);
    /* A second expire finds nothing; a renewal makes it stale again. */
    r = t_apply(&t, 5003, mk_expire(1));
    OK(r);
    cr_assert_eq(r.value, 0);
    OK(t_apply(&t, 5003, mk_renew(1, 3000)));
    REJ(t_apply(&t, 5004, mk_expire(1)), ERR_STALE);
    t_fini(&t);
}

/* ------------------------------------------------------------ retention */

Test(rsm_jobs, retention_by_count_and_age)
{
    struct tfsm t;
    const struct rsm_job *list[16];
    t_init(&t);
    rsm__fsm_set_job_retention(t.f, 3, 100000);
    nodes(&t, 1000, 1);
    for (int i = 0; i < 6; i++) {
        OK(t_apply(&t, 1000, mk_submit(0, 0)));
    }
    /* Finish in the order 5, 4, 1, 2 (same time for 4 and 1), 6. */
    OK(t_apply(&t, 1001, mk_claim(5, 1, 1)));
    OK(t_apply(&t, 1001, mk_output(5, 1, 1, "data", 4)));
    OK(t_apply(&t, 1001, mk_finish(5, 1, RSM_END_EXITED, 0)));
    OK(t_apply(&t, 1002, mk_cancel(4)));
    OK(t_apply(&t, 1002, mk_cancel(1)));
    cr_assert_eq(rsm_fsm_job_count(t.f), 6);
    OK(t_apply(&t, 1003, mk_cancel(2))); /* 4 finished: the oldest goes */
    cr_assert_null(rsm_fsm_job(t.f, 5));
    cr_assert_eq(rsm_fsm_job_count(t.f), 5);
    /* By (finished_ms, seq), j1 goes before j4 though j4 finished first. */
    OK(t_apply(&t, 1004, mk_cancel(6)));
    cr_assert_null(rsm_fsm_job(t.f, 1));
    cr_assert_not_null(rsm_fsm_job(t.f, 4));
    cr_assert_eq(rsm_fsm_jobs(t.f, RSM_JOB_CANCELLED, list, 16), 3);
    /* Lower the bound: j4 goes next. */
    rsm__fsm_set_job_retention(t.f, 2, 100000);
    OK(t_apply(&t, 1005, mk_noop()));
    cr_assert_null(rsm_fsm_job(t.f, 4));
    cr_assert_not_null(rsm_fsm_job(t.f, 2));
    cr_assert_not_null(rsm_fsm_job(t.f, 3)); /* pending: never deleted */
    /* By age: j2 finished at 1003, j6 at 1004. */
    OK(t_apply(&t, 1003 + 100000, mk_noop()));
    cr_assert_not_null(rsm_fsm_job(t.f, 2));
    OK(t_apply(&t, 1003 + 100001, mk_noop()));
    cr_assert_null(rsm_fsm_job(t.f, 2));
    cr_assert_not_null(rsm_fsm_job(t.f, 6));
    cr_assert_eq(rsm_fsm_jobs(t.f, -1, list, 16), 2);
    cr_assert_eq(list[0]->seq, 6);
    cr_assert_eq(list[1]->seq, 3);
    /* The counter never goes back. */
    cr_assert_eq(t_apply(&t, 200000, mk_submit(0, 0)).value, 7);
    t_fini(&t);
}

Test(rsm_jobs, claimable_ignores_many_finished)
{
    struct tfsm t;
    const struct rsm_job *list[4];
    struct rsm_cmd cmds[64];
    t_init(&t);
    nodes(&t, 1000, 1);
    /* 3000 jobs in batches; all but the last two cancelled. */
    for (unsigned b = 0; b < 3000 / 64 + 1; b++) {
        void *buf;
        size_t len;
        struct rsm_result r[64];
        unsigned n;
        for (unsigned i = 0; i < 64; i++) {
            cmds[i] = mk_submit(0, 0);
        }
        cr_assert_eq(rsm_entry_encode(cmds, 64, 1000, &buf, &len), 0);
        cr_assert_eq(rsm_fsm_apply(t.f, ++t.index, buf, len, r, 64, &n), 0);
        raft_free(buf);
        for (unsigned i = 0; i < 64; i++) {
            rsm_cmd_clear(&cmds[i]);
        }
    }
    for (uint64_t s = 1; s + 2 <= rsm_fsm_job_seq(t.f); s++) {
        OK(t_apply(&t, 1001, mk_cancel(s)));
    }
    cr_assert_eq(rsm_fsm_claimable(t.f, list, 4), 2);
    cr_assert_eq(list[0]->seq, rsm_fsm_job_seq(t.f) - 1);
    cr_assert_eq(rsm_fsm_jobs(t.f, RSM_JOB_PENDING, list, 4), 2);
    cr_assert_eq(list[0]->seq, rsm_fsm_job_seq(t.f)); /* newest first */
    cr_assert_eq(t.f->jobs_active.n - t.f->jobs_active_holes, 2);
    t_fini(&t);
}

/* ------------------------------------------------- random logs and fuzz */

struct elog
{
    void **buf;
    size_t *len;
    unsigned n;
};

/* One random command, made plausible by looking at f (so that claims,
 * starts and finishes often succeed). */
static struct rsm_cmd random_cmd(struct prng *p, const struct rsm_fsm *f)
{
    uint64_t seqmax = rsm_fsm_job_seq(f);
    uint64_t job = 1 + prng_below(p, seqmax + 2);
    const struct rsm_job *j = rsm_fsm_job(f, job);
    uint64_t node = 1 + prng_below(p, 4);
    uint64_t epoch = j != NULL ? j->epoch : 1;
    char raw[300];
    if (epoch == 0 || prng_below(p, 10) == 0) {
        epoch = 1 + prng_below(p, 3);
    }
    switch (prng_below(p, 12)) {
        case 0:
        case 1:
            return mk_submit((uint32_t)prng_below(p, 3),
                             (uint32_t)prng_below(p, 3));
        case 2:
        case 3:
            return mk_claim(job, node,
                            j != NULL && prng_below(p, 8) != 0
                                ? j->attempt
                                : 1 + (uint32_t)prng_below(p, 3));
        case 4:
            return mk_start(job, epoch);
        case 5:
        case 6: {
            uint32_t n = 1 + (uint32_t)prng_below(p, sizeof raw);
            uint64_t seq = j != NULL ? j->next_chunk : 1;
            for (uint32_t i = 0; i < n; i++) {
                raw[i] = (char)('a' + prng_below(p, 3));
            }
            if (prng_below(p, 6) == 0) {
                seq = 1 + prng_below(p, seq + 1);
            }
            return mk_output(job, epoch, seq, raw, n);
        }
        case 7:
        case 8: {
            uint8_t end = (uint8_t)(1 + prng_below(p, RSM_END__COUNT - 1));
            return mk_finish(job, epoch, end, (int32_t)prng_below(p, 2));
        }
        case 9:
            return mk_cancel(job);
        case 10:
            return mk_renew(node, 100 + (uint32_t)prng_below(p, 3000));
        default:
            return prng_below(p, 2) ? mk_expire(node)
                                    : mk_member(node, prng_below(p, 5) == 0);
    }
}

/* Invariants of the job tables. */
static void check_invariants(const struct rsm_fsm *f, uint64_t *epochs)
{
    const struct rsm_job *list[512];
    unsigned n = rsm_fsm_jobs(f, -1, list, 512);
    unsigned held = 0;
    cr_assert_leq(n, 512);
    cr_assert_eq(n, rsm_fsm_job_count(f));
    for (unsigned i = 0; i < n; i++) {
        const struct rsm_job *j = list[i];
        const struct rsm_chunk *ch[512];
        unsigned nc = rsm_fsm_job_chunks(f, j->seq, ch, 512);
        uint64_t stored = 0;
        bool holding =
            j->state == RSM_JOB_CLAIMED || j->state == RSM_JOB_RUNNING;
        cr_assert_eq(holding, j->node != 0, "j%llu",
                     (unsigned long long)j->seq);
        cr_assert(!j->cancel_requested || holding);
        cr_assert_geq(j->attempt, 1);
        cr_assert(j->seq < 512);
        cr_assert_geq(j->epoch, epochs[j->seq]); /* monotonic */
        epochs[j->seq] = j->epoch;
        held += holding ? 1 : 0;
        cr_assert_leq(nc, 512);
        cr_assert_eq(nc, j->out_chunks);
        for (unsigned k = 0; k < nc && k < 512; k++) {
            stored += ch[k]->raw_len;
        }
        cr_assert_eq(stored + j->out_cut, j->out_bytes);
        if (i > 0) {
            cr_assert_lt(j->seq, list[i - 1]->seq);
        }
    }
    {
        unsigned by_node = 0;
        for (uint64_t node = 1; node <= 4; node++) {
            by_node += rsm_fsm_jobs_of_node(f, node, list, 512);
        }
        cr_assert_eq(by_node, held); /* each holding job has one holder */
    }
}

static void gen_log(struct elog *l, uint64_t seed, unsigned n)
{
    struct tfsm t;
    struct prng p;
    int64_t now = 1000;
    uint64_t epochs[512] = {0};
    t_init(&t);
    rsm__fsm_set_job_retention(t.f, 20, 60000);
    prng_seed(&p, seed);
    l->buf = calloc(n, sizeof *l->buf);
    l->len = calloc(n, sizeof *l->len);
    l->n = n;
    for (unsigned e = 0; e < n; e++) {
        struct rsm_cmd cmds[4];
        unsigned k = 1 + (unsigned)prng_below(&p, 4);
        struct rsm_result r[4];
        unsigned nr;
        now += (int64_t)prng_below(&p, 700);
        for (unsigned i = 0; i < k; i++) {
            cmds[i] = random_cmd(&p, t.f);
        }
        cr_assert_eq(rsm_entry_encode(cmds, k, now, &l->buf[e], &l->len[e]), 0);
        for (unsigned i = 0; i < k; i++) {
            rsm_cmd_clear(&cmds[i]);
        }
        cr_assert_eq(
            rsm_fsm_apply(t.f, ++t.index, l->buf[e], l->len[e], r, 4, &nr), 0);
        cr_assert_eq(nr, k);
        check_invariants(t.f, epochs);
    }
    t_fini(&t);
}

static void free_log(struct elog *l)
{
    for (unsigned i = 0; i < l->n; i++) {
        raft_free(l->buf[i]);
    }
    free(l->buf);
    free(l->len);
}

static void replay(struct rsm_fsm *f,
                   const struct elog *l,
                   unsigned from,
                   unsigned to)
{
    for (unsigned e = from; e < to; e++) {
        struct rsm_result r[4];
        unsigned nr;
        cr_assert_eq(rsm_fsm_apply(f, e + 1, l->buf[e], l->len[e], r, 4, &nr),
                     0);
    }
}

Test(rsm_jobs, three_replicas_identical)
{
    struct elog l;
    struct rsm_fsm *f[4];
    void *b[4];
    size_t len[4];
    char errmsg[ERRMSG_SIZE];
    gen_log(&l, 42, 600);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(rsm_fsm_create(&f[i]), 0);
        rsm__fsm_set_job_retention(f[i], 20, 60000);
    }
    for (int i = 0; i < 3; i++) {
        replay(f[i], &l, 0, l.n);
    }
    /* The fourth restores a mid-log snapshot of the first's twin. */
    {
        struct rsm_fsm *m;
        void *mb;
        size_t ml;
        cr_assert_eq(rsm_fsm_create(&m), 0);
        rsm__fsm_set_job_retention(m, 20, 60000);
        replay(m, &l, 0, 300);
        snap(m, &mb, &ml);
        cr_assert_eq(rsm_fsm_restore(f[3], mb, ml, errmsg), 0, "%s", errmsg);
        free(mb);
        rsm_fsm_destroy(m);
        replay(f[3], &l, 300, l.n);
    }
    cr_assert_gt(rsm_fsm_job_seq(f[0]), 10);
    for (int i = 0; i < 4; i++) {
        snap(f[i], &b[i], &len[i]);
    }
    for (int i = 1; i < 4; i++) {
        cr_assert_eq(len[i], len[0], "replica %d", i);
        cr_assert_eq(memcmp(b[i], b[0], len[0]), 0, "replica %d", i);
        cr_assert_eq(rsm_fsm_digest(f[i]), rsm_fsm_digest(f[0]));
    }
    for (int i = 0; i < 4; i++) {
        free(b[i]);
        rsm_fsm_destroy(f[i]);
    }
    free_log(&l);
}

Test(rsm_jobs, snapshot_round_trip_with_chunks)
{
    struct tfsm t;
    struct rsm_fsm *g;
    void *b1, *b2;
    size_t l1, l2;
    char errmsg[ERRMSG_SIZE];
    const struct rsm_chunk *c1[4], *c2[4];
    const struct rsm_job *a, *z;
    char back[16];
    t_init(&t);
    nodes(&t, 1000, 2);
    OK(t_apply(&t, 1000, mk_submit(2, 5)));
    OK(t_apply(&t, 1000, mk_submit(0, 0)));
    OK(t_apply(&t, 1000, mk_submit(0, 0)));
    OK(t_apply(&t, 1001, mk_claim(1, 2, 1)));
    OK(t_apply(&t, 1001, mk_start(1, 1)));
    OK(t_apply(&t, 1001, mk_output(1, 1, 1, "abc", 3)));
    OK(t_apply(&t, 1001, mk_output(1, 1, 2, "defg", 4)));
    OK(t_apply(&t, 1001, mk_cancel(1)));
    OK(t_apply(&t, 1002, mk_cancel(3)));
    snap(t.f, &b1, &l1);
    cr_assert_eq(rsm_fsm_create(&g), 0);
    cr_assert_eq(rsm_fsm_restore(g, b1, l1, errmsg), 0, "%s", errmsg);
    snap(g, &b2, &l2);
    cr_assert_eq(l1, l2);
    cr_assert_eq(memcmp(b1, b2, l1), 0);
    a = rsm_fsm_job(t.f, 1);
    z = rsm_fsm_job(g, 1);
    cr_assert_eq(z->state, a->state);
    cr_assert_eq(z->epoch, a->epoch);
    cr_assert_eq(z->node, 2);
    cr_assert(z->cancel_requested);
    cr_assert_eq(z->next_chunk, 3);
    cr_assert_eq(rsm_fsm_job_chunks(g, 1, c2, 4), 2);
    cr_assert_eq(rsm_fsm_job_chunks(t.f, 1, c1, 4), 2);
    cr_assert_eq(c2[1]->offset, 3);
    cr_assert_eq(rsm_chunk_decode(c2[1], back), 0);
    cr_assert_eq(memcmp(back, "defg", 4), 0);
    cr_assert_eq(rsm_fsm_job_seq(g), 3);
    cr_assert_eq(rsm_fsm_jobs_of_node(g, 2, NULL, 0), 1);
    /* Both continue identically. */
    {
        struct tfsm u = {g, t.index};
        OK(t_apply(&u, 1003, mk_finish(1, 1, RSM_END_SIGNALED, 15)));
        OK(t_apply(&t, 1003, mk_finish(1, 1, RSM_END_SIGNALED, 15)));
        OK(t_apply(&u, 1003, mk_submit(0, 0)));
        OK(t_apply(&t, 1003, mk_submit(0, 0)));
        cr_assert_eq(rsm_fsm_digest(g), rsm_fsm_digest(t.f));
    }
    /* A corrupted chunk inside a valid frame is refused. */
    free(b1);
    free(b2);
    rsm_fsm_destroy(g);
    t_fini(&t);
}

Test(rsm_jobs, fuzz_random_commands_keep_invariants)
{
    for (uint64_t seed = 1; seed <= 6; seed++) {
        struct elog l;
        gen_log(&l, seed * 7919, 400); /* checks invariants per entry */
        free_log(&l);
    }
}

/* ----------------------------------------------------------------- codec */

Test(rsm_jobs, codec_rejects_bad_job_commands)
{
    struct rsm_cmd c;
    char errmsg[ERRMSG_SIZE];
    struct tfsm t;
    struct rsm_result r;
    t_init(&t);

    c = mk_renew(1, RSM_LEASE_MIN_MS - 1);
    cr_assert_eq(rsm_cmd_validate(&c, errmsg), ERR_INVALID);
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    c = mk_renew(1, RSM_LEASE_MAX_MS + 1);
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    c = mk_claim(1, 0, 1);
    cr_assert_eq(rsm_cmd_validate(&c, errmsg), ERR_INVALID);
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    c = mk_finish(1, 1, RSM_END_NONE, 0);
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    c = mk_finish(1, 0, RSM_END_EXITED, 0);
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    c = mk_submit(0, 0);
    free(c.u.job_submit.argv.v[0]);
    c.u.job_submit.argv.v[0] = strdup("");
    cr_assert_eq(rsm_cmd_validate(&c, errmsg), ERR_INVALID);
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    c = mk_submit(0, 0);
    str_copy(c.u.job_submit.pipeline, sizeof c.u.job_submit.pipeline, "-x");
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    /* raw_len that does not match the block */
    c = mk_output(1, 1, 1, "hello", 5);
    c.u.job_output.raw_len = 6;
    cr_assert_eq(rsm_cmd_validate(&c, errmsg), ERR_INVALID);
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    c = mk_output(1, 1, 1, "hello", 5);
    c.u.job_output.raw_len = 4;
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    /* garbage block */
    c = mk_output(1, 1, 1, "hello", 5);
    memset(c.u.job_output.data, 0xff, c.u.job_output.len);
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    c = mk_output(1, 1, 0, "hello", 5);
    REJ(t_apply(&t, 1, c), ERR_MALFORMED);
    cr_assert_eq(rsm_fsm_job_count(t.f), 0);
    /* The index advanced through every rejection. */
    cr_assert_eq(rsm_fsm_last_index(t.f), t.index);
    c = mk_submit(0, 0);
    cr_assert_eq(rsm_cmd_validate(&c, errmsg), 0, "%s", errmsg);
    r = t_apply(&t, 1, c);
    OK(r);
    t_fini(&t);
}

Test(rsm_jobs, idempotent_submit_returns_same_id)
{
    struct tfsm t;
    struct rsm_cmd c;
    struct rsm_result r1, r2;
    t_init(&t);
    c = mk_submit(0, 0);
    str_copy(c.idem_key, sizeof c.idem_key, "k-1");
    r1 = t_apply(&t, 1, c);
    c = mk_submit(0, 0);
    str_copy(c.idem_key, sizeof c.idem_key, "k-1");
    r2 = t_apply(&t, 2, c);
    OK(r2);
    cr_assert_eq(r1.value, r2.value);
    cr_assert_eq(r1.index, r2.index);
    cr_assert_eq(rsm_fsm_job_count(t.f), 1);
    t_fini(&t);
}

/* A one-job snapshot built by hand; variant v breaks one rule (0 = valid). */
static void hand_snapshot(unsigned v, void **out, size_t *out_len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    LZ4F_preferences_t prefs;
    struct rsm_cmd c = mk_submit(1, 0);
    char z[64];
    int zn = LZ4_compress_default("hello", z, 5, sizeof z);
    size_t bound;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 8);
    msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
    msgpack_pack_int64(&pk, 100); /* clock */
    msgpack_pack_uint64(&pk, 9);
    msgpack_pack_array(&pk, 1);
    {
        struct rsm_member m = {.id = 1, .name = "n1", .lease_until_ms = 50};
        rsm__member_pack(&m, &pk);
    }
    msgpack_pack_array(&pk, 0);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_uint64(&pk, v == 1 ? 1 : 2); /* job_seq */
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 20);
    rsm__job_spec_pack(&c.u.job_submit, &pk);
    msgpack_pack_uint64(&pk, 2);                /* seq */
    msgpack_pack_uint8(&pk, RSM_JOB_RUNNING);   /* state */
    msgpack_pack_uint32(&pk, 1);                /* attempt */
    msgpack_pack_uint64(&pk, 3);                /* epoch */
    msgpack_pack_uint64(&pk, v == 2 ? 0 : 1);   /* node */
    msgpack_pack_int64(&pk, 0);                 /* not_before */
    msgpack_pack_true(&pk);                     /* cancel */
    msgpack_pack_uint8(&pk, 0);                 /* end */
    msgpack_pack_uint32(&pk, 0);                /* exit */
    msgpack_pack_uint32(&pk, 0);                /* signal */
    msgpack_pack_int64(&pk, v == 3 ? 101 : 10); /* created */
    msgpack_pack_int64(&pk, 20);                /* claimed */
    msgpack_pack_int64(&pk, 30);                /* started */
    msgpack_pack_int64(&pk, 0);                 /* finished */
    msgpack_pack_uint64(&pk, v == 4 ? 6 : 5);   /* out_bytes */
    msgpack_pack_uint64(&pk, 0);                /* out_cut */
    msgpack_pack_uint64(&pk, 2);                /* next_chunk */
    msgpack_pack_uint64(&pk, 1);                /* last_node */
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint64(&pk, v == 5 ? 2 : 1);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint32(&pk, v == 6 ? 4 : 5);
    if (v == 7) {
        z[0] = (char)0xff;
        z[1] = (char)0xff;
    }
    msgpack_pack_bin(&pk, (size_t)zn);
    msgpack_pack_bin_body(&pk, z, (size_t)zn);
    rsm_cmd_clear(&c);
    memset(&prefs, 0, sizeof prefs);
    prefs.frameInfo.contentSize = sb.size;
    bound = LZ4F_compressFrameBound(sb.size, &prefs);
    *out = malloc(bound);
    *out_len = LZ4F_compressFrame(*out, bound, sb.data, sb.size, &prefs);
    cr_assert(!LZ4F_isError(*out_len));
    msgpack_sbuffer_destroy(&sb);
}

Test(rsm_jobs, invalid_job_snapshots_refused)
{
    for (unsigned v = 0; v < 8; v++) {
        struct rsm_fsm *g;
        void *b;
        size_t l;
        char errmsg[ERRMSG_SIZE] = "";
        int rv;
        cr_assert_eq(rsm_fsm_create(&g), 0);
        hand_snapshot(v, &b, &l);
        rv = rsm_fsm_restore(g, b, l, errmsg);
        if (v == 0) {
            const struct rsm_chunk *ch[2];
            char back[8];
            cr_assert_eq(rv, 0, "%s", errmsg);
            cr_assert_eq(rsm_fsm_job(g, 2)->state, RSM_JOB_RUNNING);
            cr_assert_eq(rsm_fsm_jobs_of_node(g, 1, NULL, 0), 1);
            cr_assert_eq(rsm_fsm_job_chunks(g, 2, ch, 2), 1);
            cr_assert_eq(rsm_chunk_decode(ch[0], back), 0);
            cr_assert_eq(memcmp(back, "hello", 5), 0);
        } else {
            cr_assert_eq(rv, ERR_MALFORMED, "variant %u: %d %s", v, rv, errmsg);
            cr_assert_eq(rsm_fsm_job_count(g), 0);
        }
        free(b);
        rsm_fsm_destroy(g);
    }
}

/* A grant handed back before it started ("released") is not an attempt:
 * the job is pending again with the same attempt number, any number of
 * times; released after START it counts as lost. */
Test(rsm_jobs, released_before_start_is_not_an_attempt)
{
    struct tfsm t;
    const struct rsm_job *j;
    int64_t now = 1000;
    t_init(&t);
    OK(t_apply(&t, now, mk_member(1, false)));
    OK(t_apply(&t, now, mk_renew(1, RSM_LEASE_MAX_MS)));
    OK(t_apply(&t, now, mk_submit(0, 10))); /* j1: retries 0 */
    for (uint64_t e = 1; e <= 10; e++) {
        OK(t_apply(&t, now, mk_claim(1, 1, 1)));
        OK(t_apply(&t, now, mk_finish(1, e, RSM_END_RELEASED, 0)));
        j = rsm_fsm_job(t.f, 1);
        cr_assert_eq(j->state, RSM_JOB_PENDING);
        cr_assert_eq(j->attempt, 1);
        cr_assert_eq(j->epoch, e);
        cr_assert_eq(j->node, 0);
    }
    /* started, then "released": counted like a lost attempt */
    OK(t_apply(&t, now, mk_claim(1, 1, 1)));
    OK(t_apply(&t, now, mk_start(1, 11)));
    OK(t_apply(&t, now, mk_finish(1, 11, RSM_END_RELEASED, 0)));
    j = rsm_fsm_job(t.f, 1);
    cr_assert_eq(j->state, RSM_JOB_PENDING);
    cr_assert_eq(j->attempt, 2);
    t_fini(&t);
}
