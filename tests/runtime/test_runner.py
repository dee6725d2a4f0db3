"""The Python runtime and the C++ runner (built with cmake in a temp dir) generate the same greedy ids."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [3, 141, 59, 26, 53, 58, 97, 93, 23, 84, 62, 64, 33, 83, 27, 95, 2, 88]  # 18 tokens: 2 prefill chunks


@pytest.fixture(scope="module")
def build(tiny_llama_dir, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from matq_compile.ckpt import save_checkpoint
    from matq_compile.config import QuantSpec
    from matq_compile.export import CompileOptions, compile_model
    from matq_compile.quant.sequential import quantize_model

    tmp = tmp_path_factory.mktemp("runner")
    spec = QuantSpec(method="rtn", bits=8, group_size=64)
    qm = quantize_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(),
                        torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1)), spec)
    ckpt = save_checkpoint(tmp / "ckpt", layers=qm.layers, tensors=qm.tensors, spec=spec,
                           sensitivity=qm.sensitivity, source={"model": "tiny"},
                           extra_files={"config.json": tiny_llama_dir / "config.json"})
    # int8 head: the C++ runner must read every safetensors dtype the build uses (u32, f16, i8, f32)
    opts = CompileOptions(allow_untuned=True, require_tokenizer=False, max_seq_len=64, head_dtype="int8")
    return compile_model(ckpt, tmp / "build", bits=3, opts=opts)


def python_ids(build: Path, n: int) -> list[int]:
    from matq_compile import runtime

    return runtime.load(build).generate(PROMPT, n, stop_at_eos=False).tokens


def test_python_generation_is_greedy_over_score(build):
    """Each generated id is the argmax of the full-sequence logits at its position (cache == recompute)."""
    import numpy as np

    from matq_compile import runtime

    model = runtime.load(build)
    gen = model.generate(PROMPT, 6, stop_at_eos=False)
    assert gen.prefill_tok_s > 0 and gen.decode_tok_s > 0
    model.reset()
    logits = model.score(PROMPT + gen.tokens[:-1])
    assert list(np.argmax(logits[len(PROMPT) - 1:], axis=-1)) == gen.tokens


@pytest.fixture(scope="module")
def runner_exe(tmp_path_factory) -> Path:
    """CMakeLists.txt at the root, configured and built in a temp dir (skip only without cmake/compiler)."""
    cmake, cxx = shutil.which("cmake"), shutil.which("c++") or shutil.which("g++")
    if cmake is None or cxx is None:
        pytest.skip("cmake or a C++ compiler is not installed")
    bdir = tmp_path_factory.mktemp("cpp")
    subprocess.run([cmake, "-S", str(ROOT), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release",
                    f"-DPython3_EXECUTABLE={sys.executable}"], check=True, capture_output=True, timeout=300)
    subprocess.run([cmake, "--build", str(bdir), "-j2"], check=True, capture_output=True, timeout=600)
    return bdir / "matq_run"


def test_cpp_runner_prints_the_same_ids(build, runner_exe):
    ids = ",".join(str(i) for i in PROMPT)
    res = subprocess.run([str(runner_exe), str(build), "--ids", ids, "--max-new-tokens", "8"],
                         check=True, capture_output=True, text=True, timeout=120)
    out = json.loads(res.stdout)
    assert out["tokens"] == python_ids(build, 8)
    assert out["prompt_tokens"] == len(PROMPT) and out["decode_tok_s"] > 0


def test_cpp_runner_runs_an_int8_activation_build(build, runner_exe, tmp_path):
    """An int8-activation build with a float16 KV cache, the fast configuration (on a CPU with AMX its prefill
    chunks run on tiles, which the runner must request from Linux first), gives the Python runtime's ids."""
    from matq_compile import targets
    from matq_compile.export import CompileOptions, compile_model
    from matq_compile.lower.int8_intrin import target_isa

    if target_isa(targets.load("host").to_tvm()) is None:
        pytest.skip("this CPU has no byte dot product")
    opts = CompileOptions(allow_untuned=True, require_tokenizer=False, max_seq_len=64, act="int8",
                          kv_dtype="float16")
    a8 = compile_model(build.parent / "ckpt", tmp_path / "a8", bits=8, opts=opts)
    assert json.loads((a8 / "manifest.json").read_text())["kv_cache"]["dtype"] == "float16"
    ids = ",".join(str(i) for i in PROMPT)
    res = subprocess.run([str(runner_exe), str(a8), "--ids", ids, "--max-new-tokens", "8"],
                         check=True, capture_output=True, text=True, timeout=120)
    assert json.loads(res.stdout)["tokens"] == python_ids(a8, 8)


