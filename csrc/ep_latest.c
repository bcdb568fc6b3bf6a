/*
 * ep_latest.c: the latest-only slot, a lock-free multiple buffer (a triple buffer, optionally with spare
 * buffers) over a mapped region, for one producer and one consumer. The producer never waits and always
 * has a buffer to fill; the consumer always takes the newest published frame; frames the consumer was
 * too slow for are counted as overwritten.
 *
 * Region layout (offsets only, never pointers):
 *   [0, EP_LATEST_CTL_SIZE)                         struct ep_latest_ctl
 *   [EP_LATEST_CTL_SIZE + i * slot_size, +slot_size) buffer i: struct ep_frame_hdr, then pixels at
 *                                                   EP_IMAGE_HDR_SIZE (page-aligned buffers, so the
 *                                                   pixels are 64-byte aligned in every process)
 *
 * Ownership invariant: every buffer index belongs to exactly one of
 *   - the producer (bits 8..11 of the state word `middle`): it alone writes that buffer;
 *   - the exchange slot (bits 0..3; bit EP_FRESH says "published and not yet taken");
 *   - the consumer (bits 16..23, one bit per buffer): it alone reads those buffers.
 * All three live in the one word, and buffers move only through one compare-and-swap of it, by either side:
 *   publish: slot = prod | FRESH; prod = old slot                  (the producer gets a free buffer)
 *   take:    slot = give;         mask = mask - give + old slot     (only when FRESH is set)
 * so a process killed at any instant (kill -9 inside publish or take) leaves a consistent partition for
 * the next producer or consumer to open (layout version 1 kept the producer's index and the consumer's
 * mask in separate words, stored after the exchange: a kill between the two gave one buffer to both
 * ends). Each CAS loop is lock-free: the producer's fails at most once per take, the consumer's only
 * when a publish landed in between, and FRESH stays set for its retry.
 * The consumer is the only side that clears FRESH, so once it sees FRESH the exchange it makes returns a
 * fresh buffer (possibly a newer one than it saw). With nbuf = 3 this is the classic triple buffer; a
 * consumer with more than one buffer may keep a frame (an array that outlived its `with`) while it takes
 * the next, as long as it gives back one buffer it no longer uses.
 *
 * Bits 24..31 of the state word count publishes (mod 256): the consumer learns which publish it took,
 * and the producer stores the count it last finished notifying for in `notified`; together they let a
 * wait tell a real lost wakeup from a publish that landed after its timeout (ep_wait.c).
 *
 * Waiting: only the consumer waits, through the eventcount of ep_wait.c on data_wait (the ring's code):
 * it spins for spin_ns, parks with an absolute deadline, and checks the producer at least every
 * EP_PEER_CHECK_NS through ep_peer.c (pidfd plus start time, so a zombie or a reused pid is a dead
 * producer, exactly as for the ring). A closed or dead producer is -EPIPE once no fresh frame is left.
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

_Static_assert(sizeof(struct ep_frame_hdr) == EP_IMAGE_HDR_SIZE, "frame header is 128 bytes");
_Static_assert(offsetof(struct ep_frame_hdr, nbytes) == 16, "frame header layout");
_Static_assert(offsetof(struct ep_frame_hdr, shape) == 56, "frame header layout");
_Static_assert(offsetof(struct ep_frame_hdr, strides) == 88, "frame header layout");
_Static_assert(EP_IMAGE_HDR_SIZE % EP_IMAGE_ALIGN == 0, "pixels after the header stay aligned");

#define EP_FRESH 0x10u
#define EP_IDX 0x0Fu
#define PROD_SHIFT 8                /* the producer's buffer index in the state word */
#define CONS_SHIFT 16               /* the consumer's buffer mask in the state word */
#define PROD_OF(st) (((st) >> PROD_SHIFT) & EP_IDX)
#define CONS_OF(st) (((st) >> CONS_SHIFT) & 0xFFu)
#define SEQ_SHIFT 24                /* publishes mod 256 in the state word */
#define SEQ_OF(st) ((st) >> SEQ_SHIFT)
#define DEFAULT_SPIN_NS 25000

