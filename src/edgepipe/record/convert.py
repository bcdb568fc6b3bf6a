"""Ring records as recording messages, and back: what each kind of record a pipeline link carries becomes.

- An IMU sample row (the IMU record type) is recorded as ``edgepipe.v1.ImuSample`` (gyro, accel, mag,
  attitude; stamps: sample, publish, receive; the loop's deadline, device stamp, lateness, raw counts and
  flags) and replayed as the same row.
- An InferenceResult (type 22) is recorded as ``edgepipe.v1.InferenceResult``, as is, and replayed as the
  same bytes.
- A numpy frame (the frame record type) is recorded as ``foxglove.RawImage`` on TOPIC (pixels, encoding,
  wall-clock timestamp of its capture) and ``edgepipe.v1.FrameMeta`` on TOPIC/meta (its RAW stamps, seq,
  pixel format); it is replayed as a frame record through a FrameWriter.
- A stamped record (``EPS1``) or any other record is recorded as ``edgepipe.record.v1.RawRecord``: its
  bytes, its type id and ``Stamps`` (each hop's publish and receive stamps, seq, capture), and replayed as
  the same bytes with the same type id.

>>> m = to_messages("/x", b"hello", 7, receive_ns=50)[0]
>>> m.schema, m.receive_ns, from_message(m.schema, m.data)
('edgepipe.record.v1.RawRecord', 50, (b'hello', 7))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepipe._image import DTYPES, HDR, HDR_SIZE, PIXEL_FORMATS, REC_TYPE
from edgepipe.control import messages as pb
from edgepipe.imu_loop import FLAG_MAG, FLAG_RAW, IMU_RECORD_TYPE, IMU_SAMPLE_DTYPE
from edgepipe.pipeline.wire import unpack_record
from edgepipe.record.schemas import RAW_IMAGE, RAW_RECORD, RawRecord, message_class
from edgepipe.stages.inference import RESULT_TYPE_ID

__all__: list[str] = []  # shared inside edgepipe.record

_ENCODING = {"BGR": "bgr8", "RGB": "rgb8", "GRAY": "mono8"}
_PIXEL_FORMAT = {v: k for k, v in _ENCODING.items()}
_DATA_TAG = bytes([6 << 3 | 2])  # foxglove.RawImage field 6 (data), length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass
class Message:
    """One message to write: topic, schema name, serialized bytes, and its RAW stamps."""

    topic: str
    schema: str
    data: bytes
    receive_ns: int
    capture_ns: int = 0
    seq: int = 0


def _imu(topic: str, data, receive_ns: int) -> Message:
    row = np.frombuffer(bytes(data), IMU_SAMPLE_DTYPE)[0]
    st = pb.Stamps(capture_ns=int(row["sample_ns"]), publish_ns=[int(row["publish_ns"])], receive_ns=[receive_ns],
                   seq=int(row["seq"]), source=topic)
    g, a, q = row["gyr"], row["acc"], row["q"]
    m = pb.ImuSample(stamps=st, gyro=pb.Vec3(x=g[0], y=g[1], z=g[2]), accel=pb.Vec3(x=a[0], y=a[1], z=a[2]))
    if int(row["flags"]) & FLAG_MAG:
        mg = row["mag"]
        m.mag.CopyFrom(pb.Vec3(x=mg[0], y=mg[1], z=mg[2]))
    if any(q):
        m.orientation.CopyFrom(pb.Quaternion(w=q[0], x=q[1], y=q[2], z=q[3]))
    m.deadline_ns, m.device_ns, m.late_ns = int(row["deadline_ns"]), int(row["device_ns"]), int(row["late_ns"])
    m.flags = int(row["flags"])
    if m.flags & FLAG_RAW:
        m.raw_gyro[:], m.raw_accel[:], m.raw_mag[:] = (row[k].tolist() for k in ("raw_gyr", "raw_acc", "raw_mag"))
    return Message(topic, "edgepipe.v1.ImuSample", m.SerializeToString(), receive_ns, st.capture_ns, st.seq)


def _frame(topic: str, data, receive_ns: int, wall_offset_ns: int) -> list[Message]:
    f = HDR.unpack_from(data, 0)
    code, ndim, fmt_code, doff, nbytes, seq, cap, pub, src = f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10]
    shape = f[11:11 + ndim]
    h, w = int(shape[0]), int(shape[1]) if ndim > 1 else 1
    ch = int(shape[2]) if ndim > 2 else 1
    fmt = PIXEL_FORMATS[fmt_code] if fmt_code < len(PIXEL_FORMATS) else "RAW"
    dtype = DTYPES.get(code, np.dtype("u1"))
    enc = _ENCODING.get(fmt, "mono8") if dtype == np.uint8 else f"{dtype.name}x{ch}"
    img = message_class(RAW_IMAGE)(frame_id=topic, width=w, height=h, encoding=enc, step=w * ch * dtype.itemsize)
    if wall_offset_ns:
        img.timestamp.FromNanoseconds(cap + wall_offset_ns)
    # The pixels go in as field 6 (data) appended to the other fields' bytes: protobuf parses fields in any
    # order, and this is one copy of the pixels instead of three (bytes(), the message, its serialization).
    pixels = data[doff:doff + nbytes]
    wire = b"".join((img.SerializeToString(), _DATA_TAG, _varint(len(pixels)), pixels))
    meta = pb.FrameMeta(stamps=pb.Stamps(capture_ns=cap, publish_ns=[pub], receive_ns=[receive_ns], seq=seq,
                                         source=str(src)),
                        frame_seq=seq, width=w, height=h, channels=ch, dtype=dtype.name, pixel_format=fmt)
    return [Message(topic, RAW_IMAGE, wire, receive_ns, cap, seq),
            Message(f"{topic}/meta", "edgepipe.v1.FrameMeta", meta.SerializeToString(), receive_ns, cap, seq)]


def to_messages(topic: str, data, type_id: int, receive_ns: int, wall_offset_ns: int = 0) -> list[Message]:
    """The recording messages of one ring record read from ``topic`` at ``receive_ns`` (RAW).
    ``wall_offset_ns`` (wall - RAW) sets the wall time a frame's RawImage.timestamp carries."""
    if type_id == IMU_RECORD_TYPE and len(data) == IMU_SAMPLE_DTYPE.itemsize:
        return [_imu(topic, data, receive_ns)]
    if type_id == RESULT_TYPE_ID:
        try:
            r = pb.InferenceResult.FromString(bytes(data))
            return [Message(topic, "edgepipe.v1.InferenceResult", bytes(data), receive_ns,
                            r.stamps.capture_ns, r.stamps.seq or r.frame_seq)]
        except Exception:  # noqa: BLE001 - not a result after all: keep the bytes as a raw record
            pass
    if type_id == REC_TYPE and len(data) >= HDR_SIZE:
        return _frame(topic, data, receive_ns, wall_offset_ns)
    rec = unpack_record(data)
    if rec is None:
        st = pb.Stamps(receive_ns=[receive_ns], source=topic)
    else:  # one constructor call: half the cost of filling the fields one by one (upb)
        st = pb.Stamps(capture_ns=rec.capture_ns, seq=rec.seq, publish_ns=[h.publish_ns for h in rec.hops],
                       receive_ns=[h.receive_ns for h in rec.hops[1:]] + [receive_ns], source=topic)
    m = RawRecord(stamps=st, type_id=type_id, payload=bytes(data))
    return [Message(topic, RAW_RECORD, m.SerializeToString(), receive_ns, st.capture_ns, st.seq)]


