"""AMX tile kernels for int8-activation prefill chunks (static M = 16) on x86 CPUs with AMX-INT8.

The same numerics as int8_kernels (activations quantized per group by act_quant's rule, integer products, scales
and zero once per group in float32), computed with one `tdpbusd` per 16 output rows x 16 activation rows x 64
codes: 16 x 16 x 64 products per instruction, against 16 x 64 for a 512-bit `vpdpbusd`.

    "xq"     xq[q, i, m, j] int8: the group's B tile, 16 rows of 4 codes x 16 activation rows (AMX's VNNI layout),
             codes in the 512-bit decode's lane order (int8_decode.wide_code), as the weight tile's
    "wcode"  wcode[n, q, i, j] uint8: one 64-code group of row n, decoded by the 512-bit intrinsic; a task's 16
             rows are its A tiles (row stride K bytes)
    "igemm"  part[q, n, m] int32 = sum_{i, j} wcode[n, q, i, j] * xq[q, i, m, j]   one tdpbusd per group, a task's
             whole row of groups in one call (TILE_INTRIN: the tile configuration loaded once per call)
    "afold"  fold[n, m] = sum_q part * sx[q, m] * S[n, q] - (sx xsum)[q, m] * (S Z)[n, q]   16 float lanes over m
    "amx"    Y[m, n] = fold[n, m]

Tile registers need the process's permission (Linux arch_prctl ARCH_REQ_XCOMP_PERM): matq_compile.amx.request()
before a module with these kernels runs (the runtimes do it for builds whose target has AMX).
"""
from __future__ import annotations

from matq_compile import act_quant, amx, layout
from matq_compile._tvm import Schedule, i64, s_tir, te, tirx, tvm
from matq_compile.lower import int8_decode, int8_kernels
from matq_compile.lower.kernels import _weights, hand_scheduled
from tvm.script import tirx as T

TILE = 16  # rows of an AMX tile: output rows per task, and the activation rows of the M bucket
CODES = 64  # bytes per tile row: one group of 64 codes
_registered: set[str] = set()


def fits(key: layout.KernelKey) -> bool:
    """Whether `key` has an AMX kernel: a static chunk of 16 activation rows, groups of 64 codes of the dense
    layout (at least two), whole 16-row tiles of outputs."""
    return (key.m_bucket == TILE and key.group_size == CODES and not key.nested and key.N % TILE == 0
            and key.n_groups > 1 and int8_kernels.supports(key))


