"""What the atheris harnesses in tests/fuzz share: the command line (``--write-seeds DIR`` writes the seed
corpus, anything else goes to libFuzzer) and instrumenting only the edgepipe modules a target exercises.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import atheris


def _edgepipe_modules() -> list[str]:
    """Every module name of the edgepipe package, found on disk (importing edgepipe would import it all
    uninstrumented)."""
    root = importlib.util.find_spec("edgepipe").submodule_search_locations[0]
    names = []
    for d, _, files in os.walk(root):
        pkg = ".".join(["edgepipe", *os.path.relpath(d, root).split(os.sep)]).removesuffix(".")
        for f in files:
            if f.endswith(".py"):
                names.append(pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}")
    return names


def instrument(*keep: str):
    """``atheris.instrument_imports`` over the edgepipe modules whose names start with one of ``keep``: the
    whole package (edgepipe/__init__ imports most of it) takes ~3 s to instrument, a few modules well
    under one. Nothing at all when the process only writes seeds."""
    if "--write-seeds" in sys.argv:
        return contextlib.nullcontext()
    skip = [m for m in _edgepipe_modules() if not m.startswith(keep)]
    return atheris.instrument_imports(include=["edgepipe"], exclude=skip)


def main(test_one_input, seeds) -> None:
    """Run the harness: ``--write-seeds DIR`` writes ``seeds()`` (name -> bytes) there, anything else runs
    libFuzzer."""
    args = sys.argv
    if "--write-seeds" in args:
        corpus = args[args.index("--write-seeds") + 1]
        for name, blob in seeds().items():
            with open(os.path.join(corpus, name), "wb") as f:
                f.write(blob)
        return
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
