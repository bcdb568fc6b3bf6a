"""The live view (edgepipe.view): every HTTP endpoint through aiohttp's test client, the stream-client limit,
the token, no paths reaching the filesystem; the view stage over real rings; attaching it to the demo."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp", reason='the view needs aiohttp: pip install "edgepipe[view]"')
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from edgepipe import Ring  # noqa: E402
from edgepipe.control import messages as pb  # noqa: E402
from edgepipe.errors import ConfigError  # noqa: E402
from edgepipe.frames import FrameWriter  # noqa: E402
from edgepipe.pipeline.api import Inlet  # noqa: E402
from edgepipe.view.render import encode_jpeg  # noqa: E402
from edgepipe.view.server import BOUNDARY, LatestJpeg, ViewServer, make_app  # noqa: E402
from edgepipe.view.stage import ViewStage, is_loopback  # noqa: E402

METRICS = {"name": "t", "uptime_s": 1.5,
           "parts": [{"part": "detect.inference", "count": 10, "p50_ms": 40.0, "p99_ms": 90.0, "max_ms": 95.0,
                      "budget_ms": 150.0, "violations": 0},
                     {"part": "end_to_end", "count": 12, "p50_ms": 60.0, "p99_ms": 300.0, "max_ms": 310.0,
                      "budget_ms": 250.0, "violations": 2}],
           "links": {"frames": {"rate_hz": 10.0, "dropped": 3, "fill": 0.25}},
           "stages": {"imu": {"state": "running", "restarts": 0, "missed": 7}}}


def jpeg_of(value: int) -> bytes:
    img = np.full((48, 64, 3), value, np.uint8)
    return encode_jpeg(img)


def run(app, body):
    """Run ``body(client)`` against ``app`` on aiohttp's test server."""
    async def go():
        async with TestClient(TestServer(app)) as client:
            return await body(client)
    return asyncio.run(go())


async def read_part(resp) -> tuple[dict[str, str], bytes]:
    """One part of a multipart/x-mixed-replace stream: its headers and body."""
    line = await asyncio.wait_for(resp.content.readline(), 30)
    assert line == f"--{BOUNDARY}\r\n".encode(), line
    headers = {}
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 30)).decode()
        if line == "\r\n":
            break
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = await asyncio.wait_for(resp.content.readexactly(int(headers["content-length"])), 30)
    assert await resp.content.readexactly(2) == b"\r\n"
    return headers, body


