"""The device side of a split-learning round (DynSplit, docs/split-learning.md).

The agent runs the layers up to the cut, the gate and the encoders (`plexus.split`), sends one
request per batch (the chosen paths' quantised codes and the labels, in the RPC layer's wire
format, over the client's keep-alive connection) and back-propagates the gradient the
orchestrator answers at the codes. Its target ratio follows its measured bandwidth b_k when
the task sets `split.link_budget_s`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from learner_agent.errors import BadTask

if TYPE_CHECKING:
    from learner_agent.client import OrchestratorClient
    from plexus.spec import TaskSpec


def _finish(trainer: Any, answer: Any) -> None:
    """Back-propagate the orchestrator's answer (`DeviceTrainer.finish` checks the gradients:
    one per path, dtype, shape or size, finite values); BadTask if they do not fit."""
    from plexus.split.codec import BadSplitBatch

    grads = answer.get("grads") if isinstance(answer, dict) else None
    try:
        trainer.finish(grads)
    except BadSplitBatch as exc:
        raise BadTask(f"the orchestrator's split answer: {exc}") from None


def split_round(client: OrchestratorClient, spec: TaskSpec, task_id: int, round: int,
                data: tuple[np.ndarray, np.ndarray], device: dict[str, Any],
                bandwidth: float | None) -> dict[str, Any]:
    """Train the device half `device` on `data` against the orchestrator's server half.

    `bandwidth` (bytes/s, b_k) sets the target ratio under `split.link_budget_s`. Answers the
    trained device half (`params`), `samples_trained`, the realised `ratio` on path 0, the
    `target_ratio` used, `payload_bytes` (codes, labels and path ids sent) and `body_bytes`
    (request bodies, bytes), `seconds`."""
    import torch

    import rpc
    from plexus.errors import BadTensors
    from plexus.split.model import network_for_task
    from plexus.split.steps import DeviceTrainer, link_target, optimiser
    from plexus.tensors import validate_state

    assert spec.split is not None
    net = network_for_task(spec)
    try:
        validate_state(device, net.device.state_dict())
    except BadTensors as exc:
        raise BadTask(f"device half: {exc}") from None
    net.device.load_state_dict(device)
    batch = spec.training.batch_size
    target = link_target(spec.split, net.layouts, batch, bandwidth)
    trainer = DeviceTrainer(net.device, net.layouts, spec.split,
                            optimiser(net.device, spec.training.optimizer, spec.training.lr),
                            target)
    x, y = data
    order = np.random.default_rng(spec.seed + round).permutation(len(y))
    steps = [order[i:i + batch] for i in range(0, len(order), batch)]
    steps = steps[:spec.split.max_batches] if spec.split.max_batches else steps
    body_bytes, t0 = 0, time.monotonic()
    for idx in steps:
        message = trainer.send(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
        body = rpc.encode(message).join()
        body_bytes += len(body)
        answer = client.split_step(task_id, body, rpc.CONTENT_TYPE)
        try:
            decoded = rpc.decode(answer)
        except rpc.PayloadError as exc:
            raise BadTask(f"the orchestrator's split answer: {exc}") from None
        _finish(trainer, decoded)
    return {"params": {k: v.detach() for k, v in net.device.state_dict().items()},
            "samples_trained": trainer.stats.samples, "ratio": trainer.stats.ratio,
            "target_ratio": target, "bandwidth": bandwidth,
            "payload_bytes": trainer.stats.payload_bytes, "body_bytes": body_bytes,
            "seconds": time.monotonic() - t0}


def shard_data(payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The samples of downloaded shards, concatenated."""
    from plexus.errors import BadTensors
    from plexus.shards import decode_shard

    try:
        parts = [decode_shard(p)[:2] for p in payloads]
    except BadTensors as exc:
        raise BadTask(f"shard: {exc}") from None
    if not parts:
        raise BadTask("no shard was given to this learner")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
