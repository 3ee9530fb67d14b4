"""MED: multi-task allocation minimising the summed maximum expected delay (thesis eq. 4.4).

Sans-IO: an instance goes in, an allocation and a solver report come out; no file, socket or
clock is touched here (the solver reports its own run time). The ILP of thesis eq. 4.4 is
linearised as written out in docs/algorithms.md ("MED"); the two solver backends (Gurobi,
HiGHS) live in `orchestrator.allocation.solvers` and receive the same sparse matrix.

Units: model and shard sizes in bytes, bandwidth b in bytes/s, compute c in samples/s (as in
`plexus.cost`; the thesis's eq. 4.2 writes c in shards/s, which is the case s = μ = 1),
deadlines and delays in seconds, prices per shard in the budget's currency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from orchestrator.allocation.solvers import RawResult

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


class TaskSpec(BaseModel):
    """One requester's task r_i (thesis 4.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    shards: int = Field(gt=0, description="D_i, shards to train per GUC")
    deadline_s: float = Field(gt=0, description="T_i, seconds")
    model_bytes: float = Field(ge=0, description="Omega_i, bytes of model parameters")
    shard_bytes: float = Field(ge=0, description="alpha_i, bytes per shard")
    shard_samples: int = Field(default=1, gt=0, description="s, samples per shard")
    iterations: int = Field(default=1, gt=0, description="mu, passes over the shards")


