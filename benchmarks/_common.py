"""Shared plumbing for the edgepipe benchmarks (standalone scripts, not run by pytest).

What lives here: the common command line (``--seconds``, ``--size``, ``--cpus``), the environment header
every script prints first, the cache-line probe (``cacheline.c``, compiled with gcc into a temp dir at run
time), pinned process pairs, hdrhistogram percentiles, the peers' shared set-up (iceoryx2 services, frame
payloads, shared_memory frame slots) and clean-up helpers, and plain-text tables.

Why a probe beside every number: the VM's two vCPUs wander between a "near" pair of physical cores and a
"far" pair every few seconds, which moves busy-poll figures 2-6x. Each case is bracketed by a probe of the
one-way cache-line transfer, so a reader can see which pair a number came from; only ratios within one run
(ideally within one probe class) are meaningful.

One piece: every script imports it as ``_common`` from its own directory (the benchmarks are standalone
scripts, not a package), so splitting it would only add more sibling modules each script must find.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import datetime
import importlib.metadata
import json
import math
import mmap
import multiprocessing
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from array import array
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
NEAR_FAR_SPLIT_NS = 100.0  # one-way transfer below this: the near core pair; above: the far pair

_MP = multiprocessing.get_context("fork")  # children inherit rings, sockets and queues made by the parent
_TMP: Path | None = None


# ---------------------------------------------------------------------------------------------------
# command line and header


def parse_args(description: str, default_seconds: float, extra=None, size_default: int | None = 64,
               size_help: str = "payload bytes per message (>= 8: a sequence number)") -> argparse.Namespace:
    """The flags every benchmark takes; ``extra(parser)`` may add script-specific ones. A ``size_default``
    of None lets the script pick the size when --size is not given."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seconds", type=float, default=default_seconds, help="measured time per case")
    p.add_argument("--size", type=int, default=size_default, help=size_help)
    p.add_argument("--cpus", default="0,1", help="two CPUs to pin the two processes to, e.g. 0,1")
    p.add_argument("--only", default="", help="comma-separated substrings: run only cases whose name matches")
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole case list this many times")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    if extra:
        extra(p)
    a = p.parse_args()
    try:
        cpus = tuple(int(c) for c in a.cpus.split(","))
    except ValueError:
        p.error(f"--cpus must be two integers like 0,1, got {a.cpus!r}")
    if len(cpus) != 2 or cpus[0] == cpus[1]:
        p.error(f"--cpus needs two different CPUs, got {a.cpus!r}")
    avail = os.sched_getaffinity(0)
    if not set(cpus) <= avail:
        p.error(f"--cpus {a.cpus} not all available to this process (allowed: {sorted(avail)})")
    if a.size is not None and a.size < 8:
        p.error(f"--size must be >= 8 (the first 8 bytes carry a sequence number), got {a.size}")
    if not 0 < a.seconds <= 600:
        p.error(f"--seconds must be in (0, 600], got {a.seconds}")
    if not 1 <= a.rounds <= 20:
        p.error(f"--rounds must be 1..20, got {a.rounds}")
    a.cpus = cpus
    a.only = [s for s in a.only.split(",") if s]
    return a


def selected(name: str, only: list[str]) -> bool:
    return not only or any(s in name for s in only)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_state() -> str:
    """The checkout the numbers came from: commit, and whether csrc/ or src/edgepipe/ had local edits."""
    root = HERE.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %cs"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "csrc", "src/edgepipe"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted edits in csrc/ or src/edgepipe/' if dirty else ''}"


def environment() -> dict:
    """CPU, kernel, Python and every library version the benchmarks touch."""
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} CPUs)",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    for dist in ("edgepipe", "cffi", "numpy", "hdrhistogram", "posix_ipc", "faster-fifo", "pyzmq", "iceoryx2"):
        env[dist] = _version(dist)
    env["edgepipe git"] = _git_state()
    try:
        import zmq

        env["libzmq"] = zmq.zmq_version()
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        env["libzmq"] = f"unavailable ({e})"
    try:
        env["gcc"] = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        env["gcc"] = "not found"
    env["loadavg"] = loadavg()
    env["argv"] = command_line()
    return env