class TestEndpoints:
    def test_snapshot_is_503_until_the_first_picture_then_that_picture(self):
        """/snapshot.jpg (and ?action=snapshot) is 503 before the first picture, then that picture with its stamps."""
        latest = LatestJpeg()

        async def body(c):
            r = await c.get("/snapshot.jpg")
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            latest.put(jpeg_of(100), capture_ns=123, frame_seq=4)
            r = await c.get("/snapshot.jpg")
            assert r.status == 200 and r.content_type == "image/jpeg"
            assert r.headers["X-Capture-Ns"] == "123" and r.headers["X-Frame-Seq"] == "4"
            assert await r.read() == jpeg_of(100)
            r = await c.get("/?action=snapshot")
            assert r.status == 200 and await r.read() == jpeg_of(100)
        run(make_app(latest, lambda: METRICS), body)

    @pytest.mark.parametrize("path", ["/stream.mjpg", "/?action=stream"])
    def test_stream_sends_each_new_picture_as_a_part(self, path):
        """The MJPEG stream (and its alias) sends each new picture as one multipart part."""
        latest = LatestJpeg()
        latest.put(jpeg_of(10), 1, 1)

        async def body(c):
            r = await c.get(path)
            assert r.status == 200
            assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            h, b = await read_part(r)
            assert b == jpeg_of(10) and h["content-type"] == "image/jpeg" and h["x-capture-ns"] == "1"
            latest.put(jpeg_of(200), 2, 2)
            h, b = await read_part(r)
            assert b == jpeg_of(200) and h["x-frame-seq"] == "2"
            r.close()
        run(make_app(latest, lambda: METRICS, max_fps=50), body)

    def test_one_stream_client_over_the_limit_gets_503_and_the_others_keep_streaming(self):
        """One stream client over max_clients gets 503 while the others and the server carry on; a closed client's
        slot comes back."""
        latest = LatestJpeg()
        latest.put(jpeg_of(10), 1, 1)
        app = make_app(latest, lambda: METRICS, max_clients=2, max_fps=50)

        async def body(c):
            a, b = await c.get("/stream.mjpg"), await c.get("/stream.mjpg")
            await read_part(a)
            await read_part(b)
            over = await c.get("/stream.mjpg")
            assert over.status == 503 and "2 stream clients" in await over.text()
            assert (await c.get("/snapshot.jpg")).status == 200  # the server itself is not stalled
            latest.put(jpeg_of(60), 2, 2)
            assert (await read_part(a))[1] == jpeg_of(60)
            b.close()
            for _ in range(300):  # the closed client's slot comes back once the server notices
                r = await c.get("/stream.mjpg")
                if r.status == 200:
                    break
                await asyncio.sleep(0.05)
            assert r.status == 200
            r.close()
            a.close()
            from edgepipe.view import server

            return app[server.STATE]["refused"]
        assert run(app, body) >= 1

    def test_metrics_json_and_prometheus_text_carry_the_same_numbers(self):
        """/metrics.json and /metrics (parsed by prometheus_client) carry the same per-part, link and IMU numbers."""
        latest = LatestJpeg()

        async def body(c):
            m = await (await c.get("/metrics.json")).json()
            assert m["parts"] == METRICS["parts"] and m["links"] == METRICS["links"]
            assert m["view"]["stream_clients"] == 0
            r = await c.get("/metrics")
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            fams = {f.name: f for f in text_string_to_metric_families(await r.text())}
            lat = {(s.labels["part"], s.labels["quantile"]): s.value for s in fams["edgepipe_part_latency_ms"].samples}
            assert lat[("detect.inference", "0.5")] == 40.0 and lat[("end_to_end", "0.99")] == 300.0
            bud = {s.labels["part"]: s.value for s in fams["edgepipe_part_budget_ms"].samples}
            assert bud == {"detect.inference": 150.0, "end_to_end": 250.0}
            viol = {s.labels["part"]: s.value for s in fams["edgepipe_part_budget_violations"].samples
                    if s.name.endswith("_total")}
            assert viol["end_to_end"] == 2
            assert [s.value for s in fams["edgepipe_link_dropped"].samples if s.name.endswith("_total")] == [3]
            assert [s.value for s in fams["edgepipe_imu_missed_deadlines"].samples
                    if s.name.endswith("_total")] == [7]
        run(make_app(latest, lambda: METRICS), body)

    def test_page_and_script_are_served_offline(self):
        """The page and its script reference nothing off the box; an unknown action is 400."""
        async def body(c):
            page = await (await c.get("/")).text()
            assert '<img id="frame"' in page and '<canvas id="chart"' in page and 'src="view.js"' in page
            assert "http://" not in page and "https://" not in page  # nothing from a CDN
            js = await (await c.get("/view.js")).text()
            assert "getContext(\"2d\")" in js and "metrics.json" in js and "http" not in js
            assert (await c.get("/?action=nope")).status == 400
        run(make_app(LatestJpeg(), lambda: METRICS), body)

    @pytest.mark.parametrize("path", ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/static/", "/view.js/x",
                                      "/data/demo.toml", "/index.html", "/snapshot.jpg/../../etc/passwd"])
    def test_no_path_reaches_the_filesystem(self, path):
        """Paths outside the fixed routes are 404 and never return a file's contents."""
        async def body(c):
            r = await c.get(path)
            text = await r.text()
            assert r.status == 404 and "root:" not in text and "[pipeline]" not in text
        run(make_app(LatestJpeg(), lambda: METRICS), body)


