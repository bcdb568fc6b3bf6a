/*
 * wait_deadline.c: a wait whose deadline has already passed (a zero timeout) answers at once, in every wait
 * mode, instead of spinning towards a deadline it is past. Run by tests/unit/test_wait_deadline.py.
 *
 * Calls the eventcount's ep_wait_until() directly with a ready() that counts its calls and never holds: an
 * expired deadline must return -ETIMEDOUT after at most two of them (the check on entry and the one at the
 * deadline). The spin loop polls ready() on every turn and the clock only every 64th, so a wait that spun
 * first made 66. A deadline in the future still spins: a ready() that holds on its 5th call ends the wait
 * with 0, in the spin modes without parking.
 *
 * usage: wait_deadline     exit 0 and "wait_deadline: OK" on success
 */
#define _GNU_SOURCE
#include "edgepipe.h"
#include "ep_wait.h"

#include <errno.h>
#include <stdio.h>

static int calls, ready_after;

static int ready(void *ctx)
{
    (void)ctx;
    return ++calls >= ready_after;
}

static int ready_at(void *ctx, uint64_t n)
{
    (void)ctx;
    (void)n;
    return 0;
}

static int wait_once(int mode, int64_t deadline, struct ep_end *self)
{
    static _Atomic uint32_t word;
    static _Atomic int cancel, bus_hit;
    static _Atomic uint64_t notified;
    static struct ep_end other;
    struct ep_peer peer = {.pidfd = -1, .segfd = -1, .bus_hit = &bus_hit};
    struct ep_waiter wt = {.word = &word, .self = self, .other = &other, .peer = &peer, .cancel = &cancel,
                           .mode = mode, .spin_ns = 1000000000, .deadline_mono = deadline, .ready = ready,
                           .ready_at = ready_at, .notified = &notified, .ctx = NULL};
    calls = 0;
    return ep_wait_until(&wt);
}

int main(void)
{
    static const struct { int mode; const char *name; } modes[] = {
        {EP_WAIT_SPIN, "spin"}, {EP_WAIT_PARK, "park"}, {EP_WAIT_HYBRID, "hybrid"}};
    int bad = 0;
    for (unsigned i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        struct ep_end self = {0};
        ready_after = 1 << 30;  /* never */
        int rc = wait_once(modes[i].mode, ep_wait_deadline(0), &self);
        printf("%-6s expired deadline: rc %d, ready() called %d times\n", modes[i].name, rc, calls);
        if (rc != -ETIMEDOUT || calls > 2)
            bad = 1;
        ready_after = 5;
        rc = wait_once(modes[i].mode, ep_wait_deadline(10 * 1000000000LL), &self);
        printf("%-6s ready on the 5th check: rc %d, ready() called %d times, parks %llu\n", modes[i].name, rc,
               calls, (unsigned long long)self.parks);
        if (rc != 0 || calls != 5 || (modes[i].mode != EP_WAIT_PARK && self.parks != 0))
            bad = 1;
    }
    puts(bad ? "wait_deadline: FAILED" : "wait_deadline: OK");
    return bad;
}
