"""Edge-server offload across two network namespaces joined by a veth pair (root; standalone, not run by pytest).

The README's pair, examples/beyond_one_box/edge.toml in namespace A and server.toml in B, run for ``--seconds``
with every edge result made unsure (``min_score = 1``, so every frame goes to the server), in two cases of
one run:
  same-input   the server runs the edge's model at the edge's input (the fitted 256x544): its model time is
               the edge's, so the round trip is mostly transport and queueing.
  larger-input the server as shipped: the same model at 640x1088.
Per case, from the edge's report: frames sent, answered, timed out, and the round trip edge -> server -> edge
(the offload stage's clock: forward to the answer's arrival) p50/p99, and the same less the server's model
time (the wire both ways, both bridge stages, the server's rings and pre/post-processing).

    sudo python benchmarks/offload.py [--seconds 20] [--fps 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from _netns import Netns

EXAMPLES = ROOT / "examples" / "beyond_one_box"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def run_case(ns: Netns, tmp: Path, name: str, seconds: float, fps: float, server_input: str | None) -> dict:
    edge = (EXAMPLES / "edge.toml").read_text().replace("min_score = 0.815", "min_score = 1.0") \
        .replace("fps = 4,", f"fps = {fps:g},")
    server = (EXAMPLES / "server.toml").read_text()
    if server_input is not None:
        server = server.replace("input_hw = [640, 1088]", f"input_hw = {server_input}")
    (tmp / f"{name}-edge.toml").write_text(edge)
    (tmp / f"{name}-server.toml").write_text(server)
    run = [sys.executable, "-m", "edgepipe", "run", "--no-png", "-q"]
    s = subprocess.Popen(ns.cmd("b", run + ["--report-dir", str(tmp / f"{name}-rs"), str(tmp / f"{name}-server.toml")]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    e = subprocess.Popen(ns.cmd("a", run + ["--seconds", str(seconds), "--report-dir", str(tmp / f"{name}-re"),
                                            str(tmp / f"{name}-edge.toml")]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _, err = e.communicate(timeout=seconds + 300)
        s.send_signal(signal.SIGTERM)
        s.communicate(timeout=120)
    finally:
        for p in (e, s):
            if p.poll() is None:
                p.kill()
                p.wait(30)
    if e.returncode != 0:
        raise SystemExit(f"{name}: the edge pipeline failed:\n{err[-3000:]}")
    return json.loads((tmp / f"{name}-re" / "report.json").read_text())["stages"]["offload"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=4.0, help="the edge capture's rate (every frame goes to the server)")
    ap.add_argument("--json", metavar="OUT")
    a = ap.parse_args()
    import zenoh  # noqa: F401 - fail early without the bridge extra

    print(f"# {' '.join(sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f} at start")
    ns = Netns("off")
    ns.create()
    rows = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            for name, inp in (("same-input", "[256, 544]"), ("larger-input", None)):
                o = run_case(ns, Path(d), name, a.seconds, a.fps, inp)
                rows[name] = {k: o.get(k) for k in ("results", "forwarded", "answered", "timeouts", "late_answers",
                                                    "round_trip_p50_ms", "round_trip_p99_ms",
                                                    "round_trip_less_model_p50_ms", "round_trip_less_model_p99_ms")}
                r = rows[name]
                print(f"{name:13s} sent {r['forwarded']:4d} answered {r['answered'] or 0:4d} timed out "
                      f"{r['timeouts'] or 0:3d}  round trip p50 {r['round_trip_p50_ms']} ms p99 {r['round_trip_p99_ms']}"
                      f" ms; less the server's model time p50 {r['round_trip_less_model_p50_ms']} ms p99 "
                      f"{r['round_trip_less_model_p99_ms']} ms")
    finally:
        ns.remove()
    print(f"# load {os.getloadavg()[0]:.2f} at the end")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
