"""Shared fixtures: a unique shm name per test, a session-wide check that the suite leaves nothing
in /dev/shm (every named segment a test creates must be unlinked, whatever the test's outcome), and
``require_system``, the one rule for tests that need a system (apt) package."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

SHM_DIR = "/dev/shm"


def _edgepipe_segments() -> set[str]:
    return {e for e in os.listdir(SHM_DIR) if e.startswith("edgepipe.")}


@pytest.fixture
def shm_name(request) -> str:
    """A segment name no other test (or earlier run) uses; unlinked after the test if still present."""
    name = f"t-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    path = os.path.join(SHM_DIR, "edgepipe." + name)
    if os.path.exists(path):
        os.unlink(path)
        pytest.fail(f"test left {path} behind")


@pytest.fixture(scope="session", autouse=True)
def no_segments_left_behind():
    """Nothing named edgepipe.* may be added to /dev/shm by the suite."""
    before = _edgepipe_segments()
    yield
    # Names made by the shm_name fixture carry the pid of the test session that made them: another session
    # running at the same time (a second copy of the suite, as the load tests do) owns its own.
    mine = f"edgepipe.t-{os.getpid()}-"
    leaked = {e for e in _edgepipe_segments() - before
              if e.startswith(mine) or not re.match(r"edgepipe\.t-\d+-", e)}
    for e in leaked:
        os.unlink(os.path.join(SHM_DIR, e))
    assert not leaked, f"the test suite left shared memory segments behind: {sorted(leaked)}"


@pytest.fixture(scope="session", autouse=True)
def wake_cache_in_tmp():
    """The measured futex-wake cost (edgepipe.wait) is cached under $XDG_CACHE_HOME: the suite (and the
    processes it starts) keeps its cache in a directory of its own, removed at the end, not in ~/.cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    d = tempfile.mkdtemp(prefix="edgepipe-test-cache-")
    os.environ["XDG_CACHE_HOME"] = d
    yield d
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
    shutil.rmtree(d, ignore_errors=True)


# -- system packages ------------------------------------------------------------------------------------------
def in_ci() -> bool:
    """True under CI=true (or 1): .ci/run installs every system package the suite needs there."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@functools.lru_cache(maxsize=None)
def _have(need: str) -> bool:
    cc = os.environ.get("CC", "gcc")
    if need.startswith("-f"):  # compiler flags, e.g. -fsanitize=thread: link an empty program with them
        if shutil.which(cc) is None:
            return False
        with tempfile.TemporaryDirectory(prefix="ep-probe-") as d:
            r = subprocess.run([cc, *need.split(), "-x", "c", "-", "-o", os.path.join(d, "probe")],
                               input="int main(void){return 0;}\n", capture_output=True, text=True)
        return r.returncode == 0
    if need.endswith(".h"):  # a header the C compiler finds on its include path
        if shutil.which(cc) is None:
            return False
        r = subprocess.run([cc, "-E", "-x", "c", "-", "-o", os.devnull], input=f"#include <{need}>\n",
                           capture_output=True, text=True)
        return r.returncode == 0
    return shutil.which(need) is not None


def require_system(need: str, apt_package: str) -> None:
    """Skip the calling test unless ``need`` is on this machine, naming the apt package that provides it;
    under CI=true the same absence fails the test instead, because .ci/run installs the package there.

    Args:
        need: an executable on PATH (``"protoc-c"``), a header the C compiler finds
            (``"protobuf-c/protobuf-c.h"``), or compiler flags starting with ``-f`` (``"-fsanitize=thread"``,
            checked by linking an empty program, which needs the sanitizer's runtime library).
        apt_package: the Debian package(s) to install, e.g. ``"libtsan2"``.
    """
    if not isinstance(need, str) or not need.strip():
        raise ValueError(f"need must be a command, a header or -f flags, got {need!r}")
    if _have(need):
        return
    skip_unless_ci(f"{need} is not available here: apt-get install -y {apt_package}")


def skip_unless_ci(msg: str) -> None:
    """Skip the calling test with ``msg``, except under CI=true, where .ci/run provides what is missing
    (packages, root, namespaces, mounts), so the same absence fails the test instead."""
    if in_ci():
        pytest.fail(f"{msg} (CI=true: .ci/run provides it, so its absence is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(msg)


@pytest.fixture(name="skip_unless_ci", scope="session")
def skip_unless_ci_fixture():
    """:func:`skip_unless_ci` for tests and fixtures: ``skip_unless_ci("cannot mount a tmpfs here: ...")``."""
    return skip_unless_ci


@pytest.fixture(name="require_system", scope="session")
def require_system_fixture():
    """:func:`require_system` for tests and fixtures: ``require_system("protoc-c", "protobuf-c-compiler")``."""
    return require_system


def run_in_pty(argv: list[str], wait_for: bytes, then_type: bytes, timeout_s: float = 30.0):
    """Run ``argv`` with a pseudo-terminal as its stdin, stdout and stderr (as a user's shell would), wait
    until its output shows ``wait_for``, type ``then_type`` and wait for it to exit. Returns (exit status or
    None when it did not exit within ``timeout_s``: it is then killed, output, whether the terminal was back
    in canonical mode after it exited). ``timeout_s`` is only a hang guard."""
    import os
    import pty
    import select
    import subprocess
    import termios

    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="160", LINES="60", TERM="xterm")
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    out = b""
    deadline = time.monotonic() + timeout_s
    typed = False
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
            if not typed and wait_for in out:
                os.write(master, then_type)
                typed = True
        try:
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        canonical = bool(termios.tcgetattr(slave)[3] & termios.ICANON)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    return code, out.decode(errors="replace"), canonical


@pytest.fixture(name="run_in_pty")
def run_in_pty_fixture():
    """:func:`run_in_pty` for tests."""
    return run_in_pty


# -- asyncio ----------------------------------------------------------------------------------------------------
@pytest.hookimpl(optionalhook=True)  # a venv without pytest-asyncio (.ci/run's floor venv) has no such hook
def pytest_asyncio_loop_factories(config, item):
    """Every asyncio test runs on the stdlib loop and on uvloop (the ``test`` extra installs both)."""
    import asyncio

    import uvloop

    return {"stdlib": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
