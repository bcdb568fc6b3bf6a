"""edgepipe.stages.imu: the C sampling loop, its sources (synthetic, CSV replay, IIO sysfs and buffered char device
through a fake tree and a FIFO), ImuStage's errors and stats, and the reader side."""

from __future__ import annotations

import math
import os
import re
import struct
import time
import warnings

import numpy as np
import pytest

from edgepipe import Ring
from edgepipe.ahrs import Madgwick, load_recording
from edgepipe.errors import (
    ImuConfigError,
    ImuDeviceNotFoundError,
    ImuError,
    ImuSourceClosedError,
    ImuSourceError,
)
from edgepipe.imu_loop import FLAG_DEVICE_TS, FLAG_MISSED, FLAG_RAW, ImuLoopConfig
from edgepipe.stages.imu import (
    IMU_SAMPLE_DTYPE,
    CsvSource,
    IioSource,
    ImuReader,
    ImuStage,
    SyntheticSource,
    euler_deg,
    parse_scan_type,
)
from edgepipe.stages.imu.csvfile import G


def run_to_array(stage: ImuStage, ring: Ring, max_batch: int = 4096) -> np.ndarray:
    """Run the stage to its end and return every record it published."""
    rc = stage.run()
    assert rc == 0, stage.error
    out = []
    rd = ImuReader(ring.reader(), max_batch)
    while True:
        b = rd.read(copy=True)
        if not len(b):
            break
        out.append(b)
    return np.concatenate(out) if out else np.zeros(0, IMU_SAMPLE_DTYPE)


def angle_deg(q1, q2) -> float:
    d = abs(float(np.dot(q1, q2)))
    return math.degrees(2 * math.acos(min(1.0, d)))


@pytest.fixture
def ring():
    with Ring.create(capacity=1 << 22) as r:
        yield r


# ---------------------------------------------------------------------------------------------------
class TestRecordLayout:
    def test_dtype_matches_c_struct(self):
        """IMU_SAMPLE_DTYPE is 192 bytes with every field at the C struct's offset (checked at import too)."""
        from edgepipe._ffi import ffi

        assert IMU_SAMPLE_DTYPE.itemsize == ffi.sizeof("struct ep_imu_sample") == 192
        for f in IMU_SAMPLE_DTYPE.names:
            assert IMU_SAMPLE_DTYPE.fields[f][1] == ffi.offsetof("struct ep_imu_sample", f)

    def test_reader_refuses_foreign_records(self, ring):
        """A ring record that is not an ImuSample raises ImuSourceError naming its size and type."""
        ring.writer().try_write(b"x" * 10, type_id=7)
        with pytest.raises(ImuSourceError, match="10 bytes, type 0x7"):
            ImuReader(ring.reader()).read()


# ---------------------------------------------------------------------------------------------------
class TestSynthetic:
    def test_constant_rotation_gives_the_expected_quaternion(self, ring):
        """A level sensor turning 90 deg/s about z for 0.5 s: every published quaternion is within 0.2 deg
        of the closed-form attitude at its sample time, and the last is about 45 deg of yaw."""
        src = SyntheticSource.rotating(rate_dps=90.0, axis="z")
        st = ImuStage(src, rate_hz=1000, wait="sleep", output=ring.writer(), max_samples=500)
        recs = run_to_array(st, ring)
        assert len(recs) == 500
        for i in (0, 99, 250, 499):
            truth, _ = src.truth((i + 1) * 1e-3)  # the filter has integrated samples 0..i, i.e. up to (i+1) dt
            assert angle_deg(recs["q"][i], truth) < 0.2
        assert euler_deg(recs["q"][-1])[2] == pytest.approx(45.0, abs=0.2)

    def test_rotation_about_x_with_gravity_moving(self, ring):
        """Rotating 60 deg/s about x, the accelerometer sees gravity turn; the filter tracks the true
        attitude within 1 deg after 0.5 s."""
        src = SyntheticSource.rotating(rate_dps=60.0, axis="x", rate_hz=2000)
        st = ImuStage(src, rate_hz=2000, wait="sleep", output=ring.writer(), max_samples=1000, beta=0.05)
        recs = run_to_array(st, ring)
        truth, acc = src.truth(1000 / 2000)
        assert angle_deg(recs["q"][-1], truth) < 1.0
        assert np.linalg.norm(recs["acc"][-1]) == pytest.approx(G)

    def test_static_tilt_converges(self, ring):
        """At rest tilted 30 deg about x, a filter started level converges to the tilt within 0.5 deg."""
        src = SyntheticSource.tilted(30.0, "x", rate_hz=4000)
        st = ImuStage(src, rate_hz=4000, wait="sleep", output=ring.writer(), max_samples=2000, beta=1.0)
        recs = run_to_array(st, ring)
        roll, pitch, _ = euler_deg(recs["q"][-1])
        assert roll == pytest.approx(30.0, abs=0.5)
        assert abs(pitch) < 0.5

    def test_nan_samples_are_counted_and_skipped(self, ring):
        """Every 10th sample holding a NaN is counted in skipped_bad and not published; no quaternion is NaN."""
        src = SyntheticSource.rotating(rate_dps=30.0, axis="y", nan_every=10, rate_hz=4000)
        st = ImuStage(src, rate_hz=4000, wait="sleep", output=ring.writer(), max_samples=200)
        recs = run_to_array(st, ring)
        s = st.stats()
        assert s["samples"] == 200 and s["skipped_bad"] == 20 and s["published"] == 180 == len(recs)
        assert np.isfinite(recs["q"]).all() and np.isfinite(recs["gyr"]).all()
        assert np.array_equal(recs["seq"], np.arange(180))

    def test_without_output_it_filters_and_counts(self):
        """output=None: samples are filtered and counted, nothing is published, quaternion() follows."""
        src = SyntheticSource.rotating(rate_dps=90.0, axis="z", rate_hz=4000)
        st = ImuStage(src, rate_hz=4000, wait="sleep", max_samples=400)
        assert st.run() == 0
        assert st.stats()["samples"] == 400 and st.stats()["published"] == 0
        assert angle_deg(st.quaternion(), src.truth(0.1)[0]) < 0.2


