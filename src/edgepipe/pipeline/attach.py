"""Attach to the taps of a pipeline that is already running, from another process: the one mechanism by
which a recorder (``edgepipe record --attach NAME`` / ``--socket PATH``), a live view or a bridge run outside
the pipeline consumes its links.

A link with ``tap = true`` has a side ring, the link ``<link>.tap`` (edgepipe.pipeline.tap), which the
supervisor creates as a memfd like every other ring. When no stage of the pipeline reads it, the tap fills
it while it has room and drops the rest, counted; nothing waits for it. Another process asks the
supervisor's control socket for it with an Attach request naming the links (``Client.request_attach``);
the supervisor answers with an Attach whose fds (SCM_RIGHTS) are the side rings, as it hands rings to its
own stage processes. The asker opens each ring's consumer end, and the ring's own ownership rule does the
rest:

- one reader per tap: a second reader gets RingBusyError naming the tap and the pid that reads it (the
  ring's owner word is the arbiter; two recorders racing cannot both win);
- a reader that closes, or dies (kill -9), lets the next one in (a closed or dead holder may be replaced),
  and the tap meanwhile drops for itself only, so the pipeline never slows or fails because of a reader;
- what the side ring held when a reader attached was queued before it (possibly long before, by a previous
  reader or nobody): :class:`TapAttachment` discards it, counted in ``stale``, so a recording starts at
  the moment of the attach, and it counts the tap's drops from that moment (``dropped_since``);
- a link the pipeline does not have, or one without a tap, is refused by the supervisor (Error NOT_FOUND)
  and raised here as TapNotFoundError listing the links that have one and saying how to add one.

The rings are memfds: a reader that is killed leaves nothing in /dev/shm.

Finding a pipeline: by its control socket path, or by its name through the stats files running
supervisors publish in :func:`edgepipe.pipeline.supervisor.runtime_dir` (what ``edgepipe top`` reads).

>>> from edgepipe.pipeline.config import parse_config
>>> spec = parse_config('''
... [stages.src]
... kind = "counter"
... outputs = { out = "n" }
... [stages.sink]
... kind = "check"
... inputs = { in = "n" }
... [links.n]
... tap = true
... ''')
>>> tappable_links(spec)
['n']
>>> refusal(spec, "m")
"pipeline 'pipeline' has no link 'm'; links with a tap: n"
"""

from __future__ import annotations

import glob
import json
import os
import select
from collections.abc import Callable
from typing import Any

from edgepipe.control import messages as pb
from edgepipe.control.client import Client
from edgepipe.control.framing import Envelope
from edgepipe.control.server import default_socket_dir
from edgepipe.errors import (
    EdgepipeError,
    PeerClosedError,
    PipelineNotFoundError,
    RemoteError,
    RingBusyError,
    TapNotFoundError,
)
from edgepipe.pipeline.config import PipelineSpec
from edgepipe.pipeline.tap import TAP_SUFFIX, tap_link
from edgepipe.ring import Ring, RingReader

# tap_request_handler, tappable_links, refusal, running_pipelines: the supervisor's and the CLI's, not API
__all__ = ["TapAttachment", "attach_taps", "find_pipeline"]


def tappable_links(spec: PipelineSpec) -> list[str]:
    """The links of ``spec`` that have a tap (``tap = true``), in file order."""
    return [name for name, ln in spec.links.items() if getattr(ln, "tap", False)]


def refusal(spec: PipelineSpec, link: str) -> str | None:
    """Why ``link``'s tap cannot be handed out (None: it can)."""
    taps = tappable_links(spec)
    have = ", ".join(taps) if taps else "none (add tap = true to a link in the pipeline file)"
    if link.endswith(TAP_SUFFIX) and link[:-len(TAP_SUFFIX)] in taps:
        return None
    if link not in spec.links or link.endswith(TAP_SUFFIX):
        return f"pipeline {spec.name!r} has no link {link!r}; links with a tap: {have}"
    if link not in taps:
        return (f"link {link!r} of pipeline {spec.name!r} has no tap: add `tap = true` under [links.{link}] in the "
                f"pipeline file and start it again (a tap costs the link one try_write per record, and drops "
                f"when nobody reads it); links with a tap: {have}")
    return None


