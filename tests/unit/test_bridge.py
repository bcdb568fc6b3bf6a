"""edgepipe.bridge on one machine (loopback TCP between two zenoh sessions in this process): the envelope,
records and frames crossing intact, bad samples from a plain zenoh publisher counted and dropped, config
mistakes. Across two network namespaces: tests/e2e/test_bridge_netns.py."""

from __future__ import annotations

import json
import socket
import threading
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe.clock import now_ns
from edgepipe.errors import (
    BridgePayloadError,
    BridgePayloadTooLargeError,
    BridgeVersionError,
    ConfigError,
    LayoutVersionError,
)
from edgepipe.frames import FrameReader, FrameWriter
from edgepipe.pipeline.api import EndOfStream, Inlet, Outlet
from edgepipe.ring import Ring

zenoh = pytest.importorskip("zenoh", reason="the bridge extra (eclipse-zenoh) is not installed")

from edgepipe.bridge.stage import BridgeStage
from edgepipe.bridge.wire import HEADER, KIND_RECORD, MAGIC, pack, unpack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pair:
    """A publishing and a subscribing BridgeStage over loopback, each on a thread, over plain rings."""

    def __init__(self, capacity: int = 1 << 20, max_bytes: int = 64 << 20, **up_params) -> None:
        port = free_port()
        self.a, self.b = Ring.create(capacity=capacity), Ring.create(capacity=capacity)
        self.up = BridgeStage("up", inputs={"n": "nums"}, pipeline="A", listen=[f"tcp/127.0.0.1:{port}"],
                              **up_params)
        self.down = BridgeStage("down", outputs={"nums": "nums"}, remote="A", pipeline="B",
                                connect=[f"tcp/127.0.0.1:{port}"], max_bytes=max_bytes)
        self.up.attach(inputs={"n": Inlet(self.a.reader(), "nums")}, outputs={})
        self.down.attach(inputs={}, outputs={"nums": Outlet(self.b.writer(), "nums", 1)})
        self.threads = [threading.Thread(target=s.run, daemon=True) for s in (self.down, self.up)]
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + 30  # hang guard: both sessions up and seeing each other
        while not (self.up.session and self.down.session and self.up.session.remotes_alive()
                   and self.down.session.remotes_alive()):
            assert time.monotonic() < deadline, "the two bridge ends never saw each other"
            time.sleep(0.01)
        time.sleep(0.3)  # subscriptions propagate after the liveliness tokens

    def close(self) -> None:
        for s in (self.up, self.down):
            s.stop()
        for t in self.threads:
            t.join(30)
        self.a.close()
        self.b.close()


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


class TestEnvelope:
    def test_round_trip_keeps_every_field(self):
        e = unpack(pack(b"abc" * 100, seq=2**40, send_ns=-5, type_id=22), max_bytes=1000)
        assert (e.kind, e.seq, e.send_ns, e.type_id, bytes(e.body)) == (KIND_RECORD, 2**40, -5, 22, b"abc" * 100)

    @pytest.mark.parametrize("mangle, err, text", [
        (lambda b: b[:10], BridgePayloadError, "shorter than"),
        (lambda b: b"XXXX" + b[4:], BridgePayloadError, "magic b'XXXX'"),
        (lambda b: b[:4] + bytes([2]) + b[5:], BridgeVersionError, "layout version 2"),
        (lambda b: b[:5] + bytes([77]) + b[6:], BridgePayloadError, "unknown kind 77"),
        (lambda b: b[:-1], BridgePayloadError, "says 64 body bytes but carries 63"),
        (lambda b: b[:-1] + b"!", BridgePayloadError, "crc32"),
    ])
    def test_bad_envelopes_raise_typed_errors_naming_the_value(self, mangle, err, text):
        with pytest.raises(err, match=text):
            unpack(mangle(pack(bytes(64), seq=1, send_ns=0)), max_bytes=1000)

    def test_version_error_is_a_layout_version_error_and_oversize_names_sizes(self):
        assert issubclass(BridgeVersionError, LayoutVersionError)
        with pytest.raises(BridgePayloadTooLargeError, match="2000 bytes, over this end's max_bytes 1000"):
            unpack(pack(bytes(2000), seq=0, send_ns=0), max_bytes=1000)


