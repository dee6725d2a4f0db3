"""Perplexity of int8-activation builds against float-activation builds of the same checkpoint and slice.

    nice -n 10 python benchmarks/act_ppl.py --checkpoint CKPT [--bits 8,4] [--windows 8] [--target host]

Each (bits, act) pair is compiled (float32 head and embedding, so only the linears' activations differ) and scored
through the TVM runtime on the first --windows windows of --seq-len tokens of the WikiText-2 test text. Writes
benchmarks/results/act_ppl_<checkpoint name>_<target>.json (per run: bits, act, ppl, seconds; and the relative
change of each int8 build against the float build of the same bits).
"""
from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("act_ppl")
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--bits", default="8,4")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--target", default="host")
    p.add_argument("--db-dir", default=None)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/matq_act_ppl"))
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    from matq_compile import data, runtime, targets
    from matq_compile.bench import machine_info
    from matq_compile.evaluate import load_tokenizer
    from matq_compile.export import CompileOptions, compile_model
    from matq_compile.io_utils import write_json

    spec = targets.load(args.target)
    tokens = data.tokenize(load_tokenizer(args.checkpoint), data.read_text(data.data_file(data.WIKITEXT_TEST)))
    windows = data.eval_windows(tokens, args.seq_len, args.windows).numpy()
    runs = []
    for bits in (int(b) for b in args.bits.split(",")):
        for act in ("float", "int8"):
            out = args.work_dir / f"b{bits}_{act}"
            t0 = time.perf_counter()
            compile_model(args.checkpoint, out, bits=bits, opts=CompileOptions(
                target=args.target, db_dir=args.db_dir, act=act, max_seq_len=args.seq_len))
            t1 = time.perf_counter()
            ppl = runtime.perplexity(runtime.load(out), windows)
            runs.append({"bits": bits, "act": "float32" if act == "float" else act, "ppl": ppl,
                         "compile_s": t1 - t0, "score_s": time.perf_counter() - t1})
            log.info("r=%d act=%s: ppl %.4f (compile %.0f s, score %.0f s)", bits, act, ppl, t1 - t0,
                     runs[-1]["score_s"])
    for r in runs:
        ref = next(f for f in runs if f["bits"] == r["bits"] and f["act"] == "float32")
        r["rel_to_float"] = r["ppl"] / ref["ppl"] - 1.0
    result = {"command": " ".join(["python", "benchmarks/act_ppl.py", *(argv or sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "target": spec.name, "checkpoint": str(args.checkpoint.resolve()),
              "windows": args.windows, "seq_len": args.seq_len, "runs": runs}
    out = args.out or ROOT / "benchmarks" / "results" / f"act_ppl_{args.checkpoint.name}_{spec.name}.json"
    write_json(out, result)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
