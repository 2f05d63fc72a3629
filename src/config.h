/* The agent's configuration: CONTRACT.md flags, defaults and validation. */
#ifndef KILN_CONFIG_H_
#define KILN_CONFIG_H_

#include <limits.h>
#include <stdint.h>

#include "log.h"
#include "util.h"

#define CONFIG_NAME_MAX 63
#define CONFIG_MAX_JOIN 16
#define CONFIG_MAX_TAGS 16
#define CONFIG_TAG_KEY_MAX 31
#define CONFIG_TAG_VALUE_MAX 63

struct config_tag
{
    char key[CONFIG_TAG_KEY_MAX + 1];
    char value[CONFIG_TAG_VALUE_MAX + 1];
};

struct config
{
    char name[CONFIG_NAME_MAX + 1]; /* empty: hostname or the stored one */
    char data_dir[PATH_MAX];
    struct addr api;
    struct addr raft;
    struct addr gossip;
    struct addr join[CONFIG_MAX_JOIN];
    unsigned n_join;
    unsigned bootstrap_expect; /* 0: single node unless --join */
    unsigned slots;
    struct config_tag tags[CONFIG_MAX_TAGS];
    unsigned n_tags;
    enum log_level log_level;

    /* Tuning (hidden flags, documented in docs/operations.md). */
    unsigned lease_ms;           /* claim lease; default 3000 */
    unsigned election_ms;        /* raft election timeout; default 1000 */
    unsigned heartbeat_ms;       /* raft heartbeat; default 100 */
    unsigned gossip_interval_ms; /* SWIM probe interval; default 500 */
    unsigned segment_kib;        /* raft open-segment size; default 8192 */
    unsigned snapshot_entries;   /* raft snapshot threshold; default 4096 */
};

/* Fill defaults (CONTRACT.md). */
void config_defaults(struct config *c);

/* Parse "agent" flags (argv[0] is the first flag). Returns 0, or ERR_INVALID
 * with a one-line reason in errmsg (ERRMSG_SIZE bytes). */
int config_parse_agent(struct config *c, int argc, char **argv, char *errmsg);

/* Validate a node or pipeline name: [A-Za-z0-9._-], 1..63 chars, not
 * starting with '.' or '-'. */
int config_valid_name(const char *name);

/* Parse "K=V[,K=V...]" into tags; used by --tags. */
int config_parse_tags(const char *s,
                      struct config_tag *tags,
                      unsigned max,
                      unsigned *n,
                      char *errmsg);

#endif /* KILN_CONFIG_H_ */