struct ep_latest_ctl {
    /* line pair 0: written once by ep_latest_init, magic last */
    _Atomic uint32_t magic;
    uint32_t version;
    uint64_t max_frame_bytes;
    uint64_t slot_size;
    uint64_t region_size;
    uint32_t nbuf;
    int32_t creator_pid;
    /* line pair 1: the state word (exchange slot, FRESH, producer index, consumer mask), touched by both
     * sides once per frame */
    _Alignas(EP_LINE_PAIR) _Atomic uint32_t middle;
    /* line pair 2: the producer's words */
    _Alignas(EP_LINE_PAIR) _Atomic uint64_t published;
    _Atomic uint64_t overwritten;
    _Atomic uint64_t notified;          /* SEQ_OF the producer's last publish whose notify is done */
    /* line pair 3: the consumer's words */
    _Alignas(EP_LINE_PAIR) _Atomic uint64_t delivered;
    /* line pair 4: the consumer's eventcount and its async waiter's word (ep_async.h) */
    _Alignas(EP_LINE_PAIR) _Atomic uint32_t data_wait;
    _Atomic uint64_t data_async;
    /* line pairs 5 and 6: presence (ep_peer.h); cons also holds the consumer's parks and late wakeups */
    _Alignas(EP_LINE_PAIR) struct ep_end prod;
    _Alignas(EP_LINE_PAIR) struct ep_end cons;
};
_Static_assert(sizeof(struct ep_latest_ctl) <= EP_LATEST_CTL_SIZE, "control block fits its page");
_Static_assert(offsetof(struct ep_latest_ctl, data_async) == EP_ASYNC_LATEST_DATA_OFF, "ep_async.h offsets");
_Static_assert(offsetof(struct ep_latest_ctl, published) == EP_ASYNC_LATEST_PUB_OFF, "ep_async.h offsets");

/* Each end copies nbuf and slot_size when it opens (after ep_latest_check validated them against the
 * region size) and uses only its copies: a peer that scribbles on the control block later can then make
 * an index fail the bounds check, never move an offset outside the region. */
struct ep_latest_writer {
    struct ep_latest_ctl *ctl;
    uint32_t idx;                       /* the buffer we fill */
    int32_t pid;
    uint32_t nbuf;                      /* validated copies, see above */
    uint64_t slot_size;
    struct ep_peer peer;                /* only for the segment's truncation checks */
};

struct ep_latest_reader {
    struct ep_latest_ctl *ctl;
    uint32_t mask;                      /* buffers we own */
    uint32_t taken;                     /* SEQ_OF the publish whose frame we took last */
    int32_t pid;
    uint32_t nbuf;                      /* validated copy (see struct ep_latest_writer) */
    int64_t spin_ns;
    _Atomic int cancel;
    struct ep_peer peer;
};

/* ------------------------------------------------------------------------------------------------ */
/* region */

uint64_t ep_latest_slot_size(uint64_t max_frame_bytes)
{
    return (EP_IMAGE_HDR_SIZE + max_frame_bytes + 4095u) & ~(uint64_t)4095u;
}

uint64_t ep_latest_region_size(uint64_t max_frame_bytes, uint32_t nbuf)
{
    return EP_LATEST_CTL_SIZE + (uint64_t)nbuf * ep_latest_slot_size(max_frame_bytes);
}

int ep_latest_init(void *base, uint64_t region_size, uint64_t max_frame_bytes, uint32_t nbuf)
{
    if (!base || max_frame_bytes == 0 || max_frame_bytes > EP_LATEST_MAX_FRAME ||
        nbuf < EP_LATEST_MIN_BUFS || nbuf > EP_LATEST_MAX_BUFS ||
        region_size < ep_latest_region_size(max_frame_bytes, nbuf))
        return -EINVAL;
    struct ep_latest_ctl *c = base;
    memset(c, 0, sizeof(*c));
    c->version = EP_LATEST_VERSION;
    c->max_frame_bytes = max_frame_bytes;
    c->slot_size = ep_latest_slot_size(max_frame_bytes);
    c->region_size = region_size;
    c->nbuf = nbuf;
    c->creator_pid = (int32_t)getpid();
    /* The producer starts with buffer 0, the exchange slot holds buffer 1 (nothing fresh), and the
     * consumer owns the rest. */
    ep_store_relaxed(&c->middle, 1u | (0u << PROD_SHIFT) | ((((1u << nbuf) - 1u) & ~3u) << CONS_SHIFT));
    /* Release: every field above is visible before the magic that says "initialised".
     * Pairs with the acquire of magic in ep_latest_check(). */
    ep_store_release(&c->magic, EP_LATEST_MAGIC);
    return 0;
}

