/* In-process raft clusters on raft_fixture with the real FSM. */
#include "lib/cluster.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

struct cl *cl_create(unsigned n,
                     unsigned n_voters,
                     unsigned snap_threshold,
                     unsigned snap_trailing)
{
    struct raft_configuration conf;
    struct cl *c;
    unsigned i;
    int rv;

    cr_assert(n >= 1 && n <= CL_MAX && n_voters >= 1 && n_voters <= n);
    c = calloc(1, sizeof *c); /* zeroed: 0.15 leaves f.n uninitialised */
    cr_assert_not_null(c);
    c->n = n;
    c->clock = 1700000000000;
    rv = raft_fixture_initialize(&c->f);
    cr_assert_eq(rv, 0);
    for (i = 0; i < n; i++) {
        struct cl_node *node = &c->nodes[i];
        rv = rsm_fsm_create(&node->core);
        cr_assert_eq(rv, 0);
        rsm__adapter_init(&node->ad, node->core);
        rv = raft_fixture_grow(&c->f, &node->ad.fsm);
        cr_assert_eq(rv, 0);
        node->ad.raft = raft_fixture_get(&c->f, i);
        if (snap_threshold > 0) {
            raft_set_snapshot_threshold(node->ad.raft, snap_threshold);
            raft_set_snapshot_trailing(node->ad.raft, snap_trailing > 0
                                                          ? snap_trailing
                                                          : snap_threshold);
        }
        raft_set_pre_vote(node->ad.raft, true);
    }
    rv = raft_fixture_configuration(&c->f, n_voters, &conf);
    cr_assert_eq(rv, 0);
    rv = raft_fixture_bootstrap(&c->f, &conf);
    cr_assert_eq(rv, 0);
    raft_configuration_close(&conf);
    rv = raft_fixture_start(&c->f);
    cr_assert_eq(rv, 0);
    return c;
}

void cl_destroy(struct cl *c)
{
    unsigned i;
    raft_fixture_close(&c->f);
    for (i = 0; i < c->n; i++) {
        rsm_fsm_destroy(c->nodes[i].core);
    }
    free(c);
}

struct raft *cl_raft(struct cl *c, unsigned i)
{
    return raft_fixture_get(&c->f, i);
}

int cl_leader(struct cl *c)
{
    unsigned i;
    if (c->f.leader_id == 0) {
        return -1;
    }
    i = raft_fixture_leader_index(&c->f);
    return i < c->n ? (int)i : -1;
}

int cl_elect(struct cl *c, unsigned max_ms)
{
    if (!raft_fixture_step_until_has_leader(&c->f, max_ms)) {
        return -1;
    }
    return cl_leader(c);
}

static char *dupstr(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    cr_assert_not_null(d);
    memcpy(d, s, n);
    return d;
}

void cl_cmd_pipeline(struct rsm_cmd *cmd, const char *name)
{
    rsm_cmd_init(cmd, RSM_CMD_PIPELINE_CREATE);
    str_copy(cmd->u.pipeline_create.name, sizeof cmd->u.pipeline_create.name,
             name);
    cmd->u.pipeline_create.command.v = calloc(2, sizeof(char *));
    cr_assert_not_null(cmd->u.pipeline_create.command.v);
    cmd->u.pipeline_create.command.v[0] = dupstr("/bin/true");
    cmd->u.pipeline_create.command.n = 1;
}

static void cl_apply_cb(struct raft_apply *req, int status, void *result)
{
    struct cl_req *r = req->data;
    const struct rsm__adapter *a = result;
    unsigned i;

    r->done = true;
    r->status = status;
    r->index = req->index;
    if (status == 0 && a != NULL) {
        r->n_results = a->n_results;
        for (i = 0; i < a->n_results; i++) {
            r->results[i] = a->results[i];
        }
    }
}

int cl_propose(struct cl *c,
               unsigned i,
               const struct rsm_cmd *cmds,
               unsigned n,
               struct cl_req *req)
{
    struct raft_buffer buf;
    int rv;

    memset(req, 0, sizeof *req);
    rv = rsm_entry_encode(cmds, n, c->clock++, &buf.base, &buf.len);
    cr_assert_eq(rv, 0);
    cr_assert_eq(buf.len % 8, 0, "entry length %zu not padded", buf.len);
    req->apply.data = req;
    rv = raft_apply(cl_raft(c, i), &req->apply, &buf, 1, cl_apply_cb);
    if (rv != 0) {
        raft_free(buf.base);
    }
    return rv;
}

static bool done_stop(struct raft_fixture *f, void *arg)
{
    (void)f;
    return ((struct cl_req *)arg)->done;
}

bool cl_step_until_done(struct cl *c, struct cl_req *req, unsigned max_ms)
{
    return raft_fixture_step_until(&c->f, done_stop, req, max_ms);
}

struct applied_arg
{
    struct cl *c;
    uint64_t index;
};

static bool applied_stop(struct raft_fixture *f, void *arg)
{
    struct applied_arg *a = arg;
    unsigned i;
    for (i = 0; i < a->c->n; i++) {
        if (!raft_fixture_alive(f, i)) {
            continue;
        }
        if (raft_last_applied(raft_fixture_get(f, i)) < a->index) {
            return false;
        }
    }
    return true;
}

bool cl_step_until_applied(struct cl *c, uint64_t index, unsigned max_ms)
{
    struct applied_arg a = {c, index};
    return raft_fixture_step_until(&c->f, applied_stop, &a, max_ms);
}

void cl_step_ms(struct cl *c, unsigned ms)
{
    raft_fixture_step_until_elapsed(&c->f, ms);
}

uint64_t cl_create_pipeline(struct cl *c, const char *name, unsigned max_ms)
{
    struct rsm_cmd cmd;
    struct cl_req *req;
    uint64_t index = 0;
    int leader = cl_leader(c);

    if (leader < 0) {
        return 0;
    }
    req = calloc(1, sizeof *req);
    cr_assert_not_null(req);
    cl_cmd_pipeline(&cmd, name);
    if (cl_propose(c, (unsigned)leader, &cmd, 1, req) == 0 &&
        cl_step_until_done(c, req, max_ms) && req->status == 0 &&
        cl_step_until_applied(c, req->index, max_ms)) {
        index = req->index;
    }
    rsm_cmd_clear(&cmd);
    free(req);
    return index;
}

uint64_t cl_digest(struct cl *c, unsigned i)
{
    return rsm_fsm_digest(c->nodes[i].core);
}

const struct rsm_fsm *cl_fsm(struct cl *c, unsigned i)
{
    return c->nodes[i].core;
}

void cl_kill(struct cl *c, unsigned i)
{
    raft_fixture_kill(&c->f, i);
}

void cl_revive(struct cl *c, unsigned i)
{
    raft_fixture_revive(&c->f, i);
}

void cl_isolate(struct cl *c, unsigned i)
{
    unsigned j;
    for (j = 0; j < c->n; j++) {
        if (j != i) {
            raft_fixture_saturate(&c->f, i, j);
            raft_fixture_saturate(&c->f, j, i);
        }
    }
}

void cl_heal(struct cl *c, unsigned i)
{
    unsigned j;
    for (j = 0; j < c->n; j++) {
        if (j != i) {
            raft_fixture_desaturate(&c->f, i, j);
            raft_fixture_desaturate(&c->f, j, i);
        }
    }
}
