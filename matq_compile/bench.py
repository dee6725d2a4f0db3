"""Timing tuned matq kernels into the latency table (search/latency.py, the one table type and format):
measure(keys, spec, db_dir), and cached_latency, which reads the table kept beside a database and measures only
what it lacks.

Kernels are built here and timed where remote.open_session says (this machine's CPU or GPU, or an RPC server on
any target), cache-cold (remote.py: flushed CPU caches, rotated GPU weights). On a CPU a kernel can be timed in
a chain (chain_executable): `chain` copies, each with its own weights, called back to back from one Relax
function after one flush, as a decode step calls the model's layers; the table's time is the chain's over
`chain`. The search prices plans on such tables (DECODE_CHAIN), and benchmarks/search_pareto.py re-measures its
plans through the same chain_executable. The table records the target, the TVM version, the kernels' identity
(kernels_hash: the database, and the int8 kernels' source), the chain length and the device that timed it; a
table made for another target or other kernels is refused.
"""
from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np

from matq_compile import layout, planes, tiles
from matq_compile._log import progress
from matq_compile.search.latency import LatencyTable, load_latency_table

log = logging.getLogger(__name__)

# what the int8 kernels are made of, relative to the package (tiles.py: the tile kernels' words and operand tables)
INT8_SOURCES = ("lower/int8_kernels.py", "lower/int8_decode.py", "lower/int8_intrin.py", "lower/int8_amx.py",
                "lower/int8_tiles.py", "tiles.py")
# copies of a kernel a new CPU latency table times back to back: a kernel alone after a flush pays its start-up
# (scales, first lines, the call) once per few microseconds of SmolLM2-sized work and streams its weights faster
# than a decode step's sequence of layers does, which priced 8-bit kernels near 4-bit ones
DECODE_CHAIN = 16


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
    package = Path(int8_kernels.__file__).parent.parent
    return hashlib.sha256(h.encode() + b"".join((package / name).read_bytes() for name in INT8_SOURCES)).hexdigest()


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
    measured (where `runner` says: any target, a GPU one on a local GPU or over RPC) and saved into it, with the
    table's chain length (a new table: DECODE_CHAIN on a CPU), so one table never mixes two protocols;
    measure_missing=False makes a missing kernel an error instead."""
    path = Path(path)
    table = load_table(path, spec, db_dir, act) if path.is_file() else None
    missing = keys if table is None else table.missing(keys)
    if missing:
        if not measure_missing:
            raise ValueError(f"latency table {path} lacks {len(missing)} kernels, e.g. {missing[0].name}; "
                             f"measure them with matq bench-kernels or drop --no-measure")
        chain = DECODE_CHAIN if table is None else table.chain
        log.info("measuring %d kernel latencies on %s (cold cache, chains of %d)", len(missing), spec.name, chain)
        fresh = measure(missing, spec, db_dir, runner=runner, rpc=rpc, act=act, chain=chain)
        table = fresh if table is None else table.merged(fresh)
        table.save(path)
        log.info("latency table saved to %s", path)
    return table


def random_args(key: layout.KernelKey, m: int, seed: int = 0, tiled: bool = False) -> list[np.ndarray]:
    """Realistic kernel inputs (X, P, S, Z, Y) for batch m: random parent codes sliced to key.bits; tiled: P, S, Z
    in the tile arrangement (the kernel a build runs for key reads them so: arranged())."""
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
    P, S, Z = (tiles.arrange(arr[n], n, key.bits) if tiled else arr[n] for n in "PSZ")
    return [x, P, S, Z, np.zeros(ys, yd)]


def arranged(key: layout.KernelKey, spec, act: str) -> bool:
    """Whether the build of `spec` in activation mode `act` keeps the slice of `key` in the tile arrangement
    (int8_intrin.tiled), so its kernel's inputs are tiled."""
    if act != "int8":
        return False
    from matq_compile.lower.int8_intrin import check_target, tiled

    return tiled(check_target(spec), key)


def traffic_bytes(key: layout.KernelKey, m: int) -> int:
    act = {"float32": 4, "float16": 2, "bfloat16": 2}[key.dtype]
    return key.weight_bytes() + m * (key.K + key.N) * act


