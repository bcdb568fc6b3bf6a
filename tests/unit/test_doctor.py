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

    def test_low_memlock_and_no_rtprio_warn(self, monkeypatch):
        """A small memlock limit and, for a non-root user, rtprio 0 are warnings with the limits.conf line."""
        limits = {resource.RLIMIT_MEMLOCK: (65536, 65536), resource.RLIMIT_RTPRIO: (0, 0)}
        monkeypatch.setattr(doctor.resource, "getrlimit", lambda which: limits[which])
        monkeypatch.setattr(doctor.os, "geteuid", lambda: 1000)
        m, r = doctor.check_memlock(), doctor.check_rtprio()
        assert m.status == "warn" and "memlock unlimited" in m.fix and "65536" in m.found
        assert r.status == "warn" and "rtprio" in r.fix and "CAP_SYS_NICE" in r.fix

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
