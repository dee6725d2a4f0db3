"""Frozen, validated configuration dataclasses. JSON-safe via to_dict()/from_dict()."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from matq_compile.slicing import BITS, check_rule

METHODS: tuple[str, ...] = ("rtn", "gptq", "matgptq")
MU_MODES: tuple[str, ...] = ("uniform", "lambda")
FEEDBACK_MODES: tuple[str, ...] = ("shared", "per-slice")


def _int_tuple(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a sequence of integers in 2..8, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v not in BITS:
            raise ValueError(f"{name} must contain integers in 2..8, got {v!r} in {values!r}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has duplicate entries: {values!r}")
    return tuple(out)


def _lambda_tuple(values: Any) -> tuple[tuple[int, float], ...]:
    items = values.items() if isinstance(values, dict) else values
    pairs: dict[int, float] = {}
    for item in items:
        try:
            r, lam = item
            r, lam = int(r), float(lam)
        except (TypeError, ValueError):
            raise ValueError(f"lambdas must be (bits, weight) pairs or a {{bits: weight}} dict, got {item!r}") from None
        if r in pairs:
            raise ValueError(f"lambdas binds bits {r} twice")
        if not lam >= 0.0 or lam == float("inf"):
            raise ValueError(f"lambda for {r} bits must be a finite number >= 0, got {lam!r}")
        pairs[r] = lam
    return tuple(sorted(pairs.items(), reverse=True))


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize with (spec sections 2 and 4).

    method: rtn | gptq (one precision, `bits`) | matgptq (cross-bit, trained slices `trained_bits`).
    bits: precision of the rtn/gptq grid; 8 is the sliceable parent. Below 8 the b-bit result is stored as a parent
        whose round-rule slice at r = bits reproduces the b-bit grid exactly. matgptq always uses 8.
    lambdas: (bits, weight) pairs bound by key; an empty tuple means 1.0 for every trained slice.
    block_size: lazy-update block B; rounded up to a multiple of group_size so groups never straddle blocks.
    feedback: shared (one working copy, residual Σ_r μ_r e_r; the reference) | per-slice (one working copy per
        trained slice, each compensating only its own residual; μ unused).
    refit: slices whose group scales get a Hessian-weighted least-squares multiplier after the codes are fixed
        (stored per slice; codes and the propagated state never see them). Empty = none.
    static_groups: group grids from the weights before any GPTQ update, fixed in the original column order
        (IST-DASLab/gptq --static-groups); with act_order the codes are stored unpermuted, so no perm is deployed.
    """

    method: Literal["rtn", "gptq", "matgptq"] = "matgptq"
    bits: int = 8
    group_size: int = 64
    sym: bool = True
    slice_rule: Literal["round", "midpoint"] = "round"
    trained_bits: tuple[int, ...] = (8, 4, 3)
    lambdas: tuple[tuple[int, float], ...] = ()
    mu: Literal["uniform", "lambda"] = "uniform"
    rel_damp: float = 1e-2
    block_size: int = 128
    act_order: bool = False
    true_sequential: bool = False
    levels: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    feedback: Literal["shared", "per-slice"] = "shared"
    refit: tuple[int, ...] = ()
    static_groups: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known methods: {', '.join(METHODS)}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits not in BITS:
            raise ValueError(f"bits must be an integer in 2..8, got {self.bits!r}")
        if self.method == "matgptq" and self.bits != 8:
            raise ValueError(f"method matgptq always writes an 8-bit parent; bits={self.bits} applies to rtn/gptq only")
        check_rule(self.slice_rule)
        if self.bits < 8 and self.slice_rule != "round":
            raise ValueError(f"a {self.bits}-bit {self.method} baseline is stored as a parent that only the 'round' "
                             f"slice rule reproduces; got slice_rule={self.slice_rule!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or \
                (self.group_size != -1 and self.group_size < 1):
            raise ValueError(f"group_size must be a positive integer or -1 (per-channel), got {self.group_size!r}")
        trained = tuple(sorted(_int_tuple("trained_bits", self.trained_bits), reverse=True))
        if self.method == "matgptq" and 8 not in trained:
            raise ValueError(f"trained_bits must contain 8 (the parent slice), got {trained}")
        object.__setattr__(self, "trained_bits", trained)
        lambdas = _lambda_tuple(self.lambdas)
        unknown = sorted(set(dict(lambdas)) - set(trained))
        if unknown:
            raise ValueError(f"lambdas given for bits {unknown} that are not in trained_bits {trained}")
        object.__setattr__(self, "lambdas", lambdas)
        if self.method == "matgptq" and self.lambda_of(8) <= 0:
            raise ValueError("lambda for 8 bits must be > 0")
        if self.mu not in MU_MODES:
            raise ValueError(f"unknown mu {self.mu!r}; known: {', '.join(MU_MODES)}")
        if self.mu == "lambda" and sum(self.lambda_of(r) for r in trained) <= 0:
            raise ValueError("mu='lambda' needs a positive sum of lambdas")
        if not (isinstance(self.rel_damp, (int, float)) and 0.0 <= float(self.rel_damp) < float("inf")):
            raise ValueError(f"rel_damp must be a finite number >= 0, got {self.rel_damp!r}")
        object.__setattr__(self, "rel_damp", float(self.rel_damp))
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")
        object.__setattr__(self, "levels", tuple(sorted(_int_tuple("levels", self.levels))))
        if self.feedback not in FEEDBACK_MODES:
            raise ValueError(f"unknown feedback {self.feedback!r}; known: {', '.join(FEEDBACK_MODES)}")
        refit = tuple(sorted(_int_tuple("refit", self.refit), reverse=True)) if len(self.refit) else ()
        if refit and self.method == "rtn":
            raise ValueError("refit needs a calibration Hessian; method rtn has none")
        object.__setattr__(self, "refit", refit)
        for name in ("sym", "act_order", "true_sequential", "static_groups"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def native_bits(self) -> int:
        """Bits of the grid actually optimised: `bits` for rtn/gptq baselines, 8 for the matgptq parent."""
        return 8 if self.method == "matgptq" else self.bits

    @property
    def train_set(self) -> tuple[int, ...]:
        """The slices the code choice optimises for: R for matgptq, {8} for the 8-bit rtn/gptq parents."""
        return self.trained_bits if self.method == "matgptq" else (8,)

    def lambda_of(self, r: int) -> float:
        """λ_r, bound by key; 1.0 for a trained slice with no explicit weight."""
        if r not in self.trained_bits:
            raise ValueError(f"{r} bits is not a trained slice {self.trained_bits}")
        return dict(self.lambdas).get(r, 1.0)

    def mu_of(self, r: int) -> float:
        """μ_r: weight of slice r's residual in the propagated error (sums to 1 over R)."""
        R = self.train_set
        if self.mu == "uniform" or self.method != "matgptq":
            return 1.0 / len(R)
        return self.lambda_of(r) / sum(self.lambda_of(t) for t in R)

    def group_for(self, in_features: int) -> int:
        """The effective group size for a layer (per-channel -> in_features), validated."""
        self.check_group(in_features)
        return in_features if self.group_size == -1 else self.group_size

    def block_for(self, in_features: int) -> int:
        """Lazy block size rounded up to a multiple of the group size (groups never straddle two blocks)."""
        g = self.group_for(in_features)
        if self.group_size == -1:
            return self.block_size
        return -(-self.block_size // g) * g

    def check_group(self, in_features: int) -> None:
        if self.group_size != -1 and in_features % self.group_size != 0:
            raise ValueError(f"group size {self.group_size} does not divide in_features {in_features}; "
                             f"use a divisor of {in_features} or -1 (per-channel)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["trained_bits"] = list(self.trained_bits)
        d["levels"] = list(self.levels)
        d["refit"] = list(self.refit)
        d["lambdas"] = {str(r): lam for r, lam in self.lambdas}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantSpec:
        if not isinstance(d, dict):
            raise ValueError(f"quant spec must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown quant spec fields: {unknown}")
        d = dict(d)
        for key in ("trained_bits", "levels", "refit"):
            if key in d:
                d[key] = tuple(d[key])
        if "lambdas" in d:
            lam = d["lambdas"]
            d["lambdas"] = tuple(lam.items()) if isinstance(lam, dict) else tuple(tuple(p) for p in lam)
        return cls(**d)
