"""The live view (edgepipe.view): MJPEG rate to one client, the view's CPU per frame, and what it costs the
pipeline it watches (standalone script).

Cases:
  mjpeg       640x480 BGR frames written at 60 fps into a ring (a thread copying precomputed frames); the
              view stage reads them and its encoder process (edgepipe.view.encoder, at its default
              SCHED_IDLE) draws the attitude overlay and encodes JPEG (quality 80) at most ``max_fps`` a
              second; one HTTP client reads /stream.mjpg for ``--seconds``. Reported: parts a second the
              client received, frames shown / skipped by the view, the encoder's CPU per frame (draw +
              encode, time.thread_time in the encoder) and the view's whole CPU per frame: this process less
              the producer thread (the view's loop, the frame hand-over and the HTTP server) plus the
              encoder. max_fps 30 (goal >= 15 fps) and uncapped.
  tap         one Tap.offer of a 192-byte IMU record (what show_attitude's Inlet pays per sample for the
              view's IMU tap, after its receive stamp), ns per record.
  demo        the bundled demo's end-to-end p50 (the detection branch, end_to_end[show_text], and the
              IMU branch, end_to_end[show_attitude]) and every part's p50, without the view and with it
              and one client reading the stream, alternated ``--rounds`` times (~25 s per run): goal < 5 %
              change. ``--modes`` adds view variants (``view-normal``: the encoder and the align stage at
              normal priority; ``view-idle``, ``view-batch``, ``view-nice``: both at that one).

    python benchmarks/view.py --seconds 10                 # mjpeg (~25 s)
    python benchmarks/view.py --only tap                   # the IMU tap's copy (~1 s)
    python benchmarks/view.py --only demo --rounds 3       # the demo with and without the view (~2.5 min)
    python benchmarks/view.py --only demo --rounds 6 --modes plain,view,view-normal   # and at normal priority
"""

from __future__ import annotations

import argparse
import http.client
import json
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
    # this process less the producer thread, plus the encoder process (drawing and encoding)
    proc_ms = (cpu1 - cpu0 - prod_cpu[0] * seconds / (seconds + 1.0) + view1 - view0) / max(shown, 1) / 1e6
    return {"case": f"mjpeg max_fps={max_fps:g}", "client_fps": round(out["parts"] / out["span_s"], 1),
            "frames_shown": shown, "frames_skipped": st.counters.get("frames skipped", 0),
            "view_cpu_ms_per_frame": round((view1 - view0) / max(shown, 1) / 1e6, 2),
            "process_cpu_ms_per_frame": round(proc_ms, 2), "kb_per_frame": round(out["bytes"] / max(out["parts"], 1) / 1024, 1)}


def tap_case(n: int = 20000, reps: int = 5) -> dict:
    """What show_attitude's Inlet pays per IMU sample for the view: one Tap.offer of a 192-byte record
    (after its receive stamp), with the side ring drained every 64 records as the align stage does in
    batches; the drain alone (same loop, no offer) is subtracted. ns per record, per repetition."""
    from edgepipe.pipeline.tap import Tap

    side = Ring.create(capacity=1 << 20)
    r = side.reader()
    tap = Tap(side.writer(), "samples")
    data = b"x" * 192
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for i in range(n):
            tap.offer(data, 7)
            if i % 64 == 63:
                while r.try_read() is not None:
                    pass
        t1 = time.perf_counter_ns()
        for i in range(n):
            if i % 64 == 63:
                while r.try_read() is not None:
                    pass
        t2 = time.perf_counter_ns()
        out.append(round(((t1 - t0) - (t2 - t1)) / n))
    tap.close()
    r.close()
    side.close()
    return {"case": "tap offer, 192 B, ns per record", "reps": out, "median": statistics.median(out)}


def _one_run(mode: str, seconds: float, view_params: dict) -> tuple[dict, str]:
    """One demo run: ({part: p50_ms}, extra text). ``mode``: "plain" or a view variant."""
    from edgepipe.cli.main import demo_spec
    from edgepipe.pipeline.supervisor import Pipeline
    from edgepipe.view.attach import attach_view

    spec, _ = demo_spec()
    if mode != "plain":
        attach_view(spec, port=0, **view_params)
    p = Pipeline.from_spec(spec)
    client: dict = {}
    devnull = open(os.devnull, "w")
    sys.stdout.flush()
    saved = os.dup(1)  # the stage processes print to the fd they inherit: silence it, not only sys.stdout
    os.dup2(devnull.fileno(), 1)
    th = None
    try:
        if mode != "plain":
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
        os.dup2(saved, 1)
        os.close(saved)
        devnull.close()
    if th is not None:
        th.join(30)
    parts = {x["part"]: x["p50_ms"] for x in p.live()["parts"]}
    extra = ""
    if mode != "plain":
        v = p.stage_stats().get("view", {})
        extra = (f", client got {client.get('parts', 0)} parts; view shown {v.get('frames shown')} skipped "
                 f"{v.get('frames skipped', 0)}, draw+encode CPU {v.get('cpu_ms_per_frame')} ms/frame, sched view "
                 f"{v.get('sched')} align {p.stage_stats().get('view_align', {}).get('sched')}")
    return parts, extra


