"""Decoded video frames from OpenCV to a consumer process: edgepipe decoding straight into the ring slot
against each peer decoding into its own array and then sending it (standalone).

A producer decodes a video file with OpenCV (FFMPEG backend, one decoder thread, looping at the end of the
clip) and delivers every frame, lossless, to a consumer process; the two are pinned to two CPUs (``--cpus``,
default 0,1) for ``--seconds``. The consumer touches every frame (one byte per 64-byte cache line) and checks
its sequence number. Decode settings are the same for every transport; only what happens after ``grab()``
differs. Every transport is lossless with about two frames in flight (the smallest ring that takes two,
two shm slots, iceoryx2 subscriber buffer 2, zmq high-water marks 2; a pipe holds less):

  edgepipe            claim_frame() on a frame ring (room for two frames), ``retrieve(image=slot)``: OpenCV's
                      colour conversion writes the decoded frame into the shared slot itself, commit
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
other jobs share its CPU), ratio to the best peer of the clip. Goal (issue 20): edgepipe >= 1.25x the best peer.

    python benchmarks/capture_path.py --seconds 3 --rounds 2     # ~1 minute
    python benchmarks/capture_path.py --seconds 2 --only 768x576
"""

from __future__ import annotations

import ctypes
import mmap
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
    """The same decode settings for every transport: FFMPEG backend, one decoder thread, loop at the end."""

    def __init__(self, path: Path) -> None:
        import cv2

        self.cv2 = cv2
        self.cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        if not self.cap.isOpened():
            raise RuntimeError(f"cannot open {path}")
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
        if img is arr:
            self.in_place += 1
        else:
            np.copyto(arr, img)
            self.copies += 1
        self.wall_s += time.perf_counter() - self._t

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


class _Loop:
    """One side's timed loop: frames, wall time and this process's CPU time (getrusage) from start()."""

    def start(self) -> None:
        self.n, self.t0, self.c0 = 0, time.perf_counter(), _cpu_s()

    def result(self, key: str, extra: dict | None = None) -> dict:
        out = {key: self.n, "elapsed_s": time.perf_counter() - self.t0, "loop_cpu_s": _cpu_s() - self.c0}
        out.update(extra or {})
        return out


def _received(n: int, seq: int, pix: np.ndarray) -> None:
    touch(pix)
    if seq != n + 1:
        raise AssertionError(f"frame {n}: seq {seq}")


# ---------------------------------------------------------------------------------------------------
# edgepipe


def edgepipe_case(path: Path, shape: tuple, seconds: float):
    nbytes = int(np.prod(shape))

    def make():
        # the smallest ring taking two frames (max payload = half the capacity): two in flight, as the peers
        ring = Ring.create(capacity=1 << (2 * (nbytes + 4096) - 1).bit_length())

        def producer(sync):
            dec = Decoder(path)
            w = FrameWriter(ring.writer())
            loop = _Loop()
            sync()
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                dec.grab()
                with w.claim_frame(shape, timeout_s=30) as arr:
                    dec.retrieve(arr)
                loop.n += 1
            w.close()
            return loop.result("sent", dec.close())

        def consumer(sync):
            r = FrameReader(ring.reader())
            loop = _Loop()
            sync()
            loop.start()
            while True:
                try:
                    ctx = r.read_frame(timeout_s=30)
                except PeerClosedError:
                    break
                with ctx as f:
                    _received(loop.n, f.seq, f.array)
                loop.n += 1
            return loop.result("received")

        return C.Sides(producer, consumer, ring.close)

    return make


# ---------------------------------------------------------------------------------------------------
# multiprocessing.shared_memory slots + multiprocessing semaphores


