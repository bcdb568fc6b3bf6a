"""Starting a Python child process that imports the very edgepipe its parent runs.

``python -c`` and ``python -m`` put the current directory first on ``sys.path``. Run from a source checkout
next to an installed edgepipe (CI does exactly that: ``pip install .`` then ``edgepipe demo`` in the clone),
a child would import the checkout's ``edgepipe/``, which has no compiled core, and die on ``edgepipe._ffi``.
So every child edgepipe starts (stage processes, inference workers) puts its parent's package root ahead of
everything else before importing anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

# the directory that holds the parent's edgepipe package (site-packages, or a checkout for -e installs)
PKG_ROOT = str(Path(__file__).resolve().parents[1])


def python_argv(code: str, *args: str) -> list[str]:
    """argv that runs ``code`` in a new interpreter with the parent's edgepipe first on ``sys.path``;
    ``args`` arrive as ``sys.argv[1:]``."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {PKG_ROOT!r}); {code}", *args]
