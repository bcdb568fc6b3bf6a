"""The ``offload`` stage kind: edge-server tiering. The edge model's results pass through; a result the edge
is unsure of sends its frame to a server over zenoh, and the server's answer, tied to the frame's seq, takes
its place if it comes back in time. The edge never waits for the server beyond that: without a server every
unsure frame times out (counted) and its edge result goes out.

On the edge (beside its capture and inference stages; the frames come from the capture's tap)::

    [links.frames]
    tap = true                                  # the offload stage reads frames.tap (a drop-only copy)

    [stages.offload]
    kind = "offload"
    inputs = { frames = "frames.tap", results = "detections" }
    outputs = { output = "merged" }             # every edge result, or the server's answer in its place
    params = { pipeline = "edge", remote = "server", listen = ["tcp/198.18.0.1:7447"],
               min_score = 0.6, timeout_ms = 500 }

and on the server (existing kinds: a bridge in, the inference stage, a bridge out; two bridge stages since
one with both would close a cycle)::

    [stages.frames_in]
    kind = "bridge"
    outputs = { offload = "frames" }            # subscribes edgepipe/edge/offload
    params = { pipeline = "server", remote = "edge", connect = ["tcp/198.18.0.1:7447"] }
    [stages.detect]
    kind = "inference"
    inputs = { input = "frames" }
    outputs = { output = "answers" }
    params = { workers = 1, input_hw = [640, 1088] }   # the same model at a larger input (or model = "...")
    [stages.answers_out]
    kind = "bridge"
    inputs = { answers = "answers" }            # published as edgepipe/server/answers
    params = { pipeline = "server", connect = ["tcp/198.18.0.1:7447"] }

How one edge result is settled (a result is an ``edgepipe.v1.InferenceResult``; its ``offload`` field says
how, see :func:`unsure_reason` for the rule):

- **sure** (boxes whose mean score is at least ``min_score``): out at once, ``answered_by = "edge"``.
- **unsure** ("no box" or "low score"): its frame (the tapped frame with the same capture stamp) is published
  on ``edgepipe/<pipeline>/<link>`` best effort (zenoh drops it rather than wait), with the frame header's
  seq set to the result's ``frame_seq``, so the server's InferenceStage answers with that ``frame_seq``.
  Results behind it are not held up: merged results leave in the order they are settled, each with its
  ``frame_seq``.
- the **answer** (an InferenceResult on ``edgepipe/<remote>/<answers>``) with that ``frame_seq`` before the
  frame's capture stamp + ``timeout_ms``: the server's boxes and model id go out with the edge result's
  stamps (one clock), the round trip and the server's model time in ``offload``; counted ``answered``.
- **no answer in time**: the edge result goes out, ``offload.timed_out``; counted ``timeouts`` (so do the
  frames still away when the stage is stopped). After the results end, the stage waits for the answers
  still due, at most ``timeout_ms``: keep that under the pipeline's ``drain_timeout_s``. An answer
  that comes later is dropped and counted (``late_answers``); one for a seq never sent, ``unknown_answers``;
  a sample that is not an envelope, or not an InferenceResult, is counted (``dropped[<key>: <reason>]``,
  ``bad_answers``) and logged, never raised.
- an unsure result whose frame is not in the tap (it dropped it) or that finds ``max_pending`` frames away
  already goes out as the edge's (``not_forwarded[no frame]``, ``not_forwarded[busy]``).

>>> r = pb.InferenceResult(frame_seq=3)
>>> unsure_reason(r, 0.6)
'no box'
>>> _ = r.detections.boxes.add(score=0.9), r.detections.boxes.add(score=0.2)
>>> unsure_reason(r, 0.6), unsure_reason(r, 0.5)
('low score', '')
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from edgepipe.bridge.session import Checker, Session, make_config
from edgepipe.bridge.wire import KIND_END, KIND_RECORD, pack
from edgepipe.clock import now_ns
from edgepipe.control import messages as pb
from edgepipe.errors import ConfigError
from edgepipe.frames import HDR_SIZE, MAGIC, REC_TYPE
from edgepipe.pipeline.api import EndOfStream, PipelineStage

__all__ = ["OffloadStage", "unsure_reason"]

RESULT_TYPE = 22  # edgepipe.stages.inference.RESULT_TYPE_ID: a serialized InferenceResult record
_SEQ_AT, _CAP_AT = 24, 32  # struct ep_frame_hdr: seq (u64) and capture_ns (i64) offsets (edgepipe._image)
_U64, _I64 = struct.Struct("<Q"), struct.Struct("<q")
_RTT_WINDOW = 4096  # round trips kept for the percentiles
_SETTLED = 4096  # seqs remembered after they are settled (to tell a late answer from an unknown one)
_IDLE_S = 0.01  # nothing away at the server: wait this long for a result (it wakes the wait at once)
_AWAY_S = 0.002  # frames away: look at the answers and the deadlines this often
_INBOX = 1024  # samples from the answers key waiting for the loop; more are dropped and counted (a flood)
_KEY_CHUNK_BAD = set("*$?#/ ")


def _chunk(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or set(value) & _KEY_CHUNK_BAD or value.startswith("_"):
        raise ConfigError(f"offload {what} {value!r} cannot be a zenoh key chunk (no '*$?#/', space, or leading '_')")
    return value


def unsure_reason(result, min_score: float, empty_is_unsure: bool = True) -> str:
    """Why the edge is unsure of ``result`` (an InferenceResult): ``"no box"`` (none found, when
    ``empty_is_unsure``), ``"low score"`` (the boxes' mean score below ``min_score``), or ``""`` (sure)."""
    boxes = result.detections.boxes
    if not boxes:
        return "no box" if empty_is_unsure else ""
    return "low score" if sum(b.score for b in boxes) / len(boxes) < min_score else ""


def _mean_score(result) -> float:
    boxes = result.detections.boxes
    return sum(b.score for b in boxes) / len(boxes) if boxes else 0.0


@dataclass
class _Pending:
    result: Any  # the edge's InferenceResult
    receive_ns: int  # when this stage took it
    sent_ns: int
    deadline_ns: int
    reason: str


class OffloadStage(PipelineStage):
    """Send the frames the edge model is unsure of to a server over zenoh; merge its answers, by frame seq,
    into the edge's results, or time them out (edgepipe.bridge.offload).

    Args:
        pipeline: this end's name in the keys: frames go to ``edgepipe/<pipeline>/<link>``.
        remote: the server pipeline's name: answers come from ``edgepipe/<remote>/<answers>``.
        link: the key chunk the frames are published under (the server's bridge output port).
        answers: the server's link of InferenceResult records (its bridge input), subscribed.
        min_score: an edge result whose boxes' mean score is below this is unsure.
        empty_is_unsure: an edge result with no box is unsure.
        timeout_ms: an answer must arrive within this long of its frame's capture stamp; after that the edge
            result goes out (``timeouts``) and a later answer is dropped (``late_answers``).
        max_pending: frames at the server at once; an unsure result beyond that stays the edge's.
        frame_buffer: tapped frames kept while their results are awaited (the oldest goes first).
        listen: zenoh endpoints to listen on, e.g. ``["tcp/198.18.0.1:7447"]``.
        connect: zenoh endpoints to connect to (retried until the other end is up).
        multicast: also scout for peers by UDP multicast.
        lease_ms: a silent server is gone after this long (``server_alive`` in the stats; ``server_seen``: ever).
        max_bytes: the largest answer taken from the wire; bigger ones are counted (``oversize``) and dropped.
        tls: zenoh TLS settings, as for the ``bridge`` kind.

    Inputs:
        frames: frame records (the capture's ``frames.tap``); matched to results by capture stamp.
        results: the edge inference stage's InferenceResult records.

    Outputs:
        output: one InferenceResult per edge result (the server's answer in its place when one came in
            time), with ``offload`` saying which.
    """

    kind = "offload"

    def __init__(self, name: str | None = None, *, pipeline: str = "edge", remote: str = "server",
                 link: str = "offload", answers: str = "answers", min_score: float = 0.6,
                 empty_is_unsure: bool = True, timeout_ms: float = 500.0, max_pending: int = 4,
                 frame_buffer: int = 16, listen: list[str] | None = None, connect: list[str] | None = None,
                 multicast: bool = False, lease_ms: int = 1000, max_bytes: int = 1 << 20,
                 tls: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.pipeline, self.remote = _chunk("pipeline", pipeline), _chunk("remote", remote)
        self.link, self.answers = _chunk("link", link), _chunk("answers", answers)
        for what, v, ok in (("min_score", min_score, isinstance(min_score, (int, float)) and 0 <= min_score <= 1),
                            ("timeout_ms", timeout_ms, isinstance(timeout_ms, (int, float)) and timeout_ms > 0),
                            ("max_pending", max_pending, isinstance(max_pending, int) and max_pending >= 1),
                            ("frame_buffer", frame_buffer, isinstance(frame_buffer, int) and frame_buffer >= 1),
                            ("max_bytes", max_bytes, isinstance(max_bytes, int) and max_bytes > 0)):
            if isinstance(v, bool) or not ok:
                raise ConfigError(f"offload stage {name!r}: {what} out of range: {v!r}")
        self.min_score, self.empty_is_unsure = float(min_score), bool(empty_is_unsure)
        self.timeout_ns = int(timeout_ms * 1e6)
        self.max_pending, self.frame_buffer, self.max_bytes = max_pending, frame_buffer, max_bytes
        self.config = {"listen": list(listen or []), "connect": list(connect or []), "multicast": multicast,
                       "lease_ms": lease_ms, "tls": dict(tls or {})}
        make_config(**self.config)  # every mistake before the stage starts
        self.frames: OrderedDict[int, bytes] = OrderedDict()  # capture_ns -> frame record
        self.pending: dict[int, _Pending] = {}  # frame_seq -> what waits for the server
        self.settled: OrderedDict[int, str] = OrderedDict()  # frame_seq -> "answered" | "timed out"
        self.rtt_ns: deque[int] = deque(maxlen=_RTT_WINDOW)
        self.transport_ns: deque[int] = deque(maxlen=_RTT_WINDOW)  # round trip less the server's model time
        self._inbox: deque[tuple[int, bytes]] = deque()  # (arrival ns, sample bytes), from zenoh's threads
        self._wake = threading.Event()
        self.session: Session | None = None
        self.checker = Checker(f"{name} <- {self.answer_key}", max_bytes)
        self._pub = None
        self._sub = None
        self._sent = 0
        self.server_seen = False  # a liveliness token of the remote pipeline was seen (any time)
        self.inbox_overflow = 0

    @property
    def frame_key(self) -> str:
        return f"edgepipe/{self.pipeline}/{self.link}"

    @property
    def answer_key(self) -> str:
        return f"edgepipe/{self.remote}/{self.answers}"

    # -- lifecycle -----------------------------------------------------------------------------------------
    def open(self) -> None:
        for d, ports in (("inputs", ("frames", "results")), ("outputs", ("output",))):
            have = self.inputs if d == "inputs" else self.outputs
            for p in ports:
                if p not in have:
                    raise ConfigError(f"offload stage {self.name!r} needs {d}.{p} (it has {sorted(have)})")
        self.session = Session(self.pipeline, self.name, make_config(**self.config), on_remote=self._remote)
        self._pub = self.session.publisher(self.frame_key, lossless=False)  # best effort + drop: never waits
        self._sub = self.session.subscriber(self.answer_key, self._on_answer)

    def close(self) -> None:
        if self._sub is not None:
            try:
                self._sub.undeclare()
            except Exception:  # noqa: BLE001 - the session may be closing already
                pass
            self._sub = None
        if self.session is not None:
            self.session.close()
            self.session = None

    # -- zenoh's threads -----------------------------------------------------------------------------------
    def _remote(self, key: str, alive: bool) -> None:
        if alive and key.startswith(f"edgepipe/{self.remote}/"):
            self.server_seen = True

    def _on_answer(self, sample) -> None:
        if len(self._inbox) >= _INBOX:
            self.inbox_overflow += 1  # only this (zenoh's) thread writes it
            return
        self._inbox.append((now_ns(), sample.payload.to_bytes()))
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------------------------
    def loop(self) -> None:
        frames, results = self.inputs["frames"], self.inputs["results"]
        frames_open = results_open = True
        while not self.stopping:
            if frames_open:
                frames_open = self._take_frames(frames)
            rec = None
            if results_open:
                try:
                    rec = results.receive(timeout_s=0 if self._inbox or self.pending else _IDLE_S)
                except EndOfStream:
                    results_open = False
            if rec is not None:
                if frames_open:
                    frames_open = self._take_frames(frames)  # a frame is in the tap before its result exists
                self.on_result(rec)
                results.release()
            self._take_answers()
            self.expire(now_ns())
            if not results_open:
                if not self.pending:
                    return
                self._wake.wait(_AWAY_S)  # the last answers, until their deadlines
                self._wake.clear()
            elif rec is None and self.pending and not self._inbox:
                self._wake.wait(_AWAY_S)
                self._wake.clear()
        # stopped (the drain took too long): what still waits for the server goes out as the edge's
        self.expire(max((p.deadline_ns for p in self.pending.values()), default=0))

    def _take_frames(self, frames) -> bool:
        """Every frame queued in the tap into the buffer; False once the tap has ended."""
        while True:
            try:
                data = frames.receive_raw(0)
            except EndOfStream:
                return False
            if data is None:
                return True
            if frames.end.last_type != REC_TYPE or len(data) < HDR_SIZE or \
                    int.from_bytes(data[:4], "little") != MAGIC:
                self.count("not a frame")
                continue
            (cap,) = _I64.unpack_from(data, _CAP_AT)
            self.frames[cap] = data
            if len(self.frames) > self.frame_buffer:
                self.frames.popitem(last=False)

    def on_result(self, rec) -> None:
        """Settle one edge result: out at once if sure, else its frame to the server (or out, if it cannot go)."""
        m = rec.message
        if not isinstance(m, pb.InferenceResult):
            self.count("not a result")
            return
        self.count("results")
        reason = unsure_reason(m, self.min_score, self.empty_is_unsure)
        if not reason:
            self.count("sure")
            self._out(m, rec.receive_ns, pb.OffloadInfo(answered_by="edge"))
            return
        self.count("unsure")
        frame = self.frames.pop(m.stamps.capture_ns, None)
        t = now_ns()
        deadline = m.stamps.capture_ns + self.timeout_ns
        why = ("no frame" if frame is None else "busy" if len(self.pending) >= self.max_pending
               else "past timeout" if t >= deadline else "")
        if why:
            self.count(f"not_forwarded[{why}]")
            self._out(m, rec.receive_ns, pb.OffloadInfo(unsure=reason, answered_by="edge", not_forwarded=why))
            return
        body = bytearray(frame)
        _U64.pack_into(body, _SEQ_AT, m.frame_seq)  # the server's InferenceStage answers with this frame_seq
        self._pub.put(pack(body, seq=self._sent, send_ns=t, type_id=REC_TYPE))
        self._sent += 1
        self.pending[m.frame_seq] = _Pending(m, rec.receive_ns, t, deadline, reason)
        self.count("forwarded")

    def _take_answers(self) -> None:
        while self._inbox:
            t, data = self._inbox.popleft()
            self.on_answer(data, t)

    def on_answer(self, data: bytes, arrived_ns: int) -> None:
        """One sample from the answers key: merged if it answers a pending frame, else counted."""
        env = self.checker.check(data)
        if env is None:  # not an envelope, another layout version, oversize: counted by the checker too
            self.count("bad_answers")
            return
        if env.kind == KIND_END:  # the server's answers link ended in order: say we have it
            if self.session is not None:
                self.session.z.put(self.answer_key + "/_ack", env.seq.to_bytes(8, "little"))
            return
        if env.kind != KIND_RECORD:
            return
        if env.type_id != RESULT_TYPE:
            self._bad(f"a record of type {env.type_id}, not an InferenceResult ({RESULT_TYPE})")
            return
        try:
            a = pb.InferenceResult.FromString(bytes(env.body))
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends: counted, never raised
            self._bad(f"not an InferenceResult: {e}")
            return
        self.checker.count(env)
        p = self.pending.pop(a.frame_seq, None)
        if p is None:
            was = self.settled.get(a.frame_seq)
            self.count("late_answers" if was == "timed out" else "duplicate_answers" if was else "unknown_answers")
            return
        self._settle(a.frame_seq, "answered")
        rtt = arrived_ns - p.sent_ns
        server_ns = max(0, a.inference_end_ns - a.inference_start_ns)
        self.rtt_ns.append(rtt)
        self.transport_ns.append(rtt - server_ns)
        self.count("answered")
        e = p.result
        merged = pb.InferenceResult()
        merged.CopyFrom(e)
        merged.model_id = a.model_id
        merged.detections.CopyFrom(a.detections)
        info = pb.OffloadInfo(unsure=p.reason, answered_by="server", round_trip_ns=rtt,
                              server_inference_ns=server_ns,
                              edge_model_id=e.model_id, edge_boxes=len(e.detections.boxes),
                              edge_mean_score=_mean_score(e))
        self._out(merged, p.receive_ns, info)

    def _bad(self, why: str) -> None:
        self.count("bad_answers")
        self.checker.drop("not an InferenceResult", why)  # counted by reason and logged (a few, then 1 in 1000)

    def expire(self, t: int) -> None:
        """The edge result of every frame whose answer is past its deadline at ``t``."""
        for seq in [s for s, p in self.pending.items() if t >= p.deadline_ns]:
            p = self.pending.pop(seq)
            self._settle(seq, "timed out")
            self.count("timeouts")
            self._out(p.result, p.receive_ns, pb.OffloadInfo(unsure=p.reason, answered_by="edge", timed_out=True))

    def _settle(self, seq: int, how: str) -> None:
        self.settled[seq] = how
        if len(self.settled) > _SETTLED:
            self.settled.popitem(last=False)

    def _out(self, m, receive_ns: int, info) -> None:
        """Publish ``m`` as a built-in result record: its stamps plus this stage's receive and publish."""
        m.offload.CopyFrom(info)
        m.stamps.receive_ns.append(receive_ns)
        m.stamps.publish_ns.append(now_ns())
        self.outputs["output"].write_raw(m.SerializeToString(), RESULT_TYPE)
        self.count("emitted")

    # -- stats ---------------------------------------------------------------------------------------------
    def extra_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(super().extra_stats())
        out["pending"] = len(self.pending)
        out["answers_received"] = self.checker.received
        if self.checker.lost:
            out["answers_lost_on_wire"] = self.checker.lost
        if self.inbox_overflow:
            out["dropped[answers: inbox full]"] = self.inbox_overflow
        for what, d in (("round_trip", self.rtt_ns), ("round_trip_less_model", self.transport_ns)):
            r = sorted(d)
            if r:  # less_model: the wire both ways, both bridges, the server's queues and pre/post-processing
                out[f"{what}_p50_ms"] = round(r[len(r) // 2] / 1e6, 3)
                out[f"{what}_p99_ms"] = round(r[min(len(r) - 1, int(len(r) * 0.99))] / 1e6, 3)
        for reason, n in self.checker.dropped.items():
            out[f"dropped[{self.answer_key}: {reason}]"] = n
        out["server_seen"] = self.server_seen
        if self.session is not None:
            out["server_alive"] = any(k.startswith(f"edgepipe/{self.remote}/") for k in self.session.remotes_alive())
        return out
