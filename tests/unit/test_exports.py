"""The public surface: ``edgepipe.__all__`` is sorted and complete, and every name in it is real."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil

import pytest

import edgepipe

# Every public module of the package, found rather than listed, so a new module is checked the day it lands.
# The CLI is an entry point, not API; edgepipe.control.messages is a namespace (``from edgepipe import messages as pb``),
# not flattened into edgepipe.
NOT_API = {"edgepipe.cli.main", "edgepipe.__main__", "edgepipe.control.messages"}
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(edgepipe.__path__, "edgepipe.")
    if not any(part.startswith("_") for part in m.name.split(".")[1:]) and m.name not in NOT_API
)


def _public_names(modname: str) -> set[str]:
    """Names a module offers: its ``__all__`` when it declares one (helpers its sibling modules share stay
    out of it), else every non-underscore class or function defined in it."""
    mod = importlib.import_module(modname)
    if hasattr(mod, "__all__"):
        return set(mod.__all__)
    names = set()
    for name, obj in vars(mod).items():
        if name.startswith("_"):
            continue
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == modname:
            names.add(name)
    return names


class TestAll:
    def test_all_is_sorted(self):
        """edgepipe.__all__ is in sorted order (case-sensitive, as ``sorted`` gives)."""
        assert edgepipe.__all__ == sorted(edgepipe.__all__)

    def test_all_has_no_duplicates(self):
        """No name appears twice in edgepipe.__all__."""
        assert len(edgepipe.__all__) == len(set(edgepipe.__all__))

    def test_every_name_exists(self):
        """Every name in edgepipe.__all__ is an attribute of the package."""
        missing = [n for n in edgepipe.__all__ if not hasattr(edgepipe, n)]
        assert not missing

    def test_star_import_gives_exactly_all(self):
        """``from edgepipe import *`` binds exactly the names in __all__."""
        ns: dict = {}
        exec("from edgepipe import *", ns)
        ns.pop("__builtins__", None)
        assert set(ns) == set(edgepipe.__all__)


class TestCompleteness:
    @pytest.mark.parametrize("modname", MODULES)
    def test_module_public_names_are_exported(self, modname):
        """Every public class or function of the module is exported from the package."""
        missing = sorted(_public_names(modname) - set(edgepipe.__all__))
        assert not missing, f"{modname} has public names not in edgepipe.__all__ (export or underscore them): {missing}"

    @pytest.mark.parametrize("modname", MODULES)
    def test_exported_names_are_the_module_objects(self, modname):
        """An exported name is the very object its module defines, not a copy or a shadow."""
        mod = importlib.import_module(modname)
        for name in _public_names(modname) & set(edgepipe.__all__):
            assert getattr(edgepipe, name) is getattr(mod, name), name

    @pytest.mark.parametrize("modname", MODULES)
    def test_module_all_names_exist(self, modname):
        """Every name in a module's own __all__ exists in that module."""
        mod = importlib.import_module(modname)
        for name in getattr(mod, "__all__", ()):
            assert hasattr(mod, name), f"{modname}.__all__ names {name!r}, which it lacks"


class TestVersion:
    def test_version_matches_metadata(self):
        """edgepipe.__version__ matches the installed distribution's version."""
        assert edgepipe.__version__ == importlib.metadata.version("edgepipe")


class TestExtras:
    """The core install is small: the optional dependencies load only where used, and a missing one is a
    typed error naming the extra to install."""

    def test_import_edgepipe_loads_no_extra(self):
        """A fresh interpreter's `import edgepipe` (and its CLI parser) imports no OpenCV, ONNX Runtime,
        onnx or matplotlib."""
        import subprocess
        import sys

        code = ("import sys, edgepipe; from edgepipe.cli.main import build_parser; build_parser(); "
                "print(sorted(m for m in ('cv2', 'onnxruntime', 'onnx', 'matplotlib') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.strip() == "[]"

    @pytest.mark.parametrize("module, extra, use", [
        ("cv2", "vision", "from edgepipe import CaptureStage, Ring, FrameWriter, sample_video; "
                          "r = Ring.create(capacity=1 << 24); "
                          "s = CaptureStage(sample_video(), FrameWriter(r.writer())); s.open()"),
        ("onnxruntime", "inference", "from edgepipe import TextDetector; TextDetector()"),
        ("matplotlib", "report", "from edgepipe import render_png; render_png({}, '/tmp/x.png')"),
    ])
    def test_missing_extra_names_the_install_command(self, module, extra, use):
        """With the module made unimportable, using the part that needs it raises MissingExtraError naming
        `pip install "edgepipe[<extra>]"` (an ImportError, so existing handlers still catch it)."""
        import subprocess
        import sys

        code = (f"import sys; sys.modules[{module!r}] = None\n"
                f"from edgepipe import MissingExtraError\n"
                f"try:\n    {use}\nexcept MissingExtraError as e:\n"
                f"    print('MISSING', e.extra, isinstance(e, ImportError), e)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.startswith(f"MISSING {extra} True"), r.stdout
        assert f'pip install "edgepipe[{extra}]"' in r.stdout
