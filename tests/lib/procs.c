/* Multi-process cluster helpers for integration tests. */
#include "lib/procs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Short timeouts so failure detection and failover are quick in tests. */
const char *const cl_fast_flags[] = {"--election-ms",
                                     "300",
                                     "--heartbeat-ms",
                                     "30",
                                     "--gossip-interval-ms",
                                     "200",
                                     "--segment-kib",
                                     "512",
                                     "--log-level",
                                     "info",
                                     NULL};

void cl_start_one(struct cl *c, int i, const char *join, int expect)
{
    cl_start_one_with(c, i, join, expect, NULL);
}

void cl_start_one_with(struct cl *c,
                       int i,
                       const char *join,
                       int expect,
                       const char *const *extra)
{
    const char *argv[48];
    int k = 0;
    char ebuf[8];
    for (int j = 0; cl_fast_flags[j] != NULL; j++) {
        argv[k++] = cl_fast_flags[j];
    }
    if (join != NULL) {
        argv[k++] = "--join";
        argv[k++] = join;
    }
    if (expect > 0) {
        snprintf(ebuf, sizeof ebuf, "%d", expect);
        argv[k++] = "--bootstrap-expect";
        argv[k++] = ebuf;
    }
    for (int j = 0; extra != NULL && extra[j] != NULL && k < 46; j++) {
        argv[k++] = extra[j];
    }
    argv[k] = NULL;
    th_agent_start(&c->a[i], argv);
}

void cl_start(struct cl *c, int n, const char *tag)
{
    cl_start_with(c, n, tag, NULL);
}

void cl_start_with(struct cl *c,
                   int n,
                   const char *tag,
                   const char *const *extra)
{
    memset(c, 0, sizeof *c);
    th_tmpdir(c->root, sizeof c->root, tag);
    c->n = n;
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "n%d", i + 1);
        th_agent_prepare(&c->a[i], c->root, name);
    }
    for (int i = 0; i < n; i++) {
        cl_start_one_with(c, i, i == 0 ? NULL : c->a[0].gossip_addr, n, extra);
    }
}

void cl_stop(struct cl *c, bool ok)
{
    for (int i = 0; i < c->n; i++) {
        if (!ok) {
            th_dump_log(&c->a[i]);
        }
        th_agent_stop(&c->a[i], 10000);
    }
    if (ok) {
        th_rmrf(c->root);
    }
}

json_t *cl_cluster_of(const struct th_agent *a)
{
    char url[64];
    snprintf(url, sizeof url, "http://%s/v1/cluster", a->api_addr);
    return th_get_json(url);
}

/* state of member `name` in a's view, "" if absent */
void cl_state_of(const struct th_agent *a, const char *name, char *out)
{
    json_t *j = cl_cluster_of(a);
    size_t i;
    json_t *m;
    out[0] = '\0';
    if (j == NULL) {
        return;
    }
    json_array_foreach(json_object_get(j, "nodes"), i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "name")), name) == 0) {
            snprintf(out, 16, "%s",
                     json_string_value(json_object_get(m, "state")));
        }
    }
    json_decref(j);
}

bool cl_all_see(void *p)
{
    struct view_arg *v = p;
    for (int i = 0; i < v->c->n; i++) {
        if (i == v->skip || v->c->a[i].pid == 0) {
            continue;
        }
        for (int k = 0; k < v->c->n; k++) {
            char st[16];
            if (v->who != NULL && strcmp(v->c->a[k].name, v->who) != 0) {
                continue;
            }
            cl_state_of(&v->c->a[i], v->c->a[k].name, st);
            if (strcmp(st, v->want) != 0) {
                return false;
            }
        }
    }
    return true;
}

void cl_leader_of(const struct th_agent *a, char *out)
{
    json_t *j = cl_cluster_of(a);
    out[0] = '\0';
    if (j != NULL && json_is_string(json_object_get(j, "leader"))) {
        snprintf(out, 16, "%s",
                 json_string_value(json_object_get(j, "leader")));
    }
    json_decref(j);
}

bool cl_same_leader(void *p)
{
    struct cl *c = p;
    char first[16] = "";
    for (int i = 0; i < c->n; i++) {
        char l[16];
        if (c->a[i].pid == 0) {
            continue;
        }
        cl_leader_of(&c->a[i], l);
        if (l[0] == '\0') {
            return false;
        }
        if (first[0] == '\0') {
            strcpy(first, l);
        } else if (strcmp(first, l) != 0) {
            return false;
        }
    }
    return true;
}

int cl_index_of(struct cl *c, const char *name)
{
    for (int i = 0; i < c->n; i++) {
        if (strcmp(c->a[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}
