"""RPC overhead: Plexus rpc vs a raw httpx POST to bare Starlette (floor) vs grpcio (peer).

Run:  .venv/bin/python benchmarks/rpc_overhead.py [--quick] [--latency-only] [--baseline JSON]

Every server runs in its own process on 127.0.0.1 so its memory can be measured apart from
the client. Measures the no-op call latency (p50/p99, each Plexus calling style and mode, over
plain HTTP and over TLS with a self-signed certificate made for the run, each beside its own
httpx floor), upload throughput for 1, 10 and 100 MB tensor payloads (bytes/s), and the peak
RSS increment of client and server around a 100 MB call (fresh processes for each system).
Writes benchmarks/results/rpc_overhead.json and .png and prints a one-line summary last.
`--baseline JSON` puts an earlier run's no-op ratios beside this run's (e.g. a run of this
script with PYTHONPATH pointing at an older copy of rpc/, made just before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from outdir import add_out_dir, results_dir

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MB = 1_000_000
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


def rss_now() -> int:
    """Current resident set size of this process (bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    """Peak resident set size since the last reset_peak() (bytes, VmHWM).

    Not ru_maxrss: Linux carries that across fork+exec, so a child would report its parent's
    peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> int:
    """Reset the peak RSS to the current RSS (Linux clear_refs "5"); returns it (bytes)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_now()


def payload(nbytes: int) -> np.ndarray[Any, Any]:
    """A float32 tensor of `nbytes` bytes (random, so nothing can compress it)."""
    return np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)


# ------------------------------------------------------------------------------ servers

# Where the TLS servers find cert.pem, key.pem (the server's) and ca.pem (to trust callers'
# callback receivers); set by the benchmark process for its server subprocesses.
TLS_DIR_ENV = "RPC_BENCH_TLS_DIR"


def make_tls(out: Path) -> dict[str, str]:
    """A self-signed CA and a certificate for 127.0.0.1 under `out`; their paths."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": out / "ca.pem", "cert": out / "cert.pem", "key": out / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return {k: str(v) for k, v in paths.items()}


def _tls_files() -> tuple[str, str]:
    """(ssl_certfile, ssl_keyfile) of the TLS server kinds (from TLS_DIR_ENV)."""
    tls_dir = Path(os.environ[TLS_DIR_ENV])
    return str(tls_dir / "cert.pem"), str(tls_dir / "key.pem")


def _serve_plexus(tls: bool = False) -> int:
    """Our rpc.Worker with the benchmark's procedures; returns its port."""
    import rpc

    reg = rpc.Registry()

    @reg.procedure
    def noop() -> None:
        return None

    @reg.procedure
    def sink(x: Any) -> int:
        return 0

    # Async twins: no hop to the thread pool that sync procedures take.
    @reg.procedure
    async def anoop() -> None:
        return None

    @reg.procedure
    async def asink(x: Any) -> int:
        return 0

    @reg.procedure
    def rss(reset: bool = False) -> list[int]:
        return [reset_peak() if reset else rss_now(), rss_peak()]

    if not tls:
        return rpc.Worker(reg, max_body_bytes=1 << 31).start().port
    # As deployed: HTTPS, and duplex results posted to an HTTPS callback receiver.
    ca = str(Path(os.environ[TLS_DIR_ENV]) / "ca.pem")
    worker = rpc.Worker(reg, max_body_bytes=1 << 31, callback_verify=ca)
    cert, key = _tls_files()
    return worker.start(ssl_certfile=cert, ssl_keyfile=key).port


