"""The fused CPU kernels of a Llama block against numpy: residual add + RMSNorm, and RoPE of q and k with the
K/V cache write (only the written positions change, in the cache's tiled layout and dtype)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.lower.test_llama_kernels import _build, _kt_tiled, _t

L, H, KVH, D, S = 3, 6, 2, 32, 64


@pytest.mark.parametrize("n,width", [(1, 576), (3, 96), (2, 40)])
def test_add_rms_norm_matches_numpy(n, width):
    from matq_compile.lower.llama_fused import add_rms_norm_func

    rng = np.random.default_rng(n + width)
    x, a = (rng.standard_normal((2, n, width)) * [[[3.0]], [[0.5]]]).astype(np.float32)
    w = rng.standard_normal(width).astype(np.float32)
    s, y = _t(x), _t(np.zeros((n, width), np.float32))
    _build(add_rms_norm_func(width, 1e-5))(s, _t(a), _t(w), y)
    np.testing.assert_array_equal(s.numpy(), x + a)  # written over x, one float32 add per element: exact
    s64 = (x + a).astype(np.float64)
    ref = s64 / np.sqrt((s64 * s64).mean(axis=1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(y.numpy(), ref, rtol=2e-6, atol=1e-6)


def _rope(x, cos, sin):
    """HF rotate_half RoPE over the last axis of x [n, heads, D] with cos/sin [n, D/2], in float64."""
    x = x.astype(np.float64)
    lo, hi = x[..., :D // 2], x[..., D // 2:]
    c, s = cos[:, None, :].astype(np.float64), sin[:, None, :].astype(np.float64)
    return np.concatenate([lo * c - hi * s, hi * c + lo * s], axis=-1)


@pytest.mark.parametrize("n,pos,dtype", [(1, 0, "float32"), (1, 37, "float32"), (5, 14, "float32"),
                                         (16, 48, "float32"), (1, 37, "float16"), (5, 14, "float16")])
def test_qkv_rope_write_rotates_and_writes_only_its_positions(n, pos, dtype):
    from matq_compile.lower.llama_fused import qkv_rope_write_func

    rng = np.random.default_rng(n * 100 + pos)
    q = rng.standard_normal((n, H * D)).astype(np.float32)
    k, v = rng.standard_normal((2, n, KVH * D)).astype(np.float32)
    ang = rng.uniform(-3, 3, (n, D // 2))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    k_plane = rng.standard_normal((L, KVH, D, S)).astype(dtype)
    vc = rng.standard_normal((L, KVH, S, D)).astype(dtype)
    kt0 = _kt_tiled(k_plane).copy()
    got_kt, got_v, qr = _t(kt0), _t(vc), _t(np.zeros((n, H, D), np.float32))
    qkv = np.concatenate([q, k, v], axis=1)  # [q | k | v], as one fused linear computes them
    _build(qkv_rope_write_func(L, H, KVH, D, S, dtype))(_t(qkv), _t(cos), _t(sin), got_kt, got_v, 2, pos, qr)
    np.testing.assert_allclose(qr.numpy(), _rope(q.reshape(n, H, D), cos, sin), rtol=1e-6, atol=1e-6)
    want_plane, want_v = k_plane.copy(), vc.copy()
    want_plane[2, :, :, pos:pos + n] = _rope(k.reshape(n, KVH, D), cos, sin).transpose(1, 2, 0).astype(dtype)
    want_v[2, :, pos:pos + n] = v.reshape(n, KVH, D).transpose(1, 0, 2).astype(dtype)
    np.testing.assert_array_equal(got_v.numpy(), want_v)  # a copy rounded to the cache's dtype: exact
    tol = 1e-6 if dtype == "float32" else 1e-3  # float16: the float32 result rounded once (<= 1 ulp apart)
    np.testing.assert_allclose(got_kt.numpy().astype(np.float64), _kt_tiled(want_plane).astype(np.float64),
                               rtol=tol, atol=tol)
    got_plane = got_kt.numpy().transpose(0, 1, 3, 2, 4).reshape(L, KVH, D, S)
    untouched = np.ones((L, S), bool)
    untouched[2, pos:pos + n] = False  # every other layer and position keeps its value, bit for bit
    np.testing.assert_array_equal(got_plane.transpose(0, 3, 1, 2)[untouched], k_plane.transpose(0, 3, 1, 2)[untouched])
