/* Composition root. Start order: data dir lock and identity (init), then the
 * modules; close order is the reverse (docs/architecture.md). */
#include "node.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "log.h"
#include "sched/cron.h"
#include "util.h"

#define IDENTITY_FILE "identity"
#define LOCK_FILE "LOCK"

int node_lock_data_dir(const char *dir, int *fd_out, char *errmsg)
{
    char path[PATH_MAX + 16];
    char pidbuf[32];
    int fd;
    int n;

    if (fs_mkdir_p(dir) != 0) {
        errmsg_printf(errmsg, "data dir %.200s: cannot create: %s", dir,
                      strerror(errno));
        return ERR_IO;
    }
    snprintf(path, sizeof path, "%s/%s", dir, LOCK_FILE);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        errmsg_printf(errmsg, "data dir %.200s: cannot open lock file: %s", dir,
                      strerror(errno));
        return ERR_IO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char other[32] = "";
        ssize_t r = pread(fd, other, sizeof other - 1, 0);
        if (r > 0) {
            other[r] = '\0';
            other[strcspn(other, "\n")] = '\0';
        }
        close(fd);
        errmsg_printf(errmsg,
                      "data dir %.200s is in use by another kiln agent "
                      "(pid %s)",
                      dir, other[0] != '\0' ? other : "unknown");
        return ERR_INUSE;
    }
    n = snprintf(pidbuf, sizeof pidbuf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pidbuf, (size_t)n, 0) != n) {
        close(fd);
        errmsg_printf(errmsg, "data dir %.200s: cannot write lock file: %s",
                      dir, strerror(errno));
        return ERR_IO;
    }
    *fd_out = fd;
    return 0;
}

int node_load_identity(const char *dir,
                       const char *want_name,
                       char *name,
                       uint64_t *id,
                       char *errmsg)
{
    char path[PATH_MAX + 16];
    char *text = NULL;
    int rv;

    snprintf(path, sizeof path, "%s/%s", dir, IDENTITY_FILE);
    rv = fs_read_all(path, 4096, &text, NULL);
    if (rv == 0) {
        char stored[CONFIG_NAME_MAX + 2];
        char idhex[32];
        if (sscanf(text, "name=%64s id=%31s", stored, idhex) != 2 ||
            !config_valid_name(stored) || sscanf(idhex, "%" SCNx64, id) != 1 ||
            *id == 0) {
            free(text);
            errmsg_printf(errmsg, "data dir %.200s: identity file is corrupt",
                          dir);
            return ERR_MALFORMED;
        }
        free(text);
        if (want_name[0] != '\0' && strcmp(want_name, stored) != 0) {
            errmsg_printf(errmsg,
                          "data dir %.150s belongs to node '%s', not '%s'", dir,
                          stored, want_name);
            return ERR_CONFLICT;
        }
        str_copy(name, CONFIG_NAME_MAX + 1, stored);
        return 0;
    }
    if (rv != ERR_NOTFOUND) {
        errmsg_printf(errmsg, "data dir %.200s: cannot read identity: %s", dir,
                      err_str(rv));
        return rv;
    }

    /* First start: take the flag or the hostname, and a random id. */
    if (want_name[0] != '\0') {
        str_copy(name, CONFIG_NAME_MAX + 1, want_name);
    } else {
        char host[256];
        if (gethostname(host, sizeof host) != 0) {
            strcpy(host, "kiln");
        }
        host[sizeof host - 1] = '\0';
        host[strcspn(host, ".")] = '\0'; /* short name */
        if (!config_valid_name(host)) {
            strcpy(host, "kiln");
        }
        str_copy(name, CONFIG_NAME_MAX + 1, host);
    }
    do {
        if (getrandom(id, sizeof *id, 0) != (ssize_t)sizeof *id) {
            *id = hash64(name, strlen(name),
                         (uint64_t)time_wall_ms() ^ (uint64_t)getpid());
        }
        /* Keep ids positive in signed 64-bit for JSON consumers. */
        *id &= 0x7fffffffffffffffULL;
    } while (*id == 0);
    {
        char buf[160];
        int len =
            snprintf(buf, sizeof buf, "name=%s id=%016" PRIx64 "\n", name, *id);
        rv = fs_write_atomic(path, buf, (size_t)len);
        if (rv != 0) {
            errmsg_printf(errmsg, "data dir %.200s: cannot write identity",
                          dir);
            return rv;
        }
    }
    return 0;
}

