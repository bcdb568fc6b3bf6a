/*
 * ep_clock.c: the one clock every edgepipe stamp uses, CLOCK_MONOTONIC_RAW in ns (not slewed by NTP, so
 * intervals between processes on one box are exact), plus CLOCK_MONOTONIC (the clock futex and
 * clock_nanosleep deadlines accept) and the wall clock, and a mapping between the three for reports.
 */
#define _GNU_SOURCE
#include "edgepipe.h"

#include <errno.h>
#include <time.h>

static inline int64_t read_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t ep_clock_now_ns(void)
{
    return read_ns(CLOCK_MONOTONIC_RAW);
}

int64_t ep_clock_mono_ns(void)
{
    return read_ns(CLOCK_MONOTONIC);
}

int64_t ep_clock_wall_ns(void)
{
    return read_ns(CLOCK_REALTIME);
}

/* Sample MONOTONIC and REALTIME between two RAW reads; keep the tightest of a few tries and place
 * the others at the middle of that RAW window. */
int ep_clock_map(struct ep_clock_map *out)
{
    if (!out)
        return -EINVAL;
    int64_t best = -1;
    for (int i = 0; i < 7; i++) {
        int64_t r0 = read_ns(CLOCK_MONOTONIC_RAW);
        int64_t m = read_ns(CLOCK_MONOTONIC);
        int64_t w = read_ns(CLOCK_REALTIME);
        int64_t r1 = read_ns(CLOCK_MONOTONIC_RAW);
        if (best < 0 || r1 - r0 < best) {
            best = r1 - r0;
            out->raw_ns = r0 + (r1 - r0) / 2;
            out->mono_ns = m;
            out->wall_ns = w;
            out->uncertainty_ns = best;
        }
    }
    return 0;
}
