"""The two halves of a split network: the device's (layers to the cut, encoders, gate) and the
server's (decoders, the rest of the network), and the whole network for inference.

The task's model (a zoo name, a layer spec or a factory returning `nn.Sequential`) is built
once and cut at `split.cut` among its top-level layers. Each pathway gets an encoder on the
device and a decoder on the server (paper fig. 2): for image-like activations [C, H, W] a 3×3
convolution to `channels` and back, for flat ones [F] a linear layer; a path without channels
sends the activations themselves. The gate (paper eq. 1–4) is a small network on the cut
activations whose logits log α pick the path by Gumbel-softmax (eq. 4) while training and by
Gumbel-max sampling (eq. 3) afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from plexus.errors import SpecError
from plexus.spec import SplitSpec
from plexus.split.codec import PathLayout

GATE_HIDDEN = 16


def _encoder_pair(shape: tuple[int, ...], channels: int | None, where: str
                  ) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """(encoder, decoder, code shape) of one path for cut activations shaped `shape`."""
    if channels is None:
        return nn.Identity(), nn.Identity(), shape
    if len(shape) == 3:
        c, h, w = shape
        return (nn.Conv2d(c, channels, 3, padding=1),
                nn.Sequential(nn.Conv2d(channels, c, 3, padding=1), nn.ReLU()),
                (channels, h, w))
    if len(shape) == 1:
        return (nn.Linear(shape[0], channels),
                nn.Sequential(nn.Linear(channels, shape[0]), nn.ReLU()), (channels,))
    raise SpecError(f"{where}: a bottleneck needs the cut activations shaped [C, H, W] or "
                    f"[F], but they are shaped {list(shape)}: move split.cut, or use "
                    "channels: null on this path")


def _gate(shape: tuple[int, ...], paths: int) -> nn.Module:
    pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if len(shape) == 3 else []
    width = shape[0] if len(shape) == 3 else math.prod(shape)
    return nn.Sequential(*pool, nn.Flatten(), nn.Linear(width, GATE_HIDDEN), nn.ReLU(),
                         nn.Linear(GATE_HIDDEN, paths))


class DeviceHalf(nn.Module):
    """Layers up to the cut, one encoder per path, and the gate (None with one path)."""

    def __init__(self, body: nn.Module, encoders: list[nn.Module], gate: nn.Module | None
                 ) -> None:
        super().__init__()
        self.body = body
        self.encoders = nn.ModuleList(encoders)
        self.gate = gate

    def route(self, a: torch.Tensor, *, tau: float | None) -> torch.Tensor:
        """Gate weights g [B, paths]: one-hot per sample; with `tau` (training) a straight-
        through Gumbel-softmax sample (eq. 4) whose gradient reaches the gate, else a Gumbel-
        max sample (eq. 3), so inference routes samples in the proportions training learned
        (an argmax would send every undecided sample down the same path)."""
        n = len(self.encoders)
        if self.gate is None:
            return torch.ones(a.shape[0], 1)
        logits = self.gate(a)
        if tau is not None:
            return nn.functional.gumbel_softmax(logits, tau=tau, hard=True)
        u = torch.rand_like(logits).clamp_(1e-9, 1.0 - 1e-9)
        choice = (logits - torch.log(-torch.log(u))).argmax(1)
        return nn.functional.one_hot(choice, n).to(a.dtype)

    def forward(self, x: torch.Tensor, tau: float | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(path id per sample [B], codes per path [n_p, *code shape], gate weights [B, P]).

        Each path's codes are its encoder's output times the sample's gate weight (1 in the
        forward pass; eq. 1), so the gradient at the codes also trains the gate."""
        a = self.body(x)
        g = self.route(a, tau=tau)
        path = g.argmax(1)
        codes = []
        for p, encoder in enumerate(self.encoders):
            idx = (path == p).nonzero().flatten()
            z = encoder(a[idx])
            codes.append(z * g[idx, p].reshape(-1, *([1] * (z.dim() - 1))))
        return path, codes, g


