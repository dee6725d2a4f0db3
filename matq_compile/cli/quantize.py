"""`matq quantize`: model + calibration -> sliceable checkpoint, then the per-slice perplexity table."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def lambda_list(text: str) -> tuple[tuple[int, float], ...]:
    try:
        return tuple((int(r), float(v)) for r, v in (item.split(":") for item in text.split(",") if item.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BITS:WEIGHT pairs like 8:1,4:1,3:1, got {text!r}") from None


def refit_list(text: str) -> tuple[int, ...]:
    return () if text.strip().lower() == "none" else int_list(text)


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize a model into one sliceable int8 checkpoint",
                              description=__doc__)
    p.add_argument("--model", default="smollm2-135m", help="known model name or Hugging Face directory")
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory to write (atomically)")
    p.add_argument("--cache-dir", type=Path, default=None, help="model cache (default $MATQ_CACHE or ~/.cache/matq)")
    g = p.add_argument_group("quantizer")
    g.add_argument("--method", choices=("rtn", "gptq", "matgptq"), default="matgptq")
    g.add_argument("--bits", type=int, default=8, help="grid bits for rtn/gptq baselines (matgptq: 8)")
    g.add_argument("--group-size", type=int, default=64, help="group size along in_features; -1 = per channel")
    g.add_argument("--sym", dest="sym", action="store_true", default=True, help="symmetric grid (default)")
    g.add_argument("--asym", dest="sym", action="store_false", help="asymmetric grid with uint8 zeros")
    g.add_argument("--slice-rule", choices=("round", "midpoint"), default="round")
    g.add_argument("--recipe", choices=("default", "reference"), default="default",
                   help="matgptq settings to start from (R, λ, μ, error feedback, refit, act-order); the flags below "
                        "override them. reference = MatGPTQ as published; default = chosen from the quantizer study")
    g.add_argument("--trained-bits", type=int_list, default=None, help="trained slice set R, e.g. 8,4,3")
    g.add_argument("--lambdas", type=lambda_list, default=None, help="per-slice weights, e.g. 8:1,4:1,3:1")
    g.add_argument("--mu", choices=("uniform", "lambda"), default=None,
                   help="propagated-error weights (shared feedback only)")
    g.add_argument("--error-feedback", dest="feedback", choices=("shared", "per-slice"), default=None,
                   help="shared: one error state fed Σ μ_r e_r (reference); per-slice: one state per trained slice")
    g.add_argument("--refit", type=refit_list, default=None,
                   help="slices whose group scales are refitted after the codes are fixed, e.g. 8,6,5,4,3; none")
    g.add_argument("--rel-damp", type=float, default=1e-2)
    g.add_argument("--block-size", type=int, default=128)
    g.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="quantize columns in decreasing Hessian-diagonal order (matgptq default recipe: on)")
    g.add_argument("--static-groups", action=argparse.BooleanOptionalAction, default=None,
                   help="group grids fixed from the unquantized weights before any update; with --act-order the "
                        "checkpoint stores no perm (deployment unchanged; matgptq default recipe: on)")
    g.add_argument("--true-sequential", action="store_true")
    g.add_argument("--levels", type=int_list, default=(2, 3, 4, 5, 6, 7, 8), help="levels in the sensitivity table")
    c = p.add_argument_group("calibration")
    c.add_argument("--calibration", default=None,
                   help="text file, hf:NAME[:CONFIG[:SPLIT]] or self (default: <data>/wikitext-2/valid.txt if "
                        "present, else self)")
    c.add_argument("--calibration-samples", type=int, default=16)
    c.add_argument("--calibration-seq-len", type=int, default=512)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-size", type=int, default=8, help="calibration sequences per block forward")
    e = p.add_argument_group("evaluation after quantizing")
    e.add_argument("--eval-windows", type=int, default=4, help="WikiText-2 test windows per slice; 0 = skip")
    e.add_argument("--eval-seq-len", type=int, default=1024)
    e.add_argument("--eval-bits", type=int_list, default=(8, 6, 5, 4, 3, 2))
    e.add_argument("--eval-text", type=Path, default=None, help="test text (default: <data>/wikitext-2-raw)")
    e.add_argument("--eval-json", type=Path, default=None, help="also write the table as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matq_compile.cli import preflight
    from matq_compile.config import QuantSpec
    from matq_compile.data import CalibSpec
    from matq_compile.evaluate import EvalSpec
    from matq_compile.quantize_stage import calibration_source, quantize_to_checkpoint, slice_table

    preflight.out_dir(args.out)
    preflight.out_file(args.eval_json, "--eval-json")
    preflight.in_file(args.eval_text, "--eval-text")
    preflight.group_size(args.model, args.group_size)

    spec = QuantSpec(method=args.method, bits=args.bits, group_size=args.group_size, sym=args.sym,
                     slice_rule=args.slice_rule, rel_damp=args.rel_damp, block_size=args.block_size,
                     true_sequential=args.true_sequential, levels=args.levels,
                     **recipe_fields(args))
    calib = CalibSpec(calibration_source(args.calibration), args.calibration_samples, args.calibration_seq_len,
                      args.seed)
    evals = EvalSpec(args.eval_seq_len, args.eval_windows, None if args.eval_text is None else str(args.eval_text)) \
        if args.eval_windows > 0 else None
    if evals is not None:
        from matq_compile.slicing import check_bits

        [check_bits(b) for b in args.eval_bits]
        evals.text_path()  # fail before the long part when the test text is missing
    if args.out.exists() and (not args.out.is_dir() or (any(args.out.iterdir())
                                                       and not (args.out / "matq_config.json").is_file())):
        raise FileExistsError(f"{args.out} exists and is not a matq checkpoint; refusing to replace it")
    result = quantize_to_checkpoint(args.model, args.out, spec, calib, args.cache_dir, args.batch_size)
    if evals is not None:
        table = slice_table(args.out, evals, args.eval_bits, result)
        if args.eval_json is not None:
            from matq_compile.io_utils import write_json

            write_json(args.eval_json, table)
    return 0


def recipe_fields(args: argparse.Namespace) -> dict:
    """R, λ, μ, feedback, refit and column order: the recipe's values (matgptq only), overridden by flags given
    explicitly (rtn/gptq: the flags, else QuantSpec's defaults)."""
    from matq_compile.quant.recipes import RECIPE_FIELDS, recipe

    base = recipe(args.recipe) if args.method == "matgptq" else {}
    given = {f: getattr(args, f) for f in RECIPE_FIELDS if getattr(args, f) is not None}
    out = {**base, **given}
    if "lambdas" in base and "lambdas" not in given and "trained_bits" in given:
        # the recipe's weights apply to the slices the user kept (λ_8 included); others default to 1
        out["lambdas"] = tuple((r, w) for r, w in base["lambdas"] if r in given["trained_bits"])
    return out