class TestToken:
    TOKEN = "s3cret-token-123"

    @pytest.mark.parametrize("path", ["/", "/stream.mjpg", "/snapshot.jpg", "/metrics.json", "/metrics", "/view.js",
                                      "/?action=stream"])
    def test_every_route_needs_the_token(self, path):
        """With a token, every route is 401 without it or with a wrong one, and 200 with it in the query or a Bearer
        header."""
        latest = LatestJpeg()
        latest.put(jpeg_of(1), 1, 1)

        async def body(c):
            assert (await c.get(path)).status == 401
            assert (await c.get(path, params={"token": "wrong-token-00"})).status == 401
            ok = await c.get(path, params={"token": self.TOKEN})
            assert ok.status == 200
            ok.close()
            ok = await c.get(path, headers={"Authorization": f"Bearer {self.TOKEN}"})
            assert ok.status == 200
            ok.close()
        run(make_app(latest, lambda: METRICS, token=self.TOKEN, max_fps=50), body)

    def test_loopback_detection(self):
        """Loopback addresses need no token; wildcard and LAN addresses do."""
        assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("::1")
        assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")


def _get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read()


class TestServerThread:
    def test_listens_on_a_free_port_and_stops(self):
        """The server thread listens on a free port, serves, and stops listening on stop()."""
        latest = LatestJpeg()
        latest.put(jpeg_of(5), 9, 9)
        srv = ViewServer(make_app(latest, lambda: METRICS), "127.0.0.1", 0)
        url = srv.start()
        try:
            assert srv.port != 0 and url == f"http://127.0.0.1:{srv.port}/"
            status, headers, body = _get(url + "snapshot.jpg")
            assert status == 200 and body == jpeg_of(5)
        finally:
            srv.stop()
        with pytest.raises(urllib.error.URLError):
            _get(url + "snapshot.jpg", timeout=5)

    def test_a_taken_port_is_an_error_from_start(self):
        """A port already taken is an OSError from start(), not a silent thread death."""
        a = ViewServer(make_app(LatestJpeg(), lambda: METRICS), "127.0.0.1", 0)
        a.start()
        try:
            with pytest.raises(OSError):
                ViewServer(make_app(LatestJpeg(), lambda: METRICS), "127.0.0.1", a.port).start()
        finally:
            a.stop()


