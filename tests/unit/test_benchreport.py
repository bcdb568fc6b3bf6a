"""The summary `edgepipe bench` writes from the benchmarks' --json files (src/edgepipe/cli/bench.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgepipe.cli import bench as br
from edgepipe.cli.main import _bench_flags, main

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
CASES = ["edgepipe read() spin", "edgepipe read() park"]


@pytest.fixture(scope="module")
def ring_latency_json(tmp_path_factory) -> Path:
    """A real JSON from a short ring_latency run of two edgepipe cases (about 5 s)."""
    out = tmp_path_factory.mktemp("bench") / "ring_latency.json"
    r = subprocess.run([sys.executable, str(BENCH / "ring_latency.py"), "--seconds", "0.3", "--only", ",".join(CASES),
                        "--json", str(out)], capture_output=True, text=True, timeout=120, cwd=BENCH.parent)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out


class TestSummary:
    def test_real_run_gives_a_table_goals_and_a_plot(self, ring_latency_json, tmp_path):
        """Each case of the real run is a row with its p50 (and p99 beside it); every goal line is kept."""
        s = br.load("ring_latency", str(ring_latency_json))
        assert s.error == ""
        assert [c.case for c in s.cases] == CASES
        assert all(c.metric == "p50_ns" and c.value is not None and c.extra.startswith("p99_ns") and c.edgepipe
                   for c in s.cases)
        goals = json.loads(ring_latency_json.read_text())["goals"]["1"]
        assert [g.name for g in s.goals] == list(goals)
        assert {g.verdict for g in s.goals} <= {"PASS", "FAIL", "?"}
        md = br.markdown([s])
        assert all(f"**{c}**" in md for c in CASES) and "busy-poll p50" in md and "![ring_latency](ring_latency.png)" in md
        png = tmp_path / "ring_latency.png"
        assert br.plot(s, str(png))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        case_table, goal_table = br.rich_tables([s])
        assert case_table.row_count == 2 and goal_table.row_count == len(goals)

    def test_peers_and_flat_goals_and_nested_numbers(self):
        """Peers are not edgepipe; a flat goal mapping (imu_loop's shape) and nested numbers (jit.p99) work;
        a failed round is left out of the median and a case failed in every round keeps its error."""
        doc = {"rows": [{"case": "1000Hz hybrid", "jit": {"p99": 3.0, "p999": 9.0}, "rate_hz": 1000.0},
                        {"case": "peer", "edgepipe": False, "msgs_per_s": 10.0, "round": 1},
                        {"case": "peer", "edgepipe": False, "msgs_per_s": 30.0, "round": 2},
                        {"case": "peer", "edgepipe": False, "ok": False, "error": "boom\nmore", "round": 3},
                        {"case": "dead", "ok": False, "error": "skipped: not installed"}],
               "goals": {"rate": {"pass": False, "detail": "999 Hz"}}}
        s = br.summarize("imu", doc)
        by = {c.case: c for c in s.cases}
        assert (by["1000Hz hybrid"].metric, by["1000Hz hybrid"].value, by["1000Hz hybrid"].extra) == \
            ("jit.p99", 3.0, "jit.p999 9")
        assert (by["peer"].value, by["peer"].edgepipe) == (20.0, False)
        assert by["dead"].value is None and by["dead"].error == "skipped: not installed"
        assert [(g.verdict, g.name, g.round) for g in s.goals] == [("FAIL", "rate", "")]

    def test_ahrs_speed_json_has_ns_per_update(self, tmp_path):
        """ahrs_speed.py's own --json gives one case per filter call, ns per update as the headline, the
        reference filters marked as peers."""
        out = tmp_path / "ahrs_speed.json"
        r = subprocess.run([sys.executable, str(BENCH / "ahrs_speed.py"), "--samples", "2000", "--ref-samples", "20",
                            "--repeats", "1", "--no-callgrind", "--json", str(out)],
                           capture_output=True, text=True, timeout=120, cwd=BENCH.parent)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        cases = {c.case: c for c in br.summarize("ahrs_speed", json.loads(out.read_text())).cases}
        assert cases["batch imu"].metric == "update_ns" and cases["batch imu"].edgepipe
        assert 0 < cases["batch imu"].value < cases["per-sample imu"].value
        assert not cases["ahrs imu"].edgepipe and cases["ahrs imu"].value > cases["per-sample imu"].value

    def test_rows_outside_rows_are_found(self):
        """A script with its own tables (callgrind_pair: rows [] plus "native") still gets a summary."""
        s = br.summarize("cg", {"rows": [], "native": [{"kind": "ring", "mode": "stream", "min": 5.0, "median": 6.0}]})
        assert [(c.case, c.metric, c.value, c.group) for c in s.cases] == [("ring stream", "median", 6.0, "native")]

    @pytest.mark.parametrize("text, why", [("{not json", "unreadable JSON"), ("[1, 2]", "not an object"),
                                           ('{"rows": []}', "no rows")])
    def test_broken_json_is_reported(self, tmp_path, text, why):
        p = tmp_path / "x.json"
        p.write_text(text)
        s = br.load("x", str(p))
        assert why in s.error and s.cases == []
        assert why in br.markdown([s]) and not br.plot(s, str(tmp_path / "x.png"))
        assert not (tmp_path / "x.png").exists()


class TestBenchCommand:
    def test_flags_read_from_the_real_scripts(self):
        """Scripts on _common.parse_args get --seconds and --json; ahrs_speed (own argparse) gets only the
        --json it declares, not --seconds."""
        assert _bench_flags(str(BENCH / "ring_latency.py")) == (True, True)
        assert _bench_flags(str(BENCH / "imu_loop.py")) == (True, True)
        assert _bench_flags(str(BENCH / "ahrs_speed.py")) == (False, True)

    def test_bench_passes_json_and_summarizes(self, tmp_path, capsys):
        """bench hands --json PATH to a parse_args-style script, plots its cases and prints the goal lines; a
        script writing broken JSON and one without --json are listed, not a crash; test_*.py is not run."""
        d = tmp_path / "benchmarks"
        d.mkdir()
        (d / "_common.py").write_text("")
        (d / "good.py").write_text(
            "import argparse, json\np = argparse.ArgumentParser()\np.add_argument('--seconds')\n"
            "p.add_argument('--json')\na = p.parse_args()\n"
            "rows = [{'case': 'edgepipe ring', 'edgepipe': True, 'p50_ns': 300, 'p99_ns': 500, 'round': 1},"
            " {'case': 'pipe', 'edgepipe': False, 'p50_ns': 9000, 'round': 1}]\n"
            "json.dump({'rows': rows, 'goals': {'1': {'fast enough': {'pass': True, 'detail': '300 ns'}}}},"
            " open(a.json, 'w'))\n")
        (d / "badjson.py").write_text(
            "import argparse\np = argparse.ArgumentParser()\np.add_argument('--seconds')\np.add_argument('--json')\n"
            "open(p.parse_args().json, 'w').write('{oops')\n")
        (d / "plain.py").write_text("import sys; print(sys.argv[1:])\n")
        (d / "test_micro.py").write_text("raise SystemExit(5)\n")
        out = tmp_path / "out"
        assert main(["bench", "--dir", str(d), "--out", str(out), "--seconds", "0.1"]) == 0
        printed = capsys.readouterr().out
        assert "good.json" in printed and "test_micro" not in printed
        assert "fast enough" in printed and "PASS" in printed and "unreadable JSON" in printed
        assert "no --json option" in printed
        assert (out / "good.png").stat().st_size > 5000 and not (out / "badjson.png").exists()
        summary = json.loads((out / "summary.json").read_text())["scripts"]
        assert [s["name"] for s in summary] == ["badjson", "good", "plain"]
        assert [c["case"] for c in summary[1]["cases"]] == ["edgepipe ring", "pipe"]
        readme = (out / "README.md").read_text()
        assert "| good | **edgepipe ring** |  | p50_ns | 300 | p99_ns 500 |" in readme
        assert "| good |  | PASS | fast enough | 300 ns |" in readme
        assert (out / "summary.md").read_text() in readme
