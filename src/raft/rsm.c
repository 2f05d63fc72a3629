/* The replicated core's runtime: libraft 0.15 lifecycle over raft_uv,
 * bootstrap rule, the FSM adapter, role polling, accessors, close and the
 * crash-stop policy. Proposals are in rsm_propose.c. See docs/raft.md. */
#include "raft/rsm.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "raft/rsm_int.h"

#define MOD "rsm"

/* Period of the voter-management reconcile timer. */
#define MEMBERS_PERIOD_MS 500

/* Digest cadence defaults (docs/raft.md "Divergence detection"). */
#define DIGEST_ENTRIES 4096
#define DIGEST_PERIOD_MS 60000

/* The barrier a new leader commits before serving (RISKS row 4). */
struct leader_barrier
{
    struct raft_barrier req;
    struct rsm *r;
    raft_term term;
};

static void io_close_wrap(struct raft_io *io, raft_io_close_cb cb);

/* ---------------------------------------------------------------------- */
/* Divergence observer (local, outside the FSM)                           */
/* ---------------------------------------------------------------------- */

static const struct rsm_digest *ring_find(const struct rsm__digest_obs *o,
                                          uint64_t index)
{
    for (unsigned i = 0; i < o->n; i++) {
        if (o->ring[i].index == index) {
            return &o->ring[i];
        }
    }
    return NULL;
}

static uint64_t ring_newest(const struct rsm__digest_obs *o)
{
    if (o->n == 0) {
        return 0;
    }
    return o->ring[(o->next + RSM__DIGEST_RING - 1) % RSM__DIGEST_RING].index;
}

static void ring_push(struct rsm__digest_obs *o, const struct rsm_digest *d)
{
    o->ring[o->next] = *d;
    o->next = (o->next + 1) % RSM__DIGEST_RING;
    if (o->n < RSM__DIGEST_RING) {
        o->n++;
    }
}

static void digest_compare(struct rsm__digest_obs *o,
                           const struct rsm_digest *c,
                           uint64_t index)
{
    const struct rsm_digest *own;
    bool chain_ok;

    if (c->index == 0) {
        return; /* the proposer had no record yet */
    }
    own = ring_find(o, c->index);
    if (own == NULL) {
        /* Older than our ring, or before our snapshot: cannot check. */
        LOGD(MOD, "digest at %" PRIu64 ": no own record for index %" PRIu64,
             index, c->index);
        return;
    }
    o->checks++;
    if (c->index > o->checked_index) {
        o->checked_index = c->index;
    }
    /* A chain of 0 is unknown (restored from a pre-digest snapshot). */
    chain_ok = own->chain == 0 || c->chain == 0 || own->chain == c->chain;
    if (chain_ok && own->state == c->state) {
        return;
    }
    LOGE(MOD,
         "DIVERGED: the digest at index %" PRIu64
         " carries the leader's record for index %" PRIu64 " (chain %016" PRIx64
         " state %016" PRIx64 "), this node has chain %016" PRIx64
         " state %016" PRIx64
         " there: this replica or the leader's differs (RISKS rows 1, 2, "
         "4, 5, 11); compare /v1/status raft.digest across nodes, then "
         "wipe and re-add the odd one",
         index, c->index, c->chain, c->state, own->chain, own->state);
    if (!o->diverged) {
        o->diverged = true;
        o->detected_at = index;
        o->bad_own = *own;
        o->bad_carried = *c;
    }
}

void rsm__digest_observe(struct rsm__digest_obs *o,
                         const struct rsm_fsm *f,
                         uint64_t index)
{
    struct rsm_digest last = rsm_fsm_digest_last(f);
    struct rsm_digest carried[RSM_DIGEST_CARRIED_MAX];
    unsigned n = rsm_fsm_digest_carried(f, carried, RSM_DIGEST_CARRIED_MAX);

    /* Our own newest record: made by this entry, or restored from a
     * snapshot since the previous call. */
    if (last.index != 0 && last.index > ring_newest(o)) {
        ring_push(o, &last);
    }
    if (last.index == index) {
        o->since = 0;
    } else {
        o->since++;
    }
    for (unsigned i = 0; i < n && i < RSM_DIGEST_CARRIED_MAX; i++) {
        digest_compare(o, &carried[i], index);
    }
}

/* ---------------------------------------------------------------------- */
/* TCP_NODELAY on raft connections                                        */
/* ---------------------------------------------------------------------- */

