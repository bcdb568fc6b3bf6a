"""tests/conftest.py's require_system: a missing system package is a skip naming the apt package, except
under CI=true, where .ci/run installs it and the same absence fails the test."""

from __future__ import annotations

import pytest

MISSING_TOOL = "edgepipe-no-such-tool-3f9c"
MISSING_HEADER = "edgepipe_no_such_dir/no_such_header.h"


class TestRequireSystem:
    @pytest.mark.parametrize("need", [MISSING_TOOL, MISSING_HEADER, "-fsanitize=edgepipe-no-such-sanitizer"])
    def test_missing_outside_ci_skips_naming_the_apt_package(self, require_system, monkeypatch, need):
        """Without CI (unset or false), a missing tool, header or sanitizer runtime skips with a reason that
        names what is missing and the apt-get command that installs it."""
        for ci in (None, "false"):
            if ci is None:
                monkeypatch.delenv("CI", raising=False)
            else:
                monkeypatch.setenv("CI", ci)
            with pytest.raises(pytest.skip.Exception) as e:
                require_system(need, "edgepipe-fake-pkg")
            assert str(e.value) == f"{need} is not available here: apt-get install -y edgepipe-fake-pkg"

    @pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
    def test_missing_under_ci_fails(self, require_system, monkeypatch, ci):
        """Under CI=true the same absence is a failure (not a skip), still naming the package."""
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception) as e:
            require_system(MISSING_TOOL, "edgepipe-fake-pkg")
        assert not isinstance(e.value, pytest.skip.Exception)
        assert "apt-get install -y edgepipe-fake-pkg" in str(e.value) and "CI=true" in str(e.value)

    def test_present_passes_in_and_out_of_ci(self, require_system, monkeypatch):
        """A tool that is there (sh) and a header every C compiler has (stddef.h) neither skip nor fail."""
        for ci in ("true", "false"):
            monkeypatch.setenv("CI", ci)
            assert require_system("sh", "dash") is None
            assert require_system("stddef.h", "gcc") is None

    def test_bad_argument(self, require_system):
        """An empty requirement is a ValueError naming it."""
        with pytest.raises(ValueError, match="''"):
            require_system("", "pkg")
