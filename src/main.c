/* Entry point: "kiln agent" runs a node; every other verb is a client
 * command talking HTTP to a node (src/cli.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cli.h"
#include "config.h"
#include "err.h"
#include "exec/exec.h"
#include "log.h"
#include "node.h"

static const char agent_usage[] =
    "usage: kiln agent [--name NAME] [--data-dir DIR]\n"
    "                  [--api HOST:PORT] [--raft HOST:PORT] "
    "[--gossip HOST:PORT]\n"
    "                  [--join HOST:PORT[,HOST:PORT...]] "
    "[--bootstrap-expect N]\n"
    "                  [--slots N] [--tags KEY=VALUE[,KEY=VALUE...]]\n"
    "                  [--log-level debug|info|warn|error|off]\n";

static void node_closed_cb(struct node *n)
{
    UNUSED(n);
}

static int run_agent(int argc, char **argv)
{
    struct config cfg;
    char errmsg[ERRMSG_SIZE];
    uv_loop_t loop;
    struct node *n;
    int rv;
    int status = 0;

    config_defaults(&cfg);
    rv = config_parse_agent(&cfg, argc, argv, errmsg);
    if (rv != 0) {
        if (strcmp(errmsg, "help") == 0) {
            fputs(agent_usage, stdout);
            return 0;
        }
        fprintf(stderr, "kiln agent: %s\n", errmsg);
        return 2;
    }
    log_set_level(cfg.log_level);

    n = calloc(1, sizeof *n);
    if (n == NULL) {
        fprintf(stderr, "kiln agent: out of memory\n");
        return 1;
    }
    uv_loop_init(&loop);
    rv = node_init(n, &loop, &cfg);
    if (rv != 0) {
        fprintf(stderr, "kiln agent: %s\n", n->errmsg);
        uv_loop_close(&loop);
        free(n);
        return 1;
    }
    rv = node_start(n);
    if (rv != 0) {
        fprintf(stderr, "kiln agent: %s\n", n->errmsg);
        status = 1;
        node_close(n, node_closed_cb);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (status == 0) {
        status = n->exit_status;
    }
    rv = uv_loop_close(&loop);
    if (rv != 0) {
        /* A handle leaked: name it so the bug can be found. */
        fprintf(stderr, "kiln agent: loop close: %s\n", uv_strerror(rv));
        uv_print_all_handles(&loop, stderr);
        status = status != 0 ? status : 1;
    }
    free(n);
    return status;
}

int main(int argc, char **argv)
{
    /* STACK.md pitfall 2: a write to a dead raft peer must not kill us. */
    signal(SIGPIPE, SIG_IGN);

    if (argc >= 2 && strcmp(argv[1], "exec-helper") == 0) {
        return exec_helper_main(argc - 2, argv + 2);
    }
    if (argc >= 2 && strcmp(argv[1], "agent") == 0) {
        return run_agent(argc - 2, argv + 2);
    }
    return cli_main(argc, argv);
}
