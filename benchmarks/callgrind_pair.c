/*
 * callgrind_pair.c: a tiny C driver for counting (and timing) what one ring record costs.
 *
 * Built by benchmarks/callgrind_pair.py against csrc/ep_ring.c, ep_shm.c and ep_clock.c with -O2 -g.
 *
 *   callgrind_pair count MODE N [SIZE]
 *       One thread, N write+read pairs of SIZE-byte records (default 64) on one 64 KiB ring. Run under
 *       `valgrind --tool=callgrind` for two values of N and subtract: instructions per pair, free of the
 *       set-up cost and stable on a noisy VM.
 *   callgrind_pair stream CPU_A CPU_B MODE N [SIZE [REPS]]
 *       Producer thread on CPU_A, consumer thread on CPU_B, N records through a 1 MiB ring (both spin
 *       when full/empty); the consumer checks every record's sequence number. Prints ns per record,
 *       one line per repetition (short repetitions, min/median taken by the caller, survive a busy VM).
 *   callgrind_pair pingpong CPU_A CPU_B MODE N [SIZE [REPS]]
 *       Two threads bounce one record over two 64 KiB rings N times. Prints one-way ns (round trip / 2).
 *   callgrind_pair pinglat CPU_A CPU_B MODE N [SIZE [REPS]]
 *       The same, with each round trip timed (clock_gettime before the write and after the echo, as the
 *       Python ping-pong rows of ring_latency.py time theirs): also prints the one-way p50/p99/p99.9.
 *
 * MODE is the real library (`lib`: ep_ring_try_write/ep_ring_try_read; `libbatch`, stream only:
 * ep_ring_try_write_fixed/ep_ring_try_read_batch, 256 records per call) or one of the micro-rings below,
 * which strip the record step to its bones so that two design questions can be counted in isolation:
 *   step8   8-byte-aligned records, the reader polls the producer's tail (the library's layout)
 *   step64  64-byte-aligned records (one record never shares a cache line with the next), tail polling
 *   seq8    8-byte-aligned records, the reader polls a per-record sequence word in the header instead of
 *           the tail (the producer publishes no tail at all; it still reads the consumer's head when the
 *           ring looks full)
 *   seq64   64-byte-aligned records with a per-record sequence word
 *   step8f  step8 plus the library's notify() step after each publish: a seq_cst fence and a load of
 *           the other side's wait word (the Dekker half of the eventcount)
 *   batch8 / batch8pf (stream only): step8 with 256 records per call and one tail/head publish per batch,
 *           without / with software prefetch of the lines the call is about to read or write.
 * The micro-rings have no peer-death checks, no wait words, no counters and no type field (the header is
 * {u32 len; u32 seq}, padding is flagged in len's top bit); they are yardsticks, not alternatives ready
 * to ship. A real sequence-word ring must also keep stale payload bytes from a previous lap from looking
 * like a valid header (agrona's ring zeroes what it consumed; a position-derived 64-bit sequence makes a
 * false match need a payload that spells the exact position). None of that is modelled here.
 *
 * What the numbers can show: callgrind counts instructions of one thread. A cache line that moves
 * between cores costs the same one instruction as a hit in L1, so the cost that dominates cross-process
 * messaging (55-200 ns per transfer on the benchmark VM, against ~0.3 ns per instruction) is invisible
 * to it; the stream and pingpong modes measure that part with wall-clock time on two pinned CPUs.
 */
#define _GNU_SOURCE
#include "edgepipe.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HDR 8u
#define PADBIT 0x80000000u
#define BATCH 256
#define MAXSIZE 4096

/* ------------------------------------------------------------------------------------------------ */
/* the micro-rings */

struct mring {
    _Alignas(128) _Atomic uint64_t tail;   /* producer's position (tail-polling variants only) */
    _Alignas(128) _Atomic uint64_t head;   /* consumer's position */
    _Alignas(128) uint8_t *data;
    uint64_t cap, mask;
};

struct mhdr {
    uint32_t len;                           /* PADBIT: filler up to the end of the data area */
    _Atomic uint32_t seq;                   /* seq variants: (position / 8) + 1, stored last */
};

struct mw {
    struct mring *r;
    uint64_t tail, head_cache;
};

