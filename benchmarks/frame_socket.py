"""FrameSocket small-message round trips and 1 KB one-way throughput against its peers (standalone script).

Two processes pinned to two CPUs (``--cpus``, default 0,1), every transport blocking (FrameSocket waits in
C with ppoll; the peers use blocking sockets), each case bracketed by the cache-line probe (cacheline.c,
one-way transfer between the two CPUs in ns; "near"/"far"/"mixed" beside each row).

Round trips (side A stamps ``time.perf_counter_ns()``, sends, waits for the echo, stamps again; every
round trip after a 0.3 s warm-up goes into an HdrHistogram; RTT and one-way = RTT/2 are both shown). The
message is a realistic Envelope: an ImuSample with gyro, accel and Stamps (capture, one publish stamp,
seq, source), ~90 B serialized; ``--size N`` pads ``stamps.source`` to make it N bytes instead. Its
``stamps.seq`` is a 6-byte varint, so every message has the same size. Cases:
  FrameSocket send/recv (protobuf)      set stamps.seq, ``send(env)`` / ``recv()``; B parses and
                                        re-serializes (``recv()`` then ``send()``)
  FrameSocket send_bytes/recv_bytes     the same serialized bytes, no protobuf work: framing only
  raw AF_UNIX socketpair, same bytes    the same u32 length + payload in one ``send``, ``recv`` of exactly
                                        that many bytes (the receiver knows the length): no framing logic
  AF_UNIX, protobuf + Python framing    like the TCP case, over a socketpair (isolates the transport)
  TCP 127.0.0.1, protobuf + Py framing  ``struct.pack('<I')`` + ``sendall``; recv the 4-byte header, then
                                        the payload; TCP_NODELAY; the connection made before the fork
  Client.request via Server (protobuf)  edgepipe.control.server: the Client sends the Envelope, the Server's
                                        imu_sample handler returns it, the reply comes back matched by
                                        reply_to (compare with the FrameSocket protobuf row)
Every 1024th echo is compared with what was sent (seq), so a lost or reordered message fails the case.

Throughput (``--tput-size`` bytes, default 1024; producer sends for ``--seconds``, then an in-band end
mark; msg/s = messages received / the consumer's time from the barrier to the last message; a case fails
if received != sent; the consumer checks the sequence number of every 256th message):
  FrameSocket send_bytes/recv_bytes     one frame per message
  FrameSocket send/recv (protobuf)      an Envelope padded to the same size, parsed by the consumer
  FrameSocket bytes, read-ahead off     the first row with the C reader's read-ahead disabled (header
                                        and payload each take a recvmsg, as before read-ahead existed)
  raw AF_UNIX socketpair                the same framed bytes (4 + size) in one ``sendall`` each; the
                                        consumer ``recv_into``s a 64 KiB buffer and counts bytes
  pyzmq PUSH/PULL ipc://                one ``send``/``recv`` per message, socket file in the run's temp dir
  Server.publish to a Client (protobuf) the same padded Envelope, published to one subscribed Client
                                        (compare with the FrameSocket protobuf row)

Many clients (thread-per-session server): k = 1, 4, 16 client processes, forked by side A and so sharing
its CPU, each loop Client.request against one Server on the other CPU (handler echo); total requests/s and
the RTT distribution over all clients' requests. Every 64th reply is checked to be the client's own.

    python benchmarks/frame_socket.py                      # everything, 5 s per case (~75 s)
    python benchmarks/frame_socket.py --seconds 1 --only FrameSocket,raw

Each timing loop is written out in full (see ring_latency.py for why). Every loop is bounded in count
(MAX_MSGS) and time (--seconds, and 10 s receive timeouts); run_pair kills a side that hangs.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time
from array import array

import _common as C

from edgepipe import PeerClosedError
from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
from edgepipe.control.framing import Envelope, FrameSocket
from edgepipe.control.client import Client
from edgepipe.control.server import Server

WARM_NS = 300_000_000
CHECK_MASK = 1023  # round trips: verify the echo and look at the clock every 1024
MAX_MSGS = 50_000_000  # no loop runs more often than this, whatever the clock says
RX_TIMEOUT_S = 10.0
SEQ0 = 1 << 35  # stamps.seq = SEQ0 + i: a 6-byte varint for any i < 2**41, so the size never changes
POOL = 4096
HDR = struct.Struct("<I")
FRAMING_GOAL_NS = 2000


# ---------------------------------------------------------------------------------------------------
# messages


def imu_envelope(seq: int, size: int | None) -> Envelope:
    """A realistic IMU sample; padded through stamps.source to exactly ``size`` bytes when given."""
    env = Envelope(imu_sample=pb.ImuSample(
        stamps=pb.Stamps(capture_ns=1_764_080_000_123_456_789, publish_ns=[1_764_080_000_123_501_234],
                         seq=SEQ0 + seq, source="imu0"),
        gyro=pb.Vec3(x=0.0123, y=-0.0044, z=0.0009),
        accel=pb.Vec3(x=0.113, y=-0.207, z=9.80665),
    ))
    if size is None:
        return env
    base = env.ByteSize()
    if size < base:
        raise SystemExit(f"--size {size} is below the smallest ImuSample envelope ({base} B)")
    pad = size - base
    for _ in range(8):  # the string's length varint may grow by a byte or two
        env.imu_sample.stamps.source = "imu0" + "x" * pad
        have = env.ByteSize()
        if have == size:
            return env
        pad -= have - size
        if pad < 0:
            break
    raise SystemExit(f"cannot pad an ImuSample envelope to exactly {size} B")


def env_seq(env) -> int:
    return env.imu_sample.stamps.seq - SEQ0


def env_pool(size: int | None) -> list[bytes]:
    return [imu_envelope(i, size).SerializeToString() for i in range(POOL)]


def _mismatch(i: int, what: str) -> C.EchoMismatch:
    return C.EchoMismatch(f"round trip {i}: {what}")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a blocking stream socket (b'' at a clean EOF before any byte)."""
    x = sock.recv(n)
    if len(x) == n or not x:
        return x
    parts = [x]
    have = len(x)
    for _ in range(n):  # bounded: each pass takes at least one byte
        more = sock.recv(n - have)
        if not more:
            raise EOFError("peer closed mid-message")
        parts.append(more)
        have += len(more)
        if have == n:
            return b"".join(parts)
    raise AssertionError("unreachable")


