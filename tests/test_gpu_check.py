"""benchmarks/gpu_check.py without a GPU: one clear line and exit 2; arch from a compute capability; every check
kernel builds for CUDA (none by Fallback); the numerics check itself on the CPU; result files from measured rows."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from matq_compile import layout, targets

pytest.importorskip("tvm")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_arch_and_target_from_compute_capability(gc):
    assert [gc.arch_from_capability(c) for c in ("9.0", "8.6", "8.0")] == ["sm_90", "sm_86", "sm_80"]
    assert gc.GPU("NVIDIA H200", "9.0").arch == "sm_90"
    assert gc.target_for("sm_90").name == "cuda-sm90" and gc.target_for("sm_90").arch == "sm_90"
    with pytest.raises(ValueError, match="compute capability"):
        gc.arch_from_capability("nine")
    with pytest.raises(ValueError, match="no target file for sm_75"):
        gc.target_for("sm_75")


def test_without_a_gpu_it_stops_with_one_line(tmp_path):
    from matq_compile._tvm import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a CUDA GPU")
    run = subprocess.run([sys.executable, str(SCRIPT), "--out-dir", str(tmp_path)], capture_output=True, text=True,
                         check=False, timeout=300)
    assert run.returncode == 2
    errors = [ln for ln in run.stderr.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and "no CUDA GPU found" in errors[0]
    assert not list(tmp_path.iterdir())  # nothing written


def test_arguments_are_checked(gc):
    with pytest.raises(SystemExit):
        gc.parse_args(["--trials", "-1"])
    assert gc.parse_args([]).trials > 0


def test_benchmark_kernels_cover_the_issue_grid(gc):
    keys = gc.bench_keys()
    assert {(k.N, k.K) for k in keys} == {(4096, 4096), (11008, 4096)}
    assert {k.bits for k in keys} == {2, 3, 4, 8} and {k.m_bucket for k in keys} == {1, 16}
    assert {k.bits for k in gc.check_keys()} == set(range(2, 9))


def test_every_check_kernel_builds_for_cuda_without_fallback(gc):
    from matq_compile.schedules import gpu_gemv

    built = gc.build_kernels(gc.check_keys(), targets.load("cuda-sm90"), None)
    for key, (ex, rule) in built.items():
        assert [m.kind for m in ex.mod.imports] == ["cuda"], key.name
        assert rule == ("Matmul" if key.m_bucket == 16 else rule) and rule != "Fallback", (key.name, rule)
        assert key.m_bucket == 16 or rule in ("GEMV", gpu_gemv.RULE_NAME)


def test_numerics_check_passes_good_and_flags_wrong_kernels(gc):
    """The same check on the CPU (host target): correct kernels pass; a kernel of another width fails."""
    from matq_compile import remote

    host = targets.load("host")
    session = remote.open_session(host, "local")
    keys = [layout.KernelKey(64, 128, b, 64, 1, "float32") for b in (3, 4)]
    built = gc.build_kernels(keys, host, None)
    rows = gc.check_kernels(built, session, np.random.default_rng(0))
    assert [r["ok"] for r in rows] == [True, True]
    swapped = {keys[0]: built[keys[1]]}  # r = 4 code for r = 3 data
    with pytest.raises(Exception):  # noqa: B017 - the argument check refuses the other width's packed shape
        gc.check_kernels(swapped, session, np.random.default_rng(0))


def test_result_files_from_measured_rows(gc, tmp_path):
    key = layout.KernelKey(4096, 4096, 4, 64, 1, "float16")
    row = gc.kernel_row(key, 20e-6, 60e-6)
    assert row["speedup_vs_fp16"] == pytest.approx(3.0) and row["median_us"] == pytest.approx(20.0)
    gpu, spec = gc.GPU("NVIDIA H200", "9.0"), targets.load("cuda-sm90")
    e2e = {"bits": 4, "logits_max_abs_err": 3e-3, "logits_ok": True, "decode_tok_s": 100.0}
    kpath, epath = gc.write_results(tmp_path, gpu, spec, [{"key": key.name, "ok": True}], [row], e2e, 8)
    assert (kpath.name, epath.name) == ("kernels_cuda-sm90.json", "e2e_smollm2_cuda-sm90.json")
    k, e = json.loads(kpath.read_text()), json.loads(epath.read_text())
    assert k["device"] == "NVIDIA H200" and k["target"] == "cuda-sm90" and k["kernels"] == [row]
    assert e["e2e"] == e2e and e["compute_capability"] == "9.0"
