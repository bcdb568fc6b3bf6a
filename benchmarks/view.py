"""The live view (edgepipe.view): MJPEG rate to one client, the view's CPU per frame, and what it costs the
pipeline it watches (standalone script).

Cases:
  mjpeg       640x480 BGR frames written at 60 fps into a ring (a thread copying precomputed frames); the
              view stage reads them, draws the attitude overlay and encodes JPEG (quality 80) at most
              ``max_fps`` a second; one HTTP client reads /stream.mjpg for ``--seconds``. Reported: parts a
              second the client received, frames shown / skipped by the view, the view thread's CPU per frame
              (draw + encode, time.thread_time) and the whole process's CPU per frame less the producer
              thread's (so: view thread + HTTP server thread). max_fps 30 (goal >= 15 fps) and uncapped.
  demo        the bundled demo's end-to-end p50 (the detection branch, end_to_end[show_text], and the
              IMU branch, end_to_end[show_attitude]) without the view and with it and one client reading the
              stream, alternated ``--rounds`` times (~20 s per run): goal < 5 % change.

    python benchmarks/view.py --seconds 10                 # mjpeg (~25 s)
    python benchmarks/view.py --only demo --rounds 3       # the demo with and without the view (~2.5 min)
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

from edgepipe.control import messages as pb
from edgepipe.frames import FrameWriter
from edgepipe.pipeline.api import Inlet
from edgepipe.ring import Ring
from edgepipe.view.server import BOUNDARY
from edgepipe.view.stage import ViewStage


def read_stream(host: str, port: int, seconds: float, out: dict, path: str = "/stream.mjpg") -> None:
    """Read MJPEG parts for ``seconds``; out["parts"], out["bytes"]."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    assert r.status == 200, r.status
    parts = nbytes = 0
    end = time.monotonic() + seconds
    first = None
    while time.monotonic() < end:
        line = r.fp.readline()
        if line.strip() != f"--{BOUNDARY}".encode():
            continue
        length = 0
        while True:
            h = r.fp.readline()
            if h in (b"\r\n", b""):
                break
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":")[1])
        r.fp.read(length + 2)
        parts += 1
        nbytes += length
        if first is None:
            first = time.monotonic()
    out.update(parts=parts, bytes=nbytes, span_s=time.monotonic() - (first or time.monotonic()))
    conn.close()


