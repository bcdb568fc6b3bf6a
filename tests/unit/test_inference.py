"""edgepipe.stages.inference: the bundled text detector on a real photograph, DB post-processing on synthetic maps,
typed errors for bad models and frames, and the multiprocess InferenceStage (crash, bad frame, deadline,
end to end through frame rings with InferenceResult messages decoded)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

from edgepipe import (  # noqa: E402
    DBPostprocess,
    InferenceError,
    ModelInputError,
    ModelLoadError,
    ModelNotFoundError,
    ModelSpec,
    TextDetector,
    bundled_model_path,
    fit_input_hw,
)

SAMPLES = bundled_model_path().parent / "samples"
FONT = cv2.FONT_HERSHEY_SIMPLEX
# (text, baseline origin, scale, BGR colour, thickness) rendered onto a real photograph with no text of its own
TEXTS = [
    ("EDGEPIPE 2026", (40, 90), 1.4, (255, 255, 255), 3),
    ("INFER", (420, 200), 1.0, (0, 255, 255), 2),
    ("shared memory ring", (300, 440), 0.9, (0, 0, 0), 2),
]


def text_frame() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The rocket photo (public domain) at 480x640 with TEXTS drawn on it, and each text's known box."""
    img = cv2.resize(cv2.imread(str(SAMPLES / "rocket.jpg")), (640, 480), interpolation=cv2.INTER_AREA)
    boxes = []
    for text, (x, y), scale, colour, thick in TEXTS:
        (w, h), base = cv2.getTextSize(text, FONT, scale, thick)
        cv2.putText(img, text, (x, y), FONT, scale, colour, thick, cv2.LINE_AA)
        boxes.append((x, y - h, x + w, y + base))
    return img, boxes


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def coverage(t, boxes) -> float:
    """Share of truth box ``t`` covered by the union of ``boxes`` (small text may split into words)."""
    x0, y0 = int(t[0]), int(t[1])
    grid = np.zeros((int(np.ceil(t[3])) - y0, int(np.ceil(t[2])) - x0), bool)
    for b in boxes:
        grid[max(0, int(b[1]) - y0) : max(0, int(np.ceil(b[3])) - y0), max(0, int(b[0]) - x0) : max(0, int(np.ceil(b[2])) - x0)] = True
    return float(grid.mean())


def check_boxes(boxes, truth) -> None:
    """Every known text region is >= 70 % covered, and every box overlaps a text region."""
    for t in truth:
        assert coverage(t, boxes) >= 0.7, (t, boxes)
    for b in boxes:
        assert max(iou(b, t) for t in truth) > 0.1, (b, truth)


@pytest.fixture(scope="module")
def detector() -> TextDetector:
    return TextDetector()


@pytest.fixture(scope="module")
def frame_and_truth():
    return text_frame()


