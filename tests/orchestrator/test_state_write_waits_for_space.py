"""A driver's last state write on a full data directory waits for space instead of leaving the
task `running` with nobody driving it (`orchestrator/runs/space.py`).

Found by the chaos matrix (`dab / disk_full` on the testbed): the file size limit hit the
`set_state(finished)` after a sync task's last committed round; the driver logged "task
failed", its fallback `set_state(failed)` failed too, and the task stayed `running` for good.
Here a real store (SQLite) in a subprocess gets RLIMIT_FSIZE = 0, so every write that grows a
file fails with EFBIG (`StorageFull`) as on a full disk; a thread lifts the limit after a
moment, and the write must have been refused at least once and then gone through. No root
needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, json, logging, resource, sys, threading, time
from pathlib import Path
from orchestrator.errors import StorageFull
from orchestrator.runs import space
from orchestrator.store import Store

space.RETRY_S = 0.2
refused = []
twice = threading.Event()
class Count(logging.Handler):
    def emit(self, record):
        refused.append(record.getMessage())
        if len(refused) >= 2:
            twice.set()
logging.getLogger("orchestrator.runs.space").addHandler(Count())

store = Store(Path(sys.argv[1]))
task = store.create_task({"name": "t", "mode": "async"},
                         lambda i, d: {"num_shards": 1, "shard_samples": 1}, time.time())
store.set_state(task.id, "running", None, time.time())
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
try:
    store.set_state(task.id, "running", "probe", time.time())
    direct = None
except StorageFull as exc:
    direct = exc.code

def space_returns():
    twice.wait()
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

threading.Thread(target=space_returns, daemon=True).start()
row = asyncio.run(asyncio.wait_for(space.when_space(
    "task end", store.set_state, task.id, "finished", None, time.time()), 60))
other = Store(Path(sys.argv[1]))  # read back as a restarted process would
print(json.dumps({"direct": direct, "refused": len(refused), "state": row.state,
                  "stored": other.task(task.id).state}))
"""


def test_the_final_state_write_waits_for_space_then_goes_through(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "data")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["direct"] == "storage_full", out.stderr  # the limit does fail a state write
    assert got["refused"] >= 2, got  # when_space was refused, waited, tried again
    assert got["state"] == got["stored"] == "finished", got
