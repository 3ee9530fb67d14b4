"""A full data directory: a write fails with `StorageFull`, and leaves no temp or half file.

"Full" is the process's file size limit (RLIMIT_FSIZE: a write past it fails with EFBIG, as one
on a full disk fails with ENOSPC), set in a subprocess by preexec_fn; no root needed. The API
side (507 `storage_full`, then accepted once space returns) is in `test_api.py`, on its shared
orchestrator; a running task held and resumed is in `test_orchestrator_restarts.py`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

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
