"""Joining sensitivity and latency per layer key; provenance checks; latency table round trip."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from matq_compile.search.tables import build_table, latency_keys, load_latency_table, parse_levels, save_latency_table

LEVELS = (2, 3, 4, 6, 8)


def test_join_picks_each_layers_key(synthetic):
    make_sens, make_lat = synthetic
    rng = np.random.default_rng(0)
    sens = make_sens(rng, 2)
    lat = make_lat(rng, sens)
    table = build_table(sens, LEVELS, latency=lat, proxy="rel_mse")
    for i, layer in enumerate(table.layers):
        n, k = sens[layer.name]["shape"]
        for j, b in enumerate(LEVELS):
            assert table.latency_s[i, j] == lat.entries[(n, k, 32, 1, b)]
            assert table.proxy[i, j] == sens[layer.name]["rel_mse"][str(b)]
    # four distinct shapes (q/o, k/v, gate/up, down) x 5 levels
    assert len(latency_keys(table.layers, LEVELS, 1)) == 4 * 5


def test_missing_latency_key_is_an_error(synthetic):
    make_sens, make_lat = synthetic
    rng = np.random.default_rng(1)
    sens = make_sens(rng, 1)
    lat = make_lat(rng, sens)
    entries = dict(lat.entries)
    del entries[(128, 64, 32, 1, 3)]
    with pytest.raises(ValueError, match=r"lacks 1 kernel key.*\(128, 64, 32, 1, 3\)"):
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
