/*
 * ring_tsan.c: a two-thread harness for the SPSC ring, meant to run under -fsanitize=thread (and also as a
 * plain -O2 build). One producer thread and one consumer thread trade sequence-numbered, checksummed
 * records of variable size through a ring in a memfd mapping, using every API: try_write, claim/commit
 * (with shrinking commits and aborts), try_write_batch, try_write_fixed, blocking ep_ring_write under the
 * spin, park and hybrid policies, ep_ring_writer_wait; try_read, peek/release, try_read_batch, blocking
 * ep_ring_read under each policy, ep_ring_reader_wait. Both ends live in one process (each end records the
 * same pid; that is fine for the ring).
 *
 * The record for seq s is a pure function of s and the capacity: its size (mostly small, sometimes up to
 * max_payload), its type, and its bytes (for payloads of 16+ bytes: seq, length and a checksum of the rest
 * up front). The producer switches API every 1024 records and the consumer every 777, so every
 * pair of APIs meets; both sleep for ~50 us now and then so that the blocking calls really park.
 *
 * Build and run (exits non-zero on any lost, reordered or corrupt record, or a lost wakeup):
 *   gcc -std=gnu11 -O1 -g -fsanitize=thread -pthread -Icsrc tests/c/ring_tsan.c csrc/ep_ring.c \
 *       csrc/ep_shm.c csrc/ep_clock.c -o ring_tsan && ./ring_tsan [records] [seed]
 *   gcc -std=gnu11 -O2 -pthread -Icsrc ... (the same sources) -o ring_plain && ./ring_plain 20000000
 * The records are split over three rings: 256 B (tiny records, constant wrapping), 4 KiB and 64 KiB.
 */
#define _GNU_SOURCE
#include "edgepipe.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FIXED_LEN 24u        /* payload size of every record written by try_write_fixed */
#define W_BLOCK 1024u        /* the producer changes API every W_BLOCK records */
#define R_BLOCK 777u         /* the consumer every R_BLOCK records */
#define BATCH_MAX 48u
#define TYPE_BATCH 0xB0u     /* batch calls write one type for all: these mark them */

enum wmode { W_TRY, W_CLAIM, W_BATCH, W_FIXED, W_WRITE_SPIN, W_WRITE_PARK, W_WRITE_HYBRID, W_WAIT_TRY, W_N };
enum rmode { R_TRY, R_PEEK, R_BATCH, R_READ_SPIN, R_READ_PARK, R_READ_HYBRID, R_WAIT_PEEK, R_N };

struct run {
    uint8_t *base;           /* the mapped region */
    uint64_t region_size, cap, max_payload, n;
    uint64_t seed;
    /* results */
    uint64_t written, received, lost, reordered, corrupt;
    int producer_rc, consumer_rc;
};

/* ---- the stream: everything about record s, from s ---------------------------------------------- */

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static inline enum wmode wmode_of(uint64_t seq)
{
    return (enum wmode)((seq / W_BLOCK) % W_N);
}

static uint32_t len_of(const struct run *rn, uint64_t seq)
{
    if (wmode_of(seq) == W_FIXED)
        return FIXED_LEN;
    uint64_t h = mix64(seq ^ rn->seed);
    uint64_t u = h % 1000, v = h >> 20, top = rn->max_payload;
    uint64_t n;
    if (seq % 4099 == 0)
        n = top;                                    /* the largest record, regularly */
    else if (u < 600)
        n = v % 49;
    else if (u < 940)
        n = 49 + v % 464;
    else if (u < 997)
        n = v % (top / 8 + 1);
    else
        n = top / 2 + v % (top - top / 2 + 1);
    return (uint32_t)(n < top ? n : top);
}

static inline uint32_t type_of(uint64_t seq)
{
    enum wmode m = wmode_of(seq);
    if (m == W_BATCH || m == W_FIXED)
        return TYPE_BATCH + (uint32_t)m;
    return (uint32_t)(mix64(seq) & 0x7fffffffu);    /* never EP_REC_PAD */
}

/* A checksum of p[0..n): 8-byte words at a time (cheap under TSan, which instruments every access). */
static uint32_t checksum(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        h = (h ^ v) * 0x100000001b3ull;
    }
    for (; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

/* Fill out[0..len) with record seq's payload: derived words, then (for 16+ bytes) seq, length and the
 * checksum of the rest written over the first 16 bytes. */
static void make_payload(uint64_t seq, uint32_t len, uint8_t *out)
{
    uint64_t x = mix64(seq * 7 + 1);
    uint32_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = x + (uint64_t)i * 0x9E3779B97F4A7C15ull;
        memcpy(out + i, &v, 8);
    }
    for (; i < len; i++)
        out[i] = (uint8_t)(x >> (8 * (i & 7)));
    if (len >= 16) {
        memcpy(out, &seq, 8);
        memcpy(out + 8, &len, 4);
        uint32_t c = checksum(out + 16, len - 16);
        memcpy(out + 12, &c, 4);
    }
}

