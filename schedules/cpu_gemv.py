"""llvm rule for a matq linear kernel: decode inlined, N tiles in parallel, 32-code blocks vectorised via rfactor.

Grouped kernel (lower/kernels.py; M = 1, group a multiple of 32):

    for jo in parallel(N / JI):              JI: sampled perfect tile of N (<= 16)
      for ji in JI:
        for q in groups:
          part[i, 0:32] = sum_b X[i, k] * code(j, k)            (decode inlined; 4 x 8 lanes, b unrolled)
          rf[i, 0:32] += S[j, q] * (part[i, :] - Z[j, q] * xs[i, q, :])
        Y[i, j] = sum(fold(rf[i, :]))              fold: 32 -> 8 lanes with vector adds

Flat kernel (M > 1 or dynamic, other groups):

    for jo in parallel(N / JI):
      for ji in JI:
        for kbo in K / (32 * KBI):           KBI: sampled perfect tile of the K/32 blocks (<= 4)
          for i in M:                        never split, so a trace replays on any M (dynamic M too)
            for kbi in KBI (unrolled):
              for kl in 32 (4 x 8 lanes):    rf[kl] += X[i, k] * dequant(P, j, k)   (dequant inlined)
          Y[i, j] = sum(fold(rf))

The same function is the MetaSchedule search space (sample_perfect_tile knobs, mutated by MutateTileSize) and,
with fixed knobs, the untuned default. Whole 32-code blocks per vector step keep each plane's word index and bit
offset affine in the lane, so eight lanes of a plane share one word (a broadcast, no gather).
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
    """Apply the rule to `sch` in place; False when the function is not a matq linear kernel."""
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))} if _has_root(sch) else set()
    if {"decode", "gemm", "xsum", "scale"} <= names:
        _grouped(sch, knobs or {}, "cast" in names)
        return True
    if {"dequant", "gemm"} <= names:
        _flat(sch, knobs or {}, "cast" in names)
        return True
    return False


def _vectorize_lanes(sch, loop):
    """Split `loop` into unrolled x VEC vector lanes; returns the unrolled outer loop."""
    lo, li = sch.split(loop, [None, VEC])  # 8 lanes of one plane share one word: a broadcast load, no gather
    sch.vectorize(li)
    sch.unroll(lo)
    return lo


def _fold_lanes(sch, writeback: str):
    """Split the 32-lane sum of block `writeback` into 4 x 8 and rfactor the 8: the lanes fold to one vector with
    vector adds before the scalar sum. LLVM keeps a float sum in order, so a plain 32-lane sum is 32 serial scalar
    adds per output (1.1-1.35x of a whole K=576 kernel at M=1)."""
    _, lanes = sch.split(sch.get_loops(sch.get_sblock(writeback))[-1], [None, VEC])
    return sch.rfactor(lanes, 2)


def _vectorize_fold(sch, fold) -> None:
    """Loops under (jo, ji) after compute-at: 8 lanes, 4 parts[, M rows]; add the parts lane-wise per row."""
    lane, part, *rows = sch.get_loops(fold)[2:]
    sch.reorder(*rows, part, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(fold, part)


def _grouped(sch, knobs: dict[str, int], cast: bool) -> None:
    sch.compute_inline(sch.get_sblock("decode"))  # decode straight into the FMA
    i, j, q, lane = sch.get_loops(sch.get_sblock("scale"))
    jo, ji = _tile(sch, j, MAX_JI, knobs.get("ji"))
    sch.reorder(jo, ji, q, i, lane)
    rf = sch.rfactor(lane, 2)  # rf[i, j, lane] = sum_q S * (part - Z * xs): 32 partial sums kept in registers
    fold = _fold_lanes(sch, "scale")
    jo, ji, q = sch.get_loops(rf)[:3]  # old handles now name the write-back block's loops
    gemm = sch.get_sblock("gemm")
    # one group's 32-lane partial dot product right before it is scaled (unit loops kept: the same loop nest for
    # every group size, g = 32 included)
    sch.compute_at(gemm, q, preserve_unit_loops=True)
    sch.reverse_compute_at(fold, ji)
    sch.reverse_compute_at(sch.get_sblock("scale"), ji)
    if cast:
        sch.reverse_compute_at(sch.get_sblock("cast"), ji)
    sch.parallel(jo)
    _vectorize_fold(sch, fold)
    i, *_, lane, b = sch.get_loops(gemm)[3:]  # i, unit loops of j and q, lane, b
    sch.reorder(b, i, lane)
    sch.unroll(b)
    _vectorize_lanes(sch, lane)
    sch.decompose_reduction(gemm, b)
    _vectorize_lanes(sch, sch.get_loops(rf)[-1])
    sch.decompose_reduction(rf, q)
    # xs[i, q, :] = sum_b X[i, k] (M*K adds): scheduled here, or trace replay gives it a generic schedule that
    # tries to parallelise its reduction loop and fails
    xsum = sch.get_sblock("xsum")
    *_, lane, bx = sch.get_loops(xsum)
    sch.reorder(bx, lane)
    _vectorize_lanes(sch, lane)
    sch.decompose_reduction(xsum, bx)


def _flat(sch, knobs: dict[str, int], cast: bool) -> None:
    dq, gemm = sch.get_sblock("dequant"), sch.get_sblock("gemm")
    i, j, k = sch.get_loops(gemm)
    sch.compute_inline(dq)  # unpack straight into the FMA (a compute_at tile for M > 1 measured 1.5x slower)
    jo, ji = _tile(sch, j, MAX_JI, knobs.get("ji"))
    kb, kl = sch.split(k, [None, BLOCK])
    kbo, kbi = _tile(sch, kb, MAX_KBI, knobs.get("kbi"))
    sch.reorder(jo, ji, kbo, i, kbi, kl)
    rf = sch.rfactor(kl, 2)  # partial sums innermost: contiguous vector lanes
    fold = _fold_lanes(sch, "gemm")
    jo, ji, kbo, _, kbi, kl = sch.get_loops(rf)  # old handles now name the write-back block's loops
    sch.reverse_compute_at(fold, ji)
    sch.reverse_compute_at(sch.get_sblock("gemm"), ji)  # per output row: the partial sums stay in registers
    if cast:
        sch.reverse_compute_at(sch.get_sblock("cast"), ji)
    sch.parallel(jo)  # parallel/vectorize before decompose_reduction: a bare update block is refused
    _vectorize_fold(sch, fold)
    _vectorize_lanes(sch, kl)
    sch.unroll(kbi)
    sch.decompose_reduction(rf, kbo)


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
