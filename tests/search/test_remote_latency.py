"""Timing through remote.py: a latency table measured over TVM RPC (a local CPU server standing in for a GPU host)
drives a search; a table labelled for cuda-sm90 drives a search whose plan compiles for cuda-sm90 and names the
kernels the CUDA build holds; GPU-only parts (weight rotation sizing, no-GPU refusals) are checked without a GPU."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from matq_compile import layout, targets

pytest.importorskip("tvm")
from matq_compile import bench, remote, schedules, tune  # noqa: E402
from matq_compile.cli import main  # noqa: E402
from matq_compile.search.latency import LatencyTable, load_latency_table  # noqa: E402

KERNEL_NAME = re.compile(r"matq_linear_n\d+_k\d+_b\d_g(?:c|\d+)_m(?:dyn|\d+)_(?:float32|float16|bfloat16)")


def test_rpc_table_drives_a_search(rpc_tracker, tiny_search_ckpt, tmp_path):
    """bench-kernels --runner rpc builds here, times on the server, writes a table naming the remote device; search
    prices its plan with exactly that table's kernels (--no-measure: nothing is timed a second time)."""
    ckpt, _ = tiny_search_ckpt
    db, table_path = tmp_path / "no-db", tmp_path / "latency.json"
    rpc = ["--runner", "rpc", "--tracker-host", rpc_tracker.tracker_host, "--tracker-port",
           str(rpc_tracker.tracker_port), "--tracker-key", rpc_tracker.tracker_key]
    assert main(["bench-kernels", "--target", "host", "--checkpoint", str(ckpt), "--bits", "2,4", "--m-buckets", "1",
                 "--repeat", "3", "--allow-untuned", "--db-dir", str(db), "--out", str(table_path), *rpc]) == 0
    host = targets.load("host")
    table = load_latency_table(table_path, host.name, tune.database_hash(db))
    assert table.device == f"remote CPU (rpc {rpc_tracker.tracker_key}@{rpc_tracker.tracker_host})"
    assert table.entries and all(0 < t < 1 for t in table.entries.values())
    out = tmp_path / "search"
    lo = sum(sorted(table.entries.values())[: len(table.entries) // 2])  # some budget between int2 and int4
    assert main(["search", "--checkpoint", str(ckpt), "--target", "host", "--db-dir", str(db), "--latency-table",
                 str(table_path), "--no-measure", "--levels", "2,4", "--budget", f"latency:{lo * 10}s",
                 "--out", str(out)]) == 0
    plan = json.loads((out / "allocation.json").read_text())
    assert plan["target"] == host.name
    priced = [layout.KernelKey.parse(k) for k in plan["meta"]["kernels"]]
    assert plan["predicted"]["latency_s"] == pytest.approx(sum(table.latency(k) for k in priced), rel=1e-9)


def test_cuda_table_drives_a_search_that_compiles_for_cuda(tiny_search_ckpt, tmp_path):
    """No GPU here: the table is synthetic but in the one format, for the target and database a search of
    cuda-sm90 uses; the plan's kernels are the decode (m1) kernels of the CUDA build, name for name."""
    from matq_compile._tvm import TVM_VERSION
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.export import CompileOptions, compile_model
    from matq_compile.search.tables import latency_keys, layers_from_sensitivity
    from matq_compile import search_stage

    ckpt_dir, _ = tiny_search_ckpt
    ck = load_checkpoint(ckpt_dir)
    spec = targets.load("cuda-sm90")
    keys = latency_keys(layers_from_sensitivity(ck.sensitivity, ck.layer_names), (2, 3, 4), 1)
    table = LatencyTable(spec.name, TVM_VERSION, tune.database_hash(schedules.db_dir(spec)),
                         {k: 1e-6 * (1 + k.N * k.K * k.bits / 4096) for k in keys}, device="synthetic (test)")
    table.save(tmp_path / "cuda.json")
    priced = search_stage.search_table(ck, search_stage.SearchOptions(levels=(2, 3, 4)), table)
    lo, hi = (float(priced.latency_s[:, j].sum()) for j in (0, -1))  # uniform int2, uniform int4
    out = tmp_path / "search"
    assert main(["search", "--checkpoint", str(ckpt_dir), "--target", spec.name, "--latency-table",
                 str(tmp_path / "cuda.json"), "--no-measure", "--levels", "2,3,4", "--budget",
                 f"latency:{lo + 0.7 * (hi - lo)}s", "--out", str(out)]) == 0
    plan = json.loads((out / "allocation.json").read_text())
    assert plan["target"] == spec.name and len(set(plan["layers"].values())) > 1  # a mixed plan
    build = tmp_path / "build"
    compile_model(ckpt_dir, build, plan=out / "allocation.json",  # matq compile, minus its tokenizer check
                  opts=CompileOptions(target=spec.name, allow_untuned=True, require_tokenizer=False))
    manifest = json.loads((build / "manifest.json").read_text())
    assert "cuda" in manifest["modules"] and manifest["bits"] == plan["layers"]
    built = set(KERNEL_NAME.findall((build / "kernels.cu").read_text()))
    assert {k for k in built if "_m1_" in k} == set(plan["meta"]["kernels"])


def test_local_runner_refuses_a_gpu_target_without_a_gpu():
    from matq_compile._tvm import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ValueError, match="needs a CUDA GPU.*--runner rpc"):
        remote.open_session(targets.load("cuda-sm90"), "local")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):  # search pricing a missing kernel: same refusal
        bench.cached_latency([layout.KernelKey(64, 64, 4, 32, 1)], targets.load("cuda-sm90"),
                             "/nonexistent-db", "/nonexistent-db/latency_m1.json")


