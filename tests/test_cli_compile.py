"""`matq compile` and `matq run` through the CLI on a tiny Llama with a byte-level tokenizer; run never imports
torch and streams the generated text."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import matq


@pytest.fixture(scope="module")
def ckpt(tiny_tok_ckpt) -> Path:
    return tiny_tok_ckpt


def test_compile_then_run_without_torch(ckpt, tmp_path):
    out = tmp_path / "build"
    res = matq("compile", "--checkpoint", str(ckpt), "--bits", "4", "--target", "host", "--out", str(out),
               "--allow-untuned", "--max-seq-len", "64", "--kv-dtype", "float16")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "manifest.json").read_text())["kv_cache"]["dtype"] == "float16"
    assert {"model.so", "weights.safetensors", "manifest.json", "tokenizer.json", "config.json"} <= \
        {p.name for p in out.iterdir()}
    res = matq("run", str(out), "--prompt", "hello matq", "--max-new-tokens", "6", "--ignore-eos",
               "--json", str(tmp_path / "gen.json"), check_no_torch=True)
    assert res.returncode == 0, res.stderr
    gen = json.loads((tmp_path / "gen.json").read_text())
    assert gen["prompt_tokens"] == len("hello matq") and gen["new_tokens"] == 6
    assert gen["prefill_tok_s"] > 0 and gen["decode_tok_s"] > 0
    from tokenizers import Tokenizer

    assert res.stdout.rstrip("\n") == Tokenizer.from_file(str(out / "tokenizer.json")).decode(gen["tokens"])


def test_compile_rejects_bad_bits_and_missing_choice(ckpt, tmp_path):
    res = matq("compile", "--checkpoint", str(ckpt), "--bits", "9", "--out", str(tmp_path / "o"), "--allow-untuned")
    assert res.returncode == 2 and "bits must be an integer in 2..8" in res.stderr
    assert not (tmp_path / "o").exists()
    res = matq("compile", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"))
    assert res.returncode != 0 and "--bits" in res.stderr


def test_compile_refuses_a_kv_dtype_for_an_onnx_graph(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"not read")
    res = matq("compile", "--onnx", str(tmp_path / "m.onnx"), "--bits", "4", "--kv-dtype", "float16", "--out",
               str(tmp_path / "o"))
    assert res.returncode == 2 and "an --onnx graph has no KV cache" in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()


def test_compile_rejects_unknown_target(ckpt, tmp_path):
    res = matq("compile", "--checkpoint", str(ckpt), "--bits", "4", "--target", "tpu-v9", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "unknown target 'tpu-v9'" in res.stderr


def test_run_on_a_missing_build(tmp_path):
    res = matq("run", str(tmp_path / "nope"), "--prompt", "x", check_no_torch=True)
    assert res.returncode == 2 and "manifest.json is missing" in res.stderr
