"""Pipelines of plain-Python stages across real processes: delivery, latency parts, restarts, stops, and
what is left behind after the supervisor is killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from rich.console import Console

from edgepipe import (
    CheckStage,
    ConfigError,
    CounterStage,
    EdgepipeError,
    EndOfStream,
    Pipeline,
    PipelineStage,
    PeerClosedError,
    RelayStage,
    RingTimeoutError,
    Stage,
    StageSpec,
    load_report,
    register_stage,
    run_top,
    sink,
    source,
    transform,
)

SHM = "/dev/shm"


def _shm() -> set[str]:
    # edgepipe's own names, less the per-test names other test runs on this shared machine create meanwhile
    # (conftest's shm_name: edgepipe.t-<their pid>-...)
    others = re.compile(rf"^edgepipe\.t-(?!{os.getpid()}-)\d+-")
    return {e for e in os.listdir(SHM) if e.startswith("edgepipe") and not others.match(e)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Collect(PipelineStage):
    """A user sink: keeps every (seq, payload) and checks each payload is what the source sent, doubled."""

    def __init__(self, name=None, **kw):
        super().__init__(name, **kw)
        self.bad = 0

    def handle(self, rec):
        if rec.payload != (rec.seq.to_bytes(8, "little") + bytes(8)) * 2:
            self.count("bad")
        self.count("ok")
        if self.counters.get("last", -1) != rec.seq - 1:
            self.count("out_of_order")
        self.counters["last"] = rec.seq


class Double(PipelineStage):
    def handle(self, rec):
        self.emit(rec.payload * 2, parent=rec)


@source
def letters():
    for i in range(300):
        yield b"abc-%d" % i


@transform
def upper(payload: bytes) -> bytes:
    return payload.upper()


@sink
def keep(rec) -> None:
    assert rec.payload.isupper()


class LatestSource(Stage):
    """A raw-port stage writing 8x8 frames into a latest-only slot as fast as it can."""

    def __init__(self, output, count=300, name=None):
        super().__init__(name)
        self.out, self.n = output, count

    def loop(self):
        import numpy as np

        for i in range(self.n):
            self.out.write_frame(np.full((8, 8), i % 256, np.uint8), pixel_format="GRAY")
            self.count("published")


class LatestSink(Stage):
    """Reads the newest frame until the producer is done; counts frames and checks their seq only grows."""

    def __init__(self, input, count=300, name=None):  # noqa: A002
        super().__init__(name)
        self.inp, self.n = input, count

    def loop(self):
        last = 0
        while not self.stopping:
            try:
                with self.inp.read_frame(timeout_s=0.1) as f:
                    assert f.seq > last, (f.seq, last)
                    last = f.seq
                    self.count("frames")
            except PeerClosedError:  # the producer closed and nothing newer is left
                break
            except RingTimeoutError:
                pass
        self.counters["last_seq"] = last


register_stage("test-latest-source", f"{__name__}:LatestSource", raw_ports=True)
register_stage("test-latest-sink", f"{__name__}:LatestSink", raw_ports=True)


class Stubborn(PipelineStage):
    """A sink that never looks at ``stopping`` and ignores SIGTERM."""

    def loop(self):
        import signal as sig

        sig.signal(sig.SIGTERM, sig.SIG_IGN)
        while True:
            try:
                self.receive(timeout_s=0.1)
            except EndOfStream:
                time.sleep(0.1)


class Holder(PipelineStage):
    def __init__(self, name=None, thing=None, **kw):
        super().__init__(name, **kw)
        self.thing = thing


class FailOpen(PipelineStage):
    def open(self):
        raise OSError("camera /dev/video9 is busy")


class TestDelivery:
    def test_records_cross_three_processes_in_order_with_every_part_timed(self, tmp_path):
        """5000 records go source -> user transform -> user sink in three processes: none lost, none out
        of order, payloads transformed, and the report has a row for every stage, ring and end to end."""
        before = _shm()
        p = Pipeline([CounterStage("src", count=5000, rate_hz=20000, outputs={"out": "raw"}),
                      Double("double", inputs={"in": "raw"}, outputs={"out": "doubled"}),
                      Collect("collect", inputs={"in": "doubled"})],
                     budgets={"end_to_end": 100, "double": 50}, stats_path=False)
        assert p.run() == 0
        st = p.stage_stats()
        assert st["collect"]["ok"] == 5000
        assert st["collect"]["last"] == 4999
        assert "bad" not in st["collect"] and "out_of_order" not in st["collect"]
        assert {c["pid"] for c in st.values()} != {os.getpid()}  # real processes
        assert len({c["pid"] for c in st.values()}) == 3
        rep = p.report()
        parts = {r["part"]: r for r in rep["parts"]}
        assert set(parts) == {"src", "raw", "double", "doubled", "end_to_end[collect]", "end_to_end"}
        assert all(r["count"] == 5000 for r in parts.values())
        assert rep["paths"] == {"collect": ["src", "raw", "double", "doubled", "end_to_end[collect]"]}
        assert parts["double"]["budget_ms"] == 50 and parts["end_to_end"]["budget_ms"] == 100
        # the parts add up to the end-to-end mean (same records, same clock)
        total = sum(parts[k]["mean_ms"] for k in ("src", "raw", "double", "doubled"))
        assert abs(total - parts["end_to_end"]["mean_ms"]) < 0.01 + 0.01 * total
        paths = p.write_report(tmp_path)
        assert os.path.getsize(paths["png"]) > 10_000
        assert load_report(tmp_path)["parts"][-1]["part"] == "end_to_end"
        assert _shm() == before

    def test_decorated_functions_are_stages(self):
        """@transform and @sink turn plain functions into stages of a pipeline."""
        p = Pipeline([letters(name="src", outputs={"out": "a"}),
                      upper(name="up", inputs={"in": "a"}, outputs={"out": "b"}),
                      keep(name="keep", inputs={"in": "b"})], stats_path=False)
        assert p.run() == 0
        assert p.stage_stats()["keep"]["received"] == 300
        assert p.stage_stats()["keep"]["state"] == "done"

    def test_stages_defined_in_a_script(self, tmp_path):
        """A stage class defined in the script being run works (stage processes import the script as
        __mp_main__); a script that starts its pipeline unguarded gets an error saying to guard it."""
        body = textwrap.dedent("""
            from edgepipe import CheckStage, CounterStage, Pipeline, PipelineStage
            class Double(PipelineStage):
                def handle(self, rec):
                    self.emit(rec.payload * 2, parent=rec)
            def main():
                p = Pipeline([CounterStage("src", count=200, outputs={"out": "a"}),
                              Double("double", inputs={"in": "a"}, outputs={"out": "b"}),
                              CheckStage("sink", inputs={"in": "b"})], stats_path=False)
                print("exit", p.run(), "ok", p.stage_stats()["sink"].get("ok"))
        """)
        guarded, unguarded = tmp_path / "guarded.py", tmp_path / "unguarded.py"
        guarded.write_text(body + 'if __name__ == "__main__":\n    main()\n')
        unguarded.write_text(body + "main()\n")
        r = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=60)
        assert "exit 0 ok 200" in r.stdout, r.stderr
        r = subprocess.run([sys.executable, str(unguarded)], capture_output=True, text=True, timeout=60)
        assert "exit 1" in r.stdout and 'if __name__ == "__main__":' in r.stderr

    def test_a_latest_link_hands_over_the_newest_frame(self):
        """A 'latest' link is a LatestSlot passed as an fd: the consumer sees frames in increasing order, the
        last one among them, and the link counts what was overwritten."""
        p = Pipeline([StageSpec("src", kind="test-latest-source", outputs={"output": "frames"}),
                      StageSpec("sink", kind="test-latest-sink", inputs={"input": "frames"})],
                     links={"frames": {"capacity": 64, "mode": "latest"}}, stats_path=False)
        assert p.run() == 0
        st, ln = p.stage_stats(), p.link_stats()["frames"]
        assert st["src"]["published"] == 300 and st["sink"]["last_seq"] == 300
        assert 1 <= st["sink"]["frames"] <= 300
        assert ln["records_written"] == 300 and ln["records_read"] == st["sink"]["frames"]
        assert ln["dropped"] == ln["overwritten"] == 300 - st["sink"]["frames"]

    def test_a_drop_link_counts_what_it_drops(self):
        """A 'drop' link whose consumer is slow drops records instead of blocking, and says so."""
        p = Pipeline([CounterStage("src", count=3000, size=1024, outputs={"out": "a"}),
                      RelayStage("slow", work_us=200, inputs={"in": "a"}, outputs={"out": "b"}),
                      CheckStage("sink", inputs={"in": "b"})],
                     links={"a": {"capacity": 8192, "mode": "drop"}}, stats_path=False)
        assert p.run() == 0
        st = p.stage_stats()
        dropped = st["src"].get("dropped[a: ring full]", 0)
        assert dropped > 0
        assert st["sink"]["ok"] + dropped == 3000
        assert p.report()["drops"] == {"src: a: ring full": dropped}


class TestFailures:
    def test_kill_9_of_a_stage_restarts_it(self):
        """A stage killed with SIGKILL is started again and counted; records keep flowing after it."""
        p = Pipeline([CounterStage("src", rate_hz=2000, outputs={"out": "a"}),
                      RelayStage("mid", inputs={"in": "a"}, outputs={"out": "b"}),
                      CheckStage("sink", inputs={"in": "b"})], backoff_s=0.05, stats_interval_s=0.1,
                     stats_path=False)
        with p:
            time.sleep(0.5)
            victim = p.stage_stats()["mid"]["pid"]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while p.stage_stats()["mid"]["restarts"] < 1 or p.stage_stats()["mid"]["state"] != "running":
                assert time.monotonic() < deadline, p.stage_stats()["mid"]
                time.sleep(0.05)
            before = p.stage_stats()["sink"].get("ok", 0)
            while p.stage_stats()["sink"]["ok"] <= before + 100:  # records flow through the new process
                assert time.monotonic() < deadline + 10, p.stage_stats()
                time.sleep(0.05)
            assert p.stage_stats()["mid"]["pid"] != victim
        st = p.stage_stats()
        assert st["mid"]["restarts"] == 1 and st["mid"]["exit_codes"][0] == -signal.SIGKILL
        assert p.wait() == 0

    def test_a_stage_that_keeps_failing_stops_the_pipeline(self):
        """A stage that fails more often than max_restarts allows ends the pipeline with status 1; its error
        is reported and the other stages are stopped cleanly."""
        p = Pipeline([CounterStage("src", rate_hz=5000, outputs={"out": "a"}),
                      RelayStage("flaky", fail_after=50, inputs={"in": "a"}, outputs={"out": "b"}),
                      CheckStage("sink", inputs={"in": "b"})], max_restarts=1, backoff_s=0.05, stats_path=False)
        assert p.run(seconds=20) == 1
        st = p.stage_stats()
        assert st["flaky"]["restarts"] == 1 and st["flaky"]["state"] == "failed"
        assert "failing after 50 records" in st["flaky"]["error"]
        assert st["src"]["state"] == "done" and st["sink"]["state"] == "done"
        assert st["src"]["exit_codes"] == [0] and st["sink"]["exit_codes"] == [0]

    def test_a_stage_that_cannot_start_is_named_and_the_rest_stopped(self):
        """open() raising in one stage: start() raises naming the stage and its error; no stage survives."""
        p = Pipeline([CounterStage("src", rate_hz=100, outputs={"out": "a"}),
                      FailOpen("cam", inputs={"in": "a"})], stats_path=False)
        with pytest.raises(EdgepipeError, match=r"'cam' could not start: OSError: camera /dev/video9 is busy"):
            p.start()
        assert p.wait(10) == 1
        assert not any(_alive(c["pid"]) for c in p.stage_stats().values() if c["pid"])

    def test_a_stage_that_will_not_stop_is_killed_and_the_run_fails(self):
        """After the drain timeout a stage that ignores Stop and SIGTERM gets SIGKILL; the run exits 1."""
        p = Pipeline([CounterStage("src", rate_hz=100, outputs={"out": "a"}), Stubborn("stuck", inputs={"in": "a"})],
                     drain_timeout_s=0.3, stats_path=False)
        t0 = time.monotonic()
        assert p.run(seconds=0.5) == 1
        assert time.monotonic() - t0 < 15
        st = p.stage_stats()
        assert st["stuck"]["exit_codes"] == [-signal.SIGKILL] and st["src"]["exit_codes"] == [0]
        assert "'stuck' did not stop cleanly: killed by signal 9" in p.report()["meta"]["failure"]

    def test_a_stage_whose_arguments_are_not_plain_values_is_refused(self):
        """A stage built with an argument that cannot be sent to its process (not a plain value) is a
        ConfigError naming it."""
        with pytest.raises(ConfigError, match=r"stages\.src: cannot be sent to its process"):
            Pipeline([Holder("src", thing=lambda: 1, outputs={"out": "a"}), CheckStage("s", inputs={"in": "a"})])

    def test_bad_description_fails_before_anything_starts(self):
        """Two consumers on one ring is a ConfigError raised by the constructor."""
        with pytest.raises(ConfigError, match="'a' already has a consumer"):
            Pipeline([CounterStage("src", outputs={"out": "a"}), CheckStage("s1", inputs={"in": "a"}),
                      CheckStage("s2", inputs={"in": "a"})])


_SUPERVISOR = textwrap.dedent("""
    import sys
    from edgepipe import Pipeline, CounterStage, RelayStage, CheckStage
    p = Pipeline([CounterStage("src", rate_hz=1000, outputs={"out": "a"}),
                  RelayStage("mid", inputs={"in": "a"}, outputs={"out": "b"}),
                  CheckStage("sink", inputs={"in": "b"})], stats_interval_s=0.1, stats_path=sys.argv[1],
                 budgets={"end_to_end": 250, "mid": 40})
    code = p.run()
    p.write_report(sys.argv[2], png=False)
    sys.exit(code)
