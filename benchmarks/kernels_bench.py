"""Kernel benchmark on this CPU: tuned bit-slice kernels vs streaming bandwidth, torch fp32 and ORT MatMulNBits.

    flock /tmp/matq_cpu.lock python benchmarks/kernels_bench.py            # full table + reuse study
    python benchmarks/kernels_bench.py --shapes 576x576 --bits 4 --no-reuse  # quick look

Writes benchmarks/results/kernels_<target>.json and prints the table. All timings are medians in one process;
matq kernels are cache-cold (weights flushed before each call), torch rotates weight copies larger than the LLC.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from matq_compile import bench, layout, targets, tune
from matq_compile.io_utils import write_json

ROOT = Path(__file__).resolve().parents[1]
LLC_ROTATE_BYTES = 96 << 20  # 3x a 32 MiB L3


def stream_read_gbps(nbytes: int = 512 << 20, repeat: int = 7) -> float:
    """Best-effort streaming read bandwidth: torch sum over a buffer far larger than the LLC (all cores)."""
    import torch

    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    buf.sum()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t)
    return nbytes / float(np.median(times)) / 1e9


def _median_rotating(fn, copies: list, repeat: int) -> float:
    fn(copies[0])
    times = []
    for i in range(repeat):
        c = copies[i % len(copies)]
        t = time.perf_counter()
        fn(c)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def torch_fp32_s(N: int, K: int, M: int, repeat: int = 50) -> float:
    import torch
    import torch.nn.functional as F

    x = torch.randn(M, K)
    n_copies = max(1, min(64, -(-LLC_ROTATE_BYTES // (N * K * 4))))
    ws = [torch.randn(N, K) for _ in range(n_copies)]
    with torch.inference_mode():
        return _median_rotating(lambda w: F.linear(x, w), ws, repeat)


def _ort_session(N: int, K: int, bits: int, block: int, rng):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nblk = K // block
    b = rng.integers(0, 256, (N, nblk, block * bits // 8), dtype=np.uint8)
    s = (rng.random(N * nblk) * 0.01).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=K, N=N,
                            bits=bits, block_size=block)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])],
                              [numpy_helper.from_array(b, "B"), numpy_helper.from_array(s, "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = len(__import__("os").sched_getaffinity(0))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_s(N: int, K: int, M: int, bits: int, repeat: int = 50, block: int = 64) -> float | None:
    """MatMulNBits latency, rotating sessions (weight copies) up to the LLC budget; None if unsupported."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K)).astype(np.float32)
    n_copies = max(1, min(16, -(-LLC_ROTATE_BYTES // (N * K * bits // 8))))
    try:
        sessions = [_ort_session(N, K, bits, block, rng) for _ in range(n_copies)]
        return _median_rotating(lambda s: s.run(None, {"A": x}), sessions, repeat)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types for unsupported bit widths
        print(f"ORT MatMulNBits bits={bits} unavailable: {str(e).splitlines()[0][:120]}", file=sys.stderr)
        return None


def reuse_study(spec, db_dir: Path, shape: tuple[int, int], trials: int, bits_list: list[int],
                rounds: int = 5) -> dict:
    """Latency of each r from the r=4 records (zero new trials) vs a dedicated tune of that r. The two are timed
    alternately for `rounds` rounds (median of the per-round medians): one timing each swings by 20 % here."""
    N, K = shape
    out = {}
    for bits in bits_list:
        key = layout.KernelKey(N, K, bits, 64, 1)
        with tempfile.TemporaryDirectory() as tmp:
            ded_db = Path(tmp) / spec.name
            ran = tune.tune([key], spec, ded_db, trials, at_bits=None)
            pairs = [(bench.measure([key], spec, db_dir, repeat=20).rows[0].median_s,
                      bench.measure([key], spec, ded_db, repeat=20).rows[0].median_s) for _ in range(rounds)]
        reused, dedicated = (float(np.median(v)) for v in zip(*pairs))
        out[str(bits)] = {"shape": [N, K, 1], "trials_reused": 0, "trials_dedicated": sum(ran.values()),
                          "latency_reused_s": reused, "latency_dedicated_s": dedicated,
                          "reused_over_dedicated": reused / dedicated}
        print(f"reuse r={bits}: reused {reused * 1e6:.1f} us, dedicated {dedicated * 1e6:.1f} us", file=sys.stderr)
    return out


def main_rows(spec, db_dir: Path, shapes, ms, bits_list, bw: float) -> list[dict]:
    rows = []
    for N, K in shapes:
        for M in ms:
            ref = torch_fp32_s(N, K, M)
            ort = {b: ort_s(N, K, M, b) for b in (2, 4, 8) if b in bits_list}
            keys = [layout.KernelKey(N, K, b, 64, M) for b in bits_list]
            for key, row in zip(keys, bench.measure(keys, spec, db_dir).rows):
                o = ort.get(key.bits)
                rows.append({"N": N, "K": K, "M": M, "bits": key.bits, "median_s": row.median_s, "gbps": row.gbps,
                             "frac_stream_bw": row.gbps / bw, "torch_fp32_s": ref,
                             "speedup_vs_torch_fp32": ref / row.median_s, "ort_s": o,
                             "speedup_vs_ort": None if o is None else o / row.median_s})
                print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(r: dict) -> str:
    ort = "   n/a" if r["speedup_vs_ort"] is None else f"{r['speedup_vs_ort']:6.2f}"
    return (f"{r['N']:>5}x{r['K']:<5} M={r['M']:<3} r={r['bits']} {r['median_s'] * 1e6:9.1f} us "
            f"{r['gbps']:6.2f} GB/s {r['frac_stream_bw']:5.2f} x{r['speedup_vs_torch_fp32']:6.2f} torch x{ort} ort")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="host")
    p.add_argument("--db-dir", type=Path, default=None, help="default: schedules/db/<target>")
    p.add_argument("--shapes", default="576x576,1536x576,4096x4096,11008x4096")
    p.add_argument("--m", default="1,16")
    p.add_argument("--bits", default="2,3,4,6,8")
    p.add_argument("--no-reuse", action="store_true", help="skip the reuse-vs-dedicated study (it tunes)")
    p.add_argument("--reuse-shape", default="4096x4096")
    p.add_argument("--reuse-trials", type=int, default=16)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    spec = targets.load(args.target)
    db_dir = args.db_dir or ROOT / "schedules" / "db" / spec.name
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    bits_list = [int(b) for b in args.bits.split(",")]
    bw = stream_read_gbps()
    print(f"stream read: {bw:.2f} GB/s", flush=True)
    rows = main_rows(spec, db_dir, shapes, [int(m) for m in args.m.split(",")], bits_list, bw)
    reuse = {} if args.no_reuse else reuse_study(spec, db_dir, tuple(int(v) for v in args.reuse_shape.split("x")),
                                                 args.reuse_trials, [b for b in (2, 3, 5, 6, 8)])
    from matq_compile._tvm import TVM_VERSION

    result = {"command": " ".join(["python", "benchmarks/kernels_bench.py", *(argv or sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": bench.machine_info(), "target": spec.name, "tvm_version": TVM_VERSION,
              "db_hash": tune.database_hash(db_dir), "group": 64, "stream_read_gbps": bw, "rows": rows,
              "reuse": reuse}
    out = args.out or ROOT / "benchmarks" / "results" / f"kernels_{spec.name}.json"
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
