"""The sliceable checkpoint: safetensors shards + matq_config.json + sensitivity.json, written atomically.

Layout of a checkpoint directory:
    model-00001-of-0000N.safetensors   `<layer>.qweight|.scales|.zeros|.perm|.scales_r<b>` and unquantized tensors
                                        by name (`scales_r<b>`: refitted scales of slice b, format version 2)
    model.safetensors.index.json        Hugging Face style weight_map
    matq_config.json                    format version, quant spec, slice rule, grid, per-layer/tensor records,
                                        per-shard sha256, sensitivity and extra-file sha256, source
    sensitivity.json                    layer -> {numel, shape, group, loss, nmse, rel_mse}
    <extra files>                       copied verbatim (e.g. config.json, tokenizer files)
Loading re-checks every hash, name, dtype and shape and refuses anything inconsistent.
Format versions: 1 (no per-slice scales) and 2 (optional `scales_r<b>` per layer) both load; version 1 is read
as a checkpoint without refitted scales. Writing always produces version 2.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from matq_compile.config import QuantSpec
from matq_compile.io_utils import atomic_dir, read_json, sha256_file
from matq_compile.quant.result import QuantResult, validate_parts

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_NAME = "matq_config.json"
INDEX_NAME = "model.safetensors.index.json"
SENSITIVITY_NAME = "sensitivity.json"
PARTS = ("qweight", "scales", "zeros", "perm")
DEFAULT_SHARD_BYTES = 1 << 30


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    spec: QuantSpec
    layers: dict[str, QuantResult]
    tensors: dict[str, torch.Tensor]
    sensitivity: dict[str, Any]
    source: dict[str, Any]
    config: dict[str, Any] = field(repr=False)
    hash: str = ""

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    @property
    def slice_rule(self) -> str:
        return self.spec.slice_rule

    def linear_slices(self, bits: Mapping[str, int] | int) -> dict:
        """{layer: kernel_units.LinearSlice} of every quantized linear at a uniform width or per-layer widths."""
        return linear_slices(self.config, bits)

    def dequant(self, layer: str, bits: int) -> torch.Tensor:
        """fp32 [out, in] weights of `layer` at the r-bit slice, original column order, the checkpoint's rule."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} is not in checkpoint {self.path} ({len(self.layers)} layers)")
        return self.layers[layer].dequant(bits, self.spec.slice_rule)


def _json_bytes(obj: Any) -> bytes:
    try:
        return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    except ValueError as e:
        raise ValueError(f"checkpoint metadata is not JSON-safe (NaN or inf?): {e}") from None


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable sha256 over the canonical config (which holds every shard, sensitivity and extra-file hash)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _collect(layers: Mapping[str, QuantResult], tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for name, res in layers.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"layer names must be non-empty strings, got {name!r}")
        if not isinstance(res, QuantResult):
            raise ValueError(f"layer {name!r}: expected a QuantResult, got {type(res).__name__}")
        validate_parts(res.qweight, res.scales, res.zeros, res.perm, name)
        for part in PARTS:
            t = getattr(res, part)
            if t is not None:
                flat[f"{name}.{part}"] = t
        for r, t in sorted(res.slice_scales.items(), reverse=True):
            flat[f"{name}.{slice_scales_part(r)}"] = t
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensor {name!r}: expected a torch.Tensor, got {type(t).__name__}")
        if name in flat:
            raise ValueError(f"tensor name {name!r} collides with a quantized layer's tensor")
        flat[name] = t
    return {k: v.detach().cpu().contiguous() for k, v in flat.items()}


def slice_scales_part(bits: int) -> str:
    return f"scales_r{bits}"