class LearnerSpec(BaseModel):
    """One learner w_j with its per-state benchmarks (thesis 4.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    def _shapes(self) -> LearnerSpec:
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

    model_config = ConfigDict(extra="forbid", frozen=True)

    states: list[str] | None = Field(default=None, description="optional state names")
    budget: float = Field(ge=0, description="B, total price allowed")
    min_shards: int = Field(default=0, ge=0, description="D_l, shards every learner must get")
    tasks: list[TaskSpec] = Field(min_length=1)
    learners: list[LearnerSpec] = Field(min_length=1)

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


# ---------------------------------------------------------------- the linearised ILP


def task_time_lower_bounds(
    co: Coefficients, ii: np.ndarray, jj: np.ndarray, need: int
) -> np.ndarray:
    """tl_i ≤ t_i in every feasible solution, seconds (one per task).

    If task i had every eligible learner to itself and could split shards fractionally, it
    would still need t with g_i(t) = Σ_j min(cap_ij, max(0, (t − fixed_ij)/per_shard_ij)) ≥ D_i,
    and at least one learner carrying `need` shards: t ≥ min_j fixed_ij + need·per_shard_ij.
    g_i is non-decreasing, so the smallest such t is found by bisection (vectorised).
    """
    m = co.shards.size
    fixed, per, cap = co.fixed[ii, jj], co.per_shard[ii, jj], co.cap[ii, jj].astype(float)
    first = np.full(m, np.inf)
    np.minimum.at(first, ii, fixed + need * per)
    hi_t = np.zeros(m)
    np.maximum.at(hi_t, ii, fixed + cap * per)
    lo = np.where(np.isfinite(first), first, 0.0)
    hi = np.maximum(hi_t, lo)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        give = np.minimum(cap, np.maximum(0.0, (mid[ii] - fixed) / per))
        got = np.bincount(ii, weights=give, minlength=m)
        ok = got >= co.shards - 1e-9
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    # lo is infeasible-or-first and hi feasible; lo is the safe (valid) side of the bound.
    base = np.where(np.isfinite(first), first, 0.0)
    return np.maximum(lo, base) * (1.0 - 1e-9)


@dataclass
class Milp:
    """min cost·v  s.t.  row_lo ≤ A v ≤ row_hi,  col_lo ≤ v ≤ col_hi,  v_k integer where marked.

    Columns: d for each eligible (task, learner) pair, then x for the same pairs, then t_i.
    """

    cost: np.ndarray
    A: object  # scipy.sparse.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray  # bool per column
    pairs: np.ndarray  # (P, 2) (task i, learner j) of each d / x column
    m: int
    n: int
    row_family: list[str] = field(default_factory=list)

    @property
    def num_vars(self) -> int:
        return int(self.cost.size)

    @property
    def num_rows(self) -> int:
        return int(self.row_lo.size)


def build_milp(
    inst: MedInstance,
    *,
    relax: frozenset[str] = frozenset(),
    objective: Literal["delay", "cost", "none"] = "delay",
    tangents: int = 12,
) -> Milp:
    """The linearised eq. 4.4 as one sparse matrix, built without Python loops over pairs.

    `relax` drops constraint families by name (keys of FAMILIES) for infeasibility diagnosis;
    `objective` "cost" minimises Σ d·p instead (used to report the budget an instance needs).
    """
    from scipy import sparse

    m, n = len(inst.tasks), len(inst.learners)
    co = coefficients(
        inst, enforce_deadlines="deadline" not in relax, enforce_budget="budget" not in relax
    )
    dl = 0 if "min_shards" in relax else inst.min_shards
    # A pair (i, j) can be used only if j can take max(1, D_l) shards of i within its caps:
    # when D_l ≥ 1 and j serves i, j's whole allocation is d_ij (4.4f), so d_ij ≥ D_l.
    need = max(1, dl) if "one_task" not in relax else 1
    elig = co.cap >= need
    ii, jj = np.nonzero(elig)
    P = ii.size
    nv = 2 * P + m
    d_col = np.arange(P)
    x_col = P + np.arange(P)
    t_col = 2 * P + np.arange(m)

    cost = np.zeros(nv)
    if objective == "delay":
        cost[t_col] = 1.0
    elif objective == "cost":
        cost[d_col] = co.price[jj]
    col_lo = np.zeros(nv)
    col_hi = np.empty(nv)
    col_hi[d_col] = co.cap[ii, jj]
    col_hi[x_col] = 1.0
    # 4.4b: t_i ≥ δ_ij, so t_i ≤ T_i bounds every δ_ij at once.
    col_hi[t_col] = co.deadline if "deadline" not in relax else np.inf
    integer = np.zeros(nv, dtype=bool)
    integer[: 2 * P] = True

    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    lo: list[np.ndarray] = []
    hi: list[np.ndarray] = []
    fam: list[str] = []
    r0 = 0

    def add(r: np.ndarray, c: np.ndarray, v: np.ndarray, rlo: np.ndarray, rhi: np.ndarray,
            family: str) -> None:
        nonlocal r0
        rows.append((r + r0, c, v))
        lo.append(rlo)
        hi.append(rhi)
        fam.extend([family] * rlo.size)
        r0 += rlo.size

    k = np.arange(P)
    # Per-task max (objective epigraph), in the convex-hull form of the disjunction
    # "x=1: per_shard·d + fixed ≤ t_i" or "x=0: d=0" with t_i ≥ tl_i (docs/algorithms.md):
    # per_shard·d + (fixed − tl_i)·x − t_i ≤ −tl_i. With tl_i = 0 it is the plain
    # per_shard·d + fixed·x ≤ t_i; a valid tl_i > 0 stops the LP from time-sharing learners.
    tl = task_time_lower_bounds(co, ii, jj, need)
    col_lo[t_col] = tl
    add(np.concatenate([k, k, k]), np.concatenate([d_col, x_col, t_col[ii]]),
        np.concatenate([co.per_shard[ii, jj], co.fixed[ii, jj] - tl[ii], -np.ones(P)]),
        np.full(P, -np.inf), -tl[ii], "objective")
    # Time-sharing cuts (valid, docs/algorithms.md). With f_i = min_j fixed_ij, every learner
    # serving i carries d_ij ≤ (t_i − fixed_ij)/per_ij ≤ (t_i − f_i)·rate_ij for t_i ≤ t̄_i, so
    # D_i/(t_i − f_i) ≤ Σ_j rate_ij·x_ij: convex in t_i, added as tangent cuts at θ:
    # Σ_j rate_ij·x_ij + D_i/(θ−f_i)²·t_i ≥ D_i/(θ−f_i) + D_i·θ/(θ−f_i)². Without them the LP
    # lets every learner work for every task at once through fractional x.
    if tangents > 0 and P > 0:
        fixed_p, per_p, cap_p = co.fixed[ii, jj], co.per_shard[ii, jj], co.cap[ii, jj]
        f0 = np.full(m, np.inf)
        np.minimum.at(f0, ii, fixed_p)
        f0 = np.where(np.isfinite(f0), f0, 0.0)
        tu = np.zeros(m)
        np.maximum.at(tu, ii, fixed_p + per_p * cap_p)
        if "deadline" not in relax:
            tu = np.minimum(tu, co.deadline)
        # tl_i > f_i always (a learner needs time for one shard); the floor only guards tasks
        # no learner can serve, for which 4.4c is infeasible anyway.
        span_lo = np.maximum(tl - f0, 1e-6)
        span_hi = np.maximum(tu - f0, span_lo * (1 + 1e-6))
        shrink = np.clip(1.0 - (fixed_p - f0[ii]) / span_hi[ii], 0.0, 1.0)
        rate = np.minimum(shrink / per_p, cap_p / span_lo[ii])
        spans = np.exp(np.linspace(np.log(span_lo), np.log(span_hi), tangents, axis=1))
        D = co.shards.astype(float)
        for q in range(tangents):
            sp = spans[:, q]  # θ − f_i
            add(np.concatenate([ii, np.arange(m)]), np.concatenate([x_col, t_col]),
                np.concatenate([rate, D / sp**2]), D / sp + D * (sp + f0) / sp**2,
                np.full(m, np.inf), "timeshare")
    # Linking (big-M): d_ij ≤ cap_ij·x_ij. The reverse link d_ij ≥ x_ij is left out: a pair
    # with x = 1 and d = 0 can only raise t_i and use up j's one task, so dropping such an x
    # never worsens a solution; the result reports x as d > 0 (saves P rows).
    add(np.concatenate([k, k]), np.concatenate([d_col, x_col]),
        np.concatenate([np.ones(P), -co.cap[ii, jj].astype(float)]),
        np.full(P, -np.inf), np.zeros(P), "link")
    # 4.4c: Σ_j d_ij = D_i ("task_size" relaxed: ≤ D_i).
    add(ii, d_col, np.ones(P),
        np.full(m, -np.inf) if "task_size" in relax else co.shards.astype(float),
        co.shards.astype(float), "task_size")
    # 4.4d: Σ d_ij p_j ≤ B.
    if "budget" not in relax:
        add(np.zeros(P, dtype=np.int64), d_col, co.price[jj], np.array([-np.inf]),
            np.array([inst.budget]), "budget")
    # 4.4e: Σ_i d_ij ≥ D_l for every learner (the thesis: "each learner is assigned a lower
    # bound of data shards D_l").
    if dl > 0:
        add(jj, d_col, np.ones(P), np.full(n, float(dl)), np.full(n, np.inf), "min_shards")
    # 4.4f: Σ_i x_ij ≤ 1; with D_l ≥ 1 every learner serves exactly one task, so = 1.
    if "one_task" not in relax:
        add(jj, x_col, np.ones(P), np.full(n, 1.0 if dl > 0 else -np.inf), np.ones(n), "one_task")

    r = np.concatenate([t[0] for t in rows])
    c = np.concatenate([t[1] for t in rows])
    v = np.concatenate([t[2] for t in rows])
    A = sparse.csr_matrix((v, (r, c)), shape=(r0, nv))
    return Milp(cost, A, np.concatenate(lo), np.concatenate(hi), col_lo, col_hi, integer,
                np.stack([ii, jj], axis=1), m, n, fam)


# ---------------------------------------------------------------- solving and reporting


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


def _run(
    milp: Milp,
    solver: SolverName,
    *,
    time_limit_s: float,
    mip_gap: float,
    gurobi_size_limit: int | None,
    seed: int,
    notes: list[str],
    start: np.ndarray | None = None,
) -> RawResult:
    from orchestrator.allocation import solvers

    if solver == "highs":
        return solvers.solve_highs(milp, time_limit_s=time_limit_s, mip_gap=mip_gap, seed=seed,
                                   start=start)
    if solver == "gurobi":
        if not solvers.gurobi_importable():
            raise solvers.SolverUnavailable(
                "solver='gurobi' but gurobipy does not import; install gurobipy or use "
                "solver='highs' / 'auto'"
            )
        return solvers.solve_gurobi(milp, time_limit_s=time_limit_s, mip_gap=mip_gap,
                                    seed=seed, size_limit=gurobi_size_limit, start=start)
    # auto: Gurobi when it imports and the model fits its licence, else HiGHS.
    if solvers.gurobi_importable():
        too_big = solvers.licence_check(milp, gurobi_size_limit)
        if too_big is None:
            raw = solvers.solve_gurobi(milp, time_limit_s=time_limit_s, mip_gap=mip_gap,
                                       seed=seed, size_limit=gurobi_size_limit, start=start)
            if raw.status != "licence_limit":
                return raw
            too_big = raw.message
        _note(notes, f"gurobi not used: {too_big}; solved with HiGHS")
    else:
        _note(notes, "gurobipy does not import; solved with HiGHS")
    return solvers.solve_highs(milp, time_limit_s=time_limit_s, mip_gap=mip_gap, seed=seed,
                               start=start)


def _note(notes: list[str], line: str) -> None:
    if line not in notes:
        notes.append(line)


def solve_med(
    inst: MedInstance,
    *,
    solver: SolverName = "auto",
    time_limit_s: float = 10.0,
    mip_gap: float = 1e-4,
    gurobi_size_limit: int | None = 2000,
    enforce_deadlines: bool = True,
    diagnose: bool = True,
    warm_start: bool = True,
    relaxation_bound: bool = True,
    seed: int = 0,
    method: str = "med",
) -> MedResult:
    """Solve MED (thesis eq. 4.4) and report; never raises for an infeasible instance.

    `solver`: "gurobi", "highs", "dp" (exact subset DP, small fleets only), "lagrange" (greedy
    + local search with a Lagrangian lower bound, `med_lagrange`), or "auto" (the DP when the
    fleet is small and its answer fits the budget, else "lagrange"; if that is not proven within
    `mip_gap`, Gurobi continues from its allocation when the model fits `gurobi_size_limit`,
    and the better of the two bounds is reported; HiGHS only when no greedy start exists). `time_limit_s` seconds
    per solve, `mip_gap` relative. `enforce_deadlines=False` drops 4.4b (learners then halt at T_i).
    An infeasible instance comes back with status "infeasible" and `infeasible_families`.
    `warm_start` hands the solver `greedy_allocation` as its first incumbent;
    `relaxation_bound` tightens the reported bound with `timeshare_relaxation` when the solver
    stops before `mip_gap` (its run time is not included in `solve_time_s`).
    """
    relax = frozenset() if enforce_deadlines else frozenset({"deadline"})
    notes: list[str] = []
    if not enforce_deadlines:
        notes.append("deadlines (4.4b) not enforced: learners halt at T_i")
    m, n = len(inst.tasks), len(inst.learners)
    if solver in ("auto", "dp"):
        from orchestrator.allocation import solvers_dp

        if solvers_dp.dp_applicable(n, m):
            co = coefficients(inst, enforce_deadlines=enforce_deadlines)
            alloc, why, secs = solvers_dp.solve_dp(co, inst.min_shards, inst.budget)
            if alloc is not None:
                obj = med_objective(inst, alloc)
                return MedResult(method, "optimal", "dp", obj, obj, 0.0, secs, alloc,
                                 [float(x) for x in expected_delays(inst, alloc).max(axis=1)],
                                 0, 0, notes=notes)
            _note(notes, f"subset DP did not decide ({why})")
        elif solver == "dp":
            _note(notes, f"subset DP not applicable to {n} learners x {m} tasks; used the MILP")
        solver = "auto"
    lagrange: MedResult | None = None
    if solver == "lagrange" or (solver == "auto" and warm_start):
        # Beyond the DP, auto starts with the Lagrangian backend (med_lagrange.py): its bound
        # keeps the shard integrality the MILP's LP relaxation loses.
        from orchestrator.allocation.med_lagrange import solve_lagrange

        from orchestrator.allocation import solvers

        # When Gurobi may continue afterwards (it imports and a model of 2·m·n + m columns can
        # fit its licence), the Lagrangian backend gets half the time.
        may_follow = solver == "auto" and solvers.gurobi_importable() and (
            gurobi_size_limit is None or 2 * m * n + m <= gurobi_size_limit)
        lagrange = solve_lagrange(inst, time_limit_s=time_limit_s * (0.5 if may_follow else 1.0),
                                  mip_gap=mip_gap,
                                  enforce_deadlines=enforce_deadlines, method=method,
                                  notes=notes)
        if lagrange is None:
            _note(notes, "greedy start found no feasible allocation; the MILP decides")
        elif solver == "lagrange" or lagrange.status == "optimal":
            return lagrange
        solver = "auto"
    milp = build_milp(inst, relax=relax)
    kw = dict(time_limit_s=time_limit_s, mip_gap=mip_gap, gurobi_size_limit=gurobi_size_limit,
              seed=seed)
    if lagrange is not None:
        greedy = lagrange.allocation
    else:
        greedy = (greedy_allocation(inst, enforce_deadlines=enforce_deadlines)
                  if warm_start else None)
    if lagrange is not None:
        from orchestrator.allocation import solvers

        # auto after an unproven Lagrangian answer: the MILP runs only where Gurobi takes it
        # (HiGHS does not improve the greedy start from 50 x 5 up, docs/results.md).
        too_big = solvers.licence_check(milp, gurobi_size_limit)
        if not solvers.gurobi_importable() or too_big is not None:
            _note(notes, "MILP not run after the Lagrangian backend: " +
                  (too_big or "gurobipy does not import"))
            return lagrange
        kw["time_limit_s"] = max(0.1, time_limit_s - lagrange.solve_time_s)
    start = start_vector(milp, inst, greedy) if greedy is not None else None
    raw = _run(milp, solver, notes=notes, start=start, **kw)  # type: ignore[arg-type]
    if raw.values is None and greedy is not None and raw.status != "licence_limit":
        # The solver found nothing better in time (or did not take the start): keep the
        # greedy allocation, which is feasible, and say so.
        _note(notes, f"{raw.backend} returned no solution ({raw.message}); greedy start kept")
        raw.values, raw.status = start, "feasible"
        raw.objective = float(start[2 * milp.pairs.shape[0]:].sum())
        raw.gap = None if raw.bound is None else abs(raw.objective - raw.bound) / raw.objective
    if raw.status == "feasible" and relaxation_bound and (raw.gap is None or raw.gap > mip_gap):
        # The solver stopped early, often before its root LP finished on large models: the
        # small time-sharing LP still gives a valid lower bound (never a worse one is used).
        from orchestrator.allocation import solvers

        # Interior point without crossover: only the optimal value is needed (25 % faster
        # than simplex at 1000 x 20).
        lp = solvers.solve_highs(timeshare_relaxation(milp), time_limit_s=time_limit_s,
                                 mip_gap=mip_gap,
                                 options={"solver": "ipm", "run_crossover": "off"})
        if lp.status == "optimal" and lp.objective is not None and (
            raw.bound is None or lp.objective > raw.bound
        ):
            raw.bound = lp.objective
            raw.gap = solvers._rel_gap(raw.objective, raw.bound)
            _note(notes, f"bound from the time-sharing LP relaxation ({lp.solve_time_s:.3g}s)")
    if lagrange is not None and raw.objective is not None and lagrange.bound is not None and (
        raw.bound is None or lagrange.bound > raw.bound
    ):
        # Both bounds are valid for the same problem: report the better one.
        from orchestrator.allocation import solvers

        raw.bound = min(lagrange.bound, raw.objective)
        raw.gap = solvers._rel_gap(raw.objective, raw.bound)
        if raw.gap is not None and raw.gap <= mip_gap:
            raw.status = "optimal"
        _note(notes, "bound from the Lagrangian relaxation")
    if lagrange is not None:
        raw.solve_time_s += lagrange.solve_time_s
        raw.backend = f"lagrange+{raw.backend}"
    res = MedResult(method, raw.status, raw.backend, raw.objective, raw.bound, raw.gap,
                    raw.solve_time_s, None, None, milp.num_vars, milp.num_rows, notes=notes)
    if raw.status == "licence_limit":
        _note(notes, raw.message)
        return res
    if raw.values is not None:
        P = milp.pairs.shape[0]
        alloc = np.zeros((milp.m, milp.n), dtype=np.int64)
        alloc[milp.pairs[:, 0], milp.pairs[:, 1]] = np.round(raw.values[:P]).astype(np.int64)
        res.allocation = alloc
        res.task_delay_s = [float(x) for x in expected_delays(inst, alloc).max(axis=1)]
        return res
    if raw.status == "no_solution":
        _note(notes, f"no feasible allocation found within {time_limit_s}s ({raw.message})")
        return res
    if diagnose:
        res.infeasible_families, details = diagnose_infeasible(
            inst, solver=solver, relax=relax, notes=notes, **kw  # type: ignore[arg-type]
        )
        notes.extend(details)
    return res


def diagnose_infeasible(
    inst: MedInstance,
    *,
    solver: SolverName = "auto",
    relax: frozenset[str] = frozenset(),
    time_limit_s: float = 10.0,
    mip_gap: float = 1e-4,
    gurobi_size_limit: int | None = 2000,
    seed: int = 0,
    notes: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Which constraint families make the instance infeasible, by relaxing them one at a time.

    Returns (families, detail lines). A family is listed when dropping it alone makes the
    instance feasible ("task_size" only if no other family does); if none does alone, pairs
    are tried and listed as "a+b".
    """
    notes = notes if notes is not None else []
    kw = dict(time_limit_s=time_limit_s, mip_gap=mip_gap, gurobi_size_limit=gurobi_size_limit,
              seed=seed)
    order = ["deadline", "budget", "min_shards", "one_task", "task_size"]
    cand = [f for f in order if f not in relax]

    def feasible(extra: frozenset[str]) -> bool | None:
        raw = _run(build_milp(inst, relax=relax | extra, objective="none"), solver,
                   notes=notes, **kw)  # type: ignore[arg-type]
        if raw.status in ("optimal", "feasible"):
            return True
        return False if raw.status == "infeasible" else None

    # Dropping demand (4.4c as ≤) nearly always "fixes" an instance, so it is blamed only when
    # no constraint on the learners' side explains the infeasibility by itself.
    found = [f for f in cand if f != "task_size" and feasible(frozenset({f}))]
    if not found and "task_size" in cand and feasible(frozenset({"task_size"})):
        found = ["task_size"]
    if not found:
        found = [f"{a}+{b}" for k, a in enumerate(cand) for b in cand[k + 1:]
                 if feasible(frozenset({a, b}))]
    details: list[str] = []
    for f in found:
        details.append("infeasible because of " + " and ".join(FAMILIES[x] for x in f.split("+")))
    if "budget" in found:
        raw = _run(build_milp(inst, relax=relax | {"budget"}, objective="cost"), solver,
                   notes=notes, **kw)  # type: ignore[arg-type]
        if raw.objective is not None:
            details.append(f"4.4d: the cheapest allocation meeting the other constraints costs "
                           f"{raw.objective:.6g} > budget {inst.budget:.6g}")
    if "deadline" in found:
        raw = _run(build_milp(inst, relax=relax | {"deadline"}), solver, notes=notes,
                   **kw)  # type: ignore[arg-type]
        if raw.values is not None:
            m_, P = len(inst.tasks), (raw.values.size - len(inst.tasks)) // 2
            t = raw.values[2 * P: 2 * P + m_]
            late = [f"{task.name} {t[i]:.4g}s > {task.deadline_s:.4g}s"
                    for i, task in enumerate(inst.tasks) if t[i] > task.deadline_s * (1 + 1e-9)]
            if late:
                details.append("4.4b: at the min-delay allocation without deadlines, " +
                               ", ".join(late))
    if not found:
        details.append("no single family or pair of families explains the infeasibility")
    return found, details


