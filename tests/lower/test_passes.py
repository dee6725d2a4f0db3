"""The lowering passes on real graphs: every quantized linear rewritten into its bits' kernel with packed
parameters (checked as IR properties), the float head routed to the dense kernel, numerics of one lowered
linear against a float64 numpy reference, and the scheduling phase's error without tuning records."""
from __future__ import annotations

import numpy as np
import pytest

LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _graph(tiny_llama):
    from matq_compile.lower.frontend import LlamaConfig, build_llama

    cfg = LlamaConfig.from_hf(tiny_llama.config.to_dict(), max_seq_len=32)
    return cfg, build_llama(cfg, chunk=16)[0]


def _slices(tiny_llama, act_order=False):
    from matq_compile.lower.passes import LinearSlice

    out = {}
    for i, (name, mod) in enumerate(m for m in tiny_llama.named_modules() if m[0].endswith(LAYERS)):
        N, K = mod.weight.shape
        out[name] = LinearSlice(N, K, 2 + i % 7, 32, act_order and i % 2 == 0)
    return out


def _calls(func, prefix):
    from tvm import relax

    found = []

    def visit(e):
        if isinstance(e, relax.Call) and e.op.name == "relax.call_tir" and e.args[0].name_hint.startswith(prefix):
            found.append(e)

    relax.analysis.post_order_visit(func.body, visit)
    return found


def test_every_quantized_linear_is_rewritten(tiny_llama):
    from matq_compile import layout
    from matq_compile.lower.passes import lower_matq_linear, packed_names
    from tvm import relax

    _, mod = _graph(tiny_llama)
    slices = _slices(tiny_llama, act_order=True)
    out = lower_matq_linear(slices)(mod)
    relax.analysis.well_formed(out)
    for fname, m in (("decode", 1), ("prefill", 16), ("score", 16)):
        func = out[fname]
        calls = _calls(func, "matq_linear_")
        assert len(calls) == len(slices)
        names = {p.name for p in func.params}
        for layer, sl in slices.items():
            assert f"{layer}.weight" not in names
            assert set(packed_names(layer, sl)) <= names
        kernels = sorted(c.args[0].name_hint for c in calls)
        expect = sorted(sl.key(layout.bucket_for(m)).name for sl in slices.values())
        assert kernels == expect  # the bits of each layer, the static M bucket of each function
    perm_layers = [name for name, sl in slices.items() if sl.act_order]
    takes = [p for p in out["decode"].params if p.name.endswith(".perm")]
    assert sorted(p.name[:-5] for p in takes) == sorted(perm_layers)


def test_unknown_layer_and_shape_mismatch_are_errors(tiny_llama):
    from matq_compile.lower.passes import LinearSlice, lower_matq_linear

    _, mod = _graph(tiny_llama)
    with pytest.raises(ValueError, match="not found as linears"):
        lower_matq_linear({"model.layers.9.mlp.up_proj": LinearSlice(256, 128, 4)})(mod)
    with pytest.raises(ValueError, match="graph weight shape"):
        lower_matq_linear({"model.layers.0.mlp.up_proj": LinearSlice(128, 128, 4)})(mod)


@pytest.mark.parametrize("w_dtype", ["float32", "float16"])
def test_head_goes_to_the_dense_kernel(tiny_llama, w_dtype):
    from matq_compile.lower.passes import head_param_name, lower_dense_linear, lower_matq_linear

    _, mod = _graph(tiny_llama)
    out = lower_dense_linear(w_dtype)(lower_matq_linear(_slices(tiny_llama))(mod))
    for fname in ("decode", "prefill", "score"):
        func = out[fname]
        (call,) = _calls(func, "dense_")
        weight = call.args[1].fields[1]  # call_tir(kernel, (x, W))
        assert weight.name == head_param_name("model.embed_tokens.weight", w_dtype)
        assert weight.name in {p.name for p in func.params} and str(weight.ty.dtype) == w_dtype
        assert "model.embed_tokens.weight" in {p.name for p in func.params}  # the embedding lookup keeps it


