"""edgepipe.pipeline.attach: another process attaches to the taps of a pipeline that is already running
(``edgepipe record --attach NAME`` / ``--socket PATH``). End to end with a real ``edgepipe run`` process: the
recorder records what the tap copies, one reader per tap (a second is refused naming the tap), a recorder
killed with -9 costs the pipeline nothing and leaves a recoverable file, the tap can be attached again after
a kill or a clean exit, bad link names are typed errors saying what would work, and nothing is left in
/dev/shm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from edgepipe.control.client import Client
from edgepipe.control.server import Server
from edgepipe.errors import (
    PipelineNotFoundError,
    RemoteError,
    RingBusyError,
    TapNotFoundError,
)
from edgepipe.pipeline.attach import attach_taps, find_pipeline, tap_request_handler
from edgepipe.pipeline.config import parse_config
from edgepipe.record.reader import iter_recording, recover_recording
from edgepipe.ring import Ring

pytest.importorskip("mcap")

PIPE = textwrap.dedent("""
    [pipeline]
    name = "attachme"
    stats_interval_s = 0.2
    drain_timeout_s = 10

    [stages.src]
    kind = "counter"
    outputs = { out = "n" }
    params = { rate_hz = 400 }

    [stages.mid]
    kind = "relay"
    inputs = { in = "n" }
    outputs = { out = "m" }

    [stages.sink]
    kind = "check"
    inputs = { in = "m" }

    [links.n]
    tap = true
    tap_capacity = 65536
