"""A bridge receiving end for tests/e2e/test_bridge_netns.py, run inside a network namespace: a BridgeStage
subscribing ``edgepipe/<remote>/nums`` into a ring, drained here. Prints JSON lines: ``{"alive": bool}``
whenever the remote end comes or goes (its liveliness token), and ``{"records": n, "seq": last}`` every
50 ms. Runs until stdin closes."""

from __future__ import annotations

import json
import sys
import threading
import time

from edgepipe.bridge.stage import BridgeStage
from edgepipe.pipeline.api import EndOfStream, Inlet, Outlet
from edgepipe.ring import Ring


def main() -> None:
    connect, remote = sys.argv[1], sys.argv[2]
    with Ring.create(capacity=1 << 20) as ring:
        down = BridgeStage("down", outputs={"nums": "nums"}, remote=remote, pipeline="peer", connect=[connect])
        down.attach(inputs={}, outputs={"nums": Outlet(ring.writer(), "nums", 1)})
        t = threading.Thread(target=down.run, daemon=True)
        t.start()
        sink = Inlet(ring.reader(), "nums")
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        n, last, seen_events, t_report = 0, -1, 0, 0.0
        while not done.is_set():
            try:
                rec = sink.receive(timeout_s=0.01)
            except EndOfStream:
                rec = None
            if rec is not None:
                n += 1
                last = rec.seq
            s = down.session
            if s is not None:
                events = s.remote_events[seen_events:]
                seen_events += len(events)
                for _t, key, alive in events:
                    print(json.dumps({"alive": alive, "key": key, "mono": time.monotonic()}), flush=True)
            if time.monotonic() - t_report > 0.05:
                t_report = time.monotonic()
                print(json.dumps({"records": n, "seq": last}), flush=True)
        down.stop()
        t.join(10)
        sink.close()


if __name__ == "__main__":
    main()
