"""Latency books split records into parts, travel as LatencyHistogram buckets without losing precision, and
become a report (table, JSON, PNG) that says which part is over its budget."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from rich.console import Console

from edgepipe.pipeline.api import Hop, Record
from edgepipe.pipeline.report import (
    LatencyBook,
    _hist,
    build_report,
    load_report,
    percentiles,
    render_table,
    write_report,
)

MS = 1_000_000


def _rec(cap, hops, link, recv):
    return Record(b"", 0, cap, [Hop(*h) for h in hops], link=link, receive_ns=recv)


class TestBook:
    def test_parts_add_up_to_end_to_end(self):
        """source -> ring a -> stage -> ring b -> sink: four parts whose sum is the end-to-end latency."""
        book = LatencyBook(["src", "mid", "sink"], ["a", "b"], sink="sink")
        book.record(_rec(0, [(0, 0xFFFF, 0, 1 * MS), (1, 0, 3 * MS, 7 * MS)], 1, 12 * MS))
        got = {k: h.get_max_value() for k, h in book.hists.items()}
        assert book.order == ["src", "a", "mid", "b", "end_to_end[sink]", "end_to_end"]
        for part, want in {"src": 1, "a": 2, "mid": 4, "b": 5, "end_to_end": 12}.items():
            assert abs(got[part] - want * MS) <= want * MS / 1000, part  # 3 significant digits

    def test_violations_counted_against_budgets(self):
        """Values over a part's budget are counted; a path's end to end uses the end-to-end budget."""
        book = LatencyBook(["src"], ["a"], {"a": 2 * MS, "end_to_end": 10 * MS}, sink="s")
        for q in (1, 3, 5, 20):
            book.record(_rec(0, [(0, 0xFFFF, 0, 0)], 0, q * MS))
        assert book.violations == {"a": 3, "end_to_end[s]": 1, "end_to_end": 1}

    def test_proto_round_trip_is_exact(self):
        """to_proto -> merge_proto gives the same histogram: every percentile, count, min and max."""
        book = LatencyBook([], [])
        vals = [random.randint(1, 10**10) for _ in range(5000)] + [1, 7, 3_600_000_000_000]
        for v in vals:
            book.record_value("x", v)
        other = LatencyBook([], [])
        other.merge_proto(book.to_proto())
        other.merge_proto(book.to_proto())  # merging twice doubles every count
        a, b = book.hists["x"], other.hists["x"]
        assert b.get_total_count() == 2 * a.get_total_count()
        assert np.array_equal(2 * np.ctypeslib.as_array(a.counts), np.ctypeslib.as_array(b.counts))
        assert (b.get_min_value(), b.get_max_value()) == (a.get_min_value(), a.get_max_value())
        assert other.sums["x"] == 2 * sum(vals)

    def test_percentiles_match_hdrhistogram(self):
        """The vectorised percentiles equal hdrhistogram's own get_value_at_percentile."""
        h = _hist()
        for _ in range(3000):
            h.record_value(int(random.lognormvariate(12, 2)) + 1)
        qs = (0.0, 10.0, 50.0, 90.0, 99.0, 99.9, 100.0)
        assert percentiles(h, qs) == [h.get_value_at_percentile(q) for q in qs]
        assert percentiles(_hist(), (50.0,)) == [0]


