"""MED's public entry: `solve_med` chooses a backend (auto), runs it and reports; and
`diagnose_infeasible` names the constraint families an infeasible instance breaks.

Sans-IO: an instance goes in, an allocation and a solver report come out; no file, socket or
clock is touched here (the solver reports its own run time). The ILP of thesis eq. 4.4 is
linearised as written out in docs/algorithms.md ("MED"); the two MILP backends (Gurobi,
HiGHS) live in `med.solvers` and receive the same sparse matrix.
"""

from __future__ import annotations

import numpy as np

from orchestrator.allocation.errors import SolverUnavailable
from orchestrator.allocation.med import dp, solvers
from orchestrator.allocation.med.greedy import greedy_allocation
from orchestrator.allocation.med.lagrange import solve_lagrange
from orchestrator.allocation.med.milp import Milp, build_milp, start_vector, timeshare_relaxation
from orchestrator.allocation.med.model import (
    FAMILIES,
    MedInstance,
    MedResult,
    SolverName,
    coefficients,
    expected_delays,
    med_objective,
)
from orchestrator.allocation.med.solvers import RawResult

# ---------------------------------------------------------------- solving and reporting


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

    if solver == "highs":
        return solvers.solve_highs(milp, time_limit_s=time_limit_s, mip_gap=mip_gap, seed=seed,
                                   start=start)
    if solver == "gurobi":
        if not solvers.gurobi_importable():
            raise SolverUnavailable(
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


def _solve_dp(
    inst: MedInstance, solver: SolverName, *, enforce_deadlines: bool, method: str,
    notes: list[str],
) -> MedResult | None:
    """The exact subset DP's answer when the fleet is small and it fits the budget."""
    m, n = len(inst.tasks), len(inst.learners)
    if dp.dp_applicable(n, m):
        co = coefficients(inst, enforce_deadlines=enforce_deadlines)
        alloc, why, secs = dp.solve_dp(co, inst.min_shards, inst.budget)
        if alloc is not None:
            obj = med_objective(inst, alloc)
            return MedResult(method, "optimal", "dp", obj, obj, 0.0, secs, alloc,
                             [float(x) for x in expected_delays(inst, alloc).max(axis=1)],
                             0, 0, notes=notes)
        _note(notes, f"subset DP did not decide ({why})")
    elif solver == "dp":
        _note(notes, f"subset DP not applicable to {n} learners x {m} tasks; used the MILP")
    return None


def _solve_lagrange_first(
    inst: MedInstance, solver: SolverName, *, time_limit_s: float, mip_gap: float,
    gurobi_size_limit: int | None, enforce_deadlines: bool, method: str, notes: list[str],
) -> MedResult | None:
    """The Lagrangian backend, with half the time when Gurobi may continue after it."""
    # Beyond the DP, auto starts with the Lagrangian backend (lagrange.py): its bound
    # keeps the shard integrality the MILP's LP relaxation loses.
    # When Gurobi may continue afterwards (it imports and a model of 2·m·n + m columns can
    # fit its licence), the Lagrangian backend gets half the time.
    m, n = len(inst.tasks), len(inst.learners)
    may_follow = solver == "auto" and solvers.gurobi_importable() and (
        gurobi_size_limit is None or 2 * m * n + m <= gurobi_size_limit)
    share = 0.5 if may_follow else 1.0
    lagrange = solve_lagrange(inst, time_limit_s=time_limit_s * share, mip_gap=mip_gap,
                              enforce_deadlines=enforce_deadlines, method=method,
                              notes=notes)
    if lagrange is None:
        _note(notes, "greedy start found no feasible allocation; the MILP decides")
    return lagrange


def _keep_start(raw: RawResult, start: np.ndarray, milp: Milp, notes: list[str]) -> None:
    """The solver found nothing better in time (or did not take the start): keep the
    greedy allocation, which is feasible, and say so."""
    _note(notes, f"{raw.backend} returned no solution ({raw.message}); greedy start kept")
    raw.values, raw.status = start, "feasible"
    raw.objective = float(start[2 * milp.pairs.shape[0]:].sum())
    raw.gap = None if raw.bound is None else abs(raw.objective - raw.bound) / raw.objective


def _tighten_with_timeshare_lp(
    raw: RawResult, milp: Milp, time_limit_s: float, mip_gap: float, notes: list[str]
) -> None:
    """The solver stopped early, often before its root LP finished on large models: the
    small time-sharing LP still gives a valid lower bound (never a worse one is used)."""
    # Interior point without crossover: only the optimal value is needed (25 % faster
    # than simplex at 1000 x 20).
    lp = solvers.solve_highs(timeshare_relaxation(milp), time_limit_s=time_limit_s,
                             mip_gap=mip_gap,
                             options={"solver": "ipm", "run_crossover": "off"})
    if lp.status == "optimal" and lp.objective is not None and (
        raw.bound is None or lp.objective > raw.bound
    ):
        raw.bound = lp.objective
        raw.gap = solvers.rel_gap(raw.objective, raw.bound)
        _note(notes, f"bound from the time-sharing LP relaxation ({lp.solve_time_s:.3g}s)")


def _merge_lagrange(raw: RawResult, lagrange: MedResult, mip_gap: float,
                    notes: list[str]) -> None:
    """Fold the Lagrangian run that came first into the MILP's result."""
    if raw.objective is not None and lagrange.bound is not None and (
        raw.bound is None or lagrange.bound > raw.bound
    ):
        # Both bounds are valid for the same problem: report the better one.
        raw.bound = min(lagrange.bound, raw.objective)
        raw.gap = solvers.rel_gap(raw.objective, raw.bound)
        if raw.gap is not None and raw.gap <= mip_gap:
            raw.status = "optimal"
        _note(notes, "bound from the Lagrangian relaxation")
    raw.solve_time_s += lagrange.solve_time_s
    raw.backend = f"lagrange+{raw.backend}"


def _med_result(
    inst: MedInstance, raw: RawResult, milp: Milp, *, method: str, solver: SolverName,
    relax: frozenset[str], diagnose: bool, time_limit_s: float, notes: list[str],
    kw: dict[str, object],
) -> MedResult:
    """The MILP's raw answer as a MedResult: allocation, or why there is none."""
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


def _solve_milp(
    inst: MedInstance, solver: SolverName, lagrange: MedResult | None, *,
    relax: frozenset[str], time_limit_s: float, mip_gap: float, gurobi_size_limit: int | None,
    enforce_deadlines: bool, diagnose: bool, warm_start: bool, relaxation_bound: bool,
    seed: int, method: str, notes: list[str],
) -> MedResult:
    """MED as a MILP (Gurobi or HiGHS), warm-started from greedy or the Lagrangian answer."""
    milp = build_milp(inst, relax=relax)
    kw: dict[str, object] = dict(time_limit_s=time_limit_s, mip_gap=mip_gap,
                                 gurobi_size_limit=gurobi_size_limit, seed=seed)
    if lagrange is not None:
        greedy = lagrange.allocation
        # auto after an unproven Lagrangian answer: the MILP runs only where Gurobi takes it
        # (HiGHS does not improve the greedy start from 50 x 5 up, docs/results.md).
        too_big = solvers.licence_check(milp, gurobi_size_limit)
        if not solvers.gurobi_importable() or too_big is not None:
            _note(notes, "MILP not run after the Lagrangian backend: " +
                  (too_big or "gurobipy does not import"))
            return lagrange
        kw["time_limit_s"] = max(0.1, time_limit_s - lagrange.solve_time_s)
    else:
        greedy = (greedy_allocation(inst, enforce_deadlines=enforce_deadlines)
                  if warm_start else None)
    start = start_vector(milp, inst, greedy) if greedy is not None else None
    raw = _run(milp, solver, notes=notes, start=start, **kw)  # type: ignore[arg-type]
    if raw.values is None and start is not None and raw.status != "licence_limit":
        _keep_start(raw, start, milp, notes)
    if raw.status == "feasible" and relaxation_bound and (raw.gap is None or raw.gap > mip_gap):
        _tighten_with_timeshare_lp(raw, milp, time_limit_s, mip_gap, notes)
    if lagrange is not None:
        _merge_lagrange(raw, lagrange, mip_gap, notes)
    return _med_result(inst, raw, milp, method=method, solver=solver, relax=relax,
                       diagnose=diagnose, time_limit_s=time_limit_s, notes=notes, kw=kw)


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
    + local search with a Lagrangian lower bound, `med.lagrange`), or "auto" (the DP when the
    fleet is small and its answer fits the budget, else "lagrange"; if that is not proven within
    `mip_gap`, Gurobi continues from its allocation when the model fits `gurobi_size_limit`,
    and the better of the two bounds is reported; HiGHS only when no greedy start exists).
    `time_limit_s` seconds per solve, `mip_gap` relative. `enforce_deadlines=False` drops 4.4b
    (learners then halt at T_i).
    An infeasible instance comes back with status "infeasible" and `infeasible_families`.
    `warm_start` hands the solver `greedy_allocation` as its first incumbent;
    `relaxation_bound` tightens the reported bound with `timeshare_relaxation` when the solver
    stops before `mip_gap` (its run time is not included in `solve_time_s`).
    """
    notes: list[str] = []
    if not enforce_deadlines:
        notes.append("deadlines (4.4b) not enforced: learners halt at T_i")
    if solver in ("auto", "dp"):
        done = _solve_dp(inst, solver, enforce_deadlines=enforce_deadlines, method=method,
                         notes=notes)
        if done is not None:
            return done
        solver = "auto"
    lagrange: MedResult | None = None
    if solver == "lagrange" or (solver == "auto" and warm_start):
        lagrange = _solve_lagrange_first(
            inst, solver, time_limit_s=time_limit_s, mip_gap=mip_gap,
            gurobi_size_limit=gurobi_size_limit, enforce_deadlines=enforce_deadlines,
            method=method, notes=notes)
        if lagrange is not None and (solver == "lagrange" or lagrange.status == "optimal"):
            return lagrange
        solver = "auto"
    return _solve_milp(
        inst, solver, lagrange,
        relax=frozenset() if enforce_deadlines else frozenset({"deadline"}),
        time_limit_s=time_limit_s, mip_gap=mip_gap, gurobi_size_limit=gurobi_size_limit,
        enforce_deadlines=enforce_deadlines, diagnose=diagnose, warm_start=warm_start,
        relaxation_bound=relaxation_bound, seed=seed, method=method, notes=notes)


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
    kw: dict[str, object] = dict(time_limit_s=time_limit_s, mip_gap=mip_gap,
                                 gurobi_size_limit=gurobi_size_limit, seed=seed)
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
    details = [
        "infeasible because of " + " and ".join(FAMILIES[x] for x in f.split("+"))
        for f in found
    ]
    if "budget" in found:
        details += _budget_detail(inst, solver, relax, notes, kw)
    if "deadline" in found:
        details += _deadline_detail(inst, solver, relax, notes, kw)
    if not found:
        details.append("no single family or pair of families explains the infeasibility")
    return found, details


def _budget_detail(inst: MedInstance, solver: SolverName, relax: frozenset[str],
                   notes: list[str], kw: dict[str, object]) -> list[str]:
    """What the cheapest allocation meeting the other constraints costs (4.4d)."""
    raw = _run(build_milp(inst, relax=relax | {"budget"}, objective="cost"), solver,
               notes=notes, **kw)  # type: ignore[arg-type]
    if raw.objective is None:
        return []
    return [f"4.4d: the cheapest allocation meeting the other constraints costs "
            f"{raw.objective:.6g} > budget {inst.budget:.6g}"]


def _deadline_detail(inst: MedInstance, solver: SolverName, relax: frozenset[str],
                     notes: list[str], kw: dict[str, object]) -> list[str]:
    """Which tasks miss their deadline at the min-delay allocation without deadlines (4.4b)."""
    raw = _run(build_milp(inst, relax=relax | {"deadline"}), solver, notes=notes,
               **kw)  # type: ignore[arg-type]
    if raw.values is None:
        return []
    m_, P = len(inst.tasks), (raw.values.size - len(inst.tasks)) // 2
    t = raw.values[2 * P: 2 * P + m_]
    late = [f"{task.name} {t[i]:.4g}s > {task.deadline_s:.4g}s"
            for i, task in enumerate(inst.tasks) if t[i] > task.deadline_s * (1 + 1e-9)]
    if not late:
        return []
    return ["4.4b: at the min-delay allocation without deadlines, " + ", ".join(late)]
