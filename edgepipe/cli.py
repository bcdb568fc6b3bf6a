"""The ``edgepipe`` command: look at and clean up shared-memory rings.

    edgepipe ls                 every /dev/shm/edgepipe.* segment with its ring status
    edgepipe status NAME        one ring's control block
    edgepipe cleanup [-n]       unlink named rings whose every recorded process is dead
    edgepipe quantize OUT.onnx  static INT8 text detector calibrated on real frames (edgepipe.quantize)

``cleanup`` only removes segments it can read as rings and whose creator, producer and consumer pids are all
gone; anything else is listed and left alone.
"""

from __future__ import annotations

import argparse
import os
import sys

from edgepipe.errors import EdgepipeError
from edgepipe.ring import Ring, RingStatus
from edgepipe.shm import SharedRegion, list_segments

__all__ = ["main"]


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _status(name: str) -> RingStatus | str:
    """The ring status of a segment, or a sentence saying why it is not a readable ring."""
    try:
        region = SharedRegion.attach(name)
    except OSError as e:
        return f"cannot open: {e}"
    try:
        return Ring(region).status()
    except EdgepipeError as e:
        return str(e)
    finally:
        region.close()


def _pids(s: RingStatus) -> list[int]:
    return [p for p in (s.creator_pid, s.producer_pid, s.consumer_pid) if p > 0]


def _describe(name: str, s: RingStatus | str) -> str:
    if isinstance(s, str):
        return f"{name:32}  not a ring: {s}"
    live = [p for p in _pids(s) if _alive(p)]
    state = f"live pids {live}" if live else "all processes dead"
    return (
        f"{name:32}  capacity={s.capacity} used={s.used} queued={s.queued} "
        f"producer={s.producer_pid}{' (closed)' if s.producer_closed else ''} "
        f"consumer={s.consumer_pid}{' (closed)' if s.consumer_closed else ''}  {state}"
    )


def cmd_ls(args: argparse.Namespace) -> int:
    names = list_segments()
    if not names:
        print("no edgepipe segments in /dev/shm")
    for name in names:
        print(_describe(name, _status(name)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    s = _status(args.name)
    if isinstance(s, str):
        print(f"{args.name}: {s}", file=sys.stderr)
        return 1
    for k, v in vars(s).items():
        print(f"{k:18} {v}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed = 0
    for name in list_segments():
        s = _status(name)
        if isinstance(s, str) or any(_alive(p) for p in _pids(s)):
            print(f"kept     {_describe(name, s)}")
            continue
        if not args.dry_run:
            SharedRegion.attach(name).close()  # proves it is still there and ours to open
            os.unlink(os.path.join("/dev/shm", "edgepipe." + name))
        removed += 1
        print(f"{'would remove' if args.dry_run else 'removed '} {name}")
    print(f"{removed} segment(s) {'to remove' if args.dry_run else 'removed'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgepipe`` command."""
    p = argparse.ArgumentParser(prog="edgepipe", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ls", help="list edgepipe segments").set_defaults(func=cmd_ls)
    st = sub.add_parser("status", help="show one ring's control block")
    st.add_argument("name")
    st.set_defaults(func=cmd_status)
    cl = sub.add_parser("cleanup", help="unlink rings whose processes are all dead")
    cl.add_argument("-n", "--dry-run", action="store_true", help="only say what would be removed")
    cl.set_defaults(func=cmd_cleanup)
    from edgepipe.quantize import add_subcommand as add_quantize  # issue 8: `edgepipe quantize`

    add_quantize(sub)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
