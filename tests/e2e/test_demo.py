"""`edgepipe demo` end to end on the bundled data: real detections where the text is, IMU attitude close to
the device's own, a report with every stage, exit 0, nothing left behind.

The default run is bounded (3 s of pipeline time); `pytest -m e2e` runs the longer variant.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from edgepipe.ahrs import load_recording

TEXT_LINE = re.compile(r"\[show_text\] seq=(\d+) e2e=[\d.]+ ms frame \d+: (\d+) text boxes (.*) \(inference")
BOX = re.compile(r"\[(\d+),(\d+),(\d+),(\d+) ([\d.]+)\]")
IMU_LINE = re.compile(r"\[show_attitude\] seq=(\d+) .* sample \d+: roll +(-?[\d.]+) pitch +(-?[\d.]+) yaw")
# The bundled page photos are 556 px wide and 257 / 323 px high; the printed text starts ~25 px from the left
# and runs the width of the page.
PAGE_W, PAGE_H = 556, 323


def _shm() -> set[str]:
    # edgepipe's own names, less the per-test names other test runs on this shared machine create meanwhile
    # (conftest's shm_name: edgepipe.t-<their pid>-...)
    others = re.compile(rf"^edgepipe\.t-(?!{os.getpid()}-)\d+-")
    return {e for e in os.listdir("/dev/shm") if e.startswith("edgepipe") and not others.match(e)}


def _tilt_deg(roll: float, pitch: float) -> float:
    """Angle between the sensor's z axis and the vertical, from roll and pitch (degrees); the same for a
    quaternion and its conjugate, so it does not depend on which way a device states its rotation."""
    c = math.cos(math.radians(roll)) * math.cos(math.radians(pitch))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def _ref_tilt(t_s: float, rec) -> float:
    i = min(int(np.searchsorted(rec.q_ref_t_s, t_s)), len(rec.q_ref) - 1)
    w, x, y, z = rec.q_ref[i]
    return math.degrees(math.acos(max(-1.0, min(1.0, 1 - 2 * (x * x + y * y)))))


def _reference_boxes() -> dict[tuple[str, tuple[int, int]], list[tuple[int, int, int, int]]]:
    """The bundled detector's boxes on each bundled page as the capture delivers it (the folder source resizes
    each page to the first one's size), computed here, in this process, for every input size a worker can
    have: a detector fixes its input size from the first frame it sees (`fit_input_hw`) and resizes later
    frames to it."""
    import cv2

    from edgepipe import TextDetector, fit_input_hw

    d = os.path.join(os.path.dirname(os.path.abspath(__import__("edgepipe").__file__)), "data", "video", "text")
    pages = {name: cv2.imread(os.path.join(d, name)) for name in sorted(os.listdir(d))}
    # as the capture delivers them: every page at the first page's size (its slot shape), resized INTER_AREA
    h, w = next(iter(pages.values())).shape[:2]
    pages = {name: img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
             for name, img in pages.items()}
    out = {}
    for hw in sorted({fit_input_hw(img.shape[:2]) for img in pages.values()}):
        det = TextDetector(input_hw=hw)
        for name, img in pages.items():
            boxes = det.detect(img)
            out[name, hw] = [(round(b.x_min), round(b.y_min), round(b.x_max), round(b.y_max)) for b in boxes]
    return out


def _run_demo(tmp_path, seconds: float):
    before = _shm()
    r = subprocess.run([sys.executable, "-m", "edgepipe", "demo", "--seconds", str(seconds), "--report-dir",
                        str(tmp_path / "rep")], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _shm() == before
    return r.stdout, json.loads((tmp_path / "rep" / "report.json").read_text())


def _check(out: str, rep: dict) -> None:
    # detections: boxes on the page, inside the frame, confident, and the very boxes the detector finds
    # on that page in this process (so the frames crossed capture -> ring -> workers -> ring intact)
    texts = TEXT_LINE.findall(out)
    assert texts, out[-2000:]
    # the capture loops over two pages and show_text prints every 7th result: the printed boxes change
    if len(texts) >= 2:
        assert len({boxes for _, _, boxes in texts}) > 1, texts
    refs = _reference_boxes()
    for _, n, boxes in texts:
        assert int(n) >= 5
        got = [tuple(map(int, b[:4])) for b in BOX.findall(boxes)]
        for (x0, y0, x1, y1), (*_, score) in zip(got, BOX.findall(boxes)):
            assert 0 <= x0 < x1 <= PAGE_W and 0 <= y0 < y1 <= PAGE_H and x1 - x0 > 100
            assert float(score) > 0.5
        assert any(int(n) == len(ref) and all(max(abs(a - b) for a, b in zip(g, r)) <= 2 for g, r in zip(got, ref))
                   for ref in refs.values()), (got, refs)
    # attitude: tilt within a few degrees of the device's own fusion (README of src/edgepipe/data/imu: a median of
    # 3.5 degrees over the recording); the resampled replay runs at 1000 Hz, so seq / 1000 is the time in s
    rec = load_recording("ngimu")
    diffs = [abs(_tilt_deg(float(r), float(p)) - _ref_tilt(int(s) / 1000.0, rec))
             for s, r, p in IMU_LINE.findall(out) if int(s) < 9000]
    assert len(diffs) >= 3, out[-2000:]
    assert np.median(diffs) < 6.0 and max(diffs) < 25.0, diffs
    # the report: every stage and ring timed, the inference split into its steps
    parts = {p["part"]: p for p in rep["parts"]}
    for name in ("capture", "frames", "detect.dispatch", "detect.preprocess", "detect.inference", "detections",
                 "imu", "samples", "end_to_end[show_text]", "end_to_end[show_attitude]"):
        assert parts[name]["count"] > 0, name
    assert "end_to_end" not in parts  # two paths: a row each, none mixing frames with IMU samples
    assert parts["end_to_end[show_text]"]["count"] == parts["detections"]["count"]
    assert parts["end_to_end[show_attitude]"]["count"] == parts["samples"]["count"]
    # the sources' health: the IMU loop's rate and deadlines, the capture's fps against its configured 10
    health = {h["stage"]: h for h in rep["health"]}
    assert health["imu"]["configured"] == 1000.0 and health["imu"]["deadlines"] >= health["imu"]["missed"] >= 0
    assert health["capture"]["configured"] == 10.0 and health["capture"]["achieved"] > 0
    assert "sources: rate and deadlines" in out and "ok: p99 <= budget, OVER: p99 > budget" in out
    assert rep["paths"]["show_attitude"] == ["imu", "samples", "end_to_end[show_attitude]"]
    st = rep["stages"]
    assert set(st) == {"capture", "detect", "show_text", "imu", "show_attitude"}
    assert all(s["state"] == "done" and s["restarts"] == 0 for s in st.values()), st
    assert st["detect"]["results"] >= 1 and st["imu"]["samples"] > 1000
    assert "report.png" in out


def test_demo_bounded(tmp_path):
    """A 3-second demo run (the default CI check)."""
    out, rep = _run_demo(tmp_path, 3)
    _check(out, rep)


@pytest.mark.e2e
def test_demo_long(tmp_path):
    """A 20-second demo run: the IMU replay loops, detections keep coming, the pipeline still exits 0."""
    out, rep = _run_demo(tmp_path, 20)
    _check(out, rep)
    assert rep["stages"]["imu"]["samples"] > 10_000
