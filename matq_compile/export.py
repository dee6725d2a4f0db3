"""compile_model: checkpoint + plan + target -> a deployable directory, written atomically.

    <out>/model.so              the Relax VM executable (functions prefill, decode, score; see lower/frontend.py)
    <out>/weights.safetensors   packed slices (<layer>.P/.S/.Z[/.perm]) and float tensors, by parameter name
    <out>/config.json, tokenizer files (copied from the checkpoint)
    <out>/manifest.json         provenance (checkpoint hash, plan, target, TVM/ffi versions, database hash),
                                parameter order, cache shapes, sha256 of the library and the weights
    <out>/SHA256SUMS            sha256 of every file above, the manifest included (runtime/verify.py)

The library takes the weights as trailing parameters in manifest["params"] order, so the Python runtime and the
C++ runner both feed it from weights.safetensors. Nothing here imports torch except checkpoint loading.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matq_compile import layout
from matq_compile.kernel_units import SwitchSpec
from matq_compile.io_utils import atomic_dir, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

from matq_compile.runtime import FORMAT_VERSION, LIB_NAME, MANIFEST_NAME, WEIGHTS_NAME  # noqa: E402
from matq_compile.runtime.verify import write_digests
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
CUDA_SOURCE_NAME = "kernels.cu"
CHUNK = max(layout.M_BUCKETS)  # prefill chunk: tokens per prefill call (a tuned static M bucket)


@dataclass(frozen=True)
class CompileOptions:
    target: str = "host"
    db_dir: str | None = None  # default: the committed schedules/db/<target>/
    allow_untuned: bool = False
    head_dtype: str = "float32"
    max_seq_len: int = 1024
    require_tokenizer: bool = True
    dump_dir: str | None = None
    fuse_siblings: bool = True  # one kernel for q/k/v and one for gate/up where their slices agree
    embed_dtype: str = "float32"  # the embedding table as stored and read: float32 (exact), float16, int8 rows
    switch_widths: tuple[int, ...] | None = None  # a switchable build serving these widths (no --bits / --plan)
    switch_planes: tuple[int, ...] | None = None  # its plane widths (planes.plane_widths; None: every cut)
    act: str = "float"  # quantized linears' activations: float (exact) or int8 (per group; x86 AVX2/VNNI targets)
    kv_dtype: str = "float32"  # KV-cache elements: float32 (exact) or float16 (CPU targets; lower/kv_cache.py)


def resolve_bits(ckpt, bits: int | None, plan_path: str | Path | None) -> tuple[dict[str, int], dict[str, Any]]:
    """{layer: bits} from a uniform width or a plan file checked against this checkpoint, and its provenance."""
    from matq_compile.slicing import check_bits

    if (bits is None) == (plan_path is None):
        raise ValueError("give exactly one of a plan (--plan) or a uniform bit width (--bits)")
    if bits is not None:
        b = check_bits(bits)
        return {name: b for name in ckpt.layer_names}, {"kind": "uniform", "bits": b}
    from matq_compile.search.allocation import load_plan

    plan = load_plan(plan_path, ckpt.layer_names, ckpt.hash)
    return dict(plan.layers), {"kind": "plan", "path": str(plan_path), **plan.to_json()}


class CheckpointWeights:
    """The checkpoint as a WeightSource (lower/params.py): float tensors, and each layer's slice packed once."""

    def __init__(self, ckpt) -> None:
        self.ckpt = ckpt
        self._packed: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def tensor(self, name: str) -> np.ndarray:
        t = self.ckpt.tensors.get(name)
        if t is None:
            raise ValueError(f"the checkpoint has no tensor for model parameter {name!r}")
        return t.float().numpy() if t.is_floating_point() else t.numpy()

    def packed(self, layer: str, bits: int, group: int) -> dict[str, np.ndarray]:
        if (layer, bits) not in self._packed:
            res = self.ckpt.layers[layer]
            zeros = None if res.zeros is None else res.zeros.numpy()
            # a slice with refitted scales (checkpoint format 2) is packed with them; others use the parent's
            arrays = layout.pack_slice(res.qweight.numpy(), res.scales_for(bits).numpy(), zeros, bits,
                                       self.ckpt.spec.slice_rule, group)
            if res.perm is not None:
                arrays["perm"] = res.perm.numpy().astype(np.int32)
            self._packed[(layer, bits)] = arrays
        return self._packed[(layer, bits)]

    def codes(self, layer: str) -> np.ndarray:
        return self.ckpt.layers[layer].qweight.numpy()