def command_line() -> str:
    """How this script was started, as a user would type it from the checkout's root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(HERE.parent)
    except ValueError:
        pass
    return " ".join(["python", str(script)] + [shlex.quote(a) for a in sys.argv[1:]])


def print_header(title: str, args: argparse.Namespace) -> dict:
    env = environment()
    print(f"== {title}")
    for k, v in env.items():
        print(f"  {k:<13} {v}")
    print(f"  {'argv':<13} {env['argv']}")
    print(f"  {'settings':<13} seconds={args.seconds} size={args.size} cpus={args.cpus[0]},{args.cpus[1]}")
    print(flush=True)
    return env


# ---------------------------------------------------------------------------------------------------
# scratch space


def tmpdir() -> Path:
    """One private temp dir per run, removed at exit (probe binary, zmq sockets, iceoryx2 roots)."""
    global _TMP
    if _TMP is None:
        _TMP = Path(tempfile.mkdtemp(prefix="epbench-"))
        pid = os.getpid()
        atexit.register(lambda: os.getpid() == pid and shutil.rmtree(_TMP, ignore_errors=True))
    return _TMP


# ---------------------------------------------------------------------------------------------------
# the cache-line probe


@dataclass
class ProbeResult:
    p50_ns: float
    min_ns: float

    @property
    def pair(self) -> str:
        return "near" if self.p50_ns < NEAR_FAR_SPLIT_NS else "far"

    def __str__(self) -> str:
        return f"{self.p50_ns:.0f}"


class Probe:
    """Runs cacheline.c: the one-way cache-line transfer between the two benchmark CPUs, in ns."""

    def __init__(self, cpus: tuple[int, int], ms: int = 150) -> None:
        self.cpus = cpus
        self.ms = ms
        self.exe: Path | None = None
        self.error = ""
        exe = tmpdir() / "cacheline"
        cmd = ["gcc", "-O2", "-pthread", "-o", str(exe), str(HERE / "cacheline.c")]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.error = f"cannot run gcc: {e}"
            return
        if r.returncode != 0:
            self.error = f"gcc failed: {r.stderr.strip()[:300]}"
            return
        self.exe = exe

    def measure(self) -> ProbeResult | None:
        """One probe run; one retry if it fails (a busy machine can starve it), else None and .error."""
        return self._measure() or self._measure()

    def _measure(self) -> ProbeResult | None:
        if self.exe is None:
            return None
        try:
            r = subprocess.run([str(self.exe), str(self.cpus[0]), str(self.cpus[1]), str(self.ms)],
                               capture_output=True, text=True, timeout=10 + self.ms / 1000)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.error = f"probe did not run: {e}"
            return None
        if r.returncode != 0:
            self.error = f"probe failed ({r.returncode}): {r.stderr.strip()[:200]}"
            return None
        kv = dict(item.split("=") for item in r.stdout.split())
        return ProbeResult(float(kv["p50_ns"]), float(kv["min_ns"]))


def probe_label(before: ProbeResult | None, after: ProbeResult | None) -> str:
    """'near', 'far', or 'mixed' when the pair changed during the case."""
    if before is None or after is None:
        return "?"
    return before.pair if before.pair == after.pair else "mixed"


# ---------------------------------------------------------------------------------------------------
# pinned process pairs


class Skip(Exception):
    """A peer that cannot run here: the reason is printed and the run goes on."""


def pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def _child(fn, cpu: int, sync, conn) -> None:
    try:
        pin(cpu)
        t0, w0 = os.times(), time.perf_counter()
        out = fn(sync)
        t1, w1 = os.times(), time.perf_counter()
        # this side's CPU time (user + system, every thread of the process) over the whole side, set-up and
        # warm-up included: a side that spins while it waits cannot hide it
        if isinstance(out, dict):
            out["_cpu_s"] = (t1.user - t0.user) + (t1.system - t0.system) \
                + (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)  # a C harness
            out["_wall_s"] = w1 - w0
        conn.send(("ok", out))
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent as text
        try:
            sync.abort()  # free a peer stuck at the barrier
        except Exception:  # noqa: BLE001
            pass
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))
    finally:
        conn.close()


def run_pair(fa, fb, cpus: tuple[int, int], timeout_s: float, after_start=None) -> tuple[dict, dict]:
    """Run ``fa(sync)`` pinned to cpus[0] and ``fb(sync)`` pinned to cpus[1] in two forked processes.

    ``sync()`` is a two-party barrier (reusable: call it as often as both sides agree). Each function
    returns a dict. ``after_start()`` runs in the parent once both children exist: the place to close the
    parent's copies of socket and pipe fds, without which one side's close() never reads as EOF.
    Raises RuntimeError naming the side that failed or hung (both children are then killed).
    """
    barrier = _MP.Barrier(2)

    def sync(timeout: float = 60.0) -> None:
        barrier.wait(timeout)

    sync.abort = barrier.abort  # type: ignore[attr-defined]
    procs, conns = [], []
    for fn, cpu in ((fa, cpus[0]), (fb, cpus[1])):
        rx, tx = _MP.Pipe(duplex=False)
        p = _MP.Process(target=_child, args=(fn, cpu, sync, tx), daemon=True)
        p.start()
        tx.close()
        procs.append(p)
        conns.append(rx)
    if after_start is not None:
        after_start()
    results: list = [None, None]
    deadline = time.monotonic() + timeout_s
    try:
        for i, c in enumerate(conns):
            left = deadline - time.monotonic()
            if left <= 0 or not c.poll(left):
                raise RuntimeError(f"side {'AB'[i]} did not finish within {timeout_s:.0f} s")
            try:
                status, payload = c.recv()
            except EOFError:
                raise RuntimeError(f"side {'AB'[i]} died (exit code {procs[i].exitcode})") from None
            if status != "ok":
                raise RuntimeError(f"side {'AB'[i]} failed: {payload}")
            results[i] = payload
    finally:
        for p in procs:
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()
    return results[0], results[1]


# ---------------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    """One benchmark case: ``make()`` (in the parent) returns ``(side_a, side_b[, cleanup[, after_start]])``;
    cleanup and after_start may be None."""

    name: str
    group: str  # e.g. "busy-poll" / "blocking" / "per-call" / "batch"
    edgepipe: bool  # True for edgepipe rows, False for peers
    make: object
    note: str = ""
    result: dict = field(default_factory=dict)
    style: str = ""  # how the ends wait: one of WAIT_STYLES; "" takes the group when that names a style
    batch: int = 1  # messages per call on the sending side (1: one message per call)

    def __post_init__(self) -> None:
        if not self.style and self.group in WAIT_STYLES:
            self.style = self.group
        if self.style and self.style not in WAIT_STYLES:
            raise ValueError(f"case {self.name!r}: waiting style {self.style!r} is not one of {WAIT_STYLES}")


# How a case's ends wait for the other: compare rows of one style only (a spinning end buys latency with a
# core; a blocking one gives the core back). "spin-then-block" is edgepipe's default hybrid policy and a
# peer doing the same by hand (spin ~25 us on a non-blocking check, then a blocking call).
WAIT_STYLES = ("busy-poll", "spin-then-block", "blocking")
SPIN_NS = 25_000  # the spin budget of the spin-then-block peers: edgepipe's hybrid default


class Sides(NamedTuple):
    """What a case's ``make()`` returns."""

    a: object  # the first process's side: pinger or producer
    b: object  # the second: ponger or consumer
    cleanup: object = None  # parent, after both sides finished
    after_start: object = None  # parent, right after forking (close the parent's copies of fds)


