/* Unit tests: pipeline runs in the FSM (exactly-once firing, targets,
 * run state, retries, overlap, dependencies, RUN_RETRY, retention,
 * determinism, snapshots, codec). */
#include <criterion/criterion.h>
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

TestSuite(rsm_runs, .timeout = 120, .init = quiet);

/* ----------------------------------------------------------------- helpers */

#define T0 1000000LL /* leader time of the first command */
#define NODE 7

struct tfsm
{
    struct rsm_fsm *f;
    uint64_t index;
    int64_t now; /* leader time of the next command (+1 ms each) */
};

static struct rsm_result t_apply(struct tfsm *t, struct rsm_cmd c)
{
    void *buf;
    size_t len;
    struct rsm_result r[1];
    unsigned n = 0;
    cr_assert_eq(rsm_entry_encode(&c, 1, t->now++, &buf, &len), 0);
    cr_assert_eq(rsm_fsm_apply(t->f, ++t->index, buf, len, r, 1, &n), 0);
    cr_assert_eq(n, 1);
    raft_free(buf);
    rsm_cmd_clear(&c);
    return r[0];
}

static void strv_fill(struct rsm_strv *v, const char *const *s, unsigned n)
{
    v->v = calloc((size_t)n + 1, sizeof *v->v);
    cr_assert_not_null(v->v);
    for (unsigned i = 0; i < n; i++) {
        v->v[i] = strdup(s[i]);
    }
    v->n = n;
}

struct pdef
{
    const char *name;
    uint8_t overlap;
    const char *const *targets;
    unsigned n_targets;
    const char *const *after;
    unsigned n_after;
    uint32_t retries;
    bool paused;
};

static struct rsm_cmd mk_pipeline(const struct pdef *d, bool update)
{
    static const char *const argv[] = {"/bin/sh", "-c", "true"};
    struct rsm_cmd c;
    struct rsm_pipeline_spec *s;
    rsm_cmd_init(&c,
                 update ? RSM_CMD_PIPELINE_UPDATE : RSM_CMD_PIPELINE_CREATE);
    s = update ? &c.u.pipeline_update.spec : &c.u.pipeline_create;
    snprintf(s->name, sizeof s->name, "%s", d->name);
    strv_fill(&s->command, argv, 3);
    strv_fill(&s->after, d->after, d->n_after);
    strv_fill(&s->targets, d->targets, d->n_targets);
    s->overlap = d->overlap;
    s->retries_max = d->retries;
    s->timeout_s = 30;
    s->paused = d->paused;
    s->n_env = 1;
    s->env = calloc(1, sizeof *s->env);
    s->env[0].key = strdup("MODE");
    s->env[0].value = strdup("fast");
    return c;
}

static void create(struct tfsm *t, const struct pdef *d)
{
    struct rsm_result r = t_apply(t, mk_pipeline(d, false));
    cr_assert_eq(r.code, 0, "%s", r.message);
}

static struct rsm_result fire(struct tfsm *t,
                              const char *name,
                              int64_t at,
                              bool skip)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_PIPELINE_FIRE);
    snprintf(c.u.pipeline_fire.pipeline, sizeof c.u.pipeline_fire.pipeline,
             "%s", name);
    c.u.pipeline_fire.scheduled_for_ms = at;
    c.u.pipeline_fire.skip = skip;
    return t_apply(t, c);
}

static struct rsm_result manual(struct tfsm *t, const char *name)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_RUN_MANUAL);
    snprintf(c.u.run_manual.pipeline, sizeof c.u.run_manual.pipeline, "%s",
             name);
    return t_apply(t, c);
}

static struct rsm_result retry(struct tfsm *t, uint64_t run)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_RUN_RETRY);
    c.u.run_retry.run = run;
    return t_apply(t, c);
}

/* A run fired at `at`, which must succeed in creating one. */
static const struct rsm_run *fire_run(struct tfsm *t,
                                      const char *name,
                                      int64_t at)
{
    struct rsm_result r = fire(t, name, at, false);
    const struct rsm_run *run;
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_gt(r.value, 0);
    run = rsm_fsm_run(t->f, r.value);
    cr_assert_not_null(run);
    return run;
}

static void t_init(struct tfsm *t)
{
    struct rsm_cmd c;
    struct rsm_result r;
    cr_assert_eq(rsm_fsm_create(&t->f), 0);
    t->index = 0;
    t->now = T0;
    rsm_cmd_init(&c, RSM_CMD_MEMBER_PUT);
    c.u.member_put.id = NODE;
    snprintf(c.u.member_put.name, sizeof c.u.member_put.name, "worker");
    r = t_apply(t, c);
    cr_assert_eq(r.code, 0, "%s", r.message);
    rsm_cmd_init(&c, RSM_CMD_NODE_RENEW);
    c.u.node_renew.node = NODE;
    c.u.node_renew.lease_ms = RSM_LEASE_MAX_MS;
    r = t_apply(t, c);
    cr_assert_eq(r.code, 0, "%s", r.message);
}

static void t_fini(struct tfsm *t)
{
    rsm_fsm_destroy(t->f);
}

/* Claim and start job seq; returns the epoch. */
static uint64_t start_job(struct tfsm *t, uint64_t seq)
{
    const struct rsm_job *j = rsm_fsm_job(t->f, seq);
    struct rsm_cmd c;
    struct rsm_result r;
    uint64_t epoch;
    cr_assert_not_null(j);
    rsm_cmd_init(&c, RSM_CMD_JOB_CLAIM);
    c.u.job_claim.job = seq;
    c.u.job_claim.node = NODE;
    c.u.job_claim.attempt = j->attempt;
    r = t_apply(t, c);
    cr_assert_eq(r.code, 0, "claim j%llu: %s", (unsigned long long)seq,
                 r.message);
    epoch = r.value;
    rsm_cmd_init(&c, RSM_CMD_JOB_START);
    c.u.job_start.job = seq;
    c.u.job_start.epoch = epoch;
    r = t_apply(t, c);
    cr_assert_eq(r.code, 0, "%s", r.message);
    return epoch;
}

static void finish_job(struct tfsm *t, uint64_t seq, uint64_t epoch, int code)
{
    struct rsm_cmd c;
    struct rsm_result r;
    rsm_cmd_init(&c, RSM_CMD_JOB_FINISH);
    c.u.job_finish.job = seq;
    c.u.job_finish.epoch = epoch;
    c.u.job_finish.end = RSM_END_EXITED;
    c.u.job_finish.exit_code = code;
    r = t_apply(t, c);
    cr_assert_eq(r.code, 0, "%s", r.message);
}

/* One attempt of job seq exiting with code. */
static void run_job(struct tfsm *t, uint64_t seq, int code)
{
    finish_job(t, seq, start_job(t, seq), code);
}

static void cancel_job(struct tfsm *t, uint64_t seq)
{
    struct rsm_cmd c;
    struct rsm_result r;
    rsm_cmd_init(&c, RSM_CMD_JOB_CANCEL);
    c.u.job_cancel.job = seq;
    r = t_apply(t, c);
    cr_assert_eq(r.code, 0, "%s", r.message);
}

/* Run every job of run seq to exit code 0. */
static void succeed_run(struct tfsm *t, uint64_t seq)
{
    const struct rsm_run *run = rsm_fsm_run(t->f, seq);
    unsigned n;
    uint64_t jobs[RSM_TARGETS_MAX];
    cr_assert_not_null(run);
    n = run->n_jobs;
    memcpy(jobs, run->jobs, n * sizeof *jobs);
    for (unsigned i = 0; i < n; i++) {
        run_job(t, jobs[i], 0);
    }
    run = rsm_fsm_run(t->f, seq);
    cr_assert_eq(run->state, RSM_RUN_SUCCEEDED);
}

