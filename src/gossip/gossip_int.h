/* Gossip internals: the wire codec (gossip_msg.c) and the pure SWIM +
 * Lifeguard state machine (gossip_state.c) used by the libuv glue. */
#ifndef KILN_GOSSIP_INT_H_
#define KILN_GOSSIP_INT_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gossip/gossip.h"
#include "util.h"

/* ------------------------------------------------------------------ */
/* Codec (docs/gossip.md, "Message formats").                          */

#define GOSSIP__VERSION 1       /* first element of every packet/frame */
#define GOSSIP__MAX_UDP 1400    /* largest UDP packet sent or accepted */
#define GOSSIP__MAX_RECORD 1200 /* largest encoded ALIVE message */
#define GOSSIP__MAX_MSGS 64     /* messages in one UDP packet */
#define GOSSIP__FRAME_HDR 4     /* push-pull frame: 4-byte BE length */

enum gossip__type {
    GOSSIP__PING = 1,     /* [1, seq, target_id, from_id] */
    GOSSIP__PING_REQ = 2, /* [2, seq, target_id, target_addr, from_id] */
    GOSSIP__ACK = 3,      /* [3, seq, from_id] */
    GOSSIP__NACK = 4,     /* [4, seq, from_id] */
    GOSSIP__ALIVE = 5,    /* [5, name, id, inc, api, raft, gossip, tags,
                           *  meta, meta_version, load (, state)] */
    GOSSIP__SUSPECT = 6,  /* [6, id, inc, from_id] */
    GOSSIP__DEAD = 7,     /* [7, id, inc, from_id] */
    GOSSIP__LEFT = 8,     /* [8, id, inc] */
    GOSSIP__LOAD = 9,     /* [9, id, inc, meta_version, meta, load] */
    GOSSIP__TYPE_MAX = 9
};

/* One decoded message; which fields matter depends on type (above). */
struct gossip__msg
{
    unsigned type;
    uint32_t seq;            /* PING, PING_REQ, ACK, NACK */
    uint64_t id;             /* subject: ping target, member, or acker */
    uint64_t from;           /* originator (PING, PING_REQ, SUSPECT, DEAD) */
    uint64_t incarnation;    /* SUSPECT, DEAD, LEFT, LOAD */
    char addr[ADDR_STRLEN];  /* PING_REQ: target's gossip address */
    uint64_t meta_version;   /* LOAD */
    uint32_t meta;           /* LOAD */
    struct gossip_load load; /* LOAD */
    struct gossip_member member; /* ALIVE (member.state only from
                                  * push-pull entries) */
};

/* Encode one message (no packet envelope) into buf (cap bytes). Returns
 * the length, or 0 if it does not fit. ALIVE with with_state appends the
 * state field (push-pull entries). */
size_t gossip__msg_encode(const struct gossip__msg *m,
                          bool with_state,
                          uint8_t *buf,
                          size_t cap);

/* Assemble a packet [VERSION, [msg...]] from already encoded messages.
 * Returns the length or 0 if it exceeds cap. */
size_t gossip__packet_build(uint8_t *out,
                            size_t cap,
                            const uint8_t *const *chunks,
                            const size_t *lens,
                            unsigned n);

/* Decode and validate a whole UDP packet into msgs (max entries). Either
 * every message is valid (0, *n set) or the packet is rejected:
 * ERR_MALFORMED (bad msgpack, truncated, trailing bytes, too large, bad
 * field, too many messages) or ERR_VERSION. Nothing in msgs points into
 * buf. */
int gossip__packet_decode(const void *buf,
                          size_t len,
                          struct gossip__msg *msgs,
                          unsigned max,
                          unsigned *n);

/* Push-pull frame body: [VERSION, join, [ALIVE-with-state...]]. */
int gossip__pushpull_encode(const struct gossip_member *const *members,
                            unsigned n,
                            bool join,
                            uint8_t **out,
                            size_t *len);

typedef void (*gossip__member_cb)(const struct gossip_member *m, void *arg);

/* Validate the whole frame body first, then call cb for every entry. Errors
 * as gossip__packet_decode; nothing is reported for a rejected frame. */
int gossip__pushpull_decode(const void *buf,
                            size_t len,
                            bool *join,
                            gossip__member_cb cb,
                            void *arg);

/* Bounded structural check of msgpack bytes: exactly one object spanning
 * len, nesting <= 8, every container count plausible for the bytes left.
 * Guards msgpack-c's up-front allocations. 0 or ERR_MALFORMED. */
