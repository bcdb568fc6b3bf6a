"""Atheris harness: what the IIO source reads from sysfs (``edgepipe.stages.imu.iio``): scan-element type strings,
and whole buffered-mode ``scan_elements`` directories.

Byte 0 picks the path:

  scan_type  ``parse_scan_type`` on the rest as text: ImuSourceError, or a result that obeys the IIO ABI
             as the loop needs it (0 < bits <= storage, shift < storage, storage 8/16/32/64) and reads back
             the same from its canonical spelling.
  tree       a fake sysfs device (one temporary tree per process, rewritten per input) whose
             ``scan_elements/*_en``, ``*_index``, ``*_type``, the scale files, ``name`` and
             ``sampling_frequency`` hold fuzzed contents (bytes, or one of a few valid values), opened with
             ``IioSource(buffered=True, dev_path=<regular file>)`` into an ``ImuLoopConfig``, then an
             ``ImuLoop`` made from that config (the C side checks the layout again) and closed. Only
             ImuSourceError, ImuDeviceNotFoundError and ImuConfigError may come out of the source; a source
             that opens has a scan of 1..SCAN_MAX bytes, and its fds are closed again by ``close()``.

Run directly (libFuzzer flags pass through):

    python tests/fuzz/fuzz_iio.py -max_total_time=600 [CORPUS_DIR]
"""

from __future__ import annotations

import os
import shutil
import tempfile

import atheris
from _harness import instrument, main

with instrument("edgepipe.stages.imu.iio", "edgepipe.imu_loop"):
    from edgepipe.errors import (
        EdgepipeError,
        ImuConfigError,
        ImuDeviceNotFoundError,
        ImuSourceError,
    )
    from edgepipe.imu_loop import SCAN_MAX, ImuLoop, ImuLoopConfig
    from edgepipe.stages.imu.iio import IioSource, parse_scan_type


CHANNELS = ["in_anglvel_x", "in_anglvel_y", "in_anglvel_z", "in_accel_x", "in_accel_y", "in_accel_z",
            "in_magn_x", "in_magn_y", "in_magn_z", "in_timestamp", "in_temp"]
TYPES = ["le:s16/16>>0", "be:u12/16>>4", "le:s64/64>>0", "le:s32/32>>0", "le:u8/8>>0", "le:s16/16X1>>0"]
ENS = ["1\n", "0\n", "1"]
TYPED = (ImuSourceError, ImuDeviceNotFoundError, ImuConfigError)

_root: str | None = None


def check_scan_type(text: str) -> None:
    try:
        be, signed, bits, storage, shift = parse_scan_type(text)
    except ImuSourceError:
        return
    assert storage in (8, 16, 32, 64) and 0 < bits <= storage and 0 <= shift < storage, (text, bits, storage, shift)
    canon = f"{'be' if be else 'le'}:{'s' if signed else 'u'}{bits}/{storage}>>{shift}"
    assert parse_scan_type(canon) == (be, signed, bits, storage, shift), (text, canon)


def _value(fdp, choices: list[str]) -> bytes:
    """One of the valid choices most of the time, else fuzzed bytes."""
    k = fdp.ConsumeIntInRange(0, len(choices) + 1)
    if k < len(choices):
        return choices[k].encode()
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24))


def check_tree(data: bytes) -> None:
    global _root
    if _root is None:
        _root = tempfile.mkdtemp(prefix="ep-fuzz-iio-", dir=os.environ.get("EDGEPIPE_FUZZ_TMPDIR"))
    fdp = atheris.FuzzedDataProvider(data)
    dev = os.path.join(_root, "iio:device0")
    shutil.rmtree(dev, ignore_errors=True)
    se = os.path.join(dev, "scan_elements")
    os.makedirs(se)
    os.makedirs(os.path.join(dev, "buffer"))

    def put(path: str, blob: bytes) -> None:
        with open(path, "wb") as f:
            f.write(blob)

    put(os.path.join(dev, "name"), _value(fdp, ["lsm6dsox\n"]))
    put(os.path.join(dev, "sampling_frequency"), _value(fdp, ["416.000000\n", "nan\n", "1e9\n"]))
    put(os.path.join(dev, "buffer", "enable"), b"0\n")
    for kind in ("in_accel", "in_anglvel", "in_magn"):
        if not fdp.ConsumeBool():  # zero bytes (the end of the input) build a complete, valid tree
            put(os.path.join(dev, f"{kind}_scale"), _value(fdp, ["0.000598\n", "0\n", "inf\n"]))
    for i, chan in enumerate(CHANNELS):
        files = fdp.ConsumeIntInRange(0, 7)  # 7: no channel, 6: no index, 5: no type, else all three
        if files == 7:
            continue
        put(os.path.join(se, f"{chan}_en"), _value(fdp, ENS))
        if files != 6:
            put(os.path.join(se, f"{chan}_index"), _value(fdp, [f"{i}\n", "-1\n", "99999999999999999999\n"]))
        if files != 5:
            put(os.path.join(se, f"{chan}_type"), _value(fdp, TYPES))
    devfile = os.path.join(_root, "dev")
    put(devfile, b"")
    src = IioSource(root=_root, device=0 if fdp.ConsumeBool() else "lsm6dsox", buffered=True, dev_path=devfile,
                    enable=fdp.ConsumeBool())
    cfg = ImuLoopConfig(rate_hz=1000.0, dt_s=0.001)
    try:
        src.open(cfg)
    except TYPED:
        assert not src._fds, "a failed open() left fds open"
        return
    try:
        assert 0 < src.scan_size <= SCAN_MAX, src.scan_size
        try:
            ImuLoop(cfg).close()
        except EdgepipeError:
            pass  # the C side refusing a layout the source accepted is typed, and not this target's concern
    finally:
        src.close()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        check_scan_type(data[1:].decode("utf-8", "replace"))
    else:
        check_tree(data[1:])


def seeds() -> dict[str, bytes]:
    out = {f"scan-{i}": b"\x00" + t.encode() for i, t in enumerate(TYPES + ["le:s17/16>>0", "be:u0/8>>8"])}
    # A valid tree: every valid choice index 0 (name, frequency, scales, channels present with en/index/type).
    out["tree-valid"] = b"\x01" + bytes(64)
    out["tree-mixed"] = b"\x01" + bytes([0, 1, 1, 0, 1, 2, 3, 0, 0, 0, 5, 1, 2, 0, 0, 7, 0, 0, 4]) + bytes(40)
    return out


if __name__ == "__main__":
    main(test_one_input, seeds)
