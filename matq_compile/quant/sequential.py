"""Block-by-block quantization driver (spec section 4, "Driver").

1. Capture the inputs of every decoder block once: each block is temporarily replaced by a recorder that keeps
   its positional/keyword arguments (attention mask, rotary position embeddings, ... exactly as the installed
   transformers passes them, per block, so families with per-layer masks work) and passes the hidden state on.
   Only block 0's hidden state is kept; the calibration tokens never reach the real blocks or the lm_head here.
2. For each block: run the calibration inputs through it once with forward hooks accumulating one Hessian per
   linear (fp32 running mean; linears that read the same input tensor, q/k/v and gate/up, share one), quantize
   every linear from that pass, record its sensitivity at every level, and swap in the fake-quantized weights at
   the native slice (8 for the sliceable parent). With true-sequential the block is re-run before each group
   ([q,k,v] -> [o] -> [gate,up] -> [down]) so a group sees the quantized outputs of the groups before it.
   The linears of one pass are independent, so they are quantized concurrently, one single-threaded worker per
   usable core (the column loop's ops are too small for intra-op threads); each linear's result is the same
   whatever the number of workers or the order they finish in.
3. Re-run the quantized block; its outputs are the next block's inputs.

Embeddings, norms and the lm_head stay in floating point.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from matq_compile._log import progress
from matq_compile._threads import usable_cores
from matq_compile.arch import ArchSpec, arch_of
from matq_compile.config import QuantSpec
from matq_compile.quant import QuantResult, quantize_weight
from matq_compile.quant.gptq import single_thread
from matq_compile.quant.hessian import accumulate
from matq_compile.quant.sensitivity import layer_sensitivity

log = logging.getLogger(__name__)


@dataclass
class QuantizedModel:
    """What the checkpoint needs: parents and sensitivity per quantized layer, the float tensors, timing."""

    layers: dict[str, QuantResult] = field(default_factory=dict)
    sensitivity: dict[str, dict] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time (all threads) of the same span


@dataclass
class _BlockInputs:
    """Per calibration batch: the block's hidden-state input and the call arguments of every block."""

    hidden: list[torch.Tensor]
    args: list[list[tuple[tuple, dict]]]  # [block][batch] -> (extra positional args, keyword args)


class _Recorder(nn.Module):
    """Stands in for one block during capture: records its call arguments, returns the input unchanged."""

    def __init__(self, sink: list, keep_hidden: bool):
        super().__init__()
        self.sink, self.keep_hidden = sink, keep_hidden

    def forward(self, hidden_states, *args, **kwargs):
        self.sink.append((hidden_states if self.keep_hidden else None, args, kwargs))
        return hidden_states


def quantize_model(model, calib: torch.Tensor, spec: QuantSpec, arch: ArchSpec | None = None,
                   batch_size: int = 8, tensor_dtype: torch.dtype | None = None, workers: int | None = None
                   ) -> QuantizedModel:
    """Quantize every block linear of a Hugging Face causal LM in place (fake-quantized at the native slice).

    calib: [n, T] int64 token ids. tensor_dtype: dtype of the float tensors returned for the checkpoint
    (default: as in the model). workers: linears quantized at once (default: usable cores; the result does not
    depend on it). Returns the parents, the sensitivity table and the float tensors.
    """
    arch = arch or arch_of(model)
    if calib.dim() != 2 or calib.dtype != torch.long:
        raise ValueError(f"calibration tokens must be an int64 [n, T] tensor, got {calib.dtype} {tuple(calib.shape)}")
    blocks = model.get_submodule(arch.blocks)
    _check_layers(blocks, arch, spec)
    start, cpu0 = time.perf_counter(), time.process_time()
    out = QuantizedModel()
    workers = workers or usable_cores()
    log.info("%s: %d blocks, %d calibration sequences x %d tokens, %d workers, %d torch threads", spec.method,
             len(blocks), calib.shape[0], calib.shape[1], workers, torch.get_num_threads())
    with torch.no_grad():
        inputs = _capture(model, blocks, arch, calib, batch_size)
        hidden = inputs.hidden
        for i in progress(range(len(blocks)), desc=f"{spec.method} blocks"):
            t0, c0 = time.perf_counter(), time.process_time()
            hidden = _quantize_block(blocks[i], i, hidden, inputs.args[i], spec, arch, out, workers)
            done = time.perf_counter() - start
            log.info("block %d/%d in %.1f s (process CPU %.1f s); %.0f s so far, about %.0f s to go", i + 1,
                     len(blocks), time.perf_counter() - t0, time.process_time() - c0, done,
                     done / (i + 1) * (len(blocks) - i - 1))
    out.tensors = float_tensors(model, set(out.layers), tensor_dtype)
    out.seconds, out.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu0
    log.info("quantized %d linears in %d blocks in %.1f s (process CPU %.1f s)", len(out.layers), len(blocks),
             out.seconds, out.cpu_seconds)
    return out


def _check_layers(blocks: nn.ModuleList, arch: ArchSpec, spec: QuantSpec) -> None:
    """Every block has every linear of the family, and the group size divides every in_features (fail early)."""
    for i, block in enumerate(blocks):
        for name in arch.linears:
            try:
                module = block.get_submodule(name)
            except AttributeError:
                raise ValueError(f"{arch.block_prefix(i)} has no linear {name!r} (family {arch.family})") from None
            if not isinstance(module, nn.Linear):
                raise ValueError(f"{arch.block_prefix(i)}.{name} is {type(module).__name__}, not nn.Linear")
            try:
                spec.check_group(module.in_features)
            except ValueError as e:
                raise ValueError(f"{arch.block_prefix(i)}.{name}: {e}") from None


