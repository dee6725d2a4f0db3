"""The int8-activation path of a bit-slice linear in numpy: the truth lower/int8_kernels.py mirrors (tests pin it).

Activations are quantized per weight group (the same groups as the weight's scales), symmetric int8:

    amax[m, q] = max_k |x[m, k]|                 over the group's columns k (float32)
    inv[m, q]  = 127 / amax[m, q]  (0 when amax = 0)          float32 division
    xq[m, k]   = clip(rint(x[m, k] * inv[m, q]), -127, 127)   float32 product, round half to even
    sx[m, q]   = amax[m, q] / 127                              the group's activation scale
    xsum[m, q] = sum_k xq[m, k]                                int32, kept for the zero term

Round half to even is what a vector unit does by default (llvm.nearbyint, vroundps); -128 is never produced, so
|xq| <= 127 and an unsigned-by-signed byte pair product sum stays within int16 for codes <= 127.
The products are integer: the codes of the r-bit slice (unsigned, 0..2^r-1) times xq, summed in int32 per group:

    acc[m, n, q] = sum_k code[n, k] * xq[m, k]
    Y[m, n]      = sum_q sx[m, q] * S[n, q] * (acc[m, n, q] - Z[n, q] * xsum[m, q])     float32 epilogue

S and Z are the slice's effective scale and zero (layout.py; Z may be fractional in code units).
"""
from __future__ import annotations

import numpy as np

from matq_compile import layout

QMAX: int = 127


def quantize_activations(x: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 [M, K] -> (xq int8 [M, K], sx float32 [M, G], xsum int32 [M, G]) with G = K / group_size."""
    x = np.asarray(x, np.float32)
    M, K = x.shape
    if K % group_size:
        raise ValueError(f"group size {group_size} does not divide K={K}")
    xg = x.reshape(M, K // group_size, group_size)
    amax = np.abs(xg).max(axis=-1)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(QMAX) / amax, np.float32(0)).astype(np.float32)
    xq = np.clip(np.rint(xg * inv[..., None]), -QMAX, QMAX).astype(np.int8)
    sx = (amax / np.float32(QMAX)).astype(np.float32)
    return xq.reshape(M, K), sx, xq.astype(np.int32).sum(axis=-1).astype(np.int32)


def integer_acc(codes: np.ndarray, xq: np.ndarray, group_size: int) -> np.ndarray:
    """int32 [M, N, G]: per-group integer dot products of unsigned codes [N, K] and int8 activations [M, K]."""
    N, K = codes.shape
    M = xq.shape[0]
    c = codes.astype(np.int64).reshape(N, K // group_size, group_size)
    a = xq.astype(np.int64).reshape(M, K // group_size, group_size)
    return np.einsum("nqk,mqk->mnq", c, a).astype(np.int32)


def int8_linear(x: np.ndarray, arrays: dict[str, np.ndarray], bits: int, group: int = -1) -> np.ndarray:
    """float64 [M, N]: the int8-activation linear with an exact (float64) epilogue."""
    K = x.shape[1]
    g = layout.check_group(group, K)
    xq, sx, xsum = quantize_activations(x, g)
    acc = integer_acc(layout.unpack(arrays["P"], bits, K), xq, g).astype(np.float64)
    S, Z = arrays["S"].astype(np.float64), arrays["Z"].astype(np.float64)
    term = acc - Z[None] * xsum.astype(np.float64)[:, None, :]
    return np.einsum("mq,nq,mnq->mn", sx.astype(np.float64), S, term)


def int8_dense(x: np.ndarray, codes: np.ndarray, scale: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The int8-activation head (lower/int8_dense.py): signed per-row int8 codes [N, K] with row scales [N].
    Returns (acc int32 [M, N, G], y float64 [M, N] = scale[n] * sum_q sx[m, q] * acc[m, n, q])."""
    xq, sx, _ = quantize_activations(x, group_size)
    acc = integer_acc(codes, xq, group_size)
    y = np.einsum("mq,mnq->mn", sx.astype(np.float64), acc.astype(np.float64)) * scale.astype(np.float64)[None]
    return acc, y
