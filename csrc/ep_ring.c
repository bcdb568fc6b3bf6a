/*
 * ep_ring.c: a single-producer/single-consumer byte ring over a mapped region.
 *
 * Region layout (offsets only, never pointers: each process maps the region at its own address):
 *   [0, EP_RING_DATA_OFF)            struct ep_ring_ctl, each hot word on its own 128-byte line pair
 *   [EP_RING_DATA_OFF, +capacity)    records
 *
 * Invariants:
 * - tail and head are free-running u64 byte positions; slot = pos & mask; used = tail - head <= capacity.
 * - Only the producer stores tail, only the consumer stores head. Each end caches the other's position
 *   and refreshes it with an acquire load only when the ring looks full (or empty).
 * - A record is an 8-byte header {u32 len; u32 type} plus the payload, padded to 8 bytes. A record never
 *   straddles the end of the data area: if it does not fit, the gap becomes an EP_REC_PAD record and the
 *   record starts at slot 0. The payload is at most capacity/2 - 8 bytes, so an empty ring always has room.
 * - The producer publishes tail (release) only after the whole record (and any padding before it) is
 *   written, so the consumer never sees half a record. The consumer publishes head (release) only after
 *   it is done reading the bytes it gives back.
 *
 * Waiting is an eventcount per direction (data_wait: the consumer waits for data; space_wait: the producer
 * waits for room). Bit 0 of the word means "a waiter is announced"; the notifier clears it by adding 1,
 * so the word's value changes with every wake and FUTEX_WAIT on a stale value returns at once.
 *   waiter:   v = fetch_or(word, 1) | 1; fence; re-check; FUTEX_WAIT(word, v, deadline)
 *   notifier: publish position; fence; if (word & 1) CAS(word, v, v + 1) and FUTEX_WAKE
 * The two fences make this Dekker's pattern: either the waiter sees the new position or the notifier
 * sees the announcement. The fast path (nobody announced) costs a fence and a load, never a syscall.
 *
 * A waiting end wakes at least every EP_PEER_CHECK_NS to check that its peer lives (pidfd, else kill 0),
 * so a dead peer becomes -EPIPE instead of a hang. Each end's owner is one 64-bit word (pid << 32 |
 * state), so taking over a dead end is a single CAS; the owner's start time (from /proc) tells a reused
 * pid apart from the process that opened the end.
 *
 * The reader trusts nothing in the data area: every header is loaded once, then checked against the
 * published tail and the capacity before any byte is copied, so a buggy or hostile producer can make
 * the reader report -EBADMSG but never read outside the mapping or loop forever.
 */
#define _GNU_SOURCE
#include "edgepipe.h"
#include "ep_atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { END_NONE = 0, END_OPENING = 1, END_OPEN = 2, END_CLOSED = 3 };

struct ep_ring_end {                   /* one end's presence: cold, written on open/close/waits */
    _Atomic uint64_t owner;             /* (pid << 32) | END_* state, changed only by CAS or by its owner */
    _Atomic uint64_t start_ticks;       /* the owner's start time, /proc/<pid>/stat field 22 (0: unknown) */
    _Atomic int64_t beat_ns;
    _Atomic uint64_t parks;
    _Atomic uint64_t wakes;             /* wakes this end issued to the other */
    _Atomic uint64_t late_wakeups;
    _Atomic uint64_t full_events;       /* producer only */
};

struct ep_ring_ctl {
    /* line pair 0: written once by ep_ring_init, magic last */
    _Atomic uint32_t magic;
    uint32_t version;
    uint64_t capacity;
    uint64_t region_size;
    int32_t creator_pid;
    /* line pair 1: the producer's hot words */
    _Alignas(EP_LINE_PAIR) _Atomic uint64_t tail;
    _Atomic uint64_t records_written;
    /* line pair 2: the consumer's hot words */
    _Alignas(EP_LINE_PAIR) _Atomic uint64_t head;
    _Atomic uint64_t records_read;
    /* line pairs 3 and 4: the eventcount words */
    _Alignas(EP_LINE_PAIR) _Atomic uint32_t data_wait;
    _Alignas(EP_LINE_PAIR) _Atomic uint32_t space_wait;
    /* line pairs 5 and 6: presence */
    _Alignas(EP_LINE_PAIR) struct ep_ring_end prod;
    _Alignas(EP_LINE_PAIR) struct ep_ring_end cons;
};
_Static_assert(sizeof(struct ep_ring_ctl) <= EP_RING_DATA_OFF, "control block must fit before the data");

struct ep_rec {
    uint32_t len;
    uint32_t type;
};

struct ep_peer {                        /* process-local: how this end watches the other */
    int32_t pid;                        /* the pid pidfd refers to, 0 if none */
    int pidfd;                          /* -1 if none or unsupported */
    int dead;                           /* sticky: that pid was found dead or reused */
    int64_t next_check_ns;              /* rate limit for checks made outside waits */
    int64_t wait_check_ns;              /* when a wait last checked (carried across calls, so waits
                                         * cut into slices still check every EP_PEER_CHECK_NS) */
};

static inline int32_t owner_pid(uint64_t o) { return (int32_t)(uint32_t)(o >> 32); }
static inline uint32_t owner_state(uint64_t o) { return (uint32_t)o; }
static inline uint64_t owner_make(int32_t pid, uint32_t st) { return ((uint64_t)(uint32_t)pid << 32) | st; }

