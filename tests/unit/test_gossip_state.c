/* Gossip pure state machine, event by event: probing, suspicion timing,
 * refutation, supersession in the broadcast queue, name conflicts, reaping. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "gossip/gossip_int.h"
#include "util.h"

TestSuite(gossip_state, .timeout = 30);

#define T0 1000000u

struct rig
{
    struct gossip__params p;
    struct gossip__state *st;
    struct gossip_member self, b;
    struct addr b_addr;
    struct gossip__msg msgs[GOSSIP__MAX_MSGS];
    unsigned n;
};

static void member(struct gossip_member *m,
                   const char *name,
                   uint64_t id,
                   unsigned port)
{
    memset(m, 0, sizeof *m);
    strcpy(m->name, name);
    m->id = id;
    m->incarnation = 10;
    snprintf(m->gossip, sizeof m->gossip, "127.0.0.1:%u", port);
}

static size_t packet(const struct gossip__msg *m, unsigned n, uint8_t *out)
{
    uint8_t enc[8][GOSSIP__MAX_RECORD];
    const uint8_t *chunks[8];
    size_t lens[8];
    for (unsigned i = 0; i < n; i++) {
        lens[i] = gossip__msg_encode(&m[i], false, enc[i], sizeof enc[i]);
        cr_assert(lens[i] > 0);
        chunks[i] = enc[i];
    }
    return gossip__packet_build(out, GOSSIP__MAX_UDP, chunks, lens, n);
}

static void deliver(struct rig *r,
                    uint64_t now,
                    const struct gossip__msg *m,
                    unsigned n)
{
    uint8_t buf[GOSSIP__MAX_UDP];
    size_t len = packet(m, n, buf);
    gossip__state_recv(r->st, now, &r->b_addr, buf, len);
}

/* Pop the next UDP output and decode it into r->msgs. */
static bool next_out(struct rig *r, struct addr *to)
{
    struct gossip__out *o = malloc(sizeof *o);
    bool got = false;
    while (gossip__state_pop_out(r->st, o)) {
        if (o->kind != GOSSIP__OUT_UDP) {
            continue;
        }
        cr_assert_eq(gossip__packet_decode(o->buf, o->len, r->msgs,
                                           GOSSIP__MAX_MSGS, &r->n),
                     0);
        if (to != NULL) {
            *to = o->to;
        }
        got = true;
        break;
    }
    free(o);
    return got;
}

static void drain(struct rig *r)
{
    while (next_out(r, NULL)) {
    }
}

static const struct gossip__msg *find_type(struct rig *r, unsigned type)
{
    for (unsigned i = 0; i < r->n; i++) {
        if (r->msgs[i].type == type) {
            return &r->msgs[i];
        }
    }
    return NULL;
}

static void rig_init(struct rig *r)
{
    struct gossip_config c;
    struct gossip__msg m;
    struct gossip__change ch;
    memset(r, 0, sizeof *r);
    gossip_config_defaults(&c);
    gossip__params_from_config(&r->p, &c);
    r->p.reap_ms = 60000;
    member(&r->self, "a", 1, 30001);
    member(&r->b, "b", 2, 30002);
    addr_parse(r->b.gossip, &r->b_addr, NULL);
    r->st = gossip__state_new(&r->p, &r->self, 7, T0);
    cr_assert_not_null(r->st);
    memset(&m, 0, sizeof m);
    m.type = GOSSIP__ALIVE;
    m.member = r->b;
    deliver(r, T0, &m, 1);
    cr_assert_eq(gossip__state_count(r->st), 2);
    cr_assert(gossip__state_pop_change(r->st, &ch));
    cr_assert_eq(ch.id, 2);
    cr_assert_eq(ch.old_state, GOSSIP_ALIVE);
    drain(r);
}

static enum gossip_state b_state(struct rig *r)
{
    return gossip__state_find_id(r->st, 2)->state;
}

Test(gossip_state, unanswered_probe_suspects_then_kills_on_time)
{
    struct rig r;
    struct addr to;
    const struct gossip__msg *ping = NULL;
    uint64_t now = T0, suspect_at = 0, dead_at = 0;
    rig_init(&r);
    /* The first probe starts within one interval (random phase). */
    for (; now <= T0 + r.p.probe_interval_ms; now += 10) {
        gossip__state_tick(r.st, now);
        if (next_out(&r, &to) && (ping = find_type(&r, GOSSIP__PING))) {
            break;
        }
    }
    cr_assert_not_null(ping);
    cr_assert_eq(ping->id, 2);
    cr_assert_eq(ping->from, 1);
    cr_assert_eq(to.port, 30002);
    cr_assert_not_null(find_type(&r, GOSSIP__LOAD), "self summary attached");
    /* Never answered: suspect at the end of the interval, dead S_min
     * (750 ms, k = 0 with two members) later. */
    for (uint64_t t = now; t < now + 3000; t += 10) {
        gossip__state_tick(r.st, t);
        drain(&r);
        if (suspect_at == 0 && b_state(&r) == GOSSIP_SUSPECT) {
            suspect_at = t;
        }
        if (b_state(&r) == GOSSIP_DEAD) {
            dead_at = t;
            break;
        }
    }
    cr_assert_eq(suspect_at, now + r.p.probe_interval_ms);
    cr_assert_eq(dead_at, suspect_at + r.p.suspicion_min_ms);
    cr_assert_eq(gossip__state_find_id(r.st, 2)->incarnation, 10);
    gossip__state_free(r.st);
}

