"""One split-learning batch on each side (paper alg. 1), shared by the agent, the orchestrator,
the in-process baseline and the benchmark.

Device: `DeviceTrainer.send(x, y)` runs the layers to the cut, the gate and the encoders and
returns the message to send (`codec`); `DeviceTrainer.finish(grads)` checks and decodes the
gradient the server returned at the codes (`split.grad_bits`), back-propagates it, adds the
ratio penalty `ratio_weight`·(target − batch ratio)² (eq. 5; the batch ratio is the share of
samples whose gate picked path 0) and steps the device optimiser. Server:
`ServerTrainer.step(message)` checks the message, decodes, runs the rest of the network and
the cross-entropy loss, steps the server optimiser and returns the gradient at each path's
codes, quantised to `grad_bits` (`codec.quantise_grad`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from plexus.spec import SplitSpec
from plexus.split.codec import (
    PathLayout,
    check_batch,
    decode_grads,
    encode_grads,
    grad_layouts,
    quantise,
)
from plexus.split.model import DeviceHalf, ServerHalf


def optimiser(module: torch.nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """The task's optimiser (`training.optimizer`, `training.lr`) over `module`."""
    from plexus.training import make_optimizer

    return make_optimizer(module, name, lr)


def link_target(split: SplitSpec, layouts: list[PathLayout], batch_size: int,
                bandwidth: float | None) -> float:
    """The target ratio a learner with uplink `bandwidth` (bytes/s, SB's b_k) uses.

    Expected upload per batch is batch·(r·B_0 + (1 − r)·B_min) bytes, B_p the wire bytes per
    sample of path p; the largest r ≤ split.target_ratio whose upload fits in
    split.link_budget_s seconds (0 when even the cheapest path does not fit)."""
    if split.link_budget_s is None or bandwidth is None or len(layouts) < 2:
        return split.target_ratio
    wide = layouts[0].wire_bytes_per_sample
    cheap = min(lay.wire_bytes_per_sample for lay in layouts[1:])
    per_sample = split.link_budget_s * bandwidth / batch_size
    if wide <= cheap:
        return split.target_ratio
    r = (per_sample - cheap) / (wide - cheap)
    return float(min(split.target_ratio, max(0.0, r)))


@dataclass
class DeviceStats:
    """What a device sent and how its gate routed (bytes, samples, samples on path 0)."""

    batches: int = 0
    samples: int = 0
    wide: int = 0
    payload_bytes: int = 0  # codes + labels + path ids + lo/step of every batch (bytes)
    per_path: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Realised share of samples on path 0."""
        return self.wide / self.samples if self.samples else 0.0


class DeviceTrainer:
    """The device side of split training: one `send` then one `finish` per batch."""

    def __init__(self, device: DeviceHalf, layouts: list[PathLayout], split: SplitSpec,
                 opt: torch.optim.Optimizer, target: float) -> None:
        self.device, self.layouts, self.split, self.opt = device, layouts, split, opt
        self.target = target
        self.grad_layouts = grad_layouts(layouts, split.grad_bits)
        self.stats = DeviceStats(per_path=[0] * len(layouts))
        self._pending: tuple[list[torch.Tensor], torch.Tensor] | None = None
        self.step = 0

    def send(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Forward to the cut; the message for this batch (codes quantised per path)."""
        self.device.train()
        self.opt.zero_grad()
        path, codes, g = self.device(x, tau=self.split.tau)
        self._pending = (codes, g)
        blocks = [quantise(z, lay) for z, lay in zip(codes, self.layouts, strict=True)]
        paths = path.numpy().astype(np.uint8)
        message = {"step": self.step, "labels": y.numpy().astype(np.int64), "paths": paths,
                   "blocks": blocks}
        self.step += 1
        counts = np.bincount(paths, minlength=len(self.layouts))
        self.stats.batches += 1
        self.stats.samples += len(paths)
        self.stats.wide += int(counts[0])
        for p, c in enumerate(counts):
            self.stats.per_path[p] += int(c)
        self.stats.payload_bytes += message_bytes(message)
        return message

    def finish(self, grads: Any) -> None:
        """Back-propagate the server's gradient at the codes plus the ratio penalty; step.
        `grads` is the answer's list, checked and decoded first (`BadSplitBatch`, and then
        nothing is trained; the batch stays pending no more)."""
        if self._pending is None:
            raise RuntimeError("finish() without send()")
        codes, g = self._pending
        self._pending = None
        decoded = decode_grads(grads, [int(z.shape[0]) for z in codes], self.grad_layouts)
        outs: list[torch.Tensor] = []
        gin: list[torch.Tensor | None] = []
        for z, grad in zip(codes, decoded, strict=True):
            if grad is not None:
                outs.append(z)
                gin.append(grad)
        if self.device.gate is not None and self.split.ratio_weight > 0:
            # eq. 5: (target_R − μ_R)², μ_R the batch share on path 0 (straight-through).
            outs.append(self.split.ratio_weight * (self.target - g[:, 0].mean()) ** 2)
            gin.append(None)
        torch.autograd.backward(outs, gin)
        self.opt.step()


def message_bytes(message: dict[str, Any]) -> int:
    """Bytes of data in a batch message: codes, lo/step, labels and path ids (bytes)."""
    total = message["labels"].nbytes + message["paths"].nbytes
    for block in message["blocks"]:
        total += len(block["codes"]) + block["lo"].nbytes + block["step"].nbytes
    return int(total)


class ServerTrainer:
    """The server side: the shared server half, its optimiser, and a lock (one batch at a
    time, whichever learner sent it)."""

    def __init__(self, server: ServerHalf, layouts: list[PathLayout], num_classes: int,
                 max_batch: int, opt: torch.optim.Optimizer, grad_bits: int = 32,
                 grad_rounding: str = "nearest") -> None:
        self.server, self.layouts, self.opt = server, layouts, opt
        self.grad_layouts = grad_layouts(layouts, grad_bits)
        self.stochastic = grad_rounding == "stochastic"
        self.num_classes, self.max_batch = num_classes, max_batch
        self.lock = threading.Lock()
        self.batches = 0

    def step(self, message: Any) -> dict[str, Any]:
        """Check and train on one batch; `{"loss", "grads"}` (grads per path, `grad_bits`)."""
        batch = check_batch(message, self.layouts, self.num_classes, self.max_batch)
        leaves = [z.requires_grad_() if z is not None else None for z in batch.codes]
        with self.lock:
            self.server.train()
            self.opt.zero_grad()
            logits = self.server(batch.paths, leaves)
            loss = torch.nn.functional.cross_entropy(logits, batch.labels)
            loss.backward()  # type: ignore[no-untyped-call]
            self.opt.step()
            self.batches += 1
        grads = [None if z is None else z.grad if z.grad is not None else torch.zeros_like(z)
                 for z in leaves]
        return {"loss": float(loss.detach()), "grads": encode_grads(grads, self.grad_layouts,
                                                                    self.stochastic)}