struct ep_ring_writer {
    struct ep_ring_ctl *ctl;
    uint8_t *data;
    uint64_t mask, cap, max_payload;
    uint64_t tail;                      /* our own position; ctl->tail lags it until we publish */
    uint64_t head_cache;                /* last head we loaded (acquire) */
    uint64_t claim_rec;                 /* header position of the claimed record, UINT64_MAX if none */
    uint32_t claim_len;
    int wait_mode;
    int64_t spin_ns;
    int32_t pid;                        /* the process that opened this end */
    _Atomic int cancel;                 /* set by ep_ring_writer_cancel(): blocked calls return -ECANCELED */
    struct ep_peer peer;
};

struct ep_ring_reader {
    struct ep_ring_io io;               /* first, so Python can read it through ep_ring_reader_io() */
    struct ep_ring_ctl *ctl;
    uint8_t *data;
    uint64_t mask, cap, max_payload;
    uint64_t head;                      /* our own position; ctl->head lags it until we release */
    uint64_t tail_cache;                /* last tail we loaded (acquire) */
    uint64_t peek_next;                 /* head after the peeked record, 0 if none peeked */
    int peeked;
    int wait_mode;
    int64_t spin_ns;
    int32_t pid;                        /* the process that opened this end */
    _Atomic int cancel;                 /* set by ep_ring_reader_cancel(): blocked calls return -ECANCELED */
    unsigned empty_polls;               /* rate limit for the producer-death check in try_read */
    struct ep_peer peer;
    uint8_t *scratch;                   /* max_payload bytes for try_read/read */
};

static inline uint64_t rec_size(uint32_t len)
{
    return EP_REC_HDR + (((uint64_t)len + 7u) & ~(uint64_t)7u);
}


/* ------------------------------------------------------------------------------------------------ */
/* region */

uint64_t ep_ring_region_size(uint64_t capacity)
{
    return EP_RING_DATA_OFF + capacity;
}

static int capacity_ok(uint64_t cap)
{
    return cap >= EP_RING_MIN_CAPACITY && cap <= EP_RING_MAX_CAPACITY && (cap & (cap - 1)) == 0;
}

int ep_ring_init(void *base, uint64_t region_size, uint64_t capacity)
{
    if (!base || !capacity_ok(capacity) || region_size < ep_ring_region_size(capacity))
        return -EINVAL;
    struct ep_ring_ctl *c = base;
    memset(c, 0, sizeof(*c));
    c->version = EP_RING_VERSION;
    c->capacity = capacity;
    c->region_size = region_size;
    c->creator_pid = (int32_t)getpid();
    /* Release: every field above is visible before the magic that says "initialised".
     * Pairs with the acquire of magic in ep_ring_check(). */
    ep_store_release(&c->magic, EP_RING_MAGIC);
    return 0;
}

/* Validate the control block and return its capacity through *cap, read exactly once (the other
 * process could change it between a check and a use). */
static int layout(const void *base, uint64_t region_size, uint64_t *cap)
{
    if (!base || region_size < EP_RING_DATA_OFF)
        return -EBADMSG;
    struct ep_ring_ctl *c = (struct ep_ring_ctl *)base;
    /* Acquire: pairs with the release of magic in ep_ring_init(). */
    if (ep_load_acquire(&c->magic) != EP_RING_MAGIC)
        return -EBADMSG;
    if (*(volatile uint32_t *)&c->version != EP_RING_VERSION)
        return -EPROTO;
    uint64_t capacity = *(volatile uint64_t *)&c->capacity;
    if (!capacity_ok(capacity) || ep_ring_region_size(capacity) > region_size)
        return -EBADMSG;
    *cap = capacity;
    return 0;
}

int ep_ring_check(const void *base, uint64_t region_size)
{
    uint64_t cap;
    return layout(base, region_size, &cap);
}

static void end_status(const struct ep_ring_end *e, int32_t *pid, uint32_t *closed, int64_t *beat)
{
    uint64_t o = ep_load_relaxed(&e->owner);
    *pid = owner_pid(o);
    *closed = owner_state(o) == END_CLOSED;
    *beat = ep_load_relaxed(&e->beat_ns);
}

