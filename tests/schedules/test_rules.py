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


FORMS = [(1, False, 1, "float32"), (2, True, 1, "float32"), (3, False, 1, "float16"), (4, False, 3, "float32"),
         (5, False, None, "float16")]


@pytest.mark.parametrize("seed,gpu_form,m_bucket,dtype", FORMS)
def test_sampled_space_points_compute_the_kernel(seed, gpu_form, m_bucket, dtype, rng):
    """Both kernel forms (grouped: M = 1; flat: M > 1, dynamic M, or as emitted for GPUs), fp32 and fp16."""
    host = targets.load("host")
    key = layout.KernelKey(48, 192, 5, 96, m_bucket, dtype)
    sch = Schedule(tvm.IRModule({"main": kernels.linear_func(key, "main", gpu=gpu_form)}), seed=seed)
    cpu_gemv.space_fn(sch)
    assert any(inst.kind.name == "SamplePerfectTile" for inst in sch.trace.insts)  # knobs are tunable decisions
    ex = tvm.compile(sch.mod, target=host.to_tvm())
    q = rng.integers(0, 256, (48, 192)).astype(np.uint8)
    z = rng.integers(0, 256, (48, 2)).astype(np.uint8)
    arr = layout.pack_slice(q, np.full((48, 2), 0.01, np.float16), z, 5, "midpoint", 96)
    m = m_bucket or 3
    x = rng.standard_normal((m, 192)).astype(dtype)
    y = empty((m, 48), dtype, tvm.cpu())
    ex["main"](tensor(x, tvm.cpu()), *(tensor(arr[n], tvm.cpu()) for n in "PSZ"), y)
    ref = x.astype(np.float64) @ layout.dequant(arr, 5, 192, 96).T
    rtol = 1e-4 if dtype == "float32" else 2e-3
    np.testing.assert_allclose(y.numpy().astype(np.float64), ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def test_space_per_target_kind():
    from matq_compile._tvm import ms

    assert isinstance(schedules.space(targets.load("host")), ms.space_generator.ScheduleFn)
    assert isinstance(schedules.space(targets.load("cuda-sm90")), ms.space_generator.PostOrderApply)
    assert len(schedules.default_rules(targets.load("cuda-sm80"))) == 5
