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
 * so a dead peer becomes -EPIPE instead of a hang.
 */
#define _GNU_SOURCE
#include "edgepipe.h"
#include "ep_atomic.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct ep_ring_end {                   /* one end's presence: cold, written on open/close/waits */
    _Atomic int32_t pid;
    _Atomic uint32_t closed;
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
    int64_t next_check_ns;              /* rate limit for checks made outside waits */
};

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
    struct ep_peer peer;
    uint8_t *scratch;                   /* max_payload bytes for try_read/read */
};

static inline uint64_t rec_size(uint32_t len)
{
    return EP_REC_HDR + (((uint64_t)len + 7u) & ~(uint64_t)7u);
}

static inline int64_t ts_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
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

int ep_ring_check(const void *base, uint64_t region_size)
{
    if (!base || region_size < EP_RING_DATA_OFF)
        return -EBADMSG;
    struct ep_ring_ctl *c = (struct ep_ring_ctl *)base;
    /* Acquire: pairs with the release of magic in ep_ring_init(). */
    if (ep_load_acquire(&c->magic) != EP_RING_MAGIC)
        return -EBADMSG;
    if (c->version != EP_RING_VERSION)
        return -EPROTO;
    if (!capacity_ok(c->capacity) || ep_ring_region_size(c->capacity) > region_size)
        return -EBADMSG;
    return 0;
}

static void end_status(const struct ep_ring_end *e, int32_t *pid, uint32_t *closed, int64_t *beat)
{
    *pid = ep_load_relaxed(&e->pid);
    *closed = ep_load_relaxed(&e->closed);
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
    p->next_check_ns = 0;
}

static void peer_drop(struct ep_peer *p)
{
    if (p->pidfd >= 0)
        close(p->pidfd);
    peer_init(p);
}

