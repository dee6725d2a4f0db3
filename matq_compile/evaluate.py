"""Perplexity and KL evaluation of float and fake-quantized models (spec section 8).

Perplexity: the test text is tokenized once, cut into non-overlapping windows of T tokens from token 0 (partial tail
dropped), every window is scored on its own (positions 1..T-1, no carried context) in float32, and
PPL = exp(sum NLL / number of predicted tokens).

Fake quantization replaces each quantized linear's weight by the dequantized r-bit slice of its parent codes in
the original column order, so an unmodified Hugging Face model computes exactly what a sliced kernel computes.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from matq_compile import data
from matq_compile._log import progress
from matq_compile.slicing import check_bits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSpec:
    """Which perplexity to measure."""

    seq_len: int = 1024          # tokens per window
    n_windows: int | None = 4    # first n windows; None = all
    text: str | None = None      # test text path; None = <data>/wikitext-2-raw/wiki.test.raw
    batch_size: int = 1          # windows per forward

    def __post_init__(self) -> None:
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ValueError(f"eval seq_len must be an integer >= 2, got {self.seq_len!r}")
        if self.n_windows is not None and (not isinstance(self.n_windows, int) or self.n_windows < 1):
            raise ValueError(f"eval n_windows must be a positive integer or None, got {self.n_windows!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"eval batch_size must be a positive integer, got {self.batch_size!r}")

    def text_path(self) -> Path:
        return Path(self.text) if self.text is not None else data.data_file(data.WIKITEXT_TEST)

    def to_dict(self) -> dict:
        return {"seq_len": self.seq_len, "n_windows": self.n_windows, "text": str(self.text_path()),
                "batch_size": self.batch_size}


@dataclass(frozen=True)
class PPLResult:
    ppl: float
    nll_sum: float
    n_predicted: int
    n_windows: int
    seq_len: int

    def to_dict(self) -> dict:
        return {"ppl": self.ppl, "nll_sum": self.nll_sum, "n_predicted": self.n_predicted,
                "n_windows": self.n_windows, "seq_len": self.seq_len}


def load_model(model_dir: str | os.PathLike):
    """A Hugging Face causal LM in float32, eval mode, and its tokenizer (None if the directory has none)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, load_tokenizer(model_dir)


