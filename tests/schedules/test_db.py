"""Committed databases (schedules/db/<target>/): valid, one target each, and their records replay on every r."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from matq_compile import layout

pytest.importorskip("tvm")
from matq_compile import tune  # noqa: E402
from matq_compile.lower.kernels import KEY_ATTR, is_grouped, linear_func  # noqa: E402
from matq_compile.targets.spec import TargetSpec  # noqa: E402

DB_ROOT = Path(__file__).resolve().parents[2] / "schedules" / "db"
DBS = sorted(p for p in DB_ROOT.glob("*") if (p / "target.json").exists())
SMOLLM2 = {(576, 576), (192, 576), (1536, 576), (576, 1536), (960, 576), (3072, 576)}  # + fused q/k/v, gate/up


def _spec(db: Path) -> TargetSpec:
    t = json.loads((db / "target.json").read_text())
    return TargetSpec(t["name"], t["target"].get("kind", "llvm"),
                      {k: v for k, v in t["target"].items() if k != "kind"}, t.get("host"))


def _keys(db: Path, spec) -> list[layout.KernelKey]:
    records = tune.open_database(db, spec).get_all_tuning_records()
    names = {str(r.workload.mod["main"].attrs[KEY_ATTR]) for r in records}
    return sorted((layout.KernelKey.parse(n) for n in names), key=lambda k: k.name)


def test_committed_databases_exist_for_this_cpu():
    assert DBS, f"no committed database under {DB_ROOT}"


@pytest.mark.parametrize("db", DBS, ids=lambda p: p.name)
def test_database_is_valid_and_covers_smollm2(db):
    spec = _spec(db)
    assert spec.name == db.name  # the directory name is the target name
    keys = _keys(db, spec)
    assert all(k.bits == 4 for k in keys)  # tuned once at r = 4; every r replays these
    if spec.kind == "llvm":
        assert {(k.N, k.K) for k in keys if k.group == 64 and k.m_bucket in (1, 16)} >= SMOLLM2


@pytest.mark.parametrize("db", DBS, ids=lambda p: p.name)
def test_records_replay_on_every_bits(db):
    spec = _spec(db)
    for key in _keys(db, spec):
        if key.N * key.K > 1536 * 576:
            continue  # large benchmark shapes: replay is the same code path, skip for test time
        for bits in (2, 3, 5, 6, 8):
            mod = tune.apply_database(linear_func(key.with_bits(bits), gpu=spec.is_gpu), spec, db)
            assert ("scale_rf" if is_grouped(key) and not spec.is_gpu else "gemm_rf") in mod.script()
    assert np.all([k.m_bucket in layout.M_BUCKETS for k in _keys(db, spec)])
