"""CaptureStage: frames from a camera, a video file, an RTSP/HTTP stream, a folder of images or a synthetic
pattern, decoded straight into shared memory (a :class:`~edgepipe.frames.FrameWriter` ring or a
:class:`~edgepipe.latest.LatestWriter` slot).

The hot loop per frame: wait for the frame's deadline (file sources at their native fps, absolute deadlines
``t0 + n / fps`` so there is no drift), ``grab()``, stamp ``capture_ns = clock.now_ns()``, claim a slot,
``retrieve(image=slot)`` so OpenCV writes the decoded frame into the slot, publish. (OpenCV's FFMPEG backend
converts to BGR into a buffer of its own and copies that into the array it is given, so the frame is
written once into shared memory and never copied again.) If OpenCV ever hands back a different array than
the slot it was given, the frame is copied once more and counted in ``copies``.

Sources are resolved by :func:`open_source`; any object with ``open()``, ``grab()``, ``retrieve(arr)``,
``close()`` and ``shape`` works too. OpenCV is imported lazily, so ``import edgepipe`` stays fast.

One piece: the sources and the stage share the grab/retrieve-into-the-slot protocol, and the stage's
output rules (wait or drop when full, the stall bound, a consumer that comes and goes) are about that loop.

>>> from edgepipe.latest import LatestSlot
>>> with LatestSlot.create(None, max_frame_bytes=64 * 48 * 3) as slot:
...     stage = CaptureStage("pattern", slot.writer(), size=(64, 48), max_frames=5, realtime=False)
...     stage.run(), stage.counters["published"]
(0, 5)
"""

from __future__ import annotations

import glob
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe._data import data_path
from edgepipe._extras import require
from edgepipe.clock import now_ns
from edgepipe.errors import (
    CameraNotFoundError,
    OutputStalledError,
    PeerClosedError,
    RingTimeoutError,
    SourceFailedError,
    SourceOpenError,
)
from edgepipe.frames import FrameWriter
from edgepipe.latest import LatestWriter
from edgepipe.stages.base import Stage, consumer_closed

__all__ = [
    "CaptureStage",
    "FileSource",
    "FolderSource",
    "PatternSource",
    "StreamSource",
    "V4l2Source",
    "open_source",
    "sample_text_images",
    "sample_video",
]

DATA = data_path("video")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
_URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


def sample_video() -> Path:
    """The bundled clip: 100 frames of OpenCV's ``vtest.avi`` (768x576 BGR, 10 fps). See data/video/README.md."""
    return DATA / "vtest_100.mp4"


def sample_text_images() -> list[Path]:
    """Two bundled photographs of printed text (straight and rotated), for OCR/text-detection demos."""
    return sorted((DATA / "text").glob("*.png"))


def _cv2():
    return require("cv2", "CaptureStage")  # lazy on purpose: cv2 takes ~100 ms to import


# ---------------------------------------------------------------------------------------------------
# sources


