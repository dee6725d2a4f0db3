"""Packaging: everything lives under the matq_compile namespace; no generic top-level names leak."""
from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _packages() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


@pytest.mark.parametrize("name", _packages())
def test_every_declared_package_imports(name):
    assert importlib.import_module(name).__name__ == name


@pytest.mark.parametrize("generic", ["search", "schedules", "targets"])
def test_no_generic_top_level_package_installed(generic, tmp_path):
    # Run from an empty directory so the repository root is not on sys.path.
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({generic!r}) is None else 1)"
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0


def test_every_python_folder_is_declared():
    """A folder with an __init__.py that is missing from pyproject's list would silently not be installed."""
    mapping = {"schedules": "matq_compile.schedules", "search": "matq_compile.search", "targets": "matq_compile.targets"}
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", "build") or any(p.startswith(".") for p in rel.parts):
            continue
        head = mapping.get(rel.parts[0], rel.parts[0])
        found.add(".".join([head, *rel.parts[1:]]))
    assert found <= set(_packages()), f"undeclared packages: {sorted(found - set(_packages()))}"


def test_cli_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "matq_compile.cli", "--help"], capture_output=True, text=True, check=True)
    from matq_compile.cli import SUBCOMMANDS

    for name in SUBCOMMANDS:
        assert name.replace("_", "-") in out.stdout
        sub = subprocess.run([sys.executable, "-m", "matq_compile.cli", name.replace("_", "-"), "--help"],
                             capture_output=True, text=True)
        assert sub.returncode == 0, sub.stderr
