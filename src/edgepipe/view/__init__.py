"""Seeing a running pipeline: the ``align`` stage kind (IMU attitude at each frame's capture stamp,
edgepipe.view.align) and the ``view`` stage kind (a small aiohttp server showing the frames with their
detections and an attitude overlay, per-part latency against budget and counters, edgepipe.view.stage;
``edgepipe view`` / ``edgepipe demo --view``)."""
