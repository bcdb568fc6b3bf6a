"""Bridges: links of a pipeline carried to and from other machines over zenoh (``pip install "edgepipe[bridge]"``).

``stage`` (the ``bridge`` stage kind, BridgeStage), ``session`` (zenoh configuration, liveliness, checked
receiving), ``wire`` (the envelope around each record). Sits beside ``record``, above the pipeline layer.

>>> from edgepipe.bridge import BridgeStage
>>> BridgeStage.kind                     # what a pipeline file names it
'bridge'
"""

from edgepipe.bridge.stage import BridgeStage

__all__ = ["BridgeStage"]