def tap_request_handler(spec: PipelineSpec, ring_of: Callable[[str], Any]):
    """The supervisor's handler for Attach requests on its control socket (``Server.on("attach", ...)``):
    answer with the side rings of the named links (``link`` or ``link.tap``; no name: every tap), all or
    none; Error NOT_FOUND
    naming the first one that cannot be handed out. ``ring_of(name)`` gives the ring of a link (None once
    the pipeline has stopped)."""

    def handle(session, env: Envelope) -> Envelope | None:
        rings = []
        names = [d.name for d in env.attach.rings] or tappable_links(spec)  # none named: every tap
        for name in names:
            why = refusal(spec, name)
            side = name if name.endswith(TAP_SUFFIX) else tap_link(name)
            ring = None if why else ring_of(side)
            if why is None and ring is None:
                why = f"pipeline {spec.name!r} is not running any more: no tap {side!r}"
            if why:
                return Envelope(error=pb.Error(code=pb.ErrorCode.ERROR_CODE_NOT_FOUND, message=why))
            rings.append((side, ring, "input"))
        if not rings:
            return Envelope(error=pb.Error(code=pb.ErrorCode.ERROR_CODE_NOT_FOUND,
                                           message=f"pipeline {spec.name!r} has no link with a tap: add `tap = "
                                                   f"true` under [links.<name>] in the pipeline file; links with "
                                                   f"a tap: none"))
        session.attach_many(rings, reply_to=env.seq, timeout_s=5.0)
        return None

    return handle


# -- finding a running pipeline ------------------------------------------------------------------------


def running_pipelines(directory: str | None = None) -> list[dict[str, Any]]:
    """``{"name", "pid", "socket"}`` of every running supervisor that publishes its stats (newest first)."""
    d = directory or os.fspath(default_socket_dir())  # supervisor.runtime_dir(), without creating it
    out = []
    paths = sorted(glob.glob(os.path.join(d, "pipeline-*.json")), key=_mtime, reverse=True)
    for p in paths:
        try:
            with open(p) as f:
                live = json.load(f)
        except (OSError, ValueError):
            continue  # gone or between writes
        pid = live.get("pid")
        if isinstance(pid, int) and _alive(pid) and live.get("socket") and os.path.exists(live["socket"]):
            out.append({"name": live.get("name"), "pid": pid, "socket": live["socket"]})
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _mtime(p: str) -> float:
    try:
        return os.path.getmtime(p)
    except OSError:
        return 0.0


def find_pipeline(name: str | None = None, directory: str | None = None) -> str:
    """The control socket of the running pipeline called ``name`` (None: the only one running).

    Raises:
        PipelineNotFoundError: none of that name (or none at all, or several and no name), listing those
            that run.
    """
    found = running_pipelines(directory)
    listed = ", ".join(f"{p['name']} (pid {p['pid']})" for p in found) or "none"
    if name is None:
        if len(found) == 1:
            return found[0]["socket"]
        raise PipelineNotFoundError(
            f"{'several' if found else 'no'} running pipelines ({listed}); name one" if found else
            "no running pipeline found (start one with `edgepipe run FILE.toml` or `edgepipe demo`)", name)
    match = [p for p in found if p["name"] == name]
    if not match:
        raise PipelineNotFoundError(f"no running pipeline named {name!r}; running: {listed}", name)
    return match[0]["socket"]


# -- the attaching side --------------------------------------------------------------------------------