def load_tokenizer(model_dir: str | os.PathLike):
    """The directory's tokenizer, or None when it ships none (test models)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    return AutoTokenizer.from_pretrained(model_dir)


def eval_windows(tokenizer, spec: EvalSpec):
    """[n, T] test windows for the spec (tokenized once, no special tokens)."""
    if tokenizer is None:
        raise ValueError("perplexity evaluation needs a tokenizer; the model directory has none")
    tokens = data.tokenize(tokenizer, data.read_text(spec.text_path()))
    return data.eval_windows(tokens, spec.seq_len, spec.n_windows)


def perplexity(model, windows, batch_size: int = 1) -> PPLResult:
    """Perplexity of `model` over independent windows [n, T] (float32 log-softmax)."""
    import torch
    import torch.nn.functional as F

    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [n, T>=2] token ids, got {tuple(windows.shape)}")
    nll, count = 0.0, 0
    batches = list(torch.split(windows, batch_size))
    with torch.no_grad():
        for batch in progress(batches, desc="perplexity"):
            logits = model(input_ids=batch, use_cache=False).logits.float()
            targets = batch[:, 1:]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   reduction="sum")
            nll += float(loss)
            count += targets.numel()
    return PPLResult(math.exp(nll / count), nll, count, int(windows.shape[0]), int(windows.shape[1]))


def fake_quantize(model, ckpt, bits: int | dict[str, int]):
    """Load each quantized layer's dequantized slice into `model` (in place; returns it).

    `bits` is one precision for every layer or {layer: bits} covering exactly the checkpoint's layers.
    """
    import torch

    names = list(ckpt.layer_names)
    plan = _bits_plan(names, bits)
    with torch.no_grad():
        for name in names:
            module = _linear(model, name)
            w = ckpt.dequant(name, plan[name])
            if tuple(w.shape) != tuple(module.weight.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(w.shape)} != model shape "
                                 f"{tuple(module.weight.shape)}")
            module.weight.copy_(w.to(module.weight.dtype))
    return model


def model_from_checkpoint(ckpt, bits: int | dict[str, int]):
    """A float32 Hugging Face model built from the checkpoint alone (its config.json, float tensors, parents)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (ckpt.path / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {ckpt.path} has no config.json; it cannot rebuild the model")
    config = AutoConfig.from_pretrained(ckpt.path)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt.tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected_missing = {f"{name}.weight" for name in ckpt.layer_names} | _tied_keys(model)
    missing = sorted(set(missing) - expected_missing)
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt.path} does not match its config.json: missing {missing[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    return fake_quantize(model, ckpt, bits)


def _tied_keys(model) -> set[str]:
    """State-dict names that alias the input embedding (a tied lm_head is stored once, as the embedding)."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or out.weight is not inp.weight:
        return set()
    return {k for k, v in model.state_dict(keep_vars=True).items() if v is inp.weight}


def _bits_plan(names: list[str], bits: int | dict[str, int]) -> dict[str, int]:
    if isinstance(bits, dict):
        unknown = sorted(set(bits) - set(names))
        if unknown:
            raise ValueError(f"bits given for layers not in the checkpoint: {unknown[:5]}"
                             f"{' ...' if len(unknown) > 5 else ''}")
        missing = [n for n in names if n not in bits]
        if missing:
            raise ValueError(f"no bits given for {len(missing)} checkpoint layers, e.g. {missing[0]}")
        return {n: check_bits(bits[n]) for n in names}
    b = check_bits(bits)
    return {n: b for n in names}


def _linear(model, name: str):
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"checkpoint layer {name!r} does not exist in the model") from None
    if not hasattr(module, "weight"):
        raise ValueError(f"checkpoint layer {name!r} is not a linear layer in the model")
    return module


# ---- KL divergence to a reference model (fitness for the bit-width search) ----

@dataclass(frozen=True)
class RefDist:
    """Reference next-token distributions for windows [n, T]: top-k log-probs (k = V when topk is None).

    logp [n, T-1, k] float32 and index [n, T-1, k] int64 of the reference's k most likely tokens per position;
    the remaining probability mass is treated as one extra "tail" outcome.
    """

    windows: object
    logp: object
    index: object
    vocab: int

    @property
    def full(self) -> bool:
        return self.logp.shape[-1] == self.vocab


def reference_distribution(model, windows, topk: int | None = None, batch_size: int = 1) -> RefDist:
    """Record the reference model's (top-k) next-token log-probabilities on `windows`."""
    import torch

    logps, idxs, vocab = [], [], 0
    with torch.no_grad():
        for batch in torch.split(windows, batch_size):
            lp = torch.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].float(), dim=-1)
            vocab = lp.shape[-1]
            k = lp.shape[-1] if topk is None else min(topk, lp.shape[-1])
            values, index = lp.topk(k, dim=-1)
            logps.append(values)
            idxs.append(index)
    return RefDist(windows, torch.cat(logps), torch.cat(idxs), vocab)


def kl_divergence(ref: RefDist, model, batch_size: int = 1) -> float:
    """Token-mean KL(p_ref || p_model) over the reference's windows, in nats.

    With top-k references this is the exact KL between the two distributions coarsened to the reference's top-k
    tokens plus one tail bucket (a lower bound of the full KL; equal to it when k = V).
    """
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(torch.split(ref.windows, batch_size)):
            rows = slice(i * batch_size, i * batch_size + batch.shape[0])
            lq = torch.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].float(), dim=-1)
            total += float(_coarse_kl(ref.logp[rows], lq.gather(-1, ref.index[rows]), not ref.full).sum())
            count += batch.shape[0] * (batch.shape[1] - 1)
    return total / count


def _coarse_kl(lp, lq, tail: bool):
    """Per-position KL over the k listed outcomes, plus the tail bucket when k < V (float64 for small masses)."""
    import torch

    lp, lq = lp.double(), lq.double()
    kl = (lp.exp() * (lp - lq)).sum(-1)
    if not tail:
        return kl
    tail_p = (1.0 - lp.exp().sum(-1)).clamp(min=0.0)
    tail_q = (1.0 - lq.exp().sum(-1)).clamp(min=1e-12)  # fp32 log-probs: masses below ~1e-6 are rounding noise
    has_tail = tail_p > 1e-6
    return kl + torch.where(has_tail, tail_p * (torch.log(tail_p.clamp(min=1e-12)) - torch.log(tail_q)),
                            torch.zeros_like(tail_p))