class ServerHalf(nn.Module):
    """One decoder per path and the layers after the cut."""

    def __init__(self, decoders: list[nn.Module], rest: nn.Module,
                 cut_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.decoders = nn.ModuleList(decoders)
        self.rest = rest
        self.cut_shape = cut_shape

    def forward(self, path: torch.Tensor, codes: list[torch.Tensor | None]) -> torch.Tensor:
        """Logits [B, classes] for samples whose path ids are `path` and codes `codes`."""
        order, parts = [], []
        for p, z in enumerate(codes):
            if z is not None and z.shape[0]:
                order.append((path == p).nonzero().flatten())
                parts.append(self.decoders[p](z))
        h = torch.cat(parts)[torch.argsort(torch.cat(order))]
        return self.rest(h)  # type: ignore[no-any-return]


class SplitNetwork(nn.Module):
    """Device half + the path each sample's gate picks (quantised as on the wire when
    `quantise`) + server half: the trained split model as one network, for inference."""

    def __init__(self, device: DeviceHalf, server: ServerHalf, layouts: list[PathLayout],
                 quantise: bool = True) -> None:
        super().__init__()
        self.device, self.server = device, server
        self.layouts, self.quantise = layouts, quantise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from plexus.split.codec import dequantise, quantise

        path, codes, _ = self.device(x)
        if self.quantise:
            codes = [dequantise(quantise(z, lay), z.shape[0], lay, "codes") if z.shape[0]
                     else z for z, lay in zip(codes, self.layouts, strict=True)]
        return self.server(path, list(codes))  # type: ignore[no-any-return]


def cut_layers(model: nn.Module, cut: int, where: str = "split.cut") -> tuple[nn.Module, nn.Module]:
    """(layers 0..cut-1, layers cut..) of a sequential network."""
    if not isinstance(model, nn.Sequential):
        raise SpecError(f"{where}: split learning cuts the model's top-level layers, so the "
                        f"model must be an nn.Sequential (got {type(model).__name__})")
    if not 1 <= cut < len(model):
        raise SpecError(f"{where}: {cut} is not inside the network: it has {len(model)} "
                        f"top-level layers, so the cut must be 1..{len(model) - 1}")
    layers = list(model.children())
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])


def build_halves(model: nn.Module, split: SplitSpec, input_shape: tuple[int, ...]
                 ) -> tuple[DeviceHalf, ServerHalf, list[PathLayout]]:
    """Cut `model` (freshly built; seed torch first) and add the paths and the gate."""
    body, rest = cut_layers(model, split.cut)
    with torch.no_grad():
        was = body.training
        body.eval()
        shape = tuple(body(torch.zeros(1, *input_shape)).shape[1:])
        body.train(was)
    encoders, decoders, layouts = [], [], []
    for i, path in enumerate(split.paths):
        enc, dec, code_shape = _encoder_pair(shape, path.channels, f"split.paths.{i}")
        encoders.append(enc)
        decoders.append(dec)
        layouts.append(PathLayout(code_shape, path.bits))
    gate = _gate(shape, len(split.paths)) if len(split.paths) > 1 else None
    return DeviceHalf(body, encoders, gate), ServerHalf(decoders, rest, shape), layouts


def split_network(model: nn.Module, split: SplitSpec, input_shape: tuple[int, ...]
                  ) -> SplitNetwork:
    """`model` cut and joined again through its paths: the network a split task trains (its
    state holds `device.*` and `server.*`)."""
    device, server, layouts = build_halves(model, split, input_shape)
    return SplitNetwork(device, server, layouts)


def network_for_task(task: Any) -> SplitNetwork:
    """A fresh split network of a split task (`plexus.spec.TaskSpec` with `split`)."""
    from plexus.models import build_for_task, geometry

    if task.split is None:
        raise SpecError("the task has no split section")
    shape, _ = geometry(task)
    torch.manual_seed(task.seed)
    return split_network(build_for_task(task), task.split, shape)
