"""Networks declared as data: the whitelist, shape inference and its errors, factories found
through entry points, the memory estimate, and model files loaded back in plain PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from plexus.errors import SpecError
from plexus.layers import LAYER_TYPES, plan_layers
from plexus.models import (
    ZOO,
    as_model_spec,
    build_for_task,
    build_model,
    file_header,
    installed_factories,
    load,
    read_header,
    save,
    training_bytes,
)
from plexus.spec import TaskSpec, load_spec

EVERY_LAYER: dict[str, tuple[tuple[int, ...], list[Any]]] = {
    # input shape, layers (each list uses the named type at least once)
    "images": ((3, 12, 12), [
        {"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "padding": "same"},
        "BatchNorm2d", "ReLU", {"type": "MaxPool2d", "kernel_size": 2},
        {"type": "Residual", "layers": [
            {"type": "Conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
            "GELU"],
         "shortcut": [{"type": "Conv2d", "out_channels": 8, "kernel_size": 1, "stride": 2}]},
        {"type": "AvgPool2d", "kernel_size": 1}, {"type": "AdaptiveAvgPool2d", "output_size": 2},
        "SiLU", {"type": "Dropout", "p": 0.1}, "Flatten", {"type": "Linear", "out_features": 16},
        "BatchNorm1d", {"type": "LeakyReLU", "negative_slope": 0.2}, "Tanh", {"type": "Linear"}]),
    "signals": ((2, 16), [
        {"type": "Conv1d", "out_channels": 4, "kernel_size": 3}, "BatchNorm1d", "Sigmoid",
        {"type": "MaxPool1d", "kernel_size": 2}, {"type": "AvgPool1d", "kernel_size": 1},
        {"type": "AdaptiveAvgPool1d", "output_size": 3}, "Flatten",
        {"type": "Unflatten", "dim": 1, "unflattened_size": [2, 6]}, "LayerNorm", "Flatten",
        {"type": "Linear"}]),
    "tokens": ((6,), [
        {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 4}, "Flatten",
        {"type": "Linear"}]),
}


def _names(layers: list[Any]) -> set[str]:
    out = set()
    for layer in layers:
        name = layer if isinstance(layer, str) else layer["type"]
        out.add(name)
        if isinstance(layer, dict):
            out |= _names(layer.get("layers", [])) | _names(layer.get("shortcut", []))
    return out


def test_every_whitelisted_layer_builds_and_trains_a_step() -> None:
    used = set().union(*(_names(layers) for _, layers in EVERY_LAYER.values()))
    assert used == set(LAYER_TYPES)
    for shape, layers in EVERY_LAYER.values():
        torch.manual_seed(0)
        net = build_model({"layers": layers}, shape, 5)
        plan = plan_layers(as_model_spec({"layers": layers}).layers or (), shape, 5)
        assert plan.parameters == sum(p.numel() for p in net.parameters())
        x = torch.randint(0, 10, (4, *shape)).float()
        loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        assert net(x).shape == (4, 5)


def test_zoo_is_written_as_layers_with_the_thesis_keys() -> None:
    assert set(ZOO) == {"twonn", "threenn", "convnet", "fashionnet", "lenet5"}
    net = build_model("twonn", (1, 28, 28), 10)
    assert list(net.state_dict()) == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight",
                                      "5.bias"]
    torch.manual_seed(3)
    a = build_model("convnet", (1, 28, 28), 10).state_dict()
    torch.manual_seed(3)
    b = build_model({"layers": ZOO["convnet"]}, (1, 28, 28), 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("layers", "shape", "words"), [
    (["Flatten", {"type": "Linear", "in_features": 10}], (1, 4, 4),
     ["model.layers.1 (Linear)", "in_features is 10", "[16]"]),
    ([{"type": "Conv2d", "out_channels": 2, "kernel_size": 3}], (5,),
     ["model.layers.0 (Conv2d)", "3 dimensions", "[5]"]),
    ([{"type": "Conv2d", "out_channels": 2, "kernel_size": 7}, "Flatten", {"type": "Linear"}],
     (1, 4, 4), ["model.layers.0 (Conv2d)", "cannot take inputs shaped [1, 4, 4]"]),
    ([{"type": "Residual", "layers": [{"type": "Conv2d", "out_channels": 3, "kernel_size": 1}]},
      "Flatten", {"type": "Linear"}], (1, 4, 4),
     ["model.layers.0 (Residual)", "[3, 4, 4]", "[1, 4, 4]", "shortcut"]),
    (["Flatten"], (1, 4, 4), ["output is shaped [16]", "3 classes"]),
    (["Flatten", {"type": "Linear", "out_features": 1 << 15}, {"type": "Linear",
                                                                "out_features": 1 << 15}],
     (1, 4, 4), ["parameters, more than"]),
])
def test_shape_errors_name_the_layer_and_the_shapes(layers: list[Any], shape: tuple[int, ...],
                                                   words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        build_model({"layers": layers}, shape, 3)
    for w in words:
        assert w in str(err.value), str(err.value)


@pytest.mark.parametrize(("model", "words"), [
    ({"layers": [{"type": "Attention"}]}, ["model.layers.0", "unknown layer type 'Attention'"]),
    ({"layers": [{"type": "Conv2d", "out_channels": 2, "kernel_size": 3, "bogus": 1}]},
     ["model.layers.0.Conv2d.bogus: unknown key"]),
    ({"layers": [{"type": "Dropout", "p": 1.5}]}, ["model.layers.0.Dropout.p"]),
    ({"layers": []}, ["at least one layer"]),
    ({"name": "twonn", "factory": "x"}, ["exactly one of"]),
    ({"layers": ["ReLU"], "kwargs": {"a": 1}}, ["only a factory model takes kwargs"]),
    ({"factory": "import os; os.system('x')"}, ["model.factory"]),
])
def test_the_spec_rejects_what_is_not_whitelisted(model: Any, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        load_spec({"model": model})
    for w in words:
        assert w in str(err.value), str(err.value)


def test_declared_layers_round_trip_through_the_spec() -> None:
    spec = load_spec({"model": {"layers": EVERY_LAYER["images"][1]}})
    again = load_spec(spec.to_dict())
    assert again == spec
    assert load_spec({}).to_dict()["model"] == "twonn"  # a bare zoo name stays bare


def _plugin(root: Path) -> None:
    (root / "tiny_plugin.py").write_text(
        "import torch\n"
        "def build(input_shape, num_classes, out=None):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(),\n"
        "        torch.nn.Linear(input_shape[-1] * input_shape[-2], out or num_classes))\n")
    info = root / "tiny_plugin-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 1.2.0\n")
    (info / "entry_points.txt").write_text("[plexus.models]\ntiny = tiny_plugin:build\n")


def test_factories_come_from_installed_entry_points(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SpecError, match="'tiny' is not installed"):
        build_model({"factory": "tiny"}, (1, 4, 4), 3)
    _plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"name": "tiny", "value": "tiny_plugin:build", "distribution": "tiny-plugin",
            "version": "1.2.0"} in installed_factories()
    for name in ("tiny", "tiny_plugin:build"):
        assert build_model({"factory": name}, (1, 4, 4), 3)(torch.zeros(2, 1, 4, 4)).shape \
            == (2, 3)
    with pytest.raises(SpecError, match="failed to build"):
        build_model({"factory": "tiny", "kwargs": {"depth": 2}}, (1, 4, 4), 3)
    with pytest.raises(SpecError, match=r"output is shaped \[3\]"):
        build_model({"factory": "tiny", "kwargs": {"out": 3}}, (1, 4, 4), 5)


def test_memory_estimate_grows_with_batch_and_optimizer() -> None:
    model = as_model_spec("twonn")
    small = training_bytes(model, (1, 28, 28), 10, 1)
    params = 784 * 50 + 50 + 50 * 20 + 20 + 20 * 10 + 10
    assert small >= 4 * 2 * params
    assert training_bytes(model, (1, 28, 28), 10, 64) > small
    assert training_bytes(model, (1, 28, 28), 10, 1, "adam") == small + 4 * 2 * params


def test_model_file_loads_in_plain_pytorch(tmp_path: Path) -> None:
    spec = TaskSpec.model_validate({
        "name": "files", "dataset": {"name": "digits"},
        "model": {"layers": [*EVERY_LAYER["images"][1][:4], "Flatten", {"type": "Linear"}],
                  "input_shape": [3, 12, 12], "num_classes": 4}})
    torch.manual_seed(1)
    net = build_for_task(spec)
    net.eval()
    path = tmp_path / "m.safetensors"
    save(path, net.state_dict(), file_header(spec, task_id=7, version=3))
    header = read_header(path)
    assert header["version"] == "3" and header["task_name"] == "files"
    again = load(path)
    x = torch.rand(5, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))
    plain = tmp_path / "plain.safetensors"
    save(plain, net.state_dict(), {})
    with pytest.raises(SpecError, match="no 'architecture'"):
        load(plain)
