/* Multi-process tests of the agent process itself: start-up errors, data
 * dir lock, clean shutdown. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/harness.h"

TestSuite(agent, .timeout = 60);

static bool lock_written(void *arg)
{
    const struct th_agent *a = arg;
    char path[600];
    FILE *f;
    long pid = 0;
    snprintf(path, sizeof path, "%s/LOCK", a->dir);
    f = fopen(path, "r");
    if (f == NULL) {
        return false;
    }
    if (fscanf(f, "%ld", &pid) != 1) {
        pid = 0;
    }
    fclose(f);
    return pid == (long)a->pid;
}

Test(agent, second_agent_on_same_data_dir_refuses)
{
    char root[256];
    char err[2048];
    struct th_agent a;
    th_tmpdir(root, sizeof root, "lock2");
    th_agent_prepare(&a, root, "n1");
    th_agent_start(&a, NULL);
    cr_assert(th_wait(lock_written, &a, 10000), "first agent never locked");

    {
        char api[32], raft[32], gossip[32];
        uint16_t p[3];
        th_free_ports(p, 3);
        snprintf(api, sizeof api, "127.0.0.1:%u", p[0]);
        snprintf(raft, sizeof raft, "127.0.0.1:%u", p[1]);
        snprintf(gossip, sizeof gossip, "127.0.0.1:%u", p[2]);
        const char *argv[] = {"agent", "--data-dir", a.dir, "--api",
                              api,     "--raft",     raft,  "--gossip",
                              gossip,  NULL};
        int st = th_run_kiln(argv, NULL, 0, err, sizeof err, 10000);
        cr_assert_neq(st, 0, "second agent started");
        cr_assert(strstr(err, "in use by another kiln agent") != NULL,
                  "stderr: %s", err);
        /* one line */
        cr_assert(strchr(err, '\n') == err + strlen(err) - 1, "stderr: %s",
                  err);
    }
    cr_assert_eq(th_agent_stop(&a, 10000), 0, "unclean shutdown");
    th_rmrf(root);
}

Test(agent, bad_flag_exits_2_with_one_line)
{
    char err[1024];
    const char *argv[] = {"agent", "--slots", "many", NULL};
    int st = th_run_kiln(argv, NULL, 0, err, sizeof err, 5000);
    cr_assert_eq(st, 2);
    cr_assert(strstr(err, "--slots") != NULL, "stderr: %s", err);
}

Test(agent, unusable_data_dir_exits_nonzero)
{
    char err[1024];
    const char *argv[] = {"agent", "--data-dir", "/proc/kiln-no-such/x", NULL};
    int st = th_run_kiln(argv, NULL, 0, err, sizeof err, 5000);
    cr_assert_neq(st, 0);
    cr_assert(strstr(err, "data dir") != NULL, "stderr: %s", err);
}

Test(agent, port_in_use_exits_nonzero_with_one_line)
{
    char root[256];
    char err[2048];
    struct th_agent a, b;
    char api[32];
    th_tmpdir(root, sizeof root, "portuse");
    th_agent_prepare(&a, root, "n1");
    th_agent_prepare(&b, root, "n2");
    th_agent_start(&a, NULL);
    cr_assert(th_wait(lock_written, &a, 10000), "first agent never locked");
    {
        /* poll until the first agent serves, so its API port is bound */
        char url[64];
        uint64_t deadline = th_now_ms() + 10000;
        snprintf(url, sizeof url, "http://%s/v1/health", a.api_addr);
        while (th_http("GET", url, NULL, NULL, NULL) != 200 &&
               th_now_ms() < deadline) {
            usleep(20 * 1000);
        }
    }
    snprintf(api, sizeof api, "127.0.0.1:%u", a.api);
    {
        char raft[32], gossip[32];
        snprintf(raft, sizeof raft, "127.0.0.1:%u", b.raft);
        snprintf(gossip, sizeof gossip, "127.0.0.1:%u", b.gossip);
        const char *argv[] = {"agent", "--data-dir", b.dir, "--api",
                              api,     "--raft",     raft,  "--gossip",
                              gossip,  NULL};
        int st = th_run_kiln(argv, NULL, 0, err, sizeof err, 10000);
        cr_assert_neq(st, 0, "second agent started on a used port");
        cr_assert(strstr(err, "address already in use") != NULL, "stderr: %s",
                  err);
        cr_assert(strstr(err, api) != NULL, "stderr does not name %s: %s", api,
                  err);
    }
    cr_assert_eq(th_agent_stop(&a, 10000), 0);
    th_rmrf(root);
}

Test(agent, raft_port_in_use_exits_nonzero)
{
    char root[256];
    char err[4096];
    struct th_agent a, b;
    char raft[32], api[32], gossip[32];
    th_tmpdir(root, sizeof root, "raftuse");
    th_agent_prepare(&a, root, "n1");
    th_agent_prepare(&b, root, "n2");
    th_agent_start(&a, NULL);
    cr_assert(th_wait(lock_written, &a, 10000), "first agent never locked");
    {
        char url[64];
        uint64_t deadline = th_now_ms() + 10000;
        snprintf(url, sizeof url, "http://%s/v1/health", a.api_addr);
        while (th_http("GET", url, NULL, NULL, NULL) != 200 &&
               th_now_ms() < deadline) {
            usleep(20 * 1000);
        }
    }
    snprintf(raft, sizeof raft, "127.0.0.1:%u", a.raft);
    snprintf(api, sizeof api, "127.0.0.1:%u", b.api);
    snprintf(gossip, sizeof gossip, "127.0.0.1:%u", b.gossip);
    {
        const char *argv[] = {"agent", "--data-dir", b.dir, "--api",
                              api,     "--raft",     raft,  "--gossip",
                              gossip,  NULL};
        int st = th_run_kiln(argv, NULL, 0, err, sizeof err, 10000);
        cr_assert_neq(st, 0, "second agent started on a used raft port");
        cr_assert(strstr(err, "address already in use") != NULL, "stderr: %s",
                  err);
    }
    cr_assert_eq(th_agent_stop(&a, 10000), 0);
    th_rmrf(root);
}
