"""Nanoseconds per Madgwick update: edgepipe's C filter (batch call, per-sample call from Python, and a
plain C loop) against the `ahrs` package (pure Python) and `imufusion` (x-io Fusion, C), plus callgrind
instructions per update of the C batch loop.

Input: the bundled NGIMU recording linearly upsampled to 1000 Hz (about 10 k samples), repeated to
--samples. Every case feeds the same samples in the same order with beta = 0.1 (imufusion: its own
complementary filter at gain 0.5, so only its cost is comparable, not its output).

Cases:
  c-loop         a C driver (compiled at run time into a temp dir, gcc -O2, against csrc/ep_ahrs.c) timing
                 ep_ahrs_batch with clock_gettime: the filter alone, no Python
  batch          Madgwick.update_batch(gyr, acc): one cffi call for all samples, including the (N, 4)
                 output allocation and argument checks
  per-sample     Madgwick.update(g, a) in a Python for-loop over lists of 3-tuples; "net" subtracts the
                 same loop with an empty body, i.e. it is the cost of the call itself
  ahrs           ahrs.filters.Madgwick.updateIMU step-wise (fewer samples: ~40 us each)
  imufusion      imufusion.Ahrs.update_no_magnetometer per sample with float64 arrays (deg/s, g)
Each timed case runs --repeats times; the minimum is reported (the VM's noise only ever adds time).

callgrind: ``valgrind --tool=callgrind --toggle-collect=ep_ahrs_batch`` runs the driver's batch over N1 and
N2 samples, counting only inside ep_ahrs_batch (the synthetic input is made with sin/cos, which would
otherwise dominate); instructions per update = (Ir(N2) - Ir(N1)) / (N2 - N1), so fixed costs cancel.

    python benchmarks/ahrs_speed.py
    python benchmarks/ahrs_speed.py --samples 1000000 --repeats 7 --no-callgrind
"""

from __future__ import annotations

import argparse
import gc
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _common as C

from edgepipe.ahrs import Madgwick, load_recording

ROOT = C.HERE.parent
CSRC = ROOT / "csrc"

DRIVER_C = r"""
/* ahrs_driver.c: written by benchmarks/ahrs_speed.py. Usage: drv MODE N (MODE time|count, imu|marg).
 * Reads nothing: the input is a deterministic synthetic motion so callgrind and timing see the same work. */
#define _GNU_SOURCE
#include "edgepipe.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

int main(int argc, char **argv)
{
    if (argc < 4) return 2;
    int timing = !strcmp(argv[1], "time"), marg = !strcmp(argv[2], "marg");
    long n = atol(argv[3]);
    double *g = malloc(sizeof(double) * 3 * n), *a = malloc(sizeof(double) * 3 * n);
    double *m = malloc(sizeof(double) * 3 * n), *q = malloc(sizeof(double) * 4 * n);
    for (long i = 0; i < n; i++) {
        double t = i * 1e-3;
        g[3 * i] = 0.8 * sin(2.1 * t); g[3 * i + 1] = 0.5 * cos(1.3 * t); g[3 * i + 2] = 0.3 * sin(0.7 * t) + 1e-3;
        a[3 * i] = 0.1 * sin(t); a[3 * i + 1] = 0.2 * cos(0.5 * t); a[3 * i + 2] = 0.97;
        m[3 * i] = 20.0; m[3 * i + 1] = 5.0 * sin(t); m[3 * i + 2] = -40.0;
    }
    struct ep_ahrs f;
    ep_ahrs_init(&f, 0.1, 1e-3);
    if (!timing) {
        ep_ahrs_batch(&f, g, a, marg ? m : NULL, NULL, n, q);
        printf("%.17g\n", q[4 * n - 1]);
        return 0;
    }
    double best = 1e30;
    for (int r = 0; r < 7; r++) {
        ep_ahrs_init(&f, 0.1, 1e-3);
        double t0 = now();
        ep_ahrs_batch(&f, g, a, marg ? m : NULL, NULL, n, q);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("%.3f %.17g\n", best / n * 1e9, q[4 * n - 1]);
    return 0;
}
"""


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200_000, help="samples per batch / per-sample case")
    p.add_argument("--ref-samples", type=int, default=2_000, help="samples for the slow ahrs case")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per case (minimum reported)")
    p.add_argument("--n1", type=int, default=20_000, help="callgrind: samples in the first run")
    p.add_argument("--n2", type=int, default=120_000, help="callgrind: samples in the second run")
    p.add_argument("--no-callgrind", action="store_true", help="skip the callgrind counts")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    a = p.parse_args()
    if a.samples < 1000 or a.ref_samples < 10 or a.repeats < 1 or not 0 < a.n1 < a.n2:
        p.error(f"need samples >= 1000, ref-samples >= 10, repeats >= 1, 0 < n1 < n2; got {vars(a)}")
    return a