def mjpeg_case(seconds: float, max_fps: float) -> dict:
    w, h = 640, 480
    base = np.zeros((h, w, 3), np.uint8)
    base[:, :, 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    base[:, :, 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    frames = [np.roll(base, 8 * i, axis=1) for i in range(30)]
    ring = Ring.create(capacity=16 << 20)
    fw = FrameWriter(ring.writer())
    st = ViewStage("view", inputs={"frames": "f"}, port=0, max_fps=max_fps, stats=os.devnull)
    st.attach({"frames": Inlet(ring.reader(), "f")}, {})
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        st.open()
    st.attitude = pb.AlignedAttitude(orientation=pb.Quaternion(w=0.99, x=0.1, y=0.05, z=0.0), gap_ns=300_000)
    stop = threading.Event()
    prod_cpu = [0]

    def produce():
        t0 = time.thread_time_ns()
        i, nxt = 0, time.monotonic()
        while not stop.is_set():
            if fw.try_write_frame(frames[i % 30], capture_ns=time.monotonic_ns()) is not None:
                i += 1
            nxt += 1 / 60
            time.sleep(max(0.0, nxt - time.monotonic()))
        prod_cpu[0] = time.thread_time_ns() - t0

    view = threading.Thread(target=st.loop)
    prod = threading.Thread(target=produce)
    view.start()
    prod.start()
    time.sleep(1.0)  # warm up
    shown0 = st.counters.get("frames shown", 0)
    cpu0, view0 = time.process_time_ns(), st.cpu_ns
    out: dict = {}
    read_stream("127.0.0.1", st.server.port, seconds, out)
    cpu1, view1 = time.process_time_ns(), st.cpu_ns
    shown = st.counters.get("frames shown", 0) - shown0
    stop.set()
    prod.join()
    st.stop()
    view.join()
    st.close()
    fw.close()
    ring.close()
    proc_ms = (cpu1 - cpu0 - prod_cpu[0] * seconds / (seconds + 1.0)) / max(shown, 1) / 1e6
    return {"case": f"mjpeg max_fps={max_fps:g}", "client_fps": round(out["parts"] / out["span_s"], 1),
            "frames_shown": shown, "frames_skipped": st.counters.get("frames skipped", 0),
            "view_cpu_ms_per_frame": round((view1 - view0) / max(shown, 1) / 1e6, 2),
            "process_cpu_ms_per_frame": round(proc_ms, 2), "kb_per_frame": round(out["bytes"] / max(out["parts"], 1) / 1024, 1)}


def demo_case(rounds: int, seconds: float) -> dict:
    from edgepipe.cli.main import demo_spec
    from edgepipe.pipeline.supervisor import Pipeline
    from edgepipe.view.attach import attach_view

    res = {m: {"show_text": [], "show_attitude": []} for m in ("plain", "view")}
    for r in range(rounds):
        for mode in ("plain", "view"):
            spec, _ = demo_spec()
            if mode == "view":
                attach_view(spec, port=0)
            p = Pipeline.from_spec(spec)
            client: dict = {}
            devnull = open(os.devnull, "w")
            old, sys.stdout = sys.stdout, devnull
            th = None
            try:
                if mode == "view":
                    def watch():  # one browser-like client streaming all through the run
                        deadline = time.monotonic() + 60
                        while time.monotonic() < deadline:
                            url = p.stage_stats().get("view", {}).get("url")
                            if url:
                                port = int(url.rsplit(":", 1)[1].strip("/"))
                                read_stream("127.0.0.1", port, seconds - 3, client)
                                return
                            time.sleep(0.2)
                    th = threading.Thread(target=watch, daemon=True)
                    th.start()
                p.run(seconds=seconds)
            finally:
                sys.stdout = old
                devnull.close()
            if th is not None:
                th.join(30)
            parts = {x["part"]: x for x in p.live()["parts"]}
            for sink in ("show_text", "show_attitude"):
                res[mode][sink].append(parts[f"end_to_end[{sink}]"]["p50_ms"])
            extra = ""
            if mode == "view":
                v = p.stage_stats().get("view", {})
                extra = (f", client got {client.get('parts', 0)} parts; view shown {v.get('frames shown')} skipped "
                         f"{v.get('frames skipped', 0)}, draw+encode CPU {v.get('cpu_ms_per_frame')} ms/frame")
            print(f"  demo round {r} {mode:<5} e2e p50 show_text {res[mode]['show_text'][-1]:.3f} ms, show_attitude "
                  f"{res[mode]['show_attitude'][-1]:.4f} ms{extra}", flush=True)
    row = {"case": "demo"}
    for sink in ("show_text", "show_attitude"):
        a, b = statistics.median(res["plain"][sink]), statistics.median(res["view"][sink])
        row[sink] = {"plain_p50_ms": res["plain"][sink], "view_p50_ms": res["view"][sink],
                     "change_pct": round((b - a) / a * 100, 1)}
        print(f"  demo {sink} e2e p50 median: plain {a:.3f} ms, view {b:.3f} ms: change {(b - a) / a * 100:+.1f} % "
              f"(spread plain {min(res['plain'][sink]):.3f}..{max(res['plain'][sink]):.3f}, view "
              f"{min(res['view'][sink]):.3f}..{max(res['view'][sink]):.3f})")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per mjpeg case (default 10)")
    ap.add_argument("--only", choices=["mjpeg", "demo"], default="mjpeg")
    ap.add_argument("--rounds", type=int, default=3, help="demo: alternations (default 3)")
    ap.add_argument("--demo-seconds", type=float, default=20.0, help="demo: seconds per run (default 20)")
    args = ap.parse_args()
    print(f"# {' '.join(sys.argv)}  (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    if args.only == "mjpeg":
        for fps in (30.0, 1000.0):
            print(" ", mjpeg_case(args.seconds, fps), flush=True)
    else:
        tempfile.tempdir = tempfile.mkdtemp(prefix="edgepipe-bench-")
        print(" ", demo_case(args.rounds, args.demo_seconds))


if __name__ == "__main__":
    main()
