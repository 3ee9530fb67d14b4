"""FedAvg: the sample-weighted average of model states (McMahan et al.; SPIN alg. 2, line 10)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
) -> dict[str, torch.Tensor]:
    """Average parameter tensors name by name with weights normalised to sum to one.

    ``weights`` are usually sample counts ``|D_k|`` (SPIN weights ``|D_k| / Σ|D_k|``); any
    non-negative numbers work, since they are divided by their total. Floating tensors are
    averaged in float64 and cast back to their own dtype; integer tensors (e.g. BatchNorm's
    ``num_batches_tracked``) take the value of the state with the largest weight, because a
    fractional average of a counter means nothing.

    Raises ``ValueError`` when there are no states, when the number of weights differs from
    the number of states, when a weight is negative or not finite, when the total weight is not
    positive, or when the states disagree on tensor names or shapes.
    """
    ws, total = _checked_weights(states, weights)
    _check_same_model(states)

    reference = states[0]
    norm = [w / total for w in ws]
    heaviest = max(range(len(ws)), key=lambda i: ws[i])
    out: dict[str, torch.Tensor] = {}
    for name, ref in reference.items():
        if ref.is_floating_point():
            acc = torch.zeros(ref.shape, dtype=torch.float64)
            for state, w in zip(states, norm, strict=True):
                if w == 0.0:
                    continue
                acc.add_(state[name].detach().to(torch.float64), alpha=w)
            out[name] = acc.to(ref.dtype)
        else:
            out[name] = states[heaviest][name].detach().clone()
    return out


def _checked_weights(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> tuple[list[float], float]:
    """The weights as floats and their total, after checking count, sign and total."""
    if len(states) == 0:
        raise ValueError("weighted_average needs at least one state; got none")
    if len(weights) != len(states):
        raise ValueError(
            f"weighted_average got {len(states)} states but {len(weights)} weights; "
            "pass exactly one weight per state"
        )
    ws = [float(w) for w in weights]
    for i, w in enumerate(ws):
        if not math.isfinite(w) or w < 0:
            raise ValueError(
                f"weight {i} is {w}; weights must be finite and non-negative (e.g. sample counts)"
            )
    total = math.fsum(ws)
    if total <= 0:
        raise ValueError(
            f"total weight is {total}; at least one state must carry a positive weight"
        )
    return ws, total


def _check_same_model(states: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Raise unless every state has state 0's tensor names and shapes."""
    reference = states[0]
    names = set(reference)
    for i, state in enumerate(states[1:], start=1):
        other = set(state)
        if other != names:
            missing = sorted(names - other)
            extra = sorted(other - names)
            raise ValueError(
                f"state {i} does not match state 0: missing {missing}, unexpected {extra}; "
                "all states must come from the same model"
            )
        for name in reference:
            if tuple(state[name].shape) != tuple(reference[name].shape):
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(state[name].shape)} in state {i} "
                    f"but {tuple(reference[name].shape)} in state 0; "
                    "all states must come from the same model"
                )