class TestReport:
    def _book(self):
        book = LatencyBook(["cam", "det"], ["frames", "out"], {"det": 5 * MS, "end_to_end": 100 * MS}, sink="det")
        for i in range(200):
            book.record(_rec(0, [(0, 0xFFFF, 0, MS), (1, 0, 2 * MS, (2 + 3 + i % 5) * MS)], 1, (12 + i % 5) * MS))
        return book

    def test_budget_flags_and_json_png(self, tmp_path):
        """det's p99 (7 ms) is over its 5 ms budget, end to end is within; JSON and PNG are written and the
        JSON reads back with the same rows."""
        rep = build_report(self._book(), series=[{"t_s": 0.0, "mean_ms": {"det": 5.0}},
                                                 {"t_s": 0.5, "mean_ms": {"det": 6.0}}],
                           paths={"det": ["cam", "frames", "det", "out"]})
        rows = {r["part"]: r for r in rep["parts"]}
        assert rows["det"]["within_budget"] is False and rows["det"]["violations"] == 80
        assert rows["end_to_end"]["within_budget"] is True and rows["cam"]["within_budget"] is None
        assert rep["ok"] is False
        assert rows["det"]["p50_ms"] == pytest.approx(5.0, rel=1e-3) and rows["det"]["max_ms"] == pytest.approx(7.0, rel=1e-3)
        paths = write_report(rep, tmp_path)
        assert (tmp_path / "report.png").stat().st_size > 10_000
        back = load_report(tmp_path)
        assert [r["part"] for r in back["parts"]] == [r["part"] for r in rep["parts"]]
        assert json.loads(open(paths["json"]).read())["paths"] == {"det": ["cam", "frames", "det", "out"]}

    def test_table_names_every_part(self):
        """The rich table has a row per part with its budget and OVER where p99 exceeds it."""
        con = Console(width=140, record=True)
        render_table(build_report(self._book()), con)
        text = con.export_text()
        for part in ("cam", "frames", "det", "out", "end_to_end[det]", "end_to_end"):
            assert f" {part} " in text
        assert "OVER" in text

    def test_load_report_refuses_other_json(self, tmp_path):
        """A JSON file that is not a report is a ValueError naming the file."""
        (tmp_path / "x.json").write_text("{}")
        with pytest.raises(ValueError, match="x.json is not an edgepipe report"):
            load_report(tmp_path / "x.json")


def test_drops_named_by_stage_and_reason():
    """Drops come from Python stages' outlets (per link and reason) and built-in stages' counters (per reason,
    a total left out when the reasons are there)."""
    rep = build_report(LatencyBook([], []), stages={
        "cap": {"dropped": 5, "dropped_full": 2, "dropped_shape": 3, "published": 9},
        "det": {"dropped_deadline": 1, "frames_lost": 2, "results_dropped": 0, "bad_frames": 1},
        "src": {"dropped[a: ring full]": 7, "state": "done", "restarts": 0}})
    assert rep["drops"] == {"cap: dropped_full": 2, "cap: dropped_shape": 3, "det: dropped_deadline": 1,
                            "det: frames_lost": 2, "det: bad_frames": 1, "src: a: ring full": 7}


def _two_paths_book():
    """Two sources, two sinks: 1 kHz-like samples of ~0.02 ms and frames of ~60 ms."""
    book = LatencyBook(["imu", "cam"], ["samples", "frames"], {"end_to_end": 250 * MS})
    for i in range(900):
        book.sink = "show_attitude"
        book.record(_rec(0, [(0, 0xFFFF, 0, 10_000)], 0, 20_000 + i))
    for i in range(100):
        book.sink = "show_text"
        book.record(_rec(0, [(1, 0xFFFF, 0, 50 * MS)], 1, (60 + i % 5) * MS))
    return book


class TestPaths:
    def test_one_row_per_path_and_no_mixed_row(self):
        """With two paths the report has an end-to-end row per path and none mixing samples with frames;
        with one path the plain end-to-end row stays."""
        rep = build_report(_two_paths_book())
        rows = {r["part"]: r for r in rep["parts"]}
        assert "end_to_end" not in rows
        assert rows["end_to_end[show_attitude]"]["count"] == 900 and rows["end_to_end[show_text]"]["count"] == 100
        assert rows["end_to_end[show_text]"]["p50_ms"] > 50 > rows["end_to_end[show_attitude]"]["p99_ms"]
        one = LatencyBook(["src"], ["a"], sink="s")
        one.record(_rec(0, [(0, 0xFFFF, 0, MS)], 0, 2 * MS))
        assert [r["part"] for r in build_report(one)["parts"]][-2:] == ["end_to_end[s]", "end_to_end"]

    def test_table_states_the_ok_over_rule(self):
        """The table's caption says what ok and OVER mean: p99 against the budget (what within_budget does)."""
        rep = build_report(TestReport()._book())
        assert rep["rule"].startswith("ok: p99 <= budget, OVER: p99 > budget")
        con = Console(width=160, record=True)
        render_table(rep, con)
        assert "OVER: p99 > budget" in con.export_text()


