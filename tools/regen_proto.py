"""Regenerate src/edgepipe/control/_proto/ from proto/ with grpcio-tools' bundled protoc.

    python tools/regen_proto.py            # rewrite src/edgepipe/control/_proto/edgepipe/v1/*_pb2.py(i) in place
    python tools/regen_proto.py --out DIR  # write into DIR instead (tests/unit/test_proto.py does this)

The protoc version is pinned (PROTOC_PACKAGE below) because its output, including the minimum protobuf
runtime the generated code demands, changes between releases: regenerate with exactly that grpcio-tools
so the checked-in files only change when a schema does. Bump it together with pyproject's test extra and
the protobuf>= line in [project].dependencies.

The .proto files import nothing from each other today. If one ever does, protoc will emit
``from edgepipe.v1 import x_pb2``, which must become ``from edgepipe.control._proto.edgepipe.v1 import x_pb2``:
add that rewrite here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "src" / "edgepipe" / "control" / "_proto"
PROTOC_PACKAGE = "grpcio-tools==1.85.1"
COMMAND = "python tools/regen_proto.py"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "edgepipe" / "v1").glob("*.proto"))


def check_protoc() -> None:
    """Exit with the install hint if grpcio-tools is missing or not the pinned version."""
    want = PROTOC_PACKAGE.split("==")[1]
    try:
        have = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        have = None
    if have != want:
        sys.exit(
            f"regenerating src/edgepipe/control/_proto needs {PROTOC_PACKAGE} (found {have or 'none'}): "
            f"pip install '{PROTOC_PACKAGE}'"
        )


def generate(out: Path) -> list[Path]:
    """Run protoc on every proto/edgepipe/v1/*.proto, writing *_pb2.py and *_pb2.pyi under ``out``."""
    check_protoc()
    from grpc_tools import protoc  # noqa: PLC0415 (imported late so a missing package gets the hint above)

    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}", *files]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed: {' '.join(args)}")
    generated = sorted(p for p in out.rglob("*_pb2.py*"))
    for d in {p.parent for p in generated} | {out / "edgepipe"}:
        # protoc writes no packages; the wheel needs them (setuptools finds edgepipe.control._proto.* by these).
        while d != out.parent and d.is_relative_to(out):
            (d / "__init__.py").touch()
            d = d.parent
    return generated


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_ROOT, help=f"output root (default {OUT_ROOT})")
    args = ap.parse_args(argv)
    for p in generate(args.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
