/*
 * ep_wait.c: the waiting half of the eventcount (see ep_wait.h for the protocol), shared by the ring's
 * two directions and the latest slot's consumer.
 *
 * A wait spins for spin_ns (polling ready() and, every 64 turns, the clock), then parks on the futex with
 * an absolute CLOCK_MONOTONIC deadline (FUTEX_WAIT_BITSET takes one; the deadline saturates at INT64_MAX
 * rather than overflowing). It wakes at least every EP_PEER_CHECK_NS to refresh its heartbeat and check
 * the other end (ep_peer_check: closed, dead through a pidfd and its start time, foreign pid namespace,
 * truncated segment), so a dead peer is an error within one check period, never a hang.
 *
 * Lost-wakeup accounting (late_wakeups): after a park that timed out without the word changing (nobody
 * woke us), the waiter loads the other side's `notified` word BEFORE withdrawing its announcement. A
 * notifier stores that word only after its whole notify (fence, look at the word) is done. So if the
 * position it holds would have ended the wait, a publish the re-check missed finished its notify while
 * our bit was set, and must have seen the bit (the fences) and bumped the word: finding the word unchanged
 * then is a real lost wakeup. A publish that lands after the timeout (between the kernel's return and our
 * re-check) is not counted: either its notified store is not visible yet, or its notify saw our bit and
 * changed the word. The counter must stay 0; the TSan harnesses assert it.
 */
#define _GNU_SOURCE
#include "ep_wait.h"
#include "edgepipe.h"

#include <errno.h>
#include <time.h>

int64_t ep_wait_deadline(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return INT64_MAX;
    int64_t now = ep_clock_mono_ns();
    return timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
}

void ep_wait_wake_all(_Atomic uint32_t *word)
{
    /* The caller's flag or owner store comes before the bump; pairs with the fence in ep_wait_until(). */
    ep_fence_seq_cst();
    atomic_fetch_add(word, 2u);
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* The periodic check of a wait, once *next_peer is due: refresh our heartbeat and look at the other end
 * (a syscall or two, so once per EP_PEER_CHECK_NS, not once per spin turn). 0 or -errno. */
static int peer_check_due(struct ep_waiter *wt, int64_t now, int64_t *next_peer)
{
    ep_store_relaxed(&wt->self->beat_ns, ep_clock_now_ns());
    int rc = ep_peer_check(wt->peer, wt->other);
    wt->peer->wait_check_ns = now;
    *next_peer = now + EP_PEER_CHECK_NS;
    return rc;
}

/* The wait ends on a peer or segment failure: data already there still goes first. */
static int failed(struct ep_waiter *wt, int rc)
{
    if (rc == -EPIPE && wt->ready(wt->ctx))
        return 0;
    return rc;
}

int ep_wait_until(struct ep_waiter *wt)
{
    if (wt->ready(wt->ctx))
        return 0;
    int64_t now = ep_clock_mono_ns();
    /* A deadline already past (a zero timeout: "is it there?") is answered now. The spin below reads the
     * clock only every 64 turns, so it would first burn 64 turns (~2 us) before noticing. */
    if (now >= wt->deadline_mono)
        return wt->ready(wt->ctx) ? 0 : -ETIMEDOUT;
    int64_t spin_end = wt->mode == EP_WAIT_PARK ? now
                     : wt->mode == EP_WAIT_SPIN ? INT64_MAX
                     : (wt->spin_ns > INT64_MAX - now ? INT64_MAX : now + wt->spin_ns);
    /* The first check is due EP_PEER_CHECK_NS after the last one, even if that was in an earlier call. */
    int64_t next_peer = now + EP_PEER_CHECK_NS;
    if (wt->peer->wait_check_ns && wt->peer->wait_check_ns + EP_PEER_CHECK_NS < next_peer)
        next_peer = wt->peer->wait_check_ns + EP_PEER_CHECK_NS;
    unsigned it = 0;
    int rc;
    for (;;) {
        /* spin phase: poll the position, read the clock every 64 turns */
        while (now < spin_end) {
            ep_cpu_relax();
            if (wt->ready(wt->ctx))
                return 0;
            if ((++it & 63u) == 0) {
                now = ep_clock_mono_ns();
                if (now >= wt->deadline_mono)
                    return wt->ready(wt->ctx) ? 0 : -ETIMEDOUT;
                if (ep_load_relaxed(wt->cancel))
                    return -ECANCELED;
                if (ep_peer_closed(wt->other))
                    return failed(wt, -EPIPE);
                if (now >= next_peer && (rc = peer_check_due(wt, now, &next_peer)))
                    return failed(wt, rc);
            }
        }
        if (now >= wt->deadline_mono)
            return wt->ready(wt->ctx) ? 0 : -ETIMEDOUT;
        if (ep_load_relaxed(wt->cancel))
            return -ECANCELED;
        if (now >= next_peer && (rc = peer_check_due(wt, now, &next_peer)))
            return failed(wt, rc);

        /* park phase: announce, re-check, sleep until woken, the next peer check or the deadline */
        uint32_t v = atomic_fetch_or(wt->word, 1u) | 1u;
        /* Dekker step: the announcement is ordered before the re-check below. Pairs with the fence in
         * ep_wait_notify() (and in ep_wait_wake_all() for close and cancel). */
        ep_fence_seq_cst();
        int closed = ep_peer_closed(wt->other);
        if (wt->ready(wt->ctx) || closed || ep_load_relaxed(wt->cancel)) {
            /* Withdraw the announcement; if a notifier got there first the CAS fails, harmlessly. */
            atomic_compare_exchange_strong(wt->word, &v, v + 1u);
            if (wt->ready(wt->ctx))
                return 0;
            return closed ? -EPIPE : -ECANCELED;
        }
        int64_t until = next_peer < wt->deadline_mono ? next_peer : wt->deadline_mono;
        struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
        ep_count(&wt->self->parks, 1);
        long frc = syscall(SYS_futex, wt->word, FUTEX_WAIT_BITSET, v, &ts, NULL, FUTEX_BITSET_MATCH_ANY);
        int timed_out = frc < 0 && errno == ETIMEDOUT;
        int interrupted = frc < 0 && errno == EINTR;
        /* Acquire, before the withdrawal: pairs with the notifier's release of its notified word, which
         * it stores after its notify; see the file comment. */
        uint64_t n = ep_load_acquire(wt->notified);
        /* Withdraw the announcement whatever woke us, so no stale bit costs the other end a syscall.
         * The CAS fails only if the word changed since we announced (a wake, a close or a cancel). */
        uint32_t seen = v;
        int notified = !atomic_compare_exchange_strong(wt->word, &seen, v + 1u);
        if (timed_out && !notified && wt->ready_at(wt->ctx, n))
            ep_count(&wt->self->late_wakeups, 1);       /* slept past a fully notified publish */
        now = ep_clock_mono_ns();
        if (wt->ready(wt->ctx))
            return 0;
        if (interrupted)
            return -EINTR;
        spin_end = now;                 /* after a park, park again rather than spin */
    }
}
