/* Benchmark helper: after an initial delay, print "T <CLOCK_REALTIME ns>"
 * every interval, count times. Usage: bench_ticker DELAY_MS INTERVAL_MS N */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    long delay;
    long interval;
    long n;
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
