/* JSON <-> replicated objects, with validation that names the field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "config.h"
#include "err.h"
#include "util.h"

#define MAX_TIMEOUT_S (30u * 24 * 3600)
#define MAX_RETRIES 100u
#define MAX_BACKOFF_S 86400u

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL) {
        memcpy(d, s, n);
    }
    return d;
}

static int strv_push(struct rsm_strv *v, const char *s)
{
    char **nv = realloc(v->v, (v->n + 2) * sizeof *nv);
    if (nv == NULL) {
        return ERR_NOMEM;
    }
    v->v = nv;
    v->v[v->n] = dup_str(s);
    if (v->v[v->n] == NULL) {
        v->v[v->n] = NULL;
        return ERR_NOMEM;
    }
    v->n++;
    v->v[v->n] = NULL;
    return 0;
}

/* A JSON integer in [lo, hi]. */
static int get_uint(json_t *v,
                    const char *field,
                    uint64_t hi,
                    uint32_t *out,
                    char *errmsg)
{
    json_int_t x;
    if (!json_is_integer(v)) {
        errmsg_printf(errmsg, "%s: must be an integer", field);
        return ERR_INVALID;
    }
    x = json_integer_value(v);
    if (x < 0 || (uint64_t)x > hi) {
        errmsg_printf(errmsg, "%s: must be between 0 and %llu", field,
                      (unsigned long long)hi);
        return ERR_INVALID;
    }
    *out = (uint32_t)x;
    return 0;
}

static int get_string(json_t *v,
                      const char *field,
                      size_t max,
                      char *out,
                      char *errmsg)
{
    const char *s;
    if (!json_is_string(v)) {
        errmsg_printf(errmsg, "%s: must be a string", field);
        return ERR_INVALID;
    }
    s = json_string_value(v);
    if (strlen(s) != json_string_length(v)) {
        errmsg_printf(errmsg, "%s: must not contain NUL bytes", field);
        return ERR_INVALID;
    }
    if (strlen(s) > max) {
        errmsg_printf(errmsg, "%s: longer than %zu characters", field, max);
        return ERR_INVALID;
    }
    strcpy(out, s);
    return 0;
}

static int get_enum(json_t *v,
                    const char *field,
                    const char *const *names,
                    unsigned n,
                    uint8_t *out,
                    char *errmsg)
{
    const char *s;
    if (!json_is_string(v)) {
        errmsg_printf(errmsg, "%s: must be a string", field);
        return ERR_INVALID;
    }
    s = json_string_value(v);
    for (unsigned i = 0; i < n; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (uint8_t)i;
            return 0;
        }
    }
    if (n == 2) {
        errmsg_printf(errmsg, "%s: must be \"%s\" or \"%s\"", field, names[0],
                      names[1]);
    } else {
        errmsg_printf(errmsg, "%s: must be \"%s\", \"%s\" or \"%s\"", field,
                      names[0], names[1], names[2]);
    }
    return ERR_INVALID;
}

static int get_command(json_t *v, struct rsm_strv *out, char *errmsg)
{
    size_t i;
    json_t *a;
    if (!json_is_array(v) || json_array_size(v) == 0) {
        errmsg_printf(errmsg,
                      "command: must be a non-empty array of strings (argv)");
        return ERR_INVALID;
    }
    if (json_array_size(v) > RSM_ARGV_MAX) {
        errmsg_printf(errmsg, "command: at most %d arguments", RSM_ARGV_MAX);
        return ERR_INVALID;
    }
    json_array_foreach(v, i, a)
    {
        const char *s;
        if (!json_is_string(a)) {
            errmsg_printf(errmsg, "command[%zu]: must be a string", i);
            return ERR_INVALID;
        }
        s = json_string_value(a);
        if (strlen(s) != json_string_length(a)) {
            errmsg_printf(errmsg, "command[%zu]: must not contain NUL bytes",
                          i);
            return ERR_INVALID;
        }
        if (strlen(s) > RSM_ARG_MAX) {
            errmsg_printf(errmsg, "command[%zu]: longer than %d bytes", i,
                          RSM_ARG_MAX);
            return ERR_INVALID;
        }
        if (i == 0 && s[0] == '\0') {
            errmsg_printf(errmsg, "command[0]: must not be empty");
            return ERR_INVALID;
        }
        if (strv_push(out, s) != 0) {
            errmsg_printf(errmsg, "out of memory");
            return ERR_NOMEM;
        }
    }
    return 0;
}

