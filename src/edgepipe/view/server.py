"""The live view's HTTP server (aiohttp), and the thread-safe holder of the newest JPEG it serves.

Routes (nothing else; no route takes a path, nothing is read from the filesystem per request):

- ``/``: the page (the stream, a per-part latency chart against budget drawn on a canvas by the vendored
  ``view.js``, counters); ``/?action=stream`` and ``/?action=snapshot`` are the mjpg-streamer aliases.
- ``/stream.mjpg``: ``multipart/x-mixed-replace`` MJPEG, at most ``max_fps`` parts a second (a part only
  when there is a new picture); at most ``max_clients`` at once, one more gets 503.
- ``/snapshot.jpg``: the newest picture (503 before the first); headers ``X-Capture-Ns`` and ``X-Frame-Seq``.
- ``/metrics.json``: the ``metrics`` callable's dict; ``/metrics``: the same in Prometheus text format
  (prometheus_client's exposition).
- ``/view.js``: the page's script.

With a ``token`` every request must carry it (``?token=`` or ``Authorization: Bearer``), else 401.

The server runs on its own asyncio loop in a thread (:class:`ViewServer`); the pictures come from another
thread through :class:`LatestJpeg`. (edgepipe has no asyncio integration of its rings here: the view reads
its rings in the stage's own thread and hands JPEGs over under a lock.)

>>> import urllib.request
>>> latest = LatestJpeg()
>>> latest.put(b"not really a jpeg", capture_ns=42, frame_seq=1)
>>> srv = ViewServer(make_app(latest, lambda: {}), "127.0.0.1", 0)
>>> url = srv.start()
>>> with urllib.request.urlopen(url + "snapshot.jpg", timeout=30) as r:
...     r.status, r.headers["X-Capture-Ns"], r.read()
(200, '42', b'not really a jpeg')
>>> srv.stop()
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import Callable
from typing import Any

from edgepipe._data import data_path
from edgepipe._extras import require

__all__ = ["ViewServer"]  # LatestJpeg, make_app, prometheus_text: shared inside edgepipe.view

BOUNDARY = "edgepipeframe"
STATE = None  # the app key of the counters dict (an aiohttp AppKey, made on first use)


class LatestJpeg:
    """The newest encoded picture, its capture stamp and frame number (one writer thread, any readers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seq = 0
        self.jpeg: bytes | None = None
        self.capture_ns = 0
        self.frame_seq = 0

    def put(self, jpeg: bytes, capture_ns: int, frame_seq: int) -> None:
        with self._lock:
            self.jpeg, self.capture_ns, self.frame_seq = jpeg, capture_ns, frame_seq
            self.seq += 1

    def get(self) -> tuple[int, bytes | None, int, int]:
        """(update count, jpeg, capture_ns, frame_seq)."""
        with self._lock:
            return self.seq, self.jpeg, self.capture_ns, self.frame_seq


def _metric_name(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s)


def prometheus_text(m: dict[str, Any]) -> bytes:
    """The metrics dict of the view (see :func:`make_app`) in Prometheus text exposition format."""
    pc = require("prometheus_client", "the live view's /metrics")
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self):
            q = GaugeMetricFamily("edgepipe_part_latency_ms", "per-part latency percentile (ms)",
                                  labels=["part", "quantile"])
            b = GaugeMetricFamily("edgepipe_part_budget_ms", "per-part latency budget (ms)", labels=["part"])
            v = CounterMetricFamily("edgepipe_part_budget_violations", "records over the part's budget",
                                    labels=["part"])
            n = CounterMetricFamily("edgepipe_part_records", "records measured for the part", labels=["part"])
            for p in m.get("parts", []):
                part = p["part"]
                q.add_metric([part, "0.5"], p["p50_ms"])
                q.add_metric([part, "0.99"], p["p99_ms"])
                if p.get("budget_ms") is not None:
                    b.add_metric([part], p["budget_ms"])
                v.add_metric([part], p.get("violations", 0))
                n.add_metric([part], p.get("count", 0))
            yield from (q, b, v, n)
            rate = GaugeMetricFamily("edgepipe_link_rate_hz", "records per second through the link", labels=["link"])
            drop = CounterMetricFamily("edgepipe_link_dropped", "records the link dropped", labels=["link"])
            for name, ln in m.get("links", {}).items():
                rate.add_metric([name], float(ln.get("rate_hz", 0.0)))
                drop.add_metric([name], float(ln.get("dropped", 0)))
            yield from (rate, drop)
            missed = CounterMetricFamily("edgepipe_imu_missed_deadlines", "IMU loop ticks that missed their deadline",
                                         labels=["stage"])
            restarts = CounterMetricFamily("edgepipe_stage_restarts", "stage process restarts", labels=["stage"])
            for name, st in m.get("stages", {}).items():
                restarts.add_metric([name], float(st.get("restarts", 0)))
                if "missed" in st:
                    missed.add_metric([name], float(st["missed"]))
            yield from (missed, restarts)
            for k, val in m.get("view", {}).items():
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    yield GaugeMetricFamily(f"edgepipe_view_{_metric_name(k)}", f"live view: {k}", value=val)

    reg = pc.CollectorRegistry(auto_describe=False)
    reg.register(_Collector())
    return pc.generate_latest(reg)


