"""The ``bridge`` stage kind: links of this pipeline published to, or fed from, another machine over zenoh.

In a pipeline file, on the camera box (publishes its ``frames`` link's tap and its ``imu`` link)::

    [stages.up]
    kind = "bridge"
    inputs = { frames = "frames.tap", imu = "imu" }   # keys edgepipe/cam/frames and edgepipe/cam/imu
    params = { pipeline = "cam", listen = ["tcp/198.18.0.1:7447"] }

and on the server (feeds them into local links)::

    [stages.down]
    kind = "bridge"
    outputs = { frames = "frames", imu = "imu" }      # port = the remote link's name
    params = { remote = "cam", pipeline = "server", connect = ["tcp/198.18.0.1:7447"] }

Each input link ``L`` (a tap's side link ``L.tap`` counts as ``L``) is published to ``edgepipe/<pipeline>/L``;
each output port ``P`` subscribes ``edgepipe/<remote>/P``. A sample is the ring record's bytes as they are,
behind a 40-byte envelope (edgepipe.bridge.wire: type, the bridge's seq, the send time, crc32), so stamped
records keep their stamps and frames their 128-byte header. A lossless input is published reliable with
blocking congestion control, a drop input (and every tap) best effort, dropped when zenoh's queue is full; a
lossless output waits for room in its ring (which holds back zenoh, and through it the remote publisher),
a drop output drops and counts. Publishers and subscribers are restricted to remote peers (zenoh
``Locality.REMOTE``): a bridge never hears itself. A sample that is not an envelope, has another layout
version, or is over ``max_bytes`` is counted and dropped with a log line. A clean end of an input (its
producer finished) is sent as an end marker: the receiving bridge closes its output link in order, and the
sender waits up to ``linger_s`` for the receiver's acknowledgement, so nothing queued is lost at exit.
A remote end that dies is seen through its liveliness token (within ``lease_ms`` even if its machine
vanishes silently); a restarted one reconnects by itself (the explicit endpoints are retried).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edgepipe.bridge.session import Checker, Session, make_config
from edgepipe.bridge.wire import KIND_END, KIND_RECORD, pack
from edgepipe.clock import now_ns
from edgepipe.errors import ConfigError, PeerClosedError, RingClosedError, RingTimeoutError
from edgepipe.frames import HDR_SIZE, MAGIC, REC_TYPE
from edgepipe.pipeline.api import EndOfStream, PipelineStage
from edgepipe.pipeline.tap import TAP_SUFFIX

__all__ = ["BridgeStage"]

_KEY_CHUNK_BAD = set("*$?#/ ")
_WAIT_S = 0.05


def _chunk(what: str, value: str) -> str:
    if not value or set(value) & _KEY_CHUNK_BAD or value.startswith("_"):
        raise ConfigError(f"bridge {what} {value!r} cannot be a zenoh key chunk (no '*$?#/', space, or leading '_')")
    return value


class _Matched:
    """Whether a publisher has a subscriber on the far side now (always True for a lossy link, which
    publishes regardless and lets zenoh drop)."""

    def __init__(self, pub, lossless: bool) -> None:
        self.now = not lossless or pub.matching_status.matching
        self.listener = pub.declare_matching_listener(self._update) if lossless else None

    def _update(self, status) -> None:
        self.now = status.matching


class BridgeStage(PipelineStage):
    """Publish input links to another machine and feed output links from it, over zenoh (edgepipe.bridge).

    Args:
        pipeline: this end's name in the keys: inputs are published to ``edgepipe/<pipeline>/<link>``.
        remote: the other end's pipeline name: output port ``P`` subscribes ``edgepipe/<remote>/P``.
        listen: zenoh endpoints to listen on, e.g. ``["tcp/198.18.0.1:7447"]``.
        connect: zenoh endpoints to connect to (retried until the other end is up).
        multicast: also scout for peers by UDP multicast (off: containers and VPNs drop it).
        lease_ms: a remote end silent this long is gone (its records stop; ``remotes_alive`` drops it).
        max_bytes: the largest record taken from the wire; bigger ones are counted (``oversize``) and dropped.
        express: send each sample at once instead of batching (lower latency for small records, more packets).
        linger_s: at a clean end, wait this long for the receiver to acknowledge the end of each input.
        tls: zenoh TLS settings (``root_ca_certificate``, ``listen_certificate``, ``listen_private_key``,
            ``connect_certificate``, ``connect_private_key``, ``enable_mtls``), with ``tls/`` endpoints.

    Inputs:
        *: links to publish (a tapped link's side link ``<link>.tap`` publishes as ``<link>``).

    Outputs:
        *: links fed from the remote end; the port name is the remote link's name.
    """

    kind = "bridge"

    def __init__(self, name: str | None = None, *, pipeline: str = "edgepipe", remote: str = "",
                 listen: list[str] | None = None, connect: list[str] | None = None, multicast: bool = False,
                 lease_ms: int = 1000, max_bytes: int = 64 << 20, express: bool = False, linger_s: float = 2.0,
                 tls: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.pipeline = _chunk("pipeline", pipeline)
        self.remote = _chunk("remote", remote) if remote else ""
        if self.output_links and not self.remote:
            raise ConfigError(f"bridge stage {name!r} has outputs {sorted(self.output_links)} but no remote "
                              f"pipeline name to subscribe them from (params.remote)")
        for port in self.output_links:
            _chunk("output port", port)
        if max_bytes <= 0 or linger_s < 0:
            raise ConfigError(f"bridge stage {name!r}: max_bytes must be > 0 and linger_s >= 0, got "
                              f"{max_bytes} and {linger_s}")
        self.config = dict(listen=list(listen or []), connect=list(connect or []), multicast=multicast,
                           lease_ms=lease_ms, tls=dict(tls or {}))
        make_config(**self.config)  # every mistake before the stage starts
        self.max_bytes, self.express, self.linger_s = max_bytes, express, linger_s
        self.session: Session | None = None
        self.published: dict[str, int] = {}
        self.checkers: dict[str, Checker] = {}
        self._outs: dict[str, Any] = {}  # key -> the Outlet it feeds
        self._ended: set[str] = set()
        self._acked: set[str] = set()
        self._subs: list = []
        self._lock = threading.Lock()

    # -- keys ----------------------------------------------------------------------------------------------
    def in_key(self, link: str) -> str:
        base = link[:-len(TAP_SUFFIX)] if link.endswith(TAP_SUFFIX) else link
        return f"edgepipe/{self.pipeline}/{base}"

    def out_key(self, port: str) -> str:
        return f"edgepipe/{self.remote}/{port}"

    # -- lifecycle -----------------------------------------------------------------------------------------
    def open(self) -> None:
        self.session = Session(self.pipeline, self.name, make_config(**self.config))
        for port, outlet in self.outputs.items():
            key = self.out_key(port)
            self._outs[key] = outlet
            self.checkers[key] = Checker(f"{self.name} <- {key}", self.max_bytes)
            self._subs.append(self.session.subscriber(key, self._on_sample))
        self._acks = [self.session.subscriber(self.in_key(i.link) + "/_ack", self._on_ack)
                      for i in self.inputs.values()]

    def loop(self) -> None:
        pubs = []
        for inlet in self.inputs.values():
            lossless = getattr(inlet, "mode", "lossless") == "lossless" and not inlet.link.endswith(TAP_SUFFIX)
            key = self.in_key(inlet.link)
            pub = self.session.publisher(key, lossless, self.express)
            matched = _Matched(pub, lossless)
            pubs.append([inlet, key, pub, 0, matched])
            self.published[key] = 0
        live = list(pubs)
        while live and not self.stopping:
            got = False
            for p in list(live):
                inlet, key, pub, seq, matched = p
                if not matched.now:
                    # A lossless link with nobody subscribed on the far side: leave the records in the ring
                    # (its producer waits, the link's own rule) until a subscriber appears.
                    continue
                try:
                    data = inlet.receive_raw(_WAIT_S if len(live) == 1 else 0)
                except EndOfStream:
                    pub.put(pack(b"", seq=seq, send_ns=now_ns(), kind=KIND_END))
                    live.remove(p)
                    continue
                if data is None:
                    continue
                pub.put(pack(data, seq=seq, send_ns=now_ns(), type_id=inlet.end.last_type))
                inlet.release()
                p[3] = seq + 1
                self.published[key] += 1
                got = True
            if not got and (len(live) > 1 or not all(p[4].now for p in live)):
                time.sleep(0.001)
        if pubs and not live:  # every input ended cleanly: let the receivers say they have it all
            deadline = time.monotonic() + self.linger_s
            while len(self._acked) < len(pubs) and self.session.remotes_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        while self.outputs and not self.stopping and len(self._ended) < len(self._outs):
            time.sleep(_WAIT_S)

    def close(self) -> None:
        for s in (*self._subs, *getattr(self, "_acks", [])):
            try:
                s.undeclare()
            except Exception:  # noqa: BLE001 - the session may be closing already
                pass
        self._subs = []
        if self.session is not None:
            self.session.close()
            self.session = None

    # -- receiving (zenoh's threads) -----------------------------------------------------------------------
    def _on_ack(self, sample) -> None:
        self._acked.add(str(sample.key_expr)[:-len("/_ack")])

    def _on_sample(self, sample) -> None:
        key = str(sample.key_expr)
        chk = self.checkers[key]
        env = chk.check(sample.payload.to_bytes())
        if env is None:
            return
        out = self._outs[key]
        if env.kind == KIND_END:
            self._ended.add(key)
            try:
                out.close()
            except (PeerClosedError, RingClosedError):
                pass
            self.session.z.put(key + "/_ack", env.seq.to_bytes(8, "little"))
            return
        if env.kind != KIND_RECORD:
            return
        if env.type_id == REC_TYPE and (len(env.body) < HDR_SIZE or int.from_bytes(env.body[:4], "little") != MAGIC):
            chk.drop("malformed", f"a frame record of {len(env.body)} bytes without a frame header")
            return
        chk.count(env)
        if key in self._ended:
            return
        self._write(key, out, env, chk)

    def _write(self, key: str, out, env, chk: Checker) -> None:
        w = out.end
        try:
            if out.mode == "drop":
                if not w.try_write(env.body, env.type_id):
                    chk.dropped["ring full"] = chk.dropped.get("ring full", 0) + 1
                return
            while True:  # lossless: hold zenoh (and through it the sender) until the ring has room
                try:
                    w.write(env.body, env.type_id, timeout_s=_WAIT_S)
                    return
                except RingTimeoutError:
                    if self.stopping:
                        chk.dropped["stopped while ring full"] = chk.dropped.get("stopped while ring full", 0) + 1
                        return
        except PeerClosedError:
            chk.dropped["consumer gone"] = chk.dropped.get("consumer gone", 0) + 1
        except RingClosedError:
            chk.dropped["link closed"] = chk.dropped.get("link closed", 0) + 1

    def extra_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, n in self.published.items():
            out[f"published[{k}]"] = n
        for k, c in self.checkers.items():
            out[f"received[{k}]"] = c.received
            if c.lost:
                out[f"lost_on_wire[{k}]"] = c.lost
            for reason, n in c.dropped.items():
                out[f"dropped[{k}: {reason}]"] = n
        if self.session is not None:
            out["remotes_alive"] = len(self.session.remotes_alive())
            out["remote_events"] = len(self.session.remote_events)
        return out