/* raft_uv_tcp 0.15 leaves Nagle on, and each raft connection carries data
 * one way only (the answers travel on the peer's own connection), so a
 * small AppendEntries written while the previous one is unacknowledged
 * waits for the peer's delayed ACK: ~40 ms stalls of the whole cluster
 * under load. rsm wraps the transport's listen and connect to set
 * TCP_NODELAY on every stream it hands to raft_uv. raft_uv passes the same
 * callbacks on every call (one per process is enough); a different one is
 * passed through unwrapped. */
static raft_uv_accept_cb tcp_accept_orig;
static raft_uv_connect_cb tcp_connect_orig;
static int (*tcp_listen_impl)(struct raft_uv_transport *t,
                              raft_uv_accept_cb cb);
static int (*tcp_connect_impl)(struct raft_uv_transport *t,
                               struct raft_uv_connect *req,
                               raft_id id,
                               const char *address,
                               raft_uv_connect_cb cb);

static void stream_nodelay(struct uv_stream_s *stream)
{
    if (stream != NULL && stream->type == UV_TCP) {
        uv_tcp_nodelay((uv_tcp_t *)stream, 1); /* best effort */
    }
}

static void tcp_accept_wrap_cb(struct raft_uv_transport *t,
                               raft_id id,
                               const char *address,
                               struct uv_stream_s *stream)
{
    stream_nodelay(stream);
    tcp_accept_orig(t, id, address, stream);
}

static int tcp_listen_wrap(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    if (tcp_accept_orig == NULL || tcp_accept_orig == cb) {
        tcp_accept_orig = cb;
        cb = tcp_accept_wrap_cb;
    }
    return tcp_listen_impl(t, cb);
}

static void tcp_connect_wrap_cb(struct raft_uv_connect *req,
                                struct uv_stream_s *stream,
                                int status)
{
    if (status == 0) {
        stream_nodelay(stream);
    }
    tcp_connect_orig(req, stream, status);
}

static int tcp_connect_wrap(struct raft_uv_transport *t,
                            struct raft_uv_connect *req,
                            raft_id id,
                            const char *address,
                            raft_uv_connect_cb cb)
{
    if (tcp_connect_orig == NULL || tcp_connect_orig == cb) {
        tcp_connect_orig = cb;
        cb = tcp_connect_wrap_cb;
    }
    return tcp_connect_impl(t, req, id, address, cb);
}

static void transport_wrap(struct raft_uv_transport *t)
{
    if (tcp_listen_impl == NULL || tcp_listen_impl == t->listen) {
        tcp_listen_impl = t->listen;
        t->listen = tcp_listen_wrap;
    }
    if (tcp_connect_impl == NULL || tcp_connect_impl == t->connect) {
        tcp_connect_impl = t->connect;
        t->connect = tcp_connect_wrap;
    }
}

/* ---------------------------------------------------------------------- */
/* FSM adapter (shared with tests/lib/cluster.c)                          */
/* ---------------------------------------------------------------------- */

static int adapter_apply(struct raft_fsm *fsm,
                         const struct raft_buffer *buf,
                         void **result)
{
    struct rsm__adapter *a = fsm->data;
    uint64_t index = a->raft->last_applied + 1;
    unsigned n = 0;
    unsigned i;
    int rv;

    rv = rsm_fsm_apply(a->core, index, buf->base, buf->len, a->results,
                       RSM__MAX_BATCH, &n);
    if (rv != 0) {
        /* libraft retries the same entry forever: the node stops applying
         * (the FSM contract: a newer format or no memory). */
        if (!a->stuck) {
            LOGE(MOD,
                 "apply of entry %" PRIu64
                 " refused: %s; this node "
                 "stops applying",
                 index, err_str(rv));
            a->stuck = true;
        }
        return rv == ERR_NOMEM ? RAFT_NOMEM : RAFT_INVALID;
    }
    a->stuck = false;
    for (i = 0; i < n; i++) {
        a->results[i].index = index;
    }
    a->n_results = n;
    a->index = index;
    rsm__digest_observe(&a->digest, a->core, index);
    if (a->after_apply != NULL) {
        a->after_apply(a, buf->base, buf->len);
    }
    *result = a;
    return 0;
}

