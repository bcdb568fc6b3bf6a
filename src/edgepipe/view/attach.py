"""Add the live view to a pipeline description: taps on the frames, detections and IMU links, an ``align``
stage joining the detections with the IMU by capture stamp, and the ``view`` stage (what ``edgepipe view
FILE`` and ``edgepipe demo --view`` run).

    capture -> frames ----------------------------(tap)--> frames.tap ------------> view
    detect  -> detections -> ...  (tap) -> detections.tap -> align -> view_aligned -> view
    imu     -> samples    -> ...  (tap) -> samples.tap    ---^

>>> from edgepipe.pipeline.config import parse_config
>>> spec = parse_config('''
... [stages.cam]
... kind = "capture"
... outputs = { output = "frames" }
... params = { source = "pattern", fps = 10 }
... [stages.sink]
... kind = "print"
... inputs = { in = "frames" }
... ''')
>>> spec = attach_view(spec, port=0)
>>> spec.links["frames"].tap, [s.name for s in spec.stages], spec.stages[-1].inputs
(True, ['cam', 'sink', 'view'], {'frames': 'frames.tap'})
"""

from __future__ import annotations

from typing import Any

from edgepipe.errors import ConfigError
from edgepipe.pipeline.config import LinkSpec, PipelineSpec, StageSpec, validate
from edgepipe.pipeline.tap import tap_link

__all__ = ["attach_view"]

ALIGNED_LINK = "view_aligned"


def _produced_by(spec: PipelineSpec, kind: str) -> str | None:
    for s in spec.stages:
        if s.kind == kind and s.outputs:
            return next(iter(s.outputs.values()))
    return None


def attach_view(spec: PipelineSpec, *, frames: str | None = None, detections: str | None = None,
                imu: str | None = None, **view_params: Any) -> PipelineSpec:
    """Add the view (and what it reads) to ``spec``, in place; returns it validated.

    ``frames`` / ``detections`` / ``imu`` name the links to show (default: the output of the first
    ``capture``, ``inference`` and ``imu`` stage); ``view_params`` go to the view stage (host, port,
    token, max_fps, sched, ...); ``sched`` (edgepipe.view.priority) goes to the align stage too, except
    ``"idle"`` (the align stage then keeps its ``"batch"``).

    Raises:
        ConfigError: no frames link, a named link that is not in the pipeline, or a stage name taken.
    """
    frames = frames or _produced_by(spec, "capture")
    detections = detections if detections is not None else _produced_by(spec, "inference")
    imu = imu if imu is not None else _produced_by(spec, "imu")
    if frames is None:
        raise ConfigError(f"pipeline {spec.name!r}: the view needs a frames link (no capture stage; name one)")
    for what, ln in (("frames", frames), ("detections", detections), ("imu", imu)):
        if ln is not None and ln not in spec.links:
            raise ConfigError(f"pipeline {spec.name!r}: no link {ln!r} for the view's {what} "
                              f"(links: {sorted(spec.links)})")
    taken = {s.name for s in spec.stages} & {"view", "view_align"}
    if taken:
        raise ConfigError(f"pipeline {spec.name!r} already has a stage named {sorted(taken)[0]!r}")
    if detections is None:
        imu = None  # the IMU's attitude reaches the view through the align stage's results only
    for ln in (frames, detections, imu):
        if ln is not None:
            spec.links[ln].tap = True
    inputs = {"frames": tap_link(frames)}
    if detections is not None and imu is not None:
        spec.links[ALIGNED_LINK] = LinkSpec(ALIGNED_LINK, capacity=1 << 18, mode="drop")
        spec.stages.append(StageSpec("view_align", kind="align",
                                     inputs={"frames": tap_link(detections), "imu": tap_link(imu)},
                                     outputs={"output": ALIGNED_LINK},
                                     params={k: v for k, v in view_params.items()
                                             if k == "sched" and v != "idle"}))
        inputs["results"] = ALIGNED_LINK
    elif detections is not None:
        inputs["results"] = tap_link(detections)
    spec.stages.append(StageSpec("view", kind="view", inputs=inputs, params=dict(view_params)))
    return validate(spec)
