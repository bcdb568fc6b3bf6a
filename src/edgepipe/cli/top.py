"""``edgepipe top``: a live terminal view of running pipelines.

Every supervisor publishes a snapshot every stats interval (``Pipeline.live()``: stages, rings and latency
parts) as ``pipeline-<pid>-<id>.json`` in :func:`edgepipe.pipeline.supervisor.runtime_dir` (0700, written
atomically). ``top`` finds the snapshots whose supervisor is alive and draws them with rich: per ring its
rate, fill and drops, per stage its state, pid and restarts, per latency part p50/p99 against its budget.

``top --socket PATH`` reads the same numbers the protocol way instead: it connects to the supervisor's
control socket as a monitor, subscribes to Stats, and draws the same tables from the pipeline's roll-up
Stats: its ``stages`` (state, pid, restarts, counters), ``rings``, ``latencies``, ``budgets`` and
``start_ns`` (the uptime). Any program that speaks the ``edgepipe.v1`` protocol can do the same, see
``examples/uds_client.c``.

Both ways show each stage's rates (records in and out per second, between two snapshots), each path's end
to end (never one row mixing paths), and under the tables the sources' health: an IMU loop's achieved rate
and missed deadlines, a capture's achieved fps against its configured one (edgepipe.pipeline.report.health).
``q`` quits (read from the terminal without waiting for Enter), as does Ctrl-C.

>>> live = {"name": "p", "pid": 1, "uptime_s": 2.0, "stages": {}, "links": {}, "parts": []}
>>> from rich.console import Console
>>> Console(width=80).print(render_live(live))  # doctest: +ELLIPSIS
pipeline p (pid 1, up 2.0 s)  q quits
...
"""

from __future__ import annotations

import glob
import json
import os
import re
import select
import sys
import time
from typing import Any

from edgepipe.cli._segments import alive
from edgepipe.pipeline.stats import stage_counts, stats_from_state

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
    stages = {}
    for s in rollup.stages:
        d = stats_from_state(s)  # the stage's own counters (an IMU's rate and deadlines, a capture's fps)
        d.update({"state": s.state, "kind": s.kind, "pid": s.pid or "", "restarts": s.restarts,
                  "error": s.error, "received": s.received, "emitted": s.emitted, "dropped": s.dropped})
        stages[s.name] = d
    for name, st in (stage_stats or {}).items():
        if name in stages:
            continue
        stages[name] = {"state": "running", "kind": "", "pid": "", "restarts": "",
                        "received": sum(r.records_read for r in st.rings if r.bytes_read) or "",
                        "emitted": sum(r.records_written for r in st.rings if r.bytes_written) or ""}
    start = getattr(rollup, "start_ns", 0)  # an older supervisor's roll-up has none
    return {"name": rollup.stage_name.removeprefix("pipeline:"), "pid": pid,
            "uptime_s": round((rollup.t_ns - start) / 1e9, 1) if start and rollup.t_ns >= start else None,
            "t_s": rollup.t_ns / 1e9, "stages": stages, "links": links, "parts": parts}


