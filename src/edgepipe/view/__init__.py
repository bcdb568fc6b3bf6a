"""Seeing a running pipeline: the ``align`` stage kind (IMU attitude at each frame's capture stamp,
edgepipe.view.align) and the ``view`` stage kind (a small aiohttp server showing the frames with their
detections and an attitude overlay, per-part latency against budget and counters, edgepipe.view.stage;
``edgepipe view`` / ``edgepipe demo --view``).

>>> from edgepipe.pipeline.config import stage_kinds
>>> stage_kinds()["align"], stage_kinds()["view"]
('edgepipe.view.align:AlignStage', 'edgepipe.view.stage:ViewStage')
"""
