"""examples/uds_client.c: a C client built from proto/ alone with protobuf-c talks to a live edgepipe Server.

The test generates the C code with protoc-c into a temporary directory, compiles it with the example, and
runs it against a server started here. Without protoc-c or the protobuf-c headers the tests skip naming the
apt package (``require_system`` in tests/conftest.py); under CI=true that is a failure, since `.ci/run`
installs protobuf-c-compiler and libprotobuf-c-dev.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import sys
import subprocess
import tempfile

import pytest

from edgepipe import Envelope, Server
from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
from edgepipe.control.framing import PROTOCOL_MAJOR, PROTOCOL_MINOR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTALL_HINT = "apt-get install -y protobuf-c-compiler libprotobuf-c-dev (see .ci/run)"


@pytest.fixture(scope="module")
def uds_client(tmp_path_factory, require_system):
    """Path of the compiled example client."""
    require_system("protoc-c", "protobuf-c-compiler")
    require_system("protobuf-c/protobuf-c.h", "libprotobuf-c-dev")
    protoc_c = shutil.which("protoc-c")
    out = tmp_path_factory.mktemp("uds_client")
    gen = out / "gen"
    gen.mkdir()
    subprocess.run([protoc_c, f"--c_out={gen}", "-Iproto", "proto/edgepipe/v1/edgepipe.proto"], cwd=ROOT,
                   check=True, capture_output=True, text=True)
    exe = out / "uds_client"
    cc = subprocess.run(
        ["cc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{gen}", "examples/uds_client.c",
         str(gen / "edgepipe" / "v1" / "edgepipe.pb-c.c"), "-lprotobuf-c", "-o", str(exe)],
        cwd=ROOT, capture_output=True, text=True)
    assert cc.returncode == 0, f"building uds_client failed ({INSTALL_HINT}):\n{cc.stderr}"
    return str(exe)


@pytest.fixture
def server():
    d = tempfile.mkdtemp(prefix="ep-c-")
    with Server(os.path.join(d, "ctl.sock")) as srv:
        yield srv
    os.rmdir(d)


def _run(exe: str, path: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([exe, path, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class TestCClient:
    def test_prints_welcome_and_the_results_stream(self, uds_client, server):
        """The C client's Hello is accepted (its pid matches SO_PEERCRED), and it prints the Welcome and
        every published Stats, ImuSample, InferenceResult and FrameMeta field by field, then stops on Stop."""
        proc = _run(uds_client, server.path)
        try:
            s = server.wait_session("c-client", timeout_s=10)
            assert s.hello.role == pb.ROLE_CLIENT and s.pid == proc.pid and s.wants("stats")
            stamps = pb.Stamps(source="imu0", seq=41, capture_ns=123456789)
            msgs = [
                Envelope(stats=pb.Stats(stage_name="imu", t_ns=99, rings=[
                    pb.RingCounters(name="samples", records_written=1000, records_read=998)])),
                Envelope(stats=pb.Stats(stage_name="pipeline:p", t_ns=100,
                                        stages=[pb.StageState(name="imu", state="backoff", pid=4321, restarts=2)],
                                        budgets=[pb.LatencyBudget(part="end_to_end", budget_ns=5_000_000)])),
                Envelope(imu_sample=pb.ImuSample(
                    stamps=stamps, gyro=pb.Vec3(x=0.01, y=-0.02, z=0.5), accel=pb.Vec3(z=9.81),
                    orientation=pb.Quaternion(w=1.0), temperature=pb.Celsius(value=36.5))),
                Envelope(imu_sample=pb.ImuSample(stamps=pb.Stamps(source="imu0", seq=42),
                                                 gyro=pb.Vec3(), accel=pb.Vec3())),
                Envelope(inference_result=pb.InferenceResult(
                    stamps=pb.Stamps(source="cam0", seq=7), model_id="yolo-n@1", frame_seq=7,
                    inference_start_ns=1000, inference_end_ns=4500,
                    detections=pb.Detections(boxes=[pb.Box(x_min=1, y_min=2, x_max=30, y_max=40, score=0.875,
                                                           class_id=0, label="person")]))),
                Envelope(frame_meta=pb.FrameMeta(frame_seq=8, width=640, height=480, channels=3, dtype="uint8",
                                                  pixel_format="BGR")),
                Envelope(stop=pb.Stop(reason="test over")),
            ]
            for m in msgs:
                assert server.publish(m) == 1
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert out.splitlines() == [
            f"welcome session={s.id} server_pid={os.getpid()} protocol={PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            "stats stage=imu t_ns=99 rings=1 [samples written=1000 read=998]",
            "stats stage=pipeline:p t_ns=100 rings=0 {imu backoff pid=4321 restarts=2} budget[end_to_end]=5000000ns",
            "imu_sample source=imu0 seq=41 capture_ns=123456789 gyro=(0.010,-0.020,0.500) "
            "accel=(0.000,0.000,9.810) q=(1.0000,0.0000,0.0000,0.0000) temperature_c=36.5",
            "imu_sample source=imu0 seq=42 capture_ns=0 gyro=(0.000,0.000,0.000) accel=(0.000,0.000,0.000)",
            "inference_result model=yolo-n@1 frame_seq=7 infer_ns=3500 source=cam0 seq=7 capture_ns=0 "
            "boxes=1 [person 0.88 (1,2)-(30,40)]",
            "frame_meta frame_seq=8 640x480x3 uint8 BGR",
            "stop reason=test over",
        ]

    def test_server_close_ends_the_stream(self, uds_client, server):
        """When the server shuts down, the C client sees a clean end of stream and exits 0."""
        proc = _run(uds_client, server.path)
        try:
            server.wait_session("c-client", timeout_s=10)
            server.publish(Envelope(stats=pb.Stats(stage_name="last")))
            server.close()
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert out.splitlines()[1:] == ["stats stage=last t_ns=0 rings=0", "end of stream"]

    def test_refused_hello_is_printed(self, uds_client):
        """The Hello the C client sends carries protocol 1, its stage name, its pid and subscribe "*"; an
        Error answer (here from a stand-in server of another major) is printed and the client exits 2."""
        d = tempfile.mkdtemp(prefix="ep-c-")
        path = os.path.join(d, "fake.sock")
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        lst.listen(1)
        proc = _run(uds_client, path)
        try:
            conn, _ = lst.accept()
            n = struct.unpack("<I", conn.recv(4, socket.MSG_WAITALL))[0]
            hello = Envelope.FromString(conn.recv(n, socket.MSG_WAITALL)).hello
            assert (hello.protocol_major, hello.stage_name, hello.pid, list(hello.subscribe)) == (
                1, "c-client", proc.pid, ["*"])
            err = Envelope(reply_to=1, error=pb.Error(code=pb.ERROR_CODE_VERSION_MISMATCH,
                                                      message="needs major 2")).SerializeToString()
            conn.sendall(struct.pack("<I", len(err)) + err)
            out, _ = proc.communicate(timeout=30)
            conn.close()
        finally:
            proc.kill()
            lst.close()
            os.unlink(path)
            os.rmdir(d)
        assert proc.returncode == 2
        assert out.splitlines() == ["error code=ERROR_CODE_VERSION_MISMATCH message=needs major 2"]

    def test_reads_the_example_servers_imu_stream(self, uds_client):
        """Against examples/control_server.py (the bundled recording through the Madgwick filter), the C
        client prints consecutive ImuSamples with gyro, accel, mag and a unit quaternion."""
        d = tempfile.mkdtemp(prefix="ep-c-")
        path = os.path.join(d, "ctl.sock")
        srv = subprocess.Popen([sys.executable, "examples/control_server.py", "--path", path, "--seconds", "1.5",
                                "--rate-hz", "400"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        try:
            assert srv.stdout.readline().strip() == f"listening on {path}"
            proc = _run(uds_client, path, "21")
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            srv_out, srv_err = srv.communicate(timeout=30)
            assert srv.returncode == 0, srv_err
        finally:
            srv.kill()
        lines = out.splitlines()
        assert lines[0].startswith("welcome session=1 ")
        samples = [ln for ln in lines[1:] if ln.startswith("imu_sample")]
        assert len(samples) >= 19  # the rest are Stats
        seqs = [int(ln.split(" seq=")[1].split()[0]) for ln in samples]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        for ln in samples:
            q = [float(v) for v in ln.split(" q=(")[1].rstrip(")").split(",")]
            assert abs(sum(v * v for v in q) - 1) < 1e-3 and " mag=(" in ln and " source=ngimu " in ln
        assert "sessions: 1" in srv_out
        assert not os.path.exists(path)
        os.rmdir(d)


def _header_commands(section: str) -> list[str]:
    """The shell lines under ``section`` ("Build" or "Run") in examples/uds_client.c's header comment."""
    head = open(os.path.join(ROOT, "examples", "uds_client.c")).read().split("*/", 1)[0]
    lines = [ln.strip()[1:].rstrip() for ln in head.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith(section))
    out = []
    for ln in lines[start + 1:]:
        if not ln.startswith("     "):  # commands are indented under their section; prose ends them
            if out:
                break
            continue
        out.append(ln.strip())
    return out