def _plan_shards(flat: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(flat):
        nbytes = flat[name].numel() * flat[name].element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _check_target(out_dir: Path) -> None:
    """Only an empty directory or an earlier checkpoint may be replaced."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / CONFIG_NAME).exists():
            raise FileExistsError(f"{out_dir} exists, is not empty and is not a matq checkpoint; refusing to replace")


def _check_extra(extra_files: Mapping[str, bytes | Path]) -> None:
    for name, content in extra_files.items():
        if not name or "/" in name or "\\" in name or name.startswith(".") or \
                name in (CONFIG_NAME, INDEX_NAME, SENSITIVITY_NAME) or name.endswith(".safetensors"):
            raise ValueError(f"extra file name {name!r} is not a plain, non-reserved file name")
        if not isinstance(content, (bytes, Path, str)):
            raise ValueError(f"extra file {name!r}: expected bytes or a path, got {type(content).__name__}")
        if not isinstance(content, bytes) and not Path(content).is_file():
            raise FileNotFoundError(f"extra file {name!r}: {content} does not exist")


def save_checkpoint(out_dir: str | Path, *, layers: Mapping[str, QuantResult], tensors: Mapping[str, torch.Tensor],
                    spec: QuantSpec, sensitivity: Mapping[str, Any], source: Mapping[str, Any],
                    extra_files: Mapping[str, bytes | Path] | None = None,
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write a checkpoint directory atomically and return its path. Same inputs -> identical bytes."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    extra_files = dict(extra_files or {})
    _check_target(out_dir)
    _check_extra(extra_files)
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    missing = sorted(set(layers) - set(sensitivity))
    if missing:
        raise ValueError(f"sensitivity table lacks quantized layers: {missing[:5]}")
    flat = _collect(layers, tensors)
    plan = _plan_shards(flat, max_shard_bytes)
    names = [f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors" for k in range(len(plan))]
    sens_bytes = _json_bytes(dict(sensitivity))
    with atomic_dir(out_dir) as tmp:
        shards = []
        for fname, keys in zip(names, plan):
            save_file({k: flat[k] for k in keys}, str(tmp / fname), metadata={"format": "pt"})
            shards.append({"file": fname, "sha256": sha256_file(tmp / fname), "bytes": (tmp / fname).stat().st_size,
                           "tensors": keys})
        files = {}
        for name, content in sorted(extra_files.items()):
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                shutil.copyfile(content, tmp / name)
            files[name] = sha256_file(tmp / name)
        (tmp / SENSITIVITY_NAME).write_bytes(sens_bytes)
        config = _config(spec, layers, flat, tensors, shards, files, hashlib.sha256(sens_bytes).hexdigest(), source)
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in flat.values()),
                              "matq_hash": config_hash(config)},
                 "weight_map": {k: s["file"] for s in shards for k in s["tensors"]}}
        (tmp / INDEX_NAME).write_bytes(_json_bytes(index))
        (tmp / CONFIG_NAME).write_bytes(_json_bytes(config))
    return out_dir


def _config(spec: QuantSpec, layers: Mapping[str, QuantResult], flat: dict[str, torch.Tensor],
            tensors: Mapping[str, torch.Tensor], shards: list[dict], files: dict[str, str], sens_sha: str,
            source: Mapping[str, Any]) -> dict[str, Any]:
    R = spec.train_set
    return {
        "format_version": FORMAT_VERSION,
        "quant": spec.to_dict(),
        "method": spec.method,
        "native_bits": spec.native_bits,
        "slice_rule": spec.slice_rule,
        "grid": {"parent_bits": 8, "sym": spec.sym, "group_size": spec.group_size,
                 "implicit_zero": 128 if spec.sym else None},
        "trained_bits": list(R),
        "lambdas": {str(r): (spec.lambda_of(r) if spec.method == "matgptq" else 1.0) for r in R},
        "mu": {str(r): spec.mu_of(r) for r in R},
        "act_order": spec.act_order,
        "layers": [{"name": n, "shape": list(r.shape), "group_size": r.group_size, "zeros": r.zeros is not None,
                    "perm": r.perm is not None, "slice_scales": sorted(r.slice_scales, reverse=True)}
                   for n, r in layers.items()],
        "tensors": [{"name": n, "shape": list(flat[n].shape), "dtype": str(flat[n].dtype).removeprefix("torch.")}
                    for n in tensors],
        "shards": shards,
        "sensitivity_sha256": sens_sha,
        "files": files,
        "source": json.loads(_json_bytes(dict(source))),
    }


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and validate a checkpoint; FileNotFoundError / ValueError naming the first problem found."""
    path = Path(path)
    config = _read_config(path)
    try:
        spec = QuantSpec.from_dict(config["quant"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path / CONFIG_NAME}: invalid quant spec: {e}") from None
    if spec.slice_rule != config["slice_rule"]:
        raise ValueError(f"{path / CONFIG_NAME}: slice_rule {config['slice_rule']!r} disagrees with the quant spec "
                         f"({spec.slice_rule!r})")
    try:
        flat = _read_shards(path, config)
        layers, tensors = _split_tensors(path, config, flat)
        sensitivity = _read_sidecars(path, config, layers)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path / CONFIG_NAME} is malformed: {type(e).__name__}: {e}") from None
    digest = config_hash(config)
    recorded = read_json(path / INDEX_NAME, "checkpoint index").get("metadata", {}).get("matq_hash")
    if recorded != digest:
        raise ValueError(f"checkpoint {path}: {CONFIG_NAME} was modified after writing (hash {digest[:12]} differs "
                         f"from the {str(recorded)[:12]} recorded in {INDEX_NAME})")
    return Checkpoint(path=path, spec=spec, layers=layers, tensors=tensors, sensitivity=sensitivity,
                      source=config["source"], config=config, hash=digest)



def linear_slices(config: Mapping[str, Any], bits: Mapping[str, int] | int) -> dict:
    """The quantized linears a checkpoint config records, as the kernels compile them: [N, K], group (-1 for per
    channel, whatever the spelling) and act-order; at `bits` (one width, or {layer: width})."""
    from matq_compile.kernel_units import LinearSlice

    out = {}
    for layer in config["layers"]:
        name, (n, k), g = str(layer["name"]), (int(v) for v in layer["shape"]), int(layer["group_size"])
        width = bits if isinstance(bits, int) else bits[name]
        out[name] = LinearSlice(n, k, width, -1 if g in (-1, 0, k) else g, bool(layer.get("perm")))
    return out


def read_linear_slices(path: str | Path, bits: int = 4) -> dict:
    """linear_slices of the checkpoint in `path` from its validated matq_config.json alone (no shard is read:
    what tuning needs, cheaply)."""
    path = Path(path)
    config = _read_config(path)
    try:
        return linear_slices(config, bits)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path / CONFIG_NAME} is malformed: {type(e).__name__}: {e}") from None


