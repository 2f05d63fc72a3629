/* Unit tests: the firing planner (fire_plan) under a simulated clock. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "sched/cron.h"
#include "sched/fire.h"
#include "util.h"

TestSuite(fire_plan, .timeout = 30);

/* 2023-11-14T22:13:20Z: a whole second (and a whole minute + 20 s). */
#define T0 1700000000000LL
#define S 1000LL
#define H (3600LL * S)

static struct rsm_pipeline pl;
static struct cron_expr ex;
static struct fire_action out[2048];
static unsigned n;
static int64_t wake;

static int64_t ms_of(const char *rfc3339)
{
    int64_t ms = 0;
    cr_assert_eq(time_parse_ms(rfc3339, &ms), 0, "bad time %s", rfc3339);
    return ms;
}

/* A pipeline created at created_ms (cursor there too, as the FSM does). */
static void setup_pipe(const char *schedule,
                       const char *tz,
                       int catchup,
                       int64_t created_ms)
{
    char errmsg[ERRMSG_SIZE] = "";
    memset(&pl, 0, sizeof pl);
    str_copy(pl.spec.name, sizeof pl.spec.name, "p");
    str_copy(pl.spec.schedule, sizeof pl.spec.schedule, schedule);
    str_copy(pl.spec.timezone, sizeof pl.spec.timezone, tz != NULL ? tz : "");
    pl.spec.catchup = (uint8_t)catchup;
    pl.version = 1;
    pl.created_ms = pl.updated_ms = pl.fire_cursor_ms = created_ms;
    cr_assert_eq(cron_parse(&ex, schedule, tz, errmsg), 0, "%s", errmsg);
}

static void plan(int64_t now, unsigned max)
{
    n = 12345;
    wake = 0;
    cr_assert_eq(fire_plan(&pl, &ex, now, out, max, &n, &wake), 0);
    cr_assert_leq(n, max);
}

/* What the FSM does with the actions: move the cursor (skips too). */
static void apply_all(void)
{
    for (unsigned i = 0; i < n; i++) {
        cr_assert_gt(out[i].scheduled_for_ms, pl.fire_cursor_ms,
                     "action %u not after the cursor", i);
        pl.fire_cursor_ms = out[i].scheduled_for_ms;
    }
}

static void expect(unsigned i, int64_t t, bool skip)
{
    cr_assert_lt(i, n, "only %u actions", n);
    cr_assert_eq(out[i].scheduled_for_ms, t,
                 "action %u: scheduled_for %lld, want %lld (T0%+lld ms)", i,
                 (long long)out[i].scheduled_for_ms, (long long)t,
                 (long long)(out[i].scheduled_for_ms - T0));
    cr_assert_eq(out[i].skip, skip, "action %u: skip %d", i, out[i].skip);
}

Test(fire_plan, bad_arguments)
{
    setup_pipe("@every 1s", NULL, RSM_CATCHUP_NONE, T0);
    cr_assert_eq(fire_plan(NULL, &ex, T0, out, 4, &n, &wake), ERR_INVALID);
    cr_assert_eq(fire_plan(&pl, &ex, T0, NULL, 4, &n, &wake), ERR_INVALID);
    cr_assert_eq(fire_plan(&pl, &ex, T0, out, 0, &n, &wake), ERR_INVALID);
    cr_assert_eq(fire_plan(&pl, &ex, T0, out, 4, NULL, &wake), ERR_INVALID);
    cr_assert_eq(fire_plan(&pl, &ex, T0, out, 4, &n, NULL), ERR_INVALID);
}

/* A timer firing on time (or a few ms late) fires exactly the due tick,
 * then waits for the next one; a long simulated run fires every tick
 * once, in order. */
Test(fire_plan, on_time)
{
    for (int c = RSM_CATCHUP_NONE; c <= RSM_CATCHUP_ALL; c++) {
        setup_pipe("@every 1s", NULL, c, T0 + 300);
        plan(T0 + 500, 8);
        cr_assert_eq(n, 0);
        cr_assert_eq(wake, T0 + S);
        for (int64_t k = 1; k <= 100; k++) {
            int64_t late = k % 7; /* ms of timer lateness */
            plan(T0 + k * S + late, 8);
            cr_assert_eq(n, 1, "catchup %d tick %lld: %u actions", c,
                         (long long)k, n);
            expect(0, T0 + k * S, false);
            cr_assert_eq(wake, T0 + (k + 1) * S);
            apply_all();
            /* Re-planned after the apply: nothing more until the next. */
            plan(T0 + k * S + late + 2, 8);
            cr_assert_eq(n, 0);
            cr_assert_eq(wake, T0 + (k + 1) * S);
        }
    }
}

/* A tick less than the tolerance late (a leader that just took over)
 * still fires normally under every policy. */
