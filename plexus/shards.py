"""Shards: fixed-size slices of a training split (i.i.d. or Dirichlet by label) and their codec.

A shard travels as safetensors with tensors `x` (float32) and `y` (int64) and string metadata;
decoding gives back the very same bytes (bit-exact).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from plexus.errors import BadTensors, DatasetError
from plexus.spec import PartitionSpec
from plexus.tensors import read_metadata


def partition(labels: np.ndarray, spec: PartitionSpec, seed: int) -> list[np.ndarray]:
    """Cut sample indices into shards of exactly `spec.shard_size` samples each.

    `iid`: a seeded permutation cut into consecutive slices. `dirichlet`: each shard draws its
    class mix from Dirichlet(α·1) and fills it from what is left of each class (the SPIN
    paper's non-i.i.d. setting uses α = 1). Leftover samples (fewer than a shard) are unused.
    Returns int64 index arrays into `labels`.
    """
    labels = np.asarray(labels)
    size = spec.shard_size
    count = len(labels) // size
    if count == 0:
        raise DatasetError(
            f"partition.shard_size {size} is larger than the training split "
            f"({len(labels)} samples); use a smaller shard size"
        )
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        order = rng.permutation(len(labels)).astype(np.int64)
        return [order[i * size : (i + 1) * size] for i in range(count)]
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)).astype(np.int64) for c in classes]
    used = np.zeros(len(classes), dtype=np.int64)
    shards: list[np.ndarray] = []
    for _ in range(count):
        left = np.array([len(p) for p in pools]) - used
        mix = rng.dirichlet(np.full(len(classes), spec.alpha))
        want = rng.multinomial(size, mix)
        take = np.minimum(want, left)
        short = size - int(take.sum())
        # Classes that ran dry hand their quota to classes with samples left, in proportion
        # to the shard's own mix so the skew is kept as far as the data allows.
        while short > 0:
            room = left - take
            weights = np.where(room > 0, mix + 1e-12, 0.0)
            extra = rng.multinomial(short, weights / weights.sum())
            extra = np.minimum(extra, room)
            take += extra
            short = size - int(take.sum())
        parts = [pools[c][used[c] : used[c] + take[c]] for c in range(len(classes))]
        used += take
        shard = np.concatenate(parts)
        rng.shuffle(shard)
        shards.append(shard)
    return shards


def encode_shard(x: np.ndarray, y: np.ndarray, meta: Mapping[str, object] | None = None) -> bytes:
    """Serialise one shard to safetensors bytes (`x` float32, `y` int64, metadata as strings)."""
    from safetensors.numpy import save

    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y)
    if x.dtype != np.float32 or y.dtype != np.int64:
        raise BadTensors(f"a shard needs x float32 and y int64, got {x.dtype} and {y.dtype}")
    if len(x) != len(y):
        raise BadTensors(f"shard x has {len(x)} samples but y has {len(y)}")
    metadata = {str(k): str(v) for k, v in (meta or {}).items()}
    return save({"x": x, "y": y}, metadata=metadata)


def decode_shard(data: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Decode shard bytes into `(x, y, meta)`; raise `BadTensors` on anything malformed."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(data)
        meta = read_metadata(data)
    except (SafetensorError, ValueError, OSError, BadTensors) as exc:
        raise BadTensors(f"shard payload is not valid safetensors: {exc}") from None
    if set(tensors) != {"x", "y"}:
        raise BadTensors(f"a shard holds tensors x and y, got {sorted(tensors)}")
    x, y = tensors["x"], tensors["y"]
    if x.dtype != np.float32 or y.dtype != np.int64 or len(x) != len(y):
        raise BadTensors(
            f"shard tensors are x {x.dtype}{x.shape} and y {y.dtype}{y.shape}; "
            "expected float32 x and int64 y of equal length"
        )
    return x, y, meta
