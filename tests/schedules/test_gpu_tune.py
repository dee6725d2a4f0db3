"""Tuning records for a CUDA target without a GPU: one task per (shape, M bucket) at r = 4; a record from the CUDA
search space (committed as tuning commits it; its measured time is a stand-in, no GPU ran it) makes `tune` run zero
new trials and compiles every r = 2..8 at both M buckets to a CUDA module by replaying its trace."""
from __future__ import annotations

import pytest

from matq_compile import layout, targets

pytest.importorskip("tvm")
from matq_compile import schedules, tune  # noqa: E402
from matq_compile._tvm import ms, tvm  # noqa: E402
from matq_compile.lower import kernels  # noqa: E402


@pytest.mark.slow  # the CUDA space's first TuneContext imports TVM's tensor intrinsics (minutes on a loaded box)
def test_cuda_r4_records_serve_every_width(tmp_path):
    spec = targets.load("cuda-sm90")
    keys = [layout.KernelKey(256, 512, b, 64, m, "float16") for b in range(2, 9) for m in (1, 16)]
    tasks = tune.tuning_keys(keys)
    assert sorted((k.bits, k.m_bucket) for k in tasks) == [(4, 1), (4, 16)]  # one task per shape and M bucket
    db = tune.open_database(tmp_path, spec, create=True)
    for key in tasks:
        mod = tvm.IRModule({"main": kernels.linear_func(key, gpu=True)})
        ctx = ms.TuneContext(mod=mod, target=spec.to_tvm(), space_generator=schedules.space(spec), task_name="t")
        trace = ctx.generate_design_space()[0].trace
        db.commit_tuning_record(ms.database.TuningRecord(trace, db.commit_workload(mod), [1e-5], spec.to_tvm(), None))
    assert tune.tune(keys, spec, tmp_path, trials=1) == {k.name: 0 for k in tasks}  # zero new trials
    for key in keys:
        mod = tune.apply_database(kernels.linear_func(key, gpu=True), spec, tmp_path)  # raises on a miss
        ex = tvm.compile(mod, target=spec.to_tvm())
        assert [m.kind for m in ex.mod.imports] == ["cuda"], key.name
        assert key.name in ex.mod.imports[0].inspect_source("cuda")  # the width's own kernel, not r = 4's
