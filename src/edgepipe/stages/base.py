"""The Stage base: one loop with inputs and outputs, run in the process (or thread) that owns it.

A stage is what a pipeline starts as a process: ``CaptureStage``, ``ImuStage``, ``InferenceStage`` and
user stages all subclass :class:`Stage` and override :meth:`Stage.loop` (and, when they hold resources,
:meth:`Stage.open` / :meth:`Stage.close`). Ring ends are constructor arguments, so whoever creates the rings
(a supervisor passing memfds, or a test) hands them in; the stage never looks rings up by itself.

Lifecycle::

    open()  ->  loop()  ->  close()        run() does all three and returns an exit status
                  ^ returns when stopping is true or the source ended; raises on failure

``stop()`` only sets a flag, so it is safe from another thread and from a signal handler; ``loop()`` must
look at ``stopping`` at least every 100 ms (blocking calls with a timeout of at most 0.1 s do that).
``wait_ready()`` blocks a caller of ``start()`` until ``open()`` is done (an InferenceStage's workers have
loaded the model), so the first input is not raced against the setup.

>>> class Count(Stage):
...     kind = "count"
...     def loop(self):
...         while not self.stopping and self.counters.get("n", 0) < 3:
...             self.count("n")
>>> s = Count()
>>> s.run()
0
>>> s.stats()["n"], s.stats()["state"]
(3, 'done')
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

__all__ = ["Stage"]  # also producer_closed / consumer_closed, shared by the stages, not public API

def _segment(end):
    """The ring or latest slot behind a reader or writer (or a frame reader/writer over one)."""
    try:
        return end.segment
    except AttributeError:
        raise TypeError(f"not a ring or latest-slot end: {type(end).__name__}") from None


def producer_closed(reader) -> bool:
    """After a PeerClosedError on ``reader``: True if its producer closed the ring in order (the end of the
    stream), False if the producer died. A supervised producer that died is restarted and takes its end
    over, so a stage treats that as a pause, never as the end of its input."""
    return bool(_segment(reader).status().producer_closed)


def consumer_closed(writer) -> bool:
    """After a PeerClosedError on ``writer``: True if its consumer closed in order, False if it died (and
    will be restarted: wait for it, or drop and count, but do not end)."""
    return bool(_segment(writer).status().consumer_closed)


# state names, in the order a stage goes through them
_STATES = ("new", "opening", "running", "closing", "done", "failed")


class Stage:
    """Base of every stage. Subclasses set :attr:`kind` and override :meth:`loop`."""

    kind: ClassVar[str] = "stage"

    def __init__(self, name: str | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"stage name must be a non-empty str, got {name!r}")
        self.name: str = name or self.kind
        self.counters: dict[str, int] = {}
        self.error: BaseException | None = None
        self._state = "new"
        self._stop = threading.Event()
        self._settled = threading.Event()  # set once open() returned (state running) or the run ended
        self._opened = False
        self._thread: threading.Thread | None = None
        self._status: int | None = None

    # -- what subclasses override -------------------------------------------------------------------------
    def open(self) -> None:
        """Acquire resources in the process that runs the stage (devices, sessions). Default: nothing."""

    def loop(self) -> None:
        """Do the work until :attr:`stopping` is true or the source ends; raise on failure."""
        raise NotImplementedError(f"{type(self).__name__} must override loop()")

    def close(self) -> None:
        """Release what :meth:`open` acquired. Always called after open(), also when loop() raised."""

    def extra_stats(self) -> dict[str, Any]:
        """Live numbers beyond the counters (percentiles, rates). Default: none."""
        return {}

    # -- running --------------------------------------------------------------------------------------------
    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key`` (created at 0)."""
        self.counters[key] = self.counters.get(key, 0) + n

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    @property
    def state(self) -> str:
        """One of new, opening, running, closing, done, failed."""
        return self._state

    def stop(self) -> None:
        """Ask the loop to return. Safe from any thread and from a signal handler."""
        self._stop.set()

    def run(self) -> int:
        """open(), loop(), close() in this thread. Returns 0 on success, 1 if open/loop/close raised (the
        exception is kept in :attr:`error`). KeyboardInterrupt counts as a stop, not a failure."""
        if self._state != "new":
            raise RuntimeError(f"stage {self.name!r} already ran (state {self._state!r}); make a new one")
        self._state = "opening"
        opened = False
        try:
            self.open()
            opened = True
            self._state = "running"
            self._opened = True
            self._settled.set()
            self.loop()
        except KeyboardInterrupt:
            self._stop.set()
        except Exception as exc:  # noqa: BLE001 - a stage reports, the supervisor decides
            self.error = exc
        finally:
            if opened:
                self._state = "closing"
                try:
                    self.close()
                except Exception as exc:  # noqa: BLE001
                    if self.error is None:
                        self.error = exc
        self._state = "failed" if self.error is not None else "done"
        self._status = 1 if self.error is not None else 0
        self._settled.set()
        return self._status

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until :meth:`open` has finished and the loop runs (or the run already ended cleanly).

        Returns:
            True once open() succeeded (the loop runs, or ran); False if the run ended before open() finished
            without an error (Ctrl-C during open()).

        Raises:
            TimeoutError: still opening after ``timeout_s`` seconds (the stage keeps going).
            Exception: the stage's own error (:attr:`error`) if open() or loop() failed.
        """
        if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or timeout_s < 0):
            raise ValueError(f"timeout_s must be a number >= 0 or None, got {timeout_s!r}")
        if not self._settled.wait(timeout_s):
            raise TimeoutError(f"stage {self.name!r} not ready within {timeout_s} s (state {self._state!r})")
        if self.error is not None:
            raise self.error
        return self._opened

    def start(self) -> None:
        """Run the stage in a background thread (for in-process use and tests)."""
        if self._thread is not None:
            raise RuntimeError(f"stage {self.name!r} was already started")
        self._thread = threading.Thread(target=self.run, name=f"edgepipe-{self.name}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> int | None:
        """Wait for a started stage; returns its exit status, or None if it is still running."""
        if self._thread is None:
            raise RuntimeError(f"stage {self.name!r} was not started")
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self._status

    def stats(self) -> dict[str, Any]:
        """A snapshot: kind, name, state, error message (or None), every counter, then extra_stats()."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "state": self._state,
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        }
        out.update(self.counters)
        out.update(self.extra_stats())
        return out

    def __enter__(self) -> Stage:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._state}>"