def test_cpp_runner_takes_the_width_of_a_switchable_build(build, runner_exe):
    """--bits picks the width as Model.set_bits does; a width the build lacks, or --bits for a one-width build,
    is refused."""
    from matq_compile import runtime
    from matq_compile.export import CompileOptions, compile_model

    opts = CompileOptions(allow_untuned=True, require_tokenizer=False, max_seq_len=64, switch_widths=(3, 8))
    switch = compile_model(build.parent / "ckpt", build.parent / "switch", opts=opts)
    ids = ",".join(str(i) for i in PROMPT)
    for r in (3, 8):
        res = subprocess.run([str(runner_exe), str(switch), "--ids", ids, "--max-new-tokens", "6", "--bits", str(r)],
                             check=True, capture_output=True, text=True, timeout=120)
        model = runtime.load(switch)
        model.set_bits(r)
        assert json.loads(res.stdout)["tokens"] == model.generate(PROMPT, 6, stop_at_eos=False).tokens
    for target, bits, error in ((switch, "5", "does not serve --bits 5"), (build, "3", "needs a switchable build")):
        res = subprocess.run([str(runner_exe), str(target), "--ids", ids, "--bits", bits], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 1 and error in res.stderr


def test_cpp_runner_rejects_a_missing_build(runner_exe, tmp_path):
    res = subprocess.run([str(runner_exe), str(tmp_path / "nope"), "--ids", "1"], capture_output=True, text=True)
    assert res.returncode == 1 and "cannot open" in res.stderr


def swapped_manifest_copy(build: Path, dest: Path, rehash: bool) -> Path:
    """A copy of the build with two same-shape parameters swapped in manifest.json (SHA256SUMS redone or not)."""
    from matq_compile.runtime.verify import write_digests

    bad = Path(shutil.copytree(build, dest))
    m = json.loads((bad / "manifest.json").read_text())
    params = m["params"]
    i, j = next((i, j) for i in range(len(params)) for j in range(i + 1, len(params))
                if params[i]["shape"] == params[j]["shape"] and params[i]["dtype"] == params[j]["dtype"])
    params[i]["name"], params[j]["name"] = params[j]["name"], params[i]["name"]
    (bad / "manifest.json").write_text(json.dumps(m))
    if rehash:
        write_digests(bad)
    return bad


@pytest.mark.parametrize("rehash, error", [(False, "manifest.json is corrupt or was replaced"),
                                           (True, "another parameter order")])
def test_cpp_runner_refuses_an_edited_manifest(build, runner_exe, tmp_path, rehash, error):
    """Edited alone, the manifest fails SHA256SUMS (the runner's own sha256); edited with SHA256SUMS redone, the
    library's own parameter names disagree with it."""
    bad = swapped_manifest_copy(build, tmp_path / "bad", rehash)
    res = subprocess.run([str(runner_exe), str(bad), "--ids", "1,2,3"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 1 and error in res.stderr, res.stderr


def test_cpp_runner_refuses_unlisted_files(build, runner_exe, tmp_path):
    bad = Path(shutil.copytree(build, tmp_path / "bad"))
    (bad / "extra.so").write_bytes(b"\0")
    res = subprocess.run([str(runner_exe), str(bad), "--ids", "1"], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "does not list: extra.so" in res.stderr, res.stderr


def _old_format_copy(build: Path, dest: Path) -> Path:
    """A copy of the build whose manifest says format 2 (no kv_cache shapes), SHA256SUMS redone."""
    from matq_compile.runtime.verify import write_digests

    old = Path(shutil.copytree(build, dest))
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 2
    del m["kv_cache"]
    (old / "manifest.json").write_text(json.dumps(m))
    write_digests(old)
    return old


def test_python_runtime_refuses_an_older_build_format(build, tmp_path):
    from matq_compile import runtime

    with pytest.raises(ValueError, match="build of format 2; this runtime reads format 3 .*recompile"):
        runtime.load(_old_format_copy(build, tmp_path / "old"))


def test_cpp_runner_refuses_an_older_build_format(build, runner_exe, tmp_path):
    from matq_compile.runtime import FORMAT_VERSION

    assert f"kFormatVersion = {FORMAT_VERSION};" in (ROOT / "matq_compile/runtime/runner.cc").read_text()
    old = _old_format_copy(build, tmp_path / "old")
    res = subprocess.run([str(runner_exe), str(old), "--ids", "1"], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "another format than 3 (recompile it" in res.stderr, res.stderr


def test_manifest_records_the_compilers_cache_shapes(build):
    from matq_compile.lower.frontend import LlamaConfig

    m = json.loads((build / "manifest.json").read_text())
    cfg = LlamaConfig(**m["model"])
    assert m["kv_cache"] == {"kt": list(cfg.cache_shapes[0]), "v": list(cfg.cache_shapes[1]), "dtype": "float32"}


def test_both_runtimes_refuse_an_unknown_cache_dtype(build, runner_exe, tmp_path):
    """A kv_cache dtype the kernels do not have (manifest edited, SHA256SUMS redone) is refused by name."""
    from matq_compile import runtime
    from matq_compile.runtime.verify import write_digests

    bad = Path(shutil.copytree(build, tmp_path / "bad"))
    m = json.loads((bad / "manifest.json").read_text())
    m["kv_cache"]["dtype"] = "bfloat16"
    (bad / "manifest.json").write_text(json.dumps(m))
    write_digests(bad)
    with pytest.raises(runtime.FormatError, match="kv_cache dtype 'bfloat16' is not one of float32, float16"):
        runtime.load(bad)
    res = subprocess.run([str(runner_exe), str(bad), "--ids", "1"], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "kv_cache dtype 'bfloat16' is not float32 or float16" in res.stderr, res.stderr


def test_cpp_runner_refuses_a_max_seq_len_its_cache_does_not_fit(build, runner_exe, tmp_path):
    """An edited max_seq_len (SHA256SUMS redone) would let generation run past the cache: refused before loading."""
    from matq_compile.runtime.verify import write_digests

    bad = Path(shutil.copytree(build, tmp_path / "bad"))
    m = json.loads((bad / "manifest.json").read_text())
    m["model"]["max_seq_len"] *= 2
    (bad / "manifest.json").write_text(json.dumps(m))
    write_digests(bad)
    res = subprocess.run([str(runner_exe), str(bad), "--ids", "1"], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "does not fit its kv_cache shapes" in res.stderr, res.stderr
