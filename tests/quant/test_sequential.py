"""The block-by-block driver on the tiny random Llama: end to end, Hessian inputs, true-sequential, bad inputs."""
from __future__ import annotations

import pytest
import torch

from matq_compile import evaluate
from matq_compile.config import QuantSpec
from matq_compile.quant.hessian import accumulate
from matq_compile.quant.sensitivity import layer_sensitivity
from matq_compile.quant.sequential import quantize_model

CALIB = torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(0))
PROBE = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))


def _load(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def _hessian_reference(model, layer: str) -> torch.Tensor:
    """2/N Σ x xᵀ of `layer`'s inputs in an ordinary full-model forward over the calibration tokens (float64)."""
    xs = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: xs.append(i[0].detach()))
    with torch.no_grad():
        model(input_ids=CALIB)
    handle.remove()
    x = torch.cat(xs).reshape(-1, xs[0].shape[-1]).double()
    return 2.0 * x.t() @ x / x.shape[0]


@pytest.mark.parametrize("method, act_order", [("rtn", False), ("gptq", True), ("matgptq", True)])
def test_end_to_end_through_checkpoint(tiny_llama_dir, tmp_path, method, act_order):
    from matq_compile.ckpt import load_checkpoint, save_checkpoint

    model = _load(tiny_llama_dir)
    with torch.no_grad():
        ref = model(input_ids=PROBE).logits
    spec = QuantSpec(method=method, group_size=32, act_order=act_order)
    q = quantize_model(model, CALIB, spec, batch_size=4)
    assert len(q.layers) == 2 * 7 and set(q.sensitivity) == set(q.layers)
    assert "lm_head.weight" not in q.tensors and "model.embed_tokens.weight" in q.tensors  # tied: stored once
    assert all((r.perm is not None) == act_order for r in q.layers.values())
    save_checkpoint(tmp_path / "ck", layers=q.layers, tensors=q.tensors, spec=spec, sensitivity=q.sensitivity,
                    source={"model": "tiny"}, extra_files={"config.json": tiny_llama_dir / "config.json"})
    ckpt = load_checkpoint(tmp_path / "ck")
    errors = {}
    for bits in (8, 4, 2):
        with torch.no_grad():
            logits = evaluate.model_from_checkpoint(ckpt, bits)(input_ids=PROBE).logits
        errors[bits] = float((logits - ref).norm() / ref.norm())
    # the int8 slice is close to float; matgptq propagates the mean error of all trained slices, so its int8
    # slice gives up some accuracy (spec section 7, pattern 2)
    assert errors[8] < (0.15 if method == "matgptq" else 0.02), errors
    assert errors[8] < errors[4] < errors[2], errors


def test_driver_leaves_the_model_at_the_native_slice(tiny_llama_dir):
    model = _load(tiny_llama_dir)
    q = quantize_model(model, CALIB, QuantSpec(method="gptq", bits=4, group_size=32), batch_size=6)
    for name, result in q.layers.items():
        assert torch.equal(model.get_submodule(name).weight, result.dequant(4))


def test_hessians_see_the_quantized_earlier_blocks(tiny_llama_dir):
    """RTN codes ignore H, so the final model reproduces exactly the inputs every layer was calibrated on."""
    model = _load(tiny_llama_dir)
    spec = QuantSpec(method="rtn", group_size=32, levels=(3, 8))
    q = quantize_model(model, CALIB, spec, batch_size=4)
    for layer in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                  "model.layers.1.self_attn.v_proj"):
        # model.layers.0.* q/k/v inputs are float; block 1 sees the quantized block 0
        H = _hessian_reference(model, layer)
        W0 = _load(tiny_llama_dir).get_submodule(layer).weight.detach()
        expect = layer_sensitivity(W0, q.layers[layer], H, spec.levels)
        for r in ("3", "8"):
            assert q.sensitivity[layer]["loss"][r] == pytest.approx(expect["loss"][r], rel=1e-4)


