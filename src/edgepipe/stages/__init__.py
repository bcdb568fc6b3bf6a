"""Stages: a process's loop between its inputs and outputs (``base.Stage``), and the built-ins.

``capture`` (OpenCV: extra ``vision``), ``imu`` (the C sampling loop through ``edgepipe.imu_loop``),
``inference`` (ONNX Runtime workers: extra ``inference``). A stage uses handles and the control plane; it never
imports the pipeline layer or the CLI.

>>> from edgepipe.stages.base import Stage
>>> Stage.__name__
'Stage'
"""
