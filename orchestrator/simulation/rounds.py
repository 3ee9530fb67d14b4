"""Synchronous FedAvg rounds over a simulated world (no clock): every client, every round.

The asynchronous engine (``engine.py``) cannot express a round barrier: a FedBuff buffer of K
updates may hold two updates of one fast client. ``run_rounds`` is the synchronous
counterpart of ``orchestrator.runs.rounds.close_round``: each round every client trains
``training.epochs`` epochs over all of its samples from the current global model (real SGD,
``train_jobs``), the malicious clients of ``config.adversary`` rewrite their answers, and the
rule of ``config.aggregator.aggregation`` combines them exactly as ``close_round`` does
(FedAvg by samples: ``weighted_average``; any other rule: ``robust.aggregate``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from orchestrator.aggregation.fedavg import weighted_average
from orchestrator.aggregation.robust import RobustRule, aggregate
from orchestrator.simulation.adversary import Attackers
from orchestrator.simulation.config import SimulationConfig
from orchestrator.simulation.engine import World, _seed_for
from orchestrator.simulation.trainer import Job, train_jobs


def run_rounds(world: World, config: SimulationConfig, rounds: int) -> dict[str, Any]:
    """``rounds`` synchronous rounds; the summary holds the accuracy after each and the final
    global model (``state``)."""
    from plexus.attacks import flip_labels
    from plexus.models import build_model
    from plexus.training import evaluate

    wall0 = time.perf_counter()
    rule = RobustRule.from_spec(config.aggregator.aggregation)
    attackers = Attackers(config.adversary, config.clients, _seed_for(config.seed, 11))
    x, y = world.train_x, world.train_y
    if attackers.flips_labels:
        x, y = torch.cat([x, x]), torch.cat([y, flip_labels(y, world.num_classes)])
    model = build_model(config.model, world.input_shape, world.num_classes)
    scorer = build_model(config.model, world.input_shape, world.num_classes)
    state = {k: v.detach().clone() for k, v in world.initial_state.items()}
    curve: list[float] = []
    for r in range(rounds):
        jobs = []
        for i in range(config.clients):
            idx = world.streams[i]
            if attackers.flips_labels and attackers.is_malicious(i):
                idx = idx + len(world.train_y)
            jobs.append(Job(base=state, indices=idx, epochs=config.training.epochs,
                            seed=_seed_for(config.seed, i, r)))
        train_jobs(model, jobs, x, y, lr=config.training.lr,
                   batch_size=config.training.batch_size, batched=config.batched_training)
        results = {i: j.result for i, j in enumerate(jobs) if j.result is not None}
        results.update(attackers.apply([(i, state, s) for i, s in results.items()]))
        states = [results[i] for i in range(config.clients)]
        weights = [float(attackers.samples(i, len(world.streams[i])))
                   for i in range(config.clients)]
        state = (weighted_average(states, weights) if rule.rule == "fedavg"
                 else aggregate(rule, state, states, weights))
        scorer.load_state_dict(state)
        curve.append(float(evaluate(scorer, world.eval_x, world.eval_y)[1]))
    return {
        "rule": rule.rule,
        "attack": config.adversary.attack,
        "malicious": sorted(attackers.malicious),
        "initial_accuracy": world.initial_accuracy,
        "final_accuracy": curve[-1] if curve else world.initial_accuracy,
        "best_accuracy": max([world.initial_accuracy, *curve]),
        "accuracy_by_round": curve,
        "aggregations": rounds,
        "updates": rounds * config.clients,
        "wall_s": time.perf_counter() - wall0,
        "state": state,
    }
