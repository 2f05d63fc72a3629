/* Gossip membership: SWIM with Lifeguard over UDP, TCP push-pull
 * anti-entropy (docs/gossip.md). */
#ifndef KILN_GOSSIP_H_
#define KILN_GOSSIP_H_

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "err.h"
#include "util.h"

#define GOSSIP_NAME_MAX 63      /* member name length, without NUL */
#define GOSSIP_MAX_TAGS 16      /* tags per member */
#define GOSSIP_TAG_KEY_MAX 31   /* tag key length, without NUL */
#define GOSSIP_TAG_VALUE_MAX 63 /* tag value length, without NUL */
#define GOSSIP_MAX_MEMBERS 1024 /* member table bound, self included */

/* Bits of gossip_member.meta. */
#define GOSSIP_META_IN_CLUSTER (1u << 0) /* already part of a Raft cluster */
#define GOSSIP_META_DRAINING (1u << 1)   /* draining: claims nothing new */

enum gossip_state { GOSSIP_ALIVE, GOSSIP_SUSPECT, GOSSIP_DEAD, GOSSIP_LEFT };

struct gossip_tag
{
    char key[GOSSIP_TAG_KEY_MAX + 1];
    char value[GOSSIP_TAG_VALUE_MAX + 1];
};

/* A node's load, piggybacked on gossip (DESIGN.md section 5). */
struct gossip_load
{
    uint32_t running;      /* running jobs */
    uint32_t slots;        /* job slots */
    uint32_t queued;       /* claimed, not yet running */
    uint32_t load1_milli;  /* 1-minute load average x 1000 */
    uint64_t mem_free_kib; /* free memory */
};

/* One member as this node sees it. */
struct gossip_member
{
    char name[GOSSIP_NAME_MAX + 1];
    uint64_t id;              /* node id (also its Raft id); never 0 */
    uint64_t incarnation;     /* SWIM incarnation (refutation counter) */
    enum gossip_state state;  /* alive, suspect, dead or left */
    char api[ADDR_STRLEN];    /* "a.b.c.d:port" or "" */
    char raft[ADDR_STRLEN];   /* "a.b.c.d:port" or "" */
    char gossip[ADDR_STRLEN]; /* "a.b.c.d:port" */
    struct gossip_tag tags[GOSSIP_MAX_TAGS];
    unsigned n_tags;
    uint32_t meta;         /* GOSSIP_META_* bits */
    uint64_t meta_version; /* orders meta+load updates within one
                            * incarnation */
    struct gossip_load load;
    uint64_t state_since_ms; /* local monotonic ms of the last state
                              * change (first sighting for new members) */
};

struct gossip_config
{
    char name[GOSSIP_NAME_MAX + 1];
    uint64_t id;      /* non-zero */
    struct addr bind; /* gossip UDP+TCP address */
    char api[ADDR_STRLEN];
    char raft[ADDR_STRLEN];
    char gossip_addr[ADDR_STRLEN]; /* advertised; "" = bind */
    struct gossip_tag tags[GOSSIP_MAX_TAGS];
    unsigned n_tags;
    uint32_t meta; /* initial meta bits */

    /* Timing (docs/gossip.md); gossip_config_defaults() fills them. */
    unsigned probe_interval_ms;    /* SWIM protocol period; 500 */
    unsigned probe_timeout_ms;     /* direct ack wait; 200 */
    unsigned indirect_checks;      /* relays asked on a failed probe; 3 */
    unsigned suspicion_min_ms;     /* min suspicion at N <= 10 (x log10 N
                                    * above); 750 */
    unsigned suspicion_max_mult;   /* max suspicion = this x min; 3 */
    unsigned suspicion_confirm;    /* confirmations to reach min; 2 */
    unsigned retransmit_mult;      /* sends = this x max(2, ceil(log10(N+1)));
                                    * 4 */
    unsigned gossip_interval_ms;   /* broadcast round; 100 */
    unsigned gossip_nodes;         /* peers per broadcast round; 3 */
    unsigned pushpull_interval_ms; /* anti-entropy period; 30000 */
    unsigned awareness_max;        /* Lifeguard health ceiling; 8 */
    unsigned load_interval_ms;     /* min gap between load broadcasts; 250 */
    uint64_t reap_ms;              /* drop dead/left members after; 24 h */
    unsigned tcp_timeout_ms;       /* push-pull connection deadline; 5000 */
    uint32_t pushpull_max_bytes;   /* push-pull frame limit; 2 MiB */
    uint64_t incarnation;          /* start incarnation; 0 = wall seconds */
    uint64_t seed;                 /* PRNG seed; 0 = from time and id */
};

