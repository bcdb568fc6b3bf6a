"""Time alignment (edgepipe.stages.align, the ``align`` stage kind in edgepipe.view.align): the attitude at a
frame's capture stamp from the IMU samples around it, against known answers."""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import pytest

from edgepipe import Ring
from edgepipe.control import messages as pb
from edgepipe.errors import ConfigError, ImuConfigError
from edgepipe.frames import FrameWriter
from edgepipe.imu_loop import IMU_RECORD_TYPE, IMU_SAMPLE_DTYPE
from edgepipe.pipeline.api import Inlet, Outlet
from edgepipe.pipeline.wire import unpack_record
from edgepipe.stages.align import Aligner, slerp
from edgepipe.stages.imu import SyntheticSource

T0 = 5_000_000_000  # an arbitrary RAW-clock start


def angle_deg(q1, q2) -> float:
    """The rotation angle between two unit quaternions, degrees."""
    d = abs(float(np.dot(np.asarray(q1, float), np.asarray(q2, float))))
    return math.degrees(2 * math.acos(min(1.0, d)))


def synthetic_samples(src: SyntheticSource, n: int, rate_hz: float = 1000.0) -> np.ndarray:
    s = np.zeros(n, IMU_SAMPLE_DTYPE)
    dt_ns = int(round(1e9 / rate_hz))
    for i in range(n):
        q, acc = src.truth(i * dt_ns * 1e-9)
        s[i]["seq"] = i
        s[i]["sample_ns"] = T0 + i * dt_ns
        s[i]["q"] = q
        s[i]["gyr"] = src.rate_rad_s
        s[i]["acc"] = acc
    return s


@pytest.fixture(scope="module")
def tumbling():
    """A synthetic source turning about a skew axis from a tilted start, and 2 s of its 1 kHz samples."""
    src = SyntheticSource(rate_rad_s=(1.3, -0.7, 2.9), q0=(0.9, 0.2, -0.3, 0.1))
    return src, synthetic_samples(src, 2000)


