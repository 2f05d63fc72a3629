/* The replicated state machine: tables and the deterministic apply of
 * committed entries (STYLE.md 8.6: no clocks, no randomness, no addresses,
 * no hash-iteration order in anything observable). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "raft/rsm_int.h"
#include "util.h"

/* ---------------------------------------------------------- sorted vectors */

int rsm__vec_insert(struct rsm__vec *v, unsigned pos, void *p)
{
    if (v->n == v->cap) {
        unsigned cap = v->cap == 0 ? 16 : v->cap * 2;
        void **nv;
        if (cap < v->cap) {
            return ERR_NOMEM;
        }
        nv = realloc(v->v, (size_t)cap * sizeof *nv);
        if (nv == NULL) {
            return ERR_NOMEM;
        }
        v->v = nv;
        v->cap = cap;
    }
    memmove(&v->v[pos + 1], &v->v[pos], (size_t)(v->n - pos) * sizeof *v->v);
    v->v[pos] = p;
    v->n++;
    return 0;
}

void rsm__vec_remove(struct rsm__vec *v, unsigned pos)
{
    memmove(&v->v[pos], &v->v[pos + 1],
            (size_t)(v->n - pos - 1) * sizeof *v->v);
    v->n--;
}

void rsm__vec_free(struct rsm__vec *v)
{
    free(v->v);
    v->v = NULL;
    v->n = 0;
    v->cap = 0;
}