def _pair_after_start(*socks):
    def after_start():
        for s in socks:
            s.close()
    return after_start


# ---------------------------------------------------------------------------------------------------
# round trips


def fs_rt_case(size: int | None, seconds: float, proto: bool):
    def make():
        s0, s1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def ping(sync):
            s1.close()
            fs = FrameSocket(s0)
            samples = array("q")
            app = samples.append
            pc = time.perf_counter_ns
            env = imu_envelope(0, size)
            stamps = env.imu_sample.stamps
            pool = env_pool(size)
            sync()
            t_warm = pc() + WARM_NS
            t_end = t_warm + int(seconds * 1e9)
            warm_at = 0
            i = 0
            if proto:
                snd, rcv = fs.send, fs.recv
                while i < MAX_MSGS:
                    t0 = pc()
                    stamps.seq = SEQ0 + i
                    snd(env)
                    x = rcv(RX_TIMEOUT_S)
                    t1 = pc()
                    app(t1 - t0)
                    i += 1
                    if not i & CHECK_MASK:
                        if x != env:
                            raise _mismatch(i, f"sent seq {i - 1}, echo seq {env_seq(x)}")
                        if not warm_at and t1 > t_warm:
                            warm_at = len(samples)
                        if t1 > t_end:
                            break
            else:
                snd, rcv = fs.send_bytes, fs.recv_bytes
                while i < MAX_MSGS:
                    m = pool[i & 4095]
                    t0 = pc()
                    snd(m)
                    x = rcv(RX_TIMEOUT_S)
                    t1 = pc()
                    app(t1 - t0)
                    i += 1
                    if not i & CHECK_MASK:
                        if x != m:
                            raise _mismatch(i, "echo differs from what was sent")
                        if not warm_at and t1 > t_warm:
                            warm_at = len(samples)
                        if t1 > t_end:
                            break
            fs.close()
            out = C.rtt_summary(samples, warm_at, i)
            out["msg_bytes"] = env.ByteSize() if proto else len(pool[0])
            return out

        def pong(sync):
            s0.close()
            fs = FrameSocket(s1)
            sync()
            n = 0
            try:
                if proto:
                    snd, rcv = fs.send, fs.recv
                    while n < MAX_MSGS:
                        snd(rcv(RX_TIMEOUT_S))
                        n += 1
                else:
                    snd, rcv = fs.send_bytes, fs.recv_bytes
                    while n < MAX_MSGS:
                        snd(rcv(RX_TIMEOUT_S))
                        n += 1
            except PeerClosedError:
                pass
            fs.close()
            return {"echoed": n}

        return C.Sides(ping, pong, None, _pair_after_start(s0, s1))

    return make


