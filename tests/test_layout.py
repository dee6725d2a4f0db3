"""layout.py: pack/unpack bit-exact for every r and odd shapes; pack_slice equals the slicing.py closed form."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile import layout, slicing

BITS = range(2, 9)


def _pack_bitwise(codes: np.ndarray, bits: int) -> np.ndarray:
    """Independent reference, one bit at a time: per 32-code block, the binary digits of r as bit planes (high
    first); plane w fills w words, code kl's plane bits at [kl*w, kl*w + w) of them."""
    widths = [w for w in (8, 4, 2, 1) if bits & w]
    K = codes.shape[-1]
    wpr = layout.words_per_row(K, bits)
    flat = codes.reshape(-1, K)
    out = np.zeros((flat.shape[0], wpr), np.uint32)
    for r, row in enumerate(flat):
        for k, c in enumerate(row):
            blk, kl = divmod(k, 32)
            off, shift = 0, bits
            for w in widths:
                shift -= w
                for t in range(w):
                    b = kl * w + t
                    out[r, blk * bits + off + b // 32] |= np.uint32(((int(c) >> (shift + t)) & 1) << (b % 32))
                off += w
    return out.reshape(codes.shape[:-1] + (wpr,))


def test_planes_are_the_binary_digits_of_r():
    assert layout.planes(3) == ((2, 0, 1), (1, 2, 0))
    assert layout.planes(7) == ((4, 0, 3), (2, 4, 1), (1, 6, 0))
    for bits in BITS:
        assert sum(w for w, _, _ in layout.planes(bits)) == bits


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(13,), (3, 40), (16, 120), (2, 3, 33)])
def test_pack_matches_bitwise_reference_and_round_trips(bits, shape, rng):
    codes = rng.integers(0, 1 << bits, shape).astype(np.uint8)
    packed = layout.pack(codes, bits)
    assert packed.dtype == np.uint32
    assert packed.shape[-1] == -(-shape[-1] // 32) * bits  # r bits per weight, rows padded to 32 codes
    np.testing.assert_array_equal(packed, _pack_bitwise(codes, bits))
    np.testing.assert_array_equal(layout.unpack(packed, bits, shape[-1]), codes)


def test_extreme_codes_round_trip():
    for bits in BITS:
        for value in (0, (1 << bits) - 1):
            codes = np.full((2, 64), value, np.uint8)
            np.testing.assert_array_equal(layout.unpack(layout.pack(codes, bits), bits, 64), codes)


def test_pack_rejects_out_of_range_and_bad_bits():
    with pytest.raises(ValueError, match="codes must lie"):
        layout.pack(np.array([[4]], np.uint8), 2)
    with pytest.raises(ValueError, match="bits"):
        layout.pack(np.zeros((1, 32), np.uint8), 9)
    with pytest.raises(ValueError, match="uint32"):
        layout.unpack(np.zeros((1, 3), np.uint32), 4, 32)


@pytest.mark.parametrize("rule", ["round", "midpoint"])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [-1, 32, 96])
def test_pack_slice_dequant_equals_slicing_closed_form(rule, sym, group, rng):
    N, K = 5, 192
    g = K if group == -1 else group
    q = rng.integers(0, 256, (N, K)).astype(np.uint8)
    s = (rng.random((N, K // g)) * 0.02 + 1e-4).astype(np.float16)
    z = None if sym else rng.integers(0, 256, (N, K // g)).astype(np.uint8)
    for bits in BITS:
        arr = layout.pack_slice(q, s, z, bits, rule, group)
        assert set(arr) == {"P", "S", "Z"} and arr["S"].dtype == np.float16 and arr["Z"].dtype == np.float16
        zz = np.full((N, K // g), 128.0) if z is None else z.astype(np.float64)
        ref = slicing.dequant_parent(q, np.repeat(s.astype(np.float64), g, 1), np.repeat(zz, g, 1), bits, rule)
        np.testing.assert_array_equal(layout.dequant(arr, bits, K, group), ref)  # fp16 S and Z are exact


def test_pack_slice_validates_inputs(rng):
    q = rng.integers(0, 256, (4, 64)).astype(np.uint8)
    s = np.ones((4, 2), np.float16)
    with pytest.raises(ValueError, match="divisor"):
        layout.pack_slice(q, s, None, 4, group=48)
    with pytest.raises(ValueError, match="scales"):
        layout.pack_slice(q, s[:, :1], None, 4, group=32)
    with pytest.raises(ValueError, match="uint8"):
        layout.pack_slice(q.astype(np.int32), s, None, 4, group=32)


def test_kernel_key_name_round_trip_and_validation():
    key = layout.KernelKey(576, 1536, 3, 64, None, "float16")
    assert layout.KernelKey.parse(key.name) == key
    assert key.shape_key.bits == 4 and key.with_bits(6).bits == 6
    assert key.weight_bytes() == 576 * 48 * 3 * 4 + 2 * 576 * 24 * 2
    with pytest.raises(ValueError):
        layout.KernelKey(576, 576, 4, 100)
    with pytest.raises(ValueError):
        layout.KernelKey(576, 576, 1)
    with pytest.raises(ValueError):
        layout.KernelKey(576, 576, 4, dtype="int8")
    assert layout.bucket_for(1) == 1 and layout.bucket_for(16) == 16 and layout.bucket_for(5) is None