def header(args) -> dict:
    env = C.environment()
    for dist in ("ahrs", "imufusion"):
        env[dist] = C._version(dist)
    try:
        env["valgrind"] = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        env["valgrind"] = "not found"
    print("== AHRS ns/update: edgepipe Madgwick vs ahrs vs imufusion")
    for k, v in env.items():
        print(f"  {k:<13} {v}")
    print(f"  {'argv':<13} {' '.join(sys.argv)}")
    print(flush=True)
    return env


def inputs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = load_recording("ngimu")
    t = np.arange(0.0, r.t_s[-1], 1e-3)
    g, a, m = ([np.column_stack([np.interp(t, r.t_s, x[:, k]) for k in range(3)]) for x in (r.gyr, r.acc, r.mag)])
    reps = -(-n // len(t))
    return tuple(np.ascontiguousarray(np.tile(x, (reps, 1))[:n]) for x in (g, a, m))


def best_ns(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            fn()
            dt = time.perf_counter_ns() - t0
        finally:
            gc.enable()
        best = min(best, dt / n)
    return best


def build_driver() -> Path | None:
    if not shutil.which("gcc"):
        return None
    d = C.tmpdir()
    src = d / "ahrs_driver.c"
    src.write_text(DRIVER_C)
    exe = d / "ahrs_driver"
    cmd = ["gcc", "-std=gnu11", "-O2", "-g", "-I", str(CSRC), str(src), str(CSRC / "ep_ahrs.c"), "-o", str(exe), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"driver build failed: {' '.join(cmd)}\n{r.stderr}")
        return None
    return exe


def callgrind_ir(exe: Path, mode: str, n: int) -> int:
    out = C.tmpdir() / f"cg.{mode}.{n}.out"
    subprocess.run(["valgrind", "--tool=callgrind", "--toggle-collect=ep_ahrs_batch", f"--callgrind-out-file={out}",
                    str(exe), "count", mode, str(n)],
                   capture_output=True, text=True, check=True)
    m = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(), re.M)
    return int(m.group(1))


def main() -> None:
    args = parse()
    env = header(args)
    n = args.samples
    gyr, acc, mag = inputs(n)
    rows = []

    exe = build_driver()
    if exe:
        for mode in ("imu", "marg"):
            r = subprocess.run([str(exe), "time", mode, str(n)], capture_output=True, text=True, check=True)
            rows.append([f"c-loop {mode}", f"{float(r.stdout.split()[0]):.1f}", "", "ep_ahrs_batch in C, no Python"])

    f = Madgwick(beta=0.1, rate_hz=1000.0)
    rows.append(["batch imu", f"{best_ns(lambda: f.update_batch(gyr, acc), n, args.repeats):.1f}", "",
                 f"update_batch, N={n}"])
    rows.append(["batch marg", f"{best_ns(lambda: f.update_batch(gyr, acc, mag), n, args.repeats):.1f}", "",
                 f"update_batch with mag, N={n}"])

    gl = [tuple(x) for x in gyr.tolist()]
    al = [tuple(x) for x in acc.tolist()]
    ml = [tuple(x) for x in mag.tolist()]
    pairs = list(zip(gl, al))
    triples = list(zip(gl, al, ml))
    upd = f.update

    def loop_imu():
        for g, a in pairs:
            upd(g, a)

    def loop_empty2():
        for g, a in pairs:
            pass

    def loop_marg():
        for g, a, m in triples:
            upd(g, a, m)

    def loop_empty3():
        for g, a, m in triples:
            pass

    e2, e3 = best_ns(loop_empty2, n, args.repeats), best_ns(loop_empty3, n, args.repeats)
    t_imu, t_marg = best_ns(loop_imu, n, args.repeats), best_ns(loop_marg, n, args.repeats)
    rows.append(["per-sample imu", f"{t_imu:.1f}", f"{t_imu - e2:.1f}", "Madgwick.update(g, a) in a for-loop"])
    rows.append(["per-sample marg", f"{t_marg:.1f}", f"{t_marg - e3:.1f}", "Madgwick.update(g, a, m)"])

    try:
        from ahrs.filters import Madgwick as RefMadgwick

        k = args.ref_samples
        ref = RefMadgwick(frequency=1000.0, gain=0.1)

        def ref_loop():
            q = np.array([1.0, 0.0, 0.0, 0.0])
            for i in range(k):
                q = ref.updateIMU(q, gyr=gyr[i], acc=acc[i])

        rows.append(["ahrs imu", f"{best_ns(ref_loop, k, max(1, args.repeats // 2)):.1f}", "",
                     f"ahrs.filters.Madgwick.updateIMU, N={k}"])
    except ImportError:
        rows.append(["ahrs imu", "n/a", "", "pip install ahrs"])

    try:
        import imufusion

        gd, ad = np.degrees(gyr), acc
        k = min(n, 50_000)
        fus = imufusion.Ahrs()
        fus.set_settings(imufusion.AhrsSettings(sample_rate=1000.0, convention=imufusion.CONVENTION_NWU,
                                                gain=0.5, gyroscope_range=2000.0, acceleration_rejection=10.0,
                                                magnetic_rejection=0.0, rejection_timeout=5000))
        rows_g = [np.ascontiguousarray(gd[i]) for i in range(k)]
        rows_a = [np.ascontiguousarray(ad[i]) for i in range(k)]
        upd_f = fus.update_no_magnetometer

        def call():
            for g, a in zip(rows_g, rows_a):
                upd_f(g, a)

        rows.append(["imufusion imu", f"{best_ns(call, k, args.repeats):.1f}", "",
                     f"Ahrs.update_no_magnetometer in a for-loop (no get_quaternion), N={k}"])
    except ImportError:
        rows.append(["imufusion imu", "n/a", "", "pip install imufusion"])

    print(C.table(["case", "ns/update", "net ns", "what"], rows))
    print()
    # for --json (and `edgepipe bench`): one row per case, ns per update as the headline (update_ns)
    # a peer that is not installed is a row too (ok False, "skipped: ..."), so the summary can say so
    C.write_json(args.json, env, args, [
        {"case": r[0], "edgepipe": not r[0].startswith(("ahrs", "imufusion")), "update_ns": float(r[1]),
         **({"net_update_ns": float(r[2])} if r[2] else {}), "what": r[3]}
        if r[1] != "n/a" else
        {"case": r[0], "edgepipe": False, "ok": False, "error": f"skipped: not installed ({r[3]})"}
        for r in rows])

    if exe and not args.no_callgrind and shutil.which("valgrind"):
        cg = []
        for mode in ("imu", "marg"):
            i1, i2 = callgrind_ir(exe, mode, args.n1), callgrind_ir(exe, mode, args.n2)
            cg.append([f"ep_ahrs_batch {mode}", f"{(i2 - i1) / (args.n2 - args.n1):.1f}",
                       f"Ir({args.n1})={i1} Ir({args.n2})={i2}"])
        print("callgrind, instructions per update of the C batch loop (set-up cancelled):")
        print(C.table(["loop", "instr/update", "raw totals"], cg))


if __name__ == "__main__":
    sys.exit(main())
