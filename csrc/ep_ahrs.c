/*
 * ep_ahrs.c: owns the Madgwick gradient-descent attitude filter (IMU and MARG variants), per sample and
 * over a batch of samples, in float64. State lives in a caller-allocated struct ep_ahrs; nothing here
 * allocates, keeps globals, or blocks.
 *
 * The update follows Madgwick (2010), eqs. 12-13 and 25-34, in the same order as the `ahrs` package so
 * single steps agree to rounding: qdot = q (x) (0, gyr) / 2; if the accel norm is non-zero, subtract
 * beta * the normalised gradient of the gravity (and, with a magnetometer, earth-field) objective;
 * integrate q += qdot * dt and renormalise.
 *
 * Invariants and the edge cases (where this file differs from `ahrs` on purpose):
 *   - q is always finite and of unit norm. A sample with any NaN/inf component (or a non-finite dt), or
 *     one whose step would overflow, leaves q unchanged and counts skipped_nonfinite.
 *   - gyro exactly zero is an ordinary sample: the accelerometer correction still applies (`ahrs`
 *     returns q unchanged), so a static sensor converges to its tilt.
 *   - accel norm zero: the correction is skipped and q integrates the gyro only (counted in no_accel).
 *   - MARG with mag norm zero: the sample is applied as an IMU update (counted in no_mag), as in `ahrs`.
 *   - a gradient of exactly zero norm (the objective is at a stationary point, e.g. upside down with
 *     q = identity) skips the correction instead of dividing 0 by 0.
 */
#include "edgepipe.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

static inline int finite3(const double *v)
{
    return isfinite(v[0]) && isfinite(v[1]) && isfinite(v[2]);
}

/* u = v / |v| for a finite v; returns 0 (u untouched) when |v| == 0. The fast path needs the square sum
 * to be a normal number; tiny or huge vectors (1e-200, 1e200) are first scaled by their largest
 * component so they still normalise instead of underflowing to "zero" or overflowing to inf. */
static inline int unit3(const double *v, double u[3])
{
    double n2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
    if (n2 >= DBL_MIN && n2 <= DBL_MAX) {
        double r = 1.0 / sqrt(n2);
        u[0] = v[0] * r;
        u[1] = v[1] * r;
        u[2] = v[2] * r;
        return 1;
    }
    double s = fmax(fabs(v[0]), fmax(fabs(v[1]), fabs(v[2])));
    if (s == 0.0)
        return 0;
    double x = v[0] / s, y = v[1] / s, z = v[2] / s;
    double r = 1.0 / sqrt(x * x + y * y + z * z);
    u[0] = x * r;
    u[1] = y * r;
    u[2] = z * r;
    return 1;
}

/* One filter step; mag == NULL means IMU. Returns 0 if q moved, 1 if the sample was skipped.
 * Always inlined: at -O2 gcc otherwise calls it out of line from the batch loop; inlined, each caller
 * folds the IMU/MARG branch away (callgrind: 301 -> 256 instructions per IMU update). */
static inline __attribute__((always_inline)) int apply(struct ep_ahrs *f, const double *g,
                                                       const double *acc, const double *mag, double dt)
{
    if (!finite3(g) || !finite3(acc) || (mag && !finite3(mag)) || !isfinite(dt)) {
        f->skipped_nonfinite++;
        return 1;
    }
    const double w = f->q[0], x = f->q[1], y = f->q[2], z = f->q[3];

    /* Rate of change from the gyro: half the product q (x) (0, g). */
    double dw = 0.5 * (-x * g[0] - y * g[1] - z * g[2]);
    double dx = 0.5 * (w * g[0] + y * g[2] - z * g[1]);
    double dy = 0.5 * (w * g[1] - x * g[2] + z * g[0]);
    double dz = 0.5 * (w * g[2] + x * g[1] - y * g[0]);

    double a[3];
    if (unit3(acc, a)) {
        /* Gravity objective: predicted direction of earth +z in the sensor frame minus the measured one,
         * and its gradient J^T f with J the 3x4 Jacobian of the prediction. */
        const double f0 = 2.0 * (x * z - w * y) - a[0];
        const double f1 = 2.0 * (w * x + y * z) - a[1];
        const double f2 = 2.0 * (0.5 - x * x - y * y) - a[2];
        double sw = -2.0 * y * f0 + 2.0 * x * f1;
        double sx = 2.0 * z * f0 + 2.0 * w * f1 - 4.0 * x * f2;
        double sy = -2.0 * w * f0 + 2.0 * z * f1 - 4.0 * y * f2;
        double sz = 2.0 * x * f0 + 2.0 * y * f1;

        double m[3];
        if (mag && !unit3(mag, m)) {
            f->no_mag++;
            mag = NULL;
        }
        if (mag) {
            /* Earth field seen through q (h = q (x) m (x) q*), flattened onto the x-z plane so the
             * objective constrains heading only, not the field's inclination. */
            const double hx = m[0] * (1.0 - 2.0 * (y * y + z * z)) + m[1] * 2.0 * (x * y - w * z) +
                              m[2] * 2.0 * (x * z + w * y);
            const double hy = m[0] * 2.0 * (x * y + w * z) + m[1] * (1.0 - 2.0 * (x * x + z * z)) +
                              m[2] * 2.0 * (y * z - w * x);
            const double bz = m[0] * 2.0 * (x * z - w * y) + m[1] * 2.0 * (y * z + w * x) +
                              m[2] * (1.0 - 2.0 * (x * x + y * y));
            const double bx = sqrt(hx * hx + hy * hy);
            const double f3 = 2.0 * bx * (0.5 - y * y - z * z) + 2.0 * bz * (x * z - w * y) - m[0];
            const double f4 = 2.0 * bx * (x * y - w * z) + 2.0 * bz * (w * x + y * z) - m[1];
            const double f5 = 2.0 * bx * (w * y + x * z) + 2.0 * bz * (0.5 - x * x - y * y) - m[2];
            sw += -2.0 * bz * y * f3 + (-2.0 * bx * z + 2.0 * bz * x) * f4 + 2.0 * bx * y * f5;
            sx += 2.0 * bz * z * f3 + (2.0 * bx * y + 2.0 * bz * w) * f4 +
                  (2.0 * bx * z - 4.0 * bz * x) * f5;
            sy += (-4.0 * bx * y - 2.0 * bz * w) * f3 + (2.0 * bx * x + 2.0 * bz * z) * f4 +
                  (2.0 * bx * w - 4.0 * bz * y) * f5;
            sz += (-4.0 * bx * z + 2.0 * bz * x) * f3 + (-2.0 * bx * w + 2.0 * bz * y) * f4 +
                  2.0 * bx * x * f5;
        }
        /* Every term is bounded (|q| = |a| = |m| = 1), so n2 cannot overflow; 0 means a stationary
         * point of the objective, where the direction is undefined: no correction then. */
        const double n2 = sw * sw + sx * sx + sy * sy + sz * sz;
        if (n2 > 0.0) {
            const double k = f->beta / sqrt(n2);
            dw -= k * sw;
            dx -= k * sx;
            dy -= k * sy;
            dz -= k * sz;
        }
    } else {
        f->no_accel++;
    }

    const double nw = w + dw * dt, nx = x + dx * dt, ny = y + dy * dt, nz = z + dz * dt;
    const double n2 = nw * nw + nx * nx + ny * ny + nz * nz;
    if (!(n2 >= DBL_MIN && n2 <= DBL_MAX)) { /* a huge finite gyro or dt overflowed the step */
        f->skipped_nonfinite++;
        return 1;
    }
    const double r = 1.0 / sqrt(n2);
    f->q[0] = nw * r;
    f->q[1] = nx * r;
    f->q[2] = ny * r;
    f->q[3] = nz * r;
    f->updates++;
    return 0;
}