def shm_sem_case(path: Path, shape: tuple, seconds: float):
    nbytes = int(np.prod(shape))

    def make():
        import multiprocessing
        from multiprocessing import shared_memory

        ctx = multiprocessing.get_context("fork")
        nslots, stride = 2, 64 + nbytes
        shm = shared_memory.SharedMemory(create=True, size=nslots * stride)
        free, full = ctx.Semaphore(nslots), ctx.Semaphore(0)

        def views(buf):
            hdrs = [np.ndarray(2, np.int64, buf, i * stride) for i in range(nslots)]
            pix = [np.ndarray(shape, np.uint8, buf, i * stride + 64) for i in range(nslots)]
            return hdrs, pix

        def producer(sync):
            dec = Decoder(path)
            own = np.empty(shape, np.uint8)
            m = shared_memory.SharedMemory(shm.name)
            hdrs, pix = views(m.buf)
            loop = _Loop()
            sync()
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                dec.grab()
                dec.retrieve(own)
                free.acquire()
                s = loop.n % nslots
                np.copyto(pix[s], own)
                hdrs[s][0], hdrs[s][1] = loop.n + 1, now_ns()
                full.release()
                loop.n += 1
            out = loop.result("sent", dec.close())
            free.acquire()
            hdrs[loop.n % nslots][0] = -1  # end marker
            full.release()
            del hdrs, pix
            m.close()
            return out

        def consumer(sync):
            m = shared_memory.SharedMemory(shm.name)
            hdrs, pix = views(m.buf)
            loop = _Loop()
            sync()
            loop.start()
            while True:
                full.acquire()
                s = loop.n % nslots
                seq = int(hdrs[s][0])
                if seq == -1:
                    break
                _received(loop.n, seq, pix[s])
                free.release()
                loop.n += 1
            out = loop.result("received")
            del hdrs, pix
            m.close()
            return out

        def cleanup():
            shm.close()
            shm.unlink()

        return C.Sides(producer, consumer, cleanup)

    return make


# ---------------------------------------------------------------------------------------------------
# iceoryx2


def iceoryx2_case(path: Path, shape: tuple, seconds: float):
    nbytes = int(np.prod(shape))

    def make():
        try:
            import iceoryx2 as iox
        except ImportError as e:
            raise C.Skip(f"iceoryx2 not importable: {e}") from None
        tag = f"cp{time.monotonic_ns() % 1_000_000}"
        cfg, prefix, root = C.iox2_config(tag)
        flag = mmap.mmap(-1, mmap.PAGESIZE)

        class Payload(ctypes.Structure):
            _fields_ = [("seq", ctypes.c_int64), ("stamp", ctypes.c_int64), ("data", ctypes.c_uint8 * nbytes)]

        def service(node):
            return (node.service_builder(iox.ServiceName.new(f"epcp/{tag}")).publish_subscribe(Payload)
                    .enable_safe_overflow(False).subscriber_max_buffer_size(2).history_size(0)
                    .open_or_create())

        def pixels(ptr: int) -> np.ndarray:
            return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr + 16)).reshape(shape)

        def producer(sync):
            dec = Decoder(path)
            own = np.empty(shape, np.uint8)
            node = iox.NodeBuilder.new().config(cfg).create(iox.ServiceType.Ipc)
            pub = service(node).publisher_builder().backpressure_strategy(
                iox.BackpressureStrategy.RetryUntilDelivered).create()
            sync()  # 1: the service exists
            sync()  # 2: the subscriber is connected
            loop = _Loop()
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                dec.grab()
                dec.retrieve(own)
                s = pub.loan_uninit()
                ptr = s.payload_ptr
                np.copyto(pixels(ptr), own)
                hdr = (ctypes.c_int64 * 2).from_address(ptr)
                hdr[0], hdr[1] = loop.n + 1, now_ns()
                s.assume_init().send()
                loop.n += 1
            out = loop.result("sent", dec.close())
            flag[0] = 1
            sync()  # 3: drained
            pub.delete()
            return out

        def consumer(sync):
            sync()  # 1
            node = iox.NodeBuilder.new().config(cfg).create(iox.ServiceType.Ipc)
            sub = service(node).subscriber_builder().buffer_size(2).create()
            sync()  # 2
            loop = _Loop()
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
                ptr = x.payload_ptr
                _received(loop.n, (ctypes.c_int64 * 2).from_address(ptr)[0], pixels(ptr))
                loop.n += 1
                x = None
            out = loop.result("received")
            sync()  # 3
            sub.delete()
            return out

        def cleanup():
            flag.close()
            C.iox2_cleanup(prefix, root)

        return C.Sides(producer, consumer, cleanup)

    return make


# ---------------------------------------------------------------------------------------------------
# byte-stream peers: a 16-byte header (seq, stamp) then the pixels, decoded into the send buffer