static int adapter_snapshot(struct raft_fsm *fsm,
                            struct raft_buffer *bufs[],
                            unsigned *n_bufs)
{
    struct rsm__adapter *a = fsm->data;
    void *data = NULL;
    size_t len = 0;
    struct raft_buffer *b;
    int rv;

    rv = rsm_fsm_snapshot(a->core, &data, &len);
    if (rv != 0) {
        LOGW(MOD, "snapshot: %s", err_str(rv));
        return RAFT_NOMEM;
    }
    b = raft_malloc(sizeof *b);
    if (b == NULL) {
        free(data);
        return RAFT_NOMEM;
    }
    /* raft frees with raft_free: copy out of the malloc'd buffer. */
    b->len = len;
    b->base = raft_malloc(len > 0 ? len : 1);
    if (b->base == NULL) {
        raft_free(b);
        free(data);
        return RAFT_NOMEM;
    }
    if (len > 0) {
        memcpy(b->base, data, len);
    }
    free(data);
    *bufs = b;
    *n_bufs = 1;
    return 0;
}

static int adapter_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct rsm__adapter *a = fsm->data;
    char errmsg[ERRMSG_SIZE] = "";
    int rv;

    rv = rsm_fsm_restore(a->core, buf->base, buf->len, errmsg);
    if (rv != 0) {
        LOGE(MOD, "snapshot restore failed: %s", errmsg);
        return RAFT_CORRUPT; /* raft keeps the buffer */
    }
    raft_free(buf->base); /* ours on success (STACK pitfall 5) */
    return 0;
}

void rsm__adapter_init(struct rsm__adapter *a, struct rsm_fsm *core)
{
    memset(a, 0, sizeof *a);
    a->core = core;
    a->fsm.version = 1;
    a->fsm.data = a;
    a->fsm.apply = adapter_apply;
    a->fsm.snapshot = adapter_snapshot;
    a->fsm.restore = adapter_restore;
}

/* ---------------------------------------------------------------------- */
/* Small helpers                                                          */
/* ---------------------------------------------------------------------- */

const char *rsm_role_name(enum rsm_role role)
{
    switch (role) {
        case RSM_ROLE_VOTER:
            return "voter";
        case RSM_ROLE_STANDBY:
            return "standby";
        case RSM_ROLE_SPARE:
            return "spare";
        case RSM_ROLE_NONE:
        default:
            return "none";
    }
}

void rsm_config_defaults(struct rsm_config *c)
{
    memset(c, 0, sizeof *c);
    c->election_ms = 1000;
    c->heartbeat_ms = 100;
    c->segment_kib = 8192;
    /* A snapshot stalls appends on its node for ~45 ms (raft_uv finalizes
     * the open segments) plus the FSM encoding, so every 1024 entries cost
     * ~10% of the write throughput. 4096 + 4096 entries stay in memory at
     * most (dqlite keeps 1024 + 8192); RISKS rows 8 and 11 ask for large
     * values. */
    c->snapshot_threshold = 4096;
    c->snapshot_trailing = 4096;
    c->forward_timeout_ms = 5000;
    c->digest_entries = DIGEST_ENTRIES;
    c->digest_period_ms = DIGEST_PERIOD_MS;
}

/* Crash-stop (RISKS row 2): the one place kiln aborts outside main.c. A
 * raft request failing with anything but NOTLEADER/LEADERSHIPLOST/SHUTDOWN
 * (typically RAFT_IOERR after a failed disk write) leaves 0.15 in a state
 * where later callbacks may carry other entries' results; stop the process
 * and let the supervisor restart it from disk. */
void rsm__crash_stop(const char *what, int status)
{
    LOGE(MOD, "%s failed with %s (%d): crash-stop", what, raft_strerror(status),
         status);
    abort();
}

static bool retryable_raft(int status)
{
    return status == RAFT_LEADERSHIPLOST || status == RAFT_NOTLEADER;
}

bool rsm__is_leader_now(const struct rsm *r)
{
    return r->raft_started && !r->closing &&
           raft_state((struct raft *)&r->raft) == RAFT_LEADER;
}

static uint64_t leader_of(const struct rsm *r)
{
    raft_id id = 0;
    const char *addr = NULL;
    if (!r->raft_started) {
        return 0;
    }
    raft_leader((struct raft *)&r->raft, &id, &addr);
    return id;
}

/* ---------------------------------------------------------------------- */
/* Role polling                                                           */
/* ---------------------------------------------------------------------- */

