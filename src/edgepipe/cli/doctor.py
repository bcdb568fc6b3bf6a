"""``edgepipe doctor``: check what edgepipe needs from this machine and say what to fix.

Each check returns a :class:`DoctorCheck` with a status (``ok``, ``warn``, ``fail``), what was found and, when it
is not ok, the fix. ``fail`` means edgepipe cannot work as is (no /dev/shm, no memfd, no futex); ``warn``
means it works with less (no real-time priority, one CPU, no OpenCV FFMPEG backend).

>>> c = check_memfd()
>>> c.name, c.status
('memfd', 'ok')
"""

from __future__ import annotations

import errno
import os
import resource
import time
from dataclasses import dataclass

__all__ = ["DoctorCheck", "run_doctor"]

_MIB = 1 << 20


@dataclass(frozen=True)
class DoctorCheck:
    """One finding: ``status`` is ok, warn or fail; ``fix`` says what to do when it is not ok."""

    name: str
    status: str
    found: str
    fix: str = ""


def _limit(v: int) -> str:
    return "unlimited" if v == resource.RLIM_INFINITY else str(v)


def check_shm(path: str = "/dev/shm") -> DoctorCheck:
    """/dev/shm exists, is a tmpfs, and has room (named rings live there; memfd rings count against RAM)."""
    try:
        st = os.statvfs(path)
    except OSError as e:
        return DoctorCheck("/dev/shm", "fail", f"{path}: {e.strerror}",
                     "mount a tmpfs there: mount -t tmpfs -o size=512m tmpfs /dev/shm (in Docker: --shm-size=512m)")
    fstype, best = "?", ""
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1] if len(parts) > 2 else ""
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):  # the longest mount point holding the path
                    fstype, best = parts[2], mnt
    except OSError:
        pass
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    found = f"{fstype}, {size // _MIB} MiB, {free // _MIB} MiB free"
    if fstype not in ("tmpfs", "?"):
        return DoctorCheck("/dev/shm", "warn", found, f"{path} is {fstype}, not tmpfs: named rings would hit the disk")
    if size < 64 * _MIB or free < 32 * _MIB:
        return DoctorCheck("/dev/shm", "warn", found,
                     "grow it: mount -o remount,size=512m /dev/shm (Docker: --shm-size=512m)")
    return DoctorCheck("/dev/shm", "ok", found)


