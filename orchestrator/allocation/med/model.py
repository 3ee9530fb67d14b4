"""MED model: instance schema, expected-delay coefficients (thesis eq. 4.3), objective and
constraint check of eq. 4.4.

Units: model and shard sizes in bytes, bandwidth b in bytes/s, compute c in samples/s (as in
`plexus.cost`; the thesis's eq. 4.2 writes c in shards/s, which is the case s = μ = 1),
deadlines and delays in seconds, prices per shard in the budget's currency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SolverName = Literal["auto", "dp", "gurobi", "highs", "lagrange"]
Status = Literal["optimal", "feasible", "infeasible", "no_solution", "licence_limit"]

# Constraint families of eq. 4.4, as reported when an instance is infeasible.
FAMILIES: dict[str, str] = {
    "deadline": "4.4b expected delay within the task deadline T_i",
    "task_size": "4.4c every shard of each task allocated (sum_j d_ij = D_i)",
    "budget": "4.4d total price within the budget B",
    "min_shards": "4.4e every learner gets at least D_l shards",
    "one_task": "4.4f each learner serves at most one task",
}


# ---------------------------------------------------------------- instance schema (pydantic)


# Every model below refuses NaN and ±Infinity (allow_inf_nan=False), naming the field: an
# infinite deadline or model size otherwise passes `gt=0` and breaks the solvers downstream.


class MedTask(BaseModel):
    """One requester's task r_i (thesis 4.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1)
    shards: int = Field(gt=0, description="D_i, shards to train per GUC")
    deadline_s: float = Field(gt=0, description="T_i, seconds")
    model_bytes: float = Field(ge=0, description="Omega_i, bytes of model parameters")
    shard_bytes: float = Field(ge=0, description="alpha_i, bytes per shard")
    shard_samples: int = Field(default=1, gt=0, description="s, samples per shard")
    iterations: int = Field(default=1, gt=0, description="mu, passes over the shards")


class MedLearner(BaseModel):
    """One learner w_j with its per-state benchmarks (thesis 4.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1)
    price: float = Field(ge=0, description="p_j per shard")
    state_probs: list[float] = Field(min_length=1, description="gamma_jk, one per state")
    bandwidth: list[float] = Field(min_length=1, description="b_jk in bytes/s, one per state")
    compute: dict[str, list[float]] = Field(
        description="c_ijk in samples/s: task name -> one rate per state"
    )
    benchmarked_state: int = Field(
        default=0, ge=0, description="state index SB ran in (what MMTT-Uncertain believes)"
    )

    @field_validator("state_probs")
    @classmethod
    def _probs(cls, v: list[float]) -> list[float]:
        if any(p < 0 or not math.isfinite(p) for p in v):
            raise ValueError("state probabilities must be finite and >= 0")
        if abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"state probabilities must sum to 1 (they sum to {sum(v):.6g})")
        return v

    @field_validator("bandwidth")
    @classmethod
    def _bw(cls, v: list[float]) -> list[float]:
        if any(not (b > 0 and math.isfinite(b)) for b in v):
            raise ValueError("every bandwidth must be a positive finite number of bytes/s")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> MedLearner:
        h = len(self.state_probs)
        if len(self.bandwidth) != h:
            raise ValueError(f"bandwidth has {len(self.bandwidth)} entries, state_probs has {h}")
        for task, rates in self.compute.items():
            if len(rates) != h:
                raise ValueError(f"compute[{task!r}] has {len(rates)} entries, expected {h}")
            if any(not (c > 0 and math.isfinite(c)) for c in rates):
                raise ValueError(f"compute[{task!r}] must hold positive finite samples/s")
        if self.benchmarked_state >= h:
            raise ValueError(f"benchmarked_state {self.benchmarked_state} >= number of states {h}")
        return self


class MedInstance(BaseModel):
    """A whole MED problem: learners, tasks, budget B and per-learner minimum D_l (eq. 4.4)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    states: list[str] | None = Field(default=None, description="optional state names")
    budget: float = Field(ge=0, description="B, total price allowed")
    min_shards: int = Field(default=0, ge=0, description="D_l, shards every learner must get")
    tasks: list[MedTask] = Field(min_length=1)
    learners: list[MedLearner] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> MedInstance:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        lnames = [w.name for w in self.learners]
        if len(set(lnames)) != len(lnames):
            raise ValueError("learner names must be unique")
        h = len(self.learners[0].state_probs)
        if self.states is not None and len(self.states) != h:
            raise ValueError(f"states lists {len(self.states)} names, learners have {h} states")
        for idx, w in enumerate(self.learners):
            if len(w.state_probs) != h:
                raise ValueError(
                    f"learners[{idx}] ({w.name}) has {len(w.state_probs)} states, "
                    f"learners[0] has {h}: every learner needs the same states"
                )
            missing = [t for t in names if t not in w.compute]
            if missing:
                raise ValueError(f"learners[{idx}] ({w.name}) has no compute rates for {missing}")
            unknown = [t for t in w.compute if t not in names]
            if unknown:
                raise ValueError(
                    f"learners[{idx}] ({w.name}) has rates for unknown tasks {unknown}"
                )
        return self

    def with_state_probs(self, probs: np.ndarray) -> MedInstance:
        """A copy whose learners have the state probabilities `probs` (n x h)."""
        learners = [
            w.model_copy(update={"state_probs": [float(p) for p in probs[j]]})
            for j, w in enumerate(self.learners)
        ]
        return self.model_copy(update={"learners": learners})


