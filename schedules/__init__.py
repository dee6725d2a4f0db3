"""Schedules per target: the MetaSchedule search space, and untuned default schedules (rules, first match wins).

    space(spec)                  MetaSchedule space: llvm -> cpu_gemv's rule with sampled knobs; CUDA
                                 sch_rules="cuda" (no tensor-core sketches: they fail to build, tvm notes §6)
    default_rules(spec)          ordered rules for untuned kernels (fallback / dynamic M)
    default_schedule(func, spec) the first rule that applies -> scheduled PrimFunc
    db_dir(spec)                 the committed database directory of a target: schedules/db/<spec.name>/
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from matq_compile.schedules import cpu_gemv, gpu_dlight

Rule = Callable[..., object]


def db_dir(spec) -> Path:
    """Committed, read-only tuning database of `spec` (may not exist for targets never tuned)."""
    return Path(str(resources.files(__name__).joinpath("db", spec.name)))


def space(spec):
    from matq_compile._tvm import ms

    if spec.is_gpu:
        return ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda", mutator_probs="cuda")
    # Our own rule with sampled knobs: the llvm default space builds unrolled candidates of the inlined unpack
    # for minutes each (4 of 8 builds hit the 120 s builder timeout on this 2-core box) and found nothing faster.
    return ms.space_generator.ScheduleFn(cpu_gemv.space_fn, sch_rules=[], postprocs=[],
                                           mutator_probs=cpu_gemv.mutators())


def strategy(spec) -> str:
    """Search strategy: evolutionary (XGB-guided) on CUDA's large space; random trace replay on the small llvm
    rule space, where the evolutionary search stopped after 1-3 distinct candidates per task (measured: 12 trials
    for 12 tasks with a 16-trial budget), while replay-trace spends the whole budget."""
    return "evolutionary" if spec.is_gpu else "replay-trace"


def default_rules(spec) -> tuple:
    return gpu_dlight.rules() if spec.is_gpu else (cpu_gemv.apply,)


def default_schedule(func, spec):
    """Untuned but vectorised/bound schedule of a matq kernel for `spec`; raises ValueError if no rule applies."""
    if spec.is_gpu:
        return gpu_dlight.apply(func, spec)
    sched = cpu_gemv.apply(func, spec)
    if sched is None:
        raise ValueError("no default CPU rule applies to this function (not a matq linear kernel?)")
    return sched
