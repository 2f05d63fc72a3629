/* Pipeline runs in the replicated state machine: firing with the
 * exactly-once cursor, overlap, run state from job outcomes, dependencies,
 * retries, retention, the snapshot section and accessors. Pure and
 * deterministic (STYLE.md 8.6); docs/state-machine.md "Runs" has the rules. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "raft/rsm_int.h"
#include "util.h"

#define RUN_FIELDS 12  /* see pack_run */
#define GROUP_FIELDS 3 /* name, [done], [fired] */

/* ------------------------------------------------------------------ names */

static const char *const run_state_names[RSM_RUN__STATES] = {
    "running", "succeeded", "failed", "cancelled", "skipped"};

static const char *const trigger_names[RSM_TRIGGER__COUNT] = {
    "schedule", "after", "manual", "retry"};

const char *rsm_run_state_name(unsigned state)
{
    return state < RSM_RUN__STATES ? run_state_names[state] : "unknown";
}

bool rsm_run_state_is_finished(unsigned state)
{
    return state != RSM_RUN_RUNNING;
}

const char *rsm_trigger_name(unsigned trigger)
{
    return trigger < RSM_TRIGGER__COUNT ? trigger_names[trigger] : "unknown";
}

int rsm_run_id_parse(const char *id, uint64_t *seq)
{
    return rsm__id_parse('r', id, seq);
}

void rsm_run_id_format(uint64_t seq, char *buf)
{
    snprintf(buf, RSM_RUN_ID_MAX, "r%llu", (unsigned long long)seq);
}

/* ------------------------------------------------------------- results */

#define reject rsm__reject

/* ------------------------------------------------------------ storage */

#define vec_reserve rsm__vec_reserve

