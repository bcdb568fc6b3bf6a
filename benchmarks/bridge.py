"""Bridges across two network namespaces joined by a veth pair (root; standalone script, not run by pytest).

Cases (one run, every peer measured in it, ratios reported):
  rec-bare     1 KB records, zenoh-python alone: a publisher in namespace A puts each with its send time
               (CLOCK_MONOTONIC_RAW, edgepipe.clock.now_ns: one kernel, so one clock) at ``--rate``/s; a
               subscriber in B takes the receive time in its callback, which runs on zenoh's receiving thread
               as the bridge's do (``Callback(indirect=False)``). One-way latency percentiles. Reliable,
               congestion control BLOCK, not express: a lossless bridge link's settings.
  rec-bare-express   the same with ``express=True`` (zenoh sends each sample at once, no batching).
  rec-bare-indirect  the same with zenoh-python's default callback (a queue and a Python thread of its own).
  rec-bare-traced    rec-bare again, also timing the put() call itself (compare the bridge's, below).
  rec-ring     no zenoh: a producer process and a consumer process on one ring, as at either end of
               rec-bridge: the price of one ring hand-off at this rate on this machine. bare + 2 x ring is
               the floor under rec-bridge while the stages are processes of their own.
  rec-bridge   the same records through edgepipe as ``edgepipe run`` places the stages: a producer process in
               A writing a ring (Outlet.emit stamps the capture time), the bridge stage's process publishing
               it, the bridge stage's process in B feeding a ring, a consumer process in B (Inlet.receive).
               One-way latency = receive time - capture time as the producer stamped it (a copy of the stamp
               rides in the payload: the record's own capture stamp is mapped by the receiving bridge's clock
               estimate, whose error would be part of the number; that p50 is shown alongside). The
               BridgeStage's default ``express``.
  rec-bridge-express / rec-bridge-batched   the same with ``express`` set on / off explicitly.
  rec-bridge-1proc  the same with producer and consumer as threads of the bridge stages' processes (they
               then share the GIL with the bridge: each ring hand-off also waits for it).
  rec-bridge-noclock  rec-bridge with the receiving end's clock pings off (``clock_period_ms=0``): what the
               ping bursts (8 exchanges every 20 ms, answered in both processes' zenoh callbacks) cost the records.
  rec-bridge-traced  rec-bridge with stamps at every hop (``--trace``; the sending bridge's take of the record
               and its put() call, the receiving bridge's sample callback entry and exit, the consumer): p50
               per hop, records matched by sequence number.
  frames       1080p BGR uint8 frames (6.2 MB) written as fast as the lossless link takes them (FrameWriter
               into a ring, bridged), read in B (FrameReader): frames per second over ``--seconds``.
  clock        the receiving bridge's clock estimate when the sender's stamps are shifted by 3.7 s and +250 ppm:
               its error bound, and its actual error against that known truth.
  rtt          the floor under that bound: bursts of ``--burst`` zenoh exchanges (pub/sub ping -> pong, then a
               queryable), answered and chained inside zenoh's callbacks; round trip less the far turnaround
               by position in the burst.

  stamps       (only when asked: ``--only stamps``) where the clock bound's floor comes from: the same
               burst exchanges stamped by Python (before the put, on the callback's entry) and by zenoh's
               timestamp instrumentation (a session timestamp callback returning this box's
               CLOCK_MONOTONIC_RAW: SEND inside put, RECEIVE on zenoh's receiving thread), on the default
               transport and on ``transport/unicast/lowlatency`` (qos off), and plain UDP between two Python
               threads as the reference: round trip less turnaround, each one-way part (one kernel clock here),
               the gaps between the two kinds of stamp, the cost of an instrumented put, and the clock estimate
               (bound, actual error) each kind of stamp gives when the far end's stamps are shifted.

``--compare SRC`` runs the bridge cases (every rec-bridge row, clock) a second time with edgepipe imported
from another checkout's ``src`` (built in place): before and after a change in one run.

    sudo python benchmarks/bridge.py [--n 5000] [--rate 1000] [--seconds 5] [--only rec,frames,clock,rtt,stamps]
                                     [--compare OTHER/src] [--json OUT] [--port 7460] [--tag bench] [--netns-prefix ep]
                                     [--params '{"clock_period_ms": 0}']

edgepipe is imported as ``python`` finds it: run with ``PYTHONPATH=$PWD/src`` to measure this checkout.

One piece: every case's roles run as this same script inside the namespaces (``--role``), so the roles, the
namespace setup and the report share one file the child processes can re-execute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
from _netns import ADDR_A, Netns

PORT = 7460  # --port moves it (and the stamps case's UDP reference's port, PORT + 1)
ZCONF = ('{mode: "peer", %s: {endpoints: ["tcp/%s:%d"]}, scouting: {multicast: {enabled: false}}, '
         'transport: {shared_memory: {enabled: false}}}')
ZCONF_LL = ('{mode: "peer", %s: {endpoints: ["tcp/%s:%d"]}, scouting: {multicast: {enabled: false}}, '
            'transport: {shared_memory: {enabled: false}, unicast: {lowlatency: true, qos: {enabled: false}}}}')


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


# ---------------------------------------------------------------------------------------------------------
# roles, each run inside a namespace as ``bridge.py --role NAME``

def role_bare_pub(a) -> None:
    import zenoh

    from edgepipe.clock import now_ns
    with zenoh.open(zenoh.Config.from_json5(ZCONF % ("listen", ADDR_A, a.port))) as z:
        pub = z.declare_publisher("bench/rec", congestion_control=zenoh.CongestionControl.BLOCK,
                                  reliability=zenoh.Reliability.RELIABLE, express=a.express == "on")
        while not pub.matching_status.matching:
            time.sleep(0.01)
        time.sleep(0.5)
        pad = bytes(a.size - 16)
        puts = []
        for i in range(a.n):
            t0 = now_ns()
            pub.put(i.to_bytes(8, "little") + t0.to_bytes(8, "little") + pad)
            if a.trace:
                puts.append((i, t0, now_ns()))
            time.sleep(1 / a.rate)
        time.sleep(1)
    if a.trace:
        Path(a.trace).write_text(json.dumps({"puts": puts}))


def role_bare_sub(a) -> None:
    import zenoh

    from edgepipe.clock import now_ns
    lat, done = [], threading.Event()

    def cb(s):
        t = now_ns()
        b = s.payload.to_bytes()
        lat.append(t - int.from_bytes(b[8:16], "little"))
        if len(lat) >= a.n:
            done.set()

    with zenoh.open(zenoh.Config.from_json5(ZCONF % ("connect", ADDR_A, a.port))) as z:
        # the callback style the bridge uses (edgepipe.bridge.session): on zenoh's receiving thread, unless
        # --indirect asks for zenoh-python's default (a queue and a Python thread of its own)
        sub = z.declare_subscriber("bench/rec", zenoh.handlers.Callback(cb, indirect=a.indirect))
        done.wait(120)
        sub.undeclare()
    print(json.dumps({"lat_ns": lat}))


def run_bursts(a, left: list, done: threading.Event, send) -> None:
    """Ping side of the burst cases: ``a.n // a.burst`` bursts, each chained by the pong callbacks (which
    count ``left`` down and set ``done``), 20 ms apart."""
    for _ in range(a.n // a.burst):
        left[0] = a.burst
        done.clear()
        send()
        done.wait(2)
        time.sleep(0.02)


def role_rtt_echo(a) -> None:
    """Answers pings (a subscriber putting a pong, and a queryable replying) inside zenoh's callbacks, stamping
    t2 on arrival and t3 just before the answer goes out; runs until stdin closes."""
    import zenoh

    from edgepipe.clock import now_ns
    with zenoh.open(zenoh.Config.from_json5(ZCONF % ("listen", ADDR_A, a.port))) as z:
        pong = z.declare_publisher("bench/pong", express=True)

        def on_ping(s):
            t2 = now_ns()
            b = s.payload.to_bytes()
            pong.put(b + t2.to_bytes(8, "little") + now_ns().to_bytes(8, "little"))

        def on_query(q):
            t2 = now_ns()
            b = q.payload.to_bytes()
            q.reply("bench/q", b + t2.to_bytes(8, "little") + now_ns().to_bytes(8, "little"))

        subs = [z.declare_subscriber("bench/ping", zenoh.handlers.Callback(on_ping, indirect=False)),
                z.declare_queryable("bench/q", zenoh.handlers.Callback(on_query, indirect=False))]
        sys.stdin.read()
        for x in subs:
            x.undeclare()


def _rtt_bursts(z, ping, mode: str, a) -> list[list[int]]:
    import zenoh

    from edgepipe.clock import now_ns
    delays: list[list[int]] = [[] for _ in range(a.burst)]
    left, done = [0], threading.Event()

    def answer(b: bytes, t4: int) -> None:
        t1, t2, t3 = (int.from_bytes(b[i:i + 8], "little") for i in (0, 8, 16))
        delays[a.burst - left[0]].append((t4 - t1) - (t3 - t2))
        left[0] -= 1
        if left[0]:
            send()
        else:
            done.set()

    def on_pong(s) -> None:
        answer(s.payload.to_bytes(), now_ns())

    def on_reply(r) -> None:
        t4 = now_ns()
        if r.ok is not None:
            answer(r.ok.payload.to_bytes(), t4)

    cb = zenoh.handlers.Callback(on_reply, indirect=False)

    def send() -> None:
        if mode == "pubsub":
            ping.put(now_ns().to_bytes(8, "little"))
        else:
            z.get("bench/q", cb, payload=now_ns().to_bytes(8, "little"))

    sub = z.declare_subscriber("bench/pong", zenoh.handlers.Callback(on_pong, indirect=False))
    time.sleep(0.2)
    run_bursts(a, left, done, send)
    sub.undeclare()
    return delays


def role_rtt_ping(a) -> None:
    """Bursts of ``--burst`` exchanges every 20 ms, each next one sent from the callback that took the
    previous answer (zenoh's threads stay awake through a burst): pub/sub ping -> pong, then a queryable.
    Prints every exchange's round trip less the far end's turnaround, by position in the burst."""
    import zenoh
    with zenoh.open(zenoh.Config.from_json5(ZCONF % ("connect", ADDR_A, a.port))) as z:
        ping = z.declare_publisher("bench/ping", express=True)
        while not ping.matching_status.matching:
            time.sleep(0.01)
        time.sleep(0.5)
        res = {mode: _rtt_bursts(z, ping, mode, a) for mode in ("pubsub", "query")}
    print(json.dumps(res))


def _zconf(a, side: str):
    import zenoh
    return zenoh.Config.from_json5((ZCONF_LL if a.lowlatency else ZCONF) % (side, ADDR_A, PORT))


def _stamper(threads: set):
    """zenoh's timestamp callback: this box's CLOCK_MONOTONIC_RAW ns (8 bytes), noting the thread it ran on."""
    from edgepipe.clock import now_ns

    def stamp(ctx) -> bytes:
        threads.add(threading.get_native_id())
        return now_ns().to_bytes(8, "little")
    return stamp


def _stack_ns(sample) -> dict[str, int]:
    """The custom SEND / RECEIVE stamps of a sample's timestamp stack, by point name."""
    import zenoh
    st = sample.timestamp_stack
    out = {}
    for r in (st.records if st is not None else ()):
        ts = r.timestamp()
        for name in ("SEND", "RECEIVE"):
            if r.is_custom and len(ts) == 8 and r.point == getattr(zenoh.InterceptionPoint, name):
                out[name] = int.from_bytes(ts, "little")
    return out


def role_stamps_echo(a) -> None:
    """Answers pings with a pong put from zenoh's callback, stamping with Python (t2 on entry, t3 before the
    put) and, with ``--ts``, with zenoh's timestamp instrumentation (the ping's RECEIVE, the pong's SEND) too;
    runs until stdin closes, then prints the threads each stamp ran on."""
    import zenoh

    from edgepipe.clock import now_ns
    ts_threads: set = set()
    cb_threads: set = set()
    kw = {"timestamp_callback": _stamper(ts_threads)} if a.ts else {}
    instr = zenoh.TimestampInstrumentationBuilder().set_send(True).set_receive(True).build() if a.ts else None
    with zenoh.open(_zconf(a, "listen"), **kw) as z:
        pong = z.declare_publisher("bench/pong", express=True)

        def on_ping(s):
            t2 = now_ns()
            cb_threads.add(threading.get_native_id())
            st = _stack_ns(s)
            b = s.payload.to_bytes() + b"".join(
                v.to_bytes(8, "little") for v in (st.get("SEND", 0), st.get("RECEIVE", 0), t2))
            pong.put(b + now_ns().to_bytes(8, "little"), timestamp_instrumentation=instr)

        sub = z.declare_subscriber("bench/ping", zenoh.handlers.Callback(on_ping, indirect=False))
        sys.stdin.read()
        sub.undeclare()
    print(json.dumps({"ts_threads": sorted(ts_threads), "cb_threads": sorted(cb_threads),
                      "main": threading.get_native_id()}), file=sys.stderr)


def role_stamps_ping(a) -> None:
    """Bursts of ``--burst`` exchanges every 20 ms (each next ping put from the pong's callback), every one
    stamped both ways: Python (before the put, on the callback's entry) and, with ``--ts``, zenoh's
    instrumentation. Also the cost of an instrumented put (no subscriber: the SEND callback only)."""
    import zenoh

    from edgepipe.clock import now_ns
    ts_threads: set = set()
    cb_threads: set = set()
    kw = {"timestamp_callback": _stamper(ts_threads)} if a.ts else {}
    instr = zenoh.TimestampInstrumentationBuilder().set_send(True).set_receive(True).build() if a.ts else None
    rows: list[list[int]] = []
    left, done = [0], threading.Event()
    with zenoh.open(_zconf(a, "connect"), **kw) as z:
        ping = z.declare_publisher("bench/ping", express=True)
        void = z.declare_publisher("bench/void", express=True)
        cost = {}
        for name, ins in (("plain", None), ("instrumented", instr), ("plain2", None), ("instrumented2", instr)):
            if name.startswith("instrumented") and ins is None:
                continue
            t = time.perf_counter_ns()
            for _ in range(3000):
                void.put(b"12345678", timestamp_instrumentation=ins)
            cost[name] = (time.perf_counter_ns() - t) / 3000
        ts_threads.clear()
        while not ping.matching_status.matching:
            time.sleep(0.01)
        time.sleep(0.5)

        def send() -> None:
            ping.put(now_ns().to_bytes(8, "little"), timestamp_instrumentation=instr)

        def on_pong(s) -> None:
            t4 = now_ns()
            cb_threads.add(threading.get_native_id())
            b = s.payload.to_bytes()
            st = _stack_ns(s)
            py1, ts1, ts2, py2, py3 = (int.from_bytes(b[i:i + 8], "little") for i in range(0, 40, 8))
            rows.append([a.burst - left[0], py1, ts1, ts2, py2, py3, st.get("SEND", 0), st.get("RECEIVE", 0), t4])
            left[0] -= 1
            if left[0]:
                send()
            else:
                done.set()

        sub = z.declare_subscriber("bench/pong", zenoh.handlers.Callback(on_pong, indirect=False))
        time.sleep(0.2)
        put_threads = {threading.get_native_id()}
        run_bursts(a, left, done, send)
        sub.undeclare()
    print(json.dumps({"rows": rows, "put_cost_ns": cost, "ts_threads": sorted(ts_threads),
                      "cb_threads": sorted(cb_threads), "main": sorted(put_threads)}))


def role_udp_echo(a) -> None:
    """The reference floor without zenoh: a UDP socket answering each datagram from a Python thread blocked in
    recvfrom (t2 on return, t3 before sendto); runs until stdin closes."""
    import socket

    from edgepipe.clock import now_ns
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ADDR_A, PORT + 1))
    s.settimeout(0.5)

    def serve():
        while True:
            try:
                b, peer = s.recvfrom(64)
            except TimeoutError:
                continue
            except OSError:
                return
            t2 = now_ns()
            s.sendto(b + t2.to_bytes(8, "little") + now_ns().to_bytes(8, "little"), peer)

    threading.Thread(target=serve, daemon=True).start()
    sys.stdin.read()
    s.close()