class EchoMismatch(AssertionError):
    """A round-trip benchmark's echo differs from what was sent."""


def rtt_summary(samples: array, warm_at: int, n: int) -> dict:
    """percentiles() of the round-trip samples after warm-up (all if ``warm_at`` is 0), and the count."""
    out = percentiles(samples[warm_at:] if warm_at else samples)
    out["round_trips"] = n
    return out


def unlink_quietly(path: Path) -> None:
    """Remove a socket file a case made; gone already is fine."""
    try:
        path.unlink()
    except OSError:
        pass


def run_cases(cases: list[Case], args, probe: Probe, measure) -> list[dict]:
    """Run every selected case, each bracketed by the probe; ``measure(case, a, b) -> dict`` turns the two
    sides' results into a row. A case that fails is reported and skipped; the run goes on."""
    rows = []
    timeout = max(60.0, args.seconds * 4 + 30)
    for rnd in range(args.rounds):
        for case in cases:
            if not selected(case.name, args.only):
                continue
            row = {"case": case.name, "group": case.group, "edgepipe": case.edgepipe, "round": rnd + 1,
                   "style": case.style, "batch": case.batch}
            before = probe.measure()
            cleanup = None
            try:
                fa, fb, cleanup, after_start = (tuple(case.make()) + (None, None))[:4]
                a, b = run_pair(fa, fb, args.cpus, timeout, after_start)
                cpu = a.pop("_cpu_s", 0.0) + b.pop("_cpu_s", 0.0)
                wall = max(a.pop("_wall_s", 0.0), b.pop("_wall_s", 0.0))
                row.update(measure(case, a, b))
                row.update(cpu_usage(row, cpu, wall))
                row["ok"] = True
            except Skip as e:
                row.update(ok=False, error=f"skipped: {e}")
            except Exception as e:  # noqa: BLE001 - one broken peer must not end the run
                row.update(ok=False, error=str(e).strip())
            finally:
                if cleanup is not None:
                    try:
                        cleanup()
                    except Exception as e:  # noqa: BLE001
                        row.setdefault("warning", f"cleanup failed: {e}")
            after = probe.measure()
            if before is None or after is None:
                row["probe_error"] = probe.error
            row["probe_before_ns"] = before.p50_ns if before else None
            row["probe_after_ns"] = after.p50_ns if after else None
            row["pair"] = probe_label(before, after)
            row["loadavg"] = loadavg()
            rows.append(row)
            _progress(row)
    return rows


