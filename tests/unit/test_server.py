"""edgepipe.control.server: the control-plane Server (handshake, peer credentials, socket files, many clients,
publish, fd passing) and its Client."""

from __future__ import annotations

import os
import select
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from edgepipe import (
    Envelope,
    FrameDecodeError,
    FrameSocket,
    PeerClosedError,
    RemoteError,
    Ring,
    SocketInUseError,
    UnsafeSocketDirError,
)
from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
from edgepipe.control.client import Client
from edgepipe.control.server import Server, default_socket_dir
from edgepipe.control.framing import PROTOCOL_MINOR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def sock_dir():
    """A fresh 0700 directory for one server socket (short path: AF_UNIX paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="ep-srv-")
    yield d
    for e in os.listdir(d):
        os.unlink(os.path.join(d, e))
    os.rmdir(d)


@pytest.fixture
def server(sock_dir):
    srv = Server(os.path.join(sock_dir, "ctl.sock"), send_timeout_s=0.5)
    srv.on("stats", lambda s, env: Envelope(stats=pb.Stats(stage_name=env.stats.stage_name + "!")))
    with srv:
        yield srv


def _stats(name: str) -> Envelope:
    return Envelope(stats=pb.Stats(stage_name=name))


def _raw_hello(path: str, major: int = 1, pid: int | None = None, subscribe=()) -> FrameSocket:
    fs = FrameSocket.connect(path, timeout_s=5)
    fs.send(Envelope(seq=1, hello=pb.Hello(protocol_major=major, stage_name="raw",
                                           pid=os.getpid() if pid is None else pid, role=pb.ROLE_STAGE,
                                           subscribe=list(subscribe))))
    return fs


def _wait_for(cond, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


class TestHandshake:
    def test_welcome_names_the_session_and_server(self, server):
        """A Hello of our major gets a Welcome with the server's pid and a session id, and the server sees
        the client's stage name, role and SO_PEERCRED credentials."""
        with Client.connect(server.path, stage="imu", role="stage") as c:
            assert c.welcome.protocol_major == 1 and c.welcome.pid == os.getpid()
            s = server.wait_session("imu")
            assert s.id == c.session_id and s.hello.role == pb.ROLE_STAGE
            assert (s.pid, s.uid, s.gid) == (os.getpid(), os.getuid(), os.getgid())
            assert c.request(_stats("imu"), timeout_s=5).stats.stage_name == "imu!"

    def test_other_major_gets_an_error_and_a_closed_socket(self, server):
        """A client of protocol major 2 gets Error VERSION_MISMATCH naming both versions, then EOF; the
        server goes on serving the next client."""
        with pytest.raises(RemoteError) as ei:
            Client.connect(server.path, protocol_major=2)
        assert ei.value.code == pb.ERROR_CODE_VERSION_MISMATCH
        assert "ERROR_CODE_VERSION_MISMATCH" in str(ei.value) and f"protocol 2.{PROTOCOL_MINOR}" in str(ei.value)
        with _raw_hello(server.path, major=7) as fs:
            env = fs.recv(timeout_s=5)
            assert env.error.code == pb.ERROR_CODE_VERSION_MISMATCH and env.reply_to == 1
            with pytest.raises(PeerClosedError):
                fs.recv(timeout_s=5)
        assert server.counters["refused_version"] == 2
        with Client.connect(server.path) as c:
            assert c.request(_stats("x"), timeout_s=5).stats.stage_name == "x!"

    def test_first_message_must_be_hello(self, server):
        """A client whose first message is not a Hello gets Error BAD_MESSAGE naming what it sent."""
        with FrameSocket.connect(server.path, timeout_s=5) as fs:
            fs.send(_stats("early"))
            env = fs.recv(timeout_s=5)
            assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE and "'stats'" in env.error.message
            with pytest.raises(PeerClosedError):
                fs.recv(timeout_s=5)

    def test_silent_client_is_dropped_after_hello_timeout(self, sock_dir):
        """A client that connects and says nothing is sent an Error and dropped after hello_timeout_s."""
        with Server(os.path.join(sock_dir, "s.sock"), hello_timeout_s=0.2) as srv:
            with FrameSocket.connect(srv.path, timeout_s=5) as fs:
                env = fs.recv(timeout_s=5)
                assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE and "0.2 s" in env.error.message
            assert srv.counters["refused_hello"] == 1

    def test_hello_pid_must_match_peercred(self, server):
        """A Hello whose pid is not the socket peer's pid is refused, naming both pids."""
        with _raw_hello(server.path, pid=os.getpid() + 100000) as fs:
            env = fs.recv(timeout_s=5)
            assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE
            assert str(os.getpid() + 100000) in env.error.message and str(os.getpid()) in env.error.message

    def test_unknown_subscription_is_refused(self, server):
        """Subscribing to a name that is not an Envelope body is refused, naming it."""
        with pytest.raises(RemoteError, match="resultz"):
            Client.connect(server.path, subscribe=["stats", "resultz"])

    def test_subscriptions_are_limited_to_published_bodies(self, server):
        """A subscription to a body that is never published (hello, attach, error, welcome) is refused with
        BAD_MESSAGE, one to a name this server does not know with UNSUPPORTED; both name the bad name."""
        for name in ("hello", "attach", "error", "welcome"):
            with pytest.raises(RemoteError, match=f"'{name}'") as ei:
                Client.connect(server.path, subscribe=["stats", name])
            assert ei.value.code == pb.ERROR_CODE_BAD_MESSAGE
        with pytest.raises(RemoteError, match="'resultz'") as ei:
            Client.connect(server.path, subscribe=["resultz"])
        assert ei.value.code == pb.ERROR_CODE_UNSUPPORTED
        for name in ("stats", "stop", "imu_sample", "frame_meta", "inference_result", "*"):
            Client.connect(server.path, subscribe=[name]).close()

    def test_refusals_carry_a_seq_and_echo_the_request(self, server):
        """An Error refusing a message has a seq of its own and reply_to naming the refused message's seq."""
        with _raw_hello(server.path, major=7) as fs:
            env = fs.recv(timeout_s=5)
            assert env.error.code == pb.ERROR_CODE_VERSION_MISMATCH
            assert env.reply_to == 1 and env.seq >= 1
        with FrameSocket.connect(server.path, timeout_s=5) as fs:
            fs.send(Envelope(seq=9, stop=pb.Stop()))
            env = fs.recv(timeout_s=5)
            assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE
            assert env.reply_to == 9 and env.seq >= 1
        with FrameSocket.connect(server.path, timeout_s=5) as fs:
            fs.send_bytes(Envelope(seq=4).SerializeToString() + bytes([0xFA, 0x06, 0x00]))  # unknown body
            env = fs.recv(timeout_s=5)
            assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE and "must be a Hello" in env.error.message
            assert env.reply_to == 4 and env.seq >= 1

    def test_bad_client_arguments(self, server):
        """Client.connect and Server check their arguments and name the bad value."""
        with pytest.raises(ValueError, match="'boss'"):
            Client.connect(server.path, role="boss")
        with pytest.raises(ValueError, match="'nope'"):
            server.on("nope", lambda s, e: None)
        with pytest.raises(ValueError, match="over the 107-byte"):
            Server("/tmp/" + "x" * 120)
        with pytest.raises(ValueError, match="-3"):
            Server("/tmp/x.sock", allowed_uids=[-3])