# ---------------------------------------------------------------------------------------------------
class TestCsvReplay:
    def test_bundled_recording_matches_offline_madgwick(self, ring):
        """Replaying the NGIMU recording through the C loop gives the same quaternions as
        edgepipe.ahrs.Madgwick run offline on the same samples (|dq| <= 1e-9)."""
        rec = load_recording("ngimu")
        src = CsvSource("ngimu", rate_hz=4000)
        st = ImuStage(src, output=ring.writer(), beta=0.1)
        recs = run_to_array(st, ring)
        assert len(recs) == len(rec.gyr) == st.stats()["published"]
        assert st.stats()["loop_state"] == "ended"
        q_off = Madgwick(beta=0.1, dt_s=1 / src.data_rate_hz).update_batch(rec.gyr, rec.acc)
        assert np.abs(recs["q"] - q_off).max() <= 1e-9
        assert np.allclose(recs["acc"], rec.acc * G) and np.allclose(recs["gyr"], rec.gyr)
        assert np.allclose(recs["device_ns"] / 1e9, rec.t_s, atol=1e-9)

    @pytest.mark.parametrize("name", ["xio3", "xsens"])
    def test_other_bundled_recordings_match_offline(self, ring, name):
        """The x-IMU3 and Xsens recordings replay through the loop exactly as offline Madgwick runs them."""
        rec = load_recording(name)
        src = CsvSource(name, rate_hz=4000)
        recs = run_to_array(ImuStage(src, output=ring.writer(), beta=0.05), ring)
        q_off = Madgwick(beta=0.05, dt_s=1 / src.data_rate_hz).update_batch(rec.gyr, rec.acc)
        assert len(recs) == len(rec.gyr) and np.abs(recs["q"] - q_off).max() <= 1e-9

    def test_generic_parser_reads_the_raw_xio3_file(self):
        """CsvSource on the file itself (Timestamp (us), deg/s, g headers) gives the loader's values."""
        from importlib.resources import files

        path = files("edgepipe").joinpath("data", "imu", "xio3_inertial.csv")
        rec = load_recording("xio3")
        src = CsvSource(str(path))
        assert src.malformed_rows == 0 and not src.has_mag
        assert np.allclose(src.rows[:, 0], rec.t_s) and np.allclose(src.gyr, rec.gyr)
        assert np.allclose(src.acc, rec.acc * G)

    def test_resampled_to_1000_hz(self, ring):
        """resample_hz=1000 interpolates onto a uniform 1 ms grid; the loop's output matches Madgwick on it."""
        src = CsvSource("ngimu", rate_hz=4000, resample_hz=1000)
        rec = load_recording("ngimu")
        assert len(src.rows) == int(rec.t_s[-1] * 1000) + 1
        assert np.allclose(np.diff(src.rows[:, 0]), 1e-3)
        assert src.gyr[500, 0] == pytest.approx(np.interp(0.5, rec.t_s, rec.gyr[:, 0]))
        st = ImuStage(src, output=ring.writer(), max_samples=1500)
        recs = run_to_array(st, ring)
        q_off = Madgwick(beta=0.1, dt_s=1e-3).update_batch(src.gyr[:1500].copy(), src.acc[:1500].copy())
        assert np.abs(recs["q"] - q_off).max() <= 1e-9

    def test_loop_replays_again(self):
        """loop=True starts over at the end: more samples than rows, device time keeps increasing."""
        src = CsvSource("ngimu", rate_hz=4000, loop=True)
        st = ImuStage(src, max_samples=len(src.rows) + 100)
        assert st.run() == 0 and st.stats()["samples"] == len(src.rows) + 100

    def test_malformed_rows_counted_and_nan_rows_skipped(self, tmp_path, ring):
        """A CSV with a short row and a non-numeric row: both counted in malformed_rows (with their lines)
        and skipped; a NaN row parses but the loop skips it; the rest is published with finite q."""
        p = tmp_path / "imu.csv"
        lines = ["Time (s),Gyroscope X (deg/s),Gyroscope Y (deg/s),Gyroscope Z (deg/s),"
                 "Accelerometer X (g),Accelerometer Y (g),Accelerometer Z (g)"]
        for i in range(20):
            lines.append(f"{i * 0.01:.2f},1.0,2.0,3.0,0.0,0.0,1.0")
        lines[5] = "0.04,1.0,2.0"
        lines[8] = "0.07,1.0,abc,3.0,0.0,0.0,1.0"
        lines[12] = "0.11,nan,2.0,3.0,0.0,0.0,1.0"
        p.write_text("\n".join(lines) + "\n")
        src = CsvSource(p, rate_hz=1000)
        assert src.malformed_rows == 2 and src.malformed_lines == [6, 9]
        assert src.gyr[0, 0] == pytest.approx(math.radians(1.0)) and src.acc[0, 2] == pytest.approx(G)
        st = ImuStage(src, output=ring.writer())
        recs = run_to_array(st, ring)
        s = st.stats()
        assert s["samples"] == 18 and s["skipped_bad"] == 1 and len(recs) == 17 and s["malformed_rows"] == 2
        assert np.isfinite(recs["q"]).all()

    def test_unusable_csv_files_raise_typed_errors(self, tmp_path):
        """No file, no usable rows, a missing gyro column, an unknown unit: typed errors naming the problem."""
        with pytest.raises(ImuDeviceNotFoundError, match="nope.csv"):
            CsvSource(tmp_path / "nope.csv")
        bad = tmp_path / "bad.csv"
        bad.write_text("Time (s),Gyroscope X (deg/s),Gyroscope Y (deg/s),Gyroscope Z (deg/s),"
                       "Accelerometer X (g),Accelerometer Y (g),Accelerometer Z (g)\nx,y\n1,2,3\n")
        with pytest.raises(ImuSourceError, match=r"0 usable rows \(2 malformed"):
            CsvSource(bad)
        nogyr = tmp_path / "nogyr.csv"
        nogyr.write_text("Time (s),Accelerometer X (g),Accelerometer Y (g),Accelerometer Z (g)\n0,0,0,1\n")
        with pytest.raises(ImuDeviceNotFoundError, match="no gyr x column"):
            CsvSource(nogyr)
        unit = tmp_path / "unit.csv"
        unit.write_text("Time (s),Gyroscope X (rpm),Gyroscope Y (rpm),Gyroscope Z (rpm),"
                        "Accelerometer X (g),Accelerometer Y (g),Accelerometer Z (g)\n0,0,0,0,0,0,1\n")
        with pytest.raises(ImuSourceError, match="'rpm'"):
            CsvSource(unit)

    HEADER = ("Time (s),Gyroscope X (deg/s),Gyroscope Y (deg/s),Gyroscope Z (deg/s),"
              "Accelerometer X (g),Accelerometer Y (g),Accelerometer Z (g)\n")

    def test_non_utf8_csv_is_a_typed_error(self, tmp_path):
        """Bytes that are not UTF-8 (in the header or in a row) raise ImuSourceError naming the file, not
        UnicodeDecodeError (found by tests/fuzz/fuzz_imu_csv.py)."""
        for name, blob in (("head.csv", b"\xcf\xd3" + self.HEADER.encode()),
                           ("row.csv", self.HEADER.encode() + b"0,0,0,0,0,0,1\n\xff\xfe,1\n1,0,0,0,0,0,1\n")):
            (tmp_path / name).write_bytes(blob)
            with pytest.raises(ImuSourceError, match=name):
                CsvSource(tmp_path / name)

    @pytest.mark.parametrize("times", [("nan", "1"), ("0", "inf"), ("1", "0"), ("0", "1e9")])
    def test_resampling_an_unusable_time_column_is_a_typed_error(self, tmp_path, times):
        """resample_hz on a time column that is NaN, infinite, decreasing or spans more rows than
        MAX_RESAMPLED_ROWS raises ImuSourceError, not ValueError/OverflowError/IndexError or MemoryError (found by
        tests/fuzz/fuzz_imu_csv.py)."""
        p = tmp_path / "t.csv"
        p.write_text(self.HEADER + "".join(f"{t},0,0,0,0,0,1\n" for t in times))
        with pytest.raises(ImuSourceError, match="cannot resample"):
            CsvSource(p, resample_hz=1000)


