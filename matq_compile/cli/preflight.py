"""Checks that cost milliseconds, run at the top of a command before minutes of loading, quantizing or compiling:
output locations writable and of the right kind, input files present, numeric arguments in range."""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path


def _existing_ancestor(path: Path) -> Path:
    anc = path.absolute().parent
    while not anc.exists():
        anc = anc.parent
    return anc


def _can_write_in(path: Path, flag: str) -> None:
    """A probe file in the nearest existing ancestor: the only test that also holds for root, read-only mounts, ACLs."""
    anc = _existing_ancestor(path)
    if not anc.is_dir():
        raise ValueError(f"{flag} {path}: {anc} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=anc):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write in {anc} ({e.strerror})") from None


def out_dir(path: Path | str | None, flag: str = "--out") -> None:
    """A directory the command will create or replace."""
    _output(path, flag, directory=True)


def out_file(path: Path | str | None, flag: str) -> None:
    """A file the command will create or replace."""
    _output(path, flag, directory=False)


def _output(path: Path | str | None, flag: str, directory: bool) -> None:
    if path is None:
        return
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise ValueError(f"{flag} {path} is a file; give a directory" if directory
                         else f"{flag} {path} is a directory; give a file path")
    _can_write_in(path, flag)


def in_file(path: Path | str | None, flag: str) -> None:
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")


def at_least(value: int | None, minimum: int, flag: str) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {value}")


def int_list(text: str, flag: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise ValueError(f"{flag} must list integers >= {minimum}, got {text!r}")
    return values


def model_in_features(model: str) -> Iterable[int]:
    """in_features of a local Hugging Face Llama-family model's linears, from its config.json (nothing for a name)."""
    cfg_path = Path(model) / "config.json"
    if not cfg_path.is_file():
        return ()
    try:
        cfg = json.loads(cfg_path.read_text())
        hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
        heads = int(cfg["num_attention_heads"]) * int(cfg.get("head_dim") or hidden // int(cfg["num_attention_heads"]))
    except (ValueError, KeyError, TypeError):
        return ()  # the loader reports a broken config with its own error
    return hidden, inter, heads


def group_size(model: str, group: int) -> None:
    """The group size divides every in_features of the model (checked before the model is loaded)."""
    if group != -1 and group < 1:
        raise ValueError(f"--group-size must be a positive integer or -1 (per channel), got {group}")
    bad = sorted({k for k in model_in_features(model) if group != -1 and k % group})
    if bad:
        raise ValueError(f"--group-size {group} does not divide in_features {bad[0]} of {model}; "
                         f"choose a divisor of {', '.join(map(str, sorted(set(model_in_features(model)))))} or -1")