def read_slice_rule(path: str | Path) -> str:
    """The slice rule of the checkpoint in `path` (from matq_config.json alone)."""
    from matq_compile.slicing import check_rule

    return check_rule(_read_config(Path(path))["slice_rule"])


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path} is not a matq checkpoint: {CONFIG_NAME} is missing")
    config = read_json(cfg_path, "checkpoint config")
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{cfg_path}: unknown format_version {version!r}; this build reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    need = ("quant", "slice_rule", "layers", "tensors", "shards", "sensitivity_sha256", "files", "source")
    missing = [k for k in need if k not in config]
    if missing:
        raise ValueError(f"{cfg_path}: missing keys {missing}")
    rule = config["slice_rule"]
    if rule not in ("round", "midpoint"):
        raise ValueError(f"{cfg_path}: unknown slice_rule {rule!r}; known rules: round, midpoint")
    return config


def _check_file(path: Path, name: str, sha: str, size: int | None = None) -> None:
    f = path / name
    if not f.is_file():
        raise FileNotFoundError(f"checkpoint {path}: file {name} is missing")
    actual = f.stat().st_size
    if size is not None and actual != size:
        why = "truncated?" if actual < size else "too large: appended to or replaced?"
        raise ValueError(f"checkpoint {path}: {name} has {actual} bytes, expected {size} ({why})")
    if sha256_file(f) != sha:
        raise ValueError(f"checkpoint {path}: sha256 of {name} does not match matq_config.json (corrupt or modified)")


