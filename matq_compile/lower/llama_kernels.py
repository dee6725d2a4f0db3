"""Hand-written TIR for the non-linear parts of a Llama block: RoPE, the static KV cache, causal GQA attention.

The linears go through the bit-slice kernels (lower/kernels.py); everything here is small but runs every token,
so the loops are parallel over (token, head) and vectorised over a fixed tile: the llvm default pipeline
schedules nothing, and a naive attention loop would cost more than the quantized linears.

KV cache layout (one tensor per kind for the whole model, written in place by call_tir_inplace; kv_cache.py):
    K^T cache  [layers, kv_heads, max_seq / TILE, head_dim, TILE]   keys transposed per tile of TILE positions:
               the score loop is an axpy over positions, and one tile's keys are one contiguous 4 KB read
               (a [head_dim, max_seq] plane would put each tile's rows max_seq floats apart, a page per row)
    V cache    [layers, kv_heads, max_seq, head_dim]   the value loop is an axpy over head_dim
Positions >= the written length may hold stale values; they are never read (scores are masked by length).
"""
from __future__ import annotations

import math

from matq_compile._tvm import tirx
from tvm.script import tirx as T

from matq_compile.lower.fastmath import exp_nonpositive
from matq_compile.lower.kv_cache import TILE, cache_shapes


def _loops(gpu: bool):
    """(outer, vector, scratch scope): CPU parallel/vectorised loops, or on CUDA one thread block per outer
    iteration with serial inner loops (simple and correct; the linears, not these kernels, dominate decode)."""
    if gpu:
        return (lambda e: T.thread_binding(e, thread="blockIdx.x")), T.serial, "local"
    return T.parallel, T.vectorized, "global"


def rope_table_func(head_dim: int, theta: float, gpu: bool = False) -> tirx.PrimFunc:
    """cos/sin[i, d] of angle (pos + i) * theta^(-2d/D), computed once per forward for every layer's RoPE."""
    D, half = head_dim, head_dim // 2
    outer = _loops(gpu)[0] if gpu else T.serial

    @T.prim_func(private=True, s_tir=True)
    def rope_table(pos: T.int64, cos_h: T.handle, sin_h: T.handle):
        n = T.int64()
        cos = T.match_buffer(cos_h, (n, half), "float32")
        sin = T.match_buffer(sin_h, (n, half), "float32")
        with T.sblock("root"):
            for i in outer(n):
                for d in range(half):
                    cos[i, d] = T.cos(T.Cast("float32", pos + i) * (T.float32(1.0) / T.pow(
                        T.float32(theta), T.Cast("float32", d * 2) / T.float32(D))))
                    sin[i, d] = T.sin(T.Cast("float32", pos + i) * (T.float32(1.0) / T.pow(
                        T.float32(theta), T.Cast("float32", d * 2) / T.float32(D))))

    return rope_table