class TestViewStage:
    @pytest.mark.parametrize("kw, bad", [({"port": 70000}, "70000"), ({"max_fps": 0}, "0"),
                                         ({"max_clients": 0}, "0"), ({"quality": 101}, "101"),
                                         ({"token": "short"}, "short")])
    def test_bad_params_are_config_errors(self, kw, bad):
        """Bad view parameters are ConfigErrors naming the value."""
        with pytest.raises(ConfigError, match=bad):
            ViewStage("v", **kw)

    def run_stage(self, host: str, frames: list[np.ndarray], **kw):
        """A view stage over a real frame ring; returns (stage, url, thread) once it showed the last frame."""
        ring = Ring.create(capacity=1 << 22)
        fw = FrameWriter(ring.writer())
        st = ViewStage("view", inputs={"frames": "f"}, host=host, port=0, max_fps=1000, stats="/nonexistent", **kw)
        st.attach({"frames": Inlet(ring.reader(), "f")}, {})
        st.open()
        t = threading.Thread(target=st.loop)
        t.start()
        for i, img in enumerate(frames):
            with fw.claim_frame(img.shape, capture_ns=1000 + i) as a:
                a[:] = img
        deadline = time.monotonic() + 60  # a hang guard only
        while st.latest.get()[2] != 1000 + len(frames) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        return st, t, ring, fw

    def stop(self, st, t, ring, fw):
        st.stop()
        t.join(10)
        st.close()
        fw.close()
        ring.close()
        assert not t.is_alive()

    def test_frames_from_the_ring_come_out_as_jpeg(self, capsys):
        """Frames written into the ring come out of /snapshot.jpg as the same picture, counted in metrics.json."""
        base = np.zeros((120, 160, 3), np.uint8)
        base[20:60, 30:90] = (0, 0, 255)
        frames = [base, np.roll(base, 40, axis=1), np.tile(np.arange(160, dtype=np.uint8)[None, :, None], (120, 1, 3)) // 2 + base]
        st, t, ring, fw = self.run_stage("127.0.0.1", frames)
        try:
            assert st.token is None and "serving on http://127.0.0.1:" in capsys.readouterr().out
            status, headers, body = _get(st.server.url + "snapshot.jpg")
            assert status == 200 and headers["X-Capture-Ns"] == "1002"
            import cv2

            got = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            assert got.shape == frames[-1].shape
            assert np.abs(got.astype(int) - frames[-1]).mean() < 8  # the same picture, through JPEG
            m = json.loads(_get(st.server.url + "metrics.json")[2])
            assert m["view"]["frames_in"] == 3 and m["view"]["frames_shown"] >= 1
            assert m["view"]["frames_shown"] + m["view"]["frames_skipped"] == 3
        finally:
            self.stop(st, t, ring, fw)

    def test_idle_it_parks_on_its_input_instead_of_polling(self):
        """With no frame coming, the view wakes at most every 50 ms (parked on its frames input), and a frame
        written then is still shown."""
        st, t, ring, fw = self.run_stage("127.0.0.1", [np.zeros((32, 32, 3), np.uint8)])
        try:
            t0, w0 = time.monotonic(), st.wakes
            time.sleep(0.5)
            elapsed, wakes = time.monotonic() - t0, st.wakes - w0
            assert wakes <= elapsed / 0.05 + 2, (wakes, elapsed)  # a 5 ms poll would be ~100 in 0.5 s
            with fw.claim_frame((32, 32, 3), capture_ns=7777) as a:
                a[:] = 9
            deadline = time.monotonic() + 60  # a hang guard only
            while st.latest.get()[2] != 7777 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert st.latest.get()[2] == 7777
        finally:
            self.stop(st, t, ring, fw)

    def test_beyond_loopback_a_token_is_generated_and_required(self, capsys):
        """Bound beyond loopback, a token is generated, printed once with the URL, and required."""
        st, t, ring, fw = self.run_stage("0.0.0.0", [np.zeros((32, 32, 3), np.uint8)])
        try:
            assert st.token and len(st.token) >= 20
            out = capsys.readouterr().out
            assert f"?token={st.token}" in out and out.count("serving on") == 1
            local = f"http://127.0.0.1:{st.server.port}/snapshot.jpg"
            with pytest.raises(urllib.error.HTTPError) as ei:
                _get(local)
            assert ei.value.code == 401
            assert _get(local + f"?token={st.token}")[0] == 200
        finally:
            self.stop(st, t, ring, fw)


class TestAttach:
    def test_demo_gets_taps_an_align_stage_and_the_view(self, skip_unless_ci):
        """attach_view taps the demo's frames, detections and samples and wires align and view to the taps."""
        from edgepipe.cli.main import demo_spec
        from edgepipe.view.attach import attach_view

        spec, missing = demo_spec()
        if "detect" in missing or "imu" in missing:
            skip_unless_ci(f"the demo's detector or IMU is not available here: {missing}")
        attach_view(spec, port=0)
        st = {s.name: s for s in spec.stages}
        assert st["view"].inputs == {"frames": "frames.tap", "results": "view_aligned"}
        assert st["view_align"].inputs == {"frames": "detections.tap", "imu": "samples.tap"}
        assert spec.links["frames"].tap and spec.links["detections"].tap and spec.links["samples"].tap
        assert spec.links["view_aligned"].mode == "drop"

    def test_a_missing_link_is_named(self):
        """A link that is not in the pipeline is a ConfigError naming it."""
        from edgepipe.cli.main import demo_spec
        from edgepipe.view.attach import attach_view

        spec, _ = demo_spec()
        with pytest.raises(ConfigError, match="nope"):
            attach_view(spec, frames="nope")


class TestResults:
    def test_inference_results_and_aligned_frame_meta_are_told_apart(self):
        """Result bytes parse as the message that carries boxes or the attitude; garbage is None."""
        from edgepipe.view.stage import _result_of

        att = pb.AlignedAttitude(orientation=pb.Quaternion(w=1.0), gap_ns=7, extrapolated=True)
        meta = pb.FrameMeta(stamps=pb.Stamps(capture_ns=5), frame_seq=3, width=640, height=480, attitude=att)
        got = _result_of(meta.SerializeToString())
        assert isinstance(got, pb.FrameMeta) and got.attitude.gap_ns == 7 and got.frame_seq == 3
        res = pb.InferenceResult(stamps=pb.Stamps(capture_ns=5), frame_seq=3,
                                 detections=pb.Detections(boxes=[pb.Box(x_max=4, y_max=4, score=0.5)]), attitude=att)
        got = _result_of(res.SerializeToString())
        assert isinstance(got, pb.InferenceResult) and len(got.detections.boxes) == 1 and got.attitude.extrapolated
        assert _result_of(b"\xff\xff\xff") is None

    def test_a_frame_is_drawn_with_the_result_of_its_capture_stamp(self):
        """Frames and results joined by capture stamp: the boxes of the result for a frame's stamp are drawn
        on that frame (green), and the attitude it carries draws the horizon (cyan) and its text."""
        from edgepipe.pipeline.api import Outlet

        frames, results = Ring.create(capacity=1 << 22), Ring.create(capacity=1 << 20)
        fw, out = FrameWriter(frames.writer()), Outlet(results.writer(), "r")
        st = ViewStage("view", inputs={"frames": "f", "results": "r"}, port=0, max_fps=1000, stats="/nonexistent",
                       result_wait_ms=60_000)
        st.attach({"frames": Inlet(frames.reader(), "f"), "results": Inlet(results.reader(), "r")}, {})
        st.open()
        t = threading.Thread(target=st.loop)
        t.start()
        try:
            img = np.full((120, 160, 3), 128, np.uint8)
            for cap in (5000, 6000):
                with fw.claim_frame(img.shape, capture_ns=cap) as a:
                    a[:] = img
            res = pb.InferenceResult(stamps=pb.Stamps(capture_ns=6000), frame_seq=2,
                                     detections=pb.Detections(boxes=[pb.Box(x_min=10, y_min=10, x_max=60, y_max=50,
                                                                            score=0.9)]),
                                     attitude=pb.AlignedAttitude(orientation=pb.Quaternion(w=1.0), gap_ns=1000))
            out.emit(res.SerializeToString(), seq=2, capture_ns=6000)
            deadline = time.monotonic() + 60  # a hang guard only
            while st.latest.get()[2] != 6000 and time.monotonic() < deadline:
                time.sleep(0.01)
            import cv2

            _, jpeg, cap, _ = st.latest.get()
            got = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int)
            assert cap == 6000
            assert np.abs(got[10, 35] - (60, 220, 60)).sum() < 90  # the box's top edge, green
            assert np.abs(got[60, 140] - (230, 200, 40)).sum() < 90  # the level horizon across the middle, cyan
            assert np.abs(got[30, 35] - 128).sum() < 30  # inside the box: the frame itself
            assert st.counters["frames skipped"] == 1  # the frame at 5000 never got a result: passed over
        finally:
            st.stop()
            t.join(10)
            st.close()
            fw.close()
            out.end.close()
            frames.close()
            results.close()


