"""Record and replay: MCAP recordings of what went through a pipeline's links (edgepipe.record).

- :class:`McapRecorder` (``writer``): protobuf channels, RAW stamps mapped to wall time, compressed indexed
  chunks, split by size or duration, topic allow / deny, drop statistics as metadata.
- ``convert``: what each kind of ring record is recorded as, and replayed as.
- ``reader``: :func:`recording_info`, :func:`recover_recording` and :func:`iter_recording`, with typed errors for missing,
  truncated and foreign files and unknown schemas.
- ``recorder``: :class:`Recorder`, the loop that drains taps (or named rings) into a recording.
- ``replay``: :func:`replay`, recorded messages back into rings at recorded pace, xN, or lockstep.

Needs the ``record`` extra (``pip install "edgepipe[record]"``: mcap, mcap-protobuf-support, zstandard,
lz4, foxglove-schemas-protobuf).

>>> import os, tempfile
>>> from edgepipe import messages as pb
>>> path = os.path.join(tempfile.mkdtemp(), "run.mcap")
>>> with McapRecorder(path, compression="lz4") as rec:
...     for i in range(3):
...         s = pb.ImuSample(stamps=pb.Stamps(capture_ns=1000 + i, seq=i))
...         _ = rec.write("/imu", "edgepipe.v1.ImuSample", s.SerializeToString(), receive_ns=2000 + i)
>>> i = recording_info(path)
>>> [(c.topic, c.schema, c.messages) for c in i.channels], i.compression, i.raw_ns(i.start_ns)
([('/imu', 'edgepipe.v1.ImuSample', 3)], 'lz4', 2000)
"""

from edgepipe.record.reader import (
    ChannelInfo,
    RecordingInfo,
    RecoveredRecording,
    iter_recording,
    recording_info,
    recover_recording,
)
from edgepipe.record.writer import McapRecorder

__all__ = ["ChannelInfo", "McapRecorder", "RecordingInfo", "RecoveredRecording", "iter_recording", "recording_info",
           "recover_recording"]