int ep_latest_check(const void *base, uint64_t region_size)
{
    if (!base || region_size < EP_LATEST_CTL_SIZE)
        return -EBADMSG;
    const struct ep_latest_ctl *c = base;
    /* Acquire: pairs with the release of magic in ep_latest_init(). */
    if (ep_load_acquire(&((struct ep_latest_ctl *)c)->magic) != EP_LATEST_MAGIC)
        return -EBADMSG;
    if (c->version != EP_LATEST_VERSION)
        return -EPROTO;
    if (c->nbuf < EP_LATEST_MIN_BUFS || c->nbuf > EP_LATEST_MAX_BUFS || c->max_frame_bytes == 0 ||
        c->max_frame_bytes > EP_LATEST_MAX_FRAME || c->slot_size != ep_latest_slot_size(c->max_frame_bytes) ||
        ep_latest_region_size(c->max_frame_bytes, c->nbuf) > region_size)
        return -EBADMSG;
    return 0;
}

/* Fills *out if the mapping (region_size bytes, checked before anything is read) holds a control block:
 * 0, or -EBADMSG if it is too small or not a latest slot (out then holds the magic and version read). */
int ep_latest_status(const void *base, uint64_t region_size, struct ep_latest_status *out)
{
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (!base || region_size < EP_LATEST_CTL_SIZE)
        return -EBADMSG;
    struct ep_latest_ctl *c = (struct ep_latest_ctl *)base;
    out->magic = ep_load_acquire(&c->magic);
    out->version = c->version;
    if (out->magic != EP_LATEST_MAGIC)
        return -EBADMSG;
    out->max_frame_bytes = c->max_frame_bytes;
    out->slot_size = c->slot_size;
    out->region_size = c->region_size;
    out->nbuf = c->nbuf;
    out->fresh = (ep_load_acquire(&c->middle) & EP_FRESH) != 0;
    out->published = ep_load_relaxed(&c->published);
    out->delivered = ep_load_relaxed(&c->delivered);
    out->overwritten = ep_load_relaxed(&c->overwritten);
    out->consumer_parks = ep_load_relaxed(&c->cons.parks);
    out->late_wakeups = ep_load_relaxed(&c->cons.late_wakeups);
    out->creator_pid = c->creator_pid;
    int64_t beat;
    ep_end_status(&c->prod, &out->producer_pid, &out->producer_closed, &beat);
    ep_end_status(&c->cons, &out->consumer_pid, &out->consumer_closed, &beat);
    return 0;
}

/* The copies an end keeps: nbuf buffers of slot_size bytes fit the region (no overflow: both bounded). */
static int geometry_ok(uint32_t nbuf, uint64_t slot_size, uint64_t region_size)
{
    return nbuf >= EP_LATEST_MIN_BUFS && nbuf <= EP_LATEST_MAX_BUFS && slot_size >= EP_IMAGE_HDR_SIZE &&
           slot_size <= ep_latest_slot_size(EP_LATEST_MAX_FRAME) &&
           EP_LATEST_CTL_SIZE + nbuf * slot_size <= region_size;
}

