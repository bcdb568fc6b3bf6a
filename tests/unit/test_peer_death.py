"""Peer death and clean close across real processes: kill -9 (or close) one end of a ring and check what the
other end sees, under each wait policy.

The rules under test (DESIGN.md, "Peer death"): a waiting end checks its peer at least every 50 ms, so a dead
producer becomes PeerClosedError on the consumer once everything queued has been read, a dead consumer becomes
PeerClosedError on a producer blocked on a full ring, a clean close looks the same to the other end, and the
end of a dead process can be taken over by a new one. Rings are anonymous memfds shared by fork, except in
the one test about a named ring, which removes the name itself. Kill-to-exception latencies are printed (run
with -s to see them; the goal is < 100 ms) and asserted only against a generous 2 s.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import time
import traceback
import zlib
from array import array

import pytest

from edgepipe import Ring
from edgepipe.clock import now_ns
from edgepipe.errors import PeerClosedError, RingBusyError

CTX = mp.get_context("fork")
WAITS = ["spin", "park", "hybrid"]
HDR = struct.Struct("<QII")  # seq, payload bytes, crc32 of the payload
SHM_DIR = "/dev/shm"
LATENCY_BOUND_NS = 2_000_000_000  # generous: a loaded CI box; the goal (printed) is < 100 ms


def record(seq: int) -> bytes:
    """Record ``seq``: header plus 0-299 payload bytes derived from the seq."""
    body = (seq.to_bytes(8, "little") * 38)[: seq % 300]
    return HDR.pack(seq, len(body), zlib.crc32(body)) + body


def is_record(rec: bytes, seq: int) -> bool:
    """True if ``rec`` is exactly record ``seq``, header, length, checksum and payload."""
    if len(rec) < HDR.size:
        return False
    s, n, crc = HDR.unpack_from(rec)
    body = rec[HDR.size :]
    return s == seq and n == len(body) and crc == zlib.crc32(body) and rec == record(seq)


# ---------------------------------------------------------------------------------------------------
# child processes: each runs fn(conn, ...) and reports with conn.send; a traceback is sent on failure


def _child_main(fn, conn, args) -> None:
    try:
        fn(conn, *args)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Kids:
    """Forked children with a report pipe each; any still running at teardown are killed."""

    def __init__(self) -> None:
        self.procs: list = []

    def start(self, fn, *args):
        rx, tx = CTX.Pipe(duplex=False)
        p = CTX.Process(target=_child_main, args=(fn, tx, args), daemon=True)
        p.start()
        tx.close()
        self.procs.append((p, rx))
        return p, rx

    def kill(self, p) -> int:
        """SIGKILL ``p`` and reap it, as a supervisor would; return the RAW-clock time of the kill."""
        t0 = now_ns()
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
        return t0

    def cleanup(self) -> None:
        for p, rx in self.procs:
            if p.is_alive():
                p.kill()
            p.join(10)
            rx.close()


@pytest.fixture
def kids():
    k = Kids()
    yield k
    k.cleanup()


@pytest.fixture
def ring():
    """A small anonymous ring (4 KiB: a handful of records fill it)."""
    r = Ring.create(capacity=4096)
    yield r
    r.close()


def recv(rx, timeout_s: float = 30.0):
    """The next report from a child; fail the test on a child's traceback or silence."""
    if not rx.poll(timeout_s):
        pytest.fail(f"no report from a child process within {timeout_s} s")
    msg = rx.recv()
    if msg[0] == "error":
        pytest.fail(f"child process failed:\n{msg[1]}")
    return msg


def after_peer_check(ring: Ring, beat_field: str) -> None:
    """Return just after the blocked end's next heartbeat. A waiting end stores its heartbeat each time it
    checks its peer, so a kill right now lands at the worst moment: the latency printed afterwards is the
    full peer-check interval (the goal: EP_PEER_CHECK_NS = 50 ms, plus scheduling)."""
    beat = getattr(ring.status(), beat_field)
    until(lambda: getattr(ring.status(), beat_field) != beat, what="a heartbeat (peer check) of the blocked end")


