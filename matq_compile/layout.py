"""Packed kernel layout of an r-bit slice: the numpy truth that lower/kernels.py mirrors (pinned by tests).

Codes (r = 2..8) are packed densely, r bits per weight, into uint32 words, in blocks of 32 codes per row.
A code is split into bit planes of power-of-two widths, the binary digits of r (planes(r), high bits first):

    r = 8: [8]   r = 7: [4, 2, 1]   r = 6: [4, 2]   r = 5: [4, 1]   r = 4: [4]   r = 3: [2, 1]   r = 2: [2]

A block of 32 codes fills exactly r words: the w-bit plane of every code fills w words, planes in that order.

    row n, code k -> block k // 32, kl = k % 32; the block's words are P[n, (k // 32) * r : (k // 32 + 1) * r]
    plane w at word offset o (sum of the widths before it), bit shift s (sum of the widths after it):
        bits [kl*w, kl*w + w) of the block's words o .. o+w-1 (little-endian) hold (code >> s) & (2^w - 1)

    r = 3, one block = 3 words:
    word 0: |c15:hi2|c14:hi2| ... |c1:hi2|c0:hi2|       top 2 bits of codes 0..15
    word 1: |c31:hi2| ... |c16:hi2|                     top 2 bits of codes 16..31
    word 2: |c31:lo1|c30:lo1| ... |c0:lo1|              low bit of codes 0..31

Why planes and not one bit stream (bit k*r): a w-bit plane with w | 32 never straddles a word and eight
neighbouring codes share one word, so a vector unit decodes eight codes of a plane with one broadcast, one
shift and one mask; a plain r-bit stream makes codes of r in {3, 5, 6, 7} straddle words at lane-dependent
offsets, which the CPU decodes lane by lane (measured 2-4x slower at r = 3, 5, 6 on 4096 x 4096).
Rows are padded with zero codes to a multiple of 32 (any K is accepted); bytes per weight are exactly r/8,
so weight traffic scales with r.

Dequantization (every slice is affine in its own code, see slicing.py):

    w[n, k] = (code[n, k] - Z[n, k // g]) * S[n, k // g]
    S = s * 2^(8-r)                     effective scale (slicing.slice_scale), float16
    Z = slicing.slice_zero_point(z, r)  effective zero in code units, float16 (exact: <= 8 significant bits)

Symmetric checkpoints use z = 128. Scales and zeros are float16 for every activation dtype (fp16 scales are the
checkpoint's own, multiplying by 2^d is exact, so the kernel arrays lose nothing).
Act-order: the kernel consumes activations already in processing order; the caller gathers x[:, perm] first
(a Relax `take` along axis 1) - the weight groups are formed over the permuted order, so W cannot be un-permuted.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from matq_compile import planes as nested_layout  # the module; `planes` below is this layout's own function
from matq_compile import slicing

BLOCK: int = 32  # codes per packed block; a block fills exactly `bits` uint32 words
ACT_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
M_BUCKETS: tuple[int, ...] = (1, 16)  # tuned static batch sizes: decode (1) and prefill chunk (16)
SCALE_DTYPE: str = "float16"


@dataclass(frozen=True)
class KernelKey:
    """One kernel: Y[M, N] = X[M, K] @ dequant(W_r)[N, K]^T.

    N, K: output / input features; bits: slice width r; group: -1 (per channel) or a divisor of K;
    m_bucket: static M (tunable) or None for the dynamic-M kernel; dtype: activation = output dtype;
    nested: "" for this module's dense layout of the slice, else the nested bit-plane layout of a switchable build
    (planes.tag, e.g. "r211121") from which the kernel reads its slice.
    """

    N: int
    K: int
    bits: int
    group: int = -1
    m_bucket: int | None = 1
    dtype: str = "float32"
    nested: str = ""

    def __post_init__(self) -> None:
        for f in ("N", "K"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"KernelKey.{f} must be a positive int, got {v!r}")
        slicing.check_bits(self.bits)
        check_group(self.group, self.K)
        if self.m_bucket is not None and (not isinstance(self.m_bucket, int) or self.m_bucket <= 0):
            raise ValueError(f"KernelKey.m_bucket must be a positive int or None (dynamic), got {self.m_bucket!r}")
        if self.dtype not in ACT_DTYPES:
            raise ValueError(f"KernelKey.dtype must be one of {ACT_DTYPES}, got {self.dtype!r}")
        if self.nested:
            nested_layout.planes_read(self.bits, self.nested)  # the layout must serve this width

    @property
    def group_size(self) -> int:
        return self.K if self.group == -1 else self.group

    @property
    def n_groups(self) -> int:
        return self.K // self.group_size

    @property
    def words_per_row(self) -> int:
        """Words per row of the packed array the kernel takes (for a nested layout: all its planes)."""
        if self.nested:
            return nested_layout.words_per_row(self.K, self.nested)
        return words_per_row(self.K, self.bits)

    @property
    def words_read(self) -> int:
        """Words per row the kernel reads (a nested layout's r-bit kernel reads only its top planes)."""
        if self.nested:
            return nested_layout.words_read(self.K, self.bits, self.nested)
        return self.words_per_row

    @property
    def name(self) -> str:
        """Stable, unique symbol name, e.g. matq_linear_n576_k576_b4_g64_m1_float32 (gc = per channel; a nested
        layout appends its tag: …_float32_r211121)."""
        g = "c" if self.group == -1 else str(self.group)
        m = "dyn" if self.m_bucket is None else str(self.m_bucket)
        name = f"matq_linear_n{self.N}_k{self.K}_b{self.bits}_g{g}_m{m}_{self.dtype}"
        return f"{name}_{self.nested}" if self.nested else name

    @property
    def shape_key(self) -> "KernelKey":
        """The bits- and layout-independent tuning key (records tuned at r=4 serve every r and the nested
        layouts: the tuned "gemm" block reads decoded codes): bits 4, dense."""
        return KernelKey(self.N, self.K, 4, self.group, self.m_bucket, self.dtype)

    def with_bits(self, bits: int) -> "KernelKey":
        return replace(self, bits=bits)

    def with_m(self, m_bucket: int | None) -> "KernelKey":
        return replace(self, m_bucket=m_bucket)

    def weight_bytes(self) -> int:
        """Bytes the kernel reads for the weight: packed codes + fp16 scale + fp16 zero per group."""
        return self.N * self.words_read * 4 + 2 * self.N * self.n_groups * 2

    @classmethod
    def parse(cls, name: str) -> "KernelKey":
        """Inverse of .name."""
        parts = name.split("_")
        if len(parts) not in (8, 9) or parts[:2] != ["matq", "linear"]:
            raise ValueError(f"not a KernelKey name: {name!r}")
        try:
            n, k, b = int(parts[2][1:]), int(parts[3][1:]), int(parts[4][1:])
            g = -1 if parts[5] == "gc" else int(parts[5][1:])
            m = None if parts[6] == "mdyn" else int(parts[6][1:])
        except ValueError as e:
            raise ValueError(f"not a KernelKey name: {name!r}") from e
        return cls(n, k, b, g, m, parts[7], parts[8] if len(parts) == 9 else "")


def bucket_for(m: int) -> int | None:
    """The static kernel serving batch M (M equal to a tuned bucket), else None: the dynamic-M kernel."""
    if m <= 0:
        raise ValueError(f"batch size must be positive, got {m}")
    return m if m in M_BUCKETS else None


def check_group(group: int, K: int) -> int:
    if not isinstance(group, int) or not (group == -1 or (group > 0 and K % group == 0)):
        raise ValueError(f"group must be -1 (per channel) or a positive divisor of K={K}, got {group!r}")
    return K if group == -1 else group


def planes(bits: int) -> tuple[tuple[int, int, int], ...]:
    """(width, word offset in the block, bit shift in the code) of each bit plane of an r-bit code, high first."""
    bits = slicing.check_bits(bits)
    widths = [w for w in (8, 4, 2, 1) if bits & w]
    out, off = [], 0
    for i, w in enumerate(widths):
        out.append((w, off, sum(widths[i + 1:])))
        off += w
    return tuple(out)


def words_per_row(K: int, bits: int) -> int:
    """uint32 words per packed row: ceil(K / 32) blocks of `bits` words."""
    return -(-K // BLOCK) * slicing.check_bits(bits)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """[..., K] r-bit codes (any unsigned/signed int dtype, values < 2^r) -> [..., words_per_row(K, r)] uint32."""
    bits = slicing.check_bits(bits)
    codes = np.asarray(codes)
    if codes.dtype.kind not in "ui":
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << bits)):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}")
    K = codes.shape[-1]
    nblk = -(-K // BLOCK)
    padded = np.zeros(codes.shape[:-1] + (nblk * BLOCK,), np.uint32)
    padded[..., :K] = codes
    blocks = padded.reshape(codes.shape[:-1] + (nblk, BLOCK))
    words = np.zeros(codes.shape[:-1] + (nblk, bits), np.uint32)
    for w, off, shift in planes(bits):
        plane = (blocks >> np.uint32(shift)) & np.uint32((1 << w) - 1)
        per_word = 32 // w  # codes per word of this plane: never straddles
        for j in range(BLOCK):
            words[..., off + j // per_word] |= plane[..., j] << np.uint32((j % per_word) * w)
    return words.reshape(codes.shape[:-1] + (nblk * bits,))


def unpack(words: np.ndarray, bits: int, K: int) -> np.ndarray:
    """Inverse of pack: [..., words_per_row(K, r)] uint32 -> [..., K] uint8 codes."""
    bits = slicing.check_bits(bits)
    words = np.asarray(words)
    if words.dtype != np.uint32 or words.shape[-1] != words_per_row(K, bits):
        raise ValueError(f"expected uint32 [..., {words_per_row(K, bits)}] for K={K}, bits={bits}; "
                         f"got {words.dtype} {words.shape}")
    k = np.arange(K)
    base, kl = (k // BLOCK) * bits, k % BLOCK
    codes = np.zeros(words.shape[:-1] + (K,), np.uint32)
    for w, off, shift in planes(bits):
        per_word = 32 // w
        word = words[..., base + off + kl // per_word]
        codes |= ((word >> ((kl % per_word) * w).astype(np.uint32)) & np.uint32((1 << w) - 1)) << np.uint32(shift)
    return codes.astype(np.uint8)


def pack_slice(qweight: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int,
               rule: slicing.SliceRule = "round", group: int = -1, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Kernel arguments for the r-bit slice of a stored parent (spec section 1).

    qweight uint8 [N, K] parent codes; scales fp16 [N, K/g]; zeros uint8 [N, K/g] or None (symmetric, z = 128).
    Returns {"P": uint32 [N, words_per_row], "S": float16 [N, K/g], "Z": float16 [N, K/g]}; the arrays are the
    same for every activation dtype (dtype is validated only).
    """
    bits, rule = slicing.check_bits(bits), slicing.check_rule(rule)
    if dtype not in ACT_DTYPES:
        raise ValueError(f"dtype must be one of {ACT_DTYPES}, got {dtype!r}")
    qweight = np.asarray(qweight)
    if qweight.dtype != np.uint8 or qweight.ndim != 2:
        raise ValueError(f"qweight must be uint8 [N, K], got {qweight.dtype} {qweight.shape}")
    N, K = qweight.shape
    g = check_group(group, K)
    gshape = (N, K // g)
    scales = np.asarray(scales)
    if scales.shape != gshape:
        raise ValueError(f"scales must have shape {gshape} for group={group}, got {scales.shape}")
    if zeros is None:
        zeros = np.full(gshape, 128, np.uint8)
    zeros = np.asarray(zeros)
    if zeros.shape != gshape or zeros.dtype != np.uint8:
        raise ValueError(f"zeros must be uint8 {gshape}, got {zeros.dtype} {zeros.shape}")
    codes = slicing.slice_codes(qweight, bits, rule)
    s_eff = slicing.slice_scale(scales.astype(np.float64), bits)
    z_eff = slicing.slice_zero_point(zeros, bits, rule)
    return {"P": pack(codes, bits), "S": s_eff.astype(np.float16), "Z": np.asarray(z_eff).astype(np.float16)}


def dequant(arrays: dict[str, np.ndarray], bits: int, K: int, group: int = -1) -> np.ndarray:
    """float64 [N, K] weights from kernel arrays: the reference every kernel is tested against."""
    g = check_group(group, K)
    codes = unpack(arrays["P"], bits, K).astype(np.float64)
    s = np.repeat(arrays["S"].astype(np.float64), g, axis=1)
    z = np.repeat(arrays["Z"].astype(np.float64), g, axis=1)
    return (codes - z) * s
