/* The firing loop on a real single-node rsm (raft_uv on 127.0.0.1) and a
 * uv loop: schedules fire once per tick, on time, and catch up per policy
 * after a gap in which nobody fired (suite fire_loop); the dirty-set
 * passes: pipeline writes do not walk the pipeline table, schedules added,
 * changed, paused and removed by updates are picked up, and many pipelines
 * with different periods fire from the wake-up heap (suite fire_dirty). */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "lib/cluster.h"
#include "lib/harness.h"
#include "raft/rsm.h"
#include "sched/fire.h"
#include "util.h"

TestSuite(fire_loop, .timeout = 60);
TestSuite(fire_dirty, .timeout = 60);

static uv_loop_t loop;
static char root[512];
static uint16_t port;
static struct rsm *node;
static struct fire fire;
static bool fire_on;     /* fire_init done, not closed */
static bool fire_closed; /* fire_close's cb ran */
static bool rsm_closed;

static void applied_cb(struct rsm *r,
                       const struct rsm_cmd *cmd,
                       const struct rsm_result *res,
                       void *ud)
{
    (void)r;
    (void)ud;
    if (fire_on) {
        fire_on_applied(&fire, cmd, res);
    }
}

static void role_cb(struct rsm *r, void *ud)
{
    (void)r;
    (void)ud;
    if (fire_on) {
        fire_on_role(&fire);
    }
}

static int forward(struct rsm *r,
                   uint64_t leader_id,
                   const void *buf,
                   size_t len,
                   rsm_forward_done done,
                   void *req,
                   void *ud)
{
    (void)r;
    (void)leader_id;
    (void)buf;
    (void)len;
    (void)done;
    (void)req;
    (void)ud;
    return ERR_UNAVAILABLE; /* single node: never a follower */
}