struct mrd {
    struct mring *r;
    uint64_t head, tail_cache;
};

static inline uint32_t seq_of(uint64_t pos)
{
    return (uint32_t)(pos >> 3) + 1u;
}

static inline uint64_t rsize(uint32_t len, uint64_t align)
{
    return (HDR + len + align - 1) & ~(align - 1);
}

/* Reserve room for `need` bytes at w->tail, writing a pad record if the record must wrap. Returns the
 * record's position or UINT64_MAX if full. */
static inline uint64_t m_reserve(struct mw *w, uint64_t need, int seq)
{
    struct mring *r = w->r;
    uint64_t off = w->tail & r->mask;
    uint64_t to_end = r->cap - off;
    uint64_t pad = need <= to_end ? 0 : to_end;
    if (w->tail + pad + need - w->head_cache > r->cap) {
        w->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
        if (w->tail + pad + need - w->head_cache > r->cap)
            return UINT64_MAX;
    }
    if (pad) {
        struct mhdr *p = (struct mhdr *)(r->data + off);
        p->len = PADBIT | (uint32_t)(pad - HDR);
        if (seq)
            atomic_store_explicit(&p->seq, seq_of(w->tail), memory_order_release);
    }
    return w->tail + pad;
}

/* The library's notify(): after publishing, a full fence and a look at the other side's wait word (the
 * Dekker step of its eventcount). One instruction each to callgrind; a fence costs tens of cycles. */
static _Alignas(128) _Atomic uint32_t wait_word[2];

static inline void m_notify(int side)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (__builtin_expect(atomic_load_explicit(&wait_word[side], memory_order_relaxed) & 1u, 0))
        abort();                        /* nobody ever waits in this harness */
}

static inline int m_write(struct mw *w, const void *buf, uint32_t len, uint64_t align, int seq, int fence)
{
    uint64_t need = rsize(len, align);
    uint64_t pos = m_reserve(w, need, seq);
    if (pos == UINT64_MAX)
        return -EAGAIN;
    struct mhdr *h = (struct mhdr *)(w->r->data + (pos & w->r->mask));
    memcpy(h + 1, buf, len);
    h->len = len;
    w->tail = pos + need;
    if (seq)    /* Release: payload and len before the sequence word the reader polls. */
        atomic_store_explicit(&h->seq, seq_of(pos), memory_order_release);
    else        /* Release: the record before the tail. */
        atomic_store_explicit(&w->r->tail, w->tail, memory_order_release);
    if (fence)
        m_notify(0);
    return (int)len;
}

static inline int m_read(struct mrd *rd, void *out, uint64_t align, int seq, int fence)
{
    struct mring *r = rd->r;
    for (;;) {
        struct mhdr *h = (struct mhdr *)(r->data + (rd->head & r->mask));
        if (seq) {
            /* Acquire: pairs with the release of seq in m_write(). */
            if (atomic_load_explicit(&h->seq, memory_order_acquire) != seq_of(rd->head))
                return -EAGAIN;
        } else if (rd->head == rd->tail_cache) {
            rd->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
            if (rd->head == rd->tail_cache)
                return -EAGAIN;
        }
        uint32_t len = h->len;
        if (len & PADBIT) {
            rd->head += HDR + (len & ~PADBIT);
            continue;
        }
        memcpy(out, h + 1, len);
        rd->head += rsize(len, align);
        /* Release: we are done with the bytes before head. Pairs with the acquire in m_reserve(). */
        atomic_store_explicit(&r->head, rd->head, memory_order_release);
        if (fence)
            m_notify(1);
        return (int)len;
    }
}

/* One noinline function per variant, so callgrind_annotate lists each beside the library's. */
#define VARIANT(name, align, seq, fence)                                                          \
    __attribute__((noinline)) int micro_write_##name(struct mw *w, const void *b, uint32_t n)     \
    {                                                                                             \
        return m_write(w, b, n, align, seq, fence);                                               \
    }                                                                                             \
    __attribute__((noinline)) int micro_read_##name(struct mrd *r, void *o)                       \
    {                                                                                             \
        return m_read(r, o, align, seq, fence);                                                   \
    }
