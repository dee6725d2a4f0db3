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

r = 3 has words of its own (`pack_merged`, made from layout.pack's by `words`; still r words per 32-code block,
r / 8 bytes per weight): a main plane as a one-plane width's words (crumbs: byte j field f holds part of the same
code as at r = 2) and a minor plane (bits) with the rest of each code. An operand (main word, field f) is one
vpternlogd, a bit select: the field's bits from the main word, every other bit from a minor word rotated and and-ed
(a `Merged.variants` entry), which holds that code's minor part right beside the field and, inside the field's own
bits, the minor part of a partner operand that the same and-ed word serves. So every byte of an operand holds its
code contiguous at bit `shift` and zeros elsewhere: the minor part above the field (the field holds the code's low
bits) or below it (the field holds its high bits). Per block and 16 rows: r loads, one and per two operands, a
rotate or shift per rotated variant, 8 vpternlogd for 8 vpdpbusd (22 ops at r = 3 against 16 at r = 2 and 4, for
3/4 of r = 4's bytes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matq_compile import layout

TILE: int = 16  # output rows per tile: the 32-bit lanes of one 512-bit vector


@dataclass(frozen=True)
class Merged:
    """A width whose operands merge a main and a minor plane (module doc). A block's words: `main` main words,
    then the minor words. Operand o: main word o // F, field f = o % F (F = 8 / main fields a byte)."""

    main: int  # width of the main plane
    variants: tuple[tuple[int, int, int], ...]  # the and-ed minor words: (minor word, rotate left by, byte mask)
    operands: tuple[tuple[int, int], ...]  # per operand: (variant, shift of its code in every byte)

    @property
    def fields(self) -> int:
        return 8 // self.main

    def field_mask(self, o: int) -> int:
        """Operand o's field in every byte's bits (one byte)."""
        return ((1 << self.main) - 1) << (self.main * (o % self.fields))

    @property
    def shifts(self) -> tuple[int, ...]:
        """The distinct code shifts: one int32 sum each in the kernel."""
        return tuple(sorted({sh for _, sh in self.operands}))


MERGED: dict[int, Merged] = {
    # crumb words A, B and a bit word; fields 0, 2 as crumb = low bits (third bit above), 1, 3 as crumb = high bits
    3: Merged(2, ((0, 0, 0x06), (0, 30, 0x06), (0, 0, 0x60), (0, 30, 0x60)),
              ((0, 0), (1, 1), (2, 4), (3, 5), (1, 0), (0, 1), (3, 4), (2, 5))),
}
# r = 5 and 6 take the same scheme (nibble words and a bit or crumb word, 22-23 ops per 8 vpdpbusd); measured on a
# 2-core Zen 4 (4096^2, cold) they ran M = 16 2.1-2.4x faster than the row kernels but M = 1 5-25 % slower (the row
# kernels read at the stream rate there), so they keep the row layout
WIDTHS: tuple[int, ...] = (2, 3, 4, 8)  # one-plane widths (whole codes per byte) and the merged one


def _place(m: Merged, o: int, code: np.ndarray, bits: int):
    """Operand o's codes split: (main part, minor part, the minor's lowest bit in the operand's byte)."""
    f, minor_w = o % m.fields, bits - m.main
    shift = m.operands[o][1]
    if shift == m.main * f:  # minor above the field: the field holds the code's low bits
        return code & ((1 << m.main) - 1), code >> m.main, shift + m.main
    return code >> minor_w, code & ((1 << minor_w) - 1), shift


def pack_merged(codes: np.ndarray, bits: int) -> np.ndarray:
    """[..., K] r-bit codes of a merged width (K a multiple of 32) -> [..., r K / 32] uint32, per block the main
    words then the minor words: operand o's code of byte j is code w (32 / main) + j F + f of the block (w, f of
    o), its main part at bit 8 j + main f of main word w, its minor part where the operand's variant, rotated
    left, brings it to the bits beside the field."""
    m = MERGED[bits]
    codes = np.asarray(codes)
    K = codes.shape[-1]
    if K % 32 or (codes.size and (codes.min() < 0 or codes.max() >= 1 << bits)):
        raise ValueError(f"pack_merged: expected {bits}-bit codes [..., K] with K a multiple of 32, "
                         f"got shape {codes.shape}")
    c = codes.astype(np.uint32).reshape(codes.shape[:-1] + (K // 32, 32))
    out = np.zeros(codes.shape[:-1] + (K // 32, bits), np.uint32)
    per = 32 // m.main  # codes per main word
    for o, (k, _) in enumerate(m.operands):
        w, f = divmod(o, m.fields)
        mw, rot, _ = m.variants[k]
        for j in range(4):
            main, minor, at = _place(m, o, c[..., w * per + j * m.fields + f], bits)
            out[..., w] |= main << np.uint32(8 * j + m.main * f)
            for b in range(bits - m.main):
                out[..., m.main + mw] |= ((minor >> np.uint32(b)) & np.uint32(1)) << np.uint32(
                    (8 * j + at + b - rot) % 32)
    return out.reshape(codes.shape[:-1] + (K // 32 * bits,))


def operands_merged(words: np.ndarray, bits: int) -> np.ndarray:
    """The kernel's decode of a merged width in numpy: [..., r B] words (pack_merged) -> uint8 [..., B, 8, 4],
    byte j of operand o of each block: the bit select of its field from the main word and the rest from its
    variant's minor word, rotated left and and-ed."""
    m = MERGED[bits]
    w = np.asarray(words, np.uint32).reshape(words.shape[:-1] + (-1, bits))
    bytes4 = lambda v: (v[..., None] >> np.arange(0, 32, 8, dtype=np.uint32)) & np.uint32(0xFF)  # noqa: E731
    ops = []
    for o, (k, _) in enumerate(m.operands):
        mw, rot, mask = m.variants[k]
        h = w[..., m.main + mw]
        h = (h << np.uint32(rot)) | (h >> np.uint32(32 - rot)) if rot else h
        c = m.field_mask(o)
        ops.append((bytes4(w[..., o // m.fields]) & np.uint32(c)) | (bytes4(h) & np.uint32(mask & ~c & 0xFF)))
    return np.stack(ops, axis=-2).astype(np.uint8)


def words(P: np.ndarray, bits: int) -> np.ndarray:
    """The words the tile kernel of width `bits` reads, row-major, from layout.pack's P [N, words_per_row]: P
    itself for the one-plane widths, pack_merged of its codes at the merged widths (same shape)."""
    if bits not in MERGED:
        return P
    return pack_merged(layout.unpack(P, bits, P.shape[-1] // bits * 32), bits)


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
    bits = MERGED[bits].main if bits in MERGED else bits  # main words hold their codes as that width's words do
    c, F = 32 // bits, 8 // bits
    return [p // c * c + p % c % 4 * F + p % c // 4 for p in range(16)]


def act_order(K: int, bits: int) -> np.ndarray:
    """int64 [K]: position p of the kernel's quantized activations holds code act_order[p] (chunk_order per 16
    codes; K a multiple of 32)."""
    if K % 32:
        raise ValueError(f"act_order: K must be a multiple of 32, got {K}")
    chunk = np.asarray(chunk_order(bits), np.int64)
    return (np.arange(K // 16, dtype=np.int64)[:, None] * 16 + chunk[None]).reshape(K)
