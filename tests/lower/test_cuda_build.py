"""CUDA without a GPU: kernels build to CUDA source and to PTX with nvcc; the module really holds a cuda import."""
from __future__ import annotations

import shutil

import pytest

from matq_compile import layout, targets

pytest.importorskip("tvm")
pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


@pytest.mark.parametrize("target", ["cuda-sm80", "cuda-sm90"])
@pytest.mark.parametrize("key", [layout.KernelKey(4096, 4096, 3, 64, 1, "float16"),
                                 layout.KernelKey(576, 1536, 4, 64, 16, "bfloat16")], ids=lambda k: k.name)
def test_cuda_source_and_ptx(target, key):
    from matq_compile import schedules
    from matq_compile._tvm import nvcc_compile, tvm
    from matq_compile.lower import kernels

    spec = targets.load(target)
    func = schedules.default_schedule(kernels.linear_func(key, gpu=True), spec)
    ex = tvm.compile(tvm.IRModule({key.name: func}), target=spec.to_tvm())
    assert [m.kind for m in ex.mod.imports] == ["cuda"]  # unscheduled kernels silently become host code
    src = ex.mod.imports[0].inspect_source("cuda")
    assert "__global__" in src and key.name in src
    with spec.to_tvm():
        ptx = nvcc_compile(src, spec.arch, "ptx").decode()
    assert f".target {spec.arch}" in ptx and ".entry" in ptx


def test_unscheduled_cuda_kernel_has_no_cuda_module():
    """The trap the import check above guards against: without a schedule TVM emits host code, no error."""
    from matq_compile._tvm import tvm
    from matq_compile.lower import kernels

    spec = targets.load("cuda-sm80")
    key = layout.KernelKey(64, 64, 4, 32, 1, "float16")
    ex = tvm.compile(tvm.IRModule({"main": kernels.linear_func(key, "main")}), target=spec.to_tvm())
    assert "cuda" not in [m.kind for m in ex.mod.imports]
