"""The supervisor: :class:`Pipeline` creates the rings, runs every stage as a process, restarts crashed
stages, stops in order, and reports latency against budgets. The stage process's side is
edgepipe.pipeline.host.

Processes. Each stage is ``python -c <edgepipe.pipeline.host.ENTRY>`` started with one end of a socketpair
(fork+exec through subprocess: a clean interpreter, no inherited threads or locks; about 0.2-0.3 s each on
this machine, started in parallel). Its first statements, before any import of edgepipe, ask the kernel to
SIGKILL it when its parent dies (PR_SET_PDEATHSIG) and check that its parent is still the supervisor, so a
kill -9 of the supervisor leaves no stage behind, even during start-up; the rings are memfds, so it leaves
nothing in /dev/shm either. A supervisor that starts removes the stats files and sockets that supervisors
killed earlier left in :func:`runtime_dir` (those whose pid is no longer alive).

Taps: a tapped link whose side ring no stage of the pipeline reads can be read by another process, which
asks the control socket :attr:`Pipeline.control_socket` for it (an Attach request) and gets its fd
(edgepipe.pipeline.attach: ``edgepipe record --attach NAME --links a,b``).

Control socket (edgepipe.control.framing.FrameSocket, one per stage), ``edgepipe.v1.Envelope`` frames only:
child -> Hello; supervisor -> Welcome, then Attach with the ring fds (SCM_RIGHTS), then StageSpec: the
stage's target by import path (``module:qualname``), its parameters as a tree of plain Values, its ports,
budgets and topology. Nothing is pickled either way: a stage given as a Python object is sent as its class
path and the plain arguments it was built with, and anything that is not plain is a ConfigError when the
Pipeline is made. The child answers with Stats (ring counters, latency histograms and a StageState whose
``counters`` hold ``Stage.stats()``) every ``stats_interval_s`` and before it exits, an Error if the stage
failed, and receives Stop.

Stopping: stop() sends Stop to the sources only. Each source returns from its loop and closes its
outputs; a consumer drains what is queued, sees end of stream, and closes its own outputs, and so on to the
sinks, so every record in flight is delivered. Whatever has not finished after ``drain_timeout_s`` gets
Stop, a second later SIGTERM, and a second after that SIGKILL (and the run counts as failed).

Restarts: a stage that exits non-zero (or is killed) after it was running is started again with
exponential backoff, under its policy (never / on-failure / always) and at most ``max_restarts`` times
within any ``restart_window_s`` (restarts older than the window no longer count, nor raise the backoff: a
stage that crashes once an hour runs forever). Its rings stay where they are: its neighbours wait for the
new process (a ring end held by a dead process can be taken over; only a closed end is the end of a
stream), so queued records are not lost (see edgepipe.pipeline.api for what each link mode guarantees).
A stage that fails for good has its ring ends closed by the supervisor (its neighbours see end of
stream) and the pipeline stops in order and fails.

Why neighbours learn of a death from the ring and not from this supervisor: the ring's owner word tells a
*closed* end (an explicit store by its owner, ordered after everything it published) from a *dead* one (its
pid gone, checked with a pidfd and the process start time), and a stage reads it in the same place and at
the same moment as its data. A "peer restarting" message on the control socket would race with the data
(a consumer could see the end of the ring before the message) and would not help a stage outside a
supervised pipeline. So a stage never ends on a dead neighbour, and this supervisor closes the ends of a
stage it gives up on, which its neighbours then see as the end of the stream.

One piece: it is one object, the supervisor's state machine, whose threads share the children's state
under one lock; the stage side lives in host.py, what crosses the socket in values.py and stats.py.

>>> from edgepipe.testing import CheckStage, CounterStage
>>> p = Pipeline([CounterStage("src", count=100, outputs={"out": "n"}),
...               CheckStage("sink", inputs={"in": "n"})], budgets={"end_to_end": 1000})
>>> p.run()
0
>>> p.stage_stats()["sink"]["ok"], p.report()["parts"][-1]["part"]
(100, 'end_to_end')
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from edgepipe.clock import now_ns, wall_ns
from edgepipe.control import messages as pb
from edgepipe.control.framing import PROTOCOL_MAJOR, PROTOCOL_MINOR, Envelope, FrameSocket
from edgepipe.errors import ConfigError, EdgepipeError, FrameError, PeerClosedError
from edgepipe.pipeline import host
from edgepipe.pipeline.api import PipelineStage
from edgepipe.pipeline.attach import tap_request_handler
from edgepipe.pipeline.config import (LinkSpec, PipelineSpec, StageSpec, is_import_path, kind_entry, latest_slot,
                                      load_config, resolve_kind, tap_filler, validate)
from edgepipe.pipeline.report import E2E, LatencyBook, budget_for, build_report, percentiles, write_report
from edgepipe.pipeline.stats import stage_state, stats_from_state
from edgepipe.pipeline.tap import TAP_SUFFIX, tap_link
from edgepipe.pipeline.values import check_plain, to_params, to_value
from edgepipe.ring import Ring
from edgepipe.stages.base import Stage

__all__ = ["Pipeline", "runtime_dir"]

_POLL_S = 0.02
_RUNTIME_FILE = re.compile(r"^pipeline-(\d+)-[0-9a-f]+\.(json|json\.tmp|sock)$")


def runtime_dir() -> str:
    """Where running supervisors publish their stats for ``edgepipe top`` (created 0700 on demand):
    ``$XDG_RUNTIME_DIR/edgepipe`` or ``/tmp/edgepipe-<uid>``."""
    from edgepipe.control.server import default_socket_dir  # the same directory as the control sockets

    d = os.fspath(default_socket_dir())
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def remove_stale_runtime_files(directory: str | None = None) -> list[str]:
    """Remove the stats files and control sockets (``pipeline-<pid>-<id>.json|.sock``) of supervisors that
    are no longer alive (killed with kill -9: nobody removed them). Returns the paths removed. A pid that
    is alive is left alone, whoever it is now (a reused pid only delays the cleanup to the next start)."""
    d = directory or runtime_dir()
    removed = []
    try:
        names = os.listdir(d)
    except OSError:
        return removed
    for name in names:
        m = _RUNTIME_FILE.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        path = os.path.join(d, name)
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


# ---------------------------------------------------------------------------------------------------
# parent side


class _Child:
    """The supervisor's view of one stage: its spec, process, control socket and latest stats."""

    def __init__(self, index: int, spec: StageSpec, restart: str, max_restarts: int,
                 launch: pb.StageSpec) -> None:
        self.index = index
        self.spec = spec
        self.launch = launch  # what its process is told (StageSpec), less the attempt number
        self.name = spec.name
        self.restart = spec.restart or restart
        self.max_restarts = spec.max_restarts if spec.max_restarts is not None else max_restarts
        self.proc: subprocess.Popen | None = None
        self.sock: FrameSocket | None = None
        self.thread: threading.Thread | None = None
        self.state = "new"  # new, starting, running, backoff, done, failed
        self.ready = threading.Event()  # the current run reached "running" (or failed first)
        self.ever_ran = False
        self.restarts = 0
        self.recent_crashes: list[float] = []  # monotonic times of restarts within the restart window
        self.restart_at = 0.0
        self.exit_codes: list[int] = []
        self.error: str | None = None
        self.stats: dict[str, Any] = {}
        self.rings: list[Any] = []
        self.hists: list[list] = []  # latest histograms of each run
        self.stop_sent = False
        self.started_ns = 0

    @property
    def is_source(self) -> bool:
        return not self.spec.inputs