VARIANT(step8, 8, 0, 0)
VARIANT(step64, 64, 0, 0)
VARIANT(seq8, 8, 1, 0)
VARIANT(seq64, 64, 1, 0)
VARIANT(step8f, 8, 0, 1)

/* Batches for the stream mode: n fixed-size records per call, one publish per call. */
static inline void prefetch_range(const uint8_t *data, uint64_t mask, uint64_t from, uint64_t to, int rw)
{
    for (uint64_t p = from & ~(uint64_t)63; p < to; p += 64) {
        if (rw)
            __builtin_prefetch(data + (p & mask), 1);
        else
            __builtin_prefetch(data + (p & mask), 0);
    }
}

__attribute__((noinline)) int micro_write_batch(struct mw *w, const uint8_t *buf, uint32_t size, int n,
                                                int pf)
{
    struct mring *r = w->r;
    uint64_t need = rsize(size, 8);
    if (pf) {
        /* Only lines the consumer is known to be done with: prefetching for write a line it is still
         * reading would steal it back mid-read. */
        uint64_t end = w->tail + need * (uint64_t)n, free_end = w->head_cache + r->cap;
        prefetch_range(r->data, r->mask, w->tail, end < free_end ? end : free_end, 1);
    }
    int i = 0;
    for (; i < n; i++) {
        uint64_t pos = m_reserve(w, need, 0);
        if (pos == UINT64_MAX)
            break;
        struct mhdr *h = (struct mhdr *)(r->data + (pos & r->mask));
        memcpy(h + 1, buf + (size_t)i * size, size);
        h->len = size;
        w->tail = pos + need;
    }
    if (i)
        atomic_store_explicit(&r->tail, w->tail, memory_order_release);
    return i ? i : -EAGAIN;
}

__attribute__((noinline)) int micro_read_batch(struct mrd *rd, uint8_t *out, int max_n, int pf)
{
    struct mring *r = rd->r;
    if (rd->head == rd->tail_cache) {
        rd->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (rd->head == rd->tail_cache)
            return -EAGAIN;
    }
    if (pf) {
        uint64_t end = rd->tail_cache - rd->head > (uint64_t)max_n * 128 ? rd->head + (uint64_t)max_n * 128
                                                                           : rd->tail_cache;
        prefetch_range(r->data, r->mask, rd->head, end, 0);
    }
    int i = 0;
    while (i < max_n && rd->head != rd->tail_cache) {
        struct mhdr *h = (struct mhdr *)(r->data + (rd->head & r->mask));
        uint32_t len = h->len;
        if (len & PADBIT) {
            rd->head += HDR + (len & ~PADBIT);
            continue;
        }
        memcpy(out, h + 1, len);
        out += len;
        rd->head += rsize(len, 8);
        i++;
    }
    if (i)
        atomic_store_explicit(&r->head, rd->head, memory_order_release);
    return i ? i : -EAGAIN;
}

static struct mring *mring_new(uint64_t cap)
{
    struct mring *r = aligned_alloc(128, sizeof(*r));
    uint8_t *d = aligned_alloc(4096, cap);
    if (!r || !d) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    memset(d, 0, cap);
    atomic_init(&r->tail, 0);
    atomic_init(&r->head, 0);
    r->data = d;
    r->cap = cap;
    r->mask = cap - 1;
    return r;
}

/* ------------------------------------------------------------------------------------------------ */
/* one interface over the library and the micro-rings */

enum mode { M_LIB, M_STEP8, M_STEP64, M_SEQ8, M_SEQ64, M_STEP8F, M_LIBBATCH, M_BATCH8, M_BATCH8PF };
static const char *mode_names[] = {"lib", "step8", "step64", "seq8", "seq64", "step8f", "libbatch",
                                   "batch8", "batch8pf"};

struct ring {
    enum mode mode;
    struct ep_ring_writer *lw;
    struct ep_ring_reader *lr;
    void *lib_base;
    struct mring *m;
    struct mw mw;
    struct mrd mr;
};

