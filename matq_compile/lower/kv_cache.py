"""The KV-cache layout: the one owner of its shapes (pure Python, so the runtime reads it without the compiler).

    K^T cache  [layers, kv_heads, max_seq / TILE, head_dim, TILE]   keys transposed per tile of TILE positions
    V cache    [layers, kv_heads, max_seq, head_dim]

in one of DTYPES: float32 (exact) or float16 (half the memory and half the attention's traffic, as llama.cpp's
default cache; the kernels write rounded values and compute in float32). The kernels that read and write it are
in lower/llama_kernels.py; a build's manifest records the shapes and the dtype.
"""
from __future__ import annotations

TILE = 16  # positions per K^T tile (the attention's vector width in floats); max_seq must be a multiple of it
DTYPES = ("float32", "float16")


def check_dtype(dtype: str) -> str:
    """dtype, or ValueError (one line) for a cache element type the kernels do not have."""
    if dtype not in DTYPES:
        raise ValueError(f"KV-cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def cache_shapes(layers: int, kv_heads: int, head_dim: int, max_seq: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(K^T cache, V cache) shapes."""
    if max_seq % TILE:
        raise ValueError(f"max_seq_len must be a multiple of {TILE}, got {max_seq}")
    return (layers, kv_heads, max_seq // TILE, head_dim, TILE), (layers, kv_heads, max_seq, head_dim)