def cpu_usage(row: dict, cpu_s: float, wall_s: float) -> dict:
    """CPU both processes used during the case (os.times of each side, set-up and warm-up included) per
    message moved, and as busy cores over the case's wall time. Messages: ``msgs`` (one-way runs) or two per
    round trip (ping-pong, ``round_trips`` counts the warm-up too, as the CPU time does)."""
    msgs = row.get("msgs") or 2 * row.get("round_trips", 0)
    out = {"cpu_s": cpu_s, "cpu_cores": cpu_s / wall_s if wall_s > 0 else None}
    if msgs:
        out["cpu_ns_per_msg"] = cpu_s * 1e9 / msgs
    return out


def _progress(row: dict) -> None:
    if row["ok"]:
        keys = [k for k in ("p50_ns", "msgs_per_s", "cpu_pct", "cpu_ns_per_msg") if k in row]
        what = " ".join(f"{k}={row[k]:.4g}" for k in keys)
    else:
        what = row["error"].splitlines()[0][:200]
    print(f"  [{row['round']}] {row['case']:<44} {what:<28} probe {row['probe_before_ns']}/"
          f"{row['probe_after_ns']} ns ({row['pair']}) load {row['loadavg']}", flush=True)
    if row.get("probe_error"):
        print(f"      probe: {row['probe_error']}", flush=True)
    if not row["ok"] and "\n" in row["error"]:
        print("      " + "\n      ".join(row["error"].splitlines()[1:8]), flush=True)


# ---------------------------------------------------------------------------------------------------
# numbers


def percentiles(rtt_ns: array, halve: bool = True) -> dict:
    """p50/p99/p99.9/max of one-way latency (RTT/2 when ``halve``) through an HdrHistogram (3 digits)."""
    import numpy as np
    from hdrh.histogram import HdrHistogram

    a = np.frombuffer(rtt_ns, dtype=np.int64)
    a = a[a > 0]
    h = HdrHistogram(1, 600_000_000_000, 3)
    vals, counts = np.unique(a, return_counts=True)  # one record_value call per distinct value
    for v, c in zip(vals.tolist(), counts.tolist()):
        h.record_value(v, c)
    k = 0.5 if halve else 1.0
    return {
        "n": int(h.get_total_count()),
        "p50_ns": h.get_value_at_percentile(50) * k,
        "p99_ns": h.get_value_at_percentile(99) * k,
        "p999_ns": h.get_value_at_percentile(99.9) * k,
        "max_ns": h.get_max_value() * k,
        "mean_ns": h.get_mean_value() * k,
    }


