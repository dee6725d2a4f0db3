"""Budget-aware per-layer bit-width search (numpy + scipy only; never compiles, never imports torch or TVM).

    table = build_table(ckpt.sensitivity, levels, latency=latency_table)      # tables.py
    solution = search(table, [parse_budget("latency:1.2ms")])                 # exact MILP
    solution = search(table, budgets, fitness=kl_fitness, config=EvolutionConfig(seed=0))  # + KL refinement
"""
from __future__ import annotations

from collections.abc import Sequence

from matq_compile.search.allocation import Plan, load_plan, save_plan
from matq_compile.search.budget import Budget, parse_budget
from matq_compile.search.evolution import EvolutionConfig, Fitness, evolve
from matq_compile.search.milp import solve_problem
from matq_compile.search.problem import Problem, Solution, build_problem
from matq_compile.search.tables import LatencyTable, SearchTable, build_table, load_latency_table

__all__ = ["Budget", "EvolutionConfig", "LatencyTable", "Plan", "Problem", "SearchTable", "Solution",
           "build_problem", "build_table", "load_latency_table", "load_plan", "parse_budget", "save_plan",
           "search"]


def search(table: SearchTable, budgets: Sequence[Budget], *, ties: str | None = None,
           fitness: Fitness | None = None,
           config: EvolutionConfig | None = None) -> Solution:
    """Exact MILP answer; refined on `fitness` (EvoPress-style, seeded by the MILP) when one is given."""
    problem = build_problem(table, budgets, ties)
    solution = solve_problem(problem)
    if fitness is None or (config is not None and config.generations == 0):
        return solution
    return evolve(problem, solution.choice, fitness, config or EvolutionConfig()).solution
