"""MILP backends for MED: Gurobi (gurobipy) and HiGHS (highspy) behind one function signature.

Both receive the same `Milp` (one scipy sparse matrix, built once in `med.build_milp`), so the
two backends solve literally the same model. The solvers are imported lazily: importing this
module costs nothing and works where neither is installed. Run times are the solvers' own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from orchestrator.errors import ServiceError

if TYPE_CHECKING:
    from orchestrator.allocation.med import Milp

# The licence that ships inside the gurobipy wheel stops at 2000 variables and 2000 linear
# constraints (Gurobi error 10010 "Model too large for size-limited license").
GUROBI_SIZE_LIMIT = 2000

RawStatus = Literal["optimal", "feasible", "infeasible", "no_solution", "licence_limit"]


@dataclass
class RawResult:
    """What one backend returned for one MILP: values are per column, seconds are the solver's."""

    backend: str
    status: RawStatus
    values: np.ndarray | None
    objective: float | None
    bound: float | None
    gap: float | None
    solve_time_s: float
    message: str = ""


class SolverUnavailable(ServiceError):
    """The requested solver cannot be imported; install it or ask for another backend.

    Part of the orchestrator's hierarchy (ServiceError → SolverUnavailable, HTTP 500,
    code "solver_unavailable")."""

    code = "solver_unavailable"


def gurobi_importable() -> bool:
    """Whether `import gurobipy` succeeds here."""
    try:
        import gurobipy  # noqa: F401
    except ImportError:
        return False
    return True


def licence_check(milp: Milp, size_limit: int | None = GUROBI_SIZE_LIMIT) -> str | None:
    """None if the model fits the Gurobi size limit, else a sentence saying by how much not."""
    if size_limit is None:
        return None
    if milp.num_vars > size_limit or milp.num_rows > size_limit:
        return (
            f"model has {milp.num_vars} variables and {milp.num_rows} constraints; the "
            f"size-limited Gurobi licence allows {size_limit} of each (use HiGHS, or a full "
            "licence with gurobi_size_limit=None)"
        )
    return None


def _rel_gap(obj: float | None, bound: float | None) -> float | None:
    if obj is None or bound is None or not math.isfinite(obj) or not math.isfinite(bound):
        return None
    # Gurobi's definition: |obj − bound| / |obj|, with 0 when both are 0.
    if abs(obj) < 1e-12:
        return 0.0 if abs(bound) < 1e-12 else math.inf
    return abs(obj - bound) / abs(obj)


def solve_highs(
    milp: Milp,
    *,
    time_limit_s: float,
    mip_gap: float,
    start: np.ndarray | None = None,
    seed: int = 0,
    options: dict[str, str | float | int | bool] | None = None,
) -> RawResult:
    """Solve with HiGHS through highspy's low-level model (CSC arrays, no per-row Python calls).

    `options` are passed to HiGHS as they are (e.g. {"solver": "ipm"} for a pure LP)."""
    try:
        import highspy
    except ImportError as exc:
        raise SolverUnavailable("highspy is not installed: pip install highspy") from exc

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", float(mip_gap))
    h.setOptionValue("random_seed", int(seed))
    for key, value in (options or {}).items():
        h.setOptionValue(key, value)
    inf = highspy.kHighsInf
    A = milp.A.tocsc()  # type: ignore[attr-defined]
    lp = highspy.HighsLp()
    lp.num_col_ = milp.num_vars
    lp.num_row_ = milp.num_rows
    lp.col_cost_ = milp.cost
    lp.col_lower_ = milp.col_lo
    lp.col_upper_ = np.where(np.isfinite(milp.col_hi), milp.col_hi, inf)
    lp.row_lower_ = np.where(np.isfinite(milp.row_lo), milp.row_lo, -inf)
    lp.row_upper_ = np.where(np.isfinite(milp.row_hi), milp.row_hi, inf)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr
    lp.a_matrix_.index_ = A.indices
    lp.a_matrix_.value_ = A.data
    lp.integrality_ = [
        highspy.HighsVarType.kInteger if f else highspy.HighsVarType.kContinuous
        for f in milp.integer
    ]
    h.passModel(lp)
    if start is not None:
        sol = highspy.HighsSolution()
        sol.col_value = [float(v) for v in start]
        sol.value_valid = True
        h.setSolution(sol)
    h.run()
    ms = h.getModelStatus()
    info = h.getInfo()
    runtime = float(h.getRunTime())
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    values = np.asarray(h.getSolution().col_value, dtype=float) if has_sol else None
    obj = float(info.objective_function_value) if has_sol else None
    bound = float(info.mip_dual_bound) if math.isfinite(info.mip_dual_bound) else None
    S = highspy.HighsModelStatus
    if ms == S.kOptimal:
        status: RawStatus = "optimal"
    elif ms in (S.kInfeasible, S.kUnboundedOrInfeasible):
        status, values, obj = "infeasible", None, None
    elif has_sol:
        status = "feasible"
    else:
        status = "no_solution"
    return RawResult("highs", status, values, obj, bound, _rel_gap(obj, bound), runtime,
                     h.modelStatusToString(ms))


