"""The pycon examples in the public docstrings run and print what they show."""

import doctest

import pytest

import edgepipe
import edgepipe.clock
import edgepipe.ring
import edgepipe.shm

MODULES = [edgepipe, edgepipe.clock, edgepipe.ring, edgepipe.shm]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    """Every docstring example in the module passes, and the module has at least one."""
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
