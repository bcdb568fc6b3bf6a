"""The ``edgepipe`` command (also ``python -m edgepipe``): run pipelines, see where the time goes, check the
machine, and look at or clean up shared memory.

    edgepipe demo [--seconds N]   the bundled pipeline on recorded data, then its latency report
    edgepipe run FILE.toml        run a pipeline file until it ends, --seconds pass, or Ctrl-C
    edgepipe kinds [NAME]         the stage kinds a pipeline file can use; one kind's ports and parameters
    edgepipe report [PATH]        the budget table (and PNG) of a finished run's report.json
    edgepipe view [FILE]          a pipeline (default: the demo) with a live browser view on 127.0.0.1:8080
    edgepipe top                  live view of a running pipeline: rings, stages, latency vs budget
    edgepipe doctor               check /dev/shm, limits, futex, memfd, CPUs, ONNX Runtime, OpenCV
    edgepipe bench                run the benchmarks in benchmarks/ and write a report
    edgepipe ls                   every /dev/shm/edgepipe.* segment with its ring status
    edgepipe status NAME          one ring's control block
    edgepipe cleanup [--yes]      stale named rings, sockets and stats files of dead processes
    edgepipe quantize OUT.onnx    static INT8 text detector calibrated on real frames (edgepipe.stages.inference.quantize)
    edgepipe record ...           record a pipeline's links or named rings into MCAP; flight recorder; --recover
    edgepipe info FILE.mcap       a recording's channels, counts, time span and drops
    edgepipe replay FILE.mcap     publish a recording into rings or a pipeline; --compare with a golden run
    edgepipe bridge --connect EP  watch bridged links over zenoh (records, rates, drops, ends alive)

Exit status: 0 success (a pipeline stopped by Ctrl-C or SIGTERM after draining is a success); 1 a stage failed
for good, a check failed, or nothing to show; 2 bad usage or a pipeline file that does not validate (the message
names file, line and key).

``cleanup`` only removes segments it can read as rings and whose creator, producer and consumer pids are all
gone, sockets nobody listens on, and stats files of supervisors that are gone; it lists them and removes them
only with ``--yes``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import socket
import sys

from edgepipe.errors import ConfigError
from edgepipe._data import data_path
from edgepipe.cli._segments import alive, describe, ring_pids, segment_status
from edgepipe.shm import SharedRegion, list_segments, validate_name

__all__ = ["main"]


def positive_seconds(text: str) -> float:
    """argparse type of a duration: a finite number of seconds > 0 (0 and negatives are usage errors)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return v


