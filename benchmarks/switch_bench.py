"""One switchable SmolLM2-135M build against the dedicated build of every width, on this machine.

    flock /tmp/matq_cpu.lock python benchmarks/switch_bench.py --checkpoint CKPT [--checkpoint CKPT_MIDPOINT] \
        [--widths 2,3,4,6,8] [--rounds 3] [--out benchmarks/results/switch_smollm2_<target>.json]

For each checkpoint (its slice rule decides the plane layout: round reads one plane more than r, midpoint exactly
r), the switchable build (`matq compile --switchable --bits WIDTHS`) and, for the first checkpoint, one dedicated
build per width (`matq compile --bits r`; its dense kernels do not depend on the rule) are compiled, then measured
in their own processes, interleaved for --rounds rounds (medians). decode_tok_s: --new-tokens greedy steps after a
--prompt-tokens prefill; the switchable build measures every width in one process, switching between them with
Model.set_bits. switch_seconds: the median time of one Model.set_bits call; first_step_after_switch_s: the decode
step right after a switch (no re-packing or reloading happens, so it should equal a steady step).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from matq_compile.bench import machine_info

log = logging.getLogger("switch_bench")
ROOT = Path(__file__).resolve().parents[1]


def _decode_tok_s(model, prompt: list[int], new_tokens: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        model.reset()
        tok = int(np.argmax(model.prefill(prompt)))
        t = time.perf_counter()
        for _ in range(new_tokens):
            tok = int(np.argmax(model.decode(tok)))
        times.append(time.perf_counter() - t)
    return new_tokens / statistics.median(times)


def _switch_costs(model, widths: list[int], prompt: list[int]) -> dict:
    """Median seconds of one set_bits call, and of the decode step right after a switch vs a steady step."""
    calls = []
    for i in range(2000):
        t = time.perf_counter()
        model.set_bits(widths[i % len(widths)])
        calls.append(time.perf_counter() - t)
    model.reset()
    tok = int(np.argmax(model.prefill(prompt)))
    after, steady = [], []
    for i in range(4 * len(widths)):
        model.set_bits(widths[i % len(widths)])
        for bucket in (after, steady):
            t = time.perf_counter()
            tok = int(np.argmax(model.decode(tok)))
            bucket.append(time.perf_counter() - t)
    return {"switch_seconds": statistics.median(calls), "first_step_after_switch_s": statistics.median(after),
            "steady_step_s": statistics.median(steady)}


def run_worker(job: dict) -> dict:
    from matq_compile import runtime

    model = runtime.load(job["build"])
    prompt, n, reps = job["prompt"], job["new_tokens"], job["repeats"]
    if job["kind"] == "dedicated":
        return {"decode_tok_s": _decode_tok_s(model, prompt, n, reps)}
    out = {}
    for r in job["widths"]:
        model.set_bits(r)
        out[str(r)] = _decode_tok_s(model, prompt, n, reps)
    return {"decode_tok_s": out, **_switch_costs(model, job["widths"], prompt)}


def in_own_process(job: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], check=True, capture_output=True,
                         text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def ensure_build(ckpt: Path, out: Path, args, bits: int | None = None, widths: tuple[int, ...] | None = None) -> Path:
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.export import CompileOptions, compile_model

    if (out / "manifest.json").is_file() and not args.rebuild:
        m = json.loads((out / "manifest.json").read_text())
        want = {"kind": "switchable", "widths": list(widths)} if widths else {"kind": "uniform", "bits": bits}
        if m["checkpoint"]["hash"] == load_checkpoint(ckpt).hash and m["plan"] == want:
            return out
    opts = CompileOptions(target=args.target, head_dtype=args.head_dtype, embed_dtype=args.embed_dtype,
                          max_seq_len=args.max_seq_len, switch_widths=widths)
    return compile_model(ckpt, out, bits=bits, opts=opts)


def build_mb(build: Path) -> float:
    return sum(f.stat().st_size for f in build.iterdir() if f.is_file()) / 1e6


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, action="append", default=[],
                   help="SmolLM2 checkpoint (repeat for another slice rule); the first also gets dedicated builds")
    p.add_argument("--widths", default="2,3,4,6,8")
    p.add_argument("--target", default="host")
    p.add_argument("--head-dtype", default="int8", choices=("float32", "float16", "int8"))
    p.add_argument("--embed-dtype", default="int8", choices=("float32", "float16", "int8"))
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/matq_switch"))
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    from matq_compile import data, targets
    from matq_compile._log import enable_logging
    from matq_compile._tvm import TVM_VERSION
    from matq_compile.ckpt import read_slice_rule
    from matq_compile.evaluate import load_tokenizer
    from matq_compile.io_utils import write_json
    from matq_compile.model_source import resolve_model
    from matq_compile.planes import check_widths, tag

    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    enable_logging()
    if not args.checkpoint:
        raise SystemExit("switch_bench: give --checkpoint")
    widths = check_widths(int(b) for b in args.widths.split(","))
    spec = targets.load(args.target)
    text = data.read_text(data.data_file(data.WIKITEXT_TEST))
    prompt = [int(t) for t in data.tokenize(load_tokenizer(resolve_model("smollm2-135m")), text)[:args.prompt_tokens]]
    base = {"prompt": prompt, "new_tokens": args.new_tokens, "repeats": args.repeats}
    switch, dedicated = {}, {}
    for ckpt in args.checkpoint:
        rule = read_slice_rule(ckpt)
        switch[rule] = ensure_build(ckpt, args.work_dir / f"switch-{rule}", args, widths=widths)
    for r in widths:
        dedicated[r] = ensure_build(args.checkpoint[0], args.work_dir / f"int{r}", args, bits=r)
    samples: dict[str, list] = {f"switch-{rule}": [] for rule in switch} | {f"int{r}": [] for r in dedicated}
    for k in range(args.rounds):
        for rule, build in switch.items():
            log.info("round %d/%d: switchable (%s)", k + 1, args.rounds, rule)
            samples[f"switch-{rule}"].append(in_own_process(base | {"kind": "switch", "build": str(build),
                                                                     "widths": list(widths)}))
        for r, build in dedicated.items():
            log.info("round %d/%d: dedicated int%d", k + 1, args.rounds, r)
            samples[f"int{r}"].append(in_own_process(base | {"kind": "dedicated", "build": str(build)}))
    ded = {r: statistics.median(s["decode_tok_s"] for s in samples[f"int{r}"]) for r in widths}
    by_rule = {}
    for rule in switch:
        ss = samples[f"switch-{rule}"]
        rows = [{"bits": r, "switch_decode_tok_s": statistics.median(s["decode_tok_s"][str(r)] for s in ss),
                 "dedicated_decode_tok_s": ded[r]} for r in widths]
        for row in rows:
            row["switch_vs_dedicated"] = row["switch_decode_tok_s"] / row["dedicated_decode_tok_s"]
        by_rule[rule] = {"layout": tag(widths, rule), "rows": rows, "build_mb": build_mb(switch[rule]),
                         **{k: statistics.median(s[k] for s in ss)
                            for k in ("switch_seconds", "first_step_after_switch_s", "steady_step_s")}}
    first = by_rule[read_slice_rule(args.checkpoint[0])]
    result = {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info() | {"target": spec.name, "tvm": TVM_VERSION},
              "settings": {"prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "repeats": args.repeats,
                           "rounds": args.rounds, "head_dtype": args.head_dtype, "embed_dtype": args.embed_dtype,
                           "checkpoints": [str(c) for c in args.checkpoint], "widths": list(widths),
                           "processes": "one per build and round"},
              "rows": first["rows"], "switch_seconds": first["switch_seconds"], "switch_build_mb": first["build_mb"],
              "dedicated_builds_mb": sum(build_mb(b) for b in dedicated.values()),
              "dedicated_build_mb": {str(r): build_mb(b) for r, b in dedicated.items()}, "by_rule": by_rule}
    out = args.out or ROOT / "benchmarks" / "results" / f"switch_smollm2_{spec.name}.json"
    write_json(out, result)
    print_table(result)
    print(f"wrote {out}")
    return 0


def print_table(result: dict) -> None:
    for rule, res in result["by_rule"].items():
        print(f"switchable build ({rule} rule, planes {res['layout']}): {res['build_mb']:.1f} MB; one switch "
              f"{res['switch_seconds'] * 1e6:.1f} us; decode step after a switch "
              f"{res['first_step_after_switch_s'] * 1e3:.2f} ms vs steady {res['steady_step_s'] * 1e3:.2f} ms")
        print(f"{'bits':>5}{'switchable tok/s':>18}{'dedicated tok/s':>17}{'ratio':>8}")
        for row in res["rows"]:
            print(f"{row['bits']:>5}{row['switch_decode_tok_s']:>18.1f}{row['dedicated_decode_tok_s']:>17.1f}"
                  f"{row['switch_vs_dedicated']:>8.3f}")
    print(f"dedicated builds together: {result['dedicated_builds_mb']:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
