"""Which bit-slice kernels a compiled model runs: the one owner of that decision.

A *kernel unit* is one kernel call per token: a single quantized linear, or a complete set of sibling linears
(q/k/v of a block, gate/up of an MLP; siblings.py) fused into one GEMM over their stacked rows. The compiler's
FuseSiblingLinears and LowerMatqLinear passes, the search's latency pricing, `matq tune --checkpoint` and the
benchmarks all take their kernels from `kernel_units`, so a plan's predicted latency is the latency of exactly
the kernels its build runs.

A sibling set becomes one unit when fusion is on and its members agree on everything their one kernel is keyed
by (K, bits, group, activation dtype) and none uses act-order (each member may have its own input permutation).
Free of TVM and torch: the search imports it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from matq_compile import layout, planes, slicing
from matq_compile.siblings import sibling_key, sibling_sets


@dataclass(frozen=True)
class LinearSlice:
    """One quantized linear as compiled: weight shape [N, K], slice bits, group (-1 = per channel), act-order,
    activation dtype."""

    N: int
    K: int
    bits: int
    group: int = -1
    act_order: bool = False
    dtype: str = "float32"
    nested: str = ""  # a switchable build's plane layout (planes.tag); "" = the slice's own dense layout

    def key(self, m_bucket: int | None) -> layout.KernelKey:
        return layout.KernelKey(self.N, self.K, self.bits, self.group, m_bucket, self.dtype, self.nested)

    def arg_types(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(suffix, shape, dtype) of the packed parameters, in signature order."""
        k = self.key(1)
        out = [("P", (self.N, k.words_per_row), "uint32"), ("S", (self.N, k.n_groups), layout.SCALE_DTYPE),
               ("Z", (self.N, k.n_groups), layout.SCALE_DTYPE)]
        return out + ([("perm", (self.K,), "int32")] if self.act_order else [])


@dataclass(frozen=True)
class KernelUnit:
    """One kernel call: `name` is the layer, or the fused set's name (`….qkv_proj`); members in row order."""

    name: str
    members: tuple[str, ...]
    slice: LinearSlice
    member_rows: tuple[int, ...]

    @property
    def fused(self) -> bool:
        return len(self.members) > 1

    def key(self, m_bucket: int | None) -> layout.KernelKey:
        return self.slice.key(m_bucket)

    def share(self, member: str) -> float:
        """The fraction of this kernel's time charged to `member` (its share of the rows)."""
        return self.member_rows[self.members.index(member)] / self.slice.N


def _fusable(slices: list[LinearSlice]) -> bool:
    kinds = {(s.K, s.bits, s.group, s.dtype, s.act_order, s.nested) for s in slices}
    return len(kinds) == 1 and not slices[0].act_order


def kernel_units(slices: Mapping[str, LinearSlice], fuse_siblings: bool = True) -> list[KernelUnit]:
    """The kernels a model with these per-layer slices runs, in order of first appearance of their layers."""
    sets = {}
    if fuse_siblings:
        sets = {fused: members for fused, members in sibling_sets(list(slices)).items()
                if _fusable([slices[m] for m in members])}
    units, done = [], set()
    for name, sl in slices.items():
        fused = sibling_key(name)
        if fused in sets:
            if fused in done:
                continue
            done.add(fused)
            members = sets[fused]
            rows = tuple(slices[m].N for m in members)
            units.append(KernelUnit(fused, members, replace(sl, N=sum(rows)), rows))
        else:
            units.append(KernelUnit(name, (name,), sl, (sl.N,)))
    return units


def uniform(slices: Mapping[str, LinearSlice], bits: int) -> dict[str, LinearSlice]:
    """Every layer at `bits`."""
    return {name: replace(sl, bits=bits) for name, sl in slices.items()}


def kernel_keys(slices: Mapping[str, LinearSlice], levels: Iterable[int], m_buckets: Iterable[int | None],
                fuse_siblings: bool = True) -> list[layout.KernelKey]:
    """Every distinct kernel some plan over `levels` may run: each layer's own kernel (a set split by a mixed
    plan) and, with fusion, each fused set's kernel; in a stable order."""
    out: dict[layout.KernelKey, None] = {}
    for m in m_buckets:
        for b in levels:
            for fuse in (False, True) if fuse_siblings else (False,):
                out.update(dict.fromkeys(u.key(m) for u in kernel_units(uniform(slices, b), fuse)))
    return list(out)


@dataclass(frozen=True)
class SwitchSpec:
    """A switchable build: slice widths served from one copy of the parent's planes (planes.py), and the slice rule
    of its checkpoint. Its kernel units are the units of a uniform plan (every fusable sibling set fused); a unit
    runs at one width at a time, chosen per call."""

    widths: tuple[int, ...]
    rule: str
    planes: tuple[int, ...] | None = None  # plane widths, high bits first (None: a boundary at every t(r))

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", planes.check_widths(self.widths))
        slicing.check_rule(self.rule)
        if self.planes is not None:  # checked here: a split that cannot serve the widths fails before any work
            object.__setattr__(self, "planes", planes.plane_widths(self.widths, self.rule, self.planes))

    @property
    def tag(self) -> str:
        return planes.tag(self.widths, self.rule, self.planes)

    def units(self, slices: Mapping[str, LinearSlice], fuse_siblings: bool = True) -> list[KernelUnit]:
        nested = {n: replace(sl, bits=max(self.widths), nested=self.tag) for n, sl in slices.items()}
        return kernel_units(nested, fuse_siblings)

    def arg_types(self, sl: LinearSlice) -> list[tuple[str, tuple[int, ...], str]]:
        """(suffix, shape, dtype) of a unit's parameters: the planes, each width's scales and zeros, perm."""
        g = sl.key(1).n_groups
        out = [("P", (sl.N * planes.words_per_row(sl.K, self.tag),), "uint32")]
        out += [(f"{p}{r}", (sl.N, g), layout.SCALE_DTYPE) for r in self.widths for p in "SZ"]
        return out + ([("perm", (sl.K,), "int32")] if sl.act_order else [])


def unit_bits(unit_members: Iterable[Iterable[str]], layer_bits: Mapping[str, int],
              widths: Iterable[int]) -> list[int]:
    """Each unit's width under a per-layer plan; a plan that gives the members of one unit different widths, or a
    width the build does not serve, is refused."""
    widths = set(widths)
    out = []
    for members in unit_members:
        members = list(members)
        missing = [m for m in members if m not in layer_bits]
        if missing:
            raise ValueError(f"the plan gives no width to {missing[0]}")
        bits = {int(layer_bits[m]) for m in members}
        if len(bits) != 1:
            raise ValueError(f"the plan gives the fused layers {', '.join(members)} different widths "
                             f"{sorted(bits)}; this build runs them as one kernel (search with sibling ties, or "
                             f"compile with --no-fuse-siblings)")
        b = bits.pop()
        if b not in widths:
            raise ValueError(f"the plan needs r={b} for {members[0]}; this build serves r in {sorted(widths)}")
        out.append(b)
    return out
