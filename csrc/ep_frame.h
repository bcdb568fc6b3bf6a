/*
 * ep_frame.h: length-prefixed frames on AF_UNIX stream sockets (ep_frame.c).
 *
 * Wire format: a u32 little-endian payload length, then that many bytes. File descriptors travel as
 * SCM_RIGHTS ancillary data attached to the frame's first byte (its header).
 *
 * A send or receive may stop part-way through a frame: a signal arrived while it waited (-EINTR) or
 * its deadline passed (-ETIMEDOUT). Its progress is kept in the caller's struct ep_frame_io, and a
 * second call with the same struct, buffer and length resumes exactly where the first stopped, so a
 * Python caller can run its signal handlers between the two. Zero the struct once; a call that
 * completes a frame sets io->done back to 0, so the same struct serves the next frame. After any other
 * return, set io->done = 0 yourself before starting a new frame (abandoning the partial one).
 *
 * Deadlines are absolute CLOCK_MONOTONIC nanoseconds (ep_clock_mono_ns(), Python's
 * time.monotonic_ns()); -1 waits forever, and a deadline already past tries once without waiting.
 */
#ifndef EP_FRAME_H
#define EP_FRAME_H

#include <stdint.h>

#define EP_FRAME_HDR 4u                    /* the u32 little-endian length */
#define EP_FRAME_MAX_FDS 16                /* fds one frame may carry */
#define EP_FRAME_DEFAULT_MAX (16u << 20)   /* payload bytes a receiver accepts unless told otherwise */
#define EP_FRAME_EOF_NONE 0
#define EP_FRAME_EOF_CLEAN 1               /* the peer closed at a frame boundary */
#define EP_FRAME_EOF_TRUNCATED 2           /* the peer closed (or reset) part-way through a frame */

struct ep_frame_io {
    uint64_t done;                 /* header + payload bytes moved so far for this frame */
    uint32_t len;                  /* payload length (recv: valid once the header is in, done >= 4) */
    int32_t eof;                   /* recv: EP_FRAME_EOF_* once -EPIPE was returned */
    int32_t nfds;                  /* recv: fds received with this frame, in fds[0..nfds) */
    int32_t fds_truncated;         /* recv: the sender attached more fds than fit (the extra are closed) */
    uint8_t hdr[4];                /* recv: the EP_FRAME_HDR header bytes read so far */
    int32_t fds[16];               /* EP_FRAME_MAX_FDS (a literal: the cffi cdef needs one) */
    /* recv read-ahead (optional): point ra at ra_cap bytes the caller owns for the life of the stream,
     * or leave it NULL to read each frame with exactly-sized reads (two recvmsg calls per frame). */
    uint8_t *ra;
    uint32_t ra_cap;
    uint32_t ra_off, ra_len;       /* unconsumed stream bytes are ra[ra_off .. ra_off + ra_len) */
    uint64_t ra_pos;               /* stream offset of ra[ra_off]: bytes of the stream consumed so far */
    uint64_t ra_fds_at;            /* stream offset of the frame that owns ra_fds */
    int32_t ra_nfds;               /* fds that arrived ahead of their frame, in ra_fds[0..ra_nfds) */
    int32_t ra_fds_truncated;
    int32_t ra_fds[16];            /* EP_FRAME_MAX_FDS */
};

/* Send one frame of len payload bytes, with nfds (0..EP_FRAME_MAX_FDS) descriptors attached.
 * Returns len once the whole frame is out; -EINTR / -ETIMEDOUT with io->done saying how far it got
 * (call again to resume), -EPIPE if the peer is gone (never SIGPIPE), -EMSGSIZE if len does not fit
 * a u32 frame, -EINVAL for bad arguments, or another -errno from sendmsg/poll. */
int ep_frame_send(int fd, struct ep_frame_io *io, const void *buf, uint32_t len, const int *fds,
                  int nfds, int64_t deadline_ns);

/* Receive one frame into buf (cap bytes), refusing payloads over max_len.
 * Returns the payload length once the whole frame is in buf. Otherwise:
 *   -EINTR / -ETIMEDOUT: stopped part-way (io->done), call again with the same io to resume;
 *   -ENOBUFS: the header is in and io->len > cap; call again with a buffer of at least io->len bytes;
 *   -EMSGSIZE: io->len > max_len. Nothing of the payload was read, so the stream is no longer at a
 *              frame boundary and cannot be used again: close the socket;
 *   -EPIPE: the peer closed or reset the connection; io->eof says whether at a frame boundary
 *           (EP_FRAME_EOF_CLEAN) or mid-frame (EP_FRAME_EOF_TRUNCATED);
 *   another -errno from recvmsg/poll.
 * Received fds (O_CLOEXEC) are in io->fds[0..nfds) and belong to the caller from the moment they
 * arrive, whatever the return code; a call that starts a new frame (io->done == 0) forgets them, so
 * take them first. On success io->len and the fds describe the frame just received.
 *
 * With read-ahead (io->ra set), one recvmsg takes whatever the socket holds, up to ra_cap bytes, and
 * later calls serve frames from it, so a small frame usually costs one recvmsg or none. A payload
 * whose rest is at least ra_cap bytes is read straight into buf. Descriptors still belong to the frame
 * whose first byte carried them: the kernel ends a recvmsg after the message that brought fds, and an
 * ep_frame_send with fds is one sendmsg starting at the frame's first byte, so the fds of a chunk
 * belong to the last frame that starts in it (or to the current frame if none starts there); fds for
 * a frame not yet reached wait in ra_fds. */
int ep_frame_recv(int fd, struct ep_frame_io *io, void *buf, uint32_t cap, uint32_t max_len,
                  int64_t deadline_ns);

/* Close the fds that arrived ahead of their frame and forget read-ahead bytes (before closing the
 * socket; the fds of the current frame, io->fds, are the caller's and are left alone). */
void ep_frame_recv_drop(struct ep_frame_io *io);

#endif