def timer_overhead_ns() -> float:
    """Median cost of one time.perf_counter_ns() call, which every timed sample includes once."""
    pc = time.perf_counter_ns
    best = []
    for _ in range(20):
        t0 = pc()
        for _ in range(1000):
            pc()
        best.append((pc() - t0) / 1000)
    best.sort()
    return best[len(best) // 2]


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for j, r in enumerate(cells):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: str, env: dict, args, rows: list[dict], extra: dict | None = None) -> None:
    if not path:
        return
    doc = {"env": env, "args": {k: v for k, v in vars(args).items()}, "rows": rows}
    if extra:
        doc.update(extra)
    Path(path).write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {path}")


def seq_pool(size: int, n: int = 4096) -> list[bytes]:
    """``n`` payloads of ``size`` bytes whose first 8 bytes are their index (little-endian): message ``i``
    of a run is ``pool[i % n]``, so a receiver can check the sequence without the sender building bytes."""
    pad = bytes(size - 8)
    return [i.to_bytes(8, "little") + pad for i in range(n)]


# ---------------------------------------------------------------------------------------------------
# peer clean-up


def iox2_config(tag: str):
    """An iceoryx2 config whose every file lives under a private root and prefix, so clean-up can find
    exactly what this run created (iceoryx2 puts segments in /dev/shm and bookkeeping under its root)."""
    import iceoryx2 as iox

    iox.set_log_level(iox.LogLevel.Warn)  # not "No config file was loaded..." in the middle of a table
    cfg = iox.config.default()
    prefix = f"epb{os.getpid()}{tag}_"
    root = tmpdir() / f"iox2-{tag}"
    cfg.global_cfg.prefix = iox.FileName.new(prefix)
    cfg.global_cfg.root_path = iox.Path.new(str(root) + "/")
    return cfg, prefix, root


def iox2_cleanup(prefix: str, root: Path) -> None:
    for p in Path("/dev/shm").glob(prefix + "*"):
        try:
            p.unlink()
        except OSError:
            pass
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# peer set-up shared by the frame benchmarks (frame_handoff, capture_path, ring_throughput): what each case
# builds before its timed loops. Nothing here runs inside a timed loop (pixel_view() is called once and
# returns the function a loop calls).

FRAME_HDR = 16  # seq and stamp (two int64) ahead of a frame's pixels in iceoryx2 payloads and byte streams
SLOT_HDR = 64  # the same two int64 at the start of a shared_memory frame slot, padded to a cache line


def iox2_import():
    """The iceoryx2 module, or Skip naming why it cannot be imported."""
    try:
        import iceoryx2 as iox
    except ImportError as e:
        raise Skip(f"iceoryx2 not importable: {e}") from None
    return iox


def frame_payload(nbytes: int) -> type:
    """The ctypes payload of one frame over iceoryx2: seq, stamp (int64), then ``nbytes`` pixel bytes."""

    class Payload(ctypes.Structure):
        _fields_ = [("seq", ctypes.c_int64), ("stamp", ctypes.c_int64), ("data", ctypes.c_uint8 * nbytes)]

    return Payload


def bytes_payload(size: int) -> type:
    """The ctypes payload of one ``size``-byte message over iceoryx2."""

    class Payload(ctypes.Structure):
        _fields_ = [("data", ctypes.c_uint8 * size)]

    return Payload


def pixel_view(shape: tuple, offset: int = FRAME_HDR):
    """``view(ptr)``: the uint8 ndarray of ``shape`` at ``ptr + offset`` (a loaned or received iceoryx2
    payload), without a copy. The ctypes array type is made here, once."""
    import numpy as np

    arr_t = ctypes.c_uint8 * math.prod(shape)
    from_address, as_array = arr_t.from_address, np.ctypeslib.as_array

    def view(ptr: int):
        return as_array(from_address(ptr + offset)).reshape(shape)

    return view


