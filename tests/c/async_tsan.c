/*
 * async_tsan.c: a two-thread harness for the async wait of csrc/ep_async.c over a ring, meant to run under
 * -fsanitize=thread and as a plain -O2 build. Each thread waits the way edgepipe.aio does, with poll() in
 * place of the event loop: try; announce (ep_async_arm); try again; poll its own datagram socket; take one
 * datagram; withdraw (ep_async_disarm). The consumer waits on the data word for records, the producer on
 * the space word for room in a 256-byte ring (so it is full most of the time); both pause now and then so
 * the other really sleeps. Every other wait first spins as edgepipe.aio does when its loop is idle: sample
 * the position (ep_async_pos), try, spin up to SPIN_NS on the position and on an epoll fd holding the
 * thread's own socket (ep_async_spin), try again, and only then announce.
 *
 * A poll that sleeps POLL_MS with the other thread still running is a lost wakeup: the harness fails on it,
 * on a record out of order or corrupt, and on a count that does not add up. The producer's close signals
 * the consumer's word, which ends the run (the consumer then sees -EPIPE).
 *
 *   gcc -std=gnu11 -O1 -g -fsanitize=thread -pthread -Icsrc tests/c/async_tsan.c csrc/ep_ring.c csrc/ep_peer.c \
 *       csrc/ep_wait.c csrc/ep_async.c csrc/ep_shm.c csrc/ep_clock.c -o async_tsan && ./async_tsan [records]
 */
#define _GNU_SOURCE
#include "edgepipe.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <sys/epoll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CAP 256u
#define POLL_MS 20000       /* far beyond any scheduling delay, even under TSan on a loaded VM */

static uint8_t *g_base;
static uint64_t g_size, g_n;
static int g_fail;
static _Atomic uint64_t g_spins, g_spin_hits;
#define SPIN_NS 3000

static uint32_t rec_len(uint64_t s) { return 8u + (uint32_t)((s * 2654435761u) % 41u); }
static uint8_t rec_byte(uint64_t s, uint32_t i) { return (uint8_t)(s * 31u + i * 7u); }

static void pause_now_and_then(uint64_t s, uint64_t salt)
{
    if (((s * 0x9E3779B97F4A7C15ull + salt) >> 58) == 0) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
}

/* One wait as edgepipe.aio does it, around attempt() (the non-blocking try: 1 done, 0 not now, -1 failed):
 * announce, attempt again (the re-check), sleep in poll() on our socket, take one datagram, withdraw.
 * Returns attempt()'s 1 or -1 from the re-check, 0 after a wake, -2 after a poll that timed out. */
static int await_word(int fd, uint64_t key, uint64_t off, int (*attempt)(void *), void *ctx, uint64_t *sleeps,
                      int epfd)
{
    static __thread unsigned calls;
    if (++calls & 1u) {
        uint64_t watch = off == EP_ASYNC_RING_DATA_OFF ? EP_ASYNC_RING_TAIL_OFF : EP_ASYNC_RING_HEAD_OFF;
        uint64_t seen = ep_async_pos(g_base, watch);     /* before the try, as edgepipe.aio does */
        int rc = attempt(ctx);
        if (rc)
            return rc;
        g_spins++;
        int src = ep_async_spin(g_base, watch, seen, epfd, SPIN_NS);
        if (src < 0)
            return -1;
        if (src == 1) {
            g_spin_hits++;
            if ((rc = attempt(ctx)))
                return rc;
        }
    }
    if (ep_async_arm(g_base, off, key))
        return -1;
    int rc = attempt(ctx);
    if (rc) {
        ep_async_disarm(g_base, off, key);
        return rc;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int prc = poll(&p, 1, POLL_MS);
    ++*sleeps;
    ep_async_drain(fd, 1);
    ep_async_disarm(g_base, off, key);
    return prc == 0 ? -2 : 0;
}

/* An epoll fd watching fd, as the event loop's would: a stale datagram on it ends a spin (2). */
static int watched(int fd)
{
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (fd < 0 || epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)) {
        if (epfd >= 0)
            close(epfd);
        return -1;
    }
    return epfd;
}

struct prod {
    struct ep_ring_writer *w;
    uint8_t buf[64];
    uint32_t len;
};

static int put(void *ctx)
{
    struct prod *p = ctx;
    int64_t rc = ep_ring_try_write(p->w, p->buf, p->len, 1);
    if (rc >= 0)
        return 1;
    if (rc == -EAGAIN)
        return 0;
    fprintf(stderr, "try_write: %" PRId64 "\n", rc);
    return -1;
}

