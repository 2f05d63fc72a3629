/* Benchmark helper. bench_ticker DELAY_MS INTERVAL_MS N: after an initial
 * delay, print "T <CLOCK_REALTIME ns>" every interval, N times.
 * bench_ticker stamp FILE: append "<KILN_PIPELINE> <KILN_SCHEDULED_TIME>
 * <CLOCK_REALTIME ns> <KILN_RUN_ID>" to FILE (one O_APPEND write) and
 * exit. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int stamp(const char *path)
{
    struct timespec ts;
    char line[256];
    const char *p = getenv("KILN_PIPELINE");
    const char *t = getenv("KILN_SCHEDULED_TIME");
    const char *r = getenv("KILN_RUN_ID");
    int fd;
    int len;
    clock_gettime(CLOCK_REALTIME, &ts);
    len = snprintf(line, sizeof line, "%s %s %lld %s\n", p != NULL ? p : "-",
                   t != NULL && t[0] != '\0' ? t : "-",
                   (long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec,
                   r != NULL && r[0] != '\0' ? r : "-");
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0 || len <= 0 || write(fd, line, (size_t)len) != len) {
        return 1;
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    long delay;
    long interval;
    long n;
    if (argc == 3 && strcmp(argv[1], "stamp") == 0) {
        return stamp(argv[2]);
    }
    if (argc != 4) {
        fprintf(stderr, "usage: bench_ticker DELAY_MS INTERVAL_MS N\n");
        return 2;
    }
    delay = atol(argv[1]);
    interval = atol(argv[2]);
    n = atol(argv[3]);
    sleep_ms(delay);
    for (long i = 0; i < n; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        printf("T %lld\n",
               (long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec);
        fflush(stdout);
        sleep_ms(interval);
    }
    return 0;
}
