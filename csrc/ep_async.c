/*
 * ep_async.c: waking an asyncio task in another process (protocol in ep_async.h, the producer's inline
 * hook in ep_async_hook.h).
 *
 * Why an abstract datagram socket, not an eventfd: an eventfd lives in the waiter's process, and getting
 * it into the producer's needs either pidfd_getfd (ptrace permission, refused under yama ptrace_scope >= 1
 * or in a container without CAP_SYS_PTRACE) or an SCM_RIGHTS handshake the producer would have to accept
 * on its hot path, once per waiter and again after either side restarts. An abstract Unix name needs
 * nothing in advance: the 8-byte key in shared memory is the whole address, any process of the same
 * network namespace can send to it, and the kernel drops the name when the waiter closes its socket
 * (nothing to leak in the filesystem or /dev/shm on kill -9). The cost, measured in
 * benchmarks/async_pingpong.py, is a sendto() of one byte where an eventfd would take a write() of eight;
 * it is paid only when a waiter announced itself. A process in another network namespace cannot reach the
 * name: the Python side (edgepipe.aio) checks the peer's namespace and waits through a helper thread on
 * the futex then.
 *
 * One datagram per announcement at most: the signaller clears bit 0 by CAS before sending, so the queue
 * of a waiter's socket (net.unix.max_dgram_qlen, 10 by default) never fills with wakes for one waiter;
 * a full queue would mean a wake is already pending, which is all a waiter needs.
 *
 * The sending sockets are unbound, non-blocking datagram sockets of this process, created on first use
 * (a CAS installs each, so two threads racing create one each and one closes its own). Each datagram is
 * charged to its sending socket until the waiter reads it: a producer that wakes hundreds of waiters at
 * once fills one socket's buffer (-EAGAIN) and moves on to the next of a pool of EP_ASYNC_SENDERS; an
 * -EAGAIN from a socket with little queued is the waiter's own full queue, where a wake is pending.
 * A send that finds nothing to send to (the waiter closed or died) or no room in any socket is counted
 * in `failed`, which the tests keep at 0.
 *
 * The waiter's bounded spin (ep_async_spin) happens before any announcement and only reads: it polls the
 * other side's position for a change from a value sampled before the waiter's last try, so a publish
 * between that try and the spin still ends it, and it never replaces the announce / re-check step that
 * follows when the spin runs out. The other end's open also signals an announced waiter (ep_ring.c,
 * ep_latest.c), so a waiter that started before the other end existed learns whom to watch.
 */
#define _GNU_SOURCE
#include "edgepipe.h"
#include "ep_async_hook.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char PREFIX[] = "edgepipe-aio-";   /* after the leading NUL of an abstract name */
/* Sending sockets: a datagram is charged to its sender's buffer (about 280 one-byte datagrams in the
 * default 208 KiB) until its waiter reads it, so a producer waking many waiters at once moves on to the
 * next socket when one is full. */
#define EP_ASYNC_SENDERS 64
#define EP_ASYNC_OUTQ_SMALL 65536       /* below this a sender's -EAGAIN is the waiter's full queue */
static _Atomic int g_sock[EP_ASYNC_SENDERS] = {[0 ... EP_ASYNC_SENDERS - 1] = -1};
static _Atomic int g_cur;
static _Atomic uint64_t g_sent, g_failed;

int ep_async_name(uint64_t key, char *buf, uint64_t size)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t n = 1 + sizeof(PREFIX) - 1 + 16;
    if (!buf || size < n)
        return -EINVAL;
    key &= ~(uint64_t)1;
    buf[0] = '\0';
    memcpy(buf + 1, PREFIX, sizeof(PREFIX) - 1);
    char *p = buf + sizeof(PREFIX);
    for (int i = 15; i >= 0; i--, key >>= 4)
        p[i] = hex[key & 15u];
    return (int)n;
}

static socklen_t addr_of(uint64_t key, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    int n = ep_async_name(key, sa->sun_path, sizeof(sa->sun_path));
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n);
}