# ---------------------------------------------------------------- thesis-shaped instances

STATE_NAMES = ("idle", "training", "downloading")
# Capability multipliers per stressor state (thesis 4.3.1): training contends for compute
# (900x900 matmuls), downloading for bandwidth (a 900x900 download). Assumed values, not
# measurements: the thesis gives no per-state numbers.
_STATE_COMPUTE = (1.0, 0.45, 0.9)
_STATE_BANDWIDTH = (1.0, 0.9, 0.35)
_SHARD_SAMPLES = 500  # thesis 3.4.1: shards of 500 MNIST samples
_SHARD_BYTES = 500 * 784 * 4  # float32 28x28 images
# Table 4.1 (shards, deadline s, iterations) with parameter counts of appendix A (float32
# bytes) and an assumed Jetson-Nano-class idle training rate (samples/s).
_THESIS_TASKS = (
    ("MNIST_FFN", 60, 55.0, 2, 573_910 * 4, 1500.0),
    ("MNIST_CNN", 60, 40.0, 1, 102_250 * 4, 900.0),
    ("Fashion", 20, 40.0, 1, 2_079_310 * 4, 250.0),
)


def heated_softmax(one_hot: np.ndarray, heat: float) -> np.ndarray:
    """softmax(v / heat): low heat skews to the hot state, high heat flattens (thesis 4.3.1)."""
    z = np.asarray(one_hot, dtype=float) / heat
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def thesis_instance(
    *,
    seed: int = 0,
    n_learners: int = 10,
    n_tasks: int = 3,
    budget: float = 300.0,
    min_shards: int = 1,
    heat: float = 0.5,
    deadline_extra_s: float = 0.0,
    shards_scale: float = 1.0,
) -> MedInstance:
    """A MED instance shaped like thesis 4.3.1: table 4.1 tasks, 3 stressor states, prices ~
    N(1, 0.5) clipped to [0.1, 1.5], state distributions by heated softmax (heat 0.5).

    Tasks past the third repeat the table cyclically (thesis 4.3.1.2 duplicates Fashion);
    `shards_scale` multiplies every D_i (for scaled-up benchmarks). Learner speeds vary by a
    factor U(0.6, 1.4) (compute) and U(0.5, 1.5) (bandwidth, idle 8 MB/s); assumed, see above.
    """
    rng = np.random.default_rng(seed)
    h = len(STATE_NAMES)
    tasks = []
    for i in range(n_tasks):
        name, shards, deadline, mu, omega, _ = _THESIS_TASKS[i % 3]
        suffix = "" if i < 3 else f"_{i // 3 + 1}"
        tasks.append(TaskSpec(name=name + suffix, shards=max(1, round(shards * shards_scale)),
                              deadline_s=deadline + deadline_extra_s, model_bytes=omega,
                              shard_bytes=_SHARD_BYTES, shard_samples=_SHARD_SAMPLES,
                              iterations=mu))
    hot = rng.integers(0, h, size=n_learners)
    probs = heated_softmax(np.eye(h)[hot], heat)
    prices = np.clip(rng.normal(1.0, math.sqrt(0.5), size=n_learners), 0.1, 1.5)
    cfac = rng.uniform(0.6, 1.4, size=n_learners)
    bfac = rng.uniform(0.5, 1.5, size=n_learners)
    learners = []
    for j in range(n_learners):
        bench = int(rng.choice(h, p=probs[j]))
        compute = {
            t.name: [_THESIS_TASKS[i % 3][5] * cfac[j] * s for s in _STATE_COMPUTE]
            for i, t in enumerate(tasks)
        }
        learners.append(LearnerSpec(
            name=f"learner-{j:04d}", price=round(float(prices[j]), 4),
            state_probs=[float(p) for p in probs[j]],
            bandwidth=[8e6 * bfac[j] * s for s in _STATE_BANDWIDTH],
            compute=compute, benchmarked_state=bench))
    return MedInstance(states=list(STATE_NAMES), budget=budget, min_shards=min_shards,
                       tasks=tasks, learners=learners)


