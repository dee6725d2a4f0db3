"""One GPU check, ready to run on a CUDA host (H100/H200: under 10 minutes); installs nothing.

    python benchmarks/gpu_check.py --checkpoint ckpt/smollm2-matgptq [--trials 8] [--out-dir benchmarks/results]

Steps, in order (each logged; the first failure stops the run):
  1. find the GPU (tvm.cuda(0)); its compute capability picks the target (9.0 -> cuda-sm90, targets/*.toml)
  2. build every kernel r = 2..8 at M = 1 and 16 and check its output on the GPU against numpy (layout.dequant)
  3. tune the benchmark shapes at r = 4 for a few trials (local GPU runner); every r replays those records
  4. time r = 2, 3, 4, 8 at 4096 x 4096 and 11008 x 4096, M = 1 and 16, against torch fp16 F.linear (both
     cache-cold: weights rotated past twice the L2; device timers) -> kernels_cuda-<arch>.json
  5. compile SmolLM2 at int4 for the GPU, compare its prefill logits with the torch fake-quantized model, time
     decode -> e2e_smollm2_cuda-<arch>.json

Without a GPU it stops at step 1 with one line. The CPU-side parts (arguments, arch from a compute capability,
kernel builds for a given arch, result files from measured rows) are tested in tests/test_gpu_check.py.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("matq_compile.gpu_check")  # under the package logger: enable_logging formats it

CHECK_SHAPE = (512, 1024)  # N x K of the numerics check (groups of 64)
BENCH_SHAPES = ((4096, 4096), (11008, 4096))
BENCH_BITS = (2, 3, 4, 8)
M_BUCKETS = (1, 16)
GROUP = 64
DTYPE = "float16"


class NoGPU(RuntimeError):
    """No CUDA device: the check cannot run on this machine."""


@dataclass(frozen=True)
class GPU:
    name: str
    capability: str  # "9.0"

    @property
    def arch(self) -> str:
        return arch_from_capability(self.capability)


def arch_from_capability(capability: str) -> str:
    """"9.0" -> "sm_90", "8.6" -> "sm_86"."""
    try:
        major, minor = (int(v) for v in str(capability).split("."))
    except ValueError as e:
        raise ValueError(f"compute capability must look like 9.0, got {capability!r}") from e
    return f"sm_{major}{minor}"


def target_for(arch: str):
    """The project's target of an arch (targets/cuda-sm90.toml for sm_90); an arch without one is refused."""
    from matq_compile import targets

    name = "cuda-" + arch.replace("_", "")
    try:
        return targets.load(name)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"no target file for {arch} (targets/{name}.toml); add one like targets/cuda-sm90.toml") \
            from e


def find_gpu() -> GPU:
    from matq_compile._tvm import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        raise NoGPU("no CUDA GPU found (tvm.cuda(0) does not exist): run this check on a GPU host")
    return GPU(str(dev.device_name), str(dev.compute_version))


def check_keys() -> list:
    from matq_compile import layout

    N, K = CHECK_SHAPE
    return [layout.KernelKey(N, K, b, GROUP, m, DTYPE) for m in M_BUCKETS for b in range(2, 9)]


def bench_keys() -> list:
    from matq_compile import layout

    return [layout.KernelKey(N, K, b, GROUP, m, DTYPE) for (N, K) in BENCH_SHAPES for m in M_BUCKETS
            for b in BENCH_BITS]


def build_kernels(keys, spec, db_dir: Path | None) -> dict:
    """{key: (compiled kernel, rule that scheduled it)}: tuned where db_dir has records, else the default rules.
    Runs without a GPU (CUDA source only: the GPU compiles it when the module is loaded); any target."""
    from matq_compile import bench, schedules
    from matq_compile._tvm import tvm
    from matq_compile.lower.kernels import linear_func
    from matq_compile.schedules.gpu_dlight import RULE_ATTR

    out = {}
    for key in keys:
        if db_dir is None:
            func = schedules.default_schedule(linear_func(key, "main", gpu=spec.is_gpu), spec)
            rule = str(func.attrs[RULE_ATTR]) if RULE_ATTR in func.attrs else "default"
            out[key] = (tvm.compile(tvm.IRModule({"main": func}), target=spec.to_tvm()), rule)
        else:
            out[key] = (bench.build_kernel(key, spec, db_dir, fallback=True), "tuned or default")
    return out


