/*
 * ep_frame.c: length-prefixed frames on AF_UNIX stream sockets (see ep_frame.h for the contract).
 *
 * Owns: the wire format (u32 little-endian length, then the payload), short reads and writes, EINTR
 * from the I/O calls, deadlines, and SCM_RIGHTS descriptors riding on a frame's header.
 *
 * Every sendmsg/recvmsg is non-blocking (MSG_DONTWAIT, whatever the socket's O_NONBLOCK says); only
 * ppoll() waits, so one absolute CLOCK_MONOTONIC deadline bounds the whole frame however many short
 * transfers it takes. An EINTR from the I/O calls themselves is retried here (they never block, so a
 * signal there is only bad luck); an EINTR from ppoll() is returned, with the progress in the caller's
 * struct ep_frame_io, so Python can run its signal handlers (Ctrl-C) and call again to resume.
 *
 * Invariants: io->done only grows within a frame. Without read-ahead a receive never reads past the end
 * of the frame it is in (the header on its own, then exactly len payload bytes), so the next frame's fds
 * and bytes stay in the socket. With read-ahead (io->ra) one recvmsg may take several frames; the bytes
 * wait in io->ra and fds that came ahead of their frame wait in io->ra_fds, tagged with the stream
 * offset of that frame's first byte (ep_frame.h says why that frame is known). Received fds are
 * installed O_CLOEXEC.
 */
#define _GNU_SOURCE
#include "ep_frame.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(((struct ep_frame_io *)0)->fds) == sizeof(int) * EP_FRAME_MAX_FDS,
               "struct ep_frame_io.fds must hold EP_FRAME_MAX_FDS descriptors");
_Static_assert(sizeof(((struct ep_frame_io *)0)->hdr) == EP_FRAME_HDR, "one header");

union ep_frame_ctl {
    char buf[CMSG_SPACE(sizeof(int) * EP_FRAME_MAX_FDS)];
    struct cmsghdr align;
};

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Wait until fd is ready for `events`, the deadline passes (-ETIMEDOUT) or a signal arrives (-EINTR).
 * Returns 0 on readiness, including POLLHUP/POLLERR: the I/O call that follows reports which. */
static int wait_fd(int fd, short events, int64_t deadline_ns)
{
    struct pollfd p = {.fd = fd, .events = events};
    struct timespec ts, *tsp = NULL;
    if (deadline_ns >= 0) {
        int64_t left = deadline_ns - mono_ns();
        if (left <= 0)
            return -ETIMEDOUT;
        ts.tv_sec = left / 1000000000;
        ts.tv_nsec = left % 1000000000;
        tsp = &ts;
    }
    int n = ppoll(&p, 1, tsp, NULL);
    if (n < 0)
        return -errno;
    if (n == 0)
        return -ETIMEDOUT;
    if (p.revents & POLLNVAL)
        return -EBADF;
    return 0;
}

int ep_frame_send(int fd, struct ep_frame_io *io, const void *buf, uint32_t len, const int *fds,
                  int nfds, int64_t deadline_ns)
{
    if (!io || fd < 0 || (len && !buf) || nfds < 0 || nfds > EP_FRAME_MAX_FDS || (nfds && !fds))
        return -EINVAL;
    if (len > INT_MAX)
        return -EMSGSIZE; /* the byte count must fit the int we return */
    const uint8_t hdr[EP_FRAME_HDR] = {(uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16),
                                       (uint8_t)(len >> 24)};
    const uint64_t total = EP_FRAME_HDR + (uint64_t)len;
    union ep_frame_ctl ctl;

    while (io->done < total) {
        struct iovec iov[2];
        int n = 0;
        if (io->done < EP_FRAME_HDR) {
            iov[n].iov_base = (void *)(hdr + io->done);
            iov[n++].iov_len = EP_FRAME_HDR - io->done;
        }
        uint64_t poff = io->done < EP_FRAME_HDR ? 0 : io->done - EP_FRAME_HDR;
        if (poff < len) {
            iov[n].iov_base = (char *)buf + poff;
            iov[n++].iov_len = len - poff;
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = n};
        if (io->done == 0 && nfds > 0) {
            /* The fds ride on the first byte of the header; the kernel hands them to the reader
             * with the recvmsg that takes that byte. */
            memset(&ctl, 0, sizeof ctl);
            m.msg_control = ctl.buf;
            m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
            struct cmsghdr *c = CMSG_FIRSTHDR(&m);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
            memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
        }
        ssize_t k = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            io->done += (uint64_t)k;
            continue;
        }
        if (k == 0 || errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_fd(fd, POLLOUT, deadline_ns);
            if (rc < 0)
                return rc;
            continue;
        }
        if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)
            return -EPIPE;
        return -errno;
    }
    io->done = 0; /* ready for the next frame */
    return (int)len;
}

