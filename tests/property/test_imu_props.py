"""Property tests for the IIO buffered decoder in csrc/ep_imu.c: for random scan layouts (channel order,
le/be, signed/unsigned, storage 16/32 bits, fewer significant bits, shifts, an extra channel the loop does not
use, with or without the timestamp) and random values, scans written to a FIFO come out of the loop as the
same raw counts, scaled by each channel's scale. The layout (alignment, padding) is computed by
IioSource from scan_elements and independently here, from the IIO ABI's rules."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe import Ring
from edgepipe.stages.imu import ImuReader, ImuStage, IioSource

CHANNELS = ["in_accel_x", "in_accel_y", "in_accel_z", "in_anglvel_x", "in_anglvel_y", "in_anglvel_z"]


@st.composite
def channel_type(draw):
    be = draw(st.booleans())
    signed = draw(st.booleans())
    storage = draw(st.sampled_from([16, 32]))
    bits = draw(st.integers(2, storage if signed else min(storage, 31)))
    shift = draw(st.integers(0, storage - bits))
    return be, signed, bits, storage, shift


@st.composite
def layouts(draw):
    types = [draw(channel_type()) for _ in CHANNELS]
    extra = draw(st.booleans())  # an enabled in_temp channel the loop skips
    ts = draw(st.booleans())
    names = CHANNELS + (["in_temp"] if extra else [])
    order = draw(st.permutations(range(len(names))))
    values = []
    for be, signed, bits, storage, shift in types:
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        values.append([draw(st.integers(lo, hi)) for _ in range(3)])  # three scans
    return types, names, order, ts, values


def encode(types, names, order, ts, values, scan_i):
    """One scan per the IIO ABI: elements in index order, each aligned to its storage size, the whole
    scan padded to the largest element."""
    elems = sorted(zip(order, names))
    buf, align = bytearray(), 1
    for _, name in elems + ([(99, "in_timestamp")] if ts else []):
        if name == "in_timestamp":
            raw, nbytes = struct.pack("<q", 10**9 + scan_i), 8
        elif name == "in_temp":
            raw, nbytes = struct.pack("<h", -7), 2
        else:
            k = names.index(name)
            be, signed, bits, storage, shift = types[k]
            v = values[k][scan_i] & ((1 << bits) - 1)
            nbytes = storage // 8
            raw = (v << shift).to_bytes(nbytes, "big" if be else "little")
        buf += b"\0" * (-len(buf) % nbytes)
        buf += raw
        align = max(align, nbytes)
    buf += b"\0" * (-len(buf) % align)
    return bytes(buf)


def build_tree(root: Path, types, names, order, ts):
    d = root / "iio:device0"
    se = d / "scan_elements"
    se.mkdir(parents=True)
    (d / "name").write_text("lsm6dsox\n")
    (d / "in_accel_scale").write_text("0.5\n")
    (d / "in_anglvel_scale").write_text("0.25\n")
    for name, idx in zip(names, order):
        (se / f"{name}_en").write_text("1\n")
        (se / f"{name}_index").write_text(f"{idx}\n")
        if name == "in_temp":
            (se / f"{name}_type").write_text("le:s16/16>>0\n")
        else:
            be, signed, bits, storage, shift = types[names.index(name)]
            text = f"{'be' if be else 'le'}:{'s' if signed else 'u'}{bits}/{storage}>>{shift}"
            (se / f"{name}_type").write_text(text + "\n")
    (se / "in_timestamp_en").write_text("1\n" if ts else "0\n")
    (se / "in_timestamp_index").write_text("99\n")
    (se / "in_timestamp_type").write_text("le:s64/64>>0\n")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_random_scan_layouts_decode_exactly(layout):
    """Every random layout decodes to the raw values written, scaled by the channel's scale, with the
    timestamp channel when enabled."""
    types, names, order, ts, values = layout
    with tempfile.TemporaryDirectory() as tmp, Ring.create(capacity=1 << 16) as ring:
        root = Path(tmp)
        build_tree(root, types, names, order, ts)
        fifo = root / "dev"
        os.mkfifo(fifo)
        src = IioSource(root=root, device=0, buffered=True, dev_path=fifo, enable=False)
        stage = ImuStage(src, output=ring.writer())
        stage.start()
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, b"".join(encode(types, names, order, ts, values, i) for i in range(3)))
        os.close(fd)
        assert stage.join(10) == 1  # the FIFO closing ends the stage (ImuSourceClosedError)
        recs = ImuReader(ring.reader()).read()
        assert len(recs) == 3, stage.stats()
        for i in range(3):
            acc = [values[k][i] for k in range(3)]
            gyr = [values[k][i] for k in range(3, 6)]
            assert recs["raw_acc"][i].tolist() == acc and recs["raw_gyr"][i].tolist() == gyr
            assert recs["acc"][i].tolist() == [v * 0.5 for v in acc]
            assert recs["gyr"][i].tolist() == [v * 0.25 for v in gyr]
            assert recs["device_ns"][i] == (10**9 + i if ts else 0)
