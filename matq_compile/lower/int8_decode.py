"""Decode one packed 32-code block (layout.py bit planes) into 32 unsigned code bytes, as a tensor intrinsic per
r: the int8 kernels' "wcode" block is tensorized with it, so the unpack works on whole byte vectors.

The bytes come out in a lane order chosen per r (`lane_code`: lane p holds code k = lane_code(p)), the order the
widest plane unpacks into with the fewest ops; the kernel quantizes the activations into the same order, so the
dot product over a block is the same integer sum (the packed layout itself is unchanged):

    natural  k = p                         r = 8      the plane's 8 words are the 32 code bytes
    nibble   k = 2 (p mod 16) + p div 16   r = 4..7   16 bytes in both halves (one broadcast load), the high
                                                    half's quadwords shifted by 4, and 15
    crumb    k = 4 (p mod 8) + p div 8     r = 2, 3   8 bytes broadcast to 4 quadwords shifted by 0, 2, 4, 6, and 3

The narrower planes of r = 3, 5, 6, 7 follow the widest plane's order: a 1-bit plane takes each lane's byte (a
byte shuffle) and bit (and with 1 << s, min with 1); a 2-bit plane in nibble order takes each lane's byte, shifts
the high half's quadwords by 2 and each odd lane by 4 (16-bit shift), and masks.

Planes combine with a byte shift and an or. Written element-wise instead, LLVM widened every code to an int32
lane and packed the lanes back into bytes (about 7 ops per 8 codes). The description is the element-wise
expression `block_code`, also used by the kernel's compute, so tensorize matches them exactly; tests pin both to
layout.unpack.

On AVX512-VBMI (`multishift`, ISA "vnni-vbmi") every plane is instead one vpmultishiftqb: the plane's bytes
broadcast from memory so that each lane's quadword holds its field, each lane rotating its own field to the bit
the plane takes in the code, then a mask; the planes of r = 3, 5, 6, 7 merge by ternary logic. Same lane orders
and bytes, so activations and outputs do not change; r = 3 takes 5 ops per block instead of 9, r = 2 2 instead
of 3.

The 512-bit decode (`wide`) of two blocks gives each plane's qwords the words their fields lie in. One load
serves a one-plane width (r = 2, 4: a broadcast; r = 8: the words). The planes of r = 3, 5, 6, 7 lie apart, and
a dword permute of all the blocks' words (plus LLVM's inserts to load an odd word count) cost up to 8 shuffles on
port 5 per 64 codes; instead each plane loads only its own words (`plane_loads`, `_plane_words`): a 4-bit plane
as its two blocks' 16-byte runs, a narrower one as 64-bit loads shared by as many qwords as possible, one permute
per further load; r = 3 takes two 128-bit broadcasts (words 0-3 and 2-5), its 1-bit plane the second as it is
and its 2-bit plane the first with qwords 5 and 7 from the second, blended by vpternlogd (its own odd-qword lane
order, wide_code, makes that possible). Vector ops per 64 codes, r = 3 / 5 / 6 / 7: 7 / 8 / 10 / 12 -> 5 / 7 / 7 /
10 (4096 x 4096, M = 1, warm, built modules, against the permute form in the same run: r = 3 238 -> 216 us,
r = 6 332 -> 279, r = 7 707 -> 352).

Nested planes (a switchable build, planes.py) lie in separate arrays of one buffer, so a block's words are not one
region: each plane the slice reads is decoded on its own (`plane_code`, intrinsic `plane_intrin_name`) into bytes
in the dense slice's lane order, and the kernel combines them with byte ops. The same lane order makes the
switchable build's integer lanes, and so its float epilogue, bit-identical to the dedicated build's. A plane width
the order has no short decode for (a 2-bit plane in natural order: r = 8 read from 2-bit planes) takes each lane's
byte and tests its bits one by one (two ops per bit, on 32 codes at once).
"""
from __future__ import annotations

from matq_compile import layout
from matq_compile._tvm import s_tir, tirx  # first: it sizes TVM's thread pool before tvm is imported
from tvm.script import tirx as T