class TestPeerCredentials:
    def _child_connect_as(self, path: str, uid: int) -> int:
        """Fork a child that drops to ``uid`` and connects; its exit code says what happened:
        10 welcomed, 20 refused with PERMISSION, other codes for anything else."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgid(uid)
                os.setuid(uid)
                try:
                    with Client.connect(path, stage="other-user", timeout_s=5):
                        code = 10
                except RemoteError as e:
                    code = 20 if e.code == pb.ERROR_CODE_PERMISSION and f"uid {uid}" in str(e) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")
    def test_other_uid_refused_unless_allowed(self, sock_dir):
        """A client running as another uid (a forked child after setuid) is refused with PERMISSION naming
        its uid; with that uid in allowed_uids it is welcomed."""
        nobody = 65534
        os.chmod(sock_dir, 0o711)  # other users must reach the socket for SO_PEERCRED to matter
        path = os.path.join(sock_dir, "ctl.sock")
        with Server(path, allowed_uids=[12345]) as srv:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
            assert self._child_connect_as(path, nobody) == 20
            assert srv.counters["refused_uid"] == 1
        with Server(path, allowed_uids=[nobody]) as srv:
            assert self._child_connect_as(path, nobody) == 10
            assert srv.counters["welcomed"] == 1 and srv.counters["refused_uid"] == 0


    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")
    def test_allowed_uid_reaches_a_socket_in_a_directory_the_server_made(self, sock_dir):
        """With allowed_uids the server creates its missing directory 0711, so the allowed user (a child
        that setuid/setgid 65534) connects and is welcomed; a uid not allowed still gets PERMISSION."""
        nobody = 65534
        os.chmod(sock_dir, 0o755)  # stands in for /tmp: every user may pass
        path = os.path.join(sock_dir, "made", "ctl.sock")
        try:
            with Server(path, allowed_uids=[nobody]) as srv:
                assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o711
                assert self._child_connect_as(path, nobody) == 10
                assert srv.counters["welcomed"] == 1
            with Server(path, allowed_uids=[12345]) as srv:
                assert self._child_connect_as(path, nobody) == 20
        finally:
            os.rmdir(os.path.dirname(path))

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")
    def test_default_path_with_allowed_uids_is_reachable(self):
        """Server(name=..., allowed_uids=[u]) puts its socket in /tmp/edgepipe-<uid>-shared (0711), which
        user u can reach: a child running as u connects and is welcomed."""
        nobody = 65534
        name = f"t-{os.getpid()}-{time.monotonic_ns()}"
        with Server(name=name, allowed_uids=[nobody]) as srv:
            assert os.path.dirname(srv.path) == str(default_socket_dir(shared=True))
            assert stat.S_IMODE(os.stat(os.path.dirname(srv.path)).st_mode) == 0o711
            assert self._child_connect_as(srv.path, nobody) == 10
        assert not os.path.exists(srv.path)

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")
    def test_refused_uid_always_reads_its_error(self, sock_dir):
        """A refused uid's client reads Error PERMISSION even when the server has refused (without reading)
        and ended its side before the Hello goes out: the child holds each Hello back until it sees the
        server's end of the stream, the order that made the test above fail under load with EPIPE."""
        os.chmod(sock_dir, 0o711)
        path = os.path.join(sock_dir, "ctl.sock")
        with Server(path, allowed_uids=[12345]) as srv:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    send = FrameSocket.send

                    def late_send(fs, msg, timeout_s=None):
                        p = select.poll()
                        p.register(fs.fileno(), select.POLLRDHUP)
                        p.poll(10_000)  # until the server has sent its Error and shut its side
                        return send(fs, msg, timeout_s)

                    FrameSocket.send = late_send
                    failures = 0
                    for _ in range(5):
                        try:
                            Client.connect(path, timeout_s=10).close()
                        except RemoteError as e:
                            failures += e.code != pb.ERROR_CODE_PERMISSION
                        except Exception:  # noqa: BLE001 (PeerClosedError from EPIPE before the fix)
                            failures += 1
                    code = failures
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert srv.counters["refused_uid"] == 5


