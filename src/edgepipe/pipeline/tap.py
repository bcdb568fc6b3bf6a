"""Taps: a second, drop-only consumer of a pipeline link, for recorders (and later the bridge and live view).

Rings and latest slots are single-consumer, so a tap is a side ring that one end of the link fills with a
copy of each record **only when the side ring has room**: :meth:`Tap.offer` is one ``try_write``, it never
waits and never raises for "no room" or "no reader"; what it could not take is counted by reason. The link
itself is unaffected: its producer never waits for the tap, and a slow or dead recorder costs the link
nothing but the copy.

Which end fills it: the producer's :class:`~edgepipe.pipeline.api.Outlet` (after each record it published)
when the producer is a Python stage, else the consumer's :class:`~edgepipe.pipeline.api.Inlet` (each record
it took), since the built-in capture, IMU and inference stages write their rings directly. In a pipeline
file a link opts in with ``tap = true`` (and ``tap_capacity``); the supervisor then creates the side ring as
a link named ``<link>.tap`` (mode ``drop``) and hands it to the filling end as the port
``<port>.tap`` (:data:`TAP_SUFFIX`); a ``record`` stage reads it.

>>> from edgepipe.ring import Ring
>>> with Ring.create(capacity=4096) as side:
...     tap = Tap(side.writer(), "imu")
...     tap.offer(b"x" * 1500), tap.offer(b"y" * 1500), tap.offer(b"z" * 1500)
...     tap.offered, tap.taken, tap.dropped
(True, True, False)
(3, 2, {'tap full': 1})
"""

from __future__ import annotations

from typing import Any

from edgepipe.errors import ImageError, PeerClosedError, RecordTooLargeError, RingClosedError
from edgepipe.frames import FrameWriter

__all__ = ["FrameTap", "Tap"]

TAP_SUFFIX = ".tap"


def tap_link(link: str) -> str:
    """The name of the side ring of ``link``'s tap."""
    return link + TAP_SUFFIX


class Tap:
    """The filling end of a tap: copies of a link's records into a side ring, if it has room.

    Args:
        writer: the side ring's RingWriter.
        link: the tapped link's name (for counters).
    """

    __slots__ = ("dropped", "end", "link", "offered", "taken")

    def __init__(self, writer, link: str) -> None:
        self.end = writer
        self.link = link
        self.offered = 0
        self.taken = 0
        self.dropped: dict[str, int] = {}

    def offer(self, data, type_id: int = 1) -> bool:
        """Copy one record into the side ring if it fits now. Never waits; False (counted) if it did not."""
        self.offered += 1
        try:
            ok = self.end.try_write(data, type_id)
        except PeerClosedError:
            why = "recorder gone"
        except RecordTooLargeError:
            why = "record larger than the tap"
        except RingClosedError:
            why = "tap closed"
        else:
            if ok:
                self.taken += 1
                return True
            why = "tap full"
        self.dropped[why] = self.dropped.get(why, 0) + 1
        return False

    def counters(self) -> dict[str, Any]:
        """What was offered, taken and dropped (by reason)."""
        return {"link": self.link, "offered": self.offered, "taken": self.taken, "dropped": dict(self.dropped)}

    def close(self) -> None:
        """Close the side ring's producer end: its reader drains what is queued, then sees end of stream."""
        self.end.close()

    def __repr__(self) -> str:
        return f"<Tap {self.link!r} offered={self.offered} taken={self.taken} dropped={sum(self.dropped.values())}>"


class FrameTap(Tap):
    """The tap of a frame source's output (a stage registered with ``frame_tap``, e.g. capture): the
    stage offers each frame's pixels while it still holds them (inside its claim block), and they are
    copied into the side ring as a frame record of its own, if it has room. The side ring numbers its
    frames itself: they match the link's frame numbers as long as the tap dropped none.
    """

    __slots__ = ("frames",)

    def __init__(self, writer, link: str) -> None:
        super().__init__(writer, link)
        self.frames = FrameWriter(writer)

    def offer_frame(self, arr, *, pixel_format: str = "BGR", capture_ns: int | None = None,
                    source_id: int = 0) -> bool:
        """Copy one frame into the side ring if it fits now. Never waits; False (counted) if it did not."""
        self.offered += 1
        try:
            ok = self.frames.try_write_frame(arr, pixel_format=pixel_format, capture_ns=capture_ns,
                                             source_id=source_id) is not None
        except PeerClosedError:
            why = "recorder gone"
        except (ImageError, RecordTooLargeError):
            why = "frame larger than the tap"
        except RingClosedError:
            why = "tap closed"
        else:
            if ok:
                self.taken += 1
                return True
            why = "tap full"
        self.dropped[why] = self.dropped.get(why, 0) + 1
        return False
