"""LowerEmbedding: the token-embedding lookup reads a compact copy of the table (float16, or int8 rows + scales).

Matches `take(W, ids, axis=0)` on a float32 weight parameter `<name>.weight` (relax.frontend.nn Embedding as the
Llama frontend emits it) and replaces the read by

    float16: astype(take(W16, ids), float32)                         W16 = `<weight>.float16`
    int8:    astype(take(Q, ids), float32) * take(s, ids)[:, None]   Q = `<weight>.int8`, s = `<weight>.scale`

with the same parameter names and recipes (lower/params.Float16Copy, Int8Rows) as the CPU LM head of that dtype,
so a tied embedding and head share one compact table. SmolLM2's float32 table is 113 MB of a 201 MB int4 build;
its int8 copy is 28 MB. float32 leaves the graph unchanged (exact).
"""
from __future__ import annotations

from matq_compile._tvm import tvm
from matq_compile.lower.params import ParamMap
from matq_compile.lower.passes._rewrite import compact_params, prune_weights, rewrite_relax_functions
from tvm import relax

EMBED_DTYPES = ("float32", "float16", "int8")
TAKE = "relax.take"


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, dtype: str, params: ParamMap) -> None:
        super().__init__(mod)
        self.dtype, self.param_map = dtype, params
        self.compact: dict[str, list[relax.Var]] = {}  # float table name -> its compact parameters

    def _table(self, w: relax.Var, existing: dict[str, relax.Var]) -> list[relax.Var]:
        if w.name not in self.compact:
            self.compact[w.name] = compact_params(w, self.dtype, self.param_map, existing)
        return self.compact[w.name]

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == TAKE):
            return call
        w, ids = call.args
        if not (isinstance(w, relax.Var) and w.name in self.tables and int(call.attrs.axis) == 0):
            return call
        compact = self._table(w, self.existing)
        rows = self.builder_.emit(relax.op.astype(relax.op.take(compact[0], ids, axis=0), "float32"))
        if self.dtype == "float16":
            return rows
        scale = self.builder_.emit(relax.op.expand_dims(relax.op.take(compact[1], ids, axis=0), -1))
        return relax.op.multiply(rows, scale)

    def rewrite(self, func: relax.Function) -> relax.Function:
        self.compact = {}
        self.existing = {p.name: p for p in func.params}
        self.tables = {p.name for p in func.params
                       if p.name.endswith(".weight") and len(p.ty.shape) == 2 and str(p.ty.dtype) == "float32"}
        body = self.visit_expr(func)
        extra = [v for vs in self.compact.values() for v in vs if v.name not in self.existing]
        return relax.Function(list(func.params) + extra, body.body, body.ret_ty, func.is_pure, func.attrs)


def lower_embedding(dtype: str = "float32", params: ParamMap | None = None) -> tvm.transform.Pass:
    """Module pass: every take(<float32 param>.weight, ids, axis=0) reads the table's `dtype` copy; the copies are
    recorded in `params`, and a float table nothing reads any more is dropped from the signature."""
    if dtype not in EMBED_DTYPES:
        raise ValueError(f"embedding dtype must be one of {EMBED_DTYPES}, got {dtype!r}")
    params = ParamMap() if params is None else params

    @tvm.transform.module_pass(opt_level=0, name="LowerEmbedding")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if dtype == "float32":
            return mod
        rw = _Rewriter(mod, dtype, params)
        new = rewrite_relax_functions(mod, rw.builder_, rw.rewrite)
        return prune_weights(relax.transform.DeadCodeElimination()(new))

    return _pass
