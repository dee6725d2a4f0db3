"""The MILP against exhaustive enumeration, monotonicity in the budget, ties, and infeasibility messages."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from matq_compile.search.budget import Budget, cost_matrix
from matq_compile.search.milp import smallest_feasible, solve, sweep, sweep_values
from matq_compile.search.problem import build_problem, tie_groups
from matq_compile.search.tables import LayerInfo, SearchTable

LEVELS = (2, 3, 4, 6, 8)
# Six layers: q/k/v tie, o alone, gate/up tie -> three items; or six untied layers.
TIED_NAMES = ("b.0.self_attn.q_proj", "b.0.self_attn.k_proj", "b.0.self_attn.v_proj", "b.0.self_attn.o_proj",
              "b.0.mlp.gate_proj", "b.0.mlp.up_proj")


def random_table(rng: np.random.Generator, n_layers: int, names=None) -> SearchTable:
    names = names or tuple(f"layer{i}" for i in range(n_layers))
    layers = tuple(LayerInfo(n, int(rng.integers(8, 64)), 32, 32) for n in names[:n_layers])
    b = len(LEVELS)
    proxy = np.sort(rng.uniform(0, 1, (n_layers, b)), axis=1)[:, ::-1]  # better with more bits, mostly
    proxy[rng.uniform(size=proxy.shape) < 0.15] *= 1.5  # some non-monotone options
    latency = rng.uniform(1e-6, 1e-5, (n_layers, b))  # unrelated to bits: any cost structure
    nbytes = np.sort(rng.uniform(100, 1000, (n_layers, b)), axis=1)
    return SearchTable(layers, LEVELS, proxy, nbytes, latency)


def brute_force(table: SearchTable, budgets: list[Budget], ties: str) -> tuple[float, np.ndarray] | None:
    """Least proxy over every per-layer assignment that keeps ties and budgets (None if none does)."""
    n, b = table.proxy.shape
    combos = np.array(list(itertools.product(range(b), repeat=n)))  # [C, n]
    ok = np.ones(len(combos), dtype=bool)
    for group in tie_groups(table.layers, ties):
        for i in group[1:]:
            ok &= combos[:, i] == combos[:, group[0]]
    rows = np.arange(n)
    for budget in budgets:
        ok &= cost_matrix(table, budget.kind)[rows, combos].sum(axis=1) <= budget.value
    if not ok.any():
        return None
    obj = table.proxy[rows, combos].sum(axis=1)
    obj[~ok] = np.inf
    best = int(np.argmin(obj))
    return float(obj[best]), combos[best]


def random_budgets(rng, table: SearchTable, kinds) -> list[Budget]:
    out = []
    for kind in kinds:
        m = cost_matrix(table, kind)
        lo, hi = m.min(axis=1).sum(), m.max(axis=1).sum()
        out.append(Budget(kind, float(lo + rng.uniform(0.05, 0.9) * (hi - lo))))
    return out


@pytest.mark.parametrize("ties", ["none", "fused"])
@pytest.mark.parametrize("seed", range(12))
def test_milp_equals_brute_force(seed, ties):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7)) if ties == "none" else 6
    table = random_table(rng, n, TIED_NAMES if ties == "fused" else None)
    kinds = [["latency"], ["bytes"], ["avg_bits"], ["latency", "bytes"]][seed % 4]
    budgets = random_budgets(rng, table, kinds)
    ref = brute_force(table, budgets, ties)
    if ref is None:
        with pytest.raises(ValueError, match="infeasible|cannot all hold"):
            solve(table, budgets, ties)
        return
    sol = solve(table, budgets, ties)
    assert sol.objective == pytest.approx(ref[0], rel=1e-9, abs=1e-12)
    for budget in budgets:
        assert sol.totals[budget.kind] <= budget.value * (1 + 1e-9)


def test_larger_budget_never_worse(make_table):
    table = make_table(seed=3, n_blocks=3)
    values = sweep_values(table, "latency", 15)
    objectives = [s.objective for s in sweep(table, "latency", values)]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(objectives, objectives[1:]))
    assert objectives[-1] < objectives[0]  # the sweep really spans something


def test_sweep_ends_are_uniform_extremes(make_table):
    table = make_table(seed=4, n_blocks=2)
    values = sweep_values(table, "avg_bits", 4)
    assert values[0] == pytest.approx(2.0) and values[-1] == pytest.approx(8.0)
    top = solve(table, [Budget("avg_bits", values[-1])])
    assert set(top.allocation.values()) == {8}  # proxy falls with bits here, so all-int8 is optimal


def test_tied_layers_stay_tied(make_table):
    table = make_table(seed=5, n_blocks=4)
    for value in sweep_values(table, "latency", 9)[1:-1]:
        alloc = solve(table, [Budget("latency", float(value))], ties="fused").allocation
        for i in range(4):
            p = f"model.layers.{i}."
            assert alloc[p + "self_attn.q_proj"] == alloc[p + "self_attn.k_proj"] == alloc[p + "self_attn.v_proj"]
            assert alloc[p + "mlp.gate_proj"] == alloc[p + "mlp.up_proj"]
    # without ties the same budgets do split some fused groups (so the tie test above can fail)
    untied = [solve(table, [Budget("latency", float(v))], ties="none").allocation
              for v in sweep_values(table, "latency", 9)[1:-1]]
    assert any(a["model.layers.0.self_attn.q_proj"] != a["model.layers.0.self_attn.k_proj"]
               or a["model.layers.0.mlp.gate_proj"] != a["model.layers.0.mlp.up_proj"] for a in untied)


def test_infeasible_budget_names_smallest_value(make_table):
    table = make_table(seed=6, n_blocks=2)
    # with ties the cheapest choice is per fused group (summed latency), not per layer
    groups = tie_groups(table.layers, "fused")
    cheapest = float(sum(table.latency_s[list(g)].sum(axis=0).min() for g in groups))
    with pytest.raises(ValueError, match="smallest feasible latency is") as err:
        solve(table, [Budget("latency", cheapest * 0.9)])
    assert f"{cheapest * 1e3:.6g}ms" in str(err.value)
    solve(table, [Budget("latency", cheapest * (1 + 1e-12))])  # exactly at the smallest value is feasible


def test_jointly_infeasible_budgets_report_smallest_given_the_other():
    rng = np.random.default_rng(11)
    table = random_table(rng, 5)
    bits_lo = Budget("avg_bits", 2.5)
    problem = build_problem(table, [bits_lo, Budget("latency", 1.0)], ties="none")
    lat_min_given_bits = smallest_feasible(problem)[1]
    ref = brute_force(table, [bits_lo], "none")
    assert ref is not None
    # brute-force least latency subject to avg bits <= 2.5
    combos = np.array(list(itertools.product(range(5), repeat=5)))
    rows = np.arange(5)
    ok = cost_matrix(table, "avg_bits")[rows, combos].sum(axis=1) <= 2.5
    expect = table.latency_s[rows, combos].sum(axis=1)[ok].min()
    assert lat_min_given_bits == pytest.approx(expect, rel=1e-9)
    if expect > table.latency_s.min(axis=1).sum() * (1 + 1e-9):  # the joint bound is tighter than alone
        with pytest.raises(ValueError, match="smallest feasible latency"):
            solve(table, [bits_lo, Budget("latency", float(expect) * 0.999)], ties="none")


def test_bad_budget_inputs(make_table):
    table = make_table(seed=7, n_blocks=1)
    with pytest.raises(ValueError, match="at least one budget"):
        solve(table, [])
    with pytest.raises(ValueError, match="once"):
        solve(table, [Budget("latency", 1.0), Budget("latency", 2.0)])
    with pytest.raises(ValueError, match="tie rule"):
        solve(table, [Budget("latency", 1.0)], ties="sometimes")