def target_has_amx(target) -> bool:
    """Whether a TVM llvm target may emit AMX-INT8 tile instructions."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return False
    with target:
        return all(bool(codegen.target_has_features(f, target)) for f in amx.FEATURES)


def _tile_funcs(groups: int):
    G = groups

    @T.prim_func(s_tir=True)
    def desc(W: T.Buffer((16, G, 16, 4), "uint8", offset_factor=1),
             X: T.Buffer((G, 16, 16, 4), "int8", offset_factor=1),
             C: T.Buffer((G, 16, 16), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:G, 0:16, 0:16], W[0:16, 0:G, 0:16, 0:4], X[0:G, 0:16, 0:16, 0:4])
            T.writes(C[0:G, 0:16, 0:16])
            for q, n, m, i, j in T.grid(T.int64(G), T.int64(16), T.int64(16), T.int64(16), T.int64(4)):
                with T.sblock("igemm"):
                    vq, vn, vm, vi, vj = T.axis.remap("SSSRR", [q, n, m, i, j])
                    C[vq, vn, vm] = C[vq, vn, vm] + (T.Cast("int32", W[vn, vq, vi, vj])
                                                     * T.Cast("int32", X[vq, vi, vm, vj]))

    row = T.int64(G * CODES)  # the A tiles' row stride: a task's decoded rows lie K bytes apart

    @T.prim_func(s_tir=True)
    def impl(W: T.Buffer((16, G, 16, 4), "uint8", offset_factor=1),
             X: T.Buffer((G, 16, 16, 4), "int8", offset_factor=1),
             C: T.Buffer((G, 16, 16), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:G, 0:16, 0:16], W[0:16, 0:G, 0:16, 0:4], X[0:G, 0:16, 0:16, 0:4])
            T.writes(C[0:G, 0:16, 0:16])
            cfg = T.decl_buffer((64,), "uint8")
            for b in range(64):
                cfg[b] = T.uint8(0)
            cfg[0] = T.uint8(1)  # palette 1; tiles 0..5: 16 rows x 64 bytes
            for t in range(6):
                cfg[16 + 2 * t] = T.uint8(CODES)
                cfg[48 + t] = T.uint8(TILE)
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0])))
            for q in range(G):
                # tile 0: C (the zeroed sums, read back), 1: A (16 decoded rows), 2: B (the activations)
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(0), T.address_of(C[q, 0, 0]),
                                              T.int64(64)))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(1),
                                              T.address_of(W[0, q, 0, 0]), row))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(2),
                                              T.address_of(X[q, 0, 0, 0]), T.int64(64)))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.uint8(0), T.uint8(1), T.uint8(2)))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(0), T.address_of(C[q, 0, 0]),
                                              T.int64(64)))

    return desc, impl


def tile_intrin_name(groups: int) -> str:
    """The registered AMX intrinsic of one task: 16 rows x `groups` groups of 64 codes x 16 activation rows."""
    name = f"matq_amx_tile_g{groups}"
    if name not in _registered:
        s_tir.TensorIntrin.register(name, *_tile_funcs(groups), override=True)
        _registered.add(name)
    return name


def _compute(key: layout.KernelKey):
    if not fits(key):
        raise ValueError(f"{key.name}: the AMX kernel needs M = {TILE}, groups of {CODES} codes of the dense layout "
                         f"and N a multiple of {TILE}")
    M, N, K, G, g = i64(TILE), i64(key.N), i64(key.K), i64(key.n_groups), i64(key.group_size)
    f32, qmax = "float32", tirx.const(act_quant.QMAX, "float32")
    X = te.placeholder((M, K), f32, name="X")
    P, S, Z = _weights(key)
    amax, inv = int8_kernels.group_scales(X, G, g)
    sx = te.compute((G, M), lambda q, m: amax[m, q] / qmax, name="ascale")

    def quant(q, i, m, j):
        return int8_kernels.quantize(X[m, q * g + int8_decode.wide_code(i * i64(4) + j, key.bits)], inv[m, q])

    xq = te.compute((G, i64(16), M, i64(4)), quant, name="xq")
    xi, xj = te.reduce_axis((i64(0), i64(16)), name="xi"), te.reduce_axis((i64(0), i64(4)), name="xj")
    xsum = te.compute((G, M), lambda q, m: te.sum(xq[q, xi, m, xj].astype("int32"), axis=[xi, xj]), name="xsum")
    zx = te.compute((G, M), lambda q, m: sx[q, m] * xsum[q, m].astype(f32), name="zx")
    words = 2 * key.bits  # two layout blocks per 64-code group
    W = te.compute((N, G, i64(16), i64(4)),
                   lambda n, q, i, j: int8_decode.block_code(P, n, q * i64(words), i, j, key.bits, True),
                   name="wcode")
    i, j = te.reduce_axis((i64(0), i64(16)), name="i"), te.reduce_axis((i64(0), i64(4)), name="j")
    part = te.compute((G, N, M), lambda q, n, m: te.sum(
        W[n, q, i, j].astype("int32") * xq[q, i, m, j].astype("int32"), axis=[i, j]), name="igemm")
    sf = te.compute((N, G), lambda n, q: S[n, q].astype(f32), name="sfloat")
    szf = te.compute((N, G), lambda n, q: S[n, q].astype(f32) * Z[n, q].astype(f32), name="szfloat")
    fq = te.reduce_axis((i64(0), G), name="fq")
    fold = te.compute((N, M), lambda n, m: te.sum(
        part[fq, n, m].astype(f32) * (sx[fq, m] * sf[n, fq]) - zx[fq, m] * szf[n, fq], axis=fq), name="afold")
    Y = te.compute((M, N), lambda m, n: fold[n, m], name="amx")
    return [X, P, S, Z, Y]


def _schedule(func: tirx.PrimFunc, key: layout.KernelKey) -> tirx.PrimFunc:
    sch = Schedule(tvm.IRModule({"main": func}))
    out = sch.get_sblock("amx")
    m, n = sch.get_loops(out)
    no, ni = sch.split(n, [None, TILE])
    sch.reorder(no, m, ni)
    sch.parallel(no)
    sch.vectorize(ni)
    fold = sch.get_sblock("afold")
    sch.compute_at(fold, no)
    fn, fm, fq = sch.get_loops(fold)[-3:]
    sch.reorder(fq, fn, fm)
    sch.vectorize(fm)
    sch.unroll(fn)
    sch.decompose_reduction(fold, fq)
    for name in ("sfloat", "szfloat"):
        block = sch.get_sblock(name)
        sch.compute_at(block, no)
        sch.vectorize(sch.get_loops(block)[-1])
    gemm = sch.get_sblock("igemm")
    sch.compute_at(gemm, no)
    q_loop = sch.get_loops(gemm)[1]
    init = sch.decompose_reduction(gemm, q_loop)
    sch.vectorize(sch.fuse(*sch.get_loops(init)[-2:]))
    wcode = sch.get_sblock("wcode")
    int8_kernels._read_whole_block(sch, wcode, 2 * key.bits)
    sch.compute_at(wcode, no)
    sch.tensorize(sch.get_loops(wcode)[-2], int8_decode.wide_intrin_name(key.bits))
    sch.tensorize(sch.get_loops(gemm)[1], tile_intrin_name(key.n_groups))
    xq = sch.get_sblock("xq")
    sch.vectorize(sch.get_loops(xq)[-1])
    int8_kernels.schedule_group_max(sch)
    return sch.mod["main"]


def int8_amx_func(key: layout.KernelKey, name: str | None = None) -> tirx.PrimFunc:
    """The scheduled AMX kernel of `key` (fits(key)); same signature and numerics as int8_kernels.int8_linear_func."""
    func = te.create_prim_func(_compute(key))
    name = name or int8_kernels.kernel_name(key)
    func = _schedule(func, key).with_attr("global_symbol", name).with_attr(int8_kernels.INT8_ATTR, name)
    return hand_scheduled(func)
