/* Agent flag parsing and validation. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"

void config_defaults(struct config *c)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    memset(c, 0, sizeof *c);
    str_copy(c->data_dir, sizeof c->data_dir, "./kiln-data");
    addr_parse("127.0.0.1:7070", &c->api, NULL);
    addr_parse("127.0.0.1:7071", &c->raft, NULL);
    addr_parse("127.0.0.1:7072", &c->gossip, NULL);
    /* CONTRACT.md: slots default to the number of CPUs (docs/sched.md
     * "Slots" on raising it for I/O-bound work). */
    c->slots = ncpu > 0 ? (unsigned)ncpu : 1;
    c->log_level = LOG_INFO;
    c->lease_ms = 3000;
    c->election_ms = 500;
    c->heartbeat_ms = 50;
    c->gossip_interval_ms = 500;
    c->segment_kib = 8192;
    c->snapshot_entries = 4096;
}

int config_valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > CONFIG_NAME_MAX || name[0] == '.' || name[0] == '-') {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == '-')) {
            return 0;
        }
    }
    return 1;
}

int config_parse_tags(const char *s,
                      struct config_tag *tags,
                      unsigned max,
                      unsigned *n,
                      char *errmsg)
{
    char buf[1024];
    char *save = NULL;
    char *tok;
    *n = 0;
    if (!str_copy(buf, sizeof buf, s)) {
        errmsg_printf(errmsg, "--tags is too long");
        return ERR_INVALID;
    }
    for (tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (eq == NULL || eq == tok) {
            errmsg_printf(errmsg, "tag '%.64s' is not KEY=VALUE", tok);
            return ERR_INVALID;
        }
        *eq = '\0';
        if (*n >= max) {
            errmsg_printf(errmsg, "too many tags (at most %u)", max);
            return ERR_INVALID;
        }
        if (!config_valid_name(tok) || strlen(tok) > CONFIG_TAG_KEY_MAX ||
            strlen(eq + 1) > CONFIG_TAG_VALUE_MAX) {
            errmsg_printf(errmsg, "tag '%.32s' has a bad key or value", tok);
            return ERR_INVALID;
        }
        str_copy(tags[*n].key, sizeof tags[*n].key, tok);
        str_copy(tags[*n].value, sizeof tags[*n].value, eq + 1);
        (*n)++;
    }
    return 0;
}

