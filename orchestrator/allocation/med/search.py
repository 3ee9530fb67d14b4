"""MED local search on the exact whole-shard objective: best single moves, then best swaps.

For a fixed learner → task map, task i's least max expected delay (eq. 4.3) is the D_i-th
smallest shard finishing time fixed_ij + k·per_shard_ij over its members (and at least every
member's time for its first max(1, D_l) shards). Adding learner b and/or removing learner a
changes the count of finishing times ≤ t by q_b(t) − q_a(t), with q_j(t) = min(cap_ij,
⌊(t − fixed_ij)/per_shard_ij⌋), so the new time of many candidate changes is found at once by
a vectorised bisection on t against the members' sorted finishing times. Each round applies
the best improving move over every (learner, task) pair; when none improves, the best of the
most promising swaps; stops at a local optimum or the time limit.
"""

from __future__ import annotations

import time

import numpy as np

from orchestrator.allocation.med.model import Coefficients


class _Task:
    """One task's members, sorted finishing times (seconds) and the first-shard times."""

    def __init__(self, co: Coefficients, i: int, members: np.ndarray, need: int) -> None:
        self.i = i
        self.members = members
        fixed, per, cap = co.fixed[i, members], co.per_shard[i, members], co.cap[i, members]
        cap = np.maximum(cap, 0)
        k = np.arange(1, int(cap.max(initial=0)) + 1)
        grid = fixed[:, None] + per[:, None] * k[None, :]
        self.times = np.sort(grid[k[None, :] <= cap[:, None]])
        first = fixed + need * per
        order = np.argsort(-first)
        self.top1 = float(first[order[0]]) if members.size else np.inf
        self.top1_who = int(members[order[0]]) if members.size else -1
        self.top2 = float(first[order[1]]) if members.size > 1 else -np.inf


def _times_with(co: Coefficients, task: _Task, rem: np.ndarray, add: np.ndarray, need: int
                ) -> np.ndarray:
    """Task time (seconds) after removing learner rem[c] and adding add[c] (−1: none), for every
    candidate c at once; ∞ where the changed member set cannot carry the task."""
    i = task.i
    fixed, per, cap = co.fixed[i], co.per_shard[i], np.maximum(co.cap[i], 0)
    D = int(co.shards[i])
    ra, aa = np.maximum(rem, 0), np.maximum(add, 0)
    has_r, has_a = rem >= 0, add >= 0

    f_r, p_r, c_r = fixed[ra], 1.0 / per[ra], np.where(has_r, cap[ra], 0)
    f_a, p_a, c_a = fixed[aa], 1.0 / per[aa], np.where(has_a, cap[aa], 0)

    def count(t: np.ndarray) -> np.ndarray:
        c = np.searchsorted(task.times, t, side="right").astype(float)
        c -= np.minimum(np.maximum(np.floor((t - f_r) * p_r + 1e-9), 0.0), c_r)
        c += np.minimum(np.maximum(np.floor((t - f_a) * p_a + 1e-9), 0.0), c_a)
        return c

    size = task.members.size - has_r + has_a
    hi = np.maximum(task.times[-1] if task.times.size else 0.0,
                    np.where(has_a, fixed[aa] + per[aa] * cap[aa], 0.0))
    lo = np.zeros(rem.size)
    ok = (count(hi) >= D) & (size >= 1) & (size * need <= D)
    ok &= ~has_a | (cap[aa] >= need)
    for _ in range(44):  # halves [0, hi] to ~6e-14 of hi
        mid = 0.5 * (lo + hi)
        good = count(mid) >= D
        hi = np.where(good, mid, hi)
        lo = np.where(good, lo, mid)
    first = np.where(has_r & (rem == task.top1_who), task.top2, task.top1)
    first = np.maximum(first, np.where(has_a, fixed[aa] + need * per[aa], -np.inf))
    return np.where(ok, np.maximum(hi, first), np.inf)


def _change(new: np.ndarray, old: float) -> np.ndarray:
    """new − old seconds; +∞ where the new time is ∞ (a task with no time yet counts as ∞,
    so any finite time for it is an improvement of −∞)."""
    if not np.isfinite(old):
        return np.where(np.isfinite(new), -np.inf, np.inf)
    return np.where(np.isfinite(new), new - old, np.inf)


def _best_move(owner: np.ndarray, rem: np.ndarray, add: np.ndarray, idle_ok: bool
               ) -> tuple[int, int, float]:
    """The best single move, j from its task to task i (or from idle, when idle learners are
    allowed): (i, j, Δ Σ t)."""
    n = owner.size
    base = np.where(owner >= 0, rem, 0.0 if idle_ok else np.inf)
    with np.errstate(invalid="ignore"):
        # −∞ + ∞ (a task with no finite time gaining a learner its own task cannot lose)
        # is not a move.
        delta = np.nan_to_num(add + base[None, :], nan=np.inf, posinf=np.inf,
                              neginf=-np.inf)
    k = int(np.argmin(delta))
    i_new, j = divmod(k, n)
    return i_new, j, float(delta[i_new, j])


