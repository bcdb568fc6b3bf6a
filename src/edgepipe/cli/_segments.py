"""What the CLI commands share about named segments and processes: is a pid alive, which pids hold a ring,
what a segment is (``ls``, ``status``, ``cleanup``, ``doctor`` and ``top`` all ask)."""

from __future__ import annotations

import os

from edgepipe.errors import EdgepipeError
from edgepipe.ring import Ring, RingStatus
from edgepipe.shm import SharedRegion


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def segment_status(name: str) -> RingStatus | str:
    """The ring status of a segment, or a sentence saying why it is not a readable ring."""
    try:
        region = SharedRegion.attach(name)
    except OSError as e:
        return f"cannot open: {e}"
    try:
        return Ring(region).status()
    except EdgepipeError as e:
        return str(e)
    finally:
        region.close()


def ring_pids(s: RingStatus) -> list[int]:
    """The distinct pids recorded in a ring (creator, producer, consumer), in that order."""
    return list(dict.fromkeys(p for p in (s.creator_pid, s.producer_pid, s.consumer_pid) if p > 0))


def describe(name: str, s: RingStatus | str) -> str:
    if isinstance(s, str):
        return f"{name:32}  not a ring: {s}"
    live = [p for p in ring_pids(s) if alive(p)]
    state = f"live pids {live}" if live else "all processes dead"
    return (
        f"{name:32}  capacity={s.capacity} used={s.used} queued={s.queued} "
        f"producer={s.producer_pid}{' (closed)' if s.producer_closed else ''} "
        f"consumer={s.consumer_pid}{' (closed)' if s.consumer_closed else ''}  {state}"
    )
