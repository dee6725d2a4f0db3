"""`matq search` end to end on a tiny RTN checkpoint: plans, sweeps, KL refinement, errors."""
from __future__ import annotations

import csv

import pytest

from matq_compile.ckpt import load_checkpoint
from matq_compile.cli import main
from matq_compile.search.allocation import load_plan


def test_single_budget_plan(tiny_search_ckpt, tmp_path):
    ckpt_dir, _ = tiny_search_ckpt
    ck = load_checkpoint(ckpt_dir)
    assert main(["search", "--checkpoint", str(ckpt_dir), "--budget", "avg-bits:4.5", "--budget", "bytes:200kB",
                 "--out", str(tmp_path)]) == 0
    plan = load_plan(tmp_path / "allocation.json", ck.layer_names, ck.hash)
    assert plan.predicted["avg_bits"] <= 4.5 + 1e-9 and plan.predicted["bytes"] <= 200e3
    assert set(plan.layers.values()) <= {2, 3, 4, 6, 8} and plan.solver == "milp"
    assert (tmp_path / "allocation.txt").read_text().count(":") == len(ck.layer_names)
    numel = {n: s["numel"] for n, s in ck.sensitivity.items()}
    avg = sum(numel[n] * b for n, b in plan.layers.items()) / sum(numel.values())
    assert avg == pytest.approx(plan.predicted["avg_bits"])


def test_sweep_writes_front_and_plot(tiny_search_ckpt, tmp_path):
    ckpt_dir, _ = tiny_search_ckpt
    assert main(["search", "--checkpoint", str(ckpt_dir), "--sweep", "6", "--sweep-kind", "avg_bits",
                 "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "front.csv")))
    assert [r["solver"] for r in rows].count("uniform") == 5 and len(rows) == 11
    searched = [r for r in rows if r["solver"] == "milp"]
    proxies = [float(r["proxy"]) for r in searched]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(proxies, proxies[1:]))
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "plans").glob("plan_*.json"))) == 6


def test_refinement_is_deterministic_and_within_budget(tiny_search_ckpt, tmp_path, data_dir):
    ckpt_dir, model_dir = tiny_search_ckpt
    text = tmp_path / "calib.txt"  # a slice of the validation text keeps byte-level tokenizing fast
    text.write_text((data_dir / "wikitext-2" / "valid.txt").read_text()[:20000])
    outs = []
    for run in ("a", "b"):
        args = ["search", "--checkpoint", str(ckpt_dir), "--budget", "avg-bits:3.5", "--refine-generations", "2",
                "--refine-offspring", "3", "--refine-tokens", "31,62", "--refine-seq-len", "32", "--seed", "5",
                "--model", str(model_dir), "--calibration", str(text), "--out", str(tmp_path / run)]
        assert main(args) == 0
        outs.append((tmp_path / run / "allocation.json").read_bytes())
    assert outs[0] == outs[1]
    plan = load_plan(tmp_path / "a" / "allocation.json")
    assert plan.solver == "milp+evolution" and plan.predicted["avg_bits"] <= 3.5 + 1e-9
    assert plan.predicted["kl_calib"] >= 0


def test_cli_errors(tiny_search_ckpt, tmp_path, caplog):
    ckpt_dir, _ = tiny_search_ckpt
    assert main(["search", "--checkpoint", str(ckpt_dir), "--budget", "avg-bits:1.5", "--out", str(tmp_path)]) == 2
    assert "smallest feasible avg_bits is 2" in caplog.text
    assert not (tmp_path / "allocation.json").exists()
    assert main(["search", "--checkpoint", str(ckpt_dir), "--out", str(tmp_path)]) == 2
    assert main(["search", "--checkpoint", str(tmp_path / "none"), "--budget", "avg-bits:4",
                 "--out", str(tmp_path)]) == 2


