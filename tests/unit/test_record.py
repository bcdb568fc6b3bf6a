"""edgepipe.record: MCAP writing (channels, stamps, compression, split, filters, drops), reading (info,
recover, typed errors), and what each kind of ring record is recorded and replayed as. Every file written
here is also opened and decoded by the ``mcap`` package's own reader with its protobuf decoder."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("mcap", reason="the record extra (pip install 'edgepipe[record]') is part of [test]")

from mcap.reader import make_reader  # noqa: E402
from mcap_protobuf.decoder import DecoderFactory  # noqa: E402

from edgepipe import Ring  # noqa: E402
from edgepipe import messages as pb  # noqa: E402
from edgepipe.clock import ClockMapping, now_ns  # noqa: E402
from edgepipe.errors import (  # noqa: E402
    RecordingDiskFullError,
    RecordingError,
    RecordingFormatError,
    RecordingNotFoundError,
    RecordingTruncatedError,
    UnknownSchemaError,
)
from edgepipe.frames import FrameWriter  # noqa: E402
from edgepipe.imu_loop import IMU_RECORD_TYPE, IMU_SAMPLE_DTYPE  # noqa: E402
from edgepipe.pipeline.wire import NO_LINK, Hop, pack_record  # noqa: E402
from edgepipe.record.convert import from_message, image_array, to_messages  # noqa: E402
from edgepipe.record.reader import iter_recording as iter_messages
from edgepipe.record.reader import recording_info as info
from edgepipe.record.reader import recover_recording as recover  # noqa: E402
from edgepipe.record.schemas import RawRecord, message_class, schema  # noqa: E402
from edgepipe.record.writer import McapRecorder  # noqa: E402

CLOCK = ClockMapping(raw_ns=1_000_000_000, mono_ns=2_000_000_000, wall_ns=1_700_000_000_000_000_000, uncertainty_ns=50)
OFFSET = CLOCK.wall_ns - CLOCK.raw_ns


def decode_all(path) -> list[tuple[str, str, int, int, object]]:
    """(topic, schema, log_time, publish_time, decoded) of every message, through Foxglove's reader."""
    with open(path, "rb") as f:
        r = make_reader(f, decoder_factories=[DecoderFactory()])
        return [(c.topic, s.name, m.log_time, m.publish_time, d) for s, c, m, d in r.iter_decoded_messages()]


def imu_row(seq: int, t: int) -> bytes:
    row = np.zeros(1, IMU_SAMPLE_DTYPE)
    row["seq"], row["sample_ns"], row["publish_ns"] = seq, t, t + 10
    row["gyr"], row["acc"], row["q"] = (0.1, 0.2, 0.3), (0.0, 0.0, 9.81), (1.0, 0.0, 0.0, 0.0)
    return row.tobytes()


def write_user(rec: McapRecorder, topic: str, n: int, t0: int = 1_000_000_000, payload=b"x" * 64) -> None:
    for i in range(n):
        data = pack_record(payload, i, t0 + i * 1000, [Hop(0, NO_LINK, t0 + i * 1000, t0 + i * 1000 + 5)])
        for m in to_messages(topic, data, 1, t0 + i * 1000 + 50):
            rec.write(m.topic, m.schema, m.data, receive_ns=m.receive_ns, capture_ns=m.capture_ns, seq=m.seq)


class TestSchemas:
    def test_edgepipe_messages_and_rawrecord_have_descriptor_sets(self):
        """Each recorded schema is a FileDescriptorSet that holds its message (and its imports)."""
        from google.protobuf import descriptor_pb2

        for name in ("edgepipe.v1.ImuSample", "edgepipe.v1.InferenceResult", "edgepipe.record.v1.RawRecord",
                     "foxglove.RawImage"):
            fds = descriptor_pb2.FileDescriptorSet.FromString(schema(name).data)
            pkg, _, msg = name.rpartition(".")
            assert any(f.package == pkg and msg in [m.name for m in f.message_type] for f in fds.file), name

    def test_unknown_schema_is_typed(self):
        """A schema name edgepipe does not record is an UnknownSchemaError naming it."""
        with pytest.raises(UnknownSchemaError, match="sensor_msgs/Imu") as e:
            message_class("sensor_msgs/Imu")
        assert e.value.name == "sensor_msgs/Imu"


