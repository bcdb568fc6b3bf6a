"""InferenceStage with ``output=None``: read_result() reads the worker processes' results rings itself while
workers are killed under it. A writer thread streams two kinds of frame (a photographed text page and a blank
one, in a pseudo-random order keyed by the frame's seq) into the input ring; the reader takes every result
and checks it against that frame's reference detections (the in-process TextDetector's boxes: the checksum of
a result here), and that results arrive in frame order; every so many results it SIGKILLs a worker. At the
end every frame is accounted for: results + frames_lost == frames sent, one crash and one restart per kill.

Default run: 30 frames, 2 kills (about 20 s); ``pytest -m stress`` runs 300 frames and 10 kills.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402

from edgepipe import InferenceStage, ModelSpec, Ring, TextDetector  # noqa: E402
from edgepipe.errors import RingTimeoutError  # noqa: E402
from edgepipe.frames import FrameReader, FrameWriter  # noqa: E402
from edgepipe.stages.capture import sample_text_images  # noqa: E402
from edgepipe.stages.inference import fit_input_hw  # noqa: E402

HW = (240, 320)


def _kind(seq: int) -> int:
    """Which frame seq carries: 0 the text page, 1 the blank frame (fixed per seq, so the reader can check)."""
    return (seq * 2654435761 >> 7) & 1


@pytest.mark.parametrize("n,kills", [pytest.param(30, 2, id="default"),
                                     pytest.param(300, 10, id="long", marks=pytest.mark.stress)])
def test_results_in_order_and_intact_while_workers_die(n, kills):
    page = cv2.resize(cv2.imread(str(sample_text_images()[0])), HW[::-1], interpolation=cv2.INTER_AREA)
    frames = [page, np.full_like(page, 128)]
    det = TextDetector(input_hw=fit_input_hw(HW))
    refs = [[(d.x_min, d.y_min, d.x_max, d.y_max) for d in det.detect(f)] for f in frames]
    assert refs[0] and not refs[1], refs  # the page has text, the blank frame none

    fin = Ring.create(None, 1 << 22)
    fw = FrameWriter(fin.writer())
    stage = InferenceStage(FrameReader(fin.reader()), None, model=ModelSpec(input_hw=fit_input_hw(HW)), workers=2,
                           max_frame_bytes=page.nbytes)
    stage.start()
    got: list[int] = []
    bad: list[str] = []
    try:
        stage.wait_ready(60)

        def write() -> None:
            for i in range(n):
                seq = i + 1  # the frame writer numbers frames from 1
                fw.write_frame(frames[_kind(seq)], timeout_s=60)

        writer = threading.Thread(target=write)
        writer.start()
        rng = random.Random(20)
        kill_at = sorted(rng.sample(range(2, n - 5), kills))
        deadline = time.monotonic() + 60 + 3 * n
        while time.monotonic() < deadline:
            c = stage.counters
            if len(got) + c["frames_lost"] >= n:
                break
            try:
                m = stage.read_result(timeout_s=0.2)
            except RingTimeoutError:
                continue
            boxes = [(b.x_min, b.y_min, b.x_max, b.y_max) for b in m.detections.boxes]
            want = refs[_kind(m.frame_seq)]
            if len(boxes) != len(want) or any(abs(a - b) > 1e-3 for x, y in zip(boxes, want) for a, b in zip(x, y)):
                bad.append(f"seq {m.frame_seq}: {boxes} != {want}")
            got.append(m.frame_seq)
            if kill_at and len(got) >= kill_at[0]:
                kill_at.pop(0)
                ready = []
                while not ready and time.monotonic() < deadline:  # a worker still loading its model is not
                    ready = [w["pid"] for w in stage.stats()["workers"] if w["ready"] and w["pid"]]  # killed:
                    if not ready:  # max_restarts deaths before READY fail the stage
                        time.sleep(0.05)
                victim = rng.choice(ready)
                os.kill(victim, signal.SIGKILL)
                while stage.counters["worker_restarts"] < kills - len(kill_at) and time.monotonic() < deadline:
                    try:  # the dead worker's frames are skipped, the others still come in order
                        m = stage.read_result(timeout_s=0.2)
                    except RingTimeoutError:
                        continue
                    got.append(m.frame_seq)
                    want = refs[_kind(m.frame_seq)]
                    if len(m.detections.boxes) != len(want):
                        bad.append(f"seq {m.frame_seq}: {len(m.detections.boxes)} boxes != {len(want)}")
        writer.join(60)
    finally:
        stage.stop()
        stage.join(60)
        fin.close()
    stats = stage.stats()
    assert bad == []
    assert got == sorted(got) and len(set(got)) == len(got)  # frame order, each once
    assert stats["frames_in"] == stats["dispatched"] == n
    assert len(got) + stats["frames_lost"] == n and stats["results"] == len(got)
    assert stats["worker_crashes"] == stats["worker_restarts"] == kills
    assert stats["error"] is None
