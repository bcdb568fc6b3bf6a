"""The IMU examples run end to end with no sensor attached (bundled recording, synthetic source)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)


def test_imu_to_stdout_prints_attitude():
    """imu_to_stdout.py prints roll/pitch/yaw lines and a summary with no drops, and exits 0."""
    r = _run(str(EXAMPLES / "imu_to_stdout.py"), "--seconds", "0.6", "--print-hz", "20")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip() and ln.split()[0].replace(".", "").isdigit()]
    assert len(lines) >= 5
    assert "dropped 0" in r.stdout


def test_imu_consumer_second_process_reads_every_sample():
    """imu_consumer.py: the consumer process reads as many samples as the producer published, no gaps."""
    r = _run(str(EXAMPLES / "imu_consumer.py"), "--seconds", "0.6", "--source", "synthetic")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 sequence gaps" in r.stdout
    read = int(r.stdout.split("[consumer] read ")[1].split()[0])
    published = int(r.stdout.split("published ")[1].split(",")[0])
    assert read == published > 300
