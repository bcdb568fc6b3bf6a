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


# --- measured numbers and their commands ------------------------------------------------------------------

# A measured quantity: a number with a unit of time, rate or share of a core, or a ratio ("1.81x").
MEASURED = re.compile(r"(?<![\w.])\d[\d,.]*(?:-\d[\d,.]*)?\s?(?:ns|us|ms|M/s|k/s|M records/s|fps|frames/s|GB/s|"
                      r"msg/s|% (?:of a core|CPU|of the model))(?![\w/])|(?<![\w.])\d[\d.]*x(?![\w])")
# The commands a measurement can come from: a benchmark script, its pytest micro-benchmarks, or the demo.
COMMAND = re.compile(r"`(python benchmarks/\w+\.py[^`]*|pytest benchmarks/\w+\.py[^`]*|edgepipe demo [^`]+)`")
# Numbers in README.md that are settings, bounds the design promises or facts of bundled data, not
# measurements; each phrase must still be in README.md (so this list cannot rot) and is blanked before checking.
NOT_MEASURED = {
    "notice within 100 ms": "the peer-death bound the design promises",
    "25 us if it can't be measured": "the hybrid policy's fallback spin (a setting)",
    "at least every 50 ms": "the peer check interval (a setting)",
    "timer slack set to 1 ns": "a setting",
    "(+20 % + 5 us), between 20 us": "the IMU guard's rule (a setting)",
    "768x576 at 10 fps": "the bundled clip's frame rate",
    "goal 0.01 % / 5 us / 100 us": "the issue's goals",
    "1 kHz IMU samples with 7 fps frames": "an example of two paths' rates",
}


def text_units(md: str) -> list[tuple[int, str]]:
    """(first line, text) of each paragraph, list item and table row outside fenced code. A generated table
    block (between `<!-- perf-table` and `<!-- /perf-table -->`) is one unit: its commands head it. A table
    row carries the paragraph right before its table, where a table names its command."""
    units, cur, start, fence, intro, block, last = [], [], 0, False, "", None, ""
    lines = md.split("\n")

    def flush():
        nonlocal cur, last
        if cur:
            last = "\n".join(cur)
            units.append((start, last))
        cur = []

    for i, ln in enumerate(lines, 1):
        if block is not None:
            block.append(ln)
            if ln.startswith("<!-- /perf-table"):
                units.append((start, "\n".join(block)))
                block = None
            continue
        if ln.startswith("<!-- perf-table"):
            flush()
            start, block = i, [ln]
            continue
        if ln.startswith("```"):
            flush()
            fence = not fence
            continue
        if fence:
            continue
        if ln.startswith("|"):
            if not lines[i - 2].startswith("|"):  # the table's first row: the paragraph before introduces it
                flush()
                intro = last
            units.append((i, intro + "\n" + ln))
            continue
        if not ln.strip() or ln.startswith("#") or re.match(r"\s*[-*] ", ln):
            flush()
            if ln.startswith("#"):
                last = ""
            if not ln.strip() or ln.startswith("#"):
                continue
        if not cur:
            start = i
        cur.append(ln)
    flush()
    return units


def numbers_without_command(md: str) -> list[str]:
    """Each unit of ``md`` that quotes a measured number but names no command that measures it."""
    out = []
    for line, unit in text_units(md):
        flat = " ".join(unit.split())
        for phrase in NOT_MEASURED:
            flat = flat.replace(phrase, "")
        nums = MEASURED.findall(re.sub(r"`[^`]*`", "", flat))  # numbers inside code are arguments, not results
        if nums and not COMMAND.search(flat):
            out.append(f"README line {line}: {nums} without a command: {flat[:120]!r}")
    return out