# ---------------------------------------------------------------------------------------------------
ACC_SCALE = 0.000598  # m/s^2 per LSB (LSM6DSOX at +-2 g)
GYR_SCALE = 0.000152716  # rad/s per LSB (+-250 dps)


def make_device(root, n=0, name="lsm6dsox", accel=True, gyro=True, values=None):
    d = root / f"iio:device{n}"
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "sampling_frequency").write_text("416.000000\n")
    values = values or {}
    if accel:
        (d / "in_accel_scale").write_text(f"{ACC_SCALE}\n")
        for i, ax in enumerate("xyz"):
            (d / f"in_accel_{ax}_raw").write_text(f"{values.get('a' + ax, [10, -20, 16384][i])}\n")
    if gyro:
        (d / "in_anglvel_scale").write_text(f"{GYR_SCALE}\n")
        for i, ax in enumerate("xyz"):
            (d / f"in_anglvel_{ax}_raw").write_text(f"{values.get('g' + ax, [100, -200, 300][i])}\n")
    return d


class TestIioSysfs:
    def test_polled_values_are_scaled(self, tmp_path, ring):
        """Polled sysfs: the records hold the raw counts written in the fake tree and raw x scale."""
        make_device(tmp_path)
        st = ImuStage(IioSource(root=tmp_path, device="lsm6dsox"), rate_hz=1000, wait="sleep",
                      output=ring.writer(), max_samples=20)
        recs = run_to_array(st, ring)
        assert len(recs) == 20
        assert recs["raw_acc"][0].tolist() == [10, -20, 16384] and recs["raw_gyr"][0].tolist() == [100, -200, 300]
        assert recs["acc"][0].tolist() == [10 * ACC_SCALE, -20 * ACC_SCALE, 16384 * ACC_SCALE]
        assert recs["gyr"][0].tolist() == [100 * GYR_SCALE, -200 * GYR_SCALE, 300 * GYR_SCALE]
        assert (recs["flags"] & FLAG_RAW).all()
        assert st.source.sampling_frequency == 416.0

    def test_split_accel_and_gyro_devices(self, tmp_path, ring):
        """st_lsm6dsx registers lsm6dsox_accel and lsm6dsox_gyro as two devices: device='lsm6dsox' reads
        both; a value changed mid-run shows up in later samples."""
        make_device(tmp_path, 0, "lsm6dsox_accel", gyro=False)
        d1 = make_device(tmp_path, 1, "lsm6dsox_gyro", accel=False)
        st = ImuStage(IioSource(root=tmp_path), rate_hz=200, wait="sleep", output=ring.writer())
        st.start()
        time.sleep(0.1)
        (d1 / "in_anglvel_z_raw").write_text("-5\n")
        time.sleep(0.1)
        st.stop()
        assert st.join(5) == 0
        recs = ImuReader(ring.reader(), 1024).read()
        assert recs["raw_gyr"][0, 2] == 300 and recs["raw_gyr"][-1, 2] == -5
        assert recs["raw_acc"][-1].tolist() == [10, -20, 16384]

    def test_missing_device_and_channel(self, tmp_path):
        """No such device, or a missing channel file: ImuDeviceNotFoundError naming it (stage exit 1)."""
        st = ImuStage(IioSource(root=tmp_path, device="bmi270"))
        assert st.run() == 1 and isinstance(st.error, ImuDeviceNotFoundError) and "bmi270" in str(st.error)
        d = make_device(tmp_path)
        (d / "in_anglvel_z_raw").unlink()
        st = ImuStage(IioSource(root=tmp_path, device=0))
        assert st.run() == 1 and isinstance(st.error, ImuDeviceNotFoundError)
        assert "in_anglvel_z_raw" in str(st.error) and "in_anglvel_z_raw" in st.stats()["error"]
        with pytest.raises(ImuDeviceNotFoundError, match="does not exist"):
            IioSource(root=tmp_path / "none").default_rate_hz()

    def test_unreadable_scale(self, tmp_path):
        """A scale file that is not a number, or none at all: ImuSourceError naming the file."""
        d = make_device(tmp_path)
        (d / "in_accel_scale").write_text("fast\n")
        st = ImuStage(IioSource(root=tmp_path))
        assert st.run() == 1 and isinstance(st.error, ImuSourceError) and "in_accel_scale" in str(st.error)
        (d / "in_accel_scale").unlink()
        st = ImuStage(IioSource(root=tmp_path))
        assert st.run() == 1 and "in_accel_x_scale nor in_accel_scale" in str(st.error)

    def test_unparsable_raw_value_is_a_counted_read_error(self, tmp_path):
        """A raw attribute that does not parse skips the sample and counts read_errors; the loop goes on."""
        d = make_device(tmp_path)
        (d / "in_accel_y_raw").write_text("garbage\n")
        st = ImuStage(IioSource(root=tmp_path), rate_hz=1000, wait="sleep", duration_s=0.1)
        assert st.run() == 0
        s = st.stats()
        assert s["samples"] == 0 and s["read_errors"] > 20


