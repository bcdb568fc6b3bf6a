"""Where the time of one bridged record goes, on loopback in one process (standalone script, not run by pytest).

A ring -> bridge stage -> zenoh (TCP on 127.0.0.1) -> bridge stage -> ring, every stage on a thread of this
process, so every stamp is on one clock: p50 of capture -> the sending bridge's put (the first ring hand-off),
put -> the receiving bridge's callback (zenoh), and capture -> the consumer's receive (everything).

    python benchmarks/bridge_breakdown.py [--n 2000] [--size 1000]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

from edgepipe.bridge.stage import BridgeStage
from edgepipe.bridge.wire import KIND_RECORD, unpack
from edgepipe.clock import now_ns
from edgepipe.pipeline.api import Inlet, Outlet
from edgepipe.pipeline.wire import unpack_record
from edgepipe.ring import Ring


class _Stamped(BridgeStage):
    """A receiving bridge that also notes, per record, (put - capture, callback - put)."""

    def _on_sample(self, sample) -> None:
        t = now_ns()
        env = unpack(sample.payload.to_bytes(), max_bytes=1 << 20)
        if env.kind == KIND_RECORD:
            rec = unpack_record(env.body)
            self.last = (env.send_ns - rec.capture_ns, t - env.send_ns)
        super()._on_sample(sample)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1000)
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parts = []
    with Ring.create(capacity=1 << 20) as ra, Ring.create(capacity=1 << 20) as rb:
        up = BridgeStage("up", inputs={"n": "nums"}, pipeline="A", listen=[f"tcp/127.0.0.1:{port}"])
        down = _Stamped("down", outputs={"nums": "nums"}, remote="A", pipeline="B", connect=[f"tcp/127.0.0.1:{port}"])
        up.attach(inputs={"n": Inlet(ra.reader(), "nums")}, outputs={})
        down.attach(inputs={}, outputs={"nums": Outlet(rb.writer(), "nums", 1)})
        threads = [threading.Thread(target=st.run, daemon=True) for st in (down, up)]
        for t in threads:
            t.start()
        while not (up.session and up.session.remotes_alive()):
            time.sleep(0.01)
        time.sleep(1.0)
        src, sink = Outlet(ra.writer(), "nums", 0), Inlet(rb.reader(), "nums")
        for i in range(a.n):
            src.emit(bytes(a.size), seq=i)
            rec = sink.receive(timeout_s=10)
            parts.append((*down.last, now_ns() - rec.capture_ns))
            time.sleep(0.001)
        src.close()
        for st in (up, down):
            st.stop()
        for t in threads:
            t.join(10)
    print(f"# {a.n} records of {a.size} B payload at ~1 kHz, loopback, one process")
    for i, name in enumerate(("capture -> put (ring hand-off)", "put -> far callback (zenoh)",
                              "capture -> consumer receive (all)")):
        xs = sorted(p[i] for p in parts)
        print(f"{name:36s} p50 {xs[len(xs) // 2] / 1e3:7.1f} us  p90 {xs[len(xs) * 9 // 10] / 1e3:7.1f} us")


if __name__ == "__main__":
    main()
