"""``edgepipe record`` and ``edgepipe info``: MCAP recordings of a pipeline's links or of named rings, the
flight recorder, recovery of a cut-off file, and what a recording holds.

    edgepipe record PIPELINE.toml -o run.mcap [--links a,b] [--seconds N]   run it, recording its links
    edgepipe record --ring NAME[=TOPIC] ... -o run.mcap [--seconds N]      record named rings (as consumer)
    edgepipe record --attach demo --links frames,samples -o run.mcap       record the taps of a running pipeline
    edgepipe record --socket PIPELINE.sock [--links a,b] -o run.mcap       (found by name, or by its control socket)
    edgepipe record ... --pre-buffer 10s --post 5s --trigger budget -o events/   flight recorder
    edgepipe record --recover FILE [-o OUT]                                 keep a cut-off file's complete chunks
    edgepipe info FILE                                                      channels, counts, span, drops

Exit status: 0 done; 1 the recording failed (a full disk, a failed stage) or the file cannot be read; 2 bad
usage or a pipeline file that does not validate.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="edgepipe").add_subparsers(dest="command")
>>> add_subcommand(sub)
>>> a = sub.choices["record"].parse_args(["p.toml", "-o", "x.mcap", "--pre-buffer", "500ms"])
>>> a.pipeline, a.out, a.pre_buffer
('p.toml', 'x.mcap', 0.5)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from edgepipe.errors import ConfigError, EdgepipeError, RecordingError, TapNotFoundError
from edgepipe.pipeline.config import StageSpec, load_config, tap_filler, validate
from edgepipe.pipeline.tap import TAP_SUFFIX, tap_link
from edgepipe.record.reader import recording_info, recover_recording
from edgepipe.record.recorder import TRIGGERS, FlightRecorder, Recorder
from edgepipe.record.stage import topic_of
from edgepipe.record.writer import McapRecorder
from edgepipe.ring import Ring

__all__: list[str] = []  # subcommands, not API


def duration_s(text: str) -> float:
    """``"10s"``, ``"500ms"``, ``"2m"`` or a plain number of seconds."""
    t = text.strip().lower()
    for suffix, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            t, mult = t[: -len(suffix)], scale
            break
    else:
        mult = 1.0
    try:
        v = float(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 10s, 500ms, 2m)") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"a duration must be >= 0, got {text!r}")
    return v


def add_subcommand(sub) -> None:
    """Register ``edgepipe record`` and ``edgepipe info`` (called by edgepipe.cli.main)."""
    p = sub.add_parser("record", help="record a pipeline's links or named rings into MCAP (or a flight recorder)",
                       description="Record into MCAP (Foxglove, the mcap CLI and ROS 2 read it). With a pipeline "
                                   "file: run it with taps on its links (--links; default every link a tap can sit "
                                   "on) and a record stage; with --ring: attach named rings as their consumer; "
                                   "with --attach NAME or --socket PATH: record the taps (tap = true links) of a "
                                   "pipeline that is already running, from now until it ends or Ctrl-C. "
                                   "--pre-buffer makes it a flight recorder writing one file per event into the "
                                   "directory -o. --recover FILE copies a cut-off recording's complete chunks.")
    p.add_argument("pipeline", nargs="?", help="a pipeline file (.toml) to run and record")
    p.add_argument("-o", "--out", help="the .mcap file (flight recorder: a directory); default run.mcap / events/")
    p.add_argument("--ring", action="append", default=[], metavar="NAME[=TOPIC]",
                   help="record the named ring /dev/shm/edgepipe.NAME as topic TOPIC (default /NAME); repeatable")
    p.add_argument("--attach", metavar="NAME", nargs="?", const="", default=None,
                   help="record the taps (links with tap = true) of the running pipeline NAME (edgepipe run / "
                        "demo); without NAME the only one running")
    p.add_argument("--socket", metavar="PATH", help="as --attach, the pipeline found by its control socket "
                                                   "(pipeline-*.sock)")
    p.add_argument("--links", help="comma-separated links of the pipeline to record (default: every tappable one; "
                                   "with --attach/--socket every link that has a tap)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--compression", choices=("zstd", "lz4", "none"), default="zstd", help="chunk compression")
    p.add_argument("--split-mb", type=float, default=0.0, help="start a new file part every N MB")
    p.add_argument("--split", type=duration_s, default=0.0, metavar="DURATION",
                   help="start a new file part every DURATION (e.g. 60s)")
    p.add_argument("--allow", action="append", default=[], metavar="PATTERN", help="record only these topics")
    p.add_argument("--deny", action="append", default=[], metavar="PATTERN", help="leave these topics out")
    p.add_argument("--tap-capacity", type=int, default=None, help="bytes of each tap's side ring (default: the link's)")
    f = p.add_argument_group("flight recorder")
    f.add_argument("--pre-buffer", type=duration_s, default=0.0, metavar="DURATION",
                   help="keep the last DURATION in memory and write it when a trigger fires")
    f.add_argument("--post", type=duration_s, default=5.0, metavar="DURATION", help="written after a trigger (5s)")
    f.add_argument("--trigger", default="budget,stop,error,signal",
                   help=f"comma-separated triggers: {', '.join(TRIGGERS)} (signal = SIGUSR1)")
    f.add_argument("--budget-ms", type=float, default=0.0,
                   help="end-to-end budget for the budget trigger (default: the pipeline's end_to_end budget)")
    f.add_argument("--max-files", type=int, default=20, help="event files kept (oldest removed first)")
    f.add_argument("--max-total-mb", type=float, default=1024.0, help="MB of event files kept")
    f.add_argument("--max-memory-mb", type=float, default=64.0, help="bound of the in-memory buffer")
    p.add_argument("--recover", metavar="FILE", help="recover a cut-off recording up to its last complete chunk")
    p.set_defaults(func=cmd_record)
    i = sub.add_parser("info", help="channels, message counts, time span and drops of an MCAP recording",
                       description="Print a recording's channels (topic, schema, messages), time span, chunks and "
                                   "compression, and what the taps dropped. Exit 1 if the file is missing, not "
                                   "MCAP, or cut off (then run edgepipe record --recover FILE).")
    i.add_argument("file", help="the .mcap recording")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(func=cmd_info)


def _err(what: str, e: BaseException) -> int:
    print(f"edgepipe {what}: {type(e).__name__}: {e}", file=sys.stderr)
    return 1


def cmd_info(args: argparse.Namespace) -> int:
    try:
        i = recording_info(args.file)
    except RecordingError as e:
        return _err("info", e)
    if args.json:
        print(json.dumps({"path": i.path, "profile": i.profile, "library": i.library, "messages": i.messages,
                          "start_ns": i.start_ns, "end_ns": i.end_ns, "duration_s": i.duration_s,
                          "chunks": i.chunks, "compression": i.compression,
                          "channels": [c.__dict__ for c in i.channels],
                          "drops": [{"topic": t, "reason": r, "count": n} for (t, r), n in sorted(i.drops.items())],
                          "clock": i.clock, "recording": i.recording}, indent=2))
        return 0
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(i.start_ns / 1e9)) if i.messages else "-"
    print(f"{i.path}: {i.messages} messages in {len(i.channels)} channels, {i.duration_s:.3f} s from {start} UTC, "
          f"{i.chunks} chunks ({i.compression}), written by {i.library or '?'}"
          + (f" (profile {i.profile})" if i.profile else ""))
    w = max([len(c.topic) for c in i.channels] + [5])
    print(f"  {'topic':<{w}}  {'messages':>9}  {'rate/s':>8}  schema")
    for c in i.channels:
        rate = c.messages / i.duration_s if i.duration_s else 0.0
        print(f"  {c.topic:<{w}}  {c.messages:>9}  {rate:>8.1f}  {c.schema}")
    dropped = {k: n for k, n in i.drops.items() if n}
    if dropped:
        print("dropped (not recorded):")
        for (t, r), n in sorted(dropped.items()):
            print(f"  {t:<{w}}  {n:>9}  {r}")
    elif i.drops:
        print(f"dropped: nothing (counted for {', '.join(sorted({t for t, _r in i.drops}))})")
    if i.clock:
        print(f"clock: wall = CLOCK_MONOTONIC_RAW + {i.clock.get('offset_ns')} ns "
              f"(mapping uncertainty {i.clock.get('uncertainty_ns')} ns)")
    return 0


def _flight(args, out: str, budget_ns: int | None) -> FlightRecorder:
    triggers = [t.strip() for t in args.trigger.split(",") if t.strip()]
    budgets = {"*": budget_ns} if budget_ns else {}
    return FlightRecorder(out, pre_s=args.pre_buffer, post_s=args.post, budgets_ns=budgets, triggers=triggers,
                          max_files=args.max_files, max_total_bytes=int(args.max_total_mb * 1e6),
                          max_memory_bytes=int(args.max_memory_mb * 1e6), compression=args.compression,
                          allow=args.allow, deny=args.deny)


def cmd_record(args: argparse.Namespace) -> int:
    if args.recover:
        try:
            r = recover_recording(args.recover, args.out, compression=args.compression)
        except RecordingError as e:
            return _err("record --recover", e)
        print(f"recovered {r.messages} messages in {r.channels} channels from {args.recover} into {r.path} "
              f"(reading stopped at: {r.stopped})")
        return 0
    attach = args.attach is not None or args.socket is not None
    if [bool(args.pipeline), bool(args.ring), attach].count(True) != 1:
        print("edgepipe record: give a pipeline file, --ring NAME or --attach NAME / --socket PATH (one of them), "
              "or --recover FILE", file=sys.stderr)
        return 2
    try:
        triggers = [t.strip() for t in args.trigger.split(",") if t.strip()]
        bad = [t for t in triggers if t not in TRIGGERS]
        if bad:
            raise ValueError(f"--trigger: unknown trigger {bad[0]!r}; triggers are {', '.join(TRIGGERS)}")
        if args.pipeline:
            return _record_pipeline(args)
        if attach:
            return _record_attached(args)
        return _record_rings(args)
    except ConfigError as e:
        print(f"edgepipe record: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"edgepipe record: {e}", file=sys.stderr)
        return 2


def _record_attached(args) -> int:
    from edgepipe.pipeline.attach import attach_taps

    links = [x.strip() for x in args.links.split(",") if x.strip()] if args.links else None
    try:
        att = attach_taps(links, socket=args.socket, pipeline=args.attach or None)
    except TapNotFoundError as e:  # a link name that cannot be recorded: bad usage
        _err("record", e)
        return 2
    except EdgepipeError as e:
        return _err("record", e)
    with att:
        sources = {topic_of(link): r for link, r in att.readers.items()}
        before = {topic_of(link): n for link, n in att.drops_before.items()}
        stale = sum(att.stale.values())
        print(f"recording the taps of {', '.join(att.readers)} of the pipeline at {att.socket}"
              + (f" ({stale} records queued before the attach skipped)" if stale else "")
              + "; stop with Ctrl-C" + (f" (or after {args.seconds:g} s)" if args.seconds else ""), flush=True)
        return _record_sources(args, sources, drops_before=before, gone=att.supervisor_gone, what="tap(s)")


def _record_rings(args) -> int:
    sources, rings = {}, []
    try:
        for spec in args.ring:
            name, _, topic = spec.partition("=")
            ring = Ring.attach(name, wait_s=5.0)
            rings.append(ring)
            sources[topic or "/" + name] = ring.reader()
        return _record_sources(args, sources, what="ring(s)")
    except EdgepipeError as e:
        return _err("record", e)
    finally:
        for r in rings:
            r.close()


def _record_sources(args, sources: dict, *, drops_before: dict | None = None, gone=None, what: str) -> int:
    """Record ``sources`` ({topic: RingReader}) until they end, --seconds pass, Ctrl-C/SIGTERM, or ``gone()``
    (the pipeline attached to went away)."""
    flight = args.pre_buffer > 0
    out = args.out or ("events" if flight else "run.mcap")
    try:
        if flight:
            sink = _flight(args, out, int(args.budget_ms * 1e6) if args.budget_ms else None)
        else:
            sink = McapRecorder(out, compression=args.compression, split_bytes=int(args.split_mb * 1e6),
                                split_s=args.split, allow=args.allow, deny=args.deny)
        rec = Recorder(sink, sources, on_error=(lambda t: sink.trigger(f"error-{t.strip('/')}")) if flight else None,
                       drops_before=drops_before)
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        ended = [False]

        def until() -> bool:
            if deadline is not None and time.monotonic() >= deadline:
                return True
            if gone is not None and gone():
                ended[0] = True
                return True
            return False

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda s, f: rec.stop())
        if flight:
            old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda s, f: sink.trigger("signal"))
        try:
            rec.run(until=until if (deadline or gone) else None)
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            rec.sink.close("stop")
    except EdgepipeError as e:
        return _err("record", e)
    if ended[0]:
        print("the pipeline stopped (its control socket closed): recording ended", file=sys.stderr)
    if flight:
        print(f"flight recorder: {rec.records} records seen, {len(sink.events)} event file(s) in {out}"
              + (f", {len(sink.removed)} removed by the caps" if sink.removed else ""))
        for e in sink.events:
            print(f"  {e}")
    else:
        drops = sum(sink.drops.values())
        print(f"recorded {sink.messages} messages from {len(sources)} {what} into {', '.join(sink.paths)}"
              + (f"; the {what} refused {drops} records (full)" if drops else ""))
    return 0


def _record_pipeline(args) -> int:
    from edgepipe.pipeline.supervisor import Pipeline

    spec = load_config(args.pipeline)
    wanted = [x.strip() for x in args.links.split(",")] if args.links else None
    chosen, skipped = [], {}
    for name, ln in spec.links.items():
        if wanted is not None and name not in wanted:
            continue
        if wanted is None and name.endswith(TAP_SUFFIX) and name[: -len(TAP_SUFFIX)] in spec.links:
            continue  # the side link of a `tap = true` link: that link is recorded through it
        if ln.mode == "latest":
            skipped[name] = "a latest-only slot (frames by reference) cannot be tapped"
            continue
        try:
            tap_filler(spec, name)
        except ConfigError as e:
            if wanted is not None:
                raise
            skipped[name] = str(e).split(": ", 1)[-1]
            continue
        chosen.append(name)
    if wanted is not None:
        unknown = [x for x in wanted if x not in spec.links]
        if unknown:
            raise ConfigError(f"--links: no link {unknown[0]!r} in {args.pipeline}; its links: {', '.join(spec.links)}")
    if not chosen:
        raise ConfigError(f"{args.pipeline}: no link to record ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    for name in chosen:
        spec.links[name].tap = True
        if args.tap_capacity:
            spec.links[name].tap_capacity = args.tap_capacity
    flight = args.pre_buffer > 0
    out = os.path.abspath(args.out or ("events" if flight else "run.mcap"))
    budget_ms = args.budget_ms or spec.budgets_ms.get("end_to_end", 0.0)
    params = {"out": out, "compression": args.compression, "split_mb": args.split_mb, "split_s": args.split,
              "allow": args.allow, "deny": args.deny}
    if flight:
        params.update(pre_buffer_s=args.pre_buffer, post_s=args.post,
                      triggers=[t.strip() for t in args.trigger.split(",") if t.strip()],
                      budget_ms_e2e=float(budget_ms), max_files=args.max_files, max_total_mb=args.max_total_mb)
    name = "record"
    while any(s.name == name for s in spec.stages):
        name += "_"
    spec.stages.append(StageSpec(name=name, kind="record", inputs={ln: tap_link(ln) for ln in chosen}, params=params))
    validate(spec)
    for k, why in skipped.items():
        print(f"not recorded: link {k!r}: {why}", file=sys.stderr)
    pipe = Pipeline.from_spec(spec, stats_path=False)
    old = None
    if flight:
        def forward(s, f):
            pid = pipe.stage_stats().get(name, {}).get("pid")
            if pid:
                os.kill(pid, signal.SIGUSR1)
        old = signal.signal(signal.SIGUSR1, forward)
    print(f"recording {', '.join(chosen)} of {spec.name} into {out}; stop with Ctrl-C"
          + (f" (or after {args.seconds:g} s)" if args.seconds else ""))
    try:
        code = pipe.run(seconds=args.seconds)
    finally:
        if old is not None:
            signal.signal(signal.SIGUSR1, old)
    st = pipe.stage_stats().get(name, {})
    if st.get("state") == "failed":
        print(f"edgepipe record: the record stage failed: {st.get('error')}", file=sys.stderr)
        return 1
    links = pipe.link_stats()
    drops = {ln: links.get(tap_link(ln), {}).get("dropped", 0) for ln in chosen}
    print(f"recorded {st.get('recorded', 0)} records into {out}"
          + (f"; taps dropped {drops}" if any(drops.values()) else "; nothing dropped")
          + (f"; {st.get('events', 0)} event file(s)" if flight else ""))
    return code