class _CvSource:
    """A cv2.VideoCapture behind grab()/retrieve(arr). Subclasses open it."""

    live = True  # a live source drops frames when the output is full; a recorded one waits
    describe = "source"
    opened = False

    def __init__(self) -> None:
        self.cap = None
        self.shape: tuple[int, int, int] | None = None
        self.fps: float | None = None
        self.frame_count: int | None = None
        self.frames_read = 0

    def _props(self) -> None:
        cv2 = _cv2()
        w = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w <= 0 or h <= 0:
            raise SourceOpenError(f"{self.describe}: opened but reports no frame size ({w}x{h})")
        self.shape = (h, w, 3)
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and math.isfinite(fps) and 0 < fps < 1000 else None
        n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = n if n > 0 else None

    def grab(self) -> bool:
        ok = self.cap.grab()
        if ok:
            self.frames_read += 1
        return ok

    def retrieve(self, arr: np.ndarray):
        """Convert the grabbed frame into ``arr``; returns (ok, img). ``img is arr`` when done in place."""
        return self.cap.retrieve(image=arr)

    def rewind(self) -> bool:
        cv2 = _cv2()
        self.frames_read = 0
        return bool(self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def end_reason(self) -> str | None:
        """Why grab() returned False: None for a clean end of stream, else a failure message."""
        return f"{self.describe}: the stream stopped delivering frames after {self.frames_read}"

    def close(self) -> None:
        self.opened = False
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class FileSource(_CvSource):
    """A video file, decoded with OpenCV's FFMPEG backend. Plays at its native fps unless told otherwise."""

    live = False

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.describe = f"video file {self.path!r}"

    def open(self) -> None:
        cv2 = _cv2()
        if not os.path.exists(self.path):
            raise CameraNotFoundError(f"no such video file: {self.path!r}")
        if os.path.isdir(self.path):
            raise SourceOpenError(f"{self.path!r} is a directory; use FolderSource for a folder of images")
        if not os.access(self.path, os.R_OK):
            raise SourceOpenError(f"video file {self.path!r} is not readable (permissions)")
        self.cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not self.cap.isOpened():
            self.close()
            raise SourceOpenError(f"cannot open {self.path!r} as a video (not a video OpenCV's FFMPEG backend reads)")
        self._props()
        self.opened = True

    def end_reason(self) -> str | None:
        # A file that stops well before the frame count its header promises was cut short or is damaged.
        # Containers without an index only estimate the count (duration x fps), hence the 5 % margin.
        if self.frame_count and self.frames_read < self.frame_count * 0.95 - 1:
            return (f"{self.describe} ended after {self.frames_read} of the {self.frame_count} frames its "
                    f"header announces (truncated or damaged)")
        return None


class StreamSource(_CvSource):
    """An RTSP/HTTP(S) stream through OpenCV's FFMPEG backend, with open and read timeouts."""

    def __init__(self, url: str, open_timeout_s: float = 5.0, read_timeout_s: float = 5.0) -> None:
        super().__init__()
        self.url = url
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.describe = f"stream {url!r}"

    def open(self) -> None:
        cv2 = _cv2()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
        self.cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if not self.cap.isOpened():
            self.close()
            raise SourceOpenError(f"cannot open stream {self.url!r} (refused, unreachable, timed out after "
                                  f"{self.open_timeout_s} s, or not a video stream)")
        self._props()
        self.opened = True

    def end_reason(self) -> str | None:
        # A live stream has no end: stopping is a failure. A video file served over HTTP announces its
        # frame count and ends cleanly once it has delivered (about) that many.
        if self.frame_count and self.frames_read >= self.frame_count * 0.95 - 1:
            return None
        return f"{self.describe}: the stream stopped delivering frames after {self.frames_read}"


class V4l2Source(_CvSource):
    """A V4L2 camera (``/dev/videoN`` or index N) with a requested size, fps and FOURCC (e.g. ``"MJPG"``)."""

    def __init__(self, device: int | str, size: tuple[int, int] | None = None, fps: float | None = None,
                 fourcc: str | None = None) -> None:
        super().__init__()
        if isinstance(device, int):
            if device < 0:
                raise ValueError(f"camera index must be >= 0, got {device}")
            self.index, self.path = device, f"/dev/video{device}"
        else:
            self.path = os.fspath(device)
            tail = self.path.rsplit("video", 1)[-1]
            self.index = int(tail) if tail.isdigit() else None
        if fourcc is not None and (not isinstance(fourcc, str) or len(fourcc) != 4):
            raise ValueError(f"fourcc must be 4 characters like 'MJPG' or 'YUYV', got {fourcc!r}")
        self.size, self.req_fps, self.fourcc = size, fps, fourcc
        self.describe = f"camera {self.path!r}"

    def open(self) -> None:
        cv2 = _cv2()
        if not os.path.exists(self.path):
            present = sorted(glob.glob("/dev/video*"))
            raise CameraNotFoundError(
                f"no camera at {self.path!r} (V4L2 devices present: {', '.join(present) or 'none'})"
            )
        self.cap = cv2.VideoCapture(self.index if self.index is not None else self.path, cv2.CAP_V4L2)
        if not self.cap.isOpened():
            self.close()
            raise SourceOpenError(f"camera {self.path!r} exists but cannot be opened (busy, or not a capture device)")
        if self.fourcc:
            self.cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        if self.size:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        if self.req_fps:
            self.cap.set(cv2.CAP_PROP_FPS, self.req_fps)
        self._props()
        self.opened = True


class FolderSource:
    """A folder of images (png, jpg, ...), in name order, as frames of the first image's size (others are
    resized into the slot). Decoding an image cannot target a buffer, so each frame costs one copy."""

    live = False
    opened = False
    copies_per_frame = 1  # imread cannot decode into a given buffer

    def __init__(self, path: str | os.PathLike, fps: float | None = None) -> None:
        self.path = os.fspath(path)
        self.describe = f"image folder {self.path!r}"
        self.fps = fps
        self.files: list[str] = []
        self.shape: tuple[int, int, int] | None = None
        self.frame_count: int | None = None
        self.frames_read = 0
        self._next = 0
        self._img = None
        self.decode_errors = 0

    def open(self) -> None:
        cv2 = _cv2()
        if not os.path.isdir(self.path):
            raise CameraNotFoundError(f"no such image folder: {self.path!r}")
        self.files = sorted(os.path.join(self.path, f) for f in os.listdir(self.path)
                            if f.lower().endswith(IMAGE_EXTS))
        first = None
        for f in self.files:
            first = cv2.imread(f, cv2.IMREAD_COLOR)
            if first is not None:
                break
        if first is None:
            raise SourceOpenError(f"image folder {self.path!r} holds no readable image "
                                  f"({len(self.files)} files named like images)")
        self.shape = first.shape
        self.frame_count = len(self.files)
        self.opened = True

    def grab(self) -> bool:
        cv2 = _cv2()
        while self._next < len(self.files):
            f = self.files[self._next]
            self._next += 1
            self._img = cv2.imread(f, cv2.IMREAD_COLOR)
            if self._img is not None:
                self.frames_read += 1
                return True
            self.decode_errors += 1
        return False

    def retrieve(self, arr: np.ndarray):
        cv2 = _cv2()
        img, self._img = self._img, None
        if img is None:
            return False, arr
        if img.shape != arr.shape:
            cv2.resize(img, (arr.shape[1], arr.shape[0]), dst=arr, interpolation=cv2.INTER_AREA)
        else:
            np.copyto(arr, img)
        return True, arr  # written into arr, by one copy (copies_per_frame)

    def rewind(self) -> bool:
        self._next = 0
        self.frames_read = 0
        return True

    def end_reason(self) -> str | None:
        return None

    def close(self) -> None:
        self.files = []


class PatternSource:
    """A synthetic moving test pattern (colour ramps and bars that shift each frame, a frame counter drawn
    with OpenCV), generated straight into the slot. ``fps`` defaults to 30; endless unless ``frames``."""

    live = False
    opened = False

    def __init__(self, size: tuple[int, int] = (640, 480), fps: float | None = 30.0,
                 frames: int | None = None) -> None:
        w, h = size
        if w < 8 or h < 8:
            raise ValueError(f"pattern size must be at least 8x8, got {size}")
        self.shape = (h, w, 3)
        self.fps = fps
        self.frame_count = frames
        self.describe = f"pattern {w}x{h}"
        self.frames_read = 0
        self._x = self._y = None

    def open(self) -> None:
        h, w, _ = self.shape
        self._x = (np.arange(w, dtype=np.uint32) * 256 // w).astype(np.uint8)[None, :].repeat(h, 0)
        self._y = (np.arange(h, dtype=np.uint32) * 256 // h).astype(np.uint8)[:, None].repeat(w, 1)
        self.opened = True

    def grab(self) -> bool:
        if self.frame_count is not None and self.frames_read >= self.frame_count:
            return False
        self.frames_read += 1
        return True

    def retrieve(self, arr: np.ndarray):
        k = self.frames_read
        np.add(self._x, np.uint8(k * 4 & 255), out=arr[:, :, 0])
        np.add(self._y, np.uint8(k * 2 & 255), out=arr[:, :, 1])
        arr[:, :, 2] = np.uint8(k & 255)
        _cv2().putText(arr, str(k), (4, max(12, arr.shape[0] // 4)), 0, max(0.3, arr.shape[0] / 200),
                       (255, 255, 255), 1 + arr.shape[0] // 240)
        return True, arr

    def rewind(self) -> bool:
        self.frames_read = 0
        return True

    def end_reason(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def open_source(source: Any, *, size: tuple[int, int] | None = None, fps: float | None = None,
                fourcc: str | None = None, open_timeout_s: float = 5.0):
    """Turn a source description into a source object (not yet opened).

    ``int`` or ``"/dev/videoN"``: a V4L2 camera; ``"rtsp://..."``/``"http://..."``: a stream; a directory:
    a folder of images; ``"pattern"`` (or ``"pattern:WxH"``): the synthetic pattern; any other string or
    path: a video file. Objects with ``grab``/``retrieve`` pass through.
    """
    if hasattr(source, "grab") and hasattr(source, "retrieve"):
        return source
    if isinstance(source, bool):
        raise TypeError(f"source must be a camera index, path, URL or 'pattern', not {source!r}")
    if isinstance(source, int):
        return V4l2Source(source, size, fps, fourcc)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a camera index, path, URL or 'pattern', not {type(source).__name__}")
    s = os.fspath(source)
    if s == "pattern" or s.startswith("pattern:"):
        spec = s.partition(":")[2]
        if spec:
            try:
                w, h = (int(v) for v in spec.lower().split("x"))
            except ValueError:
                raise ValueError(f"pattern size must look like 'pattern:640x480', got {s!r}") from None
            size = (w, h)
        return PatternSource(size or (640, 480), fps or 30.0)
    if s.lower().startswith(_URL_SCHEMES):
        return StreamSource(s, open_timeout_s)
    if s.startswith("/dev/video"):
        return V4l2Source(s, size, fps, fourcc)
    if os.path.isdir(s):
        return FolderSource(s, fps)
    return FileSource(s)


# ---------------------------------------------------------------------------------------------------
# the stage


class _Skip(Exception):
    """Raised inside a claim block to abandon the frame (decode error, shape mismatch)."""


class CaptureStage(Stage):
    """Grab frames from ``source`` and publish them into ``output`` (a FrameWriter or a LatestWriter).

    Args:
        source: see :func:`open_source`.
        output: FrameWriter (lossless ring) or LatestWriter (newest only, never waits).
        fps: frame rate to play at; default the source's own (files, folders need it, pattern 30).
        loop: start a file, folder or pattern over at its end instead of ending.
        realtime: pace at ``fps`` with absolute deadlines; False plays as fast as possible.
        size, fourcc: requested camera size ``(w, h)`` and FOURCC (V4L2 only; pattern uses size).
        pixel_format: channel order of the published frames, "BGR" (OpenCV's) or "RGB".
        source_id: stamped into every frame header, to tell sources apart downstream.
        on_full: "drop" (skip the frame, count it) or "wait" when the ring is full; default "drop" for
            live sources (cameras, streams: they cannot wait) and "wait" for recorded ones.
        max_frames: stop after publishing this many frames.
        open_timeout_s: how long opening a stream may take before the stage fails.
        stall_timeout_s: with on_full="wait", how long a full lossless ring may go without its consumer
            taking a frame before the stage fails with :class:`~edgepipe.errors.OutputStalledError` naming
            the ring (no reader ever attached, or it stopped reading), instead of waiting forever. Default
            60 s, longer than a consumer that loads a model takes to start; ``None`` waits forever.
        on_consumer_closed: "fail" (default: a consumer that closed its end makes the stage fail with
            PeerClosedError; one that died is waited for, with on_full="wait", as a supervisor restarts it, or
            its frames are dropped and counted in ``dropped_consumer_restarting``) or "drop":
            while the ring's consumer is closed or gone, frames are dropped and counted in
            ``dropped_no_consumer``, and they flow again once a new consumer attaches the (named) ring, so a
            viewer can come and go.

    Counters: ``grabbed``, ``published``, ``dropped`` (total) with ``dropped_full``, ``dropped_shape`` and
    ``dropped_no_consumer`` by reason, ``decode_errors``, ``copies`` (frames not decoded in place), ``late`` (deadlines missed by
    more than a frame period), ``loops``, ``end_of_stream`` (1 once a finite source ended). A source that
    fails mid-stream makes ``run()`` return 1 with the reason in ``stats()["error"]``; frames published
    before stay readable.
    """

    kind = "capture"

    def __init__(self, source: Any, output: FrameWriter | LatestWriter, *, fps: float | None = None,
                 loop: bool = False, realtime: bool = True, size: tuple[int, int] | None = None,
                 fourcc: str | None = None, pixel_format: str = "BGR", source_id: int = 0,
                 on_full: str | None = None, max_frames: int | None = None, open_timeout_s: float = 5.0,
                 stall_timeout_s: float | None = 60.0, on_consumer_closed: str = "fail",
                 name: str | None = None) -> None:
        super().__init__(name)
        if not isinstance(output, (FrameWriter, LatestWriter)):
            raise TypeError(f"output must be a FrameWriter or LatestWriter, not {type(output).__name__}")
        if fps is not None and (not isinstance(fps, (int, float)) or not 0 < fps < 10_000):
            raise ValueError(f"fps must be a number in (0, 10000), got {fps!r}")
        if on_full not in (None, "drop", "wait"):
            raise ValueError(f"on_full must be 'drop', 'wait' or None, got {on_full!r}")
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 0):
            raise ValueError(f"max_frames must be an int >= 0, got {max_frames!r}")
        if stall_timeout_s is not None and (isinstance(stall_timeout_s, bool) or not isinstance(
                stall_timeout_s, (int, float)) or not stall_timeout_s > 0):
            raise ValueError(f"stall_timeout_s must be a number > 0 or None, got {stall_timeout_s!r}")
        if on_consumer_closed not in ("fail", "drop"):
            raise ValueError(f"on_consumer_closed must be 'fail' or 'drop', got {on_consumer_closed!r}")
        if pixel_format not in ("BGR", "RGB"):
            raise ValueError(f"capture publishes BGR (OpenCV's order) or RGB, got pixel_format {pixel_format!r}")
        self.source = open_source(source, size=size, fps=fps, fourcc=fourcc, open_timeout_s=open_timeout_s)
        self.output = output
        self.fps = fps
        self.loop_source = loop
        self.realtime = realtime
        self.pixel_format = pixel_format
        self.source_id = source_id
        self.on_full = on_full
        self.max_frames = max_frames
        self.stall_timeout_s = stall_timeout_s
        self.on_consumer_closed = on_consumer_closed
        for k in ("grabbed", "published", "dropped", "dropped_full", "dropped_shape", "dropped_no_consumer",
                  "decode_errors", "copies", "late", "loops", "end_of_stream"):
            self.counters[k] = 0
        self._t_first = self._t_last = 0
        self._intervals_ns: list[int] = []
        # offered every published frame while the pixels are still held (edgepipe.pipeline.tap.FrameTap;
        # set by the pipeline on a tapped output): it copies them if its side ring has room, never waits
        self.frame_tap = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def open(self) -> None:
        if not getattr(self.source, "opened", False):  # a caller may open it first to learn the frame size
            self.source.open()
        if self.on_full is None:
            self.on_full = "drop" if getattr(self.source, "live", True) else "wait"

    def close(self) -> None:
        self.source.close()

    def loop(self) -> None:
        src, out = self.source, self.output
        shape = tuple(src.shape)
        fps = self.fps or getattr(src, "fps", None)
        period_ns = int(1e9 / fps) if (self.realtime and fps) else 0
        c = self.counters
        wait_s = 0.1 if self.on_full == "wait" else 0
        rgb = self.pixel_format == "RGB"
        t0 = time.monotonic_ns()
        n = 0  # frames scheduled since t0: the deadline of frame n is t0 + n * period
        src_errors = getattr(src, "decode_errors", 0)
        while not self.stopping:
            if self.max_frames is not None and c["published"] >= self.max_frames:
                return
            late = False
            if period_ns:
                if not self._sleep_until(t0 + n * period_ns):
                    return
                late = time.monotonic_ns() - (t0 + n * period_ns) > period_ns
            n += 1
            ok = src.grab()
            if ok and late:  # once per frame: a rewind retries the same deadline
                c["late"] += 1
            bad = getattr(src, "decode_errors", 0)
            if bad != src_errors:  # files the source skipped while grabbing (e.g. an undecodable image)
                c["decode_errors"] += bad - src_errors
                src_errors = bad
            if not ok:
                reason = src.end_reason()
                if reason is not None:
                    raise SourceFailedError(reason)
                if self.loop_source and c["grabbed"] and src.rewind():
                    c["loops"] += 1
                    n -= 1  # the end of the source is no frame: its first frame takes this deadline
                    continue
                c["end_of_stream"] = 1
                return
            t_cap = now_ns()
            c["grabbed"] += 1
            self._publish(src, out, shape, t_cap, wait_s, rgb)

    def _publish(self, src, out, shape, t_cap: int, wait_s: float, rgb: bool) -> None:
        c = self.counters
        copies = getattr(src, "copies_per_frame", 0)
        full_since = None
        while True:
            try:
                if wait_s:
                    claim = out.claim_frame(shape, np.uint8, pixel_format=self.pixel_format, capture_ns=t_cap,
                                            source_id=self.source_id, timeout_s=wait_s)
                else:  # on_full="drop": a full ring is "not now", no exception raised and caught per frame
                    claim = out.try_claim_frame(shape, np.uint8, pixel_format=self.pixel_format,
                                                capture_ns=t_cap, source_id=self.source_id)
                    if claim is None:
                        c["dropped"] += 1
                        c["dropped_full"] += 1
                        return
                break
            except RingTimeoutError:
                if not self.stopping:
                    # on_full="wait": look at `stopping` every 100 ms, then wait again. Every frame record has
                    # this shape, so one frame taken by the consumer makes room: a wait this long means the
                    # consumer took nothing in that time.
                    now = time.monotonic()
                    full_since = now - wait_s if full_since is None else full_since
                    if self.stall_timeout_s is not None and now - full_since >= self.stall_timeout_s:
                        raise OutputStalledError(
                            f"capture stage {self.name!r}: its output ring {out.ring_name!r} has been full for "
                            f"{now - full_since:.1f} s with no frame taken by a consumer (no reader attached, "
                            f"or it stopped reading); stall_timeout_s={self.stall_timeout_s}"
                        ) from None
                    continue
                c["dropped"] += 1
                c["dropped_full"] += 1
                return
            except PeerClosedError:
                if self.on_consumer_closed == "drop":  # a viewer that comes and goes, closed or killed
                    c["dropped"] += 1
                    c["dropped_no_consumer"] += 1
                    return
                if consumer_closed(out):
                    raise
                # the consumer died and a supervisor restarts it: wait for it (on_full="wait") or drop
                if wait_s and not self.stopping:
                    time.sleep(0.01)
                    continue
                c["dropped"] += 1
                c["dropped_consumer_restarting"] = c.get("dropped_consumer_restarting", 0) + 1
                return
        try:
            with claim as arr:
                ok, img = src.retrieve(arr)
                if not ok:
                    c["decode_errors"] += 1
                    raise _Skip
                if img is not arr:
                    if img is None or img.shape != arr.shape or img.dtype != arr.dtype:
                        c["dropped"] += 1
                        c["dropped_shape"] += 1
                        raise _Skip
                    if not np.shares_memory(img, arr):
                        np.copyto(arr, img)
                    c["copies"] += 1
                elif copies:
                    c["copies"] += copies
                if rgb:
                    _cv2().cvtColor(arr, 4, dst=arr)  # COLOR_BGR2RGB, in place
                if self.frame_tap is not None:
                    self.frame_tap.offer_frame(arr, pixel_format=self.pixel_format, capture_ns=t_cap,
                                               source_id=self.source_id)
        except _Skip:
            return
        c["published"] += 1
        t = now_ns()
        if self._t_last:
            iv = self._intervals_ns
            iv.append(t - self._t_last)
            if len(iv) > 4096:
                del iv[:2048]
        else:
            self._t_first = t
        self._t_last = t

    def _sleep_until(self, deadline_ns: int) -> bool:
        """Sleep on CLOCK_MONOTONIC until ``deadline_ns``, in slices of at most 100 ms; False if stopped."""
        while True:
            left = deadline_ns - time.monotonic_ns()
            if left <= 0:
                return True
            if self.stopping:
                return False
            time.sleep(min(left, 100_000_000) / 1e9)

    def extra_stats(self) -> dict[str, Any]:
        c = self.counters
        out: dict[str, Any] = {"source": getattr(self.source, "describe", repr(self.source)),
                               "shape": getattr(self.source, "shape", None)}
        target = self.fps or getattr(self.source, "fps", None)
        if self.realtime and target:  # the rate the loop paces itself at; "fps" is what it achieved
            out["fps_target"] = float(target)
        if c.get("published", 0) > 1 and self._t_last > self._t_first:
            out["fps"] = round((c["published"] - 1) * 1e9 / (self._t_last - self._t_first), 2)
        if self._intervals_ns:
            iv = np.asarray(self._intervals_ns) / 1e6
            out["interval_ms_p50"] = round(float(np.percentile(iv, 50)), 3)
            out["interval_ms_p99"] = round(float(np.percentile(iv, 99)), 3)
        return out

    def __repr__(self) -> str:
        return f"<CaptureStage {self.name!r} {getattr(self.source, 'describe', '?')} {self.state}>"
