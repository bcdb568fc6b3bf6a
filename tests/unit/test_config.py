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
        path.write_text(GOOD.replace('kind = "counter"\noutputs = { out = "a" }\nparams = { count = 10 }',
                                     'kind = "capture"\noutputs = { output = "a" }\nparams = { video = "clip.mp4" }'))
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

    def test_deadline_param(self):
        """A kind's deadline_param (what ``replay --compare`` turns off): registered, or a class attribute of a
        kind given by import path; a name that is no identifier is refused naming it."""
        from edgepipe.pipeline.config import deadline_param

        register_stage("test-shedder", "edgepipe.testing:RelayStage", deadline_param="late_ms")
        assert deadline_param("test-shedder") == "late_ms" and deadline_param("inference") == "budget_ms"
        assert deadline_param("relay") is None and deadline_param("edgepipe.testing:RelayStage") is None
        assert deadline_param("edgepipe.stages.inference:InferenceStage") == "budget_ms"
        with pytest.raises(ValueError, match="'late ms'"):
            register_stage("test-shedder", "edgepipe.testing:RelayStage", deadline_param="late ms")

    def test_python_spec_errors_name_the_key(self):
        """The same checks apply to specs built in Python, naming the key path."""
        spec = parse_config(GOOD)
        spec.stages[2].inputs = {"in": "a"}
        with pytest.raises(ConfigError, match=r"^stages\.sink\.inputs\.in: link 'a' already has a consumer"):
            validate(spec)


USER_STAGES = '''\
"""Stages of a user's own, next to their pipeline file."""
from edgepipe import PipelineStage, transform


class Upper(PipelineStage):
    """Passes each record on upper-cased.

    Args:
        factor: how many times to repeat the payload.
    """

    def __init__(self, name=None, *, factor: int = 1, **kw):
        super().__init__(name, **kw)
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor!r}")
        self.factor = factor

    def handle(self, rec):
        self.emit(rec.payload.upper() * self.factor, parent=rec)


@transform
def shout(payload):
    return payload.upper()


def helper():
    return 1


NOT_A_STAGE = 42
'''

USER_PIPE = """\
[stages.src]
kind = "counter"
outputs = { out = "a" }
params = { count = 10 }

[stages.up]
kind = "KIND"
inputs = { in = "a" }
outputs = { out = "b" }

[stages.sink]
kind = "check"
inputs = { in = "b" }
"""


def _user_pipe(tmp_path, kind: str, module: str = USER_STAGES, modname: str = "my_stages_cfg"):
    (tmp_path / f"{modname}.py").write_text(module)
    path = tmp_path / "pipe.toml"
    path.write_text(USER_PIPE.replace("KIND", kind.replace("MOD", modname)))
    return path


class TestImportPathKinds:
    @pytest.mark.parametrize("attr", ["Upper", "shout"])
    def test_stage_module_next_to_the_file(self, tmp_path, attr):
        """`kind = "module:Class"` (or a @transform function) names a stage in a module next to the pipeline
        file: it validates, and the spec remembers the directory so stage processes can import it."""
        path = _user_pipe(tmp_path, f"MOD:{attr}", modname=f"my_stages_next_{attr.lower()}")
        spec = load_config(path)
        assert spec.stages[1].kind == f"my_stages_next_{attr.lower()}:{attr}"
        assert str(tmp_path) in spec.import_dirs

    def test_stage_module_on_sys_path(self, tmp_path, monkeypatch):
        """A module on sys.path (PYTHONPATH, an installed package) is found wherever the file is."""
        lib = tmp_path / "lib"
        lib.mkdir()
        (lib / "my_stages_lib.py").write_text(USER_STAGES)
        monkeypatch.syspath_prepend(str(lib))
        spec = parse_config(USER_PIPE.replace("KIND", "my_stages_lib:Upper"), "p.toml", base_dir=str(tmp_path))
        assert spec.stages[1].kind == "my_stages_lib:Upper"

    @pytest.mark.parametrize("kind, fragment", [
        ("my_stages_nowhere:Upper", "cannot import module 'my_stages_nowhere'"),
        ("MOD:Lower", "has no attribute 'Lower'"),
        ("MOD:helper", "is a function, not a stage"),
        ("MOD:NOT_A_STAGE", "is an int, not a stage"),
        ("MOD:", "must be 'module:attr'"),
        ("my stages:Upper", "must be 'module:attr'"),
    ])
    def test_bad_import_path(self, tmp_path, kind, fragment):
        """A kind that is an import path is imported while validating: a missing module, a missing name, or
        something that is not a stage class or function stage is a ConfigError naming file, line, key, value."""
        path = _user_pipe(tmp_path, kind, modname="my_stages_bad")
        with pytest.raises(ConfigError) as ei:
            load_config(path)
        msg = str(ei.value)
        shown = kind.replace("MOD", "my_stages_bad")
        assert msg.startswith(f"{path}:7: stages.up.kind: "), msg
        assert repr(shown) in msg and fragment in msg, msg

    def test_module_that_fails_to_import(self, tmp_path):
        """A module raising at import is a ConfigError with the exception, on one line."""
        path = _user_pipe(tmp_path, "MOD:Upper", module="raise RuntimeError('no GPU here')\n",
                          modname="my_stages_boom")
        with pytest.raises(ConfigError, match=r"pipe.toml:7: stages.up.kind: .*RuntimeError: no GPU here") as ei:
            load_config(path)
        assert "\n" not in str(ei.value)


