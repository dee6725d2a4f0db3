"""The steps behind `matq search` that touch other components: kernel latency (bench), KL fitness (evaluate),
and writing plans and fronts. matq_compile.search itself stays numpy + scipy only."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matq_compile.search.allocation import Plan, save_plan
from matq_compile.search.budget import Budget, predicted, uniform_costs
from matq_compile.search.evolution import EvolutionConfig, Fitness, evolve
from matq_compile.search.front import FrontRow, bits_histogram, write_front
from matq_compile.search.milp import solve_problem, sweep_values
from matq_compile.search.problem import Solution, build_problem
from matq_compile.search.tables import LatencyTable, SearchTable, latency_keys, layers_from_sensitivity

log = logging.getLogger(__name__)


# ---- latency: measured once per (N, K, group, M, r) with the tuned kernels, kept beside the database ----

def default_table_path(db_dir: Path, m_bucket: int) -> Path:
    return Path(db_dir) / f"latency_m{m_bucket}.json"


def committed_db_dir(spec) -> Path:
    """The tuned database shipped with the package for this target: schedules/db/<target name>."""
    import matq_compile.schedules

    return Path(matq_compile.schedules.__file__).parent / "db" / spec.name


def latency_for(ckpt, levels: Sequence[int], args: argparse.Namespace) -> LatencyTable:
    """The latency of every kernel the checkpoint needs; missing entries measured (and saved) unless --no-measure."""
    from matq_compile import bench, layout, targets

    if args.target is None:
        raise ValueError("a latency budget needs --target (and its tuned database)")
    spec = targets.load(args.target)
    db_dir = Path(args.db_dir) if args.db_dir else committed_db_dir(spec)
    path = Path(args.latency_table) if args.latency_table else default_table_path(db_dir, args.m_bucket)
    layers = layers_from_sensitivity(ckpt.sensitivity, ckpt.layer_names)
    keys = [layout.KernelKey(n, k, b, g, m) for (n, k, g, m, b) in latency_keys(
        layers, levels, args.m_bucket, fuse_siblings=not ckpt.spec.act_order)]
    table = bench.load_table(path, spec, db_dir) if path.is_file() else None  # refuses another target / DB
    have = {row.key for row in table.rows} if table is not None else set()
    missing = [k for k in keys if k.name not in have]
    if missing:
        if args.no_measure:
            raise ValueError(f"latency table {path} lacks {len(missing)} kernels, e.g. {missing[0].name}; "
                             f"measure them with matq bench-kernels or drop --no-measure")
        log.info("measuring %d kernel latencies on %s (cold cache)", len(missing), spec.name)
        fresh = bench.measure(missing, spec, db_dir)
        old_rows = table.rows if table is not None else ()
        table = bench.LatencyTable(fresh.target, fresh.tvm_version, fresh.db_hash, old_rows + fresh.rows)
        table.save(path)
        log.info("latency table saved to %s", path)
    return to_search_latency(table, keys)


def to_search_latency(table, keys) -> LatencyTable:
    """bench's table (KernelKey -> median seconds, with provenance) as the search's numpy view."""
    entries = {(k.N, k.K, k.group, k.m_bucket, k.bits): float(table.latency(k)) for k in keys}
    return LatencyTable(table.target, table.tvm_version, table.db_hash, entries)


# ---- KL fitness: token-mean KL(p_fp || p_plan) on calibration windows, only changed layers re-loaded ----

class KLFitness:
    """fitness(allocation, n_tokens): KL of the fake-quantized model on the first ceil(n_tokens/T) windows."""

    def __init__(self, model, ckpt, windows, topk: int = 256):
        from matq_compile import evaluate

        self.model, self.ckpt, self.windows = model, ckpt, windows
        self.ref = evaluate.reference_distribution(model, windows, topk=topk)  # fp model, before any change
        self.loaded: dict[str, int] = {}

    def load(self, allocation: Mapping[str, int]) -> None:
        import torch

        with torch.no_grad():
            for name, bits in allocation.items():
                if self.loaded.get(name) != bits:
                    self.model.get_submodule(name).weight.copy_(self.ckpt.dequant(name, bits))
                    self.loaded[name] = bits

    def __call__(self, allocation: Mapping[str, int], n_tokens: int) -> float:
        from matq_compile import evaluate

        self.load(allocation)
        seq = self.windows.shape[1] - 1  # predicted positions per window
        n = min(max(1, math.ceil(n_tokens / seq)), self.windows.shape[0])
        sub = dataclasses.replace(self.ref, windows=self.windows[:n], logp=self.ref.logp[:n], index=self.ref.index[:n])
        return evaluate.kl_divergence(sub, self.model)


def kl_fitness(ckpt, args: argparse.Namespace) -> KLFitness:
    from matq_compile import data, evaluate
    from matq_compile.model_source import resolve_model

    model_ref = args.model or ckpt.source.get("model")
    if not model_ref:
        raise ValueError("KL refinement needs the floating-point model: pass --model")
    model, tokenizer = evaluate.load_model(resolve_model(model_ref))
    text = args.calibration or data.data_file(data.WIKITEXT_VALID)
    tokens = data.tokenize(tokenizer, data.read_text(text))
    stages = stage_tokens(args.refine_tokens)
    n_windows = math.ceil(stages[-1] / (args.refine_seq_len - 1))
    # offsets drawn from another stream than the quantizer's calibration seeds (0, 1, 2, ...)
    windows = data.calibration_windows(tokens, n_windows, args.refine_seq_len, seed=10_000 + args.seed)
    return KLFitness(model, ckpt, windows)


def stage_tokens(text: str) -> list[int]:
    try:
        tokens = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise ValueError(f"--refine-tokens must be comma-separated integers, got {text!r}") from e
    if not tokens or tokens != sorted(tokens) or tokens[0] < 1:
        raise ValueError(f"--refine-tokens must be positive and increasing, got {text!r}")
    return tokens


def evolution_config(args: argparse.Namespace) -> EvolutionConfig:
    tokens = stage_tokens(args.refine_tokens)
    survivors = [max(1, 2 ** (len(tokens) - 1 - i)) for i in range(len(tokens))]  # ..., 4, 2, 1
    return EvolutionConfig(generations=args.refine_generations, offspring=args.refine_offspring,
                           stages=tuple(zip(survivors, tokens)), seed=args.seed)


# ---- solving, plans and fronts ----

def solve_one(table: SearchTable, budgets: Sequence[Budget], fitness: Fitness | None,
              args: argparse.Namespace) -> Solution:
    problem = build_problem(table, budgets, args.ties)
    solution = solve_problem(problem)
    if fitness is not None:
        solution = evolve(problem, solution.choice, fitness, evolution_config(args)).solution
    return solution


def make_plan(solution: Solution, table: SearchTable, ckpt, latency: LatencyTable | None,
              args: argparse.Namespace) -> Plan:
    pred = predicted(table, solution.problem.expand(solution.choice))
    if solution.fitness is not None:
        pred["kl_calib"] = solution.fitness
    meta = {"proxy": table.proxy_kind, "ties": args.ties, "m_bucket": table.m_bucket}
    if latency is not None:
        meta |= {"db_hash": latency.db_hash, "tvm_version": latency.tvm_version}
    return Plan(layers=solution.allocation, checkpoint_hash=ckpt.hash, levels=table.levels, solver=solution.solver,
                budgets=solution.problem.budgets, predicted=pred, target=latency.target if latency else args.target,
                seed=args.seed, meta=meta)


def front_row(plan: Plan, budget: Budget, plan_path: str) -> FrontRow:
    p = plan.predicted
    return FrontRow(budget.kind, budget.value, plan.solver, plan.seed, p["avg_bits"], p["bytes"], p["proxy"],
                    predicted_latency_s=p.get("latency_s"), kl_calib=p.get("kl_calib"),
                    bits_hist=bits_histogram(plan.layers), plan=plan_path)


def uniform_rows(table: SearchTable) -> list[FrontRow]:
    kinds = ["proxy", "avg_bits", "bytes"] + (["latency"] if table.latency_s is not None else [])
    rows = []
    for bits, c in uniform_costs(table, kinds).items():
        rows.append(FrontRow("uniform", bits, "uniform", None, c["avg_bits"], c["bytes"], c["proxy"],
                             predicted_latency_s=c.get("latency"), bits_hist=f"all={bits}"))
    return rows


def run_single(table, budgets, ckpt, latency, fitness, args, out: Path) -> None:
    solution = solve_one(table, budgets, fitness, args)
    plan = make_plan(solution, table, ckpt, latency, args)
    json_path, text_path = save_plan(out / "allocation.json", plan)
    log.info("plan: %s (%s); predicted %s", json_path, text_path.name,
             ", ".join(f"{k}={v:.6g}" for k, v in plan.predicted.items()))


def run_sweep(table, budgets, ckpt, latency, fitness, args, out: Path) -> None:
    from matq_compile._log import progress
    from matq_compile.search.plot import plot_front

    fixed = [b for b in budgets if b.kind != args.sweep_kind]
    values = sweep_values(table, args.sweep_kind, args.sweep, args.ties)
    rows = uniform_rows(table)
    for i, value in enumerate(progress(values, desc="sweep", total=len(values))):
        budget = Budget(args.sweep_kind, float(value))
        plan = make_plan(solve_one(table, [budget, *fixed], fitness, args), table, ckpt, latency, args)
        path, _ = save_plan(out / "plans" / f"plan_{i:02d}.json", plan)
        rows.append(front_row(plan, budget, str(path.relative_to(out))))
    write_front(out / "front.csv", rows)
    quality = "kl_calib" if fitness is not None else "proxy"
    x_axis = "latency" if table.latency_s is not None else "avg_bits"
    plot_front(rows, out / "front.png", quality=quality, x_axis=x_axis, title=f"searched front ({table.proxy_kind})")
    log.info("front: %s (%d budgets + %d uniform slices), plot %s", out / "front.csv", len(values),
             len(table.levels), out / "front.png")