static void lbarrier_cb(struct raft_barrier *req, int status)
{
    struct leader_barrier *lb = req->data;
    struct rsm *r = lb->r;

    r->lbarrier_inflight = false;
    if (status == 0) {
        if (!r->closing && raft_state(&r->raft) == RAFT_LEADER &&
            r->raft.current_term == lb->term) {
            r->ready = true;
            LOGI(MOD, "leader ready (term %" PRIu64 ")", (uint64_t)lb->term);
            rsm__kick_members(r, 0);
        }
    } else if (!(r->closing || status == RAFT_SHUTDOWN ||
                 retryable_raft(status))) {
        rsm__crash_stop("leader barrier", status);
    }
    free(lb);
}

static void issue_lbarrier(struct rsm *r)
{
    struct leader_barrier *lb;
    int rv;

    if (r->lbarrier_inflight) {
        return;
    }
    lb = calloc(1, sizeof *lb);
    if (lb == NULL) {
        return; /* retried on the next check */
    }
    lb->r = r;
    lb->term = r->raft.current_term;
    lb->req.data = lb;
    rv = raft_barrier(&r->raft, &lb->req, lbarrier_cb);
    if (rv != 0) {
        free(lb);
        return; /* e.g. NOTLEADER during a transfer: retry next check */
    }
    r->lbarrier_inflight = true;
    r->need_lbarrier = false;
}

