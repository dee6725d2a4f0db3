"""`matq tune`: MetaSchedule-tune the kernels of a checkpoint (or given shapes) into one database per target."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("tune", help="tune bit-slice kernels for a target into a JSON database (resumable)")
    add_key_arguments(p)
    p.add_argument("--trials", type=int, default=None, help="trials per (shape, M bucket); default: the target's")
    p.add_argument("--db-dir", type=Path, default=None, help="database directory (default: ./tuning/<target>)")
    p.add_argument("--runner", choices=("local", "rpc"), default="local")
    p.add_argument("--builder", choices=("inprocess", "local"), default="inprocess")
    p.add_argument("--tracker-host", default="127.0.0.1")
    p.add_argument("--tracker-port", type=int, default=9190)
    p.add_argument("--tracker-key", default="local", help="key the RPC servers registered with")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def add_key_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared with bench-kernels: which kernels."""
    p.add_argument("--target", required=True, help="target name (see targets/), e.g. host or cuda-sm90")
    p.add_argument("--checkpoint", type=Path, help="checkpoint dir: layer shapes and group from matq_config.json")
    p.add_argument("--shape", action="append", default=[], metavar="NxK", help="output x input features (repeat)")
    p.add_argument("--group", type=int, default=64, help="group size for --shape (-1: per channel)")
    p.add_argument("--bits", default="2,3,4,6,8", help="comma list of slice widths")
    p.add_argument("--m-buckets", default="1,16", help="comma list of static batch sizes")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))


def checkpoint_shapes(ckpt: Path) -> list[tuple[int, int, int]]:
    """(N, K, group) of every quantized layer in a checkpoint's matq_config.json and of its fused sibling sets
    (deduplicated, ordered)."""
    cfg_path = ckpt / "matq_config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found (not a matq checkpoint?)")
    layers = json.loads(cfg_path.read_text()).get("layers")
    if not layers:
        raise ValueError(f"{cfg_path} lists no quantized layers")
    from matq_compile.search.tables import LayerInfo, fused_sets

    infos = []
    for layer in layers:
        n, k = (int(v) for v in layer["shape"])
        g = int(layer.get("group_size", -1))
        infos.append(LayerInfo(str(layer.get("name", "")), n, k, -1 if g in (-1, k) else g))
    out = {(la.out_features, la.in_features, la.group): None for la in infos}
    if not any(layer.get("perm") for layer in layers):  # act-order layers are never fused
        out.update(dict.fromkeys(fused_sets(infos).values()))  # the fused q/k/v and gate/up kernels the compiler runs
    return list(out)


def keys_from_args(args) -> list:
    from matq_compile.cli import preflight
    from matq_compile.layout import KernelKey

    shapes = checkpoint_shapes(args.checkpoint) if args.checkpoint else []
    for s in args.shape:
        try:
            n, k = (int(v) for v in s.lower().split("x"))
        except ValueError as e:
            raise ValueError(f"--shape must look like 576x1536 (N x K), got {s!r}") from e
        shapes.append((n, k, args.group))
    if not shapes:
        raise ValueError("give --checkpoint or at least one --shape")
    bits = preflight.int_list(args.bits, "--bits", minimum=2)
    ms = preflight.int_list(args.m_buckets, "--m-buckets")
    return [KernelKey(n, k, b, g, m, args.dtype) for n, k, g in shapes for m in ms for b in bits]


def run(args) -> int:
    from matq_compile import targets, tune
    from matq_compile.cli import preflight

    preflight.at_least(args.trials, 1, "--trials")  # 0 must not mean "the target's default"
    spec = targets.load(args.target)
    keys = keys_from_args(args)
    db_dir = args.db_dir or Path("tuning") / spec.name
    preflight.out_dir(db_dir, "--db-dir")
    rpc = tune.RPCSettings(args.tracker_host, args.tracker_port, args.tracker_key)
    trials = spec.trials if args.trials is None else args.trials
    ran = tune.tune(keys, spec, db_dir, trials, runner=args.runner, rpc=rpc, seed=args.seed,
                    builder=args.builder)
    for name, n in ran.items():
        log.info("%s: %d new trials", name, n)
    log.info("database: %s (hash %s)", db_dir, tune.database_hash(db_dir)[:12])
    return 0
