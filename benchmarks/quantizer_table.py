"""SmolLM2-135M quantizer table: fp, RTN-8->slice, GPTQ-8->slice, GPTQ per precision, MatGPTQ; r = 8..2.

    flock /tmp/matq_cpu.lock python benchmarks/quantizer_table.py --work-dir /tmp/matq_qtable

(or pass --lock /tmp/matq_cpu.lock to take the lock per method instead of for the whole run). Settings: symmetric
grid, group 64, round slice rule, calibration from <data>/wikitext-2/valid.txt (16 x 512 tokens, seed 0 by
default), perplexity on the first 8 windows of 1024 tokens of <data>/wikitext-2-raw/wiki.test.raw in float32.
"GPTQ per precision" at 8 bits is the GPTQ-8 parent itself (standard GPTQ on the 8-bit grid), not a second run.

Resumable: every finished step (a checkpoint, a perplexity) is kept under --work-dir and skipped when the script
is re-run with the same settings. Prints the markdown table and writes benchmarks/results/quantizer_smollm2.json.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from matq_compile import data
from matq_compile._log import enable_logging
from matq_compile.io_utils import write_json

log = logging.getLogger("matq_compile.bench.quantizer_table")
ROOT = Path(__file__).resolve().parents[1]
SLICES = (8, 6, 5, 4, 3, 2)
PER_PRECISION = (4, 3, 2, 6, 5)  # most informative first; 8 is the GPTQ-8 parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/matq_qtable"), help="resumable step cache")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantizer_smollm2.json")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--trained-bits", default="8,4,3")
    p.add_argument("--calibration-samples", type=int, default=16)
    p.add_argument("--calibration-seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--lock", type=Path, default=None, help="flock this file around each method's heavy steps")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--report-only", action="store_true",
                   help="write the table from the finished steps only (missing entries null); computes nothing")
    return p.parse_args(argv)


class CpuLock:
    """Re-entrant exclusive flock on a shared file, held for one method at a time (its quantization and its
    perplexities), so other heavy jobs on the machine interleave between methods instead of overlapping."""

    def __init__(self, path: Path | None):
        self.path, self.depth, self.file = path, 0, None

    @contextlib.contextmanager
    def held(self):
        if self.path is None:
            yield
            return
        if self.depth == 0:
            self.file = open(self.path, "a")
            fcntl.flock(self.file, fcntl.LOCK_EX)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                fcntl.flock(self.file, fcntl.LOCK_UN)
                self.file.close()


class Steps:
    """A JSON file of finished step results, keyed by step name, invalidated when the settings change."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.results = saved.get("results", {}) if saved.get("settings") == settings else {}

    def get(self, name: str):
        return self.results.get(name)

    def put(self, name: str, value) -> None:
        self.results[name] = value
        write_json(self.path, {"settings": self.settings, "results": self.results})


class InMemoryParents:
    """The two attributes evaluate.fake_quantize reads, for RTN parents that need no calibration."""

    def __init__(self, layers: dict, rule: str):
        self.layers, self.rule = layers, rule

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    def dequant(self, name: str, bits: int):
        return self.layers[name].dequant(bits, self.rule)


def main(argv: list[str] | None = None) -> int:
    enable_logging()
    args = parse_args(argv)
    import torch

    from matq_compile.evaluate import load_model
    from matq_compile.model_source import resolve_model

    model_dir = resolve_model(args.model, args.cache_dir)
    calib_path = data.data_file(data.WIKITEXT_VALID)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("work_dir", "out", "lock", "cache_dir", "report_only")}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    steps = Steps(args.work_dir / "steps.json", settings)
    if args.report_only:
        report = build_report(args, steps, ppl_from_steps(steps))
        write_json(args.out, report)
        print(markdown(report))
        return 0
    model, tokenizer = load_model(model_dir)
    from matq_compile.evaluate import EvalSpec, eval_windows

    windows = eval_windows(tokenizer, EvalSpec(args.seq_len, args.windows))
    calib = data.CalibSpec(str(calib_path), args.calibration_samples, args.calibration_seq_len, args.seed)
    tokens = data.load_calibration(calib, tokenizer=tokenizer)
    ctx = Context(args, model_dir, model, windows, tokens, calib, steps)
    with torch.no_grad():
        table = run_all(ctx)
    report = build_report(args, steps, table)
    write_json(args.out, report)
    print(markdown(report))
    return 0