/* First position in a seq-ordered run vector whose seq is >= seq. */
static unsigned run_pos(const struct rsm__vec *v, uint64_t seq)
{
    unsigned lo = 0;
    unsigned hi = v->n;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (((const struct rsm__run *)v->v[mid])->run.seq < seq) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static struct rsm__run *run_find(const struct rsm_fsm *f, uint64_t seq)
{
    unsigned pos = run_pos(&f->runs_all, seq);
    if (pos < f->runs_all.n &&
        ((struct rsm__run *)f->runs_all.v[pos])->run.seq == seq) {
        return f->runs_all.v[pos];
    }
    return NULL;
}

static unsigned group_pos(const struct rsm__vec *v, const char *name)
{
    unsigned lo = 0;
    unsigned hi = v->n;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (strcmp(((const struct rsm__pruns *)v->v[mid])->name, name) < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static struct rsm__pruns *group_get(const struct rsm_fsm *f, const char *name)
{
    return map_get_str(&f->run_groups, name);
}

/* The group of name, created empty if needed. An empty group is not
 * observable (snapshots skip it), so creating one is not a mutation. */
static int group_make(struct rsm_fsm *f,
                      const char *name,
                      struct rsm__pruns **out)
{
    struct rsm__pruns *g = group_get(f, name);
    unsigned pos;
    int rv;
    if (g != NULL) {
        *out = g;
        return 0;
    }
    g = calloc(1, sizeof *g);
    if (g == NULL) {
        return ERR_NOMEM;
    }
    snprintf(g->name, sizeof g->name, "%s", name);
    pos = group_pos(&f->run_groups_by_name, g->name);
    rv = rsm__vec_insert(&f->run_groups_by_name, pos, g);
    if (rv == 0) {
        rv = map_put_str(&f->run_groups, g->name, g, NULL);
        if (rv != 0) {
            rsm__vec_remove(&f->run_groups_by_name, pos);
        }
    }
    if (rv != 0) {
        free(g);
        return rv;
    }
    *out = g;
    return 0;
}

static void group_free(struct rsm__pruns *g)
{
    rsm__vec_free(&g->runs);
    free(g);
}

static void run_free(struct rsm__run *r)
{
    if (r == NULL) {
        return;
    }
    if (r->targets != NULL) {
        for (unsigned i = 0; i < r->run.n_jobs; i++) {
            free(r->targets[i]);
        }
    }
    free(r->targets);
    free(r->job_state);
    free(r->run.jobs);
    free(r);
}

/* Allocate a run record with room for n jobs (targets not yet set). */
static struct rsm__run *run_alloc(unsigned n)
{
    struct rsm__run *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return NULL;
    }
    r->run.n_jobs = n;
    if (n == 0) {
        return r;
    }
    r->run.jobs = calloc(n, sizeof *r->run.jobs);
    r->targets = calloc(n, sizeof *r->targets);
    r->job_state = calloc(n, sizeof *r->job_state);
    if (r->run.jobs == NULL || r->targets == NULL || r->job_state == NULL) {
        run_free(r);
        return NULL;
    }
    return r;
}

/* Remove run r from both vectors and free it. */
static void run_delete(struct rsm_fsm *f, struct rsm__run *r)
{
    struct rsm__pruns *g = r->group;
    unsigned pos = run_pos(&g->runs, r->run.seq);
    rsm__vec_remove(&g->runs, pos);
    pos = run_pos(&f->runs_all, r->run.seq);
    rsm__vec_remove(&f->runs_all, pos);
    if (rsm_run_state_is_finished(r->run.state)) {
        g->n_finished--;
    } else {
        g->n_active--;
    }
    run_free(r);
}

/* Bounded "set" of scheduled_for values, oldest first. */
static bool times_has(const int64_t *v, unsigned n, int64_t t)
{
    for (unsigned i = 0; i < n; i++) {
        if (v[i] == t) {
            return true;
        }
    }
    return false;
}

static void times_add(int64_t *v, unsigned *n, int64_t t)
{
    if (times_has(v, *n, t)) {
        return;
    }
    if (*n == RSM_RUNS_DONE_KEEP) {
        memmove(v, v + 1, (size_t)(*n - 1) * sizeof *v);
        (*n)--;
    }
    v[(*n)++] = t;
}

static void trim_push(struct rsm_fsm *f, struct rsm__pruns *g)
{
    if (g->trimming) {
        return;
    }
    g->trimming = true;
    g->trim_next = f->trim_head;
    f->trim_head = g;
}

static void settle_push(struct rsm_fsm *f, struct rsm__run *r)
{
    if (r->settling) {
        return;
    }
    r->settling = true;
    r->settle_next = NULL;
    if (f->settle_tail != NULL) {
        f->settle_tail->settle_next = r;
    } else {
        f->settle_head = r;
    }
    f->settle_tail = r;
}

/* A running run reaches its final state (never allocates). */
static void run_finish(struct rsm_fsm *f, struct rsm__run *r, uint8_t state)
{
    struct rsm__pruns *g = r->group;
    r->run.state = state;
    r->run.finished_ms = f->clock;
    g->n_active--;
    g->n_finished++;
    if (state == RSM_RUN_SUCCEEDED) {
        times_add(g->done, &g->n_done, r->run.scheduled_for_ms);
        settle_push(f, r); /* its dependents fire in rsm__runs_settle */
    }
    trim_push(f, g);
}

/* ---------------------------------------------------------- job hook */

void rsm__runs_job_done(struct rsm_fsm *f, const struct rsm_job *j)
{
    struct rsm__run *r = run_find(f, j->spec.run);
    unsigned failed = 0;
    unsigned cancelled = 0;
    unsigned open = 0;
    bool found = false;
    if (r == NULL) {
        return; /* deleted with its pipeline */
    }
    for (unsigned i = 0; i < r->run.n_jobs; i++) {
        if (r->run.jobs[i] == j->seq) {
            r->job_state[i] = j->state;
            found = true;
        }
    }
    if (!found || rsm_run_state_is_finished(r->run.state)) {
        return;
    }
    for (unsigned i = 0; i < r->run.n_jobs; i++) {
        switch (r->job_state[i]) {
            case RSM_JOB_SUCCEEDED:
                break;
            case RSM_JOB_FAILED:
                failed++;
                break;
            case RSM_JOB_CANCELLED:
                cancelled++;
                break;
            default:
                open++;
                break;
        }
    }
    if (failed > 0) {
        run_finish(f, r, RSM_RUN_FAILED);
    } else if (open == 0) {
        run_finish(f, r, cancelled > 0 ? RSM_RUN_CANCELLED : RSM_RUN_SUCCEEDED);
    }
}

/* ------------------------------------------------------- run creation */

/* The job spec of one target of a run of p. */
static int job_spec_for(const struct rsm_pipeline *p,
                        const char *target,
                        uint64_t run,
                        int64_t scheduled_for_ms,
                        struct rsm_job_spec *out)
{
    struct rsm_job_spec tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.argv = p->spec.command; /* borrowed for the copy */
    tmp.env = p->spec.env;
    tmp.n_env = p->spec.n_env;
    tmp.tags = p->spec.tags;
    tmp.n_tags = p->spec.n_tags;
    tmp.retries_max = p->spec.retries_max;
    tmp.backoff_s = p->spec.backoff_s;
    tmp.timeout_s = p->spec.timeout_s;
    tmp.kind = p->spec.kind;
    tmp.run = run;
    snprintf(tmp.pipeline, sizeof tmp.pipeline, "%s", p->spec.name);
    snprintf(tmp.target, sizeof tmp.target, "%s", target);
    tmp.scheduled_for_ms = scheduled_for_ms;
    return rsm_job_spec_copy(out, &tmp);
}

/* Create a run of p, applying its overlap policy against its running
 * runs: allow -> new run; forbid with a running run -> a skipped run (no
 * jobs); replace -> every running run is cancelled (waiting jobs at once,
 * claimed/running ones cancel_requested) and a new run starts. targets
 * are the job targets (n >= 1). All or nothing: ERR_NOMEM leaves the
 * state as it was. Sets res->value to the run seq. */
static int run_create(struct rsm_fsm *f,
                      const struct rsm_pipeline *p,
                      uint8_t trigger,
                      int64_t scheduled_for_ms,
                      uint64_t retry_of,
                      const char *const *targets,
                      unsigned n_targets,
                      struct rsm_result *res)
{
    struct rsm__pruns *g = NULL;
    struct rsm__run *r = NULL;
    struct rsm_job_spec *specs = NULL;
    uint64_t seq = f->run_seq + 1;
    bool skip;
    bool replace;
    unsigned n;
    unsigned to_cancel = 0;
    int rv;

    rv = group_make(f, p->spec.name, &g);
    if (rv != 0) {
        return rv;
    }
    skip = p->spec.overlap == RSM_OVERLAP_FORBID && g->n_active > 0;
    replace = p->spec.overlap == RSM_OVERLAP_REPLACE && g->n_active > 0;
    n = skip ? 0 : n_targets;
    r = run_alloc(n);
    if (r == NULL) {
        return ERR_NOMEM;
    }
    if (n > 0) {
        specs = calloc(n, sizeof *specs);
        if (specs == NULL) {
            rv = ERR_NOMEM;
            goto err_after_run;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        r->targets[i] = strdup(targets[i]);
        if (r->targets[i] == NULL) {
            rv = ERR_NOMEM;
            goto err_after_specs;
        }
        rv = job_spec_for(p, targets[i], seq, scheduled_for_ms, &specs[i]);
        if (rv != 0) {
            goto err_after_specs;
        }
    }
    rv = vec_reserve(&f->runs_all, 1);
    if (rv == 0) {
        rv = vec_reserve(&g->runs, 1);
    }
    if (rv == 0 && replace) {
        for (unsigned i = 0; i < g->runs.n; i++) {
            const struct rsm__run *o = g->runs.v[i];
            if (o->run.state == RSM_RUN_RUNNING) {
                to_cancel += o->run.n_jobs;
            }
        }
        rv = rsm__jobs_reserve_finish(f, to_cancel);
    }
    if (rv != 0) {
        goto err_after_specs;
    }
    rv = rsm__jobs_add(f, specs, n, r->run.jobs); /* the last fallible step */
    if (rv != 0) {
        goto err_after_specs;
    }
    free(specs);

    /* Commit: nothing below allocates. */
    if (replace) {
        for (unsigned i = 0; i < g->runs.n; i++) {
            struct rsm__run *o = g->runs.v[i];
            if (o->run.state != RSM_RUN_RUNNING) {
                continue;
            }
            run_finish(f, o, RSM_RUN_CANCELLED);
            for (unsigned k = 0; k < o->run.n_jobs; k++) {
                rsm__job_cancel_reserved(f, o->run.jobs[k]);
            }
        }
    }
    r->run.seq = seq;
    snprintf(r->run.pipeline, sizeof r->run.pipeline, "%s", p->spec.name);
    r->run.pipeline_version = p->version;
    r->run.trigger = trigger;
    r->run.scheduled_for_ms = scheduled_for_ms;
    r->run.retry_of = retry_of;
    r->run.created_ms = f->clock;
    r->group = g;
    f->run_seq = seq;
    f->runs_all.v[f->runs_all.n++] = r;
    g->runs.v[g->runs.n++] = r;
    if (skip) {
        r->run.state = RSM_RUN_SKIPPED;
        r->run.finished_ms = f->clock;
        g->n_finished++;
        trim_push(f, g);
    } else {
        r->run.state = RSM_RUN_RUNNING;
        g->n_active++;
    }
    res->value = seq;
    return 0;

err_after_specs:
    for (unsigned i = 0; i < n && specs != NULL; i++) {
        rsm_job_spec_clear(&specs[i]);
    }
    free(specs);
err_after_run:
    run_free(r);
    return rv;
}

/* The targets of a fresh run of p: its targets, or one "" target. */
static const char *const *pipeline_targets(const struct rsm_pipeline *p,
                                           unsigned *n)
{
    static const char *const none[1] = {""};
    if (p->spec.targets.n == 0) {
        *n = 1;
        return none;
    }
    *n = p->spec.targets.n;
    return (const char *const *)p->spec.targets.v;
}

/* --------------------------------------------------------------- apply */

static int apply_fire(struct rsm_fsm *f,
                      const struct rsm_cmd *c,
                      struct rsm_result *res)
{
    struct rsm_pipeline *p =
        map_get_str(&f->pipelines, c->u.pipeline_fire.pipeline);
    int64_t at = c->u.pipeline_fire.scheduled_for_ms;
    const char *const *targets;
    unsigned n;
    int rv;
    if (p == NULL) {
        reject(res, ERR_NOTFOUND, "pipeline '%s' not found",
               c->u.pipeline_fire.pipeline);
        return 0;
    }
    if (at <= p->fire_cursor_ms) {
        reject(res, ERR_STALE, "pipeline '%s' has fired up to %lld, not %lld",
               p->spec.name, (long long)p->fire_cursor_ms, (long long)at);
        return 0;
    }
    res->value = 0;
    if (!c->u.pipeline_fire.skip && !p->spec.paused) {
        targets = pipeline_targets(p, &n);
        rv = run_create(f, p, RSM_TRIGGER_SCHEDULE, at, 0, targets, n, res);
        if (rv != 0) {
            return rv;
        }
    }
    p->fire_cursor_ms = at; /* a paused pipeline's ticks are consumed */
    return 0;
}

static int apply_manual(struct rsm_fsm *f,
                        const struct rsm_cmd *c,
                        struct rsm_result *res)
{
    const struct rsm_pipeline *p =
        map_get_str(&f->pipelines, c->u.run_manual.pipeline);
    const char *const *targets;
    unsigned n;
    if (p == NULL) {
        reject(res, ERR_NOTFOUND, "pipeline '%s' not found",
               c->u.run_manual.pipeline);
        return 0;
    }
    targets = pipeline_targets(p, &n);
    return run_create(f, p, RSM_TRIGGER_MANUAL, f->clock, 0, targets, n, res);
}

static int apply_retry(struct rsm_fsm *f,
                       const struct rsm_cmd *c,
                       struct rsm_result *res)
{
    const struct rsm__run *old = run_find(f, c->u.run_retry.run);
    const struct rsm_pipeline *p;
    const char **targets;
    unsigned n = 0;
    int rv;
    if (old == NULL) {
        reject(res, ERR_NOTFOUND, "run r%llu not found",
               (unsigned long long)c->u.run_retry.run);
        return 0;
    }
    if (old->run.state != RSM_RUN_FAILED) {
        reject(res, ERR_CONFLICT, "run r%llu is %s, not failed",
               (unsigned long long)old->run.seq,
               rsm_run_state_name(old->run.state));
        return 0;
    }
    for (unsigned i = 0; i < old->run.n_jobs; i++) {
        if (!rsm_job_state_is_finished(old->job_state[i])) {
            reject(res, ERR_CONFLICT,
                   "run r%llu still has unfinished jobs (j%llu)",
                   (unsigned long long)old->run.seq,
                   (unsigned long long)old->run.jobs[i]);
            return 0;
        }
    }
    p = map_get_str(&f->pipelines, old->run.pipeline);
    if (p == NULL) {
        reject(res, ERR_NOTFOUND, "pipeline '%s' not found", old->run.pipeline);
        return 0;
    }
    targets = calloc(old->run.n_jobs, sizeof *targets);
    if (targets == NULL) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < old->run.n_jobs; i++) {
        if (old->job_state[i] != RSM_JOB_SUCCEEDED) {
            targets[n++] = old->targets[i];
        }
    }
    rv = run_create(f, p, RSM_TRIGGER_RETRY, old->run.scheduled_for_ms,
                    old->run.seq, targets, n, res);
    free(targets);
    return rv;
}

int rsm__apply_run(struct rsm_fsm *f, struct rsm_cmd *c, struct rsm_result *res)
{
    switch (c->type) {
        case RSM_CMD_PIPELINE_FIRE:
            return apply_fire(f, c, res);
        case RSM_CMD_RUN_MANUAL:
            return apply_manual(f, c, res);
        case RSM_CMD_RUN_RETRY:
            return apply_retry(f, c, res);
        default:
            reject(res, ERR_MALFORMED, "unknown command type %u",
                   (unsigned)c->type);
            return 0;
    }
}

/* ----------------------------------------------------------- settling */

static bool strv_has(const struct rsm_strv *v, const char *s)
{
    for (unsigned i = 0; i < v->n; i++) {
        if (strcmp(v->v[i], s) == 0) {
            return true;
        }
    }
    return false;
}

/* Has pipeline name a succeeded run for scheduled_for t? */
static bool upstream_done(const struct rsm_fsm *f, const char *name, int64_t t)
{
    const struct rsm__pruns *g = group_get(f, name);
    if (g == NULL) {
        return false;
    }
    if (times_has(g->done, g->n_done, t)) {
        return true;
    }
    for (unsigned i = 0; i < g->runs.n; i++) {
        const struct rsm__run *r = g->runs.v[i];
        if (r->run.state == RSM_RUN_SUCCEEDED && r->run.scheduled_for_ms == t) {
            return true;
        }
    }
    return false;
}

/* Was pipeline name already triggered by `after` for t? */
static bool already_fired(const struct rsm_fsm *f, const char *name, int64_t t)
{
    const struct rsm__pruns *g = group_get(f, name);
    if (g == NULL) {
        return false;
    }
    if (times_has(g->fired, g->n_fired, t)) {
        return true;
    }
    for (unsigned i = 0; i < g->runs.n; i++) {
        const struct rsm__run *r = g->runs.v[i];
        if (r->run.trigger == RSM_TRIGGER_AFTER &&
            r->run.scheduled_for_ms == t) {
            return true;
        }
    }
    return false;
}

/* Run A of upstream pipeline succeeded for t: start every dependent whose
 * upstreams all succeeded for t, once per (dependent, t), in name order. */
static int fire_dependents(struct rsm_fsm *f, const char *up, int64_t t)
{
    for (unsigned i = 0; i < f->pipelines_by_name.n; i++) {
        const struct rsm_pipeline *d = f->pipelines_by_name.v[i];
        struct rsm__pruns *g;
        struct rsm_result scratch;
        bool ready = true;
        int rv;
        if (!strv_has(&d->spec.after, up) ||
            already_fired(f, d->spec.name, t)) {
            continue;
        }
        for (unsigned k = 0; k < d->spec.after.n && ready; k++) {
            ready = upstream_done(f, d->spec.after.v[k], t);
        }
        if (!ready) {
            continue;
        }
        if (!d->spec.paused) {
            const char *const *targets;
            unsigned n;
            targets = pipeline_targets(d, &n);
            memset(&scratch, 0, sizeof scratch);
            rv =
                run_create(f, d, RSM_TRIGGER_AFTER, t, 0, targets, n, &scratch);
            if (rv != 0) {
                return rv;
            }
        }
        rv = group_make(f, d->spec.name, &g); /* exists after run_create */
        if (rv != 0) {
            return rv;
        }
        times_add(g->fired, &g->n_fired, t);
    }
    return 0;
}

/* Delete the oldest (lowest seq) finished runs beyond the bound. */
static void trim_group(struct rsm_fsm *f, struct rsm__pruns *g)
{
    unsigned i = 0;
    while (g->n_finished > RSM_RUNS_KEEP_FINISHED && i < g->runs.n) {
        struct rsm__run *r = g->runs.v[i];
        if (rsm_run_state_is_finished(r->run.state)) {
            run_delete(f, r); /* the next run slides into slot i */
        } else {
            i++;
        }
    }
}

int rsm__runs_settle(struct rsm_fsm *f)
{
    while (f->settle_head != NULL) {
        struct rsm__run *r = f->settle_head;
        int rv;
        f->settle_head = r->settle_next;
        if (f->settle_head == NULL) {
            f->settle_tail = NULL;
        }
        r->settle_next = NULL;
        r->settling = false;
        rv = fire_dependents(f, r->run.pipeline, r->run.scheduled_for_ms);
        if (rv != 0) {
            return rv;
        }
    }
    while (f->trim_head != NULL) {
        struct rsm__pruns *g = f->trim_head;
        f->trim_head = g->trim_next;
        g->trim_next = NULL;
        g->trimming = false;
        trim_group(f, g);
    }
    return 0;
}

static void group_remove(struct rsm_fsm *f, struct rsm__pruns *g)
{
    unsigned pos = group_pos(&f->run_groups_by_name, g->name);
    map_del_str(&f->run_groups, g->name);
    rsm__vec_remove(&f->run_groups_by_name, pos);
    group_free(g);
}

void rsm__runs_pipeline_deleted(struct rsm_fsm *f, const char *name)
{
    struct rsm__pruns *g = group_get(f, name);
    unsigned i = 0;
    if (g == NULL) {
        return;
    }
    while (i < g->runs.n) {
        struct rsm__run *r = g->runs.v[i];
        if (rsm_run_state_is_finished(r->run.state) && !r->settling) {
            run_delete(f, r);
        } else {
            i++;
        }
    }
    g->n_done = 0;
    g->n_fired = 0;
    if (g->runs.n == 0 && !g->trimming) {
        group_remove(f, g);
    }
}

void rsm__runs_clear(struct rsm_fsm *f)
{
    for (unsigned i = 0; i < f->runs_all.n; i++) {
        run_free(f->runs_all.v[i]);
    }
    for (unsigned i = 0; i < f->run_groups_by_name.n; i++) {
        group_free(f->run_groups_by_name.v[i]);
    }
    rsm__vec_free(&f->runs_all);
    rsm__vec_free(&f->run_groups_by_name);
    map_close(&f->run_groups);
    f->run_seq = 0;
    f->settle_head = NULL;
    f->settle_tail = NULL;
    f->trim_head = NULL;
}

/* ------------------------------------------------------------ snapshot */

static bool group_empty(const struct rsm__pruns *g)
{
    return g->runs.n == 0 && g->n_done == 0 && g->n_fired == 0;
}

static int pack_times(msgpack_packer *pk, const int64_t *v, unsigned n)
{
    if (msgpack_pack_array(pk, n) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < n; i++) {
        if (msgpack_pack_int64(pk, v[i]) != 0) {
            return ERR_NOMEM;
        }
    }
    return 0;
}

/* [seq, pipeline, pipeline_version, trigger, state, scheduled_for,
 *  [job...], [target...], [job_state...], retry_of, created, finished] */
static int pack_run(const struct rsm__run *r, msgpack_packer *pk)
{
    const struct rsm_run *x = &r->run;
    if (msgpack_pack_array(pk, RUN_FIELDS) != 0 ||
        msgpack_pack_uint64(pk, x->seq) != 0 ||
        rsm__pack_str(pk, x->pipeline) != 0 ||
        msgpack_pack_uint64(pk, x->pipeline_version) != 0 ||
        msgpack_pack_uint8(pk, x->trigger) != 0 ||
        msgpack_pack_uint8(pk, x->state) != 0 ||
        msgpack_pack_int64(pk, x->scheduled_for_ms) != 0 ||
        msgpack_pack_array(pk, x->n_jobs) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < x->n_jobs; i++) {
        if (msgpack_pack_uint64(pk, x->jobs[i]) != 0) {
            return ERR_NOMEM;
        }
    }
    if (msgpack_pack_array(pk, x->n_jobs) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < x->n_jobs; i++) {
        if (rsm__pack_str(pk, r->targets[i]) != 0) {
            return ERR_NOMEM;
        }
    }
    if (msgpack_pack_array(pk, x->n_jobs) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < x->n_jobs; i++) {
        if (msgpack_pack_uint8(pk, r->job_state[i]) != 0) {
            return ERR_NOMEM;
        }
    }
    if (msgpack_pack_uint64(pk, x->retry_of) != 0 ||
        msgpack_pack_int64(pk, x->created_ms) != 0 ||
        msgpack_pack_int64(pk, x->finished_ms) != 0) {
        return ERR_NOMEM;
    }
    return 0;
}

int rsm__runs_pack(const struct rsm_fsm *f, msgpack_packer *pk)
{
    unsigned n_groups = 0;
    for (unsigned i = 0; i < f->run_groups_by_name.n; i++) {
        n_groups += group_empty(f->run_groups_by_name.v[i]) ? 0 : 1;
    }
    if (msgpack_pack_uint64(pk, f->run_seq) != 0 ||
        msgpack_pack_array(pk, n_groups) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < f->run_groups_by_name.n; i++) {
        const struct rsm__pruns *g = f->run_groups_by_name.v[i];
        if (group_empty(g)) {
            continue;
        }
        if (msgpack_pack_array(pk, GROUP_FIELDS) != 0 ||
            rsm__pack_str(pk, g->name) != 0 ||
            pack_times(pk, g->done, g->n_done) != 0 ||
            pack_times(pk, g->fired, g->n_fired) != 0) {
            return ERR_NOMEM;
        }
    }
    if (msgpack_pack_array(pk, f->runs_all.n) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < f->runs_all.n; i++) {
        if (pack_run(f->runs_all.v[i], pk) != 0) {
            return ERR_NOMEM;
        }
    }
    return 0;
}

static bool load_times(const msgpack_object *o, int64_t *v, unsigned *n)
{
    if (o->type != MSGPACK_OBJECT_ARRAY ||
        o->via.array.size > RSM_RUNS_DONE_KEEP) {
        return false;
    }
    for (unsigned i = 0; i < o->via.array.size; i++) {
        if (!rsm__get_i64(&o->via.array.ptr[i], &v[i]) ||
            times_has(v, i, v[i])) {
            return false;
        }
    }
    *n = o->via.array.size;
    return true;
}

static int load_groups(struct rsm_fsm *f, const msgpack_object *o, char *errmsg)
{
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        errmsg_printf(errmsg, "run groups: expected an array");
        return ERR_MALFORMED;
    }
    for (unsigned i = 0; i < o->via.array.size; i++) {
        const msgpack_object *go = &o->via.array.ptr[i];
        const msgpack_object *gf;
        char name[RSM_NAME_MAX + 1];
        struct rsm__pruns *g;
        int rv;
        if (go->type != MSGPACK_OBJECT_ARRAY ||
            go->via.array.size != GROUP_FIELDS) {
            errmsg_printf(errmsg, "run groups[%u]: expected %d fields", i,
                          GROUP_FIELDS);
            return ERR_MALFORMED;
        }
        gf = go->via.array.ptr;
        if (!rsm__get_str(&gf[0], RSM_NAME_MAX, name) ||
            !rsm__valid_name(name) ||
            (f->run_groups_by_name.n > 0 &&
             strcmp(((const struct rsm__pruns *)
                         f->run_groups_by_name.v[f->run_groups_by_name.n - 1])
                        ->name,
                    name) >= 0)) {
            errmsg_printf(errmsg, "run groups[%u]: bad or unsorted name", i);
            return ERR_MALFORMED;
        }
        rv = group_make(f, name, &g);
        if (rv != 0) {
            return rv;
        }
        if (!load_times(&gf[1], g->done, &g->n_done) ||
            !load_times(&gf[2], g->fired, &g->n_fired)) {
            errmsg_printf(errmsg, "run groups[%u]: bad time list", i);
            return ERR_MALFORMED;
        }
    }
    return 0;
}

static bool job_state_ok(uint64_t s)
{
    return s == RSM_JOB_PENDING || s == RSM_JOB_SUCCEEDED ||
           s == RSM_JOB_FAILED || s == RSM_JOB_CANCELLED;
}

/* Decode one run (fields only; tables untouched). */
static int load_run(const msgpack_object *o,
                    struct rsm__run **out,
                    int64_t clock,
                    char *errmsg)
{
    const msgpack_object *rf;
    struct rsm__run *r;
    struct rsm_run *x;
    uint64_t u;
    unsigned n;
    unsigned failed = 0;
    unsigned open = 0;
    *out = NULL;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != RUN_FIELDS) {
        errmsg_printf(errmsg, "expected %d fields", RUN_FIELDS);
        return ERR_MALFORMED;
    }
    rf = o->via.array.ptr;
    if (rf[6].type != MSGPACK_OBJECT_ARRAY ||
        rf[6].via.array.size > RSM_TARGETS_MAX ||
        rf[7].type != MSGPACK_OBJECT_ARRAY ||
        rf[8].type != MSGPACK_OBJECT_ARRAY ||
        rf[7].via.array.size != rf[6].via.array.size ||
        rf[8].via.array.size != rf[6].via.array.size) {
        errmsg_printf(errmsg, "bad job lists");
        return ERR_MALFORMED;
    }
    n = rf[6].via.array.size;
    r = run_alloc(n);
    if (r == NULL) {
        return ERR_NOMEM;
    }
    *out = r;
    x = &r->run;
    if (!rsm__get_u64(&rf[0], UINT64_MAX, &x->seq) || x->seq == 0 ||
        !rsm__get_str(&rf[1], RSM_NAME_MAX, x->pipeline) ||
        !rsm__valid_name(x->pipeline) ||
        !rsm__get_u64(&rf[2], UINT64_MAX, &x->pipeline_version) ||
        !rsm__get_u64(&rf[3], RSM_TRIGGER__COUNT - 1, &u)) {
        errmsg_printf(errmsg, "bad field");
        return ERR_MALFORMED;
    }
    x->trigger = (uint8_t)u;
    if (!rsm__get_u64(&rf[4], RSM_RUN__STATES - 1, &u)) {
        errmsg_printf(errmsg, "bad state");
        return ERR_MALFORMED;
    }
    x->state = (uint8_t)u;
    if (!rsm__get_i64(&rf[5], &x->scheduled_for_ms) ||
        !rsm__get_u64(&rf[9], UINT64_MAX, &x->retry_of) ||
        !rsm__get_i64(&rf[10], &x->created_ms) ||
        !rsm__get_i64(&rf[11], &x->finished_ms)) {
        errmsg_printf(errmsg, "bad field");
        return ERR_MALFORMED;
    }
    for (unsigned i = 0; i < n; i++) {
        char target[RSM_NAME_MAX + 1];
        if (!rsm__get_u64(&rf[6].via.array.ptr[i], UINT64_MAX, &x->jobs[i]) ||
            x->jobs[i] == 0 ||
            !rsm__get_str(&rf[7].via.array.ptr[i], RSM_NAME_MAX, target) ||
            !rsm__get_u64(&rf[8].via.array.ptr[i], RSM_JOB__STATES - 1, &u) ||
            !job_state_ok(u)) {
            errmsg_printf(errmsg, "bad job %u", i);
            return ERR_MALFORMED;
        }
        r->targets[i] = strdup(target);
        if (r->targets[i] == NULL) {
            return ERR_NOMEM;
        }
        r->job_state[i] = (uint8_t)u;
        failed += u == RSM_JOB_FAILED ? 1 : 0;
        open += u == RSM_JOB_PENDING ? 1 : 0;
    }
    if ((x->state == RSM_RUN_SKIPPED) != (n == 0) ||
        (x->state == RSM_RUN_RUNNING &&
         (x->finished_ms != 0 || failed > 0 || open == 0)) ||
        (x->state != RSM_RUN_RUNNING && x->finished_ms < x->created_ms) ||
        x->created_ms > clock || x->finished_ms > clock ||
        (x->trigger == RSM_TRIGGER_RETRY) != (x->retry_of != 0) ||
        x->retry_of >= x->seq) {
        errmsg_printf(errmsg, "inconsistent state");
        return ERR_MALFORMED;
    }
    return 0;
}

