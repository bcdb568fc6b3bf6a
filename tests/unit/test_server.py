"""edgepipe.control.server: the control-plane Server (handshake, peer credentials, socket files, many clients,
publish, fd passing) and its Client."""

from __future__ import annotations

import os
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
from edgepipe.control.server import Client, Server, default_socket_dir
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
        """Garbage, a frame over max_frame and an Envelope with no known body each end only their own
        connection (with Error BAD_MESSAGE naming the problem where the stream allows an answer)."""
        with Client.connect(server.path, stage="good") as good:
            for bad, expect in [(b"\xff\xff\xff\xff\xff", "is not a edgepipe.v1.Envelope"),
                                (bytes([0xF8, 0x06, 0x01]), "no body this schema knows")]:
                with _raw_hello(server.path) as fs:
                    assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
                    fs.send_bytes(bad)
                    env = fs.recv(timeout_s=5)
                    assert env.error.code == pb.ERROR_CODE_BAD_MESSAGE and expect in env.error.message
                    with pytest.raises(PeerClosedError):
                        fs.recv(timeout_s=5)
            with _raw_hello(server.path) as fs:
                assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
                raw = socket.socket(fileno=os.dup(fs.fileno()))
                raw.sendall(struct.pack("<I", server.max_frame + 1))
                raw.close()
                with pytest.raises(PeerClosedError):
                    fs.recv(timeout_s=5)
            assert "over max_frame" in str(server.recent_errors[-1])
            assert server.counters["bad_frames"] == 3
            assert good.request(_stats("ok"), timeout_s=5).stats.stage_name == "ok!"

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
            with pytest.raises(RemoteError, match="ERROR_CODE_NOT_FOUND.*'imu_sample'"):
                c.request(Envelope(imu_sample=pb.ImuSample()), timeout_s=5)
            with pytest.raises(RemoteError, match="RuntimeError: bad stop 42") as ei:
                c.request(Envelope(stop=pb.Stop()), timeout_s=5)
            assert ei.value.code == pb.ERROR_CODE_INTERNAL
            assert c.request(_stats("alive"), timeout_s=5).stats.stage_name == "alive!"


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
            from edgepipe.control.server import Client
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
