"""Models: the zoo, networks declared as layers, installed factories, and model files.

Three ways to name a network in a task spec (`plexus.spec.ModelSpec`):

- a zoo name: TwoNN (thesis 3.4.1), ThreeNN, ConvNet, FashionNet (thesis appendix A),
  LeNet-5, each written below as a list of layers and built like a user's `layers`;
- `layers: [...]`: whitelisted `torch.nn` layers as data (`plexus.layers`);
- `factory: NAME` with `kwargs`: a Python callable `build(input_shape, num_classes, **kwargs)`
  registered by an installed package under the entry-point group `plexus.models`. It is
  looked up among the entry points installed here, never imported from the string.

Every network ends in raw logits: the thesis's final softmax is folded into the cross-entropy
loss. A trained model leaves the orchestrator as a safetensors file whose header says how to
rebuild it (`save`, `load`), or as ONNX (`export_onnx`). torch is imported inside functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexus.errors import SpecError
from plexus.layers import plan_layers

if TYPE_CHECKING:
    import torch

    from plexus.spec import ModelSpec, TaskSpec

MODEL_NAMES: tuple[str, ...] = ("twonn", "threenn", "convnet", "fashionnet", "lenet5")
ENTRY_POINT_GROUP = "plexus.models"


def _conv_net(stack: list[tuple[int, int, int]], head: list[int]) -> list[dict[str, Any]]:
    # (out_channels, kernel, padding) per conv, each followed by a 2×2 max pool and a ReLU.
    layers: list[dict[str, Any]] = []
    for out, kernel, pad in stack:
        layers += [{"type": "Conv2d", "out_channels": out, "kernel_size": kernel,
                    "padding": pad}, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2},
                   {"type": "ReLU"}]
    return [*layers, *_mlp(head)]


def _mlp(hidden: list[int]) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = [{"type": "Flatten"}]
    for width in hidden:
        layers += [{"type": "Linear", "out_features": width}, {"type": "ReLU"}]
    return [*layers, {"type": "Linear"}]  # out_features: the class count


# The zoo as declared layers (the same modules in the same order as before: same state-dict
# keys, same seeded initialisation).
ZOO: dict[str, list[dict[str, Any]]] = {
    "twonn": _mlp([50, 20]),  # widths [784, 50, 20, 10], thesis 3.4.1
    "threenn": _mlp([500, 300, 100]),  # appendix A, table 6.1
    "convnet": _conv_net([(6, 3, 0), (16, 3, 0)], [200, 100]),  # appendix A, table 6.2
    "fashionnet": _conv_net([(16, 3, 1), (32, 3, 1)], [1000, 500]),  # appendix A, table 6.3
    # LeCun et al. 1998, padded so 28×28 gives 5×5×16
    "lenet5": _conv_net([(6, 5, 2), (16, 5, 0)], [120, 84]),
}


def as_model_spec(model: str | ModelSpec | Mapping[str, Any]) -> ModelSpec:
    """A `ModelSpec` from a zoo name, a mapping as in a task spec, or a `ModelSpec`."""
    from pydantic import ValidationError

    from plexus.spec import ModelSpec

    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str) and model not in MODEL_NAMES:
        raise SpecError(f"model: unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    try:
        return ModelSpec.model_validate(model)
    except ValidationError as exc:
        from plexus.spec import describe_errors

        raise SpecError(describe_errors(exc, "model")) from None


def zoo_layers(name: str) -> tuple[Any, ...]:
    """The zoo model `name` as validated layer specs."""
    return as_model_spec({"layers": ZOO[name]}).layers or ()


def model_fits(name: str | ModelSpec, input_shape: tuple[int, ...], num_classes: int = 10
               ) -> bool:
    """Whether model `name` can be built for inputs shaped `input_shape` (C, H, W) or (d,)."""
    try:
        check_model(as_model_spec(name), tuple(input_shape), num_classes)
    except SpecError:
        return False
    return True


def check_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Raise `SpecError` naming the layer and the shapes when the model cannot take this data.

    Layers and zoo models are traced on the meta device (nothing allocated); a factory model
    is built and run on two zero samples.
    """
    if num_classes < 2:
        raise SpecError(f"num_classes must be at least 2, got {num_classes}")
    if spec.factory is not None:
        build(spec, input_shape, num_classes)
    elif spec.name is not None:
        try:
            plan_layers(zoo_layers(spec.name), input_shape, num_classes, f"model {spec.name}")
        except SpecError as exc:
            raise SpecError(f"model: {spec.name} does not fit inputs shaped "
                            f"{tuple(input_shape)} ({exc}); pick an MLP (twonn, threenn) or "
                            "fashionnet for small images, or declare layers") from None
    else:
        plan_layers(spec.layers or (), input_shape, num_classes)


