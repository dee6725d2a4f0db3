"""Group scale/zero for the parent grid (spec section 2) and round-to-nearest codes.

A b-bit grid (b = 8 for the parent, b < 8 for the per-precision baselines) has maxq = 2^b - 1 and is stored as an
8-bit parent: code q_b << d, scale s_b / 2^d, zero z_b << d with d = 8 - b, so that the round-rule slice at r = b
gives back q_b exactly. Scales are rounded to fp16 *before* any code is chosen, so the codes are optimal for the
values the checkpoint actually stores.
"""
from __future__ import annotations

import torch

FP16_TINY = 2.0**-24  # smallest positive fp16 (subnormal); a group scale never rounds to zero


def find_params(w: torch.Tensor, bits: int = 8, sym: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (s_b, z_b) of a group w [out, g] on the b-bit grid, fp32 [out] each.

    sym:  a = max|w| (1 for an all-zero row), s = 2a / maxq, z = 2^(b-1).
    asym: range [min(w, 0), max(w, 0)] ([-1, 1] if both are 0), s = range / maxq, z = round(-xmin / s).
    s_b / 2^(8-b) is exactly representable in fp16 (that is the stored scale).
    """
    maxq = float(2**bits - 1)
    w = w.float()
    if sym:
        amax = w.abs().amax(dim=1)
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)
        s = _fp16_exact(2.0 * amax / maxq, bits)
        z = torch.full_like(s, float(2 ** (bits - 1)))
        return s, z
    xmin = w.amin(dim=1).clamp(max=0.0)
    xmax = w.amax(dim=1).clamp(min=0.0)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both0, -torch.ones_like(xmin), xmin)
    xmax = torch.where(both0, torch.ones_like(xmax), xmax)
    s = _fp16_exact((xmax - xmin) / maxq, bits)
    z = torch.round(-xmin / s).clamp(0.0, maxq)
    return s, z


def _fp16_exact(s: torch.Tensor, bits: int) -> torch.Tensor:
    step = float(2 ** (8 - bits))
    s16 = (s / step).half()
    if not torch.isfinite(s16).all():
        raise ValueError(f"weights too large for fp16 group scales (max scale {float(s.max()):.3g})")
    s16 = torch.where(s16 == 0, torch.full_like(s16, FP16_TINY), s16)
    return s16.float() * step


def rtn_codes(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """clamp(round(x / s) + z, 0, 2^b - 1) with round-half-to-even, as fp32 integer values (broadcasting)."""
    return torch.clamp(torch.round(x / s) + z, 0.0, float(2**bits - 1))


def dequant_codes(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """s * (q - z) in fp32: the value GPTQ compensates against."""
    return s * (q - z)


def to_parent(q_b: torch.Tensor, s_b: torch.Tensor, z_b: torch.Tensor | None, bits: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """b-bit (codes, scales, zeros) -> parent (uint8 q_b << d, fp16 s_b / 2^d, uint8 z_b << d); exact."""
    d = 8 - bits
    q8 = (q_b.to(torch.int32) << d).to(torch.uint8)
    s8 = (s_b / float(2**d)).half()
    z8 = None if z_b is None else (z_b.to(torch.int32) << d).to(torch.uint8)
    return q8, s8, z8
