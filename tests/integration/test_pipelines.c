/* Multi-process pipeline tests on 127.0.0.1: cron firing exactly once
 * across a leader kill, dependency chains and fan-in, overlap forbid,
 * retries, re-launching a failed run, and firing across a SIGSTOP of the
 * leader. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/harness.h"
#include "lib/procs.h"
#include "util.h"

TestSuite(pipelines, .timeout = 240);

static const char *const flags[] = {"--lease-ms", "1500", NULL};

static void start3(struct cl *c, const char *tag)
{
    struct view_arg alive = {c, NULL, "alive", -1};
    cl_start_with(c, 3, tag, flags);
    cr_assert(th_wait(cl_all_see, &alive, 20000), "members never all alive");
    cr_assert(th_wait(cl_same_leader, c, 20000), "no common leader");
}

static int stopped = -1; /* an agent under SIGSTOP: do not ask it */

static const struct th_agent *live(struct cl *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->a[i].pid != 0 && i != stopped) {
            return &c->a[i];
        }
    }
    return NULL;
}

static long post(const struct th_agent *a,
                 const char *path,
                 const char *body,
                 json_t **out)
{
    char url[320];
    char *resp = NULL;
    long code;
    snprintf(url, sizeof url, "http://%s%s", a->api_addr, path);
    code = th_http("POST", url, body, NULL, &resp);
    if (out != NULL) {
        *out = json_loads(resp != NULL ? resp : "", 0, NULL);
    }
    free(resp);
    return code;
}

static json_t *get(const struct th_agent *a, const char *path)
{
    char url[320];
    snprintf(url, sizeof url, "http://%s%s", a->api_addr, path);
    return th_get_json(url);
}

/* Runs of a pipeline, oldest first (the API lists newest first). */
static json_t *runs_of(struct cl *c, const char *pipeline)
{
    char path[128];
    json_t *j, *arr, *rev;
    size_t n;
    snprintf(path, sizeof path, "/v1/runs?pipeline=%s&limit=1000", pipeline);
    j = get(live(c), path);
    arr = json_object_get(j, "runs");
    rev = json_array();
    n = json_array_size(arr);
    for (size_t i = 0; i < n; i++) {
        json_array_append(rev, json_array_get(arr, n - 1 - i));
    }
    json_decref(j);
    return rev;
}

static const char *s(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v != NULL ? v : "";
}

struct runs_arg
{
    struct cl *c;
    const char *pipeline;
    size_t want;       /* at least this many runs */
    const char *state; /* all of them in this state, NULL = any */
};

static bool runs_reached(void *p)
{
    struct runs_arg *a = p;
    json_t *runs = runs_of(a->c, a->pipeline);
    size_t i;
    json_t *r;
    bool ok = json_array_size(runs) >= a->want;
    if (ok && a->state != NULL) {
        json_array_foreach(runs, i, r)
        {
            if (strcmp(s(r, "state"), a->state) != 0) {
                ok = false;
            }
        }
    }
    json_decref(runs);
    return ok;
}

static void create(struct cl *c, const char *body)
{
    json_t *resp = NULL;
    long code = post(live(c), "/v1/pipelines", body, &resp);
    char *text = json_dumps(resp, JSON_COMPACT);
    cr_assert_eq(code, 201, "create: %ld %s", code, text != NULL ? text : "");
    free(text);
    json_decref(resp);
}

static void pause_pipeline(struct cl *c, const char *name, const char *body)
{
    char url[320];
    snprintf(url, sizeof url, "http://%s/v1/pipelines/%s", live(c)->api_addr,
             name);
    cr_assert_eq(th_http("PUT", url, body, NULL, NULL), 200);
}