def _page() -> tuple[bytes, bytes]:
    return (data_path("view", "index.html").read_bytes(), data_path("view", "view.js").read_bytes())


def make_app(latest: LatestJpeg, metrics: Callable[[], dict[str, Any]], *, token: str | None = None,
             max_clients: int = 4, max_fps: float = 15.0):
    """The aiohttp application of the view (routes in the module docstring)."""
    web = require("aiohttp.web", "the live view")
    page, script = _page()
    state = {"clients": 0, "refused": 0, "parts_sent": 0}
    closing = asyncio.Event()
    period = 1.0 / max_fps

    @web.middleware
    async def check_token(request, handler):
        if token is not None:
            given = request.query.get("token", "")
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth[len("Bearer "):]
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.Response(status=401, text="edgepipe view: a token is required (?token=...)\n")
        return await handler(request)

    async def snapshot(request):
        _, jpeg, cap, fseq = latest.get()
        if jpeg is None:
            return web.Response(status=503, text="edgepipe view: no frame yet\n", headers={"Retry-After": "1"})
        return web.Response(body=jpeg, content_type="image/jpeg",
                            headers={"Cache-Control": "no-store", "X-Capture-Ns": str(cap), "X-Frame-Seq": str(fseq)})

    async def stream(request):
        if state["clients"] >= max_clients:
            state["refused"] += 1
            return web.Response(status=503, text=f"edgepipe view: {max_clients} stream clients already\n",
                                headers={"Retry-After": "5"})
        state["clients"] += 1
        try:
            resp = web.StreamResponse(headers={
                "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                "Cache-Control": "no-store, private", "Pragma": "no-cache", "Connection": "close"})
            await resp.prepare(request)
            last = -1
            while not closing.is_set():
                n, jpeg, cap, fseq = latest.get()
                if n != last and jpeg is not None:
                    last = n
                    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                            f"X-Capture-Ns: {cap}\r\nX-Frame-Seq: {fseq}\r\n\r\n").encode()
                    await resp.write(head + jpeg + b"\r\n")
                    state["parts_sent"] += 1
                try:
                    await asyncio.wait_for(closing.wait(), period)
                except asyncio.TimeoutError:
                    pass
            return resp
        except (ConnectionResetError, ConnectionError):
            return web.Response(status=499)
        finally:
            state["clients"] -= 1

    async def index(request):
        action = request.query.get("action")
        if action == "stream":
            return await stream(request)
        if action == "snapshot":
            return await snapshot(request)
        if action is not None:
            return web.Response(status=400, text=f"edgepipe view: unknown action {action!r} (stream, snapshot)\n")
        return web.Response(body=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def js(request):
        return web.Response(body=script, content_type="application/javascript")

    def current() -> dict[str, Any]:
        m = dict(metrics())
        m["view"] = {**m.get("view", {}), "stream_clients": state["clients"], "stream_refused": state["refused"],
                     "stream_parts_sent": state["parts_sent"]}
        return m

    async def metrics_json(request):
        return web.Response(text=json.dumps(current(), default=str), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def metrics_prom(request):
        return web.Response(body=prometheus_text(current()), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def on_shutdown(app):
        closing.set()

    global STATE
    if STATE is None:
        STATE = web.AppKey("edgepipe_view_state", dict)
    app = web.Application(middlewares=[check_token])
    app.router.add_get("/", index)
    app.router.add_get("/stream.mjpg", stream)
    app.router.add_get("/snapshot.jpg", snapshot)
    app.router.add_get("/metrics.json", metrics_json)
    app.router.add_get("/metrics", metrics_prom)
    app.router.add_get("/view.js", js)
    app.on_shutdown.append(on_shutdown)
    app[STATE] = state
    return app


class ViewServer:
    """Serve an app on ``host:port`` from a thread of its own (its own asyncio loop).

    ``start()`` returns once the socket listens (the URL, with the real port when ``port`` is 0);
    ``stop()`` ends the streams and closes the socket.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.app, self.host, self.port = app, host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._runner = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout_s: float = 30.0) -> str:
        self._thread = threading.Thread(target=self._run, name="edgepipe-view-http", daemon=True)
        self._thread.start()
        self._ready.wait(timeout_s)
        if self._error is not None:
            raise self._error
        if not self._ready.is_set():
            raise TimeoutError(f"the view server did not listen on {self.host}:{self.port} within {timeout_s} s")
        return self.url

    def _run(self) -> None:
        web = require("aiohttp.web", "the live view")
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def up():
            self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            self.port = self._runner.addresses[0][1] if self.port == 0 else self.port

        try:
            loop.run_until_complete(up())
        except BaseException as e:  # noqa: BLE001 - handed to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
