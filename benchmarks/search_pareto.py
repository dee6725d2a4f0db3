"""Pareto front of the bit-width search on SmolLM2-135M: predicted vs re-measured latency, and perplexity.

    flock /tmp/matq_cpu.lock python benchmarks/search_pareto.py --checkpoint CKPT --target host

For every budget (>= 8 decode-latency budgets from the fastest uniform slice to the slowest, plus the uniform int3/int4
latencies) it solves the MILP, writes the plan under benchmarks/results/plans/, re-measures the plan by running
all its kernels back to back in one compiled Relax function (each layer with its own weights, so the weights
stream from memory as in decode), and measures WikiText-2 perplexity of the fake-quantized model (the quantizer's
protocol: windows of 1024 tokens from token 0). Writes benchmarks/results/search_smollm2_<target>.json, a front
CSV and a PNG, and prints the README table. `--act int8` prices and re-measures the plans on the int8-activation
kernels instead (`…_<target>_int8.*`); perplexity stays the fake-quantized model's, which int8 activations move
by < 1 % (benchmarks/act_ppl.py).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

from matq_compile.io_utils import write_json
from matq_compile.search.allocation import Plan, save_plan
from matq_compile.search.budget import Budget, predicted
from matq_compile.search.front import FrontRow, bits_histogram, write_front
from matq_compile.search.milp import solve
from matq_compile.search.tables import SearchTable, parse_levels
from matq_compile.search_stage import SearchOptions, latency_for, search_table

log = logging.getLogger("matq_compile.benchmarks.search_pareto")
ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


# ---- re-measurement: every layer's kernel of one plan, back to back, in one compiled function ----

class ChainTimer:
    """One plan's kernels back to back (bench.chain_executable: each kernel the compiled model runs, fused
    sibling sets as one, on its own weights), built once and timed as often as asked: rounds over all plans
    interleave them, so a drift of the machine hits every plan alike."""

    def __init__(self, allocation: dict[str, int], table: SearchTable, spec, db_dir: Path,
                 fuse_siblings: bool = True, act: str = "float"):
        from matq_compile import bench
        from matq_compile._tvm import tensor, tvm
        from matq_compile.kernel_units import kernel_units
        from matq_compile.search.tables import slices_at
        from tvm import relax

        keys = [u.key(table.m_bucket) for u in kernel_units(slices_at(table.layers, allocation), fuse_siblings)]
        self.dev = tvm.cpu()
        self.vm = relax.VirtualMachine(bench.chain_executable(keys, spec, db_dir, table.m_bucket, act), self.dev)
        self.args = [tensor(a, self.dev) for a in bench.chain_args(keys, table.m_bucket, 0, spec, act)]
        self.vm["chain"](*self.args)  # warm-up: code pages, VM allocator pools

    def __call__(self, repeat: int) -> tuple[float, float]:
        """Median seconds of one call: with every buffer flushed from the cache before each repeat (cold, as the
        per-kernel table is timed), and without."""
        from matq_compile.remote import cpu_samples

        cold, warm = (cpu_samples(self.vm, "chain", self.dev, self.args, repeat, c) for c in (True, False))
        return float(np.median(cold)), float(np.median(warm))


# ---- perplexity of the fake-quantized model ----

class PPLRunner:
    """Perplexity per allocation, memoised in a JSON file keyed by checkpoint hash, protocol and allocation."""

    def __init__(self, ckpt, windows: int, seq_len: int, cache_path: Path | None = None):
        from matq_compile import evaluate
        from matq_compile.model_source import resolve_model

        self.ckpt, self.protocol = ckpt, f"{windows}x{seq_len}"
        self.model, tokenizer = evaluate.load_model(resolve_model(ckpt.source["model"]))
        self.windows = evaluate.eval_windows(tokenizer, evaluate.EvalSpec(seq_len=seq_len, n_windows=windows))
        self.cache_path = cache_path
        self.cache: dict[str, float] = json.loads(cache_path.read_text()) if cache_path and cache_path.is_file() else {}

    def key(self, allocation: dict[str, int]) -> str:
        body = json.dumps(sorted(allocation.items())).encode()
        return f"{self.ckpt.hash}:{self.protocol}:{hashlib.sha256(body).hexdigest()}"

    def __call__(self, allocation: dict[str, int]) -> float:
        from matq_compile import evaluate

        key = self.key(allocation)
        if key not in self.cache:
            evaluate.fake_quantize(self.model, self.ckpt, dict(allocation))
            self.cache[key] = evaluate.perplexity(self.model, self.windows).ppl
            log.info("ppl %.3f (mean bits %.3f)", self.cache[key], np.mean(list(allocation.values())))
            if self.cache_path:
                write_json(self.cache_path, self.cache)
        return self.cache[key]


# ---- the front ----

def budgets_for(table: SearchTable, points: int) -> list[float]:
    """`points` decode latencies from the fastest uniform slice to the slowest (not always the fewest and the most
    bits: int3 decodes slower than int4 on some CPUs), plus the uniform int3/int4 latencies."""
    uni = {b: float(table.latency_s[:, i].sum()) for i, b in enumerate(table.levels)}
    lo, hi = min(uni.values()), max(uni.values())
    extra = [uni[b] for b in (3, 4) if b in uni]
    return sorted(set(np.linspace(lo, hi, points).tolist()) | set(extra))


def solve_front(table: SearchTable, ckpt, target: str, latency, values: list[float], plans_dir: Path,
                tag: str) -> list[tuple[Budget, Plan, Path]]:
    out = []
    for i, value in enumerate(values):
        budget = Budget("latency", value)
        sol = solve(table, [budget])
        plan = Plan(layers=sol.allocation, checkpoint_hash=ckpt.hash, levels=table.levels, solver=sol.solver,
                    budgets=(budget,), predicted=predicted(table, sol.problem.expand(sol.choice)), target=target,
                    seed=0, meta={"proxy": table.proxy_kind, "ties": "fused", "m_bucket": table.m_bucket,
                                  "db_hash": latency.db_hash, "tvm_version": latency.tvm_version})
        path, _ = save_plan(plans_dir / f"{tag}_{i:02d}.json", plan)
        out.append((budget, plan, path))
    return out


def refine_points(table: SearchTable, ckpt, target: str, latency, args, plans_dir: Path, tag: str, model=None):
    """KL-refined plans (EvoPress-style, seeded by the MILP) at the uniform int3 and int4 latencies."""
    from matq_compile.kl_fitness import RefineOptions, kl_fitness, stage_tokens
    from matq_compile.search.evolution import evolve
    from matq_compile.search.problem import build_problem

    refine = RefineOptions(args.refine_generations, args.refine_offspring, stage_tokens(args.refine_tokens),
                           seed=args.seed)
    fitness = kl_fitness(ckpt, refine)
    out = []
    for bits in (3, 4):
        budget = Budget("latency", float(table.latency_s[:, table.levels.index(bits)].sum()))
        problem = build_problem(table, [budget])
        res = evolve(problem, solve(table, [budget]).choice, fitness, refine.evolution_config())
        sol = res.solution
        pred = predicted(table, problem.expand(sol.choice)) | {"kl_calib": res.solution.fitness,
                                                              "kl_calib_milp_seed": res.seed_fitness}
        plan = Plan(layers=sol.allocation, checkpoint_hash=ckpt.hash, levels=table.levels, solver=sol.solver,
                    budgets=(budget,), predicted=pred, target=target, seed=args.seed,
                    meta={"proxy": table.proxy_kind, "ties": "fused", "m_bucket": table.m_bucket,
                          "db_hash": latency.db_hash, "tvm_version": latency.tvm_version,
                          "generations": args.refine_generations, "history": res.history})
        path, _ = save_plan(plans_dir / f"{tag}_refined_int{bits}.json", plan)
        out.append((budget, plan, path))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--target", default="host")
    p.add_argument("--db-dir", default=None, help="default: the committed schedules/db/<target>")
    p.add_argument("--latency-table", default=None)
    p.add_argument("--levels", default="2,3,4,6,8")
    p.add_argument("--points", type=int, default=10,
                   help="latency budgets from the fastest uniform slice to the slowest")
    p.add_argument("--windows", type=int, default=8, help="perplexity windows (0 = skip perplexity)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=30, help="timed repeats of each plan's kernel chain")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds over all plans; a plan's time is the median of its rounds")
    p.add_argument("--act", choices=("float", "int8"), default="float",
                   help="the builds' activation mode: its kernels price the plans and are re-measured")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--refine-generations", type=int, default=0,
                   help="also refine the int3/int4-latency plans on KL for this many generations")
    p.add_argument("--refine-offspring", type=int, default=6)
    p.add_argument("--refine-tokens", default="255,1020", help="KL tokens per selection stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppl-cache", default="/tmp/matq_search_ppl_cache.json",
                   help="JSON memo of perplexities (checkpoint hash + protocol + allocation); '' to disable")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from matq_compile import schedules, targets
    from matq_compile._log import enable_logging, progress
    from matq_compile.ckpt import load_checkpoint

    args = parse_args(argv)
    enable_logging()
    ckpt = load_checkpoint(args.checkpoint)
    spec = targets.load(args.target)
    levels = parse_levels(args.levels)
    db_dir = Path(args.db_dir) if args.db_dir else schedules.db_dir(spec)
    opts = SearchOptions(levels, target=args.target, db_dir=str(db_dir), latency_table=args.latency_table,
                         act=args.act)
    latency = latency_for(ckpt, opts)
    table = search_table(ckpt, opts, latency)
    results = Path(args.results_dir)
    tag = f"smollm2_{spec.name}" + ("_int8" if args.act == "int8" else "")
    front = solve_front(table, ckpt, spec.name, latency, budgets_for(table, args.points), results / "plans", tag)
    if args.refine_generations > 0:
        front += refine_points(table, ckpt, spec.name, latency, args, results / "plans", tag)
    uniform = {b: {n: b for n in table.names} for b in levels}
    points = [(f"int{b}", a) for b, a in uniform.items()] + [(p.name, dict(plan.layers)) for _, plan, p in front]
    timers = {name: ChainTimer(alloc, table, spec, db_dir, act=args.act) for name, alloc in progress(
        points, desc="build plans")}
    samples: dict[str, list] = {name: [] for name in timers}
    for _ in progress(range(args.rounds), desc="re-measure rounds"):
        for name, timer in timers.items():
            samples[name].append(timer(args.repeat))
    measured = {name: float(np.median([c for c, _ in t])) for name, t in samples.items()}
    back_to_back = {name: float(np.median([w for _, w in t])) for name, t in samples.items()}
    for name in timers:
        log.info("%s: measured %.4f ms cold, %.4f ms without flush (median of %d rounds)", name,
                 measured[name] * 1e3, back_to_back[name] * 1e3, args.rounds)
    del timers
    ppl: dict[str, float] = {}
    outputs = (args, ckpt, spec, latency, table, uniform, front, (measured, back_to_back))
    write_outputs(*outputs, ppl, results, tag, show=args.windows == 0)
    if args.windows > 0:
        runner = PPLRunner(ckpt, args.windows, args.seq_len, Path(args.ppl_cache) if args.ppl_cache else None)
        for name, alloc in progress(ppl_order(points, front, table), desc="perplexity"):
            ppl[name] = runner(alloc)
            write_outputs(*outputs, ppl, results, tag, show=len(ppl) == len(points))  # partial results survive
    return 0


def ppl_order(points, front, table: SearchTable) -> list:
    """Uniform slices and the plans at the uniform int3/int4 latencies first (the comparison that matters)."""
    key_budgets = {float(table.latency_s[:, table.levels.index(b)].sum()) for b in (3, 4) if b in table.levels}
    first = {p.name for budget, _, p in front if budget.value in key_budgets} | {n for n, _ in points if "int" in n[:4]}
    return sorted(points, key=lambda t: t[0] not in first)


def write_outputs(args, ckpt, spec, latency, table, uniform, front, timings, ppl, results: Path, tag: str,
                  show: bool = True) -> None:
    from matq_compile.search.plot import plot_front

    measured, back_to_back = timings
    rows, uni_json, pareto = [], {}, []
    for b, alloc in uniform.items():
        i = table.levels.index(b)
        pred = float(table.latency_s[:, i].sum())
        uni_json[str(b)] = {"predicted_s": pred, "measured_s": measured[f"int{b}"], "ppl": ppl.get(f"int{b}"),
                            "measured_no_flush_s": back_to_back[f"int{b}"],
                            "avg_bits": float(b), "proxy": float(table.proxy[:, i].sum())}
        rows.append(FrontRow("uniform", b, "uniform", None, float(b), float(table.bytes[:, i].sum()),
                             float(table.proxy[:, i].sum()), pred, measured[f"int{b}"], ppl=ppl.get(f"int{b}"),
                             bits_hist=f"all={b}"))
    for budget, plan, path in front:
        p = plan.predicted
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        pareto.append({"budget": str(budget), "budget_s": budget.value, "solver": plan.solver,
                       "avg_bits": p["avg_bits"],
                       "predicted_s": p["latency_s"], "measured_s": measured[path.name], "ppl": ppl.get(path.name),
                       "measured_no_flush_s": back_to_back[path.name],
                       "proxy": p["proxy"], "bytes": p["bytes"], "plan": str(rel)})
        rows.append(FrontRow("latency", budget.value, plan.solver, plan.seed, p["avg_bits"], p["bytes"], p["proxy"],
                             p["latency_s"], measured[path.name], ppl=ppl.get(path.name),
                             bits_hist=bits_histogram(plan.layers), plan=str(rel)))
    pred = np.array([r.predicted_latency_s for r in rows])
    meas = np.array([r.measured_latency_s for r in rows])
    alpha, c0 = np.polyfit(pred, meas, 1)
    obj = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "target": spec.name, "tvm_version": latency.tvm_version, "db_hash": latency.db_hash,
           "checkpoint": {"path": str(args.checkpoint), "hash": ckpt.hash, "spec": ckpt.spec.to_dict()},
           "eval": {"text": "wikitext-2-raw test", "seq_len": args.seq_len, "windows": args.windows},
           "levels": list(table.levels), "latency_regime": "decode M=1, sum of linear-layer kernels",
           # act: the kernels' activation mode; ppl is always the fake-quantized (float-activation) model's
           "act": args.act, "rounds": args.rounds, "repeat": args.repeat,
           "uniform": uni_json, "pareto": pareto,
           "fit_measured_vs_predicted": {"alpha": float(alpha), "c0_s": float(c0),
                                         "max_rel_err": float(np.max(np.abs(meas / pred - 1)))}}
    write_json(results / f"search_{tag}.json", obj)
    write_front(results / f"search_{tag}_front.csv", rows)
    plot_front(rows, results / f"search_{tag}.png", quality="ppl" if ppl else "proxy", x_axis="predicted_latency",
               title=f"SmolLM2-135M bit-width search on {spec.name}"
               + (" (int8-activation kernels)" if args.act == "int8" else ""))
    if show:
        print_table(uni_json, pareto)


def print_table(uni: dict, pareto: list[dict]) -> None:
    print("| point | avg bits | predicted ms | measured ms (cold) | measured/predicted | no-flush ms | PPL |")
    print("|---|---|---|---|---|---|---|")
    rows = [(f"uniform int{b}", u) for b, u in uni.items()] + [(f"{p['solver']} {p['budget']}", p) for p in pareto]
    for name, r in sorted(rows, key=lambda t: t[1]["predicted_s"]):
        ppl = "–" if r["ppl"] is None else f"{r['ppl']:.2f}"
        print(f"| {name} | {r['avg_bits']:.3f} | {r['predicted_s'] * 1e3:.3f} | {r['measured_s'] * 1e3:.3f} | "
              f"{r['measured_s'] / r['predicted_s']:.3f} | {r['measured_no_flush_s'] * 1e3:.3f} | {ppl} |")


if __name__ == "__main__":
    sys.exit(main())
