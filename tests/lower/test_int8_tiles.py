"""The tile arrangement (tiles.py) and its int8-activation kernels (lower/int8_tiles.py) against numpy."""
from __future__ import annotations

import re

import numpy as np
import pytest

from matq_compile import act_quant, layout, tiles

tvm_mod = pytest.importorskip("matq_compile._tvm")
from helpers import build_main, int8_activations  # noqa: E402
from matq_compile.lower import int8_tiles  # noqa: E402


@pytest.fixture(scope="module")
def cpu():
    from matq_compile import targets

    target = targets.load("host").to_tvm()
    if not int8_tiles.target_supports(target):
        pytest.skip("this CPU has no AVX512-VNNI")
    return target, tvm_mod.tvm.cpu()


def test_tile_moves_rows_into_lanes(rng):
    P = rng.integers(0, 2**32, (48, 7), dtype=np.uint64).astype(np.uint32)
    t = tiles.tile(P)
    assert t.shape == (3, 7, 16)
    for n, w in [(0, 0), (17, 3), (47, 6), (31, 2)]:
        assert t[n // 16, w, n % 16] == P[n, w]
    np.testing.assert_array_equal(tiles.untile(t), P)
    with pytest.raises(ValueError, match="multiple of 16"):
        tiles.tile(P[:40])


@pytest.mark.parametrize("bits", [b for b in tiles.WIDTHS if b not in tiles.MERGED])
def test_act_order_pairs_each_field_with_its_codes(bits, rng):
    """The activation at position p of act_order multiplies, in operand (word, field) lane byte j, exactly the
    code layout.pack put in that byte's field: checked by unpacking each field of each byte of the words."""
    K = 64
    codes = rng.integers(0, 1 << bits, (1, K)).astype(np.uint8)
    words = layout.pack(codes, bits)[0]
    order = tiles.act_order(K, bits)
    assert sorted(order) == list(range(K))
    F = 8 // bits
    for w, word in enumerate(words):
        for f in range(F):
            for j in range(4):  # operand (w, f), byte j: its activation sits at dword w F + f, byte j
                field = (int(word) >> (8 * j + bits * f)) & ((1 << bits) - 1)
                assert field == codes[0, order[4 * (w * F + f) + j]]


@pytest.mark.parametrize("bits", sorted(tiles.MERGED))
def test_merged_operands_hold_each_code_contiguous_at_its_shift(bits, rng):
    """pack_merged's words decoded as the kernel does (operands_merged: the bit select of a main word's field and a
    rotated, and-ed minor word) give, in operand o byte j, exactly the code act_order puts at dword o, byte j, at
    bit `shift`, and zeros elsewhere: every code of every block, every code value; all-ones codes set every bit
    of every word once; words() reaches the same words from layout.pack's."""
    K, m = 128, tiles.MERGED[bits]
    codes = rng.integers(0, 1 << bits, (6, K)).astype(np.uint8)
    codes[0, :1 << bits] = np.arange(1 << bits)[:K]
    words = tiles.pack_merged(codes, bits)
    assert words.shape == (6, K // 32 * bits) and words.dtype == np.uint32
    np.testing.assert_array_equal(tiles.words(layout.pack(codes, bits), bits), words)
    assert (tiles.pack_merged(np.full((1, K), (1 << bits) - 1), bits) == 0xFFFFFFFF).all()
    ops = tiles.operands_merged(words, bits).astype(np.int64)  # [6, blocks, 8, 4]
    want = codes[:, tiles.act_order(K, bits)].reshape(6, K // 32, 8, 4)
    for o, (_, sh) in enumerate(m.operands):
        assert not (ops[:, :, o] & ~(((1 << bits) - 1) << sh)).any(), o
        np.testing.assert_array_equal(ops[:, :, o] >> sh, want[:, :, o])
    with pytest.raises(ValueError, match="multiple of 32"):
        tiles.pack_merged(codes[:, :40], bits)


CASES = [(b, g, m) for b in tiles.WIDTHS for g, m in zip((32, 64, 128), ((1, 3, 16), (16, 1, 3), (3, 16, 1))[b % 3])]


@pytest.mark.parametrize("bits,group,m", CASES + [(2, -1, 1), (8, -1, 3)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_integer_path_is_bit_exact(bits, group, m, dynamic, cpu, rng):
    """Quantized activations, field masks and shifts give act_quant's per-group int32 dot products exactly (every
    code value, including 2^r - 1 against |xq| = 127)."""
    target, dev = cpu
    key = layout.KernelKey(32, 256, bits, group, None if dynamic else m)
    codes = rng.integers(0, 1 << bits, (key.N, key.K)).astype(np.uint8)
    codes[0] = (1 << bits) - 1
    x = int8_activations(rng, m, key.K)
    ex = build_main(int8_tiles.int8_tile_acc_func(key, "main"), target)
    P = tiles.arrange(layout.pack(codes, bits), "P", bits)
    S = np.zeros((key.N, key.n_groups), np.float16)
    acc = tvm_mod.empty((m, key.N, key.n_groups), "int32", dev)
    ex["main"](tvm_mod.tensor(x, dev), tvm_mod.tensor(P, dev), tvm_mod.tensor(S, dev), tvm_mod.tensor(S, dev), acc)
    g = key.group_size
    xq, _, _ = act_quant.quantize_activations(x, g)
    np.testing.assert_array_equal(acc.numpy(), act_quant.integer_acc(codes, xq, g))


@pytest.mark.parametrize("bits,group,sym,K,runs", [(2, 64, False, 576, ((1, 1), (3, None))),
                                                   (4, 32, True, 256, ((1, 1), (16, 16))),
                                                   (8, 128, False, 256, ((1, 1), (5, None))),
                                                   (4, -1, False, 256, ((1, 1),)),
                                                   (3, 64, False, 576, ((1, 1), (16, 16), (5, None))),
                                                   (3, -1, True, 256, ((1, 1),))])
def test_kernel_matches_the_exact_epilogue(bits, group, sym, K, runs, cpu, rng):
    """The whole kernel (float32 epilogue, 16 rows a vector) against act_quant.int8_linear (float64 epilogue)."""
    target, dev = cpu
    N = 48
    q = rng.integers(0, 256, (N, K)).astype(np.uint8)
    g = K if group == -1 else group
    s = (rng.random((N, K // g)) * 0.02 + 1e-3).astype(np.float16)
    z = None if sym else rng.integers(0, 256, (N, K // g)).astype(np.uint8)
    arr = layout.pack_slice(q, s, z, bits, "round", group)
    tiled = [tiles.arrange(arr[n], n, bits) for n in "PSZ"]
    for m, bucket in runs:
        key = layout.KernelKey(N, K, bits, group, bucket)
        ex = build_main(int8_tiles.int8_tile_func(key, "main"), target)
        x = int8_activations(rng, m, K)
        y = tvm_mod.empty((m, N), "float32", dev)
        ex["main"](tvm_mod.tensor(x, dev), *(tvm_mod.tensor(a, dev) for a in tiled), y)
        ref = act_quant.int8_linear(x, arr, bits, group)
        np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("bits", tiles.WIDTHS)
def test_one_and_per_dot_product_and_none_at_r8(bits, cpu):
    """The decode is one vpand per vpdpbusd (none at r = 8, whose words are the codes: the dot product reads them
    from memory; at a merged width one vpternlogd per vpdpbusd, one vpand per two and per 8 a rotate for each
    rotated minor word, at most one more shift), every dot product of a 576-code row straight-line: 9 groups x 64
    codes / 4 a lane."""
    target, _ = cpu
    key = layout.KernelKey(64, 576, bits, 64, 1)
    asm = build_main(int8_tiles.int8_tile_func(key, "main"), target).mod.inspect_source("asm")
    dots = len(re.findall(r"\bvpdpbusd\b", asm))
    assert dots == 9 * 64 // 4
    ands = len(re.findall(r"\bvpand[dq]?\b", asm))
    if bits in tiles.MERGED:
        assert len(re.findall(r"\bvpternlogd\b", asm)) == dots
        assert dots // 2 <= ands <= dots // 2 + 4
        # a rotate per rotated minor word; LLVM may also shift (not rotate) for a mask whose bits do not wrap
        rotated = {(w, rot) for w, rot, _ in tiles.MERGED[bits].variants if rot}
        moves = len(re.findall(r"\b(?:vpro[rl]d|vpsrld|vpslld)\b", asm))
        assert dots // 8 * len(rotated) <= moves <= dots // 8 * (len(rotated) + 1)
    else:
        assert (ands == 0) if bits == 8 else (dots <= ands <= dots + 4)


def test_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="tile kernel needs"):
        int8_tiles.int8_tile_func(layout.KernelKey(48, 256, 7, 64, 1))
    with pytest.raises(ValueError, match="tile kernel needs"):
        int8_tiles.int8_tile_func(layout.KernelKey(40, 256, 4, 64, 1))
