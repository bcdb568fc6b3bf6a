/*
 * ep_imu.c: owns the IMU sampling loop: one pthread per struct ep_imu that waits for each deadline,
 * reads one sample from its source, stamps it, runs the Madgwick filter and publishes a struct
 * ep_imu_sample into a ring.
 *
 * Invariants:
 *   - Nothing is allocated, opened or parsed per sample: ep_imu_create allocates the loop (histograms
 *     included) once; sources get their fds, scales, scan layout or preloaded rows from the config.
 *   - Deadlines are absolute on CLOCK_MONOTONIC: deadline(k) = t0 + k * period, so rounding never
 *     accumulates into drift. A loop that wakes more than a period late skips the deadlines already past
 *     (counted in missed, with the lateness) instead of bursting to catch up.
 *   - The ring write is try_write: a full ring drops the sample (counted), never blocks the loop.
 *   - The loop thread is the only writer of every counter and histogram bucket; other threads read them
 *     with relaxed atomic loads (a snapshot may mix counters from adjacent samples, never a torn value).
 *   - stop is checked at least every 20 ms (sleeps are chunked, device reads poll with a timeout).
 *
 * Clocks: deadlines, jitter (sample time - deadline) and wake lateness use CLOCK_MONOTONIC, the clock the
 * sleep runs on; the stamps in the record are CLOCK_MONOTONIC_RAW (the edgepipe clock).
 */
#define _GNU_SOURCE
#include "edgepipe.h"
#include "ep_atomic.h"
#include "ep_imu.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof ((struct ep_imu_config *)0)->fd == EP_IMU_NCH * sizeof(int32_t), "fd[]");
_Static_assert(sizeof(struct ep_imu_sample) == 192, "the record layout edgepipe.stages.imu mirrors");

#define CHUNK_NS 20000000LL        /* longest uninterrupted sleep or device poll: the stop latency */
#define GUARD_WINDOW 512           /* hybrid: wakes per guard re-estimate */
#define CPU_EVERY 64               /* samples between CPU-time / now_ns refreshes */

struct hist {
    uint64_t count;
    int64_t max;
    uint64_t b[EP_IMU_HIST_BUCKETS];
};

struct ep_imu {
    struct ep_imu_config cfg;
    struct ep_ring_writer *out;
    struct ep_ahrs f;
    pthread_t thread;
    int started;                    /* touched by the controlling thread only */
    _Atomic int stop;               /* set by ep_imu_stop, read by the loop */
    _Atomic int ready;              /* set by the loop once its knobs are applied */
    struct ep_imu_stats st;         /* written by the loop only (relaxed atomics), copied by ep_imu_stats */
    struct hist h[2];               /* EP_IMU_HIST_JITTER, EP_IMU_HIST_WAKE: same rule as st */
    struct hist win;                /* loop-local: wake lateness since the last guard estimate */
    double period_ns;
    int64_t t0;
    uint64_t row;                   /* array source: next row */
    double row_t_off;               /* array source: time added per lap when looping */
    uint32_t have;                  /* chardev: bytes of the current scan read so far */
    unsigned char scan[EP_IMU_SCAN_MAX];
    struct ep_imu_sample rec;
};

/* Relaxed single-writer updates of the shared counters (see the invariants). */
#define LD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define ADD(p, n) ST((p), LD(p) + (n))

static inline int64_t ts_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t mono(void) { return ts_ns(CLOCK_MONOTONIC); }

/* ---- histogram: exact below 32 ns, then 32 linear sub-buckets per power of two ---- */

static inline int hist_index(int64_t v)
{
    if (v < EP_IMU_HIST_SUB)
        return v < 0 ? 0 : (int)v;
    int e = 63 - __builtin_clzll((uint64_t)v); /* >= 5 */
    int idx = EP_IMU_HIST_SUB + (e - 5) * EP_IMU_HIST_SUB + (int)((v >> (e - 5)) & (EP_IMU_HIST_SUB - 1));
    return idx < EP_IMU_HIST_BUCKETS ? idx : EP_IMU_HIST_BUCKETS - 1;
}

