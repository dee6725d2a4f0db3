"""The search stage: a checkpoint, budgets and SearchOptions -> plans and fronts, priced on measured latency.

This joins the components matq_compile.search (numpy + scipy only) does not touch: the latency table of the
tuned kernels (bench.cached_latency), the kernel units the compiler will run (kernel_units.py, through the
search's tables), and the KL fitness of the refinement (kl_fitness.py). `matq search` only parses arguments
into SearchOptions and calls search_plan or search_front; benchmarks call the same functions.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matq_compile.kl_fitness import RefineOptions
from matq_compile.search.allocation import Plan, save_plan
from matq_compile.search.budget import Budget, predicted, uniform_costs
from matq_compile.search.evolution import Fitness
from matq_compile.search.front import FrontRow, bits_histogram, write_front
from matq_compile.search.latency import LatencyTable
from matq_compile.search.milp import sweep_values
from matq_compile.search.problem import Solution
from matq_compile.search.tables import (DEFAULT_LEVELS, ByteModel, SearchTable, build_table, check_levels,
                                        latency_keys, layers_from_sensitivity, plan_kernels, plan_latency)
from matq_compile.tune import RPCSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    """levels the search may pick; proxy; ties ("fused": siblings the compiler fuses share a width, "none");
    target / db_dir / latency_table / measure (missing kernels timed and saved) / m_bucket: the latency regime;
    runner / rpc: where missing kernels are timed (remote.open_session: "local", or "rpc" with RPCSettings);
    fuse_siblings: the compiler's setting the plan will be built with; refine: KL refinement (None: MILP only);
    switchable: price the kernels of a switchable build serving `levels` (its plans run with Model.set_plan)."""

    levels: tuple[int, ...] = DEFAULT_LEVELS
    proxy: str = "nmse"
    ties: str = "fused"
    target: str | None = None
    db_dir: str | None = None
    latency_table: str | None = None
    measure: bool = True
    m_bucket: int = 1
    runner: str = "local"
    rpc: RPCSettings | None = None
    fuse_siblings: bool = True
    seed: int = 0
    refine: RefineOptions = field(default_factory=RefineOptions)
    switchable: bool = False
    planes: tuple[int, ...] | None = None  # the switchable build's plane widths (planes.plane_widths)
    act: str = "float"  # the build's activation mode: the kernels whose latency prices a plan


def nested_tag(ckpt, opts: SearchOptions) -> str:
    """The plane layout of the switchable build the plans are for ("" for dedicated builds)."""
    from matq_compile import planes

    if opts.planes is not None and not opts.switchable:
        raise ValueError("--planes is a switchable build's layout; add --switchable")
    return planes.tag(opts.levels, ckpt.spec.slice_rule, opts.planes) if opts.switchable else ""


def latency_for(ckpt, opts: SearchOptions) -> LatencyTable:
    """The latency of every kernel a plan over opts.levels may compile to (kept beside the tuning database)."""
    from matq_compile import bench, schedules, targets

    if opts.target is None:
        raise ValueError("a latency budget needs --target (and its tuned database)")
    spec = targets.load(opts.target)
    check_levels(ckpt.sensitivity, opts.levels, opts.proxy)  # cheap, before any kernel is measured
    db_dir = Path(opts.db_dir) if opts.db_dir else schedules.db_dir(spec)
    path = Path(opts.latency_table) if opts.latency_table else bench.table_path(db_dir, opts.m_bucket, opts.act)
    layers = layers_from_sensitivity(ckpt.sensitivity, ckpt.layer_names, bool(ckpt.spec.act_order),
                                     nested_tag(ckpt, opts))
    keys = latency_keys(layers, opts.levels, opts.m_bucket, opts.fuse_siblings)
    return bench.cached_latency(keys, spec, db_dir, path, opts.measure, opts.runner, opts.rpc, opts.act)


def search_table(ckpt, opts: SearchOptions, latency: LatencyTable | None) -> SearchTable:
    return build_table(ckpt.sensitivity, opts.levels, latency=latency, m_bucket=opts.m_bucket, proxy=opts.proxy,
                       byte_model=ByteModel(act_order=bool(ckpt.spec.act_order)), layer_names=ckpt.layer_names,
                       fuse_siblings=opts.fuse_siblings, ties=opts.ties, nested=nested_tag(ckpt, opts))


def prepare(ckpt, opts: SearchOptions, needs_latency: bool) -> tuple[SearchTable, LatencyTable | None,
                                                                    Fitness | None]:
    """The search table (with measured latency when needed or a target is given) and the KL fitness."""
    from matq_compile.kl_fitness import kl_fitness

    latency = latency_for(ckpt, opts) if needs_latency or opts.target is not None else None
    fitness = kl_fitness(ckpt, opts.refine) if opts.refine.generations > 0 else None
    return search_table(ckpt, opts, latency), latency, fitness


def solve(table: SearchTable, budgets: Sequence[Budget], fitness: Fitness | None, opts: SearchOptions) -> Solution:
    """The exact MILP answer, refined on KL when a fitness is given (matq_compile.search.search)."""
    from matq_compile.search import search

    return search(table, budgets, ties=opts.ties, fitness=fitness, config=opts.refine.evolution_config())


def make_plan(solution: Solution, table: SearchTable, ckpt, latency: LatencyTable | None,
              opts: SearchOptions) -> Plan:
    """The plan file of a solution. Its predicted latency is that of the kernel units the compiler builds for
    this allocation (exact also when a mixed plan splits a sibling set), and meta.kernels names them."""
    pred = predicted(table, solution.problem.expand(solution.choice))
    if solution.fitness is not None:
        pred["kl_calib"] = solution.fitness
    meta = {"proxy": table.proxy_kind, "ties": opts.ties, "m_bucket": table.m_bucket,
            "fuse_siblings": opts.fuse_siblings, "switchable": opts.switchable,
            "kernels": [k.name for k in plan_kernels(table.layers, solution.allocation, table.m_bucket,
                                                     opts.fuse_siblings)]}
    if latency is not None:
        pred["latency_s"] = plan_latency(latency, table.layers, solution.allocation, table.m_bucket,
                                         opts.fuse_siblings)
        meta |= {"db_hash": latency.db_hash, "tvm_version": latency.tvm_version}
    return Plan(layers=solution.allocation, checkpoint_hash=ckpt.hash, levels=table.levels, solver=solution.solver,
                budgets=solution.problem.budgets, predicted=pred, target=latency.target if latency else opts.target,
                seed=opts.seed, meta=meta)


def search_plan(ckpt, budgets: Sequence[Budget], opts: SearchOptions, out: str | Path) -> Plan:
    """Solve one set of budgets and write allocation.json and its text form into `out`."""
    if not budgets:
        raise ValueError("give at least one budget")
    table, latency, fitness = prepare(ckpt, opts, any(b.kind == "latency" for b in budgets))
    plan = make_plan(solve(table, budgets, fitness, opts), table, ckpt, latency, opts)
    json_path, text_path = save_plan(Path(out) / "allocation.json", plan)
    log.info("plan: %s (%s); predicted %s", json_path, text_path.name,
             ", ".join(f"{k}={v:.6g}" for k, v in plan.predicted.items()))
    return plan


def uniform_rows(table: SearchTable) -> list[FrontRow]:
    kinds = ["proxy", "avg_bits", "bytes"] + (["latency"] if table.latency_s is not None else [])
    rows = []
    for bits, c in uniform_costs(table, kinds).items():
        rows.append(FrontRow("uniform", bits, "uniform", None, c["avg_bits"], c["bytes"], c["proxy"],
                             predicted_latency_s=c.get("latency"), bits_hist=f"all={bits}"))
    return rows


def search_front(ckpt, points: int, kind: str, fixed: Sequence[Budget], opts: SearchOptions,
                 out: str | Path) -> list[FrontRow]:
    """Solve `points` budgets of `kind` from the cheapest to the dearest (with the `fixed` budgets alongside);
    writes plans/plan_NN.json, front.csv and front.png into `out`."""
    from matq_compile._log import progress
    from matq_compile.search.plot import plot_front

    out = Path(out)
    fixed = [b for b in fixed if b.kind != kind]
    table, latency, fitness = prepare(ckpt, opts, kind == "latency" or any(b.kind == "latency" for b in fixed))
    values = sweep_values(table, kind, points, opts.ties)
    rows = uniform_rows(table)
    for i, value in enumerate(progress(values, desc="sweep", total=len(values))):
        budget = Budget(kind, float(value))
        plan = make_plan(solve(table, [budget, *fixed], fitness, opts), table, ckpt, latency, opts)
        path, _ = save_plan(out / "plans" / f"plan_{i:02d}.json", plan)
        p = plan.predicted
        rows.append(FrontRow(budget.kind, budget.value, plan.solver, plan.seed, p["avg_bits"], p["bytes"],
                             p["proxy"], predicted_latency_s=p.get("latency_s"), kl_calib=p.get("kl_calib"),
                             bits_hist=bits_histogram(plan.layers), plan=str(path.relative_to(out))))
    write_front(out / "front.csv", rows)
    quality = "kl_calib" if fitness is not None else "proxy"
    x_axis = "latency" if table.latency_s is not None else "avg_bits"
    plot_front(rows, out / "front.png", quality=quality, x_axis=x_axis, title=f"searched front ({table.proxy_kind})")
    log.info("front: %s (%d budgets + %d uniform slices), plot %s", out / "front.csv", len(values),
             len(table.levels), out / "front.png")
    return rows
