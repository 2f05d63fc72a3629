/* Multi-process cluster helpers: N agents on 127.0.0.1 with short
 * timeouts, and queries of their /v1/cluster views. */
#ifndef KILN_TEST_PROCS_H_
#define KILN_TEST_PROCS_H_

#include <stdbool.h>

#include "lib/harness.h"

#define CL_MAXN 6

struct cl
{
    char root[256];
    struct th_agent a[CL_MAXN];
    int n;
};

/* Flags every test agent gets (short election, gossip and segments). */
extern const char *const cl_fast_flags[];

/* Start agent i (prepared), joining `join` (NULL: none) with
 * --bootstrap-expect `expect` (0: none). Extra flags may be NULL. */
void cl_start_one(struct cl *c, int i, const char *join, int expect);
void cl_start_one_with(struct cl *c,
                       int i,
                       const char *join,
                       int expect,
                       const char *const *extra);
/* n agents n1..nN, all with --bootstrap-expect n, joining n1. */
void cl_start(struct cl *c, int n, const char *tag);
void cl_start_with(struct cl *c,
                   int n,
                   const char *tag,
                   const char *const *extra);
/* SIGTERM every agent; dump logs unless ok; remove the dir if ok. */
void cl_stop(struct cl *c, bool ok);

json_t *cl_cluster_of(const struct th_agent *a);
void cl_state_of(const struct th_agent *a, const char *name, char *out);
void cl_leader_of(const struct th_agent *a, char *out);
int cl_index_of(struct cl *c, const char *name);

struct view_arg
{
    struct cl *c;
    const char *who;  /* member to check, NULL = all */
    const char *want; /* state */
    int skip;         /* observer index to skip */
};
/* th_wait conditions */
bool cl_all_see(void *view_arg);
bool cl_same_leader(void *cl);

#endif /* KILN_TEST_PROCS_H_ */
