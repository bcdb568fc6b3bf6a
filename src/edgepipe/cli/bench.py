"""The summary ``edgepipe bench`` writes from the benchmarks' own ``--json`` files.

Generic over the shape ``benchmarks/_common.py`` writes: ``{"env", "args", "rows": [...], "goals": ...}``,
where each row is a dict with ``case`` (plus usually ``group``, ``edgepipe``, ``round``, ``ok``) and the
case's numbers, and ``goals`` is either ``{name: {"pass", "detail"}}`` or that same mapping per round.
Each case gets one *headline* number: the first of :data:`HEADLINE_KEYS` its row holds (nested dicts are
flattened as ``outer.inner``), else its first other numeric field. A file that cannot be read or holds no
rows is kept as a :class:`Script` with ``error`` set, so the report lists it instead of crashing.

A peer case whose row says ``"skipped: ..."`` (its library is not installed) is listed in
``Script.missing_peers``, and the report says how to install the peers (:data:`BENCH_INSTALL`). A goal the
script marked ``"skipped"`` (a peer it names did not run) is SKIPPED, never PASS against a weaker stand-in.

>>> s = summarize("demo", {"rows": [{"case": "edgepipe x", "edgepipe": True, "p50_ns": 300.0, "p99_ns": 400},
...                                 {"case": "peer y", "edgepipe": False, "p50_ns": 900.0}],
...                        "goals": {"1": {"p50 <= 1 us": {"pass": True, "detail": "300 ns"}}}})
>>> [(c.case, c.metric, c.value, c.extra) for c in s.cases]
[('edgepipe x', 'p50_ns', 300.0, 'p99_ns 400'), ('peer y', 'p50_ns', 900.0, '')]
>>> [(g.verdict, g.name) for g in s.goals]
[('PASS', 'p50 <= 1 us')]
>>> summarize("bad", "not json").error
'no rows: the JSON is not an object'
>>> s = summarize("lat", {"rows": [{"case": "edgepipe spin", "edgepipe": True, "p50_ns": 300.0},
...                                {"case": "iceoryx2", "edgepipe": False, "ok": False,
...                                 "error": "skipped: iceoryx2 not importable: No module named 'iceoryx2'"}],
...                       "goals": {"p50 <= 0.6x best peer": {"pass": None, "skipped": True,
...                                                           "detail": "peer missing: iceoryx2 (not installed)"}}})
>>> s.missing_peers, [(g.verdict, g.name) for g in s.goals]
(['iceoryx2'], [('SKIPPED', 'p50 <= 0.6x best peer')])
"""

from __future__ import annotations

import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from edgepipe._extras import pyplot

__all__: list[str] = []  # the CLI's own helpers (`edgepipe bench`), not API

BENCH_INSTALL = 'pip install ".[bench]"'  # from the checkout: the peer libraries the benchmarks compare against

# the headline number of a row, in order of preference; lower is better for every key ending in _ns / _us
# / .p99 / median / min, higher for rates
HEADLINE_KEYS = ("p50_ns", "msgs_per_s", "fps", "frames_per_s", "jit.p99", "rate_hz", "cpu_ns_per_sample",
                 "update_ns", "cpu_pct", "median", "min")
# the second number shown beside the headline, when the row holds it
EXTRA_KEYS = {"p50_ns": "p99_ns", "jit.p99": "jit.p999", "median": "min"}
# bookkeeping fields that are never a headline
NOT_METRICS = {"round", "n", "probe_before_ns", "probe_after_ns", "edgepipe", "ok", "round_trips", "elapsed_s",
               "frames", "sent", "msgs", "errors", "lost", "missed", "missed_events", "batch", "cpu_s", "cpu_cores"}
# CPU both processes used during the case per message (the ring benchmarks): shown beside every headline, so a
# case that spins cannot look cheap
CPU_KEY = "cpu_ns_per_msg"


@dataclass
class Case:
    """One case's headline: the median over the rounds in which it succeeded."""

    case: str
    group: str
    edgepipe: bool
    metric: str  # the row key, e.g. "p50_ns"
    value: float | None  # None: the case failed in every round
    extra: str = ""  # e.g. "p99_ns 400"
    error: str = ""


@dataclass
class Goal:
    name: str
    verdict: str  # PASS / FAIL / SKIPPED (a peer it names did not run) / ? (a case is missing)
    detail: str
    round: str = ""


