"""Reading MCAP recordings: :func:`recording_info` (channels, counts, time span, drop statistics), :func:`recover_recording` (a
file cut off by kill -9 or power loss, up to its last complete chunk) and :func:`iter_recording`.

Every failure is typed (edgepipe.errors): a missing file is RecordingNotFoundError, a file that is not MCAP
(a ROS 1 bag, eCAL's HDF5, anything else) RecordingFormatError, an MCAP file that was never finished
RecordingTruncatedError (the message says to run ``edgepipe record --recover``), and a channel whose schema
edgepipe cannot decode UnknownSchemaError. An MCAP file written by another tool with schemas edgepipe knows
nothing of is readable by :func:`recording_info`; only replaying its channels needs edgepipe's schemas.

>>> recording_info("/nonexistent/run.mcap")
Traceback (most recent call last):
...
edgepipe.errors.RecordingNotFoundError: no recording at '/nonexistent/run.mcap'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from edgepipe._extras import require
from edgepipe.errors import (
    RecordingError,
    RecordingFormatError,
    RecordingNotFoundError,
    RecordingTruncatedError,
    UnknownSchemaError,
)
from edgepipe.record.schemas import message_class
from edgepipe.record.writer import CLOCK_METADATA, DROPS_METADATA, RECORDING_METADATA

__all__ = ["ChannelInfo", "RecordingInfo", "RecoveredRecording", "iter_recording", "recording_info", "recover_recording"]

_MAGIC = b"\x89MCAP0\r\n"


@dataclass
class ChannelInfo:
    topic: str
    schema: str
    encoding: str
    messages: int


@dataclass
class RecordingInfo:
    """What :func:`recording_info` finds in a recording. Times are wall-clock ns (MCAP's log time)."""

    path: str
    profile: str
    library: str
    channels: list[ChannelInfo]
    messages: int
    start_ns: int
    end_ns: int
    chunks: int
    compression: str
    drops: dict[tuple[str, str], int] = field(default_factory=dict)
    clock: dict[str, str] = field(default_factory=dict)
    recording: dict[str, str] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9 if self.messages else 0.0

    def raw_ns(self, wall_ns: int) -> int:
        """The CLOCK_MONOTONIC_RAW stamp a log/publish time was written from (edgepipe files only)."""
        return wall_ns - int(self.clock["offset_ns"])


def _open(path: str | os.PathLike):
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise RecordingNotFoundError(f"no recording at {path!r}", path=path) from None
    except IsADirectoryError:
        raise RecordingFormatError(f"{path!r} is a directory, not an MCAP recording", path=path) from None
    head = f.read(len(_MAGIC))
    if head != _MAGIC:
        f.close()
        raise RecordingFormatError(f"{path!r} is not an MCAP file (it starts with {head[:8]!r}, MCAP files start "
                                   f"with {_MAGIC!r}): written by another tool?", path=path)
    f.seek(0)
    return f


def _reader(f, path: str):
    mr = require("mcap.reader", "reading MCAP recordings")
    me = require("mcap.exceptions", "reading MCAP recordings")
    size = os.fstat(f.fileno()).st_size
    f.seek(max(0, size - len(_MAGIC)))
    tail = f.read()
    f.seek(0)
    if tail != _MAGIC:
        raise RecordingTruncatedError(f"{path!r} ends before its footer ({size} bytes): the recording was cut off; "
                                      f"run `edgepipe record --recover {path}` to keep its complete chunks", path=path)
    try:
        r = mr.make_reader(f)
        summary = r.get_summary()
    except (me.McapError, EOFError, ValueError) as e:
        raise RecordingTruncatedError(f"{path!r} cannot be read to its end ({e}): run "
                                      f"`edgepipe record --recover {path}`", path=path) from e
    return r, summary


def recording_info(path: str | os.PathLike) -> RecordingInfo:
    """Channels, message counts, time span, chunks and drop statistics of a finished recording.

    Raises:
        RecordingNotFoundError, RecordingFormatError, RecordingTruncatedError.
    """
    path = os.fspath(path)
    with _open(path) as f:
        r, s = _reader(f, path)
        header = r.get_header()
        if s is None:
            raise RecordingTruncatedError(f"{path!r} has no summary section: run `edgepipe record --recover "
                                          f"{path}`", path=path)
        st = s.statistics
        counts = st.channel_message_counts if st else {}
        chans = [ChannelInfo(c.topic, s.schemas[c.schema_id].name if c.schema_id in s.schemas else "",
                             c.message_encoding, counts.get(cid, 0)) for cid, c in sorted(s.channels.items())]
        comps = sorted({ci.compression or "none" for ci in s.chunk_indexes})
        out = RecordingInfo(path, header.profile, header.library, chans, st.message_count if st else 0,
                            st.message_start_time if st else 0, st.message_end_time if st else 0,
                            st.chunk_count if st else 0, ",".join(comps) or "none")
        for md in r.iter_metadata():
            if md.name == DROPS_METADATA:
                for k, v in md.metadata.items():
                    topic, _, reason = k.partition("\t")
                    out.drops[(topic, reason)] = int(v)
            elif md.name == CLOCK_METADATA and not out.clock:
                out.clock = dict(md.metadata)
            elif md.name == RECORDING_METADATA:
                out.recording = dict(md.metadata)
    return out


@dataclass
class RecoveredRecording:
    """What :func:`recover_recording` kept: messages, the output path, and why reading stopped."""

    path: str
    messages: int
    channels: int
    stopped: str


def recover_recording(path: str | os.PathLike, out: str | os.PathLike | None = None, *, compression: str = "zstd") -> RecoveredRecording:
    """Copy everything up to the last complete chunk of a cut-off recording into a finished file.

    Reads ``path`` record by record (the ``mcap`` stream reader: a chunk is used only once all of it is
    there and its CRC matches) and writes schemas, channels, messages and metadata into ``out`` (default:
    ``<stem>.recovered.mcap``). A finished file is copied whole.

    Raises:
        RecordingNotFoundError, RecordingFormatError.
    """
    sr = require("mcap.stream_reader", "recovering MCAP recordings")
    mw = require("mcap.writer", "recovering MCAP recordings")
    rec = require("mcap.records", "recovering MCAP recordings")
    path = os.fspath(path)
    if out is None:
        stem, suffix = os.path.splitext(path)
        out = f"{stem}.recovered{suffix or '.mcap'}"
    out = os.fspath(out)
    comp = {"zstd": mw.CompressionType.ZSTD, "lz4": mw.CompressionType.LZ4, "none": mw.CompressionType.NONE}
    n = 0
    stopped = "end of file"
    with _open(path) as f, open(out, "wb") as o:
        w = mw.Writer(o, compression=comp[compression])
        schemas: dict[int, int] = {}
        channels: dict[int, int] = {}
        started = False
        try:
            for r in sr.StreamReader(f, validate_crcs=True).records:
                if isinstance(r, rec.Header):
                    w.start(profile=r.profile, library=r.library)
                    started = True
                elif isinstance(r, rec.Schema) and r.id not in schemas:
                    schemas[r.id] = w.register_schema(r.name, r.encoding, r.data)
                elif isinstance(r, rec.Channel) and r.id not in channels:
                    channels[r.id] = w.register_channel(r.topic, r.message_encoding, schemas.get(r.schema_id, 0),
                                                        r.metadata)
                elif isinstance(r, rec.Message) and r.channel_id in channels:
                    w.add_message(channels[r.channel_id], r.log_time, r.data, r.publish_time, r.sequence)
                    n += 1
                elif isinstance(r, rec.Metadata):
                    w.add_metadata(r.name, r.metadata)
                elif isinstance(r, rec.DataEnd):
                    break
        except Exception as e:  # noqa: BLE001 - any way a cut-off file ends: keep what came before
            stopped = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if not started:
            w.start(profile="edgepipe", library="edgepipe recover")
        w.add_metadata("edgepipe.recovered", {"from": path, "messages": str(n), "stopped": stopped})
        w.finish()
    return RecoveredRecording(out, n, len(channels), stopped)


def _range(reader, start_ns: int | None, end_ns: int | None) -> dict[str, int | None]:
    """A [start, end) log-time range in the keywords this mcap version takes (1.6 renamed them)."""
    import inspect

    if "starting_at" in inspect.signature(reader.iter_messages).parameters:
        return {"starting_at": start_ns, "ending_before": end_ns}
    return {"start_time": start_ns, "end_time": end_ns}


def iter_recording(path: str | os.PathLike, *, topics: list[str] | None = None, start_ns: int | None = None,
                  end_ns: int | None = None) -> Iterator[tuple[str, str, Any, Any]]:
    """``(topic, schema name, mcap Message record, decoded protobuf)`` of a finished recording in log-time
    order, optionally only ``topics`` and log times in ``[start_ns, end_ns)`` (wall ns).

    Raises:
        RecordingNotFoundError, RecordingFormatError, RecordingTruncatedError,
        UnknownSchemaError: a channel whose schema edgepipe does not know (only raised for a channel that is
            actually read).
    """
    path = os.fspath(path)
    with _open(path) as f:
        r, _s = _reader(f, path)
        try:
            for schema, channel, message in r.iter_messages(topics=topics, **_range(r, start_ns, end_ns)):
                name = schema.name if schema is not None else ""
                if schema is None or schema.encoding != "protobuf":
                    raise UnknownSchemaError(f"{path!r}: channel {channel.topic!r} has schema {name!r} in encoding "
                                             f"{getattr(schema, 'encoding', '')!r}; edgepipe replays protobuf "
                                             f"schemas only", path=path, name=name)
                try:
                    cls = message_class(name)
                except UnknownSchemaError as e:
                    raise UnknownSchemaError(f"{path!r}: channel {channel.topic!r}: {e}", path=path, name=name) from None
                yield channel.topic, name, message, cls.FromString(message.data)
        except RecordingError:
            raise
        except Exception as e:
            me = require("mcap.exceptions", "reading MCAP recordings")
            if isinstance(e, (me.McapError, EOFError)):
                raise RecordingTruncatedError(f"{path!r}: {e}; run `edgepipe record --recover {path}`",
                                              path=path) from e
            raise
