"""TIR bit-slice kernels per KernelKey; mirrors matq_compile/layout.py (pinned bit-exactly by tests).

    linear_func(key, name):  Y[M, N] = X[M, K] @ dequant(P, S, Z)[N, K]^T
        args  X act[M, K], P uint32[N, words_per_row] (nested: packed_shape), S f16[N, K/g], Z f16[N, K/g];
        out Y act[M, N]
        M is int64 static (key.m_bucket; tunable) or tirx.Var("m", "int64") (key.m_bucket None).

Grouped form (CPU decode, M = 1, group size a multiple of 32): the scale and zero leave the inner loop,

    Y[m, n] = sum_q S[n, q] * sum_l (part[m, n, q, l] - Z[n, q] * xs[m, q, l])
    part[m, n, q, l] = sum_b X[m, k] * code(n, k)      k = q*g + b*32 + l  (l: lane of a 32-code block)
    xs[m, q, l]      = sum_b X[m, k]                   shared by every row n (cost M*K)

so the innermost loop is decode + one FMA per weight (the flat form spends a subtract and a multiply more).
Blocks: "decode" (float code, inlined), "gemm" (part; the anchor block), "xsum", "scale" (-> Y), "cast".

Flat form (M > 1 or dynamic M, other group sizes, and every GPU kernel: the GEMV rules schedule it at M = 1
(schedules/gpu_dlight.py), while the grouped form would fall to dlight's Fallback, which materialises the partial
sums in global memory):
"dequant" W = (code - Z) * S (inlined), "gemm" acc = sum_k X * W, "cast".

In both forms the "gemm" block is identical for every bits r (it reads decoded codes or weights), so under
module_equality="anchor-block" one tuning record of a shape serves all r (the r-specific unpack is inlined).
"""
from __future__ import annotations

from matq_compile import layout, planes
from matq_compile._tvm import i64, te, tirx, tvm

ACC_DTYPE = "float32"
KEY_ATTR = "matq.kernel_key"  # on every bit-slice kernel: its KernelKey name (the database replay reads it)
HAND_ATTR = "matq.hand_scheduled"  # on every kernel written already scheduled (Llama kernels, the dense head)


