"""int8-activation kernels against the numpy truth (act_quant.py): the integer accumulators bit-exact, the float
output against an exact epilogue; VNNI code generation; targets without a byte dot product refused."""
from __future__ import annotations

import re

import numpy as np
import pytest

from matq_compile import act_quant, layout

tvm_mod = pytest.importorskip("matq_compile._tvm")
from helpers import build_main, int8_activations  # noqa: E402
from matq_compile.lower import int8_decode, int8_intrin, int8_kernels  # noqa: E402
from matq_compile.targets import TargetSpec  # noqa: E402


def _llvm(mcpu: str, **extra) -> TargetSpec:
    return TargetSpec(f"llvm-{mcpu}", "llvm", {"mcpu": mcpu, "num-cores": 2, **extra})


def _host_isas() -> list[str | None]:
    """Every int8 ISA this CPU runs: a VNNI CPU runs the AVX2 kernels too (and an AVX512-VBMI one the 256-bit
    forms), so all of them are checked there."""
    from matq_compile import targets

    isa = int8_intrin.target_isa(targets.load("host").to_tvm())
    isa = "vnni512" if isa == int8_intrin.AMX else isa  # the tile kernels: test_int8_amx.py
    return int8_intrin.ISAS[int8_intrin.ISAS.index(isa):] if isa else [None]


@pytest.fixture(scope="module", params=_host_isas())
def cpu(request):
    from matq_compile import targets

    spec = targets.load("host")
    if request.param is None:
        pytest.skip(f"this CPU ({spec.name}) has no byte dot product")
    return spec.to_tvm(), tvm_mod.tvm.cpu(), request.param


CASES = [(b, g, m) for b in range(2, 9) for g, m in zip((32, 64, 128), ((1, 3, 16), (16, 1, 3), (3, 16, 1))[b % 3])]


@pytest.mark.parametrize("bits,group,m", CASES)
def test_integer_path_is_bit_exact(bits, group, m, cpu, rng):
    """Quantized activations, decoded codes and per-group int32 dot products equal act_quant's exactly
    (every code value of the slice, including 2^r - 1: the AVX2 pair sums stay unsaturated)."""
    target, dev, isa = cpu
    key = layout.KernelKey(24, 384, bits, group, layout.bucket_for(m))
    codes = rng.integers(0, 1 << bits, (key.N, key.K)).astype(np.uint8)
    codes[0] = (1 << bits) - 1  # the largest code against |xq| = 127 lanes
    x = int8_activations(rng, m, key.K)
    ex = build_main(int8_kernels.int8_acc_func(key, isa, "main"), target)
    acc = tvm_mod.empty((m, key.N, key.n_groups), "int32", dev)
    ex["main"](tvm_mod.tensor(x, dev), tvm_mod.tensor(layout.pack(codes, bits), dev), acc)
    xq, _, _ = act_quant.quantize_activations(x, group)
    np.testing.assert_array_equal(acc.numpy(), act_quant.integer_acc(codes, xq, group))


NESTED = [(w, rule, None, b) for w in ((2, 3, 4, 6, 8), (3, 5, 7), (4, 8), (8,)) for rule in ("round", "midpoint")
          for b in w] + [((2, 3, 4, 6, 8), rule, (4, 4), b) for rule in ("round", "midpoint") for b in (2, 3, 4, 6, 8)]


@pytest.mark.parametrize("widths,rule,split,bits", NESTED)
def test_nested_integer_path_is_bit_exact(widths, rule, split, bits, cpu, rng):
    """A switchable build's int8-activation kernels decode the r-bit slice from the nested planes (planes.py) and
    give act_quant's integer dot products of slicing.slice_codes exactly. The layouts cover every plane width in
    every lane order a slice reads it in, the bit-by-bit decode included (2- and 4-bit planes at r = 8), and the
    coarse split (4, 4), where narrow slices drop a plane's low bits."""
    from matq_compile import planes, slicing

    target, dev, isa = cpu
    m, group = ((1, 32), (3, 64), (16, 128))[bits % 3]
    tag = planes.tag(widths, rule, split)
    key = layout.KernelKey(24, 384, bits, group, layout.bucket_for(m), nested=tag)
    q = rng.integers(0, 256, (key.N, key.K)).astype(np.uint8)
    q[0], q[1] = 255, 0  # the largest slice code (round: the clamped 2^r rounding) and the smallest
    x = int8_activations(rng, m, key.K)
    ex = build_main(int8_kernels.int8_acc_func(key, isa, "main"), target)
    acc = tvm_mod.empty((m, key.N, key.n_groups), "int32", dev)
    ex["main"](tvm_mod.tensor(x, dev), tvm_mod.tensor(planes.pack(q, tag), dev), acc)
    codes = slicing.slice_codes(q, bits, rule).astype(np.uint8)
    np.testing.assert_array_equal(acc.numpy(), act_quant.integer_acc(codes, act_quant.quantize_activations(
        x, group)[0], group))


