"""Exact MED for small fleets by dynamic programming over learner subsets (no MILP solver).

With at most a dozen learners (the thesis testbed has 4–10), every way of splitting the fleet
among tasks can be examined: for each task i and subset S of learners, t_i(S) is the smallest
max expected delay S can reach on task i in whole shards (eq. 4.3, bisection on t), and

    f_k(U) = min_{S ⊆ U} t_k(S) + f_{k+1}(U \\ S),   f_{m+1}(U) = 0 if U = ∅ or D_l = 0 else ∞

gives the optimum of eq. 4.4 without the budget. The budget (4.4d) couples tasks, so the DP
answer is accepted only if its cheapest whole-shard fill fits B; otherwise the caller falls
back to the MILP. Cost is m·3^n subset pairs, vectorised with numpy.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from orchestrator.allocation.med.model import Coefficients

MAX_PAIRS = 2_000_000  # m·3^n subset pairs examined at most (n ≤ 12 for m ≤ 3)


def dp_applicable(n: int, m: int) -> bool:
    """Whether the subset DP stays within MAX_PAIRS for n learners and m tasks."""
    return n <= 14 and m * 3**n <= MAX_PAIRS


def _subset_times(co: Coefficients, need: int) -> np.ndarray:
    """t[i, S]: min over whole-shard splits of task i across exactly the learners in S of the
    max expected delay, seconds (∞ if S cannot carry D_i with ≥ need shards each).

    Learner j's k-th shard finishes at fixed_ij + k·per_shard_ij; S can carry D_i shards by
    time t iff at least D_i of its members' finishing times are ≤ t. So t_i(S) is the D_i-th
    smallest of those times over S (and at least every member's time for `need` shards).
    """
    m, n = co.fixed.shape
    masks = np.arange(1 << n)
    member = ((masks[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)  # (2^n, n)
    out = np.full((m, 1 << n), np.inf)
    for i in range(m):
        fixed, per, cap = co.fixed[i], co.per_shard[i], np.maximum(co.cap[i], 0)
        D = int(co.shards[i])
        owner = np.repeat(np.arange(n), cap)
        k = np.concatenate([np.arange(1, c + 1) for c in cap]) if cap.sum() else np.zeros(0)
        times = fixed[owner] + per[owner] * k
        order = np.argsort(times, kind="stable")
        times, owner = times[order], owner[order]
        first_ok = np.where(member, fixed + need * per, 0.0).max(axis=1)
        ok = ~(member & (cap < need)[None, :]).any(axis=1) & member.any(axis=1)
        ok &= member.sum(axis=1) * need <= D
        t_d = np.full(1 << n, np.inf)
        if times.size:
            # per_learner[j, p]: how many of the first p+1 finishing times are learner j's; a
            # subset's count is the sum of its members' rows (a loop over n ≤ 14 learners:
            # plain adds, not BLAS, whose threads crawl on a busy machine).
            per_learner = np.cumsum(owner[None, :] == np.arange(n)[:, None], axis=1,
                                    dtype=np.int32)
            chunk = max(1, 20_000_000 // times.size)
            for c0 in range(0, 1 << n, chunk):
                block = member[c0:c0 + chunk]
                counts = np.zeros((block.shape[0], times.size), dtype=np.int32)
                for j in range(n):
                    counts[block[:, j]] += per_learner[j]
                reach = counts[:, -1] >= D
                pos = np.argmax(counts >= D, axis=1)
                t_d[c0:c0 + chunk] = np.where(reach, times[pos], np.inf)
        out[i] = np.where(ok, np.maximum(t_d, first_ok), np.inf)
    return out


def min_cost_fill(co: Coefficients, i: int, members: np.ndarray, t: float, need: int) -> np.ndarray:
    """Shards per member finishing by t (seconds) at the least total price: everyone gets
    `need`, then the cheapest members are filled up to their capacity at t."""
    fixed, per, cap = co.fixed[i, members], co.per_shard[i, members], co.cap[i, members]
    q = np.minimum(cap, np.floor((t - fixed) / per + 1e-9)).astype(np.int64)
    d = np.full(members.size, need, dtype=np.int64)
    left = int(co.shards[i]) - need * members.size
    for k in np.argsort(co.price[members], kind="stable"):
        take = min(left, int(q[k]) - need)
        d[k] += take
        left -= take
    return d


def solve_dp(
    co: Coefficients, min_shards: int, budget: float
) -> tuple[np.ndarray | None, str, float]:
    """(allocation, note, seconds): the exact tasks x learners allocation, or None with the
    reason when the DP cannot decide alone, and its own run time (perf_counter, for the report).

    None comes back when the instance is infeasible without the budget (let the MILP path
    diagnose it) or when the DP optimum does not fit the budget (the MILP must trade time
    for price).
    """
    started = time.perf_counter()
    alloc, why = _solve(co, min_shards, budget)
    return alloc, why, time.perf_counter() - started


def _solve(co: Coefficients, min_shards: int, budget: float) -> tuple[np.ndarray | None, str]:
    m, n = co.fixed.shape
    need = max(1, min_shards)
    t = _subset_times(co, need)
    full = (1 << n) - 1
    # Every (U, S ⊆ U) pair: learner b is out of U, in U \ S, or in S (3^n pairs).
    U = np.zeros(1, dtype=np.int64)
    S = np.zeros(1, dtype=np.int64)
    for b in range(n):
        bit = 1 << b
        U = np.concatenate([U, U | bit, U | bit])
        S = np.concatenate([S, S, S | bit])
    rest = U ^ S
    f_next = np.full(1 << n, np.inf if min_shards > 0 else 0.0)
    f_next[0] = 0.0
    choice = np.zeros((m, 1 << n), dtype=np.int64)
    for k in range(m - 1, -1, -1):
        val = t[k, S] + f_next[rest]
        f = np.full(1 << n, np.inf)
        np.minimum.at(f, U, val)
        # argmin per U: the pair whose value equals the minimum (first one wins).
        hit = val <= f[U]
        chosen = np.full(1 << n, -1)
        idx = np.nonzero(hit)[0][::-1]
        chosen[U[idx]] = S[idx]
        choice[k] = chosen
        f_next = f
    if not np.isfinite(f_next[full]):
        return None, "infeasible without the budget; MILP diagnoses it"
    alloc = np.zeros((m, n), dtype=np.int64)
    left = full
    for k in range(m):
        s = int(choice[k, left])
        members = np.nonzero((s >> np.arange(n)) & 1)[0]
        alloc[k, members] = min_cost_fill(co, k, members, float(t[k, s]), need)
        left ^= s
    if float((alloc * co.price[None, :]).sum()) > budget * (1 + 1e-9) + 1e-9:
        return None, "the fastest split does not fit the budget; MILP trades time for price"
    return alloc, "exact subset DP"