def scaled_instance(n_learners: int, n_tasks: int, *, seed: int = 0) -> MedInstance:
    """A thesis-shaped instance grown to `n_learners` x `n_tasks` with the thesis's load per
    learner (140 shards for 10 learners) and budget ratio (300 for 140 shards)."""
    base_total = sum(t[1] for t in _THESIS_TASKS[:3]) / 3 * n_tasks  # shards at scale 1
    scale = 14.0 * n_learners / base_total
    total = base_total * scale
    return thesis_instance(seed=seed, n_learners=n_learners, n_tasks=n_tasks,
                           budget=round(total * 300.0 / 140.0, 2), shards_scale=scale)


# ---------------------------------------------------------------- greedy start (primal heuristic)


def _task_fill(
    co: Coefficients, i: int, members: np.ndarray, need: int
) -> tuple[np.ndarray, float] | None:
    """Smallest-delay integer split of task i over `members`: (shards per member, max δ).

    Bisection on t of Σ_j min(cap_ij, ⌊(t − fixed_ij)/per_shard_ij⌋) ≥ D_i with every member
    given ≥ need shards, then surplus shards taken back from the slowest members.
    None if the members cannot carry the task within their caps.
    """
    if members.size == 0:
        return None
    fixed, per, cap = co.fixed[i, members], co.per_shard[i, members], co.cap[i, members]
    D = int(co.shards[i])
    if (cap < need).any() or cap.sum() < D or need * members.size > D:
        return None

    def give(t: float) -> np.ndarray:
        return np.minimum(cap, np.floor((t - fixed) / per + 1e-9)).astype(np.int64)

    lo = float((fixed + need * per).max()) * (1 - 1e-12)
    hi = float((fixed + cap * per).max()) + 1e-9
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        if give(mid).sum() >= D:
            hi = mid
        else:
            lo = mid
    d = np.maximum(give(hi), need)
    surplus = int(d.sum()) - D
    while surplus > 0:  # take back from whoever finishes last, keeping need
        delay = np.where(d > need, fixed + per * d, -np.inf)
        k = int(np.argmax(delay))
        d[k] -= 1
        surplus -= 1
    return d, float((fixed + per * d).max())


