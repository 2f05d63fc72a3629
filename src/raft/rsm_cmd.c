/* Command codec: msgpack envelopes, entry batches padded to 8 bytes, and
 * strict validation of everything decoded. */
#include <lz4.h>
#include <raft.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mpcheck.h"
#include "raft/rsm_int.h"
#include "util.h"

#define ENV_KEY_MAX RSM_NAME_MAX
#define TAG_VALUE_MAX RSM_NAME_MAX
#define TARGET_MAX RSM_NAME_MAX
#define MP_DEPTH_MAX 16 /* our formats nest at most ~6 deep */

/* Fields after [version, type, leader_time_ms, idem_key], per type. */
#define ENVELOPE_HEAD 4

const char *rsm_cmd_name(unsigned type)
{
    switch (type) {
#define RSM__CMD_CASE(name, code, text) \
    case code:                          \
        return text;
        RSM_CMD_MAP(RSM__CMD_CASE)
#undef RSM__CMD_CASE
        default:
            return "unknown";
    }
}

/* ---------------------------------------------------------------- memory */

static void strv_clear(struct rsm_strv *v)
{
    if (v->v != NULL) {
        for (unsigned i = 0; i < v->n; i++) {
            free(v->v[i]);
        }
        free(v->v);
    }
    v->v = NULL;
    v->n = 0;
}

static int strv_alloc(struct rsm_strv *v, unsigned n)
{
    v->v = calloc((size_t)n + 1, sizeof *v->v);
    v->n = 0;
    return v->v == NULL ? ERR_NOMEM : 0;
}

static int strv_copy(struct rsm_strv *dst, const struct rsm_strv *src)
{
    if (strv_alloc(dst, src->n) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < src->n; i++) {
        dst->v[i] = strdup(src->v[i] != NULL ? src->v[i] : "");
        if (dst->v[i] == NULL) {
            strv_clear(dst);
            return ERR_NOMEM;
        }
        dst->n++;
    }
    return 0;
}

static void kv_free(struct rsm_kv *kv, unsigned n)
{
    if (kv == NULL) {
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

static int kv_copy(struct rsm_kv **dst,
                   unsigned *n_dst,
                   const struct rsm_kv *src,
                   unsigned n)
{
    *dst = NULL;
    *n_dst = 0;
    if (n == 0) {
        return 0;
    }
    *dst = calloc(n, sizeof **dst);
    if (*dst == NULL) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < n; i++) {
        (*dst)[i].key = strdup(src[i].key != NULL ? src[i].key : "");
        (*dst)[i].value = strdup(src[i].value != NULL ? src[i].value : "");
        *n_dst = i + 1;
        if ((*dst)[i].key == NULL || (*dst)[i].value == NULL) {
            kv_free(*dst, *n_dst);
            *dst = NULL;
            *n_dst = 0;
            return ERR_NOMEM;
        }
    }
    return 0;
}

void rsm_spec_clear(struct rsm_pipeline_spec *s)
{
    strv_clear(&s->command);
    strv_clear(&s->after);
    strv_clear(&s->targets);
    kv_free(s->tags, s->n_tags);
    kv_free(s->env, s->n_env);
    memset(s, 0, sizeof *s);
}

int rsm_spec_copy(struct rsm_pipeline_spec *dst,
                  const struct rsm_pipeline_spec *src)
{
    memset(dst, 0, sizeof *dst);
    memcpy(dst->name, src->name, sizeof dst->name);
    memcpy(dst->schedule, src->schedule, sizeof dst->schedule);
    memcpy(dst->timezone, src->timezone, sizeof dst->timezone);
    dst->retries_max = src->retries_max;
    dst->backoff_s = src->backoff_s;
    dst->timeout_s = src->timeout_s;
    dst->overlap = src->overlap;
    dst->catchup = src->catchup;
    dst->kind = src->kind;
    dst->paused = src->paused;
    if (strv_copy(&dst->command, &src->command) != 0 ||
        strv_copy(&dst->after, &src->after) != 0 ||
        strv_copy(&dst->targets, &src->targets) != 0 ||
        kv_copy(&dst->tags, &dst->n_tags, src->tags, src->n_tags) != 0 ||
        kv_copy(&dst->env, &dst->n_env, src->env, src->n_env) != 0) {
        rsm_spec_clear(dst);
        return ERR_NOMEM;
    }
    return 0;
}

void rsm_job_spec_clear(struct rsm_job_spec *s)
{
    strv_clear(&s->argv);
    kv_free(s->env, s->n_env);
    kv_free(s->tags, s->n_tags);
    memset(s, 0, sizeof *s);
}

int rsm_job_spec_copy(struct rsm_job_spec *dst, const struct rsm_job_spec *src)
{
    memset(dst, 0, sizeof *dst);
    dst->retries_max = src->retries_max;
    dst->backoff_s = src->backoff_s;
    dst->timeout_s = src->timeout_s;
    dst->kind = src->kind;
    dst->run = src->run;
    memcpy(dst->pipeline, src->pipeline, sizeof dst->pipeline);
    memcpy(dst->target, src->target, sizeof dst->target);
    dst->scheduled_for_ms = src->scheduled_for_ms;
    if (strv_copy(&dst->argv, &src->argv) != 0 ||
        kv_copy(&dst->env, &dst->n_env, src->env, src->n_env) != 0 ||
        kv_copy(&dst->tags, &dst->n_tags, src->tags, src->n_tags) != 0) {
        rsm_job_spec_clear(dst);
        return ERR_NOMEM;
    }
    return 0;
}

void rsm_cmd_init(struct rsm_cmd *c, uint8_t type)
{
    memset(c, 0, sizeof *c);
    c->type = type;
}

void rsm_cmd_clear(struct rsm_cmd *c)
{
    switch (c->type) {
        case RSM_CMD_PIPELINE_CREATE:
            rsm_spec_clear(&c->u.pipeline_create);
            break;
        case RSM_CMD_PIPELINE_UPDATE:
            rsm_spec_clear(&c->u.pipeline_update.spec);
            break;
        case RSM_CMD_JOB_SUBMIT:
            rsm_job_spec_clear(&c->u.job_submit);
            break;
        case RSM_CMD_JOB_OUTPUT:
            free(c->u.job_output.data);
            break;
        default:
            break;
    }
    memset(c, 0, sizeof *c);
}

void rsm_cmds_free(struct rsm_cmd *cmds, unsigned n)
{
    if (cmds == NULL) {
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        rsm_cmd_clear(&cmds[i]);
    }
    free(cmds);
}

/* ------------------------------------------------------------ validation */

bool rsm__valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RSM_NAME_MAX || s[0] == '.' || s[0] == '-') {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == '-')) {
            return false;
        }
    }
    return true;
}

/* Printable ASCII without spaces; "" is allowed (no key). */
bool rsm__valid_idem(const char *s)
{
    size_t n = strlen(s);
    if (n > RSM_IDEM_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x21 || s[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

/* "" (unknown) or an IPv4 "a.b.c.d:port". */
bool rsm__valid_addr(const char *s)
{
    struct addr a;
    char back[ADDR_STRLEN];
    if (s[0] == '\0') {
        return true;
    }
    if (strlen(s) >= ADDR_STRLEN || addr_parse(s, &a, NULL) != 0) {
        return false;
    }
    addr_format(&a, back);
    return strcmp(back, s) == 0; /* canonical form only */
}

static bool valid_env_key(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > ENV_KEY_MAX || (s[0] >= '0' && s[0] <= '9')) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_')) {
            return false;
        }
    }
    return true;
}

static bool printable(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f) {
            return false;
        }
    }
    return true;
}