class TestCommand:
    def test_view_and_demo_view_options(self):
        """edgepipe view and edgepipe demo --view take the view's options with their defaults."""
        from edgepipe.cli.main import build_parser

        a = build_parser().parse_args(["view", "--port", "0", "--host", "0.0.0.0", "--token", "abcdefgh12"])
        assert (a.file, a.port, a.host, a.token, a.max_fps, a.max_clients) == (None, 0, "0.0.0.0", "abcdefgh12", 15.0, 4)
        a = build_parser().parse_args(["demo", "--view"])
        assert a.view and a.port == 8080 and a.host == "127.0.0.1"
        assert not build_parser().parse_args(["demo"]).view

    def test_a_bad_link_is_exit_2_naming_it(self, capsys):
        """edgepipe view with a link the pipeline lacks exits 2 naming it."""
        from edgepipe.cli.main import main

        assert main(["view", "--frames", "nope", "--seconds", "1"]) == 2
        assert "nope" in capsys.readouterr().err


def _policy_in_thread(fn) -> dict:
    """Run ``fn()`` in a new thread; what it returned, that thread's and a thread it started afterwards's
    scheduling policy and nice value."""
    import os

    out: dict = {}

    def child():
        out["child"] = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))

    def body():
        out["applied"] = fn()
        out["self"] = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
        c = threading.Thread(target=child)
        c.start()
        c.join(30)

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    return out


