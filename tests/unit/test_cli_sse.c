/* Unit tests: the client's Server-Sent Events parser, fed at every
 * possible chunk boundary, and the end-event exit status. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "cli_int.h"

/* Events rendered as "event|data|id\n" lines for easy comparison. */
struct rec
{
    char buf[8192];
    size_t len;
    int stop_after; /* stop (return 7) after this many events; 0 = never */
    int count;
};

static int rec_cb(void *arg,
                  const char *event,
                  const char *data,
                  size_t len,
                  const char *id)
{
    struct rec *r = arg;
    int n = snprintf(r->buf + r->len, sizeof r->buf - r->len, "%s|%.*s|%s\n",
                     event, (int)len, data, id);
    cr_assert(n > 0 && (size_t)n < sizeof r->buf - r->len);
    cr_assert_eq(strlen(data), len, "data must be NUL-terminated at len");
    r->len += (size_t)n;
    r->count++;
    if (r->stop_after > 0 && r->count == r->stop_after) {
        return 7;
    }
    return 0;
}

/* Feed the whole stream in one go and split at every pair of boundaries
 * (three chunks); every split must give the same events. */
static void check_all_splits(const char *stream, const char *want)
{
    size_t len = strlen(stream);

    for (size_t a = 0; a <= len; a++) {
        for (size_t b = a; b <= len; b++) {
            struct cli_sse s;
            struct rec r = {0};
            cli_sse_init(&s);
            cr_assert_eq(cli_sse_feed(&s, stream, a, rec_cb, &r), 0);
            cr_assert_eq(cli_sse_feed(&s, stream + a, b - a, rec_cb, &r), 0);
            cr_assert_eq(cli_sse_feed(&s, stream + b, len - b, rec_cb, &r), 0);
            cli_sse_close(&s);
            r.buf[r.len] = '\0';
            cr_assert_str_eq(r.buf, want, "split at %zu,%zu", a, b);
        }
    }
}

/* One byte at a time. */
static void check_bytewise(const char *stream, const char *want)
{
    struct cli_sse s;
    struct rec r = {0};

    cli_sse_init(&s);
    for (size_t i = 0; stream[i] != '\0'; i++) {
        cr_assert_eq(cli_sse_feed(&s, stream + i, 1, rec_cb, &r), 0);
    }
    cli_sse_close(&s);
    r.buf[r.len] = '\0';
    cr_assert_str_eq(r.buf, want);
}

TestSuite(cli_sse, .timeout = 30);

Test(cli_sse, simple_lf)
{
    const char *in = "data: hello\n\ndata: world\n\n";
    const char *want = "message|hello|\nmessage|world|\n";
    check_all_splits(in, want);
    check_bytewise(in, want);
}

Test(cli_sse, crlf_and_cr_line_endings)
{
    const char *in = "data: a\r\n\r\ndata: b\r\rdata: c\n\r\n";
    const char *want = "message|a|\nmessage|b|\nmessage|c|\n";
    check_all_splits(in, want);
    check_bytewise(in, want);
}

Test(cli_sse, comments_and_ids)
{
    const char *in =
        ": ping\n\nid: 1\ndata: one\n\n: ping\nid: 2\r\n"
        "data: two\r\n\r\n";
    const char *want = "message|one|1\nmessage|two|2\n";
    check_all_splits(in, want);
}

Test(cli_sse, multi_line_data)
{
    const char *in = "data: first\ndata: second\ndata\ndata:third\n\n";
    /* "data" alone adds an empty line; "data:third" has no space. */
    const char *want = "message|first\nsecond\n\nthird|\n";
    check_all_splits(in, want);
}

Test(cli_sse, empty_data_line_is_an_event)
{
    /* An empty output line arrives as "data:" and must still print. */
    const char *in = "data:\n\ndata: \n\n";
    check_all_splits(in, "message||\nmessage||\n");
}

Test(cli_sse, blank_lines_without_data_dispatch_nothing)
{
    const char *in = "\n\n\r\n: x\n\nevent: end\n\ndata: z\n\n";
    /* The "event: end" block had no data: it is dropped and the type
     * does not leak into the next event. */
    check_all_splits(in, "message|z|\n");
}

Test(cli_sse, end_event_with_json)
{
    const char *in =
        "id: 7\ndata: last line\n\n"
        "event: end\ndata: {\"state\":\"failed\",\"exit_code\""
        ":3}\n\n";
    const char *want =
        "message|last line|7\n"
        "end|{\"state\":\"failed\",\"exit_code\":3}|7\n";
    check_all_splits(in, want);
}

Test(cli_sse, value_keeps_extra_spaces_and_colons)
{
    const char *in = "data:  two spaces: and a colon\n\n";
    check_all_splits(in, "message| two spaces: and a colon|\n");
}