def test_lowered_linear_matches_numpy_dequant(rng):
    from matq_compile import layout, targets
    from matq_compile._tvm import tvm
    from matq_compile.lower.passes import LinearSlice, lower_matq_linear, schedule_kernels
    from tvm import relax
    from tvm.relax.frontend import nn

    class One(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(96, 40, bias=False)

        def forward(self, x):
            return self.proj(x)

    mod, _ = One().export_tvm(spec={"forward": {"x": nn.spec.Tensor([3, 96], "float32")}})
    spec = targets.load("host")
    for bits, rule in ((3, "round"), (5, "midpoint")):
        q = rng.integers(0, 256, (40, 96), dtype=np.uint8)
        s = (rng.random((40, 3)) * 0.01 + 1e-3).astype(np.float16)
        z = rng.integers(100, 156, (40, 3), dtype=np.uint8)
        packed = layout.pack_slice(q, s, z, bits, rule, 32)
        low = lower_matq_linear({"proj": LinearSlice(40, 96, bits, 32)})(mod)
        low = schedule_kernels(spec, None, allow_untuned=True)(low)
        ex = tvm.compile(low, target=spec.to_tvm())
        x = rng.standard_normal((3, 96)).astype(np.float32)
        dev = tvm.cpu()
        y = relax.VirtualMachine(ex, dev)["forward"](*(tvm.runtime.tensor(a, dev) for a in
                                                        (x, packed["P"], packed["S"], packed["Z"]))).numpy()
        from matq_compile.slicing import dequant_parent

        s64, z64 = (np.repeat(a.astype(np.float64), 32, 1) for a in (s, z))
        w = dequant_parent(q, s64, z64, bits, rule)
        np.testing.assert_allclose(y, x.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-4)


def test_scheduling_without_records_is_an_error(tiny_llama):
    from matq_compile import targets
    from matq_compile.lower.kernels import KEY_ATTR
    from matq_compile.lower.passes import lower_matq_linear, schedule_kernels
    from tvm import tirx

    _, mod = _graph(tiny_llama)
    low = lower_matq_linear(_slices(tiny_llama))(mod)
    spec = targets.load("host")
    with pytest.raises(ValueError, match="allow-untuned"):
        schedule_kernels(spec, None, allow_untuned=False)(low)
    out = schedule_kernels(spec, None, allow_untuned=True)(low)
    matq = [f for _, f in out.functions_items() if isinstance(f, tirx.PrimFunc) and KEY_ATTR in (f.attrs or {})]
    assert matq and all(int(f.attrs["op_pattern"]) == 8 and bool(f.attrs["tirx.is_scheduled"]) for f in matq)


def test_pipeline_phases_and_ir_dump(tiny_llama, tmp_path):
    from matq_compile import targets
    from matq_compile.lower.pipeline import PipelineOptions, matq_pipeline, phases

    spec = targets.load("host")
    opts = PipelineOptions(allow_untuned=True, dump_dir=str(tmp_path))
    names = [name for name, _ in phases(_slices(tiny_llama), spec, None, opts)]
    assert names == ["lower-linears", "lower-head", "schedule-kernels", "tvm-default"]
    _, mod = _graph(tiny_llama)
    out = matq_pipeline(_slices(tiny_llama), spec, None, opts, stop_before="tvm-default")(mod)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01-lower-linears.py", "02-lower-head.py",
                                                         "03-schedule-kernels.py"]
    assert "matq_linear_" in (tmp_path / "01-lower-linears.py").read_text()
    assert "dense_n256_k128" in out.script()


