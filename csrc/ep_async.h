/*
 * ep_async.h: the binding surface of ep_async.c, how an asyncio task waits on a ring or latest slot
 * without a thread (included by edgepipe.h; the producer's hot-path hook is in ep_async_hook.h).
 *
 * An async waiter owns a datagram socket bound to an abstract Unix name derived from a random 63-bit
 * key, registered once with its event loop. To wait it stores key | 1 in the segment's async word for
 * that direction (ep_async_arm: a seq_cst store, then a full fence), re-checks the ring, and awaits the
 * socket. The other end, after each publish, loads the word; only if bit 0 is set does it clear the bit
 * (CAS) and send one datagram to the name (ep_async_hook.h). The word offsets below are checked against
 * the control blocks by _Static_assert in ep_ring.c and ep_latest.c.
 */
#ifndef EP_ASYNC_H
#define EP_ASYNC_H

#include <stdint.h>

#define EP_ASYNC_RING_DATA_OFF 392u     /* the consumer's async word in struct ep_ring_ctl */
#define EP_ASYNC_RING_SPACE_OFF 520u    /* the producer's async word in struct ep_ring_ctl */
#define EP_ASYNC_LATEST_DATA_OFF 520u   /* the consumer's async word in struct ep_latest_ctl */
#define EP_ASYNC_NAME_MAX 40u           /* bytes of an abstract socket name, leading NUL included */
#define EP_ASYNC_RING_TAIL_OFF 128u     /* what a spinning ring consumer watches: tail in ep_ring_ctl */
#define EP_ASYNC_RING_HEAD_OFF 256u     /* what a spinning ring producer watches: head in ep_ring_ctl */
#define EP_ASYNC_LATEST_PUB_OFF 256u    /* what a spinning latest consumer watches: published */

/* Create a non-blocking, close-on-exec datagram socket bound to the abstract name of a fresh random key
 * (retrying on a name already taken). Returns the fd and the key (bit 0 clear) through *key, or -errno. */
int ep_async_open(uint64_t *key);
/* The abstract name of `key` into buf (at least EP_ASYNC_NAME_MAX bytes): its length, leading NUL
 * included, or -EINVAL. */
int ep_async_name(uint64_t key, char *buf, uint64_t size);
/* Receive and drop up to max queued datagrams on fd: how many (0 if none), or -errno. A waiter takes
 * one per wake: one recv, and a stale datagram left behind only makes the socket readable again. */
int ep_async_drain(int fd, int max);
/* Announce key as the waiter of the async word at base + off (a full fence follows: re-check after). */
int ep_async_arm(void *base, uint64_t off, uint64_t key);
/* Withdraw key's announcement: 1 if withdrawn, 0 if a signaller took it first (its datagram is coming or
 * queued), -EINVAL for a bad offset. */
int ep_async_disarm(void *base, uint64_t off, uint64_t key);
/* The key announced at base + off (bit 0: armed), for tests and status. */
uint64_t ep_async_word(void *base, uint64_t off);
/* Signal the waiter announced at base + off, if any, as a producer's publish would: 1 if one was
 * signalled, 0 if none was announced. */
int ep_async_wake(void *base, uint64_t off);
/* The 64-bit position at base + off (one of the *_OFF watch offsets above), relaxed: the value a spin
 * is later compared with. Sample it BEFORE the try that found nothing, so a publish in between ends the
 * spin at once. 0 for a bad offset. */
uint64_t ep_async_pos(void *base, uint64_t off);
/* The bounded spin before an asyncio waiter parks: poll the position at base + off until it differs from
 * `seen` (1), spin_ns pass (0), or, checked about every microsecond, the event loop's epoll fd `epfd`
 * (-1: none) has an event ready (2: something else in the loop wants to run). Never sleeps; cffi drops
 * the GIL around it. -EINVAL for a bad offset. */
int ep_async_spin(void *base, uint64_t off, uint64_t seen, int epfd, int64_t spin_ns);
/* Datagrams sent and sends that failed (the waiter's socket was gone) by this process. */
void ep_async_counts(uint64_t *sent, uint64_t *failed);

#endif