class Pipeline:
    """Stages as processes joined by rings. See the module docstring for how it runs.

    Args:
        stages: PipelineStage instances, StageSpec objects, or dicts with StageSpec's fields.
        links: ``{link: LinkSpec or dict(capacity=, mode=, budget_ms=)}``; links only named by ports get
            defaults (1 MiB lossless rings).
        budgets: latency budgets in ms by part: ``"end_to_end"``, a stage name (its own processing) or a
            link name (time queued in it).
        name, restart, max_restarts, restart_window_s, backoff_s, stats_interval_s, drain_timeout_s,
        start_timeout_s, report_dir: as in the TOML ``[pipeline]`` table (see edgepipe.pipeline.config).
        stats_path: where to publish live stats for ``edgepipe top`` (default: in :func:`runtime_dir`;
            ``False``: nowhere).
        control_socket: a Unix socket path where an :class:`edgepipe.control.server.Server` publishes Stats:
            each stage's as it arrives, and every stats interval the pipeline's roll-up (``stage_name``
            ``"pipeline:<name>"``: every stage's state, pid and restarts, every ring's counters, every latency
            part's histogram and the budgets). Clients
            connect with ``Client.connect(path, role="monitor", subscribe=["stats"])``, as ``edgepipe top
            --socket`` does. Default: next to the stats file when that is on; ``False``: no socket.

    Raises:
        ConfigError: the description cannot run (before anything starts), including a stage argument that
            is not a plain value (a stage process gets its arguments as data, never as a pickle).
    """

    def __init__(self, stages: list, links: dict | None = None, budgets: dict[str, float] | None = None, *,
                 stats_path: str | bool | None = None, control_socket: str | bool | None = None,
                 **options: Any) -> None:
        spec = PipelineSpec()
        for k, v in options.items():
            if not hasattr(spec, k) or k in ("stages", "links", "budgets_ms", "source"):
                raise TypeError(f"Pipeline got an unexpected option {k!r}={v!r}")
            setattr(spec, k, v)
        spec.stages = [_stage_spec(s) for s in stages]
        for name, ln in (links or {}).items():
            spec.links[name] = ln if isinstance(ln, LinkSpec) else LinkSpec(name=name, **ln)
        spec.budgets_ms = {k.removesuffix("_ms"): v for k, v in (budgets or {}).items()}
        self._init(validate(spec), stats_path, control_socket)

    @classmethod
    def from_spec(cls, spec: PipelineSpec, stats_path: str | bool | None = None,
                  control_socket: str | bool | None = None) -> Pipeline:
        """A pipeline from a checked spec (edgepipe.pipeline.config.load_config)."""
        self = cls.__new__(cls)
        self._init(spec, stats_path, control_socket)
        return self

    @classmethod
    def from_toml(cls, path: str | os.PathLike, stats_path: str | bool | None = None,
                  control_socket: str | bool | None = None) -> Pipeline:
        """A pipeline from a TOML file (checked completely first; ConfigError names file, line and key)."""
        return cls.from_spec(load_config(path), stats_path, control_socket)

    def _init(self, spec: PipelineSpec, stats_path, control_socket=None) -> None:
        self.spec = spec
        self.stage_names = [s.name for s in spec.stages]
        self.link_names = list(spec.links)
        # every stage's StageSpec is made now: what cannot travel to a process is refused before anything starts
        self.children = [_Child(i, s, spec.restart, spec.max_restarts, self._launch_spec(i, s))
                         for i, s in enumerate(spec.stages)]
        self._by_name = {c.name: c for c in self.children}
        self._rings: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_req = threading.Event()
        self._stop_reason = ""
        self._done = threading.Event()
        self._started = threading.Event()
        self._consumers_ready = threading.Event()
        self._abort = False  # the start failed: stop everything at once
        self._start_error: BaseException | None = None
        self._status: int | None = None
        self._series: list[dict[str, Any]] = []
        self._prev_totals: dict[str, tuple[int, int]] = {}
        self._prev_links: dict[str, tuple[float, int]] = {}
        self._link_rates: dict[str, float] = {}
        self._final_links: dict[str, Any] = {}
        self._t_start = 0.0
        self._start_ns = 0
        self._t_end = 0.0
        self._failure: str | None = None
        if stats_path is None:
            stats_path = os.path.join(runtime_dir(), f"pipeline-{os.getpid()}-{id(self):x}.json")
        self.stats_path: str | None = stats_path or None
        if control_socket is None:
            control_socket = self.stats_path[: -len(".json")] + ".sock" if self.stats_path else False
        self.control_socket: str | None = control_socket or None
        self._server = None
        self.report_paths: dict[str, str] = {}

    # -- public -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the rings and start every stage; return once each has said Hello and opened (or raise
        EdgepipeError naming the stage that could not start, after stopping the others)."""
        if self._thread is not None:
            raise RuntimeError("this Pipeline was already started; make a new one")
        if host.bootstrapping():
            raise RuntimeError("a stage process is importing your script to find the stages defined in it, and "
                               "the script starts a pipeline at import: put that under "
                               "`if __name__ == \"__main__\":`")
        self._t_start = time.monotonic()
        self._start_ns = now_ns()  # the same moment on the clock of Stats.t_ns (Stats.start_ns)
        remove_stale_runtime_files(os.path.dirname(self.stats_path) if self.stats_path else None)
        # One long-lived thread spawns every child: PR_SET_PDEATHSIG fires when the *thread* that forked a
        # child ends, so children must not be forked from threads that come and go.
        self._thread = threading.Thread(target=self._supervise, name="edgepipe-supervisor", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self.wait()
            raise self._start_error

    def stop(self, reason: str = "stop requested") -> None:
        """Ask for an ordered stop (sources first, then drain). Returns at once; see :meth:`wait`.
        Safe from a signal handler."""
        self._stop_reason = self._stop_reason or reason
        self._stop_req.set()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for every stage to exit; the pipeline's exit status (0: clean), or None on timeout."""
        if self._thread is None:
            raise RuntimeError("the pipeline was not started")
        if not self._done.wait(timeout_s):
            return None
        self._thread.join()
        return self._status

    def run(self, seconds: float | None = None, on_tick: Callable[[Pipeline], None] | None = None,
            tick_s: float = 1.0) -> int:
        """start(), then wait until every stage has finished, ``seconds`` have passed, or Ctrl-C/SIGTERM
        (an ordered stop with drain); returns 0 on a clean run, 1 if a stage failed for good.
        ``on_tick(pipeline)`` is called every ``tick_s`` (live progress)."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, lambda s, f: self.stop(f"signal {signal.Signals(s).name}"))
        try:
            try:
                self.start()
            except EdgepipeError as e:
                print(f"edgepipe: {e}", file=sys.stderr)
                return 1
            t_end = None if seconds is None else time.monotonic() + seconds
            next_tick = time.monotonic() + tick_s
            while True:
                left = [tick_s] if on_tick else [0.2]
                if t_end is not None:
                    left.append(max(0.0, t_end - time.monotonic()))
                st = self.wait(min(left))
                if st is not None:
                    return st
                now = time.monotonic()
                if t_end is not None and now >= t_end:
                    self.stop(f"ran for {seconds} s")
                    t_end = None
                if on_tick and now >= next_tick:
                    next_tick = now + tick_s
                    on_tick(self)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop("leaving the with block")
        self.wait()

    # -- numbers ---------------------------------------------------------------------------------------
    def stage_stats(self) -> dict[str, dict[str, Any]]:
        """Per stage: state, pid, restarts, exit codes, error, and the stage's own stats() counters."""
        out = {}
        for c in self.children:
            d = dict(c.stats)
            d.update({"state": c.state, "pid": c.proc.pid if c.proc else None, "restarts": c.restarts,
                      "exit_codes": list(c.exit_codes), "error": c.error or d.get("error"),
                      "kind": c.spec.kind or d.get("kind")})
            out[c.name] = d
        return out

    def latency(self) -> LatencyBook:
        """Every sink's histograms merged (live while running, final after)."""
        book = LatencyBook(self.stage_names, self.link_names, self.spec.budgets_ns())
        with self._lock:
            for c in self.children:
                for run in c.hists:
                    book.merge_proto(run)
        return book

    def link_stats(self) -> dict[str, dict[str, Any]]:
        """Per link: mode, capacity, fill, records written/read, rate and drops (from the rings)."""
        if self._final_links:
            return self._final_links
        out = {}
        for name, ring in list(self._rings.items()):
            ln = self.spec.links[name]
            try:
                s = ring.status()
            except EdgepipeError:
                continue
            if hasattr(s, "records_written"):
                d = {"mode": ln.mode, "capacity": s.capacity, "used": s.used,
                     "records_written": s.records_written, "records_read": s.records_read,
                     "full_events": s.full_events}
            else:  # a latest slot
                d = {"mode": ln.mode, "capacity": ln.capacity, "used": 0,
                     "records_written": s.published, "records_read": s.delivered, "full_events": 0,
                     "overwritten": s.overwritten}
            d["fill"] = d["used"] / d["capacity"] if d["capacity"] else 0.0
            d["rate_hz"] = self._link_rates.get(name, 0.0)
            if ln.mode == "drop":
                # a full ring counts its refusals itself (exact across crashes of either end); the producer
                # counts only what it dropped for other reasons (its consumer restarting)
                d["dropped"] = d["full_events"] + self._drops_on(name, but="ring full")
            else:
                d["dropped"] = d.get("overwritten", 0) + self._drops_on(name)
            out[name] = d
        return out

    def _drops_on(self, link: str, but: str | None = None) -> int:
        n = 0
        for c in self.children:
            for k, v in (c.stats or {}).items():
                if k.startswith(f"dropped[{link}: ") and k != f"dropped[{link}: {but}]" and isinstance(v, int):
                    n += v
        return n

    def report(self) -> dict[str, Any]:
        """The latency report (see edgepipe.pipeline.report.build_report) with stage and link counters."""
        meta = {"name": self.spec.name, "source": self.spec.source, "pid": os.getpid(),
                "duration_s": round((self._t_end or time.monotonic()) - self._t_start, 3) if self._t_start else 0,
                "cpus": os.cpu_count(), "status": self._status, "failure": self._failure,
                "stop_reason": self._stop_reason or None}
        paths = {}
        with self._lock:
            for c in self.children:
                names = list(dict.fromkeys(m.name for run in c.hists for m in run))
                if names:
                    paths[c.name] = [n for n in names if n != E2E]
        return build_report(self.latency(), budgets_ns=self.spec.budgets_ns(), series=self._series,
                            stages=self.stage_stats(), links=self.link_stats(), meta=meta, paths=paths)

    def write_report(self, out_dir: str | os.PathLike | None = None, png: bool = True) -> dict[str, str]:
        """Write report.json (and report.png) into ``out_dir`` (default: the spec's report_dir)."""
        out = out_dir or self.spec.report_dir or "edgepipe-report"
        self.report_paths = write_report(self.report(), out, png=png)
        return self.report_paths

    # -- the supervisor thread -----------------------------------------------------------------------
    def _supervise(self) -> None:
        try:
            try:
                self._create_rings()
                self._start_server()
                for c in self.children:
                    self._spawn(c)
                self._await_ready()
            except BaseException as e:  # noqa: BLE001 - handed to start()
                self._start_error = e if isinstance(e, EdgepipeError) else EdgepipeError(f"pipeline start failed: {e!r}")
                self._failure = str(self._start_error)
                # Nothing ran yet, so there is nothing to drain: every stage gets Stop at once, and the ends
                # of the stage that failed are closed so its neighbours see end of stream.
                self._abort = True
                for c in self.children:
                    if c.state == "failed":
                        self._close_ends(c)
                self._stop_req.set()
            finally:
                self._started.set()
            self._loop()
        finally:
            self._teardown()
            self._done.set()

    def _start_server(self) -> None:
        if not self.control_socket:
            return
        from edgepipe.control.server import Server

        try:
            srv = Server(self.control_socket)
            # a request for Stats gets the current roll-up back (publishing needs subscribe=["stats"])
            srv.on("stats", lambda session, env: Envelope(stats=self._rollup()))
            # another process (edgepipe record --attach, a view, a bridge) asks for taps: edgepipe.pipeline.attach
            srv.on("attach", tap_request_handler(self.spec, self._rings.get))
            srv.start()
        except (EdgepipeError, OSError, ValueError) as e:  # the pipeline runs without its socket
            print(f"edgepipe: no control socket at {self.control_socket}: {e}", file=sys.stderr)
            self.control_socket = None
            return
        self._server = srv

    def _rollup(self) -> pb.Stats:
        """The pipeline's Stats: every ring's counters, every latency part merged over the sinks."""
        st = pb.Stats(stage_name=f"pipeline:{self.spec.name}", t_ns=now_ns(), start_ns=self._start_ns)
        for name, ln in self.link_stats().items():
            st.rings.append(pb.RingCounters(name=name, records_written=ln["records_written"],
                                            records_read=ln["records_read"], full_events=ln["full_events"],
                                            dropped=ln["dropped"], used=ln["used"], capacity=ln["capacity"],
                                            mode=ln["mode"]))
        st.latencies.extend(self.latency().to_proto())

        for name, d in self.stage_stats().items():
            own = {k: v for k, v in d.items() if k not in ("pid", "restarts", "exit_codes")}
            state = stage_state(name, own)
            state.pid, state.restarts = d["pid"] or 0, d["restarts"]
            st.stages.append(state)
        st.budgets.extend(pb.LatencyBudget(part=k, budget_ns=v) for k, v in self.spec.budgets_ns().items())
        return st

    def _publish(self, env: Envelope) -> None:
        if self._server is not None and not self._server.closed:
            try:
                self._server.publish(env)
            except (EdgepipeError, OSError):
                pass  # a subscriber's trouble is the server's to count, never the pipeline's

    def _create_rings(self) -> None:
        Latest = latest_slot()
        for name, ln in self.spec.links.items():
            if ln.mode == "latest":
                if Latest is None:
                    raise ConfigError(f"links.{name}.mode: 'latest' needs edgepipe.latest.LatestSlot")
                self._rings[name] = Latest.create(None, max_frame_bytes=ln.capacity)
            else:
                self._rings[name] = Ring.create(None, ln.capacity)

    def _spawn(self, c: _Child) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # -c rather than -m: the first lines die with us before anything heavy is imported (and
            # edgepipe/__init__ imports the host module, which runpy would warn about)
            cmd = [sys.executable, "-c", host.ENTRY, "--stage", c.name, "--fd", str(b.fileno()),
                   "--parent", str(os.getpid())]
            c.proc = subprocess.Popen(cmd, pass_fds=[b.fileno()], stdin=subprocess.DEVNULL)
        except BaseException:
            a.close()
            raise
        finally:
            b.close()
        c.sock = FrameSocket(a)
        c.state = "starting"
        c.stop_sent = False
        c.ready.clear()
        c.started_ns = now_ns()
        c.hists.append([])
        c.thread = threading.Thread(target=self._talk, args=(c, c.sock, len(c.hists) - 1),
                                    name=f"edgepipe-ctl-{c.name}", daemon=True)
        c.thread.start()

    def _launch_spec(self, index: int, spec: StageSpec) -> pb.StageSpec:
        """The StageSpec a stage's process gets: all plain data (ConfigError naming the stage, the key and
        the type of anything that is not)."""
        key = f"stages.{spec.name}"
        out = pb.StageSpec(name=spec.name, index=index, kind=spec.kind or "",
                           stage_names=self.stage_names, link_names=self.link_names,
                           stats_interval_ns=int(self.spec.stats_interval_s * 1e9))
        for direction, mapping in ((pb.Direction.DIRECTION_INPUT, spec.inputs), (pb.Direction.DIRECTION_OUTPUT, spec.outputs)):
            for port, link in mapping.items():
                out.ports.add(name=port, direction=direction, link=link, link_index=self.link_names.index(link),
                              mode=self.spec.links[link].mode)
        for link, ln in self.spec.links.items():  # the taps this stage fills (edgepipe.pipeline.tap)
            if ln.tap:
                stage, port, _is_producer = tap_filler(self.spec, link)
                if stage == spec.name:
                    side = tap_link(link)
                    out.ports.add(name=port + TAP_SUFFIX, direction=pb.Direction.DIRECTION_OUTPUT, link=side,
                                  link_index=self.link_names.index(side), mode="drop")
        out.budgets.extend(pb.LatencyBudget(part=k, budget_ns=v) for k, v in self.spec.budgets_ns().items())
        for link, (producer, inputs) in self._topology().items():
            out.topology.add(link=link, producer=producer, producer_inputs=inputs)
        t = spec.target
        args: tuple = ()
        params = dict(spec.params)
        if t is None and is_import_path(spec.kind):  # the user's own stage, checked (and imported) by validate
            t = resolve_kind(spec.kind)[0]
            if not (isinstance(t, type) and issubclass(t, Stage) and not issubclass(t, PipelineStage)):
                # a PipelineStage class or a function stage: made here as Pipeline([...]) would be given it
                t = t(name=spec.name, inputs=dict(spec.inputs), outputs=dict(spec.outputs), **params)
        if t is None:
            path, raw = kind_entry(spec.kind)
            out.construct = pb.Construct.CONSTRUCT_RAW if raw else pb.Construct.CONSTRUCT_TARGET
            obj = None
        elif isinstance(t, PipelineStage):
            obj, args, params, role = t.rebuild_args()
            out.construct = pb.Construct.CONSTRUCT_FUNCTION if role else pb.Construct.CONSTRUCT_INSTANCE
            out.function_role = role
            path = _import_path(obj, key)
        else:
            obj = t
            out.construct = pb.Construct.CONSTRUCT_TARGET
            path = _import_path(obj, key)
        for what, value in (("args", list(args)), ("params", params)):
            bad = check_plain(value, what)
            if bad:
                raise ConfigError(f"{key}: cannot be sent to its process: {bad}, not a plain value (a stage's "
                                  f"arguments travel as data: strings, numbers, booleans, None, paths, lists and "
                                  f"tables of them; code is named by import path)", key=key)
        out.target = path
        out.args.extend(to_value(a) for a in args)
        out.params.extend(to_params(params))
        if path.startswith("__main__:"):
            main_path = getattr(sys.modules.get("__main__"), "__file__", None)
            if not main_path:
                raise ConfigError(f"{key}: {path} is defined in an interactive session; a stage process can only "
                                  f"import it from a file (put it in a module or a script)", key=key)
            out.main_path = os.path.abspath(main_path)
        out.sys_path.extend(p for p in sys.path if p)
        out.sys_path.extend(d for d in self.spec.import_dirs if d not in sys.path)  # the pipeline file's, last
        return out

    def _topology(self) -> dict[str, tuple[str, list[str]]]:
        """link -> (its producer stage, that stage's input links): sinks name latency parts with it."""
        out = {}
        for s in self.spec.stages:
            for link in s.outputs.values():
                out[link] = (s.name, list(s.inputs.values()))
        return out

    def _talk(self, c: _Child, sock: FrameSocket, run: int) -> None:
        """Handshake with one child, then read its Stats / Error until it hangs up."""
        try:
            env = sock.recv(timeout_s=self.spec.start_timeout_s)
            if env.WhichOneof("body") != "hello":
                raise FrameError(f"stage {c.name!r} sent {env.WhichOneof('body')} before hello")
            sock.send(Envelope(reply_to=env.seq, welcome=pb.Welcome(
                protocol_major=PROTOCOL_MAJOR, protocol_minor=PROTOCOL_MINOR, pid=os.getpid(), session_id=c.index)))
            launch = pb.StageSpec()
            launch.CopyFrom(c.launch)
            launch.attempt = c.restarts
            descs, fds = [], []
            for port in launch.ports:
                descs.append(pb.RingDescriptor(name=port.link, capacity=self.spec.links[port.link].capacity,
                                               fd_follows=True, direction=port.direction))
                fds.append(self._rings[port.link].fd)
            sock.send_fds(fds, Envelope(attach=pb.Attach(rings=descs)), timeout_s=5)
            if c.is_source:
                # Sources get their description (and so start producing) only once every other stage is
                # running: records must not wait in a ring for a consumer that is still importing.
                while not self._consumers_ready.wait(0.1):
                    if self._stop_req.is_set():
                        break
            sock.send(Envelope(stage_spec=launch), timeout_s=5)
            while True:
                env = sock.recv()
                body = env.WhichOneof("body")
                if body == "stats":
                    own = [s for s in env.stats.stages if s.name == c.name]
                    with self._lock:
                        c.hists[run] = list(env.stats.latencies)
                        if own:
                            c.stats = stats_from_state(own[0])
                    if own and own[0].state in ("running", "closing", "done") and not c.ready.is_set():
                        c.ever_ran = True
                        c.state = "running"
                        c.ready.set()
                    self._publish(env)
                elif body == "error":
                    c.error = env.error.message
                    c.ready.set()
        except PeerClosedError:
            pass
        except Exception as e:  # noqa: BLE001 - whatever broke, the child must not wait for us
            c.error = c.error or f"control socket: {type(e).__name__}: {e}"
            sock.close()  # the child sees the supervisor hang up and exits
        finally:
            c.ready.set()

    def _await_ready(self) -> None:
        deadline = time.monotonic() + self.spec.start_timeout_s
        try:
            for c in self.children:
                if not c.is_source:
                    self._await_one(c, deadline)
        finally:
            self._consumers_ready.set()
        for c in self.children:
            if c.is_source:
                self._await_one(c, deadline)

    def _await_one(self, c: _Child, deadline: float) -> None:
        while not c.ready.wait(0.05):
            if c.proc.poll() is not None:
                c.thread.join(1.0)
                break
            if time.monotonic() > deadline:
                raise EdgepipeError(f"stage {c.name!r} did not start within {self.spec.start_timeout_s} s")
        if c.state != "running":
            c.proc.wait(5)
            c.thread.join(1.0)
            why = c.error or f"exited with status {c.proc.returncode} before it was running"
            c.state = "failed"
            raise EdgepipeError(f"stage {c.name!r} could not start: {why}")

    def _loop(self) -> None:
        next_stats = time.monotonic()
        stopping_since = None
        while True:
            now = time.monotonic()
            self._reap(now)
            if self._stop_req.is_set():
                if stopping_since is None:
                    stopping_since = now
                    for c in self.children:
                        if c.is_source or self._abort:
                            self._send_stop(c, self._stop_reason or "stop requested")
                self._escalate(now - stopping_since)
            if now >= next_stats:
                next_stats = now + self.spec.stats_interval_s
                self._tick()
            if all(c.state in ("done", "failed") for c in self.children):
                break
            time.sleep(_POLL_S)
        self._tick()

    def _reap(self, now: float) -> None:
        for c in self.children:
            if c.state == "backoff":
                if self._stop_req.is_set():
                    self._give_up(c, "not restarted: the pipeline is stopping", failed=False)
                elif now >= c.restart_at:
                    c.restarts += 1
                    self._spawn(c)
                continue
            if c.proc is None or c.state in ("done", "failed"):
                continue
            rc = c.proc.poll()
            if rc is None:
                continue
            if c.thread is not None:
                c.thread.join(2.0)
            if c.sock is not None:
                c.sock.close()
            c.exit_codes.append(rc)
            crashed = rc != 0
            again = (c.restart == "always" or (crashed and c.restart == "on-failure"))
            # only the restarts of the last restart_window_s count: a stage that crashes now and then is
            # restarted forever, one that crashes in a burst is given up
            c.recent_crashes = [t for t in c.recent_crashes if now - t < self.spec.restart_window_s]
            recent = len(c.recent_crashes)
            if again and c.ever_ran and not self._stop_req.is_set() and recent < c.max_restarts:
                delay = min(5.0, self.spec.backoff_s * (2 ** recent))
                c.state = "backoff"
                c.restart_at = now + delay
                c.recent_crashes.append(now)
                why = c.error or (f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}")
                print(f"edgepipe: stage {c.name!r} {('crashed: ' + why) if crashed else 'ended'}; "
                      f"restart {recent + 1}/{c.max_restarts} (within {self.spec.restart_window_s:g} s) "
                      f"in {delay:.2f} s", file=sys.stderr)
                c.error = None
                continue
            if crashed and not self._stop_req.is_set():
                why = c.error or (f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}")
                self._give_up(c, f"stage {c.name!r} failed: {why}" +
                              (f" (after {recent} restarts within {self.spec.restart_window_s:g} s)" if recent else ""),
                              failed=True)
            else:
                c.state = "done"
                if crashed:  # while stopping: it did not finish cleanly (killed after the drain timeout?)
                    self._close_ends(c)
                    why = c.error or (f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}")
                    c.state = "failed"
                    c.error = c.error or why
                    self._failure = self._failure or f"stage {c.name!r} did not stop cleanly: {why}"

    def _give_up(self, c: _Child, why: str, failed: bool) -> None:
        """A stage that will not run again: close its ring ends so its neighbours see end of stream."""
        c.state = "failed" if failed else "done"
        self._close_ends(c)
        if failed:
            c.error = c.error or why
            self._failure = self._failure or why
            print(f"edgepipe: {why}; stopping the pipeline", file=sys.stderr)
            self.stop(why)

    def _close_ends(self, c: _Child) -> None:
        ends = [(link, port in c.spec.outputs) for port, link in {**c.spec.outputs, **c.spec.inputs}.items()]
        for link, ln in self.spec.links.items():  # the taps it fills: their recorders see the end too
            if ln.tap and tap_filler(self.spec, link)[0] == c.name:
                ends.append((tap_link(link), True))
        for link, is_writer in ends:
            ring = self._rings.get(link)
            if ring is None:
                continue
            try:
                end = ring.writer() if is_writer else ring.reader()
                end.close()
            except EdgepipeError:
                pass  # a live holder (the new process) or already closed: nothing to do

    def _send_stop(self, c: _Child, reason: str) -> None:
        if c.stop_sent or c.sock is None or c.state not in ("starting", "running"):
            return
        c.stop_sent = True
        try:
            c.sock.send(Envelope(stop=pb.Stop(reason=reason, grace_ns=int(self.spec.drain_timeout_s * 1e9))),
                        timeout_s=1.0)
        except (FrameError, OSError):
            pass

    def _escalate(self, waited: float) -> None:
        drain = self.spec.drain_timeout_s
        for c in self.children:
            if c.state not in ("starting", "running") or c.proc is None or c.proc.poll() is not None:
                continue
            if waited >= drain:
                self._send_stop(c, "drain timeout")
            if waited >= drain + 1.0:
                _signal(c.proc, signal.SIGTERM)
            if waited >= drain + 2.0:
                _signal(c.proc, signal.SIGKILL)

    def _tick(self) -> None:
        """Every stats interval: a point of the per-part time series, link rates, the stats file."""
        t = time.monotonic()
        totals: dict[str, list[int]] = {}
        with self._lock:
            for c in self.children:
                for run in c.hists:
                    for m in run:
                        acc = totals.setdefault(m.name, [0, 0])
                        acc[0] += sum(m.counts)
                        acc[1] += m.sum_ns
        means = {}
        for part, (n, s) in totals.items():
            pn, ps = self._prev_totals.get(part, (0, 0))
            if n > pn:
                means[part] = round((s - ps) / (n - pn) / 1e6, 4)
        self._prev_totals = {k: (v[0], v[1]) for k, v in totals.items()}
        if means:
            self._series.append({"t_s": round(t - self._t_start, 3), "mean_ms": means})
        for name, ring in list(self._rings.items()):
            try:
                s = ring.status()
            except EdgepipeError:
                continue
            n = getattr(s, "records_written", None)
            if n is None:
                n = s.published
            pt, pn = self._prev_links.get(name, (t, n))
            if t > pt:
                self._link_rates[name] = round((n - pn) / (t - pt), 1)
            self._prev_links[name] = (t, n)
        if self.stats_path:
            self._write_stats_file()
        if self._server is not None and self._server.sessions():
            self._publish(Envelope(stats=self._rollup()))

    def live(self) -> dict[str, Any]:
        """What ``edgepipe top`` shows: stages, links and per-part latency (p50/p99 vs budget)."""
        book = self.latency()
        parts = []
        for part in book.order:
            h = book.hists[part]
            b = budget_for(part, self.spec.budgets_ns())
            p50, p99 = percentiles(h, (50.0, 99.0))
            parts.append({"part": part, "count": h.get_total_count(),
                          "p50_ms": p50 / 1e6, "p99_ms": p99 / 1e6,
                          "max_ms": h.get_max_value() / 1e6, "budget_ms": None if b is None else b / 1e6,
                          "violations": book.violations.get(part, 0)})
        parts.sort(key=lambda p: (p["part"] == E2E, p["part"].startswith(E2E)))
        return {"name": self.spec.name, "pid": os.getpid(), "wall_ns": wall_ns(), "socket": self.control_socket,
                "uptime_s": round(time.monotonic() - self._t_start, 1), "t_s": round(time.monotonic(), 3),
                "stages": self.stage_stats(),
                "links": self.link_stats(), "parts": parts}

    def _write_stats_file(self) -> None:
        try:
            tmp = self.stats_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.live(), f, default=str)
            os.replace(tmp, self.stats_path)
        except OSError:
            pass

    def _teardown(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in self.children:
            if c.proc is not None and c.proc.poll() is None:
                _signal(c.proc, signal.SIGKILL)
                c.proc.wait()
            if c.sock is not None:
                c.sock.close()
            if c.thread is not None:
                c.thread.join(1.0)
        self._final_links = {}
        self._final_links = self.link_stats()
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        self._t_end = time.monotonic()
        failed = [c.name for c in self.children if c.state == "failed"]
        self._status = 1 if (failed or self._failure or self._start_error) else 0
        if self.stats_path:
            for p in (self.stats_path, self.stats_path + ".tmp"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _import_path(obj: Any, key: str) -> str:
    """``module:qualname`` of a class or function, checked to import back to the same object (ConfigError
    naming the stage otherwise: a lambda, a class made inside a function, a name that was rebound)."""
    mod = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    if not isinstance(mod, str) or not isinstance(qual, str) or "<" in qual:
        raise ConfigError(f"{key}: cannot be sent to its process: {obj!r:.80} has no importable name (a stage "
                          f"process imports its class or function by module:qualname; define it at the top "
                          f"level of a module or script)", key=key)
    found: Any = sys.modules.get(mod)
    for part in qual.split("."):
        found = getattr(found, part, None)
    if getattr(found, "__wrapped__", None) is obj:  # a @source/@transform/@sink: the module holds the factory
        found = obj
    if found is not obj:
        raise ConfigError(f"{key}: cannot be sent to its process: {mod}:{qual} does not name {obj!r:.80} "
                          f"(a stage process imports it by that name)", key=key)
    return f"{mod}:{qual}"


def _stage_spec(s: Any) -> StageSpec:
    if isinstance(s, StageSpec):
        return s
    if isinstance(s, PipelineStage):
        return StageSpec(name=s.name, kind=None, target=s, inputs=dict(s.input_links), outputs=dict(s.output_links),
                         budget_ms=s.budget_ms, restart=s.restart)
    if isinstance(s, dict):
        return StageSpec(**s)
    raise TypeError(f"a pipeline stage must be a PipelineStage, a StageSpec or a dict, not {type(s).__name__}: {s!r:.80}")
