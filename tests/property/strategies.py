"""Hypothesis strategies for the ring property tests: small capacities, record sizes biased to the edges
(empty, one byte, around the 8-byte alignment, the largest payload), payloads, type ids and batches.

Imported by the test modules in this directory (pytest puts the directory on sys.path; there is no package).
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

HDR = 8  # {u32 len; u32 type}
MAX_TYPE = 0xFFFFFFFE  # 0xFFFFFFFF marks padding
CAPACITIES = (64, 128, 256, 512, 1024)


def max_payload(capacity: int) -> int:
    """The largest payload a ring of ``capacity`` bytes takes: capacity/2 - 8."""
    return capacity // 2 - HDR


def rec_size(n: int) -> int:
    """Bytes a record of ``n`` payload bytes occupies: the header plus the payload rounded up to 8."""
    return HDR + (n + 7) // 8 * 8


def capacities() -> st.SearchStrategy[int]:
    """A small power-of-two capacity, so records wrap often."""
    return st.sampled_from(CAPACITIES)


def sizes(max_payload: int) -> st.SearchStrategy[int]:
    """A payload size in 0..max_payload, drawn half the time from the edges where off-by-ones live."""
    edges = sorted({n for n in (0, 1, 7, 8, 9, 15, 16, max_payload - 8, max_payload - 1, max_payload)
                    if 0 <= n <= max_payload})
    return st.one_of(st.sampled_from(edges), st.integers(0, max_payload))


def _bytes_of(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def payloads_of_size(n: int) -> st.SearchStrategy[bytes]:
    """Exactly ``n`` bytes: shrinkable binary for short payloads, seeded random bytes for long ones."""
    if n <= 32:
        return st.binary(min_size=n, max_size=n)
    return st.builds(_bytes_of, st.just(n), st.integers(0, 2**32 - 1))


def payloads(max_payload: int) -> st.SearchStrategy[bytes]:
    """A payload of 0..max_payload bytes with sizes biased to the edges."""
    return sizes(max_payload).flatmap(payloads_of_size)


def type_ids() -> st.SearchStrategy[int]:
    """A record type in 0..0xFFFFFFFE, often one of the edges."""
    return st.one_of(st.sampled_from([0, 1, MAX_TYPE]), st.integers(0, MAX_TYPE))


def batches(max_payload: int, max_len: int = 6) -> st.SearchStrategy[list[bytes]]:
    """A non-empty list of payloads for the batch writers."""
    return st.lists(payloads(max_payload), min_size=1, max_size=max_len)


def fixed_batches(max_payload: int, max_rows: int = 6) -> st.SearchStrategy[tuple[int, int, int]]:
    """(rows, row size, seed) for a 2-D uint8 array of fixed-size records."""
    return st.tuples(st.integers(1, max_rows), sizes(max_payload), st.integers(0, 2**32 - 1))
