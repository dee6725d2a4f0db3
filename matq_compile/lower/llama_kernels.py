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


def rotate(lo: tirx.PrimExpr, hi: tirx.PrimExpr, c: tirx.PrimExpr, s: tirx.PrimExpr) -> tuple:
    """RoPE of one pair (x[d], x[d + D/2]) by angle (cos c, sin s), HF rotate_half: (lo c - hi s, hi c + lo s)."""
    return lo * c - hi * s, hi * c + lo * s


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
                    y[t // h, t % h, d] = rotate(x[t // h, t % h, d], x[t // h, t % h, d + half], cos[t // h, d],
                                                 sin[t // h, d])[0]
                    y[t // h, t % h, d + half] = rotate(x[t // h, t % h, d], x[t // h, t % h, d + half],
                                                        cos[t // h, d], sin[t // h, d])[1]

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


def _chains(G: int, D: int) -> int:
    """Independent FMA chains per query head in the score loop: enough chains over the group's heads to cover the
    FMA latency (G * chains <= 8), each a whole share of head_dim."""
    return next(c for c in (4, 2, 1) if G * c <= 8 and D % c == 0) if G <= 8 else 1


def _attention_cpu(layers: int, heads: int, kv_heads: int, head_dim: int, max_seq: int,
                   dtype: str) -> tirx.PrimFunc:
    """One task per (token, key/value head, run of position tiles): the G query heads that share a key/value head
    are computed together, so each cached key and value is loaded and converted once for all G (a float16 cache
    costs a 2-uop `vcvtph2ps` per 16 values, as much as G FMAs), with an online softmax over tiles of TILE
    positions (running max, sum per lane and value sum in registers; positions past L are masked before the max
    and never read for the values, so stale cache entries never count). A decode step alone has too few of those
    tasks for the threads (3 key/value heads), so its positions are split into CHUNKS runs whose partial
    (max, sum, value sum) a short serial pass merges; with enough tokens each task covers all of a token's
    positions and normalises in place."""
    H, KVH, D, S = heads, kv_heads, head_dim, max_seq
    G, scale, NEG = heads // kv_heads, 1.0 / math.sqrt(head_dim), -3.0e38
    C = _chains(G, D)
    CHUNKS, FEW = 4, 16  # position runs per task when n * KVH < FEW tasks
    KT_SHAPE = cache_shapes(layers, kv_heads, head_dim, max_seq)[0]

    def runs(n: tirx.PrimExpr) -> tirx.PrimExpr:
        return T.if_then_else(n * KVH < FEW, T.int64(CHUNKS), T.int64(1))

    @T.prim_func(private=True, s_tir=True)
    def attention(q_h: T.handle, kt_h: T.handle, v_h: T.handle, layer: T.int64, pos: T.int64, o_h: T.handle):
        n = T.int64()
        q = T.match_buffer(q_h, (n, H, D), "float32")
        kt = T.match_buffer(kt_h, KT_SHAPE, dtype)
        v = T.match_buffer(v_h, (layers, KVH, S, D), dtype)
        o = T.match_buffer(o_h, (n, H * D), "float32")
        with T.sblock("root"):
            part = T.alloc_buffer((n * KVH * runs(n), G, D + 2), "float32")  # value sum, max, sum of a split task
            for t in T.parallel(n * KVH * runs(n)):
                acc = T.decl_buffer((G, C, TILE), "float32")
                p = T.decl_buffer((G, TILE), "float32")  # a tile's scores, then its probabilities
                lsum = T.decl_buffer((G, TILE), "float32")  # running sum of probabilities, per lane
                st = T.decl_buffer((G, 3), "float32")  # running max, the tile's new max, rescale factor
                oacc = T.decl_buffer((G, D), "float32")
                for u in T.unroll(G):
                    st[u, 0] = T.float32(NEG)
                    for j1 in T.vectorized(TILE):
                        lsum[u, j1] = T.float32(0)
                    for d in T.vectorized(D):
                        oacc[u, d] = T.float32(0)
                # token i = t // (KVH * runs) sees L = pos + i + 1 positions in (pos + i + TILE) // TILE tiles
                for j0 in range(t % runs(n) * ((pos + t // (KVH * runs(n)) + TILE) // TILE) // runs(n),
                                (t % runs(n) + 1) * ((pos + t // (KVH * runs(n)) + TILE) // TILE) // runs(n)):
                    for u in T.unroll(G):
                        for c in T.unroll(C):
                            for j1 in T.vectorized(TILE):
                                acc[u, c, j1] = T.float32(0)
                    for d0 in range(D // C):
                        for c in T.unroll(C):
                            for u in T.unroll(G):
                                for j1 in T.vectorized(TILE):
                                    acc[u, c, j1] = acc[u, c, j1] + q[
                                        t // (KVH * runs(n)), t // runs(n) % KVH * G + u, d0 * C + c] * T.Cast(
                                        "float32", kt[layer, t // runs(n) % KVH, j0, d0 * C + c, j1])
                    for u in T.unroll(G):
                        for j1 in T.vectorized(TILE):
                            p[u, j1] = T.Select(j0 * TILE + j1 <= pos + t // (KVH * runs(n)),
                                                _chains_sum(acc, u, j1) * T.float32(scale), T.float32(NEG))
                        st[u, 1] = st[u, 0]
                        for j1 in range(TILE):
                            st[u, 1] = T.max(st[u, 1], p[u, j1])
                        st[u, 2] = exp_nonpositive(st[u, 0] - st[u, 1])
                        st[u, 0] = st[u, 1]
                        for j1 in T.vectorized(TILE):
                            p[u, j1] = T.Select(j0 * TILE + j1 <= pos + t // (KVH * runs(n)),
                                                exp_nonpositive(p[u, j1] - st[u, 0]), T.float32(0))
                            lsum[u, j1] = lsum[u, j1] * st[u, 2] + p[u, j1]
                        for d in T.vectorized(D):
                            oacc[u, d] = oacc[u, d] * st[u, 2]
                    for j1 in range(T.min(TILE, pos + t // (KVH * runs(n)) + 1 - j0 * TILE)):
                        for u in T.unroll(G):
                            for d in T.vectorized(D):
                                oacc[u, d] = oacc[u, d] + p[u, j1] * T.Cast(
                                    "float32", v[layer, t // runs(n) % KVH, j0 * TILE + j1, d])
                for u in T.unroll(G):
                    st[u, 1] = T.float32(0)
                    for j1 in range(TILE):
                        st[u, 1] = st[u, 1] + lsum[u, j1]
                    if runs(n) == 1:
                        for d in T.vectorized(D):
                            o[t // KVH, (t % KVH * G + u) * D + d] = oacc[u, d] * (T.float32(1) / st[u, 1])
                    else:
                        for d in T.vectorized(D):
                            part[t, u, d] = oacc[u, d]
                        part[t, u, D] = st[u, 0]
                        part[t, u, D + 1] = st[u, 1]
            if runs(n) > 1:  # merge the runs of each (token, head): weights exp(max_run - max)
                for i, h in T.grid(n, H):
                    w = T.decl_buffer((CHUNKS + 2,), "float32")  # run weights, max, total
                    w[CHUNKS] = T.float32(NEG)
                    for c in range(CHUNKS):
                        w[CHUNKS] = T.max(w[CHUNKS], part[(i * KVH + h // G) * CHUNKS + c, h % G, D])
                    w[CHUNKS + 1] = T.float32(0)
                    for c in range(CHUNKS):
                        w[c] = exp_nonpositive(part[(i * KVH + h // G) * CHUNKS + c, h % G, D] - w[CHUNKS])
                        w[CHUNKS + 1] = w[CHUNKS + 1] + w[c] * part[(i * KVH + h // G) * CHUNKS + c, h % G, D + 1]
                    for d in T.vectorized(D):
                        o[i, h * D + d] = T.float32(0)
                    for c in range(CHUNKS):
                        for d in T.vectorized(D):
                            o[i, h * D + d] = o[i, h * D + d] + w[c] * part[(i * KVH + h // G) * CHUNKS + c, h % G, d]
                    for d in T.vectorized(D):
                        o[i, h * D + d] = o[i, h * D + d] * (T.float32(1) / w[CHUNKS + 1])

    return attention


def _chains_sum(acc: tirx.Buffer, u: int, lane: tirx.PrimExpr) -> tirx.PrimExpr:
    """acc[u, 0, lane] + ... + acc[u, chains - 1, lane]: the independent FMA chains of one score lane, summed."""
    total = acc[u, 0, lane]
    for c in range(1, int(acc.shape[1])):
        total = total + acc[u, c, lane]
    return total


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


def silu(g: tirx.PrimExpr) -> tirx.PrimExpr:
    """g * sigmoid(g) with e = exp(-|g|), so the exp never overflows. An expression, not a let: a let bound inside a
    vectorised loop is not widened per lane by this TVM (every lane read another lane's value)."""
    e = exp_nonpositive(-T.fabs(g))
    return g * T.Select(g >= T.float32(0), T.float32(1), e) / (T.float32(1) + e)


def silu_mul_func(width: int) -> tirx.PrimFunc:
    """y [n, width] = silu(g) * u = g * u * sigmoid(g) of gu [n, 2 * width] = [g | u] (the gate and up projections
    stacked, as one fused linear computes them), sigmoid(g) from e = exp(-|g|) so the exp never overflows (CPU).
    Serial and vectorised: a decode step has 1536 values, less work than a parallel launch costs."""
    lanes = 8 if width % 8 == 0 else 1

    @T.prim_func(private=True, s_tir=True)
    def silu_mul(gu_h: T.handle, y_h: T.handle):
        n = T.int64()
        gu = T.match_buffer(gu_h, (n, 2 * width), "float32")
        y = T.match_buffer(y_h, (n, width), "float32")
        with T.sblock("root"):
            for i, d0 in T.grid(n, width // lanes):
                for d1 in T.vectorized(lanes):
                    y[i, d0 * lanes + d1] = silu(gu[i, d0 * lanes + d1]) * gu[i, width + d0 * lanes + d1]

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