# ---------------------------------------------------------------------------------------------------
def make_buffered(root, accel_type="le:s16/16>>0"):
    d = make_device(root)
    se = d / "scan_elements"
    se.mkdir()
    (d / "buffer").mkdir()
    (d / "buffer" / "enable").write_text("0\n")
    chans = [("in_accel_x", 0), ("in_accel_y", 1), ("in_accel_z", 2),
             ("in_anglvel_x", 3), ("in_anglvel_y", 4), ("in_anglvel_z", 5)]
    for ch, idx in chans:
        (se / f"{ch}_en").write_text("1\n")
        (se / f"{ch}_index").write_text(f"{idx}\n")
        (se / f"{ch}_type").write_text((accel_type if "accel" in ch else "le:s16/16>>0") + "\n")
    (se / "in_timestamp_en").write_text("0\n")  # enabled by IioSource at open
    (se / "in_timestamp_index").write_text("6\n")
    (se / "in_timestamp_type").write_text("le:s64/64>>0\n")
    fifo = root / "iio-device0"
    os.mkfifo(fifo)
    return d, fifo


def feed(fifo, scans: list[bytes], tail: bytes = b""):
    """Open the FIFO for writing (blocks until the stage has it open), write, close."""
    fd = os.open(fifo, os.O_WRONLY)
    try:
        for s in scans:
            os.write(fd, s)
        if tail:
            os.write(fd, tail)
    finally:
        os.close(fd)


