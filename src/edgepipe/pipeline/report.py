"""Latency budgets: HDR histograms per part and end to end, the budget table, the PNG and the JSON report.

A :class:`LatencyBook` lives in every sink. For each stamped record (edgepipe.pipeline.api.Record) it records
the end-to-end latency and each part of it: a source stage's capture-to-publish time, the time queued in
each ring (named after the link) and the time inside each stage (named after the stage), in HDR histograms
(the ``hdrhistogram`` package) of nanoseconds with 3 significant digits, and counts values over budget.

The supervisor merges the books of all sinks (they travel as ``edgepipe.v1.LatencyHistogram`` buckets in
Stats messages) and keeps a time series of per-part means for the stacked plot. :func:`build_report` turns
that into a JSON-ready dict, with one end-to-end row per path (never one mixing paths) and the sources' health
(:func:`health`: an IMU loop's achieved rate and missed deadlines, a capture's achieved against configured
fps, drops, and warnings on shortfalls), what crossed to another machine (``remote``: a bridge's wire time
within its clock bound and its share of each path, or why it is unknown; an offload stage's answered, timed
out and late counts and round trip); :func:`render_table` prints it with ``rich`` (the ok/OVER rule
under the table), :func:`render_png` draws :func:`figure` with matplotlib (Agg), and ``edgepipe report
FILE.json`` does both again later.

>>> from edgepipe.pipeline.wire import Hop, Record
>>> book = LatencyBook(["cam", "det"], ["frames"], budgets_ns={"end_to_end": 5_000_000})
>>> rec = Record(b"", seq=0, capture_ns=0, hops=[Hop(0, 0xFFFF, 0, 1_000_000)], link=0,
...              receive_ns=1_500_000)
>>> book.record(rec)
>>> {k: h.get_max_value() for k, h in sorted(book.hists.items())}
{'cam': 1000447, 'end_to_end': 1500159, 'frames': 500223}
>>> book.violations
{}
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from typing import Any, Iterable

from hdrh.histogram import HdrHistogram

from edgepipe._extras import pyplot
from edgepipe.errors import MissingExtraError

__all__ = ["LatencyBook", "build_report", "load_report", "render_png", "render_table", "write_report"]

_LOW_NS, _HIGH_NS, _DIGITS = 1, 3_600_000_000_000, 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
E2E = "end_to_end"
# counters of built-in stages that count records not delivered, with the reason in the name
# (capture: dropped_full, dropped_shape; inference: dropped_deadline, results_dropped, frames_lost, bad_frames)
_DROP_KEY = re.compile(r"^(dropped(_\w+)?|\w+_dropped|frames_lost|bad_frames)$")
_NO_LINK = 0xFFFF
# the rule the table's ok/OVER column applies (build_report's "within_budget")
OK_RULE = "ok: p99 <= budget, OVER: p99 > budget; 'over' counts the records above the budget"
IMU_MISSED_MAX_PCT = 1.0  # an IMU loop missing more of its deadlines than this gets a warning
CAPTURE_MIN_FPS_RATIO = 0.9  # a capture below this share of its configured fps gets a warning


def budget_for(part: str, budgets: dict[str, int]) -> int | None:
    """The budget of a part: its own, or for ``end_to_end[<sink>]`` the end-to-end one."""
    b = budgets.get(part)
    if b is None and part.startswith(E2E + "["):
        b = budgets.get(E2E)
    return b


def _buckets(h: HdrHistogram) -> tuple[list[int], list[int]]:
    """The non-empty buckets of ``h``: exclusive upper bounds and counts. Vectorised over the counts array
    (hdrh's own iterator walks it in Python: tens of ms per histogram, with the stage's lock held)."""
    import numpy as np

    counts = np.ctypeslib.as_array(h.counts)[: h.counts_len]
    idx = np.flatnonzero(counts).astype(np.int64)
    bucket = (idx >> h.sub_bucket_half_count_magnitude) - 1
    sub = (idx & (h.sub_bucket_half_count - 1)) + h.sub_bucket_half_count
    first = bucket < 0
    sub[first] -= h.sub_bucket_half_count
    bucket[first] = 0
    low = sub << (bucket + h.unit_magnitude)
    upper = low + (np.int64(1) << (bucket + h.unit_magnitude))
    return upper.tolist(), counts[idx].astype(np.int64).tolist()


def _add_buckets(h: HdrHistogram, bounds, counts) -> None:
    """Record ``counts[i]`` values of ``bounds[i] - 1`` into ``h`` at once (what record_value does per value,
    vectorised: a merge of thousands of buckets takes well under a millisecond instead of ~10 ms)."""
    import numpy as np

    n = len(bounds)
    c = np.asarray(counts[:n], dtype=np.int64)
    keep = c > 0
    if not keep.any():
        return
    v = np.clip(np.asarray(bounds, dtype=np.int64)[keep] - 1, _LOW_NS, _HIGH_NS)
    c = c[keep]
    # _get_bucket_index: bit length of (v | sub_bucket_mask), exact through frexp below 2**53
    bits = np.frexp((v | h.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
    bucket = bits - h.unit_magnitude - (h.sub_bucket_half_count_magnitude + 1)
    sub = v >> (bucket + h.unit_magnitude)
    idx = ((bucket + 1) << h.sub_bucket_half_count_magnitude) + (sub - h.sub_bucket_half_count)
    arr = np.ctypeslib.as_array(h.counts)
    np.add.at(arr, idx, c.astype(arr.dtype))
    h.total_count += int(c.sum())
    h.min_value = min(h.min_value, int(v.min()))
    h.max_value = max(h.max_value, int(v.max()))


def percentiles(h: HdrHistogram, qs) -> list[int]:
    """Values at percentiles ``qs`` (as ``get_value_at_percentile`` gives them), from one cumulative sum over
    the counts instead of a Python walk per percentile."""
    import numpy as np

    total = h.get_total_count()
    if not total:
        return [0 for _ in qs]
    counts = np.ctypeslib.as_array(h.counts)[: h.counts_len]
    cum = np.cumsum(counts)
    out = []
    for q in qs:
        target = max(1, int(min(q, 100.0) / 100.0 * total + 0.5))
        i = int(np.searchsorted(cum, target))
        out.append(h.get_highest_equivalent_value(h.get_value_from_index(i)) if q else
                   h.get_lowest_equivalent_value(h.get_value_from_index(i)))
    return out


def _hist() -> HdrHistogram:
    return HdrHistogram(_LOW_NS, _HIGH_NS, _DIGITS)


class LatencyBook:
    """Histograms of one or more latency parts, with budgets and violation counts.

    Args:
        stage_names: stage names by index (the index stamped into each hop).
        link_names: link names by index.
        budgets_ns: part name -> budget in ns (``"end_to_end"``, a stage name, or a link name).
    """

    def __init__(self, stage_names: list[str], link_names: list[str],
                 budgets_ns: dict[str, int] | None = None, sink: str | None = None) -> None:
        self.sink = sink  # when set, end to end is also kept as "end_to_end[<sink>]" (one per path)
        self.stage_names = list(stage_names)
        self.link_names = list(link_names)
        self.budgets_ns = dict(budgets_ns or {})
        self.hists: dict[str, HdrHistogram] = {}
        self.sums: dict[str, int] = {}
        self.violations: dict[str, int] = {}
        self.order: list[str] = []  # parts in the order records cross them
        self._lock = threading.Lock()  # a stage records while its control thread snapshots

    def _add(self, part: str, v: int) -> None:
        h = self.hists.get(part)
        if h is None:
            h = self.hists[part] = _hist()
            self.sums[part] = 0
            self.order.append(part)
        v = min(max(v, _LOW_NS), _HIGH_NS)
        h.record_value(v)
        self.sums[part] += v
        b = budget_for(part, self.budgets_ns)
        if b is not None and v > b:
            self.violations[part] = self.violations.get(part, 0) + 1

    def _stage(self, i: int) -> str:
        return self.stage_names[i] if i < len(self.stage_names) else f"stage#{i}"

    def _link(self, i: int) -> str:
        return self.link_names[i] if i < len(self.link_names) else f"link#{i}"

    def record(self, rec) -> None:
        """Split one received record's latency into its parts and record each."""
        with self._lock:
            self._record(rec)

    def _record(self, rec) -> None:
        if rec.parts is not None:  # a built-in stage's record, already split into named parts
            for name, v in rec.parts:
                self._add(name, v)
            self._e2e(rec.receive_ns - rec.capture_ns)
            return
        prev_pub = None
        for h in rec.hops:
            if h.link != _NO_LINK and prev_pub is not None:
                self._add(self._link(h.link), h.receive_ns - prev_pub)
            self._add(self._stage(h.stage), h.publish_ns - h.receive_ns)
            prev_pub = h.publish_ns
        if prev_pub is not None and rec.link != _NO_LINK:
            self._add(self._link(rec.link), rec.receive_ns - prev_pub)
        self._e2e(rec.receive_ns - rec.capture_ns)

    def _e2e(self, v: int) -> None:
        if self.sink is not None:
            self._add(f"{E2E}[{self.sink}]", v)
        self._add(E2E, v)

    def record_value(self, part: str, value_ns: int) -> None:
        """Record one measured value of ``part`` (for stages that measure something the stamps miss)."""
        with self._lock:
            self._add(part, value_ns)

    # -- transport (edgepipe.v1.LatencyHistogram) -----------------------------------------------------
    def to_proto(self) -> list:
        """The histograms as ``edgepipe.v1.LatencyHistogram`` messages (one bucket per recorded HDR value)."""
        from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb

        out = []
        with self._lock:
            return self._to_proto(pb, out)

    def _to_proto(self, pb, out: list) -> list:
        for part in self.order:
            h = self.hists[part]
            m = pb.LatencyHistogram(name=part, min_ns=h.get_min_value() if h.get_total_count() else 0,
                                    max_ns=h.get_max_value(), sum_ns=self.sums[part],
                                    budget_violations=self.violations.get(part, 0))
            bounds, counts = _buckets(h)
            m.bounds_ns.extend(bounds)
            m.counts.extend(counts)
            m.counts.append(0)
            out.append(m)
        return out

    def merge_proto(self, msgs: Iterable) -> None:
        """Add the histograms of LatencyHistogram messages (from another book) to this one."""
        for m in msgs:
            h = self.hists.get(m.name)
            if h is None:
                h = self.hists[m.name] = _hist()
                self.sums[m.name] = 0
                self.order.append(m.name)
            _add_buckets(h, m.bounds_ns, m.counts)
            self.sums[m.name] += m.sum_ns
            if m.budget_violations:
                self.violations[m.name] = self.violations.get(m.name, 0) + m.budget_violations

    def totals(self) -> dict[str, tuple[int, int]]:
        """part -> (count, sum_ns), for per-interval means."""
        return {p: (self.hists[p].get_total_count(), self.sums[p]) for p in self.order}


