"""The stage process: one stage of a supervised pipeline, built from a protobuf ``StageSpec`` and run.

Started by edgepipe.pipeline.supervisor as ``python -c ENTRY --stage NAME --fd N --parent PID`` (see
:data:`ENTRY`; users never type it). The first thing ENTRY does, before any heavy import, is ask the kernel
for SIGKILL when the parent dies (PR_SET_PDEATHSIG) and then check that the parent is still the one that
started it (it may have died before the prctl): a kill -9 of the supervisor leaves no stage behind, even in
the first second of a run while the stages are still importing numpy and friends.

Control socket (edgepipe.control.framing.FrameSocket over the inherited fd), edgepipe.v1.Envelope frames
only: this process sends Hello; the supervisor answers Welcome, then Attach with the ring fds
(SCM_RIGHTS, in the order of the spec's ports), then StageSpec (or Stop, if the pipeline stopped first).
The stage then runs; this process sends Stats (its ring counters, latency histograms, and one StageState
whose ``counters`` hold ``Stage.stats()``) once the stage is open, every ``stats_interval_ns`` and before
it exits, and an Error if the stage failed. Stop from the supervisor stops the stage. A frame that is not
an Envelope is refused (Error BAD_MESSAGE) and this process exits: nothing received here is ever
unpickled or executed. Code is named by import path in StageSpec.target and imported.

A stage that fails exits with its ring ends still held, so its neighbours wait for the restarted process
instead of taking "closed" for the end of the stream; a stage that ends cleanly closes them.

>>> ENTRY.splitlines()[:2]  # nothing heavy runs before the kernel knows to kill us with the supervisor
['import ctypes, os, sys', 'ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)']
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
from typing import Any

from edgepipe.clock import now_ns
from edgepipe.control import messages as pb
from edgepipe.control.framing import PROTOCOL_MAJOR, PROTOCOL_MINOR, Envelope, FrameSocket
from edgepipe.errors import ConfigError, EdgepipeError, FrameDecodeError, FrameError, FrameTimeoutError
from edgepipe.pipeline.api import Inlet, Outlet, PipelineStage, function_stage
from edgepipe.pipeline.config import import_target, latest_slot
from edgepipe.pipeline.report import LatencyBook
from edgepipe.pipeline.stats import stage_state
from edgepipe.pipeline.tap import TAP_SUFFIX, FrameTap, Tap
from edgepipe.pipeline.values import from_params, from_value
from edgepipe.ring import Ring

__all__: list[str] = []  # shared inside edgepipe.pipeline, not public API

_PR_SET_PDEATHSIG = 1

# The code a stage process starts with (python -c ENTRY --stage NAME --fd N --parent PID): die with the
# parent first (ctypes and os only: milliseconds), then import edgepipe. Kept in sync with
# _die_with_parent below, which main() runs again for a process started another way.
ENTRY = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "if '--parent' in sys.argv and os.getppid() != int(sys.argv[sys.argv.index('--parent') + 1]):\n"
    "    os._exit(3)\n"
    "from edgepipe.pipeline.host import main\n"
    "sys.exit(main())\n"
)


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - Linux always has prctl
        pass
    if os.getppid() != parent:  # the parent died before prctl: nobody will reap us
        os._exit(3)


_BOOTSTRAPPING = False  # true while this process re-runs the user's script to find its classes


def bootstrapping() -> bool:
    """True while a stage process imports the supervisor's script (a Pipeline started at import then
    would start pipelines recursively: the supervisor refuses that and says to guard it)."""
    return _BOOTSTRAPPING


def _load_main(path: str) -> None:
    """Make classes defined in the parent's __main__ script importable here, as multiprocessing does: run
    the script as module ``__mp_main__`` (its ``if __name__ == "__main__":`` block does not run) and let
    ``__main__`` name it."""
    import runpy
    import types

    global _BOOTSTRAPPING
    mod = types.ModuleType("__mp_main__")
    mod.__file__ = path
    sys.modules["__main__"] = sys.modules["__mp_main__"] = mod
    _BOOTSTRAPPING = True
    try:
        mod.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
    finally:
        _BOOTSTRAPPING = False


def _resolve(target: str, what: str) -> Any:
    """``module:qualname`` as an object (a ConfigError naming the stage when it cannot be imported)."""
    if target.count(":") != 1:
        raise ConfigError(f"stage {what!r}: target must be 'module:qualname', got {target!r}")
    return import_target(target, what)


def build(spec: pb.StageSpec, fds: list[int]):
    """Attach the rings (fds in the order of ``spec.ports``; they are closed here), make the ring ends and
    the stage. Returns ``(stage, rings, ends)``."""
    if len(fds) != len(spec.ports):
        raise ConfigError(f"stage {spec.name!r}: {len(spec.ports)} ports but {len(fds)} ring fds came with Attach")
    rings, ends_in, ends_out, taps = [], {}, {}, {}
    for port, fd in zip(spec.ports, fds):
        if port.mode == "latest":
            Latest = latest_slot()
            if Latest is None:
                raise ConfigError(f"link {port.link!r} is latest-only, which this install cannot open")
            r = Latest.from_fd(fd)
        else:
            r = Ring.from_fd(fd)
        os.close(fd)
        rings.append(r)
        if port.name.endswith(TAP_SUFFIX):  # the side ring of a tap this stage fills (edgepipe.pipeline.tap)
            base = port.name[:-len(TAP_SUFFIX)]
            taps[base] = (r.writer(), port.link, port.link_index, port.mode)
            continue
        if port.direction == pb.Direction.DIRECTION_INPUT:
            ends_in[port.name] = (r.reader(), port.link, port.link_index, port.mode)
        else:
            ends_out[port.name] = (r.writer(), port.link, port.link_index, port.mode)
    topology = {t.link: (t.producer, list(t.producer_inputs)) for t in spec.topology}
    budgets = {b.part: b.budget_ns for b in spec.budgets}
    restarted = spec.attempt > 0
    is_sink = bool(ends_in) and not ends_out
    book = LatencyBook(list(spec.stage_names), list(spec.link_names), budgets, sink=spec.name) if is_sink else None

    def tap(port: str) -> Tap | None:
        t = taps.get(port)
        return None if t is None else Tap(t[0], t[1][:-len(TAP_SUFFIX)])

    def inlets():
        return {p: Inlet(e, ln, li, topology=topology, mark_first=restarted, tap=tap(p), mode=m)
                for p, (e, ln, li, m) in ends_in.items()}

    def outlets():
        for p, (e, ln, li, m) in ends_out.items():
            if m == "latest":
                raise ConfigError(f"stage {spec.name!r}: link {ln!r} is latest-only (numpy frames); only "
                                  f"frame stages (capture, inference) can use it")
        return {p: Outlet(e, ln, spec.index, "drop" if m == "drop" else "lossless", li, mark_first=restarted,
                          tap=tap(p))
                for p, (e, ln, li, m) in ends_out.items()}

    target = _resolve(spec.target, spec.kind or spec.name)
    params = from_params(spec.params)
    c = spec.construct
    if c == pb.Construct.CONSTRUCT_INSTANCE:
        stage = target(*(from_value(a) for a in spec.args), **params)
    elif c == pb.Construct.CONSTRUCT_FUNCTION:
        stage = function_stage(getattr(target, "__wrapped__", target), spec.function_role, **params)
    elif c == pb.Construct.CONSTRUCT_RAW:
        kw = {p: e for p, (e, *_rest) in {**ends_in, **ends_out}.items()}
        stage = target(name=spec.name, **params, **kw)
    elif c == pb.Construct.CONSTRUCT_TARGET:
        if isinstance(target, type) and issubclass(target, PipelineStage):
            inputs = {p: ln for p, (e, ln, li, m) in ends_in.items()}
            outputs = {p: ln for p, (e, ln, li, m) in ends_out.items()}
            stage = target(name=spec.name, inputs=inputs, outputs=outputs, **params)
        else:
            stage = target(name=spec.name, **params, **inlets(), **outlets())
    else:
        raise ConfigError(f"stage {spec.name!r}: unknown construct {c} in its StageSpec")
    for port, t in taps.items():  # a frame source fills its output's tap itself (register_stage frame_tap)
        if port in ends_out and c == pb.Construct.CONSTRUCT_RAW and hasattr(stage, "frame_tap"):
            stage.frame_tap = FrameTap(t[0], t[1][:-len(TAP_SUFFIX)])
    if isinstance(stage, PipelineStage) and not stage.inputs and not stage.outputs:
        stage.attempt = spec.attempt
        stage.attach(inlets(), outlets(), book)
    stage.name = spec.name
    return stage, rings, {**ends_in, **ends_out, **{p + TAP_SUFFIX: t for p, t in taps.items()}}


def stats_message(stage, state: str | None = None) -> Envelope:
    """This stage's Stats: ring counters, latency histograms and its own counters (one StageState)."""
    st = pb.Stats(stage_name=stage.name, t_ns=now_ns())
    for port_ends in (getattr(stage, "inputs", {}), getattr(stage, "outputs", {})):
        for end in port_ends.values():
            try:
                c = end.counters()
            except EdgepipeError:
                continue
            st.rings.append(pb.RingCounters(**{k: v for k, v in c.items() if k in (
                "name", "records_written", "records_read", "bytes_written", "bytes_read", "full_events",
                "dropped", "used", "capacity")}))
    book = getattr(stage, "latency", None)
    if book is not None:
        st.latencies.extend(book.to_proto())
    d = stage.stats()
    if state is not None:
        d["state"] = state
    st.stages.append(stage_state(stage.name, d))
    return Envelope(stats=st)


