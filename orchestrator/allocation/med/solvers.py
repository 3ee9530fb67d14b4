"""MILP backends for MED: Gurobi (gurobipy) and HiGHS (highspy) behind one function signature.

Both receive the same `Milp` (one scipy sparse matrix, built once in `milp.build_milp`), so
the two backends solve literally the same model. The solvers are imported lazily: importing this
module costs nothing and works where neither is installed. Run times are the solvers' own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from orchestrator.allocation.errors import SolverUnavailable
from orchestrator.allocation.stdout_guard import quiet_solver

if TYPE_CHECKING:
    from orchestrator.allocation.med.milp import Milp

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


def rel_gap(obj: float | None, bound: float | None) -> float | None:
    """|obj − bound| / |obj| (Gurobi's MIP gap); None if either is missing or infinite."""
    if obj is None or bound is None or not math.isfinite(obj) or not math.isfinite(bound):
        return None
    # Gurobi's definition: |obj − bound| / |obj|, with 0 when both are 0.
    if abs(obj) < 1e-12:
        return 0.0 if abs(bound) < 1e-12 else math.inf
    return abs(obj - bound) / abs(obj)


@quiet_solver
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

    h = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy ships no annotation here
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", float(mip_gap))
    h.setOptionValue("random_seed", int(seed))
    for key, value in (options or {}).items():
        h.setOptionValue(key, value)
    h.passModel(_highs_lp(highspy, milp))
    if start is not None:
        sol = highspy.HighsSolution()
        sol.col_value = [float(v) for v in start]
        sol.value_valid = True
        h.setSolution(sol)
    h.run()
    return _highs_result(highspy, h)


def _highs_lp(highspy: Any, milp: Milp) -> Any:
    """`milp` as a highspy.HighsLp (column-wise matrix, ±kHighsInf for missing bounds)."""
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
    return lp


def _highs_result(highspy: Any, h: Any) -> RawResult:
    """What a finished HiGHS run found, as a RawResult."""
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
    return RawResult("highs", status, values, obj, bound, rel_gap(obj, bound), runtime,
                     h.modelStatusToString(ms))


@quiet_solver
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
        v = _gurobi_constraints(GRB, model, milp)
        if start is not None:
            v.Start = start
        model.optimize()
        return _gurobi_result(gp, GRB, model, v)
    except gp.GurobiError as exc:
        if getattr(exc, "errno", None) == 10010:
            return RawResult("gurobi", "licence_limit", None, None, None, None, 0.0, str(exc))
        raise
    finally:
        env.dispose()


def _gurobi_constraints(GRB: Any, model: Any, milp: Milp) -> Any:
    """`milp`'s columns and rows added to a Gurobi model; returns the MVar of the columns."""
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
    return v


def _gurobi_result(gp: Any, GRB: Any, model: Any, v: Any) -> RawResult:
    """What a finished Gurobi run found, as a RawResult."""
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
    return RawResult("gurobi", status, values, obj, bound, rel_gap(obj, bound), runtime,
                     f"gurobi status {st}")
