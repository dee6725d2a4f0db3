"""MetaSchedule tuning of matq kernels into one JSONDatabase per target, and replay of its records.

Reuse across slices: the database uses module_equality="anchor-block". The anchor ("gemm") block of a kernel is the
same for every bits r (the r-specific unpack sits in the "dequant" block that every schedule inlines), so the
records of a shape tuned once at r = 4 are found for r = 2..8 and their trace is replayed onto that r's own
function (never query_schedule/compile_tir: under anchor-block they return the *stored* r = 4 module).

Database directory layout: database_workload.json, database_tuning_record.json (MetaSchedule's), target.json
(ours: which target the records belong to; queries ignore the target, so a foreign database is refused here).
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from matq_compile import layout
from matq_compile.db_records import check_rows
from matq_compile.io_utils import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

DB_FILES = ("database_workload.json", "database_tuning_record.json")
TARGET_FILE = "target.json"
EQUALITY = "anchor-block"


@dataclass(frozen=True)
class RPCSettings:
    """Where candidates are measured remotely: a TVM RPC tracker and the key its servers registered with."""

    tracker_host: str = "127.0.0.1"
    tracker_port: int = 9190
    tracker_key: str = "local"
    session_timeout_sec: int = 120


def _target_record(spec) -> dict:
    return {"name": spec.name, "target": spec.target_dict(), "host": spec.host}


def check_database(db_dir: str | Path, spec, create: bool = False) -> Path:
    """Validate db_dir for `spec`: JSON-lines files parse, target.json matches. create=True starts an empty one."""
    db_dir = Path(db_dir)
    tfile = db_dir / TARGET_FILE
    if not tfile.exists():
        if any((db_dir / f).exists() for f in DB_FILES) or not create:
            what = "has no target.json" if db_dir.exists() else "does not exist"
            raise FileNotFoundError(f"tuning database {db_dir} {what}; tune into it first (matq tune)")
        write_json(tfile, _target_record(spec))
        tfile.chmod(0o644)  # ships with the package: readable like the record files
    stored = read_json(tfile, "tuning database target record")
    if stored.get("name") != spec.name or stored.get("target") != spec.target_dict():
        raise ValueError(f"tuning database {db_dir} belongs to target {stored.get('name')!r} "
                         f"({stored.get('target')}), not {spec.name!r}; use one database per target")
    n_workloads = 0
    for name in DB_FILES:
        path = db_dir / name
        if not path.exists():
            continue
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                row = json.loads(line) if line.strip() else []
            except json.JSONDecodeError as e:
                raise ValueError(f"corrupt tuning database {path} line {n}: {e}") from e
            if not isinstance(row, list):
                raise ValueError(f"corrupt tuning database {path} line {n}: expected a JSON list")
            if line.strip():
                rows.append((n, row))
        check_rows(path, rows, n_workloads)  # records point into the workloads (DB_FILES lists those first)
        n_workloads = len(rows)
    return db_dir


def open_database(db_dir: str | Path, spec, create: bool = False):
    """The anchor-block JSONDatabase of `spec` in db_dir (validated first)."""
    from matq_compile._tvm import ms

    db_dir = check_database(db_dir, spec, create)
    return ms.database.JSONDatabase(work_dir=str(db_dir), module_equality=EQUALITY)


def database_hash(db_dir: str | Path) -> str:
    """sha256 over the record files (identifies the database a latency table or build came from)."""
    import hashlib

    h = hashlib.sha256()
    for name in DB_FILES + (TARGET_FILE,):
        p = Path(db_dir) / name
        h.update(name.encode() + (sha256_file(p).encode() if p.exists() else b"-"))
    return h.hexdigest()


def tuning_keys(keys: list[layout.KernelKey], at_bits: int | None = 4) -> list[layout.KernelKey]:
    """The distinct tasks: one per (N, K, group, m_bucket, dtype) at bits 4 (at_bits=None: each key's own bits,
    a dedicated tune); dynamic-M keys are not tunable."""
    out = {(k.with_bits(at_bits) if at_bits else k): None for k in keys if k.m_bucket is not None}
    return list(out)


def make_runner(spec, runner: str = "local", rpc: RPCSettings | None = None):
    """LocalRunner or RPCRunner with cold-cache timing on CPU (flush before every repeat, number=1)."""
    from matq_compile._tvm import ms

    cpu = not spec.is_gpu
    cfg = ms.runner.EvaluatorConfig(number=1 if cpu else 10, repeat=10 if cpu else 3,
                                    min_repeat_ms=0 if cpu else 20, enable_cpu_cache_flush=cpu)
    if runner == "local":
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=cfg)
    if runner == "rpc":
        rpc = rpc or RPCSettings()
        conf = ms.runner.RPCConfig(tracker_host=rpc.tracker_host, tracker_port=rpc.tracker_port,
                                   tracker_key=rpc.tracker_key, session_timeout_sec=rpc.session_timeout_sec)
        return ms.runner.RPCRunner(rpc_config=conf, evaluator_config=cfg, max_workers=1)
    raise ValueError(f"runner must be 'local' or 'rpc', got {runner!r}")


def records_for(db, func) -> int:
    """How many measured records the database holds for func's workload (anchor-block)."""
    from matq_compile._tvm import tvm

    mod = tvm.IRModule({"main": func})
    if not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 1 << 20))


