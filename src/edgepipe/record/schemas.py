"""The protobuf schemas a recording uses, as MCAP wants them: a message's full name plus the serialized
``FileDescriptorSet`` of its file and every file it imports.

- ``edgepipe.v1.*``: the control-plane messages (``proto/edgepipe/v1/edgepipe.proto``): ImuSample,
  InferenceResult, FrameMeta, Stats, ...
- ``edgepipe.record.v1.RawRecord``: a user record kept as its bytes plus its ring type id and its stamps
  (``edgepipe.v1.Stamps``: capture, every hop's publish and receive, seq). Defined here rather than in the
  control plane's .proto because nothing but a recording ever carries it; its descriptor is built once and
  added to the default pool, so the class behaves like generated code.
- ``foxglove.RawImage``: frames, so Foxglove shows them (from ``foxglove-schemas-protobuf``, the ``record``
  extra).

>>> s = schema("edgepipe.v1.ImuSample")
>>> s.name, s.encoding, len(s.data) > 100
('edgepipe.v1.ImuSample', 'protobuf', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

from edgepipe._extras import require
from edgepipe.control import messages as pb
from edgepipe.errors import UnknownSchemaError

__all__: list[str] = []  # shared inside edgepipe.record

RAW_RECORD = "edgepipe.record.v1.RawRecord"
RAW_IMAGE = "foxglove.RawImage"
_RECORD_FILE = "edgepipe/record/v1/record.proto"


def _raw_record_class() -> Any:
    pool = descriptor_pool.Default()
    try:
        return GetMessageClass(pool.FindMessageTypeByName(RAW_RECORD))
    except KeyError:
        pass
    f = descriptor_pb2.FileDescriptorProto(name=_RECORD_FILE, package="edgepipe.record.v1", syntax="proto3",
                                           dependency=[pb.Stamps.DESCRIPTOR.file.name])
    m = f.message_type.add(name="RawRecord")
    T = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="stamps", number=1, type=T.TYPE_MESSAGE, type_name=".edgepipe.v1.Stamps", label=T.LABEL_OPTIONAL)
    m.field.add(name="type_id", number=2, type=T.TYPE_UINT32, label=T.LABEL_OPTIONAL)
    m.field.add(name="payload", number=3, type=T.TYPE_BYTES, label=T.LABEL_OPTIONAL)
    pool.Add(f)
    return GetMessageClass(pool.FindMessageTypeByName(RAW_RECORD))


RawRecord = _raw_record_class()


@dataclass(frozen=True)
class Schema:
    """One MCAP schema: the message's full name, encoding ``protobuf``, the FileDescriptorSet bytes."""

    name: str
    encoding: str
    data: bytes


def message_class(name: str) -> Any:
    """The protobuf class of a schema name this edgepipe records (edgepipe.v1.*, RawRecord, foxglove.RawImage).

    Raises:
        UnknownSchemaError: any other name (the name is in the message).
    """
    if name == RAW_RECORD:
        return RawRecord
    if name.startswith("edgepipe.v1."):
        cls = getattr(pb, name.rsplit(".", 1)[1], None)
        if cls is not None and hasattr(cls, "DESCRIPTOR") and cls.DESCRIPTOR.full_name == name:
            return cls
    if name == RAW_IMAGE:
        return require("foxglove_schemas_protobuf.RawImage_pb2", "recording frames as foxglove.RawImage").RawImage
    raise UnknownSchemaError(f"no schema {name!r} in this edgepipe: it records edgepipe.v1.* messages, "
                             f"{RAW_RECORD} and {RAW_IMAGE}", name=name)


_cache: dict[str, Schema] = {}


def schema(name: str) -> Schema:
    """The MCAP schema of message ``name`` (see :func:`message_class`)."""
    s = _cache.get(name)
    if s is None:
        fds = descriptor_pb2.FileDescriptorSet()
        seen: set[str] = set()

        def add(fd) -> None:
            for dep in fd.dependencies:
                if dep.name not in seen:
                    seen.add(dep.name)
                    add(dep)
            fd.CopyToProto(fds.file.add())

        add(message_class(name).DESCRIPTOR.file)
        s = _cache[name] = Schema(name, "protobuf", fds.SerializeToString())
    return s