class TestAligner:
    def test_arbitrary_stamps_within_a_tenth_of_a_degree_of_the_truth(self, tumbling):
        """At 500 random stamps between 1 kHz samples the interpolated attitude is within 0.1 deg of the synthetic
        truth."""
        src, s = tumbling
        al = Aligner()
        al.push(s)
        rng = np.random.default_rng(7)
        stamps = rng.integers(T0, T0 + 1999 * 1_000_000, size=500)
        worst = 0.0
        for t in stamps:
            a = al.at(int(t))
            truth, _ = src.truth((int(t) - T0) * 1e-9)
            worst = max(worst, angle_deg(a.q, truth))
            assert not a.extrapolated
            assert 0 <= a.gap_ns <= 500_000
            assert a.before_ns <= t <= a.after_ns and a.after_ns - a.before_ns == 1_000_000
        assert worst < 0.1, f"worst error {worst:.4f} deg"

    def test_exact_on_sample_stamps(self, tumbling):
        """On a sample's own stamp the answer is that sample's quaternion within 1e-9, with gap 0."""
        _, s = tumbling
        al = Aligner()
        al.push(s)
        for i in (0, 1, 17, 999, 1999):
            a = al.at(int(s[i]["sample_ns"]))
            assert np.allclose(a.q, s[i]["q"], rtol=0, atol=1e-9) and a.gap_ns == 0 and not a.extrapolated

    def test_rates_are_linear_between_samples(self):
        """Body rates between two samples are their linear interpolation."""
        s = np.zeros(2, IMU_SAMPLE_DTYPE)
        s["sample_ns"] = [T0, T0 + 1000]
        s["q"] = [1, 0, 0, 0]
        s["gyr"] = [[0.0, 1.0, 2.0], [1.0, 3.0, 2.0]]
        al = Aligner()
        al.push(s)
        assert np.allclose(al.at(T0 + 250).gyr, [0.25, 1.5, 2.0])

    def test_lagging_imu_waits_then_extrapolates_at_the_body_rate(self, tumbling):
        """A stamp past the newest sample waits (None); forced, it is carried forward at the body rate and marked
        extrapolated; once the IMU passes it, it is interpolated."""
        src, s = tumbling
        al = Aligner()
        al.push(s[:1000])  # the IMU has reached 999 ms only
        t = T0 + 1_020_000_000  # a frame at 1020 ms
        assert al.at(t) is None  # wait
        a = al.at(t, extrapolate=True)
        assert a.extrapolated and a.gap_ns == 21_000_000 and a.before_ns == a.after_ns == int(s[999]["sample_ns"])
        truth, _ = src.truth(1.020)
        assert angle_deg(a.q, truth) < 1e-6  # constant body rate: carrying it forward is exact
        al.push(s[1000:1100])  # the IMU catches up: now it is interpolated
        b = al.at(t)
        assert b is not None and not b.extrapolated and angle_deg(b.q, truth) < 0.1

    def test_history_is_bounded_and_older_stamps_are_extrapolated_back(self, tumbling):
        """Only the newest ``capacity`` samples are kept; a stamp older than all of them is extrapolated back from
        the oldest."""
        _, s = tumbling
        al = Aligner(capacity=300)
        for i in range(0, 2000, 64):
            al.push(s[i:i + 64])
        assert len(al) == 300 and al.newest_ns == int(s[-1]["sample_ns"]) and al.oldest_ns == int(s[1700]["sample_ns"])
        assert al.at(int(s[1700]["sample_ns"])).gap_ns == 0
        old = al.at(int(s[1000]["sample_ns"]))
        assert old.extrapolated and old.gap_ns == 700_000_000

    def test_out_of_order_samples_are_skipped_and_counted(self, tumbling):
        """Samples not after the newest kept one are skipped and counted."""
        _, s = tumbling
        al = Aligner()
        al.push(s[10:20])
        assert al.push(s[5:25]) == 5  # 5..19 are not after the newest (19): skipped
        assert al.out_of_order == 15 and len(al) == 15

    def test_bad_capacity_is_a_typed_error(self):
        """A capacity below 2 is an ImuConfigError naming the value."""
        with pytest.raises(ImuConfigError, match="1"):
            Aligner(capacity=1)

    def test_slerp_takes_the_short_way(self):
        """q and -q interpolate to the same rotation (the shorter arc)."""
        q1 = (math.cos(0.3), 0.0, 0.0, math.sin(0.3))
        neg = tuple(-v for v in q1)
        assert angle_deg(slerp((1, 0, 0, 0), q1, 0.5), slerp((1, 0, 0, 0), neg, 0.5)) < 1e-9

    def test_bundled_recording_frames_at_sample_stamps_and_between(self):
        """The NGIMU recording's own quaternions at its own stamps: a frame on a sample's stamp gets that
        sample's quaternion exactly; one a third of the way gets the rotation a third of the way along."""
        from edgepipe._data import data_path

        rec = np.loadtxt(data_path("imu", "ngimu_quaternion.csv"), delimiter=",", skiprows=1, max_rows=3000)
        s = np.zeros(len(rec), IMU_SAMPLE_DTYPE)
        s["sample_ns"] = T0 + np.round(rec[:, 0] * 1e9).astype(np.int64)
        s["q"] = rec[:, 1:5] / np.linalg.norm(rec[:, 1:5], axis=1, keepdims=True)
        al = Aligner(capacity=len(rec))
        assert al.push(s) == len(rec)
        for i in range(0, len(rec) - 1, 97):
            ta, tb = int(s[i]["sample_ns"]), int(s[i + 1]["sample_ns"])
            assert np.allclose(al.at(ta).q, s[i]["q"], rtol=0, atol=1e-9)
            t = ta + (tb - ta) // 3
            a = al.at(t)
            whole = angle_deg(s[i]["q"], s[i + 1]["q"])
            u = (t - ta) / (tb - ta)
            assert abs(angle_deg(s[i]["q"], a.q) - u * whole) < 1e-6
            assert abs(angle_deg(a.q, s[i + 1]["q"]) - (1 - u) * whole) < 1e-6
            assert a.gap_ns == t - ta


def _imu_rows(n: int, start_ns: int, step_ns: int = 1_000_000) -> np.ndarray:
    s = np.zeros(n, IMU_SAMPLE_DTYPE)
    s["seq"] = np.arange(n)
    s["sample_ns"] = start_ns + np.arange(n) * step_ns
    s["q"] = [1.0, 0.0, 0.0, 0.0]
    s["gyr"] = [0.0, 0.0, 1.0]  # 1 rad/s about z
    return s


