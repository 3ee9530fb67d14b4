"""The data directory: where a task's files live and how every file is written.

Model versions, shards, test splits and uploaded updates are safetensors files under
`<data_dir>/tasks/<id>/`, each written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import StorageFull

# What a write fails with when the disk (or the quota, or the file size limit) is exhausted.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one.

    Temp file in the same directory, fsync, rename, then fsync the directory so the rename
    itself survives a power cut. A full disk (ENOSPC, EDQUOT) or the process's file size
    limit (EFBIG, RLIMIT_FSIZE) raises `StorageFull` after removing the temp file: the old
    file, if any, stays as it was and no half-written file is ever at `path`.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno in FULL_ERRNOS:
            raise StorageFull(
                f"cannot write {path.name} ({len(data)} bytes) under {path.parent}: "
                f"{os.strerror(exc.errno or 0)}; free space in the data directory (or raise "
                "the file size limit); nothing was changed") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sweep_temp_files(root: Path) -> int:
    """Remove temp files a crash left under `root` (never referenced by the store); how many."""
    removed = 0
    tasks = root / "tasks"
    if not tasks.is_dir():
        return 0
    for tmp in tasks.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed


def write_atomic_many(files: list[tuple[Path, Callable[[], bytes]]], threads: int = 8) -> None:
    """Write many files as `write_atomic` does, each made by its function, with the fsyncs
    overlapped: every temp file is written and fsynced (`threads` at once), then renamed,
    then each directory is fsynced once. When this returns every file is durable; a crash
    before leaves whole old files or none (never a torn one). A round's kept updates
    (one per learner) cost one directory fsync instead of one each, and their file fsyncs
    overlap instead of queueing (benchmarks/capacity.py).
    """
    from concurrent.futures import ThreadPoolExecutor

    temps: list[Path] = []  # list.append is atomic: the stage threads share it

    def stage(item: tuple[Path, Callable[[], bytes]]) -> tuple[Path, Path]:
        path, make = item
        data = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        temps.append(tmp)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp, path

    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            staged = list(pool.map(stage, files))
    except BaseException as exc:
        for tmp in temps:  # nothing was renamed yet: no target changed
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            raise StorageFull(
                f"cannot write {len(files)} files under {files[0][0].parent}: "
                f"{os.strerror(exc.errno or 0)}; free space in the data directory (or raise "
                "the file size limit); nothing was changed") from None
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    for directory in {path.parent for _tmp, path in staged}:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True)
class Layout:
    """Where a data directory keeps its files."""

    root: Path

    def task_dir(self, task_id: int) -> Path:
        return self.root / "tasks" / str(task_id)

    def shard(self, task_id: int, n: int) -> Path:
        return self.task_dir(task_id) / "shards" / f"{n}.safetensors"

    def test_split(self, task_id: int) -> Path:
        return self.task_dir(task_id) / "test.safetensors"

    def model(self, task_id: int, version: int) -> Path:
        return self.task_dir(task_id) / "models" / f"v{version}.safetensors"

    def update(self, task_id: int, round_index: int, learner_id: int) -> Path:
        return self.task_dir(task_id) / "updates" / f"r{round_index}" / f"l{learner_id}.safetensors"
