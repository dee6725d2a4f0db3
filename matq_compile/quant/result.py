"""QuantResult: one quantized linear as stored in the checkpoint (spec section 1)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from matq_compile.slicing import check_bits, check_rule, dequant_parent

SYM_ZERO = 128


@dataclass(frozen=True)
class QuantResult:
    """Parent codes of one linear layer.

    qweight uint8 [out, in]  codes in processing order (columns permuted by `perm` under act-order)
    scales  fp16  [out, in/g]
    zeros   uint8 [out, in/g] or None (symmetric grid: implicit zero 128)
    perm    int32 [in] or None; the layer computes y = Ŵ · x[perm]
    slice_scales {r: fp16 [out, in/g]}: refitted scales of slice r (spec.refit), used instead of `scales` when
            slice r is dequantized; slices without an entry use `scales`
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    slice_scales: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_parts(self.qweight, self.scales, self.zeros, self.perm)
        for r, s in self.slice_scales.items():
            check_bits(r)
            validate_parts(self.qweight, s, self.zeros, None, f"slice {r} scales")

    def scales_for(self, bits: int, refit: bool = True) -> torch.Tensor:
        """The scales slice `bits` is dequantized with: its refitted scales if stored (and wanted), else the
        parent's."""
        return self.slice_scales.get(bits, self.scales) if refit else self.scales

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qweight.shape)  # type: ignore[return-value]

    @property
    def group_size(self) -> int:
        return self.qweight.shape[1] // self.scales.shape[1]

    def dequant_processing(self, bits: int, rule: str = "round", refit: bool = True) -> torch.Tensor:
        """fp32 [out, in] r-bit weights in processing (stored) order (refit=False: parent scales for every slice)."""
        check_bits(bits), check_rule(rule)
        g = self.group_size
        s = self.scales_for(bits, refit).double().repeat_interleave(g, dim=1)
        z = SYM_ZERO if self.zeros is None else self.zeros.double().repeat_interleave(g, dim=1)
        return dequant_parent(self.qweight, s, z, bits, rule).float()

    def dequant(self, bits: int, rule: str = "round", refit: bool = True) -> torch.Tensor:
        """fp32 [out, in] r-bit weights in the ORIGINAL column order (Ŵ_orig @ x == Ŵ_proc @ x[perm])."""
        w = self.dequant_processing(bits, rule, refit)
        if self.perm is None:
            return w
        out = torch.empty_like(w)
        out[:, self.perm.long()] = w
        return out


def validate_parts(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                   perm: torch.Tensor | None, name: str = "layer") -> None:
    """Dtype and shape consistency of a stored parent; ValueError naming the problem."""
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(f"{name}: qweight must be uint8 [out, in], got {qweight.dtype} {tuple(qweight.shape)}")
    out, inf = qweight.shape
    if scales.dtype != torch.float16 or scales.dim() != 2 or scales.shape[0] != out or scales.shape[1] < 1 \
            or inf % scales.shape[1] != 0:
        raise ValueError(f"{name}: scales must be float16 [{out}, in/g] with g dividing {inf}, "
                         f"got {scales.dtype} {tuple(scales.shape)}")
    if not torch.isfinite(scales).all() or (scales <= 0).any():
        raise ValueError(f"{name}: scales must be finite and positive")
    if zeros is not None and (zeros.dtype != torch.uint8 or zeros.shape != scales.shape):
        raise ValueError(f"{name}: zeros must be uint8 {tuple(scales.shape)}, got {zeros.dtype} {tuple(zeros.shape)}")
    if perm is not None:
        if perm.dtype != torch.int32 or perm.shape != (inf,):
            raise ValueError(f"{name}: perm must be int32 [{inf}], got {perm.dtype} {tuple(perm.shape)}")
        if not torch.equal(torch.sort(perm.long()).values, torch.arange(inf)):
            raise ValueError(f"{name}: perm is not a permutation of 0..{inf - 1}")