# ---------------------------------------------------------------- cost coefficients (eq. 4.3)


@dataclass(frozen=True)
class Coefficients:
    """δ_ij = fixed[i,j]·x_ij + per_shard[i,j]·d_ij (seconds), and the tight cap on d_ij.

    fixed     = 2Ω_i · Σ_k γ_jk / b_jk                        (model down + up, eq. 4.3)
    per_shard = Σ_k γ_jk · (α_i / b_jk + μ_i s_i / c_ijk)      (shard download + training)
    cap       = min(D_i, ⌊(T_i − fixed)/per_shard⌋, ⌊B/p_j⌋)   (big-M; see docs/algorithms.md)
    """

    fixed: np.ndarray  # (m, n) seconds
    per_shard: np.ndarray  # (m, n) seconds per shard
    cap: np.ndarray  # (m, n) int, shards
    price: np.ndarray  # (n,)
    shards: np.ndarray  # (m,) int
    deadline: np.ndarray  # (m,) seconds


def coefficients(
    inst: MedInstance, *, enforce_deadlines: bool = True, enforce_budget: bool = True
) -> Coefficients:
    """Expected-delay coefficients of eq. 4.3 and big-M caps, vectorised over (task, learner)."""
    tasks, learners = inst.tasks, inst.learners
    gamma = np.array([w.state_probs for w in learners], dtype=float)  # (n, h)
    inv_b = 1.0 / np.array([w.bandwidth for w in learners], dtype=float)  # (n, h)
    inv_c = np.array(
        [[[1.0 / c for c in w.compute[t.name]] for w in learners] for t in tasks], dtype=float
    )  # (m, n, h)
    omega = np.array([t.model_bytes for t in tasks], dtype=float)
    alpha = np.array([t.shard_bytes for t in tasks], dtype=float)
    work = np.array([t.iterations * t.shard_samples for t in tasks], dtype=float)
    e_inv_b = (gamma * inv_b).sum(axis=1)  # (n,) E[1/b_j]
    e_inv_c = (gamma[None, :, :] * inv_c).sum(axis=2)  # (m, n) E[1/c_ij]
    fixed = 2.0 * omega[:, None] * e_inv_b[None, :]
    per_shard = alpha[:, None] * e_inv_b[None, :] + work[:, None] * e_inv_c
    shards = np.array([t.shards for t in tasks], dtype=np.int64)
    deadline = np.array([t.deadline_s for t in tasks], dtype=float)
    price = np.array([w.price for w in learners], dtype=float)
    cap = np.broadcast_to(shards[:, None], fixed.shape).astype(np.int64)
    if enforce_deadlines:
        # Largest d with fixed + per_shard·d ≤ T_i; the 1e-9 guards against 3.9999999 → 3.
        room = (deadline[:, None] - fixed) / per_shard
        by_deadline = np.floor(np.where(room < 0, -1.0, room) + 1e-9)
        cap = np.minimum(cap, by_deadline.astype(np.int64))
    if enforce_budget:
        # A learner can never take more shards than the whole budget pays for at its price.
        safe = np.where(price > 0, price, 1.0)
        by_budget = np.where(price > 0, np.floor(inst.budget / safe + 1e-9), float(shards.max()))
        by_budget = np.minimum(by_budget, float(shards.max())).astype(np.int64)
        cap = np.minimum(cap, by_budget[None, :])
    return Coefficients(fixed, per_shard, np.maximum(cap, -1), price, shards, deadline)


