"""One inference worker process: ``python -m edgepipe.stages.inference._worker FRAMES_FD RESULTS_FD CONFIG_JSON``.

Started by :class:`edgepipe.stages.inference.InferenceStage` with two memfd rings inherited through ``pass_fds``: it
is the consumer of FRAMES_FD (frames the dispatcher copied in, read in place) and the producer of RESULTS_FD
(one reply per frame, in order). It builds its own ONNX Runtime session after start, announces READY (or FATAL
with the reason, then exits 3), and then for each frame sends exactly one of RESULT, DROPPED (older than the
budget when the worker got to it) or BAD (a frame the model cannot take). A closed or dead dispatcher shows up
as PeerClosedError on the frame ring and ends the worker with status 0.

Reply record types: ``_wire.py``.
"""

from __future__ import annotations

import json
import os
import sys

from edgepipe.stages.inference._wire import SEQ as _SEQ
from edgepipe.stages.inference._wire import T_BAD, T_DROPPED, T_FATAL, T_READY, T_RESULT

EXIT_FATAL = 3


def main(argv: list[str]) -> int:
    frames_fd, results_fd, config = int(argv[0]), int(argv[1]), json.loads(argv[2])

    from edgepipe.errors import PeerClosedError, RingClosedError
    from edgepipe.frames import FrameReader
    from edgepipe.ring import Ring

    results = Ring.from_fd(results_fd).writer()
    frames = FrameReader(Ring.from_fd(frames_fd).reader(wait=config.get("wait", "hybrid")))

    def reply(type_id: int, payload: bytes) -> None:
        results.write(payload, type_id, timeout_s=5.0)

    try:
        from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
        from edgepipe.stages.inference.model import ModelSpec, TextDetector

        det = TextDetector(ModelSpec.from_json(config["spec"]), intra_op_threads=config["intra_op_threads"],
                           spin=config.get("spin", False))
        if config.get("warm_hw"):
            import numpy as np

            h, w = config["warm_hw"]
            det.run(np.zeros((h, w, 3), np.uint8))  # first run allocates ORT's arena; keep it off the first frame
    except Exception as e:  # noqa: BLE001 - reported to the stage, which raises WorkerError
        reply(T_FATAL, f"{type(e).__name__}: {e}".encode())
        return EXIT_FATAL
    reply(T_READY, json.dumps({"model_id": det.model_id, "pid": os.getpid()}).encode())

    try:
        return _serve(frames, reply, det, pb, config)
    except (PeerClosedError, RingClosedError):
        return 0  # the stage closed its ends or died


def _serve(frames, reply, det, pb, config) -> int:
    from edgepipe.clock import now_ns
    from edgepipe.errors import ModelInputError, PeerClosedError, RingTimeoutError

    budget_ns = int(config.get("budget_ns") or 0)
    while True:
        try:
            ctx = frames.read_frame(timeout_s=0.5)
            f = ctx.__enter__()
        except RingTimeoutError:
            continue
        except PeerClosedError:
            return 0
        try:
            t_recv = now_ns()
            # f.publish_ns: the dispatcher's stamp in the frame header, taken after its copy and before its
            # commit, so it never follows our receive (a stamp taken after try_write returned could)
            seq, capture_ns, dispatched_ns = f.seq, f.capture_ns, f.publish_ns
            if budget_ns and capture_ns and t_recv - capture_ns > budget_ns:
                reply(T_DROPPED, _SEQ.pack(seq) + f"age {(t_recv - capture_ns) / 1e6:.1f} ms".encode())
                continue
            try:
                det.preprocess(f.array, f.pixel_format)
            except ModelInputError as e:
                reply(T_BAD, _SEQ.pack(seq) + str(e).encode())
                continue
            frame_hw = f.shape[:2]
        finally:
            ctx.__exit__(None, None, None)  # the ring slot is free again before the model runs
        t0 = now_ns()
        prob = det.infer()
        t1 = now_ns()
        boxes = det.postprocess(prob, frame_hw)
        msg = pb.InferenceResult(model_id=det.model_id, inference_start_ns=t0, inference_end_ns=t1)
        msg.stamps.capture_ns = capture_ns
        msg.stamps.receive_ns.append(t_recv)
        dets = msg.detections
        for b in boxes:
            dets.boxes.add(x_min=b.x_min, y_min=b.y_min, x_max=b.x_max, y_max=b.y_max, score=b.score, label="text")
        msg.stamps.publish_ns.append(dispatched_ns)  # the dispatcher's publish onto our frame ring
        msg.stamps.publish_ns.append(now_ns())  # this publish onto the results ring
        reply(T_RESULT, _SEQ.pack(seq) + msg.SerializeToString())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