class TestSocketFiles:
    def test_stale_socket_is_replaced(self, sock_dir):
        """A socket file left by a dead server (connect refused) is replaced; close() unlinks ours."""
        path = os.path.join(sock_dir, "ctl.sock")
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(path)
        dead.close()  # the file stays, nobody listens
        with Server(path) as srv:
            with Client.connect(path) as c:
                assert c.welcome.pid == os.getpid()
            assert os.path.exists(path)
        assert not os.path.exists(path)
        assert srv.closed

    def test_live_socket_is_not_stolen(self, server):
        """A second server on a live server's path raises SocketInUseError naming the path, and the first
        keeps working."""
        with pytest.raises(SocketInUseError, match=server.path):
            Server(server.path).start()
        with Client.connect(server.path) as c:
            assert c.request(_stats("still"), timeout_s=5).stats.stage_name == "still!"

    def test_non_socket_is_not_replaced(self, sock_dir):
        """A regular file at the socket path is left alone: SocketInUseError (also a FileExistsError)."""
        path = os.path.join(sock_dir, "ctl.sock")
        with open(path, "w") as f:
            f.write("mine")
        with pytest.raises(FileExistsError, match="not a socket"):
            Server(path).start()
        assert open(path).read() == "mine"

    def test_unsafe_directories_are_refused(self, sock_dir):
        """A socket directory that is a symlink, open to others, or owned by someone else is refused."""
        open_dir = os.path.join(sock_dir, "open")
        os.mkdir(open_dir)
        os.chmod(open_dir, 0o755)
        with pytest.raises(UnsafeSocketDirError, match="mode 0755"):
            Server(os.path.join(open_dir, "s.sock")).start()
        link = os.path.join(sock_dir, "link")
        os.symlink(open_dir, link)
        with pytest.raises(UnsafeSocketDirError, match="symlink"):
            Server(os.path.join(link, "s.sock")).start()
        os.unlink(link)
        if os.geteuid() == 0:
            os.chown(open_dir, 65534, 65534)
            os.chmod(open_dir, 0o700)
            with pytest.raises(PermissionError, match="uid 65534"):
                Server(os.path.join(open_dir, "s.sock")).start()
        os.rmdir(open_dir)

    def test_default_directory_is_created_0700(self, sock_dir, monkeypatch):
        """Without a path the socket goes in $XDG_RUNTIME_DIR/edgepipe, created with mode 0700."""
        monkeypatch.setenv("XDG_RUNTIME_DIR", sock_dir)
        assert default_socket_dir() == type(default_socket_dir())(sock_dir) / "edgepipe"
        with Server(name="t") as srv:
            assert srv.path == os.path.join(sock_dir, "edgepipe", "t.sock")
            assert stat.S_IMODE(os.stat(os.path.dirname(srv.path)).st_mode) == 0o700
            with Client.connect(os.path.join(sock_dir, "edgepipe", "t.sock")):
                pass
        os.rmdir(os.path.join(sock_dir, "edgepipe"))
        monkeypatch.delenv("XDG_RUNTIME_DIR")
        assert str(default_socket_dir()) == f"/tmp/edgepipe-{os.geteuid()}"