def param_arrays(params: list, param_map, source) -> dict[str, np.ndarray]:
    """Each compiled weight parameter's array, made by its recipe and checked against the compiled signature
    (name, shape, dtype), in signature order."""
    from matq_compile._log import progress

    out = {}
    for p in progress(params, desc="weights"):
        a = param_map.make(p.name, source).astype(str(p.ty.dtype), copy=False)
        if tuple(a.shape) != tuple(int(s) for s in p.ty.shape):
            raise ValueError(f"parameter {p.name}: checkpoint shape {a.shape} != graph shape {p.ty.shape}")
        out[p.name] = np.ascontiguousarray(a)
    return out


def _hf_config(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_dir} has no config.json (the model's Hugging Face config)")
    return read_json(path, "Hugging Face model config")


def _tokenizer_files(ckpt_dir: Path, required: bool) -> list[Path]:
    files = [ckpt_dir / f for f in TOKENIZER_FILES if (ckpt_dir / f).is_file()]
    if required and not (ckpt_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_dir} has no tokenizer.json; `matq run` needs it "
                                f"(copy the model's tokenizer files into the checkpoint directory)")
    return files


def _db_dir(spec, opts: CompileOptions) -> Path | None:
    from matq_compile import schedules
    from matq_compile.tune import check_database

    db = Path(opts.db_dir) if opts.db_dir else schedules.db_dir(spec)
    if (db / "target.json").is_file():
        return check_database(db, spec)  # now, not from inside a compiler pass (TVM would wrap the error)
    if opts.db_dir:
        raise FileNotFoundError(f"tuning database {db} does not exist (no target.json)")
    if not opts.allow_untuned:
        raise ValueError(f"target {spec.name} has no tuned records ({db} is missing); run `matq tune --target "
                         f"{spec.name}` or pass --allow-untuned for default schedules")
    return None


def module_kinds(mod) -> list[str]:
    """Kinds of a runtime module and everything it imports (e.g. relax.VMExecutable, llvm, cuda)."""
    return [mod.kind] + [k for m in mod.imports for k in module_kinds(m)]


def cuda_source(ex) -> str:
    """The CUDA source embedded in a CUDA build (compiled by NVRTC/nvcc when the GPU host loads it)."""
    stack = [ex.mod]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            return m.inspect_source("cuda")
        stack.extend(m.imports)
    raise ValueError("the build holds no cuda module: some kernel was left unscheduled and became host code")


def _check_out_dir(out_dir: Path, ckpt_dir: Path) -> None:
    """Refuse to replace anything but an earlier build (atomic_dir swaps the whole directory)."""
    if out_dir.resolve() == ckpt_dir.resolve():
        raise ValueError("--out must not be the input's own directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{out_dir} exists and is not a matq build (no {MANIFEST_NAME}); choose another --out")


