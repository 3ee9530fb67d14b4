"""What the process-level tests share: polling a condition with a deadline (never a bare
sleep), and starting and stopping `plexus` CLI processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """The first truthy value of `predicate`, polled every 0.1 s; TimeoutError after
    `timeout_s` naming `what`."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)  # polling a condition with a deadline
    raise TimeoutError(f"{what} did not happen within {timeout_s} s")


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """`plexus ARGS...` (or `python -c CODE` when args[0] is "-c") in its own session,
    output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *(args if args[0] == "-c" else ["-m", "plexus.cli", *args])],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})},
            start_new_session=True)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send `sig` and wait (20 s), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def finished(client: Any, task_id: int, timeout_s: float = 150.0) -> dict[str, Any]:
    """Task `task_id` once it is no longer pending or running (an `orchestrator.client.Client`)."""
    return wait_for(lambda: (t := client.task(task_id))["state"] not in ("pending", "running")
                    and t, timeout_s, f"task {task_id} ending")  # type: ignore[no-any-return]