class TestIioBuffered:
    def test_fifo_scans_decoded_scaled_and_closing_reported(self, tmp_path, ring):
        """Scans written to the FIFO (le:s16 channels + s64 timestamp, 24-byte scans) come out scaled with
        the device timestamp; the writer closing ends the stage with ImuSourceClosedError, counted bytes
        of the partial last scan in truncated_bytes."""
        d, fifo = make_buffered(tmp_path)
        st = ImuStage(IioSource(root=tmp_path, device="iio:device0", buffered=True, dev_path=fifo),
                      output=ring.writer())
        st.start()
        scans = [struct.pack("<6h4xq", i, -i, 1000 + i, 7 * i, -7 * i, 32767 - i, 10**12 + i * 10**6)
                 for i in range(50)]
        feed(fifo, scans, tail=b"\x01" * 10)
        assert st.join(5) == 1
        assert isinstance(st.error, ImuSourceClosedError) and isinstance(st.error, ConnectionError)
        assert "after 50 samples" in str(st.error)
        s = st.stats()
        assert s["published"] == 50 and s["truncated_bytes"] == 10 and s["wait"] == "device"
        assert (se := d / "scan_elements" / "in_timestamp_en").read_text().strip() == "1", se
        assert (d / "buffer" / "enable").read_text().strip() == "0"  # disabled again at close
        recs = ImuReader(ring.reader(), 64).read()
        assert recs["raw_acc"][7].tolist() == [7, -7, 1007] and recs["raw_gyr"][7].tolist() == [49, -49, 32760]
        assert recs["acc"][7].tolist() == [7 * ACC_SCALE, -7 * ACC_SCALE, 1007 * ACC_SCALE]
        assert recs["gyr"][49, 2] == 32718 * GYR_SCALE
        assert recs["device_ns"].tolist() == [10**12 + i * 10**6 for i in range(50)]
        assert (recs["flags"] & FLAG_DEVICE_TS).all()

    def test_big_endian_shifted_channels(self, tmp_path, ring):
        """A be:s12/16>>4 accelerometer (left-justified 12-bit, big-endian) decodes with sign."""
        d, fifo = make_buffered(tmp_path, accel_type="be:s12/16>>4")
        st = ImuStage(IioSource(root=tmp_path, device=0, buffered=True, dev_path=fifo), output=ring.writer())
        st.start()
        acc = [(-100 & 0xFFF) << 4, (2047 & 0xFFF) << 4, (-2048 & 0xFFF) << 4]
        scan = struct.pack(">3H", *acc) + struct.pack("<3h", 1, 2, 3) + b"\0" * 4 + struct.pack("<q", 5)
        feed(fifo, [scan])
        st.join(5)
        recs = ImuReader(ring.reader()).read()
        assert recs["raw_acc"][0].tolist() == [-100, 2047, -2048] and recs["raw_gyr"][0].tolist() == [1, 2, 3]

    def test_stop_while_waiting_for_the_device(self, tmp_path):
        """stop() ends the stage within a second while the loop waits on a FIFO nobody writes (exit 0, no error)."""
        _, fifo = make_buffered(tmp_path)
        st = ImuStage(IioSource(root=tmp_path, buffered=True, dev_path=fifo))
        st.start()
        time.sleep(0.1)
        t = time.monotonic()
        st.stop()
        assert st.join(2) == 0 and time.monotonic() - t < 1.0

    def test_bad_scan_description(self, tmp_path):
        """A scan type that does not parse, a disabled required channel, a missing char device: typed errors."""
        d, fifo = make_buffered(tmp_path)
        (d / "scan_elements" / "in_anglvel_y_type").write_text("le:f32/32>>0\n")
        st = ImuStage(IioSource(root=tmp_path, buffered=True, dev_path=fifo))
        assert st.run() == 1 and isinstance(st.error, ImuSourceError) and "le:f32/32>>0" in str(st.error)
        (d / "scan_elements" / "in_anglvel_y_type").write_text("le:s16/16>>0\n")
        st = ImuStage(IioSource(root=tmp_path, buffered=True, dev_path=fifo, enable=False))
        (d / "scan_elements" / "in_accel_z_en").write_text("0\n")
        assert st.run() == 1 and isinstance(st.error, ImuDeviceNotFoundError) and "in_accel_z" in str(st.error)
        st = ImuStage(IioSource(root=tmp_path, buffered=True, dev_path=tmp_path / "nodev"))
        assert st.run() == 1 and isinstance(st.error, ImuDeviceNotFoundError) and "nodev" in str(st.error)

    @pytest.mark.parametrize("victim", ["name", "scan_elements/in_accel_z_en", "scan_elements/in_anglvel_y_type",
                                        "in_accel_scale"])
    def test_non_utf8_sysfs_files_are_typed_errors(self, tmp_path, victim):
        """A sysfs file of the (fake) tree holding bytes that are not UTF-8 is read as text with replacement
        characters, so it ends in a typed error, not UnicodeDecodeError (found by
        tests/fuzz/fuzz_iio.py)."""
        d, fifo = make_buffered(tmp_path)
        (d / victim).write_bytes(b"\xf8\xff1\n")
        src = IioSource(root=tmp_path, buffered=True, dev_path=fifo, enable=False)
        with pytest.raises((ImuSourceError, ImuDeviceNotFoundError)):
            src.open(ImuLoopConfig(rate_hz=1000.0, dt_s=0.001))
        assert not src._fds

    def test_parse_scan_type(self):
        """IIO type strings decode to (big_endian, signed, bits, storage, shift); junk is an ImuSourceError."""
        assert parse_scan_type("le:s64/64>>0") == (False, True, 64, 64, 0)
        assert parse_scan_type("be:u10/16>>6\n") == (True, False, 10, 16, 6)
        for bad in ("", "le:s16", "le:s17/16>>0", "xe:s16/16>>0", "le:s16/24>>0", "le:s16/16X2>>0"):
            with pytest.raises(ImuSourceError):
                parse_scan_type(bad)


