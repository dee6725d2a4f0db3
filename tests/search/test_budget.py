"""Budget parsing and cost matrices against hand computations."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile.search.budget import Budget, choice_of, cost_matrix, parse_budget, predicted, total
from matq_compile.search.tables import ByteModel, LayerInfo


@pytest.mark.parametrize("text,kind,value", [
    ("latency:1.2ms", "latency", 1.2e-3), ("latency:800us", "latency", 8e-4), ("latency:0.002", "latency", 2e-3),
    ("lat:3e-3s", "latency", 3e-3), ("bytes:40MB", "bytes", 40e6), ("bytes:2MiB", "bytes", 2 * 2**20),
    ("bytes:1000", "bytes", 1000.0), ("avg-bits:3.5", "avg_bits", 3.5), ("avg_bits:4", "avg_bits", 4.0)])
def test_parse_budget(text, kind, value):
    b = parse_budget(text)
    assert b.kind == kind and b.value == pytest.approx(value, rel=1e-12)
    assert parse_budget(str(b)).value == pytest.approx(b.value, rel=1e-5)  # str() round trips


@pytest.mark.parametrize("text", ["latency", "speed:3ms", "latency:fast", "bytes:4XB", "avg-bits:-1",
                                  "latency:0ms", "avg-bits:3bits"])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError):
        parse_budget(text)


def test_avg_bits_and_bytes_match_hand_counts(make_table):
    table = make_table(seed=0, n_blocks=1)
    rng = np.random.default_rng(0)
    choice = rng.integers(0, len(table.levels), len(table.layers))
    bits = np.asarray(table.levels)[choice]
    numel = np.array([la.out_features * la.in_features for la in table.layers], dtype=float)
    assert total(table, choice, "avg_bits") == pytest.approx((numel * bits).sum() / numel.sum(), rel=1e-12)
    # group 32: codes + one fp16 scale and one fp16 zero per 32 weights (K = 64 or 128: no row padding)
    expect_bytes = sum(n * b / 8 + n / 32 * 4 for n, b in zip(numel, bits))
    assert total(table, choice, "bytes") == pytest.approx(expect_bytes, rel=1e-12)
    p = predicted(table, choice)
    assert set(p) == {"proxy", "avg_bits", "bytes", "latency_s"}
    assert p["latency_s"] == pytest.approx(sum(table.latency_s[i, c] for i, c in enumerate(choice)))


def test_byte_model_matches_kernel_layout():
    from matq_compile.layout import KernelKey

    for n, k, g, bits in [(6, 64, 16, 3), (5, 40, 8, 5), (7, 576, -1, 4), (3, 1536, 64, 2), (4, 33, -1, 8)]:
        layer = LayerInfo("l", out_features=n, in_features=k, group=g)
        assert ByteModel().layer_bytes(layer, bits) == KernelKey(n, k, bits, g).weight_bytes()
    layer = LayerInfo("l", 6, 64, 16)
    assert ByteModel(act_order=True).layer_bytes(layer, 3) == ByteModel().layer_bytes(layer, 3) + 64 * 4


def test_latency_budget_needs_latency(make_table):
    import dataclasses

    table = dataclasses.replace(make_table(seed=0, n_blocks=1), latency_s=None)
    with pytest.raises(ValueError, match="latency table"):
        cost_matrix(table, "latency")


def test_choice_of_rejects_mismatch(make_table):
    table = make_table(seed=0, n_blocks=1)
    alloc = {n: 4 for n in table.names}
    assert (choice_of(table, alloc) == table.levels.index(4)).all()
    with pytest.raises(ValueError, match="unknown layers"):
        choice_of(table, {**alloc, "ghost": 4})
    with pytest.raises(ValueError, match="not among the allowed levels"):
        choice_of(table, {**alloc, table.names[0]: 5})
    with pytest.raises(ValueError, match="positive"):
        Budget("bytes", 0.0)
