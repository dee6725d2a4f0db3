"""LowerMatqLinear: rewrite each quantized linear into a call_tir of its slice's bit-slice kernel.

Matches `matmul(x, permute_dims(W))` (relax.frontend.nn Linear) where W is the function parameter named
`<layer>.weight` of a kernel unit (a layer, or a fused sibling set: kernel_units.py). The float weight parameter is
replaced, in place in the signature, by the packed arguments of that unit's slice (layout.pack_slice):
`<layer>.P`, `<layer>.S`, `<layer>.Z`, and `<layer>.perm` for act-order checkpoints, where the kernel reads
`take(x, perm, axis=1)`; each is recorded in the parameter map (lower/params.PackedPart).
Weights stay parameters (shipped as safetensors), so one compiled library serves any checkpoint of the same
shapes and plan. The batch M picks the kernel: a tuned static bucket (layout.M_BUCKETS) or the dynamic-M kernel.

Switchable builds (`switch` given): each unit gets `<unit>.P` (the parent's nested planes, planes.py, stored once)
and `<unit>.S{r}`, `<unit>.Z{r}` for every width r of the build; every entry function gets one more input after
its activations, `bits: Shape[b_0, ..., b_{U-1}]` (the width of each unit, in unit order), and each linear calls
its shape's switch kernel (lower/kernels.switch_func) with its unit's b_u, which calls that width's bit-slice
kernel. The per-width kernels are functions of the module like any other (tuned from the database).

With `int8_isa` (an int8-activation build, lower/int8_kernels.py) every kernel that has an int8-activation form
gets it, with the same arguments; the others keep the float kernel (logged). Units whose kernels run on the tile
arrangement (int8_intrin.tiled) get their P, S and Z tiled (PackedPart.tiled), so every batch's kernel reads them so.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from matq_compile import layout
from matq_compile._tvm import tirx, tvm
from matq_compile.kernel_units import KernelUnit, LinearSlice, SwitchSpec, kernel_units
from matq_compile.lower.kernels import linear_func, switch_func
from matq_compile.lower.params import NestedPlanes, PackedPart, ParamMap
from matq_compile.lower.passes._rewrite import linear_operands, rewrite_relax_functions
from tvm import relax

log = logging.getLogger(__name__)

def packed_names(layer: str, sl: LinearSlice) -> list[str]:
    return [f"{layer}.{suffix}" for suffix, _, _ in sl.arg_types()]


def _m_bucket(m: tirx.PrimExpr) -> int | None:
    return layout.bucket_for(int(m)) if isinstance(m, tirx.IntImm) else None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, units: Sequence[KernelUnit], gpu: bool, params: ParamMap,
                 switch: SwitchSpec | None = None, int8_isa: str | None = None) -> None:
        super().__init__(mod)
        self.switch, self.int8_isa = switch, int8_isa
        self.order = [u.name for u in units]
        self.unit_bits: dict[str, tirx.Var] = {}  # unit -> its width in the function being rewritten (switch)
        self.units = {u.name: u for u in units}
        self.slices = {u.name: u.slice for u in units}
        self.gpu, self.param_map = gpu, params
        self.kernels: dict[str, tvm.ir.GlobalVar] = {}
        self.packed: dict[str, list[relax.Var]] = {}  # layer -> new params of the function being rewritten
        self.rewritten: set[str] = set()

    def _kernel(self, key: layout.KernelKey) -> tvm.ir.GlobalVar:
        if self.int8_isa is not None:
            from matq_compile.lower import int8_intrin, int8_kernels

            if int8_kernels.supports(key):
                name = int8_kernels.kernel_name(key)
                if name not in self.kernels:
                    func = int8_kernels.int8_linear_func(key, int8_intrin.kernel_isa(self.int8_isa, key), name)
                    self.kernels[name] = self.builder_.add_func(func, name)
                return self.kernels[name]
            log.warning("%s: no int8-activation kernel (group %d, %s); float activations", key.name,
                        key.group_size, key.dtype)
        if key.name not in self.kernels:
            self.kernels[key.name] = self.builder_.add_func(linear_func(key, gpu=self.gpu), key.name)
        return self.kernels[key.name]

    def _tiled(self, key: layout.KernelKey) -> bool:
        """Whether the unit of `key` keeps its arrays in the tile arrangement (int8_intrin.tiled)."""
        if self.int8_isa is None:
            return False
        from matq_compile.lower import int8_intrin

        return int8_intrin.tiled(self.int8_isa, key)

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
            x = self.builder_.emit(relax.op.take(x, args[-1], axis=1), name_hint=f"{layer}.x_perm")
        self.rewritten.add(layer)
        out = relax.TensorType((m, sl.N), sl.dtype)
        key = sl.key(_m_bucket(m))
        if self.switch is None:
            return relax.call_tir(self._kernel(key), [x, *args[:3]], out_ty=out)
        callees = tuple(self._kernel(key.with_bits(r)).name_hint for r in self.switch.widths)
        n_arrays = 1 + 2 * len(self.switch.widths)
        return relax.call_tir(self._switch(key, callees), [x, *args[:n_arrays], self.unit_bits[layer]],
                              out_ty=out)

    def _switch(self, key: layout.KernelKey, callees: tuple[str, ...]) -> tvm.ir.GlobalVar:
        name = "matq_switch_" + key.with_bits(max(self.switch.widths)).name[len("matq_linear_"):]
        if name not in self.kernels:
            self.kernels[name] = self.builder_.add_func(switch_func(key, self.switch.widths, name, callees), name)
        return self.kernels[name]

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
            arg_types = sl.arg_types() if self.switch is None else self.switch.arg_types(sl)
            new = [relax.Var(f"{layer}.{sfx}", relax.TensorType(shape, dt)) for sfx, shape, dt in arg_types]
            unit = self.units[layer]
            for v, (sfx, _, _) in zip(new, arg_types):
                self.param_map.add(v.name, self._recipe(unit, sfx))
            self.packed[layer] = new
            params.extend(new)
        n_in = None
        if self.switch is not None and self.packed:
            if func.attrs is None or "num_input" not in func.attrs:
                raise ValueError("a switchable build needs entry functions with a num_input attribute")
            n_in = int(func.attrs["num_input"])
            bits = [tirx.Var(f"bits_{i}", "int64") for i in range(len(self.order))]
            self.unit_bits = dict(zip(self.order, bits))
            params.insert(n_in, relax.Var("bits", relax.ShapeType(bits)))
        body = self.visit_expr(func)
        out = relax.Function(params, body.body, body.ret_ty, func.is_pure, func.attrs)
        return out if n_in is None else out.with_attr("num_input", n_in + 1)

    def _recipe(self, unit: KernelUnit, part: str):
        sl = unit.slice
        if self.switch is None:
            return PackedPart(unit.members, sl.bits, sl.group, part, self._tiled(sl.key(1)))
        if part == "P":
            return NestedPlanes(unit.members, self.switch.tag)
        if part == "perm":
            return PackedPart(unit.members, max(self.switch.widths), sl.group, part)
        return PackedPart(unit.members, int(part[1:]), sl.group, part[0])  # S{r} / Z{r}: that slice's own


def lower_matq_linear(units: Sequence[KernelUnit] | Mapping[str, LinearSlice], gpu: bool = False,
                      params: ParamMap | None = None, switch: SwitchSpec | None = None,
                      int8_isa: str | None = None) -> tvm.transform.Pass:
    """Module pass; every unit (or, given {layer: slice}, every layer) must be found in at least one function
    (else ValueError); the packed parameters are recorded in `params`. gpu: the kernels' GPU form; switch: a
    switchable build's units (their slices carry the nested layout); int8_isa: int8-activation kernels for that ISA
    (lower/int8_intrin.check_target; not with switch)."""
    units = kernel_units(units, fuse_siblings=False) if isinstance(units, Mapping) else list(units)
    params = ParamMap() if params is None else params

    @tvm.transform.module_pass(opt_level=0, name="LowerMatqLinear")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = _Rewriter(mod, units, gpu, params, switch, int8_isa)
        new = rewrite_relax_functions(mod, rw.builder_, rw.rewrite)
        missing = sorted(set(rw.slices) - rw.rewritten)
        if missing:
            raise ValueError(f"quantized layers not found as linears in the graph: {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}")
        return relax.transform.DeadCodeElimination()(new)

    return _pass
