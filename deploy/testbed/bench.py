"""Helpers for benchmarks that run on the emulated testbed (`--testbed FLEET.yaml`).

A benchmark adds the option with `add_testbed_option(parser)` and, when it is given, wraps its
run in `with testbed_session(args.testbed) as bed:`; inside, `bed.url` is the orchestrator the
learners reach and `bed.spawn_in(name, argv)` runs anything under a learner's limits.
`measure_links` and `measure_compute` give each learner's real bandwidth and compute rate with
the probes, for checking the emulation against the caps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

from deploy.errors import TestbedError
from deploy.testbed.fleet import Fleet, load_fleet
from deploy.testbed.testbed import Testbed

_CHUNK = b"\0" * (64 * 1024)


def add_testbed_option(parser: argparse.ArgumentParser) -> None:
    """Add `--testbed FLEET.yaml` to a benchmark's argument parser."""
    parser.add_argument(
        "--testbed",
        type=Path,
        default=None,
        metavar="FLEET.yaml",
        help="run the learners on the emulated testbed described by this fleet file (needs root)",
    )


@contextlib.contextmanager
def testbed_session(
    fleet: str | Path | dict[str, Any] | Fleet, **up_kwargs: Any
) -> Iterator[Testbed]:
    """Bring a testbed up for the duration of a `with` block and always take it down after."""
    spec = fleet if isinstance(fleet, Fleet) else load_fleet(fleet)
    bed = Testbed.up(spec, **up_kwargs)
    try:
        yield bed
    finally:
        bed.down()


