"""Pipeline TOML files are checked completely before anything starts; every mistake names file, line, key
and the bad value."""

from __future__ import annotations

import pytest

from edgepipe import ConfigError, load_config, parse_config, register_stage, resolve_kind, stage_kinds
from edgepipe.pipeline.config import validate

GOOD = """\
[pipeline]
name = "t"
budget_ms = 50

[stages.src]
kind = "counter"
outputs = { out = "a" }
params = { count = 10 }

[stages.mid]
kind = "relay"
inputs = { in = "a" }
outputs = { out = "b" }

[stages.sink]
kind = "check"
inputs = { in = "b" }

[links.a]
capacity = 65536
mode = "lossless"
"""

# (id, old text, new text, line, key, fragment of the message)
BAD = [
    ("unknown-table", "[links.a]", "[extra]\nx = 1\n\n[links.a]", 19, "extra", "unknown key 'extra'"),
    ("unknown-stage-key", 'kind = "relay"', 'kind = "relay"\nbudget = 3', 12, "stages.mid.budget",
     "unknown key 'budget'"),
    ("unknown-pipeline-key", 'name = "t"', 'name = "t"\nrestarts = 2', 3, "pipeline.restarts", "unknown key"),
    ("wrong-type", "capacity = 65536", 'capacity = "big"', 20, "links.a.capacity", "must be an integer, got str 'big'"),
    ("wrong-type-bool", "params = { count = 10 }\n", "params = { count = 10 }\nbudget_ms = true\n", 9,
     "stages.src.budget_ms", "got bool True"),
    ("cycle", ('inputs = { in = "a" }', 'kind = "check"\ninputs = { in = "b" }'),
     ('inputs = { in = "a", again = "c" }', 'kind = "relay"\ninputs = { in = "b" }\noutputs = { back = "c" }'),
     18, "stages.sink.outputs.back", "link 'c' closes a cycle: mid -> sink -> mid"),
    ("dangling-input", 'inputs = { in = "b" }', 'inputs = { in = "nowhere" }', 17, "stages.sink.inputs.in",
     "'nowhere' is dangling"),
    ("two-consumers", 'inputs = { in = "b" }', 'inputs = { in = "a" }', 17, "stages.sink.inputs.in",
     "'a' already has a consumer (mid.in)"),
    ("budget-zero", "budget_ms = 50", "budget_ms = 0", 3, "pipeline.budget_ms", "> 0, got 0"),
    ("budget-negative", 'kind = "check"', 'kind = "check"\nbudget_ms = -1.5', 17, "stages.sink.budget_ms",
     "got -1.5"),
    ("budget-link", 'mode = "lossless"', 'mode = "lossless"\nbudget_ms = 0', 22, "links.a.budget_ms", "got 0"),
    ("unknown-kind", 'kind = "relay"', 'kind = "teleport"', 11, "stages.mid.kind", "unknown stage kind 'teleport'"),
    ("missing-video", "params = { count = 10 }", 'params = { count = 10, video = "nope/clip.mp4" }', 8,
     "stages.src.params.video", "file 'nope/clip.mp4' does not exist"),
    ("missing-model", 'kind = "relay"', 'kind = "relay"\nparams = { model = "pkg:models/none.onnx" }', 12,
     "stages.mid.params.model", "'pkg:models/none.onnx' does not exist"),
    ("capacity", "capacity = 65536", "capacity = 1000", 20, "links.a.capacity", "power of two >= 4096 bytes, got 1000"),
    ("mode", 'mode = "lossless"', 'mode = "lossy"', 21, "links.a.mode", "got 'lossy'"),
    ("restart", 'name = "t"', 'name = "t"\nrestart = "sometimes"', 3, "pipeline.restart", "got 'sometimes'"),
    ("restart-window", 'name = "t"', 'name = "t"\nrestart_window_s = 0', 3, "pipeline.restart_window_s", "> 0, got 0"),
    ("budget-table", "[links.a]", "[budgets]\nmid = 0\n\n[links.a]", 20, "budgets.mid", "got 0"),
    ("budget-unknown-part", "[links.a]", "[budgets]\nnobody = 3\n\n[links.a]", 20, "budgets.nobody",
     "'nobody', which is no stage"),
    ("unused-link", "[links.a]", "[links.spare]\n\n[links.a]", 19, "links.spare", "no stage uses it"),
    ("two-producers", 'outputs = { out = "b" }', 'outputs = { out = "a" }', 13, "stages.mid.outputs.out",
     "'a' already has a producer (src.out)"),
    ("not-toml", "[links.a]", "[links.a\n", 19, None, "not valid TOML"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_file_names_file_line_and_key(tmp_path, case):
    """Each broken variant of a good file raises ConfigError with 'file:line: key: ...' and the value."""
    _, old, new, line, key, fragment = case
    text = GOOD
    for o, n in zip(*((old, new) if isinstance(old, tuple) else ((old,), (new,)))):
        assert o in text
        text = text.replace(o, n, 1)
    path = tmp_path / "pipe.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:{line}: " + (f"{key}: " if key else "")), msg
    assert fragment in msg
    assert ei.value.line == line and ei.value.path == str(path)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("nested", ["[" * 1200 + "]" * 1200, "{ b = " * 600 + "1" + " }" * 600])
def test_deeply_nested_toml_is_a_config_error(nested):
    """Arrays or inline tables nested deeper than tomllib can recurse raise ConfigError naming the file, not
    RecursionError (found by tests/fuzz/fuzz_config.py)."""
    with pytest.raises(ConfigError, match="nested too deeply") as ei:
        parse_config(f"[stages.src]\nkind = \"counter\"\nparams = {{ a = {nested} }}\n", "deep.toml")
    assert ei.value.path == "deep.toml" and str(ei.value).startswith("deep.toml:?: not valid TOML")


class TestGood:
    def test_good_file_gives_the_spec(self, tmp_path):
        """The good file parses into stages, links with defaults filled in, and budgets in ms."""
        path = tmp_path / "pipe.toml"
        path.write_text(GOOD)
        spec = load_config(path)
        assert [s.name for s in spec.stages] == ["src", "mid", "sink"]
        assert spec.links["a"].capacity == 65536 and spec.links["b"].capacity == 1 << 20
        assert spec.budgets_ms == {"end_to_end": 50}
        assert spec.stages[0].params == {"count": 10}

    def test_file_params_resolve_relative_to_the_file(self, tmp_path):
        """A relative file parameter is looked up next to the TOML file and handed on as an absolute path."""
        (tmp_path / "clip.mp4").write_bytes(b"x")
        path = tmp_path / "pipe.toml"
        path.write_text(GOOD.replace("params = { count = 10 }", 'params = { count = 10, video = "clip.mp4" }'))
        assert load_config(path).stages[0].params["video"] == str(tmp_path / "clip.mp4")

    def test_restart_window(self, tmp_path):
        """restart_window_s defaults to 60 s and a file may set it; max_restarts counts within it."""
        path = tmp_path / "pipe.toml"
        path.write_text(GOOD)
        assert load_config(path).restart_window_s == 60.0
        path.write_text(GOOD.replace('name = "t"', 'name = "t"\nrestart_window_s = 3600'))
        assert load_config(path).restart_window_s == 3600

    def test_missing_file(self, tmp_path):
        """A file that is not there is a ConfigError naming it."""
        with pytest.raises(ConfigError, match="nothere.toml: cannot read"):
            load_config(tmp_path / "nothere.toml")


class TestKinds:
    def test_registered_kind_resolves_lazily(self):
        """A kind registered by import path is imported only when resolved; a missing module is named."""
        register_stage("test-missing", "edgepipe_no_such_module:Thing")
        assert stage_kinds()["test-missing"] == "edgepipe_no_such_module:Thing"
        with pytest.raises(ConfigError, match="edgepipe_no_such_module:Thing, which is not available"):
            resolve_kind("test-missing")
        register_stage("test-counter", "edgepipe.testing:CounterStage")
        cls, raw = resolve_kind("test-counter")
        assert cls.__name__ == "CounterStage" and raw is False

    def test_bad_registration(self):
        """A target without 'module:attr' form is refused naming it."""
        with pytest.raises(ValueError, match="'nocolon'"):
            register_stage("x", "nocolon")

    def test_python_spec_errors_name_the_key(self):
        """The same checks apply to specs built in Python, naming the key path."""
        spec = parse_config(GOOD)
        spec.stages[2].inputs = {"in": "a"}
        with pytest.raises(ConfigError, match=r"^stages\.sink\.inputs\.in: link 'a' already has a consumer"):
            validate(spec)
