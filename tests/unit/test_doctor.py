"""`edgepipe doctor`'s checks find what is wrong and say how to fix it."""

from __future__ import annotations

import resource

from edgepipe.cli import doctor
from edgepipe.cli.doctor import DoctorCheck, run_doctor


class TestChecks:
    def test_this_machine_passes_the_hard_checks(self):
        """/dev/shm, memfd and futex work here: none of the checks fails."""
        checks = {c.name: c for c in run_doctor()}
        assert {"/dev/shm", "memfd", "futex", "memlock", "rtprio", "cpus", "clock", "segments", "onnxruntime",
                "opencv"} <= set(checks)
        assert checks["/dev/shm"].found.startswith("tmpfs")
        assert all(c.status != "fail" for c in checks.values()), checks

    def test_missing_shm_fails_with_a_fix(self, tmp_path):
        """A /dev/shm that does not exist fails and the fix says how to mount one."""
        c = doctor.check_shm(str(tmp_path / "nope"))
        assert c.status == "fail" and "mount -t tmpfs" in c.fix

    def test_shm_on_a_disk_warns(self, tmp_path):
        """A directory that is not on a tmpfs is a warning naming its filesystem type."""
        c = doctor.check_shm(str(tmp_path))
        fs = c.found.split(",")[0]
        assert (c.status == "warn" and "not tmpfs" in c.fix) if fs != "tmpfs" else c.status == "ok"

    def test_no_rtprio_warns(self, monkeypatch):
        """For a non-root user, rtprio 0 is a warning with the limits.conf line."""
        limits = {resource.RLIMIT_RTPRIO: (0, 0)}
        monkeypatch.setattr(doctor.resource, "getrlimit", lambda which: limits[which])
        monkeypatch.setattr(doctor.os, "geteuid", lambda: 1000)
        r = doctor.check_rtprio()
        assert r.status == "warn" and "rtprio" in r.fix and "CAP_SYS_NICE" in r.fix

    def test_memlock_gives_no_advice_edgepipe_cannot_use(self, monkeypatch):
        """edgepipe has no mlock option, so a small memlock limit is shown but is no warning, and doctor
        does not tell anyone to raise it."""
        import pathlib
        import re

        import edgepipe

        # the day the core locks memory (mlock/mlockall, MAP_LOCKED), doctor should advise on the limit again
        roots = [pathlib.Path(edgepipe.__file__).parent, pathlib.Path(edgepipe.__file__).parents[2] / "csrc"]
        calls = [f for r in roots if r.is_dir() for f in r.rglob("*") if f.suffix in (".py", ".c", ".h")
                 and f.name != "doctor.py" and re.search(r"\bmlock(all)?\(|MAP_LOCKED", f.read_text(errors="replace"))]
        assert not calls
        monkeypatch.setattr(doctor.resource, "getrlimit", lambda which: (65536, 65536))
        m = doctor.check_memlock()
        assert m.status == "ok" and not m.fix and "65536" in m.found
        assert "does not lock" in m.found

    def test_one_cpu_warns(self, monkeypatch):
        """A process limited to one CPU is told what that costs."""
        monkeypatch.setattr(doctor.os, "sched_getaffinity", lambda pid: {0})
        c = doctor.check_cpus()
        assert c.status == "warn" and c.found.startswith("1 usable")

    def test_a_broken_check_is_reported_not_raised(self, monkeypatch):
        """A check that raises shows up as failed; the others still run."""
        def boom() -> DoctorCheck:
            raise RuntimeError("kaput")

        boom.__name__ = "check_boom"
        monkeypatch.setattr(doctor, "CHECKS", (boom, doctor.check_memfd))
        out = run_doctor()
        assert out[0].name == "boom" and out[0].status == "fail" and "kaput" in out[0].found
        assert out[1].status == "ok"
