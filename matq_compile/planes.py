"""Nested bit-plane layout of a switchable build: the numpy truth that lower/kernels.py mirrors (pinned by tests).

A switchable build stores each layer's 8-bit parent codes once and serves a set of slice widths W from them. The
r-bit slice needs the top t(r) bits of the parent code:

    midpoint rule: t(r) = r              (the slice code is q >> (8 - r))
    round rule:    t(r) = r + 1 (r < 8)  (one bit more: the round bit; slicing.slice_codes)
                   t(8) = 8

By default the stored bits are split into planes at every t(r) of W (high bits first), each split further into
widths 4, 2, 1 (a plane of width w | 32 never straddles a uint32 word, as in layout.py). The r-bit kernel reads only
the planes covering the top t(r) bits, so the weight traffic per token falls with r; the bits below max t(r) are not
stored.

    W = {2, 3, 4, 6, 8}, round:    t = 3, 4, 5, 7, 8   -> plane widths (2, 1, 1, 1, 2, 1)
    W = {2, 3, 4, 6, 8}, midpoint: t = 2, 3, 4, 6, 8   -> plane widths (2, 1, 1, 2, 2)

Any other split may be asked for (`planes=`, e.g. (4, 4)): a slice whose t(r) falls inside a plane reads that
whole plane and drops its low bits. Fewer, wider planes cost the narrow slices traffic and save the wide ones decode
work (each plane read is a shift, a mask and an or more per code), which pays where the kernels are compute-bound.

The planes are stored one after another, each over all N rows (uint32 [N * nblk * sum(widths)], nblk =
ceil(K / 32)), so the r-bit kernel streams the first planes whole and never touches the others; a plane-major
order inside each row instead left every row's read a short strided piece of a 4x longer array (measured 2.5x
slower than the dense kernel at r = 2, same instructions).

    plane j (width w, bit offset o = sum of the widths before it) starts at word o * N * nblk; its words are the
    dense layout's for a w-bit plane: row n, block b occupy words [n * w * nblk + b * w, ... + w) of the plane,
    and code k = 32 b + kl has its w bits at bit (kl % (32 / w)) * w of word n * w * nblk + b * w + kl // (32 / w),
    holding bits [8 - o - w, 8 - o) of the parent code.

From the top t bits T = q >> (8 - t):  midpoint code = T;  round code = min((T + 1) >> 1, 2^r - 1) for t = r + 1.
Dequantization is layout.py's affine form with the slice's own scale and zero (its refitted scales if any).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from matq_compile import slicing

BLOCK: int = 32  # codes per block, as in layout.py
DEFAULT_WIDTHS: tuple[int, ...] = (2, 3, 4, 6, 8)


def check_widths(widths: Iterable[int]) -> tuple[int, ...]:
    """Sorted distinct widths, each in 2..8."""
    out = tuple(sorted({slicing.check_bits(b) for b in widths}))
    if not out:
        raise ValueError("a switchable build needs at least one slice width")
    return out


def top_bits(bits: int, rule: str) -> int:
    """t(r): how many top bits of the parent code the r-bit slice reads."""
    bits, rule = slicing.check_bits(bits), slicing.check_rule(rule)
    return bits if bits == 8 or rule == "midpoint" else bits + 1


def plane_widths(widths: Iterable[int], rule: str, planes: Iterable[int] | None = None) -> tuple[int, ...]:
    """Widths of the stored planes, high bits first, for slice widths W under `rule`: `planes` if given (checked:
    each 1, 2, 4 or 8, covering the widest slice's t(r), at most 8 bits), else a boundary at every t(r)."""
    widths = check_widths(widths)
    need = max(top_bits(b, rule) for b in widths)
    if planes is not None:
        planes = tuple(int(w) for w in planes)
        if not planes or any(w not in (1, 2, 4, 8) for w in planes) or sum(planes) > 8:
            raise ValueError(f"plane widths must each be 1, 2, 4 or 8 bits, at most 8 in all; got {list(planes)}")
        if sum(planes) < need:
            raise ValueError(f"planes {list(planes)} store {sum(planes)} bits; r={max(widths)} under the {rule} rule "
                             f"reads {need}")
        return planes
    cuts = sorted({top_bits(b, rule) for b in widths})
    out, prev = [], 0
    for cut in cuts:
        seg = cut - prev
        for w in (8, 4, 2, 1):
            while seg >= w:
                out.append(w)
                seg -= w
        prev = cut
    return tuple(out)


def tag(widths: Iterable[int], rule: str, planes: Iterable[int] | None = None) -> str:
    """The layout's name in kernel keys: rule letter + plane widths, e.g. 'r211121' (`planes`: plane_widths)."""
    return slicing.check_rule(rule)[0] + "".join(str(w) for w in plane_widths(widths, rule, planes))


def parse_tag(t: str) -> tuple[str, tuple[int, ...]]:
    """(rule, plane widths) of a tag."""
    rules = {r[0]: r for r in slicing.SLICE_RULES}
    if len(t) < 2 or t[0] not in rules or any(c not in "1248" for c in t[1:]) or sum(int(c) for c in t[1:]) > 8:
        raise ValueError(f"not a nested plane layout tag: {t!r}")
    return rules[t[0]], tuple(int(c) for c in t[1:])


def planes_read(bits: int, layout_tag: str) -> tuple[tuple[int, int, int], ...]:
    """(width, bit offset, shift within the top t(r) bits) of each plane the r-bit slice reads, high first. A
    negative shift: the last plane reaches below bit t(r), and its low -shift bits are dropped (a layout with no
    plane boundary at t(r) serves r by reading one wider plane)."""
    rule, widths = parse_tag(layout_tag)
    t = top_bits(bits, rule)
    out, off = [], 0
    for w in widths:
        if off >= t:
            break
        out.append((w, off, t - off - w))
        off += w
    if off < t:
        raise ValueError(f"layout {layout_tag} stores {off} bits; r={bits} needs {t}")
    return tuple(out)


def words_per_row(K: int, layout_tag: str) -> int:
    """uint32 words of one row over all planes (the packed array holds N of them)."""
    return -(-K // BLOCK) * sum(parse_tag(layout_tag)[1])


def words_read(K: int, bits: int, layout_tag: str) -> int:
    """uint32 words per row the r-bit kernel reads."""
    return -(-K // BLOCK) * sum(w for w, _, _ in planes_read(bits, layout_tag))


def word_index(n, k, N: int, K: int, width: int, offset: int):
    """Index of the word holding the `width`-bit plane (at bit `offset`) of code (n, k); numpy or TIR integers."""
    nblk = -(-K // BLOCK)
    return offset * N * nblk + n * (width * nblk) + (k // BLOCK) * width + (k % BLOCK) // (32 // width)


def pack(q: np.ndarray, layout_tag: str) -> np.ndarray:
    """uint8 parent codes [N, K] -> uint32 [N * words_per_row] (the bits below the planes are dropped)."""
    q = np.asarray(q)
    if q.dtype != np.uint8 or q.ndim != 2:
        raise ValueError(f"parent codes must be uint8 [N, K], got {q.dtype} {q.shape}")
    _, widths = parse_tag(layout_tag)
    N, K = q.shape
    nblk = -(-K // BLOCK)
    padded = np.zeros((N, nblk * BLOCK), np.uint32)
    padded[:, :K] = q
    blocks = padded.reshape(N, nblk, BLOCK)
    out, off = [], 0
    for w in widths:
        plane = (blocks >> np.uint32(8 - off - w)) & np.uint32((1 << w) - 1)
        per_word = 32 // w
        words = np.zeros((N, nblk, w), np.uint32)
        for j in range(BLOCK):
            words[:, :, j // per_word] |= plane[:, :, j] << np.uint32((j % per_word) * w)
        out.append(words.reshape(-1))
        off += w
    return np.concatenate(out)


def slice_codes(words: np.ndarray, bits: int, layout_tag: str, K: int) -> np.ndarray:
    """The r-bit slice codes [N, K] (uint8) read from packed planes: equal to slicing.slice_codes of the parent."""
    rule, _ = parse_tag(layout_tag)
    words = np.asarray(words)
    per_row = words_per_row(K, layout_tag)
    if words.dtype != np.uint32 or words.ndim != 1 or words.size % per_row:
        raise ValueError(f"expected uint32 [N * {per_row}] for K={K}, layout {layout_tag}; "
                         f"got {words.dtype} {words.shape}")
    N = words.size // per_row
    n, k = np.arange(N)[:, None], np.arange(K)[None, :]
    top = np.zeros((N, K), np.uint32)
    for w, off, shift in planes_read(bits, layout_tag):
        word = words[word_index(n, k, N, K, w, off)]
        v = (word >> ((k % BLOCK % (32 // w)) * w).astype(np.uint32)) & np.uint32((1 << w) - 1)
        top |= v << np.uint32(shift) if shift >= 0 else v >> np.uint32(-shift)
    return round_top(top, bits, rule).astype(np.uint8)


def round_top(top: np.ndarray, bits: int, rule: str) -> np.ndarray:
    """The slice code from the top t(r) bits of the parent (the round rule folds in its round bit)."""
    if top_bits(bits, rule) == bits:
        return top
    return np.minimum((top + 1) >> 1, (1 << bits) - 1)


def pack_switch(qweight: np.ndarray, scales: dict[int, np.ndarray], zeros: np.ndarray | None,
                widths: Iterable[int], rule: str, group: int = -1,
                planes: Iterable[int] | None = None) -> dict[str, np.ndarray]:
    """Kernel arrays of one layer of a switchable build: "P" (the planes, once) and "S{r}", "Z{r}" per width
    (float16, as layout.pack_slice makes them from each slice's own scales)."""
    from matq_compile import layout

    widths = check_widths(widths)
    qweight = np.asarray(qweight)
    if qweight.dtype != np.uint8 or qweight.ndim != 2:
        raise ValueError(f"qweight must be uint8 [N, K], got {qweight.dtype} {qweight.shape}")
    N, K = qweight.shape
    g = layout.check_group(group, K)
    if zeros is None:
        zeros = np.full((N, K // g), 128, np.uint8)
    out = {"P": pack(qweight, tag(widths, rule, planes))}
    for r in widths:
        s = np.asarray(scales[r])
        if s.shape != (N, K // g):
            raise ValueError(f"scales of r={r} must have shape {(N, K // g)}, got {s.shape}")
        out[f"S{r}"] = slicing.slice_scale(s.astype(np.float64), r).astype(np.float16)
        out[f"Z{r}"] = np.asarray(slicing.slice_zero_point(np.asarray(zeros), r, rule)).astype(np.float16)
    return out
