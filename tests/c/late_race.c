/*
 * late_race.c: stages the benign race of the eventcount's lost-wakeup accounting deterministically and
 * checks it is not counted (issue 14 point 9). Run by tests/unit/test_wait_accounting.py.
 *
 * The harness supplies the core's clock (ep_clock_now_ns / ep_clock_mono_ns) itself instead of linking
 * ep_clock.c. Its ep_clock_mono_ns() publishes one record the first time it is called after a park began
 * (the consumer's park counter moved): that is the clock read ep_wait_until() makes right after FUTEX_WAIT
 * returns and the announcement is withdrawn, so the record lands between the futex timeout and the
 * waiter's re-check, exactly the race a loaded machine produces now and then. The wait then finds data
 * after a timeout nobody woke it from; that is not a lost wakeup (the publish came after the park timed
 * out), so late_wakeups must stay 0.
 *
 * usage: late_race [ROUNDS]     exit 0 and "late_race: OK" on success
 */
#define _GNU_SOURCE
#include "edgepipe.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static struct ep_ring_writer *g_w;
static void *g_base;
static uint64_t g_size, g_parks_seen;
static int g_in_hook;
static uint64_t g_injected;

int64_t ep_clock_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t ep_clock_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (g_w && !g_in_hook) {
        struct ep_ring_status st;
        g_in_hook = 1;
        if (ep_ring_status(g_base, g_size, &st) == 0 && st.consumer_parks > g_parks_seen) {
            g_parks_seen = st.consumer_parks;
            uint64_t rec = g_injected;
            if (ep_ring_try_write(g_w, &rec, sizeof rec, 1) == (int64_t)sizeof rec)
                g_injected++;
        }
        g_in_hook = 0;
    }
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    uint64_t cap = 1 << 16;
    g_size = ep_ring_region_size(cap);
    g_base = mmap(NULL, g_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (g_base == MAP_FAILED || ep_ring_init(g_base, g_size, cap)) {
        fprintf(stderr, "late_race: setup failed\n");
        return 2;
    }
    struct ep_ring_writer *w;
    struct ep_ring_reader *r;
    if (ep_ring_writer_open(g_base, g_size, -1, &w) || ep_ring_reader_open(g_base, g_size, -1, &r) ||
        ep_ring_reader_set_wait(r, EP_WAIT_PARK, 0)) {
        fprintf(stderr, "late_race: open failed\n");
        return 2;
    }
    g_w = w;
    int woke_with_data = 0;
    for (int i = 0; i < rounds; i++) {
        int rc = ep_ring_reader_wait(r, 200000);   /* 200 us: times out, then the hook publishes */
        if (rc == 0)
            woke_with_data++;
        else if (rc != -ETIMEDOUT) {
            fprintf(stderr, "late_race: wait returned %d\n", rc);
            return 1;
        }
        while (ep_ring_try_read(r) > 0)
            ;
    }
    g_w = NULL;
    struct ep_ring_status st;
    ep_ring_status(g_base, g_size, &st);
    printf("rounds %d  parks %" PRIu64 "  records injected after a timeout %" PRIu64
           "  waits that found them %d  late_wakeups %" PRIu64 "\n",
           rounds, st.consumer_parks, g_injected, woke_with_data, st.late_wakeups);
    ep_ring_reader_close(r);
    ep_ring_writer_close(w);
    if (g_injected < (uint64_t)rounds / 2 || woke_with_data < rounds / 2) {
        fprintf(stderr, "late_race: the race was not staged (injected %" PRIu64 ")\n", g_injected);
        return 1;
    }
    if (st.late_wakeups) {
        fprintf(stderr, "late_race: %" PRIu64 " benign races counted as lost wakeups\n", st.late_wakeups);
        return 1;
    }
    printf("late_race: OK\n");
    return 0;
}
