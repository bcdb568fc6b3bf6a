"""CaptureStage: the bundled real clip decoded in place into a ring, pacing at the native fps, looping,
an image folder written by the test, the synthetic pattern, a latest-slot output, drop-when-full, stop(),
and the typed errors: refused URL, missing camera, missing or unreadable file, a file cut short mid-stream
(frames already published stay readable)."""

from __future__ import annotations

import os
import socket
import time

import cv2
import numpy as np
import pytest

from edgepipe import Ring
from edgepipe.stages.capture import CaptureStage, FileSource, PatternSource, open_source, sample_text_images, sample_video
from edgepipe.errors import CameraNotFoundError, OutputStalledError, RingTimeoutError, SourceFailedError, SourceOpenError
from edgepipe.frames import FrameReader, FrameWriter
from edgepipe.latest import LatestSlot

CLIP_SHAPE = (576, 768, 3)


@pytest.fixture
def ring_pair():
    ring = Ring.create(capacity=1 << 24)  # 8 MB records: a 768x576 frame is 1.3 MB
    yield FrameWriter(ring.writer()), FrameReader(ring.reader())
    ring.close()


def _drain(r: FrameReader) -> list:
    out = []
    while (c := r.try_read_frame()) is not None:
        with c as f:
            out.append((f.seq, f.capture_ns, f.publish_ns, f.copy()))
    return out


def _play(stage, r) -> list:
    """Start the stage and drain the ring until it has finished; every frame read, in order."""
    stage.start()
    got = []
    while stage.join(0) is None:
        got += _drain(r)
        time.sleep(0.005)
    got += _drain(r)
    stage.join(5)
    return got


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connecting is refused
    return port


class TestFileSource:
    def test_bundled_clip_every_frame_decoded_in_place(self, ring_pair):
        """The bundled clip plays to its end as fast as possible: 100 frames, decoded in place (no copies),
        bit-identical to an independent decode, stamped capture <= publish, end of stream reported."""
        w, r = ring_pair
        stage = CaptureStage(sample_video(), w, realtime=False)
        frames = _play(stage, r)
        assert stage.join(5) == 0
        s = stage.stats()
        assert (s["grabbed"], s["published"], s["dropped"], s["copies"], s["end_of_stream"]) == (100, 100, 0, 0, 1)
        assert s["state"] == "done" and s["error"] is None and s["shape"] == CLIP_SHAPE
        assert [f[0] for f in frames] == list(range(1, 101))
        assert all(cap <= pub for _, cap, pub, _ in frames)
        ref = cv2.VideoCapture(str(sample_video()), cv2.CAP_FFMPEG)
        for i in (0, 50, 99):
            ref.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, img = ref.read()
            assert ok and np.array_equal(frames[i][3], img)
        ref.release()

    def test_native_fps_pacing(self, ring_pair):
        """By default a file plays at its native 10 fps: 6 frames take 5 periods (0.5 s) within a generous
        tolerance, and the publish interval's median is about 100 ms."""
        w, r = ring_pair
        stage = CaptureStage(sample_video(), w, max_frames=6)
        t0 = time.monotonic()
        assert stage.run() == 0
        dt = time.monotonic() - t0
        assert 0.45 <= dt < 1.5, dt
        assert 80 <= stage.stats()["interval_ms_p50"] <= 130
        assert len(_drain(r)) == 6

    def test_stats_name_the_configured_fps_next_to_the_achieved_one(self, ring_pair):
        """fps_target is the rate the loop paces at (the file's own 10 fps, or an override), so a report can
        compare it with the achieved fps; an unpaced run (realtime=False) has none."""
        w, _ = ring_pair
        paced = CaptureStage(sample_video(), w, max_frames=3)
        assert paced.run() == 0
        s = paced.stats()
        assert s["fps_target"] == 10.0 and s["fps"] > 0
        with LatestSlot.create(None, 576 * 768 * 3) as slot:
            over = CaptureStage(sample_video(), slot.writer(), fps=25, max_frames=2)
            assert over.run() == 0 and over.stats()["fps_target"] == 25.0
        with LatestSlot.create(None, 576 * 768 * 3) as slot:
            fast = CaptureStage(sample_video(), slot.writer(), realtime=False, max_frames=2)
            assert fast.run() == 0 and fast.stats()["fps"] > 0
            assert "fps_target" not in fast.stats()

    def test_fps_override_uses_absolute_deadlines(self):
        """fps=50 plays 26 frames in about 0.5 s; deadlines are absolute, so the total does not drift by
        the per-frame work."""
        with LatestSlot.create(None, 576 * 768 * 3) as slot:
            stage = CaptureStage(sample_video(), slot.writer(), fps=50, max_frames=26)
            t0 = time.monotonic()
            assert stage.run() == 0
            assert 0.45 <= time.monotonic() - t0 < 1.2
            assert slot.status().published == 26

    def test_loop_restarts_at_the_end(self, ring_pair):
        """loop=True starts over at the end of the file instead of ending."""
        w, r = ring_pair
        stage = CaptureStage(sample_video(), w, loop=True, realtime=False, max_frames=130)
        stage.start()
        n = 0
        while stage.join(0) is None:
            n += len(_drain(r))
        n += len(_drain(r))
        assert stage.join(5) == 0
        assert n == 130 and stage.counters["loops"] == 1 and stage.counters["end_of_stream"] == 0

    def test_file_cut_short_fails_mid_stream_and_published_frames_stay(self, ring_pair, tmp_path):
        """A video truncated mid-stream: the stage publishes what it could, then exits 1 with
        SourceFailedError in its stats; the published frames are still readable afterwards."""
        w, r = ring_pair
        path = tmp_path / "cut.avi"
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
        rng = np.random.default_rng(0)
        for _ in range(30):
            vw.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
        vw.release()
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.6)])
        stage = CaptureStage(path, w, realtime=False)
        assert stage.run() == 1
        s = stage.stats()
        assert s["state"] == "failed" and s["error"].startswith("SourceFailedError")
        assert "of the 30 frames" in s["error"]
        assert isinstance(stage.error, SourceFailedError)
        got = _drain(r)
        assert 5 <= len(got) == s["published"] < 30

    def test_missing_and_unreadable_files(self, ring_pair, tmp_path):
        """A missing file is CameraNotFoundError (a FileNotFoundError); a file that is no video is
        SourceOpenError; both name the path and make run() return 1."""
        w, _ = ring_pair
        missing = tmp_path / "nope.mp4"
        stage = CaptureStage(missing, w)
        assert stage.run() == 1 and isinstance(stage.error, CameraNotFoundError)
        assert isinstance(stage.error, FileNotFoundError) and str(missing) in str(stage.error)
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(b"definitely not a video" * 50)
        with pytest.raises(SourceOpenError, match="junk.mp4"):
            FileSource(junk).open()


