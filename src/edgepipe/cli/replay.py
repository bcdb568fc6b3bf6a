"""``edgepipe replay``: publish a recording into rings, or into a pipeline in place of its sources, and
optionally compare what the pipeline makes of it with a golden recording.

    edgepipe replay run.mcap --ring /samples=samples [--rate 2 | --rate 0] [--loop] [--start 5 --end 10]
    edgepipe replay run.mcap --ring /samples=samples --realtime         recorded pace under SCHED_FIFO
    edgepipe replay run.mcap --pipeline demo.toml [--compare golden.mcap [--keep-deadlines]] [--seconds N]

With ``--ring TOPIC=NAME`` the topic goes into a named ring ``/dev/shm/edgepipe.NAME`` (created, and removed
at the end), for a consumer that attaches by name. With ``--pipeline`` every source stage of the pipeline
whose outputs were all recorded (topic ``/<link>``) is replaced by a ``replay`` stage publishing them; the
rest of the pipeline runs as usual. ``--compare golden.mcap`` also records the pipeline's other links that
the golden recording has, and compares them with it (edgepipe.record.compare): exit 1 on a difference.

A comparison judges the pipeline's results, not the machine's load. So with ``--compare`` the replay is
lockstep (``--rate 0``: as fast as the pipeline takes the records, waiting for it, never dropping; an explicit
``--rate`` overrides that), and every stage that sheds input older than a deadline (a kind's
``deadline_param``: the inference stage's ``budget_ms``) runs without it (``--keep-deadlines`` keeps them).
A result only one side has was never made (a frame dropped, in either run), so it is not a difference of
content: results the golden run lacks are listed as not judged; results this run lacks are set against what
this run's stages and taps counted as dropped (printed), and are a difference (exit 1) only beyond that, as
a loss nobody counted. Nothing compared at all is exit 1 too.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="edgepipe").add_subparsers(dest="command")
>>> add_subcommand(sub)
>>> a = sub.choices["replay"].parse_args(["r.mcap", "--ring", "/imu=imu", "--rate", "0"])
>>> a.file, a.ring, a.rate
('r.mcap', ['/imu=imu'], 0.0)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time

from edgepipe.errors import ConfigError, EdgepipeError, RealtimeNotPermittedError, RecordingError
from edgepipe.pipeline.config import StageSpec, deadline_param, load_config, tap_filler, validate
from edgepipe.pipeline.tap import tap_link
from edgepipe.record.compare import compare_recordings
from edgepipe.record.reader import recording_info
from edgepipe.record.replay import realtime_priority, replay
from edgepipe.ring import Ring

__all__: list[str] = []  # a subcommand, not API


def add_subcommand(sub) -> None:
    """Register ``edgepipe replay`` (called by edgepipe.cli.main)."""
    p = sub.add_parser("replay", help="publish a recording into rings or a pipeline; --compare with a golden run",
                       description="Publish an MCAP recording's channels into named rings (--ring) or into a "
                                   "pipeline in place of its recorded sources (--pipeline), at the recorded pace, "
                                   "xN (--rate N) or lockstep (--rate 0: as fast as the consumers take them, "
                                   "nothing dropped). --compare GOLDEN records the pipeline's other links and "
                                   "diffs them with GOLDEN (boxes within --tolerance-px): exit 1 on a difference.")
    p.add_argument("file", help="the .mcap recording")
    p.add_argument("--ring", action="append", default=[], metavar="TOPIC=NAME",
                   help="publish TOPIC into the named ring NAME (created; repeatable)")
    p.add_argument("--ring-capacity", type=int, default=1 << 22, help="bytes of each ring --ring creates")
    p.add_argument("--wait-consumer", type=_seconds, default=60.0, metavar="SECONDS",
                   help="with --ring: wait up to SECONDS for each ring's consumer to open it before replaying "
                        "(exit 1 if none does; 0: do not wait, and what nobody reads by the end is lost with the "
                        "ring). Default 60")
    p.add_argument("--pipeline", help="a pipeline file whose recorded sources the replay replaces")
    p.add_argument("--rate", type=float, default=None,
                   help="1 the recorded pace, N times faster, 0 lockstep (default: 1; 0 with --compare)")
    p.add_argument("--loop", action="store_true", help="start over at the end")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the recording to start at")
    p.add_argument("--end", type=float, default=0.0, help="seconds into the recording to stop at (0: its end)")
    p.add_argument("--topics", help="comma-separated topics to replay (default: all that have a target)")
    p.add_argument("--realtime", type=int, nargs="?", const=10, default=0, metavar="PRIORITY",
                   help="replay under SCHED_FIFO (priority 10, or PRIORITY 1..99): keeps the recorded pace on a "
                        "loaded machine; needs CAP_SYS_NICE or an rtprio limit (an error says so otherwise)")
    p.add_argument("--keep-stamps", action="store_true", help="keep the recorded stamps (default: move them to now)")
    p.add_argument("--seconds", type=float, default=None, help="stop a --pipeline run after N seconds")
    p.add_argument("--compare", metavar="GOLDEN", help="compare the pipeline's results with this recording")
    p.add_argument("--keep-deadlines", action="store_true",
                   help="with --compare: keep the stages' deadlines (by default a comparison turns off the "
                        "dropping of input older than a deadline, e.g. the inference stage's budget_ms)")
    p.add_argument("--tolerance-px", type=float, default=2.0, help="box corner tolerance in pixels (2)")
    p.add_argument("--tolerance", type=float, default=1e-6, help="tolerance of other numbers (1e-6)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    if bool(args.ring) == bool(args.pipeline):
        print("edgepipe replay: give --ring TOPIC=NAME (repeatable) or --pipeline FILE (one of them)", file=sys.stderr)
        return 2
    if args.compare and not args.pipeline:
        print("edgepipe replay: --compare needs --pipeline", file=sys.stderr)
        return 2
    if args.keep_deadlines and not args.compare:
        print("edgepipe replay: --keep-deadlines goes with --compare", file=sys.stderr)
        return 2
    if args.rate is None:  # a comparison replays lockstep: the machine's speed must not decide what is compared
        args.rate = 0.0 if args.compare else 1.0
    try:
        if args.realtime:
            with realtime_priority(args.realtime):  # refused here, before anything is created or started
                pass
        info = recording_info(args.file)
        if args.compare:
            recording_info(args.compare)
        if args.ring:
            return _replay_rings(args)
        return _replay_pipeline(args, info)
    except (RecordingError, RealtimeNotPermittedError) as e:
        print(f"edgepipe replay: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError) as e:
        print(f"edgepipe replay: {e}", file=sys.stderr)
        return 2


def _seconds(text: str) -> float:
    """argparse type of --wait-consumer: seconds, 0 or more."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return v