/* An array of unique names (after, targets). */
static int get_names(json_t *v,
                     const char *field,
                     unsigned max,
                     bool strict_charset,
                     struct rsm_strv *out,
                     char *errmsg)
{
    size_t i;
    json_t *a;
    if (!json_is_array(v)) {
        errmsg_printf(errmsg, "%s: must be an array of strings", field);
        return ERR_INVALID;
    }
    if (json_array_size(v) > max) {
        errmsg_printf(errmsg, "%s: at most %u entries", field, max);
        return ERR_INVALID;
    }
    json_array_foreach(v, i, a)
    {
        const char *s;
        if (!json_is_string(a)) {
            errmsg_printf(errmsg, "%s[%zu]: must be a string", field, i);
            return ERR_INVALID;
        }
        s = json_string_value(a);
        if (strict_charset ? !config_valid_name(s)
                           : (s[0] == '\0' || strlen(s) > RSM_NAME_MAX ||
                              strlen(s) != json_string_length(a))) {
            errmsg_printf(errmsg,
                          "%s[%zu]: '%.64s' is not a valid name (1-63 of "
                          "[A-Za-z0-9._-])",
                          field, i, s);
            return ERR_INVALID;
        }
        for (unsigned k = 0; k < out->n; k++) {
            if (strcmp(out->v[k], s) == 0) {
                errmsg_printf(errmsg, "%s[%zu]: '%s' is listed twice", field, i,
                              s);
                return ERR_INVALID;
            }
        }
        if (strv_push(out, s) != 0) {
            errmsg_printf(errmsg, "out of memory");
            return ERR_NOMEM;
        }
    }
    return 0;
}

static bool valid_env_name(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_')) {
        return false;
    }
    for (s++; *s != '\0'; s++) {
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
              (*s >= '0' && *s <= '9') || *s == '_')) {
            return false;
        }
    }
    return true;
}

/* An object of string values (tags, env). */
static int get_kv(json_t *v,
                  const char *field,
                  unsigned max,
                  bool env,
                  struct rsm_kv **out,
                  unsigned *n_out,
                  char *errmsg)
{
    const char *key;
    json_t *val;
    unsigned n = 0;
    if (!json_is_object(v)) {
        errmsg_printf(errmsg, "%s: must be an object of strings", field);
        return ERR_INVALID;
    }
    if (json_object_size(v) > max) {
        errmsg_printf(errmsg, "%s: at most %u entries", field, max);
        return ERR_INVALID;
    }
    *out = calloc(json_object_size(v) + 1, sizeof **out);
    if (*out == NULL) {
        return ERR_NOMEM;
    }
    json_object_foreach(v, key, val)
    {
        const char *s;
        size_t vmax = env ? RSM_ARG_MAX : 63;
        bool key_ok = env ? (valid_env_name(key) && strlen(key) <= 128)
                          : (config_valid_name(key) && strlen(key) <= 31);
        if (!key_ok) {
            errmsg_printf(errmsg, "%s: '%.64s' is not a valid %s", field, key,
                          env ? "variable name" : "tag key");
            goto err;
        }
        if (env && strncmp(key, "KILN_", 5) == 0) {
            errmsg_printf(errmsg, "%s.%s: KILN_* variables are reserved", field,
                          key);
            goto err;
        }
        if (!json_is_string(val)) {
            errmsg_printf(errmsg, "%s.%s: must be a string", field, key);
            goto err;
        }
        s = json_string_value(val);
        if (strlen(s) > vmax || strlen(s) != json_string_length(val)) {
            errmsg_printf(errmsg, "%s.%s: longer than %zu bytes or has NUL",
                          field, key, vmax);
            goto err;
        }
        (*out)[n].key = dup_str(key);
        (*out)[n].value = dup_str(s);
        n++;
        if ((*out)[n - 1].key == NULL || (*out)[n - 1].value == NULL) {
            goto err;
        }
    }
    *n_out = n;
    return 0;

err:
    for (unsigned i = 0; i < n; i++) {
        free((*out)[i].key);
        free((*out)[i].value);
    }
    free(*out);
    *out = NULL;
    *n_out = 0;
    return ERR_INVALID;
}

