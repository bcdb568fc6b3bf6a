"""The pycon examples in the public docstrings run and print what they show."""

import doctest

import pytest

import edgepipe
import edgepipe.ahrs
import edgepipe.clock
import edgepipe.framing
import edgepipe.ring
import edgepipe.shm

MODULES = [edgepipe, edgepipe.ahrs, edgepipe.clock, edgepipe.framing, edgepipe.ring, edgepipe.shm]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    """Every docstring example in the module passes, and the module has at least one."""
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_transcript():
    """The pycon transcript in README.md runs as shown."""
    from pathlib import Path

    readme = Path(__file__).resolve().parents[2] / "README.md"
    result = doctest.testfile(str(readme), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5
    assert result.failed == 0
