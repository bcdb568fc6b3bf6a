"""The ``view`` stage kind: a live browser view of a running pipeline (edgepipe.view.server).

In a pipeline file (``edgepipe view FILE`` and ``edgepipe demo --view`` add it, with the taps and the
align stage it reads, see edgepipe.view.attach)::

    [stages.view]
    kind = "view"
    inputs = { frames = "frames.tap", results = "aligned" }
    params = { port = 8080 }

It reads the frames from a tap (a drop-only copy: a slow or stopped view costs the pipeline nothing but the
copy, and frames it has no time for are skipped, counted) and, optionally, per-frame results: the
``InferenceResult`` records of a detector (boxes drawn) and/or the ``attitude`` the align stage set on them
or on ``FrameMeta`` records (horizon drawn). A frame and its result are joined by capture stamp, which the
tap keeps (its frame numbers are its own); a frame whose result has not come within ``result_wait_ms`` is
shown without one. Drawing and JPEG encoding happen at most ``max_fps`` times a second, not in the
pipeline's processes but in an encoder process of the view's own (edgepipe.view.encoder), at the lowest
CPU priority by default (``sched = "idle"``, edgepipe.view.priority: the pipeline matters more than the
picture); a frame the encoder has not started when a newer one is due is skipped, counted. The pipeline's
numbers (per-part latency against budget, link rates and drops, missed IMU deadlines) come from the stats
file its supervisor publishes for ``edgepipe top``.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import secrets
import time
from collections import OrderedDict
from typing import Any

from edgepipe.control import messages as pb
from edgepipe.errors import ConfigError, EdgepipeError
from edgepipe.frames import FrameReader
from edgepipe.pipeline.api import EndOfStream, PipelineStage
from edgepipe.pipeline.supervisor import runtime_dir
from edgepipe.view.encoder import Encoder
from edgepipe.view.priority import check_policy
from edgepipe.view.server import LatestJpeg, ViewServer, make_app

__all__ = ["ViewStage"]

_KEEP_FRAMES = 16  # frames waiting for their result, at most
_IDLE_WAIT_S = 0.05  # parked at most this long (stop() is seen within it)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (the view needs no token there).

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, True, False, True)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _StatsFile:
    """The supervisor's live stats (the JSON ``edgepipe top`` reads), re-read when it changed."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.mtime = 0.0
        self.data: dict[str, Any] = {}

    def find(self) -> str | None:
        if self.path is None:  # the supervisor that started this stage process
            found = sorted(glob.glob(os.path.join(runtime_dir(), f"pipeline-{os.getppid()}-*.json")))
            self.path = found[-1] if found else None
        return self.path

    def read(self) -> dict[str, Any]:
        path = self.find()
        if path is None:
            return {}
        try:
            m = os.stat(path).st_mtime
            if m != self.mtime:
                with open(path) as f:
                    self.data = json.load(f)
                self.mtime = m
        except (OSError, ValueError):
            pass  # between two writes (it is replaced atomically) or gone with its pipeline: keep the last
        return self.data


def _result_of(payload: bytes):
    """An InferenceResult (boxes, maybe an attitude) or a FrameMeta with an attitude (the align stage's output
    for frame records), or None. Both parse from either's bytes (protobuf keeps unknown fields aside), so the
    one that carries what the other lacks wins."""
    try:
        r = pb.InferenceResult.FromString(payload)
    except Exception:  # noqa: BLE001 - not a protobuf message at all
        return None
    if r.WhichOneof("output") is not None or r.HasField("attitude"):
        return r
    try:
        f = pb.FrameMeta.FromString(payload)
    except Exception:  # noqa: BLE001
        return r
    return f if f.HasField("attitude") else r


