"""Every model in the zoo trains one step on every dataset it fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plexus.datasets import dataset_geometry, load_dataset
from plexus.errors import SpecError
from plexus.models import MODEL_NAMES, build_model, model_bytes, model_fits
from plexus.spec import DatasetSpec
from plexus.training import train

BUILT_IN = ("mnist5k", "digits", "synthetic")
PAIRS = [(m, d) for m in MODEL_NAMES for d in BUILT_IN if model_fits(m, dataset_geometry(d)[0])]


def test_fit_table() -> None:
    # 8×8 digits are too small for ConvNet and LeNet-5; 28×28 fits everything.
    assert {m for m in MODEL_NAMES if model_fits(m, (1, 8, 8))} == {
        "twonn",
        "threenn",
        "fashionnet",
    }
    assert all(model_fits(m, (1, 28, 28)) for m in MODEL_NAMES)
    assert len(PAIRS) == 13


@pytest.mark.parametrize(("model_name", "dataset_name"), PAIRS)
def test_one_step_on_every_dataset_it_fits(model_name: str, dataset_name: str) -> None:
    data = load_dataset(DatasetSpec(name=dataset_name, samples=200), seed=0)
    torch.manual_seed(0)
    model = build_model(model_name, data.input_shape, data.num_classes)
    before = [p.detach().clone() for p in model.parameters()]
    result = train(
        model,
        data.train_x[:16],
        data.train_y[:16],
        passes=1,
        batch_size=16,
        optimizer="sgd",
        lr=0.1,
    )
    assert result.samples_trained == 16 and result.batches == 1
    assert np.isfinite(result.loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert model(torch.from_numpy(data.test_x[:3])).shape == (3, data.num_classes)


def test_twonn_has_thesis_widths() -> None:
    model = build_model("twonn", (1, 28, 28), 10)
    widths = [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    assert widths == [(784, 50), (50, 20), (20, 10)]
    assert model_bytes(model) == 4 * (784 * 50 + 50 + 50 * 20 + 20 + 20 * 10 + 10)


def test_appendix_a_flatten_sizes() -> None:
    conv = build_model("convnet", (1, 28, 28), 10)
    fashion = build_model("fashionnet", (1, 28, 28), 10)
    firsts = [
        next(m for m in net.modules() if isinstance(m, torch.nn.Linear)) for net in (conv, fashion)
    ]
    assert [f.in_features for f in firsts] == [400, 1568]  # appendix A, tables 6.2 and 6.3


def test_unknown_or_unfit_model_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="unknown model"):
        build_model("vgg", (1, 28, 28), 10)
    with pytest.raises(SpecError, match="does not fit"):
        build_model("convnet", (1, 8, 8), 10)
