"""CUDA default rules: dlight GEMV (M = 1), LowBatchGEMV (small M), Matmul, Fallback; first that applies wins.

dlight's GEMV analysis asserts single-element read regions; the codes of r in {3, 5, 6, 7} are read from two or
three bit planes (two or three words of P), so GEMV refuses those kernels and a later rule takes them (errors count
as "does not apply"): at M = 1 that is Fallback (correct, builds to PTX, not a tuned GEMV; MetaSchedule's CUDA
space is the way to a fast one).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def rules() -> tuple:
    from matq_compile._tvm import dlight as dl

    return (dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Matmul(), dl.gpu.Fallback())


def apply(func, spec):
    """Scheduled PrimFunc from the first rule that applies (each gets a fresh copy: dlight mutates its input)."""
    target = spec.to_tvm()
    for rule in rules():
        try:
            with target:
                sch = rule.apply(func, target, False)
        except Exception as e:  # noqa: BLE001 - dlight analyses raise assorted errors on shapes they do not handle
            log.debug("%s does not apply: %s", type(rule).__name__, e)
            continue
        if sch is not None:
            sch = sch[0] if isinstance(sch, list) else sch
            return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    raise ValueError("no CUDA rule applies to this function")