@pytest.mark.parametrize("true_sequential", [False, True])
def test_true_sequential_calibrates_later_groups_on_quantized_outputs(tiny_llama_dir, true_sequential):
    model = _load(tiny_llama_dir)
    spec = QuantSpec(method="rtn", group_size=32, levels=(3,), true_sequential=true_sequential)
    q = quantize_model(model, CALIB, spec, batch_size=4)
    layer = "model.layers.0.mlp.down_proj"
    float_model = _load(tiny_llama_dir)
    # with true-sequential, down_proj's inputs come from the quantized attention and gate/up of its own block
    H = _hessian_reference(model if true_sequential else float_model, layer)
    expect = layer_sensitivity(float_model.get_submodule(layer).weight.detach(), q.layers[layer], H, (3,))
    assert q.sensitivity[layer]["loss"]["3"] == pytest.approx(expect["loss"]["3"], rel=1e-4)
    other = _hessian_reference(float_model if true_sequential else model, layer)
    assert not torch.allclose(H, other, rtol=1e-3)


def test_hessian_helper_matches_the_running_mean():
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    H, n = accumulate(None, 0, x[:1])
    H, n = accumulate(H, n, x[1:])
    flat = x.reshape(-1, 4).double()
    assert n == 15 and torch.allclose(H.double(), 2 * flat.t() @ flat / 15, atol=1e-5)


def test_same_inputs_give_identical_parents(tiny_llama_dir):
    spec = QuantSpec(method="gptq", group_size=32, act_order=True, levels=(4,))
    a = quantize_model(_load(tiny_llama_dir), CALIB, spec, batch_size=3)
    b = quantize_model(_load(tiny_llama_dir), CALIB, spec, batch_size=3)
    for name in a.layers:
        assert torch.equal(a.layers[name].qweight, b.layers[name].qweight)
        assert torch.equal(a.layers[name].scales, b.layers[name].scales)


def test_bad_inputs_fail_before_any_work(tiny_llama_dir):
    model = _load(tiny_llama_dir)
    with pytest.raises(ValueError, match="does not divide in_features 128"):
        quantize_model(model, CALIB, QuantSpec(method="gptq", group_size=96))
    with pytest.raises(ValueError, match="int64"):
        quantize_model(model, CALIB.float(), QuantSpec(method="gptq"))
    with pytest.raises(ValueError, match="unsupported model family"):
        model.config.model_type = "opt"
        quantize_model(model, CALIB, QuantSpec(method="gptq"))


def test_result_does_not_depend_on_the_number_of_workers(tiny_llama_dir):
    spec = QuantSpec(feedback="per-slice", lambdas=((8, 64.0), (4, 1.0), (3, 1.0)), refit=(8, 4, 3), group_size=32)
    a = quantize_model(_load(tiny_llama_dir), CALIB, spec, batch_size=3, workers=1)
    b = quantize_model(_load(tiny_llama_dir), CALIB, spec, batch_size=3, workers=3)
    assert list(a.layers) == list(b.layers) and a.sensitivity == b.sensitivity
    for name, x in a.layers.items():
        y = b.layers[name]
        assert torch.equal(x.qweight, y.qweight) and torch.equal(x.scales, y.scales)
        assert x.slice_scales.keys() == y.slice_scales.keys()
        assert all(torch.equal(x.slice_scales[r], y.slice_scales[r]) for r in x.slice_scales)


def test_siblings_share_one_hessian_equal_to_their_own(tiny_llama_dir):
    from matq_compile.arch import arch_of
    from matq_compile.quant.sequential import _capture, _collect_hessians

    model = _load(tiny_llama_dir)
    arch = arch_of(model)
    blocks = model.get_submodule(arch.blocks)
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj")
    with torch.no_grad():
        inputs = _capture(model, blocks, arch, CALIB, 3)
        shared = _collect_hessians(blocks[0], names, inputs.hidden, inputs.args[0])
        own = {n: _collect_hessians(blocks[0], (n,), inputs.hidden, inputs.args[0])[n] for n in names}
    assert shared["self_attn.k_proj"] is shared["self_attn.q_proj"] is shared["self_attn.v_proj"]
    assert shared["mlp.up_proj"] is shared["mlp.gate_proj"]
    assert shared["self_attn.o_proj"] is not shared["self_attn.q_proj"]
    for n in names:
        assert torch.equal(shared[n], own[n]), n