def expected_delays(inst: MedInstance, alloc: np.ndarray) -> np.ndarray:
    """δ_ij of eq. 4.3 for an (m, n) allocation, seconds; 0 where learner j does not serve i."""
    co = coefficients(inst, enforce_deadlines=False)
    d = np.asarray(alloc, dtype=float)
    return np.where(d > 0, co.fixed + co.per_shard * d, 0.0)


def med_objective(inst: MedInstance, alloc: np.ndarray) -> float:
    """Σ_i max_j δ_ij (eq. 4.4a), seconds."""
    return float(expected_delays(inst, alloc).max(axis=1).sum())


def check_allocation(
    inst: MedInstance, alloc: np.ndarray, *, enforce_deadlines: bool = True
) -> list[str]:
    """Every constraint of eq. 4.4 that `alloc` (m x n shards) violates, as readable lines."""
    d = np.asarray(alloc)
    bad: list[str] = []
    if d.shape != (len(inst.tasks), len(inst.learners)):
        return [f"allocation shape {d.shape} is not (tasks, learners)"]
    if (d < 0).any() or not np.array_equal(d, np.round(d)):
        bad.append("allocation must hold non-negative whole shards")
    delays = expected_delays(inst, d)
    for i, t in enumerate(inst.tasks):
        if enforce_deadlines and delays[i].max() > t.deadline_s * (1 + 1e-9):
            bad.append(
                f"4.4b: task {t.name} expected delay {delays[i].max():.4g}s > {t.deadline_s}s"
            )
        if d[i].sum() != t.shards:
            bad.append(f"4.4c: task {t.name} got {int(d[i].sum())} shards, needs {t.shards}")
    cost = float((d * np.array([w.price for w in inst.learners])[None, :]).sum())
    if cost > inst.budget * (1 + 1e-9) + 1e-9:
        bad.append(f"4.4d: cost {cost:.4g} > budget {inst.budget}")
    for j, w in enumerate(inst.learners):
        if d[:, j].sum() < inst.min_shards:
            bad.append(f"4.4e: learner {w.name} got {int(d[:, j].sum())} < D_l={inst.min_shards}")
        if (d[:, j] > 0).sum() > 1:
            bad.append(f"4.4f: learner {w.name} serves {(d[:, j] > 0).sum()} tasks")
    return bad


# ---------------------------------------------------------------- what a solve reports


@dataclass
class MedResult:
    """An allocation and the solver's report.

    `allocation[i, j]` is d_ij in shards (None unless a solution was found); `objective` is the
    solver's Σ_i t_i and `task_delay_s` the recomputed max_j δ_ij per task, seconds; `gap` is
    |objective − bound| / |objective|; `solve_time_s` is the solver's own run time, seconds.
    `infeasible_families` names the eq. 4.4 families whose relaxation alone restores
    feasibility (several names in one entry joined by "+" when only a pair does).
    """

    method: str
    status: Status
    backend: str | None
    objective: float | None
    bound: float | None
    gap: float | None
    solve_time_s: float
    allocation: np.ndarray | None
    task_delay_s: list[float] | None
    num_vars: int
    num_rows: int
    infeasible_families: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def solved(self) -> bool:
        return self.allocation is not None

    def to_dict(self, inst: MedInstance) -> dict[str, object]:
        """A JSON-ready report: allocation as {task: {learner: shards}} (zeros left out)."""
        alloc: dict[str, dict[str, int]] | None = None
        assignment: dict[str, str | None] | None = None
        if self.allocation is not None:
            alloc, assignment = {}, {}
            for i, t in enumerate(inst.tasks):
                alloc[t.name] = {
                    w.name: int(self.allocation[i, j])
                    for j, w in enumerate(inst.learners)
                    if self.allocation[i, j] > 0
                }
            for j, w in enumerate(inst.learners):
                served = np.nonzero(self.allocation[:, j] > 0)[0]
                assignment[w.name] = inst.tasks[int(served[0])].name if served.size else None
        cost = (
            float((self.allocation * np.array([w.price for w in inst.learners])).sum())
            if self.allocation is not None
            else None
        )
        return {
            "method": self.method,
            "status": self.status,
            "backend": self.backend,
            "objective_s": self.objective,
            "bound_s": self.bound,
            "gap": self.gap,
            "solve_time_s": self.solve_time_s,
            "num_vars": self.num_vars,
            "num_constraints": self.num_rows,
            "task_delay_s": (
                dict(zip([t.name for t in inst.tasks], self.task_delay_s, strict=True))
                if self.task_delay_s is not None
                else None
            ),
            "cost": cost,
            "allocation": alloc,
            "assignment": assignment,
            "infeasible_families": self.infeasible_families,
            "notes": self.notes,
        }
