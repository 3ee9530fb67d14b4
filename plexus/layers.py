"""Networks declared as data: a whitelisted set of `torch.nn` layers and their arguments.

A task spec's `model: {layers: [...]}` is a list of these, applied in order (`nn.Sequential`).
Each entry names its `type` and that layer's own arguments; the input-side sizes
(`in_features`, `in_channels`, `num_features`, LayerNorm's `normalized_shape`) may be left out
and are inferred from the shape flowing into the layer, and a `Linear` without `out_features`
gets the dataset's class count. `Residual` adds its `layers` to its input (through `shortcut`
when given), enough for small ResNets.

Nothing here runs code from the network: the spec is validated by pydantic against the
whitelist (unknown layer or argument: a `SpecError` naming it), and `plan_layers` traces the
shapes on torch's meta device, allocating nothing, so a mismatch is reported with the layer
and the shapes before any parameter exists. torch is imported inside the functions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plexus.errors import SpecError

if TYPE_CHECKING:
    import torch

PosInt = Annotated[int, Field(ge=1)]
NonNeg = Annotated[int, Field(ge=0)]
Size1 = PosInt | tuple[PosInt]
Size2 = PosInt | tuple[PosInt, PosInt]
Pad2 = NonNeg | tuple[NonNeg, NonNeg] | Literal["same", "valid"]
Pad1 = NonNeg | tuple[NonNeg] | Literal["same", "valid"]

# Largest network a spec may declare (parameters): building it must never exhaust the
# orchestrator's memory because of a typo (2^28 float32 parameters are 1 GiB).
MAX_PARAMETERS = 2**28


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Linear(_Layer):
    type: Literal["Linear"]
    out_features: PosInt | None = None  # None: the dataset's class count
    in_features: PosInt | None = None
    bias: bool = True


class Conv1d(_Layer):
    type: Literal["Conv1d"]
    out_channels: PosInt
    kernel_size: Size1
    stride: Size1 = 1
    padding: Pad1 = 0
    dilation: Size1 = 1
    groups: PosInt = 1
    bias: bool = True
    in_channels: PosInt | None = None


class Conv2d(_Layer):
    type: Literal["Conv2d"]
    out_channels: PosInt
    kernel_size: Size2
    stride: Size2 = 1
    padding: Pad2 = 0
    dilation: Size2 = 1
    groups: PosInt = 1
    bias: bool = True
    in_channels: PosInt | None = None


class BatchNorm1d(_Layer):
    type: Literal["BatchNorm1d"]
    num_features: PosInt | None = None
    eps: float = Field(1e-5, gt=0)
    momentum: float = Field(0.1, gt=0, le=1)
    affine: bool = True


class BatchNorm2d(_Layer):
    type: Literal["BatchNorm2d"]
    num_features: PosInt | None = None
    eps: float = Field(1e-5, gt=0)
    momentum: float = Field(0.1, gt=0, le=1)
    affine: bool = True


class LayerNorm(_Layer):
    type: Literal["LayerNorm"]
    normalized_shape: PosInt | tuple[PosInt, ...] | None = None  # None: the last dimension
    eps: float = Field(1e-5, gt=0)
    elementwise_affine: bool = True


class ReLU(_Layer):
    type: Literal["ReLU"]


class GELU(_Layer):
    type: Literal["GELU"]
    approximate: Literal["none", "tanh"] = "none"


class Tanh(_Layer):
    type: Literal["Tanh"]


class Sigmoid(_Layer):
    type: Literal["Sigmoid"]


class SiLU(_Layer):
    type: Literal["SiLU"]


class LeakyReLU(_Layer):
    type: Literal["LeakyReLU"]
    negative_slope: float = Field(0.01, ge=0)


class MaxPool1d(_Layer):
    type: Literal["MaxPool1d"]
    kernel_size: Size1
    stride: Size1 | None = None
    padding: Annotated[int, Field(ge=0)] = 0


class MaxPool2d(_Layer):
    type: Literal["MaxPool2d"]
    kernel_size: Size2
    stride: Size2 | None = None
    padding: Annotated[int, Field(ge=0)] = 0


class AvgPool1d(_Layer):
    type: Literal["AvgPool1d"]
    kernel_size: Size1
    stride: Size1 | None = None
    padding: Annotated[int, Field(ge=0)] = 0


class AvgPool2d(_Layer):
    type: Literal["AvgPool2d"]
    kernel_size: Size2
    stride: Size2 | None = None
    padding: Annotated[int, Field(ge=0)] = 0


class AdaptiveAvgPool1d(_Layer):
    type: Literal["AdaptiveAvgPool1d"]
    output_size: PosInt


class AdaptiveAvgPool2d(_Layer):
    type: Literal["AdaptiveAvgPool2d"]
    output_size: Size2


class Dropout(_Layer):
    type: Literal["Dropout"]
    p: float = Field(0.5, ge=0, lt=1)


class Flatten(_Layer):
    type: Literal["Flatten"]
    start_dim: int = 1
    end_dim: int = -1


class Unflatten(_Layer):
    type: Literal["Unflatten"]
    dim: int = 1
    unflattened_size: tuple[PosInt, ...]


class Embedding(_Layer):
    """Inputs are token ids (the data's values, cast to integers)."""

    type: Literal["Embedding"]
    num_embeddings: PosInt
    embedding_dim: PosInt


class Residual(_Layer):
    """`layers(x) + shortcut(x)`; `shortcut` empty is the identity (the shapes must agree)."""

    type: Literal["Residual"]
    layers: tuple[LayerSpec, ...] = Field(min_length=1)
    shortcut: tuple[LayerSpec, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _bare_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: bare_layers(v) if k in ("layers", "shortcut") else v
                    for k, v in data.items()}
        return data


LayerSpec = Annotated[
    Linear | Conv1d | Conv2d | BatchNorm1d | BatchNorm2d | LayerNorm | ReLU | GELU | Tanh
    | Sigmoid | SiLU | LeakyReLU | MaxPool1d | MaxPool2d | AvgPool1d | AvgPool2d
    | AdaptiveAvgPool1d | AdaptiveAvgPool2d | Dropout | Flatten | Unflatten | Embedding
    | Residual,
    Field(discriminator="type"),
]
Residual.model_rebuild()

LAYER_TYPES: tuple[str, ...] = (
    "Linear", "Conv1d", "Conv2d", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "ReLU", "GELU",
    "Tanh", "Sigmoid", "SiLU", "LeakyReLU", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "Dropout", "Flatten", "Unflatten", "Embedding",
    "Residual",
)


def bare_layers(value: Any) -> Any:
    """A layer list with bare names (`- ReLU`) spelled as mappings (`{type: ReLU}`)."""
    if isinstance(value, list | tuple):
        return [{"type": v} if isinstance(v, str) else v for v in value]
    return value


# -- building -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPlan:
    """One layer traced on the meta device: where it is, its shapes per sample, its size."""

    where: str  # e.g. "model.layers.3 (Linear)"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    parameters: int


@dataclass(frozen=True)
class NetworkPlan:
    """A whole network traced: per-layer plans, total parameters, activation values/sample."""

    layers: tuple[LayerPlan, ...]
    out_shape: tuple[int, ...]
    parameters: int
    activations: int  # values produced per sample, summed over every layer (and the input)


def _inferred(layer: _Layer, shape: tuple[int, ...], num_classes: int, where: str
              ) -> dict[str, Any]:
    """The layer's torch arguments with the input-side sizes filled in from `shape`."""
    args = layer.model_dump(exclude={"type"})
    name = type(layer).__name__
    if name == "Linear":
        _check_size(where, "in_features", args.pop("in_features"), shape[-1] if shape else 0,
                    shape, "the last dimension")
        args["in_features"] = shape[-1]
        if args["out_features"] is None:
            args["out_features"] = num_classes
    elif name in ("Conv1d", "Conv2d", "BatchNorm1d", "BatchNorm2d"):
        key = "in_channels" if name.startswith("Conv") else "num_features"
        want = 2 if name.endswith("1d") else 3
        if name == "BatchNorm1d" and len(shape) == 1:
            want = 1  # BatchNorm1d also takes flat features (batch, C)
        if len(shape) != want:
            raise SpecError(f"{where}: takes inputs of {want} dimensions per sample "
                            f"({'C, L' if want == 2 else 'C' if want == 1 else 'C, H, W'}) "
                            f"but gets shape {list(shape)}")
        _check_size(where, key, args.pop(key), shape[0], shape, "the channel dimension")
        args[key] = shape[0]
    elif name == "LayerNorm":
        if args["normalized_shape"] is None:
            args["normalized_shape"] = shape[-1:] if shape else ()
        norm = args["normalized_shape"]
        norm = (norm,) if isinstance(norm, int) else tuple(norm)
        if tuple(shape[len(shape) - len(norm):]) != norm:
            raise SpecError(f"{where}: normalized_shape {list(norm)} does not match the end "
                            f"of the input shape {list(shape)}")
        args["normalized_shape"] = norm
    return args


def _check_size(where: str, key: str, given: int | None, actual: int, shape: tuple[int, ...],
                what: str) -> None:
    if given is not None and given != actual:
        raise SpecError(f"{where}: {key} is {given} but the input is shaped {list(shape)} "
                        f"({what} is {actual}); drop {key} to infer it")


def _module(layer: _Layer, shape: tuple[int, ...], num_classes: int, where: str,
            shapes: dict[str, tuple[int, ...]], trace: bool) -> torch.nn.Module:
    from torch import nn

    name = type(layer).__name__
    residual, embedding = _blocks()
    if isinstance(layer, Residual):
        body = _sequence(layer.layers, shape, num_classes, f"{where}.layers", shapes, trace)
        short = (_sequence(layer.shortcut, shape, num_classes, f"{where}.shortcut", shapes,
                           trace) if layer.shortcut else nn.Identity())
        return residual(body, short)  # type: ignore[no-any-return]
    args = _inferred(layer, shape, num_classes, where)
    if name == "Embedding":
        return embedding(**args)  # type: ignore[no-any-return]
    cls: type[nn.Module] = getattr(nn, name)
    return cls(**args)


def _sequence(layers: tuple[Any, ...], shape: tuple[int, ...], num_classes: int, where: str,
              shapes: dict[str, tuple[int, ...]], trace: bool) -> torch.nn.Sequential:
    """Layers built one after the other on the current default device. With `trace` (on the
    meta device) each layer's input shape is traced and recorded in `shapes`; without, the
    recorded shapes are used (a real module cannot take meta inputs)."""
    from torch import nn

    mods: list[nn.Module] = []
    for i, layer in enumerate(layers):
        at = f"{where}.{i} ({layer.type})"
        if trace:
            shapes[at] = shape
        else:
            shape = shapes[at]
        mod = _module(layer, shape, num_classes, at, shapes, trace)
        if trace:
            shape = _trace(mod, shape, at)
        mods.append(mod)
    return nn.Sequential(*mods)


def _trace(mod: torch.nn.Module, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    """The output shape per sample of meta module `mod` for inputs shaped `shape`."""
    import torch

    was = mod.training
    mod.eval()
    try:
        with torch.no_grad():
            out = mod(torch.empty((2, *shape), device="meta"))
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"{where}: cannot take inputs shaped {list(shape)}: {msg}") from None
    finally:
        mod.train(was)
    mismatch = getattr(mod, "mismatch", None)
    if mismatch is not None:
        raise SpecError(f"{where}: its layers give {list(mismatch[0])} but its shortcut "
                        f"gives {list(mismatch[1])}; add a shortcut that maps the input "
                        "to the same shape (e.g. a 1×1 Conv2d with the same stride)")
    return tuple(int(d) for d in out.shape[1:])


def plan_layers(layers: tuple[Any, ...], input_shape: tuple[int, ...], num_classes: int,
                where: str = "model.layers") -> NetworkPlan:
    """Trace `layers` for inputs shaped `input_shape` on the meta device (nothing allocated).

    Raises `SpecError` naming the layer and the shapes when one cannot take its input, when
    the network has more than `MAX_PARAMETERS` parameters, or when its output is not one logit
    per class.
    """
    return _plan(tuple(layers), tuple(input_shape), num_classes, where, {})


def _plan(layers: tuple[Any, ...], input_shape: tuple[int, ...], num_classes: int, where: str,
          shapes: dict[str, tuple[int, ...]]) -> NetworkPlan:
    import torch

    with torch.device("meta"):
        net = _sequence(layers, input_shape, num_classes, where, shapes, True)
    plans: list[LayerPlan] = []
    shape = input_shape
    activations = math.prod(shape)
    for i, (layer, mod) in enumerate(zip(layers, net, strict=True)):
        at = f"{where}.{i} ({layer.type})"
        out = _trace(mod, shape, at)
        params = sum(p.numel() for p in mod.parameters())
        plans.append(LayerPlan(at, shape, out, params))
        activations += math.prod(out) * (2 if isinstance(layer, Residual) else 1)
        shape = out
    total = sum(p.parameters for p in plans)
    if total > MAX_PARAMETERS:
        raise SpecError(f"{where}: the network has {total:,} parameters, more than the "
                        f"{MAX_PARAMETERS:,} a task may train")
    if shape != (num_classes,):
        raise SpecError(f"{where}: the network's output is shaped {list(shape)} per sample, "
                        f"but the data has {num_classes} classes: end with a Linear layer "
                        f"whose out_features is {num_classes} (or left out)")
    return NetworkPlan(tuple(plans), shape, total, activations)


def build_layers(layers: tuple[Any, ...], input_shape: tuple[int, ...], num_classes: int
                 ) -> torch.nn.Module:
    """The network `layers` declare, with freshly initialised parameters (seed first)."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    # Every check on the meta device, before any parameter is allocated.
    _plan(tuple(layers), tuple(input_shape), num_classes, "model.layers", shapes)
    net = _sequence(tuple(layers), tuple(input_shape), num_classes, "model.layers", shapes,
                    False)
    net.to(torch.float32)
    return net


@functools.cache
def _blocks() -> tuple[type, type]:
    """The two modules of ours (torch is imported only when a network is built)."""
    import torch

    class ResidualBlock(torch.nn.Module):
        """`body(x) + shortcut(x)` (the `Residual` layer)."""

        def __init__(self, body: torch.nn.Module, shortcut: torch.nn.Module) -> None:
            super().__init__()
            self.body = body
            self.shortcut = shortcut
            self.mismatch: tuple[tuple[int, ...], tuple[int, ...]] | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.body(x), self.shortcut(x)
            # Shapes are checked when traced on the meta device (at build), not on real data.
            if a.is_meta and a.shape != b.shape:
                self.mismatch = (tuple(a.shape[1:]), tuple(b.shape[1:]))
                return a  # type: ignore[no-any-return]
            return a + b  # type: ignore[no-any-return]

    class TokenEmbedding(torch.nn.Module):
        """`nn.Embedding` over the input's values taken as token ids (data are floats)."""

        def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(num_embeddings, embedding_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.embedding(x.long())  # type: ignore[no-any-return]

    return ResidualBlock, TokenEmbedding
