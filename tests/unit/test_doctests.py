"""The pycon examples in the public docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import edgepipe

# Every public module, found rather than listed: a new module needs at least one pycon example.
# errors (a tree in prose) and cli (an entry point, tested in test_cli) are the exceptions.
NO_EXAMPLES = {"edgepipe.errors", "edgepipe.cli.main", "edgepipe.__main__"}
MODULES = [edgepipe] + [
    importlib.import_module(m.name)
    for m in sorted(pkgutil.walk_packages(edgepipe.__path__, "edgepipe."), key=lambda m: m.name)
    if not any(part.startswith("_") for part in m.name.split(".")[1:]) and m.name not in NO_EXAMPLES
]


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