def _eos_ids(ckpt_dir: Path, hf: dict[str, Any]) -> list[int]:
    gen = ckpt_dir / "generation_config.json"
    eos = read_json(gen, "generation config").get("eos_token_id") if gen.is_file() else None
    eos = hf.get("eos_token_id") if eos is None else eos
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def _llm_manifest(ckpt, ckpt_dir: Path, plan_info: dict, layer_bits: dict, spec, db: Path | None,
                  opts: CompileOptions, ex, cfg, hf: dict, arrays: dict, tmp: Path) -> dict[str, Any]:
    from matq_compile._tvm import TVM_VERSION, tvm_ffi
    from matq_compile.tune import database_hash

    return {
        "format_version": FORMAT_VERSION, "kind": "llm",
        "checkpoint": {"path": str(ckpt_dir.resolve()), "hash": ckpt.hash, "slice_rule": ckpt.spec.slice_rule},
        "plan": plan_info, "bits": layer_bits, "target": _target_record(spec),
        "tvm_version": TVM_VERSION, "tvm_ffi_version": tvm_ffi.__version__,
        "database": None if db is None else {"path": str(db), "hash": database_hash(db)},
        "allow_untuned": opts.allow_untuned, "head_dtype": opts.head_dtype, "embed_dtype": opts.embed_dtype,
        "act": opts.act, "modules": module_kinds(ex.mod), "model": cfg.to_dict(), "chunk": CHUNK,
        "eos_token_ids": _eos_ids(ckpt_dir, hf),
        "kv_cache": {"kt": list(cfg.cache_shapes[0]), "v": list(cfg.cache_shapes[1]), "dtype": cfg.kv_dtype},
        "params": [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()],
        "files": {LIB_NAME: sha256_file(tmp / LIB_NAME), WEIGHTS_NAME: sha256_file(tmp / WEIGHTS_NAME)},
    }


def compile_model(ckpt_dir: str | Path, out_dir: str | Path, bits: int | None = None,
                  plan: str | Path | None = None, opts: CompileOptions = CompileOptions()) -> Path:
    """Build and write the deployable directory; every input is validated before anything is written."""
    from safetensors.numpy import save_file

    from matq_compile import targets
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.lower.frontend import LlamaConfig, build_llama
    from matq_compile.lower.pipeline import PipelineOptions, compile_module, int8_isa

    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    _check_out_dir(out_dir, ckpt_dir)
    ckpt = load_checkpoint(ckpt_dir)
    switch = None
    if opts.switch_widths is not None:
        if bits is not None or plan is not None:
            raise ValueError("a switchable build serves its --bits list; it takes no plan (load plans at run time)")
        switch = SwitchSpec(tuple(opts.switch_widths), ckpt.spec.slice_rule, opts.switch_planes)
        layer_bits = {name: max(switch.widths) for name in ckpt.layer_names}
        plan_info = {"kind": "switchable", "widths": list(switch.widths)}
    else:
        layer_bits, plan_info = resolve_bits(ckpt, bits, plan)
    hf = _hf_config(ckpt_dir)
    tok_files = _tokenizer_files(ckpt_dir, opts.require_tokenizer)
    spec = targets.load(opts.target)
    if switch is not None and spec.is_gpu:
        raise ValueError(f"switchable builds run on CPU targets; {spec.name} is a GPU target (compile one build per "
                         f"width there)")
    int8_isa(spec, opts.act)  # refuse an int8-activation build for a target without a byte dot product, now
    if spec.is_gpu and opts.kv_dtype != "float32":
        raise ValueError(f"--kv-dtype {opts.kv_dtype} is for CPU targets; {spec.name} keeps a float32 KV cache")
    db = _db_dir(spec, opts)
    cfg = LlamaConfig.from_hf(hf, opts.max_seq_len, opts.kv_dtype)
    mod, _ = build_llama(cfg, chunk=CHUNK, gpu=spec.is_gpu)
    slices = ckpt.linear_slices(layer_bits)
    log.info("compiling %d quantized linears for %s (bits %s)", len(slices), spec.name,
             sorted(set(layer_bits.values())))
    popts = PipelineOptions(opts.head_dtype, opts.allow_untuned, opts.dump_dir, opts.fuse_siblings, opts.embed_dtype,
                            switch, opts.act)
    ex, params, param_map = compile_module(mod, slices, spec, db, popts)
    cuda_src = cuda_source(ex) if spec.is_gpu else None
    arrays = param_arrays(params, param_map, CheckpointWeights(ckpt))
    with atomic_dir(out_dir) as tmp:
        ex.export_library(str(tmp / LIB_NAME))
        save_file(arrays, str(tmp / WEIGHTS_NAME), metadata={"format": "matq-weights"})
        if cuda_src is not None:  # for inspection; the library embeds the same source
            (tmp / CUDA_SOURCE_NAME).write_text(cuda_src)
        shutil.copyfile(ckpt_dir / "config.json", tmp / "config.json")
        for f in tok_files:
            shutil.copyfile(f, tmp / f.name)
        manifest = _llm_manifest(ckpt, ckpt_dir, plan_info, layer_bits, spec, db, opts, ex, cfg, hf, arrays, tmp)
        if switch is not None:
            units = switch.units(slices, opts.fuse_siblings)
            manifest["switch"] = {"widths": list(switch.widths), "rule": switch.rule, "layout": switch.tag,
                                  "default_bits": max(switch.widths), "units": [list(u.members) for u in units]}
        write_json(tmp / MANIFEST_NAME, manifest)
        write_digests(tmp)  # last: covers every file above, the manifest included
    log.info("wrote %s (%s, %.1f MB weights)", out_dir, spec.name, (out_dir / WEIGHTS_NAME).stat().st_size / 1e6)
    return out_dir