int ep_ring_status(const void *base, struct ep_ring_status *out)
{
    struct ep_ring_ctl *c = (struct ep_ring_ctl *)base;
    memset(out, 0, sizeof(*out));
    out->magic = ep_load_acquire(&c->magic);
    out->version = c->version;
    if (out->magic != EP_RING_MAGIC)
        return -EBADMSG;
    out->capacity = c->capacity;
    out->max_payload = c->capacity / 2 - EP_REC_HDR;
    out->region_size = c->region_size;
    /* Read head before tail so used never underflows: tail only grows past any head we saw. */
    out->head = ep_load_acquire(&c->head);
    out->tail = ep_load_acquire(&c->tail);
    out->used = out->tail - out->head;
    out->records_written = ep_load_relaxed(&c->records_written);
    out->records_read = ep_load_relaxed(&c->records_read);
    out->full_events = ep_load_relaxed(&c->prod.full_events);
    out->producer_parks = ep_load_relaxed(&c->prod.parks);
    out->consumer_parks = ep_load_relaxed(&c->cons.parks);
    out->producer_wakes = ep_load_relaxed(&c->prod.wakes);
    out->consumer_wakes = ep_load_relaxed(&c->cons.wakes);
    out->late_wakeups = ep_load_relaxed(&c->prod.late_wakeups) + ep_load_relaxed(&c->cons.late_wakeups);
    out->creator_pid = c->creator_pid;
    end_status(&c->prod, &out->producer_pid, &out->producer_closed, &out->producer_beat_ns);
    end_status(&c->cons, &out->consumer_pid, &out->consumer_closed, &out->consumer_beat_ns);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* peers: is the other end still there? */

static void peer_init(struct ep_peer *p)
{
    p->pid = 0;
    p->pidfd = -1;
    p->dead = 0;
    p->next_check_ns = 0;
    p->wait_check_ns = 0;
}

static void peer_drop(struct ep_peer *p)
{
    if (p->pidfd >= 0)
        close(p->pidfd);
    peer_init(p);
}

/* Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat) and its state
 * letter; 0 if it cannot be read. The comm field may hold spaces and parentheses: parse after the
 * last ')'. */
static uint64_t proc_start_ticks(int32_t pid, char *state)
{
    char path[48], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ' || !p[2])
        return 0;
    p += 2;                             /* field 3, the state */
    if (state)
        *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

/* Is process `pid`, which started at `start` ticks (0: unknown), gone? */
static int pid_dead(struct ep_peer *p, int32_t pid, uint64_t start)
{
    if (pid <= 0)
        return 0;                       /* not attached yet: nobody to mourn */
    if (pid != p->pid) {
        peer_drop(p);
        p->pid = pid;
#ifdef SYS_pidfd_open
        p->pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
        if (p->pidfd < 0 && errno == ESRCH)
            p->dead = 1;
#endif
        /* The pidfd pins whatever process has this pid now. If that one started at another time
         * than the owner recorded, the owner died and its pid was reused. */
        if (!p->dead && start) {
            uint64_t now = proc_start_ticks(pid, NULL);
            if (now && now != start)
                p->dead = 1;
        }
    }
    if (p->dead)
        return 1;
    if (p->pidfd >= 0) {
        struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
        p->dead = poll(&pfd, 1, 0) > 0; /* a pidfd turns readable when its process exits */
        return p->dead;
    }
    char st = 0;
    if ((kill((pid_t)pid, 0) < 0 && errno == ESRCH) ||
        (proc_start_ticks(pid, &st) && (st == 'Z' || st == 'X')))
        p->dead = 1;                    /* no pidfd: a zombie counts as dead too */
    return p->dead;
}

/* The other end closed, or its process is gone. */
static int peer_gone(struct ep_peer *p, struct ep_ring_end *e)
{
    /* Acquire: pairs with the release of owner in end_close() (all it published comes before) and in
     * end_open() (its start_ticks comes before). */
    uint64_t o = ep_load_acquire(&e->owner);
    if (owner_state(o) == END_CLOSED)
        return 1;
    if (owner_state(o) != END_OPEN)
        return 0;                       /* never opened, or being opened right now */
    return pid_dead(p, owner_pid(o), ep_load_relaxed(&e->start_ticks));
}

static inline int peer_closed(struct ep_ring_end *e)
{
    /* Acquire: pairs with the release of owner in end_close(). */
    return owner_state(ep_load_acquire(&e->owner)) == END_CLOSED;
}

static int end_open(struct ep_ring_end *e, struct ep_peer *p, int32_t *pid_out)
{
    int32_t me = (int32_t)getpid();
    uint64_t cur = ep_load_acquire(&e->owner);
    for (;;) {
        /* Busy while any live process holds the end, this one included (two handles in one process
         * would be two producers racing on tail). A closed or dead holder may be replaced. Owner and
         * state are one word, so two processes replacing the same dead holder cannot both win. */
        uint32_t st = owner_state(cur);
        if (st == END_OPEN || st == END_OPENING) {
            struct ep_peer probe;
            peer_init(&probe);
            int dead = pid_dead(&probe, owner_pid(cur),
                                st == END_OPEN ? ep_load_relaxed(&e->start_ticks) : 0);
            peer_drop(&probe);
            if (!dead)
                return -EBUSY;
        }
        if (atomic_compare_exchange_strong(&e->owner, &cur, owner_make(me, END_OPENING)))
            break;
    }
    ep_store_relaxed(&e->start_ticks, proc_start_ticks(me, NULL));
    ep_store_relaxed(&e->beat_ns, ep_clock_now_ns());
    /* Release: start_ticks is in place before the end reads as open. Pairs with peer_gone(). */
    ep_store_release(&e->owner, owner_make(me, END_OPEN));
    peer_init(p);
    *pid_out = me;
    return 0;
}

static void end_close(struct ep_ring_end *e, int32_t me, _Atomic uint32_t *peer_word)
{
    ep_store_relaxed(&e->beat_ns, ep_clock_now_ns());
    /* Release (the CAS): everything this end published happens before "closed". Pairs with the
     * acquire of owner in peer_gone() / peer_closed(). Only the owner closes: if the end was taken
     * over (we were presumed dead), the new owner's state is left alone. */
    uint64_t open = owner_make(me, END_OPEN);
    atomic_compare_exchange_strong(&e->owner, &open, owner_make(me, END_CLOSED));
    /* Wake the other end even if it did not announce: it re-checks and sees "closed". The fence
     * orders the owner store before the bump; pairs with the fence in wait_until(). */
    ep_fence_seq_cst();
    atomic_fetch_add(peer_word, 2u);
    syscall(SYS_futex, peer_word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ------------------------------------------------------------------------------------------------ */
/* waiting */

static inline void notify(_Atomic uint32_t *word, _Atomic uint64_t *wakes)
{
    /* Dekker step: our position store (just released) is ordered before this load of the waiter bit.
     * Pairs with the fence in park(). */
    ep_fence_seq_cst();
    uint32_t v = ep_load_relaxed(word);
    if (__builtin_expect(v & 1u, 0)) {
        if (atomic_compare_exchange_strong(word, &v, v + 1u)) {
            syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
            ep_count(wakes, 1);
        }
    }
}

struct waiter {
    _Atomic uint32_t *word;
    struct ep_ring_end *self, *other;
    struct ep_peer *peer;
    _Atomic int *cancel;
    int mode;
    int64_t spin_ns;
    int64_t deadline_mono;              /* INT64_MAX for no deadline */
};

typedef int (*ready_fn)(void *end, uint64_t arg);

/* The periodic liveness check of a wait, once *next_peer is due: refresh our heartbeat and ask whether
 * the peer is gone (a syscall, so once per EP_PEER_CHECK_NS, not once per spin turn or park). */
static int peer_check_due(struct waiter *wt, int64_t now, int64_t *next_peer)
{
    ep_store_relaxed(&wt->self->beat_ns, ep_clock_now_ns());
    if (peer_gone(wt->peer, wt->other))
        return 1;
    wt->peer->wait_check_ns = now;
    *next_peer = now + EP_PEER_CHECK_NS;
    return 0;
}

/* Wait until ready(end, arg) holds (returns 0), the deadline passes (-ETIMEDOUT), the peer is gone
 * (-EPIPE, only once ready() is still false, so nothing already queued is lost), a signal arrives
 * (-EINTR: the caller runs its handlers and calls again) or the handle is cancelled (-ECANCELED). */
static int wait_until(struct waiter *wt, ready_fn ready, void *end, uint64_t arg)
{
    if (ready(end, arg))
        return 0;
    int64_t now = ep_clock_mono_ns();
    int64_t spin_end = wt->mode == EP_WAIT_PARK ? now
                     : wt->mode == EP_WAIT_SPIN ? INT64_MAX
                     : now + wt->spin_ns;
    /* The first check is due EP_PEER_CHECK_NS after the last one, even if that was in an earlier call. */
    int64_t next_peer = now + EP_PEER_CHECK_NS;
    if (wt->peer->wait_check_ns && wt->peer->wait_check_ns + EP_PEER_CHECK_NS < next_peer)
        next_peer = wt->peer->wait_check_ns + EP_PEER_CHECK_NS;
    unsigned it = 0;
    for (;;) {
        /* spin phase: poll the position, read the clock every 64 turns */
        while (now < spin_end) {
            ep_cpu_relax();
            if (ready(end, arg))
                return 0;
            if ((++it & 63u) == 0) {
                now = ep_clock_mono_ns();
                if (now >= wt->deadline_mono)
                    return ready(end, arg) ? 0 : -ETIMEDOUT;
                if (ep_load_relaxed(wt->cancel))
                    return -ECANCELED;
                if (peer_closed(wt->other))
                    return ready(end, arg) ? 0 : -EPIPE;
                if (now >= next_peer && peer_check_due(wt, now, &next_peer))
                    return ready(end, arg) ? 0 : -EPIPE;
            }
        }
        if (now >= wt->deadline_mono)
            return ready(end, arg) ? 0 : -ETIMEDOUT;
        if (ep_load_relaxed(wt->cancel))
            return -ECANCELED;
        if (now >= next_peer && peer_check_due(wt, now, &next_peer))
            return ready(end, arg) ? 0 : -EPIPE;

        /* park phase: announce, re-check, sleep until woken or the next peer check */
        uint32_t v = atomic_fetch_or(wt->word, 1u) | 1u;
        /* Dekker step: the announcement is ordered before the re-check below. Pairs with notify(). */
        ep_fence_seq_cst();
        int closed = peer_closed(wt->other);
        if (ready(end, arg) || closed || ep_load_relaxed(wt->cancel)) {
            /* Withdraw the announcement; if a notifier got there first the CAS fails, harmlessly. */
            atomic_compare_exchange_strong(wt->word, &v, v + 1u);
            if (ready(end, arg))
                return 0;
            return closed ? -EPIPE : -ECANCELED;
        }
        int64_t until = next_peer;     /* wake for the next peer check at the latest */
        if (until > wt->deadline_mono)
            until = wt->deadline_mono;
        struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
        ep_count(&wt->self->parks, 1);
        long rc = syscall(SYS_futex, wt->word, FUTEX_WAIT_BITSET, v, &ts, NULL, FUTEX_BITSET_MATCH_ANY);
        int timed_out = rc < 0 && errno == ETIMEDOUT;
        int interrupted = rc < 0 && errno == EINTR;
        /* Withdraw the announcement whatever woke us, so no stale bit costs the other end a syscall.
         * The CAS fails only if the other end already bumped the word (a wake, or its close). */
        uint32_t seen = v;
        int notified = !atomic_compare_exchange_strong(wt->word, &seen, v + 1u);
        now = ep_clock_mono_ns();
        if (ready(end, arg)) {
            if (timed_out && !notified)
                ep_count(&wt->self->late_wakeups, 1);   /* data came and nobody woke us */
            return 0;
        }
        if (interrupted)
            return -EINTR;
        spin_end = now;                 /* after a park, park again rather than spin */
    }
}

static int64_t deadline_from(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return INT64_MAX;
    int64_t now = ep_clock_mono_ns();
    return timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
}

static int set_wait(int *mode_out, int64_t *spin_out, int mode, int64_t spin_ns)
{
    if (mode != EP_WAIT_SPIN && mode != EP_WAIT_PARK && mode != EP_WAIT_HYBRID)
        return -EINVAL;
    if (spin_ns < 0)
        return -EINVAL;
    *mode_out = mode;
    *spin_out = spin_ns;
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* producer */

/* Positions a new end may start from: both 8-byte aligned and no more than a ring apart. */
static int positions_ok(uint64_t head, uint64_t tail, uint64_t cap)
{
    return ((head | tail) & 7u) == 0 && tail - head <= cap;
}

int ep_ring_writer_open(void *base, uint64_t region_size, struct ep_ring_writer **out)
{
    uint64_t cap;
    int rc = layout(base, region_size, &cap);
    if (rc)
        return rc;
    struct ep_ring_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->ctl = base;
    w->data = (uint8_t *)base + EP_RING_DATA_OFF;
    w->cap = cap;
    w->mask = w->cap - 1;
    w->max_payload = w->cap / 2 - EP_REC_HDR;
    /* Acquire: a previous producer's records are complete before we continue after them. */
    w->tail = ep_load_acquire(&w->ctl->tail);
    w->head_cache = ep_load_acquire(&w->ctl->head);
    if (!positions_ok(w->head_cache, w->tail, cap)) {
        free(w);
        return -EBADMSG;
    }
    rc = end_open(&w->ctl->prod, &w->peer, &w->pid);
    if (rc) {
        free(w);
        return rc;
    }
    /* Re-read after taking the end: a producer we replaced may have published up to its death. */
    w->tail = ep_load_acquire(&w->ctl->tail);
    w->claim_rec = UINT64_MAX;
    w->wait_mode = EP_WAIT_HYBRID;
    w->spin_ns = EP_DEFAULT_SPIN_NS;
    *out = w;
    return 0;
}

int ep_ring_writer_close(struct ep_ring_writer *w)
{
    if (!w)
        return 0;
    end_close(&w->ctl->prod, w->pid, &w->ctl->data_wait);
    peer_drop(&w->peer);
    free(w);
    return 0;
}

/* Make a blocked (or the next) wait of this writer return -ECANCELED; safe from another thread while
 * the writer is inside a call, as long as the writer is not freed before that call returns. */
int ep_ring_writer_cancel(struct ep_ring_writer *w)
{
    ep_store_relaxed(&w->cancel, 1);
    ep_fence_seq_cst();             /* the flag before the bump; pairs with the fence in wait_until() */
    atomic_fetch_add(&w->ctl->space_wait, 2u);
    syscall(SYS_futex, &w->ctl->space_wait, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    return 0;
}

int ep_ring_writer_set_wait(struct ep_ring_writer *w, int mode, int64_t spin_ns)
{
    return set_wait(&w->wait_mode, &w->spin_ns, mode, spin_ns);
}

/* Is the consumer gone? The closed flag every time (a relaxed load of a cold, shared line); the pid
 * only when the ring is full, and at most once a millisecond, because that costs a syscall. */
static int consumer_gone(struct ep_ring_writer *w, int full)
{
    uint64_t o = ep_load_relaxed(&w->ctl->cons.owner);
    if (__builtin_expect(owner_state(o) == END_CLOSED, 0))
        return 1;
    if (!full || owner_state(o) != END_OPEN)
        return 0;
    if (w->peer.dead && w->peer.pid == owner_pid(o))
        return 1;                       /* already found dead: no need to wait for the rate limit */
    int64_t now = ep_clock_mono_ns();
    if (now < w->peer.next_check_ns)
        return 0;
    w->peer.next_check_ns = now + 1000000;
    return pid_dead(&w->peer, owner_pid(o), ep_load_relaxed(&w->ctl->cons.start_ticks));
}

/* Find room for a record of `len` payload bytes at w->tail. Writes the padding record if the record
 * must wrap. Returns the header position, or -EAGAIN if the ring is full. Publishes nothing. */
static inline int64_t reserve(struct ep_ring_writer *w, uint32_t len)
{
    uint64_t need = rec_size(len);
    uint64_t off = w->tail & w->mask;
    uint64_t to_end = w->cap - off;
    uint64_t pad = need <= to_end ? 0 : to_end;
    if (w->tail + pad + need - w->head_cache > w->cap) {
        /* Acquire: the consumer is done with the bytes before head. Pairs with the release of head
         * in ep_ring_release() / consume(). */
        w->head_cache = ep_load_acquire(&w->ctl->head);
        if (w->tail + pad + need - w->head_cache > w->cap)
            return -EAGAIN;
    }
    if (pad) {
        struct ep_rec *p = (struct ep_rec *)(w->data + off);
        p->len = (uint32_t)(pad - EP_REC_HDR);
        p->type = EP_REC_PAD;
    }
    return (int64_t)(w->tail + pad);
}

static inline void put(struct ep_ring_writer *w, uint64_t rec, const void *buf, uint32_t len,
                       uint32_t type)
{
    struct ep_rec *h = (struct ep_rec *)(w->data + (rec & w->mask));
    h->len = len;
    h->type = type;
    memcpy(h + 1, buf, len);
    w->tail = rec + rec_size(len);
}

static inline void publish(struct ep_ring_writer *w, uint64_t nrec)
{
    /* Release: headers, payloads and padding become visible before the new tail.
     * Pairs with the acquire of tail in peek_at() (reader side). */
    ep_store_release(&w->ctl->tail, w->tail);
    /* Counted after the tail, so a producer killed in between under-counts, never over-counts. */
    ep_store_relaxed(&w->ctl->records_written, ep_load_relaxed(&w->ctl->records_written) + nrec);
    notify(&w->ctl->data_wait, &w->ctl->prod.wakes);
}

int ep_ring_try_write(struct ep_ring_writer *w, const void *buf, uint32_t len, uint32_t type)
{
    if (__builtin_expect(!w, 0))
        return -EBADF;          /* a closed handle */
    if (__builtin_expect(len > w->max_payload, 0))
        return -EMSGSIZE;
    if (__builtin_expect(type == EP_REC_PAD || w->claim_rec != UINT64_MAX, 0))
        return -EINVAL;
    if (consumer_gone(w, 0))
        return -EPIPE;
    int64_t rec = reserve(w, len);
    if (__builtin_expect(rec < 0, 0)) {
        ep_count(&w->ctl->prod.full_events, 1);
        return consumer_gone(w, 1) ? -EPIPE : -EAGAIN;
    }
    put(w, (uint64_t)rec, buf, len, type);
    publish(w, 1);
    return (int)len;
}

static int has_room(void *end, uint64_t need)
{
    struct ep_ring_writer *w = end;
    /* Worst case a record of `need` bytes also pads to the end of the data area. */
    uint64_t to_end = w->cap - (w->tail & w->mask);
    uint64_t total = need <= to_end ? need : to_end + need;
    /* Acquire: pairs with the release of head by the consumer. */
    w->head_cache = ep_load_acquire(&w->ctl->head);
    return w->tail + total - w->head_cache <= w->cap;
}

static int wait_room(struct ep_ring_writer *w, uint32_t len, int64_t deadline)
{
    struct waiter wt = {.word = &w->ctl->space_wait, .self = &w->ctl->prod, .other = &w->ctl->cons,
                        .peer = &w->peer, .cancel = &w->cancel, .mode = w->wait_mode,
                        .spin_ns = w->spin_ns, .deadline_mono = deadline};
    if (peer_closed(&w->ctl->cons))
        return -EPIPE;                  /* room or not, nobody will read what we write */
    return wait_until(&wt, has_room, w, rec_size(len));
}

int ep_ring_writer_wait(struct ep_ring_writer *w, uint32_t len, int64_t timeout_ns)
{
    if (len > w->max_payload)
        return -EMSGSIZE;
    return wait_room(w, len, deadline_from(timeout_ns));
}

int ep_ring_write(struct ep_ring_writer *w, const void *buf, uint32_t len, uint32_t type,
                  int64_t timeout_ns)
{
    int rc = ep_ring_try_write(w, buf, len, type);
    if (rc != -EAGAIN)
        return rc;
    int64_t deadline = deadline_from(timeout_ns);
    for (;;) {
        rc = wait_room(w, len, deadline);
        if (rc)
            return rc;
        rc = ep_ring_try_write(w, buf, len, type);
        if (rc != -EAGAIN)
            return rc;
    }
}

int64_t ep_ring_claim(struct ep_ring_writer *w, uint32_t len)
{
    if (len > w->max_payload)
        return -EMSGSIZE;
    if (w->claim_rec != UINT64_MAX)
        return -EINVAL;                 /* one claim at a time */
    if (consumer_gone(w, 0))
        return -EPIPE;
    int64_t rec = reserve(w, len);
    if (rec < 0) {
        ep_count(&w->ctl->prod.full_events, 1);
        return consumer_gone(w, 1) ? -EPIPE : -EAGAIN;
    }
    w->claim_rec = (uint64_t)rec;
    w->claim_len = len;
    return (int64_t)(((uint64_t)rec & w->mask) + EP_REC_HDR);
}

int ep_ring_commit(struct ep_ring_writer *w, uint32_t len, uint32_t type)
{
    if (w->claim_rec == UINT64_MAX)
        return -EINVAL;
    if (len > w->claim_len || type == EP_REC_PAD)
        return -EINVAL;                 /* a commit may shrink the record, never grow it */
    struct ep_rec *h = (struct ep_rec *)(w->data + (w->claim_rec & w->mask));
    h->len = len;
    h->type = type;
    w->tail = w->claim_rec + rec_size(len);
    w->claim_rec = UINT64_MAX;
    publish(w, 1);
    return (int)len;
}

int ep_ring_abort(struct ep_ring_writer *w)
{
    if (w->claim_rec == UINT64_MAX)
        return -EINVAL;
    /* Nothing was published: the tail never moved, so the claimed bytes (and any padding written
     * for them) are simply overwritten by the next record. */
    w->claim_rec = UINT64_MAX;
    return 0;
}

int ep_ring_try_write_batch(struct ep_ring_writer *w, const void *buf, const uint32_t *lens,
                            uint32_t n, uint32_t type)
{
    if (type == EP_REC_PAD || w->claim_rec != UINT64_MAX)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (lens[i] > w->max_payload)
            return -EMSGSIZE;           /* refuse the whole batch before writing any of it */
    if (consumer_gone(w, 0))
        return -EPIPE;
    const uint8_t *p = buf;
    uint32_t i = 0;
    for (; i < n; i++) {
        int64_t rec = reserve(w, lens[i]);
        if (rec < 0)
            break;
        put(w, (uint64_t)rec, p, lens[i], type);
        p += lens[i];
    }
    if (i == 0) {
        ep_count(&w->ctl->prod.full_events, 1);
        return n == 0 ? 0 : consumer_gone(w, 1) ? -EPIPE : -EAGAIN;
    }
    publish(w, i);
    return (int)i;
}

int ep_ring_try_write_fixed(struct ep_ring_writer *w, const void *buf, uint32_t size, uint32_t n,
                            uint32_t type)
{
    if (size > w->max_payload)
        return -EMSGSIZE;
    if (type == EP_REC_PAD || w->claim_rec != UINT64_MAX)
        return -EINVAL;
    if (consumer_gone(w, 0))
        return -EPIPE;
    const uint8_t *p = buf;
    uint32_t i = 0;
    for (; i < n; i++, p += size) {
        int64_t rec = reserve(w, size);
        if (rec < 0)
            break;
        put(w, (uint64_t)rec, p, size, type);
    }
    if (i == 0) {
        ep_count(&w->ctl->prod.full_events, 1);
        return n == 0 ? 0 : consumer_gone(w, 1) ? -EPIPE : -EAGAIN;
    }
    publish(w, i);
    return (int)i;
}

/* ------------------------------------------------------------------------------------------------ */
/* consumer */

int ep_ring_reader_open(void *base, uint64_t region_size, struct ep_ring_reader **out)
{
    uint64_t cap;
    int rc = layout(base, region_size, &cap);
    if (rc)
        return rc;
    struct ep_ring_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->ctl = base;
    r->data = (uint8_t *)base + EP_RING_DATA_OFF;
    r->cap = cap;
    r->mask = r->cap - 1;
    r->max_payload = r->cap / 2 - EP_REC_HDR;
    r->scratch = malloc(r->max_payload ? r->max_payload : 1);
    if (!r->scratch) {
        free(r);
        return -ENOMEM;
    }
    rc = end_open(&r->ctl->cons, &r->peer, &r->pid);
    if (rc) {
        free(r->scratch);
        free(r);
        return rc;
    }
    r->head = ep_load_relaxed(&r->ctl->head);   /* only consumers ever store head */
    /* Acquire: pairs with the release of tail in publish(). */
    r->tail_cache = ep_load_acquire(&r->ctl->tail);
    if (!positions_ok(r->head, r->tail_cache, cap)) {
        end_close(&r->ctl->cons, r->pid, &r->ctl->space_wait);
        free(r->scratch);
        free(r);
        return -EBADMSG;
    }
    r->wait_mode = EP_WAIT_HYBRID;
    r->spin_ns = EP_DEFAULT_SPIN_NS;
    *out = r;
    return 0;
}

int ep_ring_reader_close(struct ep_ring_reader *r)
{
    if (!r)
        return 0;
    end_close(&r->ctl->cons, r->pid, &r->ctl->space_wait);
    peer_drop(&r->peer);
    free(r->scratch);
    free(r);
    return 0;
}

/* See ep_ring_writer_cancel(). */
int ep_ring_reader_cancel(struct ep_ring_reader *r)
{
    ep_store_relaxed(&r->cancel, 1);
    ep_fence_seq_cst();             /* the flag before the bump; pairs with the fence in wait_until() */
    atomic_fetch_add(&r->ctl->data_wait, 2u);
    syscall(SYS_futex, &r->ctl->data_wait, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    return 0;
}

int ep_ring_reader_set_wait(struct ep_ring_reader *r, int mode, int64_t spin_ns)
{
    return set_wait(&r->wait_mode, &r->spin_ns, mode, spin_ns);
}

struct ep_ring_io *ep_ring_reader_io(struct ep_ring_reader *r)
{
    return &r->io;
}

void *ep_ring_reader_scratch(struct ep_ring_reader *r)
{
    return r->scratch;
}

/* Locate the record at r->head, skipping padding (which moves only the local head). Returns 1 and
 * the record in *rec (header loaded exactly once, then validated), 0 if the ring is empty, or
 * -EBADMSG if the published range or a header cannot be right. */
static inline int peek_at(struct ep_ring_reader *r, struct ep_rec *rec, uint64_t *payload_off)
{
    for (;;) {
        if (r->head == r->tail_cache) {
            /* Acquire: the record bytes are visible before we read them.
             * Pairs with the release of tail in publish(). */
            r->tail_cache = ep_load_acquire(&r->ctl->tail);
            if (r->head == r->tail_cache)
                return 0;
            if (__builtin_expect(r->tail_cache - r->head > r->cap || (r->tail_cache & 7u), 0))
                return -EBADMSG;        /* a tail behind us or more than a ring ahead */
        }
        uint64_t off = r->head & r->mask;
        /* One load of the header: the producer's process could rewrite it under us, so every check
         * and use below works on this copy. */
        struct ep_rec h = *(volatile struct ep_rec *)(r->data + off);
        uint64_t size = rec_size(h.len);
        if (__builtin_expect(h.type == EP_REC_PAD, 0)) {
            /* A pad fills exactly the gap to the end, is never at slot 0, and is shorter than the
             * largest record (it exists only because a record of at most cap/2 did not fit). */
            if (off == 0 || size != r->cap - off || size > r->cap / 2 ||
                size > r->tail_cache - r->head)
                return -EBADMSG;
            r->head += size;            /* published with the next release */
            continue;
        }
        if (__builtin_expect(h.len > r->max_payload || size > r->cap - off ||
                             size > r->tail_cache - r->head, 0))
            return -EBADMSG;
        *rec = h;
        *payload_off = off + EP_REC_HDR;
        return 1;
    }
}

static inline void consume(struct ep_ring_reader *r, uint64_t new_head, uint64_t nrec)
{
    r->head = new_head;
    ep_store_relaxed(&r->ctl->records_read, ep_load_relaxed(&r->ctl->records_read) + nrec);
    /* Release: our reads of the records are done before the producer may reuse their bytes.
     * Pairs with the acquire of head in reserve() / has_room(). */
    ep_store_release(&r->ctl->head, new_head);
    notify(&r->ctl->space_wait, &r->ctl->cons.wakes);
}

/* The ring looked empty. -EAGAIN normally; -EPIPE if the producer closed or died and nothing is
 * left; 1 if records turned up meanwhile. A dead (not closed) producer is noticed here too, checked
 * at most once per 256 empty polls and once a millisecond, so busy-polling try_read ends as well. */
static int empty_rc(struct ep_ring_reader *r)
{
    int gone = peer_closed(&r->ctl->prod);
    if (!gone && r->peer.dead && r->peer.pid == owner_pid(ep_load_relaxed(&r->ctl->prod.owner)))
        gone = 1;                       /* already found dead by a wait */
    if (!gone && (++r->empty_polls & 255u) == 0) {
        int64_t now = ep_clock_mono_ns();
        if (now >= r->peer.next_check_ns) {
            r->peer.next_check_ns = now + 1000000;
            gone = peer_gone(&r->peer, &r->ctl->prod);
        }
    }
    if (!gone)
        return -EAGAIN;
    /* Acquire: a producer that closed published everything before "closed" (release in end_close);
     * one that died published what it published. Re-check the tail after seeing it gone. */
    r->tail_cache = ep_load_acquire(&r->ctl->tail);
    return r->head == r->tail_cache ? -EPIPE : 1;
}

int ep_ring_peek(struct ep_ring_reader *r)
{
    if (r->peeked)
        return (int)r->io.len;          /* peeking twice yields the same record */
    struct ep_rec h = {0, 0};
    uint64_t off = 0;
    int rc = peek_at(r, &h, &off);
    if (rc == 0) {
        rc = empty_rc(r);
        if (rc == 1)
            rc = peek_at(r, &h, &off);  /* once more: the producer is gone, the tail is final */
        if (rc == 0)
            rc = -EPIPE;                /* only padding was left */
    }
    if (rc < 0)
        return rc;
    r->io.off = off;
    r->io.len = h.len;
    r->io.type = h.type;
    r->peeked = 1;
    r->peek_next = r->head + rec_size(h.len);
    return (int)h.len;
}

int ep_ring_release(struct ep_ring_reader *r)
{
    if (!r->peeked)
        return -EINVAL;
    r->peeked = 0;
    consume(r, r->peek_next, 1);
    return 0;
}

int ep_ring_try_read(struct ep_ring_reader *r)
{
    if (__builtin_expect(!r, 0))
        return -EBADF;                  /* a closed handle */
    int n = ep_ring_peek(r);
    if (n < 0)
        return n;
    memcpy(r->scratch, r->data + r->io.off, (size_t)n);
    r->peeked = 0;
    consume(r, r->peek_next, 1);
    return n;
}

static int has_data(void *end, uint64_t unused)
{
    (void)unused;
    struct ep_ring_reader *r = end;
    if (r->head != r->tail_cache)
        return 1;
    /* Acquire: pairs with the release of tail in publish(). */
    r->tail_cache = ep_load_acquire(&r->ctl->tail);
    return r->head != r->tail_cache;
}

static int wait_data(struct ep_ring_reader *r, int64_t deadline)
{
    struct waiter wt = {.word = &r->ctl->data_wait, .self = &r->ctl->cons, .other = &r->ctl->prod,
                        .peer = &r->peer, .cancel = &r->cancel, .mode = r->wait_mode,
                        .spin_ns = r->spin_ns, .deadline_mono = deadline};
    return wait_until(&wt, has_data, r, 0);
}

int ep_ring_reader_wait(struct ep_ring_reader *r, int64_t timeout_ns)
{
    return wait_data(r, deadline_from(timeout_ns));
}

int ep_ring_read(struct ep_ring_reader *r, int64_t timeout_ns)
{
    int rc = ep_ring_try_read(r);
    if (rc != -EAGAIN)
        return rc;
    int64_t deadline = deadline_from(timeout_ns);
    for (;;) {
        rc = wait_data(r, deadline);
        if (rc)
            return rc;
        rc = ep_ring_try_read(r);
        if (rc != -EAGAIN)
            return rc;
    }
}

int ep_ring_try_read_batch(struct ep_ring_reader *r, void *buf, uint64_t buf_size, uint32_t *lens,
                           uint32_t *types, uint32_t max_n)
{
    if (r->peeked)
        return -EINVAL;
    if (max_n == 0)
        return 0;
    uint8_t *p = buf;
    uint64_t room = buf_size;
    uint32_t i = 0;
    int retried = 0;
    while (i < max_n) {
        struct ep_rec h;
        uint64_t off;
        uint64_t before = r->head;
        int rc = peek_at(r, &h, &off);
        if (rc < 0) {
            r->head = before;           /* stay at the bad header; the records before it go out */
            if (i)
                break;
            return rc;
        }
        if (rc == 0) {
            if (i || retried)
                break;
            rc = empty_rc(r);           /* nothing yet: -EAGAIN, -EPIPE, or look once more */
            if (rc < 0)
                return rc;
            retried = 1;
            continue;
        }
        if (h.len > room) {
            r->head = before;           /* leave it (and any padding before it) for the next call */
            if (i == 0) {
                r->io.len = h.len;      /* tell the caller how big a buffer it needs */
                r->io.type = h.type;
                return -ENOBUFS;
            }
            break;
        }
        memcpy(p, r->data + off, h.len);
        p += h.len;
        room -= h.len;
        lens[i] = h.len;
        if (types)
            types[i] = h.type;
        r->io.len = h.len;              /* the last record handed out, as for try_read */
        r->io.type = h.type;
        r->head += rec_size(h.len);
        i++;
    }
    if (i == 0)
        return -EPIPE;                  /* the producer is gone and only padding was left */
    consume(r, r->head, i);
    return (int)i;
}
