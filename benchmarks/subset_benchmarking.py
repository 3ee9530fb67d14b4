"""Subset benchmarking vs FLOPS (thesis figs. 3.2 and 3.3) and the idle agent's memory.

For benchmark sizes n = 2..10 shards of 500 MNIST samples, each repetition measures
  * SB: download n shards from a shard server (b_k) and train a dummy TwoNN one pass over them
    (c_k), with the agent's own code (learner_agent.benchmarking);
  * FLOPS: 100 products of 512×512 matrices (thesis 3.4.1) and a FLOP count of TwoNN training;
  * the truth: the time to train a fresh TwoNN one pass over T ∈ {15, 30, 60, 120} shards and
    the time to download 60 shards,
and reports |predicted − measured| / measured (thesis 3.4) as mean and 95 % interval over the
repetitions, the share of predictions within ±5 % and ±10 % (as nn-Meter and LitePred report
predictors), and beside them the **floor**: each truth is measured twice per repetition and one
run taken as the prediction of the other, the error no predictor on this machine can beat.
Training is timed twice over: by the wall clock (what a deadline sees) and by the thread's
CPU time (what the shared machine's other jobs disturb least). Order inside a
repetition is shuffled so slow spells of the machine do not always hit the same measurement.

The shard server is a separate process (as the orchestrator is). Downloads run over loopback
and, when run as root with `ip` and `tc`, also over a veth link into a private network
namespace capped with a tbf qdisc (`--cap-rate`, bytes/s). A last part starts
`plexus agent run` against the server and reads the agent's resident memory.

    .venv/bin/python benchmarks/subset_benchmarking.py            # 20 repetitions
    .venv/bin/python benchmarks/subset_benchmarking.py --quick    # 3 repetitions, fewer sizes
    sudo .venv/bin/python benchmarks/subset_benchmarking.py \
        --testbed deploy/testbed/fleets/thesis-ch3.yaml           # on the emulated testbed

With `--testbed FLEET.yaml` (root) SB runs inside every learner of the emulated testbed
(docs/testbed.md), one learner at a time, against shards served from the bridge; the truth is a
pass over 120 shards (desktop, Jetson) or 15 (Pis) and a download of 60 or 15 shards, as in
`benchmarks/testbed_reproduce.py`. Sizes 2, 4, 6, 8 and 3 repetitions by default (`--quick`:
2, 4, one repetition, a quarter of the truth); writes
benchmarks/results/testbed_subset_benchmarking.json and .png.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from outdir import add_out_dir, results_dir

from deploy.testbed.bench import add_testbed_option

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARD = 500  # samples per shard (thesis 3.4.1)
NETNS = "sbbench"  # private namespace of the capped link
HOST_IF, NS_IF = "sbbench-h", "sbbench-n"
HOST_IP, NS_IP = "10.213.7.1", "10.213.7.2"


# -- the shard server (its own process): shards, enrolment, heartbeats -----------------------
def serve(directory: Path, host: str, port: int) -> None:
    """Serve `directory/shard-{k}` as `/v1/tasks/1/shards/{k}` plus enroll/heartbeat."""
    shards = [
        p.read_bytes()
        for p in sorted(directory.glob("shard-*"), key=lambda p: int(p.name.split("-")[1]))
    ]
    state: dict[str, Any] = {"tokens": {}, "endpoint": None}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) == 5 and parts[:2] == ["v1", "tasks"] and parts[3] == "shards":
                self._send(200, shards[int(parts[4]) % len(shards)], "application/octet-stream")
            elif self.path == "/state":
                with lock:
                    self._send(200, json.dumps(state).encode())
            else:
                self._send(404, b'{"error": "not_found", "detail": "no such route"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/v1/learners/enroll":
                token = secrets.token_hex(8)
                with lock:
                    state["tokens"][body["name"]] = token
                    state["endpoint"] = body["endpoint"]
                answer = {
                    "learner_id": 1,
                    "name": body["name"],
                    "token": token,
                    "relay_url": None,
                    "heartbeat_interval_s": 1.0,
                }
                self._send(201, json.dumps(answer).encode())
            else:
                self._send(200, b'{"ok": true}')

    ThreadingHTTPServer((host, port), Handler).serve_forever()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout_s: float = 60.0) -> None:
    import httpx

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/state", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"shard server at {url} did not come up in {timeout_s} s")


@contextmanager
def shard_server(shards: list[bytes], netns: str | None = None) -> Iterator[str]:
    """Run the shard server in a child process (inside `netns` when given); yield its URL."""
    with tempfile.TemporaryDirectory() as tmp:
        for k, payload in enumerate(shards):
            (Path(tmp) / f"shard-{k}").write_bytes(payload)
        host, port = (NS_IP, 8080) if netns else ("127.0.0.1", _free_port())
        prefix = ["ip", "netns", "exec", netns] if netns else []
        proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                __file__,
                "--serve",
                tmp,
                "--host",
                host,
                "--port",
                str(port),
            ],
            cwd=ROOT,
        )
        url = f"http://{host}:{port}"
        try:
            _wait_http(url)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


@contextmanager
def capped_link(rate: float) -> Iterator[None]:
    """A veth pair into namespace NETNS; the server's side sends at most `rate` bytes/s."""
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, timeout=20)
    try:
        _sh("ip", "netns", "add", NETNS)
        _sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        _sh("ip", "link", "set", NS_IF, "netns", NETNS)
        _sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        _sh("ip", "link", "set", HOST_IF, "up")
        ns = ("ip", "netns", "exec", NETNS)
        _sh(*ns, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
        _sh(*ns, "ip", "link", "set", NS_IF, "up")
        _sh(*ns, "ip", "link", "set", "lo", "up")
        bits = int(rate * 8)
        _sh(
            *ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            NS_IF,
            "root",
            "tbf",
            "rate",
            f"{bits}bit",
            "burst",
            "64kb",
            "latency",
            "100ms",
        )
        yield
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True, timeout=20)


