/* Error code table and message helpers. */
#include "err.h"

#include <stdio.h>
#include <string.h>

const char *err_str(int rv)
{
    switch (rv) {
        case ERR_OK:
            return "ok";
#define ERR__CASE(code, text) \
    case code:                \
        return text;
            ERR_MAP(ERR__CASE)
#undef ERR__CASE
        default:
            return "unknown error";
    }
}

void errmsg_printf(char *errmsg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, ERRMSG_SIZE, fmt, ap);
    va_end(ap);
}

void errmsg_wrapf(char *errmsg, const char *fmt, ...)
{
    char prefix[ERRMSG_SIZE];
    char old[ERRMSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, errmsg, ERRMSG_SIZE);
    old[ERRMSG_SIZE - 1] = '\0';
    snprintf(errmsg, ERRMSG_SIZE, "%s: %s", prefix, old);
}