def check_memlock() -> DoctorCheck:
    """RLIMIT_MEMLOCK, for information: edgepipe never mlocks its rings (there is no option that would), so
    no limit is a problem for it and there is nothing to fix; programs that lock memory themselves need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return DoctorCheck("memlock", "ok", f"soft {_limit(soft)}, hard {_limit(hard)} bytes "
                                        "(edgepipe does not lock rings in RAM, so any limit does)")


def check_rtprio() -> DoctorCheck:
    """RLIMIT_RTPRIO: the IMU loop asks for SCHED_FIFO when given a priority."""
    soft, hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    found = f"soft {_limit(soft)}, hard {_limit(hard)}" + (", running as root" if os.geteuid() == 0 else "")
    if os.geteuid() != 0 and soft == 0:
        return DoctorCheck("rtprio", "warn", found,
                     "for real-time IMU loops: /etc/security/limits.conf `<user> - rtprio 90`, or give the "
                     "process CAP_SYS_NICE (Docker: --cap-add SYS_NICE --ulimit rtprio=90)")
    return DoctorCheck("rtprio", "ok", found)


def check_memfd() -> DoctorCheck:
    """memfd_create works (supervised pipelines put every ring in a memfd)."""
    from edgepipe.errors import EdgepipeError
    from edgepipe.shm import SharedRegion

    try:
        SharedRegion.anonymous(4096, "edgepipe-doctor").close()
    except (OSError, EdgepipeError) as e:
        return DoctorCheck("memfd", "fail", f"memfd_create failed: {e}", "edgepipe needs Linux >= 3.17 with memfd_create")
    return DoctorCheck("memfd", "ok", "memfd_create works")


def check_futex() -> DoctorCheck:
    """A parked ring wait (FUTEX_WAIT with a deadline) times out when it should."""
    from edgepipe.errors import EdgepipeError, RingTimeoutError
    from edgepipe.ring import Ring

    try:
        with Ring.create(None, 4096) as ring:
            r = ring.reader(wait="park")
            t0 = time.monotonic()
            try:
                r.read(timeout_s=0.02)
            except RingTimeoutError:
                pass
            waited = time.monotonic() - t0
    except (OSError, EdgepipeError) as e:
        code = getattr(e, "errno", None)
        why = "futex is not available (ENOSYS)" if code == errno.ENOSYS else str(e)
        return DoctorCheck("futex", "fail", why, "edgepipe needs futex(2) with FUTEX_WAIT_BITSET (any Linux >= 2.6.25)")
    if not 0.015 <= waited < 0.5:
        return DoctorCheck("futex", "warn", f"a 20 ms parked wait took {waited * 1e3:.1f} ms",
                     "the machine is overloaded or timers are coarse; latency numbers will be noisy")
    return DoctorCheck("futex", "ok", f"a 20 ms parked wait took {waited * 1e3:.1f} ms")


def check_wake() -> DoctorCheck:
    """What one parked (futex) wake costs here, measured now, and the default hybrid spin derived from it
    (the measurement also refreshes the per-boot cache that ring ends read; see edgepipe.wait)."""
    from edgepipe.wait import cache_path, wake_cost

    c = wake_cost(refresh=True)
    found = f"one futex wake {c.wake_ns / 1e3:.1f} us ({c.source}): default hybrid spin {c.spin_ns / 1e3:.1f} us"
    if c.source == "fallback":
        return DoctorCheck("wake", "warn", f"{found}; {c.detail}",
                           "the hybrid policy uses the 25 us constant; pass WaitPolicy('hybrid', spin_ns) to tune it")
    return DoctorCheck("wake", "ok", f"{found}; cached in {cache_path()}")


def check_cpus() -> DoctorCheck:
    """CPUs this process may run on: a pipeline wants one per busy stage."""
    n = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = n
    found = f"{usable} usable of {n}"
    if usable < 2:
        return DoctorCheck("cpus", "warn", found, "one CPU: stages take turns, expect latency from scheduling "
                                            "(give the container more CPUs: --cpus=2 or more)")
    return DoctorCheck("cpus", "ok", found)


def check_clock() -> DoctorCheck:
    """CLOCK_MONOTONIC_RAW has nanosecond resolution (every stamp uses it)."""
    res = time.clock_getres(time.CLOCK_MONOTONIC_RAW)
    if res > 1e-6:
        return DoctorCheck("clock", "warn", f"CLOCK_MONOTONIC_RAW resolution {res * 1e9:.0f} ns",
                     "a coarse clock blurs sub-microsecond latencies; check the clocksource (tsc is best)")
    return DoctorCheck("clock", "ok", f"CLOCK_MONOTONIC_RAW resolution {res * 1e9:.0f} ns")


def check_onnxruntime() -> DoctorCheck:
    """ONNX Runtime and its execution providers (the inference stage)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return DoctorCheck("onnxruntime", "warn", f"not importable: {e}", "pip install onnxruntime (the inference stage needs it)")
    providers = ort.get_available_providers()
    return DoctorCheck("onnxruntime", "ok", f"{ort.__version__}, providers: {', '.join(providers)}")


def check_opencv() -> DoctorCheck:
    """OpenCV and its video I/O backends (the capture stage decodes files through FFMPEG, cameras through V4L2)."""
    try:
        import cv2
    except ImportError as e:
        return DoctorCheck("opencv", "warn", f"not importable: {e}", "pip install opencv-python-headless (the capture stage needs it)")
    try:
        from cv2 import videoio_registry as vr

        backends = list(dict.fromkeys(vr.getBackendName(b) for b in vr.getBackends()))
    except (ImportError, AttributeError, cv2.error):
        backends = []
    found = f"{cv2.__version__}, video backends: {', '.join(backends) or 'unknown'}"
    if backends and "FFMPEG" not in backends:
        return DoctorCheck("opencv", "warn", found, "no FFMPEG backend: video files will not open; use opencv-python-headless from PyPI")
    return DoctorCheck("opencv", "ok", found)


def check_segments() -> DoctorCheck:
    """Named segments left in /dev/shm by processes that are gone."""
    from edgepipe.cli._segments import alive, ring_pids, segment_status
    from edgepipe.shm import list_segments

    stale = []
    for name in list_segments():
        s = segment_status(name)
        if not isinstance(s, str) and not any(alive(p) for p in ring_pids(s)):
            stale.append(name)
    if stale:
        return DoctorCheck("segments", "warn", f"{len(stale)} stale: {', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}",
                     "remove them: edgepipe cleanup --yes")
    return DoctorCheck("segments", "ok", "no stale named segments")


CHECKS = (check_shm, check_memfd, check_futex, check_wake, check_memlock, check_rtprio, check_cpus, check_clock,
          check_segments, check_onnxruntime, check_opencv)


def run_doctor() -> list[DoctorCheck]:
    """Every check, in order; a check that raises is reported as failed rather than stopping the rest."""
    out = []
    for fn in CHECKS:
        try:
            out.append(fn())
        except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
            out.append(DoctorCheck(fn.__name__.removeprefix("check_"), "fail", f"the check itself failed: {e!r}"))
    return out
