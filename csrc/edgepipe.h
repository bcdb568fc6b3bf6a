/*
 * edgepipe.h: the binding surface of the C core. Every ep_* function Python may call is declared here,
 * and csrc/ffi_build.py's cdef repeats these declarations (API mode lets the compiler check the two
 * against each other). Structs that hold atomics stay opaque; the few structs Python reads field by
 * field (status, clock map, the reader's io block) are plain integers.
 *
 * Return convention: 0 or a byte count/offset on success, -errno on failure:
 *   -EAGAIN full/empty, -EMSGSIZE record too big, -EPIPE peer gone, -EBADMSG corrupt or foreign region,
 *   -EPROTO wrong layout version, -ETIMEDOUT a timed wait expired, -EINVAL bad argument,
 *   -EBUSY the end is held by a live process, -EBADF a NULL (closed) handle, -ENOBUFS the caller's
 *   buffer is smaller than the next record, -EINTR a signal arrived during a wait (call again),
 *   -ECANCELED the handle was cancelled from another thread, -EXDEV the other end (or the holder of this
 *   end) lives in another pid namespace, so its liveness can't be judged.
 * Every function that takes a handle returns -EBADF for a NULL handle (pointer getters return NULL).
 * Lengths are 64-bit both ways (int64_t returns): a payload never comes back truncated to int.
 * Region functions take the mapping's size and check it before reading; open functions also take the
 * segment's fd (-1: none) so the ends can notice a segment truncated under the mapping (-EBADMSG).
 */
#ifndef EDGEPIPE_H
#define EDGEPIPE_H

#include <stdint.h>

/* ---- clock (ep_clock.c) ---- */
struct ep_clock_map {
    int64_t raw_ns;         /* CLOCK_MONOTONIC_RAW */
    int64_t mono_ns;        /* CLOCK_MONOTONIC at the same instant */
    int64_t wall_ns;        /* CLOCK_REALTIME at the same instant */
    int64_t uncertainty_ns; /* width of the tightest sampling window */
};
int64_t ep_clock_now_ns(void);
int64_t ep_clock_mono_ns(void);
int64_t ep_clock_wall_ns(void);
int ep_clock_map(struct ep_clock_map *out);

/* ---- shared memory segments (ep_shm.c) ---- */
#define EP_SHM_NAME_MAX 200 /* characters in a user-visible segment name */
int ep_shm_name_check(const char *name);
int ep_shm_create(const char *name, uint64_t size);
int ep_shm_open(const char *name);
int ep_shm_unlink(const char *name);
int ep_memfd_create(const char *label, uint64_t size);
int ep_shm_size(int fd, uint64_t *size);
int ep_shm_map(int fd, uint64_t size, void **addr);
int ep_shm_unmap(void *addr, uint64_t size);

/* ---- SPSC ring (ep_ring.c) ---- */
#define EP_RING_MAGIC 0x45505247u /* "EPRG" */
#define EP_RING_VERSION 3u              /* 2: owner gens, pid namespace, notified positions; 3: async words */
#define EP_RING_DATA_OFF 4096u          /* the data area starts one page into the region */
#define EP_RING_MIN_CAPACITY 64u
#define EP_RING_MAX_CAPACITY (1ull << 40)
#define EP_REC_HDR 8u                   /* {u32 len; u32 type} */
#define EP_REC_PAD 0xFFFFFFFFu          /* record type of the filler at the wrap; never user-visible */
#define EP_REC_MAX_LEN 0xFFFFFFF8u      /* the u32 length field caps a payload, whatever the capacity */
#define EP_WAIT_SPIN 0                  /* spin in C until ready, the deadline or peer death */
#define EP_WAIT_PARK 1                  /* park on the futex at once */
#define EP_WAIT_HYBRID 2                /* spin for spin_ns, then park (the default) */
#define EP_DEFAULT_SPIN_NS 25000        /* fallback: one futex wake on an x86 VM (Python measures it) */
#define EP_PEER_CHECK_NS 50000000       /* a waiting end checks its peer at least this often */

