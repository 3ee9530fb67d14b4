"""Subset benchmarking vs FLOPS (thesis figs. 3.2 and 3.3) and the idle agent's memory.

For benchmark sizes n = 2..10 shards of 500 MNIST samples, each repetition measures
  * SB: download n shards from a local HTTP shard server (b_k) and train a dummy TwoNN one pass
    over them (c_k), with the agent's own code (learner_agent.benchmarking);
  * FLOPS: 100 products of 512×512 matrices (thesis 3.4.1) and a FLOP count of TwoNN training;
  * the truth: the time to train a fresh TwoNN one pass over T ∈ {15, 30, 60, 120} shards and
    the time to download 60 shards,
then reports |predicted − measured| / measured (thesis 3.4) as mean and 95 % interval over the
repetitions. Order inside a repetition is shuffled so slow spells of the shared machine do not
always hit the same measurement. A second part starts `plexus agent run` against a stand-in
enrolment server and reads the idle agent's resident memory.

    .venv/bin/python benchmarks/subset_benchmarking.py            # 20 repetitions
    .venv/bin/python benchmarks/subset_benchmarking.py --quick    # 3 repetitions, fewer sizes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARD = 500  # samples per shard (thesis 3.4.1)


# -- a local orchestrator stand-in: shards, enrolment, heartbeats ---------------------------
class _State:
    shards: ClassVar[list[bytes]] = []
    tokens: ClassVar[dict[str, str]] = {}
    endpoint: ClassVar[str] = ""
    enrolled = threading.Event()
    lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # GET /v1/tasks/{id}/shards/{n}
        parts = self.path.strip("/").split("/")
        if len(parts) == 5 and parts[:2] == ["v1", "tasks"] and parts[3] == "shards":
            n = int(parts[4])
            self._send(200, _State.shards[n % len(_State.shards)], "application/octet-stream")
        else:
            self._send(404, b'{"error": "not_found", "detail": "no such route"}')

    def do_POST(self) -> None:  # enroll and heartbeat
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/v1/learners/enroll":
            token = secrets.token_hex(8)
            with _State.lock:
                _State.tokens[body["name"]] = token
                _State.endpoint = body["endpoint"]
            answer = {
                "learner_id": 1,
                "name": body["name"],
                "token": token,
                "relay_url": None,
                "heartbeat_interval_s": 1.0,
            }
            self._send(201, json.dumps(answer).encode())
            _State.enrolled.set()
        else:
            self._send(200, b'{"ok": true}')


@contextmanager
def shard_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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


# -- the experiment ---------------------------------------------------------------------------
def run_prediction(reps: int, sizes: list[int], targets: list[int], seed: int) -> dict[str, Any]:
    from learner_agent.benchmarking import (
        download_shards,
        flops_benchmark,
        flops_predict_train_s,
        measure,
        training_flops_per_sample,
    )
    from learner_agent.client import OrchestratorClient
    from plexus.datasets import load_dataset
    from plexus.models import build_model
    from plexus.shards import encode_shard, partition
    from plexus.spec import load_spec
    from plexus.training import train

    spec = load_spec(
        {
            "model": "twonn",
            "dataset": {"name": "mnist5k"},
            "partition": {"shard_size": SHARD},
            "training": {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "iterations": 1},
        }
    )
    data = load_dataset(spec.dataset, seed=seed)
    # MNIST-5k gives 8 real shards; larger workloads cycle through them, which changes
    # nothing about the time a pass takes.
    idx = partition(data.train_y, spec.partition, seed)
    _State.shards = [
        encode_shard(data.train_x[i], data.train_y[i], {"shard": k}) for k, i in enumerate(idx)
    ]
    big_x = np.concatenate([data.train_x[idx[k % len(idx)]] for k in range(max(targets))])
    big_y = np.concatenate([data.train_y[idx[k % len(idx)]] for k in range(max(targets))])
    per_sample = training_flops_per_sample(build_model("twonn", (1, 28, 28), 10), (1, 28, 28))
    download_target = 60
    rng = random.Random(seed)

    clocks = {"wall": time.perf_counter, "cpu": time.thread_time}
    # One untimed pass first, so no repetition pays the process's one-off start-up costs.
    train(
        build_model("twonn", (1, 28, 28), 10),
        big_x[: 4 * SHARD],
        big_y[: 4 * SHARD],
        passes=1,
        batch_size=32,
        optimizer="sgd",
        lr=0.1,
    )
    records: list[dict[str, Any]] = []
    with shard_server() as url:
        client = OrchestratorClient(url)
        fetch = lambda n: client.shard(1, n)  # noqa: E731
        download_shards(fetch, range(3))  # open the connection once before timing
        for rep in range(reps):
            jobs: list[tuple[str, int]] = (
                [("sb", n) for n in sizes]
                + [("train", t) for t in targets]
                + [("flops", 0), ("download", download_target)]
            )
            rng.shuffle(jobs)
            rec: dict[str, Any] = {"sb": {}, "train_s": {}, "flops": {}}
            for kind, n in jobs:
                if kind == "sb":
                    ids = [rng.randrange(len(idx)) for _ in range(n)]
                    payloads, seconds = download_shards(fetch, ids)
                    entry: dict[str, float] = {}
                    for name, clock in clocks.items():
                        sb = measure(spec, payloads, seconds, clock=clock)
                        entry[f"compute_{name}"] = sb.compute
                    entry.update(bandwidth=sb.bandwidth, shard_bytes=sb.shard_bytes)
                    rec["sb"][n] = entry
                elif kind == "train":
                    model = build_model("twonn", (1, 28, 28), 10)
                    w0, c0 = time.perf_counter(), time.thread_time()
                    train(
                        model,
                        big_x[: n * SHARD],
                        big_y[: n * SHARD],
                        passes=1,
                        batch_size=32,
                        optimizer="sgd",
                        lr=0.1,
                        seed=rep,
                    )
                    rec["train_s"][n] = {
                        "wall": time.perf_counter() - w0,
                        "cpu": time.thread_time() - c0,
                    }
                elif kind == "flops":
                    for name, clock in clocks.items():
                        rec["flops"][name] = flops_benchmark(512, 100, clock=clock)
                else:
                    _, seconds = download_shards(fetch, range(n))
                    rec["download_s"] = sum(seconds)
            records.append(rec)
            last = targets[-1]
            print(
                f"rep {rep + 1}/{reps}: c_k(n={sizes[-1]}) "
                f"{rec['sb'][sizes[-1]]['compute_wall']:.0f} samples/s, "
                f"{last} shards {rec['train_s'][last]['wall']:.2f} s wall "
                f"{rec['train_s'][last]['cpu']:.2f} s cpu, "
                f"{rec['flops']['wall'] / 1e9:.1f} GFLOPS",
                flush=True,
            )
        client.close()

    def err(pred: float, true: float) -> float:
        return abs(pred - true) / true

    summary: dict[str, Any] = {
        "sizes": sizes,
        "targets": targets,
        "wall": {},
        "cpu": {},
        "download": {},
    }
    for name in clocks:
        for n in sizes:
            sb_err, fl_err = [], []
            for rec in records:
                for t in targets:
                    true = rec["train_s"][t][name]
                    sb_err.append(err(t * SHARD / rec["sb"][n][f"compute_{name}"], true))
                    fl_err.append(
                        err(flops_predict_train_s(rec["flops"][name], per_sample, t * SHARD), true)
                    )
            sb_i, fl_i = interval(sb_err), interval(fl_err)
            # Bias: the error of the predicted mean time against the measured mean time. The
            # per-repetition error above also holds the machine's speed changing between the
            # benchmark and the measured run; the bias is what SB itself gets wrong.
            bias = []
            for t in targets:
                true = statistics.fmean(rec["train_s"][t][name] for rec in records)
                pred = statistics.fmean(
                    t * SHARD / rec["sb"][n][f"compute_{name}"] for rec in records
                )
                bias.append(err(pred, true))
            summary[name][n] = {
                "sb_bias": statistics.fmean(bias),
                "sb_train_error": sb_i,
                "flops_train_error": fl_i,
                "error_reduction": 1.0 - sb_i["mean"] / fl_i["mean"],
            }
    for n in sizes:
        dl_err = []
        for rec in records:
            s = rec["sb"][n]
            dl_err.append(
                err(download_target * s["shard_bytes"] / s["bandwidth"], rec["download_s"])
            )
        summary["download"][n] = interval(dl_err)
    summary["flops_per_sample"] = per_sample
    summary["records"] = records
    return summary


# -- idle agent memory ------------------------------------------------------------------------
def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_agent_rss(settle_s: float = 3.0) -> dict[str, Any]:
    """RSS (bytes) of `plexus agent run`: idle, idle with --preload, after one benchmark call."""
    import rpc

    out: dict[str, Any] = {}
    task = {
        "model": "twonn",
        "dataset": {"name": "mnist5k"},
        "partition": {"shard_size": SHARD},
        "sync": {"benchmark_shards": 2},
    }
    with shard_server() as url:
        for label, extra in (("idle", []), ("idle_preload", ["--preload"])):
            _State.enrolled.clear()
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
                if not _State.enrolled.wait(120):
                    raise RuntimeError("agent did not enroll within 120 s")
                time.sleep(settle_s)  # let heartbeats run so the idle set is reached
                out[label + "_bytes"] = _rss(proc.pid)
                if label == "idle":
                    token = _State.tokens["rss"]
                    with rpc.connect(_State.endpoint, token=token, timeout=120) as agent:
                        agent.benchmark(task, 1, None)
                    out["after_benchmark_bytes"] = _rss(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    return out


# -- plotting ---------------------------------------------------------------------------------
def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = summary["sizes"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    span = f"{min(summary['targets'])}–{max(summary['targets'])} shards"
    for ax, name, title in (
        (axes[0], "wall", "wall clock (shared machine)"),
        (axes[1], "cpu", "thread CPU time"),
    ):
        rows = [summary[name][n] for n in sizes]
        for key, label, colour in (
            ("sb_train_error", "SB", "tab:blue"),
            ("flops_train_error", "FLOPS", "tab:red"),
        ):
            mean = [100 * r[key]["mean"] for r in rows]
            ci = [100 * r[key]["ci95"] for r in rows]
            ax.errorbar(sizes, mean, yerr=ci, marker="o", capsize=3, label=label, color=colour)
        ax.set_yscale("log")
        ax.set_xlabel("benchmark size (shards of 500)")
        ax.set_ylabel("training-time prediction error (%)")
        ax.set_title(f"TwoNN on {span}, {title}", fontsize=10)
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    rows = [summary["download"][n] for n in sizes]
    axes[2].errorbar(
        sizes,
        [100 * r["mean"] for r in rows],
        yerr=[100 * r["ci95"] for r in rows],
        marker="o",
        capsize=3,
        color="tab:green",
        label="SB, loopback",
    )
    axes[2].set_xlabel("benchmark size (shards of 500)")
    axes[2].set_ylabel("download-time prediction error (%)")
    axes[2].set_title("time to download 60 shards (fig. 3.3)", fontsize=10)
    axes[2].legend()
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions, fewer sizes")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 20)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 keeps timings steadier on a shared machine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 20)
    sizes = [2, 4, 8, 10] if args.quick else list(range(2, 11))
    targets = [15, 60] if args.quick else [15, 30, 60, 120]
    started = time.time()
    summary = run_prediction(reps, sizes, targets, args.seed)
    summary["rss"] = {} if args.skip_rss else measure_agent_rss()
    summary.update(
        reps=reps,
        threads=args.threads,
        seconds=time.time() - started,
        cpu_count=os.cpu_count(),
        load_1m=os.getloadavg()[0],
        command=" ".join(sys.argv),
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "subset_benchmarking.json").write_text(json.dumps(summary, indent=1))
    plot(summary, RESULTS / "subset_benchmarking.png")
    n8 = 8 if 8 in sizes else sizes[-1]
    wall, cpu, dl = summary["wall"][n8], summary["cpu"][n8], summary["download"][n8]
    rss = summary["rss"].get("idle_bytes", 0) / 2**20
    print(
        f"at {n8} shards: SB error {100 * wall['sb_train_error']['mean']:.2f}% wall / "
        f"{100 * cpu['sb_train_error']['mean']:.2f}% cpu vs FLOPS "
        f"{100 * wall['flops_train_error']['mean']:.1f}% / "
        f"{100 * cpu['flops_train_error']['mean']:.1f}% "
        f"({100 * wall['error_reduction']:.1f}% / {100 * cpu['error_reduction']:.1f}% lower); "
        f"download error {100 * dl['mean']:.1f}%; idle agent RSS {rss:.0f} MiB; {reps} reps"
    )


if __name__ == "__main__":
    main()
