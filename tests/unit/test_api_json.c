/* Unit tests: pipeline JSON validation names the field; rendering. */
#include <criterion/criterion.h>
#include <string.h>

#include "api/api_int.h"
#include "err.h"

static int parse(const char *text,
                 const char *path,
                 char *errmsg,
                 struct rsm_pipeline_spec *s)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    int rv;
    cr_assert_not_null(j, "test JSON invalid: %s", je.text);
    rv = api__pipeline_from_json(j, path, NULL, s, errmsg);
    json_decref(j);
    return rv;
}

Test(api_json, full_pipeline_round_trip)
{
    struct rsm_pipeline p;
    char errmsg[ERRMSG_SIZE];
    json_t *out;
    char *text;
    memset(&p, 0, sizeof p);
    cr_assert_eq(parse("{\"name\":\"etl.daily\",\"command\":[\"sh\",\"-c\","
                       "\"echo hi\"],\"schedule\":\"0 3 * * *\","
                       "\"timezone\":\"Europe/Berlin\",\"after\":[\"extract\"],"
                       "\"retries\":{\"max\":3,\"backoff_s\":5},"
                       "\"timeout_s\":600,\"overlap\":\"forbid\","
                       "\"catchup\":\"latest\",\"targets\":[\"eu\",\"us\"],"
                       "\"paused\":true,\"tags\":{\"zone\":\"a\"},"
                       "\"env\":{\"MODE\":\"full\"}}",
                       NULL, errmsg, &p.spec),
                 0, "%s", errmsg);
    cr_assert_str_eq(p.spec.name, "etl.daily");
    cr_assert_eq(p.spec.command.n, 3);
    cr_assert_str_eq(p.spec.command.v[2], "echo hi");
    cr_assert_null(p.spec.command.v[3]);
    cr_assert_eq(p.spec.retries_max, 3);
    cr_assert_eq(p.spec.overlap, RSM_OVERLAP_FORBID);
    cr_assert_eq(p.spec.catchup, RSM_CATCHUP_LATEST);
    cr_assert_eq(p.spec.targets.n, 2);
    cr_assert(p.spec.paused);
    p.version = 2;
    p.created_ms = 1795463433123LL;
    p.updated_ms = 1795463433123LL;
    out = api__pipeline_to_json(&p);
    text = json_dumps(out, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert(strstr(text, "\"overlap\":\"forbid\"") != NULL, "%s", text);
    cr_assert(strstr(text, "\"retries\":{\"backoff_s\":5,\"max\":3}") != NULL,
              "%s", text);
    cr_assert(
        strstr(text, "\"created_at\":\"2026-11-23T19:50:33.123Z\"") != NULL,
        "%s", text);
    cr_assert(strstr(text, "\"version\":2") != NULL, "%s", text);
    free(text);
    json_decref(out);
    rsm_spec_clear(&p.spec);
}

Test(api_json, errors_name_the_field)
{
    struct
    {
        const char *body;
        const char *want;
    } cases[] = {
        {"[]", "body"},
        {"{\"command\":[\"x\"]}", "name: is required"},
        {"{\"name\":\"-x\",\"command\":[\"x\"]}", "name:"},
        {"{\"name\":\"a\"}", "command: is required"},
        {"{\"name\":\"a\",\"command\":[]}", "command:"},
        {"{\"name\":\"a\",\"command\":\"ls\"}", "command:"},
        {"{\"name\":\"a\",\"command\":[1]}", "command[0]"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"bogus\":1}",
         "bogus: unknown field"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"retries\":3}", "retries:"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"retries\":{\"max\":-1}}",
         "retries.max"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"retries\":{\"tries\":1}}",
         "retries.tries: unknown field"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"timeout_s\":\"5\"}",
         "timeout_s:"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"overlap\":\"maybe\"}",
         "overlap:"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"catchup\":1}", "catchup:"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"after\":[\"a\"]}",
         "after: a pipeline cannot run after itself"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"after\":[\"b\",\"b\"]}",
         "after[1]"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"targets\":[\"\"]}",
         "targets[0]"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"paused\":\"yes\"}", "paused:"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"env\":{\"KILN_X\":\"1\"}}",
         "reserved"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"env\":{\"1X\":\"1\"}}", "env:"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"tags\":{\"k\":1}}", "tags.k"},
        {"{\"name\":\"a\",\"command\":[\"x\"],\"schedule\":\"\"}", "schedule:"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rsm_pipeline_spec s;
        char errmsg[ERRMSG_SIZE] = "";
        int rv = parse(cases[i].body, NULL, errmsg, &s);
        cr_assert_eq(rv, ERR_INVALID, "case %zu accepted: %s", i,
                     cases[i].body);
        cr_assert(strstr(errmsg, cases[i].want) != NULL,
                  "case %zu: '%s' lacks '%s'", i, errmsg, cases[i].want);
    }
}

Test(api_json, put_name_must_match_path)
{
    struct rsm_pipeline_spec s;
    char errmsg[ERRMSG_SIZE];
    cr_assert_eq(parse("{\"command\":[\"x\"]}", "p1", errmsg, &s), 0);
    cr_assert_str_eq(s.name, "p1");
    rsm_spec_clear(&s);
    cr_assert_eq(
        parse("{\"name\":\"p2\",\"command\":[\"x\"]}", "p1", errmsg, &s),
        ERR_INVALID);
    cr_assert(strstr(errmsg, "does not match") != NULL);
}
