"""Print attitude (roll, pitch, yaw) live from the bundled NGIMU recording, replayed through the C sampling
loop (edgepipe.stages.imu.ImuStage) into a ring and read back as numpy batches.

    python examples/imu_to_stdout.py                  # 5 s, the recording resampled to 1000 Hz, looping
    python examples/imu_to_stdout.py --seconds 12 --wait sleep --print-hz 5
"""

from __future__ import annotations

import argparse

from edgepipe import Ring
from edgepipe.stages.imu import CsvSource, ImuReader, ImuStage, euler_deg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="how long to run (default 5)")
    p.add_argument("--recording", default="ngimu", help="bundled recording name or a CSV path")
    p.add_argument("--rate-hz", type=float, default=1000.0, help="resample the recording to this rate")
    p.add_argument("--wait", choices=("sleep", "hybrid"), default="hybrid")
    p.add_argument("--print-hz", type=float, default=10.0, help="attitude lines per second")
    a = p.parse_args()

    src = CsvSource(a.recording, resample_hz=a.rate_hz, loop=True)
    with Ring.create(capacity=1 << 20) as ring:
        stage = ImuStage(src, rate_hz=a.rate_hz, wait=a.wait, beta=0.1, output=ring.writer(),
                         duration_s=a.seconds)
        reader = ImuReader(ring.reader(), max_batch=512)
        print(f"{src.describe()} at {a.rate_hz:g} Hz, wait={a.wait}, for {a.seconds:g} s")
        print(f"{'t (s)':>7} {'roll':>8} {'pitch':>8} {'yaw':>8}   {'seq':>7}")
        next_print = 0
        period_ns = int(1e9 / a.print_hz)
        try:
            stage.start()
            while True:
                batch = reader.read(timeout_s=0.1)
                if len(batch):
                    last = batch[-1]
                    if last["device_ns"] >= next_print:
                        roll, pitch, yaw = euler_deg(last["q"])
                        print(f"{last['device_ns'] / 1e9:7.2f} {roll:+8.1f} {pitch:+8.1f} {yaw:+8.1f}   "
                              f"{last['seq']:7d}", flush=True)
                        next_print = int(last["device_ns"]) + period_ns
                elif stage.join(0) is not None:
                    break
        except KeyboardInterrupt:  # Ctrl-C: stop the loop, then report as usual
            print("stopped (Ctrl-C)", flush=True)
        finally:
            stage.stop()
            stage.join()  # the loop has let go of the ring's writer: the ring can close
        s = stage.stats()
    j = s["jitter_us"]
    print(f"done: {s['samples']} samples ({s['achieved_rate_hz']:.2f} Hz delivered), published {s['published']}, "
          f"dropped {s['dropped']}, missed deadlines {s['missed']}; jitter p50 {j['p50']:.2f} us, "
          f"p99 {j['p99']:.2f} us, max {j['max']:.0f} us; loop CPU {s['cpu_percent']:.1f} %")
    if s["error"]:
        print("error:", s["error"])
        return 1
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # Ctrl-C while starting or closing
        raise SystemExit(0) from None
