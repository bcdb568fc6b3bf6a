"""edgepipe.bridge.offload on one machine (loopback TCP): the unsure rule, frames of unsure results reaching a
server with the result's frame seq, answers merged by seq, timeouts counted (also with no server at all), a
late answer dropped and counted, malformed answers counted and never fatal. Across two network namespaces,
with real inference on both sides: tests/e2e/test_offload_netns.py."""

from __future__ import annotations

import queue
import socket
import threading
import time

import numpy as np
import pytest

from edgepipe.clock import now_ns
from edgepipe.control import messages as pb
from edgepipe.errors import ConfigError
from edgepipe.frames import FrameWriter
from edgepipe.pipeline.api import Inlet, Outlet
from edgepipe.ring import Ring

zenoh = pytest.importorskip("zenoh", reason="the bridge extra (eclipse-zenoh) is not installed")

from edgepipe.bridge.offload import RESULT_TYPE, OffloadStage, unsure_reason
from edgepipe.bridge.session import make_config
from edgepipe.bridge.wire import HEADER, KIND_RECORD, MAGIC, pack, unpack
from edgepipe.frames import REC_TYPE

HANG_S = 30  # hang guards only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def result(seq: int, cap: int, scores: list[float], model: str = "edge-model") -> pb.InferenceResult:
    r = pb.InferenceResult(frame_seq=seq, model_id=model)
    r.stamps.capture_ns = cap
    r.stamps.seq = seq
    for i, s in enumerate(scores):
        r.detections.boxes.add(x_min=10 * i, y_min=0, x_max=10 * i + 5, y_max=5, score=s, label="text")
    return r


class FakeServer:
    """A plain zenoh session standing in for the server pipeline: it hears the frames the edge sends (their
    header's seq and capture stamp and first pixel go into ``frames``) and answers when the test says so."""

    def __init__(self, port: int) -> None:
        self.z = zenoh.open(make_config(connect=[f"tcp/127.0.0.1:{port}"]))
        self.token = self.z.liveliness().declare_token("edgepipe/server/_alive/fake")
        self.frames: queue.Queue = queue.Queue()
        self.sub = self.z.declare_subscriber("edgepipe/edge/offload", self._on_frame)
        self.pub = self.z.declare_publisher("edgepipe/server/answers")
        self.sent = 0

    def _on_frame(self, sample) -> None:
        env = unpack(sample.payload.to_bytes(), max_bytes=1 << 24)
        body = bytes(env.body)
        seq = int.from_bytes(body[24:32], "little")
        cap = int.from_bytes(body[32:40], "little", signed=True)
        self.frames.put((env.type_id, seq, cap, body[-1]))

    def put_raw(self, data: bytes) -> None:
        self.pub.put(data)

    def answer(self, seq: int, scores: list[float], cap: int = 0, type_id: int = RESULT_TYPE) -> None:
        a = result(seq, cap, scores, model="server-model")
        a.inference_start_ns, a.inference_end_ns = 1_000, 5_001_000  # the server's clock: only the duration counts
        self.put_raw(pack(a.SerializeToString(), seq=self.sent, send_ns=now_ns(), type_id=type_id))
        self.sent += 1

    def close(self) -> None:
        self.sub.undeclare()
        self.token.undeclare()
        self.z.close()


