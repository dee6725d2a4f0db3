"""AMX tile registers on x86 Linux: whether this CPU has them, and the process's permission to use them.

Linux hands a process the 8 KB tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
a tile instruction before that request raises SIGILL. Every process that runs a module built with AMX kernels
(target mattr "+amx-int8", int8_amx.py) calls request() first; the request is idempotent and per process.
"""
from __future__ import annotations

import ctypes
import platform
from pathlib import Path
from typing import Any, Mapping

FEATURES = ("amx-tile", "amx-int8")  # LLVM's names; /proc/cpuinfo spells them amx_tile, amx_int8
MATTR = tuple(f"+{f}" for f in FEATURES)
_SYS_ARCH_PRCTL = 158  # x86_64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def host_has_amx(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU reports AMX-TILE and AMX-INT8 (the kernel's flags line, so a hypervisor that hides them
    hides them here too)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {f.replace("-", "_") for f in FEATURES} <= set(flags)


def target_uses_amx(target: Mapping[str, Any]) -> bool:
    """Whether a TVM target dict asks for AMX-INT8 (its mattr)."""
    return "+amx-int8" in (target.get("mattr") or [])


def request() -> None:
    """Ask Linux for the tile state of this process; RuntimeError (one line) where it is refused."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError("AMX kernels run on x86_64 Linux only")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        raise RuntimeError(f"this process may not use AMX tile registers (arch_prctl: errno {ctypes.get_errno()}); "
                           "rebuild for a target without AMX")
