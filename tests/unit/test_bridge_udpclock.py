"""edgepipe.bridge.udpclock on loopback: exchanges are causal and keyed; a forged, wrongly keyed, or stale answer
is never taken; offers and locators parse (and junk does not)."""

from __future__ import annotations

import socket
import threading

from edgepipe.bridge.udpclock import UdpEcho, UdpPinger, locator_host, parse_offer
from edgepipe.clock import now_ns


def _offer(echo: UdpEcho) -> tuple[int, bytes, str]:
    got = parse_offer(echo.offer("0123abcd"))
    assert got is not None and got[2] == "0123abcd" and got[0] == echo.port
    return got


def test_exchanges_are_causal_on_each_ends_clock():
    """The echo's clock runs 5 s ahead: every exchange still brackets that offset (t2 - t1 >= 5 s >= t3 - t4)."""
    echo = UdpEcho(lambda: now_ns() + 5_000_000_000)
    port, key, _ = _offer(echo)
    ping = UdpPinger(now_ns, ("127.0.0.1", port), key, timeout_s=5)
    try:
        for _ in range(50):
            t1, t2, t3, t4 = ping.exchange()
            assert t1 <= t4 and t2 <= t3
            assert t3 - t4 <= 5_000_000_000 <= t2 - t1, (t1, t2, t3, t4)
        assert echo.answered == 50 and echo.rejected == 0
    finally:
        ping.close()
        echo.close()


def test_a_ping_with_the_wrong_key_is_not_answered():
    echo = UdpEcho(now_ns)
    port, key, _ = _offer(echo)
    ping = UdpPinger(now_ns, ("127.0.0.1", port), bytes(32) if key != bytes(32) else b"x" * 32, timeout_s=0.2)
    try:
        assert ping.exchange() is None
        assert echo.answered == 0 and echo.rejected == 1
    finally:
        ping.close()
        echo.close()


def test_forged_and_stale_answers_are_skipped():
    """A fake echo first answers with a bad MAC, then replays an answer to an earlier ping, then answers
    properly: the pinger takes only the last."""
    key = b"k" * 32
    real = UdpEcho(now_ns)
    real.key = key  # the fake echo signs its proper answer with this echo's answer()
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(10)
    ping = UdpPinger(now_ns, srv.getsockname(), key, timeout_s=10)
    got: list = []
    try:
        th = threading.Thread(target=lambda: got.append(ping.exchange()))
        th.start()
        first, peer = srv.recvfrom(128)
        old = real.answer(first)
        srv.sendto(old, peer)  # the first exchange answered properly: a later replay of it is stale
        th.join(10)
        assert got[0] is not None
        th = threading.Thread(target=lambda: got.append(ping.exchange()))
        th.start()
        second, peer = srv.recvfrom(128)
        good = real.answer(second)
        srv.sendto(good[:24] + bytes([good[24] ^ 1]) + good[25:], peer)  # forged t2: the MAC does not match
        srv.sendto(old, peer)  # stale: the nonce of the first ping
        srv.sendto(good, peer)
        th.join(10)
        t1, t2, t3, t4 = got[1]
        assert (t1, t2, t3) == tuple(int.from_bytes(good[i:i + 8], "little", signed=True) for i in (16, 24, 32))
        assert t4 >= t3
    finally:
        ping.close()
        srv.close()
        real.close()


def test_offers_and_locators_parse():
    assert parse_offer(b"") is None and parse_offer(b"\x01" * 34) is None
    assert parse_offer(b"\x01\x00" + b"k" * 32 + b"\xff") is None  # a zenoh id that is no text
    assert locator_host("tcp/198.18.0.1:7447") == "198.18.0.1"
    assert locator_host("tls/[::1]:7447") == "::1"
    assert locator_host("udp/10.0.0.2:7447?iface=eth0") == "10.0.0.2"
    assert locator_host("tcp/camera.local:7447") is None  # a host name: no address to send to
    assert locator_host("unixsock-stream/tmp/zenoh.sock") is None
