/*
 * ep_peer.h: presence and liveness of the two ends of a shared segment (ep_peer.c). Internal to the C core:
 * the ring (ep_ring.c) and the latest slot (ep_latest.c) embed struct ep_end in their control blocks and
 * keep a struct ep_peer per open end; nothing here is part of the Python binding.
 */
#ifndef EP_PEER_H
#define EP_PEER_H

#include "ep_atomic.h"

#include <stdint.h>

enum { EP_END_NONE = 0, EP_END_OPENING = 1, EP_END_OPEN = 2, EP_END_CLOSED = 3 };

/* One end's presence, in shared memory (cold: written on open, close and during waits). */
struct ep_end {
    _Atomic uint64_t owner;         /* pid << 32 | gen << 16 | EP_END_* state; changed only by CAS or its owner */
    _Atomic uint64_t start;         /* gen << 48 | the owner's start time in clock ticks (low 48 bits) */
    _Atomic uint64_t pidns;         /* inode of the owner's pid namespace, 0 if unknown; valid with `start` */
    _Atomic int64_t beat_ns;        /* CLOCK_MONOTONIC_RAW of the last sign of life */
    _Atomic uint64_t parks;         /* futex waits this end entered */
    _Atomic uint64_t wakes;         /* futex wakes this end issued to the other */
    _Atomic uint64_t late_wakeups;  /* parks that slept past a fully notified publish (a lost wakeup) */
    _Atomic uint64_t full_events;   /* ring producer only: try_write found no room */
};

/* Process-local: how one end watches the other end and the segment both live in. */
struct ep_peer {
    int32_t pid;                    /* the pid pidfd refers to, 0 if none */
    uint32_t gen;                   /* the owner generation that pid was checked for */
    int pidfd;                      /* -1 if none or unsupported */
    int dead;                       /* sticky: that pid (in that generation) was found dead or reused */
    int segfd;                      /* our own dup of the segment's fd for the truncation check, -1 if none */
    uint64_t seg_size;              /* bytes the segment must keep */
    _Atomic int *bus_hit;           /* set by the SIGBUS guard when an access hit a truncated page (never
                                     * NULL: points at a constant 0 when the mapping is not guarded) */
    int guard_slot;                 /* our slot in the guard's registry, -1 if none */
    uint64_t my_ns;                 /* our pid namespace, read once at init (0: unknown) */
    int64_t next_check_ns;          /* rate limit for ep_peer_poll() */
    int64_t wait_check_ns;          /* when a wait last checked (carried across calls, so waits cut into
                                     * slices still check every EP_PEER_CHECK_NS) */
};

static inline int32_t ep_owner_pid(uint64_t o) { return (int32_t)(uint32_t)(o >> 32); }
static inline uint32_t ep_owner_gen(uint64_t o) { return (uint32_t)(o >> 16) & 0xFFFFu; }
static inline uint32_t ep_owner_state(uint64_t o) { return (uint32_t)o & 0xFFu; }

/* Watch a segment of `size` bytes mapped at `base` through `fd` (-1: no truncation checks). Dups fd and,
 * if the segment can be truncated (not sealed against shrinking), registers the mapping with the SIGBUS
 * guard (see ep_peer.c). 0 or -errno. */
int ep_peer_init(struct ep_peer *p, void *base, int fd, uint64_t size);

/* Hot-path check after touching the mapping: did an access hit a page a truncation removed? One relaxed
 * load of a process-local word. */
static inline int ep_peer_bus_hit(const struct ep_peer *p)
{
    return __builtin_expect(ep_load_relaxed(p->bus_hit) != 0, 0);
}
void ep_peer_drop(struct ep_peer *p);

/* The segment is shorter than the mapping (another process truncated it): -EBADMSG, else 0. */
int ep_peer_segment_check(const struct ep_peer *p);

/* Take end `e` for this process: 0, -EBUSY if a live process holds it, -EXDEV if its holder or the other
 * end `other` lives in another pid namespace (its pid means nothing here, so it can't be judged dead). */
int ep_end_open(struct ep_end *e, const struct ep_end *other, int32_t *pid_out);
/* Mark our end closed (release): only if we still own it. */
void ep_end_close(struct ep_end *e, int32_t me);
void ep_end_status(const struct ep_end *e, int32_t *pid, uint32_t *closed, int64_t *beat);

/* Did the other end close? Acquire: what it published before closing is visible. */
static inline int ep_peer_closed(const struct ep_end *e)
{
    /* Acquire: pairs with the release CAS of owner in ep_end_close(). */
    return ep_owner_state(ep_load_acquire(&((struct ep_end *)e)->owner)) == EP_END_CLOSED;
}

/* Is the other end gone? 0 no (or not opened yet), -EPIPE closed or its process dead (a zombie, or its pid
 * reused by another process), -EXDEV it lives in another pid namespace, -EBADMSG the segment was
 * truncated. One pidfd poll per call: for waits (ep_wait.c), or rate-limited through ep_peer_poll(). */
int ep_peer_check(struct ep_peer *p, struct ep_end *e);
/* ep_peer_check() at most once a millisecond (0 in between), for paths that poll without waiting; a peer
 * already found dead answers at once. */
int ep_peer_poll(struct ep_peer *p, struct ep_end *e);

#endif