static void *producer(void *arg)
{
    (void)arg;
    struct prod p = {0};
    uint64_t sleeps = 0;
    if (ep_ring_writer_open(g_base, g_size, -1, &p.w)) {
        g_fail = 1;
        return NULL;
    }
    uint64_t key;
    int fd = ep_async_open(&key);
    int epfd = watched(fd);
    if (fd < 0 || epfd < 0) {
        g_fail = 1;
        return NULL;
    }
    for (uint64_t s = 0; s < g_n && !g_fail; s++) {
        p.len = rec_len(s);
        memcpy(p.buf, &s, 8);
        for (uint32_t i = 8; i < p.len; i++)
            p.buf[i] = rec_byte(s, i);
        int rc;
        while ((rc = put(&p)) == 0) {
            rc = await_word(fd, key, EP_ASYNC_RING_SPACE_OFF, put, &p, &sleeps, epfd);
            if (rc == 1)
                break;
            if (rc == -2)
                fprintf(stderr, "producer: lost wakeup at record %" PRIu64 "\n", s);
            if (rc < 0)
                break;
        }
        if (rc < 0) {
            g_fail = 1;
            break;
        }
        pause_now_and_then(s, 1);
    }
    printf("producer: %" PRIu64 " sleeps\n", sleeps);
    ep_ring_writer_close(p.w);  /* signals the consumer's word: ends its last wait */
    close(epfd);
    close(fd);
    return NULL;
}

struct cons {
    struct ep_ring_reader *r;
    uint8_t *scratch;
    uint64_t next;
    int closed;
};

/* Take and check one record: 1 taken (or the ring closed and drained), 0 empty, -1 failed. */
static int take(void *ctx)
{
    struct cons *c = ctx;
    int64_t n = ep_ring_try_read(c->r);
    if (n == -EAGAIN)
        return 0;
    if (n == -EPIPE) {
        c->closed = 1;
        return 1;
    }
    if (n < 0) {
        fprintf(stderr, "try_read: %" PRId64 "\n", n);
        return -1;
    }
    uint64_t s;
    memcpy(&s, c->scratch, 8);
    int bad = s != c->next || (uint32_t)n != rec_len(s);
    for (uint32_t i = 8; !bad && i < (uint32_t)n; i++)
        bad = c->scratch[i] != rec_byte(s, i);
    if (bad) {
        fprintf(stderr, "record %" PRIu64 ": got seq %" PRIu64 " len %" PRId64 "\n", c->next, s, n);
        return -1;
    }
    c->next++;
    pause_now_and_then(s, 2);
    return 1;
}

int main(int argc, char **argv)
{
    g_n = argc > 1 ? strtoull(argv[1], NULL, 10) : 200000;
    g_size = ep_ring_region_size(CAP);
    int mfd = ep_memfd_create("async_tsan", g_size);
    void *addr;
    if (mfd < 0 || ep_shm_map(mfd, g_size, &addr) || ep_ring_init(addr, g_size, CAP)) {
        fprintf(stderr, "setup failed\n");
        return 2;
    }
    g_base = addr;
    struct cons c = {0};
    if (ep_ring_reader_open(g_base, g_size, -1, &c.r))
        return 2;
    c.scratch = ep_ring_reader_scratch(c.r);
    uint64_t key;
    int fd = ep_async_open(&key);
    int epfd = watched(fd);
    if (fd < 0 || epfd < 0)
        return 2;
    pthread_t t;
    pthread_create(&t, NULL, producer, NULL);
    uint64_t sleeps = 0;
    while (!c.closed && !g_fail) {
        int rc = take(&c);
        if (rc == 0)
            rc = await_word(fd, key, EP_ASYNC_RING_DATA_OFF, take, &c, &sleeps, epfd);
        if (rc == -2)
            fprintf(stderr, "consumer: lost wakeup at record %" PRIu64 "\n", c.next);
        if (rc < 0)
            g_fail = 1;
    }
    pthread_join(t, NULL);
    uint64_t sent, failed;
    ep_async_counts(&sent, &failed);
    printf("consumer: %" PRIu64 " records, %" PRIu64 " sleeps; datagrams sent %" PRIu64 ", failed %" PRIu64
           "; spins %" PRIu64 ", ended by the position %" PRIu64 "\n",
           c.next, sleeps, sent, failed, (uint64_t)g_spins, (uint64_t)g_spin_hits);
    if (!g_fail && (c.next != g_n || failed != 0 || sleeps == 0 || g_spins == 0)) {
        fprintf(stderr, "counts do not add up\n");
        g_fail = 1;
    }
    ep_ring_reader_close(c.r);
    close(epfd);
    close(fd);
    if (g_fail)
        return 1;
    printf("async_tsan: OK\n");
    return 0;
}
