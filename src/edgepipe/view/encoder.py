"""The view's drawing and JPEG encoding, in a process of its own at the view's CPU priority: :class:`Encoder`.

Why a process and not a thread: a thread under ``SCHED_IDLE`` gets no CPU while the machine is busy, and
if it is preempted while holding the interpreter lock, every other thread of its process (the view's
loop, its HTTP server, the control thread taking Stop) waits for it: on a saturated 2-core machine the view
stage then missed its 1 s to stop (measured: ``edgepipe view`` under load 15-25 killed by SIGTERM, three runs
of three; fine with the thread at normal priority). A process of its own has its own lock.

The child is ``python -c`` :data:`ENTRY`: it asks for SIGKILL when its parent dies (as stage processes do:
strictly, when the thread that started it ends, so :class:`Encoder` is made by the thread that runs the
stage, its process's main thread in a pipeline),
lowers its priority (edgepipe.view.priority), then answers jobs on its stdin with pictures on its stdout,
one at a time. Framing (little-endian): a job is a header ``seq q, capture_ns q, height I, width I,
channels I, quality I, boxes I, attitude ?, q 4d, gap_ns q, extrapolated ?``, then ``boxes`` times ``5d``
(x_min, y_min, x_max, y_max, score), then the uint8 pixels; a picture is ``seq q, capture_ns q, cpu_ns q,
length I`` and the JPEG bytes. The first thing the child writes is the length-prefixed name of the
priority it got. Nothing is unpickled on either side.

One job is in flight at a time; a frame handed over while one is in flight waits as the next, and a newer
one replaces it (:meth:`Encoder.submit` says so: the caller counts it skipped).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__: list[str] = []  # shared inside edgepipe.view

JOB = struct.Struct("<qqIIIII?4dq?")
BOX = struct.Struct("<5d")
PICTURE = struct.Struct("<qqqI")
LEN = struct.Struct("<I")

ENTRY = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)\n"  # PR_SET_PDEATHSIG, SIGKILL: die with the view
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(3)\n"
    "out = os.dup(1)\n"  # the pictures' pipe, kept aside: anything printed goes to stderr instead
    "os.dup2(2, 1)\n"
    "from edgepipe.view.encoder import child_main\n"
    "child_main(sys.argv[2], out)\n"
)


def _read_exactly(f, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise EOFError(f"the other end closed ({len(b)} of {n} bytes)")
    return b


def _recv(fd: int, n: int) -> bytes:
    """``n`` bytes from a pipe (raw reads, no buffer lock: closing it from another thread cannot hang)."""
    parts, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            raise EOFError(f"the other end closed ({got} of {n} bytes)")
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _send(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


class _Box:
    __slots__ = ("score", "x_max", "x_min", "y_max", "y_min")

    def __init__(self, x_min, y_min, x_max, y_max, score) -> None:
        self.x_min, self.y_min, self.x_max, self.y_max, self.score = x_min, y_min, x_max, y_max, score


def child_main(sched: str, out_fd: int) -> None:
    """The encoder process: lower its priority, then draw and encode each job from stdin until it closes,
    writing the pictures to ``out_fd``."""
    from edgepipe.view.priority import lower_priority
    from edgepipe.view.render import draw_attitude, draw_boxes, encode_jpeg

    applied = lower_priority(sched).encode()
    inp, out = sys.stdin.buffer, os.fdopen(out_fd, "wb")
    out.write(LEN.pack(len(applied)) + applied)
    out.flush()
    while True:
        try:
            seq, cap, h, w, c, quality, nb, has_att, qw, qx, qy, qz, gap, extrap = JOB.unpack(
                _read_exactly(inp, JOB.size))
            boxes = [_Box(*BOX.unpack(_read_exactly(inp, BOX.size))) for _ in range(nb)]
            img = np.frombuffer(bytearray(_read_exactly(inp, h * w * c)), np.uint8).reshape(h, w, c)
        except EOFError:
            return
        t0 = time.thread_time_ns()
        if c == 1:
            img = img.repeat(3, axis=2)
        if boxes:
            draw_boxes(img, boxes)
        if has_att:
            draw_attitude(img, (qw, qx, qy, qz), gap_ns=gap, extrapolated=extrap)
        jpeg = encode_jpeg(img, quality)
        out.write(PICTURE.pack(seq, cap, time.thread_time_ns() - t0, len(jpeg)))
        out.write(jpeg)
        out.flush()


class Encoder:
    """Draws and encodes frames in a child process at priority ``sched``; each picture goes to
    ``on_picture(jpeg, capture_ns, seq)`` from a thread of this process.

    Attributes:
        pid: the child's process id. sched_applied: the priority it got (once it started).
        cpu_ns: the child's CPU time drawing and encoding, summed. shown: pictures made.

    >>> import threading
    >>> done, pics = threading.Event(), []
    >>> enc = Encoder(80, "normal", lambda jpeg, cap, seq: (pics.append((seq, cap, jpeg[:2])), done.set()))
    >>> enc.submit(7, 123, np.zeros((48, 64, 3), np.uint8), [], None)   # nothing was waiting: not a skip
    False
    >>> done.wait(60)
    True
    >>> pics                                        # a JPEG (SOI marker), tagged with the frame's seq and stamp
    [(7, 123, b'\\xff\\xd8')]
    >>> enc.close()
    """

    def __init__(self, quality: int, sched: str, on_picture: Callable[[bytes, int, int], None]) -> None:
        self.quality, self.sched, self.on_picture = quality, sched, on_picture
        self.cpu_ns = 0
        self.shown = 0
        self.sched_applied = ""
        self._cv = threading.Condition()
        self._next: tuple | None = None
        self._closing = False
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this edgepipe, first
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-c", ENTRY, str(os.getpid()), sched], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, close_fds=True)
        self.pid = self.proc.pid
        self._thread = threading.Thread(target=self._pump, name="edgepipe-view-encoder", daemon=True)
        self._thread.start()

    def submit(self, seq: int, cap: int, img: np.ndarray, boxes, att) -> bool:
        """Hand one frame over (``img`` is not used by the caller afterwards); True if it replaced one that
        had not started (skipped)."""
        with self._cv:
            replaced = self._next is not None
            self._next = (seq, cap, img, boxes, att)
            self._cv.notify()
        return replaced

    def _pump(self) -> None:
        inp, out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        try:
            n = LEN.unpack(_recv(out, LEN.size))[0]
            self.sched_applied = _recv(out, n).decode()
            while True:
                with self._cv:
                    while self._next is None and not self._closing:
                        self._cv.wait()
                    if self._closing:
                        return
                    (seq, cap, img, boxes, att), self._next = self._next, None
                img = np.ascontiguousarray(img if img.ndim == 3 else img[:, :, None], np.uint8)
                h, w, c = img.shape
                boxes = list(boxes) if boxes is not None else []
                if att is not None:
                    o = att.orientation
                    a: tuple[Any, ...] = (True, o.w, o.x, o.y, o.z, int(att.gap_ns), bool(att.extrapolated))
                else:
                    a = (False, 1.0, 0.0, 0.0, 0.0, 0, False)
                head = JOB.pack(seq, cap, h, w, c, self.quality, len(boxes), *a)
                _send(inp, head + b"".join(BOX.pack(b.x_min, b.y_min, b.x_max, b.y_max, b.score) for b in boxes))
                _send(inp, img)
                seq, cap, cpu, n = PICTURE.unpack(_recv(out, PICTURE.size))
                jpeg = _recv(out, n)
                self.cpu_ns += cpu
                self.shown += 1
                self.on_picture(jpeg, cap, seq)
        except (EOFError, OSError, ValueError):  # the child is gone: no more pictures
            return
        finally:
            for f in (self.proc.stdin, self.proc.stdout):
                f.close()  # here, by the only thread using them: never a number another open() reuses

    def close(self) -> None:
        """End the child: SIGKILL (at the lowest priority it may not run soon enough to exit by itself), and
        close our ends of its pipes; nothing here waits on it for long."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self.proc.poll() is None:
            self.proc.kill()
        # the pump thread ends on its own (the child's pipes close as it dies) and closes our ends; a child
        # too starved to die yet keeps it waiting, a daemon thread, until this process exits
        self._thread.join(0.1)
        self.proc.poll()  # reaped now if it is dead already; else when this process exits
