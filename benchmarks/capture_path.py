"""Decoded video frames from OpenCV to a consumer process: edgepipe decoding straight into the ring slot
against each peer decoding into its own array and then sending it (standalone).

A producer decodes a video file with OpenCV (FFMPEG backend, one decoder thread, looping at the end of the
clip) and delivers every frame, lossless, to a consumer process; the two are pinned to two CPUs (``--cpus``,
default 0,1) for ``--seconds``. The consumer touches every frame (one byte per 64-byte cache line) and checks
its sequence number. Decode settings are the same for every transport; only what happens after ``grab()``
differs. Every transport is lossless with about two frames in flight (the smallest ring that takes two,
two shm slots, iceoryx2 subscriber buffer 2, zmq high-water marks 2; a pipe holds less):

  edgepipe            claim_frame() on a frame ring (room for two frames), ``retrieve(image=slot)``: OpenCV
                      writes the decoded frame into the shared slot (its one copy, below), commit
  shm + semaphores    ``retrieve(image=own)``, then copy into one of two multiprocessing.shared_memory slots
                      (a free / full pair of multiprocessing semaphores); the consumer reads the slot in place
  iceoryx2            ``retrieve(image=own)``, loan_uninit, copy into the loan, send (buffer 2, lossless); the
                      subscriber polls receive() and reads in place
  pyzmq               ``retrieve`` into one of three rotating send buffers, PUSH send(copy=False, track=True);
                      PULL recv(copy=False), high-water marks 2
  Pipe                ``retrieve`` into a private send buffer, send_bytes; recv_bytes_into a preallocated buffer

Clips: the bundled ``vtest_100.mp4`` (768x576, MPEG-4 Part 2, see src/edgepipe/data/video) and a 1920x1080
MJPG clip the benchmark makes from it (each frame resized, cv2.VideoWriter into a temp dir, removed after).
Reported per transport: frames/s delivered to the consumer, CPU time per frame of each process (getrusage over
the timed loop), the producer's wall time inside grab() + retrieve() per frame (far above its CPU time when
other jobs share its CPU), ratio to the best peer of the clip; then each process's minor page faults and
context switches per frame. Goal (issue 20): edgepipe >= 1.25x the best peer.

Before its timed loop every producer decodes one frame into its destination and checks that ``retrieve``
wrote into that very buffer (the array handed back is the one given, data pointer unchanged). OpenCV's FFMPEG
backend converts each frame (sws_scale) into a buffer of its own and then copies it into the array given to
``retrieve``: that copy is in every transport; edgepipe saves the peers' second one (their array -> transport).

``--steps`` also times each step of both loops (time.thread_time and perf_counter around each): producer
grab / retrieve / copy / transport, consumer wait / touch / release, per frame, and prints what that bounds
the frames/s ratio to when the producer is the bottleneck: the peer's producer CPU over edgepipe's with the
peer's decode cost, and over the decode alone (no transport can beat that).

    python benchmarks/capture_path.py --seconds 3 --rounds 2     # ~1 minute
    python benchmarks/capture_path.py --seconds 2 --only 768x576 --steps
"""

from __future__ import annotations

import ctypes
import resource
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np

from edgepipe import FrameReader, FrameWriter, PeerClosedError, Ring, now_ns

CLIP_1080P_FRAMES = 60


def sample_clip() -> Path:
    from edgepipe.stages.capture import sample_video

    return Path(sample_video())


def make_1080p_clip(src: Path, dst: Path, frames: int = CLIP_1080P_FRAMES) -> Path:
    """A 1920x1080 MJPG .avi made from the first ``frames`` frames of ``src`` (each resized)."""
    import cv2

    cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG)
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (1920, 1080))
    if not out.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write MJPG to {dst}")
    try:
        for _ in range(frames):
            ok, f = cap.read()
            if not ok:
                break
            out.write(cv2.resize(f, (1920, 1080), interpolation=cv2.INTER_LINEAR))
    finally:
        out.release()
        cap.release()
    return dst


