"""The reader side of IMU samples: :class:`ImuReader` (numpy batches of ``IMU_SAMPLE_DTYPE`` records from a
ring) and :func:`euler_deg`.

>>> import numpy as np
>>> euler_deg(np.array([1.0, 0.0, 0.0, 0.0])).tolist()
[0.0, 0.0, 0.0]
"""

from __future__ import annotations

import math

import numpy as np

from edgepipe.errors import ImuConfigError, ImuSourceError
from edgepipe.imu_loop import IMU_RECORD_TYPE, IMU_SAMPLE_DTYPE

__all__ = ["IMU_RECORD_TYPE", "IMU_SAMPLE_DTYPE", "ImuReader", "euler_deg"]


def euler_deg(q) -> np.ndarray:
    """Roll, pitch, yaw in degrees (aerospace ZYX order) of quaternions ``q`` (..., 4) in w, x, y, z.

    >>> euler_deg([math.cos(math.pi / 8), 0.0, 0.0, math.sin(math.pi / 8)]).round(6).tolist()
    [0.0, 0.0, 45.0]
    """
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.degrees(np.stack([roll, pitch, yaw], axis=-1))



class ImuReader:
    """Read ImuSample records from a RingReader in batches, as numpy structured arrays (IMU_SAMPLE_DTYPE).

    One C call per batch copies up to ``max_batch`` records into a preallocated array; ``read()`` returns a
    view of it that the next ``read()`` overwrites (``copy=True`` for a private array).
    """

    def __init__(self, reader, max_batch: int = 256) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ImuConfigError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self.reader = reader
        self._buf = np.zeros(max_batch, dtype=IMU_SAMPLE_DTYPE)
        self._lens = np.zeros(max_batch, dtype=np.uint32)
        self._types = np.zeros(max_batch, dtype=np.uint32)
        self._read = reader.batch_reader(self._buf.view(np.uint8), self._lens, self._types)

    def read(self, timeout_s: float | None = 0.0, copy: bool = False) -> np.ndarray:
        """Up to max_batch samples (an empty array if none arrive within ``timeout_s``)."""
        n = self._read()
        if n == 0 and timeout_s != 0 and self.reader.wait(timeout_s):
            n = self._read()
        wrong = (self._lens[:n] != IMU_SAMPLE_DTYPE.itemsize) | (self._types[:n] != IMU_RECORD_TYPE)
        if wrong.any():
            bad = int(np.flatnonzero(wrong)[0])
            raise ImuSourceError(
                f"ring record of {int(self._lens[bad])} bytes, type {int(self._types[bad]):#x} is not an ImuSample "
                f"({IMU_SAMPLE_DTYPE.itemsize} bytes, type {IMU_RECORD_TYPE:#x})"
            )
        out = self._buf[:n]
        return out.copy() if copy else out
