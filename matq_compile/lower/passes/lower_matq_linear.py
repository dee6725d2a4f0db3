"""LowerMatqLinear: rewrite each quantized linear into a call_tir of its slice's bit-slice kernel.

Matches `matmul(x, permute_dims(W))` (relax.frontend.nn Linear) where W is the function parameter named
`<layer>.weight` of a kernel unit (a layer, or a fused sibling set: kernel_units.py). The float weight parameter is
replaced, in place in the signature, by the packed arguments of that unit's slice (layout.pack_slice):
`<layer>.P`, `<layer>.S`, `<layer>.Z`, and `<layer>.perm` for act-order checkpoints, where the kernel reads
`take(x, perm, axis=1)`; each is recorded in the parameter map (lower/params.PackedPart).
Weights stay parameters (shipped as safetensors), so one compiled library serves any checkpoint of the same
shapes and plan. The batch M picks the kernel: a tuned static bucket (layout.M_BUCKETS) or the dynamic-M kernel.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from matq_compile import layout
from matq_compile._tvm import tirx, tvm
from matq_compile.kernel_units import KernelUnit, LinearSlice, kernel_units
from matq_compile.lower.kernels import linear_func
from matq_compile.lower.params import PackedPart, ParamMap
from matq_compile.lower.passes._rewrite import linear_operands, rewrite_relax_functions
from tvm import relax


def packed_names(layer: str, sl: LinearSlice) -> list[str]:
    return [f"{layer}.{suffix}" for suffix, _, _ in sl.arg_types()]


def _m_bucket(m: tirx.PrimExpr) -> int | None:
    return layout.bucket_for(int(m)) if isinstance(m, tirx.IntImm) else None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, units: Sequence[KernelUnit], gpu: bool, params: ParamMap) -> None:
        super().__init__(mod)
        self.units = {u.name: u for u in units}
        self.slices = {u.name: u.slice for u in units}
        self.gpu, self.param_map = gpu, params
        self.kernels: dict[str, tvm.ir.GlobalVar] = {}
        self.packed: dict[str, list[relax.Var]] = {}  # layer -> new params of the function being rewritten
        self.rewritten: set[str] = set()

    def _kernel(self, key: layout.KernelKey) -> tvm.ir.GlobalVar:
        if key.name not in self.kernels:
            self.kernels[key.name] = self.builder_.add_func(linear_func(key, gpu=self.gpu), key.name)
        return self.kernels[key.name]

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        operands = linear_operands(self, call)
        name = operands[1].name if operands else ""
        layer = name[: -len(".weight")] if name.endswith(".weight") else None
        if layer not in self.packed:
            return call
        x = operands[0]
        sl, args = self.slices[layer], self.packed[layer]
        if len(x.ty.shape) != 2 or x.ty.dtype != sl.dtype:
            raise ValueError(f"{layer}: expected a 2-D {sl.dtype} input, got {x.ty}")
        m = x.ty.shape[0]
        if sl.act_order:
            x = self.builder_.emit(relax.op.take(x, args[3], axis=1), name_hint=f"{layer}.x_perm")
        gv = self._kernel(sl.key(_m_bucket(m)))
        self.rewritten.add(layer)
        return relax.call_tir(gv, [x, *args[:3]], out_ty=relax.TensorType((m, sl.N), sl.dtype))

    def rewrite(self, func: relax.Function) -> relax.Function:
        params: list[relax.Var] = []
        self.packed = {}
        for p in func.params:
            layer = p.name[: -len(".weight")] if p.name.endswith(".weight") else None
            if layer not in self.slices:
                params.append(p)
                continue
            sl = self.slices[layer]
            if tuple(int(s) for s in p.ty.shape) != (sl.N, sl.K):
                raise ValueError(f"{layer}: graph weight shape {p.ty.shape} != checkpoint [{sl.N}, {sl.K}]")
            new = [relax.Var(f"{layer}.{sfx}", relax.TensorType(shape, dt)) for sfx, shape, dt in sl.arg_types()]
            unit = self.units[layer]
            for v, (sfx, _, _) in zip(new, sl.arg_types()):
                self.param_map.add(v.name, PackedPart(unit.members, sl.bits, sl.group, sfx))
            self.packed[layer] = new
            params.extend(new)
        body = self.visit_expr(func)
        return relax.Function(params, body.body, body.ret_ty, func.is_pure, func.attrs)


def lower_matq_linear(units: Sequence[KernelUnit] | Mapping[str, LinearSlice], gpu: bool = False,
                      params: ParamMap | None = None) -> tvm.transform.Pass:
    """Module pass; every unit (or, given {layer: slice}, every layer) must be found in at least one function
    (else ValueError); the packed parameters are recorded in `params`. gpu: the kernels' GPU form."""
    units = kernel_units(units, fuse_siblings=False) if isinstance(units, Mapping) else list(units)
    params = ParamMap() if params is None else params

    @tvm.transform.module_pass(opt_level=0, name="LowerMatqLinear")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = _Rewriter(mod, units, gpu, params)
        new = rewrite_relax_functions(mod, rw.builder_, rw.rewrite)
        missing = sorted(set(rw.slices) - rw.rewritten)
        if missing:
            raise ValueError(f"quantized layers not found as linears in the graph: {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}")
        return relax.transform.DeadCodeElimination()(new)

    return _pass
