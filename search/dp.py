"""Dynamic-programming cross-check of the MILP for one budget, over costs rounded up to integer buckets.

Rounding every cost up keeps every DP answer truly feasible; the DP optimum therefore lies between the exact
optimum at the budget and the exact optimum at the budget minus (number of items x bucket width).
"""
from __future__ import annotations

import numpy as np

from matq_compile.search.problem import FEASIBILITY_RTOL, Problem, Solution, infeasible_message


def bucket_width(problem: Problem, resolution: int) -> float:
    return float(problem.limits[0]) / resolution


def solve_dp(problem: Problem, resolution: int = 100_000) -> Solution:
    """Exact multiple-choice knapsack on integer weights ceil(cost / (budget / resolution))."""
    if len(problem.budgets) != 1:
        raise ValueError(f"the DP handles one budget, got {len(problem.budgets)}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    low = problem.cheapest()
    if low[0] > problem.limits[0] * (1 + FEASIBILITY_RTOL):
        raise ValueError(infeasible_message(problem, low))
    unit = bucket_width(problem, resolution)
    weights = np.where(problem.allowed, np.ceil(problem.costs[0] / unit), resolution + 1).astype(np.int64)
    best = np.zeros(resolution + 1)  # best[c]: least proxy of the items so far with total weight <= c
    arg = np.zeros((problem.n_items, resolution + 1), dtype=np.int16)
    for g in range(problem.n_items):
        new = np.full(resolution + 1, np.inf)
        for b in np.flatnonzero(problem.allowed[g]):
            w = weights[g, b]
            if w > resolution:
                continue
            cand = np.full(resolution + 1, np.inf)
            cand[w:] = best[: resolution + 1 - w] + problem.proxy[g, b]
            better = cand < new
            new[better] = cand[better]
            arg[g, better] = b
        best = new
    if not np.isfinite(best[resolution]):
        raise ValueError(f"budget {problem.budgets[0]} is infeasible after rounding costs up to "
                         f"{resolution} buckets; raise the resolution or the budget")
    choice = np.empty(problem.n_items, dtype=np.int64)
    c = resolution
    for g in range(problem.n_items - 1, -1, -1):
        choice[g] = arg[g, c]
        c -= weights[g, choice[g]]
    return Solution(problem, choice, "dp")
