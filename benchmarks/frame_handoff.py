"""1920x1080x3 uint8 frames between two pinned processes: edgepipe frames against what a user would pick
instead (standalone).

A producer and a consumer, pinned to two CPUs (``--cpus``, default 0,1), move frames for ``--seconds``.
The consumer touches every frame (reads one byte per 64-byte cache line, a strided sum) and checks its
sequence number. Every transport is lossless with room for two frames in flight (ring of 16 MB, two shm
slots, iceoryx2 buffer 2, zmq high-water mark 2, faster_fifo of two frames), so frames/s is the rate the
pair sustains and the handoff (producer's stamp just before it publishes -> consumer has the frame) shows
the queueing plus the wake-up.

Workloads (each for every transport that can do it):
  hot   one cache-resident source frame copied into the transport per frame (write_frame / send);
  cold  8 rotating source frames (50 MB, more than the 32 MB L3), so the copy reads DRAM;
  fill  the producer makes each frame in place (an add over a cache-resident base: a stand-in for a
        decoder writing its output) straight into the transport's buffer where it has one
        (edgepipe claim_frame, shm slots, iceoryx2 loans), else into a private buffer it then sends.
Peers: multiprocessing.shared_memory slots + posix_ipc semaphores, iceoryx2 publish-subscribe (loaned
samples), multiprocessing.Pipe (send_bytes / recv_bytes_into), pyzmq PUSH/PULL ipc (zero-copy send and
recv), faster_fifo (put / get of the array).

Latest-only slot: the producer publishes frames as fast as it can while a slower consumer (extra 5 ms per
frame) takes the newest: age of the frame it gets (now - publish stamp) p50/p99 and the read_frame call
time, next to a lossless ring with the same slow consumer.

    python benchmarks/frame_handoff.py --seconds 2            # all cases (~1 min)
    python benchmarks/frame_handoff.py --seconds 2 --only hot
"""

from __future__ import annotations

import ctypes
import time
from array import array

import _common as C
import numpy as np

from edgepipe import FrameReader, FrameWriter, LatestSlot, PeerClosedError, Ring, now_ns

H, W = 1080, 1920
SHAPE = (H, W, 3)
NBYTES = H * W * 3
RING_CAPACITY = 1 << 24  # max payload 8 MB: two 6.2 MB frames in flight
SLOW_MS = 5.0


def sources(mode: str) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    n = 8 if mode == "cold" else 1
    return [rng.integers(0, 256, SHAPE, np.uint8) for _ in range(n)]


def touch(a: np.ndarray) -> int:
    """Read one byte per cache line of the frame (what a consumer that looks at every pixel row costs at least)."""
    return int(a.reshape(-1)[::64].sum(dtype=np.uint64))


def _fill(dst: np.ndarray, base: np.ndarray, k: int) -> None:
    np.add(base, np.uint8(k & 255), out=dst)


def _put_pixels(pix: np.ndarray, srcs: list[np.ndarray], mode: str, i: int) -> None:
    """Frame ``i``'s pixels into ``pix``: a cheap per-frame change of one source ("fill"), or a copy of
    the next prepared source (the copy into the message, as write_frame does)."""
    if mode == "fill":
        _fill(pix, srcs[0], i)
    else:
        np.copyto(pix, srcs[i % len(srcs)])


def _stamp(hdr, i: int) -> None:
    """Frame ``i``'s header: its seq (from 1) and the publish stamp."""
    hdr[0] = i + 1
    hdr[1] = now_ns()


def _received(lat: array, n: int, seq: int, stamp: int, pix: np.ndarray) -> None:
    """The consumer's work on frame ``n``: latency from its stamp, read every pixel row, check its seq."""
    lat.append(now_ns() - stamp)
    touch(pix)
    if seq != n + 1:
        raise AssertionError(f"frame {n}: seq {seq}")


def _send_framed(mode: str, seconds: float, sync, send) -> int:
    """Producer of the byte-stream peers: each frame's pixels and header into one private framed buffer,
    then ``send(buf)``, for ``seconds``. Returns the frames sent."""
    buf, srcs, pix = _framed(sources(mode))
    hdr = buf[:16].view(np.int64)
    sync()
    i = 0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        _put_pixels(pix, srcs, mode, i)
        _stamp(hdr, i)
        send(buf)
        i += 1
    return i


