/*
 * ep_wait_calib.c: what a parked wake costs on this machine, measured (ep_wait_wake_cost_ns).
 *
 * The hybrid wait policy spins before it parks. Spinning about as long as a park-and-wake would take
 * bounds the cost of guessing wrong either way (at most twice the better choice), so the spin should be
 * one futex wake of the machine the code runs on: ~6-25 us on x86 VMs, more on small ARM boards.
 * Python measures it once per process (edgepipe.wait) and derives the default spin from it.
 *
 * The measurement: two threads bounce a sequence number over two futex words in a MAP_SHARED page
 * (the shared futex key, as between two processes) and each parks until the other's word moves. One
 * round trip is two parked wakes; the result is half the median round trip after a warm-up. The two
 * threads are pinned to two different CPUs for the measurement if the machine has two (the caller's own
 * affinity is restored after): spinning only pays off when the other end runs on another CPU, and left to
 * the scheduler the pair may share one CPU (always, in a process pinned to one) and measure a plain
 * context switch instead. A wait that takes longer than a second means something is wrong (a stopped process):
 * -ETIMEDOUT, and the caller keeps its fallback.
 */
#define _GNU_SOURCE
#include "edgepipe.h"
#include "ep_atomic.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CALIB_WARMUP 16
#define CALIB_MAX_ROUNDS 100000

struct calib {
    _Alignas(EP_LINE_PAIR) _Atomic uint32_t ping;   /* the main thread's sequence number */
    _Alignas(EP_LINE_PAIR) _Atomic uint32_t pong;   /* the partner's echo */
    _Alignas(EP_LINE_PAIR) _Atomic int failed;      /* a wait ran out: both sides stop */
    uint32_t rounds;
};

/* Park until *word == want (or a second passes: -ETIMEDOUT). Shared (not PRIVATE) futex ops on purpose:
 * that is the key kind the ring pays for. */
static int wait_for(_Atomic uint32_t *word, uint32_t want, _Atomic int *failed)
{
    int64_t deadline = ep_clock_mono_ns() + 1000000000;
    for (;;) {
        /* Acquire: pairs with the release store in post(). */
        uint32_t v = ep_load_acquire(word);
        if (v == want)
            return 0;
        if (ep_load_relaxed(failed))
            return -ECANCELED;
        int64_t left = deadline - ep_clock_mono_ns();
        if (left <= 0)
            return -ETIMEDOUT;
        struct timespec ts = {.tv_sec = left / 1000000000, .tv_nsec = left % 1000000000};
        syscall(SYS_futex, word, FUTEX_WAIT, v, &ts, NULL, 0);
    }
}

static void post(_Atomic uint32_t *word, uint32_t v)
{
    /* Release: pairs with the acquire in wait_for(). */
    ep_store_release(word, v);
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static void *partner(void *arg)
{
    struct calib *c = arg;
    for (uint32_t i = 1; i <= c->rounds; i++) {
        if (wait_for(&c->ping, i, &c->failed)) {
            ep_store_relaxed(&c->failed, 1);
            post(&c->pong, UINT32_MAX);         /* unblock the main thread at once */
            return NULL;
        }
        post(&c->pong, i);
    }
    return NULL;
}

/* Pin the calling thread to the CPU it runs on and the partner `t` to another one: one of the caller's
 * mask if it has two, else any CPU of the machine the partner may use (a process pinned to one CPU still
 * measures a cross-CPU wake; only a one-CPU machine measures a context switch). 1 if pinned apart, 0 if not
 * (then both are left to the scheduler). */
static int pin_apart(pthread_t t, const cpu_set_t *mine)
{
    int cur = sched_getcpu();
    if (cur < 0 || cur >= CPU_SETSIZE)
        return 0;
    long ncpu = sysconf(_SC_NPROCESSORS_CONF);
    if (ncpu > CPU_SETSIZE)
        ncpu = CPU_SETSIZE;
    cpu_set_t one;
    for (int pass = 0; pass < 2; pass++) {
        for (int c = 0; c < ncpu; c++) {
            if (c == cur || (pass == 0) != (CPU_ISSET(c, mine) != 0))
                continue;               /* pass 0: the caller's CPUs; pass 1: the others */
            CPU_ZERO(&one);
            CPU_SET(c, &one);
            if (pthread_setaffinity_np(t, sizeof(one), &one) == 0) {
                CPU_ZERO(&one);
                CPU_SET(cur, &one);
                pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
                return 1;
            }
        }
    }
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int64_t ep_wait_wake_cost_ns(uint32_t rounds)
{
    if (rounds < 1 || rounds > CALIB_MAX_ROUNDS)
        return -EINVAL;
    struct calib *c = mmap(NULL, sizeof(*c), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (c == MAP_FAILED)
        return -errno;
    int64_t *rtt = malloc(sizeof(int64_t) * rounds);
    if (!rtt) {
        munmap(c, sizeof(*c));
        return -ENOMEM;
    }
    c->rounds = rounds + CALIB_WARMUP;
    cpu_set_t mine;
    int have_mask = sched_getaffinity(0, sizeof(mine), &mine) == 0;
    /* The partner takes no signals: they stay with the calling (Python) thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    int rc = pthread_create(&t, NULL, partner, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        free(rtt);
        munmap(c, sizeof(*c));
        return -rc;
    }
    int pinned = have_mask && pin_apart(t, &mine);
    int64_t out = 0;
    for (uint32_t i = 1; i <= c->rounds; i++) {
        int64_t t0 = ep_clock_mono_ns();
        post(&c->ping, i);
        int w = wait_for(&c->pong, i, &c->failed);
        if (w) {
            out = w == -ECANCELED ? -ETIMEDOUT : w;
            ep_store_relaxed(&c->failed, 1);
            post(&c->ping, UINT32_MAX);         /* unblock the partner at once */
            break;
        }
        if (i > CALIB_WARMUP)
            rtt[i - CALIB_WARMUP - 1] = ep_clock_mono_ns() - t0;
    }
    pthread_join(t, NULL);
    if (pinned)
        pthread_setaffinity_np(pthread_self(), sizeof(mine), &mine);   /* the caller's mask, as it was */
    if (out == 0) {
        qsort(rtt, rounds, sizeof(int64_t), cmp_i64);
        out = rtt[rounds / 2] / 2;
        if (out < 1)
            out = 1;
    }
    free(rtt);
    munmap(c, sizeof(*c));
    return out;
}
