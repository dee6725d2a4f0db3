"""Round-to-nearest baselines: RTN-8 (the parent to slice) and RTN at b bits stored as a parent."""
from __future__ import annotations

import torch

from matq_compile.config import QuantSpec
from matq_compile.quant import grid


def rtn_quantize(W: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Parent (qweight u8, scales f16, zeros u8|None) of W [out, in] on the spec.native_bits grid, no Hessian."""
    out, n = W.shape
    g = spec.group_for(n)
    bits = spec.native_bits
    Wg = W.detach().float().reshape(out, n // g, g)
    s, z = grid.find_params(Wg.reshape(-1, g), bits, spec.sym)
    s, z = s.reshape(out, n // g), z.reshape(out, n // g)
    q = grid.rtn_codes(Wg, s[..., None], z[..., None], bits).reshape(out, n)
    return grid.to_parent(q, s, None if spec.sym else z, bits)
