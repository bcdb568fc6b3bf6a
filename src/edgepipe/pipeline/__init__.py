"""Pipelines: stages wired into processes by rings, supervised, measured against latency budgets.

``api`` (the user-stage API: PipelineStage, Inlet/Outlet, decorators), ``config`` (TOML and kinds),
``supervisor`` (the parent), ``report`` (latency books and reports). Imports stages and everything below them,
never the CLI.

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
