/* Client argument parsing (declarative per command) and the JSON request
 * bodies built from it. */
#include <stdlib.h>
#include <string.h>

#include "cli_int.h"
#include "util.h"

#define MAX_RETRIES 1000000u
#define MAX_SECONDS (10u * 365u * 24u * 3600u)
#define MAX_LIMIT 1000000u

/* A flag with its value kind. */
enum kind { K_BOOL, K_STR, K_U64, K_KV };

static const struct
{
    const char *name;  /* "--name" */
    const char *alias; /* short form or NULL */
    unsigned bit;      /* CLI_F_* */
    enum kind kind;
} flags[] = {
    {"--retries", NULL, CLI_F_RETRIES, K_U64},
    {"--timeout", NULL, CLI_F_TIMEOUT, K_U64},
    {"--tag", NULL, CLI_F_TAG, K_KV},
    {"--env", NULL, CLI_F_ENV, K_KV},
    {"--state", NULL, CLI_F_STATE, K_STR},
    {"--limit", NULL, CLI_F_LIMIT, K_U64},
    {"--follow", "-f", CLI_F_FOLLOW, K_BOOL},
    {"--pipeline", NULL, CLI_F_PIPELINE, K_STR},
    {"--schedule", NULL, CLI_F_SCHEDULE, K_STR},
    {"--timezone", NULL, CLI_F_TIMEZONE, K_STR},
    {"--after", NULL, CLI_F_AFTER, K_STR},
    {"--backoff", NULL, CLI_F_BACKOFF, K_U64},
    {"--overlap", NULL, CLI_F_OVERLAP, K_STR},
    {"--catchup", NULL, CLI_F_CATCHUP, K_STR},
    {"--targets", NULL, CLI_F_TARGETS, K_STR},
    {"--paused", NULL, CLI_F_PAUSED, K_BOOL},
    {"--node", NULL, CLI_F_NODE, K_STR},
    {"--deadline", NULL, CLI_F_DEADLINE, K_U64},
};

static const char *const job_states[] = {
    "pending", "claimed",   "running", "retry_wait",
    "paused",  "succeeded", "failed",  "cancelled",
};

