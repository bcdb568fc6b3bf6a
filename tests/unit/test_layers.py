"""The package's layers, read from the source with ``ast`` (imports inside functions included).

Top to bottom: ``cli`` -> ``testing`` -> ``record`` / ``bridge`` / ``view`` -> ``pipeline`` -> ``stages`` -> ``control`` and the handle modules -> ``_ffi``
(ARCHITECTURE.md). The rules: no import runs up a layer; no cycle between modules; only the handle modules
import ``_ffi``, and each C object (``ep_<area>_*``) is driven by exactly one of them; no module imports
another module's private name; a module over 600 lines says in its docstring why it is one piece.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import edgepipe

PKG = Path(edgepipe.__file__).resolve().parent
SRC = PKG.parent

# rank of each layer: an import may only go to the same rank or a lower one
LAYERS = {"_ffi": 0, "handles": 1, "control": 1, "stages": 2, "pipeline": 3, "record": 4, "bridge": 4, "view": 4, "testing": 5, "cli": 6,
          "top": 7}
# the modules that may drive the C core, and the ep_<area>_ functions each one owns
HANDLES = {
    "edgepipe.clock": {"clock"},
    "edgepipe.shm": {"shm", "memfd"},
    "edgepipe.ring": {"ring"},
    "edgepipe._image": set(),
    "edgepipe._segment": set(),
    "edgepipe.latest": {"latest"},
    "edgepipe.wait": {"wait"},
    "edgepipe.frames": set(),
    "edgepipe.ahrs": {"ahrs"},
    "edgepipe.imu_loop": {"imu"},
    "edgepipe.control.framing": {"frame"},
    "edgepipe._handle": set(),
    "edgepipe.aio": {"async"},
}
MAX_LINES = 600
# The compiled modules, both at the bottom layer: the cffi core, and edgepipe._fast (csrc/py_fast.c), the
# CPython extension that runs the ring's try calls with the GIL kept. _fast is C with no logic of its own: it
# calls _ffi's functions through addresses the owning handle module hands it (``ffi.addressof(lib,
# "ep_ring_...")``, counted below as that module calling them), so it sits beside _ffi, not among the
# handles, and like _ffi only handle modules may import it.
COMPILED = {"edgepipe._ffi", "edgepipe._fast"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if "_proto" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def layer(mod: str) -> str:
    parts = mod.split(".")
    if mod in ("edgepipe", "edgepipe.__main__"):
        return "top"
    if mod in COMPILED:
        return "_ffi"
    if parts[1] in ("cli", "pipeline", "record", "bridge", "view", "stages", "control", "testing"):
        return parts[1]
    return "handles"


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    pkg = mod.split(".") if MODULES[mod].name == "__init__.py" else mod.split(".")[:-1]
    base = pkg[: len(pkg) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mod: str) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every edgepipe import in ``mod``."""
    tree = ast.parse(MODULES[mod].read_text(), str(MODULES[mod]))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "edgepipe"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, node)
            if target.split(".")[0] != "edgepipe":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES or sub in COMPILED:
                    out.append((sub, None, node.lineno))  # `from pkg import module`
                else:
                    out.append((target, a.name, node.lineno))
    return out


def _edges() -> dict[str, set[str]]:
    return {m: {t for t, _n, _l in imports(m)} - {m} for m in MODULES}


