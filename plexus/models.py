"""The model zoo: TwoNN (thesis 3.4.1), ThreeNN, ConvNet, FashionNet (thesis appendix A), LeNet-5.

Every network ends in raw logits: the thesis's final softmax is folded into the cross-entropy
loss (log-softmax inside `torch.nn.functional.cross_entropy`), which is the numerically stable
way to train the same model. torch is imported inside the functions so importing this module is
cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from plexus.errors import SpecError

if TYPE_CHECKING:
    import torch

MODEL_NAMES: tuple[str, ...] = ("twonn", "threenn", "convnet", "fashionnet", "lenet5")

# Convolutional stacks as (kernel, padding) per conv layer; each conv is followed by a 2×2 max
# pool. Used both to build the layers and to tell whether an input is large enough.
_CONV_STACKS: dict[str, list[tuple[int, int, int]]] = {
    # (out_channels, kernel, padding)
    "convnet": [(6, 3, 0), (16, 3, 0)],  # appendix A, table 6.2
    "fashionnet": [(16, 3, 1), (32, 3, 1)],  # appendix A, table 6.3
    "lenet5": [(6, 5, 2), (16, 5, 0)],  # LeCun et al. 1998, padded so 28×28 gives 5×5×16
}
_CONV_HEADS: dict[str, list[int]] = {
    "convnet": [200, 100],
    "fashionnet": [1000, 500],
    "lenet5": [120, 84],
}
_MLP_HIDDEN: dict[str, list[int]] = {
    "twonn": [50, 20],  # widths [784, 50, 20, 10], thesis 3.4.1
    "threenn": [500, 300, 100],  # appendix A, table 6.1
}


def _spatial_after(name: str, height: int, width: int) -> tuple[int, int]:
    for _, kernel, pad in _CONV_STACKS[name]:
        height = (height + 2 * pad - kernel + 1) // 2
        width = (width + 2 * pad - kernel + 1) // 2
        if height < 1 or width < 1:
            return 0, 0
    return height, width


def model_fits(name: str, input_shape: tuple[int, ...]) -> bool:
    """Whether model `name` can be built for inputs shaped `input_shape` (C, H, W) or (d,)."""
    if name in _MLP_HIDDEN:
        return len(input_shape) >= 1 and math.prod(input_shape) > 0
    if name in _CONV_STACKS:
        if len(input_shape) != 3:
            return False
        h, w = _spatial_after(name, input_shape[1], input_shape[2])
        return h > 0 and w > 0
    return False


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """Build model `name` for inputs shaped `input_shape` and `num_classes` output logits.

    Raises `SpecError` when the name is unknown or the input is too small for the network
    (e.g. ConvNet on 8×8 digits: two 3×3 convolutions and pools leave nothing).
    """
    import torch
    from torch import nn

    if name not in MODEL_NAMES:
        raise SpecError(f"model: unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if num_classes < 2:
        raise SpecError(f"num_classes must be at least 2, got {num_classes}")
    if not model_fits(name, tuple(input_shape)):
        raise SpecError(
            f"model: {name} does not fit inputs shaped {tuple(input_shape)}; "
            "pick an MLP (twonn, threenn) or fashionnet for small images"
        )
    layers: list[nn.Module] = []
    if name in _MLP_HIDDEN:
        width = math.prod(input_shape)
        layers.append(nn.Flatten())
        for hidden in _MLP_HIDDEN[name]:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
    else:
        channels, height, width_px = input_shape
        for out_channels, kernel, pad in _CONV_STACKS[name]:
            layers += [
                nn.Conv2d(channels, out_channels, kernel_size=kernel, padding=pad),
                nn.MaxPool2d(2, 2),
                nn.ReLU(),
            ]
            channels = out_channels
        h, w = _spatial_after(name, height, width_px)
        width = channels * h * w
        layers.append(nn.Flatten())
        for hidden in _CONV_HEADS[name]:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    model.to(torch.float32)
    return model


def model_bytes(model: torch.nn.Module) -> int:
    """Size of the model's parameters and buffers in bytes (Ω_m of thesis eq. 3.1)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
