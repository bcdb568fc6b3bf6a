"""Instructions per ring record, counted with callgrind, plus the cross-core cost callgrind cannot see.

Builds benchmarks/callgrind_pair.c against csrc/ep_ring.c and what it links (ep_peer.c, ep_wait.c,
ep_async.c, ep_shm.c, ep_clock.c; gcc -O2 -g) into a temp
dir, then:

1. callgrind: for each MODE (the library's ep_ring_try_write/ep_ring_try_read, and four micro-rings:
   8- vs 64-byte-aligned records, tail polling vs a per-record sequence word) runs
   ``valgrind --tool=callgrind callgrind_pair count MODE N SIZE`` for N = --n1 and --n2 and divides the
   difference of the totals by the difference of N: instructions per write+read pair, with the set-up
   cost gone. ``callgrind_annotate --inclusive=yes`` gives the write and read functions separately.
2. native, two pinned threads (--cpus): ``stream`` (producer -> consumer, ns per record, 1 MiB ring) and
   ``pingpong`` (one record bounced over two rings, one-way ns), each bracketed by the cache-line probe.
   These are wall-clock numbers and move with the near/far core pair and with other load.

--seconds scales the native record counts (1.0: --reps repetitions of 400 k records per stream run and
of 30 k round trips per ping-pong run; min and median reported, so a busy VM shows in the median but
rarely in the min); callgrind counts do not depend on it.

    python benchmarks/callgrind_pair.py
    python benchmarks/callgrind_pair.py --no-native --n1 50000 --n2 150000
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import _common as C

ROOT = C.HERE.parent
CSRC = ROOT / "csrc"
COUNT_MODES = ["lib", "step8", "step64", "seq8", "seq64", "step8f"]
STREAM_MODES = ["lib", "step8", "step8f", "step64", "seq8", "seq64", "libbatch", "batch8", "batch8pf"]
PINGPONG_MODES = ["lib", "step8", "step8f", "step64", "seq8", "seq64"]
FUNCS = {
    "lib": ("ep_ring_try_write", "ep_ring_try_read"),
    "step8": ("micro_write_step8", "micro_read_step8"),
    "step64": ("micro_write_step64", "micro_read_step64"),
    "seq8": ("micro_write_seq8", "micro_read_seq8"),
    "seq64": ("micro_write_seq64", "micro_read_seq64"),
    "step8f": ("micro_write_step8f", "micro_read_step8f"),
}
DESCR = {
    "lib": "edgepipe ep_ring_try_write + ep_ring_try_read (8-B records, tail polling, copy to scratch)",
    "step8": "micro: 8-B-aligned records, reader polls the tail",
    "step64": "micro: 64-B-aligned records, reader polls the tail",
    "seq8": "micro: 8-B-aligned records, reader polls a per-record sequence word",
    "seq64": "micro: 64-B-aligned records, per-record sequence word",
    "step8f": "micro: step8 + the library's notify() (seq_cst fence + wait-word load) per publish",
    "libbatch": "edgepipe ep_ring_try_write_fixed / ep_ring_try_read_batch, 256 per call",
    "batch8": "micro: step8, 256 per call, one publish per call",
    "batch8pf": "micro: batch8 + software prefetch of the lines each call touches",
}
_ANNOT = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\S*?:(\S+)\s")


def extra_args(p) -> None:
    p.add_argument("--n1", type=int, default=100_000, help="pairs in the first callgrind run")
    p.add_argument("--n2", type=int, default=200_000, help="pairs in the second callgrind run")
    p.add_argument("--no-native", action="store_true", help="skip the two-thread wall-clock runs")
    p.add_argument("--reps", type=int, default=15, help="short repetitions per native run (min/median)")


LINKED = ("ep_ring.c", "ep_peer.c", "ep_wait.c", "ep_async.c", "ep_shm.c", "ep_clock.c")


def build() -> str:
    """Compile the harness into the run's temp dir; RuntimeError with gcc's output if it fails (ring_latency.py
    builds it too, for its C-to-C row)."""
    exe = C.tmpdir() / "callgrind_pair"
    cmd = ["gcc", "-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", f"-I{CSRC}", str(C.HERE / "callgrind_pair.c"),
           *(str(CSRC / f) for f in LINKED), "-o", str(exe), "-lrt", "-pthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"build failed:\n{' '.join(cmd)}\n{r.stderr}")
    print(f"built: {' '.join(cmd)}")
    return str(exe)


def callgrind(exe: str, mode: str, n: int, size: int) -> tuple[int, dict[str, int]]:
    out = C.tmpdir() / f"cg.{mode}.{n}"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", exe, "count", mode, str(n), str(size)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-500:]}")
    total = None
    for line in out.read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            total = int(line.split()[1])
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                         capture_output=True, text=True).stdout
    incl = {}
    for line in ann.splitlines():
        m = _ANNOT.match(line)
        if m:
            incl.setdefault(m.group(2), int(m.group(1).replace(",", "")))
    return total, incl


def count_table(exe: str, args) -> list[dict]:
    n1, n2 = args.n1, args.n2
    rows = []
    for mode in COUNT_MODES:
        try:
            t1, f1 = callgrind(exe, mode, n1, args.size)
            t2, f2 = callgrind(exe, mode, n2, args.size)
        except RuntimeError as e:
            print(f"  {mode}: {e}")
            continue
        wf, rf = FUNCS[mode]
        per = lambda a, b: (b - a) / (n2 - n1)  # noqa: E731
        row = {"mode": mode, "pair": per(t1, t2), "write": per(f1.get(wf, 0), f2.get(wf, 0)),
               "read": per(f1.get(rf, 0), f2.get(rf, 0))}
        rows.append(row)
        print(f"  {mode:<7} {row['pair']:7.1f} instr/pair  ({wf} {row['write']:.1f}, {rf} {row['read']:.1f})",
              flush=True)
    return rows


def native(exe: str, kind: str, mode: str, n: int, reps: int, args) -> dict | None:
    """Run ``reps`` short repetitions; min and median of the per-repetition figure."""
    cmd = [exe, kind, str(args.cpus[0]), str(args.cpus[1]), mode, str(n), str(args.size), str(reps)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        print(f"  {kind} {mode}: timed out")
        return None
    if r.returncode:
        print(f"  {kind} {mode}: failed: {r.stderr.strip()} {r.stdout.strip()}")
        return None
    vals = []
    for line in r.stdout.splitlines():
        kv = dict(item.split("=") for item in line.split())
        vals.append(float(kv.get("ns_per_record", kv.get("one_way_ns"))))
    vals.sort()
    return {"min": vals[0], "median": vals[len(vals) // 2], "reps": len(vals)}


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0], default_seconds=1.0, extra=extra_args)
    env = C.print_header("edgepipe ring: instructions per record (callgrind) and two-thread C timings", args)
    for tool in ("valgrind", "callgrind_annotate"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install valgrind")
    print(f"  valgrind      {subprocess.run(['valgrind', '--version'], capture_output=True, text=True).stdout.strip()}")
    try:
        exe = build()
    except RuntimeError as e:
        sys.exit(str(e))

    print(f"\ncallgrind: instructions per write+read pair of {args.size}-byte records, "
          f"(Ir(N={args.n2}) - Ir(N={args.n1})) / {args.n2 - args.n1}; functions inclusive (callgrind_annotate)")
    rows = count_table(exe, args)
    lib = next((r for r in rows if r["mode"] == "lib"), None)
    print()
    print(C.table(["mode", "instr/pair", "write fn", "read fn", "vs step8", "what"],
                  [[r["mode"], f"{r['pair']:.1f}", f"{r['write']:.1f}", f"{r['read']:.1f}",
                    f"{r['pair'] - next((x['pair'] for x in rows if x['mode'] == 'step8'), r['pair']):+.1f}",
                    DESCR[r["mode"]]] for r in rows]))
    if lib:
        print(f"(the library pair includes the harness call into ep_ring_reader_scratch; "
              f"write+read functions alone: {lib['write'] + lib['read']:.1f})")

    native_rows = []
    if not args.no_native:
        probe = C.Probe(args.cpus)
        scale = args.seconds
        print(f"\nnative, two threads pinned to cpus {args.cpus[0]},{args.cpus[1]} (wall clock; "
              f"probe = one-way cache-line transfer before/after, ns)")
        for kind, modes, n in (("stream", STREAM_MODES, int(400_000 * scale)),
                               ("pingpong", PINGPONG_MODES, int(30_000 * scale))):
            for mode in modes:
                before = probe.measure()
                res = native(exe, kind, mode, n, args.reps, args)
                after = probe.measure()
                if res is None:
                    continue
                row = {"kind": kind, "mode": mode, **res,
                       "probe_before_ns": before.p50_ns if before else None,
                       "probe_after_ns": after.p50_ns if after else None,
                       "pair": C.probe_label(before, after), "loadavg": C.loadavg()}
                native_rows.append(row)
                print(f"  {kind:<8} {mode:<9} min {res['min']:8.1f} median {res['median']:8.1f} ns  probe "
                      f"{row['probe_before_ns']}/{row['probe_after_ns']} ({row['pair']}) load {row['loadavg']}",
                      flush=True)
        print()
        print(f"ns per record (stream) or one-way ns (pingpong); min and median of {args.reps} repetitions")
        print(C.table(["kind", "mode", "min ns", "median ns", "probe before", "probe after", "pair", "what"],
                      [[r["kind"], r["mode"], f"{r['min']:.1f}", f"{r['median']:.1f}",
                        f"{r['probe_before_ns']:.0f}" if r["probe_before_ns"] else "",
                        f"{r['probe_after_ns']:.0f}" if r["probe_after_ns"] else "", r["pair"], DESCR[r["mode"]]]
                       for r in native_rows]))
    print(f"\nloadavg at the end: {C.loadavg()}")
    C.write_json(args.json, env, args, [], {"callgrind": rows, "native": native_rows})


if __name__ == "__main__":
    main()