class TestOtherSources:
    def test_image_folder(self, ring_pair, tmp_path):
        """A folder of images plays in name order at the first image's size (others resized into the
        slot); an undecodable file counts as a decode error and is skipped."""
        w, r = ring_pair
        imgs = [np.full((40, 60, 3), v, np.uint8) for v in (10, 20)]
        cv2.imwrite(str(tmp_path / "a.png"), imgs[0])
        cv2.imwrite(str(tmp_path / "b.png"), imgs[1])
        cv2.imwrite(str(tmp_path / "c.png"), np.full((80, 120, 3), 30, np.uint8))  # resized to 40x60
        (tmp_path / "d.png").write_bytes(b"broken")
        (tmp_path / "notes.txt").write_text("ignored")
        stage = CaptureStage(tmp_path, w, realtime=False)
        assert stage.run() == 0
        got = _drain(r)
        assert [int(f[3][0, 0, 0]) for f in got] == [10, 20, 30]
        assert all(f[3].shape == (40, 60, 3) for f in got)
        s = stage.stats()
        assert s["published"] == 3 and s["copies"] == 3 and s["end_of_stream"] == 1
        assert s["decode_errors"] == 1  # d.png

    def test_looping_folder_loses_no_deadline_at_the_rewind(self, ring_pair, monkeypatch):
        """A looped 2-image folder at 10 fps keeps 10 fps: frame k waits for deadline t0 + k periods, the
        end of the folder taking none (it used to take one per loop: 6.67 fps from 2 pages at 10). The
        waits are recorded instead of slept, so nothing here depends on timing."""
        w, r = ring_pair
        stage = CaptureStage(sample_text_images()[0].parent, w, fps=10, loop=True, max_frames=7)
        waits = []
        monkeypatch.setattr(stage, "_sleep_until", lambda d: waits.append(d) or True)
        assert stage.run() == 0
        assert len(_drain(r)) == 7 and stage.counters["loops"] == 3
        steps = [b - a for a, b in zip(waits, waits[1:])]
        assert len(waits) == 7 + 3 and sorted(set(steps)) == [0, 100_000_000], steps
        assert waits[-1] - waits[0] == 6 * 100_000_000  # 7 frames over 6 periods

    def test_bundled_text_images_play_as_a_folder(self, ring_pair):
        """The two bundled text photographs exist and play as a folder source."""
        paths = sample_text_images()
        assert [p.name for p in paths] == ["imageTextN.png", "imageTextR.png"]
        w, r = ring_pair
        assert CaptureStage(paths[0].parent, w, realtime=False).run() == 0
        assert len(_drain(r)) == 2

    def test_pattern_into_latest_slot_with_rgb(self):
        """The synthetic pattern generated in place into a latest slot; RGB output is BGR reversed."""
        with LatestSlot.create(None, 64 * 48 * 3) as slot:
            r = slot.reader()
            assert CaptureStage("pattern:64x48", slot.writer(), realtime=False, max_frames=3).run() == 0
            with r.read_frame(0) as f:
                bgr = f.copy()
                assert f.seq == 3 and f.shape == (48, 64, 3)
        src = PatternSource((64, 48))
        src.open()
        ref = np.zeros((48, 64, 3), np.uint8)
        for _ in range(3):
            src.grab()
        src.retrieve(ref)
        assert np.array_equal(bgr, ref)
        with LatestSlot.create(None, 64 * 48 * 3) as slot:
            r = slot.reader()
            CaptureStage("pattern:64x48", slot.writer(), realtime=False, max_frames=3, pixel_format="RGB").run()
            with r.read_frame(0) as f:
                assert f.pixel_format == "RGB" and np.array_equal(f.array, bgr[..., ::-1])

    def test_live_source_drops_when_ring_full_and_never_blocks(self):
        """on_full='drop': with nobody reading, a full ring drops frames (counted by reason) instead of
        blocking the source."""
        with Ring.create(capacity=1 << 16) as ring:
            w = FrameWriter(ring.writer())
            stage = CaptureStage("pattern:64x48", w, realtime=False, max_frames=None, on_full="drop")
            stage.start()
            time.sleep(0.3)
            stage.stop()
            assert stage.join(2) == 0
            c = stage.counters
            assert c["dropped_full"] > 0 and c["dropped"] == c["dropped_full"]
            assert c["grabbed"] == c["published"] + c["dropped"]

    def test_recorded_source_with_no_reader_fails_after_stall_timeout(self):
        """on_full='wait' into a lossless ring nobody reads: instead of waiting forever, run() returns 1 after
        stall_timeout_s with OutputStalledError (a RingTimeoutError) naming the stage and the ring."""
        name = f"t-stall-{os.getpid()}"
        with Ring.create(name, capacity=1 << 16) as ring:
            ring.unlink()
            stage = CaptureStage("pattern:64x48", FrameWriter(ring.writer()), realtime=False, on_full="wait",
                                 stall_timeout_s=0.3, name="cam0")
            t0 = time.monotonic()
            assert stage.run() == 1
            waited = time.monotonic() - t0
        assert isinstance(stage.error, OutputStalledError) and isinstance(stage.error, RingTimeoutError)
        assert f"'cam0': its output ring {name!r} has been full" in str(stage.error)
        assert "stall_timeout_s=0.3" in str(stage.error)
        assert waited >= 0.3
        assert stage.counters["published"] > 0 and stage.counters["dropped"] == 0

    def test_a_consumer_that_keeps_reading_is_no_stall(self):
        """A reader that takes frames as they come keeps a small stall_timeout_s from firing: every frame
        published and read, exit 0."""
        with Ring.create(capacity=1 << 16) as ring:  # room for ~3 frames of 64x48x3
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            stage = CaptureStage("pattern:64x48", w, realtime=False, on_full="wait", max_frames=200,
                                 stall_timeout_s=5)
            got = _play(stage, r)
        assert stage.join(5) == 0 and stage.error is None
        assert len(got) == stage.counters["published"] == 200

    def test_consumer_that_comes_and_goes(self, shm_name):
        """on_consumer_closed='drop': a reader that closes does not end the stage; frames are dropped and
        counted while nobody reads, and a reader attached later gets new frames. The default fails."""
        from edgepipe.errors import PeerClosedError

        with Ring.create(shm_name, capacity=1 << 16) as ring:
            w = FrameWriter(ring.writer())
            stage = CaptureStage("pattern:32x32", w, fps=200, loop=True, on_consumer_closed="drop")
            r = FrameReader(ring.reader())
            stage.start()
            with r.read_frame(timeout_s=10):
                pass
            r.close()
            deadline = time.monotonic() + 30
            while stage.counters["dropped_no_consumer"] < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stage.counters["dropped_no_consumer"] >= 3 and stage.state == "running"
            published = stage.counters["published"]
            r2 = FrameReader(Ring.attach(shm_name).reader())
            seqs = []
            while len(seqs) < 30:  # what was queued before, then frames published after the new attach
                with r2.read_frame(timeout_s=10) as f:
                    seqs.append(f.seq)
            stage.stop()
            assert stage.join(10) == 0 and stage.error is None
            assert stage.counters["published"] > published and seqs == sorted(seqs)
            r2.close()
        with Ring.create(capacity=1 << 16) as ring:
            w = FrameWriter(ring.writer())
            ring.reader().close()
            stage = CaptureStage("pattern:32x32", w, realtime=False)
            assert stage.run() == 1 and isinstance(stage.error, PeerClosedError)

    def test_stop_ends_a_paced_endless_source_promptly(self, ring_pair):
        """stop() ends an endless realtime source within a couple of 100 ms slices."""
        w, _ = ring_pair
        stage = CaptureStage("pattern:32x32", w, fps=2)
        stage.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        stage.stop()
        assert stage.join(2) == 0
        assert time.monotonic() - t0 < 0.5


