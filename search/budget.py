"""Budgets: decode/prefill latency of the linear layers, weight bytes, or average bits; and their costs.

Each budget kind gives a per layer x level cost matrix; a budget is satisfied when the summed cost of the chosen
levels is <= its value. Average bits are counted over quantized weights only (no scales), as in MatGPTQ.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from matq_compile.search.tables import SearchTable

KINDS: tuple[str, ...] = ("latency", "bytes", "avg_bits")
_ALIASES = {"latency": "latency", "lat": "latency", "bytes": "bytes", "size": "bytes",
            "avg-bits": "avg_bits", "avg_bits": "avg_bits", "bits": "avg_bits"}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_BYTE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
UNITS = {"latency": "s", "bytes": "B", "avg_bits": "bits"}


@dataclass(frozen=True)
class Budget:
    """One constraint: summed cost of `kind` <= value (seconds, bytes, or bits per weight)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown budget kind {self.kind!r}; known: latency, bytes, avg-bits")
        if not (self.value > 0 and np.isfinite(self.value)):
            raise ValueError(f"budget {self.kind} must be a positive finite number, got {self.value!r}")

    def __str__(self) -> str:
        return f"{self.kind}:{format_value(self.kind, self.value)}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": self.value, "unit": UNITS[self.kind]}

    @staticmethod
    def from_json(obj: Mapping) -> Budget:
        return Budget(str(obj["kind"]), float(obj["value"]))


def format_value(kind: str, value: float) -> str:
    if kind == "latency":
        return f"{value * 1e3:.6g}ms"
    if kind == "bytes":
        return f"{value / 1e6:.6g}MB"
    return f"{value:.6g}"


def _number_with_unit(text: str, units: Mapping[str, float], what: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]*)\s*", text)
    if not m:
        raise ValueError(f"cannot read {what} {text!r}")
    unit = m.group(2).lower() if m.group(2) != "µs" else "µs"
    if unit and unit not in units:
        raise ValueError(f"unknown unit {m.group(2)!r} in {what} {text!r}; known: {', '.join(units)}")
    return float(m.group(1)) * (units[unit] if unit else 1.0)


def parse_budget(text: str) -> Budget:
    """'latency:1.2ms' | 'bytes:40MB' | 'avg-bits:3.5' -> Budget (latency default unit s, bytes default B)."""
    kind, sep, value = text.partition(":")
    if not sep or kind.strip().lower() not in _ALIASES:
        raise ValueError(f"budget must look like latency:1.2ms, bytes:40MB or avg-bits:3.5, got {text!r}")
    kind = _ALIASES[kind.strip().lower()]
    if kind == "latency":
        return Budget(kind, _number_with_unit(value, _TIME_UNITS, "latency"))
    if kind == "bytes":
        return Budget(kind, _number_with_unit(value, _BYTE_UNITS, "size"))
    return Budget(kind, _number_with_unit(value, {}, "average bits"))


def cost_matrix(table: SearchTable, kind: str) -> np.ndarray:
    """[L, B] cost of each layer at each level for a budget kind (avg_bits: share of the model's bits)."""
    if kind == "latency":
        if table.latency_s is None:
            raise ValueError("a latency budget needs a latency table (measure the tuned kernels first)")
        return table.latency_s
    if kind == "bytes":
        return table.bytes
    if kind == "avg_bits":
        numel = table.numel
        return numel[:, None] * np.asarray(table.levels, dtype=np.float64)[None, :] / numel.sum()
    raise ValueError(f"unknown budget kind {kind!r}")


def choice_of(table: SearchTable, allocation: Mapping[str, int]) -> np.ndarray:
    """Level index per layer of `table` for a {layer: bits} allocation covering exactly its layers."""
    names = table.names
    extra = sorted(set(allocation) - set(names))
    missing = [n for n in names if n not in allocation]
    if extra or missing:
        raise ValueError(f"allocation does not match the table: unknown layers {extra[:3]}, missing {missing[:3]}")
    return np.array([table.level_index(int(allocation[n])) for n in names], dtype=np.int64)


def total(table: SearchTable, choice: np.ndarray, kind: str) -> float:
    """Summed cost of a level-index choice (per layer) for one kind; 'proxy' gives the summed proxy."""
    matrix = table.proxy if kind == "proxy" else cost_matrix(table, kind)
    return float(matrix[np.arange(len(choice)), choice].sum())


def predicted(table: SearchTable, choice: np.ndarray) -> dict[str, float]:
    """All costs of a choice that the table can predict: proxy, avg_bits, bytes and latency_s when measured."""
    out = {"proxy": total(table, choice, "proxy"), "avg_bits": total(table, choice, "avg_bits"),
           "bytes": total(table, choice, "bytes")}
    if table.latency_s is not None:
        out["latency_s"] = total(table, choice, "latency")
    return out


def uniform_costs(table: SearchTable, kinds: Sequence[str]) -> dict[int, dict[str, float]]:
    """Costs of every uniform slice, the reference points of any front."""
    n = len(table.layers)
    return {b: {k: total(table, np.full(n, i), k) for k in kinds} for i, b in enumerate(table.levels)}
