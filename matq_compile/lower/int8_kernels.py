"""int8-activation bit-slice kernels (x86 CPU): activations quantized per group, integer dot products, float
epilogue once per group. Mirrors matq_compile/act_quant.py (pinned bit-exactly by tests); the weights are the
same packed arrays as the float kernels' (layout.py, or a switchable build's nested planes, planes.py), so a build
switches mode without repacking.

    int8_linear_func(key, isa):  Y[M, N] from X f32[M, K], P, S, Z (the float kernel's signature)

Blocks (K seen as blocks of 32 = 8 lanes x 4 bytes, the tensor intrinsic's operand; lower/int8_intrin.py):
    "amax"     amax[m, q] = max |X| over group q      "ascale"  sx = amax / 127     "ainv"  127 / amax (or 0)
    "xq"       xq[kb, m, i, j] int8 = clip(rint(X * ainv))     (round half to even; lanes in the decode's order)
    "xsum"     xsum[m, q] int32 = sum of the group's xq
    "wcode"    wcode[n, kb, i, j] uint8: the r-bit codes of one 32-code block (int8_decode: byte ops per block;
               nested planes: one "plane{p}" block per plane read, or-ed together byte-wise)
    "igemm"    part[m, n, q, i] int32 = sum_{b, j} wcode * xq                  (tensorized: 8 lanes x 4 bytes)
    "cscale"   cs[m, n, q] = sx * S                                            float32 from here on
    "fdot"     sum_{q, i} cs * part                                            8 float lanes, one FMA per group
    "zx"       zx[q, m] = sx * xsum                                            once per call, group-major
    "zterm"    sum_q zx[q, m] * S * Z                                          vectorised over groups (M = 1) or rows
    "epilogue" Y = fdot - zterm

On ISA "vnni512" (int8_intrin) the blocks are 64 codes and 16 lanes (two layout blocks decoded together by
int8_decode's wide intrinsic, activations quantized into the same wide_code order); the rest is the same.

The float work reads the eight integer lanes of each group (converted exactly while |part| < 2^24, i.e.
group <= 4096) instead of summing them to one integer first: that lane sum, and the scale and zero applied
group by group with scalar loads, cost as much as the whole decode-and-dot loop. int8_acc_func swaps the
epilogue for that integer lane sum ("lanesum", acc[m, n, q] = sum_i part), so tests pin every integer block
(quantization, decode, dot) bit-exactly.

The schedule is written here (the kernels are hand-scheduled, not tuned): tasks of output rows in parallel; each
group's integer sum is made inside the float fold's group loop, so its 8 int32 lanes stay in a register and the
fold's FMA chain overlaps the next group's integer work:
    M = 1        per output row and group: decode the group's blocks, sum, fold
    static M > 1 a task's rows are decoded once; its fold runs over tiles of N_TILE output rows x ROW_TILE
                 activation rows (unrolled: independent accumulators in registers, each decoded block and each
                 activation block loaded once per tile), the activation tile reused across the task's rows
    dynamic M    per output row: decode the whole row, then fold activation row by activation row
With 16 lanes the row's lane sum is a tree (vector adds of halves), and at M = 1 the fold's groups alternate
between FOLD_CHAINS accumulators where the group count allows (one FMA chain per group is longer than a group's
other work at r = 2). The scales are converted from half precision once per row, 8 groups at a time ("sfloat",
"szfloat"): one scalar conversion per use chains every use to the last through the conversion's merge operand. At
M = 1 with whole vectors of groups the zero term is a vector loop that converts its S and Z in place (its row
vector of S Z, reloaded 8 lanes at a time, became ~150 lane extracts per row in LLVM: 4096 x 4096 warm, r = 4,
196 -> 173 us). Short rows on the 512-bit form (fewer groups than the fold's 16 lanes, not whole vectors of 8;
K = 576: 9 groups) subtract the zero term in the fold's lanes instead, (zx S Z)[l] with S and Z read by zero-masked
loads (int8_intrin.zero_lanes_intrin; the scalar chain over the groups had cost a quarter of a row's instructions),
and at M = 1 rows of up to TASK_SCALE_GROUPS groups get their scales made per task, so that the fold reads each
group's scale as an FMA's broadcast memory operand (3072 x 576, r = 2, warm: 23.4 -> 19.1 us), and their group
loop unrolled (LLVM kept it rolled for the two-plane widths, testing for the first group at run time: 3072 x 576
warm r = 5 / 6 / 7 40 / 41 / 48 -> 30 / 29 / 35 us).
With several activation rows the activation scales and cs are stored group-major and cs and the zero term are
vectorised over the rows.
"""
from __future__ import annotations

