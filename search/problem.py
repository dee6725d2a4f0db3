"""The multiple-choice knapsack every solver works on: tie groups as items, levels as options, budgets as rows.

Layers that must share a bit-width (the members of a fused kernel unit: q/k/v of a block, gate/up, as
kernel_units.py decides) are merged into one item whose proxy and costs are the sums over its members, so a tie
can never be broken by any solver.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from matq_compile.search.budget import Budget, choice_of, cost_matrix
from matq_compile.kernel_units import kernel_units
from matq_compile.search.tables import TIE_RULES, LayerInfo, SearchTable, slices_at
# Relative slack when checking a solver's answer against a budget (float sums of many small costs).
FEASIBILITY_RTOL = 1e-9


def tie_groups(layers: Sequence[LayerInfo], rule: str = "fused") -> tuple[tuple[int, ...], ...]:
    """Indices of layers that share a bit-width, in first-appearance order; singletons for untied layers.
    "fused": the members of each sibling set the compiler fuses when they share a width (kernel_units)."""
    if rule not in TIE_RULES:
        raise ValueError(f"unknown tie rule {rule!r}; known: {', '.join(TIE_RULES)}")
    if rule == "none":
        return tuple((i,) for i in range(len(layers)))
    index = {la.name: i for i, la in enumerate(layers)}
    return tuple(tuple(index[m] for m in u.members) for u in kernel_units(slices_at(layers, 8), True))


@dataclass(frozen=True)
class Problem:
    """Items (tie groups) x options (levels); per-budget cost tensors; option mask for unmeasured levels."""

    table: SearchTable
    groups: tuple[tuple[int, ...], ...]
    budgets: tuple[Budget, ...]
    proxy: np.ndarray  # [G, B]
    costs: np.ndarray  # [K, G, B]
    allowed: np.ndarray  # [G, B] bool

    @property
    def limits(self) -> np.ndarray:
        return np.array([b.value for b in self.budgets], dtype=np.float64)

    @property
    def n_items(self) -> int:
        return len(self.groups)

    def totals(self, choice: np.ndarray) -> np.ndarray:
        """[K] summed cost of an item-level choice for each budget."""
        idx = np.arange(self.n_items)
        return self.costs[:, idx, choice].sum(axis=1)

    def objective(self, choice: np.ndarray) -> float:
        return float(self.proxy[np.arange(self.n_items), choice].sum())

    def feasible(self, choice: np.ndarray) -> bool:
        ok = bool(self.allowed[np.arange(self.n_items), choice].all())
        return ok and bool(np.all(self.totals(choice) <= self.limits * (1 + FEASIBILITY_RTOL)))

    def expand(self, choice: np.ndarray) -> np.ndarray:
        """Item choice -> per-layer level index."""
        out = np.empty(len(self.table.layers), dtype=np.int64)
        for g, members in enumerate(self.groups):
            out[list(members)] = choice[g]
        return out

    def allocation(self, choice: np.ndarray) -> dict[str, int]:
        levels, names = self.table.levels, self.table.names
        return {names[i]: levels[c] for i, c in enumerate(self.expand(choice))}

    def item_choice(self, allocation: Mapping[str, int]) -> np.ndarray:
        """{layer: bits} -> item choice; a broken tie is an error."""
        per_layer = choice_of(self.table, allocation)
        out = np.empty(self.n_items, dtype=np.int64)
        for g, members in enumerate(self.groups):
            vals = set(per_layer[list(members)].tolist())
            if len(vals) != 1:
                names = [self.table.names[i] for i in members]
                raise ValueError(f"tied layers {names} have different bit-widths in the allocation")
            out[g] = vals.pop()
        return out

    def cheapest(self) -> np.ndarray:
        """[K] smallest reachable total per budget, each on its own (every item at its cheapest level)."""
        masked = np.where(self.allowed[None], self.costs, np.inf)
        return masked.min(axis=2).sum(axis=1)


def build_problem(table: SearchTable, budgets: Sequence[Budget], ties: str | None = None) -> Problem:
    """ties: the tie rule (default: the one the table's latency was priced for)."""
    if not budgets:
        raise ValueError("at least one budget is needed")
    kinds = [b.kind for b in budgets]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"each budget kind may appear once, got {kinds}")
    groups = tie_groups(table.layers, table.ties if ties is None else ties)
    per_layer = np.stack([cost_matrix(table, b.kind) for b in budgets])  # [K, L, B]
    costs = np.stack([per_layer[:, list(g), :].sum(axis=1) for g in groups], axis=1)
    proxy = np.stack([table.proxy[list(g)].sum(axis=0) for g in groups])
    allowed = np.isfinite(proxy) & np.isfinite(costs).all(axis=0)
    if not allowed.any(axis=1).all():
        bad = [table.names[groups[g][0]] for g in np.flatnonzero(~allowed.any(axis=1))]
        raise ValueError(f"layers {bad[:3]} have no level with finite proxy and costs")
    costs = np.where(allowed[None], costs, 0.0)
    proxy = np.where(allowed, proxy, 0.0)
    return Problem(table, groups, tuple(budgets), proxy, costs, allowed)


@dataclass(frozen=True)
class Solution:
    """A solver's answer: item choice, its allocation, summed proxy and per-budget totals."""

    problem: Problem
    choice: np.ndarray  # [G] level index per item
    solver: str
    fitness: float | None = None  # true-loss fitness (evolution only)

    @property
    def objective(self) -> float:
        return self.problem.objective(self.choice)

    @property
    def allocation(self) -> dict[str, int]:
        return self.problem.allocation(self.choice)

    @property
    def totals(self) -> dict[str, float]:
        return {b.kind: float(t) for b, t in zip(self.problem.budgets, self.problem.totals(self.choice))}


def infeasible_message(problem: Problem, smallest: Sequence[float]) -> str:
    """'budget X is infeasible: the smallest feasible value is Y' for every budget that is too small."""
    from matq_compile.search.budget import format_value

    parts = []
    for budget, low in zip(problem.budgets, smallest):
        if low > budget.value * (1 + FEASIBILITY_RTOL):
            parts.append(f"budget {budget} is infeasible: the smallest feasible {budget.kind} is "
                         f"{format_value(budget.kind, low)} ({low:.6g})")
    return "; ".join(parts)