class TestHealth:
    STAGES = {
        "imu": {"kind": "imu", "state": "done", "rate_hz": 1000.0, "achieved_rate_hz": 916.6, "ticks": 9166,
                "missed": 834, "wait": "sleep", "dropped": 0, "published": 9166},
        "capture": {"kind": "capture", "state": "done", "fps_target": 10.0, "fps": 6.66, "late": 2, "dropped": 3,
                    "dropped_full": 3, "dropped_shape": 0, "published": 55},
        "show": {"kind": "print", "received": 5},
    }

    def test_imu_missed_deadlines_and_capture_fps_shortfall_are_reported(self):
        """The IMU loop's deadlines (served + missed), the share missed and the achieved rate; the capture's
        achieved fps against its configured fps; both short, so both warn, and drops warn too."""
        rep = build_report(LatencyBook([], []), stages=self.STAGES)
        h = {r["stage"]: r for r in rep["health"]}
        assert set(h) == {"imu", "capture"}
        assert (h["imu"]["deadlines"], h["imu"]["missed"], h["imu"]["missed_pct"]) == (10000, 834, 8.34)
        assert (h["imu"]["configured"], h["imu"]["achieved"], h["imu"]["ok"]) == (1000.0, 916.6, False)
        assert (h["capture"]["configured"], h["capture"]["achieved"], h["capture"]["dropped"]) == (10.0, 6.66, 3)
        assert rep["health_ok"] is False
        text = " | ".join(rep["warnings"])
        assert "missed 834 of 10000 deadlines (8.3 %" in text and "916.6 Hz achieved of 1000.0 Hz" in text
        assert "6.66 fps, below 90% of its configured 10 fps" in text and "capture: dropped 3" in text
        con = Console(width=160, record=True)
        render_table(rep, con)
        out = con.export_text()
        assert "WARNING imu: the IMU loop missed 834 of 10000 deadlines" in out
        assert "834 of 10000 (8.3 %)" in out and "SHORT" in out and "6.66 fps" in out

    def test_sources_that_keep_their_rate_are_ok(self):
        """Under 1 % missed and at least 90 % of the fps, nothing dropped: ok rows and no warning."""
        stages = {"imu": dict(self.STAGES["imu"], missed=50, ticks=9950, achieved_rate_hz=995.0),
                  "capture": dict(self.STAGES["capture"], fps=9.5, dropped=0, dropped_full=0)}
        rep = build_report(LatencyBook([], []), stages=stages)
        assert [r["ok"] for r in rep["health"]] == [True, True] and rep["warnings"] == [] and rep["health_ok"]
        con = Console(width=160, record=True)
        render_table(rep, con)
        out = con.export_text()
        assert "WARNING" not in out and "drops: none" in out

    def test_device_paced_imu_has_no_deadlines(self):
        """A buffered IIO loop is paced by the device: its missed counter is no deadline count."""
        st = dict(self.STAGES["imu"], wait="device")
        row = build_report(LatencyBook([], []), stages={"imu": st})["health"][0]
        assert row["deadlines"] is None and row["missed_pct"] is None and row["ok"]