def until(pred, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.0002)


# -- producer bodies ----------------------------------------------------------------------------------


def fill_then_block(conn, fd, wait):
    """Write records until the ring is full, report the count, then block in write() on the next one."""
    ring = Ring.from_fd(fd)
    w = ring.writer(wait=wait)
    seq = 0
    while w.try_write(record(seq)):
        seq += 1
    conn.send(("full", seq))
    w.write(record(seq))  # blocks: nobody reads until we are dead
    conn.send(("error", "write() returned on a ring nobody reads"))


def stream_forever(conn, fd, wait, api="write"):
    """Write records 0, 1, 2, ... until killed: one blocking write() each ('write'), in place through
    claim() ('claim'), or 64 at a time with write_packed() falling back to write() when full ('packed')."""
    ring = Ring.from_fd(fd)
    w = ring.writer(wait=wait)
    conn.send(("open",))
    seq = 0
    while True:
        if api == "write":
            w.write(record(seq))
            seq += 1
        elif api == "claim":
            rec = record(seq)
            with w.claim(len(rec)) as view:
                view[:] = rec
            seq += 1
        else:
            recs = [record(s) for s in range(seq, seq + 64)]
            lens = array("I", map(len, recs))
            k = w.write_packed(b"".join(recs), lens)
            if k == 0:
                w.write(recs[0])
                k = 1
            seq += k


def write_then(conn, fd, wait, n, then, start=0):
    """Write records start .. start+n-1; then close the writer ('close'), leave a half-written claim open
    ('claim') or do nothing ('idle'); report, and stay alive until killed."""
    ring = Ring.from_fd(fd)
    w = ring.writer(wait=wait)
    for seq in range(start, start + n):
        w.write(record(seq))
    if then == "close":
        t = now_ns()
        w.close()
    elif then == "claim":
        c = w.claim(200)
        c.view[:] = b"\xee" * 200  # never committed: the consumer must never see these bytes
        t = now_ns()
    else:
        t = now_ns()
    conn.send(("done", n, t))
    time.sleep(60)


def write_until_peer_closed(conn, fd, wait):
    """Write with blocking writes until PeerClosedError; report when it was raised and the try_write after."""
    ring = Ring.from_fd(fd)
    w = ring.writer(wait=wait)
    conn.send(("open",))
    seq = 0
    try:
        while True:
            w.write(record(seq))
            seq += 1
    except PeerClosedError as e:
        t = now_ns()
        msg = str(e)
    try:
        w.try_write(record(seq))
        after = "try_write returned"
    except PeerClosedError:
        after = "PeerClosedError"
    conn.send(("raised", seq, t, msg, after))


# -- consumer bodies ----------------------------------------------------------------------------------


def read_until_peer_closed(conn, fd, wait, start=0):
    """Read with read() until PeerClosedError; report how many records arrived, whether each was the
    expected next record (the first being ``start``), and when the error was raised."""
    ring = Ring.from_fd(fd)
    r = ring.reader(wait=wait)
    conn.send(("open",))
    seq, bad = start, []
    try:
        while True:
            rec = r.read()
            if not is_record(rec, seq) and len(bad) < 5:
                bad.append((seq, rec[:24]))
            seq += 1
    except PeerClosedError as e:
        t = now_ns()
        conn.send(("raised", seq - start, bad, t, str(e)))


