"""Timing tuned matq kernels into the latency table (search/latency.py, the one table type and format):
measure(keys, spec, db_dir), and cached_latency, which reads the table kept beside a database and measures only
what it lacks.

Kernels are built here and timed where remote.open_session says (this machine's CPU or GPU, or an RPC server on
any target), cache-cold (remote.py: flushed CPU caches, rotated GPU weights). The table records the target, the
TVM version, the kernels' identity (kernels_hash: the database, and the int8 kernels' source) and the device that
timed it; a table made for another target or other kernels is refused.
"""
from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np

from matq_compile import layout, planes
from matq_compile._log import progress
from matq_compile.search.latency import LatencyTable, load_latency_table

log = logging.getLogger(__name__)

# lower/: what the int8 kernels are made of
INT8_SOURCES = ("int8_kernels.py", "int8_decode.py", "int8_intrin.py", "int8_amx.py")


def kernels_hash(db_dir: str | Path, act: str = "float") -> str:
    """The identity of the kernels a latency table times (its db_hash): the tuning database's hash for the tuned
    float kernels; for act "int8" also the source of the hand-scheduled int8 kernels, which take no records, so
    a change to them would otherwise leave a table of the old kernels pricing the new ones."""
    import hashlib

    from matq_compile.lower import int8_kernels
    from matq_compile.tune import database_hash

    h = database_hash(db_dir)
    if act == "float":
        return h
    lower = Path(int8_kernels.__file__).parent
    return hashlib.sha256(h.encode() + b"".join((lower / name).read_bytes() for name in INT8_SOURCES)).hexdigest()


def load_table(path: str | Path, spec, db_dir: str | Path | None = None, act: str = "float") -> LatencyTable:
    """The latency table at `path`; refuse another target or (given db_dir) other kernels (kernels_hash)."""
    return load_latency_table(path, spec.name, None if db_dir is None else kernels_hash(db_dir, act))


def table_path(db_dir: str | Path, m_bucket: int, act: str = "float") -> Path:
    """Where the latency table of one M bucket (and activation mode) is kept: beside the tuning database it was
    measured from; the int8-activation kernels' table is a file of its own (same kernel keys)."""
    return Path(db_dir) / (f"latency_m{m_bucket}.json" if act == "float" else f"latency_m{m_bucket}_{act}.json")


def cached_latency(keys: list[layout.KernelKey], spec, db_dir: str | Path, path: str | Path,
                   measure_missing: bool = True, runner: str = "local", rpc=None, act: str = "float") -> LatencyTable:
    """The table at `path` (refused if from another target or database), with the kernels of `keys` it lacks
    measured (where `runner` says: any target, a GPU one on a local GPU or over RPC) and saved into it;
    measure_missing=False makes a missing kernel an error instead."""
    path = Path(path)
    table = load_table(path, spec, db_dir, act) if path.is_file() else None
    missing = keys if table is None else table.missing(keys)
    if missing:
        if not measure_missing:
            raise ValueError(f"latency table {path} lacks {len(missing)} kernels, e.g. {missing[0].name}; "
                             f"measure them with matq bench-kernels or drop --no-measure")
        log.info("measuring %d kernel latencies on %s (cold cache)", len(missing), spec.name)
        fresh = measure(missing, spec, db_dir, runner=runner, rpc=rpc, act=act)
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
    rule = planes.parse_tag(key.nested)[0] if key.nested else "round"
    arr = layout.pack_slice(q, s, None, key.bits, rule, key.group)
    if key.nested:  # a switchable build's kernel reads its slice from the parent's nested planes
        arr["P"] = planes.pack(q, key.nested)
    (xs, xd), *_, (ys, yd) = arg_shapes(key, m)
    x = rng.standard_normal(xs).astype(xd if xd != "bfloat16" else "float32")
    return [x, arr["P"], arr["S"], arr["Z"], np.zeros(ys, yd)]


def traffic_bytes(key: layout.KernelKey, m: int) -> int:
    act = {"float32": 4, "float16": 2, "bfloat16": 2}[key.dtype]
    return key.weight_bytes() + m * (key.K + key.N) * act