/* body must be an object whose keys are all in known[0..n). */
static int check_object(json_t *body,
                        const char *const *known,
                        size_t n,
                        char *errmsg)
{
    const char *key;
    json_t *v;
    if (!json_is_object(body)) {
        errmsg_printf(errmsg, "body: must be a JSON object");
        return ERR_INVALID;
    }
    json_object_foreach(body, key, v)
    {
        bool ok = false;
        for (size_t i = 0; i < n; i++) {
            ok = ok || strcmp(key, known[i]) == 0;
        }
        if (!ok) {
            errmsg_printf(errmsg, "%.64s: unknown field", key);
            return ERR_INVALID;
        }
    }
    return 0;
}

static const char *const overlap_names[] = {"allow", "forbid", "replace"};
static const char *const catchup_names[] = {"none", "latest", "all"};
static const char *const kind_names[] = {"batch", "service"};

int api__pipeline_from_json(json_t *body,
                            const char *name_from_path,
                            api_schedule_check_fn check,
                            struct rsm_pipeline_spec *out,
                            char *errmsg)
{
    static const char *const known[] = {
        "name",       "command",   "schedule", "timezone", "after",
        "retries",    "timeout_s", "overlap",  "catchup",  "targets",
        "paused",     "kind",      "tags",     "env",      "version",
        "created_at", "updated_at"};
    json_t *v;
    int rv = ERR_INVALID;

    memset(out, 0, sizeof *out);
    if (check_object(body, known, ARRAY_SIZE(known), errmsg) != 0) {
        return ERR_INVALID;
    }

    v = json_object_get(body, "name");
    if (v == NULL && name_from_path != NULL) {
        str_copy(out->name, sizeof out->name, name_from_path);
    } else if (v == NULL) {
        errmsg_printf(errmsg, "name: is required");
        goto err;
    } else if (!json_is_string(v) || !config_valid_name(json_string_value(v))) {
        errmsg_printf(errmsg,
                      "name: must be 1-63 of [A-Za-z0-9._-], not starting "
                      "with '.' or '-'");
        goto err;
    } else {
        str_copy(out->name, sizeof out->name, json_string_value(v));
        if (name_from_path != NULL && strcmp(out->name, name_from_path) != 0) {
            errmsg_printf(errmsg, "name: '%s' does not match the URL ('%s')",
                          out->name, name_from_path);
            goto err;
        }
    }

    v = json_object_get(body, "command");
    if (v == NULL) {
        errmsg_printf(errmsg, "command: is required");
        goto err;
    }
    if ((rv = get_command(v, &out->command, errmsg)) != 0) {
        goto err;
    }
    rv = ERR_INVALID;
    if ((v = json_object_get(body, "timezone")) != NULL && !json_is_null(v)) {
        if (get_string(v, "timezone", RSM_TZ_MAX, out->timezone, errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "schedule")) != NULL && !json_is_null(v)) {
        if (get_string(v, "schedule", RSM_SCHEDULE_MAX, out->schedule,
                       errmsg)) {
            goto err;
        }
        if (out->schedule[0] == '\0') {
            errmsg_printf(errmsg, "schedule: must not be empty (omit it)");
            goto err;
        }
    }
    if (check != NULL &&
        (out->schedule[0] != '\0' || out->timezone[0] != '\0')) {
        char why[ERRMSG_SIZE];
        if (check(out->schedule, out->timezone, why) != 0) {
            errmsg_printf(errmsg, "%s", why);
            goto err;
        }
    }
    if ((v = json_object_get(body, "after")) != NULL && !json_is_null(v)) {
        if ((rv = get_names(v, "after", RSM_AFTER_MAX, true, &out->after,
                            errmsg)) != 0) {
            goto err;
        }
        rv = ERR_INVALID;
        for (unsigned i = 0; i < out->after.n; i++) {
            if (strcmp(out->after.v[i], out->name) == 0) {
                errmsg_printf(errmsg,
                              "after: a pipeline cannot run after "
                              "itself");
                goto err;
            }
        }
    }
    if ((v = json_object_get(body, "retries")) != NULL && !json_is_null(v)) {
        const char *rk;
        json_t *rvv;
        if (!json_is_object(v)) {
            errmsg_printf(errmsg,
                          "retries: must be an object {\"max\":N,"
                          "\"backoff_s\":N}");
            goto err;
        }
        json_object_foreach(v, rk, rvv)
        {
            if (strcmp(rk, "max") == 0) {
                if (get_uint(rvv, "retries.max", MAX_RETRIES, &out->retries_max,
                             errmsg)) {
                    goto err;
                }
            } else if (strcmp(rk, "backoff_s") == 0) {
                if (get_uint(rvv, "retries.backoff_s", MAX_BACKOFF_S,
                             &out->backoff_s, errmsg)) {
                    goto err;
                }
            } else {
                errmsg_printf(errmsg, "retries.%.32s: unknown field", rk);
                goto err;
            }
        }
    }
    if ((v = json_object_get(body, "timeout_s")) != NULL && !json_is_null(v)) {
        if (get_uint(v, "timeout_s", MAX_TIMEOUT_S, &out->timeout_s, errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "overlap")) != NULL && !json_is_null(v)) {
        if (get_enum(v, "overlap", overlap_names, 3, &out->overlap, errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "catchup")) != NULL && !json_is_null(v)) {
        if (get_enum(v, "catchup", catchup_names, 3, &out->catchup, errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "kind")) != NULL && !json_is_null(v)) {
        if (get_enum(v, "kind", kind_names, 2, &out->kind, errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "targets")) != NULL && !json_is_null(v)) {
        if ((rv = get_names(v, "targets", RSM_TARGETS_MAX, false, &out->targets,
                            errmsg)) != 0) {
            goto err;
        }
        rv = ERR_INVALID;
    }
    if ((v = json_object_get(body, "paused")) != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            errmsg_printf(errmsg, "paused: must be true or false");
            goto err;
        }
        out->paused = json_is_true(v);
    }
    if ((v = json_object_get(body, "tags")) != NULL && !json_is_null(v)) {
        if (get_kv(v, "tags", RSM_TAGS_MAX, false, &out->tags, &out->n_tags,
                   errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "env")) != NULL && !json_is_null(v)) {
        if (get_kv(v, "env", RSM_ENV_MAX, true, &out->env, &out->n_env,
                   errmsg)) {
            goto err;
        }
    }
    return 0;

