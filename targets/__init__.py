"""Targets as data: one TOML file per target in this folder; load(name) -> TargetSpec.

    load("host")            this machine's CPU, named llvm-<mcpu>-<cores>c (e.g. llvm-znver3-2c)
    load("cuda-sm90")       a data file by name
    load("llvm-znver3-2c")  the detected host's own name also resolves (database directories use it)
"""
from __future__ import annotations

import tomllib
from importlib import resources

from matq_compile.targets.spec import TargetSpec, from_toml, host_spec

__all__ = ["TargetSpec", "available", "load", "host_spec"]


def available() -> list[str]:
    """Names of the target data files."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load(name: str) -> TargetSpec:
    known = available()
    if name in known:
        data = tomllib.loads(resources.files(__name__).joinpath(f"{name}.toml").read_text())
        return from_toml(name, data)
    if name.startswith("llvm-"):
        host = host_spec()
        if name == host.name:
            return host
    raise ValueError(f"unknown target {name!r}; known targets: {', '.join(known)} "
                     f"(and this machine's own name, see load('host').name)")