def make_builder(kind: str = "inprocess"):
    """"inprocess" (default): build candidates in this process. "local": LocalBuilder(timeout_sec=120).

    LocalBuilder restarts its popen workers for every batch and each worker imports tvm.s_tir.tensor_intrin
    (~16 s idle); on this shared 2-core box that start-up alone passed the 120 s timeout (2 of 3 builds of a
    64x128 kernel failed), while an in-process build of one candidate takes < 1 s. Our spaces use no tensor
    intrinsics, so nothing needs that import.
    """
    from matq_compile._tvm import ms

    if kind == "local":
        return ms.builder.LocalBuilder(timeout_sec=120)
    if kind != "inprocess":
        raise ValueError(f"builder must be 'inprocess' or 'local', got {kind!r}")
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import local_builder as lb

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            from tvm.driver import build as tvm_build
            from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

            out = []
            for bi in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(bi.mod)
                    out.append(ms.builder.BuilderResult(lb.default_export(tvm_build(mod, target=bi.target)), None))
                except Exception as e:  # noqa: BLE001 - a failed candidate is a result, not a crash
                    out.append(ms.builder.BuilderResult(None, f"InProcessBuilder: {e}"))
            return out

    return InProcessBuilder()


def tune(keys: list[layout.KernelKey], spec, db_dir: str | Path, trials: int, runner: str = "local",
         rpc: RPCSettings | None = None, seed: int = 0, trials_per_iter: int = 16,
         builder: str = "inprocess", at_bits: int | None = 4) -> dict[str, int]:
    """Tune every distinct shape of `keys` at r = 4 up to `trials` records each; resumable (counts stored records).

    All tasks go into one MetaSchedule run (one runner pool, round-robin). Returns {task name: trials run now};
    every bits of a tuned shape then compiles from the database with zero new trials.
    """
    from matq_compile import schedules
    from matq_compile._tvm import ms, tvm
    from matq_compile.lower.kernels import linear_func

    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}")
    db = open_database(db_dir, spec, create=True)
    todo = {}
    for key in tuning_keys(keys, at_bits):
        func = linear_func(key, gpu=spec.is_gpu)
        todo[key.name] = (func, trials - records_for(db, func))
    run = {name: n for name, (_, n) in todo.items() if n > 0}
    for name in set(todo) - set(run):
        log.info("%s: %d records already, skipped", name, trials)
    if not run:
        return {name: 0 for name in todo}
    log.info("tuning %d task(s) on %s: %s", len(run), spec.name, run)
    mod = tvm.IRModule({name: todo[name][0] for name in run})
    with _unnamed_handlers_detached(logging.getLogger(ms.__name__)):
        ms.tune_tir(mod, spec.to_tvm(), work_dir=str(Path(db_dir) / "logs"), max_trials_global=sum(run.values()),
                    max_trials_per_task=max(run.values()),
                    num_trials_per_iter=min(trials_per_iter, max(run.values())),
                    builder=make_builder(builder), runner=make_runner(spec, runner, rpc), database=db,
                    cost_model="xgb", task_scheduler="round-robin", seed=seed, module_equality=EQUALITY,
                    space=schedules.space(spec), strategy=schedules.strategy(spec))
    return {name: run.get(name, 0) for name in todo}


