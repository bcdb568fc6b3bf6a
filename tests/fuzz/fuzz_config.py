"""Atheris harness: pipeline TOML (``edgepipe.pipeline.config.parse_config``) on fuzzed text.

Byte 0 picks the form of the rest:

  text        the bytes as UTF-8 text (invalid sequences replaced), as ``load_config`` reads a file.
  structured  a document generated from the bytes (``atheris.FuzzedDataProvider``): [pipeline], [stages.*],
              [links.*] and [budgets] tables whose keys are mostly the known ones and whose values are of
              every TOML type, serialized to TOML here (tomli_w is not a dependency); so most inputs get
              past the TOML parser into the checks (kinds, ports, links, budgets, cycles, file params).

The only exception allowed out is ConfigError, and it must carry ``.path`` (the path passed in), ``.line``
(None or a line of the text) and ``.key``; a TypeError, KeyError, AttributeError, RecursionError or
anything else is a finding. A spec that parses has its stages' links all declared in ``links``.

Run directly (libFuzzer flags pass through):

    python tests/fuzz/fuzz_config.py -max_total_time=600 [CORPUS_DIR]
"""

from __future__ import annotations

import json
import math

import atheris
from _harness import instrument, main

with instrument("edgepipe.pipeline.config"):
    from edgepipe.errors import ConfigError
    from edgepipe.pipeline.config import parse_config


PATH = "fuzz.toml"
KINDS = ["counter", "relay", "check", "print", "imu", "capture", "inference", "warp"]
LINKS = ["a", "b", "c", "src"]
PIPELINE_KEYS = ["name", "restart", "max_restarts", "restart_window_s", "backoff_s", "stats_interval_s",
                 "drain_timeout_s", "start_timeout_s", "budget_ms", "report_dir", "bogus"]
STAGE_KEYS = ["kind", "inputs", "outputs", "params", "budget_ms", "restart", "max_restarts", "bogus"]
LINK_KEYS = ["capacity", "mode", "budget_ms", "bogus"]
STRINGS = ["on-failure", "never", "always", "lossless", "drop", "latest", "x", "", "pkg:missing", "/dev/null",
           "model.onnx", "rtsp://cam", "0"]
PARAMS = ["count", "rate_hz", "model_path", "path", "file", "source"]


def toml_key(k: str) -> str:
    return json.dumps(k, ensure_ascii=False)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def _value(fdp, depth: int = 0, strings=STRINGS):
    t = fdp.ConsumeIntInRange(0, 7 if depth < 2 else 4)
    if t == 0:
        return fdp.ConsumeIntInRange(-2, 1 << 20) if fdp.ConsumeBool() else fdp.ConsumeInt(8)
    if t == 1:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if t == 2:
        return fdp.ConsumeBool()
    if t in (3, 4):
        return fdp.PickValueInList(strings) if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(8)
    if t == 5:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {_key(fdp, LINKS + PARAMS): _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}


def _key(fdp, known: list[str]) -> str:
    return fdp.PickValueInList(known) if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeUnicodeNoSurrogates(6)


def _ports(fdp) -> dict:
    return {_key(fdp, ["in", "out", "output", "input"]): (fdp.PickValueInList(LINKS) if fdp.ConsumeIntInRange(0, 7)
                                                          else _value(fdp, 2))
            for _ in range(fdp.ConsumeIntInRange(0, 2))}


def structured(fdp) -> str:
    lines = []
    if fdp.ConsumeBool():
        lines.append("[pipeline]")
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            lines.append(f"{toml_key(_key(fdp, PIPELINE_KEYS))} = {toml_value(_value(fdp))}")
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        lines.append(f"[stages.{toml_key(_key(fdp, ['src', 'mid', 'sink', 'a', 'x.y']))}]")
        table = {}
        for _ in range(fdp.ConsumeIntInRange(0, 5)):
            k = _key(fdp, STAGE_KEYS)
            if k == "kind":
                table[k] = fdp.PickValueInList(KINDS) if fdp.ConsumeIntInRange(0, 7) else _value(fdp)
            elif k in ("inputs", "outputs") and fdp.ConsumeIntInRange(0, 7):
                table[k] = _ports(fdp)
            elif k == "params" and fdp.ConsumeIntInRange(0, 7):
                table[k] = {_key(fdp, PARAMS): _value(fdp, 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}
            else:
                table[k] = _value(fdp)
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        lines.append(f"[links.{toml_key(_key(fdp, LINKS))}]")
        table = {_key(fdp, LINK_KEYS): _value(fdp, 0, STRINGS + ["4096", "65536"])
                 for _ in range(fdp.ConsumeIntInRange(0, 3))}
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    if fdp.ConsumeBool():
        lines.append("[budgets]")
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            k = _key(fdp, ["end_to_end", "end_to_end[sink]", "src", "a_ms", "sink.step"])
            lines.append(f"{toml_key(k)} = {toml_value(_value(fdp))}")
    return "\n".join(lines) + "\n"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        text = data[1:].decode("utf-8", "replace")
    else:
        text = structured(atheris.FuzzedDataProvider(data[1:]))
    try:
        spec = parse_config(text, PATH, base_dir="/nonexistent-edgepipe-fuzz")
    except ConfigError as e:
        assert e.path == PATH, (e.path, str(e))
        assert e.line is None or (isinstance(e.line, int) and e.line >= 1), e.line
        assert e.key is None or isinstance(e.key, str), e.key
        return
    for s in spec.stages:
        for link in (*s.inputs.values(), *s.outputs.values()):
            assert link in spec.links, (link, sorted(spec.links))


def seeds() -> dict[str, bytes]:
    doc = parse_config.__module__ and __import__("edgepipe.pipeline.config", fromlist=["x"]).__doc__
    example = doc[doc.index("[pipeline]"):doc.index(">>>")]
    return {
        "config-example": b"\x00" + "\n".join(ln.strip() for ln in example.splitlines()).encode(),
        "config-min": b"\x00[stages.src]\nkind = \"counter\"\noutputs = { out = \"n\" }\n"
                      b"[stages.sink]\nkind = \"check\"\ninputs = { in = \"n\" }\n",
        "config-bad": b"\x00[stages.src]\nkind = \"warp-drive\"\n[links.x]\ncapacity = 3\n",
        "config-structured": b"\x01" + bytes(range(256)),
        "config-deep": b"\x00[stages.src]\nparams = { a = " + b"[" * 600 + b"]" * 600 + b" }\n",
    }


if __name__ == "__main__":
    main(test_one_input, seeds)
