"""edgepipe.control.framing: length-prefixed frames over AF_UNIX stream sockets (csrc/ep_frame.c) and FrameSocket."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe import (
    Envelope,
    FrameClosedError,
    FrameDecodeError,
    FrameError,
    FrameSocket,
    FrameStalledError,
    FrameTimeoutError,
    FrameTooLargeError,
    PeerClosedError,
    Ring,
    UnknownBodyError,
)
from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
from edgepipe.control.framing import MAX_FDS, READ_AHEAD


@pytest.fixture
def pair():
    a, b = FrameSocket.pair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def raw_pair():
    """A FrameSocket and the raw socket at its other end, to write arbitrary bytes."""
    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fs = FrameSocket(s1)
    yield fs, s2
    fs.close()
    s2.close()


def _frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def _in_thread(fn, *args):
    """Run fn in a thread; return a join() that re-raises its exception and returns its result."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 (handed to the test thread)
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(30)
        assert not t.is_alive(), "helper thread hung"
        if "error" in box:
            raise box["error"]
        return box.get("result")

    return join


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class TestRoundTrip:
    @pytest.mark.parametrize("size", [0, 1, 4, 4095, 65536, 65537])
    def test_bytes_round_trip(self, pair, size):
        """A payload of any size up to the socket buffer comes back byte for byte."""
        a, b = pair
        data = os.urandom(size)
        a.send_bytes(data)
        assert b.recv_bytes(timeout_s=5) == data

    def test_max_size_frame_round_trips(self):
        """A payload of exactly max_frame bytes is accepted (sent from a thread: it outgrows the socket buffer)."""
        a, b = FrameSocket.pair(max_frame=3 << 20)
        with a, b:
            data = os.urandom(3 << 20)
            join = _in_thread(a.send_bytes, data)
            assert b.recv_bytes(timeout_s=30) == data
            join()

    def test_frames_keep_their_boundaries(self, pair):
        """Back-to-back frames of different sizes arrive as the same frames, in order."""
        a, b = pair
        frames = [b"", b"x", b"yz" * 1000, b"", os.urandom(3000)]
        for f in frames:
            a.send_bytes(f)
        assert [b.recv_bytes(timeout_s=5) for _ in frames] == frames

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(frames=st.lists(st.binary(max_size=5000), max_size=8))
    def test_random_frames_round_trip(self, pair, frames):
        """Any sequence of random payloads arrives intact and in order."""
        a, b = pair
        for f in frames:
            a.send_bytes(f)
        assert [b.recv_bytes(timeout_s=5) for _ in frames] == frames

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(stage=st.text(max_size=50), pid=st.integers(0, 2**31 - 1), seq=st.integers(0, 2**64 - 1))
    def test_random_envelopes_round_trip(self, pair, stage, pid, seq):
        """An Envelope sent with send() comes back equal from recv()."""
        a, b = pair
        env = Envelope(seq=seq, hello=pb.Hello(protocol_major=1, stage_name=stage, pid=pid))
        a.send(env)
        assert b.recv(timeout_s=5) == env

    def test_wire_format_is_le32_length_then_bytes(self, raw_pair):
        """What send_bytes writes is exactly a little-endian u32 length and the payload, and recv_bytes
        reads frames a foreign writer produced the same way."""
        fs, raw = raw_pair
        fs.send_bytes(b"abc")
        assert raw.recv(16) == b"\x03\x00\x00\x00abc"
        raw.sendall(_frame(b"hello") + _frame(b""))
        assert fs.recv_bytes(timeout_s=5) == b"hello"
        assert fs.recv_bytes(timeout_s=5) == b""

    def test_frame_split_into_single_bytes(self, raw_pair):
        """A frame that trickles in one byte at a time (short reads) is reassembled."""
        fs, raw = raw_pair
        wire = _frame(b"trickle")

        def trickle():
            for i in range(len(wire)):
                raw.send(wire[i : i + 1])
                time.sleep(0.001)

        join = _in_thread(trickle)
        assert fs.recv_bytes(timeout_s=10) == b"trickle"
        join()


