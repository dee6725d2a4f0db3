"""Helpers shared by test modules (conftest puts this directory on sys.path): a tiny checkpoint and build, plan
files, the CLI in a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

IDS = [1, 5, 9, 20, 33, 7, 100, 200, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 250, 17]  # 21 tokens: 2 prefill chunks


def make_checkpoint(model_dir: Path, out: Path, method: str = "rtn", act_order: bool = False) -> Path:
    """A sliceable checkpoint of model_dir (RTN-8, or GPTQ-8 with act-order), with its config.json."""
    import torch
    from transformers import AutoModelForCausalLM

    from matq_compile.ckpt import save_checkpoint
    from matq_compile.config import QuantSpec
    from matq_compile.quant.sequential import quantize_model

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    spec = QuantSpec(method=method, bits=8, group_size=32, act_order=act_order)
    calib = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    qm = quantize_model(model, calib, spec)
    return save_checkpoint(out, layers=qm.layers, tensors=qm.tensors, spec=spec, sensitivity=qm.sensitivity,
                           source={"model": "tiny"}, extra_files={"config.json": model_dir / "config.json"})


def compile_tiny(ckpt: Path, out: Path, **kw):
    from matq_compile.export import CompileOptions, compile_model

    bits, plan = kw.pop("bits", None), kw.pop("plan", None)
    opts = CompileOptions(**({"allow_untuned": True, "require_tokenizer": False, "max_seq_len": 64} | kw))
    return compile_model(ckpt, out, bits=bits, plan=plan, opts=opts)


def write_plan(path: Path, ckpt_dir: Path, layers: dict[str, int] | None = None, ckpt_hash: str | None = None):
    from matq_compile.ckpt import load_checkpoint

    ck = load_checkpoint(ckpt_dir)
    layers = layers or {n: (2, 3, 4, 5, 6, 7, 8)[i % 7] for i, n in enumerate(ck.layer_names)}
    path.write_text(json.dumps({"format_version": 1, "layers": layers, "checkpoint_hash": ckpt_hash or ck.hash,
                                "levels": [2, 3, 4, 5, 6, 7, 8], "solver": "test"}))
    return path, layers


def matq(*args: str, check_no_torch: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    code = ("import sys; from matq_compile.cli import main; rc = main(sys.argv[1:]); "
            + ("assert 'torch' not in sys.modules, 'torch was imported'; " if check_no_torch else "")
            + "sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


def head_module(N: int, K: int):
    """A lone LM head (HF name `lm_head`, no bias) as a Relax module with a dynamic row count, parameters unbound:
    what LowerDenseLinear rewrites."""
    from tvm import relax
    from tvm.relax.frontend import nn

    class Head(nn.Module):
        def __init__(self):
            self.lm_head = nn.Linear(K, N, bias=False)

        def forward(self, x):
            return self.lm_head(x)

    mod, _ = Head().export_tvm(spec={"forward": {"x": nn.spec.Tensor(["m", K], "float32")}})
    return relax.transform.BindParams("forward", {})(mod)


def build_main(func, target):
    """`func` compiled alone as the module's "main" for `target` (a kernel test's build)."""
    from matq_compile._tvm import tvm

    return tvm.compile(tvm.IRModule({"main": func}), target=target)


def int8_activations(rng, m: int, K: int):
    """Activations for the int8-activation kernel tests: normal, with round-half ties and an all-zero block."""
    import numpy as np

    x = rng.standard_normal((m, K)).astype(np.float32)
    x[0, :8] = [0.5, -0.5, 1.5, -2.5, 0.0, 0.0, 0.0, 0.0]  # round-half ties once the group's scale is known
    x[:, -32:] = 0.0  # an all-zero block (and, with group 32, a zero group: scale 0)
    return x
