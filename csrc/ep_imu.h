/*
 * ep_imu.h: the deadline-scheduled IMU sampling loop (csrc/ep_imu.c). One pthread per loop reads a
 * source, stamps, runs the Madgwick filter (ep_ahrs.c) and publishes one struct ep_imu_sample per sample
 * into an edgepipe ring. Python fills a struct ep_imu_config, creates the loop, starts and stops it, and
 * reads struct ep_imu_stats and the jitter histogram quantiles while it runs.
 */
#ifndef EP_IMU_H
#define EP_IMU_H

#include <stdint.h>

struct ep_ring_writer;

#define EP_IMU_MIN_RATE_HZ 1
#define EP_IMU_MAX_RATE_HZ 4000
#define EP_IMU_RECORD_TYPE 0x31554D49u /* "IMU1" little-endian: the ring record type of a sample */

#define EP_IMU_WAIT_SLEEP 0    /* clock_nanosleep(TIMER_ABSTIME) to the deadline, timer slack 1 ns */
#define EP_IMU_WAIT_HYBRID 1   /* sleep to deadline - guard, then spin on CLOCK_MONOTONIC */
#define EP_IMU_WAIT_DEVICE 2   /* no deadlines: block on the source (the IIO buffer paces itself) */

#define EP_IMU_SRC_SYNTH 0     /* constant body rate w from attitude q0, gravity rotated to match */
#define EP_IMU_SRC_ARRAY 1     /* preloaded rows of 10 doubles: t_s, gyr xyz rad/s, acc xyz m/s2, mag xyz */
#define EP_IMU_SRC_SYSFS 2     /* polled IIO sysfs: pread of in_*_raw files, times the scales */
#define EP_IMU_SRC_CHARDEV 3   /* IIO buffered char device (or a FIFO): scans decoded by the layout */

#define EP_IMU_CH_GX 0         /* channel slots in struct ep_imu_config: gyro xyz, accel xyz, mag xyz */
#define EP_IMU_CH_AX 3
#define EP_IMU_CH_MX 6
#define EP_IMU_CH_TS 9         /* chardev only: the s64 timestamp channel */
#define EP_IMU_NCH 10          /* array sizes below are spelled 10: the cffi cdef needs literals */
#define EP_IMU_SCAN_MAX 256    /* bytes in one buffered scan */

/* sample flags */
#define EP_IMU_F_MAG 1u        /* mag[] holds a magnetometer reading */
#define EP_IMU_F_RAW 2u        /* raw_*[] hold device counts */
#define EP_IMU_F_MISSED 4u     /* one or more deadlines were skipped just before this sample */
#define EP_IMU_F_DEVICE_TS 8u  /* device_ns is the IIO timestamp channel (else the recording time) */
#define EP_IMU_F_NO_ACCEL 16u  /* the filter ran gyro-only (accel norm zero) */

/* loop states */
#define EP_IMU_IDLE 0
#define EP_IMU_RUNNING 1
#define EP_IMU_STOPPED 2       /* stopped on request */
#define EP_IMU_ENDED 3         /* the source ended: array replay done, or max_samples reached */
#define EP_IMU_FAILED 4        /* the source failed; end_errno says why (-EPIPE: buffer closed) */

#define EP_IMU_HIST_SUB 32     /* log-linear histogram: 32 linear sub-buckets per power of two */
#define EP_IMU_HIST_BUCKETS 1184 /* exact below 32 ns, 1/32 relative resolution up to 2^41 ns */
#define EP_IMU_HIST_JITTER 0   /* sample time - deadline (CLOCK_MONOTONIC) */
#define EP_IMU_HIST_WAKE 1     /* wake time - sleep target (how late clock_nanosleep returned) */

/* One ring record, 192 bytes, native byte order; edgepipe.imu.IMU_SAMPLE_DTYPE mirrors it. */
struct ep_imu_sample {
    uint64_t seq;           /* 0, 1, 2, ... per published sample: a gap means the ring dropped some */
    int64_t deadline_ns;    /* CLOCK_MONOTONIC deadline of this sample (0 when device-paced) */
    int64_t sample_ns;      /* CLOCK_MONOTONIC_RAW right after the read */
    int64_t publish_ns;     /* CLOCK_MONOTONIC_RAW right before the ring write */
    int64_t device_ns;      /* IIO timestamp channel, or the recording's time; 0 if none */
    int64_t late_ns;        /* sample time - deadline on CLOCK_MONOTONIC (the jitter); 0 device-paced */
    int32_t raw_gyr[3], raw_acc[3], raw_mag[3];
    uint32_t flags;         /* EP_IMU_F_* */
    double gyr[3];          /* rad/s */
    double acc[3];          /* m/s^2 */
    double mag[3];          /* source units (IIO: gauss); zeros without EP_IMU_F_MAG */
    double q[4];            /* attitude after this sample, w x y z */
};

