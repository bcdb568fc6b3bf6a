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
 * Waiting (ep_wait.c) is an eventcount per direction: data_wait (the consumer waits for data) and
 * space_wait (the producer waits for room). After each release of its position an end notifies the other
 * (a fence and a load, no syscall unless someone announced), then stores the position it notified for in
 * tail_notified / head_notified, which only the lost-wakeup accounting reads.
 *
 * An asyncio waiter (ep_async.c) announces itself in data_async / space_async instead of the futex word;
 * after the notify's fence the other end loads that word too and signals only if it is set. Closing an
 * end signals both async words, so every awaiter (ours and the other end's) wakes and re-checks.
 *
 * Presence and peer death (ep_peer.c): each end's owner word, start time, pid namespace and heartbeat
 * live in struct ep_end; a waiting end checks the other through a pidfd plus the start time at least
 * every EP_PEER_CHECK_NS, and a full (or empty) polling end at most once a millisecond.
 *
 * Lengths: the record header's u32 length caps a payload at EP_REC_MAX_LEN whatever the capacity, and
 * every length crosses the API as a 64-bit value (int64_t returns), never truncated to int.
 *
 * Truncation: a segment truncated under the mapping (another process of the same uid, for a named ring)
 * makes the next access beyond the new end raise SIGBUS. The ends check the segment's size on their slow
 * paths (open, peer checks in waits and polls; Python's status()) and report -EBADMSG. A truncation that
 * lands between two checks is caught by the SIGBUS guard of ep_peer.c: the faulting copy completes on zero
 * pages and the call returns -EBADMSG before publishing or handing out anything (one relaxed load per
 * call). memfd rings are sealed against shrinking, so this is about named rings only.
 *
 * The reader trusts nothing in the data area: every header is loaded once, then checked against the
 * published tail and the capacity before any byte is copied, so a buggy or hostile producer can make
 * the reader report -EBADMSG but never read outside the mapping or loop forever.
 */
#define _GNU_SOURCE
#include "edgepipe.h"
#include "ep_async_hook.h"
#include "ep_atomic.h"
#include "ep_peer.h"
#include "ep_wait.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    _Atomic uint64_t tail_notified;     /* tail as of the producer's last finished notify (ep_wait.c) */
    /* line pair 2: the consumer's hot words */
    _Alignas(EP_LINE_PAIR) _Atomic uint64_t head;
    _Atomic uint64_t records_read;
    _Atomic uint64_t head_notified;     /* head as of the consumer's last finished notify */
    /* line pairs 3 and 4: the eventcount words, each with its async waiter's word (ep_async.h) */
    _Alignas(EP_LINE_PAIR) _Atomic uint32_t data_wait;
    _Atomic uint64_t data_async;
    _Alignas(EP_LINE_PAIR) _Atomic uint32_t space_wait;
    _Atomic uint64_t space_async;
    /* line pairs 5 and 6: presence (ep_peer.h) */
    _Alignas(EP_LINE_PAIR) struct ep_end prod;
    _Alignas(EP_LINE_PAIR) struct ep_end cons;
};
_Static_assert(sizeof(struct ep_ring_ctl) <= EP_RING_DATA_OFF, "control block must fit before the data");
_Static_assert(offsetof(struct ep_ring_ctl, data_async) == EP_ASYNC_RING_DATA_OFF, "ep_async.h offsets");
_Static_assert(offsetof(struct ep_ring_ctl, space_async) == EP_ASYNC_RING_SPACE_OFF, "ep_async.h offsets");
_Static_assert(offsetof(struct ep_ring_ctl, tail) == EP_ASYNC_RING_TAIL_OFF, "ep_async.h offsets");
_Static_assert(offsetof(struct ep_ring_ctl, head) == EP_ASYNC_RING_HEAD_OFF, "ep_async.h offsets");

struct ep_rec {
    uint32_t len;
    uint32_t type;
};

struct ep_ring_writer {
    struct ep_ring_ctl *ctl;
    uint8_t *data;
    uint64_t mask, cap, max_payload;
    uint64_t tail;                      /* our own position; ctl->tail lags it until we publish */
    uint64_t head_cache;                /* last head we loaded (acquire) */
    uint64_t claim_rec;                 /* header position of the claimed record, UINT64_MAX if none */
    uint64_t claim_len;
    uint64_t wait_need;                 /* record bytes the current wait needs room for */
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

static inline uint64_t rec_size(uint64_t len)
{
    return EP_REC_HDR + ((len + 7u) & ~(uint64_t)7u);
}

/* The largest payload of a ring of capacity `cap`: half the ring, and what the u32 length field holds. */
static inline uint64_t max_payload_of(uint64_t cap)
{
    uint64_t half = cap / 2 - EP_REC_HDR;
    return half < EP_REC_MAX_LEN ? half : EP_REC_MAX_LEN;
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

/* Fills *out from the control block if the mapping holds one (region_size is the mapping's size, checked
 * before anything is read): 0, or -EBADMSG if it is too small or not a ring (out then holds what could be
 * read: the magic and version tell a foreign segment from an older layout). */
int ep_ring_status(const void *base, uint64_t region_size, struct ep_ring_status *out)
{
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (!base || region_size < EP_RING_DATA_OFF)
        return -EBADMSG;
    struct ep_ring_ctl *c = (struct ep_ring_ctl *)base;
    out->magic = ep_load_acquire(&c->magic);
    out->version = c->version;
    if (out->magic != EP_RING_MAGIC)
        return -EBADMSG;
    out->capacity = c->capacity;
    out->max_payload = c->capacity >= EP_RING_MIN_CAPACITY ? max_payload_of(c->capacity) : 0;
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
    ep_end_status(&c->prod, &out->producer_pid, &out->producer_closed, &out->producer_beat_ns);
    ep_end_status(&c->cons, &out->consumer_pid, &out->consumer_closed, &out->consumer_beat_ns);
    return 0;
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

/* Positions a new end may start from: both 8-byte aligned and no more than a ring apart. */
static int positions_ok(uint64_t head, uint64_t tail, uint64_t cap)
{
    return ((head | tail) & 7u) == 0 && tail - head <= cap;
}

/* ------------------------------------------------------------------------------------------------ */
/* producer */

int ep_ring_writer_open(void *base, uint64_t region_size, int fd, struct ep_ring_writer **out)
{
    if (!out)
        return -EINVAL;
    uint64_t cap;
    int rc = layout(base, region_size, &cap);
    if (rc)
        return rc;
    struct ep_ring_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    rc = ep_peer_init(&w->peer, base, fd, region_size);
    if (rc) {
        free(w);
        return rc;
    }
    w->ctl = base;
    w->data = (uint8_t *)base + EP_RING_DATA_OFF;
    w->cap = cap;
    w->mask = w->cap - 1;
    w->max_payload = max_payload_of(cap);
    /* Acquire: a previous producer's records are complete before we continue after them. */
    w->tail = ep_load_acquire(&w->ctl->tail);
    w->head_cache = ep_load_acquire(&w->ctl->head);
    if (!positions_ok(w->head_cache, w->tail, cap))
        rc = -EBADMSG;
    else
        rc = ep_end_open(&w->ctl->prod, &w->ctl->cons, &w->pid);
    if (rc) {
        ep_peer_drop(&w->peer);
        free(w);
        return rc;
    }
    /* Re-read after taking the end: a producer we replaced may have published up to its death. */
    w->tail = ep_load_acquire(&w->ctl->tail);
    w->claim_rec = UINT64_MAX;
    w->wait_mode = EP_WAIT_HYBRID;
    w->spin_ns = EP_DEFAULT_SPIN_NS;
    /* An asyncio task may await data before this end ever opened (no process to watch yet): wake it so
     * it watches us now. The fence orders our "open" owner store before the look at its word; pairs with
     * the fence in ep_async_arm(), after which the waiter reads the owner (edgepipe.aio). */
    ep_fence_seq_cst();
    ep_async_notify(&w->ctl->data_async);
    *out = w;
    return 0;
}

int ep_ring_writer_close(struct ep_ring_writer *w)
{
    if (!w)
        return -EBADF;
    ep_end_close(&w->ctl->prod, w->pid);
    /* Wake the consumer even if it did not announce: it re-checks and sees "closed". */
    ep_wait_wake_all(&w->ctl->data_wait);
    ep_async_notify(&w->ctl->data_async), ep_async_notify(&w->ctl->space_async); /* every awaiter */
    ep_peer_drop(&w->peer);
    free(w);
    return 0;
}

/* Make a blocked (or the next) wait of this writer return -ECANCELED; safe from another thread while
 * the writer is inside a call, as long as the writer is not freed before that call returns. */
int ep_ring_writer_cancel(struct ep_ring_writer *w)
{
    if (!w)
        return -EBADF;
    ep_store_relaxed(&w->cancel, 1);
    ep_wait_wake_all(&w->ctl->space_wait);
    return 0;
}

int ep_ring_writer_set_wait(struct ep_ring_writer *w, int mode, int64_t spin_ns)
{
    if (!w)
        return -EBADF;
    return set_wait(&w->wait_mode, &w->spin_ns, mode, spin_ns);
}

/* Is the consumer gone? The closed flag every time (a relaxed load of a cold, shared line): -EPIPE; the
 * process (and the segment) only when the ring is full, and at most once a millisecond, because that
 * costs syscalls: -EPIPE, -EXDEV, -EBADMSG. 0 if it is there. */
static inline int consumer_gone(struct ep_ring_writer *w, int full)
{
    uint64_t o = ep_load_relaxed(&w->ctl->cons.owner);
    if (__builtin_expect(ep_owner_state(o) == EP_END_CLOSED, 0))
        return -EPIPE;
    if (!full)
        return 0;
    return ep_peer_poll(&w->peer, &w->ctl->cons);
}

/* Find room for a record of `len` payload bytes at w->tail. Writes the padding record if the record
 * must wrap. Returns the header position, or -EAGAIN if the ring is full. Publishes nothing. */
static inline int64_t reserve(struct ep_ring_writer *w, uint64_t len)
{
    uint64_t need = rec_size(len);
    uint64_t off = w->tail & w->mask;
    uint64_t to_end = w->cap - off;
    uint64_t pad = need <= to_end ? 0 : to_end;
    if (w->tail + pad + need - w->head_cache > w->cap) {
        /* Acquire: the consumer is done with the bytes before head. Pairs with the release of head
         * in consume(). */
        w->head_cache = ep_load_acquire(&w->ctl->head);
        if (w->tail + pad + need - w->head_cache > w->cap)
            return -EAGAIN;
    }
    if (pad) {
        struct ep_rec *p = (struct ep_rec *)(w->data + off);
        p->len = (uint32_t)(pad - EP_REC_HDR); /* pad < need <= EP_REC_MAX_LEN + 16 */
        p->type = EP_REC_PAD;
    }
    return (int64_t)(w->tail + pad);
}

static inline void put(struct ep_ring_writer *w, uint64_t rec, const void *buf, uint64_t len,
                       uint32_t type)
{
    struct ep_rec *h = (struct ep_rec *)(w->data + (rec & w->mask));
    h->len = (uint32_t)len;             /* len <= max_payload <= EP_REC_MAX_LEN */
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
    ep_wait_notify(&w->ctl->data_wait, &w->ctl->prod.wakes);
    ep_async_notify(&w->ctl->data_async);   /* after ep_wait_notify's fence: see ep_async_hook.h */
    /* Release, after the notify: pairs with the acquire of `notified` in ep_wait_until() (lost-wakeup
     * accounting only). */
    ep_store_release(&w->ctl->tail_notified, w->tail);
}

int64_t ep_ring_try_write(struct ep_ring_writer *w, const void *buf, uint64_t len, uint32_t type)
{
    if (__builtin_expect(!w, 0))
        return -EBADF;                  /* a closed handle */
    if (__builtin_expect(len > w->max_payload, 0))
        return -EMSGSIZE;
    if (__builtin_expect(type == EP_REC_PAD || w->claim_rec != UINT64_MAX, 0))
        return -EINVAL;
    int rc = consumer_gone(w, 0);
    if (rc)
        return rc;
    int64_t rec = reserve(w, len);
    if (__builtin_expect(rec < 0, 0)) {
        ep_count(&w->ctl->prod.full_events, 1);
        rc = consumer_gone(w, 1);
        return rc ? rc : -EAGAIN;
    }
    put(w, (uint64_t)rec, buf, len, type);
    if (ep_peer_bus_hit(&w->peer))
        return -EBADMSG;                /* the segment was truncated under the copy: publish nothing */
    publish(w, 1);
    return (int64_t)len;
}

static int has_room(void *ctx)
{
    struct ep_ring_writer *w = ctx;
    /* Acquire: pairs with the release of head in consume(). */
    w->head_cache = ep_load_acquire(&w->ctl->head);
    /* Worst case a record of wait_need bytes also pads to the end of the data area. */
    uint64_t to_end = w->cap - (w->tail & w->mask);
    uint64_t total = w->wait_need <= to_end ? w->wait_need : to_end + w->wait_need;
    return w->tail + total - w->head_cache <= w->cap;
}

static int has_room_at(void *ctx, uint64_t head)
{
    struct ep_ring_writer *w = ctx;
    uint64_t to_end = w->cap - (w->tail & w->mask);
    uint64_t total = w->wait_need <= to_end ? w->wait_need : to_end + w->wait_need;
    return (int64_t)(w->tail + total - head) <= (int64_t)w->cap;
}

static int wait_room(struct ep_ring_writer *w, uint64_t len, int64_t deadline)
{
    if (ep_peer_closed(&w->ctl->cons))
        return -EPIPE;                  /* room or not, nobody will read what we write */
    w->wait_need = rec_size(len);
    struct ep_waiter wt = {.word = &w->ctl->space_wait, .self = &w->ctl->prod, .other = &w->ctl->cons,
                           .peer = &w->peer, .cancel = &w->cancel, .mode = w->wait_mode,
                           .spin_ns = w->spin_ns, .deadline_mono = deadline, .ready = has_room,
                           .ready_at = has_room_at, .notified = &w->ctl->head_notified, .ctx = w};
    return ep_wait_until(&wt);
}

int ep_ring_writer_wait(struct ep_ring_writer *w, uint64_t len, int64_t timeout_ns)
{
    if (!w)
        return -EBADF;
    if (len > w->max_payload)
        return -EMSGSIZE;
    if (ep_peer_closed(&w->ctl->cons))
        return -EPIPE;                  /* as wait_room(): nobody will read what we write */
    w->wait_need = rec_size(len);
    if (has_room(w))
        return 0;                       /* the ready case reads no clock: a timeout costs nothing here */
    return wait_room(w, len, ep_wait_deadline(timeout_ns));
}

int64_t ep_ring_write(struct ep_ring_writer *w, const void *buf, uint64_t len, uint32_t type,
                      int64_t timeout_ns)
{
    int64_t rc = ep_ring_try_write(w, buf, len, type);
    if (rc != -EAGAIN)
        return rc;
    int64_t deadline = ep_wait_deadline(timeout_ns);
    for (;;) {
        rc = wait_room(w, len, deadline);
        if (rc)
            return rc;
        rc = ep_ring_try_write(w, buf, len, type);
        if (rc != -EAGAIN)
            return rc;
    }
}

int64_t ep_ring_claim(struct ep_ring_writer *w, uint64_t len)
{
    if (!w)
        return -EBADF;
    if (len > w->max_payload)
        return -EMSGSIZE;
    if (w->claim_rec != UINT64_MAX)
        return -EINVAL;                 /* one claim at a time */
    int rc = consumer_gone(w, 0);
    if (rc)
        return rc;
    int64_t rec = reserve(w, len);
    if (rec < 0) {
        ep_count(&w->ctl->prod.full_events, 1);
        rc = consumer_gone(w, 1);
        return rc ? rc : -EAGAIN;
    }
    w->claim_rec = (uint64_t)rec;
    w->claim_len = len;
    return (int64_t)(((uint64_t)rec & w->mask) + EP_REC_HDR);
}

int64_t ep_ring_commit(struct ep_ring_writer *w, uint64_t len, uint32_t type)
{
    if (!w)
        return -EBADF;
    if (w->claim_rec == UINT64_MAX)
        return -EINVAL;
    if (len > w->claim_len || type == EP_REC_PAD)
        return -EINVAL;                 /* a commit may shrink the record, never grow it */
    struct ep_rec *h = (struct ep_rec *)(w->data + (w->claim_rec & w->mask));
    h->len = (uint32_t)len;             /* len <= claim_len <= max_payload */
    h->type = type;
    w->tail = w->claim_rec + rec_size(len);
    w->claim_rec = UINT64_MAX;
    if (ep_peer_bus_hit(&w->peer))
        return -EBADMSG;
    publish(w, 1);
    return (int64_t)len;
}

int ep_ring_abort(struct ep_ring_writer *w)
{
    if (!w)
        return -EBADF;
    if (w->claim_rec == UINT64_MAX)
        return -EINVAL;
    /* Nothing was published: the tail never moved, so the claimed bytes (and any padding written
     * for them) are simply overwritten by the next record. */
    w->claim_rec = UINT64_MAX;
    return 0;
}

int64_t ep_ring_try_write_batch(struct ep_ring_writer *w, const void *buf, const uint32_t *lens,
                                uint32_t n, uint32_t type)
{
    if (!w)
        return -EBADF;
    if (type == EP_REC_PAD || w->claim_rec != UINT64_MAX)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (lens[i] > w->max_payload)
            return -EMSGSIZE;           /* refuse the whole batch before writing any of it */
    int rc = consumer_gone(w, 0);
    if (rc)
        return rc;
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
        if (n == 0)
            return 0;
        ep_count(&w->ctl->prod.full_events, 1);
        rc = consumer_gone(w, 1);
        return rc ? rc : -EAGAIN;
    }
    if (ep_peer_bus_hit(&w->peer))
        return -EBADMSG;
    publish(w, i);
    return (int64_t)i;
}

int64_t ep_ring_try_write_fixed(struct ep_ring_writer *w, const void *buf, uint32_t size, uint32_t n,
                                uint32_t type)
{
    if (!w)
        return -EBADF;
    if (size > w->max_payload)
        return -EMSGSIZE;
    if (type == EP_REC_PAD || w->claim_rec != UINT64_MAX)
        return -EINVAL;
    int rc = consumer_gone(w, 0);
    if (rc)
        return rc;
    const uint8_t *p = buf;
    uint32_t i = 0;
    for (; i < n; i++, p += size) {
        int64_t rec = reserve(w, size);
        if (rec < 0)
            break;
        put(w, (uint64_t)rec, p, size, type);
    }
    if (i == 0) {
        if (n == 0)
            return 0;
        ep_count(&w->ctl->prod.full_events, 1);
        rc = consumer_gone(w, 1);
        return rc ? rc : -EAGAIN;
    }
    if (ep_peer_bus_hit(&w->peer))
        return -EBADMSG;
    publish(w, i);
    return (int64_t)i;
}

/* ------------------------------------------------------------------------------------------------ */
/* consumer */

int ep_ring_reader_open(void *base, uint64_t region_size, int fd, struct ep_ring_reader **out)
{
    if (!out)
        return -EINVAL;
    uint64_t cap;
    int rc = layout(base, region_size, &cap);
    if (rc)
        return rc;
    struct ep_ring_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    rc = ep_peer_init(&r->peer, base, fd, region_size);
    if (rc) {
        free(r);
        return rc;
    }
    r->ctl = base;
    r->data = (uint8_t *)base + EP_RING_DATA_OFF;
    r->cap = cap;
    r->mask = r->cap - 1;
    r->max_payload = max_payload_of(cap);
    r->scratch = malloc(r->max_payload ? r->max_payload : 1);
    rc = r->scratch ? ep_end_open(&r->ctl->cons, &r->ctl->prod, &r->pid) : -ENOMEM;
    if (rc)
        goto fail;
    r->head = ep_load_relaxed(&r->ctl->head);   /* only consumers ever store head */
    /* Acquire: pairs with the release of tail in publish(). */
    r->tail_cache = ep_load_acquire(&r->ctl->tail);
    if (!positions_ok(r->head, r->tail_cache, cap)) {
        ep_end_close(&r->ctl->cons, r->pid);
        rc = -EBADMSG;
        goto fail;
    }
    r->wait_mode = EP_WAIT_HYBRID;
    r->spin_ns = EP_DEFAULT_SPIN_NS;
    /* An asyncio task may await room before this end ever opened (no process to watch yet): wake it so
     * it watches us now. The fence orders our "open" owner store before the look at its word; pairs with
     * the fence in ep_async_arm(), after which the waiter reads the owner (edgepipe.aio). */
    ep_fence_seq_cst();
    ep_async_notify(&r->ctl->space_async);
    *out = r;
    return 0;
fail:
    ep_peer_drop(&r->peer);
    free(r->scratch);
    free(r);
    return rc;
}

int ep_ring_reader_close(struct ep_ring_reader *r)
{
    if (!r)
        return -EBADF;
    ep_end_close(&r->ctl->cons, r->pid);
    /* Wake the producer even if it did not announce: it re-checks and sees "closed". */
    ep_wait_wake_all(&r->ctl->space_wait);
    ep_async_notify(&r->ctl->space_async), ep_async_notify(&r->ctl->data_async); /* every awaiter */
    ep_peer_drop(&r->peer);
    free(r->scratch);
    free(r);
    return 0;
}

/* See ep_ring_writer_cancel(). */
int ep_ring_reader_cancel(struct ep_ring_reader *r)
{
    if (!r)
        return -EBADF;
    ep_store_relaxed(&r->cancel, 1);
    ep_wait_wake_all(&r->ctl->data_wait);
    return 0;
}

int ep_ring_reader_set_wait(struct ep_ring_reader *r, int mode, int64_t spin_ns)
{
    if (!r)
        return -EBADF;
    return set_wait(&r->wait_mode, &r->spin_ns, mode, spin_ns);
}

struct ep_ring_io *ep_ring_reader_io(struct ep_ring_reader *r)
{
    return r ? &r->io : NULL;
}

void *ep_ring_reader_scratch(struct ep_ring_reader *r)
{
    return r ? r->scratch : NULL;
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
            uint64_t tail = ep_load_acquire(&r->ctl->tail);
            if (r->head == tail)
                return 0;
            /* A tail behind us or more than a ring ahead. It is not cached: the next call checks the tail
             * again instead of walking up to a bad one (it stays corrupt for as long as the tail is bad). */
            if (__builtin_expect(tail - r->head > r->cap || (tail & 7u), 0))
                return -EBADMSG;
            r->tail_cache = tail;
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
    ep_wait_notify(&r->ctl->space_wait, &r->ctl->cons.wakes);
    ep_async_notify(&r->ctl->space_async);  /* after ep_wait_notify's fence: see ep_async_hook.h */
    /* Release, after the notify: pairs with the acquire of `notified` in ep_wait_until(). */
    ep_store_release(&r->ctl->head_notified, new_head);
}

/* The ring looked empty. -EAGAIN normally; -EPIPE if the producer closed or died and nothing is
 * left (-EXDEV, -EBADMSG: see ep_peer_check); 1 if records turned up meanwhile. A dead (not closed)
 * producer is noticed here too, checked at most once per 256 empty polls and once a millisecond, so
 * busy-polling try_read ends as well. */
static int empty_rc(struct ep_ring_reader *r)
{
    int rc = ep_peer_closed(&r->ctl->prod) ? -EPIPE : 0;
    if (!rc && (r->peer.dead || (++r->empty_polls & 255u) == 0))
        rc = ep_peer_poll(&r->peer, &r->ctl->prod);   /* found dead by a wait: answers at once */
    if (!rc)
        return -EAGAIN;
    if (rc != -EPIPE)
        return rc;
    /* Acquire: a producer that closed published everything before "closed" (release in ep_end_close);
     * one that died published what it published. Re-check the tail after seeing it gone. */
    return r->head == ep_load_acquire(&r->ctl->tail) ? -EPIPE : 1;   /* 1: peek_at loads and checks it */
}

int64_t ep_ring_peek(struct ep_ring_reader *r)
{
    if (__builtin_expect(!r, 0))
        return -EBADF;
    if (r->peeked)
        return (int64_t)r->io.len;      /* peeking twice yields the same record */
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
    if (ep_peer_bus_hit(&r->peer))
        return -EBADMSG;                /* the header may have been read from a zero page */
    r->io.off = off;
    r->io.len = h.len;
    r->io.type = h.type;
    r->peeked = 1;
    r->peek_next = r->head + rec_size(h.len);
    return (int64_t)h.len;
}

int ep_ring_release(struct ep_ring_reader *r)
{
    if (!r)
        return -EBADF;
    if (!r->peeked)
        return -EINVAL;
    r->peeked = 0;
    consume(r, r->peek_next, 1);
    return 0;
}

int64_t ep_ring_try_read(struct ep_ring_reader *r)
{
    if (__builtin_expect(!r, 0))
        return -EBADF;                  /* a closed handle */
    int64_t n = ep_ring_peek(r);
    if (n < 0)
        return n;
    memcpy(r->scratch, r->data + r->io.off, (size_t)n);
    if (ep_peer_bus_hit(&r->peer))
        return -EBADMSG;                /* truncated under the copy: hand out nothing */
    r->peeked = 0;
    consume(r, r->peek_next, 1);
    return n;
}

static int has_data(void *ctx)
{
    struct ep_ring_reader *r = ctx;
    if (r->head != r->tail_cache)
        return 1;
    /* Acquire: pairs with the release of tail in publish(). Not cached: peek_at checks a tail before
     * caching it. */
    return r->head != ep_load_acquire(&r->ctl->tail);
}

static int has_data_at(void *ctx, uint64_t tail)
{
    struct ep_ring_reader *r = ctx;
    return (int64_t)(tail - r->head) > 0;
}

static int wait_data(struct ep_ring_reader *r, int64_t deadline)
{
    struct ep_waiter wt = {.word = &r->ctl->data_wait, .self = &r->ctl->cons, .other = &r->ctl->prod,
                           .peer = &r->peer, .cancel = &r->cancel, .mode = r->wait_mode,
                           .spin_ns = r->spin_ns, .deadline_mono = deadline, .ready = has_data,
                           .ready_at = has_data_at, .notified = &r->ctl->tail_notified, .ctx = r};
    return ep_wait_until(&wt);
}

int ep_ring_reader_wait(struct ep_ring_reader *r, int64_t timeout_ns)
{
    if (!r)
        return -EBADF;
    if (has_data(r))
        return 0;                       /* the ready case reads no clock: a timeout costs nothing here */
    return wait_data(r, ep_wait_deadline(timeout_ns));
}

int64_t ep_ring_read(struct ep_ring_reader *r, int64_t timeout_ns)
{
    int64_t rc = ep_ring_try_read(r);
    if (rc != -EAGAIN)
        return rc;
    int64_t deadline = ep_wait_deadline(timeout_ns);
    for (;;) {
        rc = wait_data(r, deadline);
        if (rc)
            return rc;
        rc = ep_ring_try_read(r);
        if (rc != -EAGAIN)
            return rc;
    }
}

int64_t ep_ring_try_read_batch(struct ep_ring_reader *r, void *buf, uint64_t buf_size, uint32_t *lens,
                               uint32_t *types, uint32_t max_n)
{
    if (!r)
        return -EBADF;
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
    if (ep_peer_bus_hit(&r->peer))
        return -EBADMSG;
    if (i == 0)
        return -EPIPE;                  /* the producer is gone and only padding was left */
    consume(r, r->head, i);
    return (int64_t)i;
}