class Decoder:
    """The same decode settings for every transport: FFMPEG backend, one decoder thread, BGR output, loop at
    the end. (OpenCV's own thread pool is left alone: the producer is a forked child of a process that used
    it, and cv2.setNumThreads() there hangs; no thread but the main one uses CPU, see --steps' "P other".)"""

    def __init__(self, path: Path) -> None:
        import cv2

        self.cv2 = cv2
        self.cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        if not self.cap.isOpened():
            raise RuntimeError(f"cannot open {path}")
        if self.cap.get(cv2.CAP_PROP_N_THREADS) != 1 or self.cap.get(cv2.CAP_PROP_CONVERT_RGB) != 1:
            raise RuntimeError(f"decode settings not taken: threads {self.cap.get(cv2.CAP_PROP_N_THREADS)}, "
                               f"convert_rgb {self.cap.get(cv2.CAP_PROP_CONVERT_RGB)}")
        self.in_place = 0  # retrieve() wrote into the array it was given
        self.copies = 0  # it returned another array (copied into place here)
        self.wall_s = 0.0  # time inside grab() + retrieve()

    def grab(self) -> None:
        self._t = time.perf_counter()
        if not self.cap.grab():
            self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
            if not self.cap.grab():
                raise RuntimeError("the clip delivers no frame after a rewind")

    def retrieve(self, arr: np.ndarray) -> None:
        ok, img = self.cap.retrieve(image=arr)
        if not ok:
            raise RuntimeError("retrieve() failed")
        if img is arr:  # OpenCV's binding hands back the array it was given when it wrote into its buffer
            self.in_place += 1
        else:
            np.copyto(arr, img)
            self.copies += 1
        self.wall_s += time.perf_counter() - self._t

    def check_in_place(self, arr: np.ndarray) -> None:
        """Once, before the timed loop: decode a frame into ``arr`` and check that the pixels landed in
        ``arr``'s own buffer (the array handed back is ``arr`` and its data pointer did not move), else raise."""
        ptr = arr.ctypes.data
        self.grab()
        ok, img = self.cap.retrieve(image=arr)
        if not ok or img is not arr or img.ctypes.data != ptr or arr.ctypes.data != ptr:
            raise RuntimeError(f"retrieve(image=...) did not write into the given buffer ({ptr:#x}): got "
                               f"{'nothing' if not ok else hex(img.ctypes.data)}")
        self.wall_s = 0.0

    def close(self) -> dict:
        self.cap.release()
        return {"in_place": self.in_place, "copies": self.copies, "decode_wall_s": self.wall_s}


def touch(a: np.ndarray) -> int:
    """Read one byte per cache line of the frame (what a consumer that looks at every row costs at least)."""
    return int(a.reshape(-1)[::64].sum(dtype=np.uint64))


def _cpu_s() -> float:
    """This process's user + system CPU seconds (getrusage: microseconds, where os.times counts 10 ms ticks)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rusage() -> tuple:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_majflt, r.ru_nvcsw, r.ru_nivcsw


class Steps:
    """With ``--steps``: the CPU time (time.thread_time: this thread only) and wall time each step of a
    loop took, summed per step name. ``mark(name)`` closes the step that began at the previous mark (or at
    start()). Without it, ``mark`` does nothing (a method call per step, the same in every transport)."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        if not on:
            self.mark = self._off

    def start(self) -> None:
        self._c, self._w = time.thread_time(), time.perf_counter()

    def mark(self, name: str) -> None:
        c, w = time.thread_time(), time.perf_counter()
        self.cpu[name] = self.cpu.get(name, 0.0) + c - self._c
        self.wall[name] = self.wall.get(name, 0.0) + w - self._w
        self._c, self._w = c, w

    def _off(self, name: str) -> None:
        pass


class _Loop:
    """One side's timed loop: frames, wall time, this process's CPU time (getrusage: every thread) and its
    page faults and context switches from start(); per-step times when ``steps`` is on."""

    def __init__(self, steps: bool = False) -> None:
        self.steps = Steps(steps)

    def start(self) -> None:
        self.n, self.t0, self.c0, self.r0 = 0, time.perf_counter(), _cpu_s(), _rusage()
        self.steps.start()

    def result(self, key: str, extra: dict | None = None) -> dict:
        out = {key: self.n, "elapsed_s": time.perf_counter() - self.t0, "loop_cpu_s": _cpu_s() - self.c0}
        out.update(zip(("minflt", "majflt", "nvcsw", "nivcsw"), (b - a for a, b in zip(self.r0, _rusage()))))
        if self.steps.on:
            out["steps_cpu_s"], out["steps_wall_s"] = self.steps.cpu, self.steps.wall
        out.update(extra or {})
        return out


def _received(n: int, seq: int, pix: np.ndarray) -> None:
    touch(pix)
    if seq != n + 1:
        raise AssertionError(f"frame {n}: seq {seq}")


