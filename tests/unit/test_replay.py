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
        rows with every field an ImuSample carries (seq, deadline, sample and publish stamps, gyro, accel, attitude)."""
        st, got_u, got_i, _ = run_replay(recording, rate=0, restamp=False)
        assert st.sent == {"/u": 100, "/imu": 100}
        assert got_u == [(user(i, 1_000 * MS + i * 4 * MS), 1) for i in range(100)]
        assert [t for _d, t in got_i] == [IMU_RECORD_TYPE] * 100
        rows = np.frombuffer(b"".join(d for d, _t in got_i), IMU_SAMPLE_DTYPE)
        want = np.frombuffer(b"".join(imu(i, 1_002 * MS + i * 4 * MS) for i in range(100)), IMU_SAMPLE_DTYPE)
        for f in ("seq", "deadline_ns", "sample_ns", "publish_ns", "gyr", "acc", "q", "flags"):
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


class _VirtualClock:
    """A clock for the replay's pacing loop: each read advances it 1 us (the spin), and each sleep advances
    it by the time asked plus an overshoot drawn from ``overshoot_ns`` (a late wake, a preemption)."""

    def __init__(self, overshoot_ns) -> None:
        self.t = 5_000 * MS
        self.overshoot = overshoot_ns
        self.sleeps = 0

    def now_ns(self) -> int:
        self.t += 1_000
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps += 1
        self.t += int(s * 1e9) + self.overshoot()


class _StampingWriter:
    def __init__(self, clock: _VirtualClock) -> None:
        self.clock, self.got = clock, []

    def write(self, data, type_id=1, timeout_s=None) -> None:
        self.got.append((unpack_record(data).seq, self.clock.t))


class TestPacing:
    """The pace of a replay follows an absolute schedule: checked against a virtual clock (nothing timed)."""

    @pytest.fixture(scope="class")
    @classmethod
    def long_recording(cls, tmp_path_factory):
        """20 000 user records 1 ms apart (20 s of recording)."""
        path = tmp_path_factory.mktemp("long") / "long.mcap"
        with McapRecorder(path, clock=CLOCK, chunk_bytes=1 << 16, compression="lz4") as rec:
            for i in range(20_000):
                t = 1_000 * MS + i * MS
                for m in to_messages("/u", user(i, t), 1, t):
                    rec.write(m.topic, m.schema, m.data, receive_ns=m.receive_ns, capture_ns=m.capture_ns, seq=m.seq)
        return path

    @pytest.mark.parametrize("spin_ns", [0, 70_000, 300_000])
    def test_no_drift_over_a_long_run_whatever_the_sleep_overshoot(self, long_recording, monkeypatch, spin_ns):
        """Every record is published once, in order, never before its recorded offset from the first, and no
        later than the worst single overshoot: late wakes (up to 3 ms, as a preempted process sees them)
        never add up over 20 000 records, because each publish time is t0 + its recorded offset, not the
        previous publish plus an interval."""
        import random

        import edgepipe.record.replay as rp

        rnd = random.Random(7)
        worst = 3 * MS
        clock = _VirtualClock(lambda: rnd.choice((0, 50_000, 60_000, 80_000, worst)))
        monkeypatch.setattr(rp, "now_ns", clock.now_ns)
        monkeypatch.setattr(rp, "time", clock)
        w = _StampingWriter(clock)
        st = replay(long_recording, {"/u": w}, rate=1.0, restamp=False, spin_ns=spin_ns)
        assert st.sent == {"/u": 20_000} and [s for s, _t in w.got] == list(range(20_000))
        t0 = w.got[0][1] - 1_000  # the replay's start: its first publish came one clock read (the spin) later
        late = [t - t0 - i * MS for i, (_s, t) in enumerate(w.got)]
        assert min(late) >= 0, "a record was published before its time"
        assert max(late) <= worst + 10_000, f"lateness added up: {max(late)} ns"
        assert clock.sleeps > 0 and st.lateness.get_total_count() + st.early == 20_000
        # the last record is as late as a typical one, not 20 000 overshoots late
        assert late[-1] <= worst + 10_000

    def test_spin_margin_absorbs_a_late_wake(self, long_recording, monkeypatch):
        """With a spin margin longer than the wake's overshoot, every publish lands within a spin step of its
        time; without one, it is as late as the wake."""
        import edgepipe.record.replay as rp

        for spin_ns, bound in ((100_000, 2_000), (0, 80_000 + 2_000)):
            clock = _VirtualClock(lambda: 80_000)
            monkeypatch.setattr(rp, "now_ns", clock.now_ns)
            monkeypatch.setattr(rp, "time", clock)
            w = _StampingWriter(clock)
            replay(long_recording, {"/u": w}, rate=1.0, restamp=False, spin_ns=spin_ns, end_s=1.0)
            t0 = w.got[0][1] - 1_000  # one clock read before the first publish
            late = [t - t0 - i * MS for i, (_s, t) in enumerate(w.got)]
            assert len(w.got) == 1000 and 0 <= min(late) and max(late) <= bound, (spin_ns, max(late))
        assert rp.pace_spin_ns(25_000) == 100_000 and rp.pace_spin_ns(1) == 50_002
        assert rp.pace_spin_ns(10_000_000) == rp.PACE_SPIN_MAX_NS


class TestRealtime:
    def test_realtime_replay_keeps_order_and_count(self, recording):
        """replay(realtime=10) under SCHED_FIFO delivers what a normal replay does, and gives the thread its
        old policy back afterwards (or, where SCHED_FIFO is not allowed, raises the typed error before
        publishing anything)."""
        from edgepipe.errors import RealtimeNotPermittedError

        before = os.sched_getscheduler(0)
        try:
            st, got_u, got_i, _ = run_replay(recording, rate=1.0, realtime=10)
        except RealtimeNotPermittedError as e:
            assert e.priority == 10 and "CAP_SYS_NICE" in str(e)
            from conftest import skip_unless_ci
            skip_unless_ci("SCHED_FIFO is not allowed here (root or an rtprio limit needed)")
        assert st.sent == {"/u": 100, "/imu": 100}
        assert [unpack_record(d).seq for d, _t in got_u] == list(range(100)) and len(got_i) == 100
        assert os.sched_getscheduler(0) == before

    def test_refused_realtime_is_a_typed_error_naming_the_fix(self, recording, tmp_path):
        """A process that may not use SCHED_FIFO (rtprio limit 0 and no CAP_SYS_NICE: dropped from the
        capability bounding set before the exec, so even root lacks it) gets RealtimeNotPermittedError naming the priority and how to allow it, from the
        API and from `edgepipe replay --realtime` (exit 1, no ring created)."""
        import subprocess
        import sys

        def unprivileged():  # no rtprio allowance, and no CAP_SYS_NICE across the exec (even as root)
            import ctypes
            import resource

            resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
            libc = ctypes.CDLL(None, use_errno=True)
            PR_CAPBSET_DROP, CAP_SYS_NICE = 24, 23
            if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_NICE, 0, 0, 0) != 0 and os.getuid() == 0:
                raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP CAP_SYS_NICE")

        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), XDG_CACHE_HOME=str(tmp_path / "c"))
        code = ("from edgepipe.record.replay import realtime_priority\n"
                "from edgepipe.errors import RealtimeNotPermittedError\n"
                "try:\n    with realtime_priority(12):\n        print('allowed')\n"
                "except RealtimeNotPermittedError as e:\n    print('refused', e.priority, e)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           preexec_fn=unprivileged, timeout=120, cwd=str(tmp_path))
        assert r.stdout.startswith("refused 12 SCHED_FIFO priority 12 refused"), r
        assert "rtprio limit 0" in r.stdout and "CAP_SYS_NICE" in r.stdout
        def ours():  # other jobs on the machine create their own segments meanwhile
            return {e for e in os.listdir("/dev/shm") if e.startswith("edgepipe.")}

        before = ours()
        r = subprocess.run([sys.executable, "-m", "edgepipe", "replay", str(recording), "--ring",
                            f"/u=rt-{os.getpid()}", "--realtime"], capture_output=True, text=True, env=env,
                           preexec_fn=unprivileged, timeout=120, cwd=str(tmp_path))
        assert r.returncode == 1 and "RealtimeNotPermittedError: SCHED_FIFO priority 10 refused" in r.stderr, r
        assert ours() == before

    def test_bad_priority_is_a_value_error(self, recording):
        """A priority outside 1..99 is a ValueError naming it, before anything is replayed."""
        from edgepipe.record.replay import realtime_priority

        with pytest.raises(ValueError, match="100"):
            with realtime_priority(100):
                pass
        with pytest.raises(ValueError, match="spin_ns"):
            replay(recording, {}, spin_ns=-1)


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

    def test_record_a_pipeline_that_already_taps_a_link(self, tmp_path, capsys):
        """A link with ``tap = true`` in its TOML (as demo.toml has, for record --attach) is recorded like the
        others, and its side link ``n.tap`` is not itself offered for recording: no "not recorded" line."""
        (tmp_path / "p.toml").write_text(PIPE % "relay" + "[links.n]\ntap = true\n")
        out = tmp_path / "t.mcap"
        assert main(["record", str(tmp_path / "p.toml"), "-o", str(out)]) == 0
        err = capsys.readouterr().err
        assert "not recorded" not in err, err
        assert main(["info", str(out)]) == 0
        assert "800 messages in 2 channels" in capsys.readouterr().out

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

    def test_replay_into_a_named_ring_waits_for_its_consumer(self, recording, shm_name, capsys):
        """replay --ring publishes nothing until the ring's consumer has opened it: a consumer that attaches
        only after the whole recording would fit in the ring still gets every record (before, the replay
        published into the ring, removed it at the end, and a consumer attaching then found no segment). With
        no consumer within --wait-consumer it exits 1 saying so, and removes the ring."""
        assert main(["replay", str(recording), "--ring", f"/u={shm_name}", "--rate", "0",
                     "--wait-consumer", "0.2"]) == 1
        err = capsys.readouterr().err
        assert f"no consumer opened {shm_name!r} within 0.2 s" in err and "nothing was replayed" in err
        assert not os.path.exists(f"/dev/shm/edgepipe.{shm_name}")
        got, before_open = [], []

        def consume_late():
            r = Ring.attach(shm_name, wait_s=30)
            time.sleep(0.5)  # lockstep would have published all 100 by now if it did not wait for us
            before_open.append(r.status().records_written)
            rd = r.reader()
            while len(got) < 100:
                got.append(unpack_record(rd.read(timeout_s=30)).seq)
            rd.close()
            r.close()
        t = threading.Thread(target=consume_late)
        t.start()
        assert main(["replay", str(recording), "--ring", f"/u={shm_name}", "--rate", "0"]) == 0
        t.join(60)
        assert before_open == [0] and got == list(range(100))
        assert "waiting up to 60 s for a consumer" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["replay", str(recording), "--ring", f"/u={shm_name}", "--wait-consumer", "-1"])
        assert "must be 0 or more seconds, got '-1'" in capsys.readouterr().err

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


LATE = '''
from edgepipe.clock import now_ns
from edgepipe.pipeline.api import PipelineStage


class Late(PipelineStage):
    """A stand-in for a detector that falls behind: drops a record older than ``deadline_ms`` (from its capture
    stamp) when it gets to it, as the inference stage does; ``odd_only`` limits that to odd sequence numbers."""

    deadline_param = "deadline_ms"

    def __init__(self, name=None, *, deadline_ms: float = 0.0, odd_only: bool = False, **kw):
        super().__init__(name, **kw)
        self.budget_ns = int(deadline_ms * 1e6)
        self.odd_only = odd_only

    def handle(self, rec):
        if self.budget_ns and now_ns() - rec.capture_ns > self.budget_ns and (rec.seq % 2 or not self.odd_only):
            self.count("dropped_deadline")
            return
        self.emit(rec.payload, parent=rec)
'''

LATE_PIPE = """
[stages.src]
kind = "counter"
outputs = { out = "n" }
params = { count = 400, rate_hz = 2000 }
[stages.mid]
kind = "latestages:Late"
inputs = { in = "n" }
outputs = { out = "m" }
params = { deadline_ms = %s, odd_only = %s }
[stages.sink]
kind = "check"
inputs = { in = "m" }
"""


class TestCompareUnderLoad:
    """``replay --compare`` judges the results, not the machine's load: a stage that sheds input older than a
    deadline (here every replayed record is older than 1 ms: ``--keep-stamps`` keeps the recorded capture
    stamps, taken before this replay started; no clock is timed) runs without its deadline, and what one side
    did not make is reported apart from the differences."""

    @pytest.fixture
    def golden(self, tmp_path):
        (tmp_path / "latestages.py").write_text(LATE + REVERSE)  # a module name of its own: imports are cached
        (tmp_path / "p.toml").write_text(LATE_PIPE % (600_000, "false"))  # the golden run: nothing is late
        golden = tmp_path / "golden.mcap"
        assert main(["record", str(tmp_path / "p.toml"), "-o", str(golden)]) == 0
        return golden

    def test_a_shedding_stage_runs_without_its_deadline(self, golden, tmp_path, capsys):
        (tmp_path / "late.toml").write_text(LATE_PIPE % (1, "false"))
        capsys.readouterr()
        assert main(["replay", str(golden), "--pipeline", str(tmp_path / "late.toml"), "--compare", str(golden),
                     "--keep-stamps"]) == 0
        out = capsys.readouterr().out
        assert "lockstep" in out and "deadlines off: mid.deadline_ms=1" in out
        assert "compared 400 messages on /m: no difference" in out and "DROPPED" not in out

    def test_kept_deadlines_drop_everything_and_say_so(self, golden, tmp_path, capsys):
        (tmp_path / "late.toml").write_text(LATE_PIPE % (1, "false"))
        capsys.readouterr()
        assert main(["replay", str(golden), "--pipeline", str(tmp_path / "late.toml"), "--compare", str(golden),
                     "--keep-stamps", "--keep-deadlines"]) == 1
        out = capsys.readouterr().out
        assert "DROPPED by this run's pipeline: 400 (mid.dropped_deadline 400)" in out
        assert "compared 0 messages" in out

    def test_dropped_results_are_reported_apart_from_differences(self, golden, tmp_path, capsys):
        """The odd records dropped by the deadline: the even ones compare equal (exit 0), the dropped ones
        are listed as not compared, with the count the stage made of them."""
        (tmp_path / "late.toml").write_text(LATE_PIPE % (1, "true"))
        capsys.readouterr()
        assert main(["replay", str(golden), "--pipeline", str(tmp_path / "late.toml"), "--compare", str(golden),
                     "--keep-stamps", "--keep-deadlines"]) == 0
        out = capsys.readouterr().out
        assert "DROPPED by this run's pipeline: 200 (mid.dropped_deadline 200)" in out
        assert "NOT COMPARED /m: 199 result(s) of the golden run missing in this run (seq 1, 3, 5" in out
        assert "this run dropped them" in out
        assert "compared 200 messages on /m: no difference" in out

    def test_the_golden_runs_drops_are_not_differences(self, golden, tmp_path, capsys):
        """A golden run that dropped half its records under load: this run's results for those have nothing
        to compare with; the rest compare equal (exit 0)."""
        (tmp_path / "late.toml").write_text(LATE_PIPE % (1, "true"))
        lossy = tmp_path / "lossy.mcap"
        assert main(["replay", str(golden), "--pipeline", str(tmp_path / "late.toml"), "--compare", str(golden),
                     "--keep-stamps", "--keep-deadlines"]) == 0
        this_run = capsys.readouterr().out.rsplit("this run's recording: ", 1)[1].split(")")[0]
        os.replace(this_run, lossy)  # its /m: the even records only
        capsys.readouterr()
        assert main(["replay", str(golden), "--pipeline", str(tmp_path / "late.toml"), "--compare", str(lossy),
                     "--keep-stamps"]) == 0
        out = capsys.readouterr().out
        assert "NOT COMPARED /m: 199 result(s) of this run have none in the golden run" in out
        assert "compared 200 messages on /m: no difference" in out and "DIFF" not in out

    def test_a_real_difference_still_fails(self, golden, tmp_path, capsys):
        (tmp_path / "q.toml").write_text(PIPE % "latestages:Reverse")
        capsys.readouterr()
        assert main(["replay", str(golden), "--pipeline", str(tmp_path / "q.toml"), "--compare", str(golden)]) == 1
        assert "399 difference(s)" in capsys.readouterr().out