/* Take the fds of every SCM_RIGHTS message in m into fds[*n..]; close what does not fit. */
static void take_fds(int32_t *fds, int32_t *n, int32_t *truncated, struct msghdr *m)
{
    if (m->msg_flags & MSG_CTRUNC)
        *truncated = 1; /* the kernel dropped (and closed) what did not fit our buffer */
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *p = CMSG_DATA(c);
        for (size_t i = 0; i < k; i++) {
            int f;
            memcpy(&f, p + i * sizeof(int), sizeof f);
            if (*n < EP_FRAME_MAX_FDS) {
                fds[(*n)++] = f;
            } else {
                close(f);
                *truncated = 1;
            }
        }
    }
}

/* Account k more bytes of the current frame; decode the length once the header is complete. */
static void advance(struct ep_frame_io *io, uint64_t k)
{
    uint64_t before = io->done;
    io->done += k;
    io->ra_pos += k;
    if (before < EP_FRAME_HDR && io->done >= EP_FRAME_HDR)
        io->len = (uint32_t)io->hdr[0] | (uint32_t)io->hdr[1] << 8 | (uint32_t)io->hdr[2] << 16 |
                  (uint32_t)io->hdr[3] << 24;
}

/* The frame that owns fds which came with a read-ahead chunk of n bytes at stream offset io->ra_pos:
 * the last frame starting inside the chunk, else the current frame (see ep_frame.h). Header bytes
 * before the chunk can only be the current frame's, already in io->hdr. */
static uint64_t fd_owner(const struct ep_frame_io *io, uint64_t n, uint32_t max_len)
{
    const uint64_t first = io->ra_pos - io->done, chunk = io->ra_pos, end = chunk + n;
    uint64_t owner = first;
    for (uint64_t s = first; s < end;) {
        if (s >= chunk)
            owner = s;
        if (s + EP_FRAME_HDR > end)
            break;
        uint32_t len = 0;
        for (int i = EP_FRAME_HDR - 1; i >= 0; i--) {
            uint64_t p = s + (uint64_t)i;
            len = len << 8 | (p < chunk ? io->hdr[p - first] : io->ra[p - chunk]);
        }
        if (len > max_len)
            break; /* the stream breaks there; nothing after it is a frame */
        s += EP_FRAME_HDR + (uint64_t)len;
    }
    return owner;
}

