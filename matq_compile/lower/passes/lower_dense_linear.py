"""LowerDenseLinear (CPU): route the remaining float linears (the LM head) to a parallel, vectorised GEMV kernel.

The llvm default pipeline leaves a legalized matmul unscheduled (one thread, scalar); for the LM head of a small
model (SmolLM2: 49152 x 576) that alone would cost more than every quantized linear together. With
`w_dtype="float16"` the head reads a float16 copy of its weight (a new parameter `<weight>.float16`), with
"int8" per-row symmetric int8 codes `<weight>.int8` and scales `<weight>.scale` (recorded in the parameter map
as lower/params.Float16Copy / Int8Rows of the float weight): 1/2 and 1/4 of the largest single read per token.
float32 keeps the head identical to the reference. In an int8-activation build (`act_isa` set) an int8 head also
quantizes its input per group of 64 and multiplies bytes (lower/int8_dense.py): ~1/3 of the vector work.
CUDA builds skip this pass: the default CUDA pipeline schedules the matmul with dlight.
"""
from __future__ import annotations

import logging

from matq_compile._tvm import tvm
from matq_compile.lower.params import ParamMap
from matq_compile.lower.passes._rewrite import (compact_params, linear_operands, prune_weights,
                                                rewrite_relax_functions)
from matq_compile.lower import int8_dense, llama_kernels as lk
from matq_compile.lower.kernels import hand_scheduled
from tvm import relax

W_DTYPES = ("float32", "float16", "int8")
log = logging.getLogger(__name__)


def head_param_name(weight: str, w_dtype: str) -> str:
    return weight if w_dtype == "float32" else f"{weight}.{w_dtype}"


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, w_dtype: str, params: ParamMap, act_isa: str | None) -> None:
        super().__init__(mod)
        self.w_dtype, self.param_map, self.act_isa = w_dtype, params, act_isa
        self.kernels: dict[str, tvm.ir.GlobalVar] = {}
        self.params: dict[str, list[relax.Var]] = {}  # float weight name -> the parameters the kernel reads

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        operands = linear_operands(self, call)
        if operands is None or operands[1].name not in self.params:
            return call
        x, src = operands
        if len(x.ty.shape) != 2 or x.ty.dtype != "float32":
            return call
        N, K = (int(s) for s in src.ty.shape)
        want_a8 = self.w_dtype == "int8" and self.act_isa is not None
        a8 = want_a8 and int8_dense.supports(K)
        name = f"dense_n{N}_k{K}_{self.w_dtype}" + ("_a8" if a8 else "")
        if name not in self.kernels:
            if want_a8 and not a8:
                log.info("%s: K=%d is not whole groups of %d; the head keeps float activations", src.name, K,
                         int8_dense.GROUP)
            func = int8_dense.int8_dense_func(N, K) if a8 else lk.dense_func(N, K, self.w_dtype)
            self.kernels[name] = self.builder_.add_func(hand_scheduled(func), name)
        return relax.call_tir(self.kernels[name], [x, *self.params[src.name]],
                              out_ty=relax.TensorType((x.ty.shape[0], N), "float32"))

    def _head_params(self, p: relax.Var, existing: dict[str, relax.Var]) -> list[relax.Var]:
        """The parameters the head kernel reads; a tied embedding lowered to the same dtype already holds them."""
        return [p] if self.w_dtype == "float32" else compact_params(p, self.w_dtype, self.param_map, existing)

    def rewrite(self, func: relax.Function) -> relax.Function:
        self.params = {}
        existing = {p.name: p for p in func.params}
        for p in func.params:
            if p.name.endswith(".weight") and len(p.ty.shape) == 2 and str(p.ty.dtype) == "float32":
                self.params[p.name] = self._head_params(p, existing)
        body = self.visit_expr(func)
        used = {v.name for v in relax.analysis.free_vars(body.body)}
        have = {p.name for p in func.params}
        extra = [v for vs in self.params.values() for v in vs if v.name not in have and v.name in used]
        return relax.Function(list(func.params) + extra, body.body, body.ret_ty, func.is_pure, func.attrs)


def lower_dense_linear(w_dtype: str = "float32", params: ParamMap | None = None,
                       act_isa: str | None = None) -> tvm.transform.Pass:
    """Module pass: every matmul(x, permute_dims(<float param>.weight)) -> call_tir(dense kernel); derived
    weight parameters are recorded in `params`. act_isa: an int8-activation build's ISA (pipeline.int8_isa): an
    int8 head then takes int8 activations too."""
    if w_dtype not in W_DTYPES:
        raise ValueError(f"head weight dtype must be one of {W_DTYPES}, got {w_dtype!r}")
    params = ParamMap() if params is None else params

    @tvm.transform.module_pass(opt_level=0, name="LowerDenseLinear")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = _Rewriter(mod, w_dtype, params, act_isa)
        new = rewrite_relax_functions(mod, rw.builder_, rw.rewrite)
        return prune_weights(relax.transform.DeadCodeElimination()(new))

    return _pass
