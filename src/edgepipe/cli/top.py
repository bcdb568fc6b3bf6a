"""``edgepipe top``: a live terminal view of running pipelines.

Every supervisor publishes a snapshot every stats interval (``Pipeline.live()``: stages, rings and latency
parts) as ``pipeline-<pid>-<id>.json`` in :func:`edgepipe.pipeline.supervisor.runtime_dir` (0700, written
atomically). ``top`` finds the snapshots whose supervisor is alive and draws them with rich: per ring its
rate, fill and drops, per stage its state, pid and restarts, per latency part p50/p99 against its budget.

``top --socket PATH`` reads the same numbers the protocol way instead: it connects to the supervisor's
control socket as a monitor, subscribes to Stats, and draws the same tables from the pipeline's roll-up
Stats: its ``stages`` (state, pid, restarts, counters), ``rings``, ``latencies`` and ``budgets``. Any
program that speaks the ``edgepipe.v1`` protocol can do the same, see ``examples/uds_client.c``.

>>> live = {"name": "p", "pid": 1, "uptime_s": 2.0, "stages": {}, "links": {}, "parts": []}
>>> from rich.console import Console
>>> Console(width=80).print(render_live(live))  # doctest: +ELLIPSIS
pipeline p (pid 1, up 2.0 s)
...
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from typing import Any

from edgepipe.cli._segments import alive
from edgepipe.pipeline.stats import stage_counts

__all__ = ["find_pipelines", "live_from_stats", "load_live", "render_live", "run_top"]

_FILE = re.compile(r"pipeline-(\d+)-[0-9a-f]+\.json$")


def find_pipelines(directory: str | None = None, live_only: bool = True) -> list[str]:
    """Snapshot files of running supervisors (all of them with ``live_only=False``), newest first."""
    from edgepipe.pipeline.supervisor import runtime_dir

    d = directory or runtime_dir()
    out = []
    for p in glob.glob(os.path.join(d, "pipeline-*.json")):
        m = _FILE.search(p)
        if m and (not live_only or alive(int(m.group(1)))):
            out.append(p)
    return sorted(out, key=lambda p: os.path.getmtime(p) if os.path.exists(p) else 0, reverse=True)


def load_live(path: str) -> dict[str, Any]:
    """Read one snapshot."""
    with open(path) as f:
        return json.load(f)


def live_from_stats(rollup, stage_stats: dict[str, Any] | None = None, prev=None,
                    pid: int | None = None) -> dict[str, Any]:
    """A snapshot in :func:`render_live`'s shape from a pipeline's roll-up ``edgepipe.v1.Stats`` (and the
    previous one, for ring rates; and the latest Stats of each stage, by name, used for a stage the roll-up's
    ``stages`` does not list, as an older supervisor's roll-up lists none).

    >>> from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
    >>> st = pb.Stats(stage_name="pipeline:p", t_ns=2_000_000_000,
    ...               rings=[pb.RingCounters(name="a", records_written=30, records_read=20, used=64, capacity=4096)])
    >>> old = pb.Stats(t_ns=1_000_000_000, rings=[pb.RingCounters(name="a", records_written=10)])
    >>> live = live_from_stats(st, prev=old)
    >>> live["links"]["a"]["rate_hz"], live["links"]["a"]["fill"]
    (20.0, 0.015625)
    >>> st.stages.extend([pb.StageState(name="sink", kind="check", state="failed", pid=7, restarts=2, error="x")])
    >>> live_from_stats(st)["stages"]["sink"]["restarts"]
    2
    """
    from edgepipe.pipeline.report import E2E, LatencyBook, budget_for, percentiles

    links = {}
    before = {r.name: r for r in prev.rings} if prev is not None else {}
    dt = (rollup.t_ns - prev.t_ns) / 1e9 if prev is not None and rollup.t_ns > prev.t_ns else 0.0
    for r in rollup.rings:
        p = before.get(r.name)
        links[r.name] = {"mode": r.mode, "records_written": r.records_written, "records_read": r.records_read,
                         "fill": r.used / r.capacity if r.capacity else 0.0, "dropped": r.dropped,
                         "rate_hz": (r.records_written - p.records_written) / dt if p is not None and dt else 0.0}
    budgets = {b.part: b.budget_ns for b in rollup.budgets}
    book = LatencyBook([], [], budgets)
    book.merge_proto(rollup.latencies)
    parts = []
    for name in book.order:
        h = book.hists[name]
        p50, p99 = percentiles(h, (50.0, 99.0))
        b = budget_for(name, budgets)
        parts.append({"part": name, "count": h.get_total_count(), "p50_ms": p50 / 1e6, "p99_ms": p99 / 1e6,
                      "max_ms": h.get_max_value() / 1e6, "budget_ms": None if b is None else b / 1e6,
                      "violations": book.violations.get(name, 0)})
    parts.sort(key=lambda p: (p["part"] == E2E, p["part"].startswith(E2E)))  # as Pipeline.live() orders them
    stages = {s.name: {"state": s.state, "kind": s.kind, "pid": s.pid or "", "restarts": s.restarts,
                       "error": s.error, "received": s.received, "emitted": s.emitted, "dropped": s.dropped}
              for s in rollup.stages}
    for name, st in (stage_stats or {}).items():
        if name in stages:
            continue
        stages[name] = {"state": "running", "kind": "", "pid": "", "restarts": "",
                        "received": sum(r.records_read for r in st.rings if r.bytes_read) or "",
                        "emitted": sum(r.records_written for r in st.rings if r.bytes_written) or ""}
    return {"name": rollup.stage_name.removeprefix("pipeline:"), "pid": pid, "uptime_s": "-",
            "stages": stages, "links": links, "parts": parts}


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def render_live(live: dict[str, Any]):
    """A rich renderable of one snapshot: stages, rings, latency parts."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    head = Text(f"pipeline {live.get('name')} (pid {live.get('pid')}, up {live.get('uptime_s')} s)", style="bold")
    st = Table(title="stages", title_justify="left", expand=False)
    for c in ("stage", "kind", "state", "pid", "restarts", "received", "emitted", "dropped", "error"):
        st.add_column(c, justify="left" if c in ("stage", "kind", "state", "error") else "right")
    for name, s in live.get("stages", {}).items():
        received, emitted, dropped = stage_counts(s)
        state = s.get("state", "?")
        style = {"running": "green", "failed": "red", "backoff": "yellow"}.get(state, "")
        st.add_row(name, str(s.get("kind") or ""), f"[{style}]{state}[/]" if style else state, str(s.get("pid") or ""),
                   str(s.get("restarts", 0)), str(received), str(emitted), str(dropped),
                   escape((s.get("error") or "")[:60]))
    rt = Table(title="rings", title_justify="left")
    for c in ("link", "mode", "rate/s", "fill", "queued", "written", "dropped"):
        rt.add_column(c, justify="left" if c in ("link", "mode") else "right")
    for name, ln in live.get("links", {}).items():
        fill = ln.get("fill", 0.0)
        style = "red" if fill > 0.8 else ("yellow" if fill > 0.5 else "")
        rt.add_row(name, ln.get("mode", ""), f"{ln.get('rate_hz', 0):.0f}",
                   f"[{style}]{fill:.0%}[/]" if style else f"{fill:.0%}",
                   str(ln.get("records_written", 0) - ln.get("records_read", 0)), str(ln.get("records_written", 0)),
                   str(ln.get("dropped", 0)))
    lt = Table(title="latency (ms)", title_justify="left")
    for c in ("part", "count", "p50", "p99", "max", "budget", "over"):
        lt.add_column(c, justify="left" if c == "part" else "right")
    for p in live.get("parts", []):
        b = p.get("budget_ms")
        over = b is not None and p.get("p99_ms", 0) > b
        lt.add_row(escape(p["part"]), str(p.get("count", 0)), _ms(p.get("p50_ms")),
                   f"[red]{_ms(p.get('p99_ms'))}[/]" if over else _ms(p.get("p99_ms")), _ms(p.get("max_ms")),
                   _ms(b), str(p.get("violations", 0)))
    return Group(head, st, rt, lt)


def _run_socket(path: str, interval_s: float, once: bool, console) -> int:
    from rich.live import Live

    from edgepipe.errors import EdgepipeError, FrameTimeoutError, PeerClosedError
    from edgepipe.control.client import Client

    try:
        client = Client.connect(path, role="monitor", stage="edgepipe top", subscribe=["stats"])
    except (EdgepipeError, OSError) as e:
        console.print(f"cannot connect to {path}: {e}")
        return 1
    stages: dict[str, Any] = {}
    prev = last = None
    view = None
    try:
        with client:
            deadline = time.monotonic() + 10 * max(interval_s, 0.5)
            while True:
                try:
                    env = client.recv(timeout_s=max(interval_s, 0.5) * 4)
                except FrameTimeoutError:
                    if last is None and time.monotonic() > deadline:
                        console.print(f"no Stats from {path} yet")
                        return 1
                    continue
                except PeerClosedError:
                    console.print("the pipeline has exited")
                    return 0
                if env.WhichOneof("body") != "stats":
                    continue
                st = env.stats
                if not st.stage_name.startswith("pipeline:"):
                    stages[st.stage_name] = st
                    continue
                prev, last = last, st
                if prev is None and not once:
                    continue  # rates need two roll-ups
                live = live_from_stats(last, stages, prev, pid=client.welcome.pid)
                if once:
                    console.print(render_live(live))
                    return 0
                if view is None:
                    view = Live(render_live(live), console=console, refresh_per_second=4)
                    view.start()
                else:
                    view.update(render_live(live))
    except KeyboardInterrupt:
        return 0
    finally:
        if view is not None:
            view.stop()


def run_top(path: str | None = None, interval_s: float = 1.0, once: bool = False, console=None,
            socket: str | None = None) -> int:
    """Show a pipeline's live view (``path``: its snapshot file; default: the newest running one; or
    ``socket``: its control socket) until Ctrl-C or until it exits. Returns 0, or 1 when no running pipeline
    is found."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    if socket is not None:
        return _run_socket(socket, interval_s, once, console)
    if path is None:
        found = find_pipelines()
        if not found:
            console.print("no running pipeline found (start one with `edgepipe run FILE.toml` or `edgepipe demo`)")
            return 1
        path = found[0]
    try:
        live = load_live(path)
    except (OSError, json.JSONDecodeError) as e:
        console.print(f"cannot read {path}: {e}")
        return 1
    if once:
        console.print(render_live(live))
        return 0
    try:
        with Live(render_live(live), console=console, refresh_per_second=4) as view:
            while True:
                time.sleep(interval_s)
                try:
                    live = load_live(path)
                except FileNotFoundError:
                    console.print("the pipeline has exited")
                    return 0
                except (OSError, json.JSONDecodeError):
                    continue  # caught between writes: the next one will do
                view.update(render_live(live))
    except KeyboardInterrupt:
        return 0
