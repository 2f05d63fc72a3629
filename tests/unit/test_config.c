/* Unit tests: flag parsing, addresses, time formatting, identity. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "err.h"
#include "lib/harness.h"
#include "node.h"
#include "util.h"

static int parse(struct config *c, char *errmsg, const char **argv)
{
    int argc = 0;
    while (argv[argc] != NULL) {
        argc++;
    }
    config_defaults(c);
    return config_parse_agent(c, argc, (char **)argv, errmsg);
}

Test(config, defaults_match_contract)
{
    struct config c;
    char buf[ADDR_STRLEN];
    char errmsg[ERRMSG_SIZE];
    const char *argv[] = {NULL};
    cr_assert_eq(parse(&c, errmsg, argv), 0);
    addr_format(&c.api, buf);
    cr_assert_str_eq(buf, "127.0.0.1:7070");
    addr_format(&c.raft, buf);
    cr_assert_str_eq(buf, "127.0.0.1:7071");
    addr_format(&c.gossip, buf);
    cr_assert_str_eq(buf, "127.0.0.1:7072");
    cr_assert_str_eq(c.data_dir, "./kiln-data");
    cr_assert_gt(c.slots, 0);
    cr_assert_eq(c.bootstrap_expect, 0);
}

Test(config, all_flags)
{
    struct config c;
    char errmsg[ERRMSG_SIZE];
    const char *argv[] = {"--name",
                          "n1",
                          "--data-dir=/tmp/x",
                          "--api",
                          "localhost:8000",
                          "--join",
                          "127.0.0.1:1,127.0.0.2:2",
                          "--bootstrap-expect",
                          "3",
                          "--slots",
                          "4",
                          "--tags",
                          "zone=a,disk=ssd",
                          NULL};
    cr_assert_eq(parse(&c, errmsg, argv), 0, "%s", errmsg);
    cr_assert_str_eq(c.name, "n1");
    cr_assert_str_eq(c.data_dir, "/tmp/x");
    cr_assert_str_eq(c.api.host, "127.0.0.1");
    cr_assert_eq(c.api.port, 8000);
    cr_assert_eq(c.n_join, 2);
    cr_assert_eq(c.join[1].port, 2);
    cr_assert_eq(c.bootstrap_expect, 3);
    cr_assert_eq(c.slots, 4);
    cr_assert_eq(c.n_tags, 2);
    cr_assert_str_eq(c.tags[1].key, "disk");
    cr_assert_str_eq(c.tags[1].value, "ssd");
}

Test(config, rejects_bad_input_with_reason)
{
    struct
    {
        const char *argv[4];
        const char *want;
    } cases[] = {
        {{"--bogus", "1", NULL}, "unknown flag"},
        {{"--api", "nohost", NULL}, "--api"},
        {{"--api", "1.2.3.4:99999", NULL}, "bad port"},
        {{"--raft", "example.com:80", NULL}, "IPv4"},
        {{"--slots", "-1", NULL}, "--slots"},
        {{"--bootstrap-expect", "0", NULL}, "--bootstrap-expect"},
        {{"--name", "../etc", NULL}, "--name"},
        {{"--tags", "novalue", NULL}, "KEY=VALUE"},
        {{"--join", NULL}, "needs a value"},
        {{"--api", "127.0.0.1:7071", NULL}, "distinct ports"},
        {{"stray", NULL}, "unexpected argument"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct config c;
        char errmsg[ERRMSG_SIZE] = "";
        cr_assert_eq(parse(&c, errmsg, cases[i].argv), ERR_INVALID,
                     "case %zu accepted", i);
        cr_assert(strstr(errmsg, cases[i].want) != NULL,
                  "case %zu: '%s' lacks '%s'", i, errmsg, cases[i].want);
    }
}

Test(util, parse_u64_bounds)
{
    uint64_t v;
    cr_assert_eq(parse_u64("0", 5, &v), 0);
    cr_assert_eq(parse_u64("5", 5, &v), 0);
    cr_assert_eq(v, 5);
    cr_assert_neq(parse_u64("6", 5, &v), 0);
    cr_assert_neq(parse_u64("9", 5, &v), 0);
    cr_assert_neq(parse_u64("", 5, &v), 0);
    cr_assert_neq(parse_u64("1x", 100, &v), 0);
    cr_assert_eq(parse_u64("18446744073709551615", UINT64_MAX, &v), 0);
    cr_assert_neq(parse_u64("18446744073709551616", UINT64_MAX, &v), 0);
}

Test(util, time_round_trip)
{
    char buf[TIME_STRLEN];
    int64_t ms;
    time_format_ms(1795463433123LL, buf);
    cr_assert_str_eq(buf, "2026-11-23T19:50:33.123Z");
    cr_assert_eq(time_parse_ms(buf, &ms), 0);
    cr_assert_eq(ms, 1795463433123LL);
    cr_assert_eq(time_parse_ms("2026-11-23T19:50:33Z", &ms), 0);
    cr_assert_eq(ms, 1795463433000LL);
    cr_assert_neq(time_parse_ms("2026-13-23T19:50:33Z", &ms), 0);
    cr_assert_neq(time_parse_ms("yesterday", &ms), 0);
}

Test(node, identity_persists_and_guards_name)
{
    char dir[256];
    char name[CONFIG_NAME_MAX + 1];
    char errmsg[ERRMSG_SIZE];
    uint64_t id1, id2;
    th_tmpdir(dir, sizeof dir, "ident");
    cr_assert_eq(node_load_identity(dir, "alpha", name, &id1, errmsg), 0);
    cr_assert_str_eq(name, "alpha");
    cr_assert_neq(id1, 0);
    cr_assert_eq(node_load_identity(dir, "", name, &id2, errmsg), 0);
    cr_assert_str_eq(name, "alpha");
    cr_assert_eq(id1, id2);
    cr_assert_eq(node_load_identity(dir, "beta", name, &id2, errmsg),
                 ERR_CONFLICT);
    cr_assert(strstr(errmsg, "belongs to node 'alpha'") != NULL);
    th_rmrf(dir);
}

Test(node, data_dir_lock_is_exclusive)
{
    char dir[256];
    char errmsg[ERRMSG_SIZE];
    int fd1, fd2;
    th_tmpdir(dir, sizeof dir, "lock");
    cr_assert_eq(node_lock_data_dir(dir, &fd1, errmsg), 0);
    /* flock is per open file description: a second open in this process
     * conflicts just as another process would. */
    cr_assert_eq(node_lock_data_dir(dir, &fd2, errmsg), ERR_INUSE);
    cr_assert(strstr(errmsg, "in use by another kiln agent") != NULL);
    th_rmrf(dir);
}