""")


def _start_supervisor(tmp_path):
    stats = tmp_path / "stats.json"
    proc = subprocess.Popen([sys.executable, "-c", _SUPERVISOR, str(stats), str(tmp_path / "rep")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the supervisor did not publish stats"
        try:
            live = json.loads(stats.read_text())
            if all(s["state"] == "running" for s in live["stages"].values()) and live["parts"]:
                return proc, [s["pid"] for s in live["stages"].values()]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)


def _table_rows(text: str, title: str, next_title: str | None) -> dict[str, list[str]]:
    """The rows of one of `top`'s tables in a recorded console's text: first cell -> the other cells."""
    lines = text.splitlines()
    start = lines.index(next(ln for ln in lines if ln.strip() == title))
    end = next((i for i in range(start, len(lines)) if lines[i].strip() == next_title), len(lines))
    return {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]]
            for ln in lines[start:end] if ln.count("│") > 3}


class TestSupervisorProcess:
    def test_kill_9_of_the_supervisor_leaves_no_stage_and_no_segment(self, tmp_path):
        """SIGKILL to the supervisor: every stage process is gone within 3 s and /dev/shm is unchanged."""
        before = _shm()
        proc, pids = _start_supervisor(tmp_path)
        assert all(_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 3
        while any(_alive(p) for p in pids):
            assert time.monotonic() < deadline, [p for p in pids if _alive(p)]
            time.sleep(0.02)
        assert _shm() == before

    def test_sigterm_drains_and_exits_0(self, tmp_path, run_in_pty):
        """SIGTERM: the sources stop first, everything in flight reaches the sink, exit status 0."""
        before = _shm()
        proc, pids = _start_supervisor(tmp_path)
        # meanwhile the control socket publishes Stats: `edgepipe top --socket` draws the same tables from them
        # as from the stats file: stage state, pid and restarts, rings, and latency parts against their budgets
        con = Console(width=150, record=True)
        assert run_top(socket=str(tmp_path / "stats.sock"), once=True, console=con) == 0
        text = con.export_text()
        assert "pipeline " in text and " a " in text and " b " in text and "end_to_end[sink]" in text
        stages, parts = _table_rows(text, "stages", "rings"), _table_rows(text, "latency (ms)", None)
        for name, pid in zip(("src", "mid", "sink"), pids):
            kind, state, shown_pid, restarts = stages[name][:4]
            assert (state, shown_pid, restarts) == ("running", str(pid), "0"), stages[name]
        assert (stages["src"][0], stages["sink"][0]) == ("counter", "check")
        assert int(stages["src"][5]) > 0 and int(stages["sink"][4]) > 0  # emitted, received
        # the budget column: end_to_end's covers end_to_end[sink], a stage's own part has its own, others none
        assert (parts["end_to_end[sink]"][4], parts["mid"][4], parts["a"][4]) == ("250.0", "40.0", "-"), parts
        # the uptime (Stats.start_ns) and each stage's rates (two roll-ups apart): in/s, out/s
        up = re.search(r"\(pid \d+, up (\d+\.\d) s\)", text)
        assert up and float(up.group(1)) > 0, text.splitlines()[0]
        assert float(stages["sink"][6]) > 0 and float(stages["src"][7]) > 0, stages
        # in a terminal, q ends top --socket at once with status 0 and the terminal mode restored
        code, out, canonical = run_in_pty([sys.executable, "-m", "edgepipe", "top", "--socket",
                                           str(tmp_path / "stats.sock"), "--interval", "0.2"], b"rings", b"q")
        assert code == 0 and canonical, out
        file_con = Console(width=150, record=True)
        assert run_top(str(tmp_path / "stats.json"), once=True, console=file_con) == 0
        def heads(t):  # the column names of every table
            return [ln.replace("┃", " ").split() for ln in t.splitlines() if ln.startswith("┃")]

        file_text = file_con.export_text()
        assert len(heads(text)) == 3 and heads(text) == heads(file_text)
        assert _table_rows(file_text, "latency (ms)", None)["mid"][4] == "40.0"
        modes = [_table_rows(t, "rings", "latency (ms)")["a"][0] for t in (text, file_text)]
        assert modes == ["lossless", "lossless"]
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        rep = load_report(tmp_path / "rep")
        st = rep["stages"]
        sent = st["src"]["emitted"]
        assert sent > 100
        assert st["sink"]["ok"] == sent and "lost" not in st["sink"]
        assert rep["links"]["a"]["records_read"] == rep["links"]["a"]["records_written"] == sent
        assert rep["meta"]["stop_reason"] == "signal SIGTERM"
        assert not any(_alive(p) for p in pids)
        assert not (tmp_path / "stats.json").exists() and not (tmp_path / "stats.sock").exists()
        assert _shm() == before