class TestShortWrites:
    def test_tiny_send_buffer(self):
        """With SO_SNDBUF and SO_RCVBUF at their minimum, a 1 MiB frame still goes through whole."""
        s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (s1, s2):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        with FrameSocket(s1) as a, FrameSocket(s2) as b:
            data = os.urandom(1 << 20)
            join = _in_thread(a.send_bytes, data)
            assert b.recv_bytes(timeout_s=30) == data
            join()

    def test_nonblocking_socket_still_sends_whole_frames(self):
        """A socket the caller left in non-blocking mode still gets whole frames (C waits with poll)."""
        s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        s1.setblocking(False)
        s2.setblocking(False)
        with FrameSocket(s1) as a, FrameSocket(s2) as b:
            data = os.urandom(2 << 20)
            join = _in_thread(a.send_bytes, data)
            assert b.recv_bytes(timeout_s=30) == data
            join()


class TestSignals:
    def test_signal_during_blocked_recv_runs_handler_then_resumes(self, pair):
        """A signal arriving while recv is blocked runs its Python handler, and recv then returns the frame
        that handler sent."""
        a, b = pair
        ran = []

        def handler(signum, frame):
            ran.append(signum)
            a.send_bytes(b"sent by the handler")

        old = signal.signal(signal.SIGUSR1, handler)
        try:
            main = threading.get_ident()
            join = _in_thread(lambda: (time.sleep(0.2), signal.pthread_kill(main, signal.SIGUSR1)))
            assert b.recv_bytes(timeout_s=30) == b"sent by the handler"
            join()
        finally:
            signal.signal(signal.SIGUSR1, old)
        assert ran == [signal.SIGUSR1]

    def test_exception_from_handler_mid_frame_keeps_the_frame(self, raw_pair):
        """A handler that raises (Ctrl-C) while recv waits mid-frame interrupts it; the next recv finishes the
        same frame with nothing lost."""
        fs, raw = raw_pair
        wire = _frame(b"0123456789")
        raw.sendall(wire[:7])  # header and 3 payload bytes

        def handler(signum, frame):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGUSR1, handler)
        try:
            main = threading.get_ident()
            join = _in_thread(lambda: (time.sleep(0.2), signal.pthread_kill(main, signal.SIGUSR1)))
            with pytest.raises(KeyboardInterrupt):
                fs.recv_bytes(timeout_s=30)
            join()
        finally:
            signal.signal(signal.SIGUSR1, old)
        raw.sendall(wire[7:])
        assert fs.recv_bytes(timeout_s=5) == b"0123456789"

    def test_close_from_signal_handler_during_recv(self, pair):
        """A handler that closes the socket its own thread is blocked on ends that recv with FrameClosedError."""
        a, b = pair

        def handler(signum, frame):
            b.close()

        old = signal.signal(signal.SIGUSR1, handler)
        try:
            main = threading.get_ident()
            join = _in_thread(lambda: (time.sleep(0.2), signal.pthread_kill(main, signal.SIGUSR1)))
            with pytest.raises(FrameClosedError):
                b.recv_bytes(timeout_s=30)
            join()
        finally:
            signal.signal(signal.SIGUSR1, old)
        assert b.closed


class TestPeerClosed:
    def test_close_at_boundary(self, raw_pair):
        """A peer that closes between frames gives PeerClosedError with at_boundary True, after the frames
        it sent were delivered."""
        fs, raw = raw_pair
        raw.sendall(_frame(b"last"))
        raw.close()
        assert fs.recv_bytes(timeout_s=5) == b"last"
        with pytest.raises(PeerClosedError) as ei:
            fs.recv_bytes(timeout_s=5)
        assert ei.value.at_boundary is True
        assert "frame boundary" in str(ei.value)

    @pytest.mark.parametrize("cut", [1, 3, 4, 9])
    def test_close_mid_frame(self, raw_pair, cut):
        """A peer that closes inside a frame (in the header or the payload) gives PeerClosedError with
        at_boundary False, naming how far the frame got."""
        fs, raw = raw_pair
        raw.sendall(_frame(b"0123456789")[:cut])
        raw.close()
        with pytest.raises(PeerClosedError) as ei:
            fs.recv_bytes(timeout_s=5)
        assert ei.value.at_boundary is False
        assert "mid-frame" in str(ei.value)
        assert (f"{cut} of 4 header bytes" if cut < 4 else f"{cut - 4} of 10 payload bytes") in str(ei.value)

    def test_send_to_closed_peer(self, pair):
        """Sending to a peer that is gone raises PeerClosedError (and no SIGPIPE kills the process)."""
        a, b = pair
        b.close()
        with pytest.raises(PeerClosedError):
            for _ in range(100):
                a.send_bytes(b"x" * 1000)

    def test_peer_closed_is_connection_error(self, raw_pair):
        """PeerClosedError is a ConnectionError, as a socket user would catch it."""
        fs, raw = raw_pair
        raw.close()
        with pytest.raises(ConnectionError):
            fs.recv(timeout_s=5)