static bool one_of(const char *s, const char *const *set, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s, set[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* A comma-separated list of non-empty names. */
static bool valid_list(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || s[0] == ',' || s[len - 1] == ',' ||
        strstr(s, ",,") != NULL) {
        return false;
    }
    return true;
}

static int set_u64(struct cli_args *a,
                   unsigned bit,
                   const char *name,
                   const char *val,
                   char *errmsg)
{
    uint64_t max = bit == CLI_F_RETRIES ? MAX_RETRIES
                   : bit == CLI_F_LIMIT ? MAX_LIMIT
                                        : MAX_SECONDS;
    uint64_t v;

    if (parse_u64(val, max, &v) != 0) {
        errmsg_printf(errmsg, "%s: '%s' is not a number (0..%llu)", name, val,
                      (unsigned long long)max);
        return ERR_INVALID;
    }
    if (bit == CLI_F_LIMIT && v == 0) {
        errmsg_printf(errmsg, "%s: must be at least 1", name);
        return ERR_INVALID;
    }
    switch (bit) {
        case CLI_F_RETRIES:
            a->retries = v;
            a->has_retries = true;
            break;
        case CLI_F_TIMEOUT:
            a->timeout_s = v;
            a->has_timeout = true;
            break;
        case CLI_F_LIMIT:
            a->limit = v;
            a->has_limit = true;
            break;
        case CLI_F_BACKOFF:
            a->backoff_s = v;
            a->has_backoff = true;
            break;
        default:
            a->deadline_s = v;
            a->has_deadline = true;
            break;
    }
    return 0;
}

static int set_kv(struct cli_args *a,
                  unsigned bit,
                  const char *name,
                  const char *val,
                  char *errmsg)
{
    const char *eq = strchr(val, '=');
    struct cli_kv *kv;
    int *n = bit == CLI_F_TAG ? &a->ntags : &a->nenv;

    if (eq == NULL || eq == val) {
        errmsg_printf(errmsg, "%s: expected KEY=VALUE, got '%s'", name, val);
        return ERR_INVALID;
    }
    if (*n >= CLI_MAX_KV) {
        errmsg_printf(errmsg, "%s: at most %d allowed", name, CLI_MAX_KV);
        return ERR_INVALID;
    }
    kv = bit == CLI_F_TAG ? &a->tags[*n] : &a->env[*n];
    kv->key = val;
    kv->key_len = (size_t)(eq - val);
    kv->val = eq + 1;
    (*n)++;
    return 0;
}

static int set_str(struct cli_args *a,
                   unsigned bit,
                   const char *name,
                   const char *val,
                   char *errmsg)
{
    static const char *const overlaps[] = {"allow", "forbid", "replace"};
    static const char *const catchups[] = {"none", "latest", "all"};

    if (val[0] == '\0') {
        errmsg_printf(errmsg, "%s: empty value", name);
        return ERR_INVALID;
    }
    switch (bit) {
        case CLI_F_STATE:
            if (!one_of(val, job_states, ARRAY_SIZE(job_states))) {
                errmsg_printf(errmsg, "%s: unknown job state '%s'", name, val);
                return ERR_INVALID;
            }
            a->state = val;
            break;
        case CLI_F_OVERLAP:
            if (!one_of(val, overlaps, ARRAY_SIZE(overlaps))) {
                errmsg_printf(errmsg, "%s: expected allow, forbid or replace",
                              name);
                return ERR_INVALID;
            }
            a->overlap = val;
            break;
        case CLI_F_CATCHUP:
            if (!one_of(val, catchups, ARRAY_SIZE(catchups))) {
                errmsg_printf(errmsg, "%s: expected none, latest or all", name);
                return ERR_INVALID;
            }
            a->catchup = val;
            break;
        case CLI_F_AFTER:
        case CLI_F_TARGETS:
            if (!valid_list(val)) {
                errmsg_printf(errmsg, "%s: expected NAME[,NAME...]", name);
                return ERR_INVALID;
            }
            if (bit == CLI_F_AFTER) {
                a->after = val;
            } else {
                a->targets = val;
            }
            break;
        case CLI_F_PIPELINE:
            a->pipeline = val;
            break;
        case CLI_F_SCHEDULE:
            a->schedule = val;
            break;
        case CLI_F_TIMEZONE:
            a->timezone = val;
            break;
        default:
            a->node = val;
            break;
    }
    return 0;
}

/* Match "--name", "--name=value" or the alias. Sets *inline_val. */
static int match_flag(const char *word, const char **inline_val)
{
    for (size_t i = 0; i < ARRAY_SIZE(flags); i++) {
        size_t n = strlen(flags[i].name);
        if (strncmp(word, flags[i].name, n) == 0 &&
            (word[n] == '\0' || word[n] == '=')) {
            *inline_val = word[n] == '=' ? word + n + 1 : NULL;
            return (int)i;
        }
        if (flags[i].alias != NULL && strcmp(word, flags[i].alias) == 0) {
            *inline_val = NULL;
            return (int)i;
        }
    }
    return -1;
}

int cli__parse(const struct cli_cmd *cmd,
               int argc,
               char **argv,
               struct cli_args *a,
               char *errmsg)
{
    int i;
    int rv;

    memset(a, 0, sizeof *a);
    for (i = 0; i < argc; i++) {
        const char *w = argv[i];
        const char *val = NULL;
        int f;

        if (strcmp(w, "--") == 0) {
            if (cmd->cmd_words == 0) {
                errmsg_printf(errmsg, "unexpected '--'");
                return ERR_INVALID;
            }
            a->cmd = argv + i + 1;
            a->ncmd = argc - i - 1;
            break;
        }
        if (strcmp(w, "-h") == 0 || strcmp(w, "--help") == 0) {
            a->help = true;
            return 0;
        }
        if (strcmp(w, "--json") == 0) {
            a->json = true;
            continue;
        }
        if (strncmp(w, "--addr", 6) == 0 && (w[6] == '\0' || w[6] == '=')) {
            if (w[6] == '=') {
                a->addr = w + 7;
            } else if (i + 1 < argc) {
                a->addr = argv[++i];
            } else {
                errmsg_printf(errmsg, "--addr needs a value");
                return ERR_INVALID;
            }
            continue;
        }
        if (w[0] != '-' || w[1] == '\0') {
            if (a->npos >= cmd->max_pos) {
                errmsg_printf(errmsg, "unexpected argument '%s'", w);
                return ERR_INVALID;
            }
            a->pos[a->npos++] = w;
            continue;
        }
        f = match_flag(w, &val);
        if (f < 0 || (cmd->flags & flags[f].bit) == 0) {
            errmsg_printf(errmsg, "unknown flag '%s'", w);
            return ERR_INVALID;
        }
        if (flags[f].kind == K_BOOL) {
            if (val != NULL) {
                errmsg_printf(errmsg, "%s takes no value", flags[f].name);
                return ERR_INVALID;
            }
            if (flags[f].bit == CLI_F_FOLLOW) {
                a->follow = true;
            } else {
                a->paused = true;
            }
            continue;
        }
        if (val == NULL) {
            if (i + 1 >= argc) {
                errmsg_printf(errmsg, "%s needs a value", flags[f].name);
                return ERR_INVALID;
            }
            val = argv[++i];
        }
        if (flags[f].kind == K_U64) {
            rv = set_u64(a, flags[f].bit, flags[f].name, val, errmsg);
        } else if (flags[f].kind == K_KV) {
            rv = set_kv(a, flags[f].bit, flags[f].name, val, errmsg);
        } else {
            rv = set_str(a, flags[f].bit, flags[f].name, val, errmsg);
        }
        if (rv != 0) {
            return rv;
        }
    }
    if (a->addr != NULL) {
        struct addr ad;
        if (addr_parse(a->addr, &ad, NULL) != 0) {
            errmsg_printf(errmsg, "--addr: expected HOST:PORT, got '%s'",
                          a->addr);
            return ERR_INVALID;
        }
    }
    if (a->npos < cmd->min_pos) {
        errmsg_printf(errmsg, "missing argument");
        return ERR_INVALID;
    }
    for (int k = 0; k < a->npos; k++) {
        if (strlen(a->pos[k]) > 256) {
            errmsg_printf(errmsg, "argument too long");
            return ERR_INVALID;
        }
    }
    if (cmd->cmd_words > 0 && a->ncmd == 0) {
        errmsg_printf(errmsg, "missing command after '--'");
        return ERR_INVALID;
    }
    if (a->has_backoff && !a->has_retries) {
        errmsg_printf(errmsg, "--backoff needs --retries");
        return ERR_INVALID;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* JSON bodies. Keys appear in the order the contract lists them.      */

static int add_kvs(json_t *obj,
                   const char *key,
                   const struct cli_kv *kvs,
                   int n)
{
    json_t *m;

    if (n == 0) {
        return 0;
    }
    m = json_object();
    if (m == NULL) {
        return ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        char k[256];
        size_t len =
            kvs[i].key_len < sizeof k - 1 ? kvs[i].key_len : sizeof k - 1;
        memcpy(k, kvs[i].key, len);
        k[len] = '\0';
        if (json_object_set_new(m, k, json_string(kvs[i].val)) != 0) {
            json_decref(m);
            return ERR_INVALID;
        }
    }
    return json_object_set_new(obj, key, m) == 0 ? 0 : ERR_NOMEM;
}

static json_t *string_array(char *const *words, int n)
{
    json_t *arr = json_array();
    if (arr == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (json_array_append_new(arr, json_string(words[i])) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* "a,b,c" -> ["a","b","c"]. */
static json_t *split_list(const char *s)
{
    json_t *arr = json_array();
    const char *p = s;

    if (arr == NULL) {
        return NULL;
    }
    for (;;) {
        const char *c = strchr(p, ',');
        size_t n = c != NULL ? (size_t)(c - p) : strlen(p);
        if (json_array_append_new(arr, json_stringn(p, n)) != 0) {
            json_decref(arr);
            return NULL;
        }
        if (c == NULL) {
            break;
        }
        p = c + 1;
    }
    return arr;
}

static int set_new(json_t *obj, const char *key, json_t *v)
{
    if (v == NULL) {
        return ERR_INVALID; /* allocation failed or invalid UTF-8 */
    }
    return json_object_set_new(obj, key, v) == 0 ? 0 : ERR_NOMEM;
}

static int dump(json_t *obj, char **out, char *errmsg)
{
    *out = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    if (*out == NULL) {
        errmsg_printf(errmsg, "out of memory");
        return ERR_NOMEM;
    }
    return 0;
}

int cli__submit_body(const struct cli_args *a, char **out, char *errmsg)
{
    json_t *obj = json_object();
    int rv = obj == NULL ? ERR_NOMEM : 0;

    if (rv == 0) {
        rv = set_new(obj, "command", string_array(a->cmd, a->ncmd));
    }
    if (rv == 0 && a->has_retries) {
        rv = set_new(obj, "retries", json_integer((json_int_t)a->retries));
    }
    if (rv == 0 && a->has_timeout) {
        rv = set_new(obj, "timeout_s", json_integer((json_int_t)a->timeout_s));
    }
    if (rv == 0) {
        rv = add_kvs(obj, "tags", a->tags, a->ntags);
    }
    if (rv == 0) {
        rv = add_kvs(obj, "env", a->env, a->nenv);
    }
    if (rv != 0) {
        json_decref(obj);
        errmsg_printf(errmsg,
                      "cannot encode the request (is every "
                      "argument valid UTF-8?)");
        return rv;
    }
    return dump(obj, out, errmsg);
}

int cli__pipeline_body(const struct cli_args *a, char **out, char *errmsg)
{
    json_t *obj = json_object();
    int rv = obj == NULL ? ERR_NOMEM : 0;

    if (rv == 0) {
        rv = set_new(obj, "name", json_string(a->pos[0]));
    }
    if (rv == 0) {
        rv = set_new(obj, "command", string_array(a->cmd, a->ncmd));
    }
    if (rv == 0 && a->schedule != NULL) {
        rv = set_new(obj, "schedule", json_string(a->schedule));
    }
    if (rv == 0 && a->timezone != NULL) {
        rv = set_new(obj, "timezone", json_string(a->timezone));
    }
    if (rv == 0 && a->after != NULL) {
        rv = set_new(obj, "after", split_list(a->after));
    }
    if (rv == 0 && a->has_retries) {
        rv = set_new(
            obj, "retries",
            json_pack("{s:I,s:I}", "max", (json_int_t)a->retries, "backoff_s",
                      (json_int_t)(a->has_backoff ? a->backoff_s : 10)));
    }
    if (rv == 0 && a->has_timeout) {
        rv = set_new(obj, "timeout_s", json_integer((json_int_t)a->timeout_s));
    }
    if (rv == 0 && a->overlap != NULL) {
        rv = set_new(obj, "overlap", json_string(a->overlap));
    }
    if (rv == 0 && a->catchup != NULL) {
        rv = set_new(obj, "catchup", json_string(a->catchup));
    }
    if (rv == 0 && a->targets != NULL) {
        rv = set_new(obj, "targets", split_list(a->targets));
    }
    if (rv == 0 && a->paused) {
        rv = set_new(obj, "paused", json_true());
    }
    if (rv != 0) {
        json_decref(obj);
        errmsg_printf(errmsg,
                      "cannot encode the request (is every "
                      "argument valid UTF-8?)");
        return rv;
    }
    return dump(obj, out, errmsg);
}

int cli__pause_body(json_t *pipeline, bool paused, char **out, char *errmsg)
{
    static const char *const server_fields[] = {"version", "created_at",
                                                "updated_at"};
    json_t *copy;

    if (!json_is_object(pipeline)) {
        errmsg_printf(errmsg,
                      "unexpected response from server: pipeline "
                      "is not an object");
        return ERR_MALFORMED;
    }
    copy = json_deep_copy(pipeline);
    if (copy == NULL) {
        errmsg_printf(errmsg, "out of memory");
        return ERR_NOMEM;
    }
    for (size_t i = 0; i < ARRAY_SIZE(server_fields); i++) {
        json_object_del(copy, server_fields[i]);
    }
    if (json_object_set_new(copy, "paused", json_boolean(paused)) != 0) {
        json_decref(copy);
        errmsg_printf(errmsg, "out of memory");
        return ERR_NOMEM;
    }
    return dump(copy, out, errmsg);
}
