"""Tests for FedAvg's weighted average of model states."""

from __future__ import annotations

import pytest
import torch

from orchestrator.aggregation.fedavg import weighted_average


def _state(value: float) -> dict[str, torch.Tensor]:
    return {
        "w": torch.full((2, 3), value, dtype=torch.float32),
        "b": torch.full((3,), value, dtype=torch.float32),
        "count": torch.tensor(int(value), dtype=torch.int64),
    }


def test_weights_are_normalised_sample_counts() -> None:
    # Arrange: |D_1| = 10, |D_2| = 30 -> weights 1/4 and 3/4 (SPIN alg. 2).
    states = [_state(1.0), _state(5.0)]
    # Act
    out = weighted_average(states, [10, 30])
    # Assert
    assert torch.allclose(out["w"], torch.full((2, 3), 4.0))
    assert torch.allclose(out["b"], torch.full((3,), 4.0))
    assert out["w"].dtype == torch.float32
    # Integer tensors come from the heaviest state, not a fractional mean.
    assert out["count"].item() == 5
    assert out["count"].dtype == torch.int64


def test_scaling_all_weights_changes_nothing() -> None:
    states = [_state(1.0), _state(2.0), _state(7.0)]
    a = weighted_average(states, [1, 2, 3])
    b = weighted_average(states, [100, 200, 300])
    for name in a:
        assert torch.equal(a[name], b[name])


def test_inputs_are_not_modified() -> None:
    states = [_state(1.0), _state(3.0)]
    out = weighted_average(states, [1, 1])
    out["w"].add_(100.0)
    assert torch.equal(states[0]["w"], torch.full((2, 3), 1.0))


def test_zero_weight_state_is_ignored() -> None:
    out = weighted_average([_state(1.0), _state(9.0)], [1.0, 0.0])
    assert torch.allclose(out["w"], torch.full((2, 3), 1.0))


@pytest.mark.parametrize(
    ("states", "weights", "message"),
    [
        ([], [], "at least one state"),
        ([_state(1.0)], [1.0, 2.0], "1 states but 2 weights"),
        ([_state(1.0), _state(2.0)], [0.0, 0.0], "total weight"),
        ([_state(1.0)], [-1.0], "non-negative"),
        ([_state(1.0)], [float("nan")], "finite"),
        ([_state(1.0), {"w": torch.zeros(2, 3)}], [1.0, 1.0], "missing"),
        (
            [_state(1.0), {**_state(1.0), "w": torch.zeros(3, 2)}],
            [1.0, 1.0],
            "shape",
        ),
    ],
)
def test_bad_input_raises_value_error(
    states: list[dict[str, torch.Tensor]], weights: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        weighted_average(states, weights)
