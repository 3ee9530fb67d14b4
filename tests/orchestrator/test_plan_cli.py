"""`plexus plan med` run as a real subprocess: JSON out, exit codes, validation messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.allocation.med import thesis_instance

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "med_thesis_instance.json"


# Only the `plan` group, in its own process: the full `plexus` root also imports the other
# packages' command modules, which has nothing to do with what these tests check.
_PLAN_ONLY = (
    "import typer; from orchestrator.cli.plan import register; "
    "app = typer.Typer(); register(app); app()"
)


def run_plan(*args: str, root: bool = False) -> subprocess.CompletedProcess[str]:
    head = ["-m", "plexus.cli"] if root else ["-c", _PLAN_ONLY]
    return subprocess.run(
        [sys.executable, *head, "plan", "med", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_plan_med_prints_allocation_and_report() -> None:
    proc = run_plan(str(EXAMPLE), "--solver", "highs", "--time-limit", "0.3", root=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["method"] == "med" and out["backend"] == "highs"
    assert out["status"] in ("optimal", "feasible")
    inst = json.loads(EXAMPLE.read_text())
    for task in inst["tasks"]:
        assert sum(out["allocation"][task["name"]].values()) == task["shards"]
    assert set(out["assignment"]) == {w["name"] for w in inst["learners"]}


def test_example_file_is_the_thesis_default_instance() -> None:
    assert json.loads(EXAMPLE.read_text()) == json.loads(thesis_instance(seed=0).model_dump_json())


def test_plan_equal_method(tmp_path: Path) -> None:
    proc = run_plan(str(EXAMPLE), "--method", "equal")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["method"] == "equal"


def test_invalid_instance_names_the_field(tmp_path: Path) -> None:
    raw = json.loads(EXAMPLE.read_text())
    raw["tasks"][1]["shards"] = -3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    proc = run_plan(str(bad))
    assert proc.returncode == 2
    assert "tasks.1.shards" in proc.stderr


def test_infeasible_instance_exits_1_with_family(tmp_path: Path) -> None:
    raw = json.loads(EXAMPLE.read_text())
    raw["budget"] = 5.0
    path = tmp_path / "poor.json"
    path.write_text(json.dumps(raw))
    proc = run_plan(str(path), "--solver", "highs", "--time-limit", "2")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "infeasible" and out["infeasible_families"] == ["budget"]


def test_bad_json_and_bad_option(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    proc = run_plan(str(path))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr
    proc = run_plan(str(EXAMPLE), "--solver", "cplex")
    assert proc.returncode == 2 and "--solver" in proc.stderr


def test_mmtt_ideal_takes_the_current_states() -> None:
    proc = run_plan(str(EXAMPLE), "--method", "mmtt-ideal")
    assert proc.returncode == 2 and "--states" in proc.stderr
    proc = run_plan(str(EXAMPLE), "--method", "mmtt-ideal", "--states", "0,1")
    assert proc.returncode == 2 and "one state index per learner" in proc.stderr
    proc = run_plan(str(EXAMPLE), "--method", "mmtt-ideal", "--states", ",".join(["1"] * 10))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["method"] == "mmtt-ideal"


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# Every backend `plan med` offers, with what it needs; "auto" and "lagrange" may call HiGHS
# or Gurobi underneath, so their stdout is checked too.
_BACKENDS = [
    ("auto", None),
    ("dp", None),
    ("lagrange", None),
    ("highs", "highspy"),
    ("gurobi", "gurobipy"),
]


def test_every_installed_backend_prints_exactly_one_json_document() -> None:
    """No solver library writes to stdout (highspy ≥ 1.16 prints a banner from C)."""
    tried = []
    for solver, module in _BACKENDS:
        if module is not None and not _installed(module):
            continue
        tried.append(solver)
        proc = run_plan(str(EXAMPLE), "--solver", solver, "--time-limit", "0.5", root=True)
        assert proc.returncode in (0, 1), (solver, proc.stderr)
        doc, end = json.JSONDecoder().raw_decode(proc.stdout)
        assert proc.stdout[end:].strip() == "", (solver, proc.stdout[end:][:200])
        assert proc.stdout.lstrip().startswith("{"), (solver, proc.stdout[:200])
        assert doc["method"] == "med"
    # The dev extra installs both MILP backends: they must really have been exercised here.
    assert {"highs", "gurobi"} <= set(tried), tried


def test_stdout_guard_sends_c_level_writes_to_stderr() -> None:
    code = (
        "import os, threading\n"
        "from orchestrator.allocation.stdout_guard import solver_stdout_to_stderr\n"
        "print('before', flush=True)\n"
        "def noisy():\n"
        "    with solver_stdout_to_stderr():\n"
        "        os.write(1, b'banner\\n')\n"
        "        print('python-level')\n"
        "ts = [threading.Thread(target=noisy) for _ in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print('after', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.split() == ["before", "after"]
    assert proc.stderr.count("banner") == 4 and proc.stderr.count("python-level") == 4


# Issue 12, finding 11: Infinity was "infeasible, deadline" (with a RuntimeWarning), a Gurobi
# traceback (exit 1) or blamed on task_size; NaN was "Input should be greater than 0".
@pytest.mark.parametrize(("where", "value"), [
    (("tasks", 0, "deadline_s"), "Infinity"), (("tasks", 1, "model_bytes"), "Infinity"),
    (("tasks", 2, "shard_bytes"), "NaN"), (("budget",), "Infinity"),
    (("learners", 3, "price"), "-Infinity"), (("learners", 0, "bandwidth", 1), "NaN"),
    (("tasks", 0, "deadline_s"), "1e999"),
])
@pytest.mark.parametrize("solver", ["auto", "highs"])
def test_non_finite_numbers_are_exit_2_naming_the_field(
        tmp_path: Path, where: tuple[str | int, ...], value: str, solver: str) -> None:
    raw = json.loads(EXAMPLE.read_text())
    node = raw
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = "@@"
    path = tmp_path / "nonfinite.json"
    path.write_text(json.dumps(raw).replace('"@@"', value))
    proc = run_plan(str(path), "--solver", solver, "--time-limit", "2")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    field = ".".join(str(k) for k in where)
    assert field in proc.stderr and "finite" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr
    assert proc.stdout == ""


def test_solver_lagrange_hands_an_instance_it_cannot_serve_to_the_milp(tmp_path: Path) -> None:
    # As docs/med.md says (and test_med_lagrange.py checks on the library): forced, the
    # Lagrangian backend answers alone when its greedy start serves the instance; otherwise
    # the MILP proves infeasibility, named in `backend` and `notes`, never silently.
    raw = json.loads(EXAMPLE.read_text())
    raw["budget"] = 5.0
    path = tmp_path / "poor.json"
    path.write_text(json.dumps(raw))
    proc = run_plan(str(path), "--solver", "lagrange", "--time-limit", "2")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "infeasible" and out["infeasible_families"] == ["budget"]
    assert out["backend"] in ("gurobi", "highs")
    assert "greedy start found no feasible allocation; the MILP decides" in out["notes"]
    feasible = run_plan(str(EXAMPLE), "--solver", "lagrange", "--time-limit", "2")
    assert feasible.returncode == 0, feasible.stderr
    assert json.loads(feasible.stdout)["backend"] == "lagrange"