# ---------------------------------------------------------------------------------------------------
# edgepipe
#
# Step names (--steps): producer grab / retrieve / copy / transport, consumer wait / touch / release.


def edgepipe_case(path: Path, shape: tuple, seconds: float, steps: bool = False):
    nbytes = int(np.prod(shape))

    def make():
        # the smallest ring taking two frames (max payload = half the capacity): two in flight, as the peers
        ring = Ring.create(capacity=1 << (2 * (nbytes + 4096) - 1).bit_length())

        def producer(sync):
            dec = Decoder(path)
            w = FrameWriter(ring.writer())
            with w.claim_frame(shape, timeout_s=30) as arr:
                dec.check_in_place(arr)
            loop = _Loop(steps)
            mark = loop.steps.mark
            sync()
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                dec.grab()
                mark("grab")
                with w.claim_frame(shape, timeout_s=30) as arr:
                    mark("transport")
                    dec.retrieve(arr)
                    mark("retrieve")
                mark("transport")
                loop.n += 1
            w.close()
            return loop.result("sent", dec.close())

        def consumer(sync):
            r = FrameReader(ring.reader())
            with r.read_frame(timeout_s=30):
                pass  # the frame check_in_place() wrote
            loop = _Loop(steps)
            mark = loop.steps.mark
            sync()
            loop.start()
            while True:
                try:
                    ctx = r.read_frame(timeout_s=30)
                except PeerClosedError:
                    break
                with ctx as f:
                    mark("wait")
                    _received(loop.n, f.seq - 1, f.array)
                    mark("touch")
                mark("release")
                loop.n += 1
            return loop.result("received")

        return C.Sides(producer, consumer, ring.close)

    return make


# ---------------------------------------------------------------------------------------------------
# multiprocessing.shared_memory slots + multiprocessing semaphores


def shm_sem_case(path: Path, shape: tuple, seconds: float, steps: bool = False):
    def make():
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        slots = C.ShmFrameSlots(2, shape)
        nslots = slots.nslots
        free, full = ctx.Semaphore(nslots), ctx.Semaphore(0)

        def producer(sync):
            dec = Decoder(path)
            own = np.empty(shape, np.uint8)
            dec.check_in_place(own)
            hdrs, pix = slots.attach()
            loop = _Loop(steps)
            mark = loop.steps.mark
            sync()
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                dec.grab()
                mark("grab")
                dec.retrieve(own)
                mark("retrieve")
                free.acquire()
                mark("transport")
                s = loop.n % nslots
                np.copyto(pix[s], own)
                mark("copy")
                hdrs[s][0], hdrs[s][1] = loop.n + 1, now_ns()
                full.release()
                mark("transport")
                loop.n += 1
            out = loop.result("sent", dec.close())
            free.acquire()
            hdrs[loop.n % nslots][0] = -1  # end marker
            full.release()
            del hdrs, pix
            slots.detach()
            return out

        def consumer(sync):
            hdrs, pix = slots.attach()
            loop = _Loop(steps)
            mark = loop.steps.mark
            sync()
            loop.start()
            while True:
                full.acquire()
                mark("wait")
                s = loop.n % nslots
                seq = int(hdrs[s][0])
                if seq == -1:
                    break
                _received(loop.n, seq, pix[s])
                mark("touch")
                free.release()
                mark("release")
                loop.n += 1
            out = loop.result("received")
            del hdrs, pix
            slots.detach()
            return out

        return C.Sides(producer, consumer, slots.cleanup)

    return make


# ---------------------------------------------------------------------------------------------------
# iceoryx2


