"""SmolLM2-135M quantizer study: MatGPTQ error-feedback variants, scale refit and per-precision GPTQ, r = 8..3.

    nice -n 10 python benchmarks/quantizer_study.py --work-dir /tmp/matq_study            # resumable
    python benchmarks/quantizer_study.py --work-dir /tmp/matq_study --report-only --default NAME

Protocol (README §1): symmetric int8 parent, group 64, round slice rule, calibration from
<data>/wikitext-2/valid.txt (n x 512 tokens, seed 0), perplexity on the first 8 windows of 1024 tokens of
<data>/wikitext-2-raw/wiki.test.raw in float32, every slice r in 8,6,5,4,3.

Each MatGPTQ run stores refitted scales for every evaluated slice (spec.refit). The refit changes neither the codes
nor the state later blocks see (the driver always propagates the parent-scale 8-bit slice), so one run gives two
rows: `NAME` (parent scales, exactly what the run without --refit writes) and `NAME+refit`.

Resumable: every finished step (checkpoint, perplexity, seconds) is cached in <work-dir>/steps.json and skipped on
a re-run with the same settings; results are written after every step, so an interrupted study still reports what
ran. Writes benchmarks/results/quantizer_study_smollm2.json (`variants` = [{name, flags, ppl, seconds}]) and, with
--default, updates the keys of benchmarks/results/quantizer_smollm2.json that describe the default recipe.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantizer_table as qt  # noqa: E402  (shared step cache, machine record and checkpoint helpers)

from matq_compile import data  # noqa: E402
from matq_compile._log import enable_logging  # noqa: E402
from matq_compile.io_utils import write_json  # noqa: E402

log = logging.getLogger("matq_compile.bench.quantizer_study")
ROOT = Path(__file__).resolve().parents[1]
SLICES = (8, 6, 5, 4, 3)
EVAL_ORDER = (8, 4, 3, 6, 5)  # the slices the goals hinge on first, when a run is cut short
REFIT = SLICES
CALIB_DEFAULT = 16


@dataclass(frozen=True)
class Variant:
    """One quantization run. kwargs go to QuantSpec; flags are the `matq quantize` flags that reproduce it."""

    name: str
    flags: str
    kwargs: dict = field(default_factory=dict)
    method: str = "matgptq"
    bits: int = 8
    calibration_samples: int = CALIB_DEFAULT
    refit: bool = False  # gptq: also store refitted scales of its own slice (matgptq runs always refit)

    @property
    def slices(self) -> tuple[int, ...]:
        return SLICES if self.bits == 8 else (self.bits,)


def _ps(l8: float) -> dict:
    return {"feedback": "per-slice", "lambdas": ((8, l8), (4, 1.0), (3, 1.0))}


# most informative first: the run order when the study is cut short
MATGPTQ = [
    Variant("per-slice-l16", "--recipe reference --error-feedback per-slice --lambdas 8:16,4:1,3:1", _ps(16.0)),
    Variant("per-slice-l64", "--recipe reference --error-feedback per-slice --lambdas 8:64,4:1,3:1", _ps(64.0)),
    Variant("reference", "--recipe reference", {}),
    Variant("per-slice-l1", "--recipe reference --error-feedback per-slice", _ps(1.0)),
    Variant("mu-lambda-l4", "--recipe reference --lambdas 8:4,4:1,3:1 --mu lambda",
            {"lambdas": ((8, 4.0), (4, 1.0), (3, 1.0)), "mu": "lambda"}),
    Variant("per-slice-l4", "--recipe reference --error-feedback per-slice --lambdas 8:4,4:1,3:1", _ps(4.0)),
]
GPTQ = [Variant("gptq8", "--method gptq --bits 8", method="gptq", bits=8)] + \
       [Variant(f"gptq{b}", f"--method gptq --bits {b}", method="gptq", bits=b) for b in (4, 3, 6, 5)]
# the refit applied to the dedicated baselines too (same closed form, own b-bit slice), so no goal is met against a
# baseline weaker than what the study found
GPTQ_REFIT = [Variant(f"gptq{b}-refit", f"--method gptq --bits {b} --refit {b}", method="gptq", bits=b, refit=True)
              for b in (3, 4, 5, 6, 8)]
# the default recipe at a larger calibration set (the per-precision GPTQ rows it is compared with: CALIBRATION)
MATGPTQ_CALIB = [Variant("per-slice-l64-c64", MATGPTQ[1].flags + " --calibration-samples 64", _ps(64.0),
                         calibration_samples=64)]
# GPTQ-4 at the larger calibration sets, with the refit of its own slice (the strongest dedicated GPTQ at c16)
CALIBRATION = [Variant(f"gptq4-c{n}", f"--method gptq --bits 4 --calibration-samples {n} --refit 4", method="gptq",
                       bits=4, calibration_samples=n, refit=True) for n in (64, 128)]
# the default recipe under the other slice rule, with act-order over static groups (deployment unchanged: no perm
# is stored), true-sequential and 10x the damping; the act-order GPTQ-4 row is the dedicated model's counterpart
RECIPE_VARIANTS = [
    Variant("per-slice-l64-midpoint", MATGPTQ[1].flags + " --slice-rule midpoint",
            {**_ps(64.0), "slice_rule": "midpoint"}),
    Variant("per-slice-l64-actorder", MATGPTQ[1].flags + " --act-order --static-groups",
            {**_ps(64.0), "act_order": True, "static_groups": True}),
    Variant("per-slice-l64-trueseq", MATGPTQ[1].flags + " --true-sequential", {**_ps(64.0), "true_sequential": True}),
    Variant("per-slice-l64-damp10", MATGPTQ[1].flags + " --rel-damp 0.1", {**_ps(64.0), "rel_damp": 0.1}),
]
GPTQ_ORDER = [Variant(f"gptq{b}-actorder", f"--method gptq --bits {b} --act-order --static-groups --refit {b}",
                      {"act_order": True, "static_groups": True}, method="gptq", bits=b, refit=True)
              for b in (4, 3, 5, 6, 8)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/matq_study"), help="resumable step cache")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantizer_study_smollm2.json")
    p.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "results" / "quantizer_smollm2.json")
    p.add_argument("--default", default=None, help="study row that is `matq quantize`'s default recipe; "
                                                   "updates --table with it")
    p.add_argument("--only", default=None, help="comma-separated variant names to run (default: all, in order)")
    p.add_argument("--calibration-seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--lock", type=Path, default=None, help="flock this file around each variant's heavy steps")
    p.add_argument("--rows", default="refit,base",
                   help="which rows of a MatGPTQ run to evaluate, in this order: refit (refitted slice scales) "
                        "and/or base (parent scales)")
    p.add_argument("--eval-slices", type=lambda t: tuple(int(b) for b in t.split(",")), default=EVAL_ORDER,
                   help="slices to evaluate and their order (default 8,4,3,6,5)")
    p.add_argument("--report-only", action="store_true", help="write the reports from finished steps only")
    p.add_argument("--merge", type=Path, nargs="*", default=(),
                   help="with --report-only: also read the finished steps of these work dirs (parallel runs of "
                        "the same settings, e.g. one --only subset each)")
    return p.parse_args(argv)


class SliceView:
    """The attributes evaluate.fake_quantize reads, with the refitted slice scales switched on or off."""

    def __init__(self, ckpt, refit: bool):
        self.layers, self.rule, self.refit = ckpt.layers, ckpt.spec.slice_rule, refit

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    def dequant(self, name: str, bits: int):
        return self.layers[name].dequant(bits, self.rule, self.refit)


def main(argv: list[str] | None = None) -> int:
    enable_logging()
    args = parse_args(argv)
    settings = {"model": args.model, "calibration_seq_len": args.calibration_seq_len, "seed": args.seed,
                "windows": args.windows, "seq_len": args.seq_len, "group_size": args.group_size}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    steps = qt.Steps(args.work_dir / "steps.json", settings)
    for other in args.merge:
        extra = qt.Steps(other / "steps.json", settings)
        if not extra.results:
            log.warning("%s has no finished steps with these settings", other)
        steps.results = {**extra.results, **steps.results}
    variants = (MATGPTQ[:2] + GPTQ + MATGPTQ[2:] + GPTQ_REFIT + MATGPTQ_CALIB + CALIBRATION + RECIPE_VARIANTS
                + GPTQ_ORDER)
    if args.only:
        keep = set(args.only.split(","))
        variants = [v for v in variants if v.name in keep]
    if not args.report_only:
        run(args, steps, variants)
    write_reports(args, steps)
    return 0


def run(args: argparse.Namespace, steps: qt.Steps, variants: list[Variant]) -> None:
    import torch

    from matq_compile.evaluate import EvalSpec, eval_windows, load_model
    from matq_compile.model_source import resolve_model

    model_dir = resolve_model(args.model, args.cache_dir)
    model, tokenizer = load_model(model_dir)
    windows = eval_windows(tokenizer, EvalSpec(args.seq_len, args.windows))
    contexts: dict[int, qt.Context] = {}

    def context(n: int) -> qt.Context:
        if n not in contexts:
            calib = data.CalibSpec(str(data.data_file(data.WIKITEXT_VALID)), n, args.calibration_seq_len, args.seed)
            tokens = data.load_calibration(calib, tokenizer=tokenizer)
            ns = argparse.Namespace(**vars(args), calibration_samples=n)
            ns.work_dir = args.work_dir / f"c{n}"
            ns.work_dir.mkdir(parents=True, exist_ok=True)
            contexts[n] = qt.Context(ns, model_dir, model, windows, tokens, calib, steps)
        return contexts[n]

    with torch.no_grad():
        qt.fp_ppl(context(CALIB_DEFAULT))
        write_reports(args, steps)
        for v in variants:
            run_variant(context(v.calibration_samples), v)
            write_reports(args, steps)


def spec_of(v: Variant, group_size: int):
    from matq_compile.config import QuantSpec

    if v.method == "gptq":
        return QuantSpec(method="gptq", bits=v.bits, group_size=group_size, levels=v.slices,
                         refit=(v.bits,) if v.refit else (), **v.kwargs)
    return QuantSpec(method="matgptq", group_size=group_size, trained_bits=(8, 4, 3), refit=REFIT, levels=SLICES,
                     **v.kwargs)


def step_name(v: Variant) -> str:
    return f"c{v.calibration_samples}/{v.name}"


def run_variant(ctx: qt.Context, v: Variant) -> None:
    from matq_compile.evaluate import fake_quantize

    key = step_name(v)
    modes = tuple(m == "refit" for m in ctx.args.rows.split(",")) if v.method == "matgptq" or v.refit else (False,)
    names = [f"{key}{'+refit' if refit else ''}/{b}" for refit in modes for b in v.slices]
    if all(ctx.steps.get(f"ppl/{n}") is not None for n in names):
        return
    with ctx.lock.held():
        ckpt = qt.quantized_checkpoint(ctx, key.replace("/", "_"), spec_of(v, ctx.args.group_size))
        for what in ("seconds", "cpu_seconds", "loadavg"):
            ctx.steps.put(f"{what}/{key}", ctx.steps.get(f"{what}/{key.replace('/', '_')}"))
        for refit in modes:
            view = SliceView(ckpt, refit)
            for b in [r for r in ctx.args.eval_slices if r in v.slices]:
                name = f"{key}{'+refit' if refit else ''}/{b}"
                if ctx.steps.get(f"ppl/{name}") is None:
                    fake_quantize(ctx.model, view, b)
                    t0 = time.perf_counter()
                    qt.timed_ppl(ctx, name)
                    log.info("%s r=%d: %.3f (%.0f s)", key, b, ctx.steps.get(f"ppl/{name}"),
                             time.perf_counter() - t0)
    ctx.restore_float()


def rows(steps: qt.Steps) -> list[dict]:
    """Every study row (finished slices only; missing ones null), GPTQ per precision gathered into one row."""
    out = []
    for v in MATGPTQ + MATGPTQ_CALIB + RECIPE_VARIANTS:
        for refit in (False, True):
            key = step_name(v)
            ppl = {str(b): steps.get(f"ppl/{key}{'+refit' if refit else ''}/{b}") for b in SLICES}
            if all(x is None for x in ppl.values()):
                continue
            flags = v.flags + (" --refit " + ",".join(map(str, REFIT)) if refit else " --refit none")
            out.append({"name": v.name + ("+refit" if refit else ""), "flags": flags, "ppl": ppl,
                        **timing(steps, key), "calibration_samples": v.calibration_samples})
    g8 = GPTQ[0]
    ppl8 = {str(b): steps.get(f"ppl/{step_name(g8)}/{b}") for b in SLICES}
    if any(x is not None for x in ppl8.values()):
        out.append({"name": "gptq8-slice", "flags": g8.flags, "ppl": ppl8, **timing(steps, step_name(g8)),
                    "calibration_samples": g8.calibration_samples})
    per = {str(v.bits): steps.get(f"ppl/{step_name(v)}/{v.bits}") for v in GPTQ}
    if any(x is not None for x in per.values()):
        out.append({"name": "gptq-per-precision", "flags": "--method gptq --bits {r}",
                    "ppl": {str(b): per[str(b)] for b in SLICES},
                    "seconds": {str(v.bits): steps.get(f"seconds/{step_name(v)}") for v in GPTQ},
                    "calibration_samples": CALIB_DEFAULT,
                    "note": "one checkpoint per r; r=8 is the GPTQ-8 run"})
    for refit in (False, True):
        tag = "+refit" if refit else ""
        ppl = {str(v.bits): steps.get(f"ppl/{step_name(v)}{tag}/{v.bits}") for v in GPTQ_REFIT}
        if any(x is not None for x in ppl.values()):
            out.append({"name": f"gptq-per-precision-rerun{tag}",
                        "flags": "--method gptq --bits {r}" + (" --refit {r}" if refit else ""),
                        "ppl": {str(b): ppl.get(str(b)) for b in SLICES},
                        "seconds": {str(v.bits): steps.get(f"seconds/{step_name(v)}") for v in GPTQ_REFIT},
                        "cpu_seconds": {str(v.bits): steps.get(f"cpu_seconds/{step_name(v)}") for v in GPTQ_REFIT},
                        "loadavg": {str(v.bits): steps.get(f"loadavg/{step_name(v)}") for v in GPTQ_REFIT},
                        "calibration_samples": CALIB_DEFAULT,
                        "note": "one checkpoint per r, each storing its own slice's refitted scales; the row "
                                "without +refit evaluates the same checkpoints with the GPTQ scales"})
    for v in CALIBRATION + GPTQ_ORDER:  # dedicated GPTQ variants: with their GPTQ scales, then refitted; an 8-bit
        for tag in ("", "+refit"):      # one is also sliced to every width (GPTQ-8 -> slice)
            ppl = {str(b): steps.get(f"ppl/{step_name(v)}{tag}/{b}") for b in v.slices}
            if ppl[str(v.bits)] is not None:
                flags = v.flags if tag else v.flags.replace(f" --refit {v.bits}", "")
                out.append({"name": v.name + tag, "flags": flags, "ppl": ppl, **timing(steps, step_name(v)),
                            "calibration_samples": v.calibration_samples})
    return out


def timing(steps: qt.Steps, key: str) -> dict:
    """Wall seconds of the run's quantization, and (runs since CPU time is recorded) its process CPU seconds and
    the 1/5/15-min load average when it finished."""
    out = {"seconds": steps.get(f"seconds/{key}")}
    if steps.get(f"cpu_seconds/{key}") is not None:
        out.update(cpu_seconds=steps.get(f"cpu_seconds/{key}"), loadavg=steps.get(f"loadavg/{key}"))
    return out


def write_reports(args: argparse.Namespace, steps: qt.Steps) -> None:
    import torch

    variants = rows(steps)
    report = {
        "command": "python benchmarks/quantizer_study.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": qt._cpu_name(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "shared": "2 cores shared with other jobs (loadavg per row where recorded); seconds are wall "
                              "clock, cpu_seconds process CPU time"},
        "config": {"model": args.model,
                   "grid": "symmetric int8 parent, zero 128, round slice rule (unless a row's flags say otherwise)",
                   "group_size": args.group_size, "R": [8, 4, 3], "calibration source": "wikitext-2/valid.txt",
                   "calibration_seq_len": args.calibration_seq_len, "seed": args.seed,
                   "eval text": "wikitext-2-raw/wiki.test.raw", "eval windows": args.windows,
                   "eval length": args.seq_len, "refit slices": list(REFIT),
                   "seconds": "one full-model quantization, wall clock (MatGPTQ runs include the refit of 5 slices); "
                              "rows with cpu_seconds ran the concurrent quantizer (one single-threaded worker per "
                              "core), rows without it the earlier single-worker one (same codes and scales)"},
        "ppl_fp": steps.get("ppl/fp"),
        "variants": variants,
    }
    write_json(args.out, report)
    log.info("study table:\n%s", markdown(report))
    if args.default is not None:
        update_table(args, steps, report)


def markdown(report: dict) -> str:
    head = "| variant | " + " | ".join(f"r={b}" for b in SLICES) + " | seconds |\n" + "|---" * (len(SLICES) + 2) + "|"
    lines = [head, f"| fp | {qt._fmt(report['ppl_fp'])} (all r) |" + " |" * len(SLICES)]
    for v in report["variants"]:
        sec = v["seconds"]
        sec = " / ".join(f"{qt._fmt(s, 0)}" for s in sec.values()) if isinstance(sec, dict) else qt._fmt(sec, 0)
        lines.append(f"| {v['name']} | " + " | ".join(qt._fmt(v["ppl"].get(str(b))) for b in SLICES) + f" | {sec} |")
    return "\n".join(lines)


def update_table(args: argparse.Namespace, steps: qt.Steps, report: dict) -> None:
    """Rewrite the keys of quantizer_smollm2.json the issue's checks read, from this study's rows."""
    by_name = {v["name"]: v for v in report["variants"]}
    if args.default not in by_name:
        log.warning("--default %r is not a finished study row yet (%s); %s not updated", args.default,
                    ", ".join(by_name) or "none", args.table)
        return
    table = json.loads(args.table.read_text()) if args.table.is_file() else {}
    table.setdefault("ppl", {})
    table.setdefault("config", {})
    table.setdefault("seconds", {})
    default = by_name[args.default]
    if "matgptq_reference" not in table["ppl"] and "matgptq" in table["ppl"]:
        table["ppl"]["matgptq_reference"] = table["ppl"]["matgptq"]  # quantizer_table.py's MatGPTQ is the reference
    table["ppl"]["fp"] = report["ppl_fp"]
    table["ppl"]["matgptq"] = default["ppl"]
    sources = table.setdefault("sources", {})
    # GPTQ rows the study did not re-run stay as benchmarks/quantizer_table.py measured them (same protocol and
    # calibration size; the GPTQ code path is unchanged), and the file says so
    earlier = next((v for v in sources.values() if isinstance(v, str) and v.startswith("quantizer_table.py")),
                   "quantizer_table.py run of " + str(table.get("date", "an earlier date")))
    for key, row in (("gptq8_slice", "gptq8-slice"), ("matgptq_reference", "reference")):
        if row in by_name and all(v is not None for v in by_name[row]["ppl"].values()):
            table["ppl"][key] = by_name[row]["ppl"]
            sources[key] = f"quantizer_study.py row {row!r}"
        else:
            sources.setdefault(key, earlier)
    # plain per-precision GPTQ, per r: the study's re-runs where measured, else what the file already holds (kept
    # under gptq_plain once `gptq` became the strongest baseline, so re-running this never mixes the two)
    plain = dict(table["ppl"].get("gptq_plain") or table["ppl"].get("gptq") or {})
    plain_src = sources.get("gptq_plain")
    plain_src = dict(plain_src) if isinstance(plain_src, dict) else {r: earlier for r in plain}
    for row in ("gptq-per-precision", "gptq-per-precision-rerun"):
        for r, v in by_name.get(row, {}).get("ppl", {}).items():
            if v is not None:
                plain[r], plain_src[r] = v, f"quantizer_study.py row {row!r}"
    table["ppl"]["gptq_plain"], sources["gptq_plain"] = plain, plain_src
    # the baseline is the strongest dedicated GPTQ measured at each r (plain or with the same scale refit)
    best, best_src = {}, {}
    refit_row = "gptq-per-precision-rerun+refit"
    for r in map(str, SLICES):
        cands = [(plain.get(r), plain_src.get(r)),
                 (by_name.get(refit_row, {}).get("ppl", {}).get(r), f"quantizer_study.py row {refit_row!r}")]
        cands += [(by_name.get(row, {}).get("ppl", {}).get(r), f"quantizer_study.py row {row!r}")
                  for row in (f"gptq{r}-actorder", f"gptq{r}-actorder+refit")]  # act-order where it helps
        cands = [c for c in cands if c[0] is not None]
        if cands:
            best[r], best_src[r] = min(cands, key=lambda c: c[0])
    table["ppl"]["gptq"] = best
    sources["gptq"] = best_src
    sources["matgptq"] = f"quantizer_study.py row {args.default!r}"
    sources["fp"] = "quantizer_study.py"
    table["config"]["calibration_samples"] = default["calibration_samples"]
    table["config"]["calibration tokens"] = default["calibration_samples"] * args.calibration_seq_len
    table["config"]["default recipe"] = {"study row": args.default, "flags": default["flags"]}
    table["seconds"]["matgptq"] = default["seconds"]
    if "gptq8-slice" in by_name:
        table["seconds"]["gptq"] = by_name["gptq8-slice"]["seconds"]
    variant = {v.name: v for v in MATGPTQ + RECIPE_VARIANTS}.get(args.default.removesuffix("+refit"))
    if variant is not None:  # the config describes the default recipe, not the reference's λ = 1, μ uniform
        kw = variant.kwargs
        table["config"]["lambda"] = {str(r): w for r, w in kw.get("lambdas", ((8, 1.0), (4, 1.0), (3, 1.0)))}
        table["config"]["mu"] = kw.get("mu", "uniform") + (" (unused: per-slice feedback)"
                                                           if kw.get("feedback") == "per-slice" else "")
        table["config"]["feedback"] = kw.get("feedback", "shared")
        table["config"]["refit"] = list(REFIT) if args.default.endswith("+refit") else []
        table["config"]["act_order"] = bool(kw.get("act_order", False))
        table["config"]["static_groups"] = bool(kw.get("static_groups", False))
    table["study"] = "benchmarks/results/quantizer_study_smollm2.json (same protocol; these keys are copied from it)"
    table["date"] = report["date"]
    write_json(args.table, table)


if __name__ == "__main__":
    sys.exit(main())