static int pid_dead(struct ep_peer *p, int32_t pid)
{
    if (pid <= 0)
        return 0;                       /* not attached yet: nobody to mourn */
    if (pid != p->pid) {
        peer_drop(p);
        p->pid = pid;
#ifdef SYS_pidfd_open
        p->pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
        if (p->pidfd < 0 && errno == ESRCH)
            return 1;
#endif
    }
    if (p->pidfd >= 0) {
        struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
        return poll(&pfd, 1, 0) > 0;    /* a pidfd turns readable when its process exits */
    }
    return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

/* The other end closed, or its process is gone. */
static int peer_gone(struct ep_peer *p, struct ep_ring_end *e)
{
    if (ep_load_acquire(&e->closed))
        return 1;
    return pid_dead(p, ep_load_relaxed(&e->pid));
}

static int end_open(struct ep_ring_end *e, struct ep_peer *p)
{
    int32_t me = (int32_t)getpid();
    int32_t cur = ep_load_relaxed(&e->pid);
    for (;;) {
        /* Busy if any live process holds the end open, this one included (two handles in one
         * process would be two producers racing on tail). A closed or dead holder may be replaced. */
        if (cur != 0 && !ep_load_relaxed(&e->closed)) {
            struct ep_peer probe;
            peer_init(&probe);
            int dead = pid_dead(&probe, cur);
            peer_drop(&probe);
            if (!dead)
                return -EBUSY;          /* a live process already holds this end */
        }
        if (atomic_compare_exchange_strong(&e->pid, &cur, me))
            break;
    }
    ep_store_relaxed(&e->beat_ns, ep_clock_now_ns());
    /* Release: our pid is in place before we say we are open. Pairs with the acquire in peer_gone(). */
    ep_store_release(&e->closed, 0u);
    peer_init(p);
    return 0;
}

static void end_close(struct ep_ring_end *e, _Atomic uint32_t *peer_word)
{
    ep_store_relaxed(&e->beat_ns, ep_clock_now_ns());
    /* Release: everything this end published happens before "closed". Pairs with peer_gone(). */
    ep_store_release(&e->closed, 1u);
    /* Wake the other end even if it did not announce: it re-checks and sees "closed". */
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
    int mode;
    int64_t spin_ns;
    int64_t deadline_mono;              /* INT64_MAX for no deadline */
};

typedef int (*ready_fn)(void *end, uint64_t arg);

/* Wait until ready(end, arg) holds (returns 0), the deadline passes (-ETIMEDOUT) or the peer is gone
 * (-EPIPE, only once ready() is still false, so nothing already queued is lost). */
static int wait_until(struct waiter *wt, ready_fn ready, void *end, uint64_t arg)
{
    if (ready(end, arg))
        return 0;
    int64_t now = ep_clock_mono_ns();
    int64_t spin_end = wt->mode == EP_WAIT_PARK ? now
                     : wt->mode == EP_WAIT_SPIN ? INT64_MAX
                     : now + wt->spin_ns;
    int64_t next_peer = now + EP_PEER_CHECK_NS;
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
                    return -ETIMEDOUT;
                if (now >= next_peer) {
                    ep_store_relaxed(&wt->self->beat_ns, ep_clock_now_ns());
                    if (peer_gone(wt->peer, wt->other))
                        return ready(end, arg) ? 0 : -EPIPE;
                    next_peer = now + EP_PEER_CHECK_NS;
                }
            }
        }
        if (now >= wt->deadline_mono)
            return ready(end, arg) ? 0 : -ETIMEDOUT;
        if (peer_gone(wt->peer, wt->other))
            return ready(end, arg) ? 0 : -EPIPE;
        ep_store_relaxed(&wt->self->beat_ns, ep_clock_now_ns());

        /* park phase: announce, re-check, sleep until woken or the next peer check */
        uint32_t v = atomic_fetch_or(wt->word, 1u) | 1u;
        /* Dekker step: the announcement is ordered before the re-check below. Pairs with notify(). */
        ep_fence_seq_cst();
        if (ready(end, arg)) {
            /* Withdraw the announcement; if a notifier got there first the CAS fails, harmlessly. */
            atomic_compare_exchange_strong(wt->word, &v, v + 1u);
            return 0;
        }
        int64_t until = now + EP_PEER_CHECK_NS;
        if (until > wt->deadline_mono)
            until = wt->deadline_mono;
        struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
        ep_count(&wt->self->parks, 1);
        long rc = syscall(SYS_futex, wt->word, FUTEX_WAIT_BITSET, v, &ts, NULL, FUTEX_BITSET_MATCH_ANY);
        int timed_out = rc < 0 && errno == ETIMEDOUT;
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
        spin_end = now;                 /* after a park, park again rather than spin */
        next_peer = now + EP_PEER_CHECK_NS;
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

int ep_ring_writer_open(void *base, uint64_t region_size, struct ep_ring_writer **out)
{
    int rc = ep_ring_check(base, region_size);
    if (rc)
        return rc;
    struct ep_ring_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->ctl = base;
    w->data = (uint8_t *)base + EP_RING_DATA_OFF;
    w->cap = w->ctl->capacity;
    w->mask = w->cap - 1;
    w->max_payload = w->cap / 2 - EP_REC_HDR;
    rc = end_open(&w->ctl->prod, &w->peer);
    if (rc) {
        free(w);
        return rc;
    }
    /* Acquire: a previous producer's records are complete before we continue after them. */
    w->tail = ep_load_acquire(&w->ctl->tail);
    w->head_cache = ep_load_acquire(&w->ctl->head);
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
    end_close(&w->ctl->prod, &w->ctl->data_wait);
    peer_drop(&w->peer);
    free(w);
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
    if (__builtin_expect(ep_load_relaxed(&w->ctl->cons.closed) != 0, 0))
        return 1;
    if (!full)
        return 0;
    int64_t now = ep_clock_mono_ns();
    if (now < w->peer.next_check_ns)
        return 0;
    w->peer.next_check_ns = now + 1000000;
    return pid_dead(&w->peer, ep_load_relaxed(&w->ctl->cons.pid));
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
    ep_store_relaxed(&w->ctl->records_written, ep_load_relaxed(&w->ctl->records_written) + nrec);
    /* Release: headers, payloads and padding become visible before the new tail.
     * Pairs with the acquire of tail in peek_at() (reader side). */
    ep_store_release(&w->ctl->tail, w->tail);
    notify(&w->ctl->data_wait, &w->ctl->prod.wakes);
}

