"""A control-plane server that publishes a live-looking results stream, for trying clients against.

It replays the bundled NGIMU recording through the Madgwick filter at its own rate and publishes each
sample as an ImuSample (stamps, gyro, accel, mag, quaternion) to every client subscribed to
"imu_sample" (or "*"), plus a Stats message each second; after --seconds it publishes a Stop and closes.

    python examples/control_server.py --seconds 30 &    # prints the socket path it listens on
    ./uds_client "$XDG_RUNTIME_DIR/edgepipe/control.sock"        # examples/uds_client.c, built as it says
                                                                  # (no XDG_RUNTIME_DIR: /tmp/edgepipe-$UID/)
    python -c "from edgepipe import Client; c = Client.connect(subscribe=['*']); print(c.recv(5))"

--path puts the socket elsewhere (its directory must be ours and mode 0700).
"""

from __future__ import annotations

import argparse
import time

from edgepipe import Envelope, Server, now_ns
from edgepipe import messages as pb
from edgepipe.ahrs import Madgwick, load_recording

G = 9.80665


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=None, help="socket path (default: $XDG_RUNTIME_DIR/edgepipe/control.sock, "
                                                 "or /tmp/edgepipe-$UID/control.sock without XDG_RUNTIME_DIR)")
    ap.add_argument("--seconds", type=float, default=10.0, help="publish for this long, then Stop")
    ap.add_argument("--rate-hz", type=float, default=100.0, help="samples published per second")
    args = ap.parse_args()

    rec = load_recording("ngimu")
    ahrs = Madgwick(beta=0.1, rate_hz=rec.rate_hz)
    with Server(args.path) as srv:
        print(f"listening on {srv.path}", flush=True)
        period_ns = int(1e9 / args.rate_hz)
        t_end = time.monotonic() + args.seconds
        next_stats = time.monotonic() + 1.0
        i = published = 0
        try:
            while time.monotonic() < t_end:
                k = i % len(rec.t_s)
                gyr, acc = rec.gyr[k], rec.acc[k]
                mag = rec.mag[k] if rec.mag is not None else None
                w, x, y, z = ahrs.update(gyr, acc, mag)
                t = now_ns()
                msg = pb.ImuSample(stamps=pb.Stamps(capture_ns=t, publish_ns=[t], seq=i, source="ngimu"),
                                   gyro=pb.Vec3(x=gyr[0], y=gyr[1], z=gyr[2]),
                                   accel=pb.Vec3(x=acc[0] * G, y=acc[1] * G, z=acc[2] * G),
                                   orientation=pb.Quaternion(w=w, x=x, y=y, z=z))
                if mag is not None:
                    msg.mag.CopyFrom(pb.Vec3(x=mag[0], y=mag[1], z=mag[2]))
                published += srv.publish(Envelope(imu_sample=msg)) > 0
                i += 1
                if time.monotonic() >= next_stats:
                    next_stats += 1.0
                    srv.publish(Envelope(stats=pb.Stats(stage_name="imu-replay", t_ns=now_ns(), rings=[
                        pb.RingCounters(name="imu_sample", records_written=i, records_read=published)])))
                time.sleep(max(0.0, period_ns / 1e9 - 0.0001))
        except KeyboardInterrupt:  # Ctrl-C: stop early, and still say Stop to the clients
            print("stopped (Ctrl-C)", flush=True)
        srv.publish(Envelope(stop=pb.Stop(reason=f"published {i} samples")))
        print(f"published {i} samples, {published} of them to at least one client; "
              f"sessions: {srv.counters['welcomed']}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C while starting or closing
        pass
