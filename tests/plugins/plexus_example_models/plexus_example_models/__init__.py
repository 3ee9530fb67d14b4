"""An example model factory: `build_mlp(input_shape, num_classes, hidden=32)`."""

from __future__ import annotations

import math

import torch
from torch import nn


def build_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> nn.Module:
    """A one-hidden-layer MLP with a LayerNorm, for inputs shaped `input_shape`."""
    width = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.LayerNorm(hidden),
                         nn.ReLU(), nn.Linear(hidden, num_classes)).to(torch.float32)
