"""A vectorisable float32 exp for hand-written TIR on CPU.

LLVM lowers `T.exp` to one libm call per lane, so a vectorised softmax or SiLU loop runs at the speed of scalar
expf (SmolLM2's SiLU*mul of 1536 values: 13 us with libm, 1.7 us with this, on a Zen 3 core). This is the Cephes
expf range reduction and polynomial (as in topi.fast_exp, which exists only as a TE operator) written as a TIR
expression: plain arithmetic, so LLVM keeps it in vector lanes. Measured against float64: within 1 ulp (relative
error <= 8.2e-8) over 2^20 points of [-87, 0]; below -87 it returns ~1e-38 instead of a denormal or 0.
"""
from __future__ import annotations

from matq_compile._tvm import tirx
from tvm.script import tirx as T

_LOG2E = 1.44269504088896341
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split so n * _LN2_HI is exact for |n| < 2^9
_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def exp_nonpositive(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """e^x for float32 x <= 0 (softmax after the max is subtracted, SiLU of |x|): e^x = 2^n e^r, |r| <= ln2 / 2."""
    x = T.max(x, T.float32(-87.0))
    n = T.floor(x * T.float32(_LOG2E) + T.float32(0.5))
    r = x - n * T.float32(_LN2_HI) - n * T.float32(_LN2_LO)
    p = T.float32(_POLY[0])
    for c in _POLY[1:]:
        p = p * r + T.float32(c)
    two_n = T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))
    return (p * r * r + r + T.float32(1)) * two_n
