"""MED: the Lagrangian dual of `med.lagrange` solved by stabilised column generation.

Same relaxation as `med.lagrange` (4.4f dualised, one multiplier per learner), a better dual
method: instead of subgradient steps, the restricted master LP

    min Σ_c t_c λ_c   s.t.  Σ_{c of task i} λ_c = 1 (∀i),  Σ_c z_cj λ_c = 1 (≤ 1 if D_l = 0) (∀j)

over columns c = (task i, time t_c, learner use z_c) is re-solved (HiGHS, warm) and its duals
u price new columns task by task (Wentges smoothing towards the best u so far keeps the duals
from oscillating). Every pricing round evaluates the Lagrangian function at the smoothed u,

    L(u) = Σ_i min_{t, z} [t − u·z] + Σ_j u_j,

which is a proven lower bound on eq. 4.4 whatever u is, so the bound never depends on the
master having converged.

Pricing keeps the bound valid over each task's whole time range [τ_i, t̄_i] while being exact
where it matters: in a window around the incumbent's task time every breakpoint F_ij + k·K_ij
(where some learner finishes a whole shard) is a grid point, so each segment's value t_k +
cover(q(t_k)) is exact there (q is constant between breakpoints); outside the window coarse
segments [t_k, t_{k+1}) are valued t_k + cover(q(t_{k+1})) as in `med.lagrange`. The covering
problem min Σ w_j z_j, Σ q_j z_j ≥ D_i is solved exactly in 0/1 (a knapsack DP over shards)
when that is cheap — the configuration LP, which keeps whole learners per task — and as its LP
(0 ≤ z ≤ 1) otherwise; both give valid bounds, the 0/1 one a tighter one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from orchestrator.allocation.med.greedy import task_fill
from orchestrator.allocation.med.milp import Milp, task_time_lower_bounds
from orchestrator.allocation.med.model import Coefficients
from orchestrator.allocation.med.solvers import solve_highs
from orchestrator.allocation.stdout_guard import quiet_solver

WINDOW = (0.98, 1.02)  # exact breakpoints within these factors of the incumbent's task time
MAX_ROWS = 800  # grid rows per task at most
INT_COVER_WORK = 300_000  # eligible learners x D_i x 16 up to which the 0/1 cover is used


def lp_cover(Q: np.ndarray, u: np.ndarray, D: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractional covering per grid row: min Σ_j u_j z_j s.t. Σ_j Q_kj z_j ≥ D, 0 ≤ z ≤ 1
    (z_j = 0 where Q_kj = 0), a lower bound on the 0/1 covering. Returns (cost per row, z per
    row); cost is ∞ where the row's learners cannot carry D. Learners with u_j ≤ 0 are taken
    whole (they only lower the cost), the rest by increasing u_j/Q_kj.

    (Branching on the one fractional learner, as in Martello and Toth's knapsack bound, was
    tried: it moved the 200 x 10 bound by < 0.05 % and cost 50 % more time per iteration.)
    """
    usable = Q > 0
    key = np.where(usable, u[None, :] / np.where(usable, Q, 1), np.inf)
    order = np.argsort(key, axis=1)
    Qs = np.take_along_axis(Q, order, axis=1)
    us = u[order]
    before = np.cumsum(Qs, axis=1) - Qs
    frac = np.clip((D - before) / np.where(Qs > 0, Qs, 1.0), 0.0, 1.0)
    zs = np.where(Qs > 0, np.where(us <= 0, 1.0, frac), 0.0)
    cost = (zs * us).sum(axis=1)
    cost = np.where(before[:, -1] + Qs[:, -1] >= D, cost, np.inf)
    z = np.empty_like(zs)
    np.put_along_axis(z, order, zs, axis=1)
    return cost, z


