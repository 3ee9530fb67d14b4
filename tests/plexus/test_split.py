"""Split learning core: wire codec, checks on what a device sends, halves, gate ratio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plexus.errors import SpecError
from plexus.spec import SplitSpec, load_spec
from plexus.split.codec import BadSplitBatch, PathLayout, dequantise, quantise
from plexus.split.model import SplitNetwork, build_halves, cut_layers
from plexus.split.steps import DeviceTrainer, ServerTrainer, link_target, message_bytes, optimiser

LAYERS = [{"type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, "ReLU",
          {"type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, "ReLU",
          "Flatten", {"type": "Linear"}]


def _halves(paths: list[dict[str, object]], **kw: object) -> tuple[object, ...]:
    from plexus.layers import build_layers
    from plexus.spec import ModelSpec

    torch.manual_seed(0)
    net = build_layers(ModelSpec.model_validate({"layers": LAYERS}).layers or (), (1, 8, 8), 4)
    split = SplitSpec.model_validate({"cut": 2, "paths": paths, **kw})
    return (*build_halves(net, split, (1, 8, 8)), split)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32])
def test_quantise_round_trip_is_within_one_step(bits: int) -> None:
    lay = PathLayout((3, 5), bits)
    z = torch.randn(7, 3, 5)
    block = quantise(z, lay)
    assert len(block["codes"]) == 7 * lay.bytes_per_sample
    back = dequantise(block, 7, lay, "b")
    span = (z.amax((1, 2)) - z.amin((1, 2))).max()
    tol = 1e-6 if bits == 32 else 1e-2 * span if bits == 16 else span / ((1 << bits) - 1)
    assert (back - z).abs().max() <= tol * 0.51 + 1e-6


def test_compressed_paths_send_fewer_bytes_per_sample() -> None:
    _dev, _srv, layouts, _ = _halves([{"channels": None, "bits": 32}, {"channels": None},
                                      {"channels": 2}, {"channels": 1, "bits": 4}])
    sizes = [lay.wire_bytes_per_sample for lay in layouts]
    # [8, 8, 8] floats; the same at 8 bits (+ lo/step); 2 channels; 1 channel at 4 bits.
    assert sizes == [2048, 520, 136, 40]


def _message(trainer: DeviceTrainer, n: int = 6) -> dict[str, object]:
    return trainer.send(torch.rand(n, 1, 8, 8), torch.arange(n) % 4)


def _trainers(**kw: object) -> tuple[DeviceTrainer, ServerTrainer]:
    dev, srv, layouts, split = _halves([{"channels": None}, {"channels": 1}], **kw)
    return (DeviceTrainer(dev, layouts, split, optimiser(dev, "sgd", 0.05), split.target_ratio),
            ServerTrainer(srv, layouts, 4, 8, optimiser(srv, "sgd", 0.05)))


def test_wire_bytes_follow_the_paths_the_gate_chose() -> None:
    dt, _ = _trainers()
    msg = _message(dt)
    counts = np.bincount(msg["paths"], minlength=2)
    assert message_bytes(msg) == 6 * 8 + 6 + counts[0] * 520 + counts[1] * 72


@pytest.mark.parametrize(("change", "needle"), [
    (lambda m: m["labels"].__setitem__(0, 9), "labels must be in"),
    (lambda m: m.__setitem__("labels", m["labels"].astype(np.float32)), "int64"),
    (lambda m: m.__setitem__("paths", np.full(6, 3, np.uint8)), "path ids"),
    (lambda m: m.__setitem__("blocks", m["blocks"][:1]), "one per path"),
    (lambda m: m.__setitem__("step", -1), "step"),
    (lambda m: m.__setitem__("extra", 1), "keys"),
    (lambda m: m.__setitem__("labels", np.zeros(0, np.int64)), "1..8"),
])
def test_bad_batches_are_refused_and_the_server_does_not_train(change: object, needle: str
                                                                ) -> None:
    dt, st = _trainers()
    msg = _message(dt)
    before = {k: v.clone() for k, v in st.server.state_dict().items()}
    change(msg)  # type: ignore[operator]
    with pytest.raises(BadSplitBatch, match=needle):
        st.step(msg)
    assert st.batches == 0
    assert all(torch.equal(before[k], v) for k, v in st.server.state_dict().items())


def test_nan_codes_and_wrong_sizes_are_refused() -> None:
    dt, st = _trainers()
    msg = _message(dt, 4)
    p = int(msg["paths"][0])
    block = msg["blocks"][p]
    block["lo"] = block["lo"].copy()
    block["lo"][0] = np.nan
    with pytest.raises(BadSplitBatch, match="finite"):
        st.step(msg)
    block["lo"][0] = 0.0
    block["codes"] = block["codes"][:-1]
    with pytest.raises(BadSplitBatch, match="bytes"):
        st.step(msg)


def test_gate_ratio_tracks_the_target() -> None:
    torch.set_num_threads(1)
    rng = torch.Generator().manual_seed(1)
    x = torch.rand(512, 1, 8, 8, generator=rng)
    y = (x.mean((1, 2, 3)) * 4).long().clamp(0, 3)
    for target in (0.2, 0.7):
        dt, st = _trainers(target_ratio=target)
        for i in range(0, 512, 8):
            dt.finish(st.step(dt.send(x[i:i + 8], y[i:i + 8]))["grads"])
        wide, samples = dt.stats.wide, dt.stats.samples
        for i in range(0, 256, 8):
            dt.finish(st.step(dt.send(x[i:i + 8], y[i:i + 8]))["grads"])
        ratio = (dt.stats.wide - wide) / (dt.stats.samples - samples)
        assert abs(ratio - target) < 0.1, (target, ratio)


def test_whole_network_equals_the_halves_and_cut_is_checked() -> None:
    dev, srv, layouts, _ = _halves([{"channels": None, "bits": 32}])
    net = SplitNetwork(dev, srv, layouts).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), srv.rest(dev.body(x)), atol=1e-6)
    with pytest.raises(SpecError, match=r"must be 1\.\.5"):
        cut_layers(torch.nn.Sequential(*[torch.nn.ReLU()] * 6), 6)


def test_bandwidth_lowers_the_target_ratio() -> None:
    split = SplitSpec(cut=2, target_ratio=0.5, link_budget_s=1.0)
    lays = [PathLayout((8, 8, 8), 8), PathLayout((1, 8, 8), 8)]
    # batch 10: 10·(r·520 + (1 − r)·72) bytes in 1 s.
    assert link_target(split, lays, 10, 1e9) == 0.5
    assert link_target(split, lays, 10, 10 * (0.25 * 520 + 0.75 * 72)) == pytest.approx(0.25)
    assert link_target(split, lays, 10, 100.0) == 0.0


def test_split_spec_in_a_task() -> None:
    spec = load_spec({"mode": "split", "split": {"cut": 3}})
    assert spec.split is not None and spec.split.paths[1].channels == 1
    with pytest.raises(SpecError, match="split"):
        load_spec({"mode": "split"})
    with pytest.raises(SpecError, match="mode:"):
        load_spec({"mode": "sync", "split": {"cut": 3}})
    with pytest.raises(SpecError, match="bits"):
        load_spec({"mode": "split", "split": {"cut": 3, "paths": [{"bits": 3}]}})
