"""The kill -9 campaign (tests/stress/kill_campaign.py) over ring, frame, latest-slot and IMU-loop producers:
after every kill the consumer gets PeerClosedError (never a hang), nothing it received is corrupt, a lossless
ring shows no gap, and nothing is left in /dev/shm (the session fixture in conftest.py checks that).

The default suite runs a bounded campaign and asserts only what load cannot change plus a generous detection
bound (a loaded 2-core VM delays any process); the 100 ms p99 promise is asserted by the long campaign under
``-m stress``, and its figures are printed by ``python tests/stress/kill_campaign.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))
import kill_campaign  # noqa: E402


def _check(results, detect_p99_ms: float) -> None:
    for kind, r in results.items():
        s = r.summary()
        print(s)
        assert not r.notes, r.notes
        assert r.kills > 0 and r.received > 0, s
        assert r.undetected == 0, f"{kind}: {r.undetected} kills never turned into PeerClosedError: {s}"
        assert r.corrupt == 0, s
        assert r.gaps == 0, s
        assert s["detect_ms_p99"] <= detect_p99_ms, s


@pytest.mark.parametrize("kind", kill_campaign.KINDS)
def test_bounded_campaign(kind):
    """Four kills of this kind of producer: each detected (generous bound under load), none corrupt."""
    _check(kill_campaign.campaign((kind,), kills=4, seed=14), detect_p99_ms=2000.0)


@pytest.mark.stress
def test_long_campaign():
    """Fifty kills of every kind: detection within 100 ms at p99, nothing corrupt, no gap, nothing leaked."""
    _check(kill_campaign.campaign(kill_campaign.KINDS, kills=50, seed=None), detect_p99_ms=100.0)