class TestBadInput:
    def test_length_over_maximum(self, raw_pair):
        """A header announcing more than max_frame raises FrameTooLargeError naming both numbers, and the
        stream is then refused (it is no longer at a frame boundary)."""
        fs, raw = raw_pair
        fs.max_frame = 1000
        raw.sendall(struct.pack("<I", 1001) + b"x" * 1001 + _frame(b"next"))
        with pytest.raises(FrameTooLargeError) as ei:
            fs.recv_bytes(timeout_s=5)
        assert "1001" in str(ei.value) and "1000" in str(ei.value)
        with pytest.raises(FrameError, match="close this FrameSocket"):
            fs.recv_bytes(timeout_s=5)

    def test_over_maximum_leaves_the_send_side_usable(self, raw_pair):
        """After an incoming frame over max_frame only the receive side is refused: a send (the Error that
        explains the refusal) still goes out whole."""
        fs, raw = raw_pair
        fs.max_frame = 1000
        raw.sendall(struct.pack("<I", 1001))
        with pytest.raises(FrameTooLargeError):
            fs.recv_bytes(timeout_s=5)
        fs.send_bytes(b"refused: too large", timeout_s=5)
        assert raw.recv(64) == _frame(b"refused: too large")
        with pytest.raises(FrameError, match="close this FrameSocket"):
            fs.recv_bytes(timeout_s=5)

    def test_unknown_body_is_reported_with_the_envelope(self, raw_pair):
        """An Envelope whose body this schema does not know (a newer minor's, here field 111) raises
        UnknownBodyError, a FrameDecodeError holding the parsed Envelope (its seq), and the stream goes on."""
        fs, raw = raw_pair
        newer = Envelope(seq=7).SerializeToString() + bytes([0xFA, 0x06, 0x02, 0x08, 0x01])  # field 111, LEN
        raw.sendall(_frame(newer) + _frame(Envelope(seq=8, stop=pb.Stop()).SerializeToString()))
        with pytest.raises(UnknownBodyError) as ei:
            fs.recv(timeout_s=5)
        assert isinstance(ei.value, FrameDecodeError) and ei.value.envelope.seq == 7
        assert "seq 7" in str(ei.value)
        assert fs.recv(timeout_s=5).seq == 8

    def test_huge_length_is_refused_before_any_allocation(self, raw_pair):
        """A length of 4 GiB - 1 is refused at once, not allocated."""
        fs, raw = raw_pair
        raw.sendall(b"\xff\xff\xff\xff")
        with pytest.raises(FrameTooLargeError, match="4294967295"):
            fs.recv_bytes(timeout_s=5)

    def test_send_over_maximum(self, pair):
        """Sending more than max_frame raises FrameTooLargeError naming the size, and sends nothing."""
        a, b = pair
        a.max_frame = 10
        with pytest.raises(FrameTooLargeError, match="11 bytes"):
            a.send_bytes(b"x" * 11)
        a.send_bytes(b"ok")
        assert b.recv_bytes(timeout_s=5) == b"ok"

    @pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x00", b"\x0a\x05ab", b"\x52\x01"])
    def test_garbage_is_a_decode_error(self, raw_pair, garbage):
        """A frame whose bytes do not parse as an Envelope raises FrameDecodeError naming its size and
        first bytes; the stream stays usable."""
        fs, raw = raw_pair
        raw.sendall(_frame(garbage) + _frame(Envelope(stop=pb.Stop(reason="ok")).SerializeToString()))
        with pytest.raises(FrameDecodeError) as ei:
            fs.recv(timeout_s=5)
        assert f"{len(garbage)} bytes" in str(ei.value)
        assert garbage[:1].hex() in str(ei.value)
        assert isinstance(ei.value, ValueError)
        assert fs.recv(timeout_s=5).stop.reason == "ok"

    def test_envelope_with_unknown_body_is_a_decode_error(self, raw_pair):
        """A well-formed protobuf with no body this schema knows (field 99, say) is reported, not guessed."""
        fs, raw = raw_pair
        raw.sendall(_frame(b"\x98\x06\x01"))  # field 99, varint 1
        with pytest.raises(FrameDecodeError, match="no body this schema knows"):
            fs.recv(timeout_s=5)

    def test_empty_frame_is_not_an_envelope(self, raw_pair):
        """An empty frame is a valid raw payload but not an Envelope."""
        fs, raw = raw_pair
        raw.sendall(_frame(b"") + _frame(b""))
        assert fs.recv_bytes(timeout_s=5) == b""
        with pytest.raises(FrameDecodeError, match="0 bytes"):
            fs.recv(timeout_s=5)

    def test_wrong_argument_types_name_the_value(self, pair):
        """Arguments are checked before C sees them, and the message names the bad value."""
        a, _ = pair
        with pytest.raises(TypeError, match="'hello'"):
            a.send("hello")
        with pytest.raises(TypeError, match="int"):
            a.send_bytes(12345)
        with pytest.raises(ValueError, match="-1"):
            a.recv_bytes(timeout_s=-1)
        with pytest.raises(ValueError, match=str(2**31)):
            a.max_frame = 2**31
        with pytest.raises(ValueError, match="-3"):
            a.send_fds([-3])
        with pytest.raises(ValueError, match=str(MAX_FDS + 1)):
            a.send_fds([0] * (MAX_FDS + 1))
        with pytest.raises(ValueError, match="SOCK_DGRAM"):
            FrameSocket(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))


