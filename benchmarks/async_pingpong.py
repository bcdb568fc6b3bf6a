"""Awaited ping-pong: edgepipe's asyncio waits against the blocking (park) ring and the asyncio peers
(standalone script).

Two processes pinned to two CPUs bounce a ``--size``-byte message (default 64); side A stamps
``time.perf_counter_ns()`` around each round trip; one-way latency is half of it (HdrHistogram, after a
0.3 s warm-up). Every 1024th echo is compared with what was sent. CPU per message is the user+system time
both processes spent during the measured loop (getrusage RUSAGE_SELF, helper threads included) divided by
the round trips, so a loop that spins cannot pass for a fast one.

Cases (both ends of a case use the same mechanism):
  edgepipe park          RingWriter.write / RingReader.read with wait='park' (the blocking baseline)
  edgepipe hybrid        the same with wait='hybrid' (the blocking default: spin one futex wake, then park)
  edgepipe async stdlib  await write_async / read_async on asyncio's default loop (edgepipe.aio: a bounded
                         spin while the loop has nothing else ready, then an abstract datagram socket per
                         waiter, signalled only while announced)
  edgepipe async uvloop  the same on uvloop
  ... no spin            EDGEPIPE_AIO_SPIN_NS=0: park at once (the wake path alone)
  edgepipe async thread  the helper-thread fallback (EDGEPIPE_AIO_THREAD=1: the wait runs on the futex in
                         the loop's executor, as for a peer in another network namespace)
  asyncio unix stream    asyncio streams over an AF_UNIX socketpair (stdlib / uvloop)
  asyncio.Queue + Pipe   multiprocessing.Pipe; side A's reader thread feeds an asyncio.Queue through
                         call_soon_threadsafe (stdlib / uvloop); side B a blocking Pipe echo

Spin worst case: 1000 records 1 ms apart (every wait outlasts the spin window), the consumer's CPU per
record with and without the spin.

Peer death: SIGKILL of a producer while a task awaits its ring, to PeerClosedError in the task (5 runs per
loop; the goal is under 100 ms).

Fan-in (``--fanin N``, default 1000; 0 skips it): one loop (stdlib, then uvloop) with N tasks, each
awaiting its own ring fed by one other process, 10 rounds of one stamped record per ring. Per record: the
delay from the producer's stamp to the task's resumption (CLOCK_MONOTONIC in both processes); beside it
the loop's own scheduling delay over the same run (how late a task waking every 1 ms resumes), and the
CPU both processes spent per record (``--fanin-gap-ms`` between rounds, default 50).

    python benchmarks/async_pingpong.py                 # all cases, 3 s each, then the fan-in
    python benchmarks/async_pingpong.py --seconds 1 --only edgepipe --fanin 0
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import threading
import time
from array import array

import _common as C

from edgepipe import PeerClosedError, Ring, aio

WARM_NS = 300_000_000
CHECK_MASK = 1023


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _loop_factory(kind: str):
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _run(kind: str, coro_fn):
    loop = _loop_factory(kind)()
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


def _mismatch(i, m, x):
    return C.EchoMismatch(f"round trip {i}: sent {bytes(m[:8]).hex()}, echo {bytes(x[:8]).hex()}")


# ---------------------------------------------------------------------------------------------------
# edgepipe


def park_case(size: int, seconds: float, policy: str = "park"):
    def make():
        ab, ba = Ring.create(capacity=1 << 16), Ring.create(capacity=1 << 16)
        fab, fba = ab.fd, ba.fd

        def ping(sync):
            w, r = Ring.from_fd(fab).writer(policy), Ring.from_fd(fba).reader(policy)
            pool, samples, pc = C.seq_pool(size), array("q"), time.perf_counter_ns
            sync()
            t_warm = pc() + WARM_NS
            t_end = t_warm + int(seconds * 1e9)
            warm_at = i = 0
            c0 = None
            while True:
                m = pool[i & 4095]
                t0 = pc()
                w.write(m)
                x = r.read()
                t1 = pc()
                samples.append(t1 - t0)
                i += 1
                if not i & CHECK_MASK:
                    if x != m:
                        raise _mismatch(i, m, x)
                    if not warm_at and t1 > t_warm:
                        warm_at, c0, i0 = len(samples), _cpu_s(), i
                    if t1 > t_end:
                        break
            out = C.rtt_summary(samples, warm_at, i)
            out.update(cpu_a_s=_cpu_s() - c0, measured=i - i0)
            w.close()
            r.close()
            return out

        def pong(sync):
            r, w = Ring.from_fd(fab).reader(policy), Ring.from_fd(fba).writer(policy)
            sync()
            c0, n = _cpu_s(), 0
            try:
                while True:
                    w.write(r.read())
                    n += 1
            except PeerClosedError:
                pass
            w.close()
            r.close()
            return {"cpu_b_s": _cpu_s() - c0, "echoes": n}

        return C.Sides(ping, pong, lambda: (ab.close(), ba.close()))

    return make


def async_case(size: int, seconds: float, kind: str, thread: bool = False, spin: bool = True):
    def make():
        ab, ba = Ring.create(capacity=1 << 16), Ring.create(capacity=1 << 16)
        fab, fba = ab.fd, ba.fd
        if thread:
            os.environ["EDGEPIPE_AIO_THREAD"] = "1"  # inherited by both forked sides
        if not spin:
            os.environ["EDGEPIPE_AIO_SPIN_NS"] = "0"  # park at once: the wake path alone

        def ping(sync):
            w, r = Ring.from_fd(fab).writer("park"), Ring.from_fd(fba).reader("park")
            pool, samples, pc = C.seq_pool(size), array("q"), time.perf_counter_ns

            async def main():
                sync()
                t_warm = pc() + WARM_NS
                t_end = t_warm + int(seconds * 1e9)
                warm_at = i = i0 = 0
                c0 = None
                wa, ra = w.write_async, r.read_async
                while True:
                    m = pool[i & 4095]
                    t0 = pc()
                    await wa(m)
                    x = await ra()
                    t1 = pc()
                    samples.append(t1 - t0)
                    i += 1
                    if not i & CHECK_MASK:
                        if x != m:
                            raise _mismatch(i, m, x)
                        if not warm_at and t1 > t_warm:
                            warm_at, c0, i0 = len(samples), _cpu_s(), i
                        if t1 > t_end:
                            break
                out = C.rtt_summary(samples, warm_at, i)
                out.update(cpu_a_s=_cpu_s() - c0, measured=i - i0, spins=aio.spin_counts())
                return out

            out = _run(kind, main)
            w.close()
            r.close()
            return out

        def pong(sync):
            r, w = Ring.from_fd(fab).reader("park"), Ring.from_fd(fba).writer("park")

            async def main():
                sync()
                c0, n = _cpu_s(), 0
                wa = w.write_async
                async for x in r:
                    await wa(x)
                    n += 1
                return {"cpu_b_s": _cpu_s() - c0, "echoes": n}

            out = _run(kind, main)
            w.close()
            r.close()
            return out

        def cleanup():
            os.environ.pop("EDGEPIPE_AIO_THREAD", None)
            os.environ.pop("EDGEPIPE_AIO_SPIN_NS", None)
            ab.close()
            ba.close()

        return C.Sides(ping, pong, cleanup)

    return make


# ---------------------------------------------------------------------------------------------------
# peers


def stream_case(size: int, seconds: float, kind: str):
    def make():
        sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def ping(sync):
            sb.close()
            pool, samples, pc = C.seq_pool(size), array("q"), time.perf_counter_ns

            async def main():
                reader, writer = await asyncio.open_unix_connection(sock=sa)
                sync()
                t_warm = pc() + WARM_NS
                t_end = t_warm + int(seconds * 1e9)
                warm_at = i = i0 = 0
                c0 = None
                while True:
                    m = pool[i & 4095]
                    t0 = pc()
                    writer.write(m)
                    x = await reader.readexactly(size)
                    t1 = pc()
                    samples.append(t1 - t0)
                    i += 1
                    if not i & CHECK_MASK:
                        if x != m:
                            raise _mismatch(i, m, x)
                        if not warm_at and t1 > t_warm:
                            warm_at, c0, i0 = len(samples), _cpu_s(), i
                        if t1 > t_end:
                            break
                out = C.rtt_summary(samples, warm_at, i)
                out.update(cpu_a_s=_cpu_s() - c0, measured=i - i0)
                writer.close()
                return out

            return _run(kind, main)

        def pong(sync):
            sa.close()

            async def main():
                reader, writer = await asyncio.open_unix_connection(sock=sb)
                sync()
                c0, n = _cpu_s(), 0
                try:
                    while True:
                        writer.write(await reader.readexactly(size))
                        n += 1
                except (asyncio.IncompleteReadError, ConnectionError):
                    pass
                writer.close()
                return {"cpu_b_s": _cpu_s() - c0, "echoes": n}

            return _run(kind, main)

        def after_start():
            sa.close()
            sb.close()

        return C.Sides(ping, pong, None, after_start)

    return make


def queue_pipe_case(size: int, seconds: float, kind: str):
    import multiprocessing

    def make():
        a, b = multiprocessing.Pipe()

        def ping(sync):
            b.close()
            pool, samples, pc = C.seq_pool(size), array("q"), time.perf_counter_ns

            async def main():
                loop = asyncio.get_running_loop()
                q: asyncio.Queue = asyncio.Queue()

                def pump():  # the usual bridge: a thread blocks on the pipe, the loop gets a queue
                    try:
                        while True:
                            loop.call_soon_threadsafe(q.put_nowait, a.recv_bytes())
                    except (EOFError, OSError):
                        pass

                threading.Thread(target=pump, daemon=True).start()
                sync()
                t_warm = pc() + WARM_NS
                t_end = t_warm + int(seconds * 1e9)
                warm_at = i = i0 = 0
                c0 = None
                while True:
                    m = pool[i & 4095]
                    t0 = pc()
                    a.send_bytes(m)
                    x = await q.get()
                    t1 = pc()
                    samples.append(t1 - t0)
                    i += 1
                    if not i & CHECK_MASK:
                        if x != m:
                            raise _mismatch(i, m, x)
                        if not warm_at and t1 > t_warm:
                            warm_at, c0, i0 = len(samples), _cpu_s(), i
                        if t1 > t_end:
                            break
                out = C.rtt_summary(samples, warm_at, i)
                out.update(cpu_a_s=_cpu_s() - c0, measured=i - i0)
                return out

            out = _run(kind, main)
            a.close()
            return out

        def pong(sync):
            a.close()
            sync()
            c0, n = _cpu_s(), 0
            try:
                while True:
                    b.send_bytes(b.recv_bytes())
                    n += 1
            except (EOFError, OSError):
                pass
            return {"cpu_b_s": _cpu_s() - c0, "echoes": n}

        def after_start():
            a.close()
            b.close()

        return C.Sides(ping, pong, None, after_start)

    return make


# ---------------------------------------------------------------------------------------------------
# fan-in


def fanin(n: int, kind: str, gap_s: float) -> dict:
    import numpy as np

    rings = [Ring.create(capacity=1024) for _ in range(n)]
    readers = [rg.reader() for rg in rings]
    fds = [rg.fd for rg in rings]
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the producer: 10 rounds of one stamped record per ring, gap_s apart
        try:
            writers = [Ring.from_fd(fd).writer() for fd in fds]
            os.read(go_r, 1)
            c0 = _cpu_s()
            for rnd in range(10):
                for w in writers:
                    w.write(time.monotonic_ns().to_bytes(8, "little") + rnd.to_bytes(8, "little"))
                time.sleep(gap_s)
            cpu = _cpu_s() - c0
            for w in writers:
                w.close()
            os.write(res_w, f"{cpu}".encode())
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(res_w)

    async def main():
        late = array("q")
        sched = array("q")

        async def consume(r):
            async for rec in r:
                late.append(time.monotonic_ns() - int.from_bytes(rec[:8], "little"))

        async def ticker(stop):
            while not stop.is_set():
                t = time.monotonic_ns()
                await asyncio.sleep(0.001)
                sched.append(time.monotonic_ns() - t - 1_000_000)

        tasks = [asyncio.ensure_future(consume(r)) for r in readers]
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticker(stop))
        await asyncio.sleep(0.3)
        c0 = _cpu_s()
        os.write(go_w, b"g")
        await asyncio.gather(*tasks)
        cpu = _cpu_s() - c0
        stop.set()
        await tick
        return late, sched, cpu

    late, sched, cpu = _run(kind, main)
    os.waitpid(pid, 0)
    producer_cpu = float(os.read(res_r, 64) or 0)
    os.close(go_w)
    os.close(res_r)
    for rg in rings:
        rg.close()
    la, sc = np.frombuffer(late, np.int64), np.frombuffer(sched, np.int64)
    return {"records": len(la), "expected": 10 * n, "late_p50_us": np.percentile(la, 50) / 1e3,
            "late_p99_us": np.percentile(la, 99) / 1e3, "late_max_us": la.max() / 1e3,
            "sched_p50_us": np.percentile(sc, 50) / 1e3, "sched_p99_us": np.percentile(sc, 99) / 1e3,
            "sched_max_us": sc.max() / 1e3, "consumer_cpu_us_per_record": cpu * 1e6 / max(1, len(la)),
            "producer_cpu_us_per_record": producer_cpu * 1e6 / max(1, len(la))}


# ---------------------------------------------------------------------------------------------------
# the spin's worst case: records paced further apart than the window, so every spin runs out


def paced(kind: str, spin: bool, n: int = 1000, gap_s: float = 0.001) -> float:
    """Consumer CPU us per record awaiting ``n`` records written ``gap_s`` apart by another process (each
    wait outlasts the spin window: what the spin costs when it never pays off)."""
    ring = Ring.create(capacity=1 << 16)
    reader = ring.reader()
    if not spin:
        os.environ["EDGEPIPE_AIO_SPIN_NS"] = "0"
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            w = Ring.from_fd(ring.fd).writer()
            os.read(go_r, 1)
            for i in range(n):
                time.sleep(gap_s)
                w.write(i.to_bytes(8, "little"))
            w.close()
        finally:
            os._exit(0)

    async def main():
        c0 = _cpu_s()
        os.write(go_w, b"g")
        got = 0
        async for _ in reader:
            got += 1
        return (_cpu_s() - c0) * 1e6 / max(1, got)

    try:
        return _run(kind, main)
    finally:
        os.environ.pop("EDGEPIPE_AIO_SPIN_NS", None)
        os.waitpid(pid, 0)
        os.close(go_r)
        os.close(go_w)
        reader.close()
        ring.close()


# ---------------------------------------------------------------------------------------------------
# peer death


def death(kind: str, reps: int = 5) -> list[float]:
    """ms from SIGKILL of the producer to PeerClosedError in the task awaiting its ring, ``reps`` times."""
    import signal

    out = []
    for _ in range(reps):
        ring = Ring.create(capacity=4096)
        reader = ring.reader()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                Ring.from_fd(ring.fd).writer()
                os.write(ready_w, b"r")
                time.sleep(600)
            finally:
                os._exit(0)
        os.read(ready_r, 1)

        async def main(reader=reader, pid=pid):
            task = asyncio.ensure_future(reader.read_async())
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            try:
                await task
            except PeerClosedError:
                return (time.monotonic() - t0) * 1e3
            raise AssertionError("a record arrived from a killed producer")

        out.append(_run(kind, main))
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)
        ring.close()
    return out


# ---------------------------------------------------------------------------------------------------


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0], 3.0,
                        extra=lambda p: (p.add_argument("--fanin", type=int, default=1000,
                                                        help="tasks (and rings) of the fan-in run; 0 skips it"),
                                         p.add_argument("--fanin-gap-ms", type=float, default=50.0,
                                                        help="pause between the fan-in's rounds")))
    env = C.print_header("async_pingpong: awaited 64 B ping-pong across two processes", args)
    s, t = args.size, args.seconds
    cases = [
        C.Case("edgepipe park (blocking)", "blocking", True, park_case(s, t)),
        C.Case("edgepipe hybrid (blocking)", "blocking", True, park_case(s, t, "hybrid")),
        C.Case("edgepipe async stdlib", "async", True, async_case(s, t, "stdlib")),
        C.Case("edgepipe async uvloop", "async", True, async_case(s, t, "uvloop")),
        C.Case("edgepipe async stdlib no spin", "async", True, async_case(s, t, "stdlib", spin=False)),
        C.Case("edgepipe async uvloop no spin", "async", True, async_case(s, t, "uvloop", spin=False)),
        C.Case("edgepipe async thread (fallback)", "async", True, async_case(s, t, "stdlib", thread=True)),
        C.Case("asyncio unix stream stdlib", "async", False, stream_case(s, t, "stdlib")),
        C.Case("asyncio unix stream uvloop", "async", False, stream_case(s, t, "uvloop")),
        C.Case("asyncio.Queue + Pipe stdlib", "async", False, queue_pipe_case(s, t, "stdlib")),
        C.Case("asyncio.Queue + Pipe uvloop", "async", False, queue_pipe_case(s, t, "uvloop")),
    ]

    def measure(case, a, b):
        out = dict(a)
        n = max(1, a["measured"])
        # side B's CPU covers its whole run (warm-up included): scaled to the measured share of its echoes
        share = a["measured"] / max(1, b["echoes"])
        out["cpu_us_per_msg"] = 1e6 * (a["cpu_a_s"] + b["cpu_b_s"] * share) / n
        return out

    def report(rows):
        ok = [r for r in rows if r["ok"]]
        print()
        print(C.table(["case", "p50 us", "p99 us", "p99.9 us", "CPU us/msg", "round trips"],
                      [[r["case"], f"{r['p50_ns'] / 1e3:.1f}", f"{r['p99_ns'] / 1e3:.1f}",
                        f"{r['p999_ns'] / 1e3:.1f}", f"{r['cpu_us_per_msg']:.1f}", r["round_trips"]]
                       for r in ok]))
        by = {r["case"]: r for r in ok}
        goals = C.Goals()
        park = by.get("edgepipe park (blocking)")
        for name, case, limit in (("stdlib p50 <= 1.5x park p50", "edgepipe async stdlib", 1.5),
                                  ("uvloop p50 <= park p50", "edgepipe async uvloop", 1.0)):
            r = by.get(case)
            if park is None or r is None:
                goals.line(name, None, "a case is missing")
                continue
            ratio = r["p50_ns"] / park["p50_ns"]
            goals.line(name, ratio <= limit, f"{ratio:.2f}x ({r['p50_ns'] / 1e3:.1f} vs {park['p50_ns'] / 1e3:.1f} us"
                       f"; CPU/msg {r['cpu_us_per_msg']:.1f} vs {park['cpu_us_per_msg']:.1f} us)")
        for r in ok:
            if r.get("spins") and r["spins"][0]:
                print(f"  spins of side A, {r['case']}: {r['spins'][1]} of {r['spins'][0]} ended by the echo")
        for r in ok:
            if park is not None and (not r["edgepipe"] or "no spin" in r["case"] or "hybrid" in r["case"]):
                print(f"  ratio {r['case']}: p50 {r['p50_ns'] / park['p50_ns']:.2f}x park")
        return goals

    C.run_and_report(args, env, cases, measure, report)
    print("\nspin worst case: 1000 records 1 ms apart from another process, consumer CPU us per record")
    for kind in ("stdlib", "uvloop"):
        print(f"  {kind:<7} with the spin {paced(kind, True):.1f}   without {paced(kind, False):.1f}")
    print("\npeer death: SIGKILL of the producer -> PeerClosedError in the awaiting task, ms (5 runs)")
    for kind in ("stdlib", "uvloop"):
        ms = death(kind)
        print(f"  {kind:<7} " + " ".join(f"{x:.2f}" for x in ms) + f"   max {max(ms):.2f} ms (goal < 100)")
    if args.fanin:
        print(f"\nfan-in: one loop, {args.fanin} tasks each awaiting its own ring, 10 records each, rounds "
              f"{args.fanin_gap_ms:g} ms apart (delays in us: producer stamp -> task resumed; loop = a 1 ms sleeper's oversleep)")
        rows = []
        for kind in ("stdlib", "uvloop"):
            r = fanin(args.fanin, kind, args.fanin_gap_ms / 1e3)
            rows.append([kind, f"{r['records']}/{r['expected']}", f"{r['late_p50_us']:.0f}", f"{r['late_p99_us']:.0f}",
                         f"{r['late_max_us']:.0f}", f"{r['sched_p50_us']:.0f}", f"{r['sched_p99_us']:.0f}",
                         f"{r['sched_max_us']:.0f}", f"{r['consumer_cpu_us_per_record']:.1f}",
                         f"{r['producer_cpu_us_per_record']:.1f}"])
        print(C.table(["loop", "records", "p50", "p99", "max", "loop p50", "loop p99", "loop max",
                       "consumer CPU us/rec", "producer CPU us/rec"], rows))


if __name__ == "__main__":
    main()