def _apply_move(owner: np.ndarray, i_new: int, j: int, swap: tuple[int, int] | None
                ) -> set[int]:
    """Move j to task i_new, or swap the tasks of the pair `swap`, in `owner`; returns the
    tasks whose members changed."""
    changed = set()
    if swap is None:
        if owner[j] >= 0:
            changed.add(int(owner[j]))
        owner[j] = i_new
        changed.add(i_new)
    else:
        a, b = swap
        ta, tb = int(owner[a]), int(owner[b])
        owner[a], owner[b] = tb, ta
        changed |= {ta, tb}
    return changed


def local_search(co: Coefficients, owner: np.ndarray, need: int, *, deadline_s: float,
                 swap_candidates: int = 1000) -> np.ndarray:
    """Improve a learner → task map (−1: idle, allowed only when D_l = 0, i.e. need == 1 and
    idle learners exist) on the exact Σ_i t_i; returns the new map. `deadline_s` seconds of
    wall time (perf_counter) at most."""
    started = time.perf_counter()
    m, n = co.fixed.shape
    owner = owner.copy()
    idle_ok = bool((owner < 0).any())
    tasks = [_Task(co, i, np.nonzero(owner == i)[0], need) for i in range(m)]
    t = np.array([float(_times_with(co, tk, np.array([-1]), np.array([-1]), need)[0])
                  for tk in tasks])
    everyone = np.arange(n)
    minus1 = np.full(n, -1)

    def rem_gain(i: int) -> np.ndarray:
        mem = tasks[i].members
        return _change(_times_with(co, tasks[i], mem, np.full(mem.size, -1), need), t[i])

    def add_row(i: int) -> np.ndarray:
        row = _change(_times_with(co, tasks[i], minus1, everyone, need), t[i])
        row[tasks[i].members] = np.inf
        return row

    rem = np.zeros(n)  # change of the owner's time when j leaves (∞: not allowed)
    for i in range(m):
        rem[tasks[i].members] = rem_gain(i)
    add = np.array([add_row(i) for i in range(m)])  # (m, n)
    while time.perf_counter() - started < deadline_s:
        i_new, j, best = _best_move(owner, rem, add, idle_ok)
        swap: tuple[int, int] | None = None
        eps = -1e-9 * float(t[np.isfinite(t)].sum())  # ignore float noise
        if not best < eps:
            swap_delta, swap = _best_swap(co, tasks, owner, t, rem, add, need, swap_candidates)
            if swap is None or not swap_delta < eps:
                break
        changed = _apply_move(owner, i_new, j, swap)
        for i in changed:
            tasks[i] = _Task(co, i, np.nonzero(owner == i)[0], need)
            t[i] = float(_times_with(co, tasks[i], np.array([-1]), np.array([-1]), need)[0])
        for i in changed:
            rem[tasks[i].members] = rem_gain(i)
            add[i] = add_row(i)
    return owner


def _best_swap(co: Coefficients, tasks: list[_Task], owner: np.ndarray, t: np.ndarray,
               rem: np.ndarray, add: np.ndarray, need: int, limit: int
               ) -> tuple[float, tuple[int, int] | None]:
    """The best exact swap among the `limit` most promising by the separable estimate
    rem_a + add[B, a] + rem_b + add[A, b]: (Δ Σ t, (a, b)) or (∞, None)."""
    a_idx = np.nonzero(owner >= 0)[0]
    if a_idx.size < 2:
        return np.inf, None
    A = owner[a_idx]
    # Estimate with finite parts only (a swap can be allowed where the single move is not).
    r = np.where(np.isfinite(rem[a_idx]), rem[a_idx], 0.0)
    ad = np.where(np.isfinite(add), add, 1e30)
    est = (r[:, None] + ad[A[None, :], a_idx[:, None]]) + (
        r[None, :] + ad[A[:, None], a_idx[None, :]])
    est = np.where(A[:, None] < A[None, :], est, np.inf)  # one order per pair, other tasks only
    flat = np.argsort(est, axis=None)[:limit]
    pa, pb = np.unravel_index(flat, est.shape)
    keep = np.isfinite(est[pa, pb])
    pa, pb = a_idx[pa[keep]], a_idx[pb[keep]]
    if pa.size == 0:
        return np.inf, None
    total = np.zeros(pa.size)
    for i in np.unique(owner[pa]):  # task of a loses a, gains b
        sel = owner[pa] == i
        total[sel] += _change(_times_with(co, tasks[i], pa[sel], pb[sel], need), t[i])
    for i in np.unique(owner[pb]):  # task of b loses b, gains a
        sel = owner[pb] == i
        total[sel] += _change(_times_with(co, tasks[i], pb[sel], pa[sel], need), t[i])
    k = int(np.argmin(total))
    return float(total[k]), (int(pa[k]), int(pb[k]))