def raw_rt_case(size: int | None, seconds: float):
    """The same framed bytes FrameSocket puts on the wire, sent and received with plain socket calls."""

    def make():
        s0, s1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def ping(sync):
            s1.close()
            pool = [HDR.pack(len(p)) + p for p in env_pool(size)]
            n = len(pool[0])
            snd, rcv = s0.send, s0.recv
            samples = array("q")
            app = samples.append
            pc = time.perf_counter_ns
            s0.settimeout(RX_TIMEOUT_S)
            sync()
            t_warm = pc() + WARM_NS
            t_end = t_warm + int(seconds * 1e9)
            warm_at = 0
            i = 0
            while i < MAX_MSGS:
                m = pool[i & 4095]
                t0 = pc()
                snd(m)
                x = rcv(n)
                if len(x) != n:
                    x += _recv_exact(s0, n - len(x))
                t1 = pc()
                app(t1 - t0)
                i += 1
                if not i & CHECK_MASK:
                    if x != m:
                        raise _mismatch(i, "echo differs from what was sent")
                    if not warm_at and t1 > t_warm:
                        warm_at = len(samples)
                    if t1 > t_end:
                        break
            s0.close()
            out = C.rtt_summary(samples, warm_at, i)
            out["msg_bytes"] = n - HDR.size
            return out

        def pong(sync):
            s0.close()
            n = HDR.size + len(imu_envelope(0, size).SerializeToString())
            snd, rcv = s1.send, s1.recv
            s1.settimeout(RX_TIMEOUT_S)
            sync()
            k = 0
            while k < MAX_MSGS:
                x = rcv(n)
                if len(x) != n:
                    if not x:
                        break  # the pinger closed
                    x += _recv_exact(s1, n - len(x))
                snd(x)
                k += 1
            s1.close()
            return {"echoed": k}

        return C.Sides(ping, pong, None, _pair_after_start(s0, s1))

    return make


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1 (ephemeral port; the listener is closed at once)."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        c = socket.create_connection(lst.getsockname(), timeout=5.0)
        lst.settimeout(5.0)
        s, _ = lst.accept()
    finally:
        lst.close()
    for x in (c, s):
        x.settimeout(None)
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c, s


def pyframe_rt_case(size: int | None, seconds: float, tcp: bool):
    """Protobuf Envelopes with the u32 length prefix done in Python, over TCP loopback or a socketpair."""

    def make():
        s0, s1 = _tcp_pair() if tcp else socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def ping(sync):
            s1.close()
            s0.settimeout(RX_TIMEOUT_S)
            sendall, rcv = s0.sendall, s0.recv
            pack, unpack = HDR.pack, HDR.unpack
            env = imu_envelope(0, size)
            stamps = env.imu_sample.stamps
            samples = array("q")
            app = samples.append
            pc = time.perf_counter_ns
            sync()
            t_warm = pc() + WARM_NS
            t_end = t_warm + int(seconds * 1e9)
            warm_at = 0
            i = 0
            while i < MAX_MSGS:
                t0 = pc()
                stamps.seq = SEQ0 + i
                p = env.SerializeToString()
                sendall(pack(len(p)) + p)
                h = rcv(4)
                if len(h) != 4:
                    h += _recv_exact(s0, 4 - len(h))
                (n,) = unpack(h)
                d = rcv(n)
                if len(d) != n:
                    d += _recv_exact(s0, n - len(d))
                x = Envelope.FromString(d)
                t1 = pc()
                app(t1 - t0)
                i += 1
                if not i & CHECK_MASK:
                    if x != env:
                        raise _mismatch(i, f"sent seq {i - 1}, echo seq {env_seq(x)}")
                    if not warm_at and t1 > t_warm:
                        warm_at = len(samples)
                    if t1 > t_end:
                        break
            s0.close()
            out = C.rtt_summary(samples, warm_at, i)
            out["msg_bytes"] = env.ByteSize()
            return out

        def pong(sync):
            s0.close()
            s1.settimeout(RX_TIMEOUT_S)
            sendall, rcv = s1.sendall, s1.recv
            pack, unpack = HDR.pack, HDR.unpack
            sync()
            k = 0
            while k < MAX_MSGS:
                h = rcv(4)
                if len(h) != 4:
                    if not h:
                        break
                    h += _recv_exact(s1, 4 - len(h))
                (n,) = unpack(h)
                d = rcv(n)
                if len(d) != n:
                    d += _recv_exact(s1, n - len(d))
                x = Envelope.FromString(d)
                p = x.SerializeToString()
                sendall(pack(len(p)) + p)
                k += 1
            s1.close()
            return {"echoed": k}

        return C.Sides(ping, pong, None, _pair_after_start(s0, s1))

    return make


# ---------------------------------------------------------------------------------------------------
# throughput


