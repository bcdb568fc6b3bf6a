/*
 * ep_wait.h: the eventcount both the ring and the latest slot wait with (ep_wait.c). Internal to the C core.
 *
 * One 32-bit futex word per direction. Bit 0 means "a waiter is announced"; a notifier clears it by adding
 * 1, so the word changes with every wake and a FUTEX_WAIT on a stale value returns at once.
 *   waiter:   v = fetch_or(word, 1) | 1; full fence; re-check; FUTEX_WAIT(word, v, absolute deadline)
 *   notifier: publish; full fence; if (word & 1) CAS(word, v, v + 1) and FUTEX_WAKE; then store the
 *             position it just notified for into its `notified` word (release)
 * The two fences make this Dekker's pattern: either the waiter's re-check sees the publish or the
 * notifier sees the announcement. The fast path (nobody announced) costs a fence and a load.
 */
#ifndef EP_WAIT_H
#define EP_WAIT_H

#include "ep_atomic.h"
#include "ep_peer.h"

#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

struct ep_waiter {
    _Atomic uint32_t *word;             /* the futex word of this direction */
    struct ep_end *self;                /* our presence: heartbeat, parks, late_wakeups */
    struct ep_end *other;               /* the end we wait for */
    struct ep_peer *peer;               /* how we watch it (and the segment) */
    _Atomic int *cancel;                /* set from another thread: return -ECANCELED */
    int mode;                           /* EP_WAIT_SPIN / _PARK / _HYBRID */
    int64_t spin_ns;
    int64_t deadline_mono;              /* absolute CLOCK_MONOTONIC, INT64_MAX for none */
    int (*ready)(void *ctx);            /* is the wait over? (loads the other side's position) */
    /* Would the wait be over given the other side's notified position `n`? (no loads, no side effects) */
    int (*ready_at)(void *ctx, uint64_t n);
    _Atomic uint64_t *notified;         /* the other side's last fully notified position */
    void *ctx;
};

/* Wait until ready() holds (0), the deadline passes (-ETIMEDOUT), the other end is gone (-EPIPE, only
 * once ready() is still false, so nothing already published is lost), its owner lives in another pid
 * namespace (-EXDEV), the segment was truncated (-EBADMSG), a signal arrives (-EINTR: the caller runs its
 * handlers and calls again) or the handle is cancelled (-ECANCELED). Checks the other end at least every
 * EP_PEER_CHECK_NS. */
int ep_wait_until(struct ep_waiter *wt);

/* An absolute CLOCK_MONOTONIC deadline timeout_ns from now, saturating at INT64_MAX (< 0: no deadline). */
int64_t ep_wait_deadline(int64_t timeout_ns);

/* Wake every waiter on `word` whether it announced or not (close, cancel): it re-checks and sees why. */
void ep_wait_wake_all(_Atomic uint32_t *word);

/* The notifier's half, on the hot path after a release of the new position: wake a waiter only if one
 * announced itself. */
static inline void ep_wait_notify(_Atomic uint32_t *word, _Atomic uint64_t *wakes)
{
    /* Dekker step: the position store (just released) is ordered before this load of the waiter bit.
     * Pairs with the fence in ep_wait_until(). */
    ep_fence_seq_cst();
    uint32_t v = ep_load_relaxed(word);
    if (__builtin_expect(v & 1u, 0)) {
        if (atomic_compare_exchange_strong(word, &v, v + 1u)) {
            syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
            ep_count(wakes, 1);
        }
    }
}

#endif