def solve_gurobi(
    milp: Milp,
    *,
    time_limit_s: float,
    mip_gap: float,
    start: np.ndarray | None = None,
    seed: int = 0,
    size_limit: int | None = GUROBI_SIZE_LIMIT,
) -> RawResult:
    """Solve with Gurobi's matrix API; refuses (status licence_limit) a model over `size_limit`."""
    try:
        import gurobipy as gp
        from gurobipy import GRB
    except ImportError as exc:
        raise SolverUnavailable("gurobipy is not installed: pip install gurobipy") from exc

    too_big = licence_check(milp, size_limit)
    if too_big is not None:
        return RawResult("gurobi", "licence_limit", None, None, None, None, 0.0, too_big)
    env = gp.Env(empty=True)
    env.setParam("OutputFlag", 0)
    env.start()
    try:
        model = gp.Model(env=env)
        model.Params.TimeLimit = float(time_limit_s)
        model.Params.MIPGap = float(mip_gap)
        model.Params.Seed = int(seed)
        vtype = np.where(milp.integer, GRB.INTEGER, GRB.CONTINUOUS)
        ub = np.where(np.isfinite(milp.col_hi), milp.col_hi, GRB.INFINITY)
        v = model.addMVar(milp.num_vars, lb=milp.col_lo, ub=ub, vtype=vtype, obj=milp.cost)
        A = milp.A.tocsr()  # type: ignore[attr-defined]
        eq = milp.row_lo == milp.row_hi
        le = ~eq & np.isfinite(milp.row_hi)
        ge = ~eq & np.isfinite(milp.row_lo)
        for mask, sense, rhs in ((eq, "=", milp.row_hi), (le, "<", milp.row_hi),
                                 (ge, ">", milp.row_lo)):
            if mask.any():
                model.addMConstr(A[mask], v, sense, rhs[mask])
        if start is not None:
            v.Start = start
        model.optimize()
        runtime = float(model.Runtime)
        st = model.Status
        has_sol = model.SolCount > 0
        values = np.asarray(v.X, dtype=float) if has_sol else None
        obj = float(model.ObjVal) if has_sol else None
        bound: float | None = None
        if st not in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):
            try:
                bound = float(model.ObjBound)
            except gp.GurobiError:
                bound = None
        if st == GRB.OPTIMAL:
            status: RawStatus = "optimal"
        elif st in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):
            status, values, obj = "infeasible", None, None
        elif has_sol:
            status = "feasible"
        else:
            status = "no_solution"
        return RawResult("gurobi", status, values, obj, bound, _rel_gap(obj, bound), runtime,
                         f"gurobi status {st}")
    except gp.GurobiError as exc:
        if getattr(exc, "errno", None) == 10010:
            return RawResult("gurobi", "licence_limit", None, None, None, None, 0.0, str(exc))
        raise
    finally:
        env.dispose()
