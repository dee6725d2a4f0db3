"""The Relax Llama (float, no quantization) against HF transformers LlamaForCausalLM: every entry function,
tied and untied heads, attention bias, through the KV cache; config validation."""
from __future__ import annotations

import json

import numpy as np
import pytest

IDS = [1, 5, 9, 20, 33, 7, 100, 200, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 250]


def _run(hf_dir, model) -> None:
    """Compile the float graph (no linear lowering) and compare prefill/decode/score with the HF model."""
    import torch
    from safetensors.numpy import load_file

    from matq_compile import targets
    from matq_compile._tvm import tvm
    from matq_compile.lower.frontend import LlamaConfig, build_llama
    from tvm import relax

    cfg = LlamaConfig.from_hf(json.loads((hf_dir / "config.json").read_text()), max_seq_len=48)
    mod, params = build_llama(cfg, chunk=8)
    ex = tvm.compile(mod, target=targets.load("host").to_tvm())
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    weights = load_file(hf_dir / "model.safetensors")
    args = [tvm.runtime.tensor(weights[name], dev) for name, _, _ in params]
    caches = [tvm.runtime.empty(s, "float32", dev) for s in cfg.cache_shapes]
    shape = tvm.runtime.ShapeTuple
    with torch.no_grad():
        ref = model(torch.tensor([IDS])).logits[0].numpy()
    ids = np.array([IDS], "int32")
    score = np.concatenate([vm["score"](tvm.runtime.tensor(ids[:, s:s + 8], dev), shape([s]), *caches, *args)[0]
                            .numpy() for s in (0, 8)])
    np.testing.assert_allclose(score, ref[:16], rtol=1e-4, atol=1e-4)
    # prefill of 5 tokens padded to the chunk, then decode steps continue from position 5
    pad = np.zeros((1, 8), "int32")
    pad[0, :5] = IDS[:5]
    out = vm["prefill"](tvm.runtime.tensor(pad, dev), shape([0]), shape([4]), *caches, *args)[0].numpy()
    np.testing.assert_allclose(out[0], ref[4], rtol=1e-4, atol=1e-4)
    for pos in range(5, 9):
        out = vm["decode"](tvm.runtime.tensor(ids[:, pos:pos + 1], dev), shape([pos]), *caches, *args)[0].numpy()
        np.testing.assert_allclose(out[0], ref[pos], rtol=1e-4, atol=1e-4)
    # a prompt of 13 tokens: extend writes the first chunk's keys and values (no logits), prefill the rest
    caches = [tvm.runtime.empty(s, "float32", dev) for s in cfg.cache_shapes]
    kv = vm["extend"](tvm.runtime.tensor(ids[:, :8], dev), shape([0]), *caches, *args)
    assert len(kv) == 2 and tuple(kv[0].shape) == cfg.cache_shapes[0]
    pad[0, :5] = IDS[8:13]
    out = vm["prefill"](tvm.runtime.tensor(pad, dev), shape([8]), shape([4]), *caches, *args)[0].numpy()
    np.testing.assert_allclose(out[0], ref[12], rtol=1e-4, atol=1e-4)


def test_tied_gqa_matches_hf(tiny_llama_dir, tiny_llama):
    _run(tiny_llama_dir, tiny_llama)


def test_untied_with_attention_bias_matches_hf(tmp_path):
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(3)
    cfg = HFConfig(vocab_size=256, hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=6,
                   num_key_value_heads=3, tie_word_embeddings=False, attention_bias=True, rope_theta=5000.0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases (HF initialises them to zero)
        for name, p in model.named_parameters():
            if name.endswith("proj.bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    _run(tmp_path, model)


def test_exported_parameters_carry_hf_names(tiny_llama):
    from matq_compile.lower.frontend import LlamaConfig, build_llama

    cfg = LlamaConfig.from_hf(tiny_llama.config.to_dict(), max_seq_len=32)
    _, params = build_llama(cfg, chunk=16, functions=("decode",))
    hf = {k: tuple(v.shape) for k, v in tiny_llama.state_dict().items() if k != "lm_head.weight"}
    assert {name: shape for name, shape, _ in params} == hf


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2"}, "unsupported model_type"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "only the default RoPE"),
    ({"num_key_value_heads": 3}, "not a multiple"),
    ({"mlp_bias": True}, "mlp_bias"),
])
def test_config_validation(tiny_llama, change, message):
    from matq_compile.lower.frontend import LlamaConfig

    with pytest.raises(ValueError, match=message):
        LlamaConfig.from_hf(tiny_llama.config.to_dict() | change)


def test_max_seq_len_must_fit_the_attention_tile(tiny_llama):
    from matq_compile.lower.frontend import LlamaConfig

    with pytest.raises(ValueError, match="multiple of 16"):
        LlamaConfig.from_hf(tiny_llama.config.to_dict(), max_seq_len=50)
