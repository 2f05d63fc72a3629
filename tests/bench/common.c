/* Shared helpers of the benchmarks (see common.h). */
#include "bench/common.h"

#include <curl/curl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void bn_parse_args(int argc, char **argv, struct bn_opts *o)
{
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            o->quick = true;
        } else if (strcmp(argv[i], "--trials") == 0 && i + 1 < argc) {
            o->trials = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--quick] [--trials N]\n", argv[0]);
            exit(2);
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

uint64_t bn_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int64_t bn_real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void start_agent(struct bn *c, int i)
{
    const char *argv[48];
    int k = 0;
    char ebuf[16];
    argv[k++] = "--log-level";
    argv[k++] = "warn";
    if (i > 0) {
        argv[k++] = "--join";
        argv[k++] = c->a[0].gossip_addr;
    }
    if (i < 3) {
        snprintf(ebuf, sizeof ebuf, "%d", c->n < 3 ? c->n : 3);
        argv[k++] = "--bootstrap-expect";
        argv[k++] = ebuf;
    }
    for (int j = 0; c->extra != NULL && c->extra[j] != NULL && k < 46; j++) {
        argv[k++] = c->extra[j];
    }
    argv[k] = NULL;
    th_agent_start(&c->a[i], argv);
}

static bool all_alive(struct bn *c)
{
    for (int i = 0; i < c->n; i++) {
        if (!bn_all_see(c, c->a[i].name, "alive", -1)) {
            return false;
        }
    }
    return true;
}

static bool same_leader(struct bn *c)
{
    int l = bn_leader(c, 0);
    if (l < 0) {
        return false;
    }
    for (int i = 1; i < c->n; i++) {
        if (c->a[i].pid != 0 && bn_leader(c, i) != l) {
            return false;
        }
    }
    return true;
}

static bool wait_for(bool (*cond)(struct bn *c), struct bn *c, unsigned ms)
{
    uint64_t end = th_now_ms() + ms;
    while (th_now_ms() < end) {
        if (cond(c)) {
            return true;
        }
        usleep(50000);
    }
    return false;
}

bool bn_start(struct bn *c, int n, const char *tag, const char *const *extra)
{
    memset(c, 0, sizeof *c);
    th_tmpdir(c->root, sizeof c->root, tag);
    c->n = n;
    c->extra = extra;
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "n%d", i + 1);
        th_agent_prepare(&c->a[i], c->root, name);
    }
    for (int i = 0; i < n && i < 3; i++) {
        start_agent(c, i);
    }
    if (n > 3) {
        /* the first three form the cluster, the rest join it */
        int saved = c->n;
        c->n = 3;
        if (!wait_for(same_leader, c, 30000)) {
            c->n = saved;
            return false;
        }
        c->n = saved;
        for (int i = 3; i < n; i++) {
            start_agent(c, i);
        }
    }
    if (!wait_for(all_alive, c, 60000) || !wait_for(same_leader, c, 30000)) {
        return false;
    }
    {
        /* every figure below depends on /v1/status: check its shape */
        json_t *s = bn_status(c, 0);
        bool ok = bn_jint(s, "rss_kib") > 0 && bn_jint(s, "fsm.jobs") >= 0 &&
                  bn_jint(s, "gossip.udp_out_bytes") >= 0;
        json_decref(s);
        if (!ok) {
            fprintf(stderr, "GET /v1/status of n1: unexpected shape\n");
        }
        return ok;
    }
}

void bn_restart(struct bn *c, int i)
{
    start_agent(c, i);
}

bool bn_restart_wait(struct bn *c, int i, unsigned ms)
{
    uint64_t end = th_now_ms() + ms;
    start_agent(c, i);
    while (th_now_ms() < end) {
        int st;
        if (waitpid(c->a[i].pid, &st, WNOHANG) == c->a[i].pid) {
            c->a[i].pid = 0;
            return false;
        }
        if (bn_all_see(c, c->a[i].name, "alive", i)) {
            return true;
        }
        usleep(50000);
    }
    th_agent_kill(&c->a[i]);
    return false;
}

void bn_stop(struct bn *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->a[i].pid != 0) {
            kill(c->a[i].pid, SIGTERM);
        }
    }
    for (int i = 0; i < c->n; i++) {
        if (c->a[i].pid != 0) {
            th_agent_stop(&c->a[i], 10000);
        }
    }
    th_rmrf(c->root);
}

json_t *bn_status(const struct bn *c, int i)
{
    char url[80];
    if (c->a[i].pid == 0) {
        return NULL;
    }
    snprintf(url, sizeof url, "http://%s/v1/status", c->a[i].api_addr);
    return th_get_json(url);
}

int64_t bn_jint(json_t *j, const char *path)
{
    char buf[128];
    char *save = NULL;
    snprintf(buf, sizeof buf, "%s", path);
    for (char *t = strtok_r(buf, ".", &save); t != NULL && j != NULL;
         t = strtok_r(NULL, ".", &save)) {
        j = json_object_get(j, t);
    }
    return json_is_integer(j) ? (int64_t)json_integer_value(j) : -1;
}

static json_t *cluster_of(const struct th_agent *a)
{
    char url[80];
    snprintf(url, sizeof url, "http://%s/v1/cluster", a->api_addr);
    return th_get_json(url);
}

