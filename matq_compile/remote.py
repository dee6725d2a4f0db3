"""Where kernels are timed: this machine's device, or a remote one through a TVM RPC tracker (any target).

    open_session(spec, runner, rpc)   "local": this machine (the CUDA GPU for a cuda target, else the CPU);
                                      "rpc": a server registered with the tracker under rpc.tracker_key
    session.load(executable)          the compiled module on the session's device (exported, uploaded, loaded)
    session.time(mod, name, args)     seconds per call, `repeat` samples, after a warm-up call
    session.time_vm(ex, name, args)   the same for a Relax function of a VM executable (CPU: bench's chains)

Timing is cache-cold: on a CPU every argument but X is flushed from the caches before each call (TVM's
cache_flush_cpu_non_first_arg, number=1); on a GPU the weights rotate through enough copies to exceed twice the L2
(the next call's weights were last touched a whole rotation ago) and each call is timed by the device's timer
(time_evaluator, number=1). The same code serves a local device and an RPC session: an RPC server on this machine
stands in for a GPU host in the tests.
"""
from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matq_compile import amx
from matq_compile.tune import RPCSettings

log = logging.getLogger(__name__)

ROTATE_L2_FACTOR = 2  # GPU: weight copies to exceed this many L2 sizes
MAX_COPIES = 256  # GPU: at most this many copies of one kernel's weights
DEFAULT_L2_BYTES = 64 << 20  # when the device does not report its L2 (H100 50 MiB, H200 60 MiB)


@dataclass
class Session:
    """A device kernels are timed on: `dev` (local or remote), its human-readable name, and the RPC session if any."""

    dev: Any
    device_name: str
    gpu: bool
    rpc_session: Any = None

    @property
    def remote(self) -> bool:
        return self.rpc_session is not None

    def load(self, executable):
        """The runtime module of a compiled executable, on this session's device."""
        if not self.remote:
            return executable.mod
        # a fresh name per upload: the server dlopens the linked library by path, so a reused name is the old code
        name = f"matq_{uuid.uuid4().hex}.tar"  # .tar: the server links it, whatever its architecture
        with tempfile.TemporaryDirectory() as tmp:
            executable.export_library(str(Path(tmp) / name))
            self.rpc_session.upload(str(Path(tmp) / name))
        return self.rpc_session.load_module(name)

    def time(self, mod, name: str, args_np: Sequence[np.ndarray], repeat: int = 50) -> np.ndarray:
        """Seconds per call of mod[name](*args), `repeat` cache-cold samples (args: X first, output last)."""
        from matq_compile._tvm import tensor

        if repeat <= 0:
            raise ValueError(f"repeat must be positive, got {repeat}")
        args = [tensor(a, self.dev) for a in args_np]
        mod[name](*args)  # warm-up: first-call costs (module load, NVRTC) are not kernel time
        if not self.gpu:
            return cpu_samples(mod, name, self.dev, args, repeat)
        sets = rotated_sets(args, args_np, self.dev, weight_copies(args_np, self.l2_bytes()))
        timer = mod.time_evaluator(name, self.dev, number=1, repeat=1, min_repeat_ms=0)
        return np.asarray([timer(*sets[i % len(sets)]).results[0] for i in range(repeat)])

    def time_vm(self, executable, name: str, args_np: Sequence[np.ndarray], repeat: int = 50) -> np.ndarray:
        """Seconds per call of the Relax function `name` of a VM executable (bench.chain_executable), `repeat`
        samples on a CPU, every argument but the first flushed from the caches before each."""
        from matq_compile._tvm import tensor
        from tvm import relax

        if repeat <= 0:
            raise ValueError(f"repeat must be positive, got {repeat}")
        if self.gpu:
            raise ValueError("time_vm times CPU chains; GPU kernels are timed one by one with rotated weights")
        vm = relax.VirtualMachine(self.load(executable), self.dev)
        args = [tensor(a, self.dev) for a in args_np]
        vm[name](*args)  # warm-up: code pages, the VM's allocator pools
        return cpu_samples(vm, name, self.dev, args, repeat)

    def l2_bytes(self) -> int:
        try:
            l2 = int(self.dev.l2_cache_size_bytes or 0)
        except Exception:  # noqa: BLE001 - not every device API reports it (and RPC errors vary)
            l2 = 0
        return l2 if l2 > 0 else DEFAULT_L2_BYTES