static void poll_role(struct rsm *r)
{
    int state = raft_state(&r->raft);
    uint64_t leader = leader_of(r);

    if (state == RAFT_LEADER) {
        if (!r->was_leader || r->leader_term != r->raft.current_term) {
            r->was_leader = true;
            r->leader_term = r->raft.current_term;
            r->ready = false;
            r->need_lbarrier = true;
        }
        if (r->need_lbarrier && !r->ready) {
            issue_lbarrier(r);
        }
    } else {
        r->was_leader = false;
        r->ready = false;
        r->need_lbarrier = false;
    }
    if (state != r->last_state || leader != r->last_leader ||
        r->ready != r->last_ready) {
        LOGD(MOD, "role: state=%d leader=%" PRIu64 " ready=%d", state, leader,
             (int)r->ready);
        r->last_state = state;
        r->last_leader = leader;
        r->last_ready = r->ready;
        if (r->cfg.on_role != NULL) {
            r->cfg.on_role(r, r->cfg.ud);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Digest proposals (docs/raft.md "Divergence detection")                 */
/* ---------------------------------------------------------------------- */

static void digest_done_cb(void *data, int rv, const struct rsm_result *res)
{
    struct rsm *r = data;
    r->digest_inflight = false;
    if (rv != 0) {
        LOGD(MOD, "digest proposal: %s", err_str(rv));
    } else if (res != NULL) {
        LOGD(MOD, "digest at %" PRIu64 ": state %016" PRIx64, res->index,
             res->value);
    }
}

/* Leader only, from the check handle (never inside a raft callback):
 * every digest_entries applied entries, or after digest_period_ms if any
 * entry applied meanwhile (an idle cluster proposes nothing). */
static void maybe_propose_digest(struct rsm *r)
{
    uint64_t since = r->adapter.digest.since;
    struct rsm_digest prev;
    struct rsm_cmd cmd;

    if (since == 0 || r->digest_inflight || !rsm_is_leader(r)) {
        return;
    }
    if (since < r->cfg.digest_entries &&
        time_mono_ms() - r->digest_mark_ms < r->cfg.digest_period_ms) {
        return;
    }
    prev = rsm_fsm_digest_last(r->core);
    rsm_cmd_init(&cmd, RSM_CMD_DIGEST);
    cmd.u.digest.prev_index = prev.index;
    cmd.u.digest.prev_chain = prev.chain;
    cmd.u.digest.prev_state = prev.state;
    if (rsm_propose(r, &cmd, digest_done_cb, r) == 0) {
        r->digest_inflight = true;
    }
    /* Whatever the outcome, wait a full period before the time rule
     * fires again (the entry rule still applies). */
    r->digest_mark_ms = time_mono_ms();
}

static void check_cb(uv_check_t *h)
{
    struct rsm *r = h->data;
    if (r->closing) {
        return;
    }
    if (r->raft_started) {
        poll_role(r);
        maybe_propose_digest(r);
    }
    rsm__service_groups(r);
}

static void members_timer_cb(uv_timer_t *h)
{
    struct rsm *r = h->data;
    if (r->raft_started && !r->closing) {
        rsm__members_reconcile(r);
    }
}

/* ---------------------------------------------------------------------- */
/* Adapter observer                                                        */
/* ---------------------------------------------------------------------- */

static void after_apply(struct rsm__adapter *a, const void *buf, size_t len)
{
    struct rsm *r = a->owner;
    struct rsm_cmd *cmds = NULL;
    unsigned n = 0;
    unsigned i;
    char errmsg[ERRMSG_SIZE];

    if (a->digest.since == 0) {
        r->digest_mark_ms = time_mono_ms(); /* a DIGEST just applied */
    }
    if (r->cfg.on_applied == NULL) {
        return;
    }
    if (rsm_entry_decode(buf, len, &cmds, &n, errmsg) != 0) {
        return; /* applied as a rejection; nothing to observe */
    }
    for (i = 0; i < n && i < a->n_results; i++) {
        r->cfg.on_applied(r, &cmds[i], &a->results[i], r->cfg.ud);
    }
    rsm_cmds_free(cmds, n);
}

/* ---------------------------------------------------------------------- */
/* Lifecycle                                                              */
/* ---------------------------------------------------------------------- */

struct rsm *rsm_create(uv_loop_t *loop,
                       const struct rsm_config *cfg,
                       char *errmsg)
{
    struct rsm *r;
    int rv;

    if (cfg->id == 0 || cfg->dir[0] == '\0' || cfg->raft.port == 0) {
        errmsg_printf(errmsg, "rsm: id, dir and raft address are required");
        return NULL;
    }
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        errmsg_printf(errmsg, "rsm: out of memory");
        return NULL;
    }
    r->loop = loop;
    r->cfg = *cfg;
    if (r->cfg.election_ms == 0) {
        r->cfg.election_ms = 1000;
    }
    if (r->cfg.heartbeat_ms == 0) {
        r->cfg.heartbeat_ms =
            r->cfg.election_ms / 10 ? r->cfg.election_ms / 10 : 1;
    }
    if (r->cfg.segment_kib == 0) {
        r->cfg.segment_kib = 8192;
    }
    if (r->cfg.snapshot_threshold == 0) {
        r->cfg.snapshot_threshold = 4096;
    }
    /* RISKS row 11: trailing >= threshold. */
    if (r->cfg.snapshot_trailing < r->cfg.snapshot_threshold) {
        r->cfg.snapshot_trailing = r->cfg.snapshot_threshold;
    }
    if (r->cfg.forward_timeout_ms == 0) {
        r->cfg.forward_timeout_ms = 5000;
    }
    if (r->cfg.digest_entries == 0) {
        r->cfg.digest_entries = DIGEST_ENTRIES;
    }
    if (r->cfg.digest_period_ms == 0) {
        r->cfg.digest_period_ms = DIGEST_PERIOD_MS;
    }
    addr_format(&r->cfg.raft, r->addr);
    rv = rsm_fsm_create(&r->core);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: fsm: %s", err_str(rv));
        free(r);
        return NULL;
    }
    rsm__adapter_init(&r->adapter, r->core);
    r->adapter.raft = &r->raft;
    r->adapter.owner = r;
    r->adapter.after_apply = after_apply;
    r->groups.next = r->groups.prev = &r->groups;
    r->last_state = -1;
    r->boot_ms = (uint64_t)time_wall_ms();
    r->digest_mark_ms = time_mono_ms();
    rsm__members_init(&r->members);

    uv_check_init(loop, &r->check);
    uv_prepare_init(loop, &r->prepare);
    uv_timer_init(loop, &r->retry_timer);
    uv_timer_init(loop, &r->members_timer);
    r->check.data = r;
    r->prepare.data = r;
    r->retry_timer.data = r;
    r->members_timer.data = r;
    r->handles_open = 4;
    return r;
}

/* Does the data dir hold persisted raft state? raft_uv keeps its term and
 * vote in "metadata1"/"metadata2" (little-endian u64 format, version, term,
 * voted_for). A dir where neither holds a term > 0 was never bootstrapped
 * nor contacted by a leader. */
static bool probe_disk_state(const char *dir)
{
    static const char *names[] = {"metadata1", "metadata2"};
    unsigned i;
    for (i = 0; i < ARRAY_SIZE(names); i++) {
        char path[PATH_MAX + 16];
        unsigned char b[32];
        uint64_t term = 0;
        ssize_t got;
        int fd;
        int k;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        got = read(fd, b, sizeof b);
        close(fd);
        if (got != (ssize_t)sizeof b) {
            continue;
        }
        for (k = 7; k >= 0; k--) {
            term = (term << 8) | b[16 + k];
        }
        if (term > 0) {
            return true;
        }
    }
    return false;
}

static int start_raft(struct rsm *r, char *errmsg)
{
    int rv = raft_start(&r->raft);
    if (rv != 0) {
        /* 0.15 often leaves raft_errmsg() empty (a listen failure only
         * sets the transport's message): say the most specific thing. */
        const char *why = raft_errmsg(&r->raft);
        if (why == NULL || why[0] == '\0') {
            why = r->io.errmsg[0] != '\0' ? r->io.errmsg : raft_strerror(rv);
        }
        if (errmsg != NULL) {
            errmsg_printf(errmsg,
                          "rsm: raft_start on %s: %s (is the Raft port free?)",
                          r->addr, why);
        }
        LOGE(MOD, "raft_start on %s: %s", r->addr, why);
        return ERR_IO;
    }
    r->raft_started = true;
    uv_timer_start(&r->members_timer, members_timer_cb, MEMBERS_PERIOD_MS,
                   MEMBERS_PERIOD_MS);
    return 0;
}

int rsm_start(struct rsm *r, char *errmsg)
{
    int rv;

    if (r->raft_inited || r->closing) {
        errmsg_printf(errmsg, "rsm: already started");
        return ERR_INVALID;
    }
    if (fs_mkdir_p(r->cfg.dir) != 0) {
        errmsg_printf(errmsg, "rsm: mkdir %s: %s", r->cfg.dir, strerror(errno));
        return ERR_IO;
    }
    rv = raft_uv_tcp_init(&r->transport, r->loop);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: raft_uv_tcp_init: %s", raft_strerror(rv));
        return ERR_IO;
    }
    transport_wrap(&r->transport);
    rv = raft_uv_tcp_set_bind_address(&r->transport, r->addr);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: bind address %s: %s", r->addr,
                      raft_strerror(rv));
        goto err_after_transport;
    }
    rv = raft_uv_init(&r->io, r->loop, r->cfg.dir, &r->transport);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: raft_uv_init %s: %s", r->cfg.dir,
                      r->io.errmsg);
        goto err_after_transport;
    }
    raft_uv_set_segment_size(&r->io, (size_t)r->cfg.segment_kib * 1024);
    /* The FSM snapshot is already an LZ4 frame (rsm_fsm_snapshot). */
    raft_uv_set_snapshot_compression(&r->io, false);
    rv = raft_init(&r->raft, &r->io, &r->adapter.fsm, r->cfg.id, r->addr);
    if (rv != 0) {
        errmsg_printf(errmsg, "rsm: raft_init: %s", raft_errmsg(&r->raft));
        goto err_after_io;
    }
    r->raft.data = r;
    r->raft_inited = true;
    /* raft_init set io->data = &r->raft; interpose on close (row 15). */
    r->io_close_orig = r->io.close;
    r->io.close = io_close_wrap;
    raft_set_election_timeout(&r->raft, r->cfg.election_ms);
    raft_set_heartbeat_timeout(&r->raft, r->cfg.heartbeat_ms);
    raft_set_pre_vote(&r->raft, true);
    raft_set_snapshot_threshold(&r->raft, r->cfg.snapshot_threshold);
    raft_set_snapshot_trailing(&r->raft, r->cfg.snapshot_trailing);

    uv_check_start(&r->check, check_cb);
    uv_prepare_start(&r->prepare, rsm__prepare_cb);

    /* Bootstrap rule: raft_bootstrap must run before raft_start in 0.15.
     * A dir with state starts at once; an empty one waits for
     * rsm_bootstrap (new cluster) or rsm_join (added by a leader). */
    r->disk_state = probe_disk_state(r->cfg.dir);
    if (r->disk_state) {
        rv = start_raft(r, errmsg);
        if (rv != 0) {
            return rv; /* the caller still rsm_close()s */
        }
    }
    return 0;

