"""The recording loop: ring readers (a pipeline's taps, or named rings) drained into MCAP, continuously
(:class:`Recorder` over a :class:`~edgepipe.record.writer.McapRecorder`) or as a flight recorder
(:class:`FlightRecorder`: the last seconds in memory, written out with the seconds after whenever something
goes wrong).

Each record is stamped with ``now_ns()`` when it is taken off its ring (the receive stamp, MCAP's log time),
converted (edgepipe.record.convert) and written. Drops: a tap's side ring counts what did not fit
(``full_events`` in the ring itself, so the count survives a crash of either end); the recorder copies
those counts into the file's drop statistics as ``tap full``.

Flight recorder triggers: ``budget`` (a record whose end-to-end latency, receive stamp minus capture stamp,
is over its topic's budget: judged from each record's own stamps, as the latency report does), ``stop``
(the recorder is stopped: a Stop from the supervisor, Ctrl-C), ``error`` (a source's producer died) and
``signal`` (SIGUSR1, see :meth:`FlightRecorder.trigger`, which is safe to call from a signal handler).
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections import deque
from typing import Any, Callable, Iterable

from edgepipe.clock import ClockMapping, mapping, now_ns
from edgepipe.errors import PeerClosedError
from edgepipe.record.convert import Message, to_messages
from edgepipe.record.writer import McapRecorder

__all__ = ["FlightRecorder", "Recorder"]

TRIGGERS = ("budget", "stop", "error", "signal")


class Recorder:
    """Drain ``sources`` (``{topic: RingReader}``) into ``sink`` (an McapRecorder or a FlightRecorder).

    >>> import os, tempfile
    >>> from edgepipe.ring import Ring
    >>> path = os.path.join(tempfile.mkdtemp(), "r.mcap")
    >>> with Ring.create(capacity=4096) as ring:
    ...     w = ring.writer()
    ...     for i in range(5):
    ...         _ = w.try_write(b"rec %d" % i)
    ...     w.close()
    ...     with McapRecorder(path) as mcap:
    ...         rec = Recorder(mcap, {"/a": ring.reader()})
    ...         rec.run()
    ...         rec.records, rec.ended
    (5, {'/a'})
    """

    def __init__(self, sink, sources: dict[str, Any], *, on_error: Callable[[str], None] | None = None,
                 drops_before: dict[str, int] | None = None) -> None:
        self.sink = ContinuousSink(sink) if isinstance(sink, McapRecorder) else sink
        self.sources = dict(sources)
        # {topic: full_events of its ring before this recording began} (a tap attached to while it runs)
        self.drops_before = dict(drops_before or {})
        self.records = 0
        self.ended: set[str] = set()
        self.dead: set[str] = set()  # producers that died (may be restarted)
        self.on_error = on_error
        self.stopping = False
        self._offset = self.sink.offset_ns

    def poll(self, max_per_source: int = 256) -> int:
        """Take what is queued now (at most ``max_per_source`` from each source); the number of records."""
        n = 0
        for topic, r in self.sources.items():
            if topic in self.ended:
                continue
            for _ in range(max_per_source):
                try:
                    view = r.try_peek()  # converted in place: a frame's pixels are copied once, into its message
                except PeerClosedError:
                    if r.segment.status().producer_closed:
                        self.ended.add(topic)
                    elif topic not in self.dead:
                        self.dead.add(topic)
                        if self.on_error is not None:
                            self.on_error(topic)
                    break
                if view is None:
                    break
                self.dead.discard(topic)
                t = now_ns()
                try:
                    msgs = to_messages(topic, view, r.last_type, t, self._offset)
                finally:
                    view.release()
                    r.release()
                for m in msgs:
                    self.sink.add(m)
                n += 1
        self.records += n
        return n

    def update_drops(self) -> None:
        """Copy each source ring's count of refused records into the sink's drop statistics."""
        for topic, r in self.sources.items():
            try:
                self.sink.set_drops(topic, "tap full",
                                    r.segment.status().full_events - self.drops_before.get(topic, 0))
            except Exception:  # noqa: BLE001 - a closed ring: keep the last count
                pass

    def run(self, until: Callable[[], bool] | None = None, idle_s: float = 0.002) -> None:
        """Poll until every source ended, ``until()`` is true or :meth:`stop` was called; drops are
        updated every half second and at the end."""
        last = 0.0
        while not self.stopping and len(self.ended) < len(self.sources) and not (until and until()):
            if not self.poll():
                self._wait(idle_s)
            if time.monotonic() - last > 0.5:
                self.update_drops()
                self.sink.tick()
                last = time.monotonic()
        self.poll(1 << 30)  # what is still queued
        self.update_drops()

    def _wait(self, idle_s: float) -> None:
        # A plain sleep, never a wait on the ring: a reader parked on a tap's side ring would make the tapped
        # stage pay a futex wake per record (~5 us); polling every idle_s costs it nothing.
        time.sleep(idle_s)

    def stop(self) -> None:
        self.stopping = True


class ContinuousSink:
    """The sink of a plain recording: every message into one McapRecorder."""

    def __init__(self, writer: McapRecorder) -> None:
        self.writer = writer
        self.offset_ns = writer.offset_ns

    def add(self, m: Message) -> None:
        self.writer.write(m.topic, m.schema, m.data, receive_ns=m.receive_ns, capture_ns=m.capture_ns, seq=m.seq)

    def set_drops(self, topic: str, reason: str, n: int) -> None:
        self.writer.set_drops(topic, reason, n)

    def tick(self) -> None:
        pass

    def close(self, reason: str = "closed") -> None:
        self.writer.close(reason)


class FlightRecorder:
    """Keep the last ``pre_s`` seconds (at most ``max_memory_bytes``) in memory; on a trigger, write them and
    the next ``post_s`` seconds to ``<directory>/<reason>-<UTC time>.mcap``. At most ``max_files`` files and
    ``max_total_bytes`` are kept: the oldest event files are removed first (counted in ``removed``).

    Args:
        directory: where event files go (created).
        pre_s / post_s: seconds before / after the trigger.
        max_memory_bytes: bound of the in-memory buffer (serialized message bytes).
        budgets_ns: ``{topic: end-to-end budget ns}`` for the ``budget`` trigger (``"*"``: every topic).
        triggers: which of ``budget``, ``stop``, ``error``, ``signal`` start an event.
        max_files / max_total_bytes: caps on the event files kept.
        compression, clock, opener, allow, deny: as McapRecorder (a topic left out is not buffered either).
    """

    def __init__(self, directory: str | os.PathLike, *, pre_s: float = 10.0, post_s: float = 5.0,
                 max_memory_bytes: int = 64 << 20, budgets_ns: dict[str, int] | None = None,
                 triggers: Iterable[str] = TRIGGERS, max_files: int = 20, max_total_bytes: int = 1 << 30,
                 compression: str = "zstd", clock: ClockMapping | None = None,
                 opener: Callable[[str], Any] | None = None, allow: Iterable[str] = (),
                 deny: Iterable[str] = ()) -> None:
        triggers = tuple(triggers)
        bad = [t for t in triggers if t not in TRIGGERS]
        if bad:
            raise ValueError(f"unknown trigger {bad[0]!r}: triggers are {', '.join(TRIGGERS)}")
        if pre_s < 0 or post_s < 0 or max_memory_bytes <= 0 or max_files < 1 or max_total_bytes <= 0:
            raise ValueError(f"pre_s/post_s must be >= 0 and the caps positive, got pre_s={pre_s}, post_s={post_s}, "
                             f"max_memory_bytes={max_memory_bytes}, max_files={max_files}, "
                             f"max_total_bytes={max_total_bytes}")
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.pre_ns = int(pre_s * 1e9)
        self.post_ns = int(post_s * 1e9)
        self.max_memory_bytes = max_memory_bytes
        self.budgets_ns = dict(budgets_ns or {})
        self.triggers = triggers
        self.max_files = max_files
        self.max_total_bytes = max_total_bytes
        self.compression = compression
        self.clock = clock or mapping()
        self.offset_ns = self.clock.wall_ns - self.clock.raw_ns
        self.opener = opener
        self.allow, self.deny = tuple(allow), tuple(deny)
        self._keep: dict[str, bool] = {}
        self.buffer: deque[Message] = deque()
        self.buffered_bytes = 0
        self.evicted = 0  # messages that left the buffer without an event
        self.events: list[str] = []  # files written, in order
        self.removed: list[str] = []  # files removed by the caps
        self.drops: dict[tuple[str, str], int] = {}
        self._current: McapRecorder | None = None
        self._until_ns = 0
        self._pending: str | None = None  # a trigger raised from a signal handler, taken by the next add()

    # -- triggers -----------------------------------------------------------------------------------------
    def trigger(self, reason: str) -> None:
        """Start an event (or extend the one being written) for ``reason``. Only sets a flag, so a signal
        handler may call it; the next :meth:`add` or :meth:`tick` acts on it."""
        self._pending = reason

    def _start(self, reason: str, t_ns: int) -> None:
        if self._current is not None:
            self._until_ns = max(self._until_ns, t_ns + self.post_ns)
            return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime((t_ns + self.offset_ns) / 1e9))
        ms = ((t_ns + self.offset_ns) // 1_000_000) % 1000
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in reason)
        path = os.path.join(self.directory, f"{safe}-{stamp}.{ms:03d}Z.mcap")
        n = 1
        while os.path.exists(path):
            path = os.path.join(self.directory, f"{safe}-{stamp}.{ms:03d}Z-{n}.mcap")
            n += 1
        self._current = McapRecorder(path, compression=self.compression, clock=self.clock, opener=self.opener,
                                     metadata={"edgepipe.event": {"reason": reason, "trigger_ns": str(t_ns),
                                                                  "pre_s": str(self.pre_ns / 1e9),
                                                                  "post_s": str(self.post_ns / 1e9)}})
        self._until_ns = t_ns + self.post_ns
        for m in self.buffer:
            if m.receive_ns >= t_ns - self.pre_ns:  # the pre_s before the trigger, not before the last message
                self._write(m)
        self.buffer.clear()
        self.buffered_bytes = 0

    def _write(self, m: Message) -> None:
        self._current.write(m.topic, m.schema, m.data, receive_ns=m.receive_ns, capture_ns=m.capture_ns, seq=m.seq)

    def _finish(self) -> None:
        cur, self._current = self._current, None
        for (t, r), n in self.drops.items():
            cur.set_drops(t, r, n)
        cur.close("event written")
        self.events.append(cur.path)
        self._enforce_caps()

    def _enforce_caps(self) -> None:
        kept = [p for p in self.events if os.path.exists(p)]
        while kept and (len(kept) > self.max_files or sum(os.path.getsize(p) for p in kept) > self.max_total_bytes):
            old = kept.pop(0)
            os.unlink(old)
            self.removed.append(old)
        self.events = kept

    def _over_budget(self, m: Message) -> bool:
        b = self.budgets_ns.get(m.topic, self.budgets_ns.get("*"))
        return b is not None and m.capture_ns > 0 and m.receive_ns - m.capture_ns > b

    # -- the sink interface -------------------------------------------------------------------------------
    def add(self, m: Message) -> None:
        """One message: into the event being written, or into the memory buffer (oldest out first)."""
        keep = self._keep.get(m.topic)
        if keep is None:
            keep = self._keep[m.topic] = (not self.allow or any(fnmatch.fnmatchcase(m.topic, p) for p in self.allow)) \
                and not any(fnmatch.fnmatchcase(m.topic, p) for p in self.deny)
        if not keep:
            return
        if self._pending is not None:
            reason, self._pending = self._pending, None
            self._start(reason, m.receive_ns)
        if "budget" in self.triggers and self._over_budget(m):
            self._start(f"budget-{m.topic.strip('/').replace('/', '_') or 'topic'}", m.receive_ns)
        if self._current is not None:
            self._write(m)
            if m.receive_ns >= self._until_ns:
                self._finish()
            return
        self.buffer.append(m)
        self.buffered_bytes += len(m.data)
        while self.buffer and (self.buffered_bytes > self.max_memory_bytes or
                               m.receive_ns - self.buffer[0].receive_ns > self.pre_ns):
            old = self.buffer.popleft()
            self.buffered_bytes -= len(old.data)
            self.evicted += 1

    def set_drops(self, topic: str, reason: str, n: int) -> None:
        self.drops[(topic, reason)] = n

    def tick(self) -> None:
        """Act on a pending trigger and end an event whose post time passed with no message."""
        t = now_ns()
        if self._pending is not None:
            reason, self._pending = self._pending, None
            self._start(reason, t)
        if self._current is not None and t >= self._until_ns:
            self._finish()

    def close(self, reason: str = "closed") -> None:
        """Finish the event being written (with what it has); a ``stop`` trigger writes the buffer first."""
        if "stop" in self.triggers and reason == "stop" and self._current is None and self.buffer:
            self._start("stop", self.buffer[-1].receive_ns)
        if self._current is not None:
            self._finish()
