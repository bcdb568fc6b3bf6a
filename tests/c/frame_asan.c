/*
 * frame_asan.c: csrc/ep_frame.c under AddressSanitizer + UBSan (built and run by tests/unit/test_frame_c.py).
 *
 * Part 1, frames: a writer thread sends N frames (sizes from 0 to 300 KB, weighted to small; 0-3 fds
 * each: pipe ends whose inodes identify them) with ep_frame_send, sometimes with deadlines so short
 * that the send times out and is resumed. The main thread receives them with ep_frame_recv, once for
 * each read-ahead size (off, 7, 4096, 65536 bytes), receive buffer grown on -ENOBUFS, and short
 * deadlines that time out mid-frame and resume. Every payload byte and every fd (by inode, in order)
 * must match what was sent for that frame.
 *
 * Part 2, garbage: random byte streams (random lengths, some over max_len) written raw and closed; the
 * receiver must end with -EPIPE (clean or truncated, as a model of the stream says) or -EMSGSIZE at the
 * right frame, never read out of bounds.
 *
 * Usage: frame_asan SEED FRAMES STREAMS. Exit 0 on success; prints the first mismatch and exits 1.
 */
#define _GNU_SOURCE
#include "ep_frame.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE 300000u
#define NPIPES 3

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct plan {
    uint32_t size;
    int nfds;
};

static struct plan *plans;
static int nframes;
static int pipes[NPIPES][2];
static ino_t pipe_ino[NPIPES];
static int tx_fd;
static long fds_ahead; /* receives after which fds for a later frame were waiting in io.ra_fds */

static uint8_t pattern(int frame, uint32_t i)
{
    return (uint8_t)(frame * 31 + i * 7 + (i >> 9));
}

static void *writer(void *arg)
{
    (void)arg;
    uint8_t *buf = malloc(MAX_SIZE);
    for (int f = 0; f < nframes; f++) {
        for (uint32_t i = 0; i < plans[f].size; i++)
            buf[i] = pattern(f, i);
        int fds[NPIPES];
        for (int k = 0; k < plans[f].nfds; k++)
            fds[k] = pipes[k][0];
        struct ep_frame_io io;
        memset(&io, 0, sizeof io);
        int rc;
        do { /* a deadline of 0-50 us sometimes expires part-way: resume with the same io */
            int64_t dl = (rnd() & 3) ? -1 : mono_ns() + (int64_t)(rnd() % 50000);
            rc = ep_frame_send(tx_fd, &io, buf, plans[f].size, fds, plans[f].nfds, dl);
        } while (rc == -ETIMEDOUT || rc == -EINTR);
        if (rc != (int)plans[f].size) {
            fprintf(stderr, "send of frame %d failed: %d\n", f, rc);
            exit(1);
        }
    }
    free(buf);
    return NULL;
}

static int frames_part(uint32_t ra_cap)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return perror("socketpair"), 1;
    tx_fd = sv[0];
    uint8_t *ra = ra_cap ? malloc(ra_cap) : NULL;
    pthread_t t;
    pthread_create(&t, NULL, writer, NULL);

    struct ep_frame_io io;
    memset(&io, 0, sizeof io);
    io.ra = ra;
    io.ra_cap = ra_cap;
    uint32_t cap = 16;
    uint8_t *buf = malloc(cap);
    for (int f = 0; f < nframes; f++) {
        int rc;
        for (;;) {
            int64_t dl = (rnd() & 3) ? mono_ns() + 5000000000LL : mono_ns() + (int64_t)(rnd() % 50000);
            rc = ep_frame_recv(sv[1], &io, buf, cap, MAX_SIZE, dl);
            if (rc == -ENOBUFS) {
                cap = io.len;
                buf = realloc(buf, cap);
                continue;
            }
            if (rc == -ETIMEDOUT || rc == -EINTR)
                continue;
            break;
        }
        if (rc != (int)plans[f].size) {
            fprintf(stderr, "frame %d: recv returned %d, sent %u bytes (ra_cap %u)\n", f, rc, plans[f].size,
                    ra_cap);
            return 1;
        }
        for (uint32_t i = 0; i < plans[f].size; i++)
            if (buf[i] != pattern(f, i)) {
                fprintf(stderr, "frame %d: byte %u differs (ra_cap %u)\n", f, i, ra_cap);
                return 1;
            }
        if (io.nfds != plans[f].nfds || io.fds_truncated) {
            fprintf(stderr, "frame %d: %d fds arrived, %d sent (ra_cap %u)\n", f, io.nfds, plans[f].nfds, ra_cap);
            return 1;
        }
        for (int k = 0; k < io.nfds; k++) {
            struct stat st;
            if (fstat(io.fds[k], &st) < 0 || st.st_ino != pipe_ino[k]) {
                fprintf(stderr, "frame %d: fd %d is not pipe %d (ra_cap %u)\n", f, k, k, ra_cap);
                return 1;
            }
            close(io.fds[k]);
        }
        io.nfds = 0;
        fds_ahead += io.ra_nfds > 0;
    }
    pthread_join(t, NULL);
    ep_frame_recv_drop(&io);
    close(sv[0]);
    close(sv[1]);
    free(buf);
    free(ra);
    return 0;
}

