"""Pipeline descriptions: stage kinds, stage and link specs, and the TOML file ``edgepipe run`` takes.

Stage kinds are a registry of name -> ``"module:Class"``, resolved by import only when a pipeline uses
them, so a kind can be registered before its module exists (the built-in kinds are registered here). A kind
may also be an import path itself, ``kind = "mystages:Upper"``: a Stage or PipelineStage class, or a
``@source`` / ``@transform`` / ``@sink`` function, in a module on ``sys.path`` (``PYTHONPATH``, an installed
package) or next to the pipeline file (its directory is searched last, and stage processes get it on their
``sys.path`` too). Every stage's ``params`` are checked against what its class or factory takes
(edgepipe.pipeline.params: names, types from the annotations, and a PipelineStage's own constructor checks);
``edgepipe kinds NAME`` lists them.
A TOML file is checked completely before anything starts; every mistake is a :class:`ConfigError` naming
the file, the line and the key (and the bad value)::

    [pipeline]
    name = "example"
    restart = "on-failure"          # never | on-failure | always
    max_restarts = 3                # within restart_window_s: a stage that ran that long without
    restart_window_s = 60           # crashing starts counting (and backing off) from zero again
    budget_ms = 50                  # end to end

    [stages.src]
    kind = "counter"
    outputs = { out = "numbers" }   # port -> link
    params = { count = 1000, rate_hz = 500 }

    [stages.sink]
    kind = "check"
    inputs = { in = "numbers" }
    budget_ms = 5                   # this stage's own processing

    [links.numbers]
    capacity = 65536                # bytes, a power of two (latest: the largest frame's pixel bytes)
    mode = "lossless"               # lossless | drop | latest
    budget_ms = 10                  # time queued in this ring
    tap = false                     # true: copies into a side link "numbers.tap" for a record stage, or
    tap_capacity = 1048576          #   for `edgepipe record --attach` while it runs (edgepipe.pipeline.tap:
    #                                   dropped, never waited for, when full)

One piece: the kind registry, the specs and the one validation pass over them (names, ports, links, taps,
budgets) share the registry's private table and the _Where that names the line of every mistake; the
parameter checks live in params.py, the side links of taps in tap.py.

>>> spec = parse_config('''
... [stages.src]
... kind = "counter"
... outputs = { out = "n" }
... [stages.sink]
... kind = "check"
... inputs = { in = "n" }
... ''')
>>> [s.name for s in spec.stages], sorted(spec.links)
(['src', 'sink'], ['n'])
>>> parse_config('[stages.src]\\nkind = "warp-drive"\\n', "p.toml")
Traceback (most recent call last):
  ...
edgepipe.errors.ConfigError: p.toml:2: stages.src.kind: unknown stage kind 'warp-drive'; known kinds: ...
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from edgepipe._data import data_path
from edgepipe.errors import ConfigError
from edgepipe.pipeline.params import check_stage, import_stage, searching
from edgepipe.pipeline.tap import TAP_SUFFIX, tap_link

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

__all__ = ["LinkSpec", "PipelineSpec", "StageSpec", "load_config", "parse_config", "register_stage",
           "resolve_kind", "stage_kinds"]

RESTART_POLICIES = ("never", "on-failure", "always")
LINK_MODES = ("lossless", "drop", "latest")
_RESERVED_PARTS = ("end_to_end",)
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_PATH_PARAMS = re.compile(r"(^|_)(path|file|model|video|csv)$")
DATA_PREFIX = "pkg:"  # a path param "pkg:video/x.mp4" names a file shipped in edgepipe/data


# ---------------------------------------------------------------------------------------------------
# the registry of stage kinds


@dataclass(frozen=True)
class _Kind:
    target: str  # "module:attr"
    raw_ports: bool  # hand the constructor bare ring ends, not Inlet/Outlet
    frame_tap: bool = False  # the stage offers each frame it publishes to ``stage.frame_tap`` (a FrameTap)
    deadline_param: str | None = None  # the param that makes it drop input older than a deadline (None: off)


_KINDS: dict[str, _Kind] = {}


def register_stage(kind: str, target: str, *, raw_ports: bool = False, frame_tap: bool = False,
                   deadline_param: str | None = None) -> None:
    """Register a stage kind: ``kind`` in a TOML file or StageSpec builds ``target`` (``"module:Class"``,
    imported only when used). The class is called as ``Class(name=..., **params, **ports)`` where each
    port keyword is the stage's ring end: an Inlet/Outlet, or with ``raw_ports`` the bare RingReader /
    RingWriter (or latest-slot end). With ``frame_tap`` the stage (a frame source with one output) offers
    every frame it publishes to its ``frame_tap`` attribute, so a tap on its output link can sit in it
    (edgepipe.pipeline.tap.FrameTap). ``deadline_param`` names the parameter with which the stage drops input
    that is older than a deadline when it gets to it (load shedding; unset or None turns it off): a regression
    run (``edgepipe replay --compare``) turns it off, so what is compared does not depend on the machine's
    load (:func:`deadline_param`). Registering a kind again replaces it.

    >>> register_stage("my-filter", "mypkg.filters:Filter")
    >>> "my-filter" in stage_kinds()
    True
    """
    if not isinstance(kind, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", kind):
        raise ValueError(f"stage kind must be a name of [A-Za-z0-9_.-], got {kind!r}")
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"stage target must be 'module:attr', got {target!r}")
    if deadline_param is not None and not (isinstance(deadline_param, str) and deadline_param.isidentifier()):
        raise ValueError(f"deadline_param must be a parameter name, got {deadline_param!r}")
    _KINDS[kind] = _Kind(target, raw_ports, frame_tap, deadline_param)


def stage_kinds() -> dict[str, str]:
    """Every registered kind and its target."""
    return {k: v.target for k, v in sorted(_KINDS.items())}


def is_import_path(kind: Any) -> bool:
    """A kind with a colon is an import path (``"module:attr"``), not a registered name."""
    return isinstance(kind, str) and ":" in kind


def resolve_kind(kind: str) -> tuple[Any, bool]:
    """Import a kind's target: ``(callable, raw_ports)``. A kind that is an import path is its own target.

    Raises:
        ConfigError: unknown kind, or its module cannot be imported (the message says which).
    """
    if is_import_path(kind):
        return import_target(kind, kind), False
    k = _KINDS.get(kind)
    if k is None:
        raise ConfigError(f"unknown stage kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}")
    return import_target(k.target, kind), k.raw_ports


def kind_entry(kind: str) -> tuple[str, bool]:
    """``(target, raw_ports)`` of a registered kind (stage processes get this, not the name: a kind
    registered at run time in the parent is unknown to a fresh interpreter)."""
    if is_import_path(kind):
        return kind, False
    k = _KINDS.get(kind)
    if k is None:
        raise ConfigError(f"unknown stage kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}")
    return k.target, k.raw_ports


def import_target(target: str, kind: str = "?") -> Any:
    """Import ``"module:attr"`` (ConfigError naming the kind and target when it cannot be)."""
    mod, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"stage kind {kind!r} needs {target}, which is not available: {e}") from None
    return obj


def kind_available(kind: str) -> str | None:
    """None if the kind resolves, else why not."""
    try:
        resolve_kind(kind)
    except ConfigError as e:
        return str(e)
    return None


# Built-in kinds. The sensor, camera and inference kinds take bare ring ends as constructor arguments.
# Ports: capture outputs = { output = LINK }; imu outputs = { output = LINK }; inference inputs = { input = LINK },
# outputs = { output = LINK }. The factories in edgepipe.pipeline.kinds wrap the bare ends for the stage classes
# (edgepipe.stages.capture.CaptureStage, edgepipe.stages.imu.ImuStage, edgepipe.stages.inference.InferenceStage).
register_stage("capture", "edgepipe.pipeline.kinds:capture_kind", raw_ports=True, frame_tap=True)
register_stage("imu", "edgepipe.pipeline.kinds:imu_kind", raw_ports=True)
register_stage("inference", "edgepipe.pipeline.kinds:inference_kind", raw_ports=True, deadline_param="budget_ms")
# Plain-Python stages for examples, tests and sinks (edgepipe.testing, which sits above this package: named
# here by import path only).
register_stage("counter", "edgepipe.testing:CounterStage")
register_stage("relay", "edgepipe.testing:RelayStage")
register_stage("check", "edgepipe.testing:CheckStage")
register_stage("print", "edgepipe.testing:PrintStage")
# The recorder and the replayer (edgepipe.record, above this package: named by import path only).
register_stage("record", "edgepipe.record.stage:RecordStage")
register_stage("replay", "edgepipe.record.stage:ReplayStage")
# Links to and from other machines over zenoh (edgepipe.bridge, above this package: by import path only).
register_stage("bridge", "edgepipe.bridge.stage:BridgeStage")
# Edge-server offload: unsure frames to a server over zenoh, its answers merged back (edgepipe.bridge too).
register_stage("offload", "edgepipe.bridge.offload:OffloadStage")
# Time alignment and the live browser view (edgepipe.view, above this package: named by import path only).
register_stage("align", "edgepipe.view.align:AlignStage")
register_stage("view", "edgepipe.view.stage:ViewStage")


# ---------------------------------------------------------------------------------------------------
# specs


@dataclass
class StageSpec:
    """One stage of a pipeline.

    Args:
        name: unique in the pipeline. kind: a registered kind, or None when ``target`` is given.
        target: a PipelineStage instance or a class/callable (takes precedence over kind).
        inputs, outputs: ``{port: link name}``. params: keyword arguments for the constructor.
        budget_ms: budget of this stage's own processing. restart / max_restarts: override the pipeline's.
    """

    name: str
    kind: str | None = None
    target: Any = None
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    budget_ms: float | None = None
    restart: str | None = None
    max_restarts: int | None = None


@dataclass
class LinkSpec:
    """One link (a ring, or a latest-only slot) from one producer port to one consumer port."""

    name: str
    capacity: int = 1 << 20
    mode: str = "lossless"
    budget_ms: float | None = None
    tap: bool = False  # a drop-only copy of every record into the side link "<name>.tap" (edgepipe.pipeline.tap)
    tap_capacity: int | None = None  # the side link's capacity (default: this link's)


@dataclass
class PipelineSpec:
    """A whole pipeline, checked: stages in order, links by name, budgets in ms by part name."""

    name: str = "pipeline"
    stages: list[StageSpec] = field(default_factory=list)
    links: dict[str, LinkSpec] = field(default_factory=dict)
    budgets_ms: dict[str, float] = field(default_factory=dict)
    restart: str = "on-failure"
    max_restarts: int = 3
    restart_window_s: float = 60.0  # restarts count (and back off) within this window only
    backoff_s: float = 0.2
    stats_interval_s: float = 0.5
    drain_timeout_s: float = 5.0
    start_timeout_s: float = 30.0
    report_dir: str | None = None
    source: str | None = None  # the file it came from
    import_dirs: list[str] = field(default_factory=list)  # searched for kinds given as import paths (the
    #                                                       file's directory); stage processes get them too

    def budgets_ns(self) -> dict[str, int]:
        return {k: int(v * 1e6) for k, v in self.budgets_ms.items()}


# ---------------------------------------------------------------------------------------------------
# TOML


class _Where:
    """Turns a key path into 'file:line: key' by scanning the file's text."""

    def __init__(self, text: str, path: str) -> None:
        self.lines = text.splitlines()
        self.path = path

    def line(self, keys: tuple[str, ...]) -> int | None:
        # Find the deepest table header that is a prefix of keys, then the key's line inside it.
        best, best_len = None, -1
        for i, raw in enumerate(self.lines):
            s = raw.strip()
            m = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", s)
            if not m:
                continue
            hdr = tuple(p.strip().strip('"\'') for p in m.group(1).split("."))
            if len(hdr) > best_len and keys[: len(hdr)] == hdr:
                best, best_len = i, len(hdr)
        start = 0 if best is None else best + 1
        rest = keys[max(best_len, 0):]
        if not rest:
            return None if best is None else best + 1
        # search the rest of this table (until the next header) for the first remaining key, then deeper
        # keys (inline tables) on or after that line
        pos = start
        for k in rest:
            pat = re.compile(r'(^|[\s{,.])("?)' + re.escape(k) + r'\2\s*[=.]')
            found = None
            for i in range(pos, len(self.lines)):
                if i > start and re.match(r"^\s*\[", self.lines[i]):
                    break
                if pat.search(self.lines[i]):
                    found = i
                    break
            if found is None:
                break
            pos = found
        return pos + 1 if pos >= start and (pos > start or rest) else None

    def err(self, keys: tuple[str, ...], msg: str) -> ConfigError:
        line = self.line(keys)
        key = ".".join(keys)
        return ConfigError(f"{self.path}:{line if line is not None else '?'}: {key}: {msg}", path=self.path,
                           line=line, key=key)


