"""The supervisor: :class:`Pipeline` creates the rings, runs every stage as a process, restarts crashed
stages, stops in order, and reports latency against budgets. Also the stage process's entry point
(``python -m edgepipe.pipeline.supervisor --stage NAME --fd N --parent PID``; users never type it).

Processes. Each stage is ``python -m edgepipe.pipeline.supervisor`` started with one end of a socketpair (fork+exec
through subprocess: a clean interpreter, no inherited threads or locks; about 0.2-0.3 s each on this
machine, started in parallel). The child first asks the kernel to SIGKILL it when its parent dies
(PR_SET_PDEATHSIG) and then checks that its parent is still the supervisor, so a kill -9 of the supervisor
leaves no stage behind; the rings are memfds, so it leaves nothing in /dev/shm either.

Control socket (edgepipe.control.framing.FrameSocket, one per stage). Frames are ``edgepipe.v1.Envelope``:
child -> Hello; supervisor -> Welcome, then Attach with the ring fds (SCM_RIGHTS), then one raw frame with
the pickled stage description. The child answers with Stats (ring counters and latency histograms)
every ``stats_interval_s`` and before it exits, an Error if the stage failed, and receives Stop. Next to
each Stats goes a frame holding ``Stage.stats()`` as JSON (it starts with ``{``, a byte no Envelope
starts with), since the counters of a stage have no place in Stats.

Stopping: stop() sends Stop to the sources only. Each source returns from its loop and closes its
outputs; a consumer drains what is queued, sees end of stream, and closes its own outputs, and so on to the
sinks, so every record in flight is delivered. Whatever has not finished after ``drain_timeout_s`` gets
Stop, a second later SIGTERM, and a second after that SIGKILL (and the run counts as failed).

Restarts: a stage that exits non-zero (or is killed) after it was running is started again with
exponential backoff, under its policy (never / on-failure / always) and at most ``max_restarts`` times.
Its rings stay where they are: its neighbours wait for the new process (a ring end held by a dead process
can be taken over), so queued records are not lost. A stage that fails for good has its ring ends
closed by the supervisor (its neighbours see end of stream) and the pipeline stops in order and fails.

>>> from edgepipe.pipeline.api import CheckStage, CounterStage
>>> p = Pipeline([CounterStage("src", count=100, outputs={"out": "n"}),
...               CheckStage("sink", inputs={"in": "n"})], budgets={"end_to_end": 1000})
>>> p.run()
0
>>> p.stage_stats()["sink"]["ok"], p.report()["parts"][-1]["part"]
(100, 'end_to_end')
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
from edgepipe.clock import now_ns, wall_ns
from edgepipe.pipeline.config import (
    LinkSpec,
    PipelineSpec,
    StageSpec,
    _latest_slot,
    import_target,
    kind_entry,
    load_config,
    validate,
)
from edgepipe.errors import ConfigError, EdgepipeError, FrameError, FrameTimeoutError, PeerClosedError
from edgepipe.control.framing import PROTOCOL_MAJOR, PROTOCOL_MINOR, Envelope, FrameSocket
from edgepipe.pipeline.api import Inlet, Outlet, PipelineStage
from edgepipe.pipeline.stats import stage_counts
from edgepipe.pipeline.report import E2E, LatencyBook, budget_for, build_report, percentiles, write_report
from edgepipe.ring import Ring

__all__ = ["Pipeline", "runtime_dir"]

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.02


def runtime_dir() -> str:
    """Where running supervisors publish their stats for ``edgepipe top`` (created 0700 on demand):
    ``$XDG_RUNTIME_DIR/edgepipe`` or ``/tmp/edgepipe-<uid>``."""
    from edgepipe.control.server import default_socket_dir  # the same directory as the control sockets

    d = os.fspath(default_socket_dir())
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


# ---------------------------------------------------------------------------------------------------
# parent side


class _Child:
    """The supervisor's view of one stage: its spec, process, control socket and latest stats."""

    def __init__(self, index: int, spec: StageSpec, restart: str, max_restarts: int) -> None:
        self.index = index
        self.spec = spec
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
        name, restart, max_restarts, backoff_s, stats_interval_s, drain_timeout_s, start_timeout_s,
        report_dir: as in the TOML ``[pipeline]`` table (see edgepipe.pipeline.config).
        stats_path: where to publish live stats for ``edgepipe top`` (default: in :func:`runtime_dir`;
            ``False``: nowhere).
        control_socket: a Unix socket path where an :class:`edgepipe.control.server.Server` publishes Stats:
            each stage's as it arrives, and every stats interval the pipeline's roll-up (``stage_name``
            ``"pipeline:<name>"``: every stage's state, pid and restarts, every ring's counters, every latency
            part's histogram and the budgets). Clients
            connect with ``Client.connect(path, role="monitor", subscribe=["stats"])``, as ``edgepipe top
            --socket`` does. Default: next to the stats file when that is on; ``False``: no socket.

    Raises:
        ConfigError: the description cannot run (before anything starts).
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
        for st in spec.stages:
            # each stage travels to its process pickled: refuse what cannot travel now, not at start
            try:
                pickle.dumps((st.target, st.params))
            except Exception as e:  # noqa: BLE001 - pickling raises many types
                raise ConfigError(f"stages.{st.name}: cannot be sent to its process (its arguments must pickle): "
                                  f"{type(e).__name__}: {e}", key=f"stages.{st.name}") from None
        self.spec = spec
        self.stage_names = [s.name for s in spec.stages]
        self.link_names = list(spec.links)
        self.children = [_Child(i, s, spec.restart, spec.max_restarts) for i, s in enumerate(spec.stages)]
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
        if _BOOTSTRAPPING:
            raise RuntimeError("a stage process is importing your script to find the stages defined in it, and "
                               "the script starts a pipeline at import: put that under "
                               "`if __name__ == \"__main__\":`")
        self._t_start = time.monotonic()
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
            d["dropped"] = d.get("overwritten", 0) + self._drops_on(name)
            out[name] = d
        return out

    def _drops_on(self, link: str) -> int:
        n = 0
        for c in self.children:
            for k, v in (c.stats or {}).items():
                if k.startswith(f"dropped[{link}: "):
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
            srv.start()
        except (EdgepipeError, OSError, ValueError) as e:  # the pipeline runs without its socket
            print(f"edgepipe: no control socket at {self.control_socket}: {e}", file=sys.stderr)
            self.control_socket = None
            return
        self._server = srv

    def _rollup(self) -> pb.Stats:
        """The pipeline's Stats: every ring's counters, every latency part merged over the sinks."""
        st = pb.Stats(stage_name=f"pipeline:{self.spec.name}", t_ns=now_ns())
        for name, ln in self.link_stats().items():
            st.rings.append(pb.RingCounters(name=name, records_written=ln["records_written"],
                                            records_read=ln["records_read"], full_events=ln["full_events"],
                                            dropped=ln["dropped"], used=ln["used"], capacity=ln["capacity"],
                                            mode=ln["mode"]))
        st.latencies.extend(self.latency().to_proto())

        for name, d in self.stage_stats().items():
            received, emitted, dropped = stage_counts(d)
            st.stages.append(pb.StageState(name=name, kind=d.get("kind") or "", state=d["state"], pid=d["pid"] or 0,
                                           restarts=d["restarts"], error=d.get("error") or "",
                                           received=received or 0, emitted=emitted or 0, dropped=dropped))
        st.budgets.extend(pb.LatencyBudget(part=k, budget_ns=v) for k, v in self.spec.budgets_ns().items())
        return st

    def _publish(self, env: Envelope) -> None:
        if self._server is not None and not self._server.closed:
            try:
                self._server.publish(env)
            except (EdgepipeError, OSError):
                pass  # a subscriber's trouble is the server's to count, never the pipeline's

    def _create_rings(self) -> None:
        Latest = _latest_slot()
        for name, ln in self.spec.links.items():
            if ln.mode == "latest":
                if Latest is None:
                    raise ConfigError(f"links.{name}.mode: 'latest' needs edgepipe.frames.LatestSlot")
                self._rings[name] = Latest.create(None, max_frame_bytes=ln.capacity)
            else:
                self._rings[name] = Ring.create(None, ln.capacity)

    def _spawn(self, c: _Child) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # -c rather than -m: edgepipe/__init__ imports this module, and runpy warns about that;
            cmd = [sys.executable, "-c", "import sys; from edgepipe.pipeline.supervisor import main; sys.exit(main())",
                   "--stage", c.name, "--fd", str(b.fileno()), "--parent", str(os.getpid())]
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

    def _bootstrap(self, c: _Child) -> bytes:
        spec = c.spec
        ports = {}
        for direction, mapping in (("in", spec.inputs), ("out", spec.outputs)):
            for port, link in mapping.items():
                ports[port] = (direction, link, self.link_names.index(link), self.spec.links[link].mode)
        main = sys.modules.get("__main__")
        main_path = getattr(main, "__file__", None)
        body = {
            "index": c.index, "name": c.name, "kind": spec.kind, "target": spec.target,
            "kind_entry": kind_entry(spec.kind) if spec.target is None else None,
            "params": spec.params, "ports": ports, "stage_names": self.stage_names,
            "link_names": self.link_names, "budgets_ns": self.spec.budgets_ns(),
            "stats_interval_s": self.spec.stats_interval_s, "topology": self._topology(),
        }
        # Two layers: the outer one (plain data) sets up sys.path and __main__ so the inner one can be
        # unpickled (it may name classes from the user's script or test module).
        return pickle.dumps({
            "ports": ports, "sys_path": [p for p in sys.path if p],
            "main_path": os.path.abspath(main_path) if main_path and _defined_in_main(spec) else None,
            "body": pickle.dumps(body),
        })

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
            boot = self._bootstrap(c)
            descs, fds = [], []
            for port, (direction, link, _, mode) in pickle.loads(boot)["ports"].items():
                r = self._rings[link]
                descs.append(pb.RingDescriptor(
                    name=link, capacity=self.spec.links[link].capacity, fd_follows=True,
                    direction=pb.DIRECTION_INPUT if direction == "in" else pb.DIRECTION_OUTPUT))
                fds.append(r.fd)
            sock.send_fds(fds, Envelope(attach=pb.Attach(rings=descs)), timeout_s=5)
            if c.is_source:
                # Sources get their description (and so start producing) only once every other stage is
                # running: records must not wait in a ring for a consumer that is still importing.
                while not self._consumers_ready.wait(0.1):
                    if self._stop_req.is_set():
                        break
            sock.send_bytes(boot, timeout_s=5)
            while True:
                data = sock.recv_bytes()
                if data[:1] == b"{":
                    st = json.loads(data)
                    with self._lock:
                        c.stats = st
                    if st.get("state") in ("running", "closing", "done") and not c.ready.is_set():
                        c.ever_ran = True
                        c.state = "running"
                        c.ready.set()
                    continue
                env = FrameSocket.decode(data)
                body = env.WhichOneof("body")
                if body == "stats":
                    with self._lock:
                        c.hists[run] = list(env.stats.latencies)
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
            if again and c.ever_ran and not self._stop_req.is_set() and c.restarts < c.max_restarts:
                delay = min(5.0, self.spec.backoff_s * (2 ** c.restarts))
                c.state = "backoff"
                c.restart_at = now + delay
                why = c.error or (f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}")
                print(f"edgepipe: stage {c.name!r} {('crashed: ' + why) if crashed else 'ended'}; "
                      f"restart {c.restarts + 1}/{c.max_restarts} in {delay:.2f} s", file=sys.stderr)
                c.error = None
                continue
            if crashed and not self._stop_req.is_set():
                why = c.error or (f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}")
                self._give_up(c, f"stage {c.name!r} failed: {why}" +
                              (f" (after {c.restarts} restarts)" if c.restarts else ""), failed=True)
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
        for port, link in {**c.spec.outputs, **c.spec.inputs}.items():
            ring = self._rings.get(link)
            if ring is None:
                continue
            try:
                end = ring.writer() if port in c.spec.outputs else ring.reader()
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
                "uptime_s": round(time.monotonic() - self._t_start, 1), "stages": self.stage_stats(),
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


def _defined_in_main(spec: StageSpec) -> bool:
    t = spec.target
    if t is None:
        return False
    mod = getattr(t, "__module__", None) or getattr(type(t), "__module__", None)
    if isinstance(t, PipelineStage) and getattr(t, "fn", None) is not None:
        mod = t.fn.__module__
    return mod == "__main__"


def _stage_spec(s: Any) -> StageSpec:
    if isinstance(s, StageSpec):
        return s
    if isinstance(s, PipelineStage):
        return StageSpec(name=s.name, kind=None, target=s, inputs=dict(s.input_links), outputs=dict(s.output_links),
                         budget_ms=s.budget_ms, restart=s.restart)
    if isinstance(s, dict):
        return StageSpec(**s)
    raise TypeError(f"a pipeline stage must be a PipelineStage, a StageSpec or a dict, not {type(s).__name__}: {s!r:.80}")


# ---------------------------------------------------------------------------------------------------
# child side


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - Linux always has prctl
        pass
    if os.getppid() != parent:  # the parent died before prctl: nobody will reap us
        os._exit(3)


_BOOTSTRAPPING = False  # true while a stage process re-runs the user's script to find its classes


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


def _build(boot: dict, fds: list[int]):
    """Attach the rings, make the ring ends and the stage."""
    ports = boot["ports"]
    rings, ends_in, ends_out = [], {}, {}
    for (port, (direction, link, link_index, mode)), fd in zip(ports.items(), fds):
        if mode == "latest":
            Latest = _latest_slot()
            r = Latest.from_fd(fd)
        else:
            r = Ring.from_fd(fd)
        os.close(fd)
        rings.append(r)
        if direction == "in":
            ends_in[port] = (r.reader(), link, link_index, mode)
        else:
            ends_out[port] = (r.writer(), link, link_index, mode)
    target = boot["target"]
    params = dict(boot["params"])
    raw = False
    if target is None:
        tpath, raw = boot["kind_entry"]
        target = import_target(tpath, boot["kind"])
    is_sink = bool(ends_in) and not ends_out
    book = LatencyBook(boot["stage_names"], boot["link_names"], boot["budgets_ns"], sink=boot["name"]) if is_sink else None

    def inlets():
        return {p: Inlet(e, ln, li, topology=boot["topology"]) for p, (e, ln, li, m) in ends_in.items()}

    def outlets():
        for p, (e, ln, li, m) in ends_out.items():
            if m == "latest":
                raise ConfigError(f"stage {boot['name']!r}: link {ln!r} is latest-only (numpy frames); only "
                                  f"frame stages (capture, inference) can use it")
        return {p: Outlet(e, ln, boot["index"], "drop" if m == "drop" else "lossless", li)
                for p, (e, ln, li, m) in ends_out.items()}

    if isinstance(target, PipelineStage):
        stage = target
        stage.attach(inlets(), outlets(), book)
    elif raw:
        kw = {p: e for p, (e, *_rest) in {**ends_in, **ends_out}.items()}
        stage = target(name=boot["name"], **params, **kw)
    elif isinstance(target, type) and issubclass(target, PipelineStage):
        inputs = {p: ln for p, (e, ln, li, m) in ends_in.items()}
        outputs = {p: ln for p, (e, ln, li, m) in ends_out.items()}
        stage = target(name=boot["name"], inputs=inputs, outputs=outputs, **params)
        stage.attach(inlets(), outlets(), book)
    else:
        stage = target(name=boot["name"], **params, **inlets(), **outlets())
    stage.name = boot["name"]
    return stage, rings, {**ends_in, **ends_out}


def _stats_msg(stage, ends: dict) -> Envelope:
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
    return Envelope(stats=st)


def _child(args: argparse.Namespace) -> int:
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    sock = FrameSocket.from_fd(args.fd)
    send_lock = threading.Lock()

    def send(msg=None, raw=None) -> None:
        with send_lock:
            if msg is not None:
                sock.send(msg, timeout_s=5)
            if raw is not None:
                sock.send_bytes(raw, timeout_s=5)

    send(Envelope(seq=1, hello=pb.Hello(protocol_major=PROTOCOL_MAJOR, protocol_minor=PROTOCOL_MINOR,
                                         stage_name=args.stage, pid=os.getpid(), role=pb.ROLE_STAGE)))
    sock.recv(timeout_s=30)  # Welcome
    data, fds = sock.recv_fds(timeout_s=30)
    FrameSocket.decode(data)  # the Attach; its fds come in the order of the bootstrap's ports
    while True:
        data = sock.recv_bytes(timeout_s=30)
        if data[:1] == b"\x80":  # a pickle: the stage's description
            break
        if FrameSocket.decode(data).WhichOneof("body") == "stop":  # stopped before it was described
            return 0
    outer = pickle.loads(data)  # noqa: S301 - our own parent's bytes
    for p in reversed(outer["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        if outer["main_path"]:
            _load_main(outer["main_path"])
        boot = pickle.loads(outer["body"])  # noqa: S301
        stage, rings, ends = _build(boot, fds)
    except BaseException as e:  # noqa: BLE001 - reported to the supervisor
        send(Envelope(error=pb.Error(code=pb.ERROR_CODE_INTERNAL, message=f"{type(e).__name__}: {e}")))
        return 2

    def stats_json() -> bytes:
        return json.dumps(stage.stats(), default=str).encode()

    signal.signal(signal.SIGTERM, lambda s, f: stage.stop())
    done = threading.Event()
    user_open = stage.open

    def open_and_report() -> None:
        # The supervisor counts a stage as started once open() returned: say so at once, before the loop
        # (a loop that fails on its first record is a crash to restart, not a stage that cannot start).
        user_open()
        st = stage.stats()
        st["state"] = "running"
        send(raw=json.dumps(st, default=str).encode())

    stage.open = open_and_report

    def control() -> None:
        # Stats every interval; Stop -> stage.stop(); the supervisor hanging up -> stop too.
        reported_running = False
        while not done.is_set():
            try:
                env = sock.recv(timeout_s=boot["stats_interval_s"] if reported_running else 0.01)
                if env.WhichOneof("body") == "stop":
                    stage.stop()
                continue
            except FrameTimeoutError:
                pass
            except (FrameError, OSError):
                stage.stop()  # the supervisor hung up
                return
            if stage.state in ("new", "opening"):
                continue
            try:
                send(_stats_msg(stage, ends), stats_json())
                reported_running = True
            except (FrameError, OSError):
                stage.stop()
                return

    ctl = threading.Thread(target=control, name="edgepipe-stage-control", daemon=True)
    ctl.start()
    status = stage.run()
    done.set()
    ctl.join(2.0)
    try:
        send(_stats_msg(stage, ends), stats_json())
        if status != 0:
            err = stage.error
            send(Envelope(error=pb.Error(code=pb.ERROR_CODE_INTERNAL,
                                         message=f"{type(err).__name__}: {err}" if err else "stage failed")))
    except (FrameError, OSError):
        pass
    if status != 0:
        # Leave the ring ends held by this (dying) process: its neighbours wait for a restart instead of
        # taking "closed" for the end of the stream.
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
    p = argparse.ArgumentParser(prog="python -m edgepipe.pipeline.supervisor",
                                description="(internal) one stage process of a supervised pipeline.")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.fd is not None:
        return _child(args)
    p.error("this is the entry point of a pipeline's stage processes; run a pipeline file with `edgepipe run FILE`")
    return 2


if __name__ == "__main__":
    sys.exit(main())
