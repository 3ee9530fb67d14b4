"""MED at scale: a Lagrangian lower bound (one-task constraint 4.4f dualised) and a local search.

The compact MILP's LP relaxation lets a learner time-share tasks, and its bound stays 6–8 %
under the best allocation. Here 4.4f (Σ_i x_ij = 1, or ≤ 1 when D_l = 0) is moved into the
objective with one multiplier u_j per learner. What is left splits by task: task i picks a
finishing time t and a set S of learners, paying t + Σ_{j∈S} u_j, such that S carries D_i whole
shards by t. Learner j can carry at most

    q_ij(t) = min(cap_ij, ⌊(t − fixed_ij)/per_shard_ij⌋)   shards by time t (eq. 4.3),

an integer, so the shard granularity the MILP's relaxation loses is kept. For every u,

    L(u) = Σ_i min_{t,S} [t + Σ_{j∈S} u_j] − Σ_j u_j  ≤  optimum of eq. 4.4.

Two relaxations keep each task's subproblem cheap and the bound valid: (1) t is taken on a grid
t_0 < … < t_K covering every feasible t_i; a t in [t_k, t_{k+1}] costs at least t_k and can use
no more than q(t_{k+1}) shards per learner, so the interval's value is t_k + cover(q(t_{k+1}));
(2) the covering problem min Σ u_j z_j, Σ q_j z_j ≥ D_i is solved with z ∈ [0, 1] (sorting by
u_j/q_j). The budget 4.4d, the per-learner minimum 4.4e and D_l·|S| ≤ D_i are dropped from the
subproblem (dropping constraints only lowers a lower bound). u is improved by subgradient ascent
with Polyak steps towards the incumbent; the grid is refined around each task's minimum. Only
every FULL_EVERY-th iteration evaluates the whole grid (those values are the proven bound); the
others probe a few t per task to steer u cheaply.

`solve_lagrange` (backend "lagrange") wraps the bound between two runs of the exact local
search of `search`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from orchestrator.allocation.med.colgen import (
    colgen_bound,
    lp_cover,
    restricted_master_mip,
    time_ranges,
)
from orchestrator.allocation.med.greedy import greedy_allocation, task_fill
from orchestrator.allocation.med.model import (
    Coefficients,
    MedInstance,
    MedResult,
    Status,
    check_allocation,
    coefficients,
    expected_delays,
    med_objective,
)
from orchestrator.allocation.med.search import local_search

FULL_EVERY = 5  # iterations per whole-grid (proven) evaluation of L(u)
RMIP_MAX_COLUMNS = 300  # generated columns up to which the restricted master MILP runs


@dataclass
class LagrangeBound:
    """A proven lower bound on the eq. 4.4 optimum (seconds) and how it was reached."""

    bound: float
    iterations: int
    seconds: float
    prefer: np.ndarray | None = None  # (n,) task whose subproblem used learner j most at the best u
    u: np.ndarray | None = None  # (n,) the multipliers of the best bound


def _initial_grid(lo: float, hi: float, centre: float | None) -> np.ndarray:
    """Grid edges t_0 = lo < … < t_K = hi (seconds): geometric, denser around `centre`."""
    if hi <= lo:
        return np.array([lo, lo * (1 + 1e-12) + 1e-12])
    edges = [np.geomspace(lo, hi, 17)]
    if centre is not None and lo < centre < hi:
        edges.append(np.linspace(max(lo, centre * 0.97), min(hi, centre * 1.03), 13))
    return np.unique(np.concatenate(edges))


def _capacity(co: Coefficients, i: int, t: np.ndarray, need: int, elig: np.ndarray
              ) -> np.ndarray:
    """q_ij(t) for each t (rows) and learner j (columns), 0 where j cannot serve i by t."""
    Q = np.floor((t[:, None] - co.fixed[i][None, :]) / co.per_shard[i][None, :] + 1e-9)
    Q = np.minimum(Q, co.cap[i][None, :])
    return np.where((need <= Q) & elig[None, :], Q, 0.0)


def _price_task(co: Coefficients, i: int, u: np.ndarray, grid: np.ndarray, need: int,
                elig: np.ndarray, D: int, rounds: int = 3, tol: float = 2e-4
                ) -> tuple[float, np.ndarray, np.ndarray, tuple[float, float]]:
    """A lower bound on min_{t,S} t + Σ_S u_j for task i, the z of the interval attaining it,
    the refined grid, and (best attained point value, its t).

    Interval [t_k, t_{k+1}] is worth t_k + cover(q(t_{k+1})) (a lower bound on that stretch);
    the grid point t_k itself is worth t_k + cover(q(t_k)) (attained, an upper value). An
    interval whose lower value lies more than `tol` (relative) under the best point value is
    split in four, up to `rounds` times: the bound tightens only where the minimum can be."""
    cost, z = lp_cover(_capacity(co, i, grid, need, elig), u, D)
    for r in range(rounds + 1):
        low = grid[:-1] + cost[1:]
        best_point = float((grid + cost).min())
        loose = np.nonzero(low < best_point - tol * abs(best_point))[0]
        if r == rounds or loose.size == 0 or grid.size > 4000:
            break
        a, b = grid[loose], grid[loose + 1]
        extra = (a[:, None] + (b - a)[:, None] * np.array([0.25, 0.5, 0.75])[None, :]).ravel()
        c_new, z_new = lp_cover(_capacity(co, i, extra, need, elig), u, D)
        order = np.argsort(np.concatenate([grid, extra]), kind="stable")
        grid = np.concatenate([grid, extra])[order]
        cost = np.concatenate([cost, c_new])[order]
        z = np.concatenate([z, z_new])[order]
    k = int(np.argmin(low))
    kp = int(np.argmin(grid + cost))
    probe = (float(grid[kp] + cost[kp]), float(grid[kp]))
    # Keep the grid from growing without end: drop points whose intervals are far above the
    # best (merging two intervals keeps the bound valid, only looser there).
    keep = np.ones(grid.size, dtype=bool)
    far = np.nonzero(low > best_point * 1.02 + 1e-12)[0]
    inner = far[(far > 0) & np.isin(far - 1, far)]
    keep[inner] = False
    return float(low[k]), z[k + 1], grid[keep], probe


def _probe_task(co: Coefficients, i: int, u: np.ndarray, centre: float, lo: float, hi: float,
                need: int, elig: np.ndarray, D: int) -> tuple[float, np.ndarray, float]:
    """Attained value t + cover(q(t)) at a few t near `centre` and across [lo, hi]: the best
    (an upper value of the subproblem, good enough to steer the subgradient), its z and t."""
    pts = np.concatenate([centre * (1 + np.linspace(-0.004, 0.004, 9)),
                          np.geomspace(max(lo, 1e-12), max(hi, lo * (1 + 1e-9), 1e-12), 8)])
    pts = np.clip(pts, lo, hi)
    cost, z = lp_cover(_capacity(co, i, pts, need, elig), u, D)
    val = pts + cost
    k = int(np.argmin(val))
    return float(val[k]), z[k], float(pts[k])


def _initial_prices(co: Coefficients, owner: np.ndarray | None, task_times: np.ndarray | None,
                    equality: bool) -> tuple[np.ndarray, list[float | None]]:
    """u_j = (shards j carries at its task's time) x (that task's seconds per shard at the
    margin, 1/Σ rates): each learner priced at the time it saves its task. Also each task's
    time in the incumbent, around which its grid starts denser."""
    m, n = co.fixed.shape
    u = np.zeros(n)
    centre: list[float | None] = [None] * m
    if owner is not None and task_times is not None:
        for i in range(m):
            members = np.nonzero(owner == i)[0]
            if members.size == 0:
                continue
            rate = (1.0 / co.per_shard[i, members]).sum()
            q = np.maximum(0.0, (task_times[i] - co.fixed[i, members]) / co.per_shard[i, members])
            u[members] = q / rate
            centre[i] = float(task_times[i])
    if not equality:
        u = np.maximum(u, 0.0)
    return u, centre


def _evaluate_dual(
    co: Coefficients, u: np.ndarray, grids: list[np.ndarray], centre: list[float | None],
    lo: np.ndarray, hi: np.ndarray, *, full: bool, need: int, elig: np.ndarray, D: np.ndarray,
) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """L(u) over every task's subproblem: (value, estimate, Σ_i z_i, z per task). `value` is
    the proven L(u) only when `full` (whole grid, refined in place in `grids`); `estimate`
    comes from the attained points and steers the subgradient. `centre` moves to each task's
    best t. None when some task cannot be served at all."""
    m, n = co.fixed.shape
    value = est = -float(u.sum())
    used = np.zeros(n)
    zz = np.zeros((m, n))
    for i in range(m):
        if full:
            val_i, z_i, grids[i], (pt, t_pt) = _price_task(co, i, u, grids[i], need,
                                                            elig[i], int(D[i]))
            if not np.isfinite(val_i):
                return None
            value += val_i
        else:
            pt, z_i, t_pt = _probe_task(co, i, u, float(centre[i] or hi[i]), float(lo[i]),
                                        float(hi[i]), need, elig[i], int(D[i]))
        est += pt
        centre[i] = t_pt if np.isfinite(pt) else centre[i]
        used += z_i
        zz[i] = z_i
    return value, est, used, zz


def _bound_done(history: list[float], incumbent: float | None, target_gap: float,
                elapsed_s: float, deadline_s: float) -> bool:
    """Whether the ascent stops after a full evaluation (history[-1] is the best bound)."""
    if len(history) > 10 and history[-1] - history[-11] <= 2e-4 * abs(history[-1]):
        return True  # converged for practical purposes: < 0.02 % gained in 50 iterations
    if incumbent is not None and history[-1] >= incumbent * (1 - target_gap):
        return True
    return elapsed_s > deadline_s


def _step_rule(est: float, est_best: float, stall: int, step_scale: float
               ) -> tuple[float, int, float]:
    """(best estimate, iterations without progress, step scale) after an iteration: two
    iterations without progress halve the step (standard subgradient rule)."""
    if est > est_best:
        return est, 0, step_scale
    stall += 1
    if stall >= 2:
        return est_best, 0, step_scale * 0.5
    return est_best, stall, step_scale


def _subgradient_step(u: np.ndarray, used: np.ndarray, est: float, incumbent: float | None,
                      step_scale: float, equality: bool) -> np.ndarray | None:
    """u moved by a Polyak step along the subgradient Σ_i z_i − 1 (projected on u ≥ 0 for
    the inequality form); None at a zero subgradient (u maximises L on this grid)."""
    g = used - 1.0
    if not equality:
        g = np.where((u <= 0) & (g < 0), 0.0, g)
    norm = float(g @ g)
    if norm < 1e-18:
        return None
    target = incumbent if incumbent is not None else est + abs(est) * 0.05
    step = step_scale * max(target - est, 1e-9 * abs(target)) / norm
    u = u + step * g
    if not equality:
        u = np.maximum(u, 0.0)
    return u


def lagrangian_bound(
    co: Coefficients,
    *,
    need: int,
    equality: bool,
    incumbent: float | None,
    owner: np.ndarray | None = None,
    task_times: np.ndarray | None = None,
    deadline_s: float = 1.0,
    max_iter: int = 400,
    target_gap: float = 1e-4,
) -> LagrangeBound:
    """max_u L(u) by subgradient ascent, stopped after `deadline_s` seconds (perf_counter),
    `max_iter` iterations, or once the bound is within `target_gap` of `incumbent`.

    `need` = max(1, D_l) shards a serving learner must carry; `equality` when D_l ≥ 1 (every
    learner serves a task, u free), else u ≥ 0. `owner` (learner → task) and `task_times`
    (seconds) of an incumbent seed u with each learner's marginal worth in its task. Every
    value returned is a valid lower bound (seconds), −∞ if no iteration completed.
    """
    started = time.perf_counter()
    m, _ = co.fixed.shape
    elig, lo, hi = time_ranges(co, need)
    u, centre = _initial_prices(co, owner, task_times, equality)
    best = -np.inf
    prefer: np.ndarray | None = None
    u_best: np.ndarray | None = None
    history: list[float] = []
    step_scale, stall, it = 1.0, 0, 0
    grids = [_initial_grid(float(lo[i]), float(hi[i]), centre[i]) for i in range(m)]
    # Only every FULL_EVERY-th iteration (and the last) evaluates the whole grid, which is
    # what makes L(u) a proven bound; the ones between probe a few t per task, enough to
    # steer the subgradient at a fraction of the cost.
    full_cost = 0.0
    est_best = -np.inf
    for it in range(1, max_iter + 1):
        t_it = time.perf_counter()
        full = it % FULL_EVERY == 1 or (t_it - started) + full_cost > deadline_s
        evaluated = _evaluate_dual(co, u, grids, centre, lo, hi, full=full, need=need,
                                   elig=elig, D=co.shards)
        if evaluated is None:
            return LagrangeBound(np.inf, it, time.perf_counter() - started)
        value, est, used, zz = evaluated
        est_best, stall, step_scale = _step_rule(est, est_best, stall, step_scale)
        now = time.perf_counter()
        if full:
            full_cost = now - t_it
            if value > best:
                best, u_best = value, u.copy()
                prefer = np.where(zz.max(axis=0) > 0, np.argmax(zz, axis=0), -1)
            history.append(best)
            if _bound_done(history, incumbent, target_gap, now - started, deadline_s):
                break
        if not np.isfinite(est):
            continue  # a probe missed every feasible t: the next full iteration re-centres
        moved = _subgradient_step(u, used, est, incumbent, step_scale, equality)
        if moved is None:
            break  # a zero subgradient: u maximises L on this grid
        u = moved
    return LagrangeBound(float(best), it, time.perf_counter() - started, prefer, u_best)


# ---------------------------------------------------------------- primal side


def _fill(co: Coefficients, owner: np.ndarray, need: int) -> np.ndarray | None:
    """Whole-shard allocation (tasks x learners) of a learner → task map, or None."""
    m, n = co.fixed.shape
    alloc = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        members = np.nonzero(owner == i)[0]
        filled = task_fill(co, i, members, need)
        if filled is None:
            return None
        alloc[i, members] = filled[0]
    return alloc


def lagrangian_repair(co: Coefficients, prefer: np.ndarray, fallback: np.ndarray, need: int,
                      dl: int) -> np.ndarray:
    """A learner → task map from the dual solution: each learner goes where the best-u
    subproblems used it most; learners no subproblem used keep `fallback`'s task (D_l ≥ 1),
    or stay idle (D_l = 0). Tasks left with no member get their fallback members back."""
    m, _ = co.fixed.shape
    owner = np.where(prefer >= 0, prefer, fallback if dl > 0 else -1)
    owner = np.where(co.cap[np.maximum(owner, 0), np.arange(owner.size)] >= need, owner,
                     fallback)
    for i in range(m):
        if not (owner == i).any():
            owner = np.where(fallback == i, i, owner)
    return owner


def solve_lagrange(
    inst: MedInstance,
    *,
    time_limit_s: float,
    mip_gap: float,
    enforce_deadlines: bool = True,
    method: str = "med",
    notes: list[str] | None = None,
) -> MedResult | None:
    """Greedy start, Lagrangian bound, a dual-guided repair and exact local search (backend
    "lagrange"). None when the greedy finds no feasible allocation (the caller then lets the
    MILP solve or diagnose the instance). `solve_time_s` is this function's wall time
    (perf_counter, seconds); the status is "optimal" only when the gap is within `mip_gap`.
    """
    started = time.perf_counter()
    notes = notes if notes is not None else []
    greedy = greedy_allocation(inst, enforce_deadlines=enforce_deadlines)
    if greedy is None:
        return None
    inc = _Incumbent(inst, greedy, enforce_deadlines, notes)
    co, need, dl = inc.co, inc.need, inst.min_shards

    def left() -> float:  # seconds left, 5 % kept back (each search checks its clock per move)
        return 0.95 * time_limit_s - (time.perf_counter() - started)

    # Time split: 25 % local search from the greedy, 70 % of the rest for the subgradient
    # bound (it often converges sooner), then column generation on the same relaxation
    # (colgen.py, a better dual method) with 60 % of what is left and a restricted master
    # MILP over its columns, then a search from the dual solution's assignment.
    inc.polish(_owner_of(greedy), 0.25 * time_limit_s, "local search from the greedy start")
    owner = _owner_of(inc.alloc)
    times = expected_delays(inst, inc.alloc).max(axis=1)
    rest = max(0.05, time_limit_s - (time.perf_counter() - started))
    lb = lagrangian_bound(co, need=need, equality=dl > 0, incumbent=inc.obj, owner=owner,
                          task_times=times, deadline_s=0.7 * rest, target_gap=mip_gap)
    prefer = lb.prefer
    if left() > 0.1 * time_limit_s and inc.gap(lb.bound) > mip_gap:
        better = _colgen_stage(inc, lb, owner, times, left, mip_gap)
        prefer = better if better is not None else prefer
    if prefer is not None and left() > 0 and inc.gap(lb.bound) > mip_gap:
        inc.polish(lagrangian_repair(co, prefer, owner, need, dl), left(),
                   "local search from the Lagrangian dual's assignment")
    return _lagrange_result(inst, method, inc.alloc, inc.obj, lb, mip_gap, notes, started)


def _owner_of(alloc: np.ndarray) -> np.ndarray:
    """Learner → task map of an allocation (−1: idle)."""
    out: np.ndarray = np.where((alloc > 0).any(axis=0), np.argmax(alloc > 0, axis=0), -1)
    return out


class _Incumbent:
    """The best allocation so far (objective in seconds) and the local search that feeds it."""

    def __init__(self, inst: MedInstance, alloc: np.ndarray, enforce_deadlines: bool,
                 notes: list[str]) -> None:
        self.inst, self.enforce, self.notes = inst, enforce_deadlines, notes
        self.co = coefficients(inst, enforce_deadlines=enforce_deadlines)
        self.need = max(1, inst.min_shards)
        self.fill_need = self.need if inst.min_shards > 0 else 1
        self.alloc, self.obj = alloc, med_objective(inst, alloc)

    def gap(self, bound: float) -> float:
        return (self.obj - bound) / self.obj if self.obj > 0 else 0.0

    def polish(self, owner: np.ndarray, seconds: float, label: str) -> None:
        """Local search from `owner`; keeps the result if it beats the incumbent."""
        cand = local_search(self.co, owner, self.need, deadline_s=seconds)
        alloc = _fill(self.co, cand, self.fill_need)
        if alloc is not None and not check_allocation(
                self.inst, alloc, enforce_deadlines=self.enforce):
            obj = med_objective(self.inst, alloc)
            if obj < self.obj - 1e-12:
                self.alloc, self.obj = alloc, obj
                self.notes.append(f"incumbent improved by {label}")


def _colgen_stage(inc: _Incumbent, lb: LagrangeBound, owner: np.ndarray, times: np.ndarray,
                  left: Callable[[], float], mip_gap: float) -> np.ndarray | None:
    """Column generation from the subgradient's multipliers (raises `lb.bound` when it does
    better; returns the master LP's preferred assignment then), and the restricted master
    MILP over its whole-learner columns, polished by local search."""
    co, need, equality = inc.co, inc.need, inc.inst.min_shards > 0
    cg = colgen_bound(co, need=need, equality=equality, owner=owner, task_times=times,
                      u_start=lb.u, deadline_s=0.6 * left(), target=inc.obj * (1 - mip_gap))
    inc.notes.append(f"column generation: {cg.iterations} rounds, {cg.seconds:.3g}s, "
                     f"{'0/1' if cg.integer_cover else 'LP'} covers, bound {cg.bound:.6g} "
                     f"(subgradient {lb.bound:.6g})")
    prefer = None
    if cg.bound > lb.bound:
        lb.bound, prefer = cg.bound, cg.prefer
    if (cg.integer_cover and cg.iterations > 0 and cg.columns
            and len(cg.columns) <= RMIP_MAX_COLUMNS and left() > 0
            and inc.gap(lb.bound) > mip_gap):
        # The primal from the dual's own columns: one generated set per task (HiGHS
        # struggles with these set-partitioning MILPs beyond a few hundred columns).
        picked = restricted_master_mip(co, cg.columns, need=need, equality=equality,
                                       time_limit_s=0.3 * left())
        if picked is not None:
            inc.polish(picked, 0.3 * max(0.0, left()),
                       "local search from the restricted master MILP")
    return prefer


def _lagrange_result(inst: MedInstance, method: str, best_alloc: np.ndarray, best_obj: float,
                     lb: LagrangeBound, mip_gap: float, notes: list[str], started: float
                     ) -> MedResult:
    """The incumbent and the Lagrangian bound as backend "lagrange"'s MedResult."""
    bound: float | None = min(lb.bound, best_obj)
    gap: float | None = (best_obj - lb.bound) / best_obj if best_obj > 0 else 0.0
    notes.append(f"Lagrangian bound: {lb.iterations} subgradient iterations, {lb.seconds:.3g}s; "
                 "the budget (4.4d) is not in the bound")
    if not np.isfinite(lb.bound):
        # +∞ would mean a task cannot be served at all, which the incumbent contradicts
        # (a numerical edge); −∞ that no iteration finished. Either way: no proven bound.
        notes.append("no usable Lagrangian bound; gap unknown")
        bound = gap = None
    else:
        gap = max(0.0, gap or 0.0)
    delays = expected_delays(inst, best_alloc).max(axis=1)
    status: Status = "optimal" if gap is not None and gap <= mip_gap else "feasible"
    return MedResult(method, status, "lagrange", best_obj, bound, gap,
                     time.perf_counter() - started, best_alloc,
                     [float(x) for x in delays], 0, 0, notes=notes)