def _done(n: int, t0: float, c0: float) -> dict:
    """The consumer's result: messages, wall time, and its own CPU time (all its threads) since c0."""
    return {"received": n, "elapsed_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def fs_tput_case(size: int, seconds: float, proto: bool, read_ahead: bool = True):
    """One frame per message; an empty frame (a Stop Envelope in the protobuf case) ends the run.
    ``read_ahead=False`` turns the C reader's read-ahead off (two recvmsg calls per frame, as before it)."""

    def make():
        s0, s1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def producer(sync):
            s1.close()
            fs = FrameSocket(s0)
            pool = C.seq_pool(size, POOL)
            snd = fs.send_bytes
            if proto:
                env = imu_envelope(0, size)
                stamps = env.imu_sample.stamps
                snd = fs.send
            pc = time.perf_counter
            sync()
            t_end = pc() + seconds
            i = 0
            if proto:
                while i < MAX_MSGS:
                    stamps.seq = SEQ0 + i
                    snd(env, 30.0)
                    i += 1
                    if not i & 1023 and pc() > t_end:
                        break
            else:
                while i < MAX_MSGS:
                    snd(pool[i & 4095], 30.0)
                    i += 1
                    if not i & 1023 and pc() > t_end:
                        break
            if proto:
                fs.send(Envelope(stop=pb.Stop()), 30.0)
            else:
                fs.send_bytes(b"", 30.0)
            fs.close()
            return {"sent": i}

        def consumer(sync):
            s0.close()
            fs = FrameSocket(s1)
            if not read_ahead:
                fs._rx.ra_cap = 0
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            n = 0
            if proto:
                rcv = fs.recv
                while n < MAX_MSGS + 1:
                    e = rcv(RX_TIMEOUT_S)
                    if e.WhichOneof("body") != "imu_sample":
                        break  # the Stop envelope
                    if not n & 255 and env_seq(e) != n:
                        raise AssertionError(f"message {n} carries seq {env_seq(e)}")
                    n += 1
            else:
                rcv = fs.recv_bytes
                while n < MAX_MSGS + 1:
                    x = rcv(RX_TIMEOUT_S)
                    if not x:
                        break
                    if not n & 255 and int.from_bytes(x[:8], "little") != n % POOL:
                        raise AssertionError(f"message {n} carries seq {int.from_bytes(x[:8], 'little')}")
                    n += 1
            out = _done(n, t0, c0)
            fs.close()
            return out

        return C.Sides(producer, consumer, None, _pair_after_start(s0, s1))

    return make


def raw_tput_case(size: int, seconds: float):
    """The same framed bytes as FrameSocket (u32 length + payload), one sendall each; the consumer
    recv_into()s 64 KiB at a time and checks the seq of the first whole message in every chunk."""

    def make():
        s0, s1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        frame = HDR.size + size

        def producer(sync):
            s1.close()
            pool = [HDR.pack(size) + p for p in C.seq_pool(size, POOL)]
            s0.settimeout(30.0)
            snd = s0.sendall
            pc = time.perf_counter
            sync()
            t_end = pc() + seconds
            i = 0
            while i < MAX_MSGS:
                snd(pool[i & 4095])
                i += 1
                if not i & 1023 and pc() > t_end:
                    break
            s0.close()
            return {"sent": i}

        def consumer(sync):
            s0.close()
            s1.settimeout(RX_TIMEOUT_S)
            buf = bytearray(1 << 16)
            mv = memoryview(buf)
            rin = s1.recv_into
            total = 0
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(MAX_MSGS * 2):
                k = rin(buf)
                if not k:
                    break
                off = -total % frame  # where the first message that starts in this chunk starts
                if off + 12 <= k:
                    idx = (total + off) // frame
                    hdr = int.from_bytes(mv[off:off + 4], "little")
                    seq = int.from_bytes(mv[off + 4:off + 12], "little")
                    if hdr != size or seq != idx % POOL:
                        raise AssertionError(f"message {idx}: length {hdr}, seq {seq}")
                total += k
            if total % frame:
                raise AssertionError(f"{total} bytes is not a whole number of {frame}-byte frames")
            out = _done(total // frame, t0, c0)
            mv.release()
            s1.close()
            return out

        return C.Sides(producer, consumer, None, _pair_after_start(s0, s1))

    return make


def zmq_tput_case(size: int, seconds: float):
    """pyzmq PUSH/PULL over ipc:// in the run's temp dir, default HWM (PUSH blocks when full, nothing is
    dropped); an empty message ends the run. Contexts are made in the children (zmq does not survive fork)."""

    def make():
        pipe = C.ZmqPushPull("zmq-fs", send_timeout_ms=30_000, recv_timeout_ms=int(RX_TIMEOUT_S * 1000))

        def producer(sync):
            ctx, s = pipe.push()
            sync()  # 1: bound
            sync()  # 2: the consumer connected
            pool = C.seq_pool(size, POOL)
            snd = s.send
            pc = time.perf_counter
            t_end = pc() + seconds
            i = 0
            while i < MAX_MSGS:
                snd(pool[i & 4095])
                i += 1
                if not i & 1023 and pc() > t_end:
                    break
            snd(b"")
            s.close()
            ctx.term()
            return {"sent": i}

        def consumer(sync):
            ctx, s = pipe.pull()
            sync()  # 1
            s.connect(pipe.endpoint)
            rcv = s.recv
            time.sleep(0.05)  # the pipe is up before the clock starts
            sync()  # 2
            n = 0
            t0, c0 = time.perf_counter(), time.process_time()
            while n < MAX_MSGS + 1:
                x = rcv()
                if not x:
                    break
                if not n & 255 and int.from_bytes(x[:8], "little") != n % POOL:
                    raise AssertionError(f"message {n} carries seq {int.from_bytes(x[:8], 'little')}")
                n += 1
            out = _done(n, t0, c0)
            s.close()
            ctx.term()
            return out

        return C.Sides(producer, consumer, pipe.cleanup)

    return make


# ---------------------------------------------------------------------------------------------------
# through the control-plane server (edgepipe.control.server)


def _server_path(tag: str):
    d = C.tmpdir() / f"srv-{tag}-{time.monotonic_ns() % 1_000_000}"
    d.mkdir(mode=0o700)
    return d / "ctl.sock"


def _serve_until_client_leaves(srv, sync, timeout_s: float) -> None:
    sync()  # the server listens
    deadline = time.monotonic() + timeout_s
    while not srv.counters["disconnected"] and time.monotonic() < deadline:
        time.sleep(0.01)


def srv_rt_case(size: int | None, seconds: float):
    """Client.request through a Server whose imu_sample handler returns the message (an echo): the same
    Envelope as the FrameSocket protobuf row, plus the server's dispatch, reply_to and seq handling."""

    def make():
        path = _server_path("rt")

        def ping(sync):
            sync()
            c = Client.connect(path, stage="bench", role="stage")
            env = imu_envelope(0, size)
            stamps = env.imu_sample.stamps
            samples = array("q")
            app = samples.append
            pc = time.perf_counter_ns
            req = c.request
            t_warm = pc() + WARM_NS
            t_end = t_warm + int(seconds * 1e9)
            warm_at = 0
            i = 0
            while i < MAX_MSGS:
                t0 = pc()
                stamps.seq = SEQ0 + i
                x = req(env, RX_TIMEOUT_S)
                t1 = pc()
                app(t1 - t0)
                i += 1
                if not i & CHECK_MASK:
                    if x.imu_sample != env.imu_sample:
                        raise _mismatch(i, f"sent seq {i - 1}, echo seq {env_seq(x)}")
                    if not warm_at and t1 > t_warm:
                        warm_at = len(samples)
                    if t1 > t_end:
                        break
            c.close()
            out = C.rtt_summary(samples, warm_at, i)
            out["msg_bytes"] = env.ByteSize()
            return out

        def pong(sync):
            calls = [0]

            def echo(session, env):
                calls[0] += 1
                return env

            with Server(path) as srv:
                srv.on("imu_sample", echo)
                _serve_until_client_leaves(srv, sync, seconds + 60)
            return {"echoed": calls[0]}

        return C.Sides(ping, pong)

    return make


def srv_tput_case(size: int, seconds: float):
    """Server.publish of padded ImuSample Envelopes to one subscribed Client (serialized once, per-session
    seq appended); a Stop ends the run."""

    def make():
        path = _server_path("tp")

        def producer(sync):
            with Server(path, send_timeout_s=RX_TIMEOUT_S) as srv:
                sync()  # 1: listening
                srv.wait_session("bench", timeout_s=30)
                sync()  # 2: subscribed
                env = imu_envelope(0, size)
                stamps = env.imu_sample.stamps
                pub = srv.publish
                pc = time.perf_counter
                t_end = pc() + seconds
                i = 0
                while i < MAX_MSGS:
                    stamps.seq = SEQ0 + i
                    if pub(env) != 1:
                        raise AssertionError(f"message {i} reached no subscriber")
                    i += 1
                    if not i & 1023 and pc() > t_end:
                        break
                srv.publish(Envelope(stop=pb.Stop(reason="done")))
                _serve_until_client_leaves(srv, lambda: None, 60)
            return {"sent": i}

        def consumer(sync):
            sync()  # 1
            c = Client.connect(path, stage="bench", subscribe=["imu_sample", "stop"])
            rcv = c.recv
            sync()  # 2
            n = 0
            t0, c0 = time.perf_counter(), time.process_time()
            while n < MAX_MSGS + 1:
                x = rcv(RX_TIMEOUT_S)
                if x.HasField("stop"):
                    break
                if not n & 255 and env_seq(x) != n:
                    raise AssertionError(f"message {n} carries seq {env_seq(x)}")
                n += 1
            out = _done(n, t0, c0)
            c.close()
            return out

        return C.Sides(producer, consumer)

    return make


def srv_many_case(k: int, size: int | None, seconds: float):
    """k client processes (forked by side A, so all on its CPU) each run Client.request in a loop against
    one Server (side B, its own CPU: one thread per session); total requests/s and each client's RTT."""

    def make():
        path = _server_path(f"m{k}")

        def clients(sync):
            sync()
            t_start = time.monotonic() + 0.3  # every client connected before the clock starts
            pipes = []
            for j in range(k):
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:  # a client: no harness machinery from here on, only os._exit
                    code = 1
                    try:
                        os.close(r)
                        c = Client.connect(path, stage=f"c{j}")
                        env = imu_envelope(j, size)
                        req, pc = c.request, time.perf_counter_ns
                        samples = array("q")
                        while time.monotonic() < t_start:
                            time.sleep(0.001)
                        t_end = pc() + int(seconds * 1e9)
                        i = 0
                        while i < MAX_MSGS:
                            t0 = pc()
                            x = req(env, RX_TIMEOUT_S)
                            t1 = pc()
                            samples.append(t1 - t0)
                            i += 1
                            if not i & 63:
                                if x.imu_sample != env.imu_sample:
                                    raise _mismatch(i, "a reply to another client's request")
                                if t1 > t_end:
                                    break
                        c.close()
                        os.write(w, samples.tobytes())
                        code = 0
                    finally:
                        os._exit(code)
                os.close(w)
                pipes.append((pid, r))
            rtts = array("q")
            for pid, r in pipes:
                with os.fdopen(r, "rb") as f:
                    rtts.frombytes(f.read())
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise RuntimeError(f"a client process failed (status {status})")
            out = C.percentiles(rtts, halve=False)
            out["round_trips"] = len(rtts)
            out["req_per_s"] = len(rtts) / seconds
            out["clients"] = k
            return out

        def server(sync):
            calls = [0]

            def echo(session, env):
                calls[0] += 1
                return env

            with Server(path) as srv:
                srv.on("imu_sample", echo)
                sync()
                deadline = time.monotonic() + seconds + 60
                while srv.counters["disconnected"] < k and time.monotonic() < deadline:
                    time.sleep(0.01)
            return {"echoed": calls[0]}

        return C.Sides(clients, server)

    return make


# ---------------------------------------------------------------------------------------------------
# driver

RT_FS_PROTO = "rt FrameSocket send/recv (protobuf)"
RT_FS_BYTES = "rt FrameSocket send_bytes/recv_bytes"
RT_RAW = "rt raw AF_UNIX socketpair, same bytes"
RT_UDS_PY = "rt AF_UNIX protobuf + Python framing"
RT_TCP_PY = "rt TCP 127.0.0.1 protobuf + Python framing"
TP_FS_BYTES = "tput FrameSocket send_bytes/recv_bytes"
TP_FS_NORA = "tput FrameSocket bytes, read-ahead off"
TP_FS_PROTO = "tput FrameSocket send/recv (protobuf)"
TP_RAW = "tput raw AF_UNIX socketpair"
TP_ZMQ = "tput pyzmq PUSH/PULL ipc://"
RT_SRV = "rt Client.request via Server (protobuf)"
TP_SRV = "tput Server.publish to a Client (protobuf)"
MANY = "clients via one Server: "


def build_cases(args) -> list[C.Case]:
    s, sec, ts = args.size, args.seconds, args.tput_size
    E, P = True, False
    # The rows a comparison uses run back to back, so both most likely see the same core pair.
    return [
        C.Case(RT_FS_BYTES, "round trip", E, fs_rt_case(s, sec, proto=False)),
        C.Case(RT_RAW, "round trip", P, raw_rt_case(s, sec)),
        C.Case(RT_FS_PROTO, "round trip", E, fs_rt_case(s, sec, proto=True)),
        C.Case(RT_UDS_PY, "round trip", P, pyframe_rt_case(s, sec, tcp=False)),
        C.Case(RT_TCP_PY, "round trip", P, pyframe_rt_case(s, sec, tcp=True)),
        C.Case(TP_FS_BYTES, "throughput", E, fs_tput_case(ts, sec, proto=False)),
        C.Case(TP_RAW, "throughput", P, raw_tput_case(ts, sec)),
        C.Case(TP_FS_NORA, "throughput", E, fs_tput_case(ts, sec, proto=False, read_ahead=False)),
        C.Case(TP_FS_PROTO, "throughput", E, fs_tput_case(ts, sec, proto=True)),
        C.Case(TP_ZMQ, "throughput", P, zmq_tput_case(ts, sec)),
        C.Case(RT_SRV, "round trip", E, srv_rt_case(s, sec)),
        C.Case(TP_SRV, "throughput", E, srv_tput_case(ts, sec)),
    ] + [C.Case(f"{MANY}{k}", "many clients", E, srv_many_case(k, s, sec)) for k in (1, 4, 16)]


def measure(case: C.Case, a: dict, b: dict) -> dict:
    if case.group == "throughput":
        sent, got = a["sent"], b["received"]
        if sent != got:
            raise RuntimeError(f"lost messages: sent {sent}, received {got}")
        return {"msgs": got, "elapsed_s": b["elapsed_s"], "msgs_per_s": got / b["elapsed_s"],
                "cpu_ns_per_msg": 1e9 * b["cpu_s"] / max(got, 1)}
    if b["echoed"] != a["round_trips"]:
        raise RuntimeError(f"side A did {a['round_trips']} round trips, side B echoed {b['echoed']}")
    return dict(a)


def _us(v) -> str:
    return "" if v is None else f"{v / 1000:,.2f}"


def _rate(v: float) -> str:
    return f"{v / 1e6:.3g} M" if v >= 1e6 else f"{v / 1e3:.3g} k"


def report(rows: list[dict]) -> dict:
    by = {r["case"]: r for r in rows if r["ok"]}
    raw = by.get(RT_RAW)
    rt_rows = []
    for r in rows:
        if r["group"] != "round trip":
            continue
        if not r["ok"]:
            rt_rows.append([r["case"], "FAILED: " + r["error"].splitlines()[0][:70]] + [""] * 10)
            continue
        ratio = f"{r['p50_ns'] / raw['p50_ns']:.2f}x" if raw else "n/a"
        rt_rows.append([r["case"][3:], r["msg_bytes"], _us(2 * r["p50_ns"]), _us(2 * r["p99_ns"]),
                        _us(2 * r["p999_ns"]), _us(r["p50_ns"]), _us(r["p99_ns"]), _us(r["p999_ns"]), ratio,
                        f"{r['n']:,}", f"{r['probe_before_ns']:.0f}/{r['probe_after_ns']:.0f}"
                        if r["probe_before_ns"] and r["probe_after_ns"] else "?", r["pair"]])
    print("\nround trips, us (RTT and one-way = RTT/2); ratio = one-way p50 / raw AF_UNIX one-way p50")
    print(C.table(["case", "bytes", "RTT p50", "RTT p99", "RTT p99.9", "1-way p50", "1-way p99", "1-way p99.9",
                   "vs raw", "samples", "probe ns", "pair"], rt_rows))
    tp = [r for r in rows if r["group"] == "throughput"]
    rawt, zmqt = by.get(TP_RAW), by.get(TP_ZMQ)
    tp_rows = []
    for r in tp:
        if not r["ok"]:
            tp_rows.append([r["case"], "FAILED: " + r["error"].splitlines()[0][:70]] + [""] * 6)
            continue
        tp_rows.append([r["case"][5:], _rate(r["msgs_per_s"]),
                        f"{r['msgs_per_s'] / rawt['msgs_per_s']:.2f}x" if rawt else "n/a",
                        f"{r['msgs_per_s'] / zmqt['msgs_per_s']:.2f}x" if zmqt else "n/a",
                        f"{r['cpu_ns_per_msg'] / 1000:.2f}", f"{r['msgs']:,}",
                        f"{r['probe_before_ns']:.0f}/{r['probe_after_ns']:.0f}"
                        if r["probe_before_ns"] and r["probe_after_ns"] else "?", r["pair"]])
    many = [r for r in rows if r["group"] == "many clients"]
    if many:
        print("\nmany clients, one Server (thread per session): Client.request loops from k processes on side A's "
              "CPU, server on the other; RTT per request, us")
        print(C.table(["clients", "requests/s (all)", "RTT p50", "RTT p99", "RTT p99.9", "requests"], [
            [r["case"][len(MANY):], _rate(r["req_per_s"]), _us(r["p50_ns"]), _us(r["p99_ns"]), _us(r["p999_ns"]),
             f"{r['round_trips']:,}"] if r["ok"] else [r["case"][len(MANY):], "FAILED: " + r["error"].splitlines()[0][:70]]
            + [""] * 4 for r in many]))
    print("\none-way throughput, msg/s (every message counted); consumer CPU = the receiving process's CPU time "
          "per message (all its threads: pyzmq's I/O thread too), steadier than msg/s on a busy machine")
    print(C.table(["case", "msg/s", "vs raw AF_UNIX", "vs pyzmq", "consumer CPU us/msg", "messages", "probe ns",
                   "pair"], tp_rows))
    return goals(by)


def goals(by: dict) -> dict:
    out = C.Goals("goals (issue 5)")
    line = out.line
    fsb, raw, fsp = by.get(RT_FS_BYTES), by.get(RT_RAW), by.get(RT_FS_PROTO)
    if fsb and raw:
        d = fsb["p50_ns"] - raw["p50_ns"]
        line("framing overhead <= 2 us p50 (FrameSocket send_bytes/recv_bytes vs raw AF_UNIX, per one-way message)",
             d <= FRAMING_GOAL_NS,
             f"{d / 1000:+.2f} us ({_us(fsb['p50_ns'])} vs {_us(raw['p50_ns'])} us one-way; RTT "
             f"{2 * d / 1000:+.2f} us) [probes: {fsb['pair']} / {raw['pair']}]")
    else:
        line("framing overhead <= 2 us p50", None, "a case is missing")
    print("\nfor information (no goal set)")
    if fsp and raw:
        d = fsp["p50_ns"] - raw["p50_ns"]
        print(f"  FrameSocket with protobuf (serialize + parse both ends) vs raw bytes: {d / 1000:+.2f} us "
              f"one-way p50")
    fra, fno = by.get(TP_FS_BYTES), by.get(TP_FS_NORA)
    if fra and fno:
        print(f"  receive read-ahead on vs off, FrameSocket bytes one way: {fra['msgs_per_s'] / fno['msgs_per_s']:.2f}x "
              f"({_rate(fra['msgs_per_s'])} vs {_rate(fno['msgs_per_s'])} msg/s); consumer CPU "
              f"{fra['cpu_ns_per_msg'] / 1000:.2f} vs {fno['cpu_ns_per_msg'] / 1000:.2f} us/msg")
    srt, stp, ftp = by.get(RT_SRV), by.get(TP_SRV), by.get(TP_FS_PROTO)
    if srt and fsp:
        print(f"  through the Server (Client.request, handler echo) vs FrameSocket protobuf direct: "
              f"{(srt['p50_ns'] - fsp['p50_ns']) / 1000:+.2f} us one-way p50 ({_us(srt['p50_ns'])} vs "
              f"{_us(fsp['p50_ns'])} us)")
    if stp and ftp:
        print(f"  Server.publish to one Client vs FrameSocket protobuf one way: "
              f"{stp['msgs_per_s'] / ftp['msgs_per_s']:.2f}x ({_rate(stp['msgs_per_s'])} vs "
              f"{_rate(ftp['msgs_per_s'])} msg/s)")
    tcp, uds = by.get(RT_TCP_PY), by.get(RT_UDS_PY)
    if tcp and fsp:
        print(f"  TCP/UDS p99 ratio (seed document: 47/14 = 3.36x on a Pi 5), one-way: TCP Python-framed "
              f"{_us(tcp['p99_ns'])} us / FrameSocket {_us(fsp['p99_ns'])} us = {tcp['p99_ns'] / fsp['p99_ns']:.2f}x; "
              f"p50 {tcp['p50_ns'] / fsp['p50_ns']:.2f}x")
    if tcp and uds:
        print(f"  same Python framing over both, one-way: TCP p99 {_us(tcp['p99_ns'])} / AF_UNIX p99 "
              f"{_us(uds['p99_ns'])} us = {tcp['p99_ns'] / uds['p99_ns']:.2f}x; p50 "
              f"{tcp['p50_ns'] / uds['p50_ns']:.2f}x")
    return out


def parse_args() -> argparse.Namespace:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tput-size", type=int, default=1024, help="throughput message bytes (>= 64)")

    a = C.parse_args(__doc__.splitlines()[0], default_seconds=5.0, extra=extra, size_default=None,
                     size_help="round-trip Envelope bytes (default: a realistic ImuSample, ~90 B)")
    if a.tput_size < 64:
        raise SystemExit(f"--tput-size must be >= 64 (an ImuSample envelope must fit), got {a.tput_size}")
    return a


def main() -> None:
    args = parse_args()
    rt_bytes = imu_envelope(0, args.size).ByteSize()
    imu_envelope(0, args.tput_size)  # fails early if it cannot be padded
    shown = argparse.Namespace(**vars(args))
    shown.size = f"{rt_bytes} (round trip{'' if args.size else ', ImuSample default'}) / {args.tput_size} (throughput)"
    env = C.print_header("edgepipe FrameSocket: round trips and one-way throughput between two pinned processes",
                         shown)
    C.run_and_report(args, env, build_cases(args), measure, report)


if __name__ == "__main__":
    main()
