"""llvm rule for a matq linear kernel: unpack inlined, N tiles in parallel, K split and vectorised via rfactor.

    for jo in parallel(N / JI):              JI: sampled perfect tile of N (<= 16)
      for ji in JI:
        for kbo in K / (32 * KBI):           KBI: sampled perfect tile of the K/32 blocks (<= 4)
          for i in M:                        never split, so a trace replays on any M (dynamic M too)
            for kbi in KBI (unrolled):
              for kl in 32 (4 x 8 lanes):    rf[kl] += X[i, k] * unpack(P, j, k)   (unpack inlined)
          Y[i, j] = sum(rf)

The same function is the MetaSchedule search space (sample_perfect_tile knobs, mutated by MutateTileSize) and,
with fixed knobs, the untuned default. Whole 32-code blocks per vector step keep each code's word index and bit
offset affine in the block index, so for r in {2, 4} eight lanes share one word (a broadcast, no gather).
"""
from __future__ import annotations

BLOCK = 32  # codes per packed block: the vector loop always covers whole blocks
VEC = 8  # fp32 lanes of one AVX2 register
MAX_JI = 16  # output rows per parallel task (innermost tile factor bound)
MAX_KBI = 4  # 32-code blocks per partial-sum step
DEFAULT = {"ji": 4, "kbi": 1}


def _tile(sch, loop, max_inner: int, fixed: int | None):
    """Split `loop` in two: sampled perfect tile (mutated by MutateTileSize), or a fixed inner factor."""
    if fixed is None:
        return sch.split(loop, sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max_inner))
    extent = int(sch.get(loop).extent)
    inner = max(f for f in range(1, fixed + 1) if extent % f == 0)
    return sch.split(loop, [None, inner])


def schedule(sch, knobs: dict[str, int] | None = None) -> bool:
    """Apply the rule to `sch` in place; False when the function has no "dequant"/"gemm" blocks (not ours)."""
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))} if _has_root(sch) else set()
    if not {"dequant", "gemm"} <= names:
        return False
    knobs = knobs or {}
    dq, gemm = sch.get_sblock("dequant"), sch.get_sblock("gemm")
    i, j, k = sch.get_loops(gemm)
    sch.compute_inline(dq)  # unpack straight into the FMA (a compute_at tile for M > 1 measured 1.5x slower)
    jo, ji = _tile(sch, j, MAX_JI, knobs.get("ji"))
    kb, kl = sch.split(k, [None, BLOCK])
    kbo, kbi = _tile(sch, kb, MAX_KBI, knobs.get("kbi"))
    sch.reorder(jo, ji, kbo, i, kbi, kl)
    rf = sch.rfactor(kl, 2)  # partial sums innermost: contiguous vector lanes
    jo, ji, kbo, _, kbi, kl = sch.get_loops(rf)  # old handles now name the write-back block's loops
    sch.reverse_compute_at(sch.get_sblock("gemm"), ji)  # per output row: the partial sums stay in registers
    sch.parallel(jo)  # parallel/vectorize before decompose_reduction: a bare update block is refused
    lo, li = sch.split(kl, [None, VEC])  # 8 lanes of r <= 4 codes share one word: a broadcast load, no gather
    sch.vectorize(li)
    sch.unroll(lo)
    sch.unroll(kbi)
    sch.decompose_reduction(rf, kbo)
    return True


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - TVM raises its own error for a missing block
        return False
    return True


def mutators() -> dict:
    from matq_compile._tvm import ms

    return {ms.mutator.MutateTileSize(): 1.0}


def space_fn(sch) -> None:
    """MetaSchedule ScheduleFn: the tunable space (knobs sampled)."""
    if not schedule(sch):
        raise ValueError("cpu_gemv space applied to a function that is not a matq linear kernel")


def apply(func, spec):
    """Untuned default: fixed knobs. None when `func` is not a matq kernel."""
    from matq_compile._tvm import Schedule, tvm

    sch = Schedule(tvm.IRModule({"main": func}))
    if not schedule(sch, DEFAULT):
        return None
    return sch.mod["main"]