class TestManyClients:
    def test_concurrent_clients_and_one_vanishing_mid_frame(self, server):
        """Eight clients doing 150 request/replies each all get their own answers while another client
        dies half-way through a frame; the server counts it and keeps serving."""
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            try:
                with Client.connect(server.path, stage=f"w{k}") as c:
                    for i in range(150):
                        assert c.request(_stats(f"w{k}-{i}"), timeout_s=10).stats.stage_name == f"w{k}-{i}!"
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        fs = _raw_hello(server.path)
        assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
        sock = socket.socket(fileno=os.dup(fs.fileno()))
        sock.sendall(struct.pack("<I", 1000) + b"\x0a" * 10)  # a header promising 1000 bytes, then 10
        sock.close()
        fs.close()
        for t in threads:
            t.join(60)
        assert not errors, errors
        _wait_for(lambda: server.counters["vanished_mid_frame"] == 1)
        assert "mid-frame, after 10 of 1000 payload bytes" in str(server.recent_errors[-1])
        assert server.counters["welcomed"] == 9

    def test_bad_frames_get_an_error_and_do_not_disturb_others(self, server):
        """Garbage and a frame over max_frame each end only their own connection, with Error BAD_MESSAGE
        naming the problem; another client goes on."""
        with Client.connect(server.path, stage="good") as good:
            with _raw_hello(server.path) as fs:
                assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
                fs.send_bytes(b"\xff\xff\xff\xff\xff")
                env = fs.recv(timeout_s=5)
                assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE
                assert "is not a edgepipe.v1.Envelope" in env.error.message
                with pytest.raises(PeerClosedError):
                    fs.recv(timeout_s=5)
            with _raw_hello(server.path) as fs:
                assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
                raw = socket.socket(fileno=os.dup(fs.fileno()))
                raw.sendall(struct.pack("<I", server.max_frame + 1))
                raw.close()
                env = fs.recv(timeout_s=5)
                assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE and "over max_frame" in env.error.message
                with pytest.raises(PeerClosedError):
                    fs.recv(timeout_s=5)
            assert "over max_frame" in str(server.recent_errors[-1])
            assert server.counters["bad_frames"] == 2
            assert good.request(_stats("ok"), timeout_s=5).stats.stage_name == "ok!"

    def test_frame_over_max_frame_gets_its_error(self, server):
        """A welcomed client announcing a frame over max_frame is sent Error BAD_MESSAGE naming the size and
        the limit (with its own seq) before the connection closes (it used to get a bare EOF)."""
        with _raw_hello(server.path) as fs:
            assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
            raw = socket.socket(fileno=os.dup(fs.fileno()))
            raw.sendall(struct.pack("<I", server.max_frame + 1) + b"x" * 1000)
            raw.close()
            env = fs.recv(timeout_s=5)
            assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE and env.seq > 1
            assert str(server.max_frame + 1) in env.error.message and str(server.max_frame) in env.error.message
            with pytest.raises(PeerClosedError):
                fs.recv(timeout_s=5)

    def test_unknown_body_gets_unsupported_and_the_session_goes_on(self, server):
        """A newer minor's body (an Envelope field this schema does not know, here 111) is answered with
        Error UNSUPPORTED echoing its seq, and the same connection keeps being served (the compatibility
        rule in edgepipe.proto); it used to be BAD_MESSAGE and a disconnect."""
        with _raw_hello(server.path) as fs:
            assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
            fs.send_bytes(Envelope(seq=5).SerializeToString() + bytes([0xFA, 0x06, 0x02, 0x08, 0x01]))
            env = fs.recv(timeout_s=5)
            assert env.error.code == pb.ERROR_CODE_UNSUPPORTED and env.reply_to == 5 and env.seq > 1
            assert "seq 5" in env.error.message
            fs.send(Envelope(seq=6, stats=pb.Stats(stage_name="after")))
            reply = fs.recv(timeout_s=5)
            assert reply.reply_to == 6 and reply.stats.stage_name == "after!"
        assert server.counters["unsupported"] == 1 and server.counters["bad_frames"] == 0

    def test_unknown_field_beside_a_known_body_is_kept(self, server):
        """A newer client's extra Envelope field (number 99) does not stop the message being served."""
        got = []
        server.on("stop", lambda s, env: got.append(env.stop.reason))
        with _raw_hello(server.path) as fs:
            assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
            fs.send_bytes(Envelope(seq=2, stop=pb.Stop(reason="r")).SerializeToString() + bytes([0x98, 0x06, 0x05]))
            _wait_for(lambda: got == ["r"])

    def test_no_handler_and_failing_handler_answer_with_errors(self, server):
        """A body with no handler gets NOT_FOUND, a handler that raises gets INTERNAL with its message;
        the session survives both."""
        def boom(s, env):
            raise RuntimeError("bad stop 42")

        server.on("stop", boom)
        with Client.connect(server.path) as c:
            with pytest.raises(RemoteError, match="ERROR_CODE_NOT_FOUND.*'imu_sample'") as ei:
                c.request(Envelope(imu_sample=pb.ImuSample()), timeout_s=5)
            assert ei.value.code == pb.ERROR_CODE_NOT_FOUND
            with pytest.raises(RemoteError, match="RuntimeError: bad stop 42") as ei:
                c.request(Envelope(stop=pb.Stop()), timeout_s=5)
            assert ei.value.code == pb.ERROR_CODE_INTERNAL
            assert c.request(_stats("alive"), timeout_s=5).stats.stage_name == "alive!"


