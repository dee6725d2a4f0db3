"""Per-layer search tables: sensitivity (quality) joined with measured kernel latency (cost) on layer shapes.

A `SearchTable` holds, for every quantized layer and every allowed level r, the additive quality proxy, the
weight bytes and (when a latency table is given) the median latency of the tuned kernel for that layer's
KernelKey (N = out, K = in, group, M bucket, r). A layer whose key is missing from the latency table is an
error naming the key, never a silent zero.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROXIES: tuple[str, ...] = ("nmse", "loss", "rel_mse")
DEFAULT_LEVELS: tuple[int, ...] = (2, 3, 4, 6, 8)
LATENCY_FORMAT_VERSION = 1

# (N, K, group, m_bucket, bits); N = out features, K = in features (torch layout [out, in]).
LatencyKey = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class LayerInfo:
    """Shape facts of one quantized linear layer."""

    name: str
    out_features: int  # N
    in_features: int  # K
    group: int  # -1 = per channel

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
class LatencyTable:
    """Median kernel latency (seconds) per (N, K, group, m_bucket, bits), with where it was measured."""

    target: str
    tvm_version: str
    db_hash: str
    entries: Mapping[LatencyKey, float]

    def check_source(self, target: str | None = None, db_hash: str | None = None) -> None:
        """Refuse a table measured on another target or from another tuning database."""
        if target is not None and target != self.target:
            raise ValueError(f"latency table was measured for target {self.target!r}, not {target!r}")
        if db_hash is not None and db_hash != self.db_hash:
            raise ValueError(f"latency table comes from tuning database {self.db_hash[:12]}…, "
                             f"but the database in use has hash {db_hash[:12]}…; re-measure it")

    def missing(self, keys: Sequence[LatencyKey]) -> list[LatencyKey]:
        return sorted({k for k in keys if k not in self.entries})

    def merged(self, more: Mapping[LatencyKey, float]) -> LatencyTable:
        return dataclasses.replace(self, entries={**self.entries, **more})


def save_latency_table(path: str | os.PathLike, table: LatencyTable) -> None:
    from matq_compile.io_utils import write_json

    rows = [{"N": k[0], "K": k[1], "group": k[2], "m_bucket": k[3], "bits": k[4], "median_s": v}
            for k, v in sorted(table.entries.items())]
    write_json(path, {"format_version": LATENCY_FORMAT_VERSION, "target": table.target,
                      "tvm_version": table.tvm_version, "db_hash": table.db_hash, "rows": rows})


def load_latency_table(path: str | os.PathLike) -> LatencyTable:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latency table not found: {path}")
    obj = json.loads(path.read_text())
    if obj.get("format_version") != LATENCY_FORMAT_VERSION:
        raise ValueError(f"{path}: unknown latency table format_version {obj.get('format_version')!r}")
    entries: dict[LatencyKey, float] = {}
    for row in obj["rows"]:
        t = float(row["median_s"])
        if not (t > 0 and math.isfinite(t)):
            raise ValueError(f"{path}: non-positive latency {t} for {row}")
        entries[(int(row["N"]), int(row["K"]), int(row["group"]), int(row["m_bucket"]), int(row["bits"]))] = t
    return LatencyTable(obj["target"], obj["tvm_version"], obj["db_hash"], entries)


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


def layers_from_sensitivity(sensitivity: Mapping[str, Mapping[str, Any]],
                            layer_names: Sequence[str] | None = None) -> tuple[LayerInfo, ...]:
    names = list(layer_names) if layer_names is not None else list(sensitivity)
    out = []
    for name in names:
        if name not in sensitivity:
            raise ValueError(f"layer {name!r} has no entry in the sensitivity table")
        entry = sensitivity[name]
        n, k = (int(x) for x in entry["shape"])
        group = int(entry.get("group", entry.get("g", -1)))
        out.append(LayerInfo(name, n, k, -1 if group in (0, k) else group))  # kernels name per-channel -1
    return tuple(out)


def _proxy_value(entry: Mapping[str, Any], proxy: str, bits: int, layer: str) -> float:
    table = entry.get(proxy)
    if table is None:
        raise ValueError(f"sensitivity of layer {layer!r} has no {proxy!r} table")
    value = table.get(str(bits), table.get(bits)) if isinstance(table, Mapping) else None
    if value is None:
        have = sorted(table) if isinstance(table, Mapping) else table
        raise ValueError(f"sensitivity of layer {layer!r} has no {proxy}[{bits}] (there: {have})")
    return float(value)


def fused_sets(layers: Sequence[LayerInfo]) -> dict[tuple[str, ...], tuple[int, int, int]]:
    """{members: (N, K, group) of their one kernel} for the sibling sets the compiler fuses when they share a
    width (siblings.py; complete sets of equal K and group)."""
    from matq_compile.siblings import sibling_sets

    by_name = {la.name: la for la in layers}
    out = {}
    for members in sibling_sets([la.name for la in layers]).values():
        kinds = {(by_name[m].in_features, by_name[m].group) for m in members}
        if len(kinds) == 1:
            k, g = next(iter(kinds))
            out[members] = (sum(by_name[m].out_features for m in members), k, g)
    return out


def latency_keys(layers: Sequence[LayerInfo], levels: Sequence[int], m_bucket: int,
                 fuse_siblings: bool = True) -> list[LatencyKey]:
    """The distinct kernel keys a model needs: one per (N, K, group) x level at this M bucket (with the fused
    sibling kernels when fuse_siblings)."""
    shapes = {(la.out_features, la.in_features, la.group) for la in layers}
    if fuse_siblings:
        shapes |= set(fused_sets(layers).values())
    return [(n, k, g, m_bucket, b) for (n, k, g) in sorted(shapes) for b in levels]


def _layer_latency(latency: LatencyTable, layers: Sequence[LayerInfo], levels: Sequence[int], m_bucket: int,
                   fuse_siblings: bool) -> np.ndarray:
    """[L, B] seconds: a layer's own kernel, or for a fused sibling set its share (by rows) of the one kernel, so
    a tied set costs exactly what the compiled module runs."""
    lat = np.array([[latency.entries[(la.out_features, la.in_features, la.group, m_bucket, b)] for b in levels]
                    for la in layers])
    if fuse_siblings:
        index = {la.name: i for i, la in enumerate(layers)}
        for members, (n, k, g) in fused_sets(layers).items():
            fused = np.array([latency.entries[(n, k, g, m_bucket, b)] for b in levels])
            for m in members:
                lat[index[m]] = fused * layers[index[m]].out_features / n
    return lat


def build_table(sensitivity: Mapping[str, Mapping[str, Any]], levels: Sequence[int], *,
                latency: LatencyTable | None = None, m_bucket: int = 1, proxy: str = "nmse",
                byte_model: ByteModel = ByteModel(), layer_names: Sequence[str] | None = None,
                fuse_siblings: bool = True) -> SearchTable:
    """Join the sensitivity table with a latency table on each layer's (N, K, group, m_bucket, bits).
    fuse_siblings: sibling sets cost their fused kernel (what the compiler runs for a tied, non-act-order set)."""
    if proxy not in PROXIES:
        raise ValueError(f"unknown proxy {proxy!r}; known: {', '.join(PROXIES)}")
    levels = parse_levels(levels)
    layers = layers_from_sensitivity(sensitivity, layer_names)
    if not layers:
        raise ValueError("no quantized layers to search over")
    prox = np.array([[_proxy_value(sensitivity[la.name], proxy, b, la.name) for b in levels] for la in layers])
    nbytes = np.array([[byte_model.layer_bytes(la, b) for b in levels] for la in layers])
    lat = None
    if latency is not None:
        missing = latency.missing(latency_keys(layers, levels, m_bucket, fuse_siblings))
        if missing:
            raise ValueError(f"latency table ({latency.target}) lacks {len(missing)} kernel key(s) "
                             f"(N, K, group, m_bucket, bits), e.g. {missing[:4]}; measure them first")
        lat = _layer_latency(latency, layers, levels, m_bucket, fuse_siblings)
    return SearchTable(layers, levels, prox, nbytes, lat, proxy, m_bucket)
