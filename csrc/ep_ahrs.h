/*
 * ep_ahrs.h: Madgwick gradient-descent attitude filter (csrc/ep_ahrs.c), float64.
 *
 * Conventions: quaternion w, x, y, z (scalar first), unit norm, rotating the sensor frame into the earth
 * frame; gravity is +z in the earth frame, so a level sensor at rest reads acc = (0, 0, +1 g). Gyro in
 * rad/s; accelerometer and magnetometer in any unit (both are normalised). Arrays are contiguous [N,3]
 * float64 rows; quaternions out are contiguous [N,4].
 */
#ifndef EP_AHRS_H
#define EP_AHRS_H

#include <stdint.h>

/* Plain struct the caller allocates once: every field may be read; q, beta, dt and in written. */
struct ep_ahrs {
    double q[4];                /* current attitude w, x, y, z */
    double beta;                /* gradient step gain, rad/s */
    double dt;                  /* sample period, s */
    double in[9];               /* staging for ep_ahrs_step_*: gyro xyz, accel xyz, mag xyz */
    uint64_t updates;           /* samples applied (q moved) */
    uint64_t skipped_nonfinite; /* samples skipped: NaN/inf input, or a step that would overflow */
    uint64_t no_accel;          /* samples applied gyro-only because the accel norm was zero */
    uint64_t no_mag;            /* MARG samples applied as IMU because the mag norm was zero */
};

int ep_ahrs_init(struct ep_ahrs *f, double beta, double dt);
int ep_ahrs_update_imu(struct ep_ahrs *f, const double *gyr, const double *acc);
int ep_ahrs_update_marg(struct ep_ahrs *f, const double *gyr, const double *acc, const double *mag);
int ep_ahrs_step_imu(struct ep_ahrs *f);
int ep_ahrs_step_marg(struct ep_ahrs *f);
int ep_ahrs_batch(struct ep_ahrs *f, const double *gyr, const double *acc, const double *mag,
                  const double *dt, uint64_t n, double *q_out);

#endif
