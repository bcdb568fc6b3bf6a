"""The README's fenced code blocks are tests: pytest-codeblocks runs every python block (README.md is in
testpaths and --codeblocks in addopts), and a block that cannot run on its own says why in the plugin's
HTML-comment mark, so no block is left out silently."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

codeblocks = pytest.importorskip("pytest_codeblocks.main")

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SKIP_WITH_REASON = re.compile(r"""^pytest\.mark\.skip\(reason=(["'])(.{10,})\1\)$""")

pytestmark = pytest.mark.skipif(not README.is_file(), reason="not a checkout: no README.md")


def _blocks():
    return codeblocks.extract_from_file(README)


class TestReadmeBlocks:
    def test_every_block_runs_or_says_why_not(self):
        """Every python block either carries no mark (it runs) or exactly one pytest.mark.skip with a reason
        of a few words; bash, sh and toml blocks carry that skip; the pycon transcript is left to the doctest
        and plain blocks (diagrams) to the reader."""
        seen = []
        for b in _blocks():
            if b.syntax == "pycon":
                assert not b.marks, f"README line {b.lineno}: the pycon transcript runs as a doctest"
                continue
            if b.syntax == "" or b.syntax == "shell":  # diagrams; the quick start (checked against .ci/run below)
                continue
            assert b.syntax in ("python", "bash", "sh", "toml"), f"README line {b.lineno}: {b.syntax!r}"
            assert len(b.marks) <= 1, (b.lineno, b.marks)
            for m in b.marks:
                assert SKIP_WITH_REASON.match(m), f"README line {b.lineno}: {m!r} is not a skip with a reason"
            if b.syntax in ("bash", "sh", "toml"):
                assert b.marks, f"README line {b.lineno}: a {b.syntax} block is not run here: mark it skip"
            seen.append((b.syntax, bool(b.marks)))
        runnable = [s for s, skipped in seen if s == "python" and not skipped]
        assert len(runnable) >= 3, seen  # the IMU, frames and inference examples at least

    def test_ci_runs_the_quick_start_verbatim(self):
        """The quick start is one `shell` block of two commands (the plugin leaves it alone: it installs the
        package and runs this very suite), and .ci/run runs each of its lines exactly as written."""
        quick = [b for b in _blocks() if b.syntax == "shell"]
        assert len(quick) == 1, [b.lineno for b in quick]
        lines = [ln for ln in quick[0].code.splitlines() if ln.strip()]
        assert len(lines) == 2 and lines[1].endswith("&& pytest"), lines
        ci = (ROOT / ".ci" / "run").read_text().splitlines()
        for ln in lines:
            assert ln in ci, f".ci/run does not run the README's {ln!r} verbatim"

    def test_the_suite_collects_the_readme(self):
        """`pytest` with no arguments collects README.md's blocks: README.md is in testpaths and
        --codeblocks in addopts, and pytest-codeblocks is in the test extra."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
        ini = cfg["tool"]["pytest"]["ini_options"]
        assert "README.md" in ini["testpaths"] and "--codeblocks" in ini["addopts"].split()
        assert any(r.startswith("pytest-codeblocks") for r in cfg["project"]["optional-dependencies"]["test"])

    def test_runnable_blocks_pass(self):
        """Running the README through the plugin passes every runnable block and skips only the marked
        ones (a separate pytest, so a README block cannot disturb this process)."""
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--codeblocks", "-rs",
                            "--no-header", "README.md"], cwd=ROOT, capture_output=True, text=True, timeout=280)
        n_marked = sum(1 for b in _blocks() if b.syntax in ("python", "bash", "sh") and b.marks)
        n_run = sum(1 for b in _blocks() if b.syntax == "python" and not b.marks)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert f"{n_run} passed, {n_marked} skipped" in r.stdout, r.stdout[-2000:]
