"""The int8-activation LM head (lower/int8_dense.py) against act_quant.int8_dense: bit-exact where the float
epilogue is exact by construction, within float rounding elsewhere; the pass picks it only for int8-activation
builds with an int8 head."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile import act_quant

tvm_mod = pytest.importorskip("matq_compile._tvm")
from matq_compile.lower import int8_dense, int8_intrin  # noqa: E402
from matq_compile.lower.params import int8_rows  # noqa: E402


@pytest.fixture(scope="module")
def cpu():
    from matq_compile import targets

    spec = targets.load("host")
    if int8_intrin.target_isa(spec.to_tvm()) is None:
        pytest.skip(f"this CPU ({spec.name}) has no byte dot product")
    return spec.to_tvm(), tvm_mod.tvm.cpu()


def _run(cpu, N: int, K: int, x: np.ndarray, codes: np.ndarray, s: np.ndarray) -> np.ndarray:
    tvm = tvm_mod.tvm
    target, dev = cpu
    func = int8_dense.int8_dense_func(N, K).with_attr("global_symbol", "main")
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    y = tvm.runtime.tensor(np.full((x.shape[0], N), np.nan, np.float32), dev)
    ex["main"](*(tvm.runtime.tensor(a, dev) for a in (x, codes, s)), y)
    return y.numpy()


@pytest.mark.parametrize("m,N,K", [(1, 37, 576), (3, 64, 128), (16, 19, 64)])
def test_integer_path_is_bit_exact(cpu, rng, m, N, K):
    """Every group's largest |x| is 127, so its scale is 1 and xq = rint(x) (ties included); with power-of-two
    row scales every float step is exact, and y must equal the integer dot product to the bit. Codes of +-127
    everywhere a product can be largest (vpmaddubsw's pair sums at 2 * 127 * 127)."""
    x = rng.integers(-127, 128, (m, K)).astype(np.float32)
    x[:, ::7] += 0.5  # round-half ties: to even
    x = np.clip(x, -126.5, 126.5)
    x[:, ::int8_dense.GROUP] = np.where(np.arange(m)[:, None] % 2, 127.0, -127.0)  # the group's max |x|
    codes = rng.integers(-127, 128, (N, K)).astype(np.int8)
    codes[0] = 127
    codes[1] = -127
    x[0, : 2 * int8_dense.GROUP] = 127.0  # with codes[0], two groups of largest products
    s = (2.0 ** rng.integers(-6, 3, N)).astype(np.float32)
    acc, ref = act_quant.int8_dense(x, codes, s, int8_dense.GROUP)
    xq = act_quant.quantize_activations(x, int8_dense.GROUP)[0]
    assert np.array_equal(xq, np.clip(np.rint(x), -127, 127))  # the construction holds: scale 1
    np.testing.assert_array_equal(acc.sum(axis=-1), xq.astype(np.int64) @ codes.astype(np.int64).T)
    np.testing.assert_array_equal(_run(cpu, N, K, x, codes, s), ref.astype(np.float32))


def test_matches_the_numpy_truth(cpu, rng):
    """Random activations (a zero group: scale 0) and a real int8 head: within float rounding of the float64
    epilogue, and within the activation quantization's error of the float product."""
    N, K = 333, 192
    w = rng.standard_normal((N, K)).astype(np.float32)
    codes, s = int8_rows(w)
    x = (rng.standard_normal((5, K)) * 4).astype(np.float32)
    x[2, 64:128] = 0.0
    y = _run(cpu, N, K, x, codes, s)
    _, ref = act_quant.int8_dense(x, codes, s, int8_dense.GROUP)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    exact = x.astype(np.float64) @ (codes.astype(np.float64) * s[:, None]).T
    assert np.abs(y - exact).max() < 0.02 * np.abs(exact).max()


def test_rejects_k_outside_whole_groups():
    assert not int8_dense.supports(72)
    with pytest.raises(ValueError, match="multiple of 64"):
        int8_dense.int8_dense_func(8, 72)


@pytest.mark.parametrize("K,act_isa,kernel", [(128, "avx2", "dense_n40_k128_int8_a8"),
                                              (128, None, "dense_n40_k128_int8"),
                                              (72, "avx2", "dense_n40_k72_int8")])
def test_pass_picks_the_int8_activation_head(cpu, rng, caplog, K, act_isa, kernel):
    """lower_dense_linear with an int8 head: the int8-activation kernel in an int8-activation build where K is
    whole groups, else the float one (logged where int8 activations were asked for); the compiled head matches
    its truth either way."""
    import logging

    from matq_compile._tvm import tvm
    from matq_compile.lower.params import ArraySource, ParamMap
    from matq_compile.lower.passes import lower_dense_linear
    from tvm import relax

    from helpers import head_module

    mod = head_module(40, K)
    pmap = ParamMap()
    with caplog.at_level(logging.INFO, logger="matq_compile.lower.passes.lower_dense_linear"):
        low = lower_dense_linear("int8", pmap, act_isa)(mod)
    assert ("keeps float activations" in caplog.text) == (act_isa is not None and K % int8_dense.GROUP != 0)
    assert [gv.name_hint for gv in low.functions if gv.name_hint.startswith("dense_")] == [kernel]
    w = rng.standard_normal((40, K)).astype(np.float32)
    codes, s = (pmap.make(p.name, ArraySource({"lm_head.weight": w})) for p in low["forward"].params[1:])
    x = rng.standard_normal((3, K)).astype(np.float32)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.compile(low, target=cpu[0]), dev)
    y = vm["forward"](*(tvm.runtime.tensor(a, dev) for a in (x, codes, s))).numpy()
    if act_isa is None or K % int8_dense.GROUP:
        ref = x.astype(np.float64) @ (codes.astype(np.float64) * s[:, None]).T
    else:
        ref = act_quant.int8_dense(x, codes, s, int8_dense.GROUP)[1]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_head_prefetches_one_line_per_group():
    """Each 64-byte group of a weight row prefetches the line PREFETCH_BYTES ahead into L2 (prefetcht1), once."""
    from matq_compile.targets import TargetSpec

    spec = TargetSpec("llvm-x", "llvm", {"mcpu": "sapphirerapids", "num-cores": 2})
    func = int8_dense.int8_dense_func(64, 576).with_attr("global_symbol", "main")
    asm = tvm_mod.tvm.compile(tvm_mod.tvm.IRModule({"main": func}), target=spec.to_tvm()).mod.inspect_source("asm")
    lines = [ln for ln in asm.splitlines() if "prefetcht1" in ln]
    assert len(lines) == 576 // int8_dense.GROUP, lines  # the group loop unrolled: one per group of a row