err:
    rsm_spec_clear(out);
    memset(out, 0, sizeof *out);
    return rv != 0 ? rv : ERR_INVALID;
}

static json_t *strv_json(const struct rsm_strv *v)
{
    json_t *a = json_array();
    for (unsigned i = 0; i < v->n; i++) {
        json_array_append_new(a, json_string(v->v[i]));
    }
    return a;
}

static json_t *kv_json(const struct rsm_kv *kv, unsigned n)
{
    json_t *o = json_object();
    for (unsigned i = 0; i < n; i++) {
        json_object_set_new(o, kv[i].key, json_string(kv[i].value));
    }
    return o;
}

json_t *api__pipeline_to_json(const struct rsm_pipeline *p)
{
    const struct rsm_pipeline_spec *s = &p->spec;
    char created[TIME_STRLEN], updated[TIME_STRLEN];
    json_t *o = json_object();

    time_format_ms(p->created_ms, created);
    time_format_ms(p->updated_ms, updated);
    json_object_set_new(o, "name", json_string(s->name));
    json_object_set_new(o, "command", strv_json(&s->command));
    json_object_set_new(
        o, "schedule",
        s->schedule[0] != '\0' ? json_string(s->schedule) : json_null());
    json_object_set_new(
        o, "timezone",
        json_string(s->timezone[0] != '\0' ? s->timezone : "UTC"));
    json_object_set_new(o, "after", strv_json(&s->after));
    json_object_set_new(
        o, "retries",
        json_pack("{s:I,s:I}", "max", (json_int_t)s->retries_max, "backoff_s",
                  (json_int_t)s->backoff_s));
    json_object_set_new(o, "timeout_s", json_integer(s->timeout_s));
    json_object_set_new(o, "overlap",
                        json_string(overlap_names[s->overlap % 3]));
    json_object_set_new(o, "catchup",
                        json_string(catchup_names[s->catchup % 3]));
    json_object_set_new(o, "kind", json_string(kind_names[s->kind % 2]));
    json_object_set_new(o, "targets", strv_json(&s->targets));
    json_object_set_new(o, "paused", json_boolean(s->paused));
    json_object_set_new(o, "tags", kv_json(s->tags, s->n_tags));
    json_object_set_new(o, "env", kv_json(s->env, s->n_env));
    json_object_set_new(o, "version", json_integer((json_int_t)p->version));
    json_object_set_new(o, "created_at", json_string(created));
    json_object_set_new(o, "updated_at", json_string(updated));
    return o;
}

