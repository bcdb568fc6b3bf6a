"""Atheris harness: Envelope handling in a live control-plane Server after the handshake.

tests/fuzz/fuzz_frames.py's server path sends fuzzed bytes as a client's whole conversation, so it rarely
gets past the Hello. Here every input first completes a valid handshake (Hello, Welcome), then sends
its bytes as frames: the input is a sequence of chunks ``u16 LE length + bytes``, each sent as one frame.
One Server (handler for "stats" only) serves the whole run.

Each frame's answer is checked against the compatibility rule of ``edgepipe.control.server``, with the
frame's own decoding (``Envelope.FromString``) as the model:

  not an Envelope         Error BAD_MESSAGE, then the server closes the connection (no more frames).
  no body it knows        Error UNSUPPORTED with reply_to = the frame's seq; the connection stays up.
  "stats"                 the handler's Stats, reply_to = the seq; stays up.
  any other known body    Error NOT_FOUND with reply_to = the seq (a second Hello too); stays up.

After the frames, a stats request must still be answered on the same connection (unless it was closed),
and every 64 inputs a fresh Client must get a Welcome and an answer: the server stays up. No session may
end in an exception other than the framing errors (``Server.recent_errors``).

Run directly (libFuzzer flags pass through):

    python tests/fuzz/fuzz_envelopes.py -max_total_time=600 [CORPUS_DIR]
"""

from __future__ import annotations

import os
import struct
import tempfile

from _harness import instrument, main

with instrument("edgepipe.control.server", "edgepipe.control.framing"):
    from google.protobuf.message import DecodeError

    from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
    from edgepipe.control.client import Client
    from edgepipe.control.framing import PROTOCOL_MAJOR, Envelope, FrameSocket
    from edgepipe.control.server import Server
    from edgepipe.errors import FrameError


CHUNK = struct.Struct("<H")
MAX_FRAME = 1 << 16

_server: Server | None = None
_inputs = 0


def _get_server() -> Server:
    global _server
    if _server is None:
        d = os.environ.get("EDGEPIPE_FUZZ_SOCKDIR") or tempfile.mkdtemp(prefix="ep-fuzz-")
        _server = Server(os.path.join(d, "env.sock"), max_frame=MAX_FRAME, hello_timeout_s=5,
                         send_timeout_s=1).start()
        _server.on("stats", lambda s, env: Envelope(stats=pb.Stats(stage_name="ok")))
    return _server


def _expect(frame: bytes) -> tuple[str, int]:
    """What the server must answer to one frame: ("bad", 0), ("unsupported"|"stats"|"not_found", seq)."""
    try:
        env = Envelope.FromString(frame)
    except DecodeError:
        return "bad", 0
    body = env.WhichOneof("body")
    if body is None:
        return "unsupported", env.seq
    return ("stats" if body == "stats" else "not_found"), env.seq


def _check_answer(ans: Envelope, want: str, seq: int) -> None:
    body = ans.WhichOneof("body")
    if want == "stats":
        assert body == "stats" and ans.stats.stage_name == "ok" and ans.reply_to == seq, ans
        return
    code = {"bad": pb.ERROR_CODE_BAD_MESSAGE, "unsupported": pb.ERROR_CODE_UNSUPPORTED,
            "not_found": pb.ERROR_CODE_NOT_FOUND}[want]
    assert body == "error" and ans.error.code == code, (want, ans)
    if want != "bad":
        assert ans.reply_to == seq, (seq, ans)


def _frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + CHUNK.size <= len(data):
        (n,) = CHUNK.unpack_from(data, pos)
        pos += CHUNK.size
        out.append(data[pos:pos + n])
        pos += n
    return out


def test_one_input(data: bytes) -> None:
    global _inputs
    srv = _get_server()
    fs = FrameSocket.connect(srv.path, timeout_s=5, max_frame=MAX_FRAME)
    try:
        fs.send(Envelope(seq=1, hello=pb.Hello(protocol_major=PROTOCOL_MAJOR, stage_name="fuzz", pid=os.getpid(),
                                                role=pb.ROLE_MONITOR)), timeout_s=5)
        assert fs.recv(timeout_s=5).WhichOneof("body") == "welcome"
        closed = False
        for frame in _frames(data):
            want, seq = _expect(frame)
            fs.send_bytes(frame, timeout_s=5)
            _check_answer(fs.recv(timeout_s=5), want, seq)
            if want == "bad":
                closed = True
                break
        if not closed:
            fs.send(Envelope(seq=77, stats=pb.Stats()), timeout_s=5)
            _check_answer(fs.recv(timeout_s=5), "stats", 77)
    finally:
        fs.close()
    bad = [e for e in srv.recent_errors if not isinstance(e, FrameError)]
    assert not bad, bad
    _inputs += 1
    if _inputs % 64 == 0:
        with Client.connect(srv.path, timeout_s=5) as c:
            assert c.request(Envelope(stats=pb.Stats()), timeout_s=5).stats.stage_name == "ok"


def seeds() -> dict[str, bytes]:
    envs = [
        Envelope(seq=2, stats=pb.Stats(stage_name="imu", rings=[pb.RingCounters(name="r", used=5)])),
        Envelope(seq=3, hello=pb.Hello(protocol_major=1, stage_name="again")),
        Envelope(seq=4, imu_sample=pb.ImuSample(stamps=pb.Stamps(seq=3, source="imu0"), gyro=pb.Vec3(x=1.0))),
        Envelope(seq=5, error=pb.Error(code=pb.ERROR_CODE_BAD_MESSAGE, message="x")),
    ]
    blobs = [e.SerializeToString() for e in envs]
    unknown = Envelope(seq=6).SerializeToString() + b"\xfa\x3f\x01x"  # field 1023, a newer minor's body
    chunks = lambda bs: b"".join(CHUNK.pack(len(b)) + b for b in bs)
    return {
        "env-known": chunks(blobs),
        "env-unknown-body": chunks([unknown, blobs[0]]),
        "env-empty-frame": chunks([b"", blobs[0]]),
        "env-garbage": chunks([blobs[0], b"\xff\xff\xff"]),
    }


if __name__ == "__main__":
    main(test_one_input, seeds)