/* Largest value that falls in bucket idx (what a quantile reports: never an underestimate). */
static int64_t hist_upper(int idx)
{
    if (idx < EP_IMU_HIST_SUB)
        return idx;
    int e = (idx - EP_IMU_HIST_SUB) / EP_IMU_HIST_SUB + 5;
    int64_t sub = (idx - EP_IMU_HIST_SUB) % EP_IMU_HIST_SUB + EP_IMU_HIST_SUB;
    return ((sub + 1) << (e - 5)) - 1;
}

static inline void hist_add_shared(struct hist *h, int64_t v)
{
    if (v < 0)
        v = 0;
    ADD(&h->b[hist_index(v)], 1);
    ADD(&h->count, 1);
    if (v > LD(&h->max))
        ST(&h->max, v);
}

static int64_t quantile_of(const uint64_t *b, uint64_t count, int64_t max, double q)
{
    if (!count)
        return 0;
    uint64_t want = (uint64_t)ceil(q * (double)count);
    if (want < 1)
        want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < EP_IMU_HIST_BUCKETS; i++) {
        seen += b[i];
        if (seen >= want) {
            int64_t u = hist_upper(i);
            return u < max ? u : max;
        }
    }
    return max;
}

/* ---- synthetic source: q(t) = q0 (x) exp(t w / 2), acc = g * R(q)^T e_z, gyro = w ---- */

static void qmul(const double a[4], const double b[4], double o[4])
{
    o[0] = a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3];
    o[1] = a[0] * b[1] + a[1] * b[0] + a[2] * b[3] - a[3] * b[2];
    o[2] = a[0] * b[2] - a[1] * b[3] + a[2] * b[0] + a[3] * b[1];
    o[3] = a[0] * b[3] + a[1] * b[2] - a[2] * b[1] + a[3] * b[0];
}

int ep_imu_synth_truth(const struct ep_imu_config *cfg, double t_s, double q_out[4], double acc_out[3])
{
    if (!cfg || !q_out || !acc_out)
        return -EINVAL;
    const double *w = cfg->syn_w;
    double n = sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2]);
    double e[4] = {1.0, 0.0, 0.0, 0.0};
    if (n > 0.0) {
        double h = 0.5 * n * t_s, s = sin(h) / n;
        e[0] = cos(h);
        e[1] = w[0] * s;
        e[2] = w[1] * s;
        e[3] = w[2] * s;
    }
    qmul(cfg->syn_q0, e, q_out);
    const double *q = q_out;
    /* Third row of R(q) (sensor -> earth), i.e. earth +z seen in the sensor frame. */
    acc_out[0] = cfg->syn_g * 2.0 * (q[1] * q[3] - q[0] * q[2]);
    acc_out[1] = cfg->syn_g * 2.0 * (q[0] * q[1] + q[2] * q[3]);
    acc_out[2] = cfg->syn_g * (q[0] * q[0] - q[1] * q[1] - q[2] * q[2] + q[3] * q[3]);
    return 0;
}

/* ---- sources: fill L->rec's raw/scaled fields. 0 = a sample, 1 = skip (counted), < 0 = end ---- */

static int read_synth(struct ep_imu *L, struct ep_imu_sample *r)
{
    uint64_t n = LD(&L->st.samples);
    double q[4];
    ep_imu_synth_truth(&L->cfg, (double)n * L->cfg.dt_s, q, r->acc);
    memcpy(r->gyr, L->cfg.syn_w, sizeof r->gyr);
    if (L->cfg.syn_nan_every && (n + 1) % L->cfg.syn_nan_every == 0)
        r->gyr[0] = NAN;
    r->device_ns = (int64_t)llround((double)n * L->cfg.dt_s * 1e9);
    r->flags = 0;
    return 0;
}