struct tally {
    uint64_t next, received, lost, reordered, corrupt;
    int reports;
    uint8_t *expect;         /* max_payload bytes */
};

static void problem(struct tally *t, const char *what, uint64_t seq, uint64_t detail)
{
    if (t->reports++ < 10)
        fprintf(stderr, "ring_tsan: %s at seq %" PRIu64 " (%" PRIu64 ")\n", what, seq, detail);
}

/* Check one received record against the stream; the seq is in the payload for 16+ bytes, otherwise it
 * is the next expected one (a lost or extra short record then shows up as corrupt or lost later). */
static void check(const struct run *rn, struct tally *t, const uint8_t *p, uint32_t len, uint32_t type)
{
    uint64_t seq = t->next;
    if (len >= 16) {
        memcpy(&seq, p, 8);
        if (seq != t->next) {
            if (seq > t->next && seq < rn->n) {
                problem(t, "lost records before", seq, seq - t->next);
                t->lost += seq - t->next;
            } else {
                problem(t, "reordered or repeated record", seq, t->next);
                t->reordered++;
                return;
            }
        }
    }
    t->next = seq + 1;
    t->received++;
    uint32_t want = len_of(rn, seq);
    if (len != want || type != type_of(seq)) {
        problem(t, "wrong length or type", seq, ((uint64_t)len << 32) | want);
        t->corrupt++;
        return;
    }
    if (len >= 16) {
        uint32_t c, l;
        memcpy(&l, p + 8, 4);
        memcpy(&c, p + 12, 4);
        if (l != len || c != checksum(p + 16, len - 16)) {
            problem(t, "checksum mismatch", seq, c);
            t->corrupt++;
            return;
        }
    }
    make_payload(seq, len, t->expect);
    if (memcmp(p, t->expect, len) != 0) {
        problem(t, "payload differs", seq, len);
        t->corrupt++;
    }
}

/* ---- pacing: a short sleep every so often, so blocking calls park and wake -------------------- */

struct pacer {
    uint64_t state, left;
};

static void pace(struct pacer *pc)
{
    if (pc->left-- > 0)
        return;
    pc->state = mix64(pc->state + 0x9e3779b97f4a7c15ull);
    pc->left = 200 + pc->state % 3000;
    struct timespec ts = {0, 20000 + (long)(pc->state >> 40) % 60000};
    nanosleep(&ts, NULL);
}

static void backoff(unsigned *spins)
{
    if (++*spins % 64 == 0)
        sched_yield();
}

/* ---- producer ------------------------------------------------------------------------------------ */

static int set_wmode(struct ep_ring_writer *w, int mode, int64_t spin_ns)
{
    return ep_ring_writer_set_wait(w, mode, spin_ns);
}

