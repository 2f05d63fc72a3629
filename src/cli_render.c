/* Human-readable output for client commands: aligned tables and
 * "key: value" lines built from the server's JSON, tolerant of missing or
 * mistyped fields. */
#include <stdlib.h>
#include <string.h>

#include "cli_int.h"
#include "util.h"

#define CELL_SIZE 512

int cli__table_init(struct cli_table *t,
                    const char *const *headers,
                    size_t ncols)
{
    memset(t, 0, sizeof *t);
    t->headers = headers;
    t->ncols = ncols;
    return 0;
}

void cli__table_free(struct cli_table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++) {
        free(t->cells[i]);
    }
    free(t->cells);
    t->cells = NULL;
    t->nrows = t->cap = 0;
}

/* A copy with control bytes replaced, so a name cannot drive the
 * terminal. */
static char *clean_dup(const char *s)
{
    char *d = strdup(s != NULL ? s : "-");
    if (d == NULL) {
        return NULL;
    }
    for (char *p = d; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            *p = '?';
        }
    }
    return d;
}

int cli__table_add(struct cli_table *t, const char *const *row)
{
    if (t->nrows == t->cap) {
        size_t ncap = t->cap == 0 ? 16 : t->cap * 2;
        char **p = realloc(t->cells, ncap * t->ncols * sizeof *p);
        if (p == NULL) {
            return ERR_NOMEM;
        }
        t->cells = p;
        t->cap = ncap;
    }
    for (size_t c = 0; c < t->ncols; c++) {
        char *d = clean_dup(row[c]);
        if (d == NULL) {
            for (size_t k = 0; k < c; k++) {
                free(t->cells[t->nrows * t->ncols + k]);
            }
            return ERR_NOMEM;
        }
        t->cells[t->nrows * t->ncols + c] = d;
    }
    t->nrows++;
    return 0;
}

static void print_row(const struct cli_table *t,
                      const size_t *widths,
                      const char *const *cells,
                      FILE *out)
{
    for (size_t c = 0; c < t->ncols; c++) {
        if (c + 1 < t->ncols) {
            fprintf(out, "%-*s  ", (int)widths[c], cells[c]);
        } else {
            fprintf(out, "%s\n", cells[c]);
        }
    }
}

void cli__table_print(const struct cli_table *t, FILE *out)
{
    size_t *widths = calloc(t->ncols, sizeof *widths);

    if (widths == NULL) {
        return;
    }
    for (size_t c = 0; c < t->ncols; c++) {
        widths[c] = strlen(t->headers[c]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t n = strlen(t->cells[r * t->ncols + c]);
            widths[c] = n > widths[c] ? n : widths[c];
        }
    }
    print_row(t, widths, t->headers, out);
    for (size_t r = 0; r < t->nrows; r++) {
        print_row(t, widths, (const char *const *)&t->cells[r * t->ncols], out);
    }
    free(widths);
}

static void scalar(const json_t *v, char *buf, size_t size)
{
    switch (json_typeof(v)) {
        case JSON_STRING:
            snprintf(buf, size, "%s", json_string_value(v));
            break;
        case JSON_INTEGER:
            snprintf(buf, size, "%lld", (long long)json_integer_value(v));
            break;
        case JSON_REAL:
            snprintf(buf, size, "%g", json_real_value(v));
            break;
        case JSON_TRUE:
            snprintf(buf, size, "yes");
            break;
        case JSON_FALSE:
            snprintf(buf, size, "no");
            break;
        default:
            snprintf(buf, size, "-");
            break;
    }
}

void cli__cell(const json_t *v, const char *sep, char *buf, size_t size)
{
    size_t i;
    json_t *e;
    bool scalars = true;

    if (size == 0) {
        return;
    }
    buf[0] = '\0';
    if (v == NULL || json_is_null(v)) {
        snprintf(buf, size, "-");
        return;
    }
    if (json_is_array(v)) {
        json_array_foreach(v, i, e)
        {
            if (json_is_array(e) || json_is_object(e)) {
                scalars = false;
            }
        }
        if (scalars) {
            size_t used = 0;
            if (json_array_size(v) == 0) {
                snprintf(buf, size, "-");
                return;
            }
            json_array_foreach(v, i, e)
            {
                char one[CELL_SIZE];
                int n;
                scalar(e, one, sizeof one);
                n = snprintf(buf + used, size - used, "%s%s", i > 0 ? sep : "",
                             one);
                if (n < 0 || (size_t)n >= size - used) {
                    break;
                }
                used += (size_t)n;
            }
            return;
        }
    }
    if (json_is_array(v) || json_is_object(v)) {
        char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
        snprintf(buf, size, "%s", s != NULL ? s : "?");
        free(s);
        return;
    }
    scalar(v, buf, size);
}

/* The array under @key of a response object, or ERR_MALFORMED. */
static int get_list(json_t *resp, const char *key, json_t **list, char *errmsg)
{
    *list = json_is_object(resp) ? json_object_get(resp, key) : NULL;
    if (!json_is_array(*list)) {
        errmsg_printf(errmsg,
                      "unexpected response from server: no '%s' "
                      "list",
                      key);
        return ERR_MALFORMED;
    }
    return 0;
}

/* A table whose cells are fields of each object in @list, named by
 * @fields (column i shows fields[i]). */
