"""Gradient-inversion staleness (001 §4): the compute module and the handler's decisions."""

from __future__ import annotations

import time

import pytest
import torch

from orchestrator.aggregation import SpinAggregator, build_aggregator
from orchestrator.aggregation.inversion import Net, Recipe, invert, rec_size, recompute
from orchestrator.aggregation.staleness import InversionStaleness
from plexus.training import train

SHAPE = (1, 4, 4)


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, 3))


def _data(seed: int, n: int = 24, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.randn((3, *SHAPE), generator=g) * 1.5 + shift
    return centres[y] + 0.5 * torch.randn((n, *SHAPE), generator=g), y


def _trained(model: torch.nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor,
             y: torch.Tensor, seed: int, epochs: int = 2) -> dict[str, torch.Tensor]:
    model.load_state_dict(state)
    train(model, x, y, passes=epochs, batch_size=8, optimizer="sgd", lr=0.1, seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _delta(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: a[k] - b[k] for k in a}


def _l1(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum((a[k] - b[k]).abs().sum() for k in a))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recomputed_update_is_closer_to_the_fresh_one_than_the_stale_one(seed: int) -> None:
    # Arrange: a client's update from w_base; meanwhile other clients moved the model to w_now.
    torch.manual_seed(seed)
    model = _net()
    w_base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = _data(seed)
    ox, oy = _data(seed + 100, n=96, shift=1.0)
    w_stale = _trained(model, w_base, x, y, seed, epochs=1)
    w_now = _trained(model, w_base, ox, oy, seed + 1, epochs=4)
    w_fresh = _trained(model, w_now, x, y, seed, epochs=1)  # what the client would send now
    recipe = Recipe.for_client(0.1, 1, 8, len(y), max_steps=2)
    # Act
    rec, cost = invert(model, w_base, w_stale, n_rec=rec_size(len(y), 0.5), recipe=recipe,
                       input_shape=SHAPE, classes=3, max_iters=40, seed=seed)
    w_hat = recompute(model, w_now, rec, recipe, w_stale)
    # Assert: the update estimate beats reusing the stale update.
    true = _delta(w_fresh, w_now)
    e_inv = _l1(_delta(w_hat, w_now), true)
    e_stale = _l1(_delta(w_stale, w_base), true)
    assert cost.iterations == 40 and cost.complete
    assert e_inv < e_stale, (e_inv, e_stale, cost)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_push_never_waits_past_the_budget_and_late_inversions_leave_the_update_as_is(
) -> None:
    # Arrange: an inversion that cannot finish (huge iteration count) within a 0.3 s budget,
    # run by the worker thread; SPIN aggregates on every push (k=1).
    model = _net()
    w0 = _state(model)
    x, y = _data(0)
    budget = 0.3
    handler = InversionStaleness(threshold=1, budget_s=budget, iterations=10**6, workers=1,
                                 net=Net(model, SHAPE, 3), local_lr=0.1, local_epochs=2,
                                 batch_size=8)
    core = SpinAggregator(w0, k=1, pi_s=None, staleness=handler)
    try:
        core.pull(0.0, "b", len(y))  # b trains from version 0
        core.push(0.0, "a", _trained(model, w0, x, y, 0), 0, len(y))  # fresh: version 1
        stale = _trained(model, w0, x, y, 1)
        # Act
        t0 = time.perf_counter()
        core.push(1.0, "b", stale, 0, len(y))  # one version stale: inverted
        took = time.perf_counter() - t0
        # Assert: the push returned within the budget (plus scheduling slack on a loaded
        # host); the inversion was cut by the clock (used if it made the deadline, else the
        # update was aggregated as it came and counted late).
        assert took < budget + 0.5, took
        assert core.version == 2
        summary = handler.summary()
        assert summary["late"] + summary["inverted"] == 1
        assert summary["iterations"] < 10**6
    finally:
        handler.close()


def test_a_full_queue_refuses_the_job_without_blocking() -> None:
    model = _net()
    w0 = _state(model)
    x, y = _data(0)
    handler = InversionStaleness(threshold=1, budget_s=0.2, iterations=10**6, workers=1,
                                 queue_size=1, net=Net(model, SHAPE, 3))
    core = SpinAggregator(w0, k=10, pi_s=None, staleness=handler)
    try:
        for c in ("b", "c", "d"):
            core.pull(0.0, c, len(y))
        core.push(0.0, "a", w0, 0, len(y))
        core._aggregate(0.0, "k")  # version 1: pushes from version 0 are now stale
        update = _trained(model, w0, x, y, 2)
        t0 = time.perf_counter()
        for c in ("b", "c", "d"):  # one runs, one waits in the queue, one is refused
            core.push(1.0, c, update, 0, len(y))
        assert time.perf_counter() - t0 < 0.5
        assert handler.summary()["dropped"] >= 1
    finally:
        handler.close()


def test_inline_inversion_is_used_and_its_cost_recorded() -> None:
    # Arrange: workers=0 (the simulator's mode), an update two versions stale.
    model = _net()
    w0 = _state(model)
    x, y = _data(3)
    core = build_aggregator("spin", w0, k=1, pi_s=None, staleness="inversion",
                            staleness_params={"threshold": 2, "workers": 0, "iterations": 5,
                                              "budget_s": 1e9, "local_lr": 0.1, "local_epochs": 2,
                                              "batch_size": 8},
                            net=Net(model, SHAPE, 3))
    stale = _trained(model, w0, x, y, 0)
    core.pull(0.0, "b", len(y))
    core.push(0.0, "a", _trained(model, w0, x, y, 1), 0, len(y))
    core.push(0.0, "a", _trained(model, core.model, x, y, 2), 1, len(y))
    # Act
    core.push(0.0, "b", stale, 0, len(y))  # τ = 2
    # Assert: inverted, the aggregated model is not the stale update, the cost is recorded.
    s = core.handler.summary()
    assert s is not None and s["inverted"] == 1 and s["iterations"] == 5
    assert not torch.equal(core.model["1.weight"], stale["1.weight"])


def test_switch_back_when_estimates_become_worse_than_the_stale_updates() -> None:
    # The decision alone: α is 1 until E1 > E2 on average, then falls to 0 over the span.
    h = InversionStaleness(threshold=1, min_checks=2, switch_span=4, workers=0)
    zero = {"w": torch.zeros(3)}
    truth = {"w": torch.ones(3)}
    for version, client in ((5, "a"), (6, "b")):
        # Estimate far from the truth (E1 = 6), stale update right (E2 = 0).
        h._remember(client, version, {"w": -torch.ones(3)}, {"w": torch.ones(3)})
        h.received(client, truth, zero, zero, version + 3, version, 10)
    assert h.switch_version == 9
    assert [h.alpha(v) for v in (8, 9, 11, 13)] == [1.0, 1.0, 0.5, 0.0]
    assert not h.wants(5, 13)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        InversionStaleness(threshold=0)
    with pytest.raises(ValueError, match="fraction"):
        InversionStaleness(fraction=0.0)
    assert rec_size(10**9, 0.5) == 512  # a client's claimed size cannot blow up D_rec
