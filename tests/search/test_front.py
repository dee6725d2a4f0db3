"""Front rows: Pareto mask against a direct definition, CSV round trip, and the PNG plot."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile.search.front import FrontRow, bits_histogram, pareto_mask, read_front, write_front
from matq_compile.search.plot import plot_front


def test_pareto_mask_matches_definition():
    rng = np.random.default_rng(0)
    cost, loss = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 40).astype(float)
    mask = pareto_mask(cost, loss)
    for i in range(40):
        dominated = any(cost[j] <= cost[i] and loss[j] <= loss[i] and (cost[j] < cost[i] or loss[j] < loss[i])
                        for j in range(40))
        assert mask[i] == (not dominated)


def test_plot_x_axes():
    from matq_compile.search.plot import _x

    row = FrontRow("latency", 3.5e-3, "milp", 0, 3.4, 3.4e5, 0.01, 3.4e-3, 3.9e-3)
    assert _x(row, "latency") == pytest.approx(3.9) and _x(row, "predicted_latency") == pytest.approx(3.4)
    assert _x(row, "avg_bits") == 3.4


def test_csv_round_trip_and_plot(tmp_path):
    rows = [FrontRow("uniform", b, "uniform", None, float(b), 1e5 * b, 4.0 ** -b, 1e-3 * b, 1.1e-3 * b,
                     ppl=20 + 100 / b, bits_hist=f"all={b}") for b in (2, 3, 4, 6, 8)]
    rows.append(FrontRow("latency", 3.5e-3, "milp", 0, 3.4, 3.4e5, 0.01, 3.4e-3, None, kl_calib=0.2,
                         bits_hist=bits_histogram({"a.q_proj": 3, "b.q_proj": 4, "a.down_proj": 4}),
                         plan="plans/plan_00.json"))
    write_front(tmp_path / "front.csv", rows)
    assert read_front(tmp_path / "front.csv") == rows
    assert rows[-1].bits_hist == "q_proj=3:1/4:1;down_proj=4:1"
    plot_front(rows, tmp_path / "front.png")
    plot_front(rows, tmp_path / "bits.png", quality="proxy", x_axis="avg_bits")
    plot_front(rows, tmp_path / "pred.png", x_axis="predicted_latency")
    for name in ("front.png", "bits.png", "pred.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
