"""TIR bit-slice kernels per KernelKey; mirrors matq_compile/layout.py (pinned bit-exactly by tests).

    linear_func(key, name):  Y[M, N] = X[M, K] @ dequant(P, S, Z)[N, K]^T
        args  X act[M, K], P uint32[N, words_per_row], S f16[N, K/g], Z f16[N, K/g]; out Y act[M, N]
        M is int64 static (key.m_bucket; tunable) or tirx.Var("m", "int64") (key.m_bucket None).

Blocks (stable names; tuning traces refer to them):
    "dequant"  W[n, k] = (code(P, n, k) - Z[n, k//g]) * S[n, k//g]   float32, inlined by every schedule
    "gemm"     acc[m, n] = sum_k X[m, k] * W[n, k]                    float32 accumulation (the anchor block)
    "cast"     Y = acc as the activation dtype                        only when dtype != float32

The "gemm" block is identical for every bits r, so under module_equality="anchor-block" one tuning record of a
shape serves all r (the r-specific unpack lives in the inlined "dequant" block).
"""
from __future__ import annotations

from matq_compile import layout
from matq_compile._tvm import i64, te, tirx

ACC_DTYPE = "float32"
KEY_ATTR = "matq.kernel_key"


def _code(P: te.Tensor, n, k, bits: int, wpr: int) -> tirx.PrimExpr:
    """The r-bit code of weight (n, k): bits [k*r, k*r + r) of row n's little-endian stream (layout.py)."""
    b = k * i64(bits)
    w = tirx.floordiv(b, i64(32))
    off = tirx.floormod(b, i64(32))  # int64 arithmetic: uint constant folding refuses 0u - x
    lo = P[n, w] >> off.astype("uint32")
    if 32 % bits:  # r in {3,5,6,7}: a code may straddle into the next word of the same block
        nxt = tirx.min(w + i64(1), i64(wpr - 1))  # clamped: never reads past the row (last code never straddles)
        spill = P[n, nxt] << tirx.floormod(i64(32) - off, i64(32)).astype("uint32")
        lo = lo | tirx.Select(off + i64(bits) > i64(32), spill, tirx.const(0, "uint32"))
    return (lo & tirx.const((1 << bits) - 1, "uint32")).astype("int32")


def _dequant(key: layout.KernelKey) -> tuple[te.Tensor, te.Tensor, te.Tensor, te.Tensor]:
    N, K, g, wpr = i64(key.N), i64(key.K), key.group_size, key.words_per_row
    P = te.placeholder((N, i64(wpr)), "uint32", name="P")
    S = te.placeholder((N, i64(key.n_groups)), layout.SCALE_DTYPE, name="S")
    Z = te.placeholder((N, i64(key.n_groups)), layout.SCALE_DTYPE, name="Z")

    def body(n, k):
        grp = tirx.floordiv(k, i64(g))
        c = _code(P, n, k, key.bits, wpr).astype(ACC_DTYPE)
        return (c - Z[n, grp].astype(ACC_DTYPE)) * S[n, grp].astype(ACC_DTYPE)

    W = te.compute((N, K), body, name="dequant")
    return P, S, Z, W


def linear_func(key: layout.KernelKey, name: str | None = None) -> tirx.PrimFunc:
    """The unscheduled PrimFunc of `key` with global_symbol `name` (default key.name)."""
    M = i64(key.m_bucket) if key.m_bucket is not None else tirx.Var("m", "int64")
    X = te.placeholder((M, i64(key.K)), key.dtype, name="X")
    P, S, Z, W = _dequant(key)
    r = te.reduce_axis((i64(0), i64(key.K)), name="k")
    x = (lambda i: X[i, r]) if key.dtype == ACC_DTYPE else (lambda i: X[i, r].astype(ACC_DTYPE))
    Y = te.compute((M, i64(key.N)), lambda i, j: te.sum(x(i) * W[j, r], axis=r), name="gemm")
    if key.dtype != ACC_DTYPE:
        Y = te.compute((M, i64(key.N)), lambda i, j: Y[i, j].astype(key.dtype), name="cast")
    func = te.create_prim_func([X, P, S, Z, Y]).with_attr("global_symbol", name or key.name)
    return func.with_attr(KEY_ATTR, key.name)  # lets apply_database find the key whatever the symbol


def unpack_func(key: layout.KernelKey, name: str = "matq_unpack") -> tirx.PrimFunc:
    """codes int32 [N, K] from P with the kernel's own unpack expression (pins TIR to layout.unpack)."""
    N, K, wpr = i64(key.N), i64(key.K), key.words_per_row
    P = te.placeholder((N, i64(wpr)), "uint32", name="P")
    C = te.compute((N, K), lambda n, k: _code(P, n, k, key.bits, wpr), name="unpack")
    return te.create_prim_func([P, C]).with_attr("global_symbol", name)


def arg_shapes(key: layout.KernelKey, m: int | None = None) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of X, P, S, Z, Y for batch m (default: the key's bucket)."""
    m = key.m_bucket if m is None else m
    if m is None:
        raise ValueError(f"{key.name} has a dynamic M; pass m")
    G = key.n_groups
    return [((m, key.K), key.dtype), ((key.N, key.words_per_row), "uint32"), ((key.N, G), layout.SCALE_DTYPE),
            ((key.N, G), layout.SCALE_DTYPE), ((m, key.N), key.dtype)]