class TestResourceBounds:
    def test_pre_hello_frame_is_capped(self, sock_dir):
        """Before its Hello a connection may not announce a frame over pre_hello_max_frame: it gets Error
        BAD_MESSAGE naming the limit at once (not after hello_timeout_s), so no 16 MiB buffer is pinned."""
        with Server(os.path.join(sock_dir, "s.sock"), hello_timeout_s=60) as srv:
            with FrameSocket.connect(srv.path, timeout_s=5) as fs:
                raw = socket.socket(fileno=os.dup(fs.fileno()))
                raw.sendall(struct.pack("<I", (1 << 20) + 1) + b"x" * 100)
                raw.close()
                env = fs.recv(timeout_s=10)
                assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE
                assert f"pre_hello_max_frame = {srv.pre_hello_max_frame}" in env.error.message
                assert str((1 << 20) + 1) in env.error.message
                with pytest.raises(PeerClosedError):
                    fs.recv(timeout_s=10)
            assert srv.counters["refused_hello"] == 1

    def test_stalled_frame_is_dropped_after_frame_timeout(self, sock_dir):
        """A welcomed client that starts a frame and stalls one part-way gets Error BAD_MESSAGE naming how
        much arrived once frame_timeout_s has passed, and is disconnected; an idle client is left alone."""
        with Server(os.path.join(sock_dir, "s.sock"), frame_timeout_s=0.3) as srv, \
                Client.connect(srv.path, stage="idle") as idle:
            with _raw_hello(srv.path) as fs:
                assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
                raw = socket.socket(fileno=os.dup(fs.fileno()))
                raw.sendall(struct.pack("<I", 1000) + b"\x0a" * 10)
                raw.close()
                env = fs.recv(timeout_s=30)
                assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE
                assert "10 of 1000 payload bytes" in env.error.message and "0.3 s" in env.error.message
                with pytest.raises(PeerClosedError):
                    fs.recv(timeout_s=10)
            assert srv.counters["stalled_frames"] == 1
            time.sleep(0.5)  # longer than frame_timeout_s between frames is fine
            with pytest.raises(RemoteError, match="NOT_FOUND"):  # no handler here: the session answers
                idle.request(_stats("idle"), timeout_s=5)

    def test_connections_are_capped(self, sock_dir):
        """With max_clients=2, a third connection (welcomed or not, they all count) gets Error BUSY naming
        the limit; once one leaves, the next client is served."""
        with Server(os.path.join(sock_dir, "s.sock"), max_clients=2) as srv:
            a = Client.connect(srv.path, stage="a")
            silent = FrameSocket.connect(srv.path, timeout_s=5)  # connected, no Hello yet: it counts
            _wait_for(lambda: srv.counters["accepted"] == 2)
            with pytest.raises(RemoteError, match="limit of 2 connections") as ei:
                Client.connect(srv.path, stage="c", timeout_s=5)
            assert ei.value.code == pb.ERROR_CODE_BUSY
            assert srv.counters["refused_busy"] == 1
            silent.close()
            a.close()
            deadline = time.monotonic() + 10
            while True:  # the server notices the two closes in its own time
                try:
                    with Client.connect(srv.path, stage="d", timeout_s=5) as d:
                        assert d.welcome.pid == os.getpid()
                    break
                except RemoteError as e:
                    assert e.code == pb.ERROR_CODE_BUSY and time.monotonic() < deadline
                    time.sleep(0.05)

    def test_bad_bounds_are_named(self, sock_dir):
        """The new Server knobs check their values and name the bad one."""
        path = os.path.join(sock_dir, "s.sock")
        with pytest.raises(ValueError, match="max_clients must be >= 1, got 0"):
            Server(path, max_clients=0)
        with pytest.raises(ValueError, match="frame_timeout_s.*-1"):
            Server(path, frame_timeout_s=-1)
        with pytest.raises(TypeError, match="'big'"):
            Server(path, pre_hello_max_frame="big")


