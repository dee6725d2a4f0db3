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

r = 3 has words of its own (`pack3`, from layout.pack's by `words`; still 3 words per 32-code block, r / 8 bytes
per weight): two crumb words A and B (codes 0..15 and 16..31 of the block, byte j field f holding a 2-bit part of
code 4 j + f, as at r = 2) and a bit word H with each code's third bit. An operand (A or B, field f) is one
vpternlogd, a bit select: its crumb from the word, everything else from an and-ed H (`R3_OPERANDS`), which holds
that code's third bit right beside the crumb and, inside the crumb's own bits, the bit of a partner operand that
and-ed H also serves. So every byte of the operand holds its code at bit `shift`, contiguous, and zeros elsewhere:
fields 0 and 2 as crumb = low bits and the third bit above them, 1 and 3 as crumb = high bits and the third bit
below (field 3's crumb fills the byte's top). Per block and 16 rows: 3 loads, 1 rotate, 4 ands, 8 vpternlogd for
8 vpdpbusd (21 ops against 16 at r = 2 and 4, for 3/4 of r = 4's bytes).
"""
from __future__ import annotations

import numpy as np

from matq_compile import layout

TILE: int = 16  # output rows per tile: the 32-bit lanes of one 512-bit vector
WIDTHS: tuple[int, ...] = (2, 3, 4, 8)  # one-plane widths (whole codes per byte) and r = 3 (pack3)
R3_WORDS = 3  # words of a 32-code block at r = 3: A, B, H
# the and-ed H words at r = 3: (rotate right by, byte mask); each serves two operands
R3_HMASKS: tuple[tuple[int, int], ...] = ((0, 0x06), (2, 0x06), (0, 0x60), (2, 0x60))
# operand o = 4 w + f (w: word A = 0, B = 1; f: the crumb field): (crumb byte mask, R3_HMASKS index, shift of the code)
R3_OPERANDS: tuple[tuple[int, int, int], ...] = (
    (0x03, 0, 0), (0x0C, 1, 1), (0x30, 2, 4), (0xC0, 3, 5),   # A
    (0x03, 1, 0), (0x0C, 0, 1), (0x30, 3, 4), (0xC0, 2, 5))   # B
# the bit of H holding the third bit of operand o's code in byte j: R3_HBIT[o] + 8 j (mod 32 after the operand's
# rotate, so B field 2's sits in the next byte)
R3_HBIT: tuple[int, ...] = (2, 3, 6, 7, 4, 1, 8, 5)


def pack3(codes: np.ndarray) -> np.ndarray:
    """[..., K] 3-bit codes (K a multiple of 32) -> [..., 3 K / 32] uint32: per block the words A, B, H of the
    r = 3 tile operands (module doc): crumb (code & 3 for even fields, code >> 1 for odd ones) at bit 8 j + 2 f
    of A (code 4 j + f) or B (code 16 + 4 j + f), the remaining bit at H bit R3_HBIT[o] + 8 j (mod 32)."""
    codes = np.asarray(codes)
    K = codes.shape[-1]
    if K % 32 or (codes.size and (codes.min() < 0 or codes.max() > 7)):
        raise ValueError(f"pack3: expected 3-bit codes [..., K] with K a multiple of 32, got shape {codes.shape}")
    c = codes.astype(np.uint32).reshape(codes.shape[:-1] + (K // 32, 2, 4, 4))  # block, word, byte j, field f
    odd = (np.arange(4) % 2).astype(np.uint32)  # per field f
    crumb = np.where(odd == 1, c >> 1, c & 3)
    third = np.where(odd == 1, c & 1, c >> 2)
    j, f = np.arange(4)[:, None], np.arange(4)[None, :]
    out = np.zeros(codes.shape[:-1] + (K // 32, R3_WORDS), np.uint32)
    out[..., :2] = (crumb << (8 * j + 2 * f).astype(np.uint32)).sum(axis=(-2, -1), dtype=np.uint32)
    hbit = (np.asarray(R3_HBIT).reshape(2, 1, 4) + 8 * j[None]) % 32  # [word, j, f]
    out[..., 2] = (third << hbit.astype(np.uint32)).sum(axis=(-3, -2, -1), dtype=np.uint32)
    return out.reshape(codes.shape[:-1] + (K // 32 * R3_WORDS,))


def operands3(words: np.ndarray) -> np.ndarray:
    """The kernel's r = 3 decode in numpy: [..., 3 B] words (pack3) -> uint8 [..., B, 8, 4], byte j of operand
    o of each block, R3_OPERANDS' bit select of the crumb word and the and-ed H."""
    w = np.asarray(words, np.uint32).reshape(words.shape[:-1] + (-1, R3_WORDS))
    bytes4 = lambda v: (v[..., None] >> np.arange(0, 32, 8, dtype=np.uint32)) & np.uint32(0xFF)  # noqa: E731
    H = w[..., 2]
    hm = []
    for rot, mask in R3_HMASKS:
        h = (H >> np.uint32(rot)) | (H << np.uint32(32 - rot)) if rot else H
        hm.append(bytes4(h) & np.uint32(mask))
    ops = [(bytes4(w[..., o // 4]) & np.uint32(c)) | (hm[k] & np.uint32(~c & 0xFF))
           for o, (c, k, _) in enumerate(R3_OPERANDS)]
    return np.stack(ops, axis=-2).astype(np.uint8)


def words(P: np.ndarray, bits: int) -> np.ndarray:
    """The words the tile kernel of width `bits` reads, row-major, from layout.pack's P [N, words_per_row]: P
    itself for the one-plane widths, pack3 of its codes at r = 3 (same shape)."""
    if bits != 3:
        return P
    return pack3(layout.unpack(P, 3, P.shape[-1] // 3 * 32))


def arrange(a: np.ndarray, part: str, bits: int) -> np.ndarray:
    """One kernel array (P, S or Z of a dense r-bit slice) as the tile kernel takes it: words(P) for P, then tile;
    same shape as `a`."""
    a = words(a, bits) if part == "P" else a
    return tile(a).reshape(a.shape)


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
    bits = 2 if bits == 3 else bits  # r = 3's words A and B hold their codes as r = 2's words do
    c, F = 32 // bits, 8 // bits
    return [p // c * c + p % c % 4 * F + p % c // 4 for p in range(16)]


def act_order(K: int, bits: int) -> np.ndarray:
    """int64 [K]: position p of the kernel's quantized activations holds code act_order[p] (chunk_order per 16
    codes; K a multiple of 32)."""
    if K % 32:
        raise ValueError(f"act_order: K must be a multiple of 32, got {K}")
    chunk = np.asarray(chunk_order(bits), np.int64)
    return (np.arange(K // 16, dtype=np.int64)[:, None] * 16 + chunk[None]).reshape(K)
