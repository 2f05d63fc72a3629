/* Fuzzed requests against a live agent: random routes, methods, query
 * strings, headers and JSON-ish bodies. Every answer must be a JSON error
 * or a success, never a crash or a hang; the node keeps serving. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/harness.h"
#include "lib/procs.h"
#include "util.h"

TestSuite(fuzz_api, .timeout = 180);

static const char *const paths[] = {"/v1/health",
                                    "/v1/cluster",
                                    "/v1/status",
                                    "/v1/pipelines",
                                    "/v1/pipelines/p1",
                                    "/v1/pipelines/p1/runs",
                                    "/v1/runs",
                                    "/v1/runs/r1",
                                    "/v1/runs/r1/retry",
                                    "/v1/jobs",
                                    "/v1/jobs/j1",
                                    "/v1/jobs/j1/cancel",
                                    "/v1/jobs/j1/logs",
                                    "/internal/v1/propose",
                                    "/v1/jobs/j99999999999",
                                    "/v1/pipelines/%00",
                                    "/v1//jobs",
                                    "/../etc/passwd",
                                    "/v1/jobs?limit=-1",
                                    "/v1/jobs?state=nope",
                                    "/v1/runs?limit=99999999",
                                    "/v1/pipelines?consistent=true"};
static const char *const methods[] = {"GET",    "POST",  "PUT",
                                      "DELETE", "PATCH", "OPTIONS"};
static const char *const fragments[] = {"{",
                                        "}",
                                        "[",
                                        "]",
                                        "\"name\"",
                                        "\"command\"",
                                        ":",
                                        ",",
                                        "\"x\"",
                                        "1",
                                        "-1",
                                        "1e999",
                                        "null",
                                        "true",
                                        "\"schedule\"",
                                        "\"* * * * *\"",
                                        "\"after\"",
                                        "\"retries\"",
                                        "{\"max\":",
                                        "\"targets\"",
                                        "\"\\u0000\"",
                                        "\"env\"",
                                        "\"tags\"",
                                        "18446744073709551616",
                                        "\"timeout_s\"",
                                        "\"@every 0s\"",
                                        "\"timezone\"",
                                        "\"../../etc\""};

static void random_body(struct prng *r, char *buf, size_t size)
{
    size_t len = 0;
    unsigned n = (unsigned)prng_below(r, 24);
    if (prng_below(r, 4) == 0) {
        /* a well-formed base with one mutation */
        snprintf(buf, size,
                 "{\"name\":\"p%u\",\"command\":[\"true\"],\"schedule\":\"*/%u "
                 "* * * *\"}",
                 (unsigned)prng_below(r, 5), (unsigned)prng_below(r, 70));
        len = strlen(buf);
        if (len > 0 && prng_below(r, 2) == 0) {
            buf[prng_below(r, len)] = (char)prng_below(r, 256);
        }
        return;
    }
    buf[0] = '\0';
    for (unsigned i = 0; i < n; i++) {
        const char *f = fragments[prng_below(r, ARRAY_SIZE(fragments))];
        size_t fl = strlen(f);
        if (len + fl + 1 >= size) {
            break;
        }
        memcpy(buf + len, f, fl + 1);
        len += fl;
    }
}

Test(fuzz_api, random_requests_never_break_the_node)
{
    struct cl c;
    struct prng r;
    struct view_arg alive = {&c, NULL, "alive", -1};
    const char *seed_env = getenv("TEST_SEED");
    uint64_t seed = seed_env != NULL ? strtoull(seed_env, NULL, 10) : 7;
    unsigned statuses[6] = {0};
    char url[512], body[1024];

    cr_log_info("seed %llu (TEST_SEED to replay)", (unsigned long long)seed);
    prng_seed(&r, seed);
    cl_start(&c, 1, "fuzzapi");
    cr_assert(th_wait(cl_all_see, &alive, 15000));
    cr_assert(th_wait(cl_same_leader, &c, 15000));
    for (int i = 0; i < 600; i++) {
        const char *m = methods[prng_below(&r, ARRAY_SIZE(methods))];
        const char *p = paths[prng_below(&r, ARRAY_SIZE(paths))];
        char hdr[128];
        const char *headers[2] = {NULL, NULL};
        char *resp = NULL;
        long code;
        snprintf(url, sizeof url, "http://%s%s", c.a[0].api_addr, p);
        random_body(&r, body, sizeof body);
        if (prng_below(&r, 3) == 0) {
            snprintf(hdr, sizeof hdr, "Idempotency-Key: k%u",
                     (unsigned)prng_below(&r, 20));
            headers[0] = hdr;
        }
        code = th_http(m, url, prng_below(&r, 5) == 0 ? NULL : body, headers,
                       &resp);
        cr_assert(code >= 200 && code < 600, "%s %s: no answer (%ld)", m, p,
                  code);
        if (code >= 400 && strcmp(p, "/internal/v1/propose") != 0 &&
            strcmp(m, "OPTIONS") != 0 && resp != NULL && resp[0] != '\0') {
            json_t *j = json_loads(resp, 0, NULL);
            cr_assert(
                json_is_object(json_object_get(j, "error")) || code == 413,
                "%s %s -> %ld without a JSON error: %.200s", m, p, code, resp);
            json_decref(j);
        }
        statuses[code / 100]++;
        free(resp);
    }
    cr_log_info("2xx %u, 3xx %u, 4xx %u, 5xx %u", statuses[2], statuses[3],
                statuses[4], statuses[5]);
    snprintf(url, sizeof url, "http://%s/v1/health", c.a[0].api_addr);
    cr_assert_eq(th_http("GET", url, NULL, NULL, NULL), 200);
    cr_assert_eq(th_agent_stop(&c.a[0], 10000), 0, "unclean shutdown");
    c.a[0].pid = 0;
    cl_stop(&c, true);
}
