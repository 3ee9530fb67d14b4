"""What one split-learning batch carries over the wire, and its checks on arrival.

The device sends, per batch, the labels, the path id of every sample and, for each path, the
codes of the samples that took it, quantised to the path's bits (DynSplit's quantisation layer
after each encoder): 1..8 bits are packed several to a byte with a per-sample minimum and step
(float32 each); 16 / 32 bits are float16 / float32 values. The server answers the gradient of
the loss at each path's (dequantised) codes. Everything from a device is checked before use:
shapes, dtypes, sizes, path ids, labels and finiteness (`BadSplitBatch`).
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
