"""x86 byte dot-product tensor intrinsics of the int8-activation kernels, and which one a target gets.

One description for every ISA: eight int32 lanes, each adding a 4-byte dot product of unsigned weight codes and
signed int8 activations (the operand signs of vpdpbusd / vpmaddubsw, weights in the unsigned slot):

    C[i] += sum_j A[i, j] * B[i, j]      A uint8 [8, 4] (codes), B int8 [8, 4] (activations), C int32 [8]

Implementations (one 256-bit register per operand):
    vnni       vpdpbusd (AVX-VNNI, or AVX512-VNNI with AVX512-VL): exact for any codes; ISA "vnni-vbmi" is the
               same dot product with a vpmultishiftqb decode (int8_decode), the 256-bit form of "vnni512"
    avx2       vpmaddubsw + vpmaddwd(1): the int16 pair sums saturate above 32767; |B| <= 127, so exact for codes
               <= 127 (r <= 7)
    avx2_r8    r = 8 on AVX2: codes split into their low 7 bits and the top bit (each pair sum <= 2*128*127),
               two vpmaddubsw + two vpmaddwd, exact

and on AVX2 a group form over a weight group's nb blocks (nb = 2, 4): the nb vpmaddubsw pair sums added in int16
(vpaddw), then one vpmaddwd, where nb * 2 * (2^r - 1) * 127 <= 32767 (g = 64: r <= 6; g = 128: r <= 5).

ISA "vnni512" (AVX512-VNNI with VBMI and BW) has a 512-bit form: the same description over 16 lanes, one
vpdpbusd on zmm registers per 64 codes (two layout blocks, decoded together: int8_decode.wide_code). A build
gives it the kernels whose rows are long enough to repay it (kernel_isa); the others take "vnni-vbmi".
"""
from __future__ import annotations

from matq_compile._tvm import s_tir  # first: it sizes TVM's thread pool before tvm is imported
from tvm.script import tirx as T

INTRINS = {"vnni": "matq_dot_8x4_u8s8_vnni", "avx2": "matq_dot_8x4_u8s8_avx2",
           "avx2_r8": "matq_dot_8x4_u8s8_avx2_r8", "vnni512": "matq_dot_16x4_u8s8_vnni512"}
ISAS = ("vnni512", "vnni-vbmi", "vnni", "avx2")
AMX = "amx"  # a target ISA beyond ISAS: "vnni512" plus AMX-INT8 tiles for the kernels of int8_amx.fits
# the kernel ISA of slices a "vnni512" or "amx" build keeps in the tile arrangement (tiles.py, int8_tiles.py)
TILES = "tiles"
WIDE_CODES = 64  # codes per 512-bit intrinsic call (16 lanes x 4 bytes): two layout blocks
# Groups per row from which a kernel takes the 512-bit form (one activation row: True; several: False): its per-row
# and per-tile work does not shrink with the width. Measured on a 2-core AVX-512 Xeon (warm, int4, built modules,
# medians over 6 buffer placements, us, 512 / 256 bits): M = 1, 1536 x K: K = 512 11.8 / 9.5, 576 12.5 / 20.0,
# 640 13.2 / 16.5, 1024 17.4 / 22.7; M = 16: 1536 x 576 121 / 96, 576 x 1536 96 / 93, 4096 x 4096 14 % faster.
WIDE_MIN_GROUPS = {True: 9, False: 32}