class TestPublish:
    def test_subscribers_get_what_they_asked_for(self, server):
        """publish() reaches exactly the sessions that subscribed to the body name (or "*"), with
        increasing per-session seq numbers."""
        with Client.connect(server.path, subscribe=["stats"]) as a, \
                Client.connect(server.path, subscribe=["*"]) as b, \
                Client.connect(server.path) as c:
            _wait_for(lambda: len(server.sessions()) == 3)
            assert server.publish(_stats("s1")) == 2
            res = Envelope(inference_result=pb.InferenceResult(model_id="m", frame_seq=7))
            assert server.publish(res) == 1
            assert a.recv(timeout_s=5).stats.stage_name == "s1"
            first, second = b.recv(timeout_s=5), b.recv(timeout_s=5)
            assert first.stats.stage_name == "s1" and second.inference_result.frame_seq == 7
            assert second.seq == first.seq + 1 > 1
            with pytest.raises(TimeoutError):
                c.recv(timeout_s=0.05)
            assert server.counters["published"] == 3

    def test_stalled_subscribers_cost_only_themselves(self, sock_dir):
        """With three subscribers that never read and one that does, 20 publications of 60 kB return in
        well under one send_timeout_s in total (they used to wait send_timeout_s per stalled subscriber), the
        healthy subscriber gets every message, and the stalled ones are dropped."""
        with Server(os.path.join(sock_dir, "p.sock"), send_timeout_s=2.0) as srv:
            stalled = [Client.connect(srv.path, stage=f"stalled{k}", subscribe=["stats"]) for k in range(3)]
            healthy = Client.connect(srv.path, stage="healthy", subscribe=["stats"])
            try:
                _wait_for(lambda: len(srv.sessions()) == 4)
                spent = 0.0
                for i in range(20):
                    t0 = time.monotonic()
                    srv.publish(_stats(f"{i:02d}" + "x" * 60000))
                    spent += time.monotonic() - t0
                assert spent < 1.0, f"20 publish() calls took {spent:.2f} s with send_timeout_s 2"
                got = [healthy.recv(timeout_s=10).stats.stage_name[:2] for _ in range(20)]
                assert got == [f"{i:02d}" for i in range(20)]
                _wait_for(lambda: srv.counters["dropped_subscribers"] == 3, timeout_s=30)
                assert [s.stage_name for s in srv.sessions()] == ["healthy"]
            finally:
                for c in [*stalled, healthy]:
                    c.close()

    def test_subscriber_beyond_its_queue_is_dropped(self, sock_dir):
        """A subscriber that falls more than publish_queue_bytes behind is dropped at once, long before its
        send timeout, with an error naming the bound."""
        with Server(os.path.join(sock_dir, "q.sock"), send_timeout_s=60, publish_queue_bytes=256 << 10) as srv, \
                Client.connect(srv.path, subscribe=["stats"]):
            _wait_for(lambda: len(srv.sessions()) == 1)
            for _ in range(200):
                srv.publish(_stats("x" * 60000))
                if srv.counters["dropped_subscribers"]:
                    break
            assert srv.counters["dropped_subscribers"] == 1 and srv.sessions() == []
            assert "publish_queue_bytes 262144" in str(srv.recent_errors[-1])

    def test_publish_refuses_bodies_never_published(self, server):
        """publish() takes only bodies a client can subscribe to, naming the bad one."""
        with pytest.raises(ValueError, match="'welcome'"):
            server.publish(Envelope(welcome=pb.Welcome()))
        with pytest.raises(ValueError, match="None"):
            server.publish(Envelope())

    def test_stalled_subscriber_is_dropped(self, server):
        """A subscriber that never reads is disconnected once a send blocks past send_timeout_s; the
        other subscriber gets every message."""
        with Client.connect(server.path, subscribe=["stats"]) as slow, \
                Client.connect(server.path, subscribe=["stats"]) as fast:
            _wait_for(lambda: len(server.sessions()) == 2)
            big = _stats("x" * 60000)
            got = 0
            for _ in range(100):
                server.publish(big)
                fast.recv(timeout_s=5)
                got += 1
                if server.counters["dropped_subscribers"]:
                    break
                time.sleep(0.01)  # publish no longer waits: give the send timeout (0.5 s) a chance too
            assert server.counters["dropped_subscribers"] == 1
            assert len(server.sessions()) == 1 and server.sessions()[0].id == fast.session_id
            assert slow.session_id != fast.session_id and got < 100