def iceoryx2_case(path: Path, shape: tuple, seconds: float, steps: bool = False):
    nbytes = int(np.prod(shape))

    def make():
        ch = C.Iox2PubSub("epcp", f"cp{time.monotonic_ns() % 1_000_000}", C.frame_payload(nbytes), 2)
        flag = ch.flag
        pixels = C.pixel_view(shape)
        header = (ctypes.c_int64 * 2).from_address

        def producer(sync):
            dec = Decoder(path)
            own = np.empty(shape, np.uint8)
            dec.check_in_place(own)
            pub = ch.publisher()
            sync()  # 1: the service exists
            sync()  # 2: the subscriber is connected
            loop = _Loop(steps)
            mark = loop.steps.mark
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                dec.grab()
                mark("grab")
                dec.retrieve(own)
                mark("retrieve")
                s = pub.loan_uninit()
                ptr = s.payload_ptr
                mark("transport")
                np.copyto(pixels(ptr), own)
                mark("copy")
                hdr = header(ptr)
                hdr[0], hdr[1] = loop.n + 1, now_ns()
                s.assume_init().send()
                mark("transport")
                loop.n += 1
            out = loop.result("sent", dec.close())
            flag[0] = 1
            sync()  # 3: drained
            pub.delete()
            return out

        def consumer(sync):
            sync()  # 1
            sub = ch.subscriber()
            sync()  # 2
            loop = _Loop(steps)
            mark = loop.steps.mark
            loop.start()
            while True:
                x = sub.receive()
                if x is None:
                    if flag[0]:
                        x = sub.receive()
                        if x is None:
                            break
                    else:
                        continue
                mark("wait")
                ptr = x.payload_ptr
                _received(loop.n, header(ptr)[0], pixels(ptr))
                mark("touch")
                loop.n += 1
                x = None
                mark("release")
            out = loop.result("received")
            sync()  # 3
            sub.delete()
            return out

        return C.Sides(producer, consumer, ch.cleanup)

    return make


# ---------------------------------------------------------------------------------------------------
# byte-stream peers: a 16-byte header (seq, stamp) then the pixels, decoded into the send buffer


def zmq_case(path: Path, shape: tuple, seconds: float, steps: bool = False):
    nbytes = int(np.prod(shape))

    def make():
        pipe = C.ZmqPushPull("zmqcp", hwm=2)

        def producer(sync):
            dec = Decoder(path)
            ctx, s = pipe.push()
            sync()
            sync()
            # zero-copy sends leave from zmq's I/O thread later: three buffers, each refilled only once zmq
            # is done with it (its tracker)
            bufs = [np.empty(C.FRAME_HDR + nbytes, np.uint8) for _ in range(3)]
            dec.check_in_place(bufs[0][C.FRAME_HDR:].reshape(shape))
            trackers = [None] * 3
            loop = _Loop(steps)
            mark = loop.steps.mark
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                j = loop.n % 3
                if trackers[j] is not None:
                    trackers[j].wait()
                mark("transport")
                buf = bufs[j]
                dec.grab()
                mark("grab")
                dec.retrieve(buf[C.FRAME_HDR:].reshape(shape))
                mark("retrieve")
                hdr = buf[:C.FRAME_HDR].view(np.int64)
                hdr[0], hdr[1] = loop.n + 1, now_ns()
                trackers[j] = s.send(buf, copy=False, track=True)
                mark("transport")
                loop.n += 1
            out = loop.result("sent", dec.close())
            s.send(b"")
            s.close()
            ctx.term()
            return out

        def consumer(sync):
            ctx, s = pipe.pull()
            sync()
            s.connect(pipe.endpoint)
            time.sleep(0.05)
            sync()
            loop = _Loop(steps)
            mark = loop.steps.mark
            loop.start()
            while True:
                b = s.recv(copy=False).buffer
                if len(b) == 0:
                    break
                mark("wait")
                _received(loop.n, int(np.frombuffer(b, np.int64, 1)[0]),
                          np.frombuffer(b, np.uint8, nbytes, C.FRAME_HDR).reshape(shape))
                mark("touch")
                loop.n += 1
            out = loop.result("received")
            s.close()
            ctx.term()
            return out

        return C.Sides(producer, consumer, pipe.cleanup)

    return make


def pipe_case(path: Path, shape: tuple, seconds: float, steps: bool = False):
    nbytes = int(np.prod(shape))

    def make():
        import multiprocessing

        rx, tx = multiprocessing.get_context("fork").Pipe(duplex=False)

        def producer(sync):
            rx.close()
            dec = Decoder(path)
            buf = np.empty(C.FRAME_HDR + nbytes, np.uint8)
            hdr, pix = buf[:C.FRAME_HDR].view(np.int64), buf[C.FRAME_HDR:].reshape(shape)
            dec.check_in_place(pix)
            loop = _Loop(steps)
            mark = loop.steps.mark
            sync()
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                dec.grab()
                mark("grab")
                dec.retrieve(pix)
                mark("retrieve")
                hdr[0], hdr[1] = loop.n + 1, now_ns()
                tx.send_bytes(buf)
                mark("transport")
                loop.n += 1
            out = loop.result("sent", dec.close())
            tx.send_bytes(b"")
            tx.close()
            return out

        def consumer(sync):
            tx.close()
            buf = bytearray(C.FRAME_HDR + nbytes)
            hdr = np.frombuffer(buf, np.int64, 2)
            pix = np.frombuffer(buf, np.uint8, nbytes, C.FRAME_HDR).reshape(shape)
            loop = _Loop(steps)
            mark = loop.steps.mark
            sync()
            loop.start()
            while True:
                if rx.recv_bytes_into(buf) == 0:
                    break
                mark("wait")
                _received(loop.n, int(hdr[0]), pix)
                mark("touch")
                loop.n += 1
            return loop.result("received")

        def after_start():
            rx.close()
            tx.close()

        return C.Sides(producer, consumer, None, after_start)

    return make

