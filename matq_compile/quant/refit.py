"""Per-slice scale refit (after the codes are fixed): a Hessian-weighted least-squares multiplier per (row, group).

For slice r of one row, Ŵ_r = Σ_g m_g B_g where B_g is the row's r-bit dequantized values on group g's columns
(zero elsewhere). The layer loss (w - Ŵ_r) H (w - Ŵ_r)ᵀ is a quadratic in m, minimised by G m = c with
G[a, b] = B_a H B_bᵀ and c[a] = B_a H wᵀ: one small dense solve per row (groups are coupled through H). A tiny
ridge pulls m towards 1 so rows with dead groups stay put. The new scales are rounded to fp16 (what is stored),
and any row whose loss would not decrease keeps the parent scales, so the refit never increases the loss.
"""
from __future__ import annotations

import torch

from matq_compile.slicing import dequant_parent

RIDGE = 1e-6
M_RANGE = (0.25, 4.0)  # keeps scales positive and finite in fp16; the per-row loss check covers the clipped rows


def refit_scales(W0: torch.Tensor, H: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor | None, bits: int, rule: str, chunk: int = 128) -> torch.Tensor:
    """fp16 [out, in/g] scales for slice `bits` minimising tr(E H Eᵀ), E = W0 - Ŵ_bits; all in processing order.

    W0 [out, in] are the weights to reproduce, H [in, in] the (undamped) layer Hessian.
    """
    out, n = qweight.shape
    G = scales.shape[1]
    g = n // G
    Hg = H.double().reshape(G, g, n)
    new = torch.empty_like(scales)
    for a in range(0, out, chunk):
        b = min(a + chunk, out)
        s16 = scales[a:b]
        z = 128.0 if zeros is None else zeros[a:b].double().repeat_interleave(g, 1)
        unit = dequant_parent(qweight[a:b], torch.ones(b - a, n, dtype=torch.float64), z, bits, rule)  # s = 1
        B = unit * s16.double().repeat_interleave(g, 1)
        Bg = B.reshape(b - a, G, g)
        Y = torch.einsum("oai,aij->oaj", Bg, Hg)  # [c, G, n]: B_a H
        gram = torch.einsum("oabi,obi->oab", Y.reshape(b - a, G, G, g), Bg)
        rhs = torch.einsum("oaj,oj->oa", Y, W0[a:b].double())
        diag = torch.diagonal(gram, dim1=1, dim2=2)
        ridge = RIDGE * diag + 1e-30
        m = torch.linalg.solve(gram + torch.diag_embed(ridge), (rhs + ridge).unsqueeze(-1)).squeeze(-1)
        m = torch.nan_to_num(m, nan=1.0).clamp(*M_RANGE)
        cand = (s16.double() * m).half()
        cand = torch.where(torch.isfinite(cand) & (cand > 0), cand, s16)
        # loss(1 + d) - loss(1) = 2 dᵀ B H (Ŵ_1 - w)ᵀ + dᵀ gram d for the stored multiplier 1 + d: the exact
        # change of the row's layer loss, without forming E H Eᵀ (its cancellation-free terms, in fp64)
        d = cand.double() / s16.double() - 1.0
        grad = torch.einsum("oaj,oj->oa", Y, B - W0[a:b].double())
        change = 2.0 * (d * grad).sum(1) + torch.einsum("oa,oab,ob->o", d, gram, d)
        new[a:b] = torch.where((change >= 0)[:, None], s16, cand)
    return new