Test(gossip_state, ack_keeps_member_alive)
{
    struct rig r;
    uint64_t now;
    rig_init(&r);
    for (now = T0; now < T0 + 10000; now += 10) {
        const struct gossip__msg *ping;
        gossip__state_tick(r.st, now);
        while (next_out(&r, NULL)) {
            ping = find_type(&r, GOSSIP__PING);
            if (ping != NULL) {
                struct gossip__msg ack;
                memset(&ack, 0, sizeof ack);
                ack.type = GOSSIP__ACK;
                ack.seq = ping->seq;
                ack.id = 2;
                deliver(&r, now + 1, &ack, 1);
            }
        }
        cr_assert_eq(b_state(&r), GOSSIP_ALIVE);
    }
    gossip__state_free(r.st);
}

Test(gossip_state, refutes_suspicion_of_itself)
{
    struct rig r;
    struct gossip__msg m;
    const struct gossip__msg *alive;
    struct gossip__counters c;
    rig_init(&r);
    memset(&m, 0, sizeof m);
    m.type = GOSSIP__SUSPECT;
    m.id = 1;
    m.incarnation = 12; /* someone heard of a newer incarnation */
    m.from = 2;
    deliver(&r, T0 + 5, &m, 1);
    cr_assert_eq(gossip__state_at(r.st, 0)->incarnation, 13);
    cr_assert_eq(gossip__state_at(r.st, 0)->state, GOSSIP_ALIVE);
    gossip__state_counters(r.st, &c);
    cr_assert_eq(c.refutations, 1);
    /* The next gossip round carries ALIVE(self, 13). */
    gossip__state_tick(r.st, T0 + 500);
    cr_assert(next_out(&r, NULL));
    alive = find_type(&r, GOSSIP__ALIVE);
    cr_assert_not_null(alive);
    cr_assert_eq(alive->member.id, 1);
    cr_assert_eq(alive->member.incarnation, 13);
    /* An old suspicion (lower incarnation) is ignored. */
    m.incarnation = 3;
    deliver(&r, T0 + 600, &m, 1);
    cr_assert_eq(gossip__state_at(r.st, 0)->incarnation, 13);
    gossip__state_free(r.st);
}

Test(gossip_state, newer_news_supersedes_older_in_queue)
{
    struct rig r;
    struct gossip__msg m;
    unsigned suspects = 0, deads = 0;
    rig_init(&r);
    memset(&m, 0, sizeof m);
    m.type = GOSSIP__SUSPECT;
    m.id = 2;
    m.incarnation = 10;
    m.from = 3;
    deliver(&r, T0 + 1, &m, 1);
    cr_assert_eq(b_state(&r), GOSSIP_SUSPECT);
    m.type = GOSSIP__DEAD;
    deliver(&r, T0 + 2, &m, 1);
    cr_assert_eq(b_state(&r), GOSSIP_DEAD);
    drain(&r);
    /* Gossip to the (recently) dead b: only the DEAD remains queued. */
    gossip__state_tick(r.st, T0 + 300);
    while (next_out(&r, NULL)) {
        for (unsigned i = 0; i < r.n; i++) {
            suspects += r.msgs[i].type == GOSSIP__SUSPECT && r.msgs[i].id == 2;
            deads += r.msgs[i].type == GOSSIP__DEAD && r.msgs[i].id == 2;
        }
    }
    cr_assert_eq(suspects, 0);
    cr_assert_gt(deads, 0);
    /* b refutes with a higher incarnation through its LOAD summary. */
    memset(&m, 0, sizeof m);
    m.type = GOSSIP__LOAD;
    m.id = 2;
    m.incarnation = 11;
    m.meta_version = 1;
    m.load.running = 4;
    deliver(&r, T0 + 400, &m, 1);
    cr_assert_eq(b_state(&r), GOSSIP_ALIVE);
    cr_assert_eq(gossip__state_find_id(r.st, 2)->load.running, 4);
    gossip__state_free(r.st);
}

Test(gossip_state, name_conflict_and_reaping)
{
    struct rig r;
    struct gossip__msg m;
    struct gossip__counters c;
    rig_init(&r);
    memset(&m, 0, sizeof m);
    m.type = GOSSIP__ALIVE;
    member(&m.member, "b", 99, 30099);
    deliver(&r, T0 + 1, &m, 1);
    cr_assert_eq(gossip__state_find(r.st, "b")->id, 2);
    cr_assert_null(gossip__state_find_id(r.st, 99));
    gossip__state_counters(r.st, &c);
    cr_assert_eq(c.name_conflicts, 1);
    cr_assert_str_eq(c.conflict_name, "b");
    /* b leaves; the name stays held (left) until reaped, then is free. */
    memset(&m, 0, sizeof m);
    m.type = GOSSIP__LEFT;
    m.id = 2;
    m.incarnation = 10;
    deliver(&r, T0 + 2, &m, 1);
    cr_assert_eq(b_state(&r), GOSSIP_LEFT);
    gossip__state_tick(r.st, T0 + 2 + r.p.reap_ms - 10);
    cr_assert_not_null(gossip__state_find_id(r.st, 2));
    gossip__state_tick(r.st, T0 + 2 + r.p.reap_ms);
    cr_assert_null(gossip__state_find_id(r.st, 2));
    cr_assert_eq(gossip__state_count(r.st), 1);
    gossip__state_free(r.st);
}

Test(gossip_state, ping_for_another_id_is_not_acked)
{
    struct rig r;
    struct gossip__msg m;
    rig_init(&r);
    memset(&m, 0, sizeof m);
    m.type = GOSSIP__PING;
    m.seq = 5;
    m.id = 77; /* a previous owner of this address */
    m.from = 2;
    deliver(&r, T0 + 1, &m, 1);
    cr_assert_not(next_out(&r, NULL));
    m.id = 1;
    deliver(&r, T0 + 2, &m, 1);
    cr_assert(next_out(&r, NULL));
    cr_assert_eq(find_type(&r, GOSSIP__ACK)->seq, 5);
    gossip__state_free(r.st);
}
