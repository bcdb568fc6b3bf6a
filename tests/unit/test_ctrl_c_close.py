"""Ctrl-C while a thread is parked in a blocking ring call, then close() on the way out (the shape of every
example's ``try: ... except KeyboardInterrupt: ... finally: reader.close()``): the close returns at once.

The signal's Python handler raises KeyboardInterrupt as the C call returns EINTR, between the call and the
bookkeeping after it; close() waits for calls in flight on the handle, so that bookkeeping must run anyway
(a frame_consumer.py that printed "stopped (Ctrl-C)" and then hung forever in close() found it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

_CHILD = r"""
import faulthandler, sys; faulthandler.dump_traceback_later(60, exit=True)
import edgepipe.ring
from edgepipe import Ring
call = sys.argv[1]
edgepipe.ring._SLICE_NS = 30 * 10**9            # the whole wait is the calls' first slice, where it broke
ring = Ring.create(capacity=4096)
w, r = ring.writer(), ring.reader()
if call in ("write", "wait_room"):
    while w.try_write(b"x" * 100):
        pass                                    # full: the next write waits for room
print("blocking", flush=True)
try:
    if call == "read":
        r.read()
    elif call == "wait":
        r.wait()
    elif call == "write":
        w.write(b"x" * 100)
    else:
        w.wait_room(100)
    print("returned?", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
finally:
    r.close()
    w.close()
    ring.close()
print("closed", flush=True)
"""


@pytest.mark.parametrize("call", ["read", "wait", "write", "wait_room"])
def test_close_after_ctrl_c_in_a_blocking_call_returns(call):
    p = subprocess.Popen([sys.executable, "-c", _CHILD, call], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "blocking"
        time.sleep(0.3)                         # into the C wait (a signal before it still ends the call)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=90)    # a hang guard only: faulthandler ends a hung child at 60 s
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err[-3000:]
    assert out.split() == ["interrupted", "closed"], out + err[-3000:]