/* q = identity, counters zeroed. beta >= 0 and dt > 0, both finite, else -EINVAL. */
int ep_ahrs_init(struct ep_ahrs *f, double beta, double dt)
{
    if (!f)
        return -EBADF;
    if (!(beta >= 0.0 && beta <= DBL_MAX) || !(dt > 0.0 && dt <= DBL_MAX))
        return -EINVAL;
    *f = (struct ep_ahrs){.q = {1.0, 0.0, 0.0, 0.0}, .beta = beta, .dt = dt};
    return 0;
}

/* One gyro + accel sample with period f->dt. Returns 0 if applied, 1 if skipped (and counted). */
int ep_ahrs_update_imu(struct ep_ahrs *f, const double *gyr, const double *acc)
{
    if (!f)
        return -EBADF;
    if (!gyr || !acc)
        return -EINVAL;
    return apply(f, gyr, acc, NULL, f->dt);
}

/* One gyro + accel + magnetometer sample with period f->dt. Returns 0 if applied, 1 if skipped. */
int ep_ahrs_update_marg(struct ep_ahrs *f, const double *gyr, const double *acc, const double *mag)
{
    if (!f)
        return -EBADF;
    if (!gyr || !acc || !mag)
        return -EINVAL;
    return apply(f, gyr, acc, mag, f->dt);
}

/* One sample from the staging array f->in, written there by the caller: Python's per-sample path. A
 * one-argument cffi call plus struct.pack_into costs ~120 ns where passing six doubles costs ~145 ns. */
int ep_ahrs_step_imu(struct ep_ahrs *f)
{
    if (!f)
        return -EBADF;
    return apply(f, f->in, f->in + 3, NULL, f->dt);
}

/* As ep_ahrs_step_imu, with the magnetometer from f->in[6..8]. */
int ep_ahrs_step_marg(struct ep_ahrs *f)
{
    if (!f)
        return -EBADF;
    return apply(f, f->in, f->in + 3, f->in + 6, f->dt);
}

/* n samples in order from [n,3] rows gyr, acc and (MARG, else NULL) mag, with per-sample periods dt[n]
 * (NULL: f->dt). q_out[n,4] receives q after each sample (a skipped sample repeats the previous q).
 * Returns 0; the counters in f say what was skipped. */
int ep_ahrs_batch(struct ep_ahrs *f, const double *gyr, const double *acc, const double *mag,
                  const double *dt, uint64_t n, double *q_out)
{
    if (!f)
        return -EBADF;
    if (n && (!gyr || !acc || !q_out))
        return -EINVAL;
    /* Two loops so the IMU one carries no magnetometer code. */
    if (mag) {
        for (uint64_t i = 0; i < n; i++) {
            apply(f, gyr + 3 * i, acc + 3 * i, mag + 3 * i, dt ? dt[i] : f->dt);
            memcpy(q_out + 4 * i, f->q, sizeof f->q);
        }
    } else {
        for (uint64_t i = 0; i < n; i++) {
            apply(f, gyr + 3 * i, acc + 3 * i, NULL, dt ? dt[i] : f->dt);
            memcpy(q_out + 4 * i, f->q, sizeof f->q);
        }
    }
    return 0;
}
