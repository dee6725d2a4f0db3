"""`matq tune`: MetaSchedule-tune the kernels of a checkpoint (or given shapes) into one database per target."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("tune", help="tune bit-slice kernels for a target into a JSON database (resumable)")
    add_key_arguments(p)
    p.add_argument("--trials", type=int, default=None, help="trials per (shape, M bucket); default: the target's")
    p.add_argument("--db-dir", type=Path, default=None, help="database directory (default: ./tuning/<target>)")
    add_runner_arguments(p)
    p.add_argument("--builder", choices=("inprocess", "local"), default="inprocess")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def plane_list(text: str) -> tuple[int, ...]:
    """--planes 4,4: plane widths of a switchable build, high bits first (checked by planes.plane_widths)."""
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected plane widths like 4,4, got {text!r}") from None


def add_key_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared with bench-kernels: which kernels."""
    p.add_argument("--target", required=True, help="target name (see targets/), e.g. host or cuda-sm90")
    p.add_argument("--checkpoint", type=Path, help="checkpoint dir: layer shapes and group from matq_config.json")
    p.add_argument("--shape", action="append", default=[], metavar="NxK", help="output x input features (repeat)")
    p.add_argument("--group", type=int, default=64, help="group size for --shape (-1: per channel)")
    p.add_argument("--bits", default="2,3,4,6,8", help="comma list of slice widths")
    p.add_argument("--m-buckets", default="1,16", help="comma list of static batch sizes")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--switchable", action="store_true",
                   help="the kernels of a switchable build serving --bits (nested bit planes; tuning records of the "
                        "dense kernels serve them)")
    p.add_argument("--slice-rule", choices=("round", "midpoint"), default=None,
                   help="slice rule of a switchable build given by --shape (default: the checkpoint's, else round)")
    p.add_argument("--planes", type=plane_list, default=None,
                   help="plane widths of the switchable build (`matq compile --planes`; default: every cut)")


def add_runner_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by tune, bench-kernels and search: where kernels are timed (this machine, or an RPC server)."""
    p.add_argument("--runner", choices=("local", "rpc"), default="local",
                   help="local: this machine (its GPU for a cuda target); rpc: a server of the tracker below")
    p.add_argument("--tracker-host", default="127.0.0.1")
    p.add_argument("--tracker-port", type=int, default=9190)
    p.add_argument("--tracker-key", default="local", help="key the RPC servers registered with")


def rpc_from_args(args):
    from matq_compile.tune import RPCSettings

    return RPCSettings(args.tracker_host, args.tracker_port, args.tracker_key)


def keys_from_args(args) -> list:
    """The kernels to tune or time: every kernel a plan over --bits may compile for the checkpoint (its kernel
    units: each layer's own kernel and the fused sibling kernels), then each --shape."""
    from dataclasses import replace

    from matq_compile import planes
    from matq_compile.cli import preflight
    from matq_compile.kernel_units import SwitchSpec, kernel_keys
    from matq_compile.layout import KernelKey

    bits = preflight.int_list(args.bits, "--bits", minimum=2)
    ms = preflight.int_list(args.m_buckets, "--m-buckets")
    shapes = []
    for s in args.shape:
        try:
            n, k = (int(v) for v in s.lower().split("x"))
        except ValueError as e:
            raise ValueError(f"--shape must look like 576x1536 (N x K), got {s!r}") from e
        shapes.append((n, k))
    if not shapes and not args.checkpoint:
        raise ValueError("give --checkpoint or at least one --shape")
    keys, rule = [], args.slice_rule
    if args.checkpoint:
        from matq_compile.ckpt import read_linear_slices, read_slice_rule

        slices = {n: replace(sl, dtype=args.dtype) for n, sl in read_linear_slices(args.checkpoint).items()}
        if args.switchable:
            rule = rule or read_slice_rule(args.checkpoint)
            units = SwitchSpec(tuple(bits), rule, args.planes).units(slices)
            keys = [u.key(m).with_bits(b) for m in ms for b in bits for u in units]
        else:
            keys = kernel_keys(slices, bits, ms)
    if args.planes is not None and not args.switchable:
        raise ValueError("--planes is a switchable build's layout; add --switchable")
    nested = planes.tag(bits, rule or "round", args.planes) if args.switchable else ""
    keys += [KernelKey(n, k, b, args.group, m, args.dtype, nested) for n, k in shapes for m in ms for b in bits]
    return list(dict.fromkeys(keys))


def run(args) -> int:
    from matq_compile import targets, tune
    from matq_compile.cli import preflight

    preflight.at_least(args.trials, 1, "--trials")  # 0 must not mean "the target's default"
    spec = targets.load(args.target)
    keys = keys_from_args(args)
    db_dir = args.db_dir or Path("tuning") / spec.name
    preflight.out_dir(db_dir, "--db-dir")
    trials = spec.trials if args.trials is None else args.trials
    ran = tune.tune(keys, spec, db_dir, trials, runner=args.runner, rpc=rpc_from_args(args), seed=args.seed,
                    builder=args.builder)
    for name, n in ran.items():
        log.info("%s: %d new trials", name, n)
    log.info("database: %s (hash %s)", db_dir, tune.database_hash(db_dir)[:12])
    return 0
