"""Export packs each slice with its refitted scales when the checkpoint stores them (format 2)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from matq_compile import layout, slicing
from matq_compile.config import QuantSpec
from matq_compile.quant import quantize_weight


def test_packed_weights_use_the_refitted_slice_scales():
    from matq_compile.export import CheckpointWeights

    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 128, generator=g)
    X = torch.randn(512, 128, generator=g)
    res = quantize_weight(W, X.T @ X / 512, QuantSpec(group_size=32, refit=(4,)))
    assert not torch.equal(res.slice_scales[4], res.scales)
    ckpt = SimpleNamespace(layer_names=["l"], layers={"l": res}, tensors={}, spec=SimpleNamespace(slice_rule="round"))
    source = CheckpointWeights(ckpt)
    for bits, scales in ((4, res.slice_scales[4]), (3, res.scales)):
        arrays = source.packed("l", bits, 32)
        want = slicing.slice_scale(scales.numpy().astype(np.float64), bits).astype(np.float16)
        assert np.array_equal(arrays["S"], want)
        # the packed slice dequantizes to the checkpoint's slice (refit included)
        deq = layout.dequant(arrays, bits, 128, 32)
        np.testing.assert_allclose(deq, res.dequant(bits).numpy(), rtol=2e-3, atol=1e-6)