static unsigned count_runs(struct tfsm *t,
                           const char *pipeline,
                           int64_t at,
                           int trigger)
{
    const struct rsm_run *out[512];
    unsigned n = rsm_fsm_runs(t->f, pipeline, out, 512);
    unsigned k = 0;
    for (unsigned i = 0; i < n && i < 512; i++) {
        if (out[i]->scheduled_for_ms == at &&
            (trigger < 0 || out[i]->trigger == trigger)) {
            k++;
        }
    }
    return k;
}

static const struct rsm_run *newest(struct tfsm *t, const char *pipeline)
{
    const struct rsm_run *out[1];
    cr_assert_gt(rsm_fsm_runs(t->f, pipeline, out, 1), 0);
    return out[0];
}

static const char *const ABC[] = {"a", "b", "c"};

/* --------------------------------------------------------------- names */

Test(rsm_runs, names_and_ids)
{
    char buf[RSM_RUN_ID_MAX];
    uint64_t v = 0;
    cr_assert_str_eq(rsm_run_state_name(RSM_RUN_RUNNING), "running");
    cr_assert_str_eq(rsm_run_state_name(RSM_RUN_SKIPPED), "skipped");
    cr_assert_str_eq(rsm_run_state_name(99), "unknown");
    cr_assert_str_eq(rsm_trigger_name(RSM_TRIGGER_SCHEDULE), "schedule");
    cr_assert_str_eq(rsm_trigger_name(RSM_TRIGGER_AFTER), "after");
    cr_assert_str_eq(rsm_trigger_name(RSM_TRIGGER_MANUAL), "manual");
    cr_assert_str_eq(rsm_trigger_name(RSM_TRIGGER_RETRY), "retry");
    cr_assert_str_eq(rsm_trigger_name(9), "unknown");
    cr_assert_str_eq(rsm_cmd_name(RSM_CMD_PIPELINE_FIRE), "pipeline_fire");
    cr_assert(!rsm_run_state_is_finished(RSM_RUN_RUNNING));
    cr_assert(rsm_run_state_is_finished(RSM_RUN_SKIPPED));
    rsm_run_id_format(42, buf);
    cr_assert_str_eq(buf, "r42");
    cr_assert_eq(rsm_run_id_parse("r42", &v), 0);
    cr_assert_eq(v, 42);
    cr_assert_eq(rsm_run_id_parse("r18446744073709551615", &v), 0);
    cr_assert_eq(v, UINT64_MAX);
    cr_assert_eq(rsm_run_id_parse("r18446744073709551616", &v), ERR_INVALID);
    cr_assert_eq(rsm_run_id_parse("r0", &v), ERR_INVALID);
    cr_assert_eq(rsm_run_id_parse("r01", &v), ERR_INVALID);
    cr_assert_eq(rsm_run_id_parse("j1", &v), ERR_INVALID);
    cr_assert_eq(rsm_run_id_parse("r", &v), ERR_INVALID);
    cr_assert_eq(rsm_run_id_parse("r1x", &v), ERR_INVALID);
    cr_assert_eq(rsm_run_id_parse(NULL, &v), ERR_INVALID);
}

/* -------------------------------------------------------------- firing */

Test(rsm_runs, fire_dedup_and_cursor)
{
    struct tfsm t;
    struct pdef d = {.name = "p"};
    struct rsm_result r;
    const struct rsm_pipeline *p;
    int64_t created;
    t_init(&t);
    create(&t, &d);
    p = rsm_fsm_pipeline(t.f, "p");
    created = p->fire_cursor_ms;
    cr_assert_gt(created, 0);
    r = fire(&t, "p", created, false);
    cr_assert_eq(r.code, ERR_STALE);
    r = fire(&t, "nope", created + 10, false);
    cr_assert_eq(r.code, ERR_NOTFOUND);
    r = fire(&t, "p", created + 1000, false);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.value, 1);
    cr_assert_eq(rsm_fsm_pipeline(t.f, "p")->fire_cursor_ms, created + 1000);
    /* The same tick again (a new leader re-proposing it), or an older one:
     * rejected, nothing changes. */
    r = fire(&t, "p", created + 1000, false);
    cr_assert_eq(r.code, ERR_STALE);
    r = fire(&t, "p", created + 500, false);
    cr_assert_eq(r.code, ERR_STALE);
    cr_assert_eq(rsm_fsm_run_count(t.f), 1);
    cr_assert_eq(rsm_fsm_job_count(t.f), 1);
    cr_assert_eq(rsm_fsm_pipeline(t.f, "p")->fire_cursor_ms, created + 1000);
    /* skip: the cursor moves, no run. */
    r = fire(&t, "p", created + 2000, true);
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.value, 0);
    cr_assert_eq(rsm_fsm_pipeline(t.f, "p")->fire_cursor_ms, created + 2000);
    cr_assert_eq(rsm_fsm_run_count(t.f), 1);
    r = fire(&t, "p", created + 1500, false);
    cr_assert_eq(r.code, ERR_STALE);
    cr_assert_eq(rsm_fsm_run(t.f, 1)->trigger, RSM_TRIGGER_SCHEDULE);
    cr_assert_eq(rsm_fsm_run(t.f, 1)->scheduled_for_ms, created + 1000);
    cr_assert_eq(rsm_fsm_run(t.f, 1)->pipeline_version, 1);
    cr_assert_eq(rsm_fsm_run_seq(t.f), 1);
    t_fini(&t);
}

Test(rsm_runs, paused_pipeline_consumes_ticks)
{
    struct tfsm t;
    struct pdef d = {.name = "p", .paused = true};
    struct rsm_result r;
    int64_t c0;
    t_init(&t);
    create(&t, &d);
    c0 = rsm_fsm_pipeline(t.f, "p")->fire_cursor_ms;
    r = fire(&t, "p", c0 + 60000, false);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.value, 0);
    cr_assert_eq(rsm_fsm_pipeline(t.f, "p")->fire_cursor_ms, c0 + 60000);
    cr_assert_eq(rsm_fsm_run_count(t.f), 0);
    cr_assert_eq(rsm_fsm_job_count(t.f), 0);
    r = fire(&t, "p", c0 + 60000, false);
    cr_assert_eq(r.code, ERR_STALE);
    /* Unpaused: the next tick runs. */
    d.paused = false;
    r = t_apply(&t, mk_pipeline(&d, true));
    cr_assert_eq(r.code, 0);
    fire_run(&t, "p", c0 + 120000);
    cr_assert_eq(rsm_fsm_run_count(t.f), 1);
    cr_assert_eq(rsm_fsm_run(t.f, 1)->pipeline_version, 2);
    t_fini(&t);
}

