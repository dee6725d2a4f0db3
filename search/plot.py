"""Front plot: quality versus latency, searched plans as a line, uniform slices marked and labelled."""
from __future__ import annotations

import os
from collections.abc import Sequence

from matq_compile.io_utils import atomic_path
from matq_compile.search.front import FrontRow

_QUALITY = {"ppl": "perplexity (WikiText-2 test)", "proxy": "summed proxy (nmse)", "kl_calib": "KL to fp model"}


_X_LABEL = {"latency": "linear-layer latency per token, ms (measured; predicted where not measured)",
            "predicted_latency": "linear-layer latency per token, ms (predicted from the latency table)",
            "avg_bits": "average bits per weight"}


def _x(row: FrontRow, x_axis: str) -> float | None:
    if x_axis == "avg_bits":
        return row.avg_bits
    if x_axis == "predicted_latency":  # what the solver optimises: monotone in the budget, free of timing noise
        return None if row.predicted_latency_s is None else row.predicted_latency_s * 1e3
    lat = row.measured_latency_s if row.measured_latency_s is not None else row.predicted_latency_s
    return None if lat is None else lat * 1e3


def _xy(rows: Sequence[FrontRow], quality: str, x_axis: str) -> tuple[list[float], list[float], list[FrontRow]]:
    kept = []
    for r in rows:
        x, q = _x(r, x_axis), getattr(r, quality)
        if x is not None and q is not None:
            kept.append((x, q, r))
    kept.sort(key=lambda t: t[0])
    return [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]


def plot_front(rows: Sequence[FrontRow], path: str | os.PathLike, quality: str = "ppl", x_axis: str = "latency",
               title: str = "bit-width search: quality vs latency", log_y: bool = True) -> None:
    """Write a PNG; x = measured latency (predicted where not measured), predicted latency or avg bits;
    y = `quality`."""
    if quality not in _QUALITY:
        raise ValueError(f"unknown quality column {quality!r}; known: {', '.join(_QUALITY)}")
    if x_axis not in _X_LABEL:
        raise ValueError(f"unknown x axis {x_axis!r}; known: {', '.join(_X_LABEL)}")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.add_subplot()
    x, y = [], []
    solvers = sorted({r.solver for r in rows if r.budget_kind != "uniform"})
    for solver, style in zip(solvers, ("o-", "D", "^", "v")):
        sx, sy, _ = _xy([r for r in rows if r.budget_kind != "uniform" and r.solver == solver], quality, x_axis)
        if sx:
            ax.plot(sx, sy, style, label=f"searched ({solver})")
            x, y = x + sx, y + sy
    ux, uy, urows = _xy([r for r in rows if r.budget_kind == "uniform"], quality, x_axis)
    if ux:
        ax.scatter(ux, uy, marker="s", s=50, color="tab:red", zorder=3, label="uniform slices")
        for xi, yi, r in zip(ux, uy, urows):
            ax.annotate(f"int{int(r.budget_value)}", (xi, yi), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel(_X_LABEL[x_axis])
    ax.set_ylabel(_QUALITY[quality])
    if log_y and all(v > 0 for v in y + uy):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