def time_ranges(co: Coefficients, need: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which learners can serve each task (m x n), and the range [lo, hi] of every task's
    finishing time (seconds)."""
    m, _ = co.fixed.shape
    elig = co.cap >= need
    ii, jj = np.nonzero(elig)
    lo = task_time_lower_bounds(co, ii, jj, need)
    hi = np.zeros(m)
    np.maximum.at(hi, ii, co.fixed[ii, jj] + co.per_shard[ii, jj] * co.cap[ii, jj])
    hi = np.maximum(np.minimum(hi, co.deadline) * (1 + 1e-12), lo)
    return elig, lo, hi


@dataclass
class ColgenBound:
    """A proven lower bound on eq. 4.4 (seconds), its multipliers and how it was reached."""

    bound: float
    iterations: int
    seconds: float
    integer_cover: bool
    converged: bool
    prefer: np.ndarray | None = None  # (n,) task the master LP uses learner j most for
    columns: list[tuple[int, np.ndarray]] | None = None  # (task, 0/1 learner set) generated


def int_cover(Q: np.ndarray, w: np.ndarray, D: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact 0/1 covering per row: min Σ_j w_j z_j s.t. Σ_j Q_kj z_j ≥ D, z ∈ {0, 1}.

    Learners with w_j ≤ 0 are taken whole (they only lower the cost); the rest by a DP over
    shards still to cover (best[c] = least cost covering ≥ c), vectorised over rows. Returns
    (cost per row, ∞ where the row cannot cover D; z per row)."""
    rows = Q.shape[0]
    Qi = Q.astype(np.int64)
    free = (w <= 0)[None, :] & (Qi > 0)
    rest = np.maximum(0, D - (Qi * free).sum(axis=1))
    base_cost = (np.where(free, w[None, :], 0.0)).sum(axis=1)
    top = int(rest.max(initial=0))
    c = np.arange(top + 1)
    best = np.where(c[None, :] == 0, 0.0, np.inf) + np.zeros((rows, 1))
    pos = np.nonzero(w > 0)[0]
    took: list[np.ndarray] = []
    for j in pos:
        q = Qi[:, j]
        src = np.maximum(0, c[None, :] - q[:, None])
        cand = np.take_along_axis(best, src, axis=1) + w[j]
        take = (cand < best) & (q[:, None] > 0)
        best = np.where(take, cand, best)
        took.append(take)
    r = np.arange(rows)
    cost = best[r, rest] + base_cost
    z = free.astype(float)
    left = rest.copy()
    for k in range(pos.size - 1, -1, -1):
        hit = took[k][r, left]
        z[hit, pos[k]] = 1.0
        left = np.where(hit, np.maximum(0, left - Qi[:, pos[k]]), left)
    return cost, z


class _TaskGrid:
    """One task's time grid over its points: τ_i, every breakpoint F_ij + k·K_ij inside
    (τ_i, t̄_i), and t̄_i. The grid keeps a sorted subset `idx` of the points; segment
    [pts[idx_k], pts[idx_{k+1}]) is *exact* when no point lies strictly inside (q is constant
    on it: valued t + cover(q(t)) at its start, a real column), else valued at its start with
    the capacity q at its end (an upper value: a lower bound on the segment)."""

    def __init__(self, co: Coefficients, i: int, need: int, elig: np.ndarray, lo: float,
                 hi: float, window: tuple[float, float], integer: bool) -> None:
        self.co, self.i, self.need, self.elig, self.integer = co, i, need, elig, integer
        js = np.nonzero(elig)[0]
        k = np.arange(1, int(co.cap[i, js].max(initial=0)) + 1)
        bp = co.fixed[i, js][:, None] + co.per_shard[i, js][:, None] * k[None, :]
        bp = bp[(k[None, :] <= co.cap[i, js][:, None]) & (k[None, :] >= need)]
        self.pts = np.unique(np.concatenate([[lo], bp[(bp > lo) & (bp < hi)], [hi]]))
        last = self.pts.size - 1
        inside = np.nonzero((self.pts >= window[0]) & (self.pts <= window[1]))[0]
        if inside.size > MAX_ROWS // 2:
            inside = inside[np.linspace(0, inside.size - 1, MAX_ROWS // 2).astype(np.int64)]
        coarse = np.unique(np.linspace(0, last, 17).astype(np.int64))
        self.idx = np.unique(np.concatenate([[0, last], coarse, inside]))
        self._rows()

    def _rows(self) -> None:
        nxt = np.append(self.idx[1:], self.idx[-1])
        self.exact = (nxt - self.idx) <= 1
        at = np.where(self.exact, self.pts[self.idx], self.pts[nxt])
        self.start = self.pts[self.idx]
        self.Q = _q(self.co, self.i, at, self.need, self.elig)

    def split(self, rows: np.ndarray) -> bool:
        """Split the inexact segments starting at grid rows `rows`; False if the grid is full."""
        if self.idx.size >= MAX_ROWS or rows.size == 0:
            return False
        add = []
        for r in rows[: max(1, (MAX_ROWS - self.idx.size) // 8)]:
            a, b = int(self.idx[r]), int(self.idx[r + 1])
            add.append(np.arange(a + 1, b) if b - a <= 16
                       else np.unique(np.linspace(a, b, 9).astype(np.int64)[1:-1]))
        self.idx = np.unique(np.concatenate([self.idx, *add]))
        self._rows()
        return True

    def coarsen(self, val: np.ndarray, best: float, margin: float = 0.01) -> None:
        """Drop grid points between two segments both valued > (1 + margin)·best: merging
        them keeps the bound valid (only looser where it cannot matter now)."""
        high = val > best + margin * abs(best)
        drop = np.zeros(self.idx.size, dtype=bool)
        drop[1:-1] = high[:-2] & high[1:-1]
        if drop.any():
            self.idx = self.idx[~drop]
            self._rows()

    def price(self, w: np.ndarray, rounds: int = 6, tol: float = 1e-7
              ) -> tuple[float, np.ndarray, np.ndarray]:
        """(min value, value per row, z per row) of min_t t + cover(q(t)) at prices w; rows
        whose lower value could beat the best exact row are split first (up to `rounds`)."""
        D = int(self.co.shards[self.i])
        for _ in range(rounds + 1):
            cost, z = lp_cover(self.Q, w, D)
            val = self.start + cost
            # The rows whose z is a column of this relaxation (with 0/1 covers: those solved
            # in 0/1).
            real = self._integer_rows(w, D, val, z) if self.integer else self.exact.copy()
            best_real = float(val[real].min(initial=np.inf))
            loose = np.nonzero(~self.exact & (val < best_real - tol * abs(best_real)))[0]
            if loose.size == 0:
                break
            if self.idx.size >= MAX_ROWS:
                self.coarsen(val, best_real)
                break  # the next pricing splits on the coarsened grid
            if not self.split(loose[np.argsort(val[loose])]):
                break
        self.real = real
        return float(val.min()), val, z

    def _integer_rows(self, w: np.ndarray, D: int, val: np.ndarray, z: np.ndarray,
                      batch: int = 16) -> np.ndarray:
        """Replace the LP cover by the 0/1 cover (in place in `val`, `z`) on exact rows, in
        order of their LP value, until the next LP value (a lower bound on its row's 0/1
        value) cannot beat the best 0/1 value found; returns the rows done in 0/1."""
        done = np.zeros(val.size, dtype=bool)
        order = np.argsort(val)
        order = order[self.exact[order] & np.isfinite(val[order])]
        best = np.inf
        for s in range(0, order.size, batch):
            rows = order[s: s + batch]
            if val[rows[0]] >= best:
                break
            cost, zi = int_cover(self.Q[rows], w, D)
            val[rows] = self.start[rows] + cost
            z[rows] = zi
            done[rows] = True
            best = min(best, float(val[rows].min()))
        return done


def _q(co: Coefficients, i: int, t: np.ndarray, need: int, elig: np.ndarray) -> np.ndarray:
    Q = np.floor((t[:, None] - co.fixed[i][None, :]) / co.per_shard[i][None, :] + 1e-9)
    Q = np.minimum(Q, co.cap[i][None, :])
    return np.where((need <= Q) & elig[None, :], Q, 0.0)


class _Master:
    """The restricted master LP in HiGHS: m convexity rows, then n learner rows."""

    def __init__(self, m: int, n: int, equality: bool) -> None:
        import highspy

        self.hs = highspy
        self.h = highspy.Highs()  # type: ignore[no-untyped-call]
        self.h.setOptionValue("output_flag", False)
        self.m = m
        lo = np.concatenate([np.ones(m),
                             np.ones(n) if equality else np.full(n, -highspy.kHighsInf)])
        self.h.addRows(m + n, lo, np.ones(m + n), 0, np.zeros(0, dtype=np.int32),
                       np.zeros(0, dtype=np.int32), np.zeros(0))
        self.cols: list[tuple[int, np.ndarray]] = []

    def add(self, i: int, t: float, z: np.ndarray) -> None:
        nz = np.nonzero(z > 1e-12)[0]
        idx = np.concatenate([[i], self.m + nz]).astype(np.int32)
        self.h.addCol(float(t), 0.0, self.hs.kHighsInf, idx.size, idx,
                      np.concatenate([[1.0], z[nz]]))
        self.cols.append((i, z))

    def solve(self) -> tuple[float, np.ndarray, np.ndarray, np.ndarray] | None:
        """(objective, π per task, u per learner, λ per column), None unless optimal."""
        self.h.run()
        if self.h.getModelStatus() != self.hs.HighsModelStatus.kOptimal:
            return None
        sol = self.h.getSolution()
        dual = np.asarray(sol.row_dual)
        return (float(self.h.getInfo().objective_function_value), dual[:self.m],
                dual[self.m:], np.asarray(sol.col_value))


def _price(grids: list[_TaskGrid], co: Coefficients, u: np.ndarray, per_task: int,
           stop_at: float) -> tuple[float, list[tuple[int, float, np.ndarray]]]:
    """L(u) (a proven bound, seconds) and up to `per_task` cheapest distinct exact columns
    per task; L = −∞ (no bound) when the clock passes `stop_at` (perf_counter) midway."""
    value = float(u.sum())
    cols: list[tuple[int, float, np.ndarray]] = []
    for i, g in enumerate(grids):
        if time.perf_counter() > stop_at:
            return -np.inf, cols
        low, val, z = g.price(-u)
        value += low
        order = np.argsort(val)
        seen: set[bytes] = set()
        for k in order[: 6 * per_task]:
            if not np.isfinite(val[k]):
                break
            if not g.real[k]:
                continue
            key = (z[k] > 0).tobytes()
            if key in seen:
                continue
            seen.add(key)
            cols.append((i, float(g.start[k]), z[k]))
            if len(seen) >= per_task:
                break
    return value, cols


@quiet_solver
def colgen_bound(
    co: Coefficients,
    *,
    need: int,
    equality: bool,
    owner: np.ndarray,
    task_times: np.ndarray,
    u_start: np.ndarray | None = None,
    deadline_s: float = 1.0,
    max_iter: int = 500,
    alpha: float = 0.7,
    per_task: int = 3,
    integer_cover: bool | None = None,
    target: float | None = None,
) -> ColgenBound:
    """max_u L(u) by column generation, from an incumbent (learner → task `owner`, its task
    times in seconds) and optionally the Lagrangian multipliers `u_start` of `med.lagrange`
    (its sign: L(u) = Σ_i min [t + Σ u_j z_j] − Σ u_j). Stops after `deadline_s` seconds
    (perf_counter), `max_iter` rounds, when no column prices out, or once the bound reaches
    `target` (seconds). `integer_cover` None: 0/1 covering where cheap (INT_COVER_WORK).
    """
    started = time.perf_counter()
    stop_at = started + deadline_s
    m, n = co.fixed.shape
    elig, lo, hi = time_ranges(co, need)
    if integer_cover is None:
        integer_cover = bool((elig.sum(axis=1) * co.shards).max() * 16 <= INT_COVER_WORK)
    grids = [_TaskGrid(co, i, need, elig[i], float(lo[i]), float(hi[i]),
                       (task_times[i] * WINDOW[0], task_times[i] * WINDOW[1]), integer_cover)
             for i in range(m)]
    master = _Master(m, n, equality)
    for i in range(m):
        master.add(i, float(task_times[i]), (owner == i).astype(float))
    centre = -u_start if u_start is not None else np.zeros(n)
    best = -np.inf
    if u_start is not None:
        best, cols = _price(grids, co, centre, per_task, stop_at)
        for i, t, z in cols:
            master.add(i, t, z)
    it, converged, x_last = 0, False, None
    while it < max_iter and time.perf_counter() < stop_at:
        it += 1
        solved = master.solve()
        if solved is None:
            break
        obj, pi, um, x_last = solved
        if not equality:
            um = np.minimum(um, 0.0)
        added, val, us = _round(master, grids, co, pi, um, centre,
                                alpha if np.isfinite(best) else 0.0, per_task, stop_at)
        if val > best:
            best, centre = val, us
        if not np.isfinite(val):
            break  # out of time midway through pricing
        converged = added == 0 or obj - best <= 1e-6 * abs(obj)
        if converged or (target is not None and best >= target):
            break
    whole = [(i, z) for i, z in master.cols if np.all((z == 0) | (z == 1))]
    return ColgenBound(float(best), it, time.perf_counter() - started, integer_cover,
                       converged, _prefer(master, x_last, m, n), whole)


@quiet_solver
def restricted_master_mip(co: Coefficients, columns: list[tuple[int, np.ndarray]], *,
                          need: int, equality: bool, time_limit_s: float
                          ) -> np.ndarray | None:
    """The best learner → task map that picks one generated learner set per task (each
    learner in at most one set; learners left over keep −1), by a small set-partitioning
    MILP (HiGHS) over the columns the dual generated, each costed at its exact task time
    (`task_fill`). None if HiGHS finds nothing within `time_limit_s` seconds."""
    from scipy import sparse

    m, n = co.fixed.shape
    sets: dict[tuple[int, bytes], tuple[float, np.ndarray]] = {}
    for i, z in columns:
        members = np.nonzero(z > 0.5)[0]
        key = (i, members.tobytes())
        if key not in sets:
            filled = task_fill(co, i, members, need)
            if filled is not None:
                sets[key] = (filled[1], members)
    if not sets:
        return None
    keys = list(sets)
    k = len(keys)
    r = np.concatenate([np.concatenate([[key[0]], m + sets[key][1]]) for key in keys])
    c = np.concatenate([np.full(1 + sets[key][1].size, col) for col, key in enumerate(keys)])
    model = Milp(np.array([sets[key][0] for key in keys]),
                 sparse.csr_matrix((np.ones(r.size), (r, c)), shape=(m + n, k)),
                 np.concatenate([np.ones(m), np.zeros(n)]), np.ones(m + n), np.zeros(k),
                 np.ones(k), np.ones(k, dtype=bool), np.zeros((0, 2), dtype=np.int64), m, n)
    raw = solve_highs(model, time_limit_s=max(0.01, time_limit_s), mip_gap=1e-6)
    if raw.values is None:
        return None
    owner = np.full(n, -1)
    for col in np.nonzero(raw.values > 0.5)[0]:
        owner[sets[keys[col]][1]] = keys[col][0]
    if equality and (owner < 0).any():
        return _place_leftovers(co, owner, need)
    return owner


def _place_leftovers(co: Coefficients, owner: np.ndarray, need: int) -> np.ndarray:
    """Every learner the chosen sets left out joins the task whose time it raises least
    (D_l ≥ 1: every learner must serve a task)."""
    owner = owner.copy()
    m = co.fixed.shape[0]
    for j in np.nonzero(owner < 0)[0]:
        best, where = np.inf, int(np.argmax(co.cap[:, j] >= need))
        for i in range(m):
            if co.cap[i, j] < need:
                continue
            members = np.nonzero(owner == i)[0]
            with_j = task_fill(co, i, np.append(members, j), need)
            without = task_fill(co, i, members, need)
            if with_j is not None and without is not None and with_j[1] - without[1] < best:
                best, where = with_j[1] - without[1], i
        owner[j] = where
    return owner


def _round(master: _Master, grids: list[_TaskGrid], co: Coefficients, pi: np.ndarray,
           um: np.ndarray, centre: np.ndarray, alpha: float, per_task: int, stop_at: float
           ) -> tuple[int, float, np.ndarray]:
    """One pricing round at the smoothed duals α·centre + (1 − α)·um (again at um itself if
    nothing prices out there): (columns added, L at the point priced last, that point)."""
    a = alpha
    while True:
        us = a * centre + (1 - a) * um
        val, cols = _price(grids, co, us, per_task, stop_at)
        added = 0
        for i, t, z in cols:
            # Reduced cost with respect to the master's own duals.
            if t - float(um @ z) - pi[i] < -1e-9 * max(1.0, abs(t)):
                master.add(i, t, z)
                added += 1
        if added or a == 0.0 or not np.isfinite(val):
            return added, val, us
        a = 0.0


def _prefer(master: _Master, x: np.ndarray | None, m: int, n: int) -> np.ndarray | None:
    """Each learner's task by its largest share in the master LP solution (−1: unused)."""
    if x is None:
        return None
    share = np.zeros((m, n))
    for (i, z), lam in zip(master.cols, x[: len(master.cols)], strict=False):
        if lam > 1e-9:
            share[i] += lam * z
    return np.where(share.max(axis=0) > 1e-9, np.argmax(share, axis=0), -1)
