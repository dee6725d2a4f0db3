"""A build verified as a whole before anything in it is loaded.

`SHA256SUMS` (the `sha256sum` format, so `sha256sum -c SHA256SUMS` works too) lists every file of the build, the
manifest included, and is the only thing trusted: the manifest cannot vouch for itself. The files it must list are
fixed here (manifest.json, model.so), not read from the manifest, and a file in the build that it does not list is
refused as well. After the library is loaded, its own record of each entry function's parameter names is compared
with the manifest's parameter order, so weights can only be fed in the order the library was compiled for.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matq_compile import amx
from matq_compile.io_utils import FormatError, atomic_path, sha256_file

DIGEST_NAME = "SHA256SUMS"
ALWAYS_LISTED = ("manifest.json", "model.so")
ENTRY_FUNCTIONS = ("prefill", "extend", "decode", "score")  # LLM builds: (leading inputs..., *params)
_LINE = re.compile(r"^([0-9a-f]{64})  (\S(?:.*\S)?)$")


def build_files(build_dir: Path) -> list[str]:
    """Every regular file under the build, as relative POSIX paths, except the digest file itself."""
    names = (p.relative_to(build_dir).as_posix() for p in build_dir.rglob("*") if p.is_file())
    return sorted(n for n in names if n != DIGEST_NAME)


def write_digests(build_dir: str | Path) -> Path:
    """Write SHA256SUMS over every file now in build_dir (call last, when the build is complete)."""
    build_dir = Path(build_dir)
    lines = [f"{sha256_file(build_dir / name)}  {name}\n" for name in build_files(build_dir)]
    with atomic_path(build_dir / DIGEST_NAME) as tmp:
        tmp.write_text("".join(lines))
    return build_dir / DIGEST_NAME


def read_digests(build_dir: Path) -> dict[str, str]:
    path = build_dir / DIGEST_NAME
    if not path.is_file():
        raise FormatError(f"{build_dir} has no {DIGEST_NAME}, so it cannot be verified (written by an older matq, "
                          f"or not a build); recompile it")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = _LINE.match(line)
        name = m.group(2) if m else ""
        if m is None or name.startswith("/") or ".." in Path(name).parts or name in out:
            raise FormatError(f"{path}:{n}: not a 'SHA256  FILE' line of a build: {line[:80]!r}")
        out[name] = m.group(1)
    return out


def verify_build(build_dir: str | Path, required: Sequence[str] = ALWAYS_LISTED) -> None:
    """Every file of the build listed and unchanged, nothing unlisted, the fixed required files present."""
    build_dir = Path(build_dir)
    digests = read_digests(build_dir)
    for name in required:
        if name not in digests:
            raise FormatError(f"{build_dir}/{DIGEST_NAME} does not list {name}; the build was modified, recompile it")
    for name, sha in digests.items():
        f = build_dir / name
        if not f.is_file():
            raise FileNotFoundError(f"{build_dir}: {name} is missing (listed in {DIGEST_NAME})")
        if sha256_file(f) != sha:
            raise FormatError(f"{f} is corrupt or was replaced (sha256 differs from {DIGEST_NAME}); recompile")
    extra = sorted(set(build_files(build_dir)) - set(digests))
    if extra:
        raise FormatError(f"{build_dir} holds files its {DIGEST_NAME} does not list ({', '.join(extra[:3])}); "
                          f"remove them or recompile")


def check_binding(vm_module: Any, params: Sequence[Mapping[str, Any]], build_dir: Path) -> None:
    """The library's recorded parameter names of each entry function end with the manifest's parameter order."""
    names = [str(p["name"]) for p in params]
    arity, param_name = vm_module["get_function_arity"], vm_module["get_function_param_name"]
    for func in ENTRY_FUNCTIONS:
        n = int(arity(func))
        lib_names = [str(param_name(func, i)) for i in range(max(0, n - len(names)), n)]
        if n <= len(names) or lib_names != names:
            diff = next((i for i, (a, b) in enumerate(zip(lib_names, names)) if a != b),
                        min(len(lib_names), len(names)))
            got = lib_names[diff] if diff < len(lib_names) else "(none)"
            want = names[diff] if diff < len(names) else "(none)"
            raise FormatError(f"{build_dir}: model.so was compiled for another parameter order than manifest.json "
                              f"lists ({func} parameter #{diff}: library {got!r}, manifest {want!r}); recompile")


def check_device(manifest: Mapping[str, Any], device: str, build_dir: Path) -> None:
    """The device kind matches the build's target kind and exists on this machine; a build with AMX kernels gets
    this process's permission for tile registers."""
    import tvm

    kind = str(manifest.get("target", {}).get("kind", "llvm"))
    try:
        dev = tvm.device(device, 0)
    except ValueError as e:  # an unknown device name
        raise ValueError(f"--device {device!r}: {e}") from None
    on_gpu = dev.dlpack_device_type() == tvm.cuda(0).dlpack_device_type()
    if on_gpu != (kind == "cuda") or (not on_gpu and dev.dlpack_device_type() != tvm.cpu(0).dlpack_device_type()):
        wants = "cuda" if kind == "cuda" else "cpu"
        raise ValueError(f"{build_dir} was compiled for {kind} ({manifest.get('target', {}).get('name', '?')}); "
                         f"run it with --device {wants}, not {device!r}")
    if not dev.exist:
        raise ValueError(f"no {device} device on this machine (the build {build_dir} needs one)")
    if amx.target_uses_amx(manifest.get("target", {}).get("target", {})):
        try:
            amx.request()  # before any tile instruction runs (else SIGILL)
        except RuntimeError as e:
            raise ValueError(f"{build_dir}: {e}") from None


_VM_CHECK = re.compile(r"Check failed: (?P<what>.*?) : ErrorContext\(fn=(?P<fn>\w+), loc=param\[\d+\], "
                       r"param=(?P<param>\w+)")


def as_mismatch(e: Exception, build_dir: Path) -> FormatError | None:
    """The VM's own argument check failing means the manifest (cache shapes, chunk) disagrees with the library it
    claims to describe: an edit made consistently with SHA256SUMS. None for any other error."""
    m = _VM_CHECK.search(str(e))
    if m is None:
        return None
    return FormatError(f"{build_dir}: model.so refuses the {m['param']} that manifest.json describes ({m['fn']}: "
                       f"{m['what']}); the manifest does not belong to this library, recompile")