static void *producer(void *arg)
{
    struct run *rn = arg;
    struct ep_ring_writer *w;
    int rc = ep_ring_writer_open(rn->base, rn->region_size, -1, &w);
    if (rc) {
        rn->producer_rc = rc;
        return NULL;
    }
    uint8_t *data = rn->base + EP_RING_DATA_OFF;
    uint8_t *buf = malloc((size_t)rn->max_payload * BATCH_MAX + 64);
    uint32_t lens[BATCH_MAX];
    struct pacer pc = {rn->seed * 3 + 1, 500};
    uint64_t seq = 0;
    unsigned spins = 0;
    while (seq < rn->n && rc >= 0) {
        pace(&pc);
        enum wmode m = wmode_of(seq);
        uint32_t len = len_of(rn, seq), type = type_of(seq);
        switch (m) {
        case W_TRY:
            make_payload(seq, len, buf);
            while ((rc = ep_ring_try_write(w, buf, len, type)) == -EAGAIN)
                backoff(&spins);
            seq += rc >= 0;
            break;
        case W_CLAIM: {
            uint64_t slack = (seq % 5 == 0) ? 1 + seq % 97 : 0;   /* claim more, commit less */
            uint64_t want = len + slack > rn->max_payload ? len : len + slack;
            int64_t off;
            if (seq % 13 == 0) {    /* claim, scribble, abandon: must never be seen */
                while ((off = ep_ring_claim(w, (uint32_t)want)) == -EAGAIN)
                    backoff(&spins);
                if (off < 0) {
                    rc = (int)off;
                    break;
                }
                memset(data + off, 0xEE, want);
                if ((rc = ep_ring_abort(w)) != 0)
                    break;
            }
            while ((off = ep_ring_claim(w, (uint32_t)want)) == -EAGAIN)
                backoff(&spins);
            if (off < 0) {
                rc = (int)off;
                break;
            }
            make_payload(seq, len, data + off);
            memset(data + off + len, 0xDD, want - len);
            rc = ep_ring_commit(w, len, type);
            seq += rc >= 0;
            break;
        }
        case W_BATCH:
        case W_FIXED: {
            uint64_t end = (seq / W_BLOCK + 1) * W_BLOCK;
            uint32_t k = 0;
            uint8_t *p = buf;
            uint32_t nb = BATCH_MAX - (uint32_t)(seq % 17);
            while (k < nb && seq + k < end && seq + k < rn->n) {
                lens[k] = len_of(rn, seq + k);
                make_payload(seq + k, lens[k], p);
                p += lens[k];
                k++;
            }
            while ((rc = m == W_BATCH ? ep_ring_try_write_batch(w, buf, lens, k, type)
                                      : ep_ring_try_write_fixed(w, buf, FIXED_LEN, k, type)) == -EAGAIN)
                backoff(&spins);
            if (rc > 0)
                seq += (uint64_t)rc;   /* a prefix was written; the rest is rebuilt next turn */
            break;
        }
        case W_WRITE_SPIN:
        case W_WRITE_PARK:
        case W_WRITE_HYBRID:
            set_wmode(w, m == W_WRITE_SPIN ? EP_WAIT_SPIN : m == W_WRITE_PARK ? EP_WAIT_PARK : EP_WAIT_HYBRID,
                      m == W_WRITE_HYBRID ? 2000 + (int64_t)(seq % 3) * 10000 : 0);
            make_payload(seq, len, buf);
            rc = ep_ring_write(w, buf, len, type, -1);
            seq += rc >= 0;
            break;
        case W_WAIT_TRY:
            set_wmode(w, EP_WAIT_PARK, 0);
            make_payload(seq, len, buf);
            for (;;) {
                rc = ep_ring_try_write(w, buf, len, type);
                if (rc != -EAGAIN)
                    break;
                if ((rc = ep_ring_writer_wait(w, len, -1)) < 0)
                    break;
            }
            seq += rc >= 0;
            break;
        default:
            rc = -EINVAL;
        }
    }
    rn->written = seq;
    rn->producer_rc = rc < 0 ? rc : 0;
    ep_ring_writer_close(w);    /* the consumer drains, then sees -EPIPE: the end of the stream */
    free(buf);
    return NULL;
}

/* ---- consumer ------------------------------------------------------------------------------------ */

static void *consumer(void *arg)
{
    struct run *rn = arg;
    struct ep_ring_reader *r;
    int rc = ep_ring_reader_open(rn->base, rn->region_size, -1, &r);
    if (rc) {
        rn->consumer_rc = rc;
        return NULL;
    }
    const uint8_t *data = rn->base + EP_RING_DATA_OFF;
    struct ep_ring_io *io = ep_ring_reader_io(r);
    const uint8_t *scratch = ep_ring_reader_scratch(r);
    uint8_t *buf = malloc(rn->cap);
    uint32_t lens[64], types[64];
    struct tally t = {.expect = malloc(rn->max_payload + 1)};
    struct pacer pc = {rn->seed * 5 + 2, 700};
    unsigned spins = 0;
    uint64_t calls = 0;
    for (;;) {
        pace(&pc);
        enum rmode m = (enum rmode)((t.received / R_BLOCK) % R_N);
        calls++;
        switch (m) {
        case R_TRY:
            rc = ep_ring_try_read(r);
            if (rc >= 0)
                check(rn, &t, scratch, (uint32_t)rc, io->type);
            break;
        case R_PEEK:
        case R_WAIT_PEEK:
            if (m == R_WAIT_PEEK) {
                ep_ring_reader_set_wait(r, EP_WAIT_PARK, 0);
                rc = ep_ring_reader_wait(r, -1);
                if (rc < 0)
                    break;
            }
            rc = ep_ring_peek(r);
            if (rc >= 0) {
                check(rn, &t, data + io->off, io->len, io->type);
                if (ep_ring_peek(r) != rc)   /* peeking twice yields the same record */
                    t.corrupt++;
                rc = ep_ring_release(r);
            }
            break;
        case R_BATCH:
            rc = ep_ring_try_read_batch(r, buf, rn->cap, lens, types, 1 + (uint32_t)(calls % 64));
            if (rc > 0) {
                const uint8_t *p = buf;
                for (int i = 0; i < rc; i++) {
                    check(rn, &t, p, lens[i], types[i]);
                    p += lens[i];
                }
            }
            break;
        case R_READ_SPIN:
        case R_READ_PARK:
        case R_READ_HYBRID:
            ep_ring_reader_set_wait(r, m == R_READ_SPIN ? EP_WAIT_SPIN : m == R_READ_PARK ? EP_WAIT_PARK
                                                                                             : EP_WAIT_HYBRID,
                                    m == R_READ_HYBRID ? 1000 + (int64_t)(calls % 4) * 8000 : 0);
            rc = ep_ring_read(r, -1);
            if (rc >= 0)
                check(rn, &t, scratch, (uint32_t)rc, io->type);
            break;
        default:
            rc = -EINVAL;
        }
        if (rc == -EAGAIN) {
            backoff(&spins);
            continue;
        }
        if (rc == -EPIPE)
            break;                    /* producer closed and everything was read */
        if (rc < 0) {
            fprintf(stderr, "ring_tsan: consumer call failed: %s (mode %d)\n", strerror(-rc), (int)m);
            rn->consumer_rc = rc;
            break;
        }
    }
    if (t.next != rn->n) {
        problem(&t, "stream ended early or ran long; next seq", t.next, rn->n);
        if (t.next < rn->n)
            t.lost += rn->n - t.next;
    }
    rn->received = t.received;
    rn->lost = t.lost;
    rn->reordered = t.reordered;
    rn->corrupt = t.corrupt;
    ep_ring_reader_close(r);
    free(buf);
    free(t.expect);
    return NULL;
}