def _bench_table(ck, spec, db_dir, drop: int = 0):
    """A latency table for the checkpoint's kernels (synthetic times: bits x shape), as bench writes it."""
    from matq_compile import tune
    from matq_compile.search.latency import LatencyTable
    from matq_compile.search.tables import latency_keys, layers_from_sensitivity

    layers = layers_from_sensitivity(ck.sensitivity, ck.layer_names)
    keys = latency_keys(layers, (2, 3, 4, 6, 8), 1)[drop:]
    entries = {k: 1e-6 * (1 + k.N * k.K * k.bits / 2**14) for k in keys}
    return LatencyTable(spec.name, "0.27.0", tune.database_hash(db_dir), entries,
                        {k: {"min_s": 1e-6, "gbps": 1.0} for k in keys})


def test_latency_budget_through_bench_table(tiny_search_ckpt, tmp_path, caplog):
    from matq_compile import targets, tune

    ckpt_dir, _ = tiny_search_ckpt
    ck = load_checkpoint(ckpt_dir)
    spec = targets.load("host")
    db_dir = tmp_path / "db"
    tune.check_database(db_dir, spec, create=True)
    _bench_table(ck, spec, db_dir).save(db_dir / "latency_m1.json")
    base = ["search", "--checkpoint", str(ckpt_dir), "--target", "host", "--db-dir", str(db_dir), "--no-measure"]
    assert main(base + ["--budget", "latency:0.1ms", "--out", str(tmp_path / "a")]) == 0
    plan = load_plan(tmp_path / "a" / "allocation.json", ck.layer_names, ck.hash)
    assert plan.target == spec.name and plan.meta["db_hash"] == tune.database_hash(db_dir)
    assert plan.predicted["latency_s"] <= 0.1e-3 and 2 < plan.predicted["avg_bits"] < 8
    # a table with a kernel missing is reported, not guessed, under --no-measure
    _bench_table(ck, spec, db_dir, drop=1).save(db_dir / "latency_m1.json")
    assert main(base + ["--budget", "latency:0.1ms", "--out", str(tmp_path / "b")]) == 2
    assert "lacks 1 kernels" in caplog.text
    # a table measured with another database is refused
    (tmp_path / "db2").mkdir()
    tune.check_database(tmp_path / "db2", spec, create=True)
    (tmp_path / "db2" / "database_workload.json").write_text("")
    _bench_table(ck, spec, db_dir).save(tmp_path / "db2" / "latency_m1.json")
    assert main(base[:-3] + ["--db-dir", str(tmp_path / "db2"), "--no-measure", "--budget", "latency:0.1ms",
                             "--out", str(tmp_path / "c")]) == 2
    assert "another tuning database" in caplog.text


def test_levels_missing_from_sensitivity_refused_before_measuring(tiny_search_ckpt, tmp_path, caplog, monkeypatch):
    """A level the checkpoint's sensitivity table lacks is one line naming it, before any kernel is timed."""
    import dataclasses

    from matq_compile import bench
    from matq_compile import ckpt as ckpt_mod

    ckpt_dir, _ = tiny_search_ckpt
    real = ckpt_mod.load_checkpoint

    def without_r2(*args, **kwargs):
        ck = real(*args, **kwargs)
        sens = {name: {kind: ({b: v for b, v in t.items() if str(b) != "2"} if isinstance(t, dict) else t)
                       for kind, t in entry.items()} for name, entry in ck.sensitivity.items()}
        return dataclasses.replace(ck, sensitivity=sens)

    timed = []

    def no_timing(*args, **kwargs):
        timed.append(args)
        raise ValueError("stop here")

    monkeypatch.setattr(ckpt_mod, "load_checkpoint", without_r2)
    monkeypatch.setattr(bench, "cached_latency", no_timing)
    args = ["search", "--checkpoint", str(ckpt_dir), "--target", "host", "--budget", "latency:1ms",
            "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "has no nmse[2]" in caplog.text and "pass --levels" in caplog.text and not timed
    assert not (tmp_path / "out" / "allocation.json").exists()
    assert main(args + ["--levels", "3,4,6,8"]) == 2 and len(timed) == 1  # levels it has: on to the timing