/* Model: the outcome of reading `data` (then EOF) frame by frame with max_len. */
static int model(const uint8_t *d, size_t n, uint32_t max_len, int *frames)
{
    size_t pos = 0;
    *frames = 0;
    for (;;) {
        if (pos == n)
            return 0; /* clean EOF */
        if (n - pos < 4)
            return 1; /* truncated */
        uint32_t len = (uint32_t)d[pos] | (uint32_t)d[pos + 1] << 8 | (uint32_t)d[pos + 2] << 16 |
                       (uint32_t)d[pos + 3] << 24;
        if (len > max_len)
            return 2;
        if (n - pos - 4 < len)
            return 1;
        pos += 4 + len;
        (*frames)++;
    }
}

static int garbage_part(int streams)
{
    uint8_t data[4096];
    for (int s = 0; s < streams; s++) {
        size_t n = rnd() % sizeof data;
        for (size_t i = 0; i < n; i++)
            data[i] = (uint8_t)rnd();
        /* Make small lengths common so that several frames parse. */
        for (size_t p = 0; p + 4 <= n && (rnd() & 1); p += 4 + (data[p] % 64)) {
            data[p] = (uint8_t)(data[p] % 64);
            data[p + 1] = data[p + 2] = data[p + 3] = 0;
        }
        uint32_t max_len = 1 + (uint32_t)(rnd() % 512);
        int want_frames, want_end = model(data, n, max_len, &want_frames);
        int sv[2];
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
        if (n && write(sv[0], data, n) != (ssize_t)n)
            return perror("write"), 1;
        close(sv[0]);
        uint32_t ra_cap = (uint32_t)(rnd() % 3) * 40;
        uint8_t ra[80];
        struct ep_frame_io io;
        memset(&io, 0, sizeof io);
        io.ra = ra_cap ? ra : NULL;
        io.ra_cap = ra_cap;
        uint8_t *buf = malloc(512);
        int got = 0, rc;
        while ((rc = ep_frame_recv(sv[1], &io, buf, 512, max_len, mono_ns() + 1000000000LL)) >= 0)
            got++;
        int end = rc == -EMSGSIZE ? 2 : rc == -EPIPE ? (io.eof == EP_FRAME_EOF_CLEAN ? 0 : 1) : -1;
        if (got != want_frames || end != want_end) {
            fprintf(stderr, "stream %d (%zu bytes, max_len %u, ra %u): %d frames then %d (rc %d), model %d then %d\n",
                    s, n, max_len, ra_cap, got, end, rc, want_frames, want_end);
            return 1;
        }
        free(buf);
        close(sv[1]);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SEED FRAMES STREAMS\n", argv[0]);
        return 2;
    }
    rng_state = strtoull(argv[1], NULL, 10) * 2654435761u + 1;
    nframes = atoi(argv[2]);
    plans = calloc((size_t)nframes, sizeof *plans);
    for (int f = 0; f < nframes; f++) {
        uint64_t r = rnd() % 100;
        plans[f].size = r < 60 ? (uint32_t)(rnd() % 200) : r < 90 ? (uint32_t)(rnd() % 70000)
                                                                   : (uint32_t)(rnd() % MAX_SIZE);
        plans[f].nfds = (rnd() % 4 == 0) ? 1 + (int)(rnd() % NPIPES) : 0;
    }
    for (int k = 0; k < NPIPES; k++) {
        struct stat st;
        if (pipe(pipes[k]) < 0 || fstat(pipes[k][0], &st) < 0)
            return perror("pipe"), 1;
        pipe_ino[k] = st.st_ino;
    }
    static const uint32_t ra_caps[] = {0, 7, 4096, 65536};
    for (int k = 0; k < 4; k++)
        if (frames_part(ra_caps[k]))
            return 1;
    if (garbage_part(atoi(argv[3])))
        return 1;
    printf("ok: %d frames x 4 read-ahead sizes (fds read ahead of their frame %ld times), %s garbage streams\n",
           nframes, fds_ahead, argv[3]);
    return 0;
}
