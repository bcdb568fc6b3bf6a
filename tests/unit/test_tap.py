"""edgepipe.pipeline.tap: a drop-only second consumer of a link. The link is never slowed or changed by its
tap; the tap takes copies while it has room and counts what it drops; in a pipeline, ``tap = true`` on a
link plus a ``record`` stage records the link while its own consumer gets every record."""

from __future__ import annotations

import textwrap
import zlib

import numpy as np
import pytest

from edgepipe.errors import ConfigError
from edgepipe.pipeline.api import Inlet, Outlet
from edgepipe.pipeline.config import parse_config, tap_filler
from edgepipe.pipeline.tap import Tap
from edgepipe.pipeline.wire import unpack_record
from edgepipe.ring import Ring


def payload(i: int) -> bytes:
    body = i.to_bytes(8, "little") * 4
    return body + zlib.crc32(body).to_bytes(4, "little")


class TestTap:
    def test_offer_takes_while_room_then_counts_drops(self):
        """Offers fit until the side ring is full; later ones return False at once and are counted as
        'tap full', also in the ring's own full_events."""
        with Ring.create(capacity=4096) as side:
            tap = Tap(side.writer(), "l")
            got = [tap.offer(b"x" * 500) for _ in range(20)]
            assert got[0] and not got[-1]
            assert tap.taken == got.count(True) and tap.dropped == {"tap full": got.count(False)}
            assert side.status().full_events == got.count(False)
            tap.close()

    def test_record_larger_than_tap_is_a_counted_drop(self):
        """A record over the side ring's max payload is dropped and counted, not raised."""
        with Ring.create(capacity=4096) as side:
            tap = Tap(side.writer(), "l")
            assert tap.offer(b"x" * 5000) is False
            assert tap.dropped == {"record larger than the tap": 1}
            tap.close()

    def test_closed_recorder_is_a_counted_drop(self):
        """A recorder that closed its end makes offers drop ('recorder gone') instead of raising."""
        with Ring.create(capacity=4096) as side:
            tap = Tap(side.writer(), "l")
            side.reader().close()
            assert tap.offer(b"x") is False and tap.dropped == {"recorder gone": 1}
            tap.close()


class TestOutletInletTaps:
    def test_outlet_tap_never_slows_the_link(self):
        """A lossless link whose tap nobody reads still takes all 1000 records in order; the tap holds
        the first records that fit, byte for byte, and counts the rest as dropped."""
        with Ring.create(capacity=1 << 20) as main, Ring.create(capacity=4096) as side:
            tap = Tap(side.writer(), "main")
            out = Outlet(main.writer(), "main", tap=tap)
            r, sr = main.reader(), side.reader()
            for i in range(1000):
                assert out.emit(payload(i), seq=i)
            got = [unpack_record(r.try_read()).payload for _ in range(1000)]
            assert got == [payload(i) for i in range(1000)] and r.try_read() is None
            copies = []
            while (d := sr.try_read()) is not None:
                copies.append(unpack_record(d).payload)
            assert copies == [payload(i) for i in range(len(copies))]
            assert len(copies) == tap.taken and tap.taken + tap.dropped["tap full"] == 1000
            out.close()

    def test_inlet_tap_copies_what_the_consumer_takes_with_type(self):
        """A consumer-side tap gets every record the Inlet took, with its ring type id."""
        with Ring.create(capacity=1 << 16) as main, Ring.create(capacity=1 << 16) as side:
            w = main.writer()
            for i in range(10):
                w.write(payload(i), type_id=7)
            inlet = Inlet(main.reader(), "main", tap=Tap(side.writer(), "main"))
            got = [inlet.receive_raw(timeout_s=1) for _ in range(10)]
            sr = side.reader()
            copies = [(sr.try_read(), sr.last_type) for _ in range(10)]
            assert got == [payload(i) for i in range(10)] and copies == [(payload(i), 7) for i in range(10)]
            inlet.close()
            w.close()


