"""The checked-in generated code works on the protobuf runtime installed: every message type round-trips,
every Envelope body survives a FrameSocket, and importing the messages warns about nothing.

Free of fixtures and test-only packages, so CI also runs it against the lowest protobuf runtime
``pyproject.toml`` declares (``tools/protobuf_floor.txt``), in a venv holding only the built wheel.
"""

from __future__ import annotations

import socket
import subprocess
import sys

from edgepipe import FrameSocket
from edgepipe import messages as pb


class TestGeneratedCode:
    def test_every_message_type_round_trips(self):
        """Each message of edgepipe.v1 serializes and parses back equal (defaults and one set field)."""
        names = [n for n in pb.__all__ if hasattr(getattr(pb, n), "DESCRIPTOR") and hasattr(getattr(pb, n), "FromString")]
        assert "Envelope" in names and len(names) > 10
        for n in names:
            cls = getattr(pb, n)
            m = cls()
            for f in cls.DESCRIPTOR.fields:
                if f.type == f.TYPE_STRING:
                    try:
                        setattr(m, f.name, f"x-{n}")
                    except (AttributeError, TypeError):  # a repeated field (FieldDescriptor.label is gone in 7.x)
                        continue
                    break
            assert cls.FromString(m.SerializeToString()) == m, n

    def test_every_envelope_body_crosses_a_frame_socket(self):
        """An Envelope with each oneof body, sent through a socketpair, arrives as that body."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with FrameSocket(a) as tx, FrameSocket(b) as rx:
            bodies = [f for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields]
            for i, f in enumerate(bodies, start=1):
                env = pb.Envelope(seq=i)
                getattr(env, f.name).SetInParent()
                tx.send(env, timeout_s=5)
                got = rx.recv(timeout_s=5)
                assert (got.seq, got.WhichOneof("body")) == (i, f.name)

    def test_import_warns_about_nothing(self):
        """`import edgepipe` under -W error (every warning an error) succeeds on this runtime."""
        r = subprocess.run([sys.executable, "-W", "error", "-c", "import edgepipe, edgepipe.messages"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