# ---------------------------------------------------------------------------------------------------
# driver


PEERS = [
    ("shm slots + mp semaphores, copy", shm_sem_case),
    ("iceoryx2 loan + copy", iceoryx2_case),
    ("pyzmq PUSH/PULL ipc, zero-copy send", zmq_case),
    ("multiprocessing.Pipe", pipe_case),
]


def build_cases(clips: list[tuple[str, Path, tuple]], seconds: float, steps: bool = False) -> list[C.Case]:
    cases = []
    for label, path, shape in clips:
        cases.append(C.Case(f"{label}: edgepipe ring, retrieve into the slot", label, True,
                            edgepipe_case(path, shape, seconds, steps)))
        for name, fn in PEERS:
            cases.append(C.Case(f"{label}: {name}", label, False, fn(path, shape, seconds, steps)))
    return cases


PRODUCER_STEPS = ("grab", "retrieve", "copy", "transport")
CONSUMER_STEPS = ("wait", "touch", "release")


def measure(case: C.Case, a: dict, b: dict) -> dict:
    sent, got = a["sent"], b["received"]
    if sent != got:
        raise RuntimeError(f"lost frames: sent {sent}, received {got}")
    out = {"frames": got, "msgs": got, "fps": got / b["elapsed_s"], "elapsed_s": b["elapsed_s"],
           "producer_cpu_us": a["loop_cpu_s"] * 1e6 / max(1, sent),
           "consumer_cpu_us": b["loop_cpu_s"] * 1e6 / max(1, got),
           "retrieve_in_place": a["in_place"], "retrieve_copies": a["copies"],
           "decode_wall_us": a["decode_wall_s"] * 1e6 / max(1, sent)}
    for side, d, n in (("producer", a, sent), ("consumer", b, got)):
        for k in ("minflt", "majflt", "nvcsw", "nivcsw"):
            out[f"{side}_{k}_per_frame"] = d[k] / max(1, n)
        # per-step CPU (this thread) and wall time, us per frame (--steps)
        for kind in ("cpu", "wall"):
            if f"steps_{kind}_s" in d:
                out[f"{side}_steps_{kind}_us"] = {k: v * 1e6 / max(1, n) for k, v in d[f"steps_{kind}_s"].items()}
    return out


def _decode_us(r: dict) -> float:
    st = r["producer_steps_cpu_us"]
    return st.get("grab", 0.0) + st.get("retrieve", 0.0)


def steps_report(rows: list[dict]) -> None:
    """With --steps: where each process's CPU went per frame, and what that bounds the ratio to."""
    rows = [r for r in rows if r["ok"] and "producer_steps_cpu_us" in r]
    if not rows:
        return
    out = []
    for r in rows:
        p, c = r["producer_steps_cpu_us"], r["consumer_steps_cpu_us"]
        p_other = r["producer_cpu_us"] - sum(p.values())
        c_other = r["consumer_cpu_us"] - sum(c.values())
        out.append([r["case"]] + [f"{p[k]:,.0f}" if k in p else "-" for k in PRODUCER_STEPS] + [f"{p_other:,.0f}"]
                   + [f"{c[k]:,.0f}" if k in c else "-" for k in CONSUMER_STEPS] + [f"{c_other:,.0f}"])
    print("\nCPU per frame by step, us (time.thread_time of the main thread; 'other' = getrusage of the "
          "process minus the steps: other threads, the loop itself)")
    print(C.table(["case"] + [f"P {k}" for k in PRODUCER_STEPS] + ["P other"]
                  + [f"C {k}" for k in CONSUMER_STEPS] + ["C other"], out))
    for g in dict.fromkeys(r["group"] for r in rows):
        e = next((r for r in rows if r["edgepipe"] and r["group"] == g), None)
        peers = [r for r in rows if not r["edgepipe"] and r["group"] == g]
        if not e or not peers:
            continue
        b = max(peers, key=lambda r: r["fps"])
        tb, te = b["producer_cpu_us"], e["producer_cpu_us"]
        db, de = _decode_us(b), _decode_us(e)
        print(f"  {g}: best peer {b['case'].split(': ', 1)[1]}: producer {tb:,.0f} us/frame, of which decode "
              f"(grab + retrieve) {db:,.0f} ({db / tb:.0%}); edgepipe {te:,.0f}, decode {de:,.0f}. If frames/s "
              f"follow the producer's CPU: edgepipe/peer = {tb / te:.2f}x measured, {tb / (db + te - de):.2f}x "
              f"with the peer's decode cost, {tb / db:.2f}x at most for any transport (one costing nothing)")