class TestLayers:
    @pytest.mark.parametrize("mod", sorted(MODULES))
    def test_no_import_runs_up_a_layer(self, mod):
        """Every edgepipe import of the module goes to its own layer or one below it."""
        up = [f"line {line}: {t}" for t, _n, line in imports(mod)
              if LAYERS[layer(t)] > LAYERS[layer(mod)]]
        assert not up, f"{mod} ({layer(mod)}) imports up a layer: {up}"

    def test_no_cycles(self):
        """The module import graph has no cycle (a package's own __init__ importing its children excepted
        only in that direction)."""
        edges = _edges()
        cycles = []
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(m: str) -> None:
            state[m] = 1
            stack.append(m)
            for t in sorted(edges.get(m, ())):
                if t not in MODULES:
                    continue
                if state.get(t) == 1:
                    cycles.append(stack[stack.index(t):] + [t])
                elif t not in state:
                    visit(t)
            stack.pop()
            state[m] = 2

        for m in sorted(edges):
            if m not in state:
                visit(m)
        assert not cycles, f"import cycles: {cycles}"

    def test_only_handle_modules_import_ffi(self):
        """edgepipe._ffi and edgepipe._fast are imported by the handle modules (and the control plane's framing
        handle) only."""
        users = sorted(m for m in MODULES if any(t in COMPILED for t, _n, _l in imports(m)))
        assert set(users) <= set(HANDLES), f"modules other than the handles import _ffi: {set(users) - set(HANDLES)}"

    def test_each_c_object_has_one_handle_module(self):
        """Each C area (ep_<area>_*) is called from exactly the one handle module that owns it: as ``lib.ep_*``,
        or by handing its address to edgepipe._fast (``ffi.addressof(lib, "ep_*")``)."""
        owner = {area: m for m, areas in HANDLES.items() for area in areas}
        wrong = []
        for m in MODULES:
            for node in ast.walk(ast.parse(MODULES[m].read_text())):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "lib"
                        and node.attr.startswith("ep_")):
                    name = node.attr
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and re.fullmatch(r"ep_[a-z0-9]+_\w+", node.value):
                    name = node.value  # a C function named as a string: for ffi.addressof
                else:
                    continue
                area = name.split("_")[1]
                if owner.get(area) != m:
                    wrong.append(f"{m}:{node.lineno} names {name} (owner: {owner.get(area)})")
        assert not wrong, "\n".join(wrong)

    def test_no_private_names_across_modules(self):
        """No module imports another module's private name (shared helpers live in a private module of their
        own, whose names are public within the package)."""
        bad = [f"{m}:{line} takes {t}.{n}" for m in MODULES for t, n, line in imports(m)
               if n and n.startswith("_") and not n.startswith("__") and t != m]
        assert not bad, "\n".join(bad)

    def test_no_module_reads_another_objects_handle_internals(self):
        """Outside the handle modules, nobody reads an end's or segment's private state (``end._ring``,
        ``writer._h``, ``reader._data``, ...): they use the public ``segment``/``ring``/``data`` and the
        in-place offset API. Inside a handle module, only its own helper objects' state is read."""
        internals = {"_ring", "_slot", "_h", "_data", "_io", "_w", "_r", "_region", "_handles"}
        own = {"ring.py", "latest.py", "frames.py", "_segment.py", "_image.py"}
        bad = []
        for m, path in MODULES.items():
            for n in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(n, ast.Attribute) and n.attr in internals):
                    continue
                v = n.value
                if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                    continue
                if path.name in own and isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) \
                        and v.value.id == "self":
                    continue  # e.g. a claim reading its own writer's handle, in ring.py
                bad.append(f"{m}:{n.lineno} reads {ast.unparse(n)}")
        assert not bad, "\n".join(bad)

    @pytest.mark.parametrize("mod", sorted(MODULES))
    def test_long_modules_say_why(self, mod):
        """A module over 600 lines says in its docstring why it is one piece ("One piece: ...")."""
        text = MODULES[mod].read_text()
        if text.count("\n") <= MAX_LINES:
            return
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "One piece:" in doc, f"{mod} has {text.count(chr(10))} lines and no 'One piece:' note in its docstring"


class TestTheRulesBite:
    """The checks above catch each kind of arrow the structure issue lists."""

    def test_an_upward_import_is_seen(self, tmp_path, monkeypatch):
        """A stage importing the pipeline layer inside a function would be reported."""
        p = tmp_path / "x.py"
        p.write_text("def f():\n    from edgepipe.pipeline.supervisor import Pipeline\n")
        monkeypatch.setitem(MODULES, "edgepipe.stages.x", p)
        got = [t for t, _n, _l in imports("edgepipe.stages.x")]
        assert got == ["edgepipe.pipeline.supervisor"]
        assert LAYERS[layer(got[0])] > LAYERS[layer("edgepipe.stages.x")]

    def test_a_private_name_is_seen(self, tmp_path, monkeypatch):
        """`from edgepipe.ring import _helper` is reported as a private name taken across modules."""
        p = tmp_path / "y.py"
        p.write_text("from edgepipe.ring import _helper\nfrom edgepipe.cli import _segments\n")
        monkeypatch.setitem(MODULES, "edgepipe.y", p)
        got = imports("edgepipe.y")
        assert ("edgepipe.ring", "_helper", 1) in got
        assert ("edgepipe.cli._segments", None, 2) in got  # a private *module* is the allowed way to share

    def test_an_address_handed_to_fast_counts_as_a_call(self, tmp_path, monkeypatch):
        """A module naming another area's function as a string (``ffi.addressof(lib, "ep_ring_try_write")``,
        the way addresses reach edgepipe._fast) breaks the one-owner rule like ``lib.ep_ring_try_write``."""
        p = tmp_path / "z.py"
        p.write_text('from edgepipe._ffi import ffi, lib\nADDR = ffi.addressof(lib, "ep_ring_try_write")\n')
        monkeypatch.setitem(MODULES, "edgepipe.latest_extra", p)
        with pytest.raises(AssertionError, match="latest_extra:2 names ep_ring_try_write"):
            TestLayers().test_each_c_object_has_one_handle_module()
