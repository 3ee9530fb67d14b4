"""MED as a MILP: the linearised eq. 4.4 (docs/algorithms.md "MED") as one sparse matrix,
its time-sharing LP relaxation, and MIP-start vectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from orchestrator.allocation.med.model import (
    Coefficients,
    MedInstance,
    coefficients,
    expected_delays,
)

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


class _Rows:
    """Constraint rows gathered block by block (COO triplets), each with its family."""

    def __init__(self) -> None:
        self.blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.family: list[str] = []
        self.count = 0

    def add(self, r: np.ndarray, c: np.ndarray, v: np.ndarray, rlo: np.ndarray,
            rhi: np.ndarray, family: str) -> None:
        self.blocks.append((r + self.count, c, v))
        self.lo.append(rlo)
        self.hi.append(rhi)
        self.family.extend([family] * rlo.size)
        self.count += rlo.size

    def matrix(self, num_cols: int) -> object:
        from scipy import sparse

        r = np.concatenate([t[0] for t in self.blocks])
        c = np.concatenate([t[1] for t in self.blocks])
        v = np.concatenate([t[2] for t in self.blocks])
        return sparse.csr_matrix((v, (r, c)), shape=(self.count, num_cols))


def _columns(
    co: Coefficients, ii: np.ndarray, jj: np.ndarray, relax: frozenset[str],
    objective: Literal["delay", "cost", "none"],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cost, col_lo, col_hi and the integrality mask of the (d, x, t) columns."""
    m, P = co.shards.size, ii.size
    nv = 2 * P + m
    d_col, x_col, t_col = np.arange(P), P + np.arange(P), 2 * P + np.arange(m)
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
    return cost, col_lo, col_hi, integer


def _timeshare_cuts(
    rows: _Rows, co: Coefficients, ii: np.ndarray, jj: np.ndarray, tl: np.ndarray,
    relax: frozenset[str], tangents: int,
) -> None:
    """Time-sharing cuts (valid, docs/algorithms.md). With f_i = min_j fixed_ij, every learner
    serving i carries d_ij ≤ (t_i − fixed_ij)/per_ij ≤ (t_i − f_i)·rate_ij for t_i ≤ t̄_i, so
    D_i/(t_i − f_i) ≤ Σ_j rate_ij·x_ij: convex in t_i, added as tangent cuts at θ:
    Σ_j rate_ij·x_ij + D_i/(θ−f_i)²·t_i ≥ D_i/(θ−f_i) + D_i·θ/(θ−f_i)². Without them the LP
    lets every learner work for every task at once through fractional x."""
    m, P = co.shards.size, ii.size
    x_col, t_col = P + np.arange(P), 2 * P + np.arange(m)
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
        rows.add(np.concatenate([ii, np.arange(m)]), np.concatenate([x_col, t_col]),
                 np.concatenate([rate, D / sp**2]), D / sp + D * (sp + f0) / sp**2,
                 np.full(m, np.inf), "timeshare")


def _model_rows(
    rows: _Rows, co: Coefficients, ii: np.ndarray, jj: np.ndarray, relax: frozenset[str],
    dl: int, budget: float,
) -> None:
    """The linking rows and the constraint families 4.4c–f."""
    m, P = co.shards.size, ii.size
    n = co.fixed.shape[1]
    k, d_col, x_col = np.arange(P), np.arange(P), P + np.arange(P)
    # Linking (big-M): d_ij ≤ cap_ij·x_ij. The reverse link d_ij ≥ x_ij is left out: a pair
    # with x = 1 and d = 0 can only raise t_i and use up j's one task, so dropping such an x
    # never worsens a solution; the result reports x as d > 0 (saves P rows).
    rows.add(np.concatenate([k, k]), np.concatenate([d_col, x_col]),
             np.concatenate([np.ones(P), -co.cap[ii, jj].astype(float)]),
             np.full(P, -np.inf), np.zeros(P), "link")
    # 4.4c: Σ_j d_ij = D_i ("task_size" relaxed: ≤ D_i).
    rows.add(ii, d_col, np.ones(P),
             np.full(m, -np.inf) if "task_size" in relax else co.shards.astype(float),
             co.shards.astype(float), "task_size")
    # 4.4d: Σ d_ij p_j ≤ B.
    if "budget" not in relax:
        rows.add(np.zeros(P, dtype=np.int64), d_col, co.price[jj], np.array([-np.inf]),
                 np.array([budget]), "budget")
    # 4.4e: Σ_i d_ij ≥ D_l for every learner (the thesis: "each learner is assigned a lower
    # bound of data shards D_l").
    if dl > 0:
        rows.add(jj, d_col, np.ones(P), np.full(n, float(dl)), np.full(n, np.inf),
                 "min_shards")
    # 4.4f: Σ_i x_ij ≤ 1; with D_l ≥ 1 every learner serves exactly one task, so = 1.
    if "one_task" not in relax:
        rows.add(jj, x_col, np.ones(P), np.full(n, 1.0 if dl > 0 else -np.inf), np.ones(n),
                 "one_task")


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
    m, n = len(inst.tasks), len(inst.learners)
    co = coefficients(
        inst, enforce_deadlines="deadline" not in relax, enforce_budget="budget" not in relax
    )
    dl = 0 if "min_shards" in relax else inst.min_shards
    # A pair (i, j) can be used only if j can take max(1, D_l) shards of i within its caps:
    # when D_l ≥ 1 and j serves i, j's whole allocation is d_ij (4.4f), so d_ij ≥ D_l.
    need = max(1, dl) if "one_task" not in relax else 1
    ii, jj = np.nonzero(co.cap >= need)
    P = ii.size
    cost, col_lo, col_hi, integer = _columns(co, ii, jj, relax, objective)
    d_col, x_col, t_col = np.arange(P), P + np.arange(P), 2 * P + np.arange(m)
    rows = _Rows()
    k = np.arange(P)
    # Per-task max (objective epigraph), in the convex-hull form of the disjunction
    # "x=1: per_shard·d + fixed ≤ t_i" or "x=0: d=0" with t_i ≥ tl_i (docs/algorithms.md):
    # per_shard·d + (fixed − tl_i)·x − t_i ≤ −tl_i. With tl_i = 0 it is the plain
    # per_shard·d + fixed·x ≤ t_i; a valid tl_i > 0 stops the LP from time-sharing learners.
    tl = task_time_lower_bounds(co, ii, jj, need)
    col_lo[t_col] = tl
    rows.add(np.concatenate([k, k, k]), np.concatenate([d_col, x_col, t_col[ii]]),
             np.concatenate([co.per_shard[ii, jj], co.fixed[ii, jj] - tl[ii], -np.ones(P)]),
             np.full(P, -np.inf), -tl[ii], "objective")
    if tangents > 0 and P > 0:
        _timeshare_cuts(rows, co, ii, jj, tl, relax, tangents)
    _model_rows(rows, co, ii, jj, relax, dl, inst.budget)
    return Milp(cost, rows.matrix(2 * P + m), np.concatenate(rows.lo), np.concatenate(rows.hi),
                col_lo, col_hi, integer, np.stack([ii, jj], axis=1), m, n, rows.family)


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
