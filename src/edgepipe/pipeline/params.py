"""A stage kind's parameters and ports, read from its signature and docstrings, never written by hand: what
:func:`~edgepipe.pipeline.config.validate` checks a pipeline's ``params`` against before anything starts,
and what ``edgepipe kinds`` and the README's table of built-in kinds show.

Where they come from, by what the kind is:

- a :class:`~edgepipe.pipeline.api.PipelineStage` class: its ``__init__`` keywords, following ``**kw`` up
  the classes it passes them to, minus those the pipeline sets (``name``, ``inputs``, ``outputs``,
  ``budget_ms``, ``restart``: keys of the stage's table, not params). Ports have any names. Such a stage is
  made once in the parent to check its params (as ``Pipeline([...])`` does anyway), so its own argument
  checks run too: its constructor must stay cheap (resources belong in ``open()``).
- a ``@source`` / ``@transform`` / ``@sink`` function stage: no params.
- a factory taking bare ring ends (the ``raw_ports`` kinds ``capture``, ``imu``, ``inference``): its
  keywords without a default (``name`` aside) are its ports; the rest are params, and with ``**params``
  and a ``forwards`` attribute (``"module:Class"``) those of that stage class too, minus ``supplies``
  (what the factory builds itself).
- any other :class:`~edgepipe.stages.base.Stage` class: its ``__init__`` keywords; ports are keywords too.

Docs are the first paragraph of each name's entry in the ``Args:`` section of the class or function
docstring; ports are documented in ``Inputs:`` / ``Outputs:`` sections (``*`` stands for any port name).
Types come from the annotations: ``int``, ``float`` (an int is fine), ``bool``, ``str``, ``None``, unions,
``tuple``/``list`` (a TOML array), ``dict`` (a TOML table) and ``Literal`` are checked; anything else is
left to the stage.

>>> from edgepipe.testing import CounterStage
>>> info = describe(CounterStage)
>>> [(p.name, p.default) for p in info.params]
[('count', 0), ('rate_hz', 0.0), ('size', 16)]
>>> check_value(info.params[0], -1), check_value(info.params[0], "ten")
(None, "must be int, got str 'ten'")
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from edgepipe.pipeline.api import PipelineStage
from edgepipe.stages.base import Stage

__all__: list[str] = []  # shared inside edgepipe.pipeline (config) and with the kinds command

EMPTY = inspect.Parameter.empty
PIPELINE_KEYS = ("name", "inputs", "outputs", "budget_ms", "restart")  # set from the stage's own table
_ARG_SECTIONS = ("Args", "Arguments", "Parameters")


@dataclass(frozen=True)
class Param:
    """One parameter: ``default`` is :data:`EMPTY` when it is required; ``hint`` is the resolved type (None:
    not checkable)."""

    name: str
    default: Any = EMPTY
    annotation: str = ""
    doc: str = ""
    hint: Any = None

    @property
    def required(self) -> bool:
        return self.default is EMPTY


@dataclass(frozen=True)
class Port:
    """One port: ``direction`` is ``"inputs"`` or ``"outputs"``; name ``*`` means any name."""

    name: str
    direction: str
    doc: str = ""


@dataclass
class KindInfo:
    """What a kind's target takes. ``how`` is ``"pipeline-stage"``, ``"function"``, ``"raw"`` or ``"stage"``;
    ``fixed_ports``: only the ports listed (by name) exist; ``open_params``: it takes ``**kwargs`` that go
    nowhere this module can see, so unknown params are not refused."""

    obj: Any
    how: str
    summary: str = ""
    params: list[Param] = field(default_factory=list)
    ports: list[Port] = field(default_factory=list)
    fixed_ports: bool = False
    open_params: bool = False
    role: str = ""  # a function stage's: source, transform or sink

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


class NotAStage(TypeError):
    """The object is no stage class, function stage or ring-end factory."""


# ---------------------------------------------------------------------------------------------------
# docstrings


def clean(text: str) -> str:
    """Docstring markup to plain text with `code` kept: ``x`` and :role:`~a.b.X` become `x` and `X`."""
    text = re.sub(r":\w+:`~(?:[\w.]*\.)?(\w+)`", r"`\1`", text)
    text = re.sub(r":\w+:`([\w.]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", " ".join(text.split()))


def summary(obj: Any) -> str:
    """The first paragraph of a docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    return clean(doc.split("\n\n", 1)[0])


