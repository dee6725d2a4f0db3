"""`matq bench-kernels`: cold-cache latency table of tuned kernels (JSON, stored beside the database), timed on this
machine or on a remote device through a TVM RPC tracker (any target: a GPU host for cuda-*); on a CPU each kernel
is timed in a chain of copies (bench.DECODE_CHAIN), as the search measures."""
from __future__ import annotations

import logging
from pathlib import Path

from matq_compile.cli.tune import add_key_arguments, add_runner_arguments, keys_from_args, rpc_from_args

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("bench-kernels", help="measure the latency table of tuned kernels (here or over RPC)")
    add_key_arguments(p)
    p.add_argument("--db-dir", type=Path, default=None, help="tuning database (default: ./tuning/<target>)")
    p.add_argument("--out", type=Path, default=None, help="table path (default: <db-dir>/latency.json)")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--chain", type=int, default=None,
                   help="CPU: time each kernel as this many copies back to back, each with its own weights, as a "
                        "decode step runs its layers (default: 16, what the search measures; 1: each kernel "
                        "alone). GPU targets time kernels alone with rotated weights")
    add_runner_arguments(p)
    p.add_argument("--allow-untuned", action="store_true", help="default schedule for kernels without records")
    p.add_argument("--act", choices=("float", "int8"), default="float",
                   help="time the float-activation kernels (tuned) or the int8-activation ones (`matq compile --act`)")
    p.set_defaults(func=run)


def run(args) -> int:
    from matq_compile import bench, targets
    from matq_compile.cli import preflight

    preflight.at_least(args.repeat, 1, "--repeat")
    preflight.at_least(args.chain, 1, "--chain")
    spec = targets.load(args.target)
    chain = args.chain if args.chain is not None else 1 if spec.is_gpu else bench.DECODE_CHAIN
    if spec.is_gpu and chain > 1:
        raise ValueError(f"--chain is for CPU targets; {spec.name} times each kernel alone with rotated weights")
    db_dir = args.db_dir or Path("tuning") / spec.name
    out = args.out or db_dir / "latency.json"
    preflight.out_file(out, "--out")
    table = bench.measure(keys_from_args(args), spec, db_dir, args.repeat, args.allow_untuned, args.runner,
                          rpc_from_args(args), act=args.act, chain=chain)
    table.save(out)
    print(f"device: {table.device}, chains of {table.chain}")
    print(f"{'kernel':<52} {'median_us':>10} {'GB/s':>7}")
    for key, median in table.entries.items():
        print(f"{key.name:<52} {median * 1e6:>10.1f} {table.stats[key]['gbps']:>7.2f}")
    log.info("wrote %s", out)
    return 0
