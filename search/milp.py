"""Exact multiple-choice knapsack with scipy.optimize.milp (HiGHS): one-hot rows, one row per budget.

Costs are divided by their budget so every budget row reads <= 1, and the objective is scaled to O(1e3) so
HiGHS's absolute MIP gap (1e-6) is negligible; the relative gap is 0, so answers are optimal, not near-optimal.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from matq_compile.search.budget import Budget
from matq_compile.search.problem import FEASIBILITY_RTOL, Problem, Solution, build_problem, infeasible_message
from matq_compile.search.tables import SearchTable

log = logging.getLogger(__name__)
_OBJECTIVE_SCALE = 1e3
_TIGHTEN = (0.0, 1e-9, 1e-7, 1e-5)  # relative margins tried if HiGHS's tolerance lets a row exceed its budget


def _one_hot_rows(n_items: int, n_opts: int) -> csr_array:
    rows = np.repeat(np.arange(n_items), n_opts)
    cols = np.arange(n_items * n_opts)
    return csr_array((np.ones(n_items * n_opts), (rows, cols)), shape=(n_items, n_items * n_opts))


def _run(c: np.ndarray, problem: Problem, limits: np.ndarray, time_limit: float | None) -> np.ndarray | None:
    """Minimise c.x over one-hot choices within `limits`; None when infeasible."""
    g, b = problem.proxy.shape
    ub = problem.allowed.reshape(-1).astype(np.float64)
    budget_rows = (problem.costs.reshape(len(limits), -1) / problem.limits[:, None])
    cons = [LinearConstraint(_one_hot_rows(g, b), 1.0, 1.0),
            LinearConstraint(budget_rows, -np.inf, limits / problem.limits)]
    options = {"disp": False, "mip_rel_gap": 0.0, "presolve": True}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    res = milp(c, integrality=np.ones_like(c), bounds=Bounds(np.zeros_like(ub), ub), constraints=cons,
               options=options)
    if res.status == 2:
        return None
    if res.x is None:
        raise RuntimeError(f"HiGHS found no solution: {res.message}")
    if res.status != 0:
        log.warning("HiGHS stopped early (%s); the answer may not be optimal", res.message)
    return np.asarray(res.x).reshape(g, b).argmax(axis=1)


def smallest_feasible(problem: Problem, time_limit: float | None = None) -> np.ndarray:
    """[K] per budget: the least total reachable while every other budget holds (cheapest level if alone)."""
    out = problem.cheapest()
    if len(problem.budgets) == 1:
        return out
    for k in range(len(problem.budgets)):
        others = problem.limits.copy()
        others[k] = np.inf
        c = (problem.costs[k] / problem.limits[k]).reshape(-1)
        choice = _run(c * _OBJECTIVE_SCALE, problem, others, time_limit)
        if choice is not None:
            out[k] = problem.totals(choice)[k]
    return out


def solve_problem(problem: Problem, time_limit: float | None = None) -> Solution:
    """Least summed proxy within every budget; infeasible budgets raise ValueError with the smallest value."""
    low = problem.cheapest()
    if np.any(low > problem.limits * (1 + FEASIBILITY_RTOL)):
        raise ValueError(infeasible_message(problem, low))
    scale = np.abs(problem.proxy).max()
    c = problem.proxy.reshape(-1) * (_OBJECTIVE_SCALE / scale if scale > 0 else 1.0)
    for margin in _TIGHTEN:
        choice = _run(c, problem, problem.limits * (1 - margin), time_limit)
        if choice is None:
            break
        if problem.feasible(choice):
            return Solution(problem, choice, "milp")
    low = smallest_feasible(problem, time_limit)
    msg = infeasible_message(problem, low) or "the budgets cannot all hold at once"
    raise ValueError(f"{msg} (jointly: {', '.join(str(b) for b in problem.budgets)})")


def solve(table: SearchTable, budgets: Sequence[Budget], ties: str | None = None,
          time_limit: float | None = None) -> Solution:
    return solve_problem(build_problem(table, budgets, ties), time_limit)


def sweep_values(table: SearchTable, kind: str, n: int, ties: str | None = None) -> np.ndarray:
    """n budget values evenly spaced from the cheapest to the dearest reachable total of one kind."""
    if n < 2:
        raise ValueError(f"a sweep needs at least 2 budgets, got {n}")
    probe = build_problem(table, [Budget(kind, 1.0)], ties)
    lo = float(probe.cheapest()[0])
    hi = float(np.where(probe.allowed, probe.costs[0], -np.inf).max(axis=1).sum())
    return np.linspace(lo, hi, n)


def sweep(table: SearchTable, kind: str, values: Sequence[float], ties: str | None = None,
          extra: Sequence[Budget] = ()) -> list[Solution]:
    """Solve once per budget value of one kind (other budgets fixed): the proxy Pareto front."""
    return [solve(table, [Budget(kind, float(v)), *extra], ties) for v in values]