Test(pipelines, every_second_fires_once_per_tick_across_a_leader_kill)
{
    struct cl c;
    char leader[16];
    int li;
    json_t *runs;
    size_t i;
    json_t *r;
    int64_t prev = 0;
    start3(&c, "cron");
    create(&c,
           "{\"name\":\"tick\",\"command\":[\"true\"],\"schedule\":\"@every "
           "1s\",\"catchup\":\"all\"}");
    usleep(5000 * 1000);
    cl_leader_of(live(&c), leader);
    li = cl_index_of(&c, leader);
    th_agent_kill(&c.a[li]);
    usleep(6000 * 1000);
    pause_pipeline(&c, "tick",
                   "{\"command\":[\"true\"],\"schedule\":\"@every 1s\","
                   "\"catchup\":\"all\",\"paused\":true}");
    runs = runs_of(&c, "tick");
    cr_log_info("runs in ~11 s with a leader kill: %zu", json_array_size(runs));
    cr_assert_geq(json_array_size(runs), 9);
    cr_assert_leq(json_array_size(runs), 13);
    json_array_foreach(runs, i, r)
    {
        int64_t t;
        cr_assert_eq(time_parse_ms(s(r, "scheduled_for"), &t), 0);
        if (prev != 0) {
            cr_assert_eq(t - prev, 1000,
                         "run %zu: scheduled_for %s is not the next tick "
                         "(gap or duplicate)",
                         i, s(r, "scheduled_for"));
        }
        prev = t;
    }
    json_decref(runs);
    cl_stop(&c, true);
}

Test(pipelines, chain_and_fan_in_share_scheduled_for)
{
    struct cl c;
    struct runs_arg wc = {&c, "c", 1, "succeeded"};
    struct runs_arg wf = {&c, "fanin", 1, "succeeded"};
    json_t *ra, *rb, *rc, *rf;
    json_t *resp = NULL;
    start3(&c, "chain");
    create(&c, "{\"name\":\"a\",\"command\":[\"sleep\",\"0.2\"]}");
    create(&c, "{\"name\":\"b\",\"command\":[\"true\"],\"after\":[\"a\"]}");
    create(&c, "{\"name\":\"c\",\"command\":[\"true\"],\"after\":[\"b\"]}");
    create(&c, "{\"name\":\"a2\",\"command\":[\"sleep\",\"0.5\"]}");
    create(&c,
           "{\"name\":\"fanin\",\"command\":[\"true\"],\"after\":[\"a\","
           "\"a2\"]}");
    cr_assert_eq(post(live(&c), "/v1/pipelines/a/runs", "", &resp), 201);
    json_decref(resp);
    cr_assert(th_wait(runs_reached, &wc, 30000), "c never ran");
    ra = runs_of(&c, "a");
    rb = runs_of(&c, "b");
    rc = runs_of(&c, "c");
    cr_assert_eq(json_array_size(rb), 1);
    cr_assert_str_eq(s(json_array_get(rb, 0), "trigger"), "after");
    cr_assert_str_eq(s(json_array_get(ra, 0), "scheduled_for"),
                     s(json_array_get(rb, 0), "scheduled_for"));
    cr_assert_str_eq(s(json_array_get(rb, 0), "scheduled_for"),
                     s(json_array_get(rc, 0), "scheduled_for"));
    /* fan-in waits for a2 for the same scheduled_for: a manual run of a2
     * has its own time, so fanin has not run yet */
    rf = runs_of(&c, "fanin");
    cr_assert_eq(json_array_size(rf), 0, "fan-in ran with one upstream");
    json_decref(rf);
    json_decref(ra);
    json_decref(rb);
    json_decref(rc);
    /* a scheduled tick feeds both upstreams with the same time */
    pause_pipeline(&c, "a",
                   "{\"command\":[\"sleep\",\"0.2\"],\"schedule\":\"@every "
                   "2s\"}");
    pause_pipeline(&c, "a2",
                   "{\"command\":[\"sleep\",\"0.5\"],\"schedule\":\"@every "
                   "2s\"}");
    cr_assert(th_wait(runs_reached, &wf, 30000), "fan-in never ran");
    rf = runs_of(&c, "fanin");
    {
        json_t *a2 = runs_of(&c, "a2");
        bool found = false;
        size_t i;
        json_t *r;
        json_array_foreach(a2, i, r)
        {
            found =
                found || strcmp(s(r, "scheduled_for"),
                                s(json_array_get(rf, 0), "scheduled_for")) == 0;
        }
        cr_assert(found, "fan-in's scheduled_for not shared with a2");
        json_decref(a2);
    }
    json_decref(rf);
    cl_stop(&c, true);
}

