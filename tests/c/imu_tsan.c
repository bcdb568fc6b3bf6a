/*
 * imu_tsan.c: start/stop harness for the IMU sampling loop (csrc/ep_imu.c), meant to run under
 * -fsanitize=thread (and as a plain -O2 build). The loop thread publishes synthetic samples into a ring in
 * a memfd mapping while a consumer thread drains it and the main thread reads the stats and histogram
 * quantiles as Python does; then the loop is stopped. Repeated for both wait modes, plus quick
 * create/start/stop/destroy cycles (a stop racing the thread's start-up).
 *
 * Exits non-zero if a record is lost, out of order or not an ImuSample, if a quaternion is not finite, or
 * if the published count disagrees with what the consumer read.
 *   gcc -std=gnu11 -O1 -g -fsanitize=thread -pthread -Icsrc tests/c/imu_tsan.c csrc/ep_imu.c csrc/ep_ahrs.c \
 *       csrc/ep_ring.c csrc/ep_shm.c csrc/ep_clock.c -lm -o imu_tsan && ./imu_tsan
 */
#define _GNU_SOURCE
#include "edgepipe.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct consumer {
    uint8_t *base;
    uint64_t region_size;
    _Atomic int done;          /* set by main after the loop stopped and every record was counted */
    uint64_t expect_total;     /* written by main before done; read after */
    uint64_t received, bad;
};

static void *consume(void *arg)
{
    struct consumer *c = arg;
    struct ep_ring_reader *r;
    if (ep_ring_reader_open(c->base, c->region_size, -1, &r)) {
        c->bad++;
        return NULL;
    }
    struct ep_ring_io *io = ep_ring_reader_io(r);
    const struct ep_imu_sample *s = ep_ring_reader_scratch(r);
    for (;;) {
        int rc = ep_ring_read(r, 20000000);
        if (rc >= 0) {
            if (rc != (int)sizeof *s || io->type != EP_IMU_RECORD_TYPE || s->seq != c->received ||
                !isfinite(s->q[0]) || !isfinite(s->q[3]))
                c->bad++;
            c->received++;
            continue;
        }
        if (atomic_load(&c->done))
            break;
    }
    ep_ring_reader_close(r);
    return NULL;
}

static int run_once(int wait_mode, double rate_hz, int ms)
{
    uint64_t cap = 1 << 20, size = ep_ring_region_size(cap);
    int fd = ep_memfd_create("imu_tsan", size);
    void *base = NULL;
    if (fd < 0 || ep_shm_map(fd, size, &base) < 0 || ep_ring_init(base, size, cap)) {
        fprintf(stderr, "imu_tsan: ring setup failed\n");
        return 1;
    }
    close(fd);
    struct ep_ring_writer *w;
    if (ep_ring_writer_open(base, size, -1, &w))
        return 1;
    struct consumer c = {.base = base, .region_size = size};
    pthread_t ct;
    pthread_create(&ct, NULL, consume, &c);

    struct ep_imu_config cfg = {.rate_hz = rate_hz, .dt_s = 1.0 / rate_hz, .beta = 0.1, .q0 = {1, 0, 0, 0},
                                .wait_mode = wait_mode, .source = EP_IMU_SRC_SYNTH, .cpu = -1,
                                .syn_w = {0.3, -0.2, 1.0}, .syn_q0 = {1, 0, 0, 0}, .syn_g = 9.80665,
                                .syn_nan_every = 97};
    for (int i = 0; i < 10; i++)
        cfg.fd[i] = -1;
    struct ep_imu *L;
    if (ep_imu_create(&cfg, w, &L) || ep_imu_start(L)) {
        fprintf(stderr, "imu_tsan: loop start failed\n");
        return 1;
    }
    struct ep_imu_stats st;
    int64_t p99 = 0;
    for (int t = 0; t < ms; t += 5) {
        ep_imu_stats(L, &st);
        ep_imu_quantile(L, EP_IMU_HIST_JITTER, 0.99, &p99);
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    ep_imu_stop(L);
    ep_imu_stats(L, &st);
    ep_imu_quantile(L, EP_IMU_HIST_JITTER, 0.99, &p99);
    /* wait for the consumer to drain everything that was published */
    for (int i = 0; i < 2000; i++) {
        struct ep_ring_status rs;
        ep_ring_status(base, size, &rs);
        if (rs.records_read == st.published)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&c.done, 1);
    pthread_join(ct, NULL);
    ep_imu_destroy(L);
    ep_ring_writer_close(w);
    ep_shm_unmap(base, size);
    int ok = c.bad == 0 && c.received == st.published && st.published > 0 && st.dropped == 0 &&
             st.samples == st.published + st.skipped_bad && st.state == EP_IMU_STOPPED;
    printf("imu_tsan: mode %d %.0f Hz: samples %" PRIu64 " published %" PRIu64 " received %" PRIu64
           " skipped %" PRIu64 " missed %" PRIu64 " jitter p99 %" PRId64 " ns %s\n",
           wait_mode, rate_hz, st.samples, st.published, c.received, st.skipped_bad, st.missed, p99,
           ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

static int quick_cycles(int n)
{
    struct ep_imu_config cfg = {.rate_hz = 4000, .dt_s = 2.5e-4, .beta = 0.1, .q0 = {1, 0, 0, 0},
                                .wait_mode = EP_IMU_WAIT_HYBRID, .source = EP_IMU_SRC_SYNTH, .cpu = -1,
                                .syn_q0 = {1, 0, 0, 0}, .syn_g = 1.0};
    for (int i = 0; i < 10; i++)
        cfg.fd[i] = -1;
    for (int i = 0; i < n; i++) {
        struct ep_imu *L;
        if (ep_imu_create(&cfg, NULL, &L) || ep_imu_start(L))
            return 1;
        struct ep_imu_stats st;
        ep_imu_stats(L, &st);
        if (i % 2)
            ep_imu_stop(L);
        ep_imu_destroy(L); /* stops (joins) if still running */
    }
    printf("imu_tsan: %d create/start/stop/destroy cycles ok\n", n);
    return 0;
}

int main(void)
{
    alarm(120);
    int bad = 0;
    bad |= run_once(EP_IMU_WAIT_SLEEP, 1000, 300);
    bad |= run_once(EP_IMU_WAIT_HYBRID, 2000, 300);
    bad |= quick_cycles(20);
    if (!bad)
        printf("imu_tsan: OK\n");
    return bad;
}