# ---------------------------------------------------------------------------------------------------
# the report


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 4)


def build_report(book: LatencyBook, *, budgets_ns: dict[str, int] | None = None,
                 series: list[dict[str, Any]] | None = None, stages: dict[str, Any] | None = None,
                 links: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                 paths: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict: per part count, p50/p90/p99/p99.9/max/mean in ms, budget,
    violations and whether the part met its budget at p99; plus stage and link counters, the time series
    of per-part means, the parts of each path (by sink), the drops by stage and reason, and the encoded HDR
    histograms (so ``edgepipe report`` can redraw it).

    >>> r = build_report(LatencyBook(["a"], []))
    >>> r["parts"], r["ok"]
    ([], True)
    """
    budgets = dict(budgets_ns if budgets_ns is not None else book.budgets_ns)
    parts = []
    # with two paths or more, the plain end-to-end row would mix them (1 kHz IMU samples with 7 fps frames):
    # each path keeps its own row, "end_to_end[<sink>]", and the mixed one is left out
    per_path = [p for p in book.order if p.startswith(E2E + "[")]
    names = [p for p in book.order if not (p == E2E and len(per_path) > 1)]
    for name in sorted(names, key=lambda p: (p == E2E, p.startswith(E2E), book.order.index(p))):
        h = book.hists[name]
        n = h.get_total_count()
        row: dict[str, Any] = {"part": name, "count": n}
        pv = percentiles(h, (*PERCENTILES, 99.0))
        for p, v in zip(PERCENTILES, pv):
            row[f"p{p:g}_ms"] = _ms(v) if n else None
        row["max_ms"] = _ms(h.get_max_value()) if n else None
        row["mean_ms"] = _ms(book.sums[name] / n) if n else None
        b = budget_for(name, budgets)
        row["budget_ms"] = _ms(b)
        row["violations"] = book.violations.get(name, 0)
        row["within_budget"] = None if b is None or not n else pv[-1] <= b
        row["hdr"] = h.encode().decode() if n else ""
        parts.append(row)
    drops: dict[str, int] = {}
    for sname, st in (stages or {}).items():
        specific = any(k.startswith(("dropped_", "dropped[")) for k in st)
        for k, v in st.items():
            if not isinstance(v, int) or isinstance(v, bool) or not v:
                continue
            if k.startswith("dropped["):  # a Python stage's outlet: "dropped[<link>: <reason>]"
                drops[f"{sname}: {k[8:-1]}"] = v
            elif _DROP_KEY.match(k) and not (k == "dropped" and specific):  # a built-in stage's counters
                drops[f"{sname}: {k}"] = v
    health_rows = health(stages or {})
    warnings = [w for h in health_rows for w in h["warnings"]]
    return {
        "remote": _remote_parts(stages or {}, parts, paths or {}),
        "version": 1,
        "meta": dict(meta or {}),
        "parts": parts,
        "rule": OK_RULE,
        "health": health_rows,
        "warnings": warnings,
        "budgets_ms": {k: _ms(v) for k, v in budgets.items()},
        "drops": drops,
        "stages": dict(stages or {}),
        "links": dict(links or {}),
        "series": list(series or []),
        "paths": dict(paths or {}),
        "ok": all(r["within_budget"] is not False for r in parts),
        "health_ok": not warnings,
    }


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def health(stages: dict[str, Any]) -> list[dict[str, Any]]:
    """Did the sources keep their rate? One row per IMU loop (achieved vs configured rate, deadlines missed,
    from its ``ticks``/``missed`` counters) and per capture stage (achieved vs configured fps), with the
    stage's drops and the warnings of any shortfall: an IMU loop that missed more than
    ``IMU_MISSED_MAX_PCT`` % of its deadlines, a capture below ``CAPTURE_MIN_FPS_RATIO`` of its fps.

    >>> [(h["stage"], h["missed_pct"], h["ok"]) for h in health({"imu": {"kind": "imu", "rate_hz": 1000.0,
    ...     "achieved_rate_hz": 916.6, "ticks": 920, "missed": 80, "wait": "sleep"}})]
    [('imu', 8.0, False)]
    """
    out = []
    for name, st in stages.items():
        if not isinstance(st, dict):
            continue
        dropped = sum(v for k, v in st.items() if _DROP_KEY.match(k) and k != "dropped" and isinstance(v, int)
                      and not isinstance(v, bool)) or (_num(st.get("dropped")) or 0)
        if "ticks" in st and "achieved_rate_hz" in st:  # an IMU loop (edgepipe.stages.imu.ImuStage)
            target, achieved = _num(st.get("rate_hz")), _num(st.get("achieved_rate_hz"))
            paced = st.get("wait") != "device"  # a device-paced loop has no deadlines of its own
            missed = int(st.get("missed") or 0) if paced else None
            deadlines = int(st.get("ticks") or 0) + (missed or 0) if paced else None
            pct = 100.0 * missed / deadlines if paced and deadlines else None
            row = {"stage": name, "source": "imu", "unit": "Hz", "configured": target,
                   "achieved": None if achieved is None else round(achieved, 1),
                   "deadlines": deadlines, "missed": missed, "missed_pct": None if pct is None else round(pct, 2),
                   "dropped": int(dropped)}
            warn = []
            if pct is not None and pct > IMU_MISSED_MAX_PCT:
                warn.append(f"{name}: the IMU loop missed {missed} of {deadlines} deadlines ({pct:.1f} %, more "
                            f"than {IMU_MISSED_MAX_PCT:g} %): {_rate(achieved)} Hz achieved of {_rate(target)} Hz "
                            f"configured")
        elif st.get("kind") == "capture" or "fps_target" in st:  # edgepipe.stages.capture.CaptureStage
            target, achieved = _num(st.get("fps_target")), _num(st.get("fps"))
            row = {"stage": name, "source": "capture", "unit": "fps", "configured": target, "achieved": achieved,
                   "deadlines": None, "missed": _num(st.get("late")), "missed_pct": None, "dropped": int(dropped)}
            if row["missed"] is not None:
                row["missed"] = int(row["missed"])
            warn = []
            if target and achieved is not None and achieved < CAPTURE_MIN_FPS_RATIO * target:
                warn.append(f"{name}: capture ran at {achieved:.2f} fps, below {CAPTURE_MIN_FPS_RATIO:.0%} of "
                            f"its configured {target:g} fps")
        else:
            continue
        if dropped:
            warn.append(f"{name}: dropped {int(dropped)} record(s)")
        row["ok"] = not warn
        row["warnings"] = warn
        out.append(row)
    return out


def _remote_parts(stages: dict[str, Any], parts: list[dict[str, Any]], paths: dict[str, list[str]]) -> list[dict]:
    """What crossed to another machine, per stage: a bridge's wire (``wire_p50_us`` within ``wire_bound_us``
    of its clock estimate, as a share of the end-to-end p50 of each path through it; or why it is unknown)
    and an offload stage's settling of unsure results (answered, timed out, late, round trip)."""
    e2e = {r["part"][len(E2E) + 1:-1]: r.get("p50_ms") for r in parts if r["part"].startswith(E2E + "[")}
    out = []
    for name, st in stages.items():
        if "wire_p50_us" in st or isinstance(st.get("wire"), str):
            row: dict[str, Any] = {"stage": name, "what": "wire"}
            if "wire_p50_us" in st:
                row["p50_ms"], row["bound_ms"] = st["wire_p50_us"] / 1e3, st.get("wire_bound_us", 0) / 1e3
                row["share"] = {sink: row["p50_ms"] / p for sink, p in e2e.items()
                                if p and name in paths.get(sink, [])}
            else:
                row["unknown"] = st["wire"]
            out.append(row)
        if "forwarded" in st or "unsure" in st:
            out.append({"stage": name, "what": "offload",
                        **{k: st.get(k, 0) for k in ("results", "sure", "unsure", "forwarded", "answered", "timeouts",
                                                       "late_answers", "unknown_answers", "bad_answers")},
                        "not_forwarded": sum(v for k, v in st.items() if k.startswith("not_forwarded[")),
                        "round_trip_p50_ms": st.get("round_trip_p50_ms"),
                        "round_trip_p99_ms": st.get("round_trip_p99_ms"),
                        "round_trip_less_model_p50_ms": st.get("round_trip_less_model_p50_ms"),
                        "server_seen": st.get("server_seen")})
    return out