Test(rsm_runs, targets_fan_out)
{
    struct tfsm t;
    struct pdef d = {
        .name = "fan", .targets = ABC, .n_targets = 3, .retries = 2};
    const struct rsm_run *run;
    const struct rsm_run *list[4];
    t_init(&t);
    create(&t, &d);
    run = fire_run(&t, "fan", T0 + 5000);
    cr_assert_eq(run->n_jobs, 3);
    cr_assert_eq(run->state, RSM_RUN_RUNNING);
    cr_assert_str_eq(run->pipeline, "fan");
    for (unsigned i = 0; i < 3; i++) {
        const struct rsm_job *j = rsm_fsm_job(t.f, run->jobs[i]);
        cr_assert_not_null(j);
        cr_assert_str_eq(j->spec.target, ABC[i]);
        cr_assert_eq(j->spec.run, run->seq);
        cr_assert_str_eq(j->spec.pipeline, "fan");
        cr_assert_eq(j->spec.scheduled_for_ms, T0 + 5000);
        cr_assert_eq(j->spec.retries_max, 2);
        cr_assert_eq(j->spec.timeout_s, 30);
        cr_assert_eq(j->spec.argv.n, 3);
        cr_assert_str_eq(j->spec.argv.v[2], "true");
        cr_assert_eq(j->spec.n_env, 1);
        cr_assert_str_eq(j->spec.env[0].key, "MODE");
        cr_assert_eq(j->state, RSM_JOB_PENDING);
    }
    /* No targets: one job with target "". */
    d = (struct pdef){.name = "solo"};
    create(&t, &d);
    run = fire_run(&t, "solo", T0 + 5000);
    cr_assert_eq(run->n_jobs, 1);
    cr_assert_str_eq(rsm_fsm_job(t.f, run->jobs[0])->spec.target, "");
    /* Listings: newest first, per pipeline or all; active ones. */
    cr_assert_eq(rsm_fsm_runs(t.f, NULL, list, 4), 2);
    cr_assert_eq(list[0]->seq, 2);
    cr_assert_eq(list[1]->seq, 1);
    cr_assert_eq(rsm_fsm_runs(t.f, "fan", list, 4), 1);
    cr_assert_eq(list[0]->seq, 1);
    cr_assert_eq(rsm_fsm_runs(t.f, "zzz", list, 4), 0);
    cr_assert_eq(rsm_fsm_runs_active(t.f, NULL, list, 0), 2);
    cr_assert_eq(rsm_fsm_runs_active(t.f, "solo", list, 4), 1);
    cr_assert_null(rsm_fsm_run(t.f, 3));
    t_fini(&t);
}

/* ----------------------------------------------------------- run state */

Test(rsm_runs, run_succeeds_when_all_jobs_succeed)
{
    struct tfsm t;
    struct pdef d = {.name = "p", .targets = ABC, .n_targets = 3};
    const struct rsm_run *run;
    uint64_t seq;
    uint64_t jobs[3];
    t_init(&t);
    create(&t, &d);
    run = fire_run(&t, "p", T0 + 100);
    seq = run->seq;
    memcpy(jobs, run->jobs, sizeof jobs);
    run_job(&t, jobs[0], 0);
    run_job(&t, jobs[2], 0);
    cr_assert_eq(rsm_fsm_run(t.f, seq)->state, RSM_RUN_RUNNING);
    cr_assert_eq(rsm_fsm_run(t.f, seq)->finished_ms, 0);
    run_job(&t, jobs[1], 0);
    run = rsm_fsm_run(t.f, seq);
    cr_assert_eq(run->state, RSM_RUN_SUCCEEDED);
    cr_assert_eq(run->finished_ms, rsm_fsm_clock(t.f));
    cr_assert_eq(rsm_fsm_runs_active(t.f, "p", NULL, 0), 0);
    t_fini(&t);
}

Test(rsm_runs, run_fails_on_first_failed_job_others_keep_running)
{
    struct tfsm t;
    struct pdef d = {.name = "p", .targets = ABC, .n_targets = 3};
    const struct rsm_run *run;
    uint64_t seq;
    uint64_t jobs[3];
    uint64_t e1;
    int64_t failed_at;
    t_init(&t);
    create(&t, &d);
    run = fire_run(&t, "p", T0 + 100);
    seq = run->seq;
    memcpy(jobs, run->jobs, sizeof jobs);
    e1 = start_job(&t, jobs[1]);
    run_job(&t, jobs[0], 3); /* no retries: failed */
    run = rsm_fsm_run(t.f, seq);
    cr_assert_eq(run->state, RSM_RUN_FAILED);
    failed_at = run->finished_ms;
    cr_assert_gt(failed_at, 0);
    cr_assert_eq(rsm_fsm_job(t.f, jobs[1])->state, RSM_JOB_RUNNING);
    cr_assert_eq(rsm_fsm_job(t.f, jobs[2])->state, RSM_JOB_PENDING);
    /* Later outcomes do not change a finished run. */
    finish_job(&t, jobs[1], e1, 0);
    run_job(&t, jobs[2], 0);
    run = rsm_fsm_run(t.f, seq);
    cr_assert_eq(run->state, RSM_RUN_FAILED);
    cr_assert_eq(run->finished_ms, failed_at);
    t_fini(&t);
}

Test(rsm_runs, run_cancelled_when_a_job_is_cancelled_and_none_failed)
{
    struct tfsm t;
    struct pdef d = {.name = "p", .targets = ABC, .n_targets = 2};
    const struct rsm_run *run;
    uint64_t seq;
    uint64_t jobs[2];
    uint64_t e;
    t_init(&t);
    create(&t, &d);
    run = fire_run(&t, "p", T0 + 100);
    seq = run->seq;
    memcpy(jobs, run->jobs, sizeof jobs);
    e = start_job(&t, jobs[0]);
    cancel_job(&t, jobs[1]); /* pending: cancelled at once */
    cr_assert_eq(rsm_fsm_job(t.f, jobs[1])->state, RSM_JOB_CANCELLED);
    cr_assert_eq(rsm_fsm_run(t.f, seq)->state, RSM_RUN_RUNNING);
    finish_job(&t, jobs[0], e, 0);
    cr_assert_eq(rsm_fsm_run(t.f, seq)->state, RSM_RUN_CANCELLED);
    /* A cancel_requested running job ends cancelled too. */
    run = fire_run(&t, "p", T0 + 200);
    seq = run->seq;
    memcpy(jobs, run->jobs, sizeof jobs);
    e = start_job(&t, jobs[0]);
    cancel_job(&t, jobs[0]);
    cr_assert(rsm_fsm_job(t.f, jobs[0])->cancel_requested);
    run_job(&t, jobs[1], 0);
    cr_assert_eq(rsm_fsm_run(t.f, seq)->state, RSM_RUN_RUNNING);
    finish_job(&t, jobs[0], e, 0); /* killed: reported as it ended */
    cr_assert_eq(rsm_fsm_job(t.f, jobs[0])->state, RSM_JOB_SUCCEEDED);
    cr_assert_eq(rsm_fsm_run(t.f, seq)->state, RSM_RUN_SUCCEEDED);
    t_fini(&t);
}

Test(rsm_runs, retries_then_success)
{
    struct tfsm t;
    struct pdef d = {.name = "p", .retries = 2};
    const struct rsm_run *run;
    uint64_t seq;
    uint64_t job;
    t_init(&t);
    create(&t, &d);
    run = fire_run(&t, "p", T0 + 100);
    seq = run->seq;
    job = run->jobs[0];
    run_job(&t, job, 1);
    cr_assert_eq(rsm_fsm_job(t.f, job)->state, RSM_JOB_RETRY_WAIT);
    cr_assert_eq(rsm_fsm_run(t.f, seq)->state, RSM_RUN_RUNNING);
    run_job(&t, job, 1);
    cr_assert_eq(rsm_fsm_run(t.f, seq)->state, RSM_RUN_RUNNING);
    run_job(&t, job, 0);
    cr_assert_eq(rsm_fsm_job(t.f, job)->state, RSM_JOB_SUCCEEDED);
    cr_assert_eq(rsm_fsm_job(t.f, job)->attempt, 3);
    cr_assert_eq(rsm_fsm_run(t.f, seq)->state, RSM_RUN_SUCCEEDED);
    t_fini(&t);
}

/* ------------------------------------------------------------- overlap */

Test(rsm_runs, overlap_allow)
{
    struct tfsm t;
    struct pdef d = {.name = "p", .overlap = RSM_OVERLAP_ALLOW};
    t_init(&t);
    create(&t, &d);
    fire_run(&t, "p", T0 + 100);
    fire_run(&t, "p", T0 + 200);
    cr_assert_eq(rsm_fsm_runs_active(t.f, "p", NULL, 0), 2);
    t_fini(&t);
}

