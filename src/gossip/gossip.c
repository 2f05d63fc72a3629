/* libuv glue of the gossip layer: UDP socket, TCP push-pull listener and
 * client, tick timer; all protocol logic lives in gossip_state.c. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "gossip/gossip.h"
#include "gossip/gossip_int.h"
#include "log.h"

#define TICK_MS 20
#define MAX_CONNS 16
#define JOIN_BACKOFF_MIN_MS 200
#define JOIN_BACKOFF_MAX_MS 5000
#define LEAVE_MAX_MS 1000

struct gossip__conn
{
    struct gossip *g;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_write_t write;
    struct gossip__conn *next;
    struct addr peer;
    bool client, join, writing, done, ok;
    unsigned open; /* handles not yet closed */
    uint8_t *rbuf; /* frame being received (header included) */
    size_t rlen, rcap;
    uint8_t *wbuf; /* frame being sent */
};

static void flush(struct gossip *g);

static uint64_t now_ms(const struct gossip *g)
{
    return uv_now(g->loop);
}

/* ------------------------------------------------------------------ */
/* Config. */

void gossip_config_defaults(struct gossip_config *c)
{
    memset(c, 0, sizeof *c);
    c->probe_interval_ms = 500;
    c->probe_timeout_ms = 200;
    c->indirect_checks = 3;
    c->suspicion_min_ms = 750;
    c->suspicion_max_mult = 3;
    c->suspicion_confirm = 2;
    c->retransmit_mult = 4;
    c->gossip_interval_ms = 100;
    c->gossip_nodes = 3;
    c->pushpull_interval_ms = 30000;
    c->awareness_max = 8;
    c->load_interval_ms = 250;
    c->reap_ms = 24ull * 3600 * 1000;
    c->tcp_timeout_ms = 5000;
    c->pushpull_max_bytes = 2u << 20;
}

