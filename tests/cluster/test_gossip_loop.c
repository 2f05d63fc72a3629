/* Gossip glue on a real loop: three struct gossip instances on 127.0.0.1
 * join, see each other, detect a closed member, leave, and close cleanly. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "err.h"
#include "gossip/gossip.h"
#include "lib/harness.h"
#include "util.h"

TestSuite(gossip_loop, .timeout = 60);

#define N 3
/* Realistic 64-bit ids (their msgpack size matters for the byte count). */
#define ID_BASE 0x9e3779b97f4a7000ull

struct fixture
{
    uv_loop_t loop;
    struct gossip g[N];
    uint16_t ports[N];
    bool open[N];
    unsigned closed;
    unsigned changes;
};

struct waiter
{
    struct fixture *f;
    bool (*cond)(struct fixture *f, void *arg);
    void *arg;
    uint64_t deadline;
    bool met;
};

static void poll_cb(uv_timer_t *t)
{
    struct waiter *w = t->data;
    if (w->cond(w->f, w->arg)) {
        w->met = true;
        uv_stop(t->loop);
    } else if (uv_now(t->loop) >= w->deadline) {
        uv_stop(t->loop);
    }
}

/* Run the loop until cond holds or timeout_ms passes. */
static bool run_until(struct fixture *f,
                      bool (*cond)(struct fixture *, void *),
                      void *arg,
                      unsigned timeout_ms)
{
    uv_timer_t t;
    struct waiter w = {f, cond, arg, 0, false};
    uv_update_time(&f->loop);
    w.deadline = uv_now(&f->loop) + timeout_ms;
    uv_timer_init(&f->loop, &t);
    t.data = &w;
    uv_timer_start(&t, poll_cb, 5, 5);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    return w.met;
}

static void change_cb(struct gossip *g,
                      const struct gossip_member *m,
                      enum gossip_state old,
                      void *data)
{
    struct fixture *f = data;
    (void)g;
    (void)m;
    (void)old;
    f->changes++;
}

static void start_one(struct fixture *f, unsigned i)
{
    char errmsg[ERRMSG_SIZE];
    struct gossip_config c;
    gossip_config_defaults(&c);
    snprintf(c.name, sizeof c.name, "loop%u", i);
    c.id = ID_BASE + i;
    strcpy(c.bind.host, "127.0.0.1");
    c.bind.port = f->ports[i];
    snprintf(c.api, sizeof c.api, "127.0.0.1:%u", 1000 + i);
    c.n_tags = 1;
    strcpy(c.tags[0].key, "role");
    strcpy(c.tags[0].value, "test");
    cr_assert_eq(gossip_init(&f->g[i], &f->loop, &c, errmsg), 0, "%s", errmsg);
    cr_assert_eq(gossip_start(&f->g[i], errmsg), 0, "%s", errmsg);
    gossip_on_change(&f->g[i], change_cb, f);
    f->open[i] = true;
}

static void setup(struct fixture *f)
{
    memset(f, 0, sizeof *f);
    cr_assert_eq(uv_loop_init(&f->loop), 0);
    th_free_ports(f->ports, N);
    for (unsigned i = 0; i < N; i++) {
        start_one(f, i);
    }
    for (unsigned i = 1; i < N; i++) {
        /* A shared seed list that includes the joiner itself. */
        struct addr seeds[2] = {f->g[i].cfg.bind, f->g[0].cfg.bind};
        cr_assert_eq(gossip_join(&f->g[i], seeds, 2), 0);
    }
}

static void closed_cb(struct gossip *g)
{
    struct fixture *f = g->change_data;
    f->closed++;
}

static bool all_closed(struct fixture *f, void *arg)
{
    unsigned *want = arg;
    return f->closed >= *want;
}

static void teardown(struct fixture *f)
{
    unsigned want = 0;
    for (unsigned i = 0; i < N; i++) {
        if (f->open[i]) {
            gossip_close(&f->g[i], closed_cb);
            f->open[i] = false;
            want++;
        }
    }
    want += f->closed;
    cr_assert(run_until(f, all_closed, &want, 5000));
    uv_run(&f->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&f->loop), 0, "handles leaked");
}

static bool all_alive(struct fixture *f, void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < N; i++) {
        if (!f->open[i]) {
            continue;
        }
        for (unsigned j = 0; j < N; j++) {
            const struct gossip_member *m;
            char name[16];
            snprintf(name, sizeof name, "loop%u", j);
            m = gossip_find(&f->g[i], name);
            if (m == NULL || m->state != GOSSIP_ALIVE) {
                return false;
            }
        }
    }
    return true;
}

