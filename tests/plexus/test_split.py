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


@pytest.mark.parametrize(("grad_bits", "targets"), [(32, (0.2, 0.7)), (8, (0.7,))])
def test_gate_ratio_tracks_the_target(grad_bits: int, targets: tuple[float, ...]) -> None:
    torch.set_num_threads(1)
    rng = torch.Generator().manual_seed(1)
    x = torch.rand(512, 1, 8, 8, generator=rng)
    y = (x.mean((1, 2, 3)) * 4).long().clamp(0, 3)
    for target in targets:
        dt, st = _grad_trainers(grad_bits, target_ratio=target)
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


# --- the gradient the server returns (split.grad_bits) -----------------------------------

@pytest.mark.parametrize("bits", [2, 4, 8, 32])
def test_gradient_round_trip_is_within_half_a_step_and_zero_stays_zero(bits: int) -> None:
    from plexus.split.codec import dequantise_grad, quantise_grad

    lay = PathLayout((3, 5), bits)
    g = torch.randn(7, 3, 5) * torch.logspace(-6, 2, 7)[:, None, None]  # per-sample scales
    g[:, 0, :2] = 0.0
    g[2] = 0.0  # a sample whose gradient is all zero
    back = dequantise_grad(quantise_grad(g, lay), 7, lay, "g")
    assert back.shape == g.shape and back.dtype == torch.float32
    assert torch.all(back[:, 0, :2] == 0) and torch.all(back[2] == 0)
    peak = g.abs().amax((1, 2))
    half = (1 << (bits - 1)) - 1
    tol = peak * 1e-6 if bits == 32 else peak / half / 2
    assert torch.all((back - g).abs().amax((1, 2)) <= tol * 1.001 + 1e-12)
    if bits == 32:
        return
    # Stochastic rounding: within one step, zero stays zero, and unbiased on average.
    torch.manual_seed(0)
    draws = torch.stack([dequantise_grad(quantise_grad(g, lay, stochastic=True), 7, lay, "g")
                         for _ in range(400)])
    assert torch.all((draws - g).abs().amax((0, 2, 3)) <= 2 * tol * 1.001 + 1e-12)
    assert torch.all(draws[:, :, 0, :2] == 0) and torch.all(draws[:, 2] == 0)
    bias = (draws.mean(0) - g).abs().amax((1, 2))
    assert torch.all(bias <= 2 * tol * 0.2 + 1e-12), (bias, tol)  # nearest: up to tol


def _grad_trainers(grad_bits: int, **kw: object) -> tuple[DeviceTrainer, ServerTrainer]:
    dev, srv, layouts, split = _halves([{"channels": None}, {"channels": 1}],
                                       grad_bits=grad_bits, **kw)
    return (DeviceTrainer(dev, layouts, split, optimiser(dev, "sgd", 0.05), split.target_ratio),
            ServerTrainer(srv, layouts, 4, 8, optimiser(srv, "sgd", 0.05), grad_bits))


def test_8_bit_gradients_come_back_a_quarter_the_size_over_loopback() -> None:
    """The same batches through the RPC layer on 127.0.0.1: the answer bodies with 8-bit
    gradients are about a quarter of float32's (values + 8 bytes lo/step per sample)."""
    import rpc

    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 4
    sizes, sent = {}, {}
    for bits in (32, 8):
        dt, st = _grad_trainers(bits)
        registry = rpc.Registry()
        registry.add(st.step, name="split_step")
        with rpc.Worker(registry).start() as server, rpc.connect(server.url) as remote:
            message = dt.send(x, y)
            counts = np.bincount(message["paths"], minlength=2)
            answer = remote.split_step(message)
            sizes[bits] = len(rpc.encode(answer).join())
            sent[bits] = counts
            before = [p.detach().clone() for p in dt.device.parameters()]
            dt.finish(answer["grads"])  # checked, decoded, back-propagated
            assert any(not torch.equal(a, p) for a, p in zip(before, dt.device.parameters(),
                                                             strict=True))
        assert st.batches == 1
    # Path 0: [8, 8, 8] values, path 1: [1, 8, 8] (float32: 4 bytes each; 8 bits: 1 + 8/sample)
    for bits, per_value, extra in ((32, 4, 0), (8, 1, 8)):
        data = sent[bits][0] * (512 * per_value + extra) + sent[bits][1] * (64 * per_value + extra)
        assert data < sizes[bits] < data + 1000, (bits, data, sizes[bits])


def _bad(grads: list[object], change: str) -> list[object]:
    g = list(grads)
    k = next(i for i, v in enumerate(g)  # the first path that carried samples
             if (v.size if isinstance(v, np.ndarray) else len(v["codes"])))
    v = g[k]
    if change == "missing":
        return g[:-1]
    if change == "not a list":
        return {"0": v}  # type: ignore[return-value]
    if isinstance(v, np.ndarray):
        g[k] = {"float64": v.astype(np.float64), "shape": v.reshape(-1),
                "nan": np.where(np.arange(v.size).reshape(v.shape) == 3, np.nan, v
                                ).astype(np.float32),
                "block": {"codes": v.tobytes(), "lo": v[:0, 0], "step": v[:0, 0]}}[change]
        return g
    block = dict(v)
    if change == "short":
        block["codes"] = block["codes"][:-1]
    elif change == "nan":
        block["step"] = np.where(np.arange(len(block["step"])) == 0, np.inf, block["step"]
                                 ).astype(np.float32)
    elif change == "float64":
        block["lo"] = block["lo"].astype(np.float64)
    elif change == "shape":
        block["step"] = block["step"][:-1]
    elif change == "block":
        g[k] = np.zeros(3, np.float32)
        return g
    g[k] = block
    return g


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("change", ["missing", "not a list", "float64", "shape", "nan", "short",
                                    "block"])
def test_bad_gradients_are_refused_and_the_device_does_not_train(bits: int, change: str
                                                                  ) -> None:
    from plexus.split.codec import BadSplitBatch

    dt, st = _grad_trainers(bits)
    msg = _message(dt, 8)
    grads = st.step(msg)["grads"]
    if change == "short" and bits == 32:
        change = "shape"
    before = {k: v.clone() for k, v in dt.device.state_dict().items()}
    with pytest.raises(BadSplitBatch):
        dt.finish(_bad(grads, change))
    assert all(torch.equal(before[k], v) for k, v in dt.device.state_dict().items())


def test_a_gradient_for_a_path_no_sample_took_must_be_empty() -> None:
    from plexus.split.codec import BadSplitBatch

    for bits in (32, 8):
        dt, st = _grad_trainers(bits)
        msg = dt.send(torch.rand(1, 1, 8, 8), torch.tensor([1]))  # one sample: one path empty
        grads = st.step(msg)["grads"]
        empty = 1 - int(msg["paths"][0])
        grads[empty] = grads[1 - empty]
        with pytest.raises(BadSplitBatch, match="empty"):
            dt.finish(grads)


def test_the_agent_turns_a_bad_gradient_into_bad_task() -> None:
    from learner_agent.errors import BadTask
    from learner_agent.split import _finish

    dt, st = _grad_trainers(8)
    answer = st.step(_message(dt))
    answer["grads"] = answer["grads"][:1]
    with pytest.raises(BadTask, match="split answer"):
        _finish(dt, answer)


def test_grad_bits_in_the_spec() -> None:
    assert SplitSpec(cut=2).grad_bits == 32 and SplitSpec(cut=2).grad_rounding == "nearest"
    for bits in (1, 16):
        with pytest.raises(ValueError, match="grad_bits"):
            SplitSpec.model_validate({"cut": 2, "grad_bits": bits})
