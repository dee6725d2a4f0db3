"""Timing tuned matq kernels into the latency table (search/latency.py, the one table type and format):
measure(keys, spec, db_dir), and cached_latency, which reads the table kept beside a database and measures only
what it lacks.

Timing is cache-cold on CPU: the weights (every argument but X) are flushed from the caches before each call
(TVM's cache_flush_cpu_non_first_arg, number=1), so a 576x576 layer that fits in L3 is not timed from L3.
The table records the target, the TVM version, the database hash and the CPU; a table made for another target or
from another database is refused.
"""
from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np

from matq_compile import layout
from matq_compile._log import progress
from matq_compile.search.latency import LatencyTable, load_latency_table

log = logging.getLogger(__name__)

def load_table(path: str | Path, spec, db_dir: str | Path | None = None) -> LatencyTable:
    """The latency table at `path`; refuse another target or (given db_dir) another database."""
    from matq_compile.tune import database_hash

    return load_latency_table(path, spec.name, None if db_dir is None else database_hash(db_dir))


def table_path(db_dir: str | Path, m_bucket: int) -> Path:
    """Where the latency table of one M bucket is kept: beside the tuning database it was measured from."""
    return Path(db_dir) / f"latency_m{m_bucket}.json"


def cached_latency(keys: list[layout.KernelKey], spec, db_dir: str | Path, path: str | Path,
                   measure_missing: bool = True) -> LatencyTable:
    """The table at `path` (refused if from another target or database), with the kernels of `keys` it lacks
    measured and saved into it; measure_missing=False makes a missing kernel an error instead."""
    path = Path(path)
    table = load_table(path, spec, db_dir) if path.is_file() else None
    missing = keys if table is None else table.missing(keys)
    if missing:
        if not measure_missing:
            raise ValueError(f"latency table {path} lacks {len(missing)} kernels, e.g. {missing[0].name}; "
                             f"measure them with matq bench-kernels or drop --no-measure")
        log.info("measuring %d kernel latencies on %s (cold cache)", len(missing), spec.name)
        fresh = measure(missing, spec, db_dir)
        table = fresh if table is None else table.merged(fresh)
        table.save(path)
        log.info("latency table saved to %s", path)
    return table


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
    dev, entries, stats = tvm.cpu(), {}, {}
    for key in progress(keys, desc="bench"):
        if key.m_bucket is None:
            raise ValueError(f"{key.name}: latency tables hold static-M kernels only")
        ex = tvm.compile(apply_database(linear_func(key, "main"), spec, db_dir, fallback), target=spec.to_tvm())
        t = time_kernel(ex, "main", random_args(key, key.m_bucket), dev, repeat)
        entries[key] = float(np.median(t))
        stats[key] = {"min_s": float(t.min()), "gbps": traffic_bytes(key, key.m_bucket) / entries[key] / 1e9}
        log.info("%s: %.1f us", key.name, entries[key] * 1e6)
    return LatencyTable(spec.name, TVM_VERSION, database_hash(db_dir), entries, stats, _cpu_model())


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