/* First position whose member id is >= id. */
static unsigned member_pos(const struct rsm__vec *v, uint64_t id)
{
    unsigned lo = 0;
    unsigned hi = v->n;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (((const struct rsm_member *)v->v[mid])->id < id) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* First position whose pipeline name is >= name. */
static unsigned pipeline_pos(const struct rsm__vec *v, const char *name)
{
    unsigned lo = 0;
    unsigned hi = v->n;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (strcmp(((const struct rsm_pipeline *)v->v[mid])->spec.name, name) <
            0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* ------------------------------------------------------------------ tables */

void rsm__fsm_init(struct rsm_fsm *f)
{
    memset(f, 0, sizeof *f);
    map_init(&f->members, MAP_U64);
    map_init(&f->pipelines, MAP_STR);
    map_init(&f->idem, MAP_STR);
    map_init(&f->jobs, MAP_U64);
    map_init(&f->run_groups, MAP_STR);
    f->jobs_max_finished = RSM_JOBS_MAX_FINISHED;
    f->jobs_max_age_ms = RSM_JOBS_MAX_AGE_MS;
    f->chain = RSM_CHAIN_SEED;
}

static void pipeline_free(struct rsm_pipeline *p)
{
    rsm_spec_clear(&p->spec);
    free(p);
}

void rsm__fsm_clear(struct rsm_fsm *f)
{
    unsigned max_finished = f->jobs_max_finished;
    int64_t max_age_ms = f->jobs_max_age_ms;
    rsm__runs_clear(f);
    rsm__jobs_clear(f);
    for (unsigned i = 0; i < f->members_by_id.n; i++) {
        free(f->members_by_id.v[i]);
    }
    for (unsigned i = 0; i < f->pipelines_by_name.n; i++) {
        pipeline_free(f->pipelines_by_name.v[i]);
    }
    for (unsigned i = f->idem_head; i < f->idem_order.n; i++) {
        free(f->idem_order.v[i]);
    }
    map_close(&f->members);
    map_close(&f->pipelines);
    map_close(&f->idem);
    rsm__vec_free(&f->members_by_id);
    rsm__vec_free(&f->pipelines_by_name);
    rsm__vec_free(&f->idem_order);
    rsm__fsm_init(f);
    rsm__fsm_set_job_retention(f, max_finished, max_age_ms);
}

int rsm_fsm_create(struct rsm_fsm **out)
{
    *out = malloc(sizeof **out);
    if (*out == NULL) {
        return ERR_NOMEM;
    }
    rsm__fsm_init(*out);
    return 0;
}

void rsm_fsm_destroy(struct rsm_fsm *f)
{
    if (f == NULL) {
        return;
    }
    rsm__fsm_clear(f);
    free(f);
}

int rsm__fsm_put_member(struct rsm_fsm *f, struct rsm_member *m)
{
    unsigned pos = member_pos(&f->members_by_id, m->id);
    int rv;
    if (map_get_u64(&f->members, m->id) != NULL) {
        return ERR_INVALID;
    }
    rv = rsm__vec_insert(&f->members_by_id, pos, m);
    if (rv != 0) {
        return rv;
    }
    rv = map_put_u64(&f->members, m->id, m, NULL);
    if (rv != 0) {
        rsm__vec_remove(&f->members_by_id, pos);
    }
    return rv;
}

int rsm__fsm_put_pipeline(struct rsm_fsm *f, struct rsm_pipeline *p)
{
    unsigned pos = pipeline_pos(&f->pipelines_by_name, p->spec.name);
    int rv;
    if (map_get_str(&f->pipelines, p->spec.name) != NULL) {
        return ERR_INVALID;
    }
    rv = rsm__vec_insert(&f->pipelines_by_name, pos, p);
    if (rv != 0) {
        return rv;
    }
    rv = map_put_str(&f->pipelines, p->spec.name, p, NULL);
    if (rv != 0) {
        rsm__vec_remove(&f->pipelines_by_name, pos);
    }
    return rv;
}

static void pipeline_remove(struct rsm_fsm *f, struct rsm_pipeline *p)
{
    unsigned pos = pipeline_pos(&f->pipelines_by_name, p->spec.name);
    map_del_str(&f->pipelines, p->spec.name);
    rsm__vec_remove(&f->pipelines_by_name, pos);
    pipeline_free(p);
}

/* ---------------------------------------------------- idempotency keys */

static int idem_cmp(const struct rsm__idem *a, const struct rsm__idem *b)
{
    if (a->time_ms != b->time_ms) {
        return a->time_ms < b->time_ms ? -1 : 1;
    }
    return strcmp(a->key, b->key);
}

static unsigned idem_live(const struct rsm_fsm *f)
{
    return f->idem_order.n - f->idem_head;
}

/* Drop the oldest key (the head of the (time, key) order). */
static void idem_pop(struct rsm_fsm *f)
{
    struct rsm__idem *e = f->idem_order.v[f->idem_head++];
    map_del_str(&f->idem, e->key);
    free(e);
    if (f->idem_head == f->idem_order.n) {
        f->idem_order.n = 0;
        f->idem_head = 0;
    } else if (f->idem_head >= 1024 && f->idem_head * 2 >= f->idem_order.n) {
        memmove(f->idem_order.v, &f->idem_order.v[f->idem_head],
                (size_t)idem_live(f) * sizeof *f->idem_order.v);
        f->idem_order.n -= f->idem_head;
        f->idem_head = 0;
    }
}

/* Deterministic pruning, run before each insert: first every key older
 * than RSM_IDEM_TTL_MS by the FSM clock, then oldest-first by (time, key)
 * until there is room for one more under RSM_IDEM_KEEP. */
static void idem_prune(struct rsm_fsm *f)
{
    while (idem_live(f) > 0) {
        const struct rsm__idem *e = f->idem_order.v[f->idem_head];
        if (f->clock - e->time_ms > RSM_IDEM_TTL_MS ||
            idem_live(f) >= RSM_IDEM_KEEP) {
            idem_pop(f);
        } else {
            break;
        }
    }
}

int rsm__fsm_push_idem(struct rsm_fsm *f, struct rsm__idem *e)
{
    unsigned pos = f->idem_order.n;
    int rv;
    if (map_get_str(&f->idem, e->key) != NULL) {
        return ERR_INVALID;
    }
    while (pos > f->idem_head && idem_cmp(f->idem_order.v[pos - 1], e) > 0) {
        pos--;
    }
    rv = rsm__vec_insert(&f->idem_order, pos, e);
    if (rv != 0) {
        return rv;
    }
    rv = map_put_str(&f->idem, e->key, e, NULL);
    if (rv != 0) {
        rsm__vec_remove(&f->idem_order, pos);
    }
    return rv;
}

/* ------------------------------------------------------------------- apply */

static void result_set(struct rsm_result *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void result_set(struct rsm_result *r, int code, const char *fmt, ...)
{
    va_list ap;
    r->code = code;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
}

static bool strv_has(const struct rsm_strv *v, const char *s)
{
    for (unsigned i = 0; i < v->n; i++) {
        if (strcmp(v->v[i], s) == 0) {
            return true;
        }
    }
    return false;
}

/* A frame of the cycle search: a pipeline and its next edge to follow. */
struct dfs_frame
{
    const char *name;
    const struct rsm_strv *after;
    unsigned next;
};

/* Check spec->after against the table as it would be with spec stored:
 * every name known, and no path back to spec->name. The stored graph is
 * acyclic (an invariant of apply), so only cycles through spec->name can
 * appear. Edges are followed in their stored order: deterministic. */
static int check_after(const struct rsm_fsm *f,
                       const struct rsm_pipeline_spec *spec,
                       struct rsm_result *res)
{
    struct dfs_frame *stack = NULL;
    struct map seen;
    unsigned depth = 0;
    int rv = 0;
    for (unsigned i = 0; i < spec->after.n; i++) {
        if (strcmp(spec->after.v[i], spec->name) == 0) {
            result_set(res, ERR_INVALID, "after: cycle %s -> %s", spec->name,
                       spec->name);
            return 0;
        }
    }
    for (unsigned i = 0; i < spec->after.n; i++) {
        if (map_get_str(&f->pipelines, spec->after.v[i]) == NULL) {
            result_set(res, ERR_INVALID, "after: unknown pipeline '%s'",
                       spec->after.v[i]);
            return 0;
        }
    }
    if (spec->after.n == 0) {
        return 0;
    }
    map_init(&seen, MAP_STR);
    stack = calloc((size_t)f->pipelines_by_name.n + 2, sizeof *stack);
    if (stack == NULL) {
        return ERR_NOMEM;
    }
    stack[depth++] = (struct dfs_frame){spec->name, &spec->after, 0};
    while (depth > 0) {
        struct dfs_frame *top = &stack[depth - 1];
        const struct rsm_pipeline *p;
        const char *child;
        if (top->next == top->after->n) {
            depth--;
            continue;
        }
        child = top->after->v[top->next++];
        if (strcmp(child, spec->name) == 0) {
            size_t off = 0;
            char *m = res->message;
            res->code = ERR_INVALID;
            off += (size_t)snprintf(m, sizeof res->message, "after: cycle");
            for (unsigned i = 0; i < depth && off < sizeof res->message; i++) {
                off += (size_t)snprintf(m + off, sizeof res->message - off,
                                        " %s ->", stack[i].name);
            }
            if (off < sizeof res->message) {
                snprintf(m + off, sizeof res->message - off, " %s", child);
            }
            goto out;
        }
        if (map_get_str(&seen, child) != NULL) {
            continue;
        }
        p = map_get_str(&f->pipelines, child);
        if (p == NULL) {
            continue; /* only spec->name itself may be absent */
        }
        rv = map_put_str(&seen, child, (void *)p, NULL);
        if (rv != 0) {
            goto out;
        }
        stack[depth++] = (struct dfs_frame){p->spec.name, &p->spec.after, 0};
    }
out:
    map_close(&seen);
    free(stack);
    return rv;
}

static int apply_member_put(struct rsm_fsm *f,
                            struct rsm_cmd *c,
                            struct rsm_result *res)
{
    const struct rsm_member *in = &c->u.member_put;
    struct rsm_member *m;
    int rv;
    for (unsigned i = 0; i < f->members_by_id.n; i++) {
        const struct rsm_member *o = f->members_by_id.v[i];
        if (o->id != in->id && strcmp(o->name, in->name) == 0) {
            result_set(res, ERR_CONFLICT,
                       "node name '%s' is taken by node %llu", in->name,
                       (unsigned long long)o->id);
            return 0;
        }
    }
    m = map_get_u64(&f->members, in->id);
    if (m != NULL) {
        *m = *in;
        res->value = 0;
        return 0;
    }
    m = malloc(sizeof *m);
    if (m == NULL) {
        return ERR_NOMEM;
    }
    *m = *in;
    rv = rsm__fsm_put_member(f, m);
    if (rv != 0) {
        free(m);
        return rv;
    }
    res->value = 1;
    return 0;
}

static int apply_pipeline_create(struct rsm_fsm *f,
                                 struct rsm_cmd *c,
                                 struct rsm_result *res)
{
    struct rsm_pipeline_spec *spec = &c->u.pipeline_create;
    struct rsm_pipeline *p;
    int rv;
    if (map_get_str(&f->pipelines, spec->name) != NULL) {
        result_set(res, ERR_CONFLICT, "pipeline '%s' already exists",
                   spec->name);
        return 0;
    }
    rv = check_after(f, spec, res);
    if (rv != 0 || res->code != 0) {
        return rv;
    }
    p = calloc(1, sizeof *p);
    if (p == NULL) {
        return ERR_NOMEM;
    }
    p->spec = *spec; /* steal: the command is ours and cleared below */
    p->version = 1;
    p->created_ms = f->clock;
    p->updated_ms = f->clock;
    p->fire_cursor_ms = f->clock; /* nothing to catch up before creation */
    rv = rsm__fsm_put_pipeline(f, p);
    if (rv != 0) {
        free(p);
        return rv;
    }
    memset(spec, 0, sizeof *spec);
    res->value = p->version;
    return 0;
}

static int apply_pipeline_update(struct rsm_fsm *f,
                                 struct rsm_cmd *c,
                                 struct rsm_result *res)
{
    struct rsm_pipeline_spec *spec = &c->u.pipeline_update.spec;
    uint64_t expect = c->u.pipeline_update.expect_version;
    struct rsm_pipeline *p = map_get_str(&f->pipelines, spec->name);
    int rv;
    if (p == NULL) {
        result_set(res, ERR_NOTFOUND, "pipeline '%s' not found", spec->name);
        return 0;
    }
    if (expect != 0 && expect != p->version) {
        result_set(res, ERR_CONFLICT,
                   "pipeline '%s' is at version %llu, not %llu", spec->name,
                   (unsigned long long)p->version, (unsigned long long)expect);
        return 0;
    }
    rv = check_after(f, spec, res);
    if (rv != 0 || res->code != 0) {
        return rv;
    }
    rsm_spec_clear(&p->spec);
    p->spec = *spec; /* steal; same name, so the map key is unchanged */
    memset(spec, 0, sizeof *spec);
    p->version++;
    p->updated_ms = f->clock;
    res->value = p->version;
    return 0;
}

static int apply_pipeline_delete(struct rsm_fsm *f,
                                 struct rsm_cmd *c,
                                 struct rsm_result *res)
{
    const char *name = c->u.pipeline_delete.name;
    struct rsm_pipeline *p = map_get_str(&f->pipelines, name);
    size_t off = 0;
    unsigned n_dep = 0;
    if (p == NULL) {
        result_set(res, ERR_NOTFOUND, "pipeline '%s' not found", name);
        return 0;
    }
    /* Dependents in name order (the sorted vector), never map order. */
    for (unsigned i = 0; i < f->pipelines_by_name.n; i++) {
        const struct rsm_pipeline *o = f->pipelines_by_name.v[i];
        if (!strv_has(&o->spec.after, name)) {
            continue;
        }
        if (n_dep == 0) {
            res->code = ERR_CONFLICT;
            off = (size_t)snprintf(res->message, sizeof res->message,
                                   "pipeline '%s' is needed by: %s", name,
                                   o->spec.name);
        } else if (off < sizeof res->message) {
            off +=
                (size_t)snprintf(res->message + off, sizeof res->message - off,
                                 ", %s", o->spec.name);
        }
        n_dep++;
    }
    if (n_dep > 0) {
        return 0;
    }
    res->value = p->version;
    rsm__runs_pipeline_deleted(f, name); /* before name's storage goes */
    pipeline_remove(f, p);
    return 0;
}

/* DIGEST: this node's record (the entry's index, the chain before the
 * entry, the state hash now). Never fails, never rejects: the carried
 * record is only kept for the runtime to compare (outside the state). */
static void apply_digest(struct rsm_fsm *f,
                         const struct rsm_cmd *c,
                         struct rsm_result *res)
{
    f->digest_last.index = res->index;
    f->digest_last.chain = f->chain_before;
    f->digest_last.state = rsm_fsm_digest(f);
    if (f->n_carried < RSM_DIGEST_CARRIED_MAX) {
        struct rsm_digest *d = &f->carried[f->n_carried++];
        d->index = c->u.digest.prev_index;
        d->chain = c->u.digest.prev_chain;
        d->state = c->u.digest.prev_state;
    }
    res->value = f->digest_last.state;
}

static int apply_cmd(struct rsm_fsm *f,
                     struct rsm_cmd *c,
                     struct rsm_result *res)
{
    switch (c->type) {
        case RSM_CMD_NOOP:
            return 0;
        case RSM_CMD_MEMBER_PUT:
            return apply_member_put(f, c, res);
        case RSM_CMD_PIPELINE_CREATE:
            return apply_pipeline_create(f, c, res);
        case RSM_CMD_PIPELINE_UPDATE:
            return apply_pipeline_update(f, c, res);
        case RSM_CMD_PIPELINE_DELETE:
            return apply_pipeline_delete(f, c, res);
        case RSM_CMD_JOB_SUBMIT:
        case RSM_CMD_JOB_CLAIM:
        case RSM_CMD_JOB_START:
        case RSM_CMD_JOB_OUTPUT:
        case RSM_CMD_JOB_FINISH:
        case RSM_CMD_JOB_CANCEL:
        case RSM_CMD_NODE_RENEW:
        case RSM_CMD_NODE_EXPIRE:
            return rsm__apply_job(f, c, res);
        case RSM_CMD_PIPELINE_FIRE:
        case RSM_CMD_RUN_MANUAL:
        case RSM_CMD_RUN_RETRY:
            return rsm__apply_run(f, c, res);
        case RSM_CMD_DIGEST:
            apply_digest(f, c, res);
            return 0;
        default:
            result_set(res, ERR_MALFORMED, "unknown command type %u",
                       (unsigned)c->type);
            return 0;
    }
}

/* Apply one decoded command with idempotency handling. */
static int apply_one(struct rsm_fsm *f,
                     struct rsm_cmd *c,
                     struct rsm_result *res)
{
    struct rsm__idem *e = NULL;
    int rv;
    if (c->leader_time_ms > f->clock) {
        f->clock = c->leader_time_ms;
    }
    if (c->idem_key[0] != '\0') {
        const struct rsm__idem *old = map_get_str(&f->idem, c->idem_key);
        if (old != NULL) {
            if (old->type != c->type) {
                result_set(res, ERR_CONFLICT,
                           "idempotency key '%s' was used by a %s command",
                           c->idem_key, rsm_cmd_name(old->type));
            } else {
                *res = old->result; /* keeps the original index */
            }
            return 0;
        }
        /* Allocate up front so that a stored key never lags its effect. */
        e = calloc(1, sizeof *e);
        if (e == NULL) {
            return ERR_NOMEM;
        }
    }
    rv = apply_cmd(f, c, res);
    if (rv == 0) {
        /* Dependents of runs that succeeded, run retention. Its runs are
         * part of the command's effect, stored under the same key. */
        rv = rsm__runs_settle(f);
    }
    if (rv != 0 || e == NULL) {
        free(e);
        return rv;
    }
    memcpy(e->key, c->idem_key, sizeof e->key);
    e->type = c->type;
    e->time_ms = f->clock;
    e->result = *res;
    idem_prune(f);
    rv = rsm__fsm_push_idem(f, e);
    if (rv != 0) {
        free(e);
    }
    return rv;
}

int rsm_fsm_apply(struct rsm_fsm *f,
                  uint64_t index,
                  const void *buf,
                  size_t len,
                  struct rsm_result *results,
                  unsigned max,
                  unsigned *n_results)
{
    msgpack_unpacked u;
    const msgpack_object *objs = NULL;
    unsigned count = 0;
    int64_t entry_time = 0;
    char errmsg[ERRMSG_SIZE] = "";
    struct rsm_result scratch;
    int rv;
    *n_results = 0;
    f->n_carried = 0;
    f->chain_before = f->chain;
    msgpack_unpacked_init(&u);
    rv = rsm__entry_parse(buf, len, &u, &entry_time, &objs, &count, errmsg);
    if (rv == ERR_VERSION || rv == ERR_NOMEM) {
        LOGE("rsm", "entry %llu: %s", (unsigned long long)index, errmsg);
        goto out;
    }
    if (rv != 0) {
        /* Bad bytes: a no-op that still advances the index. */
        LOGW("rsm", "entry %llu applied as a no-op: %s",
             (unsigned long long)index, errmsg);
        if (max > 0) {
            memset(&results[0], 0, sizeof results[0]);
            results[0].index = index;
            result_set(&results[0], ERR_MALFORMED, "%s", errmsg);
            *n_results = 1;
        }
        f->last_index = index;
        f->chain = rsm_chain_step(f->chain_before, buf, len);
        rv = 0;
        goto out;
    }
    /* A newer command version anywhere refuses the whole entry before any
     * command is applied. */
    for (unsigned i = 0; i < count; i++) {
        const msgpack_object *o = &objs[i];
        if (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size > 0 &&
            o->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
            o->via.array.ptr[0].via.u64 > RSM_FORMAT_VERSION) {
            LOGE("rsm", "entry %llu: command %u has format version %llu > %d",
                 (unsigned long long)index, i,
                 (unsigned long long)o->via.array.ptr[0].via.u64,
                 RSM_FORMAT_VERSION);
            rv = ERR_VERSION;
            goto out;
        }
    }
    if (entry_time > f->clock) {
        f->clock = entry_time;
    }
    for (unsigned i = 0; i < count; i++) {
        struct rsm_result *res = i < max ? &results[i] : &scratch;
        struct rsm_cmd c;
        memset(res, 0, sizeof *res);
        res->index = index;
        rv = rsm_cmd_unpack(&objs[i], &c, errmsg);
        if (rv == ERR_NOMEM) {
            goto out;
        }
        if (rv != 0) {
            LOGW("rsm", "entry %llu command %u rejected: %s",
                 (unsigned long long)index, i, errmsg);
            result_set(res, ERR_MALFORMED, "%s", errmsg);
            rv = 0;
        } else {
            rv = apply_one(f, &c, res);
            rsm_cmd_clear(&c);
            if (rv != 0) {
                goto out;
            }
            rsm__jobs_retain(f); /* deterministic: state and FSM clock */
        }
        if (i < max) {
            *n_results = i + 1;
        }
    }
    rsm__jobs_retain(f); /* the entry's time may have aged jobs out */
    f->last_index = index;
    f->chain = rsm_chain_step(f->chain_before, buf, len);
out:
    msgpack_unpacked_destroy(&u);
    return rv;
}

/* --------------------------------------------------------------- accessors */

int64_t rsm_fsm_clock(const struct rsm_fsm *f)
{
    return f->clock;
}

uint64_t rsm_fsm_last_index(const struct rsm_fsm *f)
{
    return f->last_index;
}

/* Streaming FNV-1a over the packer's output: the same value as hash64
 * (seed 0) of the concatenated bytes, without building them. */
struct fnv_sink
{
    uint64_t h;
};

static int fnv_write(void *data, const char *buf, size_t len)
{
    struct fnv_sink *s = data;
    const unsigned char *b = (const unsigned char *)buf;
    uint64_t h = s->h;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    s->h = h;
    return 0;
}

uint64_t rsm_fsm_digest(const struct rsm_fsm *f)
{
    struct fnv_sink s = {0xcbf29ce484222325ULL};
    msgpack_packer pk;
    uint64_t h;
    msgpack_packer_init(&pk, &s, fnv_write);
    if (rsm__snap_pack_pk(f, &pk, false) != 0) {
        return 0; /* cannot happen: the sink never fails */
    }
    /* hash64's final avalanche (splitmix64). */
    h = s.h;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

uint64_t rsm_chain_step(uint64_t chain, const void *buf, size_t len)
{
    uint64_t h;
    if (chain == 0) {
        return 0; /* unknown stays unknown */
    }
    h = hash64(buf, len, chain);
    return h != 0 ? h : 1;
}

uint64_t rsm_fsm_chain(const struct rsm_fsm *f)
{
    return f->chain;
}

struct rsm_digest rsm_fsm_digest_last(const struct rsm_fsm *f)
{
    return f->digest_last;
}

unsigned rsm_fsm_digest_carried(const struct rsm_fsm *f,
                                struct rsm_digest *out,
                                unsigned max)
{
    for (unsigned i = 0; i < f->n_carried && i < max; i++) {
        out[i] = f->carried[i];
    }
    return f->n_carried;
}

void rsm__fsm_test_perturb(struct rsm_fsm *f,
                           uint64_t chain_xor,
                           uint64_t job_seq_add)
{
    f->chain ^= chain_xor;
    f->job_seq += job_seq_add;
}

const struct rsm_pipeline *rsm_fsm_pipeline(const struct rsm_fsm *f,
                                            const char *name)
{
    return map_get_str(&f->pipelines, name);
}

unsigned rsm_fsm_pipelines(const struct rsm_fsm *f,
                           const struct rsm_pipeline **out,
                           unsigned max)
{
    for (unsigned i = 0; i < f->pipelines_by_name.n && i < max; i++) {
        out[i] = f->pipelines_by_name.v[i];
    }
    return f->pipelines_by_name.n;
}

unsigned rsm_fsm_pipeline_count(const struct rsm_fsm *f)
{
    return f->pipelines_by_name.n;
}

const struct rsm_member *rsm_fsm_member(const struct rsm_fsm *f, uint64_t id)
{
    return map_get_u64(&f->members, id);
}

unsigned rsm_fsm_members(const struct rsm_fsm *f,
                         const struct rsm_member **out,
                         unsigned max)
{
    for (unsigned i = 0; i < f->members_by_id.n && i < max; i++) {
        out[i] = f->members_by_id.v[i];
    }
    return f->members_by_id.n;
}

/* "j42"/"r42" -> 42: the prefix, then a decimal without leading zeros. */
int rsm__id_parse(char prefix, const char *id, uint64_t *seq)
{
    uint64_t v = 0;
    const char *p;
    if (id == NULL || id[0] != prefix || id[1] < '1' || id[1] > '9') {
        return ERR_INVALID;
    }
    for (p = id + 1; *p != '\0'; p++) {
        unsigned d;
        if (*p < '0' || *p > '9' || p - id > 20) {
            return ERR_INVALID;
        }
        d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return ERR_INVALID;
        }
        v = v * 10 + d;
    }
    *seq = v;
    return 0;
}

void rsm__reject(struct rsm_result *r, int code, const char *fmt, ...)
{
    va_list ap;
    r->code = code;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
}

/* Room for `extra` more pointers in v (doubling); ERR_NOMEM. */
int rsm__vec_reserve(struct rsm__vec *v, unsigned extra)
{
    unsigned cap = v->cap == 0 ? 16 : v->cap;
    void **nv;
    if (v->n + extra < v->n) {
        return ERR_NOMEM;
    }
    while (cap < v->n + extra) {
        if (cap * 2 < cap) {
            return ERR_NOMEM;
        }
        cap *= 2;
    }
    if (cap == v->cap) {
        return 0;
    }
    nv = realloc(v->v, (size_t)cap * sizeof *nv);
    if (nv == NULL) {
        return ERR_NOMEM;
    }
    v->v = nv;
    v->cap = cap;
    return 0;
}
