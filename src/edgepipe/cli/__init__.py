"""The ``edgepipe`` command: ``main`` (argument parsing and the subcommands), ``top``, ``doctor``, ``bench``.

The top layer: it may import anything below it, and nothing below imports it.

>>> from edgepipe.cli.main import build_parser
>>> build_parser().parse_args(["status", "cam0"]).name
'cam0'
"""
