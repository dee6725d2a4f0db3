"""Named MatGPTQ recipes: the settings `matq quantize --recipe NAME` starts from (explicit flags override them).

reference: MatGPTQ as published (R = {8,4,3}, λ = 1, one shared error state fed the uniform mean of the slices'
    residuals, parent scales for every slice, natural column order).
default: chosen from benchmarks/results/quantizer_study_smollm2.json (README §1 says why): per-slice error state,
    λ_8 = 64, refit of every evaluated slice, act-order over static groups (no perm stored: deployment unchanged).
"""
from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "reference": {"trained_bits": (8, 4, 3), "lambdas": (), "mu": "uniform", "feedback": "shared", "refit": (),
                  "act_order": False, "static_groups": False},
    "default": {"trained_bits": (8, 4, 3), "lambdas": ((8, 64.0), (4, 1.0), (3, 1.0)), "mu": "uniform",
                "feedback": "per-slice", "refit": (8, 6, 5, 4, 3), "act_order": True, "static_groups": True},
}
RECIPE_FIELDS: tuple[str, ...] = ("trained_bits", "lambdas", "mu", "feedback", "refit", "act_order", "static_groups")


def recipe(name: str) -> dict[str, Any]:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return dict(RECIPES[name])
