"""GEMV rule for the flat bit-slice kernel at M = 1 on CUDA, for every r (dlight's GEMV refuses r = 3, 5, 6, 7).

dlight's GEMV analysis needs every read of the weight to be one element; an odd-width code is assembled from two or
three bit planes (two or three words of P), so dlight sends those kernels to Fallback. This rule schedules the
kernel as a GEMV whatever the width:

    blockIdx.x   ROWS output rows per thread block (threadIdx.y: one row each)
    threadIdx.x  THREADS threads (one warp) split the reduction over K; each walks whole 32-code blocks (its r
                 packed words are contiguous, and a warp's words form one contiguous span: coalesced loads), then a
                 cross-thread reduction (warp shuffles) adds the partial sums
    inner loop   one 32-code block, unrolled: each plane word is loaded once and decoded in registers

bind=False applies the same loop transformations without thread bindings, so the schedule's numerics can be
checked on a CPU (tests/schedules/test_gpu_rules.py); bind=True is the CUDA schedule.
"""
from __future__ import annotations

from matq_compile import layout

RULE_NAME = "matq.GEMV"
ROWS = 4  # output rows per thread block (threadIdx.y)
THREADS = 32  # threads over K per row (threadIdx.x): one warp, so the reduction needs shuffles only


def _key(func) -> layout.KernelKey | None:
    from matq_compile.lower.kernels import KEY_ATTR

    if func.attrs is None or KEY_ATTR not in func.attrs:
        return None
    return layout.KernelKey.parse(str(func.attrs[KEY_ATTR]))


def _block_names(sch) -> set[str]:
    return {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}


def schedule(func, bind: bool = True):
    """The scheduled PrimFunc, or None if `func` is not a matq kernel in the flat form (dequant + gemm) at M = 1."""
    from matq_compile._tvm import Schedule, tvm

    key = _key(func)
    if key is None or key.m_bucket != 1:
        return None
    sch = Schedule(tvm.IRModule({"main": func}))
    names = _block_names(sch)
    if not {"dequant", "gemm"} <= names:
        return None  # the grouped (CPU) form
    sch.compute_inline(sch.get_sblock("dequant"))
    gemm = sch.get_sblock("gemm")
    i, j, k = sch.get_loops(gemm)
    jo, ji = sch.split(j, [None, ROWS])
    ko, kt, ki = sch.split(k, [None, THREADS, layout.BLOCK])  # ki: one whole 32-code block (splits start at 0)
    sch.reorder(i, jo, ji, kt, ko, ki)
    sch.unroll(ki)
    cast = sch.get_sblock("cast") if "cast" in names else None
    if cast is not None:
        sch.set_scope(gemm, 0, "local")  # the fp32 accumulator never reaches global memory
        sch.reverse_compute_at(cast, ji)
    if bind:
        sch.bind(jo, "blockIdx.x")
        sch.bind(ji, "threadIdx.y")
        sch.bind(kt, "threadIdx.x")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


class MatqGEMV:
    """The rule in dlight's calling convention: apply(func, target, tunable) -> scheduled PrimFunc or None."""

    name = RULE_NAME

    def apply(self, func, target, tunable: bool = False):
        if target.kind.name != "cuda":
            return None
        return schedule(func, bind=True)