from matq_compile import act_quant, layout, planes
from matq_compile._tvm import Schedule, i64, te, tirx, tvm
from matq_compile.lower import int8_decode, int8_intrin
from matq_compile.lower.kernels import _weights, hand_scheduled

INT8_ATTR = "matq.int8_kernel"  # on every int8-activation kernel: its name (KEY_ATTR stays off: no database)
VEC, J = 8, 4  # int32 lanes x bytes per lane of one intrinsic call
ROWS_PER_TASK = 8  # output rows per parallel task
# static M > 1: a tile of N_TILE output rows x ROW_TILE activation rows folds together, its accumulators in registers
# (independent FMA chains; each decoded block and each activation block loaded once per tile)
N_TILE, ROW_TILE = 2, 4
# M = 1 on 512-bit kernels: the fold's groups alternate between this many accumulators (independent FMA chains:
# one chain waits an FMA latency per group, longer than a group's other work at r = 2)
FOLD_CHAINS = 2
# M = 1 on 512-bit kernels with at most this many groups per row: the row scales made per task (_schedule). 2-core
# AVX-512 Xeon, warm, us, per row / per task: 3072 x 576 r = 2 19.9 / 19.1, r = 4 21.5 / 19.1; 576 x 1536 r = 2
# 12.0 / 10.2; 4096 x 4096 r = 4 174 / 178 (long rows keep the register form)
TASK_SCALE_GROUPS = 32


def supports(key: layout.KernelKey) -> bool:
    """Whether `key` has an int8-activation kernel: float32 activations, groups of whole 32-code blocks (the dense
    slice layout, or a switchable build's nested planes)."""
    return key.dtype == "float32" and key.group_size % layout.BLOCK == 0


def kernel_name(key: layout.KernelKey) -> str:
    return f"{key.name}_a8"


def group_scales(X: te.Tensor, G: tirx.PrimExpr, g: tirx.PrimExpr) -> tuple[te.Tensor, te.Tensor]:
    """act_quant's per-group scale of X [M, K]: "amax" = max |X| over each group of g, "ainv" = 127 / amax (0 for
    an all-zero group), both [M, G]."""
    f32, qmax = "float32", tirx.const(act_quant.QMAX, "float32")
    r = te.reduce_axis((i64(0), g), name="r")
    amax = te.compute((X.shape[0], G), lambda m, q: te.max(tirx.abs(X[m, q * g + r]), axis=r), name="amax")
    inv = te.compute((X.shape[0], G), lambda m, q: tirx.Select(amax[m, q] > tirx.const(0, f32), qmax / amax[m, q],
                                                               tirx.const(0, f32)), name="ainv")
    return amax, inv


def quantize(x: tirx.PrimExpr, inv: tirx.PrimExpr) -> tirx.PrimExpr:
    """act_quant's rounding of one activation: clip(rint(x * inv), -127, 127) as int8 (round half to even)."""
    qmax = tirx.const(act_quant.QMAX, "float32")
    return tirx.max(tirx.min(tirx.nearbyint(x * inv), qmax), -qmax).astype("int8")