void api__status_for(int err, unsigned *status, const char **code)
{
    switch (err) {
        case 0:
            *status = 200;
            *code = "ok";
            break;
        case ERR_INVALID:
        case ERR_MALFORMED:
            *status = 400;
            *code = "bad_request";
            break;
        case ERR_NOTFOUND:
            *status = 404;
            *code = "not_found";
            break;
        case ERR_CONFLICT:
        case ERR_INUSE:
        case ERR_STALE:
            *status = 409;
            *code = "conflict";
            break;
        case ERR_TOOBIG:
            *status = 413;
            *code = "too_large";
            break;
        case ERR_NOTLEADER:
        case ERR_UNAVAILABLE:
        case ERR_TIMEOUT:
        case ERR_SHUTDOWN:
        case ERR_BUSY:
            *status = 503;
            *code = "unavailable";
            break;
        default:
            *status = 500;
            *code = "internal";
            break;
    }
}

int api__job_spec_from_json(json_t *body,
                            struct rsm_job_spec *out,
                            char *errmsg)
{
    static const char *const known[] = {
        "command", "retries", "timeout_s", "tags", "env", "kind", "backoff_s"};
    json_t *v;
    int rv = ERR_INVALID;

    memset(out, 0, sizeof *out);
    if (check_object(body, known, ARRAY_SIZE(known), errmsg) != 0) {
        return ERR_INVALID;
    }
    v = json_object_get(body, "command");
    if (v == NULL) {
        errmsg_printf(errmsg, "command: is required");
        goto err;
    }
    if ((rv = get_command(v, &out->argv, errmsg)) != 0) {
        goto err;
    }
    rv = ERR_INVALID;
    /* "retries" is a count here (CONTRACT POST /v1/jobs); pipelines use
     * {"max","backoff_s"}: accept that form too. */
    if ((v = json_object_get(body, "retries")) != NULL && !json_is_null(v)) {
        if (json_is_object(v)) {
            json_t *m = json_object_get(v, "max");
            json_t *b = json_object_get(v, "backoff_s");
            if (json_object_size(v) > (size_t)((m != NULL) + (b != NULL))) {
                errmsg_printf(errmsg, "retries: only max and backoff_s");
                goto err;
            }
            if (m != NULL && get_uint(m, "retries.max", MAX_RETRIES,
                                      &out->retries_max, errmsg)) {
                goto err;
            }
            if (b != NULL && get_uint(b, "retries.backoff_s", MAX_BACKOFF_S,
                                      &out->backoff_s, errmsg)) {
                goto err;
            }
        } else if (get_uint(v, "retries", MAX_RETRIES, &out->retries_max,
                            errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "backoff_s")) != NULL && !json_is_null(v)) {
        if (get_uint(v, "backoff_s", MAX_BACKOFF_S, &out->backoff_s, errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "timeout_s")) != NULL && !json_is_null(v)) {
        if (get_uint(v, "timeout_s", MAX_TIMEOUT_S, &out->timeout_s, errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "kind")) != NULL && !json_is_null(v)) {
        if (get_enum(v, "kind", kind_names, 2, &out->kind, errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "tags")) != NULL && !json_is_null(v)) {
        if (get_kv(v, "tags", RSM_TAGS_MAX, false, &out->tags, &out->n_tags,
                   errmsg)) {
            goto err;
        }
    }
    if ((v = json_object_get(body, "env")) != NULL && !json_is_null(v)) {
        if (get_kv(v, "env", RSM_ENV_MAX, true, &out->env, &out->n_env,
                   errmsg)) {
            goto err;
        }
    }
    return 0;

err:
    rsm_job_spec_clear(out);
    memset(out, 0, sizeof *out);
    return rv != 0 ? rv : ERR_INVALID;
}

