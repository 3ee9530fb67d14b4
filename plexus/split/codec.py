"""What one split-learning batch carries over the wire, and its checks on arrival.

The device sends, per batch, the labels, the path id of every sample and, for each path, the
codes of the samples that took it, quantised to the path's bits (DynSplit's quantisation layer
after each encoder): 1..8 bits are packed several to a byte with a per-sample minimum and step
(float32 each); 16 / 32 bits are float16 / float32 values. The server answers the gradient of
the loss at each path's (dequantised) codes: float32 arrays, or (`split.grad_bits` < 32) a
block in the same format, quantised symmetrically so that a zero gradient stays zero
(`quantise_grad`). Everything from a device is checked before use: shapes, dtypes, sizes, path
ids, labels and finiteness (`BadSplitBatch`); the device checks the gradients it gets back the
same way (`dequantise_grad`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from plexus.errors import PlexusError

MESSAGE_KEYS = frozenset({"step", "labels", "paths", "blocks"})
BLOCK_KEYS = frozenset({"codes", "lo", "step"})


class BadSplitBatch(PlexusError, ValueError):
    """A split batch from a device does not fit the task (shape, size, dtype, ids, values)."""


@dataclass(frozen=True)
class PathLayout:
    """What path `p` sends per sample: the code shape and the quantisation bits."""

    shape: tuple[int, ...]
    bits: int

    @property
    def values(self) -> int:
        """Numbers per sample."""
        return math.prod(self.shape)

    @property
    def bytes_per_sample(self) -> int:
        """Code bytes per sample (bytes), without the per-sample minimum and step."""
        if self.bits >= 16:
            return self.values * self.bits // 8
        return math.ceil(self.values * self.bits / 8)

    @property
    def wire_bytes_per_sample(self) -> int:
        """Bytes per sample on the wire for this path's data (codes + minimum + step)."""
        return self.bytes_per_sample + (8 if self.bits < 16 else 0)


def quantise(z: torch.Tensor, layout: PathLayout) -> dict[str, Any]:
    """The block one path sends for codes `z` ([n, *shape], float): packed bytes + lo/step."""
    n = z.shape[0]
    flat = z.detach().reshape(n, layout.values).to(torch.float32)
    empty = np.zeros(0, np.float32)
    if layout.bits == 32:
        return {"codes": flat.numpy().tobytes(), "lo": empty, "step": empty}
    if layout.bits == 16:
        return {"codes": flat.to(torch.float16).numpy().tobytes(), "lo": empty, "step": empty}
    levels = (1 << layout.bits) - 1
    lo = flat.min(1).values if n else torch.zeros(0)
    hi = flat.max(1).values if n else torch.zeros(0)
    step = torch.where(hi > lo, (hi - lo) / levels, torch.ones_like(lo))
    q = torch.round((flat - lo[:, None]) / step[:, None]).clamp_(0, levels).to(torch.uint8)
    return {"codes": _pack(q.numpy(), layout.bits), "lo": lo.numpy().astype(np.float32),
            "step": step.numpy().astype(np.float32)}


