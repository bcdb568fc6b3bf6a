"""edgepipe.stages.inference.quantize and ``edgepipe quantize``: calibration sources, static INT8 that still finds the text,
refusal below the accuracy threshold, dynamic INT8 only with a warning, typed errors for bad sources."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime.quantization")

from edgepipe import CalibrationError, QuantizationAccuracyError, TextDetector, bundled_model_path  # noqa: E402
from edgepipe.cli.main import main as cli_main  # noqa: E402
from edgepipe.stages.inference.quantize import calibration_frames, default_sources, quantize_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_inference import coverage, iou, text_frame  # noqa: E402

SAMPLES = bundled_model_path().parent / "samples"
VIDEO = Path(bundled_model_path()).parents[1] / "video" / "vtest_100.mp4"
TEXT_PAGES = VIDEO.parent / "text"  # photographed printed pages (OpenCV samples, bundled with the frames data)
# Calibration needs frames with text in them: calibrated on the photos alone, the INT8 model's text channels
# saturate and it finds nothing (mask IoU 0.00 at 224x320); with the two text pages added it reaches ~0.91.
CALIBRATION = [SAMPLES, TEXT_PAGES]
SMALL = (224, 320)  # a small fixed input keeps one quantization run to a few seconds


@pytest.fixture(scope="module")
def held_out_dir(tmp_path_factory):
    """One real photograph with text rendered at known positions, never used for calibration."""
    d = tmp_path_factory.mktemp("held")
    img, truth = text_frame()
    cv2.imwrite(str(d / "text.png"), img)
    return d, img, truth


class TestCalibrationSources:
    def test_folder_of_images(self):
        """A folder gives its readable images, sorted by name, as BGR uint8 frames."""
        frames = calibration_frames(SAMPLES)
        assert len(frames) == 4 and all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames)

    @pytest.mark.skipif(not VIDEO.exists(), reason="the bundled frames data (src/edgepipe/data/video) is not installed")
    def test_video_spread_over_its_length(self):
        """A video gives max_frames frames spread over its length (not the first few)."""
        frames = calibration_frames(VIDEO, max_frames=5)
        assert len(frames) == 5 and frames[0].shape == (576, 768, 3)
        assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1.0

    def test_empty_or_unusable_folder(self, tmp_path):
        """A folder with no readable image is CalibrationError (a ValueError) naming the folder."""
        (tmp_path / "notes.txt").write_text("no images here")
        (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        with pytest.raises(CalibrationError, match=str(tmp_path)) as ei:
            calibration_frames(tmp_path)
        assert isinstance(ei.value, ValueError)

    def test_missing_and_unreadable_files(self, tmp_path):
        """A missing path, an unreadable image and a file that is no video are CalibrationErrors naming them."""
        with pytest.raises(CalibrationError, match="nope"):
            calibration_frames(tmp_path / "nope")
        bad = tmp_path / "x.png"
        bad.write_bytes(b"garbage")
        with pytest.raises(CalibrationError, match="x.png"):
            calibration_frames(bad)
        notvideo = tmp_path / "clip.mp4"
        notvideo.write_bytes(b"\x00" * 64)
        with pytest.raises(CalibrationError, match="clip.mp4"):
            calibration_frames(notvideo)


class TestHeldOut:
    @pytest.mark.skipif(not TEXT_PAGES.is_dir(), reason="the bundled frames data (src/edgepipe/data/video) is not installed")
    def test_default_holds_out_more_than_one_frame_never_calibrated_on(self):
        """The default sources hold out two real frames (the upright text page and a photo without text),
        and neither is among the calibration sources (the samples folder is listed photo by photo)."""
        calib, held = default_sources()
        assert [p.name for p in held] == ["imageTextN.png", "rocket.jpg"]
        assert len(calibration_frames(held)) == 2
        files = {p.resolve() for p in calib if p.is_file()}
        assert all(p.is_file() for p in calib) and not files & {p.resolve() for p in held}
        assert {"astronaut.jpg", "imageTextR.png", "vtest_100.mp4"} <= {p.name for p in calib}

    def test_split_calibration_holds_out_at_least_two_and_says_how_many(self, tmp_path):
        """Without held_out, 6 frames split every 4th would hold out one; at least two are held out, never
        calibrated on, and the log line and the report say how many."""
        lines: list[str] = []
        r = quantize_model(tmp_path / "q.onnx", CALIBRATION, input_hw=SMALL, threads=(1,), runs=1, min_iou=0.01,
                           log=lines.append)
        assert r.held_out_frames == 2 and r.calibration_frames == 4
        assert "4 real frames for calibration, 2 held out for the accuracy check" in lines[0]
        assert any("held-out frames 2" in ln for ln in lines)

    def test_too_few_frames_to_hold_out_two(self, tmp_path):
        """Two frames and no held_out cannot give a calibration frame and two held-out ones: CalibrationError
        naming the count, before any quantization."""
        with pytest.raises(CalibrationError, match="2 frame"):
            quantize_model(tmp_path / "q.onnx", TEXT_PAGES, input_hw=SMALL, log=None)
        assert not (tmp_path / "q.onnx").exists()


class TestQuantize:
    def test_static_int8_is_written_and_finds_the_text(self, tmp_path, held_out_dir):
        """Static QDQ INT8 calibrated on real photos and text pages agrees with FP32 (mask IoU >= 0.85 on a held-out frame),
        is written, is smaller, loads, and boxes the known text of the held-out frame."""
        held, img, truth = held_out_dir
        out = tmp_path / "det_int8.onnx"
        r = quantize_model(out, CALIBRATION, held_out=held, input_hw=SMALL, threads=(1,), runs=2, log=None)
        assert r.output == str(out) and out.exists()
        assert r.mask_iou >= 0.85 and r.box_recall >= 0.6
        assert r.int8_bytes < 0.5 * r.fp32_bytes
        assert r.fp32_ms[1] > 0 and r.int8_ms[1] > 0
        det = TextDetector(out)
        assert det.input_hw == SMALL  # the INT8 model has a fixed input
        boxes = [d[:4] for d in det.detect(img)]
        # at 224x320 (under half scale) the small third text is at the edge of what even FP32 resolves
        assert all(coverage(t, boxes) >= 0.7 for t in truth[:2]), boxes
        assert all(max(iou(b, t) for t in truth) > 0.1 for b in boxes), boxes

    def test_cli_refuses_a_model_below_the_threshold(self, tmp_path, held_out_dir, capsys):
        """Calibrated on random noise, INT8 loses the text: ``edgepipe quantize`` prints FP32 vs INT8 latency at
        1 and 2 threads and the accuracy, refuses with QuantizationAccuracyError naming the IoU, exits 1 and
        writes nothing; a folder without images exits 1 with CalibrationError."""
        held, _, _ = held_out_dir
        noise = tmp_path / "noise"
        noise.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):
            cv2.imwrite(str(noise / f"n{i}.png"), rng.integers(0, 256, (*SMALL, 3), dtype=np.uint8))
        out = tmp_path / "bad.onnx"
        rc = cli_main(["quantize", str(out), "--calibration", str(noise), "--held-out", str(held),
                       "--input-size", f"{SMALL[0]}x{SMALL[1]}", "--runs", "1"])
        cap = capsys.readouterr()
        assert rc == 1 and not out.exists()
        assert "1 thread " in cap.out and "2 threads" in cap.out and "mask IoU vs FP32 0.0" in cap.out
        assert "QuantizationAccuracyError" in cap.err and "bad.onnx" in cap.err and "not written" in cap.err
        empty = tmp_path / "empty"
        empty.mkdir()
        rc = cli_main(["quantize", str(tmp_path / "never.onnx"), "--calibration", str(empty)])
        assert rc == 1 and "CalibrationError" in capsys.readouterr().err
        assert not (tmp_path / "never.onnx").exists()

    def test_api_raises_typed_error_below_threshold(self, tmp_path, held_out_dir):
        """quantize_model itself raises QuantizationAccuracyError (min_iou 1.0 cannot be met by INT8 here:
        checked with the cheap dynamic mode, which warns)."""
        held, _, _ = held_out_dir
        with pytest.warns(UserWarning, match="slower"), pytest.raises(QuantizationAccuracyError, match="IoU"):
            quantize_model(tmp_path / "x.onnx", CALIBRATION, held_out=held, input_hw=SMALL, threads=(1,), runs=1,
                           dynamic=True, min_iou=1.0, log=None)
        assert not (tmp_path / "x.onnx").exists()

    def test_dynamic_int8_warns(self, tmp_path, held_out_dir):
        """Dynamic INT8 is offered only with a warning about its speed on conv nets."""
        held, _, _ = held_out_dir
        with pytest.warns(UserWarning, match="slower"):
            quantize_model(tmp_path / "dyn.onnx", CALIBRATION, held_out=held, input_hw=SMALL, threads=(1,), runs=1,
                           dynamic=True, min_iou=0.5, log=None)


@pytest.mark.slow
def test_default_run_on_the_bundled_frames(tmp_path, capsys):
    """The command as a user runs it (480x640, the bundled calibration frames, the held-out text page): the
    INT8 model is written, agrees with FP32 (mask IoU >= 0.85) and is smaller. ~15-25 s, hence ``slow``."""
    out = tmp_path / "det_int8.onnx"
    assert cli_main(["quantize", str(out), "--runs", "5"]) == 0
    text = capsys.readouterr().out
    iou = float(text.split("mask IoU vs FP32 ")[1].split()[0])
    assert out.exists() and iou >= 0.85 and out.stat().st_size < bundled_model_path().stat().st_size / 2
