"""edgepipe: move data between Python processes on one edge device.

A lock-free single-producer/single-consumer ring over shared memory, with a C core (cffi, API mode),
zero-copy claim/commit and peek/release, blocking waits that release the GIL and notice a dead peer, and one
CLOCK_MONOTONIC_RAW nanosecond clock for every stamp.

>>> import edgepipe
>>> with edgepipe.Ring.create(capacity=1 << 16) as ring:
...     w, r = ring.writer(), ring.reader()
...     w.write(b"imu 0 0 9.81")
...     r.read(timeout_s=1.0)
b'imu 0 0 9.81'
"""

from edgepipe.ahrs import Madgwick, Recording, load_recording
from edgepipe.clock import ClockMapping, mapping, monotonic_ns, now_ns, wall_ns
from edgepipe.errors import (
    CalibrationError,
    EdgepipeError,
    EdgepipeOSError,
    FrameClosedError,
    FrameDecodeError,
    FrameError,
    FrameTimeoutError,
    FrameTooLargeError,
    ImuConfigError,
    ImuDeviceNotFoundError,
    ImuError,
    ImuSourceClosedError,
    ImuSourceError,
    InferenceError,
    LayoutVersionError,
    ModelInputError,
    ModelLoadError,
    ModelNotFoundError,
    PeerClosedError,
    QuantizationAccuracyError,
    RecordTooLargeError,
    RemoteError,
    RingBusyError,
    RingClosedError,
    RingCorruptError,
    RingError,
    RingTimeoutError,
    ServerError,
    SocketInUseError,
    UnsafeSocketDirError,
    WorkerError,
)
from edgepipe.framing import Envelope, FrameSocket
from edgepipe.imu import CsvSource, IioSource, ImuReader, ImuStage, SyntheticSource
from edgepipe.inference import (
    DBPostprocess,
    Detection,
    ModelSpec,
    TextDetector,
    bundled_model_path,
    fit_input_hw,
)
from edgepipe.ring import Ring, RingReader, RingStatus, RingWriter, WaitPolicy
from edgepipe.server import Client, Server, Session, default_socket_dir
from edgepipe.shm import SharedRegion, list_segments, validate_name
from edgepipe.stage import Stage

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "Client",
    "ClockMapping",
    "CsvSource",
    "DBPostprocess",
    "Detection",
    "EdgepipeError",
    "EdgepipeOSError",
    "Envelope",
    "FrameClosedError",
    "FrameDecodeError",
    "FrameError",
    "FrameSocket",
    "FrameTimeoutError",
    "FrameTooLargeError",
    "IioSource",
    "ImuConfigError",
    "ImuDeviceNotFoundError",
    "ImuError",
    "ImuReader",
    "ImuSourceClosedError",
    "ImuSourceError",
    "ImuStage",
    "InferenceError",
    "LayoutVersionError",
    "Madgwick",
    "ModelInputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelSpec",
    "PeerClosedError",
    "QuantizationAccuracyError",
    "RecordTooLargeError",
    "Recording",
    "RemoteError",
    "Ring",
    "RingBusyError",
    "RingClosedError",
    "RingCorruptError",
    "RingError",
    "RingReader",
    "RingStatus",
    "RingTimeoutError",
    "RingWriter",
    "Server",
    "ServerError",
    "Session",
    "SharedRegion",
    "SocketInUseError",
    "Stage",
    "SyntheticSource",
    "TextDetector",
    "UnsafeSocketDirError",
    "WaitPolicy",
    "WorkerError",
    "bundled_model_path",
    "default_socket_dir",
    "fit_input_hw",
    "list_segments",
    "load_recording",
    "mapping",
    "monotonic_ns",
    "now_ns",
    "validate_name",
    "wall_ns",
]
