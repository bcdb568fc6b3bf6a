"""Bridges: links of a pipeline carried to and from other machines over zenoh (``pip install "edgepipe[bridge]"``).

``stage`` (the ``bridge`` stage kind, BridgeStage), ``offload`` (the ``offload`` stage kind, OffloadStage:
frames the edge model is unsure of to a server, its answers merged back by frame seq), ``session`` (zenoh configuration, liveliness, checked
receiving), ``wire`` (the envelope around each record). Sits beside ``record``, above the pipeline layer.

>>> from edgepipe.bridge import BridgeStage
>>> BridgeStage.kind                     # what a pipeline file names it
'bridge'
"""

from edgepipe.bridge.offload import OffloadStage
from edgepipe.bridge.stage import BridgeStage

__all__ = ["BridgeStage", "OffloadStage"]
