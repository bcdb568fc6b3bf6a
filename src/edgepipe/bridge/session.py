"""One zenoh session of a bridge end: its configuration (explicit endpoints, optional multicast scouting,
TLS), its liveliness token and the remote ends it sees, and the checked receiving of envelopes.

The default and documented path is explicit endpoints: one end ``listen``s (``tcp/198.18.0.1:7447``), the
other ``connect``s to it; multicast scouting is off unless asked for (containers and VPNs drop it). Since
zenoh 1.9 peers do not relay: with more than two ends, connect every pair or run a zenoh router.

A sample that is not an envelope is counted by reason and logged (on stderr), never raised:

>>> chk = Checker("edgepipe/cam/imu", max_bytes=1 << 20)
>>> chk.check(b"not an envelope") is None
True
>>> chk.dropped
{'malformed': 1}
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from edgepipe._extras import require
from edgepipe.bridge.wire import Envelope, unpack
from edgepipe.clock import now_ns
from edgepipe.errors import (
    BridgeError,
    BridgePayloadError,
    BridgePayloadTooLargeError,
    BridgeVersionError,
    ConfigError,
)

__all__: list[str] = []  # shared inside edgepipe.bridge

ALIVE = "_alive"  # liveliness tokens live under edgepipe/<pipeline>/_alive/<stage>
LOG_FIRST = 5  # log lines per reason before going quiet (then one every LOG_EVERY)
LOG_EVERY = 1000


def zenoh():
    return require("zenoh", "the bridge (edgepipe.bridge)")


def callback(fn: Callable):
    """``fn`` as a zenoh handler that runs on zenoh's own thread (``Callback(indirect=False)``).

    Every callback of the bridge goes through here. zenoh-python's default (``indirect``) queues each sample
    in a 256-deep channel for a Python thread of its own: one parked-thread wake-up per sample (80-90 us on a
    busy VM), and a thread that outlives the session by a moment. That thread inherits ``daemon`` from the
    one that declared the callback (a stage thread is one), so when a process exits right after closing its
    session, the thread wakes to the closed channel while the interpreter finalizes, is ended with
    ``pthread_exit`` inside Rust code, and the process aborts ("FATAL: exception not rethrown", exit -6) after
    doing everything right. A direct callback must not wait long, except for a lossless link's back-pressure,
    which is meant to hold zenoh back (the indirect channel did so too, once full)."""
    return zenoh().handlers.Callback(fn, indirect=False)


def make_config(*, listen: list[str] = (), connect: list[str] = (), multicast: bool = False,
                lease_ms: int = 1000, tls: dict[str, Any] | None = None):
    """A zenoh Config for a bridge end: peer mode, the given endpoints, multicast scouting only if asked,
    a lease of ``lease_ms`` (a silent remote is declared gone after that long; keep-alives go 4 times per
    lease). ``tls``: ``root_ca_certificate``, ``listen_certificate``, ``listen_private_key``,
    ``connect_certificate``, ``connect_private_key``, ``enable_mtls`` (zenoh's ``transport/link/tls`` keys)."""
    for what, eps in (("listen", listen), ("connect", connect)):
        for e in eps:
            if not isinstance(e, str) or "/" not in e:
                raise ConfigError(f"bridge {what} endpoint {e!r} is not a zenoh locator like 'tcp/198.18.0.1:7447'")
    if not listen and not connect and not multicast:
        raise ConfigError("a bridge needs listen or connect endpoints (or multicast = true to scout for peers)")
    if lease_ms < 100:
        raise ConfigError(f"bridge lease_ms must be >= 100, got {lease_ms}")
    z = zenoh()
    conf: dict[str, Any] = {
        "mode": "peer",
        "listen": {"endpoints": list(listen)},
        "connect": {"endpoints": list(connect)},
        "scouting": {"multicast": {"enabled": bool(multicast)}},
        # zenoh's shared memory only helps peers on one machine, and leaves files in /dev/shm after a kill -9
        "transport": {"link": {"tx": {"lease": int(lease_ms), "keep_alive": 4}},
                      "shared_memory": {"enabled": False}},
    }
    if tls:
        conf["transport"]["link"]["tls"] = dict(tls)
    return z.Config.from_json5(json.dumps(conf))


class Checker:
    """Checks envelopes arriving on one key: counts them, their gaps, and what it drops (by reason), and
    logs a dropped sample (the first few per reason, then one in LOG_EVERY) instead of raising."""

    def __init__(self, where: str, max_bytes: int) -> None:
        self.where = where
        self.max_bytes = max_bytes
        self.received = 0
        self.bytes = 0
        self.lost = 0  # gaps in the sender's numbering
        self.dropped: dict[str, int] = {}
        self.next_seq: int | None = None
        self.last_send_ns = 0

    def check(self, data: bytes) -> Envelope | None:
        try:
            env = unpack(data, max_bytes=self.max_bytes)
        except BridgeVersionError as e:
            return self._drop("wrong version", e)
        except BridgePayloadTooLargeError as e:
            return self._drop("oversize", e)
        except BridgePayloadError as e:
            return self._drop("malformed", e)
        return env

    def count(self, env: Envelope) -> None:
        if self.next_seq is not None and env.seq > self.next_seq:
            self.lost += env.seq - self.next_seq
        # a smaller number is a restarted sender: count from it
        self.next_seq = env.seq + 1
        self.received += 1
        self.bytes += len(env.body)
        self.last_send_ns = env.send_ns

    def _drop(self, reason: str, err: Exception | str) -> None:
        n = self.dropped.get(reason, 0) + 1
        self.dropped[reason] = n
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            print(f"edgepipe bridge {self.where}: dropped ({reason}, #{n}): {err}", file=sys.stderr, flush=True)

    drop = _drop


class Session:
    """A zenoh session with this end's liveliness token, watching the other ends' tokens.

    Args:
        pipeline, stage: name this end: its token is ``edgepipe/<pipeline>/_alive/<stage>``.
        config: from :func:`make_config`.
        on_remote: called ``(token_key, alive)`` when a remote end comes or goes (on a zenoh thread).
        token: declare this end's token (False for a watcher that is no bridge end, ``edgepipe bridge``).
    """

    def __init__(self, pipeline: str, stage: str, config, on_remote: Callable[[str, bool], None] | None = None,
                 token: bool = True):
        z = zenoh()
        try:
            self.z = z.open(config)
        except z.ZError as e:
            raise BridgeError(f"bridge {pipeline}/{stage}: zenoh could not open: {e}") from e
        self.own = f"edgepipe/{pipeline}/{ALIVE}/{stage}"
        self.remotes: dict[str, bool] = {}
        self.remote_events: list[tuple[int, str, bool]] = []  # (now_ns, key, alive)
        self._lock = threading.Lock()
        self._on_remote = on_remote
        self.token = self.z.liveliness().declare_token(self.own) if token else None
        self.watch = self.z.liveliness().declare_subscriber(f"edgepipe/*/{ALIVE}/*", callback(self._alive),
                                                            history=True)

    def _alive(self, sample) -> None:
        key = str(sample.key_expr)
        if key == self.own:
            return
        alive = sample.kind == zenoh().SampleKind.PUT
        with self._lock:
            self.remotes[key] = alive
            self.remote_events.append((now_ns(), key, alive))
        if self._on_remote is not None:
            self._on_remote(key, alive)

    def remotes_alive(self) -> list[str]:
        with self._lock:
            return sorted(k for k, v in self.remotes.items() if v)

    def wait_remote(self, timeout_s: float) -> bool:
        """True once any remote end is alive (False after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not self.remotes_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def publisher(self, key: str, lossless: bool, express: bool = False):
        """A publisher that never delivers to this session itself: reliable + block for a lossless link,
        best effort + drop otherwise."""
        z = zenoh()
        if lossless:
            rel, cc = z.Reliability.RELIABLE, z.CongestionControl.BLOCK
        else:
            rel, cc = z.Reliability.BEST_EFFORT, z.CongestionControl.DROP
        return self.z.declare_publisher(key, congestion_control=cc, reliability=rel, express=express,
                                        allowed_destination=z.Locality.REMOTE)

    def subscriber(self, key: str, fn: Callable):
        """A subscriber to remote publications only (a bridge never hears its own); ``fn`` runs on zenoh's
        receiving thread (:func:`callback`)."""
        return self.z.declare_subscriber(key, callback(fn), allowed_origin=zenoh().Locality.REMOTE)

    def close(self) -> None:
        for h in (self.watch, self.token):
            if h is None:
                continue
            try:
                h.undeclare()
            except Exception:  # noqa: BLE001 - already gone with a closing session
                pass
        self.z.close()
