"""examples/camera_producer.py --both: the producer and the consumer it starts run as two processes and the
frames cross (ring and latest slot), with nothing left in /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("latest", [False, True])
def test_producer_and_consumer_processes(shm_name, latest):
    """The bundled clip played once, as fast as possible: the producer publishes all 100 frames and
    exits 0, the consumer process attaches by name and ends when the producer closes."""
    cmd = [sys.executable, str(ROOT / "examples" / "camera_producer.py"), "--both", "--fast", "--once",
           "--name", shm_name] + (["--latest"] if latest else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "frame_consumer: attached" in r.stdout
    assert "frame_consumer: producer closed; done" in r.stdout
    assert "'published': 100" in r.stdout and "'end_of_stream': 1" in r.stdout
    assert not os.path.exists(f"/dev/shm/edgepipe.{shm_name}")
