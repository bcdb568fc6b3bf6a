"""Comparing two recordings topic by topic, for regression runs: ``edgepipe replay --compare golden.mcap``.

Messages of a topic are matched by their source sequence number (``Stamps.seq``, an InferenceResult's
``frame_seq``); stamps never count, since a replay runs at another time. What must agree:

- ``edgepipe.v1.InferenceResult``: the same number of boxes, each box (in score order) within
  ``tolerance_px`` on every corner, the same class, the score within ``tolerance_score``;
- ``edgepipe.v1.ImuSample``: gyro, accel, mag and attitude within ``tolerance`` (absolute);
- ``edgepipe.record.v1.RawRecord``: the same type id and the same payload (for a stamped record, the payload
  inside the stamps);
- anything else: the same bytes once the stamps are cleared.

A sequence number in one recording and not in the other is no difference of content: a result that is
missing was never made (a pipeline that dropped the frame under load, a stage that lost it), so there is
nothing to judge. Inside the range both recordings cover (a replay started or stopped at another moment is
not a regression), such numbers are listed apart, in :attr:`Comparison.missing` (the golden run has it,
this run does not) and :attr:`Comparison.unmatched` (this run has it, the golden run does not), for the
caller to set against what the pipelines counted as dropped (``edgepipe replay --compare`` does).

>>> a = Difference("/dets", 7, "2 boxes vs 3")
>>> str(a)
'/dets seq 7: 2 boxes vs 3'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgepipe.pipeline.wire import unpack_record
from edgepipe.record.reader import iter_recording

__all__ = ["Comparison", "Difference", "compare_recordings"]


@dataclass(frozen=True)
class Difference:
    topic: str
    seq: int
    what: str

    def __str__(self) -> str:
        return f"{self.topic} seq {self.seq}: {self.what}"


@dataclass
class Comparison:
    """What :func:`compare_recordings` found: the differences between messages both recordings have, how many
    pairs were compared, and per topic the sequence numbers (inside the range both cover) that only the
    golden run has (``missing``) or only this run has (``unmatched``)."""

    differences: list[Difference] = field(default_factory=list)
    compared: int = 0
    missing: dict[str, list[int]] = field(default_factory=dict)
    unmatched: dict[str, list[int]] = field(default_factory=dict)

    @property
    def missing_count(self) -> int:
        return sum(len(v) for v in self.missing.values())

    @property
    def unmatched_count(self) -> int:
        return sum(len(v) for v in self.unmatched.values())


def _seq(schema: str, m: Any) -> int:
    if schema == "edgepipe.v1.InferenceResult":
        return m.frame_seq
    st = getattr(m, "stamps", None)
    return st.seq if st is not None else 0


def _load(path, topics) -> dict[str, dict[int, tuple[str, Any]]]:
    out: dict[str, dict[int, tuple[str, Any]]] = {}
    for topic, schema, _msg, m in iter_recording(path, topics=topics):
        out.setdefault(topic, {})[_seq(schema, m)] = (schema, m)
    return out


def _diff(schema: str, a: Any, b: Any, tol: float, tol_px: float, tol_score: float) -> str | None:
    if schema == "edgepipe.v1.InferenceResult":
        ba = sorted(a.detections.boxes, key=lambda x: -x.score)
        bb = sorted(b.detections.boxes, key=lambda x: -x.score)
        if len(ba) != len(bb):
            return f"{len(ba)} boxes vs {len(bb)} in the golden run"
        for i, (x, y) in enumerate(zip(ba, bb)):
            d = max(abs(x.x_min - y.x_min), abs(x.y_min - y.y_min), abs(x.x_max - y.x_max), abs(x.y_max - y.y_max))
            if d > tol_px:
                return f"box {i} moved {d:.1f} px (tolerance {tol_px})"
            if x.class_id != y.class_id:
                return f"box {i} class {x.class_id} vs {y.class_id}"
            if abs(x.score - y.score) > tol_score:
                return f"box {i} score {x.score:.3f} vs {y.score:.3f}"
        return None
    if schema == "edgepipe.v1.ImuSample":
        for f in ("gyro", "accel", "mag", "orientation"):
            va, vb = getattr(a, f), getattr(b, f)
            for k in ("w", "x", "y", "z"):
                if hasattr(va, k) and abs(getattr(va, k) - getattr(vb, k)) > tol:
                    return f"{f}.{k} {getattr(va, k):.6g} vs {getattr(vb, k):.6g}"
        return None
    if schema == "edgepipe.record.v1.RawRecord":
        if a.type_id != b.type_id:
            return f"type id {a.type_id} vs {b.type_id}"
        ra, rb = unpack_record(a.payload), unpack_record(b.payload)
        pa = ra.payload if ra is not None else a.payload
        pb_ = rb.payload if rb is not None else b.payload
        return None if pa == pb_ else f"payload differs ({len(pa)} vs {len(pb_)} bytes)"
    a2, b2 = type(a)(), type(b)()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    for m in (a2, b2):
        if hasattr(m, "stamps"):
            m.ClearField("stamps")
    return None if a2.SerializeToString(deterministic=True) == b2.SerializeToString(deterministic=True) \
        else "message differs"


def compare_recordings(path, golden, *, topics: list[str] | None = None, tolerance: float = 1e-6,
                       tolerance_px: float = 2.0, tolerance_score: float = 0.05) -> Comparison:
    """Compare the recording at ``path`` with ``golden`` on ``topics`` (default: both recordings' topics).
    A topic with no message on one side is a difference (nothing of it could be compared).

    Raises:
        RecordingNotFoundError, RecordingFormatError, RecordingTruncatedError, UnknownSchemaError.
    """
    new, old = _load(path, topics), _load(golden, topics)
    out = Comparison()
    for topic in sorted(set(old) | set(new)) if topics is None else topics:
        a, b = new.get(topic, {}), old.get(topic, {})
        if not a or not b:
            out.differences.append(Difference(topic, 0, f"{len(a)} messages vs {len(b)} in the golden run"))
            continue
        lo, hi = max(min(a), min(b)), min(max(a), max(b))
        for s in sorted(set(a) | set(b)):
            if not lo <= s <= hi:
                continue
            if s not in a:
                out.missing.setdefault(topic, []).append(s)
                continue
            if s not in b:
                out.unmatched.setdefault(topic, []).append(s)
                continue
            out.compared += 1
            d = _diff(a[s][0], a[s][1], b[s][1], tolerance, tolerance_px, tolerance_score)
            if d is not None:
                out.differences.append(Difference(topic, s, d))
    return out