class TestReadmeNumbers:
    def test_every_measured_number_has_its_command_beside_it(self):
        text = README.read_text()
        flat = " ".join(text.split())
        assert [p for p in NOT_MEASURED if p not in flat] == []
        assert numbers_without_command(text) == []

    def test_a_number_without_a_command_is_found(self):
        """The check itself: a measured number with no command in its paragraph, list item or table fails;
        the same number with its command passes; a setting listed in NOT_MEASURED does not count."""
        bad = "## Speed\n\nThe ring moves 12.5 M/s here.\n\n- Ping-pong p50 336 ns on this VM.\n"
        assert len(numbers_without_command(bad)) == 2
        table = "Measured:\n\n| case | p50 |\n|---|--:|\n| spin | 336 ns |\n"
        assert len(numbers_without_command(table)) == 1
        good = ("The ring moves 12.5 M/s here (`python benchmarks/ring_throughput.py --seconds 2`).\n\n"
                "Measured with `python benchmarks/ring_latency.py`:\n\n| case | p50 |\n|---|--:|\n| spin | 336 ns |\n"
                "\nA waiting end checks the peer at least every 50 ms.\n")
        assert numbers_without_command(good) == []

    def test_cited_commands_exist(self):
        """Every `python benchmarks/X.py` or `pytest benchmarks/X.py` the README cites is a file of the checkout."""
        cited = {m.group(1).split()[1] for m in COMMAND.finditer(README.read_text()) if "benchmarks/" in m.group(1)}
        assert cited and [c for c in cited if not (ROOT / c).is_file()] == []

    def test_one_demo_run(self):
        """The demo's numbers come from one run, quoted in one place, next to the command that produced it."""
        units = [u for _, u in text_units(README.read_text()) if "edgepipe demo --seconds" in u and MEASURED.search(u)]
        assert len(units) == 1, units
        assert "`edgepipe demo --seconds 20`" in units[0]

    def test_demo_numbers_are_the_recorded_run(self):
        """The demo paragraph quotes the run whose table is checked in (benchmarks/results/demo.txt): end to end
        and model p50/p99 of the text path, the sum of edgepipe's hand-off p50s, the IMU samples' p50."""
        rec = (ROOT / "benchmarks" / "results" / "demo.txt").read_text()
        assert rec.startswith("# edgepipe demo --seconds 20 ")
        parts = {}
        for ln in rec.splitlines():
            cells = [c.strip() for c in ln.strip().strip("│").split("│")]
            if len(cells) >= 6 and cells[1].isdigit():
                parts[cells[0]] = cells
        [unit] = [u for _, u in text_units(README.read_text()) if "`edgepipe demo --seconds 20`" in u]
        flat = " ".join(unit.split())
        e2e, model = parts["end_to_end[show_text]"], parts["detect.inference"]
        assert f"p50 {e2e[2]} ms, p99 {e2e[4]} ms" in flat and f"{model[2]} / {model[4]} ms" in flat
        hand = sum(float(parts[p][2]) for p in ("frames", "detect.dispatch", "detect.worker_queue", "detect.return",
                                                  "detections"))
        assert f"{hand:.2f} ms" in flat
        assert f"p50 {float(parts['samples'][2]) * 1000:.0f} us" in flat


BENCH_README = ROOT / "benchmarks" / "README.md"
BENCH_NOT_MEASURED = {
    "25 us": "the spin budget of edgepipe's hybrid policy and of the spin-then-block peers (a setting)",
    "for 150 ms": "how long the cache-line probe runs (a setting)",
    "(< 100 ns)": "the near/far split of the probe (a setting)",
    "to <= 2x its p50": "issue 20's goal against the C-to-C floor (a goal, not a measurement)",
    "to <= 0.2x the best peer library's": "issue 20's goal against the peers (a goal, not a measurement)",
}


def bench_sections_without_command(md: str) -> list[str]:
    """Each section (## or ####) of benchmarks/README.md that quotes a measured number without naming, in the
    section, the command that measured it (a `python benchmarks/...` in backticks or a bash block)."""
    out = []
    for sec in re.split(r"\n(?=#{1,4} )", md):
        runs = re.search(r"^```bash\n(?:.*\n)*?python benchmarks/", sec, re.M)
        flat = " ".join(re.sub(r"```.*?```", "", sec, flags=re.S).split())
        for phrase in BENCH_NOT_MEASURED:
            flat = flat.replace(phrase, "")
        nums = MEASURED.findall(re.sub(r"`[^`]*`", "", flat))
        if nums and not (COMMAND.search(flat) or runs):
            out.append(f"{sec.splitlines()[0]!r}: {nums[:5]} without a command")
    return out


class TestBenchReadmeNumbers:
    def test_every_section_with_numbers_names_its_command(self):
        assert bench_sections_without_command(BENCH_README.read_text()) == []

    def test_a_section_without_its_command_is_found(self):
        md = "## a.py\n\nRun `python benchmarks/a.py`: 5 us.\n\n#### b\n\nThe ring did 12 M/s.\n"
        assert bench_sections_without_command(md) == ["'#### b': ['12 M/s'] without a command"]