Test(fire_plan, slightly_late_fires_normally)
{
    for (int c = RSM_CATCHUP_NONE; c <= RSM_CATCHUP_ALL; c++) {
        setup_pipe("* * * * *", NULL, c, T0 - 50 * S); /* 22:12:30 */
        plan(T0 - 20 * S + 1500, 8);                   /* tick 22:13:00 */
        cr_assert_eq(n, 1);
        expect(0, T0 - 20 * S, false);
        cr_assert_eq(wake, T0 + 40 * S);
    }
}

/* The leader was down 10 s with an every-second schedule: the cursor is at
 * T0, the new leader plans at T0 + 10.4 s (ticks T0+1 .. T0+10 are due). */
Test(fire_plan, outage_catchup_none)
{
    setup_pipe("@every 1s", NULL, RSM_CATCHUP_NONE, T0 - 500);
    pl.fire_cursor_ms = T0;
    plan(T0 + 10 * S + 400, 8);
    cr_assert_eq(n, 2);
    expect(0, T0 + 9 * S, true);   /* the missed ones: consumed, no run */
    expect(1, T0 + 10 * S, false); /* the current tick fires */
    cr_assert_eq(wake, T0 + 11 * S);
    apply_all();
    plan(T0 + 10 * S + 410, 8);
    cr_assert_eq(n, 0);
    plan(T0 + 11 * S + 3, 8);
    cr_assert_eq(n, 1);
    expect(0, T0 + 11 * S, false);
}

Test(fire_plan, outage_catchup_latest)
{
    setup_pipe("@every 1s", NULL, RSM_CATCHUP_LATEST, T0 - 500);
    pl.fire_cursor_ms = T0;
    plan(T0 + 10 * S + 400, 8);
    cr_assert_eq(n, 1);
    expect(0, T0 + 10 * S, false); /* one run; the cursor jumps */
    apply_all();
    plan(T0 + 10 * S + 410, 8);
    cr_assert_eq(n, 0);
    cr_assert_eq(wake, T0 + 11 * S);
}

Test(fire_plan, outage_catchup_all)
{
    setup_pipe("@every 1s", NULL, RSM_CATCHUP_ALL, T0 - 500);
    pl.fire_cursor_ms = T0;
    plan(T0 + 10 * S + 400, 64);
    cr_assert_eq(n, 10);
    for (unsigned i = 0; i < 10; i++) {
        expect(i, T0 + (i + 1) * S, false);
    }
    cr_assert_eq(wake, T0 + 11 * S);
    apply_all();
    plan(T0 + 10 * S + 410, 64);
    cr_assert_eq(n, 0);

    /* A small batch size: the rest comes after the apply, in order. */
    pl.fire_cursor_ms = T0;
    plan(T0 + 10 * S + 400, 4);
    cr_assert_eq(n, 4);
    cr_assert_eq(wake, T0 + 10 * S + 400, "truncated: plan again now");
    expect(3, T0 + 4 * S, false);
    apply_all();
    plan(T0 + 10 * S + 420, 4);
    cr_assert_eq(n, 4);
    expect(0, T0 + 5 * S, false);
    apply_all();
    plan(T0 + 10 * S + 430, 4);
    cr_assert_eq(n, 2);
    expect(1, T0 + 10 * S, false);
    cr_assert_eq(wake, T0 + 11 * S);
}

/* An hourly schedule whose tick the outage covered: the latest due tick
 * itself is late, so none skips it and latest runs it. */
Test(fire_plan, late_single_tick)
{
    int64_t hour = ms_of("2023-11-14T22:00:00Z");
    int64_t now = hour + 30 * S;

    setup_pipe("@hourly", NULL, RSM_CATCHUP_NONE, hour - 10 * 60 * S);
    plan(now, 8);
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0].scheduled_for_ms, hour);
    cr_assert(out[0].skip);
    cr_assert_eq(wake, hour + H);

    setup_pipe("@hourly", NULL, RSM_CATCHUP_LATEST, hour - 10 * 60 * S);
    plan(now, 8);
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0].scheduled_for_ms, hour);
    cr_assert_not(out[0].skip);

    setup_pipe("@hourly", NULL, RSM_CATCHUP_ALL, hour - 10 * 60 * S);
    plan(now, 8);
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0].scheduled_for_ms, hour);
    cr_assert_not(out[0].skip);

    /* Down for 5 hours: none consumes them all with one skip of the
     * latest; latest runs the latest; all runs the 5 in order. */
    setup_pipe("@hourly", NULL, RSM_CATCHUP_NONE, hour - 5 * H - 60 * S);
    plan(now, 8);
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0].scheduled_for_ms, hour);
    cr_assert(out[0].skip);
    setup_pipe("@hourly", NULL, RSM_CATCHUP_ALL, hour - 5 * H - 60 * S);
    plan(now, 8);
    cr_assert_eq(n, 6);
    for (unsigned i = 0; i < 6; i++) {
        cr_assert_eq(out[i].scheduled_for_ms, hour - (5 - (int64_t)i) * H);
        cr_assert_not(out[i].skip);
    }
}

/* catchup=all is bounded: at most FIRE_WINDOW_TICKS of the latest ticks,
 * none older than FIRE_WINDOW_MS; one skip consumes the rest. */