err_after_io:
    raft_uv_close(&r->io);
err_after_transport:
    raft_uv_tcp_close(&r->transport);
    return ERR_IO;
}

bool rsm_has_state(const struct rsm *r)
{
    if (r->disk_state) {
        return true;
    }
    return r->raft_started && r->raft.configuration.n > 0;
}

int rsm_bootstrap(struct rsm *r, const struct rsm_server *servers, unsigned n)
{
    struct raft_configuration conf;
    unsigned i;
    int rv;

    if (r->closing) {
        return ERR_SHUTDOWN;
    }
    if (!r->raft_inited) {
        return ERR_INVALID;
    }
    if (rsm_has_state(r)) {
        return 0;
    }
    if (r->raft_started) {
        LOGW(MOD, "bootstrap refused: raft already started (joined)");
        return ERR_BUSY;
    }
    if (n == 0 || servers == NULL) {
        return ERR_INVALID;
    }
    raft_configuration_init(&conf);
    for (i = 0; i < n; i++) {
        rv = raft_configuration_add(&conf, servers[i].id, servers[i].raft,
                                    RAFT_VOTER);
        if (rv != 0) {
            LOGE(MOD, "bootstrap: server %" PRIu64 " %s: %s", servers[i].id,
                 servers[i].raft, raft_strerror(rv));
            raft_configuration_close(&conf);
            return rv == RAFT_NOMEM ? ERR_NOMEM : ERR_INVALID;
        }
    }
    rv = raft_bootstrap(&r->raft, &conf);
    raft_configuration_close(&conf);
    if (rv == RAFT_CANTBOOTSTRAP) {
        LOGI(MOD, "bootstrap: state already present, resuming it");
    } else if (rv != 0) {
        LOGE(MOD, "raft_bootstrap: %s (%s)", raft_strerror(rv),
             raft_errmsg(&r->raft));
        return ERR_IO;
    } else {
        LOGI(MOD, "bootstrapped a cluster of %u voter(s)", n);
    }
    return start_raft(r, NULL);
}

