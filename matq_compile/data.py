"""Text data: the shared data directory, tokenization, evaluation windows and seeded calibration windows.

Evaluation windows are non-overlapping, start at token 0, and the trailing partial window is dropped (spec
section 8). Calibration windows are drawn at uniform random offsets with `numpy.random.default_rng(seed)`.
Calibration sources (`CalibSpec.source`):

    PATH                    a UTF-8 text file (e.g. <data>/wikitext-2/valid.txt)
    hf:NAME[:CONFIG[:SPLIT]]  a Hugging Face `datasets` dataset, "text" column (needs network or a local cache)
    self                    sequences sampled from the model itself (seeded), so no data is needed at all
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WIKITEXT_TEST = "wikitext-2-raw/wiki.test.raw"
WIKITEXT_VALID = "wikitext-2/valid.txt"
# (relative path, sha256) of the shared files, see <data>/README.md
SHARED_FILES: dict[str, str] = {
    WIKITEXT_TEST: "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c",
    WIKITEXT_VALID: "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
}


@dataclass(frozen=True)
class CalibSpec:
    """Which calibration sequences to use."""

    source: str = "self"      # PATH | hf:NAME[:CONFIG[:SPLIT]] | self
    n_samples: int = 16       # number of sequences
    seq_len: int = 512        # tokens per sequence
    seed: int = 0             # offsets (file/hf) or sampling (self)

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("calibration source must not be empty")
        for name in ("n_samples", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"calibration {name} must be a positive integer, got {value!r}")
        if self.seq_len < 2:
            raise ValueError(f"calibration seq_len must be >= 2, got {self.seq_len}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"calibration seed must be an integer, got {self.seed!r}")

    @property
    def n_tokens(self) -> int:
        return self.n_samples * self.seq_len

    def to_dict(self) -> dict:
        return {"source": self.source, "n_samples": self.n_samples, "seq_len": self.seq_len, "seed": self.seed}


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Explicit argument, else $MATQ_DATA_DIR, else <repo root>/../shared/data."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("MATQ_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_file(relative: str, override: str | os.PathLike | None = None) -> Path:
    """A file under the data directory; FileNotFoundError saying how to point at the data otherwise."""
    path = data_dir(override) / relative
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found (set MATQ_DATA_DIR or pass the path explicitly)")
    return path


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file; an empty or whitespace-only file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} not found")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"text file {path} is empty")
    return text


def tokenize(tokenizer, text: str):
    """The whole text as one 1-D int64 tensor, tokenized once, with no special tokens."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(tokens, seq_len: int, n_windows: int | None = None):
    """[n, seq_len] non-overlapping windows from token 0; the partial tail is dropped; n=None takes all."""
    if seq_len < 2:
        raise ValueError(f"window length must be >= 2, got {seq_len}")
    available = int(tokens.numel()) // seq_len
    if n_windows is None:
        n_windows = available
    if n_windows < 1 or n_windows > available:
        raise ValueError(f"asked for {n_windows} windows of {seq_len} tokens; the text has {available}")
    return tokens[: n_windows * seq_len].reshape(n_windows, seq_len).clone()


def calibration_windows(tokens, n_samples: int, seq_len: int, seed: int):
    """[n, seq_len] windows at uniform random offsets drawn with numpy default_rng(seed)."""
    import torch

    n_tokens = int(tokens.numel())
    if n_tokens < seq_len:
        raise ValueError(f"calibration text has {n_tokens} tokens, fewer than one sequence of {seq_len}")
    offsets = np.random.default_rng(seed).integers(0, n_tokens - seq_len + 1, size=n_samples)
    return torch.stack([tokens[o: o + seq_len] for o in offsets.tolist()])


def load_calibration(spec: CalibSpec, *, tokenizer=None, model=None):
    """[n_samples, seq_len] int64 calibration tokens for the spec's source."""
    if spec.source == "self":
        if model is None:
            raise ValueError("calibration source 'self' needs the model")
        return sample_from_model(model, spec.n_samples, spec.seq_len, spec.seed)
    if tokenizer is None:
        raise ValueError(f"calibration source {spec.source!r} needs a tokenizer (the model directory has none)")
    text = _hf_text(spec.source) if spec.source.startswith("hf:") else read_text(spec.source)
    tokens = tokenize(tokenizer, text)
    return calibration_windows(tokens, spec.n_samples, spec.seq_len, spec.seed)


def _hf_text(source: str) -> str:
    """Concatenated "text" column of hf:NAME[:CONFIG[:SPLIT]] (split defaults to train)."""
    parts = source[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"calibration source {source!r} must look like hf:NAME[:CONFIG[:SPLIT]]")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), \
        (parts[2] if len(parts) > 2 else "train")
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, unknown name or missing cache: all mean "cannot use this source"
        raise ValueError(f"could not load Hugging Face dataset {name!r} (config {config}, split {split}): {e}. "
                         "Without network access use a text file or 'self'.") from e
    if "text" not in ds.column_names:
        raise ValueError(f"dataset {name!r} has no 'text' column (columns: {ds.column_names})")
    text = "\n\n".join(t for t in ds["text"] if t)
    if not text.strip():
        raise ValueError(f"dataset {name!r} split {split} has no text")
    return text


def sample_from_model(model, n_samples: int, seq_len: int, seed: int, batch_size: int = 16):
    """[n, seq_len] sequences sampled (temperature 1, full vocabulary) from the model, starting at BOS.

    Sequence i draws from its own torch.Generator seeded from (seed, i), so the global RNG is untouched and the
    tokens depend only on the seed, never on the batch size.
    """
    import torch

    bos = getattr(model.config, "bos_token_id", None)
    bos = 0 if bos is None else int(bos)
    gens = [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
            for i in range(n_samples)]
    rows = []
    with torch.no_grad():
        for start in range(0, n_samples, batch_size):
            rows.append(_sample_batch(model, bos, gens[start:start + batch_size], seq_len))
    return torch.cat(rows)


def _sample_batch(model, bos: int, gens: list, seq_len: int):
    """Autoregressive sampling with the model's KV cache (one new token per step, one generator per row)."""
    import inspect

    import torch

    # transformers 5.x names the cache argument/output `cache`; 4.x names both `past_key_values`.
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = torch.full((len(gens), 1), bos, dtype=torch.long)
    tokens = [ids]
    out = model(input_ids=ids, use_cache=True)
    while len(tokens) < seq_len:
        probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
        tokens.append(torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, gens)]))
        if len(tokens) < seq_len:
            out = model(input_ids=tokens[-1], use_cache=True, **{key: getattr(out, key)})
    return torch.cat(tokens, dim=1)
