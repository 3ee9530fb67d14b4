"""A durable relay with real processes: a relay host killed with SIGKILL and restarted over its
SqliteRelayStore still delivers the calls queued for a worker, still takes the result of a call
that was running, and each call runs once on the worker; a call for a worker that stopped
polling fails with WorkerGone instead of waiting for the caller's timeout."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import rpc
from orchestrator.local.fleet import free_port
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.extended]

RELAY = """
import sys, threading, rpc
path, port, gone = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
relay = rpc.Relay(store=rpc.SqliteRelayStore(path), poll_wait_s=0.5, gone_after_s=gone)
relay.start(port=port)
threading.Event().wait()
"""

WORKER = """
import sys, threading, time, rpc
url, log = sys.argv[1], sys.argv[2]
registry = rpc.Registry()

@registry.procedure
def record(tag: str, seconds: float = 0.0) -> str:
    with open(log, "a") as f:
        f.write(f"start {tag}\\n")
    time.sleep(seconds)  # the work itself
    return tag.upper()

rpc.Worker(registry).start_relay(url, "w1")
threading.Event().wait()
"""




class Procs:
    """The relay host and worker processes of one test; all killed at the end."""

    def __init__(self, tmp: Path, gone_after_s: float) -> None:
        self.tmp, self.gone = tmp, gone_after_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "runs.log"
        self.log.touch()
        self.relay: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def start_relay(self) -> None:
        self.relay = subprocess.Popen([sys.executable, "-c", RELAY, str(self.tmp / "relay.db"),
                                       str(self.port), str(self.gone)])
        wait_for(self._relay_up, 60, "the relay answering")

    def _relay_up(self) -> bool:
        assert self.relay is not None and self.relay.poll() is None, "the relay exited"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self) -> None:
        self.worker = subprocess.Popen([sys.executable, "-c", WORKER, self.url, str(self.log)])

    def kill(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def runs(self, tag: str) -> int:
        return self.log.read_text().splitlines().count(f"start {tag}")

    def known(self, call_id: str) -> bool:
        """Whether the relay holds the call (queued or running)."""
        return httpx.get(f"{self.url}/w1/calls/{call_id}", timeout=5).status_code == 202


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path, gone_after_s=30.0)
    yield p
    p.kill(p.worker)
    p.kill(p.relay)


def remote(p: Procs, *, duplex: bool = True) -> rpc.Remote:
    # poll_interval_s 2: the caller's fetches ride out a relay restart of a few seconds.
    return rpc.connect(f"{p.url}/w1", duplex=duplex, timeout=90, poll_interval_s=2.0)


def test_a_queued_call_survives_a_relay_restart_and_reaches_the_worker_once(
        procs: Procs) -> None:
    procs.start_relay()
    handle = remote(procs).record.start("queued")  # no worker polls yet
    wait_for(lambda: procs.known(handle.call_id), 30, "the relay accepting the call")
    procs.kill(procs.relay)
    procs.start_relay()
    procs.start_worker()  # it connects only now and gets what waits for it
    assert handle.join(90) == "QUEUED"
    assert procs.runs("queued") == 1


def test_a_running_call_survives_a_relay_restart_and_runs_once(procs: Procs) -> None:
    procs.start_relay()
    procs.start_worker()
    handle = remote(procs).record.start("running", 4.0)
    wait_for(lambda: procs.runs("running"), 60, "the worker starting the call")
    procs.kill(procs.relay)  # the worker is mid-call; its result has nowhere to go yet
    procs.start_relay()
    assert handle.join(90) == "RUNNING"  # the worker offered its result until the relay was back
    # Queued again if its acknowledgement had not reached the relay: the worker skipped it.
    assert procs.runs("running") == 1


def test_calls_for_a_worker_that_stopped_polling_fail_fast_with_worker_gone(
        tmp_path: Path) -> None:
    p = Procs(tmp_path, gone_after_s=2.0)
    try:
        p.start_relay()
        p.start_worker()
        # Until the worker process has started and polled, its calls are refused as gone.
        wait_for(lambda: _answers(p, "alive"), 60, "the worker serving")
        p.kill(p.worker)
        for duplex in (False, True):  # queued while the worker was not yet known gone
            started = time.monotonic()
            with pytest.raises(rpc.WorkerGone):
                remote(p, duplex=duplex).record(f"late-{duplex}")
            assert time.monotonic() - started < 30  # far from the caller's 90 s timeout
        # Known gone now: refused at once, nothing queued.
        with pytest.raises(rpc.WorkerGone):
            remote(p, duplex=False).record("refused")
        p.start_worker()  # back: served again, and none of the failed calls ever runs
        wait_for(lambda: _answers(p, "again"), 60, "the worker serving again")
        assert p.runs("late-False") == p.runs("late-True") == p.runs("refused") == 0
    finally:
        p.kill(p.worker)
        p.kill(p.relay)


def _answers(p: Procs, tag: str) -> bool:
    try:
        return bool(remote(p, duplex=False).record(tag) == tag.upper())
    except rpc.WorkerGone:
        return False
