"""The edgepipe command: ls, status and cleanup of named rings and stale files; run, report, top, doctor,
demo wiring and the help text of every command."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from edgepipe import Ring, runtime_dir
from edgepipe.cli.main import build_parser, demo_spec, main

SHM = "/dev/shm/edgepipe."


class TestCleanup:
    def test_removes_ring_whose_processes_are_dead(self, shm_name, capsys):
        """A named ring created by a process that has exited is unlinked by cleanup."""
        code = f"from edgepipe import Ring; r = Ring.create({shm_name!r}, capacity=4096); r.writer(); r.close()"
        subprocess.run([sys.executable, "-c", code], check=True)
        assert os.path.exists(SHM + shm_name)
        assert main(["cleanup", "--yes"]) == 0
        assert not os.path.exists(SHM + shm_name)
        assert f"removed  {shm_name}" in capsys.readouterr().out

    def test_keeps_ring_of_a_live_process(self, shm_name, capsys):
        """A ring whose creator is this (live) process survives cleanup."""
        ring = Ring.create(shm_name, capacity=4096)
        try:
            assert main(["cleanup", "--yes"]) == 0
            assert os.path.exists(SHM + shm_name)
            assert "kept" in capsys.readouterr().out
        finally:
            ring.unlink()
            ring.close()

    @pytest.mark.parametrize("argv", [["cleanup"], ["cleanup", "--dry-run"], ["cleanup", "-n", "--yes"]])
    def test_dry_run_removes_nothing(self, shm_name, capsys, argv):
        """cleanup without --yes (or with -n) names the dead ring but leaves it in place."""
        code = f"from edgepipe import Ring; Ring.create({shm_name!r}, capacity=4096).close()"
        subprocess.run([sys.executable, "-c", code], check=True)
        try:
            assert main(argv) == 0
            out = capsys.readouterr().out
            assert f"would remove {shm_name}" in out and "--yes" in out
            assert os.path.exists(SHM + shm_name)
        finally:
            os.unlink(SHM + shm_name)

    def test_stale_socket_and_stats_file(self, capsys):
        """A socket nobody listens on and the stats file of a dead supervisor are listed, then removed with
        --yes; a socket with a listener and a live supervisor's file stay."""
        d = runtime_dir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        stale_json = os.path.join(d, f"pipeline-{int(dead.stdout)}-abc.json")
        live_json = os.path.join(d, f"pipeline-{os.getpid()}-abc.json")
        stale_sock = os.path.join(d, f"t-{uuid.uuid4().hex[:8]}.sock")
        live_sock = os.path.join(d, f"t-{uuid.uuid4().hex[:8]}.sock")
        for p in (stale_json, live_json):
            with open(p, "w") as f:
                f.write("{}")
        s1 = socket.socket(socket.AF_UNIX)
        s1.bind(stale_sock)
        s1.close()  # bound, never listened, closed: the file stays and connect() is refused
        s2 = socket.socket(socket.AF_UNIX)
        s2.bind(live_sock)
        s2.listen()
        try:
            assert main(["cleanup"]) == 0
            out = capsys.readouterr().out
            assert f"would remove {stale_sock} (socket nobody listens on)" in out
            assert f"would remove {stale_json}" in out
            assert live_sock not in out and live_json not in out
            assert os.path.exists(stale_sock)
            assert main(["cleanup", "--yes"]) == 0
            assert not os.path.exists(stale_sock) and not os.path.exists(stale_json)
            assert os.path.exists(live_sock) and os.path.exists(live_json)
        finally:
            s2.close()
            for p in (stale_json, live_json, stale_sock, live_sock):
                if os.path.exists(p):
                    os.unlink(p)


