"""tune.py: a tiny tune into tmp_path, compile every r from it (zero new trials), resume, refusals, RPC runner."""
from __future__ import annotations

import json

import numpy as np
import pytest

from matq_compile import layout, targets

pytest.importorskip("tvm")
from matq_compile import tune  # noqa: E402
from matq_compile._tvm import empty, tensor, tvm  # noqa: E402
from matq_compile.lower import kernels  # noqa: E402

KEY = layout.KernelKey(64, 128, 4, 64, 1)


@pytest.fixture(scope="module")
def host():
    return targets.load("host")


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory, host):
    db = tmp_path_factory.mktemp("db") / host.name
    ran = tune.tune([KEY, KEY.with_bits(3), KEY.with_m(16)], host, db, trials=2, trials_per_iter=2)
    assert ran == {KEY.name: 2, KEY.with_m(16).name: 2}  # bits 3 and 4 share a task
    return db


def _check_numerics(mod, key, host, rng):
    ex = tvm.compile(mod, target=host.to_tvm())
    q = rng.integers(0, 256, (key.N, key.K)).astype(np.uint8)
    arr = layout.pack_slice(q, np.full((key.N, key.n_groups), 0.01, np.float16), None, key.bits, group=key.group)
    m = key.m_bucket or 5
    x = rng.standard_normal((m, key.K)).astype(np.float32)
    y = empty((m, key.N), "float32", tvm.cpu())
    ex["main"](tensor(x, tvm.cpu()), *(tensor(arr[n], tvm.cpu()) for n in "PSZ"), y)
    ref = x.astype(np.float64) @ layout.dequant(arr, key.bits, key.K, key.group).T
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_every_bits_compiles_from_the_r4_records(tuned_db, host, rng):
    db = tune.open_database(tuned_db, host)
    assert tune.records_for(db, kernels.linear_func(KEY)) == 2
    for bits in (2, 3, 5, 8):
        key = KEY.with_bits(bits)
        assert tune.records_for(db, kernels.linear_func(key)) == 2  # anchor-block: same workload for every r
        mod = tune.apply_database(kernels.linear_func(key, "main"), host, tuned_db)
        assert "scale_rf" in mod["main"].script()  # the tuned (grouped) rule's structure, not the naive loop nest
        _check_numerics(mod, key, host, rng)
    dyn = KEY.with_bits(6).with_m(None)  # the dynamic kernel (flat form) replays the M=16 trace
    mod = tune.apply_database(kernels.linear_func(dyn, "main"), host, tuned_db)
    assert "gemm_rf" in mod["main"].script()
    _check_numerics(mod, dyn, host, rng)


def test_tune_resumes_without_new_trials(tuned_db, host):
    assert tune.tune([KEY.with_bits(5), KEY.with_m(16)], host, tuned_db, trials=2) == {KEY.name: 0,
                                                                                      KEY.with_m(16).name: 0}


def test_missing_record_is_a_clear_error(tuned_db, host):
    other = layout.KernelKey(32, 128, 4, 64, 1)
    with pytest.raises(ValueError, match=other.name):
        tune.apply_database(kernels.linear_func(other), host, tuned_db)


def test_foreign_and_corrupt_databases_are_refused(tuned_db, host, tmp_path):
    with pytest.raises(ValueError, match="belongs to target"):
        tune.open_database(tuned_db, targets.load("llvm-x86-avx2"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "target.json").write_text((tuned_db / "target.json").read_text())
    (bad / "database_workload.json").write_text('["ok"]\n{not json\n')
    with pytest.raises(ValueError, match="corrupt tuning database .* line 2"):
        tune.open_database(bad, host)
    with pytest.raises(FileNotFoundError):
        tune.open_database(tmp_path / "missing", host)
    assert json.loads((tuned_db / "target.json").read_text())["name"] == host.name


def test_rpc_runner_against_local_server(rpc_tracker, host, tmp_path):
    key = layout.KernelKey(32, 64, 4, 32, 1)
    db = tmp_path / host.name
    assert tune.tune([key], host, db, trials=2, runner="rpc", rpc=rpc_tracker, trials_per_iter=2) == {key.name: 2}
    assert tune.records_for(tune.open_database(db, host), kernels.linear_func(key)) >= 1