class TestCrossing:
    def test_records_cross_in_order_with_intact_payloads_then_end_of_stream(self, pair):
        """5000 records of 1 KB (seq + random bytes + crc32) cross; the clean end of the source crosses as an end
        of stream on the far link; nothing lost, duplicated or corrupted."""
        rng = np.random.default_rng(1)
        src = Outlet(pair.a.writer(), "nums", 0)
        sink = Inlet(pair.b.reader(), "nums")
        n = 5000
        got = []

        def drain():
            try:
                while True:
                    rec = sink.receive(timeout_s=30)
                    assert rec is not None, "no record within 30 s (hang guard)"
                    got.append(rec)
            except EndOfStream:
                pass

        t = threading.Thread(target=drain)
        t.start()
        for i in range(n):
            body = i.to_bytes(8, "little") + rng.bytes(1012)
            src.emit(body + zlib.crc32(body).to_bytes(4, "little"), seq=i)
        src.close()
        t.join(60)
        assert not t.is_alive()
        assert [r.seq for r in got] == list(range(n))
        assert all(zlib.crc32(r.payload[:-4]).to_bytes(4, "little") == r.payload[-4:] for r in got)
        assert all(r.payload[:8] == r.seq.to_bytes(8, "little") for r in got)
        assert pair.up.extra_stats()["published[edgepipe/A/nums]"] == n
        st = pair.down.extra_stats()
        assert st["received[edgepipe/A/nums]"] == n and not any(k.startswith(("lost", "dropped")) for k in st)

    def test_a_receiving_end_whose_streams_ended_stops_its_clock_pings(self, pair, monkeypatch):
        """When every stream into the receiving end has ended, its loop returns without anyone calling stop();
        its close() still ends the clock-ping thread before closing the session: before, the thread pinged on
        through close's 5 s join and then raised "session closed" from put()."""
        raised = []
        monkeypatch.setattr(threading, "excepthook", lambda a: raised.append((a.thread.name, a.exc_value)))
        src = Outlet(pair.a.writer(), "nums", 0)
        sink = Inlet(pair.b.reader(), "nums")
        for i in range(10):
            src.emit(i.to_bytes(8, "little"), seq=i)
        src.close()
        got = []
        with pytest.raises(EndOfStream):
            while True:
                got.append(sink.receive(timeout_s=30).seq)
        assert got == list(range(10))
        pair.threads[0].join(60)  # the receiving end's run(): its loop returned by itself, then close()
        assert not pair.threads[0].is_alive() and pair.down.error is None, pair.down.error
        assert pair.down._pinger is not None and not pair.down._pinger.is_alive()
        assert raised == []

    def test_frames_cross_with_their_header(self, pair):
        w, r = FrameWriter(pair.a.writer()), FrameReader(pair.b.reader())
        for i in range(4):
            arr = np.random.default_rng(i).integers(0, 255, (40 + i, 64, 3), dtype=np.uint8)
            w.write_frame(arr, capture_ns=1000 + i, source_id=3, pixel_format="RGB")
            with r.read_frame(timeout_s=30) as f:
                assert (f.seq, f.shape, f.capture_ns, f.source_id, f.pixel_format) == \
                       (i + 1, arr.shape, 1000 + i, 3, "RGB")
                assert np.array_equal(f.array, arr)
        w.close()


