"""Shared fixtures: a unique shm name per test, and a session-wide check that the suite leaves nothing
in /dev/shm (every named segment a test creates must be unlinked, whatever the test's outcome)."""

from __future__ import annotations

import os
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
    leaked = _edgepipe_segments() - before
    for e in leaked:
        os.unlink(os.path.join(SHM_DIR, e))
    assert not leaked, f"the test suite left shared memory segments behind: {sorted(leaked)}"
