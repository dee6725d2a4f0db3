"""QuantizeConstMatmul: for imported non-LLM graphs (ONNX, torch.export), quantize every matmul with a constant
2-D float weight in-process and lower it like a checkpoint linear.

Each weight gets a symmetric RTN-8 parent (spec section 2: s = 2 max|w| / 255 per group, z = 128, round half to
even), its r-bit slice is packed by layout.pack_slice, and the matmul becomes a call_tir of the bit-slice kernel
with the packed arrays as constants. ONNX MatMul weights are W[K, N]; torch/nn Linear weights arrive as
permute_dims(W[N, K]). Inputs with more than two dimensions are flattened to [M, K] and reshaped back.
"""
from __future__ import annotations

import numpy as np

from matq_compile import layout
from matq_compile._tvm import tirx, tvm
from matq_compile.lower.passes._rewrite import rewrite_relax_functions
from matq_compile.lower.kernels import linear_func
from tvm import relax

GROUPS = (128, 64, 32)  # preferred group sizes; per-channel (-1) when none divides K


def rtn8_parent(w_nk: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric RTN-8 parent codes uint8 [N, K] and fp16 scales [N, K/g] (the scale used is the fp16 one)."""
    N, K = w_nk.shape
    g = K if group == -1 else group
    wg = w_nk.astype(np.float64).reshape(N, K // g, g)
    amax = np.abs(wg).max(-1)
    amax[amax == 0] = 1.0
    s = (2 * amax / 255).astype(np.float16)
    q = np.clip(np.round(wg / s.astype(np.float64)[..., None]) + 128, 0, 255)
    return q.astype(np.uint8).reshape(N, K), s


def pick_group(K: int) -> int:
    return next((g for g in GROUPS if K % g == 0), -1)


def _const(e: relax.Expr) -> np.ndarray | None:
    if isinstance(e, tvm.ir.GenericConst) and len(e.ty.shape) == 2 and str(e.ty.dtype) == "float32":
        return e.value.numpy()
    return None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, bits: int, gpu: bool) -> None:
        super().__init__(mod)
        self.bits, self.gpu, self.kernels, self.count = bits, gpu, {}, 0

    def _bound(self, e: relax.Expr) -> relax.Expr:
        b = self.lookup_binding(e) if isinstance(e, relax.Var) else None
        return e if b is None else b

    def _weight_nk(self, w: relax.Expr) -> np.ndarray | None:
        w = self._bound(w)
        if isinstance(w, relax.Call) and isinstance(w.op, tvm.ir.Op) and w.op.name == "relax.permute_dims":
            return _const(self._bound(w.args[0]))
        c = _const(w)
        return None if c is None else c.T

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.matmul"):
            return call
        x, w = call.args
        w_nk = self._weight_nk(w)
        if w_nk is None or str(x.ty.dtype) != "float32" or len(x.ty.shape) < 2:
            return call
        (N, K), shape = w_nk.shape, list(x.ty.shape)
        group = pick_group(K)
        q, s = rtn8_parent(w_nk, group)
        packed = layout.pack_slice(q, s, None, self.bits, "round", group)
        x2 = x if len(shape) == 2 else self.builder_.emit(relax.op.reshape(x, [-1, K]))
        m = x2.ty.shape[0]
        key = layout.KernelKey(N, K, self.bits, group,
                               layout.bucket_for(int(m)) if isinstance(m, tirx.IntImm) else None)
        if key.name not in self.kernels:
            self.kernels[key.name] = self.builder_.add_func(linear_func(key, gpu=self.gpu), key.name)
        args = [x2] + [relax.const(packed[k]) for k in ("P", "S", "Z")]
        y = relax.call_tir(self.kernels[key.name], args, out_ty=relax.TensorType((m, N), "float32"))
        self.count += 1
        if len(shape) == 2:
            return y
        return relax.op.reshape(self.builder_.emit(y), shape[:-1] + [N])


def quantize_const_matmul(bits: int, gpu: bool = False) -> tvm.transform.Pass:
    """Module pass; ValueError when the graph has no matmul on a constant float weight.
    gpu: emit the kernels' GPU form (lower/kernels.py)."""

    @tvm.transform.module_pass(opt_level=0, name="QuantizeConstMatmul")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = _Rewriter(mod, bits, gpu)
        new = rewrite_relax_functions(mod, rw.builder_, rw.visit_expr)
        if rw.count == 0:
            raise ValueError("the model has no MatMul with a constant 2-D float32 weight to quantize")
        return relax.transform.DeadCodeElimination()(new)

    return _pass