# ---------------------------------------------------------------------------------------------------
class TestConfigErrors:
    @pytest.mark.parametrize("rate", [0, 0.5, 4001, -1, float("nan"), float("inf")])
    def test_rate_out_of_range(self, rate):
        """A rate outside 1..4000 Hz is an ImuConfigError (a ValueError) naming the value."""
        with pytest.raises(ImuConfigError, match=re.escape(repr(rate))) as e:
            ImuStage(SyntheticSource(), rate_hz=rate)
        assert isinstance(e.value, ValueError) and isinstance(e.value, ImuError)
        with pytest.raises(ImuConfigError, match=re.escape(repr(rate))):
            CsvSource("ngimu", rate_hz=rate)

    def test_other_bad_arguments(self):
        """beta < 0, an unknown wait mode or filter, a source that is not one, a bad axis: typed errors."""
        with pytest.raises(ImuConfigError, match="-0.1"):
            ImuStage(SyntheticSource(), beta=-0.1)
        with pytest.raises(ImuConfigError, match="'spin'"):
            ImuStage(SyntheticSource(), wait="spin")
        with pytest.raises(ImuConfigError, match="'kalman'"):
            ImuStage(SyntheticSource(), filter="kalman")
        with pytest.raises(ImuConfigError, match="'imu0'"):
            ImuStage("imu0")
        with pytest.raises(ImuConfigError, match="'w'"):
            SyntheticSource.rotating(10.0, axis="w")
        with pytest.raises(ImuConfigError, match="priority"):
            ImuStage(SyntheticSource(), priority=100)

    @pytest.mark.parametrize("off", [0xFFFFFFFF, 0xFFFFFFFE, 15])
    def test_c_layout_check_does_not_wrap(self, off):
        """ep_imu_create refuses a chardev channel whose offset + size passes the scan end, also when the
        32-bit sum wraps around (it would read far outside the scan buffer)."""
        import errno

        from edgepipe._ffi import ffi, lib

        cfg = ffi.new("struct ep_imu_config *")
        cfg.wait_mode, cfg.source, cfg.dt_s = lib.EP_IMU_WAIT_DEVICE, lib.EP_IMU_SRC_CHARDEV, 0.01
        cfg.fd = [0] + [-1] * 9
        cfg.scan_size = 16
        cfg.ch_off[0], cfg.ch_bytes[0], cfg.ch_bits[0] = off, 2, 16
        out = ffi.new("struct ep_imu **")
        rc = lib.ep_imu_create(cfg, ffi.NULL, out)
        if rc == 0:
            lib.ep_imu_destroy(out[0])
        assert rc == -errno.EINVAL

    def test_too_small_ring(self):
        """A ring whose max payload is below 192 bytes is refused up front."""
        with Ring.create(capacity=256) as r:
            with pytest.raises(ImuConfigError, match="192"):
                ImuStage(SyntheticSource(), output=r.writer())


