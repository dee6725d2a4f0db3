"""Anchor kernels for benchmarks/kernels_bench.py, each timed in its own process as its users run it.

    python benchmarks/kernel_anchors.py ort --n 4096 --k 4096 --m 1 --bits 4 --accuracy-level 4
    python benchmarks/kernel_anchors.py torch --n 4096 --k 4096 --m 1
    python benchmarks/kernel_anchors.py stream

Prints one JSON object: {"median_s": ..., "config": {...}}. Run by kernels_bench.py interleaved with the matq
kernels, so no TVM thread pool shares the process (a spinning pool distorts other libraries' timings).

- ort: onnxruntime MatMulNBits with zero points (uint8 packed, one per block), block 64, intra-op threads = the
  usable cores; accuracy_level 4 quantizes activations to int8 per block (its fast path), 0 computes in fp32.
  The weights rotate beyond the last-level cache inside ONE session: the model holds `copies` MatMulNBits nodes
  with their own weights, as a model holds many layers, and a run's time is divided by the node count.
- torch: F.linear fp32 over weight copies rotated beyond the LLC, torch's own thread count.
- stream: streaming read bandwidth (torch sum over a buffer at least 4x the LLC, all cores), in GB/s.
The rotation covers 3x the L3 that sysfs reports (`rotate_bytes`), up to MAX_COPIES copies: small shapes stay
below it (576 x 576 on a 32 MiB L3; up to 1536 x 576 on a 480 MiB one), so their anchors read partly from the LLC
while our kernels are flushed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

MAX_COPIES = 256  # nodes per ORT session / torch weight copies; small shapes stay below the rotation bytes


def rotate_bytes() -> int:
    """Weight bytes an anchor rotates through: 3x this machine's L3 (32 MiB assumed where sysfs does not say)."""
    from matq_compile.bench import l3_bytes  # no TVM or torch import behind it

    return 3 * (l3_bytes() or 32 << 20)


def _copies(weight_bytes: int, rotate_bytes: int) -> int:
    return max(1, min(MAX_COPIES, -(-rotate_bytes // weight_bytes)))


def _median(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def ort_matmulnbits(n: int, k: int, m: int, bits: int, accuracy_level: int, repeat: int, rotate_bytes: int,
                    block: int = 64) -> dict:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nblk = k // block
    copies = _copies(n * k * bits // 8, rotate_bytes)
    nodes, inits, outs = [], [], []
    for i in range(copies):
        b = rng.integers(0, 256, (n, nblk, block * bits // 8), dtype=np.uint8)
        s = (rng.random(n * nblk) * 0.01 + 1e-3).astype(np.float32)
        zp_bytes = -(-nblk * bits // 8)
        zp = rng.integers(0, 256, (n, zp_bytes), dtype=np.uint8).reshape(-1)
        inits += [numpy_helper.from_array(b, f"B{i}"), numpy_helper.from_array(s, f"S{i}"),
                  numpy_helper.from_array(zp, f"Z{i}")]
        nodes.append(helper.make_node("MatMulNBits", ["A", f"B{i}", f"S{i}", f"Z{i}"], [f"Y{i}"],
                                      domain="com.microsoft", K=k, N=n, bits=bits, block_size=block,
                                      accuracy_level=accuracy_level))
        outs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, ["M", n]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])], outs,
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = len(os.sched_getaffinity(0))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((m, k)).astype(np.float32)
    per_run = _median(lambda: sess.run(None, {"A": x}), max(3, repeat // copies))
    return {"median_s": per_run / copies,
            "config": {"library": "onnxruntime", "version": ort.__version__, "op": "com.microsoft.MatMulNBits",
                       "bits": bits, "block_size": block, "zero_points": True, "accuracy_level": accuracy_level,
                       "intra_op_num_threads": opts.intra_op_num_threads, "nodes_per_session": copies,
                       "rotated_bytes": copies * n * k * bits // 8,
                       "process": "own"}}


def torch_linear(n: int, k: int, m: int, repeat: int, rotate_bytes: int) -> dict:
    import torch
    import torch.nn.functional as F

    x = torch.randn(m, k)
    ws = [torch.randn(n, k) for _ in range(_copies(n * k * 4, rotate_bytes))]
    state = {"i": 0}

    def call():
        state["i"] += 1
        F.linear(x, ws[state["i"] % len(ws)])

    with torch.inference_mode():
        t = _median(call, repeat)
    return {"median_s": t, "config": {"library": "torch", "version": torch.__version__, "op": "F.linear fp32",
                                      "threads": torch.get_num_threads(), "weight_copies": len(ws),
                                      "rotated_bytes": len(ws) * n * k * 4,
                                      "process": "own"}}


def stream_read(rotate_bytes: int, repeat: int = 7) -> dict:
    """Read bandwidth over a buffer of max(512 MiB, 4/3 x the rotation bytes): at least 4x the L3."""
    import torch

    nbytes = max(512 << 20, rotate_bytes * 4 // 3)
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    t = _median(lambda: buf.sum(), repeat)
    return {"median_s": t, "gbps": nbytes / t / 1e9,
            "config": {"op": f"torch.sum over {nbytes >> 20} MiB fp32", "threads": torch.get_num_threads(),
                       "process": "own"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("anchor", choices=("ort", "torch", "stream"))
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--m", type=int, default=1)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--accuracy-level", type=int, default=4, choices=(0, 1, 2, 3, 4))
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--rotate-bytes", type=int, default=None, help="default: 3x this machine's L3")
    a = p.parse_args(argv)
    a.rotate_bytes = a.rotate_bytes or rotate_bytes()
    try:
        out = {"ort": lambda: ort_matmulnbits(a.n, a.k, a.m, a.bits, a.accuracy_level, a.repeat, a.rotate_bytes),
               "torch": lambda: torch_linear(a.n, a.k, a.m, a.repeat, a.rotate_bytes),
               "stream": lambda: stream_read(a.rotate_bytes)}[a.anchor]()
    except Exception as e:  # noqa: BLE001 - report an unsupported configuration as data, not a crash
        out = {"median_s": None, "error": str(e).splitlines()[0][:200]}
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
