"""Clock exchanges over plain UDP beside a bridge's zenoh session, for a tighter clock bound.

A zenoh round trip on a VM is 115-160 us at best (zenoh's sending and receiving threads each wake once per
direction), a UDP datagram answered by a Python thread 26 us (``benchmarks/bridge.py --only stamps``), and
the clock estimate's bound (edgepipe.bridge.clock) is about half the shortest trips: UDP exchanges make it
several times tighter. They only add exchanges to the same estimate: every exchange is causal on its own
(``t1`` before the datagram leaves, ``t2`` after it arrived), whichever way it went.

Nothing to configure: the answering end (:class:`UdpEcho`) binds an ephemeral port on every interface and
offers it with a random key over zenoh, on the bridge's own session (so under its TLS, if set); the asking
end (:class:`UdpPinger`) sends to the address its zenoh link to that end has. Where UDP does not get through
(a firewall, NAT), the asking end gives up for a while and the zenoh exchanges carry on alone. Every datagram
carries an HMAC-SHA256 (first 16 bytes) under the offered key, and an answer must echo the nonce of the one
ping in flight: a forged or replayed answer is dropped, never added (a wrong stamp would move the estimate).

>>> import time
>>> echo = UdpEcho(time.monotonic_ns)
>>> port, key, zid = parse_offer(echo.offer("ab12"))
>>> ping = UdpPinger(time.monotonic_ns, ("127.0.0.1", port), key)
>>> t1, t2, t3, t4 = ping.exchange()
>>> t1 <= t2 <= t3 <= t4, zid
(True, 'ab12')
>>> ping.close(); echo.close()
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import threading
from collections.abc import Callable

__all__: list[str] = []  # shared inside edgepipe.bridge

_MAGIC = b"EPck"
_PING = struct.Struct("<4sB3xQq")  # magic, kind 1, nonce, t1
_PONG = struct.Struct("<4sB3xQqqq")  # magic, kind 2, nonce, t1, t2, t3
_OFFER = struct.Struct("<H32s")  # port, key; then the answering session's zenoh id (utf-8)
_MAC = 16


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:_MAC]


def _checked(key: bytes, data: bytes, layout: struct.Struct, kind: int) -> tuple | None:
    if len(data) != layout.size + _MAC:
        return None
    body = data[:layout.size]
    if not hmac.compare_digest(_mac(key, body), data[layout.size:]):
        return None
    fields = layout.unpack(body)
    return fields[2:] if fields[0] == _MAGIC and fields[1] == kind else None


def parse_offer(data: bytes) -> tuple[int, bytes, str] | None:
    """(port, key, zenoh id of the answering session) from an offer, or None if it is none."""
    if len(data) <= _OFFER.size:
        return None
    port, key = _OFFER.unpack(data[:_OFFER.size])
    try:
        return port, key, data[_OFFER.size:].decode()
    except UnicodeDecodeError:
        return None


def locator_host(locator: str) -> str | None:
    """The IP address in a zenoh locator (``tcp/198.18.0.1:7447``, ``tls/[::1]:7447``), None if it has none
    (a unix socket, a host name)."""
    _, _, addr = locator.partition("/")
    host = addr.split("?")[0].split("#")[0].rpartition(":")[0].strip("[]")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return None
    return host


class UdpEcho:
    """Answers clock pings on an ephemeral UDP port, from a thread of its own, stamping with ``now``."""

    def __init__(self, now: Callable[[], int]) -> None:
        self.now = now
        self.key = os.urandom(32)
        self.answered = 0
        self.rejected = 0
        try:  # one socket for IPv4 and IPv6 peers where the kernel has IPv6
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.sock.bind(("::", 0))
        except OSError:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("0.0.0.0", 0))
        self.sock.settimeout(0.2)  # how soon close() is seen
        self.port = self.sock.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="edgepipe-udpclock", daemon=True)
        self._thread.start()

    def offer(self, zid: str) -> bytes:
        """What the asking end needs (sent over zenoh): the port, the key, this end's zenoh id."""
        return _OFFER.pack(self.port, self.key) + zid.encode()

    def answer(self, data: bytes) -> bytes | None:
        """The pong to one datagram, stamped now (None for anything that is no valid ping)."""
        t2 = self.now()
        got = _checked(self.key, data, _PING, 1)
        if got is None:
            self.rejected += 1
            return None
        nonce, t1 = got
        body = _PONG.pack(_MAGIC, 2, nonce, t1, t2, self.now())
        return body + _mac(self.key, body)

    def _serve(self) -> None:
        while not self._closed:
            try:
                data, peer = self.sock.recvfrom(128)
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            out = self.answer(data)
            if out is not None:
                self.answered += 1  # before it goes: an asker that has its answer sees it counted
                try:
                    self.sock.sendto(out, peer)
                except OSError:  # the asker's address is unreachable now: its ping goes unanswered
                    continue

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self.sock.close()


class UdpPinger:
    """Asks one :class:`UdpEcho` for exchanges, from the calling thread (each waits ``timeout_s`` at most)."""

    def __init__(self, now: Callable[[], int], addr: tuple[str, int], key: bytes, timeout_s: float = 0.05) -> None:
        self.now = now
        self.key = key
        self.sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(addr)  # datagrams from anyone else are not received
        self._nonce = int.from_bytes(os.urandom(8), "little")

    def exchange(self) -> tuple[int, int, int, int] | None:
        """One exchange ``(t1, t2, t3, t4)``, or None if no valid answer came in time."""
        self._nonce = (self._nonce + 1) & (2**64 - 1)
        body = _PING.pack(_MAGIC, 1, self._nonce, self.now())
        try:
            self.sock.send(body + _mac(self.key, body))
            while True:
                data = self.sock.recv(128)
                t4 = self.now()
                got = _checked(self.key, data, _PONG, 2)
                if got is not None and got[0] == self._nonce:  # a late answer to an earlier ping is skipped
                    return got[1], got[2], got[3], t4
        except OSError:  # TimeoutError, or refused (ICMP port unreachable)
            return None

    def close(self) -> None:
        self.sock.close()