class ViewStage(PipelineStage):
    """A live browser view: frames with detections and an attitude overlay, latency against budget, counters.

    Args:
        host: address to listen on (loopback by default; any other needs a token).
        port: TCP port (0: any free one; the URL printed says which).
        token: required on every request (``?token=`` or ``Authorization: Bearer``); generated and printed
            once when ``host`` is not loopback and none is given.
        max_fps: pictures drawn and encoded a second, at most (frames in between are skipped, counted).
        max_clients: MJPEG stream clients at once (one more gets 503).
        quality: JPEG quality (1-100).
        result_wait_ms: how long a frame waits for its result before it is shown without one.
        stats: the pipeline's stats file (default: the one of the supervisor that started this stage).
        sched: the CPU priority of the encoder process (drawing and JPEG encoding, the view's CPU,
            edgepipe.view.encoder): ``"idle"`` (``SCHED_IDLE``, the default: only CPU time the pipeline
            does not want), ``"batch"``, ``"nice"`` or ``"normal"`` (edgepipe.view.priority). This
            process (taking frames and results, serving HTTP: cheap) keeps its own, so the view stops and
            serves promptly however busy the machine is.

    Inputs:
        frames: frame records (a capture stage's tap, ``<link>.tap``).
        results: optional: InferenceResult or FrameMeta records (of the align stage: with ``attitude``).
    """

    kind = "view"

    def __init__(self, name: str | None = None, *, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, max_fps: float = 15.0, max_clients: int = 4, quality: int = 80,
                 result_wait_ms: float = 500.0, stats: str | None = None, sched: str = "idle",
                 **kw: Any) -> None:
        super().__init__(name, **kw)
        self.sched = check_policy(self.name, sched)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"view stage {name!r}: port must be an int in 0..65535, got {port!r}")
        if not isinstance(max_fps, (int, float)) or isinstance(max_fps, bool) or not max_fps > 0:
            raise ConfigError(f"view stage {name!r}: max_fps must be a number > 0, got {max_fps!r}")
        if not isinstance(max_clients, int) or isinstance(max_clients, bool) or max_clients < 1:
            raise ConfigError(f"view stage {name!r}: max_clients must be an int >= 1, got {max_clients!r}")
        if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
            raise ConfigError(f"view stage {name!r}: quality must be an int in 1..100, got {quality!r}")
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ConfigError(f"view stage {name!r}: token must be a string of >= 8 characters, got {token!r}")
        self.host, self.port, self.token = host, port, token
        self.max_fps, self.max_clients, self.quality = float(max_fps), max_clients, quality
        self.result_wait_ns = int(result_wait_ms * 1e6)
        self.stats_file = _StatsFile(stats)
        self.latest = LatestJpeg()
        self.recent: OrderedDict[int, tuple[int, Any, int]] = OrderedDict()  # capture_ns -> (seq, pixels, since)
        self.attitude: pb.AlignedAttitude | None = None
        self.next_due = 0
        self.deferred: tuple | None = None  # the newest frame the rate cap held back: shown when it allows
        self.wakes = 0
        self.encoder: Encoder | None = None  # drawing and JPEG encoding, in a process of its own
        self.server: ViewServer | None = None
        self.url = ""

    # -- the server -----------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """What /metrics.json serves: the pipeline's live stats plus the view's own counters."""
        live = self.stats_file.read()
        shown = self.counters.get("frames shown", 0)
        return {"name": live.get("name"), "uptime_s": live.get("uptime_s"), "stats_wall_ns": live.get("wall_ns"),
                "parts": live.get("parts", []), "links": live.get("links", {}),
                "stages": {k: {kk: v.get(kk) for kk in ("state", "restarts", "missed", "kind", "rate_hz")
                               if kk in v} for k, v in live.get("stages", {}).items()},
                "view": {"frames_in": self.counters.get("frames in", 0), "frames_shown": shown,
                         "frames_skipped": self.counters.get("frames skipped", 0),
                         "results_in": self.counters.get("results in", 0),
                         "cpu_ms_per_frame": (self.cpu_ns / shown / 1e6) if shown else 0.0}}

    def open(self) -> None:
        if "frames" not in self.inputs:
            raise ConfigError(f"view stage {self.name!r} needs inputs.frames (it has {sorted(self.inputs)})")
        if self.token is None and not is_loopback(self.host):
            self.token = secrets.token_urlsafe(18)
        app = make_app(self.latest, self.metrics, token=self.token, max_clients=self.max_clients,
                       max_fps=self.max_fps)
        self.server = ViewServer(app, self.host, self.port)
        url = self.server.start()
        self.url = url + (f"?token={self.token}" if self.token else "")
        print(f"edgepipe view: serving on {self.url}", flush=True)
        self.frames = FrameReader(self.inputs["frames"].end)
        self.frames_open = True
        try:
            self.encoder = Encoder(self.quality, self.sched, self._picture)
        except OSError:  # no child process: close() is not called after a failed open(), so stop here
            self.server.stop()
            raise

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()
        if self.server is not None:
            self.server.stop()

    # -- frames and results ---------------------------------------------------------------------------------
    def _show(self, seq: int, cap: int, img, result=None) -> None:
        """Hand one frame to the encoder if the rate cap allows; else keep it as the one to show when
        it does (replacing, and skipping, the one kept before)."""
        now = time.monotonic_ns()
        if now < self.next_due:
            if self.deferred is not None:
                self.count("frames skipped")
            self.deferred = (seq, cap, img, result)
            return
        self.deferred = None
        self.next_due = now + int(1e9 / self.max_fps)
        att = self.attitude
        if result is not None and result.HasField("attitude"):
            att = result.attitude
        boxes = result.detections.boxes if isinstance(result, pb.InferenceResult) and result.HasField(
            "detections") else None
        if self.encoder.submit(seq, cap, img, boxes, att):  # the encoder is behind: the newer one replaced it
            self.count("frames skipped")

    def _picture(self, jpeg: bytes, cap: int, seq: int) -> None:
        """A picture from the encoder (its thread)."""
        self.count("frames shown")  # before the picture is out: whoever sees it sees it counted
        self.latest.put(jpeg, cap, seq)

    @property
    def cpu_ns(self) -> int:
        """The encoder process's CPU time drawing and encoding, summed."""
        return self.encoder.cpu_ns if self.encoder is not None else 0

    @property
    def sched_applied(self) -> str:
        """The priority the encoder process got ("" until it started)."""
        return self.encoder.sched_applied if self.encoder is not None else ""

    def _take_frames(self) -> int:
        if not self.frames_open:
            return 0
        n = 0
        try:
            while True:
                got = self.frames.try_read_frame()
                if got is None:
                    return n
                with got as f:
                    n += 1
                    self.count("frames in")
                    if "results" in self.inputs:
                        self.recent[f.capture_ns] = (f.seq, f.array.copy(), time.monotonic_ns())
                        while len(self.recent) > _KEEP_FRAMES:
                            self.recent.popitem(last=False)
                            self.count("frames skipped")
                    else:
                        self._show(f.seq, f.capture_ns, f.array.copy())
        except EdgepipeError:  # the tap's producer ended: keep serving the last picture
            self.frames_open = False
        return n

    def _take_results(self) -> int:
        inlet = self.inputs.get("results")
        if inlet is None or inlet.ended:
            return 0
        n = 0
        while True:
            try:
                rec = inlet.receive(timeout_s=0)
            except EndOfStream:
                return n
            if rec is None:
                return n
            n += 1
            self.count("results in")
            m = rec.message if isinstance(rec.message, pb.InferenceResult) else _result_of(rec.payload)
            inlet.release()
            if m is None or not m.stamps.capture_ns:
                self.count("results unreadable")
                continue
            if m.HasField("attitude"):
                self.attitude = m.attitude
            cap = m.stamps.capture_ns
            if cap in self.recent:
                while self.recent:  # older frames' results are not coming any more (they are in order)
                    k, (seq, img, _) = self.recent.popitem(last=False)
                    if k == cap:
                        self._show(seq, cap, img, m)
                        break
                    self.count("frames skipped")

    def _expire(self) -> None:
        now = time.monotonic_ns()
        while self.recent:
            k, (seq, img, since) = next(iter(self.recent.items()))
            if now - since < self.result_wait_ns:
                return
            self.recent.popitem(last=False)
            self._show(seq, k, img)

    def _wait(self) -> None:
        """Park until what the view waits for arrives, or its next deadline: a result while frames wait for
        theirs, else a frame; at most _IDLE_WAIT_S, and no later than the rate cap's next slot (a held-back
        frame) or the oldest waiting frame's result_wait. Both inputs run at the frame rate, so their fillers'
        futex wakes cost nothing to speak of (unlike a 1 kHz IMU tap)."""
        now = time.monotonic_ns()
        until = now + int(_IDLE_WAIT_S * 1e9)
        if self.deferred is not None:
            until = min(until, self.next_due)
        if self.recent:
            until = min(until, next(iter(self.recent.values()))[2] + self.result_wait_ns)
        left = max(0.0, (until - now) / 1e9)
        results = self.inputs.get("results")
        end = results.end if self.recent and results is not None and not results.ended else (
            self.inputs["frames"].end if self.frames_open else None)
        self.wakes += 1
        if end is None:
            time.sleep(left)
            return
        try:
            end.wait(left)
        except EdgepipeError:  # its producer is gone (ended, or restarting): the take_* calls find out which
            time.sleep(left)

    def loop(self) -> None:
        while not self.stopping:
            n = self._take_frames() + self._take_results()
            self._expire()
            if self.deferred is not None and time.monotonic_ns() >= self.next_due:
                self._show(*self.deferred)
            if n == 0:
                self._wait()

    def extra_stats(self) -> dict[str, Any]:
        v = self.metrics()["view"]
        return {**super().extra_stats(), "url": self.url, "cpu_ms_per_frame": round(v["cpu_ms_per_frame"], 3),
                "sched": self.sched_applied, "encoder_pid": self.encoder.pid if self.encoder else 0,
                "wakes": self.wakes}