struct ep_ring_status {
    uint32_t magic, version;
    uint64_t capacity, max_payload, region_size;
    uint64_t head, tail, used;
    uint64_t records_written, records_read;
    uint64_t full_events;        /* try_write found no room */
    uint64_t producer_parks, consumer_parks;     /* futex waits entered */
    uint64_t producer_wakes, consumer_wakes;     /* futex wakes issued (producer wakes the consumer) */
    uint64_t late_wakeups;       /* parks that slept past a fully notified publish: lost wakeups (must stay 0) */
    int32_t creator_pid, producer_pid, consumer_pid;
    uint32_t producer_closed, consumer_closed;
    int64_t producer_beat_ns, consumer_beat_ns;  /* CLOCK_MONOTONIC_RAW of the last sign of life */
};

/* Read by Python after peek/try_read without another call: where the current record is. */
struct ep_ring_io {
    uint64_t off;  /* payload offset from the start of the data area */
    uint32_t len;  /* payload bytes */
    uint32_t type; /* record type */
};

uint64_t ep_ring_region_size(uint64_t capacity);
int ep_ring_init(void *base, uint64_t region_size, uint64_t capacity);
int ep_ring_check(const void *base, uint64_t region_size);
int ep_ring_status(const void *base, uint64_t region_size, struct ep_ring_status *out);

struct ep_ring_writer;
int ep_ring_writer_open(void *base, uint64_t region_size, int fd, struct ep_ring_writer **out);
int ep_ring_writer_close(struct ep_ring_writer *w);
int ep_ring_writer_set_wait(struct ep_ring_writer *w, int mode, int64_t spin_ns);
int64_t ep_ring_try_write(struct ep_ring_writer *w, const void *buf, uint64_t len, uint32_t type);
int64_t ep_ring_write(struct ep_ring_writer *w, const void *buf, uint64_t len, uint32_t type,
                      int64_t timeout_ns);
int64_t ep_ring_claim(struct ep_ring_writer *w, uint64_t len);
int64_t ep_ring_commit(struct ep_ring_writer *w, uint64_t len, uint32_t type);
int ep_ring_abort(struct ep_ring_writer *w);
int64_t ep_ring_try_write_batch(struct ep_ring_writer *w, const void *buf, const uint32_t *lens,
                                uint32_t n, uint32_t type);
int64_t ep_ring_try_write_fixed(struct ep_ring_writer *w, const void *buf, uint32_t size, uint32_t n,
                                uint32_t type);
int ep_ring_writer_wait(struct ep_ring_writer *w, uint64_t len, int64_t timeout_ns);
int ep_ring_writer_cancel(struct ep_ring_writer *w);

struct ep_ring_reader;
int ep_ring_reader_open(void *base, uint64_t region_size, int fd, struct ep_ring_reader **out);
int ep_ring_reader_close(struct ep_ring_reader *r);
int ep_ring_reader_set_wait(struct ep_ring_reader *r, int mode, int64_t spin_ns);
struct ep_ring_io *ep_ring_reader_io(struct ep_ring_reader *r);
void *ep_ring_reader_scratch(struct ep_ring_reader *r);
int64_t ep_ring_try_read(struct ep_ring_reader *r);
int64_t ep_ring_read(struct ep_ring_reader *r, int64_t timeout_ns);
int64_t ep_ring_peek(struct ep_ring_reader *r);
int ep_ring_release(struct ep_ring_reader *r);
int64_t ep_ring_try_read_batch(struct ep_ring_reader *r, void *buf, uint64_t buf_size, uint32_t *lens,
                               uint32_t *types, uint32_t max_n);
int ep_ring_reader_wait(struct ep_ring_reader *r, int64_t timeout_ns);
int ep_ring_reader_cancel(struct ep_ring_reader *r);

/* ---- waiting: what a parked wake costs here (ep_wait_calib.c) ---- */
/* Half the median round trip of two threads parking on shared futex words, over `rounds` round trips
 * (1..100000) after a warm-up: ns, or -errno (-ETIMEDOUT if a wake took over a second). Blocks for about
 * rounds x 2 wakes; spawns and joins one thread; pins the two to two different CPUs if the machine has
 * two (the partner outside the caller's mask if need be), and restores the caller's mask. */
int64_t ep_wait_wake_cost_ns(uint32_t rounds);

#include "ep_frame.h"
#include "ep_ahrs.h"
#include "ep_imu.h"
#include "ep_image.h"
#include "ep_latest.h"
#include "ep_async.h"
#endif
