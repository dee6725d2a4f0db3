"""The GPTQ loop with cross-bit compensation (spec section 4): tensors in, tensors out.

`gptq_loop` is the classic lazy-block GPTQ (IST-DASLab/gptq fasterquant) with two hooks: how a group's grid is
found and how a column's codes and propagated residual are chosen. Plain GPTQ rounds to the nearest code and
propagates x - ŵ; MatGPTQ picks the joint argmin over the trained slices R and propagates Σ_r μ_r (x - ŵ_r).

`gptq_loop_per_slice` keeps one working copy per trained slice instead (feedback = per-slice): slice r's copy is
compensated only for slice r's own residual, so the 8-bit copy never absorbs 3- and 4-bit errors it did not make.
The code is the joint argmin of Σ_r λ_r (T_r - ŵ_r(q))² over each copy's own target T_r; group grids come from the
8-bit copy. This is GPTQ's update run |R| times in lockstep with a shared code.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from matq_compile.config import QuantSpec
from matq_compile.quant import argmin, grid

Params = tuple[torch.Tensor, torch.Tensor]
FindParams = Callable[[torch.Tensor], Params]                                   # W[:, group] -> (s, z) [out]
Choose = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # -> (q, e)


Static = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (S [out, G], Z [out, G], group of each column [in])


def _outputs(W: torch.Tensor, group: int, block: int, static) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zeroed codes [out, in], scales and zeros [out, in/g]; a block that would split a group is refused."""
    out, n = W.shape
    if static is None and group != n and block % group:
        raise ValueError(f"block size {block} must be a multiple of group size {group}")
    return (torch.zeros(out, n, dtype=torch.float32), torch.zeros(out, n // group, dtype=torch.float32),
            torch.zeros(out, n // group, dtype=torch.float32))


def gptq_loop(W: torch.Tensor, U: torch.Tensor, group: int, block: int, find_params: FindParams, choose: Choose,
              static: Static | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize W [out, in] (processing order, modified in place) given U = upper-Cholesky(H⁻¹).

    Group parameters are taken when a group's first column is reached, from the current compensated values;
    `block` must be a multiple of `group` (or group = in) so a group never straddles a lazy update.
    Returns codes (fp32 integer values) [out, in], scales [out, in/g], zeros [out, in/g] as find_params made them.
    static: fixed group grids and each processing column's group (static groups; find_params is then unused).
    """
    out, n = W.shape
    Q, S, Z = _outputs(W, group, block, static)
    s = z = None
    for c1 in range(0, n, block):
        c2 = min(c1 + block, n)
        W1 = W[:, c1:c2]  # a view: eager updates land in W, so group params see them
        U1 = U[c1:c2, c1:c2]
        Err = torch.zeros(out, c2 - c1, dtype=torch.float32)
        for j in range(c2 - c1):
            i = c1 + j
            if static is not None:
                s, z = static[0][:, static[2][i]], static[1][:, static[2][i]]
            elif i % group == 0:
                s, z = find_params(W[:, i:i + group])
                S[:, i // group], Z[:, i // group] = s, z
            q, e = choose(W1[:, j], s, z)
            err = e / U1[j, j]
            W1[:, j + 1:] -= err[:, None] * U1[j, j + 1:][None, :]
            Err[:, j] = err
            Q[:, i] = q
        if c2 < n:
            W[:, c2:] -= Err.matmul(U[c1:c2, c2:])
    return (Q, S, Z) if static is None else (Q, static[0], static[1])


def gptq_loop_per_slice(W: torch.Tensor, U: torch.Tensor, group: int, block: int, find_params: FindParams,
                        ss: argmin.SliceSet, static: Static | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like gptq_loop, with one error state per trained slice (W is not modified). Same outputs."""
    out, n = W.shape
    Q, S, Z = _outputs(W, group, block, static)
    k, k8 = len(ss.bits), ss.bits.index(8)
    Ws = W.unsqueeze(0).repeat(k, 1, 1)  # [|R|, out, n], ss.bits order
    s = z = None
    for c1 in range(0, n, block):
        c2 = min(c1 + block, n)
        W1 = Ws[:, :, c1:c2]
        U1 = U[c1:c2, c1:c2]
        Err = torch.zeros(k, out, c2 - c1, dtype=torch.float32)
        for j in range(c2 - c1):
            i = c1 + j
            if static is not None:
                s, z = static[0][:, static[2][i]], static[1][:, static[2][i]]
            elif i % group == 0:
                s, z = find_params(Ws[k8, :, i:i + group])
                S[:, i // group], Z[:, i // group] = s, z
            T = W1[:, :, j]
            q = argmin.windowed_multi(T, s, z, ss)
            err = (T - s * (ss.levels.index_select(1, q) - z)) / U1[j, j]
            W1[:, :, j + 1:] -= err[:, :, None] * U1[j, j + 1:][None, None, :]
            Err[:, :, j] = err
            Q[:, i] = q.float()
        if c2 < n:
            # one 2-D matmul over all copies (with |R| = 1 it is exactly gptq_loop's lazy update)
            Ws[:, :, c2:] -= Err.reshape(k * out, c2 - c1).matmul(U[c1:c2, c2:]).reshape(k, out, n - c2)
    return (Q, S, Z) if static is None else (Q, static[0], static[1])


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run on one intra-op thread: the column loop's ops are tiny ([out, ~10]), and on a busy machine OpenMP
    hand-offs made a 576x1536 layer take 60 s with 2 threads instead of under 2 s with one."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def nearest_chooser(bits: int) -> Choose:
    """Plain GPTQ on a b-bit grid: nearest code, residual x - s (q - z)."""
    def choose(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = grid.rtn_codes(x, s, z, bits)
        return q, x - grid.dequant_codes(q, s, z)
    return choose


def joint_chooser(ss: argmin.SliceSet) -> Choose:
    """MatGPTQ: joint argmin over R (windowed), residual Σ_r μ_r (x - ŵ_r(q))."""
    def choose(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = argmin.windowed(x, s, z, ss)
        return q.float(), argmin.propagated_error(x, q, s, z, ss)
    return choose


def slice_set(spec: QuantSpec) -> argmin.SliceSet:
    R = spec.train_set
    return argmin.SliceSet.make(R, tuple(spec.lambda_of(r) if spec.method == "matgptq" else 1.0 for r in R),
                                tuple(spec.mu_of(r) for r in R), spec.slice_rule)


def gptq_quantize(W: torch.Tensor, U: torch.Tensor, spec: QuantSpec, perm: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the loop for spec.method in {gptq, matgptq}; returns parent (qweight u8, scales f16, zeros u8|None).

    W and U are in processing order (columns permuted by `perm` under act-order). With spec.static_groups the group
    grids come from the weights before any update, in the original column order, and the codes are returned in
    the original order (deployment needs no perm).
    """
    bits = spec.native_bits
    group, block = spec.group_for(W.shape[1]), spec.block_for(W.shape[1])
    ss = slice_set(spec)
    find = lambda w: grid.find_params(w, bits, spec.sym)  # noqa: E731
    static = static_groups(W, perm, group, find) if spec.static_groups else None
    if spec.method == "matgptq" and spec.feedback == "per-slice":
        Q, S, Z = gptq_loop_per_slice(W, U, group, block, find, ss, static)
    else:
        choose = nearest_chooser(bits) if spec.method == "gptq" or ss.bits == (8,) else joint_chooser(ss)
        Q, S, Z = gptq_loop(W, U, group, block, find, choose, static)
    if static is not None and perm is not None:
        Q = Q[:, torch.argsort(perm)]  # back to the original column order
    return grid.to_parent(Q, S, None if spec.sym else Z, bits)


def static_groups(W: torch.Tensor, perm: torch.Tensor | None, group: int, find: FindParams) -> Static:
    """Group grids of the un-updated weights in original column order, and each processing column's group."""
    n = W.shape[1]
    orig = W if perm is None else W[:, torch.argsort(perm)]
    params = [find(orig[:, a:a + group]) for a in range(0, n, group)]
    cols = torch.arange(n) if perm is None else perm
    return torch.stack([p[0] for p in params], 1), torch.stack([p[1] for p in params], 1), (cols // group).tolist()