def _serve_floor(tls: bool = False) -> int:
    """A bare Starlette app on the same server thread (the floor); returns its port."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    import rpc

    async def sink(request: Request) -> Response:
        await request.body()
        return Response(b"0", media_type="application/octet-stream")

    async def rss(request: Request) -> Response:
        reset = request.query_params.get("reset") == "1"
        return JSONResponse([reset_peak() if reset else rss_now(), rss_peak()])

    app = Starlette(
        routes=[Route("/sink", sink, methods=["POST"]), Route("/rss", rss, methods=["GET"])]
    )
    if not tls:
        return rpc.ServerThread(app).start().port
    cert, key = _tls_files()
    return rpc.ServerThread(app, ssl_certfile=cert, ssl_keyfile=key).start().port


def _serve_grpc() -> int:
    """A generic gRPC server with raw-bytes handlers; returns its port."""
    from concurrent import futures

    import grpc

    def sink(request: bytes, context: Any) -> bytes:
        return b"0"

    def rss(request: bytes, context: Any) -> bytes:
        now = reset_peak() if request == b"reset" else rss_now()
        return json.dumps([now, rss_peak()]).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    handlers = {
        "Sink": grpc.unary_unary_rpc_method_handler(sink),
        "Rss": grpc.unary_unary_rpc_method_handler(rss),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench", handlers),))
    port: int = server.add_insecure_port("127.0.0.1:0")
    server.start()
    # The server lives as long as the process (it was a local of serve() before).
    _SERVERS.append(server)
    return port


_SERVERS: list[Any] = []


def serve(kind: str) -> None:
    """Run one server in this process, print its port, and exit when stdin closes."""
    starters: dict[str, Callable[[], int]] = {
        "plexus": _serve_plexus,
        "floor": _serve_floor,
        "grpc": _serve_grpc,
        "plexus-tls": lambda: _serve_plexus(tls=True),
        "floor-tls": lambda: _serve_floor(tls=True),
    }
    if kind not in starters:
        raise SystemExit(f"unknown server kind {kind!r}")
    port = starters[kind]()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()


class Server:
    """A server subprocess of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            raise SystemExit(f"{kind} server failed to start: {line}")
        self.port = int(line[1])
        scheme = "https" if kind.endswith("-tls") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


# ------------------------------------------------------------------------------ clients