class TestConvert:
    def test_imu_row_round_trips_through_imusample(self):
        """An IMU ring record becomes an edgepipe.v1.ImuSample and replays as the same row."""
        data = imu_row(3, 5000)
        (m,) = to_messages("/imu", data, IMU_RECORD_TYPE, receive_ns=6000)
        s = pb.ImuSample.FromString(m.data)
        assert (m.schema, m.capture_ns, m.receive_ns, s.stamps.seq) == ("edgepipe.v1.ImuSample", 5000, 6000, 3)
        assert s.accel.z == pytest.approx(9.81) and s.orientation.w == 1.0
        assert from_message(m.schema, m.data) == (data, IMU_RECORD_TYPE)

    def test_imu_row_keeps_the_loops_own_fields(self):
        """The loop's deadline, device stamp, lateness, raw counts and flags (mag, raw, missed, device stamp)
        travel in the ImuSample and come back byte for byte in the replayed row."""
        from edgepipe.imu_loop import FLAG_DEVICE_TS, FLAG_MAG, FLAG_MISSED, FLAG_RAW

        row = np.frombuffer(imu_row(4, 7000), IMU_SAMPLE_DTYPE).copy()
        row["deadline_ns"], row["device_ns"], row["late_ns"] = 6900, 123_456_789, 100
        row["raw_gyr"], row["raw_acc"], row["raw_mag"] = (1, -2, 3), (-32768, 0, 32767), (7, 8, -9)
        row["mag"] = (20.0, -5.0, 40.0)
        row["flags"] = FLAG_MAG | FLAG_RAW | FLAG_MISSED | FLAG_DEVICE_TS
        data = row.tobytes()
        (m,) = to_messages("/imu", data, IMU_RECORD_TYPE, receive_ns=8000)
        s = pb.ImuSample.FromString(m.data)
        assert (s.deadline_ns, s.device_ns, s.late_ns) == (6900, 123_456_789, 100)
        assert (list(s.raw_gyro), list(s.raw_accel), list(s.raw_mag)) == ([1, -2, 3], [-32768, 0, 32767], [7, 8, -9])
        assert s.flags == int(row["flags"][0])
        assert from_message(m.schema, m.data) == (data, IMU_RECORD_TYPE)
        # a row without raw counts records none (and a recording from before these fields replays as before)
        (m2,) = to_messages("/imu", imu_row(5, 7000), IMU_RECORD_TYPE, receive_ns=8000)
        s2 = pb.ImuSample.FromString(m2.data)
        assert list(s2.raw_gyro) == [] and s2.flags == 0 and s2.deadline_ns == 0

    def test_stamped_record_keeps_every_hop(self):
        """A stamped user record keeps payload, type id, capture, seq and each hop's stamps."""
        data = pack_record(b"abc", 9, 100, [Hop(0, NO_LINK, 100, 200), Hop(1, 0, 250, 300)])
        (m,) = to_messages("/u", data, 5, receive_ns=400)
        r = RawRecord.FromString(m.data)
        assert (r.type_id, r.stamps.capture_ns, r.stamps.seq) == (5, 100, 9)
        assert list(r.stamps.publish_ns) == [200, 300] and list(r.stamps.receive_ns) == [250, 400]
        assert from_message(m.schema, m.data) == (data, 5)

    def test_frame_becomes_rawimage_plus_meta(self):
        """A numpy frame record becomes a foxglove.RawImage with its pixels and a FrameMeta with its stamps;
        the RawImage gives back the same pixels as an array."""
        with Ring.create(capacity=1 << 16) as ring:
            w, r = FrameWriter(ring.writer()), ring.reader()
            with w.claim_frame((4, 6, 3)) as arr:
                arr[:] = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
            data, t = r.try_read(), r.last_type
            w.close()
            r.close()
        img, meta = to_messages("/cam", data, t, receive_ns=now_ns(), wall_offset_ns=OFFSET)
        im = message_class("foxglove.RawImage").FromString(img.data)
        fm = pb.FrameMeta.FromString(meta.data)
        assert (im.width, im.height, im.encoding, im.step) == (6, 4, "bgr8", 18)
        assert im.data == bytes(range(72)) and meta.topic == "/cam/meta" and fm.stamps.capture_ns == img.capture_ns
        assert im.timestamp.ToNanoseconds() == img.capture_ns + OFFSET
        arr, fmt = image_array(img.data)
        assert fmt == "BGR" and arr.shape == (4, 6, 3) and arr.tobytes() == bytes(range(72))
        assert from_message(img.schema, img.data) is None and from_message(meta.schema, meta.data) is None