def build(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """The network `spec` names for this data, with fresh parameters (seed torch first).

    Raises `SpecError` naming what does not fit, or what is not installed.
    """
    import torch

    input_shape = tuple(int(d) for d in input_shape)
    if num_classes < 2:
        raise SpecError(f"num_classes must be at least 2, got {num_classes}")
    if spec.factory is not None:
        model = _build_factory(spec, input_shape, num_classes)
    else:
        from plexus.layers import build_layers

        check_model(spec, input_shape, num_classes)
        layers = zoo_layers(spec.name) if spec.name else (spec.layers or ())
        model = build_layers(layers, input_shape, num_classes)
    model.to(torch.float32)
    return model


def build_model(name: str | ModelSpec | Mapping[str, Any], input_shape: tuple[int, ...],
                num_classes: int) -> torch.nn.Module:
    """Build model `name` (a zoo name or a model spec) for this input shape and class count.

    Raises `SpecError` when the name is unknown or the input is too small for the network
    (e.g. ConvNet on 8×8 digits: two 3×3 convolutions and pools leave nothing).
    """
    return build(as_model_spec(name), input_shape, num_classes)


def geometry(spec: TaskSpec) -> tuple[tuple[int, ...], int]:
    """`(input_shape, num_classes)` of a task: the spec's (filled in by the orchestrator at
    submission), else the built-in dataset's known geometry."""
    if spec.model.input_shape is not None and spec.model.num_classes is not None:
        return tuple(spec.model.input_shape), spec.model.num_classes
    from plexus.datasets import dataset_geometry

    return dataset_geometry(spec.dataset.name)


def build_for_task(spec: TaskSpec) -> torch.nn.Module:
    """A fresh network of the task's architecture, for the task's data geometry."""
    shape, classes = geometry(spec)
    return build(spec.model, shape, classes)


def model_bytes(model: torch.nn.Module) -> int:
    """Size of the model's parameters and buffers in bytes (Ω_m of thesis eq. 3.1)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# -- factories (entry points) -----------------------------------------------------------------


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def installed_factories() -> list[dict[str, str]]:
    """The model factories installed here: `{name, value, distribution, version}` each."""
    out = []
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        out.append({"name": ep.name, "value": ep.value,
                    "distribution": str(getattr(dist, "name", "") or ""),
                    "version": str(getattr(dist, "version", "") or "")})
    return sorted(out, key=lambda f: f["name"])


def find_factory(name: str) -> dict[str, str] | None:
    """The installed factory called `name` (its entry-point name or its `module:attr`)."""
    for f in installed_factories():
        if name in (f["name"], f["value"]):
            return f
    return None


def factory_distribution(name: str) -> str | None:
    """"distribution==version" of the installed factory `name`, None if not installed."""
    f = find_factory(name)
    return None if f is None else f"{f['distribution']}=={f['version']}"


def _build_factory(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int
                   ) -> torch.nn.Module:
    import torch

    assert spec.factory is not None
    found = [ep for ep in _entry_points() if spec.factory in (ep.name, ep.value)]
    if not found:
        have = ", ".join(f["name"] for f in installed_factories()) or "none"
        raise SpecError(f"model.factory: {spec.factory!r} is not installed here (entry-point "
                        f"group {ENTRY_POINT_GROUP!r}; installed: {have}); install the "
                        "package that provides it")
    try:
        fn = found[0].load()
        model = fn(input_shape=tuple(input_shape), num_classes=num_classes, **spec.kwargs)
    except Exception as exc:
        raise SpecError(f"model.factory {spec.factory!r} failed to build with kwargs "
                        f"{spec.kwargs}: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"model.factory {spec.factory!r} returned {type(model).__name__}, "
                        "not a torch.nn.Module")
    _check_output(model, input_shape, num_classes, f"model.factory {spec.factory!r}")
    return model


def _check_output(model: torch.nn.Module, input_shape: tuple[int, ...], num_classes: int,
                  where: str) -> None:
    import torch

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *input_shape)))
    except Exception as exc:
        raise SpecError(f"{where}: cannot take inputs shaped {list(input_shape)}: "
                        f"{type(exc).__name__}: {exc}") from None
    finally:
        model.train(was)
    if tuple(out.shape[1:]) != (num_classes,):
        raise SpecError(f"{where}: the network's output is shaped {list(out.shape[1:])} per "
                        f"sample, but the data has {num_classes} classes")


# -- memory -----------------------------------------------------------------------------------


def training_bytes(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int,
                   batch_size: int, optimizer: str = "sgd") -> int:
    """Estimated bytes to train this model on one batch (float32): parameters, gradients and
    optimizer state (Adam: two more copies), plus every layer's activations and their
    gradients for `batch_size` samples. The Python and torch runtime are not counted."""
    if spec.factory is None:
        layers = zoo_layers(spec.name) if spec.name else (spec.layers or ())
        plan = plan_layers(layers, input_shape, num_classes)
        params, activations = plan.parameters, plan.activations
    else:
        model = build(spec, input_shape, num_classes)
        params = sum(p.numel() for p in model.parameters())
        activations = _factory_activations(model, input_shape)
    copies = 2 + (2 if optimizer == "adam" else 0)
    return 4 * (copies * params + 2 * activations * batch_size)


def _factory_activations(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    import torch

    total = [math.prod(input_shape)]

    def hook(_m: Any, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            total.append(out[0].numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in handles:
            h.remove()
    return sum(total)


# -- model files --------------------------------------------------------------------------------


def file_header(spec: TaskSpec, *, task_id: int, version: int) -> dict[str, str]:
    """The safetensors header of a model file handed to a user: enough to rebuild it."""
    shape, classes = geometry(spec)
    arch = spec.model.model_dump(mode="json")
    arch = {"name": arch} if isinstance(arch, str) else arch
    arch.update({"input_shape": list(shape), "num_classes": classes})
    return {"format": "plexus-model/1", "architecture": json.dumps(arch),
            "input_shape": json.dumps(list(shape)), "num_classes": str(classes),
            "dataset": json.dumps(spec.dataset.model_dump(mode="json")),
            "task_id": str(task_id), "version": str(version), "task_name": spec.name}


def save(path: str | Path, state: Mapping[str, torch.Tensor], header: Mapping[str, str]
         ) -> None:
    """Write parameters `state` with `header` (from `file_header`) as a safetensors file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path),
              metadata=dict(header))


def read_header(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors model file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def load(path: str | Path) -> torch.nn.Module:
    """A model file written by `plexus task model` as a plain `torch.nn.Module` in eval mode.

    The header's architecture (zoo name, layers, or factory + kwargs: then the factory's
    package must be installed here) is rebuilt and the parameters loaded into it.
    """
    from safetensors.torch import load_file

    header = read_header(path)
    if "architecture" not in header:
        raise SpecError(f"{path} has no 'architecture' in its header: write it with "
                        "`plexus task model ID -o FILE`")
    arch = json.loads(header["architecture"])
    spec = as_model_spec(arch)
    assert spec.input_shape is not None and spec.num_classes is not None
    model = build(spec, tuple(spec.input_shape), spec.num_classes)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: str | Path) -> None:
    """Write `model` as ONNX with input "input" `[batch, *input_shape]` and output "logits"."""
    import warnings

    import torch

    model.eval()
    example = torch.zeros((1, *input_shape))
    # The TorchScript exporter (dynamo=False) needs no onnxscript; torch warns it is legacy.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                                 "logits": {0: "batch"}},
                          dynamo=False)