/* The state word splits the nbuf buffers into producer, exchange slot and consumer with nothing left over. */
static int partition_ok(uint32_t st, uint32_t nbuf)
{
    uint32_t slot = st & EP_IDX, prod = PROD_OF(st), cons = CONS_OF(st);
    if (slot >= nbuf || prod >= nbuf || slot == prod || (cons & ((1u << slot) | (1u << prod))))
        return 0;
    return ((1u << slot) | (1u << prod) | cons) == (1u << nbuf) - 1u &&
           (st & ~(EP_IDX | EP_FRESH | (EP_IDX << PROD_SHIFT) | (0xFFu << CONS_SHIFT) |
                   (0xFFu << SEQ_SHIFT))) == 0;
}

/* The producer closed, or its process is gone (0 no, -EPIPE, or -EXDEV / -EBADMSG: see ep_peer_check).
 * The closed flag every time, the process at most once a millisecond (a pidfd poll). */
static int producer_gone(struct ep_latest_reader *r)
{
    if (ep_peer_closed(&r->ctl->prod))
        return -EPIPE;
    return ep_peer_poll(&r->peer, &r->ctl->prod);
}

/* ------------------------------------------------------------------------------------------------ */
/* producer */

int ep_latest_writer_open(void *base, uint64_t region_size, int fd, struct ep_latest_writer **out)
{
    if (!out)
        return -EINVAL;
    int rc = ep_latest_check(base, region_size);
    if (rc)
        return rc;
    struct ep_latest_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    rc = ep_peer_init(&w->peer, base, fd, region_size);
    if (rc) {
        free(w);
        return rc;
    }
    w->ctl = base;
    w->nbuf = w->ctl->nbuf;
    w->slot_size = w->ctl->slot_size;
    if (!geometry_ok(w->nbuf, w->slot_size, region_size))   /* re-check the copies themselves */
        rc = -EBADMSG;
    else
        rc = ep_end_open(&w->ctl->prod, &w->ctl->cons, &w->pid);
    if (rc)
        goto fail;
    /* A previous producer (maybe killed mid-publish) left its buffer index in the state word; it is
     * ours now. Acquire: pairs with the CAS of the state word in ep_latest_try_take() (a consumer's
     * reads of buffers it gave back are done). */
    uint32_t st = ep_load_acquire(&w->ctl->middle);
    w->idx = PROD_OF(st);
    if (!partition_ok(st, w->nbuf)) {
        ep_end_close(&w->ctl->prod, w->pid);
        rc = -EBADMSG;
        goto fail;
    }
    /* An asyncio task may await a frame before this end ever opened (no process to watch yet): wake it so
     * it watches us now. The fence orders our "open" owner store before the look at its word; pairs with
     * the fence in ep_async_arm(), after which the waiter reads the owner (edgepipe.aio). */
    ep_fence_seq_cst();
    ep_async_notify(&w->ctl->data_async);
    *out = w;
    return 0;
fail:
    ep_peer_drop(&w->peer);
    free(w);
    return rc;
}

int ep_latest_writer_close(struct ep_latest_writer *w)
{
    if (!w)
        return -EBADF;
    struct ep_latest_ctl *c = w->ctl;
    ep_end_close(&c->prod, w->pid);
    /* Wake a parked consumer so it sees "closed". */
    ep_wait_wake_all(&c->data_wait);
    ep_async_notify(&c->data_async);        /* an awaiting consumer wakes and sees "closed" */
    ep_peer_drop(&w->peer);
    free(w);
    return 0;
}

int64_t ep_latest_writer_slot(struct ep_latest_writer *w)
{
    if (!w)
        return -EBADF;
    return (int64_t)(EP_LATEST_CTL_SIZE + (uint64_t)w->idx * w->slot_size);
}

/* Make the filled buffer the newest frame and take back a free one. Returns 1 if a frame the
 * consumer had not taken yet was replaced (overwritten), else 0. Never waits. */
