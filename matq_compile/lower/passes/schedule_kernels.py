"""ScheduleKernels: schedule every matq bit-slice kernel from the target's tuned database, then seal all
hand-scheduled kernels against later fusion and default scheduling.

The database replay is `matq_compile.tune.apply_database` (trace replay onto each kernel's own function;
a kernel without records is a ValueError naming it unless `allow_untuned`, which logs and uses the default rule).
Sealing sets `op_pattern = kOpaque` (FuseOps must not merge a scheduled kernel into a new, unscheduled fused
function) and `tirx.is_scheduled` (dlight on CUDA leaves it alone) on the matq kernels and on every kernel marked
hand-scheduled where it was written (lower/kernels.hand_scheduled: the Llama kernels, the dense head): kernels are
recognised by their attributes, never by name.
"""
from __future__ import annotations

import logging
from pathlib import Path

from matq_compile._tvm import tirx, tvm
from matq_compile.lower.kernels import HAND_ATTR, KEY_ATTR

log = logging.getLogger(__name__)

OPAQUE = 8  # relax OpPatternKind::kOpaque


def _sealed(func: tirx.PrimFunc) -> tirx.PrimFunc:
    return func.with_attr("op_pattern", OPAQUE).with_attr("tirx.is_scheduled", True)


def schedule_kernels(spec, db_dir: str | Path | None, allow_untuned: bool = False) -> tvm.transform.Pass:
    """db_dir None: no database at all (every kernel untuned) - allowed only with allow_untuned."""
    from matq_compile import schedules, tune

    @tvm.transform.module_pass(opt_level=0, name="ScheduleKernels")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if db_dir is not None:
            mod = tune.apply_database(mod, spec, db_dir, fallback=allow_untuned)
        elif allow_untuned:
            log.warning("no tuning database for %s: every matq kernel uses the default schedule (slow)", spec.name)
            mod = tvm.IRModule({gv: (schedules.default_schedule(f, spec) if _is_matq(f) else f)
                                for gv, f in mod.functions_items()}, attrs=mod.attrs)
        else:
            raise ValueError(f"no tuning database for target {spec.name}; run `matq tune --target {spec.name}` "
                             f"or pass --allow-untuned")
        out = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and (_is_matq(func) or _has(func, HAND_ATTR)):
                func = _sealed(func)
            out[gv] = func
        return tvm.IRModule(out, attrs=mod.attrs)

    return _pass


def _has(func: tirx.PrimFunc, attr: str) -> bool:
    return func.attrs is not None and attr in func.attrs


def _is_matq(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and _has(func, KEY_ATTR)