@T.prim_func(s_tir=True)
def _desc(A: T.Buffer((8, 4), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
          C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:8, 0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        for i, j in T.grid(8, 4):
            with T.sblock("update"):
                vi, vj = T.axis.remap("SR", [i, j])
                C[vi] = C[vi] + T.Cast("int32", A[vi, vj]) * T.Cast("int32", B[vi, vj])


@T.prim_func(s_tir=True)
def _vnni(A: T.Buffer((8, 4), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
          C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:8, 0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(  # LLVM 22: byte-vector operands
            "int32x8", "llvm.x86.avx512.vpdpbusd.256", C.vload([0], "int32x8"),
            T.reinterpret("int8x32", A.vload([0, 0], "uint8x32")), B.vload([0, 0], "int8x32"))


@T.prim_func(s_tir=True)
def _desc16(A: T.Buffer((16, 4), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
            C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:16, 0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i, j in T.grid(16, 4):
            with T.sblock("update"):
                vi, vj = T.axis.remap("SR", [i, j])
                C[vi] = C[vi] + T.Cast("int32", A[vi, vj]) * T.Cast("int32", B[vi, vj])


@T.prim_func(s_tir=True)
def _vnni512(A: T.Buffer((16, 4), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:16, 0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            "int32x16", "llvm.x86.avx512.vpdpbusd.512", C.vload([0], "int32x16"),
            T.reinterpret("int8x64", A.vload([0, 0], "uint8x64")), B.vload([0, 0], "int8x64"))


def _madd(a, b):
    """vpmaddubsw(a u8, b s8) -> int16 pair sums, then vpmaddwd with ones -> int32 lanes."""
    pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", a, b)
    return T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16))


@T.prim_func(s_tir=True)
def _avx2(A: T.Buffer((8, 4), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
          C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:8, 0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + _madd(
            T.reinterpret("int8x32", A.vload([0, 0], "uint8x32")), B.vload([0, 0], "int8x32"))


@T.prim_func(s_tir=True)
def _avx2_r8(A: T.Buffer((8, 4), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:8, 0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        a = A.vload([0, 0], "uint8x32")
        b = B.vload([0, 0], "int8x32")
        lo = T.reinterpret("int8x32", a & T.broadcast(T.uint8(127), 32))
        hi = T.reinterpret("int8x32", a & T.broadcast(T.uint8(128), 32))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + _madd(lo, b) + _madd(hi, b)


def _group_pair(nb: int):
    """(desc, impl) of the AVX2 group intrinsic: C[i] += sum_{b, j} A[b, i, j] * B[b, i, j] over nb blocks, the
    nb vpmaddubsw pair sums added as int16 (vpaddw) and widened by one vpmaddwd: exact while nb pair sums fit in
    int16 (group_intrin_for checks the bound); B's blocks may lie apart (one activation row of several)."""
    sb = T.int32()

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((nb, 8, 4), "uint8", offset_factor=1),
             B: T.Buffer((nb, 8, 4), "int8", offset_factor=1, strides=(sb, 4, 1)),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:nb, 0:8, 0:4], B[0:nb, 0:8, 0:4])
            T.writes(C[0:8])
            for b, i, j in T.grid(nb, 8, 4):
                with T.sblock("update"):
                    vb, vi, vj = T.axis.remap("RSR", [b, i, j])
                    C[vi] = C[vi] + T.Cast("int32", A[vb, vi, vj]) * T.Cast("int32", B[vb, vi, vj])

    def pairs(A, B, b):
        return T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw",
                                       T.reinterpret("int8x32", A.vload([b, 0, 0], "uint8x32")),
                                       B.vload([b, 0, 0], "int8x32"))

    def summed(A, B):
        acc = pairs(A, B, 0)
        for b in range(1, nb):
            acc = acc + pairs(A, B, b)
        return acc

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((nb, 8, 4), "uint8", offset_factor=1),
             B: T.Buffer((nb, 8, 4), "int8", offset_factor=1, strides=(sb, 4, 1)),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:nb, 0:8, 0:4], B[0:nb, 0:8, 0:4])
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
                "int32x8", "llvm.x86.avx2.pmadd.wd", summed(A, B), T.broadcast(T.int16(1), 16))

    return desc, impl


def _zero_lanes_pair(groups: int):
    """(desc, impl) of the zero term in a row's 16 fold lanes: out[l] = zx[l] * S[l] * Z[l] for the row's `groups`
    (< 16) half-precision scales and zeros, zx zero past them. The description clamps its index (every read in
    bounds, the product 0 there as zx is); the implementation loads the row's S and Z with zero-masked (fault-free)
    vmovdqu16, one load each instead of a scalar chain over the groups."""
    lanes = T.ramp(T.int64(0), T.int64(1), 16)  # built here: a name bound inside a script is a mutable local
    last, mask = T.int64(groups - 1), lanes < T.broadcast(T.int64(groups), 16)

    @T.prim_func(s_tir=True)
    def desc(S: T.Buffer((groups,), "float16", offset_factor=1), Z: T.Buffer((groups,), "float16", offset_factor=1),
             zx: T.Buffer((16,), "float32", offset_factor=1), out: T.Buffer((16,), "float32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(zx[0:16], S[0:groups], Z[0:groups])
            T.writes(out[0:16])
            for li in T.serial(T.int64(16)):
                with T.sblock("update"):
                    vl = T.axis.remap("S", [li])
                    out[vl] = zx[vl] * T.Cast("float32", S[T.min(vl, last)]) * T.Cast("float32", Z[T.min(vl, last)])

    @T.prim_func(s_tir=True)
    def impl(S: T.Buffer((groups,), "float16", offset_factor=1), Z: T.Buffer((groups,), "float16", offset_factor=1),
             zx: T.Buffer((16,), "float32", offset_factor=1), out: T.Buffer((16,), "float32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(zx[0:16], S[0:groups], Z[0:groups])
            T.writes(out[0:16])
            # plain views of the rows: TVM lowers no predicated access to a tensorized operand itself
            s = T.decl_buffer((groups,), "float16", data=S.data, elem_offset=S.elem_offset)
            z = T.decl_buffer((groups,), "float16", data=Z.data, elem_offset=Z.elem_offset)
            out[lanes] = zx.vload([0], "float32x16") * T.Cast(
                "float32x16", T.masked_load("float16x16", s, lanes, mask)) * T.Cast(
                "float32x16", T.masked_load("float16x16", z, lanes, mask))

    return desc, impl


def zero_lanes_intrin(groups: int) -> str:
    """The intrinsic of _zero_lanes_pair for rows of `groups` groups (1 < groups < 16; AVX512-BW: vnni512 kernels)."""
    if not 1 < groups < 16:
        raise ValueError(f"the zero term fills 16 lanes with 2..15 groups, not {groups}")
    name = f"matq_zero_lanes_{groups}x16"
    s_tir.TensorIntrin.register(name, *_zero_lanes_pair(groups), override=True)
    return name


_IMPLS = {"vnni": _vnni, "avx2": _avx2, "avx2_r8": _avx2_r8, "vnni512": _vnni512}
GROUP_BLOCKS = (2, 4)  # blocks per group the int16 group intrinsic is registered for (g = 64, 128)
_registered = False


def _group_name(nb: int) -> str:
    return f"matq_dot_{nb}x8x4_u8s8_avx2_i16"


def register() -> None:
    """Register the intrinsics with TVM once per process."""
    global _registered
    if not _registered:
        for kind, name in INTRINS.items():
            s_tir.TensorIntrin.register(name, _desc16 if kind == "vnni512" else _desc, _IMPLS[kind], override=True)
        for nb in GROUP_BLOCKS:
            s_tir.TensorIntrin.register(_group_name(nb), *_group_pair(nb), override=True)
        _registered = True


def group_intrin_for(isa: str, bits: int, nb: int) -> str | None:
    """The intrinsic that sums a whole group of nb blocks in int16 before widening (one vpmaddwd per group instead
    of per block), where that is exact: AVX2, and nb pair sums of codes <= 2^bits - 1 times |xq| <= 127 stay within
    int16 (g = 64: r <= 6; g = 128: r <= 5). None: use intrin_for block by block."""
    if isa != "avx2" or nb not in GROUP_BLOCKS or nb * 2 * ((1 << bits) - 1) * 127 > 32767:
        return None
    register()
    return _group_name(nb)


def intrin_for(isa: str, bits: int) -> str:
    """The intrinsic name a kernel of `bits` uses on `isa` (one of ISAS)."""
    if isa not in ISAS:
        raise ValueError(f"unknown int8 ISA {isa!r}; expected one of {ISAS}")
    register()
    if isa == "vnni512":
        return INTRINS[isa]
    return INTRINS["avx2_r8" if isa == "avx2" and bits == 8 else "vnni" if isa.startswith("vnni") else isa]


def decodes_with_multishift(isa: str) -> bool:
    """Whether kernels on `isa` decode their bit planes with vpmultishiftqb (AVX512-VBMI, int8_decode)."""
    return isa in ("vnni512", "vnni-vbmi")


def wide_fits(key) -> bool:
    """Whether the kernel of `key` (layout.KernelKey) has a 512-bit form: groups of whole 64-code pairs of blocks
    and the dense layout (a switchable build's planes decode block by block)."""
    return key.group_size % WIDE_CODES == 0 and not key.nested


def kernel_isa(isa: str, key) -> str:
    """The ISA a build for a target of `isa` gives the kernel of `key`: on "vnni512" and "amx" targets the tile
    kernels (TILES) at every batch for the slices that have them (int8_tiles.fits: r = 2, 3, 4, 8; the
    build keeps their arrays in the tile arrangement, tiled()); else on "amx" targets AMX tiles where the kernel
    has that form (int8_amx.fits: prefill chunks), else the 512-bit form where it fits and pays off (long rows,
    WIDE_MIN_GROUPS), else the same CPU's 256-bit form."""
    if tiled(isa, key):
        return TILES
    if isa == AMX:
        from matq_compile.lower import int8_amx

        if int8_amx.fits(key):
            return AMX
        isa = "vnni512"
    if isa != "vnni512":
        return isa
    return isa if wide_fits(key) and key.n_groups >= WIDE_MIN_GROUPS[key.m_bucket == 1] else "vnni-vbmi"


def tiled(isa: str | None, key) -> bool:
    """Whether a build for a target of `isa` keeps the slice of `key` (any batch bucket) in the tile arrangement
    and runs the tile kernels for it. Measured on a 2-core AVX-512 Xeon, 16 calls in a row on their own weights
    (a decode step's pattern), us per call, row-major / tiles: 3072 x 576 r = 2 21.5 / 15.0, r = 4 23.4 / 21.0,
    r = 8 36.2 / 36.5; 576 x 1536 r = 2 11.3 / 9.0; M = 16 (against AMX) 3072 x 576 r = 4 88-140 / 105."""
    if isa not in ("vnni512", AMX):
        return False
    from matq_compile.lower import int8_tiles

    return int8_tiles.fits(key)


def target_isa(target) -> str | None:
    """The int8 dot-product ISA of a TVM llvm target: "amx" (vnni512 with AMX-INT8 tiles), "vnni512", "vnni",
    "avx2", or None (no byte dot product: refuse)."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return None
    with target:
        has = {f: bool(codegen.target_has_features(f, target))
               for f in ("avx2", "avxvnni", "avx512vnni", "avx512vl", "avx512vbmi", "avx512bw")}
    if has["avx512vnni"] and has["avx512vbmi"] and has["avx512bw"] and has["avx512vl"]:
        from matq_compile.lower import int8_amx

        if int8_amx.target_has_amx(target):
            return AMX  # its prefill-chunk kernels run on tiles, the others as on "vnni512" (kernel_isa)
        return "vnni512"  # its kernels of short rows take the 256-bit form "vnni-vbmi" (kernel_isa)
    if has["avxvnni"] or (has["avx512vnni"] and has["avx512vl"]):
        return "vnni"
    return "avx2" if has["avx2"] else None


def check_target(spec) -> str:
    """The ISA `spec` runs int8-activation kernels with; ValueError (one line) where it has none."""
    isa = None if spec.is_gpu else target_isa(spec.to_tvm())
    if isa is None:
        where = "a CUDA target" if spec.is_gpu else f"target {spec.name} ({spec.target.get('mcpu', 'generic')})"
        raise ValueError(f"--act int8 needs an x86 CPU target with AVX2 (vpmaddubsw) or AVX-VNNI/AVX512-VNNI "
                         f"(vpdpbusd); {where} has neither; use --act float")
    return isa


__all__ = ["AMX", "INTRINS", "ISAS", "TILES", "WIDE_CODES", "WIDE_MIN_GROUPS", "check_target",
           "decodes_with_multishift", "group_intrin_for", "intrin_for", "kernel_isa", "register", "target_isa",
           "tiled", "wide_fits", "zero_lanes_intrin"]
