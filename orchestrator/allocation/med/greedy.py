"""MED greedy start: learners join tasks by a continuous completion-time proxy, move while
it (then the exact whole-shard time) improves, and each task is split in whole shards."""

from __future__ import annotations

import math

import numpy as np

from orchestrator.allocation.med.model import (
    Coefficients,
    MedInstance,
    check_allocation,
    coefficients,
)

# ---------------------------------------------------------------- greedy start (primal heuristic)


def task_fill(
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
        out: np.ndarray = np.minimum(cap, np.floor((t - fixed) / per + 1e-9)).astype(np.int64)
        return out

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


def _proxy_join(
    co: Coefficients, elig: np.ndarray, a: np.ndarray, r: np.ndarray, dl: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Learners join tasks by the continuous proxy: (owner, num, den), or None when some task
    gets no learner or (D_l ≥ 1) some learner none."""
    m, n = co.fixed.shape
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
        i, j = (int(x) for x in np.unravel_index(int(np.argmin(delta)), delta.shape))
        if not np.isfinite(delta[i, j]) or (dl == 0 and delta[i, j] >= 0):
            break
        owner[j], free[j] = i, False
        num[i] += a[i, j]
        den[i] += r[i, j]
    if dl > 0 and free.any():
        return None
    return owner, num, den


def _proxy_moves(owner: np.ndarray, num: np.ndarray, den: np.ndarray, a: np.ndarray,
                 r: np.ndarray, elig: np.ndarray) -> None:
    """Local search on the same continuous proxy: move one learner to another task while that
    lowers t_a + t_b (tasks keep at least one learner). Bounded number of moves; updates
    `owner`, `num` and `den` in place."""
    m, n = elig.shape
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


def greedy_allocation(
    inst: MedInstance, *, enforce_deadlines: bool = True, max_evals: int = 3000
) -> np.ndarray | None:
    """A feasible allocation found greedily, or None (used as the solvers' MIP start).

    Learners join tasks one at a time, each time the (learner, task) pair that lowers the
    task's continuous completion time t = (D_i + Σ fixed/per_shard) / Σ 1/per_shard the most
    (all learners join when D_l ≥ 1, else only while it helps); learners then move between
    tasks while the proxy sum improves, and again while the exact whole-shard times improve
    (at most `max_evals` exact task-time evaluations); finally each task is split in whole
    shards by `task_fill`. Checks 4.4b–4.4f at the end and gives up (None) if any fail.
    """
    co = coefficients(inst, enforce_deadlines=enforce_deadlines)
    m, n = co.fixed.shape
    dl = inst.min_shards
    need = max(1, dl)
    elig = co.cap >= need
    r = np.where(elig, 1.0 / co.per_shard, 0.0)  # (m, n) shards per second
    a = np.where(elig, co.fixed / co.per_shard, 0.0)
    joined = _proxy_join(co, elig, a, r, dl)
    if joined is None:
        return None
    owner, num, den = joined
    _proxy_moves(owner, num, den, a, r, elig)
    owner = _integer_moves(co, owner, elig, need, num, den, a, r, max_evals=max_evals)
    alloc = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        members = np.nonzero(owner == i)[0]
        filled = task_fill(co, i, members, need if dl > 0 else 1)
        if filled is None:
            return None
        alloc[i, members] = filled[0]
    if check_allocation(inst, alloc, enforce_deadlines=enforce_deadlines):
        return None
    return alloc