def test_rpc_without_a_tracker_is_one_clear_error():
    settings = tune.RPCSettings("127.0.0.1", 1, "nobody", 5)
    with pytest.raises(ValueError, match="no RPC server with key 'nobody'"):
        remote.open_session(targets.load("host"), "rpc", settings)


def test_gpu_weights_rotate_past_twice_the_l2():
    key = layout.KernelKey(4096, 4096, 4, 64, 1, "float16")
    args = bench.random_args(key, 1)
    weights = sum(a.nbytes for a in args[1:-1])
    n = remote.weight_copies(args, 50 << 20)
    assert n * weights >= 2 * (50 << 20) > (n - 1) * weights  # just enough copies
    tiny = [np.zeros(4), np.zeros(1, np.uint32), np.zeros(4)]
    assert remote.weight_copies(tiny, 50 << 20) == remote.MAX_COPIES
    assert remote.weight_copies(args, 1) == 2  # at least one other copy between two calls


def test_rotated_sets_share_x_and_output_but_not_weights():
    from matq_compile._tvm import tensor, tvm

    dev = tvm.cpu()
    args_np = bench.random_args(layout.KernelKey(32, 64, 3, 32, 1), 1)
    args = [tensor(a, dev) for a in args_np]
    sets = remote.rotated_sets(args, args_np, dev, 3)
    assert len(sets) == 3 and all(s[0] is args[0] and s[-1] is args[-1] for s in sets)
    assert len({id(s[1]) for s in sets}) == 3
    assert all(np.array_equal(s[1].numpy(), args_np[1]) for s in sets)


def test_gpu_timing_path_runs_on_any_device():
    """Session.time's GPU branch (rotated weights, one timed call per sample) driven on the CPU device."""
    from matq_compile._tvm import tvm

    host = targets.load("host")
    key = layout.KernelKey(64, 128, 3, 64, 1)
    session = remote.Session(tvm.cpu(), "cpu as gpu (test)", gpu=True)
    t = session.time(session.load(bench.build_kernel(key, host, "/nonexistent-db", fallback=True)), "main",
                     bench.random_args(key, 1), repeat=5)
    assert t.shape == (5,) and np.all((t > 0) & (t < 1))
    with pytest.raises(ValueError, match="repeat must be positive"):
        session.time(None, "main", [], repeat=0)
