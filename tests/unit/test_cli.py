"""The edgepipe command: ls, status and cleanup of named rings."""

import os
import subprocess
import sys

from edgepipe import Ring
from edgepipe.cli import main

SHM = "/dev/shm/edgepipe."


class TestCleanup:
    def test_removes_ring_whose_processes_are_dead(self, shm_name, capsys):
        """A named ring created by a process that has exited is unlinked by cleanup."""
        code = f"from edgepipe import Ring; r = Ring.create({shm_name!r}, capacity=4096); r.writer(); r.close()"
        subprocess.run([sys.executable, "-c", code], check=True)
        assert os.path.exists(SHM + shm_name)
        assert main(["cleanup"]) == 0
        assert not os.path.exists(SHM + shm_name)
        assert f"removed  {shm_name}" in capsys.readouterr().out

    def test_keeps_ring_of_a_live_process(self, shm_name, capsys):
        """A ring whose creator is this (live) process survives cleanup."""
        ring = Ring.create(shm_name, capacity=4096)
        try:
            assert main(["cleanup"]) == 0
            assert os.path.exists(SHM + shm_name)
            assert "kept" in capsys.readouterr().out
        finally:
            ring.unlink()
            ring.close()

    def test_dry_run_removes_nothing(self, shm_name, capsys):
        """cleanup -n names the dead ring but leaves it in place."""
        code = f"from edgepipe import Ring; Ring.create({shm_name!r}, capacity=4096).close()"
        subprocess.run([sys.executable, "-c", code], check=True)
        try:
            assert main(["cleanup", "--dry-run"]) == 0
            assert f"would remove {shm_name}" in capsys.readouterr().out
            assert os.path.exists(SHM + shm_name)
        finally:
            os.unlink(SHM + shm_name)


class TestListing:
    def test_ls_and_status_show_the_ring(self, shm_name, capsys):
        """ls lists a named ring with its capacity; status prints its control block."""
        with Ring.create(shm_name, capacity=8192) as ring:
            ring.writer().try_write(b"x")
            assert main(["ls"]) == 0
            out = capsys.readouterr().out
            assert shm_name in out and "capacity=8192" in out and "queued=1" in out
            assert main(["status", shm_name]) == 0
            out = capsys.readouterr().out
            assert "records_written    1" in out

    def test_status_of_missing_ring_fails(self, shm_name, capsys):
        """status of a name that does not exist exits 1 and names it."""
        assert main(["status", shm_name]) == 1
        assert shm_name in capsys.readouterr().err
