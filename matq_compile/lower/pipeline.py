"""The matq compilation pipeline: one Sequential in named phases, with an optional IR dump after each phase.

    1 lower-linears     the kernel units of kernel_units.py: sibling linears (q/k/v, gate/up) with equal kernels
                        fused into one; quantized linears -> call_tir of their unit's bit-slice kernel (packed
                        weights as params; for imported ONNX graphs: constant-weight MatMuls quantized
                        in-process, packed constants)
    2 lower-head        the embedding lookup reads a compact copy of its table (float16 / int8 rows, optional);
                        CPU: remaining float linears (the LM head) -> parallel vectorised GEMV kernel (an int8
                        head of an int8-activation build: int8 activations too, lower/int8_dense.py)
    3 schedule-kernels  tuned database replayed onto every matq kernel (error on a miss unless allow_untuned);
                        hand-scheduled kernels sealed against fusion and dlight
    4 tvm-default       TVM's default Relax pipeline for the target (legalize, fuse, CUDA dlight, VM lowering)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from matq_compile._tvm import tvm
from matq_compile.kernel_units import LinearSlice, SwitchSpec, kernel_units
from matq_compile.lower.params import ParamMap
from matq_compile.lower.passes import (dump_ir, fuse_sibling_linears, lower_dense_linear, lower_embedding,
                                      lower_matq_linear, schedule_kernels)
from tvm import relax


@dataclass(frozen=True)
class PipelineOptions:
    """head_dtype: weight dtype of the CPU LM-head kernel; allow_untuned: default schedules (logged) on DB
    misses; dump_dir: write each phase's IR there; fuse_siblings: one kernel for q/k/v and one for gate/up where
    their slices agree; embed_dtype: the embedding table's stored dtype (a tied head of the same dtype shares it);
    switch: compile every width of a switchable build, chosen per call (lower_matq_linear);
    act: "float" (exact float activations) or "int8" (activations quantized per group, integer dot products;
    x86 CPU targets with AVX2 or VNNI only, lower/int8_intrin.check_target)."""

    head_dtype: str = "float32"
    allow_untuned: bool = False
    dump_dir: str | None = None
    fuse_siblings: bool = True
    embed_dtype: str = "float32"
    switch: SwitchSpec | None = None  # a switchable build (kernel_units.SwitchSpec); the slices' bits are ignored
    act: str = "float"


ACT_MODES = ("float", "int8")


def int8_isa(spec, act: str) -> str | None:
    """The ISA of an int8-activation build (ValueError where the target has none), None for float."""
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    if act == "float":
        return None
    from matq_compile.lower.int8_intrin import check_target

    return check_target(spec)


Lowering = Mapping[str, LinearSlice] | list[tvm.transform.Pass]


def phases(lowering: Lowering, spec, db_dir: str | Path | None, opts: PipelineOptions,
           params: ParamMap | None = None) -> list[tuple[str, list[tvm.transform.Pass]]]:
    """lowering: the checkpoint's {layer: LinearSlice} (its kernel units are lowered), or the phase-1 passes
    themselves. params: where the passes record the parameters they create."""
    params = ParamMap() if params is None else params
    isa = int8_isa(spec, opts.act)  # one answer for the linears and the head
    if isinstance(lowering, list):
        first = list(lowering)
    else:
        sw = opts.switch
        units = kernel_units(lowering, opts.fuse_siblings) if sw is None else sw.units(lowering, opts.fuse_siblings)
        first = [fuse_sibling_linears(units, params), lower_matq_linear(units, spec.is_gpu, params, sw, isa)]
    return [
        ("lower-linears", first),
        ("lower-head", [lower_embedding(opts.embed_dtype, params)]
         + ([] if spec.is_gpu else [lower_dense_linear(opts.head_dtype, params, isa)])),
        ("schedule-kernels", [schedule_kernels(spec, db_dir, opts.allow_untuned)]),
        ("tvm-default", [relax.pipeline.get_default_pipeline(spec.to_tvm())]),
    ]


def matq_pipeline(slices: Lowering, spec, db_dir: str | Path | None, opts: PipelineOptions = PipelineOptions(),
                  stop_before: str | None = None, params: ParamMap | None = None) -> tvm.transform.Pass:
    """The phases as one Sequential (up to, not including, phase `stop_before` when given)."""
    seq: list[tvm.transform.Pass] = []
    for i, (name, passes) in enumerate(phases(slices, spec, db_dir, opts, params)):
        if name == stop_before:
            break
        seq.extend(passes)
        if opts.dump_dir:
            seq.append(dump_ir(opts.dump_dir, i + 1, name))
    return tvm.transform.Sequential(seq, name="matq_pipeline")


def weight_params(mod: tvm.IRModule) -> tuple[tvm.IRModule, list]:
    """The weight parameters (relax.Var) every entry function takes after its num_input activations, and the module
    with each entry function's weights aligned to them: the union, in the order of the function that takes the most
    (ties by name). A function that reads fewer (extend: the last layer's MLP and the LM head are dead code there)
    still takes them all, so one argument list serves every entry function."""
    entries = sorted(((gv, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)
                      and f.attrs is not None and "num_input" in f.attrs), key=lambda e: e[0].name_hint)
    if not entries:
        return mod, []  # no num_input: every input is an activation (imported graphs)
    weights = {gv.name_hint: list(f.params[int(f.attrs["num_input"]):]) for gv, f in entries}
    order = sorted(weights, key=lambda name: -len(weights[name]))
    union: dict[str, relax.Var] = {}
    for name in order:
        for v in weights[name]:
            if v.name in union and str(union[v.name].ty) != str(v.ty):
                raise ValueError(f"weight parameter {v.name} is {union[v.name].ty} in one entry function and {v.ty} "
                                 f"in {name}")
            union.setdefault(v.name, v)
    bb = relax.BlockBuilder(mod)
    for gv, f in entries:
        own = {v.name: v for v in weights[gv.name_hint]}
        if len(own) == len(union):
            continue
        params = list(f.params[:int(f.attrs["num_input"])]) + [own[n] if n in own else relax.Var(n, v.ty)
                                                               for n, v in union.items()]
        bb.update_func(gv, relax.Function(params, f.body, f.ret_ty, f.is_pure, f.attrs))
    return bb.get(), list(union.values())


class Compiled(NamedTuple):
    """A compiled module: the VM executable, its weight parameters in signature order, and how each parameter's
    array is made from the checkpoint."""

    executable: Any  # relax.VMExecutable
    params: list  # relax.Var
    param_map: ParamMap


def compile_module(mod: tvm.IRModule, slices: Lowering, spec, db_dir: str | Path | None,
                   opts: PipelineOptions = PipelineOptions()) -> Compiled:
    """Relax module of the float model -> its executable for spec's target, weight parameters and parameter map."""
    target = spec.to_tvm()
    param_map = ParamMap()
    last = phases(slices, spec, db_dir, opts)[-1][0]
    with target:
        lowered = matq_pipeline(slices, spec, db_dir, opts, stop_before=last, params=param_map)(mod)
        lowered, params = weight_params(lowered)
        rest = tvm.transform.Sequential([p for _, ps in phases(slices, spec, db_dir, opts)[-1:] for p in ps])
        return Compiled(tvm.compile(lowered, target=target, relax_pipeline=rest), params, param_map)
