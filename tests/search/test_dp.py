"""The DP cross-check agrees with the exact MILP within the rounding it applies."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile.search.budget import Budget
from matq_compile.search.dp import bucket_width, solve_dp
from matq_compile.search.milp import solve_problem, sweep_values
from matq_compile.search.problem import build_problem


@pytest.mark.parametrize("kind", ["latency", "bytes", "avg_bits"])
def test_dp_agrees_with_milp_within_rounding(make_table, kind):
    table = make_table(seed=1, n_blocks=3)
    for value in sweep_values(table, kind, 7)[1:]:
        problem = build_problem(table, [Budget(kind, float(value))])
        resolution = 2000
        dp = solve_dp(problem, resolution)
        assert problem.feasible(dp.choice)  # rounding up never breaks the budget
        exact = solve_problem(problem).objective
        assert dp.objective >= exact - 1e-12
        # DP on rounded-up costs is at least as good as the exact optimum with n_items buckets less budget
        shrunk = float(value) - problem.n_items * bucket_width(problem, resolution)
        if shrunk >= problem.cheapest()[0]:
            exact_shrunk = solve_problem(build_problem(table, [Budget(kind, shrunk)])).objective
            assert dp.objective <= exact_shrunk + 1e-12


def test_dp_equals_milp_when_costs_are_integral():
    """Integer costs on a bucket grid: the DP has no rounding loss and must match the MILP exactly."""
    from matq_compile.search.tables import LayerInfo, SearchTable

    rng = np.random.default_rng(2)
    levels = (2, 3, 4, 6, 8)
    n = 12
    layers = tuple(LayerInfo(f"l{i}", 16, 16, 16) for i in range(n))
    latency = rng.integers(1, 50, (n, 5)).astype(np.float64)
    table = SearchTable(layers, levels, rng.uniform(0, 1, (n, 5)), np.ones((n, 5)), latency)
    limit = float(latency.min(axis=1).sum() + 100)
    problem = build_problem(table, [Budget("latency", limit)], ties="none")
    dp = solve_dp(problem, resolution=int(limit))
    assert dp.objective == pytest.approx(solve_problem(problem).objective, rel=1e-12)


def test_dp_refuses_infeasible_and_multiple_budgets(make_table):
    table = make_table(seed=2, n_blocks=1)
    with pytest.raises(ValueError, match="smallest feasible avg_bits is 2"):
        solve_dp(build_problem(table, [Budget("avg_bits", 1.5)]))
    with pytest.raises(ValueError, match="one budget"):
        solve_dp(build_problem(table, [Budget("avg_bits", 4), Budget("bytes", 1e9)]))