static int read_array(struct ep_imu *L, struct ep_imu_sample *r)
{
    if (L->row >= L->cfg.n_rows) {
        if (!L->cfg.loop_data || !L->cfg.n_rows)
            return -ENODATA;
        L->row = 0;
        L->row_t_off += (double)L->cfg.n_rows * L->cfg.dt_s;
    }
    const double *x = L->cfg.rows + 10 * L->row++;
    r->device_ns = (int64_t)llround((x[0] + L->row_t_off) * 1e9);
    memcpy(r->gyr, x + 1, sizeof r->gyr);
    memcpy(r->acc, x + 4, sizeof r->acc);
    if (L->cfg.use_mag) {
        memcpy(r->mag, x + 7, sizeof r->mag);
        r->flags = EP_IMU_F_MAG;
    } else {
        r->flags = 0;
    }
    return 0;
}

/* One sysfs attribute holding a decimal integer, read in place with pread. */
static int read_int_attr(int fd, int32_t *out)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *end;
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (end == buf || errno || v < INT32_MIN || v > INT32_MAX)
        return -1;
    while (*end == '\n' || *end == ' ')
        end++;
    if (*end)
        return -1;
    *out = (int32_t)v;
    return 0;
}

static int read_sysfs(struct ep_imu *L, struct ep_imu_sample *r)
{
    const struct ep_imu_config *c = &L->cfg;
    r->flags = EP_IMU_F_RAW;
    r->device_ns = 0;
    for (int i = 0; i < 9; i++) {
        if (c->fd[i] < 0)
            continue;
        int32_t v;
        if (read_int_attr(c->fd[i], &v))
            return 1;
        int32_t *raw = i < 3 ? &r->raw_gyr[i] : i < 6 ? &r->raw_acc[i - 3] : &r->raw_mag[i - 6];
        double *val = i < 3 ? &r->gyr[i] : i < 6 ? &r->acc[i - 3] : &r->mag[i - 6];
        *raw = v;
        *val = v * c->scale[i];
    }
    if (c->fd[EP_IMU_CH_MX] >= 0)
        r->flags |= EP_IMU_F_MAG;
    return 0;
}

static uint64_t load_bytes(const unsigned char *p, uint32_t n, uint32_t be)
{
    uint64_t v = 0;
    for (uint32_t i = 0; i < n; i++)
        v |= (uint64_t)p[be ? n - 1 - i : i] << (8 * i);
    return v;
}

/* One channel of a scan as IIO describes it: [be|le]:[s|u]bits/storage>>shift. */
static int64_t decode(const struct ep_imu_config *c, const unsigned char *scan, int ch)
{
    uint64_t v = load_bytes(scan + c->ch_off[ch], c->ch_bytes[ch], c->ch_be[ch]) >> c->ch_shift[ch];
    uint32_t bits = c->ch_bits[ch];
    if (bits < 64) {
        v &= (1ULL << bits) - 1;
        if (c->ch_signed[ch] && (v >> (bits - 1)) & 1)
            v |= ~0ULL << bits;
    }
    return (int64_t)v;
}

static int read_chardev(struct ep_imu *L, struct ep_imu_sample *r)
{
    const struct ep_imu_config *c = &L->cfg;
    int fd = c->fd[0];
    while (L->have < c->scan_size) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(CHUNK_NS / 1000000));
        if (pr < 0 && errno != EINTR)
            return -errno;
        if (ep_load_relaxed(&L->stop))
            return 2;
        if (pr <= 0)
            continue;
        ssize_t n = read(fd, L->scan + L->have, c->scan_size - L->have);
        if (n == 0) {
            ADD(&L->st.truncated, L->have);
            return -EPIPE; /* the writer closed (a FIFO) or the device went away */
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            return -errno;
        }
        L->have += (uint32_t)n;
    }
    L->have = 0;
    r->flags = EP_IMU_F_RAW;
    r->device_ns = 0;
    for (int i = 0; i < 9; i++) {
        if (!c->ch_bytes[i])
            continue;
        int64_t v = decode(c, L->scan, i);
        int32_t *raw = i < 3 ? &r->raw_gyr[i] : i < 6 ? &r->raw_acc[i - 3] : &r->raw_mag[i - 6];
        double *val = i < 3 ? &r->gyr[i] : i < 6 ? &r->acc[i - 3] : &r->mag[i - 6];
        *raw = (int32_t)v;
        *val = (double)v * c->scale[i];
    }
    if (c->ch_bytes[EP_IMU_CH_MX])
        r->flags |= EP_IMU_F_MAG;
    if (c->ch_bytes[EP_IMU_CH_TS]) {
        r->device_ns = decode(c, L->scan, EP_IMU_CH_TS);
        r->flags |= EP_IMU_F_DEVICE_TS;
    }
    return 0;
}