""")

HANG_GUARD_S = 60  # only a guard against a hang: nothing here is timed


def _shm() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith("edgepipe.")}  # other jobs make their own


def _env(run: str) -> dict[str, str]:
    return dict(os.environ, XDG_RUNTIME_DIR=run, PYTHONPATH=os.pathsep.join(sys.path))


def _edgepipe(env, *argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepipe", *argv], capture_output=True, text=True, env=env,
                          timeout=HANG_GUARD_S, **kw)


def _stats(env) -> dict | None:
    d = os.path.join(env["XDG_RUNTIME_DIR"], "edgepipe")
    for name in os.listdir(d) if os.path.isdir(d) else ():
        if name.endswith(".json"):
            try:
                with open(os.path.join(d, name)) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return None
    return None


def _sink_received(env) -> int:
    live = _stats(env) or {}
    return int(live.get("stages", {}).get("sink", {}).get("received", 0) or 0)


def _wait_for(cond, what: str):
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, f"hang guard: {what}"
        time.sleep(0.05)


@pytest.fixture
def running(tmp_path):
    """A running `edgepipe run` of PIPE (its own XDG_RUNTIME_DIR): (process, env, control socket)."""
    f = tmp_path / "p.toml"
    f.write_text(PIPE)
    # a short directory of its own: a control socket's path must fit in sun_path (107 bytes)
    run = tempfile.mkdtemp(prefix="ep-att-")
    env = _env(run)
    before = _shm()
    proc = subprocess.Popen([sys.executable, "-m", "edgepipe", "run", str(f), "--report-dir", str(tmp_path / "rep"),
                             "--no-png"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        def started():
            assert proc.poll() is None, proc.communicate()
            s = _stats(env)
            return s if s and s.get("socket") and s["stages"] and \
                all(v["state"] == "running" for v in s["stages"].values()) else None

        live = _wait_for(started, "the pipeline did not start")
        yield proc, env, live["socket"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(run, ignore_errors=True)
    assert _shm() == before


def _stop(proc) -> tuple[int, str]:
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=HANG_GUARD_S)
    return proc.returncode, err


def _seqs(path) -> list[int]:
    return [msg.stamps.seq for topic, _schema, _m, msg in iter_recording(path) if topic == "/n"]


class TestAttachEndToEnd:
    def test_record_busy_kill_9_reattach_and_clean_stop(self, running, tmp_path):
        """A recorder attached by name records the tap in order; a second one is refused naming the tap and
        the first's pid; kill -9 of the first leaves the pipeline running and a file that recovers in order;
        a new recorder attaches after the kill and again after a clean exit; one left running ends by itself
        when the pipeline stops, which loses nothing."""
        proc, env, sock = running
        first = subprocess.Popen([sys.executable, "-m", "edgepipe", "record", "--attach", "attachme", "--links", "n",
                                  "-o", str(tmp_path / "a.mcap")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
        try:
            line = first.stdout.readline()
            assert line.startswith("recording the taps of n of the pipeline at " + sock), (line, first.stderr.read())
            # the tap has one reader: a second recorder is a typed error naming the tap and who holds it
            second = _edgepipe(env, "record", "--socket", sock, "--links", "n", "-o", str(tmp_path / "b.mcap"),
                               "--seconds", "1")
            assert second.returncode == 1, second
            assert "RingBusyError" in second.stderr and "tap 'n.tap'" in second.stderr, second.stderr
            assert f"read by pid {first.pid}" in second.stderr, second.stderr
            assert not (tmp_path / "b.mcap").exists()
            # let the first one close a few chunks (a chunk closes at least once a second), then kill it
            _wait_for(lambda: (tmp_path / "a.mcap").exists() and (tmp_path / "a.mcap").stat().st_size > 4096,
                      "the recorder wrote nothing")
            received = _sink_received(env)
            first.kill()
            first.wait(HANG_GUARD_S)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert first.returncode == -signal.SIGKILL
        # the pipeline goes on: still running, its sink still receiving
        _wait_for(lambda: _sink_received(env) > received + 100, "the pipeline stalled after the recorder died")
        assert proc.poll() is None
        rec = recover_recording(tmp_path / "a.mcap", tmp_path / "a-recovered.mcap")
        seqs = _seqs(rec.path)
        assert rec.messages == len(seqs) > 0
        assert seqs == sorted(set(seqs)), "the recovered tap records are out of order or repeated"
        # after the kill -9, a new recorder takes the tap over; after its clean exit, another one again
        for name in ("c.mcap", "d.mcap"):
            r = _edgepipe(env, "record", "--socket", sock, "--links", "n", "-o", str(tmp_path / name),
                          "--seconds", "1")
            assert r.returncode == 0, r
            assert "recorded " in r.stdout and "from 1 tap(s)" in r.stdout, r.stdout
            got = _seqs(tmp_path / name)
            assert len(got) > 0 and got == sorted(set(got))
            # the recording starts at the attach: nothing the killed recorder left queued in the tap
            assert got[0] > seqs[-1]
            seqs = got
        # a recorder left running ends by itself when the pipeline stops (its taps end), with what it took
        last = subprocess.Popen([sys.executable, "-m", "edgepipe", "record", "--attach", "--links", "n.tap",
                                 "-o", str(tmp_path / "e.mcap")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        try:
            assert last.stdout.readline().startswith("recording the taps of n")
            time.sleep(0.5)
            code, err = _stop(proc)
            _out, rerr = last.communicate(timeout=HANG_GUARD_S)
        finally:
            if last.poll() is None:
                last.kill()
                last.wait()
        assert code == 0, err
        assert last.returncode == 0, rerr
        got = _seqs(tmp_path / "e.mcap")
        assert got and got == sorted(set(got)) and got[0] > seqs[-1]
        rep = json.loads((tmp_path / "rep" / "report.json").read_text())
        assert rep["stages"]["sink"]["ok"] == rep["stages"]["src"]["emitted"] > 0
        assert "lost" not in rep["stages"]["sink"]

    def test_unknown_and_untapped_links_are_typed_errors(self, running, tmp_path):
        """An unknown link lists the links with a tap; a link without one says how to add it; both are
        TapNotFoundError (exit 2 from the CLI), and the pipeline goes on; a flight recorder and the API
        attach the same way."""
        proc, env, sock = running
        with pytest.raises(TapNotFoundError) as e:
            attach_taps(["zz"], socket=sock)
        assert e.value.link == "zz" and e.value.tappable == ("n",)
        assert "no link 'zz'" in str(e.value) and "links with a tap: n" in str(e.value)
        r = _edgepipe(env, "record", "--socket", sock, "--links", "m", "-o", str(tmp_path / "x.mcap"))
        assert r.returncode == 2, r
        assert "TapNotFoundError" in r.stderr and "add `tap = true` under [links.m]" in r.stderr, r.stderr
        r = _edgepipe(env, "record", "--attach", "nosuch", "-o", str(tmp_path / "x.mcap"))
        assert r.returncode == 1 and "no running pipeline named 'nosuch'; running: attachme" in r.stderr, r.stderr
        assert not (tmp_path / "x.mcap").exists()
        assert proc.poll() is None
        # a flight recorder attaches the same way: SIGUSR1 writes the seconds before it, in order
        ev = tmp_path / "events"
        fl = subprocess.Popen([sys.executable, "-m", "edgepipe", "record", "--socket", sock, "--links", "n",
                               "--pre-buffer", "1s", "--post", "0.2s", "--trigger", "signal", "-o", str(ev)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert fl.stdout.readline().startswith("recording the taps of n")
            time.sleep(0.5)  # let some records into the buffer (how many does not matter)
            fl.send_signal(signal.SIGUSR1)
            _wait_for(lambda: any(p.name.startswith("signal-") for p in ev.iterdir()) if ev.is_dir() else False,
                      "the flight recorder wrote no event file")
            fl.send_signal(signal.SIGINT)
            out, ferr = fl.communicate(timeout=HANG_GUARD_S)
        finally:
            if fl.poll() is None:
                fl.kill()
                fl.wait()
        assert fl.returncode == 0, ferr
        assert "event file(s)" in out
        (event,) = [p for p in ev.iterdir() if p.name.startswith("signal-")]
        got = _seqs(event)
        assert got and got == sorted(set(got))
        # the API end: readers come open, the stale records are skipped, drops count from the attach
        with attach_taps(socket=sock) as att:
            assert list(att.readers) == ["n"] and att.stale["n"] >= 0
            with pytest.raises(RingBusyError, match="tap 'n.tap'"):
                attach_taps(["n"], socket=sock)
            got = _wait_for(lambda: att.readers["n"].try_read(), "the tap delivered nothing")
            assert len(got) > 0 and att.dropped_since("n") >= 0
        assert _stop(proc)[0] == 0


class TestHandler:
    """The supervisor's side alone, over a real control socket, without a pipeline."""

    def test_hands_out_the_side_ring_or_refuses_by_name(self, tmp_path):
        """An Attach request for a tapped link gets the side ring's fd (the same ring: what is written
        arrives); every refusal is Error NOT_FOUND naming the link; no name means every tap."""
        spec = parse_config(PIPE)
        d = tmp_path / "s"
        d.mkdir(mode=0o700)
        with Ring.create(capacity=4096) as side, Server(str(d / "c.sock")) as srv:
            srv.on("attach", tap_request_handler(spec, {"n.tap": side}.get))
            w = side.writer()
            with Client.connect(srv.path) as c:
                for names in (["n"], ["n.tap"], []):
                    (desc, fd), = c.request_attach(names)
                    assert desc.name == "n.tap" and desc.fd_follows
                    with Ring.from_fd(fd) as got:
                        os.close(fd)
                        r = got.reader()  # a reader that closed (the last round's) is replaced
                        assert w.try_write(b"hello")
                        assert r.try_read() == b"hello"
                        r.close()
                for bad, says in ((["m"], "has no tap"), (["zz"], "no link 'zz'"), (["m.tap"], "no link 'm.tap'")):
                    with pytest.raises(RemoteError, match=says) as e:
                        c.request_attach(bad)
                    assert e.value.code_name == "ERROR_CODE_NOT_FOUND"
            w.close()

    def test_no_pipeline_is_a_typed_error(self, tmp_path):
        """Looking a pipeline up by name where none runs, or attaching a socket nobody listens on, is
        PipelineNotFoundError."""
        with pytest.raises(PipelineNotFoundError, match="no running pipeline found"):
            find_pipeline(None, directory=str(tmp_path))
        with pytest.raises(PipelineNotFoundError, match="no pipeline answers at"):
            attach_taps(["n"], socket=str(tmp_path / "nobody.sock"))


class TestConfig:
    def test_a_tap_nobody_in_the_pipeline_reads_is_valid(self):
        """tap = true without a record stage validates: the side link is there for a process to attach."""
        spec = parse_config(PIPE)
        assert spec.links["n.tap"].mode == "drop" and spec.links["n.tap"].capacity == 65536
        assert not any("n.tap" in s.inputs.values() for s in spec.stages)

    def test_the_demo_can_be_attached_to(self):
        """The bundled demo taps its frames, detections and samples with no reader of its own, so
        `edgepipe record --attach demo` can record a running demo."""
        from edgepipe.cli.main import demo_spec
        from edgepipe.pipeline.attach import refusal, tappable_links

        spec, missing = demo_spec()
        assert missing == {}
        assert tappable_links(spec) == ["frames", "detections", "samples"]
        assert all(refusal(spec, ln) is None for ln in ("frames", "detections", "samples"))
        assert not any(ln.endswith(".tap") for s in spec.stages for ln in s.inputs.values())
