"""One owner for which kernels run: the kernels a plan is priced on (search) are the kernels its compiled model
calls (FuseSiblingLinears + LowerMatqLinear), call for call, for a uniform plan, a mixed plan that splits a
sibling set, a --ties none search, and act-order."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytest.importorskip("tvm")

from matq_compile.ckpt import load_checkpoint  # noqa: E402
from matq_compile.layout import KernelKey  # noqa: E402
from matq_compile.search.budget import Budget  # noqa: E402
from matq_compile.search.latency import LatencyTable  # noqa: E402
from matq_compile.search.milp import solve_problem  # noqa: E402
from matq_compile.search.problem import Solution, build_problem  # noqa: E402
from matq_compile.search.tables import ByteModel, build_table, latency_keys, layers_from_sensitivity  # noqa: E402
from matq_compile.search_stage import SearchOptions, make_plan  # noqa: E402

def _latency(ck, act_order: bool) -> LatencyTable:
    """Distinct synthetic times for every kernel a plan may run (so a wrong kernel changes the sum)."""
    layers = layers_from_sensitivity(ck.sensitivity, ck.layer_names, act_order)
    keys = latency_keys(layers, (2, 3, 4, 6, 8), 1)
    return LatencyTable("llvm-test", "0.27.0", "d" * 64,
                        {k: 1e-6 * (1 + k.N * k.K * k.bits / 2**12 + 0.01 * i) for i, k in enumerate(keys)})


def _decode_calls(ckpt_dir, ck, allocation, act_order: bool) -> list[KernelKey]:
    """The bit-slice kernels the compiled decode function calls, one entry per call."""
    from matq_compile import targets
    from matq_compile.lower.frontend import LlamaConfig, build_llama
    from matq_compile.lower.pipeline import PipelineOptions, matq_pipeline

    cfg = LlamaConfig.from_hf(json.loads((ckpt_dir / "config.json").read_text()), 64)
    mod, _ = build_llama(cfg, chunk=16)
    slices = {n: replace(s, act_order=act_order) for n, s in ck.linear_slices(allocation).items()}
    lowered = matq_pipeline(slices, targets.load("host"), None, PipelineOptions(allow_untuned=True),
                            stop_before="schedule-kernels")(mod)
    from tvm import relax

    calls = [b.value.args[0].name_hint for block in lowered["decode"].body.blocks for b in block.bindings
             if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.call_tir"]
    return [KernelKey.parse(name) for name in calls if name.startswith("matq_linear_")]


@pytest.mark.parametrize("case", ["uniform", "split", "ties-none", "act-order"])
def test_search_prices_the_kernels_the_compiler_runs(tiny_search_ckpt, case):
    ckpt_dir, _ = tiny_search_ckpt
    ck = load_checkpoint(ckpt_dir)
    act_order = case == "act-order"
    ties = "none" if case in ("split", "ties-none") else "fused"
    latency = _latency(ck, act_order)
    opts = SearchOptions(ties=ties, target="llvm-test")
    table = build_table(ck.sensitivity, opts.levels, latency=latency, byte_model=ByteModel(act_order=act_order),
                        layer_names=ck.layer_names, ties=ties)
    problem = build_problem(table, [Budget("avg_bits", 8.0)])
    if case == "ties-none":  # the solver's own answer under a latency budget between int2 and int8
        lo, hi = (float(table.latency_s[:, j].sum()) for j in (0, -1))
        problem = build_problem(table, [Budget("latency", (lo + hi) / 2)])
        solution = solve_problem(problem)
    else:
        alloc = {n: 4 for n in ck.layer_names}
        if case == "split":  # q/k/v of block 0 at three widths, gate/up of block 1 at two
            alloc |= {n: b for n, b in zip([n for n in ck.layer_names if "layers.0.self_attn" in n][:3], (4, 3, 6))}
            alloc |= {n: 2 for n in ck.layer_names if "layers.1.mlp.gate" in n}
        solution = Solution(problem, problem.item_choice(alloc), "hand")
    plan = make_plan(solution, table, ck, latency, opts)
    calls = _decode_calls(ckpt_dir, ck, plan.layers, act_order)
    assert sorted(k.name for k in calls) == sorted(plan.meta["kernels"])
    assert sum(latency.latency(k) for k in calls) == pytest.approx(plan.predicted["latency_s"], rel=1e-12)
    # 2 blocks x 7 linears: fused q/k/v and gate/up give 4 calls a block; a split set or act-order gives more
    assert len(calls) == {"uniform": 8, "split": 11, "act-order": 14}.get(case, len(calls))


def test_switchable_search_prices_the_kernels_the_switch_calls(tiny_search_ckpt):
    """A plan searched for a switchable build names, call for call, the per-width kernels its switch kernels call
    (each unit at the plan's width for its members), and sums their latencies."""
    from matq_compile import planes, targets
    from matq_compile.kernel_units import SwitchSpec, unit_bits
    from matq_compile.lower.frontend import LlamaConfig, build_llama
    from matq_compile.lower.pipeline import PipelineOptions, matq_pipeline
    from matq_compile.siblings import sibling_key
    from tvm import relax

    ckpt_dir, _ = tiny_search_ckpt
    ck = load_checkpoint(ckpt_dir)
    opts = SearchOptions(target="llvm-test", switchable=True)
    nested = planes.tag(opts.levels, ck.spec.slice_rule)
    layers = layers_from_sensitivity(ck.sensitivity, ck.layer_names, False, nested)
    keys = latency_keys(layers, opts.levels, 1)
    assert all(k.nested == nested for k in keys)
    latency = LatencyTable("llvm-test", "0.27.0", "d" * 64,
                           {k: 1e-6 * (1 + k.N * k.K * k.bits / 2**12 + 0.01 * i) for i, k in enumerate(keys)})
    table = build_table(ck.sensitivity, opts.levels, latency=latency, layer_names=ck.layer_names, nested=nested)
    sets: dict[str, int] = {}
    alloc = {n: sets.setdefault(sibling_key(n), opts.levels[len(sets) % len(opts.levels)]) for n in ck.layer_names}
    problem = build_problem(table, [Budget("avg_bits", 8.0)])
    plan = make_plan(Solution(problem, problem.item_choice(alloc), "hand"), table, ck, latency, opts)

    cfg = LlamaConfig.from_hf(json.loads((ckpt_dir / "config.json").read_text()), 64)
    mod, _ = build_llama(cfg, chunk=16)
    switch = SwitchSpec(opts.levels, ck.spec.slice_rule)
    lowered = matq_pipeline(ck.linear_slices(8), targets.load("host"), None,
                            PipelineOptions(allow_untuned=True, switch=switch), stop_before="schedule-kernels")(mod)
    units = switch.units(ck.linear_slices(8))
    widths = unit_bits([u.members for u in units], plan.layers, opts.levels)
    calls = []
    for block in lowered["decode"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir":
                name = v.args[0].name_hint
                if name.startswith("matq_switch_"):
                    unit = int(v.args[1].fields[-1].name.split("_")[-1])
                    calls.append(KernelKey.parse("matq_linear_" + name[len("matq_switch_"):]).with_bits(widths[unit]))
    assert sorted(k.name for k in calls) == sorted(plan.meta["kernels"])
    assert sum(latency.latency(k) for k in calls) == pytest.approx(plan.predicted["latency_s"], rel=1e-12)
    with pytest.raises(ValueError, match="ties 'fused'"):
        build_table(ck.sensitivity, opts.levels, latency=latency, layer_names=ck.layer_names, nested=nested,
                    ties="none")
