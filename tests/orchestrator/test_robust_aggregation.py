"""Robust aggregation rules: hand-computed vectors, ByzFL on the same inputs, the async cores
and the spec that chooses a rule."""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import sys
import types
from typing import Any

import pytest
import torch

from orchestrator.aggregation import build_aggregator
from orchestrator.aggregation.robust import (
    RULES,
    RobustRule,
    aggregate,
    centered_clip_rows,
    clip_rows,
    krum_rows,
    krum_scores,
    mean_rows,
    median_rows,
    multi_krum_rows,
    trimmed_mean_rows,
)
from plexus.errors import SpecError
from plexus.spec import ROBUST_RULE_NAMES, parse_spec

# Five updates in two dimensions; the last one is an outlier.
#   a=(0,0) b=(1,0) c=(0,1) d=(2,2) e=(10,−10)
X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [10.0, -10.0]],
                 dtype=torch.float64)
R2 = math.sqrt(2.0)


def close(got: torch.Tensor, want: list[float]) -> None:
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12), got


def test_hand_computed_vectors() -> None:
    close(mean_rows(X), [13 / 5, -7 / 5])
    close(mean_rows(X, [1, 1, 1, 1, 6]), [63 / 10, -57 / 10])  # (0+0+1+2−60)/10
    # median per coordinate: (0,0,1,2,10) → 1; (−10,0,0,1,2) → 0
    close(median_rows(X), [1.0, 0.0])
    close(median_rows(X[:4]), [0.5, 0.5])  # even count: mean of the two middle values
    # trim one from each side: (0,1,2) → 1; (0,0,1) → 1/3
    close(trimmed_mean_rows(X, 1), [1.0, 1 / 3])
    close(trimmed_mean_rows(X, 0), [13 / 5, -7 / 5])
    # Krum f=1: n−f−2 = 2 nearest; squared distances a–b 1, a–c 1, b–c 2, b–d 5, c–d 5 →
    # scores a 2, b 3, c 3, d 10, e 181+200 = 381
    close(krum_scores(X, 1), [2.0, 3.0, 3.0, 10.0, 381.0])
    close(krum_rows(X, 1), [0.0, 0.0])
    close(multi_krum_rows(X, 1, 3), [1 / 3, 1 / 3])
    close(multi_krum_rows(X, 1), [3 / 4, 3 / 4])  # m = n − f = 4: a, b, c, d
    # clip to τ = 1: d → (1/√2, 1/√2), e → (1/√2, −1/√2)
    close(clip_rows(X, 1.0), [(1 + R2) / 5, 1 / 5])
    close(clip_rows(X), [(1 + R2) / 5, 1 / 5])  # τ = median norm of (0, 1, 1, 2√2, 10√2) = 1
    # one centered-clipping step from 0 with τ = 1 is the clipped mean
    close(centered_clip_rows(X, 1.0, 1), [(1 + R2) / 5, 1 / 5])


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot trim"):
        trimmed_mean_rows(X, 3)
    with pytest.raises(ValueError, match="n ≥ 1"):
        median_rows(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="unknown aggregation rule 'mean'"):
        RobustRule("mean")
    with pytest.raises(ValueError, match="iteration"):
        centered_clip_rows(X, 1.0, 0)


def test_rule_f_and_single_update() -> None:
    assert RobustRule("krum", byzantine=0.2).f(10) == 2
    assert RobustRule("trimmed_mean", byzantine=0.45).f(4) == 1  # capped at ⌈n/2⌉ − 1
    one = X[:1]
    for name in RULES:
        close(RobustRule(name).rows(one, [1.0]), [0.0, 0.0])


def test_only_fedavg_and_clip_use_sample_counts() -> None:
    inflated = [1, 1, 1, 1, 10**12]  # the outlier claims a huge sample count
    assert RobustRule("fedavg").rows(X, inflated)[0] > 9.9
    for name in ("median", "trimmed_mean", "krum", "multi_krum", "centered_clip"):
        rule = RobustRule(name, byzantine=0.2, clip_norm=1.0)
        assert torch.equal(rule.rows(X, inflated), rule.rows(X, None)), name


