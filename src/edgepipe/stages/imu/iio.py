"""The Linux IIO source (an LSM6DSOX as the st_lsm6dsx driver exposes it): sysfs polling or the buffered char
device, discovered under a configurable root so a fake sysfs tree and a FIFO stand in for hardware in tests.

>>> parse_scan_type("le:s16/16>>0")
(False, True, 16, 16, 0)
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from edgepipe.errors import ImuConfigError, ImuDeviceNotFoundError, ImuSourceError
from edgepipe.imu_loop import SCAN_MAX, ImuLoopConfig
from edgepipe.stages.imu._check import rate as _rate
from edgepipe.stages.imu.sources import ImuSource

__all__ = ["IioSource"]  # parse_scan_type: a helper with a doctest, not API

_SCAN_TYPE = re.compile(r"^(le|be):([su])(\d+)/(\d+)(?:X(\d+))?>>(\d+)$")
_CHANNELS = {  # channel slot in struct ep_imu_config -> IIO channel name
    0: "in_anglvel_x", 1: "in_anglvel_y", 2: "in_anglvel_z",
    3: "in_accel_x", 4: "in_accel_y", 5: "in_accel_z",
    6: "in_magn_x", 7: "in_magn_y", 8: "in_magn_z",
    9: "in_timestamp",
}


def parse_scan_type(text: str) -> tuple[bool, bool, int, int, int]:
    """Decode an IIO ``scan_elements/*_type`` string into (big_endian, signed, bits, storage_bits, shift).

    >>> parse_scan_type("le:s16/16>>0")
    (False, True, 16, 16, 0)
    >>> parse_scan_type("be:u12/16>>4")
    (True, False, 12, 16, 4)
    """
    m = _SCAN_TYPE.match(text.strip())
    if not m:
        raise ImuSourceError(f"scan type {text.strip()!r} is not [le|be]:[s|u]bits/storagebits>>shift")
    endian, sign, bits, storage, repeat, shift = m.groups()
    bits, storage, shift = int(bits), int(storage), int(shift)
    if repeat not in (None, "1") or storage not in (8, 16, 32, 64) or not 0 < bits <= storage or shift >= storage:
        raise ImuSourceError(f"scan type {text.strip()!r}: unsupported storage/bits/shift/repeat")
    return endian == "be", sign == "s", bits, storage, shift


class IioSource(ImuSource):
    """An IIO IMU as the kernel's st_lsm6dsx driver exposes an LSM6DSOX.

    Args:
        root: the IIO devices directory (``/sys/bus/iio/devices``; a fake tree in tests).
        device: ``"iio:deviceN"``, an int N, or a device ``name`` (``"lsm6dsox"`` also matches the driver's
            split ``lsm6dsox_accel`` / ``lsm6dsox_gyro`` devices, read together in polled mode).
        buffered: read scans from the char device instead of polling sysfs; the device paces the loop.
        dev_path: the char device (default ``/dev/<iio:deviceN>``; a FIFO in tests).
        enable: buffered only: write 1 to the channels' ``*_en`` and to ``buffer/enable`` at open (0 at close).

    Values: ``in_accel_*`` x ``in_accel_scale`` is m/s^2, ``in_anglvel_*`` x ``in_anglvel_scale`` rad/s, as
    the IIO ABI defines them. A per-axis ``in_accel_x_scale`` wins over the shared one.

    On real st_lsm6dsx hardware (from the driver source; not run on a device here): every polled
    ``*_raw`` read is a one-shot conversion (enable the sensor, sleep one to two ODR periods, read,
    disable), so polling six channels cannot keep up with 1 kHz; use the buffered mode there. The driver
    also registers accel and gyro as two devices with two char devices, while buffered mode reads one
    device's scans: both sensors in one buffer need a driver (or a fake tree) that puts them in one device.
    """

    def __init__(self, root: str | os.PathLike = "/sys/bus/iio/devices", device: str | int = "lsm6dsox",
                 buffered: bool = False, dev_path: str | os.PathLike | None = None, enable: bool = True) -> None:
        self.root = Path(root)
        self.device = f"iio:device{device}" if isinstance(device, int) and not isinstance(device, bool) else device
        if not isinstance(self.device, str) or not self.device:
            raise ImuConfigError(f"device must be 'iio:deviceN', an int or a device name, got {device!r}")
        self.buffered = bool(buffered)
        self.paced = not self.buffered
        self.dev_path = None if dev_path is None else Path(dev_path)
        self.enable = bool(enable)
        self._fds: list[int] = []
        self._enabled_dir: Path | None = None
        self.name = ""
        self.sampling_frequency: float | None = None
        self.scan_size = 0

    # -- discovery
    def _devices(self) -> list[Path]:
        if not self.root.is_dir():
            raise ImuDeviceNotFoundError(f"IIO root {str(self.root)!r} does not exist")
        if self.device.startswith("iio:device"):
            d = self.root / self.device
            if not d.is_dir():
                raise ImuDeviceNotFoundError(f"IIO device {self.device!r} not found under {str(self.root)!r}")
            return [d]
        found = []
        for d in sorted(self.root.glob("iio:device*")):
            try:
                nm = (d / "name").read_text(errors="replace").strip()
            except OSError:
                continue
            if nm == self.device or nm.startswith(self.device + "_"):
                found.append(d)
        if not found:
            raise ImuDeviceNotFoundError(f"no IIO device named {self.device!r} under {str(self.root)!r}")
        return found

    @staticmethod
    def _scale(dev: Path, chan: str) -> float:
        """in_accel_x -> in_accel_x_scale, else in_accel_scale."""
        kind = chan.rsplit("_", 1)[0]
        for p in (dev / f"{chan}_scale", dev / f"{kind}_scale"):
            if p.exists():
                try:
                    text = p.read_text(errors="replace").strip()
                    v = float(text)
                except (OSError, ValueError) as e:
                    raise ImuSourceError(f"unreadable scale {str(p)!r}: {e}") from None
                if not (math.isfinite(v) and v != 0):
                    raise ImuSourceError(f"unusable scale {str(p)!r}: {text!r}")
                return v
        raise ImuSourceError(f"unreadable scale: neither {chan}_scale nor {kind}_scale in {str(dev)!r}")

    def _channel_dev(self, devs: list[Path], chan: str, required: bool) -> Path | None:
        suffix = "_raw"
        for d in devs:
            if self.buffered:
                if (d / "scan_elements" / f"{chan}_en").exists():
                    return d
            elif (d / f"{chan}{suffix}").exists():
                return d
        if required:
            where = ", ".join(str(d) for d in devs)
            what = f"scan_elements/{chan}_en" if self.buffered else f"{chan}{suffix}"
            raise ImuDeviceNotFoundError(f"IIO channel {what} missing in {where}")
        return None

    def default_rate_hz(self) -> float:
        devs = self._devices()
        for d in devs:
            try:
                text = (d / "sampling_frequency").read_text(errors="replace")
                return _rate("sampling_frequency", float(text.split()[0]))
            except (OSError, ValueError, IndexError, ImuConfigError):
                continue
        return 1000.0

    def dt_s(self, rate_hz: float) -> float:
        return 1.0 / (self.sampling_frequency or rate_hz)

    # -- open
    def open(self, cfg: ImuLoopConfig) -> None:
        devs = self._devices()
        self.name = ",".join((d / "name").read_text(errors="replace").strip() if (d / "name").exists() else d.name
                             for d in devs)
        try:
            self.sampling_frequency = float((devs[0] / "sampling_frequency").read_text(errors="replace").split()[0])
        except (OSError, ValueError, IndexError):
            self.sampling_frequency = None
        try:
            if self.buffered:
                self._open_buffered(cfg, devs)
            else:
                self._open_polled(cfg, devs)
        except BaseException:
            self.close()
            raise

    def _open_polled(self, cfg: ImuLoopConfig, devs: list[Path]) -> None:
        fds: dict[int, int] = {}
        scales: dict[int, float] = {}
        for slot in range(9):
            chan = _CHANNELS[slot]
            d = self._channel_dev(devs, chan, required=slot < 6)
            if d is None:
                continue
            scale = self._scale(d, chan)
            try:
                fd = os.open(d / f"{chan}_raw", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise ImuDeviceNotFoundError(f"cannot open {str(d / (chan + '_raw'))!r}: {e.strerror}") from None
            self._fds.append(fd)
            fds[slot] = fd
            scales[slot] = scale
        self.has_mag = 6 in fds
        cfg.sysfs(fds, scales)

    def _open_buffered(self, cfg: ImuLoopConfig, devs: list[Path]) -> None:
        if len(devs) != 1:
            raise ImuConfigError(
                f"buffered mode reads one device's scans, but {self.device!r} matches {len(devs)} devices "
                f"({', '.join(d.name for d in devs)}); pass device='iio:deviceN' or use polled mode"
            )
        dev = devs[0]
        se = dev / "scan_elements"
        if not se.is_dir():
            raise ImuDeviceNotFoundError(f"{str(dev)!r} has no scan_elements: not a buffered IIO device")
        for slot in range(6):
            self._channel_dev(devs, _CHANNELS[slot], required=True)
        if self.enable:
            for slot in (*range(6), 9):
                p = se / f"{_CHANNELS[slot]}_en"
                if p.exists() and p.read_text(errors="replace").strip() != "1":
                    p.write_text("1\n")
        # Layout: enabled channels in scan-index order, each aligned to its own storage size.
        chans = []
        for en in sorted(se.glob("*_en")):
            chan = en.name[:-3]
            if en.read_text(errors="replace").strip() != "1":
                continue
            try:
                idx = int((se / f"{chan}_index").read_text(errors="replace").strip())
                typ = (se / f"{chan}_type").read_text(errors="replace")
            except (OSError, ValueError) as e:
                raise ImuSourceError(f"unreadable index/type of scan element {chan!r} in {str(se)!r}: {e}") from None
            chans.append((idx, chan, parse_scan_type(typ)))
        chans.sort()
        off = 0
        align = 1
        slots = {v: k for k, v in _CHANNELS.items()}
        layout: dict[int, tuple[int, int, int, int, bool, bool]] = {}
        scales: dict[int, float] = {}
        for _, chan, (be, signed, bits, storage, shift) in chans:
            nbytes = storage // 8
            off = (off + nbytes - 1) // nbytes * nbytes
            align = max(align, nbytes)
            if chan in slots:
                s = slots[chan]
                layout[s] = (off, nbytes, bits, shift, signed, be)
                if s < 9:
                    scales[s] = self._scale(dev, chan)
            off += nbytes
        scan = (off + align - 1) // align * align
        if not 0 < scan <= SCAN_MAX:
            raise ImuSourceError(f"scan of {scan} bytes from {str(se)!r}; supported: 1..{SCAN_MAX}")
        for slot in range(6):
            if slot not in layout:
                raise ImuDeviceNotFoundError(f"IIO channel {_CHANNELS[slot]} is not enabled in {str(se)!r}")
        self.scan_size = scan
        self.has_mag = 6 in layout
        path = self.dev_path or Path("/dev") / dev.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise ImuDeviceNotFoundError(f"cannot open IIO char device {str(path)!r}: {e.strerror}") from None
        self._fds.append(fd)
        cfg.chardev(fd, scan, layout, scales)
        if self.enable and (dev / "buffer" / "enable").exists():
            (dev / "buffer" / "enable").write_text("1\n")
            self._enabled_dir = dev

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
        if self._enabled_dir is not None:
            try:
                (self._enabled_dir / "buffer" / "enable").write_text("0\n")
            except OSError:
                pass
            self._enabled_dir = None

    def describe(self) -> str:
        mode = f"buffered {self.dev_path or '/dev/' + self.device}" if self.buffered else "polled sysfs"
        return f"iio {self.device!r} under {self.root} ({mode})"

