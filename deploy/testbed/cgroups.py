"""CPU quota and memory limit per learner through cgroups, v1 or v2, whichever this host has.

v1 (separate `cpu` and `memory` hierarchies, as on the development machine): one directory per
learner under the invoking process's own cgroup in each hierarchy, so limits imposed on the
caller still apply. v2 (unified): a `<prefix>-testbed` group at the hierarchy root with the cpu
and memory controllers delegated to it, one child per learner, because v2 forbids enabling
controllers under a group that itself holds processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import HostError

# 20 ms scheduling period (quota = cpu share x period): short enough that a benchmark lasting
# a fraction of a second sees a steady rate rather than 100 ms bursts, long enough that the
# kernel's 1 ms minimum quota still allows shares down to 0.05 of a core.
CPU_PERIOD_US = 20_000


@dataclass(frozen=True)
class Backend:
    """Which cgroup layout this host has: version and controller mount points."""

    version: int
    cpu_root: Path
    memory_root: Path

    def describe(self) -> str:
        if self.version == 2:
            return f"cgroup v2 at {self.cpu_root}"
        return f"cgroup v1: cpu at {self.cpu_root}, memory at {self.memory_root}"


def _mounts() -> list[tuple[str, str, set[str]]]:
    rows = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            rows.append((parts[2], parts[1], set(parts[3].split(","))))
    return rows


def detect() -> Backend:
    """Find the cgroup layout; HostError when neither v2 nor v1 offers cpu and memory."""
    v1_cpu = v1_mem = None
    for fstype, mountpoint, options in _mounts():
        if fstype == "cgroup2":
            controllers = Path(mountpoint, "cgroup.controllers")
            if controllers.exists() and {"cpu", "memory"} <= set(controllers.read_text().split()):
                root = Path(mountpoint)
                return Backend(2, root, root)
        elif fstype == "cgroup":
            if "cpu" in options and v1_cpu is None:
                v1_cpu = Path(mountpoint)
            if "memory" in options and v1_mem is None:
                v1_mem = Path(mountpoint)
    if v1_cpu is not None and v1_mem is not None:
        return Backend(1, v1_cpu, v1_mem)
    raise HostError(
        "no cgroup hierarchy with the cpu and memory controllers is mounted; on cgroup v2 "
        "enable them (`echo +cpu +memory > /sys/fs/cgroup/cgroup.subtree_control`), on v1 mount "
        "the cpu and memory hierarchies"
    )


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path in a v1 hierarchy (controller) or in v2 (None)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller is None and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return "/"


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def create(
    backend: Backend, prefix: str, learner: str, *, cpu: float, memory_bytes: int
) -> list[Path]:
    """Create the learner's cgroup(s) with a CPU quota (share of one core) and a memory limit.

    Returns the directories made (v2: group, leaf; v1: cpu dir, memory dir); pass them to
    `leaves`, `read_limits` and `remove`.
    """
    quota = max(1000, int(cpu * CPU_PERIOD_US))
    name = f"{prefix}-{learner}"
    if backend.version == 2:
        group = backend.cpu_root / f"{prefix}-testbed"
        group.mkdir(exist_ok=True)
        # Controllers must be enabled at every level from the root down to the learner's parent.
        _write(backend.cpu_root / "cgroup.subtree_control", "+cpu +memory")
        _write(group / "cgroup.subtree_control", "+cpu +memory")
        leaf = group / name
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        _write(leaf / "memory.max", str(memory_bytes))
        if (leaf / "memory.swap.max").exists():
            _write(leaf / "memory.swap.max", "0")
        return [group, leaf]
    cpu_dir = backend.cpu_root / _own_cgroup("cpu").lstrip("/") / name
    mem_dir = backend.memory_root / _own_cgroup("memory").lstrip("/") / name
    cpu_dir.mkdir(exist_ok=True)
    mem_dir.mkdir(exist_ok=True)
    _write(cpu_dir / "cpu.cfs_period_us", str(CPU_PERIOD_US))
    _write(cpu_dir / "cpu.cfs_quota_us", str(quota))
    _write(mem_dir / "memory.limit_in_bytes", str(memory_bytes))
    # Without this the limit would only cover RAM and the learner could spill into swap.
    memsw = mem_dir / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        with contextlib.suppress(OSError):
            _write(memsw, str(memory_bytes))
    return [cpu_dir, mem_dir]


def leaves(dirs: list[Path], backend: Backend) -> list[Path]:
    """The directories a learner's processes are placed in (v2: the leaf; v1: both)."""
    return [dirs[-1]] if backend.version == 2 else list(dirs)


def read_limits(dirs: list[Path]) -> tuple[float | None, int | None]:
    """(cpu share of one core, memory limit bytes) read back from the cgroup files."""
    cpu = memory = None
    for d in dirs:
        if (d / "cpu.max").exists():
            quota, period = (d / "cpu.max").read_text().split()
            cpu = None if quota == "max" else int(quota) / int(period)
            raw = (d / "memory.max").read_text().strip()
            memory = None if raw == "max" else int(raw)
        if (d / "cpu.cfs_quota_us").exists():
            quota_us = int((d / "cpu.cfs_quota_us").read_text())
            period_us = int((d / "cpu.cfs_period_us").read_text())
            cpu = None if quota_us < 0 else quota_us / period_us
        if (d / "memory.limit_in_bytes").exists():
            memory = int((d / "memory.limit_in_bytes").read_text())
    return cpu, memory


def pids(dirs: list[Path]) -> list[int]:
    """Every process in the given cgroup directories."""
    found: set[int] = set()
    for d in dirs:
        procs = d / "cgroup.procs"
        with contextlib.suppress(OSError):
            found.update(int(p) for p in procs.read_text().split())
    return sorted(found)


def signal_all(dirs: list[Path], signum: int) -> list[int]:
    """Send a signal to every process in the cgroups; returns the pids signalled."""
    sent = []
    for pid in pids(dirs):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
            sent.append(pid)
    return sent


def remove(dirs: list[Path], *, timeout: float = 10.0) -> None:
    """Kill what is left in the cgroups and delete them, deepest first."""
    deadline = time.monotonic() + timeout
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if not d.exists():
            continue
        while True:
            if not pids([d]):
                break
            signal_all([d], signal.SIGKILL)
            if time.monotonic() > deadline:
                raise HostError(f"processes in {d} survive SIGKILL; remove them and run down again")
            time.sleep(0.02)
        # A v1 memory cgroup may report busy for a moment after its last task exits.
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise HostError(f"cannot remove cgroup {d}: {exc.strerror}") from exc
                time.sleep(0.02)


def find_leftovers(backend: Backend, prefix: str, *, max_depth: int = 6) -> list[Path]:
    """Every cgroup directory named `<prefix>-...` in the cpu and memory hierarchies."""
    found: list[Path] = []
    roots = {backend.cpu_root, backend.memory_root}
    for root in roots:
        base_depth = len(root.parts)
        for current, subdirs, _ in os.walk(root):
            depth = len(Path(current).parts) - base_depth
            if depth >= max_depth:
                subdirs[:] = []
                continue
            for sub in subdirs:
                if sub.startswith(f"{prefix}-"):
                    found.append(Path(current, sub))
    return found
