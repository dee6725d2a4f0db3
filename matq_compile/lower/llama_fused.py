"""CPU kernels that each do several small steps of a Llama block in one call.

A decode step of a small model runs about twenty kernels per layer, most of them a few hundred values: each costs
a VM call, an output allocation and its release, more than its arithmetic (SmolLM2 at M = 1: about 0.25 us per
call against tens of nanoseconds of work). So, as llama.cpp and MLC-LLM do, the steps between the linears are
fused where the graph allows:

    add_rms_norm      s = x + a, y = RMSNorm(s) * w           (the residual add and the next norm: 2 calls -> 1)
    qkv_rope_write    RoPE of q and k, k and v into the cache  (3 reshapes, 2 RoPE, 2 cache writes -> 1)

qkv_rope_write (as llama_kernels.silu_mul) reads its projections stacked along the features, [q | k | v]: the
frontend concatenates the sibling linears' outputs, and where FuseSiblingLinears computes them as one linear, the
concatenation of its split is that linear's output itself (the pass drops both), so no split copies them apart.

Same arithmetic as the unfused steps: RoPE by llama_kernels.rotate, as rope_func, cache elements rounded
to the cache's dtype as k_write / v_write, RMSNorm as HF (s * rsqrt(mean(s^2) + eps), then * w; the sum of
squares in 16 lanes). Serial and vectorised, like the small kernels they replace: at M = 1 a parallel launch
costs more than the work.
"""
from __future__ import annotations

from matq_compile._tvm import tirx
from tvm.script import tirx as T

from matq_compile.lower.kv_cache import TILE, cache_shapes
from matq_compile.lower.llama_kernels import rotate


def add_rms_norm_func(width: int, eps: float) -> tirx.PrimFunc:
    """(x, a, w) -> (s, y) with s written over x (call_tir_inplace: the residual stream is read only here):
    s = x + a, y = s / sqrt(mean(s^2) + eps) * w, rows of `width`."""
    lanes = 16 if width % 16 == 0 else 1

    @T.prim_func(private=True, s_tir=True)
    def add_rms_norm(x_h: T.handle, a_h: T.handle, w_h: T.handle, y_h: T.handle):
        n = T.int64()
        s = T.match_buffer(x_h, (n, width), "float32")  # x on entry
        a = T.match_buffer(a_h, (n, width), "float32")
        w = T.match_buffer(w_h, (width,), "float32")
        y = T.match_buffer(y_h, (n, width), "float32")
        with T.sblock("root"):
            for i in range(n):
                acc = T.decl_buffer((lanes,), "float32")
                r = T.decl_buffer((1,), "float32")
                for j1 in T.vectorized(lanes):
                    acc[j1] = T.float32(0)
                for j0 in range(width // lanes):
                    for j1 in T.vectorized(lanes):
                        s[i, j0 * lanes + j1] = s[i, j0 * lanes + j1] + a[i, j0 * lanes + j1]
                        acc[j1] = acc[j1] + s[i, j0 * lanes + j1] * s[i, j0 * lanes + j1]
                r[0] = T.float32(0)
                for j1 in range(lanes):
                    r[0] = r[0] + acc[j1]
                r[0] = T.float32(1) / T.sqrt(r[0] / T.float32(width) + T.float32(eps))
                for j0 in range(width // lanes):
                    for j1 in T.vectorized(lanes):
                        y[i, j0 * lanes + j1] = s[i, j0 * lanes + j1] * r[0] * w[j0 * lanes + j1]

    return add_rms_norm


def qkv_rope_write_func(layers: int, heads: int, kv_heads: int, head_dim: int, max_seq: int,
                        dtype: str = "float32") -> tirx.PrimFunc:
    """(qkv [n, (H + 2 KVH) * D] = [q | k | v], cos, sin [n, D/2], K^T cache, V cache, layer, pos) -> (K^T cache,
    V cache, q_rot [n, H, D]): q and k rotated with the rope_table of the same positions, the rotated k and v
    written in place at positions pos..pos+n-1 of `layer` (kv_cache layout, elements of `dtype`)."""
    H, KVH, D, half = heads, kv_heads, head_dim, head_dim // 2
    KO, VO = H * D, (H + KVH) * D  # column offsets of k and v
    kt_shape, v_shape = cache_shapes(layers, kv_heads, head_dim, max_seq)

    @T.prim_func(private=True, s_tir=True)
    def qkv_rope_write(qkv_h: T.handle, cos_h: T.handle, sin_h: T.handle, kt_h: T.handle, vc_h: T.handle,
                       layer: T.int64, pos: T.int64, qr_h: T.handle):
        n = T.int64()
        qkv = T.match_buffer(qkv_h, (n, (H + 2 * KVH) * D), "float32")
        cos = T.match_buffer(cos_h, (n, half), "float32")
        sin = T.match_buffer(sin_h, (n, half), "float32")
        kt = T.match_buffer(kt_h, kt_shape, dtype)
        vc = T.match_buffer(vc_h, v_shape, dtype)
        qr = T.match_buffer(qr_h, (n, H, D), "float32")
        with T.sblock("root"):
            for i, h in T.grid(n, H):
                for d in T.vectorized(half):
                    qr[i, h, d] = rotate(qkv[i, h * D + d], qkv[i, h * D + d + half], cos[i, d], sin[i, d])[0]
                    qr[i, h, d + half] = rotate(qkv[i, h * D + d], qkv[i, h * D + d + half], cos[i, d],
                                                sin[i, d])[1]
            for i, h in T.grid(n, KVH):
                for d in range(half):  # K^T holds a position's keys TILE elements apart
                    kt[layer, h, (pos + i) // TILE, d, (pos + i) % TILE] = T.Cast(dtype, rotate(
                        qkv[i, KO + h * D + d], qkv[i, KO + h * D + d + half], cos[i, d], sin[i, d])[0])
                    kt[layer, h, (pos + i) // TILE, d + half, (pos + i) % TILE] = T.Cast(dtype, rotate(
                        qkv[i, KO + h * D + d], qkv[i, KO + h * D + d + half], cos[i, d], sin[i, d])[1])
                for d in T.vectorized(D):
                    vc[layer, h, pos + i, d] = T.Cast(dtype, qkv[i, VO + h * D + d])

    return qkv_rope_write

