"""`matq quantize`: model + calibration -> sliceable checkpoint, then the per-slice perplexity table."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

EXTRA_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")


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
                   help="matgptq settings to start from (R, λ, μ, error feedback, refit); the flags below override "
                        "them. reference = MatGPTQ as published; default = chosen from the quantizer study")
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
    g.add_argument("--act-order", action="store_true")
    g.add_argument("--static-groups", action="store_true",
                   help="group grids fixed from the unquantized weights before any update; with --act-order the "
                        "checkpoint stores no perm (deployment unchanged)")
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
    from matq_compile.config import QuantSpec
    from matq_compile.data import CalibSpec
    from matq_compile.evaluate import EvalSpec

    spec = QuantSpec(method=args.method, bits=args.bits, group_size=args.group_size, sym=args.sym,
                     slice_rule=args.slice_rule, rel_damp=args.rel_damp, block_size=args.block_size,
                     act_order=args.act_order, static_groups=args.static_groups,
                     true_sequential=args.true_sequential, levels=args.levels,
                     **recipe_fields(args))
    calib = CalibSpec(_calibration_source(args.calibration), args.calibration_samples, args.calibration_seq_len,
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
    """R, λ, μ, feedback and refit: the recipe's values (matgptq only), overridden by flags given explicitly."""
    from matq_compile.quant.recipes import RECIPE_FIELDS, recipe

    base = recipe(args.recipe) if args.method == "matgptq" else {}
    given = {f: getattr(args, f) for f in RECIPE_FIELDS if getattr(args, f) is not None}
    out = {**base, **given}
    if "lambdas" in base and "lambdas" not in given and "trained_bits" in given:
        # the recipe's weights apply to the slices the user kept (λ_8 included); others default to 1
        out["lambdas"] = tuple((r, w) for r, w in base["lambdas"] if r in given["trained_bits"])
    return out


def _calibration_source(given: str | None) -> str:
    if given is not None:
        return given
    from matq_compile import data

    try:
        path = data.data_file(data.WIKITEXT_VALID)
    except FileNotFoundError:
        log.info("no calibration text found; sampling calibration sequences from the model itself")
        return "self"
    return str(path)


def quantize_to_checkpoint(model_name: str, out: Path, spec, calib, cache_dir=None, batch_size: int = 8) -> dict:
    """Load, calibrate, quantize and save; returns the loaded model/tokenizer, timing and paths for evaluation."""
    from matq_compile import data
    from matq_compile.ckpt import save_checkpoint
    from matq_compile.evaluate import load_model
    from matq_compile.model_source import KNOWN_MODELS, model_provenance, resolve_model
    from matq_compile.quant.sequential import quantize_model

    model_dir = resolve_model(model_name, cache_dir)
    model, tokenizer = load_model(model_dir)
    log.info("calibration: %s, %d x %d tokens, seed %d", calib.source, calib.n_samples, calib.seq_len, calib.seed)
    tokens = data.load_calibration(calib, tokenizer=tokenizer, model=model)
    quantized = quantize_model(model, tokens, spec, batch_size=batch_size, tensor_dtype=_source_dtype(model_dir))
    provenance = model_provenance(model_dir)
    # "model" is what resolve_model() accepts again (known name or absolute path); "model_source" is provenance
    model_ref = model_name if model_name in KNOWN_MODELS else str(Path(model_dir).resolve())
    source = {"model": model_ref, "model_source": provenance["source"], "model_sha256": provenance["sha256"],
              "calibration": calib.to_dict(),
              "calibration_sha256": _calibration_hash(calib), "calibration_tokens": calib.n_tokens}
    extra = {name: model_dir / name for name in EXTRA_FILES if (model_dir / name).is_file()}
    path = save_checkpoint(out, layers=quantized.layers, tensors=quantized.tensors, spec=spec,
                           sensitivity=quantized.sensitivity, source=source, extra_files=extra)
    log.info("wrote %s (%d quantized linears, %.1f s)", path, len(quantized.layers), quantized.seconds)
    return {"model": model, "tokenizer": tokenizer, "seconds": quantized.seconds, "checkpoint": path,
            "model_dir": model_dir}


def _source_dtype(model_dir: Path):
    """The dtype the float tensors had on disk, so the checkpoint does not inflate them to float32."""
    import json

    import torch

    cfg = json.loads((model_dir / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _calibration_hash(calib) -> str | None:
    from matq_compile.io_utils import sha256_file

    path = Path(calib.source)
    return sha256_file(path) if calib.source not in ("self",) and not calib.source.startswith("hf:") \
        and path.is_file() else None


def slice_table(ckpt_dir: Path, evals, bits: tuple[int, ...], result: dict) -> dict:
    """Perplexity of the float model and of every requested uniform slice; logged as a markdown table."""
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.evaluate import eval_windows, fake_quantize, load_model, perplexity

    ckpt = load_checkpoint(ckpt_dir)
    model, windows = result["model"], eval_windows(result["tokenizer"], evals)
    rows = {"fp": perplexity(load_model(result["model_dir"])[0], windows, evals.batch_size).ppl}
    for b in bits:
        rows[str(b)] = perplexity(fake_quantize(model, ckpt, b), windows, evals.batch_size).ppl
    lines = ["| slice | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|",
             "| PPL | " + " | ".join(f"{v:.2f}" for v in rows.values()) + " |"]
    log.info("WikiText-2 test perplexity, %d x %d tokens, %s:\n%s", windows.shape[0], windows.shape[1],
             ckpt.spec.method, "\n".join(lines))
    return {"checkpoint": str(ckpt_dir), "checkpoint_hash": ckpt.hash, "eval": evals.to_dict(),
            "quantize_seconds": result["seconds"], "ppl": rows}
