/*
 * uds_client.c: an edgepipe control-plane client in C, built from the schema alone with protobuf-c.
 *
 * It connects to an edgepipe Server's Unix socket, says Hello (protocol 1.0, role CLIENT, subscribing
 * to every published message), prints the Welcome, then prints one line per message of the results
 * stream (Stats, ImuSample, InferenceResult, FrameMeta) until a Stop arrives, the server closes the
 * connection, or COUNT messages were printed.
 *
 * Wire format (see proto/README.md): each message is one frame, a u32 little-endian length and then
 * that many bytes of a serialized edgepipe.v1.Envelope.
 *
 * Build, from the repository root (Debian: apt-get install protobuf-c-compiler libprotobuf-c-dev):
 *     mkdir -p gen
 *     protoc-c --c_out=gen -Iproto proto/edgepipe/v1/edgepipe.proto
 *     cc -std=gnu11 -O2 -Wall -Igen examples/uds_client.c gen/edgepipe/v1/edgepipe.pb-c.c -lprotobuf-c -o uds_client
 * Run, against a server on the default socket (e.g. python examples/control_server.py): the socket is in
 * $XDG_RUNTIME_DIR/edgepipe/ when XDG_RUNTIME_DIR names a directory, else in /tmp/edgepipe-$UID/
 * (edgepipe.control.server.default_socket_dir):
 *     if [ -d "${XDG_RUNTIME_DIR:-}" ]; then dir="$XDG_RUNTIME_DIR/edgepipe"; else dir="/tmp/edgepipe-$(id -u)"; fi
 *     ./uds_client "$dir/control.sock" [COUNT]
 *
 * Exit status: 0 after Stop, end of stream or COUNT messages; 2 if the server sent an Error (printed);
 * 1 on any other failure (printed to stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "edgepipe/v1/edgepipe.pb-c.h"

#define MAX_FRAME (16u << 20) /* the largest frame we accept, as the Python side's default */

/* Read exactly n bytes. Returns 0, 1 if the peer closed before the first byte, -1 on error or a
 * close part-way. */
static int read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, (char *)buf + got, n - got);
        if (k > 0) {
            got += (size_t)k;
        } else if (k == 0) {
            if (got == 0)
                return 1;
            fprintf(stderr, "uds_client: the server closed mid-frame after %zu of %zu bytes\n", got, n);
            return -1;
        } else if (errno != EINTR) {
            perror("uds_client: read");
            return -1;
        }
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
    size_t put = 0;
    while (put < n) {
        ssize_t k = send(fd, (const char *)buf + put, n - put, MSG_NOSIGNAL);
        if (k > 0)
            put += (size_t)k;
        else if (k < 0 && errno != EINTR) {
            perror("uds_client: send");
            return -1;
        }
    }
    return 0;
}

static int send_envelope(int fd, const Edgepipe__V1__Envelope *env)
{
    size_t len = edgepipe__v1__envelope__get_packed_size(env);
    uint8_t *buf = malloc(4 + len);
    if (!buf)
        return -1;
    buf[0] = (uint8_t)len;
    buf[1] = (uint8_t)(len >> 8);
    buf[2] = (uint8_t)(len >> 16);
    buf[3] = (uint8_t)(len >> 24);
    edgepipe__v1__envelope__pack(env, buf + 4);
    int rc = write_full(fd, buf, 4 + len);
    free(buf);
    return rc;
}

/* Receive one Envelope into *out. Returns 0, 1 at a clean end of stream, -1 on error. */
static int recv_envelope(int fd, Edgepipe__V1__Envelope **out)
{
    uint8_t hdr[4];
    int rc = read_full(fd, hdr, sizeof hdr);
    if (rc)
        return rc;
    uint32_t len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 |
                   (uint32_t)hdr[3] << 24;
    if (len > MAX_FRAME) {
        fprintf(stderr, "uds_client: a frame of %" PRIu32 " bytes is over the %u-byte maximum\n", len,
                MAX_FRAME);
        return -1;
    }
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return -1;
    if (read_full(fd, buf, len) != 0) {
        free(buf);
        return -1;
    }
    *out = edgepipe__v1__envelope__unpack(NULL, len, buf);
    free(buf);
    if (!*out) {
        fprintf(stderr, "uds_client: a frame of %" PRIu32 " bytes is not an edgepipe.v1.Envelope\n", len);
        return -1;
    }
    return 0;
}