def _compute(key: layout.KernelKey, with_epilogue: bool, wide: bool):
    """wide: 512-bit intrinsics, 16 lanes over blocks of 64 codes (two layout blocks; int8_decode.wide_code)."""
    if not supports(key):
        raise ValueError(f"{key.name}: int8 activations need float32 inputs and a group size that is a multiple "
                         f"of {layout.BLOCK}")
    M = i64(key.m_bucket) if key.m_bucket is not None else tirx.Var("m", "int64")
    N, K, G, g = i64(key.N), i64(key.K), i64(key.n_groups), i64(key.group_size)
    codes, lanes = (int8_intrin.WIDE_CODES, 2 * VEC) if wide else (layout.BLOCK, VEC)
    KB, NB = i64(key.K // codes), i64(key.group_size // codes)
    f32 = "float32"
    X = te.placeholder((M, K), f32, name="X")
    P, S, Z = _weights(key)
    amax, inv = group_scales(X, G, g)
    sx = te.compute((M, G), lambda m, q: amax[m, q] / tirx.const(act_quant.QMAX, f32), name="ascale")

    def quant(kb, m, i, j):  # lane i*4+j holds the code order of the decode (int8_decode.lane_code)
        p = i * i64(J) + j
        k = kb * i64(codes) + (int8_decode.wide_code(p, key.bits) if wide else
                               int8_decode.lane_code(p, int8_decode.ORDERS[key.bits]))
        return quantize(X[m, k], inv[m, kb // NB])

    # block-major: the rows of one 32-code block lie together (a row stride of K bytes put M = 16 rows on one L1 set)
    xq = te.compute((KB, M, i64(lanes), i64(J)), quant, name="xq")
    xb, xi, xj = (te.reduce_axis((i64(0), e), name=n) for e, n in ((NB, "xb"), (i64(lanes), "xi"), (i64(J), "xj")))
    xsum = te.compute((M, G), lambda m, q: te.sum(xq[q * NB + xb, m, xi, xj].astype("int32"), axis=[xb, xi, xj]),
                      name="xsum")
    words = key.bits * codes // layout.BLOCK  # per decode block
    W = _nested_codes(P, key) if key.nested else te.compute(
        (N, KB, i64(lanes), i64(J)),
        lambda n, kb, i, j: int8_decode.block_code(P, n, kb * i64(words), i, j, key.bits, wide), name="wcode")
    b, j = te.reduce_axis((i64(0), NB), name="b"), te.reduce_axis((i64(0), i64(J)), name="j")
    part = te.compute((M, N, G, i64(lanes)), lambda m, n, q, i: te.sum(
        W[n, q * NB + b, i, j].astype("int32") * xq[q * NB + b, m, i, j].astype("int32"), axis=[b, j]),
        name="igemm")
    li = te.reduce_axis((i64(0), i64(lanes)), name="li")
    if not with_epilogue:
        return [X, P, te.compute((M, N, G), lambda m, n, q: te.sum(part[m, n, q, li], axis=li), name="lanesum")]
    # a row's scales as float32, converted 8 groups at a time (module docstring)
    sf = te.compute((N, G), lambda n, q: S[n, q].astype(f32), name="sfloat")
    cs = te.compute((M, N, G), lambda m, n, q: sx[m, q] * sf[n, q], name="cscale")
    # the zero term, sum_q (sx xsum)[m, q] (S Z)[n, q]: its activation factor once per call, stored group-major so
    # that a row's term is vectorised over the activation rows (M > 1)
    zx = te.compute((G, M), lambda q, m: sx[m, q] * xsum[m, q].astype(f32), name="zx")
    lane_zero = _zero_lanes(key, zx, S, Z, lanes) if zero_in_lanes(key, wide) else None
    q = te.reduce_axis((i64(0), G), name="q")

    def fold(m, n):  # with the zero term in the lanes: subtracted with the first group's products
        term = cs[m, n, q] * part[m, n, q, li].astype(f32)
        if lane_zero is not None:
            term = term - tirx.Select(q == i64(0), lane_zero[n, li], tirx.const(0, f32))
        return te.sum(term, axis=[q, li])

    dot = te.compute((M, N), fold, name="fdot")
    if lane_zero is not None:
        return [X, P, S, Z, te.compute((M, N), lambda m, n: dot[m, n], name="epilogue")]
    szf = te.compute((N, G), lambda n, q: S[n, q].astype(f32) * Z[n, q].astype(f32), name="szfloat")
    qz = te.reduce_axis((i64(0), G), name="qz")
    zt = te.compute((M, N), lambda m, n: te.sum(
        zx[qz, m] * szf[n, qz], axis=qz), name="zterm")
    Y = te.compute((M, N), lambda m, n: dot[m, n] - zt[m, n], name="epilogue")
    return [X, P, S, Z, Y]


def _zero_lanes(key: layout.KernelKey, zx: te.Tensor, S: te.Tensor, Z: te.Tensor, lanes: int) -> te.Tensor:
    """"zlane"[n, l] = (zx S Z)[n, l] for group l of row n, 0 past the row's groups ("zxpad" is): the zero term in
    the fold's lanes (int8_intrin.zero_lanes_intrin reads S and Z with masked loads)."""
    f32, G, last = "float32", i64(key.n_groups), i64(key.n_groups - 1)
    zpad = te.compute((i64(lanes),), lambda li: tirx.Select(li < G, zx[tirx.min(li, last), i64(0)],
                                                           tirx.const(0, f32)), name="zxpad")
    return te.compute((S.shape[0], i64(lanes)), lambda n, li: zpad[li] * S[n, tirx.min(li, last)].astype(f32) * Z[
        n, tirx.min(li, last)].astype(f32), name="zlane")


def zero_in_lanes(key: layout.KernelKey, wide: bool) -> bool:
    """Whether the kernel subtracts its zero term in the fold's 16 lanes (int8_intrin.zero_lanes_intrin): one
    activation row on the 512-bit form, with fewer groups than lanes and not whole vectors of 8 (K = 576: 9)."""
    return wide and key.m_bucket == 1 and 1 < key.n_groups < 2 * VEC and key.n_groups % VEC != 0


def _nested_codes(P: te.Tensor, key: layout.KernelKey) -> te.Tensor:
    """planes.slice_codes on bytes: one "plane{p}" block per plane the slice reads (int8_decode.plane_code), then
    "wcode" = their top bits or-ed together, the round rule's round bit folded in ((T >> 1) + (T & 1) never
    overflows a byte, unlike T + 1)."""
    N, KB, nblk = i64(key.N), i64(key.K // layout.BLOCK), key.K // layout.BLOCK
    order, u8 = int8_decode.ORDERS[key.bits], (lambda v: tirx.const(v, "uint8"))
    parts = []
    for p, (w, off, shift) in enumerate(planes.planes_read(key.bits, key.nested)):
        parts.append((te.compute((N, KB, i64(VEC), i64(J)), _plane_fn(P, key, w, off, nblk, order), name=f"plane{p}"),
                      shift))

    def code(n, kb, i, j):
        top = None
        for plane, shift in parts:
            v = plane[n, kb, i, j]
            v = v << u8(shift) if shift > 0 else v >> u8(-shift) if shift else v
            top = v if top is None else top | v
        if planes.top_bits(key.bits, planes.parse_tag(key.nested)[0]) != key.bits:
            top = tirx.min((top >> u8(1)) + (top & u8(1)), u8((1 << key.bits) - 1))
        return top

    return te.compute((N, KB, i64(VEC), i64(J)), code, name="wcode")


def _plane_fn(P: te.Tensor, key: layout.KernelKey, w: int, off: int, nblk: int, order: str):
    return lambda n, kb, i, j: int8_decode.plane_code(P, _plane_base(key, n, kb, w, off, nblk), i, j, w, order)


def _plane_base(key: layout.KernelKey, n, kb, w: int, off: int, nblk: int):
    """First word of plane (w, off) of row n, block kb (planes.word_index at code 32 kb)."""
    return i64(off * key.N * nblk) + n * i64(w * nblk) + kb * i64(w)


def _schedule(func: tirx.PrimFunc, key: layout.KernelKey, isa: str, with_epilogue: bool) -> tirx.PrimFunc:
    """Scheduled from the output block down (compute_at needs every consumer under the loop, reverse_compute_at
    every producer, and the epilogue's activation scales and sums are produced once, at the root)."""
    sch = Schedule(tvm.IRModule({"main": func}))
    _schedule_activations(sch)
    rows = key.m_bucket != 1  # several activation rows (static M > 1 or dynamic M)
    wide = isa == "vnni512"
    chains = FOLD_CHAINS if (wide and key.m_bucket == 1 and key.n_groups % FOLD_CHAINS == 0
                             and key.n_groups > FOLD_CHAINS) else 1
    placed, fold, halves = _schedule_epilogue(sch, key, chains, wide) if with_epilogue else ([], None, [])
    out = sch.get_sblock("epilogue" if with_epilogue else "lanesum")
    m, n, *rest = sch.get_loops(out)
    no, ni = sch.split(n, [None, _divisor(key.N, ROWS_PER_TASK)])
    sch.reorder(no, ni, m, *rest)
    sch.parallel(no)
    tiled = with_epilogue and _tiled(key)
    task_scales = tiled or (wide and key.m_bucket == 1 and key.n_groups <= TASK_SCALE_GROUPS)
    for block in placed:
        # a tiled fold (and its scales) spans the task's rows: each activation tile is reused across them; the
        # scales of short rows at M = 1 are made for the task's rows at once, so the fold reads each group's
        # scale as an FMA's broadcast memory operand (a row's scale vector in a register took two shuffles per group)
        name = sch.get(block).name_hint
        sch.compute_at(block, no if (tiled and block is fold) or (task_scales and name in ("cscale", "sfloat"))
                       else ni)
    fold_inner = None
    for block in placed:
        name = sch.get(block).name_hint
        if block is fold and tiled:
            fold_inner = _tile_fold(sch, block)
        elif block is fold and chains > 1:  # loops lanes (chains x 16), group pairs -> pairs, chains, 16 lanes
            lanes, pairs = sch.get_loops(block)[2:]
            chain, lane = sch.split(lanes, [chains, None])
            sch.reorder(pairs, chain, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(block, pairs)
        elif any(block is h for h in halves):
            lane, pair, *m_loop = sch.get_loops(block)[2:]  # a lane-halving rf: lanes, the two halves, [m]
            sch.reorder(*m_loop, pair, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(block, pair)
        elif name.endswith("_rf"):
            _vectorize_rf(sch, block)
        elif name in ("sfloat", "szfloat") and key.n_groups > 1:
            sch.vectorize(sch.get_loops(block)[-1])
        elif name == "zterm" and key.m_bucket not in (None, 1):
            _vectorize_rows(sch, block, key.n_groups)
        elif name == "zlane":
            sch.tensorize(sch.get_loops(block)[-1], int8_intrin.zero_lanes_intrin(key.n_groups))
    if with_epilogue:
        _schedule_cscale(sch, key, tiled)
    gemm = sch.get_sblock("igemm")
    sch.transform_layout(gemm, ("write", 0), lambda m, n, q, i: (n, q, m, i))  # a row's lanes together
    sch.reorder_block_iter_var(gemm, [1, 2, 4, 0, 3, 5])  # (n, q, b, m, i, j): compute_at makes loops in this order
    fused = with_epilogue and key.n_groups > 1
    if fused:
        # each group's integer sum is made right where the float fold consumes it (in the fold's group loop), so
        # its lanes stay in a register and the fold's FMA chain hides behind the next group's integer work
        if tiled:  # per (group, output row, activation row) of the tile, all unrolled
            sch.compute_at(gemm, fold_inner[-1])
            for loop in fold_inner:
                sch.unroll(loop)
        else:  # loops no, ni, [m,] q; then b, i, j
            sch.compute_at(gemm, sch.get_loops(fold)[3 if rows or chains > 1 else 2])
            if task_scales:  # short rows at M = 1: the whole row straight-line (see TASK_SCALE_GROUPS)
                for loop in sch.get_loops(fold)[2:4 if chains > 1 else 3]:
                    sch.unroll(loop)
        rows = False  # the fold's loops hold the activation rows: the integer block has no row loop of its own
    else:
        sch.compute_at(gemm, ni)  # loops [q, b, m,] i, j; unit loops are dropped
    has_q, has_b = key.n_groups > 1, key.group_size > (int8_intrin.WIDE_CODES if wide else layout.BLOCK)
    loops = sch.get_loops(gemm)
    inner = loops[len(loops) - (has_q + has_b + rows + 2):]
    # the group's blocks are decoded before any activation row: per group, or the whole row when the fold's
    # activation-row loop is outside the group loop
    group_loop = no if tiled else ni if (not has_q or (fused and key.m_bucket != 1)) else inner[0]
    b_loop, m_loop = (inner[has_q] if has_b else None), (inner[has_q + has_b] if rows else None)
    if b_loop is not None and m_loop is not None:
        sch.reorder(m_loop, b_loop)  # per row, the group's blocks in turn: its 8 int32 lanes stay in a register
    wcode = sch.get_sblock("wcode")
    if key.nested:
        _schedule_nested_decode(sch, key, wcode, group_loop)
    else:
        _read_whole_block(sch, wcode, key.bits * (2 if wide else 1))
        sch.compute_at(wcode, group_loop)
        sch.tensorize(sch.get_loops(wcode)[-2], int8_decode.wide_intrin_name(key.bits) if wide else
                      int8_decode.intrin_name(key.bits, int8_intrin.decodes_with_multishift(isa)))
    lane_loop = sch.get_loops(gemm)[-2]
    sch.decompose_reduction(gemm, b_loop if b_loop is not None else lane_loop)
    group = int8_intrin.group_intrin_for(isa, key.bits, key.group_size // layout.BLOCK) if has_b else None
    if group is not None:  # the group's blocks summed in int16, widened once
        # a group's blocks of one activation row as one region (the intrinsic's operand), the rows of a group
        # still together: xq [kb, m] -> [group, m, block of the group]
        nb = i64(key.group_size // layout.BLOCK)
        sch.transform_layout(sch.get_sblock("xq"), ("write", 0), lambda kb, m, i, j: (kb // nb, m, kb % nb, i, j))
        sch.tensorize(b_loop, group)
        return sch.mod["main"]
    if b_loop is not None:
        sch.unroll(b_loop)  # straight-line adds: LLVM forwards the zero init and the partial sums
    sch.tensorize(lane_loop, int8_intrin.intrin_for(isa, key.bits))
    return sch.mod["main"]


def _schedule_activations(sch) -> None:
    """Quantization once per call (M x K elements): the block-wide conversion and the group max 8 lanes wide."""
    xq = sch.get_sblock("xq")
    sch.vectorize(sch.fuse(*sch.get_loops(xq)[-2:]))  # 32 lanes: X contiguous, one scale per block
    schedule_group_max(sch)


def schedule_group_max(sch) -> None:
    """group_scales' "amax" 8 lanes wide (an rfactor over the group, at the root)."""
    amax = sch.get_sblock("amax")
    rf = sch.rfactor(sch.split(sch.get_loops(amax)[-1], [None, VEC])[1], 0)
    _, q, _, lane = sch.get_loops(rf)  # rfactor keeps the nest: m, q, r/8, lane
    sch.vectorize(lane)
    sch.decompose_reduction(rf, q)


def _rfactor_lanes(sch, name: str, split: bool):
    """rfactor of block `name`'s innermost reduction loop (split by VEC first when `split`), at the root: rfactor
    needs the block to be the first child of its nest. Returns (rf, write-back) blocks."""
    block = sch.get_sblock(name)
    lane = sch.get_loops(block)[-1]
    if split:
        lane = sch.split(lane, [None, VEC])[1]
    rf = sch.rfactor(lane, 0)
    return rf, sch.get_sblock(name)


def _schedule_epilogue(sch, key: layout.KernelKey, chains: int, wide: bool) -> list:
    """The float work: fdot over 8 float lanes (the igemm lanes; a row's lanes stored together), zterm 8 groups
    wide for one activation row where the group count allows, else across the rows. Returns the blocks to place
    under the row loop (consumers first), the fold's block and the lane-halving blocks."""
    fdot = sch.get_sblock("fdot")
    lane = sch.get_loops(fdot)[-1]
    if chains > 1:  # groups q = chains * qo + qi: qi and the lanes fused into the rfactor's lanes
        _, qi = sch.split(sch.get_loops(fdot)[-2], [None, chains])
        lane = sch.fuse(qi, lane)
    rf = sch.rfactor(lane, 0)
    sch.transform_layout(rf, ("write", 0), lambda li, m, n: (n, m, li))
    placed, halves = [fdot, rf], []
    while (lanes := sch.get(sch.get_loops(fdot)[-1]).extent.value) > VEC or VEC >= lanes > 2 and halves:
        # the row's lane sum as a tree: the upper half added to the lower by one vector add, until 2 lanes are
        # left (each step another rfactor, its block also named "fdot_rf"): log2 dependent adds, not one per lane
        _, low = sch.split(sch.get_loops(fdot)[-1], [None, lanes // 2])
        halves.append(sch.rfactor(low, 0))
        placed.insert(1, halves[-1])
    scales = ["cscale", "sfloat", "szfloat"]
    if zero_in_lanes(key, wide):  # the zero term in the fold's lanes
        scales.remove("szfloat")
        placed.append(sch.get_sblock("zlane"))
    elif key.m_bucket == 1 and key.n_groups % VEC == 0:
        # S Z converted in the vectorised rfactor (module docstring)
        sch.compute_inline(sch.get_sblock("szfloat"))
        scales.remove("szfloat")
        placed += list(_rfactor_lanes(sch, "zterm", True))[::-1]
    else:
        placed.append(sch.get_sblock("zterm"))
    return placed + [sch.get_sblock(name) for name in scales], rf, halves


def _schedule_cscale(sch, key: layout.KernelKey, tiled: bool) -> None:
    """cs = sx * S under the row loop (the task loop when tiled): vectorized over the groups for one activation
    row, over the rows for a static M > 1 (sx and cs stored group-major)."""
    cscale = sch.get_sblock("cscale")
    if key.m_bucket in (None, 1):
        if key.n_groups > 1:  # one group: no group loop (the innermost would be the row loop)
            sch.vectorize(sch.get_loops(cscale)[-1])
        return
    sch.transform_layout(sch.get_sblock("ascale"), ("write", 0), lambda m, q: (q, m))
    sch.transform_layout(cscale, ("write", 0), lambda m, n, q: (n, q, m))
    if tiled:  # the task's rows: loops m, n, q
        m, n, q = sch.get_loops(cscale)[-3:]
        sch.reorder(n, q, m)
    elif key.n_groups > 1:
        m, q = sch.get_loops(cscale)[-2:]
        sch.reorder(q, m)
    sch.vectorize(sch.get_loops(cscale)[-1])


def _vectorize_rows(sch, block, groups: int) -> None:
    """zterm under the row loop, loops m, q -> q, m with m vectorized (its factor zx is stored group-major)."""
    if groups == 1:  # no group loop
        sch.vectorize(sch.get_loops(block)[-1])
        return
    m, q = sch.get_loops(block)[-2:]
    sch.reorder(q, m)
    sch.vectorize(m)
    sch.decompose_reduction(block, q)


def _tile_fold(sch, rf) -> list:
    """The fold under the task loop: loops lane, m, n, q -> m_o, n_o, q, n_i, m_i, lane (lane vectorized); the
    (n_i, m_i) tile's accumulators stay in registers. Returns [n_i, m_i] (unit loops dropped)."""
    lane, m, n, q = sch.get_loops(rf)[1:]
    mo, mi = sch.split(m, [None, ROW_TILE])
    no, ni = sch.split(n, [None, _divisor(sch.get(n).extent.value, N_TILE)])
    sch.reorder(mo, no, q, ni, mi, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(rf, q)
    return [loop for loop in (ni, mi) if sch.get(loop).extent.value > 1]


def _vectorize_rf(sch, rf) -> None:
    """rf loops under the row loop: lane, [m,] [q] (iter var order) -> [m,] [q,] lane vectorized."""
    lane, *rest = sch.get_loops(rf)[2:]
    if rest:  # else a single group: nothing worth vectorising
        sch.reorder(*rest, lane)
        sch.vectorize(lane)
        sch.decompose_reduction(rf, rest[-1])


def _tiled(key: layout.KernelKey) -> bool:
    return key.m_bucket not in (None, 1) and key.m_bucket % ROW_TILE == 0 and key.n_groups > 1


def _read_whole_block(sch, block, words: int) -> None:
    """Declare that `block` reads its block's `words` words of P (the decode intrinsic's operand; inferred, the
    region of a multi-plane code is a min/max expression no description matches). Schedule.annotate_buffer_access
    in TVM 0.27 insists on one range per block iter var, so the index map is built here."""
    from tvm.s_tir.schedule import _ffi_api
    from tvm.tirx import IndexMap

    n, kb, _, _ = (iv.var for iv in sch.get(block).iter_vars)
    index_map = IndexMap(initial_indices=[iv.var for iv in sch.get(block).iter_vars],
                         final_indices=[n, n + 1, kb * words, kb * words + words], inverse_index_map=None)
    _ffi_api.ScheduleAnnotateBufferAccess(sch, block, 0, 0, index_map)


def _schedule_nested_decode(sch, key: layout.KernelKey, wcode, block_loop) -> None:
    """Each plane's block decoded by its intrinsic right before the byte-wise combine, both under the block loop."""
    from tvm.s_tir.schedule import _ffi_api
    from tvm.tirx import IndexMap

    sch.compute_at(wcode, block_loop)
    nblk, order = key.K // layout.BLOCK, int8_decode.ORDERS[key.bits]
    for p, (w, off, _) in enumerate(planes.planes_read(key.bits, key.nested)):
        block = sch.get_sblock(f"plane{p}")
        ivs = [iv.var for iv in sch.get(block).iter_vars]
        base = _plane_base(key, ivs[0], ivs[1], w, off, nblk)  # the plane's w words: the intrinsic's operand
        index_map = IndexMap(initial_indices=ivs, final_indices=[base, base + i64(w)], inverse_index_map=None)
        _ffi_api.ScheduleAnnotateBufferAccess(sch, block, 0, 0, index_map)
        sch.compute_at(block, block_loop)
        sch.tensorize(sch.get_loops(block)[-2], int8_decode.plane_intrin_name(w, order))
    sch.vectorize(sch.fuse(*sch.get_loops(wcode)[-2:]))


def _divisor(n: int, at_most: int) -> int:
    return max(f for f in range(1, at_most + 1) if n % f == 0)


def int8_linear_func(key: layout.KernelKey, isa: str, name: str | None = None) -> tirx.PrimFunc:
    """The scheduled int8-activation kernel of `key` for `isa` (int8_intrin.ISAS; a build passes
    int8_intrin.kernel_isa of its target's ISA). "vnni512" where the key has no 512-bit form: "vnni-vbmi". "amx":
    the AMX tile kernel (int8_amx); "tiles": the kernel on the tile arrangement (int8_tiles), P, S, Z tiled."""
    if isa == int8_intrin.AMX:
        from matq_compile.lower import int8_amx

        return int8_amx.int8_amx_func(key, name)
    if isa == int8_intrin.TILES:
        from matq_compile.lower import int8_tiles

        return int8_tiles.int8_tile_func(key, name)
    isa = isa if isa != "vnni512" or int8_intrin.wide_fits(key) else "vnni-vbmi"
    func = te.create_prim_func(_compute(key, True, isa == "vnni512"))
    name = name or kernel_name(key)
    func = _schedule(func, key, isa, True).with_attr("global_symbol", name).with_attr(INT8_ATTR, name)
    return hand_scheduled(func)


def int8_acc_func(key: layout.KernelKey, isa: str, name: str = "matq_int8_acc") -> tirx.PrimFunc:
    """The integer part alone: acc int32 [M, N, G] from X and P (pins the kernel's integer path to act_quant); the
    vpdpbusd kernels only (the AMX kernel's integer path is pinned through its output, test_int8_amx.py)."""
    if isa in (int8_intrin.AMX, int8_intrin.TILES):
        raise ValueError(f"int8_acc_func: no integer-only form on {isa!r} (AMX: test_int8_amx.py pins its output; "
                         "tiles: int8_tiles.int8_tile_acc_func)")
    isa = isa if isa != "vnni512" or int8_intrin.wide_fits(key) else "vnni-vbmi"
    func = te.create_prim_func(_compute(key, False, isa == "vnni512"))
    return _schedule(func, key, isa, False).with_attr("global_symbol", name)
