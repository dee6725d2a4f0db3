"""Joint multi-slice code choice (spec section 4): q* = argmin_q sum_r λ_r (x - ŵ_r(q))², ties -> lowest code.

Two implementations that must agree exactly: `exhaustive` scores all 256 parent codes (rows in chunks), `windowed`
searches only |q - q8(x)| <= 2^(8 - r_min) around the RTN code q8. Both score a candidate with the same fp32
arithmetic (`objective`). Candidates are in ascending code order and torch.argmin returns the first minimum, which
gives the lowest-code tie break.

The window is not scanned code by code. Inside it, split the codes into segments on which every trained slice
below 8 bits has a constant value; on a segment only the 8-bit term (t - q)² varies, which is minimised by the
code nearest q8. So the candidates are: q8 - 1, q8, q8 + 1 (the nearest codes, ties included) and, for every other
segment, its end nearest q8 (`SliceSet.candidates`, one row per q8). This is about 11-13 candidates instead of
2·2^(8 - r_min) + 1 (65 for R = {8,4,3}), with the same minimum. If λ_8 is small next to the other weights
(< SEGMENT_MIN_LAMBDA8 · max λ), fp32 absorbs the 8-bit term and the whole window is scanned instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from matq_compile.quant.grid import rtn_codes
from matq_compile.slicing import check_rule, dequant_parent

SEGMENT_MIN_LAMBDA8 = 0.05


@dataclass(frozen=True)
class SliceSet:
    """Trained slices R with λ (selection) and μ (propagation), plus each slice's level table over 256 codes."""

    bits: tuple[int, ...]
    lambdas: tuple[float, ...]
    mus: tuple[float, ...]
    rule: str
    levels: torch.Tensor  # fp32 [|R|, 256]: ŵ_r(q) = s * (levels[r, q] - z)
    candidates: torch.Tensor  # int64 [256, k]: ascending candidate codes for each centre code q8

    @classmethod
    def make(cls, bits: tuple[int, ...], lambdas: tuple[float, ...], mus: tuple[float, ...],
             rule: str = "round") -> SliceSet:
        check_rule(rule)
        if not (len(bits) == len(lambdas) == len(mus)) or not bits:
            raise ValueError("bits, lambdas and mus must be non-empty and of equal length")
        q = torch.arange(256, dtype=torch.int32)
        # dequant with s = 1, z = 0: each code's integer level in parent units (exact in fp32)
        levels = torch.stack([dequant_parent(q, torch.tensor(1.0, dtype=torch.float64), 0.0, r, rule).float()
                              for r in bits])
        lam = tuple(float(v) for v in lambdas)
        # segments need the 8-bit term to break ties inside a segment; a tiny λ_8 is absorbed by fp32 rounding
        has8 = any(r == 8 and w >= SEGMENT_MIN_LAMBDA8 * max(lam) for r, w in zip(bits, lam))
        cand = _candidate_table(levels, bits, 2 ** (8 - min(bits)), has8)
        return cls(tuple(bits), lam, tuple(float(v) for v in mus), rule, levels, cand)

    @property
    def window(self) -> int:
        return 2 ** (8 - min(self.bits))


def _candidate_table(levels: torch.Tensor, bits: tuple[int, ...], window: int, has8: bool) -> torch.Tensor:
    """[256, k] ascending candidate codes per centre code c (rows padded by repeating their last entry)."""
    low = levels[[j for j, r in enumerate(bits) if r < 8]]
    new_seg = torch.ones(256, dtype=torch.bool)  # code b starts a segment: some low slice changes value at b
    new_seg[1:] = (low[:, 1:] != low[:, :-1]).any(dim=0) if low.numel() else False
    rows = []
    for c in range(256):
        lo, hi = max(0, c - window), min(255, c + window)
        if not has8:
            rows.append(list(range(lo, hi + 1)))
            continue
        seg_id = torch.cumsum(new_seg[lo:hi + 1].long(), 0).tolist()
        segs: dict[int, list[int]] = {}
        for code, sid in zip(range(lo, hi + 1), seg_id):
            segs.setdefault(sid, []).append(code)
        picks = set()
        for codes in segs.values():
            near = [q for q in codes if abs(q - c) <= 1]
            picks.update(near if near else [min(codes, key=lambda q: abs(q - c))])
        rows.append(sorted(picks))
    k = max(len(r) for r in rows)
    return torch.tensor([r + [r[-1]] * (k - len(r)) for r in rows], dtype=torch.int64)