class TestWriter:
    @pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
    def test_foxglove_reader_decodes_every_message(self, tmp_path, compression):
        """IMU, user and frame channels written with each compression are decoded by the mcap reader, with
        log_time = receive and publish_time = capture mapped through the recording's clock."""
        p = tmp_path / "a.mcap"
        with McapRecorder(p, compression=compression, clock=CLOCK) as rec:
            m = to_messages("/imu", imu_row(1, 2_000_000_000), IMU_RECORD_TYPE, receive_ns=2_000_001_000)[0]
            rec.write(m.topic, m.schema, m.data, receive_ns=m.receive_ns, capture_ns=m.capture_ns)
            write_user(rec, "/user", 10)
        got = decode_all(p)
        assert len(got) == 11
        imu = [g for g in got if g[0] == "/imu"][0]
        assert imu[2] == 2_000_001_000 + OFFSET and imu[3] == 2_000_000_000 + OFFSET
        assert imu[4].stamps.capture_ns == 2_000_000_000  # the RAW stamp kept inside the message
        i = info(p)
        assert i.compression == compression
        assert {c.topic: c.messages for c in i.channels} == {"/imu": 1, "/user": 10}
        assert i.raw_ns(imu[2]) == 2_000_001_000 and int(i.clock["raw_ns"]) == CLOCK.raw_ns

    def test_every_kind_of_record_decodes_in_foxglove_reader(self, tmp_path):
        """IMU sample, inference result, frame (RawImage + FrameMeta) and user record channels in one file:
        the mcap reader with the protobuf decoder decodes every message to the type edgepipe wrote."""
        with Ring.create(capacity=1 << 16) as ring:
            w, r = FrameWriter(ring.writer()), ring.reader()
            w.write_frame(np.full((8, 10, 3), 9, np.uint8))
            frame, ftype = r.try_read(), r.last_type
            w.close()
            r.close()
        res = pb.InferenceResult(stamps=pb.Stamps(capture_ns=5, seq=1), model_id="m", frame_seq=1,
                                 detections=pb.Detections(boxes=[pb.Box(x_min=1, y_min=2, x_max=3, y_max=4)]))
        msgs = [*to_messages("/imu", imu_row(1, 10), IMU_RECORD_TYPE, 20),
                *to_messages("/det", res.SerializeToString(), 22, 30),
                *to_messages("/cam", frame, ftype, 40, OFFSET),
                *to_messages("/u", b"raw bytes", 3, 50)]
        p = tmp_path / "all.mcap"
        with McapRecorder(p, clock=CLOCK) as rec:
            for m in msgs:
                rec.write(m.topic, m.schema, m.data, receive_ns=m.receive_ns, capture_ns=m.capture_ns, seq=m.seq)
        got = {t: type(d).DESCRIPTOR.full_name for t, _s, _l, _p, d in decode_all(p)}
        assert got == {"/imu": "edgepipe.v1.ImuSample", "/det": "edgepipe.v1.InferenceResult",
                       "/cam": "foxglove.RawImage", "/cam/meta": "edgepipe.v1.FrameMeta",
                       "/u": "edgepipe.record.v1.RawRecord"}
        det = [d for t, _s, _l, _p, d in decode_all(p) if t == "/det"][0]
        assert det.detections.boxes[0].x_max == 3 and det.frame_seq == 1

    def test_allow_and_deny_filter_topics(self, tmp_path):
        """Only allowed topics are written; deny wins over allow; the filtered count is kept."""
        p = tmp_path / "f.mcap"
        with McapRecorder(p, allow=["/cam*", "/imu"], deny=["/cam/meta"], clock=CLOCK) as rec:
            for t in ("/imu", "/cam", "/cam/meta", "/other"):
                write_user(rec, t, 2)
        assert sorted({g[0] for g in decode_all(p)}) == ["/cam", "/imu"]
        assert rec.filtered == 4 and info(p).recording["filtered"] == "4"

    def test_split_by_size_makes_complete_parts(self, tmp_path):
        """split_bytes starts new parts; each is a complete file and together they hold every message."""
        p = tmp_path / "s.mcap"
        with McapRecorder(p, split_bytes=20_000, chunk_bytes=4096, compression="none", clock=CLOCK) as rec:
            write_user(rec, "/u", 2000, payload=os.urandom(64))
        assert len(rec.paths) > 1 and all(os.path.basename(x).startswith("s_") for x in rec.paths)
        seqs = [g[4].stamps.seq for x in rec.paths for g in decode_all(x)]
        assert seqs == list(range(2000))

    def test_split_by_duration(self, tmp_path):
        """split_s cuts parts by log time: 10 s of messages at 1 s per part make several parts."""
        p = tmp_path / "d.mcap"
        with McapRecorder(p, split_s=1.0, clock=CLOCK) as rec:
            for i in range(100):
                rec.write("/u", "edgepipe.v1.Stamps", pb.Stamps(seq=i).SerializeToString(),
                          receive_ns=1_000_000_000 + i * 100_000_000)
        assert len(rec.paths) == 10
        assert [len(decode_all(x)) for x in rec.paths] == [10] * 10

    def test_drop_statistics_are_written(self, tmp_path):
        """Drops given with set_drops end up in the file's edgepipe.drops metadata."""
        p = tmp_path / "x.mcap"
        with McapRecorder(p, clock=CLOCK) as rec:
            write_user(rec, "/u", 3)
            rec.set_drops("/u", "tap full", 17)
        assert info(p).drops == {("/u", "tap full"): 17}

    def test_bad_arguments_are_typed(self, tmp_path):
        """Bad compression or sizes raise ValueError naming the value."""
        with pytest.raises(ValueError, match="'gzip'"):
            McapRecorder(tmp_path / "a.mcap", compression="gzip")
        with pytest.raises(ValueError, match="-1"):
            McapRecorder(tmp_path / "b.mcap", split_bytes=-1)

    def test_write_after_close_raises(self, tmp_path):
        """A closed recorder refuses writes with a RecordingError; close twice is fine."""
        rec = McapRecorder(tmp_path / "a.mcap", clock=CLOCK)
        rec.close()
        rec.close()
        with pytest.raises(RecordingError, match="closed"):
            write_user(rec, "/u", 1)