class Context:
    def __init__(self, args, model_dir, model, windows, tokens, calib, steps):
        self.args, self.model_dir, self.model, self.windows = args, model_dir, model, windows
        self.tokens, self.calib, self.steps = tokens, calib, steps
        self.lock = CpuLock(args.lock)
        self.float_state = {k: v.clone() for k, v in model.state_dict().items()}

    def restore_float(self) -> None:
        self.model.load_state_dict(self.float_state)


def run_all(ctx: Context) -> dict:
    from matq_compile.config import QuantSpec

    trained = tuple(int(b) for b in ctx.args.trained_bits.split(","))
    g = ctx.args.group_size
    ppl = {"fp": fp_ppl(ctx)}
    ppl["matgptq"] = sliced(ctx, "matgptq", QuantSpec(method="matgptq", group_size=g, trained_bits=trained), SLICES)
    ppl["gptq8_slice"] = sliced(ctx, "gptq8", QuantSpec(method="gptq", bits=8, group_size=g), SLICES)
    ppl["gptq"] = {"8": ppl["gptq8_slice"]["8"]}
    for b in PER_PRECISION[:2]:
        ppl["gptq"][str(b)] = sliced(ctx, f"gptq{b}", QuantSpec(method="gptq", bits=b, group_size=g, levels=(b,)),
                                     (b,))[str(b)]
    ppl["rtn8_slice"] = rtn_sliced(ctx, QuantSpec(method="rtn", bits=8, group_size=g))
    for b in PER_PRECISION[2:]:
        ppl["gptq"][str(b)] = sliced(ctx, f"gptq{b}", QuantSpec(method="gptq", bits=b, group_size=g, levels=(b,)),
                                     (b,))[str(b)]
    ppl["gptq"] = {str(b): ppl["gptq"][str(b)] for b in SLICES}
    return ppl


def timed_ppl(ctx: Context, name: str) -> float:
    from matq_compile.evaluate import perplexity

    cached = ctx.steps.get(f"ppl/{name}")
    if cached is not None:
        return cached
    with ctx.lock.held():
        t0 = time.perf_counter()
        value = perplexity(ctx.model, ctx.windows).ppl
    log.info("ppl %s = %.4f (%.0f s)", name, value, time.perf_counter() - t0)
    ctx.steps.put(f"ppl/{name}", value)
    return value


def fp_ppl(ctx: Context) -> float:
    ctx.restore_float()
    return timed_ppl(ctx, "fp")


def sliced(ctx: Context, name: str, spec, bits: tuple[int, ...]) -> dict[str, float]:
    """Quantize once (checkpoint cached under the work dir), then perplexity at each requested slice."""
    from matq_compile.evaluate import fake_quantize

    if all(ctx.steps.get(f"ppl/{name}/{b}") is not None for b in bits):
        return {str(b): ctx.steps.get(f"ppl/{name}/{b}") for b in bits}
    with ctx.lock.held():
        ckpt = quantized_checkpoint(ctx, name, spec)
        out = {}
        for b in bits:
            if ctx.steps.get(f"ppl/{name}/{b}") is None:
                fake_quantize(ctx.model, ckpt, b)
            out[str(b)] = timed_ppl(ctx, f"{name}/{b}")
    return out


def quantized_checkpoint(ctx: Context, name: str, spec):
    from matq_compile.ckpt import load_checkpoint, save_checkpoint
    from matq_compile.quant.sequential import quantize_model

    path = ctx.args.work_dir / "ckpt" / name
    seconds = ctx.steps.get(f"seconds/{name}")
    if seconds is not None and path.is_dir():
        return load_checkpoint(path)
    ctx.restore_float()
    with ctx.lock.held():
        log.info("quantizing %s: %s", name, spec)
        q = quantize_model(ctx.model, ctx.tokens, spec)
    source = {"model": ctx.args.model, "calibration": ctx.calib.to_dict()}
    save_checkpoint(path, layers=q.layers, tensors=q.tensors, spec=spec, sensitivity=q.sensitivity, source=source,
                    extra_files={"config.json": ctx.model_dir / "config.json"})
    ctx.steps.put(f"seconds/{name}", q.seconds)
    ctx.steps.put(f"cpu_seconds/{name}", q.cpu_seconds)
    ctx.steps.put(f"loadavg/{name}", list(os.getloadavg()))  # 1/5/15-min load when it finished: how shared it was
    ctx.restore_float()
    return load_checkpoint(path)