class TestPng:
    def _report(self):
        book = _two_paths_book()
        book.budgets_ns.update({"imu": MS // 100, "frames": 20 * MS})
        for i in range(10):  # 16 parts in all: more than matplotlib's default cycle of 10 colours
            book.record_value(f"extra{i}", (i + 1) * MS)
        return build_report(book, budgets_ns=book.budgets_ns,
                            series=[{"t_s": float(t), "mean_ms": {"imu": 0.01, "samples": 0.01, "cam": 50.0,
                                                                  "frames": 10.0}} for t in range(3)],
                            paths={"show_attitude": ["imu", "samples", "end_to_end[show_attitude]"],
                                   "show_text": ["cam", "frames", "end_to_end[show_text]"]})

    def test_colours_budget_lines_and_legend_outside(self):
        """Every part's curve has its own colour; each part with a budget has a dashed line at it (one for
        the end-to-end budget the paths share); the only legend is the figure's, clear of every plot."""
        from edgepipe.pipeline.report import figure

        rep = self._report()
        fig = figure(rep)
        try:
            ax1 = fig.axes[0]
            curves = {ln.get_label(): ln for ln in ax1.get_lines() if ln.get_linestyle() == "-"}
            parts = [r["part"] for r in rep["parts"]]
            assert sorted(curves) == sorted(parts)
            colours = [tuple(curves[p].get_color()) for p in parts]
            assert len(set(colours)) == len(parts)
            dashed = {ln.get_ydata()[0] for ln in ax1.get_lines() if ln.get_linestyle() == "--"}
            assert dashed == {0.01, 20.0, 250.0}
            assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
            fig.canvas.draw()
            r = fig.canvas.get_renderer()
            box = fig.legends[0].get_window_extent(r)
            for ax in fig.axes:
                a = ax.get_window_extent(r)
                assert box.x0 >= a.x1 or box.x1 <= a.x0 or box.y0 >= a.y1 or box.y1 <= a.y0, ax.get_title()
            # the stacked plots use the same colour per part as the curves
            polys = [c for ax in fig.axes[1:] for c in ax.collections]
            assert {tuple(p.get_facecolor()[0][:3]) for p in polys} >= {colours[parts.index("frames")][:3]}
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def test_png_has_the_distinct_colours(self, tmp_path):
        """Read back from the PNG: the pixels hold each part's colour."""
        import matplotlib.image as mpimg

        from edgepipe.pipeline.report import _colours

        rep = self._report()
        write_report(rep, tmp_path)
        px = (mpimg.imread(tmp_path / "report.png")[..., :3] * 255).round().astype(int)
        seen = {tuple(c) for c in px.reshape(-1, 3)}
        want = _colours([r["part"] for r in rep["parts"]])
        for part, c in want.items():
            assert tuple(round(v * 255) for v in c) in seen, part


class TestRemote:
    def _report(self, stages):
        book = LatencyBook(["down", "show"], ["frames"], sink="show")
        book.record(_rec(0, [(0, 0xFFFF, 0, 1_000_000)], 0, 4_000_000))
        return build_report(book, stages=stages, paths={"show": ["down", "frames", "end_to_end[show]"]})

    def test_the_wire_share_of_each_path_through_the_bridge(self):
        """A bridge's wire p50 is reported with its clock bound and as a share of the end-to-end p50 of each
        path it is on; a wire the bound makes unknown says so, in the JSON and the printed table."""
        r = self._report({"down": {"wire_p50_us": 400.0, "wire_bound_us": 100.0},
                          "far": {"wire": "unknown: clock bound +-900 us is wider than the 300 us measured"}})
        wire = {x["stage"]: x for x in r["remote"]}
        assert wire["down"]["p50_ms"] == 0.4 and wire["down"]["bound_ms"] == 0.1
        assert wire["down"]["share"]["show"] == pytest.approx(0.4 / r["parts"][-1]["p50_ms"])
        assert "p50_ms" not in wire["far"] and wire["far"]["unknown"].startswith("unknown: clock bound")
        con = Console(record=True, width=200)
        render_table(r, console=con)
        text = con.export_text()
        assert "wire (down): p50 0.400 ms +- 0.100 ms (clock bound), 10.0 % of end_to_end[show] p50" in text
        assert "wire (far): unknown: clock bound +-900 us" in text

    def test_offload_counts_and_round_trip(self):
        """An offload stage's counters (answered, timed out, late, not sent) and round trip reach the report."""
        r = self._report({"off": {"results": 9, "sure": 4, "unsure": 5, "forwarded": 4, "answered": 2, "timeouts": 2,
                                  "late_answers": 1, "not_forwarded[busy]": 1, "round_trip_p50_ms": 80.0,
                                  "round_trip_p99_ms": 120.0}})
        (o,) = r["remote"]
        assert (o["answered"], o["timeouts"], o["late_answers"], o["not_forwarded"]) == (2, 2, 1, 1)
        con = Console(record=True, width=300)
        render_table(r, console=con)
        assert ("offload (off): 9 results, 5 unsure, 4 sent, 2 answered by the server, 2 timed out, 1 late, 1 not "
                "sent, 0 bad or unknown answers; round trip p50 80.0 ms, p99 120.0 ms") in con.export_text()
