"""Joining sensitivity and latency per layer key; provenance checks; latency table round trip."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from matq_compile.layout import KernelKey
from matq_compile.search.tables import build_table, latency_keys, load_latency_table, parse_levels, save_latency_table

LEVELS = (2, 3, 4, 6, 8)


def test_join_picks_each_layers_key(synthetic):
    make_sens, make_lat = synthetic
    rng = np.random.default_rng(0)
    sens = make_sens(rng, 2)
    lat = make_lat(rng, sens)
    table = build_table(sens, LEVELS, latency=lat, proxy="rel_mse", fuse_siblings=False)
    for i, layer in enumerate(table.layers):
        n, k = sens[layer.name]["shape"]
        for j, b in enumerate(LEVELS):
            assert table.latency_s[i, j] == lat.entries[KernelKey(n, k, b, 32, 1)]
            assert table.proxy[i, j] == sens[layer.name]["rel_mse"][str(b)]
    # four distinct shapes (q/o, k/v, gate/up, down) x 5 levels; fused q/k/v (128 x 64) is gate/up's shape and
    # fused gate/up (256 x 64) is one more
    assert len(latency_keys(table.layers, LEVELS, 1, fuse_siblings=False)) == 4 * 5
    assert len(latency_keys(table.layers, LEVELS, 1)) == 5 * 5


def test_sibling_sets_cost_their_fused_kernel(synthetic):
    """With fusion a tied set costs exactly the one kernel the compiler runs, shared by rows; other layers keep
    their own kernel."""
    make_sens, make_lat = synthetic
    rng = np.random.default_rng(3)
    sens = make_sens(rng, 2)
    lat = make_lat(rng, sens)
    table = build_table(sens, LEVELS, latency=lat)
    row = {la.name: i for i, la in enumerate(table.layers)}
    for blk in range(2):
        p = f"model.layers.{blk}."
        for members, fused in ((("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), (128, 64)),
                               (("mlp.gate_proj", "mlp.up_proj"), (256, 64))):
            for j, b in enumerate(LEVELS):
                total = sum(table.latency_s[row[p + m], j] for m in members)
                assert total == pytest.approx(lat.entries[KernelKey(*fused, b, 32, 1)], rel=1e-12)
            q = row[p + members[0]]
            assert table.latency_s[q, 0] == pytest.approx(
                lat.entries[KernelKey(*fused, 2, 32, 1)] * table.layers[q].out_features / fused[0], rel=1e-12)
        o = row[p + "self_attn.o_proj"]
        assert list(table.latency_s[o]) == [lat.entries[KernelKey(64, 64, b, 32, 1)] for b in LEVELS]


def test_missing_latency_key_is_an_error(synthetic):
    make_sens, make_lat = synthetic
    rng = np.random.default_rng(1)
    sens = make_sens(rng, 1)
    lat = make_lat(rng, sens)
    entries = dict(lat.entries)
    del entries[KernelKey(128, 64, 3, 32, 1)]
    with pytest.raises(ValueError, match=r"lacks 1 kernel.*matq_linear_n128_k64_b3_g32_m1_float32"):
        build_table(sens, LEVELS, latency=dataclasses.replace(lat, entries=entries))
    with pytest.raises(ValueError, match="lacks"):  # another M bucket was never measured
        build_table(sens, LEVELS, latency=lat, m_bucket=16)


def test_missing_sensitivity_is_an_error(synthetic):
    make_sens, _ = synthetic
    sens = make_sens(np.random.default_rng(2), 1, levels=(2, 3, 4, 8))
    with pytest.raises(ValueError, match=r"no nmse\[6\]"):
        build_table(sens, LEVELS)
    with pytest.raises(ValueError, match="unknown proxy"):
        build_table(sens, (2, 3), proxy="kl")
    with pytest.raises(ValueError, match="no entry"):
        build_table(sens, (2, 3), layer_names=["model.ghost"])


def test_latency_table_round_trip_and_provenance(synthetic, tmp_path):
    make_sens, make_lat = synthetic
    rng = np.random.default_rng(3)
    lat = make_lat(rng, make_sens(rng, 1), target="llvm-host", db_hash="e" * 64)
    save_latency_table(tmp_path / "latency.json", lat)
    back = load_latency_table(tmp_path / "latency.json")
    assert back == lat
    back.check_source("llvm-host", "e" * 64)
    with pytest.raises(ValueError, match="target 'llvm-host', not 'cuda-sm90'"):
        back.check_source("cuda-sm90", "e" * 64)
    with pytest.raises(ValueError, match="tuning database"):
        back.check_source("llvm-host", "f" * 64)
    with pytest.raises(FileNotFoundError):
        load_latency_table(tmp_path / "nope.json")


@pytest.mark.parametrize("text", ["", "2,2", "1,2", "2,9", "a,b"])
def test_parse_levels_rejects(text):
    with pytest.raises(ValueError):
        parse_levels(text)
    assert parse_levels("8,2, 4") == (2, 4, 8)


def test_committed_tables_load_through_the_public_reader():
    """The tables shipped beside the tuning databases read with matq_compile.search.load_latency_table."""
    from pathlib import Path

    from matq_compile import search

    paths = sorted((Path(__file__).resolve().parents[2] / "schedules" / "db").glob("*/latency_m*.json"))
    assert paths
    for path in paths:
        table = search.load_latency_table(path, target=path.parent.name)
        assert table.entries and all(t > 0 for t in table.entries.values())


def test_version_1_tables_of_both_old_shapes_still_load(tmp_path):
    import json

    head = {"format_version": 1, "target": "llvm-x", "tvm_version": "0.27.0", "db_hash": "a" * 64}
    key = KernelKey(576, 576, 4, 64, 1)
    by_name = head | {"rows": [{"key": key.name, "median_s": 2e-5, "min_s": 1e-5, "gbps": 8.0}]}
    by_fields = head | {"rows": [{"N": 576, "K": 576, "group": 64, "m_bucket": 1, "bits": 4, "median_s": 2e-5}]}
    for i, obj in enumerate((by_name, by_fields)):
        (tmp_path / f"{i}.json").write_text(json.dumps(obj))
        assert load_latency_table(tmp_path / f"{i}.json").entries == {key: 2e-5}
    (tmp_path / "bad.json").write_text(json.dumps(head | {"format_version": 7, "rows": []}))
    with pytest.raises(ValueError, match="format_version 7"):
        load_latency_table(tmp_path / "bad.json")
    (tmp_path / "trunc.json").write_text(json.dumps(by_name)[:40])
    with pytest.raises(ValueError, match="not a JSON latency table"):
        load_latency_table(tmp_path / "trunc.json")