def image_array(data: bytes) -> tuple[np.ndarray, str]:
    """The pixels of a recorded foxglove.RawImage as an ndarray (H, W[, C]) and its pixel format."""
    img = message_class(RAW_IMAGE).FromString(data)
    fmt = _PIXEL_FORMAT.get(img.encoding, "GRAY")
    ch = 3 if fmt in ("BGR", "RGB") else 1
    arr = np.frombuffer(img.data, np.uint8)
    if img.step != img.width * ch:  # rows padded: drop the padding
        arr = arr.reshape(img.height, img.step)[:, : img.width * ch]
    shape = (img.height, img.width, ch) if ch > 1 else (img.height, img.width)
    return np.ascontiguousarray(arr).reshape(shape), fmt


def from_message(schema_name: str, data: bytes) -> tuple[bytes, int] | None:
    """The ring record (bytes, type id) a recorded message replays as; None for a frame (foxglove.RawImage:
    replayed through a FrameWriter from :func:`image_array`, which lays the record out) and for a message
    that has no record of its own (FrameMeta, which travels with its RawImage)."""
    if schema_name == RAW_RECORD:
        m = RawRecord.FromString(data)
        return m.payload, m.type_id
    if schema_name == "edgepipe.v1.InferenceResult":
        return data, RESULT_TYPE_ID
    if schema_name == "edgepipe.v1.ImuSample":
        m = pb.ImuSample.FromString(data)
        row = np.zeros(1, IMU_SAMPLE_DTYPE)
        st = m.stamps
        row["seq"], row["sample_ns"] = st.seq, st.capture_ns
        row["publish_ns"] = st.publish_ns[0] if st.publish_ns else st.capture_ns
        row["gyr"] = (m.gyro.x, m.gyro.y, m.gyro.z)
        row["acc"] = (m.accel.x, m.accel.y, m.accel.z)
        if m.HasField("mag"):
            row["mag"] = (m.mag.x, m.mag.y, m.mag.z)
        if m.HasField("orientation"):
            o = m.orientation
            row["q"] = (o.w, o.x, o.y, o.z)
        # (minor 5) the loop's own fields; a recording made before them gives zeros and the mag flag only
        row["deadline_ns"], row["device_ns"], row["late_ns"] = m.deadline_ns, m.device_ns, m.late_ns
        row["flags"] = m.flags | (FLAG_MAG if m.HasField("mag") else 0)
        for k, v in (("raw_gyr", m.raw_gyro), ("raw_acc", m.raw_accel), ("raw_mag", m.raw_mag)):
            if len(v) == 3:
                row[k] = tuple(v)
        return row.tobytes(), IMU_RECORD_TYPE
    return None
