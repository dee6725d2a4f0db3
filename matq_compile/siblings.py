"""Sibling projections: linears of one block that read the same input (q/k/v of attention, gate/up of the MLP).

The compiler fuses a complete set of siblings into one GEMM over their stacked weights when their kernels agree
(lower/passes/fuse_sibling_linears.py), and the bit-width search ties their widths so that it always can.
A fused layer takes the set's conventional name, `model.layers.0.self_attn.qkv_proj` or `….mlp.gate_up_proj`
(a C identifier once dots are mangled: parameter names reach generated CUDA source).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

FUSED_SIBLINGS: dict[str, tuple[str, ...]] = {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                                              "gate_up_proj": ("gate_proj", "up_proj")}
_MEMBER = re.compile(r"^(.*[._])(" + "|".join(m for ms in FUSED_SIBLINGS.values() for m in ms) + r")$")
_FUSED = re.compile(r"^(.*[._])(" + "|".join(FUSED_SIBLINGS) + r")$")


def sibling_key(name: str) -> str | None:
    """The fused name of the sibling set `name` belongs to (`a.k_proj` -> `a.qkv_proj`), or None."""
    m = _MEMBER.match(name)
    if m is None:
        return None
    fused = next(f for f, members in FUSED_SIBLINGS.items() if m.group(2) in members)
    return m.group(1) + fused


def sibling_sets(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """{fused name: member names in set order} for every complete sibling set among `names`."""
    present = set(names)
    out: dict[str, tuple[str, ...]] = {}
    for name in names:
        key = sibling_key(name)
        if key is None or key in out:
            continue
        members = members_of(key)
        if members is not None and all(m in present for m in members):
            out[key] = members
    return out


def members_of(fused: str) -> tuple[str, ...] | None:
    """Inverse of sibling_key: `a.qkv_proj` -> (`a.q_proj`, `a.k_proj`, `a.v_proj`); None for other names."""
    m = _FUSED.match(fused)
    return None if m is None else tuple(m.group(1) + s for s in FUSED_SIBLINGS[m.group(2)])