int gossip__msgpack_check(const uint8_t *p, size_t len);

/* ------------------------------------------------------------------ */
/* Pure state machine. No I/O, no clock, no global state: every event     */
/* carries now_ms; randomness comes from a PRNG seeded at creation.       */

struct gossip__params
{
    unsigned probe_interval_ms;
    unsigned probe_timeout_ms;
    unsigned indirect_checks;
    unsigned suspicion_min_ms;
    unsigned suspicion_max_mult;
    unsigned suspicion_confirm;
    unsigned retransmit_mult;
    unsigned gossip_interval_ms;
    unsigned gossip_nodes;
    unsigned pushpull_interval_ms;
    unsigned awareness_max;
    unsigned load_interval_ms;
    uint64_t reap_ms;
    unsigned max_members;
};

/* Take the timing fields from a public config. */
void gossip__params_from_config(struct gossip__params *p,
                                const struct gossip_config *c);

enum gossip__out_kind {
    GOSSIP__OUT_UDP,     /* send buf to addr */
    GOSSIP__OUT_PUSHPULL /* open a push-pull exchange with addr */
};

struct gossip__out
{
    enum gossip__out_kind kind;
    struct addr to;
    size_t len;
    uint8_t buf[GOSSIP__MAX_UDP];
};

struct gossip__change
{
    uint64_t id;
    enum gossip_state old_state;
};

struct gossip__counters
{
    uint64_t dropped_malformed, dropped_version, dropped_out;
    uint64_t name_conflicts, table_full;
    uint64_t probes, probes_failed, suspicions, refutations;
    /* The latest name conflict, for the glue to log (the core does no
     * I/O): the name, the refused id and the holder's id. */
    char conflict_name[GOSSIP_NAME_MAX + 1];
    uint64_t conflict_id, conflict_holder;
};

/* Create a core for the local member self (state alive; self->incarnation
 * is the starting incarnation). Returns NULL on allocation failure. */
struct gossip__state *gossip__state_new(const struct gossip__params *p,
                                        const struct gossip_member *self,
                                        uint64_t seed,
                                        uint64_t now_ms);
void gossip__state_free(struct gossip__state *st);

/* Events. */
void gossip__state_recv(struct gossip__state *st,
                        uint64_t now_ms,
                        const struct addr *from,
                        const void *buf,
                        size_t len);
void gossip__state_tick(struct gossip__state *st, uint64_t now_ms);
void gossip__state_set_load(struct gossip__state *st,
                            uint64_t now_ms,
                            const struct gossip_load *load);
void gossip__state_set_meta(struct gossip__state *st,
                            uint64_t now_ms,
                            uint32_t meta);
/* Mark self left and queue the LEFT broadcast. */
void gossip__state_leave(struct gossip__state *st, uint64_t now_ms);
/* True once the LEFT broadcast has been sent retransmit-limit times. */
bool gossip__state_leave_done(const struct gossip__state *st);
/* Ask for a push-pull with addr now (join): queues GOSSIP__OUT_PUSHPULL. */
void gossip__state_request_pushpull(struct gossip__state *st,
                                    const struct addr *to);

/* Push-pull: the local state as a frame body (malloc'd, caller frees), and
 * merging a received body. Merge errors as gossip__pushpull_decode. */
int gossip__state_pushpull_encode(struct gossip__state *st,
                                  bool join,
                                  uint8_t **out,
                                  size_t *len);
int gossip__state_pushpull_merge(struct gossip__state *st,
                                 uint64_t now_ms,
                                 const void *buf,
                                 size_t len,
                                 bool *join);

/* Outputs, drained by the caller after every event. */
bool gossip__state_pop_out(struct gossip__state *st, struct gossip__out *out);
bool gossip__state_pop_change(struct gossip__state *st,
                              struct gossip__change *c);

/* Views. */
unsigned gossip__state_count(const struct gossip__state *st);
const struct gossip_member *gossip__state_at(const struct gossip__state *st,
                                             unsigned i);
const struct gossip_member *gossip__state_find(const struct gossip__state *st,
                                               const char *name);
const struct gossip_member *gossip__state_find_id(
    const struct gossip__state *st,
    uint64_t id);
unsigned gossip__state_health(const struct gossip__state *st);
void gossip__state_counters(const struct gossip__state *st,
                            struct gossip__counters *out);

#endif /* KILN_GOSSIP_INT_H_ */