def _result(n: int, t0: float, lat: array, extra: dict | None = None) -> dict:
    out = {"received": n, "elapsed_s": time.perf_counter() - t0, "lat": lat}
    if extra:
        out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------------
# edgepipe


def edgepipe_case(mode: str, seconds: float, slow_ms: float = 0.0):
    def make():
        ring = Ring.create(capacity=RING_CAPACITY)

        def producer(sync):
            srcs = sources(mode)
            w = FrameWriter(ring.writer())
            sync()
            t_end = time.perf_counter() + seconds
            i = 0
            if mode == "fill":
                base = srcs[0]
                while time.perf_counter() < t_end:
                    with w.claim_frame(SHAPE, timeout_s=30) as arr:
                        _fill(arr, base, i)
                    i += 1
            else:
                k = len(srcs)
                while time.perf_counter() < t_end:
                    w.write_frame(srcs[i % k], timeout_s=30)
                    i += 1
            w.close()
            return {"sent": i}

        def consumer(sync):
            r = FrameReader(ring.reader())
            lat = array("q")
            sync()
            n = 0
            t0 = time.perf_counter()
            while True:
                try:
                    ctx = r.read_frame(timeout_s=30)
                except PeerClosedError:
                    break
                with ctx as f:
                    _received(lat, n, f.seq, f.publish_ns, f.array)
                n += 1
                if slow_ms:
                    time.sleep(slow_ms / 1e3)
            return _result(n, t0, lat)

        return C.Sides(producer, consumer, ring.close)

    return make


def latest_case(seconds: float, slow_ms: float):
    def make():
        slot = LatestSlot.create(None, NBYTES)

        def producer(sync):
            base = sources("hot")[0]
            w = slot.writer()
            sync()
            t_end = time.perf_counter() + seconds
            i = 0
            while time.perf_counter() < t_end:
                c = w.claim_frame(SHAPE)
                with c as arr:
                    _fill(arr, base, i)
                i += 1
            w.close()
            return {"sent": i}

        def consumer(sync):
            r = slot.reader()
            lat, call = array("q"), array("q")
            sync()
            n = 0
            t0 = time.perf_counter()
            while True:
                t_call = now_ns()
                try:
                    ctx = r.read_frame(timeout_s=30)
                except PeerClosedError:
                    break
                with ctx as f:
                    t = now_ns()
                    lat.append(t - f.publish_ns)
                    call.append(t - t_call)
                    touch(f.array)
                n += 1
                time.sleep(slow_ms / 1e3)
            s = slot.status()
            return _result(n, t0, lat, {"call": call, "published": s.published, "overwritten": s.overwritten,
                                        "late_wakeups": s.late_wakeups, "parks": s.consumer_parks})

        return C.Sides(producer, consumer, slot.close)

    return make


# ---------------------------------------------------------------------------------------------------
# shared_memory + posix_ipc semaphores


def shm_sem_case(mode: str, seconds: float):
    """Two frame slots in a multiprocessing.shared_memory block, a counting semaphore pair (free/full).
    Slot layout: 64-byte header (seq, stamp), then the pixels; the consumer reads in place."""

    def make():
        try:
            import posix_ipc
        except ImportError as e:
            raise C.Skip(f"posix_ipc not importable: {e}") from None

        slots = C.ShmFrameSlots(2, SHAPE)
        nslots = slots.nslots
        tag = f"/epbf{time.monotonic_ns() % 10_000_000}"
        free = posix_ipc.Semaphore(tag + "f", posix_ipc.O_CREX, initial_value=nslots)
        full = posix_ipc.Semaphore(tag + "u", posix_ipc.O_CREX, initial_value=0)

        def producer(sync):
            srcs = sources(mode)
            hdrs, pix = slots.attach()
            sync()
            t_end = time.perf_counter() + seconds
            i = 0
            while time.perf_counter() < t_end:
                free.acquire()
                s = i % nslots
                _put_pixels(pix[s], srcs, mode, i)
                _stamp(hdrs[s], i)
                full.release()
                i += 1
            free.acquire()
            hdrs[i % nslots][0] = -1  # end marker
            full.release()
            del hdrs, pix
            slots.detach()
            return {"sent": i}

        def consumer(sync):
            hdrs, pix = slots.attach()
            lat = array("q")
            sync()
            n = 0
            t0 = time.perf_counter()
            while True:
                full.acquire()
                s = n % nslots
                seq = int(hdrs[s][0])
                if seq == -1:
                    break
                _received(lat, n, seq, int(hdrs[s][1]), pix[s])
                free.release()
                n += 1
            out = _result(n, t0, lat)
            del hdrs, pix
            slots.detach()
            return out

        def cleanup():
            for sem in (free, full):
                sem.unlink()
                sem.close()
            slots.cleanup()

        return C.Sides(producer, consumer, cleanup)

    return make


