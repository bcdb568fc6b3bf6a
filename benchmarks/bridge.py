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

``--compare SRC`` runs the bridge cases (rec-bridge, rec-bridge-1proc, clock) a second time with edgepipe
imported from another checkout's ``src`` (built in place): before and after a change in one run.

    sudo python benchmarks/bridge.py [--n 5000] [--rate 1000] [--seconds 5] [--only rec,frames,clock,rtt]
                                     [--compare OTHER/src] [--json OUT]
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

PORT = 7460
ZCONF = ('{mode: "peer", %s: {endpoints: ["tcp/%s:%d"]}, scouting: {multicast: {enabled: false}}, '
         'transport: {shared_memory: {enabled: false}}}')


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
         "ring-src": role_ring_src, "ring-sink": role_ring_sink, "rtt-echo": role_rtt_echo, "rtt-ping": role_rtt_ping}


# ---------------------------------------------------------------------------------------------------------

def run_case(ns: Netns, a, pub: str, sub: str, what: str, wait: str = "hybrid", flags: tuple[str, ...] = (),
             src: str | None = None) -> dict:
    """One case: ``sub`` in namespace B, ``pub`` in A; ``src``: import edgepipe from that source tree."""
    me = [sys.executable, str(Path(__file__).resolve()), "--n", str(a.n), "--rate", str(a.rate), "--size",
          str(a.size), "--seconds", str(a.seconds), "--what", what, "--wait", wait, "--burst", str(a.burst),
          *flags, "--role"]
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    s = subprocess.Popen(ns.cmd("b", me + [sub]), stdout=subprocess.PIPE, text=True, env=env)
    p = subprocess.Popen(ns.cmd("a", me + [pub]), stdin=subprocess.PIPE, env=env)
    out, _ = s.communicate(timeout=600)
    p.stdin.close()  # the rtt echo runs until then
    p.wait(120)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
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
    ap.add_argument("--only", default="rec,frames,clock,rtt", help="run only the cases whose name contains this (rec, frames, clock, rtt)")
    a = ap.parse_args()
    if a.role:
        ROLES[a.role](a)
        return
    import zenoh  # noqa: F401 - fail early without the bridge extra
    ns = Netns("bench")
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
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
    finally:
        ns.remove()


if __name__ == "__main__":
    main()
