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
A stamped record (a Python stage's) arrives with its capture time on this machine's clock (through the
clock estimate, edgepipe.bridge.clock) and one hop of this bridge stage in place of the other pipeline's hops,
so the local report's part for the bridge stage is the other machine plus the wire; a frame header keeps the
sender's stamps. A remote end that dies is seen through its liveliness token (within ``lease_ms`` even if its machine
vanishes silently); a restarted one reconnects by itself (the explicit endpoints are retried).

The keys (every mistake in the parameters is a ConfigError before anything starts):

>>> up = BridgeStage("up", pipeline="cam", listen=["tcp/127.0.0.1:7447"])
>>> up.in_key("frames.tap"), up.in_key("imu")
('edgepipe/cam/frames', 'edgepipe/cam/imu')
>>> BridgeStage("up", pipeline="cam/x", listen=["tcp/127.0.0.1:7447"])
Traceback (most recent call last):
    ...
edgepipe.errors.ConfigError: bridge pipeline 'cam/x' cannot be a zenoh key chunk (no '*$?#/', space, or leading '_')
"""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from collections import deque
from typing import Any

from edgepipe.bridge.clock import ClockEstimate
from edgepipe.bridge.session import Checker, Session, callback, make_config
from edgepipe.bridge.wire import (
    ENVELOPE_VERSION,
    HEADER,
    KIND_END,
    KIND_PING,
    KIND_PONG,
    KIND_RECORD,
    MAGIC,
    pack,
    unpack,
)
from edgepipe.clock import now_ns
from edgepipe.errors import (
    ConfigError,
    PeerClosedError,
    RingClosedError,
    RingTimeoutError,
)
from edgepipe.frames import HDR_SIZE, REC_TYPE
from edgepipe.frames import MAGIC as FRAME_MAGIC
from edgepipe.pipeline.api import EndOfStream, PipelineStage
from edgepipe.pipeline.tap import TAP_SUFFIX
from edgepipe.pipeline.wire import (
    FLAG_REDELIVERED,
    NO_LINK,
    RECORD_HEADER,
    RECORD_HOP,
    RECORD_MAGIC,
    Hop,
    pack_record,
    unpack_record,
)

__all__ = ["BridgeStage"]

_KEY_CHUNK_BAD = set("*$?#/ ")
_WAIT_S = 0.05
_MULTI_WAIT_S = 0.001  # several inputs, nothing queued: how long one of them is waited on before all are looked at
_PING = struct.Struct("<Q")  # the asking end's nonce (send_ns carries t1)
_PONG = struct.Struct("<Qqq")  # nonce, t1, t2 (send_ns carries t3)
_WIRE_WINDOW = 4096  # wire latencies kept for the p50
_I64 = struct.Struct("<q")
_FRAME_CAP_AT = 32  # struct ep_frame_hdr: capture_ns, then publish_ns (edgepipe._image checks the offsets)
CLOCK_BURST = 8  # clock exchanges per period, each next ping sent by the pong that answers the one before
STAMPED_TYPE = 1  # a Python stage's stamped record (edgepipe.pipeline.wire; RingWriter.write's default type)
# the receiving short path: the envelope header and the stamped record's header in one parse, and the
# restamped record's header and its one hop in one pack
_ENV_REC = struct.Struct("<" + HEADER.format.lstrip("<") + RECORD_HEADER.format.lstrip("<"))
_RESTAMP_HEAD = struct.Struct("<" + RECORD_HEADER.format.lstrip("<") + RECORD_HOP.format.lstrip("<"))
_HOP_SIZE = RECORD_HOP.size
_REC_MAGIC = RECORD_MAGIC


def _chunk(what: str, value: str) -> str:
    if not value or set(value) & _KEY_CHUNK_BAD or value.startswith("_"):
        raise ConfigError(f"bridge {what} {value!r} cannot be a zenoh key chunk (no '*$?#/', space, or leading '_')")
    return value


class _Matched:
    """Whether a publisher has a subscriber on the far side now (always True for a lossy link, which
    publishes regardless and lets zenoh drop)."""

    def __init__(self, pub, lossless: bool) -> None:
        self.pub = pub
        self.now = not lossless or pub.matching_status.matching
        self.listener = pub.declare_matching_listener(callback(self._update)) if lossless else None

    def _update(self, status) -> None:
        self.now = status.matching

    def ready(self) -> bool:
        """Matched now. While not, the status is asked again each time: the listener runs on zenoh's threads,
        and a "no" that lands after a later "yes" must not hold the link back for good."""
        if not self.now:
            self.now = self.pub.matching_status.matching
        return self.now


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
        express: send each sample at once, never batched with the next ones. Off by default, also for small
            lossless records: zenoh batches only under back-pressure (a sample finding the link idle is
            sent at once either way), so express buys no latency on a link with room (measured: 1 KB at
            1 kHz across two namespaces, rec-bridge-express vs rec-bridge-batched in benchmarks/bridge.py),
            while under load it sends one frame per sample where batching would pack many: more packets
            and syscalls, less throughput, longer queues behind the burst.
        linger_s: at a clean end, wait this long for the receiver to acknowledge the end of each input.
        tls: zenoh TLS settings (``root_ca_certificate``, ``listen_certificate``, ``listen_private_key``,
            ``connect_certificate``, ``connect_private_key``, ``enable_mtls``), with ``tls/`` endpoints.
        clock_period_ms: an end with outputs pings the remote end this often to estimate the offset and drift
            between the two clocks (edgepipe.bridge.clock); 0: never (no wire latency then).
        restamp_frames: a frame record from the other machine gets its header's stamps moved onto this clock
            too: capture mapped by the clock estimate (as a stamped record's), publish = when this bridge
            writes it, so the local report's part for the bridge stage is the other machine plus the wire and
            the frames link's part is this ring alone (off: a frame header keeps the sender's stamps).
        clock_skew: ``[offset_ns, drift_ppm]`` applied to every stamp a sending end sends, its records' too (for
            tests and demos of the clock estimate: two ends on one machine then have unrelated clocks).

    Inputs:
        *: links to publish (a tapped link's side link ``<link>.tap`` publishes as ``<link>``).

    Outputs:
        *: links fed from the remote end; the port name is the remote link's name.
    """

    kind = "bridge"

    def __init__(self, name: str | None = None, *, pipeline: str = "edgepipe", remote: str = "",
                 listen: list[str] | None = None, connect: list[str] | None = None, multicast: bool = False,
                 lease_ms: int = 1000, max_bytes: int = 64 << 20, express: bool = False, linger_s: float = 2.0,
                 tls: dict[str, Any] | None = None, clock_period_ms: float = 20.0,
                 clock_skew: list[float] | None = None, restamp_frames: bool = False, **kw: Any) -> None:
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
        if clock_period_ms < 0 or (clock_skew is not None and len(clock_skew) != 2):
            raise ConfigError(f"bridge stage {name!r}: clock_period_ms must be >= 0 and clock_skew "
                              f"[offset_ns, drift_ppm], got {clock_period_ms} and {clock_skew}")
        self.clock_period_s = clock_period_ms / 1000
        off, ppm = clock_skew or (0, 0)
        self.now_of = lambda t: int(t * (1 + ppm * 1e-6) + off)
        self.now = (lambda: self.now_of(now_ns())) if clock_skew else now_ns
        self.skewed = bool(clock_skew)
        self.restamped_without_clock = 0
        self.restamp_frames = bool(restamp_frames)
        self.clock = ClockEstimate()
        self.estimate = None  # the clock estimate in use (refreshed by the pinging thread)
        self.wire_ns: deque[float] = deque(maxlen=_WIRE_WINDOW)
        self._nonce = int.from_bytes(os.urandom(8), "little")
        self._pinger: threading.Thread | None = None
        self._burst_left = 0
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
        base = link.removesuffix(TAP_SUFFIX)
        return f"edgepipe/{self.pipeline}/{base}"

    def out_key(self, port: str) -> str:
        return f"edgepipe/{self.remote}/{port}"

    # -- lifecycle -----------------------------------------------------------------------------------------
    def open(self) -> None:
        for inlet in self.inputs.values():
            if getattr(inlet, "mode", "lossless") == "latest":
                raise ConfigError(f"bridge stage {self.name!r}: link {inlet.link!r} is latest-only, which a bridge "
                                  f"cannot read; set tap = true on it and bridge {inlet.link + TAP_SUFFIX!r}")
        self.session = Session(self.pipeline, self.name, make_config(**self.config))
        for port, outlet in self.outputs.items():
            key = self.out_key(port)
            self._subs.append(self.session.subscriber(key, self._bind_output(key, outlet)))
        self._acks = [self.session.subscriber(self.in_key(i.link) + "/_ack", self._on_ack)
                      for i in self.inputs.values()]
        if self.inputs:  # answer the far ends' clock pings
            self._pong_pub = self.session.publisher(f"edgepipe/{self.pipeline}/_clock/pong", False, True)
            self._subs.append(self.session.subscriber(f"edgepipe/{self.pipeline}/_clock/ping", self._on_ping))
        if self.outputs and self.clock_period_s > 0:
            self._ping_pub = self.session.publisher(f"edgepipe/{self.remote}/_clock/ping", False, True)
            self._subs.append(self.session.subscriber(f"edgepipe/{self.remote}/_clock/pong", self._on_pong))
            self._pinger = threading.Thread(target=self._ping_loop, name=f"{self.name}-clock", daemon=True)
            self._pinger.start()

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
        now, skewed = self.now, self.skewed
        turn = 0  # with several inputs and nothing queued on any, the one waited on next (in turn)
        while live and not self.stopping:
            got = False
            one = len(live) == 1
            waits_on = None if one else live[turn % len(live)]
            for p in list(live):
                inlet, key, pub, seq, matched = p
                if not matched.ready():
                    # A lossless link with nobody subscribed on the far side: leave the records in the ring
                    # (its producer waits, the link's own rule) until a subscriber appears.
                    continue
                try:
                    # one input: wait on its ring (woken by the record); several: look at each, then wait a
                    # moment on one of them in turn (below), not a sleep that a record could not cut short
                    data = inlet.receive_raw(_WAIT_S if one else _MULTI_WAIT_S if p is waits_on else 0)
                except EndOfStream:
                    pub.put(pack(b"", seq=seq, send_ns=now(), kind=KIND_END))
                    live.remove(p)
                    continue
                if data is None:
                    continue
                type_id = inlet.end.last_type
                if skewed and type_id == STAMPED_TYPE:
                    data = self._skewed(data)
                elif skewed and type_id == REC_TYPE:
                    data = self._skewed_frame(data)
                pub.put(pack(data, seq=seq, send_ns=now(), type_id=type_id))  # first: the bookkeeping can wait
                inlet.release()
                p[3] = seq + 1
                self.published[key] += 1
                got = True
            if not got:
                turn += 1
                if not all(p[4].now for p in live):  # .now: ready() asked above; an unmatched link polls
                    time.sleep(0.001)
        if pubs and not live:  # every input ended cleanly: let the receivers say they have it all
            deadline = time.monotonic() + self.linger_s
            while len(self._acked) < len(pubs) and self.session.remotes_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        while self.outputs and not self.stopping and len(self._ended) < len(self._outs):
            time.sleep(_WAIT_S)

    def close(self) -> None:
        # the loop may have returned on its own (every input ended) with nobody calling stop(): the pinger
        # thread runs until `stopping`, so without this it pinged on for the whole join and then into the
        # closed session ("session closed" raised in the thread, and 5 s lost in every such close)
        self.stop()
        if self._pinger is not None:
            self._pinger.join(5)
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
    def _ping(self) -> None:
        self._put_clock(self._ping_pub, pack(_PING.pack(self._nonce), seq=0, send_ns=self.now(), kind=KIND_PING))

    def _put_clock(self, pub, data: bytes) -> None:
        """A ping or pong; the session closing under a burst (zenoh's "session closed") is no error then."""
        try:
            pub.put(data)
        except Exception:  # zenoh.ZError; an error only while not stopping
            if not self.stopping:
                raise

    def _ping_loop(self) -> None:
        """A burst of CLOCK_BURST exchanges every period: the first wakes zenoh's threads on both ends, the
        next ones (sent from the pong callback) find them awake, and the shortest round trips set the bound."""
        last_estimate = 0.0
        while not self.stopping and self.session is not None:
            self._burst_left = CLOCK_BURST  # a pong lost on the wire ends its burst early; the next period restarts
            self._ping()
            if time.monotonic() - last_estimate > 0.25:
                last_estimate = time.monotonic()
                self.estimate = self.clock.estimate() or self.estimate
            time.sleep(self.clock_period_s)

    def _on_ping(self, sample) -> None:
        t2 = self.now()
        try:
            env = unpack(sample.payload.to_bytes(), max_bytes=64)
        except ValueError:
            return
        if env.kind == KIND_PING and len(env.body) == _PING.size:
            (nonce,) = _PING.unpack(env.body)
            body = _PONG.pack(nonce, env.send_ns, t2)
            self._put_clock(self._pong_pub, pack(body, seq=0, send_ns=self.now(), kind=KIND_PONG))

    def _on_pong(self, sample) -> None:
        t4 = self.now()
        try:
            env = unpack(sample.payload.to_bytes(), max_bytes=64)
        except ValueError:
            return
        if env.kind == KIND_PONG and len(env.body) == _PONG.size:
            nonce, t1, t2 = _PONG.unpack(env.body)
            if nonce == self._nonce:  # an answer to another end's ping is not ours to use
                self.clock.add(t1, t2, env.send_ns, t4)
                self._burst_left -= 1
                if self._burst_left > 0 and not self.stopping:
                    self._ping()

    def _on_ack(self, sample) -> None:
        self._acked.add(str(sample.key_expr)[:-len("/_ack")])

    def _bind_output(self, key: str, outlet):
        """Output ``key`` feeds ``outlet``: its checker, and the callback for its samples (:meth:`_receiver`)."""
        self._outs[key] = outlet
        self.checkers[key] = Checker(f"{self.name} <- {key}", self.max_bytes)
        return self._receiver(key)

    def _receiver(self, key: str):
        """The sample callback of output key ``key`` (on zenoh's receiving thread, holding the GIL, while the
        consumer of the link waits for the record it carries).

        The common sample, a well-formed envelope of a stamped record, takes a short path: the envelope
        checked and the record restamped from one parse of both headers, one ``bytes`` built, written with
        a non-blocking try first, and the wire latency noted after the write. Anything else (another record
        type, an end marker, a malformed or oversize envelope, a record that is not stamped, a full ring) goes
        through :meth:`_on_sample`, which gives each its counter, drop reason and log line."""
        chk, out, max_bytes = self.checkers[key], self._outs[key], self.max_bytes
        w, stage_index, ended, wire = out.end, out.stage_index, self._ended, self.wire_ns
        now = self.now
        env_rec = _ENV_REC.unpack_from
        crc32 = zlib.crc32
        count = chk.count_raw
        restamp_head = _RESTAMP_HEAD.pack
        slow = self._on_sample

        def on_sample(sample) -> None:
            data = sample.payload.to_bytes()
            n = len(data)
            if n < _ENV_REC.size or key in ended:
                return slow(key, data)
            (magic, version, kind, _f, type_id, crc, seq, send_ns, length, _r,
             rmagic, nhops, flags, rseq, cap) = env_rec(data)
            off = _ENV_REC.size + nhops * _HOP_SIZE
            if not (magic == MAGIC and version == ENVELOPE_VERSION and kind == KIND_RECORD and length <= max_bytes
                    and length == n - HEADER.size and type_id == STAMPED_TYPE and rmagic == _REC_MAGIC
                    and n >= off):
                return slow(key, data)
            view = memoryview(data)
            if crc32(view[HEADER.size:]) != crc:
                return slow(key, data)
            count(seq, length, send_ns)
            est = self.estimate
            t = now()
            if est is not None:
                cap = int(est.to_local(cap))
            else:
                cap = t - (send_ns - cap)
                self.restamped_without_clock += 1
            body = restamp_head(_REC_MAGIC, 1, flags & FLAG_REDELIVERED, rseq, cap, stage_index, NO_LINK, 0, cap,
                                t) + view[off:]
            try:
                if not w.try_write(body, STAMPED_TYPE):  # full: the waiting or dropping path
                    self._write(out, body, STAMPED_TYPE, chk, tried=True)
            except PeerClosedError:
                chk.dropped["consumer gone"] = chk.dropped.get("consumer gone", 0) + 1
            except RingClosedError:
                chk.dropped["link closed"] = chk.dropped.get("link closed", 0) + 1
            if est is not None:  # after the write: the consumer has the record meanwhile
                wire.append(t - est.to_local(send_ns))

        return on_sample

    def _on_sample(self, key: str, data: bytes) -> None:
        """Every sample :meth:`_receiver`'s short path does not take."""
        chk = self.checkers[key]
        env = chk.check(data)
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
        if env.type_id == REC_TYPE and (len(env.body) < HDR_SIZE
                                        or int.from_bytes(env.body[:4], "little") != FRAME_MAGIC):
            chk.drop("malformed", f"a frame record of {len(env.body)} bytes without a frame header")
            return
        chk.count(env)
        est = self.estimate
        t = self.now()
        if est is not None:
            self.wire_ns.append(t - est.to_local(env.send_ns))
        if key in self._ended:
            return
        body = env.body
        if env.type_id == STAMPED_TYPE:
            body = self._restamp(body, env.send_ns, t, est, out.stage_index)
        elif env.type_id == REC_TYPE and self.restamp_frames:
            body = self._restamp_frame(body, env.send_ns, t, est)
        self._write(out, body, env.type_id, chk)

    def _restamp(self, body, send_ns: int, t: int, est, stage_index: int):
        """A stamped record from the other machine, its stamps moved onto this clock: the capture time mapped
        by the clock estimate (or, before there is one, by assuming no time on the wire: counted as
        ``restamped_without_clock``), and its remote hops (whose stage numbers are the other pipeline's)
        replaced by one hop of this bridge stage, from that capture to now. This pipeline's report then
        shows the bridge stage's part as the other machine's pipeline plus the wire."""
        rec = unpack_record(body)
        if rec is None:
            return body
        if est is not None:
            cap = int(est.to_local(rec.capture_ns))
        else:
            cap = t - (send_ns - rec.capture_ns)
            self.restamped_without_clock += 1
        flags = FLAG_REDELIVERED if rec.redelivered else 0
        return pack_record(rec.payload, rec.seq, cap, [Hop(stage_index, NO_LINK, cap, t)], flags)

    def _restamp_frame(self, body, send_ns: int, t: int, est):
        """A frame record with its header's capture stamp mapped onto this clock (as :meth:`_restamp` maps a
        stamped record's) and its publish stamp set to now (one copy of the record)."""
        out = bytearray(body)
        (cap,) = _I64.unpack_from(out, _FRAME_CAP_AT)
        if cap:
            if est is not None:
                cap = int(est.to_local(cap))
            else:
                cap = t - (send_ns - cap)
                self.restamped_without_clock += 1
            _I64.pack_into(out, _FRAME_CAP_AT, cap)
        _I64.pack_into(out, _FRAME_CAP_AT + 8, t)  # publish_ns follows capture_ns (struct ep_frame_hdr)
        return out

    def _skewed_frame(self, data: bytes) -> bytearray:
        """``clock_skew``: a frame header's capture and publish stamps as this end's skewed clock would have
        made them."""
        out = bytearray(data)
        for at in (_FRAME_CAP_AT, _FRAME_CAP_AT + 8):
            (v,) = _I64.unpack_from(out, at)
            if v:
                _I64.pack_into(out, at, self.now_of(v))
        return out

    def _skewed(self, data: bytes) -> bytes:
        """``clock_skew``: the stamps of a stamped record as this end's skewed clock would have made them."""
        rec = unpack_record(data)
        if rec is None:
            return data
        f = self.now_of
        hops = [Hop(h.stage, h.link, f(h.receive_ns), f(h.publish_ns)) for h in rec.hops]
        return pack_record(rec.payload, rec.seq, f(rec.capture_ns), hops, FLAG_REDELIVERED if rec.redelivered else 0)

    def _write(self, out, body, type_id: int, chk: Checker, tried: bool = False) -> None:
        """Write a record into output ``out``: a drop link drops it when full, a lossless one waits for room
        (holding zenoh back). ``tried``: a non-blocking write was just tried and found the ring full."""
        w = out.end
        try:
            if out.mode == "drop":
                if tried or not w.try_write(body, type_id):
                    chk.dropped["ring full"] = chk.dropped.get("ring full", 0) + 1
                return
            while True:  # lossless: hold zenoh (and through it the sender) until the ring has room
                try:
                    w.write(body, type_id, timeout_s=_WAIT_S)
                    return
                except RingTimeoutError:
                    if self.stopping:
                        chk.dropped["stopped while ring full"] = chk.dropped.get("stopped while ring full", 0) + 1
                        return
        except PeerClosedError:
            chk.dropped["consumer gone"] = chk.dropped.get("consumer gone", 0) + 1
        except RingClosedError:
            chk.dropped["link closed"] = chk.dropped.get("link closed", 0) + 1

    def clock_stats(self) -> dict[str, Any]:
        """The clock estimate (offset, drift, bound) and the wire's share of the latency (p50 of send to
        receive, on this end's clock), or why that share is unknown."""
        est = self.estimate
        if est is None:
            return {"wire": "unknown: no clock estimate yet"} if self.outputs and self.clock_period_s else {}
        bound_us = est.bound_at(self.now()) / 1e3
        out: dict[str, Any] = {"clock_offset_ms": round(est.offset_at(self.now()) / 1e6, 6),
                               "clock_drift_ppm": round(est.drift_ppm, 3), "clock_bound_us": round(bound_us, 1),
                               "clock_exchanges": self.clock.exchanges}
        w = sorted(self.wire_ns)
        if w:
            p50_us = w[len(w) // 2] / 1e3
            if bound_us < abs(p50_us):
                out["wire_p50_us"] = round(p50_us, 1)
                out["wire_bound_us"] = round(bound_us, 1)
            else:
                out["wire"] = f"unknown: clock bound +-{bound_us:.0f} us is wider than the {p50_us:.0f} us measured"
        return out

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
        out.update(self.clock_stats())
        if self.restamped_without_clock:
            out["restamped_without_clock"] = self.restamped_without_clock
        if self.session is not None:
            out["remotes_alive"] = len(self.session.remotes_alive())
            out["remote_events"] = len(self.session.remote_events)
        return out