class TapAttachment:
    """The taps of a running pipeline, opened for reading in this process (made by :func:`attach_taps`).

    Attributes:
        readers: ``{link: RingReader}`` of each tap's side ring.
        stale: ``{link: records}`` discarded at the attach (queued before it).
        socket: the supervisor's control socket.
    """

    def __init__(self, socket: str, client: Client, rings: dict[str, Ring]) -> None:
        self.socket = socket
        self._client = client
        self.rings = rings
        self.readers: dict[str, RingReader] = {}
        self.stale: dict[str, int] = {}
        self._drops0: dict[str, int] = {}

    def _open(self) -> None:
        for link, ring in self.rings.items():
            side = tap_link(link)
            try:
                r = ring.reader()
            except RingBusyError:
                holder = ring.status().consumer_pid
                raise RingBusyError(f"tap {side!r} of the pipeline at {self.socket} is already read by pid {holder} "
                                    f"(another recorder, view or bridge: one reader per tap; it frees the tap "
                                    f"when it exits or dies)") from None
            self.readers[link] = r
            st = ring.status()
            self._drops0[link] = st.full_events
            n = 0
            for _ in range(st.queued):  # queued before we came: not part of this recording
                if r.try_peek() is None:
                    break
                r.release()
                n += 1
            self.stale[link] = n

    @property
    def drops_before(self) -> dict[str, int]:
        """``{link: full_events}`` of each side ring at the attach: what its tap dropped before."""
        return dict(self._drops0)

    def dropped_since(self, link: str) -> int:
        """Records the tap of ``link`` could not take (its side ring full) since the attach."""
        return self.rings[link].status().full_events - self._drops0[link]

    def supervisor_gone(self) -> bool:
        """True once the supervisor closed its control connection (it exited, or was killed). Never waits."""
        if self._client.closed:
            return True
        while select.select([self._client.fileno()], [], [], 0)[0]:
            try:
                if self._client.try_recv_raw() is None:
                    return False
            except (PeerClosedError, EdgepipeError, OSError):
                return True
        return False

    def close(self) -> None:
        """Close the readers (the taps drop until the next reader attaches) and the control connection."""
        for r in self.readers.values():
            r.close()
        for ring in self.rings.values():
            ring.close()
        self._client.close()

    def __enter__(self) -> TapAttachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TapAttachment {self.socket!r} links={list(self.rings)}>"


def attach_taps(links: list[str] | None = None, *, socket: str | None = None, pipeline: str | None = None,
                timeout_s: float = 5.0) -> TapAttachment:
    """Open the taps of ``links`` of a running pipeline for reading (see the module docstring).

    Args:
        links: link names (``"samples"``; ``"samples.tap"`` is accepted too); None or empty: every tap.
        socket: the supervisor's control socket; else found by ``pipeline`` name (:func:`find_pipeline`).

    Raises:
        PipelineNotFoundError: no such pipeline, or nothing listens at ``socket``.
        TapNotFoundError: a link that is not in the pipeline or has no tap (the message lists those that do).
        RingBusyError: a tap that another process reads, naming the tap and that pid.
    """
    links = list(dict.fromkeys(ln.removesuffix(TAP_SUFFIX) for ln in links or []))
    path = socket or find_pipeline(pipeline)
    try:
        client = Client.connect(path, stage="tap-reader", role="monitor", timeout_s=timeout_s)
    except (OSError, PeerClosedError) as e:
        raise PipelineNotFoundError(f"no pipeline answers at {path}: {type(e).__name__}: {e}", path) from None
    rings: dict[str, Ring] = {}
    try:
        try:
            answer = client.request_attach(links, timeout_s=timeout_s)
        except RemoteError as e:
            if e.code == pb.ErrorCode.ERROR_CODE_NOT_FOUND:
                bad = next((ln for ln in links if f"{ln!r}" in e.remote_message), None)
                raise TapNotFoundError(e.remote_message, bad, _listed(e.remote_message)) from None
            raise
        for desc, fd in answer:
            try:
                rings[desc.name.removesuffix(TAP_SUFFIX)] = Ring.from_fd(fd)
            finally:
                os.close(fd)
        att = TapAttachment(path, client, rings)
        att._open()
        return att
    except BaseException:
        for r in rings.values():
            r.close()
        client.close()
        raise


def _listed(message: str) -> tuple[str, ...]:
    tail = message.rsplit("links with a tap: ", 1)
    if len(tail) < 2 or tail[1].startswith("none"):
        return ()
    return tuple(x.strip() for x in tail[1].split(","))
