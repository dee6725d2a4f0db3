"""planes.py (the nested bit-plane layout of switchable builds) against slicing.py, and the TIR kernels against it."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile import layout, planes, slicing

WIDTH_SETS = [(2, 3, 4, 6, 8), (2, 3, 4, 5, 6, 7, 8), (2, 4, 8), (3, 5), (8,), (2,)]


@pytest.mark.parametrize("rule", slicing.SLICE_RULES)
@pytest.mark.parametrize("widths", WIDTH_SETS)
def test_every_width_reads_the_slice_codes_of_the_parent(widths, rule, rng):
    tag = planes.tag(widths, rule)
    q = rng.integers(0, 256, (5, 100)).astype(np.uint8)
    q[0, :8] = [0, 255, 254, 253, 127, 128, 1, 2]  # the round rule's clamp at the top code
    words = planes.pack(q, tag)
    assert words.shape == (5 * planes.words_per_row(100, tag),)
    for r in widths:
        np.testing.assert_array_equal(planes.slice_codes(words, r, tag, 100), slicing.slice_codes(q, r, rule))


@pytest.mark.parametrize("rule", slicing.SLICE_RULES)
def test_plane_widths_cut_at_every_width_and_store_no_more_bits_than_needed(rule):
    for widths in WIDTH_SETS:
        pw = planes.plane_widths(widths, rule)
        assert all(w in (1, 2, 4, 8) for w in pw)
        cuts = set(np.cumsum(pw).tolist())
        assert {planes.top_bits(r, rule) for r in widths} <= cuts
        assert sum(pw) == max(planes.top_bits(r, rule) for r in widths)
    assert planes.plane_widths((2, 3, 4, 6, 8), "round") == (2, 1, 1, 1, 2, 1)
    assert planes.plane_widths((2, 3, 4, 6, 8), "midpoint") == (2, 1, 1, 2, 2)


def test_words_read_fall_with_the_width():
    tag = planes.tag((2, 3, 4, 6, 8), "midpoint")
    reads = [planes.words_read(576, r, tag) for r in (2, 3, 4, 6, 8)]
    assert reads == sorted(reads) and len(set(reads)) == 5
    assert reads[-1] == planes.words_per_row(576, tag) == 18 * 8  # the 8-bit slice reads every plane


def test_a_width_inside_a_plane_reads_the_whole_plane():
    tag = planes.tag((2, 4, 8), "midpoint")  # planes (2, 2, 4): no boundary at 3 bits
    assert planes.planes_read(3, tag) == ((2, 0, 1), (2, 2, -1))  # the second plane's low bit is dropped
    assert layout.KernelKey(8, 64, 3, nested=tag).words_read == 2 * (2 + 2)  # 2 blocks x both 2-bit planes
    with pytest.raises(ValueError, match="needs"):
        planes.planes_read(8, planes.tag((2, 4), "midpoint"))


COARSE = [(4, 4), (2, 2, 4), (8,), (2, 2, 2, 2), (1, 1, 2, 4), (4, 2, 1, 1)]


@pytest.mark.parametrize("rule", slicing.SLICE_RULES)
@pytest.mark.parametrize("split", COARSE)
def test_any_plane_split_reads_the_slice_codes_of_the_parent(split, rule, rng):
    tag = planes.tag((2, 3, 4, 5, 6, 7, 8), rule, split)
    assert planes.parse_tag(tag) == (rule, split)
    q = rng.integers(0, 256, (3, 96)).astype(np.uint8)
    q[0, :4] = [0, 255, 254, 128]
    words = planes.pack(q, tag)
    for r in range(2, 9):
        np.testing.assert_array_equal(planes.slice_codes(words, r, tag, 96), slicing.slice_codes(q, r, rule))
    reads = [planes.words_read(96, r, tag) for r in range(2, 9)]
    assert reads == sorted(reads)  # traffic never grows as r falls (it may stay: one plane serves several r)


def test_plane_splits_are_checked():
    with pytest.raises(ValueError, match="1, 2, 4 or 8"):
        planes.plane_widths((2, 8), "round", (3, 5))
    with pytest.raises(ValueError, match="at most 8"):
        planes.plane_widths((2, 8), "round", (4, 4, 2))
    with pytest.raises(ValueError, match=r"store 6 bits; r=8 under the round rule reads 8"):
        planes.plane_widths((2, 8), "round", (4, 2))
    with pytest.raises(ValueError, match="store 2 bits"):
        planes.plane_widths((2,), "round", (2,))  # the round rule's 2-bit slice reads 3 bits


def test_nested_key_names_round_trip_and_tune_as_the_dense_shape():
    key = layout.KernelKey(576, 1536, 6, 64, 1, "float32", planes.tag((2, 4, 6, 8), "round"))
    assert layout.KernelKey.parse(key.name) == key
    assert key.shape_key == layout.KernelKey(576, 1536, 4, 64, 1, "float32")
    assert key.weight_bytes() < key.with_bits(8).weight_bytes()


def test_pack_switch_scales_equal_the_dedicated_slices(rng):
    q = rng.integers(0, 256, (6, 64)).astype(np.uint8)
    s = {r: (rng.random((6, 2)) * 0.01 + 1e-3).astype(np.float16) for r in (3, 8)}
    z = rng.integers(0, 256, (6, 2)).astype(np.uint8)
    arr = planes.pack_switch(q, s, z, (3, 8), "round", 32)
    for r in (3, 8):
        ded = layout.pack_slice(q, s[r], z, r, "round", 32)
        np.testing.assert_array_equal(arr[f"S{r}"], ded["S"])
        np.testing.assert_array_equal(arr[f"Z{r}"], ded["Z"])


tvm_mod = pytest.importorskip("matq_compile._tvm")


@pytest.fixture(scope="module")
def cpu():
    from matq_compile import targets

    return targets.load("host").to_tvm(), tvm_mod.tvm.cpu()


@pytest.mark.parametrize("rule", slicing.SLICE_RULES)
@pytest.mark.parametrize("bits", range(2, 9))
def test_tir_unpack_of_nested_planes_is_bit_exact(bits, rule, cpu, rng):
    from matq_compile.lower import kernels

    q = rng.integers(0, 256, (7, 100)).astype(np.uint8)
    for tag in (planes.tag(range(2, 9), rule), planes.tag(range(2, 9), rule, (4, 2, 2))):  # cut, and coarse
        key = layout.KernelKey(7, 100, bits, nested=tag)
        ex = tvm_mod.tvm.compile(tvm_mod.tvm.IRModule({"main": kernels.unpack_func(key, "main")}), target=cpu[0])
        out = tvm_mod.empty((7, 100), "int32", cpu[1])
        ex["main"](tvm_mod.tensor(planes.pack(q, tag), cpu[1]), out)
        np.testing.assert_array_equal(out.numpy(), slicing.slice_codes(q, bits, rule), err_msg=tag)


@pytest.mark.parametrize("m_bucket", [1, None])
@pytest.mark.parametrize("bits,rule,split", [(2, "round", None), (3, "midpoint", None), (4, "round", None),
                                              (6, "midpoint", None), (8, "round", None), (3, "round", (4, 4)),
                                              (6, "midpoint", (4, 4))])
def test_nested_kernel_equals_the_dense_kernel_bit_exactly(bits, rule, split, m_bucket, cpu, rng):
    """Same decoded codes, same arithmetic: the switchable kernel's output is the dedicated kernel's, bit for bit."""
    from matq_compile.lower import kernels

    dense = layout.KernelKey(24, 256, bits, 64, m_bucket)
    nested = layout.KernelKey(24, 256, bits, 64, m_bucket, nested=planes.tag((2, 3, 4, 6, 8), rule, split))
    q = rng.integers(0, 256, (24, 256)).astype(np.uint8)
    s = (rng.random((24, 4)) * 0.02 + 1e-3).astype(np.float16)
    arr = layout.pack_slice(q, s, None, bits, rule, 64)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    outs = []
    for key, P in ((dense, arr["P"]), (nested, planes.pack(q, nested.nested))):
        ex = tvm_mod.tvm.compile(tvm_mod.tvm.IRModule({"main": kernels.linear_func(key, "main")}), target=cpu[0])
        y = tvm_mod.empty((1, 24), "float32", cpu[1])
        ex["main"](*(tvm_mod.tensor(a, cpu[1]) for a in (x, P, arr["S"], arr["Z"])), y)
        outs.append(y.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