class _FullAfter:
    """A file object that fails with ENOSPC once ``limit`` bytes have been written (a disk filling up)."""

    def __init__(self, path, limit):
        self.f = open(path, "wb", buffering=0)
        self.left = limit

    def write(self, b):
        if len(b) > self.left:
            n = self.f.write(bytes(b[: self.left]))
            self.left = 0
            if n:
                return n
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= len(b)
        return self.f.write(b)

    def close(self):
        self.f.close()


class TestDiskFull:
    def test_enospc_stops_cleanly_and_keeps_complete_chunks(self, tmp_path):
        """ENOSPC stops the recording with RecordingDiskFullError naming the file; later writes raise it
        again; close() does not; the complete chunks on disk are recovered."""
        p = tmp_path / "full.mcap"
        rec = McapRecorder(p, chunk_bytes=4096, compression="none", clock=CLOCK, flush_s=0,
                           opener=lambda path: _FullAfter(path, 50_000))
        with pytest.raises(RecordingDiskFullError, match="full.mcap") as e:
            write_user(rec, "/u", 5000, payload=os.urandom(64))
        assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
        with pytest.raises(RecordingDiskFullError):
            write_user(rec, "/u", 1)
        rec.close()
        with pytest.raises(RecordingTruncatedError):
            info(p)
        r = recover(p)
        assert 0 < r.messages < 5000
        assert [g[4].stamps.seq for g in decode_all(r.path)] == list(range(r.messages))

    def test_real_full_tmpfs(self, tmp_path, skip_unless_ci):
        """On a 1 MiB tmpfs a recording of 3 MB of random data stops with RecordingDiskFullError."""
        d = tmp_path / "small"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            skip_unless_ci(f"cannot mount a tmpfs here (root is needed): {r.stderr.decode().strip()}")
        try:
            rec = McapRecorder(d / "r.mcap", chunk_bytes=64 << 10, compression="none", clock=CLOCK)
            with pytest.raises(RecordingDiskFullError):
                write_user(rec, "/u", 40_000, payload=os.urandom(64))
            rec.close()
            assert recover(d / "r.mcap", tmp_path / "rec.mcap").messages > 0
        finally:
            subprocess.run(["umount", str(d)], check=True)


