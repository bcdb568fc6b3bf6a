"""Bridges across two network namespaces joined by a veth pair (root; standalone script, not run by pytest).

Cases (one run, every peer measured in it, ratios reported):
  rec-bare     1 KB records, zenoh-python alone: a publisher in namespace A puts each with its send time
               (CLOCK_MONOTONIC_RAW, edgepipe.clock.now_ns: one kernel, so one clock) at ``--rate``/s; a
               subscriber in B takes the receive time in its callback. One-way latency percentiles.
  rec-bridge   the same records through edgepipe: a ring in A (Outlet.emit stamps the capture time), the
               bridge stage publishing it, the bridge stage in B feeding a ring, Inlet.receive in B. One-way
               latency = receive time - capture time, so it includes both rings and both bridge stages.
  rec-bridge-spin  the same with both ring readers spinning instead of parking (WaitPolicy "spin"): how much
               of the difference is the two extra thread wake-ups.
  frames       1080p BGR uint8 frames (6.2 MB) written as fast as the lossless link takes them (FrameWriter
               into a ring, bridged), read in B (FrameReader): frames per second over ``--seconds``.
  clock        the receiving bridge's clock estimate when the sender's stamps are shifted by 3.7 s and +250 ppm:
               its error bound, and its actual error against that known truth.

    sudo python benchmarks/bridge.py [--n 5000] [--rate 1000] [--seconds 5] [--json OUT]
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
        sub = z.declare_subscriber("bench/rec", cb)
        done.wait(120)
        sub.undeclare()
    print(json.dumps({"lat_ns": lat}))


def _stage_thread(stage):
    t = threading.Thread(target=stage.run, daemon=True)
    t.start()
    return t


def role_ep_pub(a) -> None:
    import numpy as np

    from edgepipe.bridge.stage import BridgeStage
    from edgepipe.errors import RingTimeoutError
    from edgepipe.frames import FrameWriter
    from edgepipe.pipeline.api import Inlet, Outlet
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
        else:
            out = Outlet(ring.writer(), "nums", 0)
            pad = bytes(a.size - 8 - 32 - 8)  # the stamp header + one hop are part of the 1 KB
            n = a.n if a.what == "rec" else int(a.seconds * 100)
            for i in range(n):
                out.emit(i.to_bytes(8, "little") + pad, seq=i)
                time.sleep(1 / a.rate if a.what == "rec" else 0.01)
            out.close()
        t.join(60)


def role_ep_sub(a) -> None:
    from edgepipe.bridge.stage import BridgeStage
    from edgepipe.clock import now_ns
    from edgepipe.frames import FrameReader
    from edgepipe.pipeline.api import EndOfStream, Inlet, Outlet
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
            sink, lat = Inlet(ring.reader(wait=a.wait), "nums"), []
            try:
                while True:
                    rec = sink.receive(timeout_s=60)
                    if rec is None:
                        break
                    lat.append(now_ns() - rec.capture_ns)
            except EndOfStream:
                pass
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


ROLES = {"bare-pub": role_bare_pub, "bare-sub": role_bare_sub, "ep-pub": role_ep_pub, "ep-sub": role_ep_sub}


# ---------------------------------------------------------------------------------------------------------

def run_case(ns: Netns, a, pub: str, sub: str, what: str, wait: str = "hybrid") -> dict:
    me = [sys.executable, str(Path(__file__).resolve()), "--n", str(a.n), "--rate", str(a.rate), "--size",
          str(a.size), "--seconds", str(a.seconds), "--what", what, "--wait", wait, "--role"]
    env = dict(os.environ)
    s = subprocess.Popen(ns.cmd("b", me + [sub]), stdout=subprocess.PIPE, text=True, env=env)
    p = subprocess.Popen(ns.cmd("a", me + [pub]), env=env)
    out, _ = s.communicate(timeout=600)
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
    a = ap.parse_args()
    if a.role:
        ROLES[a.role](a)
        return
    import zenoh  # noqa: F401 - fail early without the bridge extra
    ns = Netns("bench")
    ns.create()
    try:
        print(f"# {' '.join(sys.argv)}  (load {os.getloadavg()[0]:.2f})")
        bare = run_case(ns, a, "bare-pub", "bare-sub", "rec")
        ep = run_case(ns, a, "ep-pub", "ep-sub", "rec")
        spin = run_case(ns, a, "ep-pub", "ep-sub", "rec", wait="spin")
        rows = {}
        for name, r in (("rec-bare", bare), ("rec-bridge", ep), ("rec-bridge-spin", spin)):
            lat = r["lat_ns"]
            rows[name] = {"n": len(lat), "p50_us": pct(lat, 50) / 1e3, "p90_us": pct(lat, 90) / 1e3,
                          "p99_us": pct(lat, 99) / 1e3}
            print(f"{name:15s} n={len(lat):6d}  p50 {rows[name]['p50_us']:8.1f} us  p90 {rows[name]['p90_us']:8.1f} us"
                  f"  p99 {rows[name]['p99_us']:8.1f} us")
        print(f"  of which bridge stage to bridge stage (envelope send stamp to the receiving callback, on the "
              f"clock estimate): p50 {ep['clock'].get('wire_p50_us')} us +- {ep['clock'].get('wire_bound_us')}")
        ratio = rows["rec-bridge"]["p50_us"] / rows["rec-bare"]["p50_us"]
        print(f"bridge/bare p50 ratio {ratio:.2f} (goal <= 1.2); with spinning ring readers "
              f"{rows['rec-bridge-spin']['p50_us'] / rows['rec-bare']['p50_us']:.2f}")
        fr = run_case(ns, a, "ep-pub", "ep-sub", "frames")
        print(f"frames      {fr['shape']} {fr['fps']:.1f} fps over {a.seconds:g} s (goal >= 30)")
        ck = run_case(ns, a, "ep-pub", "ep-sub", "clock")
        print(f"clock       bound {ck['bound_us']:.1f} us, actual error {ck['error_us']:.1f} us, drift "
              f"{ck['drift_ppm']:.1f} ppm (true 250), {ck['samples']} of {ck['exchanges']} exchanges (goal bound <= 50 us)")
        if a.json:
            Path(a.json).write_text(json.dumps({"cases": rows, "ratio_p50": ratio, "frames": fr, "clock": ck},
                                               indent=1))
    finally:
        ns.remove()


if __name__ == "__main__":
    main()