/* Filled by Python before ep_imu_create; read-only afterwards. */
struct ep_imu_config {
    double rate_hz;         /* deadline rate, EP_IMU_MIN_RATE_HZ..EP_IMU_MAX_RATE_HZ (ignored device-paced) */
    double dt_s;            /* filter sample period (for replay: the data's period, not the pace) */
    double beta;            /* Madgwick gain, >= 0 */
    double q0[4];           /* initial filter attitude */
    int32_t wait_mode;      /* EP_IMU_WAIT_* */
    int32_t source;         /* EP_IMU_SRC_* */
    int32_t use_mag;        /* run MARG updates when the source has a magnetometer */
    int32_t sched_priority; /* > 0: ask for SCHED_FIFO at this priority (refusal is reported, not fatal) */
    int32_t cpu;            /* >= 0: pin the loop thread to this CPU (refusal is reported) */
    int32_t loop_data;      /* array source: start over at the end instead of ending */
    int64_t guard_ns;       /* hybrid: initial guard; adapted from the observed wake lateness */
    int64_t guard_min_ns, guard_max_ns;
    uint64_t max_samples;   /* end after this many samples read (0: no limit) */
    /* synthetic */
    double syn_w[3];        /* body rate, rad/s */
    double syn_q0[4];       /* true initial attitude */
    double syn_g;           /* gravity magnitude, m/s^2 */
    uint64_t syn_nan_every; /* every Nth sample has a NaN gyro (0: never), to exercise the skip path */
    /* array */
    const double *rows;     /* n_rows x 10 doubles, owned by Python and kept alive while the loop lives */
    uint64_t n_rows;
    /* sysfs and chardev */
    int32_t fd[10]; /* sysfs: one in_*_raw fd per channel (-1 absent); chardev: fd[0] */
    double scale[10];
    /* chardev scan layout (from scan_elements): per channel slot, offset in the scan, storage bytes
     * (0 = channel absent), significant bits, right shift, signedness and byte order */
    uint32_t scan_size;
    uint32_t ch_off[10], ch_bytes[10], ch_bits[10], ch_shift[10];
    uint32_t ch_signed[10], ch_be[10];
};

/* Snapshot of the loop's counters (ep_imu_stats copies them with relaxed loads while it runs). */
struct ep_imu_stats {
    int32_t state;            /* EP_IMU_IDLE .. EP_IMU_FAILED */
    int32_t end_errno;        /* with EP_IMU_FAILED: -errno of the source failure */
    int32_t sched_errno;      /* errno of the refused SCHED_FIFO request, 0 if granted or not asked */
    int32_t affinity_errno;   /* errno of the refused CPU pinning, 0 if granted or not asked */
    int32_t slack_errno;      /* errno of prctl(PR_SET_TIMERSLACK) */
    int32_t pad_;
    uint64_t ticks;           /* deadlines served */
    uint64_t samples;         /* samples read from the source */
    uint64_t published;       /* records written to the ring */
    uint64_t dropped;         /* records not written: ring full */
    uint64_t consumer_gone;   /* records not written: the ring's consumer closed or died */
    uint64_t missed;          /* deadlines skipped because the loop ran more than a period late */
    uint64_t missed_events;   /* times the loop had to skip */
    int64_t missed_max_ns;    /* largest lateness that made the loop skip */
    uint64_t skipped_bad;     /* samples with a NaN/inf value: counted, not filtered, not published */
    uint64_t read_errors;     /* source reads that failed or did not parse (sample skipped) */
    uint64_t truncated;       /* bytes of a partial scan left when the buffer closed */
    uint64_t filter_no_accel; /* filter steps without accel correction (zero norm) */
    int64_t first_sample_ns;  /* CLOCK_MONOTONIC_RAW of the first and the last sample */
    int64_t last_sample_ns;
    int64_t start_ns;         /* CLOCK_MONOTONIC when the thread started and last updated the stats */
    int64_t now_ns;
    int64_t cpu_ns;           /* CPU time of the loop thread (CLOCK_THREAD_CPUTIME_ID) */
    int64_t guard_ns;         /* current hybrid guard */
    double q[4];              /* filter attitude after the last sample */
};

struct ep_imu;
int ep_imu_create(const struct ep_imu_config *cfg, struct ep_ring_writer *out, struct ep_imu **loop);
int ep_imu_start(struct ep_imu *loop);
int ep_imu_stop(struct ep_imu *loop);
int ep_imu_destroy(struct ep_imu *loop);
int ep_imu_stats(struct ep_imu *loop, struct ep_imu_stats *out);
int ep_imu_quantile(struct ep_imu *loop, int which, double q, int64_t *out_ns);
int ep_imu_hist_count(struct ep_imu *loop, int which, uint64_t *out);
int ep_imu_synth_truth(const struct ep_imu_config *cfg, double t_s, double q_out[4], double acc_out[3]);

#endif
