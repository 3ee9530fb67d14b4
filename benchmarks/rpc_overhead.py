"""RPC overhead: Plexus rpc vs a raw httpx POST to bare Starlette (floor) vs grpcio (peer).

Run:  .venv/bin/python benchmarks/rpc_overhead.py [--quick]

Every server runs in its own process on 127.0.0.1 so its memory can be measured apart from
the client. Measures the no-op call latency (p50/p99, each Plexus calling style and mode),
upload throughput for 1, 10 and 100 MB tensor payloads (bytes/s), and the peak RSS increment of
client and server around a 100 MB call (fresh processes for each system). Writes
benchmarks/results/rpc_overhead.json and .png and prints a one-line summary last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
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


def _serve_plexus() -> int:
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

    return rpc.Worker(reg, max_body_bytes=1 << 31).start().port


def _serve_floor() -> int:
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
    return rpc.ServerThread(app).start().port


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
    starters = {"plexus": _serve_plexus, "floor": _serve_floor, "grpc": _serve_grpc}
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
        self.url = f"http://127.0.0.1:{self.port}"

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


def latency(c: Clients, n: int, rounds: int) -> dict[str, dict[str, float]]:
    """No-op latency per system (seconds), interleaved in rounds to share the noise."""
    import httpx

    async_http: dict[str, httpx.AsyncClient] = {}

    async def floor_async() -> None:
        client = async_http.get("c")
        if client is None:
            client = async_http["c"] = httpx.AsyncClient()
        resp = await client.post(c.floor_url, content=c.noop_body)
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
    }
    samples: dict[str, list[float]] = {name: [] for name in systems}
    for fn in systems.values():
        fn(max(5, n // 20))  # warm up connections and code paths
    names = list(systems)
    for r in range(rounds):
        # Rotate the order every round: whoever runs right after another system's burst
        # would otherwise always pay for its leftovers (freed memory, busy server process).
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = systems[name]
            samples[name] += fn(n // rounds)
            async_http.clear()  # an AsyncClient belongs to the loop that made it
    out = {}
    for name, s in samples.items():
        s.sort()
        out[name] = {
            "p50_s": statistics.median(s),
            "p99_s": s[min(len(s) - 1, int(0.99 * len(s)))],
            "n": len(s),
        }
    return out


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


def _measure(quick: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Latency and throughput against the three servers, then memory."""
    n, rounds = (200, 4) if quick else (1000, 5)
    sizes = [1, 10, 100]
    reps = {1: 5, 10: 3, 100: 2} if quick else {1: 30, 10: 14, 100: 14}
    servers = {kind: Server(kind) for kind in ("plexus", "floor", "grpc")}
    try:
        clients = Clients(servers)
        lat = latency(clients, n, rounds)
        thr = throughput(clients, sizes, reps)
        clients.close()
    finally:
        for s in servers.values():
            s.close()
    return lat, thr, memory(100)


def _ratios(
    lat: dict[str, Any], thr: dict[str, Any]
) -> tuple[dict[str, float], float, float, float, float]:
    """No-op p50 of each plexus style over its floor; 100 MB throughput (mean and best of
    reps) over the floor and over gRPC."""
    floor_p50 = lat["floor httpx sync"]["p50_s"]
    ratios = {
        name: v["p50_s"] / (lat["floor httpx async"]["p50_s"] if "acall" in name else floor_p50)
        for name, v in lat.items()
        if name.startswith("plexus")
    }
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


def _targets(ratios: dict[str, float], thr_vs_floor: float, thr_vs_grpc: float,
             best_vs_floor: float, best_vs_grpc: float, pm: dict[str, Any]) -> dict[str, bool]:
    payload_bytes = 100 * MB
    return {
        "noop_p50_simplex_blocking_le_1.5x_floor": ratios["plexus simplex blocking"] <= 1.5,
        "noop_p50_all_simplex_styles_le_1.5x_floor": all(
            r <= 1.5 for k, r in ratios.items() if "simplex" in k
        ),
        "noop_p50_all_styles_le_1.5x_floor": all(r <= 1.5 for r in ratios.values()),
        "throughput_100mb_ge_0.8x_floor": thr_vs_floor >= 0.8,
        "throughput_100mb_ge_1.5x_grpc": thr_vs_grpc >= 1.5,
        "throughput_100mb_best_ge_0.8x_floor": best_vs_floor >= 0.8,
        "throughput_100mb_best_ge_1.5x_grpc": best_vs_grpc >= 1.5,
        "client_peak_rss_increment_le_3x_payload": pm["client_increment"] <= 3 * payload_bytes,
        "server_peak_rss_increment_le_3x_payload": pm["server_increment"] <= 3 * payload_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~1 minute)")
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

    lat, thr, mem = _measure(args.quick)

    ratios, thr_vs_floor, thr_vs_grpc, best_vs_floor, best_vs_grpc = _ratios(lat, thr)
    big = thr["100"]
    pm = mem["plexus"]
    targets = _targets(ratios, thr_vs_floor, thr_vs_grpc, best_vs_floor, best_vs_grpc, pm)
    result = {
        "command": "python benchmarks/rpc_overhead.py" + (" --quick" if args.quick else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            # The development machine is shared: the load average says how noisy this run was.
            "loadavg_at_end": os.getloadavg(),
        },
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
    (out_dir / "rpc_overhead.json").write_text(json.dumps(result, indent=2))
    plot(result, out_dir / "rpc_overhead.png")
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