# ---------------------------------------------------------------------------------------------------
# iceoryx2


def iceoryx2_case(mode: str, seconds: float):
    """iceoryx2 publish-subscribe of a 6.2 MB ctypes payload (16-byte header + pixels), lossless
    (RetryUntilDelivered, buffer 2): loan_uninit, fill or copy into the loan, send; the subscriber polls
    receive() and reads in place. Stop: a shared flag, read when receive() finds nothing."""

    def make():
        ch = C.Iox2PubSub("epbf", f"fr{time.monotonic_ns() % 1_000_000}", C.frame_payload(NBYTES), 2)
        flag = ch.flag
        pixels = C.pixel_view(SHAPE)

        def producer(sync):
            srcs = sources(mode)
            pub = ch.publisher()
            sync()  # 1: the service exists
            sync()  # 2: the subscriber is connected
            i = 0
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                s = pub.loan_uninit()
                ptr = s.payload_ptr
                _put_pixels(pixels(ptr), srcs, mode, i)
                _stamp((ctypes.c_int64 * 2).from_address(ptr), i)
                s.assume_init().send()
                i += 1
            flag[0] = 1
            sync()  # 3: drained
            pub.delete()
            return {"sent": i}

        def consumer(sync):
            sync()  # 1
            sub = ch.subscriber()
            sync()  # 2
            lat = array("q")
            n = 0
            t0 = time.perf_counter()
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
                hdr = (ctypes.c_int64 * 2).from_address(ptr)
                _received(lat, n, hdr[0], hdr[1], pixels(ptr))
                n += 1
                x = None
            out = _result(n, t0, lat)
            sync()  # 3
            sub.delete()
            return out

        return C.Sides(producer, consumer, ch.cleanup)

    return make


# ---------------------------------------------------------------------------------------------------
# byte-stream peers: the frame travels as bytes with a 16-byte header (seq, stamp) in front