static inline int check_type(uint32_t type)
{
    return type == EP_REC_PAD ? -EINVAL : 0;
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

struct room_arg {
    struct ep_ring_writer *w;
    uint64_t need;
};

static int has_room(void *end, uint64_t need)
{
    struct ep_ring_writer *w = end;
    /* Worst case a record of `need` bytes also pads to the end of the data area. */
    uint64_t to_end = w->cap - (w->tail & w->mask);
    uint64_t total = need <= to_end ? need : to_end + need;
    /* Acquire: pairs with the release of head by the consumer. */
    w->head_cache = ep_load_acquire(&w->ctl->head);
    return w->tail + total - w->head_cache <= w->cap || ep_load_relaxed(&w->ctl->cons.closed);
}

static int wait_room(struct ep_ring_writer *w, uint32_t len, int64_t deadline)
{
    struct waiter wt = {.word = &w->ctl->space_wait, .self = &w->ctl->prod, .other = &w->ctl->cons,
                        .peer = &w->peer, .mode = w->wait_mode, .spin_ns = w->spin_ns,
                        .deadline_mono = deadline};
    int rc = wait_until(&wt, has_room, w, rec_size(len));
    if (rc == 0 && ep_load_relaxed(&w->ctl->cons.closed))
        return -EPIPE;
    return rc;
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
    int rc = ep_ring_check(base, region_size);
    if (rc)
        return rc;
    struct ep_ring_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->ctl = base;
    r->data = (uint8_t *)base + EP_RING_DATA_OFF;
    r->cap = r->ctl->capacity;
    r->mask = r->cap - 1;
    r->max_payload = r->cap / 2 - EP_REC_HDR;
    r->scratch = malloc(r->max_payload ? r->max_payload : 1);
    if (!r->scratch) {
        free(r);
        return -ENOMEM;
    }
    rc = end_open(&r->ctl->cons, &r->peer);
    if (rc) {
        free(r->scratch);
        free(r);
        return rc;
    }
    r->head = ep_load_relaxed(&r->ctl->head);   /* only consumers ever store head */
    r->tail_cache = r->head;
    r->wait_mode = EP_WAIT_HYBRID;
    r->spin_ns = EP_DEFAULT_SPIN_NS;
    *out = r;
    return 0;
}

int ep_ring_reader_close(struct ep_ring_reader *r)
{
    if (!r)
        return 0;
    end_close(&r->ctl->cons, &r->ctl->space_wait);
    peer_drop(&r->peer);
    free(r->scratch);
    free(r);
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

/* Locate the record at r->head (skipping padding). Returns the header, NULL if the ring is empty, or
 * sets *bad if the header cannot be right. Moves only the local head. */
static inline struct ep_rec *peek_at(struct ep_ring_reader *r, int *bad)
{
    for (;;) {
        if (r->head == r->tail_cache) {
            /* Acquire: the record bytes are visible before we read them.
             * Pairs with the release of tail in publish(). */
            r->tail_cache = ep_load_acquire(&r->ctl->tail);
            if (r->head == r->tail_cache)
                return NULL;
        }
        uint64_t off = r->head & r->mask;
        struct ep_rec *h = (struct ep_rec *)(r->data + off);
        uint64_t size = rec_size(h->len);
        if (__builtin_expect(h->type == EP_REC_PAD, 0)) {
            if (size != r->cap - off || r->head + size > r->tail_cache) {
                *bad = 1;
                return NULL;
            }
            r->head += size;            /* published with the next release */
            continue;
        }
        if (__builtin_expect(h->len > r->max_payload || off + size > r->cap ||
                             r->head + size > r->tail_cache, 0)) {
            *bad = 1;
            return NULL;
        }
        return h;
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

static inline int empty_rc(struct ep_ring_reader *r)
{
    /* Empty is -EAGAIN unless the producer has closed; a producer that closed published everything
     * before "closed" (release in end_close), so re-check the tail after seeing it. */
    if (__builtin_expect(ep_load_acquire(&r->ctl->prod.closed) != 0, 0)) {
        r->tail_cache = ep_load_acquire(&r->ctl->tail);
        return r->head == r->tail_cache ? -EPIPE : 1;
    }
    return -EAGAIN;
}

int ep_ring_peek(struct ep_ring_reader *r)
{
    if (r->peeked)
        return (int)r->io.len;          /* peeking twice yields the same record */
    int bad = 0;
    struct ep_rec *h = peek_at(r, &bad);
    if (!h) {
        if (bad)
            return -EBADMSG;
        int rc = empty_rc(r);
        if (rc < 0)
            return rc;
        return ep_ring_peek(r);
    }
    r->io.off = (uint64_t)((uint8_t *)(h + 1) - r->data);
    r->io.len = h->len;
    r->io.type = h->type;
    r->peeked = 1;
    r->peek_next = r->head + rec_size(h->len);
    return (int)h->len;
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
        return -EBADF;          /* a closed handle */
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

int ep_ring_reader_wait(struct ep_ring_reader *r, int64_t timeout_ns)
{
    struct waiter wt = {.word = &r->ctl->data_wait, .self = &r->ctl->cons, .other = &r->ctl->prod,
                        .peer = &r->peer, .mode = r->wait_mode, .spin_ns = r->spin_ns,
                        .deadline_mono = deadline_from(timeout_ns)};
    return wait_until(&wt, has_data, r, 0);
}

int ep_ring_read(struct ep_ring_reader *r, int64_t timeout_ns)
{
    int rc = ep_ring_try_read(r);
    if (rc != -EAGAIN)
        return rc;
    int64_t deadline = deadline_from(timeout_ns);
    for (;;) {
        struct waiter wt = {.word = &r->ctl->data_wait, .self = &r->ctl->cons, .other = &r->ctl->prod,
                            .peer = &r->peer, .mode = r->wait_mode, .spin_ns = r->spin_ns,
                            .deadline_mono = deadline};
        rc = wait_until(&wt, has_data, r, 0);
        if (rc)
            return rc;
        rc = ep_ring_try_read(r);
        if (rc != -EAGAIN)
            return rc;                  /* -EAGAIN again: only padding was there; wait more */
    }
}

int ep_ring_try_read_batch(struct ep_ring_reader *r, void *buf, uint64_t buf_size, uint32_t *lens,
                           uint32_t *types, uint32_t max_n)
{
    if (r->peeked)
        return -EINVAL;
    uint8_t *p = buf;
    uint64_t room = buf_size;
    uint32_t i = 0;
    uint64_t start = r->head;
    while (i < max_n) {
        int bad = 0;
        uint64_t before = r->head;
        struct ep_rec *h = peek_at(r, &bad);
        if (!h) {
            if (bad) {
                if (i)
                    break;              /* hand out the good records first; the next call reports */
                r->head = start;
                return -EBADMSG;
            }
            break;
        }
        if (h->len > room) {
            r->head = before;           /* leave it (and any padding before it) for the next call */
            if (i == 0) {
                r->io.len = h->len;     /* tell the caller how big a buffer it needs */
                r->io.type = h->type;
                return -ENOBUFS;
            }
            break;
        }
        memcpy(p, h + 1, h->len);
        p += h->len;
        room -= h->len;
        lens[i] = h->len;
        if (types)
            types[i] = h->type;
        r->io.len = h->len;             /* the last record handed out, as for try_read */
        r->io.type = h->type;
        r->head += rec_size(h->len);
        i++;
    }
    if (i == 0) {
        r->head = start;
        int rc = empty_rc(r);
        return rc < 0 ? rc : ep_ring_try_read_batch(r, buf, buf_size, lens, types, max_n);
    }
    consume(r, r->head, i);
    return (int)i;
}