BLOCK = layout.BLOCK
# Each decode also prefetches the words 4 KB ahead into L2: a decode step reads every weight once, cold, and with
# the hardware prefetcher alone a core kept too few misses in flight (2-core Zen 3, 4096 x 4096 int4 with weights
# rotated beyond the L3: 594 -> 458 us, the latter at the stream bandwidth). Prefetching past P's end never faults.
PREFETCH_WORDS = 1024
ORDERS = {2: "crumb", 3: "crumb", 4: "nibble", 5: "nibble", 6: "nibble", 7: "nibble", 8: "natural"}
_registered: set[str] = set()


def lane_code(p, order: str):
    """The code index (0..31 within the block) held by lane p (an int or an index expression) in lane `order`."""
    div, mod = (lambda a, b: a // b, lambda a, b: a % b) if isinstance(p, int) else (tirx.floordiv, tirx.floormod)
    if order == "nibble":
        return 2 * mod(p, 16) + div(p, 16)
    if order == "crumb":
        return 4 * mod(p, 8) + div(p, 8)
    return p


def wide_code(p, bits: int):
    """The code index (0..63 over two consecutive blocks) held by lane p of a 512-bit decode (`wide`), in the order
    whose widest plane takes one broadcast load, one vpmultishiftqb and one mask:

        r = 2     qword Q, byte t -> 32 (Q mod 2) + 4 t + Q div 2   the blocks' 2-bit planes (16 bytes) in each
                                                                    128-bit lane, qword Q taking field Q div 2
        r = 3     even Q as r = 2 (block 0); odd Q: block 1's code 16 (Q div 4) + 2 t + (Q div 2) mod 2, so that
                  qwords 1, 3 take its first 2-bit word and 5, 7 its second (plane_loads)
        r = 4..7  half h, byte t  -> 32 (t div 16) + 2 (t mod 16) + h   the 4-bit planes (32 bytes) in both halves
        r = 8     p                                                 the two blocks' 64 bytes as they lie
    """
    div, mod = (lambda a, b: a // b, lambda a, b: a % b) if isinstance(p, int) else (tirx.floordiv, tirx.floormod)
    if bits == 3:
        q, t = div(p, 8), mod(p, 8)
        odd = mod(q, 2)
        return (1 - odd) * (4 * t + div(q, 2)) + odd * (32 + 16 * div(q, 4) + 2 * t + mod(div(q, 2), 2))
    if ORDERS[bits] == "crumb":
        return 32 * mod(div(p, 8), 2) + 4 * mod(p, 8) + div(p, 16)
    if ORDERS[bits] == "nibble":
        return 32 * div(mod(p, 32), 16) + 2 * mod(p, 16) + div(p, 32)
    return p


def block_code(P, n, word0, i, j, bits: int, wide: bool = False) -> tirx.PrimExpr:
    """uint8 code in lane i*4 + j of the block whose words start at P[n, word0] (layout.planes); wide: of the two
    consecutive blocks there, lanes in wide_code order. The index expressions are simplified under 0 <= i < 8
    (16 wide), 0 <= j < 4 here, for the kernel and the description alike: tensorize compares them structurally,
    and TVMScript simplifies the description's on its own."""
    ana = _lane_analyzer(i, j, 16 if wide else 8)
    if wide:
        c = ana.simplify(wide_code(i * 4 + j, bits))
        word0, kl = word0 + ana.simplify(tirx.floordiv(c, BLOCK) * bits), ana.simplify(tirx.floormod(c, BLOCK))
    else:
        kl = lane_code(i * 4 + j, ORDERS[bits])
    code = None
    for w, off, shift in layout.planes(bits):
        per_word = 32 // w
        word = P[n, word0 + ana.simplify(off + tirx.floordiv(kl, per_word))]
        v = (word >> ana.simplify(tirx.floormod(kl, per_word) * w).astype("uint32")) & tirx.const((1 << w) - 1,
                                                                                                    "uint32")
        v = v << tirx.const(shift, "uint32") if shift else v
        code = v if code is None else code | v
    return code.astype("uint8")


def plane_code(P, base, i, j, w: int, order: str) -> tirx.PrimExpr:
    """uint8 value of the w-bit plane in lane i*4 + j (lane `order`) of the block whose plane words start at
    P[base] (a 1-D buffer: the nested planes). Simplified as block_code is, for the same reason."""
    ana = _lane_analyzer(i, j)
    kl = lane_code(i * 4 + j, order)
    per_word = 32 // w
    word = P[base + ana.simplify(tirx.floordiv(kl, per_word))]
    v = (word >> ana.simplify(tirx.floormod(kl, per_word) * w).astype("uint32")) & tirx.const((1 << w) - 1, "uint32")
    return v.astype("uint8")


def _lane_analyzer(i, j, lanes: int = 8):
    from tvm.ir import Range
    from tvm.sym import Analyzer

    ana = Analyzer()
    for v, extent in ((i, lanes), (j, 4)):
        if isinstance(v, tirx.Var):
            ana.bind(v, Range(tirx.const(0, "int64"), tirx.const(extent, "int64")))  # kernel indices are int64
    return ana


def _u8(v: int, lanes: int) -> tirx.PrimExpr:
    return tirx.Broadcast(tirx.const(v, "uint8"), lanes)


def _bytes(P, index: list, words: int) -> tirx.PrimExpr:
    return T.reinterpret(f"uint8x{4 * words}", P.vload(index, f"uint32x{words}" if words > 1 else "uint32"))


def _plane(x: tirx.PrimExpr, w: int, order: str) -> tirx.PrimExpr:
    """uint8x32 values 0..2^w-1 of a w-bit plane from its 4w bytes x, lane p holding code lane_code(p, order)."""
    ks = [lane_code(p, order) for p in range(BLOCK)]
    if w == 1:
        rep = tirx.Shuffle([x] * 8, [k // 8 for k in ks])  # a shuffle draws at most its input lanes
        bit = tirx.Shuffle([tirx.const(1 << (k % 8), "uint8") for k in ks], list(range(BLOCK)))
        return tirx.min(rep & bit, _u8(1, BLOCK))
    if (w, order) == (8, "natural"):
        return x
    if (w, order) == (4, "nibble"):  # both halves the 16 bytes (a broadcast load), the high half shifted by 4
        both = T.reinterpret("uint64x4", tirx.Shuffle([x, x], list(range(BLOCK))))
        shifts = tirx.Shuffle([tirx.const(s, "uint64") for s in (0, 0, 4, 4)], list(range(4)))
        return T.reinterpret("uint8x32", both >> shifts) & _u8(15, BLOCK)
    if (w, order) == (2, "crumb"):
        quads = T.reinterpret("uint64x4", tirx.Shuffle([x] * 4, list(range(BLOCK))))
        shifts = tirx.Shuffle([tirx.const(2 * s, "uint64") for s in range(4)], list(range(4)))
        return T.reinterpret("uint8x32", quads >> shifts) & _u8(3, BLOCK)
    if (w, order) == (4, "natural"):  # lanes 2t, 2t+1 want the low and high nibble of byte t
        pairs = T.reinterpret("uint16x16", tirx.Shuffle([x] * 2, [k // 2 for k in ks]))
        low = pairs & tirx.Broadcast(tirx.const(0x000F, "uint16"), 16)
        high = (pairs >> tirx.Broadcast(tirx.const(4, "uint16"), 16)) & tirx.Broadcast(tirx.const(0x0F00, "uint16"), 16)
        return T.reinterpret("uint8x32", low | high)
    if (w, order) == (2, "nibble"):  # even lanes want field 0 / 1 (low half / high half), odd lanes field 2 / 3
        rep = tirx.Shuffle([x] * 4, [k // 4 for k in ks])  # each lane its code's byte
        quads = T.reinterpret("uint64x4", rep) >> tirx.Shuffle(
            [tirx.const(s, "uint64") for s in (0, 0, 2, 2)], list(range(4)))  # high half: fields 1, 3 down by 2
        pairs = T.reinterpret("uint16x16", quads)  # (even lane, odd lane): keep bits 0-1, take bits 12-13 to 8-9
        even = pairs & tirx.Broadcast(tirx.const(0x0003, "uint16"), 16)
        odd = (pairs >> tirx.Broadcast(tirx.const(4, "uint16"), 16)) & tirx.Broadcast(tirx.const(0x0300, "uint16"), 16)
        return T.reinterpret("uint8x32", even | odd)
    rep = tirx.Shuffle([x] * (8 // w), [k * w // 8 for k in ks])  # each lane its code's byte (w | 8: no straddle)
    code = None
    for b in range(w):
        bit = tirx.Shuffle([tirx.const(1 << (k * w % 8 + b), "uint8") for k in ks], list(range(BLOCK)))
        v = tirx.min(rep & bit, _u8(1, BLOCK))
        v = v << _u8(b, BLOCK) if b else v
        code = v if code is None else code | v
    return code


def _prefetch(address: tirx.PrimExpr) -> None:
    """Emit, in the intrinsic being written, a prefetcht1 (into L2) of `address` (PREFETCH_WORDS past the block)."""
    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", address, T.int32(0), T.int32(2), T.int32(1)))


def multishift_controls(w: int, shift: int, order: str) -> list[int]:
    """vpmultishiftqb control bytes that put lane p's w-bit field (code lane_code(p, order) of a plane whose 4w
    bytes are broadcast over the 32-byte vector) at bit `shift` of the lane: each qword holds plane bytes
    (8 q) mod 4w .. +7 (w = 1: the 32-bit word twice), and the rotate-select wraps within the qword."""
    ctrl = []
    for p in range(BLOCK):
        first_bit = 64 * (p // 8) % (32 * w)  # the plane bit at bit 0 of lane p's qword (0 for w <= 2)
        bit = lane_code(p, order) * w - first_bit
        if not 0 <= bit < 64:
            raise ValueError(f"a {w}-bit plane in {order} order has fields outside their lane's quadword")
        ctrl.append((bit - shift) % 64)
    return ctrl


def _multishift_plane(P, off: int, w: int, shift: int, order: str) -> tirx.PrimExpr:
    """uint8x32: the w-bit plane at word `off` of the block, each lane's field at bit `shift`, other bits 0."""
    x = tirx.Shuffle([_bytes(P, [0, off], w)] * (BLOCK // (4 * w)), list(range(BLOCK)))  # a broadcast load
    ctrl = tirx.Shuffle([tirx.const(c, "int8") for c in multishift_controls(w, shift, order)], list(range(BLOCK)))
    sel = T.call_llvm_pure_intrin("int8x32", "llvm.x86.avx512.pmultishift.qb.256", ctrl, T.reinterpret("int8x32", x))
    return T.reinterpret("uint8x32", sel) & _u8(((1 << w) - 1) << shift, BLOCK)


def _code_vector(P, bits: int, multishift: bool) -> tirx.PrimExpr:
    code = None
    for w, off, shift in layout.planes(bits):
        if multishift and w < 8:
            v = _multishift_plane(P, off, w, shift, ORDERS[bits])
        else:
            v = _plane(_bytes(P, [0, off], w), w, ORDERS[bits])
            v = v << _u8(shift, BLOCK) if shift else v
        code = v if code is None else code | v
    return code


def wide_plane_controls(bits: int, w: int, off: int, shift: int) -> tuple[list[int], list[int]]:
    """(dword index, control bytes) of one plane in a 512-bit decode: a dword permute of the two blocks' 2 r words
    that gives each qword the (at most two neighbouring) words its 8 lanes' fields lie in, and the vpmultishiftqb
    controls that then put lane p's field (code wide_code(p)) at bit `shift`."""
    index, ctrl = [], []
    for q in range(8):
        bits_at = []
        for p in range(8 * q, 8 * q + 8):
            blk, kl = divmod(wide_code(p, bits), BLOCK)
            bits_at.append(32 * (blk * bits + off) + kl * w)  # the field's first bit in the loaded words
        if ORDERS[bits] == "crumb":  # qword Q of a 128-bit broadcast of words s..s+3 (s even) holds s + 2 (Q mod 2)
            first = min(max(2 * (q % 2), min(bits_at) // 64 * 2), 2 * bits - 4 + 2 * (q % 2))
        else:
            first = min(min(bits_at) // 32, 2 * bits - 2)  # the pair stays inside the loaded words
        if max(bits_at) // 32 > first + 1:
            raise ValueError(f"a {w}-bit plane of r = {bits} has a qword's fields in more than two words")
        index += [first, first + 1]
        ctrl += [(b - 32 * first - shift) % 64 for b in bits_at]
    return index, ctrl


def plane_loads(bits: int, w: int, off: int, shift: int) -> tuple[list[int], list[int]]:
    """(word of each dword, vpmultishiftqb controls) of the w-bit plane of a several-plane width as the 512-bit
    decode loads it (module docstring): a 4-bit plane as the runs of 4 words its 128-bit chunks take; a narrower
    one with each qword a 64-bit load of two words holding its fields, chosen greedily so that the qwords share as
    few loads as possible (a 1-bit plane as one run was merged by LLVM with the other plane's loads into
    shuffles). The controls move by 32 bits where a qword's load starts a word before wide_plane_controls'."""
    index, ctrl = wide_plane_controls(bits, w, off, shift)
    if w == 4 or bits == 3:  # runs; r = 3: two 128-bit broadcasts, blended by qword (_plane_words)
        return index, ctrl
    need = [{index[2 * q] + (c + shift) % 64 // 32 for c in ctrl[8 * q:8 * q + 8]} for q in range(8)]
    starts: list[int | None] = [None] * 8
    while None in starts:  # the two-word load serving the most qwords still without one
        def fits(st: int) -> list[int]:
            return [q for q in range(8) if starts[q] is None and need[q] <= {st, st + 1}]

        best = max(range(2 * bits - 1), key=lambda st: len(fits(st)))
        for q in fits(best):
            starts[q] = best
    ctrl = [(c + 32 * (index[2 * (p // 8)] - starts[p // 8])) % 64 for p, c in enumerate(ctrl)]
    return [starts[d // 2] + d % 2 for d in range(16)], ctrl


def _plane_words(P, bits: int, index: list[int]) -> tirx.PrimExpr:
    """uint32x16 words P[0, index] (plane_loads): r = 3 as one or two 128-bit broadcasts blended by ternary logic
    (LLVM turned a blend shuffle of the two into a port-5 permute of 16-byte loads); runs of 4 words per 128-bit
    chunk; else 64-bit loads per qword, one permute per further load."""
    if bits == 3:
        bcast = [index[2 * q] - 2 * (q % 2) for q in range(8)]  # the broadcast (its first word) each qword takes
        runs = list(dict.fromkeys(bcast))
        loads = [tirx.Shuffle([P.vload([0, r], "uint32x4")] * 4, [d % 4 for d in range(16)]) for r in runs]
        if len(loads) == 1:
            return loads[0]
        mask = tirx.Shuffle([tirx.const(-1 if bcast[d // 2] == runs[1] else 0, "int32") for d in range(16)],
                            list(range(16)))
        return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.pternlog.d.512",
                                       T.reinterpret("int32x16", loads[0]), T.reinterpret("int32x16", loads[1]),
                                       mask, T.int32(0xD8))  # mask ? second : first
    chunks = [index[4 * c:4 * c + 4] for c in range(4)]
    if all(ch == list(range(ch[0], ch[0] + 4)) for ch in chunks) and len({ch[0] for ch in chunks}) > 1:
        runs = list(dict.fromkeys(ch[0] for ch in chunks))
        return tirx.Shuffle([P.vload([0, r], "uint32x4") for r in runs] * -(-4 // len(runs)),
                            [4 * runs.index(ch[0]) + d for ch in chunks for d in range(4)])
    out, starts = None, index[0::2]
    for st in dict.fromkeys(starts):
        b = T.reinterpret("uint32x16", tirx.Broadcast(T.reinterpret("uint64", P.vload([0, st], "uint32x2")), 8))
        out = b if out is None else tirx.Shuffle([out, b], [d + 16 * (starts[d // 2] == st) for d in range(16)])
    return out


def _wide_code_vector(P, bits: int) -> tirx.PrimExpr:
    """uint8x64 codes of the two blocks at P[0, 0:2 r] in wide_code order: per plane its words (a broadcast load
    of a one-plane width; _plane_words), one vpmultishiftqb and a mask; r = 8 is the words as loaded."""
    code = None
    for w, off, shift in layout.planes(bits):
        if w == 8:
            v = T.reinterpret("uint8x64", P.vload([0, 0], "uint32x16"))
        else:
            if len(layout.planes(bits)) == 1:  # a shuffle draws at most its input lanes
                index, ctrl = wide_plane_controls(bits, w, off, shift)
                words = tirx.Shuffle([P.vload([0, 0], f"uint32x{2 * bits}")] * -(-16 // (2 * bits)), index)
            else:
                index, ctrl = plane_loads(bits, w, off, shift)
                words = _plane_words(P, bits, index)
            sel = T.call_llvm_pure_intrin("int8x64", "llvm.x86.avx512.pmultishift.qb.512",
                                          tirx.Shuffle([tirx.const(c, "int8") for c in ctrl], list(range(64))),
                                          T.reinterpret("int8x64", words))
            v = T.reinterpret("uint8x64", sel) & _u8(((1 << w) - 1) << shift, 64)
        code = v if code is None else code | v
    return code


def _wide_funcs(bits: int):
    @T.prim_func(s_tir=True)
    def desc(P: T.Buffer((1, 2 * bits), "uint32", offset_factor=1),
             W: T.Buffer((1, 1, 16, 4), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(P[0, 0:2 * bits])
            T.writes(W[0, 0, 0:16, 0:4])
            for i, j in T.grid(T.int64(16), T.int64(4)):
                with T.sblock("wcode"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    T.reads(P[0, 0:2 * bits])
                    T.writes(W[0, 0, vi, vj])
                    W[0, 0, vi, vj] = block_code(P, 0, 0, vi, vj, bits, True)

    @T.prim_func(s_tir=True)
    def impl(P: T.Buffer((1, 2 * bits), "uint32", offset_factor=1),
             W: T.Buffer((1, 1, 16, 4), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(P[0, 0:2 * bits])
            T.writes(W[0, 0, 0:16, 0:4])
            W.vstore([0, 0, 0, 0], _wide_code_vector(P, bits))
            _prefetch(T.address_of(P[0, PREFETCH_WORDS]))

    return desc, impl


def _funcs(bits: int, multishift: bool):
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
            W.vstore([0, 0, 0, 0], _code_vector(P, bits, multishift))
            _prefetch(T.address_of(P[0, PREFETCH_WORDS]))

    return desc, impl


def _plane_funcs(w: int, order: str):
    @T.prim_func(s_tir=True)
    def desc(P: T.Buffer((w,), "uint32", offset_factor=1),
             W: T.Buffer((1, 1, 8, 4), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(P[0:w])
            T.writes(W[0, 0, 0:8, 0:4])
            for i, j in T.grid(T.int64(8), T.int64(4)):
                with T.sblock("plane"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    T.reads(P[0:w])
                    T.writes(W[0, 0, vi, vj])
                    W[0, 0, vi, vj] = plane_code(P, 0, vi, vj, w, order)

    @T.prim_func(s_tir=True)
    def impl(P: T.Buffer((w,), "uint32", offset_factor=1),
             W: T.Buffer((1, 1, 8, 4), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(P[0:w])
            T.writes(W[0, 0, 0:8, 0:4])
            W.vstore([0, 0, 0, 0], _plane(_bytes(P, [0], w), w, order))
            _prefetch(T.address_of(P[PREFETCH_WORDS]))

    return desc, impl


def intrin_name(bits: int, multishift: bool = False) -> str:
    """The registered decode intrinsic of r-bit blocks (the dense layout); multishift: with vpmultishiftqb
    (AVX512-VBMI)."""
    return _register(f"matq_decode_block_b{bits}" + ("_vbmi" if multishift else ""),
                     lambda: _funcs(bits, multishift))


def wide_intrin_name(bits: int) -> str:
    """The registered 512-bit decode intrinsic of two consecutive r-bit blocks (AVX512-VBMI, ISA "vnni512")."""
    return _register(f"matq_decode_wide_b{bits}", lambda: _wide_funcs(bits))


def plane_intrin_name(w: int, order: str) -> str:
    """The registered decode intrinsic of one w-bit nested plane of a block, into lane `order`."""
    return _register(f"matq_decode_plane_w{w}_{order}", lambda: _plane_funcs(w, order))


def _register(name: str, funcs) -> str:
    if name not in _registered:
        s_tir.TensorIntrin.register(name, *funcs(), override=True)
        _registered.add(name)
    return name
