"""The ``edgepipe.v1`` protobuf messages (schema: ``proto/edgepipe/v1/edgepipe.proto``), under a public name.

The generated module lives in the private ``edgepipe.control._proto`` package so it can be regenerated freely; this
module is the stable way to reach its classes. Import it as a namespace rather than flattening it into
``edgepipe`` (``Error`` or ``Stats`` would clash with ordinary names)::

>>> from edgepipe import messages as pb
>>> r = pb.InferenceResult(model_id="ppocr-det", frame_seq=7)
>>> pb.InferenceResult.FromString(r.SerializeToString()).frame_seq
7
>>> pb.Envelope(hello=pb.Hello(stage_name="cam0")).WhichOneof("body")
'hello'
"""

from __future__ import annotations

from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as _pb

# every message and enum of the file, by its schema name
__all__ = sorted([*_pb.DESCRIPTOR.message_types_by_name, *_pb.DESCRIPTOR.enum_types_by_name])
globals().update({name: getattr(_pb, name) for name in __all__})