Test(rsm_runs, overlap_forbid_records_skipped_run)
{
    struct tfsm t;
    struct pdef d = {.name = "p", .overlap = RSM_OVERLAP_FORBID};
    const struct rsm_run *run;
    uint64_t first;
    t_init(&t);
    create(&t, &d);
    first = fire_run(&t, "p", T0 + 100)->seq;
    run = fire_run(&t, "p", T0 + 200);
    cr_assert_eq(run->state, RSM_RUN_SKIPPED);
    cr_assert_eq(run->n_jobs, 0);
    cr_assert_gt(run->finished_ms, 0);
    cr_assert_eq(rsm_fsm_pipeline(t.f, "p")->fire_cursor_ms, T0 + 200);
    cr_assert_eq(rsm_fsm_runs_active(t.f, "p", NULL, 0), 1);
    cr_assert_eq(rsm_fsm_job_count(t.f), 1);
    /* Manual runs obey overlap too. */
    cr_assert_eq(rsm_fsm_run(t.f, manual(&t, "p").value)->state,
                 RSM_RUN_SKIPPED);
    succeed_run(&t, first);
    run = fire_run(&t, "p", T0 + 300);
    cr_assert_eq(run->state, RSM_RUN_RUNNING);
    t_fini(&t);
}

Test(rsm_runs, overlap_replace_cancels_running_runs)
{
    struct tfsm t;
    struct pdef d = {.name = "p",
                     .overlap = RSM_OVERLAP_REPLACE,
                     .targets = ABC,
                     .n_targets = 2};
    const struct rsm_run *run;
    uint64_t old;
    uint64_t jobs[2];
    uint64_t e;
    t_init(&t);
    create(&t, &d);
    run = fire_run(&t, "p", T0 + 100);
    old = run->seq;
    memcpy(jobs, run->jobs, sizeof jobs);
    e = start_job(&t, jobs[0]);
    run = fire_run(&t, "p", T0 + 200);
    cr_assert_eq(run->state, RSM_RUN_RUNNING);
    cr_assert_eq(run->n_jobs, 2);
    cr_assert_eq(rsm_fsm_run(t.f, old)->state, RSM_RUN_CANCELLED);
    cr_assert_eq(rsm_fsm_job(t.f, jobs[1])->state, RSM_JOB_CANCELLED);
    cr_assert_eq(rsm_fsm_job(t.f, jobs[0])->state, RSM_JOB_RUNNING);
    cr_assert(rsm_fsm_job(t.f, jobs[0])->cancel_requested);
    cr_assert_eq(rsm_fsm_runs_active(t.f, "p", NULL, 0), 1);
    finish_job(&t, jobs[0], e, 0);
    cr_assert_eq(rsm_fsm_run(t.f, old)->state, RSM_RUN_CANCELLED);
    t_fini(&t);
}

/* -------------------------------------------------------- dependencies */

Test(rsm_runs, chain_a_b_c_same_scheduled_for)
{
    struct tfsm t;
    static const char *const up_a[] = {"a"};
    static const char *const up_b[] = {"b"};
    struct pdef a = {.name = "a"};
    struct pdef b = {.name = "b", .after = up_a, .n_after = 1};
    struct pdef c = {.name = "c", .after = up_b, .n_after = 1};
    const struct rsm_run *ra;
    const struct rsm_run *rb;
    const struct rsm_run *rc;
    uint64_t sa;
    uint64_t sb;
    t_init(&t);
    create(&t, &a);
    create(&t, &b);
    create(&t, &c);
    ra = fire_run(&t, "a", T0 + 777);
    sa = ra->seq;
    cr_assert_eq(rsm_fsm_run_count(t.f), 1);
    succeed_run(&t, sa);
    rb = newest(&t, "b");
    cr_assert_eq(rb->trigger, RSM_TRIGGER_AFTER);
    cr_assert_eq(rb->scheduled_for_ms, T0 + 777);
    cr_assert_gt(rb->seq, sa);
    sb = rb->seq;
    cr_assert_eq(rsm_fsm_runs(t.f, "c", NULL, 0), 0);
    succeed_run(&t, sb);
    rc = newest(&t, "c");
    cr_assert_eq(rc->trigger, RSM_TRIGGER_AFTER);
    cr_assert_eq(rc->scheduled_for_ms, T0 + 777);
    cr_assert_gt(rc->seq, sb);
    cr_assert_eq(rsm_fsm_run_count(t.f), 3);
    /* A failed upstream does not trigger. */
    ra = fire_run(&t, "a", T0 + 888);
    run_job(&t, ra->jobs[0], 1);
    cr_assert_eq(count_runs(&t, "b", T0 + 888, -1), 0);
    t_fini(&t);
}

Test(rsm_runs, fan_in_fires_once_when_all_upstreams_succeeded)
{
    struct tfsm t;
    static const char *const ups[] = {"a1", "a2"};
    struct pdef a1 = {.name = "a1"};
    struct pdef a2 = {.name = "a2"};
    struct pdef b = {.name = "b", .after = ups, .n_after = 2};
    uint64_t r1;
    uint64_t r2;
    t_init(&t);
    create(&t, &a1);
    create(&t, &a2);
    create(&t, &b);
    r1 = fire_run(&t, "a1", T0 + 1000)->seq;
    r2 = fire_run(&t, "a2", T0 + 1000)->seq;
    succeed_run(&t, r1);
    cr_assert_eq(rsm_fsm_runs(t.f, "b", NULL, 0), 0);
    /* a2 succeeding for another time does not count. */
    succeed_run(&t, fire_run(&t, "a2", T0 + 2000)->seq);
    cr_assert_eq(rsm_fsm_runs(t.f, "b", NULL, 0), 0);
    succeed_run(&t, r2);
    cr_assert_eq(count_runs(&t, "b", T0 + 1000, RSM_TRIGGER_AFTER), 1);
    /* Another success of a1 for the same time (manual runs have their own
     * times; a retry keeps it) must not fire b again: a1 fails for 3000,
     * a2 succeeds, a1's retry succeeds -> exactly one b run for 3000. */
    r1 = fire_run(&t, "a1", T0 + 3000)->seq;
    r2 = fire_run(&t, "a2", T0 + 3000)->seq;
    run_job(&t, rsm_fsm_run(t.f, r1)->jobs[0], 1);
    cr_assert_eq(rsm_fsm_run(t.f, r1)->state, RSM_RUN_FAILED);
    succeed_run(&t, r2);
    cr_assert_eq(count_runs(&t, "b", T0 + 3000, -1), 0);
    {
        struct rsm_result r = retry(&t, r1);
        cr_assert_eq(r.code, 0, "%s", r.message);
        succeed_run(&t, r.value);
    }
    cr_assert_eq(count_runs(&t, "b", T0 + 3000, RSM_TRIGGER_AFTER), 1);
    /* A second retry chain of a2 cannot re-fire b either: b's record. */
    cr_assert_eq(count_runs(&t, "b", T0 + 1000, RSM_TRIGGER_AFTER), 1);
    t_fini(&t);
}