def rtn_sliced(ctx: Context, spec) -> dict[str, float]:
    """RTN needs no calibration: quantize every block linear directly (no driver pass), then slice."""
    from matq_compile.arch import arch_of
    from matq_compile.evaluate import fake_quantize
    from matq_compile.quant import quantize_weight

    ctx.restore_float()
    arch = arch_of(ctx.model)
    blocks = ctx.model.get_submodule(arch.blocks)
    layers = {f"{arch.block_prefix(i)}.{n}": quantize_weight(blocks[i].get_submodule(n).weight.float(), None, spec)
              for i in range(len(blocks)) for n in arch.linears}
    parents = InMemoryParents(layers, spec.slice_rule)
    out = {}
    with ctx.lock.held():
        for b in SLICES:
            if ctx.steps.get(f"ppl/rtn8/{b}") is None:
                fake_quantize(ctx.model, parents, b)
            out[str(b)] = timed_ppl(ctx, f"rtn8/{b}")
    return out


def ppl_from_steps(steps: Steps) -> dict:
    """The table from cached step results; None where a step has not finished."""
    get = steps.get
    return {"fp": get("ppl/fp"),
            "rtn8_slice": {str(b): get(f"ppl/rtn8/{b}") for b in SLICES},
            "gptq8_slice": {str(b): get(f"ppl/gptq8/{b}") for b in SLICES},
            "gptq": {str(b): get("ppl/gptq8/8") if b == 8 else get(f"ppl/gptq{b}/{b}") for b in SLICES},
            "matgptq": {str(b): get(f"ppl/matgptq/{b}") for b in SLICES}}


def build_report(args: argparse.Namespace, steps: Steps, ppl: dict) -> dict:
    import torch

    trained = [int(b) for b in args.trained_bits.split(",")]
    return {
        "command": "python benchmarks/quantizer_table.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "shared": "2 cores shared with other jobs; times are wall clock"},
        "config": {"model": args.model, "grid": "symmetric int8 parent, zero 128, round slice rule",
                   "group_size": args.group_size, "R": trained, "lambda": {str(r): 1.0 for r in trained},
                   "mu": "uniform", "rel_damp": 0.01, "block_size": 128, "act_order": False,
                   "calibration source": "wikitext-2/valid.txt", "calibration_samples": args.calibration_samples,
                   "calibration_seq_len": args.calibration_seq_len,
                   "calibration tokens": args.calibration_samples * args.calibration_seq_len, "seed": args.seed,
                   "eval text": "wikitext-2-raw/wiki.test.raw", "eval windows": args.windows,
                   "eval length": args.seq_len, "gptq per precision 8": "the GPTQ-8 parent (same run)"},
        "ppl": ppl,
        "seconds": {"gptq": steps.get("seconds/gptq8"), "matgptq": steps.get("seconds/matgptq")},
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def markdown(report: dict) -> str:
    ppl = report["ppl"]
    head = "| method | " + " | ".join(f"r={b}" for b in SLICES) + " |\n|---" + "|---" * len(SLICES) + "|"
    rows = [f"| fp | {_fmt(ppl['fp'])} (all r) |" + " |" * (len(SLICES) - 1)]
    names = {"rtn8_slice": "RTN-8 -> slice", "gptq8_slice": "GPTQ-8 -> slice", "gptq": "GPTQ per precision",
             "matgptq": f"MatGPTQ R={{{','.join(map(str, report['config']['R']))}}}"}
    for key, label in names.items():
        rows.append(f"| {label} | " + " | ".join(_fmt(ppl[key][str(b)]) for b in SLICES) + " |")
    sec = report["seconds"]
    return "\n".join([head, *rows, "", f"wall time (one full-model quantization): GPTQ {_fmt(sec['gptq'], 0)} s, "
                      f"MatGPTQ {_fmt(sec['matgptq'], 0)} s"])


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
