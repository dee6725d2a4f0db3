"""Atomic file and directory writes: outputs appear complete or not at all.

Temporaries are hidden siblings tagged with the writer's PID (matq_compile._tmpfiles); each write first sweeps those
of its own output left by dead processes, and the finished output gets the umask's permissions."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from matq_compile._tmpfiles import honour_umask, make_temp
from matq_compile.interrupts import hold_for_test


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the body succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = make_temp(path, is_dir=False)
    try:
        yield tmp_path
        hold_for_test(tmp_path)
        honour_umask(tmp_path, is_dir=False)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces `path` only if the body succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp(path, is_dir=True)
    try:
        yield tmp
        hold_for_test(tmp)
        honour_umask(tmp, is_dir=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write pretty, key-sorted JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class FormatError(ValueError):
    """A file the user handed in is missing pieces, malformed, or of another kind or version."""


def read_json(path: str | os.PathLike, kind: str, version: int | None = None,
              key: str = "format_version") -> dict[str, Any]:
    """The JSON object in `path`, as the one reader every versioned file of the project goes through.

    kind names the file in every error ("latency table", "build manifest", ...). With `version`, the object's
    `key` must equal it. FileNotFoundError when the file is absent; FormatError (a ValueError) for anything else
    wrong: unreadable, not UTF-8, not JSON, not an object, another version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} not found: {path}")
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path} is not a JSON {kind}: not valid JSON (truncated or corrupt?): {e}") from None
    except OSError as e:
        raise FormatError(f"cannot read {kind} {path}: {e.strerror}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path} is not a JSON {kind}: expected a JSON object, got {type(obj).__name__}")
    if version is not None and obj.get(key) != version:
        raise FormatError(f"{path}: unknown {key} {obj.get(key)!r} of this {kind}; this build reads version {version}")
    return obj