int ep_async_open(uint64_t *key)
{
    if (!key)
        return -EINVAL;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    for (int tries = 0; tries < 16; tries++) {
        uint64_t k;
        if (getrandom(&k, sizeof(k), 0) != (ssize_t)sizeof(k)) {
            int e = errno;
            close(fd);
            return -e;
        }
        k &= ~(uint64_t)1;
        if (k == 0)
            continue;
        struct sockaddr_un sa;
        socklen_t len = addr_of(k, &sa);
        if (bind(fd, (struct sockaddr *)&sa, len) == 0) {
            *key = k;
            return fd;
        }
        if (errno != EADDRINUSE) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    close(fd);
    return -EADDRINUSE;
}

int ep_async_drain(int fd, int max)
{
    char b[16];
    int n = 0;
    while (n < max) {
        ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
        if (r >= 0) {
            n++;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return n;
        return -errno;
    }
    return n;
}

static _Atomic uint64_t *word_at(void *base, uint64_t off)
{
    if (!base || (off != EP_ASYNC_RING_DATA_OFF && off != EP_ASYNC_RING_SPACE_OFF &&
                  off != EP_ASYNC_LATEST_DATA_OFF))
        return NULL;
    return (_Atomic uint64_t *)((char *)base + off);
}

int ep_async_arm(void *base, uint64_t off, uint64_t key)
{
    _Atomic uint64_t *w = word_at(base, off);
    if (!w || (key & 1u) || key == 0)
        return -EINVAL;
    atomic_store(w, key | 1u);
    /* Dekker step: the announcement is ordered before the caller's re-check of the position. Pairs with
     * the fence before ep_async_notify() in the publish paths (ep_wait_notify / ep_wait_wake_all). */
    ep_fence_seq_cst();
    return 0;
}

int ep_async_disarm(void *base, uint64_t off, uint64_t key)
{
    _Atomic uint64_t *w = word_at(base, off);
    if (!w)
        return -EINVAL;
    uint64_t v = key | 1u;
    /* Fails if a signaller cleared the bit first (its datagram is on its way) or another waiter
     * announced since: either way not ours to touch. */
    return atomic_compare_exchange_strong(w, &v, key) ? 1 : 0;
}

uint64_t ep_async_word(void *base, uint64_t off)
{
    _Atomic uint64_t *w = word_at(base, off);
    return w ? atomic_load(w) : 0;
}

int ep_async_wake(void *base, uint64_t off)
{
    _Atomic uint64_t *w = word_at(base, off);
    if (!w)
        return -EINVAL;
    ep_fence_seq_cst();                 /* the caller's stores come before the look at the word */
    uint64_t v = ep_load_relaxed(w);
    if (!(v & 1u))
        return 0;
    ep_async_signal(w, v);
    return 1;
}

static _Atomic uint64_t *pos_at(void *base, uint64_t off)
{
    if (!base || (off != EP_ASYNC_RING_TAIL_OFF && off != EP_ASYNC_RING_HEAD_OFF &&
                  off != EP_ASYNC_LATEST_PUB_OFF))
        return NULL;
    return (_Atomic uint64_t *)((char *)base + off);
}

uint64_t ep_async_pos(void *base, uint64_t off)
{
    _Atomic uint64_t *p = pos_at(base, off);
    /* Relaxed: only compared for change; the caller's try does the acquire that pairs with the
     * publish's release. */
    return p ? ep_load_relaxed(p) : 0;
}

int ep_async_spin(void *base, uint64_t off, uint64_t seen, int epfd, int64_t spin_ns)
{
    _Atomic uint64_t *p = pos_at(base, off);
    if (!p)
        return -EINVAL;
    int64_t end = ep_clock_mono_ns() + (spin_ns > 0 ? spin_ns : 0);
    for (unsigned it = 1;; it++) {
        /* Relaxed: a change only ends the spin; the caller's try then loads with acquire (pairs with
         * the release of the position in publish() / consume() / the latest slot's publish). */
        if (ep_load_relaxed(p) != seen)
            return 1;
        ep_cpu_relax();
        if ((it & 15u) == 0) {
            if (ep_clock_mono_ns() >= end)
                return 0;
            /* An epoll fd polls readable while any fd registered with it is ready: I/O, another
             * thread's call_soon_threadsafe, a signal's wakeup fd. One syscall about every 1 us. */
            struct pollfd pfd = {.fd = epfd, .events = POLLIN};
            if (epfd >= 0 && poll(&pfd, 1, 0) > 0)
                return 2;
        }
    }
}

/* Sending socket i of the pool, created on first use; -1 if socket() fails. */
static int sender(int i)
{
    int fd = ep_load_relaxed(&g_sock[i]);
    if (fd >= 0)
        return fd;
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int expect = -1;
    if (!atomic_compare_exchange_strong(&g_sock[i], &expect, fd)) {
        close(fd);                      /* another thread installed one first */
        return expect;
    }
    return fd;
}

__attribute__((noinline, cold)) void ep_async_signal(_Atomic uint64_t *word, uint64_t v)
{
    /* Take the announcement: only one signaller sends for it. */
    if (!atomic_compare_exchange_strong(word, &v, v & ~(uint64_t)1))
        return;
    struct sockaddr_un sa;
    socklen_t len = addr_of(v, &sa);
    char one = 1;
    int first = ep_load_relaxed(&g_cur);
    for (int k = 0; k < EP_ASYNC_SENDERS; k++) {
        int i = (first + k) % EP_ASYNC_SENDERS;
        int fd = sender(i);
        if (fd < 0)
            break;
        ssize_t r;
        do
            r = sendto(fd, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
        while (r < 0 && errno == EINTR);
        if (r == 1) {
            if (k)
                ep_store_relaxed(&g_cur, i);
            atomic_fetch_add_explicit(&g_sent, 1, memory_order_relaxed);
            return;
        }
        if (errno != EAGAIN) {
            /* Its socket is gone (it closed or died): nobody to wake. */
            atomic_fetch_add_explicit(&g_failed, 1, memory_order_relaxed);
            return;
        }
        /* -EAGAIN: either the waiter's queue is full (a wake is pending there: done) or this sending
         * socket's buffer is, by datagrams still unread at other waiters: try the next socket. */
        int outq = 0;
        if (ioctl(fd, SIOCOUTQ, &outq) == 0 && outq < EP_ASYNC_OUTQ_SMALL) {
            atomic_fetch_add_explicit(&g_sent, 1, memory_order_relaxed);
            return;
        }
    }
    atomic_fetch_add_explicit(&g_failed, 1, memory_order_relaxed);
}

void ep_async_counts(uint64_t *sent, uint64_t *failed)
{
    if (sent)
        *sent = atomic_load_explicit(&g_sent, memory_order_relaxed);
    if (failed)
        *failed = atomic_load_explicit(&g_failed, memory_order_relaxed);
}