PIPE = """
[stages.src]
kind = "counter"
outputs = { out = "n" }
params = { count = 3000, rate_hz = 3000 }
[stages.sink]
kind = "check"
inputs = { in = "n" }
[stages.rec]
kind = "record"
inputs = { n = "n.tap" }
params = { out = "%s" }
[links.n]
tap = true
tap_capacity = 65536
"""


class TestFrameTap:
    def test_capture_copies_each_frame_into_its_tap(self):
        """A CaptureStage with a FrameTap publishes 6 pattern frames to its ring and the same pixels and
        capture stamps, in order, to the side ring; a side ring with room for fewer drops and counts the rest."""
        pytest.importorskip("cv2")
        from edgepipe.frames import FrameReader, FrameWriter
        from edgepipe.pipeline.tap import FrameTap
        from edgepipe.stages.capture import CaptureStage

        def frames(ring):
            r = FrameReader(ring.reader())
            out = []
            while (fr := r.try_read_frame()) is not None:
                with fr as f:
                    out.append((f.seq, f.capture_ns, f.array.copy()))
            r.close()
            return out

        for side_cap, want in ((1 << 22, 6), (1 << 19, 2)):  # 230 KB frames: all fit, or two
            with Ring.create(capacity=1 << 23) as main, Ring.create(capacity=side_cap) as side:
                cap = CaptureStage("pattern:320x240", FrameWriter(main.writer()), fps=1000, realtime=False,
                                   max_frames=6, on_full="wait")
                cap.frame_tap = FrameTap(side.writer(), "frames")
                assert cap.run() == 0
                a, b = frames(main), frames(side)
                assert len(a) == 6 and len(b) == want == cap.frame_tap.taken
                assert cap.frame_tap.dropped.get("tap full", 0) == 6 - want
                for (sa, ca, xa), (sb, cb, xb) in zip(a, b):
                    assert (sa, ca) == (sb, cb) and np.array_equal(xa, xb)
                cap.output.close()
                cap.frame_tap.close()


class TestConfig:
    def test_tap_adds_a_drop_side_link(self):
        """tap = true adds the drop-mode side link '<link>.tap' with tap_capacity, filled by the producer
        (a Python stage)."""
        spec = parse_config(PIPE % "x.mcap")
        assert spec.links["n.tap"].mode == "drop" and spec.links["n.tap"].capacity == 65536
        assert tap_filler(spec, "n") == ("src", "out", True)

    def test_tap_without_a_reader_is_valid(self):
        """A tapped link whose side link no stage reads validates: the side link is there for another process
        to attach while the pipeline runs (edgepipe.pipeline.attach), and no other output may dangle."""
        text = PIPE.split("[stages.rec]")[0] + "[links.n]\ntap = true\n"
        spec = parse_config(text)
        assert spec.links["n.tap"].mode == "drop" and tap_filler(spec, "n") == ("src", "out", True)

    def test_tap_between_two_builtin_stages_is_refused(self):
        """imu -> inference cannot be tapped (both write/read the ring directly and the IMU loop is C):
        ConfigError naming the link and both stages."""
        text = textwrap.dedent("""
            [stages.imu]
            kind = "imu"
            outputs = { output = "samples" }
            params = { synthetic = true }
            [stages.det]
            kind = "inference"
            inputs = { input = "samples" }
            outputs = { output = "dets" }
            [stages.show]
            kind = "print"
            inputs = { in = "dets" }
            [stages.rec]
            kind = "record"
            inputs = { f = "samples.tap" }
            [links.samples]
            tap = true
        """)
        with pytest.raises(ConfigError, match=r"links\.samples\.tap.*imu -> det"):
            parse_config(text)

    def test_capture_fills_the_tap_of_its_frames(self):
        """capture -> inference: the capture stage (registered with frame_tap) fills the frames tap."""
        text = textwrap.dedent("""
            [stages.cam]
            kind = "capture"
            outputs = { output = "frames" }
            params = { source = "pattern" }
            [stages.det]
            kind = "inference"
            inputs = { input = "frames" }
            outputs = { output = "dets" }
            [stages.show]
            kind = "print"
            inputs = { in = "dets" }
            [stages.rec]
            kind = "record"
            inputs = { f = "frames.tap" }
            [links.frames]
            tap = true
        """)
        assert tap_filler(parse_config(text), "frames") == ("cam", "output", True)

    def test_consumer_fills_the_tap_of_a_builtin_producer(self):
        """imu (a built-in stage) -> print: the Python consumer fills the tap."""
        text = textwrap.dedent("""
            [stages.imu]
            kind = "imu"
            outputs = { output = "samples" }
            params = { synthetic = true }
            [stages.show]
            kind = "print"
            inputs = { in = "samples" }
            [stages.rec]
            kind = "record"
            inputs = { s = "samples.tap" }
            [links.samples]
            tap = true
        """)
        assert tap_filler(parse_config(text), "samples") == ("show", "in", False)


