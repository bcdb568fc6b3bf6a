"""edgepipe.ahrs: the C Madgwick filter against the `ahrs` package, its edge cases, batch mode and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepipe.ahrs import Madgwick, Recording, load_recording

ahrs_filters = pytest.importorskip("ahrs.filters")

TOL_DEG = 0.05


def angle_deg(q1, q2) -> np.ndarray:
    """Rotation angle between unit quaternions (rows), in degrees; sign-insensitive."""
    dot = np.abs(np.sum(np.atleast_2d(q1) * np.atleast_2d(q2), axis=1))
    return np.degrees(2.0 * np.arccos(np.clip(dot, -1.0, 1.0)))


def ref_run(gyr, acc, mag=None, *, rate_hz, beta, q0=(1.0, 0.0, 0.0, 0.0)) -> np.ndarray:
    """Drive ahrs step-wise (its batch mode never applies sample 0) and return q after every sample."""
    m = ahrs_filters.Madgwick(frequency=rate_hz, gain=beta)
    q = np.array(q0, dtype=float)
    out = np.empty((len(gyr), 4))
    for i in range(len(gyr)):
        if mag is None:
            q = np.asarray(m.updateIMU(q, gyr=gyr[i], acc=acc[i]), dtype=float)
        else:
            q = np.asarray(m.updateMARG(q, gyr=gyr[i], acc=acc[i], mag=mag[i]), dtype=float)
        out[i] = q
    return out


@pytest.fixture(scope="module")
def rec() -> Recording:
    r = load_recording("ngimu")
    # ahrs skips the whole update for an exactly-zero gyro; the comparison would then test that quirk.
    assert np.linalg.norm(r.gyr, axis=1).min() > 0
    return r


def upsample(r: Recording, rate_hz: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.arange(0.0, r.t_s[-1], 1.0 / rate_hz)
    cols = [np.column_stack([np.interp(t, r.t_s, x[:, k]) for k in range(3)]) for x in (r.gyr, r.acc, r.mag)]
    return cols[0], cols[1], cols[2]


class TestAgainstAhrs:
    @pytest.mark.parametrize("marg", [False, True], ids=["imu", "marg"])
    def test_single_steps_match(self, marg):
        """One step from random states and samples equals ahrs's updateIMU/updateMARG to 1e-12."""
        rng = np.random.default_rng(7)
        for _ in range(50):
            q0 = rng.normal(size=4)
            q0 /= np.linalg.norm(q0)
            g, a, m = rng.normal(size=3), rng.normal(size=3) * 9.81, rng.normal(size=3) * 40
            ref = ref_run([g], [a], [m] if marg else None, rate_hz=200.0, beta=0.2, q0=q0)[0]
            f = Madgwick(beta=0.2, rate_hz=200.0, q0=q0)
            got = f.update(g, a, m if marg else None)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)

    @pytest.mark.parametrize("beta", [0.033, 0.1])
    def test_ngimu_native_rate_imu(self, rec, beta):
        """Over the whole NGIMU recording at its own rate, IMU quaternions stay within 0.05 deg of ahrs."""
        ref = ref_run(rec.gyr, rec.acc, rate_hz=rec.rate_hz, beta=beta)
        got = Madgwick(beta=beta, rate_hz=rec.rate_hz).update_batch(rec.gyr, rec.acc)
        assert angle_deg(got, ref).max() < TOL_DEG

    @pytest.mark.parametrize("name", ["xio3", "xsens"])
    def test_other_recordings_native_rate_imu(self, name):
        """The x-IMU3 (fast motion, ~700 deg/s) and Xsens recordings: within 0.05 deg of ahrs throughout."""
        r = load_recording(name)
        assert np.linalg.norm(r.gyr, axis=1).min() > 0  # see the rec fixture
        ref = ref_run(r.gyr, r.acc, rate_hz=r.rate_hz, beta=0.1)
        got = Madgwick(beta=0.1, rate_hz=r.rate_hz).update_batch(r.gyr, r.acc)
        assert angle_deg(got, ref).max() < TOL_DEG

    def test_ngimu_upsampled_1000hz_imu(self, rec):
        """Linearly upsampled to 1000 Hz (about 10k samples), IMU quaternions stay within 0.05 deg of ahrs."""
        gyr, acc, _ = upsample(rec, 1000.0)
        ref = ref_run(gyr, acc, rate_hz=1000.0, beta=0.1)
        got = Madgwick(beta=0.1, rate_hz=1000.0).update_batch(gyr, acc)
        assert angle_deg(got, ref).max() < TOL_DEG

    def test_ngimu_native_rate_marg(self, rec):
        """With the magnetometer, quaternions over the whole recording stay within 0.05 deg of ahrs."""
        ref = ref_run(rec.gyr, rec.acc, rec.mag, rate_hz=rec.rate_hz, beta=0.041)
        got = Madgwick(beta=0.041, rate_hz=rec.rate_hz).update_batch(rec.gyr, rec.acc, rec.mag)
        assert angle_deg(got, ref).max() < TOL_DEG


