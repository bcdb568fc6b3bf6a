"""edgepipe.inference: the bundled text detector on a real photograph, DB post-processing on synthetic maps,
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
        for t in truth:
            scaled = [v / 2 for v in t]
            assert max(iou(d[:4], scaled) for d in dets) >= 0.5

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


def test_model_file_is_the_documented_one():
    """The vendored model is the file NOTICE.md names (size and sha256 prefix in model_id)."""
    notice = (Path(bundled_model_path()).parent / "NOTICE.md").read_text()
    assert "d2a7720d45a5" in notice
    assert TextDetector.__name__ and "4,745,517" in notice