def objective(x: torch.Tensor, cand: torch.Tensor | None, s: torch.Tensor, z: torch.Tensor, ss: SliceSet
              ) -> torch.Tensor:
    """Σ_r λ_r (x - s (L_r[q] - z))² for x, s, z [n] and candidate codes cand [n, k] (None = all 256 codes)."""
    x, s, z = x[:, None], s[:, None], z[:, None]
    total = None
    for j in range(len(ss.bits)):
        lev = ss.levels[j][None, :] if cand is None else ss.levels[j][cand]
        term = ss.lambdas[j] * (x - s * (lev - z)).square()
        total = term if total is None else total + term
    return total


def exhaustive(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, ss: SliceSet, chunk: int = 4096) -> torch.Tensor:
    """Reference argmin over all 256 codes; int64 codes [n]."""
    out = torch.empty(x.shape[0], dtype=torch.int64)
    for a in range(0, x.shape[0], chunk):
        b = a + chunk
        out[a:b] = objective(x[a:b], None, s[a:b], z[a:b], ss).argmin(dim=1)
    return out


def windowed(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, ss: SliceSet) -> torch.Tensor:
    """Fast argmin over the window |q - q8(x)| <= 2^(8 - r_min) (segment candidates); int64 codes [n]."""
    if ss.bits == (8,):
        # a single 8-bit slice: the minimiser is the nearest code, i.e. plain GPTQ's rounding (exact, no fp ties)
        return rtn_codes(x, s, z, 8).to(torch.int64)
    cand = ss.candidates[rtn_codes(x, s, z, 8).to(torch.int64)]
    best = objective(x, cand, s, z, ss).argmin(dim=1)
    return cand.gather(1, best[:, None]).squeeze(1)


def propagated_error(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, z: torch.Tensor, ss: SliceSet
                     ) -> torch.Tensor:
    """e = Σ_r μ_r (x - ŵ_r(q)): the residual GPTQ feeds back (fp32 [n])."""
    e = None
    for j in range(len(ss.bits)):
        term = x - s * (ss.levels[j][q] - z)
        term = term if ss.mus[j] == 1.0 else ss.mus[j] * term
        e = term if e is None else e + term
    return e


# --- per-slice targets: one compensated target T_r per trained slice (feedback = per-slice) ---------------------

def objective_multi(T: torch.Tensor, cand: torch.Tensor | None, s: torch.Tensor, z: torch.Tensor, ss: SliceSet
                    ) -> torch.Tensor:
    """Σ_r λ_r (T_r - s (L_r[q] - z))² for targets T [|R|, n] (ss.bits order), s, z [n], cand [n, k] or None."""
    s, z = s[:, None], z[:, None]
    total = None
    for j in range(len(ss.bits)):
        lev = ss.levels[j][None, :] if cand is None else ss.levels[j][cand]
        term = ss.lambdas[j] * (T[j][:, None] - s * (lev - z)).square()
        total = term if total is None else total + term
    return total


def exhaustive_multi(T: torch.Tensor, s: torch.Tensor, z: torch.Tensor, ss: SliceSet, chunk: int = 4096
                     ) -> torch.Tensor:
    """Reference argmin over all 256 codes with one target per slice; int64 codes [n]."""
    out = torch.empty(T.shape[1], dtype=torch.int64)
    for a in range(0, T.shape[1], chunk):
        b = a + chunk
        out[a:b] = objective_multi(T[:, a:b], None, s[a:b], z[a:b], ss).argmin(dim=1)
    return out


@dataclass(frozen=True)
class _Segments:
    first: torch.Tensor  # int64 [m]: first code of each segment, ascending
    last: torch.Tensor  # int64 [m]: last code of each segment
    lambdas: torch.Tensor  # fp32 [|R|, 1, 1]: λ in ss.bits order, for the batched objective


_SEGMENTS: dict[tuple[tuple[int, ...], tuple[float, ...], str], _Segments] = {}