def measure(keys: list[layout.KernelKey], spec, db_dir: str | Path, repeat: int = 50, fallback: bool = False,
            runner: str = "local", rpc=None, act: str = "float", built: dict | None = None,
            chain: int = 1) -> LatencyTable:
    """Median cold-cache latency of each (static-M) key, scheduled from db_dir, timed where `runner` says
    (remote.open_session: this machine's CPU or GPU, or an RPC server); the table names the device that timed it.

    fallback: kernels without records (or no database at all) get the target's default schedule; act "int8": the
    int8-activation kernels (hand-scheduled, no database). built: a dict the caller keeps across calls, so a kernel
    timed in several rounds is compiled once. chain > 1 (CPU only): each key timed as `chain` copies back to back
    (chain_executable), its latency the chain's over `chain`."""
    from matq_compile import remote
    from matq_compile._tvm import TVM_VERSION

    if repeat <= 0:
        raise ValueError(f"repeat must be positive, got {repeat}")
    if chain < 1:
        raise ValueError(f"chain must be at least 1, got {chain}")
    for key in keys:
        if key.m_bucket is None:
            raise ValueError(f"{key.name}: latency tables hold static-M kernels only")
    session = remote.open_session(spec, runner, rpc)
    if chain > 1 and session.gpu:
        raise ValueError("chains time CPU kernels; a GPU table rotates each kernel's weights instead (remote.py)")
    log.info("timing %d kernels on %s", len(keys), session.device_name)
    entries, stats = {}, {}
    for key in progress(keys, desc="bench"):
        cache_key = (key, act, str(db_dir), fallback, chain)
        executable = built.get(cache_key) if built is not None else None
        if executable is None:
            executable = (build_kernel(key, spec, db_dir, fallback, act) if chain == 1 else
                          chain_executable([key] * chain, spec, db_dir, key.m_bucket, act, fallback))
            if built is not None:
                built[cache_key] = executable
        if chain == 1:
            t = session.time(session.load(executable), "main",
                             random_args(key, key.m_bucket, tiled=arranged(key, spec, act)), repeat)
        else:
            t = session.time_vm(executable, "chain", chain_args([key] * chain, key.m_bucket, 0, spec, act),
                                repeat) / chain
        entries[key] = float(np.median(t))
        stats[key] = {"min_s": float(t.min()), "gbps": traffic_bytes(key, key.m_bucket) / entries[key] / 1e9}
        log.info("%s: %.1f us", key.name, entries[key] * 1e6)
    return LatencyTable(spec.name, TVM_VERSION, kernels_hash(db_dir, act), entries, stats, session.device_name,
                        chain)


def chain_executable(keys: list[layout.KernelKey], spec, db_dir: str | Path, m: int, act: str = "float",
                     fallback: bool = False):
    """VM executable of one function `chain(x..., P_i, S_i, Z_i ...)` that calls keys[i] on the i-th weights, in
    order, at batch m (one x per distinct K and dtype; its arguments are chain_args'): the tuned float kernels,
    or with act "int8" the kernel an int8 build calls for each key (kernel_func)."""
    from matq_compile._tvm import tvm
    from matq_compile.lower.kernels import arg_shapes
    from tvm import relax

    bb = relax.BlockBuilder()
    xs = {(k, d): relax.Var(f"x{k}_{d}", relax.TensorType((m, k), d)) for k, d in _activations(keys)}
    params = [[relax.Var(f"{part}{i}", relax.TensorType(shape, dtype))
               for part, (shape, dtype) in zip("PSZ", arg_shapes(key, m)[1:4])] for i, key in enumerate(keys)]
    with bb.function("chain", [*xs.values(), *(p for ps in params for p in ps)]):
        with bb.dataflow():
            funcs = {key: kernel_func(key, spec, act, key.name) for key in dict.fromkeys(keys)}
            gvs = {key: bb.add_func(func, key.name) for key, func in funcs.items()}
            outs = [bb.emit(relax.call_tir(gvs[key], [xs[key.K, key.dtype], *params[i]],
                                           out_ty=relax.TensorType((m, key.N), key.dtype)))
                    for i, key in enumerate(keys)]
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    target = spec.to_tvm()
    with target:
        return tvm.compile(scheduled(bb.get(), spec, db_dir, fallback), target=target)


def chain_args(keys: list[layout.KernelKey], m: int, seed: int = 0, spec=None, act: str = "float") -> list[np.ndarray]:
    """chain_executable's arguments: one activation per distinct K and dtype, then each key's own P, S, Z
    (random_args, a seed of its own, so no two layers share weights; tiled where the build of spec and act keeps
    them so)."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((m, k)).astype(d if d != "bfloat16" else "float32") for k, d in _activations(keys)]
    return xs + [a for i, key in enumerate(keys)
                 for a in random_args(key, m, seed + 1 + i, spec is not None and arranged(key, spec, act))[1:4]]


def _activations(keys: list[layout.KernelKey]) -> list[tuple[int, str]]:
    """The chain's activation arguments: each distinct (K, dtype), in a fixed order."""
    return sorted({(k.K, k.dtype) for k in keys})


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
    from matq_compile._tvm import tvm

    mod = scheduled(tvm.IRModule({"main": kernel_func(key, spec, act, "main")}), spec, db_dir, fallback)
    return tvm.compile(mod, target=spec.to_tvm())


def scheduled(mod, spec, db_dir: str | Path, fallback: bool = False):
    """`mod` with its tunable kernels scheduled from db_dir (tune.apply_database); kernels written scheduled (the
    int8 ones) pass as they are, and a module of only those needs no database. With fallback, a missing database
    means the target's default schedule for every tunable kernel."""
    from matq_compile import schedules
    from matq_compile._tvm import tirx, tvm
    from matq_compile.lower.kernels import KEY_ATTR
    from matq_compile.tune import TARGET_FILE, apply_database

    tunable = [gv for gv, f in mod.functions_items()
               if isinstance(f, tirx.PrimFunc) and f.attrs is not None and KEY_ATTR in f.attrs]
    if not tunable:
        return mod
    if fallback and not (Path(db_dir) / TARGET_FILE).exists():
        log.warning("no tuning database at %s; default schedule for %d kernels", db_dir, len(tunable))
        return tvm.IRModule({gv: schedules.default_schedule(f, spec) if gv in tunable else f
                             for gv, f in mod.functions_items()}, attrs=mod.attrs)
    return apply_database(mod, spec, db_dir, fallback)


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