def _remote_line(r: dict[str, Any]) -> str:
    if r["what"] == "wire":
        if "unknown" in r:
            return f"wire ({r['stage']}): {r['unknown']}"
        shares = ", ".join(f"{100 * v:.1f} % of end_to_end[{k}] p50" for k, v in sorted(r["share"].items()))
        return (f"wire ({r['stage']}): p50 {_fmt(r['p50_ms'])} ms +- {_fmt(r['bound_ms'])} ms (clock bound)"
                + (f", {shares}" if shares else ""))
    rtt = ("" if r.get("round_trip_p50_ms") is None else
           f"; round trip p50 {_fmt(r['round_trip_p50_ms'])} ms, p99 {_fmt(r['round_trip_p99_ms'])} ms"
           + ("" if r.get("round_trip_less_model_p50_ms") is None else
              f" (p50 {_fmt(r['round_trip_less_model_p50_ms'])} ms less the server's model time)"))
    return (f"offload ({r['stage']}): {r['results']} results, {r['unsure']} unsure, {r['forwarded']} sent, "
            f"{r['answered']} answered by the server, {r['timeouts']} timed out, {r['late_answers']} late, "
            f"{r['not_forwarded']} not sent, {r['bad_answers'] + r['unknown_answers']} bad or unknown answers{rtt}")