def add_rates(live: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    """Set each stage's ``in_hz``/``out_hz`` (records received and emitted per second) in ``live`` from the
    counts in ``prev``, an earlier snapshot of the same pipeline (both on the clock of ``t_s``, or else of
    ``uptime_s``); stages without an earlier count or counter get none. Returns ``live``.

    >>> a = {"t_s": 1.0, "stages": {"s": {"received": 10, "emitted": 4}}}
    >>> b = {"t_s": 3.0, "stages": {"s": {"received": 30, "emitted": 4}}}
    >>> {k: v for k, v in add_rates(b, a)["stages"]["s"].items() if k.endswith("_hz")}
    {'in_hz': 10.0, 'out_hz': 0.0}
    """
    def clock(snap):
        t = snap.get("t_s", snap.get("uptime_s"))
        return t if isinstance(t, (int, float)) else None

    t1, t0 = clock(live), clock(prev) if prev else None
    if t0 is None or t1 is None or t1 <= t0:
        return live
    for name, s in live.get("stages", {}).items():
        before = prev.get("stages", {}).get(name)
        if not before:
            continue
        for key, i in (("in_hz", 0), ("out_hz", 1)):
            n, n0 = stage_counts(s)[i], stage_counts(before)[i]
            if isinstance(n, int) and isinstance(n0, int) and n >= n0:
                s[key] = (n - n0) / (t1 - t0)
    return live


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _rate(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _uptime(v: Any) -> str:
    return f"{v:.1f} s" if isinstance(v, (int, float)) else "?"


def render_live(live: dict[str, Any]):
    """A rich renderable of one snapshot: stages (with their rates when :func:`add_rates` set them), rings,
    each path's latency parts, and the sources' health."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from edgepipe.pipeline.report import E2E, health

    head = Text.assemble((f"pipeline {live.get('name')} (pid {live.get('pid')}, up {_uptime(live.get('uptime_s'))})",
                          "bold"), ("  q quits", "dim"))
    st = Table(title="stages", title_justify="left", expand=False)
    for c in ("stage", "kind", "state", "pid", "restarts", "received", "emitted", "in/s", "out/s", "dropped",
              "error"):
        st.add_column(c, justify="left" if c in ("stage", "kind", "state", "error") else "right")
    for name, s in live.get("stages", {}).items():
        received, emitted, dropped = stage_counts(s)
        state = str(s.get("state", "?"))
        style = {"running": "green", "failed": "red", "backoff": "yellow"}.get(state, "")
        st.add_row(escape(name), escape(str(s.get("kind") or "")), f"[{style}]{state}[/]" if style else escape(state),
                   str(s.get("pid") or ""), str(s.get("restarts", 0)), str(received), str(emitted),
                   _rate(s.get("in_hz")), _rate(s.get("out_hz")), str(dropped),
                   escape(str(s.get("error") or "")[:60]))
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
    lt = Table(title="latency (ms)", title_justify="left", caption="red p99: over its budget; 'over': records "
               "above the budget", caption_justify="left")
    for c in ("part", "count", "p50", "p99", "max", "budget", "over"):
        lt.add_column(c, justify="left" if c == "part" else "right")
    parts = live.get("parts", [])
    if sum(p["part"].startswith(E2E + "[") for p in parts) > 1:  # a row per path, none mixing them
        parts = [p for p in parts if p["part"] != E2E]
    for p in parts:
        b = p.get("budget_ms")
        over = b is not None and p.get("p99_ms", 0) > b
        lt.add_row(escape(p["part"]), str(p.get("count", 0)), _ms(p.get("p50_ms")),
                   f"[red]{_ms(p.get('p99_ms'))}[/]" if over else _ms(p.get("p99_ms")), _ms(p.get("max_ms")),
                   _ms(b), str(p.get("violations", 0)))
    out = [head, st, rt, lt]
    for h in health(live.get("stages", {})):
        line = f"{h['stage']}: {_num(h['achieved'])} of {_num(h['configured'])} {h['unit']}"
        if h.get("missed_pct") is not None:
            line += f", missed {h['missed']} of {h['deadlines']} deadlines ({h['missed_pct']:.1f} %)"
        if h.get("dropped"):
            line += f", dropped {h['dropped']}"
        out.append(Text(line, style="" if h["ok"] else "bold red"))
    return Group(*out)


def _num(v: Any) -> str:
    return "?" if v is None else f"{v:g}"


class _Keys:
    """Keys typed at the terminal, one at a time (cbreak mode: no Enter needed), while it is a TTY; the
    terminal's mode is restored on exit. Without a TTY there are no keys and :meth:`wait` only sleeps."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.fd: int | None = None
        self._saved = None

    def __enter__(self) -> _Keys:
        try:
            fd = self.stream.fileno()
            if os.isatty(fd):
                import termios
                import tty

                self._saved = (fd, termios.tcgetattr(fd))
                tty.setcbreak(fd)
                self.fd = fd
        except (AttributeError, OSError, ValueError):
            self.fd = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self._saved[0], termios.TCSADRAIN, self._saved[1])
            except termios.error:
                pass  # the terminal is gone

    def quit_within(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for keys; True once ``q`` was typed."""
        if self.fd is None:
            time.sleep(timeout_s)
            return False
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return False
            data = os.read(self.fd, 64)
            if not data:  # the terminal went away: no more keys, sleep out the rest
                self.fd = None
                time.sleep(max(0.0, deadline - time.monotonic()))
                return False
            if b"q" in data or b"Q" in data:
                return True


def _run_socket(path: str, interval_s: float, once: bool, console, keys: _Keys) -> int:
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
    prev_live = None
    view = None
    try:
        with client:
            deadline = time.monotonic() + 10 * max(interval_s, 0.5)
            while True:
                if keys.quit_within(0):
                    return 0
                try:
                    env = client.recv(timeout_s=0.2)  # short: the keys are read in between
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
                if prev is None:
                    prev_live = live_from_stats(last, stages, None, pid=client.welcome.pid)
                    continue  # rates need two roll-ups
                live = add_rates(live_from_stats(last, stages, prev, pid=client.welcome.pid), prev_live)
                prev_live = live
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


def _run_file(path: str, interval_s: float, once: bool, console, keys: _Keys) -> int:
    from rich.live import Live

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
                if keys.quit_within(interval_s):
                    return 0
                prev = live
                try:
                    live = load_live(path)
                except FileNotFoundError:
                    console.print("the pipeline has exited")
                    return 0
                except (OSError, json.JSONDecodeError):
                    continue  # caught between writes: the next one will do
                view.update(render_live(add_rates(live, prev)))
    except KeyboardInterrupt:
        return 0


def run_top(path: str | None = None, interval_s: float = 1.0, once: bool = False, console=None,
            socket: str | None = None, keys=None) -> int:
    """Show a pipeline's live view (``path``: its snapshot file; default: the newest running one; or
    ``socket``: its control socket) until ``q``, Ctrl-C or until it exits. Returns 0, or 1 when no running
    pipeline is found. ``keys``: where keys are read (default stdin, when it is a terminal)."""
    from rich.console import Console

    console = console or Console()
    if socket is None and path is None:
        found = find_pipelines()
        if not found:
            console.print("no running pipeline found (start one with `edgepipe run FILE.toml` or `edgepipe demo`)")
            return 1
        path = found[0]
    with _Keys(keys) if not once else _Keys(_NoKeys()) as k:
        if socket is not None:
            return _run_socket(socket, interval_s, once, console, k)
        return _run_file(path, interval_s, once, console, k)


class _NoKeys:
    """A stream that is no terminal: --once reads no keys."""

    def fileno(self) -> int:
        raise OSError("no terminal")
