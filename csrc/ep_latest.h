/*
 * ep_latest.h: the latest-only slot (ep_latest.c), a lock-free triple buffer over a mapped region for one
 * producer and one consumer. The producer never waits; the consumer always gets the newest frame.
 */
#ifndef EP_LATEST_H
#define EP_LATEST_H

#include <stdint.h>

#define EP_LATEST_MAGIC 0x544C5045u   /* "EPLT" */
#define EP_LATEST_VERSION 4u           /* 3: presence as in ring, publish count in the state; 4: async word */
#define EP_LATEST_CTL_SIZE 4096u      /* buffers start one page into the region */
#define EP_LATEST_MIN_BUFS 3u
#define EP_LATEST_MAX_BUFS 8u
#define EP_LATEST_MAX_FRAME (1ull << 36)

struct ep_latest_status {
    uint32_t magic, version;
    uint64_t max_frame_bytes, slot_size, region_size;
    uint32_t nbuf;
    uint32_t fresh;              /* a published frame is waiting that the consumer has not taken */
    uint64_t published;          /* frames the producer published */
    uint64_t delivered;          /* frames the consumer took */
    uint64_t overwritten;        /* frames replaced before the consumer took them */
    uint64_t consumer_parks;     /* futex waits the consumer entered */
    uint64_t late_wakeups;       /* parks that slept past a fully notified publish: lost wakeups (must stay 0) */
    int32_t creator_pid, producer_pid, consumer_pid;
    uint32_t producer_closed, consumer_closed;
};

uint64_t ep_latest_slot_size(uint64_t max_frame_bytes);
uint64_t ep_latest_region_size(uint64_t max_frame_bytes, uint32_t nbuf);
int ep_latest_init(void *base, uint64_t region_size, uint64_t max_frame_bytes, uint32_t nbuf);
int ep_latest_check(const void *base, uint64_t region_size);
int ep_latest_status(const void *base, uint64_t region_size, struct ep_latest_status *out);

struct ep_latest_writer;
int ep_latest_writer_open(void *base, uint64_t region_size, int fd, struct ep_latest_writer **out);
int ep_latest_writer_close(struct ep_latest_writer *w);
int64_t ep_latest_writer_slot(struct ep_latest_writer *w);
int ep_latest_publish(struct ep_latest_writer *w);

struct ep_latest_reader;
int ep_latest_reader_open(void *base, uint64_t region_size, int fd, struct ep_latest_reader **out);
int ep_latest_reader_close(struct ep_latest_reader *r);
int ep_latest_reader_cancel(struct ep_latest_reader *r);
int ep_latest_reader_set_spin(struct ep_latest_reader *r, int64_t spin_ns);
uint32_t ep_latest_reader_owned(struct ep_latest_reader *r);
int ep_latest_try_take(struct ep_latest_reader *r, uint32_t give);
int ep_latest_wait(struct ep_latest_reader *r, int64_t timeout_ns);

#endif