def _rate(v: float | None) -> str:
    return "?" if v is None else f"{v:.1f}"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike, png: bool = True) -> dict[str, str]:
    """Write ``report.json`` (and ``report.png``) into ``out_dir``; returns their paths by kind.

    Without matplotlib (the ``report`` extra) the PNG is left out and ``"png_skipped"`` says why and what to
    install: a run's numbers never depend on the plotting library."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(os.fspath(out_dir), "report.json")}
    tmp = paths["json"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, paths["json"])
    if png:
        try:
            paths["png"] = render_png(report, os.path.join(os.fspath(out_dir), "report.png"))
        except MissingExtraError as e:
            paths["png_skipped"] = str(e)
    return paths


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a report JSON written by :func:`write_report` (a directory means its report.json)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "report.json")
    with open(p) as f:
        rep = json.load(f)
    if not isinstance(rep, dict) or "parts" not in rep:
        raise ValueError(f"{p} is not an edgepipe report (no 'parts')")
    return rep


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def render_table(report: dict[str, Any], console=None) -> None:
    """Print the budget table (p50/p90/p99/p99.9/max per part against its budget) with rich."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    t = Table(title="latency per part (ms, CLOCK_MONOTONIC_RAW)", title_justify="left")
    for col in ("part", "count", "p50", "p90", "p99", "p99.9", "max", "budget", "over", ""):
        t.add_column(col, justify="left" if col in ("part", "") else "right")
    for r in report["parts"]:
        ok = r["within_budget"]
        mark = "" if ok is None else ("[green]ok[/]" if ok else "[red]OVER[/]")
        t.add_row(escape(r["part"]), str(r["count"]), _fmt(r["p50_ms"]), _fmt(r["p90_ms"]), _fmt(r["p99_ms"]),
                  _fmt(r["p99.9_ms"]), _fmt(r["max_ms"]), _fmt(r["budget_ms"]), str(r["violations"]), mark)
    console.print(t)
    console.print(escape(report.get("rule", OK_RULE)), style="dim", soft_wrap=True)
    if report.get("health"):
        ht = Table(title="sources: rate and deadlines", title_justify="left")
        for col in ("stage", "configured", "achieved", "deadlines missed", "dropped", ""):
            ht.add_column(col, justify="left" if col in ("stage", "") else "right")
        for h in report["health"]:
            unit = h.get("unit", "")
            if h.get("missed_pct") is not None:
                missed = f"{h['missed']} of {h['deadlines']} ({h['missed_pct']:.1f} %)"
            elif h.get("missed") is not None:
                missed = f"{h['missed']} late"
            else:
                missed = "-"
            ht.add_row(escape(h["stage"]), "-" if h.get("configured") is None else f"{h['configured']:g} {unit}",
                       "-" if h.get("achieved") is None else f"{h['achieved']:g} {unit}", missed,
                       str(h.get("dropped", 0)), "[green]ok[/]" if h.get("ok") else "[red]SHORT[/]")
        console.print(ht)
    for w in report.get("warnings", []):
        console.print("[bold red]WARNING[/] " + escape(w))
    if report.get("drops"):
        console.print(escape("drops: " + ", ".join(f"{k} = {v}" for k, v in sorted(report["drops"].items()))))
    elif "health" in report:
        console.print("drops: none")
    for r in report.get("remote", []):
        console.print(escape(_remote_line(r)), soft_wrap=True)
    restarts = {k: v.get("restarts", 0) for k, v in report.get("stages", {}).items() if v.get("restarts")}
    if restarts:
        console.print("restarts: " + ", ".join(f"{k} = {v}" for k, v in sorted(restarts.items())))