@pytest.mark.parametrize("w_dtype", ["float32", "float16", "int8"])
def test_dense_head_kernel_numerics(rng, w_dtype):
    """The head GEMV against numpy float64 on the weight it actually reads (fp16 copy, int8 codes x row scale)."""
    from matq_compile import targets
    from matq_compile._tvm import tvm
    from matq_compile.lower.params import ArraySource, ParamMap
    from matq_compile.lower.passes import lower_dense_linear
    from matq_compile.lower.pipeline import weight_params
    from tvm import relax

    from helpers import head_module

    mod = head_module(333, 72)  # K not a multiple of the 16-lane tile, odd N
    pmap = ParamMap()
    low = lower_dense_linear(w_dtype, pmap)(mod)
    names = [p.name for p in low["forward"].params[1:]]
    w = rng.standard_normal((333, 72)).astype(np.float32)
    args = [pmap.make(n, ArraySource({"lm_head.weight": w})) for n in names]
    ref_w = {"float32": w.astype(np.float64), "float16": w.astype(np.float16).astype(np.float64),
             "int8": args[0].astype(np.float64) * args[-1].astype(np.float64)[:, None]}[w_dtype]
    if w_dtype == "int8":
        assert np.abs(ref_w - w).max() <= np.abs(w).max(axis=1).max() / 254 + 1e-6  # half a code step
    ex = tvm.compile(low, target=targets.load("host").to_tvm())
    dev = tvm.cpu()
    x = rng.standard_normal((3, 72)).astype(np.float32)
    y = relax.VirtualMachine(ex, dev)["forward"](*(tvm.runtime.tensor(a, dev) for a in [x, *args])).numpy()
    np.testing.assert_allclose(y, x.astype(np.float64) @ ref_w.T, rtol=1e-5, atol=1e-4)
    assert [v.name for v in weight_params(low)[1]] == names  # the weights follow the num_input activations


def test_hand_scheduled_kernels_are_sealed_by_attribute_not_name(tiny_llama):
    """A kernel marked hand-scheduled is sealed whatever it is called; an unmarked one is not, even if its name
    looks like a Llama kernel's."""
    from matq_compile import targets
    from matq_compile.lower.kernels import HAND_ATTR, hand_scheduled
    from matq_compile.lower.passes import schedule_kernels
    from tvm import te, tirx

    def copy(name: str) -> tirx.PrimFunc:
        x = te.placeholder((8,), "float32", name="x")
        return te.create_prim_func([x, te.compute((8,), lambda i: x[i], name="y")]).with_attr("global_symbol", name)

    _, mod = _graph(tiny_llama)
    mod["renamed_attention"] = hand_scheduled(copy("renamed_attention"))
    mod["rope_lookalike"] = copy("rope_lookalike")
    out = schedule_kernels(targets.load("host"), None, allow_untuned=True)(mod)
    sealed = out["renamed_attention"].attrs
    assert bool(sealed[HAND_ATTR]) and int(sealed["op_pattern"]) == 8 and bool(sealed["tirx.is_scheduled"])
    assert "tirx.is_scheduled" not in (out["rope_lookalike"].attrs or {})


def test_every_entry_function_takes_every_weight_even_unread():
    """An entry function whose dead code lost a weight (pruned per function) still takes it, in the shared order, so
    one argument list serves every function; it runs with the extra argument."""
    from matq_compile import targets
    from matq_compile._tvm import tvm
    from matq_compile.lower.passes._rewrite import prune_weights
    from matq_compile.lower.pipeline import weight_params
    from tvm import relax
    from tvm.relax.frontend import nn

    class Two(nn.Module):
        def __init__(self):
            self.a = nn.Linear(8, 8, bias=False)
            self.b = nn.Linear(8, 8, bias=False)

        def both(self, x):
            return self.b(self.a(x))

        def first(self, x):
            return self.a(x)

    x_spec = {"x": nn.spec.Tensor([1, 8], "float32")}
    mod, _ = Two().export_tvm(spec={"both": x_spec, "first": x_spec})
    mod = prune_weights(relax.transform.DeadCodeElimination()(mod))
    assert [p.name for p in mod["first"].params[1:]] == ["a.weight"]
    low, params = weight_params(mod)
    assert [p.name for p in params] == ["a.weight", "b.weight"]
    assert all([p.name for p in low[f].params[1:]] == ["a.weight", "b.weight"] for f in ("both", "first"))
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.compile(low, target=targets.load("host").to_tvm()), dev)
    rng = np.random.default_rng(0)
    x, a, b = (rng.standard_normal(s).astype(np.float32) for s in ((1, 8), (8, 8), (8, 8)))
    args = [tvm.runtime.tensor(t, dev) for t in (x, a, b)]
    np.testing.assert_allclose(vm["first"](*args).numpy(), x @ a.T, rtol=1e-5)
    np.testing.assert_allclose(vm["both"](*args).numpy(), x @ a.T @ b.T, rtol=1e-5)
