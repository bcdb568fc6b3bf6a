"""InferenceStage on 480x640 frames: transport + dispatch overhead against model time, throughput per worker
layout against a multiprocessing.Pool baseline, micro-batching, and FP32 vs static INT8.

Frames: the bundled rocket photograph (public domain) at 480x640 with three lines of text drawn on it, the
same frame the unit tests check the boxes of. Model: the bundled PP-OCRv4 detector, input fixed at 480x640
(so workers warm up before the clock starts).

Cases:
  model <t>t              in-process TextDetector, t ORT threads: p50 of preprocess, session run, DB post-process
  overhead ring           1 worker x 1 thread, one frame in flight at a time, results through collector threads
                          and an output ring; per frame, from the result's stamps and the time the consumer has
                          it: transport + dispatch latency = input ring -> dispatcher, check + copy into the
                          worker ring, worker ring -> worker, worker's results ring -> collector, collector ->
                          output ring, output ring -> consumer (everything but the worker's own preprocess/model/
                          post-process; four wake-ups of parked threads or processes, 75-137 us each on this VM);
                          and the CPU the stage's own threads (dispatcher + collectors, from
                          /proc/self/task/*/schedstat) plus the consumer's reads spend per frame, which is what
                          competes with the workers for the cores. Both as a share of model time
  overhead direct         the same with InferenceStage(output=None): the consumer's read_result() reads the
                          worker's results ring itself (input ring -> dispatcher, check + copy, worker ring ->
                          worker, results ring -> consumer, consumer completes the stamps): three wake-ups
  stage <w>w x <t>t       InferenceStage, w workers x t threads, a producer thread keeping the input ring full:
                          results/s over --seconds after the first result (also 2w x 1t with output=None)
  pool <w>w x <t>t        the baseline a user would write: multiprocessing.Pool (spawn) of w processes, each with
                          its own TextDetector of t threads, frames pickled to them (apply_async, 2 per worker
                          outstanding), boxes pickled back
  batch <b>               one session, 1 thread, batch of b frames: ms per frame (is micro-batching worth it?)
  int8                    edgepipe.stages.inference.quantize on the bundled real frames: FP32 vs static INT8 latency at 1 and 2
                          threads and mask IoU on the held-out text page

    python benchmarks/infer_throughput.py                       # ~5 s per case, ~1.5 minutes
    python benchmarks/infer_throughput.py --seconds 3 --rounds 3   # a shared, noisy machine: best of 3
    python benchmarks/infer_throughput.py --seconds 2 --only stage,pool
    python benchmarks/infer_throughput.py --seconds 4 --rounds 3 --only overhead   # the two paths, interleaved
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
import time

import numpy as np

import _common as C

from edgepipe import (InferenceStage, ModelSpec, PeerClosedError, Ring, RingTimeoutError, TextDetector,
                      bundled_model_path, now_ns)
from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
from edgepipe.frames import FrameReader, FrameWriter

HW = (480, 640)
LAYOUTS = [(1, 1), (1, 2), (2, 1)]  # (workers, threads per worker)


def make_frame() -> np.ndarray:
    import cv2

    img = cv2.resize(cv2.imread(str(bundled_model_path().parent / "samples" / "rocket.jpg")), HW[::-1],
                     interpolation=cv2.INTER_AREA)
    for text, org, scale, colour, thick in (("EDGEPIPE 2026", (40, 90), 1.4, (255, 255, 255), 3),
                                            ("INFER", (420, 200), 1.0, (0, 255, 255), 2),
                                            ("shared memory ring", (300, 440), 0.9, (0, 0, 0), 2)):
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    return img


def p50(xs) -> float:
    return float(np.median(xs)) if len(xs) else float("nan")


# ---------------------------------------------------------------------------------------------------
# cases


def case_model(frame, threads: int, seconds: float) -> dict:
    det = TextDetector(input_hw=HW, intra_op_threads=threads)
    for _ in range(3):
        det.detect(frame)
    pre, run, post = [], [], []
    pc = time.perf_counter_ns
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = pc()
        det.preprocess(frame)
        t1 = pc()
        prob = det.infer()
        t2 = pc()
        det.postprocess(prob, frame.shape[:2])
        t3 = pc()
        pre.append(t1 - t0)
        run.append(t2 - t1)
        post.append(t3 - t2)
    return {"n": len(run), "pre_ms": p50(pre) / 1e6, "model_ms": p50(run) / 1e6, "post_ms": p50(post) / 1e6,
            "fps": len(run) / sum(np.add(np.add(pre, run), post) / 1e9)}


def _thread_cpu_ns(tids) -> int:
    """On-CPU ns of these threads of this process so far (/proc/self/task/<tid>/schedstat, first field)."""
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


class _Rig:
    """An input frame ring, an InferenceStage and its consumer in this process. ``direct``: the stage is made
    with ``output=None`` and result() calls its read_result() (each worker's results ring read here, no
    collector thread); otherwise results come through collector threads and an output ring."""

    def __init__(self, workers: int, threads: int, model=None, direct: bool = False) -> None:
        self.direct = direct
        self.fin = Ring.create(None, 1 << 23)
        self.fout = None if direct else Ring.create(None, 1 << 20)
        self.fw = FrameWriter(self.fin.writer())
        self.out = None if direct else self.fout.reader()
        self.stage = InferenceStage(FrameReader(self.fin.reader()), None if direct else self.fout.writer(),
                                    model=ModelSpec(path=model, input_hw=HW), workers=workers,
                                    intra_op_threads=threads, max_frame_bytes=HW[0] * HW[1] * 3)
        self.consumer_cpu_ns = 0  # CPU of this thread inside result(): the consumer's share of the path
        self.stage.start()
        while self.stage.state in ("new", "opening"):
            time.sleep(0.01)
        if self.stage.state != "running":
            raise RuntimeError(f"stage did not start: {self.stage.stats()['error']}")

    def stage_tids(self) -> list[int]:
        """The stage's own threads in this process: the dispatcher and one collector (or watcher) per worker
        (benchmark introspection of private fields: the CPU the stage itself spends per frame, workers
        excluded)."""
        st = self.stage
        return [st._thread.native_id] + [s.thread.native_id for s in st._slots if s.thread is not None]

    def result(self, timeout_s: float = 10.0):
        """The next result and the time this thread had it (after the output ring's read, or read_result)."""
        c0 = time.thread_time_ns()
        try:
            if self.direct:
                m = self.stage.read_result(timeout_s)
                t = now_ns()
            else:
                data = self.out.read(timeout_s=timeout_s)
                t = now_ns()
                m = pb.InferenceResult.FromString(data)
        finally:
            self.consumer_cpu_ns += time.thread_time_ns() - c0
        return m, t

    def close(self) -> dict:
        self.stage.stop()
        if self.direct:  # the stage drains the frames its workers hold into read_result(): take them
            end = time.monotonic() + 30
            while time.monotonic() < end:
                try:
                    self.stage.read_result(0.2)
                except RingTimeoutError:
                    continue
                except PeerClosedError:
                    break
        self.stage.join(30)
        stats = self.stage.stats()
        self.fin.close()
        if self.fout is not None:
            self.fout.close()
        return stats


# The parts of a frame's path, from the result's stamps (publish_ns p, receive_ns r) and the time the
# consumer had it (t). Through the output ring: p = [input, worker ring, results ring, output ring],
# r = [dispatcher, worker, collector]. Direct (output=None): p = [input, worker ring, results ring],
# r = [dispatcher, worker, read_result].
PARTS_RING = ("input->dispatcher", "check+copy", "worker ring->worker", "worker work", "results ring->collector",
              "collector->output", "output ring->consumer")
PARTS_DIRECT = ("input->dispatcher", "check+copy", "worker ring->worker", "worker work",
                "results ring->consumer", "consumer completes")


def _parts(m, t: int, direct: bool) -> tuple[int, ...]:
    p, r = m.stamps.publish_ns, m.stamps.receive_ns
    common = (r[0] - p[0], p[1] - r[0], r[1] - p[1], p[2] - r[1], r[2] - p[2])
    return common + ((t - r[2],) if direct else (p[3] - r[2], t - p[3]))


def case_overhead(frame, seconds: float, direct: bool = False) -> dict:
    """One worker x 1 thread, one frame in flight: every part of the path but the worker's own work, up to
    the consumer holding the result (so both layouts count the consumer's wake-up)."""
    rig = _Rig(1, 1, direct=direct)
    names = PARTS_DIRECT if direct else PARTS_RING
    try:
        for _ in range(3):  # warm the path
            rig.fw.write_frame(frame, timeout_s=5)
            rig.result()
        hops = {k: [] for k in names}
        transport, stamped, model = [], [], []
        tids = rig.stage_tids()
        cpu0, ccpu0 = _thread_cpu_ns(tids), rig.consumer_cpu_ns
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rig.fw.write_frame(frame, timeout_s=5)
            m, t = rig.result()
            parts = _parts(m, t, direct)
            for k, v in zip(hops, parts):
                hops[k].append(v)
            transport.append(sum(parts) - parts[3])
            stamped.append(sum(parts[:-1]) - parts[3])  # up to the last stamp in the result
            model.append(m.inference_end_ns - m.inference_start_ns)
        n = max(1, len(model))
        cpu = (_thread_cpu_ns(tids) - cpu0 + rig.consumer_cpu_ns - ccpu0) / n
    finally:
        stats = rig.close()
    row = {"n": len(model), "model_ms": p50(model) / 1e6, "transport_us": p50(transport) / 1e3,
           "stamped_us": p50(stamped) / 1e3, "stage_cpu_us": cpu / 1e3,
           "transport_mean_us": float(np.mean(transport)) / 1e3, "errors": stats["error"]}
    row["share_pct"] = 100 * row["transport_us"] / 1e3 / row["model_ms"]
    row["cpu_share_pct"] = 100 * row["stage_cpu_us"] / 1e3 / row["model_ms"]
    row["hops_us"] = {k: p50(v) / 1e3 for k, v in hops.items()}
    return row


def case_stage(frame, workers: int, threads: int, seconds: float, model=None, direct: bool = False) -> dict:
    rig = _Rig(workers, threads, model, direct)
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            try:
                rig.fw.write_frame(frame, timeout_s=0.2)
            except RingTimeoutError:
                pass

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    try:
        rig.result(30)
        for _ in range(workers):
            rig.result(30)
        tids = rig.stage_tids()
        cpu0, ccpu0 = _thread_cpu_ns(tids), rig.consumer_cpu_ns
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            try:
                rig.result(1.0)
                n += 1
            except RingTimeoutError:
                continue
        dt = time.monotonic() - t0
        cpu = (_thread_cpu_ns(tids) - cpu0 + rig.consumer_cpu_ns - ccpu0) / max(1, n)
    finally:
        stop.set()
        t.join()
        stats = rig.close()
    return {"n": n, "fps": n / dt, "stage_cpu_us": cpu / 1e3, "errors": stats["error"], "lost": stats["frames_lost"]}


_POOL_DET = None


def _pool_init(threads: int) -> None:
    global _POOL_DET
    _POOL_DET = TextDetector(input_hw=HW, intra_op_threads=threads)


def _pool_detect(frame: np.ndarray) -> list:
    return [tuple(d) for d in _POOL_DET.detect(frame)]


def case_pool(frame, workers: int, threads: int, seconds: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_pool_init, initargs=(threads,)) as pool:
        for r in [pool.apply_async(_pool_detect, (frame,)) for _ in range(2 * workers)]:
            r.get(60)  # every process loaded and warm
        pending, n = [], 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            while len(pending) < 2 * workers:
                pending.append(pool.apply_async(_pool_detect, (frame,)))
            pending.pop(0).get(60)
            n += 1
        dt = time.monotonic() - t0
        for r in pending:
            r.get(60)
    return {"n": n, "fps": n / dt}


def case_batch(frame, seconds: float) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(bundled_model_path()), so, providers=["CPUExecutionProvider"])
    det = TextDetector(input_hw=HW)
    x1 = det.preprocess(frame).copy()
    out = {}
    for b in (1, 2, 4):
        x = np.repeat(x1, b, axis=0)
        for _ in range(2):
            sess.run(None, {"x": x})
        ts, end = [], time.monotonic() + seconds / 3
        while time.monotonic() < end or len(ts) < 3:
            t = time.perf_counter()
            sess.run(None, {"x": x})
            ts.append(time.perf_counter() - t)
        out[b] = p50(ts) * 1e3 / b
    return out


