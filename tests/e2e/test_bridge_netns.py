"""Bridges across two real network namespaces joined by a veth pair (tests/e2e/_netns.py; root only): one
pipeline in each, talking over TCP on 198.18.0.1 <-> 198.18.0.2 with explicit endpoints.

Skipped (with the reason) only where network namespaces cannot be created, and never under CI=true.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("zenoh", reason="the bridge extra (eclipse-zenoh) is not installed")

from _netns import ADDR_A, child_env, pair

HERE = Path(__file__).resolve().parent
PORT = 7447


@pytest.fixture(scope="module")
def netns(skip_unless_ci):
    yield from pair(skip_unless_ci)


def _run(netns, side: str, toml: Path, report: Path, extra: list[str] = ()) -> subprocess.Popen:
    argv = [sys.executable, "-m", "edgepipe", "run", str(toml), "--report-dir", str(report), "--no-png", "-q",
            *extra]
    return subprocess.Popen(netns.cmd(side, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), start_new_session=True)


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)


SENDER = """
[pipeline]
name = "cam"
[stages.src]
kind = "counter"
outputs = {{ out = "nums" }}
params = {{ count = {count}, size = 1024, rate_hz = {rate} }}
[stages.up]
kind = "bridge"
inputs = {{ nums = "nums" }}
params = {{ pipeline = "cam", listen = ["tcp/{addr}:{port}"] }}
[links.nums]
capacity = 262144
"""

RECEIVER = """
[pipeline]
name = "server"
[stages.down]
kind = "bridge"
outputs = {{ nums = "nums" }}
params = {{ pipeline = "server", remote = "cam", connect = ["tcp/{addr}:{port}"] }}
[stages.sink]
kind = "check"
inputs = {{ in = "nums" }}
params = {{ verify = true }}
[links.nums]
capacity = 262144
"""


def test_records_cross_losslessly_and_the_end_of_stream_too(netns, tmp_path):
    """20000 1 KB records (seq in the payload, checked by the sink; crc32 checked by the receiving bridge) go
    from a pipeline in one namespace to one in the other: all arrive, in order, none corrupt; the source's
    end ends the far pipeline too (both exit 0)."""
    n = 20000
    (tmp_path / "a.toml").write_text(SENDER.format(count=n, rate=0, addr=ADDR_A, port=PORT))
    (tmp_path / "b.toml").write_text(RECEIVER.format(addr=ADDR_A, port=PORT))
    b = _run(netns, "b", tmp_path / "b.toml", tmp_path / "rb")  # the receiver first: it connects, retrying
    a = _run(netns, "a", tmp_path / "a.toml", tmp_path / "ra")
    try:
        _, err_a = a.communicate(timeout=180)  # hang guards only
        _, err_b = b.communicate(timeout=180)
    finally:
        _kill(a)
        _kill(b)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    ra = json.loads((tmp_path / "ra" / "report.json").read_text())["stages"]
    rb = json.loads((tmp_path / "rb" / "report.json").read_text())["stages"]
    assert ra["up"]["published[edgepipe/cam/nums]"] == n
    assert rb["down"]["received[edgepipe/cam/nums]"] == n
    sink = rb["sink"]
    assert sink["ok"] == n and sink["last_seq"] == n - 1
    for bad in ("lost", "corrupt", "duplicates", "out_of_order"):
        assert sink.get(bad, 0) == 0, (bad, sink)


def _lines(p: subprocess.Popen, until, timeout_s: float = 60.0):
    """Read the peer's JSON lines until ``until(line)`` is true (hang guard ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert time.monotonic() < deadline, "the bridge peer never reported what was expected"
        assert p.poll() is None, p.stderr.read()
        line = p.stdout.readline()
        if line:
            d = json.loads(line)
            if until(d):
                return d


