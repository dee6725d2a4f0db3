"""CUDA default rules, first that applies wins: dlight GEMV (M = 1, r = 2, 4, 8), the project's GEMV (M = 1, every
r; gpu_gemv.py), dlight LowBatchGEMV (small M), dlight Matmul (M = 16: shared-memory tiles of X and of the decoded
weight), Fallback (anything else, e.g. dynamic M).

dlight's GEMV analysis asserts single-element read regions; the codes of r in {3, 5, 6, 7} are read from two or
three bit planes (two or three words of P), so it refuses those kernels (errors count as "does not apply") and
gpu_gemv's rule takes them. The rule that scheduled a kernel is recorded on it (attribute RULE_ATTR).
"""
from __future__ import annotations

import logging

from matq_compile.schedules import gpu_gemv

log = logging.getLogger(__name__)

RULE_ATTR = "matq.schedule_rule"  # name of the rule that scheduled a kernel: GEMV, matq.GEMV, Matmul, ...


def rules() -> tuple:
    from matq_compile._tvm import dlight as dl

    return (dl.gpu.GEMV(), gpu_gemv.MatqGEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Matmul(), dl.gpu.Fallback())


def rule_name(rule) -> str:
    return getattr(rule, "name", type(rule).__name__)


def apply(func, spec):
    """Scheduled PrimFunc from the first rule that applies (each gets a fresh copy: dlight mutates its input)."""
    from matq_compile._tvm import tirx

    target = spec.to_tvm()
    for rule in rules():
        try:
            with target:
                sch = rule.apply(func, target, False)
        except Exception as e:  # noqa: BLE001 - dlight analyses raise assorted errors on shapes they do not handle
            log.debug("%s does not apply: %s", rule_name(rule), e)
            continue
        if sch is None:
            continue
        sch = sch[0] if isinstance(sch, list) else sch
        out = sch if isinstance(sch, tirx.PrimFunc) else sch.mod["main"]
        return out.with_attr("tirx.is_scheduled", True).with_attr(RULE_ATTR, rule_name(rule))
    raise ValueError("no CUDA rule applies to this function")
