"""The quantize stage: model + calibration + QuantSpec -> a sliceable checkpoint, and its per-slice perplexity.

`matq quantize` parses arguments into QuantSpec / CalibSpec / EvalSpec and calls these; benchmarks call them too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXTRA_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")


@dataclass
class Quantized:
    """What a quantization run leaves for evaluation: the float model and tokenizer it loaded, its wall time, the
    checkpoint written and the model directory."""

    model: Any
    tokenizer: Any
    seconds: float
    checkpoint: Path
    model_dir: Path


def calibration_source(given: str | None) -> str:
    if given is not None:
        return given
    from matq_compile import data

    try:
        path = data.data_file(data.WIKITEXT_VALID)
    except FileNotFoundError:
        log.info("no calibration text found; sampling calibration sequences from the model itself")
        return "self"
    return str(path)


def quantize_to_checkpoint(model_name: str, out: Path, spec, calib, cache_dir=None, batch_size: int = 8) -> Quantized:
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
    return Quantized(model, tokenizer, quantized.seconds, path, model_dir)


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


def slice_table(ckpt_dir: Path, evals, bits: tuple[int, ...], result: Quantized) -> dict:
    """Perplexity of the float model and of every requested uniform slice; logged as a markdown table."""
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.evaluate import eval_windows, fake_quantize, load_model, perplexity

    ckpt = load_checkpoint(ckpt_dir)
    model, windows = result.model, eval_windows(result.tokenizer, evals)
    rows = {"fp": perplexity(load_model(result.model_dir)[0], windows, evals.batch_size).ppl}
    for b in bits:
        rows[str(b)] = perplexity(fake_quantize(model, ckpt, b), windows, evals.batch_size).ppl
    lines = ["| slice | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|",
             "| PPL | " + " | ".join(f"{v:.2f}" for v in rows.values()) + " |"]
    log.info("WikiText-2 test perplexity, %d x %d tokens, %s:\n%s", windows.shape[0], windows.shape[1],
             ckpt.spec.method, "\n".join(lines))
    return {"checkpoint": str(ckpt_dir), "checkpoint_hash": ckpt.hash, "eval": evals.to_dict(),
            "quantize_seconds": result.seconds, "ppl": rows}