def doc_sections(obj: Any, names: tuple[str, ...]) -> dict[str, str]:
    """``{name: first paragraph}`` of the entries in the docstring sections called ``names`` (``a, b: text``
    documents both a and b; ``name (type): text`` is read too)."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    out: dict[str, str] = {}
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(\w+):\s*$", lines[i])
        i += 1
        if not m or m.group(2) not in names:
            continue
        head = len(m.group(1))
        entry_indent = None
        current: list[str] = []
        cur_names: list[str] = []
        closed = False
        while i < len(lines):
            ln = lines[i]
            indent = len(ln) - len(ln.lstrip())
            if ln.strip() and indent <= head:
                break
            i += 1
            if not ln.strip():
                closed = True
                continue
            e = re.match(r"^([\w*]+(?:\s*,\s*[\w*]+)*)(?:\s*\([^)]*\))?:\s*(.*)$", ln.strip())
            if e and (entry_indent is None or indent == entry_indent):
                entry_indent = indent
                for n in cur_names:
                    out.setdefault(n, clean(" ".join(current)))
                cur_names = [n.strip() for n in e.group(1).split(",")]
                current = [e.group(2)]
                closed = False
            elif cur_names and not closed:
                current.append(ln.strip())
        for n in cur_names:
            out.setdefault(n, clean(" ".join(current)))
    return out


# ---------------------------------------------------------------------------------------------------
# signatures


def _hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: check each one alone
        out = {}
        g = getattr(fn, "__globals__", {})
        for k, v in getattr(fn, "__annotations__", {}).items():
            try:
                out[k] = eval(v, g) if isinstance(v, str) else v  # noqa: S307 - the stage's own annotation
            except Exception:  # noqa: BLE001
                pass
        return out


def _params_of(fn: Callable, docs: dict[str, str], skip: set[str]) -> tuple[list[Param], bool]:
    """The keyword-passable parameters of ``fn`` (without ``skip``) and whether it takes ``**kwargs``."""
    sig = inspect.signature(fn)
    hints = _hints(fn)
    out, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name in ("self", "cls") or p.name in skip:
            continue
        ann = p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)
        out.append(Param(p.name, p.default, "" if p.annotation is EMPTY else ann, docs.get(p.name, ""),
                         hints.get(p.name)))
    return out, var_kw


def _ports_from_doc(obj: Any) -> list[Port]:
    out = []
    for direction in ("inputs", "outputs"):
        for name, doc in doc_sections(obj, (direction.capitalize(),)).items():
            out.append(Port(name, direction, doc))
    return out


def _import(target: str) -> Any:
    mod, _, attr = target.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _class_params(cls: type, skip: set[str]) -> tuple[list[Param], bool]:
    """Keywords of ``cls.__init__``, following ``**kw`` to the next ``__init__`` up the MRO (stopping at
    PipelineStage and Stage, whose arguments the pipeline sets)."""
    params: list[Param] = []
    seen = set(skip)
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__ or klass is object:
            continue
        if klass in (PipelineStage, Stage):
            return params, False
        ps, var_kw = _params_of(klass.__dict__["__init__"], doc_sections(klass, _ARG_SECTIONS), seen)
        params += ps
        seen |= {p.name for p in ps}
        if not var_kw:
            return params, False
    return params, True


def describe(obj: Any, raw_ports: bool = False) -> KindInfo:
    """What ``obj`` (a kind's target) takes. Raises NotAStage for anything that is not a stage, and
    ImportError when a ``forwards`` class cannot be imported."""
    if raw_ports:
        if not callable(obj):
            raise NotAStage(f"is {_a(obj)}, not a stage factory")
        sig = inspect.signature(obj)
        port_names = [p.name for p in sig.parameters.values() if p.default is EMPTY and p.name != "name"
                      and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        documented = {p.name: p for p in _ports_from_doc(obj)}
        ports = [documented.get(n, Port(n, "inputs" if n.startswith("in") else "outputs")) for n in port_names]
        params, var_kw = _params_of(obj, doc_sections(obj, _ARG_SECTIONS), {"name", *port_names})
        forwards = getattr(obj, "forwards", None)
        if var_kw and forwards:
            cls = _import(forwards)
            more, var_kw = _class_params(cls, {"name", *port_names, *(p.name for p in params),
                                               *getattr(obj, "supplies", ())})
            params += more
        return KindInfo(obj, "raw", summary(obj), params, ports, fixed_ports=True, open_params=var_kw)
    if isinstance(obj, type) and issubclass(obj, PipelineStage):
        params, var_kw = _class_params(obj, set(PIPELINE_KEYS))
        return KindInfo(obj, "pipeline-stage", summary(obj), params, _ports_from_doc(obj), open_params=var_kw)
    if isinstance(obj, type) and issubclass(obj, Stage):
        params, var_kw = _class_params(obj, {"name"})
        return KindInfo(obj, "stage", summary(obj), params, _ports_from_doc(obj), open_params=var_kw)
    wrapped = getattr(obj, "__wrapped__", None)
    if callable(obj) and wrapped is not None and _only_var_keyword(obj):
        try:
            probe = obj()
        except Exception:  # noqa: BLE001 - not a function-stage factory
            probe = None
        if isinstance(probe, PipelineStage):
            role = probe.rebuild_args()[3]
            ports = [Port("*", d, f"any name{'s' if role == 'transform' else ''}: the records it "
                                  f"{'takes' if d == 'inputs' else 'makes'}")
                     for d in ({"source": ("outputs",), "sink": ("inputs",)}.get(role, ("inputs", "outputs")))]
            return KindInfo(obj, "function", summary(wrapped), [], ports, role=role)
    if isinstance(obj, type):
        raise NotAStage(f"is a class that is not a Stage or PipelineStage subclass ({obj.__module__}."
                        f"{obj.__qualname__})")
    raise NotAStage(f"is {_a(obj)}, not a stage (a Stage/PipelineStage class or a @source/@transform/@sink function)")


def _only_var_keyword(fn: Callable) -> bool:
    try:
        return all(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):
        return False


def _a(obj: Any) -> str:
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "a function"
    if inspect.ismodule(obj):
        return "a module"
    n = type(obj).__name__
    return f"{'an' if n[:1].lower() in 'aeiou' else 'a'} {n}"


# ---------------------------------------------------------------------------------------------------
# checking values


def type_name(p: Param) -> str:
    return p.annotation.replace(" | ", " or ") if p.annotation else "?"


def check_value(p: Param, value: Any) -> str | None:
    """None if ``value`` fits the parameter's annotation (or it cannot be checked), else why not."""
    if p.hint is None or _fits(p.hint, value) is not False:
        return None
    return f"must be {type_name(p)}, got {type(value).__name__} {value!r}"


def _fits(hint: Any, v: Any) -> bool | None:
    """True / False, or None when this hint cannot be checked against a TOML value."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return v is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        res = [_fits(a, v) for a in args]
        return True if True in res else (None if None in res else False)
    if origin is typing.Literal:
        return v in args
    if hint is bool:
        return isinstance(v, bool)
    if isinstance(v, bool) and hint in (int, float):
        return False
    if hint is float:
        return isinstance(v, (int, float))
    if hint is int or hint is str:
        return isinstance(v, hint)
    if hint is tuple or origin is tuple or hint is list or origin is list:
        if not isinstance(v, (list, tuple)):
            return False
        if not args or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            elem = args[:1]
            return all(_fits(elem[0], x) is not False for x in v) if elem else True
        if origin is tuple:
            return len(v) == len(args) and all(_fits(a, x) is not False for a, x in zip(args, v))
        return all(_fits(args[0], x) is not False for x in v)
    if hint is dict or origin is dict:
        return isinstance(v, dict)
    if isinstance(hint, type):
        if hint.__module__ == "os" and hint.__name__ == "PathLike":
            return isinstance(v, str)
        return isinstance(v, hint)
    return None


def suggest(name: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss, else ``""``."""
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    return f" (did you mean {near[0]!r}?)" if near else ""


# ---------------------------------------------------------------------------------------------------
# checking a stage of a pipeline (edgepipe.pipeline.config calls these with its own error maker)


class searching:
    """``dirs`` on sys.path, last, while stage modules are imported and tried (the pipeline file's directory)."""

    def __init__(self, dirs: list[str]) -> None:
        self.added = [d for d in dirs if d not in sys.path]

    def __enter__(self) -> None:
        sys.path.extend(self.added)

    def __exit__(self, *exc: object) -> None:
        for d in self.added:
            if d in sys.path:
                sys.path.remove(d)


def one_line(e: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def import_stage(fail: Callable[[str], Exception], kind: str, dirs: list[str], here: str) -> Any:
    """Import ``module:attr`` with ``dirs`` searched last and check it is a stage; raise ``fail(message)``
    (the message starts with the value) when it cannot be imported or is no stage."""
    mod, _, attr = kind.partition(":")
    with searching(dirs):
        try:
            obj: Any = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and (mod == e.name or mod.startswith(e.name + ".")):
                raise fail(f"{kind!r}: cannot import module {mod!r}: not on sys.path (PYTHONPATH) nor next to "
                           f"the pipeline file ({here})") from None
            raise fail(f"{kind!r}: importing module {mod!r} failed: {one_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - anything the user's module raises while it is imported
            raise fail(f"{kind!r}: importing module {mod!r} failed: {one_line(e)}") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise fail(f"{kind!r}: module {mod!r} has no attribute {part!r}")
            obj = getattr(obj, part)
        try:
            describe(obj)
        except NotAStage as e:
            raise fail(f"{kind!r} {e}") from None
    return obj


def check_stage(fail: Callable[[tuple[str, ...], str], Exception], s: Any, label: str, obj: Any,
                raw_ports: bool) -> None:
    """Check one stage spec ``s`` (its ports and params) against what ``obj``, its kind's target, takes:
    raise ``fail(key path under the stage, message)`` for a port the kind has not (or a missing one), an
    unknown param (naming a near miss), a value its annotation refuses, a missing required param, or one its
    own constructor refuses (PipelineStage classes and function stages, which are cheap to make)."""
    try:
        info = describe(obj, raw_ports)
    except NotAStage as e:
        raise fail(("kind",), f"{label!r} {e}") from None
    except ImportError:
        return  # the class its params go to is not importable here: the stage process will say so
    for direction, mapping in (("inputs", s.inputs), ("outputs", s.outputs)):
        for port in mapping:
            if info.fixed_ports:
                p = next((p for p in info.ports if p.name == port), None)
                if p is None:
                    raise fail((direction, port), f"kind {label!r} has no port {port!r}; its ports: "
                                                  f"{', '.join(p.name for p in info.ports)}")
                if p.direction != direction:
                    raise fail((direction, port), f"port {port!r} of kind {label!r} is one of its {p.direction}, "
                                                  f"not {direction}")
            elif info.role and not any(p.direction == direction for p in info.ports):
                raise fail((direction, port), f"a @{info.role} stage has no {direction}")
    if info.fixed_ports:
        for p in info.ports:
            if p.name not in (s.inputs if p.direction == "inputs" else s.outputs):
                raise fail((p.direction,), f"kind {label!r} needs its port {p.name!r} in {p.direction}")
    for k, v in s.params.items():
        if info.how in ("pipeline-stage", "function") and k in PIPELINE_KEYS:
            raise fail(("params", k), f"{k} = {v!r} is set by the pipeline, not a param (name, inputs, outputs, "
                                      f"budget_ms and restart are keys of the stage's own table)")
        p = info.param(k)
        if p is None:
            if info.open_params:
                continue
            known = [p.name for p in info.params]
            raise fail(("params", k), f"unknown parameter {k!r} = {v!r} of kind {label!r}{suggest(k, known)}; "
                                      f"it takes: {', '.join(known) or 'no params'}")
        why = check_value(p, v)
        if why:
            raise fail(("params", k), why)
    for p in info.params:
        if p.required and p.name not in s.params:
            raise fail(("params",), f"kind {label!r} needs parameter {p.name!r} ({type_name(p)})")
    if info.how in ("pipeline-stage", "function"):
        try:  # its own checks; Pipeline([...]) makes such stages in the parent all the same
            obj(name=s.name, inputs=dict(s.inputs), outputs=dict(s.outputs), **s.params)
        except Exception as e:  # noqa: BLE001 - whatever the user's constructor raises, on one line
            msg = one_line(e)
            k = next((k for k in s.params if re.search(rf"\b{re.escape(k)}\b", msg)), None)
            raise fail(("params", k) if k else ("params",),
                       f"{'' if k is None else f'{k} = {s.params[k]!r}: '}kind {label!r} refuses its params: "
                       f"{msg}") from None
