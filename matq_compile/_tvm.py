"""The single place that imports TVM 0.27 names that moved between releases.

Every other module reaches TVM through here (`from matq_compile._tvm import tvm, te, tirx, ms, ...`), so a rename
in a future TVM release is fixed in one file. Importing this module costs ~2 s (it imports tvm).
"""
from __future__ import annotations

from matq_compile._threads import configure_tvm_threads

configure_tvm_threads()  # before TVM's thread pool exists (see _threads.py)

import tvm  # noqa: E402
import tvm_ffi  # noqa: E402
from tvm import te, tirx  # noqa: E402
from tvm import s_tir  # noqa: E402
from tvm.s_tir import dlight  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402
from tvm.s_tir.meta_schedule.trace_apply import schedule_using_anchor_trace  # noqa: E402
from tvm.target import Target  # noqa: E402
from tvm.target.codegen import llvm_get_system_cpu  # noqa: E402

Schedule = s_tir.Schedule
structural_hash = tvm_ffi.structural_hash
structural_equal = tvm_ffi.structural_equal
TVM_VERSION: str = tvm.__version__


def i64(v: int | tirx.PrimExpr) -> tirx.PrimExpr:
    """int64 shape literal (Relax indexes with int64; int32 kernels have failed in FuseTIR)."""
    return tirx.IntImm("int64", v) if isinstance(v, int) else v


def tensor(a, dev):
    """numpy -> device tensor (0.27 name of tvm.nd.array)."""
    return tvm.runtime.tensor(a, dev)


def empty(shape, dtype: str, dev):
    return tvm.runtime.empty(shape, dtype, dev)


def nvcc_compile(src: str, arch: str, target_format: str = "ptx") -> bytes:
    """CUDA source -> PTX/cubin bytes with the nvcc binary (needs the CUDA Target in scope, see tvm notes §6)."""
    from tvm.support import nvcc

    return nvcc.compile_cuda(src, target_format=target_format, arch=arch, compiler="nvcc")


__all__ = ["tvm", "tvm_ffi", "te", "tirx", "s_tir", "dlight", "ms", "Target", "Schedule", "llvm_get_system_cpu",
           "schedule_using_anchor_trace", "structural_hash", "structural_equal", "TVM_VERSION", "i64", "tensor",
           "empty", "nvcc_compile"]
