"""The staleness paper's setting (001 §5.1, §5.3): rounds of FL where some clients lag τ rounds.

Every round (the paper's "epoch") each of ``clients`` clients trains ``epochs`` local epochs of
SGD from the current global model on its Dirichlet(α) share of the data. The
``affected_clients`` clients holding the most samples of ``affected_class`` are slow: the
update each of them starts in round t reaches the server in round t + τ, trained from a model
τ versions old. The server is the SPIN core (``orchestrator.aggregation``) aggregating every
update of the round, with the staleness handler under test, so the same decision and blend
code runs here and in the live service. With ``drift > 0`` each client replaces that fraction
of its samples every round with samples drawn for a second Dirichlet label mix (the variant
data scenario of §5.3, with a label-mix drift in place of the paper's MNIST → SVHN).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.aggregation import SpinAggregator, create_staleness
from orchestrator.aggregation.inversion import Net
from orchestrator.aggregation.staleness import StalenessHandler
from orchestrator.simulation.population import dirichlet_partition
from orchestrator.simulation.trainer import Job, train_jobs
from plexus.spec import DatasetSpec, ModelName, StalenessName

State = dict[str, torch.Tensor]


class StaleRoundsConfig(BaseModel):
    """One run of the paper's setting; the defaults are section 5.1's (LeNet, 100 clients)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    clients: int = Field(100, ge=2)
    alpha: float = Field(1.0, gt=0.0)  # Dirichlet concentration of each client's label mix
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    model: ModelName = "lenet5"
    rounds: int = Field(100, ge=1)
    tau: int = Field(10, ge=0)  # rounds an affected client's update is late
    affected_class: int = Field(5, ge=0)
    affected_clients: int = Field(10, ge=0)
    # 001 §5.1: SGD, rate 0.01, momentum 0.5, 5 epochs; plain SGD at 0.02 stands in for the
    # momentum (1/(1−0.5) = 2× the step in steady state), as the vectorised trainer is plain.
    lr: float = Field(0.02, gt=0.0)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(16, ge=1)
    drift: float = Field(0.0, ge=0.0, le=1.0)  # share of each client's data replaced per round
    reserve: float = Field(0.2, ge=0.0, lt=1.0)  # share of training data kept for the drift
    train_samples: int | None = Field(None, ge=1)  # use only this many training samples
    eval_samples: int | None = Field(None, ge=1)
    staleness: StalenessName = "none"
    staleness_params: dict[str, float] = Field(default_factory=dict)
    threads: int | None = Field(None, ge=1)


@dataclass
class StaleRun:
    """Per-round accuracy (0–1) overall and on the affected class, and what the handler did."""

    config: StaleRoundsConfig
    accuracy: list[float] = field(default_factory=list)
    affected_accuracy: list[float] = field(default_factory=list)
    handler: dict[str, Any] | None = None
    affected: list[int] = field(default_factory=list)
    history: list[State] = field(default_factory=list, repr=False)
    privacy: dict[str, float] | None = None


@dataclass
class _World:
    x: torch.Tensor
    y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    parts: list[np.ndarray]
    reserve: np.ndarray
    drift_mix: np.ndarray  # [clients, classes] the label mix drifted data is drawn from
    net: Net
    classes: int


def _world(cfg: StaleRoundsConfig) -> _World:
    from plexus.datasets import load_dataset
    from plexus.models import build_model

    ds = load_dataset(cfg.dataset, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(ds.train_y))
    n_res = int(cfg.reserve * len(order)) if cfg.drift > 0 else 0
    reserve, used = order[:n_res], order[n_res:]
    if cfg.train_samples is not None:
        used = used[: cfg.train_samples]
    local = dirichlet_partition(ds.train_y[used], cfg.clients, cfg.alpha, rng)
    parts = [used[p] for p in local]
    mix = rng.dirichlet(np.full(ds.num_classes, cfg.alpha), size=cfg.clients)
    test_x, test_y = ds.test_x, ds.test_y
    if cfg.eval_samples is not None:
        test_x, test_y = test_x[: cfg.eval_samples], test_y[: cfg.eval_samples]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, ds.input_shape, ds.num_classes)
    return _World(torch.as_tensor(ds.train_x), torch.as_tensor(ds.train_y),
                  torch.as_tensor(test_x), torch.as_tensor(test_y), parts, reserve, mix,
                  Net(model, tuple(ds.input_shape), ds.num_classes), ds.num_classes)