class TestHeaderSteps:
    def test_build_and_run_steps_work_as_written(self, require_system, tmp_path):
        """The header's Build lines, run verbatim by a shell in a copy of the checkout's proto/ and
        examples/ (so gen/ is made there), build the client; its Run lines, with XDG_RUNTIME_DIR unset, find
        the socket examples/control_server.py listens on by default, and the client prints the stream."""
        require_system("protoc-c", "protobuf-c-compiler")
        require_system("protobuf-c/protobuf-c.h", "libprotobuf-c-dev")
        build, run = _header_commands("Build"), _header_commands("Run")
        assert build[0] == "mkdir -p gen" and len(run) == 2
        shutil.copytree(os.path.join(ROOT, "proto"), tmp_path / "proto")
        shutil.copytree(os.path.join(ROOT, "examples"), tmp_path / "examples")
        r = subprocess.run(["bash", "-euc", "\n".join(build)], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0 and (tmp_path / "uds_client").exists(), r.stderr
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        sock_dir = f"/tmp/edgepipe-{os.geteuid()}"
        if os.path.exists(os.path.join(sock_dir, "control.sock")):
            pytest.skip(f"a server already listens on {sock_dir}/control.sock")
        srv = subprocess.Popen([sys.executable, "examples/control_server.py", "--seconds", "20", "--rate-hz", "200"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == f"listening on {sock_dir}/control.sock"
            script = "\n".join(run).replace("[COUNT]", "5")
            r = subprocess.run(["bash", "-euc", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=60)
        finally:
            srv.send_signal(2)
            srv.communicate(timeout=30)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("welcome session=") and len(lines) == 6