int rsm__runs_load(struct rsm_fsm *f,
                   const msgpack_object *seq,
                   const msgpack_object *groups,
                   const msgpack_object *runs,
                   char *errmsg)
{
    uint64_t prev = 0;
    int rv;
    if (!rsm__get_u64(seq, UINT64_MAX, &f->run_seq) ||
        runs->type != MSGPACK_OBJECT_ARRAY) {
        errmsg_printf(errmsg, "runs: bad counter or table");
        return ERR_MALFORMED;
    }
    rv = load_groups(f, groups, errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = vec_reserve(&f->runs_all, runs->via.array.size);
    if (rv != 0) {
        return rv;
    }
    for (unsigned i = 0; i < runs->via.array.size; i++) {
        struct rsm__run *r = NULL;
        struct rsm__pruns *g = NULL;
        rv = load_run(&runs->via.array.ptr[i], &r, f->clock, errmsg);
        if (rv == 0 && (r->run.seq <= prev || r->run.seq > f->run_seq)) {
            errmsg_printf(errmsg, "not sorted by seq or beyond the counter");
            rv = ERR_MALFORMED;
        }
        if (rv == 0) {
            g = group_get(f, r->run.pipeline);
            if (g == NULL) {
                errmsg_printf(errmsg, "no run group '%s'", r->run.pipeline);
                rv = ERR_MALFORMED;
            }
        }
        if (rv == 0) {
            rv = vec_reserve(&g->runs, 1);
        }
        if (rv != 0) {
            run_free(r);
            if (rv != ERR_NOMEM) {
                errmsg_wrapf(errmsg, "runs[%u]", i);
                rv = ERR_MALFORMED;
            }
            return rv;
        }
        r->group = g;
        f->runs_all.v[f->runs_all.n++] = r;
        g->runs.v[g->runs.n++] = r;
        if (rsm_run_state_is_finished(r->run.state)) {
            g->n_finished++;
        } else {
            g->n_active++;
        }
        prev = r->run.seq;
    }
    for (unsigned i = 0; i < f->run_groups_by_name.n; i++) {
        if (group_empty(f->run_groups_by_name.v[i])) {
            errmsg_printf(errmsg, "runs: empty run group");
            return ERR_MALFORMED;
        }
    }
    return 0;
}

/* ----------------------------------------------------------- accessors */

const struct rsm_run *rsm_fsm_run(const struct rsm_fsm *f, uint64_t seq)
{
    const struct rsm__run *r = run_find(f, seq);
    return r != NULL ? &r->run : NULL;
}

unsigned rsm_fsm_run_count(const struct rsm_fsm *f)
{
    return f->runs_all.n;
}

uint64_t rsm_fsm_run_seq(const struct rsm_fsm *f)
{
    return f->run_seq;
}

static unsigned list_runs(const struct rsm_fsm *f,
                          const char *pipeline,
                          bool active_only,
                          const struct rsm_run **out,
                          unsigned max)
{
    const struct rsm__vec *v = &f->runs_all;
    unsigned n = 0;
    if (pipeline != NULL) {
        const struct rsm__pruns *g = group_get(f, pipeline);
        if (g == NULL) {
            return 0;
        }
        v = &g->runs;
    }
    for (unsigned i = v->n; i > 0; i--) {
        const struct rsm__run *r = v->v[i - 1];
        if (active_only && r->run.state != RSM_RUN_RUNNING) {
            continue;
        }
        if (n < max) {
            out[n] = &r->run;
        }
        n++;
    }
    return n;
}

unsigned rsm_fsm_runs(const struct rsm_fsm *f,
                      const char *pipeline,
                      const struct rsm_run **out,
                      unsigned max)
{
    return list_runs(f, pipeline, false, out, max);
}

unsigned rsm_fsm_runs_active(const struct rsm_fsm *f,
                             const char *pipeline,
                             const struct rsm_run **out,
                             unsigned max)
{
    return list_runs(f, pipeline, true, out, max);
}
