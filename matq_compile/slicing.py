"""Slice rules: how an r-bit code (r = 2..8) is read from an 8-bit parent code, and what it dequantizes to.

This module is the single truth of the slice math (spec section 3). numpy and torch inputs are both accepted;
every function is elementwise and integer-exact.

    round    S_r(q) = min(((q >> (d-1)) + 1) >> 1, 2^r - 1)       w = s * ((S_r << d) - z)
    midpoint T_r(q) = q >> d                                      w = s * ((T_r << d) + 2^(d-1) - z)

with d = 8 - r. In both rules the r-bit model is affine in its own code:  w = s_r * (code - z_r)  with
s_r = s * 2^d and z_r = z / 2^d (round) or (z - 2^(d-1)) / 2^d (midpoint). Kernels use that form.
"""
from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np

SliceRule = Literal["round", "midpoint"]
SLICE_RULES: tuple[str, ...] = ("round", "midpoint")
BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)

A = TypeVar("A")  # np.ndarray or torch.Tensor


def check_bits(bits: int) -> int:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or int(bits) not in BITS:
        raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
    return int(bits)


def check_rule(rule: str) -> str:
    if rule not in SLICE_RULES:
        raise ValueError(f"unknown slice rule {rule!r}; known rules: {', '.join(SLICE_RULES)}")
    return rule


def slice_codes(q: A, bits: int, rule: SliceRule = "round") -> A:
    """r-bit codes in [0, 2^r - 1] from uint8 parent codes (same array type, integer dtype preserved)."""
    bits, rule = check_bits(bits), check_rule(rule)
    if bits == 8:
        return q
    d = 8 - bits
    wide = q.astype(np.int32) if isinstance(q, np.ndarray) else q.to(dtype=_torch().int32)
    if rule == "midpoint":
        out = wide >> d
    else:
        out = ((wide >> (d - 1)) + 1) >> 1
        out = out.clip(max=(1 << bits) - 1) if isinstance(q, np.ndarray) else out.clamp(max=(1 << bits) - 1)
    return out.astype(q.dtype) if isinstance(q, np.ndarray) else out.to(q.dtype)


def slice_zero_point(z: A | float, bits: int, rule: SliceRule = "round") -> A | float:
    """The zero point of the r-bit affine view, in units of the r-bit code (float)."""
    bits, rule = check_bits(bits), check_rule(rule)
    d = 8 - bits
    z = z.astype(np.float64) if isinstance(z, np.ndarray) else (z.double() if hasattr(z, "double") else float(z))
    if bits == 8:
        return z
    return (z - 2 ** (d - 1)) / 2**d if rule == "midpoint" else z / 2**d


def slice_scale(s: A, bits: int) -> A:
    """The scale of the r-bit affine view: s * 2^(8-r)."""
    return s * float(2 ** (8 - check_bits(bits)))


def dequant_parent(q: A, s: A, z: A | float, bits: int, rule: SliceRule = "round") -> A:
    """w_r(q) for elementwise-broadcast s and z, straight from the spec's closed form (float64 for numpy)."""
    bits, rule = check_bits(bits), check_rule(rule)
    d = 8 - bits
    code = slice_codes(q, bits, rule)
    if isinstance(q, np.ndarray):
        level = code.astype(np.float64) * 2**d
        zf = np.asarray(z, dtype=np.float64)
        sf = np.asarray(s, dtype=np.float64)
    else:
        level = code.double() * 2**d
        zf = z.double() if hasattr(z, "double") else z
        sf = s.double()
    if rule == "midpoint" and bits < 8:
        level = level + 2 ** (d - 1)
    return sf * (level - zf)


def grid_values(bits: int, rule: SliceRule = "round", zero: int = 128) -> np.ndarray:
    """All distinct values (in units of s) the r-bit slice of a parent with zero `zero` can represent."""
    q = np.arange(256, dtype=np.uint8)
    return np.unique(dequant_parent(q, np.float64(1.0), float(zero), bits, rule))


def _torch():
    import torch

    return torch
