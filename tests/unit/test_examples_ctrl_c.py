"""Ctrl-C in the examples: each one that runs continuously is started in its own session, and once it has
printed its first line the whole process group gets SIGINT, as a terminal sends it. It must exit 0 with no
Python traceback (children included). Also: a frame viewer (frame_consumer.py) can come and go while
camera_producer.py keeps running, and producer_consumer.py shows progress while it is paced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EX = ROOT / "examples"


class Proc:
    """An example in its own process group, its stdout read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-u", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._err: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=lambda: self._err.extend(self.p.stderr), daemon=True).start()

    def _pump(self) -> None:
        for ln in self.p.stdout:
            with self._cond:
                self.lines.append(ln.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append(None)  # end of output
            self._cond.notify_all()

    def wait_line(self, pred, start: int = 0, timeout: float = 120) -> int:
        """Index of the first line from ``start`` on that satisfies ``pred``; fails if the output ends first
        or (a bound against a hang, not a timing check) no such line comes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    ln = self.lines[i]
                    assert ln is not None, f"output ended first:\n{self.output()}"
                    if pred(ln):
                        return i
                    i += 1
                left = deadline - time.monotonic()
                assert left > 0, f"no such line within {timeout} s:\n{self.output()}"
                self._cond.wait(left)

    def ctrl_c(self) -> None:
        os.killpg(self.p.pid, signal.SIGINT)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        try:
            rc = self.p.wait(timeout)
        finally:
            if self.p.poll() is None:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        return rc, self.stderr()

    def stderr(self) -> str:
        return "".join(self._err)

    def output(self) -> str:
        return "\n".join(ln for ln in self.lines if ln is not None) + "\n--- stderr\n" + self.stderr()


CONTINUOUS = {
    "camera_producer": ["camera_producer.py"],
    "camera_producer --both": ["camera_producer.py", "--both"],
    "camera_producer --latest --both": ["camera_producer.py", "--latest", "--both"],
    "producer_consumer --rate-hz 1000": ["producer_consumer.py", "--rate-hz", "1000"],
    "control_server": ["control_server.py", "--seconds", "600"],
    "imu_to_stdout": ["imu_to_stdout.py", "--seconds", "600"],
    "imu_consumer": ["imu_consumer.py", "--seconds", "600"],
    "infer_frames": ["infer_frames.py", "--frames", "100000", "--workers", "1"],
}


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_ctrl_c_exits_0_without_a_traceback(name, shm_name, tmp_path):
    """SIGINT to the example's process group (a terminal's Ctrl-C) once it runs: exit status 0, no
    traceback in its stderr or its children's, and nothing left in /dev/shm under its name."""
    args = [EX / CONTINUOUS[name][0], *CONTINUOUS[name][1:]]
    if name.startswith("camera_producer"):
        args += ["--name", shm_name]
    if name == "control_server":
        args += ["--path", str(tmp_path / "ctl" / "control.sock")]
        (tmp_path / "ctl").mkdir(mode=0o700)
    p = Proc(*args)
    # running for real: the producer's stats line, the consumer's first report, a printed attitude...
    ready = {
        "camera_producer": lambda ln: ln.startswith("  grabbed"),
        "camera_producer --both": lambda ln: "frames/s" in ln,
        "camera_producer --latest --both": lambda ln: "frames/s" in ln,
        "producer_consumer --rate-hz 1000": lambda ln: ln.startswith("producer: sent"),
        "control_server": lambda ln: ln.startswith("listening on"),
        "imu_to_stdout": lambda ln: ln.strip()[:1].isdigit(),  # an attitude line, not the header
        "imu_consumer": lambda ln: "q=" in ln or "seq" in ln,
        "infer_frames": lambda ln: ln.startswith("frame "),
    }[name]
    p.wait_line(ready)
    p.ctrl_c()
    rc, err = p.finish()
    assert "Traceback" not in err, p.output()
    assert rc == 0, p.output()
    assert not os.path.exists(f"/dev/shm/edgepipe.{shm_name}")


def test_a_viewer_can_come_and_go(shm_name):
    """Ctrl-C on frame_consumer.py ends the viewer alone: camera_producer.py keeps publishing, and a viewer
    started later attaches the same ring and gets frames; Ctrl-C on the producer then ends it with 0."""
    prod = Proc(EX / "camera_producer.py", "--name", shm_name)
    prod.wait_line(lambda ln: ln.startswith("  grabbed"))
    for round_ in range(2):
        view = Proc(EX / "frame_consumer.py", "--name", shm_name)
        view.wait_line(lambda ln: "frames/s" in ln)
        view.ctrl_c()
        rc, err = view.finish()
        assert rc == 0 and "Traceback" not in err, view.output()
        # the producer goes on: two more stats lines after the viewer is gone, and it is still running
        i = prod.wait_line(lambda ln: ln.startswith("  grabbed"), start=len(prod.lines))
        prod.wait_line(lambda ln: ln.startswith("  grabbed"), start=i + 1)
        assert prod.p.poll() is None, prod.output()
    prod.ctrl_c()
    rc, err = prod.finish()
    assert rc == 0 and "Traceback" not in err, prod.output()
    assert "dropped_no_consumer" in prod.output()


def test_paced_producer_consumer_shows_progress():
    """With --rate-hz 1000 (200 s for the default count) the producer prints how far it is, at least once
    a second, so a paced run does not look hung; the lines count up."""
    p = Proc(EX / "producer_consumer.py", "--rate-hz", "1000")
    i = p.wait_line(lambda ln: ln.startswith("producer: sent"))
    j = p.wait_line(lambda ln: ln.startswith("producer: sent"), start=i + 1)
    p.ctrl_c()
    p.finish()
    first, second = (int(p.lines[k].split()[2].replace(",", "")) for k in (i, j))
    assert 0 < first < second <= 200_000