def test_remote_death_is_seen_and_a_restarted_end_reconnects(netns, tmp_path):
    """A receiving bridge sees the sending pipeline's kill -9 through its liveliness token, and gets records
    again from the restarted sender without being restarted itself."""
    (tmp_path / "a.toml").write_text(SENDER.format(count=0, rate=500, addr=ADDR_A, port=PORT + 1))
    peer = subprocess.Popen(netns.cmd("b", [sys.executable, str(HERE / "_bridge_peer.py"),
                                            f"tcp/{ADDR_A}:{PORT + 1}", "cam"]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), start_new_session=True)
    a = _run(netns, "a", tmp_path / "a.toml", tmp_path / "r1")
    a2 = None
    try:
        _lines(peer, lambda d: d.get("alive") is True)
        first = _lines(peer, lambda d: d.get("records", 0) > 100)["records"]
        os.killpg(a.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        gone = _lines(peer, lambda d: d.get("alive") is False)
        print(f"remote death seen {1000 * (gone['mono'] - t_kill):.0f} ms after kill -9")
        before = _lines(peer, lambda d: "records" in d)["records"]
        assert before >= first
        a2 = _run(netns, "a", tmp_path / "a.toml", tmp_path / "r2")
        _lines(peer, lambda d: d.get("alive") is True)
        _lines(peer, lambda d: d.get("records", 0) > before + 100)  # records from the new sender
    finally:
        _kill(a)
        if a2 is not None:
            _kill(a2)
        if peer.poll() is None:
            peer.stdin.close()
            try:
                peer.wait(20)
            except subprocess.TimeoutExpired:
                _kill(peer)


def _pair_of_ends(netns, what: str, port: int, skew: list[str] = ()) -> tuple[dict, subprocess.Popen]:
    ep = f"tcp/{ADDR_A}:{port}"
    s = subprocess.Popen(netns.cmd("b", [sys.executable, str(HERE / "_bridge_end.py"), f"{what}-sub", ep]),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), start_new_session=True)
    p = subprocess.Popen(netns.cmd("a", [sys.executable, str(HERE / "_bridge_end.py"), f"{what}-pub", ep, *skew]),
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), start_new_session=True)
    return s, p


def test_frames_cross_with_shape_stamps_and_pixels(netns):
    """30 frames of varying shapes go through a bridge across the veth: each arrives with its number, capture
    stamp, source id and every pixel."""
    s, p = _pair_of_ends(netns, "frames", PORT + 2)
    try:
        out, err = s.communicate(timeout=180)
        p.wait(60)
    finally:
        _kill(s)
        _kill(p)
    assert s.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"frames": 30, "intact": 30}


def test_clock_offset_and_drift_recovered_within_the_bound_across_the_veth(netns):
    """The sender's stamps run 2.5 s behind and drift -120 ppm; the receiver estimates offset and drift from
    pings across the veth (it does not know the skew, and shares no clock with the sender's stamps) and the
    truth lies within its own bound at the start, middle and end of the estimate's span."""
    off_ns, ppm = -2_500_000_000, -120.0
    s, p = _pair_of_ends(netns, "clock", PORT + 3, [str(off_ns), str(ppm)])
    try:
        stop = time.monotonic() + 120  # hang guard; the sender emits a few records while the receiver pings
        while s.poll() is None and time.monotonic() < stop:
            p.stdin.write("x")
            p.stdin.flush()
            time.sleep(0.05)
        out, err = s.communicate(timeout=60)
    finally:  # the sender waits for a subscriber that is gone now (its link is lossless): killed, not waited for
        _kill(s)
        _kill(p)
    assert s.returncode == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    for t, est, bound in zip(r["t"], r["offset"], r["bound"]):
        truth = t * ppm * 1e-6 + off_ns
        assert abs(est - truth) <= bound, (t, est, truth, bound)
    assert abs(r["drift_ppm"] - ppm) <= 2 * r["bound_ns"] / r["span_ns"] * 1e6, r
    print(f"clock across the veth: bound {r['bound_ns'] / 1e3:.1f} us, error "
          f"{max(abs(e - (t * ppm * 1e-6 + off_ns)) for t, e in zip(r['t'], r['offset'])) / 1e3:.1f} us")