def affected_clients(parts: list[np.ndarray], labels: np.ndarray, cls: int, k: int) -> list[int]:
    """The ``k`` clients holding the most samples of class ``cls`` (001 §5.1)."""
    counts = [int((labels[p] == cls).sum()) for p in parts]
    return sorted(range(len(parts)), key=lambda c: (-counts[c], c))[:k]


def _drift(world: _World, cfg: StaleRoundsConfig, rng: np.random.Generator) -> None:
    """Replace ``drift`` of each client's samples by reserve samples of its second mix."""
    labels = world.y.numpy()[world.reserve]
    by_class = [world.reserve[labels == c] for c in range(world.classes)]
    for c, part in enumerate(world.parts):
        n = round(cfg.drift * len(part))
        if n == 0:
            continue
        want = rng.choice(world.classes, size=n, p=world.drift_mix[c])
        new = [int(rng.choice(by_class[k])) for k in want if len(by_class[k])]
        slots = rng.choice(len(part), size=len(new), replace=False)
        part[slots] = new


def _handler(cfg: StaleRoundsConfig, net: Net) -> StalenessHandler:
    if cfg.staleness != "inversion":
        return create_staleness(cfg.staleness, **cfg.staleness_params)
    from orchestrator.aggregation.staleness import InversionStaleness

    # Inline and without a wall-clock cut (budget_s huge): a run repeats exactly; the
    # iteration count is the budget here.
    params: dict[str, Any] = {"local_lr": cfg.lr, "local_epochs": cfg.epochs,
                              "batch_size": cfg.batch_size, "workers": 0, "seed": cfg.seed,
                              "budget_s": 1e9, **cfg.staleness_params}
    return InversionStaleness(**params, net=net)


def _score(model: torch.nn.Module, state: State, x: torch.Tensor, y: torch.Tensor,
           cls: int) -> tuple[float, float]:
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    hit = (pred == y).float()
    mask = y == cls
    return float(hit.mean()), float(hit[mask].mean()) if bool(mask.any()) else float("nan")


