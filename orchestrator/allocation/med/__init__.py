"""MED: multi-task allocation minimising the summed maximum expected delay (thesis eq. 4.4).

`solve_med` is the entry point; the parts import each other in one direction only::

    model      instance schema, eq. 4.3 coefficients, objective, constraint check, MedResult
    ├── instances   thesis-shaped instances
    ├── milp        the linearised eq. 4.4 as one sparse matrix, its LP relaxation, MIP starts
    │   └── solvers     the HiGHS and Gurobi backends of that matrix
    ├── greedy      greedy start
    ├── search      exact local search
    ├── dp          exact subset DP for small fleets
    ├── colgen      column generation on the Lagrangian relaxation (a better dual method,
    │               0/1 covers where cheap) and the restricted master MILP over its columns
    └── lagrange    Lagrangian bound and backend (greedy + search + subgradient + colgen)
    solve      solve_med (backend choice "auto"), diagnose_infeasible: uses all of the above

Units: model and shard sizes in bytes, bandwidth b in bytes/s, compute c in samples/s (as in
`plexus.cost`; the thesis's eq. 4.2 writes c in shards/s, which is the case s = μ = 1),
deadlines and delays in seconds, prices per shard in the budget's currency.
"""

from __future__ import annotations

from orchestrator.allocation.med.greedy import greedy_allocation
from orchestrator.allocation.med.instances import (
    STATE_NAMES,
    heated_softmax,
    scaled_instance,
    thesis_instance,
)
from orchestrator.allocation.med.milp import (
    Milp,
    build_milp,
    start_vector,
    task_time_lower_bounds,
    timeshare_relaxation,
)
from orchestrator.allocation.med.model import (
    FAMILIES,
    Coefficients,
    MedInstance,
    MedLearner,
    MedResult,
    MedTask,
    SolverName,
    Status,
    check_allocation,
    coefficients,
    expected_delays,
    med_objective,
)
from orchestrator.allocation.med.solve import diagnose_infeasible, solve_med

__all__ = [
    "FAMILIES",
    "STATE_NAMES",
    "Coefficients",
    "MedInstance",
    "MedLearner",
    "MedResult",
    "MedTask",
    "Milp",
    "SolverName",
    "Status",
    "build_milp",
    "check_allocation",
    "coefficients",
    "diagnose_infeasible",
    "expected_delays",
    "greedy_allocation",
    "heated_softmax",
    "med_objective",
    "scaled_instance",
    "solve_med",
    "start_vector",
    "task_time_lower_bounds",
    "thesis_instance",
    "timeshare_relaxation",
]