def rope_func(head_dim: int, gpu: bool = False) -> tirx.PrimFunc:
    """y[i, h, :] = RoPE(x[i, h, :]) with the rope_table of the same positions (HF rotate_half convention).
    Serial on CPU: a decode step rotates 9 x 64 values, less than a parallel launch costs."""
    half = head_dim // 2
    outer = _loops(gpu)[0] if gpu else T.serial

    @T.prim_func(private=True, s_tir=True)
    def rope(x_h: T.handle, cos_h: T.handle, sin_h: T.handle, y_h: T.handle):
        n, h = T.int64(), T.int64()
        x = T.match_buffer(x_h, (n, h, head_dim), "float32")
        cos = T.match_buffer(cos_h, (n, half), "float32")
        sin = T.match_buffer(sin_h, (n, half), "float32")
        y = T.match_buffer(y_h, (n, h, head_dim), "float32")
        with T.sblock("root"):
            for t in outer(n * h):
                for d in range(half):
                    y[t // h, t % h, d] = x[t // h, t % h, d] * cos[t // h, d] - \
                        x[t // h, t % h, d + half] * sin[t // h, d]
                    y[t // h, t % h, d + half] = x[t // h, t % h, d + half] * cos[t // h, d] + \
                        x[t // h, t % h, d] * sin[t // h, d]

    return rope


def k_write_func(layers: int, kv_heads: int, head_dim: int, max_seq: int, gpu: bool = False,
                 dtype: str = "float32") -> tirx.PrimFunc:
    """In place: K^T[layer, h, :, pos + i] = k[i, h, :] rounded to the cache's dtype (serial on CPU: a few hundred
    values per step)."""
    par = _loops(gpu)[0] if gpu else T.serial
    kt_shape = cache_shapes(layers, kv_heads, head_dim, max_seq)[0]

    @T.prim_func(private=True, s_tir=True)
    def k_write(kt_h: T.handle, k_h: T.handle, layer: T.int64, pos: T.int64):
        n = T.int64()
        kt = T.match_buffer(kt_h, kt_shape, dtype)
        k = T.match_buffer(k_h, (n, kv_heads, head_dim), "float32")
        with T.sblock("root"):
            for t in par(n * kv_heads):
                for d in range(head_dim):
                    kt[layer, t % kv_heads, (pos + t // kv_heads) // TILE, d, (pos + t // kv_heads) % TILE] = T.Cast(
                        dtype, k[t // kv_heads, t % kv_heads, d])

    return k_write


def v_write_func(layers: int, kv_heads: int, head_dim: int, max_seq: int, gpu: bool = False,
                 dtype: str = "float32") -> tirx.PrimFunc:
    """In place: vc[layer, h, pos + i, :] = v[i, h, :] rounded to the cache's dtype."""
    par = _loops(gpu)[0] if gpu else T.serial
    vec = _loops(gpu)[1]

    @T.prim_func(private=True, s_tir=True)
    def v_write(vc_h: T.handle, v_h: T.handle, layer: T.int64, pos: T.int64):
        n = T.int64()
        vc = T.match_buffer(vc_h, (layers, kv_heads, max_seq, head_dim), dtype)
        v = T.match_buffer(v_h, (n, kv_heads, head_dim), "float32")
        with T.sblock("root"):
            for t in par(n * kv_heads):
                for d in vec(head_dim):
                    vc[layer, t % kv_heads, pos + t // kv_heads, d] = T.Cast(dtype, v[t // kv_heads, t % kv_heads, d])

    return v_write


def attention_func(layers: int, heads: int, kv_heads: int, head_dim: int, max_seq: int,
                   gpu: bool = False, dtype: str = "float32") -> tirx.PrimFunc:
    """o[i, h*D:(h+1)*D] = softmax(q[i,h] . K[:L]^T / sqrt(D)) V[:L] with L = pos + i + 1 (causal, GQA), the cache
    in `dtype` (kv_cache.DTYPES) and every product in float32. max_seq must be a multiple of TILE (cache_shapes
    checks it)."""
    if gpu:
        return _attention_gpu(layers, heads, kv_heads, head_dim, max_seq, dtype)
    return _attention_cpu(layers, heads, kv_heads, head_dim, max_seq, dtype)


def _chains_sum(acc: tirx.Buffer, lane: tirx.PrimExpr) -> tirx.PrimExpr:
    """acc[0, lane] + ... + acc[chains - 1, lane]: the independent FMA chains of one score lane, summed."""
    total = acc[0, lane]
    for u in range(1, int(acc.shape[0])):
        total = total + acc[u, lane]
    return total


def _attention_cpu(layers: int, heads: int, kv_heads: int, head_dim: int, max_seq: int,
                   dtype: str) -> tirx.PrimFunc:
    """One task per (token, head). Scores of TILE positions at a time in registers, with SPLIT independent FMA
    chains over head_dim (one chain would wait on the FMA latency); a vectorised max, exp and sum over the scores
    (positions past L are masked to 0 after the exp, so stale cache values never count); the value sum in head_dim
    registers. The scores live in a per-task scratch row and are written once per tile."""
    H, KVH, D, S = heads, kv_heads, head_dim, max_seq
    G, scale, SPLIT = heads // kv_heads, 1.0 / math.sqrt(head_dim), 4
    KT_SHAPE = cache_shapes(layers, kv_heads, head_dim, max_seq)[0]
    if D % SPLIT:
        raise ValueError(f"head_dim must be a multiple of {SPLIT}, got {D}")

    @T.prim_func(private=True, s_tir=True)
    def attention(q_h: T.handle, kt_h: T.handle, v_h: T.handle, layer: T.int64, pos: T.int64, o_h: T.handle):
        n = T.int64()
        q = T.match_buffer(q_h, (n, H, D), "float32")
        kt = T.match_buffer(kt_h, KT_SHAPE, dtype)
        v = T.match_buffer(v_h, (layers, KVH, S, D), dtype)
        o = T.match_buffer(o_h, (n, H * D), "float32")
        with T.sblock("root"):
            for t in T.parallel(n * H):
                s = T.decl_buffer((S,), "float32")
                acc = T.decl_buffer((SPLIT, TILE), "float32")
                red = T.decl_buffer((2, TILE), "float32")
                tot = T.decl_buffer((2,), "float32")
                oacc = T.decl_buffer((D,), "float32")
                for j0 in range((pos + t // H + TILE) // TILE):
                    for u, j1 in T.grid(SPLIT, TILE):
                        acc[u, j1] = T.float32(0)
                    for d0 in range(D // SPLIT):
                        for u in T.unroll(SPLIT):
                            for j1 in T.vectorized(TILE):
                                acc[u, j1] = acc[u, j1] + q[t // H, t % H, d0 * SPLIT + u] * T.Cast("float32", kt[
                                    layer, t % H // G, j0, d0 * SPLIT + u, j1])
                    for j1 in T.vectorized(TILE):
                        s[j0 * TILE + j1] = T.Select(
                            j0 * TILE + j1 <= pos + t // H,
                            _chains_sum(acc, j1) * T.float32(scale),
                            T.float32(-3.0e38))
                for j1 in T.vectorized(TILE):
                    red[0, j1] = T.float32(-3.0e38)
                    red[1, j1] = T.float32(0)
                for j0 in range((pos + t // H + TILE) // TILE):
                    for j1 in T.vectorized(TILE):
                        red[0, j1] = T.max(red[0, j1], s[j0 * TILE + j1])
                tot[0] = T.float32(-3.0e38)
                for j1 in range(TILE):
                    tot[0] = T.max(tot[0], red[0, j1])
                for j0 in range((pos + t // H + TILE) // TILE):
                    for j1 in T.vectorized(TILE):
                        s[j0 * TILE + j1] = T.Select(j0 * TILE + j1 <= pos + t // H,
                                                     exp_nonpositive(s[j0 * TILE + j1] - tot[0]), T.float32(0))
                        red[1, j1] = red[1, j1] + s[j0 * TILE + j1]
                tot[1] = T.float32(0)
                for j1 in range(TILE):
                    tot[1] = tot[1] + red[1, j1]
                for d in T.vectorized(D):
                    oacc[d] = T.float32(0)
                for j in range(pos + t // H + 1):
                    for d in T.vectorized(D):
                        oacc[d] = oacc[d] + s[j] * T.Cast("float32", v[layer, t % H // G, j, d])
                for d in T.vectorized(D):
                    o[t // H, t % H * D + d] = oacc[d] * (T.float32(1) / tot[1])

    return attention


def _attention_gpu(layers: int, heads: int, kv_heads: int, head_dim: int, max_seq: int,
                   dtype: str) -> tirx.PrimFunc:
    H, KVH, D, S = heads, kv_heads, head_dim, max_seq
    G, scale = heads // kv_heads, 1.0 / math.sqrt(head_dim)
    par, vec, scope = _loops(True)
    KT_SHAPE = cache_shapes(layers, kv_heads, head_dim, max_seq)[0]

    @T.prim_func(private=True, s_tir=True)
    def attention(q_h: T.handle, kt_h: T.handle, v_h: T.handle, layer: T.int64, pos: T.int64, o_h: T.handle):
        n = T.int64()
        q = T.match_buffer(q_h, (n, H, D), "float32")
        kt = T.match_buffer(kt_h, KT_SHAPE, dtype)
        v = T.match_buffer(v_h, (layers, KVH, S, D), dtype)
        o = T.match_buffer(o_h, (n, H * D), "float32")
        with T.sblock("root"):
            for t in par(n * H):
                s = T.decl_buffer((S,), "float32", scope=scope)
                acc = T.decl_buffer((2,), "float32", scope=scope)
                nt = (pos + t // H + TILE) // TILE  # tiles covering L = pos + i + 1 positions
                for j0 in range(nt):
                    for j1 in vec(TILE):
                        s[j0 * TILE + j1] = T.float32(0)
                for d in range(D):
                    for j0 in range(nt):
                        for j1 in vec(TILE):
                            s[j0 * TILE + j1] = s[j0 * TILE + j1] + q[t // H, t % H, d] * T.Cast(
                                "float32", kt[layer, t % H // G, j0, d, j1])
                acc[0] = T.float32(-3.0e38)
                for j in range(pos + t // H + 1):
                    acc[0] = T.max(acc[0], s[j])
                acc[1] = T.float32(0)
                for j in range(pos + t // H + 1):
                    s[j] = T.exp((s[j] - acc[0]) * T.float32(scale))
                    acc[1] = acc[1] + s[j]
                for d in vec(D):
                    o[t // H, t % H * D + d] = T.float32(0)
                for j in range(pos + t // H + 1):
                    for d in vec(D):
                        o[t // H, t % H * D + d] = o[t // H, t % H * D + d] + s[j] * T.Cast(
                            "float32", v[layer, t % H // G, j, d])
                for d in vec(D):
                    o[t // H, t % H * D + d] = o[t // H, t % H * D + d] / acc[1]

    return attention


def _silu(g: tirx.PrimExpr) -> tirx.PrimExpr:
    """g * sigmoid(g) with e = exp(-|g|), so the exp never overflows. An expression, not a let: a let bound inside a
    vectorised loop is not widened per lane by this TVM (every lane read another lane's value)."""
    e = exp_nonpositive(-T.fabs(g))
    return g * T.Select(g >= T.float32(0), T.float32(1), e) / (T.float32(1) + e)


def silu_mul_func(width: int) -> tirx.PrimFunc:
    """y = silu(g) * u = g * u * sigmoid(g), sigmoid(g) from e = exp(-|g|) so the exp never overflows (CPU).
    Serial and vectorised: a decode step has 1536 values, less work than a parallel launch costs."""
    lanes = 8 if width % 8 == 0 else 1

    @T.prim_func(private=True, s_tir=True)
    def silu_mul(g_h: T.handle, u_h: T.handle, y_h: T.handle):
        n = T.int64()
        g = T.match_buffer(g_h, (n, width), "float32")
        u = T.match_buffer(u_h, (n, width), "float32")
        y = T.match_buffer(y_h, (n, width), "float32")
        with T.sblock("root"):
            for i, d0 in T.grid(n, width // lanes):
                for d1 in T.vectorized(lanes):
                    y[i, d0 * lanes + d1] = _silu(g[i, d0 * lanes + d1]) * u[i, d0 * lanes + d1]

    return silu_mul


def select_row_func(width: int, gpu: bool = False) -> tirx.PrimFunc:
    """y[0, :] = x[row, :]: prefill only needs the logits of the last real token of its chunk."""
    outer = _loops(gpu)[0] if gpu else T.serial

    @T.prim_func(private=True, s_tir=True)
    def select_row(x_h: T.handle, row: T.int64, y_h: T.handle):
        n = T.int64()
        x = T.match_buffer(x_h, (n, width), "float32")
        y = T.match_buffer(y_h, (1, width), "float32")
        with T.sblock("root"):
            for d in outer(width):
                y[0, d] = x[row, d]

    return select_row


def dense_func(N: int, K: int, w_dtype: str = "float32") -> tirx.PrimFunc:
    """y[m, n] = sum_k x[m, k] * w[n, k] (fp32 accumulation) for the unquantized head: parallel over row blocks,
    each weight row read once for all m and reduced in TILE vector lanes (a memory-bound GEMV at M = 1).
    w_dtype "int8": w holds per-row symmetric int8 codes and y is scaled by s[n] (signature x, w, s, y)."""
    if w_dtype == "int8":
        return _dense_int8(N, K)
    NB, KT = 16, K // TILE * TILE

    @T.prim_func(private=True, s_tir=True)
    def dense(x_h: T.handle, w_h: T.handle, y_h: T.handle):
        m = T.int64()
        x = T.match_buffer(x_h, (m, K), "float32")
        w = T.match_buffer(w_h, (N, K), w_dtype)
        y = T.match_buffer(y_h, (m, N), "float32")
        with T.sblock("root"):
            for t in T.parallel((N + NB - 1) // NB):
                acc = T.decl_buffer((TILE + 1,), "float32")
                for r, i in T.grid(NB, m):
                    if t * NB + r < N:
                        for j in T.vectorized(TILE):
                            acc[j] = T.float32(0)
                        for k0 in range(KT // TILE):
                            for j in T.vectorized(TILE):
                                acc[j] = acc[j] + x[i, k0 * TILE + j] * T.Cast("float32", w[t * NB + r, k0 * TILE + j])
                        acc[TILE] = T.float32(0)
                        for k in range(KT, K):
                            acc[TILE] = acc[TILE] + x[i, k] * T.Cast("float32", w[t * NB + r, k])
                        for j in range(TILE):
                            acc[TILE] = acc[TILE] + acc[j]
                        y[i, t * NB + r] = acc[TILE]

    return dense


def _dense_int8(N: int, K: int) -> tirx.PrimFunc:
    NB, KT = 16, K // TILE * TILE

    @T.prim_func(private=True, s_tir=True)
    def dense(x_h: T.handle, w_h: T.handle, s_h: T.handle, y_h: T.handle):
        m = T.int64()
        x = T.match_buffer(x_h, (m, K), "float32")
        w = T.match_buffer(w_h, (N, K), "int8")
        s = T.match_buffer(s_h, (N,), "float32")
        y = T.match_buffer(y_h, (m, N), "float32")
        with T.sblock("root"):
            for t in T.parallel((N + NB - 1) // NB):
                acc = T.decl_buffer((TILE + 1,), "float32")
                for r, i in T.grid(NB, m):
                    if t * NB + r < N:
                        for j in T.vectorized(TILE):
                            acc[j] = T.float32(0)
                        for k0 in range(KT // TILE):
                            for j in T.vectorized(TILE):
                                acc[j] = acc[j] + x[i, k0 * TILE + j] * T.Cast("float32", w[t * NB + r, k0 * TILE + j])
                        acc[TILE] = T.float32(0)
                        for k in range(KT, K):
                            acc[TILE] = acc[TILE] + x[i, k] * T.Cast("float32", w[t * NB + r, k])
                        for j in range(TILE):
                            acc[TILE] = acc[TILE] + acc[j]
                        y[i, t * NB + r] = acc[TILE] * s[t * NB + r]

    return dense
