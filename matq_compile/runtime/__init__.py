"""Load an exported matq build and generate with the TVM runtime only (numpy, safetensors, tvm; never torch).

    m = load("build/")                      # verifies the whole build (SHA256SUMS), loads the library and weights
    logits = m.prefill(ids)                 # [V] logits of the last prompt token (chunks of manifest["chunk"])
    logits = m.decode(token)                # [V] next-token logits
    out = m.generate(ids, 32, on_token=cb)  # greedy; Generation(tokens, prefill_tok_s, decode_tok_s, ...)
    m.score(ids)                            # [n, V] logits of every position (perplexity)
    m.set_bits(3); m.set_plan("plan.json")  # switchable builds: the precision of the next calls (the cache stays)
"""
from __future__ import annotations

import importlib.abc
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matq_compile._threads import configure_tvm_threads
from matq_compile.io_utils import FormatError, read_json
from matq_compile.lower.kv_cache import DTYPES, cache_shapes
from matq_compile.runtime.verify import as_mismatch, check_binding, check_device, verify_build

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: SHA256SUMS over the whole build; 3: kv_cache shapes (K^T tiled per 16 positions)
LIB_NAME, WEIGHTS_NAME, MANIFEST_NAME = "model.so", "weights.safetensors", "manifest.json"


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # generated ids (without the prompt)
    prompt_tokens: int
    prefill_s: float
    decode_s: float

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tok_s(self) -> float:
        steps = len(self.tokens) - 1  # the first new token comes from the prefill logits
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else float("nan")


class _NoTorch(importlib.abc.MetaPathFinder):
    """Refuses `import torch`: tvm_ffi tries `import torch` at import time and tolerates an ImportError."""

    def find_spec(self, name: str, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"{name} is blocked: the matq runtime runs without torch", name=name)
        return None


def block_torch() -> bool:
    """Make this process run without torch (call before tvm is imported). False if torch is already loaded."""
    if "torch" in sys.modules:
        return False
    if not any(isinstance(f, _NoTorch) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoTorch())
    return True


