"""Plan files: the chosen bits per layer with the budget, predicted costs and provenance.

JSON (`allocation.json`) is what the compiler and `matq eval --plan` read; the `layer: bits` text form
(`allocation.txt`, as EvoPress/MatGPTQ write it) sits beside it. Loading checks the plan against the checkpoint
it will be applied to: unknown or missing layers and another checkpoint's hash are refused.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matq_compile.io_utils import atomic_path, write_json
from matq_compile.search.budget import Budget

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """Bits per quantized layer plus what they were chosen for."""

    layers: Mapping[str, int]
    checkpoint_hash: str
    levels: tuple[int, ...]
    solver: str
    budgets: tuple[Budget, ...] = ()
    predicted: Mapping[str, float] = field(default_factory=dict)  # proxy, avg_bits, bytes, latency_s ...
    target: str | None = None
    seed: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)  # m_bucket, proxy kind, ties, db hash, fitness ...

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a plan needs at least one layer")
        for name, bits in self.layers.items():
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
                raise ValueError(f"plan gives layer {name!r} bits {bits!r}; bits must be an integer in 2..8")
            if self.levels and bits not in self.levels:
                raise ValueError(f"plan gives layer {name!r} bits {bits}, not among its levels {self.levels}")

    def to_json(self) -> dict[str, Any]:
        return {"format_version": PLAN_FORMAT_VERSION, "layers": dict(self.layers),
                "checkpoint_hash": self.checkpoint_hash, "levels": list(self.levels), "solver": self.solver,
                "budgets": [b.to_json() for b in self.budgets], "predicted": dict(self.predicted),
                "target": self.target, "seed": self.seed, "meta": dict(self.meta)}

    def check(self, layer_names: Sequence[str], checkpoint_hash: str) -> Plan:
        """Refuse a plan for another checkpoint or one that does not cover exactly these layers."""
        if self.checkpoint_hash != checkpoint_hash:
            raise ValueError(f"plan was made for checkpoint {self.checkpoint_hash[:16]}…, not for this "
                             f"checkpoint {checkpoint_hash[:16]}…; re-run the search on it")
        known = set(layer_names)
        unknown = sorted(set(self.layers) - known)
        if unknown:
            raise ValueError(f"plan names {len(unknown)} layer(s) the checkpoint does not have: {unknown[:5]}")
        missing = [n for n in layer_names if n not in self.layers]
        if missing:
            raise ValueError(f"plan lacks bits for {len(missing)} quantized layer(s): {missing[:5]}")
        return self


def plan_text(layers: Mapping[str, int]) -> str:
    return "".join(f"{name}: {bits}\n" for name, bits in layers.items())


def parse_plan_text(text: str, source: str = "<text>") -> dict[str, int]:
    """The `layer: bits` form -> {layer: bits}; blank lines and '#' comments are skipped."""
    out: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, bits = line.rpartition(":")
        if not sep or not name.strip() or not bits.strip().isdigit():
            raise ValueError(f"{source}:{n}: expected 'layer: bits', got {line!r}")
        if name.strip() in out:
            raise ValueError(f"{source}:{n}: layer {name.strip()!r} appears twice")
        out[name.strip()] = int(bits)
    return out


def save_plan(path: str | os.PathLike, plan: Plan) -> tuple[Path, Path]:
    """Write `<path>` (JSON) and the text form beside it (suffix .txt), each atomically."""
    path = Path(path)
    write_json(path, plan.to_json())
    text_path = path.with_suffix(".txt")
    with atomic_path(text_path) as tmp:
        tmp.write_text(plan_text(plan.layers))
    return path, text_path


def plan_from_json(obj: Mapping[str, Any], source: str = "<json>") -> Plan:
    if obj.get("format_version") != PLAN_FORMAT_VERSION:
        raise ValueError(f"{source}: unknown plan format_version {obj.get('format_version')!r} "
                         f"(this version reads {PLAN_FORMAT_VERSION})")
    try:
        # bits pass through unconverted: int(4.7) would silently compile a 4.7 as 4; Plan refuses non-integers
        return Plan(layers={str(k): v for k, v in obj["layers"].items()},
                    checkpoint_hash=str(obj["checkpoint_hash"]), levels=tuple(_whole(b) for b in obj["levels"]),
                    solver=str(obj["solver"]), budgets=tuple(Budget.from_json(b) for b in obj.get("budgets", [])),
                    predicted={str(k): float(v) for k, v in obj.get("predicted", {}).items()},
                    target=obj.get("target"), seed=obj.get("seed"), meta=dict(obj.get("meta", {})))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{source}: malformed plan ({e!r})") from e


def _whole(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"plan levels must be integers, got {v!r}")  # noqa: TRY004 - the CLI reports ValueErrors
    return v


def load_plan(path: str | os.PathLike, layer_names: Sequence[str] | None = None,
              checkpoint_hash: str | None = None) -> Plan:
    """Read a JSON plan; with layer_names and checkpoint_hash given, refuse one that does not fit them."""
    from matq_compile.io_utils import read_json

    path = Path(path)
    plan = plan_from_json(read_json(path, "plan file"), str(path))
    if layer_names is not None or checkpoint_hash is not None:
        if layer_names is None or checkpoint_hash is None:
            raise ValueError("checking a plan needs both the checkpoint's layer names and its hash")
        plan.check(layer_names, checkpoint_hash)
    return plan