def segment_name(text: str) -> str:
    """argparse type of a segment name (the part after /dev/shm/edgepipe.): a bad one is a usage error."""
    try:
        return validate_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_ls(args: argparse.Namespace) -> int:
    names = list_segments()
    if not names:
        print("no edgepipe segments in /dev/shm")
    for name in names:
        print(describe(name, segment_status(name)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    s = segment_status(args.name)
    if isinstance(s, str):
        print(f"{args.name}: {s}", file=sys.stderr)
        return 1
    for k, v in vars(s).items():
        print(f"{k:18} {v}")
    return 0


def _stale_files() -> list[tuple[str, str]]:
    """(path, why) of control sockets nobody listens on and stats files of supervisors that are gone."""
    from edgepipe.pipeline.supervisor import runtime_dir

    out = []
    d = runtime_dir()
    for path in sorted(glob.glob(os.path.join(d, "*.sock"))):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(path)
        except ConnectionRefusedError:
            out.append((path, "socket nobody listens on"))
        except OSError:
            pass  # busy, permission: leave it
        finally:
            probe.close()
    for path in sorted(glob.glob(os.path.join(d, "pipeline-*.json*"))):
        m = re.search(r"pipeline-(\d+)-", os.path.basename(path))
        if m and not alive(int(m.group(1))):
            out.append((path, f"stats of supervisor pid {m.group(1)}, which is gone"))
    return out


def cmd_cleanup(args: argparse.Namespace) -> int:
    act = args.yes and not args.dry_run
    removed = 0
    for name in list_segments():
        s = segment_status(name)
        if isinstance(s, str) or any(alive(p) for p in ring_pids(s)):
            print(f"kept     {describe(name, s)}")
            continue
        if act:
            SharedRegion.attach(name).close()  # proves it is still there and ours to open
            os.unlink(os.path.join("/dev/shm", "edgepipe." + name))
        removed += 1
        print(f"{'removed ' if act else 'would remove'} {name}")
    for path, why in _stale_files():
        if act:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
        removed += 1
        print(f"{'removed ' if act else 'would remove'} {path} ({why})")
    print(f"{removed} item(s) {'removed' if act else 'to remove; run again with --yes to remove them'}")
    return 0


# ---------------------------------------------------------------------------------------------------
# pipelines


def progress_line(live: dict) -> str:
    """One line of live progress from a ``Pipeline.live()`` snapshot: uptime, each path's end-to-end p50/p99,
    ring rates, sources short of their rate, restarts, and stage states other than running (all formatted,
    never a raw dict).

    >>> progress_line({"uptime_s": 2.0, "links": {"a": {"rate_hz": 9.6}}, "parts": [
    ...     {"part": "end_to_end[s]", "count": 4, "p50_ms": 0.5, "p99_ms": 1.25}],
    ...     "stages": {"s": {"state": "running"}, "t": {"state": "done"}, "u": {"state": "done"}}})
    '   2.0 s  e2e s p50 0.50 ms p99 1.25 ms (4)  |  a 10/s  |  2 done, 1 running'
    """
    from edgepipe.pipeline.report import E2E, health

    paths = [x for x in live["parts"] if x["part"].startswith(E2E + "[")] or \
        [x for x in live["parts"] if x["part"] == E2E]
    lat = "; ".join(f"{x['part'][len(E2E) + 1:-1] or 'end to end'} p50 {x['p50_ms']:.2f} ms p99 "
                    f"{x['p99_ms']:.2f} ms ({x['count']})" for x in paths if x["count"])
    states: dict[str, int] = {}
    for st in live["stages"].values():
        states[st["state"]] = states.get(st["state"], 0) + 1
    rates = ", ".join(f"{k} {v['rate_hz']:.0f}/s" for k, v in live["links"].items())
    short = []
    for h in health(live["stages"]):
        if h.get("missed_pct") is not None and h["missed_pct"] > 0:
            short.append(f"{h['stage']} {h['achieved'] or 0:g} Hz, {h['missed_pct']:.1f} % deadlines missed")
        elif not h["ok"] and h.get("achieved") is not None:
            short.append(f"{h['stage']} {h['achieved']:g} of {h['configured'] or 0:g} {h['unit']}")
    restarts = sum(s.get("restarts", 0) or 0 for s in live["stages"].values())
    return (f"{live['uptime_s']:6.1f} s  {'e2e ' + lat if lat else 'no records at a sink yet'}  |  {rates}"
            + (f"  |  {'; '.join(short)}" if short else "")
            + (f"  |  restarts {restarts}" if restarts else "")
            + ("" if set(states) <= {"running"} else
               "  |  " + ", ".join(f"{n} {st}" for st, n in sorted(states.items()))))


def _progress(console):
    """A one-line progress printer for Pipeline.run(on_tick=...)."""
    from rich.markup import escape

    def tick(p) -> None:
        console.print(escape(progress_line(p.live())), highlight=False)
    return tick


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def _run_pipeline(pipe, args, console, title: str) -> int:
    from edgepipe.pipeline.report import render_table

    console.print(f"[bold]{title}[/]: {len(pipe.children)} stages, {len(pipe.link_names)} links; "
                  f"stop with Ctrl-C" + (f" (or after {args.seconds:g} s)" if args.seconds else ""), highlight=False)
    code = pipe.run(seconds=args.seconds, on_tick=None if args.quiet else _progress(console), tick_s=1.0)
    if pipe._start_error is not None and not pipe._t_end:
        return 1
    rep_dir = args.report_dir or pipe.spec.report_dir or "edgepipe-report"
    paths = pipe.write_report(rep_dir, png=not args.no_png)
    render_table(pipe.report(), console)
    st = pipe.stage_stats()
    failed = {k: v for k, v in st.items() if v["state"] == "failed"}
    for k, v in failed.items():
        console.print(f"[red]stage {k} failed[/]: {v.get('error')}", highlight=False)
    console.print(f"report: {paths['json']}" + (f"  plot: {paths['png']}" if "png" in paths else ""), highlight=False)
    if "png_skipped" in paths:
        console.print(f"no plot: {paths['png_skipped']}", highlight=False)
    console.print(f"exit status {code}" + (f" ({pipe._failure})" if pipe._failure else ""), highlight=False)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from edgepipe.pipeline.supervisor import Pipeline

    try:
        pipe = Pipeline.from_toml(args.file)
    except ConfigError as e:
        print(f"edgepipe run: {e}", file=sys.stderr)
        return 2
    return _run_pipeline(pipe, args, _console(), f"running {pipe.spec.name} from {args.file}")


def demo_spec():
    """The bundled demo pipeline (edgepipe/data/demo.toml) cut down to the stages whose kinds are available,
    with the names of the missing ones and why."""
    from edgepipe.pipeline.config import kind_available, load_config

    path = str(data_path("demo.toml"))
    spec = load_config(path)
    missing = {}
    for s in spec.stages:
        why = kind_available(s.kind) if s.kind else None
        if why:
            missing[s.name] = why
    # drop stages whose inputs come (transitively) from a missing stage
    changed = True
    while changed:
        changed = False
        producer = {ln: s.name for s in spec.stages for ln in s.outputs.values()}
        consumer = {ln: s.name for s in spec.stages for ln in s.inputs.values()}
        for s in spec.stages:
            if s.name in missing:
                continue
            if any(producer.get(ln) in missing for ln in s.inputs.values()):
                missing[s.name] = "its input comes from a missing stage"
                changed = True
            elif s.outputs and all(consumer.get(ln) in missing for ln in s.outputs.values()):
                missing[s.name] = "its output goes only to missing stages"
                changed = True
    if missing:
        from edgepipe.pipeline.config import validate

        spec.stages = [s for s in spec.stages if s.name not in missing]
        used = {ln for s in spec.stages for ln in (*s.inputs.values(), *s.outputs.values())}
        spec.links = {k: v for k, v in spec.links.items() if k in used}
        names = {s.name for s in spec.stages} | set(spec.links) | {"end_to_end"}
        spec.budgets_ms = {k: v for k, v in spec.budgets_ms.items() if k.split(".")[0] in names}
        validate(spec)
    return spec, missing


def cmd_demo(args: argparse.Namespace) -> int:
    from edgepipe.pipeline.supervisor import Pipeline

    console = _console()
    try:
        spec, missing = demo_spec()
    except ConfigError as e:
        print(f"edgepipe demo: the bundled pipeline does not validate: {e}", file=sys.stderr)
        return 2
    for name, why in missing.items():
        console.print(f"[yellow]demo: stage {name!r} left out[/]: {why}", highlight=False)
    if not spec.stages:
        print("edgepipe demo: no stage of the demo can run in this install", file=sys.stderr)
        return 1
    if args.view:
        try:
            _attach_view(spec, args)
        except ConfigError as e:
            print(f"edgepipe demo --view: {e}", file=sys.stderr)
            return 2
    return _run_pipeline(Pipeline.from_spec(spec), args, console,
                         "edgepipe demo (recorded video + IMU, see edgepipe/data/demo.toml)")


def _attach_view(spec, args) -> None:
    from edgepipe.view.attach import attach_view

    attach_view(spec, frames=args.frames, detections=args.detections, imu=args.imu, host=args.host,
                port=args.port, token=args.token, max_fps=args.max_fps, max_clients=args.max_clients)


def cmd_view(args: argparse.Namespace) -> int:
    from edgepipe.pipeline.config import load_config
    from edgepipe.pipeline.supervisor import Pipeline

    console = _console()
    try:
        if args.file is None:
            spec, missing = demo_spec()
            for name, why in missing.items():
                console.print(f"[yellow]view: demo stage {name!r} left out[/]: {why}", highlight=False)
        else:
            spec = load_config(args.file)
        _attach_view(spec, args)
        pipe = Pipeline.from_spec(spec)
    except ConfigError as e:
        print(f"edgepipe view: {e}", file=sys.stderr)
        return 2
    return _run_pipeline(pipe, args, console, f"{spec.name} with a live view")


def cmd_report(args: argparse.Namespace) -> int:
    from edgepipe.pipeline.report import load_report, render_png, render_table

    try:
        rep = load_report(args.path)
    except (OSError, ValueError) as e:
        print(f"edgepipe report: cannot read a report from {args.path!r}: {e}", file=sys.stderr)
        return 1
    console = _console()
    meta = rep.get("meta", {})
    console.print(f"[bold]{meta.get('name', '?')}[/]: {meta.get('duration_s', '?')} s, exit status "
                  f"{meta.get('status')}" + (f", {meta['failure']}" if meta.get("failure") else ""), highlight=False)
    render_table(rep, console)
    if args.png:
        console.print(f"plot: {render_png(rep, args.png)}", highlight=False)
    if args.json:
        print(json.dumps({k: v for k, v in rep.items() if k != "series"}, indent=1))
    return 0 if rep.get("ok", True) or not args.check else 1


def cmd_top(args: argparse.Namespace) -> int:
    from edgepipe.cli.top import run_top

    return run_top(args.file, interval_s=args.interval, once=args.once, console=_console(), socket=args.socket)


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.table import Table

    from edgepipe.cli.doctor import run_doctor

    checks = run_doctor()
    console = _console()
    t = Table(title="edgepipe doctor", title_justify="left")
    for c in ("check", "status", "found", "fix"):
        t.add_column(c, overflow="fold")
    style = {"ok": "green", "warn": "yellow", "fail": "red"}
    for c in checks:
        t.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.found, c.fix)
    console.print(t)
    fails = [c for c in checks if c.status == "fail"]
    warns = [c for c in checks if c.status == "warn"]
    console.print(f"{len(checks)} checks: {len(checks) - len(fails) - len(warns)} ok, {len(warns)} to improve, "
                  f"{len(fails)} failed", highlight=False)
    return 1 if fails else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgepipe.cli.bench import run_bench

    return run_bench(args, _console())


def _add_run_options(sp) -> None:
    sp.add_argument("--seconds", type=positive_seconds, default=None, metavar="N",
                    help="stop (in order, draining what is in flight) after N seconds; default: run until the "
                         "sources end or Ctrl-C")
    sp.add_argument("--report-dir", metavar="DIR",
                    help="where report.json and report.png go (default: the file's report_dir, else ./edgepipe-report)")
    sp.add_argument("--no-png", action="store_true", help="skip the PNG plot")
    sp.add_argument("-q", "--quiet", action="store_true", help="no live progress lines")


def _add_view_options(sp) -> None:
    sp.add_argument("--host", default="127.0.0.1", help="address the view listens on (default 127.0.0.1; "
                    "any other needs a token)")
    sp.add_argument("--port", type=int, default=8080, help="the view's TCP port (default 8080; 0: any free one)")
    sp.add_argument("--token", default=None, help="token every request must carry (?token=); generated when "
                    "--host is not loopback")
    sp.add_argument("--max-fps", type=float, default=15.0, help="pictures drawn and streamed a second, at most "
                    "(default 15)")
    sp.add_argument("--max-clients", type=int, default=4, help="MJPEG stream clients at once (default 4; one more "
                    "gets 503)")
    sp.add_argument("--frames", default=None, help="the frames link to show (default: the first capture stage's)")
    sp.add_argument("--detections", default=None, help="the detections link (default: the first inference "
                    "stage's)")
    sp.add_argument("--imu", default=None, help="the IMU link (default: the first imu stage's)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``edgepipe`` command (every command and option has help text)."""
    p = argparse.ArgumentParser(prog="edgepipe", description=__doc__.split("\n\nExit status")[0].replace("``", ""),
                                epilog="exit status: 0 success (also a run stopped by Ctrl-C or SIGTERM after "
                                       "draining), 1 failure (a stage failed for good, a check failed, nothing to "
                                       "show), 2 bad usage or an invalid pipeline file",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    d = sub.add_parser("demo", help="run the bundled pipeline on recorded data, then print its latency report",
                       description="Run the bundled pipeline (edgepipe/data/demo.toml): recorded page photos -> "
                                   "capture -> 2 ONNX Runtime workers with the bundled text detector -> a sink printing "
                                   "detections; the NGIMU recording -> the 1000 Hz C loop with AHRS -> a sink printing "
                                   "attitude. Stages whose modules are not installed are left out and named.")
    _add_run_options(d)
    d.add_argument("--view", action="store_true", help="also serve a live browser view (see `edgepipe view`)")
    _add_view_options(d)
    d.set_defaults(func=cmd_demo)
    v = sub.add_parser("view", help="run a pipeline (default: the demo) with a live browser view",
                       description="Run FILE (default: the bundled demo) with a live view added: a small HTTP "
                                   "server (aiohttp) on 127.0.0.1:8080 showing the frames with detections and a "
                                   "horizon from the IMU at each frame's capture time (/stream.mjpg, "
                                   "/snapshot.jpg, also ?action=stream|snapshot), latency per part against "
                                   "budget and counters (/, /metrics.json, /metrics in Prometheus text). It "
                                   "prints its URL once it listens. Binding beyond loopback needs a token "
                                   "(generated and printed once when not given).")
    v.add_argument("file", nargs="?", help="pipeline description (default: the bundled demo)")
    _add_run_options(v)
    _add_view_options(v)
    v.set_defaults(func=cmd_view)
    r = sub.add_parser("run", help="run a pipeline TOML file", description="Validate FILE completely (errors name "
                       "file, line and key; exit 2), then run it: rings, stage processes, restarts; Ctrl-C or "
                       "SIGTERM stops the sources and drains the rest (exit 0). Prints the budget report at the end.")
    r.add_argument("file", help="pipeline description (see edgepipe.pipeline.config for the format)")
    _add_run_options(r)
    r.set_defaults(func=cmd_run)
    rp = sub.add_parser("report", help="show the latency budget report of a finished run",
                        description="Print p50/p90/p99/p99.9/max per latency part against its budget from a "
                                    "report.json that `edgepipe run` or `edgepipe demo` wrote.")
    rp.add_argument("path", nargs="?", default="edgepipe-report",
                    help="report.json or the directory holding it (default: ./edgepipe-report)")
    rp.add_argument("--png", metavar="OUT.png", help="also draw the plot into OUT.png")
    rp.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    rp.add_argument("--check", action="store_true", help="exit 1 if any part is over its budget at p99")
    rp.set_defaults(func=cmd_report)
    t = sub.add_parser("top", help="live view of a running pipeline",
                       description="Per ring rate, fill and drops, per stage state and restarts, per latency part "
                                   "p50/p99 against budget, refreshed from the supervisor's published stats.")
    t.add_argument("file", nargs="?", help="a pipeline-*.json stats file (default: the newest running pipeline)")
    t.add_argument("--interval", type=positive_seconds, default=1.0, metavar="S", help="refresh every S seconds (default 1)")
    t.add_argument("--once", action="store_true", help="print one snapshot and exit")
    t.add_argument("--socket", metavar="PATH", help="read the pipeline's Stats from its control socket "
                                                   "(pipeline-*.sock) instead of its snapshot file")
    t.set_defaults(func=cmd_top)
    dc = sub.add_parser("doctor", help="check this machine for what edgepipe needs and say what to fix",
                        description="Checks /dev/shm (mount, size), memlock and rtprio limits, memfd and futex, "
                                    "CPUs, the RAW clock, stale segments, ONNX Runtime providers and OpenCV "
                                    "video backends. Exit 1 if a check failed.")
    dc.set_defaults(func=cmd_doctor)
    b = sub.add_parser("bench", help="run the benchmark scripts and write a report",
                       description="Run every benchmarks/*.py (from a source checkout; not _*.py or the pytest "
                                   "file test_*.py) with --seconds and --json, keep each one's output and JSON, and "
                                   "write into --out: README.md (exit codes, wall times, and a summary of every "
                                   "case's headline number and every PASS/FAIL goal line), summary.md, "
                                   "summary.json, and a bar chart per benchmark (NAME.png). The summary is also "
                                   "printed. A script without --json, or whose JSON cannot be read, is listed as such.")
    b.add_argument("--seconds", type=positive_seconds, default=2.0, help="passed to each benchmark that takes it (default 2)")
    b.add_argument("--out", default="edgepipe-bench", help="report directory (default ./edgepipe-bench)")
    b.add_argument("--only", action="append", metavar="NAME", help="only benchmarks whose file name contains NAME (repeatable)")
    b.add_argument("--dir", help="the benchmarks directory (default: ./benchmarks, or the source checkout's)")
    b.add_argument("--timeout", type=positive_seconds, default=600, help="seconds before a benchmark is killed (default 600)")
    b.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    b.set_defaults(func=_cmd_bench)
    sub.add_parser("ls", help="list edgepipe segments in /dev/shm with their ring status",
                   description="List every named edgepipe segment (/dev/shm/edgepipe.*) with its ring status: "
                               "capacity, bytes used, records queued, producer and consumer pids (and whether "
                               "each end closed), and which of its processes are still alive. Anonymous (memfd) "
                               "rings of pipelines have no name and are not listed.").set_defaults(func=cmd_ls)
    st = sub.add_parser("status", help="show one named ring's control block",
                        description="Print every field of one named ring's control block (/dev/shm/edgepipe.NAME): "
                                    "capacity, positions, record counts, pids, heartbeats, wait counters. Exit 1 if "
                                    "there is no such segment or it is not a ring, 2 for a name that cannot be one.")
    st.add_argument("name", type=segment_name, help="segment name (without the edgepipe. prefix)")
    st.set_defaults(func=cmd_status)
    cl = sub.add_parser("cleanup", help="remove stale rings, sockets and stats files (dry run unless --yes)",
                        description="List named rings whose every process is dead, control sockets nobody "
                                    "listens on and stats files of dead supervisors; remove them with --yes.")
    cl.add_argument("-y", "--yes", action="store_true", help="remove them (default: only list them)")
    cl.add_argument("-n", "--dry-run", action="store_true", help="only list them, even with --yes (the default)")
    cl.set_defaults(func=cmd_cleanup)
    from edgepipe.cli.bridge import add_subcommand as add_bridge
    from edgepipe.cli.kinds import add_subcommand as add_kinds
    from edgepipe.cli.quantize import add_subcommand as add_quantize
    from edgepipe.cli.record import add_subcommand as add_record
    from edgepipe.cli.replay import add_subcommand as add_replay

    add_bridge(sub)
    add_kinds(sub)
    add_quantize(sub)
    add_record(sub)
    add_replay(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgepipe`` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