int node_init(struct node *n, uv_loop_t *loop, const struct config *cfg)
{
    int rv;

    memset(n, 0, sizeof *n);
    n->loop = loop;
    n->cfg = *cfg;
    n->lock_fd = -1;
    n->sigint.data = n;
    n->sigterm.data = n;
    rv = node_lock_data_dir(cfg->data_dir, &n->lock_fd, n->errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = node_load_identity(cfg->data_dir, cfg->name, n->name, &n->id,
                            n->errmsg);
    if (rv != 0) {
        close(n->lock_fd);
        n->lock_fd = -1;
        return rv;
    }
    log_set_prefix(n->name);
    return 0;
}

/* ---- module wiring ---- */

#define NODE_M_RSM 1u
#define NODE_M_HTTPC 2u
#define NODE_M_HTTP 4u
#define NODE_M_GOSSIP 8u
#define NODE_M_TIMERS 16u
#define NODE_M_SCHED 32u
#define NODE_M_FIRE 64u

#define META_IN_CLUSTER GOSSIP_META_IN_CLUSTER
#define TICK_MS 200

/* --- forwarding proposals to the leader over HTTP ----------------------- */

struct forward
{
    rsm_forward_done done;
    void *req;
};

static void forward_resp_cb(struct httpc_resp *resp, void *data)
{
    struct forward *fw = data;
    struct rsm_result *results = NULL;
    unsigned n = 0;
    int rv = ERR_UNAVAILABLE;
    json_t *j = NULL;
    json_t *arr;

    if (resp->status == 421) {
        rv = ERR_NOTLEADER;
        goto out;
    }
    if (resp->status != 200) {
        goto out;
    }
    j = json_loadb(resp->body, resp->len, 0, NULL);
    arr = json_object_get(j, "results");
    if (!json_is_array(arr)) {
        goto out;
    }
    n = (unsigned)json_array_size(arr);
    results = calloc(n + 1, sizeof *results);
    if (results == NULL) {
        rv = ERR_NOMEM;
        goto out;
    }
    for (unsigned i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        const char *msg = json_string_value(json_object_get(o, "message"));
        results[i].code = (int)json_integer_value(json_object_get(o, "code"));
        results[i].value =
            (uint64_t)json_integer_value(json_object_get(o, "value"));
        results[i].index =
            (uint64_t)json_integer_value(json_object_get(o, "index"));
        str_copy(results[i].message, sizeof results[i].message,
                 msg != NULL ? msg : "");
    }
    rv = 0;
out:
    fw->done(fw->req, rv, results, rv == 0 ? n : 0);
    free(results);
    json_decref(j);
    free(fw);
}

static const char *api_addr_of(struct node *n, uint64_t id)
{
    const struct gossip_member *m = gossip_find_id(&n->gossip, id);
    const struct rsm_member *rm;
    if (m != NULL && m->api[0] != '\0') {
        return m->api;
    }
    rm = rsm_fsm_member(rsm_state(n->rsm), id);
    if (rm != NULL && rm->api[0] != '\0') {
        return rm->api;
    }
    return NULL;
}

static int forward_cb(struct rsm *r,
                      uint64_t leader_id,
                      const void *buf,
                      size_t len,
                      rsm_forward_done done,
                      void *req,
                      void *ud)
{
    struct node *n = ud;
    static const char *const headers[] = {
        "Content-Type: application/octet-stream", NULL};
    const char *api = api_addr_of(n, leader_id);
    struct forward *fw;
    char url[96];
    int rv;

    UNUSED(r);
    if (api == NULL) {
        return ERR_UNAVAILABLE;
    }
    fw = malloc(sizeof *fw);
    if (fw == NULL) {
        return ERR_NOMEM;
    }
    fw->done = done;
    fw->req = req;
    snprintf(url, sizeof url, "http://%s/internal/v1/propose", api);
    n->forward_seq++;
    rv = httpc_request(&n->httpc, "POST", url, buf, len, headers,
                       n->cfg.election_ms * 3 + 1000, forward_resp_cb, fw);
    if (rv != 0) {
        free(fw);
    }
    return rv;
}

/* --- membership: bootstrap, registration, voter management ------------- */

static void applied_cb(struct rsm *r,
                       const struct rsm_cmd *cmd,
                       const struct rsm_result *res,
                       void *ud)
{
    struct node *n = ud;
    UNUSED(r);
    if (n->started & NODE_M_SCHED) {
        sched_on_applied(&n->sched, cmd, res);
    }
    if (n->started & NODE_M_FIRE) {
        fire_on_applied(&n->fire, cmd, res);
    }
    if (n->started & NODE_M_HTTP) {
        api_on_applied(&n->api, cmd, res);
    }
}

static void role_cb(struct rsm *r, void *ud)
{
    struct node *n = ud;
    UNUSED(r);
    if (n->started & NODE_M_FIRE) {
        fire_on_role(&n->fire);
    }
}

/* The scheduler's view of the cluster: gossip members (alive, load, tags,
 * draining); sched checks leases against the replicated state itself. */
static unsigned peers_cb(void *ud, struct sched_peer *out, unsigned max)
{
    struct node *n = ud;
    unsigned total = gossip_count(&n->gossip);
    unsigned k = 0;
    for (unsigned i = 0; i < total && k < max; i++) {
        const struct gossip_member *m = gossip_member_at(&n->gossip, i);
        struct sched_peer *p = &out[k++];
        memset(p, 0, sizeof *p);
        p->id = m->id;
        p->slots = m->load.slots;
        p->running = m->load.running;
        p->alive = m->state == GOSSIP_ALIVE;
        p->draining = (m->meta & GOSSIP_META_DRAINING) != 0;
        for (unsigned t = 0; t < m->n_tags && t < SCHED_TAGS_MAX; t++) {
            str_copy(p->tags[t].key, sizeof p->tags[t].key, m->tags[t].key);
            str_copy(p->tags[t].value, sizeof p->tags[t].value,
                     m->tags[t].value);
            p->n_tags = t + 1;
        }
    }
    return k;
}

static void member_changed_cb(struct gossip *g,
                              const struct gossip_member *m,
                              enum gossip_state old,
                              void *data)
{
    struct node *n = data;
    UNUSED(g);
    UNUSED(old);
    rsm_member_seen(n->rsm, m->id, m->raft, m->state == GOSSIP_ALIVE);
}

static void fatal_raft(struct node *n, const char *what, int rv);

/* Start raft without a configuration: the leader adds this node (as a
 * spare, then standby or voter) once gossip shows it alive. */
static void join_existing(struct node *n)
{
    int rv = rsm_join(n->rsm);
    if (rv != 0) {
        fatal_raft(n, "raft join", rv);
        return;
    }
    n->raft_running = 1;
    LOGI("node", "waiting to be added to the cluster by its leader");
}

static int cmp_server(const void *a, const void *b)
{
    const struct rsm_server *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* --bootstrap-expect N: once N alive members (self included) have met and
 * none of them is already part of a cluster, every one of them bootstraps
 * the same sorted configuration. A node that sees an existing cluster waits
 * to be added by its leader instead (docs/raft.md). */
static void maybe_bootstrap(struct node *n)
{
    struct rsm_server servers[64];
    unsigned count = 0;
    unsigned total = gossip_count(&n->gossip);
    int rv;

    if (n->raft_running || rsm_has_state(n->rsm)) {
        return;
    }
    if (n->cfg.bootstrap_expect == 0) {
        if (n->cfg.n_join > 0) {
            join_existing(n); /* the leader adds us */
            return;
        }
        servers[0].id = n->id;
        addr_format(&n->cfg.raft, servers[0].raft);
        count = 1;
    } else {
        unsigned in_cluster = 0;
        int self_in = 0;
        for (unsigned i = 0; i < total; i++) {
            const struct gossip_member *m = gossip_member_at(&n->gossip, i);
            if (m->state != GOSSIP_ALIVE) {
                continue;
            }
            if (m->id != n->id && (m->meta & META_IN_CLUSTER) != 0) {
                in_cluster++;
            }
            if (count < ARRAY_SIZE(servers)) {
                servers[count].id = m->id;
                str_copy(servers[count].raft, sizeof servers[count].raft,
                         m->raft);
                count++;
            }
        }
        if (in_cluster >= n->cfg.bootstrap_expect) {
            join_existing(n); /* a full cluster exists: be added to it */
            return;
        }
        if (count < n->cfg.bootstrap_expect) {
            return; /* keep waiting for the others */
        }
        /* Every node that sees the same N lowest ids bootstraps the same
         * configuration; a peer that bootstrapped a moment earlier (and so
         * already reports META_IN_CLUSTER) is part of that same set. */
        qsort(servers, count, sizeof servers[0], cmp_server);
        count = n->cfg.bootstrap_expect;
        for (unsigned i = 0; i < count; i++) {
            self_in |= servers[i].id == n->id;
        }
        if (!self_in) {
            join_existing(n); /* more nodes than expected: the first N form
                               * the cluster and add the rest */
            return;
        }
    }
    rv = rsm_bootstrap(n->rsm, servers, count);
    if (rv != 0) {
        fatal_raft(n, "raft bootstrap", rv);
        return;
    }
    n->raft_running = 1;
    LOGI("node", "bootstrapped a %u-voter cluster", count);
}

static void registered_cb(void *data, int rv, const struct rsm_result *res)
{
    struct node *n = data;
    n->registering = 0;
    if (rv == 0 && res->code == 0) {
        n->registered = 1;
    } else if (!n->closing) {
        LOGD("node", "registration not applied yet: %s",
             rv != 0 ? err_str(rv) : res->message);
    }
}

/* Keep our row in the replicated members table (name, addresses) current:
 * /v1/cluster, forwarding and leases read it. */
static void maybe_register(struct node *n)
{
    const struct rsm_member *me;
    char api[ADDR_STRLEN], raft[ADDR_STRLEN], gossip[ADDR_STRLEN];
    struct rsm_cmd cmd;

    if (n->registering || rsm_leader_id(n->rsm) == 0) {
        return;
    }
    addr_format(&n->cfg.api, api);
    addr_format(&n->cfg.raft, raft);
    addr_format(&n->cfg.gossip, gossip);
    me = rsm_fsm_member(rsm_state(n->rsm), n->id);
    if (me != NULL && strcmp(me->name, n->name) == 0 &&
        strcmp(me->api, api) == 0 && strcmp(me->raft, raft) == 0 &&
        strcmp(me->gossip, gossip) == 0) {
        n->registered = 1;
        return;
    }
    rsm_cmd_init(&cmd, RSM_CMD_MEMBER_PUT);
    cmd.u.member_put.id = n->id;
    str_copy(cmd.u.member_put.name, sizeof cmd.u.member_put.name, n->name);
    str_copy(cmd.u.member_put.api, sizeof cmd.u.member_put.api, api);
    str_copy(cmd.u.member_put.raft, sizeof cmd.u.member_put.raft, raft);
    str_copy(cmd.u.member_put.gossip, sizeof cmd.u.member_put.gossip, gossip);
    n->registering = 1;
    if (rsm_propose(n->rsm, &cmd, registered_cb, n) != 0) {
        n->registering = 0;
    }
}

/* Publish this node's load in gossip. Values are quantised (load average
 * to 0.1, free memory to 64 MiB) so that the noise of a busy machine does
 * not turn into a broadcast every tick: gossip disseminates a load record
 * only when it changes (docs/gossip.md). */
static void update_load(struct node *n)
{
    struct gossip_load load;
    double avg[1];
    struct sysinfo si;

    memset(&load, 0, sizeof load);
    load.slots = n->cfg.slots;
    if (n->started & NODE_M_SCHED) {
        load.running = sched_running(&n->sched);
    }
    if (getloadavg(avg, 1) == 1 && avg[0] >= 0) {
        load.load1_milli = (uint32_t)(avg[0] * 10.0 + 0.5) * 100u;
    }
    if (sysinfo(&si) == 0) {
        uint64_t kib = (uint64_t)si.freeram * (uint64_t)si.mem_unit / 1024u;
        load.mem_free_kib = kib / (64u * 1024u) * (64u * 1024u);
    }
    gossip_set_load(&n->gossip, &load);
}

static void tick_cb(uv_timer_t *t)
{
    struct node *n = t->data;
    unsigned total;
    if (n->closing) {
        return;
    }
    maybe_bootstrap(n);
    gossip_set_meta(&n->gossip, rsm_has_state(n->rsm) ? META_IN_CLUSTER : 0);
    maybe_register(n);
    update_load(n);
    /* Feed the full view now and then so that a new leader, which did not
     * see earlier gossip changes, learns every member. */
    total = gossip_count(&n->gossip);
    for (unsigned i = 0; i < total; i++) {
        const struct gossip_member *m = gossip_member_at(&n->gossip, i);
        rsm_member_seen(n->rsm, m->id, m->raft, m->state == GOSSIP_ALIVE);
    }
}

/* ---- start and close ---- */

static int check_schedule(const char *schedule, const char *tz, char *errmsg)
{
    struct cron_expr e;
    return cron_parse(&e, schedule[0] != '\0' ? schedule : "@daily", tz,
                      errmsg);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    struct node *n = h->data;
    LOGI("node", "received %s, shutting down", strsignal(signum));
    node_close(n, n->close_cb);
}

/* libraft binds the Raft address only when raft starts, which for a new
 * node waits for bootstrap or join: check it up front so that a port in use
 * is a start-up error with one line, like the API and gossip ports. */
static int probe_tcp_port(const struct addr *a, char *errmsg)
{
    struct sockaddr_in sa;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rv = 0;
    char buf[ADDR_STRLEN];
    if (fd < 0) {
        return 0; /* let raft report it */
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(a->port);
    inet_pton(AF_INET, a->host, &sa.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        addr_format(a, buf);
        errmsg_printf(errmsg, "raft: bind %s: %s", buf, uv_strerror(-errno));
        rv = errno == EADDRINUSE ? ERR_INUSE : ERR_IO;
    }
    close(fd);
    return rv;
}

/* Raft could not start (bootstrap or join): nothing works without it, so
 * stop with a reason instead of retrying forever. */
static void fatal_raft(struct node *n, const char *what, int rv)
{
    LOGE("node", "%s failed: %s; stopping", what, err_str(rv));
    fprintf(stderr, "kiln agent: %s failed: %s\n", what, err_str(rv));
    n->exit_status = 1;
    node_close(n, n->close_cb);
}

int node_start(struct node *n)
{
    struct rsm_config rc;
    struct http_server_config hc;
    struct gossip_config gc;
    struct api_deps deps;
    char path[PATH_MAX + 16];
    int rv;

    uv_signal_init(n->loop, &n->sigint);
    uv_signal_init(n->loop, &n->sigterm);
    uv_timer_init(n->loop, &n->tick);
    n->tick.data = n;
    n->started |= NODE_M_TIMERS;
    uv_signal_start(&n->sigint, signal_cb, SIGINT);
    uv_signal_start(&n->sigterm, signal_cb, SIGTERM);

    /* 1. the replicated core */
    rv = probe_tcp_port(&n->cfg.raft, n->errmsg);
    if (rv != 0) {
        return rv;
    }
    rsm_config_defaults(&rc);
    rc.id = n->id;
    str_copy(rc.name, sizeof rc.name, n->name);
    rc.raft = n->cfg.raft;
    snprintf(path, sizeof path, "%s/raft", n->cfg.data_dir);
    str_copy(rc.dir, sizeof rc.dir, path);
    rc.election_ms = n->cfg.election_ms;
    rc.heartbeat_ms = n->cfg.heartbeat_ms;
    rc.segment_kib = n->cfg.segment_kib;
    rc.snapshot_threshold = n->cfg.snapshot_entries;
    rc.snapshot_trailing = n->cfg.snapshot_entries;
    rc.forward = forward_cb;
    rc.on_applied = applied_cb;
    rc.on_role = role_cb;
    rc.ud = n;
    n->rsm = rsm_create(n->loop, &rc, n->errmsg);
    if (n->rsm == NULL) {
        return ERR_IO;
    }
    n->started |= NODE_M_RSM;
    rv = rsm_start(n->rsm, n->errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = fire_init(&n->fire, n->loop, n->rsm);
    if (rv != 0) {
        errmsg_printf(n->errmsg, "fire: init: %s", err_str(rv));
        return rv;
    }
    n->started |= NODE_M_FIRE;

    /* 2. the forwarding client and the API server */
    rv = httpc_init(&n->httpc, n->loop);
    if (rv != 0) {
        errmsg_printf(n->errmsg, "httpc: init: %s", err_str(rv));
        return rv;
    }
    n->started |= NODE_M_HTTPC;
    http_server_config_defaults(&hc);
    hc.bind = n->cfg.api;
    rv = http_server_init(&n->http, n->loop, &hc);
    if (rv != 0) {
        errmsg_printf(n->errmsg, "api: init: %s", err_str(rv));
        return rv;
    }
    n->started |= NODE_M_HTTP;
    memset(&deps, 0, sizeof deps);
    deps.http = &n->http;
    deps.rsm = n->rsm;
    deps.gossip = &n->gossip;
    deps.node_name = n->name;
    deps.node_id = n->id;
    deps.sched = &n->sched;
    deps.check_schedule = check_schedule;
    rv = api_init(&n->api, &deps);
    if (rv != 0) {
        errmsg_printf(n->errmsg, "api: routes: %s", err_str(rv));
        return rv;
    }
    rv = http_server_start(&n->http, n->errmsg);
    if (rv != 0) {
        return rv;
    }

    /* 3. gossip */
    gossip_config_defaults(&gc);
    str_copy(gc.name, sizeof gc.name, n->name);
    gc.id = n->id;
    gc.bind = n->cfg.gossip;
    addr_format(&n->cfg.api, gc.api);
    addr_format(&n->cfg.raft, gc.raft);
    addr_format(&n->cfg.gossip, gc.gossip_addr);
    for (unsigned i = 0; i < n->cfg.n_tags && i < ARRAY_SIZE(gc.tags); i++) {
        str_copy(gc.tags[i].key, sizeof gc.tags[i].key, n->cfg.tags[i].key);
        str_copy(gc.tags[i].value, sizeof gc.tags[i].value,
                 n->cfg.tags[i].value);
        gc.n_tags = i + 1;
    }
    if (n->cfg.gossip_interval_ms != gc.probe_interval_ms) {
        /* Scale the other periods with the probe interval, keeping the
         * default ratios (docs/gossip.md). */
        unsigned p = n->cfg.gossip_interval_ms;
        gc.probe_interval_ms = p;
        gc.probe_timeout_ms = p * 2 / 5 > 5 ? p * 2 / 5 : 5;
        gc.gossip_interval_ms = p / 5 > 10 ? p / 5 : 10;
        gc.suspicion_min_ms = p * 3 / 2;
    }
    rv = gossip_init(&n->gossip, n->loop, &gc, n->errmsg);
    if (rv != 0) {
        return rv;
    }
    n->started |= NODE_M_GOSSIP;
    gossip_on_change(&n->gossip, member_changed_cb, n);
    rv = gossip_start(&n->gossip, n->errmsg);
    if (rv != 0) {
        return rv;
    }
    if (n->cfg.n_join > 0) {
        gossip_join(&n->gossip, n->cfg.join, n->cfg.n_join);
    }

    /* 4. the scheduler (owns the executor/fence helper) */
    {
        struct sched_config sc;
        sched_config_defaults(&sc);
        sc.node_id = n->id;
        str_copy(sc.node_name, sizeof sc.node_name, n->name);
        sc.slots = n->cfg.slots;
        for (unsigned i = 0; i < n->cfg.n_tags && i < SCHED_TAGS_MAX; i++) {
            str_copy(sc.tags[i].key, sizeof sc.tags[i].key, n->cfg.tags[i].key);
            str_copy(sc.tags[i].value, sizeof sc.tags[i].value,
                     n->cfg.tags[i].value);
            sc.n_tags = i + 1;
        }
        sc.lease_ms = n->cfg.lease_ms;
        snprintf(path, sizeof path, "%s/work", n->cfg.data_dir);
        str_copy(sc.work_root, sizeof sc.work_root, path);
        sc.peers = peers_cb;
        sc.peers_ud = n;
        rv = sched_init(&n->sched, n->loop, &sc, n->rsm, n->errmsg);
        if (rv != 0) {
            return rv;
        }
        n->started |= NODE_M_SCHED;
        rv = sched_start(&n->sched, n->errmsg);
        if (rv != 0) {
            return rv;
        }
    }
    update_load(n);

    uv_timer_start(&n->tick, tick_cb, 0, TICK_MS);
    {
        char api[ADDR_STRLEN];
        addr_format(&n->cfg.api, api);
        LOGI("node", "started: id %016" PRIx64 ", API http://%s, data dir %s",
             n->id, api, n->cfg.data_dir);
    }
    return 0;
}

/* The close chain: each step runs in the previous step's callback. */
static void close_step(struct node *n);

static void handle_closed_cb(uv_handle_t *h)
{
    struct node *n = h->data;
    n->pending_closes--;
    if (n->pending_closes == 0) {
        if (n->lock_fd >= 0) {
            close(n->lock_fd);
            n->lock_fd = -1;
        }
        LOGI("node", "stopped");
        if (n->close_cb != NULL) {
            n->close_cb(n);
        }
    }
}

static void fire_closed_cb(struct fire *f)
{
    struct node *n = (struct node *)((char *)f - offsetof(struct node, fire));
    n->started &= ~NODE_M_FIRE;
    close_step(n);
}

static void sched_closed_cb(struct sched *s)
{
    struct node *n = (struct node *)((char *)s - offsetof(struct node, sched));
    n->started &= ~NODE_M_SCHED;
    close_step(n);
}

static void http_closed_cb(struct http_server *s)
{
    struct node *n = (struct node *)((char *)s - offsetof(struct node, http));
    n->started &= ~NODE_M_HTTP;
    close_step(n);
}

static void gossip_closed_cb(struct gossip *g)
{
    struct node *n = (struct node *)((char *)g - offsetof(struct node, gossip));
    n->started &= ~NODE_M_GOSSIP;
    close_step(n);
}

static void httpc_closed_cb(struct httpc *c)
{
    struct node *n = (struct node *)((char *)c - offsetof(struct node, httpc));
    n->started &= ~NODE_M_HTTPC;
    close_step(n);
}

static void rsm_closed_cb(struct rsm *r, void *data)
{
    struct node *n = data;
    UNUSED(r);
    n->rsm = NULL;
    n->started &= ~NODE_M_RSM;
    close_step(n);
}

static void close_step(struct node *n)
{
    if (n->started & NODE_M_SCHED) {
        sched_close(&n->sched, sched_closed_cb);
        return;
    }
    if (n->started & NODE_M_HTTP) {
        api_shutdown(&n->api);
        http_server_close(&n->http, http_closed_cb);
        return;
    }
    if (n->started & NODE_M_GOSSIP) {
        gossip_close(&n->gossip, gossip_closed_cb);
        return;
    }
    if (n->started & NODE_M_HTTPC) {
        httpc_close(&n->httpc, httpc_closed_cb);
        return;
    }
    if (n->started & NODE_M_FIRE) {
        fire_close(&n->fire, fire_closed_cb);
        return;
    }
    if (n->started & NODE_M_RSM) {
        rsm_close(n->rsm, rsm_closed_cb, n);
        return;
    }
    if (n->started & NODE_M_TIMERS) {
        n->started &= ~NODE_M_TIMERS;
        n->pending_closes = 3;
        uv_close((uv_handle_t *)&n->tick, handle_closed_cb);
        uv_close((uv_handle_t *)&n->sigint, handle_closed_cb);
        uv_close((uv_handle_t *)&n->sigterm, handle_closed_cb);
        return;
    }
    n->pending_closes = 1;
    handle_closed_cb((uv_handle_t *)&n->sigint);
}

void node_close(struct node *n, node_close_cb cb)
{
    if (n->closing) {
        return;
    }
    n->closing = 1;
    n->close_cb = cb;
    if (n->started & NODE_M_TIMERS) {
        uv_timer_stop(&n->tick);
    }
    close_step(n);
}