Test(rsm_runs, paused_dependent_consumes_the_trigger)
{
    struct tfsm t;
    static const char *const up_a[] = {"a"};
    struct pdef a = {.name = "a"};
    struct pdef b = {.name = "b", .after = up_a, .n_after = 1, .paused = true};
    t_init(&t);
    create(&t, &a);
    create(&t, &b);
    succeed_run(&t, fire_run(&t, "a", T0 + 100)->seq);
    cr_assert_eq(rsm_fsm_runs(t.f, "b", NULL, 0), 0);
    b.paused = false;
    cr_assert_eq(t_apply(&t, mk_pipeline(&b, true)).code, 0);
    succeed_run(&t, fire_run(&t, "a", T0 + 200)->seq);
    cr_assert_eq(count_runs(&t, "b", T0 + 200, RSM_TRIGGER_AFTER), 1);
    cr_assert_eq(count_runs(&t, "b", T0 + 100, -1), 0);
    t_fini(&t);
}

/* --------------------------------------------------------------- retry */

Test(rsm_runs, retry_reruns_only_failed_targets)
{
    struct tfsm t;
    struct pdef d = {.name = "p", .targets = ABC, .n_targets = 3};
    const struct rsm_run *run;
    struct rsm_result r;
    uint64_t seq;
    uint64_t jobs[3];
    uint64_t e;
    t_init(&t);
    create(&t, &d);
    run = fire_run(&t, "p", T0 + 100);
    seq = run->seq;
    memcpy(jobs, run->jobs, sizeof jobs);
    r = retry(&t, seq);
    cr_assert_eq(r.code, ERR_CONFLICT); /* running */
    run_job(&t, jobs[0], 0);
    e = start_job(&t, jobs[2]);
    run_job(&t, jobs[1], 2); /* failed */
    cr_assert_eq(rsm_fsm_run(t.f, seq)->state, RSM_RUN_FAILED);
    r = retry(&t, seq);
    cr_assert_eq(r.code, ERR_CONFLICT, "%s", r.message); /* c still runs */
    finish_job(&t, jobs[2], e, 9);                       /* failed too */
    r = retry(&t, seq);
    cr_assert_eq(r.code, 0, "%s", r.message);
    run = rsm_fsm_run(t.f, r.value);
    cr_assert_eq(run->trigger, RSM_TRIGGER_RETRY);
    cr_assert_eq(run->retry_of, seq);
    cr_assert_eq(run->scheduled_for_ms, T0 + 100);
    cr_assert_eq(run->n_jobs, 2);
    cr_assert_str_eq(rsm_fsm_job(t.f, run->jobs[0])->spec.target, "b");
    cr_assert_str_eq(rsm_fsm_job(t.f, run->jobs[1])->spec.target, "c");
    cr_assert_eq(rsm_fsm_job(t.f, run->jobs[0])->spec.run, run->seq);
    seq = run->seq;
    succeed_run(&t, seq);
    r = retry(&t, seq);
    cr_assert_eq(r.code, ERR_CONFLICT); /* succeeded */
    r = retry(&t, 999);
    cr_assert_eq(r.code, ERR_NOTFOUND);
    t_fini(&t);
}

/* ----------------------------------------------------------- retention */

Test(rsm_runs, retention_keeps_200_finished_per_pipeline)
{
    struct tfsm t;
    struct pdef d = {.name = "p", .overlap = RSM_OVERLAP_FORBID};
    struct pdef q = {.name = "q"};
    uint64_t active;
    unsigned n;
    t_init(&t);
    create(&t, &d);
    create(&t, &q);
    active = fire_run(&t, "p", T0 + 100)->seq;
    succeed_run(&t, fire_run(&t, "q", T0 + 100)->seq);
    for (int i = 0; i < 250; i++) {
        const struct rsm_run *r = fire_run(&t, "p", T0 + 110 + i);
        cr_assert_eq(r->state, RSM_RUN_SKIPPED);
    }
    n = rsm_fsm_runs(t.f, "p", NULL, 0);
    cr_assert_eq(n, RSM_RUNS_KEEP_FINISHED + 1);
    cr_assert_not_null(rsm_fsm_run(t.f, active));
    cr_assert_eq(rsm_fsm_runs(t.f, "q", NULL, 0), 1); /* other pipeline */
    cr_assert_null(rsm_fsm_run(t.f, active + 2));     /* oldest skipped gone */
    cr_assert_eq(rsm_fsm_run_count(t.f), RSM_RUNS_KEEP_FINISHED + 2);
    cr_assert_not_null(rsm_fsm_run(t.f, rsm_fsm_run_seq(t.f)));
    t_fini(&t);
}

Test(rsm_runs, pipeline_delete_drops_finished_runs)
{
    struct tfsm t;
    struct pdef d = {.name = "p"};
    struct rsm_cmd c;
    uint64_t done;
    uint64_t live;
    t_init(&t);
    create(&t, &d);
    done = fire_run(&t, "p", T0 + 100)->seq;
    succeed_run(&t, done);
    live = fire_run(&t, "p", T0 + 200)->seq;
    rsm_cmd_init(&c, RSM_CMD_PIPELINE_DELETE);
    snprintf(c.u.pipeline_delete.name, sizeof c.u.pipeline_delete.name, "p");
    cr_assert_eq(t_apply(&t, c).code, 0);
    cr_assert_null(rsm_fsm_run(t.f, done));
    cr_assert_not_null(rsm_fsm_run(t.f, live));
    run_job(&t, rsm_fsm_run(t.f, live)->jobs[0], 0);
    cr_assert_eq(rsm_fsm_run(t.f, live)->state, RSM_RUN_SUCCEEDED);
    cr_assert_eq(manual(&t, "p").code, ERR_NOTFOUND);
    t_fini(&t);
}

/* ------------------------------------------------ determinism, snapshots */

/* A busy scenario covering every kind of run record. */
static void scenario(struct tfsm *t)
{
    static const char *const up[] = {"a", "b"};
    struct pdef a = {.name = "a", .targets = ABC, .n_targets = 3};
    struct pdef b = {.name = "b", .overlap = RSM_OVERLAP_FORBID};
    struct pdef c = {.name = "c",
                     .after = up,
                     .n_after = 2,
                     .overlap = RSM_OVERLAP_REPLACE,
                     .retries = 1};
    uint64_t ra;
    uint64_t rb;
    create(t, &a);
    create(t, &b);
    create(t, &c);
    ra = fire_run(t, "a", T0 + 100)->seq;
    rb = fire_run(t, "b", T0 + 100)->seq;
    fire_run(t, "b", T0 + 150); /* skipped */
    succeed_run(t, ra);
    succeed_run(t, rb);
    manual(t, "c");
    ra = fire_run(t, "a", T0 + 200)->seq;
    run_job(t, rsm_fsm_run(t->f, ra)->jobs[1], 4);
    run_job(t, rsm_fsm_run(t->f, ra)->jobs[0], 0);
    run_job(t, rsm_fsm_run(t->f, ra)->jobs[2], 0);
    retry(t, ra);
    fire(t, "a", T0 + 300, true);
}

static void snap(struct tfsm *t, void **buf, size_t *len)
{
    cr_assert_eq(rsm_fsm_snapshot(t->f, buf, len), 0);
}

Test(rsm_runs, three_replicas_same_snapshot_bytes)
{
    struct tfsm t[3];
    void *b[3];
    size_t l[3];
    for (unsigned i = 0; i < 3; i++) {
        t_init(&t[i]);
        scenario(&t[i]);
        snap(&t[i], &b[i], &l[i]);
    }
    cr_assert_gt(rsm_fsm_run_count(t[0].f), 5);
    for (unsigned i = 1; i < 3; i++) {
        cr_assert_eq(l[i], l[0]);
        cr_assert_eq(memcmp(b[i], b[0], l[0]), 0);
        cr_assert_eq(rsm_fsm_digest(t[i].f), rsm_fsm_digest(t[0].f));
    }
    for (unsigned i = 0; i < 3; i++) {
        free(b[i]);
        t_fini(&t[i]);
    }
}