class TestAttach:
    def test_memfd_ring_reaches_a_client_process(self, server):
        """The server hands a memfd ring to a client in another process with Attach + SCM_RIGHTS; the
        client attaches it with Ring.from_fd and reads every record the server process writes."""
        n = 500
        child = textwrap.dedent("""
            import struct, sys
            from edgepipe import Ring
            from edgepipe.control.client import Client
            with Client.connect(sys.argv[1], stage="sink", role="stage") as c:
                [(desc, fd)] = c.recv_attach(timeout_s=10)
                with Ring.from_fd(fd) as ring:
                    r = ring.reader()
                    total = 0
                    for i in range(int(sys.argv[2])):
                        rec = r.read(timeout_s=10)
                        assert struct.unpack_from("<Q", rec)[0] == i, (i, rec[:8])
                        total += len(rec)
                print(desc.name, desc.capacity, desc.direction, total, flush=True)
        """)
        proc = subprocess.Popen([sys.executable, "-c", child, server.path, str(n)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            with Ring.create(None, capacity=1 << 14) as ring:
                s = server.wait_session("sink", timeout_s=30)
                s.attach("results", ring, direction="input", record_types=[3])
                w = ring.writer()
                total = 0
                for i in range(n):
                    rec = struct.pack("<Q", i) + bytes(i % 97)
                    w.write(rec, timeout_s=10)
                    total += len(rec)
                out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert out.split() == ["results", str(1 << 14), str(pb.DIRECTION_INPUT), str(total)]

    def test_attach_without_its_fds_is_a_decode_error(self, server):
        """An Attach that announces an fd but carries none raises FrameDecodeError naming both counts;
        messages that arrived before it stay queued for recv()."""
        with Client.connect(server.path, stage="y") as c:
            s = server.wait_session("y")
            s.send(_stats("before"))
            s.send(Envelope(attach=pb.Attach(rings=[pb.RingDescriptor(name="r", fd_follows=True)])))
            with pytest.raises(FrameDecodeError, match="announced 1 fds but 0 arrived"):
                c.recv_attach(timeout_s=5)
            assert c.recv(timeout_s=5).stats.stage_name == "before"

    def test_attach_checks_direction(self, server):
        with Client.connect(server.path, stage="x"), Ring.create(None, capacity=4096) as ring:
            with pytest.raises(ValueError, match="'sideways'"):
                server.wait_session("x").attach("r", ring, direction="sideways")


class TestLifetime:
    def test_close_disconnects_clients_and_is_idempotent(self, sock_dir):
        """close() drops every client (they see PeerClosedError), unlinks the socket, and may be repeated."""
        srv = Server(os.path.join(sock_dir, "c.sock")).start()
        c = Client.connect(srv.path)
        _wait_for(lambda: len(srv.sessions()) == 1)
        t0 = time.monotonic()
        srv.close()
        srv.close()
        assert time.monotonic() - t0 < 2
        with pytest.raises(PeerClosedError):
            c.recv(timeout_s=5)
        c.close()
        assert not os.path.exists(srv.path) and srv.sessions() == []

    def test_close_leaves_a_replacement_socket_alone(self, sock_dir):
        """A server whose socket file was replaced by another's does not unlink the other's on close."""
        path = os.path.join(sock_dir, "r.sock")
        srv = Server(path).start()
        os.unlink(path)
        with Server(path) as other:
            srv.close()
            assert os.path.exists(path)
            with Client.connect(path) as c:
                assert c.welcome.pid == os.getpid()
        assert not os.path.exists(path)
        assert other.closed