class TestTimeouts:
    def test_recv_times_out(self, pair):
        """recv with nothing to read raises FrameTimeoutError, a TimeoutError, and the socket stays usable."""
        a, b = pair
        with pytest.raises(TimeoutError):
            b.recv_bytes(timeout_s=0.05)
        with pytest.raises(FrameTimeoutError):
            b.recv(timeout_s=0)
        a.send_bytes(b"later")
        assert b.recv_bytes(timeout_s=5) == b"later"

    def test_partial_frame_survives_a_timeout(self, raw_pair):
        """A timeout part-way through a frame keeps what arrived; the next recv completes that frame."""
        fs, raw = raw_pair
        wire = _frame(b"abcdef")
        raw.sendall(wire[:6])
        with pytest.raises(FrameTimeoutError, match="6 bytes of a frame arrived"):
            fs.recv_bytes(timeout_s=0.05)
        raw.sendall(wire[6:])
        assert fs.recv_bytes(timeout_s=5) == b"abcdef"

    def test_stalled_frame_hits_frame_timeout(self, raw_pair):
        """With frame_timeout_s set, a frame that began and stalls short of its end raises FrameStalledError
        naming how much arrived, long before the caller's own (10 s) timeout; the receive side is refused."""
        fs, raw = raw_pair
        fs.frame_timeout_s = 0.2
        raw.sendall(struct.pack("<I", 1000) + b"x" * 10)
        with pytest.raises(FrameStalledError, match="10 of 1000 payload bytes") as ei:
            fs.recv_bytes(timeout_s=10)
        assert isinstance(ei.value, FrameTimeoutError)
        with pytest.raises(FrameError, match="close this FrameSocket"):
            fs.recv_bytes(timeout_s=5)

    def test_frame_timeout_does_not_limit_idle_waits(self, raw_pair):
        """frame_timeout_s starts when a frame's first byte arrives: waiting longer than it for a frame to
        begin is a plain timeout (or no timeout at all), and a frame sent afterwards is received."""
        fs, raw = raw_pair
        fs.frame_timeout_s = 0.05
        with pytest.raises(FrameTimeoutError) as ei:
            fs.recv_bytes(timeout_s=0.3)
        assert not isinstance(ei.value, FrameStalledError)
        join = _in_thread(fs.recv_bytes)  # no timeout: waits past frame_timeout_s for the frame to start
        time.sleep(0.2)
        raw.sendall(_frame(b"late but whole"))
        assert join() == b"late but whole"

    def test_bad_frame_timeout_is_named(self, pair):
        """frame_timeout_s must be a positive number or None; the bad value is named."""
        a, _ = pair
        with pytest.raises(ValueError, match="-1"):
            a.frame_timeout_s = -1
        with pytest.raises(TypeError, match="'soon'"):
            a.frame_timeout_s = "soon"
        a.frame_timeout_s = None
        assert a.frame_timeout_s is None

    def test_send_times_out_when_peer_does_not_read(self, pair):
        """A send that cannot finish because the peer does not read raises FrameTimeoutError naming how far
        it got, and the half-sent frame leaves the stream refused for further sends."""
        a, b = pair
        with pytest.raises(FrameTimeoutError, match=r"of 4194308 bytes sent"):
            a.send_bytes(b"z" * (4 << 20), timeout_s=0.05)
        with pytest.raises(FrameError, match="close this FrameSocket"):
            a.send_bytes(b"more", timeout_s=0.05)


