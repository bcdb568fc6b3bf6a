"""The single cffi build script (API mode). setuptools runs it through ``cffi_modules``; nothing imports it
at runtime.

The cdef is derived from ``edgepipe.h`` rather than typed out a second time: the per-area headers it
includes (``#include "ep_<area>.h"``) are inlined, include guards and system includes are dropped, and
every ``#define NAME value`` becomes ``#define NAME ...`` so the compiler fills in the value. API mode then checks each declaration against the real header, so the two can
never drift apart.
"""

import re
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).parent  # relative on purpose: setuptools runs us from the project root
SOURCES = ("ep_ring.c", "ep_latest.c", "ep_peer.c", "ep_wait.c", "ep_wait_calib.c", "ep_shm.c", "ep_clock.c",
           "ep_frame.c", "ep_ahrs.c", "ep_imu.c", "ep_async.c")


def cdef_from_header(text: str) -> str:
    """Turn edgepipe.h into cdef text: inline the area headers it includes (``#include "ep_*.h"``),
    drop guards and system includes, make constants ``...``."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        inc = re.match(r'#include\s+"(ep_[a-z0-9_]+\.h)"', stripped)
        if inc and inc.group(1) != "ep_atomic.h":
            out.append(cdef_from_header((CSRC / inc.group(1)).read_text()))
            continue
        if stripped.startswith(("#ifndef", "#endif", "#include")) or re.match(r"#define\s+\w+_H\s*$", stripped):
            continue
        m = re.match(r"#define\s+(EP_[A-Z0-9_]+)\s+\S", stripped)
        if m:
            out.append(f"#define {m.group(1)} ...")
            continue
        out.append(line)
    return "\n".join(out)


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header((CSRC / "edgepipe.h").read_text()))
ffibuilder.set_source(
    "edgepipe._ffi",
    '#include "edgepipe.h"',
    sources=[str(CSRC / f) for f in SOURCES],
    include_dirs=[str(CSRC)],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
