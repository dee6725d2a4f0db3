"""The latency table: median latency of tuned kernels per KernelKey, with where and from what it was measured.

One type and one file format for everything that times kernels (matq_compile.bench, `matq bench-kernels`) and
everything that prices them (the search). On disk (format_version 2):

    {"format_version": 2, "target": "llvm-znver3-2c", "tvm_version": "...", "db_hash": "<sha256 of the kernels>",
     "device": "AMD EPYC ..." | null, "chain": 16,
     "rows": [{"key": "matq_linear_n576_k576_b4_g64_m1_float32", "median_s": 2.3e-05, "min_s": ..., "gbps": ...}]}

chain: how many copies of each kernel, each with its own weights, were timed back to back per sample (1: each
kernel alone; absent in older files, which mean 1); a row's time is per kernel. Version-1 files (written before
the two table types were one: rows keyed by kernel name, or by N/K/group/m_bucket/bits) are still read.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from matq_compile.io_utils import FormatError, read_json, write_json
from matq_compile.layout import KernelKey

LATENCY_FORMAT_VERSION = 2
KIND = "latency table"


@dataclass(frozen=True)
class LatencyTable:
    """Median seconds per kernel (entries) and optional per-kernel statistics (min_s, gbps), with provenance:
    the target, the TVM version, the kernels' identity (db_hash: matq_compile.bench.kernels_hash), the device
    that timed them and the chain length they were timed in (matq_compile.bench.measure)."""

    target: str
    tvm_version: str
    db_hash: str
    entries: Mapping[KernelKey, float]
    stats: Mapping[KernelKey, Mapping[str, float]] = field(default_factory=dict)
    device: str | None = None
    chain: int = 1

    def latency(self, key: KernelKey) -> float:
        if key not in self.entries:
            raise KeyError(f"{key.name} is not in the latency table for {self.target}; measure it "
                           f"(matq bench-kernels)")
        return self.entries[key]

    def missing(self, keys: Iterable[KernelKey]) -> list[KernelKey]:
        return list(dict.fromkeys(k for k in keys if k not in self.entries))

    def merged(self, more: LatencyTable) -> LatencyTable:
        """This table plus `more`'s rows (which win), both from the same target and database, timed alike."""
        self.check_source(more.target, more.db_hash)
        if more.chain != self.chain:
            raise ValueError(f"cannot merge kernels timed in chains of {more.chain} into a table timed in chains "
                             f"of {self.chain}")
        return dataclasses.replace(self, entries={**self.entries, **more.entries},
                                   stats={**self.stats, **more.stats}, device=more.device or self.device)

    def check_source(self, target: str | None = None, db_hash: str | None = None) -> None:
        """Refuse a table measured on another target or of other kernels (another tuning database, or for the
        int8 kernels another version of their source: matq_compile.bench.kernels_hash)."""
        if target is not None and target != self.target:
            raise ValueError(f"latency table was measured on target {self.target!r}, not {target!r}")
        if db_hash is not None and db_hash != self.db_hash:
            raise ValueError(f"latency table times other kernels ({self.db_hash[:12]}…: another tuning database, or "
                             f"for --act int8 an older int8 kernel source) than the ones in use ({db_hash[:12]}…); "
                             f"re-measure it")

    def to_json(self) -> dict[str, Any]:
        rows = [{"key": k.name, "median_s": v, **self.stats.get(k, {})}
                for k, v in sorted(self.entries.items(), key=lambda kv: kv[0].name)]
        return {"format_version": LATENCY_FORMAT_VERSION, "target": self.target, "tvm_version": self.tvm_version,
                "db_hash": self.db_hash, "device": self.device, "chain": self.chain, "rows": rows}

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_json())


def save_latency_table(path: str | os.PathLike, table: LatencyTable) -> None:
    table.save(path)


def _row_key(row: Mapping[str, Any]) -> KernelKey:
    if "key" in row:
        return KernelKey.parse(str(row["key"]))
    return KernelKey(int(row["N"]), int(row["K"]), int(row["bits"]), int(row["group"]), int(row["m_bucket"]))


def load_latency_table(path: str | os.PathLike, target: str | None = None,
                       db_hash: str | None = None) -> LatencyTable:
    """Read a latency table (version 2, or 1); with target / db_hash, refuse one measured elsewhere."""
    obj = read_json(path, KIND)
    version = obj.get("format_version")
    if version not in (1, LATENCY_FORMAT_VERSION):
        raise FormatError(f"{path}: {KIND} format_version {version!r} is not one this build reads "
                          f"(1, {LATENCY_FORMAT_VERSION})")
    entries: dict[KernelKey, float] = {}
    stats: dict[KernelKey, dict[str, float]] = {}
    try:
        for row in obj["rows"]:
            key, t = _row_key(row), float(row["median_s"])
            if not (t > 0 and math.isfinite(t)):
                raise FormatError(f"{path}: non-positive latency {t} for {key.name}")
            entries[key] = t
            extra = {s: float(row[s]) for s in ("min_s", "gbps") if row.get(s) is not None}
            if extra:
                stats[key] = extra
        chain = obj.get("chain", 1)
        if not isinstance(chain, int) or isinstance(chain, bool) or chain < 1:
            raise FormatError(f"{path}: chain must be a positive integer, got {chain!r}")
        table = LatencyTable(str(obj["target"]), str(obj["tvm_version"]), str(obj["db_hash"]), entries, stats,
                             obj.get("device"), chain)
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path} is not a valid {KIND}: {type(e).__name__}: {e}") from None
    table.check_source(target, db_hash)
    return table
