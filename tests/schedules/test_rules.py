"""schedules/: rules return None on foreign functions, schedule ours, and sampled space points stay correct."""
from __future__ import annotations

import numpy as np
import pytest

from matq_compile import layout, targets

pytest.importorskip("tvm")
from matq_compile import schedules  # noqa: E402
from matq_compile._tvm import Schedule, empty, te, tensor, tvm  # noqa: E402
from matq_compile.lower import kernels  # noqa: E402
from matq_compile.schedules import cpu_gemv  # noqa: E402


def _foreign():
    a = te.placeholder((16,), "float32", name="A")
    return te.create_prim_func([a, te.compute((16,), lambda i: a[i] + 1.0, name="add")])


def test_rules_ignore_foreign_functions():
    host = targets.load("host")
    assert cpu_gemv.apply(_foreign(), host) is None
    with pytest.raises(ValueError, match="no default CPU rule"):
        schedules.default_schedule(_foreign(), host)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampled_space_points_compute_the_kernel(seed, rng):
    host = targets.load("host")
    key = layout.KernelKey(48, 192, 5, 96, 3)
    sch = Schedule(tvm.IRModule({"main": kernels.linear_func(key, "main")}), seed=seed)
    cpu_gemv.space_fn(sch)
    assert any(inst.kind.name == "SamplePerfectTile" for inst in sch.trace.insts)  # knobs are tunable decisions
    ex = tvm.compile(sch.mod, target=host.to_tvm())
    q = rng.integers(0, 256, (48, 192)).astype(np.uint8)
    z = rng.integers(0, 256, (48, 2)).astype(np.uint8)
    arr = layout.pack_slice(q, np.full((48, 2), 0.01, np.float16), z, 5, "midpoint", 96)
    x = rng.standard_normal((3, 192)).astype(np.float32)
    y = empty((3, 48), "float32", tvm.cpu())
    ex["main"](tensor(x, tvm.cpu()), *(tensor(arr[n], tvm.cpu()) for n in "PSZ"), y)
    ref = x.astype(np.float64) @ layout.dequant(arr, 5, 192, 96).T
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_space_per_target_kind():
    from matq_compile._tvm import ms

    assert isinstance(schedules.space(targets.load("host")), ms.space_generator.ScheduleFn)
    assert isinstance(schedules.space(targets.load("cuda-sm90")), ms.space_generator.PostOrderApply)
    assert len(schedules.default_rules(targets.load("cuda-sm80"))) == 4
