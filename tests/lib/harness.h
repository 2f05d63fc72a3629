/* Test harness for multi-process tests: temp dirs, free ports, agents as
 * child processes, a small HTTP client and deadline polling. */
#ifndef KILN_TEST_HARNESS_H_
#define KILN_TEST_HARNESS_H_

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

/* A fresh directory under $TMPDIR (or /tmp), removed by th_rmrf. */
void th_tmpdir(char *out, size_t size, const char *tag);
void th_rmrf(const char *path);

/* n consecutive-looking free TCP+UDP ports on 127.0.0.1 (checked by
 * binding). Unique within the process run. */
void th_free_ports(uint16_t *ports, int n);

/* Monotonic milliseconds. */
uint64_t th_now_ms(void);

/* Poll cond(arg) every 20 ms until it returns true or timeout_ms passes.
 * Returns whether cond became true. */
bool th_wait(bool (*cond)(void *arg), void *arg, unsigned timeout_ms);

struct th_agent
{
    char name[64];
    char dir[512];
    uint16_t api, raft, gossip;
    pid_t pid;
    char log_path[600];
    char api_addr[32];
    char gossip_addr[32];
    /* Optional (empty = unused, the default after th_agent_prepare): the
     * IPv4 address the agent binds instead of 127.0.0.1, and the network
     * namespace (a name under /run/netns) it is started in. */
    char host[40];
    char netns[64];
};

/* Prepare an agent record with fresh ports and a data dir under root. */
void th_agent_prepare(struct th_agent *a, const char *root, const char *name);

/* Run the agent inside network namespace `netns` (a name under /run/netns,
 * created by the caller), bound to `host` instead of 127.0.0.1; recomputes
 * api_addr and gossip_addr. Call after th_agent_prepare, before
 * th_agent_start. Either may be NULL (unchanged). */
void th_agent_set_netns(struct th_agent *a,
                        const char *netns,
                        const char *host);

/* Spawn "kiln agent" with the agent's ports/dir and extra flags (NULL
 * terminated). stdout+stderr go to a.log_path. Returns the pid. */
pid_t th_agent_start(struct th_agent *a, const char *const *extra);

/* Run kiln with argv (NULL terminated, without the program name); capture
 * stdout into out (may be NULL) and return the exit status (or 128+sig). */
int th_run_kiln(const char *const *argv,
                char *out,
                size_t out_size,
                char *err,
                size_t err_size,
                unsigned timeout_ms);

/* Signals. th_agent_stop sends SIGTERM and waits for exit, returning the
 * exit status. th_agent_kill sends SIGKILL and reaps. */
int th_agent_stop(struct th_agent *a, unsigned timeout_ms);
void th_agent_kill(struct th_agent *a);
/* Wait for the process to exit by itself; returns exit status or -1. */
int th_agent_wait_exit(struct th_agent *a, unsigned timeout_ms);

/* HTTP. Returns the status code (0 on connection failure). body_out gets a
 * malloc'd body (may be NULL). */
long th_http(const char *method,
             const char *url,
             const char *body,
             const char *const *headers,
             char **body_out);

/* GET url and parse JSON; NULL if not 200 or not JSON. */
json_t *th_get_json(const char *url);

/* Print the agent's log to stderr (for failing tests). */
void th_dump_log(const struct th_agent *a);

#endif /* KILN_TEST_HARNESS_H_ */
