"""Decode one packed 32-code block (layout.py bit planes) into 32 unsigned code bytes in natural order, as a
tensor intrinsic per r: the int8 kernels' "wcode" block is tensorized with it, so the unpack works on bytes.

Written element-wise, LLVM widens every code to an int32 lane and packs the lanes back into bytes (≈ 7 ops per
8 codes); on whole registers each plane costs a few byte ops per 32 codes:

    w = 8   the plane's 8 words are the 32 code bytes
    w = 4   16 bytes; low and high nibbles (codes 2t and 2t+1) interleaved
    w = 2   8 bytes; the four 2-bit fields of byte t are codes 4t..4t+3
    w = 1   4 bytes; byte t replicated to 8 lanes, one bit per lane (and with 1 << s, min with 1)

and planes combine with a byte shift and an or. The description is the element-wise expression `block_code`,
also used by the kernel's compute, so tensorize matches them exactly; tests pin both to layout.unpack.
"""
from __future__ import annotations

from matq_compile import layout
from matq_compile._tvm import s_tir, tirx
from tvm.script import tirx as T

BLOCK = layout.BLOCK
_registered: set[int] = set()


def block_code(P, n, word0, kl, bits: int) -> tirx.PrimExpr:
    """uint8 code of lane kl (0..31) of the block whose words start at P[n, word0] (layout.planes)."""
    code = None
    for w, off, shift in layout.planes(bits):
        per_word = 32 // w
        word = P[n, word0 + off + tirx.floordiv(kl, per_word)]
        v = (word >> (tirx.floormod(kl, per_word) * w).astype("uint32")) & tirx.const((1 << w) - 1, "uint32")
        v = v << tirx.const(shift, "uint32") if shift else v
        code = v if code is None else code | v
    return code.astype("uint8")


def _u8(v: int, lanes: int) -> tirx.PrimExpr:
    return tirx.Broadcast(tirx.const(v, "uint8"), lanes)


def _bytes(P, off: int, words: int) -> tirx.PrimExpr:
    return T.reinterpret(f"uint8x{4 * words}", P.vload([0, off], f"uint32x{words}" if words > 1 else "uint32"))


def _plane(P, w: int, off: int) -> tirx.PrimExpr:
    """uint8x32 values 0..2^w-1 of the w-bit plane at word `off`, code k in lane k."""
    x = _bytes(P, off, w)
    if w == 8:
        return x
    if w == 4:
        lo, hi = x & _u8(15, 16), x >> _u8(4, 16)
        return tirx.Shuffle([lo, hi], [i // 2 + 16 * (i % 2) for i in range(BLOCK)])
    if w == 2:
        f = [(x >> _u8(2 * s, 8)) & _u8(3, 8) if s else x & _u8(3, 8) for s in range(4)]
        return tirx.Shuffle(f, [(i % 4) * 8 + i // 4 for i in range(BLOCK)])
    rep = tirx.Shuffle([x] * 8, [i // 8 for i in range(BLOCK)])  # a shuffle draws at most its input lanes
    bit = tirx.Shuffle([tirx.const(1 << (i % 8), "uint8") for i in range(BLOCK)], list(range(BLOCK)))
    return tirx.min(rep & bit, _u8(1, BLOCK))


def _code_vector(P, bits: int) -> tirx.PrimExpr:
    code = None
    for w, off, shift in layout.planes(bits):
        v = _plane(P, w, off)
        v = v << _u8(shift, BLOCK) if shift else v
        code = v if code is None else code | v
    return code


def _funcs(bits: int):
    @T.prim_func(s_tir=True)
    def desc(P: T.Buffer((1, bits), "uint32", offset_factor=1),
             W: T.Buffer((1, 1, 8, 4), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(P[0, 0:bits])
            T.writes(W[0, 0, 0:8, 0:4])
            for i, j in T.grid(8, 4):
                with T.sblock("wcode"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    T.reads(P[0, 0:bits])  # the whole block (the kernel annotates its block the same way)
                    T.writes(W[0, 0, vi, vj])
                    W[0, 0, vi, vj] = block_code(P, 0, 0, vi * 4 + vj, bits)

    @T.prim_func(s_tir=True)
    def impl(P: T.Buffer((1, bits), "uint32", offset_factor=1),
             W: T.Buffer((1, 1, 8, 4), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(P[0, 0:bits])
            T.writes(W[0, 0, 0:8, 0:4])
            W.vstore([0, 0, 0, 0], _code_vector(P, bits))

    return desc, impl


def intrin_name(bits: int) -> str:
    """The registered decode intrinsic of r-bit blocks."""
    if bits not in _registered:
        s_tir.TensorIntrin.register(f"matq_decode_block_b{bits}", *_funcs(bits), override=True)
        _registered.add(bits)
    return f"matq_decode_block_b{bits}"
