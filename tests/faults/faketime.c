/* A clock-step shim for fault tests: LD_PRELOAD it into a process and its wall clock (CLOCK_REALTIME,
 * gettimeofday, time) runs `offset` seconds off the real one, where `offset` is a double read from the
 * first 8 bytes of the file named by METASCHED_FAKETIME_FILE, mapped once: a test changes the offset of a
 * running process (a clock step) by writing those bytes. Monotonic and boot-time clocks are untouched, as
 * a real clock step leaves them. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile double *offset;
static int (*real_clock_gettime)(clockid_t, struct timespec *);

static void init(void) {
    if (real_clock_gettime == NULL)
        real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    if (offset == NULL) {
        const char *path = getenv("METASCHED_FAKETIME_FILE");
        static double zero = 0;
        offset = &zero;
        if (path != NULL) {
            int fd = open(path, O_RDONLY);
            if (fd >= 0) {
                void *p = mmap(NULL, sizeof(double), PROT_READ, MAP_SHARED, fd, 0);
                close(fd);
                if (p != MAP_FAILED)
                    offset = p;
            }
        }
    }
}

static void shift(struct timespec *ts) {
    double off = *offset;
    long long ns = (long long)(off * 1e9);
    long long total = (long long)ts->tv_nsec + ns % 1000000000LL;
    ts->tv_sec += ns / 1000000000LL + total / 1000000000LL;
    total %= 1000000000LL;
    if (total < 0) { total += 1000000000LL; ts->tv_sec -= 1; }
    ts->tv_nsec = total;
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    init();
    int rc = real_clock_gettime(clk, ts);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE))
        shift(ts);
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    if (tv != NULL) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t != NULL)
        *t = ts.tv_sec;
    return ts.tv_sec;
}