def _target_record(spec) -> dict[str, Any]:
    return {"name": spec.name, "kind": spec.kind, "target": spec.target_dict(), "host": spec.host}


def compile_onnx(onnx_path: str | Path, out_dir: str | Path, bits: int,
                 opts: CompileOptions = CompileOptions()) -> Path:
    """A non-LLM ONNX model -> a build whose constant-weight MatMuls run as r-bit slices of an in-process
    RTN-8 parent (packed weights baked into the library as constants). Run it with runtime.run_graph."""
    import onnx

    from matq_compile import targets
    from matq_compile._tvm import TVM_VERSION, tvm_ffi
    from matq_compile.lower.passes import quantize_const_matmul
    from matq_compile.lower.pipeline import PipelineOptions, compile_module
    from matq_compile.slicing import check_bits
    from matq_compile.tune import database_hash
    from tvm.relax.frontend.onnx import from_onnx

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    _check_out_dir(out_dir, onnx_path.parent)
    b = check_bits(bits)
    if opts.act != "float":
        raise ValueError("--act int8 applies to checkpoint builds; an ONNX build keeps float activations")
    try:
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, ValidationError, ...
        raise ValueError(f"{onnx_path} is not a valid ONNX model: {e}") from None
    spec = targets.load(opts.target)
    db = _db_dir(spec, opts)
    mod = from_onnx(model, keep_params_in_input=False)
    ex = compile_module(mod, [quantize_const_matmul(b, spec.is_gpu)], spec, db,
                        PipelineOptions(opts.head_dtype, opts.allow_untuned, opts.dump_dir)).executable
    init = {i.name for i in model.graph.initializer}
    inputs = [{"name": i.name, "shape": [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim],
               "dtype": onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name}
              for i in model.graph.input if i.name not in init]
    with atomic_dir(out_dir) as tmp:
        ex.export_library(str(tmp / LIB_NAME))
        write_json(tmp / MANIFEST_NAME, {
            "format_version": FORMAT_VERSION, "kind": "onnx",
            "source": {"path": str(onnx_path.resolve()), "sha256": sha256_file(onnx_path)},
            "bits": b, "quantizer": "rtn8-sym (in-process)", "target": _target_record(spec),
            "tvm_version": TVM_VERSION, "tvm_ffi_version": tvm_ffi.__version__,
            "database": None if db is None else {"path": str(db), "hash": database_hash(db)},
            "allow_untuned": opts.allow_untuned, "modules": module_kinds(ex.mod), "inputs": inputs,
            "files": {LIB_NAME: sha256_file(tmp / LIB_NAME)}})
        write_digests(tmp)
    return out_dir
