"""The ``edgepipe`` command (placeholder surface until the pipeline CLI lands): ``ls``, ``status``, ``cleanup``."""