int ep_latest_publish(struct ep_latest_writer *w)
{
    if (!w)
        return -EBADF;
    if (ep_peer_bus_hit(&w->peer))
        return -EBADMSG;                /* the frame was written over a truncated segment: publish nothing */
    struct ep_latest_ctl *c = w->ctl;
    /* Release (CAS success): the header and pixels we wrote into buffer idx are visible before the
     * index is. Pairs with the acquire half of the CAS in ep_latest_try_take().
     * Acquire (CAS success): the consumer's reads of the buffer it gave back (the old slot) are done
     * before we write it. Pairs with the release half of that same CAS.
     * The relaxed load and the relaxed failure order only feed the next attempt. */
    uint32_t old = ep_load_relaxed(&c->middle), idx, nw;
    for (;;) {
        idx = old & EP_IDX;
        if (__builtin_expect(idx >= w->nbuf || PROD_OF(old) != w->idx, 0))
            return -EBADMSG;            /* someone scribbled on the control block */
        nw = ((SEQ_OF(old) + 1u) << SEQ_SHIFT) | (old & (0xFFu << CONS_SHIFT)) | (idx << PROD_SHIFT) |
             w->idx | EP_FRESH;
        if (atomic_compare_exchange_weak_explicit(&c->middle, &old, nw, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    w->idx = idx;
    ep_count(&c->published, 1);
    int overwrote = (old & EP_FRESH) != 0;
    if (overwrote)
        ep_count(&c->overwritten, 1);
    ep_wait_notify(&c->data_wait, &c->prod.wakes);
    ep_async_notify(&c->data_async);        /* after ep_wait_notify's fence: see ep_async_hook.h */
    /* Release, after the notify: pairs with the acquire of `notified` in ep_wait_until(). */
    ep_store_release(&c->notified, SEQ_OF(nw));
    return overwrote;
}

/* ------------------------------------------------------------------------------------------------ */
/* consumer */

int ep_latest_reader_open(void *base, uint64_t region_size, int fd, struct ep_latest_reader **out)
{
    if (!out)
        return -EINVAL;
    int rc = ep_latest_check(base, region_size);
    if (rc)
        return rc;
    struct ep_latest_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    rc = ep_peer_init(&r->peer, base, fd, region_size);
    if (rc) {
        free(r);
        return rc;
    }
    r->ctl = base;
    r->nbuf = r->ctl->nbuf;
    if (!geometry_ok(r->nbuf, r->ctl->slot_size, region_size))   /* re-check the copy itself */
        rc = -EBADMSG;
    else
        rc = ep_end_open(&r->ctl->cons, &r->ctl->prod, &r->pid);
    if (rc)
        goto fail;
    /* A previous consumer (maybe killed mid-take) left its mask in the state word; those buffers are
     * ours now. Acquire: pairs with the CAS of the state word in ep_latest_publish() (frames in them
     * are complete). */
    uint32_t st = ep_load_acquire(&r->ctl->middle);
    r->mask = CONS_OF(st);
    r->taken = (SEQ_OF(st) - ((st & EP_FRESH) ? 1u : 0u)) & 0xFFu;
    r->spin_ns = DEFAULT_SPIN_NS;
    if (r->mask == 0 || !partition_ok(st, r->nbuf)) {
        ep_end_close(&r->ctl->cons, r->pid);
        rc = -EBADMSG;
        goto fail;
    }
    *out = r;
    return 0;
fail:
    ep_peer_drop(&r->peer);
    free(r);
    return rc;
}

int ep_latest_reader_close(struct ep_latest_reader *r)
{
    if (!r)
        return -EBADF;
    ep_end_close(&r->ctl->cons, r->pid);
    ep_fence_seq_cst();                 /* a task of ours awaiting this reader wakes and sees it closed */
    ep_async_notify(&r->ctl->data_async);
    ep_peer_drop(&r->peer);
    free(r);
    return 0;
}

int ep_latest_reader_cancel(struct ep_latest_reader *r)
{
    if (!r)
        return -EBADF;
    ep_store_relaxed(&r->cancel, 1);
    ep_wait_wake_all(&r->ctl->data_wait);
    return 0;
}

int ep_latest_reader_set_spin(struct ep_latest_reader *r, int64_t spin_ns)
{
    if (!r)
        return -EBADF;
    if (spin_ns < 0)
        return -EINVAL;
    r->spin_ns = spin_ns;
    return 0;
}

uint32_t ep_latest_reader_owned(struct ep_latest_reader *r)
{
    return r ? r->mask : 0;
}

/* Give back buffer `give` (one we own and no longer read) and take the newest frame. Returns the
 * index of the buffer now holding it, -EAGAIN if nothing new was published since the last take,
 * -EPIPE if nothing new and the producer is gone, -EINVAL if `give` is not ours. Never waits. */
int ep_latest_try_take(struct ep_latest_reader *r, uint32_t give)
{
    if (__builtin_expect(!r, 0))
        return -EBADF;
    struct ep_latest_ctl *c = r->ctl;
    if (give >= r->nbuf || !(r->mask & (1u << give)))
        return -EINVAL;
    if (ep_peer_bus_hit(&r->peer))
        return -EBADMSG;                /* the segment was truncated under a frame we read */
    if (!(ep_load_relaxed(&c->middle) & EP_FRESH)) {
        int rc = producer_gone(r);
        if (!rc)
            return -EAGAIN;
        /* Acquire: a producer that closed published everything before "closed"; look again. */
        if (!(ep_load_acquire(&c->middle) & EP_FRESH))
            return rc;
    }
    /* Only we clear FRESH, so the CAS that succeeds takes a fresh buffer (maybe newer than the one
     * we first saw: a publish in between only makes the CAS retry).
     * Acquire (CAS success): the producer's writes to that buffer are visible to us. Pairs with the
     * release half of the CAS in ep_latest_publish().
     * Release (CAS success): our reads of `give` are done before the producer may take and rewrite
     * it. Pairs with the acquire half of that same CAS.
     * The relaxed load and the relaxed failure order only feed the next attempt. */
    uint32_t old = ep_load_relaxed(&c->middle), idx, mask;
    for (;;) {
        idx = old & EP_IDX;
        if (__builtin_expect(idx >= r->nbuf || !(old & EP_FRESH) || CONS_OF(old) != r->mask, 0))
            return -EBADMSG;
        mask = (r->mask & ~(1u << give)) | (1u << idx);
        uint32_t nw = (old & (0xFFu << SEQ_SHIFT)) | (mask << CONS_SHIFT) | (old & (EP_IDX << PROD_SHIFT)) |
                      give;
        if (atomic_compare_exchange_weak_explicit(&c->middle, &old, nw, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    r->mask = mask;
    r->taken = SEQ_OF(old);
    ep_count(&c->delivered, 1);
    return (int)idx;
}

static int fresh(void *ctx)
{
    struct ep_latest_reader *r = ctx;
    /* Relaxed: only a hint; the exchange in ep_latest_try_take() does the acquiring. */
    return (ep_load_relaxed(&r->ctl->middle) & EP_FRESH) != 0;
}

/* Would a publish counted `n` (mod 256) be one we have not taken? At most one stale step behind our take
 * (see ep_wait.c), so a signed 8-bit difference tells newer from older. */
static int fresh_at(void *ctx, uint64_t n)
{
    struct ep_latest_reader *r = ctx;
    return (int8_t)(uint8_t)((uint32_t)n - r->taken) > 0;
}

/* Wait until a fresh frame is published (0), timeout_ns passes (-ETIMEDOUT; < 0 means 100 ms, so
 * callers regain control regularly), the producer is gone with nothing fresh (-EPIPE), the reader is
 * cancelled (-ECANCELED) or a signal arrives (-EINTR). */
int ep_latest_wait(struct ep_latest_reader *r, int64_t timeout_ns)
{
    if (__builtin_expect(!r, 0))
        return -EBADF;
    if (timeout_ns < 0)
        timeout_ns = 100000000;
    struct ep_waiter wt = {.word = &r->ctl->data_wait, .self = &r->ctl->cons, .other = &r->ctl->prod,
                           .peer = &r->peer, .cancel = &r->cancel, .mode = EP_WAIT_HYBRID,
                           .spin_ns = r->spin_ns, .deadline_mono = ep_wait_deadline(timeout_ns),
                           .ready = fresh, .ready_at = fresh_at, .notified = &r->ctl->notified, .ctx = r};
    return ep_wait_until(&wt);
}
