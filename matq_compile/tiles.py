"""Tile-interleaved arrangement of a dense slice's packed words: the numpy truth that lower/int8_tiles.py mirrors
(pinned by tests). The words and their bits are layout.pack's; only their order changes.

Output rows go in tiles of TILE = 16, word-major within a tile, so one 64-byte load holds the same word of 16 rows,
one 32-bit lane per row: the lane a 512-bit vpdpbusd accumulates for that row. Scales and zeros follow suit, so one
load gives a group's 16 scales.

    tiled[t, w, l] = P[16 t + l, w]        P [N, words_per_row] (layout.pack)
    tiled[t, q, l] = S[16 t + l, q]        likewise S and Z [N, G]

For the one-plane widths (r = 2, 4, 8: every byte holds F = 8 / r whole codes) the byte dot product reads the
codes straight out of the word: byte j of word w holds codes w c + j F .. + F - 1 (c = 32 / r codes per word),
code j F + f at bit r f of its byte, so the word and-ed with field f's mask is a vector of codes << r f, four per
lane. Its products pair with the activations of codes w c + j F + f, j = 0..3: the kernel quantizes the activations
into the order (word, field, byte) (act_order) and keeps one int32 sum per field, shifting each right by r f (exact:
every term is a multiple of 2^(r f)) before they are added. An and per operand: the decode costs one op per
vpdpbusd at every width, and a group's float work is shared by 16 rows, so the time follows the bytes read.
"""
from __future__ import annotations

import numpy as np

TILE: int = 16  # output rows per tile: the 32-bit lanes of one 512-bit vector
WIDTHS: tuple[int, ...] = (2, 4, 8)  # one-plane widths: whole codes per byte


def fits(N: int, bits: int) -> bool:
    """Whether a slice of N output rows and width `bits` has the tile arrangement."""
    return bits in WIDTHS and N % TILE == 0


def tile(a: np.ndarray) -> np.ndarray:
    """[N, X] row-major (P, S or Z) -> [N / 16, X, 16]: element (t, x, l) is a[16 t + l, x]."""
    N = a.shape[0]
    if a.ndim != 2 or N % TILE:
        raise ValueError(f"tile: expected [N, X] with N a multiple of {TILE}, got shape {a.shape}")
    return np.ascontiguousarray(a.reshape(N // TILE, TILE, a.shape[1]).transpose(0, 2, 1))


def untile(a: np.ndarray) -> np.ndarray:
    """The inverse of tile: [N / 16, X, 16] -> [N, X]."""
    if a.ndim != 3 or a.shape[2] != TILE:
        raise ValueError(f"untile: expected [T, X, {TILE}], got shape {a.shape}")
    return np.ascontiguousarray(a.transpose(0, 2, 1).reshape(a.shape[0] * TILE, a.shape[1]))


def chunk_order(bits: int) -> list[int]:
    """Position p of a 16-code chunk (16 consecutive codes, 16 / c whole words) -> the code it holds in the
    activation order: p = word-in-chunk c + 4 f + j holds code word-in-chunk c + j F + f."""
    if bits not in WIDTHS:
        raise ValueError(f"the tile arrangement serves r in {WIDTHS}, got {bits}")
    c, F = 32 // bits, 8 // bits
    return [p // c * c + p % c % 4 * F + p % c // 4 for p in range(16)]


def act_order(K: int, bits: int) -> np.ndarray:
    """int64 [K]: position p of the kernel's quantized activations holds code act_order[p] (chunk_order per 16
    codes; K a multiple of 32)."""
    if K % 32:
        raise ValueError(f"act_order: K must be a multiple of 32, got {K}")
    chunk = np.asarray(chunk_order(bits), np.int64)
    return (np.arange(K // 16, dtype=np.int64)[:, None] * 16 + chunk[None]).reshape(K)
