"""Atheris harness: the frame decoder and the Envelope parser against untrusted bytes.

Each input goes down one of three paths (chosen by its first byte), and each path checks its outcome
against a plain-Python model, so a wrong answer is a crash just like an unexpected exception:

  decode   ``FrameSocket.decode(data)``: an Envelope with a known body, or FrameDecodeError; never anything else,
           and a success agrees with ``Envelope.FromString``.
  stream   the bytes are written into one end of a socketpair (then EOF) and read back with FrameSocket
           (csrc/ep_frame.c) frame by frame: every frame the model finds (u32 LE length + bytes) arrives
           intact, then exactly the model's ending: PeerClosedError at a boundary, PeerClosedError mid-frame
           naming how far it got, or FrameTooLargeError naming the length.
  server   the bytes go to a live edgepipe Server as a client's whole conversation (then EOF): the server
           answers with nothing, a Welcome, or an Error and closes, and keeps serving; every 256 server
           inputs a real Client must still get a Welcome.

Run directly (libFuzzer flags pass through):

    python tests/fuzz/fuzz_frames.py -max_total_time=600 [CORPUS_DIR]

tests/fuzz/test_fuzz.py runs it for a bounded time in the default test run (EDGEPIPE_FUZZ_SECONDS).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["edgepipe"]):
    from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
    from edgepipe.errors import FrameDecodeError, FrameTooLargeError, PeerClosedError
    from edgepipe.control.framing import Envelope, FrameSocket
    from edgepipe.control.client import Client
    from edgepipe.control.server import Server

MAX_FRAME = 2048  # small, so the fuzzer reaches the over-maximum path easily
HDR = struct.Struct("<I")

_server: Server | None = None
_server_inputs = 0


def _model_frames(data: bytes) -> tuple[list[bytes], str, int]:
    """Split a byte stream the way the wire format says. Returns (frames, ending, value): ending is
    "boundary", "mid-frame" (value = bytes of the cut frame that arrived), or "too-large" (value = length)."""
    frames, pos = [], 0
    while True:
        if pos == len(data):
            return frames, "boundary", 0
        if len(data) - pos < 4:
            return frames, "mid-frame", len(data) - pos
        (n,) = HDR.unpack_from(data, pos)
        if n > MAX_FRAME:
            return frames, "too-large", n
        if len(data) - pos - 4 < n:
            return frames, "mid-frame", len(data) - pos
        frames.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n


def check_decode(data: bytes) -> None:
    try:
        env = FrameSocket.decode(data)
    except FrameDecodeError as e:
        assert f"{len(data)} bytes" in str(e), str(e)
        return
    assert env.WhichOneof("body") is not None
    assert env == Envelope.FromString(data)


def check_stream(data: bytes) -> None:
    frames, ending, value = _model_frames(data)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fs = FrameSocket(a, max_frame=MAX_FRAME)
    try:
        b.sendall(data)  # libFuzzer inputs are small (-max_len): they fit the socket buffer
        b.close()
        for want in frames:
            got = fs.recv_bytes(timeout_s=5)
            assert got == want, (got[:32], want[:32])
            check_decode(got)
        try:
            fs.recv_bytes(timeout_s=5)
        except PeerClosedError as e:
            assert ending in ("boundary", "mid-frame"), (ending, str(e))
            assert e.at_boundary == (ending == "boundary"), str(e)
            if ending == "mid-frame":
                assert "mid-frame" in str(e), str(e)
        except FrameTooLargeError as e:
            assert ending == "too-large" and str(value) in str(e), (ending, value, str(e))
        else:
            raise AssertionError(f"a frame beyond the model's {len(frames)}")
    finally:
        fs.close()
        b.close()


def _get_server() -> Server:
    global _server
    if _server is None:
        # libFuzzer ends the process with exit(): nothing of ours runs after it, so the caller may name
        # a directory it cleans up itself (tests/fuzz/test_fuzz.py does).
        d = os.environ.get("EDGEPIPE_FUZZ_SOCKDIR") or tempfile.mkdtemp(prefix="ep-fuzz-")
        _server = Server(os.path.join(d, "fuzz.sock"), max_frame=MAX_FRAME, hello_timeout_s=5,
                         send_timeout_s=1).start()
        _server.on("stats", lambda s, env: Envelope(stats=pb.Stats(stage_name="ok")))
    return _server


def check_server(data: bytes) -> None:
    global _server_inputs
    srv = _get_server()
    fs = FrameSocket.connect(srv.path, timeout_s=5, max_frame=1 << 20)
    try:
        raw = socket.socket(fileno=os.dup(fs.fileno()))
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)  # the server sees EOF after our bytes: no waiting for a Hello
        raw.close()
        while True:
            try:
                env = fs.recv(timeout_s=10)
            except PeerClosedError:
                break
            assert env.WhichOneof("body") in ("welcome", "error", "stats"), env
    finally:
        fs.close()
    _server_inputs += 1
    if _server_inputs % 256 == 0:
        with Client.connect(srv.path, timeout_s=5) as c:
            assert c.request(Envelope(stats=pb.Stats()), timeout_s=5).stats.stage_name == "ok"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 8, data[1:]
    if mode < 3:
        check_decode(body)
    elif mode < 7:
        check_stream(body)
    else:
        check_server(body)


def write_seeds(corpus: str) -> None:
    """A few well-formed inputs to start from: frames of real Envelopes for each path."""
    envs = [
        Envelope(seq=1, hello=pb.Hello(protocol_major=1, stage_name="imu", pid=0, role=pb.ROLE_STAGE,
                                       subscribe=["stats"])),
        Envelope(seq=2, stats=pb.Stats(stage_name="imu", rings=[pb.RingCounters(name="r", used=5)])),
        Envelope(imu_sample=pb.ImuSample(stamps=pb.Stamps(seq=3, source="imu0"), gyro=pb.Vec3(x=1.0))),
        Envelope(inference_result=pb.InferenceResult(model_id="m", detections=pb.Detections(
            boxes=[pb.Box(score=0.5, label="cat")]))),
        Envelope(error=pb.Error(code=pb.ERROR_CODE_BAD_MESSAGE, message="x")),
    ]
    frames = [HDR.pack(len(b)) + b for b in (e.SerializeToString() for e in envs)]
    seeds = {
        "decode-hello": bytes([0]) + envs[0].SerializeToString(),
        "stream-all": bytes([3]) + b"".join(frames),
        "stream-cut": bytes([4]) + b"".join(frames)[:-3],
        "stream-big": bytes([5]) + HDR.pack(MAX_FRAME + 1) + b"x",
        "server-hello-stats": bytes([7]) + frames[0] + frames[1],
        "server-stats-first": bytes([7]) + frames[1],
    }
    for name, blob in seeds.items():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(blob)


def main() -> None:
    args = sys.argv
    if "--write-seeds" in args:
        write_seeds(args[args.index("--write-seeds") + 1])
        return
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