int ep_frame_recv(int fd, struct ep_frame_io *io, void *buf, uint32_t cap, uint32_t max_len,
                  int64_t deadline_ns)
{
    if (!io || fd < 0 || (cap && !buf) || io->nfds < 0 || io->nfds > EP_FRAME_MAX_FDS ||
        (io->ra_cap && !io->ra) || io->ra_off + (uint64_t)io->ra_len > io->ra_cap)
        return -EINVAL;
    if (max_len > INT_MAX)
        max_len = INT_MAX;
    if (io->done == 0) { /* a new frame: forget what the last one reported */
        io->len = 0;
        io->eof = EP_FRAME_EOF_NONE;
        io->nfds = 0;
        io->fds_truncated = 0;
        if (io->ra_nfds > 0 && io->ra_fds_at == io->ra_pos) { /* they came ahead of this frame */
            memcpy(io->fds, io->ra_fds, sizeof(int32_t) * (size_t)io->ra_nfds);
            io->nfds = io->ra_nfds;
            io->fds_truncated = io->ra_fds_truncated;
            io->ra_nfds = 0;
            io->ra_fds_truncated = 0;
        }
    }
    union ep_frame_ctl ctl;

    for (;;) {
        uint8_t *dst;
        size_t want;
        if (io->done < EP_FRAME_HDR) {
            dst = io->hdr + io->done;
            want = EP_FRAME_HDR - io->done;
        } else {
            if (io->len > max_len)
                return -EMSGSIZE;
            if (io->len > cap)
                return -ENOBUFS;
            uint64_t poff = io->done - EP_FRAME_HDR;
            if (poff == io->len) {
                io->done = 0; /* ready for the next frame; len and fds stay readable until then */
                return (int)io->len;
            }
            dst = (uint8_t *)buf + poff;
            want = io->len - poff;
        }
        if (io->ra_len > 0) { /* serve from the read-ahead bytes first */
            size_t k = want < io->ra_len ? want : io->ra_len;
            memcpy(dst, io->ra + io->ra_off, k);
            io->ra_off += (uint32_t)k;
            io->ra_len -= (uint32_t)k;
            advance(io, k);
            continue;
        }
        /* Nothing buffered. Read ahead (as much as the socket holds) unless the rest of this payload
         * alone fills the read-ahead buffer: then read exactly that, straight into buf. */
        const int ahead = io->ra_cap > 0 && want < io->ra_cap;
        struct iovec iov = {.iov_base = ahead ? io->ra : dst, .iov_len = ahead ? io->ra_cap : want};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                           .msg_controllen = sizeof ctl.buf};
        ssize_t k = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (k > 0) {
            const int fds = m.msg_controllen > 0 || (m.msg_flags & MSG_CTRUNC);
            if (!ahead) {
                if (fds)
                    take_fds(io->fds, &io->nfds, &io->fds_truncated, &m);
                advance(io, (uint64_t)k);
                continue;
            }
            io->ra_off = 0;
            io->ra_len = (uint32_t)k;
            if (fds) {
                uint64_t owner = fd_owner(io, (uint64_t)k, max_len);
                if (owner == io->ra_pos - io->done) {
                    take_fds(io->fds, &io->nfds, &io->fds_truncated, &m);
                } else {
                    /* For a frame further on. Only one chunk can be waiting (a new chunk is read
                     * only once the buffered bytes are used up, and the owner is in them); a second
                     * means a sender that did not frame its fds like ep_frame_send: drop them. */
                    int32_t n = 0, trunc = 0, tmp[EP_FRAME_MAX_FDS];
                    take_fds(tmp, &n, &trunc, &m);
                    if (io->ra_nfds > 0) {
                        for (int32_t i = 0; i < n; i++)
                            close(tmp[i]);
                        io->ra_fds_truncated = 1;
                    } else {
                        memcpy(io->ra_fds, tmp, sizeof(int32_t) * (size_t)n);
                        io->ra_nfds = n;
                        io->ra_fds_truncated = trunc;
                        io->ra_fds_at = owner;
                    }
                }
            }
            continue;
        }
        if (k == 0 || errno == ECONNRESET) {
            io->eof = io->done == 0 ? EP_FRAME_EOF_CLEAN : EP_FRAME_EOF_TRUNCATED;
            return -EPIPE;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_fd(fd, POLLIN, deadline_ns);
            if (rc < 0)
                return rc;
            continue;
        }
        return -errno;
    }
}

void ep_frame_recv_drop(struct ep_frame_io *io)
{
    if (!io)
        return;
    for (int32_t i = 0; i < io->ra_nfds && i < EP_FRAME_MAX_FDS; i++)
        close(io->ra_fds[i]);
    io->ra_nfds = 0;
    io->ra_fds_truncated = 0;
    io->ra_off = io->ra_len = 0;
}
