"""Child processes import the parent's edgepipe, never an ``edgepipe/`` directory in their working directory
(CI installs with ``pip install .`` and runs the demo from the source checkout, whose package has no
compiled core)."""

from __future__ import annotations

import subprocess

import pytest

import edgepipe
from edgepipe import CheckStage, CounterStage, Pipeline
from edgepipe._child import python_argv


@pytest.fixture
def shadow_cwd(tmp_path, monkeypatch):
    """A working directory holding an ``edgepipe`` package that fails on import."""
    pkg = tmp_path / "edgepipe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('the shadow edgepipe in the cwd was imported')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


class TestShadowedCheckout:
    def test_python_argv_imports_the_parents_package(self, shadow_cwd):
        """A child started with python_argv imports the parent's edgepipe and receives its arguments."""
        out = subprocess.run(python_argv("import edgepipe; print(edgepipe.__file__, sys.argv[1:])", "a", "b"),
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert out.strip() == f"{edgepipe.__file__} ['a', 'b']"

    def test_plain_python_c_would_import_the_shadow(self, shadow_cwd):
        """The case python_argv exists for: plain ``python -c`` in that directory imports the shadow."""
        r = subprocess.run(python_argv("")[:1] + ["-c", "import edgepipe"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and "shadow edgepipe" in r.stderr

    def test_pipeline_stages_start_from_a_shadowed_cwd(self, shadow_cwd):
        """A supervised pipeline run from that directory starts its stage processes and delivers everything."""
        p = Pipeline([CounterStage("src", count=200, rate_hz=20000, outputs={"out": "raw"}),
                      CheckStage("sink", inputs={"in": "raw"})], stats_path=False)
        assert p.run() == 0
        assert p.stage_stats()["sink"]["ok"] == 200
