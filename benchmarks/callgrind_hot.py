"""Instruction counts of the Python hot paths, for before/after comparisons that noise cannot move.

Run N iterations under callgrind twice (two N) and divide the difference, so interpreter start-up cancels:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/a.out python benchmarks/callgrind_hot.py ring 20000
    valgrind --tool=callgrind --callgrind-out-file=/tmp/b.out python benchmarks/callgrind_hot.py ring 120000
    # instructions per iteration = (Collected of b - Collected of a) / 100000

Cases: ``ring`` (try_write + try_read of a 64-byte record), ``frame`` (write_frame + read_frame of a 48x64x3
uint8 frame through a frame ring). Compare two checkouts by pointing PYTHONPATH at each one's package.

The ready path of a blocking call with a timeout (issue 16: a finite ``timeout_s`` must cost what None
costs when the record or the room is already there): cases ``read``, ``write``, ``wait``, ``wait_room`` and
``read_frame`` take the timeout as a third argument (``None``, ``60`` or ``60.0``), and

    python benchmarks/callgrind_hot.py --timeouts [case ...]   # runs valgrind itself, ~1.5 min a case

prints instructions per call for each case with ``None`` and ``60.0``, and their ratio. PYTHONHASHSEED is
pinned and N runs 2000 and 42000, so interpreter start-up cancels to within ~2 M instructions (~50 a call).
Every case but ``wait_room`` also runs against an older checkout (PYTHONPATH), for a before/after. The ends
get an explicit WaitPolicy, so no futex-wake measurement (edgepipe.wait) lands inside a count.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from edgepipe import FrameReader, FrameWriter, Ring, WaitPolicy

READY_CASES = ("read", "write", "wait", "wait_room", "read_frame")


def _timeout(arg: str):
    return None if arg == "None" else (float(arg) if "." in arg else int(arg))


def ready(case: str, n: int, t) -> None:
    """``n`` calls of one blocking call whose record or room is already there, with timeout ``t``."""
    rec = bytes(64)
    pol = WaitPolicy("hybrid", 25_000)  # explicit: no wake measurement (edgepipe.wait) inside the count
    with Ring.create(capacity=1 << 20) as ring:
        w, r = ring.writer(pol), ring.reader(pol)
        if case == "read":
            for _ in range(n):
                w.try_write(rec)
                r.read(timeout_s=t)
        elif case == "write":
            for _ in range(n):
                w.write(rec, timeout_s=t)
                r.try_read()
        elif case == "wait":
            for _ in range(n):
                w.try_write(rec)
                r.wait(t)
                r.try_read()
        elif case == "wait_room":
            for _ in range(n):
                w.wait_room(64, t)
                w.try_write(rec)
                r.try_read()
        else:
            src = np.zeros((48, 64, 3), np.uint8)
            fw, fr = FrameWriter(w), FrameReader(r)
            for _ in range(n):
                fw.write_frame(src, timeout_s=t)
                with fr.read_frame(t):
                    pass


def _instructions(args: list[str]) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in both runs: start-up cancels
        p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                            os.path.abspath(__file__), *args], capture_output=True, text=True, timeout=900, env=env)
        if p.returncode:
            raise RuntimeError(p.stderr[-2000:])
        m = re.search(r"^summary:\s+(\d+)", open(out).read(), re.M)
        return int(m.group(1))


def timeouts_table(cases=READY_CASES, n1: int = 2000, n2: int = 42000) -> None:
    print(f"instructions per call (callgrind, (Ir(N={n2}) - Ir(N={n1})) / {n2 - n1}); ratio to timeout_s=None",
          flush=True)
    print(f"{'case':<12}{'None':>10}{'60.0':>10}{'60.0/None':>11}", flush=True)
    for case in cases:
        per = {}
        for t in ("None", "60.0"):
            per[t] = (_instructions([case, str(n2), t]) - _instructions([case, str(n1), t])) / (n2 - n1)
        print(f"{case:<12}{per['None']:>10.0f}{per['60.0']:>10.0f}{per['60.0'] / per['None']:>11.3f}", flush=True)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--timeouts":
        timeouts_table(argv[1:] or READY_CASES)  # optionally only the cases named after it
        return 0
    case, n = argv[0], int(argv[1])
    pol = WaitPolicy("hybrid", 25_000)
    if case == "ring":
        with Ring.create(capacity=1 << 20) as ring:
            w, r = ring.writer(pol), ring.reader(pol)
            rec = bytes(64)
            for _ in range(n):
                w.try_write(rec)
                r.try_read()
    elif case == "frame":
        src = np.zeros((48, 64, 3), np.uint8)
        with Ring.create(capacity=1 << 20) as ring:
            w, r = FrameWriter(ring.writer(pol)), FrameReader(ring.reader(pol))
            for _ in range(n):
                w.write_frame(src)
                with r.read_frame(0):
                    pass
    elif case in READY_CASES:
        ready(case, n, _timeout(argv[2] if len(argv) > 2 else "None"))
    else:
        print(f"unknown case {case!r}: ring, frame, {', '.join(READY_CASES)} or --timeouts", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
