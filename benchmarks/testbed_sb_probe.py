"""Run the agent's subset benchmarking inside a testbed learner, and time the real thing after.

`python benchmarks/testbed_sb_probe.py --url http://BRIDGE:PORT --spec SPEC.json --sizes 2,4
--train-shards 15 --download-shards 60` fetches shards from a `deploy.testbed.bench.BlobServer`
(path `/shards/{i}`), and for each benchmark size n runs
`learner_agent.benchmarking.subset_benchmark` on n shards (the agent's own SB code: b_k in
bytes/s, c_k in samples/s). It then measures the truth SB predicts: the seconds to download
`--download-shards` shards and to train a fresh model one pass over `--train-shards` shards
(thesis 3.4.2.1, figs. 3.2 and 3.3), and the FLOPS baseline's prediction of the same training
time (thesis 3.4.1). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from pathlib import Path
from typing import Any


def _fetcher(base_url: str, count: int) -> Any:
    def fetch(index: int) -> bytes:
        with urllib.request.urlopen(f"{base_url}/shards/{index % count}", timeout=120) as answer:
            data: bytes = answer.read()
            return data

    return fetch


def run(
    url: str,
    spec_data: dict[str, Any],
    sizes: list[int],
    train_shards: int,
    download_shards: int,
    available: int,
    repeats: int = 1,
) -> dict[str, Any]:
    """`repeats` times: SB at each size, then the measured download and training times.

    Repeating inside one process pays the interpreter and torch start-up once; under a small
    CPU quota that start-up alone takes tens of seconds.
    """
    runs = [
        _one_run(url, spec_data, sizes, train_shards, download_shards, available, r)
        for r in range(repeats)
    ]
    return {"runs": runs}


def _sb_sizes(spec: Any, fetch: Any, sizes: list[int], available: int, repeat: int
              ) -> list[dict[str, Any]]:
    """SB at each size of `sizes`, through the agent's own `subset_benchmark`."""
    from learner_agent.benchmarking import subset_benchmark

    sb = []
    for offset, n in enumerate(sizes):
        # Different shards for each size, so no size benefits from a warm page or socket cache.
        ids = [(repeat * 13 + offset * 7 + i) % available for i in range(n)]
        result = subset_benchmark(spec, fetch, ids)
        sb.append(
            {
                "shards": n,
                "bandwidth": result.bandwidth,
                "compute": result.compute,
                "shard_bytes": result.shard_bytes,
                "shard_samples": result.shard_samples,
            }
        )
    return sb


def _truth(spec: Any, fetch: Any, download_shards: int, train_shards: int
           ) -> tuple[float, float, int, float, float]:
    """The measured truth: (seconds to download `download_shards`, their bytes, samples
    trained, seconds of one pass over `train_shards` with a fresh model, and the seconds of a
    second such pass, each with its own fresh model: the floor, one truth predicting another)."""
    import numpy as np

    from plexus.shards import decode_shard

    start = time.perf_counter()
    payloads = [fetch(i) for i in range(download_shards)]
    download_s = time.perf_counter() - start
    xs, ys = zip(*[decode_shard(p)[:2] for p in payloads[:train_shards]], strict=True)
    while len(xs) < train_shards:  # reuse shards when fewer were downloaded than trained on
        xs, ys = xs + xs, ys + ys
    x = np.concatenate(xs[:train_shards])
    y = np.concatenate(ys[:train_shards])
    train_s, again_s = (_one_pass(spec, x, y) for _ in range(2))
    return download_s, float(sum(len(p) for p in payloads)), len(y), train_s, again_s


def _one_pass(spec: Any, x: Any, y: Any) -> float:
    """Seconds of one training pass of a fresh dummy model over (x, y)."""
    from learner_agent.benchmarking import build_dummy
    from plexus.training import train

    model = build_dummy(spec)
    start = time.perf_counter()
    train(
        model,
        x,
        y,
        passes=1,
        batch_size=spec.training.batch_size,
        optimizer=spec.training.optimizer,
        lr=spec.training.lr,
        seed=spec.seed,
    )
    return time.perf_counter() - start


def _one_run(
    url: str,
    spec_data: dict[str, Any],
    sizes: list[int],
    train_shards: int,
    download_shards: int,
    available: int,
    repeat: int,
) -> dict[str, Any]:

    from learner_agent.benchmarking import (
        build_dummy,
        flops_benchmark,
        flops_predict_train_s,
        training_flops_per_sample,
    )
    from plexus.datasets import dataset_geometry
    from plexus.spec import load_spec

    spec = load_spec(spec_data)
    fetch = _fetcher(url, available)
    sb = _sb_sizes(spec, fetch, sizes, available, repeat)
    download_s, download_bytes, samples, train_s, train_again_s = _truth(
        spec, fetch, download_shards, train_shards
    )
    # The FLOPS baseline of thesis 3.4.1: 100 products of 512x512 matrices, and the model's
    # training FLOPs per sample; its prediction is samples x FLOPs per sample / FLOPS.
    flops = flops_benchmark()
    per_sample = training_flops_per_sample(
        build_dummy(spec), dataset_geometry(spec.dataset.name)[0]
    )
    return {
        "sb": sb,
        "flops": {
            "flops": flops,
            "flops_per_sample": per_sample,
            "predicted_train_s": flops_predict_train_s(flops, per_sample, samples),
        },
        "truth": {
            "download_shards": download_shards,
            "download_s": download_s,
            "download_bytes": download_bytes,
            "train_shards": train_shards,
            "train_samples": samples,
            "train_s": train_s,
            "train_again_s": train_again_s,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/testbed_sb_probe.py", description=__doc__)
    parser.add_argument("--url", required=True, help="base URL of the shard server")
    parser.add_argument("--spec", type=Path, required=True, help="task spec (JSON)")
    parser.add_argument("--sizes", default="2", help="benchmark sizes in shards, comma-separated")
    parser.add_argument("--train-shards", type=int, default=15)
    parser.add_argument("--download-shards", type=int, default=60)
    parser.add_argument("--available", type=int, required=True, help="shards the server holds")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    result = run(
        args.url,
        json.loads(args.spec.read_text()),
        sizes,
        args.train_shards,
        args.download_shards,
        args.available,
        args.repeats,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
