"""Kernel benchmark on this CPU: tuned bit-slice kernels vs streaming bandwidth, torch fp32 and ORT MatMulNBits.

    flock /tmp/matq_cpu.lock python benchmarks/kernels_bench.py            # full table + reuse study
    python benchmarks/kernels_bench.py --shapes 576x576 --bits 4 --no-reuse  # quick look
    python benchmarks/kernels_bench.py --act float,int8 --no-reuse            # both activation modes

Writes benchmarks/results/kernels_<target>.json (after every shape and M too, with "complete": false until the
end) and prints the table. matq kernels are cache-cold (weights flushed before each call). Every anchor runs in its
own process (benchmarks/kernel_anchors.py: ORT MatMulNBits with zero points at accuracy_level 4 and 0, weights
rotated inside one session; torch F.linear fp32; the stream bandwidth), interleaved with ours for --rounds rounds;
each figure is the median over rounds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from matq_compile import bench, layout, targets, tune
from matq_compile.io_utils import write_json

ROOT = Path(__file__).resolve().parents[1]


def anchor(kind: str, **kw) -> dict:
    """One anchor measurement in its own process (no TVM thread pool beside it)."""
    args = [sys.executable, str(ROOT / "benchmarks" / "kernel_anchors.py"), kind]
    args += [a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def _median_of(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


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
            built: dict = {}
            pairs = [(bench.measure([key], spec, db_dir, repeat=20, built=built).entries[key],
                      bench.measure([key], spec, ded_db, repeat=20, built=built).entries[key]) for _ in range(rounds)]
        reused, dedicated = (float(np.median(v)) for v in zip(*pairs))
        out[str(bits)] = {"shape": [N, K, 1], "trials_reused": 0, "trials_dedicated": sum(ran.values()),
                          "latency_reused_s": reused, "latency_dedicated_s": dedicated,
                          "reused_over_dedicated": reused / dedicated}
        print(f"reuse r={bits}: reused {reused * 1e6:.1f} us, dedicated {dedicated * 1e6:.1f} us", file=sys.stderr)
    return out


ORT_BITS = (2, 4, 8)  # the widths MatMulNBits has kernels for


ACT_NAMES = {"float": "float32", "int8": "int8"}  # --act value -> the rows' "act"


def main_rows(spec, db_dir: Path, shapes, ms, bits_list, bw: float, rounds: int,
              acts: tuple[str, ...] = ("float",), done=None) -> tuple[list[dict], dict]:
    """Per (shape, M): `rounds` interleaved rounds of our kernels (each activation mode) and every anchor;
    medians over rounds. done(rows, anchors), if given, after each (shape, M)."""
    rows, anchors, built = [], {}, {}  # built: each kernel compiled once, timed in every round
    for N, K in shapes:
        for M in ms:
            keys = [layout.KernelKey(N, K, b, 64, M) for b in bits_list]
            ours: dict = {(k, a): [] for a in acts for k in keys}
            ort = {(b, acc): [] for b in ORT_BITS if b in bits_list for acc in (4, 0)}
            ref = []
            for _ in range(rounds):
                for a in acts:
                    table = bench.measure(keys, spec, db_dir, act=a, built=built)
                    for k in keys:
                        ours[(k, a)].append(table.entries[k])
                for (b, acc), vals in ort.items():
                    res = anchor("ort", n=N, k=K, m=M, bits=b, accuracy_level=acc)
                    vals.append(res["median_s"])
                    anchors.setdefault(f"ort_acc{acc}", res.get("config"))
                res = anchor("torch", n=N, k=K, m=M)
                ref.append(res["median_s"])
                anchors.setdefault("torch_fp32", res.get("config"))
            t_ref = _median_of(ref)
            for key, a in ours:
                med = _median_of(ours[(key, a)])
                gbps = bench.traffic_bytes(key, M) / med / 1e9
                acc4, acc0 = (_median_of(ort.get((key.bits, acc), [])) for acc in (4, 0))
                rows.append({"N": N, "K": K, "M": M, "bits": key.bits, "act": ACT_NAMES[a], "median_s": med,
                             "gbps": gbps, "frac_stream_bw": gbps / bw, "torch_fp32_s": t_ref,
                             "speedup_vs_torch_fp32": t_ref / med, "ort_acc4_s": acc4, "ort_acc0_s": acc0,
                             "speedup_vs_ort_acc4": None if acc4 is None else acc4 / med})
                print(_fmt(rows[-1]), flush=True)
            if done is not None:
                done(rows, anchors)
    return rows, anchors


def _fmt(r: dict) -> str:
    ort = "   n/a" if r["speedup_vs_ort_acc4"] is None else f"{r['speedup_vs_ort_acc4']:6.2f}"
    return (f"{r['N']:>5}x{r['K']:<5} M={r['M']:<3} r={r['bits']} {r['act']:>7} {r['median_s'] * 1e6:9.1f} us "
            f"{r['gbps']:6.2f} GB/s {r['frac_stream_bw']:5.2f} x{r['speedup_vs_torch_fp32']:6.2f} torch x{ort} acc4")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="host")
    p.add_argument("--db-dir", type=Path, default=None, help="default: schedules/db/<target>")
    p.add_argument("--shapes", default="576x576,1536x576,4096x4096,11008x4096")
    p.add_argument("--m", default="1,16")
    p.add_argument("--bits", default="2,3,4,6,8")
    p.add_argument("--act", default="float", help="activation modes, comma list of float, int8")
    p.add_argument("--no-reuse", action="store_true", help="skip the reuse-vs-dedicated study (it tunes)")
    p.add_argument("--reuse-shape", default="4096x4096")
    p.add_argument("--reuse-trials", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of ours and every anchor")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    spec = targets.load(args.target)
    db_dir = args.db_dir or ROOT / "schedules" / "db" / spec.name
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    bits_list = [int(b) for b in args.bits.split(",")]
    stream = anchor("stream")
    bw = stream["gbps"]
    print(f"stream read: {bw:.2f} GB/s", flush=True)
    acts = tuple(args.act.split(","))
    if set(acts) - set(ACT_NAMES):
        raise SystemExit(f"--act takes a comma list of {', '.join(ACT_NAMES)}, got {args.act!r}")
    from matq_compile._tvm import TVM_VERSION

    out = args.out or ROOT / "benchmarks" / "results" / f"kernels_{spec.name}.json"
    head = {"command": " ".join(["python", "benchmarks/kernels_bench.py", *(argv or sys.argv[1:])]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": bench.machine_info(), "target": spec.name, "tvm_version": TVM_VERSION,
            "db_hash": tune.database_hash(db_dir), "group": 64, "stream_read_gbps": bw, "rounds": args.rounds}

    def write(rows: list[dict], anchors: dict, reuse: dict, complete: bool) -> None:
        # after every (shape, M) as well: a run cut short keeps what it measured, marked incomplete
        write_json(out, {**head, "anchors": {**anchors, "stream": stream["config"]}, "rows": rows, "reuse": reuse,
                         "complete": complete})

    rows, anchors = main_rows(spec, db_dir, shapes, [int(m) for m in args.m.split(",")], bits_list, bw, args.rounds,
                              acts, done=lambda r, a: write(r, a, {}, False))
    reuse = {} if args.no_reuse else reuse_study(spec, db_dir, tuple(int(v) for v in args.reuse_shape.split("x")),
                                                 args.reuse_trials, [b for b in (2, 3, 5, 6, 8)])
    write(rows, anchors, reuse, True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
