"""AMX tile kernels (prefill chunks of 16 rows): the same numbers as the numpy truth (act_quant.py), exact where the
float steps are; tile instructions in the code; which keys and targets take them."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile import act_quant, amx, layout

tvm_mod = pytest.importorskip("matq_compile._tvm")
from matq_compile.lower import int8_amx, int8_intrin  # noqa: E402
from matq_compile.targets import TargetSpec  # noqa: E402

SPR = TargetSpec("llvm-sapphirerapids", "llvm", {"mcpu": "sapphirerapids", "num-cores": 2})


@pytest.fixture(scope="module")
def tiles():
    """This CPU's target with AMX, and the process's permission (skip where the CPU has no AMX)."""
    from matq_compile import targets

    spec = targets.load("host")
    if int8_intrin.target_isa(spec.to_tvm()) != int8_intrin.AMX:
        pytest.skip(f"this CPU ({spec.name}) has no AMX-INT8")
    amx.request()
    return spec.to_tvm(), tvm_mod.tvm.cpu()


def _run(key, arr, x, target, dev):
    ex = tvm_mod.tvm.compile(tvm_mod.tvm.IRModule({"main": int8_amx.int8_amx_func(key, "main")}), target=target)
    y = tvm_mod.empty((x.shape[0], key.N), "float32", dev)
    ex["main"](tvm_mod.tensor(x, dev), *(tvm_mod.tensor(arr[n], dev) for n in "PSZ"), y)
    return y.numpy()


@pytest.mark.parametrize("bits,K,sym,rule", [(2, 576, True, "round"), (3, 256, False, "midpoint"),
                                             (4, 576, False, "round"), (5, 128, True, "round"),
                                             (6, 256, False, "midpoint"), (7, 192, True, "round"),
                                             (8, 576, False, "round")])
def test_amx_kernel_matches_the_exact_epilogue(bits, K, sym, rule, tiles, rng):
    """The whole kernel against act_quant.int8_linear (float64 epilogue) for r = 2..8, 2 to 9 groups, three tasks
    of 16 rows; ties and an all-zero group in the activations."""
    target, dev = tiles
    N = 48
    q = rng.integers(0, 256, (N, K)).astype(np.uint8)
    s = (rng.random((N, K // 64)) * 0.02 + 1e-3).astype(np.float16)
    z = None if sym else rng.integers(0, 256, (N, K // 64)).astype(np.uint8)
    arr = layout.pack_slice(q, s, z, bits, rule, 64)
    x = rng.standard_normal((16, K)).astype(np.float32)
    x[0, :4] = [0.5, -0.5, 1.5, -2.5]
    x[:, -64:] = 0.0
    ref = act_quant.int8_linear(x, arr, bits, 64)
    y = _run(layout.KernelKey(N, K, bits, 64, 16), arr, x, target, dev)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_amx_integer_path_is_exact(bits, tiles, rng):
    """Where every float step is exact (each group's max |x| = 127, so the activation scale is 1 and xq = x;
    power-of-two weight scales; integer zeros; |Y| < 2^24) the output equals the integer dot product exactly,
    the largest code against +-127 included."""
    target, dev = tiles
    N, K = 32, 256
    codes = rng.integers(0, 1 << bits, (N, K)).astype(np.uint8)
    codes[0] = (1 << bits) - 1
    x = rng.integers(-126, 127, (16, K)).astype(np.float32)
    x[:, ::64] = 127.0
    x[1] = -127.0
    x[1, ::64] = 127.0
    s = (2.0 ** rng.integers(-3, 2, (N, K // 64))).astype(np.float16)
    z = rng.integers(0, 1 << bits, (N, K // 64)).astype(np.float16)
    arr = {"P": layout.pack(codes, bits), "S": s, "Z": z}
    y = _run(layout.KernelKey(N, K, bits, 64, 16), arr, x, target, dev)
    w = codes.astype(np.int64).reshape(N, K // 64, 64) - z.astype(np.int64)[..., None]
    w = w * s.astype(np.float64)[..., None]
    exact = x.astype(np.float64) @ w.reshape(N, K).T
    assert np.abs(exact).max() < 2 ** 24
    np.testing.assert_array_equal(y, exact.astype(np.float32))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_amx_kernels_are_tile_code(bits):
    """Built (not run: this CPU may lack AMX) for Sapphire Rapids: the tile configuration once per task and one
    tdpbusd per group."""
    key = layout.KernelKey(64, 576, bits, 64, 16)
    ex = tvm_mod.tvm.compile(tvm_mod.tvm.IRModule({"main": int8_amx.int8_amx_func(key, "main")}),
                             target=SPR.to_tvm())
    asm = ex.mod.inspect_source("asm")
    assert "ldtilecfg" in asm and "tdpbusd" in asm and "tilestored" in asm


def test_which_kernels_take_tiles():
    """The widths of tiles.WIDTHS on whole 16-row tiles take the tile-arrangement kernels at every batch (int8_tiles);
    of the others, prefill chunks (M = 16) of groups of 64 on the dense layout take AMX tiles; decode rows, other
    groups, a switchable build's planes and rows not a whole number of tiles keep the vpdpbusd kernels."""
    isa = int8_intrin.check_target(SPR)
    assert isa == int8_intrin.AMX
    for bits in (2, 3, 4, 8):
        for m in (1, 16, None):
            assert int8_intrin.kernel_isa(isa, layout.KernelKey(1536, 576, bits, 64, m)) == int8_intrin.TILES
            assert int8_intrin.kernel_isa("vnni512", layout.KernelKey(1536, 576, bits, 32, m)) == int8_intrin.TILES
    assert int8_intrin.kernel_isa(isa, layout.KernelKey(40, 576, 4, 64, 16)) == "vnni-vbmi"
    assert int8_intrin.kernel_isa("vnni", layout.KernelKey(1536, 576, 4, 64, 1)) == "vnni"
    assert int8_intrin.kernel_isa(isa, layout.KernelKey(1536, 576, 6, 64, 16)) == int8_intrin.AMX
    assert int8_intrin.kernel_isa(isa, layout.KernelKey(1536, 576, 6, 64, 1)) == "vnni512"
    assert int8_intrin.kernel_isa(isa, layout.KernelKey(1536, 512, 6, 64, 1)) == "vnni-vbmi"
    assert int8_intrin.kernel_isa(isa, layout.KernelKey(1536, 576, 6, 32, 16)) == "vnni-vbmi"
    assert int8_intrin.kernel_isa(isa, layout.KernelKey(1536, 1024, 5, 128, 16)) == "vnni-vbmi"
    assert int8_intrin.kernel_isa(isa, layout.KernelKey(40, 576, 3, 64, 16)) == "vnni-vbmi"
    assert int8_intrin.kernel_isa(isa, layout.KernelKey(1536, 576, 6, 64, None)) == "vnni-vbmi"
    assert int8_intrin.kernel_isa(isa, layout.KernelKey(1536, 64, 6, 64, 16)) == "vnni-vbmi"
    with pytest.raises(ValueError, match="AMX kernel"):
        int8_amx.int8_amx_func(layout.KernelKey(1536, 576, 4, 64, 1))


def test_host_amx_flags(tmp_path):
    """AMX is read from the kernel's CPU flags: both AMX-TILE and AMX-INT8 must be there."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_int8 amx_bf16\n")
    assert amx.host_has_amx(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_bf16\n")
    assert not amx.host_has_amx(info)
    assert not amx.host_has_amx(tmp_path / "missing")
    assert amx.target_uses_amx({"mcpu": "rocketlake", "mattr": list(amx.MATTR)})
    assert not amx.target_uses_amx({"mcpu": "sapphirerapids"})