def _exact_task_time(co: Coefficients, i: int, members: np.ndarray, need: int) -> float:
    """Least max expected delay of task i on exactly `members` in whole shards, seconds.

    The k-th shard of learner j is done at fixed_ij + k·per_shard_ij, so the task is done at
    the D_i-th smallest of those times over the members (each carrying ≥ need); ∞ if the
    members cannot carry it.
    """
    cap = co.cap[i, members]
    D = int(co.shards[i])
    if members.size == 0 or (cap < need).any() or cap.sum() < D or need * members.size > D:
        return math.inf
    fixed, per = co.fixed[i, members], co.per_shard[i, members]
    who = np.repeat(np.arange(members.size), cap)
    k = np.arange(who.size) - np.repeat(np.cumsum(cap) - cap, cap) + 1
    times = fixed[who] + per[who] * k
    return float(max(np.partition(times, D - 1)[D - 1], (fixed + need * per).max()))


def _integer_moves(
    co: Coefficients, owner: np.ndarray, elig: np.ndarray, need: int, num: np.ndarray,
    den: np.ndarray, a: np.ndarray, r: np.ndarray, *, max_evals: int,
) -> np.ndarray:
    """Move single learners between tasks while the exact whole-shard Σ t_i drops.

    Candidates are tried in the order of the continuous proxy's gain (best first, 40 per
    round); the first exact improvement is taken. Stops after `max_evals` evaluations.
    """
    m, n = co.fixed.shape
    owner = owner.copy()
    t = np.array([_exact_task_time(co, i, np.nonzero(owner == i)[0], need) for i in range(m)])
    evals = m
    while evals < max_evals:
        cnt = np.bincount(owner[owner >= 0], minlength=m)
        t_now = num / den
        cols = np.nonzero(owner >= 0)[0]
        src = owner[cols]
        t_src = (num[src] - a[src, cols]) / np.maximum(den[src] - r[src, cols], 1e-300)
        gain = np.where(cnt[src] > 1, t_src - t_now[src], np.inf)
        t_dst = (num[:, None] + a[:, cols]) / (den[:, None] + r[:, cols])
        delta = gain[None, :] + t_dst - t_now[:, None]
        delta = np.where(elig[:, cols] & (np.arange(m)[:, None] != src[None, :]), delta, np.inf)
        flat = np.argsort(delta, axis=None)[:40]
        moved = False
        for f in flat:
            b, kk = divmod(int(f), cols.size)
            if not np.isfinite(delta[b, kk]):
                break
            j, s_i = int(cols[kk]), int(src[kk])
            rest = np.nonzero((owner == s_i) & (np.arange(n) != j))[0]
            new_src = _exact_task_time(co, s_i, rest, need)
            new_dst = _exact_task_time(co, b, np.append(np.nonzero(owner == b)[0], j), need)
            evals += 2
            if new_src + new_dst < t[s_i] + t[b] - 1e-9:
                owner[j] = b
                t[s_i], t[b] = new_src, new_dst
                num[s_i] -= a[s_i, j]
                den[s_i] -= r[s_i, j]
                num[b] += a[b, j]
                den[b] += r[b, j]
                moved = True
                break
            if evals >= max_evals:
                break
        if not moved:
            break
    return owner