static bool never(struct fixture *f, void *arg)
{
    (void)f;
    (void)arg;
    return false;
}

struct state_want
{
    unsigned subject;
    enum gossip_state state;
};

static bool others_see(struct fixture *f, void *arg)
{
    struct state_want *w = arg;
    for (unsigned i = 0; i < N; i++) {
        const struct gossip_member *m;
        if (i == w->subject || !f->open[i]) {
            continue;
        }
        m = gossip_find_id(&f->g[i], ID_BASE + w->subject);
        if (m == NULL || m->state != w->state) {
            return false;
        }
    }
    return true;
}

Test(gossip_loop, join_detect_close)
{
    struct fixture f;
    struct state_want w = {2, GOSSIP_DEAD};
    struct gossip_stats st;
    uint64_t t0;
    unsigned want;
    const struct gossip_member *m;

    setup(&f);
    cr_assert(run_until(&f, all_alive, NULL, 5000), "no full view in 5 s");
    cr_assert_eq(gossip_count(&f.g[0]), N);
    m = gossip_find(&f.g[1], "loop0");
    cr_assert_str_eq(m->api, "127.0.0.1:1000");
    cr_assert_eq(m->n_tags, 1);
    cr_assert_str_eq(m->tags[0].value, "test");
    cr_assert_eq(gossip_member_at(&f.g[1], 0)->id, ID_BASE + 1, "self first");
    cr_assert_gt(f.changes, 0);

    /* Idle traffic (measured, printed for docs/gossip.md). */
    {
        uint64_t b0 = 0, b1 = 0, p0 = 0, p1 = 0;
        run_until(&f, never, NULL, 3000); /* let join broadcasts drain */
        for (unsigned i = 0; i < N; i++) {
            gossip_stats(&f.g[i], &st);
            b0 += st.udp_out_bytes;
            p0 += st.udp_out_packets;
        }
        run_until(&f, never, NULL, 3000);
        for (unsigned i = 0; i < N; i++) {
            gossip_stats(&f.g[i], &st);
            b1 += st.udp_out_bytes;
            p1 += st.udp_out_packets;
        }
        fprintf(stderr,
                "gossip_loop: idle UDP out per node: %llu B/s, %.1f "
                "packets/s\n",
                (unsigned long long)((b1 - b0) / N / 3),
                (double)(p1 - p0) / N / 3.0);
    }

    /* Load and meta propagate. */
    {
        struct gossip_load l = {.running = 3, .slots = 4};
        gossip_set_load(&f.g[0], &l);
        gossip_set_meta(&f.g[0], GOSSIP_META_IN_CLUSTER);
    }

    /* Close node 2 without leaving: the others must find it dead. */
    want = 1;
    gossip_close(&f.g[2], closed_cb);
    f.open[2] = false;
    uv_update_time(&f.loop);
    t0 = uv_now(&f.loop);
    cr_assert(run_until(&f, others_see, &w, 6000), "not dead within 6 s");
    uv_update_time(&f.loop);
    fprintf(stderr,
            "gossip_loop: closed member dead everywhere after %llu ms\n",
            (unsigned long long)(uv_now(&f.loop) - t0));
    cr_assert_geq(f.closed, want);

    m = gossip_find(&f.g[1], "loop0");
    cr_assert_eq(m->load.running, 3);
    cr_assert_eq(m->meta, GOSSIP_META_IN_CLUSTER);
    gossip_stats(&f.g[0], &st);
    cr_assert_gt(st.udp_in_packets, 0);
    cr_assert_gt(st.udp_out_bytes, 0);
    cr_assert_gt(st.pushpull_ok + f.g[1].glue_stats.pushpull_ok, 0);
    teardown(&f);
}

Test(gossip_loop, leave_is_seen_as_left)
{
    struct fixture f;
    struct state_want w = {1, GOSSIP_LEFT};
    setup(&f);
    cr_assert(run_until(&f, all_alive, NULL, 5000));
    gossip_leave(&f.g[1], closed_cb);
    f.open[1] = false;
    cr_assert(run_until(&f, others_see, &w, 3000), "left not seen in 3 s");
    teardown(&f);
}

