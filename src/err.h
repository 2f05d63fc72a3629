/* Project-wide error codes (one X-macro table) and error-message helpers. */
#ifndef KILN_ERR_H_
#define KILN_ERR_H_

#include <stdarg.h>
#include <stddef.h>

/* 0 is success; every error is a positive code from this table. */
#define ERR_MAP(X)                      \
    X(ERR_NOMEM, "out of memory")       \
    X(ERR_INVALID, "invalid argument")  \
    X(ERR_MALFORMED, "malformed input") \
    X(ERR_NOTLEADER, "not the leader")  \
    X(ERR_NOTFOUND, "not found")        \
    X(ERR_BUSY, "busy")                 \
    X(ERR_IO, "I/O error")              \
    X(ERR_SHUTDOWN, "shutting down")    \
    X(ERR_TIMEOUT, "timed out")         \
    X(ERR_TOOBIG, "too big")            \
    X(ERR_CONFLICT, "conflict")         \
    X(ERR_INUSE, "in use")              \
    X(ERR_UNAVAILABLE, "unavailable")   \
    X(ERR_STALE, "stale")               \
    X(ERR_VERSION, "unsupported version")

enum {
    ERR_OK = 0,
#define ERR__ENUM(code, text) code,
    ERR_MAP(ERR__ENUM)
#undef ERR__ENUM
        ERR__COUNT
};

/* Static text for an error code; never NULL. */
const char *err_str(int rv);

/* Size of the message buffers carried by long-lived objects. */
#define ERRMSG_SIZE 256

/* Format into an errmsg buffer of ERRMSG_SIZE bytes. */
void errmsg_printf(char *errmsg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefix an existing message: "prefix: old message". */
void errmsg_wrapf(char *errmsg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* KILN_ERR_H_ */