_EXIT_AFTER_CLOSE = """
import sys, threading, time
from edgepipe.bridge.stage import BridgeStage
from edgepipe.pipeline.api import Inlet, Outlet
from edgepipe.ring import Ring
with Ring.create(capacity=1 << 16) as a, Ring.create(capacity=1 << 16) as b:
    st = BridgeStage("both", inputs={"n": "nums"}, outputs={"nums": "nums"}, pipeline="A", remote="Z",
                     listen=[f"tcp/127.0.0.1:{sys.argv[1]}"], clock_period_ms=5)
    st.attach(inputs={"n": Inlet(a.reader(), "nums")}, outputs={"nums": Outlet(b.writer(), "nums", 1)})
    t = threading.Thread(target=st.run, daemon=True)  # as a stage host runs it, and as the tests do
    t.start()
    while st.session is None:
        time.sleep(0.005)
    time.sleep(0.05)
    st.stop()
    t.join(30)
print("closed", flush=True)
"""


class TestExit:
    def test_a_process_exiting_right_after_its_bridge_closed_exits_0(self):
        """zenoh-python runs a plain callable callback on a Python thread of its own, a daemon one when a
        stage's thread declares it; if that thread wakes to its closed channel while the interpreter finalizes,
        it is ended inside Rust code and the whole process aborts ("FATAL: exception not rethrown", -6) after
        doing everything right (the e2e frames test once failed so). Every bridge callback runs on zenoh's own
        thread instead: 10 processes running a bridge stage (inputs, outputs, clock pings) on a daemon thread,
        stopping it and exiting at once all exit 0. (With the default callbacks 18 of 40 such exits aborted.)"""
        import subprocess
        import sys
        for i in range(10):
            r = subprocess.run([sys.executable, "-c", _EXIT_AFTER_CLOSE, str(free_port())], capture_output=True,
                               text=True, timeout=120, check=False)
            assert (r.returncode, r.stdout) == (0, "closed\n"), (i, r.returncode, r.stderr[-2000:])


class TestBadInput:
    def test_plain_zenoh_publisher_garbage_is_counted_dropped_and_logged(self, capfd):
        """A plain zenoh publisher on the bridged key sends garbage, an envelope of layout version 2, an oversize
        record and a 'frame' without a frame header: each is counted by reason and logged; the bridge keeps going
        and the good record sent after them arrives."""
        p = Pair(max_bytes=4096)
        try:
            port = p.up.config["listen"][0]
            conf = zenoh.Config.from_json5(
                '{mode: "peer", connect: {endpoints: ["%s"]}, scouting: {multicast: {enabled: false}}, '
                'transport: {shared_memory: {enabled: false}}}' % port)
            with zenoh.open(conf) as z:
                pub = z.declare_publisher("edgepipe/A/nums", congestion_control=zenoh.CongestionControl.BLOCK)
                time.sleep(1.0)  # the declaration reaches the subscriber's session
                good = pack(b"ok-record", seq=0, send_ns=0)
                v2 = good[:4] + bytes([2]) + good[5:]
                for bad in (b"not an envelope at all" * 3, v2, pack(bytes(5000), seq=1, send_ns=0),
                            pack(bytes(200), seq=2, send_ns=0, type_id=_frame_type())):
                    pub.put(bad)
                pub.put(pack(b"ok-record", seq=3, send_ns=0))
                sink = Inlet(p.b.reader(), "nums")
                assert sink.receive_raw(timeout_s=30) == b"ok-record"
            st = p.down.extra_stats()
            k = "edgepipe/A/nums"
            assert (st[f"dropped[{k}: malformed]"], st[f"dropped[{k}: wrong version]"],
                    st[f"dropped[{k}: oversize]"]) == (2, 1, 1)
            err = capfd.readouterr().err
            for text in ("magic b'not '", "layout version 2", "5000 bytes, over this end's max_bytes 4096",
                         "a frame record of 200 bytes without a frame header"):
                assert text in err
        finally:
            p.close()


def _frame_type() -> int:
    from edgepipe.frames import REC_TYPE
    return REC_TYPE