static void ring_open(struct ring *g, enum mode mode, uint64_t cap)
{
    memset(g, 0, sizeof(*g));
    g->mode = mode;
    if (mode == M_LIB || mode == M_LIBBATCH) {
        uint64_t sz = ep_ring_region_size(cap);
        g->lib_base = aligned_alloc(4096, sz);
        if (!g->lib_base || ep_ring_init(g->lib_base, sz, cap) || ep_ring_writer_open(g->lib_base, sz, -1, &g->lw) ||
            ep_ring_reader_open(g->lib_base, sz, -1, &g->lr)) {
            fprintf(stderr, "cannot set up the library ring\n");
            exit(1);
        }
        return;
    }
    g->m = mring_new(cap);
    g->mw.r = g->m;
    g->mr.r = g->m;
}

static inline int ring_write(struct ring *g, const void *b, uint32_t n)
{
    switch (g->mode) {
    case M_LIB: return ep_ring_try_write(g->lw, b, n, 1);
    case M_STEP8: return micro_write_step8(&g->mw, b, n);
    case M_STEP64: return micro_write_step64(&g->mw, b, n);
    case M_SEQ8: return micro_write_seq8(&g->mw, b, n);
    case M_SEQ64: return micro_write_seq64(&g->mw, b, n);
    case M_STEP8F: return micro_write_step8f(&g->mw, b, n);
    default: abort();
    }
}

/* Returns the payload length; the bytes are in *out (the library copies into its scratch buffer). */
static inline int ring_read(struct ring *g, uint8_t *buf, const uint8_t **out)
{
    int n;
    switch (g->mode) {
    case M_LIB:
        n = ep_ring_try_read(g->lr);
        *out = ep_ring_reader_scratch(g->lr);
        return n;
    case M_STEP8: n = micro_read_step8(&g->mr, buf); break;
    case M_STEP64: n = micro_read_step64(&g->mr, buf); break;
    case M_SEQ8: n = micro_read_seq8(&g->mr, buf); break;
    case M_SEQ64: n = micro_read_seq64(&g->mr, buf); break;
    case M_STEP8F: n = micro_read_step8f(&g->mr, buf); break;
    default: abort();
    }
    *out = buf;
    return n;
}

/* ------------------------------------------------------------------------------------------------ */
/* helpers */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (pthread_setaffinity_np(pthread_self(), sizeof(s), &s)) {
        fprintf(stderr, "cannot pin to cpu %d\n", cpu);
        exit(1);
    }
}

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline void put_seq(uint8_t *p, uint64_t s)
{
    memcpy(p, &s, 8);
}

static inline uint64_t get_seq(const uint8_t *p)
{
    uint64_t s;
    memcpy(&s, p, 8);
    return s;
}

static enum mode parse_mode(const char *s)
{
    for (unsigned i = 0; i < sizeof(mode_names) / sizeof(*mode_names); i++)
        if (!strcmp(s, mode_names[i]))
            return (enum mode)i;
    fprintf(stderr, "unknown mode %s\n", s);
    exit(2);
}

/* ------------------------------------------------------------------------------------------------ */
/* count: one thread, N pairs */