class TestRealPhotograph:
    def test_boxes_over_rendered_text(self, detector, frame_and_truth):
        """Each text rendered onto the photo gets exactly one box with IoU >= 0.6 against its known
        rectangle, and no box lands anywhere else."""
        img, truth = frame_and_truth
        dets = detector.detect(img)
        assert len(dets) == len(truth), dets
        for t in truth:
            best = max(dets, key=lambda d: iou(d[:4], t))
            assert iou(best[:4], t) >= 0.6, (t, best)
            assert best.score >= 0.7

    @pytest.mark.skipif(not (bundled_model_path().parents[1] / "video" / "text").is_dir(),
                        reason="the frames data (src/edgepipe/data/video) is not installed")
    def test_photographed_page_one_box_per_line(self):
        """On the bundled photograph of a printed page (13 lines), there is one box per line, top to bottom,
        and the three short lines (1, 11, 13) end where their text ends, the others near the right margin."""
        page = cv2.imread(str(bundled_model_path().parents[1] / "video" / "text" / "imageTextN.png"))
        dets = TextDetector().detect(page)  # its own input size (fitted to 257x556)
        assert len(dets) == 13
        mids = [(d.y_min + d.y_max) / 2 for d in dets]
        assert mids == sorted(mids) and min(np.diff(mids)) > 12
        short = [i for i, d in enumerate(dets) if d.x_max < 400]
        assert short == [0, 10, 12]
        assert all(d.x_max > 500 and d.x_min < 60 for i, d in enumerate(dets) if i not in short)

    def test_photo_without_text_gives_no_boxes(self, detector):
        """The same photograph without the text gives no boxes (the boxes above come from the text)."""
        img = cv2.resize(cv2.imread(str(SAMPLES / "rocket.jpg")), (640, 480), interpolation=cv2.INTER_AREA)
        assert detector.detect(img) == []

    def test_rgb_and_gray_and_resized_frames(self, detector, frame_and_truth):
        """The same text is found from an RGB copy, a grey copy and a half-size frame (boxes scaled back)."""
        img, truth = frame_and_truth
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        assert len(detector.detect(rgb, "RGB")) == len(truth)
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        assert len(detector.detect(gray, "GRAY")) >= 2
        half = cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA)
        dets = detector.detect(half)  # the detector keeps its 480x640 input and resizes into it
        check_boxes([d[:4] for d in dets], [[v / 2 for v in t] for t in truth])

    def test_preprocess_matches_reference_and_does_not_allocate(self, detector, frame_and_truth):
        """The preallocated input equals (RGB/255 - 0.5)/0.5 in NCHW, and filling it allocates < 100 KB
        (NumPy's iterator buffers), not a frame-sized temporary."""
        img, _ = frame_and_truth
        ref = (img[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255 - 0.5) / 0.5
        detector.preprocess(img)
        tracemalloc.start()
        out = detector.preprocess(img)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert out is detector.input_array
        assert np.abs(out[0] - ref).max() < 1e-6
        assert peak < 100_000


class TestPostprocess:
    def test_rectangle_exact(self):
        """A solid rectangle of probability 0.9 gives one box at its exact pixel bounds and score 0.9."""
        prob = np.zeros((64, 96), np.float32)
        prob[20:30, 10:60] = 0.9
        (d,) = DBPostprocess(unclip_ratio=0, dilate=False)(prob)
        assert (d.x_min, d.y_min, d.x_max, d.y_max) == pytest.approx((10, 20, 60, 30), abs=1e-3)
        assert d.score == pytest.approx(0.9, abs=1e-6)

    def test_unclip_grows_by_db_distance(self):
        """Unclipping grows each side by area * ratio / perimeter (DB's offset distance)."""
        prob = np.zeros((64, 96), np.float32)
        prob[20:30, 10:60] = 0.9
        (d,) = DBPostprocess(unclip_ratio=1.5, dilate=False)(prob)
        dist = 50 * 10 * 1.5 / (2 * 60)
        assert (d.x_min, d.y_min, d.x_max, d.y_max) == pytest.approx(
            (10 - dist, 20 - dist, 60 + dist, 30 + dist), abs=1e-3
        )

    def test_scaling_and_clipping_to_frame(self):
        """Map boxes scale to frame pixels, and unclipped boxes are clipped at the frame edge."""
        prob = np.zeros((32, 64), np.float32)
        prob[0:8, 0:16] = 0.8
        (d,) = DBPostprocess(unclip_ratio=2.0, dilate=False)(prob, (2.0, 3.0), (128, 96))
        assert d.x_min == 0 and d.y_min == 0
        assert d.x_max > 32 and d.y_max > 24

    def test_thresholds_and_small_regions(self):
        """Regions under box_thresh, regions under thresh and specks thinner than min_size give no box;
        two separate regions give two boxes, top to bottom."""
        prob = np.zeros((100, 100), np.float32)
        prob[10:20, 10:60] = 0.45  # above thresh, under box_thresh
        prob[30:40, 10:60] = 0.25  # under thresh
        prob[50:52, 10:60] = 0.9  # 2 px tall: under min_size
        prob[60:70, 10:60] = 0.9
        prob[80:90, 40:90] = 0.8
        dets = DBPostprocess(thresh=0.3, box_thresh=0.5, unclip_ratio=0, dilate=False, min_size=3)(prob)
        assert [round(d.y_min) for d in dets] == [60, 80]

    def test_rotated_region_gets_axis_aligned_bounds(self):
        """A rotated bar gives the axis-aligned bounds of its rotated rectangle."""
        prob = np.zeros((120, 120), np.float32)
        pts = cv2.boxPoints(((60, 60), (80, 12), 30)).astype(np.int32)
        cv2.fillPoly(prob, [pts], 0.9)
        (d,) = DBPostprocess(unclip_ratio=0, dilate=False)(prob)
        assert d.x_min == pytest.approx(pts[:, 0].min(), abs=2) and d.y_max == pytest.approx(pts[:, 1].max(), abs=2)

    def test_bad_arguments(self):
        """Bad thresholds and non-2-D maps are ValueErrors naming the value."""
        with pytest.raises(ValueError, match="1.5"):
            DBPostprocess(thresh=1.5)
        with pytest.raises(ValueError, match="-1"):
            DBPostprocess(unclip_ratio=-1)
        with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
            DBPostprocess()(np.zeros((2, 3, 4), np.float32))


class TestBadInput:
    def test_missing_model(self, tmp_path):
        """A missing model file is ModelNotFoundError (also FileNotFoundError) naming the path."""
        p = tmp_path / "nope.onnx"
        with pytest.raises(ModelNotFoundError, match="nope.onnx") as ei:
            TextDetector(p)
        assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, InferenceError)

    def test_corrupt_model(self, tmp_path):
        """A truncated model file is ModelLoadError naming the path."""
        p = tmp_path / "broken.onnx"
        p.write_bytes(bundled_model_path().read_bytes()[:100_000])
        with pytest.raises(ModelLoadError, match="broken.onnx"):
            TextDetector(p)

    def test_model_of_the_wrong_kind(self, tmp_path):
        """A valid ONNX model that is not an image detector is ModelLoadError listing its inputs."""
        from onnx import TensorProto, helper, save

        x = helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4])
        g = helper.make_graph([helper.make_node("Relu", ["v"], ["w"])], "g", [x], [y])
        p = tmp_path / "relu.onnx"
        save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(p))
        with pytest.raises(ModelLoadError, match=r"'v'"):
            TextDetector(p)

    def test_bad_input_size(self):
        """An input size that is not multiples of 32 is ModelInputError naming it."""
        with pytest.raises(ModelInputError, match=r"\(100, 200\)"):
            TextDetector(input_hw=(100, 200))

    @pytest.mark.parametrize(
        "frame, fmt, match",
        [
            (np.zeros((48, 64, 3), np.float32), "BGR", "float32"),
            (np.zeros((48, 64, 4), np.uint8), "BGR", r"\(48, 64, 4\)"),
            (np.zeros((48, 64), np.uint8), "RGB", r"\(48, 64\)"),
            (np.zeros((48, 64, 3), np.uint8), "NV12", "NV12"),
            (np.zeros((0, 64, 3), np.uint8), "BGR", r"\(0, 64, 3\)"),
        ],
    )
    def test_bad_frames(self, detector, frame, fmt, match):
        """Frames of the wrong dtype, shape or pixel format are ModelInputError naming the bad value."""
        with pytest.raises(ModelInputError, match=match):
            detector.detect(frame, fmt)

    def test_fit_input_hw_and_spec_round_trip(self):
        """Input sizes are multiples of 32 within max_side; a ModelSpec survives its JSON trip."""
        assert fit_input_hw((720, 1280)) == (544, 960)
        spec = ModelSpec(path="m.onnx", input_hw=(320, 320), box_thresh=0.6)
        assert ModelSpec.from_json(spec.to_json()) == spec
        with pytest.raises(TypeError, match="42"):
            ModelSpec.coerce(42)