class TestClock:
    def test_offset_and_drift_of_a_skewed_end_are_recovered_within_the_bound(self):
        """The sending end's stamps run 3.7 s ahead and drift +250 ppm (clock_skew): the receiving end's
        estimate recovers both within its own error bound, from pings alone."""
        off_ns, ppm = 3_700_000_000, 250.0
        p = Pair(clock_skew=[off_ns, ppm])
        try:
            src = Outlet(p.a.writer(), "nums", 0)
            deadline = time.monotonic() + 60  # hang guard: enough exchanges for an estimate over >= 1 s
            while True:
                assert time.monotonic() < deadline, "no clock estimate within 60 s"
                src.emit(b"x" * 64)
                est = p.down.estimate
                if est is not None and est.last_ns - est.first_ns > 1e9 and p.down.wire_ns:
                    break
                time.sleep(0.01)
            for t in (est.first_ns, (est.first_ns + est.last_ns) // 2, est.last_ns):
                truth = t * ppm * 1e-6 + off_ns  # remote - local at local time t
                assert abs(est.offset_at(t) - truth) <= est.bound_at(t), (t, est)
            span = est.last_ns - est.first_ns
            assert abs(est.drift_ppm - ppm) <= 2 * est.bound_ns / span * 1e6, est
            # stamped records cross onto this clock: capture mapped back (within the bound), one hop of the bridge
            sink = Inlet(p.b.reader(), "nums")
            while sink.receive(timeout_s=0.5) is not None:
                pass
            before = p.down.estimate
            caps = [now_ns() - 1000 * i for i in range(20)]
            for i, c in enumerate(caps):
                src.emit(b"y" * 64, seq=10_000 + i, capture_ns=c)
            got = [sink.receive(timeout_s=30) for _ in caps]
            after = p.down.estimate
            for c, rec in zip(caps, got):
                bound = max(before.bound_at(c), after.bound_at(c))
                assert abs(rec.capture_ns - c) <= bound + 1, (rec.capture_ns - c, bound)
                assert [(h.stage, h.receive_ns) for h in rec.hops] == [(1, rec.capture_ns)]
            st = p.down.clock_stats()
            assert ("wire_p50_us" in st and st["wire_bound_us"] < st["wire_p50_us"]) or \
                st["wire"].startswith("unknown: clock bound")
            print(f"clock bound {est.bound_ns / 1e3:.1f} us over {est.samples} samples; {st}")
        finally:
            p.close()

    def test_the_bound_combines_a_short_trip_out_and_a_short_trip_back_of_different_exchanges(self):
        """Exchanges alternate 20 us out / 200 us back and 200 us out / 20 us back (10 us turnaround): no single
        one bounds the offset tighter than +-110 us; together they pin it to about +-20 us, and the truth (3.7 s
        ahead, +250 ppm) lies within the bound at the ends, the middle and past the span."""
        from edgepipe.bridge.clock import ClockEstimate
        c = ClockEstimate()
        off, ppm = 3_700_000_000, 250

        def remote(t):
            return t + off + t * ppm // 1_000_000

        for i in range(400):
            t1 = 1_000_000_000 + i * 2_500_000
            out, back = (20_000, 200_000) if i % 2 else (200_000, 20_000)
            c.add(t1, remote(t1 + out), remote(t1 + out + 10_000), t1 + out + 10_000 + back)
        e = c.estimate()
        assert 20_000 <= e.bound_ns < 25_000, e
        for t in (e.first_ns, (e.first_ns + e.last_ns) // 2, e.last_ns, e.last_ns + 100_000_000):
            assert abs(e.offset_at(t) - (off + t * ppm * 1e-6)) <= e.bound_at(t), (t, e)
        assert abs(e.drift_ppm - ppm) < 1, e

    @settings(max_examples=60, deadline=None)
    @given(off=st.integers(-10**10, 10**10), ppm=st.floats(-1900, 1900), n=st.integers(8, 600),
           seed=st.integers(0, 2**32 - 1), spacing_ms=st.sampled_from([0.05, 1, 30, 300]))
    def test_the_truth_lies_within_the_bound_for_any_drift_and_any_trips(self, off, ppm, n, seed, spacing_ms):
        """Random trips out and back (5 us to 2 ms each, independently), any offset, any drift under
        MAX_DRIFT, exchanges close together or far apart: the truth is inside the bound at both ends of the
        window, in the middle and past it (the pruning of exchanges that cannot bind a line drops none that
        can)."""
        import random

        from edgepipe.bridge.clock import ClockEstimate
        rng = random.Random(seed)
        c = ClockEstimate(window=512)

        def remote(t):
            return t + off + int(t * ppm * 1e-6)

        t1 = 10**12
        for _ in range(n):
            t1 += int(spacing_ms * 1e6 * rng.uniform(0.5, 1.5))
            out, turn, back = (int(rng.uniform(5_000, 2_000_000)) for _ in range(3))
            c.add(t1, remote(t1 + out), remote(t1 + out + turn), t1 + out + turn + back)
        e = c.estimate()
        assert e is not None and e.samples == min(n, 512)
        for t in (e.first_ns, (e.first_ns + e.last_ns) // 2, e.last_ns, e.last_ns + 10_000_000):
            assert abs(e.offset_at(t) - (off + t * ppm * 1e-6)) <= e.bound_at(t) + 2, (t, e)

    def test_a_window_must_hold_enough_exchanges(self):
        from edgepipe.bridge.clock import ClockEstimate
        with pytest.raises(ValueError, match="window must be an int >= 8, got 3"):
            ClockEstimate(window=3)

    def test_exchanges_that_break_causality_are_ignored(self):
        from edgepipe.bridge.clock import ClockEstimate
        c = ClockEstimate()
        c.add(100, 50, 60, 90)  # t4 before t1
        c.add(100, 50, 500, 200)  # a turnaround longer than the round trip
        assert c.exchanges == 0 and c.estimate() is None


def _certs(d, require_system) -> dict[str, str]:
    """A CA, a server and a client certificate (for localhost / 127.0.0.1) and a second CA, made with openssl."""
    import subprocess
    require_system("openssl", "openssl")

    def run(*a):
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
            "-subj", f"/CN=edgepipe test {ca}")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("stranger", "other-ca")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    return {n: str(d / n) for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key",
                                    "stranger.pem", "stranger.key", "other-ca.pem")}


class TestTls:
    def _ends(self, c: dict, port: int, client: str, client_ca: str):
        up = BridgeStage("up", inputs={"n": "nums"}, pipeline="A", listen=[f"tls/localhost:{port}"],
                         tls={"root_ca_certificate": c["ca.pem"], "listen_certificate": c["server.pem"],
                              "listen_private_key": c["server.key"], "enable_mtls": True})
        down = BridgeStage("down", outputs={"nums": "nums"}, remote="A", pipeline="B",
                           connect=[f"tls/localhost:{port}"],
                           tls={"root_ca_certificate": c[client_ca], "connect_certificate": c[f"{client}.pem"],
                                "connect_private_key": c[f"{client}.key"], "enable_mtls": True})
        return up, down

    def _run(self, up, down, n: int, wait_s: float):
        with Ring.create(capacity=1 << 16) as a, Ring.create(capacity=1 << 16) as b:
            up.attach(inputs={"n": Inlet(a.reader(), "nums")}, outputs={})
            down.attach(inputs={}, outputs={"nums": Outlet(b.writer(), "nums", 1)})
            threads = [threading.Thread(target=s.run, daemon=True) for s in (down, up)]
            for t in threads:
                t.start()
            src = Outlet(a.writer(), "nums", 0, mode="drop")
            for i in range(n):
                src.emit(b"secret %d" % i, seq=i)
            src.close()
            sink, got = Inlet(b.reader(), "nums"), []
            try:
                while (rec := sink.receive(timeout_s=wait_s)) is not None:
                    got.append(rec.seq)
            except EndOfStream:
                pass
            for s in (up, down):
                s.stop()
            for t in threads:
                t.join(30)
        return got

    def test_mutual_tls_with_generated_certificates_carries_records(self, tmp_path, require_system):
        c = _certs(tmp_path, require_system)
        up, down = self._ends(c, free_port(), "client", "ca.pem")
        assert self._run(up, down, 50, wait_s=30) == list(range(50))

    def test_a_client_certificate_from_another_ca_gets_nothing(self, tmp_path, require_system):
        """mTLS: the listening end refuses a client whose certificate its CA did not sign; the client never sees
        the other end nor a record (3 s of waiting: far more than a connection takes here)."""
        c = _certs(tmp_path, require_system)
        up, down = self._ends(c, free_port(), "stranger", "ca.pem")
        assert self._run(up, down, 50, wait_s=3) == []
        assert down.extra_stats()["received[edgepipe/A/nums]"] == 0


class TestWatchCli:
    def test_watch_counts_the_records_of_a_running_bridge_and_sees_its_end(self, pair, capsys):
        """`edgepipe bridge --connect EP --seconds 2 --json` counts the records published while it watches and
        lists the publishing bridge end as alive; it publishes nothing itself (the receiving end still gets every
        record)."""
        from edgepipe.cli.main import main
        src = Outlet(pair.a.writer(), "nums", 0)
        sink = Inlet(pair.b.reader(), "nums")
        stop = threading.Event()
        sent = []

        def feed():
            while not stop.is_set():
                src.emit(b"w" * 32)
                sent.append(1)
                assert sink.receive(timeout_s=30) is not None
                time.sleep(0.002)

        t = threading.Thread(target=feed)
        t.start()
        try:
            assert main(["bridge", "--connect", pair.up.config["listen"][0], "--seconds", "2", "--json"]) == 0
        finally:
            stop.set()
            t.join(30)
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        k = out["keys"]["edgepipe/A/nums"]
        assert 0 < k["records"] <= len(sent) and k["dropped"] == {}
        assert "edgepipe/A/up" in out["alive"]
        assert pair.down.extra_stats()["received[edgepipe/A/nums]"] == len(sent)

    def test_no_endpoint_exits_2(self, capsys):
        from edgepipe.cli.main import main
        assert main(["bridge", "--seconds", "1"]) == 2
        assert "listen or connect endpoints" in capsys.readouterr().err


class TestConfig:
    def test_no_endpoint_is_a_config_error(self):
        with pytest.raises(ConfigError, match="listen or connect endpoints"):
            BridgeStage("b", inputs={"x": "x"}, pipeline="p")

    def test_bad_endpoint_and_outputs_without_remote_and_bad_names(self):
        with pytest.raises(ConfigError, match="'198.18.0.1:7447' is not a zenoh locator"):
            BridgeStage("b", inputs={"x": "x"}, connect=["198.18.0.1:7447"])
        with pytest.raises(ConfigError, match="no remote"):
            BridgeStage("b", outputs={"x": "x"}, connect=["tcp/127.0.0.1:1"])
        with pytest.raises(ConfigError, match="'a/b' cannot be a zenoh key chunk"):
            BridgeStage("b", pipeline="a/b", connect=["tcp/127.0.0.1:1"])

    def test_a_latest_only_input_is_refused_naming_its_tap(self):
        st = BridgeStage("b", inputs={"f": "frames"}, pipeline="p", connect=["tcp/127.0.0.1:1"])
        with Ring.create(capacity=4096) as r:
            st.attach(inputs={"f": Inlet(r.reader(), "frames", mode="latest")}, outputs={})
            with pytest.raises(ConfigError, match="'frames' is latest-only.*bridge 'frames.tap'"):
                st.open()

    def test_kind_is_registered_and_header_is_40_bytes(self):
        from edgepipe.pipeline.config import stage_kinds
        assert stage_kinds()["bridge"] == "edgepipe.bridge.stage:BridgeStage"
        assert HEADER.size == 40 and MAGIC == b"EPB1"