class TestEdgeCases:
    def test_zero_gyro_converges_to_static_tilt(self):
        """An exactly-zero gyro still gets the accel correction, so a static 30 deg tilt is reached (ahrs stays put)."""
        tilt = math.radians(30.0)
        acc = (0.0, math.sin(tilt), math.cos(tilt))
        f = Madgwick(beta=0.1, rate_hz=1000.0)
        f.update_batch(np.zeros((3000, 3)), np.tile(acc, (3000, 1)))
        want = (math.cos(tilt / 2), math.sin(tilt / 2), 0.0, 0.0)
        assert angle_deg(f.quaternion, want)[0] < 0.05
        ref = ref_run(np.zeros((10, 3)), np.tile(acc, (10, 1)), rate_hz=1000.0, beta=0.1)
        assert np.array_equal(ref[-1], [1.0, 0.0, 0.0, 0.0])  # the documented ahrs behaviour we differ from

    def test_zero_accel_integrates_gyro_only(self):
        """A zero accel norm skips the correction, counts the sample in no_accel and integrates the gyro."""
        f = Madgwick(beta=0.5, rate_hz=100.0)
        for _ in range(100):
            q = f.update((0.0, 0.0, math.pi / 2), (0.0, 0.0, 0.0))
        assert f.no_accel == 100 and f.updates == 100
        assert angle_deg(q, (math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)))[0] < 0.05

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    @pytest.mark.parametrize("where", ["gyr", "acc", "mag"])
    def test_nonfinite_sample_is_skipped_and_counted(self, bad, where):
        """A NaN/inf component leaves q unchanged and counts one skipped sample, per-sample and in batch."""
        g, a, m = [0.1, 0.2, 0.3], [0.0, 0.0, 1.0], [20.0, 0.0, -40.0]
        {"gyr": g, "acc": a, "mag": m}[where][1] = bad
        f = Madgwick(beta=0.1, rate_hz=100.0, q0=(0.9, 0.1, 0.2, 0.3))
        before = f.quaternion
        assert f.update(g, a, m) == before
        assert f.skipped_nonfinite == 1 and f.updates == 0
        out = f.update_batch(np.array([g, [0.1, 0.2, 0.3]]), np.array([a, [0, 0, 1.0]]), np.array([m, [20.0, 0.0, -40.0]]))
        assert np.array_equal(out[0], before) and np.isfinite(out).all()
        assert f.skipped_nonfinite == 2 and f.updates == 1

    def test_huge_finite_inputs_never_give_nan(self):
        """Gyro of 1e300 (the step overflows) is skipped; accel of 1e-200 or 1e200 normalises like 1 g."""
        f = Madgwick(beta=0.1, rate_hz=100.0)
        f.update((1e300, 0.0, 0.0), (0.0, 0.0, 1.0))
        assert f.skipped_nonfinite == 1 and f.quaternion == (1.0, 0.0, 0.0, 0.0)
        ref = Madgwick(beta=0.1, rate_hz=100.0).update((0.1, 0.0, 0.0), (0.0, 0.6, 0.8))
        for scale in (1e-200, 1e200):
            got = Madgwick(beta=0.1, rate_hz=100.0).update((0.1, 0.0, 0.0), (0.0, 0.6 * scale, 0.8 * scale))
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15)

    def test_zero_mag_falls_back_to_imu(self):
        """A MARG sample with zero magnetometer norm equals the IMU update and is counted in no_mag."""
        f, g = Madgwick(beta=0.1, rate_hz=100.0), Madgwick(beta=0.1, rate_hz=100.0)
        assert f.update((0.1, 0.2, 0.3), (0.1, 0.0, 1.0), (0.0, 0.0, 0.0)) == g.update((0.1, 0.2, 0.3), (0.1, 0.0, 1.0))
        assert f.no_mag == 1

    def test_upside_down_stationary_point_stays_finite(self):
        """At q = identity with accel straight down the gradient is zero: no correction, no 0/0 NaN."""
        f = Madgwick(beta=0.1, rate_hz=100.0)
        assert f.update((0.0, 0.0, 0.0), (0.0, 0.0, -1.0)) == (1.0, 0.0, 0.0, 0.0)

    def test_reset_restores_q0_and_zeroes_counters(self):
        """reset(q0) sets the normalised attitude and zeroes every counter."""
        f = Madgwick(beta=0.1, rate_hz=100.0)
        f.update((math.nan, 0, 0), (0, 0, 1))
        f.update((0.1, 0, 0), (0, 0, 0))
        f.reset((2.0, 0.0, 0.0, 0.0))
        assert f.quaternion == (1.0, 0.0, 0.0, 0.0)
        assert (f.updates, f.skipped_nonfinite, f.no_accel, f.no_mag) == (0, 0, 0, 0)


