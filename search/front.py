"""Pareto fronts: one row per budget point (and per uniform slice), written as front.csv."""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from matq_compile.io_utils import atomic_path


@dataclass(frozen=True)
class FrontRow:
    """One point: what was asked (budget), what was chosen, what it costs and how good it is (None = not run)."""

    budget_kind: str  # latency | bytes | avg_bits | uniform
    budget_value: float
    solver: str
    seed: int | None
    avg_bits: float
    bytes: float
    proxy: float
    predicted_latency_s: float | None = None
    measured_latency_s: float | None = None
    kl_calib: float | None = None
    kl_heldout: float | None = None
    ppl: float | None = None
    bits_hist: str = ""  # per layer type: "q_proj=4:20/3:10;..."
    plan: str = ""  # plan file path, empty for uniform slices


def layer_type(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'q_proj' (block index dropped)."""
    return re.sub(r"^.*\.", "", name)


def bits_histogram(allocation: Mapping[str, int]) -> str:
    by_type: dict[str, Counter] = {}
    for name, bits in allocation.items():
        by_type.setdefault(layer_type(name), Counter())[bits] += 1
    return ";".join(f"{t}=" + "/".join(f"{b}:{n}" for b, n in sorted(c.items())) for t, c in by_type.items())


def pareto_mask(cost: Sequence[float], loss: Sequence[float]) -> np.ndarray:
    """True where no other point has cost <= and loss <= with one strictly smaller (both minimised)."""
    c, q = np.asarray(cost, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    le = (c[None, :] <= c[:, None]) & (q[None, :] <= q[:, None])
    lt = (c[None, :] < c[:, None]) | (q[None, :] < q[:, None])
    return ~np.any(le & lt, axis=1)


def write_front(path: str | os.PathLike, rows: Iterable[FrontRow]) -> None:
    names = [f.name for f in fields(FrontRow)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})


def read_front(path: str | os.PathLike) -> list[FrontRow]:
    kinds = {f.name: f.type for f in fields(FrontRow)}
    out = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            vals = {}
            for k, v in raw.items():
                t = str(kinds[k])
                if t == "str":
                    vals[k] = v
                elif v == "":
                    vals[k] = None
                else:
                    vals[k] = int(v) if "int" in t else float(v)
            out.append(FrontRow(**vals))
    return out