int bn_leader(struct bn *c, int from)
{
    json_t *j = cluster_of(&c->a[from]);
    const char *name = json_string_value(json_object_get(j, "leader"));
    int idx = -1;
    for (int i = 0; name != NULL && i < c->n; i++) {
        if (strcmp(c->a[i].name, name) == 0) {
            idx = i;
        }
    }
    json_decref(j);
    return idx;
}

bool bn_all_see(struct bn *c, const char *name, const char *want, int skip)
{
    for (int i = 0; i < c->n; i++) {
        json_t *j;
        json_t *m;
        size_t k;
        bool ok = false;
        if (i == skip || c->a[i].pid == 0) {
            continue;
        }
        j = cluster_of(&c->a[i]);
        json_array_foreach(json_object_get(j, "nodes"), k, m)
        {
            const char *nm = json_string_value(json_object_get(m, "name"));
            const char *st = json_string_value(json_object_get(m, "state"));
            if (nm != NULL && st != NULL && strcmp(nm, name) == 0 &&
                strcmp(st, want) == 0) {
                ok = true;
            }
        }
        json_decref(j);
        if (!ok) {
            return false;
        }
    }
    return true;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

double bn_pct(double *v, int n, double pct)
{
    double rank;
    int lo;
    if (n <= 0) {
        return NAN;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    rank = pct / 100.0 * (n - 1);
    lo = (int)rank;
    if (lo + 1 >= n) {
        return v[n - 1];
    }
    return v[lo] + (rank - lo) * (v[lo + 1] - v[lo]);
}

double bn_median(double *v, int n)
{
    return bn_pct(v, n, 50.0);
}

void bn_result(const char *bench,
               const char *metric,
               double value,
               const char *unit,
               const char *note)
{
    printf("RESULT|%s|%s|%.6g|%s|%s\n", bench, metric, value, unit,
           note != NULL ? note : "");
}

/* --- load driver --------------------------------------------------- */

struct slot
{
    CURL *h;
    char url[256];
    char body[2048];
    char *resp;
    size_t len;
    struct curl_slist *hdrs;
};

static size_t write_cb(char *p, size_t sz, size_t nm, void *ud)
{
    struct slot *s = ud;
    size_t n = sz * nm;
    char *r = realloc(s->resp, s->len + n + 1);
    if (r == NULL) {
        return 0;
    }
    memcpy(r + s->len, p, n);
    s->len += n;
    r[s->len] = '\0';
    s->resp = r;
    return n;
}

static bool issue(CURLM *m,
                  struct slot *s,
                  bn_next_fn next,
                  void *ud,
                  uint64_t i)
{
    const char *method = "GET";
    s->body[0] = '\0';
    if (!next(ud, i, &method, s->url, sizeof s->url, s->body, sizeof s->body)) {
        return false;
    }
    free(s->resp);
    s->resp = NULL;
    s->len = 0;
    curl_easy_reset(s->h);
    curl_easy_setopt(s->h, CURLOPT_URL, s->url);
    curl_easy_setopt(s->h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(s->h, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->h, CURLOPT_PRIVATE, s);
    curl_easy_setopt(s->h, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(s->h, CURLOPT_NOSIGNAL, 1L);
    if (s->body[0] != '\0') {
        curl_easy_setopt(s->h, CURLOPT_POSTFIELDS, s->body);
        curl_easy_setopt(s->h, CURLOPT_HTTPHEADER, s->hdrs);
    }
    curl_multi_add_handle(m, s->h);
    return true;
}

void bn_run_load(int concurrency,
                 uint64_t max_ms,
                 bn_next_fn next,
                 bn_done_fn done,
                 void *ud,
                 struct bn_load *out)
{
    CURLM *m = curl_multi_init();
    struct slot *slots = calloc((size_t)concurrency, sizeof *slots);
    uint64_t t0 = bn_mono_us();
    int running = 0;
    int active = 0;
    bool more = true;

    memset(out, 0, sizeof *out);
    for (int i = 0; i < concurrency; i++) {
        slots[i].h = curl_easy_init();
        slots[i].hdrs =
            curl_slist_append(NULL, "Content-Type: application/json");
        if (more && issue(m, &slots[i], next, ud, out->sent)) {
            out->sent++;
            active++;
        } else {
            more = false;
        }
    }
    while (active > 0) {
        CURLMsg *msg;
        int left;
        curl_multi_perform(m, &running);
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            struct slot *s = NULL;
            long code = 0;
            if (msg->msg != CURLMSG_DONE) {
                continue;
            }
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &s);
            if (msg->data.result == CURLE_OK) {
                curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &code);
            }
            curl_multi_remove_handle(m, s->h);
            active--;
            if (code >= 200 && code < 300) {
                out->ok++;
            } else {
                out->failed++;
            }
            if (done != NULL) {
                done(ud, code, s->resp != NULL ? s->resp : "", s->len);
            }
            if (max_ms > 0 && bn_mono_us() - t0 >= max_ms * 1000u) {
                more = false;
            }
            if (more && issue(m, s, next, ud, out->sent)) {
                out->sent++;
                active++;
            } else {
                more = false;
            }
        }
        if (active > 0) {
            curl_multi_poll(m, NULL, 0, 10, NULL);
        }
    }
    out->elapsed_s = (double)(bn_mono_us() - t0) / 1e6;
    for (int i = 0; i < concurrency; i++) {
        curl_slist_free_all(slots[i].hdrs);
        curl_easy_cleanup(slots[i].h);
        free(slots[i].resp);
    }
    free(slots);
    curl_multi_cleanup(m);
}