class TestListing:
    def test_ls_and_status_show_the_ring(self, shm_name, capsys):
        """ls lists a named ring with its capacity; status prints its control block."""
        with Ring.create(shm_name, capacity=8192) as ring:
            ring.writer().try_write(b"x")
            assert main(["ls"]) == 0
            out = capsys.readouterr().out
            assert shm_name in out and "capacity=8192" in out and "queued=1" in out
            assert main(["status", shm_name]) == 0
            out = capsys.readouterr().out
            assert "records_written    1" in out

    def test_status_of_missing_ring_fails(self, shm_name, capsys):
        """status of a name that does not exist exits 1 and names it."""
        assert main(["status", shm_name]) == 1
        assert shm_name in capsys.readouterr().err

    @pytest.mark.parametrize("bad", ["../etc", ".hidden", "a/b", ""])
    def test_status_of_a_name_that_cannot_be_a_segment_is_a_usage_error(self, bad):
        """A name no segment can have is a one-line usage error naming it (exit 2), not a traceback."""
        r = subprocess.run([sys.executable, "-m", "edgepipe", "status", bad], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and f"bad segment name {bad!r}" in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("edgepipe status: error: argument name:")

    def test_ls_lists_each_live_pid_once(self, shm_name, capsys):
        """A ring whose creator is also its producer and consumer (this process) shows that pid once."""
        with Ring.create(shm_name, capacity=8192) as ring:
            w, r = ring.writer(), ring.reader()
            assert main(["ls"]) == 0
            line = next(ln for ln in capsys.readouterr().out.splitlines() if shm_name in ln)
            w.close()
            r.close()
        assert line.endswith(f"live pids [{os.getpid()}]"), line


PIPE = """\
[pipeline]
name = "cli-test"
budget_ms = 200

[stages.src]
kind = "counter"
outputs = { out = "n" }
params = { count = 400, rate_hz = 2000 }

[stages.mid]
kind = "relay"
inputs = { in = "n" }
outputs = { out = "m" }
budget_ms = 50

[stages.sink]
kind = "check"
inputs = { in = "m" }
"""


class TestRunAndReport:
    def test_run_writes_report_and_report_reads_it(self, tmp_path, capsys):
        """`run FILE` runs to the end of the source (exit 0), prints the budget table, writes report.json and
        report.png; `report DIR` prints the same parts again and --check passes."""
        f = tmp_path / "p.toml"
        f.write_text(PIPE)
        assert main(["run", str(f), "--report-dir", str(tmp_path / "rep"), "-q"]) == 0
        out = capsys.readouterr().out
        for part in ("src", "mid", "end_to_end", "report.json", "report.png", "exit status 0"):
            assert part in out
        rep = json.loads((tmp_path / "rep" / "report.json").read_text())
        assert rep["stages"]["sink"]["ok"] == 400
        assert [r["part"] for r in rep["parts"]] == ["src", "n", "mid", "m", "end_to_end[sink]", "end_to_end"]
        assert rep["parts"][-2]["budget_ms"] == 200  # a path's end to end falls back to the pipeline's budget
        assert (tmp_path / "rep" / "report.png").stat().st_size > 10_000
        assert main(["report", str(tmp_path / "rep"), "--png", str(tmp_path / "again.png")]) == 0
        out = capsys.readouterr().out
        assert "cli-test" in out and "end_to_end" in out
        assert (tmp_path / "again.png").exists()

    def test_ctrl_c_drains_and_exits_0(self, tmp_path):
        """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) stops `edgepipe run` in order:
        exit 0, every record the source sent reached the sink, and the report is written."""
        f = tmp_path / "p.toml"
        f.write_text(PIPE.replace("count = 400, rate_hz = 2000", "rate_hz = 1000"))
        proc = subprocess.Popen([sys.executable, "-m", "edgepipe", "run", str(f), "--report-dir", str(tmp_path / "r"),
                                 "--no-png"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            out = ""
            while "e2e sink p50" not in out:  # the first progress line with records at the sink
                assert time.monotonic() < deadline and proc.poll() is None
                out += proc.stdout.readline()
            os.killpg(proc.pid, signal.SIGINT)
            rest, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 0, err
        rep = json.loads((tmp_path / "r" / "report.json").read_text())
        assert rep["meta"]["stop_reason"] == "signal SIGINT"
        assert rep["stages"]["sink"]["ok"] == rep["stages"]["src"]["emitted"] > 0
        assert all(s["exit_codes"] == [0] for s in rep["stages"].values())

    def test_bad_file_exits_2_naming_file_line_and_key(self, tmp_path, capsys):
        """An invalid file exits 2 before anything runs; stderr names file, line, key and value."""
        f = tmp_path / "p.toml"
        f.write_text(PIPE.replace('kind = "relay"', 'kind = "relai"'))
        assert main(["run", str(f)]) == 2
        err = capsys.readouterr().err
        assert f"{f}:11: stages.mid.kind: unknown stage kind 'relai'" in err

    def test_report_of_nothing(self, tmp_path, capsys):
        """report on a path with no report exits 1 and says so."""
        assert main(["report", str(tmp_path)]) == 1
        assert "cannot read a report" in capsys.readouterr().err


class TestProgress:
    LIVE = {"uptime_s": 12.0, "links": {"frames": {"rate_hz": 6.6}, "samples": {"rate_hz": 916.6}},
            "stages": {"capture": {"state": "done", "kind": "capture", "fps_target": 10.0, "fps": 6.66},
                       "imu": {"state": "running", "kind": "imu", "rate_hz": 1000.0, "achieved_rate_hz": 916.6,
                               "ticks": 9166, "missed": 834, "wait": "sleep", "restarts": 1},
                       "show_text": {"state": "done"}, "show_attitude": {"state": "running"}},
            "parts": [{"part": "end_to_end[show_text]", "count": 55, "p50_ms": 56.2, "p99_ms": 124.8},
                      {"part": "end_to_end[show_attitude]", "count": 9166, "p50_ms": 0.024, "p99_ms": 1.8},
                      {"part": "end_to_end", "count": 9221, "p50_ms": 0.024, "p99_ms": 3.49}]}

    def test_progress_line_per_path_with_sources_short_and_states_counted(self):
        """The run's progress line gives each path's p50/p99 (not one mixing both), the IMU's achieved rate
        and missed share, the capture short of its fps, and stage states as counts, never a raw dict."""
        from edgepipe.cli.main import progress_line

        line = progress_line(self.LIVE)
        assert "e2e show_text p50 56.20 ms p99 124.80 ms (55)" in line
        assert "show_attitude p50 0.02 ms p99 1.80 ms (9166)" in line and "3.49" not in line
        assert "imu 916.6 Hz, 8.3 % deadlines missed" in line and "capture 6.66 of 10 fps" in line
        assert "restarts 1" in line and "2 done, 2 running" in line
        assert "{" not in line and "'" not in line


class TestTopDoctor:
    def test_top_once_shows_a_running_pipelines_snapshot(self, tmp_path, capsys):
        """top --once draws the stages, rings and latency parts of a snapshot file."""
        live = {"name": "snap", "pid": os.getpid(), "uptime_s": 3.0,
                "stages": {"src": {"state": "running", "kind": "counter", "pid": 11, "restarts": 2, "emitted": 7}},
                "links": {"n": {"mode": "lossless", "rate_hz": 1000.0, "fill": 0.25, "records_written": 9,
                                "records_read": 7, "dropped": 0}},
                "parts": [{"part": "end_to_end", "count": 5, "p50_ms": 0.5, "p99_ms": 3.0, "max_ms": 4.0,
                           "budget_ms": 2.0, "violations": 1}]}
        f = tmp_path / f"pipeline-{os.getpid()}-1.json"
        f.write_text(json.dumps(live))
        assert main(["top", str(f), "--once"]) == 0
        out = capsys.readouterr().out
        for want in ("pipeline snap", "running", "25%", "end_to_end", "3.000", "1000"):
            assert want in out, want

    def test_top_quits_on_q(self, tmp_path, run_in_pty):
        """In a terminal, `q` ends top at once (no Enter needed) with status 0, and the terminal is back in
        its line mode afterwards."""
        live = {"name": "snap", "pid": os.getpid(), "uptime_s": 3.0, "stages": {}, "links": {}, "parts": []}
        f = tmp_path / f"pipeline-{os.getpid()}-1.json"
        f.write_text(json.dumps(live))
        code, out, canonical = run_in_pty([sys.executable, "-m", "edgepipe", "top", str(f), "--interval", "0.2"],
                                          b"pipeline snap", b"q")
        assert code == 0, out
        assert "q quits" in out and canonical

    def test_top_shows_each_path_rates_and_sources_health(self):
        """Two paths: a row each and no mixed end-to-end row; stage rates from two snapshots; the IMU's
        achieved rate and missed deadlines and the capture's fps under the tables, in red when short."""
        from rich.console import Console

        from edgepipe.cli.top import add_rates, render_live

        def snap(t, received, missed):
            return {"name": "demo", "pid": 1, "uptime_s": t, "t_s": 100.0 + t, "links": {},
                    "stages": {"imu": {"state": "running", "kind": "imu", "rate_hz": 1000.0, "emitted": received,
                                       "achieved_rate_hz": 916.6, "ticks": received, "missed": missed,
                                       "wait": "sleep"},
                               "capture": {"state": "running", "kind": "capture", "fps_target": 10.0, "fps": 9.8,
                                           "published": received // 100},
                               "show": {"state": "running", "received": received}},
                    "parts": [{"part": "end_to_end[show]", "count": 5, "p50_ms": 0.02, "p99_ms": 0.1,
                               "max_ms": 0.2, "budget_ms": 250.0, "violations": 0},
                              {"part": "end_to_end[show_text]", "count": 5, "p50_ms": 50.0, "p99_ms": 90.0,
                               "max_ms": 99.0, "budget_ms": 250.0, "violations": 0},
                              {"part": "end_to_end", "count": 10, "p50_ms": 0.5, "p99_ms": 90.0,
                               "max_ms": 99.0, "budget_ms": 250.0, "violations": 0}]}

        live = add_rates(snap(4.0, 3000, 300), snap(2.0, 1000, 100))
        con = Console(width=160, record=True)
        con.print(render_live(live))
        text = con.export_text()
        assert "up 4.0 s" in text and "end_to_end[show]" in text and "end_to_end[show_text]" in text
        assert not any(ln.split("│")[1].strip() == "end_to_end" for ln in text.splitlines() if "│" in ln)
        rows = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]]
                for ln in text.splitlines() if ln.count("│") > 8}
        assert rows["show"][6] == "1000" and rows["imu"][7] == "1000" and rows["capture"][7] == "10"
        assert "imu: 916.6 of 1000 Hz, missed 300 of 3300 deadlines (9.1 %)" in text
        assert "capture: 9.8 of 10 fps" in text and "{" not in text

    def test_doctor_reports_every_check(self, capsys):
        """doctor prints a row per check with its status and a summary; this machine has memfd and futex."""
        code = main(["doctor"])
        out = capsys.readouterr().out
        for name in ("/dev/shm", "memfd", "futex", "memlock", "rtprio", "cpus", "onnxruntime", "opencv"):
            assert name in out
        assert "checks:" in out and " 0 failed" in out
        assert code == 0


class TestHelp:
    def test_every_command_and_option_has_help(self):
        """Each subcommand and each of its options carries help text; exit codes are in the epilog."""
        p = build_parser()
        assert "exit status" in p.epilog and "2 bad usage" in p.epilog
        sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
        helps = {a.dest: a.help for a in sub._choices_actions}
        for name, sp in sub.choices.items():
            assert helps.get(name), f"{name} has no help"
            for a in sp._actions:
                if a.dest != "help":
                    assert a.help, f"{name} {a.option_strings or a.dest} has no help"

    def test_every_command_has_a_description(self):
        """`edgepipe COMMAND --help` says more than the usage line: every subcommand has a description."""
        p = build_parser()
        sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
        for name, sp in sub.choices.items():
            assert sp.description and len(sp.description) > 40, f"{name} has no description"

    @pytest.mark.parametrize("argv", [["demo", "--seconds", "0"], ["run", "x.toml", "--seconds", "-1"],
                                      ["bench", "--seconds", "0"], ["bench", "--seconds", "nan"],
                                      ["top", "--interval", "-2"], ["demo", "--seconds", "soon"]])
    def test_durations_must_be_positive(self, argv, capsys):
        """--seconds (and the other durations) of 0, a negative, NaN or not a number is a usage error
        naming the value (exit 2), never "run forever"."""
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert repr(argv[-1]) in capsys.readouterr().err

    @pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["run", "--help"], ["cleanup", "--help"]])
    def test_help_runs_as_a_program(self, argv):
        """`python -m edgepipe ... --help` exits 0 and prints the usage."""
        r = subprocess.run([sys.executable, "-m", "edgepipe", *argv], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: edgepipe" in r.stdout


class TestDemoWiring:
    def test_demo_leaves_out_stages_whose_kind_is_missing(self, monkeypatch):
        """With the inference kind unavailable, the demo drops it and the sink behind it, names both, and
        keeps capture (its consumer gone, a dangling output is dropped too) and the IMU branch."""
        from edgepipe.pipeline import config

        monkeypatch.setitem(config._KINDS, "inference", config._Kind("edgepipe_nope:Stage", True))
        spec, missing = demo_spec()
        assert "edgepipe_nope:Stage" in missing["detect"]
        assert missing["show_text"] == "its input comes from a missing stage"
        assert [s.name for s in spec.stages] == ["imu", "show_attitude"]
        assert "capture" in missing

    def test_demo_file_is_complete_here(self):
        """In this install every kind of the demo resolves: nothing is left out."""
        spec, missing = demo_spec()
        assert missing == {}
        assert [s.name for s in spec.stages] == ["capture", "detect", "show_text", "imu", "show_attitude"]


    def test_demo_prints_detections_of_every_page_in_turn(self):
        """show_text prints every n-th result of a capture looping over the bundled pages: n and the number
        of pages have no common factor, so the printed detections come from each page in turn (with a step
        of 10 over 2 pages, every printed line was the same page's boxes)."""
        import math

        from edgepipe._data import data_path

        spec, _ = demo_spec()
        stages = {s.name: s for s in spec.stages}
        every = stages["show_text"].params["every"]
        folder = str(stages["capture"].params["video"]).removeprefix("pkg:")
        pages = len(os.listdir(data_path(folder)))
        assert stages["capture"].params["loop"] is True and pages >= 2
        assert math.gcd(every, pages) == 1, (every, pages)
        printed = [(k * every) % pages for k in range(pages)]  # the page behind the k-th printed result
        assert sorted(printed) == list(range(pages))


class TestBench:
    def test_bench_runs_each_script_and_writes_a_report(self, tmp_path, capsys):
        """bench runs every benchmarks/*.py (not _common.py) with --seconds, keeps each output, and writes
        README.md with a table and a plot; a failing benchmark makes the exit status 1."""
        d = tmp_path / "benchmarks"
        d.mkdir()
        (d / "_common.py").write_text("")
        (d / "fast.py").write_text("import sys; print('fast ran with', sys.argv[1:])\n")
        (d / "broken.py").write_text("raise SystemExit(3)\n")
        out = tmp_path / "out"
        assert main(["bench", "--dir", str(d), "--list"]) == 0
        assert capsys.readouterr().out.split() == ["broken.py", "fast.py"]
        assert main(["bench", "--dir", str(d), "--out", str(out), "--seconds", "0.5"]) == 1
        assert "fast ran with ['--seconds', '0.5']" in (out / "fast.txt").read_text()
        readme = (out / "README.md").read_text()
        assert "| [fast](fast.txt) | 0 |" in readme and "| [broken](broken.txt) | 3 |" in readme
        assert (out / "bench.png").stat().st_size > 1000
        assert main(["bench", "--dir", str(d), "--out", str(out), "--only", "fast"]) == 0

    def test_bench_without_benchmarks_dir(self, tmp_path, capsys):
        """Outside a checkout, bench says where it looked for benchmarks/ and exits 1."""
        assert main(["bench", "--dir", str(tmp_path)]) == 1
        assert "no benchmarks/ directory" in capsys.readouterr().err


USER_MODULE = '''\
from edgepipe import PipelineStage, transform


@transform
def shout(payload):
    return payload.upper()


class Upper(PipelineStage):
    """Passes records on upper-cased."""

    def handle(self, rec):
        self.emit(rec.payload.upper(), parent=rec)
'''


def _edgepipe(*argv, cwd=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__import__("edgepipe").__file__)))
    return subprocess.run([sys.executable, "-m", "edgepipe", *argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


class TestUsersPipelines:
    @pytest.mark.parametrize("attr", ["Upper", "shout"])
    def test_run_with_a_stage_module_next_to_the_file(self, tmp_path, attr):
        """`kind = "module:Class"` (or a @transform function) with the module beside the TOML file runs from
        any directory: the stage processes import it too (the file's directory goes on their sys.path)."""
        d = tmp_path / "proj"
        d.mkdir()
        (d / "cli_user_stages.py").write_text(USER_MODULE)
        f = d / "p.toml"
        f.write_text(PIPE.replace('kind = "relay"', f'kind = "cli_user_stages:{attr}"'))
        r = _edgepipe("run", str(f), "--report-dir", str(tmp_path / "rep"), "--no-png", "-q", cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr
        rep = json.loads((tmp_path / "rep" / "report.json").read_text())
        assert rep["stages"]["sink"]["ok"] == 400

    @pytest.mark.parametrize("old, new, where", [
        ("count = 400, rate_hz = 2000", "count = 400, rate_hzz = 2000", ":8: stages.src.params.rate_hzz: unknown "
                                                                         "parameter 'rate_hzz' = 2000"),
        ("count = 400, rate_hz = 2000", "count = -1, rate_hz = 2000", ":8: stages.src.params.count: "),
        ('kind = "relay"', 'kind = "cli_no_such_module:Upper"', ":11: stages.mid.kind: "),
    ])
    def test_bad_params_or_kind_exit_2_before_anything_starts(self, tmp_path, old, new, where):
        """A param typo, a value the stage refuses, or a kind that cannot be imported: `edgepipe run` exits 2
        with one line naming file, line, key and value, no traceback, and starts nothing."""
        f = tmp_path / "p.toml"
        f.write_text(PIPE.replace(old, new))
        r = _edgepipe("run", str(f), "--no-png", "-q", timeout=60)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert r.stderr.startswith(f"edgepipe run: {f}{where}"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert r.stdout == ""  # nothing started: no "running ..." line, no report


class TestKindsCommand:
    def test_lists_every_kind(self, capsys):
        """`edgepipe kinds` lists every registered kind with its one-line summary."""
        from edgepipe.pipeline.config import stage_kinds

        assert main(["kinds"]) == 0
        out = capsys.readouterr().out
        for k in stage_kinds():
            assert any(line.split()[:1] == [k] for line in out.splitlines()), k

    def test_one_kind_shows_params_defaults_docs_and_ports(self, capsys):
        """`edgepipe kinds counter` prints each parameter with its type, default and documentation, and the
        ports; the built-in raw kinds show the parameters their stage class takes too."""
        assert main(["kinds", "counter"]) == 0
        out = capsys.readouterr().out
        assert "rate_hz" in out and "float = 0.0" in out and "records per second" in out
        assert main(["kinds", "capture"]) == 0
        out = capsys.readouterr().out
        assert "video" in out and "stall_timeout_s" in out and "output" in out and "FrameWriter" not in out.split(
            "ports")[0]

    def test_unknown_kind_exits_2(self, capsys):
        """An unknown kind is a usage error naming the known ones."""
        assert main(["kinds", "warp-drive"]) == 2
        assert "unknown stage kind 'warp-drive'" in capsys.readouterr().err

    def test_every_builtin_parameter_is_documented(self):
        """Each parameter and port of each built-in kind has documentation from a docstring."""
        from edgepipe.cli.kinds import describe_kind
        from edgepipe.pipeline.config import stage_kinds

        for k in stage_kinds():
            if k.startswith("test-") or k == "my-filter":
                continue
            info = describe_kind(k)
            for p in info.params + info.ports:
                assert p.doc, f"{k}: {p.name} has no documentation"

    def test_readme_table_matches_the_generated_one(self):
        """The README's table of built-in kinds is the one `edgepipe kinds --markdown` generates: regenerate
        it with `python -m edgepipe kinds --markdown --write-readme README.md` after changing a kind."""
        from edgepipe.cli.kinds import README_BEGIN, README_END, markdown_table

        readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
        assert README_BEGIN in readme and README_END in readme
        block = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
        assert block == markdown_table().strip(), (
            "README kinds table is stale: run `python -m edgepipe kinds --markdown --write-readme README.md`")