def _framed(srcs: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """A private send buffer: 16-byte header then pixels (what a byte transport needs to send in one go)."""
    buf = np.empty(16 + NBYTES, np.uint8)
    return buf, srcs, buf[16:].reshape(SHAPE)


def pipe_case(mode: str, seconds: float):
    """multiprocessing.Pipe: send_bytes of the framed buffer; recv_bytes_into a preallocated buffer."""

    def make():
        import multiprocessing

        rx, tx = multiprocessing.get_context("fork").Pipe(duplex=False)

        def producer(sync):
            rx.close()
            i = _send_framed(mode, seconds, sync, tx.send_bytes)
            tx.send_bytes(b"")
            tx.close()
            return {"sent": i}

        def consumer(sync):
            tx.close()
            buf = bytearray(16 + NBYTES)
            hdr = np.frombuffer(buf, np.int64, 2)
            pix = np.frombuffer(buf, np.uint8, NBYTES, 16).reshape(SHAPE)
            lat = array("q")
            sync()
            n = 0
            t0 = time.perf_counter()
            while True:
                got = rx.recv_bytes_into(buf)
                if got == 0:
                    break
                _received(lat, n, int(hdr[0]), int(hdr[1]), pix)
                n += 1
            return _result(n, t0, lat)

        def after_start():
            rx.close()
            tx.close()

        return C.Sides(producer, consumer, None, after_start)

    return make


def zmq_case(mode: str, seconds: float):
    """pyzmq PUSH/PULL over ipc://, send(copy=False) of the framed buffer and recv(copy=False) (no copy
    in Python on either side), high-water marks of 2 messages."""

    def make():
        pipe = C.ZmqPushPull("zmqf", hwm=2)

        def producer(sync):
            srcs = sources(mode)
            ctx, s = pipe.push()
            sync()
            sync()
            # Zero-copy sends go out from the I/O thread later: rotate three buffers and wait for a
            # buffer's tracker (zmq done with it) before refilling it.
            bufs = [np.empty(16 + NBYTES, np.uint8) for _ in range(3)]
            trackers = [None] * 3
            i = 0
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                j = i % 3
                if trackers[j] is not None:
                    trackers[j].wait()
                buf = bufs[j]
                _put_pixels(buf[16:].reshape(SHAPE), srcs, mode, i)
                _stamp(buf[:16].view(np.int64), i)
                trackers[j] = s.send(buf, copy=False, track=True)
                i += 1
            s.send(b"")
            s.close()
            ctx.term()
            return {"sent": i}

        def consumer(sync):
            ctx, s = pipe.pull()
            sync()
            s.connect(pipe.endpoint)
            time.sleep(0.05)
            sync()
            lat = array("q")
            n = 0
            t0 = time.perf_counter()
            while True:
                m = s.recv(copy=False)
                b = m.buffer
                if len(b) == 0:
                    break
                hdr = np.frombuffer(b, np.int64, 2)
                _received(lat, n, int(hdr[0]), int(hdr[1]), np.frombuffer(b, np.uint8, NBYTES, 16).reshape(SHAPE))
                n += 1
            out = _result(n, t0, lat)
            s.close()
            ctx.term()
            return out

        return C.Sides(producer, consumer, pipe.cleanup)

    return make


def faster_fifo_case(mode: str, seconds: float):
    """faster_fifo.Queue of two frames' bytes: put(framed buffer) (pickled) / get()."""

    def make():
        try:
            import faster_fifo
        except ImportError as e:
            raise C.Skip(f"faster_fifo not importable: {e}") from None
        q = faster_fifo.Queue(max_size_bytes=2 * (NBYTES + 4096))

        def producer(sync):
            i = _send_framed(mode, seconds, sync, lambda buf: q.put(buf, timeout=30))
            q.put(None, timeout=30)
            return {"sent": i}

        def consumer(sync):
            lat = array("q")
            sync()
            n = 0
            t0 = time.perf_counter()
            while True:
                buf = q.get(timeout=30)
                if buf is None:
                    break
                hdr = buf[:16].view(np.int64)
                _received(lat, n, int(hdr[0]), int(hdr[1]), buf[16:].reshape(SHAPE))
                n += 1
            return _result(n, t0, lat)

        return C.Sides(producer, consumer)

    return make


# ---------------------------------------------------------------------------------------------------
# driver


PEERS = [
    ("shm slots + posix_ipc semaphores", shm_sem_case),
    ("iceoryx2 pub/sub (loans)", iceoryx2_case),
    ("multiprocessing.Pipe", pipe_case),
    ("pyzmq PUSH/PULL ipc, zero-copy", zmq_case),
    ("faster_fifo put/get", faster_fifo_case),
]


def build_cases(seconds: float) -> list[C.Case]:
    cases = []
    for mode in ("hot", "cold", "fill"):
        what = "claim_frame fill" if mode == "fill" else "write_frame"
        cases.append(C.Case(f"{mode}: edgepipe ring {what}", mode, True, edgepipe_case(mode, seconds)))
        for name, fn in PEERS:
            cases.append(C.Case(f"{mode}: {name}", mode, False, fn(mode, seconds)))
    cases.append(C.Case(f"slow: edgepipe latest slot (consumer +{SLOW_MS:g} ms)", "slow", True,
                        latest_case(seconds, SLOW_MS)))
    cases.append(C.Case(f"slow: edgepipe ring (consumer +{SLOW_MS:g} ms)", "slow", True,
                        edgepipe_case("fill", seconds, SLOW_MS)))
    return cases


def measure(case: C.Case, a: dict, b: dict) -> dict:
    sent, got = a["sent"], b["received"]
    if case.group != "slow" and sent != got:
        raise RuntimeError(f"lost frames: sent {sent}, received {got}")
    out = {"frames": got, "sent": sent, "fps": got / b["elapsed_s"], "elapsed_s": b["elapsed_s"]}
    p = C.percentiles(b["lat"], halve=False)
    out.update({f"lat_{k}": v for k, v in p.items()})
    if "call" in b:
        out.update({f"call_{k}": v for k, v in C.percentiles(b["call"], halve=False).items()})
        out.update(published=b["published"], overwritten=b["overwritten"], late_wakeups=b["late_wakeups"],
                   parks=b["parks"])
    return out


def report(rows: list[dict]) -> dict:
    best = {}
    for g in ("hot", "cold", "fill"):
        ps = [r for r in rows if r["ok"] and not r["edgepipe"] and r["group"] == g]
        if ps:
            best[g] = max(ps, key=lambda r: r["fps"])
    out = []
    for r in rows:
        if not r["ok"]:
            out.append([r["case"], "FAILED: " + r["error"].splitlines()[0][:80]] + [""] * 6)
            continue
        bg = best.get(r["group"])
        out.append([r["case"], f"{r['fps']:,.0f}", f"{r['fps'] * NBYTES / 1e9:.2f}",
                    f"{r['lat_p50_ns'] / 1e3:,.0f}", f"{r['lat_p99_ns'] / 1e3:,.0f}",
                    f"{r['fps'] / bg['fps']:.2f}x" if bg else "", f"{r['frames']:,}", r["pair"]])
    print()
    print("1920x1080x3 frames, consumer touches one byte per cache line; handoff = publish stamp -> consumer "
          "has the frame; ratio = fps over the best peer of the same workload")
    print(C.table(["case", "frames/s", "GB/s", "handoff p50 us", "p99 us", "vs best peer", "frames", "pair"], out))
    for r in rows:
        if r["ok"] and "call_p50_ns" in r:
            print(f"  {r['case']}: published {r['published']:,}, overwritten {r['overwritten']:,}, delivered "
                  f"{r['frames']:,}; read_frame call p50 {r['call_p50_ns'] / 1e3:.1f} us p99 "
                  f"{r['call_p99_ns'] / 1e3:.1f} us; consumer parks {r['parks']:,}, lost wakeups "
                  f"{r['late_wakeups']}")
    g = C.Goals("goals")
    for mode in ("hot", "cold", "fill"):
        e = next((r for r in rows if r["ok"] and r["edgepipe"] and r["group"] == mode), None)
        bg = best.get(mode)
        missing = C.peers_not_run(rows, mode)
        if missing:
            g.skip(f"{mode}: >= 1.25x the best peer", missing)
        elif e and bg:
            ratio = e["fps"] / bg["fps"]
            g.line(f"{mode}: >= 1.25x the best peer", ratio >= 1.25,
                   f"{e['fps']:,.0f} vs {bg['fps']:,.0f} fps ({bg['case']}) = {ratio:.2f}x "
                   f"(probes {e['pair']} / {bg['pair']})")
        else:
            g.line(f"{mode}: >= 1.25x the best peer", None, "a case is missing")
    lt = next((r for r in rows if r["ok"] and "latest" in r["case"]), None)
    if lt:
        g.line("latest slot, slow consumer: handoff p99 < 1 ms", lt["lat_p99_ns"] < 1e6,
               f"age of the frame taken p50 {lt['lat_p50_ns'] / 1e3:.0f} us, p99 {lt['lat_p99_ns'] / 1e3:.0f} us "
               f"(read_frame call p99 {lt['call_p99_ns'] / 1e3:.1f} us)")
    else:
        g.line("latest slot, slow consumer: handoff p99 < 1 ms", None, "missing")
    return g


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0], default_seconds=2.0, size_default=None,
                        size_help="unused (frames are 1920x1080x3)")
    env = C.print_header("edgepipe frame handoff: 1920x1080x3 uint8, two pinned processes", args)
    C.run_and_report(args, env, build_cases(args.seconds), measure, report, timer_note=False)


if __name__ == "__main__":
    main()