def test_extras_bound_the_tested_majors():
    """The vision and inference extras cap OpenCV and ONNX Runtime at the majors the suite runs with, and the
    installed versions fall inside those caps (a new major is adopted by raising the cap, after the tests)."""
    import importlib.metadata

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a checkout: no pyproject.toml")
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    reqs = [Requirement(r) for key in ("vision", "inference") for r in extras[key]]
    for dist in ("opencv-python-headless", "onnxruntime"):
        mine = [r for r in reqs if r.name == dist]
        assert mine, dist
        for r in mine:
            assert any(s.operator == "<" for s in r.specifier), f"{r} has no upper bound on the major"
            installed = importlib.metadata.version(dist)
            assert r.specifier.contains(installed, prereleases=True), f"{dist} {installed} is outside {r}"


def test_model_file_is_the_documented_one():
    """The vendored model is the file NOTICE.md names (size and sha256 prefix in model_id)."""
    notice = (Path(bundled_model_path()).parent / "NOTICE.md").read_text()
    assert "d2a7720d45a5" in notice
    assert TextDetector.__name__ and "4,745,517" in notice


# ---------------------------------------------------------------------------------------------------
# InferenceStage: worker processes fed through shared-memory rings

import contextlib  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from edgepipe import InferenceStage, Ring, WorkerError  # noqa: E402
from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb  # noqa: E402
from edgepipe.clock import now_ns  # noqa: E402
from edgepipe.errors import PeerClosedError, RingTimeoutError  # noqa: E402