def _read_shards(path: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    flat: dict[str, torch.Tensor] = {}
    for shard in config["shards"]:
        _check_file(path, shard["file"], shard["sha256"], shard["bytes"])
        try:
            loaded = load_file(str(path / shard["file"]))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"checkpoint {path}: cannot read {shard['file']}: {e}") from None
        if sorted(loaded) != sorted(shard["tensors"]):
            raise ValueError(f"checkpoint {path}: {shard['file']} holds other tensors than recorded")
        flat.update(loaded)
    index = path / INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(f"checkpoint {path}: {INDEX_NAME} is missing")
    try:
        weight_map = read_json(index, "checkpoint index")["weight_map"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {path}: {INDEX_NAME} is corrupt: {e}") from None
    if weight_map != {k: s["file"] for s in config["shards"] for k in s["tensors"]}:
        raise ValueError(f"checkpoint {path}: {INDEX_NAME} disagrees with matq_config.json")
    return flat


def _split_tensors(path: Path, config: dict[str, Any], flat: dict[str, torch.Tensor]
                   ) -> tuple[dict[str, QuantResult], dict[str, torch.Tensor]]:
    layers: dict[str, QuantResult] = {}
    used: set[str] = set()
    for rec in config["layers"]:
        name = rec["name"]
        parts = {}
        for part in PARTS:
            key = f"{name}.{part}"
            expected = part in ("qweight", "scales") or bool(rec.get(part))
            if expected and key not in flat:
                raise ValueError(f"checkpoint {path}: layer {name!r} is missing tensor {key!r}")
            if not expected and key in flat:
                raise ValueError(f"checkpoint {path}: layer {name!r} has unexpected tensor {key!r}")
            parts[part] = flat.get(key)
            used.add(key)
        validate_parts(parts["qweight"], parts["scales"], parts["zeros"], parts["perm"], f"checkpoint {path}: {name}")
        sliced = {}
        for r in rec.get("slice_scales", []):  # absent in format version 1
            key = f"{name}.{slice_scales_part(int(r))}"
            if key not in flat:
                raise ValueError(f"checkpoint {path}: layer {name!r} is missing tensor {key!r}")
            validate_parts(parts["qweight"], flat[key], parts["zeros"], None, f"checkpoint {path}: {key}")
            sliced[int(r)] = flat[key]
            used.add(key)
        res = QuantResult(**parts, slice_scales=sliced)
        if list(res.shape) != rec["shape"] or res.group_size != rec["group_size"]:
            raise ValueError(f"checkpoint {path}: layer {name!r} has shape {list(res.shape)} group {res.group_size}, "
                             f"config says {rec['shape']} group {rec['group_size']}")
        layers[name] = res
    tensors: dict[str, torch.Tensor] = {}
    for rec in config["tensors"]:
        name = rec["name"]
        t = flat.get(name)
        if t is None:
            raise ValueError(f"checkpoint {path}: tensor {name!r} is missing")
        if list(t.shape) != rec["shape"] or str(t.dtype).removeprefix("torch.") != rec["dtype"]:
            raise ValueError(f"checkpoint {path}: tensor {name!r} is {t.dtype} {list(t.shape)}, "
                             f"config says {rec['dtype']} {rec['shape']}")
        tensors[name] = t
        used.add(name)
    extra = sorted(set(flat) - used)
    if extra:
        raise ValueError(f"checkpoint {path}: shards hold unrecorded tensors {extra[:5]}")
    return layers, tensors


def _read_sidecars(path: Path, config: dict[str, Any], layers: dict[str, QuantResult]) -> dict[str, Any]:
    for name, sha in config["files"].items():
        _check_file(path, name, sha)
    _check_file(path, SENSITIVITY_NAME, config["sensitivity_sha256"])
    sensitivity = json.loads((path / SENSITIVITY_NAME).read_text())
    missing = sorted(set(layers) - set(sensitivity))
    if missing:
        raise ValueError(f"checkpoint {path}: {SENSITIVITY_NAME} lacks layers {missing[:5]}")
    return sensitivity