class TestParams:
    @pytest.mark.parametrize("old, new, line, key, fragment", [
        ("params = { count = 10 }", "params = { count = 10, rate_hzz = 5 }", 8, "stages.src.params.rate_hzz",
         "unknown parameter 'rate_hzz' = 5 of kind 'counter' (did you mean 'rate_hz'?)"),
        ("params = { count = 10 }", "params = { count = -1 }", 8, "stages.src.params.count", "count must be >= 0, got -1"),
        ("params = { count = 10 }", 'params = { count = "ten" }', 8, "stages.src.params.count",
         "must be int, got str 'ten'"),
        ("params = { count = 10 }", "params = { count = 1.5 }", 8, "stages.src.params.count", "got float 1.5"),
        ("params = { count = 10 }", "params = { count = true }", 8, "stages.src.params.count", "got bool True"),
        ('kind = "relay"', 'kind = "relay"\nparams = { work_us = "lots" }', 12, "stages.mid.params.work_us",
         "must be float, got str 'lots'"),
        ('kind = "check"', 'kind = "check"\nparams = { name = "x" }', 17, "stages.sink.params.name",
         "set by the pipeline"),
    ])
    def test_bad_param_names_file_line_key_and_value(self, tmp_path, old, new, line, key, fragment):
        """A param the stage's signature does not take, one of the wrong type (from its annotation), or one the
        stage's own checks refuse is a ConfigError before anything starts, naming file, line, key and value."""
        path = tmp_path / "pipe.toml"
        path.write_text(GOOD.replace(old, new, 1))
        with pytest.raises(ConfigError) as ei:
            load_config(path)
        msg = str(ei.value)
        assert msg.startswith(f"{path}:{line}: {key}: "), msg
        assert fragment in msg, msg
        assert ei.value.key == key and "\n" not in msg

    @pytest.mark.parametrize("stage, fragment", [
        ('[stages.cam]\nkind = "capture"\noutputs = { output = "f" }\nparams = { video = "pkg:video/text", fpss = 3 }\n',
         "stages.cam.params.fpss: unknown parameter 'fpss' = 3 of kind 'capture' (did you mean 'fps'?)"),
        ('[stages.cam]\nkind = "capture"\noutputs = { output = "f" }\nparams = { video = "pkg:video/text", fps = "x" }\n',
         "stages.cam.params.fps: must be float or None, got str 'x'"),
        ('[stages.cam]\nkind = "capture"\noutputs = { frames = "f" }\nparams = { video = "pkg:video/text" }\n',
         "stages.cam.outputs.frames: kind 'capture' has no port 'frames'; its ports: output"),
        ('[stages.imu]\nkind = "imu"\noutputs = { output = "f" }\nparams = { rate_hz = "fast" }\n',
         "stages.imu.params.rate_hz: must be float or None, got str 'fast'"),
        ('[stages.imu]\nkind = "imu"\noutputs = { output = "f" }\nparams = { synthetic = 1 }\n',
         "stages.imu.params.synthetic: must be bool, got int 1"),
    ])
    def test_builtin_kinds_check_their_stage_class(self, stage, fragment):
        """The built-in kinds hand most params on to their stage class: those are checked against the class's
        signature too, and the ports against the kind's."""
        text = stage + '[stages.sink]\nkind = "check"\ninputs = { in = "f" }\n'
        with pytest.raises(ConfigError) as ei:
            parse_config(text, "p.toml")
        assert fragment in str(ei.value), str(ei.value)

    def test_user_stage_params(self, tmp_path):
        """A user stage's params are checked against its own signature and checks, the same way."""
        path = _user_pipe(tmp_path, "MOD:Upper", modname="my_stages_params")
        text = path.read_text()
        path.write_text(text.replace('outputs = { out = "b" }', 'outputs = { out = "b" }\nparams = { factr = 2 }'))
        with pytest.raises(ConfigError, match=r"pipe.toml:10: stages.up.params.factr: unknown parameter 'factr' = 2 "
                                              r".*did you mean 'factor'"):
            load_config(path)
        path.write_text(text.replace('outputs = { out = "b" }', 'outputs = { out = "b" }\nparams = { factor = 0 }'))
        with pytest.raises(ConfigError, match=r"pipe.toml:10: stages.up.params.factor: .*factor must be >= 1, got 0"):
            load_config(path)
        path.write_text(text.replace('outputs = { out = "b" }', 'outputs = { out = "b" }\nparams = { factor = 3 }'))
        assert load_config(path).stages[1].params == {"factor": 3}

    def test_function_stage_takes_no_params(self, tmp_path):
        """A @transform function stage has no params: any is unknown."""
        path = _user_pipe(tmp_path, "MOD:shout", modname="my_stages_fn")
        path.write_text(path.read_text().replace('outputs = { out = "b" }', 'outputs = { out = "b" }\nparams = { x = 1 }'))
        with pytest.raises(ConfigError, match="stages.up.params.x: unknown parameter 'x' = 1"):
            load_config(path)

    def test_python_specs_are_checked_too(self):
        """A StageSpec built in Python goes through the same checks (no file or line then)."""
        from edgepipe import Pipeline, StageSpec

        with pytest.raises(ConfigError, match="stages.src.params.rate_hzz: unknown parameter 'rate_hzz'"):
            Pipeline([StageSpec("src", kind="counter", outputs={"out": "a"}, params={"rate_hzz": 1}),
                      StageSpec("sink", kind="check", inputs={"in": "a"})], stats_path=False)