Test(rsm_runs, snapshot_round_trip_then_same_future)
{
    struct tfsm t;
    struct tfsm u;
    void *b1;
    void *b2;
    size_t l1;
    size_t l2;
    char errmsg[ERRMSG_SIZE];
    const struct rsm_run *x;
    const struct rsm_run *y;
    t_init(&t);
    scenario(&t);
    snap(&t, &b1, &l1);
    t_init(&u);
    cr_assert_eq(rsm_fsm_restore(u.f, b1, l1, errmsg), 0, "%s", errmsg);
    u.index = t.index;
    u.now = t.now;
    snap(&u, &b2, &l2);
    cr_assert_eq(l1, l2);
    cr_assert_eq(memcmp(b1, b2, l1), 0);
    free(b2);
    cr_assert_eq(rsm_fsm_run_count(u.f), rsm_fsm_run_count(t.f));
    x = rsm_fsm_run(t.f, 1);
    y = rsm_fsm_run(u.f, 1);
    cr_assert_eq(x->n_jobs, y->n_jobs);
    cr_assert_eq(memcmp(x->jobs, y->jobs, x->n_jobs * sizeof *x->jobs), 0);
    cr_assert_str_eq(x->pipeline, y->pipeline);
    /* The restored state behaves identically: finish everything running,
     * fire more (overlap, dependencies, records all come from it). */
    for (struct tfsm *s = &t;; s = &u) {
        const struct rsm_run *act[32];
        unsigned n = rsm_fsm_runs_active(s->f, NULL, act, 32);
        uint64_t seqs[32];
        for (unsigned i = 0; i < n; i++) {
            seqs[i] = act[i]->seq;
        }
        for (unsigned i = 0; i < n; i++) {
            const struct rsm_run *r = rsm_fsm_run(s->f, seqs[i]);
            for (unsigned k = 0; r != NULL && k < r->n_jobs; k++) {
                const struct rsm_job *j = rsm_fsm_job(s->f, r->jobs[k]);
                if (j != NULL && j->state == RSM_JOB_PENDING) {
                    run_job(s, r->jobs[k], 0);
                    r = rsm_fsm_run(s->f, seqs[i]);
                }
            }
        }
        fire(s, "a", T0 + 400, false);
        fire(s, "b", T0 + 400, false);
        fire(s, "b", T0 + 500, false);
        if (s == &u) {
            break;
        }
    }
    cr_assert_eq(rsm_fsm_digest(t.f), rsm_fsm_digest(u.f));
    free(b1);
    snap(&t, &b1, &l1);
    snap(&u, &b2, &l2);
    cr_assert_eq(l1, l2);
    cr_assert_eq(memcmp(b1, b2, l1), 0);
    free(b1);
    free(b2);
    t_fini(&t);
    t_fini(&u);
}

/* ---------------------------------------------------------------- codec */

static int validate(struct rsm_cmd *c)
{
    char errmsg[ERRMSG_SIZE];
    return rsm_cmd_validate(c, errmsg);
}

Test(rsm_runs, codec_validation)
{
    struct rsm_cmd c;
    rsm_cmd_init(&c, RSM_CMD_PIPELINE_FIRE);
    cr_assert_eq(validate(&c), ERR_INVALID); /* no name, no time */
    snprintf(c.u.pipeline_fire.pipeline, sizeof c.u.pipeline_fire.pipeline,
             "ok");
    cr_assert_eq(validate(&c), ERR_INVALID); /* scheduled_for 0 */
    c.u.pipeline_fire.scheduled_for_ms = -5;
    cr_assert_eq(validate(&c), ERR_INVALID);
    c.u.pipeline_fire.scheduled_for_ms = 5;
    cr_assert_eq(validate(&c), 0);
    snprintf(c.u.pipeline_fire.pipeline, sizeof c.u.pipeline_fire.pipeline,
             "bad name");
    cr_assert_eq(validate(&c), ERR_INVALID);
    rsm_cmd_init(&c, RSM_CMD_RUN_MANUAL);
    cr_assert_eq(validate(&c), ERR_INVALID);
    snprintf(c.u.run_manual.pipeline, sizeof c.u.run_manual.pipeline, "x");
    cr_assert_eq(validate(&c), 0);
    memset(c.u.run_manual.pipeline, 'a', sizeof c.u.run_manual.pipeline);
    cr_assert_eq(validate(&c), ERR_INVALID); /* unterminated */
    rsm_cmd_init(&c, RSM_CMD_RUN_RETRY);
    cr_assert_eq(validate(&c), ERR_INVALID);
    c.u.run_retry.run = 1;
    cr_assert_eq(validate(&c), 0);
}

/* Encode [1, type, time, "", fields...] by hand. */
static struct rsm_result apply_raw(struct tfsm *t,
                                   uint8_t type,
                                   void (*fields)(msgpack_packer *pk),
                                   unsigned n_fields)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct rsm_result r[1];
    unsigned n = 0;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    /* entry: [version, leader_time, [cmd]] is the entry format; build the
     * command only and let rsm_cmd_unpack judge it. */
    msgpack_pack_array(&pk, 4 + n_fields);
    msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION);
    msgpack_pack_uint8(&pk, type);
    msgpack_pack_int64(&pk, t->now);
    msgpack_pack_str(&pk, 0);
    msgpack_pack_str_body(&pk, "", 0);
    fields(&pk);
    {
        msgpack_unpacked u;
        struct rsm_cmd c;
        char errmsg[ERRMSG_SIZE];
        msgpack_unpacked_init(&u);
        cr_assert_eq(rsm__mp_unpack(sb.data, sb.size, &u, errmsg), 0);
        r[0].code = rsm_cmd_unpack(&u.data, &c, errmsg);
        snprintf(r[0].message, sizeof r[0].message, "%.150s", errmsg);
        if (r[0].code == 0) {
            rsm_cmd_clear(&c);
        }
        msgpack_unpacked_destroy(&u);
    }
    msgpack_sbuffer_destroy(&sb);
    (void)n;
    return r[0];
}

static void f_fire_ok(msgpack_packer *pk)
{
    msgpack_pack_str(pk, 1);
    msgpack_pack_str_body(pk, "p", 1);
    msgpack_pack_int64(pk, 5);
    msgpack_pack_false(pk);
}

static void f_fire_zero_time(msgpack_packer *pk)
{
    msgpack_pack_str(pk, 1);
    msgpack_pack_str_body(pk, "p", 1);
    msgpack_pack_int64(pk, 0);
    msgpack_pack_false(pk);
}

static void f_fire_negative(msgpack_packer *pk)
{
    msgpack_pack_str(pk, 1);
    msgpack_pack_str_body(pk, "p", 1);
    msgpack_pack_int64(pk, -1);
    msgpack_pack_true(pk);
}

static void f_fire_bad_name(msgpack_packer *pk)
{
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "a/b", 3);
    msgpack_pack_int64(pk, 5);
    msgpack_pack_true(pk);
}

static void f_fire_skip_int(msgpack_packer *pk)
{
    msgpack_pack_str(pk, 1);
    msgpack_pack_str_body(pk, "p", 1);
    msgpack_pack_int64(pk, 5);
    msgpack_pack_uint8(pk, 1);
}

static void f_retry_zero(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, 0);
}

static void f_retry_str(msgpack_packer *pk)
{
    msgpack_pack_str(pk, 2);
    msgpack_pack_str_body(pk, "r1", 2);
}

static void f_manual_long(msgpack_packer *pk)
{
    char name[100];
    memset(name, 'a', sizeof name);
    msgpack_pack_str(pk, sizeof name);
    msgpack_pack_str_body(pk, name, sizeof name);
}