def test_largest_products_do_not_saturate(cpu):
    """All codes 255 (r = 8) and all activations at +-127: each int16 pair sum of vpmaddubsw would overflow."""
    target, dev, isa = cpu
    key = layout.KernelKey(8, 64, 8, 64, 1)
    codes = np.full((8, 64), 255, np.uint8)
    x = np.ones((1, 64), np.float32)
    x[0, 1::2] = -1.0
    x[0, 2::4] = 1.0
    ex = build_main(int8_kernels.int8_acc_func(key, isa, "main"), target)
    acc = tvm_mod.empty((1, 8, 1), "int32", dev)
    ex["main"](tvm_mod.tensor(x, dev), tvm_mod.tensor(layout.pack(codes, 8), dev), acc)
    np.testing.assert_array_equal(acc.numpy(), act_quant.integer_acc(codes, act_quant.quantize_activations(x, 64)[0],
                                                                     64))


@pytest.mark.parametrize("bits,group", [(6, 64), (5, 128), (2, 128)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_int16_group_sums_at_their_bound(bits, group, sign, cpu):
    """Where a group's blocks are summed in int16 before widening (AVX2, r <= 6 at g = 64, r <= 5 at g = 128), the
    largest codes against xq = +-127 reach the bound (r = 6, g = 64: 2 x 2 x 63 x 127 = 32004) exactly."""
    target, dev, isa = cpu
    key = layout.KernelKey(8, 256, bits, group, 1)
    codes = np.full((8, 256), (1 << bits) - 1, np.uint8)
    x = np.full((1, 256), sign, np.float32)
    ex = build_main(int8_kernels.int8_acc_func(key, isa, "main"), target)
    acc = tvm_mod.empty((1, 8, key.n_groups), "int32", dev)
    ex["main"](tvm_mod.tensor(x, dev), tvm_mod.tensor(layout.pack(codes, bits), dev), acc)
    want = act_quant.integer_acc(codes, act_quant.quantize_activations(x, group)[0], group)
    np.testing.assert_array_equal(acc.numpy(), want)
    assert abs(int(want[0, 0, 0])) == group * ((1 << bits) - 1) * 127


@pytest.mark.parametrize("bits,group,grouped", [(4, 64, True), (6, 64, True), (7, 64, False), (5, 128, True),
                                                (6, 128, False), (4, 32, False)])
def test_group_intrinsic_where_int16_is_exact(bits, group, grouped):
    """AVX2: one vpmaddwd per group of blocks where nb pair sums of (2^r - 1) x 127 fit in int16, one per block
    otherwise; VNNI never (vpdpbusd widens in the same instruction)."""
    nb = group // layout.BLOCK
    assert (int8_intrin.group_intrin_for("avx2", bits, nb) is not None) == grouped
    assert grouped == (nb > 1 and nb * 2 * ((1 << bits) - 1) * 127 <= 32767)
    assert int8_intrin.group_intrin_for("vnni", bits, nb) is None
    key = layout.KernelKey(16, 256, bits, group, 1)
    text = int8_kernels.int8_linear_func(key, "avx2", "main").script()
    widen, pairs = text.count("llvm.x86.avx2.pmadd.wd"), text.count("llvm.x86.avx2.pmadd.ub.sw")
    per_block = 2 if bits == 8 else 1  # the block loop's body (unrolled only when lowered)
    assert (widen, pairs) == ((1, nb) if grouped else (per_block, per_block))


@pytest.mark.parametrize("bits,group,sym,rule", [(2, 32, True, "round"), (3, 64, False, "midpoint"),
                                                  (4, 64, True, "round"), (5, 128, False, "round"),
                                                  (6, 32, False, "midpoint"), (7, 64, True, "midpoint"),
                                                  (8, 128, False, "round"), (4, -1, False, "round")])
def test_kernel_matches_the_exact_epilogue(bits, group, sym, rule, cpu, rng):
    """The whole kernel (float epilogue in float32) against act_quant.int8_linear (float64 epilogue); the static
    M = 1 and 16 kernels and the dynamic-M kernel at M = 3."""
    _check_epilogue(bits, group, sym, rule, 40, ((1, 1), (16, 16), (3, None)), cpu, rng)


@pytest.mark.parametrize("N", [35, 15])
def test_tiled_kernel_with_odd_task_rows(N, cpu, rng):
    """M = 16 folds tiles of output rows x activation rows; a task of 7 rows (N = 35) or 5 rows (N = 15) takes
    tiles of one output row, and still matches the exact epilogue."""
    assert int8_kernels.N_TILE > 1 and 16 % int8_kernels.ROW_TILE == 0
    _check_epilogue(4, 64, False, "round", N, ((16, 16),), cpu, rng)


@pytest.mark.parametrize("bits", [3, 4])
def test_long_row_kernel_matches_the_exact_epilogue(bits, cpu, rng):
    """M = 1 over 16 groups of 64: on AVX512-VBMI CPUs the 512-bit form (two fold chains, r = 3's planes loaded
    word by word), the zero term 8 groups a vector with its scale x zero converted in place."""
    _check_epilogue(bits, 64, False, "round", 24, ((1, 1),), cpu, rng, K=1024)


def _check_epilogue(bits, group, sym, rule, N, runs, cpu, rng, K: int = 256):
    target, dev, isa = cpu
    q = rng.integers(0, 256, (N, K)).astype(np.uint8)
    g = K if group == -1 else group
    s = (rng.random((N, K // g)) * 0.02 + 1e-3).astype(np.float16)
    z = None if sym else rng.integers(0, 256, (N, K // g)).astype(np.uint8)
    arr = layout.pack_slice(q, s, z, bits, rule, group)
    for m, bucket in runs:
        key = layout.KernelKey(N, K, bits, group, bucket)
        ex = build_main(int8_kernels.int8_linear_func(key, isa, "main"), target)
        x = int8_activations(rng, m, K)
        y = tvm_mod.empty((m, N), "float32", dev)
        ex["main"](tvm_mod.tensor(x, dev), *(tvm_mod.tensor(arr[n], dev) for n in "PSZ"), y)
        ref = act_quant.int8_linear(x, arr, bits, group)
        np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("bits,K", [(b, 576) for b in range(2, 9)] + [(3, 896)])
def test_short_row_kernel_matches_the_exact_epilogue(bits, K, cpu, rng):
    """M = 1 over 9 groups (SmolLM2's K = 576) and 14 groups (two fold chains): on AVX512-VBMI CPUs the zero term
    joins the fold's 16 lanes, S and Z read by zero-masked loads."""
    _check_epilogue(bits, 64, False, "round", 24, ((1, 1),), cpu, rng, K=K)


def test_short_row_zero_term_uses_masked_loads(rng):
    """The 512-bit kernel of a 9-group row reads the row's S and Z with zero-masked 16-lane loads (fault-free past
    the row), and only the rows of whole vectors of groups keep the zero term's own vector loop."""
    spec = _llvm("sapphirerapids")
    key = layout.KernelKey(24, 576, 2, 64, 1)
    assert int8_kernels.zero_in_lanes(key, True) and not int8_kernels.zero_in_lanes(
        layout.KernelKey(24, 1024, 2, 64, 1), True) and not int8_kernels.zero_in_lanes(key, False)
    asm = build_main(int8_kernels.int8_linear_func(key, "vnni512", "main"), spec.to_tvm()).mod.inspect_source("asm")
    assert len(re.findall(r"vmovdqu16\s+\S+, %ymm\d+ \{%k\d\} \{z\}", asm)) == 2


@pytest.mark.parametrize("bits,K", [(5, 576), (6, 576), (7, 576), (6, 1536)])
def test_short_rows_run_straight_line_at_every_width(bits, K):
    """At M = 1 a short row's groups are unrolled for every width (one dot product per group in the code, no
    run-time test of the first group): LLVM left the two-plane widths' group loop rolled, 3072 x 576 r = 6 warm
    41 -> 29 us on the AVX-512 Xeon."""
    key = layout.KernelKey(24, K, bits, 64, 1)
    asm = build_main(int8_kernels.int8_linear_func(key, "vnni512", "main"),
                 _llvm("sapphirerapids").to_tvm()).mod.inspect_source("asm")
    assert len(re.findall(r"\bvpdpbusd\b", asm)) == K // 64


@pytest.mark.parametrize("bits", range(2, 9))
def test_decode_intrinsic_matches_layout(bits, cpu, rng):
    """The byte-op decode of a 32-code block (tensorized wcode) equals layout.unpack, lane p holding code
    lane_code(p): every lane order is a permutation of the block."""
    target, dev, _ = cpu
    from matq_compile._tvm import i64, te

    key = layout.KernelKey(5, 96, bits, 32, 1)
    P = te.placeholder((i64(5), i64(key.words_per_row)), "uint32", name="P")
    W = te.compute((i64(5), i64(3), i64(8), i64(4)), lambda n, kb, i, j: int8_decode.block_code(
        P, n, kb * i64(bits), i, j, bits), name="wcode")
    sch = tvm_mod.Schedule(tvm_mod.tvm.IRModule({"main": te.create_prim_func([P, W])}))
    block = sch.get_sblock("wcode")
    int8_kernels._read_whole_block(sch, block, bits)
    sch.tensorize(sch.get_loops(block)[2], int8_decode.intrin_name(bits))
    assert "Shuffle" in sch.mod["main"].script() or bits == 8
    codes = rng.integers(0, 1 << bits, (5, 96)).astype(np.uint8)
    out = tvm_mod.empty((5, 3, 8, 4), "uint8", dev)
    build_main(sch.mod["main"], target)["main"](tvm_mod.tensor(layout.pack(codes, bits), dev), out)
    order = [int8_decode.lane_code(p, int8_decode.ORDERS[bits]) for p in range(32)]
    assert sorted(order) == list(range(32))
    np.testing.assert_array_equal(out.numpy().reshape(5, 3, 32), codes.reshape(5, 3, 32)[:, :, order])


@pytest.mark.parametrize("mcpu,isa", [("cascadelake", "vnni"), ("alderlake", "vnni"), ("icelake-server", "vnni512"),
                                      ("sapphirerapids", "amx"), ("znver4", "vnni512"), ("znver3", "avx2"),
                                      ("haswell", "avx2"), ("x86-64", None)])
def test_target_isa(mcpu, isa):
    assert int8_intrin.target_isa(_llvm(mcpu).to_tvm()) == isa


@pytest.mark.parametrize("mcpu,bits", [("cascadelake", 4), ("cascadelake", 8), ("alderlake", 3)])
def test_vnni_targets_emit_vpdpbusd(mcpu, bits):
    """Built (not run: this CPU may lack VNNI) for a VNNI target, the dot product is vpdpbusd, no vpmaddubsw."""
    spec = _llvm(mcpu)
    key = layout.KernelKey(64, 256, bits, 64, 1)
    ex = build_main(int8_kernels.int8_linear_func(key, int8_intrin.check_target(spec), "main"), spec.to_tvm())
    asm = ex.mod.inspect_source("asm")
    assert "vpdpbusd" in asm and "vpmaddubsw" not in asm


def test_avx2_target_uses_pmaddubsw_and_splits_r8():
    spec = _llvm("haswell")
    for bits, count in ((4, 1), (8, 2)):  # r = 8: low 7 bits and top bit, one vpmaddubsw each
        ex = build_main(int8_kernels.int8_linear_func(layout.KernelKey(16, 64, bits, 64, 1), "avx2", "main"),
                    spec.to_tvm())
        asm = ex.mod.inspect_source("asm")
        assert "vpdpbusd" not in asm and asm.count("vpmaddubsw") >= count


def test_decode_prefetches_ahead_and_unpacks_nibbles_from_one_broadcast():
    """Each block's decode prefetches its weights' words ahead into L2 (prefetcht1), dense and nested planes alike;
    r = 4's nibbles come from one 16-byte broadcast load and a 64-bit shift (no 128-bit insert)."""
    from matq_compile import planes

    target = _llvm("znver3").to_tvm()
    dense, nested = (layout.KernelKey(16, 256, 4, 64, 1),
                     layout.KernelKey(16, 256, 3, 64, 1, nested=planes.tag((2, 3, 4, 6, 8), "round")))
    asm = {key: build_main(int8_kernels.int8_linear_func(key, "avx2", "main"), target).mod.inspect_source("asm")
           for key in (dense, nested)}
    assert all("prefetcht1" in a for a in asm.values())
    assert "vbroadcasti128" in asm[dense] and "vpsrlvq" in asm[dense] and "vinserti128" not in asm[dense]


def _multishift(ctrl: np.ndarray, data: np.ndarray) -> np.ndarray:
    """vpmultishiftqb as Intel's pseudo-code defines it: byte j of qword i takes the 8 bits of data's qword i
    from bit ctrl[j] & 63 on, wrapping around the qword."""
    out = np.zeros(ctrl.size, np.uint8)
    for p in range(ctrl.size):
        q = int(data[p // 8 * 8:(p // 8 + 1) * 8].view("<u8")[0])
        start = int(ctrl[p]) & 63
        out[p] = sum(((q >> ((start + b) & 63)) & 1) << b for b in range(8))
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
def test_multishift_controls_decode_every_plane(bits, rng):
    """Emulated vpmultishiftqb with int8_decode's control bytes, over each plane's bytes broadcast as the kernel
    loads them, masked and or-ed, gives the codes of layout.unpack in the lane order of the plain decode."""
    codes = rng.integers(0, 1 << bits, (1, 32)).astype(np.uint8)
    codes[0, 5] = (1 << bits) - 1
    words = layout.pack(codes, bits)[0].view(np.uint8)
    got = np.zeros(32, np.uint8)
    for w, off, shift in layout.planes(bits):
        plane = words[4 * off:4 * (off + w)]
        data = np.tile(plane, 32 // plane.size)
        ctrl = np.array(int8_decode.multishift_controls(w, shift, int8_decode.ORDERS[bits]), np.uint8)
        got |= _multishift(ctrl, data) & np.uint8(((1 << w) - 1) << shift)
    order = [int8_decode.lane_code(p, int8_decode.ORDERS[bits]) for p in range(32)]
    np.testing.assert_array_equal(got, codes[0, order])


@pytest.mark.parametrize("bits", range(2, 9))
def test_wide_decode_controls_give_every_code(bits, rng):
    """Emulated 512-bit decode: per plane the words it loads (int8_decode.wide_plane_controls for a one-plane
    width, plane_loads for the others: r = 3's 128-bit broadcasts, runs, or 64-bit loads shared greedily) out of
    two consecutive blocks' 2 r words, vpmultishiftqb, mask, or-ed, gives the codes of layout.unpack in wide_code
    order, and the order is a permutation of the 64 codes."""
    codes = rng.integers(0, 1 << bits, (1, 64)).astype(np.uint8)
    codes[0, 9] = (1 << bits) - 1
    words = layout.pack(codes, bits)[0]
    got = np.zeros(64, np.uint8)
    for w, off, shift in layout.planes(bits):
        if w == 8:
            got |= words.view(np.uint8)
            continue
        plan = int8_decode.wide_plane_controls if len(layout.planes(bits)) == 1 else int8_decode.plane_loads
        index, ctrl = plan(bits, w, off, shift)
        assert min(index) >= 0 and max(index) < 2 * bits  # loads stay inside the two blocks
        data = words[index].view(np.uint8)
        got |= _multishift(np.array(ctrl, np.uint8), data) & np.uint8(((1 << w) - 1) << shift)
    order = [int8_decode.wide_code(p, bits) for p in range(64)]
    assert sorted(order) == list(range(64))
    np.testing.assert_array_equal(got, codes[0, order])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_wide_kernels_run_512_bit_dot_products(bits):
    """AVX512-VBMI targets: a long row's kernel runs vpdpbusd on zmm registers and decodes with vpmultishiftqb
    on zmm (r < 8); a short row's kernel keeps the 256-bit form (kernel_isa). 24 rows: not whole 16-row tiles,
    so r = 2, 4, 8 take these kernels too, not int8_tiles'."""
    target = _llvm("icelake-server").to_tvm()
    long_key, short_key = layout.KernelKey(24, 2048, bits, 64, 1), layout.KernelKey(24, 512, bits, 64, 1)
    assert int8_intrin.kernel_isa("vnni512", long_key) == "vnni512"
    assert int8_intrin.kernel_isa("vnni512", short_key) == "vnni-vbmi"
    asm = build_main(int8_kernels.int8_linear_func(long_key, "vnni512", "main"), target).mod.inspect_source("asm")
    assert re.search(r"vpdpbusd\s.*zmm", asm) and not re.search(r"vpdpbusd\s.*ymm", asm)
    assert (re.search(r"vpmultishiftqb\s.*zmm", asm) is not None) == (bits < 8)


def test_kernel_isa_takes_the_wide_form_where_it_fits_and_pays():
    assert int8_intrin.kernel_isa("vnni512", layout.KernelKey(8, 4096, 4, 64, 16)) == "vnni512"  # 64 groups
    assert int8_intrin.kernel_isa("vnni512", layout.KernelKey(8, 576, 4, 64, 1)) == "vnni512"  # 9 groups, M = 1
    assert int8_intrin.kernel_isa("vnni512", layout.KernelKey(8, 512, 4, 64, 1)) == "vnni-vbmi"  # 8 groups
    assert int8_intrin.kernel_isa("vnni512", layout.KernelKey(8, 1536, 4, 64, 16)) == "vnni-vbmi"  # 24, M = 16
    assert int8_intrin.kernel_isa("vnni512", layout.KernelKey(8, 4096, 4, 32, 1)) == "vnni-vbmi"  # group 32
    assert int8_intrin.kernel_isa("vnni512", layout.KernelKey(8, 4096, 4, 64, 1, nested="r4121")) == "vnni-vbmi"
    assert int8_intrin.kernel_isa("vnni", layout.KernelKey(8, 4096, 4, 64, 1)) == "vnni"


def test_vbmi_targets_decode_with_multishift():
    """On AVX512-VBMI targets r = 2 and 3 decode with vpmultishiftqb (embedded broadcast: no shift, no byte
    shuffle); a VNNI target without VBMI keeps the shift decode."""
    asm = {(mcpu, bits): build_main(int8_kernels.int8_linear_func(layout.KernelKey(16, 256, bits, 64, 1), isa, "main"),
                                _llvm(mcpu).to_tvm()).mod.inspect_source("asm")
           for mcpu, isa in (("icelake-server", "vnni-vbmi"), ("cascadelake", "vnni")) for bits in (2, 3)}
    for bits in (2, 3):
        assert "vpmultishiftqb" in asm[("icelake-server", bits)] and "vpsrlvq" not in asm[("icelake-server", bits)]
        assert "vpmultishiftqb" not in asm[("cascadelake", bits)] and "vpsrlvq" in asm[("cascadelake", bits)]


@pytest.mark.parametrize("spec", [_llvm("x86-64"), TargetSpec("llvm-aarch64", "llvm", {
    "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1", "num-cores": 4}), TargetSpec(
    "cuda-sm90", "cuda", {"arch": "sm_90"}, {"kind": "llvm"})], ids=["x86-64", "aarch64", "cuda"])
def test_targets_without_a_byte_dot_product_are_refused(spec):
    with pytest.raises(ValueError) as e:
        int8_intrin.check_target(spec)
    msg = str(e.value)
    assert "\n" not in msg and "--act int8 needs" in msg and "use --act float" in msg


def test_unsupported_keys_are_rejected():
    assert not int8_kernels.supports(layout.KernelKey(8, 96, 4, 48, 1))  # group not whole 32-code blocks
    assert not int8_kernels.supports(layout.KernelKey(8, 96, 4, 32, 1, "float16"))
    with pytest.raises(ValueError, match="multiple of 32"):
        int8_kernels.int8_linear_func(layout.KernelKey(8, 96, 4, 48, 1), "avx2")
