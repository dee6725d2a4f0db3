"""Decode one packed 32-code block (layout.py bit planes) into 32 unsigned code bytes, as a tensor intrinsic per
r: the int8 kernels' "wcode" block is tensorized with it, so the unpack works on whole byte vectors.

The bytes come out in a lane order chosen per r (`lane_code`: lane p holds code k = lane_code(p)), the order the
widest plane unpacks into with the fewest ops; the kernel quantizes the activations into the same order, so the
dot product over a block is the same integer sum (the packed layout itself is unchanged):

    natural  k = p                         r = 8      the plane's 8 words are the 32 code bytes
    nibble   k = 2 (p mod 16) + p div 16   r = 4..7   16 bytes: low nibbles, then high nibbles (and, shift, and)
    crumb    k = 4 (p mod 8) + p div 8     r = 2, 3   8 bytes broadcast to 4 quadwords shifted by 0, 2, 4, 6, and 3

The narrower planes of r = 3, 5, 6, 7 follow the widest plane's order: a 1-bit plane takes each lane's byte (a
byte shuffle) and bit (and with 1 << s, min with 1); a 2-bit plane in nibble order takes each lane's byte, shifts
the high half's quadwords by 2 and each odd lane by 4 (16-bit shift), and masks.

Planes combine with a byte shift and an or. Written element-wise instead, LLVM widened every code to an int32
lane and packed the lanes back into bytes (about 7 ops per 8 codes). The description is the element-wise
expression `block_code`, also used by the kernel's compute, so tensorize matches them exactly; tests pin both to
layout.unpack.
"""
from __future__ import annotations

from matq_compile import layout
from matq_compile._tvm import s_tir, tirx  # first: it sizes TVM's thread pool before tvm is imported
from tvm.script import tirx as T

BLOCK = layout.BLOCK
ORDERS = {2: "crumb", 3: "crumb", 4: "nibble", 5: "nibble", 6: "nibble", 7: "nibble", 8: "natural"}
_registered: set[int] = set()


def lane_code(p, bits: int):
    """The code index (0..31 within the block) held by lane p (an int or an index expression) for r = bits."""
    div, mod = (lambda a, b: a // b, lambda a, b: a % b) if isinstance(p, int) else (tirx.floordiv, tirx.floormod)
    order = ORDERS[bits]
    if order == "nibble":
        return 2 * mod(p, 16) + div(p, 16)
    if order == "crumb":
        return 4 * mod(p, 8) + div(p, 8)
    return p


def block_code(P, n, word0, i, j, bits: int) -> tirx.PrimExpr:
    """uint8 code in lane i*4 + j of the block whose words start at P[n, word0] (layout.planes). The index
    expressions are simplified under 0 <= i < 8, 0 <= j < 4 here, for the kernel and the description alike:
    tensorize compares them structurally, and TVMScript simplifies the description's on its own."""
    from tvm.ir import Range
    from tvm.sym import Analyzer

    ana = Analyzer()
    for v, extent in ((i, 8), (j, 4)):
        if isinstance(v, tirx.Var):
            ana.bind(v, Range(tirx.const(0, "int64"), tirx.const(extent, "int64")))  # kernel indices are int64
    kl = lane_code(i * 4 + j, bits)
    code = None
    for w, off, shift in layout.planes(bits):
        per_word = 32 // w
        word = P[n, word0 + ana.simplify(off + tirx.floordiv(kl, per_word))]
        v = (word >> ana.simplify(tirx.floormod(kl, per_word) * w).astype("uint32")) & tirx.const((1 << w) - 1,
                                                                                                    "uint32")
        v = v << tirx.const(shift, "uint32") if shift else v
        code = v if code is None else code | v
    return code.astype("uint8")


def _u8(v: int, lanes: int) -> tirx.PrimExpr:
    return tirx.Broadcast(tirx.const(v, "uint8"), lanes)


def _bytes(P, off: int, words: int) -> tirx.PrimExpr:
    return T.reinterpret(f"uint8x{4 * words}", P.vload([0, off], f"uint32x{words}" if words > 1 else "uint32"))


def _plane(P, w: int, off: int, bits: int) -> tirx.PrimExpr:
    """uint8x32 values 0..2^w-1 of the w-bit plane at word `off`, lane p holding code lane_code(p, bits)."""
    x, order = _bytes(P, off, w), ORDERS[bits]
    ks = [lane_code(p, bits) for p in range(BLOCK)]
    if w == 1:
        rep = tirx.Shuffle([x] * 8, [k // 8 for k in ks])  # a shuffle draws at most its input lanes
        bit = tirx.Shuffle([tirx.const(1 << (k % 8), "uint8") for k in ks], list(range(BLOCK)))
        return tirx.min(rep & bit, _u8(1, BLOCK))
    if (w, order) == (8, "natural"):
        return x
    if (w, order) == (4, "nibble"):
        return tirx.Shuffle([x & _u8(15, 16), x >> _u8(4, 16)], list(range(BLOCK)))
    if (w, order) == (2, "crumb"):
        quads = T.reinterpret("uint64x4", tirx.Shuffle([x] * 4, list(range(BLOCK))))
        shifts = tirx.Shuffle([tirx.const(2 * s, "uint64") for s in range(4)], list(range(4)))
        return T.reinterpret("uint8x32", quads >> shifts) & _u8(3, BLOCK)
    if (w, order) == (2, "nibble"):  # even lanes want field 0 / 1 (low half / high half), odd lanes field 2 / 3
        rep = tirx.Shuffle([x] * 4, [k // 4 for k in ks])  # each lane its code's byte
        quads = T.reinterpret("uint64x4", rep) >> tirx.Shuffle(
            [tirx.const(s, "uint64") for s in (0, 0, 2, 2)], list(range(4)))  # high half: fields 1, 3 down by 2
        pairs = T.reinterpret("uint16x16", quads)  # (even lane, odd lane): keep bits 0-1, take bits 12-13 to 8-9
        even = pairs & tirx.Broadcast(tirx.const(0x0003, "uint16"), 16)
        odd = (pairs >> tirx.Broadcast(tirx.const(4, "uint16"), 16)) & tirx.Broadcast(tirx.const(0x0300, "uint16"), 16)
        return T.reinterpret("uint8x32", even | odd)
    raise ValueError(f"no {w}-bit plane decode in {order} lane order")


def _code_vector(P, bits: int) -> tirx.PrimExpr:
    code = None
    for w, off, shift in layout.planes(bits):
        v = _plane(P, w, off, bits)
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
            for i, j in T.grid(T.int64(8), T.int64(4)):  # int64 as in the kernel: the same index simplification
                with T.sblock("wcode"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    T.reads(P[0, 0:bits])  # the whole block (the kernel annotates its block the same way)
                    T.writes(W[0, 0, vi, vj])
                    W[0, 0, vi, vj] = block_code(P, 0, 0, vi, vj, bits)

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