def _serve_clip(tmp_path, frames: int = 20, keep: float = 1.0):
    """Write ``frames`` frames of the bundled clip as an MJPG AVI (it streams without seeking), keep the
    first ``keep`` share of its bytes, and serve tmp_path over HTTP. Returns (server, url, clip path)."""
    import functools
    import http.server
    import threading

    clip = tmp_path / "clip.avi"
    cap = cv2.VideoCapture(str(sample_video()), cv2.CAP_FFMPEG)
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (768, 576))
    for _ in range(frames):
        vw.write(cap.read()[1])
    vw.release()
    cap.release()
    if keep < 1.0:
        data = clip.read_bytes()
        clip.write_bytes(data[: int(len(data) * keep)])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/clip.avi", clip


def _play_http(ring_pair, tmp_path, **serve):
    """Serve the clip over HTTP (``_serve_clip(**serve)``) and play it through a CaptureStage into the ring.
    Returns the finished stage, the frames read and the clip's path."""
    w, r = ring_pair
    srv, url, clip = _serve_clip(tmp_path, **serve)
    try:
        stage = CaptureStage(url, w, realtime=False, on_full="wait")
        got = _play(stage, r)
    finally:
        srv.shutdown()
        srv.server_close()
    return stage, got, clip


class TestStream:
    def test_http_stream_decodes_into_the_ring(self, ring_pair, tmp_path):
        """20 frames of the bundled clip served over HTTP by a local server play through the stream source
        (FFMPEG's network path) into the ring, identical to decoding the same file locally, and end
        cleanly at the announced frame count."""
        stage, got, clip = _play_http(ring_pair, tmp_path)
        s = stage.stats()
        assert s["state"] == "done", s
        assert s["published"] == len(got) == 20 and s["end_of_stream"] == 1 and s["copies"] == 0
        ref = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
        ok, first = ref.read()
        ref.release()
        assert ok and np.array_equal(got[0][3], first)

    def test_http_stream_that_breaks_off_fails_and_keeps_published_frames(self, ring_pair, tmp_path):
        """A stream that stops half way (the server has only part of the file) ends the stage with exit
        status 1 and SourceFailedError in its stats; the frames published before stay readable."""
        stage, got, _ = _play_http(ring_pair, tmp_path, keep=0.5)
        s = stage.stats()
        assert s["state"] == "failed" and s["error"].startswith("SourceFailedError"), s
        assert 3 <= len(got) == s["published"] < 20


