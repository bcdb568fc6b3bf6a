"""The optional dependencies, imported only where used: a missing one is a MissingExtraError that names the
``pip install "edgepipe[...]"`` to run, never a bare ModuleNotFoundError from deep inside a stage.

The extras (pyproject.toml): ``vision`` (OpenCV), ``inference`` (ONNX Runtime, onnx), ``report`` (matplotlib),
``record`` (mcap, zstandard, lz4, foxglove-schemas-protobuf), ``bridge`` (eclipse-zenoh), ``all`` (every one of them). ``import edgepipe`` needs none.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgepipe.errors import MissingExtraError

# top-level module -> the extra that installs it
EXTRA_OF = {"cv2": "vision", "onnxruntime": "inference", "onnx": "inference", "matplotlib": "report",
            "mcap": "record", "mcap_protobuf": "record", "foxglove_schemas_protobuf": "record",
            "zstandard": "record", "lz4": "record", "zenoh": "bridge", "aiohttp": "view",
            "prometheus_client": "view"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. "cv2", "onnxruntime.quantization") for ``purpose``, or raise MissingExtraError.

    >>> require("json", "a doctest").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the module is there but something it needs is broken: show that, not an install hint
        extra = EXTRA_OF.get(top)
        hint = f'pip install "edgepipe[{extra}]"' if extra else f"pip install {top}"
        raise MissingExtraError(f"{purpose} needs {top!r}, which is not installed: {hint}", extra=extra) from e


def pyplot(purpose: str) -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend (reports are files, never windows)."""
    mpl = require("matplotlib", purpose)
    mpl.use("Agg", force=False)
    return require("matplotlib.pyplot", purpose)
