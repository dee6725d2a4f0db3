"""The parameter map: how the array of every weight parameter of a compiled graph is made from the checkpoint.

A rewriting pass that creates a parameter records, at the moment it creates it, a recipe for its array
(ParamMap.add); the pipeline hands one ParamMap to all its passes, and export makes each parameter of the
compiled signature with `ParamMap.make` (a parameter no pass created is the checkpoint tensor of that name).
So the graph and the weights agree by construction, and no parameter name is ever parsed.

Recipes are small frozen dataclasses over a WeightSource (the checkpoint, or a dict of arrays in tests); the
math they apply is numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

import numpy as np

from matq_compile import planes, tiles


class WeightSource(Protocol):
    """What recipes read: float tensors by name, and one layer's packed slice (layout.pack_slice's arrays)."""

    def tensor(self, name: str) -> np.ndarray: ...

    def packed(self, layer: str, bits: int, group: int) -> dict[str, np.ndarray]: ...

    def codes(self, layer: str) -> np.ndarray: ...


@dataclass(frozen=True)
class SourceTensor:
    """A tensor of the checkpoint as it is (embeddings, norms, an unquantized head)."""

    name: str

    def make(self, src: WeightSource) -> np.ndarray:
        return src.tensor(self.name)


@dataclass(frozen=True)
class PackedPart:
    """One packed array (P, S, Z or perm) of a kernel unit: its members' arrays stacked by rows (exact: the
    packed layout, scales and zeros are all per output row); tiled: P, S, Z then in the tile arrangement
    (tiles.arrange, same shape), for the int8 tile kernels."""

    members: tuple[str, ...]
    bits: int
    group: int
    part: str
    tiled: bool = False

    def make(self, src: WeightSource) -> np.ndarray:
        parts = [src.packed(m, self.bits, self.group)[self.part] for m in self.members]
        a = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return tiles.arrange(a, self.part, self.bits) if self.tiled and self.part in ("P", "S", "Z") else a


@dataclass(frozen=True)
class NestedPlanes:
    """The nested bit planes of a switchable build's unit: planes.pack of its members' parent codes, rows stacked
    (each plane spans all rows, so the members are stacked before packing)."""

    members: tuple[str, ...]
    tag: str

    def make(self, src: WeightSource) -> np.ndarray:
        return planes.pack(np.concatenate([src.codes(m) for m in self.members], axis=0), self.tag)


@dataclass(frozen=True)
class StackedRows:
    """Several arrays stacked by rows (a fused float weight)."""

    parts: tuple[Recipe, ...]

    def make(self, src: WeightSource) -> np.ndarray:
        return np.concatenate([p.make(src) for p in self.parts], axis=0)


@dataclass(frozen=True)
class Float16Copy:
    of: Recipe

    def make(self, src: WeightSource) -> np.ndarray:
        return self.of.make(src).astype(np.float32).astype(np.float16)


@dataclass(frozen=True)
class Int8Rows:
    """Per-row symmetric int8 of a float matrix: part "codes" (int8, round half to even) or "scale" (fp32)."""

    of: Recipe
    part: str

    def make(self, src: WeightSource) -> np.ndarray:
        codes, scale = int8_rows(self.of.make(src))
        return codes if self.part == "codes" else scale


Recipe = Union[SourceTensor, PackedPart, NestedPlanes, StackedRows, Float16Copy, Int8Rows]


def int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: codes = round(w / s), s = max|w_row| / 127 (1 for an all-zero row)."""
    w = w.astype(np.float32)
    amax = np.abs(w).max(axis=1)
    s = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.round(w / s[:, None]), -127, 127).astype(np.int8), s


class ParamMap:
    """{parameter name: recipe} collected from the passes of one compilation."""

    def __init__(self) -> None:
        self._recipes: dict[str, Recipe] = {}

    def add(self, name: str, recipe: Recipe) -> None:
        """Record how `name` is made; a second, different recipe for one name is a pass bug."""
        old = self._recipes.setdefault(name, recipe)
        if old != recipe:
            raise ValueError(f"parameter {name!r} is defined twice, as {old} and as {recipe}")

    def recipe(self, name: str) -> Recipe:
        return self._recipes.get(name) or SourceTensor(name)

    def make(self, name: str, src: WeightSource) -> np.ndarray:
        return self.recipe(name).make(src)

    def __contains__(self, name: str) -> bool:
        return name in self._recipes

    def __len__(self) -> int:
        return len(self._recipes)


class ArraySource:
    """A WeightSource over plain arrays: float tensors by name and already packed parts by `<layer>.<part>`
    (tests and imported graphs)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def tensor(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise KeyError(f"no tensor for model parameter {name!r}")
        return self.arrays[name]

    def packed(self, layer: str, bits: int, group: int) -> dict[str, np.ndarray]:
        return {p: self.arrays[f"{layer}.{p}"] for p in ("P", "S", "Z", "perm") if f"{layer}.{p}" in self.arrays}

    def codes(self, layer: str) -> np.ndarray:
        return self.arrays[f"{layer}.codes"]
