"""`matq eval`: WikiText-2 perplexity of a checkpoint (uniform slice or per-layer plan) or of a float model."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="perplexity of a checkpoint slice, a bit plan, or the float model",
                              description=__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="checkpoint directory written by `matq quantize`")
    what.add_argument("--model", help="float model: known name (smollm2-135m) or Hugging Face directory")
    bits = p.add_mutually_exclusive_group()
    bits.add_argument("--bits", type=int, help="uniform slice width for every layer (2..8)")
    bits.add_argument("--plan", type=Path, help="per-layer bits JSON from `matq search`")
    p.add_argument("--windows", type=int, default=4, help="number of test windows (default 4)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per window")
    p.add_argument("--text", type=Path, default=None, help="test text (default: <data>/wikitext-2-raw)")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward")
    p.add_argument("--cache-dir", type=Path, default=None, help="model cache for --model")
    p.add_argument("--out", type=Path, default=None, help="write eval.json here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matq_compile.cli import preflight
    from matq_compile.evaluate import EvalSpec, eval_windows, perplexity
    from matq_compile.io_utils import write_json

    preflight.in_file(args.text, "--text")  # before the model loads
    preflight.in_file(args.plan, "--plan")
    preflight.out_file(args.out, "--out")
    preflight.at_least(args.windows, 1, "--windows")
    preflight.at_least(args.batch_size, 1, "--batch-size")

    spec = EvalSpec(args.seq_len, args.windows, None if args.text is None else str(args.text), args.batch_size)
    spec.text_path()  # the default test text too, before the model loads
    if args.checkpoint is not None:
        model, tokenizer, record = _checkpoint_model(args)
    else:
        if args.bits is not None or args.plan is not None:
            raise ValueError("--bits/--plan apply to --checkpoint; --model evaluates the float model")
        model, tokenizer, record = _float_model(args)
    windows = eval_windows(tokenizer, spec)
    result = perplexity(model, windows, spec.batch_size)
    log.info("perplexity %.4f over %d x %d tokens (%s)", result.ppl, result.n_windows, result.seq_len,
             record["what"])
    if args.out is not None:
        write_json(args.out, record | {"eval": spec.to_dict(), "result": result.to_dict()})
    return 0


def _checkpoint_model(args: argparse.Namespace):
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.evaluate import load_tokenizer, model_from_checkpoint
    from matq_compile.search.allocation import load_plan
    from matq_compile.slicing import check_bits

    if args.bits is None and args.plan is None:
        raise ValueError("--checkpoint needs --bits or --plan")
    ckpt = load_checkpoint(args.checkpoint)
    if args.plan is not None:
        bits = dict(load_plan(args.plan, ckpt.layer_names, ckpt.hash).layers)
        what = f"plan {args.plan}"
    else:
        bits = check_bits(args.bits)
        what = f"uniform {bits}-bit slice"
    model = model_from_checkpoint(ckpt, bits)
    record = {"what": what, "checkpoint": str(args.checkpoint), "checkpoint_hash": ckpt.hash,
              "bits": bits if isinstance(bits, int) else None, "plan": None if args.plan is None else str(args.plan)}
    return model, load_tokenizer(ckpt.path), record


def _float_model(args: argparse.Namespace):
    from matq_compile.evaluate import load_model
    from matq_compile.model_source import model_provenance, resolve_model

    model_dir = resolve_model(args.model, args.cache_dir)
    model, tokenizer = load_model(model_dir)
    prov = model_provenance(model_dir)
    return model, tokenizer, {"what": f"float model {args.model}", "model": prov["source"],
                              "model_sha256": prov["sha256"]}
