"""FuseSiblingLinears: q/k/v (and gate/up) of a block become one linear over their stacked weights, then a split.

Runs on the float graph before LowerMatqLinear. For each fusable set (siblings.sibling_sets, members with equal K,
bits, group and dtype, no act-order), the member weight parameters are replaced, in place in the signature, by one
`<fused>.weight` [sum N, K] (e.g. `model.layers.0.self_attn.qkv_proj.weight`), and

    y_q = matmul(x, permute_dims(W_q)), y_k = ..., y_v = ...
 -> y = matmul(x, permute_dims(W_qkv)); (y_q, y_k, y_v) = split(y, [N_q, N_q + N_k], axis=-1)

(biases stay separate adds after the split), so LowerMatqLinear emits one bit-slice kernel call instead of three:
at M = 1 on SmolLM2's narrow layers the fixed cost of a kernel call (the parallel launch, the per-row reduction
tail) is a large part of its time.
The packed arrays of a fused layer are its members' rows stacked (fused_arrays), exact by construction: the
packed layout, scales and zeros are all per output row.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from matq_compile._tvm import tvm
from matq_compile.lower.passes._rewrite import linear_operands, rewrite_relax_functions
from matq_compile.lower.passes.lower_matq_linear import LinearSlice
from matq_compile.siblings import members_of, sibling_key, sibling_sets
from tvm import relax


def fusable_sets(slices: Mapping[str, LinearSlice]) -> dict[str, tuple[str, ...]]:
    """{fused name: members} for the complete sibling sets whose kernels can be one (same K, bits, group, dtype)."""
    out = {}
    for fused, members in sibling_sets(list(slices)).items():
        kinds = {(slices[m].K, slices[m].bits, slices[m].group, slices[m].dtype, slices[m].act_order)
                 for m in members}
        if len(kinds) == 1 and not next(iter(kinds))[4]:  # act-order members may each have their own perm
            out[fused] = members
    return out


def fused_slices(slices: Mapping[str, LinearSlice], sets: Mapping[str, tuple[str, ...]]) -> dict[str, LinearSlice]:
    """`slices` with each set's members replaced by one slice of the stacked rows."""
    out = {name: sl for name, sl in slices.items() if sibling_key(name) not in sets}
    for fused, members in sets.items():
        first = slices[members[0]]
        out[fused] = LinearSlice(sum(slices[m].N for m in members), first.K, first.bits, first.group, False,
                                 first.dtype)
    return out


def fused_arrays(name: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The array of a fused parameter `<fused>.<suffix>`: the members' arrays stacked by rows (None: not fused)."""
    layer, _, suffix = name.rpartition(".")
    members = members_of(layer)
    parts = [arrays.get(f"{m}.{suffix}") for m in members or ()]
    return None if not parts or any(p is None for p in parts) else np.concatenate(parts, axis=0)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, sets: Mapping[str, tuple[str, ...]]) -> None:
        super().__init__(mod)
        self.set_of = {f"{m}.weight": fused for fused, members in sets.items() for m in members}
        self.sets = sets
        self.weights: dict[str, relax.Var] = {}  # fused name -> its weight parameter in the function
        self.rows: dict[str, int] = {}  # member weight name -> its rows
        self.parts: dict[tuple[relax.Expr, str], relax.Expr] = {}  # (input, fused) -> split outputs

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
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
        return relax.TupleGetItem(self.parts[(x, fused)], names.index(member))

    def rewrite(self, func: relax.Function) -> relax.Function:
        params: list[relax.Var] = []
        self.weights, self.parts, self.rows = {}, {}, {}
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
            params.append(self.weights[fused])
        body = self.visit_expr(func)
        return relax.Function(params, body.body, body.ret_ty, func.is_pure, func.attrs)


def fuse_sibling_linears(sets: Mapping[str, tuple[str, ...]]) -> tvm.transform.Pass:
    """Module pass fusing each set of `sets` ({fused name: members}, see fusable_sets) in every function whose
    parameters hold its members' weights. ValueError: only some members' weights are parameters, or a member
    weight is read other than by a linear."""

    @tvm.transform.module_pass(opt_level=0, name="FuseSiblingLinears")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = _Rewriter(mod, sets)
        new = relax.transform.DeadCodeElimination()(rewrite_relax_functions(mod, rw.builder_, rw.rewrite))
        for gv, func in new.functions_items():
            if isinstance(func, relax.Function):
                left = {v.name for v in relax.analysis.free_vars(func.body)} & set(rw.set_of)
                if left:
                    raise ValueError(f"{gv.name_hint}: sibling weights {sorted(left)[:3]} are read other than by "
                                     f"one linear of a shared input; compile without sibling fusion")
        return new

    return _pass