def test_aggregate_on_state_dicts_keeps_integer_tensors_and_dtypes() -> None:
    current = {"w": torch.tensor([[1.0, 1.0]]), "b": torch.tensor([0.5], dtype=torch.float64),
               "count": torch.tensor(7)}
    states = [
        {"w": current["w"] + torch.tensor([[x, y]], dtype=torch.float32),
         "b": current["b"] + z, "count": torch.tensor(100 + i)}
        for i, (x, y, z) in enumerate([(0, 0, 0), (1, 0, 1), (0, 1, 2), (2, 2, 3), (10, -10, 50)])
    ]
    out = aggregate(RobustRule("median"), current, states, [1.0] * 5)
    assert torch.allclose(out["w"], torch.tensor([[2.0, 1.0]]))
    assert out["w"].dtype == torch.float32
    assert out["b"].dtype == torch.float64 and float(out["b"]) == 2.5
    assert int(out["count"]) == 7
    halved = aggregate(RobustRule("median"), current, states, None, [0.5] * 5)
    assert torch.allclose(halved["w"], torch.tensor([[1.5, 1.0]]))


def test_spec_names_equal_the_registry_and_spec_validates_the_section() -> None:
    assert set(RULES) == set(ROBUST_RULE_NAMES)
    spec = parse_spec({"mode": "sync", "sync": {"aggregation": {"rule": "krum",
                                                                "byzantine": 0.3}}})
    assert spec.sync is not None
    assert RobustRule.from_spec(spec.sync.aggregation) == RobustRule("krum", 0.3)
    spec = parse_spec({"mode": "async"})
    assert spec.async_ is not None and spec.async_.aggregation.rule == "fedavg"
    with pytest.raises(SpecError, match=r"async\.aggregation\.rule"):
        parse_spec({"mode": "async", "async": {"aggregation": {"rule": "mean"}}})
    with pytest.raises(SpecError, match=r"sync\.aggregation\.byzantine"):
        parse_spec({"mode": "sync", "sync": {"aggregation": {"byzantine": 0.5}}})
    with pytest.raises(SpecError, match=r"sync\.aggregation\.attack: unknown key"):
        parse_spec({"mode": "sync", "sync": {"aggregation": {"attack": "sign_flip"}}})


@pytest.mark.parametrize("core", ["spin", "fedbuff", "port"])
def test_async_cores_combine_their_buffer_with_the_rule(core: str) -> None:
    initial = {"w": torch.tensor([1.0, 1.0])}
    agg = build_aggregator(core, initial, k=5, pi_s=None, concurrency=5,
                           rule=RobustRule("median"))
    for i in range(len(X)):
        agg.register(f"c{i}")
    decisions: list[Any] = []
    for i, row in enumerate(X):
        n = 10**12 if i == 4 else 10
        decisions += agg.push(float(i), f"c{i}", {"w": initial["w"] + row.float()}, 0, n)
    assert agg.version == 1 and decisions
    assert torch.allclose(agg.model["w"], torch.tensor([2.0, 1.0]))
    fedavg = build_aggregator(core, initial, k=5, pi_s=None, concurrency=5)
    for i, row in enumerate(X):
        fedavg.push(float(i), f"c{i}", {"w": initial["w"] + row.float()}, 0, 10)
    assert torch.allclose(fedavg.model["w"], initial["w"] + mean_rows(X).float())


# -- ByzFL on the same inputs ------------------------------------------------------------------


