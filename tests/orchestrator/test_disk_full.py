"""A full data directory: writes fail with `StorageFull` (507 `storage_full`), nothing half
written is left or referenced, and the service takes writes again once space returns.

"Full" is the process's file size limit (RLIMIT_FSIZE: a write past it fails with EFBIG, as one
on a full disk fails with ENOSPC), set in a subprocess by preexec_fn, or lowered on the running
orchestrator with prlimit(2); no root needed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.client import APIError
from orchestrator.local.fleet import LocalFleet

LIMIT = 64 * 1024

WRITER = """
import json, sys
from pathlib import Path
from orchestrator.errors import StorageFull
from orchestrator.store import write_atomic
target = Path(sys.argv[1])
write_atomic(target, b"old" * 100)  # under the limit
try:
    write_atomic(target, b"x" * (2 * int(sys.argv[2])))
    print(json.dumps({"raised": None}))
except StorageFull as exc:
    print(json.dumps({"raised": exc.code, "detail": exc.detail}))
"""


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))


def test_a_write_past_the_limit_raises_storage_full_and_keeps_the_old_file(tmp_path: Path
                                                                           ) -> None:
    target = tmp_path / "models" / "v1.safetensors"
    out = subprocess.run([sys.executable, "-c", WRITER, str(target), str(LIMIT)],
                         capture_output=True, text=True, timeout=60, preexec_fn=_limit,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, check=True)
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["raised"] == "storage_full", out.stdout + out.stderr
    assert "v1.safetensors" in answer["detail"]
    assert target.read_bytes() == b"old" * 100  # the old version, whole
    assert [p.name for p in target.parent.iterdir()] == ["v1.safetensors"]  # no temp file


@pytest.fixture(scope="module")
def orchestrator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    fleet = LocalFleet(tmp_path_factory.mktemp("diskfull") / "data")
    try:
        fleet.start_orchestrator()
        yield fleet
    finally:
        fleet.stop()


SPEC = {"name": "full", "dataset": {"name": "digits"}, "partition": {"shard_size": 50},
        "sync": {"rounds": 1}}


def test_a_task_submitted_to_a_full_data_dir_is_507_and_nothing_is_kept(
        orchestrator: LocalFleet) -> None:
    assert orchestrator.orchestrator is not None
    pid = orchestrator.orchestrator.popen.pid
    tasks_dir = orchestrator.data_dir / "tasks"
    with orchestrator.client() as client:
        before = client.tasks()
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
        try:
            with pytest.raises(APIError) as err:
                client.submit(SPEC)
            assert err.value.status == 507 and err.value.code == "storage_full", err.value
            assert "free space" in err.value.detail
            assert client.tasks() == before  # nothing half-made is visible
            assert client.health()["ok"] is True  # reads still answer
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        # Space is back: the same request succeeds, and no temp file was left behind.
        created = client.submit(SPEC)
        assert [t["id"] for t in client.tasks()] == [t["id"] for t in before] + [created["id"]]
    assert sorted(tasks_dir.rglob("*.tmp")) == []
