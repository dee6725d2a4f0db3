"""Shared fixtures: seeds, a tiny random Llama, the shared data directory, tolerance table, gpu/slow gating."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]

# (dtype, bits) -> (rtol, atol) for float kernel outputs against a float64 reference; integer paths are exact.
TOL = {("float32", b): (1e-4, 1e-4) for b in range(2, 9)} | {("float16", b): (2e-2, 2e-2) for b in range(2, 9)}


def shared_data_dir() -> Path:
    return Path(os.environ.get("MATQ_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture
def tol():
    return lambda dtype, bits: TOL[(dtype, bits)]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if not (d / "wikitext-2" / "valid.txt").exists():
        pytest.skip(f"shared data not found at {d} (set MATQ_DATA_DIR)")
    return d


def make_tiny_llama(path: Path, seed: int = 0, hidden: int = 128, inter: int = 256, layers: int = 2) -> Path:
    """A random Llama (GQA 4/2 heads, tied embeddings) saved as a plain HF directory with a real tokenizer-free config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama") / "model")


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def pytest_collection_modifyitems(config, items):
    has_gpu = shutil.which("nvidia-smi") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
