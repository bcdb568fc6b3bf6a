"""csrc/ep_frame.c under AddressSanitizer and UBSan: tests/c/frame_asan.c sends frames with fds through every
read-ahead size (with send and receive deadlines expiring part-way) and reads random byte streams against a
model; any memory error, undefined behaviour, leak, or wrong byte, length or fd fails the run."""

from __future__ import annotations

import os
import re
import subprocess

from _cbuild import CSRC, build, sources

FLAGS = ["-std=gnu11", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-fno-omit-frame-pointer", "-pthread", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}"]


def test_frame_reader_and_writer_under_asan_and_ubsan(tmp_path, require_system):
    """Three seeds of 600 frames (0-300 KB, 0-3 fds each) x 4 read-ahead sizes arrive intact with their own
    fds, some of those fds having been read ahead of their frame, and 3000 random byte streams end exactly as
    the wire-format model says, all with no sanitizer report."""
    require_system("-fsanitize=address,undefined", "libasan8 libubsan1")  # the sanitizer runtimes
    exe = build(tmp_path, "frame_asan", FLAGS, sources("frame_asan.c", "ep_frame.c"))
    for seed in (1, 2, 3):
        run = subprocess.run([str(exe), str(seed), "600", "3000"], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"))
        assert run.returncode == 0, f"seed {seed}:\n{run.stdout}\n{run.stderr[-3000:]}"
        ahead = int(re.search(r"read ahead of their frame (\d+) times", run.stdout).group(1))
        assert ahead > 0, run.stdout