class TestReaderErrors:
    def test_missing_file(self, tmp_path):
        """A missing file is RecordingNotFoundError (a FileNotFoundError) naming it."""
        with pytest.raises(RecordingNotFoundError, match="nope.mcap") as e:
            info(tmp_path / "nope.mcap")
        assert isinstance(e.value, FileNotFoundError)

    def test_foreign_file(self, tmp_path):
        """A file of another tool (here a ROS 1 bag header, an HDF5 signature) is RecordingFormatError."""
        for name, head in (("a.bag", b"#ROSBAG V2.0\n"), ("b.h5", b"\x89HDF\r\n\x1a\n")):
            (tmp_path / name).write_bytes(head + b"\0" * 100)
            with pytest.raises(RecordingFormatError, match="not an MCAP file"):
                info(tmp_path / name)
            with pytest.raises(RecordingFormatError):
                recover(tmp_path / name)

    def test_truncated_file(self, tmp_path):
        """A file cut in the middle is RecordingTruncatedError pointing at --recover, and recover keeps
        exactly the messages of the chunks that are complete."""
        p = tmp_path / "t.mcap"
        with McapRecorder(p, chunk_bytes=4096, clock=CLOCK) as rec:
            write_user(rec, "/u", 3000, payload=os.urandom(64))
        data = p.read_bytes()
        cut = tmp_path / "cut.mcap"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(RecordingTruncatedError, match="--recover"):
            info(cut)
        with pytest.raises(RecordingTruncatedError):
            list(iter_messages(cut))
        r = recover(cut)
        assert 0 < r.messages < 3000
        assert [g[4].stamps.seq for g in decode_all(r.path)] == list(range(r.messages))
        assert info(r.path).clock["raw_ns"] == str(CLOCK.raw_ns)  # metadata at the start survives

    def test_unknown_schema_in_foreign_mcap(self, tmp_path):
        """An MCAP file with a schema edgepipe does not know is readable by info, and iter_messages raises
        UnknownSchemaError naming the schema."""
        from mcap.writer import Writer

        p = tmp_path / "ros.mcap"
        with open(p, "wb") as f:
            w = Writer(f)
            w.start(profile="ros2", library="other")
            sid = w.register_schema("sensor_msgs/msg/Imu", "ros2msg", b"float64 x")
            ch = w.register_channel("/imu", "cdr", sid)
            w.add_message(ch, 1, b"\0" * 8, 1)
            w.finish()
        assert [c.schema for c in info(p).channels] == ["sensor_msgs/msg/Imu"]
        with pytest.raises(UnknownSchemaError, match="sensor_msgs/msg/Imu"):
            list(iter_messages(p))


class TestKill:
    def test_kill_9_leaves_a_recoverable_file(self, tmp_path):
        """A recorder process killed with SIGKILL mid-recording leaves a file whose flushed chunks recover
        in order, without a gap."""
        p = tmp_path / "k.mcap"
        script = textwrap.dedent(f"""
            import os, sys
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            from test_record import write_user, McapRecorder
            rec = McapRecorder({str(p)!r}, chunk_bytes=4096, flush_s=0)
            write_user(rec, "/u", 3000)
            rec.flush()
            print("flushed", flush=True)
            i = 3000
            while True:
                write_user(rec, "/v", 1)
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=os.environ.copy())
        try:
            assert proc.stdout.readline().strip() == b"flushed"
        finally:
            proc.kill()
            proc.wait(30)
        with pytest.raises(RecordingTruncatedError):
            info(p)
        r = recover(p)
        got = decode_all(r.path)
        assert [g[4].stamps.seq for g in got if g[0] == "/u"] == list(range(3000))
        assert r.messages == len(got) >= 3000