static bool run_until(bool (*cond)(void *), void *arg, unsigned timeout_ms)
{
    uint64_t end = th_now_ms() + timeout_ms;
    while (th_now_ms() < end) {
        if (cond(arg)) {
            return true;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    return cond(arg);
}

static bool never(void *arg)
{
    (void)arg;
    return false;
}

/* Run the loop for ms (a keep-alive timer keeps UV_RUN_ONCE from blocking
 * forever). */
static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

static void run_for(unsigned ms)
{
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, tick_cb, 5, 5);
    run_until(never, NULL, ms);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static bool is_leader(void *arg)
{
    (void)arg;
    return rsm_is_leader(node);
}

static void setup(void)
{
    struct rsm_config cfg;
    struct rsm_server self;
    char errmsg[ERRMSG_SIZE] = "";

    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(uv_loop_init(&loop), 0);
    th_tmpdir(root, sizeof root, "fire");
    th_free_ports(&port, 1);
    rsm_config_defaults(&cfg);
    cfg.id = 1;
    str_copy(cfg.name, sizeof cfg.name, "n1");
    str_copy(cfg.raft.host, sizeof cfg.raft.host, "127.0.0.1");
    cfg.raft.port = port;
    snprintf(cfg.dir, sizeof cfg.dir, "%s/n1", root);
    cfg.election_ms = 150;
    cfg.heartbeat_ms = 15;
    cfg.forward = forward;
    cfg.on_applied = applied_cb;
    cfg.on_role = role_cb;
    node = rsm_create(&loop, &cfg, errmsg);
    cr_assert_not_null(node, "%s", errmsg);
    cr_assert_eq(rsm_start(node, errmsg), 0, "%s", errmsg);
    self.id = 1;
    snprintf(self.raft, sizeof self.raft, "127.0.0.1:%u", port);
    cr_assert_eq(rsm_bootstrap(node, &self, 1), 0);
    cr_assert(run_until(is_leader, NULL, 5000), "no leader");
}

static void fire_closed_cb(struct fire *f)
{
    (void)f;
    fire_closed = true;
}

static void rsm_closed_cb(struct rsm *r, void *data)
{
    (void)r;
    (void)data;
    rsm_closed = true;
}

static bool flag(void *arg)
{
    return *(bool *)arg;
}

static void teardown(void)
{
    if (fire_on) {
        fire_on = false;
        fire_closed = false;
        fire_close(&fire, fire_closed_cb);
        cr_assert(run_until(flag, &fire_closed, 5000));
    }
    rsm_closed = false;
    rsm_close(node, rsm_closed_cb, NULL);
    cr_assert(run_until(flag, &rsm_closed, 5000));
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "leaked handles");
    th_rmrf(root);
}

struct outcome
{
    bool fired;
    int rv;
    struct rsm_result res;
};

static void proposed_cb(void *data, int rv, const struct rsm_result *res)
{
    struct outcome *o = data;
    o->fired = true;
    o->rv = rv;
    if (res != NULL) {
        o->res = *res;
    }
}

static bool outcome_fired(void *arg)
{
    return ((struct outcome *)arg)->fired;
}

static void create_pipeline(const char *name,
                            const char *schedule,
                            int catchup,
                            bool paused)
{
    struct rsm_cmd cmd;
    struct outcome o;
    memset(&o, 0, sizeof o);
    cl_cmd_pipeline(&cmd, name);
    str_copy(cmd.u.pipeline_create.schedule,
             sizeof cmd.u.pipeline_create.schedule, schedule);
    cmd.u.pipeline_create.catchup = (uint8_t)catchup;
    cmd.u.pipeline_create.paused = paused;
    cr_assert_eq(rsm_propose(node, &cmd, proposed_cb, &o), 0);
    cr_assert(run_until(outcome_fired, &o, 5000), "create %s", name);
    cr_assert_eq(o.rv, 0, "%s", err_str(o.rv));
    cr_assert_eq(o.res.code, 0, "%s", o.res.message);
}

static void start_fire(void)
{
    cr_assert_eq(fire_init(&fire, &loop, node), 0);
    fire_on = true;
}

/* Runs of pipeline name, oldest first. */
static unsigned runs_of(const char *name, const struct rsm_run **out)
{
    const struct rsm_run *tmp[64];
    unsigned n = rsm_fsm_runs(rsm_state(node), name, tmp, 64);
    cr_assert_leq(n, 64);
    for (unsigned i = 0; i < n; i++) {
        out[i] = tmp[n - 1 - i];
    }
    return n;
}

Test(fire_loop, every_second_on_time, .init = setup, .fini = teardown)
{
    const struct rsm_run *runs[64];
    int64_t t0, t1, worst = 0;
    unsigned n;

    create_pipeline("tick", "@every 1s", 0, false);
    create_pipeline("held", "@every 1s", 0, true);
    create_pipeline("plain", "", 0, false);
    t0 = time_wall_ms();
    start_fire();
    run_for(3500);
    t1 = time_wall_ms();

    n = runs_of("tick", runs);
    cr_assert(n >= 2 && n <= 4, "%u runs in 3.5 s", n);
    for (unsigned i = 0; i < n; i++) {
        int64_t late = runs[i]->created_ms - runs[i]->scheduled_for_ms;
        cr_assert_eq(runs[i]->trigger, RSM_TRIGGER_SCHEDULE);
        cr_assert_eq(runs[i]->scheduled_for_ms % 1000, 0);
        cr_assert_gt(runs[i]->scheduled_for_ms, t0 - 1000);
        cr_assert_leq(runs[i]->scheduled_for_ms, t1);
        if (i > 0) {
            cr_assert_eq(runs[i]->scheduled_for_ms,
                         runs[i - 1]->scheduled_for_ms + 1000,
                         "ticks not consecutive");
        }
        /* Leader time at append minus the tick: the firing lateness. */
        cr_assert_geq(late, 0);
        if (late > worst) {
            worst = late;
        }
    }
    cr_log_info("fire lateness: worst %lld ms over %u runs", (long long)worst,
                n);
    cr_assert_lt(worst, 500, "fired %lld ms late", (long long)worst);
    cr_assert_eq(runs_of("held", runs), 0, "a paused pipeline fired");
    cr_assert_eq(runs_of("plain", runs), 0, "no schedule, yet it fired");
    cr_assert_eq(fire.skipped, 0);
    cr_assert_eq(fire.rejected, 0);
    cr_assert_eq(fire.failed, 0);
    cr_assert_eq(fire.applied, fire.proposed);
}

/* Nobody fires for ~3.3 s (as if the leader were down), then the loop
 * starts: all replays the missed ticks in order, latest runs one, none
 * consumes the missed ones with a skip and runs the current tick. */
Test(fire_loop, catchup_after_gap, .init = setup, .fini = teardown)
{
    const struct rsm_run *runs[64];
    const struct rsm_pipeline *p;
    int64_t created, started;
    unsigned n, k;

    create_pipeline("all", "@every 1s", RSM_CATCHUP_ALL, false);
    create_pipeline("latest", "@every 1s", RSM_CATCHUP_LATEST, false);
    create_pipeline("none", "@every 1s", RSM_CATCHUP_NONE, false);
    p = rsm_fsm_pipeline(rsm_state(node), "all");
    cr_assert_not_null(p);
    created = p->fire_cursor_ms;
    run_for(3300);
    started = time_wall_ms();
    start_fire();
    run_for(300);

    /* Ticks due when the loop started: (created, started]. */
    n = runs_of("all", runs);
    k = 0;
    for (unsigned i = 0; i < n; i++) {
        if (runs[i]->scheduled_for_ms <= started) {
            k++;
        }
        if (i > 0) {
            cr_assert_eq(runs[i]->scheduled_for_ms,
                         runs[i - 1]->scheduled_for_ms + 1000);
        }
    }
    cr_assert_eq(runs[0]->scheduled_for_ms, (created / 1000 + 1) * 1000,
                 "all: the first missed tick first");
    cr_assert_eq(k, (unsigned)(started / 1000 - created / 1000),
                 "all: %u of the missed ticks ran", k);
    cr_assert_geq(k, 3);

    n = runs_of("latest", runs);
    cr_assert_geq(n, 1);
    /* (the loop plans a moment after `started`: a tick may cross) */
    cr_assert(runs[0]->scheduled_for_ms == started / 1000 * 1000 ||
                  runs[0]->scheduled_for_ms == started / 1000 * 1000 + 1000,
              "latest: the most recent tick runs");

    n = runs_of("none", runs);
    cr_assert_geq(n, 1);
    /* (the loop plans a moment after `started`: a tick may cross) */
    cr_assert(runs[0]->scheduled_for_ms == started / 1000 * 1000 ||
                  runs[0]->scheduled_for_ms == started / 1000 * 1000 + 1000,
              "none: only the current (on-time) tick runs");
    cr_assert_geq(fire.skipped, 1);
    cr_assert_eq(fire.rejected, 0);
}

/* --- dirty-set passes ----------------------------------------------- */

/* Propose `n` unscheduled pipelines <prefix>-<i> in one go and wait. */
static void create_plain_many(const char *prefix, unsigned n)
{
    struct outcome *o = calloc(n, sizeof *o);
    cr_assert_not_null(o);
    for (unsigned i = 0; i < n; i++) {
        struct rsm_cmd cmd;
        char name[48];
        snprintf(name, sizeof name, "%s-%u", prefix, i);
        cl_cmd_pipeline(&cmd, name);
        cr_assert_eq(rsm_propose(node, &cmd, proposed_cb, &o[i]), 0);
    }
    for (unsigned i = 0; i < n; i++) {
        cr_assert(run_until(outcome_fired, &o[i], 5000), "create %u", i);
        cr_assert_eq(o[i].rv, 0, "%s", err_str(o[i].rv));
        cr_assert_eq(o[i].res.code, 0, "%s", o[i].res.message);
    }
    free(o);
}

/* Overwrite pipeline name with the given schedule and pause flag. */
static void update_pipeline(const char *name, const char *schedule, bool paused)
{
    struct rsm_cmd create;
    struct rsm_cmd cmd;
    struct outcome o;
    memset(&o, 0, sizeof o);
    cl_cmd_pipeline(&create, name);
    rsm_cmd_init(&cmd, RSM_CMD_PIPELINE_UPDATE);
    cmd.u.pipeline_update.spec = create.u.pipeline_create; /* steal */
    memset(&create.u.pipeline_create, 0, sizeof create.u.pipeline_create);
    rsm_cmd_clear(&create);
    str_copy(cmd.u.pipeline_update.spec.schedule,
             sizeof cmd.u.pipeline_update.spec.schedule, schedule);
    cmd.u.pipeline_update.spec.paused = paused;
    cr_assert_eq(rsm_propose(node, &cmd, proposed_cb, &o), 0);
    cr_assert(run_until(outcome_fired, &o, 5000), "update %s", name);
    cr_assert_eq(o.rv, 0, "%s", err_str(o.rv));
    cr_assert_eq(o.res.code, 0, "%s", o.res.message);
}

static void delete_pipeline(const char *name)
{
    struct rsm_cmd cmd;
    struct outcome o;
    memset(&o, 0, sizeof o);
    rsm_cmd_init(&cmd, RSM_CMD_PIPELINE_DELETE);
    str_copy(cmd.u.pipeline_delete.name, sizeof cmd.u.pipeline_delete.name,
             name);
    cr_assert_eq(rsm_propose(node, &cmd, proposed_cb, &o), 0);
    cr_assert(run_until(outcome_fired, &o, 5000), "delete %s", name);
    cr_assert_eq(o.rv, 0, "%s", err_str(o.rv));
    cr_assert_eq(o.res.code, 0, "%s", o.res.message);
}

static bool applied_at_least(void *arg)
{
    return fire.applied >= *(uint64_t *)arg;
}

static unsigned n_runs(const char *name)
{
    const struct rsm_run *runs[64];
    return runs_of(name, runs);
}

/* Writes of unscheduled pipelines neither walk the table (one full scan
 * per leadership) nor leave state behind; the scheduled one keeps firing. */
Test(fire_dirty, writes_do_not_scan, .init = setup, .fini = teardown)
{
    uint64_t want = 1;
    uint64_t planned0;
    uint64_t applied0;

    create_plain_many("a", 300);
    create_pipeline("tick", "@every 1s", 0, false);
    start_fire();
    cr_assert(run_until(applied_at_least, &want, 3000), "tick never fired");
    cr_assert_eq(fire.scans, 1);
    cr_assert_eq(map_count(&fire.pipes), 1, "only scheduled ones are kept");
    planned0 = fire.planned;
    applied0 = fire.applied;

    create_plain_many("b", 300);
    cr_assert_eq(fire.scans, 1, "a pipeline write walked the table");
    cr_assert_eq(map_count(&fire.pipes), 1);
    /* Only tick's own re-plans (one per fire, plus its timer). */
    cr_assert_leq(fire.planned - planned0, 2 * (fire.applied - applied0) + 4,
                  "planned %llu pipelines for %llu fires",
                  (unsigned long long)(fire.planned - planned0),
                  (unsigned long long)(fire.applied - applied0));
    want = fire.applied + 1;
    cr_assert(run_until(applied_at_least, &want, 3000), "tick stopped");
    cr_assert_eq(fire.rejected, 0);
    cr_assert_eq(fire.failed, 0);
}

/* A schedule added, paused, removed by updates, and a scheduled pipeline
 * deleted: picked up without a full scan, forgotten when unscheduled. */
Test(fire_dirty, schedule_changes_by_update, .init = setup, .fini = teardown)
{
    unsigned n;

    create_pipeline("p", "", 0, false);
    create_pipeline("q", "@every 1s", 0, false);
    start_fire();
    run_for(300);
    cr_assert_eq(map_count(&fire.pipes), 1);
    cr_assert_eq(n_runs("p"), 0);

    update_pipeline("p", "@every 1s", false);
    run_for(2300);
    cr_assert_geq(n_runs("p"), 1, "an added schedule did not fire");
    cr_assert_eq(map_count(&fire.pipes), 2);

    update_pipeline("p", "@every 1s", true); /* paused: kept, silent */
    run_for(100);
    n = n_runs("p");
    run_for(1500);
    cr_assert_eq(n_runs("p"), n, "a paused pipeline fired");
    cr_assert_eq(map_count(&fire.pipes), 2);

    update_pipeline("p", "", false); /* no schedule: forgotten */
    delete_pipeline("q");            /* deleted: forgotten */
    run_for(300);
    cr_assert_eq(map_count(&fire.pipes), 0);
    run_for(1200);
    cr_assert_eq(n_runs("p"), n, "an unscheduled pipeline fired");
    cr_assert_eq(fire.scans, 1);
    cr_assert_eq(fire.failed, 0);
}

/* Many pipelines with different periods fire from the wake-up heap, each
 * on its own ticks. */
Test(fire_dirty, many_periods, .init = setup, .fini = teardown)
{
    char name[32];

    for (unsigned i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "s1-%u", i);
        create_pipeline(name, "@every 1s", 0, false);
    }
    for (unsigned i = 0; i < 10; i++) {
        snprintf(name, sizeof name, "s2-%u", i);
        create_pipeline(name, "@every 2s", 0, false);
    }
    start_fire();
    run_for(4300);
    for (unsigned i = 0; i < 40; i++) {
        unsigned n;
        snprintf(name, sizeof name, "s1-%u", i);
        n = n_runs(name);
        cr_assert(n >= 3 && n <= 5, "%s: %u runs in 4.3 s", name, n);
    }
    for (unsigned i = 0; i < 10; i++) {
        unsigned n;
        snprintf(name, sizeof name, "s2-%u", i);
        n = n_runs(name);
        cr_assert(n >= 1 && n <= 3, "%s: %u runs in 4.3 s", name, n);
    }
    cr_assert_eq(fire.rejected, 0);
    cr_assert_eq(fire.failed, 0);
    cr_assert_eq(fire.scans, 1);
}