class Clients:
    """Per-system callables for one server set: no-op call and upload of a body."""

    def __init__(self, servers: dict[str, Server]) -> None:
        import grpc
        import httpx

        import rpc

        self.rpc = rpc
        self.server_pids = {kind: server.proc.pid for kind, server in servers.items()}
        self.simplex = rpc.connect(servers["plexus"].url)
        self.duplex = rpc.connect(servers["plexus"].url, duplex=True)
        # timeout=None: with a finite timeout httpcore sends a large bytes body in partial
        # writes and re-slices (copies) the remainder after each, which slows the floor a lot.
        self.http = httpx.Client(timeout=None)
        self.http_default = httpx.Client()
        self.floor_url = servers["floor"].url + "/sink"
        self.channel = grpc.insecure_channel(f"127.0.0.1:{servers['grpc'].port}", GRPC_OPTIONS)
        self.grpc_sink = self.channel.unary_unary("/bench/Sink")
        self.grpc_rss = self.channel.unary_unary("/bench/Rss")
        self.plexus_rss = self.simplex.rss
        self.floor_rss_url = servers["floor"].url + "/rss"
        # The floor and the peer carry exactly the bytes Plexus puts on the wire for a no-op.
        self.noop_body = rpc.encode({"args": [], "kwargs": {}}).join()
        # TLS, as deployed: the worker's certificate is trusted through its CA; duplex results
        # come back to an HTTPS callback receiver (the worker trusts the same CA).
        tls_dir = Path(os.environ[TLS_DIR_ENV])
        self.tls_ca = str(tls_dir / "ca.pem")
        self.tls_receiver = rpc.CallbackReceiver().start(
            ssl_certfile=str(tls_dir / "cert.pem"), ssl_keyfile=str(tls_dir / "key.pem")
        )
        tls_url = servers["plexus-tls"].url
        self.simplex_tls = rpc.connect(tls_url, verify=self.tls_ca)
        self.duplex_tls = rpc.connect(
            tls_url, duplex=True, verify=self.tls_ca, callback=self.tls_receiver
        )
        self.tls_context = ssl.create_default_context(cafile=self.tls_ca)
        self.http_tls = httpx.Client(timeout=None, verify=self.tls_context)
        self.floor_tls_url = servers["floor-tls"].url + "/sink"

    def floor_post_tls(self, body: bytes) -> None:
        resp = self.http_tls.post(
            self.floor_tls_url, content=body, headers={"content-type": "application/octet-stream"}
        )
        assert resp.status_code == 200

    def floor_post_default(self, body: bytes) -> None:
        resp = self.http_default.post(
            self.floor_url, content=body, headers={"content-type": "application/octet-stream"}
        )
        assert resp.status_code == 200

    def floor_post(self, body: bytes) -> None:
        resp = self.http.post(
            self.floor_url, content=body, headers={"content-type": "application/octet-stream"}
        )
        assert resp.status_code == 200

    def floor_post_chunked(self, body: bytes) -> None:
        # The same bytes handed to httpx as 256 KiB memoryview slices with a Content-Length,
        # the way the Plexus client streams them.
        view = memoryview(body)
        step = 1 << 18
        chunks = (view[i : i + step] for i in range(0, len(body), step))
        resp = self.http.post(
            self.floor_url,
            content=chunks,  # type: ignore[arg-type]
            headers={"content-type": "application/octet-stream", "content-length": str(len(body))},
        )
        assert resp.status_code == 200

    def close(self) -> None:
        self.simplex.close()
        self.duplex.close()
        self.simplex_tls.close()
        self.duplex_tls.close()
        self.http_tls.close()
        self.tls_receiver.stop()
        self.http.close()
        self.http_default.close()
        self.channel.close()


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    """Run `fn` n times; per-call wall times (seconds)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def timed_async(make: Callable[[], Any], n: int) -> list[float]:
    """Await `make()` n times in one event loop; per-call wall times (seconds)."""

    async def run() -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await make()
            out.append(time.perf_counter() - t0)
        return out

    return asyncio.run(run())


def _latency_systems(
    c: Clients, async_http: dict[str, Any]
) -> dict[str, Callable[[int], list[float]]]:
    """Each latency row: a function that makes k no-op calls and returns their times."""
    import httpx

    async def floor_async() -> None:
        client = async_http.get("c")
        if client is None:
            client = async_http["c"] = httpx.AsyncClient()
        resp = await client.post(c.floor_url, content=c.noop_body)
        assert resp.status_code == 200

    async def floor_async_tls() -> None:
        client = async_http.get("tls")
        if client is None:
            client = async_http["tls"] = httpx.AsyncClient(verify=c.tls_context)
        resp = await client.post(c.floor_tls_url, content=c.noop_body)
        assert resp.status_code == 200

    systems: dict[str, Callable[[int], list[float]]] = {
        "plexus simplex blocking": lambda k: timed(c.simplex.noop, k),
        "plexus simplex handle": lambda k: timed(lambda: c.simplex.noop.start().join(), k),
        "plexus simplex acall": lambda k: timed_async(c.simplex.noop.acall, k),
        "plexus duplex blocking": lambda k: timed(c.duplex.noop, k),
        "plexus duplex handle": lambda k: timed(lambda: c.duplex.noop.start().join(), k),
        "plexus duplex acall": lambda k: timed_async(c.duplex.noop.acall, k),
        "plexus simplex blocking, async proc": lambda k: timed(c.simplex.anoop, k),
        "floor httpx sync": lambda k: timed(lambda: c.floor_post(c.noop_body), k),
        "floor httpx async": lambda k: timed_async(floor_async, k),
        "grpc unary": lambda k: timed(lambda: c.grpc_sink(c.noop_body), k),
        "plexus simplex blocking, TLS": lambda k: timed(c.simplex_tls.noop, k),
        "plexus simplex handle, TLS": lambda k: timed(lambda: c.simplex_tls.noop.start().join(), k),
        "plexus simplex acall, TLS": lambda k: timed_async(c.simplex_tls.noop.acall, k),
        "plexus duplex blocking, TLS": lambda k: timed(c.duplex_tls.noop, k),
        "plexus duplex handle, TLS": lambda k: timed(lambda: c.duplex_tls.noop.start().join(), k),
        "plexus duplex acall, TLS": lambda k: timed_async(c.duplex_tls.noop.acall, k),
        "floor httpx sync, TLS": lambda k: timed(lambda: c.floor_post_tls(c.noop_body), k),
        "floor httpx async, TLS": lambda k: timed_async(floor_async_tls, k),
    }
    return systems


def latency(c: Clients, n: int, rounds: int) -> dict[str, dict[str, float]]:
    """No-op latency per system (seconds), interleaved in rounds to share the noise."""
    async_http: dict[str, Any] = {}
    systems = _latency_systems(c, async_http)
    samples: dict[str, list[float]] = {name: [] for name in systems}
    # CPU seconds spent by the client process (with its callback receiver) and by the server
    # process: unlike wall time, barely moved by other jobs on a shared machine.
    cpu = {name: [0.0, 0.0] for name in systems}
    for fn in systems.values():
        fn(max(5, n // 20))  # warm up connections and code paths
    names = list(systems)
    for r in range(rounds):
        # Rotate the order every round: whoever runs right after another system's burst
        # would otherwise always pay for its leftovers (freed memory, busy server process).
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = systems[name]
            pid = c.server_pids[_server_of(name)]
            c0, s0 = time.process_time(), proc_cpu_s(pid)
            samples[name] += fn(n // rounds)
            cpu[name][0] += time.process_time() - c0
            cpu[name][1] += proc_cpu_s(pid) - s0
            async_http.clear()  # an AsyncClient belongs to the loop that made it
    out = {}
    for name, s in samples.items():
        s.sort()
        out[name] = {
            "p50_s": statistics.median(s),
            "p99_s": s[min(len(s) - 1, int(0.99 * len(s)))],
            "n": len(s),
            "client_cpu_s_per_call": cpu[name][0] / len(s),
            "server_cpu_s_per_call": cpu[name][1] / len(s),
        }
    return out


def _server_of(name: str) -> str:
    """The server kind a latency row talks to."""
    kind = name.split()[0]
    return kind + ("-tls" if name.endswith(", TLS") else "")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(c: Clients, sizes_mb: list[int], reps: dict[int, int]) -> dict[str, Any]:
    """Upload throughput (bytes/s, median over repetitions) per system and payload size."""
    out: dict[str, Any] = {}
    for size in sizes_mb:
        arr = payload(size * MB)
        body = c.rpc.encode({"args": [arr], "kwargs": {}}).join()
        systems: dict[str, Callable[[], Any]] = {
            "plexus simplex": lambda arr=arr: c.simplex.sink(arr),  # type: ignore[misc]
            "plexus duplex": lambda arr=arr: c.duplex.sink(arr),  # type: ignore[misc]
            "plexus simplex, async proc": lambda arr=arr: c.simplex.asink(arr),  # type: ignore[misc]
            "floor httpx": lambda body=body: c.floor_post(body),  # type: ignore[misc]
            "floor httpx, 5 s timeout": lambda body=body: c.floor_post_default(body),  # type: ignore[misc]
            "floor httpx chunked": lambda body=body: c.floor_post_chunked(body),  # type: ignore[misc]
            "grpc unary": lambda body=body: c.grpc_sink(body),  # type: ignore[misc]
        }
        times: dict[str, list[float]] = {name: [] for name in systems}
        for fn in systems.values():
            fn()  # warm-up
        names = list(systems)
        for r in range(reps[size]):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name] += timed(systems[name], 1)
        out[str(size)] = {
            name: {
                "bytes": len(body),
                "median_s": statistics.median(t),
                "bytes_per_s": len(body) / statistics.median(t),
                # Other jobs on a shared machine only ever add time: the best repetition is
                # the least disturbed estimate of what the stack itself costs.
                "best_bytes_per_s": len(body) / min(t),
            }
            for name, t in times.items()
        }
        del arr, body
    return out


# ------------------------------------------------------------------------------ memory


def client_rss(kind: str, url: str, port: int, size_mb: int) -> None:
    """Fresh client process: one warm-up call, then one call carrying `size_mb` MB; prints
    its own and the server's RSS before and peak (bytes) as JSON."""
    arr_small = payload(1000)
    if kind == "plexus":
        import rpc

        remote = rpc.connect(url)
        remote.sink(arr_small)
        server_before = remote.rss(reset=True)
        before = reset_peak()
        remote.sink(payload(size_mb * MB))
        server_after = remote.rss()
    elif kind == "floor":
        import httpx

        import rpc

        client = httpx.Client(timeout=None)  # as the throughput floor: its fastest set-up
        client.post(url + "/sink", content=rpc.encode([arr_small]).join())
        server_before = client.get(url + "/rss?reset=1").json()
        before = reset_peak()
        body = rpc.encode({"args": [payload(size_mb * MB)], "kwargs": {}}).join()
        client.post(url + "/sink", content=body)
        del body
        server_after = client.get(url + "/rss").json()
    else:
        import grpc

        import rpc

        channel = grpc.insecure_channel(f"127.0.0.1:{port}", GRPC_OPTIONS)
        sink = channel.unary_unary("/bench/Sink")
        rss = channel.unary_unary("/bench/Rss")
        sink(rpc.encode([arr_small]).join())
        server_before = json.loads(rss(b"reset"))
        before = reset_peak()
        body = rpc.encode({"args": [payload(size_mb * MB)], "kwargs": {}}).join()
        sink(body)
        del body
        server_after = json.loads(rss(b""))
    print(
        json.dumps(
            {
                "client_before": before,
                "client_peak": rss_peak(),
                "server_before": server_before[0],
                "server_peak": server_after[1],
            }
        )
    )