_PIPELINE_KEYS = {"name": str, "restart": str, "max_restarts": int, "restart_window_s": (int, float),
                  "backoff_s": (int, float),
                  "stats_interval_s": (int, float), "drain_timeout_s": (int, float),
                  "start_timeout_s": (int, float), "budget_ms": (int, float), "report_dir": str}
_STAGE_KEYS = {"kind": str, "inputs": dict, "outputs": dict, "params": dict, "budget_ms": (int, float),
               "restart": str, "max_restarts": int}
_LINK_KEYS = {"capacity": int, "mode": str, "budget_ms": (int, float), "tap": bool, "tap_capacity": int}
_TOP_KEYS = {"pipeline": dict, "stages": dict, "links": dict, "budgets": dict}


def _tname(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {dict: "table", str: "string", int: "integer"}.get(t, t.__name__)


def _check_table(w: _Where, keys: tuple[str, ...], table: Any, allowed: dict) -> None:
    if not isinstance(table, dict):
        raise w.err(keys, f"must be a table, got {type(table).__name__} {table!r}")
    for k, v in table.items():
        if k not in allowed:
            raise w.err((*keys, k), f"unknown key {k!r}; allowed: {', '.join(sorted(allowed))}")
        t = allowed[k]
        bad = isinstance(v, bool) and t is not bool and bool not in (t if isinstance(t, tuple) else (t,))
        if bad or not isinstance(v, t):
            tn = _tname(t)
            raise w.err((*keys, k), f"must be {'an' if tn[0] in 'aeiou' else 'a'} {tn}, got {type(v).__name__} {v!r}")


def load_config(path: str | os.PathLike) -> PipelineSpec:
    """Read and check a pipeline TOML file. Raises ConfigError (also for a file that is missing or not TOML)."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the pipeline file: {e.strerror}", path=p) from None
    return parse_config(raw.decode("utf-8", "replace"), p, base_dir=os.path.dirname(os.path.abspath(p)))


def parse_config(text: str, path: str = "<string>", base_dir: str | None = None) -> PipelineSpec:
    """Parse and check pipeline TOML text; ``path`` is only used in messages, ``base_dir`` resolves
    relative file parameters (default: the current directory)."""
    w = _Where(text, path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(f"{path}:{m.group(1) if m else '?'}: not valid TOML: {e}", path=path,
                          line=int(m.group(1)) if m else None) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays and inline tables
        raise ConfigError(f"{path}:?: not valid TOML: arrays or inline tables nested too deeply", path=path) from None
    _check_table(w, (), doc, _TOP_KEYS)
    pipe = doc.get("pipeline", {})
    _check_table(w, ("pipeline",), pipe, _PIPELINE_KEYS)
    spec = PipelineSpec(source=path)
    for k in ("name", "restart", "max_restarts", "restart_window_s", "backoff_s", "stats_interval_s", "drain_timeout_s",
              "start_timeout_s", "report_dir"):
        if k in pipe:
            setattr(spec, k, pipe[k])
    if "budget_ms" in pipe:
        _check_budget(w, ("pipeline", "budget_ms"), pipe["budget_ms"])
        spec.budgets_ms["end_to_end"] = pipe["budget_ms"]
    stages = doc.get("stages", {})
    if not isinstance(stages, dict) or not stages:
        raise w.err(("stages",), "a pipeline needs at least one [stages.<name>] table")
    for name, st in stages.items():
        keys = ("stages", name)
        _check_table(w, keys, st, _STAGE_KEYS)
        if "kind" not in st:
            raise w.err(keys, "missing key 'kind'")
        for port_kind in ("inputs", "outputs"):
            for port, link in st.get(port_kind, {}).items():
                if not isinstance(link, str) or not link:
                    raise w.err((*keys, port_kind, port), f"must be a link name (string), got {link!r}")
        spec.stages.append(StageSpec(name=name, kind=st["kind"], inputs=dict(st.get("inputs", {})),
                                     outputs=dict(st.get("outputs", {})), params=dict(st.get("params", {})),
                                     budget_ms=st.get("budget_ms"), restart=st.get("restart"),
                                     max_restarts=st.get("max_restarts")))
    for name, ln in doc.get("links", {}).items():
        _check_table(w, ("links", name), ln, _LINK_KEYS)
        spec.links[name] = LinkSpec(name=name, **ln)
    budgets = doc.get("budgets", {})
    if not isinstance(budgets, dict):
        raise w.err(("budgets",), f"must be a table, got {budgets!r}")
    for k, v in budgets.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise w.err(("budgets", k), f"must be a number of ms, got {type(v).__name__} {v!r}")
        _check_budget(w, ("budgets", k), v)
        spec.budgets_ms[k.removesuffix("_ms")] = v
    validate(spec, w, base_dir=base_dir)
    return spec


def _fail(w: _Where | None, keys: tuple[str, ...], msg: str) -> ConfigError:
    if w is not None:
        return w.err(keys, msg)
    return ConfigError(f"{'.'.join(keys)}: {msg}", key=".".join(keys))


def validate(spec: PipelineSpec, w: _Where | None = None, base_dir: str | None = None) -> PipelineSpec:
    """Check a spec (from TOML or built in Python): names, kinds, links, graph, budgets, file parameters.
    Fills in default LinkSpecs for links only named by ports. Raises ConfigError naming the key and value."""
    if spec.restart not in RESTART_POLICIES:
        raise _fail(w, ("pipeline", "restart"), f"must be one of {', '.join(RESTART_POLICIES)}, got {spec.restart!r}")
    if spec.max_restarts < 0:
        raise _fail(w, ("pipeline", "max_restarts"), f"must be >= 0, got {spec.max_restarts!r}")
    for k in ("restart_window_s", "backoff_s", "stats_interval_s", "drain_timeout_s", "start_timeout_s"):
        v = getattr(spec, k)
        if not v > 0:
            raise _fail(w, ("pipeline", k), f"must be > 0, got {v!r}")
    names: set[str] = set()
    producers: dict[str, tuple[str, str]] = {}
    consumers: dict[str, tuple[str, str]] = {}
    for s in spec.stages:
        keys = ("stages", s.name)
        if not isinstance(s.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", s.name):
            raise _fail(w, keys, f"stage name must be of [A-Za-z0-9_.-], got {s.name!r}")
        if s.name in names:
            raise _fail(w, keys, f"two stages are named {s.name!r}")
        names.add(s.name)
        if s.target is None and is_import_path(s.kind):
            _import_kind(w, (*keys, "kind"), s.kind, spec, base_dir)
        elif s.target is None:
            if s.kind not in _KINDS:
                raise _fail(w, (*keys, "kind"), f"unknown stage kind {s.kind!r}; known kinds: "
                                                f"{', '.join(sorted(_KINDS))} (or an import path, "
                                                f"'module:Class')")
        if s.restart is not None and s.restart not in RESTART_POLICIES:
            raise _fail(w, (*keys, "restart"), f"must be one of {', '.join(RESTART_POLICIES)}, got {s.restart!r}")
        if s.max_restarts is not None and s.max_restarts < 0:
            raise _fail(w, (*keys, "max_restarts"), f"must be >= 0, got {s.max_restarts!r}")
        if s.budget_ms is not None:
            _check_budget(w, (*keys, "budget_ms"), s.budget_ms)
            spec.budgets_ms.setdefault(s.name, s.budget_ms)
        if set(s.inputs) & set(s.outputs):
            port = sorted(set(s.inputs) & set(s.outputs))[0]
            raise _fail(w, (*keys, "outputs", port), f"port {port!r} is both an input and an output")
        for port, link in s.outputs.items():
            if link in producers:
                other = producers[link]
                raise _fail(w, (*keys, "outputs", port),
                            f"link {link!r} already has a producer ({other[0]}.{other[1]}); a ring has one producer")
            producers[link] = (s.name, port)
        for port, link in s.inputs.items():
            if link in consumers:
                other = consumers[link]
                raise _fail(w, (*keys, "inputs", port),
                            f"link {link!r} already has a consumer ({other[0]}.{other[1]}); an SPSC ring has "
                            f"exactly one consumer (fan out with one link per consumer)")
            consumers[link] = (s.name, port)
        _check_paths(w, keys, s.params, base_dir)
    for name, ln in list(spec.links.items()):
        if getattr(ln, "tap", False):
            if name not in producers:
                raise _fail(w, ("links", name), f"link {name!r} is declared but no stage uses it")
            side = tap_link(name)
            try:
                producers[side] = (tap_filler(spec, name, producers, consumers)[0], TAP_SUFFIX)
            except ConfigError as e:
                raise _fail(w, ("links", name, "tap"), str(e).split(": ", 1)[1]) from None
            cap = ln.capacity if ln.tap_capacity is None else ln.tap_capacity
            if side not in spec.links:
                spec.links[side] = LinkSpec(name=side, capacity=cap, mode="drop")
    for link, (st, port) in consumers.items():
        if link not in producers:
            raise _fail(w, ("stages", st, "inputs", port), f"input link {link!r} is dangling: no stage outputs to it")
    for link, (st, port) in producers.items():
        # a tap nobody in the pipeline reads is for another process to attach (edgepipe.pipeline.attach);
        # it drops what does not fit, so it never blocks its filler
        if link not in consumers and port != TAP_SUFFIX:
            raise _fail(w, ("stages", st, "outputs", port),
                        f"output link {link!r} is dangling: no stage reads it (a full ring would block {st!r})")
    for name in spec.links:
        if name not in producers:
            raise _fail(w, ("links", name), f"link {name!r} is declared but no stage uses it")
    for link in producers:
        spec.links.setdefault(link, LinkSpec(name=link))
    for name, ln in spec.links.items():
        keys = ("links", name)
        if name in names or name in _RESERVED_PARTS:
            raise _fail(w, keys, f"link name {name!r} is also a stage name or reserved; latency parts need distinct names")
        cap = ln.capacity
        if isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0:
            raise _fail(w, (*keys, "capacity"), f"must be a positive integer of bytes, got {cap!r}")
        if ln.mode != "latest" and (cap < 4096 or cap & (cap - 1)):
            raise _fail(w, (*keys, "capacity"), f"must be a power of two >= 4096 bytes, got {cap!r}")
        if ln.mode not in LINK_MODES:
            raise _fail(w, (*keys, "mode"), f"must be one of {', '.join(LINK_MODES)}, got {ln.mode!r}")
        if ln.mode == "latest" and latest_slot() is None:
            raise _fail(w, (*keys, "mode"), "'latest' needs edgepipe.latest.LatestSlot, which is not available in "
                                            "this install; use 'drop' (a full ring drops the new record)")
        if ln.budget_ms is not None:
            _check_budget(w, (*keys, "budget_ms"), ln.budget_ms)
            spec.budgets_ms.setdefault(name, ln.budget_ms)
    for part, v in spec.budgets_ms.items():
        sink = part[len("end_to_end["):-1] if part.startswith("end_to_end[") and part.endswith("]") else None
        if part not in names and part not in spec.links and part not in _RESERVED_PARTS and sink not in names \
                and part.split(".")[0] not in names:  # "<stage>.<step>": a step inside a built-in stage
            raise _fail(w, ("budgets", part), f"budget for {part!r}, which is no stage, link, 'end_to_end' or 'end_to_end[<sink>]'")
        _check_budget(w, ("budgets", part), v)
    _check_cycles(spec, w, producers)
    for s in spec.stages:
        with searching(spec.import_dirs):
            _check_params(w, ("stages", s.name), s)
    return spec


def _raw_ports(s: StageSpec) -> bool:
    """Whether the stage is handed bare ring ends (the built-in capture, imu, inference kinds)."""
    return s.target is None and not is_import_path(s.kind) and s.kind in _KINDS and _KINDS[s.kind].raw_ports


def fills_frame_tap(kind: str | None) -> bool:
    """Whether a stage of ``kind`` offers its published frames to a ``frame_tap`` (register_stage)."""
    k = _KINDS.get(kind) if isinstance(kind, str) else None
    return bool(k and k.frame_tap)


def deadline_param(kind: str | None, dirs: list[str] | tuple[str, ...] = ()) -> str | None:
    """The parameter with which a stage of ``kind`` sheds input older than a deadline: the registered
    ``deadline_param`` (e.g. ``budget_ms`` of ``inference``), or for a kind given by import path its class's
    ``deadline_param`` attribute (imported with ``dirs``, e.g. a spec's ``import_dirs``, on the path); None when
    the kind sheds nothing (or cannot be imported here).

    >>> deadline_param("inference"), deadline_param("relay")
    ('budget_ms', None)
    """
    if not isinstance(kind, str):
        return None
    k = _KINDS.get(kind)
    if k is not None:
        return k.deadline_param
    if not is_import_path(kind):
        return None
    try:
        with searching(list(dirs)):
            obj = import_target(kind, kind)
    except ConfigError:
        return None
    p = getattr(obj, "deadline_param", None)
    return p if isinstance(p, str) else None


def tap_filler(spec: PipelineSpec, link: str, producers: dict[str, tuple[str, str]] | None = None,
               consumers: dict[str, tuple[str, str]] | None = None) -> tuple[str, str, bool]:
    """``(stage, port, is_producer)``: which end of a tapped ``link`` fills its tap: the producer's Outlet
    when the producer is a Python stage (or a frame source registered with ``frame_tap``, e.g. capture),
    else the consumer's Inlet (ConfigError when both ends are built-in stages with bare ring ends, which
    no tap can sit in)."""
    if producers is None or consumers is None:
        producers, consumers = {}, {}
        for s in spec.stages:
            producers.update({ln: (s.name, p) for p, ln in s.outputs.items()})
            consumers.update({ln: (s.name, p) for p, ln in s.inputs.items()})
    by_name = {s.name: s for s in spec.stages}
    prod, cons = producers.get(link), consumers.get(link)
    if prod is not None and (not _raw_ports(by_name[prod[0]]) or fills_frame_tap(by_name[prod[0]].kind)):
        return prod[0], prod[1], True
    if cons is not None and not _raw_ports(by_name[cons[0]]):
        return cons[0], cons[1], False
    raise ConfigError(f"links.{link}.tap: both ends of {link!r} are built-in stages that write and read the ring "
                      f"directly ({prod[0] if prod else '?'} -> {cons[0] if cons else '?'}), so neither can fill a "
                      f"tap; tap a link with a Python stage at one end", key=f"links.{link}.tap")


def _import_kind(w, keys: tuple[str, ...], kind: str, spec: PipelineSpec, base_dir: str | None) -> Any:
    """Import a kind given as ``module:attr`` (the pipeline file's directory searched last) and check that
    it is a stage; ConfigError naming the value."""
    if not _IMPORT_PATH.fullmatch(kind):
        raise _fail(w, keys, f"{kind!r}: a kind with a colon is an import path and must be 'module:attr' "
                             f"(e.g. 'mystages:Upper')")
    here = os.path.abspath(base_dir or os.getcwd())
    if here not in spec.import_dirs:
        spec.import_dirs.append(here)
    return import_stage(lambda msg: _fail(w, keys, msg), kind, spec.import_dirs, here)


def _check_params(w, keys: tuple[str, ...], s: StageSpec) -> None:
    """Ports and params of one stage against what its kind takes; a registered kind whose module cannot be
    imported here is left to its stage process (which names what is missing)."""
    if s.target is None:
        try:
            obj, raw = resolve_kind(s.kind)
        except ConfigError:
            return
        label = s.kind
    elif isinstance(s.target, type):
        label, obj, raw = s.target.__name__, s.target, False
    else:
        return  # an instance: made (and its arguments checked) by whoever made it
    check_stage(lambda k, msg: _fail(w, (*keys, *k), msg), s, label, obj, raw)


def _check_budget(w, keys, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v:
        raise _fail(w, keys, f"a budget must be a number of ms > 0, got {v!r}")


def _check_paths(w, keys, params: dict, base_dir: str | None) -> None:
    for k, v in params.items():
        if not isinstance(v, str) or not _PATH_PARAMS.search(k):
            continue
        if re.match(r"^[a-z]+://", v) or v.startswith("/dev/") or v.isdigit() or v == "synthetic":
            continue  # a stream URL, a device or a camera index, not a file
        p = resolve_path(v, base_dir)
        if not os.path.exists(p):
            raise _fail(w, (*keys, "params", k), f"file {v!r} does not exist (looked at {p})")
        params[k] = p


def resolve_path(value: str, base_dir: str | None = None) -> str:
    """A file parameter as an absolute path: ``pkg:`` names a file shipped in edgepipe/data, a relative
    path is relative to the pipeline file's directory."""
    if value.startswith(DATA_PREFIX):
        return str(data_path(value[len(DATA_PREFIX):]))
    return os.path.abspath(os.path.join(base_dir or os.getcwd(), os.path.expanduser(value)))


def latest_slot():
    try:
        from edgepipe.latest import LatestSlot
    except ImportError:
        return None
    return LatestSlot


def _check_cycles(spec: PipelineSpec, w, producers: dict[str, tuple[str, str]]) -> None:
    succ: dict[str, list[tuple[str, str, str]]] = {s.name: [] for s in spec.stages}
    for s in spec.stages:
        for port, link in s.inputs.items():
            if link in producers:
                succ[producers[link][0]].append((s.name, port, link))
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m, port, link in succ[n]:
            if state.get(m) == 1:
                cyc = path[path.index(m):] + [m]
                raise _fail(w, ("stages", n, "outputs", producers[link][1]),
                            f"link {link!r} closes a cycle: {' -> '.join(cyc)}")
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for s in spec.stages:
        if s.name not in state:
            visit(s.name)
