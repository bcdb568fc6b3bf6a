"""Bounded atheris runs of the harnesses in tests/fuzz in the default test run, one test per target:

  frames     fuzz_frames.py: frame decoder, FrameSocket receive path, Envelope parser, server handshake
  ring       fuzz_ring.py: the ring reader's record walk over a hostile data area and control block
  image      fuzz_image.py: the 128-byte frame header through FrameReader (ring) and LatestReader
  imu_csv    fuzz_imu_csv.py: CsvSource / parse_csv on fuzzed file contents
  iio        fuzz_iio.py: parse_scan_type, and IioSource(buffered=True) over a fuzzed fake sysfs tree
  config     fuzz_config.py: parse_config on fuzzed and on structured TOML
  envelopes  fuzz_envelopes.py: Envelopes sent to a live Server after a valid Hello

Each runs for EDGEPIPE_FUZZ_SECONDS (default 5 s for frames, 2 s for each of the others: with start-up,
about 30 s for the six of them) from its seed corpus (``--write-seeds``).
Longer runs: ``EDGEPIPE_FUZZ_SECONDS=600 pytest -m fuzz`` (or ``EDGEPIPE_FUZZ_RUNS=N`` for a fixed number
of inputs), or run a harness directly: ``python tests/fuzz/fuzz_ring.py -max_total_time=600 CORPUS``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = os.environ.get("EDGEPIPE_FUZZ_SECONDS")
RUNS = int(os.environ.get("EDGEPIPE_FUZZ_RUNS", "0"))  # 0: bounded by time only

# target -> (harness, default seconds, fewest inputs a bounded run must execute)
TARGETS = {
    "frames": ("fuzz_frames.py", 5, 200),
    "ring": ("fuzz_ring.py", 2, 500),
    "image": ("fuzz_image.py", 2, 1000),
    "imu_csv": ("fuzz_imu_csv.py", 2, 300),
    "iio": ("fuzz_iio.py", 2, 50),
    "config": ("fuzz_config.py", 2, 500),
    "envelopes": ("fuzz_envelopes.py", 2, 100),
}


def run_harness(target: str, tmp_path) -> int:
    """Run one harness for its bounded time from its seed corpus; return the inputs it executed."""
    harness, default_s, min_runs = TARGETS[target]
    path = os.path.join(HERE, harness)
    seconds = int(SECONDS) if SECONDS else default_s
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    subprocess.run([sys.executable, path, "--write-seeds", str(corpus)], check=True, timeout=60)
    sockdir = tempfile.mkdtemp(prefix="ep-fuzz-")  # short: AF_UNIX paths are limited to 107 bytes
    args = [sys.executable, path, f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048",
            "-max_len=4096", f"-artifact_prefix={tmp_path}/", str(corpus)]
    if RUNS:
        args.insert(2, f"-runs={RUNS}")
    try:
        env = {**os.environ, "EDGEPIPE_FUZZ_SOCKDIR": sockdir, "EDGEPIPE_FUZZ_TMPDIR": str(tmp_path)}
        proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=seconds + 120, env=env)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{harness} failed (exit {proc.returncode}):\n{out[-4000:]}"
    m = re.search(r"Done (\d+) runs", out)
    assert m and int(m.group(1)) >= (min(min_runs, RUNS) if RUNS else min_runs), out[-2000:]
    print(f"{target}: {m.group(1)} inputs in {seconds} s")
    return int(m.group(1))


@pytest.mark.fuzz
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_bounded(target, tmp_path):
    """The target's harness runs for its bounded time without a crash, a wrong answer against its model, an
    untyped exception, a hang (libFuzzer -timeout=10 s per input) or a leak past 2 GB, and really runs
    inputs (at least its TARGETS minimum)."""
    run_harness(target, tmp_path)