Test(rsm_runs, codec_rejections)
{
    struct tfsm t;
    t_init(&t);
    cr_assert_eq(apply_raw(&t, RSM_CMD_PIPELINE_FIRE, f_fire_ok, 3).code, 0);
    cr_assert_eq(apply_raw(&t, RSM_CMD_PIPELINE_FIRE, f_fire_ok, 2).code,
                 ERR_MALFORMED); /* field count */
    cr_assert_eq(apply_raw(&t, RSM_CMD_PIPELINE_FIRE, f_fire_zero_time, 3).code,
                 ERR_MALFORMED);
    cr_assert_eq(apply_raw(&t, RSM_CMD_PIPELINE_FIRE, f_fire_negative, 3).code,
                 ERR_MALFORMED);
    cr_assert_eq(apply_raw(&t, RSM_CMD_PIPELINE_FIRE, f_fire_bad_name, 3).code,
                 ERR_MALFORMED);
    cr_assert_eq(apply_raw(&t, RSM_CMD_PIPELINE_FIRE, f_fire_skip_int, 3).code,
                 ERR_MALFORMED);
    cr_assert_eq(apply_raw(&t, RSM_CMD_RUN_RETRY, f_retry_zero, 1).code,
                 ERR_MALFORMED);
    cr_assert_eq(apply_raw(&t, RSM_CMD_RUN_RETRY, f_retry_str, 1).code,
                 ERR_MALFORMED);
    cr_assert_eq(apply_raw(&t, RSM_CMD_RUN_MANUAL, f_manual_long, 1).code,
                 ERR_MALFORMED);
    t_fini(&t);
}

/* Re-pack a (possibly mutated) snapshot object as snapshot bytes. */
static void repack(const msgpack_object *o, void **out, size_t *out_len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    LZ4F_preferences_t prefs;
    size_t bound;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    cr_assert_eq(msgpack_pack_object(&pk, *o), 0);
    memset(&prefs, 0, sizeof prefs);
    prefs.frameInfo.contentSize = sb.size;
    bound = LZ4F_compressFrameBound(sb.size, &prefs);
    *out = malloc(bound);
    *out_len = LZ4F_compressFrame(*out, bound, sb.data, sb.size, &prefs);
    cr_assert(!LZ4F_isError(*out_len));
    msgpack_sbuffer_destroy(&sb);
}

/* A snapshot whose runs section is damaged is refused whole. */
Test(rsm_runs, restore_rejects_damaged_runs)
{
    struct tfsm t;
    msgpack_sbuffer sb;
    msgpack_unpacked up;
    char errmsg[ERRMSG_SIZE];
    msgpack_object *fl;
    t_init(&t);
    scenario(&t);
    msgpack_sbuffer_init(&sb);
    cr_assert_eq(rsm__snap_pack(t.f, &sb), 0);
    msgpack_unpacked_init(&up);
    cr_assert_eq(rsm__mp_unpack(sb.data, sb.size, &up, errmsg), 0);
    cr_assert_eq(up.data.via.array.size, 11);
    fl = up.data.via.array.ptr;
    cr_assert_gt(fl[9].via.array.size, 0);
    cr_assert_gt(fl[10].via.array.size, 0);
    for (unsigned v = 0; v < 6; v++) {
        msgpack_object *r0 = fl[10].via.array.ptr[0].via.array.ptr;
        msgpack_object save_seq = fl[8];
        msgpack_object save_state = r0[4];
        msgpack_object save_js = r0[8].via.array.ptr[0];
        msgpack_object save_trig = r0[3];
        uint32_t save_groups = fl[9].via.array.size;
        uint32_t save_done =
            fl[9].via.array.ptr[0].via.array.ptr[1].via.array.size;
        struct rsm_fsm *g;
        void *b;
        size_t l;
        int rv;
        switch (v) {
            case 1:
                r0[4].via.u64 = 99; /* state out of range */
                break;
            case 2:
                fl[8].via.u64 = 0; /* runs beyond the counter */
                break;
            case 3:
                fl[9].via.array.size = 0; /* no group for the runs */
                break;
            case 4:
                r0[8].via.array.ptr[0].via.u64 = RSM_JOB_CLAIMED;
                break;
            case 5:
                r0[3].via.u64 = RSM_TRIGGER_RETRY; /* retry without retry_of */
                break;
            default:
                break;
        }
        repack(&up.data, &b, &l);
        cr_assert_eq(rsm_fsm_create(&g), 0);
        errmsg[0] = '\0';
        rv = rsm_fsm_restore(g, b, l, errmsg);
        if (v == 0) {
            cr_assert_eq(rv, 0, "%s", errmsg);
            cr_assert_eq(rsm_fsm_digest(g), rsm_fsm_digest(t.f));
        } else {
            cr_assert_eq(rv, ERR_MALFORMED, "variant %u: %d", v, rv);
            cr_assert_eq(rsm_fsm_run_count(g), 0);
            cr_assert_neq(errmsg[0], '\0');
        }
        free(b);
        rsm_fsm_destroy(g);
        fl[8] = save_seq;
        r0[4] = save_state;
        r0[8].via.array.ptr[0] = save_js;
        r0[3] = save_trig;
        fl[9].via.array.size = save_groups;
        fl[9].via.array.ptr[0].via.array.ptr[1].via.array.size = save_done;
    }
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
    t_fini(&t);
}

/* ------------------------------------------------------- random workload */

/* Apply one command to every replica (same entry bytes, same index). */
static struct rsm_result apply_all(struct tfsm *ts,
                                   unsigned n,
                                   struct rsm_cmd c)
{
    void *buf;
    size_t len;
    struct rsm_result first;
    int64_t now = ts[0].now;
    cr_assert_eq(rsm_entry_encode(&c, 1, now, &buf, &len), 0);
    for (unsigned i = 0; i < n; i++) {
        struct rsm_result r[1];
        unsigned k = 0;
        cr_assert_eq(ts[i].now, now);
        cr_assert_eq(rsm_fsm_apply(ts[i].f, ++ts[i].index, buf, len, r, 1, &k),
                     0);
        cr_assert_eq(k, 1);
        ts[i].now++;
        if (i == 0) {
            first = r[0];
        } else {
            cr_assert_eq(r[0].code, first.code);
            cr_assert_eq(r[0].value, first.value);
        }
    }
    raft_free(buf);
    rsm_cmd_clear(&c);
    return first;
}

/* Internal consistency of the run tables against the jobs. */
static void check_invariants(const struct rsm_fsm *f)
{
    unsigned total = 0;
    cr_assert_null(f->settle_head);
    cr_assert_null(f->trim_head);
    for (unsigned i = 0; i < f->run_groups_by_name.n; i++) {
        const struct rsm__pruns *g = f->run_groups_by_name.v[i];
        unsigned act = 0;
        unsigned fin = 0;
        for (unsigned k = 0; k < g->runs.n; k++) {
            const struct rsm__run *r = g->runs.v[k];
            unsigned open = 0;
            cr_assert_eq(r->group, g);
            cr_assert_str_eq(r->run.pipeline, g->name);
            cr_assert(k == 0 ||
                      ((const struct rsm__run *)g->runs.v[k - 1])->run.seq <
                          r->run.seq);
            for (unsigned x = 0; x < r->run.n_jobs; x++) {
                const struct rsm_job *j = rsm_fsm_job(f, r->run.jobs[x]);
                if (j != NULL && rsm_job_state_is_finished(j->state)) {
                    cr_assert_eq(r->job_state[x], j->state);
                } else {
                    cr_assert_eq(r->job_state[x], RSM_JOB_PENDING);
                    open++;
                }
                cr_assert(j == NULL || j->spec.run == r->run.seq);
            }
            if (r->run.state == RSM_RUN_RUNNING) {
                act++;
                cr_assert_gt(open, 0);
            } else {
                fin++;
                cr_assert_geq(r->run.finished_ms, r->run.created_ms);
            }
        }
        cr_assert_eq(g->n_active, act);
        cr_assert_eq(g->n_finished, fin);
        cr_assert_leq(fin, RSM_RUNS_KEEP_FINISHED);
        total += g->runs.n;
    }
    cr_assert_eq(total, f->runs_all.n);
}