def can_cap() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("ip")) and bool(shutil.which("tc"))


# -- statistics -------------------------------------------------------------------------------
def interval(values: list[float]) -> dict[str, float]:
    """Mean and 95 % confidence half-width (Student t) of `values`."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "ci95": float("nan"), "n": n}
    try:
        from scipy.stats import t

        q = float(t.ppf(0.975, n - 1))
    except ImportError:
        q = 1.96
    return {"mean": mean, "ci95": q * statistics.stdev(values) / math.sqrt(n), "n": n}


def err(pred: float, true: float) -> float:
    """Benchmark error of thesis 3.4: |predicted − measured| / measured."""
    return abs(pred - true) / true


# -- the experiment ---------------------------------------------------------------------------
def make_shards(seed: int) -> tuple[Any, list[Any], list[bytes]]:
    from plexus.datasets import load_dataset
    from plexus.shards import encode_shard, partition
    from plexus.spec import load_spec

    spec = load_spec(
        {
            "model": "twonn",
            "dataset": {"name": "mnist5k"},
            "partition": {"shard_size": SHARD},
            "training": {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "iterations": 1},
        }
    )
    data = load_dataset(spec.dataset, seed=seed)
    idx = partition(data.train_y, spec.partition, seed)
    payloads = [
        encode_shard(data.train_x[i], data.train_y[i], {"shard": k}) for k, i in enumerate(idx)
    ]
    return spec, [(data.train_x[i], data.train_y[i]) for i in idx], payloads


def _fetch_shard(client: Any, k: int) -> bytes:
    """Shard `k` of task 1 through `client` (one of the SB links)."""
    data: bytes = client.shard(1, k)
    return data


@dataclass
class _PredictionBench:
    """What every repetition of `run_prediction` shares: data, links and clocks."""

    spec: Any
    parts: list[Any]
    big_x: Any
    big_y: Any
    clients: dict[str, Any]
    rng: random.Random
    clocks: dict[str, Callable[[], float]] = field(
        default_factory=lambda: {"wall": time.perf_counter, "cpu": time.thread_time}
    )
    download_target: int = 60


def _twonn_pass(bench: _PredictionBench, shards: int, seed: int | None = None) -> None:
    """Train a fresh TwoNN one pass over the first `shards` shards of the workload."""
    from plexus.models import build_model
    from plexus.training import train

    model = build_model("twonn", (1, 28, 28), 10)
    x, y = bench.big_x[: shards * SHARD], bench.big_y[: shards * SHARD]
    if seed is None:
        train(model, x, y, passes=1, batch_size=32, optimizer="sgd", lr=0.1)
    else:
        train(model, x, y, passes=1, batch_size=32, optimizer="sgd", lr=0.1, seed=seed)


def _sb_entry(bench: _PredictionBench, n: int) -> dict[str, Any]:
    """SB at n shards: bandwidth over every link, then compute rate by every clock."""
    from learner_agent.benchmarking import download_shards, measure

    ids = [bench.rng.randrange(len(bench.parts)) for _ in range(n)]
    entry: dict[str, Any] = {"bandwidth": {}}
    payloads: list[bytes] = []
    for name, client in bench.clients.items():
        got, seconds = download_shards(functools.partial(_fetch_shard, client), ids)
        entry["bandwidth"][name] = sum(map(len, got)) / sum(seconds)
        entry["shard_bytes"] = sum(map(len, got)) / n
        payloads = got
    for name, clock in bench.clocks.items():
        entry[f"compute_{name}"] = measure(bench.spec, payloads, [1.0] * n, clock=clock).compute
    return entry


def _one_repetition(
    bench: _PredictionBench, rep: int, sizes: list[int], targets: list[int]
) -> dict[str, Any]:
    """Every measurement once, in a shuffled order."""
    from learner_agent.benchmarking import download_shards, flops_benchmark

    jobs: list[tuple[str, Any]] = (
        [("sb", n) for n in sizes]
        + [("train", t) for t in targets]
        + [("retrain", t) for t in targets]  # the floor: one truth run predicting another
        + [("flops", 0)]
        + [("download", name) for name in bench.clients]
    )
    bench.rng.shuffle(jobs)
    rec: dict[str, Any] = {"sb": {}, "train_s": {}, "retrain_s": {}, "flops": {},
                           "download_s": {}}
    for kind, arg in jobs:
        if kind == "sb":
            rec["sb"][arg] = _sb_entry(bench, arg)
        elif kind in ("train", "retrain"):
            w0, c0 = time.perf_counter(), time.thread_time()
            _twonn_pass(bench, arg, seed=rep)
            rec[f"{kind}_s"][arg] = {
                "wall": time.perf_counter() - w0,
                "cpu": time.thread_time() - c0,
            }
        elif kind == "flops":
            for name, clock in bench.clocks.items():
                rec["flops"][name] = flops_benchmark(512, 100, clock=clock)
        else:
            client = bench.clients[arg]
            _, seconds = download_shards(
                functools.partial(_fetch_shard, client), range(bench.download_target)
            )
            rec["download_s"][arg] = sum(seconds)
    return rec


def _print_repetition(
    rec: dict[str, Any], rep: int, reps: int, sizes: list[int], targets: list[int]
) -> None:
    last = targets[-1]
    print(
        f"rep {rep + 1}/{reps}: c_k(n={sizes[-1]}) "
        f"{rec['sb'][sizes[-1]]['compute_wall']:.0f} samples/s, "
        f"{last} shards {rec['train_s'][last]['wall']:.2f} s wall "
        f"{rec['train_s'][last]['cpu']:.2f} s cpu, "
        f"{rec['flops']['wall'] / 1e9:.1f} GFLOPS, 60 shards "
        + ", ".join(f"{k} {v:.2f} s" for k, v in rec["download_s"].items()),
        flush=True,
    )


def _training_errors(
    records: list[dict[str, Any]], clock: str, n: int, targets: list[int], per_sample: float
) -> dict[str, Any]:
    """SB at n shards and FLOPS against the measured training time, by one clock."""
    from learner_agent.benchmarking import flops_predict_train_s

    sb_err, fl_err = [], []
    for rec in records:
        for t in targets:
            true = rec["train_s"][t][clock]
            sb_err.append(err(t * SHARD / rec["sb"][n][f"compute_{clock}"], true))
            fl_err.append(
                err(flops_predict_train_s(rec["flops"][clock], per_sample, t * SHARD), true)
            )
    # Bias: the predicted mean time against the measured mean time. The per-repetition
    # error also holds the machine's speed changing between the benchmark and the
    # measured run; the bias is what SB itself gets wrong on average.
    bias = []
    for t in targets:
        true = statistics.fmean(rec["train_s"][t][clock] for rec in records)
        pred = statistics.fmean(t * SHARD / rec["sb"][n][f"compute_{clock}"] for rec in records)
        bias.append(err(pred, true))
    # The floor (as prediction studies report it beside the error): a truth run of the same
    # size, measured in the same repetition, used as the prediction of the other one.
    floor = [err(rec["retrain_s"][t][clock], rec["train_s"][t][clock])
             for rec in records for t in targets if t in rec.get("retrain_s", {})]
    sb_i, fl_i = interval(sb_err), interval(fl_err)
    floor_i = interval(floor) if floor else None
    return {
        "sb_train_error": sb_i,
        "sb_bias": statistics.fmean(bias),
        "flops_train_error": fl_i,
        "error_reduction": 1.0 - sb_i["mean"] / fl_i["mean"],
        "sb_within": within(sb_err),
        "flops_within": within(fl_err),
        "floor": floor_i,
        "floor_within": within(floor) if floor else None,
        "sb_over_floor": sb_i["mean"] / floor_i["mean"] if floor_i and floor_i["mean"] else None,
    }


def within(errors: list[float]) -> dict[str, float]:
    """Share of predictions within ±5 % and ±10 % of the measurement (nn-Meter's accuracy)."""
    return {f"{int(100 * b)}%": sum(e <= b for e in errors) / len(errors) for b in (0.05, 0.10)}


def _summarise_prediction(
    records: list[dict[str, Any]],
    bench: _PredictionBench,
    sizes: list[int],
    targets: list[int],
    per_sample: float,
) -> dict[str, Any]:
    links = list(bench.clients)
    summary: dict[str, Any] = {
        "sizes": sizes,
        "targets": targets,
        "links": links,
        "wall": {},
        "cpu": {},
        "download": {k: {} for k in links},
    }
    for name in bench.clocks:
        for n in sizes:
            summary[name][n] = _training_errors(records, name, n, targets, per_sample)
    for link in links:
        for n in sizes:
            dl = [
                err(
                    bench.download_target
                    * rec["sb"][n]["shard_bytes"]
                    / rec["sb"][n]["bandwidth"][link],
                    rec["download_s"][link],
                )
                for rec in records
            ]
            summary["download"][link][n] = interval(dl)
    summary["flops_per_sample"] = per_sample
    summary["records"] = records
    return summary


def run_prediction(
    reps: int, sizes: list[int], targets: list[int], seed: int, links: dict[str, str]
) -> dict[str, Any]:
    from learner_agent.benchmarking import download_shards, training_flops_per_sample
    from learner_agent.client import OrchestratorClient
    from plexus.models import build_model

    spec, parts, _ = make_shards(seed)
    # MNIST-5k gives 8 real shards; larger workloads cycle through them, which changes
    # nothing about the time a pass takes.
    bench = _PredictionBench(
        spec=spec,
        parts=parts,
        big_x=np.concatenate([parts[k % len(parts)][0] for k in range(max(targets))]),
        big_y=np.concatenate([parts[k % len(parts)][1] for k in range(max(targets))]),
        clients={name: OrchestratorClient(url, timeout_s=120) for name, url in links.items()},
        rng=random.Random(seed),
    )
    per_sample = training_flops_per_sample(build_model("twonn", (1, 28, 28), 10), (1, 28, 28))
    for client in bench.clients.values():
        download_shards(functools.partial(_fetch_shard, client), range(2))  # connect before timing
    # One untimed pass first, so no repetition pays the process's one-off start-up costs.
    _twonn_pass(bench, 4)

    records: list[dict[str, Any]] = []
    for rep in range(reps):
        rec = _one_repetition(bench, rep, sizes, targets)
        records.append(rec)
        _print_repetition(rec, rep, reps, sizes, targets)
    for client in bench.clients.values():
        client.close()
    return _summarise_prediction(records, bench, sizes, targets, per_sample)


# -- agent memory -----------------------------------------------------------------------------
def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_agent_rss(settle_s: float = 3.0) -> dict[str, Any]:
    """RSS (bytes) of `plexus agent run`: idle, idle with --preload, after one benchmark call."""
    import httpx

    import rpc

    _, _, payloads = make_shards(0)
    out: dict[str, Any] = {}
    task = {
        "model": "twonn",
        "dataset": {"name": "mnist5k"},
        "partition": {"shard_size": SHARD},
        "sync": {"benchmark_shards": 2},
    }
    for label, extra in (("idle", []), ("idle_preload", ["--preload"])):
        with shard_server(payloads) as url:
            cmd = [
                sys.executable,
                "-m",
                "plexus.cli",
                "agent",
                "run",
                "--orchestrator",
                url,
                "--join-token",
                "x",
                "--name",
                "rss",
                "--host",
                "127.0.0.1",
                *extra,
            ]
            proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                end = time.monotonic() + 120
                state: dict[str, Any] = {}
                while time.monotonic() < end and not state.get("endpoint"):
                    state = httpx.get(url + "/state").json()
                    time.sleep(0.1)
                if not state.get("endpoint"):
                    raise RuntimeError("agent did not enroll within 120 s")
                time.sleep(settle_s)  # a few heartbeats, so the idle working set is reached
                out[label + "_bytes"] = _rss(proc.pid)
                if label == "idle":
                    token = state["tokens"]["rss"]
                    with rpc.connect(state["endpoint"], token=token, timeout=120) as agent:
                        agent.benchmark(task, 1, None)
                    out["after_benchmark_bytes"] = _rss(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    return out


# -- plotting ---------------------------------------------------------------------------------
def _plot_floor(ax: Any, rows: list[dict[str, Any]]) -> None:
    if rows[0].get("floor"):
        ax.axhline(100 * rows[0]["floor"]["mean"], color="black", ls=":",
                   label="floor (truth run predicting truth run)")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = summary["sizes"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    span = f"{min(summary['targets'])}–{max(summary['targets'])} shards"
    for ax, name, title in (
        (axes[0], "wall", f"wall clock (1-min load {summary.get('load_1m', float('nan')):.1f})"),
        (axes[1], "cpu", "thread CPU time"),
    ):
        rows = [summary[name][n] for n in sizes]
        for key, label, colour in (
            ("sb_train_error", "SB", "tab:blue"),
            ("flops_train_error", "FLOPS", "tab:red"),
        ):
            ax.errorbar(
                sizes,
                [100 * r[key]["mean"] for r in rows],
                yerr=[100 * r[key]["ci95"] for r in rows],
                marker="o",
                capsize=3,
                label=label,
                color=colour,
            )
        _plot_floor(ax, rows)
        ax.plot(
            sizes,
            [100 * r["sb_bias"] for r in rows],
            ls="--",
            color="tab:blue",
            alpha=0.6,
            label="SB bias (mean vs mean)",
        )
        ax.set_yscale("log")
        ax.set_xlabel("benchmark size (shards of 500)")
        ax.set_ylabel("training-time prediction error (%)")
        ax.set_title(f"TwoNN on {span}, {title}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    for link, colour in zip(summary["links"], ("tab:green", "tab:purple"), strict=False):
        rows = [summary["download"][link][n] for n in sizes]
        axes[2].errorbar(
            sizes,
            [100 * r["mean"] for r in rows],
            yerr=[100 * r["ci95"] for r in rows],
            marker="o",
            capsize=3,
            color=colour,
            label=f"SB, {link}",
        )
    axes[2].set_xlabel("benchmark size (shards of 500)")
    axes[2].set_ylabel("download-time prediction error (%)")
    axes[2].set_title("time to download 60 shards (fig. 3.3)", fontsize=10)
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions, fewer sizes")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 20)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1, as the agent uses by default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cap-rate",
        type=float,
        default=20e6,
        help="bytes/s of the capped link (root only; 0 = loopback only)",
    )
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument(
        "--rss-only",
        action="store_true",
        help="only re-measure the agent's memory into the existing JSON",
    )
    add_testbed_option(parser)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    add_out_dir(parser)
    return parser.parse_args()


def _print_headline(summary: dict[str, Any], sizes: list[int], reps: int) -> None:
    n8 = 8 if 8 in sizes else sizes[-1]
    wall, cpu = summary["wall"][n8], summary["cpu"][n8]
    dls = ", ".join(f"{k} {100 * v[n8]['mean']:.1f}%" for k, v in summary["download"].items())
    rss = summary["rss"].get("idle_bytes", 0) / 2**20
    if wall.get("floor"):
        print(
            f"at {n8} shards, wall clock: SB {100 * wall['sb_train_error']['mean']:.1f}% "
            f"({100 * wall['sb_within']['10%']:.0f}% of predictions within ±10%, "
            f"{100 * wall['sb_within']['5%']:.0f}% within ±5%), floor "
            f"{100 * wall['floor']['mean']:.1f}% ({100 * wall['floor_within']['10%']:.0f}% / "
            f"{100 * wall['floor_within']['5%']:.0f}%): SB at {wall['sb_over_floor']:.2f}x the "
            f"floor; FLOPS {100 * wall['flops_train_error']['mean']:.0f}% "
            f"({100 * wall['flops_within']['10%']:.0f}% within ±10%)"
        )
    print(
        f"at {n8} shards: SB error {100 * wall['sb_train_error']['mean']:.2f}% wall / "
        f"{100 * cpu['sb_train_error']['mean']:.2f}% cpu vs FLOPS "
        f"{100 * wall['flops_train_error']['mean']:.1f}% / "
        f"{100 * cpu['flops_train_error']['mean']:.1f}% "
        f"({100 * wall['error_reduction']:.1f}% / {100 * cpu['error_reduction']:.1f}% lower); "
        f"download error {dls}; idle agent RSS {rss:.0f} MiB; {reps} reps"
    )


def main() -> None:
    args = _parse_args()
    out_dir = results_dir(args)
    if args.serve:
        serve(args.serve, args.host, args.port)
        return
    if args.testbed is not None:
        from testbed_reproduce import sb_reproduction

        sb_reproduction(
            args.testbed,
            [2, 4] if args.quick else [2, 4, 6, 8],
            args.reps or (1 if args.quick else 3),
            out_dir / "testbed_subset_benchmarking.json",
            command=" ".join(["sudo", ".venv/bin/python", *sys.argv]),
            truth_scale=0.25 if args.quick else 1.0,
        )
        return
    path = out_dir / "subset_benchmarking.json"
    if args.rss_only:
        summary = json.loads(path.read_text())
        summary["rss"] = measure_agent_rss()
        path.write_text(json.dumps(summary, indent=1))
        print({k: f"{v / 2**20:.0f} MiB" for k, v in summary["rss"].items()})
        return
    import torch

    torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 20)
    sizes = [2, 4, 8, 10] if args.quick else list(range(2, 11))
    targets = [15, 60] if args.quick else [15, 30, 60, 120]
    started = time.time()
    _, _, payloads = make_shards(args.seed)
    cap = args.cap_rate if args.cap_rate > 0 and can_cap() else 0.0
    with shard_server(payloads) as loop_url:
        if cap:
            with capped_link(cap), shard_server(payloads, netns=NETNS) as cap_url:
                links = {"loopback": loop_url, f"{cap / 1e6:g} MB/s link": cap_url}
                summary = run_prediction(reps, sizes, targets, args.seed, links)
        else:
            summary = run_prediction(reps, sizes, targets, args.seed, {"loopback": loop_url})
    summary["rss"] = {} if args.skip_rss else measure_agent_rss()
    summary.update(
        reps=reps,
        threads=args.threads,
        seconds=time.time() - started,
        cap_rate=cap,
        cpu_count=os.cpu_count(),
        load_1m=os.getloadavg()[0],
        command=" ".join(sys.argv),
    )
    path.write_text(json.dumps(summary, indent=1))
    plot(summary, out_dir / "subset_benchmarking.png")
    _print_headline(summary, sizes, reps)

if __name__ == "__main__":
    main()
