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


def device_facts() -> dict[str, Any]:
    """`{cores, memory_bytes, load_1m, platform, machine, cuda, model_factories}`: cores and
    total memory in bytes, 1-minute load average, OS name, CPU architecture, whether a CUDA
    device exists, and the model factories installed (`model_factories`)."""
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
    }
