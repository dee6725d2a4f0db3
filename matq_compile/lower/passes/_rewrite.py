"""What the rewriting passes share: the loop running one mutator over each Relax function of a module, the
match of a linear layer as relax.frontend.nn emits it, the compact (float16 / int8-rows) parameters of a float
weight, and dropping weights nothing reads any more."""
from __future__ import annotations

from collections.abc import Callable

from matq_compile._tvm import tvm
from matq_compile.lower.params import Float16Copy, Int8Rows, ParamMap
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


def compact_params(w: relax.Var, dtype: str, param_map: ParamMap,
                   existing: dict[str, relax.Var]) -> list[relax.Var]:
    """The parameters holding a compact copy of the float matrix `w`: `<w>.float16`, or `<w>.int8` and its row
    scales `<w>.scale`, with their recipes recorded. One name, one parameter: a copy another pass already made
    (a tied embedding and LM head) is reused from `existing`."""
    of = param_map.recipe(w.name)
    if dtype == "float16":
        specs = [(f"{w.name}.float16", w.ty.shape, "float16", Float16Copy(of))]
    elif dtype == "int8":
        specs = [(f"{w.name}.int8", w.ty.shape, "int8", Int8Rows(of, "codes")),
                 (f"{w.name}.scale", (w.ty.shape[0],), "float32", Int8Rows(of, "scale"))]
    else:
        raise ValueError(f"no compact copy of dtype {dtype!r}")
    out = []
    for name, shape, dt, recipe in specs:
        param_map.add(name, recipe)
        out.append(existing[name] if name in existing else relax.Var(name, relax.TensorType(shape, dt)))
    return out