def zmq_case(path: Path, shape: tuple, seconds: float):
    nbytes = int(np.prod(shape))

    def make():
        try:
            import zmq
        except ImportError as e:
            raise C.Skip(f"pyzmq not importable: {e}") from None
        sock = C.tmpdir() / f"zmqcp-{time.monotonic_ns() % 1_000_000}.sock"
        endpoint = f"ipc://{sock}"

        def producer(sync):
            dec = Decoder(path)
            ctx = zmq.Context()
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 2)
            s.setsockopt(zmq.LINGER, 30_000)
            s.bind(endpoint)
            sync()
            sync()
            # zero-copy sends leave from zmq's I/O thread later: three buffers, each refilled only once zmq
            # is done with it (its tracker)
            bufs = [np.empty(16 + nbytes, np.uint8) for _ in range(3)]
            trackers = [None] * 3
            loop = _Loop()
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                j = loop.n % 3
                if trackers[j] is not None:
                    trackers[j].wait()
                buf = bufs[j]
                dec.grab()
                dec.retrieve(buf[16:].reshape(shape))
                hdr = buf[:16].view(np.int64)
                hdr[0], hdr[1] = loop.n + 1, now_ns()
                trackers[j] = s.send(buf, copy=False, track=True)
                loop.n += 1
            out = loop.result("sent", dec.close())
            s.send(b"")
            s.close()
            ctx.term()
            return out

        def consumer(sync):
            ctx = zmq.Context()
            s = ctx.socket(zmq.PULL)
            s.setsockopt(zmq.RCVHWM, 2)
            sync()
            s.connect(endpoint)
            time.sleep(0.05)
            sync()
            loop = _Loop()
            loop.start()
            while True:
                b = s.recv(copy=False).buffer
                if len(b) == 0:
                    break
                _received(loop.n, int(np.frombuffer(b, np.int64, 1)[0]),
                          np.frombuffer(b, np.uint8, nbytes, 16).reshape(shape))
                loop.n += 1
            out = loop.result("received")
            s.close()
            ctx.term()
            return out

        def cleanup():
            C.unlink_quietly(sock)

        return C.Sides(producer, consumer, cleanup)

    return make


def pipe_case(path: Path, shape: tuple, seconds: float):
    nbytes = int(np.prod(shape))

    def make():
        import multiprocessing

        rx, tx = multiprocessing.get_context("fork").Pipe(duplex=False)

        def producer(sync):
            rx.close()
            dec = Decoder(path)
            buf = np.empty(16 + nbytes, np.uint8)
            hdr, pix = buf[:16].view(np.int64), buf[16:].reshape(shape)
            loop = _Loop()
            sync()
            loop.start()
            t_end = loop.t0 + seconds
            while time.perf_counter() < t_end:
                dec.grab()
                dec.retrieve(pix)
                hdr[0], hdr[1] = loop.n + 1, now_ns()
                tx.send_bytes(buf)
                loop.n += 1
            out = loop.result("sent", dec.close())
            tx.send_bytes(b"")
            tx.close()
            return out

        def consumer(sync):
            tx.close()
            buf = bytearray(16 + nbytes)
            hdr = np.frombuffer(buf, np.int64, 2)
            pix = np.frombuffer(buf, np.uint8, nbytes, 16).reshape(shape)
            loop = _Loop()
            sync()
            loop.start()
            while True:
                if rx.recv_bytes_into(buf) == 0:
                    break
                _received(loop.n, int(hdr[0]), pix)
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


def build_cases(clips: list[tuple[str, Path, tuple]], seconds: float) -> list[C.Case]:
    cases = []
    for label, path, shape in clips:
        cases.append(C.Case(f"{label}: edgepipe ring, retrieve into the slot", label, True,
                            edgepipe_case(path, shape, seconds)))
        for name, fn in PEERS:
            cases.append(C.Case(f"{label}: {name}", label, False, fn(path, shape, seconds)))
    return cases


def measure(case: C.Case, a: dict, b: dict) -> dict:
    sent, got = a["sent"], b["received"]
    if sent != got:
        raise RuntimeError(f"lost frames: sent {sent}, received {got}")
    return {"frames": got, "msgs": got, "fps": got / b["elapsed_s"], "elapsed_s": b["elapsed_s"],
            "producer_cpu_us": a["loop_cpu_s"] * 1e6 / max(1, sent),
            "consumer_cpu_us": b["loop_cpu_s"] * 1e6 / max(1, got),
            "retrieve_in_place": a["in_place"], "retrieve_copies": a["copies"],
            "decode_wall_us": a["decode_wall_s"] * 1e6 / max(1, sent)}


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
    args = C.parse_args(__doc__.splitlines()[0], default_seconds=2.0, size_default=None,
                        size_help="unused (the clips set the frame size)")
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
        C.run_and_report(args, env, build_cases(clips, args.seconds), measure, report, timer_note=False)


if __name__ == "__main__":
    main()