static int read_source(struct ep_imu *L, struct ep_imu_sample *r)
{
    switch (L->cfg.source) {
    case EP_IMU_SRC_SYNTH: return read_synth(L, r);
    case EP_IMU_SRC_ARRAY: return read_array(L, r);
    case EP_IMU_SRC_SYSFS: return read_sysfs(L, r);
    default: return read_chardev(L, r);
    }
}

/* ---- waiting ---- */

static inline void sleep_until(int64_t t)
{
    struct timespec ts = {.tv_sec = t / 1000000000LL, .tv_nsec = t % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* Sleep to `target` in chunks of at most CHUNK_NS, checking stop between them. Returns 1 on stop,
 * else 0 with the wake lateness (now - target) recorded. */
static int sleep_to(struct ep_imu *L, int64_t target, int64_t *late)
{
    for (;;) {
        int64_t now = mono();
        if (now >= target) {
            *late = now - target;
            return 0;
        }
        if (ep_load_relaxed(&L->stop))
            return 1;
        sleep_until(target - now > CHUNK_NS ? now + CHUNK_NS : target);
    }
}

static void adapt_guard(struct ep_imu *L, int64_t late)
{
    struct hist *w = &L->win;
    if (late < 0)
        late = 0;
    w->b[hist_index(late)]++;
    if (late > w->max)
        w->max = late;
    if (++w->count < GUARD_WINDOW)
        return;
    /* Guard = the window's p99.5 wake lateness + 20 % + 5 us, clamped: about one wake in 200 still
     * lands after the deadline (that sample shows up as jitter), the rest spin only briefly. A higher
     * quantile chases the VM's rare millisecond stalls and spins most of every period for them. */
    int64_t g = quantile_of(w->b, w->count, w->max, 0.995);
    g = g + g / 5 + 5000;
    if (g < L->cfg.guard_min_ns)
        g = L->cfg.guard_min_ns;
    if (g > L->cfg.guard_max_ns)
        g = L->cfg.guard_max_ns;
    ST(&L->st.guard_ns, g);
    memset(w, 0, sizeof *w);
}

/* Wait for `deadline`; returns 1 if stop was requested meanwhile. */
static int wait_deadline(struct ep_imu *L, int64_t deadline)
{
    int64_t late;
    if (L->cfg.wait_mode == EP_IMU_WAIT_SLEEP) {
        if (sleep_to(L, deadline, &late))
            return 1;
        hist_add_shared(&L->h[EP_IMU_HIST_WAKE], late);
        return 0;
    }
    int64_t target = deadline - LD(&L->st.guard_ns);
    if (mono() < target) {
        if (sleep_to(L, target, &late))
            return 1;
        hist_add_shared(&L->h[EP_IMU_HIST_WAKE], late);
        adapt_guard(L, late);
    }
    while (mono() < deadline)
        ep_cpu_relax();
    return 0;
}

/* ---- the loop ---- */

static void apply_knobs(struct ep_imu *L)
{
    if (prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0))
        ST(&L->st.slack_errno, errno);
    if (L->cfg.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        if (L->cfg.cpu >= CPU_SETSIZE) {
            ST(&L->st.affinity_errno, EINVAL);
        } else {
            CPU_SET(L->cfg.cpu, &set);
            int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
            if (rc)
                ST(&L->st.affinity_errno, rc);
        }
    }
    if (L->cfg.sched_priority > 0) {
        struct sched_param sp = {.sched_priority = L->cfg.sched_priority};
        int rc = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
        if (rc)
            ST(&L->st.sched_errno, rc);
    }
}

static void refresh_clock_stats(struct ep_imu *L)
{
    ST(&L->st.cpu_ns, ts_ns(CLOCK_THREAD_CPUTIME_ID));
    ST(&L->st.now_ns, mono());
}

static int finite_sample(const struct ep_imu_sample *r)
{
    for (int i = 0; i < 3; i++)
        if (!isfinite(r->gyr[i]) || !isfinite(r->acc[i]) || ((r->flags & EP_IMU_F_MAG) && !isfinite(r->mag[i])))
            return 0;
    return 1;
}

static void *loop_main(void *arg)
{
    struct ep_imu *L = arg;
    apply_knobs(L);
    L->t0 = mono();
    ST(&L->st.start_ns, L->t0);
    ST(&L->st.state, EP_IMU_RUNNING);
    /* Release: the knobs' errnos and the state are visible before ready. Pairs with the acquire of
     * ready in ep_imu_start. */
    ep_store_release(&L->ready, 1);

    const int paced = L->cfg.wait_mode != EP_IMU_WAIT_DEVICE;
    const int marg = L->cfg.use_mag;
    struct ep_imu_sample *r = &L->rec;
    uint64_t tick = 1;              /* the first deadline is one period after start */
    uint32_t pending_flags = 0;
    int state = EP_IMU_STOPPED, end_errno = 0;
    for (;;) {
        if (ep_load_relaxed(&L->stop))
            break;
        int64_t deadline = paced ? L->t0 + (int64_t)llround((double)tick * L->period_ns) : 0;
        if (paced && wait_deadline(L, deadline))
            break;
        memset(r, 0, sizeof *r);
        int rc = read_source(L, r);
        int64_t t_mono = mono();
        int64_t t_raw = ep_clock_now_ns();
        if (rc == 2)
            break;                  /* stop requested during a device wait */
        if (rc < 0) {
            state = rc == -ENODATA ? EP_IMU_ENDED : EP_IMU_FAILED;
            end_errno = rc == -ENODATA ? 0 : rc;
            break;
        }
        /* A skip flags the next published sample (the first one after the gap). */
        uint32_t carry = pending_flags;
        pending_flags = 0;
        if (paced) {
            int64_t late = t_mono - deadline;
            hist_add_shared(&L->h[EP_IMU_HIST_JITTER], late);
            r->deadline_ns = deadline;
            r->late_ns = late;
            /* Past the next deadline already: skip to the first one still ahead. */
            uint64_t next = tick + 1;
            int64_t next_dl = L->t0 + (int64_t)llround((double)next * L->period_ns);
            if (t_mono >= next_dl) {
                uint64_t ahead = (uint64_t)floor((double)(t_mono - L->t0) / L->period_ns) + 1;
                if (ahead <= next)
                    ahead = next + 1;
                ADD(&L->st.missed, ahead - next);
                ADD(&L->st.missed_events, 1);
                if (late > LD(&L->st.missed_max_ns))
                    ST(&L->st.missed_max_ns, late);
                next = ahead;
                pending_flags |= EP_IMU_F_MISSED;
            }
            tick = next;
            ADD(&L->st.ticks, 1);
        }
        if (rc == 1) {
            ADD(&L->st.read_errors, 1);
            pending_flags |= carry;
            continue;
        }
        uint64_t n = LD(&L->st.samples) + 1;
        ST(&L->st.samples, n);
        if (n == 1)
            ST(&L->st.first_sample_ns, t_raw);
        ST(&L->st.last_sample_ns, t_raw);
        if (n % CPU_EVERY == 0)
            refresh_clock_stats(L);
        if (!finite_sample(r)) {
            ADD(&L->st.skipped_bad, 1);
            pending_flags |= carry;
        } else {
            uint64_t na = L->f.no_accel;
            if (marg && (r->flags & EP_IMU_F_MAG))
                ep_ahrs_update_marg(&L->f, r->gyr, r->acc, r->mag);
            else
                ep_ahrs_update_imu(&L->f, r->gyr, r->acc);
            if (L->f.no_accel != na) {
                r->flags |= EP_IMU_F_NO_ACCEL;
                ADD(&L->st.filter_no_accel, 1);
            }
            memcpy(r->q, L->f.q, sizeof r->q);
            for (int i = 0; i < 4; i++)
                __atomic_store(&L->st.q[i], &r->q[i], __ATOMIC_RELAXED);
            r->flags |= carry;
            r->sample_ns = t_raw;
            if (L->out) {
                r->seq = LD(&L->st.published);
                r->publish_ns = ep_clock_now_ns();
                int wr = ep_ring_try_write(L->out, r, sizeof *r, EP_IMU_RECORD_TYPE);
                if (wr >= 0)
                    ADD(&L->st.published, 1);
                else if (wr == -EAGAIN)
                    ADD(&L->st.dropped, 1);
                else
                    ADD(&L->st.consumer_gone, 1);
            }
        }
        if (L->cfg.max_samples && n >= L->cfg.max_samples) {
            state = EP_IMU_ENDED;
            break;
        }
    }
    refresh_clock_stats(L);
    ST(&L->st.end_errno, end_errno);
    /* Release: every counter above is final before the state says so. Pairs with the acquire of state
     * in ep_imu_stats. */
    __atomic_store_n(&L->st.state, state, __ATOMIC_RELEASE);
    return NULL;
}

/* ---- control ---- */

int ep_imu_create(const struct ep_imu_config *cfg, struct ep_ring_writer *out, struct ep_imu **loop)
{
    if (!cfg || !loop)
        return -EINVAL;
    const struct ep_imu_config *c = cfg;
    if (c->wait_mode < EP_IMU_WAIT_SLEEP || c->wait_mode > EP_IMU_WAIT_DEVICE)
        return -EINVAL;
    if (c->wait_mode != EP_IMU_WAIT_DEVICE &&
        !(c->rate_hz >= EP_IMU_MIN_RATE_HZ && c->rate_hz <= EP_IMU_MAX_RATE_HZ))
        return -EINVAL;
    if (c->source < EP_IMU_SRC_SYNTH || c->source > EP_IMU_SRC_CHARDEV)
        return -EINVAL;
    if (c->source == EP_IMU_SRC_ARRAY && (!c->rows || !c->n_rows))
        return -EINVAL;
    if (c->source == EP_IMU_SRC_CHARDEV) {
        if (c->fd[0] < 0 || !c->scan_size || c->scan_size > EP_IMU_SCAN_MAX)
            return -EINVAL;
        for (int i = 0; i < EP_IMU_NCH; i++) {
            uint32_t b = c->ch_bytes[i];
            /* 64-bit sum: a 32-bit ch_off + b could wrap below scan_size and pass */
            if (b && (b > 8 || (uint64_t)c->ch_off[i] + b > c->scan_size || c->ch_bits[i] == 0 ||
                      c->ch_bits[i] > 64 ||
                      c->ch_shift[i] >= 64))
                return -EINVAL;
        }
    }
    struct ep_imu *L = calloc(1, sizeof *L);
    if (!L)
        return -ENOMEM;
    L->cfg = *c;
    if (L->cfg.guard_min_ns <= 0)
        L->cfg.guard_min_ns = 20000;
    if (L->cfg.guard_max_ns < L->cfg.guard_min_ns)
        L->cfg.guard_max_ns = 2000000;
    if (L->cfg.guard_ns <= 0)
        L->cfg.guard_ns = 150000;
    L->out = out;
    int rc = ep_ahrs_init(&L->f, c->beta, c->dt_s);
    if (rc) {
        free(L);
        return rc;
    }
    double n = sqrt(c->q0[0] * c->q0[0] + c->q0[1] * c->q0[1] + c->q0[2] * c->q0[2] + c->q0[3] * c->q0[3]);
    if (n > 0 && isfinite(n))
        for (int i = 0; i < 4; i++)
            L->f.q[i] = c->q0[i] / n;
    memcpy(L->st.q, L->f.q, sizeof L->st.q);
    L->period_ns = c->wait_mode == EP_IMU_WAIT_DEVICE ? 0.0 : 1e9 / c->rate_hz;
    L->st.guard_ns = L->cfg.guard_ns;
    *loop = L;
    return 0;
}

int ep_imu_start(struct ep_imu *L)
{
    if (!L)
        return -EBADF;
    if (L->started)
        return -EALREADY;
    int rc = pthread_create(&L->thread, NULL, loop_main, L);
    if (rc)
        return -rc;
    L->started = 1;
    /* Acquire: pairs with the release of ready in loop_main; the knob errnos are then visible. */
    while (!ep_load_acquire(&L->ready)) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

int ep_imu_stop(struct ep_imu *L)
{
    if (!L)
        return -EBADF;
    if (L->started != 1)
        return 0;
    ep_store_relaxed(&L->stop, 1);
    int rc = pthread_join(L->thread, NULL);
    L->started = 2;
    return -rc;
}

int ep_imu_destroy(struct ep_imu *L)
{
    if (!L)
        return 0;
    ep_imu_stop(L);
    free(L);
    return 0;
}

int ep_imu_stats(struct ep_imu *L, struct ep_imu_stats *o)
{
    if (!L || !o)
        return -EBADF;
    const struct ep_imu_stats *s = &L->st;
    /* Acquire: pairs with the release of state at the end of loop_main, so a final state comes with
     * final counters. */
    o->state = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
    o->end_errno = LD(&s->end_errno);
    o->sched_errno = LD(&s->sched_errno);
    o->affinity_errno = LD(&s->affinity_errno);
    o->slack_errno = LD(&s->slack_errno);
    o->pad_ = 0;
    o->ticks = LD(&s->ticks);
    o->samples = LD(&s->samples);
    o->published = LD(&s->published);
    o->dropped = LD(&s->dropped);
    o->consumer_gone = LD(&s->consumer_gone);
    o->missed = LD(&s->missed);
    o->missed_events = LD(&s->missed_events);
    o->missed_max_ns = LD(&s->missed_max_ns);
    o->skipped_bad = LD(&s->skipped_bad);
    o->read_errors = LD(&s->read_errors);
    o->truncated = LD(&s->truncated);
    o->filter_no_accel = LD(&s->filter_no_accel);
    o->first_sample_ns = LD(&s->first_sample_ns);
    o->last_sample_ns = LD(&s->last_sample_ns);
    o->start_ns = LD(&s->start_ns);
    o->now_ns = LD(&s->now_ns);
    o->cpu_ns = LD(&s->cpu_ns);
    o->guard_ns = LD(&s->guard_ns);
    for (int i = 0; i < 4; i++)
        __atomic_load(&s->q[i], &o->q[i], __ATOMIC_RELAXED);
    return 0;
}

int ep_imu_quantile(struct ep_imu *L, int which, double q, int64_t *out_ns)
{
    if (!L || !out_ns)
        return -EBADF;
    if (which < 0 || which > 1 || !(q >= 0.0 && q <= 1.0))
        return -EINVAL;
    const struct hist *h = &L->h[which];
    uint64_t b[EP_IMU_HIST_BUCKETS];
    uint64_t count = 0;
    for (int i = 0; i < EP_IMU_HIST_BUCKETS; i++)
        count += b[i] = LD(&h->b[i]);
    int64_t max = LD(&h->max);
    *out_ns = q >= 1.0 ? (count ? max : 0) : quantile_of(b, count, max, q);
    return 0;
}

int ep_imu_hist_count(struct ep_imu *L, int which, uint64_t *out)
{
    if (!L || !out)
        return -EBADF;
    if (which < 0 || which > 1)
        return -EINVAL;
    *out = LD(&L->h[which].count);
    return 0;
}