frames_mod = pytest.importorskip("edgepipe.frames")
FrameReader, FrameWriter = frames_mod.FrameReader, frames_mod.FrameWriter
latest_mod = pytest.importorskip("edgepipe.latest")
SMALL_HW = (240, 320)  # ~4x cheaper than 480x640, so the stage tests stay quick
SMALL_INPUT = fit_input_hw(SMALL_HW)  # (256, 320): the workers resize into it


@pytest.fixture(scope="module")
def small_frame(frame_and_truth):
    img, truth = frame_and_truth
    small = cv2.resize(img, SMALL_HW[::-1], interpolation=cv2.INTER_AREA)
    return small, [tuple(v / 2 for v in t) for t in truth]


@pytest.fixture(scope="module")
def small_reference(small_frame):
    """What the in-process TextDetector finds on the small frame at the stage's input size: the boxes a
    worker must send back for it, whatever OpenCV and ONNX Runtime versions make of the text."""
    dets = TextDetector(input_hw=SMALL_INPUT).detect(small_frame[0])
    assert dets, "the reference frame should hold text the detector finds"
    return dets


def assert_same_detections(msg, reference, tol=1e-3) -> None:
    """The InferenceResult's boxes are the reference Detections: same count and order, coordinates and
    scores equal within ``tol`` (the message carries float32)."""
    got = [(b.x_min, b.y_min, b.x_max, b.y_max, b.score) for b in msg.detections.boxes]
    assert len(got) == len(reference), (got, reference)
    for g, r in zip(got, reference):
        assert g == pytest.approx(tuple(r), abs=tol, rel=1e-5), (got, reference)


@contextlib.contextmanager
def rig(workers=1, input_capacity=1 << 22, direct=False, **kw):
    """An input frame ring, an output result ring and a started InferenceStage between them; yields the frame
    writer, the result reader, the stage and the raw RingWriter under the frame writer. ``direct``: the stage
    has no output ring (output=None) and the "reader" is the stage itself (collect() calls read_result)."""
    kw.setdefault("model", ModelSpec(input_hw=SMALL_INPUT))
    kw.setdefault("max_frame_bytes", SMALL_HW[0] * SMALL_HW[1] * 3)
    fin, fout = Ring.create(None, input_capacity), None if direct else Ring.create(None, 1 << 20)
    raw = fin.writer()
    fw = FrameWriter(raw)
    stage = InferenceStage(FrameReader(fin.reader()), None if direct else fout.writer(), workers=workers, **kw)
    stage.start()
    try:
        stage.wait_ready(60)
        yield fw, stage if direct else fout.reader(), stage, raw
    finally:
        stage.stop()
        if direct:  # the stopping stage waits for the frames its workers hold to be read
            collect(stage, 1 << 30, timeout_s=30, until=lambda: stage.state in ("done", "failed"))
        stage.join(30)
        fin.close()
        if fout is not None:
            fout.close()


