"""`matq search`: choose bits per layer of a checkpoint within budgets, on measured kernel latency.

    matq search --checkpoint ckpt/ --target host --budget latency:1.2ms --out search/
    matq search --checkpoint ckpt/ --target host --sweep 12 --out search/        # Pareto front
    matq search --checkpoint ckpt/ --budget avg-bits:3.5 --refine-generations 8 --out search/   # + KL refinement
"""
from __future__ import annotations

import argparse
import logging

from matq_compile.cli.tune import add_runner_arguments, plane_list, rpc_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="per-layer bit-widths within a latency / bytes / avg-bits budget",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="sliceable checkpoint directory (matq quantize)")
    p.add_argument("--out", required=True, help="output directory (allocation.json/.txt, front.csv, front.png)")
    p.add_argument("--budget", action="append", default=[], metavar="KIND:VALUE",
                   help="latency:1.2ms | bytes:40MB | avg-bits:3.5; repeat to impose several at once")
    p.add_argument("--levels", default="2,3,4,6,8", help="bit-widths the search may pick (default 2,3,4,6,8)")
    p.add_argument("--proxy", default="nmse", choices=("nmse", "loss", "rel_mse"), help="additive quality proxy")
    p.add_argument("--switchable", action="store_true",
                   help="plan for a switchable build serving --levels (`matq compile --switchable --bits LEVELS`): "
                        "price its kernels, keep fused sibling sets at one width")
    p.add_argument("--planes", type=plane_list, default=None,
                   help="with --switchable: the build's plane widths (`matq compile --planes`; default: every cut)")
    p.add_argument("--act", choices=("float", "int8"), default="float",
                   help="price the build's activation mode (`matq compile --act`): its own kernels' latency")
    p.add_argument("--ties", default="fused", choices=("fused", "none"),
                   help="fused: q/k/v of a block share bits, gate/up share bits (default); none: all free")
    p.add_argument("--target", default=None, help="target name (see targets/); needed for latency")
    p.add_argument("--db-dir", default=None, help="tuning database (default: the committed schedules/db/<target>)")
    p.add_argument("--latency-table", default=None,
                   help="latency table file (default: latency_m<M>.json beside the tuning database)")
    p.add_argument("--no-measure", action="store_true", help="fail instead of measuring missing kernel latencies")
    p.add_argument("--m-bucket", type=int, default=1, help="M of the latency regime: 1 = decode (default)")
    add_runner_arguments(p)
    p.add_argument("--sweep", type=int, default=0, metavar="N",
                   help="solve N budgets from the cheapest to the dearest (the Pareto front)")
    p.add_argument("--sweep-kind", default="latency", choices=("latency", "bytes", "avg_bits"),
                   help="budget kind the sweep varies; --budget values stay fixed alongside")
    p.add_argument("--refine-generations", type=int, default=0,
                   help="EvoPress-style generations on KL to the floating-point model (0 = MILP only)")
    p.add_argument("--refine-offspring", type=int, default=6, help="children per generation")
    p.add_argument("--refine-tokens", default="255,1020",
                   help="calibration tokens per selection stage, increasing (survivors 2,..,1)")
    p.add_argument("--refine-seq-len", type=int, default=256, help="tokens per KL window")
    p.add_argument("--model", default=None, help="floating-point reference model (default: the checkpoint's source)")
    p.add_argument("--calibration", default=None, help="KL text (default <data>/wikitext-2/valid.txt)")
    p.add_argument("--seed", type=int, default=0, help="seed for the evolution and the KL windows")
    p.set_defaults(func=run)


def options(args: argparse.Namespace):
    """The parsed arguments as the library's SearchOptions."""
    from matq_compile.kl_fitness import RefineOptions, stage_tokens
    from matq_compile.search.tables import parse_levels
    from matq_compile.search_stage import SearchOptions

    refine = RefineOptions(args.refine_generations, args.refine_offspring, stage_tokens(args.refine_tokens),
                           args.refine_seq_len, args.model, args.calibration, args.seed)
    return SearchOptions(parse_levels(args.levels), args.proxy, args.ties, args.target, args.db_dir,
                         args.latency_table, not args.no_measure, args.m_bucket, args.runner, rpc_from_args(args),
                         seed=args.seed, refine=refine, switchable=args.switchable, planes=args.planes,
                         act=args.act)


def run(args: argparse.Namespace) -> int:
    from matq_compile import search_stage
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.cli import preflight
    from matq_compile.search.budget import parse_budget

    preflight.out_dir(args.out)
    preflight.at_least(args.sweep, 0, "--sweep")
    opts = options(args)
    budgets = [parse_budget(b) for b in args.budget]
    if not budgets and args.sweep == 0:
        raise ValueError("give at least one --budget, or --sweep N")
    ckpt = load_checkpoint(args.checkpoint)
    if args.sweep:
        search_stage.search_front(ckpt, args.sweep, args.sweep_kind, budgets, opts, args.out)
    else:
        search_stage.search_plan(ckpt, budgets, opts, args.out)
    return 0
