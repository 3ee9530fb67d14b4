"""The simulator's malicious clients (config `adversary`, experiments only) and robust rules."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.simulation import Simulation, SimulationConfigError, build_world, load_config

from .test_simulation import _config


def _run(world: Any, rule: str, attack: str, fraction: float, *, rounds: bool = False,
         **adv: Any) -> Any:
    # rounds: FedBuff with K = concurrency = every client, i.e. synchronous FedAvg rounds
    agg = ({"name": "fedbuff", "k": 8, "concurrency": 8, "selection_interval_s": 1.0}
           if rounds else {"name": "spin", "k": 3, "pi_s": 2.0})
    cfg = _config(aggregator={**agg, "aggregation": {"rule": rule, "byzantine": 0.25}},
                  adversary={"attack": attack, "fraction": fraction, **adv})
    sim = Simulation(world, load_config(cfg))
    return sim.run(), sim


@pytest.fixture(scope="module")
def world() -> Any:
    return build_world(load_config(_config()))


def test_attackers_are_drawn_with_the_seed_and_reported(world: Any) -> None:
    s1, _ = _run(world, "fedavg", "sign_flip", 0.25)
    s2, _ = _run(world, "fedavg", "sign_flip", 0.25)
    assert len(s1["malicious"]) == 2 and s1["malicious"] == s2["malicious"]
    assert s1["attack"] == "sign_flip" and s1["rule"] == "fedavg"
    clean, _ = _run(world, "fedavg", "none", 0.25)
    assert clean["malicious"] == [] and clean["final_accuracy"] != s1["final_accuracy"]


def test_median_resists_gaussian_noise_that_breaks_fedavg(world: Any) -> None:
    def drift(sim: Any) -> float:
        return sum(float((sim.core.model[n] - t).norm()) for n, t in world.initial_state.items()
                   if t.is_floating_point())

    _, fedavg = _run(world, "fedavg", "gaussian", 0.25, rounds=True, sigma=5.0)
    _, median = _run(world, "median", "gaussian", 0.25, rounds=True, sigma=5.0)
    _, clean = _run(world, "median", "none", 0.0, rounds=True)
    assert fedavg.core.version == median.core.version == clean.core.version > 0
    # FedAvg moves the model by the noise (σ = 5 per coordinate); the median barely notices.
    assert drift(median) < 2 * drift(clean) < 0.1 * drift(fedavg)


def test_inflating_clients_claim_more_samples(world: Any) -> None:
    summary, sim = _run(world, "fedavg", "inflate", 0.25, factor=1000)
    bad = {f"c{i}" for i in summary["malicious"]}
    pushes = [e for e in sim.trace if e["event"] == "push"]
    assert any(e["client"] in bad for e in pushes)
    for e in pushes:
        assert (e["samples"] >= 1000) == (e["client"] in bad)


@pytest.mark.parametrize("attack", ["alie", "ipm", "label_flip", "stale_replay"])
def test_every_attack_runs(world: Any, attack: str) -> None:
    summary, _ = _run(world, "trimmed_mean", attack, 0.25)
    assert summary["aggregations"] > 0 and len(summary["malicious"]) == 2


def test_config_refuses_unknown_attacks() -> None:
    with pytest.raises(SimulationConfigError, match=r"adversary\.attack"):
        load_config(_config(adversary={"attack": "bogus"}))
    with pytest.raises(SimulationConfigError, match=r"aggregation\.rule"):
        load_config(_config(aggregator={"aggregation": {"rule": "bogus"}}))


def test_sync_rounds_every_client_once_and_the_rule_holds_off_noise(world: Any) -> None:
    from orchestrator.simulation.rounds import run_rounds

    def cfg(rule: str, attack: str) -> Any:
        return load_config(_config(aggregator={"aggregation": {"rule": rule}},
                                   adversary={"attack": attack, "fraction": 0.25,
                                              "sigma": 5.0}))

    clean = run_rounds(world, cfg("fedavg", "none"), 3)
    again = run_rounds(world, cfg("fedavg", "none"), 3)
    assert clean["accuracy_by_round"] == again["accuracy_by_round"]
    assert clean["updates"] == 3 * 8 and clean["malicious"] == []
    noisy = run_rounds(world, cfg("fedavg", "gaussian"), 3)
    median = run_rounds(world, cfg("median", "gaussian"), 3)
    assert len(median["malicious"]) == 2

    def drift(summary: dict[str, Any]) -> float:
        return sum(float((summary["state"][n] - t).norm())
                   for n, t in world.initial_state.items() if t.is_floating_point())

    # FedAvg moves the model by the noise (σ = 5 per coordinate); the median barely notices.
    assert drift(median) < 2 * drift(clean) < 0.1 * drift(noisy)
