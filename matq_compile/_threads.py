"""Size of TVM's CPU thread pool: every core this process may run on.

TVM's default halves the logical core count on x86 (it assumes SMT siblings); on a 2-vCPU machine that is one
thread, and the parallel kernels ran 2x slower than with both (measured: int4 4096x4096 decode kernel 1.78 ms vs
0.88 ms). The pool reads TVM_NUM_THREADS once, when the first parallel kernel runs, so this sets it (unless the
user already did) before any kernel runs; tuning workers inherit it.
"""
from __future__ import annotations

import os

ENV = "TVM_NUM_THREADS"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_tvm_threads() -> int:
    """TVM_NUM_THREADS := usable cores unless already set; returns the value in effect."""
    os.environ.setdefault(ENV, str(usable_cores()))
    return int(os.environ[ENV])