class TestBatch:
    @pytest.mark.parametrize("marg", [False, True], ids=["imu", "marg"])
    def test_batch_equals_per_sample_loop(self, rec, marg):
        """update_batch gives bit-for-bit the quaternions of a loop of update calls."""
        mag = rec.mag if marg else None
        f, g = Madgwick(beta=0.1, rate_hz=50.0), Madgwick(beta=0.1, rate_hz=50.0)
        batch = f.update_batch(rec.gyr, rec.acc, mag)
        loop = np.array([g.update(rec.gyr[i], rec.acc[i], None if mag is None else mag[i])
                         for i in range(len(rec.gyr))])
        assert np.array_equal(batch, loop)

    def test_per_sample_periods(self, rec):
        """dt_s given per sample equals feeding the samples one at a time with those periods."""
        dts = np.diff(rec.t_s, prepend=rec.t_s[0] - 0.02)
        f, g = Madgwick(beta=0.1, rate_hz=50.0), Madgwick(beta=0.1, rate_hz=50.0)
        batch = f.update_batch(rec.gyr, rec.acc, dt_s=dts)
        loop = np.vstack([g.update_batch(rec.gyr[i:i + 1], rec.acc[i:i + 1], dt_s=dts[i]) for i in range(len(dts))])
        assert np.array_equal(batch, loop)
        assert f.dt_s == 1.0 / 50.0

    def test_empty_batch(self):
        """A batch of zero samples returns a (0, 4) array and leaves q alone."""
        f = Madgwick()
        assert f.update_batch(np.empty((0, 3)), np.empty((0, 3))).shape == (0, 4)
        assert f.quaternion == (1.0, 0.0, 0.0, 0.0)


class TestErrors:
    @pytest.mark.parametrize("beta", [-0.1, math.nan, math.inf])
    def test_bad_beta(self, beta):
        """beta < 0, NaN or inf raises ValueError naming the value."""
        with pytest.raises(ValueError, match=repr(beta)):
            Madgwick(beta=beta)

    @pytest.mark.parametrize("kw", [{"rate_hz": 0}, {"rate_hz": -5.0}, {"rate_hz": math.inf}, {"dt_s": 0.0},
                                    {"dt_s": math.nan}])
    def test_bad_rate_or_period(self, kw):
        """A rate or period that is not finite and > 0 raises ValueError naming it."""
        with pytest.raises(ValueError, match=next(iter(kw))):
            Madgwick(**kw)

    def test_rate_and_period_together(self):
        """Giving both rate_hz and dt_s raises ValueError."""
        with pytest.raises(ValueError, match="not both"):
            Madgwick(rate_hz=100.0, dt_s=0.01)

    def test_non_number_beta(self):
        """A beta that is not a number raises TypeError naming it."""
        with pytest.raises(TypeError, match="'fast'"):
            Madgwick(beta="fast")

    @pytest.mark.parametrize("q0", [(0, 0, 0, 0), (1, 0, 0), (math.nan, 0, 0, 1), "wxyz"])
    def test_bad_q0(self, q0):
        """A q0 that is not 4 finite numbers of non-zero norm raises ValueError."""
        with pytest.raises(ValueError, match="q0"):
            Madgwick(q0=q0)

    @pytest.mark.parametrize("gyr,acc,mag,exc,name", [
        ((0.0, 0.0), (0.0, 0.0, 1.0), None, ValueError, "gyr"),
        ((0.0, 0.0, 0.0), 1.0, None, TypeError, "acc"),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, "x", 0.0), TypeError, "mag"),
    ])
    def test_bad_sample(self, gyr, acc, mag, exc, name):
        """A per-sample argument that is not 3 numbers raises, naming the argument."""
        with pytest.raises(exc, match=name):
            Madgwick().update(gyr, acc, mag)

    def test_batch_wrong_dtype(self):
        """float32 arrays raise TypeError naming the dtype."""
        with pytest.raises(TypeError, match="float32"):
            Madgwick().update_batch(np.zeros((4, 3), np.float32), np.zeros((4, 3)))

    def test_batch_wrong_shapes(self):
        """Shapes other than (N, 3), or row counts that differ, raise ValueError naming the shape."""
        with pytest.raises(ValueError, match=r"\(4, 4\)"):
            Madgwick().update_batch(np.zeros((4, 4)), np.zeros((4, 3)))
        with pytest.raises(ValueError, match="acc has 5 rows"):
            Madgwick().update_batch(np.zeros((4, 3)), np.zeros((5, 3)))
        with pytest.raises(ValueError, match="dt_s"):
            Madgwick().update_batch(np.zeros((4, 3)), np.zeros((4, 3)), dt_s=np.ones(3))


class TestRecording:
    def test_ngimu_units_and_shapes(self, rec):
        """The NGIMU recording loads as float64 with gyro in rad/s (peak ~160 deg/s) and accel near 1 g at rest."""
        assert rec.gyr.shape == rec.acc.shape == rec.mag.shape == (499, 3)
        assert rec.q_ref.shape[1] == 4 and rec.gyr.dtype == np.float64
        assert 2.0 < np.abs(rec.gyr).max() < 3.5
        assert abs(np.linalg.norm(rec.acc[0]) - 1.0) < 0.05
        assert 49.0 < rec.rate_hz < 51.0

    def test_unknown_recording(self):
        """An unknown name raises ValueError listing the bundled ones."""
        with pytest.raises(ValueError, match="'ngimu', 'xio3', 'xsens'"):
            load_recording("nope")
