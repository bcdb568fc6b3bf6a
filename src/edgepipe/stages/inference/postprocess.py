"""DB (differentiable binarization) post-processing: a text probability map -> boxes with scores.

PP-OCR's detector outputs, per pixel, the probability that it lies inside a text region. This module turns
that map into boxes the way DBNet's reference post-processing does, with OpenCV doing the geometry:

1. threshold the map (``thresh``) into a preallocated mask, optionally dilate it by a 2x2 kernel;
2. ``cv2.findContours`` on the mask; each outer contour is one candidate (at most ``max_candidates``);
3. ``cv2.minAreaRect`` of the contour; candidates thinner than ``min_size`` pixels are dropped;
4. score = mean probability inside the contour (filled on a preallocated scratch mask, then cleared);
   candidates under ``box_thresh`` are dropped;
5. unclip: DB shrinks text regions during training, so the rectangle grows by ``d = area * unclip_ratio /
   perimeter`` on every side (the polygon offset of pyclipper, exact for a rectangle up to its rounded corners);
6. map the (rotated) rectangle's corners back to frame pixels and keep their axis-aligned bounds.

The only per-call allocations are OpenCV's contour lists; the mask and scratch buffers live in the object and
are reallocated only when the map size changes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgepipe._extras import require

__all__ = ["DBPostprocess", "Detection"]


class Detection(NamedTuple):
    """One text box in frame pixels (axis-aligned bounds of the unclipped rotated rectangle)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    score: float


def _cv2():
    return require("cv2", "the detector's box post-processing")  # lazy: `import edgepipe` stays fast


class DBPostprocess:
    """Probability map -> list of :class:`Detection`. Not thread-safe (it reuses its buffers).

    Args:
        thresh: pixel probability above which a pixel counts as text.
        box_thresh: minimum mean probability inside a candidate's contour.
        unclip_ratio: how far the rectangle grows (DB's ``unclip_ratio``; 0 disables).
        max_candidates: at most this many contours are looked at (largest first).
        min_size: candidates whose shorter side is under this many map pixels are dropped.
        dilate: dilate the mask by a 2x2 kernel before finding contours (joins broken strokes).

    >>> import numpy as np
    >>> prob = np.zeros((64, 96), np.float32); prob[20:30, 10:60] = 0.9
    >>> [tuple(round(v) for v in d[:4]) for d in DBPostprocess(unclip_ratio=0, dilate=False)(prob)]
    [(10, 20, 60, 30)]
    """

    def __init__(
        self,
        thresh: float = 0.3,
        box_thresh: float = 0.5,
        unclip_ratio: float = 1.6,
        max_candidates: int = 1000,
        min_size: float = 3.0,
        dilate: bool = True,
    ) -> None:
        for key, v, lo, hi in (("thresh", thresh, 0.0, 1.0), ("box_thresh", box_thresh, 0.0, 1.0)):
            if not isinstance(v, (int, float)) or not lo <= v < hi:
                raise ValueError(f"{key} must be in [{lo}, {hi}), got {v!r}")
        if not isinstance(unclip_ratio, (int, float)) or unclip_ratio < 0:
            raise ValueError(f"unclip_ratio must be >= 0, got {unclip_ratio!r}")
        if not isinstance(max_candidates, int) or max_candidates < 1:
            raise ValueError(f"max_candidates must be an int >= 1, got {max_candidates!r}")
        self.thresh = float(thresh)
        self.box_thresh = float(box_thresh)
        self.unclip_ratio = float(unclip_ratio)
        self.max_candidates = max_candidates
        self.min_size = float(min_size)
        self.dilate = bool(dilate)
        self._mask = np.zeros((0, 0), np.uint8)
        self._dilated = np.zeros((0, 0), np.uint8)
        self._scratch = np.zeros((0, 0), np.uint8)
        self._kernel = np.ones((2, 2), np.uint8)

    def _buffers(self, shape: tuple[int, int]) -> None:
        if self._mask.shape != shape:
            self._mask = np.zeros(shape, np.uint8)
            self._dilated = np.zeros(shape, np.uint8)
            self._scratch = np.zeros(shape, np.uint8)

    def mask(self, prob: np.ndarray) -> np.ndarray:
        """The thresholded (and dilated) 0/1 mask of ``prob``; a view of an internal buffer."""
        self._buffers(prob.shape)
        np.greater(prob, self.thresh, out=self._mask.view(np.bool_))
        if not self.dilate:
            return self._mask
        return _cv2().dilate(self._mask, self._kernel, dst=self._dilated)

    def __call__(
        self, prob: np.ndarray, scale_xy: tuple[float, float] = (1.0, 1.0), frame_wh: tuple[int, int] | None = None
    ) -> list[Detection]:
        """Boxes in ``prob`` as :class:`Detection` in frame pixels.

        Args:
            prob: (H, W) float32 probability map.
            scale_xy: frame pixels per map pixel, (frame_w / W, frame_h / H).
            frame_wh: frame size to clip boxes to; default the map size times ``scale_xy``.

        Returns:
            Detections sorted top to bottom, then left to right.
        """
        if prob.ndim != 2:
            raise ValueError(f"probability map must be 2-D (H, W), got shape {prob.shape}")
        cv2 = _cv2()
        h, w = prob.shape
        sx, sy = scale_xy
        fw, fh = frame_wh if frame_wh is not None else (w * sx, h * sy)
        mask = self.mask(prob)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        if len(contours) > self.max_candidates:
            contours = sorted(contours, key=len, reverse=True)[: self.max_candidates]
        scratch = self._scratch
        out: list[Detection] = []
        for c in contours:
            (cx, cy), (rw, rh), angle = cv2.minAreaRect(c)
            # contour points are pixel indices; pixel i covers [i, i + 1), so the region is one pixel wider
            # and taller than the rectangle through the points, and its centre is half a pixel further on
            cx, cy, rw, rh = cx + 0.5, cy + 0.5, rw + 1.0, rh + 1.0
            if min(rw, rh) < self.min_size:
                continue
            x, y, bw, bh = cv2.boundingRect(c)
            roi = scratch[y : y + bh, x : x + bw]
            cv2.fillPoly(roi, [c], 1, offset=(-x, -y))
            score = cv2.mean(prob[y : y + bh, x : x + bw], mask=roi)[0]
            roi[:] = 0
            if score < self.box_thresh:
                continue
            if self.unclip_ratio > 0:
                d = rw * rh * self.unclip_ratio / (2.0 * (rw + rh))
                rw, rh = rw + 2 * d, rh + 2 * d
            if min(rw, rh) < self.min_size + 2:
                continue
            pts = cv2.boxPoints(((cx, cy), (rw, rh), angle))
            x0 = float(np.clip(pts[:, 0].min() * sx, 0, fw))
            x1 = float(np.clip(pts[:, 0].max() * sx, 0, fw))
            y0 = float(np.clip(pts[:, 1].min() * sy, 0, fh))
            y1 = float(np.clip(pts[:, 1].max() * sy, 0, fh))
            out.append(Detection(x0, y0, x1, y1, float(score)))
        out.sort(key=lambda d: (round(d.y_min), d.x_min))
        return out