def run_stale_rounds(cfg: StaleRoundsConfig, *, keep_history: bool = False) -> StaleRun:
    """Run ``cfg.rounds`` rounds; return the accuracy curves and the handler's summary."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    world = _world(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    slow = affected_clients(world.parts, world.y.numpy(), cfg.affected_class,
                            cfg.affected_clients) if cfg.tau > 0 else []
    handler = _handler(cfg, world.net)
    model = world.net.model
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    core = SpinAggregator(init, k=1, pi_s=None, staleness=handler,
                          history_limit=cfg.tau + 2)
    run = StaleRun(cfg, affected=slow)
    late: dict[int, deque[tuple[int, State, int]]] = {c: deque() for c in slow}
    for t in range(cfg.rounds):
        if cfg.drift > 0:
            _drift(world, cfg, rng)
        if keep_history:
            run.history.append(core.model)
        _round(cfg, world, core, t, late)
        acc, aff = _score(model, core.model, world.test_x, world.test_y, cfg.affected_class)
        run.accuracy.append(acc)
        run.affected_accuracy.append(aff)
    run.handler = handler.summary()
    if cfg.staleness == "inversion" and slow:
        run.privacy = privacy_proxy(handler, world, slow[0])
    handler.close()
    return run


def _round(cfg: StaleRoundsConfig, world: _World, core: SpinAggregator, t: int,
           late: dict[int, deque[tuple[int, State, int]]]) -> None:
    """Train every client from version ``t``; push the fresh updates and the late ones due."""
    jobs = [Job(core.model, world.parts[c].copy(), cfg.epochs,
                seed=cfg.seed * 100_003 + t * 997 + c) for c in range(cfg.clients)]
    train_jobs(world.net.model, jobs, world.x, world.y, lr=cfg.lr, batch_size=cfg.batch_size)
    pushes: list[tuple[str, State, int, int]] = []
    for c, job in enumerate(jobs):
        assert job.result is not None
        if c in late:
            late[c].append((t, job.result, len(job.indices)))
            core.pinned.add(t)
            if late[c][0][0] <= t - cfg.tau:
                base, state, n = late[c].popleft()
                pushes.append((str(c), state, base, n))
        else:
            pushes.append((str(c), job.result, t, len(job.indices)))
    core.k = len(pushes)
    for client, state, base, n in pushes:
        core.push(float(t), client, state, base, n)
    oldest = min((q[0][0] for q in late.values() if q), default=t + 1)
    core.pinned = {v for v in core.pinned if v >= oldest}


def privacy_proxy(handler: StalenessHandler, world: _World, client: int) -> dict[str, float]:
    """Nearest-neighbour L2 distance (input space) from D_rec to the client's real samples,
    against the same distance from real samples the client never held (a baseline: how close
    an unrelated real image of the data set comes). A ratio well above 1 means D_rec samples
    are further from the client's data than other people's data is (001 fig. 5, LPIPS-free)."""
    recs = getattr(handler, "_recs", {})
    rec = recs.get(str(client))
    if rec is None:
        return {}
    own = world.x[torch.as_tensor(world.parts[client])].flatten(1)
    held = set(world.parts[client].tolist())
    others = torch.as_tensor([i for i in range(len(world.y)) if i not in held][: len(rec) * 4])
    d_rec = torch.cdist(rec.x.flatten(1), own).min(dim=1).values
    d_other = torch.cdist(world.x[others].flatten(1), own).min(dim=1).values
    return {"rec_nn_median": float(d_rec.median()), "other_nn_median": float(d_other.median()),
            "ratio": float(d_rec.median() / d_other.median()), "rec_samples": float(len(rec))}


def _rel_l1(est: Mapping[str, torch.Tensor], true: Mapping[str, torch.Tensor],
            ref: Mapping[str, torch.Tensor]) -> float:
    """|(est − ref) − (true − ref)|₁ / |true − ref|₁ over the parameters (update error)."""
    num = sum(float((est[n].float() - true[n].float()).abs().sum()) for n in true)
    den = sum(float((true[n].float() - ref[n].float()).abs().sum()) for n in true)
    return num / den if den > 0 else float("nan")


def estimation_errors(cfg: StaleRoundsConfig, history: list[State], taus: list[int],
                      clients: list[int], *, iterations: int = 50, fraction: float = 0.5,
                      dcasgd_c: float = 1.0,
                      on_tau: Callable[[int, dict[str, float]], None] | None = None,
                      ) -> dict[int, dict[str, float]]:
    """001 fig. 7: relative L1 error of the estimated fresh update vs the true one.

    At the last round T of ``history`` (the global models of a run), for each ``τ`` and each
    client: the stale update trains from version T − τ, the true one from T (same data,
    same seed); the estimates are the stale update as is (direct), DC-ASGD's first-order
    compensation and the inversion's recomputed update. Means over ``clients``, with the
    inversion's own residual (``inversion_loss``: the relative L1 gap at which it stopped,
    how well D_rec reproduces the stale update at its base) and its ``inversion_s``.
    ``on_tau(τ, errors)`` is called as each τ is done (a long run shows its progress).
    """
    from orchestrator.aggregation.inversion import Recipe, invert, rec_size, recompute
    from orchestrator.aggregation.staleness import DCASGDStaleness

    world = _world(cfg)
    model, last = world.net.model, len(history) - 1
    now = history[last]
    dc = DCASGDStaleness(dcasgd_c)
    out: dict[int, dict[str, float]] = {}
    for tau in (t for t in taus if t <= last):
        base = history[last - tau]
        errs: dict[str, list[float]] = {"direct": [], "dcasgd": [], "inversion": [],
                                        "inversion_loss": [], "inversion_s": []}
        for c in clients:
            jobs = [Job(s, world.parts[c].copy(), cfg.epochs, seed=cfg.seed + c)
                    for s in (base, now)]
            train_jobs(model, jobs, world.x, world.y, lr=cfg.lr, batch_size=cfg.batch_size)
            stale, true = jobs[0].result, jobs[1].result
            assert stale is not None and true is not None
            recipe = Recipe.for_client(cfg.lr, cfg.epochs, cfg.batch_size, len(world.parts[c]))
            rec, cost = invert(model, base, stale,
                               n_rec=rec_size(len(world.parts[c]), fraction), recipe=recipe,
                               input_shape=world.net.input_shape, classes=world.classes,
                               max_iters=iterations, seed=cfg.seed + c)
            est = recompute(model, now, rec, recipe, stale)
            replay = {n: now[n] + stale[n] - base[n] for n in stale}
            errs["direct"].append(_rel_l1(replay, true, now))
            errs["dcasgd"].append(_rel_l1(dc.adjust(stale, base, now), true, now))
            errs["inversion"].append(_rel_l1(est, true, now))
            errs["inversion_loss"].append(cost.loss)
            errs["inversion_s"].append(cost.seconds)
        out[tau] = {k: float(np.mean(v)) for k, v in errs.items()}
        if on_tau is not None:
            on_tau(tau, out[tau])
    return out
