"""Property tests for the Madgwick filter: whatever floats arrive (NaN, inf, zero, subnormal, huge), the
quaternion stays finite with unit norm, every sample is either applied or counted as skipped, and the batch
call agrees bit for bit with the per-sample call. Strategies are local: they concern no other module.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe.ahrs import Madgwick

# Mostly ordinary sensor values, with the awkward ones mixed in often enough to matter.
component = st.one_of(
    st.floats(-40.0, 40.0),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-310, 1e-200, 1e200, 1e300, -1e300]),
)
vec = st.tuples(component, component, component)
samples = st.lists(st.tuples(vec, vec, st.one_of(st.none(), vec)), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(samples, st.floats(0.0, 5.0), st.sampled_from([1.0, 50.0, 1000.0, 4000.0]))
def test_quaternion_stays_finite_and_unit(seq, beta, rate_hz):
    """After any sample sequence q is finite with unit norm, and updates + skipped equals the samples fed."""
    f = Madgwick(beta=beta, rate_hz=rate_hz)
    for g, a, m in seq:
        q = f.update(g, a, m)
        assert all(math.isfinite(v) for v in q)
        assert abs(math.fsum(v * v for v in q) - 1.0) < 1e-12
    assert f.updates + f.skipped_nonfinite == len(seq)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(vec, vec, vec), min_size=1, max_size=30), st.booleans())
def test_batch_equals_loop(seq, marg):
    """update_batch returns exactly the quaternions a loop of update calls returns, for any input."""
    gyr = np.array([s[0] for s in seq], dtype=np.float64)
    acc = np.array([s[1] for s in seq], dtype=np.float64)
    mag = np.array([s[2] for s in seq], dtype=np.float64) if marg else None
    f, g = Madgwick(beta=0.3, rate_hz=100.0), Madgwick(beta=0.3, rate_hz=100.0)
    batch = f.update_batch(gyr, acc, mag)
    loop = np.array([g.update(gyr[i], acc[i], None if mag is None else mag[i]) for i in range(len(seq))])
    assert np.array_equal(batch, loop)
    assert (f.updates, f.skipped_nonfinite, f.no_accel, f.no_mag) == (g.updates, g.skipped_nonfinite,
                                                                       g.no_accel, g.no_mag)
