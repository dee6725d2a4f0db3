"""targets/: every data file loads and builds a TVM Target; host detection; unknown names are clear errors."""
from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from matq_compile import targets
from matq_compile.targets.spec import TargetSpec, from_toml

pytest.importorskip("tvm")

EXPECTED = {"host", "llvm-x86-avx2", "llvm-x86-avx512", "llvm-aarch64", "cuda-sm80", "cuda-sm86", "cuda-sm89",
            "cuda-sm90"}


def test_every_data_file_builds_a_tvm_target():
    assert EXPECTED <= set(targets.available())
    for name in targets.available():
        spec = targets.load(name)
        tgt = spec.to_tvm()
        assert tgt.kind.name == spec.kind
        if spec.is_gpu:
            assert str(tgt.attrs["arch"]) == spec.arch == f"sm_{name[-2:]}"
            assert int(tgt.attrs["max_shared_memory_per_block"]) == 49152
            assert tgt.host is not None and tgt.host.kind.name == "llvm"
        else:
            assert int(tgt.attrs["num-cores"]) >= 1


def test_host_is_detected_and_resolves_by_its_own_name():
    import os

    from matq_compile._tvm import llvm_get_system_cpu

    host = targets.load("host")
    cpu = str(llvm_get_system_cpu())
    assert host.target["mcpu"] == cpu and cpu != "generic"
    assert host.target["num-cores"] == len(os.sched_getaffinity(0))
    assert host.name == f"llvm-{cpu}-{host.target['num-cores']}c"
    assert targets.load(host.name) == host


def test_unknown_target_lists_known_ones():
    with pytest.raises(ValueError, match="cuda-sm90") as e:
        targets.load("cuda-sm9")
    assert "llvm-x86-avx2" in str(e.value)


def test_spec_validation():
    with pytest.raises(ValueError, match="arch"):
        TargetSpec("x", "cuda", {})
    with pytest.raises(ValueError, match="num-cores"):
        TargetSpec("x", "llvm", {"mcpu": "haswell"})
    with pytest.raises(ValueError, match="kind"):
        TargetSpec("x", "rocm", {})
    data = tomllib.loads(resources.files("matq_compile.targets").joinpath("cuda-sm80.toml").read_text())
    with pytest.raises(ValueError, match="unknown keys"):
        from_toml("cuda-sm80", data | {"typo": 1})