# the parts of each branch, in path order (the demo's names)
PATHS = {"show_text": ["capture", "frames", "detect.dispatch", "detect.worker_queue", "detect.preprocess",
                       "detect.inference", "detect.postprocess", "detect.return", "detections",
                       "end_to_end[show_text]"],
         "show_attitude": ["imu", "samples", "end_to_end[show_attitude]"]}


def _spread(xs: list[float]) -> str:
    return f"{min(xs) * 1e3:.1f}..{max(xs) * 1e3:.1f}"


def demo_case(rounds: int, seconds: float, modes: dict[str, dict]) -> dict:
    """``modes``: name -> view params ({} for the default view; "plain" runs without the view), alternated
    in the given order each round. Reports every part's p50 per mode (median over rounds, with the spread)
    and the change of each view mode's end-to-end p50 against plain."""
    res: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode, vp in modes.items():
            parts, extra = _one_run(mode, seconds, vp)
            res[mode].append(parts)
            print(f"  demo round {r} {mode:<10} e2e p50 show_text {parts['end_to_end[show_text]']:.3f} ms, "
                  f"show_attitude {parts['end_to_end[show_attitude]'] * 1e3:.1f} us (imu {parts['imu'] * 1e3:.1f}"
                  f" + samples {parts['samples'] * 1e3:.1f} us){extra}  load {os.getloadavg()[0]:.1f}", flush=True)
    row: dict = {"case": "demo", "rounds": rounds, "runs": res}
    print("  per-part p50, median over rounds (spread), in us:")
    for sink, names in PATHS.items():
        for part in names:
            cells = []
            for mode in modes:
                xs = [x[part] for x in res[mode] if part in x]
                if xs:
                    cells.append(f"{mode} {statistics.median(xs) * 1e3:9.1f} ({_spread(xs)})")
            if cells:
                print(f"    {part:<26} " + " | ".join(cells))
    for sink in PATHS:
        key = f"end_to_end[{sink}]"
        a = statistics.median(x[key] for x in res["plain"])
        for mode in modes:
            if mode == "plain":
                continue
            b = statistics.median(x[key] for x in res[mode])
            # paired: each round's run against the plain run just before it (the load drifts between rounds)
            paired = [(v[key] - p[key]) / p[key] * 100 for p, v in zip(res["plain"], res[mode])]
            row[f"{sink} {mode} change_pct"] = round((b - a) / a * 100, 1)
            row[f"{sink} {mode} paired_change_pct"] = [round(x, 1) for x in paired]
            print(f"  demo {sink} e2e p50 median: plain {a * 1e3:.1f} us, {mode} {b * 1e3:.1f} us: change "
                  f"{(b - a) / a * 100:+.1f} % (spread plain {_spread([x[key] for x in res['plain']])}, {mode} "
                  f"{_spread([x[key] for x in res[mode]])} us); paired per round: median "
                  f"{statistics.median(paired):+.1f} %, {min(paired):+.1f}..{max(paired):+.1f} %")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per mjpeg case (default 10)")
    ap.add_argument("--only", choices=["mjpeg", "demo", "tap"], default="mjpeg")
    ap.add_argument("--rounds", type=int, default=3, help="demo: alternations (default 3)")
    ap.add_argument("--demo-seconds", type=float, default=20.0, help="demo: seconds per run (default 20)")
    ap.add_argument("--modes", default="plain,view",
                    help="demo: runs alternated each round, comma-separated: plain (no view), view (the default "
                         "view), view-<sched> (the view's and align stage's scheduling: normal, batch, idle)")
    ap.add_argument("--json", metavar="FILE", help="demo: write every run's per-part p50s to FILE")
    args = ap.parse_args()
    print(f"# {' '.join(sys.argv)}  (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    if args.only == "tap":
        print(" ", tap_case())
    elif args.only == "mjpeg":
        for fps in (30.0, 1000.0):
            print(" ", mjpeg_case(args.seconds, fps), flush=True)
    else:
        tempfile.tempdir = tempfile.mkdtemp(prefix="edgepipe-bench-")
        modes = {}
        for m in args.modes.split(","):
            if m == "plain" or m == "view":
                modes[m] = {}
            elif m.startswith("view-"):
                modes[m] = {"sched": m[5:]}
            else:
                ap.error(f"--modes: unknown mode {m!r}")
        if "plain" not in modes:
            ap.error("--modes must include plain (the changes are against it)")
        row = demo_case(args.rounds, args.demo_seconds, modes)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
