"""Instruction counts of the Python hot paths, for before/after comparisons that noise cannot move.

Run N iterations under callgrind twice (two N) and divide the difference, so interpreter start-up cancels:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/a.out python benchmarks/callgrind_hot.py ring 20000
    valgrind --tool=callgrind --callgrind-out-file=/tmp/b.out python benchmarks/callgrind_hot.py ring 120000
    # instructions per iteration = (Collected of b - Collected of a) / 100000

Cases: ``ring`` (try_write + try_read of a 64-byte record), ``frame`` (write_frame + read_frame of a 48x64x3
uint8 frame through a frame ring). Compare two checkouts by pointing PYTHONPATH at each one's package.
"""

from __future__ import annotations

import sys

import numpy as np

from edgepipe import FrameReader, FrameWriter, Ring


def main(argv: list[str]) -> int:
    case, n = argv[0], int(argv[1])
    if case == "ring":
        with Ring.create(capacity=1 << 20) as ring:
            w, r = ring.writer(), ring.reader()
            rec = bytes(64)
            for _ in range(n):
                w.try_write(rec)
                r.try_read()
    elif case == "frame":
        src = np.zeros((48, 64, 3), np.uint8)
        with Ring.create(capacity=1 << 20) as ring:
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            for _ in range(n):
                w.write_frame(src)
                with r.read_frame(0):
                    pass
    else:
        print(f"unknown case {case!r}: ring or frame", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
