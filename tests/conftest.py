"""Shared fixtures: seeds, a tiny random Llama (with or without a byte-level tokenizer), the shared data directory,
tolerance table, gpu/slow gating, a local RPC tracker + server."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py: shared by test modules (importlib import mode)

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


def save_byte_tokenizer(path: Path) -> Path:
    """Write tokenizer.json + tokenizer_config.json of a byte-level BPE with no merges (token id = byte order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = sorted(alphabet, key=lambda c: _byte_of(c))
    vocab = {c: i for i, c in enumerate(byte_chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=byte_chars[1], eos_token=byte_chars[2])
    fast.save_pretrained(path)
    return path


def _byte_of(char: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode for one character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    if ord(char) in printable:
        return ord(char)
    others = [b for b in range(256) if b not in printable]
    return others[ord(char) - 256]


@pytest.fixture(scope="session")
def tiny_llama_tok_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama plus a real byte-level tokenizer (read-only: tests copy it before writing into it)."""
    out = tmp_path_factory.mktemp("tiny_llama_tok") / "model"
    shutil.copytree(tiny_llama_dir, out)
    return save_byte_tokenizer(out)


@pytest.fixture(scope="session")
def tiny_tok_ckpt(tiny_llama_dir, tiny_llama_tok_dir, tmp_path_factory) -> Path:
    """An RTN-8 checkpoint of the tiny Llama with its byte-level tokenizer (the CLI needs one)."""
    import torch
    from transformers import AutoModelForCausalLM

    from matq_compile.ckpt import save_checkpoint
    from matq_compile.config import QuantSpec
    from matq_compile.quant.sequential import quantize_model

    tmp = tmp_path_factory.mktemp("cli")
    spec = QuantSpec(method="rtn", bits=8, group_size=32)
    qm = quantize_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(),
                        torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2)), spec)
    return save_checkpoint(tmp / "ckpt", layers=qm.layers, tensors=qm.tensors, spec=spec,
                           sensitivity=qm.sensitivity, source={"model": "tiny"},
                           extra_files={"config.json": tiny_llama_dir / "config.json",
                                        "tokenizer.json": tiny_llama_tok_dir / "tokenizer.json"})


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def pytest_collection_modifyitems(config, items):
    has_gpu = shutil.which("nvidia-smi") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(pred, what: str, timeout: float = 90.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if pred():
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up within {timeout} s")


@pytest.fixture(scope="module")
def rpc_tracker():
    """A local TVM RPC tracker with one CPU server under key matq-test (a stand-in for a remote GPU host)."""
    from tvm import rpc

    port, sport = _free_port(), _free_port()  # explicit ranges: the default end (9199) is below a free port
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(port), "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        _wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None, "rpc tracker")
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", f"--tracker=127.0.0.1:{port}",
                                   "--key=matq-test", "--host", "127.0.0.1", "--port", str(sport),
                                   "--port-end", str(sport + 1)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: "matq-test" in rpc.connect_tracker("127.0.0.1", port).text_summary(), "rpc server")
        from matq_compile import tune

        yield tune.RPCSettings("127.0.0.1", port, "matq-test", 60)
    finally:
        for p in (server, tracker):
            if p is not None:
                p.terminate()
                p.wait(timeout=10)
