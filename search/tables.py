"""Per-layer search tables: sensitivity (quality) joined with measured kernel latency (cost) on layer shapes.

A `SearchTable` holds, for every quantized layer and every allowed level r, the additive quality proxy, the
weight bytes and (when a latency table is given) the median latency of the kernel the compiled model runs for
it: the layer's own kernel, or its share (by rows) of its fused sibling set's kernel, as kernel_units.py
decides. A kernel missing from the latency table is an error naming it, never a silent zero.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from matq_compile.kernel_units import LinearSlice, kernel_keys, kernel_units
from matq_compile.layout import KernelKey
from matq_compile.search.latency import LatencyTable, load_latency_table, save_latency_table

__all__ = ["ByteModel", "LatencyTable", "LayerInfo", "SearchTable", "build_table", "latency_keys",
           "layers_from_sensitivity", "load_latency_table", "parse_levels", "save_latency_table"]

PROXIES: tuple[str, ...] = ("nmse", "loss", "rel_mse")
DEFAULT_LEVELS: tuple[int, ...] = (2, 3, 4, 6, 8)
TIE_RULES: tuple[str, ...] = ("fused", "none")


@dataclass(frozen=True)
class LayerInfo:
    """Shape facts of one quantized linear layer."""

    name: str
    out_features: int  # N
    in_features: int  # K
    group: int  # -1 = per channel
    act_order: bool = False
    nested: str = ""  # a switchable build's plane layout (its kernels read every width from it)

    def slice(self, bits: int) -> LinearSlice:
        return LinearSlice(self.out_features, self.in_features, bits, self.group, self.act_order,
                           nested=self.nested)

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features

    @property
    def n_groups(self) -> int:
        return 1 if self.group in (-1, 0, self.in_features) else self.in_features // self.group


@dataclass(frozen=True)
class ByteModel:
    """Bytes an r-bit layer occupies as deployed (matq_compile.layout): each row's codes packed densely in blocks
    of 32 codes (r uint32 words per block), an fp16 scale and an fp16 zero per group, an int32 perm (act-order)."""

    act_order: bool = False
    scale_bytes: int = 2  # fp16 slice scale per group
    zero_bytes: int = 2  # fp16 slice zero per group (stored for symmetric grids too)
    block: int = 32  # codes per packed block; rows are padded to whole blocks

    def layer_bytes(self, layer: LayerInfo, bits: int) -> float:
        codes = layer.out_features * (-(-layer.in_features // self.block)) * bits * self.block // 8
        meta = layer.out_features * layer.n_groups * (self.scale_bytes + self.zero_bytes)
        perm = 4 * layer.in_features if self.act_order else 0
        return float(codes + meta + perm)


@dataclass(frozen=True)
class SearchTable:
    """Everything the solvers read: per layer x level proxy, bytes, numel and latency (None if not measured)."""

    layers: tuple[LayerInfo, ...]
    levels: tuple[int, ...]
    proxy: np.ndarray  # [L, B] additive quality proxy (lower is better)
    bytes: np.ndarray  # [L, B]
    latency_s: np.ndarray | None  # [L, B] median seconds of each layer's kernel, or None
    proxy_kind: str = "nmse"
    m_bucket: int = 1
    ties: str = "fused"  # the tie rule latency_s was priced for (fused sets cost their fused kernel)

    def __post_init__(self) -> None:
        shape = (len(self.layers), len(self.levels))
        for name in ("proxy", "bytes") + (("latency_s",) if self.latency_s is not None else ()):
            arr = getattr(self, name)
            if arr.shape != shape:
                raise ValueError(f"SearchTable.{name} has shape {arr.shape}, expected {shape}")
        if list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels must be distinct and increasing, got {self.levels}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def numel(self) -> np.ndarray:
        return np.array([layer.numel for layer in self.layers], dtype=np.float64)

    def level_index(self, bits: int) -> int:
        if bits not in self.levels:
            raise ValueError(f"bits {bits} not among the allowed levels {self.levels}")
        return self.levels.index(bits)


def parse_levels(text: str | Sequence[int]) -> tuple[int, ...]:
    """'2,3,4,6,8' -> (2, 3, 4, 6, 8); each level in 2..8, distinct."""
    raw = [s for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text)
    try:
        levels = sorted(int(x) for x in raw)
    except ValueError as e:
        raise ValueError(f"levels must be integers, got {text!r}") from e
    if not levels or len(set(levels)) != len(levels) or not all(2 <= b <= 8 for b in levels):
        raise ValueError(f"levels must be distinct integers in 2..8, got {text!r}")
    return tuple(levels)


def layers_from_sensitivity(sensitivity: Mapping[str, Mapping[str, Any]], layer_names: Sequence[str] | None = None,
                            act_order: bool = False, nested: str = "") -> tuple[LayerInfo, ...]:
    names = list(layer_names) if layer_names is not None else list(sensitivity)
    out = []
    for name in names:
        if name not in sensitivity:
            raise ValueError(f"layer {name!r} has no entry in the sensitivity table")
        entry = sensitivity[name]
        n, k = (int(x) for x in entry["shape"])
        group = int(entry.get("group", entry.get("g", -1)))
        out.append(LayerInfo(name, n, k, -1 if group in (0, k) else group, act_order, nested))  # per channel: -1
    return tuple(out)


def check_levels(sensitivity: Mapping[str, Mapping[str, Any]], levels: Sequence[int], proxy: str) -> None:
    """ValueError naming the first level the checkpoint's sensitivity table lacks: checked before any kernel is
    measured for those levels."""
    for name, entry in sensitivity.items():
        for bits in levels:
            _proxy_value(entry, proxy, bits, name)


def _proxy_value(entry: Mapping[str, Any], proxy: str, bits: int, layer: str) -> float:
    table = entry.get(proxy)
    if table is None:
        raise ValueError(f"sensitivity of layer {layer!r} has no {proxy!r} table")
    value = table.get(str(bits), table.get(bits)) if isinstance(table, Mapping) else None
    if value is None:
        have = sorted(table) if isinstance(table, Mapping) else table
        raise ValueError(f"sensitivity of layer {layer!r} has no {proxy}[{bits}] (there: {have}); "
                         f"pass --levels from those")
    return float(value)


def slices_at(layers: Sequence[LayerInfo], bits: Mapping[str, int] | int) -> dict[str, LinearSlice]:
    """The layers as kernel slices at one width or at {layer: width}."""
    return {la.name: la.slice(bits if isinstance(bits, int) else bits[la.name]) for la in layers}


def latency_keys(layers: Sequence[LayerInfo], levels: Sequence[int], m_bucket: int,
                 fuse_siblings: bool = True) -> list[KernelKey]:
    """Every kernel a plan over `levels` may run at this M bucket (kernel_units.kernel_keys)."""
    return kernel_keys(slices_at(layers, 4), levels, [m_bucket], fuse_siblings)


def plan_kernels(layers: Sequence[LayerInfo], allocation: Mapping[str, int], m_bucket: int,
                 fuse_siblings: bool = True) -> list[KernelKey]:
    """The kernel of each kernel unit the compiled model runs for `allocation`, one entry per call per token."""
    return [u.key(m_bucket) for u in kernel_units(slices_at(layers, allocation), fuse_siblings)]


def plan_latency(latency: LatencyTable, layers: Sequence[LayerInfo], allocation: Mapping[str, int], m_bucket: int,
                 fuse_siblings: bool = True) -> float:
    """Seconds of every kernel the compiled model runs for `allocation` (its kernel units), summed."""
    return float(sum(latency.latency(k) for k in plan_kernels(layers, allocation, m_bucket, fuse_siblings)))


def _layer_latency(latency: LatencyTable, layers: Sequence[LayerInfo], levels: Sequence[int], m_bucket: int,
                   fuse: bool) -> np.ndarray:
    """[L, B] seconds: at each level, the kernel units of the model at that width; a unit's latency is charged to
    its members by rows, so a tied set costs exactly what the compiled module runs."""
    index = {la.name: i for i, la in enumerate(layers)}
    lat = np.zeros((len(layers), len(levels)))
    for j, b in enumerate(levels):
        for unit in kernel_units(slices_at(layers, b), fuse):
            t = latency.latency(unit.key(m_bucket))
            for m in unit.members:
                lat[index[m], j] = t * unit.share(m)
    return lat


def build_table(sensitivity: Mapping[str, Mapping[str, Any]], levels: Sequence[int], *,
                latency: LatencyTable | None = None, m_bucket: int = 1, proxy: str = "nmse",
                byte_model: ByteModel = ByteModel(), layer_names: Sequence[str] | None = None,
                fuse_siblings: bool = True, ties: str = "fused", nested: str = "") -> SearchTable:
    """Join the sensitivity table with a latency table on the kernels the compiled model runs.
    fuse_siblings: the compiler's setting; ties: the search's tie rule. With ties "fused" a sibling set always
    shares one width and costs its fused kernel; with "none" every layer is priced as its own kernel (a set the
    plan happens to give one width is then fused by the compiler: search.plan_latency prices the plan exactly).
    Act-order checkpoints (byte_model.act_order) never fuse (kernel_units.py). nested: price the kernels of a
    switchable build of that plane layout (its units never split: ties must be "fused")."""
    if proxy not in PROXIES:
        raise ValueError(f"unknown proxy {proxy!r}; known: {', '.join(PROXIES)}")
    if ties not in TIE_RULES:
        raise ValueError(f"unknown tie rule {ties!r}; known: {', '.join(TIE_RULES)}")
    levels = parse_levels(levels)
    if nested and ties != "fused":
        raise ValueError("a switchable build runs each fused sibling set at one width: search it with ties 'fused'")
    layers = layers_from_sensitivity(sensitivity, layer_names, byte_model.act_order, nested)
    if not layers:
        raise ValueError("no quantized layers to search over")
    prox = np.array([[_proxy_value(sensitivity[la.name], proxy, b, la.name) for b in levels] for la in layers])
    nbytes = np.array([[byte_model.layer_bytes(la, b) for b in levels] for la in layers])
    lat = None
    if latency is not None:
        missing = latency.missing(latency_keys(layers, levels, m_bucket, fuse_siblings))
        if missing:
            raise ValueError(f"latency table ({latency.target}) lacks {len(missing)} kernel(s), e.g. "
                             f"{[k.name for k in missing[:4]]}; measure them first")
        lat = _layer_latency(latency, layers, levels, m_bucket, fuse_siblings and ties == "fused")
    return SearchTable(layers, levels, prox, nbytes, lat, proxy, m_bucket, ties)
