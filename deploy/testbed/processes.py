"""Start processes inside a learner's namespace and cgroups, and recognise them later by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

# The shell joins the cgroups first and then execs `ip netns exec`, which execs the command: the
# pid Popen returns is the command's own pid, and it never runs a moment outside its limits.
_ENTER = (
    'IFS=:; for d in $PLEXUS_TB_CGROUPS; do echo $$ > "$d/cgroup.procs" || exit 97; done; '
    'unset IFS PLEXUS_TB_CGROUPS; exec ip netns exec "$0" "$@"'
)


def spawn(
    argv: list[str],
    *,
    netns: str | None,
    cgroups: list[Path],
    env: dict[str, str] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = subprocess.STDOUT,
) -> subprocess.Popen[bytes]:
    """Start `argv` in namespace `netns` (None: the root one) and in the given cgroup dirs.

    stdout / stderr are passed to Popen (a file, subprocess.PIPE, or None to inherit). The
    process leads its own session so that a signal to its group reaches its children too.
    """
    full_env = dict(os.environ if env is None else env)
    full_env["PLEXUS_TB_CGROUPS"] = ":".join(str(c) for c in cgroups)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if netns is None:
        script = _ENTER.replace('exec ip netns exec "$0" "$@"', 'exec "$@"')
        command = ["/bin/sh", "-c", script, "plexus-testbed", *argv]
    else:
        command = ["/bin/sh", "-c", _ENTER, netns, *argv]
    return subprocess.Popen(
        command,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat).

    Stored beside the pid so that a later run never signals an unrelated process that reused it.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19])


def state(pid: int) -> str | None:
    """One-letter process state (R, S, T stopped, Z zombie...), or None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2]


def alive(pid: int | None, ticks: int | None) -> bool:
    """Whether `pid` still names the same process (same start time) and is not a zombie."""
    if pid is None:
        return False
    current = start_ticks(pid)
    return current is not None and current == ticks and state(pid) not in (None, "Z", "X")


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group the process leads (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def wait_gone(pid: int, ticks: int | None, timeout: float) -> bool:
    """Poll until the process is gone (or a zombie); True when it went within `timeout` s."""
    deadline = time.monotonic() + timeout
    while alive(pid, ticks):
        # Reap it if it is our child, so it does not linger as a zombie.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return True


def terminate_all(targets: list[tuple[int, int | None]], *, grace: float = 3.0) -> None:
    """SIGTERM every (pid, start ticks) at once, then SIGKILL whoever is left after `grace` s."""
    mine = [(pid, ticks) for pid, ticks in targets if alive(pid, ticks)]
    for pid, _ in mine:
        signal_group(pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid, ticks in mine:
        if not wait_gone(pid, ticks, max(0.0, deadline - time.monotonic())):
            signal_group(pid, signal.SIGKILL)
            wait_gone(pid, ticks, 5.0)


def terminate(pid: int, ticks: int | None, *, grace: float = 3.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after `grace` seconds."""
    if not alive(pid, ticks):
        return
    signal_group(pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    signal_group(pid, signal.SIGTERM)
    if not wait_gone(pid, ticks, grace):
        signal_group(pid, signal.SIGKILL)
        wait_gone(pid, ticks, 5.0)
