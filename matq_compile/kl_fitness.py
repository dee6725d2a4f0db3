"""KL fitness for the search's refinement: token-mean KL(p_fp || p_plan) of the fake-quantized model on
calibration windows (held apart from the quantizer's), re-loading only the layers whose width changed."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from matq_compile.search.evolution import EvolutionConfig


@dataclass(frozen=True)
class RefineOptions:
    """EvoPress-style refinement: generations (0 = MILP only), children per generation, KL tokens per selection
    stage (increasing; survivors ..., 4, 2, 1), tokens per KL window, the float reference model (default: the
    checkpoint's source) and the KL text (default <data>/wikitext-2/valid.txt)."""

    generations: int = 0
    offspring: int = 6
    stage_tokens: tuple[int, ...] = (255, 1020)
    seq_len: int = 256
    model: str | None = None
    calibration: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        t = list(self.stage_tokens)
        if not t or t != sorted(t) or t[0] < 1:
            raise ValueError(f"KL stage tokens must be positive and increasing, got {self.stage_tokens!r}")

    def evolution_config(self) -> EvolutionConfig:
        n = len(self.stage_tokens)
        survivors = [max(1, 2 ** (n - 1 - i)) for i in range(n)]  # ..., 4, 2, 1
        return EvolutionConfig(generations=self.generations, offspring=self.offspring,
                               stages=tuple(zip(survivors, self.stage_tokens)), seed=self.seed)


def stage_tokens(text: str) -> tuple[int, ...]:
    """'255,1020' -> (255, 1020); positive and increasing."""
    try:
        tokens = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise ValueError(f"--refine-tokens must be comma-separated integers, got {text!r}") from e
    if not tokens or list(tokens) != sorted(tokens) or tokens[0] < 1:
        raise ValueError(f"--refine-tokens must be positive and increasing, got {text!r}")
    return tokens


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


def kl_fitness(ckpt, opts: RefineOptions) -> KLFitness:
    from matq_compile import data, evaluate
    from matq_compile.model_source import resolve_model

    model_ref = opts.model or ckpt.source.get("model")
    if not model_ref:
        raise ValueError("KL refinement needs the floating-point model: pass --model")
    model, tokenizer = evaluate.load_model(resolve_model(model_ref))
    text = opts.calibration or data.data_file(data.WIKITEXT_VALID)
    tokens = data.tokenize(tokenizer, data.read_text(text))
    n_windows = math.ceil(opts.stage_tokens[-1] / (opts.seq_len - 1))
    # offsets drawn from another stream than the quantizer's calibration seeds (0, 1, 2, ...)
    windows = data.calibration_windows(tokens, n_windows, opts.seq_len, seed=10_000 + opts.seed)
    return KLFitness(model, ckpt, windows)
