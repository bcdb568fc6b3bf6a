"""edgepipe.record.replay and the record / info / replay commands: recordings go back into rings unchanged
(lockstep, paced, xN, ranges, topics, loops), stamps move to replay time with their intervals kept, a
pipeline recorded and replayed through itself compares equal, a changed pipeline does not (exit 1), and a
recorder killed with -9 leaves the pipeline running and its file recoverable."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import numpy as np
import pytest

pytest.importorskip("mcap")

from edgepipe.cli.main import main  # noqa: E402
from edgepipe.clock import ClockMapping  # noqa: E402
from edgepipe.imu_loop import IMU_RECORD_TYPE, IMU_SAMPLE_DTYPE  # noqa: E402
from edgepipe.pipeline.wire import NO_LINK, Hop, pack_record, unpack_record  # noqa: E402
from edgepipe.record.convert import to_messages  # noqa: E402
from edgepipe.record.reader import iter_recording, recording_info, recover_recording  # noqa: E402
from edgepipe.record.replay import replay  # noqa: E402
from edgepipe.record.writer import McapRecorder  # noqa: E402
from edgepipe.ring import Ring  # noqa: E402

CLOCK = ClockMapping(raw_ns=0, mono_ns=0, wall_ns=1_700_000_000_000_000_000, uncertainty_ns=10)
MS = 1_000_000


def user(i: int, t: int) -> bytes:
    return pack_record(b"payload-%06d" % i, i, t - 100_000, [Hop(0, NO_LINK, t - 100_000, t - 50_000)])


def imu(i: int, t: int) -> bytes:
    row = np.zeros(1, IMU_SAMPLE_DTYPE)
    row["seq"], row["sample_ns"], row["publish_ns"], row["deadline_ns"] = i, t - 20_000, t - 10_000, t - 20_000
    row["gyr"], row["acc"] = (i, 2 * i, 3 * i), (0, 0, 9.81)
    return row.tobytes()


@pytest.fixture
def recording(tmp_path):
    """100 user records on /u and 100 IMU rows on /imu, 2 ms apart, interleaved (0.4 s)."""
    path = tmp_path / "r.mcap"
    with McapRecorder(path, clock=CLOCK, chunk_bytes=4096) as rec:
        for i in range(100):
            t = 1_000 * MS + i * 4 * MS
            for topic, data, typ, at in (("/u", user(i, t), 1, t), ("/imu", imu(i, t + 2 * MS), IMU_RECORD_TYPE,
                                                                       t + 2 * MS)):
                for m in to_messages(topic, data, typ, at):
                    rec.write(m.topic, m.schema, m.data, receive_ns=m.receive_ns, capture_ns=m.capture_ns, seq=m.seq)
    return path


def drain(ring, out: list, stop: threading.Event) -> threading.Thread:
    r = ring.reader()

    def run():
        while not stop.is_set() or r.try_peek() is not None:
            d = r.try_read()
            if d is None:
                r.wait(0.01)
                continue
            out.append((d, r.last_type))
    t = threading.Thread(target=run)
    t.start()
    return t


def run_replay(recording, **kw):
    """Replay /u and /imu into two small rings (lossless) with reader threads; what each got."""
    got_u, got_i = [], []
    stop = threading.Event()
    with Ring.create(capacity=4096) as ru, Ring.create(capacity=4096) as ri:
        ts = [drain(ru, got_u, stop), drain(ri, got_i, stop)]
        t0 = time.monotonic()
        st = replay(recording, {"/u": ru.writer(), "/imu": ri.writer()}, **kw)
        elapsed = time.monotonic() - t0
        stop.set()
        for t in ts:
            t.join(30)
    return st, got_u, got_i, elapsed


class TestReplay:
    def test_lockstep_keeps_every_record_byte_for_byte(self, recording):
        """rate=0 with stamps kept: both rings get all 100 records, in order, through rings far smaller than
        the recording (the replay waits for the readers): user records byte for byte with their type id, IMU
        rows with every field an ImuSample carries (seq, sample and publish stamps, gyro, accel, attitude)."""
        st, got_u, got_i, _ = run_replay(recording, rate=0, restamp=False)
        assert st.sent == {"/u": 100, "/imu": 100}
        assert got_u == [(user(i, 1_000 * MS + i * 4 * MS), 1) for i in range(100)]
        assert [t for _d, t in got_i] == [IMU_RECORD_TYPE] * 100
        rows = np.frombuffer(b"".join(d for d, _t in got_i), IMU_SAMPLE_DTYPE)
        want = np.frombuffer(b"".join(imu(i, 1_002 * MS + i * 4 * MS) for i in range(100)), IMU_SAMPLE_DTYPE)
        for f in ("seq", "sample_ns", "publish_ns", "gyr", "acc", "q", "flags"):
            assert np.array_equal(rows[f], want[f]), f

    def test_restamp_moves_stamps_and_keeps_intervals(self, recording):
        """With restamping, each record's stamps move by one shift per record, payloads and seq stay, and
        the capture -> publish intervals are those recorded."""
        _, got_u, got_i, _ = run_replay(recording, rate=0)
        for i, (d, _t) in enumerate(got_u):
            r = unpack_record(d)
            assert (r.payload, r.seq) == (b"payload-%06d" % i, i)
            assert r.hops[0].publish_ns - r.capture_ns == 50_000 and r.capture_ns != 1_000 * MS + i * 4 * MS - 100_000
        rows = np.frombuffer(b"".join(d for d, _t in got_i), IMU_SAMPLE_DTYPE)
        assert list(rows["seq"]) == list(range(100)) and np.all(rows["publish_ns"] - rows["sample_ns"] == 10_000)
        assert np.array_equal(rows["gyr"][:, 0], np.arange(100))

    def test_paced_replay_is_never_faster_than_recorded(self, recording):
        """At rate 1 the 0.398 s recording takes at least that long, at rate 4 at least a quarter of it; every
        paced publish is accounted for in the lateness histogram."""
        st, got_u, got_i, elapsed = run_replay(recording, rate=1.0)
        assert len(got_u) == len(got_i) == 100 and elapsed >= 0.398
        assert st.lateness.get_total_count() + st.early == 200
        st4, *_rest, elapsed4 = run_replay(recording, rate=4.0)
        assert st4.total == 200 and elapsed4 >= 0.398 / 4

    def test_time_range_topics_and_loop(self, recording):
        """start_s/end_s pick a window, topics pick channels, loop with max_loops repeats it."""
        st, got_u, got_i, _ = run_replay(recording, rate=0, restamp=False, start_s=0.1, end_s=0.2, topics=["/u"],
                                         loop=True, max_loops=3)
        seqs = [unpack_record(d).seq for d, _t in got_u]
        assert seqs == list(range(25, 50)) * 3 and got_i == [] and st.loops == 3

    def test_bad_arguments(self, recording):
        """A negative rate or an empty range is a ValueError naming it."""
        with pytest.raises(ValueError, match="-1"):
            replay(recording, {}, rate=-1)
        with pytest.raises(ValueError, match="empty time range"):
            replay(recording, {}, start_s=0.3, end_s=0.2)


PIPE = """
[stages.src]
kind = "counter"
outputs = { out = "n" }
params = { count = 400, rate_hz = 2000 }
[stages.mid]
kind = "%s"
inputs = { in = "n" }
outputs = { out = "m" }
[stages.sink]
kind = "check"
inputs = { in = "m" }
"""

REVERSE = '''
from edgepipe.pipeline.api import PipelineStage


class Reverse(PipelineStage):
    def handle(self, rec):
        self.emit(rec.payload[::-1], parent=rec)
'''


class TestCommands:
    def test_record_info_replay_compare(self, tmp_path, capsys):
        """record a pipeline, info shows both links with 400 messages, replaying it through the same
        pipeline compares equal (exit 0), through a pipeline with a changed stage does not (exit 1)."""
        (tmp_path / "p.toml").write_text(PIPE % "relay")
        (tmp_path / "q.toml").write_text(PIPE % "mystages:Reverse")
        (tmp_path / "mystages.py").write_text(REVERSE)
        golden = tmp_path / "golden.mcap"
        assert main(["record", str(tmp_path / "p.toml"), "-o", str(golden)]) == 0
        assert main(["info", str(golden)]) == 0
        out = capsys.readouterr().out
        assert "/n" in out and "/m" in out and "400 messages" not in out and "800 messages in 2 channels" in out
        assert main(["replay", str(golden), "--pipeline", str(tmp_path / "p.toml"), "--compare", str(golden),
                     "--rate", "0"]) == 0
        assert "compared 400 messages on /m: no difference" in capsys.readouterr().out
        assert main(["replay", str(golden), "--pipeline", str(tmp_path / "q.toml"), "--compare", str(golden),
                     "--rate", "0"]) == 1
        out = capsys.readouterr().out
        assert "DIFF /m seq 1: payload differs" in out and "399 difference(s)" in out  # seq 0 is all zeros

    def test_record_named_rings(self, tmp_path, shm_name, capsys):
        """record --ring takes a named ring as its consumer and records until its producer closes."""
        ring = Ring.create(shm_name, 1 << 16)
        try:
            w = ring.writer()
            for i in range(50):
                w.write(user(i, 1_000_000 + i))
            w.close()
            out = tmp_path / "rings.mcap"
            assert main(["record", "--ring", f"{shm_name}=/x", "-o", str(out), "--compression", "lz4"]) == 0
            assert [m.stamps.seq for _t, _s, _r, m in iter_recording(out)] == list(range(50))
        finally:
            ring.unlink()
            ring.close()

    def test_flight_recorder_command_on_sigusr1(self, tmp_path, shm_name):
        """edgepipe record --ring NAME --pre-buffer 1s --post 0.1s --trigger signal: records flow through
        memory only until SIGUSR1; then one signal-*.mcap holds a gapless run of them; the command ends when
        the producer closes."""
        import subprocess
        import sys

        ring = Ring.create(shm_name, 1 << 16)
        proc = None
        try:
            w = ring.writer()
            proc = subprocess.Popen([sys.executable, "-m", "edgepipe", "record", "--ring", f"{shm_name}=/x",
                                     "--pre-buffer", "1s", "--post", "0.1s", "--trigger", "signal", "-o",
                                     str(tmp_path / "ev")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while ring.status().consumer_pid != proc.pid:
                assert time.monotonic() < deadline and proc.poll() is None, "the recorder did not attach"
                time.sleep(0.01)
            seq = 0
            for _ in range(100):
                w.write(user(seq, 0))
                seq += 1
                time.sleep(0.001)
            assert not os.listdir(tmp_path / "ev")  # nothing written before the trigger
            os.kill(proc.pid, signal.SIGUSR1)
            t_end = time.monotonic() + 0.5  # well past --post
            while time.monotonic() < t_end:
                w.write(user(seq, 0))
                seq += 1
                time.sleep(0.001)
            w.close()
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            (event,) = os.listdir(tmp_path / "ev")
            assert event.startswith("signal-") and b"1 event file(s)" in out
            got = [m.stamps.seq for _t, _s, _r, m in iter_recording(tmp_path / "ev" / event)]
            assert got and got == list(range(got[0], got[0] + len(got))) and got[-1] < seq
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
            ring.unlink()
            ring.close()

    def test_replay_into_named_rings(self, recording, shm_name, capsys):
        """replay --ring creates the named ring, publishes into it, and removes it at the end."""
        got = []
        stop = threading.Event()

        def consume():
            r = Ring.attach(shm_name, wait_s=30)
            rd = r.reader()
            while len(got) < 100:
                d = rd.read(timeout_s=30)
                got.append(unpack_record(d).seq)
            rd.close()
            r.close()
            stop.set()
        t = threading.Thread(target=consume)
        t.start()
        assert main(["replay", str(recording), "--ring", f"/u={shm_name}", "--rate", "0"]) == 0
        t.join(60)
        assert got == list(range(100)) and not os.path.exists(f"/dev/shm/edgepipe.{shm_name}")
        assert "replayed 100 messages" in capsys.readouterr().out

    def test_bad_files_exit_1_with_the_error(self, tmp_path, capsys):
        """info, replay and --recover on a missing or foreign file exit 1 naming the typed error."""
        (tmp_path / "x.bag").write_bytes(b"#ROSBAG V2.0\n" + b"\0" * 64)
        for argv in (["info", str(tmp_path / "none.mcap")], ["info", str(tmp_path / "x.bag")],
                     ["replay", str(tmp_path / "x.bag"), "--ring", "/a=b"],
                     ["record", "--recover", str(tmp_path / "none.mcap")]):
            assert main(argv) == 1
        err = capsys.readouterr().err
        assert "RecordingNotFoundError" in err and "RecordingFormatError" in err

    def test_recover_command(self, recording, tmp_path, capsys):
        """record --recover on a file cut in half says how many messages it kept and writes them."""
        data = recording.read_bytes()
        cut = tmp_path / "cut.mcap"
        cut.write_bytes(data[: len(data) // 3])
        assert main(["info", str(cut)]) == 1
        assert main(["record", "--recover", str(cut), "-o", str(tmp_path / "ok.mcap")]) == 0
        out = capsys.readouterr().out
        n = recording_info(tmp_path / "ok.mcap").messages
        assert f"recovered {n} messages" in out and 0 < n < 200


class TestRecorderKill:
    def test_kill_9_of_the_record_stage(self, tmp_path):
        """kill -9 of the record stage mid-run: the pipeline goes on (the checker gets all 3000 records),
        the killed recorder's file recovers in order, and the restarted recorder writes its own file."""
        from edgepipe.pipeline.config import parse_config
        from edgepipe.pipeline.supervisor import Pipeline

        out = tmp_path / "run.mcap"
        text = textwrap.dedent(f"""
            [stages.src]
            kind = "counter"
            outputs = {{ out = "n" }}
            params = {{ count = 3000, rate_hz = 1000 }}
            [stages.sink]
            kind = "check"
            inputs = {{ in = "n" }}
            [stages.rec]
            kind = "record"
            inputs = {{ n = "n.tap" }}
            params = {{ out = "{out}" }}
            [links.n]
            tap = true
        """)
        p = Pipeline.from_spec(parse_config(text), stats_path=False)
        killed = []

        def killer():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = p.stage_stats().get("rec", {})
                # kill once a chunk reached the file (schemas + a chunk: well over 5 kB; before it ~0.3 kB)
                flushed = out.exists() and out.stat().st_size > 5000
                if st.get("recorded", 0) > 1200 and flushed and st.get("pid"):
                    os.kill(st["pid"], signal.SIGKILL)
                    killed.append(st["pid"])
                    return
                time.sleep(0.05)
        t = threading.Thread(target=killer)
        t.start()
        assert p.run(seconds=120) == 0
        t.join(60)
        assert killed
        assert p.stage_stats()["sink"]["received"] == 3000 and p.stage_stats()["rec"]["restarts"] == 1
        r = recover_recording(out, tmp_path / "rec.mcap")
        seqs = [m.stamps.seq for _t, _s, _r, m in iter_recording(r.path)]
        assert len(seqs) >= 1 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        later = [m.stamps.seq for _t, _s, _r, m in iter_recording(tmp_path / "run.restart1.mcap")]
        assert later and later[-1] == 2999 and later == sorted(later)