class TestUnavailable:
    def test_url_that_refuses(self, ring_pair):
        """An HTTP URL on a closed port raises SourceOpenError naming the URL, quickly."""
        w, _ = ring_pair
        url = f"http://127.0.0.1:{_closed_port()}/stream.mjpg"
        stage = CaptureStage(url, w, open_timeout_s=3)
        t0 = time.monotonic()
        assert stage.run() == 1
        assert time.monotonic() - t0 < 10
        assert isinstance(stage.error, SourceOpenError) and url in str(stage.error)

    @pytest.mark.parametrize("device", [7, "/dev/video9"])
    def test_missing_camera(self, ring_pair, device):
        """A camera index or device that does not exist raises CameraNotFoundError naming the device."""
        w, _ = ring_pair
        assert not os.path.exists("/dev/video7") and not os.path.exists("/dev/video9")
        stage = CaptureStage(device, w, size=(640, 480), fps=30, fourcc="MJPG")
        assert stage.run() == 1
        assert isinstance(stage.error, CameraNotFoundError)
        assert "/dev/video" in str(stage.error)

    @pytest.mark.parametrize("bad,exc,match", [
        (True, TypeError, "True"),
        (3.5, TypeError, "float"),
        ("pattern:axb", ValueError, "pattern:axb"),
    ])
    def test_bad_source_descriptions(self, bad, exc, match):
        """Sources that cannot be understood raise at construction, naming the value."""
        with pytest.raises(exc, match=match):
            open_source(bad)

    def test_bad_arguments(self, ring_pair):
        """Bad fps, on_full, fourcc or output raise at construction, naming the value."""
        w, _ = ring_pair
        with pytest.raises(ValueError, match="-1"):
            CaptureStage("pattern", w, fps=-1)
        with pytest.raises(ValueError, match="'sometimes'"):
            CaptureStage("pattern", w, on_full="sometimes")
        with pytest.raises(ValueError, match="'MJPEG'"):
            CaptureStage(0, w, fourcc="MJPEG")
        with pytest.raises(TypeError, match="list"):
            CaptureStage("pattern", [])
        with pytest.raises(ValueError, match="'sometimes'"):
            CaptureStage("pattern", w, on_consumer_closed="sometimes")
        for bad in (0, -2, "10", True):
            with pytest.raises(ValueError, match=f"stall_timeout_s.*{bad!r}"):
                CaptureStage("pattern", w, stall_timeout_s=bad)