/* A pipeline deleted and created again under the same name before a pass
 * (both at version 1) fires on its new schedule, not the old one. */
Test(fire_dirty,
     recreated_pipeline_fires_on_its_new_schedule,
     .init = setup,
     .fini = teardown)
{
    struct rsm_cmd del, add;
    struct outcome o1, o2;
    create_pipeline("p", "0 0 1 1 *", 0, false);
    start_fire();
    run_for(300);
    memset(&o1, 0, sizeof o1);
    memset(&o2, 0, sizeof o2);
    rsm_cmd_init(&del, RSM_CMD_PIPELINE_DELETE);
    str_copy(del.u.pipeline_delete.name, sizeof del.u.pipeline_delete.name,
             "p");
    cl_cmd_pipeline(&add, "p");
    str_copy(add.u.pipeline_create.schedule,
             sizeof add.u.pipeline_create.schedule, "@every 1s");
    cr_assert_eq(rsm_propose(node, &del, proposed_cb, &o1), 0);
    cr_assert_eq(rsm_propose(node, &add, proposed_cb, &o2), 0);
    cr_assert(run_until(outcome_fired, &o2, 5000));
    cr_assert_eq(o1.res.code, 0, "%s", o1.res.message);
    cr_assert_eq(o2.res.code, 0, "%s", o2.res.message);
    cr_assert_eq(rsm_fsm_pipeline(rsm_state(node), "p")->version, 1);
    run_for(3300);
    cr_assert_geq(n_runs("p"), 2, "the re-created pipeline fired %u times",
                  n_runs("p"));
}
