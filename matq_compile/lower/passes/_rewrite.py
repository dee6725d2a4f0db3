"""The loop every rewriting pass shares: run one mutator over each Relax function of a module."""
from __future__ import annotations

from collections.abc import Callable

from matq_compile._tvm import tvm
from tvm import relax


def rewrite_relax_functions(mod: tvm.IRModule, builder: relax.BlockBuilder,
                            rewrite: Callable[[relax.Function], relax.Expr]) -> tvm.IRModule:
    """Replace every Relax function of `mod` in `builder` by `rewrite(func)`; returns the builder's module."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            builder.update_func(gv, rewrite(func))
    return builder.get()
