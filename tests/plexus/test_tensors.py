"""State-dict codec: round trip, and validation against a reference model."""

from __future__ import annotations

import pytest
import torch

from plexus.errors import BadTensors
from plexus.models import build_model
from plexus.tensors import decode_state, encode_state, read_metadata


@pytest.fixture
def reference() -> dict[str, torch.Tensor]:
    return build_model("twonn", (1, 28, 28), 10).state_dict()


def test_round_trip_with_reference(reference: dict[str, torch.Tensor]) -> None:
    payload = encode_state(reference, {"version": 4})
    state, meta = decode_state(payload, reference=reference)
    assert meta == {"version": "4"} and read_metadata(payload) == meta
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_wrong_names_shapes_dtypes_and_nan(reference: dict[str, torch.Tensor]) -> None:
    weight, bias = list(reference)[:2]  # first Linear layer ("1.weight", "1.bias")
    missing = {k: v for k, v in reference.items() if k != weight}
    with pytest.raises(BadTensors, match="missing"):
        decode_state(encode_state(missing), reference=reference)
    reshaped = {**reference, bias: torch.zeros(49)}
    with pytest.raises(BadTensors, match="shape"):
        decode_state(encode_state(reshaped), reference=reference)
    doubled = {**reference, bias: reference[bias].double()}
    with pytest.raises(BadTensors, match="dtype"):
        decode_state(encode_state(doubled), reference=reference)
    poisoned = {**reference, bias: torch.full((50,), float("nan"))}
    with pytest.raises(BadTensors, match="NaN"):
        decode_state(encode_state(poisoned), reference=reference)
    with pytest.raises(BadTensors, match="NaN"):
        decode_state(encode_state(poisoned))


def test_garbage_is_bad_tensors() -> None:
    with pytest.raises(BadTensors):
        decode_state(b"\xff" * 64)