@contextlib.contextmanager
def _unnamed_handlers_detached(logger: logging.Logger) -> Iterator[None]:
    """MetaSchedule rebuilds its logging config from `handler.get_name()` of its logger's handlers and crashes on a
    handler without a name (e.g. pytest >= 9.2 attaches its capture handler to every non-propagating logger)."""
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for h in unnamed:
        logger.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            logger.addHandler(h)


def _replay(db, func, query_func, target):
    """func scheduled with the best record of query_func's workload, or None on a miss / failed replay."""
    from matq_compile._tvm import Schedule, schedule_using_anchor_trace, tvm

    rec = db.query_tuning_record(tvm.IRModule({"main": query_func}), target, "main")
    if rec is None:
        return None
    sch = Schedule(tvm.IRModule({"main": func}))
    try:
        schedule_using_anchor_trace(sch, rec.trace, target)
    except Exception as e:  # noqa: BLE001 - a trace that does not fit this loop nest (TVM error types vary)
        log.debug("trace replay failed: %s", e)
        return None
    return sch.mod["main"]


def schedule_kernel(db, func, key: layout.KernelKey, spec):
    """Tuned schedule of one kernel: its own bucket's record; a dynamic-M kernel replays the largest bucket's."""
    from matq_compile.lower.kernels import linear_func

    target = spec.to_tvm()
    if key.m_bucket is not None:
        return _replay(db, func, func, target)
    for m in sorted(layout.M_BUCKETS, reverse=True):
        sched = _replay(db, func, linear_func(key.with_m(m), gpu=spec.is_gpu), target)
        if sched is not None:
            return sched
    return None


def apply_database(mod_or_func, spec, db_dir: str | Path, fallback: bool = False):
    """IRModule with every matq kernel (PrimFunc carrying attr "matq.kernel_key") scheduled from db_dir.

    A kernel without a usable record raises ValueError naming it, unless fallback=True: then the target's
    default schedule (schedules.default_schedule) is used and a warning is logged. Other functions pass through.
    """
    from matq_compile import schedules
    from matq_compile._tvm import tirx, tvm
    from matq_compile.lower.kernels import KEY_ATTR

    mod = mod_or_func if isinstance(mod_or_func, tvm.IRModule) else tvm.IRModule({"main": mod_or_func})
    db = open_database(db_dir, spec)
    out, missing = {}, []
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None or KEY_ATTR not in func.attrs:
            out[gv] = func
            continue
        key = layout.KernelKey.parse(str(func.attrs[KEY_ATTR]))
        sched = schedule_kernel(db, func, key, spec)
        if sched is None and fallback:
            log.warning("%s: no tuning record in %s; default schedule (slow)", key.name, db_dir)
            sched = schedules.default_schedule(func, spec)
        if sched is None:
            missing.append(key.name)
        out[gv] = sched
    if missing:
        raise ValueError(f"no tuning records in {db_dir} for {', '.join(missing)}; run `matq tune` for these "
                         f"shapes or pass fallback=True (--allow-untuned)")
    return tvm.IRModule(out, attrs=mod.attrs)
