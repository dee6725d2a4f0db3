"""The hand-written CPU kernels of a Llama block against numpy: the vectorisable exp, SiLU * up, the KV cache write in
its tiled layout, and causal GQA attention (positions past the cached length hold garbage and must not count)."""
from __future__ import annotations

import numpy as np
import pytest

L, H, KVH, D, S = 3, 6, 2, 32, 64  # G = 3 query heads per key/value head, 4 position tiles


def _build(func):
    from matq_compile import targets
    from matq_compile._tvm import tvm

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=targets.load("host").to_tvm())
    return lib.mod["main"]


def _t(a):
    from matq_compile._tvm import tvm
    return tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu())


def test_exp_nonpositive_matches_numpy_over_its_range():
    from matq_compile.lower.fastmath import exp_nonpositive
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def f(x: T.Buffer((4096,), "float32"), y: T.Buffer((4096,), "float32")):
        for i0 in range(512):
            for i1 in T.vectorized(8):
                y[i0 * 8 + i1] = exp_nonpositive(x[i0 * 8 + i1])

    x = np.concatenate([-np.linspace(0, 87, 4000), [0.0, -1e-30, -0.5, -86.9, -87.0, -88.0, -1e4, -3e38]])
    x = np.concatenate([x, -np.random.default_rng(0).uniform(0, 20, 4096 - len(x))]).astype(np.float32)
    y = _t(np.zeros(4096, np.float32))
    _build(f)(_t(x), y)
    got, ref = y.numpy().astype(np.float64), np.exp(x.astype(np.float64))
    inside = x >= -87
    assert np.all(np.abs(got[inside] / ref[inside] - 1) < 1e-6)  # measured: <= 8.2e-8 (1 ulp)
    assert np.all((got[~inside] >= 0) & (got[~inside] < 1e-37))  # below the clamp: ~1e-38, never a NaN or inf
    assert got[np.flatnonzero(x == 0)[0]] == 1.0


@pytest.mark.parametrize("n", [1, 5])
def test_silu_mul_matches_numpy(n):
    from matq_compile.lower import llama_kernels as lk

    rng = np.random.default_rng(n)
    g = (rng.standard_normal((n, 96)) * 20).astype(np.float32)
    g[0, :8] = [0, -0.0, 100, -100, 88, -89, 1e-3, -1e-3]  # exp(-|g|) underflows / the clamp / tiny
    u = rng.standard_normal((n, 96)).astype(np.float32)
    y = _t(np.zeros_like(g))
    _build(lk.silu_mul_func(96))(_t(np.concatenate([g, u], axis=1)), y)  # [g | u]
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(y.numpy(), g64 / (1 + np.exp(-g64)) * u, rtol=1e-5, atol=1e-30)


def test_odd_width_silu_mul_is_scalar_and_exact():
    from matq_compile.lower import llama_kernels as lk

    g = np.linspace(-30, 30, 2 * 13, dtype=np.float32).reshape(2, 13)
    y = _t(np.zeros_like(g))
    _build(lk.silu_mul_func(13))(_t(np.concatenate([g, np.ones_like(g)], axis=1)), y)
    np.testing.assert_allclose(y.numpy(), g / (1 + np.exp(-g.astype(np.float64))), rtol=1e-5, atol=1e-30)