class TestAlignStage:
    def run_stage(self, frames_at, imu_batches, max_wait_ms):
        """Run an AlignStage over real rings: frames with capture stamps ``frames_at``; IMU rows written in
        ``imu_batches`` (each after the frames); returns the FrameMeta messages it published."""
        from edgepipe.view.align import AlignStage

        with Ring.create(capacity=1 << 20) as fr, Ring.create(capacity=1 << 20) as imu, \
                Ring.create(capacity=1 << 20) as out:
            fw = FrameWriter(fr.writer())
            iw = imu.writer()
            st = AlignStage("align", inputs={"frames": "f", "imu": "i"}, outputs={"output": "o"},
                            max_wait_ms=max_wait_ms)
            st.attach({"frames": Inlet(fr.reader(), "f"), "imu": Inlet(imu.reader(), "i")},
                      {"output": Outlet(out.writer(), "o")})
            st.open()
            for cap in frames_at:
                with fw.claim_frame((4, 6, 3), capture_ns=cap) as a:
                    a[:] = 1
            for batch in imu_batches:
                for row in batch:
                    assert iw.try_write(row.tobytes(), IMU_RECORD_TYPE)
            t = threading.Thread(target=st.loop)
            t.start()
            got, reader = [], out.reader()
            while len(got) < len(frames_at):
                data = reader.read(timeout_s=30)
                m = pb.FrameMeta()
                m.ParseFromString(unpack_record(data).payload)
                got.append(m)
            st.stop()
            t.join(10)
            assert not t.is_alive()
            st.close()
            return got, st

    def test_frames_get_the_interpolated_attitude_keyed_by_seq(self):
        """Frames through the stage come out as FrameMeta keyed by seq and capture stamp, with the interpolated
        attitude and its gap."""
        imu = _imu_rows(200, T0)
        got, st = self.run_stage([T0 + 10_500_000, T0 + 50_000_000], [imu], max_wait_ms=5000)
        assert [m.frame_seq for m in got] == [1, 2]
        assert [m.stamps.capture_ns for m in got] == [T0 + 10_500_000, T0 + 50_000_000]
        a0, a1 = got[0].attitude, got[1].attitude
        assert a0.gap_ns == 500_000 and not a0.extrapolated and a1.gap_ns == 0
        yaw0 = 2 * math.atan2(a0.orientation.z, a0.orientation.w)
        assert abs(a0.gyro.z - 1.0) < 1e-12 and abs(yaw0) < 1e-12  # the samples are level: so is between them
        assert (got[0].width, got[0].height, got[0].channels) == (6, 4, 3)
        assert st.counters["interpolated"] == 2

    def test_imu_lagging_the_frames_waits_then_extrapolates(self):
        """A frame the IMU never reaches waits max_wait_ms, then goes out extrapolated at the last body rate."""
        imu = _imu_rows(20, T0)  # the IMU stops at 19 ms; the frame is at 100 ms
        got, st = self.run_stage([T0 + 100_000_000], [imu], max_wait_ms=200)
        a = got[0].attitude
        assert a.extrapolated and a.gap_ns == 81_000_000 and a.before_ns == T0 + 19_000_000
        yaw = 2 * math.atan2(a.orientation.z, a.orientation.w)
        assert abs(yaw - 0.081) < 1e-9  # carried forward at 1 rad/s for 81 ms
        assert st.counters["extrapolated"] == 1

    def test_a_frame_gets_every_sample_queued_before_it_in_one_wake(self):
        """The IMU tap is drained (batch after batch) when a frame arrives: a frame 900.5 ms in, behind 1000
        queued samples (four batches' worth), is interpolated even with no time to wait (max_wait_ms=0)."""
        imu = _imu_rows(1000, T0)
        got, st = self.run_stage([T0 + 900_500_000], [imu], max_wait_ms=0)
        a = got[0].attitude
        assert not a.extrapolated and a.gap_ns == 500_000
        assert (a.before_ns, a.after_ns) == (T0 + 900_000_000, T0 + 901_000_000)
        assert st.aligner.pushed == 1000 and st.counters["interpolated"] == 1

    def test_with_nothing_waiting_it_parks_on_the_frames_not_polling_the_imu(self):
        """Idle, the stage wakes at most every 0.1 s (parked on its frames input), not every few ms, and still
        takes the IMU samples queued meanwhile."""
        from edgepipe.view.align import AlignStage

        with Ring.create(capacity=1 << 20) as fr, Ring.create(capacity=1 << 20) as imu, \
                Ring.create(capacity=1 << 20) as out:
            st = AlignStage("align", inputs={"frames": "f", "imu": "i"}, outputs={"output": "o"})
            fw = fr.writer()
            st.attach({"frames": Inlet(fr.reader(), "f"), "imu": Inlet(imu.reader(), "i")},
                      {"output": Outlet(out.writer(), "o")})
            st.open()
            t = threading.Thread(target=st.loop)
            t.start()
            try:
                iw = imu.writer()
                for row in _imu_rows(300, T0):
                    assert iw.try_write(row.tobytes(), IMU_RECORD_TYPE)
                t0, w0 = time.monotonic(), st.wakes
                deadline = t0 + 60  # a hang guard only
                while (st.aligner.pushed < 300 or time.monotonic() - t0 < 0.5) and time.monotonic() < deadline:
                    time.sleep(0.05)
                elapsed, wakes = time.monotonic() - t0, st.wakes - w0
                assert st.aligner.pushed == 300
                assert wakes <= elapsed / 0.1 + 2, (wakes, elapsed)  # a 5 ms poll would be ~100 in 0.5 s
                assert st.sched_applied == "batch"  # the default, on the thread running loop() only
                assert os.sched_getscheduler(t.native_id) == os.SCHED_BATCH != os.sched_getscheduler(0)
            finally:
                st.stop()
                t.join(10)
                st.close()
                fw.close()
            assert not t.is_alive()

    def test_negative_wait_is_a_config_error(self):
        """A negative max_wait_ms is a ConfigError naming the value."""
        from edgepipe.view.align import AlignStage

        with pytest.raises(ConfigError, match="-1"):
            AlignStage("a", max_wait_ms=-1)
