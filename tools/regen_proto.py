"""Regenerate src/edgepipe/control/_proto/ from proto/ with grpcio-tools' bundled protoc.

    python tools/regen_proto.py --install-protoc   # once: the pinned protoc into build/protoc/ (needs PyPI)
    python tools/regen_proto.py                    # rewrite src/edgepipe/control/_proto/edgepipe/v1/*_pb2.py(i)
    python tools/regen_proto.py --out DIR          # write into DIR instead (tests/unit/test_proto.py does this)

The protoc version is pinned (PROTOC_PACKAGE below) because its output decides which protobuf runtimes can
import the generated code. grpcio-tools 1.62.3 bundles protoc 25.1, whose Python output calls no runtime
version check: it imports warning-free on every runtime from 4.25.1 (its own version) through 7.x, which
is the range pyproject declares (protobuf>=4.25.1,<8, floor also in tools/protobuf_floor.txt). From protoc
27 (grpcio-tools 1.66) on, the output calls runtime_version.ValidateProtobufRuntimeVersion: it refuses
every runtime older than the protoc, and runtimes 6.30-6.31 warn on import for gencode of major 5, so a
newer pin narrows the range (the floor would become the protoc's version). tests/unit/test_proto.py checks
that the checked-in code has no such call and that pyproject's floor is the code's version.

grpcio-tools 1.62.3 declares protobuf<5 although its protoc does not use the Python runtime at all, so it
is not installed into the project's environment (that would pull protobuf down to 4.x and other packages
with it): --install-protoc puts it, without dependencies, into build/protoc/, and regeneration runs it from
there. A grpcio-tools of exactly the pinned version installed in the running environment is used as well.

The .proto files import nothing from each other today. If one ever does, protoc will emit
``from edgepipe.v1 import x_pb2``, which must become ``from edgepipe.control._proto.edgepipe.v1 import x_pb2``:
add that rewrite here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "src" / "edgepipe" / "control" / "_proto"
PROTOC_PACKAGE = "grpcio-tools==1.62.3"
PROTOC_VERSION = PROTOC_PACKAGE.split("==")[1]
PROTOC_DIR = ROOT / "build" / "protoc" / f"grpcio-tools-{PROTOC_VERSION}"
COMMAND = "python tools/regen_proto.py"
INSTALL_COMMAND = f"{COMMAND} --install-protoc"
# Runs the bundled protoc (grpc_tools.protoc imports only its own extension, never google.protobuf).
_RUN_PROTOC = "import sys; from grpc_tools import protoc; sys.exit(protoc.main(sys.argv[1:]))"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "edgepipe" / "v1").glob("*.proto"))


def _installed_version(path: list[str] | None = None) -> str | None:
    dists = importlib.metadata.distributions(name="grpcio-tools", **({"path": path} if path else {}))
    return next((d.version for d in dists), None)


def protoc_path() -> str | None:
    """The sys.path entry holding the pinned grpcio-tools ('' for the running environment), or None."""
    if PROTOC_DIR.is_dir() and _installed_version([str(PROTOC_DIR)]) == PROTOC_VERSION:
        return str(PROTOC_DIR)
    if _installed_version() == PROTOC_VERSION:
        return ""
    return None


def check_protoc() -> str:
    """Where the pinned protoc is; exit with the install hint if it is nowhere."""
    where = protoc_path()
    if where is None:
        have = _installed_version()
        sys.exit(
            f"regenerating src/edgepipe/control/_proto needs {PROTOC_PACKAGE} (found "
            f"{f'grpcio-tools {have} in this environment' if have else 'none'}, and nothing in "
            f"{PROTOC_DIR.relative_to(ROOT)}): run\n    {INSTALL_COMMAND}\nfrom the repository root "
            f"(it installs the pinned protoc into {PROTOC_DIR.relative_to(ROOT)}, leaving this environment alone)"
        )
    return where


def install_protoc() -> None:
    """pip-install the pinned grpcio-tools, without its dependencies, into PROTOC_DIR."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary", ":all:",
           "--upgrade", "--target", str(PROTOC_DIR), PROTOC_PACKAGE]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"could not install {PROTOC_PACKAGE}: {' '.join(cmd)}")


def generate(out: Path) -> list[Path]:
    """Run protoc on every proto/edgepipe/v1/*.proto, writing *_pb2.py and *_pb2.pyi under ``out``."""
    where = check_protoc()
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}", *files]
    env = dict(os.environ)
    if where:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [where, env.get("PYTHONPATH")]))
    if subprocess.run([sys.executable, "-c", _RUN_PROTOC, *args], env=env).returncode != 0:
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
    ap.add_argument("--install-protoc", action="store_true",
                    help=f"install {PROTOC_PACKAGE} into {PROTOC_DIR} (no dependencies) and exit")
    args = ap.parse_args(argv)
    if args.install_protoc:
        install_protoc()
        check_protoc()
        print(PROTOC_DIR)
        return 0
    for p in generate(args.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
