"""The int8 LM head with int8 activations (x86 CPU, `--act int8` builds whose head is stored as int8 rows).

    y[m, n] = s[n] * sum_q sx[m, q] * acc[m, n, q],   acc[m, n, q] = sum_{k in group q} xq[m, k] * w[n, k]  (int32)

w: the head's per-row symmetric int8 codes (|w| <= 127) and fp32 row scales s (lower/params.int8_rows);
xq, sx: the activations quantized per GROUP columns as act_quant.quantize_activations (|xq| <= 127).
act_quant.int8_dense is the numpy truth.

Both operands are signed; vpmaddubsw multiplies unsigned by signed bytes, so each product is taken as
|xq| * (w with xq's sign) (vpsignb): pair sums <= 2 * 127 * 127 < 2^15, exact. Per group: for each of its two
32-byte halves vpsignb, vpmaddubsw and vpmaddwd(1), the halves added: 8 int32 lanes of 8 products each, converted
to float and folded with one FMA by sx (8 float lanes per output, summed once at the end). The float head spends
~12 vector ops per 32 weights (widen, convert, FMA); this one ~4, which leaves the 28 MB head of SmolLM2 bound by
memory, not by its arithmetic: hence the software prefetch (PREFETCH_BYTES).
"""
from __future__ import annotations

from matq_compile._tvm import tirx
from matq_compile.act_quant import QMAX
from tvm.script import tirx as T

GROUP = 64  # activation group (columns per activation scale): two 32-byte vectors
LANES = 8  # int32 / float32 lanes of one 256-bit register
ROWS = 16  # output rows per parallel task
# Each group (one 64-byte line of a row) also prefetches the line 8 KB ahead into L2: the head is read once per
# token, cold, and the hardware prefetcher alone kept too few misses in flight (2-core AVX-512 Xeon, 49152 x 576
# after a 256 MB flush, medians of 15: 1137-1233 us without, 933-1034 us 2 KB ahead, 707-820 us 4 KB ahead,
# 653-704 us 8 KB ahead; warm 578-644 -> 529-560 us). Prefetching past w's end never faults.
PREFETCH_BYTES = 8192


def supports(K: int) -> bool:
    return K % GROUP == 0


def _dot32(xa, xs, w):
    """8 int32 lanes: lane l = sum of 4 products |xq| * sign(xq) w of bytes 4l..4l+3 (exact, module docstring)."""
    signed = T.call_llvm_pure_intrin("int8x32", "llvm.x86.avx2.psign.b", w, xs)
    pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", xa, signed)
    return T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16))


def int8_dense_func(N: int, K: int) -> tirx.PrimFunc:
    """y f32[m, N] from x f32[m, K], w int8[N, K], s f32[N] (the signature of the float int8 head)."""
    if not supports(K):
        raise ValueError(f"int8-activation head: K={K} is not a multiple of {GROUP}")
    G = K // GROUP
    half = GROUP // 2

    @T.prim_func(private=True, s_tir=True)
    def dense(x_h: T.handle, w_h: T.handle, s_h: T.handle, y_h: T.handle):
        m = T.int64()
        x = T.match_buffer(x_h, (m, K), "float32")
        w = T.match_buffer(w_h, (N, K), "int8")
        s = T.match_buffer(s_h, (N,), "float32")
        y = T.match_buffer(y_h, (m, N), "float32")
        with T.sblock("root"):
            xq = T.alloc_buffer((m, K), "int8")  # signs (vpsignb's operand)
            xa = T.alloc_buffer((m, K), "uint8")  # magnitudes (vpmaddubsw's unsigned operand)
            sx = T.alloc_buffer((m, G), "float32")
            for i, q in T.grid(m, G):  # m x K work once per call: plain loops
                st = T.decl_buffer((2,), "float32")  # amax, 127 / amax (a let in a vector loop miscompiles)
                st[0] = T.float32(0)
                for k in range(GROUP):
                    st[0] = T.max(st[0], T.fabs(x[i, q * GROUP + k]))
                st[1] = T.Select(st[0] > T.float32(0), T.float32(QMAX) / st[0], T.float32(0))
                sx[i, q] = st[0] / T.float32(QMAX)
                for k in T.vectorized(GROUP):
                    xq[i, q * GROUP + k] = T.Cast("int8", T.max(T.min(T.nearbyint(x[i, q * GROUP + k] * st[1]),
                                                                      T.float32(QMAX)), T.float32(-QMAX)))
                for k in T.vectorized(GROUP):
                    xa[i, q * GROUP + k] = T.Cast("uint8", T.abs(T.Cast("int32", xq[i, q * GROUP + k])))
            for t in T.parallel((N + ROWS - 1) // ROWS):
                acc = T.decl_buffer((LANES + 1,), "float32")
                for r, i in T.grid(ROWS, m):
                    if t * ROWS + r < N:
                        for j in T.vectorized(LANES):
                            acc[j] = T.float32(0)
                        for q in range(G):
                            T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(  # prefetcht1
                                w[t * ROWS + r, q * GROUP + PREFETCH_BYTES]), T.int32(0), T.int32(2), T.int32(1)))
                            acc[T.ramp(T.int32(0), 1, LANES)] = acc[T.ramp(T.int32(0), 1, LANES)] + T.Cast(
                                "float32x8",
                                _dot32(T.reinterpret("int8x32", xa.vload([i, q * GROUP], "uint8x32")),
                                       xq.vload([i, q * GROUP], "int8x32"),
                                       w.vload([t * ROWS + r, q * GROUP], "int8x32"))
                                + _dot32(T.reinterpret("int8x32", xa.vload([i, q * GROUP + half], "uint8x32")),
                                         xq.vload([i, q * GROUP + half], "int8x32"),
                                         w.vload([t * ROWS + r, q * GROUP + half], "int8x32"))
                            ) * T.broadcast(sx[i, q], LANES)
                        acc[LANES] = T.float32(0)
                        for j in range(LANES):
                            acc[LANES] = acc[LANES] + acc[j]
                        y[i, t * ROWS + r] = acc[LANES] * s[t * ROWS + r]

    return dense
