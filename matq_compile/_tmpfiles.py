"""Hidden temporaries beside an output (`.NAME.PID.XXXXXXXX.tmp`): created with the umask's permissions, and swept
when the process that made them is gone (a SIGKILL or a power cut leaves them behind; no handler can run then)."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".tmp"


def current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask


def honour_umask(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp (and safetensors) create 0600/0700 whatever the umask; a deployed output must be readable like
    any other file. The temporary itself gets the umask's mode; files inside gain the read bits the umask allows."""
    mask = current_umask()
    path.chmod((0o777 if is_dir else 0o666) & ~mask)
    if is_dir:
        for p in path.rglob("*"):
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | ((0o555 if p.is_dir() else 0o444) & ~mask))


def _pattern(name: str) -> re.Pattern[str]:
    # PID-tagged names, and the untagged names of earlier versions (tempfile's 8-character random part)
    return re.compile(rf"^\.{re.escape(name)}\.(?:(\d+)\.)?[A-Za-z0-9_]{{8}}{re.escape(SUFFIX)}$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(path: Path) -> list[Path]:
    """Remove temporaries of `path` left by processes that no longer run; returns what was removed."""
    parent = path.parent
    if not parent.is_dir():
        return []
    pattern, removed = _pattern(path.name), []
    for entry in parent.iterdir():
        m = pattern.match(entry.name)
        if m is None or (m.group(1) is not None and _alive(int(m.group(1)))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        log.info("removed %s, a temporary left by an interrupted run", entry)
        removed.append(entry)
    return removed


def make_temp(path: Path, is_dir: bool) -> Path:
    """A new hidden temporary beside `path`, tagged with this process id (after sweeping stale ones)."""
    sweep_stale(path)
    prefix, parent = f".{path.name}.{os.getpid()}.", str(path.parent)
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=SUFFIX, dir=parent))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=SUFFIX, dir=parent)
    os.close(fd)
    return Path(tmp)