def measure(keys: list[layout.KernelKey], spec, db_dir: str | Path, repeat: int = 50, fallback: bool = False,
            runner: str = "local", rpc=None, act: str = "float", built: dict | None = None) -> LatencyTable:
    """Median cold-cache latency of each (static-M) key, scheduled from db_dir, timed where `runner` says
    (remote.open_session: this machine's CPU or GPU, or an RPC server); the table names the device that timed it.

    fallback: kernels without records (or no database at all) get the target's default schedule; act "int8": the
    int8-activation kernels (hand-scheduled, no database). built: a dict the caller keeps across calls, so a kernel
    timed in several rounds is compiled once."""
    from matq_compile import remote
    from matq_compile._tvm import TVM_VERSION

    if repeat <= 0:
        raise ValueError(f"repeat must be positive, got {repeat}")
    for key in keys:
        if key.m_bucket is None:
            raise ValueError(f"{key.name}: latency tables hold static-M kernels only")
    session = remote.open_session(spec, runner, rpc)
    log.info("timing %d kernels on %s", len(keys), session.device_name)
    entries, stats = {}, {}
    for key in progress(keys, desc="bench"):
        cache_key = (key, act, str(db_dir), fallback)
        executable = built.get(cache_key) if built is not None else None
        if executable is None:
            executable = build_kernel(key, spec, db_dir, fallback, act)
            if built is not None:
                built[cache_key] = executable
        mod = session.load(executable)
        t = session.time(mod, "main", random_args(key, key.m_bucket), repeat)
        entries[key] = float(np.median(t))
        stats[key] = {"min_s": float(t.min()), "gbps": traffic_bytes(key, key.m_bucket) / entries[key] / 1e9}
        log.info("%s: %.1f us", key.name, entries[key] * 1e6)
    return LatencyTable(spec.name, TVM_VERSION, kernels_hash(db_dir, act), entries, stats, session.device_name)


def kernel_func(key: layout.KernelKey, spec, act: str = "float", name: str | None = None):
    """The PrimFunc a build in activation mode `act` runs for `key` (LowerMatqLinear's choice), with global_symbol
    `name`: the int8-activation kernel (already scheduled) where act is "int8" and the key has an int8 form, else
    the unscheduled float kernel, which an int8 build keeps and so is priced so. A target without a byte dot
    product is refused for act "int8", as compile_model refuses it."""
    from matq_compile.lower.kernels import linear_func

    if act == "int8":
        from matq_compile.lower import int8_kernels
        from matq_compile.lower.int8_intrin import check_target, kernel_isa

        isa = check_target(spec)
        if int8_kernels.supports(key):
            return int8_kernels.int8_linear_func(key, kernel_isa(isa, key), name)
    return linear_func(key, name, gpu=spec.is_gpu)


def build_kernel(key: layout.KernelKey, spec, db_dir: str | Path, fallback: bool = False, act: str = "float"):
    """The compiled kernel of `key` (symbol "main") for `spec`, scheduled from db_dir; with fallback, a missing
    record or a missing database means the target's default schedule. act "int8": the int8-activation kernel."""
    from matq_compile import schedules
    from matq_compile._tvm import tvm
    from matq_compile.lower.kernels import HAND_ATTR
    from matq_compile.tune import TARGET_FILE, apply_database

    func = kernel_func(key, spec, act, "main")
    if func.attrs is not None and HAND_ATTR in func.attrs:  # the int8 kernel: scheduled where it is written
        return tvm.compile(tvm.IRModule({"main": func}), target=spec.to_tvm())
    if fallback and not (Path(db_dir) / TARGET_FILE).exists():
        log.warning("%s: no tuning database at %s; default schedule", key.name, db_dir)
        mod = tvm.IRModule({"main": schedules.default_schedule(func, spec)})
    else:
        mod = apply_database(func, spec, db_dir, fallback)
    return tvm.compile(mod, target=spec.to_tvm())


def in_own_process(script: str | Path, job: dict) -> dict:
    """Run one measurement as `python SCRIPT --worker JOB` and return the JSON of its last stdout line: each engine
    times in a process of its own, as its users run it (a TVM thread pool, torch or OpenMP threads beside it would
    distort it), and the benchmarks' workers share this one protocol."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(script), "--worker", json.dumps(job)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    """The machine a benchmark ran on: CPU model, the SIMD flags that matter for these kernels, L3 size, cores,
    TVM threads, platform and Python."""
    import os

    from matq_compile._threads import configure_tvm_threads, usable_cores

    flags = set(_cpuinfo("flags").split())
    simd = sorted(f for f in flags if f.startswith(("avx", "fma", "amx")) or f in ("f16c", "vnni"))
    return {"platform": platform.platform(), "processor": cpu_model(), "simd_flags": simd, "l3": _l3_text() or None,
            "l3_bytes": l3_bytes(),
            "cores": usable_cores(), "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "tvm_threads": configure_tvm_threads()}


def _l3_text() -> str:
    """cpu0's L3 size as sysfs writes it ("32768K"), "" where the kernel does not say."""
    return next((p.read_text().strip() for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index3/size")), "")


def l3_bytes() -> int | None:
    """cpu0's L3 size in bytes, None where the kernel does not say."""
    return cache_size_bytes(_l3_text())


def cache_size_bytes(text: str) -> int | None:
    """A sysfs cache size ("32768K", "480M", "1G", or plain bytes) in bytes; None if it is not one."""
    text = text.strip()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text.isdigit():
        return int(text)
    if len(text) > 1 and text[:-1].isdigit() and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return None


def _cpuinfo(field: str) -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(field)), "")


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor()
