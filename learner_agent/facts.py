"""Device facts an agent shares with the orchestrator (psutil); never its benchmark scores."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def _has_cuda() -> bool:
    # Asking torch would import it (hundreds of MB resident); only do so when a task already
    # loaded it. Otherwise look for the device nodes NVIDIA drivers create (desktop or Jetson).
    # A torch import in progress on another thread leaves a half-built module in sys.modules,
    # so ask it only when it is complete, and never let the question fail a heartbeat.
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    if cuda is not None:
        try:
            return bool(cuda.is_available())
        except Exception:
            pass
    return Path("/dev/nvidia0").exists() or Path("/dev/nvhost-ctrl").exists()


def model_factories() -> list[dict[str, str]]:
    """The model factories installed here (entry-point group `plexus.models`): name, value,
    distribution and version each. The orchestrator gives a factory task only to learners
    that list its factory with the same distribution version."""
    from plexus.models import installed_factories

    try:
        return installed_factories()
    except Exception:  # a broken plugin's metadata must never fail a heartbeat
        return []


# Raspberry Pi firmware's throttle bits (`vcgencmd get_throttled`): what holds now.
PI_THROTTLE_NOW = {0x1: "under-voltage", 0x2: "frequency capped", 0x4: "throttled",
                   0x8: "soft temperature limit"}
PI_THROTTLE_FILE = "devices/platform/soc/soc:firmware/get_throttled"


def thermal_facts(sys_root: Path = Path("/sys")) -> dict[str, Any]:
    """`temperature_c` (the hottest thermal zone, °C) where Linux exposes thermal zones
    (Raspberry Pi, Jetson, most laptops), and on a Raspberry Pi `throttled` (whether the
    firmware limits the CPU now) with `throttle_reasons`; nothing the device does not expose.
    Never raises: an unreadable or odd file is skipped."""
    out: dict[str, Any] = {}
    temps = []
    for zone in sorted((sys_root / "class" / "thermal").glob("thermal_zone*/temp"))[:32]:
        try:
            milli = int(zone.read_text().strip())
        except (OSError, ValueError):
            continue
        if -40_000 <= milli <= 150_000:  # a sensor that reads nonsense is not a temperature
            temps.append(milli / 1000)
    if temps:
        out["temperature_c"] = round(max(temps), 1)
    try:
        bits = int((sys_root / PI_THROTTLE_FILE).read_text().strip(), 16)
    except (OSError, ValueError):
        return out
    reasons = [why for bit, why in PI_THROTTLE_NOW.items() if bits & bit]
    out["throttled"] = bool(reasons)
    out["throttle_reasons"] = reasons
    return out


def device_facts() -> dict[str, Any]:
    """`{cores, memory_bytes, load_1m, platform, machine, cuda, model_factories}`: cores and
    total memory in bytes, 1-minute load average, OS name, CPU architecture, whether a CUDA
    device exists, and the model factories installed (`model_factories`); plus
    `temperature_c`, `throttled` and `throttle_reasons` where the device exposes them
    (`thermal_facts`)."""
    import psutil

    try:
        load_1m = float(psutil.getloadavg()[0])
    except (AttributeError, OSError):
        load_1m = 0.0
    return {
        "cores": int(psutil.cpu_count(logical=True) or os.cpu_count() or 1),
        "memory_bytes": int(psutil.virtual_memory().total),
        "load_1m": load_1m,
        "platform": platform.system().lower(),
        "machine": platform.machine(),
        "cuda": _has_cuda(),
        "model_factories": model_factories(),
        **thermal_facts(),
    }
