"""Record and replay (edgepipe.record) against what a user would do instead (standalone script).

Cases:
  cost-*      microseconds per 64 B message (``--size``) to record it: the ``mcap`` Writer alone
              (``add_message`` of bytes already serialized: the floor), edgepipe's McapRecorder.write (schema
              and channel bookkeeping, stamp mapping, filters, split checks), and the whole recorder path
              (ring read + conversion to an edgepipe.record.v1.RawRecord + write), each with zstd and lz4.
  pace-*      inter-message timing error of a replay at the recorded pace: a 1 kHz recording (``--seconds``
              long) is replayed into a ring; a consumer process pinned to the other CPU (under SCHED_FIFO when
              allowed: the instrument, so the load does not delay its stamps) stamps each record with now_ns()
              on arrival; the error of message k is |(arrival_k - arrival_k-1) - (log_k - log_k-1)|, also
              taken at the publish side (when each write returned). Variants: the loop a user writes first
              (time.sleep of each interval), edgepipe's replay sleeping until a margin before each publish
              time and spinning the rest (100 us, pace_spin_ns() from the measured wake, 300 us), and replay
              --realtime (SCHED_FIFO). Each idle and loaded (a busy loop pinned to each of the two CPUs),
              all in one run. Goal: p99 |error| <= 100 us.
  demo        end-to-end p50 of the bundled demo with and without recording its taps, alternated ``--rounds``
              times in one run (``--only demo``; ~20 s per run): goal < 5 % change.
  frames      1080p BGR frames at 30 fps (pattern source) recorded raw and with lz4 through the capture
              stage's tap (``--only frames``): frames published, recorded and dropped by the tap.

    python benchmarks/record_replay.py                          # cost + pace cases (~30 s)
    python benchmarks/record_replay.py --only demo --rounds 3   # the demo overhead (~2 min)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import _common as C
import numpy as np

from edgepipe.clock import now_ns
from edgepipe.pipeline.wire import NO_LINK, Hop, pack_record
from edgepipe.record.convert import to_messages
from edgepipe.record.recorder import Recorder
from edgepipe.record.replay import replay
from edgepipe.record.writer import McapRecorder
from edgepipe.ring import Ring

N_COST = 20_000


def _payloads(size: int, n: int) -> list[bytes]:
    return [pack_record(i.to_bytes(8, "little") * (size // 8), i, 1000 + i, [Hop(0, NO_LINK, 1000 + i, 1100 + i)])
            for i in range(n)]


def cost_cases(size: int, rows: list) -> None:
    from mcap.writer import CompressionType, Writer

    from edgepipe.record.schemas import RAW_RECORD, schema

    d = tempfile.mkdtemp(prefix="edgepipe-bench-")
    recs = _payloads(size, N_COST)
    msgs = [m for i, r in enumerate(recs) for m in to_messages("/u", r, 1, 10_000 + i)]
    for comp in ("zstd", "lz4"):
        # mcap alone: the serialized RawRecord bytes straight into add_message
        path = os.path.join(d, f"alone-{comp}.mcap")
        with open(path, "wb") as f:
            w = Writer(f, compression=CompressionType.ZSTD if comp == "zstd" else CompressionType.LZ4)
            w.start()
            s = schema(RAW_RECORD)
            ch = w.register_channel("/u", "protobuf", w.register_schema(s.name, s.encoding, s.data))
            t0 = time.perf_counter_ns()
            for i, m in enumerate(msgs):
                w.add_message(ch, log_time=m.receive_ns, data=m.data, publish_time=m.capture_ns, sequence=i)
            w.finish()
            alone = (time.perf_counter_ns() - t0) / len(msgs) / 1e3
        # edgepipe's writer
        with McapRecorder(os.path.join(d, f"rec-{comp}.mcap"), compression=comp) as rec:
            t0 = time.perf_counter_ns()
            for m in msgs:
                rec.write(m.topic, m.schema, m.data, receive_ns=m.receive_ns, capture_ns=m.capture_ns, seq=m.seq)
            rec.close()
            ours = (time.perf_counter_ns() - t0) / len(msgs) / 1e3
        # the whole path: ring -> convert -> write
        with Ring.create(capacity=1 << 24) as ring:
            wr = ring.writer()
            for r in recs:
                wr.write(r)
            wr.close()
            with McapRecorder(os.path.join(d, f"path-{comp}.mcap"), compression=comp) as rec:
                t0 = time.perf_counter_ns()
                Recorder(rec, {"/u": ring.reader()}).run()
                rec.close()
                path_us = (time.perf_counter_ns() - t0) / len(recs) / 1e3
        for name, v in ((f"cost-mcap-alone-{comp}", alone), (f"cost-McapRecorder.write-{comp}", ours),
                        (f"cost-ring->record-{comp}", path_us)):
            rows.append({"case": name, "us_per_msg": round(v, 2), "vs_mcap_alone": round(v / alone, 2)})
            print(f"  {name:<34} {v:7.2f} us/msg  x{v / alone:.2f} of mcap alone", flush=True)


def _consumer(ring_fd: int, n: int, cpu: int, conn) -> None:
    C.pin(cpu)
    try:  # the instrument: under SCHED_FIFO (when allowed), so the load does not delay the stamping itself
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
        fifo = True
    except PermissionError:
        fifo = False
    ring = Ring.from_fd(ring_fd)
    r = ring.reader()
    out = np.zeros(n, np.int64)
    conn.send_bytes(b"ready" if fifo else b"ready-normal")
    for k in range(n):
        r.read(timeout_s=30)
        out[k] = now_ns()
    conn.send_bytes(out.tobytes())


class _Stamped:
    """A RingWriter stand-in that stamps the moment each write returned (the publish side of the pace)."""

    def __init__(self, w, n: int) -> None:
        self.w, self.t, self.k = w, np.zeros(n, np.int64), 0

    def write(self, data, type_id=1, timeout_s=None) -> None:
        self.w.write(data, type_id, timeout_s=timeout_s)
        self.t[self.k] = now_ns()
        self.k += 1


_BUSY = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def _busy_loops(cpus) -> list:
    """One busy loop at normal priority pinned to each CPU: the load of the loaded cases."""
    import subprocess

    return [subprocess.Popen([sys.executable, "-c", _BUSY, str(c)]) for c in cpus]


def _stop_all(procs) -> None:
    for p in procs:
        p.kill()
        p.wait()


# (case, replay keyword arguments; None: the loop a user writes first)
PACE_VARIANTS = (
    ("naive-sleep", None),
    ("replay-spin100us", {"spin_ns": 100_000}),  # the fixed margin replay had before
    ("replay-spin-auto", {}),  # pace_spin_ns(): timer slack + 2 measured wakes
    ("replay-spin300us", {"spin_ns": 300_000}),
    ("replay-realtime", {"realtime": 10}),  # SCHED_FIFO 10 + pace_spin_ns()
)


def pace_cases(seconds: float, cpus, rows: list, loads=("idle", "loaded")) -> None:
    import multiprocessing as mp

    from edgepipe.record.replay import pace_spin_ns

    n = int(seconds * 1000)
    d = tempfile.mkdtemp(prefix="edgepipe-bench-")
    path = os.path.join(d, "1khz.mcap")
    with McapRecorder(path, compression="lz4") as rec:
        for i, r in enumerate(_payloads(64, n)):
            for m in to_messages("/u", r, 1, 1_000_000_000 + i * 1_000_000):
                rec.write(m.topic, m.schema, m.data, receive_ns=m.receive_ns, capture_ns=m.capture_ns, seq=m.seq)
    from edgepipe.record.reader import iter_recording

    log = np.array([m.log_time for _t, _s, m, _d in iter_recording(path)], np.int64)
    data = [(bytes(m.data)) for _t, _s, m, _d in iter_recording(path)]
    print(f"  pace: {n} messages at 1 kHz per case; pace_spin_ns() = {pace_spin_ns() / 1e3:.1f} us; loaded = one "
          f"busy loop pinned to each of CPUs {cpus[0]},{cpus[1]}", flush=True)

    def naive(w) -> None:  # the loop a user writes first: sleep each recorded interval
        from edgepipe.record.schemas import RawRecord

        prev = None
        for t, b in zip(log, data):
            if prev is not None:
                time.sleep((t - prev) / 1e9)
            prev = t
            w.write(RawRecord.FromString(b).payload, 1, timeout_s=5)

    ctx = mp.get_context("fork")
    for name, kw in PACE_VARIANTS:
        for load in loads:
            busy = _busy_loops(cpus[:2]) if load == "loaded" else []
            try:
                with Ring.create(capacity=1 << 22) as ring:
                    a, b = ctx.Pipe()
                    p = ctx.Process(target=_consumer, args=(ring.fd, n, cpus[1], b))
                    p.start()
                    fifo_consumer = a.recv_bytes() == b"ready"
                    C.pin(cpus[0])
                    w = _Stamped(ring.writer(), n)
                    t_load = C.loadavg()
                    st = naive(w) if kw is None else replay(path, {"/u": w}, rate=1.0, restamp=False, **kw)
                    arr = np.frombuffer(a.recv_bytes(), np.int64)
                    p.join(30)
                    w.w.close()
            finally:
                _stop_all(busy)
            case = f"pace-{name}-{load}"
            err = np.abs(np.diff(arr) - np.diff(log)) / 1e3
            perr = np.abs(np.diff(w.t) - np.diff(log)) / 1e3
            row = {"case": case, "messages": n, "load": load, "loadavg": t_load, "fifo_consumer": fifo_consumer,
                   "p50_us": round(float(np.percentile(err, 50)), 1),
                   "p99_us": round(float(np.percentile(err, 99)), 1),
                   "p999_us": round(float(np.percentile(err, 99.9)), 1), "max_us": round(float(err.max()), 1),
                   "publish_p50_us": round(float(np.percentile(perr, 50)), 1),
                   "publish_p99_us": round(float(np.percentile(perr, 99)), 1),
                   "total_drift_us": round(float((arr[-1] - arr[0] - (log[-1] - log[0])) / 1e3), 1),
                   "cpu_s": None}
            rows.append(row)
            print(f"  {case:<30} |interval error| at the consumer p50 {row['p50_us']:6.1f} us  p99 {row['p99_us']:7.1f}"
                  f" us  p99.9 {row['p999_us']:7.1f} us  max {row['max_us']:8.1f} us; at publish p50 "
                  f"{row['publish_p50_us']:6.1f} us p99 {row['publish_p99_us']:7.1f} us; drift {row['total_drift_us']:8.1f}"
                  f" us  (load {t_load})", flush=True)


def demo_case(rounds: int, rows: list) -> None:
    from edgepipe.cli.main import demo_spec
    from edgepipe.pipeline.config import StageSpec, tap_filler, validate
    from edgepipe.pipeline.supervisor import Pipeline
    from edgepipe.pipeline.tap import tap_link

    d = tempfile.mkdtemp(prefix="edgepipe-bench-")
    res = {"plain": [], "recorded": []}
    for r in range(rounds):
        for mode in ("plain", "recorded"):
            spec, _missing = demo_spec()
            for ln in spec.links.values():  # plain: no tap at all (the demo file taps its links for --attach)
                ln.tap = False
            spec.links = {k: v for k, v in spec.links.items() if not k.endswith(".tap")}
            if mode == "recorded":
                links = []
                for name in spec.links:
                    try:
                        tap_filler(spec, name)
                    except Exception:  # noqa: BLE001 - a link no tap can sit on
                        continue
                    spec.links[name].tap = True
                    links.append(name)
                spec.stages.append(StageSpec(name="record", kind="record", inputs={ln: tap_link(ln) for ln in links},
                                             params={"out": os.path.join(d, f"demo-{r}.mcap")}))
                validate(spec)
            p = Pipeline.from_spec(spec, stats_path=False)
            devnull = open(os.devnull, "w")
            old, sys.stdout = sys.stdout, devnull
            try:
                p.run(seconds=15)
            finally:
                sys.stdout = old
                devnull.close()
            e2e = next(x for x in p.live()["parts"] if x["part"] == "end_to_end")
            res[mode].append(e2e["p50_ms"])
            extra = ""
            if mode == "recorded":
                extra = f"  recorded {p.stage_stats()['record'].get('recorded')} records, taps dropped " + str(
                    {k: v["dropped"] for k, v in p.link_stats().items() if k.endswith(".tap")})
            print(f"  demo round {r} {mode:<9} e2e p50 {e2e['p50_ms']:.3f} ms ({e2e['count']} records){extra}",
                  flush=True)
    a, b = statistics.median(res["plain"]), statistics.median(res["recorded"])
    rows.append({"case": "demo", "plain_p50_ms": res["plain"], "recorded_p50_ms": res["recorded"],
                 "change_pct": round((b - a) / a * 100, 1)})
    print(f"  demo e2e p50 median: plain {a:.3f} ms, recorded {b:.3f} ms: change {(b - a) / a * 100:+.1f} % "
          f"(spread plain {min(res['plain']):.3f}..{max(res['plain']):.3f}, recorded "
          f"{min(res['recorded']):.3f}..{max(res['recorded']):.3f})")


def frames_case(seconds: float, rows: list) -> None:
    """1080p BGR frames from the pattern source at 30 fps into a Python sink, the link tapped by the capture
    stage and recorded (compression none and lz4): frames published vs recorded vs dropped by the tap."""
    from edgepipe.pipeline.config import parse_config
    from edgepipe.pipeline.supervisor import Pipeline

    d = tempfile.mkdtemp(prefix="edgepipe-bench-")
    for comp in ("none", "lz4"):
        out = os.path.join(d, f"frames-{comp}.mcap")
        text = f"""