def memory(size_mb: int) -> dict[str, Any]:
    """Peak RSS increments (bytes) of client and server for one `size_mb` MB call."""
    out = {}
    for kind in ("plexus", "floor", "grpc"):
        server = Server(kind)
        try:
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--client-rss",
                    kind,
                    server.url,
                    str(server.port),
                    str(size_mb),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            server.close()
        m = json.loads(res.stdout.strip().splitlines()[-1])
        m["client_increment"] = m["client_peak"] - m["client_before"]
        m["server_increment"] = m["server_peak"] - m["server_before"]
        out[kind] = m
    return out


# ------------------------------------------------------------------------------ report


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    lat = result["latency"]
    names = list(lat)
    y = np.arange(len(names))
    axes[0].barh(y - 0.2, [lat[n]["p50_s"] * 1e3 for n in names], 0.4, label="p50")
    axes[0].barh(y + 0.2, [lat[n]["p99_s"] * 1e3 for n in names], 0.4, label="p99", alpha=0.5)
    axes[0].set_yticks(y, names)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("no-op call latency (ms)")
    axes[0].legend()
    thr = result["throughput"]
    sizes = sorted(thr, key=int)
    for system in thr[sizes[0]]:
        axes[1].plot(
            [int(s) for s in sizes],
            [thr[s][system]["bytes_per_s"] / 1e6 for s in sizes],
            marker="o",
            label=system,
        )
    axes[1].set_xscale("log")
    axes[1].set_xlabel("payload (MB)")
    axes[1].set_ylabel("upload throughput (MB/s)")
    axes[1].legend()
    mem = result["memory"]
    kinds = list(mem)
    x = np.arange(len(kinds))
    axes[2].bar(x - 0.2, [mem[k]["client_increment"] / 1e6 for k in kinds], 0.4, label="client")
    axes[2].bar(x + 0.2, [mem[k]["server_increment"] / 1e6 for k in kinds], 0.4, label="server")
    axes[2].axhline(3 * result["memory_payload_mb"], color="k", ls="--", label="3 × payload")
    axes[2].set_xticks(x, kinds)
    axes[2].set_ylabel(f"peak RSS increment, {result['memory_payload_mb']} MB call (MB)")
    axes[2].legend()
    fig.suptitle("Plexus rpc vs raw httpx/Starlette floor vs grpcio (loopback)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _measure(
    quick: bool, latency_only: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Latency and throughput against the servers, then memory (the last two skipped with
    `latency_only`)."""
    n, rounds = (200, 4) if quick else (1000, 5)
    sizes = [1, 10, 100]
    reps = {1: 5, 10: 3, 100: 2} if quick else {1: 30, 10: 14, 100: 14}
    with tempfile.TemporaryDirectory(prefix="rpc-bench-tls-") as tls_dir:
        make_tls(Path(tls_dir))
        os.environ[TLS_DIR_ENV] = tls_dir
        kinds = ("plexus", "floor", "grpc", "plexus-tls", "floor-tls")
        servers = {kind: Server(kind) for kind in kinds}
        try:
            clients = Clients(servers)
            lat = latency(clients, n, rounds)
            thr = {} if latency_only else throughput(clients, sizes, reps)
            clients.close()
        finally:
            for s in servers.values():
                s.close()
    return lat, thr, {} if latency_only else memory(100)


def _floor_of(name: str) -> str:
    """The floor a Plexus latency row is judged against (same transport, sync or async)."""
    floor = "floor httpx async" if "acall" in name else "floor httpx sync"
    return floor + (", TLS" if name.endswith(", TLS") else "")


def _noop_ratios(lat: dict[str, Any]) -> dict[str, float]:
    """No-op p50 of each Plexus style over its floor."""
    return {
        name: v["p50_s"] / lat[_floor_of(name)]["p50_s"]
        for name, v in lat.items()
        if name.startswith("plexus")
    }


def _ratios(
    lat: dict[str, Any], thr: dict[str, Any]
) -> tuple[dict[str, float], float, float, float, float]:
    """No-op p50 of each plexus style over its floor; 100 MB throughput (mean and best of
    reps) over the floor and over gRPC."""
    ratios = _noop_ratios(lat)
    big = thr["100"]
    # Judged against the faster of the two floors (plain bytes, or the same bytes chunked).
    floor_bps = max(
        v["bytes_per_s"] for k, v in big.items() if k in ("floor httpx", "floor httpx chunked")
    )
    thr_vs_floor = big["plexus simplex"]["bytes_per_s"] / floor_bps
    thr_vs_grpc = big["plexus simplex"]["bytes_per_s"] / big["grpc unary"]["bytes_per_s"]
    floor_best = max(
        v["best_bytes_per_s"] for k, v in big.items() if k in ("floor httpx", "floor httpx chunked")
    )
    best_vs_floor = big["plexus simplex"]["best_bytes_per_s"] / floor_best
    best_vs_grpc = big["plexus simplex"]["best_bytes_per_s"] / big["grpc unary"]["best_bytes_per_s"]
    return ratios, thr_vs_floor, thr_vs_grpc, best_vs_floor, best_vs_grpc


def _noop_targets(ratios: dict[str, float]) -> dict[str, bool]:
    """The no-op goals (issue 17 section 5): simplex within 1.3x its floor in every style,
    duplex (two exchanges) within 2.2x; over plain HTTP and over TLS alike."""
    out = {}
    for transport, suffix in (("", False), ("tls_", True)):
        rows = {k: r for k, r in ratios.items() if k.endswith(", TLS") == suffix}
        out[f"noop_p50_{transport}all_simplex_styles_le_1.3x_floor"] = all(
            r <= 1.3 for k, r in rows.items() if "simplex" in k
        )
        out[f"noop_p50_{transport}all_duplex_styles_le_2.2x_floor"] = all(
            r <= 2.2 for k, r in rows.items() if "duplex" in k
        )
    return out


def _targets(ratios: dict[str, float], thr_vs_floor: float, thr_vs_grpc: float,
             best_vs_floor: float, best_vs_grpc: float, pm: dict[str, Any]) -> dict[str, bool]:
    payload_bytes = 100 * MB
    return {
        **_noop_targets(ratios),
        "throughput_100mb_ge_0.8x_floor": thr_vs_floor >= 0.8,
        "throughput_100mb_ge_1.5x_grpc": thr_vs_grpc >= 1.5,
        "throughput_100mb_best_ge_0.8x_floor": best_vs_floor >= 0.8,
        "throughput_100mb_best_ge_1.5x_grpc": best_vs_grpc >= 1.5,
        "client_peak_rss_increment_le_3x_payload": pm["client_increment"] <= 3 * payload_bytes,
        "server_peak_rss_increment_le_3x_payload": pm["server_increment"] <= 3 * payload_bytes,
    }


def _compare(lat: dict[str, Any], ratios: dict[str, float], baseline: Path) -> dict[str, Any]:
    """This run's no-op p50s and ratios beside a baseline run's (rows both runs have)."""
    base = json.loads(baseline.read_text())
    base_ratios = _noop_ratios(base["latency"])
    rows = {}
    print(f"{'no-op p50 (ms) / ratio to its floor':44s} {'baseline':>16s} {'this run':>16s}")
    for name in lat:
        if name not in base["latency"]:
            continue
        b, t = base["latency"][name]["p50_s"] * 1e3, lat[name]["p50_s"] * 1e3
        br, tr = base_ratios.get(name), ratios.get(name)
        rows[name] = {"baseline_p50_s": b / 1e3, "p50_s": t / 1e3,
                      "baseline_ratio": br, "ratio": tr}
        for key in ("client_cpu_s_per_call", "server_cpu_s_per_call"):
            if key in base["latency"][name]:
                rows[name]["baseline_" + key] = base["latency"][name][key]
                rows[name][key] = lat[name][key]
        bs = f"{b:6.2f}" + (f" {br:5.2f}x" if br is not None else "")
        ts = f"{t:6.2f}" + (f" {tr:5.2f}x" if tr is not None else "")
        row = rows[name]
        cpus = ""
        if "baseline_client_cpu_s_per_call" in row:
            before = row["baseline_client_cpu_s_per_call"] + row["baseline_server_cpu_s_per_call"]
            after = row["client_cpu_s_per_call"] + row["server_cpu_s_per_call"]
            cpus = f"   CPU/call {before * 1e6:5.0f} -> {after * 1e6:5.0f} us"
        print(f"{name:44s} {bs:>16s} {ts:>16s}{cpus}")
    return {
        "file": str(baseline),
        "command": base.get("command"),
        "loadavg_at_end": base.get("machine", {}).get("loadavg_at_end"),
        "rows": rows,
    }


def _latency_only(args: argparse.Namespace, out_dir: Path, lat: dict[str, Any]) -> None:
    ratios = _noop_ratios(lat)
    result: dict[str, Any] = {
        "command": "python benchmarks/rpc_overhead.py --latency-only"
        + (" --quick" if args.quick else ""),
        "rpc_package": _rpc_location(),
        "machine": _machine(),
        "latency": lat,
        "noop_p50_ratio_to_floor": ratios,
        "targets_met": _noop_targets(ratios),
    }
    if args.baseline is not None:
        result["baseline"] = _compare(lat, ratios, args.baseline)
    (out_dir / "rpc_overhead_latency.json").write_text(json.dumps(result, indent=2))
    _print_latency(lat, ratios)


def _print_latency(lat: dict[str, Any], ratios: dict[str, float]) -> None:
    for name, v in lat.items():
        r = ratios.get(name)
        print(f"  {name:40s} p50 {v['p50_s'] * 1e3:6.2f} ms  p99 {v['p99_s'] * 1e3:6.2f} ms"
              + (f"  {r:5.2f}x floor" if r is not None else "     -      ")
              + f"  CPU/call client {v['client_cpu_s_per_call'] * 1e6:5.0f} us"
              + f" server {v['server_cpu_s_per_call'] * 1e6:5.0f} us")


def _rpc_location() -> str:
    import rpc

    return str(Path(rpc.__file__).resolve().parent)


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        # The development machine is shared: the load average says how noisy this run was.
        "loadavg_at_end": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~1 minute)")
    parser.add_argument(
        "--latency-only", action="store_true",
        help="only the no-op latencies; writes rpc_overhead_latency.json",
    )
    parser.add_argument(
        "--baseline", type=Path, default=None,
        help="an earlier result JSON whose no-op ratios are printed and stored beside this run's",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client-rss", nargs=4, help=argparse.SUPPRESS)
    add_out_dir(parser)
    args = parser.parse_args()
    out_dir = results_dir(args)
    if args.serve:
        serve(args.serve)
        return
    if args.client_rss:
        kind, url, port, size = args.client_rss
        client_rss(kind, url, int(port), int(size))
        return

    lat, thr, mem = _measure(args.quick, args.latency_only)
    if args.latency_only:
        _latency_only(args, out_dir, lat)
        return

    _full(args, out_dir, lat, thr, mem)


def _full(
    args: argparse.Namespace,
    out_dir: Path,
    lat: dict[str, Any],
    thr: dict[str, Any],
    mem: dict[str, Any],
) -> None:
    """Write and print the result of a full run."""
    ratios, thr_vs_floor, thr_vs_grpc, best_vs_floor, best_vs_grpc = _ratios(lat, thr)
    big = thr["100"]
    pm = mem["plexus"]
    targets = _targets(ratios, thr_vs_floor, thr_vs_grpc, best_vs_floor, best_vs_grpc, pm)
    result = {
        "command": "python benchmarks/rpc_overhead.py" + (" --quick" if args.quick else ""),
        "rpc_package": _rpc_location(),
        "machine": _machine(),
        "latency": lat,
        "noop_p50_ratio_to_floor": ratios,
        "throughput": thr,
        "throughput_100mb_ratio_to_floor": thr_vs_floor,
        "throughput_100mb_ratio_to_grpc": thr_vs_grpc,
        "throughput_100mb_best_ratio_to_floor": best_vs_floor,
        "throughput_100mb_best_ratio_to_grpc": best_vs_grpc,
        "memory_payload_mb": 100,
        "memory": mem,
        "targets_met": targets,
    }
    if args.baseline is not None:
        result["baseline"] = _compare(lat, ratios, args.baseline)
    (out_dir / "rpc_overhead.json").write_text(json.dumps(result, indent=2))
    plot(result, out_dir / "rpc_overhead.png")
    _print_latency(lat, ratios)
    print(
        f"rpc_overhead: no-op p50 {lat['plexus simplex blocking']['p50_s'] * 1e3:.2f} ms = "
        f"{ratios['plexus simplex blocking']:.2f}x floor (duplex "
        f"{ratios['plexus duplex blocking']:.2f}x); 100 MB "
        f"{big['plexus simplex']['bytes_per_s'] / 1e6:.0f} MB/s = {thr_vs_floor:.2f}x floor, "
        f"{thr_vs_grpc:.2f}x gRPC (best of reps {best_vs_floor:.2f}x, {best_vs_grpc:.2f}x); "
        f"peak RSS +{pm['client_increment'] / 1e6:.0f} MB client, "
        f"+{pm['server_increment'] / 1e6:.0f} MB server; targets met "
        f"{sum(targets.values())}/{len(targets)}"
    )


if __name__ == "__main__":
    main()
