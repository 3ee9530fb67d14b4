"""Device profiles named after the thesis testbed (table 3.1, section 4.3.1), and unit parsing.

A profile is what one emulated learner gets on this host: a CPU quota (a fraction of one host
core), a memory limit, and link rates in each direction. The thesis gives clock speeds, core
counts, memory and link type (table 3.1) but no link rates and no training speeds, so the CPU
quotas are scaled from the clock speeds (Pis) and from the thesis's observation that the GPU
devices train far faster than the Pis (fig. 3.2 trains 120 shards there against 15 on a Pi); the
link rates are typical figures for the link type. docs/testbed.md lists what this does and does
not reproduce.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from deploy.errors import FleetError

MIB = 1024 * 1024
GIB = 1024 * MIB
MBIT = 1_000_000 / 8  # bytes/s in one Mbit/s


@dataclass(frozen=True)
class DeviceProfile:
    """Resources of one emulated learner.

    cpu: share of one host core (cgroup CPU quota; 0.25 = 25 ms of CPU per 100 ms).
    memory_bytes: cgroup memory limit, bytes.
    down_rate / up_rate: link rate towards / from the learner, bytes/s (tc htb).
    """

    name: str
    cpu: float
    memory_bytes: int
    down_rate: float
    up_rate: float
    link: str
    device: str

    def with_overrides(
        self,
        *,
        cpu: float | None = None,
        memory_bytes: int | None = None,
        down_rate: float | None = None,
        up_rate: float | None = None,
    ) -> DeviceProfile:
        """A copy with the given fields replaced (None keeps the profile's value)."""
        return replace(
            self,
            cpu=self.cpu if cpu is None else cpu,
            memory_bytes=self.memory_bytes if memory_bytes is None else memory_bytes,
            down_rate=self.down_rate if down_rate is None else down_rate,
            up_rate=self.up_rate if up_rate is None else up_rate,
        )


# Thesis table 3.1 (chapter 3 testbed) and 4.3.1 (ten 4 GB Jetson Nanos, chapter 4).
PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            "desktop-ethernet",
            1.00,
            8 * GIB,
            200 * MBIT,
            200 * MBIT,
            "Ethernet",
            "desktop with an RTX 2070 Super, 8 GB",
        ),
        DeviceProfile(
            "jetson-nano",
            0.50,
            2 * GIB,
            100 * MBIT,
            100 * MBIT,
            "Ethernet",
            "Jetson Nano 2 GB (table 3.1)",
        ),
        DeviceProfile(
            "jetson-nano-4gb",
            0.50,
            4 * GIB,
            100 * MBIT,
            100 * MBIT,
            "Ethernet",
            "Jetson Nano 4 GB (section 4.3.1, MED experiments)",
        ),
        DeviceProfile(
            "laptop-wifi", 0.60, 8 * GIB, 50 * MBIT, 20 * MBIT, "WiFi", "Lenovo Ideapad, 8 GB"
        ),
        DeviceProfile(
            "pi1", 0.18, 512 * MIB, 20 * MBIT, 10 * MBIT, "WiFi", "Raspberry Pi, 1.4 GHz x4, 512 MB"
        ),
        DeviceProfile(
            "pi2", 0.24, 4 * GIB, 30 * MBIT, 15 * MBIT, "WiFi", "Raspberry Pi, 1.8 GHz x4, 4 GB"
        ),
        DeviceProfile(
            "pi3", 0.20, 4 * GIB, 25 * MBIT, 12 * MBIT, "WiFi", "Raspberry Pi, 1.5 GHz x4, 4 GB"
        ),
    )
}

_RATE_UNITS = {
    "bit": 1 / 8,
    "kbit": 1e3 / 8,
    "mbit": 1e6 / 8,
    "gbit": 1e9 / 8,
    "bps": 1.0,
    "kbps": 1e3,
    "mbps": 1e6,
    "gbps": 1e9,
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": MIB,
    "mb": 1_000_000,
    "mib": MIB,
    "g": GIB,
    "gb": 1_000_000_000,
    "gib": GIB,
}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_rate(value: str | float | int) -> float:
    """Parse a link rate into bytes/s.

    Numbers are bytes/s; strings take tc's units: `20mbit` (megabits/s), `2.5mbps` (megabytes/s),
    `kbit`, `gbit`, `bit`, `kbps`, `gbps`, `bps`.
    """
    if isinstance(value, bool):
        raise FleetError(f"rate {value!r} is not a rate; write e.g. 20mbit or 2500000 (bytes/s)")
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        match = _NUMBER_UNIT.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _RATE_UNITS:
            raise FleetError(
                f"rate {value!r} is not understood; write a number of bytes/s or a tc-style "
                f"rate such as 20mbit, 500kbit, 2mbps"
            )
        rate = float(match.group(1)) * _RATE_UNITS[unit]
    if rate < 1000:
        raise FleetError(f"rate {value!r} is below 1000 bytes/s; tc htb cannot shape that low")
    return rate


def parse_size(value: str | int) -> int:
    """Parse a memory size into bytes: a number of bytes, or `512MiB`, `2GiB`, `512m`, `1g`."""
    if isinstance(value, bool):
        raise FleetError(f"size {value!r} is not a size; write e.g. 512MiB")
    if isinstance(value, int):
        size = value
    else:
        match = _NUMBER_UNIT.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _SIZE_UNITS:
            raise FleetError(f"size {value!r} is not understood; write e.g. 512MiB, 2GiB, 1g")
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size < 32 * MIB:
        raise FleetError(f"memory {value!r} is below 32 MiB; a Python agent cannot start in that")
    return size


def tc_rate(rate: float) -> str:
    """A rate in bytes/s written for `tc` (bits per second, integer)."""
    return f"{round(rate * 8)}bit"