class TestPipeline:
    def test_recorded_pipeline_loses_nothing(self, tmp_path):
        """counter -> check with a tapped link and a record stage (three processes): the checker sees all
        3000 records, and the recording holds them in order with intact payloads, or counts what the tap
        dropped."""
        pytest.importorskip("mcap")
        from edgepipe.pipeline.supervisor import Pipeline
        from edgepipe.record.reader import iter_recording, recording_info

        out = tmp_path / "run.mcap"
        p = Pipeline.from_spec(parse_config(PIPE % out), stats_path=False)
        assert p.run(seconds=120) == 0
        assert p.stage_stats()["sink"]["received"] == 3000
        seqs = [m.stamps.seq for _t, _s, _m, m in iter_recording(out)]
        info = recording_info(out)
        dropped = info.drops[("/n", "tap full")]
        assert len(seqs) + dropped == 3000 and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        for _t, _s, _m, m in iter_recording(out):
            rec = unpack_record(m.payload)
            assert rec.seq == m.stamps.seq and rec.capture_ns == m.stamps.capture_ns


    def test_full_disk_stops_the_recording_not_the_pipeline(self, tmp_path, skip_unless_ci):
        """A record stage writing to a 4 MiB tmpfs (1 MiB chunks): the disk fills, the stage reports recording_error and
        goes on draining its tap, the pipeline ends cleanly with every record delivered to the checker, and
        the file is recoverable up to its last complete chunk."""
        pytest.importorskip("mcap")
        import subprocess

        from edgepipe.pipeline.supervisor import Pipeline
        from edgepipe.record.reader import recover_recording

        d = tmp_path / "small"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            skip_unless_ci(f"cannot mount a tmpfs here (root is needed): {r.stderr.decode().strip()}")
        try:
            # 41 MB offered to a 4 MiB disk: full even if a loaded machine makes the tap drop most of it
            text = (PIPE % (d / "run.mcap")).replace("count = 3000, rate_hz = 3000", "count = 20000, rate_hz = 4000, size = 2048") \
                .replace("tap_capacity = 65536", "tap_capacity = 4194304") \
                .replace('params = { out = "%s" }' % (d / "run.mcap"),
                         'params = { out = "%s", compression = "none" }' % (d / "run.mcap"))
            p = Pipeline.from_spec(parse_config(text), stats_path=False)
            assert p.run(seconds=120) == 0
            st = p.stage_stats()
            assert st["sink"]["received"] == 20000
            assert "No space left on device" in st["rec"]["recording_error"] and st["rec"]["state"] == "done"
            assert st["rec"]["discarded"] > 0
            assert recover_recording(d / "run.mcap", tmp_path / "ok.mcap").messages > 0
        finally:
            subprocess.run(["umount", str(d)], check=True)
