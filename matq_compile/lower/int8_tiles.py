"""int8-activation kernels on the tile arrangement (tiles.py) for AVX-512 VNNI: the numerics of int8_kernels
(activations quantized per group by act_quant's rule, integer products, scale and zero once per group in float32),
written already scheduled in TIR.

    int8_tile_func(key):  Y[M, N] from X f32[M, K], P, S, Z: the row-major kernel's signature and shapes, the
                          arrays holding tiles.tile of the slice's words, scales and zeros

Per call, the activations of each row are quantized group by group, 16 lanes at a time, into tiles.act_order (a
byte shuffle per 16 codes), with their group sums. Tiles of 16 output rows run in parallel; per tile, activation
row and group, each word of the group is loaded once for the 16 rows, and-ed with each field's mask and multiplied
by its four activations (one vpdpbusd, the activation dword broadcast from memory) into that field's int32 sum;
the field sums are shifted into place and added, converted once, and the group's scale, activation scale and zero
term applied to all 16 rows by three vector ops. With several activation rows each field is also shifted down when
decoded (one sum per row), and blocks of ROW_BLOCK rows share each decoded word. Weights are prefetched
PREFETCH_LINES cache lines ahead into L2 (a decode step reads them once, from beyond the L2).

At the merged widths (r = 3: tiles.MERGED) a unit of work is a block's r words (tiles.pack_merged): each of
its 8 operands is one vpternlogd (bit select) of a main word and a minor word rotated and and-ed (each and-ed word
serves two operands), its codes at the operand's shift in every byte: one int32 sum per shift, shifted into place
as the fields' sums are.

Widths: tiles.WIDTHS. Groups of whole 32-code blocks (g a multiple of 32; the quantization works on 16 lanes).
"""
from __future__ import annotations

from matq_compile import act_quant, layout, tiles
from matq_compile._tvm import tirx
from matq_compile.lower.int8_kernels import INT8_ATTR, kernel_name
from matq_compile.lower.kernels import hand_scheduled
from tvm.script import tirx as T

LANES = tiles.TILE
PREFETCH_LINES = 64  # 4 KB ahead of the word being read (one 64-byte line per word of a tile)
UNROLL_WORDS = 16  # a group of at most this many words is unrolled (the field sums stay in registers)
UNROLL_GROUPS = 32  # rows of at most this many groups are unrolled (each group's scales a constant offset)
# activation rows sharing each decoded word (M > 1); a block past M repeats the last row, which writes the same
# values again
ROW_BLOCK = 4


def fits(key: layout.KernelKey) -> bool:
    """Whether `key` has a tile kernel: a width of tiles.WIDTHS in the dense layout, whole tiles of rows, float32
    activations in groups of whole blocks."""
    return (not key.nested and tiles.fits(key.N, key.bits) and key.dtype == "float32"
            and key.group_size % layout.BLOCK == 0)