class TestFdPassing:
    def test_pipe_fd_arrives_working(self, pair):
        """A pipe fd sent with send_fds arrives as a new fd on the same pipe, with its payload."""
        a, b = pair
        r, w = os.pipe()
        try:
            a.send_fds([w], b"here is a pipe")
            payload, fds = b.recv_fds(timeout_s=5)
            assert payload == b"here is a pipe" and len(fds) == 1 and fds[0] not in (r, w)
            os.write(fds[0], b"through")
            os.close(fds[0])
            assert os.read(r, 100) == b"through"
        finally:
            os.close(r)
            os.close(w)

    def test_max_fds_and_message_payload(self, pair):
        """MAX_FDS fds travel on one frame with an Envelope payload, in order."""
        a, b = pair
        pipes = [os.pipe() for _ in range(MAX_FDS // 2)]
        sent = [f for p in pipes for f in p]
        try:
            env = Envelope(attach=pb.Attach(rings=[pb.RingDescriptor(name=f"r{i}", fd_follows=True)
                                                   for i in range(len(sent))]))
            a.send_fds(sent, env)
            payload, fds = b.recv_fds(timeout_s=5)
            assert FrameSocket.decode(payload) == env
            assert len(fds) == len(sent)
            for f, orig in zip(fds, sent):
                assert os.fstat(f).st_ino == os.fstat(orig).st_ino
                os.close(f)
        finally:
            for f in sent:
                os.close(f)

    def test_too_many_fds_from_a_foreign_sender(self, raw_pair):
        """A frame carrying more than MAX_FDS fds (a foreign sender) raises FrameError; none leak, and the
        next frame reads normally."""
        fs, raw = raw_pair
        r, w = os.pipe()
        try:
            before = _fd_count()
            raw.sendmsg([_frame(b"many")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              struct.pack(f"{MAX_FDS + 4}i", *([r] * (MAX_FDS + 4))))])
            raw.sendall(_frame(b"next"))
            with pytest.raises(FrameError, match=f"more than {MAX_FDS}"):
                fs.recv_fds(timeout_s=5)
            assert _fd_count() == before
            assert fs.recv_fds(timeout_s=5) == (b"next", [])
        finally:
            os.close(r)
            os.close(w)

    def test_recv_bytes_closes_unexpected_fds(self, pair):
        """fds that arrive with a frame read by recv_bytes are closed, not leaked."""
        a, b = pair
        r, w = os.pipe()
        try:
            before = _fd_count()
            a.send_fds([r], b"x")
            assert b.recv_bytes(timeout_s=5) == b"x"
            assert _fd_count() == before
        finally:
            os.close(r)
            os.close(w)

    def test_fds_do_not_bleed_into_the_next_frame(self, pair):
        """fds belong to the frame they were sent with, even when frames are back to back."""
        a, b = pair
        r, w = os.pipe()
        try:
            a.send_bytes(b"first")
            a.send_fds([r], b"second")
            a.send_bytes(b"third")
            assert b.recv_fds(timeout_s=5) == (b"first", [])
            payload, fds = b.recv_fds(timeout_s=5)
            assert payload == b"second" and len(fds) == 1
            os.close(fds[0])
            assert b.recv_fds(timeout_s=5) == (b"third", [])
        finally:
            os.close(r)
            os.close(w)

    def test_memfd_ring_across_fork(self):
        """A memfd ring sent to a forked child over SCM_RIGHTS attaches there with Ring.from_fd, and every
        record the child writes arrives in sequence."""
        n = 2000
        parent, child = FrameSocket.pair()
        ring = Ring.create(capacity=1 << 16)
        try:
            pid = os.fork()
            if pid == 0:  # child: no pytest machinery from here on, only os._exit
                code = 1
                try:
                    parent.close()
                    payload, fds = child.recv_fds(timeout_s=30)
                    env = FrameSocket.decode(payload)
                    assert env.attach.rings[0].fd_follows and len(fds) == 1
                    with Ring.from_fd(fds[0]) as r:
                        os.close(fds[0])
                        w = r.writer()
                        for i in range(n):
                            w.write(struct.pack("<Q", i) + bytes([i % 251]) * (i % 100), timeout_s=30)
                        child.send(Envelope(stop=pb.Stop(reason="done")))
                    code = 0
                finally:
                    os._exit(code)
            child.close()
            env = Envelope(attach=pb.Attach(rings=[pb.RingDescriptor(
                name="imu", capacity=1 << 16, direction=pb.DIRECTION_OUTPUT, record_types=[1],
                fd_follows=True)]))
            parent.send_fds([ring.fd], env)
            reader = ring.reader()
            for i in range(n):
                rec = reader.read(timeout_s=30)
                assert rec == struct.pack("<Q", i) + bytes([i % 251]) * (i % 100), f"record {i}"
            assert parent.recv(timeout_s=30).stop.reason == "done"
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        finally:
            ring.close()
            parent.close()
            child.close()


class TestLifetime:
    def test_close_with_linger_lets_a_sending_peer_read_our_last_frame(self, raw_pair):
        """close(linger_s) half-closes and drains what the peer still sends, so a peer that writes after our
        last frame can still send (no EPIPE) and reads that frame, then a clean EOF rather than a reset."""
        fs, raw = raw_pair
        fs.send_bytes(b"refused", timeout_s=5)
        raw.sendall(b"an unread hello")  # unread by fs: a plain close() would reset the connection
        join = _in_thread(fs.close, 5.0)
        got = b""
        while len(got) < 11:
            got += raw.recv(64)
        assert got == _frame(b"refused")
        raw.sendall(b"more after the refusal")  # still accepted: fs is draining, not gone
        assert raw.recv(64) == b""  # our side ended cleanly
        raw.close()
        join()
        assert fs.closed

    def test_close_twice_and_use_after_close(self, pair):
        """close() is idempotent; every call afterwards raises FrameClosedError, a ValueError."""
        a, b = pair
        a.close()
        a.close()
        assert a.closed and a.fileno() == -1 and "closed" in repr(a)
        for call in (lambda: a.send_bytes(b"x"), lambda: a.recv_bytes(timeout_s=0), lambda: a.recv_fds(),
                     lambda: a.send(Envelope(stop=pb.Stop()))):
            with pytest.raises(FrameClosedError):
                call()
        with pytest.raises(ValueError):
            a.recv(timeout_s=0)

    def test_context_manager_closes(self):
        """Leaving a with block closes the socket, and the peer sees a clean close."""
        a, b = FrameSocket.pair()
        with a:
            a.send_bytes(b"bye")
        assert a.closed
        with b:
            assert b.recv_bytes(timeout_s=5) == b"bye"
            with pytest.raises(PeerClosedError):
                b.recv_bytes(timeout_s=5)

    def test_close_from_another_thread_wakes_blocked_recv(self, pair):
        """Closing a FrameSocket while another thread is blocked in recv makes that recv raise
        FrameClosedError instead of hanging or touching a reused fd."""
        _, b = pair
        join = _in_thread(b.recv_bytes)
        time.sleep(0.1)
        b.close()
        with pytest.raises(FrameClosedError):
            join()

    def test_close_from_another_thread_wakes_blocked_send(self, pair):
        """Closing while another thread is blocked sending to a peer that does not read makes that send
        raise FrameClosedError."""
        a, _ = pair
        join = _in_thread(a.send_bytes, b"q" * (8 << 20))
        time.sleep(0.1)
        a.close()
        with pytest.raises(FrameClosedError):
            join()

    def test_from_fd_and_connect(self, tmp_path):
        """from_fd wraps an inherited socket fd; connect reaches a listening path; nothing is left behind."""
        path = tmp_path / "ctl.sock"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            srv.bind(str(path))
            srv.listen(1)
            with FrameSocket.connect(path, timeout_s=5) as c:
                conn, _ = srv.accept()
                with FrameSocket.from_fd(conn.detach()) as s:
                    c.send(Envelope(hello=pb.Hello(stage_name="x")))
                    assert s.recv(timeout_s=5).hello.stage_name == "x"
        finally:
            srv.close()
            path.unlink(missing_ok=True)
        with pytest.raises(FileNotFoundError):
            FrameSocket.connect(path, timeout_s=1)

    def test_no_fd_leaks(self):
        """Creating, using and closing many pairs leaves the process's fd count unchanged."""
        before = _fd_count()
        for _ in range(50):
            a, b = FrameSocket.pair()
            a.send_bytes(b"x" * 100)
            b.recv_bytes(timeout_s=5)
            a.close()
            b.close()
        assert _fd_count() == before


class TestReadAhead:
    """The C reader takes several queued frames in one recvmsg (READ_AHEAD bytes); fds still arrive with
    the frame whose first byte carried them."""

    @staticmethod
    def _pipes(n: int) -> list[tuple[int, int]]:
        return [os.pipe() for _ in range(n)]

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(st.sampled_from([0, 1, 5, 100, 4000, READ_AHEAD - 3, READ_AHEAD + 7, 200_000]),
                              st.integers(0, 3)), min_size=1, max_size=12))
    def test_queued_frames_keep_their_fds(self, frames):
        """Frames of mixed sizes (around and beyond the read-ahead buffer), some with fds, all queued before
        the reader starts: each arrives with exactly its own fds (same inodes, same order)."""
        pipes = self._pipes(3)
        a, b = FrameSocket.pair()
        try:
            sent = [(bytes([i % 251]) * size, [pipes[j][0] for j in range(nfds)]) for i, (size, nfds) in
                    enumerate(frames)]

            def send_all():
                for payload, fds in sent:
                    a.send_fds(fds, payload, timeout_s=10) if fds else a.send_bytes(payload, timeout_s=10)

            join = _in_thread(send_all)
            time.sleep(0.01)  # let the small ones pile up in the socket
            for i, (payload, fds) in enumerate(sent):
                got, got_fds = b.recv_fds(timeout_s=10)
                try:
                    assert got == payload, f"frame {i}: {len(got)} bytes, sent {len(payload)}"
                    assert [os.fstat(f).st_ino for f in got_fds] == [os.fstat(f).st_ino for f in fds], f"frame {i}"
                finally:
                    for f in got_fds:
                        os.close(f)
            join()
        finally:
            a.close()
            b.close()
            for r, w in pipes:
                os.close(r)
                os.close(w)

    def test_fds_ahead_of_their_frame_are_closed_with_the_socket(self):
        """fds that the read-ahead took for a frame nobody reads are closed by close(), not leaked."""
        before = _fd_count()
        r, w = os.pipe()
        a, b = FrameSocket.pair()
        a.send_bytes(b"one")
        a.send_fds([r, w], b"two")
        time.sleep(0.01)
        assert b.recv_bytes(timeout_s=5) == b"one"
        assert b._rx.ra_nfds == 2 and b._rx.ra_len == 4 + 3  # "two" and its fds were read ahead
        os.close(r)
        os.close(w)
        a.close()
        b.close()
        assert _fd_count() == before

    def test_burst_of_small_frames(self, raw_pair):
        """A burst of 500 small frames written at once is received intact, frame by frame."""
        fs, raw = raw_pair
        raw.sendall(b"".join(_frame(struct.pack("<I", i) * (i % 7)) for i in range(500)))
        for i in range(500):
            assert fs.recv_bytes(timeout_s=5) == struct.pack("<I", i) * (i % 7)