static json_t *time_or_null(int64_t ms)
{
    char buf[TIME_STRLEN];
    if (ms <= 0) {
        return json_null();
    }
    time_format_ms(ms, buf);
    return json_string(buf);
}

json_t *api__job_to_json(const struct rsm_fsm *f, const struct rsm_job *j)
{
    char id[RSM_JOB_ID_MAX];
    /* "node": the holder while claimed/running, else the node that ran the
     * last attempt. */
    uint64_t node = j->node != 0 ? j->node : j->last_node;
    const struct rsm_member *m = node != 0 ? rsm_fsm_member(f, node) : NULL;
    json_t *o = json_object();
    bool ended = j->end == RSM_END_EXITED;

    rsm_job_id_format(j->seq, id);
    json_object_set_new(o, "id", json_string(id));
    if (j->spec.run != 0) {
        char run[32];
        snprintf(run, sizeof run, "r%llu", (unsigned long long)j->spec.run);
        json_object_set_new(o, "run", json_string(run));
    }
    if (j->spec.pipeline[0] != '\0') {
        json_object_set_new(o, "pipeline", json_string(j->spec.pipeline));
    }
    if (j->spec.target[0] != '\0') {
        json_object_set_new(o, "target", json_string(j->spec.target));
    }
    if (j->spec.scheduled_for_ms != 0) {
        json_object_set_new(o, "scheduled_for",
                            time_or_null(j->spec.scheduled_for_ms));
    }
    json_object_set_new(o, "state", json_string(rsm_job_state_name(j->state)));
    if (m != NULL) {
        json_object_set_new(o, "node", json_string(m->name));
    } else if (node != 0) {
        char hex[24];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)node);
        json_object_set_new(o, "node", json_string(hex));
    } else {
        json_object_set_new(o, "node", json_null());
    }
    json_object_set_new(o, "attempt", json_integer(j->attempt));
    json_object_set_new(o, "epoch", json_integer((json_int_t)j->epoch));
    json_object_set_new(o, "exit_code",
                        ended ? json_integer(j->exit_code) : json_null());
    json_object_set_new(
        o, "signal",
        j->end == RSM_END_SIGNALED ? json_integer(j->signal) : json_null());
    json_object_set_new(o, "end", json_string(rsm_job_end_name(j->end)));
    json_object_set_new(o, "created_at", time_or_null(j->created_ms));
    json_object_set_new(o, "started_at", time_or_null(j->started_ms));
    json_object_set_new(o, "finished_at", time_or_null(j->finished_ms));
    json_object_set_new(o, "not_before", time_or_null(j->not_before_ms));
    json_object_set_new(o, "cancel_requested",
                        json_boolean(j->cancel_requested));
    json_object_set_new(o, "command", strv_json(&j->spec.argv));
    json_object_set_new(
        o, "retries",
        json_pack("{s:I,s:I}", "max", (json_int_t)j->spec.retries_max,
                  "backoff_s", (json_int_t)j->spec.backoff_s));
    json_object_set_new(o, "timeout_s", json_integer(j->spec.timeout_s));
    json_object_set_new(o, "kind", json_string(kind_names[j->spec.kind % 2]));
    json_object_set_new(o, "tags", kv_json(j->spec.tags, j->spec.n_tags));
    json_object_set_new(o, "env", kv_json(j->spec.env, j->spec.n_env));
    json_object_set_new(o, "output_bytes",
                        json_integer((json_int_t)j->out_bytes));
    json_object_set_new(o, "output_cut", json_integer((json_int_t)j->out_cut));
    return o;
}