struct gossip_stats
{
    uint64_t udp_in_packets, udp_in_bytes;
    uint64_t udp_out_packets, udp_out_bytes;
    uint64_t tcp_in_bytes, tcp_out_bytes;
    uint64_t pushpull_ok, pushpull_failed;
    uint64_t dropped_malformed; /* undecodable, truncated, oversized */
    uint64_t dropped_version;   /* wrong version */
    uint64_t dropped_filter;    /* drop filter (gossip_set_drop) */
    uint64_t dropped_send;      /* send queue full or send error */
    uint64_t name_conflicts;    /* ALIVE for a name held by another id */
    uint64_t table_full;        /* new members refused: table full */
    uint64_t probes, probes_failed;
    uint64_t suspicions, refutations;
    unsigned health; /* Lifeguard score, 0 = healthy */
};

struct gossip;
struct gossip__state;
struct gossip__conn;

/* Fired on a member's state change, a new member, and a change of its
 * addresses, meta bits or tags (not on load-only updates). old_state equals
 * m->state when the state itself did not change (new member, field update).
 * m is valid only during the callback. Never fired for the local node. */
typedef void (*gossip_change_cb)(struct gossip *g,
                                 const struct gossip_member *m,
                                 enum gossip_state old_state,
                                 void *data);
typedef void (*gossip_close_cb)(struct gossip *g);

/* Caller-allocated; every field is private. */
struct gossip
{
    uv_loop_t *loop;
    struct gossip_config cfg;
    struct gossip__state *st; /* the pure core */
    uv_udp_t udp;
    uv_tcp_t tcp;
    uv_timer_t timer;      /* tick */
    unsigned handles_open; /* handles not yet closed */
    bool started, closing, leaving;
    gossip_change_cb change_cb;
    void *change_data;
    gossip_close_cb close_cb;
    uint64_t leave_deadline_ms;
    struct gossip__conn *conns; /* open push-pull connections */
    unsigned n_conns;
    struct addr seeds[16];
    unsigned n_seeds, seed_next;
    bool joining, join_inflight;
    uint64_t join_next_ms;
    unsigned join_backoff_ms;
    unsigned drop_pct; /* drop filter for received UDP */
    struct prng drop_prng;
    struct gossip_stats glue_stats;
    uint64_t conflicts_logged;
    char rbuf[2048];
};

/* Fill c with defaults (timings above); name, id, bind and addresses are
 * cleared and must be set by the caller. */
void gossip_config_defaults(struct gossip_config *c);

/* Prepare g (no I/O yet). Reads KILN_GOSSIP_DROP_PCT. Errors: ERR_INVALID
 * (bad name, id 0, bad address, tags too large for one UDP packet),
 * ERR_NOMEM; errmsg (ERRMSG_SIZE) says why. On error nothing is allocated. */
int gossip_init(struct gossip *g,
                uv_loop_t *loop,
                const struct gossip_config *cfg,
                char *errmsg);

/* Bind UDP and TCP on cfg->bind and start probing. Errors: ERR_INUSE
 * ("gossip: bind 127.0.0.1:7072: address already in use"), ERR_IO. After
 * an error, gossip_close() must still be called. */
int gossip_start(struct gossip *g, char *errmsg);

/* Join through seeds (gossip addresses): push-pull with them in turn,
 * retried with backoff (200 ms doubling to 5 s) until one answers. Seeds
 * equal to our own address are skipped (a shared --join list may include
 * us); if none is left there is nothing to do. Returns at once; 0, or
 * ERR_INVALID when n == 0. Seeds beyond 16 are ignored. Precondition:
 * gossip_init succeeded. */
int gossip_join(struct gossip *g, const struct addr *seeds, unsigned n);

/* Update the local load / meta bits. Disseminated within about one to two
 * probe intervals (load at most every load_interval_ms). */
void gossip_set_load(struct gossip *g, const struct gossip_load *load);
void gossip_set_meta(struct gossip *g, uint32_t meta);

/* Register the change callback (one; NULL removes it). */
void gossip_on_change(struct gossip *g, gossip_change_cb cb, void *data);

/* Members including self (index 0 is always self). Pointers stay valid
 * until the next return to the loop. */
unsigned gossip_count(const struct gossip *g);
const struct gossip_member *gossip_member_at(const struct gossip *g,
                                             unsigned i);
const struct gossip_member *gossip_find(const struct gossip *g,
                                        const char *name);
const struct gossip_member *gossip_find_id(const struct gossip *g, uint64_t id);

/* "alive", "suspect", "dead", "left" ("?" for anything else). */
const char *gossip_state_name(enum gossip_state s);

void gossip_stats(const struct gossip *g, struct gossip_stats *out);

/* Debug/test drop filter: each received UDP packet is discarded with
 * probability pct/100 (0..100). Also set by KILN_GOSSIP_DROP_PCT. */
void gossip_set_drop(struct gossip *g, unsigned pct);

/* Broadcast that this node leaves (state left), keep gossiping for a
 * bounded time (<= 1 s, earlier once the broadcast was sent enough times),
 * then close everything and call cb. */
void gossip_leave(struct gossip *g, gossip_close_cb cb);

/* Close every handle and connection; cb (may be NULL) runs after the last
 * uv_close callback, when g may be freed. */
void gossip_close(struct gossip *g, gossip_close_cb cb);

#endif /* KILN_GOSSIP_H_ */
