/*
 * ep_async_hook.h: the producer's half of the async wait (ep_async.c, protocol in ep_async.h), inlined
 * into the publish paths of ep_ring.c and ep_latest.c. Internal to the C core.
 *
 * ep_async_notify() must run after the position's release AND a full fence: the callers place it right
 * after ep_wait_notify() (whose seq_cst fence is the Dekker step for both waits) or ep_wait_wake_all().
 * Nobody awaiting costs one relaxed load of a word on the line ep_wait_notify() just loaded, and a branch.
 */
#ifndef EP_ASYNC_HOOK_H
#define EP_ASYNC_HOOK_H

#include "ep_atomic.h"

#include <stdint.h>

/* Clear the announcement (CAS from v) and send the waiter its datagram: out of line, cold. */
void ep_async_signal(_Atomic uint64_t *word, uint64_t v);

static inline void ep_async_notify(_Atomic uint64_t *word)
{
    /* Dekker step: ordered after the caller's release of its position by the caller's full fence.
     * Pairs with the fence in ep_async_arm(). */
    uint64_t v = ep_load_relaxed(word);
    if (__builtin_expect(v & 1u, 0))
        ep_async_signal(word, v);
}

#endif
