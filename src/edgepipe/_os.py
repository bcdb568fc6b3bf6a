"""Small OS chores more than one module needs."""

from __future__ import annotations

import os


def close_fds(fds: list[int]) -> None:
    """Close every fd in ``fds``, ignoring ones already closed (cleanup paths must not raise)."""
    for f in fds:
        try:
            os.close(f)
        except OSError:
            pass
