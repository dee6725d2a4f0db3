"""FuseSiblingLinears: q/k/v (and gate/up) of a block become one linear over their stacked weights, then a split.

Runs on the float graph before LowerMatqLinear. For each fused kernel unit (kernel_units.kernel_units decides which
sets fuse), the member weight parameters are replaced, in place in the signature, by one `<fused>.weight`
[sum N, K] (e.g. `model.layers.0.self_attn.qkv_proj.weight`, recorded in the parameter map as the members' rows
stacked), and

    y_q = matmul(x, permute_dims(W_q)), y_k = ..., y_v = ...
 -> y = matmul(x, permute_dims(W_qkv)); (y_q, y_k, y_v) = split(y, [N_q, N_q + N_k], axis=-1)

(biases stay separate adds after the split), and a concatenation of all of a split's outputs in order along the
last axis (how the frontend hands [q | k | v] and [gate | up] to its fused CPU kernels, lower/llama_fused.py) is
y itself, so neither copy is made. LowerMatqLinear emits one bit-slice kernel call instead of three:
at M = 1 on SmolLM2's narrow layers the fixed cost of a kernel call (the parallel launch, the per-row reduction
tail) is a large part of its time.
The packed arrays of a fused layer are its members' rows stacked (lower/params.PackedPart), exact by
construction: the packed layout, scales and zeros are all per output row.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from matq_compile._tvm import tvm
from matq_compile.kernel_units import KernelUnit
from matq_compile.lower.params import ParamMap, StackedRows
from matq_compile.lower.passes._rewrite import linear_operands, rewrite_relax_functions
from tvm import relax


_CONCAT = tvm.ir.Op.get("relax.concat")


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, sets: dict[str, tuple[str, ...]], params: ParamMap) -> None:
        super().__init__(mod)
        self.set_of = {f"{m}.weight": fused for fused, members in sets.items() for m in members}
        self.sets, self.param_map = sets, params
        self.weights: dict[str, relax.Var] = {}  # fused name -> its weight parameter in the function
        self.rows: dict[str, int] = {}  # member weight name -> its rows
        self.parts: dict[tuple[relax.Expr, str], relax.Expr] = {}  # (input, fused) -> split outputs
        self.whole: dict[relax.Expr, tuple[relax.Expr, int]] = {}  # split outputs -> (y, number of parts)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if call.op == _CONCAT:
            return self._unsplit(call)
        operands = linear_operands(self, call)
        if operands is None or operands[1].name not in self.set_of:
            return call
        x, member = operands[0], operands[1].name
        fused = self.set_of[member]
        names = [f"{m}.weight" for m in self.sets[fused]]
        if (x, fused) not in self.parts:
            W = self.weights[fused]
            y = self.builder_.emit(relax.op.matmul(x, self.builder_.emit(relax.op.permute_dims(W))), name_hint=fused)
            sizes = np.cumsum([self.rows[n] for n in names])[:-1]
            self.parts[(x, fused)] = self.builder_.emit(relax.op.split(y, [int(s) for s in sizes], axis=-1))
            self.whole[self.parts[(x, fused)]] = (y, len(names))
        return relax.TupleGetItem(self.parts[(x, fused)], names.index(member))

    def _unsplit(self, call: relax.Call) -> relax.Expr:
        """y for concat((split(y)[0], ..., split(y)[k - 1]), axis=last) of one fused split, else the call."""
        fields = call.args[0]
        if not isinstance(fields, relax.Tuple):
            return call
        items = [self.lookup_binding(f) if isinstance(f, relax.Var) else f for f in fields.fields]
        if not all(isinstance(it, relax.TupleGetItem) for it in items):
            return call
        whole = self.whole.get(items[0].tuple_value)
        ndim = fields.fields[0].ty.ndim
        if (whole is None or len(items) != whole[1] or [it.index for it in items] != list(range(whole[1]))
                or any(not it.tuple_value.same_as(items[0].tuple_value) for it in items)
                or int(call.attrs.axis) not in (-1, ndim - 1)):
            return call
        return whole[0]

    def rewrite(self, func: relax.Function) -> relax.Function:
        params: list[relax.Var] = []
        self.weights, self.parts, self.rows, self.whole = {}, {}, {}, {}
        by_name = {p.name: p for p in func.params}
        for p in func.params:
            fused = self.set_of.get(p.name)
            if fused is None:
                params.append(p)
                continue
            if fused in self.weights:  # a later member: folded into the first member's parameter
                continue
            names = [f"{m}.weight" for m in self.sets[fused]]
            missing = [n for n in names if n not in by_name]
            if missing:
                raise ValueError(f"cannot fuse {fused}: {missing} are not parameters of the graph")
            shapes = [tuple(int(s) for s in by_name[n].ty.shape) for n in names]
            self.rows.update({n: s[0] for n, s in zip(names, shapes)})
            self.weights[fused] = relax.Var(f"{fused}.weight", relax.TensorType(
                (sum(s[0] for s in shapes), shapes[0][1]), by_name[names[0]].ty.dtype))
            self.param_map.add(f"{fused}.weight", StackedRows(tuple(self.param_map.recipe(n) for n in names)))
            params.append(self.weights[fused])
        body = self.visit_expr(func)
        return relax.Function(params, body.body, body.ret_ty, func.is_pure, func.attrs)


def fuse_sibling_linears(units: Sequence[KernelUnit], params: ParamMap | None = None) -> tvm.transform.Pass:
    """Module pass fusing each fused unit of `units` (others are ignored) in every function whose parameters hold
    its members' weights; the fused weights are recorded in `params`. ValueError: only some members' weights are
    parameters, or a member weight is read other than by a linear."""
    sets = {u.name: u.members for u in units if u.fused}
    params = ParamMap() if params is None else params

    @tvm.transform.module_pass(opt_level=0, name="FuseSiblingLinears")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = _Rewriter(mod, sets, params)
        new = relax.transform.DeadCodeElimination()(rewrite_relax_functions(mod, rw.builder_, rw.rewrite))
        for gv, func in new.functions_items():
            if isinstance(func, relax.Function):
                left = {v.name for v in relax.analysis.free_vars(func.body)} & set(rw.set_of)
                if left:
                    raise ValueError(f"{gv.name_hint}: sibling weights {sorted(left)[:3]} are read other than by "
                                     f"one linear of a shared input; compile without sibling fusion")
        return new

    return _pass