def greedy_allocation(
    inst: MedInstance, *, enforce_deadlines: bool = True, max_evals: int = 3000
) -> np.ndarray | None:
    """A feasible allocation found greedily, or None (used as the solvers' MIP start).

    Learners join tasks one at a time, each time the (learner, task) pair that lowers the
    task's continuous completion time t = (D_i + Σ fixed/per_shard) / Σ 1/per_shard the most
    (all learners join when D_l ≥ 1, else only while it helps); learners then move between
    tasks while the proxy sum improves, and again while the exact whole-shard times improve
    (at most `max_evals` exact task-time evaluations); finally each task is split in whole
    shards by `_task_fill`. Checks 4.4b–4.4f at the end and gives up (None) if any fail.
    """
    co = coefficients(inst, enforce_deadlines=enforce_deadlines)
    m, n = co.fixed.shape
    dl = inst.min_shards
    need = max(1, dl)
    elig = co.cap >= need
    r = np.where(elig, 1.0 / co.per_shard, 0.0)  # (m, n) shards per second
    a = np.where(elig, co.fixed / co.per_shard, 0.0)
    num = co.shards.astype(float).copy()  # D_i + Σ a
    den = np.zeros(m)  # Σ r
    owner = np.full(n, -1)
    free = np.ones(n, dtype=bool)
    # Seed the largest tasks first with their fastest eligible learner.
    for i in np.argsort(-(co.shards * np.where(elig, co.per_shard, np.inf).min(axis=1))):
        cand = np.where(elig[i] & free, co.fixed[i] + co.per_shard[i] * co.shards[i], np.inf)
        j = int(np.argmin(cand))
        if not np.isfinite(cand[j]):
            return None
        owner[j], free[j] = i, False
        num[i] += a[i, j]
        den[i] += r[i, j]
    while free.any():
        t_now = num / den
        t_new = (num[:, None] + a) / (den[:, None] + r + 1e-300)
        delta = np.where(elig & free[None, :], t_new - t_now[:, None], np.inf)
        i, j = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if not np.isfinite(delta[i, j]) or (dl == 0 and delta[i, j] >= 0):
            break
        owner[j], free[j] = i, False
        num[i] += a[i, j]
        den[i] += r[i, j]
    if dl > 0 and free.any():
        return None
    # Local search on the same continuous proxy: move one learner to another task while that
    # lowers t_a + t_b (tasks keep at least one learner). Bounded number of moves.
    for _ in range(4 * n):
        t_now = num / den
        own = owner >= 0
        cols = np.nonzero(own)[0]
        src = owner[cols]
        cnt = np.bincount(src, minlength=m)
        ok_src = cnt[src] > 1
        t_src = (num[src] - a[src, cols]) / np.maximum(den[src] - r[src, cols], 1e-300)
        gain_src = np.where(ok_src, t_src - t_now[src], np.inf)  # (len(cols),)
        t_dst = (num[:, None] + a[:, cols]) / (den[:, None] + r[:, cols])
        delta = gain_src[None, :] + (t_dst - t_now[:, None])
        delta = np.where(elig[:, cols] & (np.arange(m)[:, None] != src[None, :]), delta, np.inf)
        b, k = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if not delta[b, k] < -1e-9 * t_now.sum():
            break
        j, src_i = int(cols[k]), int(src[k])
        num[src_i] -= a[src_i, j]
        den[src_i] -= r[src_i, j]
        num[b] += a[b, j]
        den[b] += r[b, j]
        owner[j] = b
    owner = _integer_moves(co, owner, elig, need, num, den, a, r, max_evals=max_evals)
    alloc = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        members = np.nonzero(owner == i)[0]
        filled = _task_fill(co, i, members, need if dl > 0 else 1)
        if filled is None:
            return None
        alloc[i, members] = filled[0]
    if check_allocation(inst, alloc, enforce_deadlines=enforce_deadlines):
        return None
    return alloc


