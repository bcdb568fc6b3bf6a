"""The live view as a person sees it: headless Chromium loads the page of ``edgepipe view`` (the demo with a
view) and takes screenshots. The image on the page matches a /snapshot.jpg taken at the same moment
(similarity of the best-matching frame), the page changes between two screenshots, the latency chart's
canvas has drawn its bars and budget ticks, and /metrics.json agrees with the run's final report.

``EDGEPIPE_VIEW_SCREENSHOT=docs/view.png`` also saves the first screenshot there (the README's picture).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason='the view needs OpenCV: pip install "edgepipe[view]"')
pytest.importorskip("aiohttp", reason='the view needs aiohttp: pip install "edgepipe[view]"')
pytest.importorskip("onnxruntime", reason='the demo\'s detector needs onnxruntime: pip install "edgepipe[inference]"')

ROOT = Path(__file__).resolve().parents[2]
WINDOW = (1280, 720)


def browser(require_system) -> list[str]:
    """The headless Chromium command (Debian's chromium-headless-shell, or chromium --headless)."""
    if shutil.which("chromium-headless-shell"):
        return ["chromium-headless-shell"]
    if shutil.which("chromium"):
        return ["chromium", "--headless"]
    require_system("chromium-headless-shell", "chromium-headless-shell")
    raise AssertionError("unreachable")  # pragma: no cover


def screenshot(cmd: list[str], url: str, out: Path, tmp: Path) -> np.ndarray:
    """A screenshot of ``url`` (after 3 s of page time: the stream and a chart refresh have run)."""
    p = subprocess.Popen([*cmd, "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                          f"--user-data-dir={tmp / 'chromium-profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                          "--timeout=3000", f"--screenshot={out}", url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log, _ = p.communicate(timeout=120)  # a hang guard
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    img = cv2.imread(str(out))
    assert img is not None, f"no screenshot from {cmd[0]}:\n{log.decode(errors='replace')[-2000:]}"
    return img


def get(url: str) -> tuple[dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return dict(r.headers), r.read()


@pytest.fixture()
def demo_view(tmp_path):
    """``edgepipe view`` on the demo, on a free port, for up to 90 s; yields (url, process, report dir)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rep = tmp_path / "report"
    p = subprocess.Popen([sys.executable, "-m", "edgepipe", "view", "--port", "0", "--seconds", "90", "-q",
                          "--no-png", "--report-dir", str(rep), "--max-fps", "10"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def pump():
        for line in p.stdout:
            lines.append(line)
            m = re.search(r"edgepipe view: serving on (http://\S+)", line)
            if m and not url:
                url.append(m.group(1))
                found.set()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        assert found.wait(120), "the view printed no URL:\n" + "".join(lines[-40:])
        deadline = time.monotonic() + 120  # a hang guard: the detector's first frames take a while on a busy box
        while True:
            try:
                get(url[0] + "snapshot.jpg")
                break
            except urllib.error.HTTPError as e:
                assert e.code == 503 and time.monotonic() < deadline, "no picture from the view:\n" + "".join(lines[-40:])
                time.sleep(0.2)
        yield url[0], p, rep, lines
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # stop and drain, as Ctrl-C does
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        t.join(10)


def best_match(shot: np.ndarray, snaps: list[bytes]) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """The highest normalized correlation of any snapshot with any place in the screenshot: (score,
    top-left, size)."""
    best = (-1.0, (0, 0), (0, 0))
    for jpg in snaps:
        snap = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
        res = cv2.matchTemplate(shot, snap, cv2.TM_CCOEFF_NORMED)
        _, score, _, loc = cv2.minMaxLoc(res)
        if score > best[0]:
            best = (float(score), loc, (snap.shape[1], snap.shape[0]))
    return best


def test_page_shows_the_stream_chart_and_counters(tmp_path, require_system, request):
    """The page's picture matches a snapshot taken meanwhile, changes between screenshots, the chart is drawn, and
    metrics.json agrees with the final report."""
    cmd = browser(require_system)  # before the demo starts: a skip costs nothing
    url, proc, rep, lines = request.getfixturevalue("demo_view")
    snaps: list[bytes] = []
    stop = threading.Event()

    def collect():  # /snapshot.jpg all through the screenshot: the page's frame is one of these
        while not stop.is_set():
            snaps.append(get(url + "snapshot.jpg")[1])
            time.sleep(0.05)

    c = threading.Thread(target=collect)
    c.start()
    try:
        shot1 = screenshot(cmd, url, tmp_path / "shot1.png", tmp_path)
    finally:
        stop.set()
        c.join(30)
    score, (x, y), (w, h) = best_match(shot1, snaps)
    assert score > 0.9, f"the page's picture matches no snapshot taken meanwhile (best {score:.3f})"

    # a blank page or one showing something else would not match: a control with the picture turned over
    flipped = [cv2.imencode(".jpg", cv2.flip(cv2.imdecode(np.frombuffer(snaps[-1], np.uint8), 1), 0))[1].tobytes()]
    assert best_match(shot1, flipped)[0] < score - 0.2

    shot2 = screenshot(cmd, url, tmp_path / "shot2.png", tmp_path)
    region1, region2 = shot1[y:y + h, x:x + w].astype(int), shot2[y:y + h, x:x + w].astype(int)
    assert np.abs(region1 - region2).mean() > 1.0, "the picture did not change between two screenshots"

    # the chart: bars (#3c9 / #d9534f) and budget ticks (#f33) drawn on its canvas, right of the picture
    right = shot1[:, x + w:]
    bars = (np.abs(right.astype(int) - (153, 204, 51)).sum(axis=2) < 30) | \
           (np.abs(right.astype(int) - (79, 83, 217)).sum(axis=2) < 30)
    ticks = np.abs(right.astype(int) - (51, 51, 255)).sum(axis=2) < 30
    assert bars.sum() > 50 and ticks.sum() > 20, (bars.sum(), ticks.sum())  # an undrawn canvas has none

    live = json.loads(get(url + "metrics.json")[1])
    if os.environ.get("EDGEPIPE_VIEW_SCREENSHOT"):
        shutil.copyfile(tmp_path / "shot1.png", os.environ["EDGEPIPE_VIEW_SCREENSHOT"])

    proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 0, "".join(lines[-40:])
    report = json.loads((rep / "report.json").read_text())
    final = {p["part"]: p for p in report["parts"]}
    assert live["name"] == report["meta"]["name"] == "demo"
    parts = [p for p in live["parts"] if p["part"] != "end_to_end"]  # the report has it per sink only
    assert {p["part"] for p in parts} <= set(final) and "detect.inference" in final
    for p in parts:  # the live numbers are a prefix of the run the report covers
        f = final[p["part"]]
        assert p["count"] <= f["count"] and p["budget_ms"] == f["budget_ms"]
    assert set(live["links"]) == set(report["links"])
    assert live["view"]["frames_shown"] > 0 and "imu" in live["stages"]
