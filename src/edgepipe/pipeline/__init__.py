"""Pipelines: stages wired into processes by rings, supervised, measured against latency budgets.

``api`` (the user-stage API: PipelineStage, Inlet/Outlet, decorators, the delivery guarantee), ``wire`` (the
stamped record format), ``config`` (TOML and the kinds registry), ``kinds`` (the built-in kinds' factories),
``supervisor`` (the parent), ``host`` (the stage process), ``values`` and ``stats`` (what crosses the control
socket: plain values and stage counters as protobuf), ``report`` (latency books and reports), ``tap`` (side rings of links) and ``attach`` (another process
reading a running pipeline's taps). Imports stages
and everything below them, never the CLI, and never edgepipe.testing (whose stages the kinds registry names
by import path only).

>>> from edgepipe.pipeline.config import parse_config
>>> spec = parse_config('''
... [stages.src]
... kind = "counter"
... outputs = { out = "raw" }
... params = { count = 3 }
... [stages.sink]
... kind = "check"
... inputs = { in = "raw" }
... ''')
>>> sorted(spec.links)
['raw']
"""
