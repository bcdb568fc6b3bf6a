/*
 * cacheline.c: the cache-line ping-pong probe the benchmarks run before and after each case.
 *
 * Two threads, pinned to two CPUs, bounce one 64-byte-aligned word: thread A stores an odd value and
 * spins until it reads the next even one, thread B answers each odd value with the next even one. Each
 * round trip moves the line twice, so one-way transfer = round trip / 2. Rounds are timed in batches
 * (clock_gettime once per batch) and the median batch is reported, so a vCPU preemption inside one batch
 * does not move the figure.
 *
 * On the benchmark VM the two vCPUs wander between a "near" pair of physical cores (~55 ns one way) and
 * a "far" pair (~170 ns), which changes every busy-poll figure 2-6x; printing this probe beside each
 * result says which pair a number was measured on.
 *
 * Built by benchmarks/_common.py at run time: gcc -O2 -pthread cacheline.c -o <tmpdir>/cacheline
 * Usage: cacheline CPU_A CPU_B MILLISECONDS
 * Prints one line: "p50_ns=<f> min_ns=<f> p90_ns=<f> batches=<n>" (one-way ns per transfer).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ROUNDS_PER_BATCH 256
#define MAX_BATCHES 100000

static struct {
    _Alignas(128) _Atomic uint64_t word;   /* the line that moves */
    _Alignas(128) _Atomic int stop;        /* on its own line: read only by B, rarely */
} shared;

static double batch_ns[MAX_BATCHES];

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *ponger(void *arg)
{
    if (pin(*(int *)arg))
        return (void *)1;
    uint64_t seen = 0;
    for (;;) {
        uint64_t v = atomic_load_explicit(&shared.word, memory_order_acquire);
        if (v != seen && (v & 1)) {
            seen = v + 1;
            atomic_store_explicit(&shared.word, seen, memory_order_release);
            continue;
        }
        if (atomic_load_explicit(&shared.stop, memory_order_relaxed))
            return NULL;
        relax();
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s CPU_A CPU_B MILLISECONDS\n", argv[0]);
        return 2;
    }
    int cpu_a = atoi(argv[1]), cpu_b = atoi(argv[2]);
    int64_t run_ns = (int64_t)atoi(argv[3]) * 1000000;
    if (pin(cpu_a)) {
        fprintf(stderr, "cannot pin to cpu %d\n", cpu_a);
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, ponger, &cpu_b)) {
        fprintf(stderr, "pthread_create failed\n");
        return 1;
    }
    uint64_t v = 1;
    int n = 0;
    int64_t start = now_ns(), end = start + run_ns;
    int warm = 8;                       /* batches thrown away while the threads settle */
    for (;;) {
        int64_t t0 = now_ns();
        if (t0 >= end || n >= MAX_BATCHES)
            break;
        for (int i = 0; i < ROUNDS_PER_BATCH; i++, v += 2) {
            atomic_store_explicit(&shared.word, v, memory_order_release);
            while (atomic_load_explicit(&shared.word, memory_order_acquire) != v + 1)
                relax();
        }
        int64_t t1 = now_ns();
        if (warm > 0) {
            warm--;
            continue;
        }
        batch_ns[n++] = (double)(t1 - t0) / (2.0 * ROUNDS_PER_BATCH);
    }
    atomic_store_explicit(&shared.stop, 1, memory_order_relaxed);
    void *rc;
    pthread_join(t, &rc);
    if (rc) {
        fprintf(stderr, "cannot pin to cpu %d\n", cpu_b);
        return 1;
    }
    if (n == 0) {
        fprintf(stderr, "no batches completed\n");
        return 1;
    }
    qsort(batch_ns, (size_t)n, sizeof(double), cmp_double);
    printf("p50_ns=%.1f min_ns=%.1f p90_ns=%.1f batches=%d\n", batch_ns[n / 2], batch_ns[0],
           batch_ns[(n * 9) / 10], n);
    return 0;
}
