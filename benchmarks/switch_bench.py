"""One switchable SmolLM2-135M build against the dedicated build of every width, on this machine.

    flock /tmp/matq_cpu.lock python benchmarks/switch_bench.py --checkpoint CKPT [--checkpoint CKPT_MIDPOINT] \
        [--widths 2,3,4,6,8] [--act float,int8] [--planes cut --planes 4,4] [--rounds 3] \
        [--out benchmarks/results/switch_smollm2_<target>.json]

For each checkpoint (its slice rule decides the plane layout: round reads one plane more than r, midpoint exactly
r), the switchable build (`matq compile --switchable --bits WIDTHS`) and, for the first checkpoint, one dedicated
build per width (`matq compile --bits r`; its dense kernels do not depend on the rule) are compiled, then measured
in their own processes, interleaved for --rounds rounds (medians). decode_tok_s: --new-tokens greedy steps after a
--prompt-tokens prefill; the switchable build measures every width in one process, switching between them with
Model.set_bits. switch_seconds: the median time of one Model.set_bits call; first_step_after_switch_s: the decode
step right after a switch (no re-packing or reloading happens, so it should equal a steady step).
--act lists the activation modes (`matq compile --act`); each mode has its own switchable and dedicated builds.
--planes (repeat) lists plane splits of the switchable builds (`matq compile --planes`; "cut": a boundary at every
width's cut, the default). The top-level rows are the first mode's, first checkpoint's and first split's; `by_act`
holds every mode, and in it `by_layout` every switchable build by its layout tag (rule letter + plane widths).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from matq_compile import planes
from matq_compile.bench import in_own_process, machine_info
from matq_compile.ckpt import read_slice_rule
from matq_compile.cli.tune import plane_list

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


def ensure_build(ckpt: Path, out: Path, args, act: str, bits: int | None = None,
                 widths: tuple[int, ...] | None = None, split: tuple[int, ...] | None = None) -> Path:
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.export import CompileOptions, compile_model

    if (out / "manifest.json").is_file() and not args.rebuild:
        m = json.loads((out / "manifest.json").read_text())
        want = {"kind": "switchable", "widths": list(widths)} if widths else {"kind": "uniform", "bits": bits}
        same = m["checkpoint"]["hash"] == load_checkpoint(ckpt).hash and m["plan"] == want
        if same and m.get("act", "float") == act and (m.get("switch") or {}).get("layout") == (
                None if widths is None else planes.tag(widths, read_slice_rule(ckpt), split)):
            return out
    opts = CompileOptions(target=args.target, head_dtype=args.head_dtype, embed_dtype=args.embed_dtype,
                          max_seq_len=args.max_seq_len, switch_widths=widths, switch_planes=split, act=act)
    return compile_model(ckpt, out, bits=bits, opts=opts)


def build_mb(build: Path) -> float:
    return sum(f.stat().st_size for f in build.iterdir() if f.is_file()) / 1e6


def measure(args, act: str, widths: tuple[int, ...], base: dict) -> dict:
    """The switchable builds (every checkpoint x plane split) and the dedicated builds of the first checkpoint, in
    activation mode `act`, each measured in its own process, interleaved for --rounds rounds."""
    sfx = "" if act == "float" else f"-a{act.removeprefix('int')}"
    switch, dedicated = {}, {}
    for ckpt in args.checkpoint:
        for split in args.planes or [None]:
            layout = planes.tag(widths, read_slice_rule(ckpt), split)
            switch[layout] = ensure_build(ckpt, args.work_dir / f"switch-{layout}{sfx}", args, act, widths=widths,
                                          split=split)
    for r in widths:
        dedicated[r] = ensure_build(args.checkpoint[0], args.work_dir / f"int{r}{sfx}", args, act, bits=r)
    samples: dict[str, list] = {f"switch-{t}": [] for t in switch} | {f"int{r}": [] for r in dedicated}
    for k in range(args.rounds):
        for t, build in switch.items():
            log.info("round %d/%d, act %s: switchable (%s)", k + 1, args.rounds, act, t)
            samples[f"switch-{t}"].append(in_own_process(__file__, base | {"kind": "switch", "build": str(build),
                                                                     "widths": list(widths)}))
        for r, build in dedicated.items():
            log.info("round %d/%d, act %s: dedicated int%d", k + 1, args.rounds, act, r)
            samples[f"int{r}"].append(in_own_process(__file__, base | {"kind": "dedicated", "build": str(build)}))
    ded = {r: statistics.median(s["decode_tok_s"] for s in samples[f"int{r}"]) for r in widths}
    by_layout = {}
    for t in switch:
        ss = samples[f"switch-{t}"]
        rows = [{"bits": r, "switch_decode_tok_s": statistics.median(s["decode_tok_s"][str(r)] for s in ss),
                 "dedicated_decode_tok_s": ded[r]} for r in widths]
        for row in rows:
            row["switch_vs_dedicated"] = row["switch_decode_tok_s"] / row["dedicated_decode_tok_s"]
        by_layout[t] = {"rule": planes.parse_tag(t)[0], "planes": list(planes.parse_tag(t)[1]), "rows": rows,
                        "build_mb": build_mb(switch[t]),
                         **{k: statistics.median(s[k] for s in ss)
                            for k in ("switch_seconds", "first_step_after_switch_s", "steady_step_s")}}
    return {"by_layout": by_layout, "dedicated_builds_mb": sum(build_mb(b) for b in dedicated.values()),
            "dedicated_build_mb": {str(r): build_mb(b) for r, b in dedicated.items()}}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, action="append", default=[],
                   help="SmolLM2 checkpoint (repeat for another slice rule); the first also gets dedicated builds")
    p.add_argument("--widths", default="2,3,4,6,8")
    p.add_argument("--target", default="host")
    p.add_argument("--act", default="float", help="activation modes, comma-separated: float, int8")
    p.add_argument("--planes", action="append", type=lambda t: None if t == "cut" else plane_list(t), default=[],
                   help="plane split of the switchable builds (repeat): cut (default) or widths like 4,4")
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
    from matq_compile.evaluate import load_tokenizer
    from matq_compile.io_utils import write_json
    from matq_compile.model_source import resolve_model
    from matq_compile.planes import check_widths

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
    acts = [a for a in args.act.split(",") if a]
    by_act = {act: measure(args, act, widths, base) for act in acts}
    first = by_act[acts[0]]["by_layout"][planes.tag(widths, read_slice_rule(args.checkpoint[0]),
                                                    (args.planes or [None])[0])]
    result = {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info() | {"target": spec.name, "tvm": TVM_VERSION},
              "settings": {"prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "repeats": args.repeats,
                           "rounds": args.rounds, "head_dtype": args.head_dtype, "embed_dtype": args.embed_dtype,
                           "checkpoints": [str(c) for c in args.checkpoint], "widths": list(widths), "acts": acts,
                           "processes": "one per build and round"},
              "act": acts[0], "rows": first["rows"], "switch_seconds": first["switch_seconds"],
              "switch_build_mb": first["build_mb"], "dedicated_builds_mb": by_act[acts[0]]["dedicated_builds_mb"],
              "dedicated_build_mb": by_act[acts[0]]["dedicated_build_mb"], "by_act": by_act}
    out = args.out or ROOT / "benchmarks" / "results" / f"switch_smollm2_{spec.name}.json"
    write_json(out, result)
    print_table(result)
    print(f"wrote {out}")
    return 0


def print_table(result: dict) -> None:
    for act, t, res in ((a, t, res) for a, m in result["by_act"].items() for t, res in m["by_layout"].items()):
        print(f"act {act}: switchable build ({res['rule']} rule, layout {t}): {res['build_mb']:.1f} MB; "
              f"one switch "
              f"{res['switch_seconds'] * 1e6:.1f} us; decode step after a switch "
              f"{res['first_step_after_switch_s'] * 1e3:.2f} ms vs steady {res['steady_step_s'] * 1e3:.2f} ms")
        print(f"{'bits':>5}{'switchable tok/s':>18}{'dedicated tok/s':>17}{'ratio':>8}")
        for row in res["rows"]:
            print(f"{row['bits']:>5}{row['switch_decode_tok_s']:>18.1f}{row['dedicated_decode_tok_s']:>17.1f}"
                  f"{row['switch_vs_dedicated']:>8.3f}")
    for act, m in result["by_act"].items():
        print(f"act {act}: dedicated builds together: {m['dedicated_builds_mb']:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
