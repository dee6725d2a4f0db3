"""CUDA default schedules without a GPU: every r at M = 1 is a GEMV (thread-bound cross-thread reduction), every r at
M = 16 a shared-memory tiled matmul; the project's GEMV loop nest computes the kernel (checked on the CPU, unbound).

No CUDA device runs here: the CUDA checks are structural (rule chosen, CUDA source), the numeric check runs the
same loop transformations without thread bindings on the host."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile import layout, targets

pytest.importorskip("tvm")
from matq_compile import schedules  # noqa: E402
from matq_compile._tvm import empty, tensor, tvm  # noqa: E402
from matq_compile.lower import kernels  # noqa: E402
from matq_compile.schedules import gpu_dlight, gpu_gemv  # noqa: E402

BITS = range(2, 9)


def _cuda_source(key: layout.KernelKey, spec) -> tuple[str, str]:
    func = schedules.default_schedule(kernels.linear_func(key, gpu=True), spec)
    ex = tvm.compile(tvm.IRModule({key.name: func}), target=spec.to_tvm())
    assert [m.kind for m in ex.mod.imports] == ["cuda"]
    return str(func.attrs[gpu_dlight.RULE_ATTR]), ex.mod.imports[0].inspect_source("cuda")


@pytest.mark.parametrize("bits", BITS)
def test_m1_is_a_gemv_for_every_width(bits):
    spec = targets.load("cuda-sm90")
    rule, src = _cuda_source(layout.KernelKey(256, 1024, bits, 64, 1, "float16"), spec)
    assert rule in ("GEMV", gpu_gemv.RULE_NAME), f"r={bits} fell to {rule}"
    expected = "GEMV" if bits in (2, 4, 8) else gpu_gemv.RULE_NAME
    assert rule == expected
    # a GEMV: the reduction over K is split across threads and finished with warp shuffles
    assert "__shfl" in src and "threadIdx.x" in src and "blockIdx.x" in src


@pytest.mark.parametrize("bits", BITS)
def test_m16_is_a_shared_memory_tiled_matmul(bits):
    spec = targets.load("cuda-sm90")
    rule, src = _cuda_source(layout.KernelKey(256, 1024, bits, 64, 16, "float16"), spec)
    assert rule == "Matmul", f"r={bits} fell to {rule}"
    assert "__shared__" in src and "__syncthreads" in src


def test_gemv_rule_refuses_other_kernels():
    cuda = targets.load("cuda-sm90").to_tvm()
    rule = gpu_gemv.MatqGEMV()
    assert rule.apply(kernels.linear_func(layout.KernelKey(64, 128, 3, 32, 16, "float16"), gpu=True), cuda) is None
    grouped = kernels.linear_func(layout.KernelKey(64, 128, 3, 32, 1, "float32"))  # the CPU form
    assert rule.apply(grouped, cuda) is None
    assert rule.apply(kernels.linear_func(layout.KernelKey(64, 128, 3, 32, 1), gpu=True),
                      targets.load("host").to_tvm()) is None


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gemv_loop_nest_matches_numpy(bits, dtype, rng):
    """K = 1088 is not a multiple of THREADS * 32 = 1024, so the split's predicate is exercised too."""
    N, K, g = 10, 1088, 64
    key = layout.KernelKey(N, K, bits, g, 1, dtype)
    func = gpu_gemv.schedule(kernels.linear_func(key, "main", gpu=True), bind=False)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=targets.load("host").to_tvm())
    q = rng.integers(0, 256, (N, K)).astype(np.uint8)
    z = rng.integers(0, 256, (N, K // g)).astype(np.uint8)
    arr = layout.pack_slice(q, (rng.random((N, K // g)) * 0.01 + 1e-3).astype(np.float16), z, bits, "round", g)
    x = rng.standard_normal((1, K)).astype(dtype)
    dev = tvm.cpu()
    y = empty((1, N), dtype, dev)
    ex["main"](tensor(x, dev), *(tensor(arr[n], dev) for n in "PSZ"), y)
    ref = x.astype(np.float64) @ layout.dequant(arr, bits, K, g).T
    tol = 1e-4 if dtype == "float32" else 3e-3
    np.testing.assert_allclose(y.numpy().astype(np.float64), ref, rtol=tol, atol=tol * np.abs(ref).max())