class Edge:
    """An OffloadStage on a thread over plain rings: frames in (as a capture's tap would), edge results in,
    merged results out."""

    def __init__(self, port: int, **params) -> None:
        self.rings = [Ring.create(capacity=1 << 22), Ring.create(capacity=1 << 16), Ring.create(capacity=1 << 18)]
        rf, rr, ro = self.rings
        self.stage = OffloadStage("offload", inputs={"frames": "frames.tap", "results": "detections"},
                                  outputs={"output": "merged"}, pipeline="edge", remote="server",
                                  listen=[f"tcp/127.0.0.1:{port}"], **params)
        self.stage.attach(inputs={"frames": Inlet(rf.reader(), "frames.tap"), "results": Inlet(rr.reader(), "detections")},
                          outputs={"output": Outlet(ro.writer(), "merged", 1)})
        self.fw = FrameWriter(rf.writer())
        self.results = rr.writer()
        self.out = Inlet(ro.reader(), "merged")
        self.thread = threading.Thread(target=self.stage.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + HANG_S
        while self.stage.session is None:
            assert time.monotonic() < deadline, "the offload stage never opened"
            time.sleep(0.01)

    def wait_server(self) -> None:
        deadline = time.monotonic() + HANG_S
        while not self.stage.session.remotes_alive():
            assert time.monotonic() < deadline, "the offload stage never saw the server"
            time.sleep(0.01)
        time.sleep(0.3)  # subscriptions propagate after the liveliness tokens

    def send(self, seq: int, scores: list[float], frame: bool = True) -> int:
        """A frame (unless ``frame`` is False: as if the tap had dropped it) and then its edge result."""
        cap = now_ns()
        if frame:
            self.fw.write_frame(np.full((24, 32, 3), seq % 251, np.uint8), capture_ns=cap, timeout_s=HANG_S)
        self.results.write(result(seq, cap, scores).SerializeToString(), RESULT_TYPE, timeout_s=HANG_S)
        return cap

    def take(self, n: int) -> list[pb.InferenceResult]:
        got = []
        for _ in range(n):
            rec = self.out.receive(timeout_s=HANG_S)
            assert rec is not None, f"only {len(got)} of {n} merged results came out"
            assert self.out.end.last_type == RESULT_TYPE
            got.append(rec.message)
        return got

    def close(self) -> dict:
        self.fw.close()
        self.results.close()
        self.thread.join(HANG_S)
        assert not self.thread.is_alive(), "the offload stage did not end after its inputs did"
        stats = self.stage.stats()
        self.out.close()
        for r in self.rings:
            r.close()
        return stats


@pytest.fixture
def port():
    return free_port()


class TestUnsureRule:
    def test_no_box_is_unsure_unless_told_otherwise(self):
        """A result without boxes is unsure ("no box"), and sure when empty_is_unsure is off."""
        r = result(1, 0, [])
        assert unsure_reason(r, 0.6) == "no box"
        assert unsure_reason(r, 0.6, empty_is_unsure=False) == ""

    def test_the_mean_box_score_decides(self):
        """Unsure when the boxes' mean score is below min_score (one confident box does not carry weak ones);
        a mean exactly at the threshold is sure."""
        assert unsure_reason(result(1, 0, [0.75, 0.25]), 0.51) == "low score"
        assert unsure_reason(result(1, 0, [0.75, 0.25]), 0.5) == ""  # scores are float32: these are exact
        assert unsure_reason(result(1, 0, [0.95]), 0.9) == ""
        assert unsure_reason(result(1, 0, [0.5, 0.5, 0.5]), 0.7) == "low score"

    def test_bad_parameters_are_config_errors(self):
        """Out-of-range parameters and a key chunk zenoh cannot take fail before anything starts."""
        for bad in ({"min_score": 1.5}, {"timeout_ms": 0}, {"max_pending": 0}, {"frame_buffer": True},
                    {"remote": "a/b"}, {"pipeline": "_x"}):
            with pytest.raises(ConfigError):
                OffloadStage("o", listen=["tcp/127.0.0.1:1"], **bad)
        with pytest.raises(ConfigError, match="listen or connect"):
            OffloadStage("o")


class TestWithoutServer:
    def test_every_unsure_frame_times_out_and_the_edge_results_still_flow(self, port):
        """No server anywhere: sure results go out as the edge's, every unsure one goes out after its timeout
        marked timed_out, and the counts add up (nothing is lost, nothing blocks)."""
        e = Edge(port, timeout_ms=50, min_score=0.6, max_pending=16)
        plan = {s: ([0.9] if s % 3 == 0 else [] if s % 3 == 1 else [0.4, 0.5]) for s in range(12)}
        for s, scores in plan.items():
            e.send(s, scores)
        got = {m.frame_seq: m for m in e.take(len(plan))}
        st = e.close()
        assert sorted(got) == sorted(plan)
        for s, m in got.items():
            assert m.offload.answered_by == "edge"
            assert m.model_id == "edge-model"
            assert m.offload.timed_out == (s % 3 != 0), (s, m.offload)
            assert m.offload.unsure == {0: "", 1: "no box", 2: "low score"}[s % 3]
        assert st["sure"] == 4 and st["unsure"] == 8 and st["forwarded"] == 8 and st["timeouts"] == 8
        assert st["emitted"] == 12 and st["pending"] == 0
        assert "answered" not in st and "round_trip_p50_ms" not in st


class TestWithServer:
    def test_answers_are_merged_by_frame_seq(self, port):
        """Each unsure result's frame reaches the server with the result's frame_seq in its header (not the
        frame ring's own numbering) and its capture stamp; the server answers in reverse order and each answer
        replaces the edge result of its own seq: the server's boxes and model, the edge's stamps, a round trip;
        sure results never go to the server."""
        srv = FakeServer(port)
        e = Edge(port, timeout_ms=20_000, min_score=0.6)
        try:
            e.wait_server()
            caps = {s: e.send(s, [0.9] if s in (100, 103) else [0.2]) for s in (100, 101, 102, 103, 104)}
            sent = [srv.frames.get(timeout=HANG_S) for _ in range(3)]
            assert sorted((t, s, c, px) for t, s, c, px in sent) == \
                [(REC_TYPE, s, caps[s], s % 251) for s in (101, 102, 104)]
            first = e.take(2)  # the sure ones went out at once
            assert sorted(m.frame_seq for m in first) == [100, 103]
            for s in (104, 102, 101):
                srv.answer(s, [0.97] * (s - 100))  # 4, 2 and 1 boxes: whose answer is whose
            merged = {m.frame_seq: m for m in e.take(3)}
        finally:
            st = e.close()
            srv.close()
        assert srv.frames.empty()
        for s in (101, 102, 104):
            m = merged[s]
            assert m.offload.answered_by == "server" and not m.offload.timed_out
            assert len(m.detections.boxes) == s - 100 and m.model_id == "server-model"
            assert m.stamps.capture_ns == caps[s]  # the edge's stamps, one clock
            assert m.offload.edge_model_id == "edge-model" and m.offload.edge_boxes == 1
            assert m.offload.edge_mean_score == pytest.approx(0.2)
            assert m.offload.round_trip_ns > 0 and m.offload.server_inference_ns == 5_000_000
        assert st["answered"] == 3 and st["forwarded"] == 3 and st["sure"] == 2 and st.get("timeouts", 0) == 0
        assert st["round_trip_p99_ms"] >= st["round_trip_p50_ms"] > 0 and "round_trip_less_model_p50_ms" in st

    def test_a_late_answer_is_dropped_and_counted(self, port):
        """An answer that arrives after its frame timed out (the edge result already went out) is dropped and
        counted as late; a second answer to an answered frame counts as a duplicate; neither emits anything."""
        srv = FakeServer(port)
        e = Edge(port, timeout_ms=100)
        try:
            e.wait_server()
            e.send(1, [])
            _, seq, _, _ = srv.frames.get(timeout=HANG_S)
            (m,) = e.take(1)  # the server holds its answer until the edge result is out
            assert m.frame_seq == 1 and m.offload.timed_out and m.offload.answered_by == "edge"
            srv.answer(seq, [0.99])
            e.stage.timeout_ns = 20_000_000_000  # the next frame's answer comes in time
            e.send(2, [])
            srv.frames.get(timeout=HANG_S)
            srv.answer(2, [0.99])
            (m2,) = e.take(1)
            srv.answer(2, [0.99])  # again
            deadline = time.monotonic() + HANG_S
            while e.stage.counters.get("duplicate_answers", 0) < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            st = e.close()
            srv.close()
        assert m2.frame_seq == 2 and m2.offload.answered_by == "server"
        assert st["late_answers"] == 1 and st["duplicate_answers"] == 1 and st["timeouts"] == 1
        assert st["answered"] == 1 and st["emitted"] == 2

    def test_malformed_answers_are_counted_never_fatal(self, port):
        """Garbage, an envelope of another layout version, one with a bad crc, an InferenceResult record whose
        bytes do not parse, a record of another type and an answer for a seq never sent are each counted; the
        stage goes on and merges the real answer that follows."""
        srv = FakeServer(port)
        e = Edge(port, timeout_ms=20_000)
        try:
            e.wait_server()
            e.send(7, [0.1])
            srv.frames.get(timeout=HANG_S)
            good = pack(result(7, 0, [0.9]).SerializeToString(), seq=0, send_ns=0, type_id=RESULT_TYPE)
            other_version = bytearray(good)
            other_version[4] = 9
            bad_crc = bytearray(good)
            bad_crc[-1] ^= 0xFF
            for raw in (b"not an envelope", bytes(other_version), bytes(bad_crc),
                        pack(b"\x0a\xff\x01", seq=1, send_ns=0, type_id=RESULT_TYPE)):
                srv.put_raw(raw)
            srv.answer(7, [0.9], type_id=1)  # a stamped record, not a result
            srv.answer(99, [0.9])  # never asked
            srv.answer(7, [0.9, 0.8])
            (m,) = e.take(1)
        finally:
            st = e.close()
            srv.close()
        assert m.frame_seq == 7 and m.offload.answered_by == "server" and len(m.detections.boxes) == 2
        assert st["bad_answers"] == 5 and st["unknown_answers"] == 1 and st["answered"] == 1
        key = "edgepipe/server/answers"
        assert st[f"dropped[{key}: malformed]"] == 2 and st[f"dropped[{key}: wrong version]"] == 1
        assert st[f"dropped[{key}: not an InferenceResult]"] == 2
        assert HEADER.unpack_from(good, 0)[0] == MAGIC and unpack(good, max_bytes=1 << 20).kind == KIND_RECORD

    def test_an_unsure_result_whose_frame_the_tap_dropped_stays_the_edges(self, port):
        """No frame with the result's capture stamp in the tap: nothing is sent, the edge result goes out at
        once, counted as not forwarded (no frame); over max_pending frames at the server, likewise (busy)."""
        srv = FakeServer(port)
        e = Edge(port, timeout_ms=20_000, max_pending=1)
        try:
            e.wait_server()
            e.send(1, [], frame=False)
            (m,) = e.take(1)
            assert m.offload.not_forwarded == "no frame" and m.offload.answered_by == "edge"
            e.send(2, [])  # goes; the server does not answer yet
            srv.frames.get(timeout=HANG_S)
            e.send(3, [])  # one is away already
            (m3,) = e.take(1)
            assert m3.frame_seq == 3 and m3.offload.not_forwarded == "busy"
            srv.answer(2, [0.9])
            (m2,) = e.take(1)
        finally:
            st = e.close()
            srv.close()
        assert m2.frame_seq == 2 and m2.offload.answered_by == "server"
        assert st["not_forwarded[no frame]"] == 1 and st["not_forwarded[busy]"] == 1 and st["forwarded"] == 1

    def test_frames_still_away_at_a_stop_go_out_as_the_edges(self, port):
        """A stop while a frame waits for its (long) timeout: its edge result still goes out, timed out and
        counted, instead of being lost with the stage."""
        srv = FakeServer(port)
        e = Edge(port, timeout_ms=600_000)
        try:
            e.wait_server()
            e.send(5, [])
            srv.frames.get(timeout=HANG_S)
            e.stage.stop()
            (m,) = e.take(1)
        finally:
            st = e.close()
            srv.close()
        assert m.frame_seq == 5 and m.offload.timed_out and m.offload.answered_by == "edge"
        assert st["timeouts"] == 1 and st["forwarded"] == 1 and st["pending"] == 0


class TestReportParts:
    def test_a_merged_result_is_split_into_the_inference_parts_then_the_offload_stage(self):
        """A sink reading the offload stage's output names the parts after the inference stage that made the
        result (its dispatch, model, ...), then the link into the offload stage and the offload stage itself:
        the parts add up to the end-to-end latency, each on the edge's clock."""
        r = result(4, 1_000, [0.9])
        st = r.stamps
        st.publish_ns.extend([2_000, 3_000, 9_000, 9_500, 60_000])  # capture, dispatch, worker, detect, offload
        st.receive_ns.extend([2_500, 3_200, 9_200, 10_000])  # detect's dispatcher, worker, collector; offload
        r.inference_start_ns, r.inference_end_ns = 4_000, 8_000
        r.offload.answered_by = "server"
        topo = {"merged": ("offload", ["frames.tap", "detections"]), "detections": ("detect", ["frames"]),
                "frames": ("capture", [])}
        with Ring.create(capacity=1 << 16) as ring:
            w = ring.writer()
            w.write(r.SerializeToString(), RESULT_TYPE)
            rec = Inlet(ring.reader(), "merged", topology=topo).receive(timeout_s=HANG_S)
            w.close()
        parts = dict(rec.parts)
        assert [p for p, _ in rec.parts] == ["capture", "frames", "detect.dispatch", "detect.worker_queue",
                                             "detect.preprocess", "detect.inference", "detect.postprocess",
                                             "detect.return", "detections", "offload", "merged"]
        assert parts["detect.inference"] == 4_000 and parts["detect.return"] == 500
        assert parts["detections"] == 500 and parts["offload"] == 50_000
        assert sum(v for _, v in rec.parts) == rec.receive_ns - 1_000

    def test_the_split_holds_with_one_hop_fewer_in_the_inference_stamps(self):
        """With the inference stage's stamps one hop shorter (no collector hop: publish_ns = [input, worker
        ring, output]) the offload stage's appended stamps are still found at the end of each list."""
        r = result(4, 1_000, [0.9])
        r.stamps.publish_ns.extend([2_000, 3_000, 9_000, 60_000])
        r.stamps.receive_ns.extend([2_500, 3_200, 10_000])
        r.inference_start_ns, r.inference_end_ns = 4_000, 8_000
        r.offload.answered_by = "edge"
        topo = {"merged": ("offload", ["detections", "frames.tap"]), "detections": ("detect", ["frames"]),
                "frames": ("capture", [])}
        with Ring.create(capacity=1 << 16) as ring:
            w = ring.writer()
            w.write(r.SerializeToString(), RESULT_TYPE)
            rec = Inlet(ring.reader(), "merged", topology=topo).receive(timeout_s=HANG_S)
            w.close()
        parts = dict(rec.parts)
        assert parts["detect.postprocess"] == 1_000 and parts["detections"] == 1_000 and parts["offload"] == 50_000
        assert sum(v for _, v in rec.parts) == rec.receive_ns - 1_000