def collect(out, n, timeout_s=30.0, until=None):
    """Decode up to ``n`` InferenceResult records (or until ``until()`` is true) from a result ring reader,
    or take them from an output=None stage's read_result()."""
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline and not (until and until()):
        if isinstance(out, InferenceStage):
            try:
                got.append(out.read_result(timeout_s=0.1))
            except RingTimeoutError:
                continue
            except PeerClosedError:
                break
            continue
        try:
            data = out.read(timeout_s=0.1)
        except RingTimeoutError:
            continue
        assert out.last_type == 22
        m = pb.InferenceResult()
        m.ParseFromString(data)
        got.append(m)
    return got


DIRECT = pytest.mark.parametrize("direct", [False, True], ids=["output-ring", "read_result"])


class TestStage:
    @DIRECT
    def test_end_to_end_results_through_rings(self, small_frame, small_reference, direct):
        """Frames written to a ring by this process come back from two worker processes as InferenceResult
        records: every seq once, the same boxes and scores the in-process TextDetector finds on that frame,
        stamps in causal order, model id set. (This tests the transport; the model's accuracy is tested on
        the bundled photographed page above.) With output=None, read_result() returns them in frame order
        and the stamps end at its own read (no output ring)."""
        img, _ = small_frame
        n = 8
        with rig(workers=2, direct=direct) as (fw, out, stage, _):
            assert stage.state == "running", stage.stats()
            pids = stage.worker_pids()
            assert len(set(pids)) == 2 and os.getpid() not in pids
            seqs = [fw.write_frame(img, timeout_s=5, source_id=3) for _ in range(n)]
            got = collect(out, n)
        stats = stage.stats()
        if direct:
            assert [m.frame_seq for m in got] == seqs
        assert sorted(m.frame_seq for m in got) == seqs
        assert stats["results"] == stats["dispatched"] == stats["frames_in"] == n
        assert stats["state"] == "done" and stats["error"] is None
        for m in got:
            assert m.model_id.startswith("ch_PP-OCRv4_det_infer.onnx@sha256:")
            assert m.stamps.seq == m.frame_seq and m.stamps.source == "3"
            assert_same_detections(m, small_reference)
            s = m.stamps
            assert len(s.publish_ns) == (3 if direct else 4) and len(s.receive_ns) == 3
            order = [s.capture_ns, s.publish_ns[0], s.receive_ns[0], s.publish_ns[1], s.receive_ns[1],
                     m.inference_start_ns, m.inference_end_ns, s.publish_ns[2], s.receive_ns[2], *s.publish_ns[3:]]
            assert order == sorted(order) and order[0] > 0

    def test_read_result_keeps_frame_order_across_uneven_workers(self, small_frame):
        """With output=None and workers of unequal speed (one frame in three is 4x larger, so its worker
        finishes later), read_result() still returns every frame exactly once in the order it was written,
        and after stop() it raises PeerClosedError once every result was taken."""
        img, _ = small_frame
        big = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2))
        n = 12
        with rig(workers=2, direct=True, max_frame_bytes=big.nbytes) as (fw, _, stage, _):
            seqs = [fw.write_frame(big if i % 3 == 0 else img, timeout_s=10) for i in range(n)]
            got = [stage.read_result(timeout_s=30).frame_seq for _ in range(n)]
            with pytest.raises(RingTimeoutError):
                stage.read_result(timeout_s=0.05)
        assert got == seqs
        with pytest.raises(PeerClosedError, match="ended"):
            stage.read_result(timeout_s=1)
        assert stage.stats()["results"] == n

    def test_read_result_needs_a_stage_without_output_ring(self):
        """read_result() on a stage that writes to an output ring is a ValueError naming the stage."""
        fout = Ring.create(None, 1 << 16)
        try:
            stage = InferenceStage(None, fout.writer(), name="det")
            with pytest.raises(ValueError, match="output=None.*'det'"):
                stage.read_result(0)
        finally:
            fout.close()

    def test_unread_results_are_not_a_hung_worker(self, small_frame):
        """With output=None, a worker whose replies wait in its ring because nobody calls read_result() for
        longer than hang_timeout_s is not killed: the result is still there afterwards."""
        img, _ = small_frame
        with rig(workers=1, direct=True, hang_timeout_s=0.5) as (fw, _, stage, _):
            seq = fw.write_frame(img, timeout_s=5)
            time.sleep(2.0)  # several hang checks while the reply sits unread
            m = stage.read_result(timeout_s=30)
        stats = stage.stats()
        assert m.frame_seq == seq
        assert stats["worker_hangs"] == 0 and stats["worker_crashes"] == 0

    def test_wait_ready_then_the_first_frame_is_inferred_within_budget(self, small_frame, small_reference):
        """start() returns while the workers load the model; wait_ready() returns once all of them have, so
        a single frame written right after it meets a tight budget_ms instead of expiring in the queue."""
        img, _ = small_frame
        fin, fout = Ring.create(None, 1 << 22), Ring.create(None, 1 << 20)
        stage = InferenceStage(FrameReader(fin.reader()), fout.writer(), model=ModelSpec(input_hw=SMALL_INPUT),
                               workers=2, max_frame_bytes=img.nbytes, budget_ms=2000)
        try:
            stage.start()
            assert stage.wait_ready(60) is True
            assert stage.state == "running" and all(stage.worker_pids())
            seq = FrameWriter(fin.writer()).write_frame(img, timeout_s=5)
            got = collect(fout.reader(), 1)
        finally:
            stage.stop()
            stage.join(30)
            fin.close()
            fout.close()
        assert [m.frame_seq for m in got] == [seq] and stage.counters["dropped_deadline"] == 0
        assert_same_detections(got[0], small_reference)

    def test_wait_ready_raises_the_workers_load_error(self, tmp_path):
        """A model no worker can load makes wait_ready() raise the stage's WorkerError naming the file."""
        bad = tmp_path / "corrupt.onnx"
        bad.write_bytes(b"\x08\x07" + os.urandom(2000))
        fin, fout = Ring.create(None, 1 << 16), Ring.create(None, 1 << 16)
        stage = InferenceStage(FrameReader(fin.reader()), fout.writer(), model=bad, workers=1)
        try:
            stage.start()
            with pytest.raises(WorkerError, match="corrupt.onnx"):
                stage.wait_ready(60)
        finally:
            stage.stop()
            stage.join(30)
            fin.close()
            fout.close()

    @DIRECT
    def test_killed_worker_is_restarted_and_counted(self, small_frame, caplog, direct):
        """kill -9 of a busy worker: it is reported and restarted, its in-flight frames are counted lost,
        and every other frame is still inferred (results + lost = frames sent)."""
        img, _ = small_frame
        n = 24
        with rig(workers=2, input_capacity=1 << 23, direct=direct) as (fw, out, stage, _):
            writer = threading.Thread(target=lambda: [fw.write_frame(img, timeout_s=20) for _ in range(n)])
            writer.start()
            got = collect(out, 3)
            victim = stage.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            writer.join()

            def settled():
                c = stage.counters
                return c["results"] + c["frames_lost"] >= n

            got += collect(out, n, until=settled)
            got += collect(out, n - len(got), timeout_s=0.3)
        stats = stage.stats()
        if direct:  # frame order holds across the crash: the lost frames are skipped, nothing else moves
            assert [m.frame_seq for m in got] == sorted(m.frame_seq for m in got)
        assert stats["worker_crashes"] == 1 and stats["worker_restarts"] == 1
        assert stats["frames_lost"] >= 1
        assert len(got) == stats["results"] == n - stats["frames_lost"]
        assert f"pid {victim}" in stats["last_crash"] and "signal 9" in stats["last_crash"]
        assert any(r.levelname == "WARNING" and f"pid {victim}" in r.getMessage() for r in caplog.records)
        assert victim not in stats and victim not in [w["pid"] for w in stats["workers"]]
        assert stats["error"] is None

    @DIRECT
    def test_hung_worker_is_killed_and_replaced(self, small_frame, direct):
        """A worker that stops replying while it holds frames (here: SIGSTOP) is killed after hang_timeout_s,
        counted, its frames counted lost, and a fresh worker infers the next frame."""
        img, _ = small_frame
        with rig(workers=1, hang_timeout_s=0.5, direct=direct) as (fw, out, stage, _):
            fw.write_frame(img, timeout_s=5)
            assert len(collect(out, 1)) == 1
            (victim,) = stage.worker_pids()
            os.kill(victim, signal.SIGSTOP)
            fw.write_frame(img, timeout_s=5)
            deadline = time.monotonic() + 20
            while stage.counters["worker_restarts"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            seq = fw.write_frame(img, timeout_s=5)
            got = collect(out, 1)
        stats = stage.stats()
        assert [m.frame_seq for m in got] == [seq]
        assert stats["worker_hangs"] == 1 and stats["worker_crashes"] == 1 and stats["frames_lost"] == 1
        assert "no reply for 0.5 s" in stats["last_crash"] and f"pid {victim}" in stats["last_crash"]

    @DIRECT
    def test_bad_frames_are_counted_and_skipped(self, small_frame, direct):
        """Frames the model cannot take (NV12, 4-channel, float) and a ring record that is no frame at all are
        counted and skipped; the good frames around them are all inferred and the pool lives on."""
        img, _ = small_frame
        with rig(workers=1, direct=direct) as (fw, out, stage, raw):
            raw.write(b"not a frame record", 7)  # a foreign record on the frame ring
            good = [fw.write_frame(img, timeout_s=5)]
            fw.write_frame(np.zeros((SMALL_HW[0] * 3 // 2, SMALL_HW[1]), np.uint8), pixel_format="NV12", timeout_s=5)
            good.append(fw.write_frame(img, timeout_s=5))
            fw.write_frame(np.zeros((32, 32, 4), np.uint8), pixel_format="RAW", timeout_s=5)
            fw.write_frame(np.zeros((32, 32, 3), np.float32), pixel_format="RGB", timeout_s=5)
            good.append(fw.write_frame(img, timeout_s=5))
            got = collect(out, 3)
        stats = stage.stats()
        assert [m.frame_seq for m in got] == good
        assert stats["bad_frames"] == 4 and stats["frames_in"] == 6
        assert "float32" in stats["last_bad_frame"]

    @DIRECT
    def test_frames_over_budget_are_dropped_and_counted(self, small_frame, direct):
        """With budget_ms, frames captured longer ago than the budget are dropped and counted; fresh ones
        are inferred."""
        img, _ = small_frame
        with rig(workers=1, budget_ms=3000, direct=direct) as (fw, out, stage, _):
            old = now_ns() - 20_000_000_000
            for _ in range(3):
                fw.write_frame(img, capture_ns=old, timeout_s=5)
            fresh = fw.write_frame(img, timeout_s=5)
            got = collect(out, 1)
        stats = stage.stats()
        assert [m.frame_seq for m in got] == [fresh]
        assert stats["dropped_deadline"] == 3 and stats["results"] == 1

    def test_worker_that_cannot_load_the_model_fails_the_stage(self, tmp_path):
        """A model file the workers cannot load fails the stage with WorkerError naming the file and the
        loader's reason; no worker is left running."""
        bad = tmp_path / "corrupt.onnx"
        bad.write_bytes(b"\x08\x07" + os.urandom(2000))
        fin, fout = Ring.create(None, 1 << 16), Ring.create(None, 1 << 16)
        stage = InferenceStage(FrameReader(fin.reader()), fout.writer(), model=bad, workers=1)
        try:
            assert stage.run() == 1
        finally:
            fin.close()
            fout.close()
        assert isinstance(stage.error, WorkerError)
        assert "corrupt.onnx" in str(stage.error) and "ModelLoadError" in str(stage.error)
        assert all(p == 0 for p in stage.worker_pids())

    def test_latest_slot_input(self, small_frame, small_reference):
        """A latest-only slot works as the input: the newest frame is inferred, to the same boxes and scores
        as the in-process TextDetector finds on it."""
        img, _ = small_frame
        slot = latest_mod.LatestSlot.create(None, img.nbytes)
        fout = Ring.create(None, 1 << 20)
        out = fout.reader()
        stage = InferenceStage(slot.reader(), fout.writer(), model=ModelSpec(input_hw=SMALL_INPUT), workers=1,
                               max_frame_bytes=img.nbytes)
        try:
            with stage:
                w = slot.writer()
                deadline = time.monotonic() + 30
                while stage.state != "running" and time.monotonic() < deadline:
                    time.sleep(0.02)
                seq = w.write_frame(img)
                got = collect(out, 1)
        finally:
            slot.close()
            fout.close()
        assert [m.frame_seq for m in got] == [seq]
        assert_same_detections(got[0], small_reference)

    def test_results_published_to_uds_subscribers(self, small_frame, tmp_path):
        """With publish=<Server>, each result also reaches a UDS client that subscribed to inference_result,
        as the same message that went onto the result ring."""
        from edgepipe import Client, Server

        img, _ = small_frame
        with Server(tmp_path / "ctl.sock") as srv, Client.connect(srv.path, subscribe=["inference_result"]) as c:
            deadline = time.monotonic() + 5
            while not srv.sessions() and time.monotonic() < deadline:
                time.sleep(0.01)
            with rig(workers=1, publish=srv) as (fw, out, stage, _):
                seq = fw.write_frame(img, timeout_s=5)
                (on_ring,) = collect(out, 1)
                env = c.recv(timeout_s=10)
        assert env.WhichOneof("body") == "inference_result"
        assert env.inference_result == on_ring and on_ring.frame_seq == seq
        assert stage.stats()["publish_errors"] == 0

    def test_bad_arguments(self, tmp_path):
        """Bad constructor arguments are typed errors naming the value."""
        with pytest.raises(ValueError, match="workers.*0"):
            InferenceStage(None, None, workers=0)
        with pytest.raises(ValueError, match="-5"):
            InferenceStage(None, None, budget_ms=-5)
        with pytest.raises(ModelNotFoundError, match="missing.onnx"):
            InferenceStage(None, None, model=tmp_path / "missing.onnx")
        with pytest.raises(TypeError, match="42"):
            InferenceStage(None, None, publish=42)


class TestDrain:
    def test_the_end_of_the_source_waits_for_a_slow_worker(self, small_frame, monkeypatch):
        """The source ends while the only worker (stopped with SIGSTOP: a machine too loaded to run it) holds
        a frame; the stage waits for it past its stop-drain bound (cut to 0.2 s here) instead of closing
        on it, and once the worker runs again the result comes out: nothing lost, nothing counted lost."""
        monkeypatch.setattr(InferenceStage, "stop_drain_s", 0.2)
        img, _ = small_frame
        with rig(workers=1, hang_timeout_s=600) as (fw, out, stage, raw):
            (worker,) = stage.worker_pids()
            os.kill(worker, signal.SIGSTOP)
            try:
                seq = fw.write_frame(img, timeout_s=5)
                raw.close()  # the end of the source
                deadline = time.monotonic() + 30
                while stage.counters["dispatched"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.5)  # well past stop_drain_s: the old bounded drain would have closed by now
                assert stage.state == "running"
            finally:
                os.kill(worker, signal.SIGCONT)
            got = collect(out, 1, timeout_s=60)
            stage.join(30)
        stats = stage.stats()
        assert [m.frame_seq for m in got] == [seq]
        assert stats["results"] == 1 and stats["frames_lost"] == 0 and stats["state"] == "done"

    def test_frames_in_flight_when_a_stop_cuts_the_drain_are_counted_lost(self, small_frame, monkeypatch):
        """Stopped while a (SIGSTOPped) worker holds a frame: after stop_drain_s the stage closes and counts
        the frame in frames_lost instead of losing it silently."""
        monkeypatch.setattr(InferenceStage, "stop_drain_s", 0.2)
        img, _ = small_frame
        with rig(workers=1, hang_timeout_s=600) as (fw, out, stage, _):
            (worker,) = stage.worker_pids()
            os.kill(worker, signal.SIGSTOP)
            fw.write_frame(img, timeout_s=5)
            deadline = time.monotonic() + 30
            while stage.counters["dispatched"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            stage.stop()
            stage.join(60)
        stats = stage.stats()
        assert stats["dispatched"] == 1 and stats["results"] == 0 and stats["frames_lost"] == 1
