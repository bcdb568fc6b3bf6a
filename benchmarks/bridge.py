"""Bridges across two network namespaces joined by a veth pair (root; standalone script, not run by pytest).

Cases (one run, every peer measured in it, ratios reported):
  rec-bare     1 KB records, zenoh-python alone: a publisher in namespace A puts each with its send time
               (CLOCK_MONOTONIC_RAW, edgepipe.clock.now_ns: one kernel, so one clock) at ``--rate``/s; a
               subscriber in B takes the receive time in its callback, which runs on zenoh's receiving thread
               as the bridge's do (``Callback(indirect=False)``). One-way latency percentiles.
  rec-bare-indirect  the same with zenoh-python's default callback (a queue and a Python thread of its own).
  rec-bridge   the same records through edgepipe as ``edgepipe run`` places the stages: a producer process in
               A writing a ring (Outlet.emit stamps the capture time), the bridge stage's process publishing
               it, the bridge stage's process in B feeding a ring, a consumer process in B (Inlet.receive).
               One-way latency = receive time - capture time: both rings and both bridge stages.
  rec-bridge-1proc  the same with producer and consumer as threads of the bridge stages' processes (they
               then share the GIL with the bridge: each ring hand-off also waits for it).
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

``--compare SRC`` runs the bridge cases (rec-bridge, rec-bridge-1proc, clock) a second time with edgepipe
imported from another checkout's ``src`` (built in place): before and after a change in one run.

    sudo python benchmarks/bridge.py [--n 5000] [--rate 1000] [--seconds 5] [--only rec,frames,clock,rtt,stamps]
                                     [--compare OTHER/src] [--json OUT] [--port 7460] [--netns-prefix ep]

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
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
from _netns import ADDR_A, Netns

DEFAULT_PORT = 7460
PORT = DEFAULT_PORT  # --port moves it (and the UDP reference's port, PORT + 1)
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
    with zenoh.open(zenoh.Config.from_json5(ZCONF % ("listen", ADDR_A, PORT))) as z:
        pub = z.declare_publisher("bench/rec", congestion_control=zenoh.CongestionControl.BLOCK)
        while not pub.matching_status.matching:
            time.sleep(0.01)
        time.sleep(0.5)
        pad = bytes(a.size - 16)
        for i in range(a.n):
            pub.put(i.to_bytes(8, "little") + now_ns().to_bytes(8, "little") + pad)
            time.sleep(1 / a.rate)
        time.sleep(1)


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

    with zenoh.open(zenoh.Config.from_json5(ZCONF % ("connect", ADDR_A, PORT))) as z:
        # the callback style the bridge uses (edgepipe.bridge.session): on zenoh's receiving thread, unless
        # --indirect asks for zenoh-python's default (a queue and a Python thread of its own)
        sub = z.declare_subscriber("bench/rec", zenoh.handlers.Callback(cb, indirect=a.indirect))
        done.wait(120)
        sub.undeclare()
    print(json.dumps({"lat_ns": lat}))


def role_rtt_echo(a) -> None:
    """Answers pings (a subscriber putting a pong, and a queryable replying) inside zenoh's callbacks, stamping
    t2 on arrival and t3 just before the answer goes out; runs until stdin closes."""
    import zenoh

    from edgepipe.clock import now_ns
    with zenoh.open(zenoh.Config.from_json5(ZCONF % ("listen", ADDR_A, PORT))) as z:
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
    for _ in range(a.n // a.burst):
        left[0] = a.burst
        done.clear()
        send()
        done.wait(2)
        time.sleep(0.02)
    sub.undeclare()
    return delays


def role_rtt_ping(a) -> None:
    """Bursts of ``--burst`` exchanges every 20 ms, each next one sent from the callback that took the
    previous answer (zenoh's threads stay awake through a burst): pub/sub ping -> pong, then a queryable.
    Prints every exchange's round trip less the far end's turnaround, by position in the burst."""
    import zenoh
    with zenoh.open(zenoh.Config.from_json5(ZCONF % ("connect", ADDR_A, PORT))) as z:
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
        for _ in range(a.n // a.burst):
            left[0] = a.burst
            done.clear()
            send()
            done.wait(2)
            time.sleep(0.02)
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
    return subprocess.Popen(me, pass_fds=(fd,), stdout=subprocess.PIPE, text=True)


def _emit_records(a, writer) -> None:
    from edgepipe.pipeline.api import Outlet
    out = Outlet(writer, "nums", 0)
    pad = bytes(a.size - 8 - 32 - 8)  # the stamp header + one hop are part of the 1 KB
    n = a.n if a.what == "rec" else int(a.seconds * 100)
    for i in range(n):
        out.emit(i.to_bytes(8, "little") + pad, seq=i)
        time.sleep(1 / a.rate if a.what == "rec" else 0.01)
    out.close()


def _sink_records(reader) -> list[int]:
    from edgepipe.clock import now_ns
    from edgepipe.pipeline.api import EndOfStream, Inlet
    sink, lat = Inlet(reader, "nums"), []
    try:
        while True:
            rec = sink.receive(timeout_s=60)
            if rec is None:
                break
            lat.append(now_ns() - rec.capture_ns)
    except EndOfStream:
        pass
    return lat


def role_ring_src(a) -> None:
    from edgepipe.ring import Ring
    _emit_records(a, Ring.from_fd(a.fd).writer())


def role_ring_sink(a) -> None:
    from edgepipe.ring import Ring
    print(json.dumps({"lat_ns": _sink_records(Ring.from_fd(a.fd).reader(wait=a.wait))}))


def role_ep_pub(a) -> None:
    import numpy as np

    from edgepipe.bridge.stage import BridgeStage
    from edgepipe.errors import RingTimeoutError
    from edgepipe.frames import FrameWriter
    from edgepipe.pipeline.api import Inlet
    from edgepipe.ring import Ring
    frames = a.what == "frames"
    skew = [3_700_000_000, 250.0] if a.what == "clock" else None
    with Ring.create(capacity=1 << (25 if frames else 20)) as ring:
        up = BridgeStage("up", inputs={"n": "nums"}, pipeline="A", listen=[f"tcp/{ADDR_A}:{PORT}"],
                         clock_skew=skew)
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


def role_ep_sub(a) -> None:
    from edgepipe.bridge.stage import BridgeStage
    from edgepipe.frames import FrameReader
    from edgepipe.pipeline.api import Outlet
    from edgepipe.ring import Ring
    frames = a.what == "frames"
    with Ring.create(capacity=1 << (25 if frames else 20)) as ring:
        down = BridgeStage("down", outputs={"nums": "nums"}, remote="A", pipeline="B",
                           connect=[f"tcp/{ADDR_A}:{PORT}"])
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
            if a.split:
                c = _child(a, "ring-sink", ring.fd)
                lat = json.loads(c.communicate(timeout=600)[0])["lat_ns"]
            else:
                lat = _sink_records(ring.reader(wait=a.wait))
            res = {"lat_ns": lat, "clock": down.clock_stats()}
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
         "ring-src": role_ring_src, "ring-sink": role_ring_sink, "rtt-echo": role_rtt_echo, "rtt-ping": role_rtt_ping,
         "stamps-echo": role_stamps_echo, "stamps-ping": role_stamps_ping, "udp-echo": role_udp_echo,
         "udp-ping": role_udp_ping}


# ---------------------------------------------------------------------------------------------------------

def run_case(ns: Netns, a, pub: str, sub: str, what: str, wait: str = "hybrid", flags: tuple[str, ...] = (),
             src: str | None = None) -> dict:
    """One case: ``sub`` in namespace B, ``pub`` in A; ``src``: import edgepipe from that source tree."""
    me = [sys.executable, str(Path(__file__).resolve()), "--n", str(a.n), "--rate", str(a.rate), "--size",
          str(a.size), "--seconds", str(a.seconds), "--what", what, "--wait", wait, "--burst", str(a.burst),
          "--port", str(PORT), *flags, "--role"]
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    s = subprocess.Popen(ns.cmd("b", me + [sub]), stdout=subprocess.PIPE, text=True, env=env)
    p = subprocess.Popen(ns.cmd("a", me + [pub]), stdin=subprocess.PIPE, env=env)
    out, _ = s.communicate(timeout=600)
    p.stdin.close()  # the rtt echo runs until then
    p.wait(120)
    return json.loads(out.strip().splitlines()[-1])


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
    ap.add_argument("--burst", type=int, default=8, help="rtt case: exchanges per burst (default 8)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"zenoh's TCP port in namespace A (default {DEFAULT_PORT})")
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
    ns = Netns("bench", prefix=a.netns_prefix)
    ns.create()
    try:
        print(f"# {' '.join(sys.argv)}  (load {os.getloadavg()[0]:.2f})")
        out: dict = {}
        if "rec" in a.only:
            bare = run_case(ns, a, "bare-pub", "bare-sub", "rec")
            bare_ind = run_case(ns, a, "bare-pub", "bare-sub", "rec", flags=("--indirect",))
            ep = run_case(ns, a, "ep-pub", "ep-sub", "rec", flags=("--split",))
            one = run_case(ns, a, "ep-pub", "ep-sub", "rec")
            cases = [("rec-bare", bare), ("rec-bare-indirect", bare_ind), ("rec-bridge", ep), ("rec-bridge-1proc", one)]
            if a.compare:
                cases += [("rec-bridge (--compare)", run_case(ns, a, "ep-pub", "ep-sub", "rec", flags=("--split",),
                                                             src=a.compare)),
                          ("rec-bridge-1proc (--compare)", run_case(ns, a, "ep-pub", "ep-sub", "rec", src=a.compare))]
            rows = {}
            for name, r in cases:
                lat = r["lat_ns"]
                rows[name] = {"n": len(lat), "p50_us": pct(lat, 50) / 1e3, "p90_us": pct(lat, 90) / 1e3,
                              "p99_us": pct(lat, 99) / 1e3}
                print(f"{name:28s} n={len(lat):6d}  p50 {rows[name]['p50_us']:8.1f} us  p90 "
                      f"{rows[name]['p90_us']:8.1f} us  p99 {rows[name]['p99_us']:8.1f} us")
            print(f"  of which bridge stage to bridge stage (envelope send stamp to the receiving callback, on the "
                  f"clock estimate): p50 {ep['clock'].get('wire_p50_us')} us +- {ep['clock'].get('wire_bound_us')}")
            ratio = rows["rec-bridge"]["p50_us"] / rows["rec-bare"]["p50_us"]
            print(f"bridge/bare p50 ratio {ratio:.2f} (goal <= 1.2); with the ring ends as threads of the bridge's "
                  f"processes {rows['rec-bridge-1proc']['p50_us'] / rows['rec-bare']['p50_us']:.2f}")
            out.update(cases=rows, ratio_p50=ratio)
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