Test(fire_plan, all_window_bound_ticks)
{
    int64_t now = T0 + 400;
    setup_pipe("@every 1s", NULL, RSM_CATCHUP_ALL, T0 - 2 * H - 500);
    pl.fire_cursor_ms = T0 - 2 * H; /* 7200 ticks missed */
    plan(now, 2048);
    cr_assert_eq(n, FIRE_WINDOW_TICKS + 1);
    expect(0, T0 - (int64_t)FIRE_WINDOW_TICKS * S, true);
    for (unsigned i = 1; i <= FIRE_WINDOW_TICKS; i++) {
        expect(i, T0 - ((int64_t)FIRE_WINDOW_TICKS - i) * S, false);
    }
    /* In batches, as the loop does it. */
    unsigned rounds = 0, runs = 0, skips = 0;
    for (;;) {
        plan(now, FIRE_BATCH_MAX);
        if (n == 0) {
            break;
        }
        for (unsigned i = 0; i < n; i++) {
            if (out[i].skip) {
                skips++;
            } else {
                runs++;
            }
        }
        apply_all();
        rounds++;
        cr_assert_lt(rounds, 100);
    }
    cr_assert_eq(skips, 1);
    cr_assert_eq(runs, FIRE_WINDOW_TICKS);
    cr_assert_eq(pl.fire_cursor_ms, T0);
}

Test(fire_plan, all_window_bound_age)
{
    int64_t now = T0 + 400;
    int64_t five = 5 * 60 * S;
    int64_t first_in = 0, t;
    setup_pipe("@every 5m", NULL, RSM_CATCHUP_ALL, T0 - 72 * H);
    plan(now, 2048);
    /* 288 ticks of 5 min in 24 h, preceded by one skip of the last tick at
     * or before now - 24 h. */
    cr_assert_eq(n, 289);
    cr_assert(out[0].skip);
    cr_assert_leq(out[0].scheduled_for_ms, now - FIRE_WINDOW_MS);
    cr_assert_gt(out[0].scheduled_for_ms, now - FIRE_WINDOW_MS - five);
    first_in = out[1].scheduled_for_ms;
    cr_assert_gt(first_in, now - FIRE_WINDOW_MS);
    t = first_in;
    for (unsigned i = 1; i < n; i++, t += five) {
        expect(i, t, false);
    }
    cr_assert_leq(out[n - 1].scheduled_for_ms, now);
}

Test(fire_plan, paused_and_unscheduled)
{
    setup_pipe("@every 1s", NULL, RSM_CATCHUP_ALL, T0);
    pl.spec.paused = true;
    plan(T0 + 10 * S, 8);
    cr_assert_eq(n, 0);
    cr_assert_eq(wake, INT64_MAX);

    /* Unpaused by an update at T0 + 10.5 s: the ticks while paused are not
     * caught up, only ticks from the update on fire. */
    pl.spec.paused = false;
    pl.version = 2;
    pl.updated_ms = T0 + 10 * S + 500;
    plan(T0 + 10 * S + 600, 64);
    cr_assert_eq(n, 2, "within the tolerance before the update: %u", n);
    expect(0, T0 + 9 * S, false);
    plan(T0 + 20 * S + 600, 64);
    cr_assert_gt(n, 0);
    expect(0, T0 + 9 * S, false);

    /* No schedule (or none that parses here): nothing, no wake-up. */
    setup_pipe("@every 1s", NULL, RSM_CATCHUP_ALL, T0);
    pl.spec.schedule[0] = '\0';
    plan(T0 + 10 * S, 8);
    cr_assert_eq(n, 0);
    cr_assert_eq(wake, INT64_MAX);
    pl.spec.schedule[0] = '@';
    n = 1;
    cr_assert_eq(fire_plan(&pl, NULL, T0 + 10 * S, out, 8, &n, &wake), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(wake, INT64_MAX);

    /* A schedule that never fires. */
    setup_pipe("0 0 30 2 *", NULL, RSM_CATCHUP_ALL, T0);
    plan(T0 + 10 * S, 8);
    cr_assert_eq(n, 0);
    cr_assert_eq(wake, INT64_MAX);
}

/* DST is cron_next's business: a local time skipped by spring-forward
 * fires once, at the transition, even under catchup=all. */
Test(fire_plan, dst_gap_fires_once)
{
    int64_t tr = ms_of("2026-03-29T01:00:00Z"); /* Berlin 02:00 -> 03:00 */
    setup_pipe("*/15 2 * * *", "Europe/Berlin", RSM_CATCHUP_ALL,
               tr - 10 * 60 * S);
    plan(tr - 1, 8);
    cr_assert_eq(n, 0);
    cr_assert_eq(wake, tr);
    plan(tr + 40 * 60 * S, 8); /* even asked late: one tick in the gap */
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0].scheduled_for_ms, tr);
    apply_all();
    plan(tr + 50 * 60 * S, 8);
    cr_assert_eq(n, 0);
    cr_assert_eq(wake, ms_of("2026-03-30T00:00:00Z"));
}
