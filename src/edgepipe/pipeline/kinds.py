"""The built-in kinds' factories: the sensor, camera and inference stages take their ring ends wrapped in
their own reader and writer types; these build them from the bare ends a stage process is handed
(registered as ``capture``, ``imu`` and ``inference`` in edgepipe.pipeline.config, resolved by import path).

>>> from edgepipe.pipeline.config import stage_kinds
>>> stage_kinds()["inference"]
'edgepipe.pipeline.kinds:inference_kind'
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []  # shared inside edgepipe.pipeline, not public API


def capture_kind(name: str, output, source: Any = None, video: str | None = None, **params: Any):
    from edgepipe.stages.capture import CaptureStage
    from edgepipe.frames import FrameWriter
    from edgepipe.ring import RingWriter

    out = FrameWriter(output) if isinstance(output, RingWriter) else output
    src = source if source is not None else video
    if src is None:
        raise ValueError(f"capture stage {name!r} needs params.video (a file) or params.source")
    return CaptureStage(src, out, name=name, **params)


def imu_kind(name: str, output, recording: str | None = None, csv: str | None = None, synthetic: bool = False,
             source_params: dict[str, Any] | None = None, **params: Any):
    from edgepipe.stages.imu import CsvSource, ImuStage, SyntheticSource

    sp = dict(source_params or {})
    src = SyntheticSource(**sp) if synthetic else CsvSource(csv or recording or "ngimu", **sp)
    return ImuStage(src, output=output, name=name, **params)


def inference_kind(name: str, input, output, **params: Any):  # noqa: A002 - the stage's own port name
    from edgepipe.frames import FrameReader
    from edgepipe.stages.inference import InferenceStage
    from edgepipe.ring import RingReader

    inp = FrameReader(input) if isinstance(input, RingReader) else input
    return InferenceStage(inp, output, name=name, **params)
