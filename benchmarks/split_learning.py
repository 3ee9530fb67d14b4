"""Split learning (DynSplit): Org, single autoencoders and two-path gated schemes side by side.

Run:  .venv/bin/python benchmarks/split_learning.py [--quick] [--train N] [--test N]
                                                   [--epochs E] [--ratios 0.0 0.2 0.5 0.9]
                                                   [--schemes AE-4 S1@0.2 AE-4/g8 ...]

Fashion-MNIST (Debian's dataset-fashion-mnist; the paper used CIFAR-10, which is not
installed here) with a small ResNet (a stride-2 stem, two residual blocks of 16 channels on
the device, the cut after the second block, then a 32-channel residual stage and the head on
the server). Schemes (paper sec. V): "Org" sends the cut activations as float32; "AE-12",
"AE-4", "AE-2" one autoencoder bottleneck of that many channels; "S1" scenario 1 (an
uncompressed path + a 1-channel path) and "S2" scenario 2 (12-channel + 2-channel paths) at
each target ratio; every bottleneck and S1's uncompressed path are quantised to 8 bits.
Per scheme: test accuracy (the whole network: gate argmax, quantised as on the wire), bytes
per sample of the RPC bodies the device sends while training (measured: the encoded request
bodies) and at inference, and the realised path-0 ratio (last training epoch, and test) vs the
target, and the bytes per sample of the server's answers (the gradients at the codes: float32,
or 8-bit with `/g8` after a scheme's name, `split.grad_bits: 8`, and `/g8s` with stochastic
rounding, `split.grad_rounding: stochastic`; `--schemes` picks schemes by
name, in that order). Then the per-batch protocol overhead: the same batches through the RPC
layer's wire format over loopback HTTP (keep-alive) against an in-process call of the same
server step.
Writes split_learning.json and .png; prints a one-line summary last.

With `--testbed FLEET.yaml` (root; deploy/testbed/fleets/split.yaml) it measures instead the
time per epoch of split learning against plain federated training of the same model on one
emulated device at two link caps, and bandwidth awareness there (split_testbed.py).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from outdir import add_out_dir, results_dir
from split_testbed import add_testbed_args, run_testbed

import rpc
from deploy.testbed.bench import add_testbed_option
from plexus.datasets import load_dataset
from plexus.layers import build_layers
from plexus.spec import DatasetSpec, ModelSpec, SplitSpec
from plexus.split.codec import dequantise, quantise
from plexus.split.model import SplitNetwork, build_halves
from plexus.split.steps import DeviceTrainer, ServerTrainer, optimiser

SHAPE = (1, 28, 28)


def _block(c: int) -> dict[str, Any]:
    return {"type": "Residual", "layers": [
        {"type": "Conv2d", "out_channels": c, "kernel_size": 3, "padding": 1}, "BatchNorm2d",
        "ReLU", {"type": "Conv2d", "out_channels": c, "kernel_size": 3, "padding": 1},
        "BatchNorm2d"]}


LAYERS: list[Any] = [
    {"type": "Conv2d", "out_channels": 16, "kernel_size": 3, "stride": 2, "padding": 1},
    "BatchNorm2d", "ReLU", _block(16), "ReLU", _block(16), "ReLU",      # device: 0..6
    {"type": "Conv2d", "out_channels": 32, "kernel_size": 3, "stride": 2, "padding": 1},
    "BatchNorm2d", "ReLU", _block(32), "ReLU",
    {"type": "AdaptiveAvgPool2d", "output_size": 1}, "Flatten", {"type": "Linear"}]
CUT = 7  # after the second residual block (and its ReLU)


def schemes(ratios: list[float]) -> list[tuple[str, float | None, list[dict[str, Any]]]]:
    """(name, target ratio or None, paths) of every scheme compared."""
    out: list[tuple[str, float | None, list[dict[str, Any]]]] = [
        ("Org", None, [{"channels": None, "bits": 32}])]
    out += [(f"AE-{c}", None, [{"channels": c, "bits": 8}]) for c in (12, 4, 2)]
    out += [("S1", r, [{"channels": None, "bits": 8}, {"channels": 1, "bits": 8}])
            for r in ratios]
    out += [("S2", r, [{"channels": 12, "bits": 8}, {"channels": 2, "bits": 8}])
            for r in ratios]
    return out


GRADS = {"": (32, "nearest"), "8": (8, "nearest"), "8s": (8, "stochastic")}


def pick(names: list[str] | None, ratios: list[float]
         ) -> list[tuple[str, float | None, list[dict[str, Any]], tuple[int, str]]]:
    """(name, target, paths, (grad bits, rounding)) of the schemes named (all of `schemes`,
    float32 gradients, when None); a name ending in `/g8` is that scheme with 8-bit gradients
    (`/g8s`: stochastic rounding)."""
    table = {n if r is None else f"{n}@{r}": (r, p) for n, r, p in schemes(ratios)}
    if names is None:
        return [(n, r, p, GRADS[""]) for n, (r, p) in table.items()]
    out = []
    for name in names:
        base, _, grad = name.partition("/g")
        if base not in table or grad not in GRADS:
            raise SystemExit(f"unknown scheme {name!r}: one of {sorted(table)}, "
                             "optionally with /g8 or /g8s")
        out.append((name, *table[base], GRADS[grad]))
    return out


def make(paths: list[dict[str, Any]], ratio: float | None, lr: float, seed: int,
         grad: tuple[int, str] = GRADS[""]
         ) -> tuple[DeviceTrainer, ServerTrainer, SplitNetwork]:
    """Fresh halves of the benchmark ResNet with these paths, and their trainers."""
    torch.manual_seed(seed)
    layers = ModelSpec.model_validate({"layers": LAYERS}).layers or ()
    net = build_layers(layers, SHAPE, 10)
    split = SplitSpec.model_validate({"cut": CUT, "paths": paths, "grad_bits": grad[0],
                                      "grad_rounding": grad[1],
                                      "target_ratio": 1.0 if ratio is None else ratio})
    dev, srv, lays = build_halves(net, split, SHAPE)
    dt = DeviceTrainer(dev, lays, split, optimiser(dev, "adam", lr), split.target_ratio)
    st = ServerTrainer(srv, lays, 10, 1 << 16, optimiser(srv, "adam", lr), *grad)
    return dt, st, SplitNetwork(dev, srv, lays)


def train_scheme(data: Any, paths: list[dict[str, Any]], ratio: float | None,
                 args: argparse.Namespace, grad: tuple[int, str] = GRADS[""]
                 ) -> dict[str, Any]:
    """Train one scheme in process; accuracy, wire bytes (both ways) and ratios."""
    dt, st, whole = make(paths, ratio, args.lr, args.seed, grad)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    body_bytes, answer_bytes, samples, last_ratio = 0, 0, 0, 0.0
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    for _epoch in range(args.epochs):
        wide0, n0 = dt.stats.wide, dt.stats.samples
        order = torch.randperm(len(x), generator=gen)
        for idx in (order[i:i + args.batch] for i in range(0, len(x), args.batch)):
            message = dt.send(x[idx], y[idx])
            body_bytes += len(rpc.encode({"args": [message]}).join())
            samples += len(idx)
            answer = st.step(message)
            answer_bytes += len(rpc.encode(answer).join())  # the route's answer body
            dt.finish(answer["grads"])
        last_ratio = (dt.stats.wide - wide0) / max(1, dt.stats.samples - n0)
    train_s = time.perf_counter() - t0
    acc, test_ratio, infer_bytes = evaluate(whole, data)
    return {"accuracy": acc, "grad_bits": grad[0], "grad_rounding": grad[1],
            "train_bytes_per_sample": body_bytes / samples,
            "answer_bytes_per_sample": answer_bytes / samples,
            "payload_bytes_per_sample": dt.stats.payload_bytes / samples,
            "inference_bytes_per_sample": infer_bytes, "ratio_train_last_epoch": last_ratio,
            "ratio_test": test_ratio, "train_s": train_s}


def evaluate(whole: SplitNetwork, data: Any) -> tuple[float, float, float]:
    """(accuracy, share of test samples on path 0, code bytes per test sample)."""
    whole.eval()
    x, y = torch.from_numpy(data.test_x), torch.from_numpy(data.test_y)
    correct, wide, sent = 0, 0, 0
    with torch.no_grad():
        for i in range(0, len(x), 500):
            xb = x[i:i + 500]
            path, codes, _ = whole.device(xb)
            blocks = [quantise(z, lay) for z, lay in zip(codes, whole.layouts, strict=True)]
            sent += sum(len(b["codes"]) + b["lo"].nbytes + b["step"].nbytes for b in blocks)
            back = [dequantise(b, z.shape[0], lay, "t") if z.shape[0] else None
                    for b, z, lay in zip(blocks, codes, whole.layouts, strict=True)]
            logits = whole.server(path, back)
            correct += int((logits.argmax(1) == y[i:i + 500]).sum())
            wide += int((path == 0).sum())
    return correct / len(y), wide / len(y), sent / len(y)


def overhead(data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per batch of S1 (ratio 0.2): server step called in process vs through the RPC
    layer (wire format, simplex, loopback HTTP, one keep-alive connection)."""
    paths: list[dict[str, Any]] = [{"channels": None, "bits": 8}, {"channels": 1, "bits": 8}]
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    batches = [torch.arange(i, min(i + args.batch, len(x)))
               for i in range(0, min(len(x), args.overhead_batches * args.batch), args.batch)]
    out: dict[str, Any] = {"batches": len(batches), "batch_size": args.batch}
    for mode in ("in_process", "rpc_loopback"):
        dt, st, _ = make(paths, 0.2, args.lr, args.seed)
        registry = rpc.Registry()
        registry.add(st.step, name="split_step")
        with rpc.Worker(registry).start() as server, rpc.connect(server.url) as remote:
            call = st.step if mode == "in_process" else remote.split_step
            t0 = time.perf_counter()
            for idx in batches:
                dt.finish(call(dt.send(x[idx], y[idx]))["grads"])
            out[f"{mode}_s_per_batch"] = (time.perf_counter() - t0) / len(batches)
    out["ratio"] = out["rpc_loopback_s_per_batch"] / out["in_process_s_per_batch"]
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Accuracy vs training bytes per sample, and realised vs target ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, marker in (("Org", "s"), ("AE", "^"), ("S1", "o"), ("S2", "D")):
        rows = [r for r in results if r["scheme"].startswith(name)
                and r.get("grad_bits", 32) == 32]
        a1.plot([r["train_bytes_per_sample"] for r in rows], [r["accuracy"] for r in rows],
                marker=marker, linestyle="-" if name in ("S1", "S2") else "", label=name)
        for r in rows:
            if r["target"] is None:
                a1.annotate(r["scheme"], (r["train_bytes_per_sample"], r["accuracy"]))
        ratio_rows = [r for r in rows if r["target"] is not None]
        if ratio_rows:
            a2.plot([r["target"] for r in ratio_rows],
                    [r["ratio_train_last_epoch"] for r in ratio_rows], marker=marker, label=name)
    g8 = [r for r in results if r.get("grad_bits", 32) != 32]
    if g8:
        a1.plot([r["train_bytes_per_sample"] for r in g8], [r["accuracy"] for r in g8],
                marker="x", linestyle="", color="black", label="8-bit gradients")
        for r in g8:
            a1.annotate(r["scheme"], (r["train_bytes_per_sample"], r["accuracy"]))
    a1.set_xscale("log")
    a1.set_xlabel("bytes per training sample sent by the device (RPC body)")
    a1.set_ylabel("test accuracy")
    a1.legend()
    a2.plot([0, 1], [0, 1], color="grey", linestyle=":", label="realised = target")
    a2.set_xlabel("target ratio (share on path 0)")
    a2.set_ylabel("realised ratio, last training epoch")
    a2.legend()
    fig.suptitle("Split learning on Fashion-MNIST (small ResNet, cut after block 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1,000 training / 500 test samples, 1 epoch, ratios 0.0 and 0.5")
    parser.add_argument("--train", type=int, default=None,
                        help="training samples used (default 60,000; --testbed: 2,000)")
    parser.add_argument("--test", type=int, default=None,
                        help="test samples used (default 10,000; --testbed: 500)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--ratios", type=float, nargs="+",
                        default=[0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overhead-batches", type=int, default=40,
                        help="batches of the RPC overhead check (0: skip it)")
    parser.add_argument("--schemes", nargs="+", default=None,
                        help="only these schemes, in this order (Org, AE-12, S1@0.2, ...; "
                             "append /g8 for 8-bit gradients, /g8s with stochastic "
                             "rounding); default: all, float32")
    add_out_dir(parser)
    add_testbed_option(parser)
    add_testbed_args(parser)
    return parser.parse_args()


def main() -> None:
    """Run every scheme, the overhead check, write JSON + PNG, print a summary line."""
    args = parse_args()
    if args.testbed:  # time per epoch on the emulated testbed (split_testbed.py), root
        quick = (500, 200) if args.quick else (2000, 500)
        args.train, args.test = args.train or quick[0], args.test or quick[1]
        args.rounds = 1 if args.quick else args.rounds
        run_testbed(args, results_dir(args))
        return
    args.train, args.test = args.train or 60_000, args.test or 10_000
    if args.quick:
        args.train, args.test, args.epochs, args.ratios = 1000, 500, 1, [0.0, 0.5]
        args.overhead_batches = 10
    torch.set_num_threads(1)
    full = load_dataset(DatasetSpec(name="fashion_mnist"))
    data = replace(full, train_x=full.train_x[:args.train], train_y=full.train_y[:args.train],
                   test_x=full.test_x[:args.test], test_y=full.test_y[:args.test])
    results: list[dict[str, Any]] = []
    out = results_dir(args)
    config = {k: v for k, v in vars(args).items() if k != "out_dir"}
    over: dict[str, Any] | None = None

    def write() -> None:  # after every scheme: a run cut short keeps what it measured
        (out / "split_learning.json").write_text(json.dumps(
            {"config": config, "schemes": results, "overhead": over}, indent=1))

    for name, ratio, paths, grad in pick(args.schemes, args.ratios):
        row = {"scheme": name, "target": ratio, "paths": paths,
               **train_scheme(data, paths, ratio, args, grad)}
        print(json.dumps(row), flush=True)
        results.append(row)
        write()
    over = overhead(data, args) if args.overhead_batches > 0 else None
    write()
    plot(results, out / "split_learning.png")
    if args.schemes is not None or over is None:
        print(f"split_learning: {len(results)} schemes written to {out}")
        return
    org = results[0]
    best = max((r for r in results if r["target"] is not None), key=lambda r: r["accuracy"])
    print(f"split_learning: Org acc {org['accuracy']:.3f} at "
          f"{org['train_bytes_per_sample']:.0f} B/sample; best gated {best['scheme']} acc "
          f"{best['accuracy']:.3f} at {best['train_bytes_per_sample']:.0f} B/sample; RPC "
          f"loopback / in-process per batch = {over['ratio']:.2f}×")


if __name__ == "__main__":
    main()
