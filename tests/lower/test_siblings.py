"""Sibling sets (siblings.py), the kernel units every stage takes from kernel_units.py (which sets fuse), and the
stacked arrays of a fused layer (the parameter map's PackedPart) against a numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile import layout
from matq_compile.kernel_units import LinearSlice, kernel_units
from matq_compile.lower.params import ArraySource, PackedPart
from matq_compile.siblings import members_of, sibling_key, sibling_sets


def fusable_sets(slices) -> dict[str, tuple[str, ...]]:
    return {u.name: u.members for u in kernel_units(slices) if u.fused}

ATTN = "model.layers.3.self_attn."
MLP = "model.layers.3.mlp."


def test_complete_sets_only_in_set_order():
    names = [ATTN + "v_proj", ATTN + "q_proj", ATTN + "k_proj", ATTN + "o_proj", MLP + "gate_proj", MLP + "down_proj"]
    assert sibling_sets(names) == {ATTN + "qkv_proj": (ATTN + "q_proj", ATTN + "k_proj", ATTN + "v_proj")}
    assert sibling_key(MLP + "up_proj") == MLP + "gate_up_proj" and sibling_key(ATTN + "o_proj") is None


def test_members_round_trip_and_refuse_other_names():
    for fused in (ATTN + "qkv_proj", MLP + "gate_up_proj"):
        assert all(sibling_key(m) == fused for m in members_of(fused))
    assert members_of(ATTN + "o_proj") is None and members_of(ATTN + "q_proj") is None


def _slices(**over) -> dict[str, LinearSlice]:
    base = {ATTN + "q_proj": LinearSlice(64, 64, 4, 32), ATTN + "k_proj": LinearSlice(16, 64, 4, 32),
            ATTN + "v_proj": LinearSlice(16, 64, 4, 32), MLP + "gate_proj": LinearSlice(96, 64, 4, 32),
            MLP + "up_proj": LinearSlice(96, 64, 4, 32), MLP + "down_proj": LinearSlice(64, 96, 4, 32)}
    return base | over


def test_fusable_sets_need_one_kernel():
    assert set(fusable_sets(_slices())) == {ATTN + "qkv_proj", MLP + "gate_up_proj"}
    assert set(fusable_sets(_slices(**{ATTN + "k_proj": LinearSlice(16, 64, 3, 32)}))) == {MLP + "gate_up_proj"}
    act = {n: LinearSlice(s.N, s.K, s.bits, s.group, True) for n, s in _slices().items()}
    assert fusable_sets(act) == {}  # act-order: each member may have its own permutation


def test_fused_slices_stack_rows():
    out = {u.name: u.slice for u in kernel_units(_slices())}
    assert set(out) == {ATTN + "qkv_proj", MLP + "gate_up_proj", MLP + "down_proj"}
    assert out[ATTN + "qkv_proj"] == LinearSlice(96, 64, 4, 32)
    assert {u.name for u in kernel_units(_slices(), fuse_siblings=False)} == set(_slices())


def test_fused_arrays_are_member_rows_stacked(rng):
    arrays = {}
    for name, sl in _slices().items():
        packed = layout.pack_slice(rng.integers(0, 256, (sl.N, sl.K), dtype=np.uint8),
                                   (rng.random((sl.N, sl.K // sl.group)) * 0.01).astype(np.float16), None, sl.bits,
                                   group=sl.group)
        arrays.update({f"{name}.{k}": v for k, v in packed.items()})
    (qkv,) = [u for u in kernel_units(_slices()) if u.name == ATTN + "qkv_proj"]
    for suffix in ("P", "S", "Z"):
        got = PackedPart(qkv.members, 4, 32, suffix).make(ArraySource(arrays))
        want = np.vstack([arrays[f"{ATTN}{m}.{suffix}"] for m in ("q_proj", "k_proj", "v_proj")])
        np.testing.assert_array_equal(got, want)
    with pytest.raises(KeyError):
        PackedPart((ATTN + "o_proj",), 4, 32, "P").make(ArraySource(arrays))


@pytest.mark.parametrize("perm", [False, True])
def test_tune_shapes_of_a_checkpoint_include_fused_kernels(perm):
    from matq_compile.ckpt import linear_slices
    from matq_compile.kernel_units import kernel_keys

    layers = [{"name": n, "shape": [sl.N, sl.K], "group_size": 32, "perm": perm} for n, sl in _slices().items()]
    keys = kernel_keys(linear_slices({"layers": layers}, 4), [4], [1])
    shapes = list(dict.fromkeys((k.N, k.K, k.group) for k in keys))
    own = [(64, 64, 32), (16, 64, 32), (96, 64, 32), (64, 96, 32)]
    assert shapes == own + ([] if perm else [(192, 64, 32)])  # q/k/v stack to 96 = gate's


def _attention_inputs(extra_use: bool):
    """Relax function: q/k/v linears of one input (float weights as parameters), optionally reading W_q again."""
    from tvm import relax

    x = relax.Var("x", relax.TensorType((1, 64), "float32"))
    ws = {m: relax.Var(f"{ATTN}{m}.weight", relax.TensorType((n, 64), "float32"))
          for m, n in (("q_proj", 64), ("k_proj", 16), ("v_proj", 16))}
    bb = relax.BlockBuilder()
    with bb.function("main", [x, *ws.values()]):
        with bb.dataflow():
            outs = [bb.emit(relax.op.matmul(x, bb.emit(relax.op.permute_dims(w)))) for w in ws.values()]
            if extra_use:
                outs.append(bb.emit(relax.op.sum(ws["q_proj"])))
            gv = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(gv)
    return bb.get()


def test_pass_stacks_the_weights_and_refuses_other_reads(rng):
    from matq_compile._tvm import tvm
    from matq_compile.lower.passes import fuse_sibling_linears
    from tvm import relax

    from matq_compile.lower.params import ParamMap, SourceTensor, StackedRows

    sets = [u for u in kernel_units({ATTN + m: LinearSlice(n, 64, 4, 32) for m, n in
                                     (("q_proj", 64), ("k_proj", 16), ("v_proj", 16))})]
    pmap = ParamMap()
    mod = fuse_sibling_linears(sets, pmap)(_attention_inputs(False))
    assert pmap.recipe(ATTN + "qkv_proj.weight") == StackedRows(tuple(
        SourceTensor(f"{ATTN}{m}.weight") for m in ("q_proj", "k_proj", "v_proj")))
    params = [(p.name, tuple(int(s) for s in p.ty.shape)) for p in mod["main"].params]
    assert params == [("x", (1, 64)), (ATTN + "qkv_proj.weight", (96, 64))]
    assert mod.script().count("R.matmul") == 1 and "R.split" in mod.script()
    ex = tvm.compile(mod, target="llvm")
    x, w = rng.standard_normal((1, 64)).astype("float32"), rng.standard_normal((96, 64)).astype("float32")
    outs = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w))
    for out, rows in zip(outs, (slice(0, 64), slice(64, 80), slice(80, 96))):
        np.testing.assert_allclose(out.numpy(), x @ w[rows].T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="read other than by one linear"):
        fuse_sibling_linears(sets)(_attention_inputs(True))