class _BlobHandler(BaseHTTPRequestHandler):
    """GET /blob?bytes=N streams N zero bytes; GET /shards/I sends shard I; POST /sink drains."""

    protocol_version = "HTTP/1.1"
    shards: ClassVar[list[bytes]] = []  # replaced per server by a subclass

    def do_GET(self) -> None:
        parsed = urlparse(self.path)
        if parsed.path.startswith("/shards/"):
            index = int(parsed.path.rsplit("/", 1)[1])
            if not 0 <= index < len(self.shards):
                self.send_error(404, f"shard {index} not found ({len(self.shards)} shards)")
                return
            body = self.shards[index]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        query = parse_qs(parsed.query)
        size = int(query.get("bytes", ["0"])[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        left = size
        while left > 0:
            piece = _CHUNK[: min(left, len(_CHUNK))]
            self.wfile.write(piece)
            left -= len(piece)

    def do_POST(self) -> None:
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            got = self.rfile.read(min(left, 64 * 1024))
            if not got:
                break
            left -= len(got)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class BlobServer:
    """A throwaway HTTP server that sends and swallows bytes, for link measurements.

    Bind it to the testbed's bridge address (`bed.state.bridge_ip`) so learners can reach it.
    `shards` (safetensors payloads, see `make_shards`) are served at /shards/{i}.
    """

    def __init__(self, host: str, port: int = 0, shards: list[bytes] | None = None) -> None:
        handler = type("_Handler", (_BlobHandler,), {"shards": list(shards or [])})
        self.shard_count = len(shards or [])
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> BlobServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _probe(
    bed: Testbed, names: list[str], args_for: dict[str, list[str]], timeout: float
) -> dict[str, dict[str, float]]:
    """Run the probe in every named learner at once and collect its JSON answers."""
    import sys

    children = {
        name: bed.spawn_in(name, [sys.executable, "-m", "deploy.testbed.probe", *args_for[name]])
        for name in names
    }
    results: dict[str, dict[str, float]] = {}
    for name, child in children.items():
        try:
            out, err = child.communicate(timeout=timeout)
        except Exception:
            child.kill()
            child.communicate()
            raise
        if child.returncode != 0:
            raise TestbedError(
                f"probe in learner {name!r} failed (exit {child.returncode}): "
                f"{err.decode(errors='replace').strip()[-500:]}"
            )
        results[name] = json.loads(out.decode().strip().splitlines()[-1])
    return results


def measure_links(
    bed: Testbed,
    server: BlobServer,
    *,
    seconds: float = 1.5,
    names: list[str] | None = None,
    timeout: float = 60.0,
) -> dict[str, dict[str, float]]:
    """Each learner's measured download and upload rates, bytes/s, all learners at once.

    Each transfer is sized to last about `seconds` at the learner's cap, so slow and fast links
    are measured over the same time.
    """
    chosen = names or [lr.name for lr in bed.learners]
    caps = {lr.name: lr.profile for lr in bed.learners}
    args = {
        n: [
            "link",
            f"{server.base_url}/blob?bytes={int(caps[n]['down_rate'] * seconds)}",
            f"{server.base_url}/sink",
            str(int(caps[n]["up_rate"] * seconds)),
        ]
        for n in chosen
    }
    answers = _probe(bed, chosen, args, timeout)
    return {n: {"down": answers[n]["down"], "up": answers[n]["up"]} for n in chosen}


def measure_compute(
    bed: Testbed, *, seconds: float = 1.5, names: list[str] | None = None, timeout: float = 60.0
) -> dict[str, float]:
    """Each learner's compute rate under its CPU quota (probe work units per second), at once."""
    found = probe_compute(bed, seconds=seconds, names=names, timeout=timeout)
    return {n: r["rate"] for n, r in found.items()}


def probe_compute(
    bed: Testbed, *, seconds: float = 1.5, names: list[str] | None = None, timeout: float = 60.0
) -> dict[str, dict[str, float]]:
    """The compute probe's whole answer per learner: `rate` and `cpu_share` (CPU s per wall s)."""
    chosen = names or [lr.name for lr in bed.learners]
    args = {n: ["compute", "--seconds", str(seconds)] for n in chosen}
    return _probe(bed, chosen, args, timeout)


class TestbedFleet:
    """The testbed behind the same surface as `orchestrator.local.fleet.LocalFleet`.

    A benchmark written against LocalFleet (`with fleet: fleet.start(); fleet.client()`) runs on
    the testbed by constructing this instead: `TestbedFleet("fleet.yaml")`. The fleet file must
    let the testbed start the orchestrator and the agents (the defaults).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self, fleet: str | Path | dict[str, Any] | Fleet, *, state_root: Path | None = None
    ) -> None:
        self.spec = fleet if isinstance(fleet, Fleet) else load_fleet(fleet)
        if not (self.spec.orchestrator.start and self.spec.agent.start):
            raise TestbedError(
                "TestbedFleet needs a fleet whose orchestrator and agents the "
                "testbed starts (orchestrator.start and agent.start true)"
            )
        self.state_root = state_root
        self.bed: Testbed | None = None

    def __enter__(self) -> TestbedFleet:
        self.bed = Testbed.up(self.spec, state_root=self.state_root)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bed is not None:
            self.bed.down()
            self.bed = None

    @property
    def url(self) -> str:
        """The orchestrator's URL (on the bridge address)."""
        return self._bed().url

    def _bed(self) -> Testbed:
        if self.bed is None:
            raise TestbedError("use TestbedFleet in a `with` block before calling it")
        return self.bed

    def client(self) -> Any:
        """An `orchestrator.client.Client` with the admin token."""
        from orchestrator.client import Client

        bed = self._bed()
        token = (bed.state_dir / "orchestrator" / "admin_token").read_text().strip()
        return Client(bed.url, token)

    def start(self, timeout_s: float = 180.0) -> None:
        """Wait until every learner's agent has enrolled and is alive (seconds)."""
        import time

        names = {lr.name for lr in self._bed().learners}
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while True:
                alive = {lr["name"] for lr in client.learners() if lr["alive"]}
                if names <= alive:
                    return
                if time.monotonic() > deadline:
                    raise TestbedError(
                        f"learners {sorted(names - alive)} did not enroll within "
                        f"{timeout_s:.0f} s; "
                        f"see their logs in {self._bed().state_dir / 'logs'}"
                    )
                time.sleep(0.5)
