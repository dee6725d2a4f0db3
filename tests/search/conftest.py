"""Synthetic search tables: llama-named layers, proxy falling ~4x per bit, latency rising with bits."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile.search.tables import ByteModel, LatencyTable, build_table, latency_keys, layers_from_sensitivity

BLOCK = (("self_attn.q_proj", 64, 64), ("self_attn.k_proj", 32, 64), ("self_attn.v_proj", 32, 64),
         ("self_attn.o_proj", 64, 64), ("mlp.gate_proj", 128, 64), ("mlp.up_proj", 128, 64),
         ("mlp.down_proj", 64, 128))


def synthetic_sensitivity(rng: np.random.Generator, n_blocks: int, levels=(2, 3, 4, 6, 8), group: int = 32,
                          layers_per_block: int = 7) -> dict:
    sens = {}
    for i in range(n_blocks):
        for suffix, n, k in BLOCK[:layers_per_block]:
            base = rng.uniform(0.2, 3.0)
            nmse = {str(b): float(base * 4.0 ** (2 - b) * rng.uniform(0.7, 1.3)) for b in levels}
            sens[f"model.layers.{i}.{suffix}"] = {
                "numel": n * k, "shape": [n, k], "group": group, "nmse": nmse,
                "loss": {b: v * 10 for b, v in nmse.items()}, "rel_mse": {b: v / 3 for b, v in nmse.items()}}
    return sens


def synthetic_latency(rng: np.random.Generator, sens: dict, levels=(2, 3, 4, 6, 8), m_bucket: int = 1,
                      target: str = "llvm-test", db_hash: str = "d" * 64) -> LatencyTable:
    """Every kernel the model needs, the fused sibling kernels included."""
    entries = {}
    for key in latency_keys(layers_from_sensitivity(sens), levels, m_bucket):
        entries[key] = float(1e-6 * (2 + key.N * key.K * key.bits / 4096) * rng.uniform(0.8, 1.2))
    return LatencyTable(target, "0.27.0", db_hash, entries)


@pytest.fixture
def make_table():
    def make(seed: int = 0, n_blocks: int = 2, levels=(2, 3, 4, 6, 8), layers_per_block: int = 7):
        rng = np.random.default_rng(seed)
        sens = synthetic_sensitivity(rng, n_blocks, levels, layers_per_block=layers_per_block)
        lat = synthetic_latency(rng, sens, levels)
        return build_table(sens, levels, latency=lat, byte_model=ByteModel())
    return make


@pytest.fixture
def synthetic():
    """(sensitivity maker, latency maker) for tests that build tables themselves."""
    return synthetic_sensitivity, synthetic_latency


@pytest.fixture(scope="session")
def tiny_search_ckpt(tmp_path_factory, tiny_llama_tok_dir):
    """(checkpoint dir, model dir with a byte tokenizer): RTN-8 parents of the tiny Llama, group 32, with a
    sensitivity table from a random-activation Hessian."""
    import torch
    from transformers import AutoModelForCausalLM

    from matq_compile.ckpt import save_checkpoint
    from matq_compile.config import QuantSpec
    from matq_compile.quant import quantize_weight
    from matq_compile.quant.sensitivity import layer_sensitivity

    root = tmp_path_factory.mktemp("search_ckpt")
    model_dir = tiny_llama_tok_dir
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    spec = QuantSpec(method="rtn", bits=8, group_size=32, sym=True, levels=(2, 3, 4, 5, 6, 7, 8))
    gen = torch.Generator().manual_seed(0)
    layers, sens = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            W = module.weight.detach()
            X = torch.randn(512, W.shape[1], generator=gen)
            layers[name] = quantize_weight(W, None, spec)
            sens[name] = layer_sensitivity(W, layers[name], X.T @ X / 512, spec.levels, spec.slice_rule)
    quantized = {f"{n}.weight" for n in layers}
    tensors = {k: v for k, v in model.state_dict().items() if k not in quantized and k != "lm_head.weight"}
    ckpt = save_checkpoint(root / "ckpt", layers=layers, tensors=tensors, spec=spec, sensitivity=sens,
                           source={"model": str(model_dir)}, extra_files={"config.json": model_dir / "config.json"})
    return ckpt, model_dir