def case_int8(runs: int) -> dict:
    from edgepipe.stages.inference.quantize import quantize_model

    with tempfile.TemporaryDirectory() as d:
        r = quantize_model(os.path.join(d, "det_int8.onnx"), input_hw=HW, runs=runs, log=None)
    return {"fp32_ms": r.fp32_ms, "int8_ms": r.int8_ms, "mask_iou": r.mask_iou, "box_recall": r.box_recall,
            "fp32_mb": r.fp32_bytes / 1e6, "int8_mb": r.int8_bytes / 1e6, "calibration_frames": r.calibration_frames}


# ---------------------------------------------------------------------------------------------------


def _best(rows: list[dict], key: str, high: bool = True) -> dict:
    ok = [r for r in rows if key in r]
    if not ok:
        return rows[-1] if rows else {}
    return (max if high else min)(ok, key=lambda r: r[key])


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0], default_seconds=5.0, size_default=None,
                        size_help="unused (frames are 480x640x3)")
    env = C.print_header("inference throughput (480x640 frames, bundled PP-OCRv4 detector)", args)
    shm_before = C.dev_shm_snapshot()
    frame = make_frame()
    s = args.seconds
    runs: dict[str, list[dict]] = {}

    def run(name, fn, *a):
        if not C.selected(name, args.only):
            return
        load = C.loadavg()
        try:
            row = fn(*a)
        except Exception as e:  # noqa: BLE001 - report and go on
            row = {"error": f"{type(e).__name__}: {e}"}
        row["loadavg"] = load
        runs.setdefault(name, []).append(row)
        print(f"  [{rnd + 1}] {name:<18} {row}", flush=True)

    print("cases (load = loadavg before the case; the machine is shared, so every case runs --rounds times,")
    print("interleaved, and the tables use each case's best round):")
    for rnd in range(args.rounds):
        for t in (1, 2):
            run(f"model {t}t", case_model, frame, t, s)
        run("overhead ring", case_overhead, frame, s, False)
        run("overhead direct", case_overhead, frame, s, True)
        for w, t in LAYOUTS:
            run(f"stage {w}w x {t}t", case_stage, frame, w, t, s)
        run("stage 2w x 1t direct", case_stage, frame, 2, 1, s, None, True)
        for w, t in LAYOUTS:
            run(f"pool {w}w x {t}t", case_pool, frame, w, t, s)
        if rnd == 0:
            run("batch", case_batch, frame, s)
            run("int8", case_int8, max(5, int(4 * s)))

    res = {k: _best(v, "fps") for k, v in runs.items() if k.startswith(("stage", "pool", "model"))}
    for k in ("overhead ring", "overhead direct"):
        if k in runs:
            res[k] = _best(runs[k], "transport_us", high=False)
    for k in ("batch", "int8"):
        if k in runs:
            res[k] = runs[k][0]

    if "model 1t" in res:
        print("\nin-process detector, p50 ms (best round)")
        print(C.table(["threads", "preprocess", "session", "DB post-process", "frames/s"],
                      [[t, f"{res[f'model {t}t'].get('pre_ms', 0):.2f}", f"{res[f'model {t}t'].get('model_ms', 0):.1f}",
                        f"{res[f'model {t}t'].get('post_ms', 0):.2f}", f"{res[f'model {t}t'].get('fps', 0):.1f}"]
                       for t in (1, 2) if f"model {t}t" in res]))
    rows = []
    for w, t in LAYOUTS:
        st, po = res.get(f"stage {w}w x {t}t", {}), res.get(f"pool {w}w x {t}t", {})
        rows.append([f"{w} worker(s) x {t} thread(s)", f"{st.get('fps', float('nan')):.1f}",
                     f"{po.get('fps', float('nan')):.1f}",
                     f"{st.get('fps', float('nan')) / po.get('fps', float('nan')):.2f}"])
    print("\nthroughput, frames/s (higher is better; best of the rounds)")
    print(C.table(["layout", "InferenceStage", "mp.Pool pickled", "stage / pool"], rows))
    sd = res.get("stage 2w x 1t direct", {})
    if "fps" in sd:
        print(f"  2 worker(s) x 1 thread(s), output=None (read_result): {sd['fps']:.1f} frames/s")

    for k, what in (("overhead ring", "through collectors and an output ring"),
                    ("overhead direct", "output=None: read_result() reads the workers' rings")):
        ov = res.get(k, {})
        if "hops_us" in ov:
            print(f"\nper-frame path {what}, p50 us (1 worker x 1 thread, one frame in flight; round with the "
                  f"lowest transport p50)")
            print(C.table(["part", "us"], [[h, f"{v:.1f}"] for h, v in ov["hops_us"].items()]))
            print(f"  transport + dispatch to the consumer {ov['transport_us']:.0f} us "
                  f"({ov['share_pct']:.2f} % of the {ov['model_ms']:.1f} ms model), to the last stamp "
                  f"{ov['stamped_us']:.0f} us; stage threads + consumer CPU {ov['stage_cpu_us']:.0f} us per frame")
    if "batch" in res and "error" not in res["batch"]:
        print("\nmicro-batching, ms per frame at 1 thread: " +
              ", ".join(f"batch {b}: {v:.1f}" for b, v in res["batch"].items() if isinstance(b, int)))
    q = res.get("int8", {})
    if "fp32_ms" in q:
        print("\nFP32 vs static INT8 (QDQ, per-channel), p50 ms")
        print(C.table(["threads", "FP32", "INT8", "speed-up"],
                      [[t, f"{q['fp32_ms'][t]:.1f}", f"{q['int8_ms'][t]:.1f}", f"{q['fp32_ms'][t] / q['int8_ms'][t]:.2f}x"]
                       for t in sorted(q["fp32_ms"])]))
        print(f"  mask IoU vs FP32 {q['mask_iou']:.3f}, FP32 boxes matched {q['box_recall']:.0%}, "
              f"{q['fp32_mb']:.2f} MB -> {q['int8_mb']:.2f} MB")

    goals = C.Goals("goals (issues 8, 20)")
    ov, old = res.get("overhead direct", {}), res.get("overhead ring", {})
    if "share_pct" in ov:
        vs = (f"; through the output ring {old['transport_us']:.0f} us = {old['share_pct']:.2f} %"
              if "share_pct" in old else "")
        goals.line("transport + dispatch latency <= 1 % of model time", ov["share_pct"] <= 1.0,
                   f"output=None: {ov['transport_us']:.0f} us (input publish -> consumer has the result, worker "
                   f"excluded, p50) vs model {ov['model_ms']:.1f} ms = {ov['share_pct']:.2f} %{vs}")
        goals.line("transport + dispatch CPU <= 1 % of model time", ov["cpu_share_pct"] <= 1.0,
                   f"{ov['stage_cpu_us']:.0f} us of dispatcher + watcher + read_result CPU per frame = "
                   f"{ov['cpu_share_pct']:.2f} %")
    else:
        goals.line("transport + dispatch <= 1 % of model time", None, "case missing")
    a, b = res.get("stage 1w x 1t", {}).get("fps"), res.get("stage 2w x 1t", {}).get("fps")
    if a and b:
        goals.line("2 workers x 1 thread >= 1.8x one 1-thread worker", b / a >= 1.8, f"{b:.1f} / {a:.1f} = {b / a:.2f}x")
    else:
        goals.line("2 workers x 1 thread >= 1.8x one 1-thread worker", None, "case missing")
    print(f"\nloadavg at the end: {C.loadavg()}")
    C.report_leaks(shm_before)
    C.write_json(args.json, env, args, [{"case": k, "round": i + 1, **v} for k, v in runs.items() for i, v in enumerate(v)],
                 {"goals": dict(goals)})


if __name__ == "__main__":
    main()