Test(cli_sse, unknown_fields_and_retry_are_ignored)
{
    struct cli_sse s;
    struct rec r = {0};
    const char *in = "foo: bar\nretry: 1500\nretry: x1\ndata: ok\n\n";

    cli_sse_init(&s);
    cr_assert_eq(cli_sse_feed(&s, in, strlen(in), rec_cb, &r), 0);
    cr_assert_eq(s.retry_ms, 1500);
    cli_sse_close(&s);
    r.buf[r.len] = '\0';
    cr_assert_str_eq(r.buf, "message|ok|\n");
}

Test(cli_sse, leading_bom_is_skipped)
{
    check_all_splits(
        "\xEF\xBB\xBF"
        "data: x\n\n",
        "message|x|\n");
}

Test(cli_sse, partial_event_is_not_dispatched)
{
    struct cli_sse s;
    struct rec r = {0};
    const char *in = "data: one\n\ndata: half";

    cli_sse_init(&s);
    cr_assert_eq(cli_sse_feed(&s, in, strlen(in), rec_cb, &r), 0);
    cli_sse_close(&s);
    cr_assert_eq(r.count, 1);
}

Test(cli_sse, callback_stops_parsing)
{
    struct cli_sse s;
    struct rec r = {.stop_after = 1};
    const char *in = "data: a\n\ndata: b\n\n";

    cli_sse_init(&s);
    cr_assert_eq(cli_sse_feed(&s, in, strlen(in), rec_cb, &r), 7);
    cli_sse_close(&s);
    cr_assert_eq(r.count, 1);
}

Test(cli_sse, overlong_line_is_rejected)
{
    struct cli_sse s;
    struct rec r = {0};
    size_t n = CLI_SSE_MAX_LINE + 10;
    char *big = malloc(n);
    int rv = 0;

    cr_assert_not_null(big);
    memset(big, 'x', n);
    memcpy(big, "data: ", 6);
    cli_sse_init(&s);
    for (size_t off = 0; off < n && rv == 0; off += 4096) {
        size_t c = n - off < 4096 ? n - off : 4096;
        rv = cli_sse_feed(&s, big + off, c, rec_cb, &r);
    }
    cr_assert_eq(rv, ERR_TOOBIG);
    cli_sse_close(&s);
    free(big);
}

Test(cli_sse, binary_garbage_never_crashes)
{
    struct cli_sse s;
    struct rec r = {0};
    unsigned char buf[4096];
    unsigned x = 12345;

    for (size_t i = 0; i < sizeof buf; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (unsigned char)(x >> 16);
        if (i % 7 == 0) {
            buf[i] = "\n\r:d"[(x >> 8) & 3];
        }
    }
    cli_sse_init(&s);
    for (size_t i = 0; i < sizeof buf; i += 13) {
        size_t c = sizeof buf - i < 13 ? sizeof buf - i : 13;
        r.len = 0;
        (void)cli_sse_feed(&s, (const char *)buf + i, c, rec_cb, &r);
    }
    cli_sse_close(&s);
}

static int end_status(const char *json)
{
    char errmsg[ERRMSG_SIZE];
    int st = -1;
    cr_assert_eq(cli__end_status(json, strlen(json), &st, errmsg), 0, "%s",
                 json);
    return st;
}

Test(cli_sse, end_status_mapping)
{
    cr_assert_eq(end_status("{\"state\":\"succeeded\",\"exit_code\":0}"), 0);
    cr_assert_eq(end_status("{\"state\":\"failed\",\"exit_code\":3}"), 3);
    cr_assert_eq(end_status("{\"state\":\"succeeded\"}"), 0);
    cr_assert_eq(end_status("{\"state\":\"failed\"}"), 1);
    cr_assert_eq(end_status("{\"state\":\"cancelled\",\"exit_code\":null}"), 1);
    cr_assert_eq(end_status("{\"state\":\"failed\",\"signal\":9}"), 137);
    cr_assert_eq(end_status("{\"state\":\"cancelled\",\"signal\":\"SIGTERM\""
                            "}"),
                 143);
    cr_assert_eq(end_status("{\"state\":\"failed\",\"signal\":\"KILL\"}"), 137);
    cr_assert_eq(end_status("{\"state\":\"failed\",\"exit_code\":300}"), 1);
    cr_assert_eq(end_status("{\"state\":7,\"exit_code\":\"x\"}"), 1);
    cr_assert_eq(end_status("{}"), 1);
}

Test(cli_sse, end_status_rejects_non_objects)
{
    char errmsg[ERRMSG_SIZE];
    int st = -1;
    cr_assert_eq(cli__end_status("nope", 4, &st, errmsg), ERR_MALFORMED);
    cr_assert_eq(cli__end_status("[1]", 3, &st, errmsg), ERR_MALFORMED);
    cr_assert_eq(cli__end_status("", 0, &st, errmsg), ERR_MALFORMED);
}
