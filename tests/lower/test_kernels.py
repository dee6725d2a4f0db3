"""lower/kernels.py against the numpy truth: TIR unpack bit-exact; kernel outputs vs float64 numpy (llvm)."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile import layout, slicing

tvm_mod = pytest.importorskip("matq_compile._tvm")
from matq_compile.lower import kernels  # noqa: E402

GROUPS = (-1, 32, 64, 96, 128, 192)


@pytest.fixture(scope="module")
def cpu():
    from matq_compile import targets

    return targets.load("host").to_tvm(), tvm_mod.tvm.cpu()


def _build(func, target):
    return tvm_mod.tvm.compile(tvm_mod.tvm.IRModule({"main": func}), target=target)


def _case(rng, key: layout.KernelKey, sym: bool, rule: str):
    q = rng.integers(0, 256, (key.N, key.K)).astype(np.uint8)
    s = (rng.random((key.N, key.n_groups)) * 0.02 + 1e-3).astype(np.float16)
    z = None if sym else rng.integers(0, 256, (key.N, key.n_groups)).astype(np.uint8)
    return layout.pack_slice(q, s, z, key.bits, rule, key.group)


def _run(ex, key, arr, x, dev):
    y = tvm_mod.empty((x.shape[0], key.N), key.dtype, dev)
    ex["main"](tvm_mod.tensor(x, dev), *(tvm_mod.tensor(arr[n], dev) for n in "PSZ"), y)
    return y.numpy()


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("K", [100, 96, 200])
def test_tir_unpack_is_bit_exact(bits, K, cpu, rng):
    key = layout.KernelKey(7, K, bits)
    codes = rng.integers(0, 1 << bits, (7, K)).astype(np.uint8)
    ex = _build(kernels.unpack_func(key, "main"), cpu[0])
    out = tvm_mod.empty((7, K), "int32", cpu[1])
    ex["main"](tvm_mod.tensor(layout.pack(codes, bits), cpu[1]), out)
    np.testing.assert_array_equal(out.numpy(), codes)


CASES = [(b, GROUPS[(b + i) % 6], (b + i) % 2 == 0, ("round", "midpoint")[b % 2], dt)
         for b in range(2, 9) for i, dt in enumerate(("float32", "float16"))]
CASES += [(5, g, False, "round", "float32") for g in GROUPS]


@pytest.mark.parametrize("form", ["grouped", "flat"])
@pytest.mark.parametrize("bits,group,sym,rule,dtype", CASES)
def test_kernel_matches_float64_reference(bits, group, sym, rule, dtype, form, cpu, rng, tol):
    """grouped: the CPU decode form (M = 1); flat: dynamic M, one build serves M = 1, 3, 16."""
    key = layout.KernelKey(24, 384, bits, group, 1 if form == "grouped" else None, dtype)
    assert kernels.is_grouped(key) == (form == "grouped")
    arr = _case(rng, key, sym, rule)
    w = layout.dequant(arr, bits, key.K, group)
    ex = _build(kernels.linear_func(key, "main"), cpu[0])
    rtol, atol = tol(dtype, bits)
    for m in (1,) if form == "grouped" else (1, 3, 16):
        x = rng.standard_normal((m, key.K)).astype(dtype)
        y = _run(ex, key, arr, x, cpu[1])
        assert y.dtype == np.dtype(dtype)
        ref = x.astype(np.float64) @ w.T
        np.testing.assert_allclose(y.astype(np.float64), ref, rtol=rtol, atol=atol * np.abs(ref).max())


@pytest.mark.parametrize("K,group", [(200, -1), (96, 48), (80, 16)])
def test_groups_that_are_not_whole_blocks_use_the_flat_form(K, group, cpu, rng, tol):
    key = layout.KernelKey(9, K, 3, group, 1)
    assert not kernels.is_grouped(key)
    arr = _case(rng, key, False, "round")
    x = rng.standard_normal((1, K)).astype(np.float32)
    y = _run(_build(kernels.linear_func(key, "main"), cpu[0]), key, arr, x, cpu[1])
    ref = x.astype(np.float64) @ layout.dequant(arr, 3, K, group).T
    rtol, atol = tol("float32", 3)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=atol * np.abs(ref).max())


def test_static_m_kernel_and_signature(cpu, rng, tol):
    key = layout.KernelKey(40, 192, 3, 64, 16, "float32")
    func = kernels.linear_func(key, "my_linear")
    assert func.attrs["global_symbol"] == "my_linear" and func.attrs[kernels.KEY_ATTR] == key.name
    assert [(tuple(int(d) for d in p.shape), str(p.dtype)) for p in func.params] == kernels.arg_shapes(key)
    assert all(str(d.ty) == "int64" for p in func.params for d in p.shape)
    arr = _case(rng, key, True, "round")
    x = rng.standard_normal((16, 192)).astype(np.float32)
    y = _run(_build(func.with_attr("global_symbol", "main"), cpu[0]), key, arr, x, cpu[1])
    ref = x.astype(np.float64) @ layout.dequant(arr, 3, 192, 64).T
    np.testing.assert_allclose(y, ref, rtol=tol("float32", 3)[0], atol=1e-4 * np.abs(ref).max())


def test_kernel_reads_r_bits_per_weight():
    for bits in range(2, 9):
        key = layout.KernelKey(4096, 4096, bits, 64)
        p_shape = kernels.arg_shapes(key)[1][0]
        assert p_shape[0] * p_shape[1] * 32 == 4096 * 4096 * bits
    assert slicing.BITS == tuple(range(2, 9))