def report(rows: list[dict]) -> dict:
    groups = list(dict.fromkeys(r["group"] for r in rows))
    best = {}
    for g in groups:
        ps = [r for r in rows if r["ok"] and not r["edgepipe"] and r["group"] == g]
        if ps:
            best[g] = max(ps, key=lambda r: r["fps"])
    out = []
    for r in rows:
        if not r["ok"]:
            out.append([r["case"], "FAILED: " + r["error"].splitlines()[0][:80]] + [""] * 6)
            continue
        bg = best.get(r["group"])
        out.append([r["case"], f"{r['fps']:,.0f}", f"{r['producer_cpu_us']:,.0f}", f"{r['consumer_cpu_us']:,.0f}",
                    f"{r['decode_wall_us']:,.0f}", f"{r['fps'] / bg['fps']:.2f}x" if bg else "", f"{r['frames']:,}",
                    f"{r['retrieve_in_place']}/{r['retrieve_in_place'] + r['retrieve_copies']}"])
    print()
    print("decoded frames delivered to a consumer process (which touches one byte per cache line); CPU = getrusage "
          "of each process over its timed loop, per frame; ratio = frames/s over the best peer of the same clip")
    print(C.table(["case", "frames/s", "producer CPU us/frame", "consumer CPU us/frame", "decode wall us/frame",
                   "vs best peer", "frames", "retrieve in place"], out))
    faults = [[r["case"]] + [f"{r[f'{side}_{k}_per_frame']:.2f}" for side in ("producer", "consumer")
                             for k in ("minflt", "nvcsw", "nivcsw")] for r in rows if r["ok"]]
    print("\nper frame: minor page faults, voluntary and involuntary context switches of each process")
    print(C.table(["case", "P minflt", "P vol csw", "P invol csw", "C minflt", "C vol csw", "C invol csw"], faults))
    steps_report(rows)
    g = C.Goals("goals (issue 20)")
    for grp in groups:
        e = next((r for r in rows if r["ok"] and r["edgepipe"] and r["group"] == grp), None)
        bg = best.get(grp)
        missing = C.peers_not_run(rows, grp)
        name = f"{grp}: edgepipe >= 1.25x the best peer in frames/s"
        if missing:
            g.skip(name, missing)
        elif e and bg:
            ratio = e["fps"] / bg["fps"]
            g.line(name, ratio >= 1.25, f"{e['fps']:,.0f} vs {bg['fps']:,.0f} fps ({bg['case']}) = {ratio:.2f}x")
        else:
            g.line(name, None, "a case is missing")
    return g


def main() -> None:
    def extra(p):
        p.add_argument("--steps", action="store_true",
                       help="also time each step of both loops (time.thread_time + perf_counter per step)")

    args = C.parse_args(__doc__.splitlines()[0], default_seconds=2.0, size_default=None,
                        size_help="unused (the clips set the frame size)", extra=extra)
    env = C.print_header("edgepipe capture path: OpenCV-decoded frames to a consumer process", args)
    import cv2

    with tempfile.TemporaryDirectory(prefix="epcapture-") as d:
        src = sample_clip()
        clips = [("768x576", src, (576, 768, 3))]
        if any(C.selected(f"1920x1080: {n}", args.only) for n in ["edgepipe ring"] + [p for p, _ in PEERS]):
            t = time.perf_counter()
            big = make_1080p_clip(src, Path(d) / "vtest_1080p_mjpg.avi")
            print(f"made {big.name}: {CLIP_1080P_FRAMES} frames 1920x1080 MJPG in {time.perf_counter() - t:.1f} s "
                  f"(OpenCV {cv2.__version__})")
            clips.append(("1920x1080", big, (1080, 1920, 3)))
        C.run_and_report(args, env, build_cases(clips, args.seconds, args.steps), measure, report, timer_note=False)


if __name__ == "__main__":
    main()