Test(gossip_loop, bind_conflict_is_inuse)
{
    struct fixture f;
    struct gossip dup, bad;
    struct gossip_config c;
    char errmsg[ERRMSG_SIZE];
    char want[64];
    setup(&f);
    c = f.g[0].cfg;
    c.id = 0x7777;
    strcpy(c.name, "dup");
    cr_assert_eq(gossip_init(&dup, &f.loop, &c, errmsg), 0);
    cr_assert_eq(gossip_start(&dup, errmsg), ERR_INUSE);
    snprintf(want, sizeof want,
             "gossip: bind 127.0.0.1:%u: address already in use", f.ports[0]);
    cr_assert_str_eq(errmsg, want);
    dup.change_data = &f;
    gossip_close(&dup, closed_cb);
    {
        unsigned one = 1;
        cr_assert(run_until(&f, all_closed, &one, 2000));
        f.closed = 0;
    }
    /* Bad configs are refused before anything is allocated. */
    c.id = 0;
    cr_assert_eq(gossip_init(&bad, &f.loop, &c, errmsg), ERR_INVALID);
    c.id = 1;
    strcpy(c.name, "bad name");
    cr_assert_eq(gossip_init(&bad, &f.loop, &c, errmsg), ERR_INVALID);
    teardown(&f);
}

static bool pair_alive(struct fixture *f, void *arg)
{
    const struct gossip_member *a = gossip_find_id(&f->g[0], ID_BASE + 1);
    const struct gossip_member *b = gossip_find_id(&f->g[1], ID_BASE + 0);
    (void)arg;
    return a != NULL && b != NULL && a->state == GOSSIP_ALIVE &&
           b->state == GOSSIP_ALIVE;
}

Test(gossip_loop, join_retries_until_a_seed_answers)
{
    struct fixture f;
    struct addr seed;
    memset(&f, 0, sizeof f);
    cr_assert_eq(uv_loop_init(&f.loop), 0);
    th_free_ports(f.ports, N);
    start_one(&f, 1);
    strcpy(seed.host, "127.0.0.1");
    seed.port = f.ports[0];
    cr_assert_eq(gossip_join(&f.g[1], &seed, 1), 0);
    /* Nobody listens yet: a few attempts fail. */
    cr_assert_not(run_until(&f, never, NULL, 700));
    cr_assert_gt(f.g[1].glue_stats.pushpull_failed, 0);
    start_one(&f, 0);
    cr_assert(run_until(&f, pair_alive, NULL, 6000), "join never retried");
    teardown(&f);
}

static bool counted(struct fixture *f, void *arg)
{
    struct gossip_stats st, st1;
    uint64_t *want = arg;
    gossip_stats(&f->g[0], &st);
    gossip_stats(&f->g[1], &st1);
    return st.dropped_malformed + st.dropped_version >= *want &&
           st1.dropped_filter > 0;
}

static void tcp_connect_cb(uv_connect_t *req, int status)
{
    static const char junk[] = "\xff\xff\xff\xffgarbage";
    uv_buf_t b = uv_buf_init((char *)junk, sizeof junk - 1);
    (void)status;
    if (status == 0) {
        uv_try_write(req->handle, &b, 1);
    }
}

Test(gossip_loop, hostile_input_is_counted)
{
    struct fixture f;
    uv_udp_t u;
    uv_tcp_t t;
    uv_connect_t creq;
    struct sockaddr_in sa;
    struct prng r;
    uint64_t want = 50;
    setup(&f);
    cr_assert(run_until(&f, all_alive, NULL, 5000));
    uv_ip4_addr("127.0.0.1", f.ports[0], &sa);
    uv_udp_init(&f.loop, &u);
    prng_seed(&r, 42);
    for (unsigned i = 0; i < want; i++) {
        uint8_t junk[300];
        uv_buf_t b;
        size_t l = 1 + prng_below(&r, sizeof junk);
        for (size_t j = 0; j < l; j++) {
            junk[j] = (uint8_t)prng_next(&r);
        }
        junk[0] = 0x92; /* mostly arrays, to get past the first byte */
        b = uv_buf_init((char *)junk, (unsigned)l);
        uv_udp_try_send(&u, &b, 1, (const struct sockaddr *)&sa);
    }
    /* A push-pull frame announcing 4 GiB. */
    uv_tcp_init(&f.loop, &t);
    uv_tcp_connect(&creq, &t, (const struct sockaddr *)&sa, tcp_connect_cb);
    gossip_set_drop(&f.g[1], 100);
    cr_assert(run_until(&f, counted, &want, 3000), "junk not counted");
    gossip_set_drop(&f.g[1], 0);
    uv_close((uv_handle_t *)&u, NULL);
    uv_close((uv_handle_t *)&t, NULL);
    cr_assert(all_alive(&f, NULL) || run_until(&f, all_alive, NULL, 5000));
    teardown(&f);
}