static void print_stamps(const Edgepipe__V1__Stamps *s)
{
    if (s)
        printf(" source=%s seq=%" PRIu64 " capture_ns=%" PRId64, s->source, s->seq, s->capture_ns);
}

/* Print one message of the results stream. Returns 1 for Stop, 2 for Error, 0 otherwise. */
static int print_envelope(const Edgepipe__V1__Envelope *env)
{
    switch (env->body_case) {
    case EDGEPIPE__V1__ENVELOPE__BODY_STATS: {
        const Edgepipe__V1__Stats *st = env->stats;
        printf("stats stage=%s t_ns=%" PRId64 " rings=%zu", st->stage_name, st->t_ns, st->n_rings);
        for (size_t i = 0; i < st->n_rings; i++)
            printf(" [%s written=%" PRIu64 " read=%" PRIu64 "]", st->rings[i]->name,
                   st->rings[i]->records_written, st->rings[i]->records_read);
        for (size_t i = 0; i < st->n_stages; i++)  /* the supervisor's roll-up only */
            printf(" {%s %s pid=%d restarts=%u}", st->stages[i]->name, st->stages[i]->state,
                   st->stages[i]->pid, st->stages[i]->restarts);
        for (size_t i = 0; i < st->n_budgets; i++)
            printf(" budget[%s]=%" PRIu64 "ns", st->budgets[i]->part, st->budgets[i]->budget_ns);
        printf("\n");
        return 0;
    }
    case EDGEPIPE__V1__ENVELOPE__BODY_IMU_SAMPLE: {
        const Edgepipe__V1__ImuSample *m = env->imu_sample;
        printf("imu_sample");
        print_stamps(m->stamps);
        if (m->gyro)
            printf(" gyro=(%.3f,%.3f,%.3f)", m->gyro->x, m->gyro->y, m->gyro->z);
        if (m->accel)
            printf(" accel=(%.3f,%.3f,%.3f)", m->accel->x, m->accel->y, m->accel->z);
        if (m->mag)
            printf(" mag=(%.3f,%.3f,%.3f)", m->mag->x, m->mag->y, m->mag->z);
        if (m->orientation)
            printf(" q=(%.4f,%.4f,%.4f,%.4f)", m->orientation->w, m->orientation->x, m->orientation->y,
                   m->orientation->z);
        if (m->temperature)
            printf(" temperature_c=%.1f", m->temperature->value);
        printf("\n");
        return 0;
    }
    case EDGEPIPE__V1__ENVELOPE__BODY_INFERENCE_RESULT: {
        const Edgepipe__V1__InferenceResult *r = env->inference_result;
        printf("inference_result model=%s frame_seq=%" PRIu64 " infer_ns=%" PRId64, r->model_id,
               r->frame_seq, r->inference_end_ns - r->inference_start_ns);
        print_stamps(r->stamps);
        if (r->output_case == EDGEPIPE__V1__INFERENCE_RESULT__OUTPUT_DETECTIONS) {
            printf(" boxes=%zu", r->detections->n_boxes);
            for (size_t i = 0; i < r->detections->n_boxes; i++) {
                const Edgepipe__V1__Box *b = r->detections->boxes[i];
                printf(" [%s %.2f (%.0f,%.0f)-(%.0f,%.0f)]", b->label, b->score, b->x_min, b->y_min,
                       b->x_max, b->y_max);
            }
        } else if (r->output_case == EDGEPIPE__V1__INFERENCE_RESULT__OUTPUT_TENSOR) {
            printf(" tensor=%s mean=%.4f", r->tensor->name, r->tensor->mean);
        }
        printf("\n");
        return 0;
    }
    case EDGEPIPE__V1__ENVELOPE__BODY_FRAME_META: {
        const Edgepipe__V1__FrameMeta *f = env->frame_meta;
        printf("frame_meta frame_seq=%" PRIu64 " %ux%ux%u %s %s\n", f->frame_seq, f->width, f->height,
               f->channels, f->dtype, f->pixel_format);
        return 0;
    }
    case EDGEPIPE__V1__ENVELOPE__BODY_STOP:
        printf("stop reason=%s\n", env->stop->reason);
        return 1;
    case EDGEPIPE__V1__ENVELOPE__BODY_ERROR:
        printf("error code=%s message=%s\n",
               protobuf_c_enum_descriptor_get_value(&edgepipe__v1__error_code__descriptor,
                                                    env->error->code)
                   ? protobuf_c_enum_descriptor_get_value(&edgepipe__v1__error_code__descriptor,
                                                          env->error->code)->name
                   : "?",
               env->error->message);
        return 2;
    default:
        printf("other body=%d seq=%" PRIu64 "\n", (int)env->body_case, env->seq);
        return 0;
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s SOCKET_PATH [COUNT]\n", argv[0]);
        return 1;
    }
    long count = argc == 3 ? strtol(argv[2], NULL, 10) : -1;
    setvbuf(stdout, NULL, _IOLBF, 0); /* one line per message, even into a pipe */

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof addr.sun_path) {
        fprintf(stderr, "uds_client: socket path too long: %s\n", argv[1]);
        return 1;
    }
    strcpy(addr.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "uds_client: connect %s: %s\n", argv[1], strerror(errno));
        return 1;
    }

    char *subscribe[] = {"*"};
    Edgepipe__V1__Hello hello = EDGEPIPE__V1__HELLO__INIT;
    hello.protocol_major = 1;
    hello.protocol_minor = 0;
    hello.stage_name = "c-client";
    hello.pid = (int32_t)getpid();
    hello.role = EDGEPIPE__V1__ROLE__ROLE_CLIENT;
    hello.n_subscribe = 1;
    hello.subscribe = subscribe;
    Edgepipe__V1__Envelope env = EDGEPIPE__V1__ENVELOPE__INIT;
    env.seq = 1;
    env.body_case = EDGEPIPE__V1__ENVELOPE__BODY_HELLO;
    env.hello = &hello;
    if (send_envelope(fd, &env) < 0)
        return 1;

    Edgepipe__V1__Envelope *in = NULL;
    if (recv_envelope(fd, &in) != 0) {
        fprintf(stderr, "uds_client: no answer to the Hello\n");
        return 1;
    }
    if (in->body_case == EDGEPIPE__V1__ENVELOPE__BODY_ERROR) {
        print_envelope(in);
        edgepipe__v1__envelope__free_unpacked(in, NULL);
        return 2;
    }
    if (in->body_case != EDGEPIPE__V1__ENVELOPE__BODY_WELCOME) {
        fprintf(stderr, "uds_client: expected a Welcome, got body %d\n", (int)in->body_case);
        return 1;
    }
    printf("welcome session=%" PRIu64 " server_pid=%d protocol=%u.%u\n", in->welcome->session_id,
           in->welcome->pid, in->welcome->protocol_major, in->welcome->protocol_minor);
    edgepipe__v1__envelope__free_unpacked(in, NULL);

    int status = 0;
    for (long n = 0; count < 0 || n < count; n++) {
        int rc = recv_envelope(fd, &in);
        if (rc == 1) {
            printf("end of stream\n");
            break;
        }
        if (rc < 0) {
            status = 1;
            break;
        }
        int what = print_envelope(in);
        edgepipe__v1__envelope__free_unpacked(in, NULL);
        if (what == 1)
            break;
        if (what == 2) {
            status = 2;
            break;
        }
    }
    close(fd);
    return status;
}
