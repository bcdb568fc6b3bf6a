"""A bridge's ``restamp_frames`` (loopback, in this process): frame records from a sender whose clock runs
2.5 s behind arrive with their capture stamp mapped onto the receiver's clock by the clock estimate and their
publish stamp set to the receiver's write; without it the header keeps the sender's stamps."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from edgepipe.clock import now_ns
from edgepipe.frames import FrameReader, FrameWriter
from edgepipe.pipeline.api import Inlet, Outlet
from edgepipe.ring import Ring

pytest.importorskip("zenoh", reason="the bridge extra (eclipse-zenoh) is not installed")

from edgepipe.bridge.stage import BridgeStage

SKEW_NS = -2_500_000_000
HANG_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("restamp", [True, False])
def test_frame_stamps_onto_the_local_clock(restamp):
    """With restamp_frames, a frame captured on the (skewed) sender arrives with its capture stamp on this
    clock (the 2.5 s skew removed, to well within a few ms) and a publish stamp no earlier than its send;
    without it the stamps are the sender's, skew and all. Pixels and seq are untouched either way."""
    port = free_port()
    with Ring.create(capacity=1 << 22) as a, Ring.create(capacity=1 << 22) as b:
        up = BridgeStage("up", inputs={"f": "frames"}, pipeline="A", listen=[f"tcp/127.0.0.1:{port}"],
                         clock_skew=[SKEW_NS, 0])
        down = BridgeStage("down", outputs={"frames": "frames"}, remote="A", pipeline="B",
                           connect=[f"tcp/127.0.0.1:{port}"], restamp_frames=restamp)
        up.attach(inputs={"f": Inlet(a.reader(), "frames")}, outputs={})
        down.attach(inputs={}, outputs={"frames": Outlet(b.writer(), "frames", 1)})
        threads = [threading.Thread(target=s.run, daemon=True) for s in (down, up)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + HANG_S
            while down.estimate is None:  # the receiver's pings have given it an offset estimate
                assert time.monotonic() < deadline, "no clock estimate"
                time.sleep(0.05)
            w, r = FrameWriter(a.writer()), FrameReader(b.reader())
            sent = []
            for i in range(5):
                img = np.full((16, 24, 3), i, np.uint8)
                cap = now_ns()
                w.write_frame(img, capture_ns=cap, timeout_s=HANG_S)
                sent.append((cap, now_ns()))
            got = []
            for _ in sent:
                with r.read_frame(timeout_s=HANG_S) as f:
                    got.append((f.seq, f.capture_ns, f.publish_ns, int(f.array[0, 0, 0]), now_ns()))
            w.close()
            r.close()
        finally:
            for s in (up, down):
                s.stop()
            for t in threads:
                t.join(30)
    for i, ((cap, after_write), (seq, cap2, pub2, px, read_ns)) in enumerate(zip(sent, got)):
        assert seq == i + 1 and px == i
        if restamp:
            assert abs(cap2 - cap) < 5_000_000, (cap2 - cap)  # the skew was 2.5 s
            assert after_write - 5_000_000 < pub2 <= read_ns
        else:
            assert cap2 == cap + SKEW_NS
            assert pub2 < after_write + SKEW_NS + 5_000_000  # the sender's (skewed) publish stamp
    assert down.restamped_without_clock == 0