static int addr_same(const struct addr *a, const struct addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

static int parse_uint_flag(const char *flag,
                           const char *v,
                           unsigned lo,
                           unsigned hi,
                           unsigned *out,
                           char *errmsg)
{
    uint64_t x;
    if (parse_u64(v, hi, &x) != 0 || x < lo) {
        errmsg_printf(errmsg, "%s must be an integer in [%u, %u], got '%.32s'",
                      flag, lo, hi, v);
        return ERR_INVALID;
    }
    *out = (unsigned)x;
    return 0;
}

static int parse_join(struct config *c, const char *v, char *errmsg)
{
    char buf[1024];
    char *save = NULL;
    char *tok;
    if (!str_copy(buf, sizeof buf, v)) {
        errmsg_printf(errmsg, "--join is too long");
        return ERR_INVALID;
    }
    for (tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        char why[ERRMSG_SIZE];
        if (c->n_join >= CONFIG_MAX_JOIN) {
            errmsg_printf(errmsg, "--join takes at most %d addresses",
                          CONFIG_MAX_JOIN);
            return ERR_INVALID;
        }
        if (addr_parse(tok, &c->join[c->n_join], why) != 0) {
            errmsg_printf(errmsg, "--join: %s", why);
            return ERR_INVALID;
        }
        c->n_join++;
    }
    if (c->n_join == 0) {
        errmsg_printf(errmsg, "--join needs at least one HOST:PORT");
        return ERR_INVALID;
    }
    return 0;
}

int config_parse_agent(struct config *c, int argc, char **argv, char *errmsg)
{
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i];
        const char *v = NULL;
        char why[ERRMSG_SIZE];
        int rv = 0;

        if (strcmp(flag, "-h") == 0 || strcmp(flag, "--help") == 0) {
            errmsg_printf(errmsg, "help");
            return ERR_INVALID;
        }
        if (strncmp(flag, "--", 2) != 0) {
            errmsg_printf(errmsg, "unexpected argument '%.64s'", flag);
            return ERR_INVALID;
        }
        /* Accept both "--flag value" and "--flag=value". */
        {
            static const char *known[] = {"--name",
                                          "--data-dir",
                                          "--api",
                                          "--raft",
                                          "--gossip",
                                          "--join",
                                          "--bootstrap-expect",
                                          "--slots",
                                          "--tags",
                                          "--log-level",
                                          "--lease-ms",
                                          "--election-ms",
                                          "--heartbeat-ms",
                                          "--gossip-interval-ms",
                                          "--segment-kib",
                                          "--snapshot-entries"};
            size_t flen = strcspn(flag, "=");
            int found = 0;
            for (size_t k = 0; k < ARRAY_SIZE(known); k++) {
                if (strlen(known[k]) == flen &&
                    strncmp(known[k], flag, flen) == 0) {
                    found = 1;
                }
            }
            if (!found) {
                errmsg_printf(errmsg, "unknown flag '%.*s'", (int)flen, flag);
                return ERR_INVALID;
            }
        }
        {
            const char *eq = strchr(flag, '=');
            static char name[64];
            if (eq != NULL) {
                size_t n = (size_t)(eq - flag);
                if (n >= sizeof name) {
                    errmsg_printf(errmsg, "unknown flag '%.64s'", flag);
                    return ERR_INVALID;
                }
                memcpy(name, flag, n);
                name[n] = '\0';
                flag = name;
                v = eq + 1;
            } else if (i + 1 < argc) {
                v = argv[++i];
            } else {
                errmsg_printf(errmsg, "flag %.64s needs a value", flag);
                return ERR_INVALID;
            }
        }

        if (strcmp(flag, "--name") == 0) {
            if (!config_valid_name(v)) {
                errmsg_printf(errmsg,
                              "--name '%.64s' is invalid: use 1-63 of "
                              "[A-Za-z0-9._-], not starting with '.' or '-'",
                              v);
                return ERR_INVALID;
            }
            str_copy(c->name, sizeof c->name, v);
        } else if (strcmp(flag, "--data-dir") == 0) {
            if (*v == '\0' || !str_copy(c->data_dir, sizeof c->data_dir, v)) {
                errmsg_printf(errmsg, "--data-dir is empty or too long");
                return ERR_INVALID;
            }
        } else if (strcmp(flag, "--api") == 0 || strcmp(flag, "--raft") == 0 ||
                   strcmp(flag, "--gossip") == 0) {
            struct addr *a = flag[2] == 'a'   ? &c->api
                             : flag[2] == 'r' ? &c->raft
                                              : &c->gossip;
            if (addr_parse(v, a, why) != 0) {
                errmsg_printf(errmsg, "%s: %s", flag, why);
                return ERR_INVALID;
            }
        } else if (strcmp(flag, "--join") == 0) {
            rv = parse_join(c, v, errmsg);
        } else if (strcmp(flag, "--bootstrap-expect") == 0) {
            rv = parse_uint_flag(flag, v, 1, 64, &c->bootstrap_expect, errmsg);
        } else if (strcmp(flag, "--slots") == 0) {
            rv = parse_uint_flag(flag, v, 0, 4096, &c->slots, errmsg);
        } else if (strcmp(flag, "--tags") == 0) {
            rv =
                config_parse_tags(v, c->tags, CONFIG_MAX_TAGS, &c->n_tags, why);
            if (rv != 0) {
                errmsg_printf(errmsg, "--tags: %s", why);
            }
        } else if (strcmp(flag, "--log-level") == 0) {
            if (log_parse_level(v, &c->log_level) != 0) {
                errmsg_printf(errmsg,
                              "--log-level must be debug|info|warn|error|off");
                return ERR_INVALID;
            }
        } else if (strcmp(flag, "--lease-ms") == 0) {
            rv = parse_uint_flag(flag, v, 300, 600000, &c->lease_ms, errmsg);
        } else if (strcmp(flag, "--election-ms") == 0) {
            rv = parse_uint_flag(flag, v, 50, 60000, &c->election_ms, errmsg);
        } else if (strcmp(flag, "--heartbeat-ms") == 0) {
            rv = parse_uint_flag(flag, v, 5, 10000, &c->heartbeat_ms, errmsg);
        } else if (strcmp(flag, "--gossip-interval-ms") == 0) {
            rv = parse_uint_flag(flag, v, 20, 60000, &c->gossip_interval_ms,
                                 errmsg);
        } else if (strcmp(flag, "--segment-kib") == 0) {
            rv = parse_uint_flag(flag, v, 64, 1048576, &c->segment_kib, errmsg);
        } else if (strcmp(flag, "--snapshot-entries") == 0) {
            rv = parse_uint_flag(flag, v, 64, 1000000, &c->snapshot_entries,
                                 errmsg);
        } else {
            errmsg_printf(errmsg, "unknown flag '%.64s'", flag);
            return ERR_INVALID;
        }
        if (rv != 0) {
            return rv;
        }
    }
    if (c->heartbeat_ms * 5 > c->election_ms) {
        errmsg_printf(errmsg,
                      "--election-ms (%u) must be at least 5x --heartbeat-ms "
                      "(%u)",
                      c->election_ms, c->heartbeat_ms);
        return ERR_INVALID;
    }
    if (addr_same(&c->api, &c->raft) || addr_same(&c->api, &c->gossip) ||
        addr_same(&c->raft, &c->gossip)) {
        errmsg_printf(errmsg, "--api, --raft and --gossip need distinct ports");
        return ERR_INVALID;
    }
    return 0;
}