def _func(key: layout.KernelKey, with_epilogue: bool):
    if not fits(key):
        raise ValueError(f"{key.name}: the tile kernel needs r in {tiles.WIDTHS}, N a multiple of {LANES}, float32 "
                         f"activations and groups of whole {layout.BLOCK}-code blocks of the dense layout")
    N, K, r, g, G = key.N, key.K, key.bits, key.group_size, key.n_groups
    NT, WPR = N // LANES, key.words_per_row
    # a unit: the words one set of operands is decoded from (one word, or a merged width's block of r words)
    merged = tiles.MERGED.get(r)
    UW, UO = (r, 8) if merged else (1, 8 // r)  # words and operands per unit
    UG = g * r // 32 // UW  # units per group
    order = tiles.chunk_order(r)
    field = ((1 << r) - 1) * 0x01010101  # field 0's mask in every byte of a lane (one-plane widths)
    qmax = float(act_quant.QMAX)
    unit_loop = T.unroll if UG * UW <= UNROLL_WORDS else T.serial
    group_loop = T.unroll if G <= UNROLL_GROUPS else T.serial
    op_loop = T.unroll if merged else T.serial  # a merged width's per-operand constants fold once unrolled
    # one activation row: each operand's code left where it lies, one sum per shift (no shift in the loop);
    # several: each operand shifted down as well, so one sum per row (4 per row for 4 rows spilled at r = 2), the
    # decode shared by MR rows
    SH = int(key.m_bucket != 1)
    MR = min(ROW_BLOCK, key.m_bucket or ROW_BLOCK) if SH else 1
    SF = 1 if SH else (len(merged.shifts) if merged else UO)  # int32 sums per activation row
    M = key.m_bucket if key.m_bucket is not None else tirx.Var("m", "int64")

    # Helpers build expressions, not assignments: a name bound in the function body becomes a 1-element "local"
    # buffer, each a workspace allocation (TVMBackendAllocWorkspace) per task of the parallel loop (two per task
    # cost 3072x576 r = 2, M = 16 about 10 % warm).
    def row(mo, i):  # activation row i of block mo (a block past M repeats the last row)
        return T.min(mo * MR + i, M - 1)

    def amax(vmax):
        return T.call_llvm_pure_intrin("float32", "llvm.vector.reduce.fmax", vmax.vload([0], "float32x16"))

    def codes(X, vmax, m, k):  # 16 activations rounded to int8 codes (int32 lanes)
        inv = T.Select(amax(vmax) > T.float32(0), T.float32(qmax) / amax(vmax), T.float32(0))
        return T.Cast("int32x16", T.max(T.min(T.nearbyint(X.vload([m, k], "float32x16") * T.Broadcast(inv, 16)),
                                              T.Broadcast(T.float32(qmax), 16)), T.Broadcast(T.float32(-qmax), 16)))

    def pick(values, i):  # values[i] for a loop variable i (a constant once the loop is unrolled)
        if len(set(values)) == 1:
            return values[0]
        out = values[-1]
        for n in range(len(values) - 2, -1, -1):
            out = T.Select(i == n, values[n], out)
        return out

    def sum_of(o):  # the M = 1 sum of operand o: its field, at a merged width its code's shift
        return pick([merged.shifts.index(sh) for _, sh in merged.operands], o) if merged else o

    def shift(c):  # the bit at which the codes of sum c lie
        return pick(list(merged.shifts), c) if merged else r * c

    def bytes4(v):  # a byte mask in every byte of a lane
        return T.Broadcast(T.Cast("uint32", v) * T.uint32(0x01010101), 16)

    def operand(P, t, u, o):  # uint32x16: operand o of unit u of tile t, its codes at shift(sum_of(o)) (SH: at 0)
        if not merged:
            return (P.vload([t, u, 0], "uint32x16") >> T.Broadcast(T.Cast("uint32", r * o * SH), 16)) & T.Broadcast(
                T.uint32(field) << T.Cast("uint32", r * o * (1 - SH)), 16)
        # tiles.Merged: the field of main word o // F, the rest from the operand's variant of a minor word
        var = [merged.variants[k] for k, _ in merged.operands]
        h = P.vload([t, u * UW + merged.main + pick([v[0] for v in var], o), 0], "uint32x16")
        h = T.call_llvm_pure_intrin("uint32x16", "llvm.fshl", h, h, T.Broadcast(
            T.Cast("uint32", pick([v[1] for v in var], o)), 16)) & bytes4(pick([v[2] for v in var], o))
        v = T.reinterpret("uint32x16", T.call_llvm_pure_intrin(
            "int32x16", "llvm.x86.avx512.pternlog.d.512",
            T.reinterpret("int32x16", bytes4(pick([merged.field_mask(n) for n in range(UO)], o))),
            T.reinterpret("int32x16", P.vload([t, u * UW + o // merged.fields, 0], "uint32x16")),
            T.reinterpret("int32x16", h), T.int32(0xCA)))  # bit select: the field where the mask is set, h elsewhere
        return v >> T.Broadcast(T.Cast("uint32", pick([sh for _, sh in merged.operands], o) * SH), 16)

    @T.prim_func
    def main(x_h: T.handle, p_h: T.handle, s_h: T.handle, z_h: T.handle, y_h: T.handle):
        T.func_attr({"tir.noalias": True})
        X = T.match_buffer(x_h, (M, K), "float32")
        P0 = T.match_buffer(p_h, (N, WPR), "uint32")
        S0 = T.match_buffer(s_h, (N, G), "float16")
        Z0 = T.match_buffer(z_h, (N, G), "float16")
        Y = T.match_buffer(y_h, (M, N) if with_epilogue else (M, N, G), "float32" if with_epilogue else "int32")
        P = T.decl_buffer((NT, WPR, LANES), "uint32", data=P0.data)
        S = T.decl_buffer((NT, G, LANES), "float16", data=S0.data)
        Z = T.decl_buffer((NT, G, LANES), "float16", data=Z0.data)
        xq = T.alloc_buffer((M, K), "int8")
        xw = T.decl_buffer((M, K // 4), "int32", data=xq.data)  # one dword: the four activations of an operand
        sx = T.alloc_buffer((M, G), "float32")
        zx = T.alloc_buffer((M, G), "float32")  # sx * xsum: the zero term's activation factor
        # each tile's group scales pass through memory (a row per task) on purpose: with every value of a task in
        # registers LLVM sinks all of its prefetch calls to the task's end (576x1536 r = 4 M = 1 after a flush:
        # 21 -> 25 us); a store per group keeps each group's prefetches beside its loads
        sv = T.alloc_buffer((NT, LANES), "float32")
        for m, q in T.grid(M, G):
            vmax = T.alloc_buffer((16,), "float32")
            vmax[T.ramp(0, 1, 16)] = T.Broadcast(T.float32(0), 16)
            for c in T.unroll(g // 16):
                vmax[T.ramp(0, 1, 16)] = T.max(vmax.vload([0], "float32x16"),
                                               T.abs(X.vload([m, q * g + c * 16], "float32x16")))
            sx[m, q] = amax(vmax) / T.float32(qmax)
            vsum = T.alloc_buffer((16,), "int32")
            vsum[T.ramp(0, 1, 16)] = T.Broadcast(T.int32(0), 16)
            for c in T.unroll(g // 16):
                vsum[T.ramp(0, 1, 16)] = vsum.vload([0], "int32x16") + codes(X, vmax, m, q * g + c * 16)
                xq[m, T.ramp(q * g + c * 16, 1, 16)] = T.Shuffle(
                    [T.Cast("int8x16", codes(X, vmax, m, q * g + c * 16))], order)
            zx[m, q] = sx[m, q] * T.Cast("float32", T.call_llvm_pure_intrin(
                "int32", "llvm.vector.reduce.add", vsum.vload([0], "int32x16")))
        for t in T.parallel(NT):
            for mo in range((M + MR - 1) // MR):
                yacc = T.alloc_buffer((MR * 16,), "float32")
                zacc = T.alloc_buffer((MR * 16,), "float32")
                acc = T.alloc_buffer((SF * MR * 16,), "int32")
                for i in T.unroll(MR):
                    yacc[T.ramp(i * 16, 1, 16)] = T.Broadcast(T.float32(0), 16)
                    zacc[T.ramp(i * 16, 1, 16)] = T.Broadcast(T.float32(0), 16)
                for q in group_loop(G):
                    for a in T.unroll(SF * MR):
                        acc[T.ramp(a * 16, 1, 16)] = T.Broadcast(T.int32(0), 16)
                    for u in unit_loop(UG):
                        for w in T.serial(UW):
                            T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                                P[t, (q * UG + u) * UW + w + PREFETCH_LINES, 0]), T.int32(0), T.int32(2), T.int32(1)))
                        for o in op_loop(UO):  # each decoded operand feeds the block's activation rows
                            for i in T.serial(MR):
                                acc[T.ramp((sum_of(o) * (1 - SH) * MR + i) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                                    "int32x16", "llvm.x86.avx512.vpdpbusd.512",
                                    acc.vload([(sum_of(o) * (1 - SH) * MR + i) * 16], "int32x16"),
                                    T.reinterpret("int8x64", operand(P, t, q * UG + u, o)),
                                    T.reinterpret("int8x64", T.Broadcast(xw[row(mo, i), (q * UG + u) * UO + o], 16)))
                    for c, i in T.grid(SF - 1, MR):
                        acc[T.ramp(i * 16, 1, 16)] = acc.vload([i * 16], "int32x16") + (
                            acc.vload([((c + 1) * MR + i) * 16], "int32x16") >> T.Broadcast(
                                T.Cast("int32", shift(c + 1)), 16))
                    for i in T.unroll(MR):
                        if with_epilogue:
                            sv[t, T.ramp(0, 1, 16)] = T.Cast("float32x16", S.vload([t, q, 0], "float16x16"))
                            yacc[T.ramp(i * 16, 1, 16)] = yacc.vload([i * 16], "float32x16") + T.Cast(
                                "float32x16", acc.vload([i * 16], "int32x16")) * (
                                    sv.vload([t, 0], "float32x16") * T.Broadcast(sx[row(mo, i), q], 16))
                            zacc[T.ramp(i * 16, 1, 16)] = zacc.vload([i * 16], "float32x16") + sv.vload(
                                [t, 0], "float32x16") * T.Cast("float32x16", Z.vload([t, q, 0], "float16x16")) * (
                                    T.Broadcast(zx[row(mo, i), q], 16))
                        else:
                            for l in range(LANES):
                                Y[row(mo, i), t * LANES + l, q] = acc[i * 16 + l]
                if with_epilogue:
                    for i in T.unroll(MR):
                        Y[row(mo, i), T.ramp(t * LANES, 1, 16)] = (
                            yacc.vload([i * 16], "float32x16") - zacc.vload([i * 16], "float32x16"))

    return main


def int8_tile_func(key: layout.KernelKey, name: str | None = None) -> tirx.PrimFunc:
    """The tile kernel of `key` (fits(key)): int8_kernels.int8_linear_func's signature and numerics, its P, S and Z
    in the tile arrangement."""
    name = name or kernel_name(key)
    return hand_scheduled(_func(key, True).with_attr("global_symbol", name).with_attr(INT8_ATTR, name))


def int8_tile_acc_func(key: layout.KernelKey, name: str = "matq_int8_tile_acc") -> tirx.PrimFunc:
    """The integer part alone: acc int32 [M, N, G] (act_quant.integer_acc) from X and the tiled P (S and Z unread):
    pins the kernel's quantization, field masks and shifts bit-exactly."""
    return _func(key, False).with_attr("global_symbol", name)


def target_supports(target) -> bool:
    """Whether a TVM llvm target runs the tile kernels (512-bit vpdpbusd: AVX512-VNNI)."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return False
    with target:
        return bool(codegen.target_has_features("avx512vnni", target))