[stages.cam]
kind = "capture"
outputs = {{ output = "frames" }}
params = {{ source = "pattern:1920x1080", fps = 30, loop = true }}
[stages.sink]
kind = "print"
inputs = {{ in = "frames" }}
params = {{ every = 1000000 }}
[stages.rec]
kind = "record"
inputs = {{ f = "frames.tap" }}
params = {{ out = "{out}", compression = "{comp}" }}
[links.frames]
capacity = 33554432
tap = true
"""
        p = Pipeline.from_spec(parse_config(text), stats_path=False)
        devnull = open(os.devnull, "w")
        old, sys.stdout = sys.stdout, devnull
        try:
            p.run(seconds=seconds)
        finally:
            sys.stdout = old
            devnull.close()
        st = p.stage_stats()
        tap = p.link_stats().get("frames.tap", {})
        pub = st["cam"].get("published", 0)
        rec = st["rec"].get("recorded", 0)
        row = {"case": f"frames-1080p30-{comp}", "published": pub, "recorded": rec,
               "tap_dropped": tap.get("dropped", 0), "published_fps": round(pub / seconds, 1),
               "recorded_fps": round(rec / seconds, 1), "file_mb": round(os.path.getsize(out) / 1e6, 1)}
        rows.append(row)
        print(f"  {row['case']:<24} published {pub} ({row['published_fps']}/s), recorded {rec} "
              f"({row['recorded_fps']}/s), tap dropped {row['tap_dropped']}, file {row['file_mb']} MB", flush=True)
        os.unlink(out)


def main() -> int:
    args = C.parse_args(__doc__.splitlines()[0], default_seconds=10.0)
    env = C.print_header("edgepipe record / replay", args)
    rows: list = []
    if C.selected("cost", args.only):
        cost_cases(args.size, rows)
    for _ in range(args.rounds if not C.selected("demo", args.only) or args.only else 1):
        if C.selected("pace", args.only):
            pace_cases(args.seconds, args.cpus, rows)
    if args.only and C.selected("demo", args.only):
        demo_case(args.rounds, rows)
    if args.only and C.selected("frames", args.only):
        frames_case(args.seconds, rows)
    for load in ("idle", "loaded"):
        pace = {r["case"]: r["p99_us"] for r in rows if r["case"].startswith("pace-") and r["load"] == load}
        if pace:
            best = min(pace, key=pace.get)
            print(f"{'PASS' if pace[best] <= 100 else 'FAIL'} replay pace p99 <= 100 us ({load}): best {best} "
                  f"{pace[best]:.1f} us; " + ", ".join(f"{k[5:-len(load) - 1]} {v:.1f}" for k, v in pace.items()))
    if args.json:
        C.write_json(args.json, env, args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