class Iox2PubSub:
    """One lossless iceoryx2 publish-subscribe service, the set-up every iceoryx2 peer shares: a private
    config (:func:`iox2_config`), no safe overflow, subscriber buffer ``depth``, no history; publishers retry
    until delivered. ``flag`` is a shared page the producer sets once it sent its last sample (the subscriber
    polls receive(), so it needs a stop signal). Make it in the parent (a case's make()), open one end in each
    child (``publisher()`` / ``subscriber()``), ``cleanup()`` in the parent."""

    def __init__(self, service: str, tag: str, payload: type, depth: int) -> None:
        self.iox = iox2_import()
        self.cfg, self.prefix, self.root = iox2_config(tag)
        self.name = f"{service}/{tag}"
        self.payload = payload
        self.depth = depth
        self.flag = mmap.mmap(-1, mmap.PAGESIZE)
        self.node = None  # the child's node, kept while its port is in use

    def _service(self):
        iox = self.iox
        self.node = iox.NodeBuilder.new().config(self.cfg).create(iox.ServiceType.Ipc)
        return (self.node.service_builder(iox.ServiceName.new(self.name)).publish_subscribe(self.payload)
                .enable_safe_overflow(False).subscriber_max_buffer_size(self.depth).history_size(0)
                .open_or_create())

    def publisher(self):
        return self._service().publisher_builder().backpressure_strategy(
            self.iox.BackpressureStrategy.RetryUntilDelivered).create()

    def subscriber(self):
        return self._service().subscriber_builder().buffer_size(self.depth).create()

    def cleanup(self) -> None:
        self.flag.close()
        iox2_cleanup(self.prefix, self.root)


class ShmFrameSlots:
    """``nslots`` frame slots in one multiprocessing.shared_memory block, the layout the shared-memory peers
    share: a :data:`SLOT_HDR`-byte header (seq, stamp as int64) then the uint8 pixels of ``shape``. Make it in
    the parent; each child calls ``attach()`` and ``detach()``; ``cleanup()`` in the parent unlinks it."""

    def __init__(self, nslots: int, shape: tuple) -> None:
        self.nslots, self.shape = nslots, shape
        self.stride = SLOT_HDR + math.prod(shape)
        self.shm = shared_memory.SharedMemory(create=True, size=nslots * self.stride)
        self._m = None

    def attach(self) -> tuple[list, list]:
        """(headers, pixels): per slot an int64[2] header and a ``shape`` uint8 array, in this process."""
        import numpy as np

        self._m = m = shared_memory.SharedMemory(self.shm.name)
        hdrs = [np.ndarray(2, np.int64, m.buf, i * self.stride) for i in range(self.nslots)]
        pix = [np.ndarray(self.shape, np.uint8, m.buf, i * self.stride + SLOT_HDR) for i in range(self.nslots)]
        return hdrs, pix

    def detach(self) -> None:
        """Close this process's mapping (drop the arrays from attach() first)."""
        if self._m is not None:
            self._m.close()
            self._m = None

    def cleanup(self) -> None:
        self.shm.close()
        self.shm.unlink()


class ZmqPushPull:
    """One pyzmq PUSH/PULL pipe over ipc:// (a socket file in the run's temp dir), the set-up every pyzmq peer
    shares. Make it in the parent (a case's make(): raises :class:`Skip` without pyzmq); each child makes its
    own context and socket (zmq does not survive fork): ``push()`` binds (LINGER 30 s, so pending messages
    are still delivered at close), ``pull()`` returns the socket unconnected (the consumer connects to
    ``endpoint`` once the producer has bound). ``hwm``: both high-water marks (None: zmq's default);
    ``send_timeout_ms`` / ``recv_timeout_ms``: SNDTIMEO / RCVTIMEO (None: block). ``cleanup()`` in the parent."""

    def __init__(self, prefix: str, hwm: int | None = None, send_timeout_ms: int | None = None,
                 recv_timeout_ms: int | None = None) -> None:
        try:
            import zmq
        except ImportError as e:
            raise Skip(f"pyzmq not importable: {e}") from None
        self.zmq = zmq
        self.path = tmpdir() / f"{prefix}-{time.monotonic_ns() % 1_000_000}.sock"
        self.endpoint = f"ipc://{self.path}"
        self.hwm, self.send_timeout_ms, self.recv_timeout_ms = hwm, send_timeout_ms, recv_timeout_ms

    def push(self):
        """(context, PUSH socket bound to ``endpoint``)."""
        zmq = self.zmq
        ctx = zmq.Context()
        s = ctx.socket(zmq.PUSH)
        if self.hwm is not None:
            s.setsockopt(zmq.SNDHWM, self.hwm)
        if self.send_timeout_ms is not None:
            s.setsockopt(zmq.SNDTIMEO, self.send_timeout_ms)
        s.setsockopt(zmq.LINGER, 30_000)
        s.bind(self.endpoint)
        return ctx, s

    def pull(self):
        """(context, PULL socket, not yet connected)."""
        zmq = self.zmq
        ctx = zmq.Context()
        s = ctx.socket(zmq.PULL)
        if self.hwm is not None:
            s.setsockopt(zmq.RCVHWM, self.hwm)
        if self.recv_timeout_ms is not None:
            s.setsockopt(zmq.RCVTIMEO, self.recv_timeout_ms)
        return ctx, s

    def cleanup(self) -> None:
        unlink_quietly(self.path)


