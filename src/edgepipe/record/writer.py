"""Writing MCAP recordings: :class:`McapRecorder`, one file (or a series of split parts) of protobuf channels.

Every message is already-serialized protobuf (``schemas``); the recorder registers each schema and topic the
first time it is written. Time: MCAP wants wall-clock ns (Foxglove shows real dates); edgepipe stamps are
CLOCK_MONOTONIC_RAW ns. One RAW -> wall mapping (:func:`edgepipe.clock.mapping`) is taken when the recorder
starts and kept for the whole recording, so the conversion is a constant offset: ``log_time`` (the receive
stamp) and ``publish_time`` (the source's capture stamp) convert back to the exact RAW stamps through the
``edgepipe.clock`` metadata record written at the start of every file (``raw_ns``, ``mono_ns``,
``wall_ns``, ``uncertainty_ns``). The edgepipe messages carry their RAW stamps inside as well (``Stamps``).

Chunks are compressed (``zstd``, ``lz4`` or ``none``) and indexed; a chunk is also closed every
``flush_s`` so a recorder killed with -9 loses at most that much (``edgepipe record --recover``). Files are
written through an unbuffered descriptor: what a closed chunk holds is in the kernel at once.

Split: with ``split_bytes`` or ``split_s`` the recording is a series ``NAME_000.mcap``, ``NAME_001.mcap``...
each a complete MCAP file with its own schemas, channels and metadata. Topics: ``allow`` / ``deny`` are
fnmatch patterns (deny wins). Drops: :meth:`McapRecorder.set_drops` records what the taps dropped; every
file ends with an ``edgepipe.drops`` metadata record (``"<topic>\\t<reason>" -> count``) and an
``edgepipe.recording`` one (messages, filtered, reason the file ended).

A full disk (ENOSPC, EDQUOT, EFBIG) stops the recording: :class:`~edgepipe.errors.RecordingDiskFullError`
names the file; what reached the disk stays and its complete chunks are recoverable.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import time
from typing import Any, Callable, Iterable

from edgepipe._extras import require
from edgepipe.clock import ClockMapping, mapping
from edgepipe.errors import RecordingDiskFullError, RecordingError
from edgepipe.record.schemas import schema

__all__ = ["McapRecorder"]

CLOCK_METADATA = "edgepipe.clock"
DROPS_METADATA = "edgepipe.drops"
RECORDING_METADATA = "edgepipe.recording"
PROFILE = "edgepipe"
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_COMPRESSIONS = ("zstd", "lz4", "none")


class _Sink:
    """The stream the mcap Writer writes to: an unbuffered fd (each closed chunk reaches the kernel at once),
    counting bytes for split-by-size. ``opener`` makes the fd (tests pass one that fails with ENOSPC)."""

    def __init__(self, path: str, opener: Callable[[str], Any] | None) -> None:
        self.path = path
        self.file = opener(path) if opener else open(path, "wb", buffering=0)
        self.pos = 0

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            n = self.file.write(view)
            if n is None:  # pragma: no cover - only a non-blocking file returns None
                continue
            self.pos += n
            view = view[n:]
        return len(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.file.close()


class McapRecorder:
    """Write edgepipe messages into MCAP.

    Args:
        path: the file; with splitting, parts are ``<stem>_000<suffix>``, ``<stem>_001<suffix>``, ...
        compression: ``"zstd"`` (default), ``"lz4"`` or ``"none"``.
        chunk_bytes: uncompressed bytes per chunk.
        flush_s: close the chunk at least this often (bounds what a kill -9 loses); 0: only when full.
        split_bytes / split_s: start a new part after this many bytes / seconds of log time (0: never).
        allow / deny: fnmatch patterns of topics to keep / leave out (deny wins; no allow: all).
        clock: the RAW -> wall mapping (default: taken now).
        metadata: extra ``name -> {key: value}`` records written into every part.
        opener: ``opener(path)`` returns a binary file object to write to (default: open unbuffered).

    >>> import tempfile, os
    >>> from edgepipe import messages as pb
    >>> d = tempfile.mkdtemp()
    >>> with McapRecorder(os.path.join(d, "a.mcap")) as rec:
    ...     m = pb.ImuSample(stamps=pb.Stamps(capture_ns=1000, seq=1), gyro=pb.Vec3(x=0.5))
    ...     rec.write("/imu", "edgepipe.v1.ImuSample", m.SerializeToString(), receive_ns=2000, capture_ns=1000)
    ...     rec.messages
    True
    1
    """

    def __init__(self, path: str | os.PathLike, *, compression: str = "zstd", chunk_bytes: int = 1 << 20,
                 flush_s: float = 1.0, split_bytes: int = 0, split_s: float = 0.0,
                 allow: Iterable[str] = (), deny: Iterable[str] = (), clock: ClockMapping | None = None,
                 metadata: dict[str, dict[str, str]] | None = None,
                 opener: Callable[[str], Any] | None = None) -> None:
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
        if chunk_bytes < 1024:
            raise ValueError(f"chunk_bytes must be at least 1024, got {chunk_bytes}")
        if split_bytes < 0 or split_s < 0 or flush_s < 0:
            raise ValueError(f"split_bytes, split_s and flush_s must be >= 0, got {split_bytes}, {split_s}, {flush_s}")
        self._mcap = require("mcap.writer", "writing MCAP recordings")
        self.path = os.fspath(path)
        self.compression = compression
        self.chunk_bytes = chunk_bytes
        self.flush_s = flush_s
        self.split_bytes = split_bytes
        self.split_ns = int(split_s * 1e9)
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.clock = clock or mapping()
        self.offset_ns = self.clock.wall_ns - self.clock.raw_ns  # wall = raw + offset, for the whole recording
        self.extra_metadata = dict(metadata or {})
        self.opener = opener
        self.paths: list[str] = []  # every part written (or being written)
        self.messages = 0  # written, all parts
        self.filtered = 0  # left out by allow / deny
        self.counts: dict[str, int] = {}  # topic -> messages written
        self.drops: dict[tuple[str, str], int] = {}  # (topic, reason) -> count
        self.closed = False
        self.error: RecordingError | None = None
        self._keep: dict[str, bool] = {}
        self._w = None
        self._sink: _Sink | None = None
        self._channels: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self._part_messages = 0
        self._part_start_ns = 0
        self._last_flush = time.monotonic()
        self._open_part()

    # -- parts ----------------------------------------------------------------------------------------
    def _part_path(self, i: int) -> str:
        if not (self.split_bytes or self.split_ns):
            return self.path
        stem, suffix = os.path.splitext(self.path)
        return f"{stem}_{i:03d}{suffix or '.mcap'}"

    def _guard(self, fn, *args, **kw):
        """Run a writer call; a full disk stops the recording (RecordingDiskFullError)."""
        if self.error is not None:
            raise self.error
        try:
            return fn(*args, **kw)
        except OSError as e:
            if e.errno not in _FULL:
                raise
            part = self._sink.path if self._sink else self.path
            self.error = RecordingDiskFullError(
                f"{os.strerror(e.errno)} while writing {part!r}: the recording stopped after {self.messages} "
                f"messages; complete chunks are kept (edgepipe record --recover {part})", path=part)
            self.error.errno = e.errno
            self._abandon()
            raise self.error from e

    def _abandon(self) -> None:
        if self._sink is not None:
            try:
                self._sink.close()
            except OSError:
                pass
        self._sink = self._w = None
        self.closed = True

    def _open_part(self) -> None:
        m = self._mcap
        path = self._part_path(len(self.paths))
        self.paths.append(path)
        comp = {"zstd": m.CompressionType.ZSTD, "lz4": m.CompressionType.LZ4, "none": m.CompressionType.NONE}
        self._sink = _Sink(path, self.opener)
        self._w = m.Writer(self._sink, chunk_size=self.chunk_bytes, compression=comp[self.compression])
        self._channels.clear()
        self._schemas.clear()
        self._part_messages = 0
        self._part_start_ns = 0

        def start():
            self._w.start(profile=PROFILE, library="edgepipe")
            c = self.clock
            self._w.add_metadata(CLOCK_METADATA, {
                "raw_ns": str(c.raw_ns), "mono_ns": str(c.mono_ns), "wall_ns": str(c.wall_ns),
                "uncertainty_ns": str(c.uncertainty_ns), "offset_ns": str(self.offset_ns),
                "clock": "CLOCK_MONOTONIC_RAW", "part": str(len(self.paths) - 1)})
            for name, data in self.extra_metadata.items():
                self._w.add_metadata(name, {str(k): str(v) for k, v in data.items()})
        self._guard(start)

    def _close_part(self, reason: str) -> None:
        w = self._w

        def finish():
            w.add_metadata(DROPS_METADATA, {f"{t}\t{r}": str(n) for (t, r), n in sorted(self.drops.items())})
            w.add_metadata(RECORDING_METADATA, {"messages": str(self._part_messages),
                                                "messages_total": str(self.messages),
                                                "filtered": str(self.filtered), "ended": reason})
            w.finish()
        self._guard(finish)
        self._sink.close()
        self._sink = self._w = None

    # -- writing --------------------------------------------------------------------------------------
    def keeps(self, topic: str) -> bool:
        """Whether ``topic`` passes the allow / deny patterns."""
        k = self._keep.get(topic)
        if k is None:
            k = (not self.allow or any(fnmatch.fnmatchcase(topic, p) for p in self.allow)) and \
                not any(fnmatch.fnmatchcase(topic, p) for p in self.deny)
            self._keep[topic] = k
        return k

    def wall_ns(self, raw_ns: int) -> int:
        """The wall-clock ns a RAW stamp is written as (the recording's constant offset)."""
        return raw_ns + self.offset_ns

    def write(self, topic: str, schema_name: str, data: bytes, *, receive_ns: int, capture_ns: int = 0,
              seq: int = 0) -> bool:
        """Write one serialized message of ``schema_name`` on ``topic``. ``receive_ns`` (log time) and
        ``capture_ns`` (publish time; 0: same as receive) are RAW stamps. False if the topic is filtered out.

        Raises:
            RecordingDiskFullError: the disk is full (the recording has stopped).
            UnknownSchemaError: a schema name this edgepipe does not know.
            RecordingError: the recorder was closed.
        """
        if self.closed:
            raise self.error or RecordingError(f"the recording {self.path!r} is closed", path=self.path)
        if not self.keeps(topic):
            self.filtered += 1
            return False
        log_ns = receive_ns + self.offset_ns
        if self._part_messages and ((self.split_bytes and self._sink.pos >= self.split_bytes) or
                                    (self.split_ns and log_ns - self._part_start_ns >= self.split_ns)):
            self._close_part("split")
            self._open_part()
        ch = self._channels.get(topic)
        if ch is None:
            sid = self._schemas.get(schema_name)
            if sid is None:
                s = schema(schema_name)
                sid = self._schemas[schema_name] = self._guard(self._w.register_schema, s.name, s.encoding, s.data)
            ch = self._channels[topic] = self._guard(self._w.register_channel, topic, "protobuf", sid)
        if not self._part_messages:
            self._part_start_ns = log_ns
        self._guard(self._w.add_message, ch, log_time=log_ns, data=data,
                    publish_time=(capture_ns or receive_ns) + self.offset_ns, sequence=seq & 0xFFFFFFFF)
        self._part_messages += 1
        self.messages += 1
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if self.flush_s and time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()
        return True

    def flush(self) -> None:
        """Close the chunk in progress (compressed, indexed) and hand it to the kernel."""
        self._last_flush = time.monotonic()
        if self._w is not None:
            self._guard(self._w.flush)

    def set_drops(self, topic: str, reason: str, count: int) -> None:
        """Record that ``count`` messages of ``topic`` were dropped for ``reason`` so far (a running total,
        e.g. a tap's counter): written into every part's ``edgepipe.drops`` metadata."""
        self.drops[(topic, reason)] = int(count)

    def close(self, reason: str = "closed") -> None:
        """Finish the file (summary, indexes, drop statistics). Safe to call twice; after a full disk the
        file is left as it was (recoverable), and the RecordingDiskFullError is not raised again."""
        if self.closed:
            return
        self.closed = True
        try:
            self._close_part(reason)
        except RecordingDiskFullError:
            pass

    def __enter__(self) -> McapRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<McapRecorder {self.path!r} messages={self.messages} parts={len(self.paths)}>"