class TestConsumerDied:
    """A consumer that dies (kill -9, no close) is not one that closed: with the default
    on_consumer_closed='fail' the stage waits for its restart (on_full='wait') or drops and counts
    (on_full='drop'), and stays running; only a consumer that closed in order fails it."""

    def _dead_consumer(self, shm_name):
        import subprocess
        import sys

        code = ("import os, sys\nfrom edgepipe import Ring\nr = Ring.attach(sys.argv[1]).reader()\n"
                "print('attached', flush=True)\nsys.stdin.read(1)\nos.kill(os.getpid(), 9)\n")
        p = subprocess.Popen([sys.executable, "-c", code, shm_name], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "attached"
        return p

    @pytest.mark.parametrize("on_full", ["wait", "drop"])
    def test_dead_consumer_is_waited_for_not_a_failure(self, shm_name, on_full):
        with Ring.create(shm_name, capacity=1 << 16) as ring:
            w = FrameWriter(ring.writer())
            p = self._dead_consumer(shm_name)
            p.stdin.write("x")
            p.stdin.flush()
            assert p.wait(30) == -9
            stage = CaptureStage("pattern:32x32", w, fps=500, loop=True, on_full=on_full, stall_timeout_s=None)
            stage.start()
            key = "dropped_consumer_restarting" if on_full == "drop" else "grabbed"
            deadline = time.monotonic() + 30
            while stage.counters.get(key, 0) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stage.state == "running" and stage.error is None, stage.stats()
            assert stage.counters.get(key, 0) >= 3, stage.stats()
            r2 = FrameReader(Ring.attach(shm_name).reader())  # the restarted consumer takes the end over
            with r2.read_frame(timeout_s=30) as f:
                assert f.array.shape == (32, 32, 3)
            stage.stop()
            assert stage.join(10) == 0 and stage.error is None, stage.stats()
            r2.close()