def read_manifest(build_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """manifest.json of a build; with verify, the whole build is checked against SHA256SUMS first (runtime.verify)."""
    build_dir = Path(build_dir)
    if not (build_dir / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"{build_dir} is not a matq build: {MANIFEST_NAME} is missing")
    if verify:
        verify_build(build_dir)
    manifest = read_json(build_dir / MANIFEST_NAME, "build manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"{build_dir} is a build of format {manifest.get('format_version')!r}; this runtime reads "
                          f"format {FORMAT_VERSION} (recompile it with `matq compile`)")
    for name in manifest["files"]:
        if not (build_dir / name).is_file():
            raise FileNotFoundError(f"{build_dir}: {name} is missing")
    return manifest


def _weights(build_dir: Path, params: Sequence[dict[str, Any]], load_file: Callable) -> list[np.ndarray]:
    """The weights in manifest order, each with the manifest's shape and dtype."""
    try:
        arrays = load_file(str(build_dir / WEIGHTS_NAME))
    except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError (an Exception) and OSError
        raise FormatError(f"cannot read {build_dir / WEIGHTS_NAME}: {e}") from None
    out = []
    for p in params:
        a = arrays.get(p["name"])
        if a is None or list(a.shape) != list(p["shape"]) or str(a.dtype) != p["dtype"]:
            raise FormatError(f"{build_dir / WEIGHTS_NAME}: parameter {p['name']!r} is missing or not "
                              f"{p['dtype']}{p['shape']}; recompile")
        out.append(a)
    return out


def _check_cache(manifest: dict[str, Any], build_dir: Path) -> None:
    """The recorded KV-cache shapes fit the model's max_seq_len: the library checks the shapes it is given, and the
    runtime bounds generation by max_seq_len, so an edited length alone would let it write past the cache."""
    m, cache = manifest["model"], manifest["kv_cache"]
    if cache.get("dtype") not in DTYPES:
        raise FormatError(f"{build_dir}: manifest.json's kv_cache dtype {cache.get('dtype')!r} is not one of "
                          f"{', '.join(DTYPES)}; recompile")
    fit = cache_shapes(m["num_layers"], m["num_kv_heads"], m["head_dim"], m["max_seq_len"])
    if [list(fit[0]), list(fit[1])] != [list(cache["kt"]), list(cache["v"])]:
        raise FormatError(f"{build_dir}: manifest.json's kv_cache shapes {cache['kt']} and {cache['v']} do not fit "
                          f"its model (max_seq_len {m['max_seq_len']}); recompile")


class Model:
    """One loaded build on one device; holds the KV cache and the number of cached tokens."""

    def __init__(self, build_dir: str | Path, device: str = "cpu", verify: bool = True) -> None:
        configure_tvm_threads()
        import tvm
        from safetensors.numpy import load_file
        from tvm import relax

        self.dir = Path(build_dir)
        self.manifest = read_manifest(self.dir, verify)
        if self.manifest.get("kind", "llm") != "llm":
            raise ValueError(f"{self.dir} is a {self.manifest['kind']} build; run it with runtime.run_graph")
        check_device(self.manifest, device, self.dir)
        _check_cache(self.manifest, self.dir)
        self.dev = tvm.device(device, 0)
        try:
            lib = tvm.runtime.load_module(str(self.dir / LIB_NAME))
        except Exception as e:  # noqa: BLE001 - TVM raises several error types for a bad shared object
            raise ValueError(f"cannot load {self.dir / LIB_NAME}: {e}") from None
        self.vm = relax.VirtualMachine(lib, self.dev)
        check_binding(self.vm.module, self.manifest["params"], self.dir)
        self.params = [tvm.runtime.tensor(a, self.dev) for a in _weights(self.dir, self.manifest["params"], load_file)]
        self.chunk = int(self.manifest["chunk"])
        self.max_seq_len = int(self.manifest["model"]["max_seq_len"])
        self.vocab = int(self.manifest["model"]["vocab_size"])
        self._shape = tvm.runtime.ShapeTuple
        self._tensor = tvm.runtime.tensor
        cache = self.manifest["kv_cache"]
        self.kt = tvm.runtime.empty(tuple(cache["kt"]), cache["dtype"], self.dev)
        self.vc = tvm.runtime.empty(tuple(cache["v"]), cache["dtype"], self.dev)
        self.pos = 0
        self.switch: dict[str, Any] | None = self.manifest.get("switch")
        self._bits: tuple = ()  # the switch input of every call: one width per kernel unit (switchable builds)
        self.unit_bits: list[int] = []
        if self.switch is not None:
            self.set_bits(int(self.switch["default_bits"]))

    @property
    def widths(self) -> list[int]:
        """The widths this build serves: every width of a switchable build, else its one compiled width."""
        if self.switch is not None:
            return list(self.switch["widths"])
        return sorted(set(self.manifest["bits"].values()))

    def set_bits(self, bits: int) -> None:
        """Run every layer at `bits` from the next call on (a switchable build; the KV cache is kept)."""
        self._need_switch()
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in self.widths:
            raise ValueError(f"{self.dir} serves r in {self.widths}, not {bits!r}")
        self._set_units([int(bits)] * len(self.switch["units"]))

    def set_plan(self, plan) -> None:
        """Run each layer at its width in `plan` (a plan file from `matq search`, or a loaded Plan) from the next
        call on; refused unless made for this build's checkpoint, with widths the build serves."""
        from matq_compile.kernel_units import unit_bits
        from matq_compile.search.allocation import Plan, load_plan

        self._need_switch()
        layers = [m for unit in self.switch["units"] for m in unit]
        ckpt_hash = self.manifest["checkpoint"]["hash"]
        if isinstance(plan, Plan):
            plan.check(layers, ckpt_hash)
        else:
            plan = load_plan(plan, layers, ckpt_hash)
        self._set_units(unit_bits(self.switch["units"], plan.layers, self.widths))

    def _set_units(self, bits: list[int]) -> None:
        self.unit_bits = bits
        self._bits = (self._shape(bits),)

    def _need_switch(self) -> None:
        if self.switch is None:
            raise ValueError(f"{self.dir} was compiled for one precision; compile it with --switchable to choose "
                             f"the precision at run time")

    def reset(self) -> None:
        """Forget the cached tokens (stale cache entries are never read: attention is masked by length)."""
        self.pos = 0

    def _ids(self, ids: Sequence[int]) -> np.ndarray:
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= self.vocab):
            raise ValueError(f"token ids must be in [0, {self.vocab}), got range [{a.min()}, {a.max()}]")
        return a.astype(np.int32)

    def _room(self, n: int) -> None:
        if self.pos + n > self.max_seq_len:
            raise ValueError(f"{self.pos} cached + {n} new tokens exceed max_seq_len {self.max_seq_len}")

    def _call(self, func: str, *args: Any) -> Any:
        try:
            return self.vm[func](*args)
        except RuntimeError as e:  # TVM reports its argument checks as RuntimeError
            mismatch = as_mismatch(e, self.dir)
            if mismatch is None:
                raise
            raise mismatch from None

    def check_room(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Refuse, before any work, a generation the KV cache cannot hold (prefill pads to whole chunks; the last
        new token comes from the logits and is never cached)."""
        prefill = -(-prompt_tokens // self.chunk) * self.chunk
        total = max(prefill, prompt_tokens + max_new_tokens - 1)
        if total > self.max_seq_len:
            raise ValueError(f"{prompt_tokens} prompt tokens + {max_new_tokens} new tokens need {total} cache "
                             f"positions; the build holds max_seq_len {self.max_seq_len} (lower --max-new-tokens "
                             f"or compile with a larger --max-seq-len)")

    def _chunks(self, ids: np.ndarray):
        """(padded chunk [1, chunk], real length) pieces; the KV cache room includes the padding."""
        self._room(-(-len(ids) // self.chunk) * self.chunk)
        for s in range(0, len(ids), self.chunk):
            piece = ids[s:s + self.chunk]
            yield np.pad(piece, (0, self.chunk - len(piece)))[None, :], len(piece)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Append a prompt to the cache; [V] float32 logits of its last token."""
        ids = self._ids(ids)
        if ids.size == 0:
            raise ValueError("prefill needs at least one token")
        chunks = list(self._chunks(ids))
        for chunk, n in chunks[:-1]:  # no logits: the head runs for the last chunk only
            self._call("extend", self._tensor(chunk, self.dev), self._shape([self.pos]), self.kt, self.vc,
                       *self._bits, *self.params)
            self.pos += n
        chunk, n = chunks[-1]
        out = self._call("prefill", self._tensor(chunk, self.dev), self._shape([self.pos]), self._shape([n - 1]),
                         self.kt, self.vc, *self._bits, *self.params)
        self.pos += n
        return out[0].numpy()[0]

    def decode(self, token: int) -> np.ndarray:
        """Append one token; [V] logits of the next one."""
        ids = self._ids([token])
        self._room(1)
        out = self._call("decode", self._tensor(ids[None, :], self.dev), self._shape([self.pos]), self.kt, self.vc,
                         *self._bits, *self.params)
        self.pos += 1
        return out[0].numpy()[0]

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Append tokens; [n, V] logits of every position."""
        ids = self._ids(ids)
        rows = []
        for chunk, n in self._chunks(ids):
            out = self._call("score", self._tensor(chunk, self.dev), self._shape([self.pos]), self.kt, self.vc,
                             *self._bits, *self.params)
            rows.append(out[0].numpy()[:n])
            self.pos += n
        return np.concatenate(rows)

    def generate(self, ids: Sequence[int], max_new_tokens: int,
                 on_token: Callable[[int], None] | None = None, stop_at_eos: bool = True) -> Generation:
        """Greedy generation from a fresh cache; on_token is called with each new id as soon as it exists."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.check_room(len(ids), max_new_tokens)
        eos = set(self.manifest.get("eos_token_ids", [])) if stop_at_eos else set()
        self.reset()
        t0 = time.perf_counter()
        tok = int(np.argmax(self.prefill(ids)))
        t1 = time.perf_counter()
        tokens = [tok]
        if on_token:
            on_token(tok)
        while len(tokens) < max_new_tokens and tok not in eos:
            tok = int(np.argmax(self.decode(tok)))
            tokens.append(tok)
            if on_token:
                on_token(tok)
        return Generation(tokens, len(ids), t1 - t0, time.perf_counter() - t1)


def run_graph(build_dir: str | Path, *inputs: np.ndarray, device: str = "cpu") -> list[np.ndarray]:
    """Run an imported-graph build (`matq compile --onnx`): inputs in the manifest's order -> outputs."""
    configure_tvm_threads()
    import tvm
    from tvm import relax

    manifest = read_manifest(build_dir)
    if manifest.get("kind") != "onnx":
        raise ValueError(f"{build_dir} is not an imported-graph build (kind {manifest.get('kind')!r})")
    check_device(manifest, device, Path(build_dir))
    if len(inputs) != len(manifest["inputs"]):
        raise ValueError(f"{build_dir} takes {len(manifest['inputs'])} inputs, got {len(inputs)}")
    dev = tvm.device(device, 0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(Path(build_dir) / LIB_NAME)), dev)
    out = vm["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs))
    return [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [o.numpy() for o in out]


def perplexity(model: Model, windows: np.ndarray) -> float:
    """exp(mean NLL) of next-token prediction over independent windows [n, T] (float64 log-softmax)."""
    nll, count = 0.0, 0
    for w in np.asarray(windows):
        model.reset()
        logits = model.score(w).astype(np.float64)[:-1]
        m = logits.max(axis=-1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
        nll += float((logz - logits[np.arange(len(w) - 1), w[1:]]).sum())
        count += len(w) - 1
    return float(np.exp(nll / count))


def load(build_dir: str | Path, device: str = "cpu", verify: bool = True) -> Model:
    return Model(build_dir, device, verify)


def load_tokenizer(build_dir: str | Path):
    """The build's tokenizer (the `tokenizers` package: no torch, no transformers)."""
    from tokenizers import Tokenizer

    path = Path(build_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{build_dir} has no tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for any parse error
        raise FormatError(f"{path} is not a valid tokenizer ({e})") from None
