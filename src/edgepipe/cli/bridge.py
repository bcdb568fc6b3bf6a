"""``edgepipe bridge``: watch bridged links from any machine (a monitoring station, or a check of a setup).

    edgepipe bridge --connect tcp/198.18.0.1:7447 [--key 'edgepipe/cam/**'] [--seconds N] [--json]

Joins the zenoh network at the given endpoints, subscribes the key expression (default every edgepipe key),
checks each sample as a bridge end would (edgepipe.bridge.wire: a malformed, other-version or oversize one
is counted by reason and logged, never fatal), and prints once a second, per key: records, rate, bytes, gaps
in the sender's numbering, drops; and the bridge ends alive (their liveliness tokens) as they come and go.
It only listens: it publishes nothing and feeds no ring (the ``bridge`` stage kind does that in a pipeline).

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="edgepipe").add_subparsers(dest="command")
>>> add_subcommand(sub)
>>> a = sub.choices["bridge"].parse_args(["--connect", "tcp/198.18.0.1:7447", "--seconds", "2"])
>>> a.connect, a.key, a.seconds
(['tcp/198.18.0.1:7447'], 'edgepipe/**', 2.0)
"""

from __future__ import annotations

import json
import sys
import threading
import time

from edgepipe.bridge.session import ALIVE, Checker, Session, callback, make_config
from edgepipe.bridge.wire import KIND_RECORD
from edgepipe.errors import EdgepipeError

__all__: list[str] = []  # a subcommand, not API


def add_subcommand(sub) -> None:
    """Register ``edgepipe bridge`` (called by edgepipe.cli.main)."""
    p = sub.add_parser("bridge", help="watch bridged links over zenoh: records, rates, drops, ends alive",
                       description="Join the zenoh network of edgepipe bridges (explicit endpoints; --multicast to "
                                   "scout) and report what is published under a key expression, checked as a "
                                   "bridge end checks it, and which bridge ends are alive.")
    p.add_argument("--connect", action="append", default=[], metavar="ENDPOINT",
                   help="a zenoh endpoint to connect to, e.g. tcp/198.18.0.1:7447 (repeatable)")
    p.add_argument("--listen", action="append", default=[], metavar="ENDPOINT", help="an endpoint to listen on")
    p.add_argument("--multicast", action="store_true", help="also scout for peers by UDP multicast")
    p.add_argument("--key", default="edgepipe/**", help="the key expression to watch (default edgepipe/**)")
    p.add_argument("--max-bytes", type=int, default=64 << 20, help="larger records are counted as oversize")
    p.add_argument("--seconds", type=float, default=None, help="stop after N seconds (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="at the end, print the totals as JSON")
    p.set_defaults(func=cmd_bridge)


def cmd_bridge(args) -> int:
    try:
        conf = make_config(listen=args.listen, connect=args.connect, multicast=args.multicast)
        session = Session("watch", "cli", conf, token=False)
    except EdgepipeError as e:
        print(f"edgepipe bridge: {e}", file=sys.stderr)
        return 2
    checkers: dict[str, Checker] = {}
    lock = threading.Lock()

    def on_sample(sample) -> None:
        key = str(sample.key_expr)
        if "/_" in key:  # acks, clock pings: bridge-internal
            return
        with lock:
            chk = checkers.get(key)
            if chk is None:
                chk = checkers[key] = Checker(f"watch <- {key}", args.max_bytes)
        env = chk.check(sample.payload.to_bytes())
        if env is not None and env.kind == KIND_RECORD:
            chk.count(env)

    sub = session.z.declare_subscriber(args.key, callback(on_sample))  # on zenoh's thread, as the bridge does
    t0 = time.monotonic()
    last: dict[str, int] = {}
    try:
        while args.seconds is None or time.monotonic() - t0 < args.seconds:
            time.sleep(1.0 if args.seconds is None else min(1.0, max(0.0, args.seconds - (time.monotonic() - t0))))
            if not args.json:
                print(_line(session, checkers, last, lock), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sub.undeclare()
        alive = session.remotes_alive()
        session.close()
    if args.json:
        with lock:
            keys = {k: {"records": c.received, "bytes": c.bytes, "lost": c.lost, "dropped": dict(c.dropped)}
                    for k, c in sorted(checkers.items())}
        print(json.dumps({"keys": keys, "alive": [k.replace(f"/{ALIVE}/", "/") for k in alive]}))
    return 0


def _line(session, checkers, last, lock) -> str:
    parts = []
    with lock:
        for k, c in sorted(checkers.items()):
            rate = c.received - last.get(k, 0)
            last[k] = c.received
            drops = sum(c.dropped.values())
            parts.append(f"{k}: {c.received} ({rate}/s, {c.bytes / 1e6:.1f} MB, lost {c.lost}, dropped {drops})")
    ends = ", ".join(k.replace(f"/{ALIVE}/", "/") for k in session.remotes_alive()) or "none"
    return f"ends alive: {ends} | " + ("; ".join(parts) or "no records yet")
