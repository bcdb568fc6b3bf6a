"""What the documented commands write into a checkout is ignored by git: examples/uds_client.c's build (gen/,
the uds_client binary), `edgepipe run`/`demo` reports (edgepipe-report/) and `edgepipe bench` (edgepipe-bench/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", ["gen/edgepipe/v1/edgepipe.pb-c.c", "gen/edgepipe/v1/edgepipe.pb-c.h", "uds_client",
                                  "edgepipe-report/report.json", "edgepipe-bench/README.md"])
def test_build_outputs_are_ignored(path):
    """git check-ignore says the path is ignored (so `git status` stays clean after following the docs)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    assert r.returncode == 0, f"{path} is not in .gitignore"


def test_sources_are_not_ignored():
    """The sources next to them are not: examples/uds_client.c and proto/ stay tracked."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("examples/uds_client.c", "proto/edgepipe/v1/edgepipe.proto", "examples/gen_notes.txt"):
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 1, path
