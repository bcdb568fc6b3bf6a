"""Where the files shipped in ``edgepipe/data`` live (models, recordings, video, the demo pipeline): one place,
so a module can move between layers without its path arithmetic breaking."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


def data_path(*parts: str) -> Path:
    """A path under the package's data directory, e.g. ``data_path("video", "vtest_100.mp4")``."""
    return DATA_DIR.joinpath(*parts)