def _byzfl() -> Any:
    """ByzFL's aggregators module. `import byzfl` pulls in torchvision (its benchmark
    framework), which this project does not install, so the package is mounted empty and only
    its aggregator and attack modules (numpy/torch/scipy) are loaded."""
    mounted = sys.modules.get("byzfl")
    spec = mounted.__spec__ if mounted is not None else importlib.util.find_spec("byzfl")
    if spec is None or spec.origin is None:
        if os.environ.get("CI") == "true":
            pytest.fail("byzfl is not installed (requirements/nodeps.txt, make installs it)")
        pytest.skip("byzfl is not installed: pip install byzfl --no-deps")
    if "byzfl" not in sys.modules or not hasattr(sys.modules["byzfl"], "__path__"):
        pkg = types.ModuleType("byzfl")
        pkg.__path__ = [str(pathlib.Path(spec.origin).parent)]
        pkg.__spec__ = spec
        sys.modules["byzfl"] = pkg
    from byzfl.aggregators import aggregators, preaggregators
    from byzfl.attacks import attacks

    return types.SimpleNamespace(agg=aggregators, pre=preaggregators, attacks=attacks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rules_match_byzfl(seed: int) -> None:
    B = _byzfl()
    g = torch.Generator().manual_seed(seed)
    n, d, f = 10, 40, 2
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:f] = x[:f] * 20 + 5  # two outliers

    def same(ours: torch.Tensor, theirs: Any, atol: float = 1e-9) -> None:
        assert torch.allclose(ours, torch.as_tensor(theirs, dtype=torch.float64), atol=atol)

    same(median_rows(x), B.agg.Median()(x.clone()))
    same(median_rows(x[:9]), B.agg.Median()(x[:9].clone()))
    same(trimmed_mean_rows(x, f), B.agg.TrMean(f=f)(x.clone()))
    # ByzFL scores with the n − f − 1 nearest neighbours, Blanchard et al. with n − f − 2:
    # our Krum(f) is ByzFL's Krum(f + 1).
    same(krum_rows(x, f), B.agg.Krum(f=f + 1)(x.clone()))
    same(multi_krum_rows(x, f, n - f - 1), B.agg.MultiKrum(f=f + 1)(x.clone()))
    same(centered_clip_rows(x, 3.0, 4), B.agg.CenteredClipping(L=4, tau=3.0)(x.clone()))
    # ByzFL's Average answers in float32
    same(clip_rows(x, 2.5), B.agg.Average()(B.pre.Clipping(c=2.5)(x.clone())), atol=1e-6)


def test_attacks_match_byzfl() -> None:
    from plexus import attacks

    B = _byzfl()
    g = torch.Generator().manual_seed(3)
    honest = torch.randn(8, 30, generator=g, dtype=torch.float64)
    mean, std = attacks.mean_std([{"v": h} for h in honest])
    z = attacks.alie_z(10, 2)
    assert math.isclose(z, 0.2533, abs_tol=1e-3)  # Φ⁻¹(0.6): n = 10, s = 6 − 2 = 4
    got = attacks.alie(mean, std, z)["v"]
    want = B.attacks.ALittleIsEnough(tau=z)(honest.clone())
    assert torch.allclose(got, torch.as_tensor(want, dtype=torch.float64), atol=1e-9)
    got = attacks.ipm(mean, 0.5)["v"]
    want = B.attacks.InnerProductManipulation(tau=0.5)(honest.clone())
    assert torch.allclose(got, torch.as_tensor(want, dtype=torch.float64), atol=1e-9)
    got = attacks.sign_flip({"v": honest.mean(dim=0)})["v"]
    want = B.attacks.SignFlipping()(honest.clone())
    assert torch.allclose(got, torch.as_tensor(want, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("rule", ["median", "fedavg"])
def test_close_round_combines_the_answers_with_the_specs_rule(tmp_path: pathlib.Path,
                                                              rule: str) -> None:
    import asyncio

    from orchestrator.metrics import Metrics
    from orchestrator.runs.gateway import Reply
    from orchestrator.runs.rounds import close_round
    from orchestrator.runs.taskdata import initial_model
    from orchestrator.store import Store
    from orchestrator.store.db import LearnerRow
    from plexus.datasets import load_dataset
    from plexus.tensors import decode_state

    spec = parse_spec({"model": "twonn", "dataset": {"name": "synthetic", "samples": 200},
                       "mode": "sync", "sync": {"aggregation": {"rule": rule}}})
    ds = load_dataset(spec.dataset, seed=0)
    state = initial_model(spec, ds.input_shape, ds.num_classes).state_dict()
    # Two honest answers move every parameter by 0.1 and 0.2; a third by 100 and claims 10⁹
    # samples.
    answers = [(0.1, 10), (0.2, 10), (100.0, 10**9)]
    replies = [Reply(LearnerRow(id=i + 1, name=f"l{i}"),
                     value={"params": {k: v + d for k, v in state.items()},
                            "samples_trained": n})
               for i, (d, n) in enumerate(answers)]
    test = (ds.test_x, ds.test_y, ds.input_shape, ds.num_classes)
    closed = asyncio.run(close_round(Store(tmp_path), Metrics(lambda: 0), 1, spec, 0, state,
                                     replies, test, {}))
    written, _ = decode_state(closed.model_path.read_bytes())
    shift = 0.2 if rule == "median" else (1.0 + 2.0 + 100.0 * 10**9) / (20 + 10**9)
    for name, t in state.items():
        assert torch.allclose(closed.state[name], t + shift, atol=1e-4), name
        assert torch.equal(written[name], closed.state[name])
