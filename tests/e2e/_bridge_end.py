"""One bridge end for tests/e2e/test_bridge_netns.py, run inside a network namespace (in-process stages over
plain rings): ``frames-pub ENDPOINT`` / ``frames-sub ENDPOINT`` send and check seeded random frames of varying
shapes; ``clock-pub ENDPOINT OFFSET_NS PPM`` / ``clock-sub ENDPOINT`` run a sender whose stamps are skewed and a
receiver that prints its clock estimate. The subscribing end prints one JSON line with its results."""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from edgepipe.bridge.stage import BridgeStage
from edgepipe.frames import FrameReader, FrameWriter
from edgepipe.pipeline.api import Inlet, Outlet
from edgepipe.ring import Ring

N_FRAMES = 30


def frame(i: int) -> np.ndarray:
    h, w = 240 + 8 * (i % 5), 320 + 16 * (i % 3)
    return np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)


def start(stage) -> threading.Thread:
    t = threading.Thread(target=stage.run, daemon=True)
    t.start()
    return t


def pub(endpoint: str, what: str, skew: list[float] | None) -> None:
    with Ring.create(capacity=1 << 23) as ring:
        up = BridgeStage("up", inputs={"n": "frames"}, pipeline="A", listen=[endpoint], clock_skew=skew)
        up.attach(inputs={"n": Inlet(ring.reader(), "frames")}, outputs={})
        t = start(up)
        if what == "frames":
            w = FrameWriter(ring.writer())
            for i in range(N_FRAMES):
                w.write_frame(frame(i), capture_ns=10_000 + i, source_id=7, timeout_s=60)
            w.close()
        else:
            out = Outlet(ring.writer(), "frames", 0)
            while sys.stdin.read(1):  # a byte per record, until the test closes stdin
                out.emit(b"tick")
            out.close()
        t.join(60)


def sub(endpoint: str, what: str) -> None:
    with Ring.create(capacity=1 << 23) as ring:
        down = BridgeStage("down", outputs={"frames": "frames"}, remote="A", pipeline="B", connect=[endpoint])
        down.attach(inputs={}, outputs={"frames": Outlet(ring.writer(), "frames", 1)})
        t = start(down)
        if what == "frames":
            r = FrameReader(ring.reader())
            ok = []
            for i in range(N_FRAMES):
                with r.read_frame(timeout_s=60) as f:
                    ok.append(f.seq == i + 1 and f.capture_ns == 10_000 + i and f.source_id == 7
                              and np.array_equal(f.array, frame(i)))
            res = {"frames": len(ok), "intact": sum(ok)}
            r.close()
        else:
            deadline = time.monotonic() + 60
            while True:
                est = down.estimate
                if est is not None and est.last_ns - est.first_ns > 2e9:
                    break
                assert time.monotonic() < deadline, "no clock estimate spanning 2 s within 60 s"
                time.sleep(0.05)
            res = {"t": [est.first_ns, (est.first_ns + est.last_ns) // 2, est.last_ns],
                   "offset": [est.offset_at(t) for t in (est.first_ns, (est.first_ns + est.last_ns) // 2, est.last_ns)],
                   "bound": [est.bound_at(t) for t in (est.first_ns, (est.first_ns + est.last_ns) // 2, est.last_ns)],
                   "drift_ppm": est.drift_ppm, "bound_ns": est.bound_ns, "span_ns": est.last_ns - est.first_ns}
        down.stop()
        t.join(30)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    role, endpoint = sys.argv[1], sys.argv[2]
    what, side = role.split("-")
    if side == "pub":
        pub(endpoint, what, [float(sys.argv[3]), float(sys.argv[4])] if what == "clock" else None)
    else:
        sub(endpoint, what)
