"""Build a C test harness from tests/c/ with the core's csrc/ files and run it, plain or under a sanitizer.

Imported by the harness tests in this directory (pytest puts the directory on sys.path; there is no package).

TSan and ASLR: the TSan runtime needs its fixed shadow layout, and on kernels with a large
``vm.mmap_rnd_bits`` (28+, e.g. 6.x) older runtimes abort with "FATAL: ThreadSanitizer: unexpected memory
mapping". :func:`run_tsan` then retries once under ``setarch -R`` (ASLR off for that process only), which is
the documented workaround, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
HARNESSES = ROOT / "tests" / "c"
# The csrc/ files a ring (or latest slot) harness links: the structure plus presence (ep_peer.c) and the
# eventcount (ep_wait.c) they share, the segment helpers and the clock.
RING_CORE = ("ep_ring.c", "ep_peer.c", "ep_wait.c", "ep_async.c", "ep_shm.c", "ep_clock.c")
LATEST_CORE = ("ep_latest.c", "ep_peer.c", "ep_wait.c", "ep_async.c", "ep_shm.c", "ep_clock.c")
TSAN_FLAGS = ["-std=gnu11", "-O1", "-g", "-fsanitize=thread", "-pthread", f"-I{CSRC}"]
PLAIN_FLAGS = ["-std=gnu11", "-O2", "-g", "-pthread", "-Wall", "-Wextra", f"-I{CSRC}"]
# AddressSanitizer + UBSan: any report aborts the run (-fno-sanitize-recover), leaks included.
ASAN_FLAGS = ["-std=gnu11", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
              "-fno-omit-frame-pointer", "-pthread", "-Wall", "-Wextra", f"-I{CSRC}"]


def sources(harness: str, *csrc: str) -> list[str]:
    """tests/c/<harness> followed by the named csrc/ files."""
    return [str(HARNESSES / harness), *(str(CSRC / f) for f in csrc)]


def build(tmp_path: Path, name: str, flags: list[str], srcs: list[str], libs: tuple[str, ...] = ()) -> Path:
    """Compile ``srcs`` with ``$CC`` (default gcc) into ``tmp_path/name``; a failed build fails the test."""
    out = tmp_path / name
    cc = os.environ.get("CC", "gcc")
    r = subprocess.run([cc, *flags, *srcs, *libs, "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, f"building {name} failed:\n{r.stderr}"
    return out


def run(exe: Path, *args, timeout: float, env: dict | None = None, prefix: list[str] | None = None):
    """Run the harness with its arguments, capturing its output."""
    cmd = [*(prefix or []), str(exe), *(str(a) for a in args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def run_tsan(exe: Path, *args, options: str, timeout: float):
    """Run a TSan build with ``TSAN_OPTIONS=options``, once more under ``setarch -R`` if the runtime refused
    the memory layout (see the module docstring)."""
    env = dict(os.environ, TSAN_OPTIONS=options)
    r = run(exe, *args, timeout=timeout, env=env)
    if "unexpected memory mapping" in r.stderr and shutil.which("setarch"):
        r = run(exe, *args, timeout=timeout, env=env, prefix=["setarch", os.uname().machine, "-R"])
    return r
