/*
 * ep_atomic.h: the memory-ordering vocabulary of the C core.
 *
 * Every cross-process load or store in edgepipe goes through one of these, so a reader of ep_ring.c can
 * see at a glance which accesses order others (acquire/release) and which only need atomicity (relaxed).
 * EP_LINE is one cache line; EP_LINE_PAIR keeps a hot word apart from its neighbours even on CPUs whose
 * adjacent-line prefetcher pulls lines in pairs (Intel since Sandy Bridge, AMD Zen).
 */
#ifndef EP_ATOMIC_H
#define EP_ATOMIC_H

#include <stdatomic.h>
#include <stdint.h>

#define EP_LINE 64
#define EP_LINE_PAIR 128

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "cross-process atomics need lock-free 64-bit atomics");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "cross-process atomics need lock-free 32-bit atomics");

#define ep_load_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define ep_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define ep_store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define ep_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
/* A full fence: orders an earlier store before a later load (the Dekker step of the eventcount). */
#define ep_fence_seq_cst() atomic_thread_fence(memory_order_seq_cst)

/* Relaxed increment of a counter that only one process writes: a plain load and store, no lock prefix. */
#define ep_count(p, n) ep_store_relaxed((p), ep_load_relaxed(p) + (n))

static inline void ep_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

#endif
