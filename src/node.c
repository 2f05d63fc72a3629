/* Composition root. Start order: data dir lock and identity (init), then the
 * modules; close order is the reverse (docs/architecture.md). */
#include "node.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <unistd.h>

#include "log.h"
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

static void signal_cb(uv_signal_t *h, int signum)
{
    struct node *n = h->data;
    LOGI("node", "received %s, shutting down", strsignal(signum));
    node_close(n, n->close_cb);
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

int node_start(struct node *n)
{
    n->started = 1;
    uv_signal_init(n->loop, &n->sigint);
    uv_signal_init(n->loop, &n->sigterm);
    n->sigint.data = n;
    n->sigterm.data = n;
    uv_signal_start(&n->sigint, signal_cb, SIGINT);
    uv_signal_start(&n->sigterm, signal_cb, SIGTERM);
    LOGI("node", "started (id %016" PRIx64 ", data dir %s)", n->id,
         n->cfg.data_dir);
    return 0;
}

static void handle_closed_cb(uv_handle_t *h)
{
    struct node *n = h->data;
    n->pending_closes--;
    if (n->pending_closes == 0) {
        if (n->lock_fd >= 0) {
            close(n->lock_fd);
            n->lock_fd = -1;
        }
        if (n->close_cb != NULL) {
            n->close_cb(n);
        }
    }
}

void node_close(struct node *n, node_close_cb cb)
{
    if (n->closing) {
        return;
    }
    n->closing = 1;
    n->close_cb = cb;
    if (!n->started) {
        n->pending_closes = 1;
        handle_closed_cb((uv_handle_t *)&n->sigint);
        return;
    }
    n->pending_closes = 2;
    uv_close((uv_handle_t *)&n->sigint, handle_closed_cb);
    uv_close((uv_handle_t *)&n->sigterm, handle_closed_cb);
}
