"""Drawing for the live view (OpenCV): detection boxes, a horizon/attitude overlay, and the JPEG encoding.

The horizon is the line where the world's level plane crosses the picture, for a camera looking along the
sensor's x axis: it turns by the roll and moves by the pitch (``px_per_deg`` pixels per degree). The text
line under it gives roll, pitch and yaw, and the alignment gap (``extrapolated`` when it was).

>>> import numpy as np
>>> img = np.zeros((120, 160, 3), np.uint8)
>>> _ = draw_attitude(img, (1.0, 0.0, 0.0, 0.0), gap_ns=250_000, extrapolated=False)
>>> bool(img[60].any())                   # level: the horizon crosses the middle row
True
>>> encode_jpeg(img)[:2]
b'\\xff\\xd8'
"""

from __future__ import annotations

import math

import numpy as np

from edgepipe._extras import require

__all__: list[str] = []  # shared inside edgepipe.view

GREEN = (60, 220, 60)
CYAN = (230, 200, 40)
WHITE = (255, 255, 255)


def _cv2():
    return require("cv2", "the live view's drawing and JPEG encoding")


def roll_pitch_yaw_deg(q) -> tuple[float, float, float]:
    """Aerospace ZYX Euler angles (degrees) of a unit quaternion (w, x, y, z)."""
    w, x, y, z = (float(v) for v in q)
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x))))
    yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return math.degrees(roll), math.degrees(pitch), math.degrees(yaw)


def draw_boxes(img: np.ndarray, boxes) -> int:
    """Draw detection boxes (objects with x_min, y_min, x_max, y_max, score) on ``img`` in place."""
    cv2 = _cv2()
    n = 0
    for b in boxes:
        p0, p1 = (int(b.x_min), int(b.y_min)), (int(b.x_max), int(b.y_max))
        cv2.rectangle(img, p0, p1, GREEN, 2)
        cv2.putText(img, f"{b.score:.2f}", (p0[0], max(10, p0[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, GREEN, 1,
                    cv2.LINE_AA)
        n += 1
    return n


def draw_attitude(img: np.ndarray, q, *, gap_ns: int, extrapolated: bool, px_per_deg: float | None = None) -> None:
    """Draw the horizon for attitude ``q`` and a line of text with the angles and the alignment gap."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    roll, pitch, yaw = roll_pitch_yaw_deg(q)
    ppd = px_per_deg if px_per_deg is not None else h / 60.0  # about a 60 degree vertical field of view
    cx, cy = w / 2.0, h / 2.0 + pitch * ppd
    r = math.radians(-roll)
    dx, dy = math.cos(r) * w, math.sin(r) * w
    cv2.line(img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), CYAN, 2, cv2.LINE_AA)
    cv2.line(img, (int(w / 2 - 12), int(h / 2)), (int(w / 2 + 12), int(h / 2)), WHITE, 1)  # the boresight
    cv2.line(img, (int(w / 2), int(h / 2 - 12)), (int(w / 2), int(h / 2 + 12)), WHITE, 1)
    text = f"roll {roll:+6.1f}  pitch {pitch:+6.1f}  yaw {yaw:+6.1f}  gap {gap_ns / 1e3:.0f} us"
    if extrapolated:
        text += " (extrapolated)"
    cv2.rectangle(img, (0, h - 18), (w, h), (0, 0, 0), -1)
    cv2.putText(img, text, (4, h - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, WHITE, 1, cv2.LINE_AA)


def encode_jpeg(img: np.ndarray, quality: int = 80) -> bytes:
    """The JPEG bytes of a BGR (or gray) image."""
    cv2 = _cv2()
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV refuses only shapes it cannot encode, which frames never are
        raise ValueError(f"OpenCV could not encode a {img.shape} {img.dtype} image as JPEG")
    return buf.tobytes()