static int spec_validate(const struct rsm_pipeline_spec *s, char *errmsg)
{
    if (memchr(s->name, '\0', sizeof s->name) == NULL ||
        !rsm__valid_name(s->name)) {
        errmsg_printf(errmsg, "name: invalid pipeline name");
        return ERR_INVALID;
    }
    if (s->command.n == 0 || s->command.n > RSM_ARGV_MAX ||
        s->command.v == NULL) {
        errmsg_printf(errmsg, "command: needs 1..%d arguments", RSM_ARGV_MAX);
        return ERR_INVALID;
    }
    for (unsigned i = 0; i < s->command.n; i++) {
        if (s->command.v[i] == NULL || strlen(s->command.v[i]) > RSM_ARG_MAX) {
            errmsg_printf(errmsg, "command: argument %u too long", i);
            return ERR_INVALID;
        }
    }
    if (s->command.v[0][0] == '\0') {
        errmsg_printf(errmsg, "command: empty program");
        return ERR_INVALID;
    }
    if (memchr(s->schedule, '\0', sizeof s->schedule) == NULL ||
        !printable(s->schedule) ||
        memchr(s->timezone, '\0', sizeof s->timezone) == NULL ||
        !printable(s->timezone)) {
        errmsg_printf(errmsg, "schedule/timezone: invalid text");
        return ERR_INVALID;
    }
    if (s->after.n > RSM_AFTER_MAX || (s->after.n > 0 && s->after.v == NULL)) {
        errmsg_printf(errmsg, "after: at most %d pipelines", RSM_AFTER_MAX);
        return ERR_INVALID;
    }
    for (unsigned i = 0; i < s->after.n; i++) {
        if (s->after.v[i] == NULL || !rsm__valid_name(s->after.v[i])) {
            errmsg_printf(errmsg, "after: invalid pipeline name");
            return ERR_INVALID;
        }
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(s->after.v[i], s->after.v[j]) == 0) {
                errmsg_printf(errmsg, "after: duplicate '%s'", s->after.v[i]);
                return ERR_INVALID;
            }
        }
    }
    if (s->overlap > RSM_OVERLAP_REPLACE || s->catchup > RSM_CATCHUP_ALL ||
        s->kind > RSM_KIND_SERVICE) {
        errmsg_printf(errmsg, "overlap/catchup/kind: out of range");
        return ERR_INVALID;
    }
    if (s->targets.n > RSM_TARGETS_MAX ||
        (s->targets.n > 0 && s->targets.v == NULL)) {
        errmsg_printf(errmsg, "targets: at most %d", RSM_TARGETS_MAX);
        return ERR_INVALID;
    }
    for (unsigned i = 0; i < s->targets.n; i++) {
        const char *t = s->targets.v[i];
        if (t == NULL || t[0] == '\0' || strlen(t) > TARGET_MAX ||
            !printable(t)) {
            errmsg_printf(errmsg, "targets: invalid target %u", i);
            return ERR_INVALID;
        }
    }
    if (s->n_tags > RSM_TAGS_MAX || (s->n_tags > 0 && s->tags == NULL)) {
        errmsg_printf(errmsg, "tags: at most %d", RSM_TAGS_MAX);
        return ERR_INVALID;
    }
    for (unsigned i = 0; i < s->n_tags; i++) {
        const struct rsm_kv *kv = &s->tags[i];
        if (kv->key == NULL || kv->value == NULL || !rsm__valid_name(kv->key) ||
            strlen(kv->value) > TAG_VALUE_MAX || !printable(kv->value)) {
            errmsg_printf(errmsg, "tags: invalid tag %u", i);
            return ERR_INVALID;
        }
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(kv->key, s->tags[j].key) == 0) {
                errmsg_printf(errmsg, "tags: duplicate key '%s'", kv->key);
                return ERR_INVALID;
            }
        }
    }
    if (s->n_env > RSM_ENV_MAX || (s->n_env > 0 && s->env == NULL)) {
        errmsg_printf(errmsg, "env: at most %d", RSM_ENV_MAX);
        return ERR_INVALID;
    }
    for (unsigned i = 0; i < s->n_env; i++) {
        const struct rsm_kv *kv = &s->env[i];
        if (kv->key == NULL || kv->value == NULL || !valid_env_key(kv->key) ||
            strlen(kv->value) > RSM_ARG_MAX) {
            errmsg_printf(errmsg, "env: invalid variable %u", i);
            return ERR_INVALID;
        }
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(kv->key, s->env[j].key) == 0) {
                errmsg_printf(errmsg, "env: duplicate key '%s'", kv->key);
                return ERR_INVALID;
            }
        }
    }
    return 0;
}

static int argv_validate(const struct rsm_strv *v, char *errmsg)
{
    if (v->n == 0 || v->n > RSM_ARGV_MAX || v->v == NULL) {
        errmsg_printf(errmsg, "command: needs 1..%d arguments", RSM_ARGV_MAX);
        return ERR_INVALID;
    }
    for (unsigned i = 0; i < v->n; i++) {
        if (v->v[i] == NULL || strlen(v->v[i]) > RSM_ARG_MAX) {
            errmsg_printf(errmsg, "command: argument %u too long", i);
            return ERR_INVALID;
        }
    }
    if (v->v[0][0] == '\0') {
        errmsg_printf(errmsg, "command: empty program");
        return ERR_INVALID;
    }
    return 0;
}

static int tags_validate(const struct rsm_kv *tags, unsigned n, char *errmsg)
{
    if (n > RSM_TAGS_MAX || (n > 0 && tags == NULL)) {
        errmsg_printf(errmsg, "tags: at most %d", RSM_TAGS_MAX);
        return ERR_INVALID;
    }
    for (unsigned i = 0; i < n; i++) {
        const struct rsm_kv *kv = &tags[i];
        if (kv->key == NULL || kv->value == NULL || !rsm__valid_name(kv->key) ||
            strlen(kv->value) > TAG_VALUE_MAX || !printable(kv->value)) {
            errmsg_printf(errmsg, "tags: invalid tag %u", i);
            return ERR_INVALID;
        }
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(kv->key, tags[j].key) == 0) {
                errmsg_printf(errmsg, "tags: duplicate key '%s'", kv->key);
                return ERR_INVALID;
            }
        }
    }
    return 0;
}

static int env_validate(const struct rsm_kv *env, unsigned n, char *errmsg)
{
    if (n > RSM_ENV_MAX || (n > 0 && env == NULL)) {
        errmsg_printf(errmsg, "env: at most %d", RSM_ENV_MAX);
        return ERR_INVALID;
    }
    for (unsigned i = 0; i < n; i++) {
        const struct rsm_kv *kv = &env[i];
        if (kv->key == NULL || kv->value == NULL || !valid_env_key(kv->key) ||
            strlen(kv->value) > RSM_ARG_MAX) {
            errmsg_printf(errmsg, "env: invalid variable %u", i);
            return ERR_INVALID;
        }
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(kv->key, env[j].key) == 0) {
                errmsg_printf(errmsg, "env: duplicate key '%s'", kv->key);
                return ERR_INVALID;
            }
        }
    }
    return 0;
}

static int job_spec_validate(const struct rsm_job_spec *s, char *errmsg)
{
    int rv = argv_validate(&s->argv, errmsg);
    if (rv == 0) {
        rv = env_validate(s->env, s->n_env, errmsg);
    }
    if (rv == 0) {
        rv = tags_validate(s->tags, s->n_tags, errmsg);
    }
    if (rv != 0) {
        return rv;
    }
    if (s->kind > RSM_KIND_SERVICE) {
        errmsg_printf(errmsg, "kind: out of range");
        return ERR_INVALID;
    }
    if (memchr(s->pipeline, '\0', sizeof s->pipeline) == NULL ||
        (s->pipeline[0] != '\0' && !rsm__valid_name(s->pipeline))) {
        errmsg_printf(errmsg, "pipeline: invalid pipeline name");
        return ERR_INVALID;
    }
    if (memchr(s->target, '\0', sizeof s->target) == NULL ||
        !printable(s->target)) {
        errmsg_printf(errmsg, "target: invalid text");
        return ERR_INVALID;
    }
    if (s->scheduled_for_ms < 0) {
        errmsg_printf(errmsg, "scheduled_for: negative");
        return ERR_INVALID;
    }
    return 0;
}

