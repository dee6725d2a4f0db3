"""`matq compile`: a checkpoint at a uniform width or a per-layer plan -> a deployable build directory.
With --onnx, a non-LLM ONNX model: its constant-weight MatMuls are quantized (RTN-8 parent) and sliced to --bits."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("compile", help="compile a checkpoint slice or plan into a runtime module",
                              description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint directory written by `matq quantize`")
    src.add_argument("--onnx", type=Path, help="a non-LLM ONNX model (MatMuls on constant weights get quantized)")
    bits = p.add_mutually_exclusive_group(required=True)
    bits.add_argument("--bits", type=int, help="uniform slice width for every layer (2..8)")
    bits.add_argument("--plan", type=Path, help="per-layer bits JSON from `matq search` (made for this checkpoint)")
    p.add_argument("--target", default="host", help="target name (targets/*.toml or this CPU's name; default host)")
    p.add_argument("--out", type=Path, required=True, help="build directory to write (replaced atomically)")
    p.add_argument("--db-dir", type=Path, default=None,
                   help="tuning database (default: the committed schedules/db/<target>/)")
    p.add_argument("--allow-untuned", action="store_true",
                   help="compile kernels without tuning records with the default schedule (logged; slow)")
    p.add_argument("--head-dtype", choices=("float32", "float16", "int8"), default="float32",
                   help="LM-head weight on CPU targets: float32 (exact), float16 (1/2 the traffic), int8 "
                        "(per-row symmetric, 1/4)")
    p.add_argument("--embed-dtype", choices=("float32", "float16", "int8"), default="float32",
                   help="token-embedding table as stored: float32 (exact), float16, int8 (per-row symmetric; a tied "
                        "int8 head shares it)")
    p.add_argument("--max-seq-len", type=int, default=1024, help="static KV-cache length (multiple of 16)")
    p.add_argument("--no-fuse-siblings", action="store_true",
                   help="keep q/k/v and gate/up as separate kernels (default: one kernel per set where the plan "
                        "gives the set one width)")
    p.add_argument("--dump-ir", type=Path, default=None, help="write the IR after each pipeline phase here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matq_compile.cli import preflight
    from matq_compile.export import CompileOptions, compile_model, compile_onnx

    preflight.out_dir(args.out)
    preflight.out_dir(args.dump_ir, "--dump-ir")
    preflight.in_file(args.plan, "--plan")
    preflight.in_file(args.onnx, "--onnx")
    preflight.at_least(args.max_seq_len, 16, "--max-seq-len")

    opts = CompileOptions(target=args.target, db_dir=None if args.db_dir is None else str(args.db_dir),
                          allow_untuned=args.allow_untuned, head_dtype=args.head_dtype,
                          max_seq_len=args.max_seq_len, dump_dir=None if args.dump_ir is None else str(args.dump_ir),
                          fuse_siblings=not args.no_fuse_siblings, embed_dtype=args.embed_dtype)
    if args.onnx is not None:
        if args.bits is None:
            raise ValueError("--onnx takes a uniform --bits (a plan names checkpoint layers)")
        out = compile_onnx(args.onnx, args.out, args.bits, opts)
    else:
        out = compile_model(args.checkpoint, args.out, bits=args.bits, plan=args.plan, opts=opts)
    log.info("build written to %s", out)
    return 0
