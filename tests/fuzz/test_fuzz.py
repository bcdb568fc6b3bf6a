"""Bounded atheris runs of tests/fuzz/fuzz_frames.py (frame decoder, FrameSocket receive path, Envelope parser,
server handshake) in the default test run.

Longer runs: ``EDGEPIPE_FUZZ_SECONDS=600 pytest -m fuzz`` (or ``EDGEPIPE_FUZZ_RUNS=N`` for a fixed number
of inputs), or run the harness directly: ``python tests/fuzz/fuzz_frames.py -max_total_time=600 CORPUS``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_frames.py")
SECONDS = int(os.environ.get("EDGEPIPE_FUZZ_SECONDS", "5"))
RUNS = int(os.environ.get("EDGEPIPE_FUZZ_RUNS", "0"))  # 0: bounded by time only


@pytest.mark.fuzz
def test_fuzz_frames_bounded(tmp_path):
    """The harness runs for EDGEPIPE_FUZZ_SECONDS (default 5 s) from a seed corpus without a crash, a wrong
    answer against its model, a hang (libFuzzer -timeout=10 s per input) or a leak past 2 GB, and really
    runs inputs (at least 200)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    subprocess.run([sys.executable, HARNESS, "--write-seeds", str(corpus)], check=True, timeout=60)
    sockdir = tempfile.mkdtemp(prefix="ep-fuzz-")  # short: AF_UNIX paths are limited to 107 bytes
    args = [sys.executable, HARNESS, f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=2048",
            "-max_len=4096", f"-artifact_prefix={tmp_path}/", str(corpus)]
    if RUNS:
        args.insert(2, f"-runs={RUNS}")
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=SECONDS + 120,
                              env={**os.environ, "EDGEPIPE_FUZZ_SOCKDIR": sockdir})
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"fuzzer failed (exit {proc.returncode}):\n{out[-4000:]}"
    m = re.search(r"Done (\d+) runs", out)
    assert m and int(m.group(1)) >= 200, out[-2000:]