int rsm__chunk_check(const void *data, uint32_t len, uint32_t raw_len)
{
    char *out;
    int n;
    if (data == NULL || len == 0 || raw_len == 0 ||
        raw_len > RSM_CHUNK_RAW_MAX ||
        len > (uint32_t)LZ4_compressBound(RSM_CHUNK_RAW_MAX)) {
        return ERR_MALFORMED;
    }
    out = malloc(raw_len);
    if (out == NULL) {
        return ERR_NOMEM;
    }
    n = LZ4_decompress_safe(data, out, (int)len, (int)raw_len);
    free(out);
    return n == (int)raw_len ? 0 : ERR_MALFORMED;
}

/* Structural rules of the job and lease commands (not the LZ4 payload). */
static int job_cmd_validate(const struct rsm_cmd *c, char *errmsg)
{
    switch (c->type) {
        case RSM_CMD_JOB_SUBMIT:
            return job_spec_validate(&c->u.job_submit, errmsg);
        case RSM_CMD_JOB_CLAIM:
            if (c->u.job_claim.job == 0 || c->u.job_claim.node == 0 ||
                c->u.job_claim.attempt == 0) {
                errmsg_printf(errmsg, "job_claim: job, node, attempt >= 1");
                return ERR_INVALID;
            }
            return 0;
        case RSM_CMD_JOB_START:
            if (c->u.job_start.job == 0 || c->u.job_start.epoch == 0) {
                errmsg_printf(errmsg, "job_start: job, epoch >= 1");
                return ERR_INVALID;
            }
            return 0;
        case RSM_CMD_JOB_OUTPUT:
            if (c->u.job_output.job == 0 || c->u.job_output.epoch == 0 ||
                c->u.job_output.seq == 0) {
                errmsg_printf(errmsg, "job_output: job, epoch, seq >= 1");
                return ERR_INVALID;
            }
            if (c->u.job_output.stream > RSM_STREAM_KILN) {
                errmsg_printf(errmsg, "job_output: bad stream");
                return ERR_INVALID;
            }
            if (c->u.job_output.raw_len == 0 ||
                c->u.job_output.raw_len > RSM_CHUNK_RAW_MAX ||
                c->u.job_output.len == 0 || c->u.job_output.data == NULL ||
                c->u.job_output.len >
                    (uint32_t)LZ4_compressBound(RSM_CHUNK_RAW_MAX)) {
                errmsg_printf(errmsg, "job_output: bad chunk size");
                return ERR_INVALID;
            }
            return 0;
        case RSM_CMD_JOB_FINISH:
            if (c->u.job_finish.job == 0 || c->u.job_finish.epoch == 0) {
                errmsg_printf(errmsg, "job_finish: job, epoch >= 1");
                return ERR_INVALID;
            }
            if (c->u.job_finish.end == RSM_END_NONE ||
                c->u.job_finish.end >= RSM_END__COUNT ||
                c->u.job_finish.exit_code < 0 ||
                c->u.job_finish.exit_code > 255 || c->u.job_finish.signal < 0 ||
                c->u.job_finish.signal > 255) {
                errmsg_printf(errmsg, "job_finish: bad end or signal");
                return ERR_INVALID;
            }
            return 0;
        case RSM_CMD_JOB_CANCEL:
            if (c->u.job_cancel.job == 0) {
                errmsg_printf(errmsg, "job_cancel: job >= 1");
                return ERR_INVALID;
            }
            return 0;
        case RSM_CMD_NODE_RENEW:
            if (c->u.node_renew.node == 0 ||
                c->u.node_renew.lease_ms < RSM_LEASE_MIN_MS ||
                c->u.node_renew.lease_ms > RSM_LEASE_MAX_MS) {
                errmsg_printf(errmsg, "node_renew: node >= 1, lease %d..%d ms",
                              RSM_LEASE_MIN_MS, RSM_LEASE_MAX_MS);
                return ERR_INVALID;
            }
            return 0;
        case RSM_CMD_NODE_EXPIRE:
            if (c->u.node_expire.node == 0) {
                errmsg_printf(errmsg, "node_expire: node >= 1");
                return ERR_INVALID;
            }
            return 0;
        default:
            errmsg_printf(errmsg, "unknown command type %u", (unsigned)c->type);
            return ERR_INVALID;
    }
}

static int member_validate(const struct rsm_member *m, char *errmsg)
{
    if (m->id == 0) {
        errmsg_printf(errmsg, "member: id 0");
        return ERR_INVALID;
    }
    if (memchr(m->name, '\0', sizeof m->name) == NULL ||
        !rsm__valid_name(m->name)) {
        errmsg_printf(errmsg, "member: invalid name");
        return ERR_INVALID;
    }
    if (memchr(m->api, '\0', sizeof m->api) == NULL ||
        memchr(m->raft, '\0', sizeof m->raft) == NULL ||
        memchr(m->gossip, '\0', sizeof m->gossip) == NULL ||
        !rsm__valid_addr(m->api) || !rsm__valid_addr(m->raft) ||
        !rsm__valid_addr(m->gossip)) {
        errmsg_printf(errmsg, "member: invalid address");
        return ERR_INVALID;
    }
    if (m->lease_until_ms < 0) {
        errmsg_printf(errmsg, "member: negative lease");
        return ERR_INVALID;
    }
    return 0;
}

/* Structural rules of the run commands. */
static int run_cmd_validate(const struct rsm_cmd *c, char *errmsg)
{
    const char *name;
    switch (c->type) {
        case RSM_CMD_PIPELINE_FIRE:
            if (c->u.pipeline_fire.scheduled_for_ms <= 0) {
                errmsg_printf(errmsg, "pipeline_fire: scheduled_for_ms >= 1");
                return ERR_INVALID;
            }
            name = c->u.pipeline_fire.pipeline;
            break;
        case RSM_CMD_RUN_MANUAL:
            name = c->u.run_manual.pipeline;
            break;
        case RSM_CMD_RUN_RETRY:
            if (c->u.run_retry.run == 0) {
                errmsg_printf(errmsg, "run_retry: run >= 1");
                return ERR_INVALID;
            }
            return 0;
        default:
            errmsg_printf(errmsg, "unknown command type %u", (unsigned)c->type);
            return ERR_INVALID;
    }
    if (memchr(name, '\0', RSM_NAME_MAX + 1) == NULL ||
        !rsm__valid_name(name)) {
        errmsg_printf(errmsg, "%s: invalid pipeline name",
                      rsm_cmd_name(c->type));
        return ERR_INVALID;
    }
    return 0;
}