def _capture(model, blocks: nn.ModuleList, arch: ArchSpec, calib: torch.Tensor, batch_size: int) -> _BlockInputs:
    """Run the embedding part of the model with recorders in place of the blocks (restored afterwards)."""
    sinks: list[list] = [[] for _ in blocks]
    originals = list(blocks)
    base = model.get_submodule(arch.blocks.rsplit(".", 1)[0]) if "." in arch.blocks else model
    try:
        for i in range(len(blocks)):
            blocks[i] = _Recorder(sinks[i], keep_hidden=(i == 0))
        for batch in torch.split(calib, batch_size):
            base(input_ids=batch, use_cache=False)
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    hidden = [h for h, _, _ in sinks[0]]
    args = [[(a, kw) for _, a, kw in sink] for sink in sinks]
    return _BlockInputs(hidden, args)


def _run_block(block: nn.Module, hidden: list[torch.Tensor], args: list[tuple[tuple, dict]]) -> list[torch.Tensor]:
    outs = []
    for h, (a, kw) in zip(hidden, args):
        y = block(h, *a, **kw)
        outs.append(y[0] if isinstance(y, tuple) else y)  # transformers 4.x blocks return tuples
    return outs


def _quantize_block(block: nn.Module, index: int, hidden: list[torch.Tensor], args: list[tuple[tuple, dict]],
                    spec: QuantSpec, arch: ArchSpec, out: QuantizedModel, workers: int = 1) -> list[torch.Tensor]:
    groups = arch.groups if spec.true_sequential else (arch.linears,)
    for group in groups:
        hessians = _collect_hessians(block, group, hidden, args)
        _quantize_group(block, arch.block_prefix(index), group, hessians, spec, out, workers)
    return _run_block(block, hidden, args)


def _collect_hessians(block: nn.Module, names: tuple[str, ...], hidden: list[torch.Tensor],
                      args: list[tuple[tuple, dict]]) -> dict[str, torch.Tensor]:
    """One calibration pass through the block with hooks accumulating H for the named linears.

    A linear called on the very tensor the previous hooked linear got (q/k/v, gate/up), whose running H has been
    the same object so far, shares that linear's H instead of accumulating the same sum again.
    """
    state: dict[str, tuple[torch.Tensor | None, int]] = {name: (None, 0) for name in names}
    last: dict[str, object] = {"x": None, "before": None, "after": None}

    def hook(name):
        def fn(module, inputs, output):
            x, before = inputs[0], state[name]
            if x is last["x"] and before[0] is last["before"][0] and before[1] == last["before"][1]:
                state[name] = last["after"]
            else:
                state[name] = accumulate(before[0], before[1], x)
            last.update(x=x, before=before, after=state[name])
        return fn

    handles = [block.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        _run_block(block, hidden, args)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name, (H, _) in state.items() if H is None]
    if missing:
        raise ValueError(f"linears {missing} received no calibration inputs")
    return {name: H for name, (H, _) in state.items()}


def _quantize_group(block: nn.Module, prefix: str, names: tuple[str, ...], hessians: dict[str, torch.Tensor],
                    spec: QuantSpec, out: QuantizedModel, workers: int) -> None:
    """Quantize the named linears of one calibration pass concurrently; record and swap them in block order."""
    modules = {name: block.get_submodule(name) for name in names}
    # largest first, so the last job to start is a small one (cost ~ columns x (rows + per-column overhead))
    order = sorted(names, key=lambda n: -modules[n].in_features * (modules[n].out_features + 512))
    with single_thread(), ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
        jobs = {n: pool.submit(_quantize_linear, modules[n].weight, hessians[n], spec, f"{prefix}.{n}")
                for n in order}
        done = {n: job.result() for n, job in jobs.items()}
    for name in names:
        result, sensitivity = done[name]
        full = f"{prefix}.{name}"
        out.layers[full], out.sensitivity[full] = result, sensitivity
        # parent scales, not the refit: the refit is per-slice post-processing that later blocks never see
        weight = modules[name].weight
        weight.copy_(result.dequant(spec.native_bits, spec.slice_rule, refit=False).to(weight.dtype))


def _quantize_linear(weight: torch.Tensor, H: torch.Tensor, spec: QuantSpec, name: str
                     ) -> tuple[QuantResult, dict]:
    W0 = weight.detach().float().clone()
    t0, c0 = time.perf_counter(), time.thread_time()
    result = quantize_weight(W0, H, spec)
    sensitivity = layer_sensitivity(W0, result, H, spec.levels, spec.slice_rule)
    log.debug("%s %s in %.2f s (thread CPU %.2f s), nmse %s", name, tuple(W0.shape), time.perf_counter() - t0,
              time.thread_time() - c0, sensitivity["nmse"])
    return result, sensitivity


def float_tensors(model, quantized: set[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every state-dict tensor except the quantized weights, each stored once (tied duplicates dropped)."""
    skip = {f"{name}.weight" for name in quantized}
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key in skip or value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        t = value.detach().cpu()
        tensors[key] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous().clone()
    return tensors
