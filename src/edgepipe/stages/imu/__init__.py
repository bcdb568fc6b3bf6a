"""IMU stages: a deadline-scheduled sampling loop in C (``edgepipe.imu_loop`` over ``csrc/ep_imu.c``), its sources,
and the reader side.

Modules: ``sources`` (synthetic, CSV replay), ``csvfile`` (the CSV reader), ``iio`` (Linux IIO), ``stage``
(ImuStage), ``records`` (ImuReader, euler_deg).

Python configures, starts, stops and reads the stats; the loop itself runs on its own pthread with the GIL
released: it waits for each deadline (absolute, on CLOCK_MONOTONIC), reads one sample, stamps it with
CLOCK_MONOTONIC_RAW, runs the Madgwick filter and writes one 192-byte ImuSample record into a ring with
``try_write`` (a full ring drops the sample and counts it; the loop never blocks on the consumer). Nothing is
allocated per sample.

Sources:

- :class:`SyntheticSource`: constant body rate from a known attitude, gravity rotated to match, generated in
  C; :meth:`SyntheticSource.truth` gives the exact attitude for tests.
- :class:`CsvSource`: replay of a recording (a bundled one by name, or a CSV file), preloaded into a numpy
  array that C reads, at the recorded rate, a chosen rate, or resampled.
- :class:`IioSource`: a Linux IIO device as the st_lsm6dsx driver exposes an LSM6DSOX, either polled through
  sysfs (``in_accel_x_raw`` times ``in_accel_scale``) or through the buffered char device
  (``/dev/iio:deviceN``, scans decoded from ``scan_elements``). The device root is configurable, so a fake
  sysfs tree and a FIFO stand in for hardware in tests.

Conventions: gyro rad/s, accel m/s^2 (CSV data in g is converted), magnetometer in the source's units,
quaternion (w, x, y, z) rotating the sensor frame into the earth frame with gravity along earth +z (see
``edgepipe.ahrs``).

Wait modes: ``"sleep"`` (clock_nanosleep to the deadline, timer slack 1 ns: cheap, wakes tens of us late on
a VM) and ``"hybrid"`` (sleep to deadline - guard, then spin: wakes within ~100 ns, costs CPU; the guard
follows the observed wake lateness). A buffered IIO source paces itself (``"device"``).

>>> import numpy as np
>>> from edgepipe import Ring
>>> from edgepipe.stages.imu import ImuStage, ImuReader, SyntheticSource
>>> with Ring.create(capacity=1 << 16) as ring:
...     src = SyntheticSource.rotating(rate_dps=90.0, axis="z")
...     stage = ImuStage(src, rate_hz=1000, wait="sleep", output=ring.writer(), max_samples=50)
...     stage.run()
...     batch = ImuReader(ring.reader()).read()
...     len(batch), int(batch["seq"][-1]), stage.stats()["published"]
0
(50, 49, 50)
"""

from edgepipe.stages.imu.iio import IioSource, parse_scan_type
from edgepipe.stages.imu.records import IMU_RECORD_TYPE, IMU_SAMPLE_DTYPE, ImuReader, euler_deg
from edgepipe.stages.imu.sources import CsvSource, ImuSource, SyntheticSource
from edgepipe.stages.imu.stage import ImuStage

__all__ = [
    "IMU_RECORD_TYPE",
    "IMU_SAMPLE_DTYPE",
    "CsvSource",
    "IioSource",
    "ImuReader",
    "ImuStage",
    "ImuSource",
    "SyntheticSource",
    "euler_deg",
]
