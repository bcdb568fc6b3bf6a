"""Two network namespaces joined by a veth pair, for bridge tests (root only): ``ns_a`` holds 198.18.0.1/30,
``ns_b`` 198.18.0.2/30 (198.18.0.0/15 is reserved for benchmarking). Removed again by :meth:`Netns.remove`
(deleting a namespace deletes its end of the veth, and with it the pair)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

ADDR_A, ADDR_B = "198.18.0.1", "198.18.0.2"
HERE = Path(__file__).resolve().parent


def pair(skip_unless_ci: Callable[[str], None], tag: str = "") -> Iterator[Netns]:
    """The body of a test module's ``netns`` fixture: a pair made for the module and removed after it, or the
    module skipped (failed under CI=true, through ``skip_unless_ci``) where namespaces cannot be made.
    ``EDGEPIPE_NETNS_PREFIX`` starts the names (default ``ep``), to tell apart several users of one machine."""
    n = Netns(tag, prefix=os.environ.get("EDGEPIPE_NETNS_PREFIX", "ep"))
    try:
        n.create()
    except (OSError, subprocess.CalledProcessError) as e:
        skip_unless_ci(f"network namespaces cannot be created here ({e}; root and iproute2 are needed)")
    yield n
    n.remove()


def child_env() -> dict[str, str]:
    """The environment of a process a test starts in a namespace: this checkout's edgepipe first (the one the
    test imported), then this folder (the test's helper scripts)."""
    env = dict(os.environ)
    src = str(Path(__import__("edgepipe").__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, str(HERE), env.get("PYTHONPATH", "")])
    return env


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Netns:
    def __init__(self, tag: str = "", prefix: str = "ep") -> None:
        n = f"{os.getpid() % 100000}{tag}"
        self.ns_a, self.ns_b = f"{prefix}bA{n}", f"{prefix}bB{n}"
        self.veth_a, self.veth_b = f"{prefix}va{n}"[:15], f"{prefix}vb{n}"[:15]

    def create(self) -> None:
        """Raises CalledProcessError / FileNotFoundError / PermissionError where namespaces can't be made."""
        _ip("netns", "add", self.ns_a)
        try:
            _ip("netns", "add", self.ns_b)
            _ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
            for ns, veth, addr in ((self.ns_a, self.veth_a, ADDR_A), (self.ns_b, self.veth_b, ADDR_B)):
                _ip("link", "set", veth, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", veth)
                _ip("-n", ns, "link", "set", veth, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.veth_a], capture_output=True, timeout=30)

    def cmd(self, side: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``side`` ("a" or "b")."""
        return ["ip", "netns", "exec", self.ns_a if side == "a" else self.ns_b, *argv]
