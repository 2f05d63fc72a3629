/* Internal declarations shared by the exec module's files: the framed
 * agent<->helper protocol (exec_proto.c) and shared constants. */
#ifndef KILN_EXEC_INT_H_
#define KILN_EXEC_INT_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "exec/exec.h"

/* Frame: u32 big-endian length of what follows, then a version byte, a
 * type byte and a msgpack array with the type's fields. */
#define EXEC__PROTO_VERSION 1
#define EXEC__HDR_SIZE 6                /* length + version + type */
#define EXEC__FRAME_MAX (1024u * 1024u) /* bytes after the length */
#define EXEC__BATCH_MAX (64u * 1024u)   /* output bytes per frame */
#define EXEC__BATCH_MS 50               /* output batching delay */
#define EXEC__ARGS_MAX 8192             /* argv / env entries */
#define EXEC__OUTQ_SOFT (1024u * 1024u) /* helper stops reading jobs */
#define EXEC__EOF_WAIT_MS                           \
    2000 /* after the leader exited: wait this long \
            for its pipes to close */

/* Agent-side lifecycle states of struct exec. */
enum {
    EXEC__S_INIT = 0,   /* exec_init done, no helper yet */
    EXEC__S_RUNNING,    /* helper up */
    EXEC__S_RESTARTING, /* helper died; handles closing / backoff timer */
    EXEC__S_CLOSING,    /* exec_close called */
    EXEC__S_CLOSED      /* close_cb delivered */
};

enum exec__type {
    /* agent -> helper */
    EXEC__MSG_SPAWN = 1,     /* job_id epoch timeout_ms argv env limits */
    EXEC__MSG_KILL = 2,      /* job_id why */
    EXEC__MSG_FENCE = 3,     /* seq ms at (ms 0 = disarm) */
    EXEC__MSG_FENCE_NOW = 4, /* seq */
    EXEC__MSG_SHUTDOWN = 5,  /* (none) */
    /* helper -> agent */
    EXEC__MSG_STARTED = 16, /* job_id epoch pid */
    EXEC__MSG_OUTPUT = 17,  /* job_id epoch stream data */
    EXEC__MSG_EXIT = 18,    /* job_id epoch end exit_code signal */
    EXEC__MSG_FENCED = 19   /* seq killed */
};

/* One decoded (or to-be-encoded) message. Only the fields of its type are
 * meaningful. */
struct exec__msg
{
    uint8_t type;
    char job_id[EXEC_JOB_ID_SIZE];
    uint64_t epoch;
    uint64_t timeout_ms; /* SPAWN */
    uint64_t limits[3];  /* SPAWN: nofile, as bytes, cpu s; 0 = inherit */
    char **argv;         /* SPAWN; owned after decode (see msg_free) */
    char **env;          /* SPAWN; owned after decode, never NULL */
    uint8_t why;         /* KILL: enum exec_end */
    uint64_t seq;        /* FENCE, FENCE_NOW, FENCED */
    uint64_t ms;         /* FENCE */
    uint64_t at;         /* FENCE: sender's CLOCK_MONOTONIC ms when ms was
                          * computed (the deadline is at + ms); 0 = now */
    uint64_t pid;        /* STARTED */
    uint8_t stream;      /* OUTPUT: 1 or 2 */
    const char *data;    /* OUTPUT; borrowed from the frame buffer */
    size_t len;          /* OUTPUT */
    uint8_t end;         /* EXIT: enum exec_end */
    int32_t exit_code;   /* EXIT */
    int32_t signal;      /* EXIT */
    uint64_t killed;     /* FENCED */
};

/* A growable byte buffer. */
struct exec__buf
{
    uint8_t *data; /* owned */
    size_t len;
    size_t cap;
};

void exec__buf_free(struct exec__buf *b);
/* Drop the first n bytes. */
void exec__buf_consume(struct exec__buf *b, size_t n);
/* Append; returns 0 or ERR_NOMEM. */
int exec__buf_append(struct exec__buf *b, const void *data, size_t len);

/* Append received bytes (dropping the rest of an oversized frame).
 * Returns 0 or ERR_NOMEM. */
int exec__rx_feed(struct exec_rx *rx, const void *data, size_t len);

/* Take the next complete frame: returns 0 with frame and len set (len 0 when
 * no complete frame is buffered yet; the frame stays valid until the next
 * feed), or ERR_TOOBIG / ERR_MALFORMED when a frame with a bad length was
 * dropped (call again: framing is kept by skipping its declared length). */
int exec__rx_next(struct exec_rx *rx, const uint8_t **frame, size_t *len);

void exec__rx_free(struct exec_rx *rx);

/* Whether s is an acceptable job id (also safe as a path component). */
bool exec__job_id_valid(const char *s);

/* Append one encoded frame for m to out. Returns 0, ERR_INVALID (unknown
 * type or bad field), ERR_TOOBIG (above EXEC__FRAME_MAX) or ERR_NOMEM; on
 * error out is unchanged. */
int exec__msg_encode(const struct exec__msg *m, struct exec__buf *out);

/* Look at the start of buf: *frame_len = 0 if more bytes are needed, else
 * the size of the complete first frame. Returns 0, ERR_TOOBIG (declared
 * length above EXEC__FRAME_MAX) or ERR_MALFORMED (shorter than a header). A
 * stream is unusable after an error (framing is lost). */
int exec__frame_peek(const uint8_t *buf, size_t len, size_t *frame_len);

/* Decode one complete frame (as sized by exec__frame_peek) into m. OUTPUT
 * data points into buf; SPAWN argv/env are allocated (free them with
 * exec__msg_free). Returns 0, ERR_VERSION, ERR_MALFORMED or ERR_NOMEM with
 * a reason in errmsg (ERRMSG_SIZE, may be NULL); on error nothing needs
 * freeing. */
int exec__msg_decode(const uint8_t *buf,
                     size_t len,
                     struct exec__msg *m,
                     char *errmsg);

/* Free what exec__msg_decode allocated; safe on a zeroed message. */
void exec__msg_free(struct exec__msg *m);

#endif /* KILN_EXEC_INT_H_ */