def _segments(ss: SliceSet) -> _Segments:
    """Maximal code ranges on which every trained slice below 8 bits has one value (cached per R, λ and rule)."""
    key = (ss.bits, ss.lambdas, ss.rule)
    if key not in _SEGMENTS:
        low = ss.levels[[j for j, r in enumerate(ss.bits) if r < 8]]
        start = torch.ones(256, dtype=torch.bool)
        start[1:] = (low[:, 1:] != low[:, :-1]).any(dim=0)
        first = torch.nonzero(start).squeeze(1)
        last = torch.cat([first[1:] - 1, torch.tensor([255])])
        lam = torch.tensor(ss.lambdas, dtype=torch.float32)[:, None, None]
        _SEGMENTS[key] = _Segments(first, last, lam)
    return _SEGMENTS[key]


def windowed_multi(T: torch.Tensor, s: torch.Tensor, z: torch.Tensor, ss: SliceSet) -> torch.Tensor:
    """Exact fast argmin with one target per slice; int64 codes [n] (ties -> lowest code).

    Any code q that scores at most the score C of c_8 = q8(T_8) has λ_8 (T_8 - s (q - z))² <= C, so
    |q - c_8| <= sqrt(C / λ_8) / s + 1/2: with a heavy 8-bit weight that is a few codes. When this window (widest
    over the rows, plus one code of slack for fp32 rounding) is narrower than the segment candidates, every code in
    it is scored; otherwise, on a segment where every slice below 8 bits is constant only the 8-bit term varies, so
    each segment's best code is its code nearest c_8 (and c_8 ± 1 where fp32 may tie), and those ~|segments| + 2
    candidates (23 + 2 for R = {8,4,3}) are scored. Either set contains every minimiser over all 256 codes. The
    score is objective_multi's arithmetic, batched over slices (elementwise, so the same fp32 values for a code
    whichever set it is scored in); the lowest code among equal scores is taken explicitly. Without a usable 8-bit
    term, all 256 codes are scored.
    """
    if ss.bits == (8,):
        return rtn_codes(T[0], s, z, 8).to(torch.int64)
    if not _has_usable_8(ss):
        return exhaustive_multi(T, s, z, ss)
    seg = _segments(ss)
    c8 = rtn_codes(T[ss.bits.index(8)], s, z, 8).to(torch.int64)[:, None]
    w = narrow_width(T, s, z, ss, c8)
    if w is not None:
        cand = (c8 + torch.arange(-w, w + 1)[None, :]).clamp(0, 255)  # ascending: the first minimum is the lowest
        return cand.gather(1, _score(T, s, z, ss, seg, cand).argmin(dim=1, keepdim=True)).squeeze(1)
    cand = torch.cat([torch.minimum(torch.maximum(c8, seg.first[None, :]), seg.last[None, :]),
                      (c8 - 1).clamp(min=0), (c8 + 1).clamp(max=255)], dim=1)  # [n, k]
    total = _score(T, s, z, ss, seg, cand)
    best = total.min(dim=1, keepdim=True).values
    return torch.where(total == best, cand, 256).amin(dim=1)


def narrow_width(T: torch.Tensor, s: torch.Tensor, z: torch.Tensor, ss: SliceSet, c8: torch.Tensor) -> int | None:
    """Half-width of a code window around c8 [n, 1] that holds every minimiser, or None when it would not be
    narrower than the segment candidates (or is not finite)."""
    seg = _segments(ss)
    reach = (_score(T, s, z, ss, seg, c8)[:, 0] / ss.lambdas[ss.bits.index(8)]).sqrt() / s
    width = float(reach.max()) + 1.5 if reach.numel() else 0.0  # + 1/2 rounding of c8, + 1 code fp32 slack
    if not 2 * width + 1 < seg.first.numel() + 2:  # also NaN and inf
        return None
    return math.ceil(width)


def _score(T: torch.Tensor, s: torch.Tensor, z: torch.Tensor, ss: SliceSet, seg: _Segments, cand: torch.Tensor
           ) -> torch.Tensor:
    """objective_multi for candidate codes cand [n, k], batched over slices (same fp32 values, same order)."""
    lev = ss.levels.index_select(1, cand.reshape(-1)).view(-1, *cand.shape)  # ss.levels[:, cand], faster
    terms = seg.lambdas * (T[:, :, None] - s[:, None] * (lev - z[:, None])).square()
    total = terms[0]
    for j in range(1, terms.shape[0]):
        total = total + terms[j]
    return total


def _has_usable_8(ss: SliceSet) -> bool:
    return any(r == 8 and w >= SEGMENT_MIN_LAMBDA8 * max(ss.lambdas) for r, w in zip(ss.bits, ss.lambdas))