# ---------------------------------------------------------------------------------------------------
class TestLoopAccounting:
    @pytest.mark.parametrize("wait", ["sleep", "hybrid"])
    def test_half_second_at_1000_hz(self, ring, wait):
        """0.5 s at 1000 Hz covers about 500 deadlines (generous bounds: a shared VM), each either served or
        counted missed, and the ring's seq numbers have no gaps."""
        st = ImuStage(SyntheticSource(rate_rad_s=(0.1, 0.2, 0.3)), rate_hz=1000, wait=wait,
                      output=ring.writer(), duration_s=0.5)
        recs = run_to_array(st, ring)
        s = st.stats()
        # every deadline of the run was either served or counted missed (the VM may stall for 100s of ms)
        assert 450 <= s["samples"] + s["missed"] <= 1500 and s["samples"] >= 100
        assert s["published"] == len(recs) == s["samples"] and s["dropped"] == 0
        assert np.array_equal(recs["seq"], np.arange(len(recs)))
        # deadlines are k ms after start; served + missed ones cover the run without gaps
        dl = recs["deadline_ns"]
        steps = np.round(np.diff(dl) / 1e6).astype(int)
        assert (steps >= 1).all()
        # skips between records show as deadline steps; a skip after the last record (it was itself more
        # than a period late) has no record after it
        trailing = s["missed"] - int((steps - 1).sum())
        assert trailing == 0 if recs["late_ns"][-1] < 1_000_000 else trailing >= 1
        assert ((recs["flags"][1:] & FLAG_MISSED) != 0).sum() == (steps > 1).sum()
        assert (recs["late_ns"] >= 0).all() and (recs["sample_ns"] <= recs["publish_ns"]).all()
        assert s["jitter_us"]["count"] == s["ticks"] == len(recs)
        # the C histogram's quantiles: the bucket holding the k-th smallest jitter, reported by its upper
        # bound (1/32 relative resolution), and the exact maximum
        late = np.sort(recs["late_ns"])
        assert s["jitter_us"]["max"] * 1000 == pytest.approx(late[-1], abs=0.5)
        for label, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
            kth = late[math.ceil(q * len(late)) - 1]
            got = s["jitter_us"][label] * 1000
            assert kth - 0.5 <= got <= kth * (1 + 1 / 32) + 1, (label, kth, got)
        assert 0 < s["cpu_percent"] < 150 and 0 < s["achieved_rate_hz"] <= s["schedule_rate_hz"] * 1.01

    def test_full_ring_drops_and_counts(self):
        """With nobody reading a small ring, samples beyond its room are dropped and counted; the loop
        keeps its pace (never blocks on the ring)."""
        with Ring.create(capacity=2048) as r:
            st = ImuStage(SyntheticSource(rate_hz=4000), rate_hz=4000, wait="sleep", output=r.writer(),
                          max_samples=200)
            assert st.run() == 0
            s = st.stats()
            assert s["published"] == r.status().records_written < 20
            assert s["dropped"] == 200 - s["published"]

    def test_stop_is_prompt_at_1_hz(self):
        """At 1 Hz the loop sleeps in 20 ms chunks, so stop() ends the stage within a second, not after the period."""
        st = ImuStage(SyntheticSource(), rate_hz=1, wait="sleep")
        st.start()
        time.sleep(0.1)
        t = time.monotonic()
        st.stop()
        assert st.join(2) == 0 and time.monotonic() - t < 1.0

    def test_refused_realtime_knobs_warn_and_run_on(self):
        """Pinning to a CPU that does not exist is refused by the kernel: a RuntimeWarning and a message in
        stats()['rt'], and the stage still runs. A SCHED_FIFO request is either granted or explained."""
        st = ImuStage(SyntheticSource(rate_hz=4000), rate_hz=4000, wait="sleep", cpu=1000, priority=10,
                      max_samples=20)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert st.run() == 0
        rt = st.stats()["rt"]
        assert "pinning to CPU 1000 refused" in rt["cpu"]
        assert any("CPU 1000" in str(x.message) for x in w)
        assert rt["sched"] == "SCHED_FIFO priority 10" or "refused" in rt["sched"]
        assert st.stats()["samples"] == 20




