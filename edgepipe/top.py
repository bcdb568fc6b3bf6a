"""``edgepipe top``: a live terminal view of running pipelines.

Every supervisor publishes a snapshot every stats interval (``Pipeline.live()``: stages, rings and latency
parts) as ``pipeline-<pid>-<id>.json`` in :func:`edgepipe.supervisor.runtime_dir` (0700, written
atomically). ``top`` finds the snapshots whose supervisor is alive and draws them with rich: per ring its
rate, fill and drops, per stage its state, pid and restarts, per latency part p50/p99 against its budget.

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

__all__ = ["find_pipelines", "load_live", "render_live", "run_top"]

_FILE = re.compile(r"pipeline-(\d+)-[0-9a-f]+\.json$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_pipelines(directory: str | None = None, live_only: bool = True) -> list[str]:
    """Snapshot files of running supervisors (all of them with ``live_only=False``), newest first."""
    from edgepipe.supervisor import runtime_dir

    d = directory or runtime_dir()
    out = []
    for p in glob.glob(os.path.join(d, "pipeline-*.json")):
        m = _FILE.search(p)
        if m and (not live_only or _alive(int(m.group(1)))):
            out.append(p)
    return sorted(out, key=lambda p: os.path.getmtime(p) if os.path.exists(p) else 0, reverse=True)


def load_live(path: str) -> dict[str, Any]:
    """Read one snapshot."""
    with open(path) as f:
        return json.load(f)


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
        dropped = s.get("dropped", 0) or sum(v for k, v in s.items() if k.startswith("dropped[") and isinstance(v, int))
        state = s.get("state", "?")
        style = {"running": "green", "failed": "red", "backoff": "yellow"}.get(state, "")
        st.add_row(name, str(s.get("kind") or ""), f"[{style}]{state}[/]" if style else state, str(s.get("pid") or ""),
                   str(s.get("restarts", 0)), str(s.get("received", s.get("frames_in", ""))),
                   str(s.get("emitted", s.get("published", s.get("results", "")))), str(dropped or 0),
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


def run_top(path: str | None = None, interval_s: float = 1.0, once: bool = False, console=None) -> int:
    """Show a pipeline's live view (``path``: its snapshot file; default: the newest running one) until
    Ctrl-C or until it exits. Returns 0, or 1 when no running pipeline is found."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
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