int rsm_join(struct rsm *r)
{
    if (r->closing) {
        return ERR_SHUTDOWN;
    }
    if (!r->raft_inited) {
        return ERR_INVALID;
    }
    if (r->raft_started) {
        return 0;
    }
    return start_raft(r, NULL);
}

/* ---------------------------------------------------------------------- */
/* Accessors                                                              */
/* ---------------------------------------------------------------------- */

bool rsm_is_leader(const struct rsm *r)
{
    /* Same term as the applied barrier: a leader that stepped down and won
     * again before the next poll is not ready yet. */
    return r->ready && rsm__is_leader_now(r) &&
           r->raft.current_term == r->leader_term;
}

uint64_t rsm_leader_id(const struct rsm *r)
{
    return leader_of(r);
}

enum rsm_role rsm_role_of(const struct rsm *r, uint64_t id)
{
    unsigned i;
    if (!r->raft_started) {
        return RSM_ROLE_NONE;
    }
    for (i = 0; i < r->raft.configuration.n; i++) {
        const struct raft_server *s = &r->raft.configuration.servers[i];
        if (s->id == id) {
            switch (s->role) {
                case RAFT_VOTER:
                    return RSM_ROLE_VOTER;
                case RAFT_STANDBY:
                    return RSM_ROLE_STANDBY;
                case RAFT_SPARE:
                    return RSM_ROLE_SPARE;
                default:
                    return RSM_ROLE_NONE;
            }
        }
    }
    return RSM_ROLE_NONE;
}

const struct rsm_fsm *rsm_state(const struct rsm *r)
{
    return r->core;
}

uint64_t rsm_last_applied(const struct rsm *r)
{
    if (!r->raft_started) {
        return 0;
    }
    return raft_last_applied((struct raft *)&r->raft);
}

uint64_t rsm_term(const struct rsm *r)
{
    if (!r->raft_started) {
        return 0;
    }
    return (uint64_t)r->raft.current_term;
}

uint64_t rsm_commit_index(const struct rsm *r)
{
    if (!r->raft_started) {
        return 0;
    }
    return (uint64_t)r->raft.commit_index;
}

void rsm_member_seen(struct rsm *r,
                     uint64_t id,
                     const char *raft_addr,
                     bool alive)
{
    if (r->closing) {
        return;
    }
    if (rsm__members_seen(&r->members, id, raft_addr, alive, time_mono_ms()) &&
        rsm_is_leader(r)) {
        rsm__kick_members(r, 0);
    }
}

void rsm_digest_status(const struct rsm *r, struct rsm_digest_status *out)
{
    const struct rsm__digest_obs *o = &r->adapter.digest;
    memset(out, 0, sizeof *out);
    out->last = rsm_fsm_digest_last(r->core);
    out->chain = rsm_fsm_chain(r->core);
    out->checks = o->checks;
    out->checked_index = o->checked_index;
    out->diverged = o->diverged;
    out->detected_at = o->detected_at;
    out->own = o->bad_own;
    out->leader = o->bad_carried;
}