def test_rope_table_and_rope_match_numpy():
    """The RoPE table of positions pos.. (angle (pos + i) theta^(-2d/D)) and the rotation of every head by it (HF
    rotate_half) against numpy in float64; the GPU graph runs these two (the CPU graph's fused qkv_rope_write
    shares `rotate`)."""
    from matq_compile.lower import llama_kernels as lk

    n, heads, theta, pos = 5, 3, 10000.0, 37
    cos, sin = _t(np.zeros((n, D // 2), np.float32)), _t(np.zeros((n, D // 2), np.float32))
    _build(lk.rope_table_func(D, theta))(pos, cos, sin)
    angle = (pos + np.arange(n))[:, None] * theta ** (-2 * np.arange(D // 2) / D)
    np.testing.assert_allclose(cos.numpy(), np.cos(angle), rtol=0, atol=2e-5)
    np.testing.assert_allclose(sin.numpy(), np.sin(angle), rtol=0, atol=2e-5)
    x = np.random.default_rng(3).standard_normal((n, heads, D)).astype(np.float32)
    y = _t(np.zeros_like(x))
    _build(lk.rope_func(D))(_t(x), cos, sin, y)
    c, s = cos.numpy().astype(np.float64)[:, None], sin.numpy().astype(np.float64)[:, None]
    lo, hi = x[..., :D // 2].astype(np.float64), x[..., D // 2:].astype(np.float64)
    np.testing.assert_allclose(y.numpy(), np.concatenate([lo * c - hi * s, hi * c + lo * s], axis=-1),
                               rtol=1e-6, atol=1e-6)


def _kt_tiled(k_plane: np.ndarray) -> np.ndarray:
    """[L, KVH, D, S] keys -> the K^T cache layout [L, KVH, S / TILE, D, TILE]."""
    from matq_compile.lower.kv_cache import TILE
    layers, kv_heads, dim, seq = k_plane.shape
    return k_plane.reshape(layers, kv_heads, dim, seq // TILE, TILE).transpose(0, 1, 3, 2, 4)


def test_cache_shapes_name_the_tiled_layout():
    from matq_compile.lower import kv_cache

    assert kv_cache.cache_shapes(L, KVH, D, S) == ((L, KVH, S // kv_cache.TILE, D, kv_cache.TILE), (L, KVH, S, D))
    with pytest.raises(ValueError, match="multiple of 16"):
        kv_cache.cache_shapes(L, KVH, D, S + 8)


def test_k_write_places_keys_in_the_tiled_layout():
    from matq_compile.lower import kv_cache, llama_kernels as lk

    rng = np.random.default_rng(1)
    kt = rng.standard_normal(kv_cache.cache_shapes(L, KVH, D, S)[0]).astype(np.float32)
    k = rng.standard_normal((3, KVH, D)).astype(np.float32)
    want = kt.copy()
    for i in range(3):  # positions 14..16 straddle a tile boundary
        want[2, :, (14 + i) // kv_cache.TILE, :, (14 + i) % kv_cache.TILE] = k[i]
    got = _t(kt)
    _build(lk.k_write_func(L, KVH, D, S))(got, _t(k), 2, 14)
    np.testing.assert_array_equal(got.numpy(), want)


def test_half_cache_writes_round_to_nearest_half():
    """A float16 cache holds k and v rounded as numpy rounds them (round to nearest even), keys in the tiled layout;
    an unknown cache dtype is refused by name."""
    from matq_compile.lower import kv_cache, llama_kernels as lk

    rng = np.random.default_rng(2)
    kt = rng.standard_normal(kv_cache.cache_shapes(L, KVH, D, S)[0]).astype(np.float16)
    vc = rng.standard_normal((L, KVH, S, D)).astype(np.float16)
    k, v = (rng.standard_normal((3, KVH, D)) * 100).astype(np.float32), rng.standard_normal((3, KVH, D)).astype(
        np.float32)
    k[0, 0, :3] = [65504.0, 1e-8, 2049.0]  # the largest half, a flush past the subnormals, a tie to even
    want_kt, want_v = kt.copy(), vc.copy()
    for i in range(3):
        want_kt[1, :, (14 + i) // kv_cache.TILE, :, (14 + i) % kv_cache.TILE] = k[i].astype(np.float16)
        want_v[1, :, 14 + i] = v[i].astype(np.float16)
    got_kt, got_v = _t(kt), _t(vc)
    _build(lk.k_write_func(L, KVH, D, S, dtype="float16"))(got_kt, _t(k), 1, 14)
    _build(lk.v_write_func(L, KVH, D, S, dtype="float16"))(got_v, _t(v), 1, 14)
    np.testing.assert_array_equal(got_kt.numpy(), want_kt)
    np.testing.assert_array_equal(got_v.numpy(), want_v)
    with pytest.raises(ValueError, match="KV-cache dtype must be one of float32, float16, got 'bfloat16'"):
        kv_cache.check_dtype("bfloat16")


def _attention_ref(q, k_plane, v, layer, pos):
    n, heads, D = q.shape
    G = heads // k_plane.shape[1]
    o = np.zeros((n, heads * D))
    for i in range(n):
        ln = pos + i + 1
        for h in range(heads):
            s = q[i, h].astype(np.float64) @ k_plane[layer, h // G, :, :ln] / np.sqrt(D)
            p = np.exp(s - s.max())
            o[i, h * D:(h + 1) * D] = p @ v[layer, h // G, :ln] / p.sum()
    return o


@pytest.mark.parametrize("n,pos", [(1, 0), (1, 15), (1, 16), (1, 40), (3, 0), (5, 27), (16, 48), (2, 62)])
def test_attention_matches_numpy_and_ignores_stale_positions(n, pos):
    from matq_compile.lower import llama_kernels as lk

    rng = np.random.default_rng(n * 100 + pos)
    k_plane = rng.standard_normal((L, KVH, D, S)).astype(np.float32)
    v = rng.standard_normal((L, KVH, S, D)).astype(np.float32)
    ln = pos + n
    k_plane[:, :, :, ln:] = np.nan  # stale cache entries: never read (scores) or weighted (values)
    v[:, :, ln:] = np.nan
    q = (rng.standard_normal((n, H, D)) * 3).astype(np.float32)
    o = _t(np.zeros((n, H * D), np.float32))
    _build(lk.attention_func(L, H, KVH, D, S))(_t(q), _t(_kt_tiled(k_plane)), _t(v), 1, pos, o)
    np.testing.assert_allclose(o.numpy(), _attention_ref(q, k_plane, v, 1, pos), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("heads,kv_heads,n,pos", [(4, 4, 1, 40), (4, 4, 5, 20), (8, 1, 1, 50), (8, 1, 17, 30),
                                                  (2, 1, 1, 0)])
def test_attention_of_other_head_groups_matches_numpy(heads, kv_heads, n, pos):
    """Query heads per key/value head G = 1, 8 and 2 (the score loop's chains per head differ: 4, 1, 4), each with a
    decode step (positions split into runs, merged after) and several tokens (runs only where n * kv_heads < 16)."""
    from matq_compile.lower import llama_kernels as lk

    rng = np.random.default_rng(heads * 10 + n)
    k_plane = rng.standard_normal((L, kv_heads, D, S)).astype(np.float32)
    v = rng.standard_normal((L, kv_heads, S, D)).astype(np.float32)
    k_plane[:, :, :, pos + n:] = np.nan
    v[:, :, pos + n:] = np.nan
    q = (rng.standard_normal((n, heads, D)) * 3).astype(np.float32)
    o = _t(np.zeros((n, heads * D), np.float32))
    _build(lk.attention_func(L, heads, kv_heads, D, S))(_t(q), _t(_kt_tiled(k_plane)), _t(v), 2, pos, o)
    np.testing.assert_allclose(o.numpy(), _attention_ref(q, k_plane, v, 2, pos), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("n,pos", [(1, 40), (5, 27), (16, 48)])
def test_attention_over_a_half_cache_matches_numpy(n, pos):
    """With a float16 cache the attention computes in float32 from the stored halves: numpy over the same halves."""
    from matq_compile.lower import llama_kernels as lk

    rng = np.random.default_rng(n * 7 + pos)
    k_plane = rng.standard_normal((L, KVH, D, S)).astype(np.float16)
    v = rng.standard_normal((L, KVH, S, D)).astype(np.float16)
    k_plane[:, :, :, pos + n:] = np.nan  # stale entries are never read
    v[:, :, pos + n:] = np.nan
    q = (rng.standard_normal((n, H, D)) * 3).astype(np.float32)
    o = _t(np.zeros((n, H * D), np.float32))
    _build(lk.attention_func(L, H, KVH, D, S, dtype="float16"))(_t(q), _t(_kt_tiled(k_plane)), _t(v), 2, pos, o)
    ref = _attention_ref(q, k_plane.astype(np.float32), v.astype(np.float32), 2, pos)
    np.testing.assert_allclose(o.numpy(), ref, rtol=2e-5, atol=2e-6)
