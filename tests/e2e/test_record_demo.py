"""The bundled demo round-trips through a recording: record it (frames, IMU samples, detections), replay
the recorded frames and samples through the same pipeline in place of its capture and IMU stages at the
recorded pace, and the detections compare equal to the recorded ones (``edgepipe replay --compare``).

Under load too: the golden run's detector may drop frames it cannot keep up with (the demo's budget_ms); the
comparison replays lockstep with that deadline off, so every recorded frame gets a result, every golden
result is compared, and the frames the golden run dropped are listed as not judged, not as differences.

Marked e2e (about 40 s on 2 cores: the detector runs twice over the frames): ``pytest -m e2e``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("mcap")
pytest.importorskip("onnxruntime")
pytest.importorskip("cv2")

from edgepipe._data import data_path  # noqa: E402
from edgepipe.record.reader import recording_info  # noqa: E402

pytestmark = pytest.mark.e2e


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepipe", *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_demo_records_and_replays_to_the_same_detections(tmp_path):
    """Record 10 s of the demo: frames (foxglove.RawImage), samples (ImuSample) and detections are there with
    nothing dropped; replaying it through the demo pipeline gives the same detections (exit 0)."""
    demo = str(data_path("demo.toml"))
    golden = tmp_path / "golden.mcap"
    r = run("record", demo, "-o", str(golden), "--seconds", "10", "--compression", "lz4")
    assert r.returncode == 0, r.stderr
    info = recording_info(golden)
    counts = {c.topic: c.messages for c in info.channels}
    assert counts["/frames"] > 0 and counts["/detections"] > 0 and counts["/samples"] > 1000
    assert {c.topic: c.schema for c in info.channels}["/frames"] == "foxglove.RawImage"
    assert not any(info.drops.values()), info.drops
    r = run("replay", str(golden), "--pipeline", demo, "--compare", str(golden))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "lockstep" in r.stdout and "deadlines off: detect.budget_ms=1000" in r.stdout
    assert "DROPPED" not in r.stdout and "DIFF" not in r.stdout, r.stdout[-2000:]
    assert f"compared {counts['/detections']} messages on /detections: no difference" in r.stdout