def dev_shm_snapshot() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def report_leaks(before: set[str]) -> None:
    """Say so if this run left anything in /dev/shm (it should not)."""
    left = sorted(dev_shm_snapshot() - before)
    if left:
        print(f"WARNING: left in /dev/shm by this run: {left}")


BENCH_INSTALL = 'pip install ".[bench]"'  # the peers the benchmarks compare against


def peers_not_run(rows: list[dict], group: str | None = None) -> list[str]:
    """The peer cases (of ``group``, or of any group) in ``rows`` that produced no numbers: skipped because
    their library is not installed, or failed. A goal against "the best peer" is judged only when every peer
    it names ran; otherwise a weaker stand-in would pass for the best."""
    return [r["case"] + (" (not installed)" if str(r.get("error", "")).startswith("skipped:") else " (failed)")
            for r in rows if not r["edgepipe"] and not r["ok"] and (group is None or r["group"] == group)]


class Goals(dict):
    """Goal verdicts of one round, printed as they are decided: ``goals.line(name, ok, detail)`` with ok
    True, False or None (not decidable: a case is missing); ``goals.skip(name, peers)`` for a goal whose
    named peers did not run (SKIPPED, never judged against whichever peer happened to be there)."""

    def __init__(self, title: str = "goals") -> None:
        super().__init__()
        print(f"\n{title}")

    def line(self, name: str, ok, detail: str) -> None:
        self[name] = {"pass": ok, "detail": detail}
        verdict = "?" if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {verdict:<4} {name}: {detail}")

    def skip(self, name: str, peers: list[str]) -> None:
        detail = f"peer missing: {', '.join(peers)}; install the peers with {BENCH_INSTALL}"
        self[name] = {"pass": None, "skipped": True, "detail": detail}
        print(f"  SKIPPED {name}: {detail}")


def run_and_report(args, env, cases, measure, report, timer_note: bool = True) -> None:
    """The shared body of every script's main(): probe, run the cases (all rounds), print each round's
    report, then loadavg, leaks and the JSON file. ``report(rows)`` returns that round's goal verdicts."""
    shm_before = dev_shm_snapshot()
    if timer_note:
        env["perf_counter_ns_cost_ns"] = timer_overhead_ns()
        print(f"perf_counter_ns() costs {env['perf_counter_ns_cost_ns']:.0f} ns per call (each sample includes one)")
    probe = Probe(args.cpus)
    if probe.exe is None:
        print(f"cache-line probe unavailable: {probe.error}")
    print("cases (probe = one-way cache-line transfer between the two CPUs, ns, before/after):")
    rows = run_cases(cases, args, probe, measure)
    verdicts = {}
    for rnd in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"\n---- round {rnd}")
        verdicts[rnd] = report([r for r in rows if r["round"] == rnd])
    env["loadavg_end"] = loadavg()
    print(f"\nloadavg at the end: {env['loadavg_end']}")
    report_leaks(shm_before)
    write_json(args.json, env, args, rows, {"goals": verdicts})