def _refuse(send, what: str) -> int:
    try:
        send(Envelope(error=pb.Error(code=pb.ErrorCode.ERROR_CODE_BAD_MESSAGE, message=what)))
    except (FrameError, OSError):
        pass
    print(f"edgepipe stage: {what}", file=sys.stderr)
    return 2


def run_stage(stage_name: str, fd: int, parent: int) -> int:
    """Talk to the supervisor on ``fd``, build the stage it describes, run it; the exit status."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    sock = FrameSocket.from_fd(fd)
    send_lock = threading.Lock()

    def send(msg) -> None:
        with send_lock:
            sock.send(msg, timeout_s=5)

    send(Envelope(seq=1, hello=pb.Hello(protocol_major=PROTOCOL_MAJOR, protocol_minor=PROTOCOL_MINOR,
                                         stage_name=stage_name, pid=os.getpid(), role=pb.Role.ROLE_STAGE)))
    fds: list[int] = []
    try:
        env = sock.recv(timeout_s=30)
        if env.WhichOneof("body") != "welcome":
            return _refuse(send, f"expected welcome, got {env.WhichOneof('body')}")
        data, fds = sock.recv_fds(timeout_s=30)
        env = FrameSocket.decode(data)
        if env.WhichOneof("body") != "attach":
            return _refuse(send, f"expected attach, got {env.WhichOneof('body')}")
        while True:
            env = sock.recv(timeout_s=30)
            body = env.WhichOneof("body")
            if body == "stop":  # stopped before it was described
                return 0
            if body == "stage_spec":
                break
            return _refuse(send, f"expected stage_spec, got {body}")
    except FrameDecodeError as e:
        for f in fds:
            os.close(f)
        return _refuse(send, f"refused a frame from the supervisor: {e}")
    spec = env.stage_spec
    for p in reversed(spec.sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        if spec.main_path:
            _load_main(spec.main_path)
        stage, rings, ends = build(spec, fds)
    except BaseException as e:  # noqa: BLE001 - reported to the supervisor
        send(Envelope(error=pb.Error(code=pb.ErrorCode.ERROR_CODE_INTERNAL, message=f"{type(e).__name__}: {e}")))
        return 2

    signal.signal(signal.SIGTERM, lambda s, f: stage.stop())
    done = threading.Event()
    user_open = stage.open
    interval_s = spec.stats_interval_ns / 1e9 or 0.5

    def open_and_report() -> None:
        # The supervisor counts a stage as started once open() returned: say so at once, before the loop
        # (a loop that fails on its first record is a crash to restart, not a stage that cannot start).
        user_open()
        send(stats_message(stage, state="running"))

    stage.open = open_and_report

    def control() -> None:
        # Stats every interval; Stop -> stage.stop(); the supervisor hanging up (or talking nonsense) -> stop.
        reported = False
        while not done.is_set():
            try:
                env = sock.recv(timeout_s=interval_s if reported else 0.01)
                if env.WhichOneof("body") == "stop":
                    stage.stop()
                continue
            except FrameTimeoutError:
                pass
            except FrameDecodeError as e:
                _refuse(send, f"refused a frame from the supervisor: {e}")
                stage.stop()
                return
            except (FrameError, OSError):
                stage.stop()  # the supervisor hung up
                return
            if stage.state in ("new", "opening"):
                continue
            try:
                send(stats_message(stage))
                reported = True
            except (FrameError, OSError):
                stage.stop()
                return

    ctl = threading.Thread(target=control, name="edgepipe-stage-control", daemon=True)
    ctl.start()
    status = stage.run()
    done.set()
    ctl.join(2.0)
    try:
        send(stats_message(stage))
        if status != 0:
            err = stage.error
            send(Envelope(error=pb.Error(code=pb.ErrorCode.ERROR_CODE_INTERNAL,
                                         message=f"{type(err).__name__}: {err}" if err else "stage failed")))
    except (FrameError, OSError):
        pass
    if status != 0:
        # Leave the ring ends (and any record held in them) to this dying process: its neighbours wait
        # for a restart instead of taking "closed" for the end of the stream.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    for port_ends in (getattr(stage, "outputs", {}), getattr(stage, "inputs", {})):
        for end in port_ends.values():
            end.close()
    for e, *_rest in ends.values():
        e.close()
    for r in rings:
        r.close()
    sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgepipe.pipeline.host",
                                description="(internal) one stage process of a supervised pipeline.")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.fd is not None and args.parent is not None:
        return run_stage(args.stage or "?", args.fd, args.parent)
    p.error("this is the entry point of a pipeline's stage processes; run a pipeline file with `edgepipe run FILE`")
    return 2


if __name__ == "__main__":
    sys.exit(main())