def hand_scheduled(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Mark a kernel that is scheduled where it is written: ScheduleKernels seals it against fusion and dlight."""
    return func.with_attr(HAND_ATTR, True)


def _code(P: te.Tensor, n, k, key: layout.KernelKey) -> tirx.PrimExpr:
    """The r-bit code of weight (n, k): from the slice's own bit planes, or from a nested layout's top planes."""
    return _nested_code(P, n, k, key) if key.nested else _dense_code(P, n, k, key.bits)


def _dense_code(P: te.Tensor, n, k, bits: int) -> tirx.PrimExpr:
    """The r-bit code of weight (n, k), assembled from its bit planes (layout.planes; no plane straddles a word)."""
    base = tirx.floordiv(k, i64(layout.BLOCK)) * i64(bits)
    kl = tirx.floormod(k, i64(layout.BLOCK))
    code = None
    for w, off, shift in layout.planes(bits):
        per_word = 32 // w
        word = P[n, base + i64(off) + tirx.floordiv(kl, i64(per_word))]
        v = (word >> (tirx.floormod(kl, i64(per_word)) * i64(w)).astype("uint32")) & tirx.const((1 << w) - 1, "uint32")
        v = v << tirx.const(shift, "uint32") if shift else v
        code = v if code is None else code | v
    return code.astype("int32")


def _nested_code(P: te.Tensor, n, k, key: layout.KernelKey) -> tirx.PrimExpr:
    """planes.slice_codes in TIR: the top t(r) bits from the planes the slice reads, then the round bit folded in."""
    kl = tirx.floormod(k, i64(layout.BLOCK))
    top = None
    for w, off, shift in planes.planes_read(key.bits, key.nested):
        per_word = 32 // w
        nblk = -(-key.K // layout.BLOCK)
        word = P[i64(off * key.N * nblk) + n * i64(w * nblk) + tirx.floordiv(k, i64(layout.BLOCK)) * i64(w)
                 + tirx.floordiv(kl, i64(per_word))]
        v = (word >> (tirx.floormod(kl, i64(per_word)) * i64(w)).astype("uint32")) & tirx.const((1 << w) - 1, "uint32")
        v = v << tirx.const(shift, "uint32") if shift > 0 else v >> tirx.const(-shift, "uint32") if shift else v
        top = v if top is None else top | v
    rule = planes.parse_tag(key.nested)[0]
    if planes.top_bits(key.bits, rule) != key.bits:
        top = tirx.min((top + tirx.const(1, "uint32")) >> tirx.const(1, "uint32"),
                       tirx.const((1 << key.bits) - 1, "uint32"))
    return top.astype("int32")


def packed_shape(key: layout.KernelKey) -> tuple:
    """Shape of the packed argument P: [N, words_per_row] (dense), or the nested planes one after another."""
    if key.nested:
        return (i64(key.N * key.words_per_row),)
    return (i64(key.N), i64(key.words_per_row))


def _weights(key: layout.KernelKey) -> tuple[te.Tensor, te.Tensor, te.Tensor]:
    N, G = i64(key.N), i64(key.n_groups)
    P = te.placeholder(packed_shape(key), "uint32", name="P")
    S = te.placeholder((N, G), layout.SCALE_DTYPE, name="S")
    Z = te.placeholder((N, G), layout.SCALE_DTYPE, name="Z")
    return P, S, Z


def _flat(X: te.Tensor, key: layout.KernelKey) -> tuple[list[te.Tensor], te.Tensor]:
    P, S, Z = _weights(key)
    g = i64(key.group_size)

    def dequant(n, k):
        c = _code(P, n, k, key).astype(ACC_DTYPE)
        return (c - Z[n, k // g].astype(ACC_DTYPE)) * S[n, k // g].astype(ACC_DTYPE)

    W = te.compute((i64(key.N), i64(key.K)), dequant, name="dequant")
    r = te.reduce_axis((i64(0), i64(key.K)), name="k")
    Y = te.compute((X.shape[0], i64(key.N)), lambda i, j: te.sum(_f32(X[i, r]) * W[j, r], axis=r), name="gemm")
    return [P, S, Z], Y


def _grouped(X: te.Tensor, key: layout.KernelKey) -> tuple[list[te.Tensor], te.Tensor]:
    P, S, Z = _weights(key)
    M, N, G, L = X.shape[0], i64(key.N), i64(key.n_groups), i64(layout.BLOCK)
    g, nb = i64(key.group_size), i64(key.group_size // layout.BLOCK)
    C = te.compute((N, i64(key.K)), lambda n, k: _code(P, n, k, key).astype(ACC_DTYPE), name="decode")
    b = te.reduce_axis((i64(0), nb), name="b")
    part = te.compute((M, N, G, L), lambda i, j, q, l: te.sum(
        _f32(X[i, q * g + b * L + l]) * C[j, q * g + b * L + l], axis=b), name="gemm")
    bx = te.reduce_axis((i64(0), nb), name="bx")
    xs = te.compute((M, G, L), lambda i, q, l: te.sum(_f32(X[i, q * g + bx * L + l]), axis=bx), name="xsum")
    q, l = te.reduce_axis((i64(0), G), name="q"), te.reduce_axis((i64(0), L), name="l")
    Y = te.compute((M, N), lambda i, j: te.sum(S[j, q].astype(ACC_DTYPE) * (
        part[i, j, q, l] - Z[j, q].astype(ACC_DTYPE) * xs[i, q, l]), axis=[q, l]), name="scale")
    return [P, S, Z], Y


def _f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return x if x.dtype == ACC_DTYPE else x.astype(ACC_DTYPE)


def is_grouped(key: layout.KernelKey) -> bool:
    """Whether `key` uses the grouped form on CPUs: decode (M = 1) with groups of whole 32-code blocks. For M > 1
    the flat form measured 1.4-2.9x faster (16 rows x 32 partial sums no longer fit in registers)."""
    return key.m_bucket == 1 and key.group_size % layout.BLOCK == 0


def linear_func(key: layout.KernelKey, name: str | None = None, gpu: bool = False) -> tirx.PrimFunc:
    """The unscheduled PrimFunc of `key` with global_symbol `name` (default key.name); gpu: always the flat form."""
    M = i64(key.m_bucket) if key.m_bucket is not None else tirx.Var("m", "int64")
    X = te.placeholder((M, i64(key.K)), key.dtype, name="X")
    (P, S, Z), Y = (_grouped if is_grouped(key) and not gpu else _flat)(X, key)
    if key.dtype != ACC_DTYPE:
        Y = te.compute((M, i64(key.N)), lambda i, j: Y[i, j].astype(key.dtype), name="cast")
    func = te.create_prim_func([X, P, S, Z, Y]).with_attr("global_symbol", name or key.name)
    return func.with_attr(KEY_ATTR, key.name)  # lets apply_database find the key whatever the symbol


def unpack_func(key: layout.KernelKey, name: str = "matq_unpack") -> tirx.PrimFunc:
    """codes int32 [N, K] from P with the kernel's own unpack expression (pins TIR to layout.unpack)."""
    P = _weights(key)[0]
    C = te.compute((i64(key.N), i64(key.K)), lambda n, k: _code(P, n, k, key), name="unpack")
    return te.create_prim_func([P, C]).with_attr("global_symbol", name)


def arg_shapes(key: layout.KernelKey, m: int | None = None) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of X, P, S, Z, Y for batch m (default: the key's bucket)."""
    m = key.m_bucket if m is None else m
    if m is None:
        raise ValueError(f"{key.name} has a dynamic M; pass m")
    G = key.n_groups
    p_shape = tuple(int(d) for d in packed_shape(key))
    return [((m, key.K), key.dtype), (p_shape, "uint32"), ((key.N, G), layout.SCALE_DTYPE),
            ((key.N, G), layout.SCALE_DTYPE), ((m, key.N), key.dtype)]


def switch_func(key: layout.KernelKey, widths: tuple[int, ...], name: str,
                callees: tuple[str, ...] | None = None) -> tirx.PrimFunc:
    """The run-time switch of a switchable build: calls the kernel of width `bits` (an int64 scalar, from the entry
    function's bits shape) on the unit's one plane array and that width's scales and zeros.

        args  X act[M, K], P uint32[N * nested words_per_row], S_r, Z_r f16[N, K/g] for r in widths, bits; out Y
    Each branch is a direct call of the per-width kernel in the same library: `callees[i]` for widths[i] (default
    `key.with_bits(r).name`, the tuned bit-slice kernel; an int8-activation build passes its kernels' names). A
    width outside `widths` raises. Written scheduled (it holds no loops)."""
    callees = tuple(key.with_bits(r).name for r in widths) if callees is None else tuple(callees)
    if len(callees) != len(widths):
        raise ValueError(f"{name}: {len(widths)} widths but {len(callees)} kernels")
    M = i64(key.m_bucket) if key.m_bucket is not None else tirx.Var("m", "int64")
    X = te.placeholder((M, i64(key.K)), key.dtype, name="X")
    P = te.placeholder(packed_shape(key), "uint32", name="P")
    G = i64(key.n_groups)
    sz = [te.placeholder((i64(key.N), G), layout.SCALE_DTYPE, name=f"{p}{r}") for r in widths for p in "SZ"]
    bits = tirx.Var("bits", "int64")

    def body(ins, outs):
        x, p, *rest = ins
        stmt = _assert(tirx.const(False, "bool"), "ValueError", f"{name}: this build has no kernel for that width")
        for i in reversed(range(len(widths))):
            call = tirx.call_cpacked(callees[i], x, p, rest[2 * i], rest[2 * i + 1], outs[0])
            ok = _assert(call == 0, "RuntimeError", f"{name}: the r={widths[i]} kernel failed")
            stmt = tirx.IfThenElse(bits == widths[i], ok, stmt)
        return stmt

    Y = te.extern((M, i64(key.N)), [X, P, *sz], body, name="switch", dtype=key.dtype)
    func = te.create_prim_func([X, P, *sz, bits, Y]).with_attr("global_symbol", name)
    return hand_scheduled(func)


def _assert(cond: tirx.PrimExpr, kind: str, message: str) -> tirx.Stmt:
    # positional: 0.27's constructor takes (condition, kind, parts), whatever the Python keyword names say
    return tirx.AssertStmt(cond, tvm.ir.StringImm(kind), [tvm.ir.StringImm(message)])