static bool printable(const char *s, size_t min, size_t max)
{
    size_t n = strlen(s);
    if (n < min || n > max) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

static int check_addr(const char *s, bool allow_empty)
{
    struct addr a;
    if (s[0] == '\0') {
        return allow_empty ? 0 : ERR_INVALID;
    }
    return addr_parse(s, &a, NULL);
}

static int validate(const struct gossip_config *c,
                    struct gossip_member *self,
                    char *errmsg)
{
    struct gossip__msg m;
    uint8_t tmp[GOSSIP__MAX_RECORD + 1024];

    if (c->name[sizeof c->name - 1] != '\0' ||
        !printable(c->name, 1, GOSSIP_NAME_MAX)) {
        errmsg_printf(errmsg, "gossip: bad node name");
        return ERR_INVALID;
    }
    if (c->id == 0) {
        errmsg_printf(errmsg, "gossip: node id must not be 0");
        return ERR_INVALID;
    }
    if (c->probe_interval_ms == 0 || c->probe_timeout_ms == 0 ||
        c->probe_timeout_ms >= c->probe_interval_ms ||
        c->gossip_interval_ms == 0 || c->pushpull_interval_ms == 0 ||
        c->suspicion_min_ms == 0 || c->suspicion_max_mult == 0 ||
        c->retransmit_mult == 0 || c->awareness_max == 0 ||
        c->n_tags > GOSSIP_MAX_TAGS) {
        errmsg_printf(errmsg, "gossip: bad timing parameters");
        return ERR_INVALID;
    }
    memset(self, 0, sizeof *self);
    str_copy(self->name, sizeof self->name, c->name);
    self->id = c->id;
    if (c->gossip_addr[0] != '\0') {
        str_copy(self->gossip, sizeof self->gossip, c->gossip_addr);
    } else {
        addr_format(&c->bind, self->gossip);
    }
    if (check_addr(self->gossip, false) != 0 || check_addr(c->api, true) ||
        check_addr(c->raft, true) != 0) {
        errmsg_printf(errmsg, "gossip: bad advertised address");
        return ERR_INVALID;
    }
    str_copy(self->api, sizeof self->api, c->api);
    str_copy(self->raft, sizeof self->raft, c->raft);
    for (unsigned i = 0; i < c->n_tags; i++) {
        if (!printable(c->tags[i].key, 1, GOSSIP_TAG_KEY_MAX) ||
            strlen(c->tags[i].value) > GOSSIP_TAG_VALUE_MAX) {
            errmsg_printf(errmsg, "gossip: bad tag %u", i);
            return ERR_INVALID;
        }
        self->tags[i] = c->tags[i];
    }
    self->n_tags = c->n_tags;
    self->meta = c->meta;
    self->incarnation = c->incarnation != 0 ? c->incarnation
                                            : (uint64_t)(time_wall_ms() / 1000);
    memset(&m, 0, sizeof m);
    m.type = GOSSIP__ALIVE;
    m.member = *self;
    m.member.meta_version = UINT64_MAX;
    m.member.load.mem_free_kib = UINT64_MAX;
    m.member.load.running = UINT32_MAX;
    m.member.load.slots = UINT32_MAX;
    m.member.load.queued = UINT32_MAX;
    m.member.load.load1_milli = UINT32_MAX;
    if (gossip__msg_encode(&m, true, tmp, sizeof tmp) > GOSSIP__MAX_RECORD) {
        errmsg_printf(errmsg,
                      "gossip: name, addresses and tags exceed %d bytes",
                      GOSSIP__MAX_RECORD);
        return ERR_INVALID;
    }
    return 0;
}

int gossip_init(struct gossip *g,
                uv_loop_t *loop,
                const struct gossip_config *cfg,
                char *errmsg)
{
    struct gossip_member self;
    struct gossip__params p;
    const char *env;
    uint64_t seed;
    int rv;

    memset(g, 0, sizeof *g);
    rv = validate(cfg, &self, errmsg);
    if (rv != 0) {
        return rv;
    }
    g->loop = loop;
    g->cfg = *cfg;
    gossip__params_from_config(&p, cfg);
    seed = cfg->seed != 0 ? cfg->seed
                          : time_mono_ms() ^ (uint64_t)time_wall_ms() ^
                                hash64(&cfg->id, sizeof cfg->id, 7);
    g->st = gossip__state_new(&p, &self, seed, uv_now(loop));
    if (g->st == NULL) {
        errmsg_printf(errmsg, "gossip: out of memory");
        return ERR_NOMEM;
    }
    prng_seed(&g->drop_prng, seed ^ 0x5bd1e995u);
    env = getenv("KILN_GOSSIP_DROP_PCT");
    if (env != NULL && env[0] != '\0') {
        uint64_t pct;
        if (parse_u64(env, 100, &pct) == 0) {
            g->drop_pct = (unsigned)pct;
            LOGW("gossip", "drop filter: %u%% of received packets",
                 g->drop_pct);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Change notifications and outputs. */

static void fire_changes(struct gossip *g)
{
    struct gossip__change c;
    struct gossip__counters k;
    gossip__state_counters(g->st, &k);
    if (k.name_conflicts != g->conflicts_logged) {
        g->conflicts_logged = k.name_conflicts;
        LOGW("gossip",
             "name conflict: '%s' claimed by id %016llx but held by "
             "%016llx; ignored (docs/gossip.md)",
             k.conflict_name, (unsigned long long)k.conflict_id,
             (unsigned long long)k.conflict_holder);
    }
    while (gossip__state_pop_change(g->st, &c)) {
        const struct gossip_member *m = gossip__state_find_id(g->st, c.id);
        if (m == NULL) {
            continue;
        }
        if (m->state != c.old_state) {
            LOGI("gossip", "%s (%s) %s -> %s", m->name, m->gossip,
                 gossip_state_name(c.old_state), gossip_state_name(m->state));
        }
        if (g->change_cb != NULL && !g->closing) {
            g->change_cb(g, m, c.old_state, g->change_data);
        }
    }
}

static void to_sockaddr(const struct addr *a, struct sockaddr_in *sa)
{
    uv_ip4_addr(a->host, a->port, sa);
}

static void send_udp(struct gossip *g, const struct gossip__out *o)
{
    struct sockaddr_in sa;
    uv_buf_t b = uv_buf_init((char *)o->buf, (unsigned)o->len);
    int rv;
    to_sockaddr(&o->to, &sa);
    rv = uv_udp_try_send(&g->udp, &b, 1, (const struct sockaddr *)&sa);
    if (rv < 0) {
        g->glue_stats.dropped_send++;
        return;
    }
    g->glue_stats.udp_out_packets++;
    g->glue_stats.udp_out_bytes += o->len;
}

/* ------------------------------------------------------------------ */
/* TCP push-pull connections. */

static void conn_closed_cb(uv_handle_t *h);
static void maybe_finish_close(struct gossip *g);

static void conn_close(struct gossip__conn *c)
{
    if (c->done) {
        return;
    }
    c->done = true;
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
    uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
}

static void join_result(struct gossip *g, bool ok)
{
    g->join_inflight = false;
    if (ok) {
        g->joining = false;
        return;
    }
    g->join_next_ms = now_ms(g) + g->join_backoff_ms;
    g->join_backoff_ms *= 2;
    if (g->join_backoff_ms > JOIN_BACKOFF_MAX_MS) {
        g->join_backoff_ms = JOIN_BACKOFF_MAX_MS;
    }
}

static void conn_finish(struct gossip__conn *c, bool ok)
{
    struct gossip *g = c->g;
    if (c->done) {
        return;
    }
    c->ok = ok;
    if (c->client) {
        if (ok) {
            g->glue_stats.pushpull_ok++;
        } else {
            g->glue_stats.pushpull_failed++;
        }
        if (c->join) {
            char a[ADDR_STRLEN];
            addr_format(&c->peer, a);
            if (ok) {
                LOGI("gossip", "joined through %s", a);
            } else {
                LOGD("gossip", "join through %s failed", a);
            }
            join_result(g, ok);
        }
    }
    conn_close(c);
}

static void conn_closed_cb(uv_handle_t *h)
{
    struct gossip__conn *c = h->data;
    struct gossip *g = c->g;
    struct gossip__conn **pp;
    if (--c->open > 0) {
        return;
    }
    for (pp = &g->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    g->n_conns--;
    free(c->rbuf);
    free(c->wbuf);
    free(c);
    maybe_finish_close(g);
}

static void conn_timeout_cb(uv_timer_t *t)
{
    struct gossip__conn *c = t->data;
    conn_finish(c, false);
}

static struct gossip__conn *conn_new(struct gossip *g)
{
    struct gossip__conn *c;
    if (g->n_conns >= MAX_CONNS || g->closing) {
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->g = g;
    if (uv_tcp_init(g->loop, &c->tcp) != 0) {
        free(c);
        return NULL;
    }
    uv_timer_init(g->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open = 2;
    c->next = g->conns;
    g->conns = c;
    g->n_conns++;
    uv_timer_start(&c->timer, conn_timeout_cb, g->cfg.tcp_timeout_ms, 0);
    return c;
}

static void conn_write_cb(uv_write_t *w, int status)
{
    struct gossip__conn *c = w->data;
    c->writing = false;
    if (status != 0) {
        conn_finish(c, false);
        return;
    }
    if (!c->client) {
        conn_finish(c, true); /* reply sent: done */
    }
}

/* Send our state as one frame. */
static int conn_send_state(struct gossip__conn *c)
{
    uint8_t *body;
    size_t len;
    uv_buf_t b;
    if (gossip__state_pushpull_encode(c->g->st, c->join, &body, &len) != 0) {
        return ERR_NOMEM;
    }
    c->wbuf = malloc(len + GOSSIP__FRAME_HDR);
    if (c->wbuf == NULL) {
        free(body);
        return ERR_NOMEM;
    }
    c->wbuf[0] = (uint8_t)(len >> 24);
    c->wbuf[1] = (uint8_t)(len >> 16);
    c->wbuf[2] = (uint8_t)(len >> 8);
    c->wbuf[3] = (uint8_t)len;
    memcpy(c->wbuf + GOSSIP__FRAME_HDR, body, len);
    free(body);
    b = uv_buf_init((char *)c->wbuf, (unsigned)(len + GOSSIP__FRAME_HDR));
    c->write.data = c;
    if (uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, conn_write_cb) !=
        0) {
        return ERR_IO;
    }
    c->writing = true;
    c->g->glue_stats.tcp_out_bytes += len + GOSSIP__FRAME_HDR;
    return 0;
}

static void conn_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct gossip__conn *c = h->data;
    size_t want = 64 * 1024;
    (void)hint;
    if (c->rcap - c->rlen < want) {
        size_t ncap = c->rlen + want;
        uint8_t *n = realloc(c->rbuf, ncap);
        if (n == NULL) {
            buf->base = NULL;
            buf->len = 0;
            return;
        }
        c->rbuf = n;
        c->rcap = ncap;
    }
    buf->base = (char *)c->rbuf + c->rlen;
    buf->len = c->rcap - c->rlen;
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct gossip__conn *c = s->data;
    struct gossip *g = c->g;
    uint32_t flen;
    bool join = false;
    int rv;
    (void)buf;

    if (c->done) {
        return;
    }
    if (nread < 0) {
        conn_finish(c, false);
        return;
    }
    c->rlen += (size_t)nread;
    g->glue_stats.tcp_in_bytes += (uint64_t)nread;
    if (c->rlen < GOSSIP__FRAME_HDR) {
        return;
    }
    flen = ((uint32_t)c->rbuf[0] << 24) | ((uint32_t)c->rbuf[1] << 16) |
           ((uint32_t)c->rbuf[2] << 8) | c->rbuf[3];
    if (flen == 0 || flen > g->cfg.pushpull_max_bytes) {
        g->glue_stats.dropped_malformed++;
        conn_finish(c, false);
        return;
    }
    if (c->rlen < GOSSIP__FRAME_HDR + (size_t)flen) {
        return;
    }
    if (c->rlen > GOSSIP__FRAME_HDR + (size_t)flen) {
        g->glue_stats.dropped_malformed++;
        conn_finish(c, false);
        return;
    }
    uv_read_stop(s);
    rv = gossip__state_pushpull_merge(g->st, now_ms(g),
                                      c->rbuf + GOSSIP__FRAME_HDR, flen, &join);
    if (rv != 0) {
        conn_finish(c, false);
        flush(g);
        return;
    }
    if (c->client) {
        conn_finish(c, true);
    } else {
        c->join = join;
        if (conn_send_state(c) != 0) {
            conn_finish(c, false);
        }
    }
    flush(g);
}

static void conn_connect_cb(uv_connect_t *req, int status)
{
    struct gossip__conn *c = req->data;
    if (c->done) {
        return;
    }
    if (status != 0 || conn_send_state(c) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb) !=
            0) {
        conn_finish(c, false);
    }
}

static bool pushpull_start(struct gossip *g, const struct addr *to, bool join)
{
    struct sockaddr_in sa;
    struct gossip__conn *c = conn_new(g);
    if (c == NULL) {
        return false;
    }
    c->client = true;
    c->join = join;
    c->peer = *to;
    c->connect.data = c;
    to_sockaddr(to, &sa);
    if (uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&sa,
                       conn_connect_cb) != 0) {
        c->client = false; /* no stats / join accounting twice */
        conn_close(c);
        return false;
    }
    return true;
}

static void free_handle_cb(uv_handle_t *h)
{
    free(h);
}

static void listen_cb(uv_stream_t *server, int status)
{
    struct gossip *g = server->data;
    struct gossip__conn *c;
    if (status != 0) {
        return;
    }
    c = conn_new(g);
    if (c == NULL) {
        /* Accept and drop, so the backlog does not fill. */
        uv_tcp_t *t = malloc(sizeof *t);
        if (t != NULL && uv_tcp_init(g->loop, t) == 0) {
            (void)uv_accept(server, (uv_stream_t *)t);
            uv_close((uv_handle_t *)t, free_handle_cb);
        } else {
            free(t);
        }
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb) !=
            0) {
        conn_finish(c, false);
    }
}

/* Send everything the core queued and report its changes. */
static void flush(struct gossip *g)
{
    struct gossip__out o;
    while (gossip__state_pop_out(g->st, &o)) {
        if (g->closing) {
            continue;
        }
        if (o.kind == GOSSIP__OUT_UDP) {
            send_udp(g, &o);
        } else {
            pushpull_start(g, &o.to, false);
        }
    }
    fire_changes(g);
}

/* ------------------------------------------------------------------ */
/* UDP and timer. */

static void udp_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct gossip *g = h->data;
    (void)hint;
    buf->base = g->rbuf;
    buf->len = sizeof g->rbuf;
}

static void udp_recv_cb(uv_udp_t *h,
                        ssize_t nread,
                        const uv_buf_t *buf,
                        const struct sockaddr *sa,
                        unsigned flags)
{
    struct gossip *g = h->data;
    const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
    struct addr from;

    if (nread <= 0 || sa == NULL || g->closing) {
        return;
    }
    g->glue_stats.udp_in_packets++;
    g->glue_stats.udp_in_bytes += (uint64_t)nread;
    if ((flags & UV_UDP_PARTIAL) != 0 || (size_t)nread > GOSSIP__MAX_UDP ||
        sa->sa_family != AF_INET) {
        g->glue_stats.dropped_malformed++;
        return;
    }
    if (g->drop_pct > 0 && prng_below(&g->drop_prng, 100) < g->drop_pct) {
        g->glue_stats.dropped_filter++;
        return;
    }
    inet_ntop(AF_INET, &sin->sin_addr, from.host, sizeof from.host);
    from.port = ntohs(sin->sin_port);
    gossip__state_recv(g->st, now_ms(g), &from, buf->base, (size_t)nread);
    flush(g);
}

static void tick_cb(uv_timer_t *t)
{
    struct gossip *g = t->data;
    uint64_t now = now_ms(g);
    if (g->closing) {
        return;
    }
    if (g->joining && !g->join_inflight && now >= g->join_next_ms &&
        g->n_seeds > 0) {
        const struct addr *s = &g->seeds[g->seed_next++ % g->n_seeds];
        if (pushpull_start(g, s, true)) {
            g->join_inflight = true;
        } else {
            join_result(g, false);
        }
    }
    gossip__state_tick(g->st, now);
    flush(g);
    if (g->leaving &&
        (gossip__state_leave_done(g->st) || now >= g->leave_deadline_ms)) {
        g->leaving = false;
        gossip_close(g, g->close_cb);
    }
}

static void handle_closed_cb(uv_handle_t *h)
{
    struct gossip *g = h->data;
    g->handles_open--;
    maybe_finish_close(g);
}

static void maybe_finish_close(struct gossip *g)
{
    gossip_close_cb cb;
    if (!g->closing || g->handles_open > 0 || g->n_conns > 0) {
        return;
    }
    gossip__state_free(g->st);
    g->st = NULL;
    cb = g->close_cb;
    g->close_cb = NULL;
    if (cb != NULL) {
        cb(g);
    }
}

int gossip_start(struct gossip *g, char *errmsg)
{
    struct sockaddr_in sa;
    char a[ADDR_STRLEN];
    int rv;

    addr_format(&g->cfg.bind, a);
    to_sockaddr(&g->cfg.bind, &sa);
    uv_udp_init(g->loop, &g->udp);
    g->udp.data = g;
    g->handles_open++;
    uv_tcp_init(g->loop, &g->tcp);
    g->tcp.data = g;
    g->handles_open++;
    uv_timer_init(g->loop, &g->timer);
    g->timer.data = g;
    g->handles_open++;

    rv = uv_udp_bind(&g->udp, (const struct sockaddr *)&sa, 0);
    if (rv == 0) {
        rv = uv_tcp_bind(&g->tcp, (const struct sockaddr *)&sa, 0);
    }
    if (rv == 0) {
        rv = uv_listen((uv_stream_t *)&g->tcp, 64, listen_cb);
    }
    if (rv != 0) {
        errmsg_printf(
            errmsg, "gossip: bind %s: %s", a,
            rv == UV_EADDRINUSE ? "address already in use" : uv_strerror(rv));
        return rv == UV_EADDRINUSE ? ERR_INUSE : ERR_IO;
    }
    rv = uv_udp_recv_start(&g->udp, udp_alloc_cb, udp_recv_cb);
    if (rv != 0) {
        errmsg_printf(errmsg, "gossip: udp %s: %s", a, uv_strerror(rv));
        return ERR_IO;
    }
    uv_timer_start(&g->timer, tick_cb, TICK_MS, TICK_MS);
    g->started = true;
    LOGI("gossip", "listening on %s (udp+tcp) as %s", a, g->cfg.name);
    return 0;
}

static bool same_addr(const struct addr *a, const struct addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

int gossip_join(struct gossip *g, const struct addr *seeds, unsigned n)
{
    struct addr adv;
    if (n == 0 || g->st == NULL || g->closing) {
        return ERR_INVALID;
    }
    if (addr_parse(gossip__state_at(g->st, 0)->gossip, &adv, NULL) != 0) {
        adv = g->cfg.bind;
    }
    g->n_seeds = 0;
    for (unsigned i = 0; i < n && g->n_seeds < ARRAY_SIZE(g->seeds); i++) {
        /* Joining through ourselves would "succeed" and join nothing. */
        if (same_addr(&seeds[i], &g->cfg.bind) || same_addr(&seeds[i], &adv)) {
            continue;
        }
        g->seeds[g->n_seeds++] = seeds[i];
    }
    g->seed_next = 0;
    g->joining = g->n_seeds > 0;
    g->join_next_ms = 0;
    g->join_backoff_ms = JOIN_BACKOFF_MIN_MS;
    return 0;
}

void gossip_set_load(struct gossip *g, const struct gossip_load *load)
{
    if (g->st != NULL) {
        gossip__state_set_load(g->st, now_ms(g), load);
    }
}

void gossip_set_meta(struct gossip *g, uint32_t meta)
{
    if (g->st != NULL) {
        gossip__state_set_meta(g->st, now_ms(g), meta);
    }
}

void gossip_on_change(struct gossip *g, gossip_change_cb cb, void *data)
{
    g->change_cb = cb;
    g->change_data = data;
}

unsigned gossip_count(const struct gossip *g)
{
    return g->st == NULL ? 0 : gossip__state_count(g->st);
}

const struct gossip_member *gossip_member_at(const struct gossip *g, unsigned i)
{
    return g->st == NULL ? NULL : gossip__state_at(g->st, i);
}

const struct gossip_member *gossip_find(const struct gossip *g,
                                        const char *name)
{
    return g->st == NULL ? NULL : gossip__state_find(g->st, name);
}

const struct gossip_member *gossip_find_id(const struct gossip *g, uint64_t id)
{
    return g->st == NULL ? NULL : gossip__state_find_id(g->st, id);
}

const char *gossip_state_name(enum gossip_state s)
{
    switch (s) {
        case GOSSIP_ALIVE:
            return "alive";
        case GOSSIP_SUSPECT:
            return "suspect";
        case GOSSIP_DEAD:
            return "dead";
        case GOSSIP_LEFT:
            return "left";
    }
    return "?";
}

void gossip_stats(const struct gossip *g, struct gossip_stats *out)
{
    struct gossip__counters c;
    *out = g->glue_stats;
    if (g->st == NULL) {
        return;
    }
    gossip__state_counters(g->st, &c);
    out->dropped_malformed += c.dropped_malformed;
    out->dropped_version += c.dropped_version;
    out->dropped_send += c.dropped_out;
    out->name_conflicts = c.name_conflicts;
    out->table_full = c.table_full;
    out->probes = c.probes;
    out->probes_failed = c.probes_failed;
    out->suspicions = c.suspicions;
    out->refutations = c.refutations;
    out->health = gossip__state_health(g->st);
}

void gossip_set_drop(struct gossip *g, unsigned pct)
{
    g->drop_pct = pct > 100 ? 100 : pct;
}

void gossip_leave(struct gossip *g, gossip_close_cb cb)
{
    if (g->closing || g->leaving) {
        return;
    }
    if (!g->started || g->st == NULL) {
        gossip_close(g, cb);
        return;
    }
    g->close_cb = cb;
    g->leaving = true;
    g->leave_deadline_ms = now_ms(g) + LEAVE_MAX_MS;
    gossip__state_leave(g->st, now_ms(g));
    gossip__state_tick(g->st, now_ms(g));
    flush(g);
}

void gossip_close(struct gossip *g, gossip_close_cb cb)
{
    struct gossip__conn *c;
    if (g->closing) {
        return;
    }
    g->closing = true;
    g->leaving = false;
    g->close_cb = cb;
    if (g->handles_open > 0) {
        uv_close((uv_handle_t *)&g->udp, handle_closed_cb);
        uv_close((uv_handle_t *)&g->tcp, handle_closed_cb);
        uv_close((uv_handle_t *)&g->timer, handle_closed_cb);
    }
    for (c = g->conns; c != NULL; c = c->next) {
        conn_close(c);
    }
    maybe_finish_close(g);
}