def check_kernels(built: dict, session, rng: np.random.Generator) -> list[dict]:
    """Each kernel's GPU output against numpy (float64 reference of the same packed arrays)."""
    from matq_compile import bench, layout
    from matq_compile._tvm import tensor

    rows = []
    for key, (ex, rule) in built.items():
        args = bench.random_args(key, key.m_bucket, seed=int(rng.integers(1 << 30)))
        mod = session.load(ex)
        dev_args = [tensor(a, session.dev) for a in args]
        mod["main"](*dev_args)
        got = dev_args[-1].numpy().astype(np.float64)
        arr = dict(zip("PSZ", args[1:4]))
        ref = args[0].astype(np.float64) @ layout.dequant(arr, key.bits, key.K, key.group).T
        err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
        rows.append({"key": key.name, "rule": rule, "max_rel_err": err, "ok": err < 2e-2})
        log.info("%s (%s): max rel err %.2e", key.name, rule, err)
    return rows


def torch_linear_s(N: int, K: int, M: int, l2_bytes: int, repeat: int) -> np.ndarray:
    """torch fp16 F.linear, cache-cold like ours: weights rotated past twice the L2, CUDA events per call."""
    import torch
    import torch.nn.functional as F

    copies = max(2, min(64, -(-2 * l2_bytes // (N * K * 2))))
    ws = [torch.randn(N, K, device="cuda", dtype=torch.float16) for _ in range(copies)]
    x = torch.randn(M, K, device="cuda", dtype=torch.float16)
    F.linear(x, ws[0])
    times = []
    for i in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        F.linear(x, ws[i % copies])
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return np.asarray(times)


def time_kernels(built: dict, session, repeat: int) -> list[dict]:
    from matq_compile import bench

    rows = []
    for key, (ex, _) in built.items():
        t = session.time(session.load(ex), "main", bench.random_args(key, key.m_bucket), repeat)
        ref = torch_linear_s(key.N, key.K, key.m_bucket, session.l2_bytes(), repeat)
        rows.append(kernel_row(key, float(np.median(t)), float(np.median(ref))))
        log.info("%s: %.1f us, torch fp16 %.1f us", key.name, rows[-1]["median_us"], rows[-1]["torch_fp16_us"])
    return rows


def kernel_row(key, median_s: float, torch_s: float) -> dict:
    from matq_compile import bench

    return {"key": key.name, "N": key.N, "K": key.K, "bits": key.bits, "M": key.m_bucket,
            "median_us": median_s * 1e6, "torch_fp16_us": torch_s * 1e6, "speedup_vs_fp16": torch_s / median_s,
            "gbps": bench.traffic_bytes(key, key.m_bucket) / median_s / 1e9}


def e2e_check(ckpt_dir: Path, spec, db_dir: Path | None, work: Path, bits: int, prompt_len: int,
              new_tokens: int) -> dict:
    """Compile the checkpoint at `bits` for the GPU, compare last-token prefill logits with the torch
    fake-quantized model (fp32, CPU), and time greedy decode."""
    import torch

    from matq_compile import runtime
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.evaluate import model_from_checkpoint
    from matq_compile.export import CompileOptions, compile_model

    build = compile_model(ckpt_dir, work / f"build_int{bits}", bits=bits,
                          opts=CompileOptions(target=spec.name, db_dir=None if db_dir is None else str(db_dir),
                                              allow_untuned=True, require_tokenizer=False))
    ids = [int(i) for i in np.random.default_rng(0).integers(0, 1000, prompt_len)]
    model = runtime.load(build, "cuda")
    model.reset()
    logits = np.asarray(model.prefill(ids), np.float64).reshape(-1)
    ref_model = model_from_checkpoint(load_checkpoint(ckpt_dir), bits).eval()
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0, -1].double().numpy()
    err = float(np.abs(logits - ref).max())
    times = []
    token = int(np.argmax(logits))
    for _ in range(new_tokens):
        t = time.perf_counter()
        token = int(np.argmax(model.decode(token)))
        times.append(time.perf_counter() - t)
    return {"bits": bits, "prompt_tokens": prompt_len, "logits_max_abs_err": err, "logits_ok": err < 1e-2,
            "decode_ms_median": statistics.median(times) * 1e3, "decode_tok_s": 1 / statistics.median(times)}


def result_paths(out_dir: Path, arch: str) -> tuple[Path, Path]:
    tag = "cuda-" + arch.replace("_", "")
    return out_dir / f"kernels_{tag}.json", out_dir / f"e2e_smollm2_{tag}.json"


def write_results(out_dir: Path, gpu: GPU, spec, checks: list[dict], kernels: list[dict], e2e: dict | None,
                  tuned_trials: int) -> tuple[Path, Path]:
    """The two result files of a run, from measured rows (a row never carries a number that was not measured)."""
    from matq_compile._tvm import TVM_VERSION
    from matq_compile.io_utils import write_json

    head = {"device": gpu.name, "compute_capability": gpu.capability, "target": spec.name,
            "tvm_version": TVM_VERSION, "date": datetime.datetime.now(datetime.UTC).isoformat()}
    kpath, epath = result_paths(out_dir, gpu.arch)
    write_json(kpath, {**head, "tuned_trials_per_task": tuned_trials, "numerics": checks, "kernels": kernels})
    write_json(epath, {**head, "model": "smollm2-135m", **({"e2e": e2e} if e2e else {"e2e": None})})
    return kpath, epath


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "ckpt" / "smollm2-matgptq",
                   help="sliceable SmolLM2 checkpoint (matq quantize --model smollm2-135m)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/matq_gpu_check"))
    p.add_argument("--trials", type=int, default=8, help="tuning trials per (shape, M) task; 0: no tuning")
    p.add_argument("--repeat", type=int, default=50, help="timed calls per kernel")
    p.add_argument("--e2e-bits", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    if args.trials < 0 or args.repeat <= 0 or args.new_tokens <= 0:
        p.error("--trials must be >= 0, --repeat and --new-tokens positive")
    return args


def run(args: argparse.Namespace) -> int:
    from matq_compile import remote, tune

    gpu = find_gpu()  # first: without a GPU nothing else is worth doing
    spec = target_for(gpu.arch)
    if not (args.checkpoint / "matq_config.json").is_file():
        raise ValueError(f"{args.checkpoint} is not a matq checkpoint; make one with "
                         f"`matq quantize --model smollm2-135m --out {args.checkpoint}`")
    log.info("GPU %s (compute %s) -> target %s", gpu.name, gpu.capability, spec.name)
    session = remote.open_session(spec, "local")
    checks = check_kernels(build_kernels(check_keys(), spec, None), session, np.random.default_rng(0))
    db_dir = None
    if args.trials:
        db_dir = args.work_dir / "tuning" / spec.name
        tune.tune(bench_keys(), spec, db_dir, args.trials, runner="local")
    kernels = time_kernels(build_kernels(bench_keys(), spec, db_dir), session, args.repeat)
    e2e = e2e_check(args.checkpoint, spec, None, args.work_dir, args.e2e_bits, 64, args.new_tokens)
    kpath, epath = write_results(args.out_dir, gpu, spec, checks, kernels, e2e, args.trials)
    log.info("wrote %s and %s", kpath, epath)
    return 0 if all(c["ok"] for c in checks) and e2e["logits_ok"] else 1


def main(argv: list[str] | None = None) -> int:
    from matq_compile._log import enable_logging

    enable_logging()
    args = parse_args(argv)
    try:
        return run(args)
    except (NoGPU, ValueError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