def cpu_samples(runnable, name: str, dev, args: Sequence, repeat: int, cold: bool = True) -> np.ndarray:
    """Seconds of `repeat` single calls of runnable[name](*args) (a module or a Relax VM) on a CPU; cold: every
    argument but the first flushed from the caches before each call (TVM's cache_flush_cpu_non_first_arg)."""
    flush = {"f_preproc": "cache_flush_cpu_non_first_arg"} if cold else {}
    timer = runnable.time_evaluator(name, dev, number=1, repeat=repeat, min_repeat_ms=0, **flush)
    return np.asarray(timer(*args).results)


def weight_copies(args_np: Sequence[np.ndarray], l2_bytes: int) -> int:
    """How many copies of the weights (every argument but X and the output) rotate past ROTATE_L2_FACTOR L2s."""
    weights = sum(a.nbytes for a in args_np[1:-1])
    need = -(-ROTATE_L2_FACTOR * l2_bytes // max(weights, 1))
    return int(min(max(need, 2), MAX_COPIES))


def rotated_sets(args: list, args_np: Sequence[np.ndarray], dev, copies: int) -> list[list]:
    """`copies` argument lists sharing X and the output, each with its own copy of the weights."""
    from matq_compile._tvm import tensor

    sets = [args]
    for _ in range(copies - 1):
        sets.append([args[0], *(tensor(a, dev) for a in args_np[1:-1]), args[-1]])
    return sets


def open_session(spec, runner: str = "local", rpc: RPCSettings | None = None) -> Session:
    """A session on the device that runs `spec`'s kernels: this machine's, or an RPC server's."""
    from matq_compile._tvm import tvm

    if runner == "local":
        dev = tvm.cuda(0) if spec.is_gpu else tvm.cpu()
        if spec.is_gpu and not dev.exist:
            raise ValueError(f"target {spec.name} needs a CUDA GPU and this machine has none; time it on the GPU "
                             f"host through an RPC tracker (--runner rpc --tracker-host ... --tracker-key ...)")
        if amx.target_uses_amx(spec.target_dict()):
            amx.request()  # the kernels run in this process
        return Session(dev, device_label(dev, spec.is_gpu), spec.is_gpu)
    if runner != "rpc":
        raise ValueError(f"runner must be 'local' or 'rpc', got {runner!r}")
    from tvm import rpc as tvm_rpc

    rpc = rpc or RPCSettings()
    try:
        tracker = tvm_rpc.connect_tracker(rpc.tracker_host, rpc.tracker_port)
        sess = tracker.request(rpc.tracker_key, session_timeout=rpc.session_timeout_sec)
    except Exception as e:  # noqa: BLE001 - socket and TVM errors alike: one clear message
        raise ValueError(f"no RPC server with key {rpc.tracker_key!r} at tracker {rpc.tracker_host}:"
                         f"{rpc.tracker_port}: {e}") from e
    dev = sess.cuda(0) if spec.is_gpu else sess.cpu(0)
    if spec.is_gpu and not dev.exist:
        raise ValueError(f"the RPC server under key {rpc.tracker_key!r} has no CUDA GPU")
    label = f"{device_label(dev, spec.is_gpu, remote=True)} (rpc {rpc.tracker_key}@{rpc.tracker_host})"
    return Session(dev, label, spec.is_gpu, sess)


def device_label(dev, gpu: bool, remote: bool = False) -> str:
    """The device's name for the latency table: the GPU's name and compute capability, or the CPU model."""
    if gpu:
        return f"{dev.device_name} (sm_{str(dev.compute_version).replace('.', '')})"
    if remote:
        return "remote CPU"  # the device API reports no CPU name; the RPC key names the host
    from matq_compile.bench import cpu_model

    return cpu_model()
