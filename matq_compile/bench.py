"""Latency tables of tuned matq kernels: measure(keys, spec, db_dir) -> LatencyTable (JSON on disk).

Timing is cache-cold on CPU: the weights (every argument but X) are flushed from the caches before each call
(TVM's cache_flush_cpu_non_first_arg, number=1), so a 576x576 layer that fits in L3 is not timed from L3.
The file header records the target, the TVM version and the database hash; load_table refuses a table made for
another target or from another database.
"""
from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from matq_compile import layout
from matq_compile._log import progress
from matq_compile.io_utils import FormatError, read_json, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Row:
    key: str  # KernelKey.name
    median_s: float
    min_s: float
    gbps: float  # weight + activation + output bytes / median


@dataclass(frozen=True)
class LatencyTable:
    target: str
    tvm_version: str
    db_hash: str
    rows: tuple[Row, ...] = field(default_factory=tuple)

    def latency(self, key: layout.KernelKey) -> float:
        for row in self.rows:
            if row.key == key.name:
                return row.median_s
        raise KeyError(f"{key.name} is not in the latency table for {self.target}; measure it (matq bench-kernels)")

    def save(self, path: str | Path) -> None:
        write_json(path, {"format_version": FORMAT_VERSION, "target": self.target, "tvm_version": self.tvm_version,
                          "db_hash": self.db_hash, "rows": [asdict(r) for r in self.rows]})


def load_table(path: str | Path, spec, db_dir: str | Path | None = None) -> LatencyTable:
    """Read a table; refuse another format, another target, or (given db_dir) another database."""
    from matq_compile.tune import database_hash

    data = read_json(path, "latency table", FORMAT_VERSION)
    if data.get("target") != spec.name:
        raise ValueError(f"{path} was measured on target {data['target']!r}, not {spec.name!r}")
    if db_dir is not None and data["db_hash"] != database_hash(db_dir):
        raise ValueError(f"{path} was measured with another tuning database than {db_dir} (hash differs)")
    try:
        rows = tuple(Row(**r) for r in data["rows"])
        return LatencyTable(data["target"], data["tvm_version"], data["db_hash"], rows)
    except (KeyError, TypeError) as e:  # a missing field, or rows that are not {field: value} objects
        raise FormatError(f"{path} is not a valid latency table ({type(e).__name__}: {e})") from None


def random_args(key: layout.KernelKey, m: int, seed: int = 0) -> list[np.ndarray]:
    """Realistic kernel inputs (X, P, S, Z, Y) for batch m: random parent codes sliced to key.bits."""
    from matq_compile.lower.kernels import arg_shapes

    rng = np.random.default_rng(seed)
    q = rng.integers(0, 256, (key.N, key.K), dtype=np.uint8)
    s = (rng.random((key.N, key.n_groups)) * 0.01 + 1e-3).astype(np.float16)
    arr = layout.pack_slice(q, s, None, key.bits, "round", key.group)
    (xs, xd), *_, (ys, yd) = arg_shapes(key, m)
    x = rng.standard_normal(xs).astype(xd if xd != "bfloat16" else "float32")
    return [x, arr["P"], arr["S"], arr["Z"], np.zeros(ys, yd)]


def time_kernel(ex, name: str, args_np: list[np.ndarray], dev, repeat: int = 50, cold: bool = True) -> np.ndarray:
    """Seconds per call (repeat samples). cold=True flushes every argument but X from the CPU caches first."""
    from matq_compile._tvm import tensor

    args = [tensor(a, dev) for a in args_np]
    ex[name](*args)  # warm-up: first-call costs are not kernel time
    kw = {"f_preproc": "cache_flush_cpu_non_first_arg"} if cold and dev.dlpack_device_type() == 1 else {}  # kDLCPU
    timer = ex.mod.time_evaluator(name, dev, number=1, repeat=repeat, min_repeat_ms=0, **kw)
    return np.asarray(timer(*args).results)


def traffic_bytes(key: layout.KernelKey, m: int) -> int:
    act = {"float32": 4, "float16": 2, "bfloat16": 2}[key.dtype]
    return key.weight_bytes() + m * (key.K + key.N) * act


def measure(keys: list[layout.KernelKey], spec, db_dir: str | Path, repeat: int = 50,
            fallback: bool = False) -> LatencyTable:
    """Median cold-cache latency of each (static-M) key, scheduled from db_dir."""
    from matq_compile._tvm import TVM_VERSION, tvm
    from matq_compile.lower.kernels import linear_func
    from matq_compile.tune import apply_database, database_hash

    if spec.is_gpu:
        raise ValueError("measure() times on this machine; GPU tables need the GPU host (not implemented here)")
    dev, rows = tvm.cpu(), []
    for key in progress(keys, desc="bench"):
        if key.m_bucket is None:
            raise ValueError(f"{key.name}: latency tables hold static-M kernels only")
        ex = tvm.compile(apply_database(linear_func(key, "main"), spec, db_dir, fallback), target=spec.to_tvm())
        t = time_kernel(ex, "main", random_args(key, key.m_bucket), dev, repeat)
        med = float(np.median(t))
        rows.append(Row(key.name, med, float(t.min()), traffic_bytes(key, key.m_bucket) / med / 1e9))
        log.info("%s: %.1f us", key.name, med * 1e6)
    return LatencyTable(spec.name, TVM_VERSION, database_hash(db_dir), tuple(rows))


def machine_info() -> dict:
    from matq_compile._threads import configure_tvm_threads, usable_cores

    return {"platform": platform.platform(), "processor": _cpu_model(), "cores": usable_cores(),
            "tvm_threads": configure_tvm_threads()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
