"""What the rewriting passes share: the loop running one mutator over each Relax function of a module, the
match of a linear layer as relax.frontend.nn emits it, and dropping weights nothing reads any more."""
from __future__ import annotations

from collections.abc import Callable

from matq_compile._tvm import tvm
from tvm import relax

MATMUL = "relax.matmul"
PERMUTE = "relax.permute_dims"


def rewrite_relax_functions(mod: tvm.IRModule, builder: relax.BlockBuilder,
                            rewrite: Callable[[relax.Function], relax.Expr]) -> tvm.IRModule:
    """Replace every Relax function of `mod` in `builder` by `rewrite(func)`; returns the builder's module."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            builder.update_func(gv, rewrite(func))
    return builder.get()



def linear_operands(mutator: relax.PyExprMutator, call: relax.Call) -> tuple[relax.Expr, relax.Var] | None:
    """(x, W) when `call` is `matmul(x, permute_dims(W))` with W a variable (a weight parameter), else None."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == MATMUL):
        return None
    x, w = call.args
    b = mutator.lookup_binding(w) if isinstance(w, relax.Var) else None
    if not (isinstance(b, relax.Call) and isinstance(b.op, tvm.ir.Op) and b.op.name == PERMUTE):
        return None
    return (x, b.args[0]) if isinstance(b.args[0], relax.Var) else None


def prune_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Drop float weight parameters nothing reads any more (a table replaced by its float16 or int8 copy)."""
    bb = relax.BlockBuilder(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            used = {v.name for v in relax.analysis.free_vars(func.body)}
            params = [p for p in func.params if p.name in used or not p.name.endswith(".weight")]
            bb.update_func(gv, relax.Function(params, func.body, func.ret_ty, func.is_pure, func.attrs))
    return bb.get()
