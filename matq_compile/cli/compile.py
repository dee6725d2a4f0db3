"""`matq compile`: a checkpoint at a uniform width or a per-layer plan -> a deployable build directory.
With --onnx, a non-LLM ONNX model: its constant-weight MatMuls are quantized (RTN-8 parent) and sliced to --bits."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from matq_compile.cli.tune import plane_list
from matq_compile.lower.kv_cache import DTYPES as KV_DTYPES

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("compile", help="compile a checkpoint slice or plan into a runtime module",
                              description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint directory written by `matq quantize`")
    src.add_argument("--onnx", type=Path, help="a non-LLM ONNX model (MatMuls on constant weights get quantized)")
    bits = p.add_mutually_exclusive_group()
    bits.add_argument("--bits", help="uniform slice width for every layer (2..8); with --switchable, the widths the "
                                     "build serves (comma list, default 2,3,4,6,8)")
    bits.add_argument("--plan", type=Path, help="per-layer bits JSON from `matq search` (made for this checkpoint)")
    p.add_argument("--switchable", action="store_true",
                   help="one build serving several widths from one copy of the parent's bit planes; the width "
                        "(or a plan) is chosen at run time (`matq run --bits`, Model.set_bits / set_plan)")
    p.add_argument("--planes", type=plane_list, default=None,
                   help="with --switchable: plane widths, high bits first, each 1, 2, 4 or 8 (e.g. 4,4); fewer, "
                        "wider planes cost the narrow widths traffic and save the wide ones decode work (default: a "
                        "plane boundary at every width's cut)")
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
    p.add_argument("--act", choices=("float", "int8"), default="float",
                   help="activations of the quantized linears: float (default; exact, the model as evaluated) or "
                        "int8 (quantized per weight group, integer dot products; x86 CPU targets with AVX2, "
                        "AVX-VNNI or AVX512-VNNI)")
    p.add_argument("--max-seq-len", type=int, default=1024, help="static KV-cache length (multiple of 16)")
    p.add_argument("--kv-dtype", choices=KV_DTYPES, default="float32",
                   help="KV-cache elements on CPU targets: float32 (default; exact) or float16 (half the cache "
                        "memory and the attention's traffic; products still in float32)")
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
    bits, widths = _bits(args)

    opts = CompileOptions(target=args.target, db_dir=None if args.db_dir is None else str(args.db_dir),
                          allow_untuned=args.allow_untuned, head_dtype=args.head_dtype,
                          max_seq_len=args.max_seq_len, dump_dir=None if args.dump_ir is None else str(args.dump_ir),
                          fuse_siblings=not args.no_fuse_siblings, embed_dtype=args.embed_dtype,
                          switch_widths=widths, switch_planes=args.planes, act=args.act, kv_dtype=args.kv_dtype)
    if args.onnx is not None:
        if bits is None or widths is not None:
            raise ValueError("--onnx takes one uniform --bits (a plan names checkpoint layers)")
        if args.kv_dtype != "float32":
            raise ValueError("--kv-dtype is for language models; an --onnx graph has no KV cache")
        out = compile_onnx(args.onnx, args.out, bits, opts)
    else:
        out = compile_model(args.checkpoint, args.out, bits=bits, plan=args.plan, opts=opts)
    log.info("build written to %s", out)
    return 0


def _bits(args: argparse.Namespace) -> tuple[int | None, tuple[int, ...] | None]:
    """(uniform width, switchable widths) from --bits / --switchable; exactly one of --bits, --plan, --switchable
    chooses what is compiled."""
    from matq_compile.planes import DEFAULT_WIDTHS, check_widths

    try:
        listed = None if args.bits is None else [int(b) for b in str(args.bits).split(",")]
    except ValueError:
        raise ValueError(f"--bits must be an integer or a comma list of integers, got {args.bits!r}") from None
    if args.planes is not None and not args.switchable:
        raise ValueError("--planes is a switchable build's layout; add --switchable")
    if args.switchable:
        if args.plan is not None:
            raise ValueError("--switchable takes widths (--bits 2,3,4), not a plan: plans are chosen at run time")
        return None, check_widths(listed or DEFAULT_WIDTHS)
    if listed is None and args.plan is None:
        raise ValueError("give --bits, --plan or --switchable")
    if listed is not None and len(listed) != 1:
        raise ValueError(f"--bits {args.bits} lists several widths; add --switchable for a build serving them all")
    return (None if listed is None else listed[0]), None