static int run_count(enum mode mode, long n, uint32_t size)
{
    if (mode > M_STEP8F) {
        fprintf(stderr, "count supports lib, step8, step64, seq8, seq64, step8f\n");
        return 2;
    }
    struct ring g;
    ring_open(&g, mode, 1u << 16);
    uint8_t msg[MAXSIZE], buf[MAXSIZE];
    memset(msg, 0xab, sizeof(msg));
    uint64_t sum = 0;
    for (long i = 0; i < n; i++) {
        put_seq(msg, (uint64_t)i);
        if (ring_write(&g, msg, size) != (int)size)
            return fprintf(stderr, "write %ld failed\n", i), 1;
        const uint8_t *out;
        if (ring_read(&g, buf, &out) != (int)size || get_seq(out) != (uint64_t)i)
            return fprintf(stderr, "read %ld failed\n", i), 1;
        sum += out[size - 1];
    }
    printf("pairs=%ld checksum=%llu\n", n, (unsigned long long)sum);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* stream: producer and consumer threads */

struct stream_arg {
    struct ring *g;
    long n;
    uint32_t size;
    int cpu;
    _Atomic int *go;
    int64_t t_start, t_end;
    int bad;
};

static void *producer(void *p)
{
    struct stream_arg *a = p;
    pin(a->cpu);
    struct ring *g = a->g;
    uint8_t *batch = calloc(BATCH, MAXSIZE);
    atomic_fetch_add(a->go, 1);
    while (atomic_load(a->go) < 2)
        relax();
    for (long i = 0; i < a->n;) {
        if (g->mode == M_LIBBATCH || g->mode == M_BATCH8 || g->mode == M_BATCH8PF) {
            int k = a->n - i < BATCH ? (int)(a->n - i) : BATCH;
            for (int j = 0; j < k; j++)
                put_seq(batch + (size_t)j * a->size, (uint64_t)(i + j));
            int rc;
            if (g->mode == M_LIBBATCH)
                rc = ep_ring_try_write_fixed(g->lw, batch, a->size, (uint32_t)k, 1);
            else
                rc = micro_write_batch(&g->mw, batch, a->size, k, g->mode == M_BATCH8PF);
            if (rc > 0)
                i += rc;
            else
                relax();
        } else {
            put_seq(batch, (uint64_t)i);
            if (ring_write(g, batch, a->size) > 0)
                i++;
            else
                relax();
        }
    }
    free(batch);
    return NULL;
}

static void *consumer(void *p)
{
    struct stream_arg *a = p;
    pin(a->cpu);
    struct ring *g = a->g;
    uint8_t *buf = malloc((size_t)BATCH * MAXSIZE);
    uint32_t lens[BATCH];
    atomic_fetch_add(a->go, 1);
    while (atomic_load(a->go) < 2)
        relax();
    a->t_start = now_ns();
    for (long i = 0; i < a->n;) {
        if (g->mode == M_LIBBATCH || g->mode == M_BATCH8 || g->mode == M_BATCH8PF) {
            int rc;
            if (g->mode == M_LIBBATCH)
                rc = ep_ring_try_read_batch(g->lr, buf, (uint64_t)BATCH * MAXSIZE, lens, NULL, BATCH);
            else
                rc = micro_read_batch(&g->mr, buf, BATCH, g->mode == M_BATCH8PF);
            if (rc <= 0) {
                relax();
                continue;
            }
            for (int j = 0; j < rc; j++)
                if (get_seq(buf + (size_t)j * a->size) != (uint64_t)(i + j))
                    a->bad++;
            i += rc;
        } else {
            const uint8_t *out;
            if (ring_read(g, buf, &out) > 0) {
                if (get_seq(out) != (uint64_t)i)
                    a->bad++;
                i++;
            } else {
                relax();
            }
        }
    }
    a->t_end = now_ns();
    free(buf);
    return NULL;
}

static int run_stream(int cpu_a, int cpu_b, enum mode mode, long n, uint32_t size)
{
    struct ring g;
    ring_open(&g, mode, 1u << 20);
    _Atomic int go = 0;
    struct stream_arg pa = {.g = &g, .n = n, .size = size, .cpu = cpu_a, .go = &go};
    struct stream_arg ca = pa;
    ca.cpu = cpu_b;
    pthread_t tp, tc;
    pthread_create(&tc, NULL, consumer, &ca);
    pthread_create(&tp, NULL, producer, &pa);
    pthread_join(tp, NULL);             /* the main thread sleeps: a third spinner would steal a CPU */
    pthread_join(tc, NULL);
    double ns = (double)(ca.t_end - ca.t_start) / (double)n;
    printf("mode=%s records=%ld ns_per_record=%.2f mrec_per_s=%.2f bad=%d\n", mode_names[mode], n, ns,
           1e3 / ns, ca.bad);
    return ca.bad != 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* pingpong: one record bounced over two rings */

struct pp_arg {
    struct ring *out, *in;
    long n;
    uint32_t size;
    int cpu;
    int initiator;
    _Atomic int *go;
    int64_t elapsed;
    int bad;
    int64_t *rtt;                       /* pinglat: one round trip per timed iteration, else NULL */
};

static void *pp_side(void *p)
{
    struct pp_arg *a = p;
    pin(a->cpu);
    uint8_t msg[MAXSIZE], buf[MAXSIZE];
    memset(msg, 0, sizeof(msg));
    atomic_fetch_add(a->go, 1);
    while (atomic_load(a->go) < 2)
        relax();
    long warm = a->n / 10;
    int64_t t0 = 0;
    for (long i = 0; i < a->n + warm; i++) {
        if (a->initiator && i == warm)
            t0 = now_ns();
        const uint8_t *got;
        if (a->initiator) {
            put_seq(msg, (uint64_t)i);
            int64_t s = a->rtt ? now_ns() : 0;
            while (ring_write(a->out, msg, a->size) < 0)
                relax();
            while (ring_read(a->in, buf, &got) < 0)
                relax();
            if (a->rtt && i >= warm)
                a->rtt[i - warm] = now_ns() - s;
            if (get_seq(got) != (uint64_t)i)
                a->bad++;
        } else {
            while (ring_read(a->in, buf, &got) < 0)
                relax();
            memcpy(msg, got, a->size);
            while (ring_write(a->out, msg, a->size) < 0)
                relax();
        }
    }
    if (a->initiator)
        a->elapsed = now_ns() - t0;
    return NULL;
}

static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

static int run_pingpong(int cpu_a, int cpu_b, enum mode mode, long n, uint32_t size, int timed)
{
    if (mode > M_STEP8F) {
        fprintf(stderr, "pingpong supports lib, step8, step64, seq8, seq64, step8f\n");
        return 2;
    }
    struct ring ab, ba;
    ring_open(&ab, mode, 1u << 16);
    ring_open(&ba, mode, 1u << 16);
    _Atomic int go = 0;
    struct pp_arg a = {.out = &ab, .in = &ba, .n = n, .size = size, .cpu = cpu_a, .initiator = 1, .go = &go,
                       .rtt = timed ? malloc((size_t)n * sizeof(int64_t)) : NULL};
    if (timed && !a.rtt)
        return fprintf(stderr, "out of memory\n"), 2;
    struct pp_arg b = {.out = &ba, .in = &ab, .n = n, .size = size, .cpu = cpu_b, .initiator = 0, .go = &go};
    pthread_t ta, tb;
    pthread_create(&tb, NULL, pp_side, &b);
    pthread_create(&ta, NULL, pp_side, &a);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    printf("mode=%s round_trips=%ld one_way_ns=%.1f", mode_names[mode], n, (double)a.elapsed / (2.0 * (double)n));
    if (timed) {
        qsort(a.rtt, (size_t)n, sizeof(int64_t), cmp_i64);
        printf(" p50_ns=%.1f p99_ns=%.1f p999_ns=%.1f", a.rtt[n / 2] / 2.0, a.rtt[n * 99 / 100] / 2.0,
               a.rtt[n * 999 / 1000] / 2.0);
        free(a.rtt);
    }
    printf(" bad=%d\n", a.bad);
    return a.bad != 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "count")) {
        uint32_t size = argc > 4 ? (uint32_t)atoi(argv[4]) : 64;
        if (size < 8 || size > MAXSIZE)
            return fprintf(stderr, "size must be 8..%d\n", MAXSIZE), 2;
        return run_count(parse_mode(argv[2]), atol(argv[3]), size);
    }
    if (argc >= 6 && (!strcmp(argv[1], "stream") || !strcmp(argv[1], "pingpong") || !strcmp(argv[1], "pinglat"))) {
        uint32_t size = argc > 6 ? (uint32_t)atoi(argv[6]) : 64;
        int reps = argc > 7 ? atoi(argv[7]) : 1;
        if (size < 8 || size > MAXSIZE)
            return fprintf(stderr, "size must be 8..%d\n", MAXSIZE), 2;
        int a = atoi(argv[2]), b = atoi(argv[3]);
        enum mode m = parse_mode(argv[4]);
        long n = atol(argv[5]);
        int rc = 0;
        for (int i = 0; i < reps && rc == 0; i++)   /* fresh rings each time; one line per repetition */
            rc = argv[1][0] == 's' ? run_stream(a, b, m, n, size)
                                   : run_pingpong(a, b, m, n, size, !strcmp(argv[1], "pinglat"));
        return rc;
    }
    fprintf(stderr,
            "usage: %s count MODE N [SIZE]\n"
            "       %s stream CPU_A CPU_B MODE N [SIZE [REPS]]\n"
            "       %s pingpong CPU_A CPU_B MODE N [SIZE [REPS]]\n"
            "       %s pinglat CPU_A CPU_B MODE N [SIZE [REPS]]\n",
            argv[0], argv[0], argv[0], argv[0]);
    return 2;
}