bool rsm_diverged(const struct rsm *r)
{
    return r->adapter.digest.diverged;
}

struct rsm_fsm *rsm__core(struct rsm *r)
{
    return r->core;
}

/* Internal accessors for rsm_members.c. */
struct raft *rsm__raft(struct rsm *r)
{
    return &r->raft;
}

struct rsm__members *rsm__members(struct rsm *r)
{
    return &r->members;
}

bool rsm__ready(const struct rsm *r)
{
    return rsm_is_leader(r);
}

uint64_t rsm__self_id(const struct rsm *r)
{
    return r->cfg.id;
}

void rsm__kick_members(struct rsm *r, unsigned delay_ms)
{
    if (r->closing || !r->raft_started) {
        return;
    }
    uv_timer_start(&r->members_timer, members_timer_cb, delay_ms,
                   MEMBERS_PERIOD_MS);
}

/* ---------------------------------------------------------------------- */
/* Close                                                                  */
/* ---------------------------------------------------------------------- */

static void handle_closed_cb(uv_handle_t *h)
{
    struct rsm *r = h->data;
    if (--r->handles_open > 0) {
        return;
    }
    if (r->close_cb != NULL) {
        r->close_cb(r, r->close_data);
    }
    rsm__members_free(&r->members);
    rsm_fsm_destroy(r->core);
    free(r);
}

static void close_handles(struct rsm *r)
{
    uv_close((uv_handle_t *)&r->check, handle_closed_cb);
    uv_close((uv_handle_t *)&r->prepare, handle_closed_cb);
    uv_close((uv_handle_t *)&r->retry_timer, handle_closed_cb);
    uv_close((uv_handle_t *)&r->members_timer, handle_closed_cb);
}

/* RISKS row 15 (#341): raft_uv 0.15 fires its close callback from
 * uvMaybeFireCloseCb every time its "nothing pending" test passes, and
 * segment writers, prepared segments and TCP connections that are still
 * closing call it again afterwards. Each extra fire would run libraft's
 * ioCloseCb again (double free of raft->address) and, once raft_uv_close
 * freed the uv struct, read freed memory (seen as a SEGV after closing
 * right after a burst of writes). So rsm interposes on io->close: the
 * first fire is passed to libraft, later ones only update io_last_fire,
 * and the uv structs are freed only after no fire came for SETTLE_MS. */
#define SETTLE_MS 50

static void io_fired_cb(struct raft_io *io)
{
    struct raft *raft = io->data;
    struct rsm *r = raft->data;

    r->io_last_fire = time_mono_ms();
    if (r->io_fired) {
        LOGD(MOD, "raft_uv close callback fired again: ignored");
        return;
    }
    r->io_fired = true;
    r->io_close_raft_cb(io);
}

static void io_close_wrap(struct raft_io *io, raft_io_close_cb cb)
{
    struct raft *raft = io->data;
    struct rsm *r = raft->data;
    r->io_close_raft_cb = cb;
    r->io_close_orig(io, io_fired_cb);
}

static void finish_close(struct rsm *r)
{
    raft_uv_close(&r->io);
    raft_uv_tcp_close(&r->transport);
    close_handles(r);
}

static void settle_cb(uv_timer_t *h)
{
    struct rsm *r = h->data;
    if (time_mono_ms() - r->io_last_fire < SETTLE_MS) {
        return;
    }
    uv_timer_stop(h);
    finish_close(r);
}

/* Idempotent (RISKS row 15). */
static void raft_closed_cb(struct raft *raft)
{
    struct rsm *r = raft->data;

    if (r->raft_closed) {
        return;
    }
    r->raft_closed = true;
    /* raft failed every pending request during raft_close; anything left
     * is failed here (defensive: raft will not call it any more). */
    rsm__groups_fail_all(r);
    uv_timer_start(&r->retry_timer, settle_cb, 10, 10);
}

void rsm_close(struct rsm *r, rsm_close_cb cb, void *data)
{
    if (r->closing) {
        return;
    }
    r->closing = true;
    r->ready = false;
    r->close_cb = cb;
    r->close_data = data;
    rsm__groups_shutdown(r);
    uv_check_stop(&r->check);
    uv_prepare_stop(&r->prepare);
    uv_timer_stop(&r->retry_timer);
    uv_timer_stop(&r->members_timer);
    if (r->raft_inited) {
        raft_close(&r->raft, raft_closed_cb);
    } else {
        close_handles(r);
    }
}