class TestPriority:
    """The view and align stages' threads run at the lowest CPU priority by default (edgepipe.view.priority):
    the pipeline they watch matters more than the picture."""

    @pytest.mark.parametrize("policy, want", [("idle", "SCHED_IDLE"), ("batch", "SCHED_BATCH")])
    def test_a_policy_applies_to_the_calling_thread_and_its_children_only(self, policy, want):
        """lower_priority sets the calling thread's policy (and threads it starts inherit it); the thread that
        started it keeps its own."""
        import os

        from edgepipe.view.priority import lower_priority

        before = os.sched_getscheduler(0)
        got = _policy_in_thread(lambda: lower_priority(policy))
        assert got["applied"] == policy
        assert got["self"][0] == got["child"][0] == getattr(os, want)
        assert os.sched_getscheduler(0) == before != getattr(os, want)

    def test_nice_is_nineteen_for_the_calling_thread_only(self):
        """The "nice" policy leaves SCHED_OTHER and sets nice 19 on the calling thread (and its children)."""
        import os

        from edgepipe.view.priority import NICE, lower_priority

        before = os.getpriority(os.PRIO_PROCESS, 0)
        got = _policy_in_thread(lambda: lower_priority("nice"))
        assert got["applied"] == "nice" and got["self"] == got["child"] == (os.SCHED_OTHER, NICE)
        assert os.getpriority(os.PRIO_PROCESS, 0) == before != NICE

    def test_normal_changes_nothing(self):
        import os

        from edgepipe.view.priority import lower_priority

        got = _policy_in_thread(lambda: lower_priority("normal"))
        assert got["applied"] == "normal"
        assert got["self"] == (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))

    def test_a_bad_policy_is_a_config_error_naming_it(self):
        from edgepipe.view.align import AlignStage

        with pytest.raises(ConfigError, match="realtime"):
            ViewStage("v", sched="realtime")
        with pytest.raises(ConfigError, match="SCHED_FIFO"):
            AlignStage("a", sched="SCHED_FIFO")
        with pytest.raises(ConfigError, match="'idle' would stall"):
            AlignStage("a", sched="idle")

    def test_attach_gives_the_align_stage_the_views_sched_but_idle(self):
        """attach_view passes ``sched`` to the align stage too, except "idle" (the align stage keeps "batch")."""
        from edgepipe.pipeline.config import parse_config
        from edgepipe.view.attach import attach_view

        text = '''
[stages.cam]
kind = "capture"
outputs = { output = "frames" }
params = { source = "pattern" }
[stages.det]
kind = "relay"
inputs = { in = "frames" }
outputs = { out = "dets" }
[stages.imu]
kind = "imu"
outputs = { output = "samples" }
params = { synthetic = true }
[stages.a]
kind = "print"
inputs = { in = "dets" }
[stages.b]
kind = "print"
inputs = { in = "samples" }
'''
        for sched, want in (("normal", {"sched": "normal"}), ("idle", {}), ("batch", {"sched": "batch"})):
            spec = attach_view(parse_config(text), detections="dets", port=0, sched=sched)
            st = {s.name: s for s in spec.stages}
            assert st["view_align"].params == want and st["view"].params["sched"] == sched

    def test_the_encoder_process_runs_at_idle_priority_the_view_does_not(self):
        """In process: drawing and encoding run in the view's encoder process, under SCHED_IDLE; the thread
        running the view's loop and the one that called open() (here: pytest's) are left as they were; close()
        ends the encoder."""
        import os

        frames = [np.zeros((32, 32, 3), np.uint8)]
        before = os.sched_getscheduler(0)
        st, t, ring, fw = TestViewStage().run_stage("127.0.0.1", frames)
        enc = st.encoder
        try:
            assert enc.pid != os.getpid() and os.sched_getscheduler(enc.pid) == os.SCHED_IDLE
            assert st.sched_applied == "idle" and st.extra_stats()["sched"] == "idle"
            assert os.sched_getscheduler(t.native_id) == os.sched_getscheduler(0) == before == os.SCHED_OTHER
            assert st.cpu_ns > 0  # the encoder's CPU time, reported back
        finally:
            TestViewStage().stop(st, t, ring, fw)
        assert enc.proc.wait(60) != 0  # killed by close() (a hang guard only)

    def test_in_a_pipeline_the_view_encodes_at_idle_priority_and_nothing_else_is_lowered(self):
        """A pipeline with the view attached: the view's encoder process runs under SCHED_IDLE; every thread of
        the view stage's process and the pipeline's own stages are as they were."""
        import os

        from edgepipe.pipeline.config import parse_config
        from edgepipe.pipeline.supervisor import Pipeline
        from edgepipe.view.attach import attach_view

        spec = attach_view(parse_config('''
[stages.cam]
kind = "capture"
outputs = { output = "frames" }
params = { source = "pattern:64x48", fps = 20 }
[stages.sink]
kind = "print"
inputs = { in = "frames" }
params = { every = 1000 }
'''), port=0)
        p = Pipeline.from_spec(spec, stats_path=False)
        p.start()
        try:
            deadline = time.monotonic() + 60  # a hang guard only
            while time.monotonic() < deadline and p.stage_stats().get("view", {}).get("sched") != "idle":
                time.sleep(0.05)
            st = p.stage_stats()
            assert st["view"]["sched"] == "idle"
            pid, enc = st["view"]["pid"], st["view"]["encoder_pid"]
            assert os.sched_getscheduler(enc) == os.SCHED_IDLE
            with open(f"/proc/{enc}/stat") as f:
                assert int(f.read().rsplit(")", 1)[1].split()[1]) == pid  # the view stage's child
            policies = []
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    policies.append(os.sched_getscheduler(int(tid)))
                except OSError:  # a short-lived thread that ended meanwhile
                    pass
            assert policies and set(policies) == {os.SCHED_OTHER}
            for name in ("cam", "sink"):
                assert os.sched_getscheduler(st[name]["pid"]) == os.SCHED_OTHER
        finally:
            p.stop()
            assert p.wait(60) is not None


class TestEncoder:
    def test_the_encoder_dies_with_a_killed_view(self, tmp_path):
        """kill -9 of the process that made an Encoder leaves no encoder behind (PR_SET_PDEATHSIG)."""
        import os
        import signal
        import subprocess
        import sys
        from pathlib import Path

        src = str(Path(__file__).resolve().parents[2] / "src")
        code = ("import sys, time\n"
                "from edgepipe.view.encoder import Encoder\n"
                "e = Encoder(80, 'idle', lambda *a: None)\n"
                "print(e.pid, flush=True)\n"
                "time.sleep(120)\n")
        env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        try:
            enc = int(p.stdout.readline())
            os.kill(enc, 0)  # alive
            p.send_signal(signal.SIGKILL)
            p.wait(30)

            def gone() -> bool:  # dead: reaped, or a zombie waiting for init to reap it
                try:
                    with open(f"/proc/{enc}/stat") as f:
                        return f.read().rsplit(")", 1)[1].split()[0] == "Z"
                except FileNotFoundError:
                    return True

            deadline = time.monotonic() + 60  # a hang guard only
            while not gone() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gone()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
