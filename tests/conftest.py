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
    msg = f"{need} is not available here: apt-get install -y {apt_package}"
    if in_ci():
        pytest.fail(f"{msg} (CI=true: .ci/run installs it, so its absence is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(msg)


@pytest.fixture(name="require_system", scope="session")
def require_system_fixture():
    """:func:`require_system` for tests and fixtures: ``require_system("protoc-c", "protobuf-c-compiler")``."""
    return require_system
