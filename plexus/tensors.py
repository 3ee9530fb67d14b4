"""State-dict codec: model parameters to safetensors bytes and back, validated on the way in."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plexus.errors import BadTensors

if TYPE_CHECKING:
    import torch


def _dtype_name(value: Any) -> str:
    return str(value.dtype).removeprefix("torch.")


def encode_state(state: Mapping[str, Any], meta: Mapping[str, object] | None = None) -> bytes:
    """Serialise a state dict (torch tensors or numpy arrays) to safetensors bytes.

    Metadata values are stored as strings.
    """
    import torch
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
        # safetensors refuses views that share storage; a contiguous copy is what goes out.
        tensors[str(name)] = tensor.detach().cpu().contiguous().clone()
    metadata = {str(k): str(v) for k, v in (meta or {}).items()}
    return save(tensors, metadata=metadata)


def read_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors payload, without decoding its tensors."""
    if len(data) < 8:
        raise BadTensors("payload is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise BadTensors("safetensors header length runs past the end of the payload")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise BadTensors(f"safetensors header is not JSON: {exc}") from None
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def decode_state(
    data: bytes, reference: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Decode safetensors bytes into `(state_dict, meta)` of torch tensors.

    With a `reference` state dict, every name, shape and dtype must match it and all floating
    values must be finite; otherwise `BadTensors` says which tensor is wrong.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta = read_metadata(data)
    try:
        state = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BadTensors(f"payload is not valid safetensors: {exc}") from None
    if reference is not None:
        validate_state(state, reference)
    else:
        for name, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise BadTensors(f"tensor {name!r} holds NaN or infinite values")
    return state, meta


def validate_state(state: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
    """Check `state` against `reference`: same names, shapes, dtypes; finite floats."""
    import numpy as np

    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    if missing or extra:
        raise BadTensors(
            f"tensor names differ from the model: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}"
        )
    for name, ref in reference.items():
        got = state[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise BadTensors(
                f"tensor {name!r} has shape {tuple(got.shape)}, the model expects "
                f"{tuple(ref.shape)}"
            )
        if _dtype_name(got) != _dtype_name(ref):
            raise BadTensors(
                f"tensor {name!r} has dtype {_dtype_name(got)}, the model expects "
                f"{_dtype_name(ref)}"
            )
        values = got.detach().cpu().numpy() if hasattr(got, "detach") else np.asarray(got)
        if values.dtype.kind == "f" and values.size and not np.isfinite(values).all():
            raise BadTensors(f"tensor {name!r} holds NaN or infinite values")
