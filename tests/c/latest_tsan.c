/*
 * latest_tsan.c: a two-thread harness for the latest-only slot (csrc/ep_latest.c), run under
 * ThreadSanitizer and as a plain -O2 build by tests/unit/test_latest_tsan.py.
 *
 * The producer thread publishes frames 1..N as fast as it can; every 32-bit word of frame `seq` (header
 * seq field and payload) holds `seq`. The consumer thread takes the newest frame whenever one is fresh,
 * parking in ep_latest_wait() otherwise, and checks that each frame is whole (every word equals the
 * header's seq) and that seqs only increase. With 4 or more buffers it also keeps one frame aside for a
 * while (as a Python reader does for an array kept past its block) and re-checks that its words never
 * change. At the end the counters must add up: delivered + overwritten == published == N.
 *
 * usage: latest_tsan FRAMES [NBUF] [WATCHDOG_S]     exit 0 and "latest_tsan: OK" on success
 */
#define _GNU_SOURCE
#include "edgepipe.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FRAME_BYTES 4096u

static uint8_t *base;
static uint64_t region_size, slot_size, n_frames;
static uint32_t nbuf;

static uint32_t *words(uint32_t idx)
{
    return (uint32_t *)(base + EP_LATEST_CTL_SIZE + (uint64_t)idx * slot_size + EP_IMAGE_HDR_SIZE);
}

static struct ep_frame_hdr *hdr(uint32_t idx)
{
    return (struct ep_frame_hdr *)(base + EP_LATEST_CTL_SIZE + (uint64_t)idx * slot_size);
}

static void *producer(void *arg)
{
    (void)arg;
    struct ep_latest_writer *w;
    if (ep_latest_writer_open(base, region_size, -1, &w)) {
        fprintf(stderr, "writer open failed\n");
        exit(2);
    }
    for (uint64_t seq = 1; seq <= n_frames; seq++) {
        int64_t off = ep_latest_writer_slot(w);
        struct ep_frame_hdr *h = (struct ep_frame_hdr *)(base + off);
        uint32_t *p = (uint32_t *)(base + off + EP_IMAGE_HDR_SIZE);
        h->seq = seq;
        h->nbytes = FRAME_BYTES;
        for (uint32_t i = 0; i < FRAME_BYTES / 4; i++)
            p[i] = (uint32_t)seq;
        if (ep_latest_publish(w) < 0) {
            fprintf(stderr, "publish failed at %llu\n", (unsigned long long)seq);
            exit(2);
        }
        if ((seq & 4095u) == 0)
            sched_yield();              /* let the consumer catch up now and then: fresh and stale both */
    }
    ep_latest_writer_close(w);
    return NULL;
}

static int whole(uint32_t idx, uint64_t seq)
{
    const uint32_t *p = words(idx);
    for (uint32_t i = 0; i < FRAME_BYTES / 4; i++)
        if (p[i] != (uint32_t)seq)
            return 0;
    return 1;
}

static uint64_t delivered_seen, kept_checks;

static void *consumer(void *arg)
{
    (void)arg;
    struct ep_latest_reader *r;
    if (ep_latest_reader_open(base, region_size, -1, &r)) {
        fprintf(stderr, "reader open failed\n");
        exit(2);
    }
    ep_latest_reader_set_spin(r, 2000);
    uint32_t owned = ep_latest_reader_owned(r);
    uint32_t give = (uint32_t)__builtin_ctz(owned);
    int held = -1;
    uint64_t held_seq = 0, last = 0, count = 0;
    for (;;) {
        int idx = ep_latest_try_take(r, give);
        if (idx == -EAGAIN) {
            int rc = ep_latest_wait(r, 10000000);
            if (rc == -EPIPE)
                break;
            continue;
        }
        if (idx == -EPIPE)
            break;
        if (idx < 0) {
            fprintf(stderr, "try_take failed: %d\n", idx);
            exit(1);
        }
        uint64_t seq = hdr((uint32_t)idx)->seq;
        if (seq <= last || seq > n_frames) {
            fprintf(stderr, "seq went %llu -> %llu\n", (unsigned long long)last, (unsigned long long)seq);
            exit(1);
        }
        if (!whole((uint32_t)idx, seq)) {
            fprintf(stderr, "torn frame %llu in buffer %d\n", (unsigned long long)seq, idx);
            exit(1);
        }
        last = seq;
        count++;
        owned = ep_latest_reader_owned(r);
        if (held >= 0 && !whole((uint32_t)held, held_seq)) {
            fprintf(stderr, "kept frame %llu in buffer %d was overwritten\n", (unsigned long long)held_seq, held);
            exit(1);
        }
        kept_checks += held >= 0;
        if (nbuf >= 4 && held < 0 && count % 5 == 0) {
            held = idx;                 /* keep this frame; give back another buffer we own */
            held_seq = seq;
            uint32_t others = owned & ~(1u << idx);
            give = (uint32_t)__builtin_ctz(others);
        } else {
            give = (uint32_t)idx;
            if (held >= 0 && count % 5 == 3) {
                held = -1;              /* the kept frame's "array" died: its buffer is free again */
            }
        }
    }
    delivered_seen = count;
    ep_latest_reader_close(r);
    return NULL;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "latest_tsan: watchdog expired (hang)\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    _exit(3);
}

int main(int argc, char **argv)
{
    n_frames = argc > 1 ? strtoull(argv[1], NULL, 10) : 200000;
    nbuf = argc > 2 ? (uint32_t)atoi(argv[2]) : 4;
    unsigned watchdog = argc > 3 ? (unsigned)atoi(argv[3]) : 120;
    signal(SIGALRM, on_alarm);
    alarm(watchdog);
    slot_size = ep_latest_slot_size(FRAME_BYTES);
    region_size = ep_latest_region_size(FRAME_BYTES, nbuf);
    base = aligned_alloc(4096, region_size);
    if (!base || ep_latest_init(base, region_size, FRAME_BYTES, nbuf)) {
        fprintf(stderr, "init failed\n");
        return 2;
    }
    pthread_t c, p;
    pthread_create(&c, NULL, consumer, NULL);
    pthread_create(&p, NULL, producer, NULL);
    pthread_join(p, NULL);
    pthread_join(c, NULL);
    struct ep_latest_status s;
    ep_latest_status(base, region_size, &s);
    printf("published %llu delivered %llu overwritten %llu parks %llu late-wakeups %llu kept-checks %llu "
           "(nbuf %u)\n", (unsigned long long)s.published, (unsigned long long)s.delivered,
           (unsigned long long)s.overwritten, (unsigned long long)s.consumer_parks,
           (unsigned long long)s.late_wakeups, (unsigned long long)kept_checks, nbuf);
    if (s.late_wakeups) {
        fprintf(stderr, "lost wakeups: %llu parks timed out with a fresh frame\n",
                (unsigned long long)s.late_wakeups);
        return 1;
    }
    if (s.published != n_frames || s.delivered != delivered_seen ||
        s.delivered + s.overwritten != s.published || delivered_seen < 2) {
        fprintf(stderr, "counters do not add up\n");
        return 1;
    }
    free(base);
    printf("latest_tsan: OK\n");
    return 0;
}