Test(rsm_runs, random_workload_replicas_agree)
{
    static const char *const names[] = {"a", "b", "c", "d"};
    static const char *const up_c[] = {"a", "b"};
    static const char *const up_d[] = {"c"};
    struct pdef defs[4] = {
        {.name = "a", .targets = ABC, .n_targets = 2, .retries = 1},
        {.name = "b", .overlap = RSM_OVERLAP_FORBID},
        {.name = "c",
         .after = up_c,
         .n_after = 2,
         .overlap = RSM_OVERLAP_REPLACE},
        {.name = "d",
         .after = up_d,
         .n_after = 1,
         .targets = ABC,
         .n_targets = 3},
    };
    struct tfsm ts[3];
    struct prng rng;
    uint64_t seed = 0x5eed;
    const char *env = getenv("TEST_SEED");
    if (env != NULL) {
        seed = strtoull(env, NULL, 0);
    }
    prng_seed(&rng, seed);
    for (unsigned i = 0; i < 2; i++) {
        t_init(&ts[i]);
    }
    for (unsigned i = 0; i < 4; i++) {
        apply_all(ts, 2, mk_pipeline(&defs[i], false));
    }
    for (unsigned step = 0; step < 3000; step++) {
        struct rsm_cmd c;
        unsigned op = (unsigned)prng_below(&rng, 100);
        unsigned pi = (unsigned)prng_below(&rng, 4);
        const struct rsm_pipeline *p = rsm_fsm_pipeline(ts[0].f, names[pi]);
        if (step == 1500) { /* a third replica joins from a snapshot */
            void *b;
            size_t l;
            char errmsg[ERRMSG_SIZE];
            t_init(&ts[2]);
            cr_assert_eq(rsm_fsm_snapshot(ts[0].f, &b, &l), 0);
            cr_assert_eq(rsm_fsm_restore(ts[2].f, b, l, errmsg), 0, "%s",
                         errmsg);
            free(b);
            ts[2].index = ts[0].index;
            ts[2].now = ts[0].now;
        }
        if (op < 25) {
            int64_t at = p->fire_cursor_ms + (int64_t)prng_below(&rng, 300) -
                         30; /* some stale */
            rsm_cmd_init(&c, RSM_CMD_PIPELINE_FIRE);
            snprintf(c.u.pipeline_fire.pipeline,
                     sizeof c.u.pipeline_fire.pipeline, "%s", names[pi]);
            c.u.pipeline_fire.scheduled_for_ms = at > 0 ? at : 1;
            c.u.pipeline_fire.skip = prng_below(&rng, 10) == 0;
        } else if (op < 30) {
            rsm_cmd_init(&c, RSM_CMD_RUN_MANUAL);
            snprintf(c.u.run_manual.pipeline, sizeof c.u.run_manual.pipeline,
                     "%s", names[pi]);
        } else if (op < 35) {
            rsm_cmd_init(&c, RSM_CMD_RUN_RETRY);
            c.u.run_retry.run =
                1 + prng_below(&rng, rsm_fsm_run_seq(ts[0].f) + 1);
        } else if (op < 37) {
            struct pdef d = defs[pi];
            d.paused = prng_below(&rng, 3) == 0;
            d.overlap = (uint8_t)prng_below(&rng, 3);
            c = mk_pipeline(&d, true);
        } else {
            /* Drive a random unfinished job one step. */
            const struct rsm_job *act[512];
            unsigned n = rsm_fsm_jobs(ts[0].f, RSM_JOB_PENDING, act, 512);
            unsigned nr = rsm_fsm_jobs(ts[0].f, RSM_JOB_RUNNING, act + n,
                                       512 - (n < 512 ? n : 512));
            unsigned nw = rsm_fsm_jobs(ts[0].f, RSM_JOB_RETRY_WAIT, NULL, 0);
            const struct rsm_job *j;
            (void)nw;
            if (n > 512) {
                n = 512;
            }
            if (nr > 512 - n) {
                nr = 512 - n;
            }
            if (n + nr == 0) {
                rsm_cmd_init(&c, RSM_CMD_NOOP);
            } else {
                j = act[prng_below(&rng, n + nr)];
                if (prng_below(&rng, 12) == 0) {
                    rsm_cmd_init(&c, RSM_CMD_JOB_CANCEL);
                    c.u.job_cancel.job = j->seq;
                } else if (j->state == RSM_JOB_PENDING) {
                    rsm_cmd_init(&c, RSM_CMD_JOB_CLAIM);
                    c.u.job_claim.job = j->seq;
                    c.u.job_claim.node = NODE;
                    c.u.job_claim.attempt = j->attempt;
                    apply_all(ts, step >= 1500 ? 3 : 2, c);
                    rsm_cmd_init(&c, RSM_CMD_JOB_START);
                    c.u.job_start.job = j->seq;
                    c.u.job_start.epoch = rsm_fsm_job(ts[0].f, j->seq)->epoch;
                } else {
                    rsm_cmd_init(&c, RSM_CMD_JOB_FINISH);
                    c.u.job_finish.job = j->seq;
                    c.u.job_finish.epoch = j->epoch;
                    c.u.job_finish.end = RSM_END_EXITED;
                    c.u.job_finish.exit_code = prng_below(&rng, 4) == 0 ? 1 : 0;
                }
            }
        }
        apply_all(ts, step >= 1500 ? 3 : 2, c);
        if (step % 50 == 0) {
            /* Keep the node's lease fresh. */
            rsm_cmd_init(&c, RSM_CMD_NODE_RENEW);
            c.u.node_renew.node = NODE;
            c.u.node_renew.lease_ms = RSM_LEASE_MAX_MS;
            apply_all(ts, step >= 1500 ? 3 : 2, c);
        }
        if (step % 97 == 0) {
            check_invariants(ts[0].f);
        }
    }
    for (unsigned i = 0; i < 3; i++) {
        check_invariants(ts[i].f);
    }
    cr_assert_gt(rsm_fsm_run_count(ts[0].f), 50, "seed %llu",
                 (unsigned long long)seed);
    {
        const struct rsm_run *all[1024];
        unsigned n = rsm_fsm_runs(ts[0].f, NULL, all, 1024);
        unsigned kinds[RSM_RUN__STATES] = {0};
        unsigned trig[RSM_TRIGGER__COUNT] = {0};
        for (unsigned i = 0; i < n && i < 1024; i++) {
            kinds[all[i]->state]++;
            trig[all[i]->trigger]++;
        }
        for (unsigned s = 0; s < RSM_RUN__STATES; s++) {
            cr_assert_gt(kinds[s], 0, "no run in state %s (seed %llu)",
                         rsm_run_state_name(s), (unsigned long long)seed);
        }
        for (unsigned s = 0; s < RSM_TRIGGER__COUNT; s++) {
            cr_assert_gt(trig[s], 0, "no run with trigger %s",
                         rsm_trigger_name(s));
        }
    }
    cr_assert_eq(rsm_fsm_digest(ts[1].f), rsm_fsm_digest(ts[0].f));
    cr_assert_eq(rsm_fsm_digest(ts[2].f), rsm_fsm_digest(ts[0].f));
    for (unsigned i = 0; i < 3; i++) {
        t_fini(&ts[i]);
    }
}