def timeshare_relaxation(milp: Milp) -> Milp:
    """The LP over (x, t) alone with the time-sharing cuts and 4.4f: a relaxation of `milp`.

    Its optimum equals the root LP bound of the full model on thesis-shaped instances while
    being much smaller (no d columns, no big-M rows), so it gives large instances a valid
    bound in a fraction of the time the full root LP needs.
    """
    P = milp.pairs.shape[0]
    cols = np.arange(P, 2 * P + milp.m)
    fam = np.asarray(milp.row_family)
    rows = np.nonzero((fam == "timeshare") | (fam == "one_task"))[0]
    A = milp.A.tocsr()[rows][:, cols]  # type: ignore[attr-defined]
    return Milp(milp.cost[cols], A, milp.row_lo[rows], milp.row_hi[rows], milp.col_lo[cols],
                milp.col_hi[cols], np.zeros(cols.size, dtype=bool), milp.pairs, milp.m,
                milp.n, [milp.row_family[r] for r in rows])


def start_vector(milp: Milp, inst: MedInstance, alloc: np.ndarray) -> np.ndarray:
    """The MILP column values (d, x, t) of an allocation, for a solver's MIP start."""
    P = milp.pairs.shape[0]
    ii, jj = milp.pairs[:, 0], milp.pairs[:, 1]
    d = alloc[ii, jj].astype(float)
    t = np.maximum(expected_delays(inst, alloc).max(axis=1), milp.col_lo[2 * P:])
    return np.concatenate([d, (d > 0).astype(float), t])