static int render_list(json_t *list,
                       const char *const *headers,
                       const char *const *fields,
                       size_t ncols,
                       FILE *out,
                       char *errmsg)
{
    struct cli_table t;
    char cells[8][CELL_SIZE];
    const char *row[8];
    size_t i;
    json_t *item;
    int rv = 0;

    cli__table_init(&t, headers, ncols);
    json_array_foreach(list, i, item)
    {
        for (size_t c = 0; c < ncols; c++) {
            json_t *v =
                json_is_object(item) ? json_object_get(item, fields[c]) : NULL;
            cli__cell(v, ",", cells[c], sizeof cells[c]);
            row[c] = cells[c];
        }
        rv = cli__table_add(&t, row);
        if (rv != 0) {
            errmsg_printf(errmsg, "out of memory");
            goto out;
        }
    }
    cli__table_print(&t, out);
out:
    cli__table_free(&t);
    return rv;
}

int cli__render_nodes(json_t *resp, FILE *out, char *errmsg)
{
    static const char *const headers[] = {"NAME", "STATE", "ROLE", "API",
                                          "RUNNING/SLOTS"};
    struct cli_table t;
    json_t *list;
    json_t *node;
    const char *leader;
    size_t i;
    int rv;

    rv = get_list(resp, "nodes", &list, errmsg);
    if (rv != 0) {
        return rv;
    }
    leader = json_string_value(json_object_get(resp, "leader"));
    cli__table_init(&t, headers, ARRAY_SIZE(headers));
    json_array_foreach(list, i, node)
    {
        char name[CELL_SIZE], state[CELL_SIZE], role[CELL_SIZE];
        char api[CELL_SIZE], running[64], slots[64], load[140];
        const char *nm;
        const char *row[5] = {name, state, role, api, load};

        if (!json_is_object(node)) {
            node = NULL;
        }
        nm = json_string_value(json_object_get(node, "name"));
        snprintf(
            name, sizeof name, "%s%s", nm != NULL ? nm : "-",
            nm != NULL && leader != NULL && strcmp(nm, leader) == 0 ? "*" : "");
        cli__cell(json_object_get(node, "state"), ",", state, sizeof state);
        if (json_is_true(json_object_get(node, "draining"))) {
            size_t n = strlen(state);
            snprintf(state + n, sizeof state - n, ",draining");
        }
        cli__cell(json_object_get(node, "role"), ",", role, sizeof role);
        cli__cell(json_object_get(node, "api"), ",", api, sizeof api);
        cli__cell(json_object_get(node, "running"), ",", running,
                  sizeof running);
        cli__cell(json_object_get(node, "slots"), ",", slots, sizeof slots);
        snprintf(load, sizeof load, "%s/%s", running, slots);
        rv = cli__table_add(&t, row);
        if (rv != 0) {
            errmsg_printf(errmsg, "out of memory");
            cli__table_free(&t);
            return rv;
        }
    }
    cli__table_print(&t, out);
    cli__table_free(&t);
    return 0;
}

int cli__render_pipelines(json_t *resp, FILE *out, char *errmsg)
{
    static const char *const headers[] = {"NAME", "SCHEDULE", "AFTER", "PAUSED",
                                          "VERSION"};
    static const char *const fields[] = {"name", "schedule", "after", "paused",
                                         "version"};
    json_t *list;
    int rv = get_list(resp, "pipelines", &list, errmsg);
    if (rv != 0) {
        return rv;
    }
    return render_list(list, headers, fields, ARRAY_SIZE(headers), out, errmsg);
}

int cli__render_jobs(json_t *resp, FILE *out, char *errmsg)
{
    static const char *const headers[] = {"ID",      "STATE", "NODE",
                                          "ATTEMPT", "EXIT",  "CREATED"};
    static const char *const fields[] = {"id",      "state",     "node",
                                         "attempt", "exit_code", "created_at"};
    json_t *list;
    int rv = get_list(resp, "jobs", &list, errmsg);
    if (rv != 0) {
        return rv;
    }
    return render_list(list, headers, fields, ARRAY_SIZE(headers), out, errmsg);
}

int cli__render_runs(json_t *resp, FILE *out, char *errmsg)
{
    static const char *const headers[] = {"ID",      "PIPELINE",  "STATE",
                                          "TRIGGER", "SCHEDULED", "JOBS"};
    static const char *const fields[] = {"id",      "pipeline",      "state",
                                         "trigger", "scheduled_for", "jobs"};
    json_t *list;
    int rv = get_list(resp, "runs", &list, errmsg);
    if (rv != 0) {
        return rv;
    }
    return render_list(list, headers, fields, ARRAY_SIZE(headers), out, errmsg);
}

int cli__render_kv(json_t *obj, FILE *out, char *errmsg)
{
    const char *key;
    json_t *v;
    size_t width = 0;

    if (!json_is_object(obj)) {
        errmsg_printf(errmsg,
                      "unexpected response from server: not an "
                      "object");
        return ERR_MALFORMED;
    }
    json_object_foreach(obj, key, v)
    {
        size_t n = strlen(key);
        width = n > width ? n : width;
    }
    json_object_foreach(obj, key, v)
    {
        char cell[4096];
        char *k;
        char *c;
        cli__cell(v, strcmp(key, "command") == 0 ? " " : ",", cell,
                  sizeof cell);
        k = clean_dup(key);
        c = clean_dup(cell);
        if (k != NULL && c != NULL) {
            fprintf(out, "%s:%*s %s\n", k, (int)(width - strlen(k)), "", c);
        }
        free(k);
        free(c);
    }
    return 0;
}