int rsm_cmd_validate(const struct rsm_cmd *c, char *errmsg)
{
    if (c->leader_time_ms < 0) {
        errmsg_printf(errmsg, "leader_time_ms: negative");
        return ERR_INVALID;
    }
    if (memchr(c->idem_key, '\0', sizeof c->idem_key) == NULL ||
        !rsm__valid_idem(c->idem_key)) {
        errmsg_printf(errmsg, "idem_key: invalid");
        return ERR_INVALID;
    }
    switch (c->type) {
        case RSM_CMD_NOOP:
            return 0;
        case RSM_CMD_MEMBER_PUT:
            return member_validate(&c->u.member_put, errmsg);
        case RSM_CMD_PIPELINE_CREATE:
            return spec_validate(&c->u.pipeline_create, errmsg);
        case RSM_CMD_PIPELINE_UPDATE:
            return spec_validate(&c->u.pipeline_update.spec, errmsg);
        case RSM_CMD_PIPELINE_DELETE:
            if (memchr(c->u.pipeline_delete.name, '\0', RSM_NAME_MAX + 1) ==
                    NULL ||
                !rsm__valid_name(c->u.pipeline_delete.name)) {
                errmsg_printf(errmsg, "name: invalid pipeline name");
                return ERR_INVALID;
            }
            return 0;
        case RSM_CMD_JOB_OUTPUT: {
            int rv = job_cmd_validate(c, errmsg);
            if (rv == 0) {
                rv = rsm__chunk_check(c->u.job_output.data, c->u.job_output.len,
                                      c->u.job_output.raw_len);
                if (rv == ERR_MALFORMED) {
                    errmsg_printf(errmsg,
                                  "job_output: LZ4 block does not "
                                  "decompress to raw_len bytes");
                    rv = ERR_INVALID;
                }
            }
            return rv;
        }
        case RSM_CMD_PIPELINE_FIRE:
        case RSM_CMD_RUN_MANUAL:
        case RSM_CMD_RUN_RETRY:
            return run_cmd_validate(c, errmsg);
        case RSM_CMD_DIGEST:
            return 0; /* any three integers */
        default:
            return job_cmd_validate(c, errmsg);
    }
}

/* --------------------------------------------------------------- packing */

int rsm__pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    if (msgpack_pack_str(pk, n) != 0 || msgpack_pack_str_body(pk, s, n) != 0) {
        return ERR_NOMEM;
    }
    return 0;
}

static int pack_strv(msgpack_packer *pk, const struct rsm_strv *v)
{
    if (msgpack_pack_array(pk, v->n) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < v->n; i++) {
        if (rsm__pack_str(pk, v->v[i]) != 0) {
            return ERR_NOMEM;
        }
    }
    return 0;
}

static int pack_kvs(msgpack_packer *pk, const struct rsm_kv *kv, unsigned n)
{
    if (msgpack_pack_array(pk, n) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < n; i++) {
        if (msgpack_pack_array(pk, 2) != 0 ||
            rsm__pack_str(pk, kv[i].key) != 0 ||
            rsm__pack_str(pk, kv[i].value) != 0) {
            return ERR_NOMEM;
        }
    }
    return 0;
}

static int pack_bool(msgpack_packer *pk, bool b)
{
    return (b ? msgpack_pack_true(pk) : msgpack_pack_false(pk)) != 0 ? ERR_NOMEM
                                                                     : 0;
}

#define SPEC_FIELDS 15

int rsm__spec_pack(const struct rsm_pipeline_spec *s, msgpack_packer *pk)
{
    if (msgpack_pack_array(pk, SPEC_FIELDS) != 0 ||
        rsm__pack_str(pk, s->name) != 0 || pack_strv(pk, &s->command) != 0 ||
        rsm__pack_str(pk, s->schedule) != 0 ||
        rsm__pack_str(pk, s->timezone) != 0 || pack_strv(pk, &s->after) != 0 ||
        msgpack_pack_uint32(pk, s->retries_max) != 0 ||
        msgpack_pack_uint32(pk, s->backoff_s) != 0 ||
        msgpack_pack_uint32(pk, s->timeout_s) != 0 ||
        msgpack_pack_uint8(pk, s->overlap) != 0 ||
        msgpack_pack_uint8(pk, s->catchup) != 0 ||
        msgpack_pack_uint8(pk, s->kind) != 0 || pack_bool(pk, s->paused) != 0 ||
        pack_strv(pk, &s->targets) != 0 ||
        pack_kvs(pk, s->tags, s->n_tags) != 0 ||
        pack_kvs(pk, s->env, s->n_env) != 0) {
        return ERR_NOMEM;
    }
    return 0;
}

#define MEMBER_FIELDS 7

int rsm__member_pack(const struct rsm_member *m, msgpack_packer *pk)
{
    if (msgpack_pack_array(pk, MEMBER_FIELDS) != 0 ||
        msgpack_pack_uint64(pk, m->id) != 0 ||
        rsm__pack_str(pk, m->name) != 0 || rsm__pack_str(pk, m->api) != 0 ||
        rsm__pack_str(pk, m->raft) != 0 || rsm__pack_str(pk, m->gossip) != 0 ||
        msgpack_pack_int64(pk, m->lease_until_ms) != 0 ||
        pack_bool(pk, m->draining) != 0) {
        return ERR_NOMEM;
    }
    return 0;
}

#define JOB_SPEC_FIELDS 11

int rsm__job_spec_pack(const struct rsm_job_spec *s, msgpack_packer *pk)
{
    if (msgpack_pack_array(pk, JOB_SPEC_FIELDS) != 0 ||
        pack_strv(pk, &s->argv) != 0 || pack_kvs(pk, s->env, s->n_env) != 0 ||
        pack_kvs(pk, s->tags, s->n_tags) != 0 ||
        msgpack_pack_uint32(pk, s->retries_max) != 0 ||
        msgpack_pack_uint32(pk, s->backoff_s) != 0 ||
        msgpack_pack_uint32(pk, s->timeout_s) != 0 ||
        msgpack_pack_uint8(pk, s->kind) != 0 ||
        msgpack_pack_uint64(pk, s->run) != 0 ||
        rsm__pack_str(pk, s->pipeline) != 0 ||
        rsm__pack_str(pk, s->target) != 0 ||
        msgpack_pack_int64(pk, s->scheduled_for_ms) != 0) {
        return ERR_NOMEM;
    }
    return 0;
}

/* Fields after the envelope head, per type. */
static unsigned cmd_fields(unsigned type)
{
    switch (type) {
        case RSM_CMD_NOOP:
            return 0;
        case RSM_CMD_MEMBER_PUT:
            return 1; /* [member] */
        case RSM_CMD_PIPELINE_CREATE:
            return 1; /* [spec] */
        case RSM_CMD_PIPELINE_UPDATE:
            return 2; /* [spec, expect_version] */
        case RSM_CMD_PIPELINE_DELETE:
            return 1; /* [name] */
        case RSM_CMD_JOB_SUBMIT:
            return 1; /* [job_spec] */
        case RSM_CMD_JOB_CLAIM:
            return 3; /* [job, node, attempt] */
        case RSM_CMD_JOB_START:
            return 2; /* [job, epoch] */
        case RSM_CMD_JOB_OUTPUT:
            return 6; /* [job, epoch, seq, stream, raw_len, data] */
        case RSM_CMD_JOB_FINISH:
            return 5; /* [job, epoch, end, exit_code, signal] */
        case RSM_CMD_JOB_CANCEL:
            return 1; /* [job] */
        case RSM_CMD_NODE_RENEW:
            return 2; /* [node, lease_ms] */
        case RSM_CMD_NODE_EXPIRE:
            return 1; /* [node] */
        case RSM_CMD_PIPELINE_FIRE:
            return 3; /* [pipeline, scheduled_for_ms, skip] */
        case RSM_CMD_RUN_MANUAL:
            return 1; /* [pipeline] */
        case RSM_CMD_RUN_RETRY:
            return 1; /* [run] */
        case RSM_CMD_DIGEST:
            return 3; /* [prev_index, prev_chain, prev_state] */
        default:
            return 0;
    }
}