/* ---- one run over a fresh ring ----------------------------------------------------------------- */

static int run_ring(uint64_t cap, uint64_t n, uint64_t seed)
{
    struct run rn = {.cap = cap, .max_payload = cap / 2 - EP_REC_HDR, .n = n, .seed = seed};
    rn.region_size = ep_ring_region_size(cap);
    int fd = ep_memfd_create("ring_tsan", rn.region_size);
    void *addr = NULL;
    if (fd < 0 || ep_shm_map(fd, rn.region_size, &addr) < 0) {
        fprintf(stderr, "ring_tsan: cannot map a %" PRIu64 "-byte memfd\n", rn.region_size);
        return 1;
    }
    close(fd);
    rn.base = addr;
    if (ep_ring_init(rn.base, rn.region_size, cap) != 0) {
        fprintf(stderr, "ring_tsan: ep_ring_init failed\n");
        return 1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_t pt, ct;
    pthread_create(&ct, NULL, consumer, &rn);
    pthread_create(&pt, NULL, producer, &rn);
    pthread_join(pt, NULL);
    pthread_join(ct, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;

    struct ep_ring_status st;
    ep_ring_status(rn.base, rn.region_size, &st);
    printf("capacity %-6" PRIu64 " records %-9" PRIu64 " %.2f s (%.2f M/s)  lost %" PRIu64 " reordered %" PRIu64
           " corrupt %" PRIu64 "  written/read %" PRIu64 "/%" PRIu64 "  parks p=%" PRIu64 " c=%" PRIu64
           "  wakes p=%" PRIu64 " c=%" PRIu64 "  full %" PRIu64 "  late_wakeups %" PRIu64 "\n",
           cap, n, secs, (double)n / secs / 1e6, rn.lost, rn.reordered, rn.corrupt, st.records_written,
           st.records_read, st.producer_parks, st.consumer_parks, st.producer_wakes, st.consumer_wakes,
           st.full_events, st.late_wakeups);
    int bad = rn.producer_rc || rn.consumer_rc || rn.lost || rn.reordered || rn.corrupt ||
              rn.written != n || rn.received != n || st.records_written != n || st.records_read != n ||
              st.used != 0 || st.late_wakeups != 0;   /* a late wakeup is a lost futex wake */
    if (rn.producer_rc || rn.consumer_rc)
        fprintf(stderr, "ring_tsan: producer rc %d, consumer rc %d\n", rn.producer_rc, rn.consumer_rc);
    ep_shm_unmap(addr, rn.region_size);
    return bad;
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 3000000;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    alarm(argc > 3 ? (unsigned)atoi(argv[3]) : 600);   /* a hang (a lost wakeup with no timeout) fails */
    setvbuf(stdout, NULL, _IOLBF, 0);
    int bad = 0;
    bad |= run_ring(256, n / 10, seed);
    bad |= run_ring(4096, n / 10 * 6, seed + 1);
    bad |= run_ring(65536, n - n / 10 - n / 10 * 6, seed + 2);
    printf(bad ? "ring_tsan: FAILED\n" : "ring_tsan: OK\n");
    return bad ? 1 : 0;
}