@dataclass
class Script:
    name: str
    cases: list[Case] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    error: str = ""  # why there is no summary (unreadable / missing JSON)
    missing_peers: list[str] = field(default_factory=list)  # peer cases skipped: library not installed


def missing_peers(scripts: list[Script]) -> list[tuple[str, str]]:
    """(benchmark, peer case) for every peer that did not run because it is not installed."""
    return [(s.name, p) for s in scripts for p in s.missing_peers]


def _flat(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update({f"{k}.{k2}": v2 for k2, v2 in v.items()})
        else:
            out[k] = v
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metric(row: dict) -> str | None:
    for k in HEADLINE_KEYS:
        if _num(row.get(k)):
            return k
    for k, v in row.items():
        if _num(v) and k not in NOT_METRICS:
            return k
    return None


def _case_name(row: dict) -> str:
    if "case" in row:
        return str(row["case"])
    return " ".join(str(v) for k, v in row.items() if isinstance(v, str) and k not in ("pair", "loadavg"))[:60] or "?"


def _rows(doc: dict) -> list[dict]:
    rows = doc.get("rows")
    if isinstance(rows, list) and rows:
        return [r for r in rows if isinstance(r, dict)]
    # a script with its own tables (e.g. callgrind_pair's "native"): every other list of row dicts
    out = []
    for k, v in doc.items():
        if k not in ("env", "args", "goals") and isinstance(v, list):
            out += [{**r, "case": _case_name(r), "group": r.get("group", k)} for r in v if isinstance(r, dict)]
    return out


def _goals(raw) -> list[Goal]:
    if not isinstance(raw, dict):
        return []
    if raw and all(isinstance(v, dict) and "pass" in v for v in raw.values()):
        raw = {"": raw}
    out = []
    for rnd, gs in raw.items():
        if not isinstance(gs, dict):
            continue
        for name, g in gs.items():
            if isinstance(g, dict):
                p = g.get("pass")
                verdict = "SKIPPED" if g.get("skipped") else "?" if p is None else ("PASS" if p else "FAIL")
                out.append(Goal(str(name), verdict, str(g.get("detail", "")), str(rnd) if len(raw) > 1 else ""))
    return out


def summarize(name: str, doc) -> Script:
    """The cases' headline numbers and the goal lines of one script's JSON document."""
    if not isinstance(doc, dict):
        return Script(name, error="no rows: the JSON is not an object")
    rows = [_flat(r) for r in _rows(doc)]
    s = Script(name, goals=_goals(doc.get("goals")))
    if not rows:
        s.error = "no rows in the JSON"
        return s
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(_case_name(r), []).append(r)
    for case, rs in by_case.items():
        good = [r for r in rs if r.get("ok", True) and _metric(r)]
        first = (good or rs)[0]
        group = str(first.get("group", ""))
        if first.get("style") and first["style"] != group:  # the waiting style, when the group does not name it
            group = f"{group}, {first['style']}" if group else str(first["style"])
        c = Case(case, group, bool(first.get("edgepipe", "edgepipe" in case.lower())), "", None)
        if not good:
            c.error = str(first.get("error", "no numeric field")).splitlines()[0][:120] if first.get("error") else \
                "no numeric field"
            if not c.edgepipe and c.error.startswith("skipped:"):
                s.missing_peers.append(case)
        else:
            c.metric = _metric(good[0])
            vals = [r[c.metric] for r in good if _num(r.get(c.metric))]
            c.value = float(statistics.median(vals))
            ek = EXTRA_KEYS.get(c.metric)
            ev = [r[ek] for r in good if _num(r.get(ek))] if ek else []
            if ev:
                c.extra = f"{ek} {statistics.median(ev):.4g}"
            cpu = [r[CPU_KEY] for r in good if _num(r.get(CPU_KEY))]
            if cpu and c.metric != CPU_KEY:
                c.extra = "; ".join(x for x in (c.extra, f"{CPU_KEY} {statistics.median(cpu):.4g}") if x)
        s.cases.append(c)
    return s


def load(name: str, path: str) -> Script:
    """:func:`summarize` of the file at ``path``; a missing or broken file becomes ``Script.error``."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return Script(name, error=f"no JSON written ({os.path.basename(path)} missing)")
    except (OSError, ValueError) as e:
        return Script(name, error=f"unreadable JSON {os.path.basename(path)}: {e}")
    return summarize(name, doc)


def fmt(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"


def rich_tables(scripts: list[Script]):
    """One rich Table of every case's headline and one of every goal line."""
    from rich.table import Table

    t = Table(title="benchmark cases (median over rounds)", title_justify="left")
    for col in ("benchmark", "case", "group", "metric", "value", "also"):
        t.add_column(col, overflow="fold", justify="right" if col == "value" else "left")
    for s in scripts:
        if s.error:
            t.add_row(s.name, f"[yellow]{s.error}[/]", "", "", "", "")
        for c in s.cases:
            name = f"[bold cyan]{c.case}[/]" if c.edgepipe else c.case
            t.add_row(s.name, name, c.group, c.metric, fmt(c.value) if c.error == "" else f"[red]{c.error}[/]", c.extra)
    g = Table(title="goals", title_justify="left")
    for col in ("benchmark", "round", "verdict", "goal", "detail"):
        g.add_column(col, overflow="fold")
    style = {"PASS": "green", "FAIL": "red", "SKIPPED": "yellow", "?": "yellow"}
    for s in scripts:
        for x in s.goals:
            g.add_row(s.name, x.round, f"[{style[x.verdict]}]{x.verdict}[/]", x.name, x.detail)
    return t, g


def markdown(scripts: list[Script]) -> str:
    def esc(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    out = ["## Cases (headline number, median over rounds; **bold**: edgepipe)", "",
           "| benchmark | case | group | metric | value | also |", "|---|---|---|---|--:|---|"]
    for s in scripts:
        if s.error:
            out.append(f"| {s.name} | _{esc(s.error)}_ | | | | |")
        for c in s.cases:
            case = f"**{esc(c.case)}**" if c.edgepipe else esc(c.case)
            out.append(f"| {s.name} | {case} | {esc(c.group)} | {c.metric} | "
                       f"{fmt(c.value) if not c.error else 'failed: ' + esc(c.error)} | {c.extra} |")
    missing = missing_peers(scripts)
    if missing:
        out += ["", "## Peers missing", "",
                f"Not installed, so not measured (goals against them are SKIPPED): install them with "
                f"`{BENCH_INSTALL}` from the checkout.", ""]
        out += [f"- {esc(p)} ({b})" for b, p in missing]
    out += ["", "## Goals", "", "| benchmark | round | verdict | goal | detail |", "|---|---|---|---|---|"]
    for s in scripts:
        for g in s.goals:
            out.append(f"| {s.name} | {g.round} | {g.verdict} | {esc(g.name)} | {esc(g.detail)} |")
    plots = [s for s in scripts if any(c.value is not None for c in s.cases)]
    if plots:
        out += ["", "## Plots", ""] + [f"![{s.name}]({s.name}.png)" for s in plots]
    return "\n".join(out) + "\n"


def as_json(scripts: list[Script]) -> dict:
    from dataclasses import asdict

    return {"scripts": [asdict(s) for s in scripts]}


def plot(s: Script, path: str) -> bool:
    """A horizontal bar chart of the script's headline numbers, one panel per metric, edgepipe cases in
    orange against grey peers; False (no file) when no case has a number."""
    cases = [c for c in s.cases if c.value is not None]
    if not cases:
        return False
    plt = pyplot("drawing the report's PNG")

    metrics = list(dict.fromkeys(c.metric for c in cases))
    sizes = [sum(c.metric == m for c in cases) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 0.35 * sum(sizes) + 1.2 * len(metrics) + 0.5),
                             gridspec_kw={"height_ratios": sizes}, squeeze=False)
    for ax, m in zip(axes[:, 0], metrics):
        cs = [c for c in cases if c.metric == m]
        ax.barh([c.case for c in cs], [c.value for c in cs],
                color=["tab:orange" if c.edgepipe else "tab:gray" for c in cs])
        ax.invert_yaxis()
        ax.set_xlabel(m + ("  (lower is better)" if m.endswith(("_ns", "_us", "p99", "median", "min")) else ""))
        if m.endswith("_ns") and max(c.value for c in cs) > 50 * max(min(c.value for c in cs), 1e-9):
            ax.set_xscale("log")
        for i, c in enumerate(cs):
            ax.annotate(fmt(c.value), (c.value, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    axes[0, 0].set_title(f"{s.name} (orange: edgepipe)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------
# the command


def bench_dir(given: str | None) -> str | None:
    cands = [given] if given else [os.path.join(os.getcwd(), "benchmarks"),
                                   os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")]
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "_common.py")):
            return c
    return None


def bench_flags(path: str) -> tuple[bool, bool]:
    """(takes --seconds, takes --json) for one benchmark script, read from its source: a script built on
    _common.parse_args takes both; one with its own argparse takes what it declares; one without argparse
    gets --seconds (it may read sys.argv itself) and no --json."""
    try:
        with open(path) as f:
            src = f.read()
    except OSError:
        return True, False
    if "C.parse_args(" in src or "_common.parse_args(" in src:
        return True, True
    if "ArgumentParser(" in src:
        return bool(re.search(r"""['"]--seconds['"]""", src)), bool(re.search(r"""['"]--json['"]""", src))
    return True, False


def run_bench(args, console) -> int:
    """``edgepipe bench``: run every benchmark script of ``args.dir`` (or the checkout's), write the report
    into ``args.out``; exit status 0 if every script exited 0."""
    d = bench_dir(args.dir)
    if d is None:
        print("edgepipe bench: no benchmarks/ directory found (run it from a source checkout, or pass --dir)",
              file=sys.stderr)
        return 1
    # _*.py are helpers; test_*.py are pytest-benchmark files (run them with pytest)
    scripts = sorted(p for p in glob.glob(os.path.join(d, "*.py"))
                     if not os.path.basename(p).startswith(("_", "test_")))
    if args.only:
        scripts = [p for p in scripts if any(o in os.path.basename(p) for o in args.only)]
    if args.list:
        for p in scripts:
            print(os.path.basename(p))
        return 0
    os.makedirs(args.out, exist_ok=True)
    rows = []
    summaries = []
    for p in scripts:
        name = os.path.basename(p)[:-3]
        takes_seconds, takes_json = bench_flags(p)
        jpath = os.path.abspath(os.path.join(args.out, f"{name}.json"))
        if takes_json and os.path.exists(jpath):
            os.unlink(jpath)  # a stale file from an earlier run must not pass for this run's numbers
        cmd = [sys.executable, p] + (["--seconds", str(args.seconds)] if takes_seconds else []) + \
              (["--json", jpath] if takes_json else [])
        print(f"bench: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=os.path.dirname(d))
            code, out = r.returncode, r.stdout + ("\n--- stderr ---\n" + r.stderr if r.stderr.strip() else "")
        except subprocess.TimeoutExpired as e:
            code, out = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        dt = time.monotonic() - t0
        with open(os.path.join(args.out, f"{name}.txt"), "w") as f:
            f.write(out)
        rows.append((name, code, dt))
        print(f"bench: {name}: exit {code} in {dt:.1f} s", flush=True)
        if takes_json:
            s = load(name, jpath)
        else:
            s = Script(name, error="no --json option: numbers only in its output file")
        if s.error and code != 0:
            s.error += f" (exit {code})"
        if plot(s, os.path.join(args.out, f"{name}.png")):
            print(f"bench: {name}: plot {name}.png", flush=True)
        summaries.append(s)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(markdown(summaries))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(as_json(summaries), f, indent=1)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(f"# edgepipe bench\n\n`edgepipe bench --seconds {args.seconds}`; one file per benchmark holds its "
                f"full output (machine, numbers, goals), one .json its numbers.\n\n"
                f"| benchmark | exit | wall s |\n|---|--:|--:|\n")
        for name, code, dt in rows:
            f.write(f"| [{name}]({name}.txt) | {code} | {dt:.1f} |\n")
        f.write("\n![wall time per benchmark](bench.png)\n\n")
        f.write(markdown(summaries))
    plt = pyplot("drawing the report's PNG")

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    ax.barh([r[0] for r in rows], [r[2] for r in rows], color=["tab:green" if r[1] == 0 else "tab:red" for r in rows])
    ax.set_xlabel("wall time (s); red: non-zero exit")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "bench.png"), dpi=90)
    plt.close(fig)
    for t in rich_tables(summaries):
        console.print(t)
    missing = missing_peers(summaries)
    if missing:
        print(f"bench: peers missing (not installed, so not measured; goals against them are SKIPPED): "
              f"{', '.join(f'{p} ({b})' for b, p in missing)}; install them with {BENCH_INSTALL}")
    print(f"bench: report in {os.path.join(args.out, 'README.md')} (summary.md, summary.json, one PNG per benchmark)")
    return 0 if all(r[1] == 0 for r in rows) else 1