Test(pipelines, overlap_forbid_records_skipped_runs)
{
    struct cl c;
    struct runs_arg w = {&c, "slow", 4, NULL};
    json_t *runs;
    size_t i, skipped = 0, running_or_done = 0;
    json_t *r;
    start3(&c, "forbid");
    create(&c,
           "{\"name\":\"slow\",\"command\":[\"sleep\",\"3\"],"
           "\"schedule\":\"@every 1s\",\"overlap\":\"forbid\"}");
    cr_assert(th_wait(runs_reached, &w, 20000));
    pause_pipeline(&c, "slow",
                   "{\"command\":[\"sleep\",\"3\"],\"schedule\":\"@every "
                   "1s\",\"overlap\":\"forbid\",\"paused\":true}");
    runs = runs_of(&c, "slow");
    json_array_foreach(runs, i, r)
    {
        if (strcmp(s(r, "state"), "skipped") == 0) {
            skipped++;
            cr_assert_eq(json_array_size(json_object_get(r, "jobs")), 0);
        } else {
            running_or_done++;
        }
    }
    cr_log_info("forbid: %zu runs, %zu skipped", json_array_size(runs),
                skipped);
    cr_assert_geq(skipped, 1);
    cr_assert_geq(running_or_done, 1);
    json_decref(runs);
    cl_stop(&c, true);
}

Test(pipelines, retries_then_success_and_relaunch_of_failed_targets)
{
    struct cl c;
    char body[1024], counter[400];
    struct runs_arg w1 = {&c, "flaky", 1, "succeeded"};
    struct runs_arg w2 = {&c, "split", 1, "failed"};
    struct runs_arg w3 = {&c, "split", 2, NULL};
    json_t *runs, *job, *retry = NULL;
    char path[96];
    start3(&c, "retries");
    snprintf(counter, sizeof counter, "%s/count", c.root);
    /* fails on attempts 1 and 2, succeeds on 3 */
    snprintf(body, sizeof body,
             "{\"name\":\"flaky\",\"command\":[\"sh\",\"-c\",\"echo x >> %s; "
             "[ $(wc -l < %s) -ge 3 ]\"],\"retries\":{\"max\":3,"
             "\"backoff_s\":0}}",
             counter, counter);
    create(&c, body);
    cr_assert_eq(post(live(&c), "/v1/pipelines/flaky/runs", "", NULL), 201);
    cr_assert(th_wait(runs_reached, &w1, 30000), "flaky never succeeded");
    runs = runs_of(&c, "flaky");
    snprintf(path, sizeof path, "/v1/jobs/%s",
             json_string_value(json_array_get(
                 json_object_get(json_array_get(runs, 0), "jobs"), 0)));
    job = get(live(&c), path);
    cr_assert_str_eq(s(job, "state"), "succeeded");
    cr_assert_eq(json_integer_value(json_object_get(job, "attempt")), 3);
    json_decref(job);
    json_decref(runs);

    /* target "bad" fails, "good" succeeds; the retry runs only "bad" */
    create(&c,
           "{\"name\":\"split\",\"command\":[\"sh\",\"-c\",\"[ "
           "$KILN_TARGET = good ]\"],\"targets\":[\"good\",\"bad\"]}");
    cr_assert_eq(post(live(&c), "/v1/pipelines/split/runs", "", NULL), 201);
    cr_assert(th_wait(runs_reached, &w2, 30000), "split never failed");
    runs = runs_of(&c, "split");
    snprintf(path, sizeof path, "/v1/runs/%s/retry",
             s(json_array_get(runs, 0), "id"));
    cr_assert_eq(post(live(&c), path, "", &retry), 201);
    cr_assert_str_eq(s(retry, "trigger"), "retry");
    cr_assert_eq(json_array_size(json_object_get(retry, "jobs")), 1,
                 "retry should rerun only the failed target");
    snprintf(
        path, sizeof path, "/v1/jobs/%s",
        json_string_value(json_array_get(json_object_get(retry, "jobs"), 0)));
    job = get(live(&c), path);
    cr_assert_str_eq(s(job, "target"), "bad");
    json_decref(job);
    json_decref(retry);
    json_decref(runs);
    cr_assert(th_wait(runs_reached, &w3, 10000));
    cl_stop(&c, true);
}

struct grew_arg
{
    struct cl *c;
    const char *pipeline;
    size_t from;
    size_t by;
};

static bool runs_grew(void *p)
{
    struct grew_arg *a = p;
    json_t *runs = runs_of(a->c, a->pipeline);
    bool ok = json_array_size(runs) >= a->from + a->by;
    json_decref(runs);
    return ok;
}