static int cmd_pack_time(const struct rsm_cmd *c,
                         int64_t leader_time_ms,
                         msgpack_packer *pk)
{
    int rv = 0;
    if (c->type >= RSM_CMD__COUNT) {
        return ERR_INVALID;
    }
    if (msgpack_pack_array(pk, ENVELOPE_HEAD + cmd_fields(c->type)) != 0 ||
        msgpack_pack_uint32(pk, RSM_FORMAT_VERSION) != 0 ||
        msgpack_pack_uint8(pk, c->type) != 0 ||
        msgpack_pack_int64(pk, leader_time_ms) != 0 ||
        rsm__pack_str(pk, c->idem_key) != 0) {
        return ERR_NOMEM;
    }
    switch (c->type) {
        case RSM_CMD_MEMBER_PUT:
            rv = rsm__member_pack(&c->u.member_put, pk);
            break;
        case RSM_CMD_PIPELINE_CREATE:
            rv = rsm__spec_pack(&c->u.pipeline_create, pk);
            break;
        case RSM_CMD_PIPELINE_UPDATE:
            rv = rsm__spec_pack(&c->u.pipeline_update.spec, pk);
            if (rv == 0 && msgpack_pack_uint64(
                               pk, c->u.pipeline_update.expect_version) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_PIPELINE_DELETE:
            rv = rsm__pack_str(pk, c->u.pipeline_delete.name);
            break;
        case RSM_CMD_JOB_SUBMIT:
            rv = rsm__job_spec_pack(&c->u.job_submit, pk);
            break;
        case RSM_CMD_JOB_CLAIM:
            if (msgpack_pack_uint64(pk, c->u.job_claim.job) != 0 ||
                msgpack_pack_uint64(pk, c->u.job_claim.node) != 0 ||
                msgpack_pack_uint32(pk, c->u.job_claim.attempt) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_JOB_START:
            if (msgpack_pack_uint64(pk, c->u.job_start.job) != 0 ||
                msgpack_pack_uint64(pk, c->u.job_start.epoch) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_JOB_OUTPUT:
            if (c->u.job_output.len > 0 && c->u.job_output.data == NULL) {
                return ERR_INVALID;
            }
            if (msgpack_pack_uint64(pk, c->u.job_output.job) != 0 ||
                msgpack_pack_uint64(pk, c->u.job_output.epoch) != 0 ||
                msgpack_pack_uint64(pk, c->u.job_output.seq) != 0 ||
                msgpack_pack_uint8(pk, c->u.job_output.stream) != 0 ||
                msgpack_pack_uint32(pk, c->u.job_output.raw_len) != 0 ||
                msgpack_pack_bin(pk, c->u.job_output.len) != 0 ||
                (c->u.job_output.len > 0 &&
                 msgpack_pack_bin_body(pk, c->u.job_output.data,
                                       c->u.job_output.len) != 0)) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_JOB_FINISH:
            if (msgpack_pack_uint64(pk, c->u.job_finish.job) != 0 ||
                msgpack_pack_uint64(pk, c->u.job_finish.epoch) != 0 ||
                msgpack_pack_uint8(pk, c->u.job_finish.end) != 0 ||
                msgpack_pack_int32(pk, c->u.job_finish.exit_code) != 0 ||
                msgpack_pack_int32(pk, c->u.job_finish.signal) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_JOB_CANCEL:
            if (msgpack_pack_uint64(pk, c->u.job_cancel.job) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_NODE_RENEW:
            if (msgpack_pack_uint64(pk, c->u.node_renew.node) != 0 ||
                msgpack_pack_uint32(pk, c->u.node_renew.lease_ms) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_NODE_EXPIRE:
            if (msgpack_pack_uint64(pk, c->u.node_expire.node) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_PIPELINE_FIRE:
            if (rsm__pack_str(pk, c->u.pipeline_fire.pipeline) != 0 ||
                msgpack_pack_int64(pk, c->u.pipeline_fire.scheduled_for_ms) !=
                    0 ||
                pack_bool(pk, c->u.pipeline_fire.skip) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_RUN_MANUAL:
            rv = rsm__pack_str(pk, c->u.run_manual.pipeline);
            break;
        case RSM_CMD_RUN_RETRY:
            if (msgpack_pack_uint64(pk, c->u.run_retry.run) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        case RSM_CMD_DIGEST:
            if (msgpack_pack_uint64(pk, c->u.digest.prev_index) != 0 ||
                msgpack_pack_uint64(pk, c->u.digest.prev_chain) != 0 ||
                msgpack_pack_uint64(pk, c->u.digest.prev_state) != 0) {
                rv = ERR_NOMEM;
            }
            break;
        default:
            break;
    }
    return rv;
}

int rsm_cmd_pack(const struct rsm_cmd *c, msgpack_packer *pk)
{
    return cmd_pack_time(c, c->leader_time_ms, pk);
}

/* -------------------------------------------------------------- decoding */

bool rsm__get_u64(const msgpack_object *o, uint64_t max, uint64_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > max) {
        return false;
    }
    *out = o->via.u64;
    return true;
}

bool rsm__get_i64(const msgpack_object *o, int64_t *out)
{
    uint64_t u;
    if (!rsm__get_u64(o, INT64_MAX, &u)) {
        return false;
    }
    *out = (int64_t)u;
    return true;
}

static bool get_u32(const msgpack_object *o, uint32_t *out)
{
    uint64_t u;
    if (!rsm__get_u64(o, UINT32_MAX, &u)) {
        return false;
    }
    *out = (uint32_t)u;
    return true;
}

bool rsm__get_i32(const msgpack_object *o, int32_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT32_MAX) {
        *out = (int32_t)o->via.u64;
        return true;
    }
    return false; /* negative integers are malformed, as everywhere */
}

static bool get_u8(const msgpack_object *o, uint8_t max, uint8_t *out)
{
    uint64_t u;
    if (!rsm__get_u64(o, max, &u)) {
        return false;
    }
    *out = (uint8_t)u;
    return true;
}

static bool get_bool(const msgpack_object *o, bool *out)
{
    if (o->type != MSGPACK_OBJECT_BOOLEAN) {
        return false;
    }
    *out = o->via.boolean;
    return true;
}

static bool str_ok(const msgpack_object *o, size_t max)
{
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size <= max &&
           (o->via.str.size == 0 ||
            memchr(o->via.str.ptr, '\0', o->via.str.size) == NULL);
}

/* Copy into a fixed buffer of at least max + 1 bytes. */
bool rsm__get_str(const msgpack_object *o, size_t max, char *dst)
{
    if (!str_ok(o, max)) {
        return false;
    }
    if (o->via.str.size > 0) {
        memcpy(dst, o->via.str.ptr, o->via.str.size);
    }
    dst[o->via.str.size] = '\0';
    return true;
}

static int get_strdup(const msgpack_object *o, size_t max, char **out)
{
    if (!str_ok(o, max)) {
        return ERR_MALFORMED;
    }
    *out = malloc(o->via.str.size + 1);
    if (*out == NULL) {
        return ERR_NOMEM;
    }
    if (o->via.str.size > 0) {
        memcpy(*out, o->via.str.ptr, o->via.str.size);
    }
    (*out)[o->via.str.size] = '\0';
    return 0;
}

static int get_strv(const msgpack_object *o,
                    unsigned max_n,
                    size_t max_len,
                    struct rsm_strv *v,
                    const char *field,
                    char *errmsg)
{
    int rv;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > max_n) {
        errmsg_printf(errmsg, "%s: expected an array of at most %u strings",
                      field, max_n);
        return ERR_MALFORMED;
    }
    if (strv_alloc(v, o->via.array.size) != 0) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < o->via.array.size; i++) {
        rv = get_strdup(&o->via.array.ptr[i], max_len, &v->v[i]);
        if (rv != 0) {
            if (rv == ERR_MALFORMED) {
                errmsg_printf(errmsg,
                              "%s[%u]: expected a string of at most %zu bytes",
                              field, i, max_len);
            }
            return rv;
        }
        v->n++;
    }
    return 0;
}

static int get_kvs(const msgpack_object *o,
                   unsigned max_n,
                   size_t max_key,
                   size_t max_value,
                   struct rsm_kv **out,
                   unsigned *n,
                   const char *field,
                   char *errmsg)
{
    int rv;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > max_n) {
        errmsg_printf(errmsg, "%s: expected an array of at most %u pairs",
                      field, max_n);
        return ERR_MALFORMED;
    }
    *n = 0;
    *out = NULL;
    if (o->via.array.size == 0) {
        return 0;
    }
    *out = calloc(o->via.array.size, sizeof **out);
    if (*out == NULL) {
        return ERR_NOMEM;
    }
    for (unsigned i = 0; i < o->via.array.size; i++) {
        const msgpack_object *p = &o->via.array.ptr[i];
        if (p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size != 2) {
            errmsg_printf(errmsg, "%s[%u]: expected [key, value]", field, i);
            return ERR_MALFORMED;
        }
        *n = i + 1;
        rv = get_strdup(&p->via.array.ptr[0], max_key, &(*out)[i].key);
        if (rv == 0) {
            rv = get_strdup(&p->via.array.ptr[1], max_value, &(*out)[i].value);
        }
        if (rv != 0) {
            if (rv == ERR_MALFORMED) {
                errmsg_printf(errmsg, "%s[%u]: bad key or value", field, i);
            }
            return rv;
        }
    }
    return 0;
}

static int spec_parse(const msgpack_object *o,
                      struct rsm_pipeline_spec *s,
                      char *errmsg)
{
    const msgpack_object *f;
    int rv;
    memset(s, 0, sizeof *s);
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != SPEC_FIELDS) {
        errmsg_printf(errmsg, "spec: expected an array of %d fields",
                      SPEC_FIELDS);
        return ERR_MALFORMED;
    }
    f = o->via.array.ptr;
    if (!rsm__get_str(&f[0], RSM_NAME_MAX, s->name)) {
        errmsg_printf(errmsg, "name: expected a string of at most %d bytes",
                      RSM_NAME_MAX);
        return ERR_MALFORMED;
    }
    rv = get_strv(&f[1], RSM_ARGV_MAX, RSM_ARG_MAX, &s->command, "command",
                  errmsg);
    if (rv != 0) {
        return rv;
    }
    if (!rsm__get_str(&f[2], RSM_SCHEDULE_MAX, s->schedule)) {
        errmsg_printf(errmsg, "schedule: expected a string of at most %d bytes",
                      RSM_SCHEDULE_MAX);
        return ERR_MALFORMED;
    }
    if (!rsm__get_str(&f[3], RSM_TZ_MAX, s->timezone)) {
        errmsg_printf(errmsg, "timezone: expected a string of at most %d bytes",
                      RSM_TZ_MAX);
        return ERR_MALFORMED;
    }
    rv = get_strv(&f[4], RSM_AFTER_MAX, RSM_NAME_MAX, &s->after, "after",
                  errmsg);
    if (rv != 0) {
        return rv;
    }
    if (!get_u32(&f[5], &s->retries_max) || !get_u32(&f[6], &s->backoff_s) ||
        !get_u32(&f[7], &s->timeout_s)) {
        errmsg_printf(errmsg, "retries/backoff/timeout: expected uint32");
        return ERR_MALFORMED;
    }
    if (!get_u8(&f[8], RSM_OVERLAP_REPLACE, &s->overlap) ||
        !get_u8(&f[9], RSM_CATCHUP_ALL, &s->catchup) ||
        !get_u8(&f[10], RSM_KIND_SERVICE, &s->kind)) {
        errmsg_printf(errmsg, "overlap/catchup/kind: out of range");
        return ERR_MALFORMED;
    }
    if (!get_bool(&f[11], &s->paused)) {
        errmsg_printf(errmsg, "paused: expected a boolean");
        return ERR_MALFORMED;
    }
    rv = get_strv(&f[12], RSM_TARGETS_MAX, TARGET_MAX, &s->targets, "targets",
                  errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = get_kvs(&f[13], RSM_TAGS_MAX, RSM_NAME_MAX, TAG_VALUE_MAX, &s->tags,
                 &s->n_tags, "tags", errmsg);
    if (rv != 0) {
        return rv;
    }
    return get_kvs(&f[14], RSM_ENV_MAX, ENV_KEY_MAX, RSM_ARG_MAX, &s->env,
                   &s->n_env, "env", errmsg);
}

int rsm__spec_unpack(const msgpack_object *o,
                     struct rsm_pipeline_spec *s,
                     char *errmsg)
{
    int rv = spec_parse(o, s, errmsg);
    if (rv == 0 && spec_validate(s, errmsg) != 0) {
        rv = ERR_MALFORMED;
    }
    if (rv != 0) {
        rsm_spec_clear(s);
    }
    return rv;
}

static int job_spec_parse(const msgpack_object *o,
                          struct rsm_job_spec *s,
                          char *errmsg)
{
    const msgpack_object *f;
    int rv;
    memset(s, 0, sizeof *s);
    if (o->type != MSGPACK_OBJECT_ARRAY ||
        o->via.array.size != JOB_SPEC_FIELDS) {
        errmsg_printf(errmsg, "job spec: expected an array of %d fields",
                      JOB_SPEC_FIELDS);
        return ERR_MALFORMED;
    }
    f = o->via.array.ptr;
    rv =
        get_strv(&f[0], RSM_ARGV_MAX, RSM_ARG_MAX, &s->argv, "command", errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = get_kvs(&f[1], RSM_ENV_MAX, ENV_KEY_MAX, RSM_ARG_MAX, &s->env,
                 &s->n_env, "env", errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = get_kvs(&f[2], RSM_TAGS_MAX, RSM_NAME_MAX, TAG_VALUE_MAX, &s->tags,
                 &s->n_tags, "tags", errmsg);
    if (rv != 0) {
        return rv;
    }
    if (!get_u32(&f[3], &s->retries_max) || !get_u32(&f[4], &s->backoff_s) ||
        !get_u32(&f[5], &s->timeout_s)) {
        errmsg_printf(errmsg, "retries/backoff/timeout: expected uint32");
        return ERR_MALFORMED;
    }
    if (!get_u8(&f[6], RSM_KIND_SERVICE, &s->kind)) {
        errmsg_printf(errmsg, "kind: out of range");
        return ERR_MALFORMED;
    }
    if (!rsm__get_u64(&f[7], UINT64_MAX, &s->run) ||
        !rsm__get_str(&f[8], RSM_NAME_MAX, s->pipeline) ||
        !rsm__get_str(&f[9], TARGET_MAX, s->target) ||
        !rsm__get_i64(&f[10], &s->scheduled_for_ms)) {
        errmsg_printf(errmsg, "run/pipeline/target/scheduled_for: bad field");
        return ERR_MALFORMED;
    }
    return 0;
}

int rsm__job_spec_unpack(const msgpack_object *o,
                         struct rsm_job_spec *s,
                         char *errmsg)
{
    int rv = job_spec_parse(o, s, errmsg);
    if (rv == 0 && job_spec_validate(s, errmsg) != 0) {
        rv = ERR_MALFORMED;
    }
    if (rv != 0) {
        rsm_job_spec_clear(s);
    }
    return rv;
}

/* Decode the fields of a job or lease command (after the envelope). */
static int job_cmd_parse(const msgpack_object *f,
                         struct rsm_cmd *c,
                         char *errmsg)
{
    const msgpack_object *d;
    uint64_t u;
    int rv;
    switch (c->type) {
        case RSM_CMD_JOB_SUBMIT:
            return rsm__job_spec_unpack(&f[0], &c->u.job_submit, errmsg);
        case RSM_CMD_JOB_CLAIM:
            if (!rsm__get_u64(&f[0], UINT64_MAX, &c->u.job_claim.job) ||
                !rsm__get_u64(&f[1], UINT64_MAX, &c->u.job_claim.node) ||
                !get_u32(&f[2], &c->u.job_claim.attempt)) {
                break;
            }
            goto check;
        case RSM_CMD_JOB_START:
            if (!rsm__get_u64(&f[0], UINT64_MAX, &c->u.job_start.job) ||
                !rsm__get_u64(&f[1], UINT64_MAX, &c->u.job_start.epoch)) {
                break;
            }
            goto check;
        case RSM_CMD_JOB_OUTPUT:
            d = &f[5];
            if (!rsm__get_u64(&f[0], UINT64_MAX, &c->u.job_output.job) ||
                !rsm__get_u64(&f[1], UINT64_MAX, &c->u.job_output.epoch) ||
                !rsm__get_u64(&f[2], UINT64_MAX, &c->u.job_output.seq) ||
                !get_u8(&f[3], RSM_STREAM_KILN, &c->u.job_output.stream) ||
                !get_u32(&f[4], &c->u.job_output.raw_len) ||
                d->type != MSGPACK_OBJECT_BIN || d->via.bin.size == 0 ||
                d->via.bin.size >
                    (uint32_t)LZ4_compressBound(RSM_CHUNK_RAW_MAX)) {
                break;
            }
            c->u.job_output.data = malloc(d->via.bin.size);
            if (c->u.job_output.data == NULL) {
                return ERR_NOMEM;
            }
            memcpy(c->u.job_output.data, d->via.bin.ptr, d->via.bin.size);
            c->u.job_output.len = d->via.bin.size;
            if (job_cmd_validate(c, errmsg) != 0) {
                return ERR_MALFORMED;
            }
            rv = rsm__chunk_check(c->u.job_output.data, c->u.job_output.len,
                                  c->u.job_output.raw_len);
            if (rv == ERR_MALFORMED) {
                errmsg_printf(errmsg,
                              "job_output: LZ4 block does not "
                              "decompress to raw_len bytes");
            }
            return rv;
        case RSM_CMD_JOB_FINISH:
            if (!rsm__get_u64(&f[0], UINT64_MAX, &c->u.job_finish.job) ||
                !rsm__get_u64(&f[1], UINT64_MAX, &c->u.job_finish.epoch) ||
                !rsm__get_u64(&f[2], RSM_END__COUNT - 1, &u) ||
                !rsm__get_i32(&f[3], &c->u.job_finish.exit_code) ||
                !rsm__get_i32(&f[4], &c->u.job_finish.signal)) {
                break;
            }
            c->u.job_finish.end = (uint8_t)u;
            goto check;
        case RSM_CMD_JOB_CANCEL:
            if (!rsm__get_u64(&f[0], UINT64_MAX, &c->u.job_cancel.job)) {
                break;
            }
            goto check;
        case RSM_CMD_NODE_RENEW:
            if (!rsm__get_u64(&f[0], UINT64_MAX, &c->u.node_renew.node) ||
                !get_u32(&f[1], &c->u.node_renew.lease_ms)) {
                break;
            }
            goto check;
        case RSM_CMD_NODE_EXPIRE:
            if (!rsm__get_u64(&f[0], UINT64_MAX, &c->u.node_expire.node)) {
                break;
            }
            goto check;
        default:
            return 0;
    }
    errmsg_printf(errmsg, "%s: bad field type or range", rsm_cmd_name(c->type));
    return ERR_MALFORMED;
check:
    return job_cmd_validate(c, errmsg) != 0 ? ERR_MALFORMED : 0;
}

/* Decode the fields of a run command (after the envelope). */
static int run_cmd_parse(const msgpack_object *f,
                         struct rsm_cmd *c,
                         char *errmsg)
{
    bool ok;
    switch (c->type) {
        case RSM_CMD_PIPELINE_FIRE:
            ok = rsm__get_str(&f[0], RSM_NAME_MAX,
                              c->u.pipeline_fire.pipeline) &&
                 rsm__get_i64(&f[1], &c->u.pipeline_fire.scheduled_for_ms) &&
                 get_bool(&f[2], &c->u.pipeline_fire.skip);
            break;
        case RSM_CMD_RUN_MANUAL:
            ok = rsm__get_str(&f[0], RSM_NAME_MAX, c->u.run_manual.pipeline);
            break;
        case RSM_CMD_RUN_RETRY:
            ok = rsm__get_u64(&f[0], UINT64_MAX, &c->u.run_retry.run);
            break;
        default:
            return 0;
    }
    if (!ok) {
        errmsg_printf(errmsg, "%s: bad field type or range",
                      rsm_cmd_name(c->type));
        return ERR_MALFORMED;
    }
    return run_cmd_validate(c, errmsg) != 0 ? ERR_MALFORMED : 0;
}

int rsm__member_unpack(const msgpack_object *o,
                       struct rsm_member *m,
                       char *errmsg)
{
    const msgpack_object *f;
    memset(m, 0, sizeof *m);
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != MEMBER_FIELDS) {
        errmsg_printf(errmsg, "member: expected an array of %d fields",
                      MEMBER_FIELDS);
        return ERR_MALFORMED;
    }
    f = o->via.array.ptr;
    if (!rsm__get_u64(&f[0], UINT64_MAX, &m->id) ||
        !rsm__get_str(&f[1], RSM_NAME_MAX, m->name) ||
        !rsm__get_str(&f[2], sizeof m->api - 1, m->api) ||
        !rsm__get_str(&f[3], sizeof m->raft - 1, m->raft) ||
        !rsm__get_str(&f[4], sizeof m->gossip - 1, m->gossip) ||
        !rsm__get_i64(&f[5], &m->lease_until_ms) ||
        !get_bool(&f[6], &m->draining)) {
        errmsg_printf(errmsg, "member: bad field type or length");
        return ERR_MALFORMED;
    }
    if (member_validate(m, errmsg) != 0) {
        return ERR_MALFORMED;
    }
    return 0;
}

/* Check the format version field shared by commands, entries, snapshots. */
static int check_version(const msgpack_object *o,
                         const char *what,
                         char *errmsg)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 == 0) {
        errmsg_printf(errmsg, "%s: bad format version", what);
        return ERR_MALFORMED;
    }
    if (o->via.u64 > RSM_FORMAT_VERSION) {
        errmsg_printf(errmsg,
                      "%s: format version %llu is newer than this node's %d",
                      what, (unsigned long long)o->via.u64, RSM_FORMAT_VERSION);
        return ERR_VERSION;
    }
    return 0;
}

static int cmd_parse(const msgpack_object *o, struct rsm_cmd *c, char *errmsg)
{
    const msgpack_object *f;
    uint64_t type;
    int rv;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 2) {
        errmsg_printf(errmsg, "command: expected an array");
        return ERR_MALFORMED;
    }
    f = o->via.array.ptr;
    rv = check_version(&f[0], "command", errmsg);
    if (rv != 0) {
        return rv;
    }
    if (!rsm__get_u64(&f[1], UINT8_MAX, &type) || type >= RSM_CMD__COUNT) {
        errmsg_printf(errmsg, "command: unknown type");
        return ERR_MALFORMED;
    }
    rsm_cmd_init(c, (uint8_t)type);
    if (o->via.array.size != ENVELOPE_HEAD + cmd_fields(c->type)) {
        errmsg_printf(errmsg, "%s: expected %u fields, got %u",
                      rsm_cmd_name(c->type),
                      ENVELOPE_HEAD + cmd_fields(c->type), o->via.array.size);
        return ERR_MALFORMED;
    }
    if (!rsm__get_i64(&f[2], &c->leader_time_ms)) {
        errmsg_printf(errmsg,
                      "leader_time_ms: expected a non-negative integer");
        return ERR_MALFORMED;
    }
    if (!rsm__get_str(&f[3], RSM_IDEM_MAX, c->idem_key) ||
        !rsm__valid_idem(c->idem_key)) {
        errmsg_printf(errmsg, "idem_key: expected at most %d printable bytes",
                      RSM_IDEM_MAX);
        return ERR_MALFORMED;
    }
    f += ENVELOPE_HEAD;
    switch (c->type) {
        case RSM_CMD_MEMBER_PUT:
            return rsm__member_unpack(&f[0], &c->u.member_put, errmsg);
        case RSM_CMD_PIPELINE_CREATE:
            return rsm__spec_unpack(&f[0], &c->u.pipeline_create, errmsg);
        case RSM_CMD_PIPELINE_UPDATE:
            rv = rsm__spec_unpack(&f[0], &c->u.pipeline_update.spec, errmsg);
            if (rv == 0 &&
                !rsm__get_u64(&f[1], UINT64_MAX,
                              &c->u.pipeline_update.expect_version)) {
                errmsg_printf(errmsg, "expect_version: expected an integer");
                rv = ERR_MALFORMED;
            }
            return rv;
        case RSM_CMD_PIPELINE_DELETE:
            if (!rsm__get_str(&f[0], RSM_NAME_MAX, c->u.pipeline_delete.name) ||
                !rsm__valid_name(c->u.pipeline_delete.name)) {
                errmsg_printf(errmsg, "name: invalid pipeline name");
                return ERR_MALFORMED;
            }
            return 0;
        case RSM_CMD_PIPELINE_FIRE:
        case RSM_CMD_RUN_MANUAL:
        case RSM_CMD_RUN_RETRY:
            return run_cmd_parse(f, c, errmsg);
        case RSM_CMD_DIGEST:
            if (!rsm__get_u64(&f[0], UINT64_MAX, &c->u.digest.prev_index) ||
                !rsm__get_u64(&f[1], UINT64_MAX, &c->u.digest.prev_chain) ||
                !rsm__get_u64(&f[2], UINT64_MAX, &c->u.digest.prev_state)) {
                errmsg_printf(errmsg, "digest: expected three integers");
                return ERR_MALFORMED;
            }
            return 0;
        default:
            return job_cmd_parse(f, c, errmsg);
    }
}

int rsm_cmd_unpack(const msgpack_object *o, struct rsm_cmd *c, char *errmsg)
{
    int rv;
    rsm_cmd_init(c, RSM_CMD_NOOP);
    rv = cmd_parse(o, c, errmsg);
    if (rv != 0) {
        rsm_cmd_clear(c);
    }
    return rv;
}

/* ------------------------------------------------------- msgpack checker */

int rsm__mp_check(const void *buf, size_t len, size_t *objlen)
{
    return mp_check(buf, len, MP_DEPTH_MAX, objlen);
}

int rsm__mp_unpack(const void *buf,
                   size_t len,
                   msgpack_unpacked *out,
                   char *errmsg)
{
    size_t objlen = 0;
    size_t off = 0;
    msgpack_unpack_return ret;
    if (rsm__mp_check(buf, len, &objlen) != 0) {
        errmsg_printf(errmsg, "invalid or truncated msgpack (%zu bytes)", len);
        return ERR_MALFORMED;
    }
    ret = msgpack_unpack_next(out, buf, objlen, &off);
    if (ret == MSGPACK_UNPACK_NOMEM_ERROR) {
        return ERR_NOMEM;
    }
    if (ret != MSGPACK_UNPACK_SUCCESS || off != objlen) {
        errmsg_printf(errmsg, "msgpack parse error");
        return ERR_MALFORMED;
    }
    return 0;
}

/* ----------------------------------------------------------------- entries */

#define ENTRY_FIELDS 3

int rsm_entry_encode(const struct rsm_cmd *cmds,
                     unsigned n,
                     int64_t leader_time_ms,
                     void **buf,
                     size_t *len)
{
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    size_t padded;
    int rv = 0;
    *buf = NULL;
    *len = 0;
    if (leader_time_ms < 0 || (n > 0 && cmds == NULL)) {
        return ERR_INVALID;
    }
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    if (msgpack_pack_array(&pk, ENTRY_FIELDS) != 0 ||
        msgpack_pack_uint32(&pk, RSM_FORMAT_VERSION) != 0 ||
        msgpack_pack_int64(&pk, leader_time_ms) != 0 ||
        msgpack_pack_array(&pk, n) != 0) {
        rv = ERR_NOMEM;
        goto out;
    }
    for (unsigned i = 0; i < n; i++) {
        rv = cmd_pack_time(&cmds[i], leader_time_ms, &pk);
        if (rv != 0) {
            goto out;
        }
    }
    padded = (sbuf.size + 7) & ~(size_t)7;
    *buf = raft_malloc(padded);
    if (*buf == NULL) {
        rv = ERR_NOMEM;
        goto out;
    }
    memcpy(*buf, sbuf.data, sbuf.size);
    memset((char *)*buf + sbuf.size, 0, padded - sbuf.size);
    *len = padded;
out:
    msgpack_sbuffer_destroy(&sbuf);
    return rv;
}

int rsm__entry_parse(const void *buf,
                     size_t len,
                     msgpack_unpacked *u,
                     int64_t *leader_time_ms,
                     const msgpack_object **cmds,
                     unsigned *n,
                     char *errmsg)
{
    const msgpack_object *f;
    int rv;
    *cmds = NULL;
    *n = 0;
    if (buf == NULL || len == 0) {
        errmsg_printf(errmsg, "entry: empty");
        return ERR_MALFORMED;
    }
    rv = rsm__mp_unpack(buf, len, u, errmsg);
    if (rv != 0) {
        if (rv == ERR_MALFORMED) {
            errmsg_wrapf(errmsg, "entry");
        }
        return rv;
    }
    if (u->data.type != MSGPACK_OBJECT_ARRAY || u->data.via.array.size == 0) {
        errmsg_printf(errmsg, "entry: expected an array");
        return ERR_MALFORMED;
    }
    f = u->data.via.array.ptr;
    rv = check_version(&f[0], "entry", errmsg);
    if (rv != 0) {
        return rv;
    }
    if (u->data.via.array.size != ENTRY_FIELDS) {
        errmsg_printf(errmsg, "entry: expected %d fields", ENTRY_FIELDS);
        return ERR_MALFORMED;
    }
    if (!rsm__get_i64(&f[1], leader_time_ms)) {
        errmsg_printf(errmsg, "entry: bad leader time");
        return ERR_MALFORMED;
    }
    if (f[2].type != MSGPACK_OBJECT_ARRAY) {
        errmsg_printf(errmsg, "entry: expected an array of commands");
        return ERR_MALFORMED;
    }
    *cmds = f[2].via.array.ptr;
    *n = f[2].via.array.size;
    return 0;
}

int rsm_entry_decode(const void *buf,
                     size_t len,
                     struct rsm_cmd **cmds,
                     unsigned *n,
                     char *errmsg)
{
    msgpack_unpacked u;
    const msgpack_object *objs;
    unsigned count;
    int64_t t;
    struct rsm_cmd *out = NULL;
    unsigned done = 0;
    int rv;
    *cmds = NULL;
    *n = 0;
    msgpack_unpacked_init(&u);
    rv = rsm__entry_parse(buf, len, &u, &t, &objs, &count, errmsg);
    if (rv != 0) {
        goto out;
    }
    if (count > 0) {
        out = calloc(count, sizeof *out);
        if (out == NULL) {
            rv = ERR_NOMEM;
            goto out;
        }
    }
    for (; done < count; done++) {
        rv = rsm_cmd_unpack(&objs[done], &out[done], errmsg);
        if (rv != 0) {
            errmsg_wrapf(errmsg, "command %u", done);
            goto out;
        }
    }
    *cmds = out;
    *n = count;
    out = NULL;
out:
    rsm_cmds_free(out, done);
    msgpack_unpacked_destroy(&u);
    return rv;
}
