"""TargetSpec: a target described by a small TOML data file; to_tvm() builds the TVM Target from dicts."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from matq_compile import amx

Kind = Literal["llvm", "cuda"]


@dataclass(frozen=True)
class TargetSpec:
    """name: the database/table key (schedules/db/<name>/); target/host: TVM target dicts (never strings)."""

    name: str
    kind: Kind
    target: dict[str, Any]
    host: dict[str, Any] | None = None
    description: str = ""
    trials: int = 64  # default tuning budget per task
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("llvm", "cuda"):
            raise ValueError(f"target {self.name}: kind must be 'llvm' or 'cuda', got {self.kind!r}")
        if self.kind == "cuda" and "arch" not in self.target:
            raise ValueError(f"target {self.name}: a cuda target needs 'arch' (without it TVM picks sm_50)")
        if self.kind == "llvm" and "num-cores" not in self.target:
            raise ValueError(f"target {self.name}: an llvm target needs 'num-cores' (MetaSchedule requires it)")

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def arch(self) -> str | None:
        return self.target.get("arch")

    def target_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.target}

    def to_tvm(self):
        """tvm.target.Target built from dicts (0.27 rejects CLI target strings)."""
        from matq_compile._tvm import Target

        if self.host is not None:
            return Target(self.target_dict(), host=dict(self.host))
        return Target(self.target_dict())


def host_spec(description: str = "host CPU (detected)", trials: int = 64) -> TargetSpec:
    """This machine: mcpu from LLVM's host detection (not "native": LLVM 22 rejects it), usable core count."""
    from matq_compile._tvm import llvm_get_system_cpu

    mcpu = str(llvm_get_system_cpu())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    target: dict[str, Any] = {"mcpu": mcpu, "num-cores": cores}
    if _amx_missing(mcpu):
        target["mattr"] = list(amx.MATTR)
    return TargetSpec(f"llvm-{mcpu}-{cores}c", "llvm", target, description=description, trials=trials)


def _amx_missing(mcpu: str) -> bool:
    """Whether this CPU has AMX-INT8 that LLVM's name for it lacks (a hypervisor's CPUID model can name an older
    core, e.g. rocketlake for a Xeon with AMX)."""
    if not amx.host_has_amx():
        return False
    from matq_compile._tvm import Target
    from tvm.target import codegen

    target = Target({"kind": "llvm", "mcpu": mcpu})
    with target:
        return not all(bool(codegen.target_has_features(f, target)) for f in amx.FEATURES)


def from_toml(name: str, data: dict[str, Any]) -> TargetSpec:
    """TargetSpec from a parsed TOML file (see targets/*.toml)."""
    unknown = set(data) - {"kind", "description", "detect", "target", "host", "tune"}
    if unknown:
        raise ValueError(f"target file {name}.toml: unknown keys {sorted(unknown)}")
    trials = int(data.get("tune", {}).get("trials", 64))
    if data.get("detect"):
        return host_spec(data.get("description", ""), trials)
    return TargetSpec(name, data["kind"], dict(data.get("target", {})), data.get("host"),
                      data.get("description", ""), trials)