def _colours(names: list[str]) -> dict[str, Any]:
    """A distinct colour per part: tab20, then tab20b and tab20c (60 colours) before any repeats."""
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors  # pairs of a hue: the strong ten first, then the light ten
    pool = [*tab20[0::2], *tab20[1::2], *(c for m in ("tab20b", "tab20c") for c in matplotlib.colormaps[m].colors)]
    return {n: pool[i % len(pool)] for i, n in enumerate(names)}


def figure(report: dict[str, Any]):
    """The report's matplotlib figure: percentile curves per part with a dashed budget line per part that
    has one (left), the stacked per-part means over time per path (right); one legend for all of it, outside
    every plot, a colour per part shared by both sides."""
    plt = pyplot("drawing the report's PNG")

    paths = report.get("paths") or {}
    if not paths:
        paths = {"all": [r["part"] for r in report["parts"] if not r["part"].startswith(E2E)]}
    names = list(dict.fromkeys([r["part"] for r in report["parts"]]
                               + [p for ps in paths.values() for p in ps]))
    colour = _colours(names)
    rows = max(1, len(paths))
    fig = plt.figure(figsize=(15, max(5.0, 3.2 * rows)))
    gs = fig.add_gridspec(rows, 2)
    ax1 = fig.add_subplot(gs[:, 0])
    qs = [50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100]
    xs = [-math.log10(1 - q / 100) if q < 100 else 5 for q in qs]
    handles: dict[str, Any] = {}
    budget_drawn: set[tuple[str, float]] = set()
    for r in report["parts"]:
        if not r.get("hdr"):
            continue
        h = HdrHistogram.decode(r["hdr"].encode())
        ys = [max(h.get_value_at_percentile(q), 1) / 1e6 for q in qs]
        e2e = r["part"].startswith(E2E)
        (line,) = ax1.plot(xs, ys, marker=".", label=r["part"], color=colour[r["part"]],
                           linewidth=2.5 if e2e else 1.2)
        handles[r["part"]] = line
        b = r.get("budget_ms")
        if b:
            # end_to_end[<sink>] rows share the end-to-end budget: one line for it, in the first path's colour
            key = (E2E if e2e else r["part"], b)
            if key not in budget_drawn:
                budget_drawn.add(key)
                label = f"{key[0]} budget {b:g} ms"
                handles[label] = ax1.axhline(b, linestyle="--", color=colour[r["part"]], linewidth=1,
                                             label=label)
    ax1.set_xticks(xs, [f"p{q:g}" if q < 100 else "max" for q in qs], rotation=45)
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("latency distribution per part (dashed: budgets)")
    series = report.get("series") or []
    t0 = series[0]["t_s"] if series else 0.0
    ts = [s["t_s"] - t0 for s in series]
    for i, (sink, parts) in enumerate(paths.items()):
        ax = fig.add_subplot(gs[i, 1])
        parts = [p for p in parts if not p.startswith(E2E)]
        if series and parts:
            ys = [[(s["mean_ms"].get(p) or 0.0) for s in series] for p in parts]
            for p, poly in zip(parts, ax.stackplot(ts, ys, labels=parts, colors=[colour[p] for p in parts])):
                handles.setdefault(p, poly)
            e2e = [s["mean_ms"].get(f"{E2E}[{sink}]") for s in series]
            (line,) = ax.plot(ts, [v if v is not None else float("nan") for v in e2e], color="black",
                              linewidth=1, label="end to end (mean)")
            handles.setdefault("end to end (mean)", line)
        ax.set_ylabel("mean ms")
        ax.set_title(f"where the time goes, path to {sink}", fontsize=9)
        if i == rows - 1:
            ax.set_xlabel("time (s)")
    fig.tight_layout(rect=(0, 0, 0.8, 1))  # the right fifth holds the legend, outside every plot
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(0.805, 0.98),
                   fontsize=7, frameon=False)
    return fig


def render_png(report: dict[str, Any], path: str | os.PathLike) -> str:
    """Draw :func:`figure` into a PNG at ``path``."""
    plt = pyplot("drawing the report's PNG")
    fig = figure(report)
    out = os.fspath(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