def _wait_for_consumers(rings: list, seconds: float, stopping: list) -> bool:
    """Wait until every created ring has a consumer (its reader opened), so nothing is published into a ring
    that is removed at the end before anyone could read it, and the recorded pace starts when someone listens.
    A one-time start-up wait, polled every 10 ms; False (said on stderr) when ``seconds`` pass first or a signal
    stops it. ``seconds`` 0: do not wait."""
    if seconds == 0:
        return True
    waiting = [r for r in rings if r.status().consumer_pid == 0]
    if waiting:
        print(f"edgepipe replay: waiting up to {seconds:g} s for a consumer of "
              f"{', '.join(repr(r.name) for r in waiting)}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + seconds
    while waiting:
        if stopping:
            return False
        if time.monotonic() >= deadline:
            print(f"edgepipe replay: no consumer opened {', '.join(repr(r.name) for r in waiting)} within "
                  f"{seconds:g} s (--wait-consumer); nothing was replayed", file=sys.stderr)
            return False
        time.sleep(0.01)
        waiting = [r for r in waiting if r.status().consumer_pid == 0]
    return True


def _replay_rings(args) -> int:
    rings, writers = [], {}
    stopping = []
    old = {sig: signal.signal(sig, lambda s, f: stopping.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for spec in args.ring:
            topic, eq, name = spec.partition("=")
            if not eq or not topic or not name:
                raise ValueError(f"--ring must be TOPIC=NAME, got {spec!r}")
            ring = Ring.create(name, args.ring_capacity)
            rings.append(ring)
            writers[topic] = ring.writer()
        topics = [t.strip() for t in args.topics.split(",")] if args.topics else None
        if not _wait_for_consumers(rings, args.wait_consumer, stopping):
            return 1
        st = replay(args.file, writers, rate=args.rate, loop=args.loop, start_s=args.start, end_s=args.end or None,
                    topics=topics, restamp=not args.keep_stamps, stop=lambda: bool(stopping), realtime=args.realtime)
    except EdgepipeError as e:
        print(f"edgepipe replay: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        for w in writers.values():
            w.close()
        for r in rings:
            r.unlink()
            r.close()
    late = (f"; publish lateness p50 {st.lateness_us(50):.0f} us, p99 {st.lateness_us(99):.0f} us"
            if st.lateness.get_total_count() else "")
    print(f"replayed {st.total} messages ({', '.join(f'{k} {v}' for k, v in st.sent.items())}) in {st.loops} "
          f"pass(es){late}")
    return 0


def _replay_pipeline(args, info) -> int:
    from edgepipe.pipeline.supervisor import Pipeline

    spec = load_config(args.pipeline)
    recorded = {c.topic for c in info.channels}
    wanted = {t.strip() for t in args.topics.split(",")} if args.topics else recorded
    replaced, links = [], {}
    for s in list(spec.stages):
        if s.inputs or not s.outputs:
            continue
        if all("/" + ln in recorded and "/" + ln in wanted for ln in s.outputs.values()):
            replaced.append(s.name)
            links.update({f"{s.name}_{p}": ln for p, ln in s.outputs.items()})
    if not replaced:
        raise ConfigError(f"{args.pipeline}: no source stage whose outputs were all recorded in {args.file} (it has "
                          f"{', '.join(sorted(recorded))}; a source's link L is replayed from topic /L)")
    spec.stages = [s for s in spec.stages if s.name not in replaced]
    spec.budgets_ms = {k: v for k, v in spec.budgets_ms.items() if k.split(".")[0] not in replaced}
    spec.stages.insert(0, StageSpec(name="replay", kind="replay", outputs=links, params={
        "file": os.path.abspath(args.file), "rate": args.rate, "loop": args.loop, "start_s": args.start,
        "end_s": args.end, "restamp": not args.keep_stamps, "realtime": args.realtime}))
    out = None
    compare_topics: list[str] = []
    shed_off = []
    if args.compare and not args.keep_deadlines:
        for s in spec.stages:
            p = deadline_param(s.kind, spec.import_dirs)
            if p is not None and s.params.get(p) is not None:
                shed_off.append(f"{s.name}.{p}={s.params.pop(p)}")
    if args.compare:
        golden = {c.topic for c in recording_info(args.compare).channels}
        replayed = {"/" + ln for ln in links.values()}
        for name, ln in spec.links.items():
            if "/" + name in golden and "/" + name not in replayed:
                try:
                    tap_filler(spec, name)
                except ConfigError:
                    continue
                ln.tap = True
                compare_topics.append("/" + name)
        if not compare_topics:
            raise ConfigError(f"--compare: {args.compare} has no topic of a link this pipeline makes from the replay "
                              f"(it has {', '.join(sorted(golden))})")
        out = os.path.join(tempfile.mkdtemp(prefix="edgepipe-replay-"), "replayed.mcap")
        spec.stages.append(StageSpec(name="record", kind="record", params={"out": out},
                                     inputs={t[1:]: tap_link(t[1:]) for t in compare_topics}))
    validate(spec)
    pace = "lockstep" if args.rate == 0 else "at the recorded pace" if args.rate == 1 else f"at x{args.rate:g}"
    print(f"replaying {', '.join(sorted('/' + ln for ln in links.values()))} from {args.file} in place of "
          f"{', '.join(replaced)}, {pace}" + (f"; comparing {', '.join(compare_topics)} with {args.compare}" if out
                                             else "")
          + (f"; deadlines off: {', '.join(shed_off)}" if shed_off else ""))
    pipe = Pipeline.from_spec(spec, stats_path=False)
    code = pipe.run(seconds=args.seconds)
    stats = pipe.stage_stats()
    print(f"replayed {stats.get('replay', {}).get('replayed', '?')} records; pipeline exit status {code}")
    if out is None:
        return code
    return _report_comparison(args, out, compare_topics, stats, code)


def pipeline_drops(stats: dict, tap_drops: dict | None = None) -> dict[str, int]:
    """What a run's stages and taps counted as dropped or lost, non-zero only: ``{"stage.counter": n}`` for
    every counter named ``dropped_*``, ``*_dropped`` or ``*_lost`` (a stage's ``dropped`` total when it
    has no such breakdown), and ``{"tap /topic (reason)": n}`` from a recording's drop statistics.

    >>> pipeline_drops({"detect": {"dropped_deadline": 3, "frames_lost": 0, "results": 9}},
    ...                {("/detections", "tap full"): 2})
    {'detect.dropped_deadline': 3, 'tap /detections (tap full)': 2}
    """
    out: dict[str, int] = {}
    for stage, st in stats.items():
        keys = [k for k, v in st.items() if isinstance(v, int) and not isinstance(v, bool)
                and (k.startswith("dropped_") or k.endswith(("_dropped", "_lost")))]
        if not keys and isinstance(st.get("dropped"), int):
            keys = ["dropped"]
        out.update({f"{stage}.{k}": st[k] for k in keys if st[k]})
    for (topic, reason), n in (tap_drops or {}).items():
        if n:
            out[f"tap {topic} ({reason})"] = n
    return out


def _report_comparison(args, out: str, topics: list[str], stats: dict, code: int) -> int:
    cmp = compare_recordings(out, args.compare, topics=topics, tolerance=args.tolerance,
                             tolerance_px=args.tolerance_px)
    drops = pipeline_drops({k: v for k, v in stats.items() if k not in ("replay", "record")},
                           recording_info(out).drops)
    dropped = sum(drops.values())
    for d in cmp.differences[:20]:
        print(f"DIFF {d}")
    if len(cmp.differences) > 20:
        print(f"... and {len(cmp.differences) - 20} more differences")
    if drops:
        print(f"DROPPED by this run's pipeline: {dropped} ({', '.join(f'{k} {v}' for k, v in drops.items())})")
    lost = max(0, cmp.missing_count - dropped)  # results missing that no stage or tap counted as dropped
    for topic, seqs in cmp.missing.items():
        print(f"NOT COMPARED {topic}: {len(seqs)} result(s) of the golden run missing in this run "
              f"(seq {_seqs(seqs)})" + ("; more than this run counted as dropped" if lost else
                                         "; this run dropped them (see DROPPED)"))
    for topic, seqs in cmp.unmatched.items():
        print(f"NOT COMPARED {topic}: {len(seqs)} result(s) of this run have none in the golden run to compare "
              f"with (seq {_seqs(seqs)}; the golden run did not make them: dropped there)")
    diffs = len(cmp.differences) + lost
    print(f"compared {cmp.compared} messages on {', '.join(topics)}: "
          + ("no difference" if not diffs else f"{diffs} difference(s)") + f" (this run's recording: {out})")
    if not cmp.compared and not cmp.differences:
        print("nothing was compared: no result both runs made")
        return 1
    return 1 if diffs or code else 0


def _seqs(seqs: list[int], most: int = 10) -> str:
    """``1, 2, 5 ...`` (the first ``most``)."""
    return ", ".join(map(str, seqs[:most])) + (f" ... ({len(seqs)})" if len(seqs) > most else "")