def read_then_stall(conn, fd, wait, n, then):
    """Read n records, report, then either idle ('idle') or, on SIGUSR1, close the reader ('close'); stay
    alive until killed."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # pending until sigwait below
    ring = Ring.from_fd(fd)
    r = ring.reader(wait=wait)
    bad = [seq for seq in range(n) if not is_record(r.read(timeout_s=20), seq)]
    conn.send(("read", n, bad))
    if then == "close":
        signal.sigwait({signal.SIGUSR1})
        t = now_ns()
        r.close()
        conn.send(("closed", t))
    time.sleep(60)


def write_across_takeovers(conn, fd, wait, n):
    """Write records 0 .. n-1 with write(); a PeerClosedError while the consumer end is not cleanly closed
    means it died, so wait for a new consumer and retry the record. Close at the end and report."""
    ring = Ring.from_fd(fd)
    w = ring.writer(wait=wait)
    deaths = 0
    deadline = time.monotonic() + 60
    seq = 0
    while seq < n and time.monotonic() < deadline:
        try:
            w.write(record(seq), timeout_s=1)
        except PeerClosedError:
            if ring.status().consumer_closed:
                raise
            deaths += 1
            time.sleep(0.005)
            continue
        except TimeoutError:
            continue
        seq += 1
    w.close()
    conn.send(("done", seq, deaths))
    time.sleep(60)


def peek_and_hold(conn, fd, n):
    """Read records 0 .. n-1, peek at record n and keep it (never released); report, stay alive."""
    ring = Ring.from_fd(fd)
    r = ring.reader(wait="hybrid")
    bad = [seq for seq in range(n) if not is_record(r.read(timeout_s=20), seq)]
    view = r.try_peek()
    bad += [] if view is not None and is_record(bytes(view), n) else ["peek"]
    conn.send(("held", bad))
    time.sleep(60)


def open_end_and_idle(conn, fd, end):
    ring = Ring.from_fd(fd)
    getattr(ring, end)()
    conn.send(("open",))
    time.sleep(60)


def race_for_end(conn, fd, end, barrier):
    """Wait for the other racers, then try to open ``end``; report 'won' or 'busy' and keep it open."""
    ring = Ring.from_fd(fd)
    barrier.wait(10)
    try:
        getattr(ring, end)()
        conn.send(("result", "won"))
    except RingBusyError:
        conn.send(("result", "busy"))
    time.sleep(60)


def read_across_takeovers(conn, fd, wait, total):
    """Read records 0 .. total-1 with read(); a PeerClosedError while the producer end is not cleanly
    closed means it died, so wait for a new producer and go on. Report what arrived."""
    ring = Ring.from_fd(fd)
    r = ring.reader(wait=wait)
    conn.send(("open",))
    seq, bad, deaths = 0, [], 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            rec = r.read(timeout_s=1)
        except PeerClosedError:
            if ring.status().producer_closed:
                break  # the end of the stream
            deaths += 1
            time.sleep(0.005)
            continue
        except TimeoutError:
            continue
        if not is_record(rec, seq) and len(bad) < 5:
            bad.append((seq, rec[:24]))
        seq += 1
    conn.send(("done", seq, bad, deaths))


# ---------------------------------------------------------------------------------------------------


def _latency(name: str, wait: str, t_event: int, t_raise: int) -> int:
    """Print and return how long after the kill (or close) the other end raised, in ns."""
    lat = t_raise - t_event
    print(f"\n{name} [{wait}]: {lat / 1e6:.1f} ms to the exception")
    return lat


class TestProducerKilled:
    @pytest.mark.parametrize("wait", WAITS)
    def test_reader_drains_every_queued_record_then_raises(self, ring, kids, wait):
        """After kill -9 of a producer blocked on a full ring, the reader gets every queued record in order,
        then PeerClosedError."""
        prod, prx = kids.start(fill_then_block, ring.fd, wait)
        _, queued = recv(prx)
        assert queued > 0
        until(lambda: ring.status().full_events > 0, what="the producer to find the ring full")
        time.sleep(0.05)  # let it sit in write()
        kids.kill(prod)
        cons, crx = kids.start(read_until_peer_closed, ring.fd, wait)
        recv(crx)
        _, got, bad, _, msg = recv(crx)
        assert (got, bad) == (queued, [])
        assert "died" in msg
        st = ring.status()
        assert st.records_read == st.records_written == queued and st.used == 0

    @pytest.mark.parametrize("wait", WAITS)
    def test_blocked_reader_raises_soon_after_the_kill(self, ring, kids, wait):
        """A reader blocked in read() on an empty ring raises PeerClosedError soon after its producer is
        killed, having received every record written before."""
        cons, crx = kids.start(read_until_peer_closed, ring.fd, wait)
        recv(crx)
        prod, prx = kids.start(write_then, ring.fd, wait, 500, "idle")
        _, n, _ = recv(prx)
        until(lambda: ring.status().records_read == n, what="the reader to drain the ring")
        time.sleep(0.15)  # the reader is now blocked in read() (spinning, or parked on the futex)
        after_peer_check(ring, "consumer_beat_ns")
        t_kill = kids.kill(prod)
        _, got, bad, t_raise, msg = recv(crx)
        assert (got, bad) == (n, [])
        assert "died" in msg
        assert 0 <= _latency("producer killed, reader blocked", wait, t_kill, t_raise) < LATENCY_BOUND_NS

    @pytest.mark.parametrize(
        "api,wait", [("write", "spin"), ("write", "park"), ("write", "hybrid"), ("claim", "park"), ("packed", "hybrid")]
    )
    def test_kill_mid_stream_leaves_an_intact_prefix(self, ring, kids, api, wait):
        """A producer killed at an arbitrary moment while streaming leaves the reader an unbroken, intact
        prefix of the stream (never a torn record), then PeerClosedError."""
        cons, crx = kids.start(read_until_peer_closed, ring.fd, wait)
        recv(crx)
        prod, prx = kids.start(stream_forever, ring.fd, wait, api)
        recv(prx)
        until(lambda: ring.status().records_read > 20_000, what="the stream to get going")
        kids.kill(prod)
        _, got, bad, _, _ = recv(crx)
        assert bad == []
        st = ring.status()
        assert got == st.records_read > 20_000
        assert st.used == 0  # every byte the producer published was read

    def test_polling_reader_gets_queued_records_then_raises(self, ring, kids):
        """A reader that only polls with try_read() after its producer was killed gets every queued record,
        then PeerClosedError (not None forever) within a bounded time."""
        prod, prx = kids.start(fill_then_block, ring.fd, "hybrid")
        _, queued = recv(prx)
        kids.kill(prod)
        r = ring.reader()
        got, bad, t0 = 0, [], time.monotonic()
        with pytest.raises(PeerClosedError, match="died"):
            while time.monotonic() - t0 < 5:
                rec = r.try_read()
                if rec is not None:
                    bad += [] if is_record(rec, got) else [got]
                    got += 1
        assert (got, bad) == (queued, [])

    def test_half_written_claim_of_a_killed_producer_is_never_read(self, ring, kids):
        """Bytes a killed producer wrote into an uncommitted claim never reach the reader."""
        prod, prx = kids.start(write_then, ring.fd, "hybrid", 7, "claim")
        recv(prx)
        kids.kill(prod)
        cons, crx = kids.start(read_until_peer_closed, ring.fd, "hybrid")
        recv(crx)
        _, got, bad, _, _ = recv(crx)
        assert (got, bad) == (7, [])


class TestConsumerKilled:
    @pytest.mark.parametrize("wait", WAITS)
    def test_writer_blocked_on_full_ring_raises(self, ring, kids, wait):
        """A writer blocked in write() on a full ring raises PeerClosedError soon after its consumer is
        killed, and later writes raise too."""
        cons, crx = kids.start(read_then_stall, ring.fd, wait, 100, "idle")
        prod, prx = kids.start(write_until_peer_closed, ring.fd, wait)
        recv(prx)
        _, _, bad = recv(crx)
        assert bad == []
        until(lambda: ring.status().full_events > 0, what="the writer to find the ring full")
        time.sleep(0.15)  # the writer is now blocked in write()
        written = ring.status().records_written
        after_peer_check(ring, "producer_beat_ns")
        t_kill = kids.kill(cons)
        _, seq, t_raise, msg, after = recv(prx)
        assert seq == written  # it was blocked: nothing was written after the ring filled
        assert "died" in msg
        assert after == "PeerClosedError"
        assert 0 <= _latency("consumer killed, writer blocked", wait, t_kill, t_raise) < LATENCY_BOUND_NS


class TestCleanClose:
    @pytest.mark.parametrize("wait", WAITS)
    def test_writer_close_ends_the_stream_for_a_blocked_reader(self, ring, kids, wait):
        """When the producer closes its end (its process still alive), a reader blocked in read() gets every
        record and then PeerClosedError saying the producer closed."""
        cons, crx = kids.start(read_until_peer_closed, ring.fd, wait)
        recv(crx)
        prod, prx = kids.start(write_then, ring.fd, wait, 300, "close")
        _, n, t_close = recv(prx)
        _, got, bad, t_raise, msg = recv(crx)
        assert (got, bad) == (n, [])
        assert "closed" in msg
        assert prod.is_alive()
        assert 0 <= _latency("producer closed, reader blocked", wait, t_close, t_raise) < LATENCY_BOUND_NS

    @pytest.mark.parametrize("wait", WAITS)
    def test_reader_close_fails_a_blocked_writer(self, ring, kids, wait):
        """When the consumer closes its end (its process still alive), a writer blocked in write() on a full
        ring raises PeerClosedError saying the consumer closed, and so do later writes."""
        cons, crx = kids.start(read_then_stall, ring.fd, wait, 50, "close")
        prod, prx = kids.start(write_until_peer_closed, ring.fd, wait)
        recv(prx)
        _, _, bad = recv(crx)
        assert bad == []
        until(lambda: ring.status().full_events > 0, what="the writer to find the ring full")
        time.sleep(0.15)
        os.kill(cons.pid, signal.SIGUSR1)  # the consumer closes its reader and stays alive
        _, t_close = recv(crx)
        _, _, t_raise, msg, after = recv(prx)
        assert "closed" in msg
        assert after == "PeerClosedError"
        assert cons.is_alive()
        assert 0 <= _latency("consumer closed, writer blocked", wait, t_close, t_raise) < LATENCY_BOUND_NS


class TestTakeover:
    @pytest.mark.parametrize("wait", ["park", "hybrid"])
    def test_new_writer_process_continues_the_stream(self, ring, kids, wait):
        """After kill -9 of a producer (mid-claim), a new process takes over the producer end and continues
        the stream; the reader gets one unbroken, intact sequence."""
        cons, crx = kids.start(read_across_takeovers, ring.fd, wait, 1500)
        recv(crx)
        p1, p1rx = kids.start(write_then, ring.fd, wait, 700, "claim")
        recv(p1rx)
        with pytest.raises(RingBusyError):
            ring.writer()  # a live process holds the producer end
        kids.kill(p1)
        p2, p2rx = kids.start(write_then, ring.fd, wait, 800, "close", 700)
        recv(p2rx)
        _, got, bad, deaths = recv(crx)
        assert (got, bad) == (1500, [])
        st = ring.status()
        assert st.records_written == st.records_read == 1500
        assert st.producer_pid == p2.pid
        print(f"\ntakeover [{wait}]: reader saw the dead producer {deaths} time(s) before the new one")

    def test_new_reader_process_continues_the_stream(self, ring, kids):
        """After kill -9 of a consumer, a new process takes over the consumer end and reads on from the
        first record the dead one had not read; the writer, retrying, loses nothing."""
        c1, c1rx = kids.start(read_then_stall, ring.fd, "hybrid", 300, "idle")
        prod, prx = kids.start(write_across_takeovers, ring.fd, "hybrid", 1000)
        _, _, bad1 = recv(c1rx)
        assert bad1 == []
        with pytest.raises(RingBusyError):
            ring.reader()  # a live process holds the consumer end
        until(lambda: ring.status().full_events > 0, what="the writer to find the ring full")
        kids.kill(c1)
        c2, c2rx = kids.start(read_until_peer_closed, ring.fd, "hybrid", 300)
        recv(c2rx)
        _, got, bad, _, msg = recv(c2rx)
        assert (got, bad) == (700, [])
        assert "closed" in msg
        _, written, deaths = recv(prx)
        assert written == 1000
        st = ring.status()
        assert st.records_written == st.records_read == 1000
        print(f"\nreader takeover: writer saw the dead consumer {deaths} time(s) before the new one")


    def test_record_peeked_by_a_killed_reader_is_delivered_again(self, ring, kids):
        """A record a consumer had peeked but not released when it was killed goes to the next consumer:
        delivery is at least once, and nothing is skipped."""
        prod, prx = kids.start(write_then, ring.fd, "hybrid", 10, "close")
        recv(prx)
        c1, c1rx = kids.start(peek_and_hold, ring.fd, 4)
        _, bad = recv(c1rx)
        assert bad == []
        kids.kill(c1)
        c2, c2rx = kids.start(read_until_peer_closed, ring.fd, "hybrid", 4)
        recv(c2rx)
        _, got, bad, _, _ = recv(c2rx)
        assert (got, bad) == (6, [])  # seq 4 (held by the dead reader) again, then 5..9

    @pytest.mark.parametrize("end", ["writer", "reader"])
    def test_processes_racing_to_take_over_a_dead_end_one_wins(self, kids, end):
        """When several processes try at once to take over the end of a killed process, exactly one gets it
        and the others get RingBusyError, round after round."""
        for _ in range(8):
            ring = Ring.create(capacity=4096)
            try:
                holder, hrx = kids.start(open_end_and_idle, ring.fd, end)
                recv(hrx)
                kids.kill(holder)
                barrier = CTX.Barrier(3)
                racers = [kids.start(race_for_end, ring.fd, end, barrier) for _ in range(3)]
                outcomes = sorted(recv(rx)[1] for _, rx in racers)
                assert outcomes == ["busy", "busy", "won"]
            finally:
                ring.close()


class TestNamedRingOfKilledProcesses:
    def test_name_is_removed_and_nothing_left_in_dev_shm(self, shm_name, kids):
        """A named ring whose creator, producer and consumer were all killed stays in /dev/shm until this
        test unlinks it, after which nothing of it is left."""
        before = _our_segments()
        creator, rx = kids.start(_create_named_and_stream, shm_name)
        recv(rx)
        consumer, crx = kids.start(_attach_and_read, shm_name)
        recv(crx)
        until(lambda: _status_by_name(shm_name).records_read > 100, what="records to flow")
        for p in (creator, consumer):
            kids.kill(p)
        path = os.path.join(SHM_DIR, "edgepipe." + shm_name)
        assert os.path.exists(path)  # kill -9 runs no cleanup: the name outlives every process
        assert _our_segments() == before | {"edgepipe." + shm_name}
        ring = Ring.attach(shm_name)
        try:
            st = ring.status()
            for pid in (st.creator_pid, st.producer_pid, st.consumer_pid):
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
            ring.unlink()
        finally:
            ring.close()
        assert not os.path.exists(path)
        assert _our_segments() == before


def _our_segments() -> set[str]:
    """The /dev/shm entries of this test session's rings (shm_name embeds the pytest pid), so that test
    sessions running side by side on one box do not disturb the before/after comparison."""
    return {e for e in os.listdir(SHM_DIR) if e.startswith(f"edgepipe.t-{os.getpid()}-")}


def _create_named_and_stream(conn, name):
    ring = Ring.create(name, capacity=4096)
    w = ring.writer(wait="hybrid")
    conn.send(("created",))
    seq = 0
    while True:
        w.write(record(seq))
        seq += 1


def _attach_and_read(conn, name):
    ring = Ring.attach(name, wait_s=10)
    r = ring.reader(wait="park")
    conn.send(("open",))
    while True:
        r.read()


def _status_by_name(name):
    ring = Ring.attach(name)
    try:
        return ring.status()
    finally:
        ring.close()