def _pack(q: np.ndarray, bits: int) -> bytes:
    """Pack each row of `q` (uint8 values < 2**bits) into ceil(m·bits/8) bytes."""
    if bits == 8:
        return q.tobytes()
    per = 8 // bits
    n, m = q.shape
    padded = np.zeros((n, -(-m // per) * per), np.uint8)
    padded[:, :m] = q
    groups = padded.reshape(n, -1, per)
    out = np.zeros(groups.shape[:2], np.uint8)
    for j in range(per):
        out |= groups[:, :, j] << np.uint8(j * bits)
    return out.tobytes()


def _unpack(raw: np.ndarray, n: int, m: int, bits: int) -> np.ndarray:
    if bits == 8:
        return raw.reshape(n, m)
    per = 8 // bits
    rows = raw.reshape(n, -1)
    mask = np.uint8((1 << bits) - 1)
    parts = [(rows >> np.uint8(j * bits)) & mask for j in range(per)]
    return np.stack(parts, axis=2).reshape(n, -1)[:, :m]


def _array(value: Any, name: str, dtype: type, n: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != (n,):
        got = (f"{value.dtype} {list(value.shape)}" if isinstance(value, np.ndarray)
               else type(value).__name__)
        raise BadSplitBatch(f"{name} must be a {np.dtype(dtype).name} array shaped [{n}], "
                            f"got {got}")
    return value


def dequantise(block: Any, n: int, layout: PathLayout, where: str) -> torch.Tensor:
    """The float32 codes [n, *shape] of one path's block, after checking every part of it."""
    if not isinstance(block, dict) or set(block) != BLOCK_KEYS:
        raise BadSplitBatch(f"{where} must be a mapping with keys {sorted(BLOCK_KEYS)}")
    codes = block["codes"]
    want = n * layout.bytes_per_sample
    if not isinstance(codes, bytes | bytearray | memoryview) or len(codes) != want:
        size = len(codes) if isinstance(codes, bytes | bytearray | memoryview) else None
        raise BadSplitBatch(f"{where}.codes must be {want} bytes ({n} samples × "
                            f"{layout.bytes_per_sample} bytes at {layout.bits} bits), got {size}")
    raw = np.frombuffer(codes, np.uint8)
    float_path = layout.bits >= 16
    lo = _array(block["lo"], f"{where}.lo", np.float32, 0 if float_path else n)
    step = _array(block["step"], f"{where}.step", np.float32, 0 if float_path else n)
    if float_path:
        dtype = np.float16 if layout.bits == 16 else np.float32
        values = raw.view(dtype).astype(np.float32).reshape(n, layout.values)
    else:
        if not (np.isfinite(lo).all() and np.isfinite(step).all() and (step >= 0).all()):
            raise BadSplitBatch(f"{where}: lo and step must be finite, step ≥ 0")
        q = _unpack(raw, n, layout.values, layout.bits).astype(np.float32)
        values = lo[:, None] + q * step[:, None]
    if not np.isfinite(values).all():
        raise BadSplitBatch(f"{where}: the codes hold NaN or ±Inf")
    return torch.from_numpy(np.ascontiguousarray(values)).reshape(n, *layout.shape)


def quantise_grad(g: torch.Tensor, layout: PathLayout, stochastic: bool = False) -> Any:
    """What the server returns for the gradient `g` ([n, *shape]) at one path's codes, in
    `layout.bits`: a float32 array (32 bits), or (2, 4, 8 bits) a block like `quantise`'s,
    quantised per sample and symmetrically: codes q = round(g / step) + h with
    h = 2**(bits−1) − 1 and step = max|g| / h, sent with lo = −h·step, so that the decoded
    lo + q·step is 0 exactly where g is, and the error is at most step / 2. `stochastic`:
    round up with probability equal to the fraction instead (unbiased: E[decoded] = g, error
    under one step). (Not float16: gradients are often smaller than its normal range.)"""
    flat = g.detach().reshape(g.shape[0], layout.values).to(torch.float32)
    if layout.bits == 32:
        return flat.numpy().reshape(g.shape)
    if layout.bits not in (2, 4, 8):
        raise ValueError(f"gradients are sent in 2, 4, 8 or 32 bits, not {layout.bits}")
    half = (1 << (layout.bits - 1)) - 1
    peak = flat.abs().amax(1) if flat.shape[0] else torch.zeros(0)
    step = torch.where(peak > 0, peak / half, torch.ones_like(peak))
    scaled = flat / step[:, None]
    rounded = (torch.floor(scaled + torch.rand_like(scaled)) if stochastic
               else torch.round(scaled))
    q = (rounded + half).clamp_(0, 2 * half).to(torch.uint8)
    return {"codes": _pack(q.numpy(), layout.bits),
            "lo": (-half * step).numpy().astype(np.float32),
            "step": step.numpy().astype(np.float32)}


def dequantise_grad(value: Any, n: int, layout: PathLayout, where: str) -> torch.Tensor:
    """The float32 gradient [n, *shape] of one path from the server's answer (`quantise_grad`),
    checked: dtype, shape or size, finiteness (`BadSplitBatch`)."""
    if layout.bits < 32:
        return dequantise(value, n, layout, where)
    if (not isinstance(value, np.ndarray) or value.dtype != np.float32
            or value.shape != (n, *layout.shape)):
        got = (f"{value.dtype} {list(value.shape)}" if isinstance(value, np.ndarray)
               else type(value).__name__)
        raise BadSplitBatch(f"{where} must be a float32 array shaped {[n, *layout.shape]}, "
                            f"got {got}")
    if not np.isfinite(value).all():
        raise BadSplitBatch(f"{where} holds NaN or ±Inf")
    return torch.from_numpy(np.array(value, np.float32))


def grad_layouts(layouts: list[PathLayout], bits: int) -> list[PathLayout]:
    """The layouts of the gradients returned at each path's codes (`split.grad_bits`)."""
    return [PathLayout(lay.shape, bits) for lay in layouts]


def encode_grads(grads: list[torch.Tensor | None], layouts: list[PathLayout],
                 stochastic: bool = False) -> list[Any]:
    """The `grads` of the server's answer: per path, `quantise_grad` of its gradient, or an
    empty array / block for a path no sample took (`layouts`: `grad_layouts`)."""
    out: list[Any] = []
    for g, lay in zip(grads, layouts, strict=True):
        if g is not None:
            out.append(quantise_grad(g, lay, stochastic))
        elif lay.bits == 32:
            out.append(np.zeros(0, np.float32))
        else:
            out.append(quantise(torch.zeros((0, *lay.shape)), lay))
    return out


def decode_grads(grads: Any, counts: list[int], layouts: list[PathLayout]
                 ) -> list[torch.Tensor | None]:
    """The float32 gradient per path of the server's answer (None for a path no sample took,
    whose entry must be empty), every part checked (`BadSplitBatch`)."""
    if not isinstance(grads, list) or len(grads) != len(layouts):
        raise BadSplitBatch(f"grads must be a list of {len(layouts)} (one per path)")
    out: list[torch.Tensor | None] = []
    for p, (g, n, lay) in enumerate(zip(grads, counts, layouts, strict=True)):
        if n:
            out.append(dequantise_grad(g, n, lay, f"grads.{p}"))
        elif lay.bits == 32:
            if not isinstance(g, np.ndarray) or g.size != 0:
                raise BadSplitBatch(f"grads.{p}: no sample took this path, so it must be empty")
            out.append(None)
        else:
            _empty(g, f"grads.{p}")
            out.append(None)
    return out


@dataclass(frozen=True)
class Batch:
    """One checked batch: labels [B] int64, path ids [B] int64, codes per path (or None)."""

    step: int
    labels: torch.Tensor
    paths: torch.Tensor
    codes: list[torch.Tensor | None]


def check_batch(message: Any, layouts: list[PathLayout], num_classes: int, max_batch: int
                ) -> Batch:
    """Validate a device's batch message and return its decoded parts (`BadSplitBatch`)."""
    if not isinstance(message, dict) or set(message) != MESSAGE_KEYS:
        raise BadSplitBatch(f"a split batch is a mapping with keys {sorted(MESSAGE_KEYS)}")
    step = message["step"]
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 2**62:
        raise BadSplitBatch(f"step must be an integer ≥ 0, got {step!r}")
    labels, paths = message["labels"], message["paths"]
    b = labels.shape[0] if isinstance(labels, np.ndarray) and labels.ndim == 1 else -1
    if not 1 <= b <= max_batch:
        raise BadSplitBatch(f"labels must be a 1-D int64 array of 1..{max_batch} samples "
                            f"(the task's batch size)")
    _array(labels, "labels", np.int64, b)
    _array(paths, "paths", np.uint8, b)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise BadSplitBatch(f"labels must be in 0..{num_classes - 1}")
    if paths.max() >= len(layouts):
        raise BadSplitBatch(f"path ids must be in 0..{len(layouts) - 1}, got {int(paths.max())}")
    blocks = message["blocks"]
    if not isinstance(blocks, list) or len(blocks) != len(layouts):
        raise BadSplitBatch(f"blocks must be a list of {len(layouts)} (one per path)")
    counts = np.bincount(paths, minlength=len(layouts))
    codes: list[torch.Tensor | None] = []
    for p, blk in enumerate(blocks):
        if counts[p]:
            codes.append(dequantise(blk, int(counts[p]), layouts[p], f"blocks.{p}"))
        else:
            _empty(blk, f"blocks.{p}")
            codes.append(None)
    return Batch(step, torch.from_numpy(labels.copy()), torch.from_numpy(paths.astype(np.int64)),
                 codes)


def _empty(block: Any, where: str) -> None:
    ok = (isinstance(block, dict) and set(block) == BLOCK_KEYS
          and isinstance(block["codes"], bytes | bytearray | memoryview)
          and len(block["codes"]) == 0
          and all(isinstance(block[k], np.ndarray) and block[k].size == 0
                  for k in ("lo", "step")))
    if not ok:
        raise BadSplitBatch(f"{where}: no sample took this path, so its block must be empty")