def role_udp_ping(a) -> None:
    import socket

    from edgepipe.clock import now_ns
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    rows = []
    time.sleep(0.5)
    for _ in range(a.n // a.burst):
        for k in range(a.burst):
            s.sendto(now_ns().to_bytes(8, "little"), (ADDR_A, PORT + 1))
            try:
                b = s.recv(64)
            except TimeoutError:
                break
            t4 = now_ns()
            t1, t2, t3 = (int.from_bytes(b[i:i + 8], "little") for i in (0, 8, 16))
            rows.append([k, t1, 0, 0, t2, t3, 0, 0, t4])
        time.sleep(0.02)
    print(json.dumps({"rows": rows}))


def _stage_thread(stage):
    t = threading.Thread(target=stage.run, daemon=True)
    t.start()
    return t


def _child(a, role: str, fd: int) -> subprocess.Popen:
    """The far end of a ring in a process of its own (as ``edgepipe run`` places every stage), sharing the ring
    by its fd; it runs in this namespace."""
    me = [sys.executable, str(Path(__file__).resolve()), "--n", str(a.n), "--rate", str(a.rate), "--size",
          str(a.size), "--wait", a.wait, "--fd", str(fd), "--role", role]
    me += ["--trace", a.trace] if a.trace else []
    return subprocess.Popen(me, pass_fds=(fd,), stdout=subprocess.PIPE, text=True)


def _emit_records(a, writer) -> None:
    from edgepipe.clock import now_ns
    from edgepipe.pipeline.api import Outlet
    out = Outlet(writer, "nums", 0)
    pad = bytes(a.size - 16 - 32 - 8)  # the stamp header + one hop are part of the 1 KB
    n = a.n if a.what == "rec" else int(a.seconds * 100)
    for i in range(n):
        t = now_ns()  # the capture stamp, in the payload too: the receiving bridge maps the stamp's copy
        out.emit(i.to_bytes(8, "little") + t.to_bytes(8, "little") + pad, seq=i, capture_ns=t)
        time.sleep(1 / a.rate if a.what == "rec" else 0.01)
    out.close()


def _sink_records(reader, got: list | None = None, est: list | None = None) -> list[int]:
    """One-way latencies: receive time - the capture time as the producer stamped it (its copy in the payload:
    the record's own stamp, from the other side of a bridge, has been mapped through the clock estimate,
    whose error would be part of the number; ``est`` gets that one). ``got`` (tracing) also gets
    ``(seq, receive_ns)`` of each record."""
    from edgepipe.clock import now_ns
    from edgepipe.pipeline.api import EndOfStream, Inlet
    sink, lat = Inlet(reader, "nums"), []
    try:
        while True:
            rec = sink.receive(timeout_s=60)
            if rec is None:
                break
            t = now_ns()
            lat.append(t - int.from_bytes(rec.payload[8:16], "little"))
            if est is not None:
                est.append(t - rec.capture_ns)
            if got is not None:
                got.append((rec.seq, t))
    except EndOfStream:
        pass
    return lat


def role_ring_src(a) -> None:
    from edgepipe.ring import Ring
    _emit_records(a, Ring.from_fd(a.fd).writer())


def role_ring_sink(a) -> None:
    from edgepipe.ring import Ring
    got: list = []
    est: list = []
    lat = _sink_records(Ring.from_fd(a.fd).reader(wait=a.wait), got if a.trace else None, est)
    print(json.dumps({"lat_ns": lat, "got": got, "est_ns": est}))


def role_ring_pair(a) -> None:
    """One ring between two processes of their own, no bridge: the producer and consumer ends of rec-bridge
    as they are, to price one ring hand-off (Outlet.emit -> Inlet.receive) at this rate on this machine."""
    from edgepipe.ring import Ring
    with Ring.create(capacity=1 << 20) as ring:
        sink = _child(a, "ring-sink", ring.fd)
        _child(a, "ring-src", ring.fd).wait(600)
        r = json.loads(sink.communicate(timeout=600)[0])
    print(json.dumps({"lat_ns": r["lat_ns"]}))


def role_idle(a) -> None:
    """The other namespace's process of a case that needs only one (rec-ring)."""


def _traced(stage_cls):
    """``--trace``: the bridge stage class with stamps at each hop, on this machine's one clock (both namespaces
    share a kernel): the sending end stamps when its input record was taken and around each ``put``, the
    receiving end on entry to and exit from its sample callback (the exit is after the ring write). Only
    attributes both the old and the new BridgeStage have are used, so ``--compare`` traces the same way."""
    from edgepipe.clock import now_ns

    class _Pub:
        def __init__(self, pub, puts):
            self._p, self._puts = pub, puts

        def __getattr__(self, name):
            return getattr(self._p, name)

        def put(self, data, *args, **kw):
            t0 = now_ns()
            r = self._p.put(data, *args, **kw)
            self._puts.append((int.from_bytes(data[16:24], "little"), t0, now_ns()))
            return r

    class Traced(stage_cls):
        def open(self):
            self.trace_reads: list = []  # (record bytes, taken_ns)
            self.trace_puts: list = []  # (bridge seq, before put, after put)
            self.trace_cbs: list = []  # (entry, exit) of the sample callback, in arrival order
            for inlet in self.inputs.values():
                take = inlet.receive_raw

                def receive_raw(timeout_s=None, _take=take):
                    d = _take(timeout_s)
                    if d is not None:
                        self.trace_reads.append((d, now_ns()))
                    return d
                inlet.receive_raw = receive_raw
            from edgepipe.bridge.session import Session
            subscriber = Session.subscriber

            def traced_subscriber(session, key, fn):  # a record key (not _clock, _ack): stamp its callback
                def cb(sample, _fn=fn):
                    t = now_ns()
                    _fn(sample)
                    self.trace_cbs.append((t, now_ns()))
                return subscriber(session, key, fn if "/_" in key else cb)
            Session.subscriber = traced_subscriber  # this role's process only
            super().open()
            make = self.session.publisher
            self.session.publisher = lambda key, *x, **k: _Pub(make(key, *x, **k), self.trace_puts)

    return Traced


def role_ep_pub(a) -> None:
    import numpy as np

    from edgepipe.bridge.stage import BridgeStage
    from edgepipe.errors import RingTimeoutError
    from edgepipe.frames import FrameWriter
    from edgepipe.pipeline.api import Inlet
    from edgepipe.ring import Ring
    frames = a.what == "frames"
    skew = [3_700_000_000, 250.0] if a.what == "clock" else None
    cls = _traced(BridgeStage) if a.trace else BridgeStage
    with Ring.create(capacity=1 << (25 if frames else 20)) as ring:
        up = cls("up", inputs={"n": "nums"}, pipeline="A", listen=[f"tcp/{ADDR_A}:{a.port}"],
                 clock_skew=skew, **({"express": a.express == "on"} if a.express else {}), **json.loads(a.params))
        up.attach(inputs={"n": Inlet(ring.reader(wait=a.wait), "nums")}, outputs={})
        t = _stage_thread(up)
        while not (up.session and up.session.remotes_alive()):  # as the bare publisher: start once matched
            time.sleep(0.01)
        time.sleep(1.0)
        if frames:
            w = FrameWriter(ring.writer())
            img = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
            end = time.monotonic() + a.seconds + 3
            while time.monotonic() < end:
                try:
                    w.write_frame(img, timeout_s=5)
                except RingTimeoutError:
                    break  # the reader has finished its count
            w.close()
        elif a.split:
            _child(a, "ring-src", ring.fd).wait(600)
        else:
            _emit_records(a, ring.writer())
        t.join(60)
    if a.trace:
        from edgepipe.pipeline.wire import unpack_record
        reads = []
        for d, t_read in up.trace_reads:
            rec = unpack_record(d)
            reads.append((rec.seq, rec.capture_ns, t_read))
        Path(a.trace).write_text(json.dumps({"reads": reads, "puts": up.trace_puts}))


def role_ep_sub(a) -> None:
    from edgepipe.bridge.stage import BridgeStage
    from edgepipe.frames import FrameReader
    from edgepipe.pipeline.api import Outlet
    from edgepipe.ring import Ring
    frames = a.what == "frames"
    cls = _traced(BridgeStage) if a.trace else BridgeStage
    with Ring.create(capacity=1 << (25 if frames else 20)) as ring:
        down = cls("down", outputs={"nums": "nums"}, remote="A", pipeline="B",
                   connect=[f"tcp/{ADDR_A}:{a.port}"], **json.loads(a.params))
        down.attach(inputs={}, outputs={"nums": Outlet(ring.writer(), "nums", 1)})
        t = _stage_thread(down)
        res: dict = {}
        if frames:
            r = FrameReader(ring.reader())
            with r.read_frame(timeout_s=60) as f:
                shape = f.shape
            t0, n = time.monotonic(), 0
            while time.monotonic() - t0 < a.seconds:
                with r.read_frame(timeout_s=30):
                    n += 1
            res = {"fps": n / (time.monotonic() - t0), "shape": list(shape)}
            r.close()
        else:
            got: list = []
            est: list = []
            if a.split:
                c = _child(a, "ring-sink", ring.fd)
                r = json.loads(c.communicate(timeout=600)[0])
                lat, got, est = r["lat_ns"], r["got"], r["est_ns"]
            else:
                lat = _sink_records(ring.reader(wait=a.wait), got if a.trace else None, est)
            res = {"lat_ns": lat, "est_ns": est, "clock": down.clock_stats()}
            if a.trace:
                res["trace"] = {"cbs": down.trace_cbs, "got": got}
            if a.what == "clock":
                est = down.estimate
                truth = lambda t: t * 250e-6 + 3_700_000_000
                res = {"bound_us": est.bound_ns / 1e3, "samples": est.samples, "exchanges": down.clock.exchanges,
                       "error_us": max(abs(est.offset_at(t) - truth(t)) for t in (est.first_ns, est.last_ns)) / 1e3,
                       "drift_ppm": est.drift_ppm, "stats": down.clock_stats()}
        down.stop()
        t.join(30)
    print(json.dumps(res))


ROLES = {"bare-pub": role_bare_pub, "bare-sub": role_bare_sub, "ep-pub": role_ep_pub, "ep-sub": role_ep_sub,
         "ring-src": role_ring_src, "ring-sink": role_ring_sink, "ring-pair": role_ring_pair, "idle": role_idle,
         "rtt-echo": role_rtt_echo, "rtt-ping": role_rtt_ping,
         "stamps-echo": role_stamps_echo, "stamps-ping": role_stamps_ping, "udp-echo": role_udp_echo,
         "udp-ping": role_udp_ping}


# ---------------------------------------------------------------------------------------------------------

def run_case(ns: Netns, a, pub: str, sub: str, what: str, wait: str = "hybrid", flags: tuple[str, ...] = (),
             src: str | None = None, trace: bool | str = False) -> dict:
    """One case: ``sub`` in namespace B, ``pub`` in A; ``src``: import edgepipe from that source tree."""
    me = [sys.executable, str(Path(__file__).resolve()), "--n", str(a.n), "--rate", str(a.rate), "--size",
          str(a.size), "--seconds", str(a.seconds), "--what", what, "--wait", wait, "--burst", str(a.burst),
          "--port", str(a.port), "--params", a.params, *flags, "--role"]
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    if trace:  # the sending end's stamps come back in a file (the receiving end's on stdout)
        fd, trace = tempfile.mkstemp(prefix="brl-trace-", suffix=".json")
        os.close(fd)
        me[-1:-1] = ["--trace", trace]
    s = subprocess.Popen(ns.cmd("b", me + [sub]), stdout=subprocess.PIPE, text=True, env=env)
    p = subprocess.Popen(ns.cmd("a", me + [pub]), stdin=subprocess.PIPE, env=env)
    out, _ = s.communicate(timeout=600)
    p.stdin.close()  # the rtt echo runs until then
    p.wait(120)
    res = json.loads(out.strip().splitlines()[-1])
    if trace:
        try:
            res.setdefault("trace", {}).update(json.loads(Path(trace).read_text()))
        finally:
            os.unlink(trace)
    return res


HOPS = (("ring A (emit -> bridge A took it)", "cap", "read"),
        ("bridge A: take -> put()", "read", "put0"),
        ("put() call itself", "put0", "put1"),
        ("put() -> bridge B callback entry (zenoh)", "put0", "cb0"),
        ("bridge B callback (check, restamp, ring write)", "cb0", "cb1"),
        ("ring B (callback exit -> consumer)", "cb1", "recv"),
        ("total (emit -> consumer)", "cap", "recv"))


def hops(tr: dict) -> dict[str, float]:
    """Per-hop p50s (us) of a traced run, records matched by sequence number (the bridge's seq and the
    record's are both the emit counter here; callbacks in arrival order, the end marker last)."""
    by: dict[int, dict[str, int]] = {}
    for seq, cap, t in tr["reads"]:
        by.setdefault(seq, {}).update(cap=cap, read=t)
    for seq, t0, t1 in tr["puts"]:
        by.setdefault(seq, {}).update(put0=t0, put1=t1)
    for seq, (t0, t1) in enumerate(tr["cbs"]):
        by.setdefault(seq, {}).update(cb0=t0, cb1=t1)
    for seq, t in tr["got"]:
        by.setdefault(seq, {}).update(recv=t)
    full = [d for d in by.values() if len(d) == 7]
    return {name: pct([d[b] - d[a] for d in full], 50) / 1e3 for name, a, b in HOPS} | {"n": len(full)}


def _summary(name: str, ds: list[int]) -> dict:
    r = {"n": len(ds), "min_us": min(ds) / 1e3, "p10_us": pct(ds, 10) / 1e3, "p50_us": pct(ds, 50) / 1e3}
    print(f"  {name:34s} n={len(ds):5d}  min {r['min_us']:7.1f}  p10 {r['p10_us']:7.1f}  p50 {r['p50_us']:7.1f} us")
    return r


def _bound_of(rows: list[list[int]], idx: tuple[int, ...], title: str) -> dict:
    """The clock estimate (edgepipe.bridge.clock) these exchanges give when the echoing end's stamps are
    shifted by 3.7 s and +250 ppm: its bound and its actual error at the window's ends."""
    from edgepipe.bridge.clock import ClockEstimate
    c = ClockEstimate()
    remote = lambda t: t + 3_700_000_000 + t * 250 // 1_000_000
    for x in rows:
        t1, t2, t3, t4 = (x[i] for i in idx)
        c.add(t1, remote(t2), remote(t3), t4)
    e = c.estimate()
    err = max(abs(e.offset_at(t) - (3_700_000_000 + t * 250e-6)) for t in (e.first_ns, e.last_ns))
    print(f"  {title}: bound {e.bound_ns / 1e3:.1f} us, actual error {err / 1e3:.1f} us over {e.samples}")
    return {"bound_us": e.bound_ns / 1e3, "error_us": err / 1e3, "samples": e.samples}


def stamps_cases(ns: Netns, a) -> dict:
    """Round trips less the far turnaround, and their one-way parts (both namespaces share one kernel clock,
    so here they are known), as Python stamps them and as zenoh's timestamp instrumentation does, on the
    default transport and on ``lowlatency`` (qos off); and plain UDP between two Python threads."""
    out = {}
    variants = [("zenoh default, python stamps", "stamps", ()), ("zenoh default, instrumented", "stamps", ("--ts",)),
                ("zenoh lowlatency, python stamps", "stamps", ("--lowlatency",)),
                ("zenoh lowlatency, instrumented", "stamps", ("--lowlatency", "--ts")),
                ("udp, python stamps", "udp", ())]
    for title, kind, flags in variants:
        r = run_case(ns, a, f"{kind}-echo", f"{kind}-ping", "stamps", flags=flags)
        rows = r["rows"]
        print(f"{title}  (exchanges {len(rows)}; put cost ns {r.get('put_cost_ns')})")
        res = out[title] = {"put_cost_ns": r.get("put_cost_ns")}
        for tag, sel in (("all", lambda k: True), ("2nd+ in burst", lambda k: k >= 1)):
            rs = [x for x in rows if sel(x[0])]
            if not rs:
                continue
            # x = [k, py1, ts1, ts2, py2, py3, ts3, ts4, py4]
            res[f"py rtt {tag}"] = _summary(f"python rtt ({tag})", [(x[8] - x[1]) - (x[5] - x[4]) for x in rs])
            if tag == "all":
                res["py out"] = _summary("python one way out", [x[4] - x[1] for x in rs])
                res["py back"] = _summary("python one way back", [x[8] - x[5] for x in rs])
            if "--ts" in flags and all(x[2] and x[3] and x[6] and x[7] for x in rs):
                res[f"ts rtt {tag}"] = _summary(f"instrumented rtt ({tag})", [(x[7] - x[2]) - (x[6] - x[3]) for x in rs])
                if tag == "all":
                    res["ts out"] = _summary("instrumented one way out", [x[3] - x[2] for x in rs])
                    res["ts back"] = _summary("instrumented one way back", [x[7] - x[6] for x in rs])
                    res["py1->SEND"] = _summary("ping: python t1 -> SEND stamp", [x[2] - x[1] for x in rs])
                    res["RECV->py2"] = _summary("echo: RECEIVE stamp -> callback", [x[4] - x[3] for x in rs])
                    res["py3->SEND"] = _summary("echo: python t3 -> SEND stamp", [x[6] - x[5] for x in rs])
                    res["RECV->py4"] = _summary("ping: RECEIVE stamp -> callback", [x[8] - x[7] for x in rs])
            elif "--ts" in flags and tag == "all":
                print("  instrumented stamps missing in some exchanges")
        for stamps, idx in (("python", (1, 4, 5, 8)), ("instrumented", (2, 3, 6, 7))):
            if stamps == "instrumented" and not ("--ts" in flags and all(x[2] and x[3] and x[6] and x[7] for x in rows)):
                continue
            res[f"bound {stamps}"] = _bound_of(rows, idx, f"clock estimate from the {stamps} stamps")
        if "ts_threads" in r:
            print(f"  ping threads: timestamp callback on {r['ts_threads']}, pong callback on {r['cb_threads']}, "
                  f"main {r['main']}")
    return out


def main() -> None:
    global PORT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=sorted(ROLES))
    ap.add_argument("--what", default="rec")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--wait", default="hybrid", help=argparse.SUPPRESS)  # the ring readers' wait (roles)
    ap.add_argument("--split", action="store_true", help=argparse.SUPPRESS)  # ring ends in processes of their own
    ap.add_argument("--indirect", action="store_true", help=argparse.SUPPRESS)  # bare: zenoh-python's default
    ap.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # ring-src / ring-sink: the ring's fd
    ap.add_argument("--compare", metavar="SRC", help="also run the bridge cases with edgepipe imported from SRC "
                    "(another checkout's src/, built): before/after in one run")
    ap.add_argument("--trace", help=argparse.SUPPRESS)  # ep roles: take per-hop stamps (the sender's go to this file)
    ap.add_argument("--express", choices=("on", "off"), help=argparse.SUPPRESS)  # roles: zenoh express (None: default)
    ap.add_argument("--params", default="{}", help="extra BridgeStage parameters of both ends, as JSON (e.g. "
                    "'{\"clock_period_ms\": 0}')")
    ap.add_argument("--port", type=int, default=PORT, help=f"the zenoh port in namespace A (default {PORT})")
    ap.add_argument("--tag", default="bench", help="suffix of the namespaces' names (default 'bench')")
    ap.add_argument("--burst", type=int, default=8, help="rtt case: exchanges per burst (default 8)")
    ap.add_argument("--netns-prefix", default="ep", help="the namespaces' and veths' name prefix (default ep)")
    ap.add_argument("--ts", action="store_true", help=argparse.SUPPRESS)  # stamps: zenoh's timestamp instrumentation
    ap.add_argument("--lowlatency", action="store_true", help=argparse.SUPPRESS)  # stamps: lowlatency transport
    ap.add_argument("--only", default="rec,frames,clock,rtt", help="run only the cases whose name contains this (rec, frames, clock, rtt)")
    a = ap.parse_args()
    PORT = a.port
    if a.role:
        ROLES[a.role](a)
        return
    import zenoh  # noqa: F401 - fail early without the bridge extra
    ns = Netns(a.tag, prefix=a.netns_prefix)
    ns.create()
    try:
        print(f"# {' '.join(sys.argv)}  (load {os.getloadavg()[0]:.2f})")
        out: dict = {}
        if "rec" in a.only:
            srcs = [("", None)] + ([(" (--compare)", a.compare)] if a.compare else [])
            cases = [("rec-bare", run_case(ns, a, "bare-pub", "bare-sub", "rec")),
                     ("rec-bare-express", run_case(ns, a, "bare-pub", "bare-sub", "rec", flags=("--express", "on"))),
                     ("rec-bare-indirect", run_case(ns, a, "bare-pub", "bare-sub", "rec", flags=("--indirect",))),
                     ("rec-bare-traced", run_case(ns, a, "bare-pub", "bare-sub", "rec", trace=True)),
                     ("rec-ring", run_case(ns, a, "idle", "ring-pair", "rec"))]
            for tag, src in srcs:
                cases += [(f"rec-bridge{tag}", run_case(ns, a, "ep-pub", "ep-sub", "rec", flags=("--split",), src=src)),
                          (f"rec-bridge-express{tag}", run_case(ns, a, "ep-pub", "ep-sub", "rec", src=src,
                                                                flags=("--split", "--express", "on"))),
                          (f"rec-bridge-batched{tag}", run_case(ns, a, "ep-pub", "ep-sub", "rec", src=src,
                                                                flags=("--split", "--express", "off"))),
                          (f"rec-bridge-1proc{tag}", run_case(ns, a, "ep-pub", "ep-sub", "rec", src=src)),
                          (f"rec-bridge-noclock{tag}", run_case(ns, a, "ep-pub", "ep-sub", "rec", src=src,
                                                                flags=("--split", "--params",
                                                                       json.dumps({"clock_period_ms": 0})))),
                          (f"rec-bridge-traced{tag}", run_case(ns, a, "ep-pub", "ep-sub", "rec", flags=("--split",),
                                                               src=src, trace=True))]
            rows = {}
            for name, r in cases:
                lat = r["lat_ns"]
                rows[name] = {"n": len(lat), "p50_us": pct(lat, 50) / 1e3, "p90_us": pct(lat, 90) / 1e3,
                              "p99_us": pct(lat, 99) / 1e3}
                if r.get("est_ns"):  # the record's capture stamp as mapped by the receiving bridge's clock estimate
                    rows[name]["p50_on_estimate_us"] = pct(r["est_ns"], 50) / 1e3
                print(f"{name:34s} n={len(lat):6d}  p50 {rows[name]['p50_us']:8.1f} us  p90 "
                      f"{rows[name]['p90_us']:8.1f} us  p99 {rows[name]['p99_us']:8.1f} us" +
                      (f"  (p50 {rows[name]['p50_on_estimate_us']:.1f} us on the clock estimate)"
                       if r.get("est_ns") else ""))
            bare = rows["rec-bare"]["p50_us"]
            bare_put = pct([t1 - t0 for _, t0, t1 in dict(cases)["rec-bare-traced"]["trace"]["puts"]], 50) / 1e3
            rows["rec-bare-traced"]["put_call_p50_us"] = bare_put
            print(f"rec-bare-traced: the put() call itself p50 {bare_put:.1f} us")
            for tag, _ in srcs:
                ep = dict(cases)[f"rec-bridge{tag}"]
                print(f"bridge{tag}: bridge stage to bridge stage (envelope send stamp to the receiving callback, on "
                      f"the clock estimate): p50 {ep['clock'].get('wire_p50_us')} us "
                      f"+- {ep['clock'].get('wire_bound_us')}")
                hp = rows[f"rec-bridge-traced{tag}"]["hops"] = hops(dict(cases)[f"rec-bridge-traced{tag}"]["trace"])
                print(f"rec-bridge-traced{tag} per hop, p50 of {hp['n']} records (us; bare put -> callback p50 "
                      f"{bare:.1f}):")
                for name, *_ in HOPS:
                    print(f"    {name:48s} {hp[name]:8.1f}")
                print(f"bridge{tag}/bare p50 ratio {rows[f'rec-bridge{tag}']['p50_us'] / bare:.2f} (goal <= 1.2); "
                      f"express {rows[f'rec-bridge-express{tag}']['p50_us'] / rows['rec-bare-express']['p50_us']:.2f}"
                      f" of bare express, batched {rows[f'rec-bridge-batched{tag}']['p50_us'] / bare:.2f} of bare; "
                      f"with the ring ends as threads of the bridge's processes "
                      f"{rows[f'rec-bridge-1proc{tag}']['p50_us'] / bare:.2f}")
            ring = rows["rec-ring"]["p50_us"]
            print(f"floor: bare + the two ring hand-offs a bridge adds (rec-ring twice) = {bare + 2 * ring:.1f} us, "
                  f"{(bare + 2 * ring) / bare:.2f} x bare; the rest of rec-bridge is the two bridge stages' own "
                  f"work: {rows['rec-bridge']['p50_us'] - bare - 2 * ring:.1f} us"
                  + (f" ({rows['rec-bridge (--compare)']['p50_us'] - bare - 2 * ring:.1f} us with --compare)"
                     if a.compare else ""))
            out.update(cases=rows, ratio_p50=rows["rec-bridge"]["p50_us"] / bare)
        if "frames" in a.only:
            fr = out["frames"] = run_case(ns, a, "ep-pub", "ep-sub", "frames")
            print(f"frames      {fr['shape']} {fr['fps']:.1f} fps over {a.seconds:g} s (goal >= 30)")
        for tag, src in (("", None), (" (--compare)", a.compare)) if "clock" in a.only else ():
            if tag and not src:
                continue
            ck = out["clock" + tag] = run_case(ns, a, "ep-pub", "ep-sub", "clock", src=src)
            print(f"clock{tag} bound {ck['bound_us']:.1f} us, actual error {ck['error_us']:.1f} us, drift "
                  f"{ck['drift_ppm']:.1f} ppm (true 250), {ck['samples']} of {ck['exchanges']} exchanges "
                  f"(goal bound <= 50 us)")
        if "rtt" in a.only:
            rt = out["rtt"] = run_case(ns, a, "rtt-echo", "rtt-ping", "rtt")
            for mode, by_pos in rt.items():
                for k, ds in enumerate(by_pos):
                    if ds:
                        print(f"rtt {mode:6s} #{k}  n={len(ds):5d}  min {min(ds) / 1e3:7.1f}  p10 {pct(ds, 10) / 1e3:7.1f}"
                              f"  p50 {pct(ds, 50) / 1e3:7.1f} us (round trip less the far turnaround)")
        if "stamps" in a.only:
            out["stamps"] = stamps_cases(ns, a)
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
    finally:
        ns.remove()


if __name__ == "__main__":
    main()