# ---------------------------------------------------------------------------------------------------
class _ImuLibSpy:
    """Stands in for edgepipe.imu_loop.lib: counts calls on the loop handle still running when ep_imu_destroy
    frees it, and holds the first ep_imu_quantile of the armed thread open for a while."""

    def __init__(self, real):
        import threading

        self._real = real
        self.armed = None
        self.in_call = threading.Event()
        self.destroying = threading.Event()
        self.busy = 0
        self.overlaps = 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    def ep_imu_quantile(self, loop, which, q, out):
        import threading

        self.busy += 1
        try:
            if threading.get_ident() == self.armed:
                self.armed = None
                self.in_call.set()
                self.destroying.wait(0.5)  # a racing close() would free the loop now
            return self._real.ep_imu_quantile(loop, which, q, out)
        finally:
            self.busy -= 1

    def ep_imu_destroy(self, loop):
        self.destroying.set()
        self.overlaps += self.busy
        return self._real.ep_imu_destroy(loop)


class TestStatsWhileClosing:
    def test_stats_from_another_thread_never_overlap_destroy(self, monkeypatch):
        """stats() from a supervisor thread racing the stage's own close() never runs a C call on a freed
        loop: close waits for it, and stats then reports the final numbers."""
        import threading

        import edgepipe.imu_loop as imu_loop

        spy = _ImuLibSpy(imu_loop.lib)
        monkeypatch.setattr(imu_loop, "lib", spy)
        st = ImuStage(SyntheticSource(), rate_hz=500, wait="sleep")
        st.start()
        t_end = time.monotonic() + 5
        while "loop_state" not in st.stats() and time.monotonic() < t_end:
            time.sleep(0.005)
        got = []

        def poll():
            spy.armed = threading.get_ident()
            got.append(st.stats())

        t = threading.Thread(target=poll)
        t.start()
        assert spy.in_call.wait(5)
        st.stop()
        assert st.join(5) == 0
        t.join(5)
        assert spy.overlaps == 0
        assert got and got[0]["kind"] == "imu"


# ---------------------------------------------------------------------------------------------------
_LEASE_SCRIPT = r"""
import sys, time
from edgepipe import Ring, RingBusyError
from edgepipe.stages.imu import ImuStage, SyntheticSource
ring = Ring.create(capacity=1 << 16)
w = ring.writer()
st = ImuStage(SyntheticSource(), rate_hz=1000, wait="sleep", output=w)
st.start()
t_end = time.monotonic() + 5
while st.stats().get("published", 0) < 5 and time.monotonic() < t_end:
    time.sleep(0.005)
case = sys.argv[1]
try:
    if case == "writer":
        w.close()
    elif case == "ring":
        ring.close()
    elif case == "write":
        w.try_write(b"x")
    elif case == "stop-then-close":
        st.stop()
        ring.close()
    print("NO ERROR")
except RingBusyError as e:
    print("BUSY", e)
st.stop()
st.join(5)
ring.close()  # after the stage closed its loop the lease is back: this closes for real
print("CLOSED", w.closed)
"""


class TestLeasedWriter:
    """Soundness point 1: a writer leased to the C loop can be neither freed nor written by Python."""

    @pytest.mark.parametrize("case", ["writer", "ring", "write", "stop-then-close"])
    def test_close_or_write_while_the_loop_runs_is_refused_not_a_crash(self, case):
        """Closing the writer or its ring, or writing through it, while the IMU loop holds it raises
        RingBusyError in a process that then shuts down cleanly (before: SIGSEGV on close)."""
        import subprocess
        import sys

        r = subprocess.run([sys.executable, "-c", _LEASE_SCRIPT, case], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
        lines = r.stdout.splitlines()
        if case == "stop-then-close" and lines[0] == "NO ERROR":
            pass  # the loop may already have been closed by the stage's own thread: then close is fine
        else:
            assert lines[0].startswith("BUSY") and "leased to" in lines[0], r.stdout
        assert lines[-1] == "CLOSED True"

    def test_a_writer_cannot_be_leased_twice(self):
        """A second loop on the same writer is refused (two producers), and the first loop's lease is kept."""
        from edgepipe import RingBusyError
        from edgepipe.imu_loop import ImuLoop, ImuLoopConfig

        with Ring.create(capacity=1 << 16) as ring:
            w = ring.writer()
            cfg = ImuLoopConfig(rate_hz=1000.0, dt_s=0.001)
            cfg.synthetic()
            with ImuLoop(cfg, w):
                assert w.leased
                with pytest.raises(RingBusyError, match="leased to"):
                    ImuLoop(cfg, w)
                assert w.leased
            assert not w.leased and w.try_write(b"ok")


class TestAxisArgument:
    def test_a_numeric_axis_is_normalised(self):
        """SyntheticSource.rotating takes an axis as three numbers (normalised), not only 'x'/'y'/'z' (a
        NameError before: the split left a call to a helper under its old name)."""
        src = SyntheticSource.rotating(rate_dps=90.0, axis=(0.0, 0.0, 2.0))
        assert np.allclose(src.rate_rad_s, (0.0, 0.0, np.pi / 2))
        with pytest.raises(ImuConfigError, match="zero vector"):
            SyntheticSource.rotating(rate_dps=90.0, axis=(0, 0, 0))