static size_t n_runs(struct cl *c, const char *pipeline)
{
    json_t *runs = runs_of(c, pipeline);
    size_t n = json_array_size(runs);
    json_decref(runs);
    return n;
}

struct visible_arg
{
    const struct th_agent *a;
    const char *name;
};

static bool pipeline_visible(void *p)
{
    struct visible_arg *v = p;
    char url[160];
    snprintf(url, sizeof url, "http://%s/v1/pipelines/%s", v->a->api_addr,
             v->name);
    return th_http("GET", url, NULL, NULL, NULL) == 200;
}

/* The leader is SIGSTOPped for longer than the lease and the election
 * timeout while a pipeline fires every second: the survivors elect, fire
 * the following ticks and acknowledge writes; once resumed, the old leader
 * steps down and catches up; scheduled_for stays gap-free and duplicate-
 * free across the pause, and every run's job succeeds (a job the stopped
 * node held is fenced there and runs again elsewhere). */
Test(pipelines, every_second_fires_once_per_tick_across_a_leader_sigstop)
{
    struct cl c;
    char leader[16];
    int li, other;
    json_t *runs;
    size_t i;
    json_t *r;
    int64_t prev = 0;
    uint64_t t0;
    long code = 0;

    start3(&c, "cronstop");
    create(&c,
           "{\"name\":\"tock\",\"command\":[\"true\"],\"schedule\":\"@every "
           "1s\",\"catchup\":\"all\"}");
    {
        struct runs_arg ra = {&c, "tock", 3, NULL};
        cr_assert(th_wait(runs_reached, &ra, 15000), "never fired 3 times");
    }
    cl_leader_of(live(&c), leader);
    li = cl_index_of(&c, leader);
    cr_assert(li >= 0);
    other = (li + 1) % 3;
    cr_assert_eq(kill(c.a[li].pid, SIGSTOP), 0);
    stopped = li;
    t0 = th_now_ms();
    /* the survivors acknowledge a write and keep firing */
    while (th_now_ms() - t0 < 10000) {
        code = post(&c.a[other], "/v1/pipelines",
                    "{\"name\":\"during-pause\",\"command\":[\"true\"]}", NULL);
        if (code == 201 || code == 409) {
            break;
        }
        usleep(50000);
    }
    cr_assert(code == 201 || code == 409,
              "no write acknowledged while the leader was stopped (%ld)", code);
    {
        struct grew_arg ga = {&c, "tock", n_runs(&c, "tock"), 3};
        cr_assert(th_wait(runs_grew, &ga, 10000),
                  "no ticks fired while the leader was stopped");
    }
    /* stopped for longer than the lease (1.5 s) */
    while (th_now_ms() - t0 < 4000) {
        usleep(20000);
    }
    cr_assert_eq(kill(c.a[li].pid, SIGCONT), 0);
    stopped = -1;
    {
        struct visible_arg va = {&c.a[li], "during-pause"};
        cr_assert(th_wait(pipeline_visible, &va, 15000),
                  "the resumed node never caught up");
        cr_assert(th_wait(cl_same_leader, &c, 15000), "no common leader");
    }
    {
        struct grew_arg ga = {&c, "tock", n_runs(&c, "tock"), 2};
        cr_assert(th_wait(runs_grew, &ga, 10000), "firing stopped");
    }
    pause_pipeline(&c, "tock",
                   "{\"command\":[\"true\"],\"schedule\":\"@every 1s\","
                   "\"catchup\":\"all\",\"paused\":true}");
    {
        struct runs_arg done = {&c, "tock", 1, "succeeded"};
        cr_assert(th_wait(runs_reached, &done, 20000),
                  "not every run of the pause succeeded");
    }
    runs = runs_of(&c, "tock");
    cr_log_info("runs across a 4 s SIGSTOP of the leader: %zu",
                json_array_size(runs));
    json_array_foreach(runs, i, r)
    {
        int64_t t;
        cr_assert_eq(time_parse_ms(s(r, "scheduled_for"), &t), 0);
        if (prev != 0) {
            cr_assert_eq(t - prev, 1000,
                         "run %zu: scheduled_for %s is not the next tick "
                         "(gap or duplicate)",
                         i, s(r, "scheduled_for"));
        }
        prev = t;
    }
    json_decref(runs);
    cl_stop(&c, true);
}
